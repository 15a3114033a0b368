//! Supervision of one child (SPEC §4) and psflip's exit statuses (§1, I7).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, sigprocmask};
use rstest::rstest;

use crate::util::*;

const EMPTY_MASK: &str = "0000000000000000";

// --- exit statuses -----------------------------------------------------------

#[test]
fn exit_status_is_the_childs_code_while_serving() {
    let sb = Sandbox::new("exit_status_is_the_childs_code_while_serving");
    let mut p = start_child_exiting_3(&sb);
    sb.must_log(p.pid, "serving");
    assert_eq!(sb.wait_exit(&mut p, T), 3, "{}", sb.diag());
    sb.assert_clean();
}

#[test]
fn exit_status_137_when_the_child_is_sigkilled() {
    let sb = Sandbox::new("exit_status_137_when_the_child_is_sigkilled");
    let mut p = sb.start_with(&Conf::sleep(&sb).alive("150ms"));
    let c = sb.child_of(p.pid);
    signal(c, Signal::SIGKILL);
    assert_eq!(sb.wait_exit(&mut p, T), 137, "{}", sb.diag());
    sb.assert_clean();
}

#[rstest]
#[case::failure(5, 5)]
#[case::success_is_still_a_failure(0, 1)]
fn exit_status_when_the_child_exits_before_healthy(#[case] child_code: i32, #[case] want: i32) {
    let sb = Sandbox::new("exit_status_when_the_child_exits_before_healthy");
    sb.config(
        &Conf::fixture(&sb, &[])
            .alive("2s")
            .exits("0", &child_code.to_string()),
    );
    let mut p = sb.start();
    assert_eq!(sb.wait_exit(&mut p, T), want, "{}", sb.diag());
    assert!(
        sb.logged(p.pid, "before it became healthy"),
        "{}",
        sb.diag()
    );
    assert!(
        !sb.pidfile().exists(),
        "a child never healthy gets no pidfile"
    );
    sb.assert_clean();
}

#[test]
fn never_healthy_exits_1_and_stops_the_child() {
    // The Go original exited 143 here.
    let sb = Sandbox::new("never_healthy_exits_1_and_stops_the_child");
    sb.config(
        &Conf::sleep(&sb)
            .probe(&["false"], "100ms")
            .upgrade_timeout("600ms"),
    );
    let mut p = sb.start();
    let c = sb.child_of(p.pid);
    assert_eq!(sb.wait_exit(&mut p, T), 1, "{}", sb.diag());
    assert!(!alive(c), "the unhealthy child must be stopped");
    assert!(sb.logged(p.pid, "did not become healthy"), "{}", sb.diag());
    assert!(!sb.pidfile().exists());
    sb.assert_clean();
}

#[test]
fn command_not_found_exits_1() {
    let sb = Sandbox::new("command_not_found_exits_1");
    // The control socket in a directory of the test's own: what psflip left
    // there is all there is to see.
    let ctl = sb.path("ctl");
    fs::create_dir_all(&ctl).unwrap();
    fs::set_permissions(&ctl, fs::Permissions::from_mode(0o700)).unwrap();
    let socket = ctl.join("psflip.sock");
    sb.config(
        &Conf::cmd(&sb, &["/nonexistent/e2e-no-such-program"])
            .top(&format!("control_socket = {}", q(socket.to_str().unwrap()))),
    );
    let mut p = sb.start();
    assert_eq!(sb.wait_exit(&mut p, T), 1, "{}", sb.diag());
    assert!(sb.logged(p.pid, "cannot start the child"), "{}", sb.diag());
    assert!(
        sb.psflip_log().contains("e2e-no-such-program"),
        "{}",
        sb.diag()
    );
    // No child ran, so psflip never was the service: no socket file is left
    // (not the name, not a temporary one beside it).
    let left: Vec<_> = fs::read_dir(&ctl)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    sb.assert_clean();
}

// --- what the child gets -------------------------------------------------------

