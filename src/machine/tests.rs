//! Scenario tests of single transitions; the property tests and the simulation
//! (`tests/sim`) cover interleavings across generations.

use super::*;
use crate::Signal;
use std::time::Duration;

/// The settings the scenarios start from (each module changes what it needs):
/// also the trace tests' (`crate::trace`).
pub(crate) fn settings(generation: Generation) -> Settings {
    Settings {
        generation,
        upgrade_signal: Signal::SIGHUP,
        upgrade_timeout: Duration::from_secs(10),
        shutdown_delay: Duration::ZERO,
        shutdown_signal: Signal::SIGTERM,
        shutdown_timeout: Duration::from_secs(2),
        health: Health::Alive {
            timeout: Duration::from_secs(1),
        },
        pidfile: true,
    }
}

const SEC: Duration = Duration::from_secs(1);
const CHILD: ProcId = ProcId(1);

/// [`settings`] with the longer timeouts and no pidfile of the proxy,
/// strangers and control scenarios.
fn long_settings(generation: Generation) -> Settings {
    Settings {
        upgrade_timeout: 30 * SEC,
        shutdown_timeout: 5 * SEC,
        pidfile: false,
        ..settings(generation)
    }
}

/// The runtime reaped `id`, which ended with `status`.
fn exited(id: ProcId, status: ExitStatus) -> Event {
    Event::ProcessExited { id, status }
}

/// A machine on `settings`, started at 0, its child found healthy at 1 s.
fn healthy_at_1s(settings: Settings) -> Machine {
    let mut m = Machine::new(settings);
    m.step(t(0), Event::Started);
    m.step(t(1000), Event::Tick);
    m
}

/// The effect: `signal` to `id` (to its process group when `group`).
fn signalled(id: ProcId, signal: Signal, group: bool) -> Effect {
    Effect::Signal { id, signal, group }
}

/// `ms` milliseconds after the origin.
fn t(ms: u64) -> Instant {
    Instant::from_origin(Duration::from_millis(ms))
}

/// `secs` seconds after the origin.
fn at(secs: u64) -> Instant {
    Instant::from_origin(Duration::from_secs(secs))
}

/// The effects without the log lines, service-manager notes and upgrade marks.
fn no_logs(effects: Vec<Effect>) -> Vec<Effect> {
    effects
        .into_iter()
        .filter(|e| {
            !matches!(
                e,
                Effect::Log(_)
                    | Effect::Notify(_)
                    | Effect::UpgradeBegan(_)
                    | Effect::UpgradeEnded(_)
            )
        })
        .collect()
}

mod scenarios {
    //! Scenario tests of single transitions; the simulation (`tests/sim`) covers
    //! interleavings across generations.
    use super::*;

    /// A first generation, serving, child #1 healthy.
    fn serving() -> Machine {
        let mut m = Machine::new(settings(Generation::First));
        m.step(t(0), Event::Started);
        assert_eq!(
            no_logs(m.step(t(1000), Event::Tick)),
            vec![Effect::WritePidfile]
        );
        m.step(t(1000), Event::PidfileWritten);
        assert!(matches!(m.state(), State::Serving { .. }));
        m
    }

    #[test]
    fn successful_upgrade_signals_the_old_child_only_after_ready() {
        let mut m = serving();
        let out = no_logs(m.step(t(2000), Event::signal(Signal::SIGHUP)));
        let successor = ProcId(2);
        assert_eq!(
            out,
            vec![Effect::Spawn {
                id: successor,
                role: Role::Successor
            }]
        );
        // Nothing happens to the old child while the successor starts.
        assert!(no_logs(m.step(t(3000), Event::Tick)).is_empty());
        let out = no_logs(m.step(t(3500), Event::SuccessorReady { id: successor }));
        assert_eq!(out, vec![signalled(CHILD, Signal::SIGTERM, false)]);
        // The old child ignores SIGTERM: SIGKILL to its group after the timeout.
        let out = no_logs(m.step(t(5500), Event::Tick));
        assert_eq!(out, vec![kill(CHILD, true)]);
        let out = no_logs(m.step(t(5501), exited(CHILD, ExitStatus::Signaled(9))));
        // Exit 0, and the pidfile (the successor's now) is left alone.
        assert_eq!(out, vec![kill(CHILD, true), Effect::Exit(0)]);
    }

    #[test]
    fn upgrade_signal_before_healthy_is_deferred() {
        let mut m = Machine::new(settings(Generation::First));
        m.step(t(0), Event::Started);
        assert!(no_logs(m.step(t(5), Event::signal(Signal::SIGHUP))).is_empty());
        m.step(t(1000), Event::Tick);
        let out = no_logs(m.step(t(1000), Event::PidfileWritten));
        assert_eq!(
            out,
            vec![Effect::Spawn {
                id: ProcId(2),
                role: Role::Successor
            }]
        );
    }

    #[test]
    fn failed_upgrade_leaves_the_old_generation_serving() {
        let mut m = serving();
        m.step(t(2000), Event::signal(Signal::SIGHUP));
        let out = no_logs(m.step(t(2100), exited(ProcId(2), ExitStatus::Code(1))));
        // The control socket's name and the pidfile are made to name us again
        // (the successor may have taken them).
        assert_eq!(out, vec![Effect::ClaimControl, Effect::WritePidfile]);
        assert!(matches!(m.state(), State::Serving { .. }));
        assert_eq!(m.live_child(), Some(CHILD));
        // And a later upgrade can start.
        let out = no_logs(m.step(t(2200), Event::signal(Signal::SIGHUP)));
        assert!(matches!(
            out[..],
            [Effect::Spawn {
                role: Role::Successor,
                ..
            }]
        ));
    }

    #[test]
    fn hung_successor_is_killed_after_timeout_plus_grace() {
        let mut m = serving();
        m.step(t(2000), Event::signal(Signal::SIGHUP));
        assert_eq!(m.deadline(), Some(t(2000) + Duration::from_secs(15)));
        let out = no_logs(m.step(t(17_000), Event::Tick));
        assert_eq!(out, vec![kill(ProcId(2), false)]);
        assert_eq!(m.deadline(), None);
    }

    #[test]
    fn termination_signal_mid_upgrade_aborts_it() {
        let mut m = serving();
        m.step(t(2000), Event::signal(Signal::SIGHUP));
        let out = no_logs(m.step(t(2100), Event::signal(Signal::SIGTERM)));
        assert_eq!(
            out,
            vec![
                signalled(ProcId(2), Signal::SIGTERM, false),
                signalled(CHILD, Signal::SIGTERM, false),
            ]
        );
        // A late "ready" changes nothing.
        assert!(no_logs(m.step(t(2150), Event::SuccessorReady { id: ProcId(2) })).is_empty());
        m.step(t(2200), exited(CHILD, ExitStatus::Signaled(15)));
        let out = no_logs(m.step(t(2300), exited(ProcId(2), ExitStatus::Code(143))));
        // The pidfile goes: ours, or the successor's if it wrote it before it died.
        assert_eq!(
            out,
            vec![
                Effect::RemovePidfile {
                    exited_successor: Some(ProcId(2))
                },
                Effect::Exit(0)
            ]
        );
    }

    #[test]
    fn old_child_exiting_mid_upgrade_waits_for_the_outcome() {
        let mut m = serving();
        m.step(t(2000), Event::signal(Signal::SIGHUP));
        let out = no_logs(m.step(t(2100), exited(CHILD, ExitStatus::Code(3))));
        assert_eq!(out, vec![kill(CHILD, true)]);
        let out = no_logs(m.step(t(2200), Event::SuccessorReady { id: ProcId(2) }));
        assert_eq!(out, vec![Effect::Exit(0)]);
    }

    #[test]
    fn successor_stops_its_child_when_not_healthy_in_time() {
        let mut s = settings(Generation::Successor);
        s.health = Health::Command {
            kind: ProbeKind::Command,
            after: Duration::ZERO,
            interval: Duration::from_secs(4),
        };
        let mut m = Machine::new(s);
        m.step(t(0), Event::Started);
        let out = no_logs(m.step(t(0), Event::Tick));
        assert_eq!(
            out,
            vec![Effect::Spawn {
                id: ProcId(2),
                role: Role::Probe {
                    kind: ProbeKind::Command,
                    timeout: Duration::from_secs(4)
                }
            }]
        );
        // The probe hangs: killed after the interval; the next one starts at 8 s.
        assert_eq!(
            no_logs(m.step(t(4000), Event::Tick)),
            vec![kill(ProcId(2), true)]
        );
        // Upgrade signals are ignored while not ready.
        assert!(no_logs(m.step(t(4001), Event::signal(Signal::SIGHUP))).is_empty());
        // Not healthy in time: the child is killed with its group at once (the
        // killed probe, not reaped yet, is killed again).
        let out = no_logs(m.step(t(10_000), Event::Tick));
        assert_eq!(out, vec![kill(ProcId(2), true), kill(CHILD, true)]);
        let out = no_logs(m.step(t(10_010), exited(CHILD, ExitStatus::Signaled(9))));
        assert_eq!(out.last(), Some(&Effect::Exit(1)));
    }

    #[test]
    fn child_exit_codes_follow_the_spec() {
        // Before healthy: the child's non-zero code, or 1.
        for (status, code) in [
            (ExitStatus::Code(5), 5),
            (ExitStatus::Code(0), 1),
            (ExitStatus::Signaled(9), 137),
        ] {
            let mut m = Machine::new(settings(Generation::First));
            m.step(t(0), Event::Started);
            let out = m.step(t(10), Event::ProcessExited { id: CHILD, status });
            assert_eq!(out.last(), Some(&Effect::Exit(code)), "{status:?}");
        }
        // While serving: the child's status, and the pidfile goes.
        let mut m = serving();
        let out = no_logs(m.step(t(5000), exited(CHILD, ExitStatus::Code(0))));
        assert_eq!(
            out,
            vec![
                kill(CHILD, true),
                Effect::RemovePidfile {
                    exited_successor: None
                },
                Effect::Exit(0)
            ]
        );
    }

