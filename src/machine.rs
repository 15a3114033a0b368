//! The pure heart of psflip: one generation's supervision and upgrade protocol as a
//! transition function.
//!
//! The contract between this module and the runtime (`src/runtime.rs`):
//!
//! 1. The runtime builds a [`Machine`] from [`Settings`] and calls
//!    [`Machine::step`]`(now, Event::Started)` once the configuration is loaded.
//! 2. Every OS happening becomes an [`Event`] (a signal read from the signalfd, a
//!    reaped process, a byte on the readiness pipe, the answer to an effect that can
//!    fail) and goes through `step`, with `now` read from the monotonic clock once per
//!    event. `step` returns the [`Effect`]s to carry out, in order.
//! 3. The runtime carries out each effect. Effects that can fail report back:
//!    a failed [`Effect::Spawn`] as [`Event::SpawnFailed`], [`Effect::WritePidfile`] as
//!    [`Event::PidfileWritten`] or [`Event::PidfileFailed`], [`Effect::InspectContainer`]
//!    as [`Event::ContainerInspected`] (unless [`Effect::AbandonInspection`] came
//!    first). Nothing else is decided by the runtime.
//! 4. The runtime asks [`Machine::deadline`] for the next instant something is due and
//!    delivers [`Event::Tick`] when it has passed. A tick when nothing is due is a
//!    no-op, so a spurious wake-up is harmless.
//! 5. Processes are named by [`ProcId`]s the machine allocates. The runtime keeps the
//!    id↔pid table, reports a process's exit *before* it reaps it (so a group kill
//!    emitted in answer to the exit cannot reach a recycled pid) and forgets the pid
//!    once reaped.
//! 6. After [`Effect::Exit`] the machine is done: every later event is ignored.
//! 7. With a proxy ([`Machine::with_proxy`]), the listeners are open before `Started`
//!    and nobody accepts on them until [`Effect::ProxyAccept`] (this generation's child
//!    is healthy). [`Effect::ProxyStopAccepting`] hands the accepting over to the
//!    successor; the runtime answers with [`Event::ProxyDrained`] once this
//!    generation's proxied connections have all closed (at once if there are none).
//! 8. With `[healthcheck.notify]`, each app child gets a notify socket of its own;
//!    what arrives on it becomes [`Event::ChildNotified`] (read before the child's
//!    exit is reported, so a READY=1 sent just before dying still counts).
//!

//! There is no I/O, no clock and no OS call here: time is data ([`Instant`]), so the
//! simulation in `tests/sim` can drive this exact code through any interleaving.

use std::fmt;
use std::time::Duration;

use crate::Signal;

/// A point in time, measured from an origin the runtime chose (its start-up).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProcId(pub u64);

impl fmt::Display for ProcId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// What a spawned process is for; the runtime knows how to build each from the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// The supervised application (`cmd`): own process group, empty signal mask,
    /// default dispositions, `PR_SET_PDEATHSIG(SIGKILL)`.
    App,
    /// The next generation: psflip's own binary, re-executed with the readiness pipe.
    Successor,
    /// One run of the `[healthcheck.command]` command.
    Probe,
}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generation {
    /// Started by the operator (or a service manager): becomes the service once its
    /// child is healthy.
    First,
    /// Started by a running psflip as its successor: must report ready to it.
    Successor,
}

/// How the child proves it is healthy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Healthy once the child has been running for `timeout`.
    Alive { timeout: Duration },
    /// Healthy once a run of the probe command exits 0. First run `after` the spawn,
    /// then one every `interval`; never two at once; a run still going after
    /// `interval` is killed.
    Command { after: Duration, interval: Duration },
    /// `[healthcheck.notify]`: healthy once `READY=1` arrives on the child's own
    /// notify socket ([`Event::ChildNotified`]).
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
#[derive(Clone, Debug, PartialEq, Eq)]
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub generation: Generation,
    pub upgrade_signal: Signal,
    /// The child must be healthy within this, counted from its spawn.
    pub upgrade_timeout: Duration,
    pub shutdown_delay: Duration,
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientId(pub u64);

/// What a control client asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Upgrade, and answer with the outcome once it is known.
    Upgrade,
    /// Describe this generation.
    Status,
}

/// The answer to a control client.
#[derive(Clone, Debug, PartialEq, Eq)]
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
#[derive(Clone, Debug, PartialEq, Eq)]
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
#[derive(Clone, Debug, PartialEq, Eq)]
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

/// Why an upgrade signal is ignored while an upgrade is in flight (a control
/// client asking then waits for the outcome of that upgrade instead).
const UPGRADE_IN_FLIGHT: &str = "an upgrade is already in flight";

/// How long a successor that gives up (a termination signal before it took over)
/// lets its never-ready child stop before SIGKILL to its group, at most: well
/// within [`SUCCESSOR_GRACE`], so the old generation never has to kill the
/// successor itself (which would orphan the child's background jobs).
pub const GIVE_UP_GRACE: Duration = Duration::from_secs(2);

/// Something that happened, reported by the runtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The configuration is loaded and the event loop runs: start the child.
    Started,
    /// psflip received this signal (never SIGCHLD: reaping produces `ProcessExited`).
    SignalReceived(Signal),
    /// (Successor) the previous generation sent us this termination signal: it was
    /// told to terminate mid-upgrade and aborts the upgrade. The runtime tells it
    /// apart from an operator's signal by the sender's pid.
    AbortRequested(Signal),
    /// psflip received this real-time signal (SIGRTMIN…SIGRTMAX), which
    /// [`Signal`] cannot name: it is forwarded to the child like any other.
    RealtimeSignalReceived(i32),
    /// A process this machine started has exited (it is not reaped yet).
    ProcessExited { id: ProcId, status: ExitStatus },
    /// `Effect::Spawn` for this id failed; the process never ran.
    SpawnFailed { id: ProcId, reason: String },
    /// A control client asked something.
    ControlRequest { client: ClientId, request: Request },
    /// The successor said why it gives up (it exits next).
    SuccessorFailed { id: ProcId, reason: String },
    /// The successor reported, over the readiness pipe, that its child is healthy and
    /// the pidfile names it.
    SuccessorReady { id: ProcId },
    /// (Successor only) the generation that started us has exited.
    PredecessorExited,
    /// `Effect::WritePidfile` succeeded.
    PidfileWritten,
    /// `Effect::WritePidfile` failed.
    PidfileFailed { reason: String },
    /// After `Effect::ProxyStopAccepting`: every connection this generation's proxy
    /// accepted has closed.
    ProxyDrained,
    /// (`[healthcheck.notify]`) a datagram arrived on the notify socket of the child
    /// `id`: whether it said `READY=1`, and its `STATUS=` text if any.
    ChildNotified {
        id: ProcId,
        ready: bool,
        status: Option<String>,
    },
    /// (`[healthcheck.docker]`) the answer to `Effect::InspectContainer`.
    ContainerInspected {
        container: String,
        inspection: Inspection,
    },
    /// Time has passed; whatever is due at `now` happens.
    Tick,
}

/// Something the runtime must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Start a process in this role; answer with `SpawnFailed` if it cannot start.
    Spawn { id: ProcId, role: Role },
    /// Send a signal to the process (or, with `group`, to the process group it leads).
    /// A process already gone is not an error.
    Signal {
        id: ProcId,
        signal: Signal,
        group: bool,
    },
    /// Send the real-time signal `signo` to the process.
    SignalRealtime { id: ProcId, signo: i32 },
    /// Atomically write psflip's own pid to the pidfile; answer with `PidfileWritten`
    /// or `PidfileFailed`.
    WritePidfile,
    /// Remove the pidfile if it still names this psflip, or this psflip's last
    /// successor once that has exited (an upgrade aborted just as the successor
    /// wrote it). Never a live process's pidfile.
    RemovePidfile,
    /// (Successor only) tell the old generation we are ready.
    ReportReady,
    /// (Successor only) tell the old generation why we give up, before exiting.
    ReportFailure(String),
    /// Answer a control client and close its connection.
    Reply { client: ClientId, reply: Reply },
    /// Tell the service manager, if one listens.
    Notify(Notify),
    /// Start accepting connections on the proxy listeners (this generation's child is
    /// healthy; for a successor, right before it reports ready).
    ProxyAccept,
    /// Stop accepting on the proxy listeners (the successor accepts now) and let the
    /// open connections finish; answer with `ProxyDrained` once they have all closed.
    ProxyStopAccepting,
    /// Remove the Unix socket files of the proxy listeners and of the `[[listen]]`
    /// sockets: the service stops for good (this generation was the service and
    /// exits without having handed over).
    RemoveProxySockets,
    /// (`[healthcheck.docker]`) ask the Docker engine for the container's state;
    /// answer with `ContainerInspected`. Never two in flight.
    InspectContainer,
    /// Give up the inspection in flight: no `ContainerInspected` follows for it.
    AbandonInspection,
    /// Write a line to psflip's log (stderr) unless `quiet`.
    Log(String),
    /// Exit psflip with this status.
    Exit(i32),
}

