//! The machine's vocabulary: time, process names, settings, control requests and
//! replies. Plain data; nothing here decides anything.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Signal;

/// A point in time, measured from an origin the runtime chose (its start-up).
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
pub struct Instant(Duration);

impl Instant {
    /// The runtime's origin.
    pub const ZERO: Instant = Instant(Duration::ZERO);

    /// The instant `since_origin` after the origin.
    pub fn from_origin(since_origin: Duration) -> Instant {
        Instant(since_origin)
    }

    /// Time elapsed since the origin.
    pub fn since_origin(self) -> Duration {
        self.0
    }

    /// `self - earlier`, or zero when `earlier` is later.
    pub fn saturating_since(self, earlier: Instant) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

impl std::ops::Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, rhs: Duration) -> Instant {
        Instant(self.0.saturating_add(rhs))
    }
}

/// A process this machine started, named independently of its (recyclable) pid.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProcId(pub u64);

impl fmt::Display for ProcId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// What a spawned process is for; the runtime knows how to build each from the config.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// The supervised application (`cmd`): own process group, empty signal mask,
    /// default dispositions, `PR_SET_PDEATHSIG(SIGKILL)`.
    App,
    /// The next generation: psflip's own binary, re-executed with the readiness pipe.
    Successor,
    /// One run of the healthcheck's probe: the `[healthcheck.command]` command, or
    /// psflip's own `__probe` for a tcp/http check, which gives up after `timeout`
    /// (the machine kills any probe still running after `interval`).
    Probe { kind: ProbeKind, timeout: Duration },
}

/// What a healthcheck probe run does; the runtime knows the details from the config.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProbeKind {
    /// Runs `[healthcheck.command]`'s command.
    Command,
    /// Connects to `[healthcheck.tcp]`'s address.
    Tcp,
    /// Asks `[healthcheck.http]`'s URL.
    Http,
}

impl ProbeKind {
    /// How long one run may take before it gives up on its own: a command is
    /// only bounded by the machine's kill at `interval`; psflip's own tcp/http
    /// probe gets a little less ([`probe_timeout`]), so that it says why it failed.
    pub fn timeout(self, interval: Duration) -> Duration {
        match self {
            ProbeKind::Command => interval,
            ProbeKind::Tcp | ProbeKind::Http => probe_timeout(interval),
        }
    }
}

/// The timeout a tcp/http probe gets for an `interval`: shorter by a fifth, by
/// 100 ms at most, so that its own deadline (and a reason such as "connection timed
/// out") comes before the machine's SIGKILL at `interval`, process start-up
/// included.
pub fn probe_timeout(interval: Duration) -> Duration {
    interval - (interval / 5).min(Duration::from_millis(100))
}

/// How a process ended.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal number.
    Signaled(i32),
}

impl ExitStatus {
    /// The status a shell would report: the code, or 128 + the signal number.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signaled(s) => 128 + s,
        }
    }

    /// Whether it exited with code 0.
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signaled(s) => match Signal::try_from(s) {
                Ok(sig) => write!(f, "signal {}", sig.as_str()),
                Err(_) => write!(f, "signal {s}"),
            },
        }
    }
}

/// Which generation this machine is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generation {
    /// Started by the operator (or a service manager): becomes the service once its
    /// child is healthy.
    First,
    /// Started by a running psflip as its successor: must report ready to it.
    Successor,
}

/// How the child proves it is healthy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Healthy once the child has been running for `timeout`.
    Alive { timeout: Duration },
    /// Healthy once a run of the probe exits 0. First run `after` the spawn,
    /// then one every `interval`; never two at once; a run still going after
    /// `interval` is killed.
    Command {
        kind: ProbeKind,
        after: Duration,
        interval: Duration,
    },
    /// `[healthcheck.notify]`: healthy once `READY=1` arrives on the child's own
    /// notify socket ([`Event::ChildNotified`](super::Event::ChildNotified)).
    Notify,
    /// `[healthcheck.docker]`: healthy once the Docker engine reports the container
    /// healthy. One inspection at the spawn, then one every `interval`; never two at
    /// once; one without an answer after `interval` is abandoned. A container that
    /// has stopped, is unhealthy or has no HEALTHCHECK fails the child at once, and
    /// a child that never became healthy is stopped with `shutdown.signal` (a
    /// `docker run` client passes it on to its container) before SIGKILL.
    Docker { interval: Duration },
}

