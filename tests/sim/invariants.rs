//! The properties of SPEC.md §5, checked after every step of the simulation, one
//! function each (as Firezone's `assertions.rs` does): a failing run reports every
//! violated property, not just the first.
//!
//! 1. I1 — the old child is spared until a valid handover.
//! 2. I2 — at most two generations, two app children, one probe per generation.
//! 3. I3 — a failed upgrade leaves the old generation exactly as before.
//! 4. I4 — after a handover, the old generation is gone in bounded time.
//! 5. I5 — no orphans, no zombies.
//! 6. I6 — the pidfile names a live, ready psflip.
//! 7. I7 — psflip's exit status is its child's.
//! 8. I8 — with a proxy, no connection refused or cut because of an upgrade.
//! 9. No busy loop: a due `Tick` makes progress.
//! 10. K — the control socket's name leads to the service: a first generation
//!     takes it only once its first child was started, a successor before it
//!     reports ready, and while a generation serves or upgrades the name is its
//!     own or its successor's: a client never finds no socket.
//!
//! Plus [`converged`] and [`ended`], the liveness checks of the heal phase, and the
//! [`Cover`] outcomes the runner requires to have happened at least once.

use std::fmt;
use std::time::Duration;

use psflip::Signal;
use psflip::machine::{ExitStatus, Generation, Health, Instant, Phase};

use crate::world::{End, Kind, Life, Pid, REAP_BOUND, World};

/// Something a step did, recorded for the checks that are about events rather
/// than states.
#[derive(Clone, Debug)]
pub enum Fact {
    /// A generation sent its app child the shutdown signal or SIGKILL before the
    /// child's exit was reported to it, and it was not a forward.
    ChildStopped {
        gpid: Pid,
        child: Pid,
        signal: Signal,
        /// The child is the service (its generation was serving or upgrading).
        protected: bool,
        /// The generation had read a valid "ready" from its successor.
        ready_heard: bool,
    },
    /// A generation made the control socket's name its own; `child_started`: its
    /// app child had been spawned (it runs, or ran).
    ControlClaimed {
        gpid: Pid,
        first: bool,
        child_started: bool,
    },
    /// A successor is writing "ready"; whose the control socket's name was at
    /// that moment.
    ReadyWritten {
        gpid: Pid,
        control_name: Option<Pid>,
    },
    /// A successor wrote "ready" to its predecessor.
    ReadyReported {
        gpid: Pid,
        healthy: bool,
        pidfile_ok: bool,
    },
    /// An upgrade ended without a handover, and the old generation carries on.
    RolledBack {
        gpid: Pid,
        /// Its child when the upgrade started.
        child_at_start: Option<Pid>,
        /// Its child's exit had not been reported to it at the rollback.
        child_exit_unreported: bool,
    },
    /// A generation's machine exited with this code.
    Exited { gpid: Pid, code: i32 },
    /// When it exited, these processes that re-parented to it still ran.
    EscapedAtExit { gpid: Pid, escaped: Vec<Pid> },
    /// A generation signalled a process that re-parented to it; whether that
    /// process came from another generation that still runs.
    EscapedSignalled {
        gpid: Pid,
        target: Pid,
        origin_running: bool,
    },
    /// A due `Tick` did nothing and the deadline stayed due.
    BusyLoop { gpid: Pid },
    /// A generation that passed a stop on to the new generation after the
    /// handover exited while that one still ran.
    ExitedBeforeNewGeneration { gpid: Pid, successor: Pid },
    /// (Proxy) a generation stopped accepting connections.
    ProxyStoppedAccepting { gpid: Pid },
    /// (Proxy) a generation removed the proxy's Unix socket files.
    ProxySocketsRemoved { gpid: Pid },
    /// A generation answered a control client; `handed_over`: the world saw it
    /// hand the service over.
    Replied {
        gpid: Pid,
        client: psflip::machine::ClientId,
        upgraded: bool,
        handed_over: bool,
    },
    /// A generation passed a real-time signal on; `to_child`: to its running child.
    RealtimeForwarded { gpid: Pid, to_child: bool },
}

