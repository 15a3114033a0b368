//! The standby successor (`[upgrade] standby = true`): psflip's own binary,
//! started ahead of time and waiting, so that an upgrade does not wait for an
//! exec and a dynamic loader.
//!
//! Once a serving generation has been quiet for a while, the runtime starts its
//! own binary as it would start a successor (same path, arguments, environment,
//! readiness pipe and inherited listeners), plus the read end of a "go" pipe
//! (`PSFLIP_STANDBY_FD`) and the path it was started from
//! (`PSFLIP_STANDBY_EXE`). Before reading any configuration, the standby gives
//! back the pages its start-up mapped and blocks reading that pipe.
//!
//! When the machine asks for a successor, the runtime writes the handoff (the
//! variables a cold successor would find in its environment, `NAME=VALUE\0` each,
//! then one more `\0`) and closes its end. The standby sets them and goes on as a
//! successor started cold would: it reads the configuration *then*, so a change
//! made since it started is what the new generation runs. If psflip's binary on
//! disk is no longer the one the standby runs (replaced by rename, or its inode
//! changed), the standby execs the file on disk instead, with the same
//! arguments, environment and fds: the new generation always runs the binary
//! the path names at the upgrade, as a cold successor would.
//!
//! A standby that reads end-of-file without a whole handoff exits 0 at once:
//! the old generation is gone (even SIGKILLed: the kernel closes its end) or
//! has let it go. It keeps every signal blocked while it waits, so a signal
//! meant for the service (a terminal's SIGINT, systemd's SIGTERM to the whole
//! control group) never kills it on its own: the generation that started it
//! decides, and kills and reaps it before it exits.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, pipe2};

use super::{EffectError, reap, resident, spawn};

/// The standby's end of the go pipe, as its fd number.
pub const FD: &str = "PSFLIP_STANDBY_FD";
/// The path the standby was started from: the binary an upgrade must run.
pub const EXE: &str = "PSFLIP_STANDBY_EXE";

/// The old generation's hold on its standby.
#[derive(Debug)]
pub struct Standby {
    pub pid: Pid,
    /// Our end of the go pipe: closing it without a handoff lets the standby go.
    go: OwnedFd,
    /// The readiness pipe's read end.
    ready: OwnedFd,
    /// The readiness pipe's write end, as the standby's fd number.
    ready_fd: RawFd,
}

/// Start a standby: `exe` with `arg0` and `args`, as a successor, inheriting the
/// listeners `inherit` at their numbers. `ready` is the readiness pipe it will
/// use once woken (read end, write end).
pub fn start(
    exe: &Path,
    arg0: &OsString,
    args: &[OsString],
    ready: (OwnedFd, OwnedFd),
    inherit: &[RawFd],
) -> Result<Standby, EffectError> {
    let (go_r, go_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| EffectError::sys("pipe2", e))?;
    // Our end never blocks (a standby that stopped reading must not stop
    // psflip); room for any handoff (10 upgrades of history) where the
    // kernel allows it, 64 KiB where it does not.
    // SAFETY: fcntl on an fd we own.
    unsafe {
        libc::fcntl(go_w.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK);
        libc::fcntl(go_w.as_raw_fd(), libc::F_SETPIPE_SZ, 256 * 1024);
    }
    let (ready_r, ready_w) = ready;
    let mut keep = inherit.to_vec();
    keep.push(go_r.as_raw_fd());
    let exe_text = exe.to_str().ok_or_else(|| {
        EffectError::io(format!("{exe:?}"), std::io::ErrorKind::InvalidData.into())
    })?;
    let env = [
        (FD, go_r.as_raw_fd().to_string()),
        (EXE, exe_text.to_owned()),
    ];
    let pid = spawn::successor(exe, arg0, args, &ready_w, &env, &keep)?;
    Ok(Standby {
        pid,
        go: go_w,
        ready: ready_r,
        ready_fd: ready_w.as_raw_fd(),
    })
}

impl Standby {
    /// The fd number the standby has the readiness pipe's write end at: the
    /// handoff names it.
    pub fn ready_fd(&self) -> RawFd {
        self.ready_fd
    }