    /// After passing a stop on, the old generation exits only once the new one
    /// has exited too (what a service manager finds left when its main process
    /// exits, it SIGKILLs); one that does not stop is SIGKILLed after
    /// shutdown.timeout + grace.
    #[test]
    fn after_passing_a_stop_on_the_old_generation_waits_for_the_new_one() {
        for new_one_stops in [true, false] {
            let mut m = serving();
            m.step(t(2000), Event::signal(Signal::SIGHUP));
            let successor = ProcId(2);
            m.step(t(2500), Event::SuccessorReady { id: successor });
            // (shutdown.delay 0: the old child has its SIGTERM already.)
            m.step(t(2600), Event::signal(Signal::SIGTERM));
            let out = no_logs(m.step(t(2700), exited(CHILD, ExitStatus::Signaled(15))));
            assert!(
                !out.iter().any(|e| matches!(e, Effect::Exit(_))),
                "not before the new generation: {out:?}"
            );
            if new_one_stops {
                let out = m.step(t(3000), exited(successor, ExitStatus::Code(0)));
                assert_eq!(out.last(), Some(&Effect::Exit(0)));
            } else {
                // shutdown.timeout (2 s) + SUCCESSOR_GRACE after the stop.
                let due = t(2600) + Duration::from_secs(2) + SUCCESSOR_GRACE;
                let before = no_logs(m.step(t(4700), Event::Tick));
                assert!(before.is_empty(), "{before:?}");
                let out = no_logs(m.step(due, Event::Tick));
                assert_eq!(out, vec![kill(successor, false)]);
                let out = m.step(due, exited(successor, ExitStatus::Signaled(9)));
                assert_eq!(out.last(), Some(&Effect::Exit(0)));
            }
        }
    }

    /// A stop (SIGTERM) that reaches the old generation after the handover, while
    /// it still drains (systemd takes it for the main process until it exits):
    /// the new generation gets it too, and is not taken back when it exits.
    #[test]
    fn termination_after_the_handover_reaches_the_new_generation() {
        let mut m = healthy_at_1s(Settings {
            shutdown_delay: Duration::from_secs(3),
            ..settings(Generation::First)
        });
        m.step(t(1000), Event::PidfileWritten);
        m.step(t(2000), Event::signal(Signal::SIGHUP));
        let successor = ProcId(2);
        m.step(t(2500), Event::SuccessorReady { id: successor });
        assert!(m.handed_over());
        let out = no_logs(m.step(t(2600), Event::signal(Signal::SIGTERM)));
        assert_eq!(
            out,
            vec![
                signalled(successor, Signal::SIGTERM, false),
                signalled(CHILD, Signal::SIGTERM, false),
            ]
        );
        let out = no_logs(m.step(t(2700), exited(successor, ExitStatus::Code(0))));
        // Nothing taken back; a pidfile still naming the new generation goes.
        let gone = Effect::RemovePidfile {
            exited_successor: Some(successor),
        };
        assert_eq!(out, vec![gone.clone()]);
        let out = m.step(t(2800), exited(CHILD, ExitStatus::Signaled(15)));
        assert_eq!(out.last(), Some(&Effect::Exit(0)));
        // The service ends here: the pidfile goes (if it names either).
        assert!(out.contains(&gone), "{out:?}");
    }

    /// The new generation, told by its predecessor to stop after it reported
    /// ready, gives its child shutdown.timeout (it was the service) and exits 0
    /// when the child died of that signal.
    #[test]
    fn a_ready_successor_told_to_stop_gives_its_child_shutdown_timeout() {
        let mut m = healthy_at_1s(Settings {
            shutdown_timeout: Duration::from_secs(5),
            ..settings(Generation::Successor)
        });
        let out = m.step(t(1000), Event::PidfileWritten);
        assert!(out.contains(&Effect::ReportReady), "{out:?}");
        let (signal, from) = (Signal::SIGTERM, Sender::Predecessor);
        m.step(t(1100), Event::SignalReceived { signal, from });
        // Not GIVE_UP_GRACE (2 s): shutdown.timeout (5 s).
        assert!(no_logs(m.step(t(3200), Event::Tick)).is_empty());
        assert_eq!(m.deadline(), Some(t(6100)));
        let status = ExitStatus::Signaled(Signal::SIGTERM as i32);
        let out = m.step(t(5000), Event::ProcessExited { id: CHILD, status });
        assert_eq!(out.last(), Some(&Effect::Exit(0)));
    }

