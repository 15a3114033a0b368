//! Every unit shipped in `examples/systemd/` under a real systemd (issue #9).
//!
//! The test boots the installed systemd as PID 1 of its own namespaces (see
//! `/work/shared/REAL-COMPONENTS.md`, `tests/systemd/pid1.sh`), with the unit's
//! paths rewritten to the binary under test and a test configuration, and checks
//! what systemd and the processes themselves say — never psflip's own account:
//!
//! - start: the unit is active, its MainPID is psflip, the child serves;
//! - three reloads: each returns 0, MainPID is the new psflip, the new child
//!   serves, the old child got `shutdown.signal` and finished its handler (it
//!   writes so itself, after its handler's work), exactly psflip and its child are
//!   left in the unit's cgroup, NRestarts=0, and systemd never called the main
//!   process "not our child";
//! - a failing upgrade (the new child exits at once): `systemctl reload` fails,
//!   the unit stays active with MainPID and the old child unchanged;
//! - a good reload after it succeeds;
//! - stop: the child gets `shutdown.signal` and finishes its handler, the unit
//!   ends `inactive` with Result=success, nothing is left in its cgroup;
//! - a stop during a reload, while the old generation drains (shutdown.delay):
//!   both children get `shutdown.signal` and finish, Result=success;
//! - never, in the unit's journal: "not our child", SIGKILL, a timeout, a
//!   failed result.
//!
//! A unit with `Type=notify-reload` runs only on systemd 253 and later (the test
//! says so when it skips one). The test skips, loudly, only where systemd cannot
//! be booted at all (not root, no systemd, no cgroup hierarchy); with `CI=true` a
//! skip is a failure.

#[path = "../common/mod.rs"]
mod common;

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::wait_for;

const BIN: &str = env!("CARGO_BIN_EXE_psflip");
/// Bound of every wait: generous, since the machine is shared and slow.
const T: Duration = Duration::from_secs(30);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Why a private systemd cannot be booted here at all, if it cannot.
fn cannot_boot() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root (unshare and cgroups need it)".into());
    }
    for tool in [
        "/lib/systemd/systemd",
        "/usr/bin/unshare",
        "/usr/bin/nsenter",
    ] {
        if !Path::new(tool).exists() {
            return Some(format!("{tool} is not installed"));
        }
    }
    if hierarchies().is_empty() {
        return Some("no cgroup hierarchy systemd can use under /sys/fs/cgroup".into());
    }
    None
}

/// The cgroup hierarchies systemd needs a directory of its own in: the named
/// `systemd` one and the unified one on a hybrid layout, the root on a pure
/// cgroup2 layout.
fn hierarchies() -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    if base.join("cgroup.controllers").exists() {
        return vec![base.to_path_buf()];
    }
    ["systemd", "unified"]
        .iter()
        .map(|h| base.join(h))
        .filter(|h| h.join("cgroup.procs").exists())
        .collect()
}

/// A process of a unit, as the host sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Proc {
    host: i32,
    /// Its pid in systemd's pid namespace (what systemd and the record files say).
    ns: i32,
    /// Its parent's host pid.
    ppid: i32,
    comm: String,
}

impl Proc {
    fn of(host: i32) -> Option<Proc> {
        let status = fs::read_to_string(format!("/proc/{host}/status")).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
                .map(str::to_owned)
        };
        Some(Proc {
            host,
            ns: field("NSpid:")?.split_whitespace().last()?.parse().ok()?,
            ppid: field("PPid:")?.parse().ok()?,
            comm: field("Name:")?,
        })
    }
}

/// A systemd booted as PID 1 of new namespaces, with the test's own units.
struct Systemd {
    dir: PathBuf,
    /// This run's directory in each cgroup hierarchy.
    cgroups: Vec<PathBuf>,
    /// `unshare`, whose only child is systemd.
    launcher: Child,
    /// systemd's host pid.
    pid: i32,
    version: u32,
    down: bool,
}

