//! The e2e suite's additions to the shared harness (`tests/common`): how it
//! starts psflip and pidwatch, what it reads from the fixture's log, the
//! pidfile, configurations ([`Conf`]) and the upgrade dance.

#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;

use nix::sys::signal::Signal;

pub use crate::common::*;

// ---------------------------------------------------------------------------
// Events logged by fixtures/child.sh.

/// One line of the fixture's log: `EVENT PID NANOS REST`.
#[derive(Clone, Debug)]
pub struct Ev {
    pub kind: String,
    pub pid: i32,
    /// Wall clock, nanoseconds since the epoch.
    pub ns: u128,
    pub rest: String,
}

// ---------------------------------------------------------------------------
// The sandbox.

impl Sandbox {
    /// A sandbox whose test must be over within 30 s.
    pub fn new(name: &str) -> Sandbox {
        Sandbox::with_deadline(name, Duration::from_secs(30))
    }

    pub fn with_deadline(name: &str, deadline: Duration) -> Sandbox {
        Sandbox::create("psflip-e2e", name, deadline)
    }

    /// Write the configuration to `psflip.toml`; returns the path.
    pub fn config(&self, conf: &Conf) -> PathBuf {
        self.write("psflip.toml", &conf.render())
    }

    /// `pidwatch ARGS…`, ready to spawn (tagged: its CMD and every psflip
    /// generation inherit the tag).
    pub fn pidwatch_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = self.command(bin_pidwatch());
        cmd.args(args);
        cmd
    }

    pub fn spawn(&self, mut cmd: Command) -> Psflip {
        Psflip::new(cmd.spawn().expect("spawn"))
    }

    /// `psflip -c psflip.toml`.
    pub fn start(&self) -> Psflip {
        self.spawn(self.psflip_cmd(&["-c", "psflip.toml"]))
    }

    /// Write `conf`, start psflip, and wait until its pidfile names it.
    pub fn start_with(&self, conf: &Conf) -> Psflip {
        self.config(conf);
        let p = self.start();
        self.must_name(p.pid);
        p
    }

    /// The log lines of the pidwatch with this pid, without their prefix.
    pub fn pidwatch_log_of(&self, pid: i32) -> Vec<String> {
        self.lines_of("pidwatch", pid)
    }

    /// Whether the pidwatch with this pid logged a line containing `needle`.
    pub fn pidwatch_logged(&self, pid: i32, needle: &str) -> bool {
        self.pidwatch_log_of(pid).iter().any(|l| l.contains(needle))
    }

    /// Wait until the pidwatch with this pid logs a line containing `needle`.
    pub fn must_pidwatch_log(&self, pid: i32, needle: &str) {
        self.must(T, &format!("pidwatch[{pid}] logs {needle:?}"), || {
            self.pidwatch_logged(pid, needle)
        });
    }

    /// The fixture's log.
    pub fn events(&self) -> Vec<Ev> {
        let text = fs::read_to_string(self.child_log()).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let mut it = l.splitn(4, ' ');
                Some(Ev {
                    kind: it.next()?.to_string(),
                    pid: it.next()?.parse().ok()?,
                    ns: it.next()?.parse().ok()?,
                    rest: it.next().unwrap_or("").to_string(),
                })
            })
            .collect()
    }

    /// The signals the fixture with this pid logged, in order.
    pub fn signals_of(&self, pid: i32) -> Vec<String> {
        self.events()
            .into_iter()
            .filter(|e| e.pid == pid && e.kind == "signal")
            .map(|e| e.rest)
            .collect()
    }

    /// The `started` event of the fixture with this pid.
    pub fn started_event(&self, pid: i32) -> Option<Ev> {
        self.events()
            .into_iter()
            .find(|e| e.pid == pid && e.kind == "started")
    }

    /// Wait until the fixture with this pid logs that it started; returns the
    /// arguments it logged.
    pub fn must_start(&self, pid: i32) -> String {
        self.wait_for(T, &format!("fixture {pid} logs that it started"), || {
            self.started_event(pid).map(|e| e.rest)
        })
    }

    /// Wait until the fixture with this pid logs signal `name`.
    pub fn must_get_signal(&self, pid: i32, name: &str) {
        self.must(T, &format!("fixture {pid} logs signal {name}"), || {
            self.signals_of(pid).iter().any(|s| s == name)
        });
    }

    // --- pidfile ---

    /// The pid the pidfile names, if it holds exactly `<pid>\n`.
    pub fn read_pidfile(&self) -> Option<i32> {
        let text = fs::read_to_string(self.pidfile()).ok()?;
        let digits = text.strip_suffix('\n')?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }

    /// Wait until the pidfile names `pid`.
    pub fn must_name(&self, pid: i32) {
        self.must(T, &format!("the pidfile names {pid}"), || {
            self.read_pidfile() == Some(pid)
        });
    }

    // --- waiting, with the sandbox's state in failure messages ---

    /// Wait until `p` exits; its status.
    pub fn wait_exit(&self, p: &mut Psflip, timeout: Duration) -> i32 {
        self.wait_for(timeout, &format!("psflip {} exits", p.pid), || {
            p.exit_code()
        })
    }

    // --- the upgrade dance ---

    /// Send the upgrade signal to `old` and wait until its successor names
    /// itself in the pidfile and `old` is gone: returns the successor's pid.
    pub fn upgrade(&self, old: i32) -> i32 {
        self.upgrade_by(old, old)
    }

    /// [`Sandbox::upgrade`], the signal sent to `to` (`old` itself, or the
    /// pidwatch in front of it).
    pub fn upgrade_by(&self, to: i32, old: i32) -> i32 {
        let before = self.started_by(old, "successor").len();
        signal(to, Signal::SIGHUP);
        let s = self.wait_for(T, &format!("psflip[{old}] starts a successor"), || {
            self.started_by(old, "successor").get(before).copied()
        });
        self.must_name(s);
        self.must_die(old, "the old psflip");
        s
    }
}

