//! `[healthcheck.tcp]` and `[healthcheck.http]`: one check, run by a probe process.
//!
//! Why it is shaped this way:
//!
//! 1. The machine knows one kind of active healthcheck, a probe *process*
//!    (`Health::Command`): run at the child's spawn, then every interval, never
//!    two at once, killed if it outlives the interval, healthy when it exits 0.
//!    A tcp or http check is that same probe, run as psflip's own binary with
//!    the hidden subcommand [`SUBCOMMAND`], so the machine, its simulation and
//!    the event loop (which never blocks on a socket) stay as they are.
//! 2. This module holds the pure parts, checked when the configuration is read
//!    ([`HttpUrl::parse`], [`StatusPattern::parse`], the address is an
//!    [`Endpoint`]) and the blocking check itself ([`run`]), bounded by a timeout
//!    a little shorter than the interval ([`timeout_for`]) so that a slow check
//!    ends with its own reason before the machine has to kill it.
//! 3. Blocking std sockets (`TcpStream::connect_timeout`, `UnixStream`), a
//!    hand-written `GET` (five fixed lines), and the answer read by `httparse`
//!    (the HTTP/1.x head parser under hyper): healthy or not is decided on the
//!    status line alone; the head is read whole only to skip a 1xx answer.

use std::fmt;
use std::io::{self, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::values::format_duration;
pub use crate::values::{Endpoint, HttpUrl, StatusPattern};

/// The hidden subcommand of the `psflip` binary that runs one check:
/// `psflip __probe tcp --timeout 80ms -- ADDRESS`,
/// `psflip __probe http --timeout 200ms -- URL STATUS`.
pub const SUBCOMMAND: &str = "__probe";

/// The longest answer head read (status line and headers, while skipping a 1xx
/// answer).
const MAX_HEAD: usize = 8 * 1024;
/// The most header lines an answer head may have.
const MAX_HEADERS: usize = 100;

/// What one probe run checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// Healthy when a connection to the address is accepted.
    Tcp(Endpoint),
    /// Healthy when `GET url` answers with a status `status` matches.
    Http {
        /// Where to send the request.
        url: HttpUrl,
        /// Which statuses count as healthy.
        status: StatusPattern,
    },
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Check::Tcp(address) => address.fmt(f),
            Check::Http { url, .. } => url.fmt(f),
        }
    }
}

/// The timeout a probe gets for an `interval` (decided by the machine).
pub use crate::machine::probe_timeout as timeout_for;

/// Runs `check`; `Ok` when healthy, otherwise one short line saying why. Never
/// takes (much) longer than `timeout`: the check runs on a thread, so even a
/// blocking name lookup or a Unix socket whose backlog is full cannot hold it.
pub fn run(check: &Check, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let (tx, rx) = mpsc::channel();
    let job = check.clone();
    std::thread::spawn(move || {
        let _ = tx.send(run_until(&job, deadline));
    });
    // A little grace, so that a socket timeout (which says what timed out) wins
    // over this catch-all.
    match rx.recv_timeout(timeout + Duration::from_millis(10)) {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {}", format_duration(timeout))),
    }
}

fn run_until(check: &Check, deadline: Instant) -> Result<(), String> {
    match check {
        Check::Tcp(Endpoint::Unix(path)) => UnixStream::connect(path)
            .map(drop)
            .map_err(|e| describe(&e)),
        Check::Tcp(address) => connect(address, deadline).map(drop),
        Check::Http { url, status } => http(url, status, deadline),
    }
}

/// The time left before `deadline`; an error once it has passed.
fn left(deadline: Instant) -> Result<Duration, String> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| "timed out".to_owned())
}

/// An I/O error in a few words ("connection refused", "timed out").
fn describe(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "timed out".to_owned(),
        _ => match e.raw_os_error() {
            Some(code) => nix::errno::Errno::from_raw(code).desc().to_lowercase(),
            None => e.to_string(),
        },
    }
}

