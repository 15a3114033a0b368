//! The command line (SPEC §1): flags, `check`, where the configuration is found.

use std::fs;
use std::path::Path;
use std::process::Stdio;

use rstest::rstest;

use crate::util::*;

/// What a short-lived psflip run printed and returned.
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Run `psflip ARGS…` in `cwd` to its end (with a deadline), capturing its output.
fn run_in(sb: &Sandbox, cwd: &Path, args: &[&str]) -> Ran {
    let out = sb.path("run.out");
    let err = sb.path("run.err");
    let mut cmd = sb.psflip_cmd(args);
    cmd.current_dir(cwd)
        .stdout(fs::File::create(&out).unwrap())
        .stderr(fs::File::create(&err).unwrap())
        .stdin(Stdio::null());
    let mut p = sb.spawn(cmd);
    let code = sb.wait_exit(&mut p, T);
    Ran {
        code,
        stdout: fs::read_to_string(&out).unwrap(),
        stderr: fs::read_to_string(&err).unwrap(),
    }
}

fn run(sb: &Sandbox, args: &[&str]) -> Ran {
    run_in(sb, &sb.dir, args)
}

#[test]
fn version_and_help_exit_0() {
    let sb = Sandbox::new("version_and_help_exit_0");
    for flag in ["--version", "-V"] {
        let r = run(&sb, &[flag]);
        assert_eq!(r.code, 0, "{flag}: {}", r.stderr);
        assert_eq!(
            r.stdout,
            format!("psflip {}\n", env!("CARGO_PKG_VERSION")),
            "{flag}"
        );
    }
    for args in [&["--help"][..], &["-h"], &["check", "--help"], &["help"]] {
        let r = run(&sb, args);
        assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
        assert!(r.stdout.contains("Usage: psflip"), "{args:?}: {}", r.stdout);
        assert!(r.stdout.contains("--config"), "{args:?}: {}", r.stdout);
    }
    assert!(run(&sb, &["--help"]).stdout.contains("check"));
    sb.assert_clean();
}

#[test]
fn unknown_flag_or_command_exits_2() {
    let sb = Sandbox::new("unknown_flag_or_command_exits_2");
    let r = run(&sb, &["--bogus"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--bogus"), "{}", r.stderr);
    assert!(r.stdout.is_empty(), "{}", r.stdout);

    let r = run(&sb, &["frobnicate"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("frobnicate"), "{}", r.stderr);

    let r = run(&sb, &["-c"]);
    assert_eq!(r.code, 2, "-c without a value: {}", r.stderr);
    sb.assert_clean();
}

#[test]
fn check_prints_the_resolved_configuration() {
    let sb = Sandbox::new("check_prints_the_resolved_configuration");
    sb.write(
        "good.toml",
        r#"cmd = ["echo", "{{ BlueGreen }}", '{{ Env "E2E_WORD" }}', '{{ Local "port" }}']
env = { MODE = "prod" }
pidfile = "run/app.pid"

[locals]
port = '{{ AB "8081" "8082" }}'

[shutdown]
timeout = "1m30s"
signal = "int"

[healthcheck.alive]
timeout = "200ms"
"#,
    );
    let mut cmd = sb.psflip_cmd(&["check", "-c", "good.toml"]);
    cmd.env("E2E_WORD", "hello");
    let out = sb.path("check.out");
    cmd.stdout(fs::File::create(&out).unwrap());
    let mut p = sb.spawn(cmd);
    assert_eq!(sb.wait_exit(&mut p, T), 0, "{}", sb.diag());
    let text = fs::read_to_string(&out).unwrap();
    for want in [
        r#"cmd = ["echo", "blue", "hello", "8081"]"#,
        r#"env = ["MODE=prod"]"#,
        r#"pidfile = "run/app.pid""#,
        r#"signal = "SIGINT""#,
        r#"timeout = "1m30s""#,
        r#"timeout = "200ms""#,
        r#"signal = "SIGHUP""#,
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    // What `check` prints is itself a valid configuration meaning the same.
    sb.write("resolved.toml", &text);
    let again = run(&sb, &["check", "-c", "resolved.toml"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    // The header comments name the file and the generation; the rest is equal.
    let body = |s: &str| {
        s.lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(body(&again.stdout), body(&text));
    // `check` starts nothing.
    assert!(!sb.child_log().exists());
    sb.assert_clean();
}

#[rstest]
#[case::unknown_key("cmd = [\"true\"]\nbogus = 1\n", &["bad.toml:2:1", "bogus"])]
#[case::unknown_key_in_table(
    "cmd = [\"true\"]\n\n[shutdown]\ntimout = \"1s\"\n",
    &["bad.toml:4:1", "timout", "[shutdown]"]
)]
#[case::bad_duration(
    "cmd = [\"true\"]\n\n[shutdown]\ntimeout = \"10 s\"\n",
    &["bad.toml:4:", "shutdown.timeout", "10 s"]
)]
#[case::bad_signal(
    "cmd = [\"true\"]\n[upgrade]\nsignal = \"SIGNOPE\"\n",
    &["bad.toml:3:", "upgrade.signal", "SIGNOPE"]
)]
#[case::unknown_template_function("cmd = [\"true\", \"{{ Nope }}\"]\n", &["bad.toml:1:", "cmd[1]", "Nope"])]
#[case::unbalanced_template(
    "cmd = [\"true\"]\nenv = [\"A={{ BlueGreen \"]\n",
    &["bad.toml:2:", "env[0]"]
)]
#[case::missing_cmd("pidfile = \"x.pid\"\n", &["bad.toml", "cmd"])]
#[case::syntax_error("cmd = [\"true\"\n", &["bad.toml:"])]
#[case::missing_file("", &["nope.toml", "cannot read"])]
fn check_rejects_a_bad_configuration(#[case] text: &str, #[case] wants: &[&str]) {
    let sb = Sandbox::new("check_rejects_a_bad_configuration");
    let file = if text.is_empty() {
        "nope.toml"
    } else {
        sb.write("bad.toml", text);
        "bad.toml"
    };
    for mode in [&["check", "-c", file][..], &["-c", file]] {
        let r = run(&sb, mode);
        assert_eq!(r.code, 2, "{mode:?}: {}", r.stderr);
        for want in wants {
            assert!(
                r.stderr.contains(want),
                "{mode:?}: missing {want:?} in {:?}",
                r.stderr
            );
        }
        assert!(r.stdout.is_empty(), "{mode:?}: {}", r.stdout);
    }
    // Run mode with a bad configuration starts nothing.
    assert!(!sb.child_log().exists());
    assert!(!sb.pidfile().exists());
    sb.assert_clean();
}

