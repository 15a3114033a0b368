//! The old generation's side of an upgrade: start the successor, wait for its
//! "ready" (or its end), hand over, and take the service back if the new one dies
//! before the old child was touched.

use crate::Signal;

use super::state::{Drain, OldChild, State, Stop, StopCause, Upgrade};
use super::{
    Effect, ExitStatus, Instant, Machine, Notify, ProcId, Reply, Role, SUCCESSOR_GRACE, Timer,
    Trigger, about, kill, log, warn,
};

impl Machine {
    /// Spawn the successor; kill it if it neither reports ready nor exits within
    /// `upgrade.timeout` + [`SUCCESSOR_GRACE`].
    pub(super) fn start_upgrade(&mut self, now: Instant, trigger: Trigger, out: &mut Vec<Effect>) {
        let child = self.live_child().expect("a serving child");
        let successor = self.alloc();
        out.push(Effect::Log(super::Log {
            level: crate::log::Level::Notice,
            event: "upgrade_started",
            text: format!("upgrade: starting the successor (asked by {trigger})"),
            procs: Vec::new(),
            fields: vec![("trigger", trigger.to_string())],
        }));
        out.push(Effect::UpgradeBegan(trigger));
        out.push(Effect::Notify(Notify::Reloading));
        out.push(Effect::Spawn {
            id: successor,
            role: Role::Successor,
        });
        self.move_to_upgrading(Upgrade {
            old: OldChild::Running(child),
            successor,
            killed: false,
            said: None,
        });
        self.timers.set(
            Timer::SuccessorKill,
            now + self.settings.upgrade_timeout + SUCCESSOR_GRACE,
        );
    }

    /// A termination signal after the handover. The service is the new
    /// generation's, but whoever sends this still takes us for the service:
    /// systemd does until we exit (its main process; then it reads the pidfile and
    /// follows the new generation, which it never signalled, and SIGKILLs it once
    /// TimeoutStopSec= has passed). So the new generation gets it too, and stops
    /// its child the same way. (To cut a drain short instead, signal the old
    /// child.) We exit only once it is gone too: until then we are the process
    /// the service manager waits for, and what it finds left when we exit it
    /// SIGKILLs (systemd's KillMode=mixed) — the new child, mid-shutdown.
    pub(super) fn pass_on_stop(&mut self, now: Instant, sig: Signal, out: &mut Vec<Effect>) {
        let State::Stopping(stop) = &mut self.state else {
            return;
        };
        let StopCause::HandedOver {
            to, service_stops, ..
        } = &mut stop.cause
        else {
            return;
        };
        if self.exited_successor == Some(*to) {
            return; // the new generation is gone already
        }
        *service_stops = true;
        let successor = *to;
        self.tell_new_generation_to_stop(now, successor, sig, out);
    }

    /// [`Timer::NewGenerationKill`]: the new generation, told to stop, is still
    /// there; SIGKILL it (its child dies with it: pdeathsig).
    pub(super) fn on_new_generation_late(&mut self, out: &mut Vec<Effect>) {
        let State::Stopping(Stop {
            cause: StopCause::HandedOver { to, .. },
            ..
        }) = self.state
        else {
            return;
        };
        if self.exited_successor == Some(to) {
            return;
        }
        log(out, "the new generation did not stop in time; killing it");
        out.push(kill(to, false));
    }

    /// A termination signal mid-upgrade: pass it to the successor (the child gets
    /// it too, as every signal) and wait for the successor to be gone.
    pub(super) fn abort_upgrade(&mut self, now: Instant, sig: Signal, out: &mut Vec<Effect>) {
        let successor = self.successor().expect("an upgrade in flight");
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
        self.move_to_aborting();
        self.timers.set(
            Timer::SuccessorKill,
            now + self.settings.shutdown_timeout + SUCCESSOR_GRACE,
        );
    }

