//! `[[listen]]` socket activation with a real socket-activated server
//! (`fixtures/activated_server.py`): the sockets reach every child as fds 3…
//! with `LISTEN_PID` equal to its own pid, they are never re-bound across
//! upgrades, and clients see no failure while generations come and go.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::util::*;

/// One line of the server's log.
#[derive(Debug)]
struct Activated {
    pid: i32,
    listen_pid: String,
    count: usize,
    names: String,
    fds: String,
}

fn activated(sb: &Sandbox) -> Vec<Activated> {
    fs::read_to_string(sb.path("activated.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split(' ').collect();
            (w.len() == 6 && w[0] == "activated").then(|| Activated {
                pid: w[1].parse().unwrap_or(0),
                listen_pid: w[2].to_owned(),
                count: w[3].parse().unwrap_or(0),
                names: w[4].to_owned(),
                fds: w[5].to_owned(),
            })
        })
        .collect()
}

fn server_conf(sb: &Sandbox, listens: &[(&str, &str)]) -> Conf {
    let mut conf = Conf::cmd(
        sb,
        &[
            "python3".to_owned(),
            fixture("activated_server.py")
                .to_string_lossy()
                .into_owned(),
        ],
    )
    .env("ACTIVATED_LOG", &sb.path("activated.log").to_string_lossy())
    .env("ACTIVATED_FAIL", "{{ Cat \"fail\" }}");
    sb.write("fail", "0");
    for (address, name) in listens {
        conf.top.push(format!(
            "\n[[listen]]\naddress = {}\nname = {}",
            q(address),
            q(name)
        ));
    }
    conf.health = "[healthcheck.notify]\n".into();
    conf
}

/// `GET /` on a fresh connection; the answer's body (`PID NAME`).
fn get(mut stream: impl Read + Write) -> std::io::Result<String> {
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    match answer.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.0 200") => Ok(body.trim().to_owned()),
        _ => Err(std::io::Error::other(format!("bad answer {answer:?}"))),
    }
}

fn get_tcp(addr: &str) -> std::io::Result<String> {
    let s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(T))?;
    get(s)
}

/// Checks every child the server logged: its own pid as LISTEN_PID, the
/// sockets as fds 3… and nothing else beyond stdio.
fn assert_every_child_activated_as_itself(sb: &Sandbox, names: &str) -> usize {
    let all = activated(sb);
    let expected_fds: Vec<String> = (0..3 + names.split(':').count())
        .map(|fd| fd.to_string())
        .collect();
    for a in &all {
        assert_eq!(a.listen_pid, a.pid.to_string(), "LISTEN_PID of {a:?}");
        assert_eq!(a.count, names.split(':').count(), "{a:?}");
        assert_eq!(a.names, names, "{a:?}");
        assert_eq!(a.fds, expected_fds.join(","), "fds of {a:?}");
    }
    all.len()
}

/// Cold, and with `[upgrade] standby = true`: the standby holds the sockets
/// from its start, and the woken standby passes them on as a cold successor would.
#[rstest::rstest]
fn listen_sockets_reach_every_child_as_fds_3_up_with_its_own_listen_pid(
    #[values(false, true)] standby: bool,
) {
    let sb = Sandbox::with_deadline(
        if standby {
            "listen_sockets_reach_every_child_as_fds_3_up_standby"
        } else {
            "listen_sockets_reach_every_child_as_fds_3_up"
        },
        Duration::from_secs(40),
    );
    let v4 = format!("127.0.0.1:{}", free_port());
    let v6 = format!("[::1]:{}", free_port());
    let socket = sb.path("app.sock");
    let unix = format!("unix://{}", socket.display());
    let conf = server_conf(
        &sb,
        &[
            (&format!("tcp://{v4}"), "web"),
            (&v6, "web6"),
            (&unix, "local"),
        ],
    );
    let conf = if standby { conf.standby() } else { conf };
    let (mut p, c1) = {
        sb.config(&conf);
        let p = sb.start();
        sb.must_name(p.pid);
        let c = sb.child_of(p.pid);
        (p, c)
    };
    assert_eq!(get_tcp(&v4).unwrap(), format!("{c1} web"));
    assert_eq!(get_tcp(&v6).unwrap(), format!("{c1} web6"));
    let s = UnixStream::connect(&socket).unwrap();
    assert_eq!(get(s).unwrap(), format!("{c1} local"));
    // psflip's own copy of each socket, and the child's fd 3: the same socket.
    let socket_ino = fs::metadata(&socket).unwrap().ino();
    let first = fd_target(c1, 3).expect("the child's fd 3");

    // Upgrades: the very same sockets (never closed and re-bound) reach each
    // new child, and the Unix socket file stays.
    let mut psflip = p.pid;
    for _ in 0..2 {
        let waiting = standby.then(|| crate::standby::must_stand_by(&sb, psflip, 1));
        psflip = sb.upgrade(psflip);
        if let Some(s) = waiting {
            assert_eq!(psflip, s, "the upgrade woke the standby\n{}", sb.diag());
        }
        let c = sb.child_of(psflip);
        sb.wait_for(T, "the new child answers", || {
            get_tcp(&v4).ok().filter(|b| *b == format!("{c} web"))
        });
        assert_eq!(fd_target(c, 3), Some(first.clone()));
        assert_eq!(fs::metadata(&socket).unwrap().ino(), socket_ino);
        let s = UnixStream::connect(&socket).unwrap();
        assert_eq!(get(s).unwrap(), format!("{c} local"));
    }
    assert_eq!(sb.wait_exit(&mut p, T), 0);
    assert_eq!(
        assert_every_child_activated_as_itself(&sb, "web:web6:local"),
        3
    );

    // The service stops for good: now the socket file goes.
    signal(psflip, Signal::SIGTERM);
    sb.must_die(psflip, "the last psflip");
    assert!(!socket.exists(), "the socket file outlived the service");
    assert!(TcpStream::connect(&v4).is_err(), "still listening");
    sb.assert_clean();
}

