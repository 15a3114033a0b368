//! The simulated world: a clock, an event queue ordered by (time, sequence number), a
//! small kernel (processes, parents, process groups, pdeathsig, zombies, init), and
//! the psflip generations, each a real [`Machine`] driven through the real
//! [`runtime::drive`] over a simulated [`Os`].
//!
//! What the real runtime does around `drive` is run too: a wake-up of a
//! generation is its poll returning ([`World::poll`] says which fds are ready,
//! in the runtime's order), then the runtime's own [`runtime::turn`] with its
//! [`Psflip`] decoding over a simulated [`Source`] ([`SimSource`]: pending
//! signals and their senders, zombies, the readiness pipe, control clients…) —
//! the same code as the real loop over signalfd, waitid, pipes and sockets. The
//! faults are in the source's answers: poll missing a "ready" byte that landed
//! meanwhile, the order zombies are found in. Every latency (signal delivery,
//! SIGCHLD wake-up, pipe, exec) is drawn from the seed; a wake-up finds whatever
//! arrived meanwhile, so SIGCHLDs coalesce as they do in the kernel.
//!
//! Beside what the runtime keeps ([`GenRuntime`]), each generation carries *ghost*
//! state ([`Ghost`]): what the checker knows about it, never read by the machine.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

use psflip::Signal;
use psflip::effects::notify::Message;
use psflip::effects::readiness::Heard;
use psflip::machine::{
    ClientId, Event, ExitStatus, Generation, Health, Instant, Machine, Origin, Phase, ProcId,
    Reply, Request, Role, Sender, Settings,
};
use psflip::runtime::{self, Os, Psflip, PsflipFd, Source};

use crate::faults::{
    self, AppBehaviour, Faults, OperatorAction, ProbeOutcome, SuccessorBehaviour, Swarm,
};
use crate::invariants::{Cover, Fact};
use crate::rng::Rng;

pub type Pid = u32;

/// The init process: adopts orphans and reaps them.
pub const INIT: Pid = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Life {
    Running,
    /// Exited, not yet reaped by its parent.
    Zombie,
}

#[derive(Clone, Debug)]
pub enum Kind {
    /// A psflip generation: its machine and runtime state are in [`World::gens`].
    Psflip,
    /// The app child of the psflip `owner`.
    App { owner: Pid, behaviour: AppBehaviour },
    /// One healthcheck command run of the psflip `owner`.
    Probe { owner: Pid },
    /// A background job a shell-like app child `leader` left in its process group.
    Job { leader: Pid },
    /// A daemon the app child `leader` of generation `owner` started in a session
    /// of its own (`setsid`): the group kill misses it; psflip, a subreaper,
    /// adopts it when `leader` dies and stops it before exiting (SPEC §10).
    /// `stubborn`: it ignores everything but SIGKILL.
    Daemon {
        leader: Pid,
        owner: Pid,
        stubborn: bool,
    },
}

#[derive(Clone, Debug)]
pub struct Proc {
    pub pid: Pid,
    pub ppid: Pid,
    pub pgid: Pid,
    pub kind: Kind,
    pub life: Life,
    pub status: Option<ExitStatus>,
    /// `PR_SET_PDEATHSIG(SIGKILL)`: dies when its parent dies.
    pub pdeathsig: bool,
    pub born_at: Instant,
    pub died_at: Option<Instant>,
}

/// What the real runtime (`LinuxOs` and its loop) keeps for one generation.
#[derive(Clone, Debug, Default)]
pub struct GenRuntime {
    /// The id↔pid table; a pid is forgotten once reaped.
    pub pids: BTreeMap<ProcId, Pid>,
    pub ids: BTreeMap<Pid, ProcId>,
    /// The read end of the readiness pipe of the successor in flight.
    pub successor_pipe: Option<ProcId>,
    /// An unread "ready" byte sits in that pipe.
    pub ready_byte: bool,
    /// (Successor) the write end to the previous generation and our id there, until
    /// its loss was reported.
    pub predecessor: Option<(Pid, ProcId)>,
    /// The previous generation is gone and the machine was not told yet.
    pub predecessor_gone: bool,
    /// Pending signals (the signalfd: standard signals coalesce per number).
    pub pending: BTreeSet<i32>,
    /// The event loop runs (a successor: it loaded its configuration).
    pub booted: bool,
    /// The wake-up already queued for the machine's deadline.
    pub timer_at: Option<Instant>,
    /// (Proxy) this generation accepts connections.
    pub accepting: bool,
    /// (Proxy) its connections have all closed and the machine was not told yet.
    pub drained: bool,
    /// The sender of each pending signal, as the signalfd keeps it: the first
    /// instance's (a standard signal already pending is not queued again).
    pub senders: BTreeMap<i32, Pid>,
    /// What the successor in flight wrote to the readiness pipe about giving up,
    /// not read yet.
    pub failure_said: Option<String>,
    /// Every successor started, kept after it exits: the pidfile may still name
    /// one (`Effect::RemovePidfile`, as in the real runtime).
    pub successors: BTreeMap<ProcId, Pid>,
    /// Control clients connecting, not accepted yet.
    pub connecting: std::collections::VecDeque<ClientId>,
    /// Accepted control clients whose request is there to read.
    pub connected: BTreeMap<ClientId, Request>,
    /// (Successor) the pid of the generation that started it (the runtime's
    /// `getppid()` at start-up).
    pub predecessor_pid: Option<Pid>,
    /// (`[healthcheck.notify]`) the app child whose notify socket is open, and
    /// the messages in it not read yet.
    pub child_notify: Option<ProcId>,
    pub notified: Vec<Message>,
}

/// A control client (`psflip upgrade`, `psflip status`) and what it got.
#[derive(Clone, Debug)]
pub struct Client {
    pub gpid: Pid,
    pub request: Request,
    /// It went away: before its request was read (then it never reaches the
    /// machine), or before the answer (the answer is dropped).
    pub vanished: bool,
    /// Its request reached the machine.
    pub delivered: bool,
    pub answers: Vec<Reply>,
}

/// Why a generation ended, as far as the checker can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// SIGKILLed by an injected fault.
    Crashed,
    /// SIGKILLed by the generation that started it (hung or slow successor).
    KilledByParent,
    /// Exited 2 before starting anything (invalid configuration, binary missing).
    BadConfig,
    /// Its machine exited with this code.
    Exited(i32),
    /// Killed by a signal other than those above.
    Signaled(i32),
}

/// What the checker knows about one generation. Never read by the machine.
#[derive(Clone, Debug)]
pub struct Ghost {
    /// 1 for the first generation, then +1 per successor.
    pub number: u64,
    pub generation: Generation,
    pub behaviour: SuccessorBehaviour,
    /// (Successor) the generation that started it.
    pub parent: Option<Pid>,
    /// The app child: (id, pid).
    pub child: Option<(ProcId, Pid)>,
    /// The app child could not be spawned.
    pub child_spawn_failed: bool,
    /// Its child is *the* service: the generation reached `Serving` or started an
    /// upgrade. From then on its child may only be stopped after a handover (I1).
    pub protects_child: bool,
    /// Its predecessor aborted the upgrade (a termination signal from it).
    pub aborted: bool,
    /// An upgrade signal reached it while its first child was starting.
    pub requested_early: bool,
    /// It wrote "ready" to its predecessor.
    pub ready_reported: bool,
    /// At the moment it reported ready, its child was healthy and (if configured)
    /// the pidfile named it.
    pub ready_valid: bool,
    /// It read a valid "ready" from its successor (the precondition of I1).
    pub ready_heard_valid: bool,
    /// When its machine accepted the successor's readiness.
    pub handover_at: Option<Instant>,
    /// The machine sent its child the shutdown signal or SIGKILL (not a forward)
    /// before the child's exit was reported to it: the child ran, or had just
    /// died and its exit was not delivered yet (kill(2) on a zombie succeeds, so
    /// to every observer psflip has, that child died of or at the stop).
    pub stopped_child: bool,
    /// The child's exit as reported, and whether it had proven healthy by then
    /// ([`Ghost::healthy`]).
    pub child_exit: Option<(ExitStatus, bool)>,
    /// When the app child was spawned (world time).
    pub child_spawned_at: Option<Instant>,
    /// World fact: the child proved healthy, as its generation could see it —
    /// with `alive`, a tick reached the generation once the child had run
    /// `timeout` (and before `upgrade.timeout`); with a probe, a probe's exit 0
    /// reached it while that child ran. Never the machine's opinion.
    pub healthy: bool,
    /// World fact: the child can no longer prove healthy — a tick reached the
    /// generation after `upgrade.timeout`, or (successor) a termination signal
    /// reached it before it reported ready.
    pub health_over: bool,
    /// The successor this generation started whose end it has not heard of, and
    /// that it has not handed over to.
    pub in_flight: Option<Pid>,
    /// It sent SIGKILL to the successor in flight.
    pub killed_in_flight: bool,
    /// A termination signal reached it while a successor was in flight.
    pub upgrade_aborted: bool,
    /// World fact: it read "ready" from the successor in flight, which it had not
    /// killed, with no termination signal since the upgrade began — and has not
    /// taken the service back since (the new generation died before the old
    /// child was touched).
    pub handed_over: bool,
    /// A termination signal from anyone but its predecessor reached it after the
    /// handover.
    pub stopped_after_handover: bool,
    /// A pidfile write failed while its child was healthy and it was not serving yet.
    pub pidfile_failed_starting: bool,
    /// The last pidfile write failed.
    pub last_pidfile_write_failed: bool,
    /// The successor in flight, and the pid of the child when it was started.
    pub successor_pid: Option<Pid>,
    pub upgrade_child: Option<Pid>,
    /// Die right after the "ready" byte is written (fault).
    pub dies_after_ready: bool,
    /// It received a termination signal (SIGTERM, SIGINT, SIGQUIT).
    pub terminating: bool,
    /// The last termination signal it received while its child ran (and so
    /// passed on to it): the child dying of it is the stop that was asked for.
    pub stop_signal: Option<Signal>,
    /// When a termination signal reached it after its handover while the new
    /// generation ran (it then waits for that one to stop too).
    pub stop_passed_at: Option<Instant>,
    /// (Proxy) when it stopped accepting.
    pub stopped_accepting_at: Option<Instant>,
    /// (Proxy) its last proxied connection closed after it stopped accepting.
    pub connections_closed: bool,
    pub end: Option<End>,
    /// The exit code its machine asked for, once it did.
    pub exit_code: Option<i32>,
}

