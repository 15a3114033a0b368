//! The pure heart of psflip: one generation's supervision and upgrade protocol as a
//! transition function.
//!
//! The contract between this module and the runtime (`src/runtime.rs`):
//!
//! 1. The runtime builds a [`Machine`] from [`Settings`] and calls
//!    [`Machine::step`]`(now, Event::Started)` once the configuration is loaded.
//! 2. Every OS happening becomes an [`Event`] (a signal read from the signalfd with
//!    its sender's relation to us, a reaped process, a byte on the readiness pipe,
//!    the answer to an effect that can fail) and goes through `step`, with `now`
//!    read from the monotonic clock once per event. `step` returns the [`Effect`]s
//!    to carry out, in order.
//! 3. The runtime carries out each effect. Effects that can fail report back:
//!    [`Effect::Spawn`] as [`Event::Spawned`] or [`Event::SpawnFailed`],
//!    [`Effect::WritePidfile`] as [`Event::PidfileWritten`] or [`Event::PidfileFailed`].
//!    Nothing else is decided by the runtime: which probe to run and for how long,
//!    whose pidfile to remove, which socket files go, when the control socket's name
//!    becomes this generation's ([`Effect::ClaimControl`]), whether a signal aborts
//!    an upgrade — all of it comes out of here.
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
//!    exit is reported, so a READY=1 sent just before dying still counts). With
//!    `[healthcheck.docker]`, [`Effect::InspectContainer`] is answered with
//!    [`Event::ContainerInspected`] (unless [`Effect::AbandonInspection`] came
//!    first).
//!
//! There is no I/O, no clock and no OS call here: time is data ([`Instant`]), so the
//! simulation in `tests/sim` can drive this exact code through any interleaving.
//!
//! Reading order: `types.rs` and `events.rs` (the vocabulary), `state.rs` (the
//! states and the legal moves), `timers.rs`, then [`Machine::step`] below — the
//! (state, event) table — and the handlers it names, one file per part of the
//! protocol: `supervise.rs` (starting and serving a child), `upgrade.rs` (the old
//! generation's side of an upgrade), `successor.rs` (the new generation's side),
//! `stop.rs` (stopping the child and exiting), `control.rs` (`psflip upgrade` and
//! `psflip status`).

mod control;
mod escaped;
mod events;
mod readiness;
mod state;
mod stop;
mod successor;
mod supervise;
mod timers;
mod types;
mod upgrade;

#[cfg(test)]
pub(crate) mod tests;

