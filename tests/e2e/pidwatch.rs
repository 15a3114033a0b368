//! pidwatch (SPEC §7, issue #3): a foreground process in front of the real
//! psflip. It forwards signals to the pid its pidfile names, outlives the first
//! psflip across upgrades, reaps every generation re-parented to it, and refuses
//! to follow or signal anything a pidfile names that is not its own.

use std::fs;

use nix::sys::signal::Signal;
use rstest::rstest;

use crate::util::*;

/// `pidwatch --pidfile <the sandbox's pidfile> FLAGS… -- CMD…`, started.
fn pidwatch<S: AsRef<str>>(sb: &Sandbox, flags: &[&str], cmd: &[S]) -> Psflip {
    let pidfile = sb.pidfile();
    let mut args = vec!["--pidfile", pidfile.to_str().unwrap()];
    args.extend_from_slice(flags);
    args.push("--");
    args.extend(cmd.iter().map(AsRef::as_ref));
    sb.spawn(sb.pidwatch_cmd(&args))
}

/// `pidwatch FLAGS… -- psflip -c psflip.toml`, with `conf` written first.
fn pidwatch_psflip(sb: &Sandbox, flags: &[&str], conf: &Conf) -> Psflip {
    sb.config(conf);
    let psflip = bin();
    pidwatch(sb, flags, &[psflip.to_str().unwrap(), "-c", "psflip.toml"])
}

/// The first psflip: pidwatch's CMD, its direct child (once it has exec'd).
fn first_psflip(sb: &Sandbox, pw: i32) -> i32 {
    sb.wait_for(T, &format!("pidwatch {pw} starts psflip"), || {
        children_of(pw).into_iter().find(|&p| comm(p) == "psflip")
    })
}

/// The fixture pidwatch runs as its CMD (waits until it has logged its start).
fn fixture_cmd(sb: &Sandbox, pw: i32) -> i32 {
    let c = sb.wait_for(T, "the fixture logs that it started", || {
        sb.events()
            .into_iter()
            .find(|e| e.kind == "started")
            .map(|e| e.pid)
    });
    assert_eq!(ppid(c), Some(pw), "CMD is pidwatch's child\n{}", sb.diag());
    c
}

/// A quick service: `sleep 1000`, healthy after 150 ms.
fn quick(sb: &Sandbox) -> Conf {
    Conf::sleep(sb).alive("150ms")
}

/// The upgrade signal sent to *pidwatch*, which forwards it to the psflip the
/// pidfile names (`old`): waits until the successor names itself in the
/// pidfile and `old` is dead; returns the successor.
fn upgrade_via(sb: &Sandbox, pw: i32, old: i32) -> i32 {
    sb.upgrade_by(pw, old)
}

/// Whether `pid` lingers as a zombie (exited, never reaped).
fn zombie(pid: i32) -> bool {
    stat(pid).is_some_and(|s| s.state == 'Z')
}

/// The highest pid the kernel hands out, plus one: a pid no process can have.
fn impossible_pid() -> u64 {
    fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4_194_304)
}

// --- following psflip ------------------------------------------------------------

#[test]
fn pidwatch_follows_psflip_through_upgrades_and_reaps_every_generation() {
    let sb = Sandbox::new("pidwatch_follows_psflip_through_upgrades");
    let mut pw = pidwatch_psflip(&sb, &[], &quick(&sb));
    let p1 = first_psflip(&sb, pw.pid);
    // Written once the child is healthy; pidwatch waited for it.
    sb.must_name(p1);
    sb.must_pidwatch_log(pw.pid, &format!("following pid {p1}"));
    assert!(pw.running(), "pidwatch stays in the foreground");

    let mut old = p1;
    let mut old_child = sb.child_of(p1);
    for round in 1..=3 {
        let s = upgrade_via(&sb, pw.pid, old);
        if round == 1 {
            // The first psflip was CMD: pidwatch saw its status.
            sb.must_pidwatch_log(pw.pid, "the command exited (exit code 0)");
        }
        assert!(
            pw.running(),
            "round {round}: pidwatch outlives psflip {old}\n{}",
            sb.diag()
        );
        sb.must(
            T,
            &format!("successor {s} is re-parented to pidwatch"),
            || ppid(s) == Some(pw.pid),
        );
        sb.must(T, &format!("psflip {old} is reaped by pidwatch"), || {
            !zombie(old) && zombie_children(pw.pid).is_empty()
        });
        sb.must_pidwatch_log(pw.pid, &format!("following pid {s}"));
        sb.must_die(old_child, "the old child");
        let c = sb.child_of(s);
        sb.assert_alive(c, "the new child");
        assert_eq!(ppid(c), Some(s));
        assert!(
            !sb.pidwatch_logged(pw.pid, "dropped"),
            "no signal dropped\n{}",
            sb.diag()
        );
        old = s;
        old_child = c;
    }

    signal(pw.pid, Signal::SIGTERM);
    assert_eq!(sb.wait_exit(&mut pw, T), 0, "{}", sb.diag());
    assert!(!alive(old) && !alive(old_child), "{}", sb.diag());
    assert!(
        !sb.pidfile().exists(),
        "the last psflip removed its pidfile"
    );
    sb.assert_clean();
}

