//! Latency and footprint benchmarks of the release `psflip` binary.
//!
//! Run with `cargo bench --bench flip` (or `scripts/bench.sh`, which also runs
//! hyperfine, measures the binary's size and writes `BENCHMARKS.md`). This only
//! measures and prints: nothing here asserts on a duration.
//!
//! The bench executable is multi-call. Run as `flip child SOCKET MODE` it is the
//! supervised child: it sends the datagram `started PID PPID MODE` to the Unix
//! datagram socket at SOCKET (a path: psflip closes every fd >= 3 in its
//! children), then, in mode `fail`, exits 1 at once; otherwise it waits for
//! SIGTERM (blocked before `started` is sent, then taken with `sigtimedwait`, so
//! there is no window where SIGTERM would kill it silently), sends `term PID`
//! and exits 0. The harness binds SOCKET and timestamps every datagram, and
//! every line psflip writes on stderr, with [`Instant`] on receipt (one reader
//! thread per source, so a wait on one source never delays the stamp of another).
//!
//! Figures (every iteration runs the direct spawn and the psflip instances in
//! turn, rotating their order, so machine noise hits them alike):
//!
//! 1. launch: `Command::spawn` of psflip → its child's `started`, against
//!    `Command::spawn` of the same child directly.
//! 2. upgrade signal (SIGHUP) → the new child's `started`.
//! 3. upgrade signal → the old child's `term` (handoff), with
//!    `[healthcheck.command] cmd = ["true"], after = "0s"`.
//! 4. upgrade signal → the old psflip's stderr line `upgrade failed…`, the
//!    new child (`{{ AB "ok" "fail" }}`) exiting 1 at once.
//! 5. idle VmRSS and thread count of psflip supervising `sleep` (and of the
//!    successor after one upgrade).
//!
//! Environment: `PSFLIP_BIN` (the psflip binary; default: the one cargo built
//! for this bench, i.e. `target/release/psflip`), `PSFLIP_BENCH_RUNS` (timed
//! iterations, default 40, after 3 warm-up ones), `PSFLIP_BENCH_IDLE_RUNS`
//! (default 20), `PSFLIP_BENCH_PAUSE_MS` (idle time before each upgrade
//! signal, default 400: a real upgrade meets an idle psflip, not one that has
//! just logged its child healthy — one that has been quiet for longer than
//! `psflip::runtime::SETTLE_AFTER` (250 ms) and so has given back the pages its
//! start-up mapped, which the upgrade then faults in again), `PSFLIP_BENCH_OUT` (a directory: the
//! `summary.md`, `details.md` and `medians.tsv` fragments that
//! `scripts/bench.sh` assembles into `BENCHMARKS.md`), `PSFLIP_BENCH_ALSO`
//! (`NAME=PATH` entries separated by `:`: other psflip binaries, measured in
//! the same iterations, interleaved with the first; their fragments go to
//! `PSFLIP_BENCH_OUT/NAME/`; `NAME=PATH@standby` runs that binary with
//! `[upgrade] standby = true`).
//!
//! The harness makes itself a child subreaper, so every process psflip starts
//! ends up as its child once its parent is gone: all are reaped by pid, and at
//! the end it checks that it has no child left.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

/// Longest wait for any one event before an iteration is given up (a hang guard,
/// not a measurement).
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a process to exit before it is killed.
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);
const WARMUP: usize = 3;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("child") {
        child_main(&args[1..]);
    }
    if let Err(e) = bench_main() {
        eprintln!("flip bench: {e}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------
// The child.

fn child_main(args: &[String]) -> ! {
    let Some(sock) = args.first() else {
        std::process::exit(2)
    };
    let mode = args.get(1).map_or("ok", String::as_str);
    let pid = std::process::id();
    // SAFETY: plain libc calls on a local, initialised sigset.
    let (ppid, set) = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        if mode != "fail" {
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        }
        (libc::getppid(), set)
    };
    let Ok(socket) = UnixDatagram::unbound() else {
        std::process::exit(2)
    };
    let _ = socket.send_to(format!("started {pid} {ppid} {mode}").as_bytes(), sock);
    if mode == "fail" {
        std::process::exit(1);
    }
    // SAFETY: prctl/getppid/sigtimedwait with valid arguments.
    let sig = unsafe {
        // A stray child must not outlive whoever started it (psflip does the same
        // for its children; this covers the direct spawns).
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
        if libc::getppid() != ppid {
            std::process::exit(3);
        }
        let limit = libc::timespec {
            tv_sec: 300,
            tv_nsec: 0,
        };
        libc::sigtimedwait(&set, std::ptr::null_mut(), &limit)
    };
    if sig == libc::SIGTERM {
        let _ = socket.send_to(format!("term {pid}").as_bytes(), sock);
        std::process::exit(0);
    }
    std::process::exit(3);
}

// ---------------------------------------------------------------------------
// Events.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Src {
    Dgram,
    /// Stderr of the psflip instance with this number (its successors share it).
    Stderr(u64),
}

