//! psflip's event source: how one generation turns what the OS says happened into
//! machine events. [`Psflip`] is that decoding, written once over a [`Source`]:
//! the real one ([`super::Live`]: signalfd, waitid, pipes, sockets) and the
//! simulation's (`tests/sim`, a simulated kernel) both run it, through the same
//! [`super::turn`].
//!
//! A [`Source`] answers questions of fact (which signal is pending and who sent
//! it, which child exited, what the successor wrote…) and feeds events to the
//! machine; [`Psflip`] decides which events those facts are, and in which order:
//!
//! - the successor's pipe: why it gives up, then "ready", in one read;
//! - a child's exit: the successor's pipe, or the child's notify socket, is read
//!   *before* its exit is reported (a "ready" written just before dying counts);
//!   a process we did not start (adopted, we are a subreaper) is reported as
//!   `EscapedExited` only while the machine waits for those, with how many still
//!   run;
//! - a signal's sender: the generation that started us, another process, or the
//!   kernel — what it means is the machine's call;
//! - a `Tick` only when the machine's deadline has passed.

use nix::unistd::Pid;

use super::Driver;
use crate::Signal;
use crate::effects::notify::Message;
use crate::effects::readiness::Heard;
use crate::machine::{ClientId, Event, ExitStatus, Instant, Origin, ProcId, Request, Sender};

/// The fds psflip polls, in the order the loop polls (and so handles) them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PsflipFd {
    /// The readiness pipe of the successor in flight.
    Successor,
    /// (Successor) our end of the pipe to the previous generation.
    Predecessor,
    /// The proxy thread's news (its connections have all closed).
    Proxy,
    /// The app child's notify socket (`[healthcheck.notify]`).
    Notify,
    /// The Docker engine's connection (`[healthcheck.docker]`).
    Docker,
    /// The control socket's listener.
    Control,
    /// A control client.
    Client(ClientId),
}

/// What one psflip generation can be asked about the world, and its machine.
/// Answers are facts; no answer decides what an event means.
pub trait Source {
    /// Feed one event to the machine and carry out its effects
    /// ([`super::drive`]); the exit status once the machine asked to exit.
    fn feed(&mut self, now: Instant, event: Event) -> Option<i32>;
    /// The machine's deadline.
    fn machine_deadline(&self) -> Option<Instant>;
    /// The machine waits for escaped processes to exit.
    fn sweeping(&self) -> bool;

    /// The next pending signal: its number, its sender's pid and uid (pid 0: the
    /// kernel, or unknown).
    fn next_signal(&mut self) -> Option<(i32, u32, u32)>;
    /// The next exited child, still a zombie (its pid cannot be recycled).
    fn next_exited(&mut self) -> Option<(Pid, ExitStatus)>;
    /// Reap `pid` (from [`Source::next_exited`]) and forget it.
    fn reap(&mut self, pid: Pid);
    /// The process we started as `pid`, not reaped yet.
    fn id_of(&self, pid: Pid) -> Option<ProcId>;
    /// How many processes that re-parented to us (not started by us) still run.
    fn adopted(&self) -> usize;
    /// A child none of the machine's exited: if it is one the runtime keeps
    /// for itself (a standby successor), handle it and say so; the machine
    /// never hears of it.
    fn own_exited(&mut self, _pid: Pid, _status: ExitStatus) -> bool {
        false
    }
    /// (Successor) the pid of the generation that started us.
    fn predecessor_pid(&self) -> Option<u32>;
    /// The process `pid` of user `uid` that sent a signal, as the machine sees it.
    fn origin(&self, pid: u32, uid: u32) -> Origin;

    /// The successor whose readiness pipe is open.
    fn successor_pipe(&self) -> Option<ProcId>;
    /// Read that pipe (what it holds; whether the successor's end is closed, then
    /// the pipe is forgotten).
    fn hear_successor(&mut self) -> Heard;
    /// (`[healthcheck.notify]`) the child whose notify socket is open.
    fn child_notify(&self) -> Option<ProcId> {
        None
    }
    /// Read that socket: the messages that arrived, in order.
    fn hear_child(&mut self) -> Vec<Message> {
        Vec::new()
    }
    /// (`[healthcheck.docker]`) the inspection in flight answered.
    fn inspected(&mut self) -> Option<Event> {
        None
    }
    /// Accept the control clients waiting.
    fn accept_control(&mut self, now: Instant);
    /// Read from the control client: its request once whole (it then waits for
    /// the answer), with its credentials. A client that sent garbage or went
    /// away is dealt with here.
    fn receive(&mut self, client: ClientId) -> Option<(Request, Option<Origin>)>;
    /// (Successor) the pipe to the previous generation is closed at its end:
    /// stop polling it.
    fn predecessor_closed(&mut self);
    /// The proxy's connections have all closed (read its news).
    fn proxy_drained(&mut self) -> bool;
    /// Until when the control socket is not polled (out of fds or memory).
    fn paused_until(&self) -> Option<Instant> {
        None
    }
    /// The time is `now`: a pause that is over ends.
    fn resume(&mut self, _now: Instant) {}
}

