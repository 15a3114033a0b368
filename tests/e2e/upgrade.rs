//! The upgrade protocol (SPEC §5): one test per row of the failure table, each
//! checking the outcome, that the old child kept serving untouched, and that a
//! later upgrade still succeeds (I3); then I1, I4, `shutdown.delay`, I2 and I9.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rstest::rstest;

use crate::util::*;

/// A sandbox serving the fixture: the sandbox, its configuration, psflip and
/// its child.
fn serving_fixture(name: &str) -> (Sandbox, Conf, Psflip, i32) {
    serving_fixture_as(name, |c| c)
}

/// [`serving_fixture`], serving the fixture's configuration changed by
/// `first` (the configuration returned is the fixture's own).
fn serving_fixture_as(
    name: &str,
    first: impl FnOnce(Conf) -> Conf,
) -> (Sandbox, Conf, Psflip, i32) {
    let sb = Sandbox::new(name);
    let conf = Conf::fixture(&sb, &[]);
    let (p, c1) = serve(&sb, &first(conf.clone()));
    (sb, conf, p, c1)
}

/// An upgrade by SIGHUP to `conf`: the successor and its child.
fn sighup_to(sb: &Sandbox, p: &Psflip, conf: &Conf) -> (i32, i32) {
    sb.config(conf);
    p.signal(Signal::SIGHUP);
    let s = sb.successor_of(p.pid);
    (s, sb.child_of(s))
}

/// I3 after a failed upgrade, then an upgrade by signal (`util::recovers_by`).
fn recovers(sb: &Sandbox, p: &mut Psflip, c1: i32, conf: &Conf) {
    recovers_by(sb, p, c1, conf, |sb, p| sb.upgrade(p.pid));
}

/// Nanoseconds since the epoch of the file's last modification.
fn mtime_ns(path: &std::path::Path) -> u128 {
    let m = fs::metadata(path).unwrap();
    m.mtime() as u128 * 1_000_000_000 + m.mtime_nsec() as u128
}

// --- a: success ----------------------------------------------------------------

#[test]
fn a_successful_upgrade_hands_over_and_the_old_psflip_exits_0() {
    let sb = Sandbox::new("a_successful_upgrade_hands_over");
    let (mut p, c1) = serve(&sb, &Conf::fixture(&sb, &[]));
    let old = p.pid;
    p.signal(Signal::SIGHUP);
    let s = sb.successor_of(old);
    sb.must_name(s);
    let written = mtime_ns(&sb.pidfile());
    sb.must_get_signal(c1, "TERM");
    // The Go original exited 143 (or 1) here.
    assert_eq!(sb.wait_exit(&mut p, T), 0, "{}", sb.diag());
    assert_eq!(sb.signals_of(c1), ["TERM"]);
    let term = sb
        .events()
        .into_iter()
        .find(|e| e.pid == c1 && e.kind == "signal")
        .unwrap();
    assert!(
        term.ns >= written,
        "I1: the old child was signalled before the successor wrote the pidfile"
    );
    let c2 = sb.child_of(s);
    sb.must_start(c2);
    sb.must(T, "only the successor and its child remain", || {
        tagged(&sb.tag)
            .into_iter()
            .all(|x| x == s || pgrp(x) == Some(c2))
    });
    sb.assert_alive(s, "the successor");
    sb.assert_alive(c2, "the new child");
    assert_eq!(
        sb.read_pidfile(),
        Some(s),
        "the old generation left the pidfile alone"
    );
    sb.must_log(s, "the previous generation has exited");

    // The new generation upgrades in turn.
    let s2 = sb.upgrade(s);
    assert_eq!(sb.signals_of(c2), ["TERM"]);
    finish(&sb, s2);
}

#[test]
fn an_upgrade_without_a_pidfile() {
    let sb = Sandbox::new("an_upgrade_without_a_pidfile");
    let (mut p, c1) = {
        sb.config(&Conf::fixture(&sb, &[]).no_pidfile());
        let p = sb.start();
        sb.must_log(p.pid, "serving");
        let c = sb.child_of(p.pid);
        (p, c)
    };
    p.signal(Signal::SIGHUP);
    let s = sb.successor_of(p.pid);
    sb.must_log(s, "taking over");
    assert_eq!(sb.wait_exit(&mut p, T), 0, "{}", sb.diag());
    assert_eq!(sb.signals_of(c1), ["TERM"]);
    assert!(!sb.pidfile().exists());
    let c2 = sb.child_of(s);
    sb.assert_alive(c2, "the new child");
    finish(&sb, s);
}