/// The phases of one generation. The child and the health probe are tracked beside
/// the phase, since they can end in any of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for `Started`.
    Booting,
    /// The child runs and has not proven healthy yet (or the pidfile is being
    /// written once it has).
    Starting,
    /// The child is healthy and this generation is the service.
    Serving,
    /// A successor runs and has not reported ready.
    Upgrading {
        successor: ProcId,
        /// When the successor is killed if it has neither reported ready nor exited.
        kill_at: Instant,
        killed: bool,
    },
    /// A termination signal arrived mid-upgrade: it was passed to the successor and
    /// to the child; waiting for both to be gone.
    Aborting {
        successor: Option<ProcId>,
        kill_at: Instant,
        killed: bool,
    },
    /// Stopping the child, then exiting with `code`: after a successful handoff
    /// (code 0), or because the child never became healthy.
    Stopping {
        code: i32,
        /// When `shutdown.signal` is due (`None` once sent).
        signal_at: Option<Instant>,
        /// When SIGKILL to the child's group is due (`None` until the signal is sent,
        /// and once SIGKILL is sent).
        kill_at: Option<Instant>,
    },
    /// `Exit` was emitted.
    Done,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Child {
    id: ProcId,
    spawned_at: Instant,
    /// `None` while it runs.
    exited: Option<ExitStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Probe {
    /// The run in progress, if any, and whether it was already killed.
    running: Option<(ProcId, bool)>,
    /// (`[healthcheck.docker]`) an inspection is in flight, abandoned at this instant.
    inspecting: Option<Instant>,
    /// When the running probe is killed.
    kill_at: Option<Instant>,
    /// When the next run may start.
    next_at: Option<Instant>,
}

/// One generation of psflip. See the module documentation for the contract.
#[derive(Clone, Debug)]
pub struct Machine {
    settings: Settings,
    phase: Phase,
    next_id: u64,
    child: Option<Child>,
    /// The child passed its healthcheck.
    healthy: bool,
    probe: Probe,
    /// (First generation) an upgrade was asked for before the child was healthy.
    upgrade_pending: bool,
    /// (Successor) the generation that started us still runs.
    predecessor_alive: bool,
    /// The successor reported ready: the service is its now.
    handed_over: bool,
    /// (Successor) a termination signal arrived before we took over: we never will.
    gave_up: bool,
    /// We sent SIGKILL to the child (its exit status is ours, not its own).
    killed_child: bool,
    /// The successor we handed the service over to.
    handed_to: Option<ProcId>,
    /// Control clients waiting for the outcome of the upgrade they asked for.
    waiters: Vec<ClientId>,
    /// The outcome of the last upgrade this generation tried (or, in a successor,
    /// of the one that made it).
    last_upgrade: Option<String>,
    /// Why the successor in flight gives up, if it said so.
    successor_failure: Option<String>,
    /// (Successor) why we give up, for the old generation.
    failure: Option<String>,
    /// How long the child has to become healthy: `upgrade.timeout`, bounded (in a
    /// successor) by the predecessor's, which kills us after its own + grace.
    child_timeout: Duration,
    /// `[[proxy]]` is configured (see contract step 7).
    proxy: bool,
    /// `[[listen]]` sockets are configured: their files go when the service stops.
    listen: bool,
    /// (`[healthcheck.docker]`) why the last inspection did not make the child
    /// healthy, for the failure reason at `upgrade.timeout`.
    last_check: Option<String>,
    /// (Successor) we reported ready: we are the service.
    reported_ready: bool,
    /// After the handover, the proxy reported its connections all closed.
    proxy_drained: bool,
    /// After the handover with a proxy, the latest instant to exit at while proxied
    /// connections stay open: `shutdown.delay + shutdown.timeout` after it (I4).
    drain_until: Option<Instant>,
    /// The termination signal (SIGTERM, SIGINT, SIGQUIT) psflip last received and
    /// passed on to its child: a child that dies of it stopped as it was asked to,
    /// and psflip exits 0 (see [`Machine::relayed`]).
    stop_signal: Option<Signal>,
    /// After the handover, a termination signal reached us and was passed on to
    /// the new generation: the service stops, nothing is taken back.
    service_stopping: bool,
}

impl Machine {
    pub fn new(settings: Settings) -> Machine {
        let predecessor_alive = settings.generation == Generation::Successor;
        let child_timeout = settings.upgrade_timeout;
        Machine {
            settings,
            phase: Phase::Booting,
            next_id: 0,
            child: None,
            healthy: false,
            probe: Probe::default(),
            upgrade_pending: false,
            predecessor_alive,
            handed_over: false,
            gave_up: false,
            killed_child: false,
            handed_to: None,
            waiters: Vec::new(),
            last_upgrade: None,
            successor_failure: None,
            failure: None,
            child_timeout,
            proxy: false,
            listen: false,
            last_check: None,
            reported_ready: false,
            proxy_drained: false,
            drain_until: None,
            stop_signal: None,
            service_stopping: false,
        }
    }

    /// The same machine, with a `[[proxy]]` (see contract step 7) or without.
    pub fn with_proxy(mut self, proxy: bool) -> Machine {
        self.proxy = proxy;
        self
    }

    /// (Successor) the predecessor's `upgrade.timeout`: it kills us once that plus
    /// [`SUCCESSOR_GRACE`] has passed, so our child must be healthy within it even
    /// when our (re-read) configuration allows longer. Giving up first lets us kill
    /// the new child's whole group and say why, instead of being SIGKILLed.
    pub fn with_predecessor_timeout(mut self, predecessor_upgrade_timeout: Duration) -> Machine {
        self.child_timeout = self.child_timeout.min(predecessor_upgrade_timeout);
        self
    }

    /// The same machine, with `[[listen]]` sockets or without: their Unix socket
    /// files are removed when the service stops for good, as the proxy's are.
    pub fn with_listen(mut self, listen: bool) -> Machine {
        self.listen = listen;
        self
    }

    /// Whether a `[[proxy]]` is configured.
    pub fn proxy(&self) -> bool {
        self.proxy
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// The app child's id, while it has not been reported exited.
    pub fn live_child(&self) -> Option<ProcId> {
        self.child
            .as_ref()
            .filter(|c| c.exited.is_none())
            .map(|c| c.id)
    }

    /// Whether the child has passed its healthcheck.
    pub fn healthy(&self) -> bool {
        self.healthy
    }

    /// The successor in flight, if any.
    pub fn successor(&self) -> Option<ProcId> {
        match self.phase {
            Phase::Upgrading { successor, .. } => Some(successor),
            Phase::Aborting { successor, .. } => successor,
            _ => None,
        }
    }

    /// Whether an upgrade started by this generation is in flight.
    pub fn upgrading(&self) -> bool {
        matches!(self.phase, Phase::Upgrading { .. } | Phase::Aborting { .. })
    }

    /// Whether this generation has handed the service over and is stopping its child.
    pub fn handed_over(&self) -> bool {
        self.handed_over
    }

    /// The next instant at which a `Tick` has something to do.
    pub fn deadline(&self) -> Option<Instant> {
        let mut due: Option<Instant> = None;
        let mut at = |t: Option<Instant>| {
            if let Some(t) = t {
                due = Some(due.map_or(t, |d| d.min(t)));
            }
        };
        match &self.phase {
            Phase::Starting => {
                if let Some(child) = self.child.as_ref().filter(|c| c.exited.is_none())
                    && !self.healthy
                {
                    at(Some(child.spawned_at + self.child_timeout));
                    match self.settings.health {
                        Health::Alive { timeout } => at(Some(child.spawned_at + timeout)),
                        Health::Command { .. } => match self.probe.running {
                            Some((_, false)) => at(self.probe.kill_at),
                            Some((_, true)) => {}
                            None => at(self.probe.next_at),
                        },
                        Health::Notify => {}
                        Health::Docker { .. } => match self.probe.inspecting {
                            Some(abandon_at) => at(Some(abandon_at)),
                            None => at(self.probe.next_at),
                        },
                    }
                }
            }
            Phase::Upgrading {
                kill_at, killed, ..
            }
            | Phase::Aborting {
                kill_at, killed, ..
            } => {
                if !killed {
                    at(Some(*kill_at))
                }
            }
            Phase::Stopping {
                signal_at, kill_at, ..
            } => {
                at(*signal_at);
                at(*kill_at);
                if self.live_child().is_none() && self.awaits_drain() {
                    at(self.drain_until);
                }
            }
            Phase::Booting | Phase::Serving | Phase::Done => {}
        }
        due
    }

    /// Feed one event; get the effects to carry out, in order.
    pub fn step(&mut self, now: Instant, event: Event) -> Vec<Effect> {
        let mut out = Vec::new();
        match (&self.phase, event) {
            (Phase::Done, _) => {}
            (Phase::Booting, Event::Started) => self.on_started(now, &mut out),
            (Phase::Booting, _) => {}
            (_, Event::Started) => {}
            (_, Event::Tick) => self.on_tick(now, &mut out),
            (_, Event::SignalReceived(sig)) => self.on_signal(now, sig, false, &mut out),
            (_, Event::AbortRequested(sig)) => self.on_signal(now, sig, true, &mut out),
            (_, Event::RealtimeSignalReceived(signo)) => match self.live_child() {
                Some(id) => out.push(Effect::SignalRealtime { id, signo }),
                None => log(
                    &mut out,
                    format!("signal {signo} not forwarded: the child has exited"),
                ),
            },
            (_, Event::ProcessExited { id, status }) => self.on_exit(now, id, status, &mut out),
            (_, Event::SpawnFailed { id, reason }) => {
                self.on_spawn_failed(now, id, reason, &mut out)
            }
            (_, Event::SuccessorReady { id }) => self.on_successor_ready(now, id, &mut out),
            (_, Event::SuccessorFailed { id, reason }) => {
                if self.successor() == Some(id) {
                    self.successor_failure = Some(reason);
                }
            }
            (_, Event::ControlRequest { client, request }) => {
                self.on_control(now, client, request, &mut out)
            }
            (_, Event::PredecessorExited) => {
                if self.predecessor_alive {
                    self.predecessor_alive = false;
                    log(&mut out, "the previous generation has exited");
                }
            }
            (Phase::Starting, Event::PidfileWritten) if self.healthy => {
                self.on_ready(now, &mut out)
            }
            (Phase::Starting, Event::PidfileFailed { reason }) if self.healthy => {
                self.on_pidfile_failed(now, reason, &mut out)
            }
            (_, Event::ProxyDrained) => self.on_proxy_drained(now, &mut out),
            (_, Event::ChildNotified { id, ready, status }) => {
                self.on_child_notified(now, id, ready, status, &mut out)
            }
            (
                _,
                Event::ContainerInspected {
                    container,
                    inspection,
                },
            ) => self.on_inspected(now, &container, inspection, &mut out),
            (_, Event::PidfileWritten) => {}
            (_, Event::PidfileFailed { reason }) => {
                log(&mut out, format!("cannot write the pidfile: {reason}"))
            }
        }
        out
    }

    fn alloc(&mut self) -> ProcId {
        self.next_id += 1;
        ProcId(self.next_id)
    }

    fn on_started(&mut self, now: Instant, out: &mut Vec<Effect>) {
        let id = self.alloc();
        self.child = Some(Child {
            id,
            spawned_at: now,
            exited: None,
        });
        self.phase = Phase::Starting;
        match self.settings.health {
            Health::Command { after, .. } => self.probe.next_at = Some(now + after),
            Health::Docker { .. } => self.probe.next_at = Some(now),
            Health::Alive { .. } | Health::Notify => {}
        }
        out.push(Effect::Spawn {
            id,
            role: Role::App,
        });
    }

    fn on_tick(&mut self, now: Instant, out: &mut Vec<Effect>) {
        match self.phase.clone() {
            Phase::Starting => self.tick_health(now, out),
            Phase::Upgrading {
                successor,
                kill_at,
                killed: false,
            } if now >= kill_at => {
                log(
                    out,
                    format!(
                        "upgrade failed: the successor did not report ready within upgrade.timeout + {}s; killing it",
                        SUCCESSOR_GRACE.as_secs()
                    ),
                );
                out.push(kill(successor, false));
                self.phase = Phase::Upgrading {
                    successor,
                    kill_at,
                    killed: true,
                };
            }
            Phase::Aborting {
                successor: Some(successor),
                kill_at,
                killed: false,
            } if now >= kill_at => {
                log(out, "the successor did not stop in time; killing it");
                out.push(kill(successor, false));
                self.phase = Phase::Aborting {
                    successor: Some(successor),
                    kill_at,
                    killed: true,
                };
            }
            Phase::Stopping {
                code,
                signal_at,
                kill_at,
            } => {
                if let Some(t) = signal_at
                    && now >= t
                {
                    self.send_shutdown_signal(now, code, out);
                } else if let Some(t) = kill_at
                    && now >= t
                    && let Some(id) = self.live_child()
                {
                    log(
                        out,
                        format!(
                            "the child did not exit within shutdown.timeout ({:?}); sending SIGKILL",
                            self.settings.shutdown_timeout
                        ),
                    );
                    out.push(kill(id, true));
                    self.killed_child = true;
                    self.phase = Phase::Stopping {
                        code,
                        signal_at: None,
                        kill_at: None,
                    };
                } else if self.live_child().is_none()
                    && self.awaits_drain()
                    && self.drain_until.is_some_and(|t| now >= t)
                {
                    log(
                        out,
                        "proxied connections still open after shutdown.delay + shutdown.timeout; closing them",
                    );
                    self.exit(code, out);
                }
            }
            _ => {}
        }
    }

    fn tick_health(&mut self, now: Instant, out: &mut Vec<Effect>) {
        let Some(child) = self.child.clone().filter(|c| c.exited.is_none()) else {
            return;
        };
        if self.healthy {
            return;
        }
        if now >= child.spawned_at + self.child_timeout {
            // What the last check said tells the operator what to fix.
            let last = match self.last_check.take() {
                Some(why) => format!("; last check: {why}"),
                None => String::new(),
            };
            log(
                out,
                format!(
                    "the child did not become healthy within upgrade.timeout ({:?}){last}; stopping it",
                    self.child_timeout
                ),
            );
            self.upgrade_pending = false;
            self.failure = Some(format!(
                "the new child did not become healthy within upgrade.timeout ({:?}){last}",
                self.child_timeout
            ));
            self.kill_probe(out);
            self.kill_unready_child(now, 1, out);
            return;
        }
        match self.settings.health {
            Health::Alive { timeout } => {
                if now >= child.spawned_at + timeout {
                    self.on_healthy(now, out);
                }
            }
            Health::Command { interval, .. } => match self.probe.running {
                Some((id, false)) => {
                    if self.probe.kill_at.is_some_and(|t| now >= t) {
                        log(
                            out,
                            format!(
                                "healthcheck command still running after interval ({interval:?}); killing it"
                            ),
                        );
                        out.push(kill(id, true));
                        self.probe.running = Some((id, true));
                        self.probe.kill_at = None;
                    }
                }
                Some((_, true)) => {}
                None => {
                    if self.probe.next_at.is_some_and(|t| now >= t) {
                        let id = self.alloc();
                        self.probe.running = Some((id, false));
                        self.probe.kill_at = Some(now + interval);
                        self.probe.next_at = Some(now + interval);
                        out.push(Effect::Spawn {
                            id,
                            role: Role::Probe,
                        });
                    }
                }
            },
            Health::Notify => {}
            Health::Docker { interval } => match self.probe.inspecting {
                Some(abandon_at) => {
                    if now >= abandon_at {
                        let why = format!(
                            "the Docker engine did not answer within interval ({interval:?})"
                        );
                        log(out, format!("docker healthcheck: {why}"));
                        self.last_check = Some(why);
                        self.probe.inspecting = None;
                        out.push(Effect::AbandonInspection);
                    }
                }
                None => {
                    if self.probe.next_at.is_some_and(|t| now >= t) {
                        self.probe.inspecting = Some(now + interval);
                        self.probe.next_at = Some(now + interval);
                        out.push(Effect::InspectContainer);
                    }
                }
            },
        }
    }

    /// (`[healthcheck.notify]`) the child, or a process holding its notify socket,
    /// spoke.
    fn on_child_notified(
        &mut self,
        now: Instant,
        id: ProcId,
        ready: bool,
        status: Option<String>,
        out: &mut Vec<Effect>,
    ) {
        if self.live_child() != Some(id) {
            return;
        }
        if let Some(status) = status {
            log(out, format!("child status: {status}"));
        }
        if ready
            && self.settings.health == Health::Notify
            && self.phase == Phase::Starting
            && !self.healthy
        {
            log(out, "the child sent READY=1");
            self.on_healthy(now, out);
        }
    }

    /// (`[healthcheck.docker]`) what the engine said about the container.
    fn on_inspected(
        &mut self,
        now: Instant,
        container: &str,
        inspection: Inspection,
        out: &mut Vec<Effect>,
    ) {
        if self.probe.inspecting.take().is_none()
            || self.phase != Phase::Starting
            || self.healthy
            || self.live_child().is_none()
        {
            return;
        }
        let failed = match inspection {
            Inspection::Missing => {
                let why = format!("container {container} does not exist (yet)");
                if self.last_check.as_ref() != Some(&why) {
                    log(out, format!("docker healthcheck: {why}"));
                }
                self.last_check = Some(why);
                return;
            }
            Inspection::Failed(why) => {
                if self.last_check.as_ref() != Some(&why) {
                    log(out, format!("docker healthcheck: {why}"));
                }
                self.last_check = Some(why);
                return;
            }
            // On this engine an exited container with a health check also reports
            // itself unhealthy: its state says more.
            Inspection::Found { status, .. } if status == "exited" || status == "dead" => {
                format!("container {container} has stopped ({status})")
            }
            Inspection::Found {
                healthcheck: false, ..
            } => format!(
                "container {container} has no HEALTHCHECK (docker run --health-cmd, or HEALTHCHECK in its image)"
            ),
            Inspection::Found {
                health: None,
                status,
                ..
            } => {
                // Created, not started yet: no health state so far.
                self.last_check = Some(format!("container {container} is {status}"));
                return;
            }
            Inspection::Found {
                health: Some(health),
                status,
                ..
            } => match health.as_str() {
                "healthy" => {
                    log(out, format!("container {container} is healthy"));
                    self.last_check = None;
                    self.on_healthy(now, out);
                    return;
                }
                "unhealthy" => format!("container {container} is unhealthy"),
                _ => {
                    self.last_check = Some(format!(
                        "container {container} is {status}, its health {health}"
                    ));
                    return;
                }
            },
        };
        log(
            out,
            format!("docker healthcheck failed: {failed}; stopping the child"),
        );
        self.upgrade_pending = false;
        self.last_check = None;
        self.failure = Some(format!("docker healthcheck failed: {failed}"));
        self.kill_probe(out);
        self.kill_unready_child(now, 1, out);
    }

    /// The child passed its healthcheck: make the pidfile name us, then be ready.
    fn on_healthy(&mut self, now: Instant, out: &mut Vec<Effect>) {
        self.healthy = true;
        self.probe = Probe::default();
        if self.settings.pidfile {
            out.push(Effect::WritePidfile);
        } else {
            self.on_ready(now, out);
        }
    }

    /// Healthy and (if configured) the pidfile names us.
    fn on_ready(&mut self, now: Instant, out: &mut Vec<Effect>) {
        self.phase = Phase::Serving;
        match self.settings.generation {
            Generation::First => {
                log(out, "child is healthy; serving");
                if self.proxy {
                    out.push(Effect::ProxyAccept);
                }
                out.push(Effect::Notify(Notify::Ready {
                    status: "serving".into(),
                }));
                if std::mem::take(&mut self.upgrade_pending) {
                    log(
                        out,
                        "starting the upgrade requested while the child was starting",
                    );
                    self.start_upgrade(now, out);
                }
            }
            Generation::Successor => {
                log(out, "new child is healthy; taking over");
                if self.proxy {
                    // Accept before the old generation stops: the listeners never
                    // go unattended.
                    out.push(Effect::ProxyAccept);
                }
                self.reported_ready = true;
                self.last_upgrade = Some("succeeded".into());
                // Before the old generation hears of it, so before the old child is
                // signalled. With a pidfile, the service manager learns the new main
                // process from it (systemd's PIDFile=) once the old generation has
                // exited, when we are its own child: announced now, while the old
                // generation still runs, we would be "not our child" to systemd, and
                // a later `systemctl stop` would SIGKILL at once (KillMode=mixed).
                // Without a pidfile, MAINPID= is the only way it can follow.
                out.push(Effect::Notify(if self.settings.pidfile {
                    Notify::Ready {
                        status: "serving".into(),
                    }
                } else {
                    Notify::MainPid
                }));
                out.push(Effect::ReportReady);
            }
        }
    }

    fn on_pidfile_failed(&mut self, now: Instant, reason: String, out: &mut Vec<Effect>) {
        match self.settings.generation {
            Generation::First => {
                log(
                    out,
                    format!("cannot write the pidfile: {reason}; carrying on without it"),
                );
                self.on_ready(now, out);
            }
            Generation::Successor => {
                // Without the pidfile the service manager would lose track of the
                // service once the old generation exits: the old one keeps it.
                log(
                    out,
                    format!("upgrade failed: cannot write the pidfile: {reason}"),
                );
                self.failure = Some(format!("cannot write the pidfile: {reason}"));
                self.kill_unready_child(now, 1, out);
            }
        }
    }

    fn start_upgrade(&mut self, now: Instant, out: &mut Vec<Effect>) {
        let id = self.alloc();
        log(out, "upgrade: starting the successor");
        out.push(Effect::Notify(Notify::Reloading));
        out.push(Effect::Spawn {
            id,
            role: Role::Successor,
        });
        self.phase = Phase::Upgrading {
            successor: id,
            kill_at: now + self.settings.upgrade_timeout + SUCCESSOR_GRACE,
            killed: false,
        };
    }

    /// `from_predecessor`: the previous generation sent it (see `AbortRequested`).
    fn on_signal(
        &mut self,
        now: Instant,
        sig: Signal,
        from_predecessor: bool,
        out: &mut Vec<Effect>,
    ) {
        if matches!(sig, Signal::SIGCHLD | Signal::SIGPIPE) {
            return;
        }
        if sig == self.settings.upgrade_signal {
            self.on_upgrade_signal(now, out);
            return;
        }
        let terminating = matches!(sig, Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT);
        if terminating {
            if let Phase::Upgrading { successor, .. } = self.phase {
                log(
                    out,
                    format!(
                        "upgrade aborted by {}: stopping the successor",
                        sig.as_str()
                    ),
                );
                out.push(Effect::Signal {
                    id: successor,
                    signal: sig,
                    group: false,
                });
                self.phase = Phase::Aborting {
                    successor: Some(successor),
                    kill_at: now + self.settings.shutdown_timeout + SUCCESSOR_GRACE,
                    killed: false,
                };
            }
            // After the handover the service is the new generation's, but whoever
            // sends this still takes us for the service: systemd does until we
            // exit (its main process; then it reads the pidfile and follows the new
            // generation, which it never signalled, and SIGKILLs it once
            // TimeoutStopSec= has passed). So the new generation gets it too, and
            // stops its child the same way. (To cut a drain short instead, signal
            // the old child.)
            if self.handed_over
                && !from_predecessor
                && let Some(successor) = self.handed_to
            {
                log(
                    out,
                    format!(
                        "{} after the handover: the service stops; passing it on to the new generation too",
                        sig.as_str()
                    ),
                );
                out.push(Effect::Signal {
                    id: successor,
                    signal: sig,
                    group: false,
                });
                self.service_stopping = true;
            }
            if self.upgrade_pending {
                self.upgrade_pending = false;
                log(
                    out,
                    format!("pending upgrade cancelled by {}", sig.as_str()),
                );
                self.answer_waiters(
                    Reply::UpgradeFailed(format!("cancelled by {}", sig.as_str())),
                    out,
                );
            }
            // The old generation aborts the upgrade (it passes on the signal it was
            // told to terminate with) — even if we took over an instant before it
            // heard so — or the operator stops us before we took over, or it passes
            // on a stop of the service it got after the handover: never take over
            // (or serve on) after this. The child gets the signal, then SIGKILL to
            // its group if it ignores it: after GIVE_UP_GRACE if it never was the
            // service, after shutdown.timeout if it was (we reported ready).
            let aborted =
                from_predecessor && self.predecessor_alive && self.phase == Phase::Serving;
            if self.settings.generation == Generation::Successor
                && (self.phase == Phase::Starting || aborted)
                && self.live_child().is_some()
            {
                log(
                    out,
                    format!("{} before taking over: giving up", sig.as_str()),
                );
                self.kill_probe(out);
                self.gave_up = true;
                self.failure = Some(format!("the new generation got {}", sig.as_str()));
                let grace = if self.reported_ready {
                    self.settings.shutdown_timeout
                } else {
                    self.settings.shutdown_timeout.min(GIVE_UP_GRACE)
                };
                self.phase = Phase::Stopping {
                    code: 1,
                    signal_at: None,
                    kill_at: Some(now + grace),
                };
            }
        }
        match self.live_child() {
            Some(id) => {
                if terminating {
                    self.stop_signal = Some(sig);
                }
                out.push(Effect::Signal {
                    id,
                    signal: sig,
                    group: false,
                })
            }
            None => log(
                out,
                format!("{} not forwarded: the child has exited", sig.as_str()),
            ),
        }
    }

    /// psflip's exit status for its child's `status` (SPEC §1, as issue #9 changed
    /// it): the child's code, or 128+N when it died of signal N — except 0 when it
    /// died of the termination signal psflip itself received and passed on. Then
    /// the stop was asked for (by a service manager, pidwatch or an operator) and
    /// happened as asked: systemd would otherwise mark the unit `failed`.
    fn relayed(&self, status: ExitStatus) -> i32 {
        match (status, self.stop_signal) {
            (ExitStatus::Signaled(n), Some(sig)) if n == sig as i32 => 0,
            _ => status.code(),
        }
    }

    fn on_upgrade_signal(&mut self, now: Instant, out: &mut Vec<Effect>) {
        if let Err(why) = self.request_upgrade(now, out) {
            log(
                out,
                format!(
                    "upgrade signal {} ignored: {why}",
                    self.settings.upgrade_signal.as_str()
                ),
            );
        }
    }

    fn on_control(
        &mut self,
        now: Instant,
        client: ClientId,
        request: Request,
        out: &mut Vec<Effect>,
    ) {
        match request {
            Request::Status => {
                let phase = match self.phase {
                    Phase::Booting | Phase::Starting => "starting",
                    Phase::Serving => "serving",
                    Phase::Upgrading { .. } => "upgrading",
                    Phase::Aborting { .. } => "aborting",
                    Phase::Stopping { .. } | Phase::Done => "stopping",
                };
                let status = Status {
                    phase,
                    child: self.live_child(),
                    child_healthy: self.healthy && self.live_child().is_some(),
                    upgrade_in_flight: self.upgrading() || self.upgrade_pending,
                    last_upgrade: self.last_upgrade.clone(),
                };
                out.push(Effect::Reply {
                    client,
                    reply: Reply::Status(status),
                });
            }
            Request::Upgrade => match self.request_upgrade(now, out) {
                Ok(()) => {
                    log(out, "upgrade requested over the control socket");
                    self.waiters.push(client);
                }
                // One upgrade at a time, but its outcome is every asker's: a
                // service manager may both send the upgrade signal and run
                // `psflip upgrade` (systemd's Type=notify-reload with ExecReload=).
                Err(UPGRADE_IN_FLIGHT) => {
                    log(
                        out,
                        "upgrade requested over the control socket while one is in flight: answering with its outcome",
                    );
                    self.waiters.push(client);
                }
                Err(why) => {
                    log(out, format!("upgrade request refused: {why}"));
                    out.push(Effect::Reply {
                        client,
                        reply: Reply::UpgradeRefused(why.to_string()),
                    });
                }
            },
        }
    }

    /// Start an upgrade (or, before the first child is healthy, promise one), or
    /// say why not.
    fn request_upgrade(&mut self, now: Instant, out: &mut Vec<Effect>) -> Result<(), &'static str> {
        let why = match (&self.phase, self.settings.generation) {
            (Phase::Serving, Generation::Successor) if self.predecessor_alive => {
                "the previous generation is still stopping"
            }
            (Phase::Serving, _) => {
                self.start_upgrade(now, out);
                return Ok(());
            }
            (Phase::Booting | Phase::Starting, Generation::First) if !self.healthy => {
                if !self.upgrade_pending {
                    self.upgrade_pending = true;
                    log(
                        out,
                        "upgrade requested before the child is healthy: it starts once the child is healthy",
                    );
                } else {
                    log(
                        out,
                        "upgrade already requested; it starts once the child is healthy",
                    );
                }
                return Ok(());
            }
            (Phase::Booting | Phase::Starting, Generation::First) => {
                // Healthy, the pidfile being written: Serving in a moment.
                self.upgrade_pending = true;
                return Ok(());
            }
            (Phase::Booting | Phase::Starting, Generation::Successor) => {
                "this generation is not ready yet"
            }
            (Phase::Upgrading { .. }, _) => return Err(UPGRADE_IN_FLIGHT),
            (Phase::Aborting { .. }, _) => "an upgrade is being aborted",
            (Phase::Stopping { .. }, _) => "this generation is stopping",
            (Phase::Done, _) => "this generation has exited",
        };
        Err(why)
    }

    /// Tell every waiting control client the outcome of the upgrade.
    fn answer_waiters(&mut self, reply: Reply, out: &mut Vec<Effect>) {
        for client in std::mem::take(&mut self.waiters) {
            out.push(Effect::Reply {
                client,
                reply: reply.clone(),
            });
        }
    }

    fn on_exit(&mut self, now: Instant, id: ProcId, status: ExitStatus, out: &mut Vec<Effect>) {
        if self.live_child() == Some(id) {
            self.on_child_exit(now, status, out);
        } else if self.probe.running.is_some_and(|(p, _)| p == id) {
            self.on_probe_exit(now, status, out);
        } else if self.successor() == Some(id) {
            self.on_successor_gone(now, format!("the successor exited ({status})"), out);
        } else if self.handed_over && self.handed_to == Some(id) {
            self.on_new_service_gone(status, out);
        }
    }

    /// The successor took over, then died. If the old child has not been signalled
    /// yet (`shutdown.delay`, or waiting for the proxy to drain), nothing is lost:
    /// this generation takes the service back. Otherwise the service ends with it,
    /// as any crash of the service would.
    fn on_new_service_gone(&mut self, status: ExitStatus, out: &mut Vec<Effect>) {
        let untouched = matches!(
            self.phase,
            Phase::Stopping {
                signal_at: Some(_),
                ..
            }
        ) && self.live_child().is_some();
        if !untouched || self.service_stopping {
            log(
                out,
                format!("the new generation exited ({status}) after taking over"),
            );
            self.handed_to = None;
            return;
        }
        log(
            out,
            format!(
                "the new generation exited ({status}) right after taking over; the old child was not stopped yet: serving again"
            ),
        );
        self.handed_over = false;
        self.handed_to = None;
        self.last_upgrade = Some(format!(
            "failed: the new generation exited ({status}) right after taking over"
        ));
        self.proxy_drained = false;
        self.drain_until = None;
        self.phase = Phase::Serving;
        if self.proxy {
            out.push(Effect::ProxyAccept);
        }
        if self.settings.pidfile {
            out.push(Effect::WritePidfile);
        }
        // The successor told the service manager it was the main process.
        out.push(Effect::Notify(Notify::MainPid));
    }

    fn on_child_exit(&mut self, _now: Instant, status: ExitStatus, out: &mut Vec<Effect>) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        child.exited = Some(status);
        let id = child.id;
        // The child led its own process group; whatever it left there (a shell's
        // background jobs) must not outlive it. The runtime has not reaped the child
        // yet, so the group id cannot have been recycled.
        out.push(kill(id, true));
        match self.phase {
            Phase::Starting => {
                self.kill_probe(out);
                self.upgrade_pending = false;
                let code = if status.success() {
                    1
                } else if self.settings.generation == Generation::First {
                    // Stopped while starting (`systemctl stop` before it was ready).
                    self.relayed(status)
                } else {
                    status.code()
                };
                log(
                    out,
                    format!("the child exited ({status}) before it became healthy"),
                );
                self.failure = Some(format!(
                    "the new child exited ({status}) before it became healthy"
                ));
                self.exit(code, out);
            }
            Phase::Serving => {
                log(out, format!("the child exited ({status})"));
                self.exit(self.relayed(status), out);
            }
            Phase::Upgrading { .. } => log(
                out,
                format!("the child exited ({status}) during the upgrade; waiting for its outcome"),
            ),
            Phase::Aborting { successor, .. } => {
                if successor.is_none() {
                    log(out, format!("the child exited ({status})"));
                    self.exit(self.relayed(status), out);
                }
            }
            Phase::Stopping { code, .. } => {
                log(out, format!("the child exited ({status})"));
                // A successor that gave up before taking over exits like one whose
                // child exited before it was healthy: with the child's own non-zero
                // code, or 1 if it had to be killed.
                // (If it had become healthy, like any service: its status, even 0 —
                // and 0 when it reported ready and its child died of the signal it
                // passed on, as for any stop that was asked for.)
                let code =
                    if self.gave_up && !self.killed_child && (self.healthy || !status.success()) {
                        if self.reported_ready {
                            self.relayed(status)
                        } else {
                            status.code()
                        }
                    } else {
                        code
                    };
                self.finish(code, out);
            }
            Phase::Booting | Phase::Done => {}
        }
    }

    fn on_probe_exit(&mut self, now: Instant, status: ExitStatus, out: &mut Vec<Effect>) {
        self.probe.running = None;
        self.probe.kill_at = None;
        if self.phase != Phase::Starting || self.healthy {
            return;
        }
        if status.success() {
            self.on_healthy(now, out);
        } else {
            log(out, format!("healthcheck command failed ({status})"));
        }
    }

    fn on_spawn_failed(&mut self, now: Instant, id: ProcId, reason: String, out: &mut Vec<Effect>) {
        if self.live_child() == Some(id) {
            if let Some(child) = self.child.as_mut() {
                child.exited = Some(ExitStatus::Code(1));
            }
            log(out, format!("cannot start the child: {reason}"));
            self.failure = Some(format!("cannot start the new child: {reason}"));
            self.kill_probe(out);
            self.exit(1, out);
        } else if self.probe.running.is_some_and(|(p, _)| p == id) {
            self.probe.running = None;
            self.probe.kill_at = None;
            log(
                out,
                format!("cannot start the healthcheck command: {reason}"),
            );
        } else if self.successor() == Some(id) {
            self.on_successor_gone(now, format!("cannot start the successor: {reason}"), out);
        }
    }

    /// The successor is gone without (usefully) reporting ready.
    fn on_successor_gone(&mut self, _now: Instant, why: String, out: &mut Vec<Effect>) {
        // What the successor said before it went says more than its exit status.
        let why = match self.successor_failure.take() {
            Some(reason) => format!("{why}: {reason}"),
            None => why,
        };
        self.last_upgrade = Some(format!("failed: {why}"));
        self.answer_waiters(Reply::UpgradeFailed(why.clone()), out);
        let aborting = matches!(self.phase, Phase::Aborting { .. });
        if aborting {
            log(out, format!("upgrade aborted: {why}"));
        } else {
            log(
                out,
                format!("upgrade failed: {why}; the old child carries on"),
            );
        }
        match self.child.as_ref().and_then(|c| c.exited) {
            Some(status) => {
                log(out, format!("the old child had exited ({status})"));
                self.exit(self.relayed(status), out);
            }
            None => {
                self.phase = Phase::Serving;
                out.push(Effect::Notify(Notify::Ready {
                    status: format!("upgrade failed: {why}"),
                }));
                // The successor may have written the pidfile before it died: make it
                // name this generation again.
                if self.settings.pidfile {
                    out.push(Effect::WritePidfile);
                }
            }
        }
    }

    fn on_successor_ready(&mut self, now: Instant, id: ProcId, out: &mut Vec<Effect>) {
        match self.phase {
            Phase::Upgrading {
                successor,
                killed: true,
                ..
            } if successor == id => log(
                out,
                "the successor reported ready after it was killed for being late; ignoring it",
            ),
            Phase::Upgrading { successor, .. } if successor == id => {
                log(
                    out,
                    "upgrade: the successor is ready; stopping the old child",
                );
                self.handed_over = true;
                self.handed_to = Some(id);
                self.last_upgrade = Some("succeeded".into());
                self.answer_waiters(Reply::Upgraded { successor: id }, out);
                if self.proxy {
                    out.push(Effect::ProxyStopAccepting);
                    self.drain_until =
                        Some(now + self.settings.shutdown_delay + self.settings.shutdown_timeout);
                }
                self.stop_child(now, 0, self.settings.shutdown_delay, out);
            }
            Phase::Aborting { successor, .. } if successor == Some(id) => log(
                out,
                "the successor reported ready after the upgrade was aborted; it is being stopped",
            ),
            _ => {}
        }
    }

    /// A child that never became the service is killed at once, with its whole
    /// group (SPEC §5: "the successor kills the new child"): it has nothing to
    /// finish, and the old generation's patience with a successor
    /// (`upgrade.timeout` + grace) must not run out while it stops. Exit with
    /// `code` once it is gone.
    ///
    /// With `[healthcheck.docker]` the child is a `docker run` client: SIGKILL would
    /// end the client and leave its container running (and its name taken), so it
    /// gets `shutdown.signal`, which it passes on to the container, and SIGKILL to
    /// its group only after `shutdown.timeout`, at most [`GIVE_UP_GRACE`].
    fn kill_unready_child(&mut self, now: Instant, code: i32, out: &mut Vec<Effect>) {
        let Some(id) = self.live_child() else {
            self.exit(code, out);
            return;
        };
        if let Health::Docker { .. } = self.settings.health {
            out.push(Effect::Signal {
                id,
                signal: self.settings.shutdown_signal,
                group: false,
            });
            self.phase = Phase::Stopping {
                code,
                signal_at: None,
                kill_at: Some(now + self.settings.shutdown_timeout.min(GIVE_UP_GRACE)),
            };
            return;
        }
        out.push(kill(id, true));
        self.phase = Phase::Stopping {
            code,
            signal_at: None,
            kill_at: None,
        };
    }

    /// Stop the child (after `delay`: `shutdown.signal`, then SIGKILL to its group
    /// after `shutdown.timeout`) and exit with `code` once it is gone.
    fn stop_child(&mut self, now: Instant, code: i32, delay: Duration, out: &mut Vec<Effect>) {
        if self.live_child().is_none() {
            self.finish(code, out);
            return;
        }
        self.phase = Phase::Stopping {
            code,
            signal_at: Some(now + delay),
            kill_at: None,
        };
        if delay.is_zero() {
            self.send_shutdown_signal(now, code, out);
        }
    }

    fn send_shutdown_signal(&mut self, now: Instant, code: i32, out: &mut Vec<Effect>) {
        let Some(id) = self.live_child() else {
            return;
        };
        out.push(Effect::Signal {
            id,
            signal: self.settings.shutdown_signal,
            group: false,
        });
        self.phase = Phase::Stopping {
            code,
            signal_at: None,
            kill_at: Some(now + self.settings.shutdown_timeout),
        };
    }

    /// After a handover with a proxy: whether the old connections may still be open.
    fn awaits_drain(&self) -> bool {
        self.proxy && self.handed_over && !self.proxy_drained
    }

    /// The child is gone while stopping: exit with `code`, or, after a handover with
    /// a proxy, once the old connections have closed (bounded by `drain_until`).
    fn finish(&mut self, code: i32, out: &mut Vec<Effect>) {
        if self.awaits_drain() {
            log(out, "waiting for the proxied connections to close");
            self.phase = Phase::Stopping {
                code,
                signal_at: None,
                kill_at: None,
            };
        } else {
            self.exit(code, out);
        }
    }

    /// The old connections have all closed: the old child need not wait for
    /// `shutdown.delay` any longer, nor psflip for them.
    fn on_proxy_drained(&mut self, now: Instant, out: &mut Vec<Effect>) {
        if !self.awaits_drain() {
            return;
        }
        self.proxy_drained = true;
        if let Phase::Stopping {
            code, signal_at, ..
        } = self.phase
        {
            if self.live_child().is_none() {
                log(out, "the proxied connections have all closed");
                self.exit(code, out);
            } else if signal_at.is_some() {
                log(
                    out,
                    "the proxied connections have all closed; stopping the old child",
                );
                self.send_shutdown_signal(now, code, out);
            }
        }
    }

    fn kill_probe(&mut self, out: &mut Vec<Effect>) {
        if let Some((id, _)) = self.probe.running {
            out.push(kill(id, true));
        }
        if self.probe.inspecting.is_some() {
            out.push(Effect::AbandonInspection);
        }
        self.probe = Probe::default();
    }

    /// Exit with `code`. Unless the service was handed over (the pidfile then names
    /// the successor), the pidfile is removed; the runtime removes it only while it
    /// still names this psflip.
    fn exit(&mut self, code: i32, out: &mut Vec<Effect>) {
        self.kill_probe(out);
        self.answer_waiters(
            Reply::UpgradeFailed(format!("psflip exited (status {code}) first")),
            out,
        );
        if self.settings.generation == Generation::Successor
            && !self.reported_ready
            && let Some(reason) = self.failure.take()
        {
            out.push(Effect::ReportFailure(reason));
        }
        if self.settings.pidfile && !self.handed_over {
            out.push(Effect::RemovePidfile);
        }
        // A failed successor never was the service: its socket files are the old
        // generation's, which still serves on them.
        // Nor is a successor whose predecessor still runs (it aborted the upgrade and
        // serves on).
        let service = self.settings.generation == Generation::First
            || (self.reported_ready && !self.predecessor_alive);
        if (self.proxy || self.listen) && service && !self.handed_over {
            out.push(Effect::RemoveProxySockets);
        }
        out.push(Effect::Exit(code));
        self.phase = Phase::Done;
    }
}