impl Ghost {
    /// Whether `id` names its app child.
    pub fn is_child(&self, id: ProcId) -> bool {
        self.child.is_some_and(|(c, _)| c == id)
    }

    /// Its child runs, as far as the generation was told: spawned, and its exit
    /// not reported yet.
    pub fn child_runs(&self) -> bool {
        self.child.is_some() && self.child_exit.is_none()
    }

    /// The child's pid while [`Ghost::child_runs`].
    pub fn running_child(&self) -> Option<Pid> {
        self.child.filter(|_| self.child_runs()).map(|(_, p)| p)
    }

    /// Whether a "ready" from `id` comes from the successor in flight.
    pub fn in_flight_ready(&self, rt: &GenRuntime, id: ProcId) -> bool {
        self.in_flight.is_some() && rt.pids.get(&id) == self.in_flight.as_ref()
    }
}

/// One psflip generation.
pub struct Gen {
    pub machine: Machine,
    pub rt: GenRuntime,
    pub ghost: Ghost,
}

impl Gen {
    fn new(
        settings: Settings,
        (proxy, listen): (bool, bool),
        number: u64,
        behaviour: SuccessorBehaviour,
    ) -> Gen {
        let generation = settings.generation;
        Gen {
            machine: Machine::new(settings)
                .with_proxy(proxy)
                .with_listen(listen)
                .with_subreaper(true),
            rt: GenRuntime::default(),
            ghost: Ghost {
                number,
                generation,
                behaviour,
                parent: None,
                child: None,
                child_spawn_failed: false,
                protects_child: false,
                aborted: false,
                requested_early: false,
                ready_reported: false,
                ready_valid: false,
                ready_heard_valid: false,
                handover_at: None,
                stopped_child: false,
                child_exit: None,
                child_spawned_at: None,
                healthy: false,
                health_over: false,
                in_flight: None,
                killed_in_flight: false,
                upgrade_aborted: false,
                handed_over: false,
                stopped_after_handover: false,
                pidfile_failed_starting: false,
                last_pidfile_write_failed: false,
                successor_pid: None,
                upgrade_child: None,
                dies_after_ready: false,
                terminating: false,
                stop_signal: None,
                stop_passed_at: None,
                stopped_accepting_at: None,
                connections_closed: false,
                end: None,
                exit_code: None,
            },
        }
    }

    pub fn settings(&self) -> &Settings {
        self.machine.settings()
    }
}

/// Something scheduled in the world.
#[derive(Clone, Debug)]
enum Ev {
    /// A generation's event loop wakes up: a fd or a signal is ready, or its timer.
    Wake(Pid),
    /// Fault: the runtime delivers a `Tick` for no reason.
    SpuriousTick(Pid),
    /// A successor's exec finished: it loads its configuration.
    Boot(Pid),
    /// A signal reaches a process, or every member of a process group.
    Deliver {
        target: Pid,
        group: bool,
        signal: Signal,
        /// The process that sent it, as signalfd's `ssi_pid` tells: a psflip
        /// generation, or init for the operator (the service manager); `None`:
        /// the kernel.
        from: Option<Pid>,
    },
    /// (Proxy) the last connection of a draining generation closed.
    Drained(Pid),
    /// A process exits on its own. `fault`: an injected exit, dropped in the heal
    /// phase.
    SelfExit {
        pid: Pid,
        status: ExitStatus,
        fault: bool,
    },
    /// init reaps its zombies.
    InitReap,
    /// The operator acts (chaos phase only).
    Operator(OperatorAction),
    /// A control client closes its connection.
    ClientGone(ClientId),
    /// (`[healthcheck.notify]`) an app child sends a datagram to its notify socket.
    Notify { pid: Pid, message: Message },
}

/// The simulated world. See the module documentation.
/// A deliberate break of the system under test, for the test that shows each
/// invariant can fail (`each_invariant_fires_on_a_broken_machine`): the
/// machine's effects, or its inputs, corrupted on their way through the
/// simulated runtime. Never set in a normal run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// The old child gets the shutdown signal as soon as a successor starts (I1).
    StopChildAtUpgrade,
    /// Every probe run starts a second probe beside it (I2).
    DoubleProbe,
    /// Pidfile writes are reported done but skipped (I3: not named again after
    /// a rollback).
    SkipPidfileWrites,
    /// SIGKILL to a process group is lost (I4: a stubborn old child outlives its
    /// generation's bound; I5: a dead child's jobs are orphaned).
    NoGroupKill,
    /// The pidfile is never removed (I6: it names a dead psflip).
    KeepPidfile,
    /// psflip exits with its code plus one (I7).
    WrongExitCode,
    /// The proxy never starts accepting (I8).
    NeverAccept,
    /// Ticks never reach the machine (a due deadline stays due: busy loop).
    DropTicks,
    /// Answers to control clients are lost (C).
    NoReplies,
    /// `ClaimControl` is never carried out (K: the service has no socket).
    NoControlClaim,
    /// The control socket's name is claimed as the first child is spawned,
    /// before it runs (K).
    ClaimBeforeChild,
}

pub struct World {
    /// The deliberate break in force, if any (see [`Mutation`]).
    pub mutation: Option<Mutation>,
    pub seed: u64,
    pub now: Instant,
    queue: BTreeMap<(Instant, u64), Ev>,
    seq: u64,
    next_pid: Pid,
    /// Running and zombie processes.
    pub procs: BTreeMap<Pid, Proc>,
    /// Reaped processes, kept for the checker.
    pub reaped: BTreeMap<Pid, Proc>,
    /// A `[[proxy]]` is configured: every generation's machine runs `with_proxy`.
    pub proxy: bool,
    /// The proxy's Unix socket files exist (created once, by the first generation).
    pub proxy_sockets: bool,
    /// `[[listen]]` sockets are configured (issue #12): every generation's machine
    /// runs `with_listen`.
    pub listen: bool,
    /// Their Unix socket files exist (created once, by the first generation).
    pub listen_sockets: bool,
    /// The generation whose control socket the service's name leads to, if a
    /// socket file has the name (its holder may have died: a stale socket).
    pub control_name: Option<Pid>,
    /// Control clients so far, by id.
    pub clients: BTreeMap<ClientId, Client>,
    control_rng: Rng,
    /// Bursts of concurrent control clients, and when vanishing clients go.
    clients_rng: Rng,
    /// (`[healthcheck.notify]`) when app children send READY=1.
    notify_rng: Rng,
    /// Every generation, dead ones included (their ghost state).
    pub gens: BTreeMap<Pid, Gen>,
    /// The shared pidfile: the pid it names.
    pub pidfile: Option<Pid>,
    pub faults: Faults,
    latency: Rng,
    work: Rng,
    pub first_settings: Settings,
    /// How long the chaos phase lasts.
    pub chaos: Duration,
    /// A termination signal armed to strike during the next upgrade.
    terminate_during_upgrade: Option<Signal>,
    pub healing: bool,
    pub trace: Vec<String>,
    /// Facts the last step produced, for the invariants.
    pub facts: Vec<Fact>,
    pub coverage: BTreeMap<Cover, u64>,
    /// Effects carried out so far (to tell a no-op `Tick` from progress).
    effects: u64,
    /// Things that may legitimately end the service happened (faults, operator
    /// termination).
    pub service_enders: u64,
    /// Background jobs orphaned because their psflip was SIGKILLed before it could
    /// kill their group: pdeathsig does not reach them (a known limit, not a bug).
    pub orphaned_jobs: BTreeSet<Pid>,
    /// New generations whose predecessor got a termination signal after handing
    /// the service over to them: the service was asked to stop, so they must not
    /// serve on (issue #9: whoever sent it took the old one for the service).
    pub stopped_after_handover: BTreeSet<Pid>,
}

/// A zombie is reaped within this (plus latency).
pub const REAP_BOUND: Duration = Duration::from_secs(1);

impl World {
    pub fn new(seed: u64) -> World {
        let mut master = Rng::new(seed);
        let mut settings_rng = master.fork();
        let mut fault_rng = master.fork();
        let latency = master.fork();
        let mut work = master.fork();
        let chaos = work.ms(5_000, 90_000);
        // Forked last, so that the streams above (and the seeds in
        // regressions.txt) are what they were before [[listen]] existed.
        let listen = master.fork().chance(0.3);
        // Forked last too: control clients and real-time signals.
        let control_rng = master.fork();
        // And last: bursts of control clients, and when vanishing ones go.
        let clients_rng = master.fork();
        // And last: `[healthcheck.notify]` for a quarter of the seeds.
        let mut notify_rng = master.fork();
        let swarm = Swarm::pick(&mut fault_rng);
        let mut first_settings = faults::settings(&mut settings_rng);
        if notify_rng.chance(0.25) {
            first_settings.health = Health::Notify;
        }
        let proxy = settings_rng.chance(0.3);
        World {
            mutation: None,
            seed,
            now: Instant::ZERO,
            queue: BTreeMap::new(),
            seq: 0,
            next_pid: INIT + 1,
            procs: BTreeMap::new(),
            reaped: BTreeMap::new(),
            proxy,
            proxy_sockets: proxy,
            listen,
            listen_sockets: listen,
            control_name: None,
            clients: BTreeMap::new(),
            control_rng,
            clients_rng,
            notify_rng,
            gens: BTreeMap::new(),
            pidfile: None,
            faults: Faults::new(swarm, fault_rng),
            latency,
            work,
            first_settings,
            chaos,
            terminate_during_upgrade: None,
            healing: false,
            trace: Vec::new(),
            facts: Vec::new(),
            coverage: BTreeMap::new(),
            effects: 0,
            service_enders: 0,
            orphaned_jobs: BTreeSet::new(),
            stopped_after_handover: BTreeSet::new(),
        }
    }

    // ---------------------------------------------------------------- clock & queue

    fn schedule(&mut self, at: Instant, ev: Ev) {
        self.seq += 1;
        self.queue.insert((at.max(self.now), self.seq), ev);
    }

    fn lat(&mut self) -> Duration {
        let max = self.faults.swarm.max_latency;
        self.latency.upto(max)
    }

