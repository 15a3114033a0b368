//! The one logger of psflip and pidwatch: the runtime, the proxy thread, the
//! probe process and pidwatch all write through it (SPEC §10 "Logs").
//!
//! 1. One line per event: `2026-11-30T15:04:05.123Z info gen=2 psflip[1234]: message`
//!    (UTC, milliseconds). Under journald (`JOURNAL_STREAM` names our stderr, by
//!    `st_dev:st_ino`) the timestamp goes and a syslog priority prefix `<3>`…`<7>`
//!    comes first, which journald turns into the entry's priority.
//! 2. `log_format = "json"`: one object per line with `time`, `level`,
//!    `generation`, `pid`, `event`, `message` and `fields`, for log shippers.
//! 3. Writing never blocks the caller (the event loop, the proxy thread). A line
//!    is first tried without blocking: on a pipe through our own opening of it
//!    (`/proc/self/fd/2` gives a file description of our own, so O_NONBLOCK
//!    there is not seen by the supervised child, which shares fd 2's), on a
//!    socket (journald) with MSG_DONTWAIT; files and terminals take it at once.
//!    Only when stderr would block does a writer thread start (once, so an idle
//!    psflip keeps one thread), and from then on lines go into a bounded queue
//!    that it empties with blocking writes. A stderr nobody reads fills the
//!    queue; further lines are dropped and counted, and once writing resumes one
//!    line says how many were lost. If the thread cannot be started (out of
//!    processes), the queue is drained without blocking at each later line.
//! 4. `quiet` silences everything but errors of pidwatch's kind ([`Logger::shout`]).
//!
//! Before [`init`] (and in short-lived processes such as the probe) the global
//! logger writes synchronously in text form.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// Syslog priorities, as journald reads them from a `<N>` prefix.
#[derive(serde::Serialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Error = 3,
    Warning = 4,
    Notice = 5,
    Info = 6,
    Debug = 7,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warning => "warning",
            Level::Notice => "notice",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

/// How lines are written (`log_format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    #[default]
    Text,
    Json,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "text" => Some(Format::Text),
            "json" => Some(Format::Json),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Json => "json",
        }
    }
}

/// One log event. `message` is for people and carries what they need (pids
/// included); `fields` repeat the facts for machines (JSON only).
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub level: Level,
    /// A short stable name: `child_started`, `upgrade_failed`…
    pub event: &'static str,
    pub message: String,
    pub fields: Vec<(&'static str, Value)>,
}

impl Record {
    pub fn new(level: Level, event: &'static str, message: impl Into<String>) -> Record {
        Record {
            level,
            event,
            message: message.into(),
            fields: Vec::new(),
        }
    }

    pub fn field(mut self, key: &'static str, value: impl Into<Value>) -> Record {
        self.fields.push((key, value.into()));
        self
    }
}

/// Most lines one queue holds, and most bytes: beyond either, lines are dropped.
const QUEUE_LINES: usize = 256;
const QUEUE_BYTES: usize = 64 * 1024;

/// How long [`flush`] waits for the writer at exit (a stderr nobody reads must
/// not keep psflip from exiting).
const FLUSH_WAIT: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Queue {
    lines: VecDeque<Vec<u8>>,
    bytes: usize,
    /// Lines dropped since the last report.
    dropped: u64,
    /// The writer is in the middle of a write.
    busy: bool,
    /// Whether the writer thread runs (or could not be started).
    writer: Writer,
    /// Lines wait in the queue until [`Logger::hold`] lets them go.
    held: bool,
}

#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum Writer {
    /// Not needed yet: lines are written without blocking by the caller.
    #[default]
    NotStarted,
    Running,
    /// The thread could not be started: the caller drains the queue.
    Failed,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Signalled when a line is queued and when the queue empties.
    changed: Condvar,
    sink: Sink,
}

/// How to write to fd 2 without blocking.
enum Sink {
    /// A file, a terminal, /dev/null: a write does not wait for a reader.
    Plain,
    /// Our own non-blocking opening of the pipe that fd 2 is.
    Pipe(std::os::fd::OwnedFd),
    /// A socket (journald's stream): `send` with MSG_DONTWAIT.
    Socket,
}

impl Sink {
    /// What fd 2 is, and a way to write to it without blocking; `None` when
    /// there is none (then every line goes through the writer thread).
    fn for_stderr() -> Option<Sink> {
        use nix::sys::stat::{SFlag, fstat};
        let st = fstat(std::io::stderr()).ok()?;
        let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
        if kind == SFlag::S_IFIFO {
            let pipe = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open("/proc/self/fd/2")
                .ok()?;
            Some(Sink::Pipe(pipe.into()))
        } else if kind == SFlag::S_IFSOCK {
            Some(Sink::Socket)
        } else {
            Some(Sink::Plain)
        }
    }

