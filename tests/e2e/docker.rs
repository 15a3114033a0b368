//! `[healthcheck.docker]` against a real Docker engine: a private `dockerd` (own
//! socket, data root, exec root and cgroup parent; no bridge, no iptables), a
//! busybox image imported from Debian's `busybox-static` (no registry is
//! reachable), containers with a `--health-cmd`. Every fact checked comes from
//! the engine through Debian's own client (`/usr/bin/docker`), never from psflip.
//!
//! One test runs every scenario in turn on one engine (it takes a few seconds to
//! start), then tears everything down — containers, the daemon by its pid, its
//! mounts and cgroups, and the files it writes outside its directories
//! (`/etc/docker/key.json`, `/run/docker`, `/run/containerd`) if it created them —
//! and checks that nothing is left.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::util::*;

const DOCKER: &str = "/usr/bin/docker";
const DOCKERD: &str = "/usr/sbin/dockerd";
const IMAGE: &str = "psflip-busybox:e2e";
const SLOW: Duration = Duration::from_secs(30);

/// A private Docker engine.
struct Engine {
    dir: PathBuf,
    sock: PathBuf,
    daemon: Option<Child>,
    cgroup: String,
    /// Files and directories outside `dir` the daemon creates, which did not
    /// exist before it started: removed at the end.
    created: Vec<PathBuf>,
}

const OUTSIDE: [&str; 3] = ["/etc/docker/key.json", "/run/docker", "/run/containerd"];

impl Engine {
    fn start() -> Engine {
        let id = format!("psflip-e2e-docker-{}", std::process::id());
        let dir = std::env::temp_dir().join(&id);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("docker.sock");
        let created = OUTSIDE
            .iter()
            .map(PathBuf::from)
            .filter(|p| !p.exists())
            .collect();
        let log = fs::File::create(dir.join("dockerd.log")).unwrap();
        let daemon = Command::new(DOCKERD)
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("-H")
            .arg(format!("unix://{}", sock.display()))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--ip-forward=false",
                "--ip-masq=false",
                "--bridge=none",
                "--userland-proxy=false",
                "--storage-driver=overlay2",
            ])
            .arg(format!("--cgroup-parent=/{id}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {DOCKERD} (apt-get install docker.io): {e}"));
        let engine = Engine {
            dir,
            sock,
            daemon: Some(daemon),
            cgroup: id,
            created,
        };
        let up = wait_until(SLOW, || engine.docker(&["version"]).status.success());
        assert!(up, "dockerd did not come up:\n{}", engine.daemon_log());
        engine.import_busybox();
        engine
    }

    fn daemon_log(&self) -> String {
        fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    fn host(&self) -> String {
        format!("unix://{}", self.sock.display())
    }

    fn docker(&self, args: &[&str]) -> std::process::Output {
        Command::new(DOCKER)
            .arg("-H")
            .arg(self.host())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run the docker client")
    }

    /// An image with busybox-static and one link per applet, and a /tmp.
    fn import_busybox(&self) {
        let root = self.dir.join("image");
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::create_dir_all(root.join("tmp")).unwrap();
        fs::copy("/bin/busybox", root.join("bin/busybox"))
            .expect("/bin/busybox (apt-get install busybox-static)");
        let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if applet != "busybox" {
                let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
            }
        }
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "chmod 1777 tmp && tar -c . | {DOCKER} -H {} import - {IMAGE} >/dev/null",
                self.host()
            ))
            .current_dir(&root)
            .status()
            .unwrap();
        assert!(status.success(), "docker import failed");
    }

    /// `(id, state, health)` of a container, `None` once it is gone.
    fn inspect(&self, name: &str) -> Option<(String, String, String)> {
        let out = self.docker(&[
            "inspect",
            "--format",
            "{{.Id}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}",
            name,
        ]);
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut it = text.split_whitespace().map(str::to_owned);
        Some((it.next()?, it.next()?, it.next()?))
    }

    fn containers(&self) -> Vec<String> {
        let out = self.docker(&["ps", "-aq"]);
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    /// Everything down; returns what could not be cleaned up.
    fn stop(&mut self) -> Vec<String> {
        let mut left = Vec::new();
        let Some(mut daemon) = self.daemon.take() else {
            return left;
        };
        for id in self.containers() {
            self.docker(&["rm", "-f", &id]);
        }
        let pid = daemon.id() as i32;
        signal(pid, Signal::SIGTERM);
        if !wait_until(SLOW, || matches!(daemon.try_wait(), Ok(Some(_)))) {
            left.push(format!("dockerd {pid} ignored SIGTERM"));
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
        // Its containerd and shims stop with it; anything still naming our
        // directory is a leak.
        let dir = self.dir.to_string_lossy().into_owned();
        let ours = || -> Vec<i32> {
            all_pids()
                .into_iter()
                .filter(|p| {
                    fs::read(format!("/proc/{p}/cmdline"))
                        .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&dir))
                })
                .collect()
        };
        if !wait_until(Duration::from_secs(10), || ours().is_empty()) {
            for p in ours() {
                left.push(format!("process {p} ({}) outlived dockerd", comm(p)));
                signal(p, Signal::SIGKILL);
            }
        }
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for line in mounts.lines().filter(|l| l.contains(&dir)) {
            left.push(format!("mount left: {line}"));
            if let Some(point) = line.split(' ').nth(4) {
                let _ = Command::new("umount").args(["-l", point]).status();
            }
        }
        for hierarchy in fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let cg = hierarchy.path().join(&self.cgroup);
            if cg.exists() && remove_cgroup(&cg).is_err() {
                left.push(format!("cgroup left: {}", cg.display()));
            }
        }
        for path in &self.created {
            let _ = if path.is_dir() {
                fs::remove_dir_all(path)
            } else {
                fs::remove_file(path)
            };
            if path.exists() {
                left.push(format!("{} left", path.display()));
            }
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            left.push(format!("cannot remove {}: {e}", self.dir.display()));
        }
        left
    }
}

