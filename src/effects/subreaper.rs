//! psflip as a child subreaper (`PR_SET_CHILD_SUBREAPER`): orphans of its
//! subtree (a child's `setsid` daemons) re-parent to it instead of to init, so
//! they can be stopped with their generation (SPEC §10). Here: becoming one,
//! finding the processes that re-parented to us, and signalling them. Which to
//! signal and when is the machine's call (`Effect::SignalEscaped`).

use std::collections::BTreeSet;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::EffectError;

/// Make this process a child subreaper.
pub fn become_subreaper() -> Result<(), EffectError> {
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|e| EffectError::sys("prctl(PR_SET_CHILD_SUBREAPER)", e))
}

/// Our children that can have re-parented to us: the main thread's
/// `/proc/self/task/<pid>/children` (an orphan goes to its subreaper's first
/// live thread, the main one while the process runs: one read, no directory
/// listing), or, without it, a scan of /proc.
fn children() -> BTreeSet<i32> {
    let me = std::process::id() as i32;
    let mut kids = BTreeSet::new();
    if let Ok(text) = std::fs::read_to_string(format!("/proc/self/task/{me}/children")) {
        kids.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
        return kids;
    }
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.flatten() {
            let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            if stat(pid).is_some_and(|(_, ppid, _)| ppid == me) {
                kids.insert(pid);
            }
        }
    }
    kids
}

/// State letter, parent and process group of `pid`.
fn stat(pid: i32) -> Option<(char, i32, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut f = text[text.rfind(')')? + 1..].split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    let pgrp = f.next()?.parse().ok()?;
    Some((state, ppid, pgrp))
}

/// The running processes that re-parented to us: our children that are not in
/// `ours` (the ones we started) and not zombies.
pub fn adopted(ours: &BTreeSet<i32>) -> Vec<i32> {
    children()
        .into_iter()
        .filter(|pid| !ours.contains(pid))
        .filter(|pid| stat(*pid).is_some_and(|(state, _, _)| state != 'Z' && state != 'X'))
        .collect()
}

/// Send `signal` to each of `pids` (with SIGKILL, also to the process group it
/// leads: a daemon's own workers go with it). Returns how many were signalled.
pub fn signal_all(pids: &[i32], signal: Signal) -> usize {
    let mut n = 0;
    for &pid in pids {
        if signal == Signal::SIGKILL && stat(pid).is_some_and(|(_, _, pgrp)| pgrp == pid) {
            let _ = kill(Pid::from_raw(-pid), signal);
        }
        if kill(Pid::from_raw(pid), signal).is_ok() {
            n += 1;
        }
    }
    n
}