    /// [`Timer::SuccessorKill`]: the successor is late.
    pub(super) fn on_successor_late(&mut self, out: &mut Vec<Effect>) {
        let aborting = matches!(self.state, State::Aborting(_));
        let (State::Upgrading(u) | State::Aborting(u)) = &mut self.state else {
            return;
        };
        u.killed = true;
        let successor = u.successor;
        if aborting {
            warn(
                out,
                "successor_killed",
                "the successor did not stop in time; killing it",
            );
        } else {
            warn(
                out,
                "upgrade_failed",
                format!(
                    "upgrade failed: the successor did not report ready within upgrade.timeout + {}s; killing it",
                    SUCCESSOR_GRACE.as_secs()
                ),
            );
        }
        out.push(kill(successor, false));
    }

    /// The successor said why it gives up (it exits next).
    pub(super) fn on_successor_failed(&mut self, reason: String) {
        if let State::Upgrading(u) | State::Aborting(u) = &mut self.state {
            u.said = Some(reason);
        }
    }

    /// The old child exited while the successor starts: its exit status counts
    /// only if the upgrade fails.
    pub(super) fn on_child_exit_mid_upgrade(&mut self, status: ExitStatus, out: &mut Vec<Effect>) {
        let (State::Upgrading(u) | State::Aborting(u)) = &mut self.state else {
            unreachable!("an upgrade in flight");
        };
        let OldChild::Running(child) = u.old else {
            unreachable!("a running old child");
        };
        u.old = OldChild::Exited(status);
        let upgrading = matches!(self.state, State::Upgrading(_));
        out.push(kill(child, true));
        if upgrading {
            log(
                out,
                format!("the child exited ({status}) during the upgrade; waiting for its outcome"),
            );
        }
    }

    /// The successor reported ready: hand the service over and stop the old child.
    pub(super) fn on_successor_ready(&mut self, now: Instant, out: &mut Vec<Effect>) {
        let State::Upgrading(u) = &self.state else {
            unreachable!("an upgrade in flight");
        };
        let to = u.successor;
        if u.killed {
            log(
                out,
                "the successor reported ready after it was killed for being late; ignoring it",
            );
            return;
        }
        self.say_handed_over(to, u.old, out);
        self.last_upgrade = Some("succeeded".into());
        out.push(Effect::UpgradeEnded(Ok(())));
        self.answer_waiters(Reply::Upgraded { successor: to }, out);
        let drain = self.start_drain(now, out);
        let delay = self.settings.shutdown_delay;
        self.stop_child(
            now,
            delay,
            StopCause::HandedOver {
                to,
                drain,
                service_stops: false,
            },
            out,
        );
    }

    /// The upgrade succeeded: say so, and when the old child is stopped — now,
    /// once its proxied connections have closed, or after shutdown.delay.
    fn say_handed_over(&self, to: ProcId, old: OldChild, out: &mut Vec<Effect>) {
        let delay = self.settings.shutdown_delay;
        let when = match (self.proxy, delay.is_zero()) {
            (_, true) => "stopping the old child".to_string(),
            (true, false) => format!(
                "the old child is stopped once its proxied connections have closed, after shutdown.delay ({delay:?}) at the latest"
            ),
            (false, false) => format!("stopping the old child after shutdown.delay ({delay:?})"),
        };
        let procs = match old {
            OldChild::Running(c) => vec![("successor", to), ("old_child", c)],
            OldChild::Exited(_) => vec![("successor", to)],
        };
        about(
            out,
            crate::log::Level::Notice,
            "upgrade_succeeded",
            format!("upgrade: the successor is ready; {when}"),
            &procs,
        );
    }

    /// With a proxy, the handover moves the accepting to the successor: this
    /// generation's connections drain, bounded by [`Timer::DrainCutoff`].
    fn start_drain(&mut self, now: Instant, out: &mut Vec<Effect>) -> Drain {
        if !self.proxy {
            return Drain::NotProxied;
        }
        out.push(Effect::ProxyStopAccepting);
        self.timers.set(
            Timer::DrainCutoff,
            now + self.settings.shutdown_delay + self.settings.shutdown_timeout,
        );
        Drain::Awaiting
    }

