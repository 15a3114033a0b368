//! Property tests on the [`Machine`] for the readiness that comes from outside
//! the process table (issue #12): `READY=1` on the child's notify socket
//! (`Health::Notify`), the Docker engine's word on a container (`Health::Docker`),
//! and the `[[listen]]` socket files. Any sequence of events, with a ghost of the
//! facts delivered — never the machine's own view — as the oracle:
//!
//! 1. Healthy only on evidence: with `Notify`, only after a `READY=1` from the
//!    live child was delivered; with `Docker`, only after an answer saying
//!    `healthy` (running, with a health check) was delivered for an inspection
//!    in flight.
//! 2. At most one inspection in flight: no `InspectContainer` before the last
//!    one was answered or abandoned.
//! 3. Every inspection is bounded: while one is in flight, the deadline is at
//!    most its start + `interval`.
//! 4. A docker child that runs is never SIGKILLed before a catchable signal
//!    reached it at least `min(shutdown.timeout, GIVE_UP_GRACE)` earlier (a
//!    `docker run` client must pass the stop on to its container).
//! 5. `[[listen]]` socket files go only with the generation's `Exit`, never after
//!    it handed the service over, never from a successor that did not take over
//!    or whose predecessor still runs.
//!
//! And each interesting outcome happens in some case (`sometimes`): healthy by
//! `READY=1`, healthy by the engine, a container failure stopping the child, an
//! inspection abandoned, socket files removed.

use std::cell::Cell;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};

use psflip::Signal;
use psflip::machine::{
    Effect, Event, ExitStatus, GIVE_UP_GRACE, Generation, Health, Inspection, Instant, Machine,
    Notify, ProcId, Role, Settings,
};

#[derive(Clone, Debug)]
enum Step {
    Started,
    Tick(u64),
    TickAtDeadline,
    Notified { live: bool, ready: bool },
    Inspected(Answer),
    ChildExited(ExitStatus),
    Signal(Signal),
    SuccessorReady,
    SuccessorExited,
    PredecessorExited,
    PidfileWritten,
}

#[derive(Clone, Debug)]
enum Answer {
    Healthy,
    Starting,
    Created,
    Unhealthy,
    Exited,
    NoHealthcheck,
    Missing,
    Unreachable,
}

impl Answer {
    fn inspection(&self) -> Inspection {
        let found = |status: &str, health: Option<&str>, healthcheck| Inspection::Found {
            status: status.into(),
            health: health.map(str::to_owned),
            healthcheck,
        };
        match self {
            Answer::Healthy => found("running", Some("healthy"), true),
            Answer::Starting => found("running", Some("starting"), true),
            Answer::Created => found("created", None, true),
            Answer::Unhealthy => found("running", Some("unhealthy"), true),
            Answer::Exited => found("exited", Some("unhealthy"), true),
            Answer::NoHealthcheck => found("running", None, false),
            Answer::Missing => Inspection::Missing,
            Answer::Unreachable => Inspection::Failed("no engine".into()),
        }
    }
}

fn step() -> impl Strategy<Value = Step> {
    let answer = prop_oneof![
        2 => Just(Answer::Healthy),
        3 => Just(Answer::Starting),
        1 => Just(Answer::Created),
        1 => Just(Answer::Unhealthy),
        1 => Just(Answer::Exited),
        1 => Just(Answer::NoHealthcheck),
        2 => Just(Answer::Missing),
        1 => Just(Answer::Unreachable),
    ];
    prop_oneof![
        1 => Just(Step::Started),
        4 => (0..1_500u64).prop_map(Step::Tick),
        4 => Just(Step::TickAtDeadline),
        3 => (proptest::bool::weighted(0.8), any::<bool>())
            .prop_map(|(live, ready)| Step::Notified { live, ready }),
        5 => answer.prop_map(Step::Inspected),
        1 => prop_oneof![Just(ExitStatus::Code(0)), Just(ExitStatus::Code(3)), Just(ExitStatus::Signaled(15))]
            .prop_map(Step::ChildExited),
        2 => prop_oneof![Just(Signal::SIGHUP), Just(Signal::SIGTERM), Just(Signal::SIGUSR1)]
            .prop_map(Step::Signal),
        2 => Just(Step::SuccessorReady),
        1 => Just(Step::SuccessorExited),
        1 => Just(Step::PredecessorExited),
        2 => Just(Step::PidfileWritten),
    ]
}

fn settings() -> impl Strategy<Value = (Settings, bool)> {
    (
        any::<bool>(),
        any::<bool>(),
        500..8_000u64,
        1..3_000u64,
        0..4_000u64,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(first, docker, ut, interval, st, pidfile, listen)| {
            let settings = Settings {
                generation: if first {
                    Generation::First
                } else {
                    Generation::Successor
                },
                upgrade_signal: Signal::SIGHUP,
                upgrade_timeout: Duration::from_millis(ut),
                shutdown_delay: Duration::ZERO,
                shutdown_signal: Signal::SIGTERM,
                shutdown_timeout: Duration::from_millis(st),
                health: if docker {
                    Health::Docker {
                        interval: Duration::from_millis(interval),
                    }
                } else {
                    Health::Notify
                },
                pidfile,
            };
            (settings, listen)
        })
}