#[derive(Debug, Clone)]
struct Ev {
    at: Instant,
    src: Src,
    text: String,
}

impl Ev {
    /// `started PID PPID MODE`
    fn started(&self) -> Option<(u32, u32, &str)> {
        if self.src != Src::Dgram {
            return None;
        }
        let mut w = self.text.split(' ');
        if w.next()? != "started" {
            return None;
        }
        let pid = w.next()?.parse().ok()?;
        let ppid = w.next()?.parse().ok()?;
        Some((pid, ppid, w.next().unwrap_or("")))
    }

    /// `term PID`
    fn term(&self) -> Option<u32> {
        if self.src != Src::Dgram {
            return None;
        }
        self.text.strip_prefix("term ")?.parse().ok()
    }

    /// A log line `… psflip[PID]: …` of instance `inst` from `pid`, starting with `what`.
    fn log_from(&self, inst: u64, pid: Option<u32>, what: &str) -> bool {
        if self.src != Src::Stderr(inst) {
            return false;
        }
        // After the logger's `TIME LEVEL gen=N ` prefix, if any (src/log.rs).
        let Some((_, rest)) = self.text.split_once("psflip[") else {
            return false;
        };
        let Some((p, msg)) = rest.split_once("]: ") else {
            return false;
        };
        pid.is_none_or(|pid| p == pid.to_string()) && msg.starts_with(what)
    }
}

// ---------------------------------------------------------------------------
// Processes.

fn kill(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a positive pid.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Reap `pid` (our child) if it has exited; its wait status.
fn try_reap(pid: u32) -> Option<i32> {
    let mut status = 0;
    // SAFETY: waitpid on a specific pid with a valid status pointer.
    let r = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
    (r == pid as libc::pid_t).then_some(status)
}

fn describe(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!("exit {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("signal {}", libc::WTERMSIG(status))
    } else {
        format!("status {status:#x}")
    }
}

/// Whether the live process `pid` is one of ours: its command line names our
/// temporary directory.
fn is_ours(pid: u32, dir: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains(dir))
}

fn proc_status(pid: u32) -> BTreeMap<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

fn kib(status: &BTreeMap<String, String>, key: &str) -> Option<f64> {
    status.get(key)?.trim_end_matches("kB").trim().parse().ok()
}

/// The VmRSS of `pid`'s standby successor, if it has one.
fn standby_rss(pid: u32) -> Option<f64> {
    children_of(pid)
        .into_iter()
        .find(|(_, name)| name == "psflip-standby")
        .and_then(|(p, _)| kib(&proc_status(p), "VmRSS"))
}

