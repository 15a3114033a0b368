//! Every deadline of the machine in one table, keyed by [`Timer`]: the next
//! deadline is the minimum of the table, and a tick fires exactly the entries due.
//! A timer is armed by the transition that makes it meaningful and disarmed by the
//! one that makes it moot (see `state.rs`), so a spurious tick is a no-op.

use super::types::Instant;

/// What happens when a deadline passes. The order is the firing order within
/// one tick: the health deadline beats a healthy verdict due at the same instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Timer {
    /// (Starting) the child has not proven healthy within `upgrade.timeout`.
    HealthDeadline,
    /// (Starting, `alive` check) the child has run long enough: healthy.
    AliveFor,
    /// (Starting) the probe still runs after `interval`: kill it; or the Docker
    /// engine has not answered: abandon the inspection.
    ProbeOverrun,
    /// (Starting) the next probe run starts.
    ProbeStart,
    /// (Upgrading, Aborting) the successor is late: SIGKILL it.
    SuccessorKill,
    /// (Stopping) `shutdown.delay` has passed: send `shutdown.signal`.
    ShutdownSignal,
    /// (Stopping) `shutdown.timeout` has passed: SIGKILL the child's group.
    ChildKill,
    /// (Stopping after a handover with a proxy) stop waiting for the proxied
    /// connections: `shutdown.delay + shutdown.timeout` after the handover.
    DrainCutoff,
    /// (Exiting, escaped processes signalled) `shutdown.timeout` has passed:
    /// SIGKILL them.
    EscapedKill,
    /// (Exiting, escaped processes SIGKILLed) stop waiting for them.
    EscapedGiveUp,
    /// (Stopping after a handover, a stop passed on to the new generation) it has
    /// not exited within `shutdown.timeout` + grace: SIGKILL it.
    NewGenerationKill,
}

const ALL: [Timer; 11] = [
    Timer::HealthDeadline,
    Timer::AliveFor,
    Timer::ProbeOverrun,
    Timer::ProbeStart,
    Timer::SuccessorKill,
    Timer::ShutdownSignal,
    Timer::ChildKill,
    Timer::DrainCutoff,
    Timer::EscapedKill,
    Timer::EscapedGiveUp,
    Timer::NewGenerationKill,
];

/// The table: one optional instant per [`Timer`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Timers([Option<Instant>; ALL.len()]);

impl Timers {
    /// Arm `timer` at `at` (re-arming moves it).
    pub fn set(&mut self, timer: Timer, at: Instant) {
        self.0[timer as usize] = Some(at);
    }

    /// Disarm `timer`; returns when it was due, if it was armed.
    pub fn cancel(&mut self, timer: Timer) -> Option<Instant> {
        self.0[timer as usize].take()
    }

    /// Disarm every timer in `timers`.
    pub fn cancel_all(&mut self, timers: &[Timer]) {
        for &t in timers {
            self.cancel(t);
        }
    }

    pub fn get(&self, timer: Timer) -> Option<Instant> {
        self.0[timer as usize]
    }

    /// The earliest armed deadline.
    pub fn next(&self) -> Option<Instant> {
        self.0.iter().flatten().min().copied()
    }

    /// The timers due at `now`, in firing order.
    pub fn due(&self, now: Instant) -> Vec<Timer> {
        ALL.into_iter()
            .filter(|&t| self.get(t).is_some_and(|at| at <= now))
            .collect()
    }

    /// Disarm `timer` if it is due at `now`; returns whether it was.
    pub fn take_due(&mut self, timer: Timer, now: Instant) -> bool {
        let due = self.get(timer).is_some_and(|at| at <= now);
        if due {
            self.cancel(timer);
        }
        due
    }
}
