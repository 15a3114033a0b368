//! `psflip check` shows the values the next generation would get (issue #7):
//! the running service's successor's `AB`/`BlueGreen`, or the first
//! generation's when nothing runs; `--generation first` for a fresh start; and
//! how the running generation's `upgrade.timeout` bounds its successor's.

use std::process::Stdio;

use crate::util::*;

/// `psflip check ARGS… -c psflip.toml`: exit status and stdout.
fn check(sb: &Sandbox, args: &[&str]) -> (i32, String) {
    let mut all = vec!["check"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-c", "psflip.toml"]);
    let out = sb.psflip_cmd(&all).stdout(Stdio::piped()).output().unwrap();
    (code_of(out.status), String::from_utf8(out.stdout).unwrap())
}

fn conf(sb: &Sandbox, timeout: &str) -> Conf {
    Conf::cmd(sb, &["sleep", "1000"])
        .env("COLOUR", "{{ BlueGreen }}")
        .upgrade_timeout(timeout)
}

#[test]
fn check_shows_the_next_generation_and_the_timeout_cap() {
    let sb = Sandbox::new("check_next_generation");
    sb.config(&conf(&sb, "3s"));

    // Nothing runs: the next generation is the first.
    let (code, text) = check(&sb, &[]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("nothing of this configuration runs"),
        "{text}"
    );
    assert!(text.contains(r#"env = ["COLOUR=blue"]"#), "{text}");

    let p = sb.start();
    sb.must_name(p.pid);
    let (_, text) = check(&sb, &[]);
    assert!(
        text.contains(&format!(
            "the values of generation 2, the next: generation 1 runs\n# (psflip pid {})",
            p.pid
        )),
        "{text}"
    );
    assert!(text.contains(r#"env = ["COLOUR=green"]"#), "{text}");
    let (_, first) = check(&sb, &["--generation", "first"]);
    assert!(first.contains(r#"env = ["COLOUR=blue"]"#), "{first}");
    assert!(
        first.contains("the first generation (a fresh start)"),
        "{first}"
    );

    // A longer upgrade.timeout in the new file does not apply: the running
    // generation's (3 s) bounds its successor's.
    sb.config(&conf(&sb, "6s"));
    let (_, text) = check(&sb, &[]);
    assert!(
        text.contains("the new child must be healthy within 3s (not this file's 6s)"),
        "{text}"
    );

    // After an upgrade, generation 2 runs: generation 3 is blue again.
    let s = sb.upgrade(p.pid);
    let (_, text) = check(&sb, &[]);
    assert!(
        text.contains("the values of generation 3, the next: generation 2 runs"),
        "{text}"
    );
    assert!(text.contains(r#"env = ["COLOUR=blue"]"#), "{text}");
    // Its own upgrade.timeout is 6 s now: the cap is 6 s, the file says 6 s.
    assert!(
        text.contains("the new child must be healthy within 6s (the running"),
        "{text}"
    );
    // What the child of generation 2 really got.
    let child = sb.child_of(s);
    assert_eq!(env_var(child, "COLOUR").as_deref(), Some("green"));
    finish(&sb, s);
}
