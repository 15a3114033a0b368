//! The proxy's sends, handed to the kernel a batch at a time through an
//! io_uring (issue #11; BENCHMARKS.md, session 10).
//!
//! The engine stays an epoll loop that reads with recv. What it used to send at
//! once, one `send` per message, it queues here. After each batch of events it
//! hands the whole queue to the kernel with one `io_uring_enter`. With
//! keep-alive that is 2.2 system calls per proxied request instead of 4.1, and
//! on the test machine about a quarter less CPU per request.
//!
//! - **Same semantics as `send`.** Every send carries `MSG_DONTWAIT`, so the
//!   kernel does it inline, during the submit, or says `EAGAIN` at once: it
//!   never waits in the ring for the socket to drain. The engine treats a short
//!   send or `EAGAIN` as before: the rest goes to a pipe and waits for the
//!   socket's `EPOLLOUT`. Should a kernel ever finish a send later anyway, its
//!   buffer stays here until the completion comes. The ring's fd is in epoll
//!   and wakes the loop for it.
//! - **Fds.** A queued send names its socket by number until the submit. The
//!   engine therefore closes no socket with a queued send before the batch's
//!   submit (`Engine::close`). Once submitted, the kernel holds its own
//!   reference.
//! - **Nothing but sends.** The ring is restricted to `IORING_OP_SEND`
//!   (`IORING_REGISTER_RESTRICTIONS`) before it is enabled.
//! - **Only where it cannot hurt.** There is no ring under any seccomp filter
//!   (`Seccomp:` in /proc/self/status is not 0). Docker's and containerd's
//!   default profiles deny `io_uring_setup`, and a systemd `SystemCallFilter=`
//!   allow-list without `@aio` kills the process that calls it. Nor is there a
//!   ring with `PSFLIP_NO_IO_URING` set, or wherever a step of its set-up fails
//!   (`kernel.io_uring_disabled`, a kernel before 5.10). Without a ring every
//!   send is a plain `send`, as before.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};

use io_uring::{IoUring, opcode, register::Restriction, types};

/// Sends queued in one batch before the queue is handed over early.
const ENTRIES: u32 = 256;
/// Buffers kept for reuse, each at most [`POOL_BUFFER_MAX`] bytes.
const POOL_MAX: usize = 64;
const POOL_BUFFER_MAX: usize = 4096;

/// A send the kernel has answered: `result` is the bytes sent or the errno.
pub(super) struct Sent {
    pub token: u64,
    pub buf: Vec<u8>,
    pub result: Result<usize, i32>,
}

/// A send in [`Sends`]: its socket, MSG_MORE or not, and its buffer.
struct Slot {
    token: u64,
    fd: RawFd,
    more: bool,
    buf: Vec<u8>,
}

pub(super) struct Sends {
    ring: IoUring,
    /// Queued or submitted sends, by user data; `None`: a free slot.
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    /// The queued slots, in the order of the submission queue.
    queued: VecDeque<usize>,
    /// Submitted, not answered yet (normally 0 after each flush).
    submitted: usize,
    /// A submit failed: the ring is no longer used (see [`Sends::flush`]).
    failed: bool,
    pool: Vec<Vec<u8>>,
}

impl Sends {
    /// A ring for the proxy thread's sends, or why there is none (see the
    /// module's text). Call it on the thread that will use it.
    pub(super) fn new() -> Result<Sends, String> {
        if std::env::var_os("PSFLIP_NO_IO_URING").is_some() {
            return Err("PSFLIP_NO_IO_URING is set".to_owned());
        }
        if !seccomp_off() {
            return Err("psflip runs under a seccomp filter".to_owned());
        }
        let failed = |what: &str, e: std::io::Error| format!("{what}: {e}");
        let ring = IoUring::builder()
            .setup_r_disabled()
            .build(ENTRIES)
            .map_err(|e| failed("io_uring_setup", e))?;
        let submitter = ring.submitter();
        submitter
            .register_restrictions(&mut [Restriction::sqe_op(opcode::Send::CODE)])
            .map_err(|e| failed("io_uring_register (restrictions)", e))?;
        submitter
            .register_enable_rings()
            .map_err(|e| failed("io_uring_register (enable)", e))?;
        Ok(Sends {
            ring,
            slots: Vec::new(),
            free: Vec::new(),
            queued: VecDeque::new(),
            submitted: 0,
            failed: false,
            pool: Vec::new(),
        })
    }

