//! The proxy suite's additions to the shared harness (`tests/common`): how it
//! starts psflip, what it reads from the log, `/proc/net` readers, small
//! in-test backends and clients.

#![allow(dead_code)]

use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

pub use crate::common::*;

/// Tests that load the machine run one at a time, so that their deadlines hold.
pub static HEAVY: Mutex<()> = Mutex::new(());

/// One row of /proc/net/tcp{,6}.
pub struct TcpSocket {
    pub local_port: u16,
    pub remote_port: u16,
    /// The kernel's state, in hex: `0A` listening, `02` SYN_SENT, …
    pub state: String,
    pub inode: u64,
}

/// Every TCP socket of this network namespace (/proc/net/tcp and tcp6).
pub fn tcp_sockets() -> Vec<TcpSocket> {
    let port = |f: &str| {
        f.rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    let mut all = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = fs::read_to_string(table).unwrap_or_default();
        all.extend(text.lines().skip(1).filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            Some(TcpSocket {
                local_port: port(f.get(1)?)?,
                remote_port: port(f.get(2)?)?,
                state: f.get(3)?.to_string(),
                inode: f.get(9)?.parse().ok()?,
            })
        }));
    }
    all
}

/// The inode of the TCP socket listening on `port` (from /proc/net/tcp{,6}).
pub fn tcp_listener_inode(port: u16) -> Option<u64> {
    tcp_sockets()
        .into_iter()
        .find(|t| t.state == "0A" && t.local_port == port)
        .map(|t| t.inode)
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

impl Sandbox {
    /// A sandbox in a short dir (Unix sockets are bound in it); a load test
    /// may take minutes on a busy machine, hence the long hard deadline.
    pub fn new(name: &str) -> Sandbox {
        Sandbox::create("pxt", name, Duration::from_secs(300))
    }

    pub fn log_path(&self) -> PathBuf {
        self.err_log()
    }

    /// psflip's log (and its children's stderr).
    pub fn log(&self) -> String {
        self.psflip_log()
    }

    pub fn count(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    pub fn wait_log(&self, needle: &str, times: usize, timeout: Duration) {
        self.must(
            timeout,
            &format!("{needle:?} is logged {times} time(s)"),
            || self.count(needle) >= times,
        );
    }

    /// Start `psflip -c psflip.toml`, stderr to the log file.
    pub fn start(&mut self) -> i32 {
        self.start_with_nofile(None)
    }

    /// [`Sandbox::start`], with RLIMIT_NOFILE (soft and hard) set to `nofile`.
    pub fn start_with_nofile(&mut self, nofile: Option<u64>) -> i32 {
        let mut cmd = self.psflip_cmd(&["-c", "psflip.toml"]);
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
        self.keep(cmd)
    }

    /// The exit code of the psflip started as `pid`, once it exited (within `T`).
    pub fn wait_exit(&mut self, pid: i32) -> Option<i32> {
        let p = self.started.iter_mut().find(|p| p.pid == pid)?;
        wait_for(T, || p.exit_code())
    }

    /// The pid in the pidfile (`psflip.pid`), once there.
    pub fn service(&self) -> i32 {
        self.wait_for(T, "a live psflip is in the pidfile", || {
            fs::read_to_string(self.pidfile())
                .ok()?
                .trim()
                .parse()
                .ok()
                .filter(|&p| alive(p))
        })
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