// --- b–f: the successor fails --------------------------------------------------

#[test]
fn b_new_child_exits_before_healthy() {
    let (sb, conf, mut p, c1) = serving_fixture("b_new_child_exits_before_healthy");
    let (s, c2) = sighup_to(&sb, &p, &conf.clone().alive("1s").exits("50", "4"));
    sb.must_log(p.pid, "upgrade failed: the successor exited (exit code 4)");
    sb.must_log(s, "before it became healthy");
    assert!(!alive(s) && !alive(c2));
    recovers(&sb, &mut p, c1, &conf);
}

#[test]
fn c_new_child_not_healthy_within_upgrade_timeout() {
    let (sb, conf, mut p, c1) = serving_fixture("c_new_child_not_healthy_within_upgrade_timeout");
    let (s, c2) = sighup_to(&sb, &p, &never_healthy(&conf));
    sb.must_log(p.pid, "upgrade failed: the successor exited (exit code 1)");
    sb.must_log(s, "did not become healthy within upgrade.timeout");
    sb.must_log(s, "stopping it");
    // Killed with its group at once (SIGKILL cannot be trapped: nothing logged).
    assert!(
        sb.signals_of(c2).is_empty(),
        "the new child was killed, not asked to stop: {:?}",
        sb.signals_of(c2)
    );
    assert!(!alive(s) && !alive(c2));
    recovers(&sb, &mut p, c1, &conf);
}

#[test]
fn d_successor_crashes_before_ready() {
    let (sb, conf, mut p, c1) = serving_fixture("d_successor_crashes_before_ready");
    let (s, c2) = sighup_to(&sb, &p, &conf.clone().alive("2s"));
    sb.must_start(c2);
    signal(s, Signal::SIGKILL);
    sb.must_log(
        p.pid,
        "upgrade failed: the successor exited (signal SIGKILL)",
    );
    sb.must_die(c2, "the new child of the crashed successor (pdeathsig)");
    recovers(&sb, &mut p, c1, &conf);
}

#[test]
fn e_hung_successor_is_killed_after_upgrade_timeout_plus_5s() {
    let sb = Sandbox::with_deadline(
        "e_hung_successor_is_killed_after_upgrade_timeout_plus_5s",
        Duration::from_secs(45),
    );
    let conf = Conf::fixture(&sb, &[]).upgrade_timeout("500ms");
    let (mut p, c1) = serve(&sb, &conf);
    // The new generation would never give up by itself.
    sb.config(&conf.clone().probe(&["false"], "1s").upgrade_timeout("1m"));
    let t0 = Instant::now();
    p.signal(Signal::SIGHUP);
    let s = sb.successor_of(p.pid);
    let c2 = sb.child_of(s);
    signal(s, Signal::SIGSTOP);
    sb.must(
        Duration::from_secs(15),
        "the old psflip kills the hung successor",
        || !alive(s),
    );
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(5500),
        "the successor was killed after {waited:?}, before upgrade.timeout + 5 s"
    );
    sb.must_log(p.pid, "did not report ready within upgrade.timeout + 5s");
    sb.must_log(
        p.pid,
        "upgrade failed: the successor exited (signal SIGKILL)",
    );
    sb.must_die(c2, "the new child of the killed successor (pdeathsig)");
    recovers(&sb, &mut p, c1, &conf);
}

#[test]
fn f_invalid_new_configuration() {
    let (sb, conf, mut p, c1) = serving_fixture("f_invalid_new_configuration");
    sb.write("psflip.toml", &format!("{}bogus = 1\n", conf.render()));
    p.signal(Signal::SIGHUP);
    let s = sb.successor_of(p.pid);
    sb.must_log(p.pid, "upgrade failed: the successor exited (exit code 2)");
    // Why, in the log: the successor's own message, naming file and key.
    let log = sb.psflip_log();
    assert!(
        log.lines()
            .any(|l| l.contains("psflip.toml:") && l.contains("unknown key `bogus`")),
        "{}",
        sb.diag()
    );
    assert!(
        sb.started_by(s, "child").is_empty(),
        "no child with a bad config"
    );
    assert_eq!(
        sb.events().iter().filter(|e| e.kind == "started").count(),
        1,
        "only the old child ever started"
    );
    recovers(&sb, &mut p, c1, &conf);
}

// --- g, h: upgrade signals that must be ignored ----------------------------------

