//! `[healthcheck.notify]` with real senders: `systemd-notify --ready` (Debian's
//! systemd package, which also waits for its `BARRIER=1` to be answered) and a
//! Python app speaking the protocol itself, over path and abstract sockets.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::util::*;

fn notify_table(socket: &str) -> String {
    format!("[healthcheck.notify]\nsocket = {}\n", q(socket))
}

/// The lines of the Python fixture's log, as (event, pid, rest).
fn notify_log(sb: &Sandbox) -> Vec<(String, i32, String)> {
    fs::read_to_string(sb.path("notify.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ' ');
            Some((
                it.next()?.to_owned(),
                it.next()?.parse().ok()?,
                it.next().unwrap_or("").to_owned(),
            ))
        })
        .collect()
}

fn python_child(sb: &Sandbox) -> Conf {
    Conf::cmd(
        sb,
        &[
            "python3".to_owned(),
            fixture("notify_child.py").to_string_lossy().into_owned(),
        ],
    )
    .env("NOTIFY_CHILD_LOG", &sb.path("notify.log").to_string_lossy())
}

#[test]
fn systemd_notify_ready_makes_the_child_healthy_over_a_private_path_socket() {
    let sb = Sandbox::new("systemd_notify_ready_over_a_private_path_socket");
    // psflip's own service manager: a socket of the test's.
    let manager_path = sb.path("manager.sock");
    let manager = UnixDatagram::bind(&manager_path).unwrap();
    manager.set_nonblocking(true).unwrap();
    let mut conf = Conf::fixture(&sb, &[]).env("CHILD_NOTIFY_AFTER", "0.6");
    conf.health = notify_table("path");
    sb.config(&conf);
    let mut cmd = sb.psflip_cmd(&["-c", "psflip.toml"]);
    cmd.env("NOTIFY_SOCKET", &manager_path);
    let mut p = sb.spawn(cmd);
    let c = sb.child_of(p.pid);
    sb.must_start(c);
    // Not healthy before the child said so (it says so 0.6 s after it starts).
    sb.must(T, "the pidfile names psflip", || {
        if sb.read_pidfile() != Some(p.pid) {
            return false;
        }
        let notifying = sb
            .events()
            .iter()
            .any(|e| e.kind == "notifying" && e.pid == c);
        assert!(notifying, "ready before the child notified\n{}", sb.diag());
        true
    });
    sb.must(T, "systemd-notify returns", || {
        sb.events()
            .iter()
            .any(|e| e.kind == "notified" && e.pid == c)
    });
    let notified = sb
        .events()
        .into_iter()
        .find(|e| e.kind == "notified" && e.pid == c)
        .unwrap();
    // systemd-notify waits for BARRIER=1 to be answered: it was.
    assert_eq!(notified.rest, "ok", "{}", sb.diag());
    sb.must_name(p.pid);
    sb.must_log(p.pid, "the child sent READY=1");
    sb.must_log(p.pid, &format!("child status: child {c} ready"));
    // The child's socket is its own, in a directory only psflip's user enters,
    // never the service manager's.
    let socket = env_var(c, "NOTIFY_SOCKET").expect("the child has NOTIFY_SOCKET");
    assert_ne!(Path::new(&socket), manager_path);
    let dir = Path::new(&socket).parent().unwrap().to_owned();
    let mode = fs::metadata(&dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "{}", dir.display());
    // psflip itself told its manager it is ready, once the child was.
    let mut buf = [0u8; 512];
    let said = sb.wait_for(T, "psflip notifies its manager", || {
        manager
            .recv(&mut buf)
            .ok()
            .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
    });
    assert!(said.contains("READY=1"), "{said}");

    // An upgrade: the new child gets a fresh socket of its own.
    let s = sb.upgrade(p.pid);
    assert_eq!(sb.wait_exit(&mut p, T), 0);
    let c2 = sb.child_of(s);
    let socket2 = env_var(c2, "NOTIFY_SOCKET").expect("the new child has NOTIFY_SOCKET");
    assert_ne!(socket2, socket);
    sb.must_log(s, "the child sent READY=1");
    // The old child's socket went with it.
    sb.must(T, "the old socket's directory is removed", || !dir.exists());
    let dir2 = Path::new(&socket2).parent().unwrap().to_owned();
    sb.terminate(s, "the new psflip");
    assert!(!dir2.exists(), "{} left behind", dir2.display());
    sb.assert_clean();
}

