//! `[upgrade] standby = true`: once a serving generation has been quiet for
//! `SETTLE_AFTER` (250 ms), it starts its own binary as a standby successor
//! (comm `psflip-standby`, blocked on a pipe), and the next upgrade wakes it
//! instead of starting a successor cold. Each test asserts what the world
//! shows: pids, `/proc`, files and log lines.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use nix::sys::signal::Signal;
use rstest::rstest;

use crate::util::*;

/// The standbys psflip `pid` logged starting (`standby successor started (pid
/// N): the next upgrade wakes it`), in order.
fn standbys_of(sb: &Sandbox, pid: i32) -> Vec<i32> {
    sb.log_of(pid)
        .iter()
        .filter_map(|l| {
            let rest = l.strip_prefix("standby successor started (pid ")?;
            let (n, tail) = rest.split_once(')')?;
            (tail == ": the next upgrade wakes it").then_some(())?;
            n.parse().ok()
        })
        .collect()
}

/// Wait until psflip `pid` has started its `nth` standby (from 1) and that
/// standby waits: a live child of `pid` named `psflip-standby`. Returns it.
pub(crate) fn must_stand_by(sb: &Sandbox, pid: i32, nth: usize) -> i32 {
    let s = sb.wait_for(T, &format!("psflip[{pid}] starts standby #{nth}"), || {
        standbys_of(sb, pid).get(nth - 1).copied()
    });
    sb.must(
        T,
        &format!("standby {s} waits as psflip-standby, a child of psflip[{pid}]"),
        || alive(s) && comm(s) == "psflip-standby" && ppid(s) == Some(pid),
    );
    s
}

/// The inode of the file at `path` (following symlinks, so `/proc/PID/exe`
/// gives the binary's).
fn ino(path: impl AsRef<std::path::Path>) -> u64 {
    fs::metadata(path).unwrap().ino()
}

/// The exit status (`waitpid`'s) a zombie shows in field 52 of
/// `/proc/PID/stat`; `None` once it is reaped (or still running).
fn zombie_status(pid: i32) -> Option<i32> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest: Vec<&str> = text[text.rfind(')')? + 1..].split_whitespace().collect();
    // Field 3 (state) is rest[0]; field 52 (exit_code) is rest[49].
    (rest.first() == Some(&"Z"))
        .then(|| rest.get(49)?.parse().ok())
        .flatten()
}

/// psflip `p` carries on after a failed upgrade (or with its standby gone):
/// it runs, its child `c1` runs as its child and was never signalled, the
/// pidfile names it, and every other process of the test is dead, but its
/// standby (a child of `p` named `psflip-standby`) and `c1`'s group.
/// (`util::assert_untouched` counts a standby as a leftover.)
fn assert_serves_untouched(sb: &Sandbox, p: &mut Psflip, c1: i32) {
    assert!(p.running(), "the old psflip must carry on\n{}", sb.diag());
    sb.assert_alive(c1, "the old child");
    assert_eq!(ppid(c1), Some(p.pid), "{}", sb.diag());
    assert_eq!(
        sb.signals_of(c1),
        Vec::<String>::new(),
        "the old child was signalled"
    );
    assert_eq!(sb.read_pidfile(), Some(p.pid), "{}", sb.diag());
    let old = p.pid;
    sb.must(T, "only the old generation (and a standby) is left", || {
        sb.tagged().into_iter().all(|x| {
            x == old || pgrp(x) == Some(c1) || (ppid(x) == Some(old) && comm(x) == "psflip-standby")
        })
    });
    sb.must_reap(old);
}

