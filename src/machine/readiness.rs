//! Readiness that the child (or its container engine) reports rather than a probe
//! run: `[healthcheck.notify]` (READY=1 on the child's own notify socket) and
//! `[healthcheck.docker]` (the engine's view of the container, polled).

use std::time::Duration;

use super::state::{Proving, State};
use super::{Effect, Health, Inspection, Instant, Machine, ProcId, Timer, log};

/// What one inspection means for the child.
enum Verdict {
    Healthy,
    /// Not yet: why, remembered for the failure reason at `upgrade.timeout`
    /// (and logged when it changes).
    NotYet(String),
    /// Not yet: the container's own health check is still starting (not logged).
    Starting(String),
    /// Never: the child is stopped at once.
    Failed(String),
}

impl Machine {
    /// (`[healthcheck.notify]`) the child, or a process holding its notify socket,
    /// spoke.
    pub(super) fn on_child_notified(
        &mut self,
        now: Instant,
        id: ProcId,
        ready: bool,
        status: Option<String>,
        out: &mut Vec<Effect>,
    ) {
        if self.live_child() != Some(id) {
            return;
        }
        if let Some(status) = status {
            log(out, format!("child status: {status}"));
        }
        let proving = matches!(
            self.state,
            State::Starting {
                health: Proving::Waiting,
                ..
            }
        );
        if ready && self.settings.health == Health::Notify && proving {
            log(out, "the child sent READY=1");
            self.on_healthy(now, out);
        }
    }

    /// Ask the engine; abandon the question if no answer comes within `interval`.
    pub(super) fn start_inspection(
        &mut self,
        now: Instant,
        interval: Duration,
        out: &mut Vec<Effect>,
    ) {
        self.set_proving(Proving::Inspecting);
        self.timers.set(Timer::ProbeOverrun, now + interval);
        out.push(Effect::InspectContainer);
    }

    /// [`Timer::ProbeOverrun`] with an inspection in flight; the next one is due.
    pub(super) fn abandon_inspection(&mut self, now: Instant, out: &mut Vec<Effect>) {
        let Health::Docker { interval } = self.settings.health else {
            return;
        };
        let why = format!("the Docker engine did not answer within interval ({interval:?})");
        log(out, format!("docker healthcheck: {why}"));
        self.set_proving(Proving::Waiting);
        self.set_last_check(why);
        out.push(Effect::AbandonInspection);
        self.timers.set(Timer::ProbeStart, now);
    }

    /// (`[healthcheck.docker]`) what the engine said about the container.
    pub(super) fn on_inspected(
        &mut self,
        now: Instant,
        container: &str,
        inspection: Inspection,
        out: &mut Vec<Effect>,
    ) {
        // The next inspection starts `interval` after this one did.
        let next = self.timers.cancel(Timer::ProbeOverrun).unwrap_or(now);
        self.timers.set(Timer::ProbeStart, next);
        self.set_proving(Proving::Waiting);
        match verdict(container, inspection) {
            Verdict::Healthy => {
                log(out, format!("container {container} is healthy"));
                self.on_healthy(now, out);
            }
            Verdict::NotYet(why) => {
                if self.last_check() != Some(&why) {
                    log(out, format!("docker healthcheck: {why}"));
                }
                self.set_last_check(why);
            }
            Verdict::Starting(why) => self.set_last_check(why),
            Verdict::Failed(why) => {
                log(
                    out,
                    format!("docker healthcheck failed: {why}; stopping the child"),
                );
                self.fail(format!("docker healthcheck failed: {why}"));
                self.kill_probe(out);
                self.kill_unready_child(now, out);
            }
        }
    }

    fn last_check(&self) -> Option<&String> {
        match &self.state {
            State::Starting { last_check, .. } => last_check.as_ref(),
            _ => None,
        }
    }

    fn set_last_check(&mut self, why: String) {
        if let State::Starting { last_check, .. } = &mut self.state {
            *last_check = Some(why);
        }
    }
}

fn verdict(container: &str, inspection: Inspection) -> Verdict {
    match inspection {
        Inspection::Missing => {
            Verdict::NotYet(format!("container {container} does not exist (yet)"))
        }
        Inspection::Failed(why) => Verdict::NotYet(why),
        // On this engine an exited container with a health check also reports
        // itself unhealthy: its state says more.
        Inspection::Found { status, .. } if status == "exited" || status == "dead" => {
            Verdict::Failed(format!("container {container} has stopped ({status})"))
        }
        Inspection::Found {
            healthcheck: false, ..
        } => Verdict::Failed(format!(
            "container {container} has no HEALTHCHECK (docker run --health-cmd, or HEALTHCHECK in its image)"
        )),
        // Created, not started yet: no health state so far.
        Inspection::Found {
            health: None,
            status,
            ..
        } => Verdict::Starting(format!("container {container} is {status}")),
        Inspection::Found {
            health: Some(health),
            status,
            ..
        } => match health.as_str() {
            "healthy" => Verdict::Healthy,
            "unhealthy" => Verdict::Failed(format!("container {container} is unhealthy")),
            _ => Verdict::Starting(format!(
                "container {container} is {status}, its health {health}"
            )),
        },
    }
}
