//! Fault injection, swarm style: each seed first picks *which* faults are on and how
//! often they strike (TigerBeetle's VOPR does the same), so one seed explores a
//! regime of many crashes, the next one of slow probes and hung successors, the next
//! a quiet world with a termination signal in the middle of an upgrade.
//!
//! Everything here is a pure function of its RNG stream. With the heal phase on
//! ([`Faults::calm`]) every draw answers "no fault": new processes behave.

use std::time::Duration;

use psflip::Signal;
use psflip::machine::{ExitStatus, Generation, Health, ProbeKind, Role, Settings};

use crate::rng::Rng;

/// The seed's fault regime: every probability, and the latency scale.
#[derive(Clone, Debug)]
pub struct Swarm {
    /// Upper bound of every delivery latency (signal, SIGCHLD wake-up, pipe, boot).
    pub max_latency: Duration,
    /// Per simulation step: SIGKILL a random psflip generation.
    pub crash_per_step: f64,
    /// Per simulation step: deliver a `Tick` to a random generation for no reason.
    pub spurious_tick_per_step: f64,
    /// A new app child exits on its own at a random moment.
    pub app_exits: f64,
    /// A new app child ignores every signal but SIGKILL.
    pub app_ignores_term: f64,
    /// A new app child is shell-like and leaves background jobs in its group.
    pub app_jobs: f64,
    /// A new app child takes longer than `shutdown.timeout` to stop.
    pub app_slow_stop: f64,
    pub spawn_fails_app: f64,
    pub spawn_fails_probe: f64,
    pub spawn_fails_successor: f64,
    pub probe_fails: f64,
    pub probe_hangs: f64,
    /// The successor finds an invalid configuration (or no binary) and exits 2.
    pub successor_bad_config: f64,
    /// The successor hangs before its event loop runs (never starts its child).
    pub successor_hangs: f64,
    pub pidfile_write_fails: f64,
    /// The successor dies right after writing "ready".
    pub ready_then_dies: f64,
    /// A poll misses the readiness byte (it lands while the loop turn runs).
    pub poll_misses_pipe: f64,
    /// Each generation re-reads a *changed* configuration.
    pub config_changes: f64,
    /// Zombies are reaped in a random order rather than by pid.
    pub shuffle_reaping: bool,
    /// With a proxy: the old generation's connections stay open longer than
    /// `shutdown.delay + shutdown.timeout` (it must exit anyway).
    pub long_connections: f64,
}

fn maybe(rng: &mut Rng, on: f64, rates: &[f64]) -> f64 {
    if rng.chance(on) { rng.pick(rates) } else { 0.0 }
}

impl Swarm {
    pub fn pick(rng: &mut Rng) -> Swarm {
        Swarm {
            max_latency: Duration::from_millis(rng.pick(&[0, 1, 5, 20, 100, 300])),
            crash_per_step: maybe(rng, 0.4, &[0.0005, 0.002, 0.01]),
            spurious_tick_per_step: maybe(rng, 0.3, &[0.01, 0.1]),
            app_exits: maybe(rng, 0.4, &[0.02, 0.1, 0.3]),
            app_ignores_term: maybe(rng, 0.4, &[0.2, 0.6]),
            app_jobs: maybe(rng, 0.4, &[0.3, 0.8]),
            app_slow_stop: maybe(rng, 0.4, &[0.2, 0.6]),
            spawn_fails_app: maybe(rng, 0.2, &[0.05, 0.3]),
            spawn_fails_probe: maybe(rng, 0.2, &[0.1, 0.3]),
            spawn_fails_successor: maybe(rng, 0.3, &[0.1, 0.4]),
            probe_fails: maybe(rng, 0.4, &[0.1, 0.5, 0.9]),
            probe_hangs: maybe(rng, 0.3, &[0.05, 0.3]),
            successor_bad_config: maybe(rng, 0.3, &[0.1, 0.4]),
            successor_hangs: maybe(rng, 0.3, &[0.1, 0.4]),
            pidfile_write_fails: maybe(rng, 0.3, &[0.1, 0.5]),
            ready_then_dies: maybe(rng, 0.2, &[0.2, 0.6]),
            poll_misses_pipe: maybe(rng, 0.5, &[0.3, 0.9]),
            config_changes: maybe(rng, 0.3, &[0.5, 1.0]),
            shuffle_reaping: rng.chance(0.5),
            long_connections: maybe(rng, 0.3, &[0.3, 1.0]),
        }
    }
}

