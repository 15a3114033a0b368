//! Starting processes.
//!
//! An app child (the configured `cmd`, or a healthcheck command) gets: psflip's
//! environment plus `env`, minus psflip's internal variables and its
//! `NOTIFY_SOCKET`; its stdio; `workdir`; its own process group; an empty signal
//! mask and default dispositions (psflip blocks everything, and a blocked mask
//! survives exec); `PR_SET_PDEATHSIG(SIGKILL)`, so it dies with psflip even if
//! psflip is SIGKILLed; fds 0–2, plus the ones passed on purpose
//! ([`AppSpec::pass_fds`], at 3, 4, …). Spawns run on the one event-loop thread,
//! which lives as long as psflip: PDEATHSIG fires when the forking *thread* exits.
//!
//! The successor is psflip's own binary, found on disk by the path psflip was
//! started from: it keeps the blocked mask (a signal that arrives before its
//! signalfd exists waits), it keeps our process group, it gets no PDEATHSIG (it must
//! outlive us), and it inherits the readiness pipe and the proxy listeners (their
//! FD_CLOEXEC is cleared in the child only), nothing else.
//!
//! How: `clone(CLONE_VM | CLONE_VFORK)`, as glibc's `posix_spawn` does, rather than
//! `fork`: the child borrows psflip's memory until it execs, so no page table is
//! copied (a fork costs more the more psflip has mapped, e.g. with thousands of
//! proxied connections), and psflip's thread waits, suspended, until the child has
//! exec'd or failed to. Everything the child needs (paths, argv, envp, fds) is
//! prepared here first; the child only makes system calls, allocates nothing and
//! touches no lock, since other threads (the proxy's) keep running in the same
//! memory. It writes why it failed into the plan it was given, and psflip reads it
//! once it resumes. `posix_spawn` itself cannot set PDEATHSIG nor check `getppid`.
//! The child shares psflip's file table at first (`CLONE_FILES`) and takes a
//! copy of only the fds it needs, those below the highest it keeps
//! (`close_range(CLOSE_RANGE_UNSHARE)`), so that with thousands of proxied
//! connections open a spawn copies three fds, not twenty thousand.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::unistd::Pid;

use super::{EffectError, fds, signals};
use crate::handoff;

/// Environment variables psflip uses between generations (see
/// [`crate::handoff`]); never passed to an app.
pub const INTERNAL_ENV: &[&str] = &[
    handoff::READY_FD,
    handoff::GENERATION,
    handoff::UPGRADE_TIMEOUT_MS,
    handoff::PROXY_FDS,
    handoff::LISTEN_FDS,
    crate::trace::ENV,
    handoff::HISTORY,
    super::standby::FD,
    super::standby::EXE,
];

/// What an app child or probe is started with.
#[derive(Default)]
pub struct AppSpec<'a> {
    pub argv: &'a [String],
    /// Set on top of psflip's environment (a later entry wins).
    pub env: &'a [(String, String)],
    pub workdir: Option<&'a Path>,
    /// Probes run with stdin and stdout on /dev/null; the app keeps psflip's stdio.
    pub quiet_stdio: bool,
    /// Fds the child gets as 3, 4, … in this order (socket activation); every
    /// other fd above 2 is closed at exec.
    pub pass_fds: &'a [RawFd],
    /// Variables set to the child's own pid (e.g. `LISTEN_PID`), which only the
    /// child knows: it writes them itself, between clone and exec.
    pub pid_env: &'a [&'a str],
    /// (`[healthcheck.notify]`) the child's own `NOTIFY_SOCKET`.
    pub notify_socket: Option<&'a OsStr>,
}

