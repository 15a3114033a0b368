//! Asking for an upgrade (the upgrade signal, `psflip upgrade`) and describing
//! the generation (`psflip status`).

use crate::Signal;

use super::state::{Lineage, Predecessor, Proving, State};
use super::{
    ClientId, Effect, Instant, Machine, Origin, Reply, Request, Sender, Status, Trigger, log, warn,
};

/// Why an upgrade signal is ignored while an upgrade is in flight (a control
/// client asking then waits for the outcome of that upgrade instead).
const UPGRADE_IN_FLIGHT: &str = "an upgrade is already in flight";

impl Machine {
    pub(super) fn on_upgrade_signal(&mut self, now: Instant, from: Sender, out: &mut Vec<Effect>) {
        let trigger = Trigger::Signal {
            signal: self.settings.upgrade_signal,
            from,
        };
        if let Err(why) = self.request_upgrade(now, trigger, out) {
            warn(
                out,
                "upgrade_refused",
                format!(
                    "upgrade signal {} ignored: {why}",
                    self.settings.upgrade_signal.as_str()
                ),
            );
        }
    }

    pub(super) fn on_control(
        &mut self,
        now: Instant,
        client: ClientId,
        request: Request,
        from: Option<Origin>,
        out: &mut Vec<Effect>,
    ) {
        match request {
            Request::Status => out.push(Effect::Reply {
                client,
                reply: Reply::Status(self.status()),
            }),
            Request::Upgrade => match self.request_upgrade(now, Trigger::Control(from), out) {
                Ok(()) => self.waiters.push(client),
                // One upgrade at a time, but its outcome is every asker's: a
                // service manager may both send the upgrade signal and run
                // `psflip upgrade` (systemd's Type=notify-reload with ExecReload=).
                Err(UPGRADE_IN_FLIGHT) => {
                    log(
                        out,
                        "upgrade requested over the control socket while one is in flight: answering with its outcome",
                    );
                    self.waiters.push(client);
                }
                Err(why) => {
                    warn(
                        out,
                        "upgrade_refused",
                        format!("upgrade request refused: {why}"),
                    );
                    out.push(Effect::Reply {
                        client,
                        reply: Reply::UpgradeRefused(why.to_string()),
                    });
                }
            },
        }
    }

    /// What `psflip status` shows of this generation.
    pub fn status(&self) -> Status {
        let (phase, requested) = match &self.state {
            // Exiting, once escaped processes are gone.
            State::Sweeping(_) => ("stopping", false),
            State::Booting => ("starting", false),
            State::Starting {
                upgrade_requested, ..
            } => ("starting", *upgrade_requested),
            // A successor serves while its predecessor still stops its child
            // (and refuses upgrades until it is gone).
            State::Serving { .. } => match self.lineage {
                Lineage::Successor {
                    predecessor: Predecessor::Running,
                    ..
                } => ("draining previous", false),
                _ => ("serving", false),
            },
            State::Upgrading(_) => ("upgrading", true),
            // A termination signal aborts the upgrade: this generation stops.
            State::Aborting(_) => ("stopping", true),
            State::Stopping(_) | State::Done { .. } => ("stopping", false),
        };
        Status {
            phase,
            child: self.live_child(),
            child_healthy: self.healthy() && self.live_child().is_some(),
            upgrade_in_flight: requested,
            last_upgrade: self.last_upgrade.clone(),
        }
    }

    /// Start an upgrade (or, before the first child is healthy, promise one), or
    /// say why not.
    fn request_upgrade(
        &mut self,
        now: Instant,
        trigger: Trigger,
        out: &mut Vec<Effect>,
    ) -> Result<(), &'static str> {
        let first = self.lineage == Lineage::First;
        match &mut self.state {
            // The exit waits for escaped processes: the service is ending.
            State::Sweeping(_) => Err("this generation is stopping"),
            State::Serving { .. } => {
                if let Lineage::Successor {
                    predecessor: Predecessor::Running,
                    ..
                } = self.lineage
                {
                    return Err("the previous generation is still stopping");
                }
                self.start_upgrade(now, trigger, out);
                Ok(())
            }
            State::Starting { .. } if first => {
                self.promise_upgrade(trigger, out);
                Ok(())
            }
            State::Booting | State::Starting { .. } => Err("this generation is not ready yet"),
            State::Upgrading(_) => Err(UPGRADE_IN_FLIGHT),
            State::Aborting(_) => Err("an upgrade is being aborted"),
            State::Stopping(_) => Err("this generation is stopping"),
            State::Done { .. } => Err("this generation has exited"),
        }
    }

    /// (First generation, starting) the upgrade starts once the child is healthy.
    fn promise_upgrade(&mut self, trigger: Trigger, out: &mut Vec<Effect>) {
        let State::Starting {
            health,
            upgrade_requested,
            ..
        } = &mut self.state
        else {
            unreachable!("starting");
        };
        // Healthy and writing the pidfile: serving in a moment, quietly.
        if *health != Proving::WritingPidfile {
            log(
                out,
                if *upgrade_requested {
                    "upgrade already requested; it starts once the child is healthy"
                } else {
                    "upgrade requested before the child is healthy: it starts once the child is healthy"
                },
            );
        }
        *upgrade_requested = true;
        self.requested_by.get_or_insert(trigger);
    }

    /// A termination signal cancels the upgrade asked for while starting.
    pub(super) fn cancel_requested_upgrade(&mut self, sig: Signal, out: &mut Vec<Effect>) {
        log(
            out,
            format!("pending upgrade cancelled by {}", sig.as_str()),
        );
        self.answer_waiters(
            Reply::UpgradeFailed(format!("cancelled by {}", sig.as_str())),
            out,
        );
    }

    /// Tell every waiting control client the outcome of the upgrade.
    pub(super) fn answer_waiters(&mut self, reply: Reply, out: &mut Vec<Effect>) {
        for client in std::mem::take(&mut self.waiters) {
            out.push(Effect::Reply {
                client,
                reply: reply.clone(),
            });
        }
    }
}