#[test]
fn the_upgrade_wakes_the_standby_which_runs_the_configuration_of_that_moment() {
    let sb = Sandbox::new("standby_upgrade_wakes_the_standby");
    let (mut p, c1) = serve(
        &sb,
        &Conf::fixture(&sb, &["gen-one"])
            .env("E2E_VAR", "old")
            .standby(),
    );
    assert_eq!(sb.must_start(c1), "gen-one");
    let s = must_stand_by(&sb, p.pid, 1);
    assert_eq!(
        children_of(p.pid).len(),
        2,
        "psflip's children: its child and its standby\n{}",
        sb.diag()
    );
    assert!(
        sb.events()
            .iter()
            .all(|e| e.kind != "started" || e.pid == c1),
        "the standby started no child"
    );

    // Changed after the standby started: the standby must read it when woken.
    sb.config(
        &Conf::fixture(&sb, &["gen-two"])
            .env("E2E_VAR", "new")
            .standby(),
    );
    let successor = sb.upgrade(p.pid);
    assert_eq!(
        successor,
        s,
        "the upgrade woke the standby rather than starting a successor\n{}",
        sb.diag()
    );
    assert_took_over(&sb, &mut p, c1, s);
    let c2 = sb.child_of(s);
    assert_eq!(ppid(c2), Some(s), "the new child is the woken standby's");
    assert_eq!(sb.must_start(c2), "gen-two", "the new configuration's cmd");
    assert_eq!(env_var(c2, "E2E_VAR").as_deref(), Some("new"));
    assert_eq!(comm(s), "psflip", "a woken standby names itself psflip");
    sb.must_log(s, "the previous generation has exited");

    // The new generation keeps a standby of its own.
    let s2 = must_stand_by(&sb, s, 1);
    assert_ne!(s2, s);
    assert_eq!(standbys_of(&sb, s), [s2]);
    finish(&sb, s);
    assert!(
        stat(s2).is_none(),
        "the last generation reaped its standby {s2} before it exited\n{}",
        sb.diag()
    );
}

#[test]
fn a_binary_replaced_by_rename_after_the_standby_started_is_what_it_runs_when_woken() {
    let sb = Sandbox::new("standby_binary_replaced_by_rename");
    sb.config(&Conf::fixture(&sb, &[]).standby());
    let installed = deploy(&sb);
    let mut p = start_installed(&sb, &installed);
    let c1 = must_serve(&sb, &p);
    let s = must_stand_by(&sb, p.pid, 1);
    let first = ino(&installed);
    assert_eq!(
        ino(format!("/proc/{s}/exe")),
        first,
        "the standby runs the installed binary"
    );

    let installed = deploy(&sb);
    let second = ino(&installed);
    assert_ne!(second, first, "deploy installs a new file");
    assert_eq!(
        ino(format!("/proc/{s}/exe")),
        first,
        "the waiting standby still runs the replaced one"
    );
    let successor = sb.upgrade(p.pid);
    assert_eq!(successor, s, "the standby was woken\n{}", sb.diag());
    assert_took_over(&sb, &mut p, c1, s);
    assert_eq!(
        ino(format!("/proc/{s}/exe")),
        second,
        "the woken standby execs the file the path names at the upgrade"
    );
    assert_eq!(
        fs::read_link(format!("/proc/{s}/exe")).unwrap(),
        installed,
        "{}",
        sb.diag()
    );
    let c2 = sb.child_of(s);
    assert_eq!(ppid(c2), Some(s));
    finish(&sb, s);
}