/// The checks on a child's environment, for the first generation and after an
/// upgrade.
fn check_env(sb: &Sandbox, c: i32) {
    let env = environ(c);
    let get = |k: &str| {
        env.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("E2E_A"), Some("one"), "{env:?}");
    assert_eq!(get("E2E_B"), Some("two words = ok"), "{env:?}");
    assert_eq!(get("E2E_OVERRIDE"), Some("config"), "{env:?}");
    assert_eq!(get("E2E_INHERITED"), Some("yes"), "{env:?}");
    assert_eq!(get(TAG_VAR), Some(sb.tag.as_str()), "{env:?}");
    for internal in ["NOTIFY_SOCKET", "PSFLIP_READY_FD", "PSFLIP_GENERATION"] {
        assert_eq!(
            get(internal),
            None,
            "{internal} leaked into the child: {env:?}"
        );
    }
}

#[rstest]
#[case::list(false)]
#[case::table(true)]
fn env_reaches_the_child(#[case] table: bool) {
    let sb = Sandbox::new("env_reaches_the_child");
    let conf = if table {
        Conf::sleep(&sb)
            .top(r#"env = { E2E_A = "one", E2E_B = "two words = ok", E2E_OVERRIDE = "config" }"#)
    } else {
        Conf::sleep(&sb)
            .env("E2E_A", "one")
            .env("E2E_B", "two words = ok")
            .env("E2E_OVERRIDE", "config")
    };
    sb.config(&conf);
    let mut cmd = sb.psflip_cmd(&["-c", "psflip.toml"]);
    cmd.env("NOTIFY_SOCKET", sb.path("notify.sock"))
        .env("PSFLIP_READY_FD", "250")
        .env("E2E_INHERITED", "yes")
        .env("E2E_OVERRIDE", "outer");
    let mut p = sb.spawn(cmd);
    sb.must_name(p.pid);
    check_env(&sb, sb.child_of(p.pid));
    let s = sb.upgrade(p.pid);
    assert_eq!(sb.wait_exit(&mut p, T), 0);
    check_env(&sb, sb.child_of(s));
    finish(&sb, s);
}

#[rstest]
#[case::relative(false)]
#[case::absolute(true)]
fn workdir_is_the_childs_cwd(#[case] absolute: bool) {
    let sb = Sandbox::new("workdir_is_the_childs_cwd");
    let dir = sb.path("work/dir");
    fs::create_dir_all(&dir).unwrap();
    let mut conf = Conf::sleep(&sb);
    conf.workdir = Some(if absolute {
        dir.to_string_lossy().into_owned()
    } else {
        "work/dir".into()
    });
    let mut p = sb.start_with(&conf);
    let want = fs::canonicalize(&dir).unwrap();
    let cwd = |pid: i32| fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
    assert_eq!(cwd(sb.child_of(p.pid)), want);
    // psflip itself stays where it was started (relative paths keep working).
    assert_eq!(cwd(p.pid), fs::canonicalize(&sb.dir).unwrap());
    let s = sb.upgrade(p.pid);
    assert_eq!(sb.wait_exit(&mut p, T), 0);
    assert_eq!(cwd(sb.child_of(s)), want);
    finish(&sb, s);
}

#[test]
fn stdio_is_inherited() {
    let sb = Sandbox::new("stdio_is_inherited");
    sb.config(&Conf::fixture(&sb, &[]).env("CHILD_ECHO", "1"));
    let stdin = sb.write("stdin.txt", "input\n");
    let mut cmd = sb.psflip_cmd(&["-c", "psflip.toml"]);
    cmd.stdin(fs::File::open(&stdin).unwrap());
    let mut p = sb.spawn(cmd);
    let c = sb.child_of(p.pid);
    sb.must_start(c);
    for fd in 0..3 {
        let theirs = fd_target(c, fd);
        assert!(theirs.is_some(), "child fd {fd} is not open");
        assert_eq!(theirs, fd_target(p.pid, fd), "child fd {fd}");
    }
    assert_eq!(fd_target(c, 0).unwrap(), stdin);
    sb.must(T, "the child's stdout reaches psflip's stdout", || {
        fs::read_to_string(sb.out_log()).is_ok_and(|t| t.contains(&format!("stdout {c}\n")))
    });
    sb.must(T, "the child's stderr reaches psflip's stderr", || {
        sb.psflip_log().contains(&format!("stderr {c}\n"))
    });
    p.signal(Signal::SIGTERM);
    // The child died of the SIGTERM psflip passed on: a requested stop (issue #9).
    assert_eq!(sb.wait_exit(&mut p, T), 0, "{}", sb.diag());
    sb.assert_clean();
}

fn assert_clean_signal_state(sb: &Sandbox, c: i32) {
    assert_eq!(comm(c), "sleep", "the mask check needs a non-shell child");
    for key in ["SigBlk", "SigIgn"] {
        assert_eq!(
            status_field(c, key).as_deref(),
            Some(EMPTY_MASK),
            "child {c} {key}\n{}",
            sb.diag()
        );
    }
}

#[test]
fn child_has_an_empty_signal_mask_and_default_dispositions() {
    let sb = Sandbox::new("child_has_an_empty_signal_mask_and_default_dispositions");
    sb.config(&Conf::sleep(&sb));
    let mut cmd = sb.psflip_cmd(&["-c", "psflip.toml"]);
    // psflip's parent hands it a mask and ignored signals; none may reach the app.
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let mut set = SigSet::empty();
            set.add(Signal::SIGTERM);
            set.add(Signal::SIGUSR1);
            set.add(Signal::SIGWINCH);
            sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
            for sig in [
                Signal::SIGINT,
                Signal::SIGQUIT,
                Signal::SIGUSR2,
                Signal::SIGPIPE,
            ] {
                nix::sys::signal::signal(sig, SigHandler::SigIgn)?;
            }
            Ok(())
        });
    }
    let mut p = sb.spawn(cmd);
    sb.must_name(p.pid);
    let c = sb.child_of(p.pid);
    assert_clean_signal_state(&sb, c);
    // The successor keeps psflip's full mask across exec (PITFALLS 3): its child
    // must still start clean.
    let s = sb.upgrade(p.pid);
    assert_eq!(sb.wait_exit(&mut p, T), 0);
    // The successor resets no disposition: it inherits default ones.
    assert_eq!(
        status_field(s, "SigIgn").as_deref(),
        Some(EMPTY_MASK),
        "successor {s} SigIgn\n{}",
        sb.diag()
    );
    let c2 = sb.child_of(s);
    assert_clean_signal_state(&sb, c2);
    // The blocked TERM did not stick either: it stops the service.
    finish(&sb, s);
}