// ---------------------------------------------------------------------------
// Configurations.

/// A TOML basic string.
pub fn q(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A TOML array of strings.
pub fn qa<S: AsRef<str>>(items: &[S]) -> String {
    let v: Vec<String> = items.iter().map(|s| q(s.as_ref())).collect();
    format!("[{}]", v.join(", "))
}

/// A configuration, rendered to TOML. Defaults: a pidfile in the sandbox, the
/// alive healthcheck at 200 ms, upgrade.timeout 3 s, shutdown.timeout 3 s (generous: under load a TERM-handling shell may be slow, and SIGKILL must not beat it).
#[derive(Clone, Debug)]
pub struct Conf {
    pub cmd: Vec<String>,
    pub env: Vec<(String, String)>,
    pub pidfile: Option<PathBuf>,
    pub workdir: Option<String>,
    /// Extra top-level lines, verbatim.
    pub top: Vec<String>,
    pub upgrade_signal: Option<String>,
    pub upgrade_timeout: String,
    /// `[upgrade] standby = true` (rendered only when on).
    pub standby: bool,
    pub shutdown_delay: Option<String>,
    pub shutdown_timeout: String,
    /// The healthcheck table, verbatim.
    pub health: String,
}

impl Conf {
    /// Runs `fixtures/child.sh ARGS…`.
    pub fn fixture(sb: &Sandbox, args: &[&str]) -> Conf {
        let mut cmd = vec![
            "sh".to_string(),
            fixture("child.sh").to_string_lossy().into_owned(),
        ];
        cmd.extend(args.iter().map(|s| s.to_string()));
        Conf::cmd(sb, &cmd)
    }

    /// Runs `sleep 1000`: a plain program, not a shell.
    pub fn sleep(sb: &Sandbox) -> Conf {
        Conf::cmd(sb, &["sleep", "1000"])
    }

    pub fn cmd<S: AsRef<str>>(sb: &Sandbox, cmd: &[S]) -> Conf {
        Conf {
            cmd: cmd.iter().map(|s| s.as_ref().to_string()).collect(),
            env: Vec::new(),
            pidfile: Some(sb.pidfile()),
            workdir: None,
            top: Vec::new(),
            upgrade_signal: None,
            upgrade_timeout: "3s".into(),
            standby: false,
            shutdown_delay: None,
            shutdown_timeout: "3s".into(),
            health: alive_table("200ms"),
        }
    }

    pub fn env(mut self, k: &str, v: &str) -> Conf {
        self.env.push((k.into(), v.into()));
        self
    }

    /// The fixture exits with `code` this many milliseconds after it started.
    pub fn exits(self, after_ms: &str, code: &str) -> Conf {
        self.env("CHILD_EXIT_AFTER_MS", after_ms)
            .env("CHILD_EXIT_CODE", code)
    }

    pub fn no_pidfile(mut self) -> Conf {
        self.pidfile = None;
        self
    }

    pub fn alive(mut self, timeout: &str) -> Conf {
        self.health = alive_table(timeout);
        self
    }

    /// `[healthcheck.command]` with this command, first run at once, then every
    /// `interval`.
    pub fn probe<S: AsRef<str>>(mut self, cmd: &[S], interval: &str) -> Conf {
        self.health = format!(
            "[healthcheck.command]\ncmd = {}\nafter = \"0s\"\ninterval = {}\n",
            qa(cmd),
            q(interval)
        );
        self
    }

    pub fn upgrade_timeout(mut self, t: &str) -> Conf {
        self.upgrade_timeout = t.into();
        self
    }

    /// `[upgrade] standby = true`: a standby successor waits for the next upgrade.
    pub fn standby(mut self) -> Conf {
        self.standby = true;
        self
    }

    pub fn shutdown_timeout(mut self, t: &str) -> Conf {
        self.shutdown_timeout = t.into();
        self
    }

    pub fn shutdown_delay(mut self, t: &str) -> Conf {
        self.shutdown_delay = Some(t.into());
        self
    }

    pub fn top(mut self, line: &str) -> Conf {
        self.top.push(line.into());
        self
    }

    pub fn render(&self) -> String {
        let mut s = format!("cmd = {}\n", qa(&self.cmd));
        if !self.env.is_empty() {
            let pairs: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            s += &format!("env = {}\n", qa(&pairs));
        }
        if let Some(p) = &self.pidfile {
            s += &format!("pidfile = {}\n", q(&p.to_string_lossy()));
        }
        if let Some(w) = &self.workdir {
            s += &format!("workdir = {}\n", q(w));
        }
        for l in &self.top {
            s += l;
            s.push('\n');
        }
        s += "\n[upgrade]\n";
        if let Some(sig) = &self.upgrade_signal {
            s += &format!("signal = {}\n", q(sig));
        }
        s += &format!("timeout = {}\n", q(&self.upgrade_timeout));
        if self.standby {
            s += "standby = true\n";
        }
        s += "\n[shutdown]\n";
        if let Some(d) = &self.shutdown_delay {
            s += &format!("delay = {}\n", q(d));
        }
        s += &format!("timeout = {}\n\n", q(&self.shutdown_timeout));
        s += &self.health;
        s
    }
}

fn alive_table(timeout: &str) -> String {
    format!("[healthcheck.alive]\ntimeout = {}\n", q(timeout))
}

/// Append a line to a file (used by probe scripts' callers and the like).
pub fn append_line(p: &Path, line: &str) {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .unwrap();
    writeln!(f, "{line}").unwrap();
}

/// Samples, on a thread, how many psflip generations of a test run at once
/// (I2). A generation is a live tagged `psflip` process that does not lead its
/// own process group and has exec'd: a child psflip has forked but not yet
/// exec'd carries psflip's name until its exec and is told apart by the
/// kernel's `PF_FORKNOEXEC` flag (under load that window outlasted the 50 ms
/// recheck once). A count above two still only counts if the same processes
/// look like generations 50 ms later.
pub struct GenerationCounter {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<thread::JoinHandle<usize>>,
}

fn generations(tag: &str) -> Vec<i32> {
    tagged(tag)
        .into_iter()
        .filter(|&p| {
            stat(p).is_some_and(|s| s.comm == "psflip" && s.pgrp != p && !s.forked_not_execed())
        })
        .collect()
}

impl GenerationCounter {
    pub fn start(tag: &str) -> GenerationCounter {
        GenerationCounter::sampling(tag, generations)
    }

    /// As [`GenerationCounter::start`], for a test that also runs `psflip
    /// upgrade` or `psflip status`: those clients are not generations.
    pub fn start_without_clients(tag: &str) -> GenerationCounter {
        GenerationCounter::sampling(tag, service_generations)
    }

    fn sampling(tag: &str, look: fn(&str) -> Vec<i32>) -> GenerationCounter {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tag = tag.to_string();
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let mut max = 0;
            while !flag.load(Ordering::Relaxed) {
                let mut seen = look(&tag);
                if seen.len() > 2 {
                    thread::sleep(Duration::from_millis(50));
                    let again = look(&tag);
                    seen.retain(|p| again.contains(p));
                }
                max = max.max(seen.len());
                thread::sleep(Duration::from_millis(3));
            }
            max
        });
        GenerationCounter {
            stop,
            thread: Some(thread),
        }
    }

    /// I2: never more than two generations ran at once.
    pub fn assert_i2(self) {
        let most = self.finish();
        assert!(most <= 2, "I2: {most} psflip generations ran at once");
    }

    /// The most generations seen at once.
    pub fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for GenerationCounter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The generations of a test's service: as [`generations`], without the