/// SIGTERM to pidwatch goes to the psflip the pidfile names, which stops its
/// child and removes the pidfile; pidwatch then exits 0. Before any upgrade
/// that psflip is CMD; after one, a successor re-parented to pidwatch.
#[rstest]
#[case::before_any_upgrade(0)]
#[case::after_an_upgrade(1)]
fn sigterm_to_pidwatch_stops_the_service_and_it_exits_0(#[case] upgrades: usize) {
    let sb = Sandbox::new(&format!("sigterm_to_pidwatch_stops_the_service_{upgrades}"));
    let mut pw = pidwatch_psflip(&sb, &[], &Conf::fixture(&sb, &[]).alive("150ms"));
    let mut active = first_psflip(&sb, pw.pid);
    sb.must_name(active);
    for _ in 0..upgrades {
        active = upgrade_via(&sb, pw.pid, active);
        sb.must_pidwatch_log(pw.pid, &format!("following pid {active}"));
    }
    let c = sb.child_of(active);
    sb.must_start(c);

    signal(pw.pid, Signal::SIGTERM);
    assert_eq!(sb.wait_exit(&mut pw, T), 0, "{}", sb.diag());
    assert_eq!(
        sb.signals_of(c),
        ["TERM"],
        "the child got the forwarded SIGTERM, once\n{}",
        sb.diag()
    );
    sb.must_log(active, "the child exited (signal SIGTERM)");
    assert!(!alive(active) && !alive(c), "{}", sb.diag());
    assert!(!sb.pidfile().exists(), "psflip removed its pidfile");
    sb.assert_clean();
}

/// `--poll`: pidwatch is no subreaper, so the successors re-parent elsewhere;
/// it follows them through the pidfile all the same, and notices the last one's
/// death by polling — here a SIGKILL, which leaves the pidfile behind.
#[test]
fn pidwatch_poll_follows_successors_it_is_not_the_parent_of() {
    let sb = Sandbox::new("pidwatch_poll_follows_successors");
    let mut pw = pidwatch_psflip(&sb, &["--poll"], &quick(&sb));
    let p1 = first_psflip(&sb, pw.pid);
    sb.must_name(p1);
    sb.must_pidwatch_log(pw.pid, &format!("following pid {p1}"));

    let mut old = p1;
    for round in 1..=2 {
        let s = upgrade_via(&sb, pw.pid, old);
        sb.must_pidwatch_log(pw.pid, &format!("following pid {s}"));
        assert!(pw.running(), "round {round}\n{}", sb.diag());
        let parent = ppid(s).unwrap_or(0);
        assert_ne!(
            parent,
            pw.pid,
            "round {round}: with --poll, pidwatch is not a subreaper\n{}",
            sb.diag()
        );
        assert_ne!(parent, old);
        old = s;
    }
    let c = sb.child_of(old);
    sb.assert_alive(c, "the active child");

    // The active psflip dies without a word (its child dies with it,
    // pdeathsig): the pidfile still names it, pidwatch sees the pid is gone.
    signal(old, Signal::SIGKILL);
    assert_eq!(sb.wait_exit(&mut pw, T), 0, "{}", sb.diag());
    assert_eq!(sb.read_pidfile(), Some(old), "the pidfile was left behind");
    assert!(
        sb.pidwatch_logged(pw.pid, &format!("names pid {old}, which is not running")),
        "{}",
        sb.diag()
    );
    sb.must_die(c, "the orphaned child");
    sb.assert_clean();
}

