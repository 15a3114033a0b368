//! Where a generation stands: each state holds exactly the data that exists in it,
//! and the machine moves between states only through the `move_to_*` functions at
//! the bottom, which assert that the move is legal and disarm the timers of the
//! state left behind.
//!
//! ```text
//! Booting ──Started──▶ Starting ──healthy, pidfile written──▶ Serving ◀─────────┐
//!                        │                                     │   ▲            │
//!                        │ never healthy / gave up             │   │ successor  │ successor
//!                        ▼                                     ▼   │ gone       │ died before
//!                     Stopping ◀──successor ready── Upgrading ─────┘            │ the old child
//!                        │                             │ termination signal     │ was touched
//!                        │                             ▼                        │
//!                        │                          Aborting ──successor gone───┘ (to Serving)
//!                        ▼
//!                      Done  (from any state but Booting, once `Exit` is emitted)
//! ```

use super::escaped::Sweep;
use super::types::{ExitStatus, ProcId};
use super::{Machine, Timer};

/// One generation's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Waiting for `Started`.
    Booting,
    /// The child runs and has not proven healthy yet, or the pidfile is being
    /// written now that it has.
    Starting {
        child: ProcId,
        health: Proving,
        /// (First generation) an upgrade was asked for: it starts once serving.
        upgrade_requested: bool,
        /// (`[healthcheck.docker]`) why the last inspection did not make the child
        /// healthy, for the failure reason at `upgrade.timeout`.
        last_check: Option<String>,
    },
    /// The child is healthy and this generation is the service.
    Serving { child: ProcId },
    /// A successor runs and has not reported ready.
    Upgrading(Upgrade),
    /// A termination signal arrived mid-upgrade: it was passed to the successor
    /// and the child; waiting for the successor to be gone.
    Aborting(Upgrade),
    /// Stopping the child, then exiting.
    Stopping(Stop),
    /// The child is gone; the exit waits until the escaped processes that
    /// re-parented to this psflip are gone too, and, after a handover, a new
    /// generation that a stop was passed on to (`escaped.rs`).
    Sweeping(Sweep),
    /// `Exit` was emitted; every later event is ignored.
    Done {
        /// Whether this generation handed the service over before it exited.
        handed_over: bool,
    },
}

/// A [`State`]'s name, without its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    Booting,
    Starting,
    Serving,
    Upgrading,
    Aborting,
    Stopping,
    Done,
}

impl State {
    pub fn phase(&self) -> Phase {
        match self {
            State::Booting => Phase::Booting,
            State::Starting { .. } => Phase::Starting,
            State::Serving { .. } => Phase::Serving,
            State::Upgrading(_) => Phase::Upgrading,
            State::Aborting(_) => Phase::Aborting,
            State::Stopping(_) | State::Sweeping(_) => Phase::Stopping,
            State::Done { .. } => Phase::Done,
        }
    }
}

/// How far a starting child is in proving itself healthy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proving {
    /// Waiting: for `alive`'s timeout, or for the next probe run.
    Waiting,
    /// A probe runs (`killed`: it overran `interval` and was SIGKILLed).
    Probing { probe: ProcId, killed: bool },
    /// (`[healthcheck.docker]`) an inspection is in flight.
    Inspecting,
    /// Healthy: writing the pidfile before serving (or reporting ready).
    WritingPidfile,
}

impl Proving {
    /// The probe that runs, if one does.
    pub fn probe(self) -> Option<ProcId> {
        match self {
            Proving::Probing { probe, .. } => Some(probe),
            Proving::Waiting | Proving::Inspecting | Proving::WritingPidfile => None,
        }
    }
}

/// An upgrade in flight, started by this generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upgrade {
    pub old: OldChild,
    pub successor: ProcId,
    /// The successor was SIGKILLed for being late: a "ready" from it is void.
    pub killed: bool,
    /// Why the successor gives up, if it said so before going.
    pub said: Option<String>,
}

/// This generation's child, seen from an upgrade: it may exit while one is in
/// flight, and the outcome decides what its exit means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OldChild {
    Running(ProcId),
    Exited(ExitStatus),
}

/// Stopping the child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stop {
    pub step: StopStep,
    pub cause: StopCause,
}

/// How far the stop has come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopStep {
    /// `shutdown.delay` runs: the child is untouched.
    Delay(ProcId),
    /// A termination signal was sent; SIGKILL follows at [`Timer::ChildKill`].
    Signalled(ProcId),
    /// SIGKILL was sent to the child's group.
    Killed(ProcId),
    /// The child is gone; waiting for the proxied connections to close.
    Gone,
}

impl StopStep {
    pub fn child(self) -> Option<ProcId> {
        match self {
            StopStep::Delay(c) | StopStep::Signalled(c) | StopStep::Killed(c) => Some(c),
            StopStep::Gone => None,
        }
    }
}

/// Why the child is stopped, which decides the exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopCause {
    /// The successor took over: exit 0.
    HandedOver {
        to: ProcId,
        drain: Drain,
        /// A termination signal reached us after the handover and was passed on
        /// to the new generation: the service stops, nothing is taken back.
        service_stops: bool,
    },
    /// The child never became the service (not healthy in time, or a successor's
    /// pidfile could not be written): it was killed at once; exit 1.
    Unready,
    /// (Successor) told to terminate before taking over, or by the old generation
    /// aborting the upgrade (or passing on a stop of the service after the
    /// handover, `took_over`): exit with the child's status if it was healthy or
    /// failed on its own, 1 if it had to be killed or exited 0 unhealthy.
    GaveUp { healthy: bool, took_over: bool },
}