#[test]
fn sigint_is_forwarded_when_psflip_started_with_sigint_ignored() {
    // The Go original's child inherited the ignore, so Ctrl-C did nothing.
    let sb = Sandbox::new("sigint_is_forwarded_when_psflip_started_with_sigint_ignored");
    sb.config(&Conf::sleep(&sb));
    let mut cmd = sb.command("sh");
    cmd.args(["-c", "trap '' INT; exec \"$0\" -c psflip.toml"])
        .arg(bin());
    let mut p = sb.spawn(cmd);
    sb.must_name(p.pid);
    let c = sb.child_of(p.pid);
    assert_clean_signal_state(&sb, c);
    p.signal(Signal::SIGINT);
    // It died of the SIGINT psflip passed on: a requested stop (issue #9).
    assert_eq!(sb.wait_exit(&mut p, T), 0, "{}", sb.diag());
    assert!(!alive(c));
    sb.assert_clean();
}

#[test]
fn catchable_signals_are_forwarded_to_the_child() {
    let sb = Sandbox::new("catchable_signals_are_forwarded_to_the_child");
    sb.config(&Conf::fixture(&sb, &[]));
    let mut p = sb.start();
    let c = must_serve(&sb, &p);
    let sent = ["USR1", "USR2", "WINCH", "ALRM"];
    for (name, sig) in sent.iter().zip([
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
        Signal::SIGALRM,
    ]) {
        p.signal(sig);
        sb.must_get_signal(c, name);
    }
    p.signal(Signal::SIGTERM);
    // The child died of the SIGTERM psflip passed on: a requested stop (issue #9).
    assert_eq!(sb.wait_exit(&mut p, T), 0, "{}", sb.diag());
    assert_eq!(
        sb.signals_of(c),
        ["USR1", "USR2", "WINCH", "ALRM", "TERM"],
        "each signal exactly once, in order"
    );
    sb.assert_clean();
}