/// The outcomes that must each happen in at least one seed (stateright's
/// `sometimes`): a suite passing because the interesting case never happened
/// proves nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cover {
    UpgradeDone,
    RollbackNewChildExited,
    RollbackNewChildUnhealthy,
    RollbackSuccessorCrashed,
    RollbackSuccessorHung,
    RollbackSpawnOrConfig,
    RollbackPidfile,
    RollbackTermination,
    /// A rollback the classifier could not explain (not required).
    RollbackOther,
    SigkillAfterGrace,
    OldChildExitedSuccessorTookOver,
    OldKilledSuccessorTookOver,
    UpgradeIgnoredInFlight,
    EarlyUpgradePerformed,
    /// The heal phase's final upgrade succeeded.
    HealFinalUpgrade,
    /// The simulation itself exercised the runtime's corner cases: several exits
    /// reported in one SIGCHLD wake-up, a "ready" byte read while reaping the
    /// successor (it reported, then died), a spurious tick.
    CoalescedSigchld,
    ReadyReadWhileReaping,
    SpuriousTick,
    /// (Proxy) an old generation handed the accepting over, and later heard its
    /// connections had all closed.
    ProxyHandover,
    ProxyDrained,
    /// The service legitimately ended during the run.
    ServiceEnded,
    /// The new generation died right after taking over, before the old child was
    /// signalled, and the old generation took the service back.
    ServiceTakenBack,
    /// A termination signal reached a generation after its handover, while the
    /// new generation it handed over to ran (systemd's stop racing a reload).
    StopAfterHandover,
    /// A generation stopped escaped processes (a child's `setsid` daemon, or
    /// jobs whose leader died) before it exited.
    EscapedStopped,
    /// A control client's upgrade request was answered: upgraded, or failed.
    ControlUpgraded,
    ControlUpgradeFailed,
    /// A status request was answered.
    ControlStatus,
    /// A real-time signal reached a running child.
    RealtimeForwarded,
    /// A successor said why it gave up, and its predecessor read it.
    SuccessorSaidWhy,
    /// A control request was read while another client of the same generation
    /// waited for its answer.
    ConcurrentClients,
    /// A control client went away before its request was read.
    ClientGoneBeforeRead,
    /// (`[healthcheck.notify]`) a child's READY=1 was read while its exit was
    /// being reported (it sent it, then died).
    NotifyReadWhileReaping,
    /// A generation stopped its child after the child had exited on its own but
    /// before that exit was reported to it (not required: rare).
    StopRacedChildExit,
}

impl Cover {
    pub const REQUIRED: &[Cover] = &[
        Cover::UpgradeDone,
        Cover::RollbackNewChildExited,
        Cover::RollbackNewChildUnhealthy,
        Cover::RollbackSuccessorCrashed,
        Cover::RollbackSuccessorHung,
        Cover::RollbackSpawnOrConfig,
        Cover::RollbackPidfile,
        Cover::RollbackTermination,
        Cover::SigkillAfterGrace,
        Cover::OldChildExitedSuccessorTookOver,
        Cover::OldKilledSuccessorTookOver,
        Cover::UpgradeIgnoredInFlight,
        Cover::EarlyUpgradePerformed,
        Cover::HealFinalUpgrade,
        Cover::ServiceEnded,
        Cover::CoalescedSigchld,
        Cover::ReadyReadWhileReaping,
        Cover::SpuriousTick,
        Cover::ProxyHandover,
        Cover::ProxyDrained,
        Cover::ServiceTakenBack,
        Cover::StopAfterHandover,
        Cover::EscapedStopped,
        Cover::ControlUpgraded,
        Cover::ControlUpgradeFailed,
        Cover::ControlStatus,
        Cover::RealtimeForwarded,
        Cover::SuccessorSaidWhy,
        Cover::ConcurrentClients,
        Cover::ClientGoneBeforeRead,
        Cover::NotifyReadWhileReaping,
    ];
}

/// One violated property.
#[derive(Clone, Debug)]
pub struct Violation {
    pub invariant: &'static str,
    pub at: Instant,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.at.since_origin();
        write!(
            f,
            "{} at {}.{:03}s: {}",
            self.invariant,
            t.as_secs(),
            t.subsec_millis(),
            self.detail
        )
    }
}

/// How long past its nominal bound a process may take to be gone: every hop (a
/// signal, a SIGCHLD wake-up, a reap) takes up to one latency.
pub fn slack(w: &World) -> Duration {
    Duration::from_millis(500) + w.faults.swarm.max_latency * 6
}

/// One property: what is wrong with the world now (nothing, usually).
type Check = fn(&World) -> Vec<String>;

