//! What goes in ([`Event`], past tense) and what comes out ([`Effect`], imperative).

use serde::{Deserialize, Serialize};

use crate::Signal;

use super::types::{ClientId, ExitStatus, Inspection, Notify, ProcId, Reply, Request, Role};

/// Who sent a signal, as the runtime tells from the sender's pid.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sender {
    /// (Successor) the generation that started us.
    Predecessor,
    /// Anyone else: an operator, a service manager, the kernel.
    Other,
    /// Anyone else, with the pid and uid the kernel gave for the sender (for
    /// the log and the upgrade history; it means what `Other` means).
    Process(Origin),
}

/// A process that asked for something: the sender of a signal, a control
/// client (from its socket's peer credentials).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    pub pid: u32,
    pub uid: u32,
    /// It is (or, for a control client, was started by) the service manager:
    /// pid 1 or `$MANAGERPID`.
    pub manager: bool,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {}, uid {}", self.pid, self.uid)
    }
}

/// What started an upgrade, for the log and the upgrade history.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// The upgrade signal, from this sender.
    Signal {
        #[serde(with = "super::signal_name")]
        signal: Signal,
        from: Sender,
    },
    /// `psflip upgrade` over the control socket, from this client (its peer
    /// credentials, when the kernel gave them).
    Control(Option<Origin>),
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trigger::Signal {
                signal,
                from: Sender::Process(o),
            } if o.manager => write!(f, "{} from the service manager ({o})", signal.as_str()),
            Trigger::Signal {
                signal,
                from: Sender::Process(o),
            } => write!(f, "{} from {o}", signal.as_str()),
            Trigger::Signal { signal, .. } => f.write_str(signal.as_str()),
            Trigger::Control(Some(o)) if o.manager => {
                write!(f, "psflip upgrade ({o}) run by the service manager")
            }
            Trigger::Control(Some(o)) => write!(f, "psflip upgrade ({o})"),
            Trigger::Control(None) => f.write_str("psflip upgrade"),
        }
    }
}

