//! Stopping the child (`shutdown.delay`, `shutdown.signal`, SIGKILL after
//! `shutdown.timeout`), waiting for the proxied connections after a handover, and
//! exiting: what psflip cleans up on its way out, and with which status.

use std::time::Duration;

use super::escaped::NewGeneration;
use super::state::{
    Drain, Lineage, OldChild, Predecessor, Standing, State, Stop, StopCause, StopStep,
};
use super::{Effect, ExitStatus, Instant, Machine, Reply, Timer, child_gone, kill, log};

impl Machine {
    /// Stop the child after `delay` — `shutdown.signal`, then SIGKILL to its group
    /// after `shutdown.timeout` — and exit once it is gone.
    pub(super) fn stop_child(
        &mut self,
        now: Instant,
        delay: Duration,
        cause: StopCause,
        out: &mut Vec<Effect>,
    ) {
        let child = match &self.state {
            State::Upgrading(u) => u.old,
            _ => unreachable!("a handover stops the child of an upgrade"),
        };
        // Whatever happens next, nothing of this generation outlives this (I4).
        self.kill_due = Some(now + delay + self.settings.shutdown_timeout);
        match child {
            OldChild::Running(child) => {
                self.move_to_stopping(Stop {
                    step: StopStep::Delay(child),
                    cause,
                });
                if delay.is_zero() {
                    self.send_shutdown_signal(now, out);
                } else {
                    self.timers.set(Timer::ShutdownSignal, now + delay);
                }
            }
            OldChild::Exited(_) => {
                self.move_to_stopping(Stop {
                    step: StopStep::Gone,
                    cause,
                });
                self.finish(cause.exit_code_without_child(), out);
            }
        }
    }

    /// [`Timer::ShutdownSignal`], or the proxy drained during `shutdown.delay`.
    pub(super) fn send_shutdown_signal(&mut self, now: Instant, out: &mut Vec<Effect>) {
        let State::Stopping(stop) = &mut self.state else {
            return;
        };
        let StopStep::Delay(child) = stop.step else {
            return;
        };
        stop.step = StopStep::Signalled(child);
        self.timers.cancel(Timer::ShutdownSignal);
        self.timers
            .set(Timer::ChildKill, now + self.settings.shutdown_timeout);
        let due = now + self.settings.shutdown_timeout;
        self.kill_due = Some(self.kill_due.map_or(due, |d| d.min(due)));
        out.push(Effect::Signal {
            id: child,
            signal: self.settings.shutdown_signal,
            group: false,
        });
    }

    /// [`Timer::ChildKill`]: the child ignored the signal; SIGKILL its group.
    pub(super) fn on_shutdown_timeout(&mut self, out: &mut Vec<Effect>) {
        let State::Stopping(stop) = &mut self.state else {
            return;
        };
        let StopStep::Signalled(child) = stop.step else {
            return;
        };
        stop.step = StopStep::Killed(child);
        log(
            out,
            format!(
                "the child did not exit within shutdown.timeout ({:?}); sending SIGKILL",
                self.settings.shutdown_timeout
            ),
        );
        out.push(kill(child, true));
    }

    /// The child exited while being stopped.
    pub(super) fn on_stopped_child_exit(&mut self, status: ExitStatus, out: &mut Vec<Effect>) {
        let State::Stopping(stop) = &mut self.state else {
            unreachable!("stopping");
        };
        let step = stop.step;
        let child = step.child().expect("a child being stopped");
        stop.step = StopStep::Gone;
        let text = format!("the child exited ({status})");
        child_gone(child, crate::log::Level::Info, text, out);
        let code = stop.cause.exit_code(step, status, self.relayed(status));
        self.finish(code, out);
    }

    /// The child is gone while stopping: exit with `code`, or, after a handover with
    /// a proxy, once the old connections have closed (bounded by
    /// [`Timer::DrainCutoff`]).
    fn finish(&mut self, code: i32, out: &mut Vec<Effect>) {
        if self.awaits_drain() {
            log(out, "waiting for the proxied connections to close");
        } else if self.awaits_new_generation() {
            log(out, "waiting for the new generation to stop");
        } else {
            self.exit(code, out);
        }
    }

    /// After a handover: a stop was passed on to the new generation (see
    /// `pass_on_stop`), which has not exited yet.
    fn awaits_new_generation(&self) -> bool {
        match self.state {
            State::Stopping(Stop {
                cause:
                    StopCause::HandedOver {
                        to,
                        service_stops: true,
                        ..
                    },
                ..
            }) => self.exited_successor != Some(to),
            _ => false,
        }
    }

    /// After a handover, a stop was passed on to the new generation (see
    /// `pass_on_stop`): the service stops for good.
    fn ends_service_after_handover(&self) -> bool {
        matches!(
            self.state,
            State::Stopping(Stop {
                cause: StopCause::HandedOver {
                    service_stops: true,
                    ..
                },
                ..
            })
        )
    }