    /// Issue #9: a stop the service manager (or anyone) asked for with a
    /// termination signal, which the child obeyed by dying of it, is a clean exit.
    #[test]
    fn child_dying_of_the_forwarded_termination_signal_is_exit_0() {
        for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGQUIT] {
            let mut m = serving();
            m.step(t(2000), Event::signal(sig));
            let died = ExitStatus::Signaled(sig as i32);
            let out = m.step(t(2100), exited(CHILD, died));
            assert_eq!(out.last(), Some(&Effect::Exit(0)), "{sig:?}");
        }
        // Any other end is reported as before: a different signal, or SIGKILL after
        // a stop the child did not obey, or its own code.
        for (status, code) in [
            (ExitStatus::Signaled(9), 137),
            (ExitStatus::Signaled(Signal::SIGINT as i32), 130),
            (ExitStatus::Code(3), 3),
        ] {
            let mut m = serving();
            m.step(t(2000), Event::signal(Signal::SIGTERM));
            let out = m.step(t(2100), Event::ProcessExited { id: CHILD, status });
            assert_eq!(out.last(), Some(&Effect::Exit(code)), "{status:?}");
        }
        // Not asked: the child died of SIGTERM from someone else.
        let mut m = serving();
        let status = ExitStatus::Signaled(Signal::SIGTERM as i32);
        let out = m.step(t(2100), Event::ProcessExited { id: CHILD, status });
        assert_eq!(out.last(), Some(&Effect::Exit(143)));
        // A signal that is not a termination request is not one either.
        let mut m = serving();
        m.step(t(2000), Event::signal(Signal::SIGUSR1));
        let status = ExitStatus::Signaled(Signal::SIGUSR1 as i32);
        let out = m.step(t(2100), Event::ProcessExited { id: CHILD, status });
        assert_eq!(
            out.last(),
            Some(&Effect::Exit(128 + Signal::SIGUSR1 as i32))
        );
    }

    /// A successor that takes over, as systemd is told: with a pidfile, READY=1
    /// only (systemd follows PIDFile= once the old generation is gone); without,
    /// MAINPID= as well.
    #[test]
    fn successor_announces_mainpid_only_without_a_pidfile() {
        for (pidfile, expected) in [
            (
                true,
                Notify::Ready {
                    status: "serving".into(),
                },
            ),
            (false, Notify::MainPid),
        ] {
            let mut m = Machine::new(Settings {
                pidfile,
                ..settings(Generation::Successor)
            });
            m.step(t(0), Event::Started);
            let mut out = m.step(t(1000), Event::Tick);
            if pidfile {
                out = m.step(t(1000), Event::PidfileWritten);
            }
            let notes: Vec<_> = out
                .iter()
                .filter(|e| matches!(e, Effect::Notify(_)))
                .collect();
            assert_eq!(notes, vec![&Effect::Notify(expected)], "pidfile {pidfile}");
            let ready = out.iter().position(|e| *e == Effect::ReportReady);
            let note = out.iter().position(|e| matches!(e, Effect::Notify(_)));
            assert!(note < ready, "{out:?}");
        }
    }

    /// `psflip upgrade` while an upgrade is in flight waits for its outcome.
    #[test]
    fn upgrade_request_in_flight_gets_that_upgrades_outcome() {
        for succeeds in [true, false] {
            let mut m = serving();
            let (a, b) = (ClientId(1), ClientId(2));
            let ask = |client| Event::ControlRequest {
                client,
                request: Request::Upgrade,
                from: None,
            };
            m.step(t(2000), ask(a));
            assert!(m.upgrading());
            let out = no_logs(m.step(t(2010), ask(b)));
            assert!(out.is_empty(), "{out:?}");
            let successor = ProcId(2);
            let out = if succeeds {
                m.step(t(3000), Event::SuccessorReady { id: successor })
            } else {
                m.step(t(3000), exited(successor, ExitStatus::Code(1)))
            };
            let replies: Vec<_> = out
                .iter()
                .filter_map(|e| match e {
                    Effect::Reply { client, reply } => Some((*client, reply.clone())),
                    _ => None,
                })
                .collect();
            assert_eq!(replies.len(), 2, "{out:?}");
            assert_eq!(replies[0].1, replies[1].1);
            assert_eq!(
                matches!(replies[0].1, Reply::Upgraded { .. }),
                succeeds,
                "{replies:?}"
            );
        }
    }

    /// The pidfile rewritten after a failed upgrade (the successor may have
    /// written it) cannot be written: said, and the service carries on.
    #[test]
    fn a_pidfile_that_cannot_be_rewritten_after_a_failed_upgrade_is_said() {
        let mut m = serving();
        m.step(t(2000), Event::signal(Signal::SIGHUP));
        let out = m.step(t(2100), exited(ProcId(2), ExitStatus::Code(1)));
        assert!(out.contains(&Effect::WritePidfile), "{out:?}");
        assert!(matches!(m.state(), State::Serving { .. }));
        let out = m.step(
            t(2100),
            Event::PidfileFailed {
                reason: "disk full".into(),
            },
        );
        let said: Vec<&str> = out
            .iter()
            .filter_map(|e| match e {
                Effect::Log(l) => Some(l.text.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(said, ["cannot write the pidfile: disk full"], "{out:?}");
        assert!(matches!(m.state(), State::Serving { .. }));
    }
}

mod proxy {
    //! The proxy's part of the protocol (contract step 7). The rest of the machine is
    //! covered by the property tests and the simulation in `tests/sim`.

    use super::*;

    fn settings(generation: Generation, pidfile: bool) -> Settings {
        Settings {
            shutdown_delay: 10 * SEC,
            pidfile,
            ..long_settings(generation)
        }
    }

    /// The effects without the log lines and service-manager notes.
    fn act(m: &mut Machine, secs: u64, event: Event) -> Vec<Effect> {
        no_logs(m.step(at(secs), event))
    }

    fn has(effects: &[Effect], wanted: &Effect) -> bool {
        effects.contains(wanted)
    }

    /// A first generation with a proxy, serving since t=1; child #1.
    fn serving() -> Machine {
        let mut m = Machine::new(settings(Generation::First, false)).with_proxy(true);
        assert!(!has(&act(&mut m, 0, Event::Started), &Effect::ProxyAccept));
        assert_eq!(
            act(&mut m, 1, Event::Tick),
            vec![Effect::ProxyAccept, Effect::RemoveDroppedSockets]
        );
        assert!(matches!(m.state(), State::Serving { .. }));
        m
    }

    /// `serving()`, upgraded at t=2: successor #2.
    fn upgrading() -> Machine {
        let mut m = serving();
        let out = act(&mut m, 2, Event::signal(Signal::SIGHUP));
        assert!(has(
            &out,
            &Effect::Spawn {
                id: ProcId(2),
                role: Role::Successor
            }
        ));
        assert!(!has(&out, &Effect::ProxyStopAccepting));
        m
    }

    fn term(id: u64) -> Effect {
        signalled(ProcId(id), Signal::SIGTERM, false)
    }

    /// The log lines of a step.
    fn logs(out: &[Effect]) -> Vec<String> {
        out.iter()
            .filter_map(|e| match e {
                Effect::Log(l) => Some(l.text.clone()),
                _ => None,
            })
            .collect()
    }

    /// Issue #7: with a proxy, "stopping the old child" is logged when it is
    /// stopped — after the drain — not when the successor is ready.
    #[test]
    fn the_old_child_is_said_to_stop_when_it_stops() {
        let mut m = upgrading();
        let out = m.step(at(3), Event::SuccessorReady { id: ProcId(2) });
        assert!(!has(&out, &term(1)), "not stopped yet");
        let said = logs(&out).join("\n");
        assert!(
            said.contains("the old child is stopped once its proxied connections have closed"),
            "{said}"
        );
        assert!(!said.contains("stopping the old child"), "{said}");
        let out = m.step(at(4), Event::ProxyDrained);
        assert!(has(&out, &term(1)));
        assert!(
            logs(&out).join("\n").contains("stopping the old child"),
            "{out:?}"
        );
    }

    #[test]
    fn first_generation_accepts_once_healthy_and_pidfile_written() {
        let mut m = Machine::new(settings(Generation::First, true)).with_proxy(true);
        act(&mut m, 0, Event::Started);
        assert_eq!(act(&mut m, 1, Event::Tick), vec![Effect::WritePidfile]);
        assert_eq!(
            act(&mut m, 1, Event::PidfileWritten),
            vec![Effect::ProxyAccept, Effect::RemoveDroppedSockets]
        );
    }

    #[test]
    fn successor_accepts_right_before_it_reports_ready() {
        let mut m = Machine::new(settings(Generation::Successor, false)).with_proxy(true);
        act(&mut m, 0, Event::Started);
        assert_eq!(
            act(&mut m, 1, Event::Tick),
            vec![
                Effect::ProxyAccept,
                Effect::RemoveDroppedSockets,
                Effect::ClaimControl,
                Effect::ReportReady
            ]
        );
    }

    #[test]
    fn old_generation_stops_accepting_and_signals_once_drained() {
        let mut m = upgrading();
        let out = act(&mut m, 3, Event::SuccessorReady { id: ProcId(2) });
        assert_eq!(out, vec![Effect::ProxyStopAccepting]);
        assert_eq!(m.deadline(), Some(at(13)), "shutdown.delay still bounds it");
        assert_eq!(act(&mut m, 4, Event::ProxyDrained), vec![term(1)]);
        assert_eq!(m.deadline(), Some(at(9)), "then shutdown.timeout");
        assert_eq!(
            act(&mut m, 5, exited(ProcId(1), ExitStatus::Signaled(15))),
            vec![signalled(ProcId(1), Signal::SIGKILL, true), Effect::Exit(0)],
            "drained and the child gone: exit 0, socket files kept"
        );
    }

    #[test]
    fn shutdown_delay_still_bounds_the_wait_for_connections() {
        let mut m = upgrading();
        act(&mut m, 3, Event::SuccessorReady { id: ProcId(2) });
        assert_eq!(act(&mut m, 13, Event::Tick), vec![term(1)]);
        let out = act(&mut m, 14, exited(ProcId(1), ExitStatus::Code(0)));
        assert!(!out.iter().any(|e| matches!(e, Effect::Exit(_))), "{out:?}");
        assert_eq!(
            m.deadline(),
            Some(at(18)),
            "handover + shutdown.delay + shutdown.timeout"
        );
        assert_eq!(act(&mut m, 15, Event::ProxyDrained), vec![Effect::Exit(0)]);
    }

    #[test]
    fn connections_left_open_are_cut_at_delay_plus_timeout() {
        let mut m = upgrading();
        act(&mut m, 3, Event::SuccessorReady { id: ProcId(2) });
        act(&mut m, 13, Event::Tick);
        act(&mut m, 14, exited(ProcId(1), ExitStatus::Code(0)));
        assert_eq!(act(&mut m, 17, Event::Tick), vec![]);
        assert_eq!(act(&mut m, 18, Event::Tick), vec![Effect::Exit(0)]);
        assert!(matches!(m.state(), State::Done { .. }));
    }

    #[test]
    fn drained_before_the_handover_is_ignored() {
        let mut m = upgrading();
        assert_eq!(act(&mut m, 3, Event::ProxyDrained), vec![]);
        act(&mut m, 4, Event::SuccessorReady { id: ProcId(2) });
        assert_eq!(m.deadline(), Some(at(14)));
    }

    #[test]
    fn a_failed_upgrade_leaves_the_old_generation_accepting() {
        let mut m = upgrading();
        let out = act(&mut m, 3, exited(ProcId(2), ExitStatus::Code(1)));
        assert_eq!(
            out,
            vec![Effect::ClaimControl],
            "no accept change, no socket removal"
        );
        assert!(matches!(m.state(), State::Serving { .. }));
        act(&mut m, 4, Event::signal(Signal::SIGHUP));
        assert_eq!(
            act(&mut m, 5, Event::SuccessorReady { id: ProcId(3) }),
            vec![Effect::ProxyStopAccepting]
        );
    }

    #[test]
    fn socket_files_go_when_the_service_stops_for_good() {
        let mut m = serving();
        let out = act(&mut m, 3, exited(ProcId(1), ExitStatus::Code(3)));
        assert_eq!(
            &out[1..],
            &[Effect::RemoveProxySockets, Effect::Exit(3)],
            "{out:?}"
        );

        // Never healthy: the service stops for good too.
        let mut m = Machine::new(settings(Generation::First, false)).with_proxy(true);
        act(&mut m, 0, Event::Started);
        let out = act(&mut m, 0, exited(ProcId(1), ExitStatus::Code(1)));
        assert!(has(&out, &Effect::RemoveProxySockets), "{out:?}");

        // A successor that took over is the service, once its predecessor is gone.
        let mut m = Machine::new(settings(Generation::Successor, false)).with_proxy(true);
        act(&mut m, 0, Event::Started);
        act(&mut m, 1, Event::Tick);
        act(&mut m, 1, Event::PredecessorExited);
        let out = act(&mut m, 2, exited(ProcId(1), ExitStatus::Code(0)));
        assert!(has(&out, &Effect::RemoveProxySockets), "{out:?}");
    }

    #[test]
    fn a_failed_successor_leaves_the_socket_files_alone() {
        let mut m = Machine::new(settings(Generation::Successor, false)).with_proxy(true);
        act(&mut m, 0, Event::Started);
        let out = act(&mut m, 0, exited(ProcId(1), ExitStatus::Code(1)));
        assert!(!has(&out, &Effect::RemoveProxySockets), "{out:?}");
        assert!(has(&out, &Effect::Exit(1)));

        let mut m = Machine::new(settings(Generation::Successor, false)).with_proxy(true);
        act(&mut m, 0, Event::Started);
        let out = act(&mut m, 30, Event::Tick);
        assert!(!has(&out, &Effect::ProxyAccept), "{out:?}");
        let out = act(&mut m, 31, exited(ProcId(1), ExitStatus::Signaled(15)));
        assert!(!has(&out, &Effect::RemoveProxySockets), "{out:?}");
    }

    #[test]
    fn aborted_upgrade_is_a_final_stop() {
        let mut m = upgrading();
        act(&mut m, 3, Event::signal(Signal::SIGTERM));
        act(&mut m, 4, exited(ProcId(2), ExitStatus::Signaled(15)));
        let out = act(&mut m, 5, exited(ProcId(1), ExitStatus::Signaled(15)));
        assert!(has(&out, &Effect::RemoveProxySockets), "{out:?}");
        assert_eq!(out.last(), Some(&Effect::Exit(0)));
    }

    #[test]
    fn without_a_proxy_nothing_changes() {
        let mut m = Machine::new(settings(Generation::First, false));
        act(&mut m, 0, Event::Started);
        assert_eq!(act(&mut m, 1, Event::Tick), vec![]);
        act(&mut m, 2, Event::signal(Signal::SIGHUP));
        assert_eq!(
            act(&mut m, 3, Event::SuccessorReady { id: ProcId(2) }),
            vec![]
        );
        assert_eq!(act(&mut m, 4, Event::ProxyDrained), vec![]);
        assert_eq!(act(&mut m, 13, Event::Tick), vec![term(1)]);
        let out = act(&mut m, 14, exited(ProcId(1), ExitStatus::Code(0)));
        assert_eq!(out.last(), Some(&Effect::Exit(0)));
        assert!(!has(&out, &Effect::RemoveProxySockets));
    }
}

mod decisions {
    //! The decisions that used to live in the runtime or the CLI (issue #10):
    //! what a signal from the previous generation means, which probe runs for how
    //! long, whose pidfile goes, which socket files go.

    use super::*;

    fn successor_settings() -> Settings {
        Settings {
            generation: Generation::Successor,
            upgrade_signal: Signal::SIGHUP,
            upgrade_timeout: 10 * SEC,
            shutdown_delay: Duration::ZERO,
            shutdown_signal: Signal::SIGTERM,
            shutdown_timeout: 5 * SEC,
            health: Health::Alive { timeout: SEC },
            pidfile: false,
        }
    }

    fn at(ms: u64) -> Instant {
        Instant::from_origin(Duration::from_millis(ms))
    }

    /// A successor that has just reported ready; its predecessor still runs.
    fn took_over() -> Machine {
        let mut m = Machine::new(successor_settings());
        m.step(at(0), Event::Started);
        assert!(m.step(at(1000), Event::Tick).contains(&Effect::ReportReady));
        m
    }

    #[test]
    fn a_termination_signal_from_the_predecessor_aborts_a_fresh_takeover() {
        let mut m = took_over();
        let from = Sender::Predecessor;
        let signal = Signal::SIGTERM;
        let out = m.step(at(1001), Event::SignalReceived { signal, from });
        assert_eq!(m.phase(), Phase::Stopping, "{out:?}");
        // It was the service a moment: its child gets shutdown.timeout, not
        // GIVE_UP_GRACE, before SIGKILL.
        assert_eq!(m.deadline(), Some(at(1001) + 5 * SEC));
    }

    #[test]
    fn the_same_signal_from_anyone_else_is_only_forwarded() {
        let mut m = took_over();
        let out = m.step(at(1001), Event::signal(Signal::SIGTERM));
        assert_eq!(m.phase(), Phase::Serving);
        assert!(out.contains(&signalled(ProcId(1), Signal::SIGTERM, false)));
    }

    /// Regression (simulation seed 31045): the old generation passed a stop of
    /// the service on after the handover, then was killed before the new one
    /// read the signal. It was still the predecessor's stop: the new generation
    /// gives up (its child gets shutdown.timeout, then SIGKILL) instead of
    /// serving on with a child that ignores the signal.
    /// Regression (simulation seed 66090): a new generation told by its
    /// predecessor to stop gave its escaped processes a fresh shutdown.timeout
    /// after its child was gone, outliving the old generation's deadline for it
    /// (shutdown.timeout + grace), which then SIGKILLed it mid-sweep. They get
    /// SIGKILL when the child does.
    #[test]
    fn a_successor_giving_up_sweeps_its_escaped_processes_by_the_childs_deadline() {
        let mut m = Machine::new(successor_settings()).with_subreaper(true);
        m.step(at(0), Event::Started);
        m.step(at(1000), Event::Tick);
        let signal = Signal::SIGTERM;
        let from = Sender::Predecessor;
        m.step(at(2000), Event::SignalReceived { signal, from });
        m.step(at(3000), exited(ProcId(1), ExitStatus::Signaled(15)));
        m.step(at(3000), Event::EscapedSignalled { count: 1 });
        assert_eq!(m.timers().get(Timer::EscapedKill), Some(at(2000) + 5 * SEC));
    }

    #[test]
    fn a_stop_the_predecessor_sent_before_it_exited_still_stops_the_service() {
        let mut m = took_over();
        m.step(at(1001), Event::PredecessorExited);
        let signal = Signal::SIGQUIT;
        let from = Sender::Predecessor;
        m.step(at(1002), Event::SignalReceived { signal, from });
        assert_eq!(m.phase(), Phase::Stopping);
        assert_eq!(m.deadline(), Some(at(1002) + 5 * SEC));
        let out = no_logs(m.step(at(1002) + 5 * SEC, Event::Tick));
        assert_eq!(out, vec![signalled(ProcId(1), Signal::SIGKILL, true)]);
    }

    #[test]
    fn the_probe_spawn_says_which_check_and_how_long() {
        for (kind, timeout) in [
            (ProbeKind::Command, Duration::from_millis(500)),
            (ProbeKind::Tcp, Duration::from_millis(400)),
            (ProbeKind::Http, Duration::from_millis(400)),
        ] {
            let mut s = successor_settings();
            s.health = Health::Command {
                kind,
                after: Duration::ZERO,
                interval: Duration::from_millis(500),
            };
            let mut m = Machine::new(s);
            m.step(at(0), Event::Started);
            let out = m.step(at(0), Event::Tick);
            assert_eq!(
                out,
                vec![Effect::Spawn {
                    id: ProcId(2),
                    role: Role::Probe { kind, timeout }
                }]
            );
        }
        assert_eq!(probe_timeout(SEC), Duration::from_millis(900));
        assert_eq!(
            probe_timeout(Duration::from_millis(100)),
            Duration::from_millis(80)
        );
    }

    #[test]
    fn a_rolled_back_successor_may_have_left_its_pid_in_the_pidfile() {
        let mut s = successor_settings();
        s.generation = Generation::First;
        s.pidfile = true;
        let mut m = Machine::new(s);
        m.step(at(0), Event::Started);
        m.step(at(1000), Event::Tick);
        m.step(at(1000), Event::PidfileWritten);
        m.step(at(2000), Event::signal(Signal::SIGHUP));
        let successor = m.successor().expect("an upgrade");
        let status = ExitStatus::Code(1);
        m.step(
            at(2500),
            Event::ProcessExited {
                id: successor,
                status,
            },
        );
        m.step(at(2500), Event::PidfileWritten);
        let status = ExitStatus::Code(0);
        let out = m.step(
            at(3000),
            Event::ProcessExited {
                id: ProcId(1),
                status,
            },
        );
        assert!(
            out.contains(&Effect::RemovePidfile {
                exited_successor: Some(successor)
            }),
            "{out:?}"
        );
    }

    #[test]
    fn the_timer_table_fires_what_is_due_in_order() {
        let mut t = Timers::default();
        assert_eq!(t.next(), None);
        t.set(Timer::ChildKill, at(30));
        t.set(Timer::HealthDeadline, at(20));
        t.set(Timer::AliveFor, at(10));
        assert_eq!(t.next(), Some(at(10)));
        assert_eq!(t.due(at(25)), vec![Timer::HealthDeadline, Timer::AliveFor]);
        assert!(t.take_due(Timer::AliveFor, at(25)));
        assert!(!t.take_due(Timer::ChildKill, at(25)));
        assert_eq!(t.cancel(Timer::HealthDeadline), Some(at(20)));
        assert_eq!(t.next(), Some(at(30)));
    }
}

mod readiness {
    //! `[healthcheck.notify]` and `[healthcheck.docker]`: the events that make a
    //! child healthy, and how a child that never was is stopped.

    use super::*;

    fn machine(generation: Generation, health: Health) -> Machine {
        let mut m = Machine::new(Settings {
            shutdown_timeout: Duration::from_secs(5),
            health,
            pidfile: false,
            ..super::settings(generation)
        });
        m.step(Instant::ZERO, Event::Started);
        m
    }

    fn logs(effects: &[Effect]) -> Vec<&str> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Log(line) => Some(line.as_str()),
                _ => None,
            })
            .collect()
    }

    fn notified(id: ProcId, ready: bool, status: Option<&str>) -> Event {
        Event::ChildNotified {
            id,
            ready,
            status: status.map(str::to_owned),
        }
    }

    fn inspected(inspection: Inspection) -> Event {
        Event::ContainerInspected {
            container: "app-green".into(),
            inspection,
        }
    }

    fn found(status: &str, health: Option<&str>) -> Inspection {
        Inspection::Found {
            status: status.into(),
            health: health.map(str::to_owned),
            healthcheck: true,
        }
    }

    fn without_healthcheck(status: &str) -> Inspection {
        Inspection::Found {
            status: status.into(),
            health: None,
            healthcheck: false,
        }
    }

    #[test]
    fn notify_ready_makes_the_child_healthy_and_status_is_logged() {
        let mut m = machine(Generation::Successor, Health::Notify);
        // Only the upgrade timeout is due: no polling.
        assert_eq!(m.deadline(), Some(t(10_000)));
        let out = m.step(t(100), notified(CHILD, false, Some("loading")));
        assert_eq!(logs(&out), ["child status: loading"]);
        assert!(!m.healthy());
        // Another process's id (a probe, a stale child) does not count.
        assert!(no_logs(m.step(t(150), notified(ProcId(7), true, None))).is_empty());
        let out = no_logs(m.step(t(200), notified(CHILD, true, Some("up"))));
        assert_eq!(out, vec![Effect::ClaimControl, Effect::ReportReady]);
        assert!(m.healthy());
        // A second READY=1 changes nothing.
        assert!(no_logs(m.step(t(300), notified(CHILD, true, None))).is_empty());
    }

    #[test]
    fn notify_silence_until_the_timeout_kills_the_child() {
        let mut m = machine(Generation::Successor, Health::Notify);
        assert!(no_logs(m.step(t(9_999), Event::Tick)).is_empty());
        let out = no_logs(m.step(t(10_000), Event::Tick));
        assert_eq!(out, vec![signalled(CHILD, Signal::SIGKILL, true)]);
    }

    #[test]
    fn notify_ready_means_nothing_with_another_healthcheck() {
        let mut m = machine(
            Generation::First,
            Health::Alive {
                timeout: Duration::from_secs(3),
            },
        );
        m.step(t(10), notified(CHILD, true, None));
        assert!(!m.healthy());
    }

    #[test]
    fn docker_polls_until_healthy_one_inspection_at_a_time() {
        let mut m = machine(
            Generation::First,
            Health::Docker {
                interval: Duration::from_secs(1),
            },
        );
        assert_eq!(m.deadline(), Some(t(0)));
        assert_eq!(
            no_logs(m.step(t(0), Event::Tick)),
            vec![Effect::InspectContainer]
        );
        // In flight: nothing new before it is abandoned.
        assert_eq!(m.deadline(), Some(t(1000)));
        let out = m.step(t(20), inspected(Inspection::Missing));
        assert_eq!(
            logs(&out),
            ["docker healthcheck: container app-green does not exist (yet)"]
        );
        assert_eq!(m.deadline(), Some(t(1000)));
        assert_eq!(
            no_logs(m.step(t(1000), Event::Tick)),
            vec![Effect::InspectContainer]
        );
        // The same answer is not logged twice.
        assert!(m.step(t(1010), inspected(Inspection::Missing)).is_empty());
        m.step(t(2000), Event::Tick);
        m.step(t(2010), inspected(found("running", Some("starting"))));
        assert!(!m.healthy());
        // Created, not started: no health state yet, and not a failure.
        m.step(t(2500), Event::Tick);
        m.step(t(2510), inspected(found("created", None)));
        assert_eq!(m.phase(), Phase::Starting);
        assert!(!m.healthy());
        // No answer within the interval: abandoned, then the next one starts.
        m.step(t(3000), Event::Tick);
        assert_eq!(
            no_logs(m.step(t(4000), Event::Tick)),
            vec![Effect::AbandonInspection]
        );
        // A late answer to an abandoned inspection is ignored.
        m.step(t(4001), inspected(found("running", Some("healthy"))));
        assert!(!m.healthy());
        assert_eq!(
            no_logs(m.step(t(4001), Event::Tick)),
            vec![Effect::InspectContainer]
        );
        let out = m.step(t(4010), inspected(found("running", Some("healthy"))));
        assert!(m.healthy());
        assert!(logs(&out).contains(&"child is healthy; serving"));
        assert_eq!(m.phase(), Phase::Serving);
    }

    #[test]
    fn docker_failures_stop_the_child_gracefully_at_once() {
        for (inspection, reason) in [
            (
                found("running", Some("unhealthy")),
                "container app-green is unhealthy",
            ),
            (
                found("exited", Some("unhealthy")),
                "container app-green has stopped (exited)",
            ),
            (
                without_healthcheck("dead"),
                "container app-green has stopped (dead)",
            ),
            (
                without_healthcheck("running"),
                "container app-green has no HEALTHCHECK",
            ),
            // Stopped before its first health check ran, or before it had a
            // health state at all: stopped is stopped.
            (
                found("exited", Some("starting")),
                "container app-green has stopped (exited)",
            ),
            (
                found("dead", None),
                "container app-green has stopped (dead)",
            ),
        ] {
            let mut m = machine(
                Generation::Successor,
                Health::Docker {
                    interval: Duration::from_secs(1),
                },
            );
            m.step(t(0), Event::Tick);
            let out = m.step(t(50), inspected(inspection.clone()));
            assert!(
                logs(&out).iter().any(|l| l.contains(reason)),
                "{inspection:?}: {out:?}"
            );
            // shutdown.signal to the docker client (it stops its container), not
            // SIGKILL; SIGKILL to its group after min(shutdown.timeout, grace).
            assert_eq!(no_logs(out), vec![signalled(CHILD, Signal::SIGTERM, false)]);
            assert_eq!(m.deadline(), Some(t(50) + GIVE_UP_GRACE));
            assert_eq!(
                no_logs(m.step(t(50) + GIVE_UP_GRACE, Event::Tick)),
                vec![signalled(CHILD, Signal::SIGKILL, true)]
            );
            let out = no_logs(m.step(t(2100), exited(CHILD, ExitStatus::Signaled(9))));
            // The old generation hears why.
            assert!(
                matches!(&out[..], [_, Effect::ReportFailure(why), Effect::Exit(1)] if why.contains(reason)),
                "{out:?}"
            );
        }
    }

    #[test]
    fn docker_timeout_says_what_the_last_check_found() {
        let mut m = machine(
            Generation::Successor,
            Health::Docker {
                interval: Duration::from_secs(4),
            },
        );
        let unreachable = || {
            inspected(Inspection::Failed(
                "cannot reach the Docker engine at /nowhere/docker.sock: no such file or directory"
                    .into(),
            ))
        };
        for at in [0, 4000] {
            m.step(t(at), Event::Tick);
            m.step(t(at + 1), unreachable());
        }
        m.step(t(8000), Event::Tick);
        // In flight at the timeout: abandoned, and the child stopped gracefully.
        let out = m.step(t(10_000), Event::Tick);
        assert!(
            logs(&out).iter().any(|l| l.contains(
                "within upgrade.timeout (10s); last check: cannot reach the Docker engine at /nowhere/docker.sock"
            )),
            "{out:?}"
        );
        assert_eq!(
            no_logs(out),
            vec![
                Effect::AbandonInspection,
                signalled(CHILD, Signal::SIGTERM, false)
            ]
        );
    }

    /// A first generation with inherited listen sockets, its child healthy at
    /// once.
    fn listening_and_serving() -> Machine {
        let mut m = machine(
            Generation::First,
            Health::Alive {
                timeout: Duration::ZERO,
            },
        )
        .with_listen(true);
        m.step(t(0), Event::Tick);
        m
    }

    #[test]
    fn listen_socket_files_go_only_when_the_service_stops_for_good() {
        let mut m = listening_and_serving();
        assert_eq!(m.phase(), Phase::Serving);
        let out = no_logs(m.step(t(10), exited(CHILD, ExitStatus::Code(0))));
        assert!(out.contains(&Effect::RemoveProxySockets), "{out:?}");

        // A handover leaves them to the successor.
        let mut m = listening_and_serving();
        m.step(t(1), Event::signal(Signal::SIGHUP));
        m.step(t(2), Event::SuccessorReady { id: ProcId(2) });
        let out = no_logs(m.step(t(10), exited(CHILD, ExitStatus::Signaled(15))));
        assert_eq!(
            out,
            vec![signalled(CHILD, Signal::SIGKILL, true), Effect::Exit(0)]
        );
    }
}