/// One line of psflip's log: its level, a short stable name for the event
/// (`upgrade_failed`…), and the text for people.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct Log {
    pub level: crate::log::Level,
    pub event: &'static str,
    pub text: String,
    /// The processes the line is about, by role (`child`, `successor`): the
    /// runtime adds their pids.
    pub procs: Vec<(&'static str, ProcId)>,
    /// Facts for the JSON log's `fields` (the text already says them).
    pub fields: Vec<(&'static str, String)>,
}

impl Log {
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl std::ops::Deref for Log {
    type Target = str;
    fn deref(&self) -> &str {
        &self.text
    }
}

impl Event {
    /// A signal from anyone but the previous generation.
    pub fn signal(signal: Signal) -> Event {
        Event::SignalReceived {
            signal,
            from: Sender::Other,
        }
    }
}

/// Something that happened, reported by the runtime.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The configuration is loaded and the event loop runs: start the child.
    Started,
    /// psflip received this signal from `from` (never SIGCHLD: reaping produces
    /// `ProcessExited`). What it means — an upgrade, a stop, an aborted upgrade
    /// when the previous generation sends a termination signal — is the machine's
    /// call.
    SignalReceived {
        #[serde(with = "super::signal_name")]
        signal: Signal,
        from: Sender,
    },
    /// psflip received this real-time signal (SIGRTMIN…SIGRTMAX), which
    /// [`Signal`] cannot name: it is forwarded to the child like any other.
    RealtimeSignalReceived(i32),
    /// A process this machine started has exited (it is not reaped yet).
    ProcessExited { id: ProcId, status: ExitStatus },
    /// `Effect::Spawn` for this id succeeded: the process runs.
    Spawned { id: ProcId },
    /// `Effect::Spawn` for this id failed; the process never ran.
    SpawnFailed { id: ProcId, reason: String },
    /// A control client asked something; `from`: its peer credentials.
    ControlRequest {
        client: ClientId,
        request: Request,
        from: Option<Origin>,
    },
    /// The successor said why it gives up (it exits next).
    SuccessorFailed { id: ProcId, reason: String },
    /// The successor reported, over the readiness pipe, that its child is healthy and
    /// the pidfile names it.
    SuccessorReady { id: ProcId },
    /// (Successor only) the generation that started us has exited.
    PredecessorExited,
    /// `Effect::WritePidfile` succeeded.
    PidfileWritten,
    /// `Effect::WritePidfile` failed.
    PidfileFailed { reason: String },
    /// After `Effect::ProxyStopAccepting`: every connection this generation's proxy
    /// accepted has closed.
    ProxyDrained,
    /// (`[healthcheck.notify]`) a datagram arrived on the notify socket of the child
    /// `id`: whether it said `READY=1`, and its `STATUS=` text if any.
    ChildNotified {
        id: ProcId,
        ready: bool,
        status: Option<String>,
    },
    /// (`[healthcheck.docker]`) the answer to `Effect::InspectContainer`.
    ContainerInspected {
        container: String,
        inspection: Inspection,
    },
    /// The answer to `Effect::SignalEscaped`: how many processes it signalled.
    EscapedSignalled { count: usize },
    /// A process that re-parented to us (not one we started) was reaped; this
    /// many such processes still run.
    EscapedExited { remaining: usize },
    /// Time has passed; whatever is due at `now` happens.
    Tick,
}

/// Something the runtime must do, in order.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Start a process in this role; answer with `Spawned`, or `SpawnFailed` if it
    /// cannot start.
    Spawn { id: ProcId, role: Role },
    /// Send a signal to the process (or, with `group`, to the process group it leads).
    /// A process already gone is not an error.
    Signal {
        id: ProcId,
        #[serde(with = "super::signal_name")]
        signal: Signal,
        group: bool,
    },
    /// Send the real-time signal `signo` to the process.
    SignalRealtime { id: ProcId, signo: i32 },
    /// Atomically write psflip's own pid to the pidfile; answer with `PidfileWritten`
    /// or `PidfileFailed`.
    WritePidfile,
    /// Remove the pidfile if it still names this psflip, or `exited_successor` (a
    /// successor of ours that has exited: an upgrade aborted just as the successor
    /// wrote it). Never a live process's pidfile.
    RemovePidfile { exited_successor: Option<ProcId> },
    /// Make the control socket's name this generation's (binding the socket first
    /// if it is not bound yet, and atomically: a client finds the previous
    /// holder's socket or ours, never none). Emitted when this generation becomes
    /// the service, or serves again: a first generation once its first child runs,
    /// a successor right before `ReportReady`, an old generation that serves on
    /// after an upgrade (the successor may have taken the name before it went). A
    /// name already ours is left as it is.
    ClaimControl,
    /// (Successor only) tell the old generation we are ready.
    ReportReady,
    /// (Successor only) tell the old generation why we give up, before exiting.
    ReportFailure(String),
    /// Answer a control client and close its connection.
    Reply { client: ClientId, reply: Reply },
    /// Tell the service manager, if one listens.
    Notify(Notify),
    /// Start accepting connections on the proxy listeners (this generation's child is
    /// healthy; for a successor, right before it reports ready).
    ProxyAccept,
    /// Stop accepting on the proxy listeners (the successor accepts now) and let the
    /// open connections finish; answer with `ProxyDrained` once they have all closed.
    ProxyStopAccepting,
    /// Remove the Unix socket files of the proxy listeners and of the `[[listen]]`
    /// sockets: the service stops for good (this generation was the service and
    /// exits without having handed over).
    RemoveProxySockets,
    /// Remove the Unix socket files of the listeners the previous generation handed
    /// over and our configuration dropped: this generation is the service now.
    RemoveDroppedSockets,
    /// (`[healthcheck.docker]`) ask the Docker engine for the container's state;
    /// answer with `ContainerInspected`. Never two in flight.
    InspectContainer,
    /// Give up the inspection in flight: no `ContainerInspected` follows for it.
    AbandonInspection,
    /// Send `signal` to every process that re-parented to us (psflip is a child
    /// subreaper) and still runs — never to one we started; with SIGKILL, to the
    /// process group each leads too. Answer with `EscapedSignalled`.
    SignalEscaped {
        #[serde(with = "super::signal_name")]
        signal: Signal,
    },
    /// An upgrade starts (before the successor is spawned), for the history the
    /// service keeps and hands to its successor.
    UpgradeBegan(Trigger),
    /// The upgrade in flight ended (in a successor: the one that started it,
    /// when we take over).
    UpgradeEnded(Result<(), String>),
    /// Write a line to psflip's log (stderr) unless `quiet`.
    Log(Log),
    /// Exit psflip with this status.
    Exit(i32),
}