impl Systemd {
    /// Boot with the units in `dir/units` (and the test's target); panics, with
    /// the console log, if systemd does not reach `running`.
    fn boot(dir: &Path) -> Systemd {
        let id = format!("psflip-test-systemd-{}", std::process::id());
        let cgroups: Vec<PathBuf> = hierarchies().iter().map(|h| h.join(&id)).collect();
        for c in &cgroups {
            fs::create_dir(c).unwrap_or_else(|e| panic!("mkdir {}: {e}", c.display()));
        }
        fs::write(
            dir.join("system.conf"),
            "[Manager]\nLogTarget=journal\nDefaultCPUAccounting=no\nDefaultIOAccounting=no\n\
             DefaultIPAccounting=no\nDefaultBlockIOAccounting=no\nDefaultMemoryAccounting=no\n\
             DefaultTasksAccounting=no\nDefaultTimeoutStartSec=30s\nDefaultTimeoutStopSec=30s\n",
        )
        .unwrap();
        fs::write(
            dir.join("units/psflip-test.target"),
            "[Unit]\nDescription=psflip's systemd test\nDefaultDependencies=no\n\
             Wants=systemd-journald.socket systemd-journald.service\n",
        )
        .unwrap();
        // The launcher moves itself into the run's cgroups, then becomes unshare,
        // whose child (pid1.sh) becomes systemd.
        let moves: String = cgroups
            .iter()
            .map(|c| format!("echo $$ > '{}/cgroup.procs' || exit 97; ", c.display()))
            .collect();
        let script = format!(
            "{moves}exec unshare --pid --fork --kill-child --mount --uts --ipc --net \
             --propagation private \"$0\" \"$1\""
        );
        let log = fs::File::create(dir.join("launcher.log")).unwrap();
        let launcher = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(repo().join("tests/systemd/pid1.sh"))
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn unshare");
        let lpid = launcher.id() as i32;
        let mut sd = Systemd {
            dir: dir.to_path_buf(),
            cgroups,
            launcher,
            pid: 0,
            version: 0,
            down: false,
        };
        sd.pid = wait_for(T, || {
            let children = fs::read_to_string(format!("/proc/{lpid}/task/{lpid}/children")).ok()?;
            let pid: i32 = children.split_whitespace().next()?.parse().ok()?;
            let exe = fs::read_link(format!("/proc/{pid}/exe")).ok()?;
            exe.ends_with("systemd").then_some(pid)
        })
        .unwrap_or_else(|| panic!("systemd did not start\n{}", sd.diag("")));
        let state = wait_for(T, || {
            let out = sd.ctl(&["is-system-running"]);
            let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            matches!(state.as_str(), "running" | "degraded").then_some(state)
        });
        assert_eq!(
            state.as_deref(),
            Some("running"),
            "systemd did not boot\n{}",
            sd.diag("")
        );
        let out = sd.ctl(&["--version"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        sd.version = text
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("systemctl --version: {text:?}"));
        sd
    }

    /// `nsenter … --`: what follows runs inside systemd's namespaces.
    fn nsenter(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.args([
            "-t",
            &self.pid.to_string(),
            "-m",
            "-u",
            "-i",
            "-n",
            "-p",
            "--",
        ]);
        c
    }

    /// `nsenter … -- CMD ARGS`, inside systemd's namespaces.
    fn inside(&self, cmd: &str, args: &[&str]) -> Output {
        self.nsenter()
            .arg(cmd)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("nsenter")
    }

    fn ctl(&self, args: &[&str]) -> Output {
        self.inside("systemctl", args)
    }

    fn show(&self, unit: &str, property: &str) -> String {
        let out = self.ctl(&["show", unit, "-p", property, "--value"]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn main_pid(&self, unit: &str) -> i32 {
        self.show(unit, "MainPID").parse().unwrap_or(0)
    }

    fn journal(&self, unit: &str) -> String {
        let out = self.inside(
            "journalctl",
            &["-u", unit, "--no-pager", "-o", "short-monotonic"],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The unit's processes, from its cgroup in the unified (or only) hierarchy.
    fn procs(&self, unit: &str) -> Vec<Proc> {
        let Some(c) = self.cgroups.last() else {
            return Vec::new();
        };
        let path = c.join("system.slice").join(unit).join("cgroup.procs");
        let text = fs::read_to_string(path).unwrap_or_default();
        text.split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter_map(Proc::of)
            .collect()
    }

    /// A file as seen inside (e.g. the pidfile in its private /run).
    fn read_inside(&self, path: &str) -> Option<String> {
        fs::read_to_string(format!("/proc/{}/root{path}", self.pid)).ok()
    }

    fn diag(&self, unit: &str) -> String {
        let mut s = String::new();
        if !unit.is_empty() && self.pid > 0 {
            let status = self.ctl(&["status", "--no-pager", "-l", unit]);
            s += &format!(
                "--- systemctl status {unit}\n{}--- journal of {unit}\n{}",
                String::from_utf8_lossy(&status.stdout),
                self.journal(unit)
            );
            s += &format!("--- processes: {:?}\n", self.procs(unit));
        }
        for f in ["launcher.log", "console.log"] {
            let text = fs::read_to_string(self.dir.join(f)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            s += &format!("--- {f} (tail)\n");
            for l in tail.iter().rev() {
                s += l;
                s += "\n";
            }
        }
        s
    }

    /// Power off (SIGRTMIN+4), wait for it, remove the run's cgroups; assert
    /// nothing was left in them.
    fn shut_down(mut self) {
        let left = self.teardown();
        assert!(left.is_empty(), "left behind: {left:?}");
    }

    /// What was left (processes, cgroup directories), after doing the best it can.
    fn teardown(&mut self) -> Vec<String> {
        self.down = true;
        let mut left = Vec::new();
        if self.pid > 0 {
            // SAFETY: kill has no memory preconditions; the pid is systemd's.
            unsafe { libc::kill(self.pid, libc::SIGRTMIN() + 4) };
        }
        let exited = wait_for(T, || self.launcher.try_wait().ok().flatten());
        if exited.is_none() {
            left.push(format!("systemd (pid {}) did not power off", self.pid));
            // unshare --kill-child: PID 1 of the namespace dies, and all in it.
            let _ = self.launcher.kill();
            let _ = self.launcher.wait();
        }
        for c in &self.cgroups {
            // Whatever is still in the tree, deepest first.
            let mut dirs = Vec::new();
            collect_dirs(c, &mut dirs);
            for d in dirs.iter().rev() {
                let procs = fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
                if !procs.trim().is_empty() {
                    left.push(format!("{}: {}", d.display(), procs.trim()));
                    for pid in procs.split_whitespace() {
                        if let Ok(pid) = pid.parse::<i32>() {
                            // SAFETY: as above; these are this run's processes.
                            unsafe { libc::kill(pid, libc::SIGKILL) };
                        }
                    }
                }
            }
            for d in dirs.iter().rev() {
                let _ = wait_for(Duration::from_secs(5), || fs::remove_dir(d).ok());
            }
            if c.exists() {
                left.push(format!("{} could not be removed", c.display()));
            }
        }
        left
    }
}

impl Drop for Systemd {
    fn drop(&mut self) {
        common::teardown_on_drop(self.down, "systemd test teardown", || self.teardown());
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    if !dir.is_dir() {
        return;
    }
    out.push(dir.to_path_buf());
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

/// The child the units run: bash (no subprocess of its own, so the unit's cgroup
/// holds exactly psflip and it), recording what happens to it, by its own pid:
/// `start`, `pong` (SIGUSR1: it serves), `term` when SIGTERM (shutdown.signal)
/// arrives, `finished` after its handler's 300 ms of work, then it dies of the
/// SIGTERM as a well-behaved daemon does. With `fail` in its directory it exits 3
/// at once (a broken new version); with `slow` there when it starts, its handler
/// takes 1.5 s.
const CHILD: &str = r#"#!/bin/bash
rec=$1
dir=${rec%/*}
exec 9<> "$dir/fifo"
echo "start $$" >> "$rec"
if [ -e "$dir/fail" ]; then echo "fail $$" >> "$rec"; exit 3; fi
pause=0.3
if [ -e "$dir/slow" ]; then pause=1.5; fi
trap 'echo "pong $$" >> "$rec"' USR1
trap 'echo "term $$" >> "$rec"; read -t $pause -u 9; echo "finished $$" >> "$rec"; trap - TERM; kill -TERM $$' TERM
while :; do read -t 3600 -u 9; done
"#;

/// One unit under test.
struct Unit<'a> {
    sd: &'a Systemd,
    name: String,
    record: PathBuf,
    pidfile: String,
    conf: PathBuf,
    /// The configuration has `[upgrade] standby = true`: a serving psflip has a
    /// `psflip-standby` child too, and a reload wakes it.
    standby: bool,
}

impl Unit<'_> {
    fn events(&self) -> Vec<(String, i32)> {
        fs::read_to_string(&self.record)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (what, pid) = l.split_once(' ')?;
                Some((what.to_owned(), pid.parse().ok()?))
            })
            .collect()
    }

    fn count(&self, what: &str, pid: i32) -> usize {
        self.events()
            .iter()
            .filter(|(w, p)| w == what && *p == pid)
            .count()
    }

    fn diag(&self) -> String {
        format!(
            "--- record\n{}{}",
            fs::read_to_string(&self.record).unwrap_or_default(),
            self.sd.diag(&self.name)
        )
    }

    /// `systemctl ACTION unit`; its exit status.
    fn ctl(&self, action: &str) -> (i32, String) {
        let out = self.sd.ctl(&[action, &self.name]);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The unit runs exactly psflip (its MainPID, which the pidfile names) and
    /// psflip's child, and that child serves. Returns (MainPID, child), as pids
    /// inside.
    fn serving(&self, what: &str) -> (i32, i32) {
        assert_eq!(
            self.sd.show(&self.name, "ActiveState"),
            "active",
            "{what}\n{}",
            self.diag()
        );
        let main = self.sd.main_pid(&self.name);
        if self.standby {
            self.standby_of(main, what);
        }
        let procs = self.sd.procs(&self.name);
        assert_eq!(
            procs.len(),
            if self.standby { 3 } else { 2 },
            "{what}: psflip and its child (and its standby)\n{}",
            self.diag()
        );
        let psflip = procs.iter().find(|p| p.ns == main).unwrap_or_else(|| {
            panic!("{what}: MainPID {main} is not in the unit\n{}", self.diag())
        });
        assert_eq!(psflip.comm, "psflip", "{what}\n{}", self.diag());
        let child = procs
            .iter()
            .find(|p| p.ppid == psflip.host && p.comm != "psflip-standby")
            .unwrap_or_else(|| panic!("{what}: no child of psflip\n{}", self.diag()));
        assert_eq!(
            self.sd.read_inside(&self.pidfile).as_deref(),
            Some(format!("{main}\n").as_str()),
            "{what}: the pidfile names MainPID\n{}",
            self.diag()
        );
        assert_eq!(self.count("start", child.ns), 1, "{what}\n{}", self.diag());
        // It serves: a signal to the main process reaches it (psflip forwards it).
        let pongs = self.count("pong", child.ns);
        let out = self
            .sd
            .ctl(&["kill", "--kill-who=main", "-s", "SIGUSR1", &self.name]);
        assert!(
            out.status.success(),
            "{what}: systemctl kill\n{}",
            self.diag()
        );
        assert!(
            wait_for(T, || (self.count("pong", child.ns) > pongs).then_some(())).is_some(),
            "{what}: the child {} does not answer\n{}",
            child.ns,
            self.diag()
        );
        assert_eq!(self.sd.show(&self.name, "NRestarts"), "0", "{what}");
        (main, child.ns)
    }

    /// The old child got shutdown.signal once and finished its handler.
    fn stopped_gracefully(&self, what: &str, child: i32) {
        assert_eq!(self.count("term", child), 1, "{what}\n{}", self.diag());
        assert_eq!(
            self.count("finished", child),
            1,
            "{what}: the child {child} did not finish its handler\n{}",
            self.diag()
        );
    }

    /// (`standby`) the standby of the psflip `main` (pids inside), once it has
    /// started one (250 ms after it is quiet).
    fn standby_of(&self, main: i32, what: &str) -> i32 {
        let host = |ns: i32| {
            self.sd
                .procs(&self.name)
                .into_iter()
                .find(|p| p.ns == ns)
                .map(|p| p.host)
        };
        wait_for(T, || {
            let parent = host(main)?;
            self.sd
                .procs(&self.name)
                .into_iter()
                .find(|p| p.ppid == parent && p.comm == "psflip-standby")
                .map(|p| p.ns)
        })
        .unwrap_or_else(|| panic!("{what}: psflip {main} has no standby\n{}", self.diag()))
    }

    fn reload_ok(&self, what: &str, before: (i32, i32)) -> (i32, i32) {
        let standby = self.standby.then(|| self.standby_of(before.0, what));
        let (code, err) = self.ctl("reload");
        assert_eq!(code, 0, "{what}: systemctl reload: {err}\n{}", self.diag());
        let now = self.serving(what);
        assert_ne!(now.0, before.0, "{what}: MainPID is the new psflip");
        if let Some(standby) = standby {
            assert_eq!(
                now.0,
                standby,
                "{what}: the reload woke the standby, now MainPID\n{}",
                self.diag()
            );
        }
        assert_ne!(now.1, before.1, "{what}: a new child serves");
        self.stopped_gracefully(what, before.1);
        now
    }

    fn run(&self) {
        let name = &self.name;
        let (code, err) = self.ctl("start");
        assert_eq!(code, 0, "systemctl start: {err}\n{}", self.diag());
        let mut current = self.serving("after start");
        for i in 1..=3 {
            current = self.reload_ok(&format!("reload {i}"), current);
        }

        // A broken new version: the reload fails, nothing else changes.
        let fail = self.record.with_file_name("fail");
        fs::write(&fail, "").unwrap();
        let (code, _) = self.ctl("reload");
        fs::remove_file(&fail).unwrap();
        assert_ne!(
            code,
            0,
            "a failed upgrade must fail the reload\n{}",
            self.diag()
        );
        assert_eq!(
            self.events().iter().filter(|(w, _)| w == "fail").count(),
            1,
            "the broken child ran once\n{}",
            self.diag()
        );
        let after = self.serving("after the failed reload");
        assert_eq!(
            after,
            current,
            "MainPID and child unchanged\n{}",
            self.diag()
        );
        assert_eq!(self.count("term", current.1), 0, "{}", self.diag());

        current = self.reload_ok("the reload after the failed one", current);

        let (code, err) = self.ctl("stop");
        assert_eq!(code, 0, "systemctl stop: {err}\n{}", self.diag());
        self.stopped_gracefully("stop", current.1);
        assert_eq!(
            self.sd.show(name, "ActiveState"),
            "inactive",
            "{}",
            self.diag()
        );
        assert_eq!(self.sd.show(name, "Result"), "success", "{}", self.diag());
        assert!(self.sd.procs(name).is_empty(), "{}", self.diag());
        self.journal_clean();

        self.stop_while_draining();
        self.journal_clean();
    }

    fn journal_clean(&self) {
        let journal = self.sd.journal(&self.name);
        for never in [
            "not our child",
            "SIGKILL",
            "Failed with result",
            "timed out",
        ] {
            assert!(
                !journal.contains(never),
                "systemd said {never:?}\n{}",
                self.diag()
            );
        }
    }

    /// `systemctl stop` while the old generation still drains after a reload
    /// (its shutdown.delay): systemd's main process is still the old psflip,
    /// the pidfile names the new one. Both children get shutdown.signal and
    /// finish, the unit ends inactive with Result=success.
    fn stop_while_draining(&self) {
        let what = "stop while the old generation drains";
        let text = fs::read_to_string(&self.conf).unwrap();
        fs::write(
            &self.conf,
            text.replace("[shutdown]\n", "[shutdown]\ndelay = \"4s\"\n"),
        )
        .unwrap();
        let (code, err) = self.ctl("start");
        assert_eq!(code, 0, "{what}: systemctl start: {err}\n{}", self.diag());
        let (old, c1) = self.serving(&format!("{what}: after start"));
        // The new child takes longer to stop than the old one: what is left when
        // systemd's main process (the old psflip) exits gets SIGKILL.
        let slow = self.record.with_file_name("slow");
        fs::write(&slow, "").unwrap();
        // The reload waits for the old generation (--wait-old): in the background.
        let mut reload = self
            .sd
            .nsenter()
            .args(["systemctl", "reload", &self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("systemctl reload");
        let new = wait_for(T, || {
            let named: i32 = self.sd.read_inside(&self.pidfile)?.trim().parse().ok()?;
            (named != old).then_some(named)
        });
        let new = new.unwrap_or_else(|| panic!("{what}: no new generation\n{}", self.diag()));
        let procs = self.sd.procs(&self.name);
        let new_host = procs.iter().find(|p| p.ns == new).map(|p| p.host);
        let c2 = procs
            .iter()
            .find(|p| Some(p.ppid) == new_host && p.comm == "bash")
            .map(|p| p.ns)
            .unwrap_or_else(|| panic!("{what}: no new child\n{}", self.diag()));
        assert!(
            procs.iter().any(|p| p.ns == old),
            "{what}: the old generation drains (shutdown.delay 4s)\n{}",
            self.diag()
        );
        assert_eq!(self.count("term", c1), 0, "{what}: still in shutdown.delay");
        assert_eq!(self.sd.main_pid(&self.name), old, "{what}\n{}", self.diag());

        let (code, err) = self.ctl("stop");
        fs::remove_file(&slow).unwrap();
        assert_eq!(code, 0, "{what}: systemctl stop: {err}\n{}", self.diag());
        let _ = reload.wait();
        self.stopped_gracefully(&format!("{what}: the old child"), c1);
        self.stopped_gracefully(&format!("{what}: the new child"), c2);
        assert_eq!(
            self.sd.show(&self.name, "ActiveState"),
            "inactive",
            "{}",
            self.diag()
        );
        assert_eq!(
            self.sd.show(&self.name, "Result"),
            "success",
            "{}",
            self.diag()
        );
        assert!(self.sd.procs(&self.name).is_empty(), "{}", self.diag());
    }
}

/// The unit's text for the test: the binary under test, the test's
/// configuration, no default dependencies (nothing else is booted).
fn test_unit(text: &str, conf: &Path) -> String {
    for path in ["/usr/local/bin/psflip", "/etc/myapp/psflip.toml"] {
        assert!(text.contains(path), "the unit no longer names {path}");
    }
    text.replace("/usr/local/bin/psflip", BIN)
        .replace("/etc/myapp/psflip.toml", &conf.to_string_lossy())
        .replace("[Unit]\n", "[Unit]\nDefaultDependencies=no\n")
}

fn config(dir: &Path, record: &Path, pidfile: &str) -> String {
    format!(
        r#"cmd = ["/bin/bash", "{child}", "{record}"]
pidfile = "{pidfile}"

[upgrade]
timeout = "10s"

[shutdown]
timeout = "5s"

[healthcheck.alive]
timeout = "300ms"
"#,
        child = dir.join("child.sh").display(),
        record = record.display(),
    )
}

#[test]
fn every_shipped_unit_under_a_private_systemd() {
    if let Some(why) = cannot_boot() {
        common::skipped("the systemd suite", &why);
        return;
    }
    let dir = std::env::temp_dir().join(format!("psflip-systemd-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("units")).unwrap();
    let _rm = RemoveOnDrop(dir.clone());
    fs::write(dir.join("child.sh"), CHILD).unwrap();
    nix_mkfifo(&dir.join("fifo"));

    let mut units: Vec<PathBuf> = fs::read_dir(repo().join("examples/systemd"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "service"))
        .collect();
    units.sort();
    assert!(!units.is_empty(), "no unit in examples/systemd");
    let mut plan = Vec::new();
    for path in &units {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = fs::read_to_string(path).unwrap();
        let pidfile = text
            .lines()
            .find_map(|l| l.strip_prefix("PIDFile="))
            .unwrap_or_else(|| panic!("{name}: no PIDFile= (psflip upgrade needs the pidfile)"))
            .to_owned();
        let udir = dir.join(name.trim_end_matches(".service"));
        fs::create_dir_all(&udir).unwrap();
        fs::copy(dir.join("child.sh"), udir.join("child.sh")).unwrap();
        nix_mkfifo(&udir.join("fifo"));
        let record = udir.join("record");
        let conf = udir.join("psflip.toml");
        fs::write(&conf, config(&udir, &record, &pidfile)).unwrap();
        fs::write(dir.join("units").join(&name), test_unit(&text, &conf)).unwrap();
        let needs_253 = text.lines().any(|l| l.trim() == "Type=notify-reload");
        plan.push((name, record, pidfile, conf, needs_253));
    }

    let sd = Systemd::boot(&dir);
    eprintln!("booted systemd {} (host pid {})", sd.version, sd.pid);
    let mut ran = 0;
    for (name, record, pidfile, conf, needs_253) in plan {
        if needs_253 && sd.version < 253 {
            eprintln!(
                "SKIPPED {name}: Type=notify-reload needs systemd 253 or later; this is systemd {}",
                sd.version
            );
            continue;
        }
        // Each unit as shipped, then with `[upgrade] standby = true`.
        for standby in [false, true] {
            eprintln!(
                "unit {name}{}",
                if standby { ", standby = true" } else { "" }
            );
            let text = config(conf.parent().unwrap(), &record, &pidfile);
            let text = if standby {
                text.replace("[upgrade]\n", "[upgrade]\nstandby = true\n")
            } else {
                text
            };
            fs::write(&conf, text).unwrap();
            // Each pass counts its own children's events.
            let _ = fs::remove_file(&record);
            Unit {
                sd: &sd,
                name: name.clone(),
                record: record.clone(),
                pidfile: pidfile.clone(),
                conf: conf.clone(),
                standby,
            }
            .run();
            ran += 1;
        }
    }
    assert!(ran > 0, "no shipped unit runs on systemd {}", sd.version);
    sd.shut_down();
}

/// Removes the test's directory, pass or fail (after systemd is down: declared
/// before it, dropped after it).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn nix_mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    let r = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(r, 0, "mkfifo {}", path.display());
    assert!(fs::metadata(path).unwrap().file_type().is_fifo());
}