/// Outcomes seen across all cases.
#[derive(Default)]
struct Seen {
    ready_by_notify: Cell<u32>,
    ready_by_engine: Cell<u32>,
    container_failure: Cell<u32>,
    abandoned: Cell<u32>,
    sockets_removed: Cell<u32>,
}

fn bump(c: &Cell<u32>) {
    c.set(c.get() + 1);
}

/// The machine and the ghost of what was delivered to it.
struct Harness<'s> {
    m: Machine,
    now: Instant,
    seen: &'s Seen,
    child: Option<ProcId>,
    child_exited: bool,
    successor: Option<ProcId>,
    successor_gone: bool,
    /// A READY=1 / a healthy answer was delivered (property 1's evidence).
    evidence: bool,
    /// The inspection in flight, and when it started.
    inspecting: Option<Instant>,
    /// The first catchable signal sent to the running child, and when.
    graceful_at: Option<Instant>,
    reported_ready: bool,
    predecessor_gone: bool,
    exited: bool,
    /// The machine acted on a healthy child (wrote the pidfile, reported ready,
    /// said READY=1, accepted): its health, as its effects show it.
    acted_healthy: bool,
    /// A "ready" from the successor it started was fed (a handover, by the
    /// harness's own record): not SIGKILLed by the machine, no termination
    /// signal since it started.
    ready_fed: bool,
    successor_void: bool,
}

