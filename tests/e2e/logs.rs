//! psflip's log as an operator reads it (SPEC §10 "Logs"): UTC time, level,
//! generation and pid on every line; syslog priorities under journald; JSON;
//! and a stderr nobody reads never stops psflip.

use std::fs;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;

use crate::util::*;

/// Seconds since the epoch of `2026-11-30T15:04:05.123Z`, by the calendar
/// arithmetic of `date -u -d`, which the test asks for each stamp.
fn epoch_of(stamp: &str) -> Option<f64> {
    let out = std::process::Command::new("date")
        .args(["-u", "-d", stamp, "+%s.%N"])
        .output()
        .ok()?;
    String::from_utf8(out.stdout).ok()?.trim().parse().ok()
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// `<time> <level> gen=<g> psflip[<pid>]: <message>`, split.
struct TextLine {
    time: String,
    level: String,
    generation: u64,
    pid: i32,
}

fn parse_text(line: &str) -> Option<TextLine> {
    let (head, _message) = line.split_once("]: ")?;
    let mut it = head.split(' ');
    let time = it.next()?.to_string();
    let level = it.next()?.to_string();
    let generation = it.next()?.strip_prefix("gen=")?.parse().ok()?;
    let pid = it.next()?.strip_prefix("psflip[")?.parse().ok()?;
    Some(TextLine {
        time,
        level,
        generation,
        pid,
    })
}

#[test]
fn text_lines_carry_utc_time_level_generation_and_pid() {
    let sb = Sandbox::new("logs_text");
    sb.config(&Conf::sleep(&sb));
    let before = now_secs();
    let mut p = sb.start();
    let child = sb.child_of(p.pid);
    sb.must_name(p.pid);
    let successor = sb.upgrade(p.pid);
    let new_child = sb.child_of(successor);
    sb.terminate(successor, "the new generation");
    let after = now_secs();
    let _ = p.exit_code();

    let log = sb.psflip_log();
    let mut seen = std::collections::BTreeSet::new();
    for line in log.lines() {
        let Some(l) = parse_text(line) else {
            panic!("not a log line of the documented shape: {line:?}\n{log}");
        };
        let t = epoch_of(&l.time).unwrap_or_else(|| panic!("bad time in {line:?}"));
        assert!(l.time.ends_with('Z'), "not UTC: {line:?}");
        // The machine's own clock brackets every stamp (1 ms rounding).
        assert!(
            t >= before - 0.002 && t <= after + 0.002,
            "{line:?} not within the test's run"
        );
        assert!(
            ["error", "warning", "notice", "info", "debug"].contains(&l.level.as_str()),
            "{line:?}"
        );
        let expected = if l.pid == p.pid {
            1
        } else if l.pid == successor {
            2
        } else {
            panic!("a line of neither psflip: {line:?}")
        };
        assert_eq!(l.generation, expected, "{line:?}");
        seen.insert(l.pid);
    }
    assert_eq!(seen.len(), 2, "{log}");
    assert!(
        log.contains(&format!("started child (pid {child})")),
        "{log}"
    );
    assert!(
        log.contains(&format!("started child (pid {new_child})")),
        "{log}"
    );
    sb.assert_clean();
}

/// The JSON objects psflip logged, in order.
fn json_lines(sb: &Sandbox) -> Vec<serde_json::Value> {
    sb.psflip_log()
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON object: {l:?}: {e}"))
        })
        .collect()
}