/// Start psflip with `args` in `cwd`, check that it serves and upgrades (the
/// successor must find the configuration again), then stop it.
fn serve_and_upgrade(sb: &Sandbox, cwd: &Path, args: &[&str]) {
    let mut cmd = sb.psflip_cmd(args);
    cmd.current_dir(cwd);
    let mut p = sb.spawn(cmd);
    sb.must_name(p.pid);
    let s = sb.upgrade(p.pid);
    assert_eq!(sb.wait_exit(&mut p, T), 0, "{}", sb.diag());
    let c = sb.child_of(s);
    sb.assert_alive(c, "the new child");
    finish(sb, s);
}

#[test]
fn config_path_absolute() {
    // The Go original only found configuration paths relative to its cwd.
    let sb = Sandbox::new("config_path_absolute");
    let conf = sb.write("etc/app.toml", &Conf::sleep(&sb).render());
    let elsewhere = sb.path("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    let abs = conf.to_str().unwrap();
    assert!(conf.is_absolute());

    let r = run_in(&sb, &elsewhere, &["check", "-c", abs]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("cmd = [\"sleep\", \"1000\"]"),
        "{}",
        r.stdout
    );
    serve_and_upgrade(&sb, &elsewhere, &["-c", abs]);
    serve_and_upgrade(&sb, Path::new("/"), &["--config", abs]);
}

#[test]
fn config_path_relative() {
    let sb = Sandbox::new("config_path_relative");
    sb.write("etc/app.toml", &Conf::sleep(&sb).render());
    let r = run(&sb, &["check", "-c", "etc/app.toml"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("cmd = [\"sleep\", \"1000\"]"),
        "{}",
        r.stdout
    );
    serve_and_upgrade(&sb, &sb.dir, &["-c", "etc/app.toml"]);
    serve_and_upgrade(&sb, &sb.path("etc"), &["-c", "./app.toml"]);
    // The other spellings of the option: `--config=FILE` is read without clap
    // (as `-c FILE` and `--config FILE`), `-cFILE` by clap.
    serve_and_upgrade(&sb, &sb.dir, &["--config=etc/app.toml"]);
    serve_and_upgrade(&sb, &sb.dir, &["-cetc/app.toml"]);
}

#[test]
fn config_defaults_to_psflip_toml_in_the_cwd() {
    let sb = Sandbox::new("config_defaults_to_psflip_toml_in_the_cwd");
    // Without the file: a configuration error naming it.
    let r = run(&sb, &["check"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("psflip.toml"), "{}", r.stderr);

    sb.config(&Conf::sleep(&sb));
    let r = run(&sb, &["check"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("cmd = [\"sleep\", \"1000\"]"),
        "{}",
        r.stdout
    );
    serve_and_upgrade(&sb, &sb.dir, &[]);
}
