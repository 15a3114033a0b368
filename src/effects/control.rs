//! The control socket: how `psflip upgrade` and `psflip status` reach the running
//! generation.
//!
//! Trust (SPEC §10) rests on the file system, not on names anyone can bind:
//!
//! 1. The socket is a file in a directory only psflip's user (or root) can write:
//!    `control_socket` when the configuration sets it, else
//!    `<dir>/<config-stem>-<hash of the config's absolute path>.sock` in
//!    `/run/psflip` (root), `$XDG_RUNTIME_DIR/psflip`, or `/tmp/psflip-<uid>`. A
//!    directory psflip creates is created `0700`; whether created or found, it
//!    must be a real directory (no symlink), owned by psflip's user (or root, for
//!    a configured path), writable by nobody else — or psflip refuses to start.
//! 2. A generation binds a fresh, randomly named socket beside the final name and
//!    renames it over that name when it becomes the service (the machine decides
//!    when: `Effect::ClaimControl`): the first generation right after its first
//!    child started, a successor once its pidfile is written, right before it
//!    reports ready (neither binds anything before: a child is not kept waiting for
//!    a socket nobody can reach yet, and a successor whose child fails has nothing
//!    to remove); an old generation that serves on after an upgrade takes the name
//!    back if its successor took it before dying. So there is never a moment without a socket
//!    once the service runs, a stale socket left by a killed instance is simply
//!    replaced, and a live one is never stolen (the first generation refuses to
//!    start beside it, before it starts a child). The directory is made or
//!    verified before the first child starts: a bad one is an error at start.
//! 3. The server reads the client's credentials (`SO_PEERCRED`) before reading a
//!    byte: only root and psflip's own user are served.
//! 4. The client checks the server's credentials before believing a word: its
//!    uid must own the socket's directory (or be root); `crate::client` then
//!    checks its pid against the pidfile and what /proc says it runs.
//!
//! The protocol is one request line (`upgrade` or `status`) and a reply that ends
//! when the server closes the connection.

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::socket::{getsockopt, sockopt};

use crate::machine::Request;

/// The longest path a Unix socket address holds (`sun_path`, with its NUL).
const MAX_SOCKET_PATH: usize = 107;

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

/// FNV-1a, 64 bits: stable across builds and Rust versions (a client and a
/// server of different builds must derive the same name).
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The configuration's path made absolute without resolving symlinks (a deploy
/// that swaps a symlinked configuration keeps the service's socket name).
pub fn absolute(config: &Path) -> PathBuf {
    std::path::absolute(config).unwrap_or_else(|_| config.to_owned())
}

/// The socket's file name for a configuration: its stem (for the operator) and
/// a hash of its absolute path (so two configurations never share a name).
pub fn socket_name(config: &Path) -> String {
    let abs = absolute(config);
    let stem: String = abs
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    format!("{stem}-{:016x}.sock", fnv1a64(abs.as_os_str().as_bytes()))
}

/// The directories a psflip of `uid` puts its control socket in, by
/// preference: `/run/psflip` for root, `$XDG_RUNTIME_DIR/psflip` for others
/// when set (`xdg`), else `/tmp/psflip-<uid>`.
pub fn server_dirs(uid: u32, xdg: Option<OsString>) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if uid == 0 {
        dirs.push(PathBuf::from("/run/psflip"));
    } else if let Some(xdg) = xdg.filter(|x| Path::new(x).is_absolute()) {
        dirs.push(Path::new(&xdg).join("psflip"));
    }
    dirs.push(PathBuf::from(format!("/tmp/psflip-{uid}")));
    dirs
}

/// Where a client looks for the control socket of a psflip of `uid`: the
/// server's choices, plus `/run/user/<uid>/psflip`, the usual
/// `$XDG_RUNTIME_DIR` of that user when the client's own environment does not
/// say (another user's, or a shell without a session).
pub fn default_dirs(uid: u32, xdg: Option<OsString>) -> Vec<PathBuf> {
    let mut dirs = server_dirs(uid, xdg);
    let runtime = PathBuf::from(format!("/run/user/{uid}/psflip"));
    if uid != 0 && !dirs.contains(&runtime) {
        dirs.insert(dirs.len() - 1, runtime);
    }
    dirs
}