    /// Write what can be written now: the number of bytes taken (all of them
    /// when stderr is broken: such lines are lost, not retried).
    fn try_write(&self, bytes: &[u8]) -> usize {
        use std::os::fd::AsRawFd;
        loop {
            // SAFETY: write(2)/send(2) from a valid buffer of the given length.
            let n = unsafe {
                match self {
                    Sink::Plain => {
                        write_all(bytes);
                        return bytes.len();
                    }
                    Sink::Pipe(fd) => {
                        libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len())
                    }
                    Sink::Socket => libc::send(
                        2,
                        bytes.as_ptr().cast(),
                        bytes.len(),
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    ),
                }
            };
            if n >= 0 {
                return n as usize;
            }
            match std::io::Error::last_os_error().kind() {
                std::io::ErrorKind::Interrupted => continue,
                std::io::ErrorKind::WouldBlock => return 0,
                _ => return bytes.len(),
            }
        }
    }
}

/// Where lines go and how they look; cheap to clone (the proxy thread holds one).
#[derive(Clone)]
pub struct Logger {
    program: &'static str,
    pid: u32,
    generation: Option<u64>,
    format: Format,
    journal: bool,
    quiet: bool,
    /// `None`: write synchronously (no writer thread).
    shared: Option<Arc<Shared>>,
}

impl Logger {
    /// A synchronous text logger for `program` (used before [`init`]).
    pub fn plain(program: &'static str) -> Logger {
        Logger {
            program,
            pid: std::process::id(),
            generation: None,
            format: Format::Text,
            journal: stderr_is_journal(),
            quiet: false,
            shared: None,
        }
    }

    /// Log under another pid (the probe logs as the psflip it checks for).
    pub fn with_pid(mut self, pid: u32) -> Logger {
        self.pid = pid;
        self
    }

    pub fn with_generation(mut self, generation: Option<u64>) -> Logger {
        self.generation = generation;
        self
    }

    pub fn with_format(mut self, format: Format) -> Logger {
        self.format = format;
        self
    }

    pub fn with_quiet(mut self, quiet: bool) -> Logger {
        self.quiet = quiet;
        self
    }

    /// Force journald mode on or off (tests; normally read from the environment).
    pub fn with_journal(mut self, journal: bool) -> Logger {
        self.journal = journal;
        self
    }

