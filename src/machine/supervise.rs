//! Starting the child, proving it healthy, serving, and the signals psflip passes
//! on to it.

use std::time::Duration;

use crate::Signal;

use super::state::{Lineage, Predecessor, Proving, State, Stop, StopCause, StopStep};
use super::{
    Effect, ExitStatus, GIVE_UP_GRACE, Health, Instant, Machine, Notify, ProbeKind, Role, Sender,
    Timer, child_gone, kill, log, note, warn,
};

impl Machine {
    /// `Started`: spawn the child and arm its health timers.
    pub(super) fn start_child(&mut self, now: Instant, out: &mut Vec<Effect>) {
        let id = self.alloc();
        self.move_to_starting(id);
        self.timers
            .set(Timer::HealthDeadline, now + self.health_within);
        match self.settings.health {
            Health::Alive { timeout } => self.timers.set(Timer::AliveFor, now + timeout),
            Health::Command { after, .. } => self.timers.set(Timer::ProbeStart, now + after),
            Health::Docker { .. } => self.timers.set(Timer::ProbeStart, now),
            Health::Notify => {}
        }
        out.push(Effect::Spawn {
            id,
            role: Role::App,
        });
    }

    /// [`Timer::ProbeStart`]: run the probe (or inspect the container) once; kill
    /// it (abandon it) if it overruns `interval`.
    pub(super) fn start_probe(&mut self, now: Instant, out: &mut Vec<Effect>) {
        let (kind, interval) = match self.settings.health {
            Health::Command { kind, interval, .. } => (kind, interval),
            Health::Docker { interval } => return self.start_inspection(now, interval, out),
            Health::Alive { .. } | Health::Notify => {
                unreachable!("ProbeStart is armed for a probed healthcheck only")
            }
        };
        let probe = self.alloc();
        self.set_proving(Proving::Probing {
            probe,
            killed: false,
        });
        self.timers.set(Timer::ProbeOverrun, now + interval);
        out.push(Effect::Spawn {
            id: probe,
            role: Role::Probe {
                kind,
                timeout: kind.timeout(interval),
            },
        });
    }

    /// [`Timer::ProbeOverrun`]: the probe still runs (or the engine has not
    /// answered) after `interval`.
    pub(super) fn on_probe_overrun(&mut self, now: Instant, out: &mut Vec<Effect>) {
        let probe = match self.state {
            State::Starting {
                health: Proving::Probing { probe, .. },
                ..
            } => probe,
            State::Starting {
                health: Proving::Inspecting,
                ..
            } => return self.abandon_inspection(now, out),
            _ => return,
        };
        let interval = match self.settings.health {
            Health::Command { interval, .. } | Health::Docker { interval } => interval,
            Health::Alive { .. } | Health::Notify => Duration::ZERO,
        };
        warn(
            out,
            "healthcheck_failed",
            format!("healthcheck still running after interval ({interval:?}); killing it"),
        );
        out.push(kill(probe, true));
        self.set_proving(Proving::Probing {
            probe,
            killed: true,
        });
    }

    /// The probe exited (`Ok`) or could not start (`Err`). The next run starts
    /// `interval` after this one started: at once if it overran.
    pub(super) fn on_probe_exit(
        &mut self,
        now: Instant,
        result: Result<ExitStatus, String>,
        out: &mut Vec<Effect>,
    ) {
        let next = self.timers.cancel(Timer::ProbeOverrun).unwrap_or(now);
        self.timers.set(Timer::ProbeStart, next);
        self.set_proving(Proving::Waiting);
        // psflip's own tcp/http probe logs its failure itself, once, with the
        // check and the reason; a status of 1 adds nothing to that.
        let own_probe = matches!(
            self.settings.health,
            Health::Command {
                kind: ProbeKind::Tcp | ProbeKind::Http,
                ..
            }
        );
        match result {
            Ok(status) if status.success() => self.on_healthy(now, out),
            Ok(ExitStatus::Code(1)) if own_probe => {}
            Ok(status) if own_probe => warn(
                out,
                "healthcheck_failed",
                format!("healthcheck probe failed ({status})"),
            ),
            Ok(status) => warn(
                out,
                "healthcheck_failed",
                format!("healthcheck command failed ({status})"),
            ),
            Err(reason) => warn(
                out,
                "healthcheck_failed",
                format!("cannot start the healthcheck command: {reason}"),
            ),
        }
    }

    /// [`Timer::HealthDeadline`]: not healthy within `upgrade.timeout`.
    pub(super) fn on_health_deadline(&mut self, now: Instant, out: &mut Vec<Effect>) {
        // What the last check said tells the operator what to fix.
        let last = match &mut self.state {
            State::Starting { last_check, .. } => last_check.take(),
            _ => None,
        };
        let last = last
            .map(|why| format!("; last check: {why}"))
            .unwrap_or_default();
        // A successor's deadline is the smaller of its own upgrade.timeout and
        // its predecessor's (see `with_predecessor_timeout`): say which.
        let within = if self.health_within < self.settings.upgrade_timeout {
            format!(
                "{:?}, the previous generation's, which bounds this configuration's {:?}",
                self.health_within, self.settings.upgrade_timeout
            )
        } else {
            format!("{:?}", self.health_within)
        };
        warn(
            out,
            "child_unhealthy",
            format!(
                "the child did not become healthy within upgrade.timeout ({within}){last}; stopping it"
            ),
        );
        self.fail(format!(
            "the new child did not become healthy within upgrade.timeout ({within}){last}"
        ));
        self.kill_probe(out);
        self.kill_unready_child(now, out);
    }

