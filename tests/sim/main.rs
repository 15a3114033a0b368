//! Deterministic simulation of psflip (TigerBeetle VOPR style).
//!
//! Each seed builds a [`world::World`]: a simulated kernel running psflip
//! generations (the real `Machine` through the real `runtime::turn` and
//! `runtime::drive`), their app children, probes and successors, under a
//! seed-chosen fault regime. A run is:
//!
//! 1. the chaos phase: operator actions and faults, every invariant checked after
//!    every step (safety);
//! 2. the heal phase: faults off, time to settle, then one final upgrade that must
//!    succeed, leaving one psflip and its child — or, if the service legitimately
//!    ended, nothing at all (liveness);
//! 3. a panic, a busy loop or a run that never settles is a crash.
//!
//! Modules: `world` (clock, queue, kernel, generations), `faults` (the swarm fault
//! regime and the operator), `invariants` (one function per property of SPEC §5,
//! plus the `sometimes` outcomes), `machine_props` (proptest on the machine alone),
//! `readiness_props` (proptest on notify/docker readiness and `[[listen]]` files),
//! `rng` (splitmix64).
//!
//! Tests: `seeds_hold_every_invariant` and `seeds_cover_every_outcome` share one
//! batch of seeds (run once, on every core); `same_seed_same_trace`; `regressions`
//! (the seeds of `regressions.txt`); `replay`.
//!
//! Environment:
//! - `PSFLIP_SIM_SEED=<n>`: run exactly seed n, with its full trace printed
//!   (`PSFLIP_SIM_SEED=<n> cargo test --test sim -- --nocapture replay`);
//! - `PSFLIP_SIM_SEEDS=<count>` (default 10000) and `PSFLIP_SIM_START=<n>`
//!   (default 0): which seeds the default run covers.

mod faults;
mod invariants;
mod machine_props;
#[path = "../common/props.rs"]
mod props;
mod readiness_props;
mod rng;
mod world;

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;
use std::time::Duration;

use psflip::machine::{Instant, SUCCESSOR_GRACE};

use invariants::{Cover, Violation};
use world::{Mutation, World};

const DEFAULT_SEEDS: u64 = 10_000;
const DEFAULT_START: u64 = 0;
/// A run taking more steps than this does not settle: a crash.
const MAX_STEPS: u64 = 300_000;
/// Violations kept per run (the first ones; a broken run repeats itself).
const MAX_VIOLATIONS: usize = 200;
const TRACE_TAIL: usize = 60;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// An invariant was violated.
    Safety,
    /// The heal phase did not converge.
    Liveness,
    /// A panic, a busy loop, or a run that never settles.
    Crash,
}

struct Failure {
    class: Class,
    violations: Vec<Violation>,
}

struct Outcome {
    seed: u64,
    failure: Option<Failure>,
    coverage: BTreeMap<Cover, u64>,
    trace: Vec<String>,
}

/// One run in progress: the world and what went wrong so far.
struct Run {
    w: World,
    violations: Vec<Violation>,
    steps: u64,
    crashed: bool,
}

impl Run {
    fn violate(&mut self, invariant: &'static str, detail: String) {
        if self.violations.len() < MAX_VIOLATIONS {
            self.violations.push(Violation {
                invariant,
                at: self.w.now,
                detail,
            });
        }
    }

    fn check(&mut self) {
        for v in invariants::check_step(&self.w) {
            if self.violations.len() < MAX_VIOLATIONS {
                self.violations.push(v);
            }
        }
    }

    /// Process every event due up to `end`, checking after each; then let the
    /// clock reach `end`. False once the run crashed.
    fn until(&mut self, end: Instant) -> bool {
        while !self.crashed && self.w.next_time().is_some_and(|t| t <= end) {
            self.steps += 1;
            if self.steps > MAX_STEPS {
                self.crashed = true;
                self.violate("settles", format!("no quiescence after {MAX_STEPS} steps"));
                return false;
            }
            let w = &mut self.w;
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| w.step())) {
                self.crashed = true;
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic".into());
                self.violate("no panic", msg);
                return false;
            }
            self.check();
        }
        self.w.advance_to(end);
        self.check();
        !self.crashed
    }
}

