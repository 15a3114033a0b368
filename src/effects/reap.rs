//! Reaping. SIGCHLD coalesces, so each wake-up drains every exited child. A child is
//! first *peeked* (`WNOWAIT`): its exit is reported while it is still a zombie, so
//! its pid and process group cannot be recycled before the machine's answer (a
//! SIGKILL to the group it led) is carried out; only then is it reaped.

use nix::sys::wait::waitpid;
use nix::unistd::Pid;

use crate::machine::ExitStatus;

/// The next exited child, not yet reaped.
pub fn peek() -> Option<(Pid, ExitStatus)> {
    loop {
        // libc rather than nix: nix's WaitStatus cannot hold a death by a real-time
        // signal, and such a child would never be reported nor reaped.
        // SAFETY: `info` is a valid, zeroed siginfo_t for the call.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
        // SAFETY: as above.
        let rc = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, flags) };
        if rc != 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return None; // ECHILD: no children at all
        }
        // SAFETY: waitid filled `info` for a CLD_* event (or left si_pid 0).
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if pid == 0 {
            return None; // WNOHANG: children, none exited
        }
        let status = match info.si_code {
            libc::CLD_EXITED => ExitStatus::Code(status),
            _ => ExitStatus::Signaled(status), // CLD_KILLED, CLD_DUMPED
        };
        return Some((Pid::from_raw(pid), status));
    }
}

/// Wait for our child `pid` to exit and reap it, blocking (for a child that
/// is ending now: one that failed before its exec, or was SIGKILLed); nothing
/// if it was reaped already.
pub fn wait(pid: Pid) {
    loop {
        match waitpid(pid, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            _ => return,
        }
    }
}

/// Reap `pid`, which `peek` reported.
pub fn reap(pid: Pid) {
    loop {
        match waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
            Err(nix::errno::Errno::EINTR) => continue,
            _ => return,
        }
    }
}
