//! Escaped descendants (SPEC §10): processes of this generation's subtree that
//! left the child's process group (`setsid` daemons) and, psflip being a child
//! subreaper, re-parented to this psflip when their parent died.
//!
//! Why re-parenting attributes them to the right generation: every generation is
//! a subreaper, so an orphan goes to the nearest psflip above it. The successor
//! is one: the new child's escaped processes go to the successor, never to us;
//! ours (the old child's) go to us, never to the successor, which is not their
//! ancestor. What re-parented to us is therefore ours to stop (or, if our
//! successor was SIGKILLed, its failed generation's, which nobody else stops).
//!
//! When this generation exits ([`Machine::exit`]), and only with
//! [`Machine::with_subreaper`], it first asks the runtime to send
//! `shutdown.signal` to every process re-parented to it
//! ([`Effect::SignalEscaped`], answered with [`Event::EscapedSignalled`]), waits
//! until they are gone ([`Event::EscapedExited`]) or `shutdown.timeout` has
//! passed, then SIGKILLs the rest, and exits once they are reaped (or
//! [`ESCAPED_GIVE_UP`] later: a process stuck in the kernel cannot hold the exit
//! forever).

use std::time::Duration;

use super::state::{Stop, StopCause};
use super::{
    Effect, Event, Instant, Machine, ProcId, SUCCESSOR_GRACE, Sender, State, Timer, kill, log,
};
use crate::Signal;

/// After the SIGKILL, how long to wait for the escaped processes to be reaped.
pub const ESCAPED_GIVE_UP: Duration = Duration::from_secs(1);

/// The exit, put off until the escaped processes are gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sweep {
    /// The status psflip exits with.
    pub code: i32,
    /// SIGKILL has been sent.
    pub killed: bool,
    /// After a handover: the new generation (`None`: no handover).
    pub handover: Option<NewGeneration>,
    /// The files the exit removes (decided when the child was gone, and again
    /// when a stop passed on to the new generation ends the service).
    pub finale: Vec<Effect>,
}

/// After a handover, while the exit waits: the generation that took over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NewGeneration {
    /// It is the service; a termination signal that reaches us is passed on.
    Serving(ProcId),
    /// A stop was passed on to it: the exit waits until it has exited, SIGKILLing
    /// it at [`Timer::NewGenerationKill`].
    Stopping(ProcId),
    /// It has exited.
    Gone,
}

impl Machine {
    /// The same machine, stopping its escaped descendants before it exits (the
    /// runtime has made psflip a child subreaper).
    pub fn with_subreaper(mut self, subreaper: bool) -> Machine {
        self.subreaper = subreaper;
        self
    }

    /// Whether the exit waits for escaped processes.
    pub fn sweeping(&self) -> bool {
        matches!(self.state, State::Sweeping(_))
    }

    /// Instead of exiting with `code`: signal the escaped processes first.
    /// Returns false (exit now) without a subreaper.
    pub(super) fn start_sweep(&mut self, code: i32, out: &mut Vec<Effect>) -> bool {
        if !self.subreaper || self.sweeping() {
            return false;
        }
        let handover = self.new_generation();
        let new_generation_kill = self.timers.get(Timer::NewGenerationKill);
        self.move_to_sweeping(Sweep {
            code,
            killed: false,
            handover,
            finale: self.finale(),
        });
        if let (Some(NewGeneration::Stopping(_)), Some(at)) = (handover, new_generation_kill) {
            self.timers.set(Timer::NewGenerationKill, at);
        }
        out.push(Effect::SignalEscaped {
            signal: self.settings.shutdown_signal,
        });
        true
    }

    /// (Stopping) where the generation this one handed over to stands.
    fn new_generation(&self) -> Option<NewGeneration> {
        let State::Stopping(Stop {
            cause: StopCause::HandedOver {
                to, service_stops, ..
            },
            ..
        }) = self.state
        else {
            return None;
        };
        Some(match (self.exited_successor == Some(to), service_stops) {
            (true, _) => NewGeneration::Gone,
            (false, true) => NewGeneration::Stopping(to),
            (false, false) => NewGeneration::Serving(to),
        })
    }