/// Every property, after one step.
pub fn check_step(w: &World) -> Vec<Violation> {
    let checks: [(&'static str, Check); 13] = [
        ("I1 old child spared", i1_old_child_spared),
        ("I2 at most two", i2_at_most_two),
        ("I3 rollback restores", i3_rollback_restores),
        ("I4 old generation gone", i4_old_generation_gone),
        ("I5 no orphan, no zombie", i5_no_orphan_no_zombie),
        (
            "I6 pidfile names a ready psflip",
            i6_pidfile_names_ready_psflip,
        ),
        ("I7 exit status", i7_exit_status),
        ("I8 proxy keeps connections", i8_proxy_keeps_connections),
        ("listen sockets kept", listen_sockets_kept),
        ("no busy loop", no_busy_loop),
        ("C control clients answered", control_answered),
        ("K control socket name", control_name_held),
        (
            "a stop passed on is waited for",
            stop_passed_on_is_waited_for,
        ),
    ];
    let mut out = Vec::new();
    for (invariant, check) in checks {
        for detail in check(w) {
            out.push(Violation {
                invariant,
                at: w.now,
                detail,
            });
        }
    }
    out
}

fn gen_name(w: &World, gpid: Pid) -> String {
    format!("g{}[{gpid}]", w.gens[&gpid].ghost.number)
}

/// K — The control socket's name leads to the service, from world facts:
///
/// 1. A first generation takes the name only once its first child was started
///    (spawned in the world), never before.
/// 2. A successor's "ready" is written only while the name is its own: the old
///    generation, once it hears it, may exit, and a client then finds the new
///    generation's socket (before that, the old one's; never none).
/// 3. While a generation's loop runs and it serves (Serving; a first generation
///    whose child was started), the name is its own; while it upgrades
///    (Upgrading, Aborting) and its successor runs, the name is its own or the
///    successor's. A holder SIGKILLed by a fault leaves a stale socket, which
///    is the crash's doing (its generation no longer runs, and is not checked).
fn control_name_held(w: &World) -> Vec<String> {
    let mut out = Vec::new();
    for fact in &w.facts {
        match fact {
            Fact::ControlClaimed {
                gpid,
                first: true,
                child_started: false,
            } => out.push(format!(
                "{} took the control socket's name before its first child was started",
                gen_name(w, *gpid)
            )),
            Fact::ReadyWritten { gpid, control_name } if *control_name != Some(*gpid) => {
                out.push(format!(
                    "{} reported ready while the control socket's name led to {control_name:?}",
                    gen_name(w, *gpid),
                ))
            }
            _ => {}
        }
    }
    for p in w.live_gens() {
        let g = &w.gens[&p];
        if !g.rt.booted {
            continue;
        }
        let successor = g
            .machine
            .successor()
            .and_then(|id| g.rt.pids.get(&id))
            .copied();
        let holders: Vec<Pid> = match g.machine.phase() {
            Phase::Serving => vec![p],
            Phase::Starting
                if g.ghost.generation == Generation::First && g.ghost.child.is_some() =>
            {
                vec![p]
            }
            Phase::Upgrading | Phase::Aborting => match successor {
                Some(s) if w.running(s) => vec![p, s],
                _ => continue,
            },
            _ => continue,
        };
        if !w.control_name.is_some_and(|n| holders.contains(&n)) {
            out.push(format!(
                "{} is {:?} and the control socket's name leads to {:?}, not to {holders:?}",
                gen_name(w, p),
                g.machine.phase(),
                w.control_name
            ));
        }
    }
    out
}

/// I1 — The old child is never sent the shutdown signal nor SIGKILL before its
/// generation read "ready" from a successor whose child passed its healthcheck and
/// that wrote the pidfile.
///
/// 1. "Old child": the child of a generation that served or started an upgrade
///    (the successor's own not-yet-healthy child may be stopped at will).
/// 2. Not counted: a forward of the signal psflip itself received (the operator's),
///    and the group kill after the child already exited.
/// 3. A "ready" report is valid only if, when it was written, the reporter's child
///    was healthy and alive and the pidfile (if configured) named the reporter —
///    and the reader had not SIGKILLed the reporter before reading it (a successor
///    that crashes right after "ready" has still reported, SPEC §5; one its parent
///    killed for being late is gone by the parent's own decision).
/// 4. A successor whose predecessor aborted the upgrade (it passed on the
///    termination signal it got) never was the service, even if it reported
///    ready an instant before: it may stop its child.
fn i1_old_child_spared(w: &World) -> Vec<String> {
    let mut out = Vec::new();
    for fact in &w.facts {
        match *fact {
            Fact::ChildStopped {
                gpid,
                child,
                signal,
                protected: true,
                ready_heard: false,
            } => out.push(format!(
                "{} sent {} to its child [{child}] without a valid ready from a successor",
                gen_name(w, gpid),
                signal.as_str()
            )),
            Fact::ReadyReported {
                gpid,
                healthy,
                pidfile_ok,
            } if !healthy || !pidfile_ok => out.push(format!(
                "{} reported ready with healthy={healthy}, pidfile naming it={pidfile_ok}",
                gen_name(w, gpid)
            )),
            _ => {}
        }
    }
    out
}

/// I2 — At most one upgrade in flight.
///
/// 1. At most two psflip generations run (hung and booting successors included).
/// 2. At most two app children run.
/// 3. At most one healthcheck probe runs per generation ("never two at once").
fn i2_at_most_two(w: &World) -> Vec<String> {
    let mut out = Vec::new();
    let running = || w.procs.values().filter(|p| p.life == Life::Running);
    let gens: Vec<Pid> = running()
        .filter(|p| matches!(p.kind, Kind::Psflip))
        .map(|p| p.pid)
        .collect();
    if gens.len() > 2 {
        out.push(format!("{} psflip generations run: {gens:?}", gens.len()));
    }
    let apps: Vec<Pid> = running()
        .filter(|p| matches!(p.kind, Kind::App { .. }))
        .map(|p| p.pid)
        .collect();
    if apps.len() > 2 {
        out.push(format!("{} app children run: {apps:?}", apps.len()));
    }
    for g in &gens {
        let probes = running()
            .filter(|p| matches!(p.kind, Kind::Probe { owner } if owner == *g))
            .count();
        if probes > 1 {
            out.push(format!("{} runs {probes} probes at once", gen_name(w, *g)));
        }
    }
    out
}

/// I3 — After a failed upgrade the old generation is exactly as before.
///
/// 1. It is serving again, with the same child (same pid), still running.
/// 2. With a pidfile, it rewrote it to name itself (the successor may have written
///    it before it died), unless that write failed.
/// 3. "A later upgrade can still succeed" is checked by the heal phase's final
///    upgrade ([`converged`]).
/// 4. Unless that child's exit, not yet reported at the rollback, is reported
///    later in the same turn (it died on its own just before or after; psflip
///    rolled back not knowing): SPEC §1's "exited first" reading (seed 149184).
fn i3_rollback_restores(w: &World) -> Vec<String> {
    let mut out = Vec::new();
    for fact in &w.facts {
        let Fact::RolledBack {
            gpid,
            child_at_start,
            child_exit_unreported,
        } = *fact
        else {
            continue;
        };
        let g = &w.gens[&gpid];
        let name = gen_name(w, gpid);
        // Gone, or on its way out (stopping the escaped processes before it
        // exits): its child ended after the rollback.
        if !w.running(gpid) || g.machine.sweeping() {
            continue;
        }
        // (A new upgrade may start in the same turn: a request read after.)
        if g.ghost.handed_over {
            out.push(format!(
                "{name} is not the service again after a failed upgrade: handed over"
            ));
        }
        // The same child, whose exit (on its own: psflip did not stop it) was
        // reported later in the same turn: it ended after the rollback as far as
        // psflip could know, even if in world time it had just died before.
        let ended_after = child_exit_unreported
            && g.ghost.child.map(|(_, p)| p) == child_at_start
            && g.ghost.child_exit.is_some()
            && !g.ghost.stopped_child;
        let child_now = g.ghost.running_child();
        if ended_after {
            // (Its exit status is I7's business.)
        } else if child_now != child_at_start || !child_now.is_some_and(|c| w.running(c)) {
            out.push(format!(
                "{name} has child {child_now:?} after a failed upgrade, had {child_at_start:?}"
            ));
        }
        if g.settings().pidfile && !g.ghost.last_pidfile_write_failed && w.pidfile != Some(gpid) {
            out.push(format!(
                "{name} did not make the pidfile name it again after a failed upgrade (it names {:?})",
                w.pidfile
            ));
        }
    }
    out
}

/// I4 — After a successful upgrade, no process of the old generation remains once
/// `shutdown.delay + shutdown.timeout` (plus [`slack`]) has passed since the
/// handover: not the old psflip, its child, its probes, nor its child's jobs.
/// A generation told to stop after its handover passes the stop on to the new
/// generation and exits only once that one is gone: a service manager SIGKILLs
/// whatever is left when its main process exits (issue #9).
fn stop_passed_on_is_waited_for(w: &World) -> Vec<String> {
    w.facts
        .iter()
        .filter_map(|f| match *f {
            Fact::ExitedBeforeNewGeneration { gpid, successor } => Some(format!(
                "{} exited while the new generation [{successor}] it passed a stop on to still ran",
                gen_name(w, gpid)
            )),
            _ => None,
        })
        .collect()
}

fn i4_old_generation_gone(w: &World) -> Vec<String> {
    let mut out = Vec::new();
    for (&gpid, g) in &w.gens {
        let Some(at) = g.ghost.handover_at else {
            continue;
        };
        let s = g.settings();
        if w.now <= at + s.shutdown_delay + s.shutdown_timeout + slack(w) {
            continue;
        }
        // Told to stop after the handover, the old psflip waits for the new
        // generation it passed the stop on to: its child gets shutdown.timeout,
        // then SIGKILL comes after SUCCESSOR_GRACE (issue #9).
        let psflip_waits = g.ghost.stop_passed_at.is_some_and(|t| {
            w.now <= t + s.shutdown_timeout + psflip::machine::SUCCESSOR_GRACE + slack(w)
        });
        let child = g.ghost.child.map(|(_, p)| p);
        for p in w.procs.values().filter(|p| p.life == Life::Running) {
            let ours = match p.kind {
                Kind::Psflip => p.pid == gpid && !psflip_waits,
                Kind::App { owner, .. } | Kind::Probe { owner } => owner == gpid,
                Kind::Job { leader } => Some(leader) == child && !w.orphaned_jobs.contains(&p.pid),
                // Stopped before the generation exits: I5.5 checks that.
                Kind::Daemon { .. } => false,
            };
            if ours {
                out.push(format!(
                    "[{}] ({:?}) of {} still runs {:?} after the handover",
                    p.pid,
                    kind_name(&p.kind),
                    gen_name(w, gpid),
                    w.now.saturating_since(at)
                ));
            }
        }
    }
    out
}

fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::Psflip => "psflip",
        Kind::App { .. } => "app",
        Kind::Probe { .. } => "probe",
        Kind::Job { .. } => "job",
        Kind::Daemon { .. } => "daemon",
    }
}