    /// The child passed its healthcheck: make the pidfile name us, then be ready.
    pub(super) fn on_healthy(&mut self, now: Instant, out: &mut Vec<Effect>) {
        self.timers.cancel_all(&[
            Timer::HealthDeadline,
            Timer::AliveFor,
            Timer::ProbeOverrun,
            Timer::ProbeStart,
        ]);
        self.set_proving(Proving::WritingPidfile);
        if self.settings.pidfile {
            out.push(Effect::WritePidfile);
        } else {
            self.on_ready(now, out);
        }
    }

    /// Healthy and (if configured) the pidfile names us.
    pub(super) fn on_ready(&mut self, now: Instant, out: &mut Vec<Effect>) {
        let State::Starting {
            child,
            upgrade_requested,
            ..
        } = self.state
        else {
            unreachable!("ready only while starting");
        };
        self.move_to_serving(child);
        if self.proxy {
            // For a successor: accept before the old generation stops, so the
            // listeners never go unattended.
            out.push(Effect::ProxyAccept);
            out.push(Effect::RemoveDroppedSockets);
        }
        match self.lineage {
            Lineage::First => {
                log(out, "child is healthy; serving");
                out.push(Effect::Notify(Notify::Ready {
                    status: "serving".into(),
                }));
                if upgrade_requested {
                    log(
                        out,
                        "starting the upgrade requested while the child was starting",
                    );
                    let trigger = self
                        .requested_by
                        .take()
                        .unwrap_or(super::Trigger::Control(None));
                    self.start_upgrade(now, trigger, out);
                }
            }
            Lineage::Successor { .. } => self.take_over(out),
        }
    }

    pub(super) fn on_pidfile_failed(
        &mut self,
        now: Instant,
        reason: String,
        out: &mut Vec<Effect>,
    ) {
        match self.lineage {
            Lineage::First => {
                log(
                    out,
                    format!("cannot write the pidfile: {reason}; carrying on without it"),
                );
                self.on_ready(now, out);
            }
            Lineage::Successor { .. } => {
                // Without the pidfile the service manager would lose track of the
                // service once the old generation exits: the old one keeps it.
                log(
                    out,
                    format!("upgrade failed: cannot write the pidfile: {reason}"),
                );
                self.fail(format!("cannot write the pidfile: {reason}"));
                self.kill_unready_child(now, out);
            }
        }
    }

    /// The child exited before it became the service: psflip exits with its
    /// non-zero status, or 1.
    pub(super) fn on_unready_child_exit(&mut self, status: ExitStatus, out: &mut Vec<Effect>) {
        let child = self.live_child().expect("a starting child");
        self.kill_probe(out);
        let text = format!("the child exited ({status}) before it became healthy");
        child_gone(child, crate::log::Level::Warning, text, out);
        self.fail(format!(
            "the new child exited ({status}) before it became healthy"
        ));
        let code = match self.lineage {
            _ if status.success() => 1,
            // Stopped while starting (`systemctl stop` before it was ready).
            Lineage::First => self.relayed(status),
            Lineage::Successor { .. } => status.code(),
        };
        self.exit(code, out);
    }

    /// The child runs. A first generation is the service from now on: the
    /// control socket's name is its own (after the child, which is not kept
    /// waiting for it; never when the child could not start, as psflip then
    /// exits at once). A successor's waits until it takes over.
    pub(super) fn on_child_spawned(&mut self, out: &mut Vec<Effect>) {
        if self.lineage == Lineage::First {
            out.push(Effect::ClaimControl);
        }
    }

    pub(super) fn on_child_spawn_failed(&mut self, reason: String, out: &mut Vec<Effect>) {
        note(
            out,
            crate::log::Level::Error,
            "spawn_failed",
            format!("cannot start the child: {reason}"),
        );
        self.fail(format!("cannot start the new child: {reason}"));
        self.kill_probe(out);
        self.exit(1, out);
    }

    /// The serving child exited: psflip exits with its status.
    pub(super) fn on_serving_child_exit(&mut self, status: ExitStatus, out: &mut Vec<Effect>) {
        let child = self.live_child().expect("a serving child");
        let level = if self.relayed(status) == 0 {
            crate::log::Level::Info
        } else {
            crate::log::Level::Warning
        };
        child_gone(child, level, format!("the child exited ({status})"), out);
        self.exit(self.relayed(status), out);
    }

