//! The harness every process-level test suite shares (`tests/e2e`,
//! `tests/proxy`), included by each with `#[path = "../common/mod.rs"] mod common;`.
//! Each suite adds its own methods to [`Sandbox`] in its `util.rs` (how it starts
//! psflip, what it reads from the logs); what is here is the same for all.
//!
//! - [`Sandbox`]: one per test. A fresh temp dir, a unique tag that every
//!   process the test starts carries in its environment ([`TAG_VAR`], which
//!   psflip passes on to its children and successors), a watchdog that kills
//!   everything tagged if the test overruns its hard deadline, and a `Drop` that
//!   SIGKILLs, by pid, whatever tagged process is still alive and removes the dir.
//! - Polling with deadlines ([`wait_until`], [`wait_for`], [`Sandbox::must`],
//!   [`Sandbox::wait_for`]): nothing here sleeps and hopes.
//! - Process helpers ([`procfs`]): state, parent, group, fds, sockets,
//!   environment, signals by pid, the tagged processes.
//! - Leftover checks: [`Sandbox::assert_clean`], [`Sandbox::stop_and_check`].
//! - [`props`]: the one seed policy of the proptests.

#![allow(dead_code)]

pub mod procfs;
pub mod props;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

pub use procfs::*;

/// How long a wait for something that normally takes well under a second may
/// take before the test fails (generous: the suites run in parallel on 2 cores).
pub const T: Duration = Duration::from_secs(10);

/// The environment variable that marks a test's processes.
pub const TAG_VAR: &str = "PSFLIP_E2E_TAG";

/// The psflip binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_psflip"))
}

/// The pidwatch binary under test.
pub fn bin_pidwatch() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pidwatch"))
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
pub fn wait_for<V>(timeout: Duration, mut f: impl FnMut() -> Option<V>) -> Option<V> {
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

/// A suite that needs what this machine lacks says so loudly on stderr (the
/// caller then returns); under CI (`CI=true`) that is a failure.
pub fn skipped(suite: &str, why: &str) {
    eprintln!(
        "\n{0}\nSKIPPED: {suite} cannot run here: {why}\n{0}\n",
        "#".repeat(72)
    );
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true: {suite} must run ({why})"
    );
}

/// For the `Drop` of a guard over real components (a private systemd, a runsv
/// service): unless the test already tore them down (`done`), `teardown` and
/// say on stderr what it had to clean up (`what` names the guard).
pub fn teardown_on_drop<T: std::fmt::Debug>(
    done: bool,
    what: &str,
    teardown: impl FnOnce() -> Vec<T>,
) {
    if !done {
        let left = teardown();
        if !left.is_empty() {
            eprintln!("{what}: left behind: {left:?}");
        }
    }
}

/// A loopback port nothing listens on right now, and that nothing else in
/// this run is handed before the test binds it: it lies below the kernel's
/// ephemeral range, which `bind(…:0)` and outgoing connects draw from (a
/// backend, a client or another test's port 0 started meanwhile took a port
/// picked from that range in one run), and successive calls in this process
/// never return the same one (a counter; the pid spreads test processes apart).
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    const LOW: u32 = 10_000;
    let ephemeral = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let span = ephemeral.saturating_sub(LOW).max(1_000);
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let i = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = (LOW + (start + i) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{}", LOW + span);
}

// ---------------------------------------------------------------------------
// A psflip the test started.

/// A process started by the test (so it is the test's child and its exit status
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
            eprintln!("test: {name} overran its {deadline:?} deadline: killing its processes");
            kill_tagged(&tag);
            if rx.recv_timeout(Duration::from_secs(20)) == Err(mpsc::RecvTimeoutError::Timeout) {
                eprintln!("test: {name} still hangs 20 s after its deadline: aborting the run");
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
    /// psflips the test started and keeps by pid (see [`Sandbox::keep`]).
    pub started: Vec<Psflip>,
    watchdog: Option<Watchdog>,
}