    /// The successor is gone without (usefully) reporting ready: serve on, or exit
    /// with the old child's status if it has exited meanwhile.
    pub(super) fn on_successor_gone(&mut self, why: String, out: &mut Vec<Effect>) {
        let aborting = matches!(self.state, State::Aborting(_));
        let (State::Upgrading(u) | State::Aborting(u)) = &mut self.state else {
            unreachable!("an upgrade in flight");
        };
        // What the successor said before it went says more than its exit status.
        let why = match u.said.take() {
            Some(reason) => format!("{why}: {reason}"),
            None => why,
        };
        let (old, successor) = (u.old, u.successor);
        self.last_upgrade = Some(format!("failed: {why}"));
        out.push(Effect::UpgradeEnded(Err(why.clone())));
        self.answer_waiters(Reply::UpgradeFailed(why.clone()), out);
        let (event, text) = if aborting {
            ("upgrade_aborted", format!("upgrade aborted: {why}"))
        } else {
            (
                "upgrade_failed",
                format!("upgrade failed: {why}; the old child carries on"),
            )
        };
        let level = crate::log::Level::Warning;
        about(out, level, event, text, &[("successor", successor)]);
        self.after_failed_upgrade(old, &why, out);
    }

    /// After a failed upgrade: serve on, or exit with the old child's status if
    /// it has exited meanwhile.
    fn after_failed_upgrade(&mut self, old: OldChild, why: &str, out: &mut Vec<Effect>) {
        match old {
            OldChild::Exited(status) => {
                log(out, format!("the old child had exited ({status})"));
                self.exit(self.relayed(status), out);
            }
            OldChild::Running(child) => {
                self.move_to_serving(child);
                // The successor may have taken the control socket's name just
                // before it went (it takes it right before reporting ready).
                out.push(Effect::ClaimControl);
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

    /// The successor took over, then died. If the old child has not been signalled
    /// yet (`shutdown.delay`, or waiting for the proxy to drain), nothing is lost:
    /// this generation takes the service back. Otherwise the service ends with it,
    /// as any crash of the service would.
    pub(super) fn on_new_service_gone(&mut self, status: ExitStatus, out: &mut Vec<Effect>) {
        let State::Stopping(stop) = &self.state else {
            unreachable!("handed over");
        };
        let service_stops = matches!(
            stop.cause,
            StopCause::HandedOver {
                service_stops: true,
                ..
            }
        );
        match (stop.step, service_stops) {
            (super::StopStep::Delay(child), false) => self.take_service_back(child, status, out),
            _ => self.on_new_generation_stopped(status, service_stops, out),
        }
    }

    /// The new generation exited after taking over and after the old child was
    /// touched (or told to stop with the service): nothing is taken back.
    fn on_new_generation_stopped(
        &mut self,
        status: ExitStatus,
        service_stops: bool,
        out: &mut Vec<Effect>,
    ) {
        log(
            out,
            format!("the new generation exited ({status}) after taking over"),
        );
        if service_stops {
            self.timers.cancel(Timer::NewGenerationKill);
            // A pidfile naming it (it was killed) names a dead process: gone.
            if self.settings.pidfile {
                out.push(Effect::RemovePidfile {
                    exited_successor: self.exited_successor,
                });
            }
            // Told to stop with us, it was what we waited for (`pass_on_stop`).
            self.finish_if_stopped(out);
        }
    }

    /// The new generation died before the old child was touched: this
    /// generation serves again.
    fn take_service_back(&mut self, child: ProcId, status: ExitStatus, out: &mut Vec<Effect>) {
        warn(
            out,
            "upgrade_failed",
            format!(
                "the new generation exited ({status}) right after taking over; the old child was not stopped yet: serving again"
            ),
        );
        let why = format!("the new generation exited ({status}) right after taking over");
        self.last_upgrade = Some(format!("failed: {why}"));
        // Recorded as a second outcome of the same upgrade: it did hand over.
        out.push(Effect::UpgradeEnded(Err(why)));
        self.move_to_serving(child);
        // The new generation took the control socket's name.
        out.push(Effect::ClaimControl);
        if self.proxy {
            out.push(Effect::ProxyAccept);
        }
        if self.settings.pidfile {
            out.push(Effect::WritePidfile);
        }
        // The successor told the service manager it was the main process.
        out.push(Effect::Notify(Notify::MainPid));
    }
}