/// Check that `dir` is a directory (not a symlink) owned by one of `owners` and
/// writable by nobody else; returns its owner.
pub fn verify_dir(dir: &Path, owners: &[u32]) -> Result<u32, String> {
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if meta.file_type().is_symlink() {
        return Err(format!(
            "{}: is a symlink (refused: it could lead anywhere)",
            dir.display()
        ));
    }
    if !meta.is_dir() {
        return Err(format!("{}: not a directory", dir.display()));
    }
    if !owners.contains(&meta.uid()) {
        let want: Vec<String> = owners.iter().map(u32::to_string).collect();
        return Err(format!(
            "{}: owned by uid {}, not by uid {} (refused: its owner could replace the socket)",
            dir.display(),
            meta.uid(),
            want.join(" or ")
        ));
    }
    if meta.permissions().mode() & 0o022 != 0 {
        return Err(format!(
            "{}: writable by group or others (mode {:o}; refused: they could replace the socket)",
            dir.display(),
            meta.permissions().mode() & 0o7777
        ));
    }
    Ok(meta.uid())
}

/// The owner of `dir`, if it is a real directory (not a symlink).
pub fn dir_owner(dir: &Path) -> Option<u32> {
    let meta = std::fs::symlink_metadata(dir).ok()?;
    meta.is_dir().then_some(meta.uid())
}

/// Create `dir` (one level, mode 0700) unless it exists; then verify it.
fn make_dir(dir: &Path, owners: &[u32]) -> Result<u32, String> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
    }
    verify_dir(dir, owners)
}

/// Where this process serves the control socket of `config`: the path, its
/// directory created or verified (step 1 of the module doc).
pub fn server_path(config: &Path, explicit: Option<&Path>) -> Result<PathBuf, String> {
    let euid = nix::unistd::geteuid().as_raw();
    let path = match explicit {
        Some(path) => {
            let path = absolute(path);
            let dir = path.parent().unwrap_or(Path::new("/"));
            make_dir(dir, &[euid, 0]).map_err(|e| format!("control_socket: {e}"))?;
            path
        }
        None => {
            let name = socket_name(config);
            let dirs = server_dirs(euid, std::env::var_os("XDG_RUNTIME_DIR"));
            // The first directory that can be made ours; /run/psflip and
            // $XDG_RUNTIME_DIR/psflip may be impossible (no /run, no session),
            // the /tmp fallback must then be right.
            let mut why = Vec::new();
            let mut found = None;
            for dir in &dirs {
                match make_dir(dir, &[euid]) {
                    Ok(_) => {
                        found = Some(dir.join(&name));
                        break;
                    }
                    Err(e) => why.push(e),
                }
            }
            found.ok_or_else(|| {
                format!(
                    "no directory for the control socket ({}); set `control_socket` to a path in a directory only uid {euid} can write",
                    why.join("; ")
                )
            })?
        }
    };
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(format!(
            "control socket path {} is longer than {MAX_SOCKET_PATH} bytes",
            path.display()
        ));
    }
    Ok(path)
}

/// The credentials of the process at the other end of a Unix socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub pid: u32,
    pub uid: u32,
}

fn peer(fd: BorrowedFd<'_>) -> Option<Peer> {
    let cred = getsockopt(&fd, sockopt::PeerCredentials).ok()?;
    (cred.pid() > 0).then_some(Peer {
        pid: cred.pid() as u32,
        uid: cred.uid(),
    })
}

/// (dev, ino) of a path, not following a symlink.
fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// The listening side, in a running generation.
pub struct Listener {
    /// None until bound ([`Listener::planned`], then [`Listener::take_name`]).
    listener: Option<UnixListener>,
    my_uid: u32,
    /// The service's name for the socket.
    path: PathBuf,
    /// Where it is bound until it takes `path` over.
    temp: Option<PathBuf>,
    /// The file at `path` once it is ours, to remove it only while it still is.
    ours: Option<(u64, u64)>,
}

/// What one `accept` gave.
pub enum Accepted {
    /// A client of root or our own user.
    Client(Connection),
    /// A client of another user, told so and closed.
    Refused { uid: Option<u32> },
    /// Out of fds or memory: accepting again at once would only repeat it.
    Exhausted(io::Error),
    /// Some other error (the connection is gone).
    Failed(io::Error),
}