    /// SIGKILL for the escaped processes still running.
    fn kill_escaped(&mut self, out: &mut Vec<Effect>) {
        self.timers.cancel(Timer::EscapedKill);
        if let State::Sweeping(sweep) = &mut self.state {
            sweep.killed = true;
        }
        log(
            out,
            "escaped processes still run after shutdown.timeout; sending SIGKILL",
        );
        out.push(Effect::SignalEscaped {
            signal: Signal::SIGKILL,
        });
    }

    /// Every event while the exit waits for the escaped processes.
    pub(super) fn on_sweep_event(&mut self, now: Instant, event: Event, out: &mut Vec<Effect>) {
        let State::Sweeping(sweep) = &self.state else {
            return;
        };
        let (killed, handover) = (sweep.killed, sweep.handover);
        match event {
            Event::EscapedSignalled { count: 0 } | Event::EscapedExited { remaining: 0 } => {
                self.exit_after_sweep(out)
            }
            Event::EscapedSignalled { count } => self.on_escaped_signalled(now, count, out),
            Event::Tick => self.on_sweep_tick(now, out),
            Event::SignalReceived { signal, from } => {
                self.on_signal_while_sweeping(now, signal, from, out)
            }
            Event::ProcessExited { id, .. }
                if matches!(
                    handover,
                    Some(NewGeneration::Serving(to) | NewGeneration::Stopping(to)) if to == id
                ) =>
            {
                self.on_new_generation_gone_while_sweeping(id, out)
            }
            // Orphans keep arriving while we wait (a successor of ours that died
            // leaves its subtree to us): whoever is adopted gets the same treatment.
            Event::EscapedExited { .. } if !killed => {}
            Event::EscapedExited { .. } | Event::ProcessExited { .. } => self.sweep_again(out),
            Event::ControlRequest {
                client,
                request,
                from,
            } => self.on_control(now, client, request, from, out),
            // The child is gone; nothing else is ours to act on any more.
            _ => {}
        }
    }

    /// The runtime signalled `count` (> 0) escaped processes.
    fn on_escaped_signalled(&mut self, now: Instant, count: usize, out: &mut Vec<Effect>) {
        let State::Sweeping(sweep) = &self.state else {
            return;
        };
        if sweep.killed {
            if self.timers.get(Timer::EscapedGiveUp).is_none() {
                self.timers.set(Timer::EscapedGiveUp, now + ESCAPED_GIVE_UP);
            }
            return;
        }
        // A later round before the SIGKILL: the deadline stands.
        if self.timers.get(Timer::EscapedKill).is_some() {
            return;
        }
        // The same deadline as the child's, when it was being stopped: the
        // generation is gone by shutdown.delay + shutdown.timeout after a
        // handover (I4), escaped processes included.
        let due = self
            .kill_due
            .unwrap_or(now + self.settings.shutdown_timeout);
        log(
            out,
            format!(
                "stopping {count} escaped process(es) of this generation: {} now, SIGKILL in {} (shutdown.timeout)",
                self.settings.shutdown_signal.as_str(),
                // Whole milliseconds: the rest is the time since the child's own
                // stop began, not worth printing.
                crate::values::format_duration(Duration::from_millis(
                    due.saturating_since(now).as_millis() as u64
                ))
            ),
        );
        self.timers.set(Timer::EscapedKill, due.max(now));
        if due <= now {
            self.kill_escaped(out);
        }
    }

    /// A tick while sweeping: the timers of this state.
    fn on_sweep_tick(&mut self, now: Instant, out: &mut Vec<Effect>) {
        if self.timers.take_due(Timer::NewGenerationKill, now)
            && let State::Sweeping(Sweep {
                handover: Some(NewGeneration::Stopping(to)),
                ..
            }) = self.state
        {
            log(out, "the new generation did not stop in time; killing it");
            out.push(kill(to, false));
        }
        if self.timers.take_due(Timer::EscapedKill, now) {
            self.kill_escaped(out);
        } else if self.timers.take_due(Timer::EscapedGiveUp, now) {
            log(out, "escaped processes survive SIGKILL; exiting anyway");
            self.exit_after_sweep(out);
        }
    }

