//! Process helpers: `/proc` readers, signals by pid, the processes a test
//! tagged. A process counts as dead once it is a zombie: in these sandboxes
//! PID 1 does not reap, so zombies re-parented to it linger forever.

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{TAG_VAR, wait_until};

/// The fields of `/proc/PID/stat` the tests use.
#[derive(Clone, Debug)]
pub struct Stat {
    pub comm: String,
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    /// The foreground process group of the controlling terminal.
    pub tpgid: i32,
    /// User plus system CPU time so far, in clock ticks (1/100 s).
    pub cpu_ticks: u64,
    /// The kernel's `PF_*` flags of the task (field 9).
    pub flags: u64,
}

impl Stat {
    /// Forked and not yet exec'd (`PF_FORKNOEXEC`): a child psflip is still
    /// starting, which carries psflip's name until its exec.
    pub fn forked_not_execed(&self) -> bool {
        self.flags & 0x40 != 0
    }
}

pub fn stat(pid: i32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_string();
    // Field 3 (state) onwards.
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let field = |n: usize| rest.get(n - 3).copied();
    let number = |n: usize| field(n)?.parse::<i32>().ok();
    let ticks = |n: usize| field(n).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    Some(Stat {
        comm,
        state: field(3)?.chars().next()?,
        ppid: number(4)?,
        pgrp: number(5)?,
        tpgid: number(8)?,
        cpu_ticks: ticks(14) + ticks(15),
        flags: ticks(9),
    })
}

/// Whether `pid` runs (a zombie is dead).
pub fn alive(pid: i32) -> bool {
    stat(pid).is_some_and(|s| !matches!(s.state, 'Z' | 'X' | 'x'))
}

pub fn ppid(pid: i32) -> Option<i32> {
    stat(pid).map(|s| s.ppid)
}

pub fn pgrp(pid: i32) -> Option<i32> {
    stat(pid).map(|s| s.pgrp)
}

pub fn comm(pid: i32) -> String {
    stat(pid).map(|s| s.comm).unwrap_or_default()
}

/// User plus system CPU time of `pid` so far, in clock ticks (1/100 s).
pub fn cpu_ticks(pid: i32) -> u64 {
    stat(pid).map_or(0, |s| s.cpu_ticks)
}

/// Every pid in /proc.
pub fn all_pids() -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The live children of `parent`.
pub fn children_of(parent: i32) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&p| stat(p).is_some_and(|s| s.ppid == parent && !matches!(s.state, 'Z' | 'X')))
        .collect()
}

/// The children of `parent` that are zombies (exited, not reaped).
pub fn zombie_children(parent: i32) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&p| stat(p).is_some_and(|s| s.ppid == parent && s.state == 'Z'))
        .collect()
}

/// The environment `pid` was started with.
pub fn environ(pid: i32) -> Vec<(String, String)> {
    let bytes = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    bytes
        .split(|b| *b == 0)
        .filter(|e| !e.is_empty())
        .filter_map(|e| {
            let s = String::from_utf8_lossy(e);
            let (k, v) = s.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

pub fn env_var(pid: i32, key: &str) -> Option<String> {
    environ(pid)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

/// A `Key:\tvalue` line of `/proc/PID/status`.
pub fn status_field(pid: i32, key: &str) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == key).then(|| v.trim().to_string())
    })
}

/// The open fd numbers of `pid`, sorted.
pub fn fds(pid: i32) -> Vec<i32> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut v: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    v.sort();
    v
}

/// Where fd `fd` of `pid` points.
pub fn fd_target(pid: i32, fd: i32) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()
}

/// The inodes of the sockets `pid` holds.
pub fn socket_inodes(pid: i32) -> Vec<u64> {
    fds(pid)
        .into_iter()
        .filter_map(|fd| {
            let target = fd_target(pid, fd)?;
            let t = target.to_str()?;
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// Live processes carrying `tag` in their environment.
pub fn tagged(tag: &str) -> Vec<i32> {
    let needle = format!("{TAG_VAR}={tag}\0").into_bytes();
    let me = std::process::id() as i32;
    all_pids()
        .into_iter()
        .filter(|&p| p != me)
        .filter(|&p| {
            fs::read(format!("/proc/{p}/environ"))
                .is_ok_and(|env| env.windows(needle.len()).any(|w| w == needle.as_slice()))
        })
        .filter(|&p| alive(p))
        .collect()
}

/// SIGKILL every live process carrying `tag`, until none is left (or 3 s).
pub fn kill_tagged(tag: &str) {
    wait_until(Duration::from_secs(3), || {
        let pids = tagged(tag);
        for &p in &pids {
            signal(p, Signal::SIGKILL);
        }
        pids.is_empty()
    });
}

/// Send `sig` to `pid`; a process already gone is fine.
pub fn signal(pid: i32, sig: Signal) {
    let _ = kill(Pid::from_raw(pid), sig);
}

/// A one-line description of a process, for failure messages.
pub fn describe(pid: i32) -> String {
    let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default();
    match stat(pid) {
        Some(s) => format!(
            "pid {pid} ({}) state {} ppid {} pgrp {}: {}",
            s.comm,
            s.state,
            s.ppid,
            s.pgrp,
            cmdline.trim()
        ),
        None => format!("pid {pid} (gone)"),
    }
}

/// The shell-style status of an exited process: its code, or 128 + signal.
pub fn code_of(status: std::process::ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .expect("an exit status has a code or a signal")
}