/// Start an app child or a probe; returns its pid.
pub fn app(spec: &AppSpec<'_>) -> Result<Pid, EffectError> {
    let (prog, _) = spec
        .argv
        .split_first()
        .ok_or_else(|| EffectError::io("empty command", std::io::ErrorKind::InvalidInput.into()))?;
    let what = || format!("cannot run {prog:?}");
    let invalid = |e: Nul| EffectError::io(what(), e.into());
    let mut env = Env::inherited(|key| {
        !INTERNAL_ENV.iter().any(|k| OsStr::new(k) == key) && key != "NOTIFY_SOCKET"
    });
    for (k, v) in spec.env {
        env.set(OsStr::new(k), OsStr::new(v));
    }
    if let Some(socket) = spec.notify_socket {
        env.set(OsStr::new("NOTIFY_SOCKET"), socket);
    }
    let workdir = match spec.workdir {
        Some(dir) => {
            // Checked here so the error names the directory, not the program (the
            // child's chdir failure reads as "cannot run PROG: No such file…").
            if let Err(e) = std::fs::read_dir(dir) {
                return Err(EffectError::io(format!("workdir {}", dir.display()), e));
            }
            Some(CString::new(dir.as_os_str().as_bytes()).map_err(|_| invalid(Nul))?)
        }
        None => None,
    };
    let mut plan = Plan {
        paths: search_path(OsStr::new(prog), env.get(OsStr::new("PATH"))).map_err(invalid)?,
        argv: CStrings::new(spec.argv.iter().map(|a| a.as_bytes())).map_err(invalid)?,
        envp: env.into_cstrings(spec.pid_env).map_err(invalid)?,
        workdir,
        quiet_stdio: spec.quiet_stdio,
        pass_fds: spec.pass_fds.to_vec(),
        scratch: vec![-1; spec.pass_fds.len()],
        keep_fds: Vec::new(),
        copy_below: copy_below(spec.pass_fds),
        app: true,
        parent: std::process::id() as libc::pid_t,
        failed_at: None,
        errno: 0,
    };
    plan.run().map_err(|(stage, e)| match stage {
        Stage::Exec => EffectError::io(what(), e),
        stage => EffectError::io(format!("{}: {}", what(), stage.name()), e),
    })
}

/// Start the successor: `exe` with `args`, the readiness pipe's write end, the
/// extra environment `env` (the [`handoff::Handoff`], which names that write end),
/// and the fds `inherit` (the proxy listeners, at the same numbers).
pub fn successor(
    exe: &Path,
    arg0: &OsString,
    args: &[OsString],
    ready: &OwnedFd,
    env: &[(&str, String)],
    inherit: &[RawFd],
) -> Result<Pid, EffectError> {
    let what = || format!("cannot run {}", exe.display());
    let invalid = |e: Nul| EffectError::io(what(), e.into());
    let fd = ready.as_raw_fd();
    let mut vars = Env::inherited(|_| true);
    for (k, v) in env {
        vars.set(OsStr::new(k), OsStr::new(v));
    }
    let argv: Vec<&[u8]> = std::iter::once(arg0)
        .chain(args)
        .map(|a| a.as_bytes())
        .collect();
    let mut plan = Plan {
        paths: CStrings::new(std::iter::once(exe.as_os_str().as_bytes())).map_err(invalid)?,
        argv: CStrings::new(argv.into_iter()).map_err(invalid)?,
        envp: vars.into_cstrings(&[]).map_err(invalid)?,
        workdir: None,
        quiet_stdio: false,
        pass_fds: Vec::new(),
        scratch: Vec::new(),
        keep_fds: std::iter::once(fd).chain(inherit.iter().copied()).collect(),
        copy_below: copy_below(&[&[fd], inherit].concat()),
        app: false,
        parent: std::process::id() as libc::pid_t,
        failed_at: None,
        errno: 0,
    };
    plan.run().map_err(|(stage, e)| match stage {
        Stage::Exec => EffectError::io(what(), e),
        stage => EffectError::io(format!("{}: {}", what(), stage.name()), e),
    })
}

