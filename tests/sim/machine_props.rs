//! Property tests on the [`Machine`] alone (no world, no runtime): any sequence of
//! events, legal or odd, against the machine's own promises. Proptest shrinks a
//! failure to a short event list.
//!
//! 1. It never panics.
//! 2. At most one successor is in flight.
//! 3. I1 on one machine: once it serves (or started an upgrade), its child gets no
//!    shutdown signal nor SIGKILL before a `SuccessorReady` was accepted — except
//!    forwards and the group kill after the child exited.
//! 4. After `Exit`, nothing more is emitted; `Exit` ends its batch.
//! 5. Every id in a `Signal` effect was spawned before.
//! 6. No busy loop: a `Tick` at the deadline makes progress, and a few ticks at the
//!    same instant leave the deadline in the future (or none).
//! 7. A `SuccessorReady` from a successor it has already SIGKILLed is no handover:
//!    that successor is gone by the machine's own decision (the simulation found
//!    this one; see [`ready_from_a_successor_it_killed_is_no_handover`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use psflip::Signal;
use psflip::machine::{
    ClientId, Effect, Event, ExitStatus, Generation, Health, Instant, Machine, Notify, Phase,
    ProbeKind, ProcId, Reply, Request, Role, Sender, Settings,
};

const SIGNALS: &[Signal] = &[
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGCHLD,
    Signal::SIGPIPE,
];

/// An abstract event; ids are resolved against what the machine spawned.
#[derive(Clone, Debug)]
enum Step {
    Started,
    Signal(usize),
    ChildExited(ExitStatus),
    ProbeExited(ExitStatus),
    SuccessorExited(ExitStatus),
    /// Any id spawned so far (the `usize` picks which).
    SomeoneExited(usize, ExitStatus),
    SpawnFailed(Kind),
    SuccessorReady {
        right_id: bool,
    },
    PredecessorExited,
    PidfileWritten,
    PidfileFailed,
    ProxyDrained,
    /// A control client asks for an upgrade (`true`) or the status.
    Control(bool),
    /// A real-time signal (SIGRTMIN+n).
    Realtime(i32),
    /// The previous generation sends a termination signal (it aborts the
    /// upgrade, or passes a stop of the service on).
    Abort(usize),
    /// Time passes by this many milliseconds, then a tick (maybe early: spurious).
    Tick(u64),
    /// Time jumps to the deadline, and ticks there.
    TickAtDeadline,
}

fn status() -> impl Strategy<Value = ExitStatus> {
    prop_oneof![
        (0..4i32).prop_map(ExitStatus::Code),
        (126..140i32).prop_map(ExitStatus::Code),
        (1..32i32).prop_map(ExitStatus::Signaled),
    ]
}

/// A spawn's role without its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    App,
    Probe,
    Successor,
}

fn kind(role: Role) -> Kind {
    match role {
        Role::App => Kind::App,
        Role::Probe { .. } => Kind::Probe,
        Role::Successor => Kind::Successor,
    }
}

fn role() -> impl Strategy<Value = Kind> {
    prop_oneof![Just(Kind::App), Just(Kind::Probe), Just(Kind::Successor)]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        1 => Just(Step::Started),
        4 => (0..SIGNALS.len()).prop_map(Step::Signal),
        2 => status().prop_map(Step::ChildExited),
        2 => status().prop_map(Step::ProbeExited),
        2 => status().prop_map(Step::SuccessorExited),
        1 => (any::<usize>(), status()).prop_map(|(i, s)| Step::SomeoneExited(i, s)),
        1 => role().prop_map(Step::SpawnFailed),
        3 => any::<bool>().prop_map(|right_id| Step::SuccessorReady { right_id }),
        1 => Just(Step::PredecessorExited),
        2 => Just(Step::PidfileWritten),
        1 => Just(Step::PidfileFailed),
        1 => Just(Step::ProxyDrained),
        2 => any::<bool>().prop_map(Step::Control),
        1 => (34..=64i32).prop_map(Step::Realtime),
        1 => (2..5usize).prop_map(Step::Abort),
        4 => (0..3_000u64).prop_map(Step::Tick),
        5 => Just(Step::TickAtDeadline),
    ]
}

