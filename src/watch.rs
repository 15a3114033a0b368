//! pidwatch's logic as a pure machine, shaped like psflip's (`src/machine/`):
//! events in, effects out, time as data. The runtime side is
//! `src/runtime/pidwatch.rs`.
//!
//! pidwatch keeps a foreground process for supervisors that treat the exit of the
//! process they started as the service's death (SPEC §7). It starts CMD, forwards
//! every signal to the process the pidfile names (re-read at each signal, child
//! exit and change, and every [`POLL_INTERVAL`]), and stays until that process
//! is gone *and* CMD has exited: CMD's exit alone is not enough, since the
//! pidfile may name a successor by then.
//!
//! A process once followed is followed until it is dead, even if the pidfile
//! stops naming it (removed, garbled, or naming something pidwatch may not
//! signal): a changed file is not the death of the service, and exiting then
//! would tell the supervisor the service is gone while it still runs.
//!
//! Contract with the runtime:
//! 1. `Started` once the loop runs: CMD is spawned and the pidfile read.
//! 2. Every `ReadPidfile` is answered at once with `PidfileRead`, every
//!    `CheckPid` with `PidChecked`. The reading is already judged by the runtime:
//!    `Followable` only for a live, non-zombie process pidwatch may signal (a
//!    descendant when subreaping, a process of its own user when polling). A
//!    `SignalPid` right after such an answer cannot hit a recycled pid when
//!    subreaping: a dead descendant stays our zombie until reaped.
//! 3. `Tick` whenever `deadline()` has passed: the pidfile is re-read every
//!    [`POLL_INTERVAL`], which is also how a watched process that is not our child
//!    is seen to die.
//! 4. `PidfileChanged` as soon as the pidfile's directory entry changes (inotify
//!    on its directory), before any child exit that happened after the change
//!    is reported: the pidfile is re-read at once, so a successor is followed
//!    when it names itself, not up to [`POLL_INTERVAL`] later. Where the
//!    directory cannot be watched (missing, unreadable, no inotify instance
//!    left) the runtime sends none and the poll is all there is.
//!
//! # The service's final status (`--exit-status`)
//!
//! It is the status of the process the pidfile named last, known only if
//! pidwatch reaped that process: it is CMD, or a generation re-parented to
//! pidwatch (a subreaper) when its parent exited. The statuses of the last
//! [`REAPED_KEPT`] processes reaped are kept, so a pidfile read after the
//! process it names was reaped still tells whose status is final.
//!
//! What can still be missed, and is then said to be unknown (pidwatch logs so
//! and exits 0), never relayed from a process the pidfile no longer named:
//! - a pidfile written and removed again before pidwatch read it: a successor
//!   whose service crashed between its write and pidwatch's next reading, which
//!   is now pidwatch's wake-up latency after the inotify event (a scheduling
//!   delay, e.g. pidwatch stopped or starved of CPU), no longer up to
//!   [`POLL_INTERVAL`]. The change events say a write was not read (no reading
//!   since found the service in the pidfile: it was gone, or held garbage or a
//!   pid that is no service), so the process followed before is not taken for
//!   the service; without inotify, the old window (up to [`POLL_INTERVAL`])
//!   remains, unflagged;
//! - a successor whose service ends after the old generation signalled its old
//!   child and before the old psflip exited: the successor is still that
//!   psflip's child, which reaps it, so its status never reaches pidwatch (one
//!   that ends earlier, during `shutdown.delay`, hands the service back to the
//!   old generation, which names itself again: nothing is missed);
//! - any process followed with `--poll`, which is never pidwatch's child.

use std::collections::VecDeque;
use std::time::Duration;

use crate::Signal;

/// A signal number, real-time ones included (pidwatch forwards every signal; nix's
/// [`Signal`] cannot name SIGRTMIN…SIGRTMAX).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignalNo(pub i32);

impl From<Signal> for SignalNo {
    fn from(s: Signal) -> SignalNo {
        SignalNo(s as i32)
    }
}

impl std::fmt::Display for SignalNo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match Signal::try_from(self.0) {
            Ok(sig) => f.write_str(sig.as_str()),
            Err(_) => write!(f, "signal {}", self.0),
        }
    }
}
use crate::machine::{ExitStatus, Instant};

/// How often the pidfile (and, when polling, the watched process) is checked.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// How many reaped processes' exit statuses are kept (see the module docs).
pub const REAPED_KEPT: usize = 32;

