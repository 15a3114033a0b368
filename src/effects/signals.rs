//! Signals: psflip blocks every signal from its first instruction and reads them
//! from a signalfd in the event loop, so a signal that arrives before the loop runs
//! waits instead of killing psflip, and nothing runs in a signal handler.

use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use super::EffectError;

/// Every signal a process can catch.
pub fn catchable() -> impl Iterator<Item = Signal> {
    Signal::iterator().filter(|s| !matches!(s, Signal::SIGKILL | Signal::SIGSTOP))
}

/// Block every signal in the calling (main) thread: no default action can run,
/// and every signal waits for the signalfd. A blocked signal stays pending even
/// when its disposition is "ignore", so the dispositions can be reset later
/// ([`default_dispositions`], by a first generation; a successor inherits its
/// predecessor's, already default).
pub fn block_all() -> Result<(), EffectError> {
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), None)
        .map_err(|e| EffectError::sys("sigprocmask", e))?;
    Ok(())
}

/// The signalfd every blocked signal is read from.
pub struct Signals {
    fd: SignalFd,
}

impl Signals {
    pub fn new() -> Result<Signals, EffectError> {
        let fd = SignalFd::with_flags(
            &SigSet::all(),
            SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC,
        )
        .map_err(|e| EffectError::sys("signalfd", e))?;
        Ok(Signals { fd })
    }

    /// The next pending signal number and the pid and uid that sent it (0 when
    /// the kernel did), if any.
    pub fn read(&self) -> Option<(i32, u32, u32)> {
        match self.fd.read_signal() {
            Ok(Some(info)) => Some((info.ssi_signo as i32, info.ssi_pid, info.ssi_uid)),
            _ => None,
        }
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Give every signal its default disposition (the mask is left alone): one
/// psflip was started with ignored (SIGINT under `nohup` or `&`) would otherwise
/// be inherited by its child.
///
/// Every signal, real-time ones included, so that psflip's dispositions are all
/// SIG_DFL from here on (psflip never installs a handler nor ignores a signal):
/// a child then needs no reset of its own, since exec keeps only ignored
/// dispositions (see `effects::spawn`), and neither does a successor or a
/// standby psflip starts (62 system calls saved on each upgrade's way).
///
/// Real-time ones included: an ignored disposition survives exec, and psflip may
/// have been started with some ignored (glibc's `posix_spawn` leaves its internal
/// signals 32 and 33 ignored in the process it starts). glibc's `sigaction`
/// refuses to touch those two, so this uses the raw system call. No allocation,
/// no libc state.
pub fn default_dispositions() {
    // The kernel's `struct sigaction` all zero: SIG_DFL, no flags, empty mask
    // (larger than the kernel's struct on every architecture; it reads its size).
    let default_action = [0u64; 8];
    // The kernel's sigset size: _NSIG / 8.
    const KERNEL_SIGSET_SIZE: usize = if cfg!(any(target_arch = "mips", target_arch = "mips64")) {
        16
    } else {
        8
    };
    // SAFETY: rt_sigaction is async-signal-safe; no allocation.
    unsafe {
        for sig in 1..=libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig as libc::c_long,
                    default_action.as_ptr(),
                    std::ptr::null_mut::<u64>(),
                    KERNEL_SIGSET_SIZE,
                );
            }
        }
    }
}

/// Between clone and exec: the empty signal mask the child starts with.
pub fn unblock_all_in_child() {
    // SAFETY: sigemptyset/sigprocmask on a local set; async-signal-safe.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    }
}