impl Harness<'_> {
    fn docker(&self) -> Option<Duration> {
        match self.m.settings().health {
            Health::Docker { interval } => Some(interval),
            _ => None,
        }
    }

    fn event(&mut self, step: &Step) -> Option<Event> {
        Some(match step {
            Step::Started => Event::Started,
            Step::Tick(ms) => {
                self.now = self.now + Duration::from_millis(*ms);
                Event::Tick
            }
            Step::TickAtDeadline => {
                if let Some(d) = self.m.deadline() {
                    self.now = self.now.max(d);
                }
                Event::Tick
            }
            Step::Notified { live, ready } => Event::ChildNotified {
                id: if *live { self.child? } else { ProcId(777) },
                ready: *ready,
                status: Some("s".into()),
            },
            Step::Inspected(answer) => {
                // The runtime answers only an inspection in flight.
                self.inspecting?;
                Event::ContainerInspected {
                    container: "app".into(),
                    inspection: answer.inspection(),
                }
            }
            Step::ChildExited(status) => {
                if self.child_exited {
                    return None;
                }
                Event::ProcessExited {
                    id: self.child?,
                    status: *status,
                }
            }
            Step::Signal(sig) => Event::signal(*sig),
            Step::SuccessorReady => Event::SuccessorReady {
                id: self.successor.filter(|_| !self.successor_gone)?,
            },
            Step::SuccessorExited => Event::ProcessExited {
                id: self.successor.filter(|_| !self.successor_gone)?,
                status: ExitStatus::Code(1),
            },
            Step::PredecessorExited => Event::PredecessorExited,
            Step::PidfileWritten => Event::PidfileWritten,
        })
    }

    fn feed(&mut self, event: Event) -> Result<(), TestCaseError> {
        let was_healthy = self.acted_healthy;
        match &event {
            Event::SuccessorReady { id }
                if Some(*id) == self.successor && !self.successor_gone && !self.successor_void =>
            {
                self.ready_fed = true;
            }
            Event::SignalReceived {
                signal: Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT,
                ..
            } => self.successor_void = true,
            _ => {}
        }
        let inspecting_before = self.inspecting;
        // Evidence the event carries.
        match &event {
            Event::ChildNotified {
                id, ready: true, ..
            } if Some(*id) == self.child && !self.child_exited && self.docker().is_none() => {
                self.evidence = true;
            }
            Event::ContainerInspected { inspection, .. } => {
                self.inspecting = None;
                if inspection
                    == &(Inspection::Found {
                        status: "running".into(),
                        health: Some("healthy".into()),
                        healthcheck: true,
                    })
                {
                    self.evidence = true;
                }
            }
            Event::ProcessExited { id, .. } if Some(*id) == self.child => self.child_exited = true,
            Event::ProcessExited { id, .. } if Some(*id) == self.successor => {
                self.successor_gone = true
            }
            Event::PredecessorExited => self.predecessor_gone = true,
            _ => {}
        }
        let effects = self.m.step(self.now, event.clone());
        if self.exited {
            prop_assert!(effects.is_empty(), "after Exit: {effects:?}");
            return Ok(());
        }
        let grace = self.m.settings().shutdown_timeout.min(GIVE_UP_GRACE);
        for (i, effect) in effects.iter().enumerate() {
            match effect {
                Effect::Spawn {
                    id,
                    role: Role::App,
                } => self.child = Some(*id),
                Effect::Spawn {
                    id,
                    role: Role::Successor,
                } => {
                    self.successor = Some(*id);
                    self.successor_void = false;
                    self.successor_gone = false;
                }
                Effect::InspectContainer => {
                    // 2. One at a time.
                    prop_assert!(
                        self.inspecting.is_none(),
                        "a second inspection while one is in flight ({event:?})"
                    );
                    self.inspecting = Some(self.now);
                }
                Effect::AbandonInspection => {
                    let in_flight = self.inspecting.take().is_some() || inspecting_before.is_some();
                    prop_assert!(in_flight, "abandoned an inspection never started");
                    bump(&self.seen.abandoned);
                }
                Effect::Signal {
                    id,
                    signal: Signal::SIGKILL,
                    ..
                } if Some(*id) == self.successor => self.successor_void = true,
                Effect::Signal { id, signal, group } if Some(*id) == self.child => {
                    if *signal != Signal::SIGKILL {
                        self.graceful_at.get_or_insert(self.now);
                    } else if self.docker().is_some() && !self.child_exited {
                        // 4. The stop reaches the container first.
                        let waited = self.graceful_at.map(|t| self.now.saturating_since(t));
                        prop_assert!(
                            waited.is_some_and(|w| w >= grace),
                            "docker child SIGKILLed (group {group}) {waited:?} after a catchable signal, grace {grace:?}, on {event:?}"
                        );
                    }
                }
                Effect::ReportReady => self.reported_ready = true,
                Effect::RemoveProxySockets => {
                    // 5. Only with Exit, only from the service.
                    prop_assert!(
                        matches!(effects.last(), Some(Effect::Exit(_))),
                        "socket files removed without exiting: {effects:?}"
                    );
                    prop_assert!(!self.ready_fed, "socket files removed after a handover");
                    if self.m.settings().generation == Generation::Successor {
                        prop_assert!(
                            self.reported_ready && self.predecessor_gone,
                            "a successor that is not the service removed the socket files"
                        );
                    }
                    bump(&self.seen.sockets_removed);
                }
                Effect::Exit(_) => {
                    prop_assert_eq!(i, effects.len() - 1);
                    self.exited = true;
                }
                Effect::Log(line) if line.starts_with("docker healthcheck failed") => {
                    bump(&self.seen.container_failure)
                }
                _ => {}
            }
        }
        // 1. Healthy only on evidence.
        self.acted_healthy |= effects.iter().any(|e| {
            matches!(
                e,
                Effect::WritePidfile
                    | Effect::ReportReady
                    | Effect::ProxyAccept
                    | Effect::Notify(Notify::Ready { .. })
            )
        });
        if self.acted_healthy && !was_healthy {
            prop_assert!(self.evidence, "healthy without evidence, on {event:?}");
            if self.docker().is_some() {
                bump(&self.seen.ready_by_engine);
            } else {
                bump(&self.seen.ready_by_notify);
            }
        }
        // 3. Bounded.
        if let (Some(started), Some(interval)) = (self.inspecting, self.docker()) {
            let due = self.m.deadline();
            prop_assert!(
                due.is_some_and(|d| d <= started + interval),
                "inspection from {started:?} unbounded: deadline {due:?}"
            );
        }
        Ok(())
    }
}

#[test]
fn readiness_from_outside_keeps_its_promises() {
    let seen = Seen::default();
    let mut runner = TestRunner::new(crate::props::config(1024));
    let strategy = (settings(), proptest::collection::vec(step(), 1..80));
    let result = runner.run(&strategy, |((settings, listen), steps)| {
        let mut h = Harness {
            m: Machine::new(settings).with_listen(listen),
            now: Instant::ZERO,
            seen: &seen,
            child: None,
            child_exited: false,
            successor: None,
            successor_gone: false,
            evidence: false,
            inspecting: None,
            graceful_at: None,
            reported_ready: false,
            acted_healthy: false,
            ready_fed: false,
            successor_void: false,
            predecessor_gone: false,
            exited: false,
        };
        h.feed(Event::Started)?;
        for step in &steps {
            if let Some(event) = h.event(step) {
                h.feed(event)?;
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    for (what, n) in [
        ("healthy by READY=1", seen.ready_by_notify.get()),
        ("healthy by the engine", seen.ready_by_engine.get()),
        (
            "a container failure stopping the child",
            seen.container_failure.get(),
        ),
        ("an inspection abandoned", seen.abandoned.get()),
        ("socket files removed", seen.sockets_removed.get()),
    ] {
        assert!(n > 0, "sometimes: {what} never happened in 1024 cases");
    }
}
