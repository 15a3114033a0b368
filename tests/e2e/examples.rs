//! Every configuration in `examples/` runs as its header says (issue #7): the
//! header's `# Run:` and `# Upgrade:` commands are executed as written, from the
//! repository's root, with the built psflip first in `PATH`; the service must
//! come up, survive two upgrades (the third generation reuses the first one's
//! AB values and names) and stop on Ctrl-C, leaving nothing behind. An example
//! whose header drifts from what works fails here.
//!
//! The examples use fixed ports and paths (as a user's copy would): they run
//! one at a time.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::util::*;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The command after `# KEY:` in the example's header.
fn header(example: &str, key: &str) -> String {
    let text = fs::read_to_string(repo().join("examples").join(example)).unwrap();
    let prefix = format!("# {key}:");
    let line = text
        .lines()
        .take_while(|l| l.starts_with('#'))
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("examples/{example} has no `{prefix}` line"));
    // A trailing `(…)` is a remark for people.
    let command = match line.find("  (") {
        Some(i) => &line[..i],
        None => line,
    };
    command.trim().to_string()
}

/// `sh -c COMMAND` from the repository's root, the built binaries first in PATH.
fn shell(sb: &Sandbox, command: &str) -> std::process::Command {
    let bin_dir = bin().parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = sb.command("sh");
    cmd.args(["-c", command])
        .current_dir(repo())
        .env("PATH", path)
        .env_remove("TMPDIR");
    cmd
}

/// `GET /` over `stream`: the status line's code.
fn get(mut stream: impl Read + Write) -> Option<u16> {
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    answer.split_whitespace().nth(1)?.parse().ok()
}

fn get_tcp(port: u16) -> Option<u16> {
    let s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    get(s)
}

fn get_unix(path: &Path) -> Option<u16> {
    let s = UnixStream::connect(path).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    get(s)
}

fn refused(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_err()
}

/// What an example serves, checked in each generation.
enum Serves {
    /// `app.sh NAME-blue|green`: its start line on stdout.
    App(&'static str),
    /// An HTTP server on the AB ports, the first generation on the first.
    Http(u16, u16),
    /// `proxy.toml`: the AB backends behind 127.0.0.1:8000 and a Unix socket.
    Proxy,
}

const PROXY_SOCKET: &str = "/tmp/psflip-proxy.sock";

/// Run `example` as its header says, upgrade it twice, stop it; `serves` is
/// checked in each generation, `files` must be gone at the end.
fn run_example(example: &str, serves: Serves, files: &[&str]) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let name = format!("example_{}", example.trim_end_matches(".toml"));
    let sb = Sandbox::with_deadline(&name, Duration::from_secs(90));
    let run = header(example, "Run");
    let upgrade = header(example, "Upgrade");
    // `exec`: the pid we get is psflip's, as a user's shell job would be.
    let mut p = sb.spawn(shell(&sb, &format!("exec {run}")));
    let slow = Duration::from_secs(30);
    sb.must(slow, "the first child is healthy", || {
        sb.logged(p.pid, "serving")
    });
    let mut active = p.pid;
    for generation in 1..=3usize {
        let colour = if generation % 2 == 1 { "blue" } else { "green" };
        match serves {
            Serves::App(app) => {
                let line = format!("{app}-{colour}: started");
                sb.must(T, &format!("stdout says {line:?}"), || {
                    fs::read_to_string(sb.out_log())
                        .unwrap_or_default()
                        .matches(&line)
                        .count()
                        >= generation.div_ceil(2)
                });
            }
            Serves::Http(a, b) => {
                let (live, old) = if colour == "blue" { (a, b) } else { (b, a) };
                sb.must(T, &format!("GET :{live} answers 200"), || {
                    get_tcp(live) == Some(200)
                });
                if generation > 1 {
                    // The old server was stopped once the new one was healthy.
                    sb.must(T, &format!(":{old} is closed"), || refused(old));
                }
            }
            Serves::Proxy => {
                let (live, old) = if colour == "blue" {
                    (8081, 8082)
                } else {
                    (8082, 8081)
                };
                sb.must(T, &format!("the backend :{live} answers"), || {
                    get_tcp(live) == Some(200)
                });
                if generation > 1 {
                    sb.must(T, &format!("the old backend :{old} is closed"), || {
                        refused(old)
                    });
                }
                // The stable addresses reach the live backend (the only one).
                assert_eq!(get_tcp(8000), Some(200), "{}", sb.diag());
                assert_eq!(
                    get_unix(Path::new(PROXY_SOCKET)),
                    Some(200),
                    "{}",
                    sb.diag()
                );
            }
        }
        if generation == 3 {
            break;
        }
        let before = sb.started_by(active, "successor").len();
        let command = upgrade.replace("<psflip pid>", &active.to_string());
        let status = shell(&sb, &command).status().unwrap();
        assert!(status.success(), "`{command}`: {status:?}");
        let successor = sb.wait_for(T, &format!("psflip[{active}] starts a successor"), || {
            sb.started_by(active, "successor").get(before).copied()
        });
        sb.must(slow, "the successor takes over", || {
            sb.logged(successor, "taking over")
        });
        sb.must(slow, "the old generation exits", || !alive(active));
        sb.must_log(successor, "the previous generation has exited");
        active = successor;
    }
    // Ctrl-C stops it: the stop that was asked for is a clean exit.
    signal(active, Signal::SIGINT);
    sb.must(slow, "psflip stops on Ctrl-C", || !alive(active));
    assert_eq!(
        p.exit_code(),
        Some(0),
        "the first psflip handed over\n{}",
        sb.diag()
    );
    sb.assert_clean();
    for f in files {
        assert!(!Path::new(f).exists(), "{f} left behind\n{}", sb.diag());
    }
}

