//! `psflip upgrade` and `psflip status` (SPEC §1, §5): the client finds the
//! running generation through the pidfile and asks it over its control socket.
//! Every answer is checked against what really happened: pids from the pidfile
//! and the logs, signals from the fixture's log, exit statuses of every psflip.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use nix::sys::signal::Signal;
use rstest::rstest;

use crate::util::*;

// --- running the client ------------------------------------------------------------

static RUNS: AtomicU64 = AtomicU64::new(0);

/// What a finished `psflip upgrade` / `psflip status` printed and returned.
#[derive(Debug)]
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

/// A `psflip upgrade` / `psflip status` started in the background, its output in
/// files of its own (several may run at once).
struct Cli {
    p: Psflip,
    out: PathBuf,
    err: PathBuf,
    what: String,
}

impl Cli {
    /// Wait (with a deadline) until it exits; what it printed.
    fn wait(mut self, sb: &Sandbox) -> Ran {
        let code = sb.wait_exit(&mut self.p, T);
        let ran = Ran {
            code,
            stdout: fs::read_to_string(&self.out).unwrap(),
            stderr: fs::read_to_string(&self.err).unwrap(),
        };
        eprintln!("[{}] {} -> {ran:?}", sb.name, self.what);
        ran
    }
}

/// Start `psflip ARGS… -c psflip.toml`; `tweak` may change the command (its
/// environment, its user).
fn cli_with(sb: &Sandbox, args: &[&str], tweak: impl FnOnce(&mut Command)) -> Cli {
    let n = RUNS.fetch_add(1, Ordering::Relaxed);
    let out = sb.path(&format!("cli-{n}.out"));
    let err = sb.path(&format!("cli-{n}.err"));
    let mut cmd = sb.psflip_cmd(args);
    cmd.args(["-c", "psflip.toml"])
        .stdout(fs::File::create(&out).unwrap())
        .stderr(fs::File::create(&err).unwrap())
        .stdin(Stdio::null());
    tweak(&mut cmd);
    Cli {
        p: sb.spawn(cmd),
        out,
        err,
        what: format!("psflip {}", args.join(" ")),
    }
}

fn cli(sb: &Sandbox, args: &[&str]) -> Cli {
    cli_with(sb, args, |_| {})
}

fn run(sb: &Sandbox, args: &[&str]) -> Ran {
    cli(sb, args).wait(sb)
}

/// `psflip status`, which must succeed: its `key: value` lines.
pub(crate) fn status(sb: &Sandbox) -> BTreeMap<String, String> {
    let r = run(sb, &["status"]);
    assert_eq!(r.code, 0, "status: {r:?}\n{}", sb.diag());
    assert!(r.stderr.is_empty(), "status: {r:?}");
    let mut map = BTreeMap::new();
    for line in r.stdout.lines() {
        let (k, v) = line
            .split_once(": ")
            .unwrap_or_else(|| panic!("not a `key: value` line: {line:?} in {r:?}"));
        assert!(
            map.insert(k.to_string(), v.to_string()).is_none(),
            "{k} twice: {r:?}"
        );
    }
    map
}

/// `psflip status --json`, which must succeed: the object.
pub(crate) fn status_json(sb: &Sandbox) -> serde_json::Map<String, serde_json::Value> {
    let r = run(sb, &["status", "--json"]);
    assert_eq!(r.code, 0, "status --json: {r:?}\n{}", sb.diag());
    assert!(
        r.stdout.ends_with('\n') && r.stdout.lines().count() == 1,
        "{r:?}"
    );
    match serde_json::from_str(&r.stdout) {
        Ok(serde_json::Value::Object(map)) => map,
        other => panic!("status --json is no JSON object: {other:?} from {r:?}"),
    }
}

/// Check the `status` lines against the expected values (`uptime_seconds` is
/// only checked to be a number): exactly these keys.
fn assert_status(got: &BTreeMap<String, String>, want: &[(&str, String)]) {
    let mut want: BTreeMap<String, String> = want
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let mut got = got.clone();
    let uptime = got.remove("uptime_seconds").expect("uptime_seconds");
    assert!(uptime.parse::<u64>().is_ok(), "uptime_seconds: {uptime:?}");
    want.remove("uptime_seconds");
    let timeout = got
        .remove("upgrade_timeout_ms")
        .expect("upgrade_timeout_ms");
    assert!(
        timeout.parse::<u64>().is_ok(),
        "upgrade_timeout_ms: {timeout:?}"
    );
    // The history (`upgrade_1`…) is checked by tests/e2e/status.rs.
    got.retain(|k, _| {
        k.strip_prefix("upgrade_")
            .is_none_or(|n| n.parse::<u32>().is_err())
    });
    assert_eq!(got, want);
}

/// `psflip upgrade`, which must succeed with generation `generation` taking
/// over: returns the new psflip's pid, checked against the pidfile.
fn upgrade_ok(sb: &Sandbox, generation: u32) -> i32 {
    let r = run(sb, &["upgrade"]);
    assert_ok(sb, &r, generation)
}