    /// Never block on stderr from now on (see the module doc, step 3): lines
    /// are written without blocking, and a writer thread starts the first time
    /// stderr would block. Signals must already be blocked: the thread, started
    /// from whichever thread logs, inherits that thread's mask.
    pub fn non_blocking(mut self) -> Logger {
        let sink = Sink::for_stderr();
        let always_thread = sink.is_none();
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            changed: Condvar::new(),
            sink: sink.unwrap_or(Sink::Plain),
        });
        self.shared = Some(shared);
        if always_thread {
            let shared = self.shared.clone().expect("just set");
            let mut q = lock(&shared.queue);
            self.start_writer(&shared, &mut q);
            if q.writer == Writer::Failed {
                // Neither a thread nor a non-blocking way: write synchronously.
                drop(q);
                self.shared = None;
            }
        }
        self
    }

    /// Start the writer thread (once).
    fn start_writer(&self, shared: &Arc<Shared>, q: &mut Queue) {
        if q.writer != Writer::NotStarted {
            return;
        }
        let for_thread = Arc::clone(shared);
        let me = self.clone();
        let started = std::thread::Builder::new()
            .name("psflip-log".to_owned())
            .spawn(move || me.writer(&for_thread));
        q.writer = if started.is_ok() {
            Writer::Running
        } else {
            Writer::Failed
        };
    }

    /// (No writer thread) write queued lines, then the dropped-lines report,
    /// while stderr takes them: whether the queue is now empty.
    fn drain_without_blocking(&self, shared: &Shared, q: &mut Queue) -> bool {
        while let Some(line) = q.lines.front_mut() {
            let n = shared.sink.try_write(line);
            q.bytes -= n;
            if n < line.len() {
                line.drain(..n);
                return false;
            }
            q.lines.pop_front();
        }
        if q.dropped > 0 {
            let report = self.dropped_report(q.dropped);
            let n = shared.sink.try_write(report.as_bytes());
            if n < report.len() {
                // Keep the rest of the report as a line of its own.
                q.dropped = 0;
                q.bytes += report.len() - n;
                q.lines.push_back(report.as_bytes()[n..].to_vec());
                return false;
            }
            q.dropped = 0;
        }
        true
    }

    pub fn format(&self) -> Format {
        self.format
    }

    pub fn journal(&self) -> bool {
        self.journal
    }

    /// Log `record` unless quiet.
    pub fn log(&self, record: Record) {
        if !self.quiet {
            self.emit(&record);
        }
    }

    /// Log `record` even when quiet.
    pub fn shout(&self, record: Record) {
        self.emit(&record);
    }

    pub fn info(&self, event: &'static str, message: impl Into<String>) {
        self.log(Record::new(Level::Info, event, message));
    }

    pub fn warn(&self, event: &'static str, message: impl Into<String>) {
        self.log(Record::new(Level::Warning, event, message));
    }

    pub fn error(&self, event: &'static str, message: impl Into<String>) {
        self.log(Record::new(Level::Error, event, message));
    }

    fn emit(&self, record: &Record) {
        let line = self.render(record, SystemTime::now());
        match &self.shared {
            None => write_all(line.as_bytes()),
            Some(shared) => {
                let mut q = lock(&shared.queue);
                if q.writer != Writer::Running
                    && !q.held
                    && self.drain_without_blocking(shared, &mut q)
                {
                    let n = shared.sink.try_write(line.as_bytes());
                    if n == line.len() {
                        return;
                    }
                    // stderr would block: the rest waits for the writer thread.
                    q.bytes += line.len() - n;
                    q.lines.push_back(line.as_bytes()[n..].to_vec());
                    self.start_writer(shared, &mut q);
                    shared.changed.notify_all();
                    return;
                }
                let full = |q: &Queue, extra: usize| {
                    q.lines.len() >= QUEUE_LINES || q.bytes + extra > QUEUE_BYTES
                };
                if full(&q, line.len()) {
                    q.dropped += 1;
                    return;
                }
                if q.dropped > 0 {
                    // Writing resumed: say what was lost, where it was lost.
                    let report = self.dropped_report(q.dropped);
                    if full(&q, line.len() + report.len()) {
                        q.dropped += 1;
                        return;
                    }
                    q.dropped = 0;
                    q.bytes += report.len();
                    q.lines.push_back(report.into_bytes());
                }
                q.bytes += line.len();
                q.lines.push_back(line.into_bytes());
                shared.changed.notify_all();
            }
        }
    }

    /// Keep lines back (`true`: they queue, as when stderr would block) or let
    /// them go (`false`: written now, in order, without blocking; what stderr
    /// does not take waits for the writer thread). The runtime holds them while
    /// it starts a process. Nothing changes once the writer thread runs.
    pub fn hold(&self, on: bool) {
        let Some(shared) = &self.shared else {
            return;
        };
        let mut q = lock(&shared.queue);
        q.held = on;
        if !on && q.writer != Writer::Running && !self.drain_without_blocking(shared, &mut q) {
            self.start_writer(shared, &mut q);
            shared.changed.notify_all();
        }
    }

    /// The writer thread: blocking writes of queued lines, one at a time; after
    /// a write, a report of the lines dropped meanwhile.
    fn writer(&self, shared: &Shared) {
        let mut q = lock(&shared.queue);
        loop {
            if q.dropped > 0 && q.lines.is_empty() {
                let line = self.dropped_report(std::mem::take(&mut q.dropped));
                q.busy = true;
                drop(q);
                write_all(line.as_bytes());
                q = lock(&shared.queue);
                q.busy = false;
                continue;
            }
            let Some(line) = q.lines.pop_front() else {
                shared.changed.notify_all();
                q = shared
                    .changed
                    .wait(q)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                continue;
            };
            q.bytes -= line.len();
            q.busy = true;
            drop(q);
            write_all(&line);
            q = lock(&shared.queue);
            q.busy = false;
        }
    }

    fn dropped_report(&self, n: u64) -> String {
        let what = if n == 1 { "line" } else { "lines" };
        let record = Record::new(
            Level::Warning,
            "log_lines_dropped",
            format!("{n} log {what} dropped: stderr was not being read"),
        )
        .field("dropped", n);
        self.render(&record, SystemTime::now())
    }

    /// Wait (at most `wait`) until every queued line is written.
    pub fn flush(&self, wait: Duration) {
        let Some(shared) = &self.shared else {
            return;
        };
        if lock(&shared.queue).writer != Writer::Running {
            // Nothing is queued for a thread; what a failed start left queued
            // gets one more try.
            let mut q = lock(&shared.queue);
            self.drain_without_blocking(shared, &mut q);
            return;
        }
        let deadline = std::time::Instant::now() + wait;
        let mut q = lock(&shared.queue);
        while !q.lines.is_empty() || q.busy || q.dropped > 0 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            q = shared
                .changed
                .wait_timeout(q, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// The line for `record`, newline included.
    pub fn render(&self, record: &Record, now: SystemTime) -> String {
        let mut line = String::with_capacity(96 + record.message.len());
        if self.journal {
            let _ = write!(line, "<{}>", record.level as u8);
        }
        match self.format {
            Format::Text => {
                if !self.journal {
                    line.push_str(&utc_timestamp(now));
                    line.push(' ');
                    line.push_str(record.level.as_str());
                    line.push(' ');
                }
                if let Some(g) = self.generation {
                    let _ = write!(line, "gen={g} ");
                }
                let _ = write!(line, "{}[{}]: ", self.program, self.pid);
                // One event, one line, whatever the message holds.
                line.extend(
                    record
                        .message
                        .chars()
                        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c }),
                );
            }
            Format::Json => {
                let mut obj = serde_json::Map::new();
                obj.insert("time".into(), utc_timestamp(now).into());
                obj.insert("level".into(), record.level.as_str().into());
                obj.insert("program".into(), self.program.into());
                obj.insert(
                    "generation".into(),
                    self.generation.map_or(Value::Null, Value::from),
                );
                obj.insert("pid".into(), self.pid.into());
                obj.insert("event".into(), record.event.into());
                obj.insert("message".into(), record.message.clone().into());
                let fields: serde_json::Map<String, Value> = record
                    .fields
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), v.clone()))
                    .collect();
                obj.insert("fields".into(), Value::Object(fields));
                line.push_str(&Value::Object(obj).to_string());
            }
        }
        line.push('\n');
        line
    }
}