/// Markers of `healthcheck_command.toml` left in /tmp.
fn command_markers() -> Vec<String> {
    fs::read_dir("/tmp")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("psflip-example-") && n.ends_with(".up"))
        .collect()
}

#[test]
fn example_basic() {
    run_example("basic.toml", Serves::App("basic"), &[]);
}

#[test]
fn example_healthcheck_alive() {
    run_example(
        "healthcheck_alive.toml",
        Serves::App("alive"),
        &["/tmp/psflip-alive.pid"],
    );
}

#[test]
fn example_healthcheck_command() {
    // Markers of earlier runs (of the old example, which never removed them).
    for m in command_markers() {
        let _ = fs::remove_file(Path::new("/tmp").join(m));
    }
    run_example("healthcheck_command.toml", Serves::App("command"), &[]);
    assert_eq!(
        command_markers(),
        Vec::<String>::new(),
        "markers left in /tmp"
    );
}

#[test]
fn example_healthcheck_tcp() {
    run_example(
        "healthcheck_tcp.toml",
        Serves::Http(8083, 8084),
        &["/tmp/psflip-tcp.pid"],
    );
}

#[test]
fn example_healthcheck_http() {
    run_example(
        "healthcheck_http.toml",
        Serves::Http(8085, 8086),
        &["/tmp/psflip-http.pid"],
    );
}

#[test]
fn example_upgrade() {
    run_example(
        "upgrade.toml",
        Serves::Http(8081, 8082),
        &["/tmp/psflip-upgrade.pid"],
    );
}

#[test]
fn example_proxy() {
    run_example(
        "proxy.toml",
        Serves::Proxy,
        &["/tmp/psflip-proxy.pid", PROXY_SOCKET],
    );
}

#[test]
fn example_notify() {
    run_example("notify.toml", Serves::App("notify"), &[]);
}

/// Every example in `examples/` is run by a test above (or belongs to another
/// suite): a new example without a test fails here.
#[test]
fn every_example_is_tested() {
    let tested = [
        "basic.toml",
        "healthcheck_alive.toml",
        "healthcheck_command.toml",
        "healthcheck_tcp.toml",
        "healthcheck_http.toml",
        "upgrade.toml",
        "proxy.toml",
        "notify.toml",
        // Tested elsewhere: against a real dockerd, with socket activation.
        "docker.toml",
        "socket_activation.toml",
        // Below: pidwatch as PID 1 of a PID namespace.
        "container.toml",
    ];
    for entry in fs::read_dir(repo().join("examples")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".toml") {
            assert!(
                tested.contains(&name.as_str()),
                "examples/{name} has no test"
            );
        }
    }
}

