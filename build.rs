//! Link the release `psflip` with its hot functions first (`build/psflip-hot.ld`,
//! written by `scripts/symbol-order.py`): the functions a running psflip executes
//! (start-up, spawning, the event loop, an upgrade) then share a few pages of the
//! binary instead of touching nearly every 64 KiB fault-around window of its
//! text, which is what a running psflip keeps mapped (its RSS) and what faults
//! in at every start. Only with rust-lld (the default linker of Rust 1.90 and
//! later on x86_64-unknown-linux-gnu) or, for the static musl build, GNU ld
//! (BENCHMARKS.md, session 8: idle RSS 0.95 → 0.73 MiB there); a name the file
//! lists that the build does not have is skipped, so a stale file only costs
//! pages, never correctness.
//! `PSFLIP_NO_SYMBOL_ORDER=1` turns it off.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build/psflip-hot.ld");
    println!("cargo:rerun-if-env-changed=PSFLIP_NO_SYMBOL_ORDER");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    // glibc: rust-lld; the static musl build: the system's `cc` and GNU ld,
    // which takes the same script (`INSERT BEFORE .text`).
    let linker_takes_it = match var("TARGET").as_str() {
        "x86_64-unknown-linux-gnu" => rustc_links_with_lld(),
        "x86_64-unknown-linux-musl" => true,
        _ => false,
    };
    if var("PROFILE") != "release"
        || !linker_takes_it
        || !var("PSFLIP_NO_SYMBOL_ORDER").is_empty()
        // A linker of the user's choice may not know the option.
        || var("CARGO_ENCODED_RUSTFLAGS").contains("link")
    {
        return;
    }
    let script = format!("{}/build/psflip-hot.ld", var("CARGO_MANIFEST_DIR"));
    println!("cargo:rustc-link-arg-bin=psflip=-Wl,-T,{script}");
}

/// rustc 1.90 and later link x86_64-unknown-linux-gnu programs with rust-lld.
fn rustc_links_with_lld() -> bool {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = Command::new(rustc).arg("--version").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let minor = text
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').nth(1))
        .and_then(|m| m.parse::<u32>().ok());
    minor.is_some_and(|m| m >= 90)
}