/// What the pidfile says, as judged by the runtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reading {
    /// No pidfile (yet).
    Missing,
    /// The file holds no pid.
    Garbage,
    /// It names a live process pidwatch may follow and signal.
    Followable(u32),
    /// It names a process that is not alive (or a zombie).
    Dead(u32),
    /// It names a live process pidwatch must not signal (not a descendant, or
    /// another user's).
    Foreign(u32),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The loop runs: start CMD.
    Started,
    /// pidwatch received this signal.
    SignalReceived(SignalNo),
    /// CMD, our direct child, exited.
    CmdExited { pid: u32, status: ExitStatus },
    /// Another process we reaped (a psflip generation re-parented to us) exited.
    OtherExited { pid: u32, status: ExitStatus },
    /// `SpawnCmd` failed.
    SpawnFailed(String),
    /// The answer to `ReadPidfile`.
    PidfileRead(Reading),
    /// The answer to `CheckPid`: the same judgement, of the pid it named.
    PidChecked(Reading),
    /// The pidfile's directory entry changed. `written`: it was created, renamed
    /// onto or written (it may name a new process), or change events were lost;
    /// otherwise it was removed or renamed away.
    PidfileChanged { written: bool },
    /// Time has passed.
    Tick,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Start CMD.
    SpawnCmd,
    /// Read and judge the pidfile; answer with `PidfileRead`.
    ReadPidfile,
    /// Judge this pid (the one followed so far) as a pidfile naming it would be;
    /// answer with `PidChecked`.
    CheckPid(u32),
    /// Send a signal to the process followed (just judged followable).
    SignalPid {
        pid: u32,
        signal: SignalNo,
    },
    /// Send a signal to CMD.
    SignalCmd(SignalNo),
    Log(String),
    /// Why pidwatch gives up: shown even when quiet.
    Error(String),
    Exit(i32),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Cmd {
    NotStarted,
    Running,
    Exited(ExitStatus),
}

/// See the module documentation.
#[derive(Clone, Debug)]
pub struct Watch {
    cmd: Cmd,
    /// The process followed: the one the last followable reading named, for as
    /// long as it stays followable.
    watched: Option<u32>,
    /// The service as last known: the process the pidfile named last that was
    /// followed, or that had already been reaped when the pidfile was read.
    named: Option<u32>,
    /// Whether the pidfile stopped naming `watched` (logged once).
    lingering: bool,
    /// Whether any reading was ever followable.
    followed_once: bool,
    /// The last reading, to log changes once.
    last: Option<Reading>,
    /// Signals waiting for the answer to the `ReadPidfile` they caused.
    pending: Vec<SignalNo>,
    next_read: Option<Instant>,
    done: bool,
    /// `--exit-status`: exit with the service's final status, not 0.
    relay_status: bool,
    /// How `named` ended, when we reaped it.
    final_status: Option<(u32, ExitStatus)>,
    /// The last [`REAPED_KEPT`] processes reaped, newest last.
    reaped: VecDeque<(u32, ExitStatus)>,
    /// The pidfile was written since a reading last found the service in it:
    /// whom it named is not known yet (or ever, if it is gone by the next
    /// reading).
    unread_write: bool,
}

impl Default for Watch {
    fn default() -> Self {
        Self::new()
    }
}

impl Watch {
    pub fn new() -> Watch {
        Watch {
            cmd: Cmd::NotStarted,
            watched: None,
            named: None,
            lingering: false,
            followed_once: false,
            last: None,
            pending: Vec::new(),
            next_read: None,
            done: false,
            relay_status: false,
            final_status: None,
            reaped: VecDeque::new(),
            unread_write: false,
        }
    }

    /// `--exit-status`: once the service is gone, exit with its final status
    /// (its code, or 128 + the signal that killed it) instead of 0.
    pub fn relaying_status(mut self) -> Watch {
        self.relay_status = true;
        self
    }

    /// The pid being followed, if any.
    pub fn watched(&self) -> Option<u32> {
        self.watched
    }

    pub fn deadline(&self) -> Option<Instant> {
        if self.done { None } else { self.next_read }
    }