fn lock(m: &Mutex<Queue>) -> std::sync::MutexGuard<'_, Queue> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// All of `bytes` to fd 2, retrying on EINTR; a closed or broken stderr must
/// not take us down, so errors end the write silently.
fn write_all(mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: write(2) from a valid buffer of the given length.
        let n = unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if n == 0 {
            return;
        }
        bytes = &bytes[n as usize..];
    }
}

/// Whether `JOURNAL_STREAM` (`<st_dev>:<st_ino>`, as systemd sets it) names the
/// file our stderr is: only then is stderr journald's stream, and not, say, a
/// pipe a child of the service set up.
pub fn stderr_is_journal() -> bool {
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    use std::os::fd::AsFd;
    match nix::sys::stat::fstat(std::io::stderr().as_fd()) {
        Ok(st) => st.st_dev == dev && st.st_ino == ino,
        Err(_) => false,
    }
}

/// `2026-11-30T15:04:05.123Z`.
pub fn utc_timestamp(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

static GLOBAL: OnceLock<Logger> = OnceLock::new();

/// Make `logger` the process's logger. Only the first call counts.
pub fn init(logger: Logger) {
    let _ = GLOBAL.set(logger);
}

/// The process's logger: the one given to [`init`], or a synchronous text one.
pub fn logger() -> &'static Logger {
    GLOBAL.get_or_init(|| Logger::plain(program_name()))
}

/// Wait briefly for the writer thread to write what is queued (before exit).
pub fn flush() {
    if let Some(l) = GLOBAL.get() {
        l.flush(FLUSH_WAIT);
    }
}

fn program_name() -> &'static str {
    let arg0 = crate::sys::args_os().first().cloned().unwrap_or_default();
    match std::path::Path::new(&arg0)
        .file_name()
        .and_then(|n| n.to_str())
    {
        Some("pidwatch") => "pidwatch",
        _ => "psflip",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(ms)
    }

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        // `date -u -d @951825600` (a leap day) and `date -u -d @0`.
        assert_eq!(
            utc_timestamp(at(951_825_600, 7)),
            "2000-02-29T12:00:00.007Z"
        );
        assert_eq!(utc_timestamp(at(0, 0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            utc_timestamp(at(1_796_051_045, 999)),
            "2026-11-30T15:04:05.999Z"
        );
    }

    fn logger(format: Format, journal: bool) -> Logger {
        Logger::plain("psflip")
            .with_pid(42)
            .with_generation(Some(3))
            .with_format(format)
            .with_journal(journal)
    }

    #[test]
    fn text_lines_carry_time_level_generation_and_pid() {
        let r = Record::new(Level::Warning, "x", "two\nlines");
        let line = logger(Format::Text, false).render(&r, at(0, 0));
        assert_eq!(
            line,
            "1970-01-01T00:00:00.000Z warning gen=3 psflip[42]: two lines\n"
        );
    }

    #[test]
    fn journald_lines_have_a_priority_and_no_time() {
        let r = Record::new(Level::Error, "x", "boom");
        let line = logger(Format::Text, true).render(&r, at(0, 0));
        assert_eq!(line, "<3>gen=3 psflip[42]: boom\n");
    }

    #[test]
    fn json_lines_are_one_object() {
        let r = Record::new(Level::Info, "child_started", "started child (pid 7)").field("pid", 7);
        let line = logger(Format::Json, false).render(&r, at(0, 0));
        assert_eq!(line.matches('\n').count(), 1);
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["level"], "info");
        assert_eq!(v["generation"], 3);
        assert_eq!(v["pid"], 42);
        assert_eq!(v["event"], "child_started");
        assert_eq!(v["fields"]["pid"], 7);
    }
}
