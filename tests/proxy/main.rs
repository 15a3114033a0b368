//! `[[proxy]]` with real processes: forwarding either way between TCP and Unix
//! sockets, half-closes, faults, the listener handoff across successful and failed
//! upgrades (SPEC §5, §6, I8), and the load test of the issue (`load.rs`).

#[path = "../common/mod.rs"]
mod common;
mod load;
mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::thread;
use std::time::Duration;

use nix::sys::signal::Signal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use util::*;

/// A configuration: `pidfile = "psflip.pid"`, quick health, the given proxies.
fn conf(cmd: &[&str], proxies: &[(String, String)]) -> String {
    conf_standby(cmd, proxies, false)
}

/// [`conf`], with `[upgrade] standby = true` if `standby`.
fn conf_standby(cmd: &[&str], proxies: &[(String, String)], standby: bool) -> String {
    let cmd: Vec<String> = cmd.iter().map(|a| format!("{a:?}")).collect();
    let mut text = format!(
        "cmd = [{}]\npidfile = \"psflip.pid\"\n\
         [upgrade]\ntimeout = \"10s\"\nstandby = {standby}\n\
         [shutdown]\ndelay = \"5s\"\ntimeout = \"2s\"\n\
         [healthcheck.alive]\ntimeout = \"100ms\"\n",
        cmd.join(", ")
    );
    for (listen, forward) in proxies {
        text.push_str(&format!(
            "[[proxy]]\nlisten = {listen:?}\nforward = {forward:?}\n"
        ));
    }
    text
}

/// An app that runs until stopped, or fails at start while the file `fail` exists.
const APP: &[&str] = &["sh", "-c", "test -e fail && exit 1; exec sleep 1000"];

/// Upgrade the service; returns the new service's pid. `succeed` says which outcome
/// to expect (a failed upgrade must leave the same service).
fn upgrade(sb: &Sandbox, succeed: bool) -> i32 {
    let old = sb.service();
    let ready = sb.count("upgrade: the successor is ready");
    let failed = sb.count("upgrade failed");
    signal(old, Signal::SIGHUP);
    if succeed {
        sb.wait_log("upgrade: the successor is ready", ready + 1, T);
        assert!(
            wait_until(T, || !alive(old)),
            "old generation {old} still runs; log:\n{}",
            sb.log()
        );
        let new = sb.service();
        assert_ne!(new, old);
        new
    } else {
        sb.wait_log("upgrade failed", failed + 1, T);
        assert_eq!(sb.service(), old);
        old
    }
}

/// With `[upgrade] standby = true`: wait until psflip `service` has logged
/// starting a standby (`standby successor started (pid N)`, the last such line:
/// after a failed upgrade the one before is the woken, dead one) and that
/// process waits as its child named `psflip-standby`; returns its pid.
fn standby_of(sb: &Sandbox, service: i32) -> i32 {
    let needle = format!("psflip[{service}]: standby successor started (pid ");
    let waits = |pid: i32| comm(pid) == "psflip-standby" && ppid(pid) == Some(service);
    sb.wait_for(
        T,
        &format!("psflip {service}'s last logged standby waits as its child"),
        || {
            let log = sb.log();
            let rest = &log[log.rfind(&needle)? + needle.len()..];
            let pid = rest[..rest.find(')')?].parse::<i32>().ok()?;
            waits(pid).then_some(pid)
        },
    )
}

fn started(sb: &mut Sandbox) -> i32 {
    let pid = sb.start();
    sb.wait_log("child is healthy; serving", 1, T);
    pid
}

/// [`proxy_to`] an echo backend; returns the backend (it stops when dropped)
/// and the port.
fn echo_proxy(sb: &Sandbox) -> (Backend, u16) {
    let backend = Backend::echo_tcp();
    let port = proxy_to(sb, &backend);
    (backend, port)
}

/// `psflip.toml` proxying a free loopback port to `backend` (APP as the
/// child); returns the port.
fn proxy_to(sb: &Sandbox, backend: &Backend) -> u16 {
    let port = free_port();
    sb.write(
        "psflip.toml",
        &conf(APP, &[(Addr::Tcp(port).config(), backend.addr.config())]),
    );
    port
}

#[test]
fn forwards_between_tcp_and_unix_either_side() {
    let mut sb = Sandbox::new("kinds");
    let tcp_backend = Backend::echo_tcp();
    let unix_backend = Backend::unix(sb.path("backend.sock"), echo);
    let (tcp_in, tcp_to_unix) = (free_port(), free_port());
    let unix_in = Addr::Unix(sb.path("in.sock"));
    let proxies = [
        (Addr::Tcp(tcp_in).config(), tcp_backend.addr.config()),
        (unix_in.config(), tcp_backend.addr.config()),
        (Addr::Tcp(tcp_to_unix).config(), unix_backend.addr.config()),
    ];
    sb.write("psflip.toml", &conf(APP, &proxies));
    started(&mut sb);
    for (addr, what) in [
        (Addr::Tcp(tcp_in), "TCP→TCP"),
        (unix_in, "Unix→TCP"),
        (Addr::Tcp(tcp_to_unix), "TCP→Unix"),
    ] {
        // A payload larger than any socket buffer or pipe, to exercise backpressure.
        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let answer = exchange(&addr, &payload).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(answer.len(), payload.len() + 5, "{what}");
        assert!(answer[5..] == payload[..], "{what}: bytes differ");
    }
    sb.stop_and_check();
}