fn kill(id: ProcId, group: bool) -> Effect {
    Effect::Signal {
        id,
        signal: Signal::SIGKILL,
        group,
    }
}

fn log(out: &mut Vec<Effect>, msg: impl Into<String>) {
    out.push(Effect::Log(msg.into()));
}

#[cfg(test)]
mod tests {
    //! Scenario tests of single transitions; the simulation (`tests/sim`) covers
    //! interleavings across generations.
    use super::*;

    fn settings(generation: Generation) -> Settings {
        Settings {
            generation,
            upgrade_signal: Signal::SIGHUP,
            upgrade_timeout: Duration::from_secs(10),
            shutdown_delay: Duration::ZERO,
            shutdown_signal: Signal::SIGTERM,
            shutdown_timeout: Duration::from_secs(2),
            health: Health::Alive {
                timeout: Duration::from_secs(1),
            },
            pidfile: true,
        }
    }

    fn t(ms: u64) -> Instant {
        Instant::from_origin(Duration::from_millis(ms))
    }

    fn no_logs(effects: Vec<Effect>) -> Vec<Effect> {
        effects
            .into_iter()
            .filter(|e| !matches!(e, Effect::Log(_) | Effect::Notify(_)))
            .collect()
    }

    const CHILD: ProcId = ProcId(1);

