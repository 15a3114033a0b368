//! pidwatch's driver: the [`Watch`] machine over the real OS, run by the same
//! [`event_loop`] as psflip (signalfd, reaping, timers), plus an inotify watch
//! on the pidfile's directory whose readiness becomes `PidfileChanged`.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;

use nix::poll::PollFlags;
use nix::unistd::Pid;

use super::{Clock, Driver, Poll, event_loop};
use crate::Signal;
use crate::effects::filewatch::FileWatch;
use crate::effects::signals::Signals;
use crate::effects::{EffectError, procfs, reap, spawn};
use crate::log::{Level, Record};
use crate::machine::{ExitStatus, Instant};
use crate::watch::{Effect, Event, Reading, SignalNo, Watch};

/// How pidwatch was asked to run.
pub struct WatchSpec {
    pub pidfile: PathBuf,
    pub argv: Vec<String>,
    pub quiet: bool,
    /// Poll with `kill(pid, 0)` instead of subreaping. Forced where subreaping fails.
    pub poll: bool,
    /// `--exit-status`: exit with the watched service's final status.
    pub exit_status: bool,
}

struct Pidwatch {
    spec: WatchSpec,
    my_pid: u32,
    my_uid: u32,
    cmd: Option<Pid>,
    watch: Watch,
    signals: Signals,
    /// Changes to the pidfile as they happen; `None` while no inotify instance
    /// could be had (then the poll alone reads the pidfile).
    changes: Option<FileWatch>,
    /// Why the pidfile's directory is not watched was logged (once).
    said_unwatched: bool,
}

impl Pidwatch {
    fn say(&self, line: &str) {
        crate::log::logger().info("note", line);
    }

    /// An error, logged even when quiet.
    fn shout(&self, line: &str) {
        crate::log::logger().shout(Record::new(Level::Error, "error", line));
    }

    /// Watch the pidfile's directory if it is not watched yet (at start, then at
    /// every poll: it may appear later, or be replaced). pidwatch carries on
    /// polling meanwhile.
    fn watch_pidfile(&mut self) {
        let armed = match &mut self.changes {
            Some(w) if w.armed() => return,
            Some(w) => w.arm(),
            None => FileWatch::new(&self.spec.pidfile).and_then(|mut w| {
                let armed = w.arm();
                self.changes = Some(w);
                armed
            }),
        };
        if let Err(e) = armed {
            self.unwatched(&e);
        }
    }

    /// The pidfile cannot be watched: said the first time only (it is tried
    /// again at every poll).
    fn unwatched(&mut self, e: &EffectError) {
        if !self.said_unwatched {
            self.said_unwatched = true;
            crate::log::logger().warn(
                "pidfile_unwatched",
                format!(
                    "cannot watch for changes to {} ({e}); reading it every {} ms until it can be",
                    self.spec.pidfile.display(),
                    crate::watch::POLL_INTERVAL.as_millis()
                ),
            );
        }
    }

    /// Hand the queued changes to the pidfile, if any, to the machine.
    fn pidfile_changes(&mut self, now: Instant) -> Option<i32> {
        let drained = self.changes.as_mut()?.drain();
        match drained {
            Ok(Some(change)) => self.drive(
                now,
                Event::PidfileChanged {
                    written: change.written,
                },
            ),
            Ok(None) => None,
            Err(e) => {
                // Unreadable (it should not be): a fresh instance at the next
                // poll, rather than a busy loop on an fd that stays ready.
                self.changes = None;
                self.unwatched(&e);
                None
            }
        }
    }

    /// Judge what the pidfile names: only a live process we may signal is followed.
    fn reading(&self) -> Reading {
        let Ok(text) = std::fs::read_to_string(&self.spec.pidfile) else {
            return Reading::Missing;
        };
        let Some(pid) = text.trim().parse::<u32>().ok().filter(|p| *p > 1) else {
            return if text.trim().is_empty() {
                Reading::Missing
            } else {
                Reading::Garbage
            };
        };
        self.judge(pid)
    }

    /// Whether `pid` is a live process we may follow and signal.
    fn judge(&self, pid: u32) -> Reading {
        if pid == self.my_pid {
            return Reading::Foreign(pid);
        }
        if !procfs::alive(pid) {
            // Our own zombie is reported exited (with its status) before it is
            // reaped; until then it counts as followed, so a pidfile read in
            // between cannot end the watch before its status is known.
            if !self.spec.poll && procfs::zombie_child_of(pid, self.my_pid) {
                return Reading::Followable(pid);
            }
            return Reading::Dead(pid);
        }
        let ours = if self.spec.poll {
            procfs::uid(pid) == Some(self.my_uid)
        } else {
            procfs::descends_from(pid, self.my_pid)
        };
        if ours {
            Reading::Followable(pid)
        } else {
            Reading::Foreign(pid)
        }
    }