    fn after_latency(&mut self, ev: Ev) {
        let at = self.now + self.lat();
        self.schedule(at, ev);
    }

    /// `from` (named `me`) sends `signal` to `target`, to its group when
    /// `group`: the trace line `me: kill(<what><target>, <signal>)`, and the
    /// delivery after a latency.
    fn kill_logged(
        &mut self,
        (me, from): (&str, Pid),
        what: &str,
        target: Pid,
        group: bool,
        signal: Signal,
    ) {
        let line = format!(
            "{me}: kill({what}{}, {})",
            self.name(target),
            signal.as_str()
        );
        self.log(line);
        self.after_latency(Ev::Deliver {
            target,
            group,
            signal,
            from: Some(from),
        });
    }

    pub fn next_time(&self) -> Option<Instant> {
        self.queue.first_key_value().map(|((t, _), _)| *t)
    }

    pub fn log(&mut self, line: impl AsRef<str>) {
        let mut s = String::with_capacity(64);
        let t = self.now.since_origin();
        let _ = write!(
            s,
            "[{:>4}.{:03}s] {}",
            t.as_secs(),
            t.subsec_millis(),
            line.as_ref()
        );
        self.trace.push(s);
    }

    pub fn cover(&mut self, what: Cover) {
        *self.coverage.entry(what).or_default() += 1;
    }

    /// A process as the trace shows it. (Called while a generation is out of
    /// `gens` for its drive, hence the fallbacks.)
    fn name(&self, pid: Pid) -> String {
        let gen_no = |g: Pid| {
            self.gens
                .get(&g)
                .map_or(format!("[{g}]"), |g| format!("g{}", g.ghost.number))
        };
        match self.proc(pid).map(|p| &p.kind) {
            Some(Kind::Psflip) => match self.gens.get(&pid) {
                Some(g) => format!("g{}[{pid}]", g.ghost.number),
                None => format!("psflip[{pid}]"),
            },
            Some(Kind::App { owner, .. }) => format!("app[{pid}] of {}", gen_no(*owner)),
            Some(Kind::Probe { owner }) => format!("probe[{pid}] of {}", gen_no(*owner)),
            Some(Kind::Job { leader }) => format!("job[{pid}] of app[{leader}]"),
            Some(Kind::Daemon { leader, .. }) => format!("daemon[{pid}] of app[{leader}]"),
            None => format!("[{pid}]"),
        }
    }

    // ---------------------------------------------------------------- kernel

    pub fn proc(&self, pid: Pid) -> Option<&Proc> {
        self.procs.get(&pid).or_else(|| self.reaped.get(&pid))
    }

    pub fn running(&self, pid: Pid) -> bool {
        self.procs
            .get(&pid)
            .is_some_and(|p| p.life == Life::Running)
    }

    fn fork(&mut self, ppid: Pid, kind: Kind, pgid: Option<Pid>, pdeathsig: bool) -> Pid {
        let pid = self.next_pid;
        self.next_pid += 1;
        self.procs.insert(
            pid,
            Proc {
                pid,
                ppid,
                pgid: pgid.unwrap_or(pid),
                kind,
                life: Life::Running,
                status: None,
                pdeathsig,
                born_at: self.now,
                died_at: None,
            },
        );
        pid
    }

    /// A running process ends: it becomes a zombie, its children are reparented to
    /// init (those with pdeathsig die first), its parent gets SIGCHLD.
    pub fn exit_proc(&mut self, pid: Pid, status: ExitStatus) {
        let Some(p) = self.procs.get_mut(&pid) else {
            return;
        };
        if p.life != Life::Running {
            return;
        }
        p.life = Life::Zombie;
        p.status = Some(status);
        p.died_at = Some(self.now);
        let ppid = p.ppid;
        let is_gen = matches!(p.kind, Kind::Psflip);
        let line = format!("kernel: {} exited ({status})", self.name(pid));
        self.log(line);

        if is_gen {
            self.generation_died(pid, status);
        }
        let children: Vec<Pid> = self
            .procs
            .values()
            .filter(|c| c.ppid == pid)
            .map(|c| c.pid)
            .collect();
        for c in children {
            if self.procs[&c].pdeathsig && self.procs[&c].life == Life::Running {
                self.log(format!("kernel: pdeathsig kills {}", self.name(c)));
                self.exit_proc(c, ExitStatus::Signaled(Signal::SIGKILL as i32));
            }
            // Every psflip is a child subreaper: orphans go to the nearest
            // running one above, else to init.
            let reaper = self.reaper_above(pid);
            let child = self.procs.get_mut(&c).expect("child exists");
            child.ppid = reaper;
            let zombie = child.life == Life::Zombie;
            // No psflip above: its generation was SIGKILLed (a fault) before
            // it could stop it. Orphaned for good, as jobs are then.
            if reaper == INIT
                && !zombie
                && matches!(child.kind, Kind::Daemon { .. } | Kind::Job { .. })
            {
                self.orphaned_jobs.insert(c);
            }
            if reaper != INIT {
                let line = format!(
                    "kernel: {} re-parented to {}",
                    self.name(c),
                    self.name(reaper)
                );
                self.log(line);
            }
            if zombie {
                self.notify_parent(reaper);
            }
        }
        self.notify_parent(ppid);
    }

    /// The nearest running psflip among the ancestors of `pid` (excluded), or init.
    fn reaper_above(&self, pid: Pid) -> Pid {
        let mut cur = self.procs.get(&pid).map_or(INIT, |p| p.ppid);
        while cur != INIT {
            let Some(p) = self.procs.get(&cur) else {
                return INIT;
            };
            if p.life == Life::Running && matches!(p.kind, Kind::Psflip) {
                return cur;
            }
            cur = p.ppid;
        }
        INIT
    }

    fn notify_parent(&mut self, ppid: Pid) {
        if ppid == INIT {
            self.after_latency(Ev::InitReap);
        } else if self.running(ppid)
            && let Some(g) = self.gens.get_mut(&ppid)
        {
            g.rt.pending.insert(Signal::SIGCHLD as i32);
            self.after_latency(Ev::Wake(ppid));
        }
    }

    /// A psflip process is gone: its successors lose their pipe to it, the jobs of
    /// its child may now be orphans for good.
    fn generation_died(&mut self, pid: Pid, status: ExitStatus) {
        let successors: Vec<Pid> = self
            .gens
            .iter()
            .filter(|(_, g)| g.rt.predecessor.is_some_and(|(p, _)| p == pid))
            .map(|(s, _)| *s)
            .collect();
        for s in successors {
            if self.running(s) {
                self.gens
                    .get_mut(&s)
                    .expect("a generation")
                    .rt
                    .predecessor_gone = true;
                self.after_latency(Ev::Wake(s));
            }
        }
        let this = self.gens.get_mut(&pid).expect("a generation");
        if this.ghost.end.is_none() {
            this.ghost.end = Some(match status {
                ExitStatus::Code(2) if !this.rt.booted => End::BadConfig,
                ExitStatus::Code(c) => End::Exited(c),
                ExitStatus::Signaled(s) => End::Signaled(s),
            });
        }
        // A child whose exit psflip never got to handle leaves its group unkilled:
        // pdeathsig kills the child, not its background jobs. Unavoidable when
        // psflip is SIGKILLed by someone else; psflip's own kills are not excused.
        if let Some((id, child)) = this.ghost.child
            && this.rt.pids.contains_key(&id)
            && this.ghost.end == Some(End::Crashed)
        {
            let jobs: Vec<Pid> = self
                .procs
                .values()
                .filter(|j| matches!(j.kind, Kind::Job { leader } if leader == child))
                .filter(|j| j.life == Life::Running)
                .map(|j| j.pid)
                .collect();
            self.orphaned_jobs.extend(jobs);
        }
    }

    fn reap(&mut self, pid: Pid) {
        if let Some(p) = self.procs.remove(&pid) {
            debug_assert_eq!(p.life, Life::Zombie);
            self.reaped.insert(pid, p);
        }
    }

    /// Deliver a signal to one process (not a group).
    /// `from`: the generation that sent it, as signalfd's `ssi_pid` tells.
    fn deliver(&mut self, pid: Pid, signal: Signal, from: Option<Pid>) {
        if !self.running(pid) {
            return;
        }
        if signal == Signal::SIGKILL {
            self.exit_proc(pid, ExitStatus::Signaled(Signal::SIGKILL as i32));
            return;
        }
        match self.procs[&pid].kind.clone() {
            Kind::Psflip => {
                let g = self.gens.get_mut(&pid).expect("a generation");
                // The signalfd: one pending instance per standard signal, with
                // the sender of the first; read in signal-number order.
                if g.rt.pending.insert(signal as i32)
                    && let Some(from) = from
                {
                    g.rt.senders.insert(signal as i32, from);
                }
                if g.rt.booted {
                    self.after_latency(Ev::Wake(pid));
                }
            }
            Kind::App { owner, behaviour } => {
                let stops_on = [
                    Signal::SIGTERM,
                    Signal::SIGINT,
                    Signal::SIGQUIT,
                    self.gens[&owner].settings().shutdown_signal,
                ];
                if behaviour.ignores_term || !stops_on.contains(&signal) {
                    self.log(format!("{} ignores {}", self.name(pid), signal.as_str()));
                    return;
                }
                let status = if behaviour.exit_code_on_signal {
                    ExitStatus::Code(128 + signal as i32)
                } else {
                    ExitStatus::Signaled(signal as i32)
                };
                let at = self.now + behaviour.stop_takes;
                self.schedule(
                    at,
                    Ev::SelfExit {
                        pid,
                        status,
                        fault: false,
                    },
                );
            }
            Kind::Probe { .. } | Kind::Job { .. } => {
                self.exit_proc(pid, ExitStatus::Signaled(signal as i32));
            }
            Kind::Daemon { stubborn: true, .. } => {
                self.log(format!("{} ignores {}", self.name(pid), signal.as_str()));
            }
            Kind::Daemon { .. } => {
                self.exit_proc(pid, ExitStatus::Signaled(signal as i32));
            }
        }
    }

    // ---------------------------------------------------------------- set-up