#[test]
fn each_direction_is_half_closed_on_its_own() {
    let mut sb = Sandbox::new("halfclose");
    // The backend speaks first and half-closes; it still reads what the client
    // sends afterwards, and reports it back over a second channel.
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let tx = std::sync::Mutex::new(tx);
    let backend = Backend::tcp(move |mut s| {
        s.write_all(b"hello").unwrap();
        s.shutdown_write().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        tx.lock().unwrap().send(got).unwrap();
    });
    let port = proxy_to(&sb, &backend);
    started(&mut sb);

    // Backend first: the client reads the greeting and EOF, then still sends.
    let mut s = Addr::Tcp(port).connect().unwrap();
    let mut greeting = Vec::new();
    s.read_to_end(&mut greeting).unwrap();
    assert_eq!(greeting, b"hello");
    s.write_all(b"after your FIN").unwrap();
    s.shutdown_write().unwrap();
    let got = rx.recv_timeout(T).expect("the backend read to EOF");
    assert_eq!(got, b"after your FIN");

    // Client first: it half-closes, the backend (echo) still answers.
    let echo_backend = Backend::echo_tcp();
    let port2 = free_port();
    sb.write(
        "psflip.toml",
        &conf(
            APP,
            &[
                (Addr::Tcp(port).config(), backend.addr.config()),
                (Addr::Tcp(port2).config(), echo_backend.addr.config()),
            ],
        ),
    );
    upgrade(&sb, true);
    assert_eq!(
        exchange(&Addr::Tcp(port2), b"question").unwrap(),
        b"echo:question"
    );
    sb.stop_and_check();
}

/// Bytes numbered so that a lost, doubled or reordered piece shows.
fn pieces(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| format!("<{i:04}:{}>", "x".repeat(i % 50)).into_bytes())
        .collect()
}