#[test]
fn json_format_is_one_object_per_line_with_the_documented_keys() {
    let sb = Sandbox::new("logs_json");
    let mut p = sb.start_with(&Conf::sleep(&sb).top("log_format = \"json\""));
    let started =
        |v: &serde_json::Value, event: &str, pid: i32| v["event"] == event && v["pid"] == pid;
    let child = sb.wait_for(T, "a child_started event", || {
        json_lines(&sb)
            .iter()
            .find(|v| started(v, "child_started", p.pid))
            .and_then(|v| v["fields"]["pid"].as_i64())
    });
    assert!(
        alive(child as i32),
        "the logged child pid is the live child"
    );
    signal(p.pid, Signal::SIGHUP);
    let successor = sb.wait_for(T, "a successor_started event", || {
        json_lines(&sb)
            .iter()
            .find(|v| started(v, "successor_started", p.pid))
            .and_then(|v| v["fields"]["pid"].as_i64())
    }) as i32;
    sb.must_name(successor);
    sb.must_die(p.pid, "the old psflip");
    sb.terminate(successor, "the new generation");
    let _ = p.exit_code();

    let lines = json_lines(&sb);
    for v in &lines {
        for key in [
            "time",
            "level",
            "generation",
            "pid",
            "event",
            "message",
            "fields",
        ] {
            assert!(v.get(key).is_some(), "{key} missing in {v}");
        }
        let want = if v["pid"] == p.pid { 1 } else { 2 };
        assert_eq!(v["generation"], want, "{v}");
        assert!(v["fields"].is_object(), "{v}");
    }
    assert!(
        lines
            .iter()
            .any(|v| v["pid"] == successor && v["event"] == "child_started"),
        "the successor logs too"
    );
    // The upgrade's cause, as a field too: this test sent the signal.
    let me = std::process::id();
    assert!(
        lines.iter().any(|v| v["event"] == "upgrade_started"
            && v["fields"]["trigger"]
                .as_str()
                .is_some_and(|t| t.starts_with(&format!("SIGHUP from pid {me}, uid ")))),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|v| v["event"] == "upgrade_succeeded"
            && v["fields"]["successor_pid"] == successor),
        "{lines:#?}"
    );
    sb.assert_clean();
}

#[test]
fn under_journald_lines_start_with_a_priority_and_carry_no_time() {
    let sb = Sandbox::new("logs_journal");
    sb.config(&Conf::sleep(&sb).no_pidfile());
    // What systemd puts in JOURNAL_STREAM: the device and inode of the stream
    // it gave as stderr (here, the sandbox's log file).
    let cmd = |journal: String| {
        let mut c = sb.psflip_cmd(&["-c", "psflip.toml"]);
        c.env("JOURNAL_STREAM", journal);
        c
    };
    sb.write("psflip.err", "");
    let meta = fs::metadata(sb.err_log()).unwrap();
    let mut p = sb.spawn(cmd(format!("{}:{}", meta.dev(), meta.ino())));
    sb.must_log(p.pid, "serving");
    p.signal(Signal::SIGTERM);
    sb.wait_exit(&mut p, T);
    let log = sb.psflip_log();
    let ours: Vec<&str> = log.lines().filter(|l| l.contains("psflip[")).collect();
    assert!(!ours.is_empty(), "{log}");
    for line in &ours {
        let prefix = format!("gen=1 psflip[{}]: ", p.pid);
        let ok = ["<3>", "<4>", "<5>", "<6>", "<7>"]
            .iter()
            .any(|prio| line.starts_with(&format!("{prio}{prefix}")));
        assert!(ok, "not `<N>gen=1 psflip[pid]: `: {line:?}\n{log}");
    }
    assert!(
        ours.iter()
            .any(|l| l.starts_with("<6>") && l.contains("serving")),
        "{log}"
    );

    // A JOURNAL_STREAM that names another file (inherited from a parent whose
    // stderr went to the journal) is not ours: timestamps stay.
    fs::write(sb.err_log(), "").unwrap();
    let mut p = sb.spawn(cmd(format!("{}:{}", meta.dev(), meta.ino() + 1)));
    sb.must_log(p.pid, "serving");
    p.signal(Signal::SIGTERM);
    sb.wait_exit(&mut p, T);
    for line in sb.psflip_log().lines().filter(|l| l.contains("psflip[")) {
        assert!(parse_text(line).is_some(), "{line:?}");
    }
    sb.assert_clean();
}

/// FIONREAD: the bytes waiting in a pipe.
fn pending(fd: i32) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    n as usize
}

