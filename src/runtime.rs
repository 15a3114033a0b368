//! The event loop: turns OS happenings into machine events and carries out the
//! machine's effects. It makes no protocol decision of its own.
//!
//! 1. Before anything else (in `main`), every signal is blocked
//!    ([`effects::signals::block_all`]) and inherited fds are made close-on-exec;
//!    a first generation gives every signal its default disposition
//!    ([`effects::signals::default_dispositions`]).
//! 2. [`run`] opens the signalfd, resolves nothing further, and feeds
//!    `Event::Started` to the machine.
//! 3. Each loop turn polls the signalfd, the readiness pipe of a successor in flight
//!    and (in a successor) the pipe to the previous generation, with the machine's
//!    [`Machine::deadline`] as the timeout, then [`turn`] turns what it finds into
//!    events: readiness bytes first (a successor that reports ready and then dies
//!    has still reported ready), then signals (SIGCHLD becomes a drain of exited
//!    children, each reported *before* it is reaped), then a `Tick` if the deadline
//!    has passed. Which event each happening is, is [`source::Psflip`]'s decoding,
//!    written over the [`Source`] trait: [`Live`] answers from the real OS.
//! 4. [`drive`] feeds one event and interprets the effects through the [`Os`] trait;
//!    the answers of effects that can fail come back as events. The simulation in
//!    `tests/sim` runs the same `turn`, `Psflip` decoding and `drive` over a
//!    simulated kernel (its own `Source` and `Os`).

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::kill;
use nix::unistd::Pid;

use crate::Signal;
use crate::effects::control::{self, Received};
use crate::effects::docker::Inspector;
use crate::effects::listen;
use crate::effects::notify::{self, NotifySocket};
use crate::effects::readiness::{self, ToPredecessor};
use crate::effects::sd_notify;
use crate::effects::signals::Signals;
use crate::effects::standby::{self, Standby};
use crate::effects::{EffectError, pidfile, reap, resident, spawn, subreaper};
use crate::handoff::Handoff;
use crate::log::{Level, Record};
use crate::machine::{
    ClientId, Effect, Event, ExitStatus, Instant, Log, Machine, Notify, Origin, ProbeKind, ProcId,
    Reply, Request, Role, Settings, Status, Trigger,
};
use crate::probe::{self, Check};
use crate::proxy::Proxy;
use crate::trace::{Header, Recorder};

/// The OS as the effects see it. `LinuxOs` is the real one; the simulation has its
/// own.
pub trait Os {
    /// Start a process in `role`.
    fn spawn(&mut self, id: ProcId, role: Role) -> Result<(), String>;
    /// Send `signal` to the process, or to the group it leads. Gone is not an error.
    fn signal(&mut self, id: ProcId, signal: Signal, group: bool);
    /// Send a real-time signal to the process. Gone is not an error.
    fn signal_realtime(&mut self, _id: ProcId, _signo: i32) {}
    fn write_pidfile(&mut self) -> Result<(), String>;
    /// Remove the pidfile if it names this psflip or `exited_successor`.
    fn remove_pidfile(&mut self, exited_successor: Option<ProcId>);
    /// Make the control socket's name this generation's (bind it first if need
    /// be); leave a name already ours as it is.
    fn claim_control(&mut self);
    fn report_ready(&mut self);
    /// (Successor) tell the old generation why we give up.
    fn report_failure(&mut self, _reason: &str) {}
    /// Answer a control client and close its connection.
    fn reply(&mut self, _client: ClientId, _reply: Reply) {}
    /// Tell the service manager (sd_notify), if one listens.
    fn notify(&mut self, _message: Notify) {}
    fn log(&mut self, line: &str);
    /// Keep log lines back (`true`) until told otherwise (`false`), then write
    /// them, in order.
    fn hold_logs(&mut self, _on: bool) {}
    /// Send `signal` to every process that re-parented to this psflip and still
    /// runs (never one it started); how many it signalled.
    fn signal_escaped(&mut self, _signal: Signal) -> usize {
        0
    }
    /// A log line with its level and event name; by default, just its text.
    fn record(&mut self, log: &Log) {
        self.log(log.as_str());
    }
    /// An upgrade starts (for the upgrade history).
    fn upgrade_began(&mut self, _trigger: Trigger) {}
    /// The upgrade in flight ended.
    fn upgrade_ended(&mut self, _outcome: Result<(), String>) {}
    /// Start accepting on the proxy listeners. (No-op without a proxy.)
    fn proxy_accept(&mut self) {}
    /// Stop accepting; `Event::ProxyDrained` follows once the connections closed.
    fn proxy_stop_accepting(&mut self) {}
    /// Remove the Unix socket files this service's proxy listeners and `[[listen]]`
    /// sockets created.
    fn remove_proxy_sockets(&mut self) {}
    /// Ask the Docker engine about the container; `Event::ContainerInspected`
    /// follows (`None` here: the answer comes later, from the event loop).
    fn inspect_container(&mut self) -> Option<Event> {
        None
    }
    /// Forget the inspection in flight.
    fn abandon_inspection(&mut self) {}
    /// Remove the socket files of inherited listeners the configuration dropped.
    fn remove_dropped_sockets(&mut self) {}
    /// Whether steps are recorded ([`crate::trace`]).
    fn tracing(&self) -> bool {
        false
    }
    /// Record one step of the machine.
    fn trace(&mut self, _now: Instant, _event: &Event, _effects: &[Effect]) {}
}

/// Feed `event` to the machine and carry out its effects in order; the answers of
/// effects that can fail are fed back, in order, after the batch. Returns the exit
/// status once the machine asked to exit.
pub fn drive(machine: &mut Machine, now: Instant, event: Event, os: &mut impl Os) -> Option<i32> {
    let mut queue = VecDeque::from([event]);
    let mut exit = None;
    while let Some(event) = queue.pop_front() {
        let traced = os.tracing().then(|| event.clone());
        let effects = machine.step(now, event);
        if let Some(event) = traced {
            os.trace(now, &event, &effects);
        }
        // While a step starts processes, its log lines (the machine's and the
        // spawns' own, in their order) wait until the last one is started: a
        // write to stderr can wake the log's reader on this CPU, which would
        // then run before our clone.
        let mut spawns_left = effects
            .iter()
            .filter(|e| matches!(e, Effect::Spawn { .. }))
            .count();
        if spawns_left > 0 {
            os.hold_logs(true);
        }
        for effect in effects {
            match effect {
                Effect::Spawn { id, role } => {
                    queue.push_back(match os.spawn(id, role) {
                        Ok(()) => Event::Spawned { id },
                        Err(reason) => Event::SpawnFailed { id, reason },
                    });
                    spawns_left -= 1;
                    if spawns_left == 0 {
                        os.hold_logs(false);
                    }
                }
                Effect::Signal { id, signal, group } => os.signal(id, signal, group),
                Effect::SignalRealtime { id, signo } => os.signal_realtime(id, signo),
                Effect::WritePidfile => queue.push_back(match os.write_pidfile() {
                    Ok(()) => Event::PidfileWritten,
                    Err(reason) => Event::PidfileFailed { reason },
                }),
                Effect::RemovePidfile { exited_successor } => os.remove_pidfile(exited_successor),
                Effect::ClaimControl => os.claim_control(),
                Effect::ReportReady => os.report_ready(),
                Effect::ReportFailure(reason) => os.report_failure(&reason),
                Effect::Reply { client, reply } => os.reply(client, reply),
                Effect::Notify(message) => os.notify(message),
                Effect::ProxyAccept => os.proxy_accept(),
                Effect::ProxyStopAccepting => os.proxy_stop_accepting(),
                Effect::RemoveProxySockets => os.remove_proxy_sockets(),
                Effect::InspectContainer => {
                    if let Some(answer) = os.inspect_container() {
                        queue.push_back(answer);
                    }
                }
                Effect::AbandonInspection => os.abandon_inspection(),
                Effect::RemoveDroppedSockets => os.remove_dropped_sockets(),
                Effect::SignalEscaped { signal } => queue.push_back(Event::EscapedSignalled {
                    count: os.signal_escaped(signal),
                }),
                Effect::Log(line) => os.record(&line),
                Effect::UpgradeBegan(trigger) => os.upgrade_began(trigger),
                Effect::UpgradeEnded(outcome) => os.upgrade_ended(outcome),
                Effect::Exit(code) => exit = Some(code),
            }
        }
    }
    exit
}

