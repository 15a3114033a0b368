//! Issue #8: the control path trusts no one and survives exhaustion (SPEC §10).
//! One test per finding of the issue, each acting as a real second user that the
//! test creates (`useradd`) and deletes: CI runs as root. Every assertion is a
//! fact of the world: who is alive, what the pidfile names, what a command
//! printed and returned, what /proc says about CPU time.
//!
//! The attacker's programs are this test binary itself, re-run under the
//! attacker's uid with `PSFLIP_ATTACK` set: it then runs [`attacker`] (a no-op
//! test otherwise) — no interpreter needed on the machine.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::util::*;

// --- the second user ---------------------------------------------------------------

/// `useradd` and `userdel` take a lock on /etc/passwd: one at a time.
static USERS: Mutex<()> = Mutex::new(());

/// A throwaway user, deleted when dropped.
struct User {
    name: String,
    uid: u32,
    gid: u32,
}

impl User {
    /// A fresh user, or `None` (the test is skipped, saying so) when not root.
    fn create(sb: &Sandbox, role: &str) -> Option<User> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("[{}] skipped: needs root to create a second user", sb.name);
            return None;
        }
        let _lock = USERS.lock().unwrap_or_else(|e| e.into_inner());
        let name = format!(
            "psf{role}{}",
            &format!("{:x}", std::process::id() as u64 * 1000 + nonce())
        );
        let ok = Command::new("useradd")
            .args([
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "--user-group",
            ])
            .arg(&name)
            .status()
            .expect("useradd")
            .success();
        assert!(ok, "useradd {name} failed");
        let user = nix::unistd::User::from_name(&name)
            .unwrap()
            .expect("the new user exists");
        Some(User {
            name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        })
    }

    /// `program`, run as this user in the sandbox (tagged, so the test cleans
    /// it up by pid).
    fn command(&self, sb: &Sandbox, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = sb.command(program);
        c.uid(self.uid).gid(self.gid);
        c
    }

    /// `psflip ARGS… -c psflip.toml` run as this user (no XDG_RUNTIME_DIR, so
    /// its control directory is /tmp/psflip-<uid>).
    fn psflip_cmd(&self, sb: &Sandbox, args: &[&str]) -> Command {
        let mut c = self.command(sb, bin());
        c.args(args)
            .args(["-c", "psflip.toml"])
            .env_remove("XDG_RUNTIME_DIR");
        c
    }

    /// A shell command line run as this user; its success.
    fn sh(&self, sb: &Sandbox, script: &str) -> bool {
        self.command(sb, "sh")
            .args(["-c", script])
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success()
    }

    /// This test binary re-run as this user, doing `action` (see [`attacker`]).
    fn attack(&self, sb: &Sandbox, action: &[&str]) -> Command {
        let mut c = self.command(sb, std::env::current_exe().unwrap());
        c.args([
            "--exact",
            "security::attacker",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env("PSFLIP_ATTACK", action.join("\u{1f}"));
        c
    }

    /// Run `action` to its end; the `RESULT …` line it printed.
    fn attack_result(&self, sb: &Sandbox, action: &[&str]) -> String {
        let out = self
            .attack(sb, action)
            .stdout(Stdio::piped())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .find_map(|l| l.strip_prefix("RESULT "))
            .unwrap_or_else(|| panic!("the attacker said nothing: {text}"))
            .to_owned()
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _lock = USERS.lock().unwrap_or_else(|e| e.into_inner());
        let _ = Command::new("userdel").arg(&self.name).status();
    }
}

fn nonce() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A directory in the sandbox that anyone may write (mode 1777, like /tmp).
fn shared_dir(sb: &Sandbox) -> PathBuf {
    let dir = sb.path("shared");
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777)).unwrap();
    dir
}

/// The sandbox readable by every user (the attacker runs fixtures from it).
fn open_sandbox(sb: &Sandbox) {
    fs::set_permissions(&sb.dir, fs::Permissions::from_mode(0o755)).unwrap();
}

