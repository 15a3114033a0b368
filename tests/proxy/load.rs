//! The load test of issue #4, like the reference's CRASH_RATE=50: an HTTP backend
//! (`python3 -m http.server`) on the `AB` port behind the proxy, whose green
//! generation fails at start half of the time; an upgrade every 250 ms while 8
//! clients send requests, one connection each. No request may fail (I8), and both
//! successful and failed upgrades must have happened (or the test proved nothing).

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::util::*;

const CLIENTS: usize = 8;
/// Load at least this long, and until both outcomes were seen…
const MIN_LOAD: Duration = Duration::from_secs(8);
/// …but no longer than this (the whole test stays under 30 s).
const MAX_LOAD: Duration = Duration::from_secs(20);
const UPGRADE_EVERY: Duration = Duration::from_millis(250);

fn config(listen: &Addr, ports: (u16, u16)) -> String {
    let script = "if [ {{ BlueGreen }} = green ] && [ $(od -An -N1 -tu1 /dev/urandom) -lt 128 ]; \
                  then exit 1; fi; \
                  exec python3 -m http.server --bind 127.0.0.1 --directory www {{ Local \"port\" }} 2>/dev/null";
    format!(
        r#"cmd = ["sh", "-c", {script:?}]
pidfile = "psflip.pid"
[locals]
port = '{{{{ AB "{a}" "{b}" }}}}'
[upgrade]
timeout = "10s"
[shutdown]
delay = "10s"
timeout = "5s"
[healthcheck.tcp]
address = '127.0.0.1:{{{{ Local "port" }}}}'
interval = "100ms"
[[proxy]]
listen = "{listen}"
forward = '127.0.0.1:{{{{ Local "port" }}}}'
"#,
        a = ports.0,
        b = ports.1,
        listen = listen.config(),
    )
}

fn run(name: &str, listen: impl FnOnce(&Sandbox) -> Addr) {
    let _heavy = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let mut sb = Sandbox::new(name);
    let listen = listen(&sb);
    std::fs::create_dir(sb.path("www")).unwrap();
    let body: String = (0..200).map(|i| format!("line {i}\n")).collect();
    sb.write("www/f.txt", &body);
    sb.write("psflip.toml", &config(&listen, (free_port(), free_port())));
    sb.start();
    sb.wait_log("child is healthy; serving", 1, T);

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (stop, ok, errors, listen, body) = (
                stop.clone(),
                ok.clone(),
                errors.clone(),
                listen.clone(),
                body.clone(),
            );
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match request(&listen) {
                        Ok(r) if r.starts_with("HTTP/1.0 200") && r.ends_with(&body) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => errors.lock().unwrap().push(format!(
                            "bad answer: {:?}",
                            r.chars().take(80).collect::<String>()
                        )),
                        Err(e) => errors.lock().unwrap().push(e.to_string()),
                    }
                }
            })
        })
        .collect();

    let start = Instant::now();
    loop {
        let elapsed = start.elapsed();
        let both =
            sb.count("upgrade: the successor is ready") > 0 && sb.count("upgrade failed") > 0;
        if elapsed >= MAX_LOAD || (elapsed >= MIN_LOAD && both) {
            break;
        }
        signal(sb.service(), Signal::SIGHUP);
        thread::sleep(UPGRADE_EVERY);
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }

    let (done, failed) = (
        sb.count("upgrade: the successor is ready"),
        sb.count("upgrade failed"),
    );
    let errors = errors.lock().unwrap();
    let ok = ok.load(Ordering::Relaxed);
    eprintln!(
        "{name}: {ok} requests, {} failed; {done} upgrades succeeded, {failed} failed",
        errors.len()
    );
    assert!(
        errors.is_empty(),
        "{} of {} requests failed: {:#?}",
        errors.len(),
        ok + errors.len(),
        &errors[..errors.len().min(10)]
    );
    assert!(ok >= 100, "only {ok} requests in {:?}", start.elapsed());
    assert!(done >= 1, "no upgrade succeeded; log:\n{}", sb.log());
    assert!(failed >= 1, "no upgrade failed; log:\n{}", sb.log());
    sb.stop_and_check();
}

/// One request on a fresh connection; the whole answer.
fn request(addr: &Addr) -> std::io::Result<String> {
    let mut s = addr.connect()?;
    s.write_all(b"GET /f.txt HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[test]
fn no_request_fails_while_upgrading_under_load() {
    run("load-tcp", |_| Addr::Tcp(free_port()));
}

#[test]
fn no_request_fails_while_upgrading_under_load_over_a_unix_socket() {
    run("load-unix", |sb| Addr::Unix(sb.path("proxy.sock")));
}
