//! The `[[proxy]]` engine: one dedicated thread with its own epoll loop, moving
//! bytes with splice(2), and a command pipe each way to the supervision loop.
//!
//! 1. The main thread opens the listeners (`effects::listen`) and calls
//!    [`Proxy::start`] after every signal is blocked, so the thread inherits the
//!    mask and never takes a signal meant for the signalfd. The thread never forks:
//!    spawns stay on the main thread (PDEATHSIG fires when the forking thread ends).
//! 2. The machine's effects become commands: [`Proxy::accept`] (`ProxyAccept`),
//!    [`Proxy::stop_accepting`] (`ProxyStopAccepting`). Until the first `accept`
//!    the listeners are open but unattended: clients wait in the backlog, never
//!    refused.
//! 3. After `stop_accepting`, the thread writes one byte back once its last
//!    connection has closed; the main loop polls [`Proxy::events_fd`] and turns it
//!    into `Event::ProxyDrained` ([`Proxy::drained`]).
//! 4. Nothing in the thread blocks on anything but `epoll_wait`: forward addresses
//!    are resolved before it starts, connects are non-blocking.
//!
//! Why a thread and not the main loop, nor an async runtime: see README,
//! "Architecture — the proxy".

mod engine;
mod ring;

/// The endpoint values now live in the leaf [`crate::values`].
pub use crate::values::endpoint;

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use crate::effects::EffectError;
use crate::effects::listen::{self, Listener, SocketFile};
use crate::sys;

/// Where a connection accepted on one listener goes.
#[derive(Clone, Debug)]
pub struct Route {
    /// The listen address, for log lines.
    pub listen: String,
    /// The forward address as configured, for log lines.
    pub forward: String,
    /// Tried in order until one accepts the connection.
    pub targets: Vec<Target>,
}

/// One address a route forwards to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// Commands from the main thread to the proxy thread, one byte each.
const CMD_ACCEPT: u8 = b'A';
const CMD_STOP: u8 = b'S';
/// The proxy thread's answer: its connections have all closed.
const EVT_DRAINED: u8 = b'D';

/// The main thread's handle on the proxy thread.
pub struct Proxy {
    listeners: Vec<Listener>,
    /// Inherited listeners the configuration dropped: their files go once we serve.
    dropped: Vec<SocketFile>,
    commands: OwnedFd,
    /// `None` once the thread closed its end (it never does while we run).
    events: Option<OwnedFd>,
    quiet: bool,
    /// The proxy thread's kernel thread id, once it runs (0 before).
    tid: Arc<AtomicI32>,
    /// Its time slices, None where the kernel reports none.
    slice: Option<Slice>,
}

/// The proxy thread's two time slices, in ns.
#[derive(Clone, Copy, Debug)]
struct Slice {
    /// The one psflip has (the kernel's default unless psflip was given one).
    normal: u64,
    /// [`sys::SHORT_SLICE_NS`], or `normal` if that is shorter.
    short: u64,
}

impl Proxy {
    /// Start the proxy thread over `listeners`, each with its route (same order).
    /// Signals must be blocked already.
    pub fn start(
        listeners: Vec<Listener>,
        dropped: Vec<SocketFile>,
        routes: Vec<Route>,
        quiet: bool,
    ) -> Result<Proxy, EffectError> {
        let pipe = |what: &str| sys::pipe().map_err(|e| EffectError::io(what.to_owned(), e));
        let (cmd_r, cmd_w) = pipe("proxy command pipe")?;
        let (evt_r, evt_w) = pipe("proxy event pipe")?;
        let engine = engine::Engine::new(
            listeners.iter().map(|l| l.fd.clone()).zip(routes).collect(),
            cmd_r,
            evt_w,
            quiet,
        )
        .map_err(|e| EffectError::io("proxy epoll", e))?;
        // The slice this thread has (the proxy thread inherits it) and the
        // short one; None where the kernel reports none.
        let prompt = sys::own_slice().map(|normal| Slice {
            normal,
            short: normal.min(sys::SHORT_SLICE_NS),
        });
        let tid = Arc::new(AtomicI32::new(0));
        let tid_out = Arc::clone(&tid);
        std::thread::Builder::new()
            .name("psflip-proxy".to_owned())
            .spawn(move || {
                // Prompt from the start: a generation's first moments are its
                // children's start-up (see `Proxy::prompt`).
                if let Some(slice) = prompt {
                    sys::set_slice(0, slice.short);
                }
                tid_out.store(sys::gettid(), Ordering::Release);
                engine.run();
                // A thread id is recycled once the thread is gone: never set
                // the slice of another process's thread.
                tid_out.store(0, Ordering::Release);
            })
            .map_err(|e| EffectError::io("cannot start the proxy thread", e))?;
        for l in &listeners {
            let how = if l.inherited { "inherited" } else { "bound" };
            if !quiet {
                crate::log::logger().info("proxy_listening", format!("proxy: {how} {}", l.key));
            }
        }
        Ok(Proxy {
            listeners,
            dropped,
            commands: cmd_w,
            events: Some(evt_r),
            quiet,
            tid,
            slice: prompt,
        })
    }