/// Signals travel by name in traces (`"SIGTERM"`): nix's `Signal` has no serde.
mod signal_name {
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serializer};

    use crate::Signal;

    pub fn serialize<S: Serializer>(signal: &Signal, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(signal.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Signal, D::Error> {
        let name = String::deserialize(d)?;
        Signal::from_str(&name).map_err(serde::de::Error::custom)
    }
}

use std::time::Duration;

pub use escaped::{ESCAPED_GIVE_UP, NewGeneration, Sweep};
pub use events::{Effect, Event, Log, Origin, Sender, Trigger};
pub use state::{
    Drain, Lineage, OldChild, Phase, Predecessor, Proving, Standing, State, Stop, StopCause,
    StopStep, Upgrade,
};
pub use timers::{Timer, Timers};
pub use types::{
    ClientId, ExitStatus, GIVE_UP_GRACE, Generation, Health, Inspection, Instant, Notify,
    ProbeKind, ProcId, Reply, Request, Role, SUCCESSOR_GRACE, Settings, Status, probe_timeout,
};

/// One generation of psflip. See the module documentation for the contract.
#[derive(Clone, Debug)]
pub struct Machine {
    settings: Settings,
    lineage: Lineage,
    state: State,
    timers: Timers,
    next_id: u64,
    /// How long the child has to become healthy: `upgrade.timeout`, bounded (in a
    /// successor) by the predecessor's, which kills us after its own + grace.
    health_within: Duration,
    /// `[[proxy]]` is configured (see contract step 7).
    proxy: bool,
    /// `[[listen]]` sockets are configured: their files go when the service stops.
    listen: bool,
    /// Control clients waiting for the outcome of the upgrade they asked for.
    waiters: Vec<ClientId>,
    /// The outcome of the last upgrade this generation tried (or, in a successor,
    /// of the one that made it).
    last_upgrade: Option<String>,
    /// What asked for the upgrade that starts once the child is healthy (a
    /// first generation asked while starting).
    requested_by: Option<Trigger>,
    /// The termination signal (SIGTERM, SIGINT, SIGQUIT) psflip last received and
    /// passed on to its child: a child that dies of it stopped as it was asked to,
    /// and psflip exits 0 (see [`Machine::relayed`]).
    stop_signal: Option<crate::Signal>,
    /// The last successor this generation started, once it has exited: the
    /// pidfile may still name it (see [`Effect::RemovePidfile`]).
    exited_successor: Option<ProcId>,
    /// psflip is a child subreaper: escaped descendants are stopped before it
    /// exits (see `escaped.rs`).
    subreaper: bool,
    /// When the child being stopped gets SIGKILL (`shutdown.signal` sent +
    /// `shutdown.timeout`): escaped processes get it no later.
    kill_due: Option<Instant>,
}

impl Machine {
    pub fn new(settings: Settings) -> Machine {
        let lineage = match settings.generation {
            Generation::First => Lineage::First,
            Generation::Successor => Lineage::Successor {
                predecessor: Predecessor::Running,
                standing: Standing::Candidate { failure: None },
            },
        };
        Machine {
            health_within: settings.upgrade_timeout,
            settings,
            lineage,
            state: State::Booting,
            timers: Timers::default(),
            next_id: 0,
            proxy: false,
            listen: false,
            waiters: Vec::new(),
            last_upgrade: None,
            requested_by: None,
            stop_signal: None,
            exited_successor: None,
            subreaper: false,
            kill_due: None,
        }
    }

    /// The same machine, with a `[[proxy]]` (see contract step 7) or without.
    pub fn with_proxy(mut self, proxy: bool) -> Machine {
        self.proxy = proxy;
        self
    }

    /// The same machine, with `[[listen]]` sockets or without: their Unix socket
    /// files are removed when the service stops for good, as the proxy's are.
    pub fn with_listen(mut self, listen: bool) -> Machine {
        self.listen = listen;
        self
    }

    /// (Successor) the predecessor's `upgrade.timeout`: it kills us once that plus
    /// [`SUCCESSOR_GRACE`] has passed, so our child must be healthy within it even
    /// when our (re-read) configuration allows longer. Giving up first lets us kill
    /// the new child's whole group and say why, instead of being SIGKILLed.
    pub fn with_predecessor_timeout(mut self, predecessor_upgrade_timeout: Duration) -> Machine {
        self.health_within = self.health_within.min(predecessor_upgrade_timeout);
        self
    }

    /// Whether a `[[proxy]]` is configured.
    pub fn proxy(&self) -> bool {
        self.proxy
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// The state's name.
    pub fn phase(&self) -> Phase {
        self.state.phase()
    }

    pub fn lineage(&self) -> &Lineage {
        &self.lineage
    }

    /// The timer table (the next deadline is its minimum).
    pub fn timers(&self) -> &Timers {
        &self.timers
    }

    /// The app child's id, while it has not been reported exited.
    pub fn live_child(&self) -> Option<ProcId> {
        match &self.state {
            State::Starting { child, .. } | State::Serving { child } => Some(*child),
            State::Upgrading(u) | State::Aborting(u) => match u.old {
                OldChild::Running(child) => Some(child),
                OldChild::Exited(_) => None,
            },
            State::Stopping(stop) => stop.step.child(),
            State::Booting | State::Sweeping(_) | State::Done { .. } => None,
        }
    }

    /// Whether the child has passed its healthcheck (and this generation has not
    /// exited).
    pub fn healthy(&self) -> bool {
        match &self.state {
            State::Starting { health, .. } => *health == Proving::WritingPidfile,
            State::Serving { .. } | State::Upgrading(_) | State::Aborting(_) => true,
            State::Stopping(stop) => match stop.cause {
                StopCause::HandedOver { .. } => true,
                StopCause::GaveUp { healthy, .. } => healthy,
                StopCause::Unready => false,
            },
            // The child is gone.
            State::Booting | State::Sweeping(_) | State::Done { .. } => false,
        }
    }

    /// The successor in flight, if any.
    pub fn successor(&self) -> Option<ProcId> {
        match &self.state {
            State::Upgrading(u) | State::Aborting(u) => Some(u.successor),
            _ => None,
        }
    }

    /// Whether an upgrade started by this generation is in flight.
    pub fn upgrading(&self) -> bool {
        matches!(self.state, State::Upgrading(_) | State::Aborting(_))
    }

    /// The next instant at which a `Tick` has something to do: the earliest timer.
    pub fn deadline(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// Feed one event; get the effects to carry out, in order.
    ///
    /// The table: the first arm that matches (state, event) decides. Events every
    /// live state handles alike come first; then each state's own rules. An event
    /// no arm names (an exit of a process this state no longer tracks, a late
    /// answer) is ignored.
    pub fn step(&mut self, now: Instant, event: Event) -> Vec<Effect> {
        use Event as E;
        use State as S;
        let mut out = Vec::new();
        let o = &mut out;
        match (&self.state, event) {
            (S::Done { .. }, _) => {}
            // The exit waits for escaped processes: its own rules (`escaped.rs`).
            (S::Sweeping(_), event) => self.on_sweep_event(now, event, o),
            (S::Booting, E::Started) => self.start_child(now, o),
            (S::Booting, _) | (_, E::Started) => {}
            // Every live state alike.
            (_, E::Tick) => self.on_tick(now, o),
            (_, E::SignalReceived { signal, from }) => self.on_signal(now, signal, from, o),
            (_, E::RealtimeSignalReceived(signo)) => self.forward_realtime(signo, o),
            (
                _,
                E::ControlRequest {
                    client,
                    request,
                    from,
                },
            ) => self.on_control(now, client, request, from, o),
            (_, E::PredecessorExited) => self.on_predecessor_exited(o),
            (_, E::ChildNotified { id, ready, status }) => {
                self.on_child_notified(now, id, ready, status, o)
            }
            // Then each state's own table.
            (S::Starting { .. }, event) => self.on_starting_event(now, event, o),
            (S::Serving { child }, E::ProcessExited { id, status }) if *child == id => {
                self.on_serving_child_exit(status, o)
            }
            (S::Upgrading(_) | S::Aborting(_), event) => self.on_upgrade_event(now, event, o),
            (S::Stopping(_), event) => self.on_stopping_event(now, event, o),
            (S::Serving { .. }, event) => self.unhandled(event, o),
        }
        out
    }

    /// (Starting, event): `supervise.rs` and `readiness.rs`.
    fn on_starting_event(&mut self, now: Instant, event: Event, o: &mut Vec<Effect>) {
        use Event as E;
        let State::Starting { child, health, .. } = self.state else {
            unreachable!("starting");
        };
        let probe = health.probe();
        match event {
            E::ProcessExited { id, status } if id == child => self.on_unready_child_exit(status, o),
            E::Spawned { id } if id == child => self.on_child_spawned(o),
            E::SpawnFailed { id, reason } if id == child => self.on_child_spawn_failed(reason, o),
            E::ProcessExited { id, status } if probe == Some(id) => {
                self.on_probe_exit(now, Ok(status), o)
            }
            E::SpawnFailed { id, reason } if probe == Some(id) => {
                self.on_probe_exit(now, Err(reason), o)
            }
            E::PidfileWritten if health == Proving::WritingPidfile => self.on_ready(now, o),
            E::PidfileFailed { reason } if health == Proving::WritingPidfile => {
                self.on_pidfile_failed(now, reason, o)
            }
            E::ContainerInspected {
                container,
                inspection,
            } if health == Proving::Inspecting => self.on_inspected(now, &container, inspection, o),
            event => self.unhandled(event, o),
        }
    }

    /// (Upgrading or Aborting, event): `upgrade.rs`.
    fn on_upgrade_event(&mut self, now: Instant, event: Event, o: &mut Vec<Effect>) {
        use Event as E;
        let (State::Upgrading(u) | State::Aborting(u)) = &self.state else {
            unreachable!("an upgrade in flight");
        };
        let (old, successor) = (u.old, u.successor);
        let aborting = matches!(self.state, State::Aborting(_));
        match event {
            E::ProcessExited { id, status } if old == OldChild::Running(id) => {
                self.on_child_exit_mid_upgrade(status, o)
            }
            E::ProcessExited { id, status } if id == successor => {
                self.exited_successor = Some(id);
                self.on_successor_gone(format!("the successor exited ({status})"), o)
            }
            E::SpawnFailed { id, reason } if id == successor => {
                self.on_successor_gone(format!("cannot start the successor: {reason}"), o)
            }
            E::SuccessorFailed { id, reason } if id == successor => {
                self.on_successor_failed(reason)
            }
            E::SuccessorReady { id } if id == successor && !aborting => {
                self.on_successor_ready(now, o)
            }
            E::SuccessorReady { id } if id == successor => log(
                o,
                "the successor reported ready after the upgrade was aborted; it is being stopped",
            ),
            event => self.unhandled(event, o),
        }
    }

    /// (Stopping, event): `stop.rs`, and `upgrade.rs` for the new generation.
    fn on_stopping_event(&mut self, now: Instant, event: Event, o: &mut Vec<Effect>) {
        use Event as E;
        let State::Stopping(stop) = self.state else {
            unreachable!("stopping");
        };
        let new_generation = match stop.cause {
            StopCause::HandedOver { to, .. } => Some(to),
            StopCause::Unready | StopCause::GaveUp { .. } => None,
        };
        let draining = matches!(
            stop.cause,
            StopCause::HandedOver {
                drain: Drain::Awaiting,
                ..
            }
        );
        match event {
            E::ProcessExited { id, status } if stop.step.child() == Some(id) => {
                self.on_stopped_child_exit(status, o)
            }
            E::ProcessExited { id, status } if new_generation == Some(id) => {
                self.exited_successor = Some(id);
                self.on_new_service_gone(status, o)
            }
            E::ProxyDrained if draining => self.on_proxy_drained(now, o),
            event => self.unhandled(event, o),
        }
    }

    /// An event the state's table has no rule for: an exit of a process this
    /// state no longer tracks, a late answer. Only a failed pidfile write is
    /// worth a line.
    fn unhandled(&mut self, event: Event, o: &mut Vec<Effect>) {
        use Event as E;
        match event {
            E::PidfileFailed { reason } => log(o, format!("cannot write the pidfile: {reason}")),
            E::ProcessExited { .. }
            | E::Spawned { .. }
            | E::SpawnFailed { .. }
            | E::SuccessorFailed { .. }
            | E::SuccessorReady { .. }
            | E::PidfileWritten
            | E::ProxyDrained
            | E::ContainerInspected { .. }
            | E::EscapedSignalled { .. }
            | E::EscapedExited { .. } => {}
            // (Every live state handles these alike, before its own table.)
            E::Started
            | E::Tick
            | E::SignalReceived { .. }
            | E::RealtimeSignalReceived(_)
            | E::ControlRequest { .. }
            | E::PredecessorExited
            | E::ChildNotified { .. } => {}
        }
    }

    fn alloc(&mut self) -> ProcId {
        self.next_id += 1;
        ProcId(self.next_id)
    }

    /// Fire exactly the timers due at `now`, in [`Timer`] order. A timer that an
    /// earlier one disarmed or moved to the future is skipped.
    fn on_tick(&mut self, now: Instant, out: &mut Vec<Effect>) {
        for timer in self.timers.due(now) {
            if !self.timers.take_due(timer, now) {
                continue;
            }
            match timer {
                Timer::HealthDeadline => self.on_health_deadline(now, out),
                Timer::AliveFor => self.on_healthy(now, out),
                Timer::ProbeOverrun => self.on_probe_overrun(now, out),
                Timer::ProbeStart => self.start_probe(now, out),
                Timer::SuccessorKill => self.on_successor_late(out),
                Timer::ShutdownSignal => {
                    log(
                        out,
                        format!(
                            "shutdown.delay ({:?}) has passed; stopping the old child",
                            self.settings.shutdown_delay
                        ),
                    );
                    self.send_shutdown_signal(now, out)
                }
                Timer::ChildKill => self.on_shutdown_timeout(out),
                Timer::DrainCutoff => self.on_drain_cutoff(out),
                // Only while sweeping, which `step` routes elsewhere.
                Timer::EscapedKill | Timer::EscapedGiveUp => {}
                Timer::NewGenerationKill => self.on_new_generation_late(out),
            }
        }
    }
}

/// A signal that asks psflip (and its child) to stop.
fn terminating(sig: crate::Signal) -> bool {
    use crate::Signal;
    matches!(sig, Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT)
}

/// The app child has exited: SIGKILL its group and say so (at `level`). The
/// child led its own process group; whatever it left there (a shell's background
/// jobs) must not outlive it. The runtime has not reaped the child yet, so the
/// group id cannot have been recycled.
fn child_gone(child: ProcId, level: crate::log::Level, text: String, out: &mut Vec<Effect>) {
    out.push(kill(child, true));
    about(out, level, "child_exited", text, &[("child", child)]);
}

fn kill(id: ProcId, group: bool) -> Effect {
    Effect::Signal {
        id,
        signal: crate::Signal::SIGKILL,
        group,
    }
}

/// An informational line.
fn log(out: &mut Vec<Effect>, msg: impl Into<String>) {
    note(out, crate::log::Level::Info, "note", msg);
}

/// Something went wrong that psflip recovers from (a failed upgrade, a child
/// that died).
fn warn(out: &mut Vec<Effect>, event: &'static str, msg: impl Into<String>) {
    note(out, crate::log::Level::Warning, event, msg);
}

fn note(
    out: &mut Vec<Effect>,
    level: crate::log::Level,
    event: &'static str,
    msg: impl Into<String>,
) {
    about(out, level, event, msg, &[]);
}

/// A line about these processes (`("child", id)`…): the runtime adds their pids.
fn about(
    out: &mut Vec<Effect>,
    level: crate::log::Level,
    event: &'static str,
    msg: impl Into<String>,
    procs: &[(&'static str, ProcId)],
) {
    out.push(Effect::Log(Log {
        level,
        event,
        text: msg.into(),
        procs: procs.to_vec(),
        fields: Vec::new(),
    }));
}
