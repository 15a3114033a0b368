#!/usr/bin/env bash
# Build the Debian package: release binaries, man pages and completions
# generated from the clap definitions, then `cargo deb`. Prints the .deb's path.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || cargo install --locked cargo-deb
cargo build --release --bins >&2
rm -rf target/assets
target/release/psflip __assets target/assets
gzip -9n target/assets/man/*.1
# cargo deb's last line on stdout is the package's path; its errors stay on stderr.
cargo deb --no-build --no-strip | tail -1
