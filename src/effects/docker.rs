//! `[healthcheck.docker]`: asks the Docker engine about the container, over its
//! Unix socket, without ever blocking the event loop.
//!
//! 1. [`Inspector::start`] (the machine's `InspectContainer`) opens a
//!    non-blocking connection and queues `GET /containers/NAME/json` as
//!    HTTP/1.0, so the engine answers with a body that ends when it closes the
//!    connection (no chunking, no keep-alive). A connection that fails at once
//!    is answered at once.
//! 2. The event loop polls [`Inspector::poll`]'s fd and calls
//!    [`Inspector::on_ready`], which writes what is left of the request, reads
//!    what has arrived and, at EOF, decodes the answer ([`decode`]).
//! 3. Nothing here bounds the time: the machine abandons an inspection that
//!    outlives `interval` ([`Inspector::abandon`], `AbandonInspection`).
//! 4. The answer's head is read by `httparse` (as the http probe reads its own),
//!    its JSON body by `serde_json`. What it means (healthy, stopped, unhealthy,
//!    no HEALTHCHECK) is the machine's to decide: this only reads `State.Status`,
//!    `State.Health.Status` and whether `Config.Healthcheck` is set, or says why
//!    it could not.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::poll::PollFlags;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};

use crate::machine::Inspection;

/// The largest answer read: an inspection is a few kB; a runaway stops here.
const MAX_ANSWER: usize = 1 << 20;

/// One container's inspections, at most one in flight.
#[derive(Debug)]
pub struct Inspector {
    socket: PathBuf,
    container: String,
    conn: Option<Conn>,
}

#[derive(Debug)]
struct Conn {
    stream: UnixStream,
    request: Vec<u8>,
    written: usize,
    answer: Vec<u8>,
}

impl Inspector {
    pub fn new(socket: PathBuf, container: String) -> Inspector {
        Inspector {
            socket,
            container,
            conn: None,
        }
    }

    /// The container's name.
    pub fn container(&self) -> &str {
        &self.container
    }

    /// Start an inspection (one in flight is dropped first). `Some` when it
    /// failed at once (the engine's socket is missing, refuses, is busy).
    pub fn start(&mut self) -> Option<Inspection> {
        self.conn = None;
        match open(&self.socket) {
            Ok(stream) => {
                self.conn = Some(Conn {
                    stream,
                    request: format!(
                        "GET /containers/{}/json HTTP/1.0\r\nHost: docker\r\nUser-Agent: psflip\r\n\r\n",
                        self.container
                    )
                    .into_bytes(),
                    written: 0,
                    answer: Vec::new(),
                });
                None
            }
            Err(e) => Some(self.unreachable(&e)),
        }
    }

    /// Forget the inspection in flight.
    pub fn abandon(&mut self) {
        self.conn = None;
    }

    /// The fd to poll, and for what, while an inspection is in flight.
    pub fn poll(&self) -> Option<(BorrowedFd<'_>, PollFlags)> {
        let conn = self.conn.as_ref()?;
        let flags = if conn.written < conn.request.len() {
            PollFlags::POLLOUT
        } else {
            PollFlags::POLLIN
        };
        Some((conn.stream.as_fd(), flags))
    }

    /// Make progress; `Some` once the inspection is over.
    pub fn on_ready(&mut self) -> Option<Inspection> {
        let conn = self.conn.as_mut()?;
        let result = conn.progress();
        match result {
            Ok(false) => None,
            Ok(true) => {
                let conn = self.conn.take()?;
                Some(decode(&conn.answer, &self.container))
            }
            Err(e) => {
                self.conn = None;
                Some(self.unreachable(&e))
            }
        }
    }

    fn unreachable(&self, e: &io::Error) -> Inspection {
        Inspection::Failed(format!(
            "cannot reach the Docker engine at unix://{}: {}",
            self.socket.display(),
            describe(e)
        ))
    }
}