mod strangers {
    //! Events that name a process this machine never started, or a happening that
    //! does not concern the state it is in, change nothing: the runtime reports
    //! every exit it reaps (psflip is a subreaper), and answers can arrive late.

    use super::*;

    /// Never allocated by the machine in these scenarios.
    const STRANGER: ProcId = ProcId(99);

    fn settings(health: Health) -> Settings {
        Settings {
            shutdown_delay: 10 * SEC,
            health,
            ..long_settings(Generation::First)
        }
    }

    fn alive() -> Health {
        Health::Alive { timeout: SEC }
    }

    /// One machine in each state a stranger's event can meet, with what it is.
    fn machines() -> Vec<(&'static str, Machine)> {
        let mut all = Vec::new();
        let mut m = Machine::new(settings(alive()));
        m.step(at(0), Event::Started);
        all.push(("starting", m.clone()));
        m.step(at(1), Event::Tick);
        assert_eq!(m.phase(), Phase::Serving);
        all.push(("serving", m.clone()));
        m.step(at(2), Event::signal(Signal::SIGHUP));
        assert_eq!(m.phase(), Phase::Upgrading);
        all.push(("upgrading", m.clone()));
        let mut aborting = m.clone();
        aborting.step(at(3), Event::signal(Signal::SIGTERM));
        assert_eq!(aborting.phase(), Phase::Aborting);
        all.push(("aborting", aborting));
        m.step(at(3), Event::SuccessorReady { id: ProcId(2) });
        assert_eq!(m.phase(), Phase::Stopping);
        all.push(("handed over, in shutdown.delay", m));

        let mut probing = Machine::new(settings(Health::Command {
            kind: ProbeKind::Command,
            after: Duration::ZERO,
            interval: 2 * SEC,
        }));
        probing.step(at(0), Event::Started);
        probing.step(at(0), Event::Tick);
        assert!(probing.live_child().is_some());
        all.push(("probing", probing));
        all
    }