/// Everything the runtime needs to run one generation, resolved from the
/// configuration and the environment by the CLI.
pub struct RunSpec {
    pub settings: Settings,
    pub cmd: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workdir: Option<PathBuf>,
    /// The `[healthcheck.command]` command, if that is the healthcheck.
    pub probe_cmd: Option<Vec<String>>,
    /// The `[healthcheck.tcp]` or `[healthcheck.http]` check, if that is the
    /// healthcheck: run as psflip's own `__probe` (see [`probe_argv`]).
    pub probe_check: Option<Check>,
    pub pidfile: Option<PathBuf>,
    pub quiet: bool,
    /// `log_format`, passed on to psflip's own probe.
    pub log_format: crate::log::Format,
    /// psflip's own binary, as resolved at start-up.
    pub exe: PathBuf,
    pub arg0: OsString,
    pub args: Vec<OsString>,
    /// This generation's number (1 for the first).
    pub generation: u64,
    /// Whether `AB` yields its second value in this generation.
    pub ab_second: bool,
    /// (Successor) the write end of the readiness pipe.
    pub predecessor: Option<ToPredecessor>,
    /// (Successor) the previous generation's `upgrade.timeout` (from the
    /// [`Handoff`]): our child must be healthy within it too.
    pub predecessor_upgrade_timeout: Option<std::time::Duration>,
    /// The upgrade history handed over by the previous generation (JSON; empty
    /// for a first generation).
    pub history: String,
    /// The `[[proxy]]` engine, already running (listeners open, not accepting).
    pub proxy: Option<Proxy>,
    /// (`[healthcheck.notify]`) the kind of notify socket each app child gets.
    pub notify: Option<notify::Kind>,
    /// (`[healthcheck.docker]`) the container's inspections.
    pub docker: Option<Inspector>,
    /// The `[[listen]]` sockets, open, and their names: every app child gets them
    /// as fds 3, 4… with `LISTEN_FDS`, `LISTEN_PID` and `LISTEN_FDNAMES`; every
    /// successor inherits them.
    pub listen: Vec<(listen::Listener, String)>,
    /// The control socket, not bound yet: the first generation binds it and
    /// takes the service's name once its first child is started, a successor
    /// when it reports ready.
    pub control: Option<control::Listener>,
    /// `[upgrade] standby`: keep a successor started ahead of time
    /// ([`standby`]), which an upgrade wakes instead of starting one.
    pub standby: bool,
}

/// The real OS.
pub struct LinuxOs {
    spec: RunSpec,
    /// The service's last upgrades (`psflip status`), handed to each successor.
    history: crate::status::History,
    my_pid: u32,
    pids: BTreeMap<ProcId, Pid>,
    ids: BTreeMap<Pid, ProcId>,
    /// Read end of the readiness pipe of the successor in flight.
    successor_pipe: Option<(ProcId, OwnedFd)>,
    /// A readiness pipe made at start-up, for the first upgrade.
    spare_pipe: Option<(OwnedFd, OwnedFd)>,
    /// What the successor wrote that is not a whole message yet.
    successor_said: Vec<u8>,
    /// The control socket (`psflip upgrade`, `psflip status`) and its clients.
    control: Option<control::Listener>,
    /// Out of fds or memory: the listener is not polled until then.
    control_paused_until: Option<Instant>,
    /// Refused and failed accepts not reported yet, summarised in one line per
    /// [`REFUSALS_REPORT_EVERY`].
    refusals: Refusals,
    clients: BTreeMap<ClientId, control::Connection>,
    /// Clients whose request was read: they wait for the answer, unpolled.
    answering: std::collections::BTreeSet<ClientId>,
    next_client: u64,
    /// When this generation started, for `psflip status`.
    started: std::time::Instant,
    /// `$NOTIFY_SOCKET`, when a service manager listens.
    notify_socket: Option<std::os::unix::net::SocketAddr>,
    /// (Successor) the pid of the generation that started us.
    predecessor_pid: Option<u32>,
    /// Every successor started, kept after it is reaped: only ever compared with
    /// the pidfile's contents (`Effect::RemovePidfile`), never signalled.
    successors: BTreeMap<ProcId, Pid>,
    /// `PSFLIP_TRACE`: where this generation's steps are recorded.
    trace: Option<Recorder>,
    /// (`[healthcheck.notify]`) the app child's notify socket, until it is reaped.
    child_notify: Option<(ProcId, NotifySocket)>,
    /// The standby successor waiting (`[upgrade] standby`): how an upgrade's
    /// `Spawn` of the successor is carried out when there is one. The machine
    /// never hears of it: it is the successor once woken, nothing before.
    standby: Option<Standby>,
    /// No more standbys in this generation, and why: one could not start, or
    /// exited while it waited (upgrades start their successor cold).
    standby_off: Option<String>,
    /// The standby last woken as a successor (for `psflip status`).
    standby_woken: Option<Pid>,
    /// Standbys given up on (gone, or let go), until they are reaped.
    dismissed: std::collections::BTreeSet<Pid>,
}