    pub fn step(&mut self, now: Instant, event: Event) -> Vec<Effect> {
        let mut out = Vec::new();
        if self.done {
            return out;
        }
        match event {
            Event::Started => {
                self.cmd = Cmd::Running;
                out.push(Effect::SpawnCmd);
                self.read(now, &mut out);
            }
            Event::SpawnFailed(reason) => {
                self.cmd = Cmd::Exited(ExitStatus::Code(2));
                out.push(Effect::Error(format!("cannot start the command: {reason}")));
                self.exit(2, &mut out);
            }
            Event::SignalReceived(sig) => {
                self.pending.push(sig);
                self.read(now, &mut out);
            }
            Event::CmdExited { pid, status } => {
                self.cmd = Cmd::Exited(status);
                self.note_exit(pid, status);
                out.push(Effect::Log(format!("the command exited ({status})")));
                self.read(now, &mut out);
            }
            Event::OtherExited { pid, status } => {
                self.note_exit(pid, status);
                self.read(now, &mut out);
            }
            Event::PidfileChanged { written } => {
                self.unread_write |= written;
                self.read(now, &mut out);
            }
            Event::Tick => {
                if self.next_read.is_some_and(|t| now >= t) {
                    self.read(now, &mut out);
                }
            }
            Event::PidfileRead(reading) => self.on_reading(reading, &mut out),
            Event::PidChecked(reading) => self.on_checked(reading, &mut out),
        }
        out
    }

    /// Keep the exit status of a reaped process; the service's is its final
    /// status, for `--exit-status`.
    fn note_exit(&mut self, pid: u32, status: ExitStatus) {
        if self.reaped.len() == REAPED_KEPT {
            self.reaped.pop_front();
        }
        self.reaped.push_back((pid, status));
        if self.named == Some(pid) {
            self.final_status = Some((pid, status));
        }
    }

    /// How `pid` ended, if we reaped it lately.
    fn reaped_status(&self, pid: u32) -> Option<ExitStatus> {
        self.reaped
            .iter()
            .rev()
            .find(|(p, _)| *p == pid)
            .map(|(_, status)| *status)
    }

    fn read(&mut self, now: Instant, out: &mut Vec<Effect>) {
        self.next_read = Some(now + POLL_INTERVAL);
        out.push(Effect::ReadPidfile);
    }

    fn on_reading(&mut self, reading: Reading, out: &mut Vec<Effect>) {
        let ended = match reading {
            Reading::Dead(pid) => self.reaped_status(pid).map(|status| (pid, status)),
            _ => None,
        };
        if self.last.as_ref() != Some(&reading) {
            let line = match &reading {
                Reading::Followable(pid) => Some(format!("following pid {pid}")),
                Reading::Dead(pid) => Some(match ended {
                    Some((_, status)) => {
                        format!("the pidfile names pid {pid}, which ended ({status})")
                    }
                    None => format!("the pidfile names pid {pid}, which is not running"),
                }),
                Reading::Foreign(pid) => Some(format!(
                    "the pidfile names pid {pid}, which is not ours to signal; ignoring it"
                )),
                Reading::Garbage => Some("the pidfile holds no pid; ignoring it".to_string()),
                Reading::Missing if self.followed_once => Some("the pidfile is gone".to_string()),
                Reading::Missing => None,
            };
            if let Some(line) = line {
                out.push(Effect::Log(line));
            }
            self.last = Some(reading.clone());
        }
        if matches!(reading, Reading::Followable(_)) || ended.is_some() {
            // The service as written last: whatever was written unread before
            // is superseded. Anything else (garbage, a stranger, a dead pid of
            // unknown end) names no service, and cannot say what went unread.
            self.unread_write = false;
        }
        if let Some((pid, status)) = ended {
            // The pidfile names a process we reaped: that is how the service ended.
            self.named = Some(pid);
            self.final_status = Some((pid, status));
            self.followed_once = true;
            if self.watched == Some(pid) {
                self.watched = None;
                self.lingering = false;
            }
        }
        match reading {
            Reading::Followable(pid) => {
                if self.named != Some(pid) {
                    self.named = Some(pid);
                    self.final_status = None;
                }
                self.followed_once = true;
                self.lingering = false;
                self.watched = Some(pid);
                self.settle(out);
            }
            // The file no longer names what we follow: is it still there?
            _ => match self.watched {
                Some(pid) => out.push(Effect::CheckPid(pid)),
                None => self.settle(out),
            },
        }
    }

    fn on_checked(&mut self, reading: Reading, out: &mut Vec<Effect>) {
        match (reading, self.watched) {
            (Reading::Followable(pid), Some(watched)) if pid == watched => {
                if !self.lingering {
                    self.lingering = true;
                    out.push(Effect::Log(format!(
                        "still following pid {pid}, which the pidfile no longer names, until it exits"
                    )));
                }
            }
            _ => {
                self.watched = None;
                self.lingering = false;
            }
        }
        self.settle(out);
    }