/// A sandbox readable by every user and a fresh second user for `role`, or
/// `None` (the test is skipped) when not root.
fn sandbox_with_user(name: &str, role: &str) -> Option<(Sandbox, User)> {
    let sb = Sandbox::new(name);
    let user = User::create(&sb, role)?;
    open_sandbox(&sb);
    Some((sb, user))
}

/// The sleeping service with its pidfile at `shared/app.pid` (in a directory
/// anyone may write); the shared directory, the pidfile and the config.
fn shared_pidfile_conf(sb: &Sandbox) -> (PathBuf, PathBuf, Conf) {
    let shared = shared_dir(sb);
    let pidfile = shared.join("app.pid");
    let mut conf = Conf::sleep(sb);
    conf.pidfile = Some(pidfile.clone());
    (shared, pidfile, conf)
}

/// `psflip status` (as root) succeeds and names `pid` as the serving psflip.
fn assert_status_names(sb: &Sandbox, pid: i32) {
    let (code, out, err) = psflip(sb, &["status"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with(&format!("psflip_pid: {pid}\n")), "{out}");
}

/// `p` exits with `code` (in time).
fn must_exit(sb: &Sandbox, p: &mut Psflip, code: i32) {
    assert_eq!(sb.wait_exit(p, T), code, "{}", sb.diag());
}

/// SIGTERM to `p`: it exits 0.
fn stop_exits_0(sb: &Sandbox, p: &mut Psflip) {
    p.signal(Signal::SIGTERM);
    must_exit(sb, p, 0);
}

/// The old generation `p` exits 0 and its child `c1` dies.
fn old_generation_ends(sb: &Sandbox, p: &mut Psflip, c1: i32) {
    must_exit(sb, p, 0);
    sb.must_die(c1, "the old child");
}

/// psflip's log says `what`.
fn assert_logged(sb: &Sandbox, what: &str) {
    let log = sb.psflip_log();
    assert!(log.contains(what), "{what:?} not in the log:\n{log}");
}

/// `psflip ARGS… -c psflip.toml` as root, to its end.
fn psflip(sb: &Sandbox, args: &[&str]) -> (i32, String, String) {
    let out = sb
        .psflip_cmd(&[args, &["-c", "psflip.toml"]].concat())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (
        code_of(out.status),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Start psflip on `conf` and wait until it serves (its child started, the
/// pidfile `pidfile` names it); returns it and its child.
fn serve_at(sb: &Sandbox, conf: &Conf, pidfile: &Path) -> (Psflip, i32) {
    sb.config(conf);
    let p = sb.start();
    let c = sb.child_of(p.pid);
    must_name_at(sb, pidfile, p.pid);
    (p, c)
}

/// Wait until the pidfile at `path` names `pid`.
fn must_name_at(sb: &Sandbox, path: &Path, pid: i32) {
    sb.must(T, &format!("{} names {pid}", path.display()), || {
        fs::read_to_string(path).is_ok_and(|t| t == format!("{pid}\n"))
    });
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &text[text.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as u64
}

fn last_pid() -> i32 {
    fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

// --- the attacker's programs ------------------------------------------------------------

/// Not a test of its own: the attacker's programs, run by [`User::attack`] as
/// another user. Without `PSFLIP_ATTACK` it does nothing.
#[test]
fn attacker() {
    let Ok(spec) = std::env::var("PSFLIP_ATTACK") else {
        return;
    };
    let args: Vec<&str> = spec.split('\u{1f}').collect();
    match args.as_slice() {
        // Connect N times to the socket at PATH; count what happened.
        ["connect", path, n] => {
            let n: usize = n.parse().unwrap();
            let (mut ok, mut refused_by_server, mut denied) = (0, 0, 0);
            for _ in 0..n {
                match UnixStream::connect(path) {
                    Ok(mut s) => {
                        ok += 1;
                        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut reply = String::new();
                        let _ = s.read_to_string(&mut reply);
                        if reply.starts_with("refused:") {
                            refused_by_server += 1;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => denied += 1,
                    Err(_) => {}
                }
            }
            println!("RESULT connected={ok} refused_by_server={refused_by_server} denied={denied}");
        }
        // Bind the abstract names psflip-control-<pid> for N pids from FROM and
        // answer every connection with a lie, appending a line to LOG for each.
        ["squat", from, n, log] => {
            let from: i32 = from.parse().unwrap();
            let n: i32 = n.parse().unwrap();
            let listeners: Vec<UnixListener> = (from..from + n)
                .filter_map(|p| {
                    let addr =
                        SocketAddr::from_abstract_name(format!("psflip-control-{p}").as_bytes())
                            .ok()?;
                    let l = UnixListener::bind_addr(&addr).ok()?;
                    l.set_nonblocking(true).ok()?;
                    Some(l)
                })
                .collect();
            println!("RESULT squatting={}", listeners.len());
            loop {
                for l in &listeners {
                    if let Ok((mut s, _)) = l.accept() {
                        let _ = s.write_all(
                            b"ok: generation 99 (psflip pid 4242) took over\npsflip_pid: 4242\n",
                        );
                        let mut f = fs::OpenOptions::new()
                            .append(true)
                            .create(true)
                            .open(log)
                            .unwrap();
                        let _ = writeln!(f, "answered");
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        // Create `.NAME.<pid>.<k>.tmp` (the old, predictable pidfile temp names)
        // in DIR for pids FROM..FROM+N, k in 0..=16.
        ["precreate", dir, name, from, n] => {
            let from: i32 = from.parse().unwrap();
            let n: i32 = n.parse().unwrap();
            let mut made = 0;
            for p in from..from + n {
                for k in 0..=16 {
                    let path = Path::new(dir).join(format!(".{name}.{p}.{k}.tmp"));
                    if fs::File::create_new(path).is_ok() {
                        made += 1;
                    }
                }
            }
            println!("RESULT made={made}");
        }
        other => panic!("unknown attack {other:?}"),
    }
}

// --- finding 1: out of fds, a connection made the accept loop spin ----------------------

#[test]
fn out_of_fds_psflip_backs_off_and_still_handles_signals() {
    let Some((sb, attacker)) = sandbox_with_user("out_of_fds_psflip_backs_off", "a") else {
        return;
    };
    let (mut p, c1) = serve_at(&sb, &Conf::sleep(&sb), &sb.pidfile());
    let socket = control_socket_of(p.pid).expect("psflip serves its control socket");

    // Another user cannot even connect: the socket's directory is private.
    let r = attacker.attack_result(&sb, &["connect", socket.to_str().unwrap(), "1"]);
    assert_eq!(r, "connected=0 refused_by_server=0 denied=1");

    // psflip out of fds: its limit at its lowest free fd number.
    let mut lowest = 0;
    while fs::symlink_metadata(format!("/proc/{}/fd/{lowest}", p.pid)).is_ok() {
        lowest += 1;
    }
    let limit = libc::rlimit {
        rlim_cur: lowest,
        rlim_max: lowest,
    };
    // SAFETY: prlimit with a valid pid and a valid new limit, no old one asked.
    let rc = unsafe { libc::prlimit(p.pid, libc::RLIMIT_NOFILE, &limit, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    // Clients of its own user (root) queue up: it cannot accept them.
    let queued: Vec<UnixStream> = (0..50)
        .map(|_| UnixStream::connect(&socket).unwrap())
        .collect();
    let log_before = sb.psflip_log().len();
    let ticks_before = cpu_ticks(p.pid);
    // A window of wall time in which a spinning loop would burn a whole CPU.
    std::thread::sleep(Duration::from_secs(2));
    let burnt = cpu_ticks(p.pid) - ticks_before;
    let logged = sb.psflip_log().len() - log_before;
    eprintln!(
        "[{}] out of fds for 2 s: {burnt} ticks of CPU ({} per s), {logged} bytes of log",
        sb.name,
        clock_ticks_per_second()
    );
    assert!(
        burnt * 10 < 2 * clock_ticks_per_second(),
        "psflip burnt {burnt} ticks in 2 s out of fds (spinning)\n{}",
        sb.diag()
    );
    assert!(logged < 2048, "{logged} bytes logged in 2 s\n{}", sb.diag());
    assert!(
        sb.psflip_log().contains("pausing"),
        "the exhaustion is reported\n{}",
        sb.diag()
    );
    // Signals are still handled: a stop is a stop, the child reaped.
    stop_exits_0(&sb, &mut p);
    sb.must_die(c1, "the child");
    drop(queued);
    sb.assert_clean();
}

// --- finding 2: the control socket could be squatted -------------------------------------

#[test]
fn a_squatter_cannot_answer_for_psflip() {
    let Some((sb, attacker)) = sandbox_with_user("a_squatter_cannot_answer_for_psflip", "s") else {
        return;
    };
    let shared = shared_dir(&sb);
    let answered = shared.join("answered");
    // The squatter binds the old abstract names of the next 300 pids, before
    // psflip starts.
    let mut squatter = sb.spawn({
        let mut c = attacker.attack(
            &sb,
            &[
                "squat",
                &(last_pid() + 1).to_string(),
                "300",
                answered.to_str().unwrap(),
            ],
        );
        c.stdout(Stdio::null());
        c
    });
    let (mut p, c1) = serve_at(&sb, &Conf::sleep(&sb), &sb.pidfile());
    // psflip's own socket, in root's private directory.
    let socket = control_socket_of(p.pid).expect("psflip serves its control socket");
    let dir = socket.parent().unwrap();
    let meta = fs::symlink_metadata(dir).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 0);
    assert_eq!(meta.permissions().mode() & 0o077, 0, "{}", dir.display());

    assert_status_names(&sb, p.pid);
    let (code, out, err) = psflip(&sb, &["upgrade"]);
    assert_eq!(code, 0, "{err}\n{}", sb.diag());
    let s = sb.successor_of(p.pid);
    assert_eq!(
        out,
        format!("ok: generation 2 (psflip pid {s}) took over\n")
    );
    old_generation_ends(&sb, &mut p, c1);
    must_name_at(&sb, &sb.pidfile(), s);
    assert!(
        !answered.exists(),
        "the squatter answered someone: {:?}",
        fs::read_to_string(&answered)
    );
    squatter.signal(Signal::SIGKILL);
    assert!(sb.wait_exit(&mut squatter, T) != 0);
    finish(&sb, s);
}

#[test]
fn a_control_directory_planted_by_another_user_is_refused() {
    // A psflip running as a non-root user V uses /tmp/psflip-<V's uid>; another
    // user creates that directory first. V's psflip refuses it and exits 2
    // before starting its child, naming the directory; nothing answers for it.
    let Some((sb, attacker)) =
        sandbox_with_user("a_control_directory_planted_by_another_user", "p")
    else {
        return;
    };
    let Some(victim) = User::create(&sb, "v") else {
        return;
    };
    let shared = shared_dir(&sb);
    let started = shared.join("started.log");
    let script = format!("echo started >> {}; exec sleep 1000", started.display());
    sb.config(&Conf::cmd(&sb, &["sh", "-c", &script]).no_pidfile());
    let planted = PathBuf::from(format!("/tmp/psflip-{}", victim.uid));
    let _ = fs::remove_dir_all(&planted);
    assert!(attacker.sh(&sb, &format!("mkdir -m 777 {}", planted.display())));
    let mut p = sb.spawn(victim.psflip_cmd(&sb, &[]));
    must_exit(&sb, &mut p, 2);
    let log = sb.psflip_log();
    assert!(log.contains(&planted.display().to_string()), "{log}");
    assert!(
        log.contains(&format!("owned by uid {}", attacker.uid)),
        "{log}"
    );
    assert!(!started.exists(), "the child was started");
    fs::remove_dir_all(&planted).unwrap();
    sb.assert_clean();
}

// --- finding 3: psflip upgrade signalled whatever the pidfile named ------------------------

#[test]
fn a_pidfile_naming_a_foreign_process_is_stale_and_never_signalled() {
    let Some((sb, attacker)) =
        sandbox_with_user("a_pidfile_naming_a_foreign_process_is_stale", "f")
    else {
        return;
    };
    let (_, pidfile, conf) = shared_pidfile_conf(&sb);
    sb.config(&conf);
    // A root-owned process that SIGHUP kills; psflip is not running.
    let victim = sb.spawn({
        let mut c = sb.command("sleep");
        c.arg("1000");
        c
    });
    for target in [victim.pid, 1] {
        assert!(attacker.sh(&sb, &format!("echo {target} > {}", pidfile.display())));
        for args in [&["status"][..], &["upgrade"]] {
            let (code, out, err) = psflip(&sb, args);
            assert_eq!(
                code, 3,
                "{args:?} with the pidfile naming {target}: {out}{err}"
            );
            assert!(out.is_empty(), "{out}");
            assert!(err.contains("stale"), "{err}");
            assert!(err.contains(&format!("pid {target}")), "{err}");
        }
    }
    sb.assert_alive(victim.pid, "the root process the pidfile named");
    assert_eq!(
        status_field(victim.pid, "SigPnd").as_deref(),
        Some("0000000000000000"),
        "a signal is pending"
    );
    drop(victim);
    sb.assert_clean();
}

// --- finding 4: predictable pidfile temp names -------------------------------------------

#[test]
fn upgrades_succeed_with_the_old_temp_names_pre_created() {
    let Some((sb, attacker)) =
        sandbox_with_user("upgrades_succeed_with_the_old_temp_names_pre_created", "t")
    else {
        return;
    };
    let (shared, pidfile, conf) = shared_pidfile_conf(&sb);
    let (mut p, c1) = serve_at(&sb, &conf, &pidfile);
    // The attacker covers 300 pids ahead (17 old-style names each); root then
    // sets the kernel's last pid just below that window, so the successor's
    // pid falls in it: the old, predictable names would fail this upgrade.
    let pid_max: i32 = fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let from = match last_pid() + 2000 {
        f if f + 300 < pid_max => f,
        _ => 2000,
    };
    let made = attacker.attack_result(
        &sb,
        &[
            "precreate",
            shared.to_str().unwrap(),
            "app.pid",
            &from.to_string(),
            "300",
        ],
    );
    assert_eq!(made, format!("made={}", 300 * 17));
    let steered = fs::write("/proc/sys/kernel/ns_last_pid", format!("{}", from - 1)).is_ok();
    let (code, out, err) = psflip(&sb, &["upgrade"]);
    assert_eq!(code, 0, "{out}{err}\n{}", sb.diag());
    let s = sb.successor_of(p.pid);
    must_name_at(&sb, &pidfile, s);
    eprintln!(
        "[{}] successor pid {s}, window {from}..{}",
        sb.name,
        from + 300
    );
    if steered {
        assert!(
            (from..from + 300).contains(&s),
            "the successor's pid {s} missed the window {from}..{}",
            from + 300
        );
    } else {
        eprintln!(
            "[{}] note: cannot write ns_last_pid; the window may be missed",
            sb.name
        );
    }
    old_generation_ends(&sb, &mut p, c1);
    finish(&sb, s);
}

// --- finding 5: a stderr nobody reads froze the loop -------------------------------------

#[test]
fn status_answers_and_signals_work_while_stderr_is_a_full_pipe() {
    let Some((sb, attacker)) = sandbox_with_user("status_answers_while_stderr_is_a_full_pipe", "b")
    else {
        return;
    };
    // A socket directory readable by others and a socket made connectable by
    // anyone (as an operator's mistake would): the server's own check is all
    // that stands between psflip and the attacker's connections.
    let ctl = sb.path("ctl");
    fs::create_dir_all(&ctl).unwrap();
    fs::set_permissions(&ctl, fs::Permissions::from_mode(0o755)).unwrap();
    let socket = ctl.join("psflip.sock");
    let conf = Conf::sleep(&sb).top(&format!("control_socket = {}", q(socket.to_str().unwrap())));
    sb.config(&conf);
    // stderr: a pipe already full, whose reader never reads.
    let (reader, writer) = nix::unistd::pipe().unwrap();
    fill(&writer);
    let mut p = sb.spawn({
        let mut c = sb.psflip_cmd(&["-c", "psflip.toml"]);
        c.stderr(Stdio::from(writer));
        c
    });
    sb.must(T, "the control socket exists", || socket.exists());
    sb.must(T, "status answers", || psflip(&sb, &["status"]).0 == 0);
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o666)).unwrap();
    let r = attacker.attack_result(&sb, &["connect", socket.to_str().unwrap(), "3000"]);
    assert_eq!(r, "connected=3000 refused_by_server=3000 denied=0");
    assert_status_names(&sb, p.pid);
    // The upgrade signal is acted on: a successor starts and takes over.
    p.signal(Signal::SIGHUP);
    let s = sb.wait_for(T, "a successor starts", || {
        children_of(p.pid)
            .into_iter()
            .find(|k| comm(*k) == "psflip")
    });
    assert_eq!(sb.wait_exit(&mut p, T), 0, "the old generation hands over");
    sb.must(T, "the successor answers status", || {
        psflip(&sb, &["status"])
            .1
            .starts_with(&format!("psflip_pid: {s}\n"))
    });
    // A child that dies is reaped, and psflip exits with its status.
    let c2 = children_of(s)
        .into_iter()
        .find(|k| comm(*k) == "sleep")
        .expect("the successor's child");
    signal(c2, Signal::SIGKILL);
    sb.must_die(s, "the successor, whose child died");
    drop(reader);
    sb.assert_clean();
}

/// Fill a pipe: write until it would block, then make it blocking again (as a
/// stderr is).
fn fill(fd: &OwnedFd) {
    let raw = fd.as_raw_fd();
    // SAFETY: fcntl on an fd we own.
    let flags = unsafe { libc::fcntl(raw, libc::F_GETFL) };
    unsafe { libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) };
    let chunk = [b'x'; 4096];
    // SAFETY: writing from a valid buffer to an fd we own.
    while unsafe { libc::write(raw, chunk.as_ptr().cast(), chunk.len()) } > 0 {}
    unsafe { libc::fcntl(raw, libc::F_SETFL, flags) };
}

// --- finding 7: bad input accepted -----------------------------------------------------

#[test]
fn bounds_and_unfit_signals_are_refused_and_an_unwritable_pidfile_stops_the_start() {
    let Some((sb, attacker)) = sandbox_with_user("bounds_and_unfit_signals_are_refused", "c")
    else {
        return;
    };
    for (body, key, why) in [
        (
            "[upgrade]\ntimeout = \"1000000h\"\n",
            "upgrade.timeout",
            "24h0m0s",
        ),
        (
            "[shutdown]\nsignal = \"SIGCHLD\"\n",
            "shutdown.signal",
            "SIGCHLD",
        ),
        (
            "[shutdown]\nsignal = \"KILL\"\n",
            "shutdown.signal",
            "SIGKILL",
        ),
        (
            "[upgrade]\nsignal = \"TERM\"\n",
            "upgrade.signal",
            "termination",
        ),
    ] {
        sb.write(
            "psflip.toml",
            &format!("cmd = [\"sleep\", \"1000\"]\n{body}"),
        );
        let (code, out, err) = psflip(&sb, &["check"]);
        assert_eq!(code, 2, "{body}: {out}{err}");
        assert!(err.contains(key) && err.contains(why), "{body}: {err}");
    }
    // Another user makes the pidfile's path a directory: the first generation
    // exits 2 before starting its child, naming the path and the reason.
    let shared = shared_dir(&sb);
    let pidfile = shared.join("app.pid");
    assert!(attacker.sh(&sb, &format!("mkdir {}", pidfile.display())));
    let mut conf = Conf::cmd(
        &sb,
        &["sh", "-c", "echo started >> started.log; exec sleep 1000"],
    );
    conf.pidfile = Some(pidfile.clone());
    sb.config(&conf);
    must_exit(&sb, &mut sb.start(), 2);
    let log = sb.psflip_log();
    assert!(
        log.contains(&pidfile.display().to_string()) && log.contains("is a directory"),
        "{log}"
    );
    // And a pidfile in a directory that does not exist.
    conf.pidfile = Some(sb.path("missing/app.pid"));
    sb.config(&conf);
    must_exit(&sb, &mut sb.start(), 2);
    assert_logged(&sb, "No such file or directory");
    assert!(!sb.path("started.log").exists(), "a child was started");
    sb.assert_clean();
}

// --- finding 6: setsid daemons escaped the old child's stop --------------------------------

#[test]
fn escaped_daemons_are_stopped_with_their_generation_only() {
    // The service runs as a second user; each child starts two `setsid`
    // daemons (one ignores SIGTERM). An upgrade stops the old generation's
    // daemons (SIGTERM, then SIGKILL after shutdown.timeout) and leaves the new
    // generation's alone; stopping the service stops the rest.
    let Some((sb, service)) = sandbox_with_user(
        "escaped_daemons_are_stopped_with_their_generation_only",
        "d",
    ) else {
        return;
    };
    let shared = shared_dir(&sb);
    let record = |name: &str| format!("echo $$ >> {}/{name}-{{{{ BlueGreen }}}}", shared.display());
    let script = format!(
        "setsid sh -c '{}; exec sleep 1000' & setsid sh -c '{}; trap \"\" TERM; exec sleep 1000' & exec sleep 1000",
        record("daemon"),
        record("stubborn"),
    );
    let conf = Conf::cmd(&sb, &["sh", "-c", &script])
        .no_pidfile()
        .shutdown_timeout("1s");
    sb.config(&conf);
    let as_service = |args: &[&str]| {
        let out = service
            .psflip_cmd(&sb, args)
            .stdout(Stdio::piped())
            .output()
            .unwrap();
        (
            code_of(out.status),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let mut p = sb.spawn(service.psflip_cmd(&sb, &[]));
    let daemons = |color: &str| -> Vec<i32> {
        ["daemon", "stubborn"]
            .iter()
            .filter_map(|n| fs::read_to_string(shared.join(format!("{n}-{color}"))).ok())
            .filter_map(|t| t.trim().parse().ok())
            .collect()
    };
    let both_daemons = |color: &str, what: &str| {
        sb.wait_for(T, what, || {
            let d = daemons(color);
            (d.len() == 2).then_some(d)
        })
    };
    let blue = both_daemons("blue", "the first child's daemons run");
    for d in &blue {
        assert_ne!(pgrp(*d), pgrp(p.pid), "daemon {d} left psflip's group");
    }
    sb.must(T, "psflip serves", || as_service(&["status"]).0 == 0);
    let (code, out) = as_service(&["upgrade"]);
    assert_eq!(code, 0, "{out}\n{}", sb.diag());
    let green = both_daemons("green", "the new child's daemons run");
    let s: i32 = out
        .split("psflip pid ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no successor pid in {out:?}"));
    // The old generation stops its escaped daemons, the stubborn one by SIGKILL
    // after shutdown.timeout, and exits 0 once they are gone.
    must_exit(&sb, &mut p, 0);
    for d in &blue {
        assert!(
            !alive(*d),
            "the old generation's daemon {d} survived it\n{}",
            sb.diag()
        );
    }
    assert_logged(&sb, "stopping 2 escaped process(es)");
    assert_logged(&sb, "sending SIGKILL");
    // The new generation's daemons are untouched.
    for d in &green {
        sb.assert_alive(*d, "the new generation's daemon");
        assert_eq!(
            status_field(*d, "SigPnd").as_deref(),
            Some("0000000000000000")
        );
    }
    let (code, out) = as_service(&["status"]);
    assert_eq!(code, 0);
    assert!(out.starts_with(&format!("psflip_pid: {s}\n")), "{out}");
    // Stopping the service stops the new generation's daemons too.
    signal(s, Signal::SIGTERM);
    sb.must_die(s, "the successor");
    for d in &green {
        sb.must_die(*d, "the new generation's daemon");
    }
    sb.assert_clean();
}

// --- finding 2, continued: who the client believes ------------------------------------------

#[test]
fn a_second_psflip_for_the_same_configuration_does_not_take_the_socket() {
    // The socket's name belongs to the running service: a second first
    // generation exits 2 naming it, before starting a child; the first serves on.
    let sb = Sandbox::new("a_second_psflip_for_the_same_configuration");
    let (mut p, c1) = serve_at(&sb, &Conf::sleep(&sb), &sb.pidfile());
    let mut second = sb.start();
    must_exit(&sb, &mut second, 2);
    assert_logged(
        &sb,
        &format!("psflip (pid {}) already runs this configuration", p.pid),
    );
    assert!(sb.started_by(second.pid, "child").is_empty());
    assert_status_names(&sb, p.pid);
    sb.assert_alive(c1, "the first psflip's child");
    stop_exits_0(&sb, &mut p);
    sb.assert_clean();
}

#[test]
fn root_reaches_another_users_psflip_only_through_a_pidfile_it_can_trust() {
    // A service running as user V keeps its socket in V's directory. Root finds
    // it through a pidfile in a directory only V can write; the same pidfile in
    // a directory anyone can write (where another user could have put it) is no
    // reason to trust V's socket, nor anything the pidfile names.
    let Some((sb, service)) = sandbox_with_user("root_reaches_another_users_psflip", "r") else {
        return;
    };
    let run = sb.path("run");
    fs::create_dir_all(&run).unwrap();
    nix::unistd::chown(
        &run,
        Some(nix::unistd::Uid::from_raw(service.uid)),
        Some(nix::unistd::Gid::from_raw(service.gid)),
    )
    .unwrap();
    fs::set_permissions(&run, fs::Permissions::from_mode(0o755)).unwrap();
    let pidfile = run.join("app.pid");
    let mut conf = Conf::sleep(&sb);
    conf.pidfile = Some(pidfile.clone());
    sb.config(&conf);
    let mut p = sb.spawn(service.psflip_cmd(&sb, &[]));
    must_name_at(&sb, &pidfile, p.pid);
    assert_status_names(&sb, p.pid);
    // The same directory, now writable by anyone: root no longer follows it.
    fs::set_permissions(&run, fs::Permissions::from_mode(0o1777)).unwrap();
    let (code, out, err) = psflip(&sb, &["status"]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("stale"), "{err}");
    let (code, _, err) = psflip(&sb, &["upgrade"]);
    assert_eq!(code, 3, "{err}");
    assert!(
        sb.started_by(p.pid, "successor").is_empty(),
        "{}",
        sb.diag()
    );
    stop_exits_0(&sb, &mut p);
    sb.assert_clean();
}