fn children_of(me: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let st = proc_status(pid);
        if st.get("PPid").is_some_and(|p| p == &me.to_string()) {
            out.push((pid, st.get("Name").cloned().unwrap_or_default()));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Samples and statistics.

#[derive(Default)]
struct Samples {
    /// Figure key → values (ms for durations, KiB for memory, count for threads).
    values: BTreeMap<&'static str, Vec<f64>>,
    /// Iterations given up, with the reason.
    failures: Vec<String>,
}

impl Samples {
    fn push(&mut self, key: &'static str, v: f64) {
        self.values.entry(key).or_default().push(v);
    }
    fn stats(&self, key: &str) -> Option<Stats> {
        Stats::of(self.values.get(key)?)
    }
}

#[derive(Debug, Clone, Copy)]
struct Stats {
    n: usize,
    median: f64,
    p10: f64,
    p90: f64,
    min: f64,
    max: f64,
}

impl Stats {
    fn of(values: &[f64]) -> Option<Stats> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        // Nearest-rank percentiles.
        let rank = |p: f64| v[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
        Some(Stats {
            n,
            median,
            p10: rank(0.10),
            p90: rank(0.90),
            min: v[0],
            max: v[n - 1],
        })
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ---------------------------------------------------------------------------
// The harness.

struct Bench {
    psflip: PathBuf,
    exe: PathBuf,
    dir: PathBuf,
    dir_str: String,
    sock: PathBuf,
    me: u32,
    tx: Sender<Ev>,
    rx: Receiver<Ev>,
    backlog: Vec<Ev>,
    next_instance: u64,
    /// Every pid we started or learnt of, not yet reaped by us.
    live: Vec<u32>,
    reaped: HashSet<u32>,
    /// Lines of the current iteration, shown when it is given up.
    trace: Vec<String>,
    origin: Instant,
    /// Idle time before each upgrade signal: upgrades come to a psflip that has
    /// been idle, not one that just logged its child healthy.
    pause: Duration,
}

impl Bench {
    fn new(psflip: PathBuf) -> Result<Bench, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let me = std::process::id();
        let dir = std::env::temp_dir().join(format!("psflip-bench-{me}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let sock = dir.join("ev.sock");
        let socket = UnixDatagram::bind(&sock).map_err(|e| format!("{}: {e}", sock.display()))?;
        let (tx, rx) = mpsc::channel();
        let dtx = tx.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            while let Ok(n) = socket.recv(&mut buf) {
                let at = Instant::now();
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                if dtx
                    .send(Ev {
                        at,
                        src: Src::Dgram,
                        text,
                    })
                    .is_err()
                {
                    break;
                }
            }
        });
        Ok(Bench {
            psflip,
            exe,
            dir_str: dir.to_string_lossy().into_owned(),
            dir,
            sock,
            me,
            tx,
            rx,
            backlog: Vec::new(),
            next_instance: 0,
            live: Vec::new(),
            reaped: HashSet::new(),
            trace: Vec::new(),
            origin: Instant::now(),
            pause: Duration::from_millis(env_usize("PSFLIP_BENCH_PAUSE_MS", 400) as u64),
        })
    }

    fn note(&mut self, ev: &Ev) {
        let t = ms(ev.at.duration_since(self.origin));
        self.trace
            .push(format!("{t:>12.3} ms {:?} {}", ev.src, ev.text));
    }

    /// The first event (already received or to come) matching `pred`.
    fn wait(&mut self, what: &str, pred: impl Fn(&Ev) -> bool) -> Result<Ev, String> {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return Ok(self.backlog.remove(i));
        }
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(ev) => {
                    self.note(&ev);
                    if pred(&ev) {
                        return Ok(ev);
                    }
                    self.backlog.push(ev);
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!("no {what} within {EVENT_TIMEOUT:?}"));
                }
                Err(RecvTimeoutError::Disconnected) => return Err("event channel closed".into()),
            }
        }
    }

    fn begin_iteration(&mut self) {
        while let Ok(ev) = self.rx.try_recv() {
            self.note(&ev);
        }
        self.backlog.clear();
        self.trace.clear();
    }

    fn track(&mut self, pid: u32) {
        if !self.live.contains(&pid) {
            self.live.push(pid);
        }
    }

    /// Wait for our child `pid` to exit and reap it.
    fn wait_exit(&mut self, pid: u32) -> Result<i32, String> {
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Some(status) = try_reap(pid) {
                self.reaped.insert(pid);
                self.live.retain(|&p| p != pid);
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(format!("pid {pid} did not exit within {EXIT_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    /// Kill whatever of ours is still alive and reap every child we have.
    fn cleanup(&mut self) {
        for pid in std::mem::take(&mut self.live) {
            if self.reaped.contains(&pid) {
                continue;
            }
            if try_reap(pid).is_some() {
                continue;
            }
            // Grandchildren may have been reaped by their psflip and their pid
            // reused: only kill what still runs our command lines.
            if is_ours(pid, &self.dir_str) {
                kill(pid, libc::SIGKILL);
            }
        }
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            let mut status = 0;
            // SAFETY: waitpid(-1) with a valid status pointer.
            let r = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if r > 0 {
                self.reaped.insert(r as u32);
                continue;
            }
            if r < 0 || Instant::now() >= deadline {
                break; // ECHILD: nothing left.
            }
            // Children still running: the killed ones are on their way out; anything
            // else of ours (pdeathsig victims) follows them.
            for (pid, _) in children_of(self.me) {
                if is_ours(pid, &self.dir_str) {
                    kill(pid, libc::SIGKILL);
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.reaped.clear();
    }

    fn write_config(&self, name: &str, body: &str) -> Result<PathBuf, String> {
        let path = self.dir.join(name);
        std::fs::write(&path, body).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(path)
    }

    /// The child command line as a TOML array, with `mode` as its last element.
    fn child_cmd(&self, mode: &str) -> String {
        format!(
            "[{}, \"child\", {}, {}]",
            toml_str(&self.exe.to_string_lossy()),
            toml_str(&self.sock.to_string_lossy()),
            toml_str(mode)
        )
    }

    /// Start psflip on `config`; returns (pid, instance, time just before the spawn).
    fn spawn_psflip(&mut self, config: &Path) -> Result<(u32, u64, Instant), String> {
        let inst = self.next_instance;
        self.next_instance += 1;
        let mut cmd = Command::new(&self.psflip);
        cmd.arg("-c")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let t0 = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("{}: {e}", self.psflip.display()))?;
        let pid = child.id();
        self.track(pid);
        let stderr = child.stderr.take().ok_or("no stderr pipe")?;
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let at = Instant::now();
                let Ok(text) = line else { break };
                if tx
                    .send(Ev {
                        at,
                        src: Src::Stderr(inst),
                        text,
                    })
                    .is_err()
                {
                    break;
                }
            }
        });
        // `child` is dropped without waiting: we reap by pid.
        Ok((pid, inst, t0))
    }

    /// Baseline: spawn the child directly.
    fn run_direct(&mut self, s: &mut Samples) -> Result<(), String> {
        let mut cmd = Command::new(&self.exe);
        cmd.arg("child")
            .arg(&self.sock)
            .arg("ok")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let t0 = Instant::now();
        let child = cmd.spawn().map_err(|e| format!("direct spawn: {e}"))?;
        let pid = child.id();
        self.track(pid);
        let me = self.me;
        let ev = self.wait("started from the direct child", |e| {
            e.started().is_some_and(|(p, pp, _)| p == pid && pp == me)
        })?;
        s.push("direct", ms(ev.at - t0));
        kill(pid, libc::SIGTERM);
        self.wait("term from the direct child", |e| e.term() == Some(pid))?;
        let st = self.wait_exit(pid)?;
        if st != 0 {
            return Err(format!("direct child ended with {}", describe(st)));
        }
        Ok(())
    }

    /// Launch, then a successful upgrade (figures 1, 2, 3).
    fn run_upgrade(&mut self, cfg: &Path, s: &mut Samples) -> Result<(), String> {
        let (ps, inst, t0) = self.spawn_psflip(cfg)?;
        let ev = self.wait("started from psflip's child", |e| {
            e.started().is_some_and(|(_, pp, _)| pp == ps)
        })?;
        let launch = ms(ev.at - t0);
        let (child1, _, _) = ev.started().unwrap_or_default();
        self.track(child1);
        self.wait("\"child is healthy; serving\"", |e| {
            e.log_from(inst, Some(ps), "child is healthy; serving")
        })?;

        std::thread::sleep(self.pause);
        let ts = Instant::now();
        kill(ps, libc::SIGHUP);
        let ev = self.wait("started from the new child", |e| {
            e.started()
                .is_some_and(|(p, pp, _)| pp != ps && p != child1)
        })?;
        let (child2, child2_parent, _) = ev.started().unwrap_or_default();
        self.track(child2);
        let spawned = ms(ev.at - ts);
        let ev = self.wait("term from the old child", |e| e.term() == Some(child1))?;
        let handoff = ms(ev.at - ts);
        let ev = self.wait("\"started successor\"", |e| {
            e.log_from(inst, Some(ps), "started successor (pid ")
        })?;
        let successor = ev
            .text
            .rsplit("(pid ")
            .next()
            .and_then(|t| t.trim_end_matches(')').parse::<u32>().ok())
            .ok_or_else(|| format!("cannot parse {:?}", ev.text))?;
        self.track(successor);
        if child2_parent != successor {
            return Err(format!(
                "new child {child2}'s parent is {child2_parent}, not the successor {successor}"
            ));
        }
        let st = self.wait_exit(ps)?;
        if st != 0 {
            return Err(format!("old psflip ended with {}", describe(st)));
        }
        // Stop the service: the successor (now our child) forwards SIGTERM.
        kill(successor, libc::SIGTERM);
        self.wait("term from the new child", |e| e.term() == Some(child2))?;
        let st = self.wait_exit(successor)?;
        if st != 0 {
            return Err(format!("successor ended with {}", describe(st)));
        }
        s.push("launch", launch);
        s.push("spawn", spawned);
        s.push("handoff", handoff);
        Ok(())
    }

    /// A failed upgrade: the new child exits 1 at once (figure 4).
    fn run_failed(&mut self, cfg: &Path, s: &mut Samples) -> Result<(), String> {
        let (ps, inst, _) = self.spawn_psflip(cfg)?;
        let ev = self.wait("started from psflip's child", |e| {
            e.started().is_some_and(|(_, pp, _)| pp == ps)
        })?;
        let (child1, _, _) = ev.started().unwrap_or_default();
        self.track(child1);
        self.wait("\"child is healthy; serving\"", |e| {
            e.log_from(inst, Some(ps), "child is healthy; serving")
        })?;

        std::thread::sleep(self.pause);
        let ts = Instant::now();
        kill(ps, libc::SIGHUP);
        let ev = self.wait("started from the failing child", |e| {
            e.started().is_some_and(|(_, _, mode)| mode == "fail")
        })?;
        let fail_started = ms(ev.at - ts);
        let ev = self.wait("\"upgrade failed\"", |e| {
            e.log_from(inst, Some(ps), "upgrade failed")
        })?;
        let detected = ms(ev.at - ts);
        // The old generation carries on: stop it.
        kill(ps, libc::SIGTERM);
        self.wait("term from the old child", |e| e.term() == Some(child1))?;
        let st = self.wait_exit(ps)?;
        if st != 0 {
            return Err(format!("psflip ended with {}", describe(st)));
        }
        s.push("failed", detected);
        s.push("failed_child_started", fail_started);
        Ok(())
    }

    /// Idle footprint of psflip supervising `sleep`, and of its successor after one
    /// upgrade (figure 5).
    fn run_idle(&mut self, cfg: &Path, s: &mut Samples, smaps: &mut String) -> Result<(), String> {
        // Quiet for well over psflip's SETTLE_AFTER (250 ms): settled.
        let settle = Duration::from_millis(1000);
        let (ps, inst, _) = self.spawn_psflip(cfg)?;
        self.wait("\"child is healthy; serving\"", |e| {
            e.log_from(inst, Some(ps), "child is healthy; serving")
        })?;
        std::thread::sleep(settle);
        let st = proc_status(ps);
        let standby = standby_rss(ps);
        if smaps.is_empty() {
            *smaps =
                std::fs::read_to_string(format!("/proc/{ps}/smaps_rollup")).unwrap_or_default();
        }
        kill(ps, libc::SIGHUP);
        let ev = self.wait("\"started successor\"", |e| {
            e.log_from(inst, Some(ps), "started successor (pid ")
        })?;
        let successor = ev
            .text
            .rsplit("(pid ")
            .next()
            .and_then(|t| t.trim_end_matches(')').parse::<u32>().ok())
            .ok_or_else(|| format!("cannot parse {:?}", ev.text))?;
        self.track(successor);
        self.wait("\"the previous generation has exited\"", |e| {
            e.log_from(inst, Some(successor), "the previous generation has exited")
        })?;
        self.wait_exit(ps)?;
        std::thread::sleep(settle);
        let st2 = proc_status(successor);
        let standby2 = standby_rss(successor);
        kill(successor, libc::SIGTERM);
        self.wait_exit(successor)?;

        // A standby successor (`[upgrade] standby`) is part of the footprint.
        for (key, from, extra) in [("rss", &st, standby), ("rss_successor", &st2, standby2)] {
            let rss = kib(from, "VmRSS").ok_or("no VmRSS")?;
            s.push(key, rss + extra.unwrap_or(0.0));
        }
        if let Some(v) = standby {
            s.push("rss_standby", v);
        }
        for (key, from) in [("rss_anon", &st), ("rss_file", &st), ("rss_shmem", &st)] {
            let field = match key {
                "rss_anon" => "RssAnon",
                "rss_file" => "RssFile",
                _ => "RssShmem",
            };
            if let Some(v) = kib(from, field) {
                s.push(key, v);
            }
        }
        for (key, from) in [("threads", &st), ("threads_successor", &st2)] {
            let n: f64 = from
                .get("Threads")
                .and_then(|t| t.parse().ok())
                .ok_or("no Threads")?;
            s.push(key, n);
        }
        Ok(())
    }
}

fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn find_psflip() -> Result<PathBuf, String> {
    let candidates = [
        std::env::var_os("PSFLIP_BIN").map(PathBuf::from),
        option_env!("CARGO_BIN_EXE_psflip").map(PathBuf::from),
        Some(PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/target/release/psflip"
        ))),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "no psflip binary: build it (cargo build --release) or set PSFLIP_BIN".into()
        })
}