    fn events() -> Vec<Event> {
        vec![
            exited(STRANGER, ExitStatus::Code(0)),
            exited(STRANGER, ExitStatus::Code(1)),
            Event::SpawnFailed {
                id: STRANGER,
                reason: "no such file".into(),
            },
            Event::SuccessorFailed {
                id: STRANGER,
                reason: "gave up".into(),
            },
            Event::SuccessorReady { id: STRANGER },
        ]
    }

    #[test]
    fn events_about_a_process_never_started_change_nothing() {
        for (what, machine) in machines() {
            for event in events() {
                let mut m = machine.clone();
                // Not even a log line: nothing happened to anything of ours.
                let out = m.step(at(4), event.clone());
                assert!(out.is_empty(), "{what}, {event:?}: {out:?}");
                assert_eq!(m.state(), machine.state(), "{what}, {event:?}");
                assert_eq!(m.timers(), machine.timers(), "{what}, {event:?}");
            }
        }
    }

    #[test]
    fn the_machine_says_whether_it_proxies_as_configured() {
        for proxy in [false, true] {
            let m = Machine::new(settings(alive())).with_proxy(proxy);
            assert_eq!(m.proxy(), proxy);
        }
    }

    /// The timer table the machine shows is the one it acts on: `alive`'s
    /// timeout and `upgrade.timeout`, counted from the spawn.
    #[test]
    fn the_timer_table_shows_what_was_armed() {
        let mut m = Machine::new(settings(alive()));
        m.step(at(0), Event::Started);
        assert_eq!(m.timers().get(Timer::AliveFor), Some(at(1)));
        assert_eq!(m.timers().get(Timer::HealthDeadline), Some(at(30)));
        assert_eq!(m.timers().next(), m.deadline());
    }