/// How long the heal phase waits for whatever is in flight to settle: two chained
/// upgrades (an early request performed once healthy) failing the slowest way,
/// plus stopping a child that takes longer than its timeout.
fn settle_bound(w: &World) -> Duration {
    let mut ut = Duration::ZERO;
    let mut stop = Duration::ZERO;
    for g in w.gens.values() {
        let s = g.settings();
        ut = ut.max(s.upgrade_timeout);
        stop = stop.max(s.shutdown_delay + s.shutdown_timeout);
    }
    (ut + SUCCESSOR_GRACE) * 3 + stop * 2 + Duration::from_secs(10)
}

fn simulate(seed: u64) -> Outcome {
    simulate_broken(seed, None)
}

/// One seed, with the system under test deliberately broken by `mutation`.
fn simulate_broken(seed: u64, mutation: Option<Mutation>) -> Outcome {
    let mut w = World::new(seed);
    w.mutation = mutation;
    let mut run = Run {
        w,
        violations: Vec::new(),
        steps: 0,
        crashed: false,
    };
    run.w.start();
    let chaos_end = Instant::from_origin(run.w.chaos);
    if run.until(chaos_end) {
        heal(&mut run);
    }
    let class = if run.crashed || run.violations.iter().any(|v| v.invariant == "no busy loop") {
        Some(Class::Crash)
    } else if run.violations.iter().any(|v| v.invariant.starts_with('I')) {
        Some(Class::Safety)
    } else if !run.violations.is_empty() {
        Some(Class::Liveness)
    } else {
        None
    };
    Outcome {
        seed,
        failure: class.map(|class| Failure {
            class,
            violations: run.violations,
        }),
        coverage: run.w.coverage,
        trace: run.w.trace,
    }
}

/// Faults off; wait; one final upgrade; everything must converge.
fn heal(run: &mut Run) {
    run.w.heal();
    let settle = settle_bound(&run.w);
    if !run.until(run.w.now + settle) {
        return;
    }
    let live = run.w.live_gens();
    match live[..] {
        [] => {
            let problems = invariants::ended(&run.w);
            if problems.is_empty() {
                run.w.cover(Cover::ServiceEnded);
            }
            for p in problems {
                run.violate("heal: service ended cleanly", p);
            }
        }
        [old] if run.w.stopped_after_handover.contains(&old) => run.violate(
            "heal: a stop after the handover stops the new generation too",
            format!("g{} serves on", run.w.gens[&old].ghost.number),
        ),
        [old] => {
            let g = &run.w.gens[&old];
            // From the world's record, not the machine's opinion: its child
            // runs, it is the service, nothing in flight, its predecessor gone.
            let child_runs = g.ghost.running_child().is_some_and(|c| run.w.running(c));
            let service =
                g.ghost.protects_child && !g.ghost.handed_over && g.ghost.in_flight.is_none();
            if !service || !child_runs || g.rt.predecessor.is_some() {
                let why = format!(
                    "after settling, the one psflip g{} is not serving (the service {service}, child running: {child_runs}, predecessor known alive: {}; its machine says {:?})",
                    g.ghost.number,
                    g.rt.predecessor.is_some(),
                    g.machine.phase()
                );
                run.violate("heal: settles to one serving psflip", why);
                return;
            }
            let sig = g.settings().upgrade_signal;
            run.w.log("heal: the final upgrade");
            run.w.send_signal(old, sig);
            let settle = settle_bound(&run.w);
            if !run.until(run.w.now + settle) {
                return;
            }
            let problems = invariants::converged(&run.w, old);
            if problems.is_empty() {
                run.w.cover(Cover::HealFinalUpgrade);
            }
            for p in problems {
                run.violate("heal: final upgrade converges", p);
            }
        }
        _ => run.violate(
            "heal: settles to one serving psflip",
            format!(
                "{} psflip generations still run after settling: {live:?}",
                live.len()
            ),
        ),
    }
}