/// What the Docker engine said about the container (`[healthcheck.docker]`), as
/// read by the runtime; what it means is decided here.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Inspection {
    /// The container exists: its `State.Status` (`created`, `running`, `exited`,
    /// `dead`…), `State.Health.Status` (`starting`, `healthy`, `unhealthy`;
    /// `None` until a container with a health check has started), and whether
    /// it has a health check at all (`Config.Healthcheck`, its own or its
    /// image's, other than `NONE`).
    Found {
        status: String,
        health: Option<String>,
        healthcheck: bool,
    },
    /// No such container (yet).
    Missing,
    /// The engine could not be asked, or gave no usable answer: why.
    Failed(String),
}

/// Everything the machine needs from the configuration: pure data.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub generation: Generation,
    #[serde(with = "super::signal_name")]
    pub upgrade_signal: Signal,
    /// The child must be healthy within this, counted from its spawn.
    pub upgrade_timeout: Duration,
    pub shutdown_delay: Duration,
    #[serde(with = "super::signal_name")]
    pub shutdown_signal: Signal,
    pub shutdown_timeout: Duration,
    pub health: Health,
    /// Whether a pidfile is configured.
    pub pidfile: bool,
}

/// How long past `upgrade.timeout` the old generation waits for a successor that
/// neither reports ready nor exits before it kills it (SPEC §5): the successor's
/// own timer should fire first, this only catches a hung successor.
pub const SUCCESSOR_GRACE: Duration = Duration::from_secs(5);

/// A client of the control socket (`psflip upgrade`, `psflip status`), named by
/// the runtime.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientId(pub u64);

/// What a control client asks.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Upgrade, and answer with the outcome once it is known.
    Upgrade,
    /// Describe this generation.
    Status,
}

/// The answer to a control client.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The upgrade this client asked for is done: the successor took over.
    Upgraded {
        successor: ProcId,
    },
    /// The upgrade was tried and failed; the old generation carries on.
    UpgradeFailed(String),
    /// No upgrade was started.
    UpgradeRefused(String),
    Status(Status),
}

/// What the machine knows of its generation, for `psflip status`; the runtime
/// adds pids, the generation number and the uptime.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// `starting`, `serving`, `upgrading`, `aborting`, `stopping`.
    pub phase: &'static str,
    pub child: Option<ProcId>,
    pub child_healthy: bool,
    pub upgrade_in_flight: bool,
    /// `succeeded`, `failed: <why>`, or `None` when none was tried here.
    pub last_upgrade: Option<String>,
}

/// A message to the service manager (sd_notify), when psflip runs under one that
/// listens (`$NOTIFY_SOCKET`): systemd's `Type=notify` / `Type=notify-reload`.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub enum Notify {
    /// `READY=1`, with a `STATUS=` line: the service is up (again).
    Ready { status: String },
    /// `RELOADING=1` with `MONOTONIC_USEC=` (the runtime reads the clock): an
    /// upgrade started.
    Reloading,
    /// `MAINPID=<this psflip's pid>` and `READY=1` in one datagram: this
    /// generation is the service now.
    MainPid,
}

/// How long a successor that gives up (a termination signal before it took over)
/// lets its never-ready child stop before SIGKILL to its group, at most: well
/// within [`SUCCESSOR_GRACE`], so the old generation never has to kill the
/// successor itself (which would orphan the child's background jobs).
pub const GIVE_UP_GRACE: Duration = Duration::from_secs(2);