/// I5 — No orphans and no zombies.
///
/// 1. An app child or probe whose psflip is gone is dead (pdeathsig).
/// 2. A zombie is reaped within [`REAP_BOUND`] (plus slack).
/// 3. A background job dies soon after its leader (the group kill), except when
///    the psflip was SIGKILLed by a fault before it could send it (pdeathsig does
///    not reach jobs: a known limit, counted in `World::orphaned_jobs`).
/// 4. A probe does not outlive its interval (plus slack): it is killed then.
fn i5_no_orphan_no_zombie(w: &World) -> Vec<String> {
    let mut out = Vec::new();
    let bound = REAP_BOUND + slack(w);
    for p in w.procs.values() {
        match (p.life, &p.kind) {
            (Life::Zombie, _) => {
                if p.died_at.is_some_and(|d| w.now > d + bound) {
                    out.push(format!(
                        "zombie [{}] ({}) unreaped for {:?} by [{}]",
                        p.pid,
                        kind_name(&p.kind),
                        w.now.saturating_since(p.died_at.unwrap_or_default()),
                        p.ppid
                    ));
                }
            }
            (Life::Running, Kind::App { owner, .. } | Kind::Probe { owner }) => {
                if !w.running(*owner) {
                    out.push(format!(
                        "{} [{}] runs although its psflip {} is gone",
                        kind_name(&p.kind),
                        p.pid,
                        gen_name(w, *owner)
                    ));
                }
                if let Kind::Probe { owner } = p.kind
                    && let Health::Command { interval, .. } = w.gens[&owner].settings().health
                    && w.now > p.born_at + interval + bound
                {
                    out.push(format!(
                        "probe [{}] of {} outlives its interval",
                        p.pid,
                        gen_name(w, owner)
                    ));
                }
            }
            (Life::Running, Kind::Job { leader }) => {
                let died = w.proc(*leader).and_then(|l| l.died_at);
                if let Some(d) = died
                    && w.now > d + bound
                    && !w.orphaned_jobs.contains(&p.pid)
                {
                    out.push(format!(
                        "job [{}] outlives its leader [{leader}] by {:?}",
                        p.pid,
                        w.now.saturating_since(d)
                    ));
                }
            }
            (Life::Running, Kind::Psflip | Kind::Daemon { .. }) => {}
        }
    }
    // 5. Escaped processes (a child's `setsid` daemons, jobs whose leader died),
    //    re-parented to their generation, are gone when it exits (SPEC §10); and
    //    a generation never signals a process of another generation that runs.
    for fact in &w.facts {
        match fact {
            Fact::EscapedAtExit { gpid, escaped } if !escaped.is_empty() => out.push(format!(
                "{} exited while escaped processes {escaped:?} still ran",
                gen_name(w, *gpid)
            )),
            Fact::EscapedSignalled {
                gpid,
                target,
                origin_running: true,
            } => out.push(format!(
                "{} signalled [{target}], a process of another running generation",
                gen_name(w, *gpid)
            )),
            _ => {}
        }
    }
    out
}

