//! The proxy thread: one epoll loop over the listeners and the command pipe
//! (level-triggered) and two sockets per connection (edge-triggered).
//!
//! Each connection has two halves, client→backend and backend→client. A half reads
//! its source and writes what it read to its destination: small messages through a
//! 16 KiB buffer (recv + send: for a request or a response of a few hundred bytes
//! this costs measurably less CPU than splice's page bookkeeping, ~6 % per request),
//! and, once a read fills that buffer, with splice(2) through a pipe (bulk: the
//! bytes never enter user space). What the destination does not take at once waits
//! in a pipe, either way. Pipes come from a small pool and go back as soon as they
//! are empty, so an idle connection holds two sockets and nothing else.
//!
//! Epoll is edge-triggered, and each socket is registered once, for reading and
//! writing, when it is opened; it leaves epoll by being closed. A side remembers
//! what epoll last said (readable, writable) until a call says otherwise: a short
//! read or EAGAIN clears readable (as nginx does; after the peer's FIN, no new
//! edge will come: a short read there is the end of stream on TCP, and elsewhere
//! only EOF or EAGAIN ends reading), a short write or EAGAIN clears writable. So a
//! request/response costs one recv and one send per direction and no epoll_ctl, a
//! connection two epoll_ctl in all, and a peer's FIN that came with its last bytes
//! no extra recv (its FIN leaves with them too: send(MSG_MORE), then shutdown). Tokens carry a
//! generation: an event for a closed connection whose slot was taken again (its
//! socket may live on in a child between clone and exec) is recognised and dropped.
//!
//! End of stream on a source shuts down the destination's write side once the pipe
//! is empty (each direction is half-closed on its own). A reset on a source is
//! mirrored to the other peer (SO_LINGER 0, then close). A destination that is gone
//! ends its half only: what is still coming the other way is delivered, then the
//! connection is closed; what the source sent meanwhile stays unread, so the close
//! resets it, as the gone peer's own kernel would have.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ring::{Sends, Sent};
use super::{CMD_ACCEPT, CMD_STOP, EVT_DRAINED, Route, Target};
use crate::sys::{self, SockAddr};

const IN: u32 = libc::EPOLLIN as u32;
const OUT: u32 = libc::EPOLLOUT as u32;
const ERR: u32 = libc::EPOLLERR as u32;
const HUP: u32 = libc::EPOLLHUP as u32;
const RDHUP: u32 = libc::EPOLLRDHUP as u32;
const ET: u32 = libc::EPOLLET as u32;
/// What every connection socket is registered for, once.
const CONN_EVENTS: u32 = IN | OUT | RDHUP | ET;

const TOKEN_COMMANDS: u64 = u64::MAX;
/// The send ring's fd ([`Sends`]): an answer came after its submit.
const TOKEN_RING: u64 = u64::MAX - 1;
/// Listener `i` is `TOKEN_LISTENER | i`; a connection's side is
/// `generation << 32 | slot << 1 | side`, the generation below bit 61.
const TOKEN_LISTENER: u64 = 1 << 62;
const GENERATION_MASK: u32 = (1 << 29) - 1;

fn conn_token(generation: u32, slot: usize, side: usize) -> u64 {
    (generation as u64) << 32 | (slot as u64) << 1 | side as u64
}

const CLIENT: usize = 0;
const BACKEND: usize = 1;

/// How much one splice asks for: whatever the pipe takes.
const SPLICE_LEN: usize = 1 << 20;
/// The copy buffer for small messages (see [`copy`]).
const COPY_BUF: usize = 16 * 1024;
/// A read this big suggests more is queued: read again before going back to epoll.
const BIG_READ: usize = 16 * 1024;
/// Reads in a row on one half before the others get their turn.
const MAX_ROUNDS: usize = 8;
const ACCEPT_BATCH: usize = 64;
/// Out of fds (or memory): stop accepting this long instead of spinning.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
const PAUSE_LOG_EVERY: Duration = Duration::from_secs(5);
/// A Unix backend with a full backlog answers EAGAIN, which epoll cannot wait for,
/// and a backend socket cannot be opened while psflip is out of fds: the connect is
/// tried again after `RETRY`, for at most `RETRY_FOR`, the client waiting.
const RETRY: Duration = Duration::from_millis(5);
const RETRY_FOR: Duration = Duration::from_secs(5);
/// Empty pipes kept for reuse.
const POOL_MAX: usize = 64;
const MAX_EVENTS: usize = 256;
/// Rounds of submit and answers after a batch of events (see `flush_sends`).
const FLUSH_TURNS: usize = 8;

struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
}

#[derive(Default)]
struct Half {
    /// Holds the bytes read from the source and not yet written (`pending > 0`).
    pipe: Option<Pipe>,
    pending: usize,
    /// The source reached end of stream.
    eof: bool,
    /// We shut down the destination's write side.
    shut: bool,
    /// The destination is gone: this half is over, its source no longer read.
    broken: bool,
    /// A read once filled the copy buffer: this is a bulk transfer, moved with
    /// splice from now on (see [`pump`]).
    bulk: bool,
    /// A send of what this half read is in the send ring ([`Sends`]): the half
    /// waits for its answer before it reads or writes again.
    queued: bool,
    /// This half has sent before. Its first message goes out at once, with
    /// `send(2)`: a new connection's request and response are what its peers
    /// wait on, and with one connection per request, sending them at the end
    /// of the batch instead cost 8 % of the requests/s (BENCHMARKS.md,
    /// session 10). Later messages go through the ring.
    sent_before: bool,
}

impl Half {
    fn finished(&self) -> bool {
        self.broken || (self.eof && self.pending == 0 && self.shut)
    }
}

struct Conn {
    listener: usize,
    /// Tells this connection's events from those of an earlier one in the slot.
    generation: u32,
    /// `[client, backend]`; the backend is `None` between connect attempts.
    fds: [Option<OwnedFd>; 2],
    /// `half[s]` reads from side `s` and writes to the other side.
    half: [Half; 2],
    connecting: bool,
    /// Which of the route's targets is being tried, and the last error.
    target: usize,
    last_error: i32,
    retry_until: Option<Instant>,
    /// What epoll last said of each side, until a call said otherwise.
    readable: [bool; 2],
    writable: [bool; 2],
    /// The peer shut down its side (EPOLLRDHUP or EPOLLHUP): no new edge will
    /// come, so only EOF or EAGAIN ends reading.
    peer_done: [bool; 2],
    /// Which sides are TCP sockets.
    tcp: [bool; 2],
}

impl Conn {
    fn raw(&self, side: usize) -> Option<RawFd> {
        self.fds[side].as_ref().map(|f| f.as_raw_fd())
    }
}

/// Why a half cannot go on: abort the connection, resetting this side's peer (if
/// any) so that it sees what we saw.
struct Abort(Option<usize>);

pub(super) struct Engine {
    ep: OwnedFd,
    listeners: Vec<(Arc<OwnedFd>, Route, bool)>,
    commands: OwnedFd,
    events: OwnedFd,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    /// Slots closed during the current batch: reused only after it, so a stale
    /// event of the batch never reaches a new connection.
    closed: Vec<usize>,
    live: usize,
    pool: Vec<Pipe>,
    scratch: Vec<u8>,
    accepting: bool,
    listening: bool,
    paused_until: Option<Instant>,
    last_pause_log: Option<Instant>,
    retries: Vec<(Instant, usize)>,
    /// Connections that stopped reading after MAX_ROUNDS with data left: served
    /// again after this batch, before waiting.
    again: Vec<(usize, u32)>,
    /// Where small messages are sent from, a batch at a time; None: each with
    /// `send(2)` at once (see `ring.rs`). Set up by the thread itself.
    sends: Option<Sends>,
    sent: Vec<Sent>,
    /// Sockets of connections closed while a send to them was queued: closed
    /// after the batch's submit, which names them by number.
    closing: Vec<OwnedFd>,
    next_generation: u32,
    quiet: bool,
}

impl Engine {
    pub(super) fn new(
        listeners: Vec<(Arc<OwnedFd>, Route)>,
        commands: OwnedFd,
        events: OwnedFd,
        quiet: bool,
    ) -> io::Result<Engine> {
        let ep = sys::epoll()?;
        sys::epoll_ctl(
            &ep,
            libc::EPOLL_CTL_ADD,
            commands.as_raw_fd(),
            IN,
            TOKEN_COMMANDS,
        )?;
        for (fd, _) in &listeners {
            // Accepting loops until EAGAIN; both generations want this.
            sys::set_nonblocking(fd.as_raw_fd())?;
            if sys::is_inet(fd.as_raw_fd()) {
                // Accepted sockets inherit TCP_NODELAY from the listener: one
                // call here instead of one per connection.
                sys::set_nodelay(fd.as_raw_fd());
            }
        }
        Ok(Engine {
            ep,
            listeners: listeners
                .into_iter()
                .map(|(fd, route)| {
                    let tcp = sys::is_inet(fd.as_raw_fd());
                    (fd, route, tcp)
                })
                .collect(),
            commands,
            events,
            conns: Vec::new(),
            free: Vec::new(),
            closed: Vec::new(),
            live: 0,
            pool: Vec::new(),
            scratch: vec![0; COPY_BUF],
            accepting: false,
            listening: false,
            paused_until: None,
            last_pause_log: None,
            retries: Vec::new(),
            again: Vec::new(),
            sends: None,
            sent: Vec::new(),
            closing: Vec::new(),
            next_generation: 0,
            quiet,
        })
    }