/// The first fd a child does not need a copy of: above stdio and `needed`.
fn copy_below(needed: &[RawFd]) -> RawFd {
    needed.iter().copied().fold(2, RawFd::max) + 1
}

/// The environment a child gets, built in psflip: variables in order, and where
/// each name is (a configuration may set a hundred thousand of them).
struct Env {
    vars: Vec<(OsString, OsString)>,
    index: BTreeMap<OsString, usize>,
}

impl Env {
    /// psflip's environment, the variables `keep` accepts.
    fn inherited(keep: impl Fn(&OsStr) -> bool) -> Env {
        let mut env = Env {
            vars: Vec::new(),
            index: BTreeMap::new(),
        };
        for (k, v) in std::env::vars_os() {
            if keep(&k) {
                env.set(&k, &v);
            }
        }
        env
    }

    /// Set `key` (in its place, if it is there already).
    fn set(&mut self, key: &OsStr, value: &OsStr) {
        match self.index.get(key) {
            Some(&i) => self.vars[i].1 = value.to_owned(),
            None => {
                self.index.insert(key.to_owned(), self.vars.len());
                self.vars.push((key.to_owned(), value.to_owned()));
            }
        }
    }

    fn get(&self, key: &OsStr) -> Option<&OsStr> {
        self.index.get(key).map(|&i| self.vars[i].1.as_os_str())
    }

    /// `KEY=VALUE` strings; each of `pid_env` gets room for the child's pid
    /// (written by the child), replacing any value it had.
    fn into_cstrings(self, pid_env: &[&str]) -> Result<CStrings, Nul> {
        let kept = |k: &OsStr| !pid_env.iter().any(|p| OsStr::new(p) == k);
        let bytes = self.vars.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
        let mut strings = CStrings::with_capacity(self.vars.len() + pid_env.len(), bytes);
        for (k, v) in self.vars.iter().filter(|(k, _)| kept(k)) {
            strings.push(&[k.as_bytes(), b"=", v.as_bytes()])?;
        }
        for key in pid_env {
            strings.push_pid_slot(key.as_bytes())?;
        }
        strings.finish();
        Ok(strings)
    }
}

/// A string for execve held a NUL byte.
#[derive(Debug)]
struct Nul;

impl From<Nul> for std::io::Error {
    fn from(_: Nul) -> std::io::Error {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "an argument or environment variable holds a NUL byte",
        )
    }
}

/// Room for a pid in decimal (`pid_max` is at most 2^22; 10 digits hold any i32).
const PID_DIGITS: usize = 10;

/// NUL-terminated strings, all in one buffer, and the NULL-terminated array of
/// pointers to them, as execve takes them (one allocation each, whatever the
/// number of strings).
struct CStrings {
    buf: Vec<u8>,
    starts: Vec<usize>,
    /// Where the value of each pid variable goes in `buf`: the child writes the
    /// digits there.
    pid_slots: Vec<usize>,
    ptrs: Vec<*const libc::c_char>,
}

impl CStrings {
    fn with_capacity(n: usize, bytes: usize) -> CStrings {
        CStrings {
            buf: Vec::with_capacity(bytes + n * (PID_DIGITS + 1)),
            starts: Vec::with_capacity(n),
            pid_slots: Vec::new(),
            ptrs: Vec::new(),
        }
    }