#[test]
fn a_fin_right_behind_many_small_writes_loses_no_byte() {
    // The proxy takes a short read after the peer's FIN as the end of stream: the
    // FIN follows every byte the peer sent. Many small writes, then the FIN at
    // once, each way, on 20 connections: every byte arrives, in order, once.
    let mut sb = Sandbox::new("finburst");
    let backend = Backend::tcp(|mut s| {
        let mut got = Vec::new();
        if s.read_to_end(&mut got).is_ok() {
            let _ = s.write_all(format!("{}|", got.len()).as_bytes());
            for p in pieces(400) {
                let _ = s.write_all(&p);
            }
        }
        // Dropped: the FIN right behind the last write.
    });
    let port = proxy_to(&sb, &backend);
    started(&mut sb);
    let sent: usize = pieces(300).iter().map(Vec::len).sum();
    let expected = [format!("{sent}|").into_bytes(), pieces(400).concat()].concat();
    let clients: Vec<_> = (0..20)
        .map(|_| {
            let expected = expected.clone();
            thread::spawn(move || {
                let mut s = Addr::Tcp(port).connect().unwrap();
                for p in pieces(300) {
                    s.write_all(&p).unwrap();
                }
                s.shutdown_write().unwrap();
                let mut out = Vec::new();
                s.read_to_end(&mut out).unwrap();
                assert!(
                    out == expected,
                    "got {} bytes, {} expected",
                    out.len(),
                    expected.len()
                );
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    sb.stop_and_check();
}

/// Whether `fd` of process `pid` is a TCP socket whose peer has port `peer`, and
/// if so whether it has TCP_NODELAY: a copy of the fd taken with pidfd_getfd(2)
/// (root, as in CI) is asked.
fn nodelay_of_socket_to(pid: i32, fd: i32, peer: u16) -> Option<bool> {
    // SAFETY: plain syscalls; every fd opened here is closed before returning.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as i32;
        assert!(
            pidfd >= 0,
            "pidfd_open: {}",
            std::io::Error::last_os_error()
        );
        let copy = libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0) as i32;
        libc::close(pidfd);
        if copy < 0 {
            return None; // closed meanwhile
        }
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let mut on: libc::c_int = 0;
        let mut on_len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        let answer = (libc::getpeername(copy, (&raw mut addr).cast(), &mut len) == 0
            && addr.sin_family == libc::AF_INET as libc::sa_family_t
            && u16::from_be(addr.sin_port) == peer
            && libc::getsockopt(
                copy,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                (&raw mut on).cast(),
                &mut on_len,
            ) == 0)
            .then_some(on != 0);
        libc::close(copy);
        answer
    }
}

#[test]
fn both_sockets_of_a_tcp_connection_have_nodelay() {
    // Small writes go out at once on both sides (TCP_NODELAY): on the client's
    // socket it comes from the listener (accepted sockets inherit it), on the
    // backend's it is set. Asked of psflip's own sockets, through pidfd_getfd.
    let mut sb = Sandbox::new("nodelay");
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let tx = std::sync::Mutex::new(tx);
    let backend = Backend::tcp(move |mut s| {
        tx.lock().unwrap().send(()).unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
    });
    let backend_port = match backend.addr {
        Addr::Tcp(p) => p,
        Addr::Unix(_) => unreachable!(),
    };
    let port = proxy_to(&sb, &backend);
    let psflip = started(&mut sb);
    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    rx.recv_timeout(T).expect("the backend got the connection");
    let client_port = client.local_addr().unwrap().port();
    let fds = common::procfs::fds(psflip);
    let to_client: Vec<_> = fds
        .iter()
        .filter_map(|&fd| nodelay_of_socket_to(psflip, fd, client_port))
        .collect();
    let to_backend: Vec<_> = fds
        .iter()
        .filter_map(|&fd| nodelay_of_socket_to(psflip, fd, backend_port))
        .collect();
    assert_eq!(to_client, [true], "the client's socket");
    assert_eq!(to_backend, [true], "the backend's socket");
    drop(client);
    sb.stop_and_check();
}

/// Cold, and with `[upgrade] standby = true` (each upgrade wakes the standby,
/// which holds the listener from its start, unused, until then).
#[rstest::rstest]
fn listener_survives_upgrades_without_refusing_a_connection(#[values(false, true)] standby: bool) {
    let mut sb = Sandbox::new(if standby {
        "survive-standby"
    } else {
        "survive"
    });
    let backend = Backend::echo_tcp();
    let port = free_port();
    sb.write(
        "psflip.toml",
        &conf_standby(
            APP,
            &[(Addr::Tcp(port).config(), backend.addr.config())],
            standby,
        ),
    );
    let first = started(&mut sb);
    let inode = tcp_listener_inode(port).expect("the listener is in /proc/net/tcp");
    assert!(socket_inodes(first).contains(&inode));

    // Clients connect all the time while upgrades succeed and fail.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let (stop, ok, errors) = (stop.clone(), ok.clone(), errors.clone());
            thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let msg = format!("client {i} request {n}");
                    match exchange(&Addr::Tcp(port), msg.as_bytes()) {
                        Ok(a) if a == format!("echo:{msg}").as_bytes() => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(a) => errors
                            .lock()
                            .unwrap()
                            .push(format!("{msg}: wrong answer {a:?}")),
                        Err(e) => errors.lock().unwrap().push(format!("{msg}: {e}")),
                    }
                }
            })
        })
        .collect();

    let mut service = first;
    for round in 0..6 {
        let fail = round % 2 == 1;
        if fail {
            sb.write("fail", "");
        } else {
            let _ = std::fs::remove_file(sb.path("fail"));
        }
        let waiting = standby.then(|| standby_of(&sb, service));
        if let Some(s) = waiting {
            assert!(
                socket_inodes(s).contains(&inode),
                "round {round}: the standby {s} holds the listener while it waits"
            );
        }
        let before = sb.count(": started successor (pid ");
        let old = service;
        service = upgrade(&sb, !fail);
        if let Some(s) = waiting {
            let needle = format!("psflip[{old}]: started successor (pid {s})\n");
            assert!(
                sb.count(": started successor (pid ") == before + 1 && sb.log().contains(&needle),
                "round {round}: the upgrade woke the standby {s}; log:\n{}",
                sb.log()
            );
            if !fail {
                assert_eq!(service, s, "round {round}: the woken standby serves");
            }
        }
        assert_eq!(
            tcp_listener_inode(port),
            Some(inode),
            "round {round}: the same listening socket"
        );
        assert!(
            socket_inodes(service).contains(&inode),
            "round {round}: the service holds the listener"
        );
        let child = sb.child_of(service);
        assert!(
            !socket_inodes(child).contains(&inode),
            "round {round}: the app child {child} holds the listener"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let errors = errors.lock().unwrap();
    assert!(errors.is_empty(), "failed connections: {errors:#?}");
    assert!(ok.load(Ordering::Relaxed) > 0);
    assert_eq!(sb.count("upgrade failed"), 3);
    assert_eq!(service, sb.service());
    sb.stop_and_check();
}

#[test]
fn unix_socket_file_stays_across_upgrades_and_goes_at_the_final_stop() {
    let mut sb = Sandbox::new("unixfile");
    let backend = Backend::echo_tcp();
    let path = sb.path("app.sock");
    // A stale socket file from an earlier run: nothing listens on it.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let addr = Addr::Unix(path.clone());
    sb.write(
        "psflip.toml",
        &conf(APP, &[(addr.config(), backend.addr.config())]),
    );
    let first = started(&mut sb);
    let inode = unix_listener_inode(&path).expect("listening at the path");
    assert_eq!(exchange(&addr, b"1").unwrap(), b"echo:1");

    upgrade(&sb, true);
    assert_eq!(unix_listener_inode(&path), Some(inode));
    sb.write("fail", "");
    upgrade(&sb, false);
    assert_eq!(unix_listener_inode(&path), Some(inode));
    assert_eq!(exchange(&addr, b"2").unwrap(), b"echo:2");
    assert!(!alive(first));

    sb.stop_and_check();
    assert!(!path.exists(), "the socket file outlived the service");
}

#[test]
fn listen_address_in_use_is_exit_2_with_a_message() {
    let mut sb = Sandbox::new("inuse");
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    sb.write(
        "psflip.toml",
        &conf(
            APP,
            &[(format!("127.0.0.1:{port}"), "127.0.0.1:9".to_owned())],
        ),
    );
    let pid = sb.start();
    assert_eq!(sb.wait_exit(pid), Some(2));
    let log = sb.log();
    assert!(
        log.contains(&format!(
            "psflip: psflip.toml: proxy[0].listen: cannot listen on tcp://127.0.0.1:{port}: address already in use"
        )),
        "{log}"
    );
    assert!(!log.contains("started child"), "{log}");
}

#[test]
fn an_upgrade_to_a_bad_listen_address_leaves_the_old_generation_serving() {
    let mut sb = Sandbox::new("badlisten");
    let (backend, port) = echo_proxy(&sb);
    let first = started(&mut sb);
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap().port();
    sb.write(
        "psflip.toml",
        &conf(
            APP,
            &[
                (Addr::Tcp(port).config(), backend.addr.config()),
                (Addr::Tcp(taken).config(), backend.addr.config()),
            ],
        ),
    );
    assert_eq!(upgrade(&sb, false), first);
    assert!(sb.log().contains("address already in use"));
    assert_eq!(sb.count("started child"), 1, "no new child was started");
    assert_eq!(exchange(&Addr::Tcp(port), b"still").unwrap(), b"echo:still");
    drop(held);
    sb.stop_and_check();
}

#[test]
fn a_refusing_forward_target_closes_that_client_only() {
    let mut sb = Sandbox::new("refused");
    let backend = Backend::echo_tcp();
    let (bad, good) = (free_port(), free_port());
    let nobody = free_port();
    sb.write(
        "psflip.toml",
        &conf(
            APP,
            &[
                (Addr::Tcp(bad).config(), format!("127.0.0.1:{nobody}")),
                (Addr::Tcp(good).config(), backend.addr.config()),
            ],
        ),
    );
    started(&mut sb);
    for i in 0..3 {
        let answer = exchange(&Addr::Tcp(bad), b"x");
        assert!(
            matches!(&answer, Ok(a) if a.is_empty()) || answer.is_err(),
            "{answer:?}"
        );
        sb.wait_log("cannot connect to", i + 1, T);
        assert_eq!(
            exchange(&Addr::Tcp(good), b"ok").unwrap(),
            b"echo:ok",
            "the other proxy is undisturbed"
        );
    }
    assert_eq!(sb.count("cannot connect to"), 3, "one line per connection");
    assert!(sb.log().contains(&format!(
        "cannot connect to tcp://127.0.0.1:{nobody}: Connection refused"
    )));
    sb.stop_and_check();
}

#[test]
fn a_backend_reset_reaches_the_client() {
    let mut sb = Sandbox::new("reset");
    let backend = Backend::tcp(|mut s| {
        let mut buf = [0u8; 4];
        let _ = s.read_exact(&mut buf);
        // Unread data pending at close makes the kernel send a reset.
        thread::sleep(Duration::from_millis(50));
    });
    let port = proxy_to(&sb, &backend);
    started(&mut sb);
    let mut s = Addr::Tcp(port).connect().unwrap();
    s.write_all(b"1234 and more that nobody reads").unwrap();
    let mut out = Vec::new();
    let e = s
        .read_to_end(&mut out)
        .expect_err("a reset, not an orderly end");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    // The proxy carries on: the next connection gets the same treatment.
    let mut s = Addr::Tcp(port).connect().unwrap();
    s.write_all(b"1234 again").unwrap();
    let e = s.read_to_end(&mut out).expect_err("a reset again");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    sb.stop_and_check();
}

#[test]
fn out_of_fds_pauses_accepting_instead_of_spinning_or_dropping() {
    let mut sb = Sandbox::new("emfile");
    let (_backend, port) = echo_proxy(&sb);
    // Room for about a dozen proxied connections (two fds each).
    let psflip = sb.start_with_nofile(Some(40));
    sb.wait_log("child is healthy; serving", 1, T);
    let mut clients: Vec<_> = (0..30)
        .map(|_| Addr::Tcp(port).connect().unwrap())
        .collect();
    sb.wait_log(
        "too many open files (EMFILE: psflip's limit, RLIMIT_NOFILE / ulimit -n, is reached); pausing accepts",
        1,
        T,
    );
    let before = cpu_ticks(psflip);
    thread::sleep(Duration::from_millis(500));
    let spent = cpu_ticks(psflip) - before;
    assert!(
        spent <= 10,
        "psflip used {spent} ticks in 0.5 s while out of fds"
    );
    // As connections finish, the waiting ones are accepted and served.
    for (i, c) in clients.iter_mut().enumerate() {
        let msg = format!("client {i}");
        c.write_all(msg.as_bytes()).unwrap();
        c.shutdown_write().unwrap();
        let mut answer = Vec::new();
        c.read_to_end(&mut answer)
            .unwrap_or_else(|e| panic!("client {i}: {e}"));
        assert_eq!(answer, format!("echo:{msg}").as_bytes(), "client {i}");
    }
    assert!(sb.count("pausing accepts") <= 2, "{}", sb.log());
    assert_eq!(sb.count("client connection closed"), 0, "{}", sb.log());
    sb.stop_and_check();
}

#[test]
fn a_client_that_vanishes_mid_answer_frees_its_backend_connection() {
    let mut sb = Sandbox::new("vanish");
    let (tx, rx) = std::sync::mpsc::channel::<std::io::ErrorKind>();
    let tx = std::sync::Mutex::new(tx);
    let backend = Backend::tcp(move |mut s| {
        let mut req = [0u8; 4];
        s.read_exact(&mut req).unwrap();
        let chunk = vec![b'x'; 64 * 1024];
        // Far more than the buffers on the way hold: the write fails once the
        // proxy passes on the client's reset.
        let outcome = (0..2000).find_map(|_| s.write_all(&chunk).err());
        let kind = outcome.map_or(std::io::ErrorKind::Other, |e| e.kind());
        tx.lock().unwrap().send(kind).unwrap();
    });
    let port = proxy_to(&sb, &backend);
    let psflip = started(&mut sb);
    // Sockets, not fds: empty pipes are pooled for reuse.
    let sockets = || socket_inodes(psflip).len();
    let baseline = sockets();
    {
        let mut s = Addr::Tcp(port).connect().unwrap();
        s.write_all(b"1234").unwrap();
        let mut first = [0u8; 1000];
        s.read_exact(&mut first).unwrap();
        // Dropped with unread data: the kernel resets the connection.
    }
    let kind = rx.recv_timeout(T).expect("the backend's writes failed");
    assert!(
        matches!(
            kind,
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        "{kind:?}"
    );
    assert!(
        wait_until(T, || sockets() <= baseline),
        "psflip holds {} sockets, {baseline} before",
        sockets()
    );
    assert_eq!(exchange_ok(port), b"1234".len());
    sb.stop_and_check();
}

/// The backend of `a_client_that_vanishes…` answers anything with a flood; this
/// checks the proxy still accepts and forwards (4 bytes reach it, bytes come back).
fn exchange_ok(port: u16) -> usize {
    let mut s = Addr::Tcp(port).connect().unwrap();
    s.write_all(b"1234").unwrap();
    let mut some = [0u8; 4];
    s.read_exact(&mut some).unwrap();
    some.len()
}

#[test]
fn listens_and_forwards_over_ipv6_loopback() {
    let mut sb = Sandbox::new("ipv6");
    let backend = Backend::echo_tcp();
    let v6 = free_port();
    // IPv6 in, IPv4 out (loopback only: tests listen on nothing else).
    sb.write(
        "psflip.toml",
        &conf(APP, &[(format!("[::1]:{v6}"), backend.addr.config())]),
    );
    started(&mut sb);
    let addr: std::net::SocketAddr = format!("[::1]:{v6}").parse().unwrap();
    let mut s = std::net::TcpStream::connect_timeout(&addr, T).unwrap();
    s.write_all(b"v6").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    assert_eq!(out, b"echo:v6");
    assert!(sb.log().contains(&format!("proxy: bound tcp://[::1]:{v6}")));
    sb.stop_and_check();
}

#[test]
fn a_generation_that_takes_the_service_back_accepts_again() {
    let mut sb = Sandbox::new("takeback");
    let backend = Backend::echo_tcp();
    let port = free_port();
    let addr = Addr::Tcp(port);
    sb.write(
        "psflip.toml",
        &conf(APP, &[(addr.config(), backend.addr.config())]),
    );
    let old = started(&mut sb);
    // An open connection keeps the old generation from draining: its child is not
    // signalled before shutdown.delay (5 s).
    let mut held = addr.connect().unwrap();
    held.write_all(b"held").unwrap();
    signal(old, Signal::SIGHUP);
    sb.wait_log("upgrade: the successor is ready", 1, T);
    let new = sb.service();
    assert_ne!(new, old);
    signal(new, Signal::SIGKILL);
    sb.wait_log("serving again", 1, T);
    assert_eq!(exchange(&addr, b"back").unwrap(), b"echo:back");
    held.shutdown_write().unwrap();
    let mut answer = Vec::new();
    held.read_to_end(&mut answer).unwrap();
    assert_eq!(answer, b"echo:held");
    // The next handover still learns when the connections have drained.
    let drained = sb.count("the proxied connections have all closed");
    assert_eq!(sb.service(), old);
    upgrade(&sb, true);
    sb.wait_log("the proxied connections have all closed", drained + 1, T);
    sb.stop_and_check();
}

#[test]
fn a_backend_whose_handshake_is_late_still_gets_the_request() {
    use std::os::fd::AsRawFd;
    // A backend whose accept queue holds one connection (listen backlog 0,
    // set again on std's listener), and holds one already: the kernel drops
    // the proxy's SYN, so its connect is still in progress when connect
    // returns, and until the SYN is sent again (1 s later) after the backend
    // made room. The proxy must wait for the handshake, then pass the request.
    let mut sb = Sandbox::new("late-handshake");
    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    // SAFETY: listen on a listening socket only changes its backlog.
    assert_eq!(unsafe { libc::listen(backend.as_raw_fd(), 0) }, 0);
    let bport = backend.local_addr().unwrap().port();
    let filler = TcpStream::connect(("127.0.0.1", bport)).unwrap();
    let port = free_port();
    sb.write(
        "psflip.toml",
        &conf(
            APP,
            &[(Addr::Tcp(port).config(), format!("127.0.0.1:{bport}"))],
        ),
    );
    started(&mut sb);

    let client = thread::spawn(move || exchange(&Addr::Tcp(port), b"late"));
    // The kernel's word that the proxy's connect to the backend is pending:
    // a socket to it in SYN_SENT (02).
    assert!(
        wait_until(T, || tcp_sockets()
            .iter()
            .any(|t| t.remote_port == bport && t.state == "02")),
        "no connect to the backend in SYN_SENT; log:\n{}",
        sb.log()
    );
    // Make room, then take the proxy's connection once its SYN is sent again.
    let (first, _) = backend.accept().unwrap();
    assert_eq!(
        first.peer_addr().unwrap(),
        filler.local_addr().unwrap(),
        "the queued connection comes first"
    );
    backend.set_nonblocking(true).unwrap();
    let (mut conn, _) = wait_for(T, || backend.accept().ok())
        .unwrap_or_else(|| panic!("the proxy's connection never came; log:\n{}", sb.log()));
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(T)).unwrap();
    let mut request = Vec::new();
    conn.read_to_end(&mut request).unwrap();
    assert_eq!(
        request, b"late",
        "the request, whole, once the handshake is done"
    );
    conn.write_all(b"echo:late").unwrap();
    drop(conn);
    assert_eq!(client.join().unwrap().unwrap(), b"echo:late");
    assert_eq!(sb.count("cannot connect"), 0, "{}", sb.log());
    drop((first, filler));
    sb.stop_and_check();
}

/// A thread's time slice and nice value as the kernel reports them: `se.slice`
/// in /proc/PID/task/TID/sched (None on a kernel without it, before 6.6), and
/// field 19 of its stat.
fn slice_and_nice(pid: i32, tid: i32) -> Option<(Option<u64>, i32)> {
    let sched = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/sched")).ok()?;
    let slice = sched.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == "se.slice").then(|| v.trim().parse().ok())?
    });
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    Some((slice, fields.get(19 - 3)?.parse().ok()?))
}