    /// The ring's fd, readable when an answer waits.
    pub(super) fn fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }

    /// An empty buffer for a send.
    pub(super) fn buffer(&mut self) -> Vec<u8> {
        self.pool.pop().unwrap_or_default()
    }

    /// Return a buffer once its send is answered.
    pub(super) fn give_back(&mut self, mut buf: Vec<u8>) {
        if self.pool.len() < POOL_MAX && buf.capacity() <= POOL_BUFFER_MAX {
            buf.clear();
            self.pool.push(buf);
        }
    }

    /// Nothing queued, nothing waiting for an answer.
    pub(super) fn idle(&self) -> bool {
        self.queued.is_empty() && self.submitted == 0
    }

    /// A submit failed and every send since was made with `send(2)`: the
    /// engine drops the ring once it is idle.
    pub(super) fn failed(&self) -> bool {
        self.failed
    }

    /// Queue `buf` for `fd` (MSG_MORE when `more`). `token` comes back with the
    /// answer; `done` takes the answers of sends handed over early, when the
    /// ring is full.
    pub(super) fn queue(
        &mut self,
        fd: RawFd,
        buf: Vec<u8>,
        more: bool,
        token: u64,
        done: &mut Vec<Sent>,
    ) {
        if self.queued.len() + self.submitted >= ENTRIES as usize {
            self.flush(done);
        }
        // `sys::send`'s flags, which the ring's send must have too.
        let flags = libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT | if more { libc::MSG_MORE } else { 0 };
        if self.failed || self.queued.len() + self.submitted >= ENTRIES as usize {
            // No ring any more, or (never seen) still full: send it now.
            let result = send_now(fd, &buf, more);
            done.push(Sent { token, buf, result });
            return;
        }
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        let entry = opcode::Send::new(types::Fd(fd), buf.as_ptr(), buf.len() as u32)
            .flags(flags)
            .build()
            .user_data(slot as u64);
        // The heap block of `buf` does not move when the Vec does: it stays
        // valid, untouched, until the answer hands it back.
        self.slots[slot] = Some(Slot {
            token,
            fd,
            more,
            buf,
        });
        // SAFETY: the entry points into the buffer kept in `slots[slot]` until
        // its answer; the queue has room (queued + submitted < ENTRIES, and the
        // submission queue holds ENTRIES).
        if unsafe { self.ring.submission().push(&entry) }.is_err() {
            unreachable!("the submission queue has room");
        }
        self.queued.push_back(slot);
    }

    /// Hand the queued sends to the kernel and collect every answer there is.
    /// Should the kernel refuse the submit, the queued sends are made with
    /// `send(2)` instead, answered the same way, and the ring is used no more:
    /// a send that waited is never lost or reordered.
    pub(super) fn flush(&mut self, done: &mut Vec<Sent>) {
        if !self.queued.is_empty() {
            match self.ring.submit() {
                Ok(n) => {
                    let n = n.min(self.queued.len());
                    self.queued.drain(..n);
                    self.submitted += n;
                }
                Err(_) => {
                    // The kernel took none of them; they stay in the ring's
                    // queue, which is never submitted again.
                    self.failed = true;
                    for slot in std::mem::take(&mut self.queued) {
                        let s = self.slots[slot].take().expect("queued");
                        self.free.push(slot);
                        let result = send_now(s.fd, &s.buf, s.more);
                        done.push(Sent {
                            token: s.token,
                            buf: s.buf,
                            result,
                        });
                    }
                }
            }
        }
        let answers: Vec<(usize, i32)> = self
            .ring
            .completion()
            .map(|cqe| (cqe.user_data() as usize, cqe.result()))
            .collect();
        for (slot, result) in answers {
            let Some(s) = self.slots.get_mut(slot).and_then(Option::take) else {
                continue;
            };
            self.free.push(slot);
            self.submitted -= 1;
            done.push(Sent {
                token: s.token,
                buf: s.buf,
                result: if result >= 0 {
                    Ok(result as usize)
                } else {
                    Err(-result)
                },
            });
        }
    }
}