impl Listener {
    /// The control socket at `path`, not bound yet: [`Listener::take_name`] binds
    /// it and makes it the service's (until then nothing is created and nothing
    /// is polled).
    pub fn planned(path: &Path) -> Listener {
        Listener {
            listener: None,
            my_uid: nix::unistd::geteuid().as_raw(),
            path: path.to_owned(),
            temp: None,
            ours: None,
        }
    }

    /// Bind a fresh socket beside `path` (mode 0600, non-blocking,
    /// close-on-exec) under a random temporary name.
    fn bind_temp(&mut self) -> io::Result<()> {
        let path = &self.path;
        let dir = path.parent().unwrap_or(Path::new("/"));
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut attempt = 0;
        let (listener, temp) = loop {
            let temp = dir.join(format!(
                ".{name}.{}.tmp",
                crate::effects::pidfile::random_hex()
            ));
            match UnixListener::bind(&temp) {
                Ok(l) => break (l, temp),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && attempt < 16 => attempt += 1,
                Err(e) => return Err(e),
            }
        };
        let done = std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| listener.set_nonblocking(true));
        if let Err(e) = done {
            let _ = std::fs::remove_file(&temp);
            return Err(e);
        }
        self.listener = Some(listener);
        self.temp = Some(temp);
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rename our socket over the service's name (atomically: a client finds
    /// the previous generation's socket or ours, never none), binding it first
    /// if it is not bound yet. A name still ours is left alone; one another
    /// generation took since (a successor that then died) is taken back with a
    /// fresh socket (the old one has no name any more: nobody can reach it).
    pub fn take_name(&mut self) -> io::Result<()> {
        if self.ours.is_some() && identity(&self.path) == self.ours {
            return Ok(());
        }
        if self.temp.is_none() {
            self.bind_temp()?;
        }
        let Some(temp) = self.temp.take() else {
            return Ok(());
        };
        if let Err(e) = std::fs::rename(&temp, &self.path) {
            self.temp = Some(temp);
            return Err(e);
        }
        self.ours = identity(&self.path);
        Ok(())
    }

    /// Accept one pending client. Its credentials are checked before anything is
    /// read from it: only root and our own user are served.
    pub fn accept(&self) -> Option<Accepted> {
        let stream = match self.listener.as_ref()?.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            Err(e) => {
                let exhausted = matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                );
                return Some(if exhausted {
                    Accepted::Exhausted(e)
                } else {
                    Accepted::Failed(e)
                });
            }
        };
        let uid = peer(stream.as_fd()).map(|p| p.uid);
        if !uid.is_some_and(|uid| uid == 0 || uid == self.my_uid) {
            // Say why before closing, or the client sees a bare EOF. (A few bytes
            // into a fresh socket: never blocks, never short.)
            let _ = stream.set_nonblocking(true);
            let who = uid.map_or("unknown".to_string(), |u| u.to_string());
            let _ = (&stream).write(
                format!(
                    "refused: permission denied (only root and uid {} may control this psflip; you are uid {who})\n",
                    self.my_uid
                )
                .as_bytes(),
            );
            return Some(Accepted::Refused { uid });
        }
        if let Err(e) = stream.set_nonblocking(true) {
            return Some(Accepted::Failed(e));
        }
        Some(Accepted::Client(Connection {
            stream,
            buf: Vec::new(),
        }))
    }

    /// The socket to poll for clients, once bound.
    pub fn poll_fd(&self) -> Option<BorrowedFd<'_>> {
        self.listener.as_ref().map(AsFd::as_fd)
    }
}

