//! The readiness pipe between two generations.
//!
//! The old generation creates a pipe per upgrade and hands the write end to the
//! successor (its number in `PSFLIP_READY_FD`). The successor writes one byte, `R`,
//! once its child is healthy and the pidfile names it, or, when it gives up, a line
//! `F<reason>` just before it exits. EOF without `R` means the successor is gone. The successor, in turn, watches its write end: it polls with
//! an error once the old generation (the only holder of the read end) has exited.

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::fcntl::OFlag;
use nix::unistd::{pipe2, read, write};

use super::{EffectError, fds};

/// The byte that means "ready".
pub const READY: u8 = b'R';

/// A fresh pipe: (read end for us, write end for the successor). Both close-on-exec;
/// the spawn clears the flag on the write end in the successor only.
pub fn pipe() -> Result<(OwnedFd, OwnedFd), EffectError> {
    pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(|e| EffectError::sys("pipe2", e))
}

/// What the old generation read from the pipe.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Heard {
    /// The successor reported ready.
    pub ready: bool,
    /// The successor said why it gives up.
    pub failure: Option<String>,
    /// The write end is closed: the successor is gone.
    pub closed: bool,
}

/// The byte that starts a failure report: `F<reason>\n`.
pub const FAILED: u8 = b'F';

/// Drain the read end. `pending` keeps a partial failure line between calls.
pub fn hear(fd: BorrowedFd<'_>, pending: &mut Vec<u8>) -> Heard {
    let mut buf = [0u8; 512];
    let mut heard = Heard::default();
    loop {
        match read(fd, &mut buf) {
            Ok(0) => {
                heard.closed = true;
                break;
            }
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    loop {
        match pending.first() {
            Some(&READY) => {
                heard.ready = true;
                pending.remove(0);
            }
            Some(&FAILED) => {
                let Some(end) = pending.iter().position(|b| *b == b'\n') else {
                    break;
                };
                let line: Vec<u8> = pending.drain(..=end).collect();
                let reason = String::from_utf8_lossy(&line[1..line.len() - 1]).into_owned();
                heard.failure = Some(reason);
            }
            Some(_) => {
                pending.remove(0);
            }
            None => break,
        }
    }
    heard
}

/// The successor's end, taken from the environment at start-up.
pub struct ToPredecessor {
    fd: OwnedFd,
}

impl ToPredecessor {
    /// Take the fd the handoff names (`PSFLIP_READY_FD`), if it is open, and make
    /// it close-on-exec so that our own children never hold it (or the old
    /// generation would not see EOF when we die).
    pub fn from_fd(raw: RawFd) -> Option<ToPredecessor> {
        if raw < 3 || !fds::is_open(raw) {
            return None;
        }
        fds::set_cloexec(raw);
        // SAFETY: the fd is open and was handed to us to own.
        Some(ToPredecessor {
            fd: unsafe { OwnedFd::from_raw_fd(raw) },
        })
    }

    /// Tell the old generation we are ready. Its absence (EPIPE: it died) is fine.
    pub fn report_ready(&self) -> Result<(), EffectError> {
        loop {
            match write(&self.fd, &[READY]) {
                Ok(_) => return Ok(()),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    return Err(EffectError::sys(
                        "report ready to the previous generation",
                        e,
                    ));
                }
            }
        }
    }

    /// Tell the old generation why we give up. One short line (well under
    /// PIPE_BUF, so it arrives whole); its absence is fine.
    pub fn report_failure(&self, reason: &str) {
        let mut line = Vec::with_capacity(reason.len().min(400) + 2);
        line.push(FAILED);
        line.extend(reason.bytes().filter(|b| *b != b'\n').take(400));
        line.push(b'\n');
        let _ = write(&self.fd, &line);
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