impl Conn {
    /// Write what is left, read what came; `true` at the end of the answer.
    fn progress(&mut self) -> io::Result<bool> {
        while self.written < self.request.len() {
            match (&self.stream).write(&self.request[self.written..]) {
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let mut buf = [0u8; 16 * 1024];
        loop {
            match (&self.stream).read(&mut buf) {
                Ok(0) => return Ok(true),
                Ok(n) => {
                    if self.answer.len() + n > MAX_ANSWER {
                        return Err(io::Error::other("its answer is too large"));
                    }
                    self.answer.extend_from_slice(&buf[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// A non-blocking, close-on-exec connection to the engine's socket.
fn open(path: &Path) -> io::Result<UnixStream> {
    let fd: OwnedFd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    // A Unix stream connects at once, or fails (EAGAIN: the backlog is full).
    connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr)?;
    Ok(UnixStream::from(fd))
}

/// An I/O error in a few words.
fn describe(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).desc().to_lowercase(),
        None => e.to_string(),
    }
}

/// The engine's whole answer (status line, headers, body), decoded. The head is
/// read by `httparse`, as the `[healthcheck.http]` probe reads its answers.
pub fn decode(answer: &[u8], container: &str) -> Inspection {
    let bad =
        |why: &str| Inspection::Failed(format!("unexpected answer from the Docker engine: {why}"));
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let (status, head_len) = match (response.parse(answer), response.code) {
        (Ok(httparse::Status::Complete(len)), Some(code)) => (code, len),
        (Ok(_), _) => return bad("no complete header"),
        (Err(e), _) => return bad(&format!("a malformed head ({e})")),
    };
    let chunked = response.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding")
            && std::str::from_utf8(h.value).is_ok_and(|v| v.trim().eq_ignore_ascii_case("chunked"))
    });
    let mut body = answer[head_len..].to_vec();
    if chunked {
        match dechunk(&body) {
            Some(b) => body = b,
            None => return bad("a broken chunked body"),
        }
    }
    let json: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) if status == 404 => return Inspection::Missing,
        Err(e) => return bad(&format!("HTTP {status}, body not JSON ({e})")),
    };
    match status {
        200 => {
            let state = &json["State"];
            let Some(status) = state["Status"].as_str() else {
                return bad(&format!("no State.Status for container {container}"));
            };
            // `{"Test": ["NONE"]}` turns an image's HEALTHCHECK off.
            let test = &json["Config"]["Healthcheck"]["Test"];
            let healthcheck = test
                .as_array()
                .and_then(|t| t.first())
                .and_then(|first| first.as_str())
                .is_some_and(|first| first != "NONE");
            Inspection::Found {
                status: status.to_owned(),
                health: state["Health"]["Status"].as_str().map(str::to_owned),
                healthcheck,
            }
        }
        404 => Inspection::Missing,
        _ => Inspection::Failed(format!(
            "the Docker engine answered HTTP {status}: {}",
            json["message"].as_str().unwrap_or("(no message)")
        )),
    }
}

/// A chunked body, de-chunked; `None` if malformed.
fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = body.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&body[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        body = &body[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: &str, headers: &str, body: &str) -> Vec<u8> {
        format!("HTTP/1.0 {status}\r\nContent-Type: application/json\r\n{headers}\r\n{body}")
            .into_bytes()
    }

    #[test]
    fn decodes_state_and_health() {
        let body = r#"{"Id":"x","State":{"Status":"running","Running":true,"Health":{"Status":"healthy","FailingStreak":0}},"Config":{"Healthcheck":{"Test":["CMD-SHELL","test -f /tmp/ok"]}}}"#;
        assert_eq!(
            decode(&answer("200 OK", "", body), "c"),
            Inspection::Found {
                status: "running".into(),
                health: Some("healthy".into()),
                healthcheck: true,
            }
        );
        let body = r#"{"State":{"Status":"exited"},"Config":{}}"#;
        assert_eq!(
            decode(&answer("200 OK", "", body), "c"),
            Inspection::Found {
                status: "exited".into(),
                health: None,
                healthcheck: false,
            }
        );
        let body = r#"{"State":{"Status":"created"},"Config":{"Healthcheck":{"Test":["NONE"]}}}"#;
        assert!(matches!(
            decode(&answer("200 OK", "", body), "c"),
            Inspection::Found {
                healthcheck: false,
                ..
            }
        ));
    }

    #[test]
    fn decodes_missing_errors_and_chunks() {
        let body = r#"{"message":"No such container: c"}"#;
        assert_eq!(
            decode(&answer("404 Not Found", "", body), "c"),
            Inspection::Missing
        );
        assert_eq!(
            decode(
                &answer("500 Internal Server Error", "", r#"{"message":"boom"}"#),
                "c"
            ),
            Inspection::Failed("the Docker engine answered HTTP 500: boom".into())
        );
        let chunked = "a\r\n{\"State\":{\r\n14\r\n\"Status\":\"created\"}}\r\n0\r\n\r\n";
        assert_eq!(
            decode(
                &answer("200 OK", "Transfer-Encoding: chunked\r\n", chunked),
                "c"
            ),
            Inspection::Found {
                status: "created".into(),
                health: None,
                healthcheck: false,
            }
        );
        assert!(matches!(
            decode(b"HTTP/1.0 200 OK\r\n", "c"),
            Inspection::Failed(why) if why.contains("no complete header")
        ));
    }

    #[test]
    fn missing_socket_fails_at_once_with_the_path() {
        let mut inspector = Inspector::new(PathBuf::from("/nonexistent/docker.sock"), "c".into());
        assert_eq!(
            inspector.start(),
            Some(Inspection::Failed(
                "cannot reach the Docker engine at unix:///nonexistent/docker.sock: no such file or directory".into()
            ))
        );
        assert!(inspector.poll().is_none());
    }
}