/// The JSON objects psflip logged so far (`log_format = "json"`).
fn json_lines(sb: &Sandbox) -> Vec<serde_json::Value> {
    sb.psflip_log()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The `fields.pid` of the events `event` psflip `pid` logged, in order.
fn json_pids(sb: &Sandbox, pid: i32, event: &str) -> Vec<i32> {
    json_lines(sb)
        .iter()
        .filter(|v| v["pid"] == pid && v["event"] == event)
        .filter_map(|v| v["fields"]["pid"].as_i64().map(|n| n as i32))
        .collect()
}

#[test]
fn a_standby_killed_while_it_waits_is_logged_and_the_next_upgrade_starts_cold() {
    let sb = Sandbox::new("standby_killed_while_it_waits");
    // JSON, to see the warning's event name.
    let conf = Conf::fixture(&sb, &[])
        .standby()
        .top("log_format = \"json\"");
    sb.config(&conf);
    let mut p = sb.start();
    sb.must_name(p.pid);
    let c1 = sb.wait_for(T, "psflip starts its child", || {
        json_pids(&sb, p.pid, "child_started").first().copied()
    });
    sb.must_start(c1);
    let standby_started = |v: &serde_json::Value| {
        let m = v["message"].as_str()?;
        let n = m.strip_prefix("standby successor started (pid ")?;
        n.split_once("): the next upgrade wakes it")?
            .0
            .parse::<i32>()
            .ok()
    };
    let old = p.pid;
    let standbys = || -> Vec<i32> {
        json_lines(&sb)
            .iter()
            .filter(|v| v["pid"] == old)
            .filter_map(standby_started)
            .collect()
    };
    let s = sb.wait_for(T, "psflip starts a standby", || standbys().first().copied());
    sb.must(T, "the standby waits", || {
        comm(s) == "psflip-standby" && ppid(s) == Some(p.pid)
    });

    signal(s, Signal::SIGKILL);
    let warning = sb.wait_for(T, "psflip warns that its standby exited", || {
        json_lines(&sb)
            .into_iter()
            .find(|v| v["pid"] == p.pid && v["event"] == "standby_exited")
    });
    assert_eq!(warning["level"], "warning", "{warning}");
    assert_eq!(
        warning["message"].as_str(),
        Some(
            format!(
                "the standby successor (pid {s}) exited (signal SIGKILL); upgrades start their successor cold"
            )
            .as_str()
        ),
        "{warning}"
    );
    sb.must(T, "psflip reaps its dead standby", || stat(s).is_none());
    assert_serves_untouched(&sb, &mut p, c1);

    // The next upgrade starts its successor cold.
    p.signal(Signal::SIGHUP);
    let successor = sb.wait_for(T, "psflip starts a successor", || {
        json_pids(&sb, p.pid, "successor_started").first().copied()
    });
    assert_ne!(successor, s, "a new process, not the dead standby");
    sb.must_name(successor);
    assert_eq!(sb.wait_exit(&mut p, T), 0, "{}", sb.diag());
    assert_eq!(sb.signals_of(c1), ["TERM"]);
    assert_eq!(
        standbys(),
        [s],
        "a standby that exited is not restarted in its generation"
    );
    let c2 = sb.wait_for(T, "the successor starts its child", || {
        json_pids(&sb, successor, "child_started").first().copied()
    });
    sb.must_start(c2);
    finish(&sb, successor);
}

#[test]
fn stop_kills_and_reaps_the_standby_before_psflip_exits() {
    let sb = Sandbox::new("standby_stop_kills_and_reaps_it");
    // A plain `sleep` (no grandchildren, unlike the fixture's shell, whose
    // `sleep 1` re-parents to psflip when it dies): an escaped process logged
    // at the stop can then only be the standby.
    let mut p = sb.start_with(&Conf::sleep(&sb).standby());
    let c1 = sb.child_of(p.pid);
    sb.must_log(p.pid, "serving");
    let s = must_stand_by(&sb, p.pid, 1);
    p.signal(Signal::SIGTERM);
    assert_eq!(sb.wait_exit(&mut p, T), 0, "{}", sb.diag());
    // Right away: had psflip left it running or unreaped, it would still be
    // there (as a process, or as a zombie re-parented to PID 1).
    assert!(
        stat(s).is_none(),
        "the standby {s} outlived psflip: {:?}\n{}",
        stat(s),
        sb.diag()
    );
    assert!(!alive(c1), "{}", sb.diag());
    assert!(
        !sb.logged(p.pid, "escaped"),
        "a standby is no escaped process\n{}",
        sb.diag()
    );
    sb.assert_clean();
}

#[test]
fn the_standby_of_a_sigkilled_psflip_exits_0_by_itself() {
    let sb = Sandbox::new("standby_of_a_sigkilled_psflip");
    let (mut p, c1) = serve(&sb, &Conf::fixture(&sb, &[]).standby());
    let s = must_stand_by(&sb, p.pid, 1);
    p.signal(Signal::SIGKILL);
    assert_eq!(sb.wait_exit(&mut p, T), 137);
    sb.must_die(s, "the standby of a SIGKILLed psflip");
    sb.must_die(c1, "the child of a SIGKILLed psflip");
    // Its parent gone, it re-parented to PID 1, which may not reap it here: if
    // it is still a zombie, its status says how it ended.
    if let Some(status) = zombie_status(s) {
        assert_eq!(status, 0, "the standby exits 0 at end-of-file");
    }
    sb.assert_clean();
}

/// A failed upgrade through the standby: the new configuration's child exits
/// before it is healthy, or the new configuration is invalid.
#[rstest]
#[case::new_child_exits_before_healthy(
    "exits",
    "upgrade failed: the successor exited (exit code 4)"
)]
#[case::invalid_configuration("invalid", "upgrade failed: the successor exited (exit code 2)")]
fn a_failed_upgrade_through_the_standby_leaves_the_old_generation_serving_with_a_new_standby(
    #[case] how: &str,
    #[case] failure: &str,
) {
    let sb = Sandbox::new(&format!("standby_failed_upgrade_{how}"));
    let conf = Conf::fixture(&sb, &[]).standby();
    let (mut p, c1) = serve(&sb, &conf);
    let s = must_stand_by(&sb, p.pid, 1);
    match how {
        "exits" => {
            sb.config(&exits_before_healthy(&conf));
        }
        _ => {
            sb.write("psflip.toml", &format!("{}bogus = 1\n", conf.render()));
        }
    }
    p.signal(Signal::SIGHUP);
    let successor = sb.successor_of(p.pid);
    assert_eq!(successor, s, "the upgrade woke the standby\n{}", sb.diag());
    sb.must_log(p.pid, failure);
    sb.must_die(s, "the failed successor");
    for c in sb.started_by(s, "child") {
        sb.must_die(c, "the failed successor's child");
    }
    assert_serves_untouched(&sb, &mut p, c1);

    // A new standby, for the next upgrade.
    let s2 = must_stand_by(&sb, p.pid, 2);
    assert_ne!(s2, s);
    assert_serves_untouched(&sb, &mut p, c1);

    // Which the next upgrade wakes, to the restored configuration.
    sb.config(&conf);
    let successor = sb.upgrade(p.pid);
    assert_eq!(successor, s2, "{}", sb.diag());
    assert_took_over(&sb, &mut p, c1, s2);
    finish(&sb, s2);
}