    fn new<'a>(items: impl ExactSizeIterator<Item = &'a [u8]> + Clone) -> Result<CStrings, Nul> {
        let bytes = items.clone().map(|i| i.len() + 1).sum();
        let mut s = CStrings::with_capacity(items.len(), bytes);
        for item in items {
            s.push(&[item])?;
        }
        s.finish();
        Ok(s)
    }

    /// One string, the concatenation of `parts`.
    fn push(&mut self, parts: &[&[u8]]) -> Result<(), Nul> {
        if parts.iter().any(|p| p.contains(&0)) {
            return Err(Nul);
        }
        self.starts.push(self.buf.len());
        for p in parts {
            self.buf.extend_from_slice(p);
        }
        self.buf.push(0);
        Ok(())
    }

    /// `KEY=` and room for a pid, all NULs until the child fills it.
    fn push_pid_slot(&mut self, key: &[u8]) -> Result<(), Nul> {
        self.push(&[key, b"="])?;
        self.buf.pop();
        self.pid_slots.push(self.buf.len());
        self.buf.resize(self.buf.len() + PID_DIGITS + 1, 0);
        Ok(())
    }

    /// The pointers, once every string is in: `buf` does not move from now on.
    fn finish(&mut self) {
        let base = self.buf.as_ptr();
        self.ptrs.clear();
        // SAFETY: every start is an offset inside `buf`.
        self.ptrs
            .extend(self.starts.iter().map(|&i| unsafe { base.add(i) }.cast()));
        self.ptrs.push(std::ptr::null());
    }
}

/// Where the program may be: `prog` itself when it has a slash, else each `PATH`
/// entry joined with it, tried in order by the child as `execvp` does (glibc's
/// default search path when `PATH` is unset). Searched with the child's own
/// `PATH`, the one `env` may have set.
fn search_path(prog: &OsStr, path: Option<&OsStr>) -> Result<CStrings, Nul> {
    let prog = prog.as_bytes();
    if prog.contains(&b'/') || prog.is_empty() {
        return CStrings::new(std::iter::once(prog));
    }
    let path = path.map_or(&b"/bin:/usr/bin"[..], OsStrExt::as_bytes);
    let n = path.iter().filter(|&&b| b == b':').count() + 1;
    let mut paths = CStrings::with_capacity(n, path.len() + n * (prog.len() + 2));
    for dir in path.split(|&b| b == b':') {
        match dir {
            // An empty entry is the current directory.
            [] => paths.push(&[prog])?,
            [.., b'/'] => paths.push(&[dir, prog])?,
            _ => paths.push(&[dir, b"/", prog])?,
        }
    }
    paths.finish();
    Ok(paths)
}

/// The step of the child's set-up that failed.
#[derive(Clone, Copy, Debug)]
enum Stage {
    Unshare,
    Group,
    Parent,
    Workdir,
    Stdio,
    PassFds,
    KeepFds,
    Exec,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Group => "setpgid",
            Stage::Parent => "psflip exited while it started",
            Stage::Workdir => "chdir to workdir",
            Stage::Stdio => "stdin/stdout on /dev/null",
            Stage::Unshare => "a file table of its own",
            Stage::PassFds => "passing fds",
            Stage::KeepFds => "clearing FD_CLOEXEC",
            Stage::Exec => "execve",
        }
    }
}

/// Everything a child needs between clone and exec, prepared in psflip. The child
/// reads it, and writes `failed_at` and `errno` when a step fails, in psflip's own
/// memory (CLONE_VM) while psflip's thread waits (CLONE_VFORK).
struct Plan {
    /// Paths to execve in turn.
    paths: CStrings,
    argv: CStrings,
    envp: CStrings,
    workdir: Option<CString>,
    /// stdin and stdout on /dev/null (opened by the child).
    quiet_stdio: bool,
    /// Fds to place at 3, 4, …, and room for their temporary copies.
    pass_fds: Vec<RawFd>,
    scratch: Vec<RawFd>,
    /// Fds to keep at their numbers across exec (FD_CLOEXEC cleared).
    keep_fds: Vec<RawFd>,
    /// The child's file table is a copy of psflip's fds below this one only:
    /// above every fd it needs, and at most 3 when it needs only stdio.
    copy_below: RawFd,
    /// An app child or probe (own group, clean signal state, PDEATHSIG), not the
    /// successor.
    app: bool,
    /// psflip's pid, for the child's `getppid` check.
    parent: libc::pid_t,
    failed_at: Option<Stage>,
    errno: i32,
}