    /// Start the first generation, and plan the operator's actions over the chaos
    /// phase.
    pub fn start(&mut self) {
        let settings = self.first_settings.clone();
        let chaos = self.chaos;
        self.log(format!("seed {}: {:?}", self.seed, self.faults.swarm));
        self.log(format!(
            "settings: {settings:?}, proxy: {}, listen: {}",
            self.proxy, self.listen
        ));
        let plan = faults::operator_plan(&mut self.work, chaos, &settings);
        for (t, action) in plan.actions {
            self.schedule(Instant::from_origin(t), Ev::Operator(action));
        }
        for (t, action) in faults::control_plan(&mut self.control_rng, chaos) {
            self.schedule(Instant::from_origin(t), Ev::Operator(action));
        }
        for (t, action) in faults::client_burst(&mut self.clients_rng, chaos) {
            self.schedule(Instant::from_origin(t), Ev::Operator(action));
        }
        self.terminate_during_upgrade = plan.terminate_during_upgrade;
        let pid = self.fork(INIT, Kind::Psflip, None, false);
        self.gens.insert(
            pid,
            Gen::new(
                settings,
                (self.proxy, self.listen),
                1,
                SuccessorBehaviour::Normal,
            ),
        );
        self.schedule(Instant::ZERO, Ev::Boot(pid));
    }

    /// The heal phase: no more faults, no more operator actions; whatever was
    /// injected but has not struck yet is cancelled.
    pub fn heal(&mut self) {
        self.healing = true;
        self.faults.calm();
        self.terminate_during_upgrade = None;
        self.queue
            .retain(|_, ev| !matches!(ev, Ev::Operator(_) | Ev::SelfExit { fault: true, .. }));
        self.log("heal: faults off");
        // A successor hung before its event loop is only ever killed by the
        // generation that started it; if a fault killed that one, the operator
        // cleans up, as the service manager would.
        let stuck: Vec<Pid> = self
            .gens
            .iter()
            .filter(|(p, g)| {
                self.running(**p)
                    && g.ghost.behaviour == SuccessorBehaviour::Hangs
                    && g.ghost.parent.is_some_and(|pp| !self.running(pp))
            })
            .map(|(p, _)| *p)
            .collect();
        for p in stuck {
            self.send_signal(p, Signal::SIGKILL);
        }
    }

    /// The generation the operator (or `psflip upgrade`) addresses: the oldest live
    /// one that has not handed over, else the newest live one.
    pub fn service(&self) -> Option<Pid> {
        let live: Vec<Pid> = self
            .gens
            .keys()
            .copied()
            .filter(|p| self.running(*p))
            .collect();
        live.iter()
            .copied()
            .find(|p| !self.gens[p].ghost.handed_over)
            .or(live.last().copied())
    }

    pub fn live_gens(&self) -> Vec<Pid> {
        self.gens
            .keys()
            .copied()
            .filter(|p| self.running(*p))
            .collect()
    }

    /// The operator (the service manager, pid 1) sends a signal to a
    /// generation, now.
    pub fn send_signal(&mut self, pid: Pid, signal: Signal) {
        self.log(format!(
            "operator: {} -> {}",
            signal.as_str(),
            self.name(pid)
        ));
        self.deliver(pid, signal, Some(INIT));
    }

    // ---------------------------------------------------------------- stepping

    /// Let time pass to `t` with nothing happening (the queue has nothing before).
    pub fn advance_to(&mut self, t: Instant) {
        self.now = self.now.max(t);
        self.facts.clear();
    }