/// `RssFile` of `/proc/PID/status`, in kB.
fn rss_file_kb(pid: i32) -> Option<u64> {
    status_field(pid, "RssFile")?
        .strip_suffix(" kB")?
        .trim()
        .parse()
        .ok()
}

/// The standby starts when psflip settles (right before it gives back its
/// start-up pages, which shows as its `RssFile` falling). Without `standby =
/// true`, psflip settles and no standby is among its children; with it (the
/// control case, which shows the test can tell), one is there as it settles.
#[rstest]
#[case::off(false)]
#[case::on(true)]
fn a_standby_starts_when_psflip_settles_only_if_asked(#[case] on: bool) {
    let sb = Sandbox::new(&format!("standby_only_if_asked_{on}"));
    let conf = Conf::fixture(&sb, &[]);
    sb.config(&if on { conf.standby() } else { conf });
    let mut p = sb.start();
    // Sampled from the start: the highest RssFile seen, until it has fallen
    // to under half of it (psflip has been quiet for 250 ms and settled).
    let mut most = 0;
    sb.must(T, "psflip settles (its RssFile falls by half)", || {
        let now = rss_file_kb(p.pid).unwrap_or(0);
        most = most.max(now);
        now > 0 && now * 2 < most
    });
    let c1 = must_serve(&sb, &p);
    let mut children = children_of(p.pid);
    children.sort_unstable();
    let others: Vec<i32> = children.iter().copied().filter(|&c| c != c1).collect();
    if on {
        assert_eq!(others.len(), 1, "one standby\n{}", sb.diag());
        let s = must_stand_by(&sb, p.pid, 1);
        assert_eq!(others, [s]);
    } else {
        assert_eq!(children, [c1], "no child but the app's\n{}", sb.diag());
        // And none later either, over several more quiet stretches.
        let none = !wait_until(Duration::from_millis(1000), || {
            children_of(p.pid).iter().any(|&c| c != c1) || sb.psflip_log().contains("standby")
        });
        assert!(none, "a process besides the child\n{}", sb.diag());
        assert!(
            all_pids()
                .into_iter()
                .all(|x| !(ppid(x) == Some(p.pid) && comm(x) == "psflip-standby"))
        );
    }
    stop(&sb, &mut p);
}

