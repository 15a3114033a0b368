//! What /proc says about a process: whether it is alive (a zombie is not), its
//! parent, and its owner. Used to judge a pidfile before trusting it.

use std::path::PathBuf;

/// The state letter and parent pid from /proc/PID/stat.
fn stat(pid: u32) -> Option<(char, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything: split after the
    // last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Whether `pid` is a running (not zombie, not dead) process.
pub fn alive(pid: u32) -> bool {
    matches!(stat(pid), Some((state, _)) if state != 'Z' && state != 'X' && state != 'x')
}

/// Whether `pid` is a zombie whose parent is `parent`: dead, but its exit
/// status is still `parent`'s to collect.
pub fn zombie_child_of(pid: u32, parent: u32) -> bool {
    matches!(stat(pid), Some(('Z', ppid)) if ppid == parent)
}

/// The parent of `pid`.
pub fn parent(pid: u32) -> Option<u32> {
    stat(pid).map(|(_, ppid)| ppid)
}

/// Whether `pid` descends from `ancestor` (and is not `ancestor` itself).
pub fn descends_from(pid: u32, ancestor: u32) -> bool {
    let mut cur = pid;
    for _ in 0..4096 {
        match stat(cur) {
            Some((_, ppid)) if ppid == ancestor => return cur != ancestor,
            Some((_, ppid)) if ppid > 1 => cur = ppid,
            _ => return false,
        }
    }
    false
}

/// The real uid owning `pid`.
pub fn uid(pid: u32) -> Option<u32> {
    let text = std::fs::read_to_string(PathBuf::from(format!("/proc/{pid}/status"))).ok()?;
    let line = text.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