    /// With `watched` up to date: forward the pending signals, and exit once the
    /// service is gone.
    fn settle(&mut self, out: &mut Vec<Effect>) {
        for signal in std::mem::take(&mut self.pending) {
            match (self.watched, &self.cmd) {
                (Some(pid), _) => out.push(Effect::SignalPid { pid, signal }),
                (None, Cmd::Running) => out.push(Effect::SignalCmd(signal)),
                (None, _) => out.push(Effect::Log(format!(
                    "{signal} dropped: nothing to forward it to"
                ))),
            }
        }
        if let (None, Cmd::Exited(status)) = (self.watched, &self.cmd) {
            // The service is gone. If it never wrote a pidfile, CMD's status says why.
            let code = if !self.followed_once {
                status.code()
            } else if !self.relay_status {
                0
            } else if self.unread_write {
                out.push(Effect::Log(
                    "the pidfile was written and gone before pidwatch could read it: the service's last process and its exit status are unknown; exiting 0"
                        .to_string(),
                ));
                0
            } else {
                match self.final_status {
                    Some((pid, status)) => {
                        out.push(Effect::Log(format!(
                            "the service (pid {pid}) ended with {status}; exiting with {}",
                            status.code()
                        )));
                        status.code()
                    }
                    None => {
                        out.push(Effect::Log(
                            "the service's exit status is unknown (it was not our child); exiting 0"
                                .to_string(),
                        ));
                        0
                    }
                }
            };
            self.exit(code, out);
        }
    }