    /// A first generation, serving, child #1 healthy.
    fn serving() -> Machine {
        let mut m = Machine::new(settings(Generation::First));
        m.step(t(0), Event::Started);
        assert_eq!(
            no_logs(m.step(t(1000), Event::Tick)),
            vec![Effect::WritePidfile]
        );
        m.step(t(1000), Event::PidfileWritten);
        assert_eq!(m.phase(), &Phase::Serving);
        m
    }

    #[test]
    fn successful_upgrade_signals_the_old_child_only_after_ready() {
        let mut m = serving();
        let out = no_logs(m.step(t(2000), Event::SignalReceived(Signal::SIGHUP)));
        let successor = ProcId(2);
        assert_eq!(
            out,
            vec![Effect::Spawn {
                id: successor,
                role: Role::Successor
            }]
        );
        // Nothing happens to the old child while the successor starts.
        assert!(no_logs(m.step(t(3000), Event::Tick)).is_empty());
        let out = no_logs(m.step(t(3500), Event::SuccessorReady { id: successor }));
        assert_eq!(
            out,
            vec![Effect::Signal {
                id: CHILD,
                signal: Signal::SIGTERM,
                group: false
            }]
        );
        // The old child ignores SIGTERM: SIGKILL to its group after the timeout.
        let out = no_logs(m.step(t(5500), Event::Tick));
        assert_eq!(out, vec![kill(CHILD, true)]);
        let out = no_logs(m.step(
            t(5501),
            Event::ProcessExited {
                id: CHILD,
                status: ExitStatus::Signaled(9),
            },
        ));
        // Exit 0, and the pidfile (the successor's now) is left alone.
        assert_eq!(out, vec![kill(CHILD, true), Effect::Exit(0)]);
    }

