//! The client side of `psflip upgrade` and `psflip status` (SPEC §1): find the
//! running generation through the configuration's pidfile and ask it over its
//! control socket ([`crate::effects::control`]).

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::effects::{control, pidfile, procfs};
use crate::machine::{Request, SUCCESSOR_GRACE};
use crate::status::Report;

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

/// Where the control socket of this configuration may be, each with the uids
/// its server may run as (the owner of its directory, or root). Every
/// directory is checked first: a real directory, writable only by its owner.
fn candidates(config: &Config) -> (Vec<(PathBuf, Vec<u32>)>, Vec<String>) {
    let euid = nix::unistd::geteuid().as_raw();
    let mut found = Vec::new();
    let mut refused = Vec::new();
    let mut consider = |socket: PathBuf, owners: &[u32]| {
        let dir = socket.parent().unwrap_or(Path::new("/")).to_owned();
        match control::verify_dir(&dir, owners) {
            Ok(owner) => found.push((socket, vec![owner, 0])),
            Err(why) if dir.exists() => refused.push(why),
            Err(_) => {}
        }
    };
    if let Some(explicit) = config.control_socket.as_deref() {
        let socket = control::absolute(explicit);
        // Root may reach a psflip of any user through the path it configured:
        // the directory's owner is then who may serve it.
        let owners = match control::dir_owner(socket.parent().unwrap_or(Path::new("/"))) {
            Some(owner) if euid == 0 => vec![owner],
            _ => vec![euid, 0],
        };
        consider(socket, &owners);
        return (found, refused);
    }
    let name = control::socket_name(&config.path);
    let mut users = vec![euid];
    if euid == 0
        && let Some(owner) = config.pidfile.as_deref().and_then(trusted_pidfile_owner)
        && owner != 0
    {
        users.push(owner);
    }
    for uid in users {
        let xdg = (uid == euid)
            .then(|| std::env::var_os("XDG_RUNTIME_DIR"))
            .flatten();
        for dir in control::default_dirs(uid, xdg) {
            consider(dir.join(&name), &[uid]);
        }
    }
    (found, refused)
}

/// The owner of a pidfile that only its owner (or root) could have put there:
/// its directory is writable by nobody else. Root uses it to find the control
/// socket of a psflip running as another user; a pidfile in a directory anyone
/// can write (`/tmp`) says nothing about who wrote it.
fn trusted_pidfile_owner(path: &Path) -> Option<u32> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    let owner = meta.uid();
    control::verify_dir(dir, &[owner, 0]).ok()?;
    Some(owner)
}

/// Whether `pid` runs psflip with this configuration, by /proc: its command
/// line's `-c`/`--config` (or the default `psflip.toml`), resolved against its
/// working directory, is the same file as ours. `Ok` when /proc does not tell
/// (not mounted, or hidden): the socket's directory and uid vouch for it then.
fn runs_this_config(pid: u32, config: &Path) -> Result<(), String> {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return Ok(());
    };
    let Ok(cwd) = std::fs::read_link(format!("/proc/{pid}/cwd")) else {
        return Ok(());
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let mut file: &[u8] = b"psflip.toml";
    let mut i = 1;
    while i < args.len() {
        let a = args[i];
        if a == b"-c" || a == b"--config" {
            if let Some(v) = args.get(i + 1) {
                file = v;
            }
            i += 2;
            continue;
        }
        if let Some(v) = a.strip_prefix(b"--config=") {
            file = v;
        } else if let Some(v) = a
            .strip_prefix(b"-c")
            .filter(|v| !v.is_empty() && !a.starts_with(b"--"))
        {
            file = v;
        }
        i += 1;
    }
    let theirs = cwd.join(Path::new(std::ffi::OsStr::from_bytes(file)));
    let same = match (std::fs::metadata(&theirs), std::fs::metadata(config)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    };
    if same {
        Ok(())
    } else {
        Err(format!(
            "pid {pid} does not run {} (its configuration is {})",
            config.display(),
            theirs.display()
        ))
    }
}

/// The verified psflip of this configuration: asks it `request` over the first
/// control socket whose server passes every check, or says why there is none.
fn ask_verified(
    config: &Config,
    request: Request,
    wait: Duration,
) -> Result<(String, control::Peer), Failure> {
    let (candidates, mut refused) = candidates(config);
    for (socket, uids) in &candidates {
        let check = |peer: control::Peer| {
            if !uids.contains(&peer.uid) {
                return Err(format!(
                    "{}: served by pid {} of uid {}, not by uid {}",
                    socket.display(),
                    peer.pid,
                    peer.uid,
                    uids[0]
                ));
            }
            runs_this_config(peer.pid, &config.path)
                .map_err(|why| format!("{}: {why}", socket.display()))
        };
        match control::ask(socket, check, request, wait) {
            Ok(found) => return Ok(found),
            Err(control::AskError::NotThere(_)) => {}
            Err(control::AskError::Untrusted(why)) => refused.push(why),
            Err(control::AskError::Io(e)) => return Err(Failure::Io(socket.clone(), e)),
        }
    }
    Err(Failure::NotRunning(not_running(
        config,
        &candidates,
        &refused,
    )))
}

/// Why asking gave no answer.
enum Failure {
    /// No verified psflip of this configuration runs.
    NotRunning(String),
    /// One was found, but asking it failed.
    Io(PathBuf, std::io::Error),
}