    /// Hand it `env` (the handoff's variables) and let it go on as the successor;
    /// returns its pid and the readiness pipe's read end. Fails (and gives the
    /// standby back, to be let go) if it is gone already, or if the handoff
    /// does not fit in the pipe at once (it never blocks).
    pub fn wake(self, env: &[(&str, String)]) -> Result<(Pid, OwnedFd), (Standby, std::io::Error)> {
        let mut message = Vec::new();
        for (key, value) in env {
            message.extend_from_slice(key.as_bytes());
            message.push(b'=');
            message.extend_from_slice(value.as_bytes());
            message.push(0);
        }
        message.push(0);
        // A standby gone makes it EPIPE (the SIGPIPE that comes with it is
        // blocked, read from the signalfd and ignored, like any raised by
        // psflip's own writes); a full pipe EAGAIN. A partial write is no
        // handoff: the standby, lacking the final empty entry, exits.
        let written = loop {
            match nix::unistd::write(&self.go, &message) {
                Ok(n) if n == message.len() => break Ok(()),
                Ok(_) => break Err(nix::errno::Errno::EAGAIN),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => break Err(e),
            }
        };
        match written {
            Ok(()) => Ok((self.pid, self.ready)),
            Err(e) => Err((self, std::io::Error::from(e))),
        }
    }

    /// Let it go: SIGKILL (it may be stopped, or past reading), our ends of
    /// its pipes closed; returns its pid, for whoever reaps it.
    pub fn let_go(self) -> Pid {
        let pid = self.pid;
        drop(self);
        let _ = kill(pid, Signal::SIGKILL);
        pid
    }

    /// Let it go and make sure it is gone: wait for it too (it is our child;
    /// nothing else reaps it once we have exited).
    pub fn dismiss(self) {
        reap::wait(self.let_go());
    }
}

/// What a process started as a standby does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Woken {
    /// Not a standby: go on.
    NotStandby,
    /// Woken, the handoff in the environment: go on as a successor.
    Go,
    /// Let go (end-of-file without a handoff): exit 0.
    LetGo,
    /// Woken, but the binary on disk changed and exec'ing it failed: go on as a
    /// successor only to say why, then exit.
    ExecFailed(String),
}

/// At the top of `main`, with every signal blocked and before anything else:
/// if this process is a standby, wait to be woken (see the module's doc).
pub fn wait_if_standby() -> Woken {
    let Some(fd) = std::env::var(FD).ok().and_then(|v| v.parse::<RawFd>().ok()) else {
        return Woken::NotStandby;
    };
    let exe = std::env::var_os(EXE).map(PathBuf::from);
    // SAFETY: at the top of main, before any thread exists.
    unsafe {
        std::env::remove_var(FD);
        std::env::remove_var(EXE);
    }
    if fd < 3 || !super::fds::is_open(fd) {
        return Woken::LetGo;
    }
    // SAFETY: the go pipe's read end, handed to us at this number and owned by
    // nothing else in this process.
    let mut go = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let running = std::fs::metadata("/proc/self/exe").ok();
    set_name(b"psflip-standby\0");
    // Waiting costs only the pages the wait runs: the start-up's are given
    // back right before the first read, with no code in between.
    let mut message = Vec::with_capacity(64 * 1024);
    let ranges = resident::text_ranges();
    let first = release_then_read(&ranges, go.as_raw_fd(), message.spare_capacity_mut());
    match usize::try_from(first) {
        // SAFETY: the kernel wrote `n` bytes into the spare capacity.
        Ok(n) => unsafe { message.set_len(n) },
        Err(_) => return Woken::LetGo,
    }
    // Whole at once (it ends with the empty entry), or read on to the end.
    if first > 0 && !message.ends_with(b"\0\0") && go.read_to_end(&mut message).is_err() {
        return Woken::LetGo;
    }
    drop(go);
    let Some(vars) = parse(&message) else {
        return Woken::LetGo;
    };
    discard_stale_signals();
    set_name(b"psflip\0");
    for (key, value) in vars {
        // SAFETY: still one thread.
        unsafe { std::env::set_var(key, value) };
    }
    match exe {
        Some(exe) if !same_binary(&exe, running.as_ref()) => reexec(&exe),
        _ => Woken::Go,
    }
}

/// Release `ranges` ([`resident::release`]), then block in one read of `fd`
/// into `buf`: the wait maps back only this function's page and libc's
/// `syscall`. Returns what read returned (retried on EINTR).
#[inline(never)]
fn release_then_read(
    ranges: &[(usize, usize)],
    fd: RawFd,
    buf: &mut [std::mem::MaybeUninit<u8>],
) -> libc::c_long {
    resident::release(ranges);
    loop {
        // SAFETY: a read into memory we own, of at most its length.
        let n = unsafe { libc::syscall(libc::SYS_read, fd, buf.as_mut_ptr(), buf.len()) };
        if n >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return n;
        }
    }
}

