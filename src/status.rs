//! What `psflip status` reports (SPEC §1, issue #7): built by the running
//! generation (the runtime fills it from the machine's [`crate::machine::Status`]
//! and its own pids and clocks), sent over the control socket as one JSON
//! object, and printed by the client as `key: value` lines or as that JSON.
//!
//! The upgrade history travels with the service: each successor is handed its
//! predecessor's (in the handoff, `crate::handoff::HISTORY`) and keeps the last
//! [`HISTORY_LEN`].

use serde::{Deserialize, Serialize};

/// How many upgrades the history keeps.
pub const HISTORY_LEN: usize = 10;

/// One upgrade, as the service remembers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upgrade {
    /// When it started (UTC, `2026-11-30T15:04:05.123Z`).
    pub time: String,
    /// What asked for it: `signal SIGHUP from pid 812 (uid 0)`,
    /// `psflip upgrade (pid 901, uid 1000)`, `service manager (pid 1)`…
    pub trigger: String,
    /// The generation that ran it, and the one it started.
    pub from_generation: u64,
    pub to_generation: u64,
    /// `succeeded`, `failed` or `in flight`.
    pub outcome: String,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// From its start to its outcome, in milliseconds (none while in flight).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// `time` in milliseconds since the epoch, to measure the duration by.
    pub started_unix_ms: u64,
}

/// The upgrade history one generation keeps: handed over from its predecessor,
/// added to by the upgrades it runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    entries: Vec<Upgrade>,
}

impl History {
    /// What the previous generation handed over (JSON).
    pub fn inherited(value: Option<&str>) -> History {
        History {
            entries: history_from_env(value),
        }
    }

    pub fn entries(&self) -> &[Upgrade] {
        &self.entries
    }

    /// An upgrade from generation `from` starts now.
    pub fn begin(&mut self, now: std::time::SystemTime, trigger: String, from: u64) {
        let ms = unix_ms(now);
        self.entries.push(Upgrade {
            time: crate::log::utc_timestamp(now),
            trigger,
            from_generation: from,
            to_generation: from + 1,
            outcome: "in flight".into(),
            reason: None,
            duration_ms: None,
            started_unix_ms: ms,
        });
        trim(&mut self.entries);
    }

    /// The upgrade in flight (the last entry) ended now. In a successor, the
    /// one that started it (handed over in flight).
    pub fn end(&mut self, now: std::time::SystemTime, outcome: Result<(), String>) {
        // In flight; or handed over, then the new generation died at once and
        // this one took the service back: a failure after all.
        let Some(last) = self
            .entries
            .last_mut()
            .filter(|u| u.outcome == "in flight" || (u.outcome == "succeeded" && outcome.is_err()))
        else {
            return;
        };
        last.duration_ms = Some(unix_ms(now).saturating_sub(last.started_unix_ms));
        match outcome {
            Ok(()) => last.outcome = "succeeded".into(),
            Err(reason) => {
                last.outcome = "failed".into();
                last.reason = Some(reason);
            }
        }
    }

    /// For the successor's environment.
    pub fn to_env(&self) -> String {
        serde_json::to_string(&self.entries).unwrap_or_else(|_| "[]".into())
    }
}

fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The answer to `status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub psflip_pid: u32,
    pub generation: u64,
    /// `starting`, `serving`, `upgrading`, `draining previous`, `stopping`.
    pub phase: String,
    pub child_pid: Option<u32>,
    pub child_healthy: bool,
    pub uptime_seconds: u64,
    pub upgrade_in_flight: bool,
    /// This generation's `upgrade.timeout`, in milliseconds: it also bounds how
    /// long the next generation's child may take to become healthy.
    pub upgrade_timeout_ms: u64,
    /// Whether `AB` yields its second value in this generation (`b`) or its
    /// first (`a`): the next generation gets the other.
    pub ab: String,
    /// The last upgrade's outcome: `succeeded`, `failed: <why>`, or none.
    pub last_upgrade: Option<String>,
    /// The last upgrades, oldest first.
    pub upgrades: Vec<Upgrade>,
    /// With `[upgrade] standby = true` (absent otherwise): `waiting`, `not
    /// started yet: …` or `off in this generation: <why>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby: Option<String>,
    /// The waiting standby's pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby_pid: Option<u32>,
}

impl Upgrade {
    /// One line for people.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} generation {} -> {}: {}",
            self.time, self.from_generation, self.to_generation, self.outcome
        );
        if let Some(ms) = self.duration_ms {
            s.push_str(&format!(" in {}.{:03}s", ms / 1000, ms % 1000));
        }
        s.push_str(&format!(", by {}", self.trigger));
        if let Some(reason) = &self.reason {
            s.push_str(&format!(": {reason}"));
        }
        s
    }
}

impl Report {
    /// `key: value` lines; the history as `upgrade_1` (the latest) … `upgrade_N`.
    pub fn to_lines(&self) -> String {
        let none = || "none".to_string();
        let mut out = format!(
            "psflip_pid: {}\ngeneration: {}\nphase: {}\nchild_pid: {}\nchild_healthy: {}\n\
             uptime_seconds: {}\nupgrade_in_flight: {}\nupgrade_timeout_ms: {}\nab: {}\n\
             last_upgrade: {}\n",
            self.psflip_pid,
            self.generation,
            self.phase,
            self.child_pid.map_or_else(none, |p| p.to_string()),
            self.child_healthy,
            self.uptime_seconds,
            self.upgrade_in_flight,
            self.upgrade_timeout_ms,
            self.ab,
            self.last_upgrade.clone().unwrap_or_else(none),
        );
        if let Some(standby) = &self.standby {
            out.push_str(&format!("standby: {standby}\n"));
        }
        if let Some(pid) = self.standby_pid {
            out.push_str(&format!("standby_pid: {pid}\n"));
        }
        for (i, u) in self.upgrades.iter().rev().enumerate() {
            out.push_str(&format!("upgrade_{}: {}\n", i + 1, u.describe()));
        }
        out
    }

