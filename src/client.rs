//! The client side of `psflip upgrade` and `psflip status` (SPEC §1): find the
//! running generation through the configuration's pidfile and ask it over its
//! control socket ([`crate::effects::control`]).

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::kill;
use nix::unistd::Pid;

use crate::config::Config;
use crate::effects::{control, pidfile, procfs};
use crate::machine::{Request, SUCCESSOR_GRACE};

/// Exit status when nothing runs (as LSB status commands do).
pub const NOT_RUNNING: i32 = 3;

/// What a command prints and exits with.
pub struct Answer {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Answer {
    fn out(code: i32, stdout: String) -> Answer {
        Answer {
            code,
            stdout,
            stderr: String::new(),
        }
    }

    fn err(code: i32, stderr: String) -> Answer {
        Answer {
            code,
            stdout: String::new(),
            stderr,
        }
    }
}

/// The pid of the running psflip, from the pidfile, if it is alive (a zombie is
/// not: its pidfile is stale).
fn running(config: &Config) -> Result<(u32, &Path), String> {
    let Some(path) = config.pidfile.as_deref() else {
        return Err(format!(
            "{}: no `pidfile` configured: it is how the running psflip is found",
            config.path.display()
        ));
    };
    let Some(pid) = pidfile::read(path).filter(|p| *p > 0 && *p <= i32::MAX as u32) else {
        return Err(format!("not running ({} holds no pid)", path.display()));
    };
    if alive(pid) {
        Ok((pid, path))
    } else {
        Err(format!(
            "not running ({} names pid {pid}, which is gone)",
            path.display()
        ))
    }
}

/// Whether `pid` runs: from /proc, where a zombie is dead; `kill(pid, 0)` where
/// /proc is not mounted.
fn alive(pid: u32) -> bool {
    if Path::new("/proc/self/stat").exists() {
        return procfs::alive(pid);
    }
    matches!(
        kill(Pid::from_raw(pid as i32), None),
        Ok(()) | Err(nix::errno::Errno::EPERM)
    )
}

/// Whether `pid` was started after the pidfile was last written: then it is not
/// the psflip that wrote it, but a process that got its recycled pid (psflip was
/// killed and could not remove its pidfile). Only asked of a process without a
/// control socket, before trusting it or sending it a signal. /proc gives the
/// start time in clock ticks since boot and the boot time in whole seconds: a
/// margin of 2 s covers the rounding.
fn started_after_pidfile(pid: u32, path: &Path) -> bool {
    let Some(started) = start_time(pid) else {
        return false;
    };
    let Ok(written) = std::fs::metadata(path).and_then(|m| m.modified()) else {
        return false;
    };
    started > written + Duration::from_secs(2)
}

/// When `pid` started, on the wall clock.
fn start_time(pid: u32) -> Option<SystemTime> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold anything, parentheses too):
    // state is field 3, starttime field 22.
    let ticks: u64 = stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()?;
    let boot: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|h| *h > 0)?;
    let since_boot = Duration::from_secs(ticks / hz) + Duration::from_secs(ticks % hz) / hz as u32;
    Some(UNIX_EPOCH + Duration::from_secs(boot) + since_boot)
}

/// Why a live process that has no control socket is not taken for psflip, if it
/// is not.
fn stale(pid: u32, path: &Path) -> Option<String> {
    started_after_pidfile(pid, path).then(|| {
        format!(
            "not running ({} names pid {pid}, a process started after the pidfile was written: not the psflip that wrote it)",
            path.display()
        )
    })
}

/// Whether `ask` failed because nothing listens on the control socket.
fn no_control_socket(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
    )
}

/// What a control reply that is no answer starts with (the server refused the
/// client, or did not understand it).
fn is_refusal(reply: &str) -> bool {
    reply.starts_with("refused:") || reply.starts_with("error:")
}

/// Exit status of `psflip status` when the running psflip does not say how it
/// is (it refused us, or does not answer): LSB's "status unknown".
pub const STATUS_UNKNOWN: i32 = 4;

/// `psflip status`: the running generation as `key: value` lines, or JSON.
pub fn status(config: &Config, json: bool) -> Answer {
    let (pid, path) = match running(config) {
        Ok(found) => found,
        Err(why) => return Answer::err(NOT_RUNNING, format!("psflip: {why}\n")),
    };
    let wait = Duration::from_secs(5);
    let reply = match control::ask(pid, Request::Status, wait) {
        Ok(reply) if reply.is_empty() => {
            return Answer::err(
                STATUS_UNKNOWN,
                format!("psflip: psflip (pid {pid}) closed the connection without an answer\n"),
            );
        }
        Ok(reply) if is_refusal(&reply) => {
            return Answer::err(STATUS_UNKNOWN, format!("psflip (pid {pid}): {reply}"));
        }
        Ok(reply) => reply,
        Err(e) if no_control_socket(&e) => {
            if let Some(why) = stale(pid, path) {
                return Answer::err(NOT_RUNNING, format!("psflip: {why}\n"));
            }
            // An older psflip without a control socket: what the pidfile says.
            format!("psflip_pid: {pid}\n")
        }
        Err(e) => {
            let why = if e.kind() == std::io::ErrorKind::TimedOut {
                format!("no answer within {wait:?}")
            } else {
                e.to_string()
            };
            return Answer::err(
                STATUS_UNKNOWN,
                format!("psflip: cannot ask psflip (pid {pid}): {why}\n"),
            );
        }
    };
    if json {
        Answer::out(0, to_json(&reply))
    } else {
        Answer::out(0, reply)
    }
}

