//! The pidfile (SPEC §5 step 3, I6).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sys::signal::Signal;
use rstest::rstest;

use crate::util::*;

#[test]
fn pidfile_holds_exactly_the_pid_and_is_written_only_once_healthy() {
    let sb = Sandbox::new("pidfile_holds_exactly_the_pid_and_is_written_only_once_healthy");
    sb.config(&Conf::fixture(&sb, &[]).alive("600ms"));
    // Before psflip starts, hence before its child does.
    let launched = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let mut p = sb.start();
    let c = sb.child_of(p.pid);
    sb.must_start(c);
    sb.must(T, "the pidfile appears", || sb.pidfile().exists());
    assert_eq!(
        fs::read_to_string(sb.pidfile()).unwrap(),
        format!("{}\n", p.pid)
    );
    let m = fs::metadata(sb.pidfile()).unwrap();
    let written = m.mtime() as u128 * 1_000_000_000 + m.mtime_nsec() as u128;
    // Measured from before psflip's launch, not from the child's own clock
    // reading (a loaded machine delayed that past 100 ms once): the child was
    // spawned after `launched`, and a pidfile written at its spawn would be
    // written within psflip's start-up, milliseconds after `launched` (20 ms
    // of slack: file times come from the coarse clock).
    let gap = Duration::from_nanos(written.saturating_sub(launched.as_nanos()) as u64);
    assert!(
        gap >= Duration::from_millis(580),
        "the pidfile was written {gap:?} after psflip was launched (alive timeout 600ms)"
    );
    assert!(m.is_file());
    p.signal(Signal::SIGTERM);
    // The child died of the SIGTERM psflip passed on: a requested stop (issue #9).
    assert_eq!(sb.wait_exit(&mut p, T), 0);
    sb.assert_clean();
}

#[test]
fn pidfile_is_replaced_atomically_across_10_upgrades() {
    let sb = Sandbox::with_deadline(
        "pidfile_is_replaced_atomically_across_10_upgrades",
        Duration::from_secs(40),
    );
    let mut p = sb.start_with(&Conf::sleep(&sb).alive("150ms"));

    // A reader hammering the file for the whole test: it must only ever see a
    // complete "<pid>\n".
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        let path = sb.pidfile();
        std::thread::spawn(move || {
            let mut bad = Vec::new();
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                reads += 1;
                match fs::read_to_string(&path) {
                    Ok(text) => {
                        let ok = text.strip_suffix('\n').is_some_and(|d| {
                            !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())
                        });
                        if !ok {
                            bad.push(format!("{text:?}"));
                        }
                    }
                    Err(e) => bad.push(format!("read error: {e}")),
                }
            }
            (reads, bad)
        })
    };

    let mut inodes = vec![fs::metadata(sb.pidfile()).unwrap().ino()];
    let mut active = p.pid;
    for round in 1..=10 {
        active = sb.upgrade(active);
        if round == 1 {
            assert_eq!(sb.wait_exit(&mut p, T), 0);
        }
        inodes.push(fs::metadata(sb.pidfile()).unwrap().ino());
    }
    stop.store(true, Ordering::Relaxed);
    let (reads, bad) = reader.join().unwrap();
    assert!(
        bad.is_empty(),
        "a reader saw {} bad reads of {reads}: {bad:?}",
        bad.len()
    );
    assert!(reads > 100, "the reader only read {reads} times");
    for w in inodes.windows(2) {
        assert_ne!(w[0], w[1], "the pidfile was rewritten in place: {inodes:?}");
    }
    // No temp file is left beside it.
    let leftovers: Vec<_> = fs::read_dir(&sb.dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("psflip.pid") && n != "psflip.pid")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    sb.terminate(active, "the last generation");
    assert!(
        !sb.pidfile().exists(),
        "the last generation removes its pidfile"
    );
    sb.assert_clean();
}

#[rstest]
#[case::to_a_file(true)]
#[case::dangling(false)]
fn a_planted_symlink_is_replaced_not_followed(#[case] target_exists: bool) {
    let sb = Sandbox::new("a_planted_symlink_is_replaced_not_followed");
    let victim = sb.path("victim");
    if target_exists {
        fs::write(&victim, "precious\n").unwrap();
    }
    std::os::unix::fs::symlink(&victim, sb.pidfile()).unwrap();
    let mut p = sb.start_with(&Conf::sleep(&sb));
    let meta = fs::symlink_metadata(sb.pidfile()).unwrap();
    assert!(meta.file_type().is_file(), "the pidfile is still a symlink");
    if target_exists {
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");
    } else {
        assert!(!victim.exists(), "psflip created the symlink's target");
    }
    p.signal(Signal::SIGTERM);
    // The child died of the SIGTERM psflip passed on: a requested stop (issue #9).
    assert_eq!(sb.wait_exit(&mut p, T), 0);
    if target_exists {
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");
    }
    sb.assert_clean();
}

#[test]
fn pidfile_is_removed_when_psflip_exits_because_its_child_exited() {
    let sb = Sandbox::new("pidfile_is_removed_when_psflip_exits_because_its_child_exited");
    let mut p = start_child_exiting_3(&sb);
    assert_eq!(sb.wait_exit(&mut p, T), 3, "{}", sb.diag());
    assert!(!sb.pidfile().exists());
    sb.assert_clean();
}

#[test]
fn a_pidfile_naming_someone_else_is_left_alone() {
    let sb = Sandbox::new("a_pidfile_naming_someone_else_is_left_alone");
    let mut p = sb.start_with(&Conf::sleep(&sb));
    fs::write(sb.pidfile(), "1\n").unwrap();
    p.signal(Signal::SIGTERM);
    // The child died of the SIGTERM psflip passed on: a requested stop (issue #9).
    assert_eq!(sb.wait_exit(&mut p, T), 0);
    assert_eq!(fs::read_to_string(sb.pidfile()).unwrap(), "1\n");
    sb.assert_clean();
}

#[test]
fn the_old_generation_leaves_the_pidfile_to_its_successor() {
    let sb = Sandbox::new("the_old_generation_leaves_the_pidfile_to_its_successor");
    let mut p = sb.start_with(&Conf::fixture(&sb, &[]));
    let s = sb.upgrade(p.pid);
    assert_eq!(sb.wait_exit(&mut p, T), 0);
    // The old psflip has exited: the pidfile still names the successor.
    assert_eq!(sb.read_pidfile(), Some(s));
    assert!(alive(s));
    sb.terminate(s, "the successor");
    assert!(!sb.pidfile().exists());
    sb.assert_clean();
}
