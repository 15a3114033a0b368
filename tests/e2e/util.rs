//! The machinery every e2e test shares.
//!
//! - [`Sandbox`]: one per test. A fresh temp dir, a unique tag that every
//!   process the test starts carries in its environment (`PSFLIP_E2E_TAG`, which
//!   psflip passes on to its children and successors), a watchdog that kills
//!   everything tagged if the test overruns its hard deadline, and a `Drop` that
//!   SIGKILLs whatever tagged process is still alive and removes the dir.
//! - Polling with deadlines ([`wait_until`], [`Sandbox::must`],
//!   [`Sandbox::wait_for`]): nothing here sleeps and hopes.
//! - `/proc` readers: state, parent, group, fds, signal masks, environment.
//! - [`Conf`]: a configuration builder with short timeouts.
//!
//! A process counts as dead once it is a zombie: in this sandbox PID 1 does not
//! reap, so zombies re-parented to it linger forever.

#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long a wait for something that normally takes well under a second may
/// take before the test fails (generous: the suite runs in parallel on 2 cores).
pub const T: Duration = Duration::from_secs(10);

/// The environment variable that marks a test's processes.
pub const TAG_VAR: &str = "PSFLIP_E2E_TAG";

/// The psflip binary under test.
pub fn bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("psflip")
}

/// The pidwatch binary under test.
pub fn bin_pidwatch() -> PathBuf {
    assert_cmd::cargo::cargo_bin("pidwatch")
}

/// A file in `fixtures/`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// Poll `cond` every few milliseconds until it holds (true) or `timeout` has
/// passed (false).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    wait_for(timeout, || cond().then_some(())).is_some()
}

/// Poll `f` until it yields a value or `timeout` has passed.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------
// /proc

/// The fields of `/proc/PID/stat` the tests use.
#[derive(Clone, Debug)]
pub struct Stat {
    pub comm: String,
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    /// The foreground process group of the controlling terminal.
    pub tpgid: i32,
}