/// `send(2)` as the engine makes it, answered as the ring answers.
fn send_now(fd: RawFd, buf: &[u8], more: bool) -> Result<usize, i32> {
    crate::sys::send(fd, buf, more).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
}

/// Whether this process runs under no seccomp filter ("Seccomp:\t0").
fn seccomp_off() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .is_some_and(|v| v.trim() == "0")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{FromRawFd, OwnedFd};

    /// A ring, or None (said) where this process may have none.
    fn ring() -> Option<Sends> {
        Sends::new()
            .inspect_err(|why| eprintln!("no io_uring for this process ({why}): skipped"))
            .ok()
    }

    /// A connected pair of non-blocking Unix stream sockets.
    fn pair() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: a valid array for two fds.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(rc, 0);
        // SAFETY: both fds were just opened and are owned here alone.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    fn read_all(fd: &OwnedFd) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            // SAFETY: a valid buffer for its length.
            let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n as usize]);
        }
    }

    /// Sends queued in a batch are made at the flush, in order, each answered
    /// with its token and buffer; to a full socket the answer is EAGAIN at
    /// once (the send never waits in the ring), and the bytes of that send are
    /// not sent.
    #[test]
    fn queued_sends_are_made_at_the_flush_in_order_and_a_full_socket_says_eagain() {
        let Some(mut sends) = ring() else {
            return;
        };
        let (a, b) = pair();
        let mut done = Vec::new();
        for (token, text) in [(7, &b"first "[..]), (8, b"second "), (9, b"third")] {
            let mut buf = sends.buffer();
            buf.extend_from_slice(text);
            sends.queue(a.as_raw_fd(), buf, false, token, &mut done);
        }
        assert!(done.is_empty(), "nothing answered before the flush");
        assert_eq!(read_all(&b), b"", "nothing sent before the flush");
        sends.flush(&mut done);
        let answers: Vec<_> = done.iter().map(|s| (s.token, s.result)).collect();
        assert_eq!(answers, [(7, Ok(6)), (8, Ok(7)), (9, Ok(5))]);
        assert!(sends.idle());
        assert_eq!(read_all(&b), b"first second third");
        for s in done.drain(..) {
            sends.give_back(s.buf);
        }

        // Fill `a`'s send buffer, then queue one more send.
        let big = vec![b'x'; 65536];
        // SAFETY: a valid buffer for its length.
        while unsafe {
            libc::send(
                a.as_raw_fd(),
                big.as_ptr().cast(),
                big.len(),
                libc::MSG_DONTWAIT,
            )
        } > 0
        {}
        let mut buf = sends.buffer();
        buf.extend_from_slice(b"late");
        sends.queue(a.as_raw_fd(), buf, false, 10, &mut done);
        sends.flush(&mut done);
        assert_eq!(done.len(), 1, "answered at the flush, not later");
        assert_eq!((done[0].token, done[0].result), (10, Err(libc::EAGAIN)));
        assert_eq!(done[0].buf, b"late", "the buffer comes back whole");
        assert!(sends.idle());
        let drained = read_all(&b);
        assert!(
            drained.iter().all(|&c| c == b'x'),
            "no byte of the refused send"
        );
    }

    /// A closed peer makes the answer an error (EPIPE), not a signal.
    #[test]
    fn a_send_to_a_closed_peer_is_answered_with_epipe() {
        let Some(mut sends) = ring() else {
            return;
        };
        let (a, b) = pair();
        drop(b);
        let mut done = Vec::new();
        let mut buf = sends.buffer();
        buf.extend_from_slice(b"nobody");
        sends.queue(a.as_raw_fd(), buf, false, 1, &mut done);
        sends.flush(&mut done);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].result, Err(libc::EPIPE));
    }
}
