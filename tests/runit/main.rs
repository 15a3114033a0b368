//! `examples/runit/myapp/` under a real runsv (issue #9).
//!
//! runsv supervises one service directory as an ordinary process; the test gives
//! it the shipped `run` and `log/run` (paths rewritten to the binaries under test
//! and a temp directory) plus a `finish` of its own that records the status
//! runsv saw. It checks the facts of the world — runsv's pid files, the pidfile,
//! /proc, and a record the child writes itself — through start, `sv hup`
//! (upgrades, the child handed over, pidwatch staying the same process),
//! `sv down` (the child gets SIGTERM and finishes its handler, pidwatch ends with
//! the service, status 0), and `sv exit`. It skips, loudly, only where runsv is
//! not installed; with `CI=true` a skip is a failure.

#[path = "../common/mod.rs"]
mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{alive, ppid, wait_for};

const PSFLIP: &str = env!("CARGO_BIN_EXE_psflip");
const PIDWATCH: &str = env!("CARGO_BIN_EXE_pidwatch");
const T: Duration = Duration::from_secs(30);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn children(pid: i32) -> Vec<i32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The process's name (`/proc/PID/comm`).
fn comm(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// (`[upgrade] standby = true`) the standby of psflip `p`, once it has one.
fn standby_of(p: i32) -> Option<i32> {
    children(p)
        .into_iter()
        .find(|c| comm(*c) == "psflip-standby")
}

fn read_pid(path: &Path) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The child psflip runs: bash with no subprocess of its own, recording what
/// happens to it by its pid (see tests/systemd/main.rs for the same fixture).
const CHILD: &str = r#"#!/bin/bash
rec=$1
dir=${rec%/*}
exec 9<> "$dir/fifo"
echo "start $$" >> "$rec"
trap 'echo "pong $$" >> "$rec"' USR1
trap 'echo "term $$" >> "$rec"; read -t 0.3 -u 9; echo "finished $$" >> "$rec"; trap - TERM; kill -TERM $$' TERM
while :; do read -t 3600 -u 9; done
"#;

struct Service {
    dir: PathBuf,
    svc: PathBuf,
    runsv: Child,
    /// Every process of the service seen, to check none outlives the test.
    seen: Vec<i32>,
    done: bool,
}

impl Service {
    fn sv(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("sv")
            .args(args)
            .arg(&self.svc)
            .stdin(Stdio::null())
            .output()
            .expect("sv");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }

    fn record(&self) -> String {
        fs::read_to_string(self.dir.join("record")).unwrap_or_default()
    }

    fn count(&self, what: &str, pid: i32) -> usize {
        let line = format!("{what} {pid}");
        self.record().lines().filter(|l| *l == line).count()
    }

    fn diag(&self) -> String {
        format!(
            "--- sv status: {}--- record\n{}--- log/current\n{}--- finish\n{}",
            self.sv(&["status"]).1,
            self.record(),
            fs::read_to_string(self.dir.join("log/current")).unwrap_or_default(),
            fs::read_to_string(self.dir.join("finish.rec")).unwrap_or_default(),
        )
    }

    /// runsv's pid of ./run (pidwatch), while it runs.
    fn pidwatch(&self) -> Option<i32> {
        read_pid(&self.svc.join("supervise/pid")).filter(|p| *p > 0)
    }

    /// The service serves: the pidfile names a psflip under pidwatch whose child
    /// answers SIGUSR1 sent to pidwatch. Returns (psflip, child).
    fn serving(&mut self, what: &str, pidwatch: i32) -> (i32, i32) {
        let found = wait_for(T, || {
            let p = read_pid(&self.dir.join("myapp.pid"))?;
            (alive(p) && ppid(p) == Some(pidwatch)).then_some(())?;
            let c = children(p)
                .into_iter()
                .find(|c| comm(*c) != "psflip-standby")?;
            (self.count("start", c) == 1).then_some((p, c))
        });
        let (p, c) = found.unwrap_or_else(|| panic!("{what}: not serving\n{}", self.diag()));
        self.seen.extend([p, c]);
        let pongs = self.count("pong", c);
        // SAFETY: kill has no memory preconditions; pidwatch is this test's.
        unsafe { libc::kill(pidwatch, libc::SIGUSR1) };
        assert!(
            wait_for(T, || (self.count("pong", c) > pongs).then_some(())).is_some(),
            "{what}: the child {c} does not answer through pidwatch\n{}",
            self.diag()
        );
        (p, c)
    }

    fn stopped_gracefully(&self, what: &str, child: i32) {
        assert!(
            wait_for(T, || (self.count("finished", child) == 1).then_some(())).is_some(),
            "{what}: the child {child} did not finish its handler\n{}",
            self.diag()
        );
        assert_eq!(self.count("term", child), 1, "{what}\n{}", self.diag());
    }

    fn stop(&mut self) -> Vec<i32> {
        self.done = true;
        let _ = self.sv(&["exit"]);
        if wait_for(T, || self.runsv.try_wait().ok().flatten()).is_none() {
            let _ = self.runsv.kill();
            let _ = self.runsv.wait();
        }
        let left: Vec<i32> = self.seen.iter().copied().filter(|p| alive(*p)).collect();
        for p in &left {
            // SAFETY: as above; these are this test's processes.
            unsafe { libc::kill(*p, libc::SIGKILL) };
        }
        left
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        common::teardown_on_drop(self.done, "runit test (killed)", || self.stop());
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The shipped script with the test's binaries and paths.
fn rewrite(text: &str, dir: &Path) -> String {
    text.replace("/usr/local/bin/pidwatch", PIDWATCH)
        .replace("/usr/local/bin/psflip", PSFLIP)
        .replace(
            "/etc/myapp/psflip.toml",
            &dir.join("psflip.toml").to_string_lossy(),
        )
        .replace("/run/myapp.pid", &dir.join("myapp.pid").to_string_lossy())
        .replace("/var/log/myapp", &dir.join("log").to_string_lossy())
}

fn install(src: &Path, dst: &Path, dir: &Path) {
    let text = fs::read_to_string(src).unwrap();
    fs::write(dst, rewrite(&text, dir)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dst, fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn the_runit_example_under_a_real_runsv() {
    scenario(false);
    // The same with `[upgrade] standby = true`: each `sv hup` wakes the standby.
    scenario(true);
}

fn scenario(standby: bool) {
    let missing: Vec<&str> = ["runsv", "sv", "svlogd"]
        .into_iter()
        .filter(|t| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    if !missing.is_empty() {
        let why = format!("runit is not installed (no {missing:?})");
        common::skipped("the runit test", &why);
        return;
    }
    let dir = std::env::temp_dir().join(format!(
        "psflip-runit-{}{}",
        std::process::id(),
        if standby { "-standby" } else { "" }
    ));
    let _ = fs::remove_dir_all(&dir);
    let svc = dir.join("myapp");
    fs::create_dir_all(svc.join("log")).unwrap();
    let example = repo().join("examples/runit/myapp");
    install(&example.join("run"), &svc.join("run"), &dir);
    install(&example.join("log/run"), &svc.join("log/run"), &dir);
    // The test's own ./finish: what runsv saw ./run (pidwatch) end with.
    fs::write(
        svc.join("finish"),
        format!(
            "#!/bin/sh\necho \"$1 $2\" >> '{}'\n",
            dir.join("finish.rec").display()
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(svc.join("finish"), fs::Permissions::from_mode(0o755)).unwrap();
    }
    fs::write(dir.join("child.sh"), CHILD).unwrap();
    let fifo =
        std::ffi::CString::new(dir.join("fifo").into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    fs::write(
        dir.join("psflip.toml"),
        format!(
            "cmd = [\"/bin/bash\", \"{}\", \"{}\"]\npidfile = \"{}\"\n\n[shutdown]\ntimeout = \"5s\"\n\n[healthcheck.alive]\ntimeout = \"300ms\"\n{}",
            dir.join("child.sh").display(),
            dir.join("record").display(),
            dir.join("myapp.pid").display(),
            if standby { "\n[upgrade]\nstandby = true\n" } else { "" }
        ),
    )
    .unwrap();

    let runsv = Command::new("runsv")
        .arg(&svc)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("runsv");
    let mut s = Service {
        dir: dir.clone(),
        svc: svc.clone(),
        seen: vec![runsv.id() as i32],
        runsv,
        done: false,
    };

    // Start.
    let pw = wait_for(T, || s.pidwatch().filter(|p| alive(*p)))
        .unwrap_or_else(|| panic!("runsv did not start ./run\n{}", s.diag()));
    s.seen.push(pw);
    let svlogd = wait_for(T, || {
        read_pid(&svc.join("log/supervise/pid")).filter(|p| *p > 0)
    });
    s.seen.extend(svlogd);
    let mut current = s.serving("after start", pw);

    // Upgrades: `sv hup`.
    for i in 1..=2 {
        let what = format!("sv hup {i}");
        let sb = standby.then(|| {
            let sb = wait_for(T, || standby_of(current.0))
                .unwrap_or_else(|| panic!("{what}: psflip has no standby\n{}", s.diag()));
            s.seen.push(sb);
            sb
        });
        let (ok, out) = s.sv(&["hup"]);
        assert!(ok, "{what}: {out}");
        let found = wait_for(T, || {
            read_pid(&dir.join("myapp.pid")).filter(|p| *p != current.0 && alive(*p))
        });
        assert!(found.is_some(), "{what}: no new generation\n{}", s.diag());
        let next = s.serving(&what, pw);
        assert_ne!(next.1, current.1, "{what}: a new child");
        if let Some(sb) = sb {
            assert_eq!(next.0, sb, "{what}: the upgrade woke the standby");
        }
        s.stopped_gracefully(&what, current.1);
        assert!(
            wait_for(T, || (!alive(current.0)).then_some(())).is_some(),
            "{what}: the old psflip did not exit\n{}",
            s.diag()
        );
        assert_eq!(
            s.pidwatch(),
            Some(pw),
            "{what}: runsv's ./run is the same process"
        );
        assert!(
            fs::read_to_string(dir.join("finish.rec"))
                .unwrap_or_default()
                .is_empty(),
            "{what}: ./run never ended\n{}",
            s.diag()
        );
        current = next;
    }

    // Stop: `sv down` (with a standby waiting, in the standby pass).
    if standby {
        let sb = wait_for(T, || standby_of(current.0))
            .unwrap_or_else(|| panic!("before sv down: psflip has no standby\n{}", s.diag()));
        s.seen.push(sb);
    }
    let (ok, out) = s.sv(&["down"]);
    assert!(ok, "sv down: {out}");
    s.stopped_gracefully("sv down", current.1);
    assert!(
        wait_for(T, || (!alive(pw) && !alive(current.0)).then_some(())).is_some(),
        "sv down: pidwatch and psflip end with the service\n{}",
        s.diag()
    );
    let finish = wait_for(T, || {
        fs::read_to_string(dir.join("finish.rec"))
            .ok()
            .filter(|t| !t.is_empty())
    });
    assert_eq!(
        finish.as_deref(),
        Some("0 0\n"),
        "pidwatch --exit-status: 0 for a stop that was asked for\n{}",
        s.diag()
    );
    assert!(
        wait_for(T, || s
            .sv(&["status"])
            .1
            .starts_with("down: ")
            .then_some(()))
        .is_some(),
        "runsv says the service is down\n{}",
        s.diag()
    );
    let log = fs::read_to_string(dir.join("log/current")).unwrap_or_default();
    assert!(
        log.contains(&format!("{}", current.0)),
        "the service's output reaches svlogd\n{}",
        s.diag()
    );

    let left = s.stop();
    assert!(left.is_empty(), "left running: {left:?}");
}