// --- containers: pidwatch as PID 1 -----------------------------------------------

/// The pid of `outer` (a pid as this test sees it) inside its own PID namespace.
fn inner_pid(outer: i32) -> Option<i32> {
    status_field(outer, "NSpid")?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

fn cmdline(pid: i32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// `examples/container.toml` run as its header says: pidwatch as PID 1 of a new
/// PID namespace (`unshare --pid --fork --mount-proc`), psflip under it. An
/// orphan made inside the namespace is re-parented to pidwatch and reaped; an
/// upgrade works (the successor ends up pidwatch's child too); SIGTERM to PID 1
/// (what `docker stop` sends) reaches the app, which exits cleanly, and the
/// namespace ends with status 0.
#[test]
fn example_container_pidwatch_as_pid_1() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    assert!(
        nix::unistd::geteuid().is_root(),
        "a new PID namespace needs root (CI runs as root)"
    );
    let sb = Sandbox::with_deadline("example_container", Duration::from_secs(60));
    let run = header("container.toml", "Run");
    let mut unshare = sb.spawn(shell(&sb, &format!("exec {run}")));
    let pw = sb.wait_for(T, "unshare starts pidwatch", || {
        children_of(unshare.pid)
            .into_iter()
            .find(|&p| comm(p) == "pidwatch")
    });
    assert_eq!(inner_pid(pw), Some(1), "pidwatch is PID 1 of its namespace");
    let first = sb.wait_for(T, "pidwatch starts psflip", || {
        children_of(pw).into_iter().find(|&p| comm(p) == "psflip")
    });
    let first_inner = inner_pid(first).unwrap();
    assert_ne!(first_inner, 1);
    sb.must(T, "the first child is healthy", || {
        sb.logged(first_inner, "serving")
    });
    let out = || fs::read_to_string(sb.out_log()).unwrap_or_default();
    assert!(out().contains("container-blue: started"), "{}", sb.diag());

    // An orphan: a process whose parent exits at once, made inside the namespace.
    let status = sb
        .command("nsenter")
        .args(["--target", &pw.to_string(), "--pid", "--mount", "--"])
        .args(["sh", "-c", "(sleep 1.7 &)"])
        .status()
        .unwrap();
    assert!(status.success(), "nsenter: {status:?}");
    let orphan = sb.wait_for(T, "the orphan runs", || {
        sb.tagged()
            .into_iter()
            .find(|&p| cmdline(p).trim() == "sleep 1.7")
    });
    assert_eq!(ppid(orphan), Some(pw), "PID 1 adopted the orphan");
    sb.must(T, "PID 1 reaps the orphan (no zombie left)", || {
        !Path::new(&format!("/proc/{orphan}")).exists()
    });

    // An upgrade, as the header says: the signal goes to PID 1, which passes
    // it on to the psflip the pidfile names.
    let upgrade = header("container.toml", "Upgrade").replace("<pidwatch pid>", &pw.to_string());
    assert!(
        shell(&sb, &upgrade).status().unwrap().success(),
        "{upgrade}"
    );
    sb.must(T, "the new child starts", || {
        out().contains("container-green: started")
    });
    sb.must(T, "the first psflip hands over and exits", || !alive(first));
    let successor = sb.wait_for(T, "the successor is PID 1's child", || {
        children_of(pw).into_iter().find(|&p| comm(p) == "psflip")
    });
    assert_ne!(successor, first);
    sb.must(T, "the old child was stopped", || {
        out().contains("container-blue: SIGTERM, shutting down")
    });
    sb.must(T, "PID 1 reaped the first psflip", || {
        zombie_children(pw).is_empty() && !Path::new(&format!("/proc/{first}")).exists()
    });

    // docker stop: SIGTERM to PID 1.
    signal(pw, Signal::SIGTERM);
    let code = sb.wait_for(T, "the namespace ends", || unshare.exit_code());
    assert_eq!(code, 0, "a requested stop is a clean exit\n{}", sb.diag());
    assert!(
        out().contains("container-green: SIGTERM, shutting down"),
        "the app got SIGTERM and finished\n{}",
        sb.diag()
    );
    sb.assert_clean();
    assert!(!Path::new("/tmp/psflip-container.pid").exists());
}