fn report(o: &Outcome) -> String {
    use std::fmt::Write as _;
    let Some(f) = &o.failure else {
        return format!("SEED={} passed", o.seed);
    };
    let mut s = String::new();
    let _ = writeln!(s, "SEED={} FAILED: {:?}", o.seed, f.class);
    let mut by_invariant: BTreeMap<&str, Vec<&Violation>> = BTreeMap::new();
    for v in &f.violations {
        by_invariant.entry(v.invariant).or_default().push(v);
    }
    let _ = writeln!(s, "violated:");
    for (inv, vs) in &by_invariant {
        let _ = writeln!(s, "  {inv} ({}x), first: {}", vs.len(), vs[0]);
    }
    let _ = writeln!(s, "last {TRACE_TAIL} trace lines:");
    for line in &o.trace[o.trace.len().saturating_sub(TRACE_TAIL)..] {
        let _ = writeln!(s, "  {line}");
    }
    let _ = writeln!(
        s,
        "replay: PSFLIP_SIM_SEED={} cargo test --test sim -- --nocapture replay",
        o.seed
    );
    s
}

struct Summary {
    start: u64,
    count: u64,
    failures: Vec<Outcome>,
    coverage: BTreeMap<Cover, u64>,
    elapsed: std::time::Duration,
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v}: not a number")),
    )
}

/// Run `count` seeds from `start` on every core; failures sorted by seed.
fn run_many(start: u64, count: u64) -> Summary {
    let begun = std::time::Instant::now();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let results: Vec<(Vec<Outcome>, BTreeMap<Cover, u64>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let mut failures = Vec::new();
                    let mut coverage = BTreeMap::new();
                    let mut seed = start + t;
                    while seed < start + count {
                        let mut o = simulate(seed);
                        for (k, n) in std::mem::take(&mut o.coverage) {
                            *coverage.entry(k).or_insert(0) += n;
                        }
                        if o.failure.is_some() {
                            failures.push(o);
                        }
                        seed += threads;
                    }
                    (failures, coverage)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("simulation thread"))
            .collect()
    });
    let mut failures = Vec::new();
    let mut coverage = BTreeMap::new();
    for (f, c) in results {
        failures.extend(f);
        for (k, n) in c {
            *coverage.entry(k).or_insert(0) += n;
        }
    }
    failures.sort_by_key(|o| o.seed);
    Summary {
        start,
        count,
        failures,
        coverage,
        elapsed: begun.elapsed(),
    }
}

/// The default batch, shared by the tests that read it (run once).
fn batch() -> &'static Summary {
    static SUMMARY: OnceLock<Summary> = OnceLock::new();
    SUMMARY.get_or_init(|| {
        let (start, count) = match env_u64("PSFLIP_SIM_SEED") {
            Some(seed) => (seed, 1),
            None => (
                env_u64("PSFLIP_SIM_START").unwrap_or(DEFAULT_START),
                env_u64("PSFLIP_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS),
            ),
        };
        println!("SEED={start} (seeds {start}..{})", start + count);
        run_many(start, count)
    })
}

#[test]
fn seeds_hold_every_invariant() {
    let s = batch();
    println!(
        "SEED={}: {} seeds in {:.1?}, {} failed",
        s.start,
        s.count,
        s.elapsed,
        s.failures.len()
    );
    if s.failures.is_empty() {
        return;
    }
    for o in s.failures.iter().take(3) {
        println!("{}", report(o));
    }
    let list: Vec<String> = s
        .failures
        .iter()
        .map(|o| {
            let f = o.failure.as_ref().expect("failed");
            let invs: std::collections::BTreeSet<&str> =
                f.violations.iter().map(|v| v.invariant).collect();
            let invs: Vec<&str> = invs.into_iter().collect();
            format!("{} {:?} {}", o.seed, f.class, invs.join(", "))
        })
        .collect();
    panic!(
        "{} of {} seeds failed:\n{}",
        s.failures.len(),
        s.count,
        list.join("\n")
    );
}