/// `psflip upgrade` and `psflip status` clients (psflip processes too).
fn service_generations(tag: &str) -> Vec<i32> {
    generations(tag)
        .into_iter()
        .filter(|&p| {
            let cmdline = fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            !cmdline
                .split(|b| *b == 0)
                .skip(1)
                .any(|arg| arg == b"upgrade" || arg == b"status")
        })
        .collect()
}

/// Start psflip over a fixture child that exits with code 3 some 700 ms after
/// it is healthy; returns once the pidfile names psflip.
pub fn start_child_exiting_3(sb: &Sandbox) -> Psflip {
    sb.config(&Conf::fixture(sb, &[]).alive("150ms").exits("700", "3"));
    let p = sb.start();
    sb.must_name(p.pid);
    p
}

// --- shared by the upgrade tests ---

/// Stop the service run by psflip `s` (not the test's child, so its status
/// cannot be read) and check that nothing is left.
pub fn finish(sb: &Sandbox, s: i32) {
    sb.terminate(s, "the last generation");
    sb.assert_clean();
}

/// SIGTERM to the test's psflip; waits until it and everything it started is gone.
pub fn stop(sb: &Sandbox, p: &mut Psflip) {
    p.signal(Signal::SIGTERM);
    sb.wait_exit(p, T);
    sb.assert_clean();
}