#[test]
fn g_upgrade_signal_while_an_upgrade_is_in_flight_is_ignored() {
    let sb = Sandbox::new("g_upgrade_signal_while_an_upgrade_is_in_flight_is_ignored");
    let generations = GenerationCounter::start(&sb.tag);
    // The old child takes its time to stop, so that the old generation is seen
    // draining too.
    let conf = Conf::fixture(&sb, &[]).env("CHILD_IGNORE_TERM", "1");
    let (mut p, c1) = serve(&sb, &conf.clone().shutdown_timeout("2s"));
    sb.config(&Conf::fixture(&sb, &[]).alive("1s"));
    p.signal(Signal::SIGHUP);
    let s = sb.successor_of(p.pid);
    sb.must_start(sb.child_of(s));
    p.signal(Signal::SIGHUP);
    sb.must_log(
        p.pid,
        "upgrade signal SIGHUP ignored: an upgrade is already in flight",
    );
    sb.must_name(s);
    sb.must_get_signal(c1, "TERM");
    p.signal(Signal::SIGHUP);
    sb.must_log(
        p.pid,
        "upgrade signal SIGHUP ignored: this generation is stopping",
    );
    // While it drains, other signals still reach the old child.
    p.signal(Signal::SIGUSR1);
    sb.must_get_signal(c1, "USR1");
    assert_eq!(sb.wait_exit(&mut p, T), 0, "{}", sb.diag());
    assert_eq!(
        sb.started_by(p.pid, "successor"),
        [s],
        "exactly one successor"
    );
    assert_eq!(
        sb.signals_of(c1),
        ["TERM", "USR1"],
        "HUP never reaches the child"
    );
    assert!(!alive(c1));
    finish(&sb, s);
    generations.assert_i2();
}

#[test]
fn h_upgrade_signal_to_a_successor_not_yet_ready_is_ignored() {
    // The old child ignores SIGTERM, so its generation is still stopping for a
    // while after the successor took over.
    let (sb, conf, mut p, c1) = serving_fixture_as(
        "h_upgrade_signal_to_a_successor_not_yet_ready_is_ignored",
        |c| c.env("CHILD_IGNORE_TERM", "1").shutdown_timeout("2s"),
    );
    sb.config(&conf.clone().alive("1s"));
    p.signal(Signal::SIGHUP);
    let s = sb.successor_of(p.pid);
    sb.must_start(sb.child_of(s));
    signal(s, Signal::SIGHUP);
    sb.must_log(
        s,
        "upgrade signal SIGHUP ignored: this generation is not ready yet",
    );
    sb.must_name(s);
    sb.must_get_signal(c1, "TERM");
    if p.running() {
        signal(s, Signal::SIGHUP);
        sb.must_log(
            s,
            "upgrade signal SIGHUP ignored: the previous generation is still stopping",
        );
    }
    assert_eq!(sb.wait_exit(&mut p, T), 0, "{}", sb.diag());
    assert!(sb.started_by(s, "successor").is_empty(), "{}", sb.diag());
    let c2 = sb.child_of(s);
    assert!(
        sb.signals_of(c2).is_empty(),
        "the upgrade signal is not forwarded"
    );
    // Once the predecessor is gone, the new generation upgrades.
    sb.must_log(s, "the previous generation has exited");
    sb.config(&conf);
    let s2 = sb.upgrade(s);
    assert_eq!(sb.signals_of(c2), ["TERM"]);
    finish(&sb, s2);
}

// --- i: the old child exits mid-upgrade ------------------------------------------

#[test]
fn i_old_child_exits_during_an_upgrade_that_then_succeeds() {
    let (sb, conf, mut p, c1) =
        serving_fixture("i_old_child_exits_during_an_upgrade_that_then_succeeds");
    let (s, c2) = sighup_to(&sb, &p, &conf.clone().alive("1s"));
    sb.must_start(c2);
    signal(c1, Signal::SIGKILL);
    sb.must_log(p.pid, "during the upgrade; waiting for its outcome");
    assert!(
        p.running(),
        "the old psflip must wait for the outcome\n{}",
        sb.diag()
    );
    sb.must_name(s);
    assert_eq!(
        sb.wait_exit(&mut p, T),
        0,
        "the service lives on\n{}",
        sb.diag()
    );
    sb.assert_alive(c2, "the new child");
    sb.config(&conf);
    let s2 = sb.upgrade(s);
    finish(&sb, s2);
}