fn bench_main() -> Result<(), String> {
    let runs = env_usize("PSFLIP_BENCH_RUNS", 40).max(1);
    let idle_runs = env_usize("PSFLIP_BENCH_IDLE_RUNS", 20).max(1);
    let psflip = find_psflip()?;
    let psflip = psflip.canonicalize().unwrap_or(psflip);

    // Orphans (a successor whose old psflip exited, children whose psflip died)
    // come to us, so that every process is reaped and none can hide.
    // SAFETY: prctl with constant arguments.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
    let mut b = Bench::new(psflip)?;
    println!("psflip: {}", b.psflip.display());
    println!("child:  {}", b.exe.display());
    println!("runs: {runs} (+{WARMUP} warm-up), idle runs: {idle_runs}");

    // The three configurations, without and with `[upgrade] standby = true`.
    let mut configs = Vec::new();
    for (suffix, extra) in [("", ""), ("-standby", "\n[upgrade]\nstandby = true\n")] {
        let upgrade_cfg = b.write_config(
            &format!("upgrade{suffix}.toml"),
            &format!(
                "cmd = {}\n\n[healthcheck.command]\ncmd = [\"true\"]\nafter = \"0s\"\n\n[shutdown]\ntimeout = \"2s\"\n{extra}",
                b.child_cmd("ok")
            ),
        )?;
        let failed_cfg = b.write_config(
            &format!("failed{suffix}.toml"),
            &format!(
                "cmd = {}\n\n[healthcheck.alive]\ntimeout = \"100ms\"\n\n[shutdown]\ntimeout = \"2s\"\n{extra}",
                b.child_cmd("{{ AB \"ok\" \"fail\" }}")
            ),
        )?;
        let idle_cfg = b.write_config(
            &format!("idle{suffix}.toml"),
            &format!("cmd = [\"sleep\", \"1000\"]\n\n[healthcheck.alive]\ntimeout = \"100ms\"\n\n[shutdown]\ntimeout = \"2s\"\n{extra}"),
        )?;
        configs.push([upgrade_cfg, failed_cfg, idle_cfg]);
    }

    // Other binaries measured in the same iterations (`PSFLIP_BENCH_ALSO`,
    // `NAME=PATH` separated by `:`): their runs interleave with the shipped
    // one's, so that a comparison is not a comparison of two moments of a
    // shared machine.
    // (name, binary, with a standby successor)
    let mut bins: Vec<(String, PathBuf, bool)> = vec![(String::new(), b.psflip.clone(), false)];
    if let Ok(also) = std::env::var("PSFLIP_BENCH_ALSO") {
        for item in also.split(':').filter(|i| !i.is_empty()) {
            let (name, path) = item
                .split_once('=')
                .ok_or_else(|| format!("PSFLIP_BENCH_ALSO: {item:?} is not NAME=PATH"))?;
            // `PATH@standby`: that binary with `[upgrade] standby = true`.
            let (path, standby) = match path.strip_suffix("@standby") {
                Some(path) => (path, true),
                None => (path, false),
            };
            println!(
                "also:   {name} = {path}{}",
                if standby {
                    " with [upgrade] standby = true"
                } else {
                    ""
                }
            );
            bins.push((name.to_string(), PathBuf::from(path), standby));
        }
    }
    // `PSFLIP_BENCH_STANDBY=1`: the shipped binary again, configured with
    // `[upgrade] standby = true`, in the same iterations.
    if std::env::var("PSFLIP_BENCH_STANDBY").is_ok_and(|v| v == "1") {
        println!(
            "also:   standby = {} with [upgrade] standby = true",
            b.psflip.display()
        );
        bins.push(("standby".to_string(), b.psflip.clone(), true));
    }
    let mut s: Vec<Samples> = bins.iter().map(|_| Samples::default()).collect();
    let mut warm: Vec<Samples> = bins.iter().map(|_| Samples::default()).collect();
    type Step = fn(&mut Bench, &Path, &Path, &mut Samples) -> Result<(), String>;
    let mut steps: Vec<(&str, usize, Step)> = vec![("direct", 0, |b, _, _, s| b.run_direct(s))];
    for j in 0..bins.len() {
        steps.push(("upgrade", j, |b, u, _, s| b.run_upgrade(u, s)));
        steps.push(("failed", j, |b, _, f, s| b.run_failed(f, s)));
    }
    for i in 0..WARMUP + runs {
        for k in 0..steps.len() {
            let (name, j, step) = steps[(i + k) % steps.len()];
            let target = if i < WARMUP { &mut warm[j] } else { &mut s[j] };
            b.psflip = bins[j].1.clone();
            let [upgrade_cfg, failed_cfg, _] = &configs[usize::from(bins[j].2)];
            b.begin_iteration();
            if let Err(e) = step(&mut b, upgrade_cfg, failed_cfg, target) {
                eprintln!("iteration {i} ({name} {}) given up: {e}", bins[j].0);
                for line in &b.trace {
                    eprintln!("  {line}");
                }
                target.failures.push(format!("{name}: {e}"));
            }
            b.cleanup();
        }
    }
    // The direct spawns are every binary's baseline.
    let direct = s[0].values.get("direct").cloned().unwrap_or_default();
    for other in s.iter_mut().skip(1) {
        other.values.insert("direct", direct.clone());
    }
    let mut smaps: Vec<String> = bins.iter().map(|_| String::new()).collect();
    for i in 0..idle_runs {
        for k in 0..bins.len() {
            let j = (i + k) % bins.len();
            b.psflip = bins[j].1.clone();
            let idle_cfg = &configs[usize::from(bins[j].2)][2];
            b.begin_iteration();
            if let Err(e) = b.run_idle(idle_cfg, &mut s[j], &mut smaps[j]) {
                eprintln!("idle run {i} ({}) given up: {e}", bins[j].0);
                for line in &b.trace {
                    eprintln!("  {line}");
                }
                s[j].failures.push(format!("idle: {e}"));
            }
            b.cleanup();
        }
    }

    // Nothing may be left: as a subreaper, any descendant would be our child.
    std::thread::sleep(Duration::from_millis(100));
    b.cleanup();
    let left = children_of(b.me);
    let strays: Vec<u32> = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|&p| p != b.me && is_ours(p, &b.dir_str))
                .collect()
        })
        .unwrap_or_default();
    let _ = std::fs::remove_dir_all(&b.dir);

    let leftover = left.len() + strays.len();
    for (j, (name, path, _)) in bins.iter().enumerate() {
        let report = Report::new(&s[j], &warm[j], leftover);
        if j > 0 {
            print!("\n{name} ({}):\n", path.display());
        }
        print!("\n{}", report.summary_table());
        print!("\n{}", report.details_table());
        println!("\nsmaps_rollup of one idle psflip:\n{}", smaps[j]);
    }
    if !left.is_empty() || !strays.is_empty() {
        println!("LEFT OVER: children {left:?}, others {strays:?}");
    } else {
        println!("processes left over: none");
    }
    if let Some(out) = std::env::var_os("PSFLIP_BENCH_OUT") {
        for (j, (name, _, _)) in bins.iter().enumerate() {
            // The shipped binary's files in the directory itself, the others' in
            // a subdirectory each.
            let out = PathBuf::from(&out).join(name);
            std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
            let write = |file: &str, body: String| {
                let p = out.join(file);
                std::fs::write(&p, body).map_err(|e| format!("{}: {e}", p.display()))
            };
            let report = Report::new(&s[j], &warm[j], leftover);
            write("summary.md", report.summary_rows())?;
            write("medians.tsv", report.medians_tsv())?;
            write("details.md", report.details_table())?;
            write("smaps_rollup.txt", smaps[j].clone())?;
            write("leftover.txt", format!("{leftover}\n"))?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Report.

struct Report<'a> {
    s: &'a Samples,
    warm: &'a Samples,
    leftover: usize,
}

fn fmt_ms(v: f64) -> String {
    format!("{v:.3} ms")
}

fn fmt_mib(kib: f64) -> String {
    format!("{:.2} MiB", kib / 1024.0)
}

fn met(ok: bool) -> &'static str {
    if ok { "yes" } else { "**no**" }
}