#[test]
fn a_stderr_nobody_reads_never_blocks_psflip_and_drops_are_counted() {
    let sb = Sandbox::with_deadline("logs_blocked", Duration::from_secs(60));
    // A probe that fails every 5 ms, counting its runs in a file: one failed
    // healthcheck line each, far more than a small pipe holds.
    let runs = sb.path("runs");
    let probe = format!("echo x >> {}; exit 1", runs.display());
    sb.config(
        &Conf::sleep(&sb)
            .probe(&["sh", "-c", &probe], "5ms")
            .upgrade_timeout("1m"),
    );
    let (mut reader, writer) = std::io::pipe().unwrap();
    // SAFETY: F_SETPIPE_SZ on a pipe we own.
    let size = unsafe { libc::fcntl(writer.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    assert!(size >= 4096, "F_SETPIPE_SZ");
    let mut cmd = sb.psflip_cmd(&["-c", "psflip.toml"]);
    cmd.stderr(Stdio::from(writer));
    let mut p = sb.spawn(cmd);
    let count = || fs::read_to_string(&runs).map_or(0, |t| t.lines().count());
    // The pipe is full: psflip's writes block from here on.
    sb.must(T, "psflip's stderr pipe is full", || {
        pending(reader.as_raw_fd()) + 200 >= size as usize
    });
    let full_at = count();
    // Probes go on being started and reaped: the event loop never waits for
    // its log. 600 more failures: more than psflip may queue.
    sb.must(Duration::from_secs(40), "600 more probe runs", || {
        count() >= full_at + 600
    });
    // ...and reaps them all.
    sb.must_reap(p.pid);

    // Read from now on; writing resumes and says what was lost.
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut text = String::new();
    let dropped = wait_for(T, || {
        while let Ok(chunk) = rx.try_recv() {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        text.lines().find_map(|l| {
            let (_, rest) = l.split_once(&format!("psflip[{}]: ", p.pid))?;
            rest.strip_suffix(" log lines dropped: stderr was not being read")?
                .parse::<usize>()
                .ok()
        })
    })
    .unwrap_or_else(|| panic!("no 'log lines dropped' line:\n{text}"));
    assert!(dropped > 0);
    // Every failed probe was either written or counted as dropped, never both
    // and never lost silently: lines written + dropped <= runs, and the queue
    // bound means most of the 600 were dropped.
    assert!(dropped >= 600 - 256 - 64, "dropped {dropped}");
    p.signal(Signal::SIGTERM);
    sb.wait_exit(&mut p, T);
    sb.assert_clean();
}

/// A failed tcp check is one line, naming the check and the reason — not a
/// second "healthcheck command failed" for a command nobody configured; and a
/// successor whose configuration is invalid does not print its error itself:
/// the old generation's `upgrade failed` line carries it, after `started
/// successor`, so every line of the log is a log line of one psflip.
#[test]
fn probe_failures_once_and_a_successor_config_error_in_order() {
    let sb = Sandbox::new("logs_probe_and_config_error");
    let port = free_port();
    let mut conf = Conf::sleep(&sb).upgrade_timeout("1s");
    conf.health =
        format!("[healthcheck.tcp]\naddress = \"127.0.0.1:{port}\"\ninterval = \"100ms\"\n");
    sb.config(&conf);
    let mut p = sb.start();
    assert_eq!(sb.wait_exit(&mut p, T), 1, "never healthy\n{}", sb.diag());
    let lines = sb.log_of(p.pid);
    let failed = lines
        .iter()
        .filter(|l| {
            l.starts_with("healthcheck failed: ") && l.contains(&format!("127.0.0.1:{port}: "))
        })
        .count();
    assert!(failed >= 1, "{lines:#?}");
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("healthcheck command failed")
                || l.contains("healthcheck probe failed")),
        "{lines:#?}"
    );

    // A successor that cannot read its configuration.
    std::fs::write(sb.err_log(), "").unwrap();
    sb.config(&Conf::sleep(&sb));
    let p = sb.start();
    sb.must_name(p.pid);
    sb.write("psflip.toml", "cmd = [\"sleep\", \"1000\"]\nbogus = 1\n");
    signal(p.pid, Signal::SIGHUP);
    sb.must_log(p.pid, "upgrade failed: the successor exited (exit code 2)");
    let log = sb.psflip_log();
    for line in log.lines() {
        assert!(
            parse_text(line).is_some(),
            "not a log line: {line:?}\n{log}"
        );
    }
    let lines = sb.log_of(p.pid);
    let started = lines
        .iter()
        .position(|l| l.starts_with("started successor"))
        .unwrap();
    let failed = lines
        .iter()
        .position(|l| l.contains("upgrade failed"))
        .unwrap();
    assert!(started < failed, "{lines:#?}");
    assert!(
        lines[failed].contains("invalid configuration: psflip.toml:2:1: unknown key `bogus`"),
        "{}",
        lines[failed]
    );
    signal(p.pid, Signal::SIGTERM);
    sb.must_die(p.pid, "psflip");
    sb.assert_clean();
}