    fn exit(&mut self, code: i32, out: &mut Vec<Effect>) {
        self.done = true;
        out.push(Effect::Exit(code));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Instant {
        Instant::from_origin(Duration::from_millis(ms))
    }

    /// The successor (pid 20), followed through the pidfile, exited.
    fn other_exited(status: ExitStatus) -> Event {
        Event::OtherExited { pid: 20, status }
    }

    /// Forward `signal` to the successor (pid 20).
    fn signal_successor(signal: Signal) -> Effect {
        Effect::SignalPid {
            pid: 20,
            signal: signal.into(),
        }
    }

    /// The watched command (pid 10) exited.
    fn cmd_exited(status: ExitStatus) -> Event {
        Event::CmdExited { pid: 10, status }
    }

    #[test]
    fn follows_the_successor_after_cmd_exits() {
        let mut w = Watch::new();
        assert_eq!(
            w.step(t(0), Event::Started),
            vec![Effect::SpawnCmd, Effect::ReadPidfile]
        );
        w.step(t(0), Event::PidfileRead(Reading::Missing));
        w.step(t(100), Event::Tick);
        w.step(t(100), Event::PidfileRead(Reading::Followable(10)));
        assert_eq!(w.watched(), Some(10));
        // The first psflip (CMD) exits after the handoff: the pidfile names 20.
        assert_eq!(
            w.step(t(150), cmd_exited(ExitStatus::Code(0))),
            vec![
                Effect::Log("the command exited (exit code 0)".into()),
                Effect::ReadPidfile
            ]
        );
        let out = w.step(t(150), Event::PidfileRead(Reading::Followable(20)));
        assert!(!out.iter().any(|e| matches!(e, Effect::Exit(_))));
        // A signal goes to the successor.
        w.step(t(160), Event::SignalReceived(Signal::SIGHUP.into()));
        let out = w.step(t(160), Event::PidfileRead(Reading::Followable(20)));
        assert_eq!(out, vec![signal_successor(Signal::SIGHUP)]);
        // The successor is gone and the pidfile removed: exit 0.
        w.step(t(170), other_exited(ExitStatus::Code(3)));
        let out = w.step(t(170), Event::PidfileRead(Reading::Missing));
        assert_eq!(out.last(), Some(&Effect::CheckPid(20)));
        let out = w.step(t(170), Event::PidChecked(Reading::Dead(20)));
        assert_eq!(out.last(), Some(&Effect::Exit(0)));
        assert!(w.step(t(300), Event::Tick).is_empty());
    }

    /// `--exit-status`: the final status is that of the process followed last
    /// (the successor), not CMD's (the first psflip, which exits 0 after the
    /// handoff).
    #[test]
    fn exit_status_relays_the_last_followed_process() {
        for (status, code) in [
            (ExitStatus::Code(3), 3),
            (ExitStatus::Signaled(9), 137),
            (ExitStatus::Code(0), 0),
        ] {
            let mut w = Watch::new().relaying_status();
            w.step(t(0), Event::Started);
            w.step(t(0), Event::PidfileRead(Reading::Followable(10)));
            w.step(t(50), cmd_exited(ExitStatus::Code(0)));
            w.step(t(50), Event::PidfileRead(Reading::Followable(20)));
            w.step(
                t(90),
                Event::OtherExited {
                    pid: 99,
                    status: ExitStatus::Code(7),
                },
            );
            w.step(t(90), Event::PidfileRead(Reading::Followable(20)));
            w.step(t(100), Event::OtherExited { pid: 20, status });
            let out = w.step(t(100), Event::PidfileRead(Reading::Dead(20)));
            let out = [out, w.step(t(100), Event::PidChecked(Reading::Dead(20)))].concat();
            assert_eq!(out.last(), Some(&Effect::Exit(code)), "{status:?}");
        }
    }

    /// `--exit-status` with a service we did not reap (polling): unknown, so 0.
    #[test]
    fn exit_status_of_a_process_never_reaped_is_unknown() {
        let mut w = Watch::new().relaying_status();
        w.step(t(0), Event::Started);
        w.step(t(0), Event::PidfileRead(Reading::Followable(20)));
        w.step(t(50), cmd_exited(ExitStatus::Code(4)));
        w.step(t(50), Event::PidfileRead(Reading::Followable(20)));
        w.step(t(150), Event::Tick);
        w.step(t(150), Event::PidfileRead(Reading::Dead(20)));
        let out = w.step(t(150), Event::PidChecked(Reading::Dead(20)));
        assert_eq!(out.last(), Some(&Effect::Exit(0)));
        assert!(
            out.iter()
                .any(|e| matches!(e, Effect::Log(l) if l.contains("unknown")))
        );
    }

    /// Regression: a followed process was dropped as soon as the pidfile stopped
    /// naming it (removed by hand, garbled, or removed by psflip an instant before
    /// it exits), and pidwatch exited 0 while the service still ran, orphaned —
    /// a supervisor would then start a second instance.
    #[test]
    fn a_followed_process_is_followed_until_it_dies_whatever_the_pidfile_says() {
        let mut w = Watch::new();
        w.step(t(0), Event::Started);
        w.step(t(0), Event::PidfileRead(Reading::Followable(10)));
        w.step(t(50), cmd_exited(ExitStatus::Code(0)));
        w.step(t(50), Event::PidfileRead(Reading::Followable(20)));
        for (i, gone) in [Reading::Missing, Reading::Garbage, Reading::Foreign(1234)]
            .into_iter()
            .enumerate()
        {
            let now = 100 * (i as u64 + 2);
            assert_eq!(w.step(t(now), Event::Tick), vec![Effect::ReadPidfile]);
            let out = w.step(t(now), Event::PidfileRead(gone));
            assert_eq!(out.last(), Some(&Effect::CheckPid(20)));
            let out = w.step(t(now), Event::PidChecked(Reading::Followable(20)));
            assert!(!out.iter().any(|e| matches!(e, Effect::Exit(_))), "{out:?}");
            let lingering = out
                .iter()
                .filter(|e| matches!(e, Effect::Log(l) if l.contains("still following pid 20")))
                .count();
            assert_eq!(lingering, usize::from(i == 0), "logged once: {out:?}");
            assert_eq!(w.watched(), Some(20));
        }
        // Signals still reach it.
        w.step(t(450), Event::SignalReceived(Signal::SIGTERM.into()));
        w.step(t(450), Event::PidfileRead(Reading::Missing));
        let out = w.step(t(450), Event::PidChecked(Reading::Followable(20)));
        assert_eq!(out, vec![signal_successor(Signal::SIGTERM)]);
        // It dies: now the service is gone.
        w.step(t(460), other_exited(ExitStatus::Signaled(9)));
        w.step(t(460), Event::PidfileRead(Reading::Missing));
        let out = w.step(t(460), Event::PidChecked(Reading::Dead(20)));
        assert_eq!(out, vec![Effect::Exit(0)]);
    }

    #[test]
    fn a_new_followable_pid_replaces_a_lingering_one() {
        let mut w = Watch::new();
        w.step(t(0), Event::Started);
        w.step(t(0), Event::PidfileRead(Reading::Followable(10)));
        w.step(t(100), Event::Tick);
        w.step(t(100), Event::PidfileRead(Reading::Missing));
        w.step(t(100), Event::PidChecked(Reading::Followable(10)));
        w.step(t(200), Event::Tick);
        let out = w.step(t(200), Event::PidfileRead(Reading::Followable(30)));
        assert_eq!(out, vec![Effect::Log("following pid 30".into())]);
        assert_eq!(w.watched(), Some(30));
    }

    /// Regression: with `-q`, a command that cannot be started made pidwatch exit
    /// 2 without a word.
    #[test]
    fn a_command_that_cannot_start_is_an_error_even_when_quiet() {
        let mut w = Watch::new();
        w.step(t(0), Event::Started);
        let out = w.step(t(0), Event::SpawnFailed("cannot run \"nope\"".into()));
        assert_eq!(
            out,
            vec![
                Effect::Error("cannot start the command: cannot run \"nope\"".into()),
                Effect::Exit(2)
            ]
        );
        assert!(
            w.step(t(0), Event::PidfileRead(Reading::Missing))
                .is_empty()
        );
    }

    #[test]
    fn cmd_exiting_before_any_pidfile_gives_its_status() {
        let mut w = Watch::new();
        w.step(t(0), Event::Started);
        w.step(t(0), Event::PidfileRead(Reading::Missing));
        w.step(t(5), cmd_exited(ExitStatus::Code(2)));
        let out = w.step(t(5), Event::PidfileRead(Reading::Missing));
        assert_eq!(out.last(), Some(&Effect::Exit(2)));
    }

    #[test]
    fn signals_go_to_cmd_while_no_pidfile_and_are_never_dropped_silently() {
        let mut w = Watch::new();
        w.step(t(0), Event::Started);
        w.step(t(1), Event::SignalReceived(Signal::SIGTERM.into()));
        let out = w.step(t(1), Event::PidfileRead(Reading::Foreign(1)));
        assert!(out.contains(&Effect::SignalCmd(Signal::SIGTERM.into())));
        assert!(
            out.iter()
                .any(|e| matches!(e, Effect::Log(l) if l.contains("not ours")))
        );
        w.step(t(2), cmd_exited(ExitStatus::Signaled(15)));
        let out = w.step(t(2), Event::PidfileRead(Reading::Missing));
        assert_eq!(out.last(), Some(&Effect::Exit(143)));
    }

    #[test]
    fn a_dead_pid_is_not_followed() {
        let mut w = Watch::new();
        w.step(t(0), Event::Started);
        let out = w.step(t(0), Event::PidfileRead(Reading::Dead(4242)));
        assert_eq!(w.watched(), None);
        assert!(
            out.iter()
                .any(|e| matches!(e, Effect::Log(l) if l.contains("not running")))
        );
        assert_eq!(w.deadline(), Some(t(100)));
    }

    /// No pidfile before psflip wrote its first one is the normal start: nothing
    /// to say. Once one named the service, its disappearance is news.
    #[test]
    fn a_pidfile_is_only_said_to_be_gone_once_there_was_one() {
        let mut w = Watch::new();
        w.step(t(0), Event::Started);
        let out = w.step(t(0), Event::PidfileRead(Reading::Missing));
        assert!(out.is_empty(), "{out:?}");
        w.step(t(100), Event::Tick);
        w.step(t(100), Event::PidfileRead(Reading::Followable(10)));
        w.step(t(200), Event::Tick);
        let out = w.step(t(200), Event::PidfileRead(Reading::Missing));
        assert_eq!(
            out,
            vec![
                Effect::Log("the pidfile is gone".into()),
                Effect::CheckPid(10)
            ]
        );
    }

    /// `--exit-status` relays the status of the process followed last: once the
    /// pidfile names another process, the status of the one before is no longer
    /// the service's, even if the new one's is never known.
    #[test]
    fn exit_status_never_relays_a_previous_process() {
        let mut w = Watch::new().relaying_status();
        w.step(t(0), Event::Started);
        w.step(t(0), Event::PidfileRead(Reading::Followable(10)));
        w.step(t(50), cmd_exited(ExitStatus::Code(5)));
        w.step(t(50), Event::PidfileRead(Reading::Followable(20)));
        assert_eq!(w.watched(), Some(20));
        // 20 is not our child: it is seen gone, its status unknown.
        w.step(t(150), Event::Tick);
        let out = w.step(t(150), Event::PidfileRead(Reading::Missing));
        assert_eq!(out.last(), Some(&Effect::CheckPid(20)));
        let out = w.step(t(150), Event::PidChecked(Reading::Dead(20)));
        assert_eq!(out.last(), Some(&Effect::Exit(0)), "{out:?}");
    }

    /// The pidfile changed (inotify): it is read at once, not at the next poll.
    #[test]
    fn a_change_to_the_pidfile_is_read_at_once() {
        let mut w = Watch::new();
        w.step(t(0), Event::Started);
        w.step(t(0), Event::PidfileRead(Reading::Followable(10)));
        assert_eq!(w.deadline(), Some(t(100)));
        for written in [true, false] {
            assert_eq!(
                w.step(t(30), Event::PidfileChanged { written }),
                vec![Effect::ReadPidfile]
            );
        }
        assert_eq!(
            w.deadline(),
            Some(t(130)),
            "the poll counts from the last reading"
        );
    }

    /// Regression (the race): a successor names itself, then its service
    /// crashes before the next poll; it removes the pidfile and exits. Seen
    /// through the change, it is followed, and its status is the service's,
    /// not that of the first psflip (CMD), which exited 0 after handing over.
    #[test]
    fn a_successor_seen_through_a_change_gives_its_status() {
        let mut w = Watch::new().relaying_status();
        w.step(t(0), Event::Started);
        w.step(t(0), Event::PidfileRead(Reading::Followable(10)));
        assert_eq!(
            w.step(t(20), Event::PidfileChanged { written: true }),
            vec![Effect::ReadPidfile]
        );
        let out = w.step(t(20), Event::PidfileRead(Reading::Followable(20)));
        assert_eq!(out, vec![Effect::Log("following pid 20".into())]);
        w.step(t(25), cmd_exited(ExitStatus::Code(0)));
        // The successor's child died: it removed its pidfile and exited.
        w.step(t(25), Event::PidfileRead(Reading::Missing));
        w.step(t(25), Event::PidChecked(Reading::Followable(20)));
        w.step(t(26), Event::PidfileChanged { written: false });
        w.step(t(26), Event::PidfileRead(Reading::Missing));
        w.step(t(26), Event::PidChecked(Reading::Followable(20)));
        w.step(t(27), other_exited(ExitStatus::Code(137)));
        w.step(t(27), Event::PidfileRead(Reading::Missing));
        let out = w.step(t(27), Event::PidChecked(Reading::Dead(20)));
        assert_eq!(out.last(), Some(&Effect::Exit(137)), "{out:?}");
    }

    /// The pidfile was written, and gone by the reading the write caused: it
    /// named a process pidwatch never saw, so the status of the one followed
    /// before is not the service's — unknown, said so, never relayed as the
    /// service's; nor once something that names no service (garbage, a
    /// stranger, a dead pid of unknown end) is written in its place. A removal
    /// alone changes nothing.
    #[test]
    fn a_pidfile_written_and_gone_unread_makes_the_status_unknown() {
        for (written, then) in [
            (true, None),
            (true, Some(Reading::Garbage)),
            (true, Some(Reading::Foreign(4242))),
            (true, Some(Reading::Dead(4242))),
            (false, None),
        ] {
            let mut w = Watch::new().relaying_status();
            w.step(t(0), Event::Started);
            w.step(t(0), Event::PidfileRead(Reading::Followable(10)));
            w.step(t(20), Event::PidfileChanged { written });
            w.step(t(20), Event::PidfileRead(Reading::Missing));
            w.step(t(20), Event::PidChecked(Reading::Followable(10)));
            if let Some(then) = then.clone() {
                w.step(t(21), Event::PidfileChanged { written: true });
                w.step(t(21), Event::PidfileRead(then));
                w.step(t(21), Event::PidChecked(Reading::Followable(10)));
            }
            w.step(t(25), cmd_exited(ExitStatus::Code(3)));
            w.step(t(25), Event::PidfileRead(Reading::Missing));
            let out = w.step(t(25), Event::PidChecked(Reading::Dead(10)));
            let relayed = out
                .iter()
                .any(|e| matches!(e, Effect::Log(l) if l.contains("ended with")));
            let unknown = out
                .iter()
                .any(|e| matches!(e, Effect::Log(l) if l.contains("unknown")));
            if written {
                assert_eq!(out.last(), Some(&Effect::Exit(0)), "{then:?}: {out:?}");
                assert!(unknown && !relayed, "{out:?}");
            } else {
                assert_eq!(out.last(), Some(&Effect::Exit(3)), "{out:?}");
                assert!(relayed && !unknown, "{out:?}");
            }
        }
    }

    /// A write whose reading found no pid yet (a file written in place, still
    /// empty) is settled by a later reading that names one.
    #[test]
    fn a_later_reading_settles_a_write_read_too_early() {
        let mut w = Watch::new().relaying_status();
        w.step(t(0), Event::Started);
        w.step(t(0), Event::PidfileRead(Reading::Missing));
        w.step(t(10), Event::PidfileChanged { written: true });
        w.step(t(10), Event::PidfileRead(Reading::Missing));
        w.step(t(11), Event::PidfileChanged { written: true });
        w.step(t(11), Event::PidfileRead(Reading::Followable(10)));
        w.step(t(50), cmd_exited(ExitStatus::Code(4)));
        w.step(t(50), Event::PidfileRead(Reading::Missing));
        let out = w.step(t(50), Event::PidChecked(Reading::Dead(10)));
        assert_eq!(out.last(), Some(&Effect::Exit(4)), "{out:?}");
    }

    /// A pidfile read after the process it names was reaped (left behind by a
    /// successor killed outright): that process's status is the service's,
    /// not that of the process followed before (CMD, exited 0 after handing
    /// over), which is still followed until it is gone.
    #[test]
    fn a_pidfile_naming_a_reaped_process_gives_its_status() {
        let mut w = Watch::new().relaying_status();
        w.step(t(0), Event::Started);
        w.step(t(0), Event::PidfileRead(Reading::Followable(10)));
        w.step(t(50), other_exited(ExitStatus::Signaled(9)));
        let out = w.step(t(50), Event::PidfileRead(Reading::Dead(20)));
        assert_eq!(
            out,
            vec![
                Effect::Log("the pidfile names pid 20, which ended (signal SIGKILL)".into()),
                Effect::CheckPid(10)
            ]
        );
        let out = w.step(t(50), Event::PidChecked(Reading::Followable(10)));
        assert!(!out.iter().any(|e| matches!(e, Effect::Exit(_))), "{out:?}");
        w.step(t(60), cmd_exited(ExitStatus::Code(0)));
        w.step(t(60), Event::PidfileRead(Reading::Dead(20)));
        let out = w.step(t(60), Event::PidChecked(Reading::Dead(10)));
        assert_eq!(out.last(), Some(&Effect::Exit(137)), "{out:?}");
    }

    /// Exactly the last [`REAPED_KEPT`] statuses are kept: one more exit and
    /// the oldest is forgotten, and a pidfile naming its pid then names a
    /// process that is merely not running.
    #[test]
    fn reaped_statuses_are_kept_for_the_last_few_only() {
        for (later, line) in [
            (
                REAPED_KEPT - 1,
                "the pidfile names pid 20, which ended (exit code 9)",
            ),
            (
                REAPED_KEPT,
                "the pidfile names pid 20, which is not running",
            ),
        ] {
            let mut w = Watch::new().relaying_status();
            w.step(t(0), Event::Started);
            w.step(t(0), Event::PidfileRead(Reading::Followable(10)));
            w.step(t(1), other_exited(ExitStatus::Code(9)));
            w.step(t(1), Event::PidfileRead(Reading::Followable(10)));
            for pid in 0..later as u32 {
                w.step(
                    t(2),
                    Event::OtherExited {
                        pid: 1000 + pid,
                        status: ExitStatus::Code(1),
                    },
                );
                w.step(t(2), Event::PidfileRead(Reading::Followable(10)));
            }
            let out = w.step(t(3), Event::PidfileChanged { written: true });
            assert_eq!(out, vec![Effect::ReadPidfile]);
            let out = w.step(t(3), Event::PidfileRead(Reading::Dead(20)));
            assert_eq!(
                out,
                vec![Effect::Log(line.into()), Effect::CheckPid(10)],
                "{later} later exits"
            );
        }
    }

    /// Signals are named in the log as the operator knows them; real-time
    /// ones, which have no name, by number.
    #[test]
    fn signals_are_named_in_the_log() {
        assert_eq!(SignalNo::from(Signal::SIGTERM).to_string(), "SIGTERM");
        assert_eq!(SignalNo(40).to_string(), "signal 40");
    }
}
