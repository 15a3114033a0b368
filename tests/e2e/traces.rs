//! Traces from real runs (`PSFLIP_TRACE`, `psflip::trace`): upgrade scenarios run
//! with every generation recording its machine's steps; each trace then replays
//! through a fresh machine to the same effects, and the machine's promises hold
//! over it (`trace::check`). What the kernel really did comes back as the same
//! decisions: the machine is the only decider.

use std::path::PathBuf;

use nix::sys::signal::Signal;

use crate::util::*;

/// Start the first generation with `conf`, recording traces under the sandbox.
fn serve_traced(sb: &Sandbox, conf: &Conf) -> (Psflip, i32) {
    sb.config(conf);
    let mut cmd = sb.psflip_cmd(&["-c", "psflip.toml"]);
    cmd.env("PSFLIP_TRACE", sb.dir.join("trace"));
    let p = sb.spawn(cmd);
    let c = must_serve(sb, &p);
    (p, c)
}

/// Every trace file the sandbox's generations wrote.
fn traces(sb: &Sandbox) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(&sb.dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("trace.") && n.ends_with(".jsonl"))
        })
        .collect();
    found.sort();
    found
}

/// Replay every trace: the same effects at every step, the promises kept.
/// Returns the number of steps per trace.
fn replay_all(sb: &Sandbox, generations: usize) -> Vec<usize> {
    let files = traces(sb);
    assert_eq!(files.len(), generations, "{files:?}\n{}", sb.diag());
    files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            match psflip::trace::replay(&text) {
                Ok(r) => r.steps.len(),
                Err(why) => panic!("{}: {why}\n{text}", f.display()),
            }
        })
        .collect()
}

#[test]
fn a_successful_upgrade_replays_from_its_traces() {
    let sb = Sandbox::new("trace_successful_upgrade");
    let (mut p, c1) = serve_traced(&sb, &Conf::fixture(&sb, &[]));
    p.signal(Signal::SIGHUP);
    let s = sb.successor_of(p.pid);
    sb.must_name(s);
    sb.must_get_signal(c1, "TERM");
    assert_eq!(sb.wait_exit(&mut p, T), 0, "{}", sb.diag());
    sb.must_start(sb.child_of(s));
    finish(&sb, s);
    let steps = replay_all(&sb, 2);
    assert!(steps.iter().all(|&n| n >= 3), "{steps:?}");
    // The replay is through the lib; the contributor's command gives the same.
    let out = sb
        .psflip_cmd(&["__replay"])
        .args(traces(&sb))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn a_failed_upgrade_replays_from_its_traces() {
    let sb = Sandbox::new("trace_failed_upgrade");
    let conf = Conf::fixture(&sb, &[]);
    let (mut p, _c1) = serve_traced(&sb, &conf);
    sb.config(&exits_before_healthy(&conf));
    p.signal(Signal::SIGHUP);
    let s = sb.successor_of(p.pid);
    sb.must_log(p.pid, "upgrade failed: the successor exited (exit code 4)");
    sb.must(T, "the successor is gone", || !alive(s));
    stop(&sb, &mut p);
    replay_all(&sb, 2);
}

#[test]
fn an_aborted_upgrade_replays_from_its_traces() {
    let sb = Sandbox::new("trace_aborted_upgrade");
    let conf = Conf::fixture(&sb, &[]);
    let (mut p, _c1) = serve_traced(&sb, &conf);
    // A new child that takes long to be healthy: the upgrade is in flight when
    // the old psflip is told to terminate.
    sb.config(&conf.clone().alive("2500ms"));
    p.signal(Signal::SIGHUP);
    let s = sb.successor_of(p.pid);
    sb.must_start(sb.child_of(s));
    p.signal(Signal::SIGTERM);
    sb.wait_exit(&mut p, T);
    sb.must(T, "the successor is gone", || !alive(s));
    sb.assert_clean();
    replay_all(&sb, 2);
}
