#!/usr/bin/env bash
# Print the Rust target of the static build, x86_64-unknown-linux-musl, and
# exit 0 when it can be built and run here (an x86_64 host with that target
# installed: `rustup target add x86_64-unknown-linux-musl`); print it and
# exit 1 otherwise. Used by .ci/run, scripts/bench.sh and scripts/package-deb.sh.
musl=x86_64-unknown-linux-musl
echo "$musl"
[ "$(uname -m)" = x86_64 ] && [ -d "$(rustc --print sysroot)/lib/rustlib/$musl/lib" ]