/// `--poll`, stopped the usual way: TERM to pidwatch reaches the successor
/// (not pidwatch's child), which stops and removes the pidfile.
#[test]
fn pidwatch_poll_sigterm_stops_the_service() {
    let sb = Sandbox::new("pidwatch_poll_sigterm_stops_the_service");
    let mut pw = pidwatch_psflip(&sb, &["--poll"], &quick(&sb));
    let p1 = first_psflip(&sb, pw.pid);
    sb.must_name(p1);
    let s = upgrade_via(&sb, pw.pid, p1);
    sb.must_pidwatch_log(pw.pid, &format!("following pid {s}"));
    let c = sb.child_of(s);
    signal(pw.pid, Signal::SIGTERM);
    assert_eq!(sb.wait_exit(&mut pw, T), 0, "{}", sb.diag());
    sb.must_die(s, "the successor");
    assert!(!alive(c));
    assert!(!sb.pidfile().exists());
    sb.assert_clean();
}

// --- CMD ends before any pidfile -------------------------------------------------

#[rstest]
#[case::psflip_with_an_invalid_config(None, 2)]
#[case::exit_7(Some("exit 7"), 7)]
#[case::killed_by_a_signal(Some("kill -USR1 $$"), 138)]
fn cmd_exiting_before_any_pidfile_gives_its_status(
    #[case] script: Option<&str>,
    #[case] code: i32,
) {
    let sb = Sandbox::new(&format!("cmd_exiting_before_any_pidfile_{code}"));
    let mut pw = match script {
        None => {
            sb.write("psflip.toml", "cmd = 42\n");
            let psflip = bin();
            pidwatch(&sb, &[], &[psflip.to_str().unwrap(), "-c", "psflip.toml"])
        }
        Some(script) => pidwatch(&sb, &[], &["sh", "-c", script]),
    };
    assert_eq!(sb.wait_exit(&mut pw, T), code, "{}", sb.diag());
    assert!(!sb.pidfile().exists());
    assert!(
        sb.pidwatch_logged(pw.pid, "the command exited"),
        "{}",
        sb.diag()
    );
    if script.is_none() {
        assert!(sb.psflip_log().contains("psflip: "), "psflip said why");
    }
    sb.assert_clean();
}

// --- what a pidfile may say ----------------------------------------------------

/// No pidfile ever: pidwatch waits while CMD runs, and every signal goes to
/// CMD meanwhile; CMD's death by SIGTERM is pidwatch's status.
#[test]
fn signals_go_to_cmd_while_no_pidfile_exists() {
    let sb = Sandbox::new("signals_go_to_cmd_while_no_pidfile_exists");
    let mut pw = pidwatch(&sb, &[], &["sh", fixture("child.sh").to_str().unwrap()]);
    let c = fixture_cmd(&sb, pw.pid);
    signal(pw.pid, Signal::SIGUSR1);
    sb.must_get_signal(c, "USR1");
    signal(pw.pid, Signal::SIGUSR2);
    sb.must_get_signal(c, "USR2");
    assert!(pw.running(), "pidwatch waits while CMD runs");
    signal(pw.pid, Signal::SIGTERM);
    assert_eq!(sb.wait_exit(&mut pw, T), 143, "{}", sb.diag());
    assert_eq!(sb.signals_of(c), ["USR1", "USR2", "TERM"]);
    assert!(sb.pidwatch_logged(pw.pid, "the command exited (signal SIGTERM)"));
    sb.assert_clean();
}

/// What a planted pidfile may name, and what pidwatch logs about it.
#[derive(Clone, Copy, Debug)]
enum Planted {
    Garbage,
    DeadPid,
    /// A live process of the test's, not a descendant of pidwatch.
    Stranger,
}

