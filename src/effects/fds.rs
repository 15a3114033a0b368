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
