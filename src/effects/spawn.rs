//! Starting processes.
//!
//! An app child (the configured `cmd`, or a healthcheck command) gets: psflip's
//! environment plus `env`, minus psflip's internal variables and its
//! `NOTIFY_SOCKET`; its stdio; `workdir`; its own process group; an empty signal
//! mask and default dispositions (psflip blocks everything, and a blocked mask
//! survives exec); `PR_SET_PDEATHSIG(SIGKILL)`, so it dies with psflip even if
//! psflip is SIGKILLed. Spawns run on the one event-loop thread, which lives as long
//! as psflip: PDEATHSIG fires when the forking *thread* exits.
//!
//! The successor is psflip's own binary, found on disk by the path psflip was
//! started from: it keeps the blocked mask (a signal that arrives before its
//! signalfd exists waits), it keeps our process group, it gets no PDEATHSIG (it must
//! outlive us), and it inherits the readiness pipe and the proxy listeners (their
//! FD_CLOEXEC is cleared in the forked successor only), nothing else.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::unistd::{Pid, getpid};

use super::{EffectError, fds, listen, readiness, signals};

/// Environment variables psflip uses between generations; never passed to an app.
pub const INTERNAL_ENV: &[&str] = &[
    readiness::ENV_FD,
    "PSFLIP_GENERATION",
    "PSFLIP_UPGRADE_TIMEOUT_MS",
    listen::ENV,
];

/// What an app child or probe is started with.
pub struct AppSpec<'a> {
    pub argv: &'a [String],
    pub env: &'a [(String, String)],
    pub workdir: Option<&'a Path>,
    /// Probes run with stdin and stdout on /dev/null; the app keeps psflip's stdio.
    pub quiet_stdio: bool,
}

/// Start an app child or a probe; returns its pid.
pub fn app(spec: &AppSpec<'_>) -> Result<Pid, EffectError> {
    let (prog, args) = spec
        .argv
        .split_first()
        .ok_or_else(|| EffectError::io("empty command", std::io::ErrorKind::InvalidInput.into()))?;
    let mut cmd = Command::new(prog);
    cmd.args(args);
    for key in INTERNAL_ENV {
        cmd.env_remove(key);
    }
    cmd.env_remove("NOTIFY_SOCKET");
    cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));
    if let Some(dir) = spec.workdir {
        // Checked here so the error names the directory, not the program (exec's
        // chdir failure reads as "cannot run PROG: No such file or directory").
        if let Err(e) = std::fs::read_dir(dir) {
            return Err(EffectError::io(format!("workdir {}", dir.display()), e));
        }
        cmd.current_dir(dir);
    }
    if spec.quiet_stdio {
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
    }
    cmd.process_group(0);
    let parent = getpid().as_raw();
    // SAFETY: the closure only makes async-signal-safe calls (sigaction,
    // sigprocmask, prctl, getppid, _exit) and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            signals::reset_in_child();
            fds::restore_nofile_limit_in_child();
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            );
            // psflip may have died between fork and prctl: then nobody would kill us.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| EffectError::io(format!("cannot run {prog:?}"), e))?;
    Ok(Pid::from_raw(child.id() as i32))
}

/// Start the successor: `exe` with `args`, the readiness pipe's write end, the
/// extra environment `env`, and the fds `inherit` (the proxy listeners, at the same
/// numbers).
pub fn successor(
    exe: &Path,
    arg0: &OsString,
    args: &[OsString],
    ready: &OwnedFd,
    env: &[(&str, String)],
    inherit: &[std::os::fd::RawFd],
) -> Result<Pid, EffectError> {
    let inherit = inherit.to_vec();
    let mut cmd = Command::new(exe);
    cmd.arg0(arg0).args(args);
    let fd = ready.as_raw_fd();
    cmd.env(readiness::ENV_FD, fd.to_string());
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    // SAFETY: fcntl and setrlimit are async-signal-safe; nothing allocates.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in std::iter::once(&fd).chain(&inherit) {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            fds::restore_nofile_limit_in_child();
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| EffectError::io(format!("cannot run {}", exe.display()), e))?;
    Ok(Pid::from_raw(child.id() as i32))
}

/// The path to exec for the successor, resolved once at start-up: `argv[0]` made
/// absolute (searching `PATH` when it has no slash) without resolving symlinks, so
/// that a binary replaced by rename, or a symlink switched to a new release, is what
/// the next generation runs. Falls back to `/proc/self/exe`.
pub fn own_binary(arg0: &OsString) -> PathBuf {
    let given = Path::new(arg0);
    let resolved = if given.components().count() > 1 || arg0.to_string_lossy().contains('/') {
        std::env::current_dir().ok().map(|cwd| cwd.join(given))
    } else {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(given))
                .find(|p| is_executable(p))
                .map(|p| {
                    if p.is_absolute() {
                        p
                    } else {
                        std::env::current_dir().map(|c| c.join(&p)).unwrap_or(p)
                    }
                })
        })
    };
    resolved
        .filter(|p| is_executable(p))
        .or_else(|| std::env::current_exe().ok())
        .unwrap_or_else(|| PathBuf::from(arg0))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