/// I6 — The pidfile, when present, names a live psflip that is the service.
///
/// 1. A live generation it names has reported ready, or is a first generation
///    whose child is healthy (or is healthy and between writing it and reporting).
/// 2. A dead generation it names was SIGKILLed by a fault (a stale pidfile is then
///    unavoidable), or is a successor whose parent has not handled its death yet
///    (the parent rewrites the pidfile then: checked by I3).
/// 3. Writes are atomic in the simulation (rename): never half-written.
fn i6_pidfile_names_ready_psflip(w: &World) -> Vec<String> {
    let Some(p) = w.pidfile else {
        return Vec::new();
    };
    let Some(g) = w.gens.get(&p) else {
        return vec![format!("the pidfile names [{p}], not a psflip")];
    };
    let name = gen_name(w, p);
    if w.running(p) {
        // Reported ready, or healthy and about to (writing the pidfile first).
        let ok = g.ghost.ready_reported || g.ghost.healthy;
        if ok {
            Vec::new()
        } else {
            vec![format!(
                "the pidfile names {name}, which is not ready ({:?})",
                g.machine.phase()
            )]
        }
    } else {
        let parent_handling = g
            .ghost
            .parent
            .is_some_and(|pp| w.running(pp) && w.gens[&pp].rt.ids.contains_key(&p));
        if g.ghost.end == Some(End::Crashed) || parent_handling {
            Vec::new()
        } else {
            vec![format!(
                "the pidfile names {name}, which is dead ({:?})",
                g.ghost.end
            )]
        }
    }
}