#[test]
fn listen_load_test_across_upgrades_every_250ms() {
    let run_for = Duration::from_secs(8);
    let sb = Sandbox::with_deadline(
        "listen_load_test_across_upgrades_every_250ms",
        Duration::from_secs(60),
    );
    let v4 = format!("127.0.0.1:{}", free_port());
    let mut conf = server_conf(&sb, &[(&v4, "web")]);
    conf.shutdown_timeout = "5s".into();
    let mut p = sb.start_with(&conf);
    let c1 = sb.child_of(p.pid);
    assert!(get_tcp(&v4).unwrap().starts_with(&c1.to_string()));

    let stop = Arc::new(AtomicBool::new(false));
    let requests = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, requests, failures, addr) =
                (stop.clone(), requests.clone(), failures.clone(), v4.clone());
            thread::spawn(move || {
                let mut first_error = None;
                while !stop.load(Ordering::Relaxed) {
                    requests.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = get_tcp(&addr) {
                        failures.fetch_add(1, Ordering::Relaxed);
                        first_error.get_or_insert(e.to_string());
                    }
                }
                first_error
            })
        })
        .collect();

    // Every 250 ms an upgrade signal to the active psflip; every other new
    // generation crashes at start. Signals during an upgrade are ignored.
    let started = Instant::now();
    let mut fail = false;
    let mut signals = 0;
    // At least `run_for`, and on until both outcomes were seen twice (a loaded
    // machine completes fewer upgrades in the same time), within the deadline.
    let outcomes = |log: &str| {
        (
            log.matches("upgrade: the successor is ready").count(),
            log.matches("upgrade failed").count(),
        )
    };
    while started.elapsed() < run_for
        || (started.elapsed() < Duration::from_secs(40) && {
            let (ok, failed) = outcomes(&sb.psflip_log());
            ok < 2 || failed < 2
        })
    {
        if let Some(active) = sb.read_pidfile() {
            sb.write("fail", if fail { "1" } else { "0" });
            fail = !fail;
            signal(active, Signal::SIGHUP);
            signals += 1;
        }
        thread::sleep(Duration::from_millis(250));
    }
    stop.store(true, Ordering::Relaxed);
    let errors: Vec<String> = clients
        .into_iter()
        .filter_map(|c| c.join().unwrap())
        .collect();
    let (requests, failures) = (
        requests.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed),
    );
    let log = sb.psflip_log();
    let (succeeded, failed) = outcomes(&log);
    eprintln!(
        "listen load test: {requests} requests, {failures} failed; {signals} upgrade signals, \
         {succeeded} upgrades succeeded, {failed} failed (new child crashed)"
    );
    assert_eq!(failures, 0, "failed requests: {errors:?}\n{}", sb.diag());
    // The interesting cases did happen (how often depends on the machine's load:
    // a success takes a Python start-up, READY=1 and the old child's exit).
    assert!(succeeded >= 2 && failed >= 2, "{}", sb.diag());
    assert!(requests > 100);
    assert_every_child_activated_as_itself(&sb, "web");

    let active = sb.wait_for(T, "a stable pidfile", || {
        let a = sb.read_pidfile()?;
        thread::sleep(Duration::from_millis(300));
        (sb.read_pidfile() == Some(a) && alive(a)).then_some(a)
    });
    // The first generation handed over and exited 0, as every old one did.
    assert_eq!(sb.wait_exit(&mut p, T), 0);
    finish(&sb, active);
}

#[test]
fn the_examples_of_the_new_tables_pass_psflip_check() {
    let sb = Sandbox::new("the_examples_of_the_new_tables_pass_psflip_check");
    for example in ["notify.toml", "socket_activation.toml"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(example);
        let out = sb
            .psflip_cmd(&["check", "-c", &path.to_string_lossy()])
            .stdout(std::process::Stdio::piped())
            .output()
            .unwrap();
        assert!(out.status.success(), "{example}: {}", sb.psflip_log());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("[healthcheck.notify]"), "{example}: {text}");
    }
}