/// A pidfile that is there from the start but names nothing pidwatch may
/// follow: logged, not followed; signals go to CMD, and the named process (if
/// any) is never signalled.
#[rstest]
#[case::garbage(Planted::Garbage)]
#[case::a_dead_pid(Planted::DeadPid)]
#[case::a_process_that_is_not_a_descendant(Planted::Stranger)]
fn a_pidfile_naming_nothing_followable_is_logged_and_not_followed(#[case] planted: Planted) {
    let sb = Sandbox::new(&format!("a_pidfile_naming_nothing_followable_{planted:?}"));
    let mut stranger = None;
    let (content, expected_log) = match planted {
        Planted::Garbage => (
            "12abc\n".to_string(),
            "the pidfile holds no pid".to_string(),
        ),
        Planted::DeadPid => {
            let pid = impossible_pid();
            (
                format!("{pid}\n"),
                format!("the pidfile names pid {pid}, which is not running"),
            )
        }
        Planted::Stranger => {
            let mut cmd = sb.command("sleep");
            cmd.arg("1000");
            let p = sb.spawn(cmd);
            let line = format!(
                "the pidfile names pid {}, which is not ours to signal; ignoring it",
                p.pid
            );
            let content = format!("{}\n", p.pid);
            stranger = Some(p);
            (content, line)
        }
    };
    sb.write("psflip.pid", &content);

    let mut pw = pidwatch(&sb, &[], &["sh", fixture("child.sh").to_str().unwrap()]);
    let c = fixture_cmd(&sb, pw.pid);
    sb.must_pidwatch_log(pw.pid, &expected_log);
    signal(pw.pid, Signal::SIGUSR1);
    sb.must_get_signal(c, "USR1");
    signal(pw.pid, Signal::SIGTERM);
    assert_eq!(
        sb.wait_exit(&mut pw, T),
        143,
        "CMD's status: nothing was ever followed\n{}",
        sb.diag()
    );
    assert_eq!(sb.signals_of(c), ["USR1", "TERM"], "{}", sb.diag());
    assert!(!sb.pidwatch_logged(pw.pid, "following pid"));
    assert_eq!(
        sb.pidwatch_log_of(pw.pid)
            .iter()
            .filter(|l| l.contains(&expected_log))
            .count(),
        1,
        "logged once, not at every poll\n{}",
        sb.diag()
    );
    assert_eq!(
        fs::read_to_string(sb.pidfile()).unwrap(),
        content,
        "pidwatch leaves the pidfile alone"
    );
    if let Some(mut s) = stranger {
        assert!(
            s.running(),
            "the stranger was signalled (USR1 or TERM would have killed it)\n{}",
            sb.diag()
        );
        s.signal(Signal::SIGKILL);
        assert_eq!(sb.wait_exit(&mut s, T), 137);
    }
    sb.assert_clean();
}

/// Once followed, a psflip is followed until it dies, even if its pidfile goes
/// away (removed by hand): pidwatch must not report the service gone while it
/// runs, and its signals still reach it.
#[test]
fn a_followed_psflip_is_followed_until_it_dies_even_without_its_pidfile() {
    let sb = Sandbox::new("a_followed_psflip_is_followed_without_its_pidfile");
    let mut pw = pidwatch_psflip(&sb, &[], &Conf::fixture(&sb, &[]).alive("150ms"));
    let p1 = first_psflip(&sb, pw.pid);
    sb.must_name(p1);
    let s = upgrade_via(&sb, pw.pid, p1);
    sb.must_pidwatch_log(pw.pid, &format!("following pid {s}"));
    let c = sb.child_of(s);
    sb.must_start(c);

    fs::remove_file(sb.pidfile()).unwrap();
    sb.must_pidwatch_log(pw.pid, "the pidfile is gone");
    sb.must_pidwatch_log(pw.pid, &format!("still following pid {s}"));
    assert!(
        pw.running(),
        "pidwatch left a running service\n{}",
        sb.diag()
    );

    signal(pw.pid, Signal::SIGUSR1);
    sb.must_get_signal(c, "USR1");
    signal(pw.pid, Signal::SIGTERM);
    assert_eq!(sb.wait_exit(&mut pw, T), 0, "{}", sb.diag());
    assert_eq!(sb.signals_of(c), ["USR1", "TERM"]);
    assert!(!alive(s), "pidwatch exited only once psflip was gone");
    sb.assert_clean();
}

// --- usage ---------------------------------------------------------------------