/// What a generation's exit status must be (SPEC §1, §5).
///
/// 1. 0 after a handover, whatever its old child ended with.
/// 2. 1 when psflip itself stopped its child (never healthy in time, or a
///    successor's pidfile could not be written) or could not start it.
/// 3. The child's status (code, or 128+N) when the child exited while serving.
/// 4. 1 — or the child's own non-zero status — when it exited before healthy.
///
/// "Stopped its child" (1, 2) counts a stop psflip sent before the child's exit
/// was delivered to it, even if in world time the child had just died on its own:
/// SPEC §1's "exited first" is read as "psflip learned of its exit before it
/// signalled it" — kill(2) on a zombie succeeds, so psflip cannot tell those
/// apart (seeds 27640, 35489).
///
/// In 3 and 4, a child that died of the termination signal its generation had
/// received (and passed on) stopped as asked: 0 (issue #9) — for a generation
/// that is or was the service (the first, or a successor that reported ready),
/// not for a successor that gave up before it was ready.
pub fn expected_exit(w: &World, gpid: Pid) -> i32 {
    let g = &w.gens[&gpid];
    if g.ghost.handed_over {
        // (Whether the handover was valid is I1's business.)
        return 0;
    }
    // A successor whose pidfile could not be written gives up, even if its
    // child died on its own meanwhile (its exit then reported just after).
    if g.ghost.stopped_child || g.ghost.child_spawn_failed || g.ghost.pidfile_failed_starting {
        return 1;
    }
    let may_relay = g.ghost.generation == Generation::First || g.ghost.ready_reported;
    let status_of = |status: ExitStatus| match (status, g.ghost.stop_signal) {
        (ExitStatus::Signaled(n), Some(sig)) if may_relay && n == sig as i32 => 0,
        _ => status.code(),
    };
    match g.ghost.child_exit {
        Some((status, true)) => status_of(status),
        Some((status, false)) if status != ExitStatus::Code(0) => status_of(status),
        _ => 1,
    }
}

/// I7 — psflip's exit status is its child's ([`expected_exit`]).
fn i7_exit_status(w: &World) -> Vec<String> {
    let mut out = Vec::new();
    for fact in &w.facts {
        if let Fact::Exited { gpid, code } = *fact {
            let expected = expected_exit(w, gpid);
            if code != expected {
                let g = &w.gens[&gpid];
                out.push(format!(
                    "{} exited {code}, expected {expected} (child exit {:?}, handed over {}, stopped its child {})",
                    gen_name(w, gpid),
                    g.ghost.child_exit,
                    g.ghost.handed_over,
                    g.ghost.stopped_child
                ));
            }
        }
    }
    out
}

