//! What the proxy tests share: a sandbox per test (temp dir, a tag in the
//! environment of every process it starts, cleanup by pid), polling with deadlines,
//! `/proc` readers, small in-test backends and clients.
//!
//! A process counts as dead once it is a zombie: PID 1 here does not reap, so
//! zombies re-parented to it linger.

#![allow(dead_code)]

use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long something that normally takes well under a second may take (the suite
/// runs in parallel on 2 cores).
pub const T: Duration = Duration::from_secs(10);

const TAG_VAR: &str = "PSFLIP_PROXY_TEST_TAG";

static NONCE: AtomicU64 = AtomicU64::new(0);

/// Tests that load the machine run one at a time, so that their deadlines hold.
pub static HEAVY: Mutex<()> = Mutex::new(());

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

pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    wait_for(timeout, || cond().then_some(())).is_some()
}

/// Whether `pid` runs (a zombie does not).
pub fn alive(pid: i32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

pub fn signal(pid: i32, sig: Signal) {
    let _ = kill(Pid::from_raw(pid), sig);
}

/// The inodes of the sockets `pid` holds.
pub fn socket_inodes(pid: i32) -> Vec<u64> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let target = fs::read_link(e.ok()?.path()).ok()?;
        let t = target.to_str()?;
        t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
    })
    .collect()
}

/// The inode of the TCP socket listening on `port` (from /proc/net/tcp{,6}).
pub fn tcp_listener_inode(port: u16) -> Option<u64> {
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let local_port = f[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) {
                return f[9].parse().ok();
            }
        }
    }
    None
}

/// The inode of the Unix socket listening at `path` (from /proc/net/unix).
pub fn unix_listener_inode(path: &Path) -> Option<u64> {
    let text = fs::read_to_string("/proc/net/unix").unwrap_or_default();
    let path = path.to_str()?;
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // Flags 00010000 is __SO_ACCEPTCON: listening.
        (f.len() >= 8 && f[7] == path && f[3] == "00010000").then(|| f[6].parse().ok())?
    })
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One test's world: a temp dir, a tag, the processes started; cleaned up on drop.
pub struct Sandbox {
    pub dir: PathBuf,
    tag: String,
    started: Vec<Child>,
}

