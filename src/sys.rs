//! The low-level module: thin wrappers over the raw Linux socket calls that nix
//! does not wrap the way psflip needs them (epoll, splice, accept4, non-blocking
//! connect, socket options), used by the listeners (`effects::listen`) and the
//! proxy's data path. Every fd made here is close-on-exec from birth, so a child
//! spawned by the main thread at any moment inherits none of them.
//!
//! A leaf: imports nothing else from the crate.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A fresh fd from a call that returns one (or -1).
fn owned(rc: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: a non-negative return is a new fd that nothing else owns.
    cvt(rc).map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn epoll() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall.
    owned(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })
}

pub fn epoll_ctl(
    ep: &OwnedFd,
    op: libc::c_int,
    fd: RawFd,
    events: u32,
    token: u64,
) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: `ev` outlives the call.
    cvt(unsafe { libc::epoll_ctl(ep.as_raw_fd(), op, fd, &mut ev) }).map(drop)
}

/// Waits for events; EINTR counts as none.
pub fn epoll_wait(
    ep: &OwnedFd,
    events: &mut [libc::epoll_event],
    timeout_ms: i32,
) -> io::Result<usize> {
    // SAFETY: the buffer is valid for `len` entries.
    let rc = unsafe {
        libc::epoll_wait(
            ep.as_raw_fd(),
            events.as_mut_ptr(),
            events.len() as libc::c_int,
            timeout_ms,
        )
    };
    match cvt(rc) {
        Ok(n) => Ok(n as usize),
        Err(e) if e.raw_os_error() == Some(libc::EINTR) => Ok(0),
        Err(e) => Err(e),
    }
}

/// A non-blocking, close-on-exec pipe: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for two fds.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) })?;
    // SAFETY: both are new fds nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Moves up to `len` bytes between a socket and a pipe without copying them through