fn assert_ok(sb: &Sandbox, r: &Ran, generation: u32) -> i32 {
    assert_eq!(r.code, 0, "upgrade: {r:?}\n{}", sb.diag());
    assert!(r.stderr.is_empty(), "upgrade: {r:?}");
    // The successor wrote the pidfile before it reported ready: it names it now.
    let named = sb.read_pidfile().expect("the pidfile names the new psflip");
    assert_eq!(
        r.stdout,
        format!("ok: generation {generation} (psflip pid {named}) took over\n")
    );
    sb.assert_alive(named, "the new psflip");
    named
}

/// A `failed: …` answer (the generation that failed may add how it exited)
/// that gives `reason`.
fn assert_failed(stderr: &str, reason: &str) {
    assert!(
        stderr.starts_with("failed: ") && stderr.contains(reason) && stderr.ends_with('\n'),
        "expected `failed: …{reason}…`, got {stderr:?}"
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
}

/// `psflip upgrade`, which must fail (exit 1, nothing on stdout): its stderr.
fn upgrade_fails(sb: &Sandbox) -> String {
    let r = run(sb, &["upgrade"]);
    assert_eq!(r.code, 1, "upgrade: {r:?}\n{}", sb.diag());
    assert!(r.stdout.is_empty(), "upgrade: {r:?}");
    assert!(r.stderr.ends_with('\n'), "upgrade: {r:?}");
    r.stderr
}

// --- the service ---------------------------------------------------------------------

/// After a failed or refused upgrade: the old psflip and its child run as
/// before, the child was never signalled, the pidfile names the old psflip,
/// nothing of a failed generation is left (`util::assert_untouched`), and
/// `psflip status` says it serves as before.
fn assert_untouched(sb: &Sandbox, p: &mut Psflip, c1: i32) {
    crate::util::assert_untouched(sb, p, c1);
    assert_eq!(sb.read_pidfile(), Some(p.pid));
    let old = p.pid;
    // And it says so.
    let st = status(sb);
    assert_eq!(st["psflip_pid"], old.to_string());
    assert_eq!(st["child_pid"], c1.to_string());
    assert_eq!(st["phase"], "serving");
    assert_eq!(st["upgrade_in_flight"], "false");
}

/// I3: a later `psflip upgrade` succeeds (with the configuration the caller
/// restored); the old child then gets exactly the shutdown signal. Returns the
/// new psflip.
fn assert_upgrade_succeeds(sb: &Sandbox, p: &mut Psflip, c1: i32) -> i32 {
    let s = upgrade_ok(sb, 2);
    assert_took_over(sb, p, c1, s);
    s
}

/// I3 after a failed upgrade (with `psflip status` saying so), then a
/// `psflip upgrade` (`util::recovers_by`).
fn recovers(sb: &Sandbox, p: &mut Psflip, c1: i32, conf: &Conf) {
    assert_untouched(sb, p, c1);
    recovers_by(sb, p, c1, conf, |sb, _| upgrade_ok(sb, 2));
}

/// The fixture app. It dies of SIGTERM at once, after logging it; the
/// SIGKILL that follows `shutdown.timeout` must not beat it to the log when
/// the machine is loaded, or the test could not tell what the old child got.
fn fixture_conf(sb: &Sandbox) -> Conf {
    Conf::fixture(sb, &[]).shutdown_timeout("5s")
}

/// A sandbox serving [`fixture_conf`]: the sandbox, that configuration,
/// psflip and its child.
fn serving(name: &str) -> (Sandbox, Conf, Psflip, i32) {
    let sb = Sandbox::new(name);
    let conf = fixture_conf(&sb);
    let (p, c1) = serve(&sb, &conf);
    (sb, conf, p, c1)
}

/// The fixture's probe: healthy once the file `ready` in the sandbox exists.
fn probe_until_ready(sb: &Sandbox) -> (Vec<String>, PathBuf) {
    let ready = sb.path("ready");
    let cmd = vec![
        "sh".to_string(),
        fixture("probe.sh").to_string_lossy().into_owned(),
        ready.to_string_lossy().into_owned(),
    ];
    (cmd, ready)
}

// --- 1: status -------------------------------------------------------------------------

#[test]
fn status_when_nothing_runs_exits_3() {
    let sb = Sandbox::new("status_when_nothing_runs_exits_3");
    sb.config(&Conf::sleep(&sb));
    let not_running = |r: &Ran, what: &str| {
        assert_eq!(r.code, 3, "{what}: {r:?}");
        assert!(r.stdout.is_empty(), "{what}: {r:?}");
        assert!(r.stderr.contains("not running"), "{what}: {r:?}");
    };

    // No pidfile.
    for args in [&["status"][..], &["status", "--json"], &["upgrade"]] {
        let r = run(&sb, args);
        not_running(&r, "no pidfile");
        assert!(r.stderr.contains("psflip.pid"), "names the pidfile: {r:?}");
    }

    // A pidfile naming a dead (reaped) process.
    let mut gone = Command::new("true").spawn().unwrap();
    let dead = gone.id() as i32;
    gone.wait().unwrap();
    sb.write("psflip.pid", &format!("{dead}\n"));
    for args in [&["status"][..], &["upgrade"]] {
        let r = run(&sb, args);
        not_running(&r, "dead pid");
        assert!(r.stderr.contains(&format!("pid {dead}")), "{r:?}");
    }

    // A pidfile naming a zombie (a psflip that died and whose parent has not
    // reaped it yet): dead too.
    let mut zombie = Command::new("true").spawn().unwrap();
    let z = zombie.id() as i32;
    sb.must(T, "the process is a zombie", || {
        stat(z).is_some_and(|s| s.state == 'Z')
    });
    sb.write("psflip.pid", &format!("{z}\n"));
    for args in [&["status"][..], &["upgrade"]] {
        let r = run(&sb, args);
        not_running(&r, "zombie");
        assert!(r.stderr.contains(&format!("pid {z}")), "{r:?}");
    }
    zombie.wait().unwrap();

    // An empty pidfile, garbage.
    for text in ["", "garbage\n"] {
        sb.write("psflip.pid", text);
        not_running(&run(&sb, &["status"]), "bad pidfile");
    }
    sb.assert_clean();
}

#[test]
fn status_and_upgrade_work_without_a_pidfile() {
    // The control socket's name comes from the configuration's path: no
    // pidfile is needed to find the running psflip (issues #7, #8).
    let sb = Sandbox::new("status_and_upgrade_work_without_a_pidfile");
    sb.config(&Conf::sleep(&sb).no_pidfile());
    for args in [&["status"][..], &["upgrade"]] {
        let r = run(&sb, args);
        assert_eq!(r.code, 3, "nothing runs yet: {r:?}");
        assert!(r.stderr.contains("not running"), "{r:?}");
    }
    let mut p = sb.start();
    let c1 = sb.child_of(p.pid);
    sb.must(T, "status answers", || run(&sb, &["status"]).code == 0);
    let st = status(&sb);
    assert_eq!(st["psflip_pid"], p.pid.to_string());
    assert_eq!(st["child_pid"], c1.to_string());
    sb.must(T, "the child is healthy", || {
        status(&sb)["child_healthy"] == "true"
    });
    let r = run(&sb, &["upgrade"]);
    assert_eq!(r.code, 0, "{r:?}\n{}", sb.diag());
    let s = sb.successor_of(p.pid);
    assert_eq!(
        r.stdout,
        format!("ok: generation 2 (psflip pid {s}) took over\n")
    );
    assert_eq!(sb.wait_exit(&mut p, T), 0, "{}", sb.diag());
    assert_eq!(status(&sb)["psflip_pid"], s.to_string());
    finish(&sb, s);
}

#[test]
fn status_of_a_running_psflip_before_during_and_after_an_upgrade() {
    let (sb, conf, mut p, c1) =
        serving("status_of_a_running_psflip_before_during_and_after_an_upgrade");

    // Serving.
    let st = status(&sb);
    assert_status(
        &st,
        &[
            ("psflip_pid", sb.read_pidfile().unwrap().to_string()),
            ("generation", "1".into()),
            ("ab", "a".into()),
            ("phase", "serving".into()),
            ("child_pid", c1.to_string()),
            ("child_healthy", "true".into()),
            ("upgrade_in_flight", "false".into()),
            ("last_upgrade", "none".into()),
        ],
    );
    assert_eq!(st["psflip_pid"], p.pid.to_string());
    let json = status_json(&sb);
    assert_eq!(json["psflip_pid"], p.pid);
    assert_eq!(json["generation"], 1);
    assert_eq!(json["phase"], "serving");
    assert_eq!(json["child_pid"], c1);
    assert_eq!(json["child_healthy"], true);
    assert_eq!(json["upgrade_in_flight"], false);
    assert_eq!(json["last_upgrade"], serde_json::Value::Null);
    assert!(json["uptime_seconds"].is_u64(), "{json:?}");
    assert_eq!(json["upgrades"], serde_json::json!([]), "no upgrade yet");
    // The same keys; the history is a list in JSON, `upgrade_N` lines in text.
    assert_eq!(json.len(), st.len() + 1, "the same keys: {json:?} {st:?}");

    // Upgrading: the new child is healthy only once the test says so.
    let (probe, ready) = probe_until_ready(&sb);
    sb.config(&conf.clone().probe(&probe, "100ms").upgrade_timeout("10s"));
    let pending = cli(&sb, &["upgrade"]);
    let s = sb.successor_of(p.pid);
    let c2 = sb.child_of(s);
    sb.must_start(c2);
    let st = status(&sb);
    assert_status(
        &st,
        &[
            ("psflip_pid", p.pid.to_string()),
            ("generation", "1".into()),
            ("ab", "a".into()),
            ("phase", "upgrading".into()),
            ("child_pid", c1.to_string()),
            ("child_healthy", "true".into()),
            ("upgrade_in_flight", "true".into()),
            ("last_upgrade", "none".into()),
        ],
    );
    let json = status_json(&sb);
    assert_eq!(json["phase"], "upgrading");
    assert_eq!(json["upgrade_in_flight"], true);
    assert!(sb.signals_of(c1).is_empty(), "I1");

    // Upgraded.
    fs::write(&ready, "").unwrap();
    assert_eq!(assert_ok(&sb, &pending.wait(&sb), 2), s);
    assert_eq!(sb.wait_exit(&mut p, T), 0, "{}", sb.diag());
    let st = status(&sb);
    assert_status(
        &st,
        &[
            ("psflip_pid", s.to_string()),
            ("generation", "2".into()),
            ("ab", "b".into()),
            ("phase", "serving".into()),
            ("child_pid", c2.to_string()),
            ("child_healthy", "true".into()),
            ("upgrade_in_flight", "false".into()),
            ("last_upgrade", "succeeded".into()),
        ],
    );
    let json = status_json(&sb);
    assert_eq!(json["psflip_pid"], s);
    assert_eq!(json["generation"], 2);
    assert_eq!(json["child_pid"], c2);
    assert_eq!(json["last_upgrade"], "succeeded");
    finish(&sb, s);
}

// --- 2: upgrade succeeds -----------------------------------------------------------------

#[test]
fn upgrade_reports_the_new_generation_and_the_old_one_stops() {
    let sb = Sandbox::new("upgrade_reports_the_new_generation_and_the_old_one_stops");
    let (mut p, c1) = serve(&sb, &fixture_conf(&sb));
    let s = upgrade_ok(&sb, 2);
    assert_ne!(s, p.pid);
    assert_eq!(sb.started_by(p.pid, "successor"), [s]);
    assert_eq!(
        sb.wait_exit(&mut p, T),
        0,
        "the old psflip exits 0\n{}",
        sb.diag()
    );
    sb.must_die(c1, "the old child");
    assert_eq!(
        sb.signals_of(c1),
        ["TERM"],
        "the old child got the shutdown signal once"
    );
    let c2 = sb.child_of(s);
    sb.must_start(c2);
    assert!(sb.signals_of(c2).is_empty());
    sb.must(T, "only the new generation remains", || {
        tagged(&sb.tag)
            .into_iter()
            .all(|x| x == s || pgrp(x) == Some(c2))
    });
    finish(&sb, s);
}

// --- 3: upgrade fails ----------------------------------------------------------------------

#[test]
fn upgrade_fails_when_the_new_child_exits_before_healthy() {
    let (sb, conf, mut p, c1) = serving("upgrade_fails_when_the_new_child_exits_before_healthy");
    sb.config(&conf.clone().alive("1s").exits("50", "4"));
    let why = upgrade_fails(&sb);
    assert_failed(
        &why,
        "the new child exited (exit code 4) before it became healthy",
    );
    let s = sb.successor_of(p.pid);
    let c2 = sb.child_of(s);
    assert!(
        sb.events()
            .iter()
            .any(|e| e.pid == c2 && e.kind == "exit" && e.rest == "4"),
        "the new child did exit 4\n{}",
        sb.diag()
    );
    assert!(!alive(s) && !alive(c2));
    assert_untouched(&sb, &mut p, c1);
    // The status says what happened.
    assert_eq!(
        status(&sb)["last_upgrade"],
        why.trim_end(),
        "status names the failure"
    );
    let json = status_json(&sb);
    assert_eq!(json["last_upgrade"], why.trim_end());
    sb.config(&conf);
    let s = assert_upgrade_succeeds(&sb, &mut p, c1);
    finish(&sb, s);
}

#[test]
fn upgrade_fails_when_the_new_child_is_not_healthy_within_upgrade_timeout() {
    let (sb, conf, mut p, c1) =
        serving("upgrade_fails_when_the_new_child_is_not_healthy_within_upgrade_timeout");
    sb.config(&never_healthy(&conf));
    let why = upgrade_fails(&sb);
    assert_failed(
        &why,
        "the new child did not become healthy within upgrade.timeout (700ms)",
    );
    let s = sb.successor_of(p.pid);
    let c2 = sb.child_of(s);
    assert!(!alive(s) && !alive(c2));
    recovers(&sb, &mut p, c1, &conf);
}

#[test]
fn upgrade_with_a_configuration_the_cli_cannot_read_exits_2_and_asks_nothing() {
    let (sb, conf, mut p, c1) = serving("upgrade_with_a_configuration_the_cli_cannot_read_exits_2");
    sb.write("psflip.toml", &format!("{}bogus = 1\n", conf.render()));
    let r = run(&sb, &["upgrade"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stdout.is_empty(), "{r:?}");
    assert!(
        r.stderr.contains("psflip.toml:") && r.stderr.contains("unknown key `bogus`"),
        "{r:?}"
    );
    // Nothing was asked nor signalled. A status round trip goes through the old
    // psflip's event loop, which would have seen an upgrade signal sent before it.
    sb.config(&conf);
    assert_untouched(&sb, &mut p, c1);
    assert!(
        sb.started_by(p.pid, "successor").is_empty(),
        "{}",
        sb.diag()
    );
    assert!(
        !sb.log_of(p.pid).iter().any(|l| l.contains("upgrade")),
        "{}",
        sb.diag()
    );
    let s = assert_upgrade_succeeds(&sb, &mut p, c1);
    finish(&sb, s);
}

#[test]
fn upgrade_with_a_configuration_invalid_only_in_the_services_environment() {
    // Valid in the operator's shell (E2E_UT is set there), invalid for the
    // successor, which inherits the service's environment (E2E_UT unset).
    let (sb, conf, mut p, c1) =
        serving("upgrade_with_a_configuration_invalid_only_in_the_services_env");
    sb.config(&conf.clone().upgrade_timeout("{{ Env \"E2E_UT\" }}"));
    let r = cli_with(&sb, &["upgrade"], |c| {
        c.env("E2E_UT", "3s");
    })
    .wait(&sb);
    assert_eq!(r.code, 1, "{r:?}\n{}", sb.diag());
    assert!(r.stdout.is_empty(), "{r:?}");
    assert_failed(&r.stderr, "invalid configuration: ");
    assert!(
        r.stderr.contains("psflip.toml:") && r.stderr.contains("upgrade.timeout"),
        "names the file and the key: {r:?}"
    );
    let s = sb.successor_of(p.pid);
    assert!(
        sb.started_by(s, "child").is_empty(),
        "no child with a bad config"
    );
    sb.config(&conf);
    assert_untouched(&sb, &mut p, c1);
    let s = assert_upgrade_succeeds(&sb, &mut p, c1);
    finish(&sb, s);
}

#[rstest]
#[case::workdir_missing("workdir")]
#[case::cmd_not_found("cmd")]
fn upgrade_fails_when_the_new_child_cannot_start(#[case] what: &str) {
    let sb = Sandbox::new(&format!(
        "upgrade_fails_when_the_new_child_cannot_start_{what}"
    ));
    let conf = fixture_conf(&sb);
    let (mut p, c1) = serve(&sb, &conf);
    let bad = match what {
        "workdir" => {
            let mut c = conf.clone();
            c.workdir = Some("no-such-dir".into());
            c
        }
        _ => Conf::cmd(&sb, &["./no-such-program"]),
    };
    sb.config(&bad);
    let why = upgrade_fails(&sb);
    assert_failed(&why, "cannot start the new child: ");
    assert!(why.contains("No such file or directory"), "{why:?}");
    let s = sb.successor_of(p.pid);
    sb.must_die(s, "the failed successor");
    recovers(&sb, &mut p, c1, &conf);
}

#[test]
fn upgrade_fails_when_the_binary_is_missing() {
    let sb = Sandbox::new("upgrade_fails_when_the_binary_is_missing");
    let conf = fixture_conf(&sb);
    sb.config(&conf);
    let installed = deploy(&sb);
    let dir = sb.path("bin");
    let mut p = start_installed(&sb, &installed);
    let c1 = must_serve(&sb, &p);

    let away = dir.join("psflip.away");
    fs::rename(&installed, &away).unwrap();
    let why = upgrade_fails(&sb);
    assert_failed(&why, "cannot start the successor: ");
    assert!(
        why.contains(&*installed.to_string_lossy()),
        "names the binary: {why:?}"
    );
    assert!(why.contains("No such file or directory"), "{why:?}");
    assert!(sb.started_by(p.pid, "successor").is_empty());
    assert_untouched(&sb, &mut p, c1);

    fs::rename(&away, &installed).unwrap();
    let s = assert_upgrade_succeeds(&sb, &mut p, c1);
    finish(&sb, s);
}

#[test]
fn upgrade_aborted_by_a_termination_signal_reports_the_failure() {
    let (sb, conf, mut p, c1) =
        serving("upgrade_aborted_by_a_termination_signal_reports_the_failure");
    let (probe, _ready) = probe_until_ready(&sb);
    sb.config(&conf.clone().probe(&probe, "100ms").upgrade_timeout("10s"));
    let pending = cli(&sb, &["upgrade"]);
    let s = sb.successor_of(p.pid);
    let c2 = sb.child_of(s);
    sb.must_start(c2);
    p.signal(Signal::SIGTERM);
    let r = pending.wait(&sb);
    assert_eq!(r.code, 1, "{r:?}\n{}", sb.diag());
    assert!(r.stdout.is_empty(), "{r:?}");
    assert_failed(&r.stderr, "SIGTERM");
    assert_eq!(
        sb.wait_exit(&mut p, T),
        0,
        "the old psflip exits with its old child's status, which died of the SIGTERM it was told to stop with (issue #9)\n{}",
        sb.diag()
    );
    assert_eq!(sb.signals_of(c1), ["TERM"]);
    assert!(!alive(s) && !alive(c2));
    assert!(!sb.pidfile().exists());
    sb.assert_clean();
}

// --- 4: upgrade refused ------------------------------------------------------------------------

/// A second `psflip upgrade` while one is in flight starts nothing: it waits for
/// the outcome of the upgrade in flight and reports it (issue #9: systemd's
/// Type=notify-reload sends the upgrade signal and runs ExecReload= both).
#[test]
fn upgrade_asked_while_another_is_in_flight_reports_its_outcome() {
    let sb = Sandbox::new("upgrade_asked_while_another_is_in_flight_reports_its_outcome");
    let generations = GenerationCounter::start_without_clients(&sb.tag);
    let conf = fixture_conf(&sb);
    let (mut p, c1) = serve(&sb, &conf);
    let (probe, ready) = probe_until_ready(&sb);
    sb.config(&conf.clone().probe(&probe, "100ms").upgrade_timeout("10s"));
    let first = cli(&sb, &["upgrade"]);
    let s = sb.successor_of(p.pid);
    sb.must_start(sb.child_of(s));

    let second = cli(&sb, &["upgrade"]);
    sb.must_log(
        p.pid,
        "upgrade requested over the control socket while one is in flight: answering with its outcome",
    );
    // The upgrade signal is turned away.
    p.signal(Signal::SIGHUP);
    sb.must_log(
        p.pid,
        "upgrade signal SIGHUP ignored: an upgrade is already in flight",
    );
    assert_eq!(
        sb.started_by(p.pid, "successor"),
        [s],
        "exactly one successor"
    );
    assert!(sb.signals_of(c1).is_empty(), "I1");
    assert_eq!(sb.read_pidfile(), Some(p.pid));

    // The first one goes through, and both say so.
    fs::write(&ready, "").unwrap();
    assert_eq!(assert_ok(&sb, &first.wait(&sb), 2), s);
    assert_eq!(assert_ok(&sb, &second.wait(&sb), 2), s);
    assert_eq!(sb.wait_exit(&mut p, T), 0, "{}", sb.diag());
    assert_eq!(sb.signals_of(c1), ["TERM"]);
    assert_eq!(
        sb.started_by(p.pid, "successor"),
        [s],
        "exactly one successor"
    );
    finish(&sb, s);
    generations.assert_i2();
}

/// `psflip upgrade --wait-old` (systemd's ExecReload=, issue #9) reports the
/// success only once the old generation has exited; without it, as soon as the
/// new one took over, while the old one still drains.
#[test]
fn upgrade_wait_old_answers_once_the_old_generation_is_gone() {
    let sb = Sandbox::new("upgrade_wait_old_answers_once_the_old_generation_is_gone");
    let conf = fixture_conf(&sb).shutdown_delay("3s");
    let (mut p, c1) = serve(&sb, &conf);
    let s = upgrade_ok(&sb, 2);
    assert!(
        alive(p.pid),
        "without --wait-old: back while the old generation drains (shutdown.delay 3s)\n{}",
        sb.diag()
    );
    assert!(sb.signals_of(c1).is_empty(), "still in shutdown.delay");
    assert_eq!(sb.wait_exit(&mut p, T), 0, "{}", sb.diag());
    sb.must_log(s, "the previous generation has exited");

    let c2 = sb.child_of(s);
    let r = run(&sb, &["upgrade", "--wait-old"]);
    let s3 = assert_ok(&sb, &r, 3);
    assert!(
        !alive(s),
        "with --wait-old: back once the old generation has exited\n{}",
        sb.diag()
    );
    assert!(!alive(c2), "{}", sb.diag());
    assert_eq!(sb.signals_of(c2), ["TERM"]);
    finish(&sb, s3);
}

#[test]
fn upgrade_is_refused_by_a_successor_whose_predecessor_still_drains() {
    let sb = Sandbox::new("upgrade_is_refused_by_a_successor_whose_predecessor_still_drains");
    // The old generation waits this long before it stops its child: the test
    // ends the wait itself.
    let conf = fixture_conf(&sb).shutdown_delay("20s");
    let (mut p, c1) = serve(&sb, &conf);
    let s = upgrade_ok(&sb, 2);
    sb.must_log(
        p.pid,
        "upgrade: the successor is ready; stopping the old child",
    );
    assert!(p.running(), "the old generation drains\n{}", sb.diag());

    let why = upgrade_fails(&sb);
    assert_eq!(why, "refused: the previous generation is still stopping\n");
    assert!(sb.started_by(s, "successor").is_empty(), "{}", sb.diag());
    assert!(p.running(), "{}", sb.diag());
    sb.assert_alive(c1, "the old child, still in shutdown.delay");
    assert!(
        sb.signals_of(c1).is_empty(),
        "shutdown.delay is not cut short"
    );
    assert_eq!(status(&sb)["psflip_pid"], s.to_string());

    // Cut the drain short: stop the old child. (A termination signal to the old
    // psflip would stop the whole service, the new generation too: issue #9.)
    signal(c1, Signal::SIGTERM);
    assert_eq!(sb.wait_exit(&mut p, T), 0, "{}", sb.diag());
    assert_eq!(sb.signals_of(c1), ["TERM"]);
    sb.must_log(s, "the previous generation has exited");

    // Now the new generation upgrades.
    let c2 = sb.child_of(s);
    let s3 = upgrade_ok(&sb, 3);
    signal(c2, Signal::SIGTERM); // its own shutdown.delay, cut short too
    sb.must_die(s, "the second generation");
    assert_eq!(sb.signals_of(c2), ["TERM"]);
    finish(&sb, s3);
}

// --- 5: upgrade before the first child is healthy ----------------------------------------

#[test]
fn status_before_the_first_child_is_healthy_says_starting() {
    // The control socket exists from the start (the pidfile only once the
    // child is healthy): status answers, and says the child is not healthy yet.
    let sb = Sandbox::new("status_before_the_first_child_is_healthy_says_starting");
    sb.config(&fixture_conf(&sb).alive("20s").upgrade_timeout("30s"));
    let mut p = sb.start();
    let c = sb.child_of(p.pid);
    sb.must_start(c);
    sb.must(T, "status answers", || run(&sb, &["status"]).code == 0);
    assert!(
        !sb.pidfile().exists(),
        "the pidfile is written once healthy"
    );
    let st = status(&sb);
    assert_eq!(st["psflip_pid"], p.pid.to_string());
    assert_eq!(st["child_pid"], c.to_string());
    assert_eq!(st["phase"], "starting");
    assert_eq!(st["child_healthy"], "false");
    assert!(p.running());
    assert!(sb.started_by(p.pid, "successor").is_empty());
    assert!(sb.signals_of(c).is_empty());
    p.signal(Signal::SIGTERM);
    assert_eq!(
        sb.wait_exit(&mut p, T),
        0,
        "a requested stop (issue #9)\n{}",
        sb.diag()
    );
    sb.assert_clean();
}

// --- 6: upgrades in sequence ------------------------------------------------------------------

#[test]
fn five_upgrades_in_sequence_each_succeed_and_alternate_ab() {
    let sb = Sandbox::new("five_upgrades_in_sequence_each_succeed_and_alternate_ab");
    let generations = GenerationCounter::start_without_clients(&sb.tag);
    let (mut p, c1) = serve(
        &sb,
        &Conf::fixture(&sb, &["{{ AB \"a\" \"b\" }}", "{{ BlueGreen }}"])
            .alive("150ms")
            .shutdown_timeout("5s"),
    );
    let mut seen = vec![sb.must_start(c1)];
    let mut active = p.pid;
    let mut child = c1;
    for generation in 2..=6 {
        let s = upgrade_ok(&sb, generation);
        assert_eq!(
            sb.started_by(active, "successor"),
            [s],
            "generation {generation}"
        );
        if generation == 2 {
            assert_eq!(sb.wait_exit(&mut p, T), 0, "{}", sb.diag());
        }
        sb.must_die(active, "the previous generation");
        sb.must_die(child, "the previous child");
        assert_eq!(sb.signals_of(child), ["TERM"], "generation {generation}");
        child = sb.child_of(s);
        seen.push(sb.must_start(child));
        let st = status(&sb);
        assert_eq!(st["generation"], generation.to_string());
        assert_eq!(st["psflip_pid"], s.to_string());
        assert_eq!(st["child_pid"], child.to_string());
        assert_eq!(st["last_upgrade"], "succeeded");
        active = s;
    }
    assert_eq!(
        seen,
        [
            "a blue", "b green", "a blue", "b green", "a blue", "b green"
        ]
    );
    finish(&sb, active);
    generations.assert_i2();
}

// --- the client's fallbacks and the socket's guard --------------------------------------------

/// A stand-in for a running psflip without a control socket: it writes its pid
/// to the pidfile and, on SIGHUP, starts a `sleep` and names it in the pidfile
/// (atomically), as a successor would.
const FAKE_PSFLIP: &str = r#"
trap 'sleep 1000 & echo $! > psflip.pid.tmp; mv psflip.pid.tmp psflip.pid' HUP
echo $$ > psflip.pid.tmp; mv psflip.pid.tmp psflip.pid
while :; do sleep 1 & wait $!; done
"#;

#[test]
fn a_pidfile_naming_a_process_without_a_control_socket_is_stale_and_never_signalled() {
    // Something that looks like psflip to the pidfile (it wrote its own pid
    // there) but serves no control socket: the client cannot verify it, so it
    // neither reports it nor signals it (issue #8, finding 3).
    let sb = Sandbox::new("a_pidfile_naming_a_process_without_a_control_socket");
    sb.config(&Conf::sleep(&sb));
    let fake = sb.spawn({
        let mut c = sb.command("sh");
        c.args(["-c", FAKE_PSFLIP]);
        c
    });
    sb.must_name(fake.pid);
    for args in [&["status"][..], &["status", "--json"], &["upgrade"]] {
        let r = run(&sb, args);
        assert_eq!(r.code, 3, "{args:?}: {r:?}");
        assert!(r.stdout.is_empty(), "{r:?}");
        assert!(r.stderr.contains("stale"), "{r:?}");
        assert!(r.stderr.contains(&format!("pid {}", fake.pid)), "{r:?}");
    }
    assert_eq!(
        sb.read_pidfile(),
        Some(fake.pid),
        "no SIGHUP: no successor named"
    );
    // A SIGHUP would have made it start `sleep 1000` (its own loop sleeps 1 s).
    let hup_child = |k: &i32| {
        fs::read(format!("/proc/{k}/cmdline")).unwrap_or_default() == b"sleep\x001000\x00"
    };
    assert!(
        !children_of(fake.pid).iter().any(hup_child),
        "the stand-in was signalled"
    );
    drop(fake);
    sb.assert_clean();
}

#[test]
fn a_recycled_pid_in_a_stale_pidfile_is_never_signalled() {
    // psflip was SIGKILLed (its pidfile stays) and its pid went to an unrelated
    // process, which has no control socket: that is not a running psflip.
    let sb = Sandbox::new("a_recycled_pid_in_a_stale_pidfile_is_never_signalled");
    sb.config(&Conf::sleep(&sb));
    let other = sb.spawn({
        let mut c = sb.command("sleep");
        c.arg("1000");
        c
    });
    sb.write("psflip.pid", &format!("{}\n", other.pid));
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    fs::File::options()
        .write(true)
        .open(sb.pidfile())
        .unwrap()
        .set_modified(hour_ago)
        .unwrap();
    for args in [&["upgrade"][..], &["status"]] {
        let r = run(&sb, args);
        assert_eq!(r.code, 3, "{args:?}: {r:?}");
        assert!(r.stderr.contains("not running"), "{r:?}");
        assert!(r.stderr.contains(&format!("pid {}", other.pid)), "{r:?}");
    }
    sb.assert_alive(
        other.pid,
        "the unrelated process (SIGHUP would have killed it)",
    );
    drop(other);
    sb.assert_clean();
}

#[test]
fn the_control_socket_serves_only_root_and_its_own_user() {
    let sb = Sandbox::new("the_control_socket_serves_only_root_and_its_own_user");
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "[{}] skipped: needs root to run a client as another user",
            sb.name
        );
        return;
    }
    let (mut p, c1) = serve(&sb, &fixture_conf(&sb));
    let nobody = |c: &mut Command| {
        c.uid(65534).gid(65534);
    };
    // Another user does not even find it: the socket is in root's private
    // directory, and another user's psflip would live in its own.
    for args in [&["upgrade"][..], &["status"]] {
        let r = cli_with(&sb, args, nobody).wait(&sb);
        assert_eq!(r.code, 3, "{r:?}\n{}", sb.diag());
        assert!(r.stdout.is_empty(), "{r:?}");
        assert!(r.stderr.contains("not running"), "{r:?}");
    }
    // Nor can it connect to it by its path.
    let socket = control_socket_of(p.pid).expect("psflip serves its control socket");
    let connect = Command::new("sh")
        .args(["-c", "exec 3<>\"$0\" 2>/dev/null; echo $?"])
        .arg(&socket)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(!connect.status.success() || String::from_utf8_lossy(&connect.stdout).trim() != "0");
    let r = run(&sb, &["status"]);
    assert_eq!(r.code, 0, "root still is served: {r:?}");
    assert!(sb.started_by(p.pid, "successor").is_empty());
    assert_untouched(&sb, &mut p, c1);
    p.signal(Signal::SIGTERM);
    assert_eq!(sb.wait_exit(&mut p, T), 0, "a requested stop (issue #9)");
    sb.assert_clean();
}