/// Whether this kernel takes a time slice from a fair-class thread
/// (`sched_setattr`'s `sched_runtime`, Linux 6.12 and later): asked in a
/// thread of the test's own, and read back from /proc.
fn kernel_takes_a_slice() -> bool {
    thread::spawn(|| {
        // SAFETY: sched_attr is plain data; all-zero is a valid value.
        let mut attr: libc::sched_attr = unsafe { std::mem::zeroed() };
        attr.size = std::mem::size_of::<libc::sched_attr>() as u32;
        attr.sched_flags = 0x08; // SCHED_FLAG_KEEP_POLICY
        // SAFETY: getpriority cannot fail for the calling thread.
        attr.sched_nice = 20 - unsafe { libc::syscall(libc::SYS_getpriority, 0, 0) } as i32;
        attr.sched_runtime = 100_000;
        // SAFETY: a valid sched_attr for the calling thread.
        unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &raw const attr, 0) };
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        slice_and_nice(std::process::id() as i32, tid).is_some_and(|(s, _)| s == Some(100_000))
    })
    .join()
    .unwrap()
}

/// The thread of `pid` named `name` (its comm), if any.
fn thread_named(pid: i32, name: &str) -> Option<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|tid| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
                .is_ok_and(|c| c.trim_end() == name)
        })
}