    /// Whether the proxy thread must be prompt: with a short time slice
    /// ([`sys::SHORT_SLICE_NS`]), woken by a connection it preempts whatever
    /// runs on its CPU, above all this service's new processes starting up
    /// (a successor's exec, its health check, its child), instead of waiting
    /// up to a whole slice (1.4 ms here) behind them: the accept stall of a
    /// handover (BENCHMARKS.md, session 7). Prompt from the thread's start
    /// and from each upgrade's start, until the generation serves and has
    /// been quiet ([`crate::runtime::SETTLE_AFTER`]): in steady state the
    /// normal slice keeps its batching (keep-alive requests/s about 1.5 %
    /// higher than with a short slice all the time).
    pub fn prompt(&self, on: bool) {
        let tid = self.tid.load(Ordering::Acquire);
        if let (Some(slice), true) = (self.slice, tid > 0) {
            sys::set_slice(tid, if on { slice.short } else { slice.normal });
        }
    }

    fn send(&self, cmd: u8) {
        // The pipe never fills: one byte per machine effect.
        if let Err(e) = sys::write(self.commands.as_raw_fd(), &[cmd]) {
            self.say(&format!("proxy: cannot reach the proxy thread: {e}"));
        }
    }

    fn say(&self, line: &str) {
        if !self.quiet {
            crate::log::logger().warn("proxy_error", line);
        }
    }

    /// Start accepting (this generation's child is healthy).
    pub fn accept(&mut self) {
        self.send(CMD_ACCEPT);
    }

    /// Remove the socket files of inherited listeners the configuration dropped
    /// (`Effect::RemoveDroppedSockets`: this generation is the service).
    pub fn remove_dropped_socket_files(&mut self) {
        for file in std::mem::take(&mut self.dropped) {
            if let Err(e) = file.remove_if_ours() {
                self.say(&format!(
                    "proxy: cannot remove {}: {e}",
                    file.path.display()
                ));
            }
        }
    }

    /// Stop accepting; [`Proxy::drained`] turns true once the connections closed.
    pub fn stop_accepting(&self) {
        self.send(CMD_STOP);
    }

    /// Polled by the main loop: readable when the proxy thread has news.
    pub fn events_fd(&self) -> Option<BorrowedFd<'_>> {
        self.events.as_ref().map(|fd| fd.as_fd())
    }

    /// Reads the news: whether the connections have all closed.
    pub fn drained(&mut self) -> bool {
        let mut buf = [0u8; 16];
        let mut drained = false;
        while let Some(fd) = self.events.as_ref() {
            match sys::read(fd.as_raw_fd(), &mut buf) {
                Ok(0) => {
                    // Never polled again: a closed pipe would poll ready forever.
                    self.events = None;
                    self.say("proxy: the proxy thread has stopped");
                }
                Ok(n) => drained |= buf[..n].contains(&EVT_DRAINED),
                Err(_) => break,
            }
        }
        drained
    }

    /// The fds a successor inherits and the [`crate::handoff::PROXY_FDS`] value naming them.
    pub fn handoff(&self) -> (Vec<RawFd>, String) {
        (
            self.listeners.iter().map(|l| l.fd.as_raw_fd()).collect(),
            listen::env_value(&self.listeners),
        )
    }

    /// The service stops for good: remove the Unix socket files.
    pub fn remove_socket_files(&self) {
        for file in self.listeners.iter().filter_map(|l| l.file.as_ref()) {
            match file.remove_if_ours() {
                Ok(true) => self.say(&format!("proxy: removed {}", file.path.display())),
                Ok(false) => {}
                Err(e) => self.say(&format!(
                    "proxy: cannot remove {}: {e}",
                    file.path.display()
                )),
            }
        }
    }
}

/// Resolve a `[[proxy]] forward` address into the targets tried in order.
pub fn targets(forward: &endpoint::Endpoint, cwd: &std::path::Path) -> io::Result<Vec<Target>> {
    match forward.absolute(cwd) {
        endpoint::Endpoint::Unix(path) => Ok(vec![Target::Unix(path)]),
        tcp => tcp
            .resolve(false)
            .map(|addrs| addrs.into_iter().map(Target::Tcp).collect())
            .map_err(io::Error::other),
    }
}