#[rstest]
#[case::no_pidfile(&["--", "true"], "--pidfile")]
#[case::no_cmd(&["--pidfile", "x.pid"], "<CMD>")]
#[case::empty_cmd(&["--pidfile", "x.pid", "--"], "<CMD>")]
#[case::cmd_not_found(&["--pidfile", "x.pid", "--", "no-such-cmd-e2e"], "no-such-cmd-e2e")]
#[case::cmd_not_found_quiet(&["-q", "--pidfile", "x.pid", "--", "no-such-cmd-e2e"], "no-such-cmd-e2e")]
fn bad_usage_exits_2_with_a_message(#[case] args: &[&str], #[case] message: &str) {
    let sb = Sandbox::new("pidwatch_bad_usage_exits_2");
    let mut pw = sb.spawn(sb.pidwatch_cmd(args));
    assert_eq!(sb.wait_exit(&mut pw, T), 2, "{}", sb.diag());
    let err = sb.psflip_log();
    assert!(
        err.contains(message),
        "the message names {message:?}: {err:?}"
    );
    assert!(!sb.path("x.pid").exists());
    sb.assert_clean();
}

// --- -q ------------------------------------------------------------------------

#[test]
fn quiet_silences_pidwatch_but_not_cmd() {
    let sb = Sandbox::new("pidwatch_quiet");
    sb.write("psflip.pid", "garbage\n");
    let mut pw = pidwatch_psflip(&sb, &["-q"], &quick(&sb));
    let p1 = first_psflip(&sb, pw.pid);
    sb.must_name(p1);
    let s = upgrade_via(&sb, pw.pid, p1);
    sb.must(T, "the successor is re-parented to pidwatch", || {
        ppid(s) == Some(pw.pid)
    });
    signal(pw.pid, Signal::SIGTERM);
    assert_eq!(sb.wait_exit(&mut pw, T), 0, "{}", sb.diag());
    let err = sb.psflip_log();
    assert!(
        err.contains(&format!("psflip[{s}]: ")),
        "psflip's own lines pass through: {err:?}"
    );
    assert!(
        !err.lines().any(|l| l.starts_with("pidwatch")),
        "pidwatch -q logged something: {err:?}"
    );
    sb.assert_clean();
}

/// Every signal is forwarded, real-time ones included: SIGRTMIN to pidwatch reaches
/// the followed psflip, which forwards it to its child (a `sleep`, which dies of
/// it); psflip exits with 128 + SIGRTMIN and removes its pidfile; pidwatch exits 0.
#[test]
fn realtime_signals_are_forwarded_to_the_followed_psflip() {
    let sb = Sandbox::new("pidwatch_realtime_signals_are_forwarded");
    let mut pw = pidwatch_psflip(&sb, &[], &Conf::sleep(&sb).alive("150ms"));
    let p1 = first_psflip(&sb, pw.pid);
    sb.must_name(p1);
    sb.must_pidwatch_log(pw.pid, &format!("following pid {p1}"));
    let c = sb.child_of(p1);
    let rtmin = libc::SIGRTMIN();
    // SAFETY: kill(2) with integer arguments.
    assert_eq!(unsafe { libc::kill(pw.pid, rtmin) }, 0);
    assert_eq!(sb.wait_exit(&mut pw, T), 0, "{}", sb.diag());
    sb.must_log(p1, &format!("the child exited (signal {rtmin})"));
    assert!(!alive(p1) && !alive(c), "{}", sb.diag());
    sb.assert_clean();
}

// --- --exit-status ---------------------------------------------------------------

/// After an upgrade the service is the successor; how it ends is what
/// `--exit-status` relays: its child killed by SIGKILL makes it exit 137; a
/// stop (TERM through pidwatch, the child dying of it) is a clean exit, 0
/// (issue #9). Without the flag, pidwatch exits 0 either way, as the
/// reference does.
#[rstest]
#[case::crash_relayed(&["--exit-status"], Signal::SIGKILL, 137)]
#[case::stop_relayed(&["--exit-status"], Signal::SIGTERM, 0)]
#[case::crash_not_relayed(&[], Signal::SIGKILL, 0)]
fn exit_status_relays_how_the_service_ended(
    #[case] flags: &[&str],
    #[case] how: Signal,
    #[case] expected: i32,
) {
    let sb = Sandbox::new(&format!(
        "pidwatch_exit_status_{}_{}",
        flags.len(),
        how as i32
    ));
    let mut pw = pidwatch_psflip(&sb, flags, &quick(&sb));
    let p1 = first_psflip(&sb, pw.pid);
    sb.must_name(p1);
    let s = upgrade_via(&sb, pw.pid, p1);
    let child = sb.child_of(s);
    // The old psflip is dead (a zombie maybe, not yet reaped): the successor
    // was re-parented as it died, so its status will be pidwatch's to reap.
    assert_eq!(ppid(s), Some(pw.pid), "{}", sb.diag());
    // Crashed at once: pidwatch learnt of the successor when it wrote the
    // pidfile, not at a reading that would come too late (the crash removes it).
    match how {
        // A crash of the service: its child dies, psflip exits 128 + 9.
        Signal::SIGKILL => signal(child, Signal::SIGKILL),
        // A stop through pidwatch, as runit's `sv stop` does it.
        _ => signal(pw.pid, how),
    }
    assert_eq!(sb.wait_exit(&mut pw, T), expected, "{}", sb.diag());
    sb.assert_clean();
}