/// Failure (b) of the upgrade table: `conf` with a new child that exits (code
/// 4) 50 ms after its start, before the 1 s it needs to be healthy.
pub fn exits_before_healthy(conf: &Conf) -> Conf {
    conf.clone().alive("1s").exits("50", "4")
}

/// Failure (c) of the upgrade table: `conf` with a healthcheck that never
/// passes within an upgrade.timeout of 700 ms.
pub fn never_healthy(conf: &Conf) -> Conf {
    conf.clone()
        .probe(&["false"], "100ms")
        .upgrade_timeout("700ms")
}

/// I3 after a failed upgrade: the old generation carries on untouched, and
/// once `conf` is restored a later upgrade (`upgrade`, by signal or by `psflip
/// upgrade`, returns the new psflip) takes over; then the service stops and
/// leaves nothing behind.
pub fn recovers_by(
    sb: &Sandbox,
    p: &mut Psflip,
    c1: i32,
    conf: &Conf,
    upgrade: impl FnOnce(&Sandbox, &Psflip) -> i32,
) {
    assert_untouched(sb, p, c1);
    sb.config(conf);
    let s = upgrade(sb, p);
    assert_took_over(sb, p, c1, s);
    finish(sb, s);
}

/// I3: generation `s` took over from `p` (started by the test): `p` exited 0,
/// its child `c1` got exactly the shutdown signal, and `s`'s child started.
pub fn assert_took_over(sb: &Sandbox, p: &mut Psflip, c1: i32, s: i32) {
    assert_eq!(sb.wait_exit(p, T), 0, "{}", sb.diag());
    assert_eq!(
        sb.signals_of(c1),
        ["TERM"],
        "the old child gets the shutdown signal once\n{}",
        sb.diag()
    );
    sb.must_start(sb.child_of(s));
}