fn settings() -> impl Strategy<Value = Settings> {
    (
        any::<bool>(),
        prop_oneof![Just(Signal::SIGHUP), Just(Signal::SIGUSR1)],
        1..10_000u64,
        prop_oneof![Just(0u64), 0..3_000u64],
        prop_oneof![
            Just(Signal::SIGTERM),
            Just(Signal::SIGINT),
            Just(Signal::SIGUSR2)
        ],
        0..5_000u64,
        any::<bool>(),
        (any::<u64>(), 1..2_000u64),
        any::<bool>(),
    )
        .prop_map(
            |(
                first,
                upgrade_signal,
                ut,
                delay,
                shutdown_signal,
                timeout,
                alive,
                (a, interval),
                pidfile,
            )| {
                let health = if alive {
                    Health::Alive {
                        timeout: Duration::from_millis(a % ut),
                    }
                } else {
                    Health::Command {
                        kind: ProbeKind::Command,
                        after: Duration::from_millis(a % ut),
                        interval: Duration::from_millis(interval),
                    }
                };
                Settings {
                    generation: if first {
                        Generation::First
                    } else {
                        Generation::Successor
                    },
                    upgrade_signal,
                    upgrade_timeout: Duration::from_millis(ut),
                    shutdown_delay: Duration::from_millis(delay),
                    shutdown_signal,
                    shutdown_timeout: Duration::from_millis(timeout),
                    health,
                    pidfile,
                }
            },
        )
}

/// The machine and what the properties remember about its past.
struct Harness {
    m: Machine,
    now: Instant,
    spawned: BTreeMap<ProcId, Role>,
    /// Ids reported exited or failed to spawn.
    gone: BTreeSet<ProcId>,
    exited: bool,
    /// It served or started an upgrade: its child is the service (I1).
    protects_child: bool,
    /// Ids it sent SIGKILL to.
    killed: BTreeSet<ProcId>,
    /// The harness's own record of a handover (never the machine's opinion): it
    /// fed a "ready" from the successor in flight, which the machine had not
    /// SIGKILLed, with no termination signal fed since that successor started.
    ready_heard: bool,
    /// A termination signal was fed while a successor was in flight.
    aborted: bool,
    /// Control clients so far, and the ones answered.
    next_client: u64,
    started: bool,
    /// (Successor) its predecessor sent a termination signal: its child is no
    /// longer the service.
    released: bool,
    asked: BTreeMap<ClientId, Request>,
    answered: BTreeSet<ClientId>,
}

impl Harness {
    /// The successor spawned and not gone, if any.
    fn in_flight(&self) -> Option<ProcId> {
        self.spawned
            .iter()
            .find(|(s, r)| **r == Role::Successor && !self.gone.contains(s))
            .map(|(s, _)| *s)
    }

    fn latest(&self, role: Kind) -> Option<ProcId> {
        self.spawned
            .iter()
            .rev()
            .find(|(id, r)| kind(**r) == role && !self.gone.contains(id))
            .map(|(id, _)| *id)
    }

    fn event(&mut self, step: &Step) -> Option<Event> {
        Some(match *step {
            Step::Started => Event::Started,
            Step::Signal(i) => Event::signal(SIGNALS[i]),
            Step::ChildExited(status) => Event::ProcessExited {
                id: self.latest(Kind::App)?,
                status,
            },
            Step::ProbeExited(status) => Event::ProcessExited {
                id: self.latest(Kind::Probe)?,
                status,
            },
            Step::SuccessorExited(status) => Event::ProcessExited {
                id: self.latest(Kind::Successor)?,
                status,
            },
            Step::SomeoneExited(i, status) => {
                if self.spawned.is_empty() {
                    return None;
                }
                let id = *self.spawned.keys().nth(i % self.spawned.len())?;
                Event::ProcessExited { id, status }
            }
            Step::SpawnFailed(role) => Event::SpawnFailed {
                id: self.latest(role)?,
                reason: "injected".into(),
            },
            Step::SuccessorReady { right_id } => Event::SuccessorReady {
                id: if right_id {
                    self.latest(Kind::Successor)?
                } else {
                    ProcId(9_999)
                },
            },
            Step::PredecessorExited => Event::PredecessorExited,
            Step::PidfileWritten => Event::PidfileWritten,
            Step::PidfileFailed => Event::PidfileFailed {
                reason: "injected".into(),
            },
            Step::ProxyDrained => Event::ProxyDrained,
            Step::Control(upgrade) => {
                self.next_client += 1;
                Event::ControlRequest {
                    from: None,
                    client: ClientId(self.next_client),
                    request: if upgrade {
                        Request::Upgrade
                    } else {
                        Request::Status
                    },
                }
            }
            Step::Realtime(signo) => Event::RealtimeSignalReceived(signo),
            Step::Abort(i) => Event::SignalReceived {
                signal: SIGNALS[i],
                from: Sender::Predecessor,
            },
            Step::Tick(ms) => {
                self.now = self.now + Duration::from_millis(ms);
                Event::Tick
            }
            Step::TickAtDeadline => {
                if let Some(d) = self.m.deadline() {
                    self.now = self.now.max(d);
                }
                Event::Tick
            }
        })
    }