/// psflip's generation as the event loop drives it: the decoding of what its
/// [`Source`] says happened into the machine's events.
pub struct Psflip<S>(pub S);

impl<S: Source> Psflip<S> {
    /// Read the successor's pipe and report what it said.
    fn hear_successor(&mut self, now: Instant) -> Option<i32> {
        let id = self.0.successor_pipe()?;
        let heard = self.0.hear_successor();
        if let Some(reason) = heard.failure
            && let Some(code) = self.0.feed(now, Event::SuccessorFailed { id, reason })
        {
            return Some(code);
        }
        if heard.ready {
            return self.0.feed(now, Event::SuccessorReady { id });
        }
        None
    }

    /// Read the child's notify socket and report what arrived, in order.
    fn hear_child(&mut self, now: Instant) -> Option<i32> {
        let id = self.0.child_notify()?;
        for message in self.0.hear_child() {
            let event = Event::ChildNotified {
                id,
                ready: message.ready,
                status: message.status,
            };
            if let Some(code) = self.0.feed(now, event) {
                return Some(code);
            }
        }
        None
    }
}

impl<S: Source> Driver for Psflip<S> {
    type Tag = PsflipFd;

    fn deadline(&self) -> Option<Instant> {
        // The machine's deadline, or the end of a pause of the control socket.
        match (self.0.machine_deadline(), self.0.paused_until()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn on_fd(&mut self, now: Instant, tag: PsflipFd) -> Option<i32> {
        match tag {
            PsflipFd::Successor => self.hear_successor(now),
            PsflipFd::Notify => self.hear_child(now),
            PsflipFd::Docker => {
                let event = self.0.inspected()?;
                self.0.feed(now, event)
            }
            PsflipFd::Control => {
                self.0.accept_control(now);
                None
            }
            PsflipFd::Client(client) => {
                let (request, from) = self.0.receive(client)?;
                let event = Event::ControlRequest {
                    client,
                    request,
                    from,
                };
                self.0.feed(now, event)
            }
            PsflipFd::Predecessor => {
                self.0.predecessor_closed();
                self.0.feed(now, Event::PredecessorExited)
            }
            PsflipFd::Proxy => {
                if !self.0.proxy_drained() {
                    return None;
                }
                self.0.feed(now, Event::ProxyDrained)
            }
        }
    }

    fn next_signal(&mut self) -> Option<(i32, u32, u32)> {
        self.0.next_signal()
    }

    fn on_signal(&mut self, now: Instant, signal: Signal, from: u32, uid: u32) -> Option<i32> {
        // Who sent it is a fact; what it means is the machine's call.
        let from = if from != 0 && self.0.predecessor_pid() == Some(from) {
            Sender::Predecessor
        } else if from != 0 {
            Sender::Process(self.0.origin(from, uid))
        } else {
            Sender::Other
        };
        self.0.feed(now, Event::SignalReceived { signal, from })
    }

    fn on_realtime_signal(&mut self, now: Instant, signo: i32) -> Option<i32> {
        self.0.feed(now, Event::RealtimeSignalReceived(signo))
    }

    fn next_exited(&mut self) -> Option<(Pid, ExitStatus)> {
        self.0.next_exited()
    }

    fn on_exit(&mut self, now: Instant, pid: Pid, status: ExitStatus) -> Option<i32> {
        let Some(id) = self.0.id_of(pid) else {
            if self.0.own_exited(pid, status) {
                return None;
            }
            // Not ours: a process that re-parented to us (we are a subreaper).
            // While the exit waits for those, say how many still run.
            if !self.0.sweeping() {
                return None;
            }
            let remaining = self.0.adopted();
            return self.0.feed(now, Event::EscapedExited { remaining });
        };
        if self.0.successor_pipe() == Some(id) {
            // A successor that wrote "ready" (or why it gave up) and died at once
            // has still said so: the pipe is read before its exit is reported.
            if let Some(code) = self.hear_successor(now) {
                return Some(code);
            }
        }
        if self.0.child_notify() == Some(id) {
            // Likewise a READY=1 sent just before the child died.
            if let Some(code) = self.hear_child(now) {
                return Some(code);
            }
        }
        self.0.feed(now, Event::ProcessExited { id, status })
    }

    fn reap(&mut self, pid: Pid) {
        self.0.reap(pid);
    }

    fn on_tick(&mut self, now: Instant) -> Option<i32> {
        self.0.resume(now);
        if self.0.machine_deadline().is_some_and(|t| t <= now) {
            return self.0.feed(now, Event::Tick);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    //! The decoding over a scripted source: the order of a turn, and which
    //! event each fact becomes. (The simulation runs it over a whole simulated
    //! kernel; these pin the rules one by one.)
    use super::*;
    use crate::runtime::turn;
    use std::collections::{BTreeMap, VecDeque};

    const SUCCESSOR: ProcId = ProcId(2);
    const CHILD: ProcId = ProcId(1);

    /// A world of facts, and the events fed, in order.
    #[derive(Default)]
    struct Script {
        fed: Vec<Event>,
        deadline: Option<Instant>,
        sweeping: bool,
        signals: VecDeque<(i32, u32, u32)>,
        zombies: Vec<(Pid, ExitStatus)>,
        ids: BTreeMap<i32, ProcId>,
        reaped: Vec<i32>,
        adopted: usize,
        pipe: Option<(ProcId, Heard)>,
        notify: Option<(ProcId, Vec<Message>)>,
        requests: BTreeMap<ClientId, Request>,
        accepted: u32,
        predecessor_open: bool,
        drained: bool,
    }

    impl Source for Script {
        fn feed(&mut self, _now: Instant, event: Event) -> Option<i32> {
            self.fed.push(event);
            None
        }
        fn machine_deadline(&self) -> Option<Instant> {
            self.deadline
        }
        fn sweeping(&self) -> bool {
            self.sweeping
        }
        fn next_signal(&mut self) -> Option<(i32, u32, u32)> {
            self.signals.pop_front()
        }
        fn next_exited(&mut self) -> Option<(Pid, ExitStatus)> {
            self.zombies.first().copied()
        }
        fn reap(&mut self, pid: Pid) {
            self.zombies.retain(|(p, _)| *p != pid);
            self.reaped.push(pid.as_raw());
            if let Some(id) = self.ids.remove(&pid.as_raw()) {
                self.pipe = self.pipe.take().filter(|(p, _)| *p != id);
            }
        }
        fn id_of(&self, pid: Pid) -> Option<ProcId> {
            self.ids.get(&pid.as_raw()).copied()
        }
        fn adopted(&self) -> usize {
            self.adopted
        }
        fn predecessor_pid(&self) -> Option<u32> {
            Some(7)
        }
        fn origin(&self, pid: u32, uid: u32) -> Origin {
            Origin {
                pid,
                uid,
                manager: pid == 1,
            }
        }
        fn successor_pipe(&self) -> Option<ProcId> {
            self.pipe.as_ref().map(|(id, _)| *id)
        }
        fn hear_successor(&mut self) -> Heard {
            self.pipe
                .as_mut()
                .map(|(_, heard)| std::mem::take(heard))
                .unwrap_or_default()
        }
        fn child_notify(&self) -> Option<ProcId> {
            self.notify.as_ref().map(|(id, _)| *id)
        }
        fn hear_child(&mut self) -> Vec<Message> {
            self.notify
                .as_mut()
                .map(|(_, m)| std::mem::take(m))
                .unwrap_or_default()
        }
        fn accept_control(&mut self, _now: Instant) {
            self.accepted += 1;
        }
        fn receive(&mut self, client: ClientId) -> Option<(Request, Option<Origin>)> {
            self.requests.remove(&client).map(|r| (r, None))
        }
        fn predecessor_closed(&mut self) {
            self.predecessor_open = false;
        }
        fn proxy_drained(&mut self) -> bool {
            std::mem::take(&mut self.drained)
        }
    }

    fn at(ms: u64) -> Instant {
        Instant::from_origin(std::time::Duration::from_millis(ms))
    }

    fn pid(p: i32) -> Pid {
        Pid::from_raw(p)
    }

    #[test]
    fn a_turn_takes_fds_then_signals_in_order_then_the_tick() {
        let mut s = Psflip(Script {
            deadline: Some(at(5)),
            signals: VecDeque::from([
                (libc::SIGHUP, 7, 0),
                (libc::SIGTERM, 1, 0),
                (libc::SIGUSR1, 0, 0),
                (libc::SIGRTMIN() + 2, 0, 0),
            ]),
            drained: true,
            predecessor_open: true,
            requests: BTreeMap::from([(ClientId(3), Request::Status)]),
            ..Script::default()
        });
        let ready = [
            PsflipFd::Predecessor,
            PsflipFd::Proxy,
            PsflipFd::Control,
            PsflipFd::Client(ClientId(3)),
        ];
        assert_eq!(turn(&mut s, at(5), &ready, true), None);
        let manager = Origin {
            pid: 1,
            uid: 0,
            manager: true,
        };
        assert_eq!(
            s.0.fed,
            vec![
                Event::PredecessorExited,
                Event::ProxyDrained,
                Event::ControlRequest {
                    client: ClientId(3),
                    request: Request::Status,
                    from: None
                },
                Event::SignalReceived {
                    signal: Signal::SIGHUP,
                    from: Sender::Predecessor
                },
                Event::SignalReceived {
                    signal: Signal::SIGTERM,
                    from: Sender::Process(manager)
                },
                Event::SignalReceived {
                    signal: Signal::SIGUSR1,
                    from: Sender::Other
                },
                Event::RealtimeSignalReceived(libc::SIGRTMIN() + 2),
                Event::Tick,
            ]
        );
        assert!(!s.0.predecessor_open);
        assert_eq!(s.0.accepted, 1);
        // Not due yet: no tick; signals not read unless the signalfd fired.
        s.0.fed.clear();
        s.0.signals.push_back((libc::SIGHUP, 0, 0));
        assert_eq!(turn(&mut s, at(4), &[], false), None);
        assert!(s.0.fed.is_empty());
    }

    #[test]
    fn what_a_dying_process_said_is_reported_before_its_exit() {
        let said = Heard {
            ready: true,
            failure: Some("bad config".into()),
            closed: true,
        };
        let ready = Message {
            ready: true,
            status: None,
        };
        let mut s = Psflip(Script {
            signals: VecDeque::from([(libc::SIGCHLD, 0, 0)]),
            zombies: vec![
                (pid(20), ExitStatus::Code(1)),
                (pid(10), ExitStatus::Code(0)),
            ],
            ids: BTreeMap::from([(20, SUCCESSOR), (10, CHILD)]),
            pipe: Some((SUCCESSOR, said)),
            notify: Some((CHILD, vec![ready])),
            ..Script::default()
        });
        assert_eq!(turn(&mut s, at(1), &[], true), None);
        assert_eq!(
            s.0.fed,
            vec![
                Event::SuccessorFailed {
                    id: SUCCESSOR,
                    reason: "bad config".into()
                },
                Event::SuccessorReady { id: SUCCESSOR },
                Event::ProcessExited {
                    id: SUCCESSOR,
                    status: ExitStatus::Code(1)
                },
                Event::ChildNotified {
                    id: CHILD,
                    ready: true,
                    status: None
                },
                Event::ProcessExited {
                    id: CHILD,
                    status: ExitStatus::Code(0)
                },
            ]
        );
        assert_eq!(s.0.reaped, vec![20, 10]);
    }

    #[test]
    fn an_adopted_process_exit_is_reported_only_while_sweeping() {
        let script = |sweeping| Script {
            sweeping,
            adopted: 2,
            signals: VecDeque::from([(libc::SIGCHLD, 0, 0)]),
            zombies: vec![(pid(30), ExitStatus::Code(0))],
            ..Script::default()
        };
        let mut s = Psflip(script(false));
        assert_eq!(turn(&mut s, at(1), &[], true), None);
        assert!(s.0.fed.is_empty());
        assert_eq!(s.0.reaped, vec![30], "reaped all the same");
        let mut s = Psflip(script(true));
        assert_eq!(turn(&mut s, at(1), &[], true), None);
        assert_eq!(s.0.fed, vec![Event::EscapedExited { remaining: 2 }]);
    }
}