    fn say(&self, line: &str) {
        if !self.quiet {
            crate::log::logger().warn("proxy_error", line);
        }
    }

    /// The thread's body: runs until the main thread drops its command pipe.
    pub(super) fn run(mut self) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS];
        // Said once per generation: the send path is what decides the proxy's
        // keep-alive throughput (README, "Sends in batches").
        let how = match Sends::new() {
            Ok(s) => match sys::epoll_ctl(&self.ep, libc::EPOLL_CTL_ADD, s.fd(), IN, TOKEN_RING) {
                Ok(()) => {
                    self.sends = Some(s);
                    "sends in batches through io_uring".to_owned()
                }
                Err(e) => format!("sends with send(2): epoll: {e}"),
            },
            Err(why) => format!("sends with send(2), not io_uring: {why}"),
        };
        if !self.quiet {
            crate::log::logger().info("proxy_sends", format!("proxy: {how}"));
        }
        loop {
            let timeout = if self.again.is_empty() {
                self.timeout_ms(Instant::now())
            } else {
                0
            };
            let n = match sys::epoll_wait(&self.ep, &mut events, timeout) {
                Ok(n) => n,
                Err(e) => {
                    self.say(&format!("proxy: epoll_wait: {e}"));
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            // The machine decides what an idle proxy means; the thread only says
            // when it became idle after a stop: no connection left, not accepting.
            let idle_before = self.idle();
            let mut stopped = false;
            for (slot, generation) in std::mem::take(&mut self.again) {
                if self.is_current(slot, generation) {
                    self.progress(slot);
                }
            }
            for ev in &events[..n] {
                let (token, revents) = (ev.u64, ev.events);
                if token == TOKEN_COMMANDS {
                    match self.on_commands() {
                        None => return,
                        Some(stop) => stopped |= stop,
                    }
                } else if token == TOKEN_RING {
                    // Its answers are collected below.
                } else if token & TOKEN_LISTENER != 0 {
                    self.on_listener((token & !TOKEN_LISTENER) as usize);
                } else {
                    let slot = (token as u32 >> 1) as usize;
                    let generation = (token >> 32) as u32;
                    self.on_conn(slot, generation, (token & 1) as usize, revents);
                }
            }
            self.on_timers(Instant::now());
            self.flush_sends();
            self.free.append(&mut self.closed);
            if self.idle() && (stopped || !idle_before) {
                let _ = sys::write(self.events.as_raw_fd(), &[EVT_DRAINED]);
            }
        }
    }

    fn is_current(&self, slot: usize, generation: u32) -> bool {
        self.conns
            .get(slot)
            .and_then(Option::as_ref)
            .is_some_and(|c| c.generation == generation)
    }

    fn timeout_ms(&self, now: Instant) -> i32 {
        let next = self
            .retries
            .iter()
            .map(|(t, _)| *t)
            .chain(self.paused_until)
            .min();
        match next {
            None => -1,
            Some(t) => t
                .saturating_duration_since(now)
                .as_micros()
                .div_ceil(1000)
                .min(i32::MAX as u128) as i32,
        }
    }

    fn on_timers(&mut self, now: Instant) {
        if self.paused_until.is_some_and(|t| t <= now) {
            self.paused_until = None;
            if self.accepting {
                self.set_listening(true);
            }
        }
        if self.retries.iter().any(|(t, _)| *t <= now) {
            let (due, later): (Vec<_>, Vec<_>) =
                self.retries.drain(..).partition(|(t, _)| *t <= now);
            self.retries = later;
            for (_, slot) in due {
                if self.conns.get(slot).is_some_and(|c| c.is_some()) {
                    self.connect(slot);
                }
            }
        }
    }

    /// Not accepting, and no connection open.
    fn idle(&self) -> bool {
        !self.accepting && self.live == 0
    }

    /// Returns whether a stop command came, or `None` once the main thread is gone.
    fn on_commands(&mut self) -> Option<bool> {
        let mut buf = [0u8; 64];
        let mut stopped = false;
        loop {
            match sys::read(self.commands.as_raw_fd(), &mut buf) {
                Ok(0) => return None,
                Ok(n) => {
                    for &cmd in &buf[..n] {
                        match cmd {
                            CMD_ACCEPT => {
                                // Also after a stop: a generation takes the
                                // service back when its successor dies at once.
                                self.accepting = true;
                                if self.paused_until.is_none() {
                                    self.set_listening(true);
                                }
                            }
                            CMD_STOP => {
                                self.accepting = false;
                                self.set_listening(false);
                                stopped = true;
                            }
                            _ => {}
                        }
                    }
                }
                Err(_) => return Some(stopped),
            }
        }
    }

    fn set_listening(&mut self, on: bool) {
        if on == self.listening {
            return;
        }
        self.listening = on;
        for (i, (fd, route, _)) in self.listeners.iter().enumerate() {
            let result = if on {
                sys::epoll_ctl(
                    &self.ep,
                    libc::EPOLL_CTL_ADD,
                    fd.as_raw_fd(),
                    IN,
                    TOKEN_LISTENER | i as u64,
                )
            } else {
                sys::epoll_ctl(&self.ep, libc::EPOLL_CTL_DEL, fd.as_raw_fd(), 0, 0)
            };
            if let Err(e) = result {
                self.say(&format!("proxy: {}: epoll: {e}", route.listen));
            }
        }
    }

    /// Stop accepting for a while: the error is one that accepting again at once
    /// would only repeat (no fd, no memory).
    fn pause(&mut self, listener: usize, e: &io::Error) {
        let now = Instant::now();
        if self
            .last_pause_log
            .is_none_or(|t| now.duration_since(t) >= PAUSE_LOG_EVERY)
        {
            self.last_pause_log = Some(now);
            // Named here, not by libc's text: musl says "No file descriptors
            // available" for EMFILE, which does not point at the limit to raise.
            let why = match e.raw_os_error() {
                Some(libc::EMFILE) => "too many open files (EMFILE: psflip's limit, \
                                       RLIMIT_NOFILE / ulimit -n, is reached)"
                    .to_owned(),
                Some(libc::ENFILE) => "too many open files in the system (ENFILE: \
                                       fs.file-max is reached)"
                    .to_owned(),
                _ => e.to_string(),
            };
            self.say(&format!(
                "proxy: {}: {why}; pausing accepts for {}ms",
                self.listeners[listener].1.listen,
                ACCEPT_PAUSE.as_millis()
            ));
        }
        self.set_listening(false);
        self.paused_until = Some(now + ACCEPT_PAUSE);
    }

    fn on_listener(&mut self, i: usize) {
        for _ in 0..ACCEPT_BATCH {
            if !self.listening {
                return;
            }
            match sys::accept(self.listeners[i].0.as_raw_fd()) {
                Ok(client) => self.open(i, client),
                Err(e) => match e.raw_os_error() {
                    Some(libc::EAGAIN) => return,
                    Some(libc::EINTR | libc::ECONNABORTED | libc::EPROTO | libc::EPERM) => {}
                    _ => return self.pause(i, &e),
                },
            }
        }
    }

    fn open(&mut self, listener: usize, client: OwnedFd) {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.conns.push(None);
                self.conns.len() - 1
            }
        };
        let generation = self.next_generation;
        self.next_generation = (generation + 1) & GENERATION_MASK;
        if let Err(e) = sys::epoll_ctl(
            &self.ep,
            libc::EPOLL_CTL_ADD,
            client.as_raw_fd(),
            CONN_EVENTS,
            conn_token(generation, slot, CLIENT),
        ) {
            self.say(&format!("proxy: epoll: {e}; connection closed"));
            self.free.push(slot);
            return;
        }
        self.conns[slot] = Some(Conn {
            listener,
            generation,
            fds: [Some(client), None],
            half: [Half::default(), Half::default()],
            connecting: false,
            target: 0,
            last_error: 0,
            retry_until: None,
            // The client has likely sent already: it is read as soon as the
            // backend is connected, without waiting for the edge.
            readable: [true, false],
            writable: [true, false],
            peer_done: [false; 2],
            tcp: [self.listeners[listener].2, false],
        });
        self.live += 1;
        self.connect(slot);
    }

    /// Connect the slot's backend to its current target, moving on to the next target
    /// when one refuses; logs and closes the client when none is left.
    fn connect(&mut self, slot: usize) {
        loop {
            let Some(conn) = self.conns[slot].as_mut() else {
                return;
            };
            let (_, route, _) = &self.listeners[conn.listener];
            let Some(target) = route.targets.get(conn.target) else {
                let e = io::Error::from_raw_os_error(conn.last_error);
                let line = format!(
                    "proxy: {}: cannot connect to {}: {e}; client connection closed",
                    route.listen, route.forward
                );
                self.say(&line);
                self.close(slot, None);
                return;
            };
            let (addr, tcp) = match target {
                Target::Tcp(a) => (SockAddr::inet(a), true),
                Target::Unix(p) => (SockAddr::unix(p), false),
            };
            let sock = match sys::stream_socket(&addr) {
                Ok(s) => s,
                Err(e) => {
                    let now = Instant::now();
                    let until = *conn.retry_until.get_or_insert(now + RETRY_FOR);
                    let out_of_fds = matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    );
                    if out_of_fds && now < until {
                        let listener = conn.listener;
                        self.retries.push((now + RETRY, slot));
                        self.pause(listener, &e);
                        return;
                    }
                    let line = format!(
                        "proxy: {}: cannot open a socket: {e}; client connection closed",
                        route.listen
                    );
                    self.say(&line);
                    self.close(slot, None);
                    return;
                }
            };
            if tcp {
                // Before the connect: small writes leave at once from the first.
                sys::set_nodelay(sock.as_raw_fd());
            }
            let token = conn_token(conn.generation, slot, BACKEND);
            if let Err(e) = sys::epoll_ctl(
                &self.ep,
                libc::EPOLL_CTL_ADD,
                sock.as_raw_fd(),
                CONN_EVENTS,
                token,
            ) {
                let line = format!("proxy: epoll: {e}; connection closed");
                self.say(&line);
                self.close(slot, None);
                return;
            }
            conn.readable[BACKEND] = false;
            conn.writable[BACKEND] = false;
            conn.peer_done[BACKEND] = false;
            conn.tcp[BACKEND] = tcp;
            match sys::connect(&sock, &addr) {
                Ok(()) => {
                    conn.connecting = false;
                    conn.fds[BACKEND] = Some(sock);
                    conn.writable[BACKEND] = true;
                    return self.progress(slot);
                }
                Err(libc::EINPROGRESS) => {
                    conn.connecting = true;
                    let fd = sock.as_raw_fd();
                    conn.fds[BACKEND] = Some(sock);
                    // The handshake is often over by now (on loopback always: it
                    // ran inside connect). Then the client's request goes out at
                    // once, as HAProxy does, not one turn of the loop later; a
                    // refusal moves on to the next target as the event would.
                    // Else the backend's EPOLLOUT (or error) comes as usual.
                    let now = sys::ready_now(fd, libc::POLLOUT);
                    if now != 0 {
                        let generation = conn.generation;
                        return self.on_conn(slot, generation, BACKEND, now);
                    }
                    return;
                }
                Err(libc::EAGAIN) if !tcp => {
                    let now = Instant::now();
                    let until = *conn.retry_until.get_or_insert(now + RETRY_FOR);
                    if now < until {
                        self.retries.push((now + RETRY, slot));
                        return;
                    }
                    conn.last_error = libc::EAGAIN;
                    conn.target += 1;
                }
                Err(errno) => {
                    conn.last_error = errno;
                    conn.target += 1;
                    conn.retry_until = None;
                }
            }
        }
    }

    fn on_conn(&mut self, slot: usize, generation: u32, side: usize, revents: u32) {
        let Some(conn) = self.conns.get_mut(slot).and_then(|c| c.as_mut()) else {
            return;
        };
        if conn.generation != generation {
            return; // a closed connection's socket, still open in a child
        }
        if side == BACKEND && conn.connecting {
            let Some(fd) = conn.raw(BACKEND) else {
                return;
            };
            if revents & (ERR | HUP) != 0 {
                // Closing the socket takes it out of epoll.
                let err = sys::take_error(fd);
                conn.last_error = if err != 0 { err } else { libc::ECONNREFUSED };
                conn.fds[BACKEND] = None;
                conn.connecting = false;
                conn.target += 1;
                return self.connect(slot);
            }
            if revents & OUT == 0 {
                return;
            }
            conn.connecting = false;
        }
        if revents & ERR != 0 {
            // A reset (or another error) on this side: the other peer sees one too.
            return self.close(slot, Some(1 - side));
        }
        if revents & (HUP | RDHUP) != 0 {
            conn.peer_done[side] = true;
        }
        if revents & (IN | HUP | RDHUP) != 0 {
            conn.readable[side] = true;
        }
        if revents & (OUT | HUP) != 0 {
            conn.writable[side] = true;
        }
        self.progress(slot);
    }

    /// Pump both halves as far as their sides allow, then close the connection if
    /// both are over.
    fn progress(&mut self, slot: usize) {
        let Some(conn) = self.conns[slot].as_mut() else {
            return;
        };
        if conn.connecting {
            return;
        }
        let mut result = Ok(false);
        for h in [CLIENT, BACKEND] {
            let mut out = Out {
                pool: &mut self.pool,
                scratch: &mut self.scratch,
                sends: self.sends.as_mut(),
                sent: &mut self.sent,
                token: conn_token(conn.generation, slot, h),
            };
            result = match pump(conn, h, &mut out) {
                Ok(more) => result.map(|m| m || more),
                Err(e) => Err(e),
            };
            if result.is_err() {
                break;
            }
        }
        match result {
            Err(Abort(reset)) => self.close(slot, reset),
            Ok(_) if conn.half.iter().all(Half::finished) => self.close(slot, None),
            Ok(true) => self.again.push((slot, conn.generation)),
            Ok(false) => {}
        }
    }

    /// Hand the batch's queued sends to the kernel, take in the answers, and let
    /// each answered half go on (which may queue more), a few turns; then close
    /// what waited for the submit.
    fn flush_sends(&mut self) {
        for turn in 0..FLUSH_TURNS {
            let Some(sends) = self.sends.as_mut() else {
                break;
            };
            if sends.idle() && self.sent.is_empty() {
                break;
            }
            sends.flush(&mut self.sent);
            for sent in std::mem::take(&mut self.sent) {
                // The last turn answers without going on: those halves are
                // served again after this batch (`again`), before waiting.
                self.on_sent(sent, turn + 1 < FLUSH_TURNS);
            }
        }
        if let Some(sends) = self.sends.as_mut()
            && !sends.idle()
        {
            // Queued in the last turn: handed over now, answered in the next.
            sends.flush(&mut self.sent);
            for sent in std::mem::take(&mut self.sent) {
                self.on_sent(sent, false);
            }
        }
        if self.sends.as_ref().is_some_and(|s| s.failed() && s.idle()) {
            self.say("proxy: the send ring failed; sending with send(2) from now on");
            self.sends = None;
        }
        self.closing.clear();
    }

    /// A send from the ring was answered: the rest, if any, waits in a pipe
    /// for the destination's EPOLLOUT, as after a short `send`.
    fn on_sent(&mut self, sent: Sent, go_on: bool) {
        let Sent { token, buf, result } = sent;
        let (slot, generation, h) = (
            (token as u32 >> 1) as usize,
            (token >> 32) as u32,
            (token & 1) as usize,
        );
        let current = self.is_current(slot, generation);
        let mut abort = false;
        if current {
            let conn = self.conns[slot].as_mut().expect("current");
            conn.half[h].queued = false;
            abort = after_send(conn, h, &buf, result, &mut self.pool).is_err();
        }
        if let Some(sends) = self.sends.as_mut() {
            sends.give_back(buf);
        }
        if !current {
            return;
        }
        if abort {
            self.close(slot, None);
        } else if go_on {
            self.progress(slot);
        } else {
            self.again.push((slot, generation));
        }
    }

    /// Close both sockets; `reset`: that side's peer gets a reset, not a FIN.
    fn close(&mut self, slot: usize, reset: Option<usize>) {
        let Some(mut conn) = self.conns[slot].take() else {
            return;
        };
        if let Some(fd) = reset.and_then(|side| conn.raw(side)) {
            sys::set_linger_zero(fd);
        }
        // Closing a socket takes it out of epoll; should a child still hold it
        // (between clone and exec), its events carry a stale generation. A
        // socket a queued send names is closed after the batch's submit.
        if conn.half.iter().any(|h| h.queued) {
            self.closing
                .extend(conn.fds.iter_mut().filter_map(Option::take));
        }
        conn.fds = [None, None];
        for half in &mut conn.half {
            // A pipe still holding bytes is dropped, never reused.
            if let Some(pipe) = half.pipe.take()
                && half.pending == 0
            {
                give_back(&mut self.pool, pipe);
            }
        }
        self.retries.retain(|(_, s)| *s != slot);
        self.closed.push(slot);
        self.live -= 1;
    }
}