impl Report<'_> {
    fn new<'a>(s: &'a Samples, warm: &'a Samples, leftover: usize) -> Report<'a> {
        Report { s, warm, leftover }
    }

    /// Summary rows: figure | median | target | met?
    fn summary_rows(&self) -> String {
        let mut out = String::new();
        let s = self.s;
        if let (Some(p), Some(d)) = (s.stats("launch"), s.stats("direct")) {
            let over = p.median - d.median;
            let _ = writeln!(
                out,
                "| 1. launch → child running, overhead over a direct spawn (n = {}) | {} ({} vs {}, ×{:.2}) | ≤ 0.5 ms over direct | {} |",
                p.n.min(d.n),
                fmt_ms(over),
                fmt_ms(p.median),
                fmt_ms(d.median),
                p.median / d.median,
                met(over <= 0.5)
            );
        }
        let timed = [
            ("spawn", "2. upgrade signal → new child running", 2.0),
            (
                "handoff",
                "3. upgrade signal → old child signalled (command check `true`, after 0s)",
                3.0,
            ),
            (
                "failed",
                "4. upgrade signal → failure logged (new child exits 1 at once)",
                3.0,
            ),
        ];
        for (key, label, target) in timed {
            if let Some(t) = s.stats(key) {
                let _ = writeln!(
                    out,
                    "| {label} (n = {}) | {} | ≤ {target} ms | {} |",
                    t.n,
                    fmt_ms(t.median),
                    met(t.median <= target)
                );
            }
        }
        if let (Some(r), Some(t)) = (s.stats("rss"), s.stats("threads")) {
            let _ = writeln!(
                out,
                "| 5. idle RSS / threads, supervising `sleep` (n = {}) | {} / {} | ≤ 1.5 MB / 1 | {} |",
                r.n,
                fmt_mib(r.median),
                t.median,
                met(r.median * 1024.0 <= 1.5e6 && t.median <= 1.0)
            );
        }
        out
    }

    /// `key<TAB>n<TAB>median` for every measurement, plus `overhead` (figure 1).
    fn medians_tsv(&self) -> String {
        let mut out = String::new();
        for key in self.s.values.keys() {
            if let Some(t) = self.s.stats(key) {
                let _ = writeln!(out, "{key}\t{}\t{}", t.n, t.median);
            }
        }
        if let (Some(p), Some(d)) = (self.s.stats("launch"), self.s.stats("direct")) {
            let _ = writeln!(out, "overhead\t{}\t{}", p.n.min(d.n), p.median - d.median);
        }
        out
    }

    fn summary_table(&self) -> String {
        format!(
            "| figure | median | target | met? |\n|---|---|---|---|\n{}",
            self.summary_rows()
        )
    }

    fn details_table(&self) -> String {
        let rows = [
            ("direct", "direct spawn → child running (baseline)", true),
            ("launch", "1. psflip launch → child running", true),
            ("spawn", "2. upgrade signal → new child running", true),
            ("handoff", "3. upgrade signal → old child got SIGTERM", true),
            (
                "failed_child_started",
                "4a. upgrade signal → failing new child running",
                true,
            ),
            (
                "failed",
                "4. upgrade signal → \"upgrade failed\" logged",
                true,
            ),
            (
                "rss",
                "5. idle VmRSS, first generation (with its standby's, if any)",
                false,
            ),
            (
                "rss_standby",
                "5. idle VmRSS of the standby successor alone",
                false,
            ),
            ("rss_anon", "5. idle RssAnon, first generation", false),
            ("rss_file", "5. idle RssFile, first generation", false),
            ("rss_shmem", "5. idle RssShmem, first generation", false),
            (
                "rss_successor",
                "5. idle VmRSS, successor after one upgrade",
                false,
            ),
            ("threads", "5. threads, first generation", false),
            ("threads_successor", "5. threads, successor", false),
        ];
        let mut out = String::from(
            "| measurement | n | median | p10 | p90 | min | max |\n|---|---|---|---|---|---|---|\n",
        );
        let fmt = |key: &str, v: f64, time: bool| {
            if time {
                format!("{v:.3} ms")
            } else if key.starts_with("threads") {
                format!("{v}")
            } else {
                format!("{v:.0} KiB")
            }
        };
        for (key, label, time) in rows {
            let Some(t) = self.s.stats(key) else {
                continue;
            };
            let _ = writeln!(
                out,
                "| {label} | {} | {} | {} | {} | {} | {} |",
                t.n,
                fmt(key, t.median, time),
                fmt(key, t.p10, time),
                fmt(key, t.p90, time),
                fmt(key, t.min, time),
                fmt(key, t.max, time)
            );
        }
        // Paired view of figure 1: each psflip launch minus the direct spawn of the
        // same iteration.
        if let (Some(p), Some(d)) = (self.s.values.get("launch"), self.s.values.get("direct"))
            && p.len() == d.len()
        {
            let diffs: Vec<f64> = p.iter().zip(d).map(|(a, b)| a - b).collect();
            if let Some(t) = Stats::of(&diffs) {
                let _ = writeln!(
                    out,
                    "| 1. paired difference launch − direct (same iteration) | {} | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms |",
                    t.n, t.median, t.p10, t.p90, t.min, t.max
                );
            }
        }
        let _ = writeln!(
            out,
            "\nIterations given up: {} timed, {} warm-up{}. Processes left over at the end: {}.",
            self.s.failures.len(),
            self.warm.failures.len(),
            if self.s.failures.is_empty() {
                String::new()
            } else {
                format!(" ({})", self.s.failures.join("; "))
            },
            self.leftover
        );
        out
    }
}