/// user space. `Ok(0)` from a socket is end of stream.
pub fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    loop {
        // SAFETY: plain syscall on fds we own; null offsets (neither is seekable).
        let rc = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        if rc >= 0 {
            return Ok(rc as usize);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// Reads and drops what `fd` holds (into `scratch`); `Ok(0)` is end of stream.
pub fn read(fd: RawFd, scratch: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the buffer is valid for its length.
    let rc = unsafe { libc::read(fd, scratch.as_mut_ptr().cast(), scratch.len()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

/// Receives from a socket without blocking: recv(2) goes straight to the socket
/// layer, where read(2) first goes through the VFS (~2 % of a proxied request's
/// CPU time on loopback).
pub fn recv(fd: RawFd, scratch: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the buffer is valid for its length.
    let rc = unsafe {
        libc::recv(
            fd,
            scratch.as_mut_ptr().cast(),
            scratch.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

/// Sends on a socket without blocking and without SIGPIPE; `more`: the caller
/// shuts down or closes the socket right after (MSG_MORE: TCP holds the bytes
/// back so that the FIN leaves with them, in one segment).
pub fn send(fd: RawFd, bytes: &[u8], more: bool) -> io::Result<usize> {
    let flags = libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT | if more { libc::MSG_MORE } else { 0 };
    // SAFETY: the buffer is valid for its length.
    let rc = unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), flags) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

pub fn write(fd: RawFd, bytes: &[u8]) -> io::Result<usize> {
    // SAFETY: the buffer is valid for its length.
    let rc = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

/// Accepts one connection, non-blocking and close-on-exec.
pub fn accept(listener: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: null address pointers are allowed.
    owned(unsafe {
        libc::accept4(
            listener,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    })
}

/// A socket address ready for `connect(2)`.
#[derive(Clone)]
pub struct SockAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl SockAddr {
    pub fn inet(addr: &SocketAddr) -> SockAddr {
        // SAFETY: all-zero is a valid sockaddr_storage.
        let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
        let len = match addr {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
                unsafe {
                    std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin)
                };
                size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                // SAFETY: as above, for sockaddr_in6.
                unsafe {
                    std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6)
                };
                size_of::<libc::sockaddr_in6>()
            }
        };
        SockAddr {
            storage,
            len: len as libc::socklen_t,
        }
    }

    /// `path` must fit `sun_path` (the configuration checks it).
    pub fn unix(path: &Path) -> SockAddr {
        // SAFETY: all-zero is a valid sockaddr_storage, and sockaddr_un.
        let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
        let mut sun: libc::sockaddr_un = unsafe { zeroed() };
        sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let bytes = path.as_os_str().as_bytes();
        let n = bytes.len().min(sun.sun_path.len() - 1);
        for (dst, src) in sun.sun_path.iter_mut().zip(&bytes[..n]) {
            *dst = *src as libc::c_char;
        }
        // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_un.
        unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sun) };
        let base = size_of::<libc::sa_family_t>();
        SockAddr {
            storage,
            len: (base + n + 1) as libc::socklen_t,
        }
    }

    pub fn family(&self) -> libc::c_int {
        libc::c_int::from(self.storage.ss_family)
    }
}

/// A non-blocking, close-on-exec stream socket for `addr`'s family.
pub fn stream_socket(addr: &SockAddr) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall.
    owned(unsafe {
        libc::socket(
            addr.family(),
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })
}

/// Starts connecting; `Err` carries the raw errno (EINPROGRESS: wait for writable).
pub fn connect(fd: &OwnedFd, addr: &SockAddr) -> Result<(), i32> {
    loop {
        // SAFETY: the address is valid for `len` bytes.
        let rc = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&addr.storage as *const libc::sockaddr_storage).cast(),
                addr.len,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let errno = io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        if errno != libc::EINTR {
            return Err(errno);
        }
    }
}

fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` is valid for its size.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// An `int` socket option of `fd` at `SOL_SOCKET`.
fn socket_option(fd: RawFd, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` is valid for `len` bytes.
    cvt(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    })
    .map(|_| value)
}

/// The time slice the proxy thread asks for while it must be prompt: the
/// shortest the kernel takes.
pub const SHORT_SLICE_NS: u64 = 100_000;

/// The scheduling attributes of thread `tid` (0: the calling thread), or None
/// where the kernel has no `sched_getattr` (before 3.14).
fn sched_attr(tid: libc::pid_t) -> Option<libc::sched_attr> {
    // SAFETY: sched_attr is plain data; all-zero is a valid value.
    let mut attr: libc::sched_attr = unsafe { zeroed() };
    let size = size_of::<libc::sched_attr>() as libc::c_uint;
    // SAFETY: `attr` is valid for `size` bytes.
    let r = unsafe { libc::syscall(libc::SYS_sched_getattr, tid, &raw mut attr, size, 0) };
    (r == 0).then_some(attr)
}

/// Whether `attr` is of a fair-class policy (`SCHED_OTHER`, `SCHED_BATCH`):
/// the only ones with a time slice to ask for.
fn fair(attr: &libc::sched_attr) -> bool {
    matches!(
        attr.sched_policy as libc::c_int,
        libc::SCHED_OTHER | libc::SCHED_BATCH
    )
}

/// The time slice of the calling thread, in ns, as the kernel reports it
/// (`sched_getattr`'s `sched_runtime`); None for a policy other than
/// `SCHED_OTHER` or `SCHED_BATCH`, or a kernel that reports no slice.
pub fn own_slice() -> Option<u64> {
    let attr = sched_attr(0)?;
    (fair(&attr) && attr.sched_runtime > 0).then_some(attr.sched_runtime)
}

/// Give thread `tid` (0: the calling thread) of this process a time slice of
/// `ns` (`sched_setattr`'s `sched_runtime`: Linux's EEVDF scheduler, 6.12 and
/// later, takes it from any fair-class task without privilege, and a woken
/// task with a shorter slice preempts the one running; older kernels ignore
/// it). Only a thread of `SCHED_OTHER` or `SCHED_BATCH`; its policy and nice
/// value are kept. Where the kernel does not take it, nothing changes but
/// timing.
pub fn set_slice(tid: libc::pid_t, ns: u64) {
    /// `SCHED_FLAG_KEEP_POLICY` (linux/sched.h). Not `KEEP_PARAMS`: for a
    /// fair task that keeps the slice too; the nice value read is written back.
    const KEEP_POLICY: u64 = 0x08;
    let Some(mut attr) = sched_attr(tid) else {
        return;
    };
    if !fair(&attr) || attr.sched_runtime == ns {
        return;
    }
    attr.size = size_of::<libc::sched_attr>() as u32;
    attr.sched_flags = KEEP_POLICY;
    attr.sched_runtime = ns;
    // SAFETY: a valid sched_attr for a thread of this process.
    unsafe { libc::syscall(libc::SYS_sched_setattr, tid, &raw const attr, 0) };
}

/// The calling thread's kernel thread id.
pub fn gettid() -> libc::pid_t {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// What `fd` is ready for right now (`poll` with a zero timeout): `events`'
/// bits that are set, and POLLERR / POLLHUP; 0 if nothing (or poll failed).
/// The bits are those of epoll (POLLOUT == EPOLLOUT, …).
pub fn ready_now(fd: RawFd, events: libc::c_short) -> u32 {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd; a zero timeout never blocks.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    if n == 1 { p.revents as u16 as u32 } else { 0 }
}

/// The pending error of a socket (the outcome of a non-blocking connect), 0 if none.
pub fn take_error(fd: RawFd) -> i32 {
    socket_option(fd, libc::SO_ERROR).unwrap_or_else(|e| e.raw_os_error().unwrap_or(libc::EIO))
}

/// Whether `fd` is a listening socket.
pub fn is_listening(fd: RawFd) -> bool {
    socket_option(fd, libc::SO_ACCEPTCONN).is_ok_and(|on| on == 1)
}

/// Sends our FIN: the peer reads end of stream, and may still send to us.
pub fn shutdown_write(fd: RawFd) {
    // SAFETY: plain syscall; ENOTCONN (peer gone) is fine.
    unsafe { libc::shutdown(fd, libc::SHUT_WR) };
}

/// Forward segments as they come: the ends already chose how to batch them.
pub fn set_nodelay(fd: RawFd) {
    let _ = setsockopt(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_NODELAY,
        &(1 as libc::c_int),
    );
}

/// Make `close` send a reset, so a peer sees the reset we saw on the other side.
pub fn set_linger_zero(fd: RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ = setsockopt(fd, libc::SOL_SOCKET, libc::SO_LINGER, &linger);
}

/// Re-listen with the largest backlog the kernel allows (`net.core.somaxconn`).
pub fn listen_max(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain syscall; listen on a listening socket only updates the backlog.
    cvt(unsafe { libc::listen(fd, libc::SOMAXCONN) }).map(drop)
}

/// Whether `fd` is a TCP (rather than Unix) socket.
pub fn is_inet(fd: RawFd) -> bool {
    let mut domain: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `domain` is valid for `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_DOMAIN,
            (&mut domain as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    rc == 0 && (domain == libc::AF_INET || domain == libc::AF_INET6)
}

/// O_NONBLOCK on an fd (a status flag: shared with every process holding the same
/// open file, such as the other generation's copy of a listener).
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an integer fd.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) }).map(drop)
}

/// A listening TCP socket on `addr`: SO_REUSEADDR (a restart is not refused by
/// the last run's TIME_WAIT), dual-stack when `addr` is `[::]` whatever
/// `net.ipv6.bindv6only` says, close-on-exec, the largest backlog.
pub fn tcp_listener(addr: &SocketAddr) -> io::Result<OwnedFd> {
    let sa = SockAddr::inet(addr);
    let fd = stream_socket(&sa)?;
    setsockopt(
        fd.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_REUSEADDR,
        &(1 as libc::c_int),
    )?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            &(0 as libc::c_int),
        )?;
    }
    // SAFETY: the address is valid for `len` bytes.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa.storage as *const libc::sockaddr_storage).cast(),
            sa.len,
        )
    })?;
    listen_max(fd.as_raw_fd())?;
    Ok(fd)
}

/// The command line: what a C `main` recorded (`set_args`), or else std's.
static ARGS: std::sync::OnceLock<Vec<std::ffi::OsString>> = std::sync::OnceLock::new();

/// Record the command line handed to a C `main` (`#![no_main]`). std reads it by
/// itself only under glibc, which passes it to the initialisers; a static musl
/// build runs no such initialiser, and `std::env::args` is then empty there.
///
/// # Safety
/// `argv` holds `argc` valid NUL-terminated strings, as `main` is given.
pub unsafe fn set_args(argc: libc::c_int, argv: *const *const libc::c_char) {
    use std::os::unix::ffi::OsStrExt;
    let n = usize::try_from(argc).unwrap_or(0);
    let args = (0..n)
        .map(|i| {
            // SAFETY: the caller's contract: argv[0..argc] are valid C strings.
            let arg = unsafe { std::ffi::CStr::from_ptr(*argv.add(i)) };
            std::ffi::OsStr::from_bytes(arg.to_bytes()).to_owned()
        })
        .collect();
    let _ = ARGS.set(args);
}

/// This process's arguments, as `std::env::args_os` gives them, including under
/// a C `main` that called `set_args`.
pub fn args_os() -> &'static [std::ffi::OsString] {
    ARGS.get_or_init(|| std::env::args_os().collect())
}