/// pidwatch learns that a successor named itself in the pidfile as it
/// happens, not at its next poll: before it learns of anything that happened
/// after — here the old psflip's exit, which follows the successor's write (the
/// successor writes, then reports ready; only then does the old one stop).
#[test]
fn pidwatch_follows_a_successor_as_soon_as_it_names_itself() {
    let sb = Sandbox::new("pidwatch_follows_a_successor_at_once");
    let mut pw = pidwatch_psflip(&sb, &[], &quick(&sb));
    let p1 = first_psflip(&sb, pw.pid);
    sb.must_name(p1);
    sb.must_pidwatch_log(pw.pid, &format!("following pid {p1}"));
    let s = upgrade_via(&sb, pw.pid, p1);
    sb.must_pidwatch_log(pw.pid, "the command exited (exit code 0)");
    let log = sb.pidwatch_log_of(pw.pid);
    let at = |needle: &str| log.iter().position(|l| l.contains(needle));
    let followed = at(&format!("following pid {s}"));
    let exited = at("the command exited");
    assert!(
        followed.is_some() && followed < exited,
        "the successor {s} is followed before the old psflip's exit is seen\n{}",
        sb.diag()
    );
    assert!(
        !sb.pidwatch_logged(pw.pid, "cannot watch for changes"),
        "{}",
        sb.diag()
    );
    signal(pw.pid, Signal::SIGTERM);
    assert_eq!(sb.wait_exit(&mut pw, T), 0, "{}", sb.diag());
    sb.assert_clean();
}

/// The successor's child crashes right after the successor wrote the
/// pidfile, while the old psflip still waits `shutdown.delay` (long here, so
/// the crash lands within it whatever the machine's load): the old psflip
/// takes the service back and names itself again. pidwatch, which may have
/// followed the successor meanwhile, stays, follows the old psflip again, and
/// relays how the service finally ends.
#[test]
fn a_successor_crashing_right_after_naming_itself_hands_the_service_back() {
    let sb = Sandbox::new("pidwatch_successor_crashes_at_once");
    let mut pw = pidwatch_psflip(&sb, &["--exit-status"], &quick(&sb).shutdown_delay("60s"));
    let p1 = first_psflip(&sb, pw.pid);
    sb.must_name(p1);
    let old_child = sb.child_of(p1);
    signal(pw.pid, Signal::SIGHUP);
    let s = sb.successor_of(p1);
    let new_child = sb.child_of(s);
    sb.must_name(s);
    signal(new_child, Signal::SIGKILL);
    sb.must_die(s, "the successor");
    sb.must_name(p1);
    sb.assert_alive(old_child, "the old child, never signalled");
    assert!(
        pw.running(),
        "pidwatch stays: the service lives on\n{}",
        sb.diag()
    );

    // The service ends: SIGUSR1 through pidwatch reaches the old child (a
    // `sleep`, which dies of it), so psflip exits 128 + 10.
    signal(pw.pid, Signal::SIGUSR1);
    assert_eq!(sb.wait_exit(&mut pw, T), 138, "{}", sb.diag());
    assert!(
        sb.pidwatch_logged(
            pw.pid,
            &format!("the service (pid {p1}) ended with exit code 138")
        ),
        "{}",
        sb.diag()
    );
    sb.assert_clean();
}