    /// Step the machine and check every property on what came out.
    fn feed(&mut self, event: Event) -> Result<(), TestCaseError> {
        let due_before = self.m.deadline().is_some_and(|d| d <= self.now);
        let in_flight = self.in_flight();
        match &event {
            Event::SuccessorReady { id }
                if Some(*id) == in_flight && !self.killed.contains(id) && !self.aborted =>
            {
                self.ready_heard = true;
            }
            Event::SignalReceived {
                signal: Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT,
                ..
            } if in_flight.is_some() => self.aborted = true,
            // The previous generation aborted the upgrade that made us (or passes
            // a stop on): we were never (or are no longer) the service, and may
            // stop our child (SPEC §5).
            Event::SignalReceived {
                signal: Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT,
                from: Sender::Predecessor,
            } if self.m.settings().generation == Generation::Successor => {
                self.protects_child = false;
                self.released = true;
            }
            _ => {}
        }
        // (Before `Started` the runtime reads no request: it feeds `Started`
        // before its loop polls the control socket.)
        if event == Event::Started {
            self.started = true;
        }
        if let Event::ControlRequest {
            client, request, ..
        } = &event
            && self.started
        {
            self.asked.insert(*client, *request);
        }
        let effects = self.m.step(self.now, event.clone());
        if self.exited {
            prop_assert!(
                effects.is_empty(),
                "after Exit, {event:?} emitted {effects:?}"
            );
            return Ok(());
        }
        match &event {
            Event::ProcessExited { id, .. } | Event::SpawnFailed { id, .. } => {
                self.gone.insert(*id);
            }
            _ => {}
        }
        let child = self
            .spawned
            .iter()
            .find(|(_, r)| **r == Role::App)
            .map(|(id, _)| *id);
        let shutdown = self.m.settings().shutdown_signal;
        for (i, effect) in effects.iter().enumerate() {
            match *effect {
                Effect::Spawn { id, role } => {
                    prop_assert!(!self.spawned.contains_key(&id), "id {id} spawned twice");
                    if role == Role::Successor {
                        let in_flight: Vec<ProcId> = self
                            .spawned
                            .iter()
                            .filter(|(s, r)| **r == Role::Successor && !self.gone.contains(s))
                            .map(|(s, _)| *s)
                            .collect();
                        prop_assert!(
                            in_flight.is_empty(),
                            "successor {id} spawned while {in_flight:?} in flight"
                        );
                        self.protects_child = true;
                        self.aborted = false;
                    }
                    self.spawned.insert(id, role);
                }
                Effect::Signal { id, signal, group } => {
                    prop_assert!(
                        self.spawned.contains_key(&id),
                        "signal to {id}, never spawned"
                    );
                    if signal == Signal::SIGKILL {
                        self.killed.insert(id);
                    }
                    let forward = !group
                        && matches!(event, Event::SignalReceived { signal: s, .. } if s == signal);
                    let stop = signal == Signal::SIGKILL || signal == shutdown;
                    if Some(id) == child && stop && !forward && self.protects_child {
                        prop_assert!(
                            self.gone.contains(&id) || self.ready_heard,
                            "I1: {signal} to the serving child before a handover (on {event:?})"
                        );
                    }
                }
                Effect::Reply { client, ref reply } => {
                    prop_assert!(
                        self.asked.contains_key(&client),
                        "a reply to {client:?}, who asked nothing"
                    );
                    prop_assert!(
                        self.answered.insert(client),
                        "{client:?} answered twice (now {reply:?})"
                    );
                    let is_status = matches!(reply, Reply::Status(_));
                    prop_assert_eq!(
                        is_status,
                        self.asked[&client] == Request::Status,
                        "{:?} asked {:?}, got {:?}",
                        client,
                        self.asked[&client],
                        reply
                    );
                }
                Effect::SignalRealtime { id, .. } => {
                    prop_assert_eq!(Some(id), child, "a real-time signal to {}", id);
                }
                Effect::Exit(_) => {
                    // Every client gets its answer, at the latest as psflip exits.
                    let unanswered: Vec<_> = self
                        .asked
                        .keys()
                        .filter(|c| !self.answered.contains(c))
                        .collect();
                    prop_assert!(
                        unanswered.is_empty(),
                        "exit with {unanswered:?} unanswered: {effects:?}"
                    );
                    prop_assert_eq!(
                        i,
                        effects.len() - 1,
                        "Exit does not end its batch: {:?}",
                        effects
                    );
                    self.exited = true;
                }
                _ => {}
            }
        }
        // Serving, as its effects say: ready reported, or READY=1 told.
        if !self.released
            && effects.iter().any(|e| {
                matches!(
                    e,
                    Effect::ReportReady | Effect::Notify(Notify::Ready { .. })
                )
            })
        {
            self.protects_child = true;
        }
        // A status request is answered at once.
        if let Event::ControlRequest {
            client,
            request: Request::Status,
            ..
        } = event
            && self.started
        {
            prop_assert!(
                self.exited || self.answered.contains(&client),
                "status to {client:?} not answered at once: {effects:?}"
            );
        }
        if let Event::SuccessorReady { id } = event
            && self.killed.contains(&id)
        {
            prop_assert!(
                !effects.contains(&Effect::ProxyStopAccepting),
                "handed over to successor {id}, which it had SIGKILLed: {effects:?}"
            );
        }
        if event == Event::Tick && due_before && !self.exited {
            let still_due = self.m.deadline().is_some_and(|d| d <= self.now);
            prop_assert!(
                !still_due || !effects.is_empty(),
                "a due Tick at {:?} did nothing; deadline {:?}",
                self.now,
                self.m.deadline()
            );
        }
        Ok(())
    }