/// `[[listen]]` (issue #12): the socket files exist while any generation serves
/// (its child healthy, Serving or Upgrading, not told to terminate): only the
/// generation that ends the service for good removes them, never one whose
/// successor took over, never a successor that gave up.
fn listen_sockets_kept(w: &World) -> Vec<String> {
    if !w.listen || w.listen_sockets {
        return Vec::new();
    }
    w.live_gens()
        .into_iter()
        .filter(|p| {
            let g = &w.gens[p];
            !g.ghost.terminating
                && g.ghost.child_runs()
                && g.ghost.protects_child
                && !g.ghost.handed_over
        })
        .map(|p| {
            format!(
                "the [[listen]] socket files are gone while {} serves",
                gen_name(w, p)
            )
        })
        .collect()
}

/// I8 — With a proxy, no client connection is refused or cut because of an upgrade.
///
/// 1. A generation accepts only once its child is healthy.
/// 2. When a generation stops accepting, another one (its successor) accepts
///    already — unless that successor is already gone (it, or its child, crashed
///    right after a valid "ready": the new service crashed; I1 checks the ready
///    was valid), or
///    died and the generation took the service back (it accepts again).
/// 3. The socket files exist while a generation serves through them (accepting,
///    serving or upgrading, not stopping, not told to terminate): only the
///    generation that ends the service for good removes them.
/// 4. A generation that stopped accepting exits only once its connections have
///    all closed, or once `shutdown.delay + shutdown.timeout` has passed since (the
///    bound I4 sets: connections longer than that are cut, on purpose).
fn i8_proxy_keeps_connections(w: &World) -> Vec<String> {
    let mut out = Vec::new();
    if !w.proxy {
        return out;
    }
    let accepting: Vec<Pid> = w
        .live_gens()
        .into_iter()
        .filter(|p| w.gens[p].rt.accepting)
        .collect();
    for p in &accepting {
        if !w.gens[p].ghost.healthy {
            out.push(format!(
                "{} accepts before its child is healthy",
                gen_name(w, *p)
            ));
        }
    }
    let serving: Vec<Pid> = accepting
        .iter()
        .copied()
        .filter(|p| {
            let g = &w.gens[p];
            !g.ghost.terminating && g.ghost.protects_child && !g.ghost.handed_over
        })
        .collect();
    if !w.proxy_sockets && !serving.is_empty() {
        out.push(format!(
            "the proxy socket files are gone while {serving:?} serve"
        ));
    }
    for fact in &w.facts {
        match *fact {
            Fact::ProxyStoppedAccepting { gpid } => {
                let successor_crashed = w.gens[&gpid]
                    .ghost
                    .successor_pid
                    .and_then(|s| w.gens.get(&s))
                    .is_some_and(|s| s.ghost.end.is_some());
                // Accepting again: the service was taken back from a successor that
                // died right after taking over (the listener's backlog held any
                // connection meanwhile: nothing was refused).
                let taken_back = accepting.contains(&gpid);
                if !successor_crashed && !taken_back && !accepting.iter().any(|p| *p != gpid) {
                    out.push(format!(
                        "{} stopped accepting and no other generation accepts",
                        gen_name(w, gpid)
                    ));
                }
            }
            Fact::ProxySocketsRemoved { gpid } => {
                if let Some(other) = serving.iter().find(|p| **p != gpid) {
                    out.push(format!(
                        "{} removed the proxy socket files while {} serves",
                        gen_name(w, gpid),
                        gen_name(w, *other)
                    ));
                }
            }
            Fact::Exited { gpid, .. } => {
                let g = &w.gens[&gpid];
                let s = g.settings();
                if let Some(t) = g.ghost.stopped_accepting_at
                    && !g.ghost.connections_closed
                    && w.now < t + s.shutdown_delay + s.shutdown_timeout
                {
                    out.push(format!(
                        "{} exited {:?} after it stopped accepting, its connections still open",
                        gen_name(w, gpid),
                        w.now.saturating_since(t)
                    ));
                }
            }
            _ => {}
        }
    }
    out
}