/// How long ago (wall clock, by the time of day) the last line of `log`
/// containing `needle` was written, from its `HH:MM:SS.mmm` timestamp.
fn age_of_last_line(log: &str, needle: &str) -> Option<Duration> {
    let line = log.lines().rev().find(|l| l.contains(needle))?;
    let clock = line
        .split_whitespace()
        .next()?
        .split('T')
        .nth(1)?
        .trim_end_matches('Z');
    let mut parts = clock.split(':');
    let (h, m, s): (f64, f64, f64) = (
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs_f64()
        % 86_400.0;
    Some(Duration::from_secs_f64(
        (now - (h * 3600.0 + m * 60.0 + s)).rem_euclid(86_400.0),
    ))
}

/// Cold, and with `[upgrade] standby = true`: a standby starting is one more
/// new process of the service, and the proxy thread stays prompt until the
/// next quiet stretch.
#[rstest::rstest]
fn the_proxy_thread_is_prompt_while_a_generation_starts_and_during_an_upgrade(
    #[values(false, true)] standby: bool,
) {
    // The proxy thread has a 0.1 ms time slice (EEVDF's sched_runtime) while
    // new processes of the service start on the CPUs it accepts on: from its
    // generation's start, and from an upgrade's start, until the generation
    // serves and has been quiet for a while. Otherwise, and always for the main
    // thread and the children, the kernel's default. Read from the kernel's own
    // accounts (/proc/…/sched, /proc/…/stat), psflip started at nice 5; the
    // child's health check passes only once the file `go` exists.
    let mut sb = Sandbox::new("slice");
    let backend = Backend::echo_tcp();
    let mut text = conf_standby(
        APP,
        &[(Addr::Tcp(free_port()).config(), backend.addr.config())],
        standby,
    );
    text = text.replace(
        "[healthcheck.alive]\ntimeout = \"100ms\"\n",
        "[healthcheck.command]\ncmd = [\"test\", \"-e\", \"go\"]\ninterval = \"50ms\"\n",
    );
    sb.write("psflip.toml", &text);
    let mut cmd = sb.psflip_cmd(&["-c", "psflip.toml"]);
    // SAFETY: setpriority is async-signal-safe and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setpriority(libc::PRIO_PROCESS, 0, 5) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let first = sb.keep(cmd);
    sb.wait_log("proxy: bound", 1, T);
    let default = match slice_and_nice(first, first) {
        Some((Some(default), 5)) if kernel_takes_a_slice() => default,
        Some((_, 5)) => {
            eprintln!("this kernel reports or takes no time slice (before Linux 6.12); skipped");
            sb.write("go", "");
            sb.stop_and_check();
            return;
        }
        other => panic!("psflip's main thread at nice 5: {other:?}"),
    };
    assert!(
        default > 100_000,
        "the kernel's default slice: {default} ns"
    );
    let proxy_slice = |pid: i32| {
        let tid = thread_named(pid, "psflip-proxy")?;
        slice_and_nice(pid, tid)
    };
    let short = Some((Some(100_000), 5));
    let normal = Some((Some(default), 5));
    sb.must(
        T,
        "the starting generation's proxy thread is prompt",
        || proxy_slice(first) == short,
    );
    sb.write("go", "");
    sb.wait_log("child is healthy; serving", 1, T);
    if standby {
        // The standby starts at the first quiet stretch (250 ms); the proxy
        // thread stays prompt for another one. Asserted only when this test
        // looks within 150 ms of the standby's line: a busy machine may run
        // it later.
        let line = "standby successor started";
        sb.wait_log(line, 1, T);
        let seen = proxy_slice(first);
        let age = age_of_last_line(&sb.log(), line).expect("a timestamp");
        if age < Duration::from_millis(150) {
            assert_eq!(seen, short, "{age:?} after the standby started");
        } else {
            eprintln!("looked {age:?} after the standby started: not asserted");
        }
    }
    sb.must(T, "once it serves and is quiet, the default slice", || {
        proxy_slice(first) == normal
    });
    // The app's child, and the standby if any.
    let children = common::procfs::children_of(first);
    assert_eq!(children.len(), 1 + standby as usize, "{children:?}");
    for child in children {
        assert_eq!(slice_and_nice(child, child), normal, "child {child}");
    }
    assert_eq!(slice_and_nice(first, first), normal, "the main thread");

    // An upgrade whose new child is not healthy until `go` exists again.
    std::fs::remove_file(sb.path("go")).unwrap();
    signal(first, Signal::SIGHUP);
    sb.wait_log("started successor", 1, T);
    sb.must(
        T,
        "during the upgrade, the old generation's proxy thread is prompt",
        || proxy_slice(first) == short,
    );
    assert_eq!(slice_and_nice(first, first), normal, "the old main thread");
    sb.write("go", "");
    sb.wait_log("upgrade: the successor is ready", 1, T);
    assert!(wait_until(T, || !alive(first)), "the old generation exits");
    let second = sb.service();
    assert_ne!(second, first);
    sb.must(
        T,
        "the new generation serves, quiet: the default slice",
        || proxy_slice(second) == normal,
    );
    sb.stop_and_check();
}

/// A backend that sends back whatever it reads, as it reads it.
fn mirror() -> Backend {
    Backend::tcp(|mut s| {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = s.read(&mut buf) {
            if s.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    })
}

/// The fds of `pid` that are io_uring instances.
fn io_urings(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|l| l.to_string_lossy() == "anon_inode:[io_uring]")
                })
                .count()
        })
        .unwrap_or(0)
}