#[test]
fn the_upgrade_signal_is_not_forwarded_but_sighup_is_when_it_is_not_the_upgrade_signal() {
    let sb = Sandbox::new("upgrade_signal_not_forwarded");
    let mut conf = Conf::fixture(&sb, &[]);
    conf.upgrade_signal = Some("usr1".into());
    let mut p = sb.start_with(&conf);
    let c1 = sb.child_of(p.pid);
    p.signal(Signal::SIGUSR1);
    let s = sb.successor_of(p.pid);
    sb.must_name(s);
    assert_eq!(sb.wait_exit(&mut p, T), 0, "{}", sb.diag());
    assert_eq!(
        sb.signals_of(c1),
        ["TERM"],
        "the old child only gets the shutdown signal"
    );
    let c2 = sb.child_of(s);
    sb.must_start(c2);
    signal(s, Signal::SIGHUP);
    sb.must_get_signal(c2, "HUP");
    sb.must_die(s, "the successor whose child died of SIGHUP");
    assert!(
        sb.logged(s, "the child exited (signal SIGHUP)"),
        "{}",
        sb.diag()
    );
    sb.assert_clean();
}

/// 128+N — or 0 when N is a termination signal (SIGTERM, SIGINT, SIGQUIT): the
/// stop that was asked for (issue #9).
#[rstest]
#[case::term(Signal::SIGTERM, 0)]
#[case::int(Signal::SIGINT, 0)]
#[case::usr2(Signal::SIGUSR2, 140)]
#[case::alrm(Signal::SIGALRM, 142)]
fn a_plain_child_dies_of_a_forwarded_signal(#[case] sig: Signal, #[case] want: i32) {
    let sb = Sandbox::new("a_plain_child_dies_of_a_forwarded_signal");
    let mut p = sb.start_with(&Conf::sleep(&sb));
    let c = sb.child_of(p.pid);
    p.signal(sig);
    assert_eq!(sb.wait_exit(&mut p, T), want, "{}", sb.diag());
    assert!(!alive(c));
    assert!(!sb.pidfile().exists(), "the pidfile goes with the service");
    sb.assert_clean();
}

#[test]
fn child_gets_only_stdin_stdout_stderr() {
    // Every child of a Go successor inherited two internal pipe fds (3 and 4).
    let sb = Sandbox::new("child_gets_only_stdin_stdout_stderr");
    sb.config(&Conf::sleep(&sb));
    let extra = sb.write("extra.txt", "");
    // psflip itself inherits stray fds 7 and 8 (not close-on-exec).
    let mut cmd = sb.command("sh");
    cmd.args(["-c", "exec 7<\"$1\" 8>>\"$1\"; exec \"$0\" -c psflip.toml"])
        .arg(bin())
        .arg(&extra);
    let mut p = sb.spawn(cmd);
    sb.must_name(p.pid);
    let have = fds(p.pid);
    assert!(
        have.contains(&7) && have.contains(&8),
        "the test needs psflip to inherit fds 7 and 8: {have:?}"
    );
    let c = sb.child_of(p.pid);
    assert_eq!(fds(c), [0, 1, 2], "first child's fds");
    let mut active = p.pid;
    for round in 1..=2 {
        active = sb.upgrade(active);
        if round == 1 {
            assert_eq!(sb.wait_exit(&mut p, T), 0);
        }
        let c = sb.child_of(active);
        assert_eq!(
            fds(c),
            [0, 1, 2],
            "fds of the child of generation {}",
            round + 1
        );
    }
    finish(&sb, active);
}

#[test]
fn child_leads_its_own_process_group() {
    let sb = Sandbox::new("child_leads_its_own_process_group");
    let mut p = sb.start_with(&Conf::sleep(&sb));
    let c = sb.child_of(p.pid);
    assert_eq!(pgrp(c), Some(c));
    assert_ne!(pgrp(p.pid), Some(c));
    let s = sb.upgrade(p.pid);
    assert_eq!(sb.wait_exit(&mut p, T), 0);
    let c2 = sb.child_of(s);
    assert_eq!(pgrp(c2), Some(c2));
    finish(&sb, s);
}