impl LinuxOs {
    pub fn new(mut spec: RunSpec) -> LinuxOs {
        let history = crate::status::History::inherited(Some(spec.history.as_str()));
        let control = spec.control.take();
        // The old generation spawned us itself: our parent, for as long as it runs.
        let predecessor_pid = spec
            .predecessor
            .as_ref()
            .map(|_| nix::unistd::getppid().as_raw() as u32);
        LinuxOs {
            spec,
            my_pid: std::process::id(),
            pids: BTreeMap::new(),
            ids: BTreeMap::new(),
            successor_pipe: None,
            spare_pipe: readiness::pipe().ok(),
            successor_said: Vec::new(),
            control,
            control_paused_until: None,
            refusals: Refusals::default(),
            clients: BTreeMap::new(),
            answering: std::collections::BTreeSet::new(),
            next_client: 0,
            started: std::time::Instant::now(),
            history,
            notify_socket: sd_notify::socket_from_env(),
            predecessor_pid,
            successors: BTreeMap::new(),
            trace: None,
            child_notify: None,
            standby: None,
            standby_off: None,
            standby_woken: None,
            dismissed: std::collections::BTreeSet::new(),
        }
    }

    fn say(&self, line: &str) {
        crate::log::logger().info("note", line);
    }

    fn warn(&self, event: &'static str, line: &str) {
        crate::log::logger().warn(event, line);
    }

    fn spawn_role(&mut self, id: ProcId, role: Role) -> Result<Pid, EffectError> {
        match role {
            Role::App => self.spawn_app(id),
            Role::Probe { kind, timeout } => self.spawn_probe(kind, timeout),
            Role::Successor => self.spawn_successor(id),
        }
    }

    /// The app child, with its notify socket and activated listeners.
    fn spawn_app(&mut self, id: ProcId) -> Result<Pid, EffectError> {
        let notify = match self.spec.notify {
            Some(kind) => Some(NotifySocket::bind(kind, &id.0.to_string())?),
            None => None,
        };
        // Socket activation (sd_listen_fds(3)): LISTEN_PID is written by
        // the child itself, the only one that knows its pid before exec.
        let pass_fds: Vec<RawFd> = self
            .spec
            .listen
            .iter()
            .map(|(l, _)| l.fd.as_raw_fd())
            .collect();
        let mut env = self.spec.env.clone();
        if !pass_fds.is_empty() {
            let names: Vec<&str> = self.spec.listen.iter().map(|(_, n)| &n[..]).collect();
            env.push(("LISTEN_FDS".into(), pass_fds.len().to_string()));
            env.push(("LISTEN_FDNAMES".into(), names.join(":")));
        }
        let pid = spawn::app(&spawn::AppSpec {
            argv: &self.spec.cmd,
            env: &env,
            workdir: self.spec.workdir.as_deref(),
            quiet_stdio: false,
            notify_socket: notify.as_ref().map(|s| s.env_value().as_os_str()),
            pass_fds: &pass_fds,
            pid_env: if pass_fds.is_empty() {
                &[]
            } else {
                &["LISTEN_PID"]
            },
        })?;
        if let Some(socket) = notify {
            self.child_notify = Some((id, socket));
        }
        Ok(pid)
    }

    /// One run of the check: the command, or psflip's own tcp/http probe.
    fn spawn_probe(&mut self, kind: ProbeKind, timeout: Duration) -> Result<Pid, EffectError> {
        let argv = match (kind, &self.spec.probe_check) {
            (ProbeKind::Tcp | ProbeKind::Http, Some(check)) => {
                probe_argv(&self.spec, check, timeout)
            }
            _ => self.spec.probe_cmd.clone().unwrap_or_default(),
        };
        spawn::app(&spawn::AppSpec {
            argv: &argv,
            env: &self.spec.env,
            workdir: self.spec.workdir.as_deref(),
            quiet_stdio: true,
            ..Default::default()
        })
    }

    /// The next generation, with its readiness pipe, the listeners it inherits
    /// and the handoff.
    fn spawn_successor(&mut self, id: ProcId) -> Result<Pid, EffectError> {
        if let Some(standby) = self.standby.take() {
            let handoff = self.handoff(standby.ready_fd());
            match standby.wake(&handoff.env()) {
                Ok((pid, r)) => {
                    self.standby_woken = Some(pid);
                    self.successor_pipe = Some((id, r));
                    self.successor_said.clear();
                    self.successors.insert(id, pid);
                    return Ok(pid);
                }
                Err((standby, e)) => {
                    self.warn(
                        "standby_gone",
                        &format!(
                            "cannot wake the standby successor (pid {}): {e}; starting the successor cold",
                            standby.pid
                        ),
                    );
                    // Reaped as one of ours when it has gone.
                    self.dismissed.insert(standby.let_go());
                }
            }
        }
        // The pipe made at start-up, when its fds were low numbers: the
        // successor's spawn then copies only the fds below them (see
        // effects::spawn), however many connections the proxy holds.
        let (r, w) = match self.spare_pipe.take() {
            Some(pipe) => pipe,
            None => readiness::pipe()?,
        };
        let handoff = self.handoff(w.as_raw_fd());
        let pid = spawn::successor(
            &self.spec.exe,
            &self.spec.arg0,
            &self.spec.args,
            &w,
            &handoff.env(),
            &self.inherited_fds(),
        )?;
        // Our copy of the write end goes now, or we would never see EOF.
        drop(w);
        self.successor_pipe = Some((id, r));
        self.successor_said.clear();
        self.successors.insert(id, pid);
        Ok(pid)
    }

    /// The fds a successor inherits at their numbers: the proxy listeners and
    /// the `[[listen]]` sockets.
    fn inherited_fds(&self) -> Vec<RawFd> {
        let (mut listeners, _) = self
            .spec
            .proxy
            .as_ref()
            .map(Proxy::handoff)
            .unwrap_or_default();
        listeners.extend(self.spec.listen.iter().map(|(l, _)| l.fd.as_raw_fd()));
        listeners
    }

    /// What this generation tells its successor, whose readiness pipe's write
    /// end is `ready_fd`.
    fn handoff(&self, ready_fd: RawFd) -> Handoff {
        let (_, named) = self
            .spec
            .proxy
            .as_ref()
            .map(Proxy::handoff)
            .unwrap_or_default();
        let activation_named = self
            .spec
            .listen
            .iter()
            .map(|(l, _)| format!("{}={}", l.fd.as_raw_fd(), l.key))
            .collect::<Vec<_>>()
            .join("\n");
        Handoff::to_successor(
            self.spec.generation,
            self.spec.ab_second,
            self.spec.settings.upgrade_timeout,
            ready_fd,
            named,
            activation_named,
        )
        .with_history(self.history.to_env())
    }

    /// (`[upgrade] standby`, once settled) start a standby successor if this
    /// generation serves and has none. `serving`: the machine's phase is
    /// Serving (a standby started while an upgrade or a stop is in flight
    /// would only be let go again).
    /// Start a standby if one is wanted and there is none; returns whether
    /// one was started.
    fn settle_standby(&mut self, serving: bool) -> bool {
        if !self.spec.standby || self.standby_off.is_some() || self.standby.is_some() || !serving {
            return false;
        }
        let started = readiness::pipe().and_then(|ready| {
            standby::start(
                &self.spec.exe,
                &self.spec.arg0,
                &self.spec.args,
                ready,
                &self.inherited_fds(),
            )
        });
        match started {
            Ok(standby) => {
                crate::log::logger().info(
                    "standby_started",
                    format!(
                        "standby successor started (pid {}): the next upgrade wakes it",
                        standby.pid
                    ),
                );
                self.standby = Some(standby);
                true
            }
            Err(e) => {
                self.standby_off = Some(format!("a standby could not start: {e}"));
                self.warn(
                    "standby_failed",
                    &format!(
                        "cannot start a standby successor: {e}; upgrades start their successor cold"
                    ),
                );
                false
            }
        }
    }