    /// Process the next scheduled event; false when nothing is left.
    pub fn step(&mut self) -> bool {
        let Some(((t, _), ev)) = self.queue.pop_first() else {
            return false;
        };
        self.now = t;
        self.facts.clear();
        self.handle(ev);
        if !self.healing {
            self.inject_step_faults();
        }
        true
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Wake(pid) => {
                if self.loop_runs(pid)
                    && let Some(code) = self.turn(pid)
                {
                    self.machine_exit(pid, code);
                }
            }
            Ev::SpuriousTick(pid) => {
                if self.loop_runs(pid) {
                    self.log(format!("fault: spurious tick to {}", self.name(pid)));
                    self.cover(Cover::SpuriousTick);
                    if let Some(code) = self.drive(pid, Event::Tick) {
                        self.machine_exit(pid, code);
                    } else {
                        self.arm_timer(pid);
                    }
                }
            }
            Ev::Boot(pid) => self.boot(pid),
            Ev::Drained(pid) => {
                if self.running(pid) {
                    let g = self.gens.get_mut(&pid).expect("a generation");
                    g.rt.drained = true;
                    g.ghost.connections_closed = true;
                    self.after_latency(Ev::Wake(pid));
                }
            }
            Ev::Deliver {
                target,
                group,
                signal,
                from,
            } => {
                if group {
                    let members: Vec<Pid> = self
                        .procs
                        .values()
                        .filter(|p| p.pgid == target && p.life == Life::Running)
                        .map(|p| p.pid)
                        .collect();
                    for m in members {
                        self.deliver(m, signal, from);
                    }
                } else {
                    self.deliver(target, signal, from);
                }
            }
            Ev::SelfExit { pid, status, fault } => {
                if self.running(pid) {
                    if fault {
                        self.service_enders += 1;
                        self.log(format!("fault: {} exits on its own", self.name(pid)));
                    }
                    self.exit_proc(pid, status);
                }
            }
            Ev::InitReap => {
                let zombies: Vec<Pid> = self
                    .procs
                    .values()
                    .filter(|p| p.ppid == INIT && p.life == Life::Zombie)
                    .map(|p| p.pid)
                    .collect();
                for z in zombies {
                    self.reap(z);
                }
            }
            Ev::Operator(action) => self.operate(action),
            Ev::Notify { pid, message } => self.child_notifies(pid, message),
            Ev::ClientGone(client) => {
                if let Some(c) = self.clients.get_mut(&client) {
                    c.vanished = true;
                    self.log(format!("operator: control client {} goes away", client.0));
                }
            }
        }
    }

    /// (`[healthcheck.notify]`) what the new app child `pid` will send: now
    /// and then a STATUS=, READY=1 within the upgrade timeout (sometimes too
    /// late, or never, in the chaos phase), and sometimes READY=1 right before
    /// an exit it is to make (`exits_after`).
    fn plan_notify(&mut self, pid: Pid, settings: &Settings, exits_after: Option<Duration>) {
        let timeout = settings.upgrade_timeout;
        let rng = &mut self.notify_rng;
        let status = rng.chance(0.3).then(|| rng.upto(timeout));
        let ready = if self.healing {
            Some(rng.upto(timeout / 2))
        } else if rng.chance(0.8) {
            Some(rng.upto(timeout + timeout / 4))
        } else {
            None
        };
        let at_exit = exits_after.filter(|_| rng.chance(0.5));
        // Never, or maybe too late: a fault that may end the service.
        if ready.is_none_or(|after| after >= timeout / 2) {
            self.service_enders += 1;
        }
        let now = self.now;
        if let Some(after) = status {
            let message = Message {
                ready: false,
                status: Some("warming up".into()),
            };
            self.schedule(now + after, Ev::Notify { pid, message });
        }
        // Scheduled before the exit, so at the same instant it comes first.
        for after in ready.into_iter().chain(at_exit) {
            let message = Message {
                ready: true,
                status: None,
            };
            self.schedule(now + after, Ev::Notify { pid, message });
        }
    }

    /// The app child `pid` sends `message` on its notify socket (if its
    /// generation still has it open).
    fn child_notifies(&mut self, pid: Pid, message: Message) {
        let Some(Kind::App { owner, .. }) = self.procs.get(&pid).map(|p| &p.kind) else {
            return;
        };
        let owner = *owner;
        if !self.running(pid) || !self.running(owner) {
            return;
        }
        let g = self.gens.get_mut(&owner).expect("a generation");
        let open =
            g.rt.child_notify
                .and_then(|id| g.rt.pids.get(&id))
                .is_some_and(|p| *p == pid);
        if !open {
            return;
        }
        g.rt.notified.push(message.clone());
        let line = format!("{} notifies: {message:?}", self.name(pid));
        self.log(line);
        self.after_latency(Ev::Wake(owner));
    }

    fn operate(&mut self, action: OperatorAction) {
        let live = self.live_gens();
        let Some(service) = self.service() else {
            return;
        };
        match action {
            OperatorAction::Upgrade { to_any } => {
                let target = if to_any {
                    self.work.pick(&live)
                } else {
                    service
                };
                let sig = self.gens[&target].settings().upgrade_signal;
                self.send_signal(target, sig);
            }
            OperatorAction::Terminate(sig) => {
                self.service_enders += 1;
                self.send_signal(service, sig);
            }
            OperatorAction::Other(sig) => {
                self.service_enders += 1;
                self.send_signal(service, sig);
            }
            OperatorAction::Control { upgrade, vanishes } => {
                let client = ClientId(self.clients.len() as u64 + 1);
                let request = if upgrade {
                    Request::Upgrade
                } else {
                    Request::Status
                };
                self.log(format!(
                    "operator: control client {} asks {} for {request:?}{}",
                    client.0,
                    self.name(service),
                    if vanishes { " and goes away" } else { "" }
                ));
                self.clients.insert(
                    client,
                    Client {
                        gpid: service,
                        request,
                        vanished: false,
                        delivered: false,
                        answers: Vec::new(),
                    },
                );
                if vanishes {
                    // Before its request is read, or while it waits for the answer.
                    let max = self.faults.swarm.max_latency * 3 + Duration::from_millis(1);
                    let at = self.now + self.clients_rng.upto(max);
                    self.schedule(at, Ev::ClientGone(client));
                }
                let g = self.gens.get_mut(&service).expect("a generation");
                g.rt.connecting.push_back(client);
                self.after_latency(Ev::Wake(service));
            }
            OperatorAction::Realtime(signo) => {
                self.log(format!(
                    "operator: signal {signo} -> {}",
                    self.name(service)
                ));
                let g = self.gens.get_mut(&service).expect("a generation");
                g.rt.pending.insert(signo);
                self.after_latency(Ev::Wake(service));
            }
        }
    }

    fn inject_step_faults(&mut self) {
        let live = self.live_gens();
        if live.is_empty() {
            return;
        }
        if self.faults.crash_now() {
            let victim = self.faults.rng().pick(&live);
            self.service_enders += 1;
            self.log(format!("fault: SIGKILL {}", self.name(victim)));
            self.gens.get_mut(&victim).expect("a generation").ghost.end = Some(End::Crashed);
            self.exit_proc(victim, ExitStatus::Signaled(Signal::SIGKILL as i32));
        }
        if self.faults.spurious_tick_now() {
            let target = self.faults.rng().pick(&live);
            self.after_latency(Ev::SpuriousTick(target));
        }
        if let Some(sig) = self.terminate_during_upgrade
            && let Some(old) = live
                .iter()
                .copied()
                .find(|p| self.gens[p].ghost.in_flight.is_some())
        {
            self.terminate_during_upgrade = None;
            self.service_enders += 1;
            let at = self.now + self.work.upto(Duration::from_secs(2));
            self.log(format!(
                "operator: will send {} to {} mid-upgrade",
                sig.as_str(),
                self.name(old)
            ));
            // Scheduled as a delivery: the operator's kill() is already on its way.
            self.schedule(
                at,
                Ev::Deliver {
                    target: old,
                    group: false,
                    signal: sig,
                    from: Some(INIT),
                },
            );
        }
    }

    // ---------------------------------------------------------------- generations

    /// The generation's event loop runs: alive, booted, machine not done.
    fn loop_runs(&self, pid: Pid) -> bool {
        self.running(pid)
            && self
                .gens
                .get(&pid)
                .is_some_and(|g| g.rt.booted && g.machine.phase() != Phase::Done)
    }

    fn boot(&mut self, pid: Pid) {
        if !self.running(pid) {
            return;
        }
        match self.gens[&pid].ghost.behaviour {
            SuccessorBehaviour::Normal => {
                self.gens.get_mut(&pid).expect("a generation").rt.booted = true;
                if let Some(code) = self.drive(pid, Event::Started) {
                    self.machine_exit(pid, code);
                    return;
                }
                self.arm_timer(pid);
                let g = &self.gens[&pid];
                if !g.rt.pending.is_empty() || g.rt.predecessor_gone || g.rt.drained {
                    self.after_latency(Ev::Wake(pid));
                }
            }
            SuccessorBehaviour::BadConfig => {
                self.log(format!(
                    "{}: invalid configuration; exiting 2",
                    self.name(pid)
                ));
                // As `main` does: the reason goes to the old generation first.
                self.say_failure(pid, "invalid configuration (simulated)".into());
                self.exit_proc(pid, ExitStatus::Code(2));
            }
            SuccessorBehaviour::Hangs => {
                self.log(format!("{}: hangs before its event loop", self.name(pid)));
            }
        }
    }

    /// The machine asked to exit: the process exits with that code.
    fn machine_exit(&mut self, pid: Pid, code: i32) {
        self.facts.push(Fact::Exited { gpid: pid, code });
        // As the real runtime's control listener does when dropped: the name
        // goes with its holder (not when it was SIGKILLed: a stale socket stays).
        if self.control_name == Some(pid) {
            self.control_name = None;
            self.log(format!("{}: control socket removed", self.name(pid)));
        }
        if let Some(g) = self.gens.get_mut(&pid) {
            g.ghost.exit_code = Some(code);
        }
        // What re-parented to it and still runs (not its successor).
        let escaped: Vec<Pid> = self
            .procs
            .values()
            .filter(|p| p.ppid == pid && p.life == Life::Running)
            .filter(|p| matches!(p.kind, Kind::Daemon { .. } | Kind::Job { .. }))
            .map(|p| p.pid)
            .collect();
        self.facts.push(Fact::EscapedAtExit { gpid: pid, escaped });
        let ghost = &self.gens[&pid].ghost;
        if ghost.stop_passed_at.is_some()
            && let Some(successor) = ghost.successor_pid
            && self.running(successor)
        {
            self.facts.push(Fact::ExitedBeforeNewGeneration {
                gpid: pid,
                successor,
            });
        }
        self.exit_proc(pid, ExitStatus::Code(code));
    }

    /// A successor writes why it gives up to its predecessor's readiness pipe.
    fn say_failure(&mut self, successor: Pid, reason: String) {
        if let Some(predecessor) = self.gens[&successor].rt.predecessor {
            self.tell_predecessor(predecessor, reason);
        }
    }

    /// Write `reason` to the readiness pipe of `pred`, which knows us as `id`.
    fn tell_predecessor(&mut self, (pred, id): (Pid, ProcId), reason: String) {
        if !self.running(pred) {
            return;
        }
        let p = self.gens.get_mut(&pred).expect("a generation");
        if p.rt.successor_pipe == Some(id) {
            p.rt.failure_said = Some(reason);
            self.after_latency(Ev::Wake(pred));
        }
    }

    /// Queue a wake-up at the machine's deadline, unless one is queued for it.
    fn arm_timer(&mut self, pid: Pid) {
        let g = self.gens.get_mut(&pid).expect("a generation");
        let Some(t) = g.machine.deadline() else {
            return;
        };
        if g.rt.timer_at == Some(t) {
            return;
        }
        g.rt.timer_at = Some(t);
        self.schedule(t, Ev::Wake(pid));
    }

    /// One turn of the generation's event loop: what its poll reports (the
    /// faults are there: a "ready" byte landing just after poll returned), then
    /// the real runtime's [`runtime::turn`] over the simulated [`SimSource`].
    fn turn(&mut self, pid: Pid) -> Option<i32> {
        let now = self.now;
        let g = self.gens.get_mut(&pid).expect("a generation");
        if g.rt.timer_at.is_some_and(|t| t <= now) {
            g.rt.timer_at = None;
        }
        let (ready, sig_ready) = self.poll(pid);
        let mut source = Psflip(SimSource {
            world: self,
            pid,
            reaping: false,
            exits: 0,
        });
        if let Some(code) = runtime::turn(&mut source, now, &ready, sig_ready) {
            return Some(code);
        }
        self.arm_timer(pid);
        let rt = &self.gens[&pid].rt;
        let notified = rt.child_notify.is_some() && !rt.notified.is_empty();
        let said = rt.successor_pipe.is_some() && rt.failure_said.is_some();
        let unread = rt.ready_byte || said || notified;
        if unread || !rt.connected.is_empty() || !rt.connecting.is_empty() {
            // Level-triggered: the next poll returns at once.
            self.after_latency(Ev::Wake(pid));
        }
        None
    }

    /// What the generation's poll reports: the fds that are ready, in the
    /// runtime's order (`PsflipFd`), and whether a signal is pending.
    fn poll(&mut self, pid: Pid) -> (Vec<PsflipFd>, bool) {
        let g = &self.gens[&pid];
        let rt = &g.rt;
        let successor_alive = rt
            .successor_pipe
            .and_then(|id| rt.pids.get(&id))
            .is_some_and(|p| self.running(*p));
        let pipe_readable = rt.successor_pipe.is_some()
            && (rt.ready_byte || rt.failure_said.is_some() || !successor_alive);
        let sig_ready = !rt.pending.is_empty();
        let mut ready = Vec::new();
        // The byte may land while the turn runs: then only the reaping (or the
        // next turn) reads it.
        let ready_byte = rt.ready_byte;
        if pipe_readable && !(ready_byte && sig_ready && self.faults.poll_misses_pipe()) {
            ready.push(PsflipFd::Successor);
        }
        let rt = &self.gens[&pid].rt;
        if rt.predecessor_gone && rt.predecessor.is_some() {
            ready.push(PsflipFd::Predecessor);
        }
        if rt.drained {
            ready.push(PsflipFd::Proxy);
        }
        // A datagram that lands while the turn runs is read when its sender's
        // exit is reported (or at the next turn).
        let notified = rt.child_notify.is_some() && !rt.notified.is_empty();
        if notified && !(sig_ready && self.notify_rng.chance(0.5)) {
            ready.push(PsflipFd::Notify);
        }
        let rt = &self.gens[&pid].rt;
        if !rt.connecting.is_empty() {
            ready.push(PsflipFd::Control);
        }
        ready.extend(rt.connected.keys().map(|c| PsflipFd::Client(*c)));
        (ready, sig_ready)
    }

    /// The running processes that re-parented to generation `gpid` (its
    /// children it did not start).
    pub fn adopted(&self, gpid: Pid) -> Vec<Pid> {
        let ids = &self.gens[&gpid].rt.ids;
        self.procs
            .values()
            .filter(|p| p.ppid == gpid && p.life == Life::Running && !ids.contains_key(&p.pid))
            .map(|p| p.pid)
            .collect()
    }

    /// Feed one event to a generation's machine through `runtime::drive`, with the
    /// bookkeeping the checker needs before and after.
    pub fn drive(&mut self, pid: Pid, event: Event) -> Option<i32> {
        let mut this = self.gens.remove(&pid).expect("a generation");
        let number = this.ghost.number;
        let now = self.now;
        self.log(format!("g{number}[{pid}] <- {event:?}"));

        let before = Snapshot::of(&this.machine);
        let forwarding = match event {
            Event::SignalReceived { signal, .. } => Some(signal),
            _ => None,
        };
        match &event {
            Event::SuccessorReady { id } => {
                // Ready from a successor it has itself SIGKILLed is no handover: that
                // successor is gone (a crash right after "ready" is, SPEC §5).
                let valid = this
                    .rt
                    .pids
                    .get(id)
                    .and_then(|s| self.gens.get(s))
                    .is_some_and(|s| {
                        s.ghost.ready_valid && s.ghost.end != Some(End::KilledByParent)
                    });
                this.ghost.ready_heard_valid |= valid && this.ghost.in_flight_ready(&this.rt, *id);
            }
            Event::ProcessExited { id, status } if this.ghost.is_child(*id) => {
                this.ghost.child_exit = Some((*status, this.ghost.healthy));
            }
            Event::SignalReceived { signal: sig, .. } if *sig == this.settings().upgrade_signal => {
                match before.phase {
                    Phase::Upgrading => self.cover(Cover::UpgradeIgnoredInFlight),
                    Phase::Booting | Phase::Starting
                        if this.ghost.generation == Generation::First =>
                    {
                        this.ghost.requested_early = true
                    }
                    _ => {}
                }
            }
            Event::SignalReceived {
                signal: sig @ (Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT),
                from: Sender::Other | Sender::Process(_),
            } => {
                this.ghost.terminating = true;
                if this.ghost.child_runs() {
                    this.ghost.stop_signal = Some(*sig);
                }
                if this.ghost.handed_over
                    && let Some(s) = this.ghost.successor_pid
                    && self.running(s)
                {
                    self.stopped_after_handover.insert(s);
                    this.ghost.stop_passed_at.get_or_insert(self.now);
                    self.cover(Cover::StopAfterHandover);
                }
            }
            Event::SignalReceived {
                signal: sig @ (Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT),
                from: Sender::Predecessor,
            } => {
                // The predecessor aborted the upgrade (or passed on a stop of the
                // service it got after the handover): whatever we reported, we may
                // stop our child now.
                this.ghost.terminating = true;
                if this.ghost.child_runs() {
                    this.ghost.stop_signal = Some(*sig);
                }
                this.ghost.protects_child = false;
                this.ghost.aborted = true;
            }
            _ => {}
        }

        if self.mutation == Some(Mutation::DropTicks) && event == Event::Tick {
            self.gens.insert(pid, this);
            return None;
        }
        let handed_over_before = this.ghost.handed_over;
        let in_flight_before = this.ghost.in_flight;
        self.observe(&mut this, &event);

        let mut reported = false;
        let code = {
            let Gen { machine, rt, ghost } = &mut this;
            let mut os = SimOs {
                world: self,
                pid,
                number,
                settings: machine.settings().clone(),
                rt,
                ghost,
                forwarding,
                reported: &mut reported,
            };
            let code = runtime::drive(machine, now, event, &mut os);
            match self.mutation {
                Some(Mutation::WrongExitCode) => code.map(|c| c + 1),
                _ => code,
            }
        };

        let after = Snapshot::of(&this.machine);
        self.after_drive(pid, &mut this, &before, &after, reported);
        self.after_facts(pid, &mut this, handed_over_before, in_flight_before, code);
        self.gens.insert(pid, this);
        if code.is_none() && reported && self.gens[&pid].ghost.dies_after_ready {
            self.log(format!(
                "fault: g{number}[{pid}] dies right after reporting ready"
            ));
            self.service_enders += 1;
            self.gens.get_mut(&pid).expect("a generation").ghost.end = Some(End::Crashed);
            self.exit_proc(pid, ExitStatus::Signaled(Signal::SIGKILL as i32));
        }
        code
    }

    fn after_drive(
        &mut self,
        pid: Pid,
        this: &mut Gen,
        before: &Snapshot,
        after: &Snapshot,
        reported: bool,
    ) {
        let pidfile = this.settings().pidfile;
        let ghost = &mut this.ghost;
        // The service: a first generation whose child proved healthy, or a
        // successor that reported ready (and was not aborted).
        let service = match ghost.generation {
            Generation::First => ghost.healthy,
            Generation::Successor => ghost.ready_reported,
        };
        if service && !ghost.aborted {
            ghost.protects_child = true;
        }
        if reported {
            let pidfile_ok = !pidfile || self.pidfile == Some(pid);
            ghost.ready_valid = ghost.healthy && ghost.child_runs() && pidfile_ok;
            self.facts.push(Fact::ReadyReported {
                gpid: pid,
                healthy: ghost.healthy,
                pidfile_ok,
            });
            if let Some(pred) = ghost.parent
                && self
                    .gens
                    .get(&pred)
                    .is_some_and(|p| p.ghost.end == Some(End::Crashed))
            {
                self.cover(Cover::OldKilledSuccessorTookOver);
            }
        }
        if before.phase == Phase::Starting && after.phase == Phase::Upgrading {
            self.cover(Cover::EarlyUpgradePerformed);
        }
    }

    /// What the world saw reach a generation, before its machine runs: the facts
    /// the oracles use instead of the machine's opinion (Firezone's
    /// `reference.rs`).
    fn observe(&mut self, this: &mut Gen, event: &Event) {
        let now = self.now;
        let health_within = self.health_within(this);
        let health = this.settings().health;
        let g = &mut this.ghost;
        let proving = g.child_runs() && !g.healthy && !g.health_over;
        match event {
            Event::Tick if proving => {
                let t0 = g.child_spawned_at.expect("a spawned child");
                if now >= t0 + health_within {
                    g.health_over = true;
                } else if let Health::Alive { timeout } = health
                    && now >= t0 + timeout
                {
                    g.healthy = true;
                }
            }
            // The child's own READY=1 reached its generation while it ran.
            Event::ChildNotified {
                id, ready: true, ..
            } if proving && g.is_child(*id) => {
                g.healthy = true;
            }
            Event::ProcessExited { id, status } if proving && status.success() => {
                let probe = this.rt.pids.get(id).and_then(|p| self.procs.get(p));
                if probe.is_some_and(|p| matches!(p.kind, Kind::Probe { .. })) {
                    g.healthy = true;
                }
            }
            Event::SignalReceived {
                signal: Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT,
                from,
            } => {
                if g.generation == Generation::Successor && !g.ready_reported {
                    g.health_over = true;
                }
                if g.in_flight.is_some() {
                    g.upgrade_aborted = true;
                }
                if g.handed_over && *from != Sender::Predecessor {
                    g.stopped_after_handover = true;
                }
            }
            Event::SuccessorReady { id }
                if g.in_flight_ready(&this.rt, *id)
                    && !g.killed_in_flight
                    && !g.upgrade_aborted =>
            {
                g.in_flight = None;
                g.handed_over = true;
            }
            Event::ProcessExited { id, .. } | Event::SpawnFailed { id, .. }
                if g.in_flight.is_some() && this.rt.pids.get(id) == g.in_flight.as_ref() =>
            {
                g.in_flight = None;
            }
            // The new generation died. Before the old child was touched (and with
            // no stop of the service since), the service is ours again.
            Event::ProcessExited { id, .. }
                if g.handed_over
                    && this.rt.pids.get(id) == g.successor_pid.as_ref()
                    && !g.stopped_child
                    && !g.stopped_after_handover
                    && g.child_runs() =>
            {
                g.handed_over = false;
            }
            _ => {}
        }
    }

    /// How long a generation's child has to prove healthy: its `upgrade.timeout`,
    /// bounded by its predecessor's (the old generation kills it after that).
    fn health_within(&self, this: &Gen) -> Duration {
        let own = this.settings().upgrade_timeout;
        match this.ghost.parent.and_then(|p| self.gens.get(&p)) {
            Some(parent) => own.min(parent.settings().upgrade_timeout),
            None => own,
        }
    }

    /// The facts of a handover or a rollback, and their coverage.
    fn after_facts(
        &mut self,
        pid: Pid,
        this: &mut Gen,
        handed_over_before: bool,
        in_flight_before: Option<Pid>,
        code: Option<i32>,
    ) {
        let ghost = &mut this.ghost;
        if handed_over_before && !ghost.handed_over {
            ghost.handover_at = None;
            self.cover(Cover::ServiceTakenBack);
        }
        if !handed_over_before && ghost.handed_over {
            ghost.handover_at = Some(self.now);
            self.cover(Cover::UpgradeDone);
            if ghost.child_exit.is_some() {
                self.cover(Cover::OldChildExitedSuccessorTookOver);
            }
        }
        let rolled_back =
            in_flight_before.is_some() && ghost.in_flight.is_none() && !ghost.handed_over;
        if rolled_back {
            let successor = ghost.successor_pid.take();
            if ghost.upgrade_aborted {
                self.cover(Cover::RollbackTermination);
            } else if code.is_none()
                && let Some(s) = successor
            {
                let cause = self.rollback_cause(s);
                self.cover(cause);
            }
            if code.is_none() {
                self.facts.push(Fact::RolledBack {
                    gpid: pid,
                    child_at_start: ghost.upgrade_child,
                    child_exit_unreported: ghost.child_runs(),
                });
            }
        }
    }

    /// Why the successor `s` failed, for the coverage counts.
    fn rollback_cause(&self, s: Pid) -> Cover {
        let Some(g) = self.gens.get(&s) else {
            return Cover::RollbackSpawnOrConfig;
        };
        match g.ghost.end {
            Some(End::Crashed) => Cover::RollbackSuccessorCrashed,
            Some(End::KilledByParent) => Cover::RollbackSuccessorHung,
            Some(End::BadConfig) => Cover::RollbackSpawnOrConfig,
            _ if g.ghost.child_spawn_failed => Cover::RollbackSpawnOrConfig,
            _ if g.ghost.pidfile_failed_starting => Cover::RollbackPidfile,
            _ if g.ghost.stopped_child => Cover::RollbackNewChildUnhealthy,
            _ if g.ghost.child_exit.is_some_and(|(_, healthy)| !healthy) => {
                Cover::RollbackNewChildExited
            }
            _ => Cover::RollbackOther,
        }
    }
}

