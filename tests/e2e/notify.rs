//! sd_notify (SPEC §8): with `$NOTIFY_SOCKET` set, psflip tells the service manager
//! READY=1 once the first child is healthy, RELOADING=1 (with MONOTONIC_USEC) when
//! an upgrade starts; the successor sends READY=1 before the old child is
//! signalled — with MAINPID=<its pid> in the same datagram when no pidfile is
//! configured (with one, systemd follows PIDFile= once the old generation has
//! exited: issue #9); a failed upgrade brings READY=1 and a STATUS= line saying
//! why. The test plays the service manager with a datagram socket of its own.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::util::*;

/// The service manager's end: every datagram received, in order.
struct Manager {
    socket: UnixDatagram,
    got: Vec<String>,
}

impl Manager {
    fn bind(sb: &Sandbox) -> Manager {
        let socket = UnixDatagram::bind(sb.path("notify.sock")).expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        Manager {
            socket,
            got: Vec::new(),
        }
    }

    /// Wait (with a deadline) for a datagram containing `needle`; returns it.
    fn expect(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(m) = self.got.iter().find(|m| m.contains(needle)) {
                return m.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no datagram with {needle:?}; got {:?}",
                self.got
            );
            let mut buf = [0u8; 4096];
            if let Ok(n) = self.socket.recv(&mut buf) {
                self.got
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    }
}

fn start(sb: &Sandbox, conf: &Conf) -> Psflip {
    sb.config(conf);
    let mut cmd = sb.psflip_cmd(&["-c", "psflip.toml"]);
    cmd.env("NOTIFY_SOCKET", sb.path("notify.sock"));
    sb.spawn(cmd)
}

#[rstest::rstest]
#[case::without_a_pidfile(false)]
#[case::with_a_pidfile(true)]
fn notifies_ready_reloading_and_the_new_main_pid(#[case] pidfile: bool) {
    let sb = Sandbox::new(&format!(
        "notifies_ready_reloading_and_the_new_main_pid_{pidfile}"
    ));
    let mut manager = Manager::bind(&sb);
    let conf = if pidfile {
        Conf::fixture(&sb, &[])
    } else {
        Conf::fixture(&sb, &[]).no_pidfile()
    };
    let mut p = start(&sb, &conf);
    let ready = manager.expect("READY=1");
    assert!(ready.contains("STATUS=serving"), "{ready:?}");
    let c1 = sb.child_of(p.pid);
    // The child does not get psflip's NOTIFY_SOCKET.
    assert_eq!(env_var(c1, "NOTIFY_SOCKET"), None);

    p.signal(Signal::SIGHUP);
    let reloading = manager.expect("RELOADING=1");
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {reloading:?}"));
    assert!(usec > 0);
    // (`expect` stops at the first match: nothing after RELOADING=1 is read yet.)
    manager.got.clear();
    let s = sb.successor_of(p.pid);
    let main = manager.expect("STATUS=serving");
    assert!(main.contains("READY=1"), "{main:?}");
    if pidfile {
        assert!(!main.contains("MAINPID="), "{main:?}");
    } else {
        assert!(
            main.contains(&format!("MAINPID={s}\n")),
            "MAINPID and READY=1 in one datagram from the successor: {main:?}"
        );
    }
    // (The successor sends it before it reports ready, so before the old child
    // can be signalled.) The handoff completes as usual.
    assert_eq!(sb.wait_exit(&mut p, T), 0);
    assert_eq!(sb.signals_of(c1), ["TERM"]);
    kill_and_finish(&sb, s);
}

#[test]
fn a_failed_upgrade_says_ready_again_and_why() {
    let sb = Sandbox::new("a_failed_upgrade_says_ready_again_and_why");
    let mut manager = Manager::bind(&sb);
    let conf = Conf::fixture(&sb, &[]);
    let mut p = start(&sb, &conf);
    manager.expect("READY=1");
    sb.config(
        &conf
            .clone()
            .probe(&["false"], "100ms")
            .upgrade_timeout("500ms"),
    );
    p.signal(Signal::SIGHUP);
    manager.expect("RELOADING=1");
    let again = manager.expect("upgrade failed");
    assert!(again.contains("READY=1"), "{again:?}");
    assert!(
        again.contains("did not become healthy within upgrade.timeout"),
        "the reason: {again:?}"
    );
    assert!(!again.contains("MAINPID"), "{again:?}");
    kill_and_finish(&sb, p.pid);
    let _ = sb.wait_exit(&mut p, T);
    sb.assert_clean();
}

fn kill_and_finish(sb: &Sandbox, psflip: i32) {
    signal(psflip, Signal::SIGTERM);
    assert!(
        wait_until(T, || !alive(psflip)),
        "psflip {psflip} did not stop"
    );
    sb.assert_clean();
}
