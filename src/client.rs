//! The client side of `psflip upgrade` and `psflip status` (SPEC §1): find the
//! running generation through the configuration's pidfile and ask it over its
//! control socket ([`crate::effects::control`]).

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::kill;
use nix::unistd::Pid;

use crate::config::Config;
use crate::effects::{control, pidfile};
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

/// The pid of the running psflip, from the pidfile, if it is alive.
fn running(config: &Config) -> Result<(u32, &Path), String> {
    let Some(path) = config.pidfile.as_deref() else {
        return Err(format!(
            "{}: no `pidfile` configured: it is how the running psflip is found",
            config.path.display()
        ));
    };
    let Some(pid) = pidfile::read(path).filter(|p| *p > 0) else {
        return Err(format!("not running ({} holds no pid)", path.display()));
    };
    match kill(Pid::from_raw(pid as i32), None) {
        Ok(()) | Err(nix::errno::Errno::EPERM) => Ok((pid, path)),
        Err(_) => Err(format!(
            "not running ({} names pid {pid}, which is gone)",
            path.display()
        )),
    }
}

/// `psflip status`: the running generation as `key: value` lines, or JSON.
pub fn status(config: &Config, json: bool) -> Answer {
    let (pid, _) = match running(config) {
        Ok(found) => found,
        Err(why) => return Answer::err(NOT_RUNNING, format!("psflip: {why}\n")),
    };
    let reply = match control::ask(pid, Request::Status, Duration::from_secs(5)) {
        Ok(reply) if !reply.is_empty() => reply,
        Ok(_) | Err(_) => {
            // An older psflip without a control socket: what the pidfile says.
            format!("pid: {pid}\n")
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
/// outcome. Exit 0 only when the new generation took over.
pub fn upgrade(config: &Config) -> Answer {
    let (pid, path) = match running(config) {
        Ok(found) => found,
        Err(why) => return Answer::err(NOT_RUNNING, format!("psflip: {why}\n")),
    };
    // The old generation answers once the successor is ready or gone; it kills a
    // hung successor after upgrade.timeout + grace.
    let wait = config.upgrade.timeout + SUCCESSOR_GRACE + Duration::from_secs(5);
    match control::ask(pid, Request::Upgrade, wait) {
        Ok(reply) if reply.starts_with("ok") => Answer::out(0, reply),
        Ok(reply) if !reply.is_empty() => Answer::err(1, reply),
        Ok(_) => Answer::err(
            1,
            format!("failed: psflip (pid {pid}) closed the connection without an answer\n"),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Answer::err(
            1,
            format!("failed: no outcome from psflip (pid {pid}) within {wait:?}\n"),
        ),
        Err(_) => upgrade_by_signal(config, pid, path, wait),
    }
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
