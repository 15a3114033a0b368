//! The proxy's listening sockets, and the `[[listen]]` sockets of socket
//! activation: bound once by the first generation, handed to every successor
//! across exec, matched to the successor's configuration by listen address. The
//! two kinds travel in separate variables of the [`crate::handoff`]
//! (`PSFLIP_PROXY_FDS`, `PSFLIP_LISTEN_FDS`) and never mix.
//!
//! 1. The old generation clears FD_CLOEXEC on each listener in the successor's
//!    `pre_exec` only, and names them in the handoff: one `FD=ADDRESS` line each, where
//!    ADDRESS is the canonical listen address ([`key`]). An app child never gets
//!    one: they are close-on-exec everywhere else.
//! 2. The successor takes them at start-up ([`Inherited::from_env`]; `main` has
//!    already made them close-on-exec again), then [`open`] matches each `[[proxy]]
//!    listen` of its configuration by address: inherited if there, bound if new.
//!    An inherited listener the new configuration dropped is closed.
//! 3. A Unix socket file is created by the bind and removed only when the service
//!    stops for good ([`SocketFile::remove_if_ours`]), never during an upgrade: the
//!    path keeps naming the same socket (inode) across generations.
//! 4. A stale Unix socket file (nothing listens on it) is replaced at bind time; a
//!    live one, or any other file, is an error.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

use super::fds;
use crate::config::ProxyConfig;
use crate::sys;
use crate::values::Endpoint;

/// A listening socket of the proxy.
#[derive(Debug)]
pub struct Listener {
    /// Shared with the proxy thread, which accepts on it.
    pub fd: Arc<OwnedFd>,
    /// The canonical listen address ([`key`]), also its name across generations.
    pub key: String,
    /// The Unix socket file behind it, if any.
    pub file: Option<SocketFile>,
    /// Whether it came from the previous generation.
    pub inherited: bool,
}