    /// One JSON object on one line.
    pub fn to_json_line(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_default();
        s.push('\n');
        s
    }
}

/// Parse a handed-over history; anything unreadable is no history (it is
/// informational only).
pub fn history_from_env(value: Option<&str>) -> Vec<Upgrade> {
    // The first generation has none: not even parsed (an error's path costs
    // a CPU feature probe, slow under a hypervisor).
    value
        .filter(|v| !v.is_empty())
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_default()
}

/// Keep the last [`HISTORY_LEN`] entries.
pub fn trim(history: &mut Vec<Upgrade>) {
    if history.len() > HISTORY_LEN {
        history.drain(..history.len() - HISTORY_LEN);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade(n: u64) -> Upgrade {
        Upgrade {
            time: "2026-11-30T15:04:05.123Z".into(),
            trigger: "signal SIGHUP from pid 9 (uid 0)".into(),
            from_generation: n,
            to_generation: n + 1,
            outcome: "succeeded".into(),
            reason: None,
            duration_ms: Some(1234),
            started_unix_ms: 0,
        }
    }

    #[test]
    fn history_begins_ends_and_travels() {
        let t = |ms: u64| std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
        let mut h = History::default();
        h.begin(t(1_000), "signal SIGHUP".into(), 1);
        h.end(t(1_250), Err("the successor exited (exit code 2)".into()));
        h.begin(t(2_000), "psflip upgrade (pid 5, uid 0)".into(), 1);
        // Handed to the successor in flight; it ends it when it takes over.
        let mut next = History::inherited(Some(&h.to_env()));
        next.end(t(2_400), Ok(()));
        let e = next.entries();
        assert_eq!(e.len(), 2);
        assert_eq!(
            (e[0].outcome.as_str(), e[0].duration_ms),
            ("failed", Some(250))
        );
        assert_eq!(
            e[0].reason.as_deref(),
            Some("the successor exited (exit code 2)")
        );
        assert_eq!(
            (e[1].outcome.as_str(), e[1].duration_ms),
            ("succeeded", Some(400))
        );
        assert_eq!((e[1].from_generation, e[1].to_generation), (1, 2));
        assert_eq!(e[1].time, "1970-01-01T00:00:02.000Z");
        // Nothing in flight: a success is not ended twice.
        next.end(t(3_000), Ok(()));
        assert_eq!(next.entries()[1].duration_ms, Some(400));
    }

    #[test]
    fn json_round_trips_and_lines_list_the_latest_first() {
        let r = Report {
            psflip_pid: 42,
            generation: 3,
            phase: "draining previous".into(),
            child_pid: Some(43),
            child_healthy: true,
            uptime_seconds: 1,
            upgrade_in_flight: false,
            upgrade_timeout_ms: 60_000,
            ab: "b".into(),
            last_upgrade: Some("succeeded".into()),
            upgrades: vec![upgrade(1), upgrade(2)],
            standby: None,
            standby_pid: None,
        };
        let json = r.to_json_line();
        assert_eq!(json.lines().count(), 1);
        assert_eq!(serde_json::from_str::<Report>(&json).unwrap(), r);
        let lines = r.to_lines();
        assert!(lines.contains("phase: draining previous\n"), "{lines}");
        assert!(
            lines.contains(
                "upgrade_1: 2026-11-30T15:04:05.123Z generation 2 -> 3: succeeded in 1.234s, by signal SIGHUP from pid 9 (uid 0)\n"
            ),
            "{lines}"
        );
        assert!(lines.contains("upgrade_2: 2026-11-30T15:04:05.123Z generation 1 -> 2"));
        // Without a standby configured, no word of one, in either form.
        assert!(
            !lines.contains("standby") && !json.contains("standby"),
            "{lines}{json}"
        );
        let with = Report {
            standby: Some("waiting".into()),
            standby_pid: Some(44),
            ..r
        };
        let json = with.to_json_line();
        assert!(
            json.contains(r#""standby":"waiting","standby_pid":44"#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<Report>(&json).unwrap(), with);
        assert!(with.to_lines().contains(
            "ab: b\nlast_upgrade: succeeded\nstandby: waiting\nstandby_pid: 44\nupgrade_1: "
        ));
    }

    #[test]
    fn a_report_from_a_generation_that_knows_no_standby_still_reads() {
        let old = r#"{"psflip_pid":1,"generation":1,"phase":"serving","child_pid":2,"child_healthy":true,"uptime_seconds":0,"upgrade_in_flight":false,"upgrade_timeout_ms":60000,"ab":"a","last_upgrade":null,"upgrades":[]}"#;
        let r: Report = serde_json::from_str(old).unwrap();
        assert_eq!((r.standby, r.standby_pid), (None, None));
    }

    #[test]
    fn history_is_bounded_and_garbage_is_none() {
        let mut h: Vec<Upgrade> = (0..15).map(upgrade).collect();
        trim(&mut h);
        assert_eq!(h.len(), HISTORY_LEN);
        assert_eq!(h[0].from_generation, 5);
        assert!(history_from_env(Some("not json")).is_empty());
        assert!(history_from_env(None).is_empty());
    }
}