    /// The new generation, told to stop, has exited: exit too if nothing else is
    /// awaited (the child gone, the connections closed). A handover exits 0.
    pub(super) fn finish_if_stopped(&mut self, out: &mut Vec<Effect>) {
        if let State::Stopping(stop) = &self.state
            && stop.step == StopStep::Gone
        {
            self.finish(0, out);
        }
    }

    fn awaits_drain(&self) -> bool {
        matches!(
            self.state,
            State::Stopping(Stop {
                cause: StopCause::HandedOver {
                    drain: Drain::Awaiting,
                    ..
                },
                ..
            })
        )
    }

    fn set_drain(&mut self, done: Drain) {
        if let State::Stopping(Stop {
            cause: StopCause::HandedOver { drain, .. },
            ..
        }) = &mut self.state
        {
            *drain = done;
        }
    }

    /// The old connections have all closed: the old child need not wait for
    /// `shutdown.delay` any longer, nor psflip for them.
    pub(super) fn on_proxy_drained(&mut self, now: Instant, out: &mut Vec<Effect>) {
        self.set_drain(Drain::Done);
        self.timers.cancel(Timer::DrainCutoff);
        let State::Stopping(stop) = &self.state else {
            return;
        };
        match stop.step {
            StopStep::Gone => {
                log(out, "the proxied connections have all closed");
                self.finish(0, out);
            }
            StopStep::Delay(_) => {
                log(
                    out,
                    "the proxied connections have all closed; stopping the old child",
                );
                self.send_shutdown_signal(now, out);
            }
            StopStep::Signalled(_) | StopStep::Killed(_) => {}
        }
    }

    /// [`Timer::DrainCutoff`]: `shutdown.delay + shutdown.timeout` after the
    /// handover, proxied connections still open are cut (I4).
    pub(super) fn on_drain_cutoff(&mut self, out: &mut Vec<Effect>) {
        self.set_drain(Drain::Done);
        if let State::Stopping(stop) = &self.state
            && stop.step == StopStep::Gone
        {
            log(
                out,
                "proxied connections still open after shutdown.delay + shutdown.timeout; closing them",
            );
            self.finish(0, out);
        }
    }

    /// Exit with `code`, cleaning up what this generation owns: unless the service
    /// was handed over (the pidfile then names the successor), the pidfile; when
    /// this generation ends the service for good, the proxy's socket files.
    pub(super) fn exit(&mut self, code: i32, out: &mut Vec<Effect>) {
        self.kill_probe(out);
        self.answer_waiters(
            Reply::UpgradeFailed(format!("psflip exited (status {code}) first")),
            out,
        );
        if let Lineage::Successor {
            standing: Standing::Candidate { failure },
            ..
        } = &mut self.lineage
            && let Some(reason) = failure.take()
        {
            out.push(Effect::ReportFailure(reason));
        }
        // Escaped descendants first (`escaped.rs`): the files go with the exit.
        if !self.start_sweep(code, out) {
            self.finish_exit(code, out);
        }
    }

    /// The last effects: the pidfile and socket files this generation owns, then
    /// exit with `code`.
    pub(super) fn finish_exit(&mut self, code: i32, out: &mut Vec<Effect>) {
        out.extend(self.finale());
        out.push(Effect::Exit(code));
        self.move_to_done();
    }

    /// (Sweeping) the exit decided when the child was gone.
    pub(super) fn exit_after_sweep(&mut self, out: &mut Vec<Effect>) {
        let State::Sweeping(sweep) = &mut self.state else {
            return;
        };
        if matches!(sweep.handover, Some(NewGeneration::Stopping(_))) {
            log(out, "waiting for the new generation to stop");
            return;
        }
        out.append(&mut sweep.finale);
        out.push(Effect::Exit(sweep.code));
        self.move_to_done();
    }

    /// The files this generation removes as it exits: its pidfile, and the
    /// proxy's and `[[listen]]`'s socket files when it is the service.
    pub(super) fn finale(&self) -> Vec<Effect> {
        // A generation that passed a stop on after the handover ends the service
        // for good: the new generation is gone (it waited for it), and the files
        // it leaves are this generation's to remove.
        let handed_over = self.handed_over() && !self.ends_service_after_handover();
        self.files_to_remove(!handed_over)
    }

    /// The files this generation removes when they are `ours` (it has not handed
    /// the service over, or the service stops with it): its pidfile, and the
    /// socket files when it is the service.
    pub(super) fn files_to_remove(&self, ours: bool) -> Vec<Effect> {
        let mut out = Vec::new();
        if self.settings.pidfile && ours {
            out.push(Effect::RemovePidfile {
                exited_successor: self.exited_successor,
            });
        }
        // A failed successor never was the service: its socket files are the old
        // generation's, which still serves on them. Nor is a successor whose
        // predecessor still runs (it aborted the upgrade and serves on).
        let service = matches!(
            self.lineage,
            Lineage::First
                | Lineage::Successor {
                    predecessor: Predecessor::Exited,
                    standing: Standing::TookOver,
                }
        );
        if (self.proxy || self.listen) && service && ours {
            out.push(Effect::RemoveProxySockets);
        }
        out
    }
}