/// Connects to a TCP address, trying each resolved address in turn.
fn connect(address: &Endpoint, deadline: Instant) -> Result<TcpStream, String> {
    let addrs = address.resolve(false)?;
    let mut last = format!("{address} resolves to no address");
    for addr in &addrs {
        match TcpStream::connect_timeout(addr, left(deadline)?) {
            Ok(stream) => return Ok(stream),
            // With several addresses, say which one the last reason is about.
            Err(e) if addrs.len() > 1 => last = format!("{addr}: {}", describe(&e)),
            Err(e) => last = describe(&e),
        }
    }
    Err(last)
}

/// `GET url`, then the answer's status (1xx informational answers skipped).
fn http(url: &HttpUrl, status: &StatusPattern, deadline: Instant) -> Result<(), String> {
    let stream = connect(&url.endpoint(), deadline)?;
    let io_error = |what: &str, e: &io::Error| format!("{what}: {}", describe(e));
    stream
        .set_write_timeout(Some(left(deadline)?))
        .map_err(|e| io_error("sending the request", &e))?;
    (&stream)
        .write_all(url.request().as_bytes())
        .map_err(|e| io_error("sending the request", &e))?;
    let mut answer = Answer {
        stream: &stream,
        deadline,
        buf: Vec::new(),
    };
    loop {
        let code = answer.status()?;
        if status.matches(code) {
            return Ok(());
        }
        // An informational answer (103 Early Hints…) comes before the real one.
        if (100..200).contains(&code) && code != 101 {
            answer.skip_head()?;
            continue;
        }
        return Err(format!("answered {code} (expected {status})"));
    }
}

/// The answer as read so far; `httparse` parses it.
struct Answer<'s> {
    stream: &'s TcpStream,
    deadline: Instant,
    buf: Vec<u8>,
}

/// What `httparse` makes of the buffer.
enum Head {
    /// Not even the status line yet.
    Nothing,
    /// The status line (its code), not yet the headers' end.
    Status(u16),
    /// The whole head (status code, length in bytes).
    Complete(u16, usize),
}

impl Answer<'_> {
    /// The status code of the next answer: decided on its status line alone.
    fn status(&mut self) -> Result<u16, String> {
        loop {
            match self.parse()? {
                Head::Status(code) | Head::Complete(code, _) => return Ok(code),
                Head::Nothing => {
                    self.read("waiting for the status line", "before a status line")?
                }
            }
        }
    }

    /// Drops the head of the answer whose status was read (headers included).
    fn skip_head(&mut self) -> Result<(), String> {
        loop {
            match self.parse()? {
                Head::Complete(_, len) => {
                    self.buf.drain(..len);
                    return Ok(());
                }
                _ => self.read("reading the answer", "mid-answer")?,
            }
        }
    }

    fn parse(&self) -> Result<Head, String> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        let parsed = response.parse(&self.buf);
        // httparse reads the code before the line ends; only a whole line counts.
        let line_done = self.buf.contains(&b'\n');
        match (parsed, response.code) {
            (Ok(httparse::Status::Complete(len)), Some(code)) => Ok(Head::Complete(code, len)),
            (Ok(_), _) if self.buf.len() >= MAX_HEAD => Err("answer head too long".to_owned()),
            (Ok(_), Some(code)) if line_done => Ok(Head::Status(code)),
            (Ok(_), _) => Ok(Head::Nothing),
            (Err(httparse::Error::TooManyHeaders), _) => Err("too many header lines".to_owned()),
            // A bad header after a good status line: the status still counts.
            (Err(_), _) => match parse_status_line(&self.first_line()) {
                Ok(code) if line_done => Ok(Head::Status(code)),
                Ok(_) => Err(format!("malformed status line {:?}", self.first_line())),
                Err(e) => Err(e),
            },
        }
    }

    /// The first line read, without its line ending.
    fn first_line(&self) -> String {
        let first = self.buf.split(|&b| b == b'\n').next().unwrap_or_default();
        String::from_utf8_lossy(first)
            .trim_end_matches('\r')
            .to_owned()
    }

    /// Reads more of the answer, within the deadline.
    fn read(&mut self, what: &str, closed: &str) -> Result<(), String> {
        let timeout = left(self.deadline)?;
        self.stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| format!("{what}: {}", describe(&e)))?;
        let mut chunk = [0u8; 1024];
        match io::Read::read(&mut &*self.stream, &mut chunk) {
            Ok(0) if self.buf.is_empty() => Err(format!("the connection closed {closed}")),
            Ok(0) => Err(format!("{what}: the connection closed mid-line")),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) => Err(format!("{what}: {}", describe(&e))),
        }
    }
}