/// The child's stack: it only makes system calls, so a little is plenty.
const CHILD_STACK: usize = 32 * 1024;

impl Plan {
    /// Start the child; its pid once it has exec'd, or the step that failed.
    fn run(&mut self) -> Result<Pid, (Stage, std::io::Error)> {
        // Not zeroed: zeroing would write (and make resident) every page.
        let mut stack: Vec<std::mem::MaybeUninit<u8>> = Vec::with_capacity(CHILD_STACK);
        // The stack grows down on every Linux architecture Rust supports but
        // PA-RISC; 16-byte alignment as every ABI wants.
        let top = (stack.as_mut_ptr() as usize + CHILD_STACK) & !15;
        let plan: *mut Plan = self;
        // SAFETY: `child` runs on its own stack in our memory while this thread is
        // suspended (CLONE_VFORK) until it has exec'd or exited; it reads `plan`,
        // which outlives the call, writes only `failed_at`, `errno`, `scratch` and
        // the pid slots, and makes only async-signal-safe system calls.
        let pid = unsafe {
            libc::clone(
                child,
                top as *mut libc::c_void,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_FILES | libc::SIGCHLD,
                plan.cast(),
            )
        };
        if pid < 0 {
            return Err((Stage::Exec, std::io::Error::last_os_error()));
        }
        // SAFETY: the child is done with the plan (it has exec'd or exited); read
        // what it wrote through the same pointer it had.
        let (failed_at, errno) = unsafe {
            (
                std::ptr::read_volatile(&raw const (*plan).failed_at),
                std::ptr::read_volatile(&raw const (*plan).errno),
            )
        };
        drop(stack);
        match failed_at {
            None => Ok(Pid::from_raw(pid)),
            Some(stage) => {
                // It exited (127): reap it here, it was never anyone's child.
                super::reap::wait(Pid::from_raw(pid));
                Err((stage, std::io::Error::from_raw_os_error(errno)))
            }
        }
    }
}

/// In the child: record why `stage` failed (errno) and exit 127.
unsafe fn fail(plan: &mut Plan, stage: Stage) -> ! {
    // SAFETY: errno is this thread's; _exit ends the child at once.
    unsafe {
        plan.errno = *libc::__errno_location();
        plan.failed_at = Some(stage);
        libc::_exit(127)
    }
}