    #[test]
    fn upgrade_signal_before_healthy_is_deferred() {
        let mut m = Machine::new(settings(Generation::First));
        m.step(t(0), Event::Started);
        assert!(no_logs(m.step(t(5), Event::SignalReceived(Signal::SIGHUP))).is_empty());
        m.step(t(1000), Event::Tick);
        let out = no_logs(m.step(t(1000), Event::PidfileWritten));
        assert_eq!(
            out,
            vec![Effect::Spawn {
                id: ProcId(2),
                role: Role::Successor
            }]
        );
    }

    #[test]
    fn failed_upgrade_leaves_the_old_generation_serving() {
        let mut m = serving();
        m.step(t(2000), Event::SignalReceived(Signal::SIGHUP));
        let out = no_logs(m.step(
            t(2100),
            Event::ProcessExited {
                id: ProcId(2),
                status: ExitStatus::Code(1),
            },
        ));
        // The pidfile is made to name us again (the successor may have written it).
        assert_eq!(out, vec![Effect::WritePidfile]);
        assert_eq!(m.phase(), &Phase::Serving);
        assert_eq!(m.live_child(), Some(CHILD));
        // And a later upgrade can start.
        let out = no_logs(m.step(t(2200), Event::SignalReceived(Signal::SIGHUP)));
        assert!(matches!(
            out[..],
            [Effect::Spawn {
                role: Role::Successor,
                ..
            }]
        ));
    }