/// A Unix socket file psflip created, named by its inode so that a file someone
/// else put at the same path later is never removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketFile {
    pub path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    /// The socket file at `path` now, if it is one.
    fn at(path: &Path) -> Option<SocketFile> {
        let meta = std::fs::symlink_metadata(path).ok()?;
        meta.file_type().is_socket().then(|| SocketFile {
            path: path.to_owned(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// Removes the file if the path still names this very socket file.
    pub fn remove_if_ours(&self) -> io::Result<bool> {
        if SocketFile::at(&self.path).as_ref() != Some(self) {
            return Ok(false);
        }
        std::fs::remove_file(&self.path).map(|()| true)
    }
}

/// The canonical listen address: the key matching listeners across generations.
pub fn key(listen: &Endpoint, cwd: &Path) -> String {
    listen.absolute(cwd).to_string()
}

/// Listeners handed over by the previous generation.
#[derive(Debug, Default)]
pub struct Inherited(Vec<(OwnedFd, String)>);

impl Inherited {
    /// Takes the fds named in [`handoff::PROXY_FDS`](crate::handoff::PROXY_FDS)'s value. Anything that is not an open
    /// listening socket is skipped.
    pub fn from_env(value: Option<&str>) -> Inherited {
        let mut out = Vec::new();
        for line in value.unwrap_or_default().lines() {
            let Some((fd, key)) = line.split_once('=') else {
                continue;
            };
            let Ok(raw) = fd.trim().parse::<RawFd>() else {
                continue;
            };
            if raw < 3 || !fds::is_open(raw) || !sys::is_listening(raw) {
                continue;
            }
            if out
                .iter()
                .any(|(f, _): &(OwnedFd, String)| f.as_raw_fd() == raw)
            {
                continue;
            }
            fds::set_cloexec(raw);
            // SAFETY: the fd is open, was handed to us to own, and is taken once.
            out.push((unsafe { OwnedFd::from_raw_fd(raw) }, key.to_owned()));
        }
        Inherited(out)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The [`handoff::PROXY_FDS`](crate::handoff::PROXY_FDS) value handing `listeners` to a successor.
pub fn env_value(listeners: &[Listener]) -> String {
    listeners
        .iter()
        .map(|l| format!("{}={}", l.fd.as_raw_fd(), l.key))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A listen address that cannot be listened on.
#[derive(Debug, Error)]
#[error("{key}: cannot listen on {address}: {reason}")]
pub struct ListenError {
    /// The configuration key, e.g. `proxy[0].listen`.
    pub key: String,
    pub address: String,
    pub reason: String,
}

/// What [`open`] returns.
#[derive(Debug, Default)]
pub struct Opened {
    /// One per `[[proxy]]`, in configuration order.
    pub listeners: Vec<Listener>,
    /// Socket files of inherited listeners the configuration no longer has: removed
    /// once this generation is the service.
    pub dropped: Vec<SocketFile>,
}

/// Opens the listener of every `[[proxy]]`: inherited when the previous generation
/// had the same address, bound otherwise.
pub fn open(
    proxies: &[ProxyConfig],
    inherited: Inherited,
    cwd: &Path,
) -> Result<Opened, ListenError> {
    let endpoints: Vec<(String, &Endpoint)> = proxies
        .iter()
        .enumerate()
        .map(|(i, p)| (format!("proxy[{i}].listen"), &p.listen))
        .collect();
    open_endpoints(&endpoints, inherited, cwd)
}

/// Opens a listening socket for each `(configuration key, address)`: inherited
/// when the previous generation had the same address, bound otherwise (blocking,
/// close-on-exec, the largest backlog).
pub fn open_endpoints(
    endpoints: &[(String, &Endpoint)],
    inherited: Inherited,
    cwd: &Path,
) -> Result<Opened, ListenError> {
    let mut pool = inherited.0;
    let mut opened = Opened::default();
    for &(ref config_key, listen) in endpoints {
        let key = key(listen, cwd);
        let error = |reason: String| ListenError {
            key: config_key.clone(),
            address: listen.to_string(),
            reason,
        };
        let file_of = |ep: &Endpoint| match ep.absolute(cwd) {
            Endpoint::Unix(path) => SocketFile::at(&path),
            Endpoint::Tcp { .. } => None,
        };
        if let Some(i) = pool.iter().position(|(_, k)| *k == key) {
            let (fd, _) = pool.swap_remove(i);
            opened.listeners.push(Listener {
                fd: Arc::new(fd),
                file: file_of(listen),
                key,
                inherited: true,
            });
            continue;
        }
        let (fd, file) = match listen.absolute(cwd) {
            Endpoint::Unix(path) => {
                let fd = bind_unix(&path).map_err(error)?;
                (fd, SocketFile::at(&path))
            }
            tcp @ Endpoint::Tcp { .. } => (bind_tcp(&tcp).map_err(error)?, None),
        };
        sys::listen_max(fd.as_raw_fd()).map_err(|e| error(e.to_string()))?;
        opened.listeners.push(Listener {
            fd: Arc::new(fd),
            key,
            file,
            inherited: false,
        });
    }
    for (_, key) in pool {
        if let Ok(Endpoint::Unix(path)) = Endpoint::parse(&key, true)
            && let Some(file) = SocketFile::at(&path)
        {
            opened.dropped.push(file);
        }
    }
    Ok(opened)
}

fn bind_tcp(listen: &Endpoint) -> Result<OwnedFd, String> {
    let addrs = listen.resolve(true)?;
    let mut last = None;
    for addr in &addrs {
        match sys::tcp_listener(addr) {
            Ok(fd) => return Ok(fd),
            // No IPv6 on this host: `:port` falls back to IPv4.
            Err(e)
                if addr.ip().is_unspecified()
                    && matches!(
                        e.raw_os_error(),
                        Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL)
                    ) =>
            {
                last = Some(e)
            }
            Err(e) => return Err(why(&e, Some(addr.port()))),
        }
    }
    Err(last.map_or_else(|| "no address to bind".to_owned(), |e| why(&e, None)))
}

fn bind_unix(path: &Path) -> Result<OwnedFd, String> {
    match UnixListener::bind(path) {
        Ok(l) => return Ok(l.into()),
        Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => {}
        Err(e) => return Err(why(&e, None)),
    }
    // Something is at the path. Only a socket nobody listens on may be replaced.
    let meta = std::fs::symlink_metadata(path).map_err(|e| why(&e, None))?;
    if !meta.file_type().is_socket() {
        return Err("the path exists and is not a socket".to_owned());
    }
    match UnixStream::connect(path) {
        Ok(_) => return Err("another process listens on this socket".to_owned()),
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {}
        Err(e) => {
            return Err(format!(
                "cannot tell whether the existing socket is in use: {e}"
            ));
        }
    }
    std::fs::remove_file(path).map_err(|e| format!("cannot remove the stale socket: {e}"))?;
    UnixListener::bind(path)
        .map(OwnedFd::from)
        .map_err(|e| why(&e, None))
}

/// A bind error in words an operator acts on.
fn why(e: &io::Error, port: Option<u16>) -> String {
    match e.raw_os_error() {
        Some(libc::EADDRINUSE) => {
            "address already in use (another process listens on it)".to_owned()
        }
        Some(libc::EACCES) if port.is_some_and(|p| p < 1024) => {
            "permission denied (a port below 1024 needs root or CAP_NET_BIND_SERVICE)".to_owned()
        }
        Some(libc::EACCES) => "permission denied".to_owned(),
        Some(libc::EADDRNOTAVAIL) => "no local interface has this address".to_owned(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("psflip-listen-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn proxy(listen: &str) -> ProxyConfig {
        ProxyConfig {
            listen: Endpoint::parse(listen, true).unwrap(),
            forward: Endpoint::parse("127.0.0.1:1", false).unwrap(),
        }
    }

    #[test]
    fn stale_socket_is_replaced_live_one_refused() {
        let dir = tmp("stale");
        let path = dir.join("s.sock");
        let stale = UnixListener::bind(&path).unwrap();
        drop(stale);
        let cfg = [proxy(&format!("unix://{}", path.display()))];
        let opened = open(&cfg, Inherited::default(), &dir).unwrap();
        assert!(opened.listeners[0].file.is_some());

        let e = open(&cfg, Inherited::default(), &dir).unwrap_err();
        assert!(e.to_string().contains("another process listens"), "{e}");
        drop(opened);

        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "x").unwrap();
        let e = open(&cfg, Inherited::default(), &dir).unwrap_err();
        assert!(e.to_string().contains("not a socket"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn socket_file_removed_only_if_still_ours() {
        let dir = tmp("ours");
        let path = dir.join("s.sock");
        let cfg = [proxy(&format!("unix://{}", path.display()))];
        let opened = open(&cfg, Inherited::default(), &dir).unwrap();
        let file = opened.listeners[0].file.clone().unwrap();
        std::fs::remove_file(&path).unwrap();
        let _other = UnixListener::bind(&path).unwrap();
        assert!(!file.remove_if_ours().unwrap(), "someone else's socket now");
        assert!(path.exists());
        let mine = SocketFile::at(&path).unwrap();
        assert!(mine.remove_if_ours().unwrap());
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tcp_in_use_is_a_clear_error() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let e = open(
            &[proxy(&format!("127.0.0.1:{port}"))],
            Inherited::default(),
            Path::new("/"),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "proxy[0].listen: cannot listen on tcp://127.0.0.1:{port}: address already in use (another process listens on it)"
            )
        );
    }

    #[test]
    fn keys_make_relative_unix_paths_absolute() {
        let ep = Endpoint::parse("unix://a.sock", true).unwrap();
        assert_eq!(key(&ep, Path::new("/srv")), "unix:///srv/a.sock");
        let ep = Endpoint::parse(":80", true).unwrap();
        assert_eq!(key(&ep, Path::new("/srv")), "tcp://:80");
    }
}