    /// A real-time signal (no name, only a number) reaches the child as any
    /// other signal does.
    #[test]
    fn a_real_time_signal_is_passed_on_to_the_child() {
        let mut m = Machine::new(settings(alive()));
        m.step(at(0), Event::Started);
        let out = m.step(at(0), Event::RealtimeSignalReceived(40));
        assert_eq!(
            out,
            vec![Effect::SignalRealtime {
                id: ProcId(1),
                signo: 40
            }]
        );
    }

    /// After it exits, a generation still says whether it handed the service
    /// over: yes after a successful upgrade, no after its child died.
    #[test]
    fn an_exited_generation_says_whether_it_handed_over() {
        let mut s = settings(alive());
        s.shutdown_delay = Duration::ZERO;
        let mut m = Machine::new(s);
        m.step(at(0), Event::Started);
        m.step(at(1), Event::Tick);
        let mut crashed = m.clone();
        m.step(at(2), Event::signal(Signal::SIGHUP));
        m.step(at(3), Event::SuccessorReady { id: ProcId(2) });
        let exited = |id| Event::ProcessExited {
            id: ProcId(id),
            status: ExitStatus::Code(0),
        };
        let out = m.step(at(4), exited(1));
        assert_eq!(out.last(), Some(&Effect::Exit(0)));
        assert_eq!(m.phase(), Phase::Done);
        assert!(m.handed_over());
        crashed.step(at(4), exited(1));
        assert_eq!(crashed.phase(), Phase::Done);
        assert!(!crashed.handed_over());
    }

    /// Without a `[[proxy]]` there are no proxied connections: a drained report
    /// (which the runtime never sends then) cannot cut `shutdown.delay` short.
    #[test]
    fn a_drain_report_without_a_proxy_changes_nothing() {
        for (what, machine) in machines() {
            let mut m = machine.clone();
            let out = m.step(at(4), Event::ProxyDrained);
            assert!(
                out.iter().all(|e| matches!(e, Effect::Log(_))),
                "{what}: {out:?}"
            );
            assert_eq!(m.state(), machine.state(), "{what}");
        }
    }
}

mod control {
    //! `psflip upgrade` and `psflip status` (the control socket): which requests are
    //! refused, with what answer, and what the status says of each state.

    use super::*;

    const CLIENT: ClientId = ClientId(7);

    use super::long_settings as settings;

    fn ask(request: Request) -> Event {
        Event::ControlRequest {
            client: CLIENT,
            request,
            from: None,
        }
    }

    fn replies(out: &[Effect]) -> Vec<Reply> {
        out.iter()
            .filter_map(|e| match e {
                Effect::Reply { client, reply } => {
                    assert_eq!(*client, CLIENT);
                    Some(reply.clone())
                }
                _ => None,
            })
            .collect()
    }

    fn spawns_successor(out: &[Effect]) -> bool {
        out.iter().any(|e| {
            matches!(
                e,
                Effect::Spawn {
                    role: Role::Successor,
                    ..
                }
            )
        })
    }

    fn status(m: &mut Machine, now: Instant) -> Status {
        match &replies(&m.step(now, ask(Request::Status)))[..] {
            [Reply::Status(status)] => status.clone(),
            other => panic!("status answered with {other:?}"),
        }
    }

    /// An upgrade that cannot start is refused at once, nothing is spawned, and
    /// the client is not left waiting.
    #[test]
    fn upgrade_requests_that_cannot_start_are_refused_at_once() {
        let mut cases: Vec<(&str, Machine)> = Vec::new();
        let mut m = Machine::new(settings(Generation::Successor));
        m.step(at(0), Event::Started);
        cases.push(("a starting successor", m.clone()));
        m.step(at(1), Event::Tick);
        assert_eq!(m.phase(), Phase::Serving);
        cases.push(("a successor whose predecessor still runs", m));
        let mut m = Machine::new(settings(Generation::First));
        m.step(at(0), Event::Started);
        m.step(at(1), Event::Tick);
        m.step(at(2), Event::signal(Signal::SIGHUP));
        m.step(at(3), Event::signal(Signal::SIGTERM));
        assert_eq!(m.phase(), Phase::Aborting);
        cases.push(("aborting", m.clone()));
        let mut m = Machine::new(settings(Generation::First));
        m.step(at(0), Event::Started);
        m.step(at(1), Event::Tick);
        m.step(at(2), Event::signal(Signal::SIGHUP));
        m.step(at(3), Event::SuccessorReady { id: ProcId(2) });
        assert_eq!(m.phase(), Phase::Stopping);
        cases.push(("stopping", m));
        for (what, mut m) in cases {
            let before = m.state().clone();
            let out = m.step(at(4), ask(Request::Upgrade));
            assert!(
                matches!(&replies(&out)[..], [Reply::UpgradeRefused(_)]),
                "{what}: {out:?}"
            );
            assert!(!spawns_successor(&out), "{what}: {out:?}");
            assert_eq!(m.state(), &before, "{what}");
            // Nobody waits: the outcome of a later event goes to no one.
            let out = m.step(at(100), Event::Tick);
            assert!(replies(&out).is_empty(), "{what}: {out:?}");
        }
    }

    /// A first generation asked to upgrade while its child starts promises the
    /// upgrade and starts it once serving; the client gets that upgrade's outcome.
    #[test]
    fn an_upgrade_asked_for_while_starting_starts_once_serving() {
        let mut m = Machine::new(settings(Generation::First));
        m.step(at(0), Event::Started);
        let out = m.step(at(0), ask(Request::Upgrade));
        assert!(replies(&out).is_empty(), "{out:?}");
        assert!(!spawns_successor(&out));
        // The client hears nothing yet: the log says why.
        assert!(
            out.iter().any(
                |e| matches!(e, Effect::Log(l) if l.contains("starts once the child is healthy"))
            ),
            "{out:?}"
        );
        assert!(status(&mut m, at(0)).upgrade_in_flight);
        // Promised, not in flight: no successor runs yet.
        assert!(!m.upgrading());
        let out = m.step(at(1), Event::Tick);
        assert!(spawns_successor(&out), "{out:?}");
        assert!(m.upgrading());
        let out = m.step(at(2), Event::SuccessorReady { id: ProcId(2) });
        assert!(!m.upgrading());
        assert_eq!(
            replies(&out),
            vec![Reply::Upgraded {
                successor: ProcId(2)
            }]
        );
    }

    /// A termination signal cancels an upgrade asked for while starting: the
    /// waiting client hears so at once, and a child that stays up anyway is not
    /// upgraded.
    #[test]
    fn a_termination_signal_cancels_the_promised_upgrade() {
        let mut m = Machine::new(settings(Generation::First));
        m.step(at(0), Event::Started);
        m.step(at(0), ask(Request::Upgrade));
        let out = m.step(at(0), Event::signal(Signal::SIGTERM));
        assert_eq!(
            replies(&out),
            vec![Reply::UpgradeFailed("cancelled by SIGTERM".into())]
        );
        assert!(!status(&mut m, at(0)).upgrade_in_flight);
        let out = m.step(at(1), Event::Tick);
        assert_eq!(m.phase(), Phase::Serving);
        assert!(!spawns_successor(&out), "{out:?}");
    }

    /// A termination signal while starting with no upgrade asked for cancels
    /// nothing, and says nothing about it.
    #[test]
    fn a_termination_signal_cancels_no_upgrade_that_was_not_asked_for() {
        let mut m = Machine::new(settings(Generation::First));
        m.step(at(0), Event::Started);
        let out = m.step(at(0), Event::signal(Signal::SIGTERM));
        assert!(
            !out.iter()
                .any(|e| matches!(e, Effect::Log(l) if l.contains("cancelled"))),
            "{out:?}"
        );
        assert!(replies(&out).is_empty());
    }

    /// How the upgrade history names what started an upgrade: the signal and
    /// its sender, or `psflip upgrade` and its client, and the service manager
    /// when it was the one.
    #[test]
    fn a_trigger_names_the_signal_or_the_client_and_the_manager() {
        let pid = |pid, manager| Origin {
            pid,
            uid: 1000,
            manager,
        };
        let signal = |from| Trigger::Signal {
            signal: Signal::SIGHUP,
            from,
        };
        for (trigger, said) in [
            (signal(Sender::Other), "SIGHUP"),
            (
                signal(Sender::Process(pid(1, true))),
                "SIGHUP from the service manager (pid 1, uid 1000)",
            ),
            (
                signal(Sender::Process(pid(4242, false))),
                "SIGHUP from pid 4242, uid 1000",
            ),
            (Trigger::Control(None), "psflip upgrade"),
            (
                Trigger::Control(Some(pid(77, true))),
                "psflip upgrade (pid 77, uid 1000) run by the service manager",
            ),
            (
                Trigger::Control(Some(pid(78, false))),
                "psflip upgrade (pid 78, uid 1000)",
            ),
        ] {
            assert_eq!(trigger.to_string(), said);
        }
    }