#[test]
fn a_child_speaking_the_protocol_itself_over_an_abstract_socket() {
    let sb = Sandbox::new("a_child_speaking_the_protocol_itself_over_an_abstract_socket");
    let mut conf = python_child(&sb).env("NOTIFY_CHILD_DELAY", "0.5");
    conf.health = notify_table("abstract");
    sb.config(&conf);
    let mut p = sb.start();
    let c = sb.child_of(p.pid);
    sb.must_name(p.pid);
    // The child logs "ready" right after sending READY=1: psflip may be quicker.
    let log = sb.wait_for(T, "the child logged that it sent READY=1", || {
        let log = notify_log(&sb);
        log.iter()
            .any(|(e, pid, _)| e == "ready" && *pid == c)
            .then_some(log)
    });
    let socket = log
        .iter()
        .find(|(e, pid, _)| e == "socket" && *pid == c)
        .map(|(_, _, s)| s.clone())
        .expect("the child logged its socket");
    assert!(socket.starts_with('@'), "{socket}");
    assert!(
        log.iter()
            .any(|(e, pid, r)| e == "barrier" && *pid == c && r == "ok"),
        "BARRIER=1 was not answered: {log:?}"
    );
    sb.must_log(p.pid, "child status: starting");
    sb.must_log(p.pid, &format!("child status: serving as {c}"));
    stop(&sb, &mut p);
}

#[test]
fn a_new_child_that_exits_before_ready_or_stays_silent_rolls_back() {
    let sb = Sandbox::with_deadline(
        "a_new_child_that_exits_before_ready_or_stays_silent_rolls_back",
        Duration::from_secs(40),
    );
    // Generation 1 notifies; the next exits first; the one after stays silent.
    let mut conf = Conf::fixture(&sb, &[])
        .env("CHILD_NOTIFY_AFTER", "{{ Cat \"mode\" }}")
        .env("CHILD_EXIT_AFTER_MS", "{{ Cat \"exit\" }}");
    conf.upgrade_timeout = "1500ms".into();
    conf.health = notify_table("path");
    sb.write("mode", "0");
    sb.write("exit", "");
    let (mut p, c1) = serve(&sb, &conf);

    sb.write("mode", "");
    sb.write("exit", "200");
    signal(p.pid, Signal::SIGHUP);
    let s = sb.successor_of(p.pid);
    sb.must_die(s, "the successor whose child exited");
    sb.must_log(p.pid, "upgrade failed");
    assert!(
        sb.logged(s, "the child exited (exit code 0) before it became healthy"),
        "{}",
        sb.diag()
    );
    assert_untouched(&sb, &mut p, c1);

    // A child that never says READY=1: rolled back at upgrade.timeout.
    sb.write("exit", "");
    let before = sb.started_by(p.pid, "successor").len();
    signal(p.pid, Signal::SIGHUP);
    let s2 = sb.wait_for(T, "a second successor", || {
        sb.started_by(p.pid, "successor").get(before).copied()
    });
    sb.must_die(s2, "the successor whose child stayed silent");
    assert!(
        sb.logged(
            s2,
            "the child did not become healthy within upgrade.timeout"
        ),
        "{}",
        sb.diag()
    );
    assert_untouched(&sb, &mut p, c1);
    stop(&sb, &mut p);
}

/// `python3 -c SEND ADDRESS MESSAGE`: one datagram; exit 0 if it was sent.
const SEND: &str = r#"
import socket, sys
addr = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(sys.argv[2].encode(), "\0" + addr[1:] if addr.startswith("@") else addr)
"#;

/// Send `message` to the notify socket `address`, as `uid` (root: 0).
fn send_as(uid: u32, address: &str, message: &str) -> bool {
    use std::os::unix::process::CommandExt;
    std::process::Command::new("python3")
        .args(["-c", SEND, address, message])
        .uid(uid)
        .gid(uid)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[test]
fn another_user_cannot_make_the_child_ready() {
    let sb = Sandbox::new("another_user_cannot_make_the_child_ready");
    if !nix::unistd::geteuid().is_root() {
        eprintln!("[{}] skipped: needs root to send as another user", sb.name);
        return;
    }
    const NOBODY: u32 = 65534;
    for kind in ["path", "abstract"] {
        // The child only says where its socket is; the test speaks for it.
        let said = sb.path(&format!("socket-{kind}"));
        let script = format!(
            "printf %s \"$NOTIFY_SOCKET\" > {}; exec sleep 1000",
            said.display()
        );
        let mut conf = Conf::cmd(&sb, &["sh", "-c", &script]);
        conf.health = notify_table(kind);
        sb.config(&conf);
        let mut p = sb.start();
        let address = sb.wait_for(T, "the child's NOTIFY_SOCKET", || {
            fs::read_to_string(&said).ok().filter(|s| !s.is_empty())
        });
        let rogue = send_as(NOBODY, &address, "READY=1\nSTATUS=rogue");
        match kind {
            // The directory keeps other users out altogether.
            "path" => assert!(!rogue, "uid {NOBODY} reached {address}"),
            // Anyone can send to an abstract socket: psflip drops it.
            _ => assert!(rogue, "uid {NOBODY} could not send to {address}"),
        }
        assert!(send_as(0, &address, "READY=1\nSTATUS=legit"));
        sb.must_name(p.pid);
        // Datagrams are read in order: the rogue one came first and was dropped.
        sb.must_log(p.pid, "child status: legit");
        assert!(!sb.logged(p.pid, "child status: rogue"), "{}", sb.diag());
        p.signal(Signal::SIGTERM);
        sb.wait_exit(&mut p, T);
        sb.assert_clean();
    }
}