#[test]
fn i_old_child_exits_during_an_upgrade_that_then_fails() {
    let (sb, conf, mut p, c1) =
        serving_fixture("i_old_child_exits_during_an_upgrade_that_then_fails");
    let (_, c2) = sighup_to(&sb, &p, &conf.clone().alive("2s").exits("800", "4"));
    sb.must_start(c2);
    signal(c1, Signal::SIGKILL);
    sb.must_log(p.pid, "during the upgrade; waiting for its outcome");
    assert_eq!(
        sb.wait_exit(&mut p, T),
        137,
        "the old psflip exits with its old child's status\n{}",
        sb.diag()
    );
    assert!(sb.logged(p.pid, "upgrade failed"), "{}", sb.diag());
    assert!(
        !sb.pidfile().exists(),
        "the service is gone: so is its pidfile"
    );
    sb.assert_clean();
}

// --- j, k: the old psflip is killed or told to stop mid-upgrade -------------------

#[test]
fn j_old_psflip_sigkilled_during_an_upgrade() {
    // The Go original's successor stopped its healthy child and exited: a full
    // outage, with a pidfile naming a dead pid.
    let (sb, conf, mut p, c1) = serving_fixture("j_old_psflip_sigkilled_during_an_upgrade");
    let (s, c2) = sighup_to(&sb, &p, &conf.clone().alive("1s"));
    sb.must_start(c2);
    p.signal(Signal::SIGKILL);
    assert_eq!(sb.wait_exit(&mut p, T), 137);
    sb.must_die(c1, "the old child (pdeathsig)");
    sb.must_name(s);
    sb.must_log(s, "the previous generation has exited");
    sb.assert_alive(s, "the successor");
    sb.assert_alive(c2, "the new child");
    assert!(sb.signals_of(c2).is_empty());
    // It is the service: it upgrades in turn.
    sb.config(&conf);
    let s2 = sb.upgrade(s);
    assert_eq!(sb.signals_of(c2), ["TERM"]);
    finish(&sb, s2);
}

#[rstest]
#[case::term(Signal::SIGTERM, "TERM")]
#[case::int(Signal::SIGINT, "INT")]
fn k_termination_signal_to_the_old_psflip_aborts_the_upgrade(
    #[case] sig: Signal,
    #[case] name: &str,
) {
    // The Go original let the successor and its child run on.
    let (sb, conf, mut p, c1) =
        serving_fixture("k_termination_signal_to_the_old_psflip_aborts_the_upgrade");
    let (s, c2) = sighup_to(&sb, &p, &conf.clone().alive("2s"));
    sb.must_start(c2);
    p.signal(sig);
    assert_eq!(
        sb.wait_exit(&mut p, T),
        0,
        "the old psflip exits with its old child's status, which died of the signal it was told to stop with (issue #9)\n{}",
        sb.diag()
    );
    assert_eq!(
        sb.signals_of(c1),
        [name],
        "the old child gets the signal, once"
    );
    assert_eq!(sb.signals_of(c2), [name], "the new child is stopped");
    assert!(!alive(s));
    assert!(sb.logged(p.pid, "upgrade aborted"), "{}", sb.diag());
    assert!(!sb.pidfile().exists());
    sb.assert_clean();
}

// --- invariants ------------------------------------------------------------------

#[test]
fn i1_old_child_untouched_until_a_slow_healthcheck_passes() {
    let (sb, conf, mut p, c1) =
        serving_fixture("i1_old_child_untouched_until_a_slow_healthcheck_passes");
    let ready = sb.path("ready");
    let probe = [
        "sh".to_string(),
        fixture("probe.sh").to_string_lossy().into_owned(),
        ready.to_string_lossy().into_owned(),
    ];
    sb.config(&conf.clone().probe(&probe, "100ms").upgrade_timeout("10s"));
    p.signal(Signal::SIGHUP);
    let s = sb.successor_of(p.pid);
    sb.must_start(sb.child_of(s));
    let fails = || {
        sb.events()
            .iter()
            .filter(|e| e.kind == "probe" && e.rest == "fail")
            .count()
    };
    sb.must(T, "three failed probes", || fails() >= 3);
    sb.must_reap(s);
    assert!(
        sb.signals_of(c1).is_empty(),
        "I1: signalled before the new child is healthy"
    );
    assert_eq!(sb.read_pidfile(), Some(p.pid));
    fs::write(&ready, "").unwrap();
    sb.must_name(s);
    assert_eq!(sb.wait_exit(&mut p, T), 0, "{}", sb.diag());
    let events = sb.events();
    let first_ok = events
        .iter()
        .position(|e| e.kind == "probe" && e.rest == "ok")
        .expect("a probe passed");
    let first_signal = events
        .iter()
        .position(|e| e.pid == c1 && e.kind == "signal")
        .expect("the old child was stopped");
    assert!(first_ok < first_signal, "I1: {events:#?}");
    assert_eq!(sb.signals_of(c1), ["TERM"]);
    finish(&sb, s);
}