/// Start the first generation with `conf` and wait until it serves: the
/// psflip and its child.
pub fn serve(sb: &Sandbox, conf: &Conf) -> (Psflip, i32) {
    sb.config(conf);
    let p = sb.start();
    let c = must_serve(sb, &p);
    (p, c)
}

/// Wait until psflip `p` serves: the pidfile names it and its child has
/// started. Returns the child.
pub fn must_serve(sb: &Sandbox, p: &Psflip) -> i32 {
    sb.must_name(p.pid);
    let c = sb.child_of(p.pid);
    sb.must_start(c);
    c
}

/// A copy of the psflip under test installed as `bin/psflip` in the sandbox:
/// copied next to it, then renamed into place, as a package manager does.
pub fn deploy(sb: &Sandbox) -> PathBuf {
    let dir = sb.path("bin");
    fs::create_dir_all(&dir).unwrap();
    let new = dir.join("psflip.new");
    fs::copy(bin(), &new).unwrap();
    fs::set_permissions(&new, fs::Permissions::from_mode(0o755)).unwrap();
    let dest = dir.join("psflip");
    fs::rename(&new, &dest).unwrap();
    dest
}

/// `INSTALLED -c psflip.toml`, for a psflip [`deploy`]ed in the sandbox.
pub fn start_installed(sb: &Sandbox, installed: &Path) -> Psflip {
    let mut cmd = sb.command(installed);
    cmd.args(["-c", "psflip.toml"]);
    // [`deploy`] has just written the file: a process another test forks
    // meanwhile holds it open for writing until it execs, and exec'ing the
    // file fails with ETXTBSY until then.
    let child = sb.wait_for(
        T,
        &format!("{} starts", installed.display()),
        || match cmd.spawn() {
            Ok(child) => Some(child),
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ETXTBSY as i32) => None,
            Err(e) => panic!("spawn {}: {e}", installed.display()),
        },
    );
    Psflip::new(child)
}

/// I3 after a failed upgrade: the old psflip and its child run as before, the
/// child was never signalled, the pidfile names the old psflip, and nothing of
/// the failed generation is left.
pub fn assert_untouched(sb: &Sandbox, p: &mut Psflip, c1: i32) {
    assert!(p.running(), "the old psflip must carry on\n{}", sb.diag());
    sb.assert_alive(c1, "the old child");
    assert_eq!(ppid(c1), Some(p.pid));
    assert_eq!(
        sb.signals_of(c1),
        Vec::<String>::new(),
        "the old child was signalled"
    );
    sb.must_name(p.pid);
    let old = p.pid;
    sb.must(T, "only the old generation is left", || {
        tagged(&sb.tag)
            .into_iter()
            .all(|x| x == old || pgrp(x) == Some(c1))
    });
    sb.must_reap(old);
}

/// The credentials (pid, uid) of the process listening at the other end of
/// `stream`, as the kernel reports them (SO_PEERCRED).
pub fn peer_of(stream: &std::os::unix::net::UnixStream) -> Option<(i32, u32)> {
    use nix::sys::socket::{getsockopt, sockopt};
    let cred = getsockopt(stream, sockopt::PeerCredentials).ok()?;
    Some((cred.pid(), cred.uid()))
}

/// The control socket psflip `pid` serves under its public name, found as a
/// client would meet it: a socket file in root's (or this user's) psflip
/// directory whose server is `pid` by the kernel's word.
pub fn control_socket_of(pid: i32) -> Option<PathBuf> {
    let euid = nix::unistd::geteuid().as_raw();
    let dirs = [
        PathBuf::from("/run/psflip"),
        PathBuf::from(format!("/tmp/psflip-{euid}")),
    ];
    for dir in dirs {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !name.ends_with(".sock") {
                continue;
            }
            let Ok(stream) = std::os::unix::net::UnixStream::connect(e.path()) else {
                continue;
            };
            if peer_of(&stream).is_some_and(|(p, _)| p == pid) {
                return Some(e.path());
            }
        }
    }
    None
}