/// The machine's phase before and after one `drive`: for coverage counts only,
/// never for an invariant.
#[derive(Clone, Debug)]
struct Snapshot {
    phase: Phase,
}

impl Snapshot {
    fn of(m: &Machine) -> Snapshot {
        Snapshot { phase: m.phase() }
    }
}

/// What one generation's event loop reads from the simulated kernel: the
/// [`Source`] the real [`runtime::turn`] (and its [`Psflip`] decoding) runs
/// over. Events go through [`World::drive`], so the checker sees each one.
/// A generation that died during the turn reads nothing more.
struct SimSource<'w> {
    world: &'w mut World,
    pid: Pid,
    /// Between `next_exited` and `reap`: its exit is being reported.
    reaping: bool,
    /// Exits reported since the last SIGCHLD was read.
    exits: u32,
}

impl SimSource<'_> {
    fn rt(&self) -> &GenRuntime {
        &self.world.gens[&self.pid].rt
    }

    fn rt_mut(&mut self) -> &mut GenRuntime {
        &mut self.world.gens.get_mut(&self.pid).expect("a generation").rt
    }

    fn alive(&self) -> bool {
        self.world.running(self.pid)
    }
}

impl Source for SimSource<'_> {
    fn feed(&mut self, now: Instant, event: Event) -> Option<i32> {
        if !self.alive() {
            return None;
        }
        let tick = event == Event::Tick;
        if matches!(event, Event::ProcessExited { .. }) {
            self.exits += 1;
            if self.exits == 2 {
                self.world.cover(Cover::CoalescedSigchld);
            }
        }
        let effects = self.world.effects;
        let code = self.world.drive(self.pid, event);
        // A due tick that does nothing and stays due would spin the real loop.
        if tick
            && code.is_none()
            && self.world.effects == effects
            && self.machine_deadline().is_some_and(|t| t <= now)
        {
            self.world.facts.push(Fact::BusyLoop { gpid: self.pid });
        }
        code
    }

    fn machine_deadline(&self) -> Option<Instant> {
        self.world.gens[&self.pid].machine.deadline()
    }

    fn sweeping(&self) -> bool {
        self.world.gens[&self.pid].machine.sweeping()
    }

    fn next_signal(&mut self) -> Option<(i32, u32, u32)> {
        if !self.alive() {
            return None;
        }
        // The signalfd: in signal-number order, with the first sender of each.
        let rt = self.rt_mut();
        let signo = rt.pending.pop_first()?;
        let from = rt.senders.remove(&signo).unwrap_or(0);
        if signo == Signal::SIGCHLD as i32 {
            self.exits = 0;
        }
        Some((signo, from, 0))
    }

    fn next_exited(&mut self) -> Option<(nix::unistd::Pid, ExitStatus)> {
        if !self.alive() {
            return None;
        }
        let w = &mut *self.world;
        let mut zombies: Vec<Pid> = w
            .procs
            .values()
            .filter(|p| p.ppid == self.pid && p.life == Life::Zombie)
            .map(|p| p.pid)
            .collect();
        w.faults.reaping_order(&mut zombies);
        let z = *zombies.first()?;
        let status = w.procs[&z].status.expect("a zombie has a status");
        self.reaping = true;
        Some((nix::unistd::Pid::from_raw(z as i32), status))
    }

    fn reap(&mut self, pid: nix::unistd::Pid) {
        self.reaping = false;
        let z = pid.as_raw() as Pid;
        self.world.reap(z);
        let rt = self.rt_mut();
        if let Some(id) = rt.ids.remove(&z) {
            rt.pids.remove(&id);
            if rt.successor_pipe == Some(id) {
                rt.successor_pipe = None;
                rt.ready_byte = false;
                rt.failure_said = None;
            }
            if rt.child_notify == Some(id) {
                rt.child_notify = None;
                rt.notified.clear();
            }
        }
    }

    fn id_of(&self, pid: nix::unistd::Pid) -> Option<ProcId> {
        self.rt().ids.get(&(pid.as_raw() as Pid)).copied()
    }

    fn adopted(&self) -> usize {
        self.world.adopted(self.pid).len()
    }

    fn predecessor_pid(&self) -> Option<u32> {
        self.rt().predecessor_pid
    }

    fn origin(&self, pid: u32, uid: u32) -> Origin {
        Origin {
            pid,
            uid,
            manager: pid == INIT,
        }
    }

    fn successor_pipe(&self) -> Option<ProcId> {
        self.rt().successor_pipe
    }

    fn hear_successor(&mut self) -> Heard {
        let reaping = self.reaping;
        let rt = self.rt();
        // The write end closes with the successor.
        let closed = rt
            .successor_pipe
            .and_then(|id| rt.pids.get(&id))
            .is_none_or(|p| !self.world.running(*p));
        let rt = self.rt_mut();
        let heard = Heard {
            ready: std::mem::take(&mut rt.ready_byte),
            failure: rt.failure_said.take(),
            closed,
        };
        if closed {
            rt.successor_pipe = None;
        }
        if heard.failure.is_some() {
            self.world.cover(Cover::SuccessorSaidWhy);
        }
        if heard.ready && reaping {
            self.world.cover(Cover::ReadyReadWhileReaping);
        }
        heard
    }

    fn child_notify(&self) -> Option<ProcId> {
        self.rt().child_notify
    }

    fn hear_child(&mut self) -> Vec<Message> {
        let messages = std::mem::take(&mut self.rt_mut().notified);
        if self.reaping && messages.iter().any(|m| m.ready) {
            self.world.cover(Cover::NotifyReadWhileReaping);
        }
        messages
    }

    fn accept_control(&mut self, _now: Instant) {
        while let Some(client) = self.rt_mut().connecting.pop_front() {
            let request = self.world.clients[&client].request;
            self.rt_mut().connected.insert(client, request);
        }
    }

    fn receive(&mut self, client: ClientId) -> Option<(Request, Option<Origin>)> {
        let request = self.rt_mut().connected.remove(&client)?;
        let w = &mut *self.world;
        if w.clients[&client].vanished {
            // It closed before its request was read: end of file, no request.
            w.cover(Cover::ClientGoneBeforeRead);
            return None;
        }
        // Another client of this generation still waits for its answer.
        let waiting = w.clients.iter().any(|(id, c)| {
            *id != client && c.gpid == self.pid && c.delivered && c.answers.is_empty()
        });
        if waiting {
            w.cover(Cover::ConcurrentClients);
        }
        w.clients.get_mut(&client).expect("a client").delivered = true;
        Some((request, None))
    }

    fn predecessor_closed(&mut self) {
        let rt = self.rt_mut();
        rt.predecessor = None;
        rt.predecessor_gone = false;
    }

    fn proxy_drained(&mut self) -> bool {
        let drained = std::mem::take(&mut self.rt_mut().drained);
        if drained {
            self.world.cover(Cover::ProxyDrained);
        }
        drained
    }
}