/// The status code of an HTTP/1.x status line: `HTTP/1.1 200 OK` gives 200.
pub fn parse_status_line(line: &str) -> Result<u16, String> {
    let mut answer = format!("{line}\r\n").into_bytes();
    answer.extend_from_slice(b"\r\n");
    let mut headers = [httparse::EMPTY_HEADER; 0];
    let mut response = httparse::Response::new(&mut headers);
    match (response.parse(&answer), response.code) {
        (Ok(httparse::Status::Complete(_)), Some(code)) => Ok(code),
        _ => {
            let shown: String = line.chars().take(60).collect();
            Err(format!("malformed status line {shown:?}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use std::io::Read;
    use std::net::{SocketAddr, TcpListener};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixListener;
    use std::path::PathBuf;
    use std::thread::JoinHandle;

    const SHORT: Duration = Duration::from_millis(300);

    fn tcp(addr: SocketAddr) -> Check {
        Check::Tcp(Endpoint::parse(&addr.to_string(), false).expect("an address"))
    }

    fn http_check(addr: SocketAddr, path: &str, status: &str) -> Check {
        Check::Http {
            url: HttpUrl::parse(&format!("http://{addr}{path}")).expect("a URL"),
            status: StatusPattern::parse(status).expect("a pattern"),
        }
    }

    /// A temp dir for Unix sockets, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!(
                "psflip-probe-{name}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("temp dir");
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Shrinks a listener's backlog to nothing (listen again with 0), then
    /// connects until a connection is no longer accepted: the next connect hangs.
    fn fill_backlog(fd: i32, mut connect: impl FnMut() -> bool) {
        // SAFETY: listen on a valid listening socket we own.
        assert_eq!(unsafe { libc::listen(fd, 0) }, 0, "listen(fd, 0)");
        for _ in 0..16 {
            if !connect() {
                return;
            }
        }
        panic!("the backlog never filled up");
    }

    #[rstest]
    #[case::a_fifth_off(Duration::from_millis(100), Duration::from_millis(80))]
    #[case::a_fifth_off_again(Duration::from_millis(250), Duration::from_millis(200))]
    #[case::at_most_100ms_off(Duration::from_secs(1), Duration::from_millis(900))]
    #[case::long(Duration::from_secs(10), Duration::from_millis(9900))]
    #[case::tiny(Duration::from_nanos(1), Duration::from_nanos(1))]
    fn the_timeout_is_a_little_shorter_than_the_interval(
        #[case] interval: Duration,
        #[case] timeout: Duration,
    ) {
        assert_eq!(timeout_for(interval), timeout);
    }

    // --- tcp ---

    #[test]
    fn tcp_is_healthy_when_a_connection_is_accepted() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        assert_eq!(run(&tcp(addr), SHORT), Ok(()));
        // Also through a host name and the IPv6 form of the loopback, if any.
        let by_name =
            Check::Tcp(Endpoint::parse(&format!("localhost:{}", addr.port()), false).unwrap());
        assert_eq!(run(&by_name, SHORT), Ok(()));
    }

    #[test]
    fn tcp_is_unhealthy_when_the_connection_is_refused() {
        // A client socket's local port is bound but does not listen: a
        // connection to it is refused, and no other test can take the port.
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = TcpStream::connect(listener.local_addr().unwrap()).expect("connect");
        let bound = client.local_addr().expect("addr");
        assert_eq!(
            run(&tcp(bound), SHORT),
            Err("connection refused".to_owned())
        );
    }

    #[test]
    fn tcp_times_out_when_the_listener_never_accepts() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut held = Vec::new();
        fill_backlog(listener.as_raw_fd(), || {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(s) => {
                    held.push(s);
                    true
                }
                Err(_) => false,
            }
        });
        let started = Instant::now();
        let result = run(&tcp(addr), Duration::from_millis(200));
        let took = started.elapsed();
        assert!(
            matches!(&result, Err(why) if why.contains("timed out") || why.contains("no answer")),
            "{result:?}"
        );
        assert!(
            took >= Duration::from_millis(190) && took < Duration::from_millis(600),
            "{took:?}"
        );
    }

    #[test]
    fn tcp_to_a_unix_socket() {
        let dir = TempDir::new("unix-ok");
        let path = dir.0.join("app.sock");
        let check = Check::Tcp(Endpoint::Unix(path.clone()));
        assert_eq!(
            run(&check, SHORT),
            Err("no such file or directory".to_owned())
        );
        let listener = UnixListener::bind(&path).expect("bind");
        assert_eq!(run(&check, SHORT), Ok(()));
        // The file stays, nothing listens any more.
        drop(listener);
        assert_eq!(run(&check, SHORT), Err("connection refused".to_owned()));
    }

    #[test]
    fn tcp_to_a_unix_socket_times_out_when_the_backlog_is_full() {
        let dir = TempDir::new("unix-full");
        let path = dir.0.join("app.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let check = Check::Tcp(Endpoint::Unix(path));
        // Each successful check leaves its (closed) connection in the queue.
        fill_backlog(listener.as_raw_fd(), || {
            run(&check, Duration::from_millis(200)).is_ok()
        });
        assert_eq!(
            run(&check, Duration::from_millis(150)),
            Err("no answer within 150ms".to_owned())
        );
    }

    // --- http ---

    /// A one-connection HTTP server: reads the request head, sends `answer`
    /// (if any), then waits for the client to close (unless `hang_up`). Yields
    /// the request.
    fn serve(answer: Option<&'static [u8]>, hang_up: bool) -> (SocketAddr, JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let handle = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            if let Some(answer) = answer {
                let _ = conn.write_all(answer);
            }
            if !hang_up {
                // Until the client hangs up (or 5 s).
                let _ = conn.read(&mut buf);
            }
            String::from_utf8_lossy(&request).into_owned()
        });
        (addr, handle)
    }

    #[rstest]
    #[case::ok(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "2xx", Ok(()))]
    #[case::no_content(b"HTTP/1.1 204 No Content\r\n\r\n", "2xx", Ok(()))]
    #[case::exact(b"HTTP/1.1 204 No Content\r\n\r\n", "200,204", Ok(()))]
    #[case::http10(b"HTTP/1.0 200 OK\r\n\r\n", "200", Ok(()))]
    #[case::no_reason(b"HTTP/1.1 200\r\n\r\n", "2xx", Ok(()))]
    #[case::bare_lf(b"HTTP/1.1 200 OK\n\n", "2xx", Ok(()))]
    #[case::not_found(
        b"HTTP/1.1 404 Not Found\r\n\r\n",
        "2xx",
        Err("answered 404 (expected 2xx)")
    )]
    #[case::not_found_expected(b"HTTP/1.1 404 Not Found\r\n\r\n", "2xx,404", Ok(()))]
    #[case::server_error(
        b"HTTP/1.1 500 Internal Server Error\r\n\r\n",
        "200-499",
        Err("answered 500 (expected 200-499)")
    )]
    #[case::redirect(b"HTTP/1.1 301 Moved\r\nLocation: /x\r\n\r\n", "3xx", Ok(()))]
    #[case::redirect_is_not_2xx(
        b"HTTP/1.1 301 Moved\r\nLocation: /x\r\n\r\n",
        "2xx",
        Err("answered 301 (expected 2xx)")
    )]
    #[case::early_hints(
        b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
        "2xx",
        Ok(())
    )]
    #[case::garbage(b"hello\r\n", "2xx", Err("malformed status line \"hello\""))]
    #[case::bad_code(
        b"HTTP/1.1 2000 OK\r\n\r\n",
        "2xx",
        Err("malformed status line \"HTTP/1.1 2000 OK\"")
    )]
    fn http_answers(
        #[case] answer: &'static [u8],
        #[case] status: &str,
        #[case] expected: Result<(), &str>,
    ) {
        let (addr, server) = serve(Some(answer), false);
        let result = run(
            &http_check(addr, "/health?x=1", status),
            Duration::from_secs(2),
        );
        assert_eq!(result, expected.map_err(str::to_owned));
        let request = server.join().expect("server");
        assert_eq!(
            request,
            format!(
                "GET /health?x=1 HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: psflip-healthcheck\r\nAccept: */*\r\nConnection: close\r\n\r\n"
            )
        );
    }

    #[test]
    fn http_closed_without_an_answer() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            let (conn, _) = listener.accept().expect("accept");
            drop(conn);
        });
        let result = run(&http_check(addr, "/", "2xx"), Duration::from_secs(2));
        server.join().unwrap();
        // Closed before or after the request was written: either way, unhealthy.
        assert!(
            matches!(&result, Err(why) if why.contains("closed") || why.contains("reset") || why.contains("broken pipe")),
            "{result:?}"
        );
    }

    #[rstest]
    #[case::half_line(
        b"HTTP/1.1 200",
        "waiting for the status line: the connection closed mid-line"
    )]
    #[case::nothing(b"", "the connection closed before a status line")]
    #[case::informational_only(
        b"HTTP/1.1 100 Continue\r\n\r\n",
        "the connection closed before a status line"
    )]
    #[case::informational_cut(
        b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>",
        "reading the answer: the connection closed mid-line"
    )]
    fn http_answer_cut_short(#[case] answer: &'static [u8], #[case] expected: &str) {
        let (addr, server) = serve(Some(answer), true);
        let result = run(&http_check(addr, "/", "2xx"), Duration::from_secs(2));
        assert_eq!(result, Err(expected.to_owned()));
        server.join().unwrap();
    }

    #[test]
    fn http_times_out_when_the_server_never_answers() {
        let (addr, server) = serve(None, false);
        let started = Instant::now();
        let result = run(&http_check(addr, "/", "2xx"), Duration::from_millis(250));
        let took = started.elapsed();
        // The socket's own timeout says what timed out; the catch-all a few
        // milliseconds later may win on a loaded machine.
        assert!(
            matches!(
                result.as_ref().map_err(String::as_str),
                Err("waiting for the status line: timed out" | "no answer within 250ms")
            ),
            "{result:?}"
        );
        assert!(
            took >= Duration::from_millis(240) && took < Duration::from_millis(700),
            "{took:?}"
        );
        server.join().unwrap();
    }

    #[test]
    fn http_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = TcpStream::connect(listener.local_addr().unwrap()).expect("connect");
        let bound = client.local_addr().expect("addr");
        assert_eq!(
            run(&http_check(bound, "/", "2xx"), SHORT),
            Err("connection refused".to_owned())
        );
    }

    // --- parsing ---

    #[rstest]
    #[case("HTTP/1.1 200 OK", Ok(200))]
    #[case("HTTP/1.0 404 Not Found", Ok(404))]
    #[case("HTTP/1.1 204", Ok(204))]
    // An HTTP/1.1 request gets an HTTP/1.x answer; httparse reads no other.
    #[case("HTTP/2 200 ", Err(()))]
    #[case("HTTP/1.1 999 Odd", Ok(999))]
    #[case("", Err(()))]
    #[case("HTTP/1.1", Err(()))]
    #[case("HTTP/1.1 20", Err(()))]
    #[case("HTTP/1.1 2000", Err(()))]
    #[case("HTTP/1.1 20x OK", Err(()))]
    #[case("HTTP/1.1  200 OK", Err(()))]
    #[case("HTTP/ 200 OK", Err(()))]
    #[case("HTTP/x 200 OK", Err(()))]
    #[case("ICY 200 OK", Err(()))]
    #[case("http/1.1 200 OK", Err(()))]
    fn status_lines(#[case] line: &str, #[case] expected: Result<u16, ()>) {
        assert_eq!(parse_status_line(line).map_err(|_| ()), expected);
    }
}
