//! File-descriptor hygiene: a child gets stdin, stdout and stderr, and nothing else
//! psflip happened to inherit or open.

use std::os::fd::RawFd;

/// Mark every fd from 3 up close-on-exec, so that nothing psflip inherited (from a
/// shell, a service manager, its predecessor) reaches a child by accident. Fds that
/// must cross an exec have the flag cleared right before it, in the forked child.
pub fn cloexec_from_3() {
    // close_range(2) with CLOSE_RANGE_CLOEXEC: Linux 5.11+. Fall back to /proc.
    // SAFETY: a plain syscall with integer arguments.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
        )
    };
    if rc == 0 {
        return;
    }
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<RawFd> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd >= 3)
        .collect();
    for fd in fds {
        set_cloexec(fd);
    }
}

/// Set FD_CLOEXEC on one fd; a closed fd is ignored.
pub fn set_cloexec(fd: RawFd) {
    // SAFETY: fcntl on an integer fd; an invalid fd only yields EBADF.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
        }
    }
}

/// Whether `fd` is open.
pub fn is_open(fd: RawFd) -> bool {
    // SAFETY: as above.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// The soft `RLIMIT_NOFILE` psflip started with, once [`raise_nofile_limit`] raised
/// it (0: not raised). Children get it back, as Go's `os/exec` does.
static ORIGINAL_NOFILE: [std::sync::atomic::AtomicU64; 2] = [
    std::sync::atomic::AtomicU64::new(0),
    std::sync::atomic::AtomicU64::new(0),
];

/// Raise the soft limit on open files to the hard limit: each proxied connection
/// holds two sockets (and two pipes while data is in flight), and 1024 is the usual
/// default. Children started afterwards get the original limit back
/// ([`restore_nofile_limit_in_child`]).
pub fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is valid for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0
        || lim.rlim_cur >= lim.rlim_max
    {
        return;
    }
    let original = lim;
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0 {
        use std::sync::atomic::Ordering::SeqCst;
        ORIGINAL_NOFILE[1].store(original.rlim_max, SeqCst);
        ORIGINAL_NOFILE[0].store(original.rlim_cur.max(1), SeqCst);
    }
}

/// In a forked child, before exec: put back the limit [`raise_nofile_limit`]
/// raised. Async-signal-safe (atomic loads and one syscall).
pub fn restore_nofile_limit_in_child() {
    use std::sync::atomic::Ordering::SeqCst;
    let cur = ORIGINAL_NOFILE[0].load(SeqCst);
    if cur == 0 {
        return;
    }
    let lim = libc::rlimit {
        rlim_cur: cur,
        rlim_max: ORIGINAL_NOFILE[1].load(SeqCst),
    };
    // SAFETY: plain syscall with a valid pointer.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
}