pub fn stat(pid: i32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_string();
    let mut rest = text[close + 1..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    let pgrp = rest.next()?.parse().ok()?;
    let _session = rest.next()?;
    let _tty = rest.next()?;
    let tpgid = rest.next()?.parse().ok()?;
    Some(Stat {
        comm,
        state,
        ppid,
        pgrp,
        tpgid,
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
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
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

// ---------------------------------------------------------------------------
// A psflip the test started.

/// A psflip started by the test (so it is the test's child and its exit status
/// can be read). Dropping it SIGKILLs and reaps it if it still runs.
pub struct Psflip {
    child: Child,
    pub pid: i32,
    code: Option<i32>,
}

impl Psflip {
    pub fn new(child: Child) -> Psflip {
        let pid = child.id() as i32;
        Psflip {
            child,
            pid,
            code: None,
        }
    }

    /// Its exit status (code, or 128 + signal), once it has exited.
    pub fn exit_code(&mut self) -> Option<i32> {
        if self.code.is_none()
            && let Ok(Some(status)) = self.child.try_wait()
        {
            self.code = Some(code_of(status));
        }
        self.code
    }

    pub fn running(&mut self) -> bool {
        self.exit_code().is_none()
    }

    pub fn signal(&self, sig: Signal) {
        signal(self.pid, sig);
    }
}

impl Drop for Psflip {
    fn drop(&mut self) {
        if self.exit_code().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

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

static NONCE: AtomicU64 = AtomicU64::new(0);

/// Kills everything tagged if the test overruns its deadline, then gives the
/// test a grace period before ending the whole run (nothing may hang CI).
struct Watchdog {
    cancel: Option<mpsc::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Watchdog {
    fn new(name: String, tag: String, deadline: Duration) -> Watchdog {
        let (tx, rx) = mpsc::channel::<()>();
        let thread = thread::spawn(move || {
            if rx.recv_timeout(deadline) != Err(mpsc::RecvTimeoutError::Timeout) {
                return;
            }
            eprintln!("e2e: {name} overran its {deadline:?} deadline: killing its processes");
            kill_tagged(&tag);
            if rx.recv_timeout(Duration::from_secs(20)) == Err(mpsc::RecvTimeoutError::Timeout) {
                eprintln!("e2e: {name} still hangs 20 s after its deadline: aborting the run");
                std::process::exit(101);
            }
        });
        Watchdog {
            cancel: Some(tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.cancel.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One test's world. See the module documentation.
pub struct Sandbox {
    pub name: String,
    pub dir: PathBuf,
    pub tag: String,
    watchdog: Option<Watchdog>,
}

impl Sandbox {
    /// A sandbox whose test must be over within 30 s.
    pub fn new(name: &str) -> Sandbox {
        Sandbox::with_deadline(name, Duration::from_secs(30))
    }

    pub fn with_deadline(name: &str, deadline: Duration) -> Sandbox {
        let nonce = NONCE.fetch_add(1, Ordering::Relaxed);
        let unique = format!("{name}-{}-{nonce}", std::process::id());
        let dir = std::env::temp_dir().join(format!("psflip-e2e-{unique}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the sandbox dir");
        let tag = unique;
        Sandbox {
            name: name.to_string(),
            watchdog: Some(Watchdog::new(name.to_string(), tag.clone(), deadline)),
            dir,
            tag,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// Write `text` to `rel` in the sandbox; returns the path.
    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(&p, text).unwrap();
        p
    }

    /// Write the configuration to `psflip.toml`; returns the path.
    pub fn config(&self, conf: &Conf) -> PathBuf {
        self.write("psflip.toml", &conf.render())
    }

    pub fn pidfile(&self) -> PathBuf {
        self.path("psflip.pid")
    }

    pub fn child_log(&self) -> PathBuf {
        self.path("child.log")
    }

    /// psflip's stderr (its log lines, and its children's stderr).
    pub fn err_log(&self) -> PathBuf {
        self.path("psflip.err")
    }

    /// psflip's stdout (and its children's).
    pub fn out_log(&self) -> PathBuf {
        self.path("psflip.out")
    }

    /// A command running `program` in the sandbox, tagged, with the child log
    /// set, psflip's internal variables removed, stdin from /dev/null and
    /// stdout/stderr appended to the sandbox's logs.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(&self.dir)
            .env(TAG_VAR, &self.tag)
            .env("CHILD_LOG", self.child_log())
            .env_remove("NOTIFY_SOCKET")
            .env_remove("PSFLIP_READY_FD")
            .env_remove("PSFLIP_AB_FLAG")
            .env_remove("PSFLIP_GENERATION")
            .stdin(Stdio::null())
            .stdout(self.append(&self.out_log()))
            .stderr(self.append(&self.err_log()));
        cmd
    }

    fn append(&self, p: &Path) -> fs::File {
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .unwrap()
    }

    /// `psflip ARGS…`, ready to spawn.
    pub fn psflip_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = self.command(bin());
        cmd.args(args);
        cmd
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

    // --- logs ---

    pub fn psflip_log(&self) -> String {
        fs::read_to_string(self.err_log()).unwrap_or_default()
    }

    /// The log lines of the psflip with this pid, without their prefix.
    pub fn log_of(&self, pid: i32) -> Vec<String> {
        // `<time> <level> gen=N psflip[pid]: message` (see src/log.rs).
        let tag = format!("psflip[{pid}]: ");
        self.psflip_log()
            .lines()
            .filter_map(|l| l.split_once(&tag).map(|(_, m)| m.to_string()))
            .collect()
    }

    /// Whether the psflip with this pid logged a line containing `needle`.
    pub fn logged(&self, pid: i32, needle: &str) -> bool {
        self.log_of(pid).iter().any(|l| l.contains(needle))
    }

    /// Wait until the psflip with this pid logs a line containing `needle`.
    pub fn must_log(&self, pid: i32, needle: &str) {
        self.must(T, &format!("psflip[{pid}] logs {needle:?}"), || {
            self.logged(pid, needle)
        });
    }

    /// The log lines of the pidwatch with this pid, without their prefix.
    pub fn pidwatch_log_of(&self, pid: i32) -> Vec<String> {
        let tag = format!("pidwatch[{pid}]: ");
        self.psflip_log()
            .lines()
            .filter_map(|l| l.split_once(&tag).map(|(_, m)| m.to_string()))
            .collect()
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

    /// The pids named by `psflip[pid]: started WHAT (pid N)` lines, in order.
    pub fn started_by(&self, pid: i32, what: &str) -> Vec<i32> {
        let prefix = format!("started {what} (pid ");
        self.log_of(pid)
            .iter()
            .filter_map(|l| l.strip_prefix(&prefix)?.strip_suffix(')')?.parse().ok())
            .collect()
    }

    /// The app child the psflip with this pid started last (waits for it).
    pub fn child_of(&self, psflip: i32) -> i32 {
        self.wait_for(T, &format!("psflip[{psflip}] starts a child"), || {
            self.started_by(psflip, "child").last().copied()
        })
    }

    /// The successor the psflip with this pid started last (waits for it).
    pub fn successor_of(&self, psflip: i32) -> i32 {
        self.wait_for(T, &format!("psflip[{psflip}] starts a successor"), || {
            self.started_by(psflip, "successor").last().copied()
        })
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

    /// Everything a failure message needs.
    pub fn diag(&self) -> String {
        let live: Vec<String> = tagged(&self.tag).into_iter().map(describe).collect();
        format!(
            "--- psflip stderr:\n{}--- psflip stdout:\n{}--- child log:\n{}--- pidfile: {:?}\n--- live processes of this test:\n{}",
            self.psflip_log(),
            fs::read_to_string(self.out_log()).unwrap_or_default(),
            fs::read_to_string(self.child_log()).unwrap_or_default(),
            fs::read_to_string(self.pidfile()).ok(),
            live.join("\n"),
        )
    }

    /// Wait until `cond` holds; fail the test with `what` and the diagnostics
    /// otherwise.
    pub fn must(&self, timeout: Duration, what: &str, cond: impl FnMut() -> bool) {
        if !wait_until(timeout, cond) {
            panic!(
                "[{}] timed out after {timeout:?} waiting until {what}\n{}",
                self.name,
                self.diag()
            );
        }
    }

    pub fn wait_for<V>(&self, timeout: Duration, what: &str, f: impl FnMut() -> Option<V>) -> V {
        match wait_for(timeout, f) {
            Some(v) => v,
            None => panic!(
                "[{}] timed out after {timeout:?} waiting until {what}\n{}",
                self.name,
                self.diag()
            ),
        }
    }

    /// Wait until `p` exits; its status.
    pub fn wait_exit(&self, p: &mut Psflip, timeout: Duration) -> i32 {
        self.wait_for(timeout, &format!("psflip {} exits", p.pid), || {
            p.exit_code()
        })
    }

    /// Wait until the process is dead (gone or a zombie).
    pub fn must_die(&self, pid: i32, what: &str) {
        self.must(T, &format!("{what} ({pid}) is dead"), || !alive(pid));
    }

    /// Fail unless the process runs.
    pub fn assert_alive(&self, pid: i32, what: &str) {
        assert!(
            alive(pid),
            "[{}] {what} ({pid}) should be alive\n{}",
            self.name,
            self.diag()
        );
    }

    /// Wait until psflip `pid` has reaped every child that exited (a child may
    /// be a zombie for an instant between its exit and the reap).
    pub fn must_reap(&self, pid: i32) {
        self.must(T, &format!("psflip[{pid}] leaves no zombie child"), || {
            zombie_children(pid).is_empty()
        });
    }

    /// Wait until no process of this test is alive; fail otherwise.
    pub fn assert_clean(&self) {
        if !wait_until(Duration::from_secs(5), || tagged(&self.tag).is_empty()) {
            panic!(
                "[{}] processes of this test outlived it\n{}",
                self.name,
                self.diag()
            );
        }
    }

    // --- the upgrade dance ---

    /// Send the upgrade signal to `old` and wait until its successor names
    /// itself in the pidfile and `old` is gone: returns the successor's pid.
    pub fn upgrade(&self, old: i32) -> i32 {
        let before = self.started_by(old, "successor").len();
        signal(old, Signal::SIGHUP);
        let s = self.wait_for(T, &format!("psflip[{old}] starts a successor"), || {
            self.started_by(old, "successor").get(before).copied()
        });
        self.must_name(s);
        self.must_die(old, "the old psflip");
        s
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        kill_tagged(&self.tag);
        drop(self.watchdog.take());
        if std::env::var_os("PSFLIP_E2E_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("[{}] sandbox kept in {}", self.name, self.dir.display());
        }
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
            shutdown_delay: None,
            shutdown_timeout: "3s".into(),
            health: alive_table("200ms"),
        }
    }

    pub fn env(mut self, k: &str, v: &str) -> Conf {
        self.env.push((k.into(), v.into()));
        self
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
/// own process group. A child psflip has forked but not yet exec'd looks like
/// one for a few microseconds, so a count above two only counts if the same
/// processes still look like generations 50 ms later.
pub struct GenerationCounter {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<thread::JoinHandle<usize>>,
}

fn generations(tag: &str) -> Vec<i32> {
    tagged(tag)
        .into_iter()
        .filter(|&p| stat(p).is_some_and(|s| s.comm == "psflip" && s.pgrp != p))
        .collect()
}

impl GenerationCounter {
    pub fn start(tag: &str) -> GenerationCounter {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tag = tag.to_string();
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let mut max = 0;
            while !flag.load(Ordering::Relaxed) {
                let mut seen = generations(&tag);
                if seen.len() > 2 {
                    thread::sleep(Duration::from_millis(50));
                    let again = generations(&tag);
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

impl GenerationCounter {
    /// As [`GenerationCounter::start`], for a test that also runs `psflip
    /// upgrade` or `psflip status`: those clients are not generations.
    pub fn start_without_clients(tag: &str) -> GenerationCounter {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tag = tag.to_string();
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let mut max = 0;
            while !flag.load(Ordering::Relaxed) {
                let mut seen = service_generations(&tag);
                if seen.len() > 2 {
                    thread::sleep(Duration::from_millis(50));
                    let again = service_generations(&tag);
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
}

// --- shared by the upgrade tests (upgrade.rs, control.rs) ---

/// Start the first generation with `conf` and wait until it serves: the
/// psflip and its child.
pub fn serve(sb: &Sandbox, conf: &Conf) -> (Psflip, i32) {
    sb.config(conf);
    let p = sb.start();
    sb.must_name(p.pid);
    let c = sb.child_of(p.pid);
    sb.must_start(c);
    (p, c)
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