#[test]
fn i4_old_child_ignoring_sigterm_is_killed_after_shutdown_timeout() {
    let (sb, conf, mut p, c1) = serving_fixture_as(
        "i4_old_child_ignoring_sigterm_is_killed_after_shutdown_timeout",
        |c| {
            c.env("CHILD_IGNORE_TERM", "1")
                .env("CHILD_BG", "1")
                .shutdown_timeout("600ms")
        },
    );
    let bg = sb.wait_for(T, "the background job", || {
        sb.events()
            .into_iter()
            .find(|e| e.kind == "bg")
            .and_then(|e| e.rest.trim().parse::<i32>().ok())
    });
    sb.config(&conf);
    p.signal(Signal::SIGHUP);
    let s = sb.successor_of(p.pid);
    sb.must_name(s);
    // I4: nothing of the old generation after delay + timeout + a margin.
    let old = p.pid;
    sb.must(
        Duration::from_millis(600) + Duration::from_secs(3),
        "no process of the old generation remains",
        || !alive(old) && !alive(c1) && !alive(bg),
    );
    assert_eq!(sb.wait_exit(&mut p, T), 0, "{}", sb.diag());
    assert_eq!(sb.signals_of(c1), ["TERM"]);
    assert!(
        sb.logged(old, "did not exit within shutdown.timeout"),
        "{}",
        sb.diag()
    );
    assert!(
        sb.logged(old, "the child exited (signal SIGKILL)"),
        "{}",
        sb.diag()
    );
    finish(&sb, s);
}

#[test]
fn shutdown_delay_is_honoured() {
    let sb = Sandbox::new("shutdown_delay_is_honoured");
    let conf = Conf::fixture(&sb, &[]).shutdown_delay("700ms");
    let (mut p, c1) = serve(&sb, &conf);
    p.signal(Signal::SIGHUP);
    let s = sb.successor_of(p.pid);
    sb.must_name(s);
    let written = mtime_ns(&sb.pidfile());
    assert_eq!(sb.wait_exit(&mut p, T), 0, "{}", sb.diag());
    let term = sb
        .events()
        .into_iter()
        .find(|e| e.pid == c1 && e.kind == "signal")
        .expect("the old child got a signal");
    assert_eq!(term.rest, "TERM");
    let after = Duration::from_nanos((term.ns.saturating_sub(written)) as u64);
    // The pidfile's mtime is at most the write; the fixture's clock reading is
    // after the signal: the gap can only be overstated, never understated
    // (5 ms allowed for clock slewing).
    assert!(
        after + Duration::from_millis(5) >= Duration::from_millis(700),
        "the old child was signalled {after:?} after the pidfile was written"
    );
    finish(&sb, s);
}

#[test]
fn i9_no_fd_or_thread_growth_across_20_upgrades() {
    let sb = Sandbox::with_deadline(
        "i9_no_fd_or_thread_growth_across_20_upgrades",
        Duration::from_secs(50),
    );
    let generations = GenerationCounter::start(&sb.tag);
    let mut p = sb.start_with(&Conf::sleep(&sb).alive("150ms"));
    let mut active = p.pid;
    let mut baseline: Option<(usize, Vec<i32>)> = None;
    for round in 1..=20 {
        active = sb.upgrade(active);
        if round == 1 {
            assert_eq!(sb.wait_exit(&mut p, T), 0);
        }
        // Measure once the predecessor is gone and the successor knows it.
        sb.must_log(active, "the previous generation has exited");
        // The event loop alone: the log writer starts only when stderr would
        // block (src/log.rs), and the sandbox reads it.
        assert_eq!(
            status_field(active, "Threads").as_deref(),
            Some("1"),
            "generation {}",
            round + 1
        );
        sb.must_reap(active);
        let child = sb.child_of(active);
        // psflip's fds by count: which numbers its readiness pipes get depends on
        // its predecessor's (the inherited one keeps its number).
        let now = (fds(active).len(), fds(child));
        match &baseline {
            None => baseline = Some(now),
            Some(b) => assert_eq!(
                &now,
                b,
                "fds of generation {} (psflip's count, child's)",
                round + 1
            ),
        }
    }
    finish(&sb, active);
    generations.assert_i2();
}
