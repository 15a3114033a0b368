//! `psflip status` as an operator reads it (issue #7): the phases, and the last
//! upgrades — time, trigger, duration, outcome, reason, generations — kept
//! across generations, in text and in JSON, for a configuration without a
//! pidfile too; and the cause of every upgrade in the log.

use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;

use crate::util::*;

/// `psflip status [--json] -c psflip.toml`: exit status and stdout.
fn status(sb: &Sandbox, json: bool) -> (i32, String) {
    let mut args = vec!["status", "-c", "psflip.toml"];
    if json {
        args.push("--json");
    }
    let out = sb
        .psflip_cmd(&args)
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    (code_of(out.status), String::from_utf8(out.stdout).unwrap())
}

fn status_json(sb: &Sandbox) -> serde_json::Value {
    let (code, text) = status(sb, true);
    assert_eq!(code, 0, "{text}\n{}", sb.diag());
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// `psflip upgrade -c psflip.toml`: exit status.
fn upgrade(sb: &Sandbox) -> i32 {
    let out = sb
        .psflip_cmd(&["upgrade", "-c", "psflip.toml"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    code_of(out.status)
}

/// The active psflip, as status says.
fn active(sb: &Sandbox) -> i32 {
    status_json(sb)["psflip_pid"].as_i64().unwrap() as i32
}

/// Three upgrades (by signal, by `psflip upgrade`, by signal), one failed in
/// between (a new configuration whose child exits at once), no pidfile: the
/// history has them all, oldest first, with their triggers and generations,
/// and the text form lists the latest first.
#[test]
fn status_keeps_the_upgrade_history_across_generations() {
    let sb = Sandbox::with_deadline("status_history", Duration::from_secs(60));
    let good = Conf::sleep(&sb).no_pidfile().alive("150ms");
    sb.config(&good);
    let p = sb.start();
    let t0 = now_ms();
    sb.must(T, "serving", || {
        status(&sb, true).0 == 0 && status_json(&sb)["phase"] == "serving"
    });
    let json = status_json(&sb);
    assert_eq!(json["upgrades"], serde_json::json!([]));

    // 1: the upgrade signal, from this test (its pid and uid are the sender's).
    signal(p.pid, Signal::SIGHUP);
    let g2 = sb.successor_of(p.pid);
    sb.must(T, "generation 2 serves alone", || {
        !alive(p.pid) && status_json(&sb)["phase"] == "serving"
    });
    // 2: psflip upgrade.
    assert_eq!(upgrade(&sb), 0);
    let g3 = active(&sb);
    assert_ne!(g3, g2);
    sb.must(T, "generation 3 serves alone", || {
        !alive(g2) && status_json(&sb)["phase"] == "serving"
    });
    // A failed one: the new child exits at once.
    sb.config(&Conf::cmd(&sb, &["false"]).no_pidfile().alive("150ms"));
    assert_eq!(upgrade(&sb), 1);
    // 3: by signal again, with the good configuration back.
    sb.config(&good);
    let before = sb.started_by(g3, "successor").len();
    signal(g3, Signal::SIGHUP);
    let g4 = sb.wait_for(T, "g3 starts a second successor", || {
        sb.started_by(g3, "successor").get(before).copied()
    });
    sb.must(T, "generation 4 serves alone", || {
        !alive(g3) && status_json(&sb)["phase"] == "serving"
    });
    let t1 = now_ms();

    let json = status_json(&sb);
    assert_eq!(json["psflip_pid"], g4);
    assert_eq!(json["generation"], 4);
    let h = json["upgrades"].as_array().unwrap();
    assert_eq!(h.len(), 4, "{json:#}");
    let me = std::process::id();
    let uid = nix::unistd::getuid().as_raw();
    let want = [
        (
            1,
            2,
            "succeeded",
            format!("SIGHUP from pid {me}, uid {uid}"),
        ),
        (2, 3, "succeeded", "psflip upgrade (pid ".to_string()),
        (3, 4, "failed", "psflip upgrade (pid ".to_string()),
        (
            3,
            4,
            "succeeded",
            format!("SIGHUP from pid {me}, uid {uid}"),
        ),
    ];
    let mut last_start = 0;
    for (u, (from, to, outcome, trigger)) in h.iter().zip(want) {
        assert_eq!(u["from_generation"], from, "{u}");
        assert_eq!(u["to_generation"], to, "{u}");
        assert_eq!(u["outcome"], outcome, "{u}");
        assert!(
            u["trigger"].as_str().unwrap().starts_with(&trigger),
            "{u} by {trigger}"
        );
        // Times from this machine's clock, in order, within the test's run.
        let start = u["started_unix_ms"].as_u64().unwrap();
        assert!(
            start >= t0.saturating_sub(5) && start <= t1 && start >= last_start,
            "{u}"
        );
        last_start = start;
        let took = u["duration_ms"].as_u64().unwrap();
        assert!(took <= t1 - start, "{u}");
        assert!(u["time"].as_str().unwrap().ends_with('Z'), "{u}");
    }
    assert!(
        h[2]["reason"]
            .as_str()
            .unwrap()
            .contains("the new child exited (exit code 1) before it became healthy"),
        "{:#}",
        h[2]
    );
    assert_eq!(json["last_upgrade"], "succeeded");

    // The text form: the latest first.
    let (code, text) = status(&sb, false);
    assert_eq!(code, 0);
    let line = |n: u32| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("upgrade_{n}: ")))
            .unwrap_or_else(|| panic!("no upgrade_{n} in:\n{text}"))
            .to_string()
    };
    assert!(
        line(1).contains("generation 3 -> 4: succeeded in "),
        "{text}"
    );
    assert!(line(2).contains("generation 3 -> 4: failed in "), "{text}");
    assert!(line(2).contains("the new child exited"), "{text}");
    assert!(line(4).contains("generation 1 -> 2: succeeded"), "{text}");
    println!("psflip status after three upgrades:\n{text}");

    // The log names each upgrade's cause.
    assert!(
        sb.logged(
            p.pid,
            &format!("upgrade: starting the successor (asked by SIGHUP from pid {me}, uid {uid})")
        ),
        "{}",
        sb.diag()
    );
    assert!(sb.logged(
        g2,
        "upgrade: starting the successor (asked by psflip upgrade (pid "
    ));
    signal(g4, Signal::SIGTERM);
    sb.must_die(g4, "psflip");
    sb.assert_clean();
}