/// Whether this test process could have a ring: no seccomp filter on it, and
/// `kernel.io_uring_disabled` (where the kernel has it) 0.
fn io_uring_allowed_here() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let no_filter = status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .is_some_and(|v| v.trim() == "0");
    let sysctl = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .map(|v| v.trim() == "0")
        .unwrap_or(true);
    no_filter && sysctl
}

/// Installs, in the process about to exec, a seccomp filter that kills it
/// (SIGSYS) the moment it calls io_uring_setup: as a systemd unit does whose
/// `SystemCallFilter=` leaves out `@aio`.
fn kill_on_io_uring_setup(cmd: &mut std::process::Command) {
    // SAFETY: prctl with a filter on the stack; async-signal-safe, no allocation.
    unsafe {
        cmd.pre_exec(|| {
            let filter = [
                // A = seccomp_data.nr
                libc::sock_filter {
                    code: 0x20,
                    jt: 0,
                    jf: 0,
                    k: 0,
                },
                // if A == io_uring_setup: kill the process, else allow
                libc::sock_filter {
                    code: 0x15,
                    jt: 0,
                    jf: 1,
                    k: libc::SYS_io_uring_setup as u32,
                },
                libc::sock_filter {
                    code: 0x06,
                    jt: 0,
                    jf: 0,
                    k: libc::SECCOMP_RET_KILL_PROCESS,
                },
                libc::sock_filter {
                    code: 0x06,
                    jt: 0,
                    jf: 0,
                    k: libc::SECCOMP_RET_ALLOW,
                },
            ];
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr().cast_mut(),
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &raw const prog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Where it can, the proxy hands its sends to the kernel through an io_uring
/// (BENCHMARKS.md, session 10); with `PSFLIP_NO_IO_URING` set, or under any
/// seccomp filter, it has none and never calls io_uring_setup (a filter that
/// kills the process calling it leaves psflip running). Either way a stream of
/// small messages each way arrives whole and in order: 400 round trips on one
/// connection, each message after the first going through the ring if any.
#[rstest::rstest]
#[case::default("default")]
#[case::switched_off("no_io_uring")]
#[case::seccomp_kills_io_uring_setup("seccomp")]
fn sends_go_through_an_io_uring_only_where_nothing_forbids_it(#[case] how: &str) {
    let mut sb = Sandbox::new(&format!("ring-{how}"));
    let backend = mirror();
    let port = proxy_to(&sb, &backend);
    let mut cmd = sb.psflip_cmd(&["-c", "psflip.toml"]);
    match how {
        "no_io_uring" => {
            cmd.env("PSFLIP_NO_IO_URING", "1");
        }
        "seccomp" => kill_on_io_uring_setup(&mut cmd),
        _ => {}
    }
    let pid = sb.keep(cmd);
    sb.wait_log("child is healthy; serving", 1, T);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    for i in 0..400 {
        let msg = format!("<{i}:{}>", "y".repeat(i % 300));
        s.write_all(msg.as_bytes()).unwrap();
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, msg.as_bytes(), "round trip {i}");
    }
    assert!(alive(pid), "psflip died; log:\n{}", sb.log());
    let rings = io_urings(pid);
    // And the log says which way it sends, and why not through the ring.
    let said = |line: &str| sb.count(line) == 1;
    match how {
        "default" if io_uring_allowed_here() => {
            assert_eq!(rings, 1, "the proxy thread's ring");
            assert!(
                said("proxy: sends in batches through io_uring"),
                "{}",
                sb.log()
            );
        }
        "default" => eprintln!("io_uring is not allowed to this test process: not asserted"),
        "no_io_uring" => {
            assert_eq!(rings, 0, "no ring: {how}");
            assert!(
                said("proxy: sends with send(2), not io_uring: PSFLIP_NO_IO_URING is set"),
                "{}",
                sb.log()
            );
        }
        _ => {
            assert_eq!(rings, 0, "no ring: {how}");
            assert!(
                said("proxy: sends with send(2), not io_uring: psflip runs under a seccomp filter"),
                "{}",
                sb.log()
            );
        }
    }
    drop(s);
    sb.stop_and_check();
}

/// A client, on a Unix socket, that sends small requests one at a time and
/// reads none of the answers until the end. Each answer reaches the proxy on
/// its own (the next request goes out only once the backend has answered the
/// last), so each is a small read, sent on through the ring if any; once the
/// client's socket holds what a Unix socket buffers (about 200 KiB) the
/// proxy's send comes up short or says EAGAIN, and the rest waits in a pipe
/// for EPOLLOUT while the requests go on. Then everything is read: every byte
/// arrives, in order, once.
#[rstest::rstest]
fn small_answers_to_a_client_that_lags_arrive_whole_and_in_order(
    #[values(false, true)] ring: bool,
) {
    let mut sb = Sandbox::new(if ring { "lag-ring" } else { "lag-plain" });
    let answered = Arc::new(AtomicUsize::new(0));
    let backend = {
        let answered = Arc::clone(&answered);
        Backend::tcp(move |mut s| {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = s.read(&mut buf) {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
                answered.fetch_add(n, Ordering::Release);
            }
        })
    };
    let client = Addr::Unix(sb.path("c.sock"));
    sb.write(
        "psflip.toml",
        &conf(APP, &[(client.config(), backend.addr.config())]),
    );
    let mut cmd = sb.psflip_cmd(&["-c", "psflip.toml"]);
    if !ring {
        cmd.env("PSFLIP_NO_IO_URING", "1");
    }
    sb.keep(cmd);
    sb.wait_log("child is healthy; serving", 1, T);
    // Answers of 4-8 KiB, 1.2 MB in all: small reads still (the copy buffer
    // is 16 KiB), and far more than the client's socket buffers.
    let msgs: Vec<Vec<u8>> = (0..200)
        .map(|i| format!("[{i:03}{}]", "z".repeat(4096 + i * 20)).into_bytes())
        .collect();
    let mut s = client.connect().unwrap();
    s.set_timeout(T);
    let mut total = 0;
    for m in &msgs {
        s.write_all(m).unwrap();
        total += m.len();
        sb.must(T, &format!("the backend answered {total} bytes"), || {
            answered.load(Ordering::Acquire) >= total
        });
    }
    let expected = msgs.concat();
    let mut out = vec![0u8; expected.len()];
    s.read_exact(&mut out).unwrap();
    assert!(out == expected, "the bytes differ from what was sent");
    drop(s);
    sb.stop_and_check();
}