    #[test]
    fn hung_successor_is_killed_after_timeout_plus_grace() {
        let mut m = serving();
        m.step(t(2000), Event::SignalReceived(Signal::SIGHUP));
        assert_eq!(m.deadline(), Some(t(2000) + Duration::from_secs(15)));
        let out = no_logs(m.step(t(17_000), Event::Tick));
        assert_eq!(out, vec![kill(ProcId(2), false)]);
        assert_eq!(m.deadline(), None);
    }

    #[test]
    fn termination_signal_mid_upgrade_aborts_it() {
        let mut m = serving();
        m.step(t(2000), Event::SignalReceived(Signal::SIGHUP));
        let out = no_logs(m.step(t(2100), Event::SignalReceived(Signal::SIGTERM)));
        assert_eq!(
            out,
            vec![
                Effect::Signal {
                    id: ProcId(2),
                    signal: Signal::SIGTERM,
                    group: false
                },
                Effect::Signal {
                    id: CHILD,
                    signal: Signal::SIGTERM,
                    group: false
                },
            ]
        );
        // A late "ready" changes nothing.
        assert!(no_logs(m.step(t(2150), Event::SuccessorReady { id: ProcId(2) })).is_empty());
        let exited = |id, status| Event::ProcessExited { id, status };
        m.step(t(2200), exited(CHILD, ExitStatus::Signaled(15)));
        let out = no_logs(m.step(t(2300), exited(ProcId(2), ExitStatus::Code(143))));
        assert_eq!(out, vec![Effect::RemovePidfile, Effect::Exit(0)]);
    }

    #[test]
    fn old_child_exiting_mid_upgrade_waits_for_the_outcome() {
        let mut m = serving();
        m.step(t(2000), Event::SignalReceived(Signal::SIGHUP));
        let out = no_logs(m.step(
            t(2100),
            Event::ProcessExited {
                id: CHILD,
                status: ExitStatus::Code(3),
            },
        ));
        assert_eq!(out, vec![kill(CHILD, true)]);
        let out = no_logs(m.step(t(2200), Event::SuccessorReady { id: ProcId(2) }));
        assert_eq!(out, vec![Effect::Exit(0)]);
    }

    #[test]
    fn successor_stops_its_child_when_not_healthy_in_time() {
        let mut s = settings(Generation::Successor);
        s.health = Health::Command {
            after: Duration::ZERO,
            interval: Duration::from_secs(4),
        };
        let mut m = Machine::new(s);
        m.step(t(0), Event::Started);
        let out = no_logs(m.step(t(0), Event::Tick));
        assert_eq!(
            out,
            vec![Effect::Spawn {
                id: ProcId(2),
                role: Role::Probe
            }]
        );
        // The probe hangs: killed after the interval; the next one starts at 8 s.
        assert_eq!(
            no_logs(m.step(t(4000), Event::Tick)),
            vec![kill(ProcId(2), true)]
        );
        // Upgrade signals are ignored while not ready.
        assert!(no_logs(m.step(t(4001), Event::SignalReceived(Signal::SIGHUP))).is_empty());
        // Not healthy in time: the child is killed with its group at once (the
        // killed probe, not reaped yet, is killed again).
        let out = no_logs(m.step(t(10_000), Event::Tick));
        assert_eq!(out, vec![kill(ProcId(2), true), kill(CHILD, true)]);
        let out = no_logs(m.step(
            t(10_010),
            Event::ProcessExited {
                id: CHILD,
                status: ExitStatus::Signaled(9),
            },
        ));
        assert_eq!(out.last(), Some(&Effect::Exit(1)));
    }

    #[test]
    fn child_exit_codes_follow_the_spec() {
        // Before healthy: the child's non-zero code, or 1.
        for (status, code) in [
            (ExitStatus::Code(5), 5),
            (ExitStatus::Code(0), 1),
            (ExitStatus::Signaled(9), 137),
        ] {
            let mut m = Machine::new(settings(Generation::First));
            m.step(t(0), Event::Started);
            let out = m.step(t(10), Event::ProcessExited { id: CHILD, status });
            assert_eq!(out.last(), Some(&Effect::Exit(code)), "{status:?}");
        }
        // While serving: the child's status, and the pidfile goes.
        let mut m = serving();
        let out = no_logs(m.step(
            t(5000),
            Event::ProcessExited {
                id: CHILD,
                status: ExitStatus::Code(0),
            },
        ));
        assert_eq!(
            out,
            vec![kill(CHILD, true), Effect::RemovePidfile, Effect::Exit(0)]
        );
    }

    /// Issue #9: a stop the service manager (or anyone) asked for with a
    /// termination signal, which the child obeyed by dying of it, is a clean exit.
    #[test]
    fn child_dying_of_the_forwarded_termination_signal_is_exit_0() {
        for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGQUIT] {
            let mut m = serving();
            m.step(t(2000), Event::SignalReceived(sig));
            let died = ExitStatus::Signaled(sig as i32);
            let out = m.step(
                t(2100),
                Event::ProcessExited {
                    id: CHILD,
                    status: died,
                },
            );
            assert_eq!(out.last(), Some(&Effect::Exit(0)), "{sig:?}");
        }
        // Any other end is reported as before: a different signal, or SIGKILL after
        // a stop the child did not obey, or its own code.
        for (status, code) in [
            (ExitStatus::Signaled(9), 137),
            (ExitStatus::Signaled(Signal::SIGINT as i32), 130),
            (ExitStatus::Code(3), 3),
        ] {
            let mut m = serving();
            m.step(t(2000), Event::SignalReceived(Signal::SIGTERM));
            let out = m.step(t(2100), Event::ProcessExited { id: CHILD, status });
            assert_eq!(out.last(), Some(&Effect::Exit(code)), "{status:?}");
        }
        // Not asked: the child died of SIGTERM from someone else.
        let mut m = serving();
        let status = ExitStatus::Signaled(Signal::SIGTERM as i32);
        let out = m.step(t(2100), Event::ProcessExited { id: CHILD, status });
        assert_eq!(out.last(), Some(&Effect::Exit(143)));
        // A signal that is not a termination request is not one either.
        let mut m = serving();
        m.step(t(2000), Event::SignalReceived(Signal::SIGUSR1));
        let status = ExitStatus::Signaled(Signal::SIGUSR1 as i32);
        let out = m.step(t(2100), Event::ProcessExited { id: CHILD, status });
        assert_eq!(
            out.last(),
            Some(&Effect::Exit(128 + Signal::SIGUSR1 as i32))
        );
    }

    /// A successor that takes over, as systemd is told: with a pidfile, READY=1
    /// only (systemd follows PIDFile= once the old generation is gone); without,
    /// MAINPID= as well.
    #[test]
    fn successor_announces_mainpid_only_without_a_pidfile() {
        for (pidfile, expected) in [
            (
                true,
                Notify::Ready {
                    status: "serving".into(),
                },
            ),
            (false, Notify::MainPid),
        ] {
            let mut m = Machine::new(Settings {
                pidfile,
                ..settings(Generation::Successor)
            });
            m.step(t(0), Event::Started);
            let mut out = m.step(t(1000), Event::Tick);
            if pidfile {
                out = m.step(t(1000), Event::PidfileWritten);
            }
            let notes: Vec<_> = out
                .iter()
                .filter(|e| matches!(e, Effect::Notify(_)))
                .collect();
            assert_eq!(notes, vec![&Effect::Notify(expected)], "pidfile {pidfile}");
            let ready = out.iter().position(|e| *e == Effect::ReportReady);
            let note = out.iter().position(|e| matches!(e, Effect::Notify(_)));
            assert!(note < ready, "{out:?}");
        }
    }

    /// A stop (SIGTERM) that reaches the old generation after the handover, while
    /// it still drains (systemd takes it for the main process until it exits):
    /// the new generation gets it too, and is not taken back when it exits.
    #[test]
    fn termination_after_the_handover_reaches_the_new_generation() {
        let mut m = Machine::new(Settings {
            shutdown_delay: Duration::from_secs(3),
            ..settings(Generation::First)
        });
        m.step(t(0), Event::Started);
        m.step(t(1000), Event::Tick);
        m.step(t(1000), Event::PidfileWritten);
        m.step(t(2000), Event::SignalReceived(Signal::SIGHUP));
        let successor = ProcId(2);
        m.step(t(2500), Event::SuccessorReady { id: successor });
        assert!(m.handed_over());
        let out = no_logs(m.step(t(2600), Event::SignalReceived(Signal::SIGTERM)));
        assert_eq!(
            out,
            vec![
                Effect::Signal {
                    id: successor,
                    signal: Signal::SIGTERM,
                    group: false
                },
                Effect::Signal {
                    id: CHILD,
                    signal: Signal::SIGTERM,
                    group: false
                },
            ]
        );
        let exited = |id, status| Event::ProcessExited { id, status };
        let out = no_logs(m.step(t(2700), exited(successor, ExitStatus::Code(0))));
        assert!(out.is_empty(), "nothing taken back: {out:?}");
        let out = m.step(t(2800), exited(CHILD, ExitStatus::Signaled(15)));
        assert_eq!(out.last(), Some(&Effect::Exit(0)));
        assert!(!out.contains(&Effect::RemovePidfile), "{out:?}");
    }

    /// The new generation, told by its predecessor to stop after it reported
    /// ready, gives its child shutdown.timeout (it was the service) and exits 0
    /// when the child died of that signal.
    #[test]
    fn a_ready_successor_told_to_stop_gives_its_child_shutdown_timeout() {
        let mut m = Machine::new(Settings {
            shutdown_timeout: Duration::from_secs(5),
            ..settings(Generation::Successor)
        });
        m.step(t(0), Event::Started);
        m.step(t(1000), Event::Tick);
        let out = m.step(t(1000), Event::PidfileWritten);
        assert!(out.contains(&Effect::ReportReady), "{out:?}");
        m.step(t(1100), Event::AbortRequested(Signal::SIGTERM));
        // Not GIVE_UP_GRACE (2 s): shutdown.timeout (5 s).
        assert!(no_logs(m.step(t(3200), Event::Tick)).is_empty());
        assert_eq!(m.deadline(), Some(t(6100)));
        let status = ExitStatus::Signaled(Signal::SIGTERM as i32);
        let out = m.step(t(5000), Event::ProcessExited { id: CHILD, status });
        assert_eq!(out.last(), Some(&Effect::Exit(0)));
    }

    /// `psflip upgrade` while an upgrade is in flight waits for its outcome.
    #[test]
    fn upgrade_request_in_flight_gets_that_upgrades_outcome() {
        for succeeds in [true, false] {
            let mut m = serving();
            let (a, b) = (ClientId(1), ClientId(2));
            let ask = |client| Event::ControlRequest {
                client,
                request: Request::Upgrade,
            };
            m.step(t(2000), ask(a));
            assert!(m.upgrading());
            let out = no_logs(m.step(t(2010), ask(b)));
            assert!(out.is_empty(), "{out:?}");
            let successor = ProcId(2);
            let out = if succeeds {
                m.step(t(3000), Event::SuccessorReady { id: successor })
            } else {
                m.step(
                    t(3000),
                    Event::ProcessExited {
                        id: successor,
                        status: ExitStatus::Code(1),
                    },
                )
            };
            let replies: Vec<_> = out
                .iter()
                .filter_map(|e| match e {
                    Effect::Reply { client, reply } => Some((*client, reply.clone())),
                    _ => None,
                })
                .collect();
            assert_eq!(replies.len(), 2, "{out:?}");
            assert_eq!(replies[0].1, replies[1].1);
            assert_eq!(
                matches!(replies[0].1, Reply::Upgraded { .. }),
                succeeds,
                "{replies:?}"
            );
        }
    }
}