/// How an app child behaves, drawn when it is spawned.
#[derive(Clone, Debug)]
pub struct AppBehaviour {
    /// Ignores every catchable signal (SIGTERM included).
    pub ignores_term: bool,
    /// How long it takes to exit once told to stop.
    pub stop_takes: Duration,
    /// Exits on its own, this long after its start, with this status.
    pub exits_after: Option<(Duration, ExitStatus)>,
    /// Background jobs it leaves in its process group.
    pub jobs: u8,
    /// On a signal, exits with code 128+N (as a shell does) instead of dying of it.
    pub exit_code_on_signal: bool,
}

/// What one run of the healthcheck command does.
#[derive(Clone, Copy, Debug)]
pub enum ProbeOutcome {
    Exits { after: Duration, code: i32 },
    Hangs,
}

/// What a successor does once exec'd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SuccessorBehaviour {
    /// Loads its configuration and runs its event loop.
    Normal,
    /// Finds an invalid configuration (or no binary) and exits 2, starting nothing.
    BadConfig,
    /// Never gets to its event loop (blocked signals stay pending).
    Hangs,
}

/// The fault injector: the swarm regime plus its RNG stream.
pub struct Faults {
    pub swarm: Swarm,
    rng: Rng,
    /// Off in the heal phase.
    pub enabled: bool,
}

impl Faults {
    pub fn new(swarm: Swarm, rng: Rng) -> Faults {
        Faults {
            swarm,
            rng,
            enabled: true,
        }
    }

    /// Heal phase: no new fault from now on.
    pub fn calm(&mut self) {
        self.enabled = false;
    }

    fn hit(&mut self, p: f64) -> bool {
        self.enabled && self.rng.chance(p)
    }

    pub fn spawn_fails(&mut self, role: Role) -> bool {
        let p = match role {
            Role::App => self.swarm.spawn_fails_app,
            Role::Probe { .. } => self.swarm.spawn_fails_probe,
            Role::Successor => self.swarm.spawn_fails_successor,
        };
        self.hit(p)
    }

    pub fn app(&mut self, settings: &Settings) -> AppBehaviour {
        let ignores_term = self.hit(self.swarm.app_ignores_term);
        let stop_takes = if self.hit(self.swarm.app_slow_stop) {
            settings.shutdown_timeout + self.rng.ms(1, 3_000)
        } else {
            // Usually well inside the timeout; a zero timeout still races.
            self.rng
                .upto(settings.shutdown_timeout.min(Duration::from_millis(500)))
        };
        let exits_after = if self.hit(self.swarm.app_exits) {
            let after = self.rng.upto(settings.upgrade_timeout * 2);
            let status = match self.rng.below(4) {
                0 => ExitStatus::Code(0),
                1 => ExitStatus::Code(self.rng.range(1, 3) as i32),
                2 => ExitStatus::Signaled(Signal::SIGSEGV as i32),
                _ => ExitStatus::Signaled(Signal::SIGABRT as i32),
            };
            Some((after, status))
        } else {
            None
        };
        // Background jobs are not a fault: a shell wrapper has them in calm times too.
        let jobs = if self.rng.chance(self.swarm.app_jobs) {
            self.rng.range(1, 2) as u8
        } else {
            0
        };
        AppBehaviour {
            ignores_term,
            stop_takes,
            exits_after,
            jobs,
            exit_code_on_signal: self.rng.chance(0.5),
        }
    }

    /// What the next probe run does, and whether that is a fault (it fails, hangs
    /// or is too slow).
    pub fn probe(&mut self, settings: &Settings) -> (ProbeOutcome, bool) {
        let interval = match settings.health {
            Health::Command { interval, .. } | Health::Docker { interval } => interval,
            Health::Alive { .. } | Health::Notify => Duration::from_secs(1),
        };
        if self.hit(self.swarm.probe_hangs) {
            return (ProbeOutcome::Hangs, true);
        }
        let code = if self.hit(self.swarm.probe_fails) {
            self.rng.range(1, 2) as i32
        } else {
            0
        };
        // A probe slower than the interval is killed: sometimes on purpose.
        let slow = self.hit(0.1);
        let after = if slow {
            interval + self.rng.ms(1, 500)
        } else {
            self.rng
                .upto((interval / 2).min(Duration::from_millis(100)))
        };
        (ProbeOutcome::Exits { after, code }, slow || code != 0)
    }

