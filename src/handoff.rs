//! What one generation hands the next. A successor is psflip's own binary,
//! started with these values in its environment; this module is the only place
//! the variables are named, written ([`Handoff::env`]) and read
//! ([`Handoff::from_env`]). Pure data: the runtime passes the fds themselves.

use std::os::fd::RawFd;
use std::time::Duration;

/// The readiness pipe's write end, as the successor's fd number.
pub const READY_FD: &str = "PSFLIP_READY_FD";
/// The successor's generation number (the first is 1).
pub const GENERATION: &str = "PSFLIP_GENERATION";
/// Which value `AB` yields in the successor: `a` or `b`.
pub const AB_FLAG: &str = "PSFLIP_AB_FLAG";
/// The predecessor's `upgrade.timeout` in milliseconds.
pub const UPGRADE_TIMEOUT_MS: &str = "PSFLIP_UPGRADE_TIMEOUT_MS";
/// The proxy listeners handed over: one `FD=ADDRESS` line each.
pub const PROXY_FDS: &str = "PSFLIP_PROXY_FDS";
/// The `[[listen]]` sockets handed over: one `FD=ADDRESS` line each.
pub const LISTEN_FDS: &str = "PSFLIP_LISTEN_FDS";

/// The service's upgrade history, JSON (see `crate::status::History`); the
/// upgrade that starts the successor is its last entry, in flight.
pub const HISTORY: &str = "PSFLIP_UPGRADE_HISTORY";

/// Every variable above: internal to psflip, never passed to an app.
pub const VARS: &[&str] = &[
    READY_FD,
    GENERATION,
    AB_FLAG,
    UPGRADE_TIMEOUT_MS,
    PROXY_FDS,
    LISTEN_FDS,
    HISTORY,
];

/// What a successor is told by the generation that starts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handoff {
    /// The write end of the readiness pipe (the successor's "I am ready" or "I give
    /// up because…" goes there).
    pub ready_fd: RawFd,
    /// The successor's generation number.
    pub generation: u64,
    /// Whether `AB` yields its second value in the successor.
    pub ab_second: bool,
    /// The predecessor's `upgrade.timeout`: the successor's child must be healthy
    /// within it (see `Machine::with_predecessor_timeout`).
    pub upgrade_timeout: Duration,
    /// The inherited proxy listeners, `FD=ADDRESS` per line (see
    /// `effects::listen`); empty without a proxy.
    pub listeners: String,
    /// The inherited `[[listen]]` sockets, in the same form; empty without any.
    pub activation: String,
    /// The upgrade history, JSON; empty: none.
    pub history: String,
}

impl Handoff {
    /// What a generation numbered `generation` (with `ab_second` its own `AB`
    /// flag) tells its successor.
    pub fn to_successor(
        generation: u64,
        ab_second: bool,
        upgrade_timeout: Duration,
        ready_fd: RawFd,
        listeners: String,
        activation: String,
    ) -> Handoff {
        Handoff {
            ready_fd,
            generation: generation + 1,
            ab_second: !ab_second,
            upgrade_timeout,
            listeners,
            activation,
            history: String::new(),
        }
    }

    /// The same, with the upgrade history to hand over.
    pub fn with_history(mut self, history: String) -> Handoff {
        self.history = history;
        self
    }

    /// The successor's environment variables.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            (READY_FD, self.ready_fd.to_string()),
            (GENERATION, self.generation.to_string()),
            (AB_FLAG, if self.ab_second { "b" } else { "a" }.to_owned()),
            (
                UPGRADE_TIMEOUT_MS,
                self.upgrade_timeout.as_millis().to_string(),
            ),
            (PROXY_FDS, self.listeners.clone()),
            (LISTEN_FDS, self.activation.clone()),
            (HISTORY, self.history.clone()),
        ]
    }

    /// The handoff this process was started with, read through `var`; `None` for a
    /// first generation (no readiness fd). Values that do not parse fall back to
    /// what a first generation would have, except the fd.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Option<Handoff> {
        let ready_fd = var(READY_FD)?.trim().parse().ok()?;
        Some(Handoff {
            ready_fd,
            generation: var(GENERATION).and_then(|g| g.parse().ok()).unwrap_or(2),
            ab_second: var(AB_FLAG).is_some_and(|v| v == "b"),
            upgrade_timeout: var(UPGRADE_TIMEOUT_MS)
                .and_then(|ms| ms.parse().ok())
                .map_or(Duration::MAX, Duration::from_millis),
            listeners: var(PROXY_FDS).unwrap_or_default(),
            activation: var(LISTEN_FDS).unwrap_or_default(),
            history: var(HISTORY).unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handoff_reads_back_as_written() {
        let h = Handoff::to_successor(
            3,
            false,
            Duration::from_millis(1500),
            7,
            "9=:80".into(),
            "10=/run/app.sock".into(),
        )
        .with_history("[]".into());
        assert_eq!(h.generation, 4);
        assert!(h.ab_second);
        let env = h.env();
        let read = Handoff::from_env(|k| {
            env.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.clone())
        });
        assert_eq!(read, Some(h));
    }

    #[test]
    fn without_a_readiness_fd_this_is_a_first_generation() {
        assert_eq!(Handoff::from_env(|_| None), None);
        assert_eq!(
            Handoff::from_env(|k| (k == GENERATION).then(|| "5".to_owned())),
            None
        );
    }
}