/// `key: value` lines as one JSON object: numbers and booleans as such.
fn to_json(lines: &str) -> String {
    let mut map = serde_json::Map::new();
    for line in lines.lines() {
        let Some((key, value)) = line.split_once(": ") else {
            continue;
        };
        let value = if let Ok(n) = value.parse::<u64>() {
            serde_json::Value::from(n)
        } else if let Ok(b) = value.parse::<bool>() {
            serde_json::Value::from(b)
        } else if value == "none" {
            serde_json::Value::Null
        } else {
            serde_json::Value::from(value)
        };
        map.insert(key.to_string(), value);
    }
    let mut text = serde_json::Value::Object(map).to_string();
    text.push('\n');
    text
}

/// `psflip upgrade`: ask the running generation to upgrade and wait for the
/// outcome. Exit 0 only when the new generation took over. With `wait_old`, a
/// success is reported only once the old generation has exited too (see
/// [`wait_gone`]).
pub fn upgrade(config: &Config, wait_old: bool) -> Answer {
    let (pid, path) = match running(config) {
        Ok(found) => found,
        Err(why) => return Answer::err(NOT_RUNNING, format!("psflip: {why}\n")),
    };
    // The old generation answers once the successor is ready or gone; it kills a
    // hung successor after upgrade.timeout + grace.
    // The old generation always answers, or closes the connection if it dies:
    // this bound only guards against a hung psflip. It is generous because the
    // old generation judges its successor by its own (possibly longer)
    // upgrade.timeout, not by the one in this (new) configuration.
    let wait = (config.upgrade.timeout + SUCCESSOR_GRACE + Duration::from_secs(5))
        .max(Duration::from_secs(600));
    match control::ask(pid, Request::Upgrade, wait) {
        Ok(reply) if reply.starts_with("ok") => {
            if wait_old && let Some(note) = wait_gone(config, pid) {
                return Answer {
                    code: 0,
                    stdout: reply,
                    stderr: note,
                };
            }
            Answer::out(0, reply)
        }
        Ok(reply) if !reply.is_empty() => Answer::err(1, reply),
        Ok(_) => Answer::err(
            1,
            format!("failed: psflip (pid {pid}) closed the connection without an answer\n"),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Answer::err(
            1,
            format!("failed: no outcome from psflip (pid {pid}) within {wait:?}\n"),
        ),
        Err(e) if no_control_socket(&e) => match stale(pid, path) {
            // Never signal a process that only got a dead psflip's pid.
            Some(why) => Answer::err(NOT_RUNNING, format!("psflip: {why}\n")),
            // Without a control socket, only the pidfile tells: give up once the
            // old generation would have (by this configuration's timeout).
            None => upgrade_by_signal(
                config,
                pid,
                path,
                config.upgrade.timeout + SUCCESSOR_GRACE + Duration::from_secs(5),
            ),
        },
        Err(e) => Answer::err(
            1,
            format!("failed: cannot ask psflip (pid {pid}) over its control socket: {e}\n"),
        ),
    }
}

/// After a successful upgrade: wait until the old generation `pid` has exited
/// (a zombie has: its children are re-parented by then). systemd reads PIDFile=
/// when ExecReload= ends; if the old psflip still ran, the new one would be its
/// child, not systemd's, and systemd would supervise it as "not our child"
/// (`systemctl stop` then SIGKILLs at once with KillMode=mixed). The old
/// generation stops its child within shutdown.delay + shutdown.timeout (of its
/// own configuration, which this one may not match: hence the margin). A note
/// for stderr if it is still there after that.
fn wait_gone(config: &Config, pid: u32) -> Option<String> {
    let bound = (config.shutdown.delay + config.shutdown.timeout + Duration::from_secs(10))
        .max(Duration::from_secs(30));
    let deadline = Instant::now() + bound;
    while alive(pid) {
        if Instant::now() >= deadline {
            return Some(format!(
                "note: the old generation (pid {pid}) has not exited within {bound:?}\n"
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// For a running psflip without a control socket: send the upgrade signal and
/// watch the pidfile name a new live process.
fn upgrade_by_signal(config: &Config, pid: u32, path: &Path, wait: Duration) -> Answer {
    let signal = config.upgrade.signal;
    if let Err(e) = kill(Pid::from_raw(pid as i32), signal) {
        return Answer::err(1, format!("failed: cannot signal pid {pid}: {e}\n"));
    }
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if let Some(new) = pidfile::read(path).filter(|p| *p != pid && *p > 0)
            && kill(Pid::from_raw(new as i32), None).is_ok()
        {
            return Answer::out(0, format!("ok: pid {new} took over\n"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Answer::err(
        1,
        format!(
            "failed: sent {} to pid {pid}, but no new generation took over within {wait:?}; see its log\n",
            signal.as_str()
        ),
    )
}