/// Connect to the control socket of psflip `pid`, send `request`, shut down
/// the writing side if `half_close`, and read the answer to its end.
fn raw_ask(pid: i32, request: &str, half_close: bool) -> String {
    let socket = control_socket_of(pid).expect("psflip serves its control socket");
    let mut stream = UnixStream::connect(socket).unwrap();
    stream.set_read_timeout(Some(T)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    if half_close {
        stream.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    reply
}

#[test]
fn the_control_protocol_answers_clients_that_close_their_side_early() {
    let sb = Sandbox::new("the_control_protocol_answers_clients_that_close_their_side_early");
    let (mut p, c1) = serve(&sb, &fixture_conf(&sb));
    // `printf 'status\n' | socat - UNIX-CONNECT:/run/psflip/NAME.sock`
    let reply = raw_ask(p.pid, "status\n", true);
    assert!(
        reply.starts_with(&format!("{{\"psflip_pid\":{},", p.pid)),
        "{reply:?}"
    );
    let reply = raw_ask(p.pid, "frobnicate\n", true);
    assert_eq!(reply, "error: unknown request \"frobnicate\"\n");
    let reply = raw_ask(p.pid, "status\n", false);
    assert!(reply.contains(&format!("\"child_pid\":{c1},")), "{reply:?}");
    assert_untouched(&sb, &mut p, c1);
    p.signal(Signal::SIGTERM);
    assert_eq!(sb.wait_exit(&mut p, T), 0, "a requested stop (issue #9)");
    sb.assert_clean();
}

#[test]
fn an_upgrade_asked_by_a_client_that_closes_its_side_early_is_answered() {
    let sb = Sandbox::new("an_upgrade_asked_by_a_client_that_closes_its_side_early");
    let (mut p, c1) = serve(&sb, &fixture_conf(&sb));
    let reply = raw_ask(p.pid, "upgrade\n", true);
    let s = sb.successor_of(p.pid);
    sb.must_name(s);
    assert_eq!(
        reply,
        format!("ok: generation 2 (psflip pid {s}) took over\n")
    );
    assert_eq!(sb.wait_exit(&mut p, T), 0, "{}", sb.diag());
    assert_eq!(sb.signals_of(c1), ["TERM"]);
    finish(&sb, s);
}
