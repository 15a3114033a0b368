//! Traces of one generation's machine: what it was told and what it said, as
//! JSON lines, recorded by the runtime and replayed through a fresh machine.
//!
//! 1. With `PSFLIP_TRACE=PREFIX` in its environment, each psflip generation
//!    writes `PREFIX.<pid>.jsonl` (successors inherit the variable, so an
//!    upgrade leaves one file per generation). The first line is the
//!    [`Header`]: everything the machine was built from. Each further line is
//!    one `step`: `{"t_ns": …, "event": …, "effects": […]}`, in order, flushed
//!    as written (a crash loses nothing before it).
//! 2. [`replay`] builds a fresh machine from the header, feeds it every event
//!    at its instant, and requires the same effects, step by step; then it
//!    checks the machine's promises over the whole trace ([`check`]). The
//!    machine is deterministic, so a trace from a production incident replays
//!    exactly: `psflip __replay FILE`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Signal;
use crate::machine::{Effect, Event, Instant, Machine, ProcId, Role, Settings};

/// The environment variable naming the trace files' prefix.
pub const ENV: &str = "PSFLIP_TRACE";

/// Everything a machine is built from.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Header {
    pub settings: Settings,
    pub proxy: bool,
    pub listen: bool,
    pub subreaper: bool,
    /// (Successor) the predecessor's `upgrade.timeout`.
    pub predecessor_upgrade_timeout: Option<Duration>,
}

impl Header {
    /// The machine this header describes, fresh.
    pub fn machine(&self) -> Machine {
        let m = Machine::new(self.settings.clone())
            .with_proxy(self.proxy)
            .with_listen(self.listen)
            .with_subreaper(self.subreaper);
        match self.predecessor_upgrade_timeout {
            Some(t) => m.with_predecessor_timeout(t),
            None => m,
        }
    }
}

#[derive(Serialize)]
struct StepOut<'a> {
    t_ns: u64,
    event: &'a Event,
    effects: &'a [Effect],
}

#[derive(Deserialize)]
struct StepIn {
    t_ns: u64,
    event: Event,
    effects: serde_json::Value,
}

/// Writes one generation's trace.
pub struct Recorder {
    path: PathBuf,
    out: BufWriter<File>,
}

impl Recorder {
    /// The recorder `PSFLIP_TRACE` asks for, if any: `PREFIX.<pid>.jsonl`, with
    /// its header written.
    pub fn from_env(header: &Header) -> Option<Result<Recorder, String>> {
        let prefix = std::env::var_os(ENV)?;
        let mut path = PathBuf::from(prefix).into_os_string();
        path.push(format!(".{}.jsonl", std::process::id()));
        Some(Recorder::create(Path::new(&path), header))
    }

    pub fn create(path: &Path, header: &Header) -> Result<Recorder, String> {
        let file = File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut r = Recorder {
            path: path.to_owned(),
            out: BufWriter::new(file),
        };
        r.line(&serde_json::to_string(header).map_err(|e| e.to_string())?);
        Ok(r)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One step: the event at `now` and the effects it gave.
    pub fn record(&mut self, now: Instant, event: &Event, effects: &[Effect]) {
        let step = StepOut {
            t_ns: now.since_origin().as_nanos() as u64,
            event,
            effects,
        };
        if let Ok(line) = serde_json::to_string(&step) {
            self.line(&line);
        }
    }

    fn line(&mut self, line: &str) {
        // A trace that cannot be written must not take psflip down.
        let _ = writeln!(self.out, "{line}").and_then(|()| self.out.flush());
    }
}

/// What a replay went through.
#[derive(Debug)]
pub struct Replayed {
    pub header: Header,
    /// Every step, as replayed: (instant, event, effects).
    pub steps: Vec<(Instant, Event, Vec<Effect>)>,
}

/// Replay a trace (the text of a `.jsonl` file) through a fresh machine: the same
/// effects must come out of every step, and the machine's promises must hold
/// over the whole of it ([`check`]).
pub fn replay(text: &str) -> Result<Replayed, String> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, first) = lines.next().ok_or("an empty trace")?;
    let header: Header =
        serde_json::from_str(first).map_err(|e| format!("line 1: not a header: {e}"))?;
    let mut machine = header.machine();
    let mut steps = Vec::new();
    for (n, line) in lines {
        let step: StepIn =
            serde_json::from_str(line).map_err(|e| format!("line {}: {e}", n + 1))?;
        let now = Instant::from_origin(Duration::from_nanos(step.t_ns));
        let effects = machine.step(now, step.event.clone());
        let replayed = serde_json::to_value(&effects).map_err(|e| e.to_string())?;
        if replayed != step.effects {
            return Err(format!(
                "line {}: {:?} at {now:?} gave\n  {replayed}\nnot, as recorded,\n  {}",
                n + 1,
                step.event,
                step.effects
            ));
        }
        steps.push((now, step.event, effects));
    }
    let problems = check(&header, &steps);
    if !problems.is_empty() {
        return Err(problems.join("\n"));
    }
    Ok(Replayed { header, steps })
}