    /// Another round of the signal for whoever was adopted since the last one.
    fn sweep_again(&mut self, out: &mut Vec<Effect>) {
        let State::Sweeping(sweep) = &self.state else {
            return;
        };
        out.push(Effect::SignalEscaped {
            signal: if sweep.killed {
                Signal::SIGKILL
            } else {
                self.settings.shutdown_signal
            },
        });
    }

    /// A signal while sweeping: the child is gone, so nothing is forwarded; but
    /// after a handover a termination signal is passed on to the new generation,
    /// as while the old child was stopping (`pass_on_stop`).
    fn on_signal_while_sweeping(
        &mut self,
        now: Instant,
        sig: Signal,
        from: Sender,
        out: &mut Vec<Effect>,
    ) {
        let State::Sweeping(sweep) = &mut self.state else {
            return;
        };
        let Some(NewGeneration::Serving(to)) = sweep.handover else {
            return;
        };
        if !super::terminating(sig) || from == Sender::Predecessor {
            return;
        }
        sweep.handover = Some(NewGeneration::Stopping(to));
        self.tell_new_generation_to_stop(now, to, sig, out);
    }

    /// Pass the stop `sig` on to the new generation `to`; SIGKILL it if it has
    /// not exited within `shutdown.timeout` + [`SUCCESSOR_GRACE`].
    pub(super) fn tell_new_generation_to_stop(
        &mut self,
        now: Instant,
        to: ProcId,
        sig: Signal,
        out: &mut Vec<Effect>,
    ) {
        log(
            out,
            format!(
                "{} after the handover: the service stops; passing it on to the new generation too",
                sig.as_str()
            ),
        );
        out.push(Effect::Signal {
            id: to,
            signal: sig,
            group: false,
        });
        // Its child gets shutdown.timeout (it was the service), then it exits.
        self.timers.set(
            Timer::NewGenerationKill,
            now + self.settings.shutdown_timeout + SUCCESSOR_GRACE,
        );
    }

