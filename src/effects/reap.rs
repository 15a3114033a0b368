//! Reaping. SIGCHLD coalesces, so each wake-up drains every exited child. A child is
//! first *peeked* (`WNOWAIT`): its exit is reported while it is still a zombie, so
//! its pid and process group cannot be recycled before the machine's answer (a
//! SIGKILL to the group it led) is carried out; only then is it reaped.

use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::Pid;

use crate::machine::ExitStatus;

/// The next exited child, not yet reaped.
pub fn peek() -> Option<(Pid, ExitStatus)> {
    loop {
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        match waitid(Id::All, flags) {
            Ok(WaitStatus::Exited(pid, code)) => return Some((pid, ExitStatus::Code(code))),
            Ok(WaitStatus::Signaled(pid, sig, _)) => {
                return Some((pid, ExitStatus::Signaled(sig as i32)));
            }
            Ok(WaitStatus::StillAlive) => return None,
            Ok(_) => return None,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return None, // ECHILD: no children at all
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
