//! `[healthcheck.tcp]` and `[healthcheck.http]` against real listeners: the
//! probe is psflip's own binary (`psflip __probe …`), run by the machine like a
//! `[healthcheck.command]`. The apps are small Python servers that start
//! listening only after a delay, on ports the test picked by binding port 0.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::util::*;

/// `server.py ADDRESS DELAY MARKER`: sleeps DELAY seconds, creates MARKER, then
/// listens on ADDRESS (a port on 127.0.0.1, or `unix:PATH`) and accepts and
/// closes connections forever. MARKER is written *before* the listener exists,
/// so a psflip that reports ready before MARKER exists did not wait for it.
const SERVER: &str = r#"
import os, socket, sys, time
address, delay, marker = sys.argv[1], float(sys.argv[2]), sys.argv[3]
time.sleep(delay)
open(marker, "w").close()
if address.startswith("unix:"):
    s = socket.socket(socket.AF_UNIX)
    s.bind(address[5:])
else:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(address)))
s.listen(64)
while True:
    c, _ = s.accept()
    c.close()
"#;

/// Two different free ports.
fn two_free_ports() -> (u16, u16) {
    (free_port(), free_port())
}

/// The command line of [`SERVER`].
fn server_cmd(sb: &Sandbox, address: &str, delay: &str, marker: &Path) -> Vec<String> {
    let script = sb.write("server.py", SERVER);
    vec![
        "python3".to_string(),
        script.to_string_lossy().into_owned(),
        address.to_string(),
        delay.to_string(),
        marker.to_string_lossy().into_owned(),
    ]
}

fn tcp_table(address: &str, interval: &str) -> String {
    format!(
        "[healthcheck.tcp]\naddress = {}\ninterval = {}\n",
        q(address),
        q(interval)
    )
}

fn http_table(url: &str, status: &str, interval: &str) -> String {
    format!(
        "[healthcheck.http]\nurl = {}\nstatus = {}\ninterval = {}\n",
        q(url),
        q(status),
        q(interval)
    )
}

/// Waits until the pidfile names `pid`, failing if it ever does while `marker`
/// (written just before the app listens) is missing.
fn must_name_only_after(sb: &Sandbox, pid: i32, marker: &Path) {
    sb.must(T, &format!("the pidfile names {pid}"), || {
        if sb.read_pidfile() != Some(pid) {
            return false;
        }
        assert!(
            marker.exists(),
            "[{}] psflip {pid} reported ready before its child listened\n{}",
            sb.name,
            sb.diag()
        );
        true
    });
}