/// rmdir a cgroup, deepest first (empty cgroups only: a process in it stays).
fn remove_cgroup(dir: &Path) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)?.flatten() {
        if entry.file_type()?.is_dir() {
            remove_cgroup(&entry.path())?;
        }
    }
    fs::remove_dir(dir)
}

impl Drop for Engine {
    fn drop(&mut self) {
        let left = self.stop();
        if !left.is_empty() {
            eprintln!("docker e2e: teardown left: {left:?}");
        }
    }
}

/// The container each generation runs: healthy once it has created /tmp/ok; a
/// `trap` so that SIGTERM (passed on by the client) stops it.
const SERVE: &str = "trap 'exit 0' TERM; while :; do sleep 1 & wait; done";

fn run(flags: &str, script: &str) -> String {
    format!(
        "exec \"$DOCKER\" run --rm --name \"$NAME\" --network none {flags} \"$IMAGE\" sh -c \"{script}\""
    )
}

fn healthy_run() -> String {
    run(
        "--health-cmd 'test -f /tmp/ok' --health-interval 200ms --health-retries 2",
        &format!("touch /tmp/ok; {SERVE}"),
    )
}

fn conf(sb: &Sandbox, engine: &Engine, socket: &str) -> Conf {
    let mut conf = Conf::cmd(sb, &["sh", "-c", "{{ Cat \"run.sh\" }}"])
        .env("DOCKER", DOCKER)
        .env("DOCKER_HOST", &engine.host())
        .env("IMAGE", IMAGE)
        .env("NAME", "app-{{ BlueGreen }}");
    conf.upgrade_timeout = "20s".into();
    conf.shutdown_timeout = "5s".into();
    conf.health = format!(
        "[healthcheck.docker]\ncontainer = \"app-{{{{ BlueGreen }}}}\"\nsocket = {}\ninterval = \"200ms\"\n",
        q(socket)
    );
    conf
}