    pub fn successor(&mut self) -> SuccessorBehaviour {
        if self.hit(self.swarm.successor_bad_config) {
            SuccessorBehaviour::BadConfig
        } else if self.hit(self.swarm.successor_hangs) {
            SuccessorBehaviour::Hangs
        } else {
            SuccessorBehaviour::Normal
        }
    }

    /// How long exec + loading the configuration takes.
    pub fn boot_takes(&mut self) -> Duration {
        self.rng.ms(1, 400)
    }

    /// With a proxy, once a generation stops accepting: how long until its proxied
    /// connections have all closed (`None`: not within any bound that matters).
    pub fn drain_takes(&mut self, settings: &Settings) -> Option<Duration> {
        if self.hit(self.swarm.long_connections) {
            return None;
        }
        if self.rng.chance(0.3) {
            return Some(Duration::ZERO);
        }
        Some(
            self.rng
                .upto(settings.shutdown_delay + settings.shutdown_timeout),
        )
    }

    pub fn pidfile_write_fails(&mut self) -> bool {
        self.hit(self.swarm.pidfile_write_fails)
    }

    pub fn ready_then_dies(&mut self) -> bool {
        self.hit(self.swarm.ready_then_dies)
    }

    pub fn poll_misses_pipe(&mut self) -> bool {
        self.hit(self.swarm.poll_misses_pipe)
    }

    pub fn crash_now(&mut self) -> bool {
        self.hit(self.swarm.crash_per_step)
    }

    pub fn spurious_tick_now(&mut self) -> bool {
        self.hit(self.swarm.spurious_tick_per_step)
    }

    /// The settings a successor loads: the same, or (config change) new timeouts
    /// and healthcheck. The upgrade signal and the pidfile stay: a service manager
    /// and `psflip upgrade` rely on them.
    pub fn successor_settings(&mut self, old: &Settings) -> Settings {
        let mut new = old.clone();
        new.generation = Generation::Successor;
        if self.hit(self.swarm.config_changes) {
            let fresh = settings(&mut self.rng);
            new.upgrade_timeout = fresh.upgrade_timeout;
            new.health = fresh.health;
            new.shutdown_delay = fresh.shutdown_delay;
            new.shutdown_timeout = fresh.shutdown_timeout;
            if fresh.shutdown_signal != new.upgrade_signal {
                new.shutdown_signal = fresh.shutdown_signal;
            }
        }
        new
    }

    /// The order in which a loop turn reaps its zombies (`waitpid(-1)` picks any).
    pub fn reaping_order(&mut self, zombies: &mut [u32]) {
        if self.swarm.shuffle_reaping {
            for i in (1..zombies.len()).rev() {
                let j = self.rng.below(i as u64 + 1) as usize;
                zombies.swap(i, j);
            }
        }
    }

    /// Randomness for the rest (exit statuses of injected crashes, which generation).
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }
}

/// The first generation's settings, as `psflip check` would have accepted them:
/// `upgrade.timeout > 0`, and the alive timeout and the command's `after` shorter
/// than it.
pub fn settings(rng: &mut Rng) -> Settings {
    let upgrade_timeout = rng.ms(300, 20_000);
    let ut_ms = upgrade_timeout.as_millis() as u64;
    let health = if rng.chance(0.5) {
        Health::Alive {
            timeout: rng.ms(0, ut_ms - 1),
        }
    } else {
        Health::Command {
            kind: ProbeKind::Command,
            after: rng.ms(0, (ut_ms / 2).min(2_000)),
            interval: rng.ms(50, 3_000),
        }
    };
    let shutdown_signal = rng.pick(&[
        Signal::SIGTERM,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGUSR2,
    ]);
    let upgrade_signal = loop {
        let s = rng.pick(&[
            Signal::SIGHUP,
            Signal::SIGHUP,
            Signal::SIGUSR1,
            Signal::SIGUSR2,
        ]);
        if s != shutdown_signal {
            break s;
        }
    };
    Settings {
        generation: Generation::First,
        upgrade_signal,
        upgrade_timeout,
        shutdown_delay: if rng.chance(0.5) {
            Duration::ZERO
        } else {
            rng.ms(0, 3_000)
        },
        shutdown_signal,
        shutdown_timeout: rng.ms(0, 8_000),
        health,
        pidfile: rng.chance(0.6),
    }
}