    /// A child that is none of the machine's exited: a standby of ours? Then
    /// it is handled here (and reaped by the caller) and the machine never
    /// hears of it.
    fn standby_exited(&mut self, pid: Pid, status: ExitStatus) -> bool {
        if self.dismissed.remove(&pid) {
            return true;
        }
        if self.standby.as_ref().is_none_or(|s| s.pid != pid) {
            return false;
        }
        self.standby = None;
        self.standby_off = Some(format!("the standby (pid {pid}) exited ({status})"));
        self.warn(
            "standby_exited",
            &format!(
                "the standby successor (pid {pid}) exited ({status}); upgrades start their successor cold"
            ),
        );
        true
    }

    /// Every child this generation started and has not reaped: the machine's,
    /// and its standby (never an escaped process).
    fn started_here(&self) -> std::collections::BTreeSet<i32> {
        self.ids
            .keys()
            .chain(self.standby.as_ref().map(|s| &s.pid))
            .chain(&self.dismissed)
            .map(|p| p.as_raw())
            .collect()
    }

    /// Before this generation exits: kill and reap its standby, if any, and
    /// reap those let go already (SIGKILLed, maybe not reaped yet): none is
    /// left for whoever adopts them.
    fn dismiss_standby(&mut self) {
        if let Some(standby) = self.standby.take() {
            standby.dismiss();
        }
        for pid in std::mem::take(&mut self.dismissed) {
            reap::wait(pid);
        }
    }

    /// `psflip status`: the machine's view, with pids, numbers and clocks.
    fn status_report(&self, status: &Status) -> crate::status::Report {
        crate::status::Report {
            psflip_pid: self.my_pid,
            generation: self.spec.generation,
            phase: status.phase.to_string(),
            child_pid: status
                .child
                .and_then(|id| self.pids.get(&id))
                .map(|pid| pid.as_raw() as u32),
            child_healthy: status.child_healthy,
            uptime_seconds: self.started.elapsed().as_secs(),
            upgrade_in_flight: status.upgrade_in_flight,
            upgrade_timeout_ms: self.spec.settings.upgrade_timeout.as_millis() as u64,
            ab: if self.spec.ab_second { "b" } else { "a" }.to_string(),
            last_upgrade: status.last_upgrade.clone(),
            upgrades: self.history.entries().to_vec(),
            standby: self.spec.standby.then(|| {
                match (&self.standby, &self.standby_off, self.standby_woken) {
                    (Some(_), _, _) => "waiting".to_string(),
                    (None, Some(why), _) => format!("off in this generation: {why}"),
                    (None, None, Some(pid)) if status.upgrade_in_flight => {
                        format!("woken: it is this upgrade's successor (pid {pid})")
                    }
                    (None, None, _) => format!(
                        "not started yet: one starts once this generation has been quiet for {} ms",
                        SETTLE_AFTER.as_millis()
                    ),
                }
            }),
            standby_pid: self.standby.as_ref().map(|s| s.pid.as_raw() as u32),
        }
    }

    /// Forget a reaped process.
    fn forget(&mut self, pid: Pid) -> Option<ProcId> {
        let id = self.ids.remove(&pid)?;
        self.pids.remove(&id);
        if self.successor_pipe.as_ref().is_some_and(|(s, _)| *s == id) {
            self.successor_pipe = None;
        }
        if self.child_notify.as_ref().is_some_and(|(c, _)| *c == id) {
            self.child_notify = None;
        }
        Some(id)
    }
}

/// How long the control socket is left unpolled once accepting failed for want
/// of fds or memory: accepting again at once would only fail again (and spin).
const CONTROL_PAUSE: std::time::Duration = std::time::Duration::from_millis(250);
/// At most one line per this long about refused or failed control connections.
const REFUSALS_REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// Accepts per turn of the loop: a flood of clients cannot starve signals and
/// child exits.
const ACCEPT_BATCH: usize = 32;

/// Control connections refused (another user) or failed (out of fds…) since the
/// last report.
#[derive(Default)]
struct Refusals {
    refused: u64,
    uids: std::collections::BTreeSet<u32>,
    failed: u64,
    last_error: Option<String>,
    last_report: Option<Instant>,
}

impl LinuxOs {
    /// Bind the control socket (if not yet) and rename it over the service's name
    /// ([`Effect::ClaimControl`]).
    fn take_control_name(&mut self) {
        if let Some(listener) = self.control.as_mut()
            && let Err(e) = listener.take_name()
        {
            let line = format!(
                "cannot take over the control socket {}: {e}",
                listener.path().display()
            );
            self.warn("control_failed", &line);
        }
    }

    /// Accept what the control socket has pending: clients of root and our user
    /// become connections; others are refused before anything is read; running
    /// out of fds or memory pauses the listener instead of spinning on it.
    fn accept_control(&mut self, now: Instant) {
        for _ in 0..ACCEPT_BATCH {
            let Some(accepted) = self.control.as_ref().and_then(control::Listener::accept) else {
                break;
            };
            match accepted {
                control::Accepted::Client(conn) => {
                    self.next_client += 1;
                    self.clients.insert(ClientId(self.next_client), conn);
                }
                control::Accepted::Refused { uid } => {
                    self.refusals.refused += 1;
                    self.refusals.uids.extend(uid);
                }
                control::Accepted::Exhausted(e) => {
                    self.refusals.failed += 1;
                    self.refusals.last_error = Some(e.to_string());
                    self.control_paused_until = Some(now + CONTROL_PAUSE);
                    break;
                }
                control::Accepted::Failed(e) => {
                    self.refusals.failed += 1;
                    self.refusals.last_error = Some(e.to_string());
                }
            }
        }
        self.report_refusals(now);
    }

    /// One line for what was refused or failed, at most every
    /// [`REFUSALS_REPORT_EVERY`] (the first at once).
    fn report_refusals(&mut self, now: Instant) {
        let r = &mut self.refusals;
        if r.refused == 0 && r.failed == 0 {
            return;
        }
        if r.last_report
            .is_some_and(|t| now.saturating_since(t) < REFUSALS_REPORT_EVERY)
        {
            return;
        }
        let mut parts = Vec::new();
        if r.refused > 0 {
            let uids: Vec<String> = r.uids.iter().map(u32::to_string).collect();
            parts.push(format!(
                "refused {} connection(s) of uid {} (only root and uid {} may control this psflip)",
                r.refused,
                if uids.is_empty() {
                    "unknown".to_string()
                } else {
                    uids.join(", ")
                },
                nix::unistd::geteuid()
            ));
        }
        if r.failed > 0 {
            parts.push(format!(
                "{} accept(s) failed ({}); pausing {}ms each time",
                r.failed,
                r.last_error.as_deref().unwrap_or("?"),
                CONTROL_PAUSE.as_millis()
            ));
        }
        let every = REFUSALS_REPORT_EVERY.as_secs();
        self.warn(
            "control_refused",
            &format!(
                "control socket: {} (at most one such line per {every}s)",
                parts.join("; ")
            ),
        );
        let r = &mut self.refusals;
        *r = Refusals {
            last_report: Some(now),
            ..Refusals::default()
        };
    }
}