impl Sandbox {
    pub fn new(name: &str) -> Sandbox {
        let unique = format!(
            "{name}-{}-{}",
            std::process::id(),
            NONCE.fetch_add(1, Ordering::Relaxed)
        );
        // Short: Unix socket paths must fit in 107 bytes.
        let dir = PathBuf::from("/tmp").join(format!("pxt-{unique}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Sandbox {
            dir,
            tag: unique,
            started: Vec::new(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        fs::write(&p, text).unwrap();
        p
    }

    pub fn log_path(&self) -> PathBuf {
        self.path("psflip.err")
    }

    /// psflip's log (and its children's stderr).
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn count(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    pub fn wait_log(&self, needle: &str, times: usize, timeout: Duration) {
        assert!(
            wait_until(timeout, || self.count(needle) >= times),
            "{needle:?} not logged {times} time(s) within {timeout:?}; log:\n{}",
            self.log()
        );
    }

    /// Start `psflip -c psflip.toml`, stderr to the log file.
    pub fn start(&mut self) -> i32 {
        self.start_with_nofile(None)
    }

    /// [`Sandbox::start`], with RLIMIT_NOFILE (soft and hard) set to `nofile`.
    pub fn start_with_nofile(&mut self, nofile: Option<u64>) -> i32 {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_psflip"));
        cmd.args(["-c", "psflip.toml"])
            .current_dir(&self.dir)
            .env(TAG_VAR, &self.tag)
            .env_remove("PSFLIP_READY_FD")
            .env_remove("PSFLIP_AB_FLAG")
            .env_remove("PSFLIP_GENERATION")
            .env_remove("PSFLIP_PROXY_FDS")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(n) = nofile {
            // SAFETY: setrlimit is async-signal-safe and allocates nothing.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().unwrap();
        let pid = child.id() as i32;
        self.started.push(child);
        pid
    }

    /// The exit code of the psflip started as `pid`, once it exited (within `T`).
    pub fn wait_exit(&mut self, pid: i32) -> Option<i32> {
        let child = self.started.iter_mut().find(|c| c.id() as i32 == pid)?;
        let deadline = Instant::now() + T;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// The pid in the pidfile (`psflip.pid`), once there.
    pub fn service(&self) -> i32 {
        wait_for(T, || {
            fs::read_to_string(self.path("psflip.pid"))
                .ok()?
                .trim()
                .parse()
                .ok()
                .filter(|&p| alive(p))
        })
        .expect("a live psflip in the pidfile")
    }

    /// The app child the log says `psflip` started last.
    pub fn child_of(&self, psflip: i32) -> i32 {
        let needle = format!("psflip[{psflip}]: started child (pid ");
        let log = self.log();
        log.rmatch_indices(&needle)
            .next()
            .and_then(|(i, _)| log[i + needle.len()..].split(')').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no child of {psflip} in the log:\n{log}"))
    }

    /// Every pid the log names: psflip generations and the processes they started.
    pub fn logged_pids(&self) -> Vec<i32> {
        let log = self.log();
        let mut pids: Vec<i32> = Vec::new();
        for line in log.lines() {
            if let Some((_, rest)) = line.split_once("psflip[")
                && let Some(pid) = rest.split(']').next().and_then(|p| p.parse().ok())
            {
                pids.push(pid);
            }
            if let Some((_, rest)) = line.split_once("(pid ")
                && let Some(pid) = rest.split(')').next().and_then(|p| p.parse().ok())
            {
                pids.push(pid);
            }
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Live processes carrying this sandbox's tag.
    pub fn tagged(&self) -> Vec<i32> {
        let needle = format!("{TAG_VAR}={}\0", self.tag).into_bytes();
        let me = std::process::id() as i32;
        fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&p| p != me && alive(p))
            .filter(|&p| {
                fs::read(format!("/proc/{p}/environ"))
                    .is_ok_and(|env| env.windows(needle.len()).any(|w| w == needle.as_slice()))
            })
            .collect()
    }

    /// The psflip generations the log names.
    pub fn generations(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .log()
            .lines()
            .filter_map(|l| l.split_once("psflip[")?.1.split(']').next()?.parse().ok())
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
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
        assert!(
            wait_until(T, || left().is_empty()),
            "processes outlived the test: {:?}; log:\n{}",
            left(),
            self.log()
        );
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // By pid: what the log names and what carries our tag.
        for _ in 0..100 {
            let pids: Vec<i32> = self
                .logged_pids()
                .into_iter()
                .chain(self.tagged())
                .filter(|&p| alive(p))
                .collect();
            if pids.is_empty() {
                break;
            }
            for p in pids {
                signal(p, Signal::SIGKILL);
            }
            thread::sleep(Duration::from_millis(10));
        }
        for child in &mut self.started {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

// ---------------------------------------------------------------------------
// Clients and backends.

/// A connected stream of either kind.
pub trait Stream: Read + Write + Send + 'static {
    fn shutdown_write(&self) -> io::Result<()>;
    fn set_timeout(&self, d: Duration);
}

impl Stream for TcpStream {
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
    fn set_timeout(&self, d: Duration) {
        self.set_read_timeout(Some(d)).unwrap();
        self.set_write_timeout(Some(d)).unwrap();
    }
}

impl Stream for UnixStream {
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
    fn set_timeout(&self, d: Duration) {
        self.set_read_timeout(Some(d)).unwrap();
        self.set_write_timeout(Some(d)).unwrap();
    }
}

/// Where a client connects: `127.0.0.1:PORT` or a Unix socket path.
#[derive(Clone, Debug)]
pub enum Addr {
    Tcp(u16),
    Unix(PathBuf),
}

impl Addr {
    pub fn connect(&self) -> io::Result<Box<dyn Stream>> {
        let s: Box<dyn Stream> = match self {
            Addr::Tcp(port) => Box::new(TcpStream::connect_timeout(
                &([127, 0, 0, 1], *port).into(),
                Duration::from_secs(5),
            )?),
            Addr::Unix(path) => Box::new(UnixStream::connect(path)?),
        };
        s.set_timeout(Duration::from_secs(5));
        Ok(s)
    }

    /// The `[[proxy]]` spelling of this address.
    pub fn config(&self) -> String {
        match self {
            Addr::Tcp(port) => format!("127.0.0.1:{port}"),
            Addr::Unix(path) => format!("unix://{}", path.display()),
        }
    }
}

/// Send `msg`, half-close, read the answer to its end.
pub fn exchange(addr: &Addr, msg: &[u8]) -> io::Result<Vec<u8>> {
    let mut s = addr.connect()?;
    s.write_all(msg)?;
    s.shutdown_write()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(out)
}

/// A backend run by the test: each connection gets its own thread running
/// `handler`. Stops accepting when dropped.
pub struct Backend {
    pub addr: Addr,
    stop: Arc<AtomicBool>,
}

impl Backend {
    pub fn tcp(handler: impl Fn(Box<dyn Stream>) + Send + Sync + 'static) -> Backend {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = Addr::Tcp(l.local_addr().unwrap().port());
        l.set_nonblocking(true).unwrap();
        Backend::run(addr, handler, move || {
            l.accept().map(|(s, _)| {
                s.set_nonblocking(false).unwrap();
                Box::new(s) as Box<dyn Stream>
            })
        })
    }

    pub fn unix(
        path: PathBuf,
        handler: impl Fn(Box<dyn Stream>) + Send + Sync + 'static,
    ) -> Backend {
        let l = UnixListener::bind(&path).unwrap();
        l.set_nonblocking(true).unwrap();
        Backend::run(Addr::Unix(path), handler, move || {
            l.accept().map(|(s, _)| {
                s.set_nonblocking(false).unwrap();
                Box::new(s) as Box<dyn Stream>
            })
        })
    }

    fn run(
        addr: Addr,
        handler: impl Fn(Box<dyn Stream>) + Send + Sync + 'static,
        accept: impl Fn() -> io::Result<Box<dyn Stream>> + Send + 'static,
    ) -> Backend {
        let stop = Arc::new(AtomicBool::new(false));
        let handler = Arc::new(handler);
        let flag = stop.clone();
        thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match accept() {
                    Ok(s) => {
                        s.set_timeout(Duration::from_secs(10));
                        let h = handler.clone();
                        thread::spawn(move || h(s));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Backend { addr, stop }
    }

    /// Answers `echo:` and what it read, once the client half-closed.
    pub fn echo_tcp() -> Backend {
        Backend::tcp(echo)
    }
}

pub fn echo(mut s: Box<dyn Stream>) {
    let mut got = Vec::new();
    if s.read_to_end(&mut got).is_ok() {
        let _ = s.write_all(b"echo:");
        let _ = s.write_all(&got);
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// User plus system CPU time of `pid` so far, in clock ticks (1/100 s).
pub fn cpu_ticks(pid: i32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15; `fields` starts at field 3.
    fields
        .get(11..13)
        .map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum())
}