/// An upgrade of `p` whose new container fails: rolled back, `reason` logged by
/// the successor, the old container untouched, the new one stopped (or, kept by
/// a wrapper, exited). Returns the successor's pid.
fn failed_upgrade(
    sb: &Sandbox,
    engine: &Engine,
    (p, c1, blue): (&mut Psflip, i32, &str),
    run_sh: &str,
    reason: &str,
) {
    sb.write("run.sh", run_sh);
    let before = sb.started_by(p.pid, "successor").len();
    signal(p.pid, Signal::SIGHUP);
    let s = sb.wait_for(T, "a successor", || {
        sb.started_by(p.pid, "successor").get(before).copied()
    });
    sb.must_die(s, "the failed successor");
    assert!(sb.logged(s, reason), "{reason:?} not logged\n{}", sb.diag());
    sb.must_log(p.pid, "upgrade failed");
    // The old child and its container are as they were.
    assert!(p.running());
    sb.assert_alive(c1, "the old docker client");
    sb.must_name(p.pid);
    let (id, state, health) = engine.inspect("app-blue").expect("app-blue exists");
    assert_eq!(
        (&id[..], &state[..], &health[..]),
        (blue, "running", "healthy")
    );
}

/// Wait until the container `name` is gone (stopped and removed).
fn must_be_gone(sb: &Sandbox, engine: &Engine, name: &str, what: &str) {
    sb.must(T, what, || engine.inspect(name).is_none());
}

#[test]
fn docker_healthcheck_against_a_real_engine() {
    // Like tests/systemd: root and Debian's docker.io are needed; elsewhere the
    // test says loudly that it did not run, and under CI (`CI=true`) it fails.
    let missing = if nix::unistd::geteuid().as_raw() != 0 {
        Some("not root")
    } else if !Path::new(DOCKERD).exists() || !Path::new("/bin/busybox").exists() {
        Some("docker.io or busybox-static not installed")
    } else {
        None
    };
    if let Some(why) = missing {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the docker e2e cannot run under CI: {why}"
        );
        eprintln!("SKIPPED: docker e2e did not run: {why}");
        return;
    }
    let sb = Sandbox::with_deadline(
        "docker_healthcheck_against_a_real_engine",
        Duration::from_secs(240),
    );
    let mut engine = Engine::start();
    let host = engine.host();

    // Healthy: the first generation serves once its container is.
    sb.write("run.sh", &healthy_run());
    sb.config(&conf(&sb, &engine, &host));
    let mut p = sb.start();
    sb.must(SLOW, "psflip serves", || sb.read_pidfile() == Some(p.pid));
    let c1 = sb.child_of(p.pid);
    sb.must_log(p.pid, "container app-blue is healthy");
    let (blue, state, health) = engine.inspect("app-blue").expect("app-blue runs");
    assert_eq!((&state[..], &health[..]), ("running", "healthy"));

    // Unhealthy: rolled back at once, and the new container stopped (--rm).
    failed_upgrade(
        &sb,
        &engine,
        (&mut p, c1, &blue),
        &run(
            "--health-cmd 'test -f /tmp/ok' --health-interval 200ms --health-retries 1",
            SERVE,
        ),
        "docker healthcheck failed: container app-green is unhealthy",
    );
    must_be_gone(
        &sb,
        &engine,
        "app-green",
        "the unhealthy container is stopped",
    );

    // Exits: a wrapper keeps running while its container has exited.
    failed_upgrade(
        &sb,
        &engine,
        (&mut p, c1, &blue),
        "\"$DOCKER\" run --name \"$NAME\" --network none --health-cmd 'test -f /tmp/ok' \
         --health-interval 10s \"$IMAGE\" sh -c 'sleep 0.5; exit 3'; exec sleep 1000",
        "container app-green has stopped (exited)",
    );
    let (_, state, _) = engine.inspect("app-green").expect("kept by its wrapper");
    assert_eq!(state, "exited");
    engine.docker(&["rm", "-f", "app-green"]);

    // No HEALTHCHECK: an error naming the container; the container is stopped.
    failed_upgrade(
        &sb,
        &engine,
        (&mut p, c1, &blue),
        &run("", SERVE),
        "container app-green has no HEALTHCHECK",
    );
    must_be_gone(
        &sb,
        &engine,
        "app-green",
        "the container without a healthcheck is stopped",
    );

    // Late: the container appears 2 s after the client starts: still healthy in
    // time, the handover happens, and the old container is stopped.
    sb.write("run.sh", &format!("sleep 2; {}", healthy_run()));
    let s = sb.upgrade(p.pid);
    assert!(
        sb.logged(s, "container app-green does not exist (yet)"),
        "{}",
        sb.diag()
    );
    sb.must_log(s, "container app-green is healthy");
    assert_eq!(sb.wait_exit(&mut p, T), 0);
    must_be_gone(&sb, &engine, "app-blue", "the old container is stopped");
    let (_, state, health) = engine.inspect("app-green").expect("app-green runs");
    assert_eq!((&state[..], &health[..]), ("running", "healthy"));
    signal(s, Signal::SIGTERM);
    sb.must_die(s, "the new psflip");
    must_be_gone(&sb, &engine, "app-green", "the last container is stopped");
    sb.assert_clean();

    // The engine's socket missing: a clear error at upgrade.timeout, and the
    // container the child started is stopped all the same.
    let sb2 = Sandbox::with_deadline("docker_socket_missing", Duration::from_secs(60));
    let missing = engine.dir.join("missing.sock");
    let mut c = conf(&sb2, &engine, &format!("unix://{}", missing.display()));
    c.upgrade_timeout = "3s".into();
    sb2.write("run.sh", &healthy_run());
    sb2.config(&c);
    let mut p = sb2.start();
    assert_eq!(sb2.wait_exit(&mut p, SLOW), 1, "{}", sb2.diag());
    let expected = format!(
        "last check: cannot reach the Docker engine at unix://{}: no such file or directory",
        missing.display()
    );
    assert!(sb2.logged(p.pid, &expected), "{expected:?}\n{}", sb2.diag());
    must_be_gone(&sb2, &engine, "app-blue", "its container is stopped");
    sb2.assert_clean();

    run_the_example(&engine);

    let left = engine.stop();
    assert!(left.is_empty(), "teardown left: {left:?}");
}