/// The child, between clone and exec. Only system calls; every failure is written
/// into the plan and ends the child with 127.
extern "C" fn child(plan: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `plan` is the `Plan` that `Plan::run` passed, alive and unmoved
    // while its thread waits for us.
    let plan = unsafe { &mut *plan.cast::<Plan>() };
    // SAFETY: as the doc says; each call's arguments are valid for it.
    unsafe {
        // Our own file table before anything touches it (CLONE_FILES shares
        // psflip's), holding only the fds below `copy_below`: the kernel does
        // not even copy the others (Linux 5.9+; else the whole table).
        let unshared = libc::syscall(
            libc::SYS_close_range,
            plan.copy_below as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_UNSHARE as libc::c_uint,
        ) == 0
            || libc::unshare(libc::CLONE_FILES) == 0;
        if !unshared {
            fail(plan, Stage::Unshare);
        }
        if plan.app {
            // Signals stay blocked until right before exec: none can act meanwhile.
            // Dispositions need no reset: psflip's are all SIG_DFL (see
            // `signals::default_dispositions`), and exec would reset a handler.
            if libc::setpgid(0, 0) != 0 {
                fail(plan, Stage::Group);
            }
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            );
            // psflip may have died between clone and prctl: then nobody would kill us.
            if libc::getppid() != plan.parent {
                *libc::__errno_location() = libc::ESRCH;
                fail(plan, Stage::Parent);
            }
        }
        fds::restore_nofile_limit_in_child();
        if let Some(dir) = &plan.workdir
            && libc::chdir(dir.as_ptr()) != 0
        {
            fail(plan, Stage::Workdir);
        }
        if plan.quiet_stdio {
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            if null < 0 || libc::dup2(null, 0) < 0 || libc::dup2(null, 1) < 0 {
                fail(plan, Stage::Stdio);
            }
            if null > 1 {
                libc::close(null);
            }
        }
        // Copy each passed fd above every source and target first, so that placing
        // one at 3 + i never overwrites another still to be placed.
        let n = plan.pass_fds.len() as RawFd;
        let above = plan.pass_fds.iter().copied().fold(3 + n, RawFd::max);
        for i in 0..plan.pass_fds.len() {
            let copy = libc::fcntl(plan.pass_fds[i], libc::F_DUPFD_CLOEXEC, above);
            if copy < 0 {
                fail(plan, Stage::PassFds);
            }
            plan.scratch[i] = copy;
        }
        for i in 0..plan.scratch.len() {
            // dup2 clears FD_CLOEXEC on the new fd; the copies close at exec.
            if libc::dup2(plan.scratch[i], 3 + i as RawFd) < 0 {
                fail(plan, Stage::PassFds);
            }
        }
        for i in 0..plan.keep_fds.len() {
            if libc::fcntl(plan.keep_fds[i], libc::F_SETFD, 0) < 0 {
                fail(plan, Stage::KeepFds);
            }
        }
        if !plan.envp.pid_slots.is_empty() {
            let mut digits = [0u8; PID_DIGITS];
            let mut pid = libc::getpid() as u32;
            let mut len = 0;
            loop {
                digits[PID_DIGITS - 1 - len] = b'0' + (pid % 10) as u8;
                len += 1;
                pid /= 10;
                if pid == 0 {
                    break;
                }
            }
            for s in 0..plan.envp.pid_slots.len() {
                let at = plan.envp.pid_slots[s];
                let buf = &mut plan.envp.buf;
                buf[at..at + len].copy_from_slice(&digits[PID_DIGITS - len..]);
                buf[at + len] = 0;
            }
        }
        if plan.app {
            signals::unblock_all_in_child();
        }
        // As execvp: go on past a directory without the program, remember a
        // permission error, stop at any other error.
        let mut denied = false;
        let mut errno = libc::ENOENT;
        for i in 0..plan.paths.starts.len() {
            let path = plan.paths.ptrs[i];
            libc::execve(path, plan.argv.ptrs.as_ptr(), plan.envp.ptrs.as_ptr());
            errno = *libc::__errno_location();
            match errno {
                libc::EACCES => denied = true,
                libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
                _ => {
                    denied = false;
                    break;
                }
            }
        }
        if denied {
            errno = libc::EACCES;
        }
        *libc::__errno_location() = errno;
        fail(plan, Stage::Exec)
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::{FromRawFd, IntoRawFd};
    use std::os::unix::fs::PermissionsExt;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("psflip-spawn-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Wait for our child `pid`; its exit code.
    fn wait(pid: Pid) -> i32 {
        let mut status = 0;
        // SAFETY: waitpid on our own child with a valid pointer.
        assert_eq!(
            unsafe { libc::waitpid(pid.as_raw(), &mut status, 0) },
            pid.as_raw()
        );
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        libc::WEXITSTATUS(status)
    }

    fn pipe() -> (std::fs::File, OwnedFd) {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        (std::fs::File::from(r), w)
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// Close our write ends `w`, wait for `pid` to exit 0, then read each of
    /// the pipes `r` to its end.
    fn exit_0_then_read<W, const N: usize>(
        pid: Pid,
        w: W,
        r: [&mut std::fs::File; N],
    ) -> [String; N] {
        drop(w);
        assert_eq!(wait(pid), 0);
        r.map(|f| {
            let mut text = String::new();
            f.read_to_string(&mut text).unwrap();
            text
        })
    }

    /// app() of `spec`, then [`exit_0_then_read`]; its pid and what it wrote.
    fn app_exit_0_then_read<W, const N: usize>(
        spec: &AppSpec,
        w: W,
        r: [&mut std::fs::File; N],
    ) -> (Pid, [String; N]) {
        let pid = app(spec).unwrap();
        (pid, exit_0_then_read(pid, w, r))
    }

    /// app() of `argv` with only `PATH` in its environment.
    fn app_in_path(argv: &[String], path: String) -> Result<Pid, EffectError> {
        app(&AppSpec {
            argv,
            env: &[("PATH".into(), path)],
            ..Default::default()
        })
    }

    /// A shell script at `path` with permissions `mode`.
    fn write_script(path: &Path, body: &str, mode: u32) {
        std::fs::write(path, body).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn passed_fds_land_at_3_up_in_order_and_pid_env_holds_the_childs_own_pid() {
        let (mut r1, w1) = pipe();
        let (mut r2, w2) = pipe();
        // The second pipe first: the child finds it at 3, the first at 4.
        let argv = strings(&["/bin/sh", "-c", "echo \"$OWN_PID $$\" >&3; echo four >&4"]);
        let (pid, [at3, at4]) = app_exit_0_then_read(
            &AppSpec {
                argv: &argv,
                // A stale value must not survive: the slot replaces it.
                env: &[("OWN_PID".into(), "1".into())],
                pass_fds: &[w2.as_raw_fd(), w1.as_raw_fd()],
                pid_env: &["OWN_PID"],
                ..Default::default()
            },
            (w1, w2),
            [&mut r2, &mut r1],
        );
        // `$$` is the shell's pid: the process app() started (it exec'd sh).
        assert_eq!(at3, format!("{pid} {pid}\n"));
        assert_eq!(at4, "four\n");
    }

    #[test]
    fn passing_the_same_fd_twice_gives_two_copies() {
        // The same fd twice, and sources that may sit at target numbers: each
        // lands where it is asked, whatever the order.
        let (mut ra, wa) = pipe();
        let (mut rb, wb) = pipe();
        let a = wa.as_raw_fd();
        let b = wb.as_raw_fd();
        let argv = strings(&["/bin/sh", "-c", "echo A >&3; echo B >&4; echo A2 >&5"]);
        let (_, [sa, sb]) = app_exit_0_then_read(
            &AppSpec {
                argv: &argv,
                pass_fds: &[a, b, a],
                ..Default::default()
            },
            (wa, wb),
            [&mut ra, &mut rb],
        );
        assert_eq!(sa, "A\nA2\n");
        assert_eq!(sb, "B\n");
    }

    #[test]
    fn an_fd_without_cloexec_above_those_needed_does_not_reach_the_child() {
        let (_r, w) = pipe();
        // What psflip never has (fds::cloexec_from_3): an fd that exec keeps,
        // placed high, above the one passed.
        // SAFETY: F_DUPFD on a valid fd returns a new fd that we own.
        let leaky = unsafe { OwnedFd::from_raw_fd(libc::fcntl(w.as_raw_fd(), libc::F_DUPFD, 900)) };
        let fd = leaky.as_raw_fd();
        let (mut r2, w2) = pipe();
        assert!(fd >= 900 && w2.as_raw_fd() < fd);
        let script = format!("[ -e /proc/$$/fd/{fd} ] && echo leaked >&3; echo checked >&3");
        let argv = strings(&["/bin/sh", "-c", &script]);
        let (_, [out]) = app_exit_0_then_read(
            &AppSpec {
                argv: &argv,
                pass_fds: &[w2.as_raw_fd()],
                ..Default::default()
            },
            w2,
            [&mut r2],
        );
        assert_eq!(out, "checked\n");
    }

    #[test]
    fn the_program_is_searched_in_the_childs_own_path() {
        let dir = tmp("path");
        let script = dir.join("psflip-spawn-test-prog");
        write_script(&script, "#!/bin/sh\nexit 7\n", 0o755);
        let path = format!("/nonexistent:{}", dir.display());
        let argv = strings(&["psflip-spawn-test-prog"]);
        let pid = app_in_path(&argv, path).unwrap();
        assert_eq!(wait(pid), 7);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_program_found_only_without_permission_is_eacces_and_a_later_one_runs() {
        let first = tmp("eacces-1");
        let second = tmp("eacces-2");
        write_script(&first.join("prog"), "#!/bin/sh\nexit 1\n", 0o644);
        let argv = strings(&["prog"]);
        let only_first = format!("{}", first.display());
        let err = app_in_path(&argv, only_first).unwrap_err();
        let EffectError::Io { what, source } = &err else {
            panic!("{err}")
        };
        assert_eq!(what, "cannot run \"prog\"");
        assert_eq!(source.raw_os_error(), Some(libc::EACCES), "{err}");

        write_script(&second.join("prog"), "#!/bin/sh\nexit 5\n", 0o755);
        let both = format!("{}:{}", first.display(), second.display());
        let pid = app_in_path(&argv, both).unwrap();
        assert_eq!(wait(pid), 5);
        std::fs::remove_dir_all(&first).unwrap();
        std::fs::remove_dir_all(&second).unwrap();
    }

    #[test]
    fn a_missing_program_is_an_error_naming_it_and_leaves_no_child() {
        let argv = strings(&["/nonexistent/psflip-no-such-program", "x"]);
        let err = app(&AppSpec {
            argv: &argv,
            ..Default::default()
        })
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("cannot run \"/nonexistent/psflip-no-such-program\": "),
            "{text}"
        );
        let EffectError::Io { source, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!(source.raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn quiet_stdio_puts_stdin_and_stdout_on_dev_null() {
        let (mut r, w) = pipe();
        let argv = strings(&[
            "/bin/sh",
            "-c",
            // Read in subshells: dash applies a command's own redirections to
            // the shell itself while the command runs.
            "a=$(readlink /proc/$$/fd/0); b=$(readlink /proc/$$/fd/1); echo \"$a $b\" >&3",
        ]);
        let (_, [out]) = app_exit_0_then_read(
            &AppSpec {
                argv: &argv,
                quiet_stdio: true,
                pass_fds: &[w.as_raw_fd()],
                ..Default::default()
            },
            w,
            [&mut r],
        );
        assert_eq!(out, "/dev/null /dev/null\n");
    }

    #[test]
    fn the_successor_keeps_its_fds_at_their_numbers() {
        let (mut r, w) = pipe();
        let (mut r2, w2) = pipe();
        let keep = w2.into_raw_fd();
        // Through /proc/self/fd: dash's `>&N` takes one digit only, and with
        // the other tests' fds open these are often 10 or more.
        let script = format!(
            "echo \"$PSFLIP_READY_FD $X\" >/proc/self/fd/$PSFLIP_READY_FD; echo kept >/proc/self/fd/{keep}"
        );
        let args = [OsString::from("-c"), OsString::from(script)];
        let pid = successor(
            Path::new("/bin/sh"),
            &OsString::from("sh"),
            &args,
            &w,
            // The handoff names the readiness fd (crate::handoff).
            &[
                (handoff::READY_FD, w.as_raw_fd().to_string()),
                ("X", "y".into()),
            ],
            &[keep],
        )
        .unwrap();
        // SAFETY: `keep` is ours, from into_raw_fd above.
        drop(unsafe { OwnedFd::from_raw_fd(keep) });
        let fd = w.as_raw_fd();
        let [out, kept] = exit_0_then_read(pid, w, [&mut r, &mut r2]);
        assert_eq!(out, format!("{fd} y\n"));
        assert_eq!(kept, "kept\n");
    }
}