/// An empty pipe, from the pool or new.
fn take_pipe(pool: &mut Vec<Pipe>) -> Result<Pipe, Abort> {
    match pool.pop() {
        Some(p) => Ok(p),
        None => sys::pipe()
            .map(|(r, w)| Pipe { r, w })
            .map_err(|_| Abort(None)),
    }
}

/// Return an empty pipe to the pool (or close it when the pool is full).
fn give_back(pool: &mut Vec<Pipe>, pipe: Pipe) {
    if pool.len() < POOL_MAX {
        pool.push(pipe);
    }
}

fn would_block(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EAGAIN)
}

/// What [`pump`] works with besides the connection: the pipe pool, the copy
/// buffer, the send ring if any (and where it answers early), and the token
/// of the half being pumped, for the ring's answers.
struct Out<'a> {
    pool: &'a mut Vec<Pipe>,
    scratch: &'a mut [u8],
    sends: Option<&'a mut Sends>,
    sent: &'a mut Vec<Sent>,
    token: u64,
}

/// What a step of [`pump`] says: go on with the loop, or stop with this answer
/// (whether the source may still hold data).
enum Flow {
    Go,
    Stop(bool),
}

/// Move what can be moved on half `h` of `conn` (reading side `h`, writing the
/// other) without blocking: flush its pipe to the destination while it is
/// writable, then read the source while it is readable, until one of them says
/// EAGAIN (or a short read or write says it would). Returns whether the source
/// may still hold data after MAX_ROUNDS reads in a row (serve it again soon).
fn pump(conn: &mut Conn, h: usize, out: &mut Out) -> Result<bool, Abort> {
    let d = 1 - h;
    if conn.half[h].queued {
        // Resumed once the ring answers (`Engine::on_sent`).
        return Ok(false);
    }
    let (Some(src), Some(dst)) = (conn.raw(h), conn.raw(d)) else {
        return Ok(false);
    };
    let other_finished = conn.half[d].finished();
    let mut rounds = 0;
    loop {
        if conn.half[h].broken {
            return Ok(false);
        }
        if conn.half[h].pending > 0
            && let Flow::Stop(more) = flush(conn, h, dst)
        {
            return Ok(more);
        }
        let half = &mut conn.half[h];
        if let Some(pipe) = half.pipe.take() {
            give_back(out.pool, pipe);
        }
        if half.eof {
            if !half.shut {
                // When the other direction is over too, the close that follows
                // sends the FIN: no shutdown call needed.
                if !other_finished {
                    sys::shutdown_write(dst);
                }
                half.shut = true;
            }
            return Ok(false);
        }
        if !conn.readable[h] {
            return Ok(false);
        }
        if rounds == MAX_ROUNDS {
            return Ok(true);
        }
        rounds += 1;
        let flow = if conn.half[h].bulk {
            splice_in(conn, h, src, out.pool)?
        } else {
            copy(conn, h, (src, dst), out)?
        };
        if let Flow::Stop(more) = flow {
            return Ok(more);
        }
    }
}