    /// Ticks at one instant must stop being due after a few.
    fn settle_ticks(&mut self) -> Result<(), TestCaseError> {
        for _ in 0..4 {
            if self.exited || self.m.deadline().is_none_or(|d| d > self.now) {
                return Ok(());
            }
            self.feed(Event::Tick)?;
        }
        prop_assert!(
            self.exited || self.m.deadline().is_none_or(|d| d > self.now),
            "busy loop: the deadline {:?} stays due at {:?}",
            self.m.deadline(),
            self.now
        );
        Ok(())
    }
}

/// The suite's one seed policy (`tests/common/props.rs`).
fn config() -> ProptestConfig {
    crate::props::config(1024)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn machine_keeps_its_promises(
        settings in settings(),
        proxy in any::<bool>(),
        start_first in proptest::bool::weighted(0.9),
        steps in proptest::collection::vec(step(), 1..80),
    ) {
        let mut h = Harness {
            m: Machine::new(settings).with_proxy(proxy),
            now: Instant::ZERO,
            spawned: BTreeMap::new(),
            gone: BTreeSet::new(),
            exited: false,
            protects_child: false,
            killed: BTreeSet::new(),
            ready_heard: false,
            aborted: false,
            next_client: 0,
            started: false,
            released: false,
            asked: BTreeMap::new(),
            answered: BTreeSet::new(),
        };
        // Most runs start properly; some get events before `Started`.
        if start_first {
            h.feed(Event::Started)?;
        }
        for step in &steps {
            let Some(event) = h.event(step) else { continue };
            h.feed(event)?;
            h.settle_ticks()?;
        }
    }
}

/// Regression (simulation seeds in `regressions.txt`): the old generation SIGKILLs a
/// successor that has not reported ready within `upgrade.timeout + 5s`, and then
/// reads the "ready" byte that successor wrote just before the SIGKILL landed. It
/// must not hand over to the successor it has just killed: that stops the old
/// child with nothing left to serve — a full outage.
#[test]
fn ready_from_a_successor_it_killed_is_no_handover() {
    let settings = Settings {
        generation: Generation::First,
        upgrade_signal: Signal::SIGHUP,
        upgrade_timeout: Duration::from_secs(2),
        shutdown_delay: Duration::ZERO,
        shutdown_signal: Signal::SIGTERM,
        shutdown_timeout: Duration::from_secs(1),
        health: Health::Alive {
            timeout: Duration::from_secs(1),
        },
        pidfile: false,
    };
    let at = |s: u64| Instant::from_origin(Duration::from_secs(s));
    let mut m = Machine::new(settings);
    m.step(at(0), Event::Started);
    m.step(at(1), Event::Tick);
    assert_eq!(m.phase(), Phase::Serving);
    m.step(at(10), Event::signal(Signal::SIGHUP));
    let successor = m.successor().expect("an upgrade in flight");
    let kill_at = m.deadline().expect("the successor's kill deadline");
    let killed = m.step(kill_at, Event::Tick);
    assert!(
        killed.contains(&Effect::Signal {
            id: successor,
            signal: Signal::SIGKILL,
            group: false
        }),
        "{killed:?}"
    );
    let effects = m.step(kill_at, Event::SuccessorReady { id: successor });
    assert!(
        !effects.contains(&Effect::ProxyStopAccepting),
        "handed over to the successor it had just SIGKILLed; effects: {effects:?}"
    );
    assert!(
        !effects.iter().any(|e| matches!(
            e,
            Effect::Signal {
                signal: Signal::SIGTERM,
                ..
            }
        )),
        "stopped the old child for a successor it had killed: {effects:?}"
    );
}
