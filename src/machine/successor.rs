//! The new generation's side of an upgrade: report ready once the child is
//! healthy and the pidfile names us, or give up — and say why — when told to stop
//! first, by the operator or by the old generation aborting the upgrade.

use std::time::Duration;

use crate::Signal;

use super::state::{Lineage, Proving, Standing, State, Stop, StopCause, StopStep};
use super::{Effect, GIVE_UP_GRACE, Instant, Machine, Notify, Sender, Timer, about, log};

impl Machine {
    /// (Successor) healthy, the pidfile names us, accepting if proxied: we are the
    /// service now.
    pub(super) fn take_over(&mut self, out: &mut Vec<Effect>) {
        let child: Vec<_> = self
            .live_child()
            .map(|c| ("child", c))
            .into_iter()
            .collect();
        about(
            out,
            crate::log::Level::Notice,
            "took_over",
            "new child is healthy; taking over",
            &child,
        );
        out.push(Effect::UpgradeEnded(Ok(())));
        if let Lineage::Successor { standing, .. } = &mut self.lineage {
            *standing = Standing::TookOver;
        }
        self.last_upgrade = Some("succeeded".into());
        // Before the old generation hears of it, so before the old child is
        // signalled. With a pidfile, the service manager learns the new main
        // process from it (systemd's PIDFile=) once the old generation has
        // exited, when we are its own child: announced now, while the old
        // generation still runs, we would be "not our child" to systemd, and
        // a later `systemctl stop` would SIGKILL at once (KillMode=mixed).
        // Without a pidfile, MAINPID= is the only way it can follow.
        out.push(Effect::Notify(if self.settings.pidfile {
            Notify::Ready {
                status: "serving".into(),
            }
        } else {
            Notify::MainPid
        }));
        // The name first: the old generation, once it hears we are ready, stops
        // serving; a client finds its socket or ours, never none.
        out.push(Effect::ClaimControl);
        out.push(Effect::ReportReady);
    }

    /// Whether a termination signal from `from` makes this generation give up: a
    /// successor not serving yet, whoever sent it; or one that took over an instant
    /// before the old generation aborted the upgrade (the old one passes on the
    /// signal it was told to terminate with, and still serves), or whose old
    /// generation passed on a stop of the service after the handover. The
    /// predecessor may have exited since it sent the signal (killed by the
    /// service manager, say): it was still its stop to pass on.
    pub(super) fn gives_up_on(&self, from: Sender) -> bool {
        let Lineage::Successor { .. } = self.lineage else {
            return false;
        };
        match self.state {
            State::Starting { .. } => true,
            State::Serving { .. } => from == Sender::Predecessor,
            _ => false,
        }
    }

    /// Never take over (or serve on) after this. The child gets the signal (as
    /// every signal), then SIGKILL to its group if it ignores it: after
    /// [`GIVE_UP_GRACE`] if it never was the service, after `shutdown.timeout` if
    /// it was (we reported ready: the old generation passes on a stop of the
    /// service it got after the handover).
    pub(super) fn give_up(&mut self, now: Instant, sig: Signal, out: &mut Vec<Effect>) {
        let child = self.live_child().expect("a child");
        log(
            out,
            format!("{} before taking over: giving up", sig.as_str()),
        );
        self.kill_probe(out);
        self.fail(format!("the new generation got {}", sig.as_str()));
        let healthy = match self.state {
            State::Starting { health, .. } => health == Proving::WritingPidfile,
            _ => true,
        };
        let took_over = matches!(
            self.lineage,
            Lineage::Successor {
                standing: Standing::TookOver,
                ..
            }
        );
        self.move_to_stopping(Stop {
            step: StopStep::Signalled(child),
            cause: StopCause::GaveUp { healthy, took_over },
        });
        let grace: Duration = if took_over {
            self.settings.shutdown_timeout
        } else {
            self.settings.shutdown_timeout.min(GIVE_UP_GRACE)
        };
        self.timers.set(Timer::ChildKill, now + grace);
        // Escaped processes get SIGKILL no later than the child: the old
        // generation SIGKILLs us shutdown.timeout + grace after it passed the
        // stop on, and what we leave then is nobody's to stop.
        self.kill_due = Some(now + grace);
    }

    /// (Successor, before taking over) remember why we give up, to tell the old
    /// generation at exit. A first generation has nobody to tell.
    pub(super) fn fail(&mut self, reason: String) {
        if let Lineage::Successor {
            standing: Standing::Candidate { failure },
            ..
        } = &mut self.lineage
        {
            *failure = Some(reason);
        }
    }
}