#[cfg(test)]
mod proxy_tests {
    //! The proxy's part of the protocol (contract step 7). The rest of the machine is
    //! covered by the property tests and the simulation in `tests/sim`.

    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn settings(generation: Generation, pidfile: bool) -> Settings {
        Settings {
            generation,
            upgrade_signal: Signal::SIGHUP,
            upgrade_timeout: 30 * SEC,
            shutdown_delay: 10 * SEC,
            shutdown_signal: Signal::SIGTERM,
            shutdown_timeout: 5 * SEC,
            health: Health::Alive { timeout: SEC },
            pidfile,
        }
    }

    fn at(secs: u64) -> Instant {
        Instant::from_origin(Duration::from_secs(secs))
    }

    /// The effects without the log lines and service-manager notes.
    fn act(m: &mut Machine, secs: u64, event: Event) -> Vec<Effect> {
        m.step(at(secs), event)
            .into_iter()
            .filter(|e| !matches!(e, Effect::Log(_) | Effect::Notify(_)))
            .collect()
    }

    fn has(effects: &[Effect], wanted: &Effect) -> bool {
        effects.contains(wanted)
    }

    /// A first generation with a proxy, serving since t=1; child #1.
    fn serving() -> Machine {
        let mut m = Machine::new(settings(Generation::First, false)).with_proxy(true);
        assert!(!has(&act(&mut m, 0, Event::Started), &Effect::ProxyAccept));
        assert_eq!(act(&mut m, 1, Event::Tick), vec![Effect::ProxyAccept]);
        assert_eq!(*m.phase(), Phase::Serving);
        m
    }

    /// `serving()`, upgraded at t=2: successor #2.
    fn upgrading() -> Machine {
        let mut m = serving();
        let out = act(&mut m, 2, Event::SignalReceived(Signal::SIGHUP));
        assert!(has(
            &out,
            &Effect::Spawn {
                id: ProcId(2),
                role: Role::Successor
            }
        ));
        assert!(!has(&out, &Effect::ProxyStopAccepting));
        m
    }

    fn term(id: u64) -> Effect {
        Effect::Signal {
            id: ProcId(id),
            signal: Signal::SIGTERM,
            group: false,
        }
    }

    #[test]
    fn first_generation_accepts_once_healthy_and_pidfile_written() {
        let mut m = Machine::new(settings(Generation::First, true)).with_proxy(true);
        act(&mut m, 0, Event::Started);
        assert_eq!(act(&mut m, 1, Event::Tick), vec![Effect::WritePidfile]);
        assert_eq!(
            act(&mut m, 1, Event::PidfileWritten),
            vec![Effect::ProxyAccept]
        );
    }

    #[test]
    fn successor_accepts_right_before_it_reports_ready() {
        let mut m = Machine::new(settings(Generation::Successor, false)).with_proxy(true);
        act(&mut m, 0, Event::Started);
        assert_eq!(
            act(&mut m, 1, Event::Tick),
            vec![Effect::ProxyAccept, Effect::ReportReady]
        );
    }

    #[test]
    fn old_generation_stops_accepting_and_signals_once_drained() {
        let mut m = upgrading();
        let out = act(&mut m, 3, Event::SuccessorReady { id: ProcId(2) });
        assert_eq!(out, vec![Effect::ProxyStopAccepting]);
        assert_eq!(m.deadline(), Some(at(13)), "shutdown.delay still bounds it");
        assert_eq!(act(&mut m, 4, Event::ProxyDrained), vec![term(1)]);
        assert_eq!(m.deadline(), Some(at(9)), "then shutdown.timeout");
        assert_eq!(
            act(
                &mut m,
                5,
                Event::ProcessExited {
                    id: ProcId(1),
                    status: ExitStatus::Signaled(15)
                }
            ),
            vec![
                Effect::Signal {
                    id: ProcId(1),
                    signal: Signal::SIGKILL,
                    group: true
                },
                Effect::Exit(0)
            ],
            "drained and the child gone: exit 0, socket files kept"
        );
    }

    #[test]
    fn shutdown_delay_still_bounds_the_wait_for_connections() {
        let mut m = upgrading();
        act(&mut m, 3, Event::SuccessorReady { id: ProcId(2) });
        assert_eq!(act(&mut m, 13, Event::Tick), vec![term(1)]);
        let out = act(
            &mut m,
            14,
            Event::ProcessExited {
                id: ProcId(1),
                status: ExitStatus::Code(0),
            },
        );
        assert!(!out.iter().any(|e| matches!(e, Effect::Exit(_))), "{out:?}");
        assert_eq!(
            m.deadline(),
            Some(at(18)),
            "handover + shutdown.delay + shutdown.timeout"
        );
        assert_eq!(act(&mut m, 15, Event::ProxyDrained), vec![Effect::Exit(0)]);
    }

    #[test]
    fn connections_left_open_are_cut_at_delay_plus_timeout() {
        let mut m = upgrading();
        act(&mut m, 3, Event::SuccessorReady { id: ProcId(2) });
        act(&mut m, 13, Event::Tick);
        act(
            &mut m,
            14,
            Event::ProcessExited {
                id: ProcId(1),
                status: ExitStatus::Code(0),
            },
        );
        assert_eq!(act(&mut m, 17, Event::Tick), vec![]);
        assert_eq!(act(&mut m, 18, Event::Tick), vec![Effect::Exit(0)]);
        assert_eq!(*m.phase(), Phase::Done);
    }

    #[test]
    fn drained_before_the_handover_is_ignored() {
        let mut m = upgrading();
        assert_eq!(act(&mut m, 3, Event::ProxyDrained), vec![]);
        act(&mut m, 4, Event::SuccessorReady { id: ProcId(2) });
        assert_eq!(m.deadline(), Some(at(14)));
    }

    #[test]
    fn a_failed_upgrade_leaves_the_old_generation_accepting() {
        let mut m = upgrading();
        let out = act(
            &mut m,
            3,
            Event::ProcessExited {
                id: ProcId(2),
                status: ExitStatus::Code(1),
            },
        );
        assert_eq!(out, vec![], "no accept change, no socket removal");
        assert_eq!(*m.phase(), Phase::Serving);
        act(&mut m, 4, Event::SignalReceived(Signal::SIGHUP));
        assert_eq!(
            act(&mut m, 5, Event::SuccessorReady { id: ProcId(3) }),
            vec![Effect::ProxyStopAccepting]
        );
    }

    #[test]
    fn socket_files_go_when_the_service_stops_for_good() {
        let mut m = serving();
        let out = act(
            &mut m,
            3,
            Event::ProcessExited {
                id: ProcId(1),
                status: ExitStatus::Code(3),
            },
        );
        assert_eq!(
            &out[1..],
            &[Effect::RemoveProxySockets, Effect::Exit(3)],
            "{out:?}"
        );

        // Never healthy: the service stops for good too.
        let mut m = Machine::new(settings(Generation::First, false)).with_proxy(true);
        act(&mut m, 0, Event::Started);
        let out = act(
            &mut m,
            0,
            Event::ProcessExited {
                id: ProcId(1),
                status: ExitStatus::Code(1),
            },
        );
        assert!(has(&out, &Effect::RemoveProxySockets), "{out:?}");

        // A successor that took over is the service, once its predecessor is gone.
        let mut m = Machine::new(settings(Generation::Successor, false)).with_proxy(true);
        act(&mut m, 0, Event::Started);
        act(&mut m, 1, Event::Tick);
        act(&mut m, 1, Event::PredecessorExited);
        let out = act(
            &mut m,
            2,
            Event::ProcessExited {
                id: ProcId(1),
                status: ExitStatus::Code(0),
            },
        );
        assert!(has(&out, &Effect::RemoveProxySockets), "{out:?}");
    }

    #[test]
    fn a_failed_successor_leaves_the_socket_files_alone() {
        let mut m = Machine::new(settings(Generation::Successor, false)).with_proxy(true);
        act(&mut m, 0, Event::Started);
        let out = act(
            &mut m,
            0,
            Event::ProcessExited {
                id: ProcId(1),
                status: ExitStatus::Code(1),
            },
        );
        assert!(!has(&out, &Effect::RemoveProxySockets), "{out:?}");
        assert!(has(&out, &Effect::Exit(1)));

        let mut m = Machine::new(settings(Generation::Successor, false)).with_proxy(true);
        act(&mut m, 0, Event::Started);
        let out = act(&mut m, 30, Event::Tick);
        assert!(!has(&out, &Effect::ProxyAccept), "{out:?}");
        let out = act(
            &mut m,
            31,
            Event::ProcessExited {
                id: ProcId(1),
                status: ExitStatus::Signaled(15),
            },
        );
        assert!(!has(&out, &Effect::RemoveProxySockets), "{out:?}");
    }

    #[test]
    fn aborted_upgrade_is_a_final_stop() {
        let mut m = upgrading();
        act(&mut m, 3, Event::SignalReceived(Signal::SIGTERM));
        act(
            &mut m,
            4,
            Event::ProcessExited {
                id: ProcId(2),
                status: ExitStatus::Signaled(15),
            },
        );
        let out = act(
            &mut m,
            5,
            Event::ProcessExited {
                id: ProcId(1),
                status: ExitStatus::Signaled(15),
            },
        );
        assert!(has(&out, &Effect::RemoveProxySockets), "{out:?}");
        assert_eq!(out.last(), Some(&Effect::Exit(0)));
    }