    /// psflip's exit status for its child's `status` (SPEC §1, as issue #9 changed
    /// it): the child's code, or 128+N when it died of signal N — except 0 when it
    /// died of the termination signal psflip itself received and passed on. Then
    /// the stop was asked for (by a service manager, pidwatch or an operator) and
    /// happened as asked: systemd would otherwise mark the unit `failed`.
    pub(super) fn relayed(&self, status: ExitStatus) -> i32 {
        match (status, self.stop_signal) {
            (ExitStatus::Signaled(n), Some(sig)) if n == sig as i32 => 0,
            _ => status.code(),
        }
    }

    /// A signal: the upgrade signal asks for an upgrade; a termination signal
    /// aborts an upgrade in flight, cancels one asked for, or makes a successor
    /// give up; every signal but those two is passed on to the child.
    pub(super) fn on_signal(
        &mut self,
        now: Instant,
        sig: Signal,
        from: Sender,
        out: &mut Vec<Effect>,
    ) {
        if matches!(sig, Signal::SIGCHLD | Signal::SIGPIPE) {
            return;
        }
        if sig == self.settings.upgrade_signal {
            self.on_upgrade_signal(now, from, out);
            return;
        }
        let terminating = super::terminating(sig);
        if terminating {
            self.on_termination(now, sig, from, out);
        }
        self.forward(sig, terminating, out);
    }

    /// A termination signal (SIGTERM, SIGINT, SIGQUIT): it aborts an upgrade in
    /// flight or cancels one promised, is passed on to the new generation after a
    /// handover, and makes a successor that has not taken over give up.
    fn on_termination(&mut self, now: Instant, sig: Signal, from: Sender, out: &mut Vec<Effect>) {
        match &mut self.state {
            State::Upgrading(_) => self.abort_upgrade(now, sig, out),
            State::Starting {
                upgrade_requested, ..
            } if *upgrade_requested => {
                *upgrade_requested = false;
                self.cancel_requested_upgrade(sig, out)
            }
            _ => {}
        }
        if self.handed_over() && from != Sender::Predecessor {
            self.pass_on_stop(now, sig, out);
        }
        if self.gives_up_on(from) {
            self.give_up(now, sig, out);
        }
    }

    /// Every signal but the upgrade signal goes to the child (a termination
    /// signal is remembered: a child that dies of it stopped as asked).
    fn forward(&mut self, sig: Signal, terminating: bool, out: &mut Vec<Effect>) {
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

    /// A real-time signal goes to the child like any other.
    pub(super) fn forward_realtime(&mut self, signo: i32, out: &mut Vec<Effect>) {
        match self.live_child() {
            Some(id) => out.push(Effect::SignalRealtime { id, signo }),
            None => log(
                out,
                format!("signal {signo} not forwarded: the child has exited"),
            ),
        }
    }

    /// A child that never became the service is killed at once, with its whole
    /// group (SPEC §5: "the successor kills the new child"): it has nothing to
    /// finish, and the old generation's patience with a successor
    /// (`upgrade.timeout` + grace) must not run out while it stops. Exit 1 once it
    /// is gone.
    ///
    /// With `[healthcheck.docker]` the child is a `docker run` client: SIGKILL would
    /// end the client and leave its container running (and its name taken), so it
    /// gets `shutdown.signal`, which it passes on to the container, and SIGKILL to
    /// its group only after `shutdown.timeout`, at most [`GIVE_UP_GRACE`].
    pub(super) fn kill_unready_child(&mut self, now: Instant, out: &mut Vec<Effect>) {
        let child = self.live_child().expect("a starting child");
        if let Health::Docker { .. } = self.settings.health {
            out.push(Effect::Signal {
                id: child,
                signal: self.settings.shutdown_signal,
                group: false,
            });
            self.move_to_stopping(Stop {
                step: StopStep::Signalled(child),
                cause: StopCause::Unready,
            });
            let grace = self.settings.shutdown_timeout.min(GIVE_UP_GRACE);
            self.timers.set(Timer::ChildKill, now + grace);
            return;
        }
        out.push(kill(child, true));
        self.move_to_stopping(Stop {
            step: StopStep::Killed(child),
            cause: StopCause::Unready,
        });
    }

    /// Kill the probe that runs, or abandon the inspection in flight.
    pub(super) fn kill_probe(&mut self, out: &mut Vec<Effect>) {
        let State::Starting { health, .. } = &self.state else {
            return;
        };
        match health {
            Proving::Probing { probe, .. } => out.push(kill(*probe, true)),
            Proving::Inspecting => out.push(Effect::AbandonInspection),
            Proving::Waiting | Proving::WritingPidfile => return,
        }
        self.set_proving(Proving::Waiting);
    }

    pub(super) fn set_proving(&mut self, proving: Proving) {
        if let State::Starting { health, .. } = &mut self.state {
            *health = proving;
        }
    }

    /// (Successor) the predecessor's pipe closed: it has exited.
    pub(super) fn on_predecessor_exited(&mut self, out: &mut Vec<Effect>) {
        if let Lineage::Successor { predecessor, .. } = &mut self.lineage
            && *predecessor == Predecessor::Running
        {
            *predecessor = Predecessor::Exited;
            log(out, "the previous generation has exited");
        }
    }
}