    /// A successor that says why it gives up before it exits: that reason
    /// reaches the client and the status, not only the exit status.
    #[test]
    fn the_reason_a_successor_gives_is_the_upgrades_outcome() {
        let mut m = Machine::new(settings(Generation::First));
        m.step(at(0), Event::Started);
        m.step(at(1), Event::Tick);
        m.step(at(2), ask(Request::Upgrade));
        let said = "the new child exited (exit code 3) before it became healthy";
        let out = m.step(
            at(3),
            Event::SuccessorFailed {
                id: ProcId(2),
                reason: said.into(),
            },
        );
        assert!(replies(&out).is_empty(), "{out:?}");
        let out = m.step(at(3), exited(ProcId(2), ExitStatus::Code(1)));
        match &replies(&out)[..] {
            [Reply::UpgradeFailed(why)] => assert!(why.contains(said), "{why}"),
            other => panic!("{other:?}"),
        }
        let last = status(&mut m, at(4)).last_upgrade.expect("an outcome");
        assert!(last.contains(said), "{last}");
    }

    /// A successor serves while its predecessor still stops its child: the
    /// status says so until the predecessor has exited.
    #[test]
    fn a_successor_drains_its_predecessor_then_serves() {
        let mut m = Machine::new(settings(Generation::Successor));
        m.step(at(0), Event::Started);
        m.step(at(1), Event::Tick);
        assert_eq!(m.phase(), Phase::Serving);
        assert_eq!(status(&mut m, at(1)).phase, "draining previous");
        m.step(at(2), Event::PredecessorExited);
        assert_eq!(status(&mut m, at(2)).phase, "serving");
    }

    /// What `psflip status` says follows what happened: which child runs, whether
    /// it passed its check, whether an upgrade is in flight and how the last
    /// one ended.
    #[test]
    fn status_follows_the_generation() {
        let mut m = Machine::new(settings(Generation::First));
        m.step(at(0), Event::Started);
        let s = status(&mut m, at(0));
        assert_eq!(
            (s.phase, s.child, s.child_healthy, s.upgrade_in_flight),
            ("starting", Some(ProcId(1)), false, false)
        );
        assert_eq!(s.last_upgrade, None);
        m.step(at(1), Event::Tick);
        let s = status(&mut m, at(1));
        assert_eq!(
            (s.phase, s.child, s.child_healthy, s.upgrade_in_flight),
            ("serving", Some(ProcId(1)), true, false)
        );
        m.step(at(2), Event::signal(Signal::SIGHUP));
        let s = status(&mut m, at(2));
        assert_eq!(
            (s.phase, s.child, s.upgrade_in_flight),
            ("upgrading", Some(ProcId(1)), true)
        );
        // The old child exits mid-upgrade: no child, so none healthy.
        let status_code = ExitStatus::Code(3);
        m.step(at(3), exited(ProcId(1), status_code));
        let s = status(&mut m, at(3));
        assert_eq!((s.child, s.child_healthy), (None, false));

        let mut m = Machine::new(settings(Generation::First));
        m.step(at(0), Event::Started);
        m.step(at(1), Event::Tick);
        m.step(at(2), Event::signal(Signal::SIGHUP));
        m.step(at(3), exited(ProcId(2), ExitStatus::Code(1)));
        let s = status(&mut m, at(3));
        assert_eq!((s.phase, s.upgrade_in_flight), ("serving", false));
        assert!(
            s.last_upgrade
                .as_deref()
                .is_some_and(|l| l.starts_with("failed: ") && l.contains("exit code 1")),
            "{s:?}"
        );
        m.step(at(4), Event::signal(Signal::SIGHUP));
        m.step(at(5), Event::signal(Signal::SIGTERM));
        // Aborting an upgrade on a termination signal: this generation stops
        // (issue #7's phases: starting, serving, upgrading, draining previous,
        // stopping).
        assert_eq!(status(&mut m, at(5)).phase, "stopping");
    }
}

mod reasons {
    //! What psflip says about a child, where the words and the level are the
    //! only outcome: the failure reason a successor hands its predecessor, and
    //! the level a child's exit is logged at.

    use super::*;

    use crate::log::Level;

    fn settings(generation: Generation) -> Settings {
        Settings {
            shutdown_timeout: 5 * SEC,
            health: Health::Notify,
            pidfile: false,
            ..super::settings(generation)
        }
    }