/// The binary gone from its path at the upgrade: the woken standby cannot run
/// it (as a cold successor could not be started), says why and exits 1; the
/// old generation carries on, cannot start another standby, and once the
/// binary is back the next upgrade starts its successor cold.
#[test]
fn a_binary_missing_at_the_upgrade_fails_it_and_the_old_generation_carries_on() {
    let sb = Sandbox::new("standby_binary_missing_at_the_upgrade");
    sb.config(&Conf::fixture(&sb, &[]).standby());
    let installed = deploy(&sb);
    let mut p = start_installed(&sb, &installed);
    let c1 = must_serve(&sb, &p);
    let s = must_stand_by(&sb, p.pid, 1);
    let away = sb.path("bin/psflip.away");
    fs::rename(&installed, &away).unwrap();
    p.signal(Signal::SIGHUP);
    assert_eq!(sb.successor_of(p.pid), s);
    sb.must_log(
        p.pid,
        &format!(
            "upgrade failed: the successor exited (exit code 1): cannot run {}: No such file or directory",
            installed.display()
        ),
    );
    sb.must_log(p.pid, "cannot start a standby successor: ");
    sb.must(T, "psflip reaps the failed successor", || stat(s).is_none());
    assert_serves_untouched(&sb, &mut p, c1);
    assert_eq!(standbys_of(&sb, p.pid), [s]);

    fs::rename(&away, &installed).unwrap();
    let successor = sb.upgrade(p.pid);
    assert_ne!(successor, s);
    assert_took_over(&sb, &mut p, c1, successor);
    assert_eq!(standbys_of(&sb, p.pid), [s], "no standby after it failed");
    must_stand_by(&sb, successor, 1);
    finish(&sb, successor);
}

#[test]
fn a_child_that_exits_on_its_own_ends_psflip_and_its_standby() {
    let sb = Sandbox::new("standby_child_exits_on_its_own");
    let (mut p, c1) = serve(&sb, &Conf::fixture(&sb, &[]).standby().exits("1500", "3"));
    let s = must_stand_by(&sb, p.pid, 1);
    assert!(alive(c1), "the child exits later than the standby starts");
    assert_eq!(sb.wait_exit(&mut p, T), 3, "{}", sb.diag());
    assert!(
        stat(s).is_none(),
        "the standby {s} outlived psflip: {:?}\n{}",
        stat(s),
        sb.diag()
    );
    sb.assert_clean();
}

