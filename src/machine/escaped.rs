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

use super::{Effect, Event, Instant, Machine, State, Timer, log};

/// After the SIGKILL, how long to wait for the escaped processes to be reaped.
pub const ESCAPED_GIVE_UP: Duration = Duration::from_secs(1);

/// The exit, put off until the escaped processes are gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sweep {
    /// The status psflip exits with.
    pub code: i32,
    /// SIGKILL has been sent.
    pub killed: bool,
    /// Whether this generation had handed the service over.
    pub handed_over: bool,
    /// The files the exit removes (decided when the child was gone).
    pub finale: Vec<Effect>,
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
        self.move_to_sweeping(Sweep {
            code,
            killed: false,
            handed_over: self.handed_over(),
            finale: self.finale(),
        });
        out.push(Effect::SignalEscaped {
            signal: self.settings.shutdown_signal,
        });
        true
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
            signal: crate::Signal::SIGKILL,
        });
    }

    /// Every event while the exit waits for the escaped processes.
    pub(super) fn on_sweep_event(&mut self, now: Instant, event: Event, out: &mut Vec<Effect>) {
        let State::Sweeping(sweep) = &self.state else {
            return;
        };
        let killed = sweep.killed;
        match event {
            Event::EscapedSignalled { count: 0 } | Event::EscapedExited { remaining: 0 } => {
                self.exit_after_sweep(out)
            }
            // A later round before the SIGKILL: the deadline stands.
            Event::EscapedSignalled { .. }
                if !killed && self.timers.get(Timer::EscapedKill).is_some() => {}
            Event::EscapedSignalled { count } if !killed => {
                // The same deadline as the child's, when it was being stopped:
                // the generation is gone by shutdown.delay + shutdown.timeout
                // after a handover (I4), escaped processes included.
                let due = self
                    .kill_due
                    .unwrap_or(now + self.settings.shutdown_timeout);
                log(
                    out,
                    format!(
                        "stopping {count} escaped process(es) of this generation: {} now, SIGKILL in {} (shutdown.timeout)",
                        self.settings.shutdown_signal.as_str(),
                        // Whole milliseconds: the rest is the time since the
                        // child's own stop began, not worth printing.
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
            Event::EscapedSignalled { .. } if self.timers.get(Timer::EscapedGiveUp).is_none() => {
                self.timers.set(Timer::EscapedGiveUp, now + ESCAPED_GIVE_UP);
            }
            Event::Tick => {
                if self.timers.take_due(Timer::EscapedKill, now) {
                    self.kill_escaped(out);
                } else if self.timers.take_due(Timer::EscapedGiveUp, now) {
                    log(out, "escaped processes survive SIGKILL; exiting anyway");
                    self.exit_after_sweep(out);
                }
            }
            // Orphans keep arriving while we wait (a successor of ours that died
            // leaves its subtree to us): whoever is adopted gets the same treatment.
            Event::EscapedExited { .. } if !killed => {}
            Event::EscapedExited { .. } | Event::ProcessExited { .. } => {
                out.push(Effect::SignalEscaped {
                    signal: if killed {
                        crate::Signal::SIGKILL
                    } else {
                        self.settings.shutdown_signal
                    },
                });
            }
            Event::ControlRequest {
                client,
                request,
                from,
            } => self.on_control(now, client, request, from, out),
            // The child is gone; nothing else is ours to act on any more.
            _ => {}
        }
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

    /// A first generation with a subreaper whose child has just exited 3.
    fn exiting() -> (Machine, Vec<Effect>) {
        let mut m = Machine::new(Settings {
            generation: Generation::First,
            upgrade_signal: Signal::SIGHUP,
            upgrade_timeout: Duration::from_secs(10),
            shutdown_delay: Duration::ZERO,
            shutdown_signal: Signal::SIGINT,
            shutdown_timeout: Duration::from_secs(2),
            health: Health::Alive {
                timeout: Duration::from_secs(1),
            },
            pidfile: false,
        })
        .with_subreaper(true);
        m.step(t(0), Event::Started);
        let out = m.step(
            t(100),
            Event::ProcessExited {
                id: CHILD,
                status: ExitStatus::Code(3),
            },
        );
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
        assert_eq!(
            out,
            vec![Effect::SignalEscaped {
                signal: Signal::SIGKILL
            }]
        );
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
        let out = no_logs(m.step(
            t(500),
            Event::ProcessExited {
                id: ProcId(42),
                status: ExitStatus::Code(0),
            },
        ));
        assert_eq!(
            out,
            vec![Effect::SignalEscaped {
                signal: Signal::SIGINT
            }]
        );
        m.step(t(500), Event::EscapedSignalled { count: 1 });
        assert_eq!(m.deadline(), Some(t(2100)));
    }

    /// `psflip status` is still answered while the exit waits for escaped
    /// processes.
    #[test]
    fn control_clients_are_answered_while_sweeping() {
        let (mut m, _) = exiting();
        m.step(t(100), Event::EscapedSignalled { count: 1 });
        let out = m.step(
            t(200),
            Event::ControlRequest {
                client: ClientId(3),
                request: Request::Status,
                from: None,
            },
        );
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
        assert_eq!(
            out,
            vec![Effect::SignalEscaped {
                signal: Signal::SIGKILL
            }]
        );
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
        let out = m.step(
            t(200),
            Event::ControlRequest {
                client: ClientId(1),
                request: Request::Upgrade,
                from: None,
            },
        );
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
        let out = m.step(
            t(210),
            Event::ControlRequest {
                client: ClientId(2),
                request: Request::Status,
                from: None,
            },
        );
        assert!(
            out.iter().any(|e| matches!(
                e,
                Effect::Reply { reply: Reply::Status(s), .. } if s.phase == "stopping"
            )),
            "{out:?}"
        );
    }
}