/// While the previous generation stops its child, the new one says so (and
/// refuses an upgrade, which status now explains).
#[test]
fn status_says_draining_previous_while_the_old_generation_stops() {
    let sb = Sandbox::new("status_draining_previous");
    // The old child ignores SIGTERM for a while: shutdown.timeout 3 s.
    sb.config(
        &Conf::fixture(&sb, &[])
            .env("CHILD_IGNORE_TERM", "1")
            .no_pidfile()
            .alive("150ms")
            .shutdown_timeout("3s"),
    );
    let p = sb.start();
    sb.must(T, "serving", || {
        status(&sb, true).0 == 0 && status_json(&sb)["phase"] == "serving"
    });
    signal(p.pid, Signal::SIGHUP);
    let s = sb.successor_of(p.pid);
    sb.must(T, "the new generation reports draining previous", || {
        let j = status_json(&sb);
        j["psflip_pid"] == s && j["phase"] == "draining previous"
    });
    assert!(alive(p.pid), "the old generation still stops its child");
    assert_eq!(upgrade(&sb), 1, "refused while the previous one drains");
    sb.must(
        Duration::from_secs(10),
        "serving once the old one is gone",
        || status_json(&sb)["phase"] == "serving",
    );
    // Its child ignores SIGTERM too: end it, and psflip with it.
    signal(sb.child_of(s), Signal::SIGKILL);
    sb.must_die(s, "psflip");
    sb.assert_clean();
}