/// A signal sent to psflip's process group (a terminal's SIGHUP, SIGWINCH,
/// SIGTSTP; `kill -- -PGID`) reaches the standby too, which keeps it blocked,
/// pending. Once woken it must behave as a successor started cold would: one
/// started after the signal never sees it. Here the group signal is sent to
/// psflip and its standby by pid (the test shares psflip's process group).
#[test]
fn signals_that_reached_the_waiting_standby_are_not_acted_on_once_it_is_woken() {
    let sb = Sandbox::new("standby_stale_signals");
    let (mut p, c1) = serve(&sb, &Conf::fixture(&sb, &[]).standby());
    let s = must_stand_by(&sb, p.pid, 1);

    // SIGUSR1 to the group: psflip passes it on to its child.
    signal(s, Signal::SIGUSR1);
    p.signal(Signal::SIGUSR1);
    sb.must_get_signal(c1, "USR1");
    sb.must(T, "the standby holds SIGUSR1 pending", || {
        status_field(s, "ShdPnd")
            .and_then(|m| u64::from_str_radix(&m, 16).ok())
            .is_some_and(|m| m & (1 << (Signal::SIGUSR1 as i32 - 1)) != 0)
    });
    // SIGHUP to the group: the upgrade.
    signal(s, Signal::SIGHUP);
    let successor = sb.upgrade(p.pid);
    assert_eq!(successor, s, "{}", sb.diag());
    assert_eq!(sb.wait_exit(&mut p, T), 0, "{}", sb.diag());
    assert_eq!(sb.signals_of(c1), ["USR1", "TERM"]);
    let c2 = sb.child_of(s);
    sb.must_start(c2);
    // Once it has settled, anything it read at its start is long handled.
    must_stand_by(&sb, s, 1);
    assert_eq!(
        sb.signals_of(c2),
        Vec::<String>::new(),
        "the new child got a signal sent before the upgrade\n{}",
        sb.diag()
    );
    sb.assert_alive(c2, "the new child");
    assert!(
        !sb.logged(s, "SIGHUP"),
        "the new generation heard the SIGHUP that caused its own upgrade\n{}",
        sb.diag()
    );
    finish(&sb, s);
}

#[test]
fn status_shows_the_standby_waiting_then_why_there_is_none() {
    use crate::control::{status, status_json};
    let sb = Sandbox::new("standby_status");
    let (mut p, c1) = serve(&sb, &Conf::fixture(&sb, &[]).standby());
    sb.must_start(c1);
    let s = must_stand_by(&sb, p.pid, 1);
    let lines = status(&sb);
    assert_eq!(
        lines.get("standby").map(String::as_str),
        Some("waiting"),
        "{lines:?}"
    );
    assert_eq!(lines.get("standby_pid"), Some(&s.to_string()), "{lines:?}");
    let json = status_json(&sb);
    assert_eq!(json.get("standby"), Some(&"waiting".into()), "{json:?}");
    assert_eq!(json.get("standby_pid"), Some(&s.into()), "{json:?}");

    signal(s, Signal::SIGKILL);
    sb.must(T, "psflip reaps its dead standby", || stat(s).is_none());
    let lines = status(&sb);
    assert_eq!(
        lines.get("standby").map(String::as_str),
        Some(
            format!("off in this generation: the standby (pid {s}) exited (signal SIGKILL)")
                .as_str()
        ),
        "{lines:?}"
    );
    assert_eq!(lines.get("standby_pid"), None, "{lines:?}");
    assert_serves_untouched(&sb, &mut p, c1);
    stop(&sb, &mut p);
}

#[test]
fn status_during_an_upgrade_that_woke_the_standby_names_it() {
    use crate::control::status;
    let sb = Sandbox::new("standby_status_woken");
    // A new child counts as healthy after 1 s: the upgrade is in flight that long.
    let (mut p, c1) = serve(&sb, &Conf::fixture(&sb, &[]).standby().alive("1s"));
    sb.must_start(c1);
    let s = must_stand_by(&sb, p.pid, 1);
    p.signal(Signal::SIGHUP);
    let lines = sb.wait_for(T, "psflip status says an upgrade is in flight", || {
        let lines = status(&sb);
        (lines.get("upgrade_in_flight").map(String::as_str) == Some("true")).then_some(lines)
    });
    assert_eq!(
        lines.get("standby"),
        Some(&format!("woken: it is this upgrade's successor (pid {s})")),
        "{lines:?}"
    );
    assert_eq!(lines.get("standby_pid"), None, "{lines:?}");
    assert_took_over(&sb, &mut p, c1, s);
    finish(&sb, s);
}