/// What the operator does during the chaos phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperatorAction {
    /// The upgrade signal, to the service (or, `to_any`, to any live generation).
    Upgrade { to_any: bool },
    /// A termination signal to the service.
    Terminate(Signal),
    /// A signal psflip merely forwards.
    Other(Signal),
    /// A control client asks the service for an upgrade (`upgrade`) or its
    /// status; `vanishes`: it goes away before the answer.
    Control { upgrade: bool, vanishes: bool },
    /// A real-time signal (SIGRTMIN+n) to the service.
    Realtime(i32),
}

/// The control clients' and real-time signals' share of the operator's plan,
/// drawn from their own stream (existing seeds keep their other draws).
pub fn control_plan(rng: &mut Rng, chaos: Duration) -> Vec<(Duration, OperatorAction)> {
    let mut actions = Vec::new();
    if rng.chance(0.5) {
        for _ in 0..rng.range(1, 5) {
            let upgrade = rng.chance(0.6);
            let vanishes = rng.chance(0.2);
            actions.push((
                rng.upto(chaos),
                OperatorAction::Control { upgrade, vanishes },
            ));
        }
    }
    if rng.chance(0.2) {
        let signo = 34 + rng.below(31) as i32;
        actions.push((rng.upto(chaos), OperatorAction::Realtime(signo)));
    }
    actions
}

/// Sometimes a burst of control clients at one moment (several `psflip upgrade`
/// and `psflip status` at once), from a stream of their own.
pub fn client_burst(rng: &mut Rng, chaos: Duration) -> Vec<(Duration, OperatorAction)> {
    if !rng.chance(0.3) {
        return Vec::new();
    }
    let at = rng.upto(chaos);
    (0..rng.range(2, 5))
        .map(|_| {
            let upgrade = rng.chance(0.5);
            let vanishes = rng.chance(0.25);
            (at, OperatorAction::Control { upgrade, vanishes })
        })
        .collect()
}

/// The operator's schedule for one seed: `(when, what)`, plus whether a termination
/// signal is armed to strike during the next upgrade.
pub struct OperatorPlan {
    pub actions: Vec<(Duration, OperatorAction)>,
    pub terminate_during_upgrade: Option<Signal>,
}

pub fn operator_plan(rng: &mut Rng, chaos: Duration, settings: &Settings) -> OperatorPlan {
    let mut actions = Vec::new();
    let mean_gap_ms = rng.pick(&[300u64, 2_000, 6_000, 15_000]);
    let to_any = rng.pick(&[0.0, 0.1, 0.4]);
    let mut t = Duration::ZERO;
    loop {
        t += rng.ms(0, 2 * mean_gap_ms);
        if t >= chaos {
            break;
        }
        actions.push((
            t,
            OperatorAction::Upgrade {
                to_any: rng.chance(to_any),
            },
        ));
    }
    let terms = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGQUIT];
    let mut terminate_during_upgrade = None;
    match rng.below(10) {
        0 => actions.push((rng.upto(chaos), OperatorAction::Terminate(rng.pick(&terms)))),
        1 | 2 => terminate_during_upgrade = Some(rng.pick(&terms)),
        _ => {}
    }
    if rng.chance(0.3) {
        let others: Vec<Signal> = [Signal::SIGUSR1, Signal::SIGUSR2, Signal::SIGWINCH]
            .into_iter()
            .filter(|s| *s != settings.upgrade_signal && *s != settings.shutdown_signal)
            .collect();
        for _ in 0..rng.range(1, 3) {
            actions.push((rng.upto(chaos), OperatorAction::Other(rng.pick(&others))));
        }
    }
    actions.sort_by_key(|(t, _)| *t);
    OperatorPlan {
        actions,
        terminate_during_upgrade,
    }
}