/// Write what half `h`'s pipe holds to `dst`. Goes on once it is empty (or
/// the destination is gone: the direction is then broken).
fn flush(conn: &mut Conn, h: usize, dst: RawFd) -> Flow {
    let d = 1 - h;
    let half = &mut conn.half[h];
    let Some(pipe) = half.pipe.as_ref() else {
        half.pending = 0;
        return Flow::Go;
    };
    if !conn.writable[d] {
        return Flow::Stop(false);
    }
    match sys::splice(pipe.r.as_raw_fd(), dst, half.pending) {
        Ok(n) => {
            half.pending -= n;
            if half.pending > 0 {
                conn.writable[d] = false;
                return Flow::Stop(false);
            }
        }
        Err(e) if would_block(&e) => {
            conn.writable[d] = false;
            return Flow::Stop(false);
        }
        Err(_) => {
            // The destination is gone: this direction is over, the other may
            // still deliver.
            half.broken = true;
            half.pending = 0;
            half.pipe = None;
        }
    }
    Flow::Go
}

/// One read of a small message on half `h`, copied through user space: a copy
/// costs less than splice's page bookkeeping, and as many calls. What the
/// destination does not take at once waits in a pipe, like spliced data.
fn copy(
    conn: &mut Conn,
    h: usize,
    (src, dst): (RawFd, RawFd),
    out: &mut Out,
) -> Result<Flow, Abort> {
    let d = 1 - h;
    let scratch = &mut *out.scratch;
    let n = match sys::recv(src, scratch) {
        Ok(0) => {
            conn.half[h].eof = true;
            return Ok(Flow::Go);
        }
        Ok(n) => n,
        Err(e) if would_block(&e) => {
            conn.readable[h] = false;
            return Ok(Flow::Stop(false));
        }
        // The source was reset: so is the other peer.
        Err(_) => return Err(Abort(Some(d))),
    };
    // A read that did not fill the buffer emptied the socket. On TCP, when
    // epoll had already reported the peer's FIN, that FIN follows all the data
    // in the queue: this was the end (as HAProxy does). The bytes then go out
    // with MSG_MORE, so the shutdown or close that follows sends them and the
    // FIN in one segment. Not on Unix sockets, whose reads may stop short (at a
    // change of credentials).
    let drained = n < scratch.len();
    let fin = drained && conn.peer_done[h] && conn.tcp[h];
    if drained && !conn.peer_done[h] {
        conn.readable[h] = false;
    }
    let half = &mut conn.half[h];
    half.eof = fin;
    let sent_before = std::mem::replace(&mut half.sent_before, true);
    if conn.writable[d]
        && sent_before
        && let Some(sends) = out.sends.as_deref_mut()
    {
        // Into the ring, handed to the kernel with the batch's other sends;
        // this half waits for the answer (`Engine::on_sent`).
        let mut buf = sends.buffer();
        buf.extend_from_slice(&scratch[..n]);
        sends.queue(dst, buf, fin && conn.tcp[d], out.token, out.sent);
        half.queued = true;
        return Ok(Flow::Stop(false));
    }
    let result = if conn.writable[d] {
        sys::send(dst, &scratch[..n], fin && conn.tcp[d])
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
    } else {
        Ok(0)
    };
    after_send(conn, h, &scratch[..n], result, out.pool)
}