#[test]
fn child_dies_with_psflip_even_by_sigkill() {
    let sb = Sandbox::new("child_dies_with_psflip_even_by_sigkill");
    let mut p = sb.start_with(&Conf::sleep(&sb));
    let c = sb.child_of(p.pid);
    p.signal(Signal::SIGKILL);
    assert_eq!(sb.wait_exit(&mut p, T), 137);
    sb.must_die(c, "the child of a SIGKILLed psflip");
    sb.assert_clean();

    // And the child of a successor dies with it.
    let mut p = sb.start();
    sb.must_name(p.pid);
    let s = sb.upgrade(p.pid);
    assert_eq!(sb.wait_exit(&mut p, T), 0);
    let c2 = sb.child_of(s);
    signal(s, Signal::SIGKILL);
    sb.must_die(c2, "the child of a SIGKILLed successor");
    sb.assert_clean();
}

#[test]
fn an_upgrade_signal_before_the_child_is_healthy_is_deferred() {
    // The Go original died of a signal in its first ~10 ms and dropped one sent
    // before the child was healthy.
    let sb = Sandbox::new("an_upgrade_signal_before_the_child_is_healthy_is_deferred");
    sb.config(&Conf::fixture(&sb, &[]).alive("400ms"));
    let mut p = sb.start();
    // As soon as psflip has blocked its signals (its first instructions), which is
    // before its event loop or its child exist.
    let t0 = Instant::now();
    loop {
        let blk = status_field(p.pid, "SigBlk");
        if blk.as_deref().is_some_and(|b| b != EMPTY_MASK) {
            break;
        }
        assert!(p.running(), "psflip exited at start\n{}", sb.diag());
        assert!(t0.elapsed() < T, "psflip never blocked its signals");
        std::thread::sleep(Duration::from_micros(100));
    }
    p.signal(Signal::SIGHUP);
    p.signal(Signal::SIGHUP);
    let s = sb.successor_of(p.pid);
    sb.must_name(s);
    assert_eq!(sb.wait_exit(&mut p, T), 0, "{}", sb.diag());
    let log = sb.log_of(p.pid);
    let at = |needle: &str| {
        log.iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("psflip never logged {needle:?}\n{}", sb.diag()))
    };
    assert!(at("upgrade requested before the child is healthy") < at("child is healthy; serving"));
    assert!(at("child is healthy; serving") < at("upgrade: starting the successor"));
    assert_eq!(sb.started_by(p.pid, "successor").len(), 1, "one upgrade");
    let c1 = sb.started_by(p.pid, "child")[0];
    assert_eq!(
        sb.signals_of(c1),
        ["TERM"],
        "the old child only got the shutdown signal"
    );
    finish(&sb, s);
}

fn bg_of(sb: &Sandbox, c: i32) -> i32 {
    sb.wait_for(T, "the fixture logs its background job", || {
        sb.events()
            .into_iter()
            .find(|e| e.pid == c && e.kind == "bg")
            .and_then(|e| e.rest.trim().parse().ok())
    })
}

#[test]
fn a_shell_childs_background_job_dies_with_it() {
    let sb = Sandbox::new("a_shell_childs_background_job_dies_with_it");
    sb.config(
        &Conf::fixture(&sb, &[])
            .alive("150ms")
            .env("CHILD_BG", "1")
            .exits("600", "7"),
    );
    let mut p = sb.start();
    let c = sb.child_of(p.pid);
    let bg = bg_of(&sb, c);
    assert_eq!(pgrp(bg), Some(c), "the job is in the child's group");
    assert_eq!(sb.wait_exit(&mut p, T), 7, "{}", sb.diag());
    sb.must_die(bg, "the background job of the exited child");
    sb.assert_clean();
}

#[test]
fn the_old_childs_background_job_dies_on_upgrade() {
    // The Go original left them behind as orphans.
    let sb = Sandbox::new("the_old_childs_background_job_dies_on_upgrade");
    let mut p = sb.start_with(&Conf::fixture(&sb, &[]).env("CHILD_BG", "1"));
    let c1 = sb.child_of(p.pid);
    let bg1 = bg_of(&sb, c1);
    let s = sb.upgrade(p.pid);
    assert_eq!(sb.wait_exit(&mut p, T), 0);
    sb.must_die(bg1, "the old child's background job");
    let c2 = sb.child_of(s);
    let bg2 = bg_of(&sb, c2);
    sb.terminate(s, "the psflip told to stop");
    sb.must_die(bg2, "the new child's background job");
    sb.assert_clean();
}