/// Once woken: discard the signals that reached the standby while it waited
/// (blocked, so pending). They were sent to psflip's process group (a
/// terminal's SIGHUP, SIGWINCH or SIGTSTP, `kill -- -PGID`) and are the old
/// generation's business, which got them too; a successor started cold at the
/// upgrade never sees them, and the new generation would otherwise act on them
/// (pass them on to its new child right after starting it). The generation
/// that woke us may already have signalled us as its successor (an upgrade
/// aborted at once): those signals are queued again with their sender.
fn discard_stale_signals() {
    let parent = nix::unistd::getppid().as_raw();
    let all = nix::sys::signal::SigSet::all();
    let now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let mut keep = Vec::new();
    loop {
        // SAFETY: a zeroed siginfo_t is a valid out-parameter.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: every signal is blocked (main's first act); a zero timeout
        // only takes what is pending.
        let sig = unsafe { libc::sigtimedwait(all.as_ref(), &mut info, &now) };
        if sig <= 0 {
            break;
        }
        // SAFETY: filled in by sigtimedwait for this signal.
        if unsafe { info.si_pid() } == parent {
            keep.push((sig, info));
        }
    }
    for (sig, mut info) in keep {
        // SAFETY: queueing a signal to ourselves with the siginfo the kernel
        // gave us for it (allowed for any si_code when the target is us).
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigqueueinfo,
                libc::getpid(),
                sig,
                &raw mut info,
            )
        };
    }
}

/// The handoff's variables, if the message is whole (ends with an empty entry).
fn parse(message: &[u8]) -> Option<Vec<(&OsStr, &OsStr)>> {
    let body = message.strip_suffix(b"\0\0")?;
    body.split(|&b| b == 0)
        .map(|entry| {
            let eq = entry.iter().position(|&b| b == b'=')?;
            (eq > 0).then(|| {
                (
                    OsStr::from_bytes(&entry[..eq]),
                    OsStr::from_bytes(&entry[eq + 1..]),
                )
            })
        })
        .collect()
}

/// Whether the file at `exe` is the binary this process runs, unchanged since
/// the standby started (`running`: `/proc/self/exe` then).
fn same_binary(exe: &Path, running: Option<&std::fs::Metadata>) -> bool {
    let (Ok(now), Ok(on_disk), Some(then)) = (
        std::fs::metadata("/proc/self/exe"),
        std::fs::metadata(exe),
        running,
    ) else {
        return false;
    };
    let key = |m: &std::fs::Metadata| (m.dev(), m.ino(), m.size(), m.ctime(), m.ctime_nsec());
    key(&now) == key(then) && (on_disk.dev(), on_disk.ino()) == (now.dev(), now.ino())
}

/// Exec `exe` with our arguments and (handoff-bearing) environment; the fds it
/// needs have no close-on-exec flag yet.
fn reexec(exe: &Path) -> Woken {
    use std::ffi::CString;
    let to_c = |b: Vec<u8>| CString::new(b).ok();
    let path = to_c(exe.as_os_str().as_bytes().to_vec());
    let argv: Option<Vec<CString>> = crate::sys::args_os()
        .iter()
        .map(|a| to_c(a.as_bytes().to_vec()))
        .collect();
    let envp: Option<Vec<CString>> = std::env::vars_os()
        .map(|(k, v)| {
            let mut kv = k.into_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            to_c(kv)
        })
        .collect();
    let (Some(path), Some(argv), Some(envp)) = (path, argv, envp) else {
        return Woken::ExecFailed(format!(
            "cannot run {}: a NUL byte in its arguments",
            exe.display()
        ));
    };
    let ptrs = |v: &[CString]| {
        v.iter()
            .map(|c| c.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect::<Vec<_>>()
    };
    let (argv_p, envp_p) = (ptrs(&argv), ptrs(&envp));
    // SAFETY: NUL-terminated strings and NULL-terminated arrays that outlive the call.
    unsafe { libc::execve(path.as_ptr(), argv_p.as_ptr(), envp_p.as_ptr()) };
    Woken::ExecFailed(format!(
        "cannot run {}: {}",
        exe.display(),
        std::io::Error::last_os_error()
    ))
}

/// The process's name (`ps -o comm`, `top`): a standby says so while it waits.
fn set_name(name: &[u8]) {
    // SAFETY: a NUL-terminated name of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_handoff_parses_and_a_cut_one_does_not() {
        let whole = b"PSFLIP_READY_FD=5\0PSFLIP_UPGRADE_HISTORY={\"a\":\"b=c\"}\0\0";
        let vars = parse(whole).expect("whole");
        assert_eq!(
            vars,
            vec![
                (OsStr::new("PSFLIP_READY_FD"), OsStr::new("5")),
                (
                    OsStr::new("PSFLIP_UPGRADE_HISTORY"),
                    OsStr::new("{\"a\":\"b=c\"}")
                ),
            ]
        );
        for cut in 0..whole.len() {
            assert_eq!(parse(&whole[..cut]), None, "cut at {cut}");
        }
        assert_eq!(parse(b"=x\0\0"), None);
    }
}