/// After a handover: the proxied connections of this generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drain {
    /// No `[[proxy]]`.
    NotProxied,
    /// Some may still be open (bounded by [`Timer::DrainCutoff`]).
    Awaiting,
    /// All closed, or no longer waited for.
    Done,
}

impl StopCause {
    /// The exit status once the child exited with `status`, after step `step`;
    /// `relayed` is that status as a stop asked for (see `Machine::relayed`).
    pub fn exit_code(self, step: StopStep, status: ExitStatus, relayed: i32) -> i32 {
        match self {
            StopCause::HandedOver { .. } => 0,
            StopCause::Unready => 1,
            StopCause::GaveUp { .. } if matches!(step, StopStep::Killed(_)) => 1,
            // Like any service once it reported ready: 0 when its child died of
            // the stop it passed on.
            StopCause::GaveUp {
                took_over: true, ..
            } => relayed,
            StopCause::GaveUp { healthy, .. } if healthy || !status.success() => status.code(),
            StopCause::GaveUp { .. } => 1,
        }
    }

    /// The exit status when the child was gone before the stop began.
    pub fn exit_code_without_child(self) -> i32 {
        match self {
            StopCause::HandedOver { .. } => 0,
            StopCause::Unready | StopCause::GaveUp { .. } => 1,
        }
    }
}

/// Which generation this is, and what it owes the previous one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lineage {
    /// Started by the operator or a service manager.
    First,
    /// Started by a running psflip as its successor.
    Successor {
        predecessor: Predecessor,
        standing: Standing,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Predecessor {
    Running,
    Exited,
}

/// Whether a successor took the service over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Not yet; `failure` is why it gives up, told to the old generation at exit.
    Candidate { failure: Option<String> },
    /// It reported ready.
    TookOver,
}

/// The timers each state arms; leaving the state disarms them.
const STARTING_TIMERS: &[Timer] = &[
    Timer::HealthDeadline,
    Timer::AliveFor,
    Timer::ProbeOverrun,
    Timer::ProbeStart,
];
const UPGRADE_TIMERS: &[Timer] = &[Timer::SuccessorKill];
const STOP_TIMERS: &[Timer] = &[
    Timer::ShutdownSignal,
    Timer::ChildKill,
    Timer::DrainCutoff,
    Timer::NewGenerationKill,
];

impl Machine {
    pub(super) fn move_to_starting(&mut self, child: ProcId) {
        assert_eq!(self.state, State::Booting, "Starting only from Booting");
        self.state = State::Starting {
            child,
            health: Proving::Waiting,
            upgrade_requested: false,
            last_check: None,
        };
    }

    pub(super) fn move_to_serving(&mut self, child: ProcId) {
        let legal = match &self.state {
            State::Starting { health, .. } => *health == Proving::WritingPidfile,
            State::Upgrading(u) | State::Aborting(u) => u.old == OldChild::Running(child),
            // The successor died before the old child was touched.
            State::Stopping(stop) => {
                matches!(stop.cause, StopCause::HandedOver { .. })
                    && stop.step == StopStep::Delay(child)
            }
            _ => false,
        };
        assert!(legal, "Serving {child} from {:?}", self.state);
        self.timers.cancel_all(STARTING_TIMERS);
        self.timers.cancel_all(UPGRADE_TIMERS);
        self.timers.cancel_all(STOP_TIMERS);
        self.state = State::Serving { child };
    }

    pub(super) fn move_to_upgrading(&mut self, upgrade: Upgrade) {
        assert!(
            matches!(self.state, State::Serving { child } if upgrade.old == OldChild::Running(child)),
            "Upgrading from {:?}",
            self.state
        );
        self.state = State::Upgrading(upgrade);
    }

    pub(super) fn move_to_aborting(&mut self) {
        let State::Upgrading(upgrade) = &self.state else {
            panic!("Aborting from {:?}", self.state);
        };
        self.state = State::Aborting(upgrade.clone());
    }

    pub(super) fn move_to_stopping(&mut self, stop: Stop) {
        let legal = match (&self.state, stop.cause) {
            (State::Starting { .. }, StopCause::Unready | StopCause::GaveUp { .. }) => true,
            (State::Serving { .. }, StopCause::GaveUp { healthy: true, .. }) => true,
            (State::Upgrading(u), StopCause::HandedOver { to, .. }) => u.successor == to,
            _ => false,
        };
        assert!(legal, "Stopping for {:?} from {:?}", stop.cause, self.state);
        self.timers.cancel_all(STARTING_TIMERS);
        self.timers.cancel_all(UPGRADE_TIMERS);
        self.state = State::Stopping(stop);
    }

    /// Exiting, once the escaped processes are gone: what the exit will do was
    /// decided now, from the state left behind.
    pub(super) fn move_to_sweeping(&mut self, sweep: Sweep) {
        assert!(
            !matches!(
                self.state,
                State::Booting | State::Sweeping(_) | State::Done { .. }
            ),
            "Sweeping from {:?}",
            self.state
        );
        // Nothing else is due any more: this generation is on its way out.
        self.timers = Default::default();
        self.state = State::Sweeping(sweep);
    }

    pub(super) fn move_to_done(&mut self) {
        assert!(
            !matches!(self.state, State::Booting | State::Done { .. }),
            "Done from {:?}",
            self.state
        );
        let handed_over = self.handed_over();
        self.timers = Default::default();
        self.state = State::Done { handed_over };
    }

    /// Whether this generation has handed the service over (and is stopping its
    /// child, or has exited since).
    pub fn handed_over(&self) -> bool {
        match &self.state {
            State::Stopping(stop) => matches!(stop.cause, StopCause::HandedOver { .. }),
            State::Sweeping(sweep) => sweep.handover.is_some(),
            State::Done { handed_over } => *handed_over,
            _ => false,
        }
    }
}