/// What a send of `bytes`, read by half `h`, did (`Ok(sent)` or the errno), at
/// once with `send(2)` or answered by the send ring: what the destination did
/// not take waits in a pipe for its EPOLLOUT; any error but EAGAIN means the
/// destination is gone, and this direction is over. A read that filled the
/// copy buffer and went out whole makes the half a bulk one (see [`pump`]).
fn after_send(
    conn: &mut Conn,
    h: usize,
    bytes: &[u8],
    result: Result<usize, i32>,
    pool: &mut Vec<Pipe>,
) -> Result<Flow, Abort> {
    let d = 1 - h;
    let half = &mut conn.half[h];
    let sent = match result {
        Ok(sent) => sent,
        Err(libc::EAGAIN) => 0,
        Err(_) => {
            half.broken = true;
            return Ok(Flow::Go);
        }
    };
    if sent < bytes.len() {
        conn.writable[d] = false;
        let pipe = take_pipe(pool)?;
        // An empty pipe holds 64 KiB: the rest of one read always fits.
        match sys::write(pipe.w.as_raw_fd(), &bytes[sent..]) {
            Ok(w) if w == bytes.len() - sent => {}
            _ => return Err(Abort(None)),
        }
        half.pipe = Some(pipe);
        half.pending = bytes.len() - sent;
        return Ok(Flow::Stop(false));
    }
    half.bulk = bytes.len() == COPY_BUF;
    Ok(Flow::Go)
}

/// One splice of bulk data from `src` into a pipe of half `h`.
fn splice_in(conn: &mut Conn, h: usize, src: RawFd, pool: &mut Vec<Pipe>) -> Result<Flow, Abort> {
    let half = &mut conn.half[h];
    let pipe = take_pipe(pool)?;
    match sys::splice(src, pipe.w.as_raw_fd(), SPLICE_LEN) {
        Ok(0) => {
            give_back(pool, pipe);
            half.eof = true;
        }
        Ok(n) => {
            half.pipe = Some(pipe);
            half.pending = n;
            if n < BIG_READ && !conn.peer_done[h] {
                conn.readable[h] = false;
            }
        }
        Err(e) if would_block(&e) => {
            give_back(pool, pipe);
            conn.readable[h] = false;
            return Ok(Flow::Stop(false));
        }
        Err(_) => {
            give_back(pool, pipe);
            // The source was reset: so is the other peer.
            return Err(Abort(Some(1 - h)));
        }
    }
    Ok(Flow::Go)
}