#[test]
fn ctrl_c_in_a_terminal_stops_the_child_once() {
    use rexpect::process::WaitStatus;
    let sb = Sandbox::new("ctrl_c_in_a_terminal_stops_the_child_once");
    sb.config(&Conf::fixture(&sb, &[]));
    // Not `sb.command`: rexpect gives the process the pty as its stdio.
    let mut cmd = Command::new(bin());
    cmd.args(["-c", "psflip.toml"])
        .current_dir(&sb.dir)
        .env(TAG_VAR, &sb.tag)
        .env("CHILD_LOG", sb.child_log())
        .env_remove("NOTIFY_SOCKET")
        .env_remove("PSFLIP_READY_FD");
    let mut pty =
        rexpect::session::spawn_command(cmd, Some(10_000)).expect("spawn psflip in a pty");
    let (_, line) = pty
        .exp_regex(r"started child \(pid \d+\)")
        .expect("psflip starts its child");
    let c: i32 = line
        .trim_start_matches("started child (pid ")
        .trim_end_matches(')')
        .parse()
        .unwrap();
    pty.exp_string("child is healthy")
        .expect("the child becomes healthy");
    let psflip = ppid(c).unwrap();
    assert_eq!(comm(psflip), "psflip");
    sb.must_start(c);
    // The terminal's foreground group is psflip's, not the child's: Ctrl-C reaches
    // the child only through psflip.
    let st = stat(c).unwrap();
    assert_eq!(st.pgrp, c);
    assert_eq!(
        st.tpgid, psflip,
        "psflip leads the terminal's foreground group"
    );
    pty.send_control('c').unwrap();
    let status = wait_for(T, || match pty.process().status() {
        Some(WaitStatus::StillAlive) => None,
        other => Some(other),
    })
    .unwrap_or_else(|| panic!("psflip did not exit on Ctrl-C\n{}", sb.diag()));
    // The child died of the SIGINT it was passed: the stop asked for (issue #9).
    assert!(
        matches!(status, Some(WaitStatus::Exited(_, 0))),
        "psflip's status: {status:?}\n{}",
        sb.diag()
    );
    assert_eq!(
        sb.signals_of(c),
        ["INT"],
        "the child gets SIGINT exactly once"
    );
    sb.assert_clean();
}

#[test]
fn quiet_silences_psflip_but_not_the_child() {
    let sb = Sandbox::new("quiet_silences_psflip_but_not_the_child");
    let mut p = sb.start_with(
        &Conf::fixture(&sb, &[])
            .env("CHILD_ECHO", "1")
            .top("quiet = true"),
    );
    let c = sb.wait_for(T, "psflip's child", || {
        children_of(p.pid).into_iter().find(|&c| comm(c) == "sh")
    });
    sb.must(T, "the child's stderr reaches psflip's stderr", || {
        sb.psflip_log().contains(&format!("stderr {c}\n"))
    });
    // Upgrades work the same (the successor found through the pidfile).
    p.signal(Signal::SIGHUP);
    let s = sb.wait_for(T, "the pidfile names a successor", || {
        sb.read_pidfile().filter(|&s| s != p.pid)
    });
    assert_eq!(sb.wait_exit(&mut p, T), 0, "{}", sb.diag());
    sb.terminate(s, "the psflip told to stop");
    assert!(
        !sb.psflip_log().contains("psflip["),
        "quiet psflip logged:\n{}",
        sb.psflip_log()
    );
    sb.assert_clean();
}

#[test]
fn realtime_signals_are_forwarded_to_the_child() {
    let sb = Sandbox::new("realtime_signals_are_forwarded_to_the_child");
    let mut p = sb.start_with(&Conf::sleep(&sb));
    let c = sb.child_of(p.pid);
    let rtmin = libc::SIGRTMIN();
    // SAFETY: kill(2) with integer arguments.
    assert_eq!(unsafe { libc::kill(p.pid, rtmin) }, 0);
    // `sleep` dies of an unhandled real-time signal.
    assert_eq!(sb.wait_exit(&mut p, T), 128 + rtmin, "{}", sb.diag());
    assert!(!alive(c));
    sb.assert_clean();
}