    /// A successor whose child never becomes healthy, under a predecessor with
    /// `upgrade.timeout` = `bound`: it gives up at the smaller of the two, and
    /// the reason it hands back names the predecessor's only when that one was
    /// the smaller.
    #[test]
    fn a_deadline_bounded_by_the_predecessor_says_so() {
        for (bound, due, named) in [(5, 5, true), (10, 10, false), (20, 10, false)] {
            let mut m =
                Machine::new(settings(Generation::Successor)).with_predecessor_timeout(bound * SEC);
            m.step(at(0), Event::Started);
            assert_eq!(m.deadline(), Some(at(due)), "bound {bound}");
            m.step(at(due), Event::Tick);
            let out = m.step(at(due), exited(ProcId(1), ExitStatus::Signaled(9)));
            let reason = out
                .iter()
                .find_map(|e| match e {
                    Effect::ReportFailure(why) => Some(why.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| panic!("bound {bound}: {out:?}"));
            assert!(reason.contains("upgrade.timeout"), "{reason}");
            assert_eq!(
                reason.contains("the previous generation's"),
                named,
                "bound {bound}: {reason}"
            );
        }
    }

    /// A successor told to stop before its child was healthy failed the
    /// upgrade, however that child ends: exit 1 when it exits 0, its own status
    /// when it fails.
    #[test]
    fn a_successor_giving_up_on_an_unhealthy_child_never_exits_0() {
        for (status, code) in [(ExitStatus::Code(0), 1), (ExitStatus::Code(3), 3)] {
            let mut m = Machine::new(settings(Generation::Successor));
            m.step(at(0), Event::Started);
            m.step(at(1), Event::signal(Signal::SIGTERM));
            assert_eq!(m.phase(), Phase::Stopping);
            let out = m.step(
                at(1),
                Event::ProcessExited {
                    id: ProcId(1),
                    status,
                },
            );
            assert_eq!(out.last(), Some(&Effect::Exit(code)), "{status:?}: {out:?}");
        }
    }

    /// A failed check run is logged once, naming what failed: the configured
    /// command, or psflip's own tcp/http probe — which logs its reason itself
    /// and exits 1, so only another end of it (a signal) is logged here.
    #[test]
    fn a_failed_check_is_logged_once_naming_what_failed() {
        for (kind, status, said) in [
            (
                ProbeKind::Command,
                ExitStatus::Code(1),
                Some("healthcheck command failed (exit code 1)"),
            ),
            (
                ProbeKind::Command,
                ExitStatus::Signaled(9),
                Some("healthcheck command failed (signal SIGKILL)"),
            ),
            (ProbeKind::Tcp, ExitStatus::Code(1), None),
            (
                ProbeKind::Http,
                ExitStatus::Signaled(9),
                Some("healthcheck probe failed (signal SIGKILL)"),
            ),
        ] {
            let mut m = probing(kind);
            let out = m.step(
                at(0),
                Event::ProcessExited {
                    id: ProcId(2),
                    status,
                },
            );
            let logged: Vec<&str> = out
                .iter()
                .filter_map(|e| match e {
                    Effect::Log(l) if l.event == "healthcheck_failed" => Some(l.as_str()),
                    _ => None,
                })
                .collect();
            assert_eq!(
                logged,
                said.into_iter().collect::<Vec<_>>(),
                "{kind:?} {status:?}"
            );
        }
    }

    /// A first generation whose `kind` check (every second, from the spawn)
    /// has started its first run, `ProcId(2)`.
    fn probing(kind: ProbeKind) -> Machine {
        let mut s = settings(Generation::First);
        s.health = Health::Command {
            kind,
            after: Duration::ZERO,
            interval: SEC,
        };
        let mut m = Machine::new(s);
        m.step(at(0), Event::Started);
        m.step(at(0), Event::Tick);
        m
    }

    /// A check command that cannot start is a failed run: said so, and the
    /// next run starts `interval` after this one was due.
    #[test]
    fn a_check_that_cannot_start_is_retried_at_the_next_interval() {
        let mut m = probing(ProbeKind::Command);
        let out = m.step(
            at(0),
            Event::SpawnFailed {
                id: ProcId(2),
                reason: "No such file or directory".into(),
            },
        );
        assert!(
            out.iter().any(|e| matches!(e, Effect::Log(l) if l.contains("cannot start the healthcheck command"))),
            "{out:?}"
        );
        assert_eq!(m.deadline(), Some(at(1)));
        let out = m.step(at(1), Event::Tick);
        assert!(
            out.iter().any(|e| matches!(
                e,
                Effect::Spawn {
                    id: ProcId(3),
                    role: Role::Probe { .. }
                }
            )),
            "{out:?}"
        );
    }

    /// A "ready" from the successor after the upgrade was aborted changes
    /// nothing, and the log says it came too late.
    #[test]
    fn a_ready_after_an_abort_is_only_logged() {
        let mut s = settings(Generation::First);
        s.health = Health::Alive { timeout: SEC };
        let mut m = Machine::new(s);
        m.step(at(0), Event::Started);
        m.step(at(1), Event::Tick);
        m.step(at(2), Event::signal(Signal::SIGHUP));
        m.step(at(3), Event::signal(Signal::SIGTERM));
        let before = m.state().clone();
        let out = m.step(at(4), Event::SuccessorReady { id: ProcId(2) });
        assert_eq!(m.state(), &before);
        assert!(
            matches!(&out[..], [Effect::Log(l)] if l.contains("after the upgrade was aborted")),
            "{out:?}"
        );
    }

    /// A serving child that dies of the stop psflip passed on did what it was
    /// asked: info. One that dies on its own: a warning.
    #[test]
    fn a_child_exit_is_a_warning_unless_it_was_asked_for() {
        for (asked, status, level) in [
            (true, ExitStatus::Signaled(15), Level::Info),
            (false, ExitStatus::Code(0), Level::Info),
            (false, ExitStatus::Code(3), Level::Warning),
            (false, ExitStatus::Signaled(15), Level::Warning),
        ] {
            let mut m = Machine::new(settings(Generation::First));
            m.step(at(0), Event::Started);
            m.step(
                at(0),
                Event::ChildNotified {
                    id: ProcId(1),
                    ready: true,
                    status: None,
                },
            );
            assert_eq!(m.phase(), Phase::Serving);
            if asked {
                m.step(at(1), Event::signal(Signal::SIGTERM));
            }
            let out = m.step(
                at(2),
                Event::ProcessExited {
                    id: ProcId(1),
                    status,
                },
            );
            let levels: Vec<Level> = out
                .iter()
                .filter_map(|e| match e {
                    Effect::Log(l) if l.event == "child_exited" => Some(l.level),
                    _ => None,
                })
                .collect();
            assert_eq!(levels, vec![level], "{status:?}, asked {asked}: {out:?}");
        }
    }
}

mod claim_control {
    //! When the control socket's name becomes this generation's
    //! ([`Effect::ClaimControl`]): when it becomes the service, or serves again,
    //! and never on a path that does not.

    use super::*;

    fn claims(effects: &[Effect]) -> usize {
        effects
            .iter()
            .filter(|e| **e == Effect::ClaimControl)
            .count()
    }

    /// Feed `events` at 1 s intervals from `from` s; every effect, in order.
    fn run(m: &mut Machine, from: u64, events: Vec<Event>) -> Vec<Effect> {
        let mut out = Vec::new();
        for (i, e) in events.into_iter().enumerate() {
            out.extend(m.step(at(from + i as u64), e));
        }
        out
    }

    fn spawn_child() -> Effect {
        Effect::Spawn {
            id: CHILD,
            role: Role::App,
        }
    }

    #[test]
    fn a_first_generation_claims_the_name_once_its_first_child_runs() {
        let mut m = Machine::new(settings(Generation::First));
        // Not with the spawn: the child may still fail to start.
        let out = no_logs(m.step(t(0), Event::Started));
        assert_eq!(out, vec![spawn_child()]);
        let out = m.step(t(0), Event::Spawned { id: CHILD });
        assert_eq!(out, vec![Effect::ClaimControl]);
        // Once: becoming healthy, serving and upgrading claim nothing more.
        let rest = run(
            &mut m,
            1,
            vec![
                Event::Tick,
                Event::PidfileWritten,
                Event::signal(Signal::SIGHUP),
                Event::Spawned { id: ProcId(2) },
                Event::SuccessorReady { id: ProcId(2) },
                exited(CHILD, ExitStatus::Signaled(15)),
            ],
        );
        assert_eq!(m.phase(), Phase::Done, "{rest:?}");
        assert_eq!(claims(&rest), 0, "{rest:?}");
    }

    #[test]
    fn a_spawned_probe_or_stranger_claims_nothing() {
        let mut m = Machine::new(Settings {
            health: Health::Command {
                kind: ProbeKind::Command,
                after: Duration::ZERO,
                interval: SEC,
            },
            ..settings(Generation::First)
        });
        m.step(t(0), Event::Started);
        let out = m.step(t(0), Event::Spawned { id: ProcId(99) });
        assert_eq!(claims(&out), 0);
        let out = m.step(t(0), Event::Tick);
        assert!(out.contains(&Effect::Spawn {
            id: ProcId(2),
            role: Role::Probe {
                kind: ProbeKind::Command,
                timeout: ProbeKind::Command.timeout(SEC),
            },
        }));
        let out = m.step(t(0), Event::Spawned { id: ProcId(2) });
        assert_eq!(claims(&out), 0);
        assert_eq!(claims(&m.step(t(0), Event::Spawned { id: CHILD })), 1);
    }

    #[test]
    fn a_first_generation_whose_child_cannot_start_never_claims() {
        let mut m = Machine::new(settings(Generation::First));
        let mut out = m.step(t(0), Event::Started);
        out.extend(m.step(
            t(0),
            Event::SpawnFailed {
                id: CHILD,
                reason: "ENOENT".into(),
            },
        ));
        assert_eq!(out.last(), Some(&Effect::Exit(1)));
        // A late "spawned" (never sent by the runtime) is ignored once done.
        out.extend(m.step(t(0), Event::Spawned { id: CHILD }));
        assert_eq!(claims(&out), 0, "{out:?}");
    }

    #[test]
    fn a_successor_claims_the_name_right_before_it_reports_ready() {
        let mut m = Machine::new(settings(Generation::Successor));
        m.step(t(0), Event::Started);
        // Its child running does not make it the service.
        assert!(m.step(t(0), Event::Spawned { id: CHILD }).is_empty());
        assert_eq!(
            no_logs(m.step(t(1000), Event::Tick)),
            vec![Effect::WritePidfile]
        );
        let out = m.step(t(1000), Event::PidfileWritten);
        let ready = out.iter().position(|e| *e == Effect::ReportReady);
        let claim = out.iter().position(|e| *e == Effect::ClaimControl);
        assert_eq!(claims(&out), 1, "{out:?}");
        assert!(
            ready.is_some() && claim.map(|c| c + 1) == ready,
            "the name first, then ready: {out:?}"
        );
    }

    #[test]
    fn a_successor_that_never_becomes_the_service_never_claims() {
        let pidfile_failed = Event::PidfileFailed {
            reason: "ENOSPC".into(),
        };
        let cases: Vec<(&str, Vec<Event>)> = vec![
            (
                "stopped while starting",
                vec![
                    Event::signal(Signal::SIGTERM),
                    exited(CHILD, ExitStatus::Signaled(15)),
                ],
            ),
            (
                "child exited before healthy",
                vec![exited(CHILD, ExitStatus::Code(3))],
            ),
            (
                "pidfile not written",
                vec![
                    Event::Tick,
                    pidfile_failed,
                    exited(CHILD, ExitStatus::Signaled(9)),
                ],
            ),
        ];
        for (what, events) in cases {
            let mut m = Machine::new(settings(Generation::Successor));
            let mut all = m.step(at(0), Event::Started);
            all.extend(m.step(at(0), Event::Spawned { id: CHILD }));
            // The child becomes healthy at 1 s (the Tick above).
            all.extend(run(&mut m, 1, events));
            assert_eq!(m.phase(), Phase::Done, "{what}: {all:?}");
            assert_eq!(claims(&all), 0, "{what}: {all:?}");
        }
        // Never healthy within upgrade.timeout.
        let mut m = Machine::new(settings(Generation::Successor));
        m.step(at(0), Event::Started);
        m.step(at(0), Event::Spawned { id: CHILD });
        let mut all = m.step(at(0), Event::Tick);
        all.extend(m.step(at(10), Event::Tick));
        assert_eq!(m.phase(), Phase::Stopping, "{all:?}");
        assert_eq!(claims(&all), 0, "{all:?}");
    }

    /// A serving first generation with `shutdown.delay` 3 s, its upgrade to
    /// successor #2 in flight.
    fn upgrading() -> Machine {
        let mut m = Machine::new(Settings {
            shutdown_delay: 3 * SEC,
            ..settings(Generation::First)
        });
        run(
            &mut m,
            0,
            vec![
                Event::Started,
                Event::Tick,
                Event::PidfileWritten,
                Event::signal(Signal::SIGHUP),
            ],
        );
        assert_eq!(m.successor(), Some(ProcId(2)));
        m
    }

    #[test]
    fn an_old_generation_serving_again_takes_the_name_back() {
        // The new generation dies right after taking over, the old child not
        // stopped yet: this generation serves again, under its own name.
        let mut m = upgrading();
        let out = m.step(at(4), Event::SuccessorReady { id: ProcId(2) });
        assert_eq!(claims(&out), 0, "handing over claims nothing: {out:?}");
        let out = m.step(at(5), exited(ProcId(2), ExitStatus::Code(1)));
        assert_eq!(m.phase(), Phase::Serving);
        assert_eq!(claims(&out), 1, "{out:?}");
        // The successor died before reporting ready (it may have claimed the
        // name an instant before).
        let mut m = upgrading();
        let out = m.step(at(4), exited(ProcId(2), ExitStatus::Code(1)));
        assert_eq!(m.phase(), Phase::Serving);
        assert_eq!(claims(&out), 1, "{out:?}");
    }

    #[test]
    fn an_old_generation_that_does_not_serve_again_claims_nothing() {
        // The old child was already stopped when the new generation died: the
        // service ends with it.
        let mut m = upgrading();
        let mut out = run(
            &mut m,
            4,
            vec![
                Event::SuccessorReady { id: ProcId(2) },
                Event::Tick,
                Event::Tick,
                Event::Tick,
                exited(ProcId(2), ExitStatus::Code(1)),
                exited(CHILD, ExitStatus::Signaled(15)),
            ],
        );
        assert_eq!(m.phase(), Phase::Done, "{out:?}");
        // The old child died during the upgrade, then the successor failed.
        let mut m = upgrading();
        out.extend(run(
            &mut m,
            4,
            vec![
                exited(CHILD, ExitStatus::Code(0)),
                exited(ProcId(2), ExitStatus::Code(1)),
            ],
        ));
        assert_eq!(m.phase(), Phase::Done, "{out:?}");
        assert_eq!(claims(&out), 0, "{out:?}");
    }
}