impl Os for LinuxOs {
    fn tracing(&self) -> bool {
        self.trace.is_some()
    }

    fn trace(&mut self, now: Instant, event: &Event, effects: &[Effect]) {
        if let Some(r) = self.trace.as_mut() {
            r.record(now, event, effects);
        }
    }

    fn spawn(&mut self, id: ProcId, role: Role) -> Result<(), String> {
        let pid = self.spawn_role(id, role).map_err(|e| e.to_string())?;
        self.pids.insert(id, pid);
        self.ids.insert(pid, id);
        let what = match role {
            Role::App => "child",
            Role::Successor => "successor",
            Role::Probe { .. } => return Ok(()),
        };
        let event = match role {
            Role::Successor => "successor_started",
            _ => "child_started",
        };
        crate::log::logger().log(
            Record::new(Level::Info, event, format!("started {what} (pid {pid})"))
                .field("pid", pid.as_raw()),
        );
        Ok(())
    }

    fn signal(&mut self, id: ProcId, signal: Signal, group: bool) {
        // Only ids not yet reaped are in the table: a recycled pid is never hit.
        let Some(&pid) = self.pids.get(&id) else {
            return;
        };
        let target = if group {
            Pid::from_raw(-pid.as_raw())
        } else {
            pid
        };
        match kill(target, signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => self.warn(
                "signal_failed",
                &format!("cannot send {} to {target}: {e}", signal.as_str()),
            ),
        }
    }

    fn signal_realtime(&mut self, id: ProcId, signo: i32) {
        let Some(&pid) = self.pids.get(&id) else {
            return;
        };
        // SAFETY: kill(2) with plain integers; nix's Signal cannot name this one.
        if unsafe { libc::kill(pid.as_raw(), signo) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ESRCH) {
                self.warn(
                    "signal_failed",
                    &format!("cannot send signal {signo} to {pid}: {e}"),
                );
            }
        }
    }

    fn write_pidfile(&mut self) -> Result<(), String> {
        let Some(path) = self.spec.pidfile.as_deref() else {
            return Ok(());
        };
        pidfile::write(path, self.my_pid).map_err(|e| e.to_string())
    }

    fn remove_pidfile(&mut self, exited_successor: Option<ProcId>) {
        let Some(path) = self.spec.pidfile.as_deref() else {
            return;
        };
        let stale_successor = exited_successor
            .and_then(|id| self.successors.get(&id))
            .map(|pid| pid.as_raw() as u32);
        let mut result = pidfile::remove_if_ours(path, self.my_pid);
        if let (Ok(()), Some(pid)) = (&result, stale_successor) {
            result = pidfile::remove_if_ours(path, pid);
        }
        if let Err(e) = result {
            self.warn("pidfile_failed", &e.to_string());
        }
    }

    fn claim_control(&mut self) {
        self.take_control_name();
    }

    fn report_ready(&mut self) {
        if let Some(pipe) = self.spec.predecessor.as_ref()
            && let Err(e) = pipe.report_ready()
        {
            // The previous generation died: we are the service all the same.
            self.warn(
                "predecessor_gone",
                &format!("{e}; carrying on as the service"),
            );
        }
    }

    fn notify(&mut self, message: Notify) {
        let Some(socket) = self.notify_socket.as_ref() else {
            return;
        };
        let text = match message {
            Notify::Ready { status } => format!("READY=1\nSTATUS={status}\n"),
            Notify::Reloading => format!(
                "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=upgrading\n",
                sd_notify::monotonic_usec()
            ),
            Notify::MainPid => format!("MAINPID={}\nREADY=1\nSTATUS=serving\n", self.my_pid),
        };
        if let Err(e) = sd_notify::send(socket, &text) {
            self.warn(
                "notify_failed",
                &format!("cannot notify the service manager: {e}"),
            );
        }
    }

    fn report_failure(&mut self, reason: &str) {
        if let Some(pipe) = self.spec.predecessor.as_ref() {
            pipe.report_failure(reason);
        }
    }

    fn reply(&mut self, client: ClientId, reply: Reply) {
        self.answering.remove(&client);
        let Some(conn) = self.clients.remove(&client) else {
            return; // the client went away
        };
        let next = self.spec.generation + 1;
        let text = match reply {
            Reply::Upgraded { successor } => match self.pids.get(&successor) {
                Some(pid) => format!("ok: generation {next} (psflip pid {pid}) took over\n"),
                None => format!("ok: generation {next} took over\n"),
            },
            Reply::UpgradeFailed(why) => format!("failed: {why}\n"),
            Reply::UpgradeRefused(why) => format!("refused: {why}\n"),
            Reply::Status(status) => self.status_report(&status).to_json_line(),
        };
        conn.reply(&text);
    }

    fn log(&mut self, line: &str) {
        self.say(line);
    }

    fn hold_logs(&mut self, on: bool) {
        crate::log::logger().hold(on);
    }

    fn signal_escaped(&mut self, signal: Signal) -> usize {
        subreaper::signal_all(&subreaper::adopted(&self.started_here()), signal)
    }

    fn record(&mut self, log: &Log) {
        // The processes the line is about, by pid: in the text, and as
        // `<role>_pid` fields.
        let mut text = log.text.clone();
        let mut fields = Vec::new();
        let mut named = Vec::new();
        for (role, id) in &log.procs {
            if let Some(pid) = self.pids.get(id) {
                named.push(format!("{} pid {pid}", role.replace('_', " ")));
                fields.push((*role, pid.as_raw()));
            }
        }
        if !named.is_empty() {
            text = format!("{text}; {}", named.join(", "));
        }
        let mut record = Record::new(log.level, log.event, text);
        for (key, value) in &log.fields {
            record = record.field(key, value.clone());
        }
        for (role, pid) in fields {
            let key = match role {
                "child" => "child_pid",
                "successor" => "successor_pid",
                "old_child" => "old_child_pid",
                _ => "pid",
            };
            record = record.field(key, pid);
        }
        crate::log::logger().log(record);
    }

    fn upgrade_began(&mut self, trigger: Trigger) {
        // A successor, its health checks and its child start now, on the
        // CPUs the proxy thread accepts on (until the settle below).
        if let Some(proxy) = self.spec.proxy.as_ref() {
            proxy.prompt(true);
        }
        let now = std::time::SystemTime::now();
        self.history
            .begin(now, trigger.to_string(), self.spec.generation);
    }

    fn upgrade_ended(&mut self, outcome: Result<(), String>) {
        self.history.end(std::time::SystemTime::now(), outcome);
    }

    fn proxy_accept(&mut self) {
        if let Some(proxy) = self.spec.proxy.as_mut() {
            proxy.accept();
        }
    }

    fn proxy_stop_accepting(&mut self) {
        if let Some(proxy) = self.spec.proxy.as_ref() {
            proxy.stop_accepting();
        }
    }

    fn remove_proxy_sockets(&mut self) {
        if let Some(proxy) = self.spec.proxy.as_ref() {
            proxy.remove_socket_files();
        }
        for file in self.spec.listen.iter().filter_map(|(l, _)| l.file.as_ref()) {
            match file.remove_if_ours() {
                Ok(true) => self.say(&format!("listen: removed {}", file.path.display())),
                Ok(false) => {}
                Err(e) => self.say(&format!(
                    "listen: cannot remove {}: {e}",
                    file.path.display()
                )),
            }
        }
    }

    fn inspect_container(&mut self) -> Option<Event> {
        let docker = self.spec.docker.as_mut()?;
        let inspection = docker.start()?;
        Some(Event::ContainerInspected {
            container: docker.container().to_owned(),
            inspection,
        })
    }

    fn abandon_inspection(&mut self) {
        if let Some(docker) = self.spec.docker.as_mut() {
            docker.abandon();
        }
    }

    fn remove_dropped_sockets(&mut self) {
        if let Some(proxy) = self.spec.proxy.as_mut() {
            proxy.remove_dropped_socket_files();
        }
    }
}

