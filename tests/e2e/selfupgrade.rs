//! Upgrading psflip itself and its configuration (SPEC §5 step 1, §2, §3).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use nix::sys::signal::Signal;

use crate::util::*;

/// Install a fresh copy of the psflip binary at `bin/psflip` in the sandbox,
/// the way a deploy does it: copy to a new file, then rename it over the old.
fn exe_of(pid: i32) -> String {
    fs::read_link(format!("/proc/{pid}/exe"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn a_binary_replaced_by_rename_is_what_the_successor_runs() {
    let sb = Sandbox::new("a_binary_replaced_by_rename_is_what_the_successor_runs");
    sb.config(&Conf::sleep(&sb));
    let installed = deploy(&sb);
    let mut p = start_installed(&sb, &installed);
    sb.must_name(p.pid);
    assert_eq!(exe_of(p.pid), installed.to_string_lossy());

    let mut active = p.pid;
    for round in 1..=2 {
        let installed = deploy(&sb);
        assert!(
            exe_of(active).ends_with(" (deleted)"),
            "the running binary was replaced: {}",
            exe_of(active)
        );
        active = sb.upgrade(active);
        if round == 1 {
            assert_eq!(sb.wait_exit(&mut p, T), 0, "{}", sb.diag());
        }
        assert_eq!(exe_of(active), installed.to_string_lossy(), "round {round}");
        let running = fs::metadata(format!("/proc/{active}/exe")).unwrap().ino();
        let on_disk = fs::metadata(&installed).unwrap().ino();
        assert_eq!(
            running, on_disk,
            "the successor runs the new file (round {round})"
        );
    }
    finish(&sb, active);
}

#[test]
fn f_binary_missing_or_not_executable_the_old_generation_carries_on() {
    let sb = Sandbox::new("f_binary_missing_or_not_executable");
    sb.config(&Conf::fixture(&sb, &[]));
    let installed = deploy(&sb);
    let mut p = start_installed(&sb, &installed);
    let c1 = must_serve(&sb, &p);

    let untouched = |p: &mut Psflip, failures: usize| {
        sb.must(T, "the failure is logged", || {
            sb.log_of(p.pid)
                .iter()
                .filter(|l| l.contains("upgrade failed: cannot start the successor"))
                .count()
                == failures
        });
        assert!(p.running(), "{}", sb.diag());
        sb.assert_alive(c1, "the old child");
        assert!(sb.signals_of(c1).is_empty(), "the old child was signalled");
        assert_eq!(sb.read_pidfile(), Some(p.pid));
        assert!(sb.started_by(p.pid, "successor").is_empty());
    };

    // Missing.
    let away = sb.path("bin/psflip.away");
    fs::rename(&installed, &away).unwrap();
    p.signal(Signal::SIGHUP);
    untouched(&mut p, 1);
    assert!(sb.psflip_log().contains("No such file"), "{}", sb.diag());

    // Not executable.
    fs::rename(&away, &installed).unwrap();
    fs::set_permissions(&installed, fs::Permissions::from_mode(0o644)).unwrap();
    p.signal(Signal::SIGHUP);
    untouched(&mut p, 2);
    assert!(
        sb.psflip_log().contains("Permission denied"),
        "{}",
        sb.diag()
    );

    // Fixed: the upgrade goes through.
    fs::set_permissions(&installed, fs::Permissions::from_mode(0o755)).unwrap();
    let s = sb.upgrade(p.pid);
    assert_eq!(sb.wait_exit(&mut p, T), 0, "{}", sb.diag());
    assert_eq!(sb.signals_of(c1), ["TERM"]);
    finish(&sb, s);
}

#[test]
fn the_configuration_is_reloaded_on_upgrade() {
    let sb = Sandbox::new("the_configuration_is_reloaded_on_upgrade");
    let mut p = sb.start_with(&Conf::fixture(&sb, &["gen-one"]).env("E2E_VAR", "old"));
    let c1 = sb.child_of(p.pid);
    assert_eq!(sb.must_start(c1), "gen-one");
    assert_eq!(env_var(c1, "E2E_VAR").as_deref(), Some("old"));

    sb.config(
        &Conf::fixture(&sb, &["gen-two", "extra"])
            .env("E2E_VAR", "new")
            .env("E2E_MORE", "more"),
    );
    let s = sb.upgrade(p.pid);
    assert_eq!(sb.wait_exit(&mut p, T), 0, "{}", sb.diag());
    let c2 = sb.child_of(s);
    assert_eq!(sb.must_start(c2), "gen-two extra");
    assert_eq!(env_var(c2, "E2E_VAR").as_deref(), Some("new"));
    assert_eq!(env_var(c2, "E2E_MORE").as_deref(), Some("more"));

    // A different program altogether.
    sb.config(&Conf::sleep(&sb));
    let s2 = sb.upgrade(s);
    let c3 = sb.child_of(s2);
    sb.must(T, "the new child runs sleep", || comm(c3) == "sleep");
    finish(&sb, s2);
}

#[test]
fn ab_and_bluegreen_alternate_across_generations() {
    let sb = Sandbox::new("ab_and_bluegreen_alternate_across_generations");
    let mut p = sb.start_with(
        &Conf::fixture(
            &sb,
            &[
                "{{ AB \"a\" \"b\" }}",
                "{{ BlueGreen }}",
                "{{ Local \"port\" }}",
            ],
        )
        .top("[locals]\nport = \"{{ AB \\\"8081\\\" \\\"8082\\\" }}\""),
    );
    let mut seen = vec![sb.must_start(sb.child_of(p.pid))];
    let mut active = p.pid;
    for round in 1..=3 {
        active = sb.upgrade(active);
        if round == 1 {
            assert_eq!(sb.wait_exit(&mut p, T), 0, "{}", sb.diag());
        }
        seen.push(sb.must_start(sb.child_of(active)));
    }
    assert_eq!(
        seen,
        ["a blue 8081", "b green 8082", "a blue 8081", "b green 8082"]
    );
    finish(&sb, active);
}