    #[test]
    fn without_a_proxy_nothing_changes() {
        let mut m = Machine::new(settings(Generation::First, false));
        act(&mut m, 0, Event::Started);
        assert_eq!(act(&mut m, 1, Event::Tick), vec![]);
        act(&mut m, 2, Event::SignalReceived(Signal::SIGHUP));
        assert_eq!(
            act(&mut m, 3, Event::SuccessorReady { id: ProcId(2) }),
            vec![]
        );
        assert_eq!(act(&mut m, 4, Event::ProxyDrained), vec![]);
        assert_eq!(act(&mut m, 13, Event::Tick), vec![term(1)]);
        let out = act(
            &mut m,
            14,
            Event::ProcessExited {
                id: ProcId(1),
                status: ExitStatus::Code(0),
            },
        );
        assert_eq!(out.last(), Some(&Effect::Exit(0)));
        assert!(!has(&out, &Effect::RemoveProxySockets));
    }
}

#[cfg(test)]
mod readiness_tests {
    //! `[healthcheck.notify]` and `[healthcheck.docker]`: the events that make a
    //! child healthy, and how a child that never was is stopped.

    use super::*;

    const CHILD: ProcId = ProcId(1);

    fn machine(generation: Generation, health: Health) -> Machine {
        let mut m = Machine::new(Settings {
            generation,
            upgrade_signal: Signal::SIGHUP,
            upgrade_timeout: Duration::from_secs(10),
            shutdown_delay: Duration::ZERO,
            shutdown_signal: Signal::SIGTERM,
            shutdown_timeout: Duration::from_secs(5),
            health,
            pidfile: false,
        });
        m.step(Instant::ZERO, Event::Started);
        m
    }

    fn t(ms: u64) -> Instant {
        Instant::from_origin(Duration::from_millis(ms))
    }

    fn no_logs(effects: Vec<Effect>) -> Vec<Effect> {
        effects
            .into_iter()
            .filter(|e| !matches!(e, Effect::Log(_) | Effect::Notify(_)))
            .collect()
    }

    fn logs(effects: &[Effect]) -> Vec<&str> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Log(line) => Some(line.as_str()),
                _ => None,
            })
            .collect()
    }

    fn notified(id: ProcId, ready: bool, status: Option<&str>) -> Event {
        Event::ChildNotified {
            id,
            ready,
            status: status.map(str::to_owned),
        }
    }

    fn inspected(inspection: Inspection) -> Event {
        Event::ContainerInspected {
            container: "app-green".into(),
            inspection,
        }
    }

    fn found(status: &str, health: Option<&str>) -> Inspection {
        Inspection::Found {
            status: status.into(),
            health: health.map(str::to_owned),
            healthcheck: true,
        }
    }

    fn without_healthcheck(status: &str) -> Inspection {
        Inspection::Found {
            status: status.into(),
            health: None,
            healthcheck: false,
        }
    }

    #[test]
    fn notify_ready_makes_the_child_healthy_and_status_is_logged() {
        let mut m = machine(Generation::Successor, Health::Notify);
        // Only the upgrade timeout is due: no polling.
        assert_eq!(m.deadline(), Some(t(10_000)));
        let out = m.step(t(100), notified(CHILD, false, Some("loading")));
        assert_eq!(logs(&out), ["child status: loading"]);
        assert!(!m.healthy());
        // Another process's id (a probe, a stale child) does not count.
        assert!(no_logs(m.step(t(150), notified(ProcId(7), true, None))).is_empty());
        let out = no_logs(m.step(t(200), notified(CHILD, true, Some("up"))));
        assert_eq!(out, vec![Effect::ReportReady]);
        assert!(m.healthy());
        // A second READY=1 changes nothing.
        assert!(no_logs(m.step(t(300), notified(CHILD, true, None))).is_empty());
    }

    #[test]
    fn notify_silence_until_the_timeout_kills_the_child() {
        let mut m = machine(Generation::Successor, Health::Notify);
        assert!(no_logs(m.step(t(9_999), Event::Tick)).is_empty());
        let out = no_logs(m.step(t(10_000), Event::Tick));
        assert_eq!(
            out,
            vec![Effect::Signal {
                id: CHILD,
                signal: Signal::SIGKILL,
                group: true
            }]
        );
    }

    #[test]
    fn notify_ready_means_nothing_with_another_healthcheck() {
        let mut m = machine(
            Generation::First,
            Health::Alive {
                timeout: Duration::from_secs(3),
            },
        );
        m.step(t(10), notified(CHILD, true, None));
        assert!(!m.healthy());
    }

    #[test]
    fn docker_polls_until_healthy_one_inspection_at_a_time() {
        let mut m = machine(
            Generation::First,
            Health::Docker {
                interval: Duration::from_secs(1),
            },
        );
        assert_eq!(m.deadline(), Some(t(0)));
        assert_eq!(
            no_logs(m.step(t(0), Event::Tick)),
            vec![Effect::InspectContainer]
        );
        // In flight: nothing new before it is abandoned.
        assert_eq!(m.deadline(), Some(t(1000)));
        let out = m.step(t(20), inspected(Inspection::Missing));
        assert_eq!(
            logs(&out),
            ["docker healthcheck: container app-green does not exist (yet)"]
        );
        assert_eq!(m.deadline(), Some(t(1000)));
        assert_eq!(
            no_logs(m.step(t(1000), Event::Tick)),
            vec![Effect::InspectContainer]
        );
        // The same answer is not logged twice.
        assert!(m.step(t(1010), inspected(Inspection::Missing)).is_empty());
        m.step(t(2000), Event::Tick);
        m.step(t(2010), inspected(found("running", Some("starting"))));
        assert!(!m.healthy());
        // Created, not started: no health state yet, and not a failure.
        m.step(t(2500), Event::Tick);
        m.step(t(2510), inspected(found("created", None)));
        assert_eq!(m.phase(), &Phase::Starting);
        assert!(!m.healthy());
        // No answer within the interval: abandoned, then the next one starts.
        m.step(t(3000), Event::Tick);
        assert_eq!(
            no_logs(m.step(t(4000), Event::Tick)),
            vec![Effect::AbandonInspection]
        );
        // A late answer to an abandoned inspection is ignored.
        m.step(t(4001), inspected(found("running", Some("healthy"))));
        assert!(!m.healthy());
        assert_eq!(
            no_logs(m.step(t(4001), Event::Tick)),
            vec![Effect::InspectContainer]
        );
        let out = m.step(t(4010), inspected(found("running", Some("healthy"))));
        assert!(m.healthy());
        assert!(logs(&out).contains(&"child is healthy; serving"));
        assert_eq!(m.phase(), &Phase::Serving);
    }

    #[test]
    fn docker_failures_stop_the_child_gracefully_at_once() {
        for (inspection, reason) in [
            (
                found("running", Some("unhealthy")),
                "container app-green is unhealthy",
            ),
            (
                found("exited", Some("unhealthy")),
                "container app-green has stopped (exited)",
            ),
            (
                without_healthcheck("dead"),
                "container app-green has stopped (dead)",
            ),
            (
                without_healthcheck("running"),
                "container app-green has no HEALTHCHECK",
            ),
        ] {
            let mut m = machine(
                Generation::Successor,
                Health::Docker {
                    interval: Duration::from_secs(1),
                },
            );
            m.step(t(0), Event::Tick);
            let out = m.step(t(50), inspected(inspection.clone()));
            assert!(
                logs(&out).iter().any(|l| l.contains(reason)),
                "{inspection:?}: {out:?}"
            );
            // shutdown.signal to the docker client (it stops its container), not
            // SIGKILL; SIGKILL to its group after min(shutdown.timeout, grace).
            assert_eq!(
                no_logs(out),
                vec![Effect::Signal {
                    id: CHILD,
                    signal: Signal::SIGTERM,
                    group: false
                }]
            );
            assert_eq!(m.deadline(), Some(t(50) + GIVE_UP_GRACE));
            assert_eq!(
                no_logs(m.step(t(50) + GIVE_UP_GRACE, Event::Tick)),
                vec![Effect::Signal {
                    id: CHILD,
                    signal: Signal::SIGKILL,
                    group: true
                }]
            );
            let out = no_logs(m.step(
                t(2100),
                Event::ProcessExited {
                    id: CHILD,
                    status: ExitStatus::Signaled(9),
                },
            ));
            // The old generation hears why.
            assert!(
                matches!(&out[..], [_, Effect::ReportFailure(why), Effect::Exit(1)] if why.contains(reason)),
                "{out:?}"
            );
        }
    }

    #[test]
    fn docker_timeout_says_what_the_last_check_found() {
        let mut m = machine(
            Generation::Successor,
            Health::Docker {
                interval: Duration::from_secs(4),
            },
        );
        let unreachable = || {
            inspected(Inspection::Failed(
                "cannot reach the Docker engine at /nowhere/docker.sock: no such file or directory"
                    .into(),
            ))
        };
        for at in [0, 4000] {
            m.step(t(at), Event::Tick);
            m.step(t(at + 1), unreachable());
        }
        m.step(t(8000), Event::Tick);
        // In flight at the timeout: abandoned, and the child stopped gracefully.
        let out = m.step(t(10_000), Event::Tick);
        assert!(
            logs(&out).iter().any(|l| l.contains(
                "within upgrade.timeout (10s); last check: cannot reach the Docker engine at /nowhere/docker.sock"
            )),
            "{out:?}"
        );
        assert_eq!(
            no_logs(out),
            vec![
                Effect::AbandonInspection,
                Effect::Signal {
                    id: CHILD,
                    signal: Signal::SIGTERM,
                    group: false
                }
            ]
        );
    }

    #[test]
    fn listen_socket_files_go_only_when_the_service_stops_for_good() {
        let mut m = machine(
            Generation::First,
            Health::Alive {
                timeout: Duration::ZERO,
            },
        )
        .with_listen(true);
        m.step(t(0), Event::Tick);
        assert_eq!(m.phase(), &Phase::Serving);
        let out = no_logs(m.step(
            t(10),
            Event::ProcessExited {
                id: CHILD,
                status: ExitStatus::Code(0),
            },
        ));
        assert!(out.contains(&Effect::RemoveProxySockets), "{out:?}");

        // A handover leaves them to the successor.
        let mut m = machine(
            Generation::First,
            Health::Alive {
                timeout: Duration::ZERO,
            },
        )
        .with_listen(true);
        m.step(t(0), Event::Tick);
        m.step(t(1), Event::SignalReceived(Signal::SIGHUP));
        m.step(t(2), Event::SuccessorReady { id: ProcId(2) });
        let out = no_logs(m.step(
            t(10),
            Event::ProcessExited {
                id: CHILD,
                status: ExitStatus::Signaled(15),
            },
        ));
        assert_eq!(
            out,
            vec![
                Effect::Signal {
                    id: CHILD,
                    signal: Signal::SIGKILL,
                    group: true
                },
                Effect::Exit(0)
            ]
        );
    }
}