/// The simulated OS one generation's effects go through.
struct SimOs<'w> {
    world: &'w mut World,
    pid: Pid,
    number: u64,
    settings: Settings,
    rt: &'w mut GenRuntime,
    ghost: &'w mut Ghost,
    /// The signal being handled, if the event is `SignalReceived`: sending the same
    /// one to the child is a forward.
    forwarding: Option<Signal>,
    reported: &'w mut bool,
}

impl SimOs<'_> {
    fn me(&self) -> String {
        format!("g{}[{}]", self.number, self.pid)
    }
}

impl Os for SimOs<'_> {
    fn spawn(&mut self, id: ProcId, role: Role) -> Result<(), String> {
        let me = self.me();
        let w = &mut *self.world;
        w.effects += 1;
        if w.faults.spawn_fails(role) {
            w.log(format!("{}: spawn {role:?} {id} fails (injected)", me));
            w.service_enders += 1;
            match role {
                Role::App => self.ghost.child_spawn_failed = true,
                Role::Successor => {
                    // The machine rolls back within this same drive.
                    self.ghost.protects_child = true;
                    self.ghost.successor_pid = None;
                    w.cover(Cover::RollbackSpawnOrConfig);
                    w.facts.push(Fact::RolledBack {
                        gpid: self.pid,
                        child_at_start: self.ghost.child.map(|(_, p)| p),
                        child_exit_unreported: self.ghost.child_runs(),
                    });
                }
                Role::Probe { .. } => {}
            }
            return Err(format!("cannot start {role:?}: injected failure"));
        }
        if role == Role::App && w.mutation == Some(Mutation::ClaimBeforeChild) {
            self.claim_control();
        }
        let w = &mut *self.world;
        let pid = match role {
            Role::App => {
                let behaviour = w.faults.app(&self.settings);
                let jobs = behaviour.jobs;
                let behaviour_ignores_term = behaviour.ignores_term;
                let exits = behaviour.exits_after;
                let pid = w.fork(
                    self.pid,
                    Kind::App {
                        owner: self.pid,
                        behaviour,
                    },
                    None,
                    true,
                );
                // A shell with two background jobs `setsid`s the second: a
                // daemon (no draw of its own, so every seed keeps its schedule).
                for j in 0..jobs {
                    if j == 1 {
                        let kind = Kind::Daemon {
                            leader: pid,
                            owner: self.pid,
                            stubborn: behaviour_ignores_term,
                        };
                        w.fork(pid, kind, None, false);
                    } else {
                        w.fork(pid, Kind::Job { leader: pid }, Some(pid), false);
                    }
                }
                if self.settings.health == Health::Notify {
                    self.rt.child_notify = Some(id);
                    self.rt.notified.clear();
                    w.plan_notify(pid, &self.settings, exits.map(|(after, _)| after));
                }
                if let Some((after, status)) = exits {
                    w.schedule(
                        w.now + after,
                        Ev::SelfExit {
                            pid,
                            status,
                            fault: true,
                        },
                    );
                }
                self.ghost.child = Some((id, pid));
                self.ghost.child_spawned_at = Some(w.now);
                pid
            }
            Role::Probe { .. } => {
                let (outcome, faulty) = w.faults.probe(&self.settings);
                if faulty {
                    w.service_enders += 1;
                }
                let pid = w.fork(self.pid, Kind::Probe { owner: self.pid }, None, true);
                if w.mutation == Some(Mutation::DoubleProbe) {
                    w.fork(self.pid, Kind::Probe { owner: self.pid }, None, true);
                }
                if let ProbeOutcome::Exits { after, code } = outcome {
                    w.schedule(
                        w.now + after,
                        Ev::SelfExit {
                            pid,
                            status: ExitStatus::Code(code),
                            fault: false,
                        },
                    );
                }
                pid
            }
            Role::Successor => {
                let behaviour = w.faults.successor();
                let settings = w.faults.successor_settings(&self.settings);
                // psflip's own binary keeps our process group, and no pdeathsig.
                let pgid = w.procs[&self.pid].pgid;
                let pid = w.fork(self.pid, Kind::Psflip, Some(pgid), false);
                let mut this = Gen::new(settings, (w.proxy, w.listen), self.number + 1, behaviour);
                // As the real runtime does (PSFLIP_UPGRADE_TIMEOUT_MS).
                this.machine = this
                    .machine
                    .with_predecessor_timeout(self.settings.upgrade_timeout);
                this.rt.predecessor = Some((self.pid, id));
                this.rt.predecessor_pid = Some(self.pid);
                this.ghost.parent = Some(self.pid);
                this.ghost.dies_after_ready = w.faults.ready_then_dies();
                w.gens.insert(pid, this);
                let at = w.now + w.faults.boot_takes();
                w.schedule(at, Ev::Boot(pid));
                self.rt.successor_pipe = Some(id);
                self.rt.successors.insert(id, pid);
                self.rt.ready_byte = false;
                self.ghost.protects_child = true;
                self.ghost.successor_pid = Some(pid);
                self.ghost.in_flight = Some(pid);
                self.ghost.killed_in_flight = false;
                self.ghost.upgrade_aborted = false;
                self.ghost.upgrade_child = self.ghost.child.map(|(_, p)| p);
                pid
            }
        };
        self.rt.pids.insert(id, pid);
        self.rt.ids.insert(pid, id);
        let line = format!("{}: spawned {role:?} {id} as {}", me, w.name(pid));
        w.log(line);
        if w.mutation == Some(Mutation::StopChildAtUpgrade)
            && role == Role::Successor
            && let Some((child, _)) = self.ghost.child
        {
            let signal = self.settings.shutdown_signal;
            self.signal(child, signal, false);
        }
        Ok(())
    }

    fn signal(&mut self, id: ProcId, signal: Signal, group: bool) {
        let Some(&target) = self.rt.pids.get(&id) else {
            return;
        };
        let me = self.me();
        let w = &mut *self.world;
        w.effects += 1;
        if group && signal == Signal::SIGKILL && w.mutation == Some(Mutation::NoGroupKill) {
            return;
        }
        let forwarded = !group && self.forwarding == Some(signal);
        let is_child = self.ghost.child.is_some_and(|(c, _)| c == id);
        if signal == Signal::SIGKILL && self.ghost.in_flight == Some(target) {
            self.ghost.killed_in_flight = true;
        }
        let target_runs = w.running(target);
        // The child's exit not yet delivered to this generation (it runs, or is
        // a zombie its generation has not been told of): a stop, as far as
        // psflip can know.
        if is_child
            && !forwarded
            && self.ghost.child_runs()
            && (signal == Signal::SIGKILL || signal == self.settings.shutdown_signal)
        {
            self.ghost.stopped_child = true;
            if !target_runs {
                w.cover(Cover::StopRacedChildExit);
            }
            w.facts.push(Fact::ChildStopped {
                gpid: self.pid,
                child: target,
                signal,
                protected: self.ghost.protects_child,
                ready_heard: self.ghost.ready_heard_valid,
            });
            if signal == Signal::SIGKILL && self.ghost.ready_heard_valid {
                w.cover(Cover::SigkillAfterGrace);
            }
        }
        if signal == Signal::SIGKILL
            && target_runs
            && let Some(s) = w.gens.get_mut(&target)
            && s.ghost.end.is_none()
        {
            s.ghost.end = Some(End::KilledByParent);
        }
        let what = if group { "group " } else { "" };
        w.kill_logged((&me, self.pid), what, target, group, signal);
    }

    fn signal_escaped(&mut self, signal: Signal) -> usize {
        let me = self.me();
        let w = &mut *self.world;
        w.effects += 1;
        let adopted: Vec<Pid> = w
            .procs
            .values()
            .filter(|p| p.ppid == self.pid && p.life == Life::Running)
            .filter(|p| !self.rt.ids.contains_key(&p.pid))
            .map(|p| p.pid)
            .collect();
        for &target in &adopted {
            // Which generation's child started it, and whether that generation
            // still runs: the checker's, never the machine's, knowledge.
            let origin = match w.procs[&target].kind {
                Kind::Daemon { owner, .. } => Some(owner),
                Kind::Job { leader } => w.proc(leader).and_then(|l| match l.kind {
                    Kind::App { owner, .. } => Some(owner),
                    _ => None,
                }),
                Kind::App { owner, .. } | Kind::Probe { owner } => Some(owner),
                Kind::Psflip => Some(target),
            };
            w.facts.push(Fact::EscapedSignalled {
                gpid: self.pid,
                target,
                origin_running: origin.is_some_and(|o| o != self.pid && w.running(o)),
            });
            let group = signal == Signal::SIGKILL && w.procs[&target].pgid == target;
            w.kill_logged((&me, self.pid), "escaped ", target, group, signal);
        }
        if !adopted.is_empty() {
            w.cover(Cover::EscapedStopped);
        }
        adopted.len()
    }

    fn write_pidfile(&mut self) -> Result<(), String> {
        let me = self.me();
        let w = &mut *self.world;
        w.effects += 1;
        if !self.settings.pidfile || w.mutation == Some(Mutation::SkipPidfileWrites) {
            return Ok(());
        }
        if w.faults.pidfile_write_fails() {
            self.ghost.last_pidfile_write_failed = true;
            if self.ghost.generation == Generation::Successor && !self.ghost.protects_child {
                self.ghost.pidfile_failed_starting = true;
            }
            w.log(format!("{}: pidfile write fails (injected)", me));
            return Err("No space left on device (injected)".into());
        }
        self.ghost.last_pidfile_write_failed = false;
        w.pidfile = Some(self.pid);
        w.log(format!("{}: pidfile <- {}", me, self.pid));
        Ok(())
    }

    fn remove_pidfile(&mut self, exited_successor: Option<ProcId>) {
        let me = self.me();
        let w = &mut *self.world;
        w.effects += 1;
        if w.mutation == Some(Mutation::KeepPidfile) {
            return;
        }
        // Ours, or the exited successor's the machine names (an aborted upgrade
        // whose successor had just written it).
        let stale_successor = exited_successor
            .and_then(|id| self.rt.successors.get(&id))
            .is_some_and(|s| w.pidfile == Some(*s));
        if w.pidfile == Some(self.pid) || stale_successor {
            w.pidfile = None;
            w.log(format!("{}: pidfile removed", me));
        }
    }

    fn reply(&mut self, client: ClientId, reply: Reply) {
        let me = self.me();
        let w = &mut *self.world;
        w.effects += 1;
        if w.mutation == Some(Mutation::NoReplies) {
            return;
        }
        // An `Upgraded` answer must come with a handover the world saw.
        let upgraded = matches!(reply, Reply::Upgraded { .. });
        w.facts.push(Fact::Replied {
            gpid: self.pid,
            client,
            upgraded,
            handed_over: self.ghost.handed_over,
        });
        let Some(c) = w.clients.get_mut(&client) else {
            return;
        };
        c.answers.push(reply.clone());
        let dropped = if c.vanished { " (gone: dropped)" } else { "" };
        w.cover(match reply {
            Reply::Upgraded { .. } => Cover::ControlUpgraded,
            Reply::Status(_) => Cover::ControlStatus,
            Reply::UpgradeFailed(_) | Reply::UpgradeRefused(_) => Cover::ControlUpgradeFailed,
        });
        w.log(format!(
            "{me}: answers client {}: {reply:?}{dropped}",
            client.0
        ));
    }

    fn signal_realtime(&mut self, id: ProcId, signo: i32) {
        let me = self.me();
        let w = &mut *self.world;
        w.effects += 1;
        w.facts.push(Fact::RealtimeForwarded {
            gpid: self.pid,
            to_child: self.ghost.is_child(id) && self.ghost.child_runs(),
        });
        w.log(format!("{me}: signal {signo} -> {id}"));
        w.cover(Cover::RealtimeForwarded);
    }

    fn report_failure(&mut self, reason: &str) {
        self.world.effects += 1;
        let me = self.me();
        self.world.log(format!("{me}: gives up: {reason}"));
        if let Some(predecessor) = self.rt.predecessor {
            self.world.tell_predecessor(predecessor, reason.to_owned());
        }
    }

    fn claim_control(&mut self) {
        let me = self.me();
        let w = &mut *self.world;
        w.effects += 1;
        if w.mutation == Some(Mutation::NoControlClaim) {
            return;
        }
        w.facts.push(Fact::ControlClaimed {
            gpid: self.pid,
            first: self.ghost.generation == Generation::First,
            child_started: self.ghost.child.is_some(),
        });
        if w.control_name != Some(self.pid) {
            w.control_name = Some(self.pid);
            w.log(format!("{me}: control socket name <- {}", self.pid));
        }
    }

    fn report_ready(&mut self) {
        self.world.effects += 1;
        self.world.facts.push(Fact::ReadyWritten {
            gpid: self.pid,
            control_name: self.world.control_name,
        });
        *self.reported = true;
        self.ghost.ready_reported = true;
        let Some((pred, _)) = self.rt.predecessor else {
            // The runtime dropped the pipe once the predecessor was gone.
            return;
        };
        let me = self.me();
        let w = &mut *self.world;
        if w.running(pred) {
            let p = w.gens.get_mut(&pred).expect("a generation");
            p.rt.ready_byte = true;
            let number = p.ghost.number;
            w.log(format!("{me}: ready -> g{number}[{pred}]"));
            w.after_latency(Ev::Wake(pred));
        } else {
            w.log(format!(
                "{}: cannot report ready: EPIPE; carrying on as the service",
                me
            ));
        }
    }

    fn proxy_accept(&mut self) {
        let me = self.me();
        let w = &mut *self.world;
        w.effects += 1;
        if w.mutation == Some(Mutation::NeverAccept) {
            return;
        }
        self.rt.accepting = true;
        // Accepting again (the service was taken back): no drain is awaited.
        self.ghost.stopped_accepting_at = None;
        w.log(format!("{me}: proxy accepts"));
    }

    fn proxy_stop_accepting(&mut self) {
        let me = self.me();
        let w = &mut *self.world;
        w.effects += 1;
        self.rt.accepting = false;
        self.ghost.stopped_accepting_at = Some(w.now);
        w.facts.push(Fact::ProxyStoppedAccepting { gpid: self.pid });
        w.cover(Cover::ProxyHandover);
        match w.faults.drain_takes(&self.settings) {
            Some(after) => {
                w.log(format!(
                    "{me}: proxy stops accepting; its connections close in {after:?}"
                ));
                let at = w.now + after;
                w.schedule(at, Ev::Drained(self.pid));
            }
            None => w.log(format!(
                "{me}: proxy stops accepting; its connections stay open"
            )),
        }
    }

    fn remove_proxy_sockets(&mut self) {
        let me = self.me();
        let w = &mut *self.world;
        w.effects += 1;
        w.proxy_sockets = false;
        w.listen_sockets = false;
        w.facts.push(Fact::ProxySocketsRemoved { gpid: self.pid });
        w.log(format!("{me}: proxy socket files removed"));
    }

    fn log(&mut self, line: &str) {
        self.world.effects += 1;
        let l = format!("{}: {line}", self.me());
        self.world.log(l);
    }
}