/// The message for "no verified psflip runs", with what the pidfile says.
fn not_running(config: &Config, candidates: &[(PathBuf, Vec<u32>)], refused: &[String]) -> String {
    let looked: Vec<String> = candidates
        .iter()
        .map(|(p, _)| p.display().to_string())
        .collect();
    let mut why = format!(
        "not running: no psflip of {} answers on its control socket",
        config.path.display()
    );
    if !looked.is_empty() {
        why += &format!(" (looked for {})", looked.join(", "));
    }
    for r in refused {
        why += &format!("; refused {r}");
    }
    if let Some(path) = config.pidfile.as_deref() {
        match pidfile::read(path) {
            Some(pid) if procfs::alive(pid) => {
                why += &format!(
                    "; {} names pid {pid}, which is not a verified psflip of this configuration: the pidfile is stale (nothing was signalled)",
                    path.display()
                );
            }
            Some(pid) => why += &format!("; {} names pid {pid}, which is gone", path.display()),
            None => why += &format!("; {} holds no pid", path.display()),
        }
    }
    why
}

/// A note when the pidfile names another process than the one that answered
/// (a handover in progress, or a stale pidfile).
fn pidfile_note(config: &Config, server: u32) -> String {
    match config.pidfile.as_deref() {
        Some(path) => match pidfile::read(path) {
            Some(pid) if pid == server => String::new(),
            Some(pid) => format!(
                "psflip: note: {} names pid {pid}, but pid {server} serves the control socket\n",
                path.display()
            ),
            // Not written yet: the first child is not healthy yet.
            None => String::new(),
        },
        None => String::new(),
    }
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
    let wait = Duration::from_secs(5);
    let (reply, server) = match ask_verified(config, Request::Status, wait) {
        Ok(found) => found,
        Err(Failure::NotRunning(why)) => {
            return Answer::err(NOT_RUNNING, format!("psflip: {why}\n"));
        }
        Err(Failure::Io(socket, e)) => {
            let why = if e.kind() == std::io::ErrorKind::TimedOut {
                format!("no answer within {wait:?}")
            } else {
                e.to_string()
            };
            return Answer::err(
                STATUS_UNKNOWN,
                format!(
                    "psflip: cannot ask psflip over {}: {why}\n",
                    socket.display()
                ),
            );
        }
    };
    let pid = server.pid;
    if reply.is_empty() {
        return Answer::err(
            STATUS_UNKNOWN,
            format!("psflip: psflip (pid {pid}) closed the connection without an answer\n"),
        );
    }
    if is_refusal(&reply) {
        return Answer::err(STATUS_UNKNOWN, format!("psflip (pid {pid}): {reply}"));
    }
    // The server builds the report with serde; a reply that is not one is an
    // answer we cannot vouch for.
    let report: Report = match serde_json::from_str(reply.trim_end()) {
        Ok(report) => report,
        Err(e) => {
            return Answer::err(
                STATUS_UNKNOWN,
                format!("psflip: psflip (pid {pid}) answered no status report ({e}): {reply}"),
            );
        }
    };
    let mut answer = if json {
        Answer::out(0, report.to_json_line())
    } else {
        Answer::out(0, report.to_lines())
    };
    answer.stderr = pidfile_note(config, pid);
    answer
}

/// The running generation's status report, if a verified psflip of this
/// configuration answers (for `psflip check`).
pub fn report(config: &Config) -> Option<Report> {
    let (reply, _) = ask_verified(config, Request::Status, Duration::from_secs(5)).ok()?;
    serde_json::from_str(reply.trim_end()).ok()
}

/// `psflip upgrade`: ask the running generation to upgrade and wait for the
/// outcome. Exit 0 only when the new generation took over. Only a psflip
/// verified over its control socket is asked; nothing is ever signalled. With
/// `wait_old`, a success is reported only once the old generation has exited
/// too (see [`wait_gone`]).
pub fn upgrade(config: &Config, wait_old: bool) -> Answer {
    // The old generation always answers, or closes the connection if it dies:
    // this bound only guards against a hung psflip. It is generous because the
    // old generation judges its successor by its own (possibly longer)
    // upgrade.timeout, not by the one in this (new) configuration.
    let wait = (config.upgrade.timeout + SUCCESSOR_GRACE + Duration::from_secs(5))
        .max(Duration::from_secs(600));
    match ask_verified(config, Request::Upgrade, wait) {
        Ok((reply, server)) if reply.starts_with("ok") => {
            if wait_old && let Some(note) = wait_gone(config, server.pid) {
                return Answer {
                    code: 0,
                    stdout: reply,
                    stderr: note,
                };
            }
            Answer::out(0, reply)
        }
        Ok((reply, _)) if !reply.is_empty() => Answer::err(1, reply),
        Ok((_, server)) => Answer::err(
            1,
            format!(
                "failed: psflip (pid {}) closed the connection without an answer\n",
                server.pid
            ),
        ),
        Err(Failure::NotRunning(why)) => Answer::err(NOT_RUNNING, format!("psflip: {why}\n")),
        Err(Failure::Io(socket, e)) if e.kind() == std::io::ErrorKind::TimedOut => Answer::err(
            1,
            format!(
                "failed: no outcome from the psflip on {} within {wait:?}\n",
                socket.display()
            ),
        ),
        Err(Failure::Io(socket, e)) => Answer::err(
            1,
            format!("failed: cannot ask psflip over {}: {e}\n", socket.display()),
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
    while procfs::alive(pid) {
        if Instant::now() >= deadline {
            return Some(format!(
                "note: the old generation (pid {pid}) has not exited within {bound:?}\n"
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}