/// What pidwatch cannot know it does not relay: stopped (SIGSTOP: starved of
/// CPU, to the extreme) while a successor names itself, crashes, removes the
/// pidfile and exits, it never reads whom the pidfile named. It does not take
/// the old psflip's clean exit (0, after handing over) for the service's: it
/// says the status is unknown.
#[test]
fn a_pidfile_gone_before_pidwatch_could_read_it_tells_no_lie() {
    let sb = Sandbox::new("pidwatch_pidfile_gone_unread");
    let mut pw = pidwatch_psflip(&sb, &["--exit-status"], &quick(&sb));
    let p1 = first_psflip(&sb, pw.pid);
    sb.must_name(p1);
    sb.must_pidwatch_log(pw.pid, &format!("following pid {p1}"));

    signal(pw.pid, Signal::SIGSTOP);
    sb.must(T, "pidwatch is stopped", || {
        stat(pw.pid).is_some_and(|st| st.state == 'T')
    });
    let s = sb.upgrade(p1);
    let child = sb.child_of(s);
    signal(child, Signal::SIGKILL);
    sb.must(T, "the successor has exited, unreaped", || zombie(s));
    assert!(!sb.pidfile().exists(), "the successor removed its pidfile");
    assert!(zombie(p1), "the old psflip is not reaped yet");
    signal(pw.pid, Signal::SIGCONT);

    assert_eq!(sb.wait_exit(&mut pw, T), 0, "{}", sb.diag());
    assert!(
        sb.pidwatch_logged(pw.pid, "exit status are unknown"),
        "{}",
        sb.diag()
    );
    assert!(
        !sb.pidwatch_logged(pw.pid, "ended with"),
        "no status relayed as the service's\n{}",
        sb.diag()
    );
    sb.assert_clean();
}

/// The pidfile's directory does not exist when pidwatch starts (CMD creates
/// it): pidwatch says once that it cannot watch it and reads the pidfile
/// every 100 ms meanwhile; once the directory exists it is watched after all —
/// by the time pidwatch follows the first psflip (a reading at a poll, which
/// first tries the watch again, or at a change, which needs it), so a
/// successor is then followed as soon as it names itself.
#[test]
fn a_pidfile_directory_created_later_is_watched_once_it_exists() {
    let sb = Sandbox::new("pidwatch_pidfile_directory_created_later");
    let pidfile = sb.path("later/psflip.pid");
    let mut conf = quick(&sb);
    conf.pidfile = Some(pidfile.clone());
    sb.config(&conf);
    let psflip = bin();
    let mut pw = sb.spawn(sb.pidwatch_cmd(&[
        "--pidfile",
        pidfile.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "mkdir later && exec \"$0\" -c psflip.toml",
        psflip.to_str().unwrap(),
    ]));
    let named = |pid: i32| {
        fs::read_to_string(&pidfile)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            == Some(pid)
    };
    let p1 = first_psflip(&sb, pw.pid);
    sb.must(T, "the pidfile names the first psflip", || named(p1));
    sb.must_pidwatch_log(pw.pid, &format!("following pid {p1}"));
    let unwatched: Vec<String> = sb
        .pidwatch_log_of(pw.pid)
        .into_iter()
        .filter(|l| l.contains("cannot watch for changes"))
        .collect();
    assert_eq!(unwatched.len(), 1, "said once\n{}", sb.diag());
    assert!(
        unwatched[0].contains("later/psflip.pid"),
        "names the pidfile\n{}",
        sb.diag()
    );

    signal(pw.pid, Signal::SIGHUP);
    let s = sb.successor_of(p1);
    sb.must(T, "the pidfile names the successor", || named(s));
    sb.must_die(p1, "the old psflip");
    sb.must_pidwatch_log(pw.pid, "the command exited (exit code 0)");
    let log = sb.pidwatch_log_of(pw.pid);
    let at = |needle: &str| log.iter().position(|l| l.contains(needle));
    let followed = at(&format!("following pid {s}"));
    assert!(
        followed.is_some() && followed < at("the command exited"),
        "the successor {s} is followed before the old psflip's exit is seen\n{}",
        sb.diag()
    );
    signal(pw.pid, Signal::SIGTERM);
    assert_eq!(sb.wait_exit(&mut pw, T), 0, "{}", sb.diag());
    assert!(!pidfile.exists(), "psflip removed its pidfile");
    sb.assert_clean();
}