    /// The new generation exited while the exit waits for the escaped
    /// processes: if a stop was passed on to it, the service has ended and the
    /// files are this generation's to remove. Its orphans may be ours now: another
    /// round.
    fn on_new_generation_gone_while_sweeping(&mut self, id: ProcId, out: &mut Vec<Effect>) {
        self.exited_successor = Some(id);
        self.timers.cancel(Timer::NewGenerationKill);
        let ours = self.files_to_remove(true);
        let State::Sweeping(sweep) = &mut self.state else {
            return;
        };
        if sweep.handover == Some(NewGeneration::Stopping(id)) {
            log(out, format!("the new generation [{id}] has stopped"));
            // A pidfile naming it (it may have been killed) names a dead process.
            out.extend(
                ours.iter()
                    .filter(|e| matches!(e, Effect::RemovePidfile { .. }))
                    .cloned(),
            );
            sweep.finale = ours;
        }
        sweep.handover = Some(NewGeneration::Gone);
        self.sweep_again(out);
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use crate::Signal;
    use std::time::Duration;

    fn t(ms: u64) -> Instant {
        Instant::from_origin(Duration::from_millis(ms))
    }

    fn no_logs(effects: Vec<Effect>) -> Vec<Effect> {
        effects
            .into_iter()
            .filter(|e| !matches!(e, Effect::Log(_) | Effect::Notify(_)))
            .collect()
    }

    const CHILD: ProcId = ProcId(1);

    /// The runtime reaped `id`, which ended with `status`.
    fn exited(id: ProcId, status: ExitStatus) -> Event {
        Event::ProcessExited { id, status }
    }

    /// One round of `signal` to the escaped processes.
    fn round(signal: Signal) -> Vec<Effect> {
        vec![Effect::SignalEscaped { signal }]
    }

    /// A control client's request, from no one in particular.
    fn ask(client: u64, request: Request) -> Event {
        Event::ControlRequest {
            client: ClientId(client),
            request,
            from: None,
        }
    }

    /// A first generation's settings (`shutdown.signal` SIGINT, `shutdown.timeout`
    /// 2 s, `alive` for 1 s).
    fn settings(pidfile: bool) -> Settings {
        Settings {
            shutdown_signal: Signal::SIGINT,
            pidfile,
            ..super::super::tests::settings(Generation::First)
        }
    }

    /// A first generation with a subreaper whose child has just exited 3.
    fn exiting() -> (Machine, Vec<Effect>) {
        let mut m = Machine::new(settings(false)).with_subreaper(true);
        m.step(t(0), Event::Started);
        let out = m.step(t(100), exited(CHILD, ExitStatus::Code(3)));
        (m, no_logs(out))
    }

    #[test]
    fn without_escaped_processes_the_exit_is_immediate() {
        let (mut m, out) = exiting();
        assert_eq!(
            out.last(),
            Some(&Effect::SignalEscaped {
                signal: Signal::SIGINT
            })
        );
        assert!(!out.contains(&Effect::Exit(3)));
        let out = m.step(t(100), Event::EscapedSignalled { count: 0 });
        assert_eq!(out, vec![Effect::Exit(3)]);
        assert!(!m.sweeping());
        assert_eq!(m.deadline(), None);
    }

    #[test]
    fn escaped_processes_get_the_shutdown_signal_then_sigkill_after_the_timeout() {
        let (mut m, _) = exiting();
        let out = no_logs(m.step(t(100), Event::EscapedSignalled { count: 2 }));
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(m.deadline(), Some(t(2100)), "shutdown.timeout");
        // One goes; nothing else happens until the timeout.
        assert!(no_logs(m.step(t(500), Event::EscapedExited { remaining: 1 })).is_empty());
        assert!(no_logs(m.step(t(2099), Event::Tick)).is_empty());
        // Signals while sweeping are not acted on (the child is gone).
        assert!(no_logs(m.step(t(2099), Event::signal(Signal::SIGHUP))).is_empty());
        let out = no_logs(m.step(t(2100), Event::Tick));
        assert_eq!(out, round(Signal::SIGKILL));
        assert!(no_logs(m.step(t(2100), Event::EscapedSignalled { count: 1 })).is_empty());
        let out = m.step(t(2101), Event::EscapedExited { remaining: 0 });
        assert_eq!(out, vec![Effect::Exit(3)]);
    }

    /// A process of ours that exits mid-sweep (an orphan's child reaped) brings
    /// another round of the shutdown signal, for whoever was adopted since;
    /// the SIGKILL deadline set by the first round stands.
    #[test]
    fn a_later_round_does_not_move_the_sigkill_deadline() {
        let (mut m, _) = exiting();
        m.step(t(100), Event::EscapedSignalled { count: 2 });
        assert_eq!(m.deadline(), Some(t(2100)));
        let out = no_logs(m.step(t(500), exited(ProcId(42), ExitStatus::Code(0))));
        assert_eq!(out, round(Signal::SIGINT));
        m.step(t(500), Event::EscapedSignalled { count: 1 });
        assert_eq!(m.deadline(), Some(t(2100)));
    }

    const SUCCESSOR: ProcId = ProcId(2);

    /// A first generation with a subreaper, a pidfile and a proxy that handed
    /// over to `SUCCESSOR`, whose old child has exited: the exit waits for one
    /// escaped process (signalled at 2.7 s; its SIGKILL is due at 4.5 s).
    fn sweeping_after_handover() -> Machine {
        let mut m = Machine::new(settings(true))
            .with_subreaper(true)
            .with_proxy(true);
        m.step(t(0), Event::Started);
        m.step(t(1000), Event::Tick);
        m.step(t(1000), Event::PidfileWritten);
        m.step(t(2000), Event::signal(Signal::SIGHUP));
        m.step(t(2500), Event::SuccessorReady { id: SUCCESSOR });
        m.step(t(2600), Event::ProxyDrained);
        m.step(t(2700), exited(CHILD, ExitStatus::Signaled(2)));
        m.step(t(2700), Event::EscapedSignalled { count: 1 });
        assert!(m.sweeping() && m.handed_over());
        m
    }

    /// A SIGTERM at 2.8 s is passed on to the new generation, and only that.
    fn assert_sigterm_passed_on(m: &mut Machine) {
        let out = no_logs(m.step(t(2800), Event::signal(Signal::SIGTERM)));
        let passed_on = Effect::Signal {
            id: SUCCESSOR,
            signal: Signal::SIGTERM,
            group: false,
        };
        assert_eq!(out, [passed_on]);
    }

    /// Regression (simulation seed 17711): a termination signal from the service
    /// manager that reaches the old generation while it waits for its escaped
    /// processes after the handover was ignored, and it exited while the new
    /// generation served on (SPEC §5: the stop is passed on). Now it is passed
    /// on, the exit waits for the new generation, and the service's files go.
    #[test]
    fn a_stop_while_sweeping_after_the_handover_is_passed_on_and_waited_for() {
        let mut m = sweeping_after_handover();
        assert_sigterm_passed_on(&mut m);
        assert_eq!(
            m.timers().get(Timer::NewGenerationKill),
            Some(t(2800) + Duration::from_secs(2) + SUCCESSOR_GRACE)
        );
        // The escaped process is gone, the new generation is not: no exit yet.
        let out = no_logs(m.step(t(2900), Event::EscapedExited { remaining: 0 }));
        assert!(out.is_empty(), "{out:?}");
        assert!(m.sweeping());
        let gone = Effect::RemovePidfile {
            exited_successor: Some(SUCCESSOR),
        };
        let out = no_logs(m.step(t(3000), exited(SUCCESSOR, ExitStatus::Code(0))));
        // Its orphans would be ours now: one more round.
        assert_eq!(
            out,
            vec![
                gone.clone(),
                Effect::SignalEscaped {
                    signal: Signal::SIGINT
                }
            ]
        );
        assert_eq!(m.timers().get(Timer::NewGenerationKill), None);
        let out = m.step(t(3000), Event::EscapedSignalled { count: 0 });
        assert_eq!(out, vec![gone, Effect::RemoveProxySockets, Effect::Exit(0)]);
    }

    /// A new generation that does not stop in time is SIGKILLed; the exit
    /// still waits for it to be reaped.
    #[test]
    fn a_new_generation_told_to_stop_while_sweeping_is_killed_when_late() {
        let mut m = sweeping_after_handover();
        m.step(t(2800), Event::signal(Signal::SIGQUIT));
        m.step(t(2900), Event::EscapedExited { remaining: 0 });
        // The escaped processes' SIGKILL round (none left), then nothing to do.
        m.step(t(4500), Event::Tick);
        assert!(no_logs(m.step(t(4500), Event::EscapedSignalled { count: 0 })).is_empty());
        let due = t(2800) + Duration::from_secs(2) + SUCCESSOR_GRACE;
        assert_eq!(m.deadline(), Some(due));
        let out = no_logs(m.step(due, Event::Tick));
        assert_eq!(
            out,
            vec![Effect::Signal {
                id: SUCCESSOR,
                signal: Signal::SIGKILL,
                group: false
            }]
        );
        m.step(due, exited(SUCCESSOR, ExitStatus::Signaled(9)));
        let out = m.step(due, Event::EscapedSignalled { count: 0 });
        assert_eq!(out.last(), Some(&Effect::Exit(0)));
    }

    /// Without a stop, a new generation that exits on its own while we sweep
    /// leaves the files alone (they were handed over), and a signal from its
    /// predecessor's side is not passed anywhere.
    #[test]
    fn a_new_generation_gone_on_its_own_while_sweeping_changes_no_files() {
        let mut m = sweeping_after_handover();
        m.step(t(2800), exited(SUCCESSOR, ExitStatus::Code(1)));
        assert!(no_logs(m.step(t(2850), Event::signal(Signal::SIGTERM))).is_empty());
        let last = m.step(t(2900), Event::EscapedSignalled { count: 0 });
        assert_eq!(last, [Effect::Exit(0)], "no file removed");
    }

    /// After the handover, only a termination signal from anyone but the
    /// predecessor is passed on: another signal (the upgrade signal, SIGUSR1)
    /// or one from the predecessor's side stops nothing.
    #[test]
    fn only_a_stop_from_outside_is_passed_on_while_sweeping() {
        for (signal, from) in [
            (Signal::SIGHUP, Sender::Other),
            (Signal::SIGUSR1, Sender::Other),
            (Signal::SIGTERM, Sender::Predecessor),
        ] {
            let mut m = sweeping_after_handover();
            let out = no_logs(m.step(t(2800), Event::SignalReceived { signal, from }));
            assert!(out.is_empty(), "{signal:?} from {from:?}: {out:?}");
            assert_eq!(m.timers().get(Timer::NewGenerationKill), None);
        }
    }

    /// A late exit of another process of ours (a check run killed with the
    /// child) while sweeping is not the new generation's: a stop that comes
    /// afterwards is still passed on to it.
    #[test]
    fn another_exit_while_sweeping_is_not_the_new_generations() {
        let mut m = sweeping_after_handover();
        m.step(t(2750), exited(ProcId(9), ExitStatus::Signaled(9)));
        assert_sigterm_passed_on(&mut m);
    }

    /// `psflip status` is still answered while the exit waits for escaped
    /// processes.
    #[test]
    fn control_clients_are_answered_while_sweeping() {
        let (mut m, _) = exiting();
        m.step(t(100), Event::EscapedSignalled { count: 1 });
        let out = m.step(t(200), ask(3, Request::Status));
        assert!(
            matches!(
                &out[..],
                [Effect::Reply {
                    client: ClientId(3),
                    reply: Reply::Status(_)
                }]
            ),
            "{out:?}"
        );
    }

    /// Orphans adopted after the SIGKILL round (a dead successor's subtree
    /// arrives late) get SIGKILL too, at once: the deadline has passed.
    #[test]
    fn processes_still_there_after_sigkill_are_killed_again() {
        let (mut m, _) = exiting();
        m.step(t(100), Event::EscapedSignalled { count: 2 });
        m.step(t(2100), Event::Tick);
        m.step(t(2100), Event::EscapedSignalled { count: 2 });
        let out = no_logs(m.step(t(2200), Event::EscapedExited { remaining: 2 }));
        assert_eq!(out, round(Signal::SIGKILL));
        // Nor does a round after the SIGKILL put off giving up on them.
        assert_eq!(m.deadline(), Some(t(2100) + ESCAPED_GIVE_UP));
        m.step(t(2200), Event::EscapedSignalled { count: 2 });
        assert_eq!(m.deadline(), Some(t(2100) + ESCAPED_GIVE_UP));
    }

    #[test]
    fn processes_that_survive_sigkill_do_not_hold_the_exit_forever() {
        let (mut m, _) = exiting();
        m.step(t(100), Event::EscapedSignalled { count: 1 });
        m.step(t(2100), Event::Tick);
        m.step(t(2100), Event::EscapedSignalled { count: 1 });
        assert_eq!(m.deadline(), Some(t(2100) + ESCAPED_GIVE_UP));
        let out = no_logs(m.step(t(3100), Event::Tick));
        assert_eq!(out, vec![Effect::Exit(3)]);
    }

    /// Regression (simulation, control clients as operator actions): an upgrade
    /// asked while the exit waits for escaped processes started a successor,
    /// then psflip exited without answering and left the successor serving
    /// (its socket files removed under it).
    #[test]
    fn no_upgrade_while_the_exit_waits_for_escaped_processes() {
        let (mut m, _) = exiting();
        m.step(t(150), Event::EscapedSignalled { count: 1 });
        let out = m.step(t(200), ask(1, Request::Upgrade));
        assert!(
            !out.iter().any(|e| matches!(e, Effect::Spawn { .. })),
            "{out:?}"
        );
        assert!(
            out.iter().any(|e| matches!(
                e,
                Effect::Reply {
                    reply: Reply::UpgradeRefused(_),
                    ..
                }
            )),
            "{out:?}"
        );
        let out = m.step(t(210), ask(2, Request::Status));
        assert!(
            out.iter().any(|e| matches!(
                e,
                Effect::Reply { reply: Reply::Status(s), .. } if s.phase == "stopping"
            )),
            "{out:?}"
        );
    }
}
