//! `[healthcheck.notify]`: the notify socket psflip gives each new app child as
//! `NOTIFY_SOCKET` (the sd_notify protocol, as systemd's `Type=notify` speaks it).
//!
//! 1. Each child gets a socket of its own, bound before it is spawned
//!    ([`NotifySocket::bind`]), never psflip's own `NOTIFY_SOCKET`: a message from
//!    a child can only be about that child.
//! 2. `path` (the default): a socket file in a fresh directory only psflip's user
//!    may enter, with an unpredictable name; `abstract`: an abstract socket (for
//!    children in another mount namespace), which any local process could find in
//!    `/proc/net/unix`, so messages from users other than psflip's and root are
//!    dropped by their credentials (`SO_PASSCRED`).
//! 3. Any process holding the address may send (the child, or a helper such as
//!    `systemd-notify`). Every datagram is `KEY=VALUE` lines: `READY=1` and
//!    `STATUS=` are reported ([`Message`]); file descriptors sent along (as with
//!    `BARRIER=1`, whose sender waits for them to be closed) are closed at once.
//! 4. Reading never blocks: the event loop polls the socket and drains it.

use std::ffi::OsString;
use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};

use super::EffectError;

/// Where the notify socket lives (`[healthcheck.notify] socket`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Kind {
    /// A socket file in a private directory.
    #[default]
    Path,
    /// An abstract socket (`NOTIFY_SOCKET=@…`).
    Abstract,
}

/// What one datagram said, as far as psflip cares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    /// `READY=1`.
    pub ready: bool,
    /// The last `STATUS=` line.
    pub status: Option<String>,
}

/// A child's notify socket. Dropping it closes it and removes its file.
#[derive(Debug)]
pub struct NotifySocket {
    socket: UnixDatagram,
    /// The `NOTIFY_SOCKET` value for the child.
    env: OsString,
    /// The private directory of a path socket.
    dir: Option<PathBuf>,
    /// (Abstract) only root and this uid may speak.
    only_uid: Option<u32>,
}

/// The longest datagram read; systemd's own limit is far above any READY/STATUS.
const MAX_DATAGRAM: usize = 4096;

impl NotifySocket {
    /// A fresh socket for one child; `tag` goes into its name (the child's id).
    pub fn bind(kind: Kind, tag: &str) -> Result<NotifySocket, EffectError> {
        let name = format!(
            "psflip-notify-{}-{tag}-{:016x}",
            std::process::id(),
            random()
        );
        let err =
            |what: &str, e: std::io::Error| EffectError::io(format!("{what}: notify socket"), e);
        let (socket, env, dir, only_uid) = match kind {
            Kind::Path => {
                let dir = runtime_dir().join(&name);
                use std::os::unix::fs::DirBuilderExt;
                // Fails if it exists: nobody can have prepared it for us.
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&dir)
                    .map_err(|e| err(&format!("cannot create {}", dir.display()), e))?;
                let path = dir.join("notify");
                match UnixDatagram::bind(&path) {
                    Ok(s) => (s, path.into_os_string(), Some(dir), None),
                    Err(e) => {
                        let _ = std::fs::remove_dir(&dir);
                        return Err(err(&format!("cannot bind {}", path.display()), e));
                    }
                }
            }
            Kind::Abstract => {
                let addr = SocketAddr::from_abstract_name(name.as_bytes())
                    .map_err(|e| err("bad name", e))?;
                let socket = UnixDatagram::bind_addr(&addr)
                    .map_err(|e| err(&format!("cannot bind @{name}"), e))?;
                (
                    socket,
                    OsString::from(format!("@{name}")),
                    None,
                    Some(nix::unistd::geteuid().as_raw()),
                )
            }
        };
        let socket = NotifySocket {
            socket,
            env,
            dir,
            only_uid,
        };
        socket
            .socket
            .set_nonblocking(true)
            .map_err(|e| err("non-blocking", e))?;
        setsockopt(&socket.socket, sockopt::PassCred, &true)
            .map_err(|e| EffectError::sys("SO_PASSCRED: notify socket", e))?;
        Ok(socket)
    }

    /// The child's `NOTIFY_SOCKET`.
    pub fn env_value(&self) -> &OsString {
        &self.env
    }

    /// Every datagram waiting, in order (never blocks).
    pub fn receive(&self) -> Vec<Message> {
        let mut out = Vec::new();
        let mut buf = [0u8; MAX_DATAGRAM];
        loop {
            let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 16], libc::ucred);
            let mut iov = [IoSliceMut::new(&mut buf)];
            let (len, uid) = match recvmsg::<()>(
                self.socket.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(msg) => {
                    let mut uid = None;
                    if let Ok(cmsgs) = msg.cmsgs() {
                        for c in cmsgs {
                            match c {
                                ControlMessageOwned::ScmRights(fds) => {
                                    for fd in fds {
                                        // SAFETY: the kernel just gave us this fd;
                                        // closing it is how BARRIER=1 is answered.
                                        drop(unsafe { OwnedFd::from_raw_fd(fd) });
                                    }
                                }
                                ControlMessageOwned::ScmCredentials(cred) => uid = Some(cred.uid()),
                                _ => {}
                            }
                        }
                    }
                    (msg.bytes, uid)
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break, // EAGAIN: drained
            };
            if let Some(only) = self.only_uid
                && !uid.is_some_and(|u| u == 0 || u == only)
            {
                continue;
            }
            out.push(parse(&buf[..len]));
        }
        out
    }
}