impl Drop for Listener {
    /// Remove our temp socket, and the service's name while it is still ours
    /// (after a handover it is the successor's).
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            let _ = std::fs::remove_file(temp);
        }
        if self.ours.is_some() && identity(&self.path) == self.ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Who serves the socket at `path`, if a live process does (a stale socket from
/// a killed instance refuses the connection).
pub fn live_server(path: &Path) -> Option<Peer> {
    let stream = UnixStream::connect(path).ok()?;
    peer(stream.as_fd())
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

    /// The client's pid and uid (for the log and the upgrade history).
    pub fn peer(&self) -> Option<Peer> {
        peer(self.stream.as_fd())
    }
}

/// Why asking failed.
#[derive(Debug)]
pub enum AskError {
    /// No socket there, or nobody listens on it (a stale one).
    NotThere(io::Error),
    /// The process listening is not one the client may believe.
    Untrusted(String),
    /// Anything else (a timeout, a reset before any answer).
    Io(io::Error),
}

/// The client side: connect to the socket at `path`, let `check` judge the
/// server's credentials, send `request` and return the whole reply and who gave
/// it, waiting at most `timeout`. Nothing is sent to a server `check` rejects.
pub fn ask(
    path: &Path,
    check: impl Fn(Peer) -> Result<(), String>,
    request: Request,
    timeout: Duration,
) -> Result<(String, Peer), AskError> {
    let mut stream = UnixStream::connect(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => AskError::NotThere(e),
        _ => AskError::Io(e),
    })?;
    let Some(server) = peer(stream.as_fd()) else {
        return Err(AskError::Untrusted(format!(
            "{}: the server's credentials cannot be read",
            path.display()
        )));
    };
    check(server).map_err(AskError::Untrusted)?;
    // A server that refuses us may have said why and closed before our request
    // went out: read its answer all the same.
    let sent = stream.write_all(request_line(request).as_bytes());
    let deadline = Instant::now() + timeout;
    let mut reply = Vec::new();
    let mut chunk = [0u8; 1024];
    let timed_out = || AskError::Io(io::Error::new(io::ErrorKind::TimedOut, "no answer in time"));
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out());
        }
        stream.set_read_timeout(Some(left)).map_err(AskError::Io)?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(timed_out()),
            // The server said its piece and closed before reading our request
            // (it refused us): the kernel reports that as a reset, after the data.
            Err(e) if !reply.is_empty() && e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(_) if reply.is_empty() && sent.is_err() => break,
            Err(e) => return Err(AskError::Io(e)),
        }
    }
    if reply.is_empty() {
        sent.map_err(AskError::Io)?;
    }
    Ok((String::from_utf8_lossy(&reply).into_owned(), server))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_names_differ_per_configuration_and_are_stable() {
        let a = socket_name(Path::new("/etc/app/psflip.toml"));
        assert_eq!(a, socket_name(Path::new("/etc/app/psflip.toml")));
        assert_ne!(a, socket_name(Path::new("/etc/other/psflip.toml")));
        assert!(a.starts_with("psflip-") && a.ends_with(".sock"), "{a}");
    }

    /// Whether a client connecting to `path` reaches `listener` (it accepts it).
    fn reaches(path: &Path, listener: &Listener) -> bool {
        let Ok(_client) = UnixStream::connect(path) else {
            return false;
        };
        matches!(listener.accept(), Some(Accepted::Client(_)))
    }

    #[test]
    fn a_name_taken_by_another_generation_is_taken_back() {
        let dir = std::env::temp_dir().join(format!("psflip-ctl-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("svc.sock");
        let mut old = Listener::planned(&path);
        assert!(!path.exists(), "planned binds nothing");
        old.take_name().unwrap();
        assert!(reaches(&path, &old));
        // Still ours: taking it again changes nothing.
        let inode = identity(&path);
        old.take_name().unwrap();
        assert_eq!(identity(&path), inode);
        // A successor takes the name, then dies (its drop removes the name).
        let mut new = Listener::planned(&path);
        new.take_name().unwrap();
        assert!(reaches(&path, &new) && !reaches(&path, &old));
        drop(new);
        assert!(!path.exists());
        // The old generation serves again: the name is its own once more.
        old.take_name().unwrap();
        assert!(reaches(&path, &old));
        drop(old);
        assert!(!path.exists(), "the name goes with its holder");
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn default_dirs_put_the_servers_choice_first() {
        assert_eq!(default_dirs(0, None)[0], PathBuf::from("/run/psflip"));
        let user = default_dirs(1000, Some("/run/user/1000".into()));
        assert_eq!(
            user,
            vec![
                PathBuf::from("/run/user/1000/psflip"),
                PathBuf::from("/tmp/psflip-1000")
            ]
        );
        assert_eq!(
            default_dirs(1000, Some("relative".into()))[0],
            PathBuf::from("/run/user/1000/psflip")
        );
    }
}