/// The probe process of a tcp or http healthcheck: psflip's own binary, running
/// `psflip __probe`, which gives up after `timeout` and logs as this generation.
pub fn probe_argv(spec: &RunSpec, check: &Check, timeout: Duration) -> Vec<String> {
    // A path that is not UTF-8 cannot go through argv as a String; the kernel's
    // name for our own binary always can.
    let exe = spec.exe.to_str().unwrap_or("/proc/self/exe");
    let kind = match check {
        Check::Tcp(_) => "tcp",
        Check::Http { .. } => "http",
    };
    let mut argv = vec![
        exe.to_owned(),
        probe::SUBCOMMAND.to_owned(),
        kind.to_owned(),
        "--timeout".to_owned(),
        crate::values::format_duration(timeout),
    ];
    if spec.quiet {
        argv.push("--quiet".to_owned());
    }
    argv.push(format!("--generation={}", spec.generation));
    argv.push(format!("--log-format={}", spec.log_format.as_str()));
    argv.push("--".to_owned());
    match check {
        Check::Tcp(address) => argv.push(address.to_string()),
        Check::Http { url, status } => {
            argv.push(url.to_string());
            argv.push(status.to_string());
        }
    }
    argv
}

/// A process that asked for something (a signal's sender, a control client),
/// with whether it is the service manager: pid 1 or `$MANAGERPID` (systemd's
/// user manager), or — for a control client, `via_parent` — started by one
/// (`ExecReload=psflip upgrade`).
fn origin(pid: u32, uid: u32, via_parent: bool) -> Origin {
    let manager_pid: Option<u32> = std::env::var("MANAGERPID")
        .ok()
        .and_then(|p| p.parse().ok());
    let is_manager = |p: u32| p == 1 || Some(p) == manager_pid;
    let manager = is_manager(pid)
        || (via_parent && crate::effects::procfs::parent(pid).is_some_and(is_manager));
    Origin { pid, uid, manager }
}

/// The monotonic clock, read once per event and turned into the machine's
/// [`Instant`]: the only place time enters.
pub struct Clock(std::time::Instant);

impl Clock {
    pub fn start() -> Clock {
        Clock(std::time::Instant::now())
    }

    pub fn now(&self) -> Instant {
        Instant::from_origin(self.0.elapsed())
    }
}

/// What one turn of an event loop asks of what it drives, after poll, in the
/// order [`turn`] asks it: psflip's generation ([`Psflip`], over the real OS or
/// the simulation's) and pidwatch implement it. Each `on_*` returns the exit
/// status once the machine asked to exit.
pub trait Driver {
    /// Names the fds a driver polls, so a callback knows which one fired.
    type Tag: Copy;
    /// The next instant something is due.
    fn deadline(&self) -> Option<Instant>;
    /// The fd named `tag` polled ready. Called before signals are read.
    fn on_fd(&mut self, now: Instant, tag: Self::Tag) -> Option<i32>;
    /// The next pending signal: its number, and its sender's pid and uid (pid 0:
    /// the kernel).
    fn next_signal(&mut self) -> Option<(i32, u32, u32)>;
    /// A standard signal other than SIGCHLD arrived from the process `from`, of
    /// user `uid`.
    fn on_signal(&mut self, now: Instant, sig: Signal, from: u32, uid: u32) -> Option<i32>;
    /// A real-time signal arrived.
    fn on_realtime_signal(&mut self, now: Instant, signo: i32) -> Option<i32>;
    /// The next exited child, not reaped yet.
    fn next_exited(&mut self) -> Option<(Pid, ExitStatus)>;
    /// A child exited. It is still a zombie (its pid and group cannot be recycled)
    /// and is reaped as soon as this returns.
    fn on_exit(&mut self, now: Instant, pid: Pid, status: ExitStatus) -> Option<i32>;
    /// Reap the child `pid` and forget it.
    fn reap(&mut self, pid: Pid);
    /// The deadline has passed.
    fn on_tick(&mut self, now: Instant) -> Option<i32>;
}

