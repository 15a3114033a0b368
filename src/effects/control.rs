//! The control socket: how `psflip upgrade` and `psflip status` reach a running
//! generation.
//!
//! Each generation listens on an abstract Unix socket named after its pid
//! (`psflip-control-<pid>`): the pidfile leads to it, it needs no file (nothing to
//! clean up, nothing to go stale, no directory to choose), and it dies with the
//! process. An abstract socket has no permissions of its own, so every client's
//! credentials are checked (`SO_PEERCRED`): only root and psflip's own user may
//! talk to it.
//!
//! The protocol is one request line (`upgrade` or `status`) and a reply that ends
//! when the server closes the connection.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::time::{Duration, Instant};

use crate::machine::Request;

/// The abstract socket name of the generation with this pid.
pub fn name(pid: u32) -> String {
    format!("psflip-control-{pid}")
}

fn request_line(request: Request) -> &'static str {
    match request {
        Request::Upgrade => "upgrade\n",
        Request::Status => "status\n",
    }
}

fn parse_request(line: &str) -> Option<Request> {
    match line.trim() {
        "upgrade" => Some(Request::Upgrade),
        "status" => Some(Request::Status),
        _ => None,
    }
}

/// The listening side, in the running generation.
pub struct Listener {
    listener: UnixListener,
    my_uid: u32,
}

impl Listener {
    /// Listen on the abstract socket for `pid` (non-blocking, close-on-exec).
    pub fn bind(pid: u32) -> io::Result<Listener> {
        let addr = SocketAddr::from_abstract_name(name(pid).as_bytes())?;
        let listener = UnixListener::bind_addr(&addr)?;
        listener.set_nonblocking(true)?;
        Ok(Listener {
            listener,
            my_uid: nix::unistd::geteuid().as_raw(),
        })
    }

    /// Accept one pending client, if any, that is root or our own user.
    pub fn accept(&self) -> Option<io::Result<Connection>> {
        match self.listener.accept() {
            Ok((stream, _)) => {
                let uid = peer_uid(&stream);
                let allowed = uid.is_some_and(|uid| uid == 0 || uid == self.my_uid);
                if !allowed {
                    // Say why before closing, or the client sees a bare EOF. (A
                    // few bytes into a fresh socket: never blocks, never short.)
                    let _ = stream.set_nonblocking(true);
                    let who = uid.map_or("unknown".to_string(), |u| u.to_string());
                    let _ = (&stream).write(
                        format!(
                            "refused: permission denied (only root and uid {} may control this psflip; you are uid {who})\n",
                            self.my_uid
                        )
                        .as_bytes(),
                    );
                    // Read what it already sent, so that closing does not reset
                    // the connection under the answer.
                    let _ = (&stream).read(&mut [0u8; 512]);
                    return Some(Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!("control client of uid {who} refused"),
                    )));
                }
                if let Err(e) = stream.set_nonblocking(true) {
                    return Some(Err(e));
                }
                Some(Ok(Connection {
                    stream,
                    buf: Vec::new(),
                }))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) => Some(Err(e)),
        }
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }
}

fn peer_uid(stream: &UnixStream) -> Option<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for the call and sized for SO_PEERCRED.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(cred.uid)
}

/// One client connection, in the running generation.
pub struct Connection {
    stream: UnixStream,
    buf: Vec<u8>,
}

/// What reading a connection gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// A whole request line.
    Request(Request),
    /// A line that is no request.
    Invalid(String),
    /// Not a whole line yet.
    Partial,
    /// The client went away.
    Closed,
}

impl Connection {
    /// Read what the client sent so far. A whole request line counts even if the
    /// client shut down its side right after it (`printf 'status\n' | socat …`).
    pub fn receive(&mut self) -> Received {
        let mut chunk = [0u8; 256];
        let mut closed = false;
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    if self.buf.len() > 4096 {
                        return Received::Invalid("request too long".into());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Received::Closed,
            }
        }
        let Some(end) = self.buf.iter().position(|b| *b == b'\n') else {
            return if closed {
                Received::Closed
            } else {
                Received::Partial
            };
        };
        let line = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.clear();
        match parse_request(&line) {
            Some(r) => Received::Request(r),
            None => Received::Invalid(line),
        }
    }

    /// Send the reply. Replies are small: a blocking write with a short timeout,
    /// so a client that stopped reading cannot stall the event loop for long.
    pub fn reply(self, text: &str) {
        let _ = self.stream.set_nonblocking(false);
        let _ = self
            .stream
            .set_write_timeout(Some(Duration::from_millis(100)));
        let mut stream = self.stream;
        let _ = stream.write_all(text.as_bytes());
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

/// The client side: send `request` to the generation with this pid and return its
/// whole reply, waiting at most `timeout`.
pub fn ask(pid: u32, request: Request, timeout: Duration) -> io::Result<String> {
    let addr = SocketAddr::from_abstract_name(name(pid).as_bytes())?;
    let mut stream = UnixStream::connect_addr(&addr)?;
    // A server that refuses us may have said why and closed before our request
    // went out: read its answer all the same.
    let sent = stream.write_all(request_line(request).as_bytes());
    let deadline = Instant::now() + timeout;
    let mut reply = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer in time"));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer in time"));
            }
            // The server said its piece and closed before reading our request
            // (it refused us): the kernel reports that as a reset, after the data.
            Err(e) if !reply.is_empty() && e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(_) if reply.is_empty() && sent.is_err() => break,
            Err(e) => return Err(e),
        }
    }
    if reply.is_empty() {
        sent?;
    }
    Ok(String::from_utf8_lossy(&reply).into_owned())
}