#[test]
fn seeds_cover_every_outcome() {
    if env_u64("PSFLIP_SIM_SEED").is_some() {
        return;
    }
    let s = batch();
    println!("coverage over {} seeds:", s.count);
    for (k, n) in &s.coverage {
        println!("  {k:?}: {n}");
    }
    let missing: Vec<&Cover> = Cover::REQUIRED
        .iter()
        .filter(|c| s.coverage.get(c).copied().unwrap_or(0) == 0)
        .collect();
    assert!(
        missing.is_empty(),
        "never happened in {} seeds: {missing:?}",
        s.count
    );
}

/// `PSFLIP_SIM_SEED=<n> cargo test --test sim -- --nocapture replay`
#[test]
fn replay() {
    let Some(seed) = env_u64("PSFLIP_SIM_SEED") else {
        return;
    };
    println!("SEED={seed}");
    let o = simulate(seed);
    for line in &o.trace {
        println!("{line}");
    }
    println!("coverage: {:?}", o.coverage);
    assert!(o.failure.is_none(), "{}", report(&o));
}

#[test]
fn same_seed_same_trace() {
    for seed in [1, 42, 7_777] {
        let a = simulate(seed);
        let b = simulate(seed);
        assert!(a.trace.len() > 10, "seed {seed}: a trivial trace");
        assert_eq!(
            a.trace.join("\n"),
            b.trace.join("\n"),
            "seed {seed} is not deterministic"
        );
    }
}

/// Every seed in `regressions.txt` (`<seed> <what it caught>`; `#` comments).
#[test]
fn regressions() {
    let mut failed = Vec::new();
    for line in include_str!("regressions.txt").lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (seed, what) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let seed: u64 = seed
            .parse()
            .unwrap_or_else(|_| panic!("regressions.txt: bad seed in {line:?}"));
        let o = simulate(seed);
        if o.failure.is_some() {
            println!("regression {seed} ({}):\n{}", what.trim(), report(&o));
            failed.push(seed);
        }
    }
    assert!(failed.is_empty(), "regression seeds fail again: {failed:?}");
}

/// psflip's stop racing its child's own exit (the child died, psflip signalled
/// it before the exit was delivered, then read it): the regression seeds of that
/// race still reach it — so I7 there judges the exit of a stop by psflip
/// (`expected_exit`), not the child's own — and hold.
#[test]
fn stop_racing_a_child_exit_counts_as_psflips_stop() {
    for seed in [27_640, 35_489] {
        let o = simulate(seed);
        assert!(
            o.coverage.contains_key(&Cover::StopRacedChildExit),
            "seed {seed} no longer reaches the race"
        );
        assert!(o.failure.is_none(), "{}", report(&o));
    }
}

/// Each invariant can fail: with the system under test deliberately broken
/// (test-only [`Mutation`]s of its effects or inputs), some seed among the first
/// few hundred reports the invariant that break violates. A checker that cannot
/// fail would pass this machine too.
#[test]
fn each_invariant_fires_on_a_broken_machine() {
    let cases = [
        (Mutation::StopChildAtUpgrade, "I1 old child spared"),
        (Mutation::DoubleProbe, "I2 at most two"),
        (Mutation::SkipPidfileWrites, "I3 rollback restores"),
        (Mutation::NoGroupKill, "I4 old generation gone"),
        (Mutation::NoGroupKill, "I5 no orphan, no zombie"),
        (Mutation::KeepPidfile, "I6 pidfile names a ready psflip"),
        (Mutation::WrongExitCode, "I7 exit status"),
        (Mutation::NeverAccept, "I8 proxy keeps connections"),
        (Mutation::DropTicks, "no busy loop"),
        (Mutation::NoReplies, "C control clients answered"),
        (Mutation::NoControlClaim, "K control socket name"),
        (Mutation::ClaimBeforeChild, "K control socket name"),
    ];
    let mut silent = Vec::new();
    for (mutation, invariant) in cases {
        let fired = (0..400u64).find(|&seed| {
            simulate_broken(seed, Some(mutation))
                .failure
                .is_some_and(|f| f.violations.iter().any(|v| v.invariant == invariant))
        });
        match fired {
            Some(seed) => eprintln!("{mutation:?}: {invariant} fired at SEED={seed}"),
            None => silent.push(format!("{mutation:?} never made {invariant:?} fire")),
        }
    }
    assert!(silent.is_empty(), "{silent:#?}");
}