/// A [`Driver`] the real loop polls: the signalfd and its own fds.
pub trait Poll: Driver {
    fn signalfd(&self) -> BorrowedFd<'_>;
    /// Extra fds to poll beside the signalfd, in the order they are handled.
    fn fds(&self) -> Vec<(Self::Tag, BorrowedFd<'_>, PollFlags)>;
    /// Nothing has happened for [`SETTLE_AFTER`]: give back the pages start-up
    /// touched. Returns whether to settle once more after another quiet
    /// stretch (something was started that is not quiet yet).
    fn on_settle(&mut self) -> bool {
        resident::release_startup_pages();
        false
    }
}

/// One turn of the loop once poll returned (`ready`: the fds that fired, in
/// order; `sig_ready`: the signalfd did): the ready fds first (a successor that
/// reports ready and then dies has still reported ready), then every pending
/// signal in the order the kernel gives them (SIGCHLD becoming a drain of
/// exited children, each reported *before* it is reaped), then a tick if the
/// deadline has passed. The real loop and the simulation both run this.
pub fn turn<D: Driver>(
    driver: &mut D,
    now: Instant,
    ready: &[D::Tag],
    sig_ready: bool,
) -> Option<i32> {
    for &tag in ready {
        if let Some(code) = driver.on_fd(now, tag) {
            return Some(code);
        }
    }
    if sig_ready {
        while let Some((signo, from, uid)) = driver.next_signal() {
            let code = if signo == libc::SIGCHLD {
                reap_all(driver, now)
            } else {
                match Signal::try_from(signo) {
                    Ok(sig) => driver.on_signal(now, sig, from, uid),
                    Err(_) => driver.on_realtime_signal(now, signo),
                }
            };
            if code.is_some() {
                return code;
            }
        }
    }
    if driver.deadline().is_some_and(|t| t <= now) {
        return driver.on_tick(now);
    }
    None
}

/// Report and reap every exited child (SIGCHLD coalesces). Each exit is reported
/// while the child is a zombie, then it is reaped, whatever the driver answered.
fn reap_all(driver: &mut impl Driver, now: Instant) -> Option<i32> {
    let mut exit = None;
    while let Some((pid, status)) = driver.next_exited() {
        if exit.is_none() {
            exit = driver.on_exit(now, pid, status);
        }
        driver.reap(pid);
    }
    exit
}

/// How long nothing must happen before an idle process gives back the pages
/// its start-up touched ([`resident::release_startup_pages`]): long enough that
/// a busy proxy or a burst of control requests never pays for the re-faults,
/// short enough that a settled service is small whenever anyone looks.
pub const SETTLE_AFTER: Duration = Duration::from_millis(250);

/// Run `driver` until it asks to exit; returns the exit status. Signals must already
/// be blocked ([`signals::block_all`]).
///
/// Once nothing has happened for [`SETTLE_AFTER`] (and no timer is due sooner),
/// the process gives back the read-only file pages its start-up mapped, once per
/// quiet stretch: the machine sees nothing of it.
pub fn event_loop<D: Poll>(driver: &mut D, clock: &Clock) -> Result<i32, EffectError> {
    let mut settled = false;
    loop {
        let now = clock.now();
        let wait = driver.deadline().map(|t| t.saturating_since(now));
        let settling = !settled && wait.is_none_or(|w| w > SETTLE_AFTER);
        let timeout = match (settling, wait) {
            (true, _) => poll_timeout(SETTLE_AFTER),
            (false, None) => PollTimeout::NONE,
            // Round up to whole milliseconds so we never wake just before it.
            (false, Some(w)) => poll_timeout(w),
        };
        let (sig_ready, ready_tags) = {
            let extra = driver.fds();
            let mut fds = vec![PollFd::new(driver.signalfd(), PollFlags::POLLIN)];
            fds.extend(extra.iter().map(|(_, fd, ev)| PollFd::new(*fd, *ev)));
            match poll(&mut fds, timeout) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(EffectError::sys("poll", e)),
            }
            let fired = |i: usize| fds[i].revents().is_some_and(|r| !r.is_empty());
            let tags: Vec<D::Tag> = extra
                .iter()
                .enumerate()
                .filter(|(i, _)| fired(i + 1))
                .map(|(_, (tag, _, _))| *tag)
                .collect();
            (fired(0), tags)
        };
        if settling && !sig_ready && ready_tags.is_empty() {
            settled = !driver.on_settle();
            continue;
        }
        settled = false;
        if let Some(code) = turn(driver, clock.now(), &ready_tags, sig_ready) {
            return Ok(code);
        }
    }
}

/// A poll timeout of at least `wait`, in whole milliseconds.
fn poll_timeout(wait: Duration) -> PollTimeout {
    let ms = wait.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
}

/// psflip's generation over the real OS: the [`Machine`], the [`LinuxOs`] its
/// effects go through, and the signalfd. Its [`Source`] answers from signalfd,
/// waitid, the pipes and the sockets.
pub struct Live {
    machine: Machine,
    os: LinuxOs,
    signals: Signals,
}

impl Source for Live {
    fn feed(&mut self, now: Instant, event: Event) -> Option<i32> {
        drive(&mut self.machine, now, event, &mut self.os)
    }

    fn machine_deadline(&self) -> Option<Instant> {
        self.machine.deadline()
    }

    fn sweeping(&self) -> bool {
        self.machine.sweeping()
    }

    fn next_signal(&mut self) -> Option<(i32, u32, u32)> {
        self.signals.read()
    }

    fn next_exited(&mut self) -> Option<(Pid, ExitStatus)> {
        reap::peek()
    }

    fn reap(&mut self, pid: Pid) {
        reap::reap(pid);
        self.os.forget(pid);
    }

    fn id_of(&self, pid: Pid) -> Option<ProcId> {
        self.os.ids.get(&pid).copied()
    }

    fn own_exited(&mut self, pid: Pid, status: ExitStatus) -> bool {
        self.os.standby_exited(pid, status)
    }

    fn adopted(&self) -> usize {
        let ours = self.os.started_here();
        subreaper::adopted(&ours).len()
    }

    fn predecessor_pid(&self) -> Option<u32> {
        self.os.predecessor_pid
    }

    fn origin(&self, pid: u32, uid: u32) -> Origin {
        origin(pid, uid, false)
    }

    fn successor_pipe(&self) -> Option<ProcId> {
        self.os.successor_pipe.as_ref().map(|(id, _)| *id)
    }

    fn hear_successor(&mut self) -> readiness::Heard {
        let Some((_, fd)) = self.os.successor_pipe.as_ref() else {
            return readiness::Heard::default();
        };
        let heard = readiness::hear(fd.as_fd(), &mut self.os.successor_said);
        if heard.closed {
            self.os.successor_pipe = None;
        }
        heard
    }

    fn child_notify(&self) -> Option<ProcId> {
        self.os.child_notify.as_ref().map(|(id, _)| *id)
    }

    fn hear_child(&mut self) -> Vec<notify::Message> {
        self.os
            .child_notify
            .as_ref()
            .map(|(_, socket)| socket.receive())
            .unwrap_or_default()
    }

    fn inspected(&mut self) -> Option<Event> {
        let docker = self.os.spec.docker.as_mut()?;
        let inspection = docker.on_ready()?;
        Some(Event::ContainerInspected {
            container: docker.container().to_owned(),
            inspection,
        })
    }

    fn accept_control(&mut self, now: Instant) {
        self.os.accept_control(now);
    }

    fn receive(&mut self, client: ClientId) -> Option<(Request, Option<Origin>)> {
        let conn = self.os.clients.get_mut(&client)?;
        match conn.receive() {
            Received::Request(request) => {
                let from = conn.peer().map(|p| origin(p.pid, p.uid, true));
                // Not polled any more: the client may close its side now and
                // still get the answer (poll would report that close forever).
                self.os.answering.insert(client);
                Some((request, from))
            }
            Received::Invalid(line) => {
                if let Some(conn) = self.os.clients.remove(&client) {
                    conn.reply(&format!("error: unknown request {line:?}\n"));
                }
                None
            }
            Received::Closed => {
                self.os.clients.remove(&client);
                None
            }
            Received::Partial => None,
        }
    }

    fn predecessor_closed(&mut self) {
        self.os.spec.predecessor = None;
    }