impl AsFd for NotifySocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_file(dir.join("notify"));
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

/// The `KEY=VALUE` lines of one datagram.
pub fn parse(datagram: &[u8]) -> Message {
    let mut message = Message::default();
    for line in String::from_utf8_lossy(datagram).lines() {
        if line == "READY=1" {
            message.ready = true;
        } else if let Some(status) = line.strip_prefix("STATUS=") {
            message.status = Some(status.to_owned());
        }
    }
    message
}

/// `$RUNTIME_DIRECTORY` (systemd's `RuntimeDirectory=`), `$XDG_RUNTIME_DIR`, or
/// the temporary directory.
fn runtime_dir() -> PathBuf {
    ["RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR"]
        .iter()
        .filter_map(std::env::var_os)
        // RUNTIME_DIRECTORY may list several, colon-separated.
        .filter_map(|v| std::env::split_paths(&v).next())
        .find(|p| p.is_absolute() && p.is_dir())
        .unwrap_or_else(std::env::temp_dir)
}

/// 64 unpredictable bits (getrandom(2)); the time and pid if it fails.
fn random() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: writes at most 8 bytes into `bytes`.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), 8, 0) };
    if n == 8 {
        return u64::from_ne_bytes(bytes);
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ (u64::from(std::process::id()) << 32)
}

/// Whether `path` is a notify socket directory this module would make (for tests).
pub fn is_private_dir(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_dir() && m.permissions().mode() & 0o077 == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(socket: &NotifySocket, text: &str) {
        let client = UnixDatagram::unbound().unwrap();
        let env = socket.env_value().to_str().unwrap();
        let addr = match env.strip_prefix('@') {
            Some(name) => SocketAddr::from_abstract_name(name.as_bytes()).unwrap(),
            None => SocketAddr::from_pathname(env).unwrap(),
        };
        client.send_to_addr(text.as_bytes(), &addr).unwrap();
    }

    #[test]
    fn parses_ready_and_status() {
        assert_eq!(
            parse(b"STATUS=a\nREADY=1\nSTATUS=b"),
            Message {
                ready: true,
                status: Some("b".into())
            }
        );
        assert_eq!(parse(b"READY=0\nMAINPID=3\n"), Message::default());
    }

    #[test]
    fn both_kinds_receive_and_clean_up() {
        for kind in [Kind::Path, Kind::Abstract] {
            let socket = NotifySocket::bind(kind, "t").unwrap();
            assert!(socket.receive().is_empty());
            send(&socket, "STATUS=starting");
            send(&socket, "READY=1\n");
            let got = socket.receive();
            assert_eq!(got.len(), 2, "{kind:?}");
            assert_eq!(got[0].status.as_deref(), Some("starting"));
            assert!(got[1].ready);
            let dir = socket.dir.clone();
            if let Some(dir) = &dir {
                assert!(is_private_dir(dir));
            }
            drop(socket);
            if let Some(dir) = dir {
                assert!(!dir.exists());
            }
        }
    }
}