impl Sandbox {
    /// A sandbox in `/tmp/PREFIX-NAME-PID-N` whose test must be over within
    /// `deadline`. Keep `PREFIX` short where the test binds Unix sockets in the
    /// dir (a socket path fits in 107 bytes).
    pub fn create(prefix: &str, name: &str, deadline: Duration) -> Sandbox {
        let nonce = NONCE.fetch_add(1, Ordering::Relaxed);
        let unique = format!("{name}-{}-{nonce}", std::process::id());
        let dir = PathBuf::from("/tmp").join(format!("{prefix}-{unique}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the sandbox dir");
        let tag = unique;
        Sandbox {
            name: name.to_string(),
            watchdog: Some(Watchdog::new(name.to_string(), tag.clone(), deadline)),
            dir,
            tag,
            started: Vec::new(),
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
            .env_remove("PSFLIP_PROXY_FDS")
            .stdin(Stdio::null())
            .stdout(append(&self.out_log()))
            .stderr(append(&self.err_log()));
        cmd
    }

    /// `psflip ARGS…`, ready to spawn.
    pub fn psflip_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = self.command(bin());
        cmd.args(args);
        cmd
    }

    /// Spawns `cmd` and keeps its handle in the sandbox; returns its pid.
    pub fn keep(&mut self, mut cmd: Command) -> i32 {
        let p = Psflip::new(cmd.spawn().expect("spawn"));
        let pid = p.pid;
        self.started.push(p);
        pid
    }

    // --- logs ---

    /// psflip's stderr so far.
    pub fn psflip_log(&self) -> String {
        fs::read_to_string(self.err_log()).unwrap_or_default()
    }

    /// The log lines of the psflip with this pid, without their prefix.
    pub fn log_of(&self, pid: i32) -> Vec<String> {
        self.lines_of("psflip", pid)
    }

    /// The lines `PROGRAM[PID]: …` of psflip's stderr, without their prefix.
    pub fn lines_of(&self, program: &str, pid: i32) -> Vec<String> {
        // `<time> <level> gen=N psflip[pid]: message` (see src/log.rs).
        let tag = format!("{program}[{pid}]: ");
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

    /// The psflip generations the log names, sorted.
    pub fn generations(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .psflip_log()
            .lines()
            .filter_map(|l| l.split_once("psflip[")?.1.split(']').next()?.parse().ok())
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Every pid the log names: psflip generations and the processes they
    /// started (`(pid N)`), sorted.
    pub fn logged_pids(&self) -> Vec<i32> {
        let mut pids = self.generations();
        pids.extend(self.psflip_log().lines().filter_map(|line| {
            let (_, rest) = line.split_once("(pid ")?;
            rest.split(')').next()?.parse::<i32>().ok()
        }));
        pids.sort_unstable();
        pids.dedup();
        pids
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
            self.fail(&format!("timed out after {timeout:?} waiting until {what}"));
        }
    }

    /// Wait until `f` yields a value; fail the test with `what` and the
    /// diagnostics otherwise.
    pub fn wait_for<V>(&self, timeout: Duration, what: &str, f: impl FnMut() -> Option<V>) -> V {
        wait_for(timeout, f).unwrap_or_else(|| {
            self.fail(&format!("timed out after {timeout:?} waiting until {what}"))
        })
    }

    /// Fail the test with `what` and the diagnostics.
    pub fn fail(&self, what: &str) -> ! {
        panic!("[{}] {what}\n{}", self.name, self.diag())
    }

    /// SIGTERM to `pid`, then wait until it is dead.
    pub fn terminate(&self, pid: i32, what: &str) {
        signal(pid, Signal::SIGTERM);
        self.must_die(pid, what);
    }

    /// Wait until the process is dead (gone or a zombie).
    pub fn must_die(&self, pid: i32, what: &str) {
        self.must(T, &format!("{what} ({pid}) is dead"), || !alive(pid));
    }

    /// Fail unless the process runs.
    pub fn assert_alive(&self, pid: i32, what: &str) {
        if !alive(pid) {
            self.fail(&format!("{what} ({pid}) should be alive"));
        }
    }

    /// Wait until psflip `pid` has reaped every child that exited (a child may
    /// be a zombie for an instant between its exit and the reap).
    pub fn must_reap(&self, pid: i32) {
        self.must(T, &format!("psflip[{pid}] leaves no zombie child"), || {
            zombie_children(pid).is_empty()
        });
    }

    // --- leftovers ---

    /// Live processes carrying this sandbox's tag.
    pub fn tagged(&self) -> Vec<i32> {
        tagged(&self.tag)
    }

    /// Wait until no process of this test is alive; fail otherwise.
    pub fn assert_clean(&self) {
        if !wait_until(Duration::from_secs(5), || self.tagged().is_empty()) {
            self.fail("processes of this test outlived it");
        }
    }

    /// Stop the service with SIGTERM and check that nothing the test started
    /// outlives it. Every live generation is signalled, again until none is left:
    /// an old generation takes the service back if its successor dies right after
    /// taking over.
    pub fn stop_and_check(&mut self) {
        wait_until(T, || {
            let live: Vec<i32> = self
                .generations()
                .into_iter()
                .filter(|&p| alive(p))
                .collect();
            for &p in &live {
                signal(p, Signal::SIGTERM);
            }
            live.is_empty() || {
                thread::sleep(Duration::from_millis(200));
                false
            }
        });
        let pids = self.logged_pids();
        let left = || -> Vec<i32> {
            let mut left: Vec<i32> = pids.iter().copied().filter(|&p| alive(p)).collect();
            left.extend(self.tagged());
            left
        };
        if !wait_until(T, || left().is_empty()) {
            self.fail(&format!("processes outlived the test: {:?}", left()));
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // By pid: what carries our tag (psflip passes it on to every process it
        // starts), then the handles we hold.
        kill_tagged(&self.tag);
        self.started.clear();
        drop(self.watchdog.take());
        if thread::panicking() || std::env::var_os("PSFLIP_E2E_KEEP").is_some() {
            eprintln!("[{}] sandbox kept in {}", self.name, self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn append(p: &Path) -> fs::File {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .unwrap()
}