    fn proxy_drained(&mut self) -> bool {
        self.os.spec.proxy.as_mut().is_some_and(Proxy::drained)
    }

    fn paused_until(&self) -> Option<Instant> {
        self.os.control_paused_until
    }

    fn resume(&mut self, now: Instant) {
        if self.os.control_paused_until.is_some_and(|t| t <= now) {
            self.os.control_paused_until = None;
        }
    }
}

impl Poll for Psflip<Live> {
    fn signalfd(&self) -> BorrowedFd<'_> {
        self.0.signals.as_fd()
    }

    fn on_settle(&mut self) -> bool {
        let serving = self.0.machine.phase() == crate::machine::Phase::Serving;
        // A standby starting now is one more new process of the service: the
        // proxy thread stays prompt until the next quiet stretch, by when the
        // standby has loaded and waits.
        let standby_started = self.0.os.settle_standby(serving);
        if serving
            && !standby_started
            && let Some(proxy) = self.0.os.spec.proxy.as_ref()
        {
            proxy.prompt(false);
        }
        if self.0.os.spec.standby {
            // An upgrade that wakes a standby runs little here (the handoff
            // is written, nothing is spawned): every page goes back, and the
            // service's footprint with its standby stays that of one psflip.
            resident::release(&resident::text_ranges());
        } else {
            resident::release_startup_pages();
        }
        standby_started
    }

    fn fds(&self) -> Vec<(PsflipFd, BorrowedFd<'_>, PollFlags)> {
        // In the order of `PsflipFd`'s variants.
        let os = &self.0.os;
        let mut fds = Vec::new();
        if let Some((_, fd)) = os.successor_pipe.as_ref() {
            fds.push((PsflipFd::Successor, fd.as_fd(), PollFlags::POLLIN));
        }
        if let Some(p) = os.spec.predecessor.as_ref() {
            // No events asked: POLLERR comes once the read end is closed everywhere.
            fds.push((PsflipFd::Predecessor, p.as_fd(), PollFlags::empty()));
        }
        if let Some(fd) = os.spec.proxy.as_ref().and_then(Proxy::events_fd) {
            fds.push((PsflipFd::Proxy, fd, PollFlags::POLLIN));
        }
        if let Some((_, socket)) = os.child_notify.as_ref() {
            fds.push((PsflipFd::Notify, socket.as_fd(), PollFlags::POLLIN));
        }
        if let Some((fd, flags)) = os.spec.docker.as_ref().and_then(Inspector::poll) {
            fds.push((PsflipFd::Docker, fd, flags));
        }
        if let Some(listener) = os.control.as_ref().and_then(control::Listener::poll_fd)
            && os.control_paused_until.is_none()
        {
            fds.push((PsflipFd::Control, listener, PollFlags::POLLIN));
        }
        for (client, conn) in &os.clients {
            if !os.answering.contains(client) {
                fds.push((PsflipFd::Client(*client), conn.as_fd(), PollFlags::POLLIN));
            }
        }
        fds
    }
}

/// Run one psflip generation until its machine exits; returns the exit status.
pub fn run(spec: RunSpec) -> Result<i32, EffectError> {
    let signals = Signals::new()?;
    let clock = Clock::start();
    // Escaped descendants of our child re-parent to us, to be stopped with this
    // generation (SPEC §10). Without it they go to init, as before.
    let subreaper = match subreaper::become_subreaper() {
        Ok(()) => true,
        Err(e) => {
            crate::log::logger().warn(
                "subreaper_failed",
                format!("{e}; escaped processes of the child will not be stopped"),
            );
            false
        }
    };
    let header = Header {
        settings: spec.settings.clone(),
        proxy: spec.proxy.is_some(),
        listen: !spec.listen.is_empty(),
        subreaper,
        predecessor_upgrade_timeout: spec.predecessor_upgrade_timeout,
    };
    let mut psflip = Live {
        machine: header.machine(),
        os: LinuxOs::new(spec),
        signals,
    };
    match Recorder::from_env(&header) {
        Some(Ok(r)) => {
            crate::log::logger().info("trace", format!("recording to {}", r.path().display()));
            psflip.os.trace = Some(r);
        }
        Some(Err(e)) => crate::log::logger().warn("trace", format!("cannot record: {e}")),
        None => {}
    }
    if let Some(code) = drive(
        &mut psflip.machine,
        clock.now(),
        Event::Started,
        &mut psflip.os,
    ) {
        return Ok(code);
    }
    let mut psflip = Psflip(psflip);
    let code = event_loop(&mut psflip, &clock);
    psflip.0.os.dismiss_standby();
    code
}

pub mod pidwatch;
pub mod source;

pub use source::{Psflip, PsflipFd, Source};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::tests::settings;
    use crate::machine::{Generation, Role};

    /// Records what the runtime asked of the OS, in order, and which log
    /// lines it would have written when (held ones once released).
    #[derive(Default)]
    struct Recorder(Vec<String>, Vec<String>, bool);

    impl Os for Recorder {
        fn spawn(&mut self, id: ProcId, role: Role) -> Result<(), String> {
            self.0.push(format!("spawn {} {role:?}", id.0));
            // As LinuxOs does: the line saying so comes from the spawn itself.
            self.log(&format!("started {role:?}"));
            Ok(())
        }
        fn signal(&mut self, id: ProcId, signal: Signal, _group: bool) {
            self.0.push(format!("signal {} {signal:?}", id.0));
        }
        fn write_pidfile(&mut self) -> Result<(), String> {
            self.0.push("pidfile".into());
            Ok(())
        }
        fn remove_pidfile(&mut self, _exited_successor: Option<ProcId>) {}
        fn claim_control(&mut self) {}
        fn report_ready(&mut self) {}
        fn log(&mut self, line: &str) {
            if self.2 {
                self.1.push(format!("log {line}"));
            } else {
                self.0.push(format!("log {line}"));
            }
        }
        fn hold_logs(&mut self, on: bool) {
            self.2 = on;
            if !on {
                self.0.append(&mut self.1);
            }
        }
    }

    fn at(ms: u64) -> Instant {
        Instant::from_origin(std::time::Duration::from_millis(ms))
    }

    #[test]
    fn a_step_starts_its_processes_before_writing_its_log_lines() {
        let mut m = Machine::new(settings(Generation::First));
        let mut os = Recorder::default();
        drive(&mut m, at(0), Event::Started, &mut os);
        drive(&mut m, at(1000), Event::Tick, &mut os);
        os.0.clear();
        // The machine says "starting the successor" before it asks for it
        // (machine::tests: successful_upgrade_…); the OS hears it after.
        drive(&mut m, at(2000), Event::signal(Signal::SIGHUP), &mut os);
        assert_eq!(
            os.0,
            [
                "spawn 2 Successor",
                "log upgrade: starting the successor (asked by SIGHUP)",
                "log started Successor",
            ],
        );
        assert!(!os.2, "logs are held no longer");
    }
}
