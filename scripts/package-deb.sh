#!/usr/bin/env bash
# Build the Debian package: release binaries, man pages and completions
# generated from the clap definitions, then `cargo deb`. Prints the .deb's path.
#
# The binaries are static (musl, x86_64-unknown-linux-musl) when that Rust target
# is installed (`rustup target add x86_64-unknown-linux-musl`): they start and
# upgrade faster, hold less memory and depend on no shared library (BENCHMARKS.md,
# session 8). Otherwise, or with PSFLIP_DEB_TARGET=gnu, glibc and dynamic, with a
# note on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || cargo install --locked cargo-deb
target_args=() deb_args=() bindir=target/release
musl_ok=1
musl=$(scripts/musl-target.sh) || musl_ok=0
if [ "${PSFLIP_DEB_TARGET:-musl}" = musl ] && [ "$musl_ok" = 1 ]; then
    target_args=(--target "$musl") deb_args=(--variant static) bindir=target/$musl/release
else
    echo "package-deb: building for glibc (dynamic); the static build needs" \
        "\`rustup target add $musl\`" >&2
fi
cargo build --release --bins "${target_args[@]}" >&2
rm -rf target/assets
"$bindir/psflip" __assets target/assets
gzip -9n target/assets/man/*.1
# cargo deb's last line on stdout is the package's path; its errors stay on stderr.
# With --target it takes the binaries from target/<triple>/release.
cargo deb --no-build --no-strip "${target_args[@]}" "${deb_args[@]}" | tail -1