/// Control clients (`psflip upgrade`, `psflip status`) and real-time signals.
///
/// 1. A client gets at most one answer; a status request is answered as soon
///    as it reaches the machine.
/// 2. A client whose generation exited on its own (not killed) got its answer.
/// 3. "upgraded" only when the world saw that generation hand over.
/// 4. A real-time signal is passed to the generation's running child only.
fn control_answered(w: &World) -> Vec<String> {
    let mut out = Vec::new();
    for (client, c) in &w.clients {
        let name = gen_name(w, c.gpid);
        if c.answers.len() > 1 {
            out.push(format!("client {client:?} of {name} got {:?}", c.answers));
        }
        let asked_status = c.request == psflip::machine::Request::Status;
        if asked_status && c.delivered && c.answers.is_empty() {
            out.push(format!(
                "status to client {client:?} of {name} not answered"
            ));
        }
        let g = &w.gens[&c.gpid];
        if g.ghost.exit_code.is_some() && c.delivered && c.answers.is_empty() {
            out.push(format!(
                "{name} exited {:?} without answering client {client:?}",
                g.ghost.exit_code
            ));
        }
    }
    for fact in &w.facts {
        match *fact {
            Fact::Replied {
                gpid,
                client,
                upgraded: true,
                handed_over: false,
            } => out.push(format!(
                "{} told client {client:?} the upgrade succeeded without a handover",
                gen_name(w, gpid)
            )),
            Fact::RealtimeForwarded {
                gpid,
                to_child: false,
            } => out.push(format!(
                "{} passed a real-time signal to a process other than its running child",
                gen_name(w, gpid)
            )),
            _ => {}
        }
    }
    out
}

/// A `Tick` delivered because the deadline passed must change something: the real
/// loop would otherwise poll with a zero timeout forever.
fn no_busy_loop(w: &World) -> Vec<String> {
    w.facts
        .iter()
        .filter_map(|f| match *f {
            Fact::BusyLoop { gpid } => Some(format!(
                "{}: a due Tick did nothing and the deadline {:?} is still due",
                gen_name(w, gpid),
                w.gens[&gpid].machine.deadline()
            )),
            _ => None,
        })
        .collect()
}

/// Liveness, after the heal phase's final upgrade: exactly one psflip (`new`, the
/// successor of `old`), serving, with one running child; the old generation gone;
/// nothing else running but that child's jobs (and jobs orphaned by a crash); no
/// zombie; the pidfile names `new`.
pub fn converged(w: &World, old: Pid) -> Vec<String> {
    let mut out = Vec::new();
    let live = w.live_gens();
    let [new] = live[..] else {
        out.push(format!(
            "{} psflip generations run, expected 1: {live:?}",
            live.len()
        ));
        return out;
    };
    let g = &w.gens[&new];
    if g.ghost.number <= w.gens[&old].ghost.number {
        out.push(format!(
            "the final upgrade did not happen: {} still serves",
            gen_name(w, new)
        ));
    }
    if !g.ghost.ready_reported || g.ghost.handed_over || g.ghost.terminating {
        out.push(format!(
            "{} is not the service (reported ready {}, handed over {}, terminating {})",
            gen_name(w, new),
            g.ghost.ready_reported,
            g.ghost.handed_over,
            g.ghost.terminating
        ));
    }
    let child = g.ghost.running_child();
    if !child.is_some_and(|c| w.running(c)) {
        out.push(format!("{} has no running child", gen_name(w, new)));
    }
    for p in w.procs.values() {
        let expected = match p.kind {
            Kind::Psflip => p.pid == new,
            Kind::App { .. } => Some(p.pid) == child,
            Kind::Job { leader } | Kind::Daemon { leader, .. } => {
                Some(leader) == child || w.orphaned_jobs.contains(&p.pid)
            }
            Kind::Probe { .. } => false,
        };
        if p.life == Life::Zombie || !expected {
            out.push(format!(
                "[{}] ({}) is {:?} at the end",
                p.pid,
                kind_name(&p.kind),
                p.life
            ));
        }
    }
    if g.settings().pidfile && w.pidfile != Some(new) {
        out.push(format!(
            "the pidfile names {:?}, not {}",
            w.pidfile,
            gen_name(w, new)
        ));
    }
    out
}

/// Liveness when the service ended: it ended for a reason (a fault or the
/// operator), and nothing remains — no process, no zombie — but jobs orphaned by a
/// crash.
pub fn ended(w: &World) -> Vec<String> {
    let mut out = Vec::new();
    if w.service_enders == 0 {
        out.push("the service ended with no fault nor termination signal to explain it".into());
    }
    for p in w.procs.values() {
        if p.life == Life::Zombie || !w.orphaned_jobs.contains(&p.pid) {
            out.push(format!(
                "[{}] ({}) is {:?} after the service ended",
                p.pid,
                kind_name(&p.kind),
                p.life
            ));
        }
    }
    out
}