/// `examples/docker.toml` as its header says, from the repository's root, on the
/// private engine (`DOCKER_HOST`) with the imported image (`IMAGE`): serves,
/// upgrades (the old container goes, the new one is healthy), stops on Ctrl-C
/// with its container.
fn run_the_example(engine: &Engine) {
    let sb = Sandbox::with_deadline("docker_example", Duration::from_secs(90));
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = sb.psflip_cmd(&["-c", "examples/docker.toml"]);
    cmd.current_dir(repo)
        .env("DOCKER_HOST", engine.host())
        .env("IMAGE", IMAGE)
        // Debian's client, the one the engine comes with.
        .env(
            "PATH",
            format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default()),
        );
    let mut p = sb.spawn(cmd);
    sb.must(SLOW, "the example serves", || {
        sb.logged(p.pid, "child is healthy; serving")
    });
    let (blue, _, health) = engine.inspect("app-blue").expect("app-blue runs");
    assert_eq!(health, "healthy");
    signal(p.pid, Signal::SIGHUP);
    let s = sb.successor_of(p.pid);
    sb.must(SLOW, "the successor takes over", || {
        sb.logged(s, "taking over")
    });
    assert_eq!(sb.wait_exit(&mut p, SLOW), 0, "{}", sb.diag());
    sb.must(SLOW, "the old container is stopped", || {
        engine.inspect(&blue).is_none()
    });
    let (_, state, health) = engine.inspect("app-green").expect("app-green runs");
    assert_eq!((&state[..], &health[..]), ("running", "healthy"));
    signal(s, Signal::SIGINT);
    sb.must(SLOW, "psflip stops on Ctrl-C", || !alive(s));
    sb.must(SLOW, "its container is stopped", || {
        engine.inspect("app-green").is_none()
    });
    sb.assert_clean();
}