    /// Feed one event and carry out the effects; answers come back as events.
    fn drive(&mut self, now: Instant, event: Event) -> Option<i32> {
        let mut queue = std::collections::VecDeque::from([event]);
        let mut exit = None;
        while let Some(event) = queue.pop_front() {
            for effect in self.watch.step(now, event) {
                match effect {
                    Effect::SpawnCmd => {
                        let spawned = spawn::app(&spawn::AppSpec {
                            argv: &self.spec.argv,
                            env: &[],
                            workdir: None,
                            quiet_stdio: false,
                            ..Default::default()
                        });
                        match spawned {
                            Ok(pid) => self.cmd = Some(pid),
                            Err(e) => queue.push_back(Event::SpawnFailed(e.to_string())),
                        }
                    }
                    Effect::ReadPidfile => queue.push_back(Event::PidfileRead(self.reading())),
                    Effect::CheckPid(pid) => queue.push_back(Event::PidChecked(self.judge(pid))),
                    Effect::SignalPid { pid, signal } => {
                        self.send(Pid::from_raw(pid as i32), signal)
                    }
                    Effect::SignalCmd(signal) => {
                        if let Some(pid) = self.cmd {
                            self.send(pid, signal);
                        }
                    }
                    Effect::Log(line) => self.say(&line),
                    Effect::Error(line) => self.shout(&line),
                    Effect::Exit(code) => exit = Some(code),
                }
            }
        }
        exit
    }

    fn send(&self, pid: Pid, signal: SignalNo) {
        // SAFETY: kill(2) with plain integers (real-time signals included).
        if unsafe { libc::kill(pid.as_raw(), signal.0) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ESRCH) {
                self.say(&format!("cannot send {signal} to {pid}: {e}"));
            }
        }
    }
}

impl Driver for Pidwatch {
    type Tag = ();

    fn deadline(&self) -> Option<Instant> {
        self.watch.deadline()
    }

    fn on_fd(&mut self, now: Instant, _tag: ()) -> Option<i32> {
        self.pidfile_changes(now)
    }

    fn next_signal(&mut self) -> Option<(i32, u32, u32)> {
        self.signals.read()
    }

    fn on_signal(&mut self, now: Instant, sig: Signal, _from: u32, _uid: u32) -> Option<i32> {
        self.drive(now, Event::SignalReceived(sig.into()))
    }

    fn on_realtime_signal(&mut self, now: Instant, signo: i32) -> Option<i32> {
        self.drive(now, Event::SignalReceived(SignalNo(signo)))
    }

    fn next_exited(&mut self) -> Option<(Pid, ExitStatus)> {
        reap::peek()
    }

    fn on_exit(&mut self, now: Instant, pid: Pid, status: ExitStatus) -> Option<i32> {
        // A change queued before this exit is told first, even if it arrived
        // after poll returned: a successor that named itself and then died is
        // followed before its exit is seen.
        if let Some(code) = self.pidfile_changes(now) {
            return Some(code);
        }
        let raw = pid.as_raw() as u32;
        if self.cmd == Some(pid) {
            self.drive(now, Event::CmdExited { pid: raw, status })
        } else {
            self.drive(now, Event::OtherExited { pid: raw, status })
        }
    }

    fn reap(&mut self, pid: Pid) {
        reap::reap(pid);
        if self.cmd == Some(pid) {
            self.cmd = None;
        }
    }

    fn on_tick(&mut self, now: Instant) -> Option<i32> {
        self.watch_pidfile();
        self.drive(now, Event::Tick)
    }
}

impl Poll for Pidwatch {
    fn signalfd(&self) -> BorrowedFd<'_> {
        self.signals.as_fd()
    }

    fn fds(&self) -> Vec<((), BorrowedFd<'_>, PollFlags)> {
        self.changes
            .iter()
            .map(|w| ((), w.as_fd(), PollFlags::POLLIN))
            .collect()
    }
}

/// Run pidwatch until the watched service is gone; returns the exit status.
/// Signals must already be blocked.
pub fn run(mut spec: WatchSpec) -> Result<i32, EffectError> {
    let my_pid = std::process::id();
    if !spec.poll && nix::sys::prctl::set_child_subreaper(true).is_err() {
        crate::log::logger().warn(
            "subreaper_failed",
            "cannot become a child subreaper; polling instead",
        );
        spec.poll = true;
    }
    let signals = Signals::new()?;
    let clock = Clock::start();
    let exit_status = spec.exit_status;
    let mut driver = Pidwatch {
        my_uid: nix::unistd::getuid().as_raw(),
        spec,
        my_pid,
        cmd: None,
        watch: if exit_status {
            Watch::new().relaying_status()
        } else {
            Watch::new()
        },
        signals,
        changes: None,
        said_unwatched: false,
    };
    // Before CMD starts, so no write of the pidfile goes unseen.
    driver.watch_pidfile();
    if let Some(code) = driver.drive(clock.now(), Event::Started) {
        return Ok(code);
    }
    event_loop(&mut driver, &clock)
}