/// The machine's promises over one trace (as `tests/sim/machine_props.rs`
/// checks them on random event sequences), from the trace alone:
///
/// 1. I1 on one generation: once it serves (it told the service manager it is
///    ready, or reported ready to its predecessor), its child gets neither
///    `shutdown.signal` nor SIGKILL — other than a forward of that very signal
///    — before it heard "ready" from the successor it started, unless the child
///    had exited.
/// 2. Every signalled id was spawned before.
/// 3. `Exit` ends its batch, and nothing follows it.
/// 4. At most one successor in flight.
/// 5. The control socket's name is claimed by a first generation only once its
///    first child runs (after `Spawned` of it), and by a successor right before
///    it reports ready (`ClaimControl` immediately before `ReportReady`).
pub fn check(header: &Header, steps: &[(Instant, Event, Vec<Effect>)]) -> Vec<String> {
    let mut out = Vec::new();
    let mut spawned: Vec<(ProcId, bool)> = Vec::new(); // (id, is a successor)
    let mut gone: Vec<ProcId> = Vec::new();
    let mut child = None;
    let mut serving = false;
    let mut ready_heard = false;
    let mut exited = false;
    let mut child_ran = false;
    let first = header.settings.generation == crate::machine::Generation::First;
    let shutdown = header.settings.shutdown_signal;
    for (i, (_, event, effects)) in steps.iter().enumerate() {
        let at = format!("step {} ({event:?})", i + 1);
        if exited && !effects.is_empty() {
            out.push(format!("{at}: effects after Exit: {effects:?}"));
        }
        match event {
            Event::ProcessExited { id, .. } | Event::SpawnFailed { id, .. } => gone.push(*id),
            Event::SuccessorReady { id } if spawned.contains(&(*id, true)) => ready_heard = true,
            Event::Spawned { id } if Some(*id) == child => child_ran = true,
            _ => {}
        }
        let forwarded = match event {
            Event::SignalReceived { signal, .. } => Some(*signal),
            _ => None,
        };
        for (j, effect) in effects.iter().enumerate() {
            match effect {
                Effect::Spawn { id, role } => {
                    let successor = *role == Role::Successor;
                    let in_flight = spawned.iter().any(|(s, succ)| *succ && !gone.contains(s));
                    if successor && in_flight {
                        out.push(format!("{at}: a second successor {id} in flight"));
                    }
                    if *role == Role::App {
                        child = Some(*id);
                    }
                    spawned.push((*id, successor));
                }
                Effect::Signal { id, signal, group } => {
                    if !spawned.iter().any(|(s, _)| s == id) {
                        out.push(format!("{at}: {signal} to {id}, never spawned"));
                    }
                    let stop = *signal == Signal::SIGKILL || *signal == shutdown;
                    let forward = !group && forwarded == Some(*signal);
                    if Some(*id) == child
                        && stop
                        && !forward
                        && serving
                        && !ready_heard
                        && !gone.contains(id)
                    {
                        out.push(format!(
                            "{at}: I1: {signal} to the serving child {id} before a handover"
                        ));
                    }
                }
                Effect::ClaimControl if first && !child_ran => out.push(format!(
                    "{at}: the control socket claimed before the child ran"
                )),
                Effect::ReportReady => {
                    if j == 0 || effects[j - 1] != Effect::ClaimControl {
                        out.push(format!(
                            "{at}: ready reported without claiming the control socket first: {effects:?}"
                        ));
                    }
                    serving = true
                }
                Effect::Notify(crate::machine::Notify::Ready { .. }) => serving = true,
                Effect::Exit(_) => {
                    exited = true;
                    if j + 1 != effects.len() {
                        out.push(format!("{at}: Exit does not end its batch: {effects:?}"));
                    }
                }
                _ => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{ExitStatus, Generation};

    fn header() -> Header {
        Header {
            settings: crate::machine::tests::settings(Generation::First),
            proxy: false,
            listen: false,
            subreaper: false,
            predecessor_upgrade_timeout: None,
        }
    }

    /// Record a run of a machine through the recorder, as the runtime does.
    fn record(name: &str, events: &[(u64, Event)]) -> String {
        let file = format!("psflip-trace-{}-{name}.jsonl", std::process::id());
        let path = std::env::temp_dir().join(file);
        let h = header();
        let mut r = Recorder::create(&path, &h).unwrap();
        let mut m = h.machine();
        for (ms, e) in events {
            let now = Instant::from_origin(Duration::from_millis(*ms));
            let effects = m.step(now, e.clone());
            r.record(now, e, &effects);
        }
        drop(r);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        text
    }

    fn upgrade() -> Vec<(u64, Event)> {
        vec![
            (0, Event::Started),
            (1000, Event::Tick),
            (1000, Event::PidfileWritten),
            (2000, Event::signal(Signal::SIGHUP)),
            (2500, Event::SuccessorReady { id: ProcId(2) }),
            (
                2600,
                Event::ProcessExited {
                    id: ProcId(1),
                    status: ExitStatus::Signaled(15),
                },
            ),
        ]
    }

    #[test]
    fn a_recorded_upgrade_replays_to_the_same_effects() {
        let text = record("same", &upgrade());
        let replayed = replay(&text).unwrap();
        assert_eq!(replayed.steps.len(), 6);
        assert!(matches!(
            replayed.steps.last().unwrap().2.last(),
            Some(Effect::Exit(0))
        ));
    }

    #[test]
    fn a_trace_the_machine_would_not_produce_is_refused() {
        let text = record("forged", &upgrade());
        // A "ready" the machine never heard: the recorded handover (the old
        // child's SIGTERM) no longer follows.
        let forged = text.replacen("{\"SuccessorReady\":{\"id\":2}}", "\"PidfileWritten\"", 1);
        assert_ne!(forged, text);
        let why = replay(&forged).unwrap_err();
        assert!(why.contains("not, as recorded"), "{why}");
    }

    #[test]
    fn the_checker_sees_a_serving_child_stopped_before_the_handover() {
        let h = header();
        let t = Instant::ZERO;
        let steps = vec![
            (
                t,
                Event::Started,
                vec![Effect::Spawn {
                    id: ProcId(1),
                    role: Role::App,
                }],
            ),
            (
                t,
                Event::Spawned { id: ProcId(1) },
                vec![Effect::ClaimControl],
            ),
            (
                t,
                Event::PidfileWritten,
                vec![Effect::ClaimControl, Effect::ReportReady],
            ),
            (
                t,
                Event::Tick,
                vec![Effect::Signal {
                    id: ProcId(1),
                    signal: Signal::SIGTERM,
                    group: false,
                }],
            ),
        ];
        let problems = check(&h, &steps);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("I1"));
    }

    #[test]
    fn the_checker_sees_the_control_socket_claimed_out_of_place() {
        let h = header();
        let t = Instant::ZERO;
        let spawn = Effect::Spawn {
            id: ProcId(1),
            role: Role::App,
        };
        // Claimed with the spawn (the child may not start), and a ready
        // reported before the claim.
        let steps = vec![
            (t, Event::Started, vec![spawn, Effect::ClaimControl]),
            (t, Event::Spawned { id: ProcId(1) }, vec![]),
            (
                t,
                Event::PidfileWritten,
                vec![Effect::ReportReady, Effect::ClaimControl],
            ),
        ];
        let problems = check(&h, &steps);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("step 1") && problems[0].contains("before the child ran"));
        assert!(problems[1].contains("step 3") && problems[1].contains("without claiming"));
    }
}