/// Runs `psflip ARGS…` to completion, capturing its output.
fn cli(sb: &Sandbox, args: &[&str]) -> Output {
    sb.psflip_cmd(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run psflip")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn tcp_ready_only_once_the_port_answers() {
    let sb = Sandbox::new("tcp_ready_only_once_the_port_answers");
    let port = free_port();
    let marker = sb.path("listening");
    let mut conf = Conf::cmd(&sb, &server_cmd(&sb, &port.to_string(), "0.7", &marker));
    conf.health = tcp_table(&format!("127.0.0.1:{port}"), "100ms");
    sb.config(&conf);
    let started = Instant::now();
    let mut p = sb.start();
    must_name_only_after(&sb, p.pid, &marker);
    assert!(started.elapsed() >= Duration::from_millis(700));
    TcpStream::connect(("127.0.0.1", port)).expect("the app listens");
    // The failed tries said why, under the pid of the psflip they belong to.
    assert!(
        sb.logged(
            p.pid,
            &format!("healthcheck failed: tcp://127.0.0.1:{port}: connection refused")
        ),
        "{}",
        sb.diag()
    );
    sb.must_reap(p.pid);
    stop(&sb, &mut p);
}

#[test]
fn tcp_to_a_unix_socket_relative_to_psflips_directory() {
    let sb = Sandbox::new("tcp_to_a_unix_socket_relative_to_psflips_directory");
    fs::create_dir_all(sb.path("srv")).unwrap();
    let socket = sb.path("app.sock");
    let marker = sb.path("listening");
    let address = format!("unix:{}", socket.display());
    let mut conf = Conf::cmd(&sb, &server_cmd(&sb, &address, "0.4", &marker));
    // The child and its probes run in srv/; the address is psflip's own.
    conf.workdir = Some("srv".to_string());
    conf.health = tcp_table("unix://app.sock", "100ms");
    sb.config(&conf);
    let mut p = sb.start();
    must_name_only_after(&sb, p.pid, &marker);
    let absolute = format!("unix://{}", socket.display());
    assert!(
        sb.logged(p.pid, &format!("healthcheck failed: {absolute}: ")),
        "{}",
        sb.diag()
    );
    stop(&sb, &mut p);
}

#[test]
fn tcp_upgrade_hands_over_once_the_new_port_answers() {
    let sb = Sandbox::new("tcp_upgrade_hands_over_once_the_new_port_answers");
    let (p1, p2) = two_free_ports();
    let port = format!("{{{{ AB \"{p1}\" \"{p2}\" }}}}");
    let marker = sb.path("listening-{{ BlueGreen }}");
    let mut conf = Conf::cmd(&sb, &server_cmd(&sb, &port, "0.4", &marker));
    conf.health = tcp_table(&format!("127.0.0.1:{port}"), "100ms");
    sb.config(&conf);
    let mut p = sb.start();
    must_name_only_after(&sb, p.pid, &sb.path("listening-blue"));
    let c1 = sb.child_of(p.pid);
    p.signal(Signal::SIGHUP);
    let s = sb.successor_of(p.pid);
    must_name_only_after(&sb, s, &sb.path("listening-green"));
    sb.must_die(c1, "the old child");
    TcpStream::connect(("127.0.0.1", p2)).expect("the new app listens");
    assert_eq!(sb.wait_exit(&mut p, T), 0, "{}", sb.diag());
    finish(&sb, s);
}

#[test]
fn tcp_upgrade_whose_new_child_never_listens_fails() {
    let sb = Sandbox::new("tcp_upgrade_whose_new_child_never_listens_fails");
    let (p1, p2) = two_free_ports();
    let marker = sb.path("listening");
    let mut conf = Conf::cmd(&sb, &server_cmd(&sb, &p1.to_string(), "0", &marker));
    conf.health = tcp_table(&format!("127.0.0.1:{p1}"), "100ms");
    conf.upgrade_timeout = "1s".into();
    sb.config(&conf);
    let mut p = sb.start();
    must_name_only_after(&sb, p.pid, &marker);
    let c1 = sb.child_of(p.pid);
    // The next generation runs an app that never listens on the port it checks.
    let mut next = Conf::sleep(&sb);
    next.health = tcp_table(&format!("127.0.0.1:{p2}"), "100ms");
    next.upgrade_timeout = "1s".into();
    sb.config(&next);
    let out = cli(&sb, &["upgrade", "-c", "psflip.toml"]);
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_ne!(out.status.code(), Some(0), "{said}\n{}", sb.diag());
    assert!(
        said.contains("did not become healthy within upgrade.timeout"),
        "{said}\n{}",
        sb.diag()
    );
    let s = sb.successor_of(p.pid);
    let c2 = sb.child_of(s);
    sb.must_die(s, "the successor");
    sb.must_die(c2, "the new child");
    assert!(
        sb.logged(
            s,
            &format!("healthcheck failed: tcp://127.0.0.1:{p2}: connection refused")
        ),
        "{}",
        sb.diag()
    );
    // The old generation is untouched and still serves.
    assert!(p.running());
    sb.assert_alive(c1, "the old child");
    assert_eq!(sb.read_pidfile(), Some(p.pid));
    assert!(sb.signals_of(c1).is_empty());
    TcpStream::connect(("127.0.0.1", p1)).expect("the old app still listens");
    stop(&sb, &mut p);
}

#[test]
fn http_ready_once_the_server_answers_2xx() {
    let sb = Sandbox::new("http_ready_once_the_server_answers_2xx");
    let port = free_port();
    sb.write("health", "ok\n");
    let marker = sb.path("listening");
    let script = format!(
        "sleep 0.5; touch {}; exec python3 -m http.server --bind 127.0.0.1 {port}",
        marker.display()
    );
    let mut conf = Conf::cmd(&sb, &["sh", "-c", &script]);
    conf.health = http_table(&format!("http://127.0.0.1:{port}/health"), "2xx", "100ms");
    sb.config(&conf);
    let mut p = sb.start();
    must_name_only_after(&sb, p.pid, &marker);
    assert!(
        sb.logged(
            p.pid,
            &format!("healthcheck failed: http://127.0.0.1:{port}/health: connection refused")
        ),
        "{}",
        sb.diag()
    );
    // http.server logs each request it answered.
    assert!(
        sb.psflip_log().contains("\"GET /health HTTP/1.1\" 200"),
        "{}",
        sb.diag()
    );
    stop(&sb, &mut p);
}

#[test]
fn http_answering_404_is_never_healthy_for_2xx() {
    let sb = Sandbox::new("http_answering_404_is_never_healthy_for_2xx");
    let port = free_port();
    let mut conf = Conf::cmd(
        &sb,
        &[
            "python3",
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ],
    );
    conf.health = http_table(&format!("http://127.0.0.1:{port}/health"), "2xx", "100ms");
    // Long enough for python to start and answer 404 on a loaded machine.
    conf.upgrade_timeout = "5s".into();
    sb.config(&conf);
    let mut p = sb.start();
    // The first child never healthy: psflip stops it and exits 1, no pidfile.
    assert_eq!(sb.wait_exit(&mut p, T), 1, "{}", sb.diag());
    assert!(!sb.pidfile().exists(), "{}", sb.diag());
    assert!(
        sb.logged(
            p.pid,
            &format!(
                "healthcheck failed: http://127.0.0.1:{port}/health: answered 404 (expected 2xx)"
            )
        ),
        "{}",
        sb.diag()
    );
    assert!(
        sb.logged(p.pid, "did not become healthy within upgrade.timeout"),
        "{}",
        sb.diag()
    );
    sb.assert_clean();
}

#[test]
fn quiet_probes_say_nothing() {
    let sb = Sandbox::new("quiet_probes_say_nothing");
    let port = free_port();
    let marker = sb.path("listening");
    let mut conf = Conf::cmd(&sb, &server_cmd(&sb, &port.to_string(), "0.3", &marker));
    conf.health = tcp_table(&format!("127.0.0.1:{port}"), "100ms");
    conf.top.push("quiet = true".to_string());
    sb.config(&conf);
    let mut p = sb.start();
    must_name_only_after(&sb, p.pid, &marker);
    assert!(
        !sb.psflip_log().contains("healthcheck failed"),
        "{}",
        sb.diag()
    );
    stop(&sb, &mut p);
}

#[test]
fn the_probe_subcommand_is_hidden_and_checks_once() {
    let sb = Sandbox::new("the_probe_subcommand_is_hidden_and_checks_once");
    let help = cli(&sb, &["--help"]);
    assert!(!text(&help.stdout).contains("__probe"), "{help:?}");

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let open = listener.local_addr().unwrap().to_string();
    let ok = cli(&sb, &["__probe", "tcp", "--timeout", "1s", "--", &open]);
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    assert!(ok.stdout.is_empty() && ok.stderr.is_empty(), "{ok:?}");

    let closed = format!("127.0.0.1:{}", free_port());
    let refused = cli(&sb, &["__probe", "tcp", "--timeout", "1s", "--", &closed]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let err = text(&refused.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.ends_with(&format!(
            ": healthcheck failed: tcp://{closed}: connection refused\n"
        )),
        "{err}"
    );

    let quiet = cli(
        &sb,
        &[
            "__probe",
            "tcp",
            "--timeout",
            "1s",
            "--quiet",
            "--",
            &closed,
        ],
    );
    assert_eq!(quiet.status.code(), Some(1), "{quiet:?}");
    assert!(quiet.stderr.is_empty(), "{quiet:?}");

    let http = cli(
        &sb,
        &[
            "__probe",
            "http",
            "--timeout",
            "1s",
            "--",
            &format!("http://{closed}/"),
            "2xx",
        ],
    );
    assert_eq!(http.status.code(), Some(1), "{http:?}");
}

#[test]
fn check_prints_the_tcp_and_http_tables() {
    let sb = Sandbox::new("check_prints_the_tcp_and_http_tables");
    let mut conf = Conf::sleep(&sb);
    conf.health = tcp_table("localhost:{{ AB \"8081\" \"8082\" }}", "100ms");
    sb.config(&conf);
    let out = cli(&sb, &["check", "-c", "psflip.toml"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        text(&out.stdout).contains(
            "\n[healthcheck.tcp]\naddress = \"tcp://localhost:8081\"\ninterval = \"100ms\"\n"
        ),
        "{out:?}"
    );
    conf.health = http_table("https://localhost/", "2xx", "1s");
    sb.config(&conf);
    let out = cli(&sb, &["check", "-c", "psflip.toml"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        text(&out.stderr).contains("healthcheck.http.url: https is not supported"),
        "{out:?}"
    );
}
