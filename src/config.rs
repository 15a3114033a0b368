//! The TOML configuration (SPEC §2): parsing, template expansion, validation.
//!
//! Why it is shaped this way:
//!
//! 1. Every generation re-reads the file, so a configuration error must be
//!    caught before a child is started, and the message must lead the user
//!    straight to the spot: it names the file, the dotted key (`cmd[2]`,
//!    `shutdown.timeout`) and the line and column.
//! 2. A typo must never fall back to a default, so every table is
//!    `deny_unknown_fields`, and the features of the design that are not built
//!    yet (`[[listen]]`, `[healthcheck.notify]`, …) are recognised and
//!    refused by name rather than reported as unknown keys.
//! 3. The result, [`Config`], is plain comparable data with every template
//!    expanded and every default filled in: the rest of psflip never sees TOML
//!    or templates. [`Config::to_resolved_toml`] prints it back (for
//!    `psflip check`) in a form that parses to the same `Config`.
//!
//! Parsing goes in three passes over one parsed document: the shape check
//! ([`check_shape`]: tables are tables, unsupported features), serde into raw
//! structs that keep every string's span, and resolution (templates, durations,
//! signals, cross-field rules). Everything outside the file that expansion
//! depends on comes in through [`LoadOptions`].

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{MapAccess, SeqAccess, Visitor};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::Signal;
use crate::template::{self, Context, TemplateError};
pub use crate::values::{Endpoint, format_duration, parse_duration, parse_signal};
use crate::values::{HttpUrl, StatusPattern};

/// Default `upgrade.signal`.
pub const DEFAULT_UPGRADE_SIGNAL: Signal = Signal::SIGHUP;
/// Default `upgrade.timeout`.
pub const DEFAULT_UPGRADE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `shutdown.delay`.
pub const DEFAULT_SHUTDOWN_DELAY: Duration = Duration::ZERO;
/// Default `shutdown.signal`.
pub const DEFAULT_SHUTDOWN_SIGNAL: Signal = Signal::SIGTERM;
/// Default `shutdown.timeout`.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `healthcheck.alive.timeout`, also used when no healthcheck is configured.
pub const DEFAULT_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `healthcheck.command.after`.
pub const DEFAULT_COMMAND_AFTER: Duration = Duration::ZERO;
/// Default `healthcheck.command.interval`.
pub const DEFAULT_COMMAND_INTERVAL: Duration = Duration::from_secs(1);
/// Default `healthcheck.tcp.interval`.
pub const DEFAULT_TCP_INTERVAL: Duration = Duration::from_millis(100);
/// Default `healthcheck.http.interval`.
pub const DEFAULT_HTTP_INTERVAL: Duration = Duration::from_millis(250);

/// A fully resolved configuration: templates expanded, defaults filled in,
/// validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The configuration file, as given (not canonicalised).
    pub path: PathBuf,
    /// The child's command line; never empty, and `cmd[0]` is never empty.
    pub cmd: Vec<String>,
    /// The child's working directory, as written: relative paths are relative
    /// to psflip's initial working directory (the runtime resolves them).
    pub workdir: Option<PathBuf>,
    /// Extra environment for the child, in file order (a later duplicate wins
    /// when applied). Keys are non-empty and contain no `=`.
    pub env: Vec<(String, String)>,
    /// Where the active psflip writes its pid.
    pub pidfile: Option<PathBuf>,
    /// The control socket's path, when set; otherwise a name derived from the
    /// configuration's path in psflip's user's private directory (see
    /// `effects::control::default_path`).
    pub control_socket: Option<PathBuf>,
    /// Suppress psflip's own log lines.
    pub quiet: bool,
    /// The expanded `[locals]`.
    pub locals: BTreeMap<String, String>,
    /// `[upgrade]`.
    pub upgrade: UpgradeConfig,
    /// `[shutdown]`: how the old child is stopped after a successful upgrade.
    pub shutdown: ShutdownConfig,
    /// When a new child counts as healthy.
    pub healthcheck: HealthCheck,
    /// `[[proxy]]`, in file order; no two share a `listen` address.
    pub proxy: Vec<ProxyConfig>,
}

/// One `[[proxy]]`: every connection accepted on `listen` is forwarded to `forward`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Where psflip listens (bound once, inherited by every successor).
    pub listen: Endpoint,
    /// Where each connection is forwarded (never port 0).
    pub forward: Endpoint,
}

/// `[upgrade]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeConfig {
    /// The upgrade signal; never forwarded to the child. Never SIGKILL,
    /// SIGSTOP (uncatchable) or SIGCHLD (psflip's own child-exit notice).
    pub signal: Signal,
    /// The new child must be healthy within this, counted from its spawn; > 0.
    pub timeout: Duration,
}

impl Default for UpgradeConfig {
    fn default() -> Self {
        Self {
            signal: DEFAULT_UPGRADE_SIGNAL,
            timeout: DEFAULT_UPGRADE_TIMEOUT,
        }
    }
}

/// `[shutdown]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownConfig {
    /// Wait this long after the successor is ready before signalling the old child.
    pub delay: Duration,
    /// Sent to the old child.
    pub signal: Signal,
    /// SIGKILL the old child's process group this long after `signal`.
    pub timeout: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            delay: DEFAULT_SHUTDOWN_DELAY,
            signal: DEFAULT_SHUTDOWN_SIGNAL,
            timeout: DEFAULT_SHUTDOWN_TIMEOUT,
        }
    }
}

/// The healthcheck: at most one is configured; none means `Alive` with 5 s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheck {
    /// `[healthcheck.alive]`: healthy once the child has survived `timeout`
    /// (always shorter than `upgrade.timeout`).
    Alive {
        /// How long the child must stay alive.
        timeout: Duration,
    },
    /// `[healthcheck.command]`: healthy when `cmd` exits 0; it runs first
    /// `after` the spawn, then every `interval`, never two runs at once.
    Command {
        /// The check's command line; never empty, `cmd[0]` never empty.
        cmd: Vec<String>,
        /// Delay before the first run (shorter than `upgrade.timeout`).
        after: Duration,
        /// Delay between runs; > 0.
        interval: Duration,
    },
    /// `[healthcheck.tcp]`: healthy once a connection to `address` is
    /// accepted; tried at the spawn, then every `interval`.
    Tcp {
        /// A TCP address (never port 0) or a Unix socket (relative paths are
        /// relative to psflip's initial working directory).
        address: Endpoint,
        /// Delay between tries; > 0, shorter than `upgrade.timeout`.
        interval: Duration,
    },
    /// `[healthcheck.http]`: healthy once `GET url` answers with a status that
    /// `status` matches; tried at the spawn, then every `interval`.
    Http {
        /// An `http://` URL.
        url: HttpUrl,
        /// The healthy statuses (`2xx` unless configured).
        status: StatusPattern,
        /// Delay between tries; > 0, shorter than `upgrade.timeout`.
        interval: Duration,
    },
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck::Alive {
            timeout: DEFAULT_ALIVE_TIMEOUT,
        }
    }
}

/// An environment lookup: the value of a variable, `None` when unset.
pub type EnvLookup = dyn Fn(&str) -> Option<String> + Send + Sync;

/// What template expansion may depend on besides the file itself.
///
/// The runtime builds it once per generation: `ab_second` from
/// `PSFLIP_AB_FLAG`, `now_unix_secs` from its clock, `base_dir` from its
/// initial working directory. Tests replace `env` with a map.
pub struct LoadOptions {
    /// `false` in the first generation (`AB "a" "b"` yields `a`), then alternating.
    pub ab_second: bool,
    /// This generation's start time (`Now`, `UTCNow`), seconds since the epoch.
    pub now_unix_secs: i64,
    /// Relative `Cat` paths resolve against this.
    pub base_dir: PathBuf,
    /// Environment lookup for `Env` and `EnvDefault`.
    pub env: Box<EnvLookup>,
}

impl LoadOptions {
    /// Options reading the real process environment (a variable whose value
    /// is not UTF-8 counts as unset).
    pub fn new(ab_second: bool, now_unix_secs: i64, base_dir: PathBuf) -> Self {
        Self {
            ab_second,
            now_unix_secs,
            base_dir,
            env: Box::new(|key| std::env::var(key).ok()),
        }
    }

    /// Options for the generation starting now, in this process: the real
    /// environment, the wall clock, and the current directory as `base_dir`
    /// (`.` if it cannot be determined, which still resolves against it).
    /// For the binary's start-up, the one place that reads the outside world.
    pub fn from_process(ab_second: bool) -> Self {
        let now_unix_secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let base_dir = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        Self::new(ab_second, now_unix_secs, base_dir)
    }

    /// Replaces the environment lookup (tests inject a map).
    pub fn with_env(
        mut self,
        env: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.env = Box::new(env);
        self
    }
}

impl fmt::Debug for LoadOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadOptions")
            .field("ab_second", &self.ab_second)
            .field("now_unix_secs", &self.now_unix_secs)
            .field("base_dir", &self.base_dir)
            .finish_non_exhaustive()
    }
}

/// A 1-based line and column (in characters) in the configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
}

/// A configuration error. Displays as
/// `FILE[:LINE:COLUMN]: [KEY: ]MESSAGE`, e.g.
/// `psflip.toml:7:11: shutdown.timeout: invalid duration "10 s": unknown unit " s" …`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}", location(.path, .position, .key), .kind)]
pub struct ConfigError {
    /// The configuration file, as given.
    pub path: PathBuf,
    /// Where in the file, when known.
    pub position: Option<Position>,
    /// The dotted key (`cmd[2]`, `shutdown.timeout`), when one is to blame.
    pub key: Option<String>,
    /// What is wrong (boxed to keep `Result<_, ConfigError>` small).
    pub kind: Box<ConfigErrorKind>,
}

/// What is wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigErrorKind {
    /// The file could not be read.
    #[error("cannot read: {reason}")]
    Read {
        /// E.g. "No such file or directory".
        reason: String,
    },
    /// Not valid TOML (the TOML parser's message).
    #[error("{message}")]
    Syntax {
        /// The parser's message.
        message: String,
    },
    /// A key that psflip does not know.
    #[error("unknown key `{key}` in {table} ({expected})")]
    UnknownKey {
        /// The key as written.
        key: String,
        /// `the top level` or `[shutdown]`.
        table: String,
        /// `expected one of `cmd`, …`.
        expected: String,
    },
    /// A part of the design that is not implemented yet.
    #[error("`{feature}` is not supported yet")]
    Unsupported {
        /// The dotted key, e.g. `healthcheck.notify`.
        feature: String,
    },
    /// A template in the value could not be expanded.
    #[error("template: {0}")]
    Template(TemplateError),
    /// Not a Go duration.
    #[error("invalid duration {value:?}: {reason}")]
    Duration {
        /// The value, templates expanded.
        value: String,
        /// Why.
        reason: String,
    },
    /// Not a signal name, or not allowed here.
    #[error("invalid signal {value:?}: {reason}")]
    Signal {
        /// The value, templates expanded.
        value: String,
        /// Why.
        reason: String,
    },
    /// Any other invalid value or combination of values.
    #[error("{0}")]
    Invalid(String),
}

/// The `FILE[:LINE:COL]: [KEY: ]` prefix of a [`ConfigError`].
fn location(path: &Path, position: &Option<Position>, key: &Option<String>) -> String {
    let mut out = path.display().to_string();
    if let Some(p) = position {
        out.push_str(&format!(":{}:{}", p.line, p.column));
    }
    out.push_str(": ");
    if let Some(key) = key {
        out.push_str(key);
        out.push_str(": ");
    }
    out
}

/// Reads and resolves the configuration file at `path`.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<Config, ConfigError> {
    let error = |reason: String| ConfigError {
        path: path.to_owned(),
        position: None,
        key: None,
        kind: Box::new(ConfigErrorKind::Read { reason }),
    };
    let bytes = std::fs::read(path).map_err(|e| error(template::io_reason(&e)))?;
    let text = String::from_utf8(bytes).map_err(|_| error("file is not valid UTF-8".to_owned()))?;
    parse(&text, path, opts)
}

/// Parses and resolves configuration `text`; `path` is only used in errors
/// and as [`Config::path`].
pub fn parse(text: &str, path: &Path, opts: &LoadOptions) -> Result<Config, ConfigError> {
    let src = Source { text, path };
    let document = DeTable::parse(text).map_err(|e| {
        src.error(
            e.span(),
            None,
            ConfigErrorKind::Syntax {
                message: e.message().to_owned(),
            },
        )
    })?;
    let root = document.get_ref();
    check_shape(&src, root)?;
    let raw = RawConfig::deserialize(toml::de::Deserializer::from(document.clone()))
        .map_err(|e| src.serde_error(&e, root))?;
    resolve(&src, root, raw, opts)
}

impl Config {
    /// The resolved configuration as TOML, for `psflip check`: every key
    /// explicit, durations in Go syntax, signals as `SIGNAME`. Values are
    /// template-escaped, so [`parse`] turns this text back into an equal
    /// `Config` (given the same path).
    pub fn to_resolved_toml(&self) -> String {
        let mut out = format!(
            "# psflip: resolved configuration of {:?}\n",
            self.path.display().to_string()
        );
        out.push_str(&format!("cmd = {}\n", toml_array(&self.cmd)));
        if let Some(workdir) = &self.workdir {
            out.push_str(&format!(
                "workdir = {}\n",
                toml_string(&workdir.to_string_lossy())
            ));
        }
        if !self.env.is_empty() {
            let pairs: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push_str(&format!("env = {}\n", toml_array(&pairs)));
        }
        if let Some(pidfile) = &self.pidfile {
            out.push_str(&format!(
                "pidfile = {}\n",
                toml_string(&pidfile.to_string_lossy())
            ));
        }
        if let Some(socket) = &self.control_socket {
            out.push_str(&format!(
                "control_socket = {}\n",
                toml_string(&socket.to_string_lossy())
            ));
        }
        out.push_str(&format!("quiet = {}\n", self.quiet));
        if !self.locals.is_empty() {
            out.push_str("\n[locals]\n");
            for (name, value) in &self.locals {
                out.push_str(&format!("{} = {}\n", toml_key(name), toml_string(value)));
            }
        }
        out.push_str(&format!(
            "\n[upgrade]\nsignal = \"{}\"\ntimeout = \"{}\"\n",
            self.upgrade.signal.as_str(),
            format_duration(self.upgrade.timeout)
        ));
        out.push_str(&format!(
            "\n[shutdown]\ndelay = \"{}\"\nsignal = \"{}\"\ntimeout = \"{}\"\n",
            format_duration(self.shutdown.delay),
            self.shutdown.signal.as_str(),
            format_duration(self.shutdown.timeout)
        ));
        match &self.healthcheck {
            HealthCheck::Alive { timeout } => out.push_str(&format!(
                "\n[healthcheck.alive]\ntimeout = \"{}\"\n",
                format_duration(*timeout)
            )),
            HealthCheck::Command {
                cmd,
                after,
                interval,
            } => out.push_str(&format!(
                "\n[healthcheck.command]\ncmd = {}\nafter = \"{}\"\ninterval = \"{}\"\n",
                toml_array(cmd),
                format_duration(*after),
                format_duration(*interval)
            )),
            HealthCheck::Tcp { address, interval } => out.push_str(&format!(
                "\n[healthcheck.tcp]\naddress = {}\ninterval = \"{}\"\n",
                toml_string(&address.to_string()),
                format_duration(*interval)
            )),
            HealthCheck::Http {
                url,
                status,
                interval,
            } => out.push_str(&format!(
                "\n[healthcheck.http]\nurl = {}\nstatus = {}\ninterval = \"{}\"\n",
                toml_string(&url.to_string()),
                toml_string(&status.to_string()),
                format_duration(*interval)
            )),
        }
        for proxy in &self.proxy {
            out.push_str(&format!(
                "\n[[proxy]]\nlisten = {}\nforward = {}\n",
                toml_string(&proxy.listen.to_string()),
                toml_string(&proxy.forward.to_string())
            ));
        }
        out
    }
}

// ---------------------------------------------------------------------------
// Raw, span-carrying structs that serde fills in.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    cmd: Option<Spanned<Vec<Spanned<String>>>>,
    workdir: Option<Spanned<String>>,
    env: Option<RawEnv>,
    pidfile: Option<Spanned<String>>,
    control_socket: Option<Spanned<String>>,
    quiet: Option<bool>,
    #[serde(default)]
    locals: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    upgrade: RawUpgrade,
    #[serde(default)]
    shutdown: RawShutdown,
    #[serde(default)]
    healthcheck: RawHealthcheck,
    #[serde(default)]
    proxy: Vec<RawProxy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    listen: Option<Spanned<String>>,
    forward: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpgrade {
    signal: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShutdown {
    delay: Option<Spanned<String>>,
    signal: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
}

/// The unsupported healthchecks are refused by [`check_shape`] before serde
/// runs, so they are not listed here.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealthcheck {
    alive: Option<RawAlive>,
    command: Option<RawCommand>,
    tcp: Option<RawTcp>,
    http: Option<RawHttp>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlive {
    timeout: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCommand {
    cmd: Option<Spanned<Vec<Spanned<String>>>>,
    after: Option<Spanned<String>>,
    interval: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTcp {
    address: Option<Spanned<String>>,
    interval: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    url: Option<Spanned<String>>,
    status: Option<Spanned<String>>,
    interval: Option<Spanned<String>>,
}

/// `env`: a list of `"KEY=VALUE"` or a table `{ KEY = "VALUE" }`.
#[derive(Debug)]
enum RawEnv {
    List(Vec<Spanned<String>>),
    Table(Vec<(String, Spanned<String>)>),
}

impl<'de> Deserialize<'de> for RawEnv {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EnvVisitor;
        impl<'de> Visitor<'de> for EnvVisitor {
            type Value = RawEnv;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of \"KEY=VALUE\" strings or a table of KEY = \"VALUE\"")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawEnv, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<String>>()? {
                    items.push(item);
                }
                Ok(RawEnv::List(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawEnv, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    entries.push((key, map.next_value::<Spanned<String>>()?));
                }
                Ok(RawEnv::Table(entries))
            }
        }
        deserializer.deserialize_any(EnvVisitor)
    }
}

// ---------------------------------------------------------------------------
// Errors with positions.

/// The text being parsed and its file name, to build positioned errors.
struct Source<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Source<'_> {
    fn error(
        &self,
        span: Option<Range<usize>>,
        key: Option<String>,
        kind: ConfigErrorKind,
    ) -> ConfigError {
        ConfigError {
            path: self.path.to_owned(),
            position: span.map(|s| position(self.text, s.start)),
            key,
            kind: Box::new(kind),
        }
    }

    fn invalid(
        &self,
        span: Option<Range<usize>>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        self.error(
            span,
            Some(key.to_owned()),
            ConfigErrorKind::Invalid(message.into()),
        )
    }

    /// Rewrites a serde error in psflip's terms, finding the key from the span.
    fn serde_error(&self, e: &toml::de::Error, root: &DeTable) -> ConfigError {
        let span = e.span();
        let path = span.as_ref().and_then(|s| find_path(root, s));
        let message = e.message();
        if let Some((key, expected)) = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split_once("`, "))
        {
            let table = match path.as_deref() {
                Some([parent @ .., _]) if !parent.is_empty() => {
                    format!("[{}]", render_path(parent))
                }
                _ => "the top level".to_owned(),
            };
            return self.error(
                span,
                None,
                ConfigErrorKind::UnknownKey {
                    key: key.to_owned(),
                    table,
                    expected: expected.to_owned(),
                },
            );
        }
        let key = path.map(|p| render_path(&p));
        self.error(span, key, ConfigErrorKind::Invalid(message.to_owned()))
    }
}

/// The 1-based line and column of byte `offset` in `text`.
fn position(text: &str, offset: usize) -> Position {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Position {
        line: before.matches('\n').count() + 1,
        column: before[line_start..].chars().count() + 1,
    }
}

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// `healthcheck.command.cmd[0]`, `locals."a b"`.
fn render_path(path: &[Segment]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&toml_key(k));
            }
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// The path of the key or value whose span is exactly `span`.
fn find_path(root: &DeTable, span: &Range<usize>) -> Option<Vec<Segment>> {
    fn in_table(table: &DeTable, span: &Range<usize>, path: &mut Vec<Segment>) -> bool {
        for (key, value) in table.iter() {
            path.push(Segment::Key(key.get_ref().to_string()));
            if key.span() == *span || value.span() == *span || in_value(value.get_ref(), span, path)
            {
                return true;
            }
            path.pop();
        }
        false
    }
    fn in_value(value: &DeValue, span: &Range<usize>, path: &mut Vec<Segment>) -> bool {
        match value {
            DeValue::Table(table) => in_table(table, span, path),
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    path.push(Segment::Index(i));
                    if item.span() == *span || in_value(item.get_ref(), span, path) {
                        return true;
                    }
                    path.pop();
                }
                false
            }
            _ => false,
        }
    }
    let mut path = Vec::new();
    in_table(root, span, &mut path).then_some(path)
}

/// The span of the key at `path` (a list of table keys), if present.
fn key_span(root: &DeTable, path: &[&str]) -> Option<Range<usize>> {
    let (last, parents) = path.split_last()?;
    let mut table = root;
    for name in parents {
        table = table.get(*name)?.get_ref().as_table()?;
    }
    table.get_key_value(*last).map(|(k, _)| k.span())
}

/// "an array", "a string"…
fn with_article(type_name: &str) -> String {
    let article = if type_name.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {type_name}")
}

/// Pass 1: refuses unsupported features by name, tables written as other
/// values (serde would happily read `upgrade = ["SIGHUP", "1m"]` as a struct),
/// and more than one healthcheck.
fn check_shape(src: &Source, root: &DeTable) -> Result<(), ConfigError> {
    let unsupported = |span: Range<usize>, feature: &str| {
        src.error(
            Some(span),
            None,
            ConfigErrorKind::Unsupported {
                feature: feature.to_owned(),
            },
        )
    };
    if let Some((key, _)) = root.get_key_value("listen") {
        return Err(unsupported(key.span(), "listen"));
    }
    let must_be_table = |parent: &DeTable, name: &str, dotted: &str| match parent.get(name) {
        Some(value) if !value.get_ref().is_table() => Err(src.invalid(
            Some(value.span()),
            dotted,
            format!(
                "expected a table, found {}",
                with_article(value.get_ref().type_str())
            ),
        )),
        _ => Ok(()),
    };
    for name in ["locals", "upgrade", "shutdown", "healthcheck"] {
        must_be_table(root, name, name)?;
    }
    let Some(healthcheck) = root.get("healthcheck").and_then(|v| v.get_ref().as_table()) else {
        return Ok(());
    };
    for kind in ["notify", "docker"] {
        if let Some((key, _)) = healthcheck.get_key_value(kind) {
            return Err(unsupported(key.span(), &format!("healthcheck.{kind}")));
        }
    }
    const KINDS: [&str; 4] = ["alive", "command", "tcp", "http"];
    for kind in KINDS {
        must_be_table(healthcheck, kind, &format!("healthcheck.{kind}"))?;
    }
    let found: Vec<String> = KINDS
        .into_iter()
        .filter(|kind| healthcheck.contains_key(*kind))
        .map(|kind| format!("`healthcheck.{kind}`"))
        .collect();
    if let [first @ .., last] = found.as_slice()
        && !first.is_empty()
    {
        // Points at the one written last.
        let span = KINDS
            .into_iter()
            .filter_map(|kind| key_span(root, &["healthcheck", kind]))
            .max_by_key(|s| s.start);
        let both = if first.len() == 1 { "both " } else { "" };
        return Err(src.error(
            span,
            None,
            ConfigErrorKind::Invalid(format!(
                "at most one healthcheck may be configured, found {both}{} and {last}",
                first.join(", ")
            )),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Pass 3: resolution.

/// Expands and validates values, keeping the source for positioned errors.
struct Resolver<'a> {
    src: &'a Source<'a>,
    opts: &'a LoadOptions,
    locals: BTreeMap<String, String>,
}

impl Resolver<'_> {
    fn context<'c>(&'c self, locals: &'c BTreeMap<String, String>) -> Context<'c> {
        Context {
            env: &*self.opts.env,
            ab_second: self.opts.ab_second,
            now_unix_secs: self.opts.now_unix_secs,
            locals,
            base_dir: &self.opts.base_dir,
        }
    }

    fn template_error(&self, span: Range<usize>, key: &str, e: TemplateError) -> ConfigError {
        self.src.error(
            Some(span),
            Some(key.to_owned()),
            ConfigErrorKind::Template(e),
        )
    }

    /// Expands the templates of a string value.
    fn expand(&self, value: &Spanned<String>, key: &str) -> Result<String, ConfigError> {
        template::expand(value.get_ref(), &self.context(&self.locals))
            .map_err(|e| self.template_error(value.span(), key, e))
    }

    /// Expands a value that will reach `execve` or the file system, where a
    /// NUL byte cannot go.
    fn expand_c(&self, value: &Spanned<String>, key: &str) -> Result<String, ConfigError> {
        let expanded = self.expand(value, key)?;
        if expanded.contains('\0') {
            return Err(self
                .src
                .invalid(Some(value.span()), key, "contains a NUL byte"));
        }
        Ok(expanded)
    }

    /// Expands `[locals]`: with no locals available, so a local cannot refer
    /// to another (no ordering or cycle questions).
    fn expand_locals(
        &mut self,
        raw: &BTreeMap<String, Spanned<String>>,
    ) -> Result<(), ConfigError> {
        let none = BTreeMap::new();
        for (name, value) in raw {
            let key = format!("locals.{}", toml_key(name));
            let expanded =
                template::expand(value.get_ref(), &self.context(&none)).map_err(|e| {
                    let e = match e {
                        TemplateError::MissingLocal { name } => {
                            TemplateError::LocalInLocal { name }
                        }
                        e => e,
                    };
                    self.template_error(value.span(), &key, e)
                })?;
            self.locals.insert(name.clone(), expanded);
        }
        Ok(())
    }

    /// A command line: non-empty, program name non-empty.
    fn command(
        &self,
        raw: &Spanned<Vec<Spanned<String>>>,
        key: &str,
    ) -> Result<Vec<String>, ConfigError> {
        if raw.get_ref().is_empty() {
            return Err(self.src.invalid(
                Some(raw.span()),
                key,
                "must not be empty: it needs at least the program to run",
            ));
        }
        let mut cmd = Vec::with_capacity(raw.get_ref().len());
        for (i, arg) in raw.get_ref().iter().enumerate() {
            let arg_key = format!("{key}[{i}]");
            let value = self.expand_c(arg, &arg_key)?;
            if i == 0 && value.is_empty() {
                return Err(self.src.invalid(
                    Some(arg.span()),
                    &arg_key,
                    "the program name must not be empty",
                ));
            }
            cmd.push(value);
        }
        Ok(cmd)
    }

    /// An optional path: non-empty when given.
    fn path(
        &self,
        raw: Option<&Spanned<String>>,
        key: &str,
    ) -> Result<Option<PathBuf>, ConfigError> {
        let Some(raw) = raw else { return Ok(None) };
        let value = self.expand_c(raw, key)?;
        if value.is_empty() {
            return Err(self.src.invalid(
                Some(raw.span()),
                key,
                "must not be empty (leave the key out instead)",
            ));
        }
        Ok(Some(PathBuf::from(value)))
    }

    /// `env`, either form.
    fn env(&self, raw: Option<&RawEnv>) -> Result<Vec<(String, String)>, ConfigError> {
        let mut env = Vec::new();
        match raw {
            None => {}
            Some(RawEnv::List(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let key = format!("env[{i}]");
                    let value = self.expand_c(item, &key)?;
                    let Some((name, value)) = value.split_once('=') else {
                        return Err(self.src.invalid(
                            Some(item.span()),
                            &key,
                            format!("expected \"KEY=VALUE\", found {value:?}"),
                        ));
                    };
                    self.check_env_name(name, item.span(), &key)?;
                    env.push((name.to_owned(), value.to_owned()));
                }
            }
            Some(RawEnv::Table(entries)) => {
                for (name, item) in entries {
                    let key = format!("env.{}", toml_key(name));
                    self.check_env_name(name, item.span(), &key)?;
                    env.push((name.clone(), self.expand_c(item, &key)?));
                }
            }
        }
        Ok(env)
    }

    fn check_env_name(&self, name: &str, span: Range<usize>, key: &str) -> Result<(), ConfigError> {
        let problem = if name.is_empty() {
            "empty variable name"
        } else if name.contains('=') {
            "variable name contains '='"
        } else if name.contains('\0') {
            "variable name contains a NUL byte"
        } else {
            return Ok(());
        };
        Err(self.src.invalid(Some(span), key, problem))
    }

    /// A duration with a default; also returns its span when it was given.
    fn duration(
        &self,
        raw: Option<&Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Result<(Duration, Option<Range<usize>>), ConfigError> {
        let Some(raw) = raw else {
            return Ok((default, None));
        };
        let value = self.expand(raw, key)?;
        let error = |reason: String| {
            self.src.error(
                Some(raw.span()),
                Some(key.to_owned()),
                ConfigErrorKind::Duration {
                    value: value.clone(),
                    reason,
                },
            )
        };
        let d = parse_duration(&value).map_err(&error)?;
        let (min, max) = duration_bounds(key);
        if d > max {
            return Err(error(format!(
                "longer than {}, the most {key} allows",
                format_duration(max)
            )));
        }
        // Zero, where it is not allowed, gets its own message from the caller.
        if !d.is_zero() && d < min {
            return Err(error(format!(
                "shorter than {}, the least {key} allows",
                format_duration(min)
            )));
        }
        Ok((d, Some(raw.span())))
    }

    /// A signal with a default.
    fn signal(
        &self,
        raw: Option<&Spanned<String>>,
        key: &str,
        default: Signal,
    ) -> Result<Signal, ConfigError> {
        let Some(raw) = raw else { return Ok(default) };
        let value = self.expand(raw, key)?;
        let error = |reason: String| {
            self.src.error(
                Some(raw.span()),
                Some(key.to_owned()),
                ConfigErrorKind::Signal {
                    value: value.clone(),
                    reason,
                },
            )
        };
        let signal = parse_signal(&value).map_err(&error)?;
        let why = match key {
            "upgrade.signal" => unfit_upgrade_signal(signal),
            "shutdown.signal" => unfit_shutdown_signal(signal),
            _ => None,
        };
        if let Some(why) = why {
            return Err(error(format!("{}: {why}", signal.as_str())));
        }
        Ok(signal)
    }
}

/// The shortest and longest value each duration key accepts. A value beyond
/// them is a typo or a unit mistake (`1000000h`), never a plan: refusing it
/// keeps every deadline psflip computes far from overflow. Zero, where a key
/// cannot be zero, is refused by the rule of that key.
pub fn duration_bounds(key: &str) -> (Duration, Duration) {
    const DAY: Duration = Duration::from_secs(24 * 3600);
    const MS: Duration = Duration::from_millis(1);
    if key == "upgrade.timeout" || key.ends_with(".interval") {
        (MS, DAY)
    } else {
        (Duration::ZERO, DAY)
    }
}

/// Why `signal` cannot be the upgrade signal, if it cannot.
pub fn unfit_upgrade_signal(signal: Signal) -> Option<&'static str> {
    use Signal::*;
    Some(match signal {
        SIGKILL | SIGSTOP => "it cannot be caught, so it cannot be the upgrade signal",
        SIGCHLD => "psflip needs SIGCHLD to learn that its children exited",
        SIGTERM | SIGINT | SIGQUIT => {
            "it is a termination signal: psflip stops on it (and aborts an upgrade in flight)"
        }
        SIGPIPE => "psflip's own writes to a closed pipe or socket raise it",
        SIGCONT | SIGTSTP | SIGTTIN | SIGTTOU => {
            "job control sends it (a stop or a resume would start an upgrade)"
        }
        SIGSEGV | SIGBUS | SIGFPE | SIGILL | SIGTRAP | SIGSYS | SIGABRT => {
            "the kernel raises it on a fault; it cannot be told from a crash"
        }
        _ => return None,
    })
}

/// Why `signal` cannot be the shutdown signal, if it cannot: it must ask the
/// child to end, and leave it the chance to do so gracefully.
pub fn unfit_shutdown_signal(signal: Signal) -> Option<&'static str> {
    use Signal::*;
    Some(match signal {
        SIGKILL => {
            "it leaves the child no chance to finish; for an immediate kill set shutdown.timeout = \"0s\""
        }
        SIGSTOP | SIGTSTP | SIGTTIN | SIGTTOU => "it stops the child instead of ending it",
        SIGCONT | SIGCHLD | SIGURG => "it does not end a process (ignored or a no-op by default)",
        SIGPIPE => "servers commonly ignore it, so it would not end the child",
        _ => return None,
    })
}

/// Pass 3: expands templates, applies defaults and checks the rules that span
/// several keys.
fn resolve(
    src: &Source,
    root: &DeTable,
    raw: RawConfig,
    opts: &LoadOptions,
) -> Result<Config, ConfigError> {
    let mut r = Resolver {
        src,
        opts,
        locals: BTreeMap::new(),
    };
    r.expand_locals(&raw.locals)?;

    let Some(raw_cmd) = &raw.cmd else {
        return Err(src.invalid(
            None,
            "cmd",
            "missing: the command to run is required, e.g. cmd = [\"./server\"]",
        ));
    };
    let cmd = r.command(raw_cmd, "cmd")?;
    let workdir = r.path(raw.workdir.as_ref(), "workdir")?;
    let env = r.env(raw.env.as_ref())?;
    let pidfile = r.path(raw.pidfile.as_ref(), "pidfile")?;
    let control_socket = r.path(raw.control_socket.as_ref(), "control_socket")?;

    let upgrade_signal = r.signal(
        raw.upgrade.signal.as_ref(),
        "upgrade.signal",
        DEFAULT_UPGRADE_SIGNAL,
    )?;
    let (upgrade_timeout, upgrade_timeout_span) = r.duration(
        raw.upgrade.timeout.as_ref(),
        "upgrade.timeout",
        DEFAULT_UPGRADE_TIMEOUT,
    )?;
    if upgrade_timeout.is_zero() {
        return Err(src.invalid(
            upgrade_timeout_span,
            "upgrade.timeout",
            "must be longer than 0s: the new child needs time to become healthy",
        ));
    }
    // Names both keys when a delay can never fit in upgrade.timeout.
    let fits = |delay: Duration, span: Option<Range<usize>>, key: &str, what: &str| {
        if delay < upgrade_timeout {
            return Ok(());
        }
        let default = if span.is_none() { ", the default" } else { "" };
        Err(src.invalid(
            span.or(upgrade_timeout_span.clone()),
            key,
            format!(
                "{key} ({}{default}) must be shorter than upgrade.timeout ({}): {what}",
                format_duration(delay),
                format_duration(upgrade_timeout)
            ),
        ))
    };

    let shutdown = ShutdownConfig {
        delay: r
            .duration(
                raw.shutdown.delay.as_ref(),
                "shutdown.delay",
                DEFAULT_SHUTDOWN_DELAY,
            )?
            .0,
        signal: r.signal(
            raw.shutdown.signal.as_ref(),
            "shutdown.signal",
            DEFAULT_SHUTDOWN_SIGNAL,
        )?,
        timeout: r
            .duration(
                raw.shutdown.timeout.as_ref(),
                "shutdown.timeout",
                DEFAULT_SHUTDOWN_TIMEOUT,
            )?
            .0,
    };
    if shutdown.signal == upgrade_signal {
        let span = raw
            .shutdown
            .signal
            .as_ref()
            .or(raw.upgrade.signal.as_ref())
            .map(|s| s.span());
        return Err(src.invalid(
            span,
            "shutdown.signal",
            format!(
                "the same signal as upgrade.signal ({}): every signal but the upgrade signal is forwarded to the child, so a stop meant for the child would start an upgrade instead",
                upgrade_signal.as_str()
            ),
        ));
    }

    // The interval of a tcp or http check, which first runs at the spawn.
    let check_interval = |raw: Option<&Spanned<String>>, key: &str, default: Duration| {
        let (interval, span) = r.duration(raw, key, default)?;
        if interval.is_zero() {
            return Err(src.invalid(span, key, "must be longer than 0s"));
        }
        fits(
            interval,
            span,
            key,
            "the check would run only once, at the spawn, before the new child is given up on",
        )?;
        Ok(interval)
    };

    let healthcheck = if let Some(command) = &raw.healthcheck.command {
        let Some(raw_cmd) = &command.cmd else {
            return Err(src.invalid(
                key_span(root, &["healthcheck", "command"]),
                "healthcheck.command.cmd",
                "missing: the healthcheck command is required",
            ));
        };
        let cmd = r.command(raw_cmd, "healthcheck.command.cmd")?;
        let (after, after_span) = r.duration(
            command.after.as_ref(),
            "healthcheck.command.after",
            DEFAULT_COMMAND_AFTER,
        )?;
        fits(
            after,
            after_span,
            "healthcheck.command.after",
            "the check would never run in time",
        )?;
        let (interval, interval_span) = r.duration(
            command.interval.as_ref(),
            "healthcheck.command.interval",
            DEFAULT_COMMAND_INTERVAL,
        )?;
        if interval.is_zero() {
            return Err(src.invalid(
                interval_span,
                "healthcheck.command.interval",
                "must be longer than 0s",
            ));
        }
        HealthCheck::Command {
            cmd,
            after,
            interval,
        }
    } else if let Some(tcp) = &raw.healthcheck.tcp {
        let Some(raw_address) = &tcp.address else {
            return Err(src.invalid(
                key_span(root, &["healthcheck", "tcp"]),
                "healthcheck.tcp.address",
                "missing: the address to connect to is required, e.g. address = \"127.0.0.1:8080\" or \"unix:///run/app.sock\"",
            ));
        };
        let key = "healthcheck.tcp.address";
        let text = r.expand(raw_address, key)?;
        let address = Endpoint::parse(&text, false)
            .map_err(|why| src.invalid(Some(raw_address.span()), key, why))?;
        HealthCheck::Tcp {
            address,
            interval: check_interval(
                tcp.interval.as_ref(),
                "healthcheck.tcp.interval",
                DEFAULT_TCP_INTERVAL,
            )?,
        }
    } else if let Some(http) = &raw.healthcheck.http {
        let Some(raw_url) = &http.url else {
            return Err(src.invalid(
                key_span(root, &["healthcheck", "http"]),
                "healthcheck.http.url",
                "missing: the URL to check is required, e.g. url = \"http://127.0.0.1:8080/health\"",
            ));
        };
        let text = r.expand(raw_url, "healthcheck.http.url")?;
        let url = HttpUrl::parse(&text)
            .map_err(|why| src.invalid(Some(raw_url.span()), "healthcheck.http.url", why))?;
        let status = match &http.status {
            None => StatusPattern::success(),
            Some(raw_status) => {
                let text = r.expand(raw_status, "healthcheck.http.status")?;
                StatusPattern::parse(&text).map_err(|why| {
                    src.invalid(Some(raw_status.span()), "healthcheck.http.status", why)
                })?
            }
        };
        HealthCheck::Http {
            url,
            status,
            interval: check_interval(
                http.interval.as_ref(),
                "healthcheck.http.interval",
                DEFAULT_HTTP_INTERVAL,
            )?,
        }
    } else {
        let timeout_raw = raw
            .healthcheck
            .alive
            .as_ref()
            .and_then(|a| a.timeout.as_ref());
        let (timeout, timeout_span) = r.duration(
            timeout_raw,
            "healthcheck.alive.timeout",
            DEFAULT_ALIVE_TIMEOUT,
        )?;
        fits(
            timeout,
            timeout_span,
            "healthcheck.alive.timeout",
            "the new child could never be healthy in time",
        )?;
        HealthCheck::Alive { timeout }
    };

    Ok(Config {
        path: src.path.to_owned(),
        cmd,
        workdir,
        env,
        pidfile,
        control_socket,
        quiet: raw.quiet.unwrap_or(false),
        upgrade: UpgradeConfig {
            signal: upgrade_signal,
            timeout: upgrade_timeout,
        },
        shutdown,
        healthcheck,
        proxy: r.proxies(root, &raw.proxy)?,
        locals: r.locals,
    })
}

impl Resolver<'_> {
    /// `[[proxy]]`: both addresses required and valid, no `listen` twice.
    fn proxies(&self, root: &DeTable, raw: &[RawProxy]) -> Result<Vec<ProxyConfig>, ConfigError> {
        let table_span = |i: usize| match root.get("proxy").map(|v| v.get_ref()) {
            Some(DeValue::Array(items)) => items.get(i).map(|t| t.span()),
            _ => None,
        };
        let mut out: Vec<ProxyConfig> = Vec::with_capacity(raw.len());
        for (i, entry) in raw.iter().enumerate() {
            let endpoint = |field: &str, value: Option<&Spanned<String>>, listen: bool| {
                let key = format!("proxy[{i}].{field}");
                let Some(value) = value else {
                    return Err(self.src.invalid(
                        table_span(i),
                        &key,
                        format!("missing: each [[proxy]] needs `{field}`"),
                    ));
                };
                let text = self.expand(value, &key)?;
                Endpoint::parse(&text, listen)
                    .map_err(|why| self.src.invalid(Some(value.span()), &key, why))
            };
            let listen = endpoint("listen", entry.listen.as_ref(), true)?;
            let forward = endpoint("forward", entry.forward.as_ref(), false)?;
            let base = &self.opts.base_dir;
            if let Some(j) = out
                .iter()
                .position(|p| p.listen.absolute(base) == listen.absolute(base))
            {
                return Err(self.src.invalid(
                    entry.listen.as_ref().map(|v| v.span()),
                    &format!("proxy[{i}].listen"),
                    format!("{listen} is already the listen address of proxy[{j}]"),
                ));
            }
            out.push(ProxyConfig { listen, forward });
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------
// TOML output.

/// A TOML key: bare when possible, else a quoted string.
fn toml_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        key.to_owned()
    } else {
        toml_basic_string(key)
    }
}

/// A TOML string whose template expansion is `value`.
fn toml_string(value: &str) -> String {
    toml_basic_string(&template::escape(value))
}

/// A TOML array of [`toml_string`]s.
fn toml_array(values: &[String]) -> String {
    let items: Vec<String> = values.iter().map(|v| toml_string(v)).collect();
    format!("[{}]", items.join(", "))
}

/// A TOML basic (double-quoted) string, escaped.
fn toml_basic_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    /// 2024-02-29 13:14:15 UTC.
    const LEAP_DAY: i64 = 1_709_212_455;

    fn opts_with(ab_second: bool) -> LoadOptions {
        LoadOptions::new(ab_second, LEAP_DAY, PathBuf::from("/nonexistent-base")).with_env(|key| {
            match key {
                "HOME" => Some("/home/app".to_owned()),
                "PORT" => Some("9000".to_owned()),
                _ => None,
            }
        })
    }

    fn parse_with(text: &str, ab_second: bool) -> Result<Config, ConfigError> {
        parse(text, Path::new("psflip.toml"), &opts_with(ab_second))
    }

    fn ok(text: &str) -> Config {
        parse_with(text, false).unwrap_or_else(|e| panic!("unexpected error: {e}"))
    }

    fn err(text: &str) -> String {
        match parse_with(text, false) {
            Ok(config) => panic!("expected an error, got {config:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn minimal_config_gets_every_default() {
        let config = ok("cmd = [\"./server\"]\n");
        assert_eq!(
            config,
            Config {
                path: PathBuf::from("psflip.toml"),
                cmd: strings(&["./server"]),
                workdir: None,
                env: Vec::new(),
                pidfile: None,
                control_socket: None,
                quiet: false,
                locals: BTreeMap::new(),
                upgrade: UpgradeConfig {
                    signal: Signal::SIGHUP,
                    timeout: Duration::from_secs(60),
                },
                shutdown: ShutdownConfig {
                    delay: Duration::ZERO,
                    signal: Signal::SIGTERM,
                    timeout: Duration::from_secs(10),
                },
                healthcheck: HealthCheck::Alive {
                    timeout: Duration::from_secs(5),
                },
                proxy: Vec::new(),
            }
        );
    }

    const SPEC_EXAMPLE: &str = r#"
cmd = ["./server", "--port", "{{ AB \"8081\" \"8082\" }}", "--name", "{{ Local \"name\" }}"]
workdir = "srv"
env = ["MODE=prod", "HOME_COPY={{ Env \"HOME\" }}", "EQ=a=b"]
pidfile = "/run/app-{{ BlueGreen }}.pid"
quiet = true

[locals]
name = "app-{{ BlueGreen }}"
port = "{{ EnvDefault \"PORT\" \"80\" }}"

[upgrade]
signal = "usr2"
timeout = "1m30s"

[shutdown]
delay = "250ms"
signal = "SIGQUIT"
timeout = "{{ EnvDefault \"NOPE\" \"20s\" }}"

[healthcheck.alive]
timeout = "1.5s"
"#;

    #[test]
    fn full_config_expands_every_template() {
        let config = ok(SPEC_EXAMPLE);
        assert_eq!(
            config.cmd,
            strings(&["./server", "--port", "8081", "--name", "app-blue"])
        );
        assert_eq!(config.workdir, Some(PathBuf::from("srv")));
        assert_eq!(
            config.env,
            vec![
                ("MODE".to_owned(), "prod".to_owned()),
                ("HOME_COPY".to_owned(), "/home/app".to_owned()),
                ("EQ".to_owned(), "a=b".to_owned()),
            ]
        );
        assert_eq!(config.pidfile, Some(PathBuf::from("/run/app-blue.pid")));
        assert!(config.quiet);
        assert_eq!(
            config.locals,
            BTreeMap::from([
                ("name".to_owned(), "app-blue".to_owned()),
                ("port".to_owned(), "9000".to_owned()),
            ])
        );
        assert_eq!(
            config.upgrade,
            UpgradeConfig {
                signal: Signal::SIGUSR2,
                timeout: Duration::from_secs(90)
            }
        );
        assert_eq!(
            config.shutdown,
            ShutdownConfig {
                delay: Duration::from_millis(250),
                signal: Signal::SIGQUIT,
                timeout: Duration::from_secs(20),
            }
        );
        assert_eq!(
            config.healthcheck,
            HealthCheck::Alive {
                timeout: Duration::from_millis(1500)
            }
        );
    }

    #[test]
    fn ab_alternates_between_generations() {
        let first = parse_with(SPEC_EXAMPLE, false).expect("valid");
        let second = parse_with(SPEC_EXAMPLE, true).expect("valid");
        assert_eq!(first.cmd[2], "8081");
        assert_eq!(second.cmd[2], "8082");
        assert_eq!(first.locals["name"], "app-blue");
        assert_eq!(second.locals["name"], "app-green");
        assert_eq!(second.cmd[4], "app-green");
        assert_eq!(second.pidfile, Some(PathBuf::from("/run/app-green.pid")));
    }

    #[test]
    fn every_string_value_may_be_templated() {
        let config = ok(r#"
cmd = ["{{ `./srv` }}"]
[upgrade]
signal = "{{ EnvDefault \"SIG\" \"USR1\" }}"
timeout = "{{ AB \"30s\" \"40s\" }}"
[healthcheck.command]
cmd = ["curl", "http://127.0.0.1:{{ Env \"PORT\" }}/"]
after = "{{ `2s` }}"
interval = "{{ `100ms` }}"
"#);
        assert_eq!(config.cmd, strings(&["./srv"]));
        assert_eq!(config.upgrade.signal, Signal::SIGUSR1);
        assert_eq!(config.upgrade.timeout, Duration::from_secs(30));
        assert_eq!(
            config.healthcheck,
            HealthCheck::Command {
                cmd: strings(&["curl", "http://127.0.0.1:9000/"]),
                after: Duration::from_secs(2),
                interval: Duration::from_millis(100),
            }
        );
    }

    #[test]
    fn healthcheck_command_defaults() {
        let config = ok("cmd = [\"a\"]\n[healthcheck.command]\ncmd = [\"true\"]\n");
        assert_eq!(
            config.healthcheck,
            HealthCheck::Command {
                cmd: strings(&["true"]),
                after: Duration::ZERO,
                interval: Duration::from_secs(1),
            }
        );
    }

    #[rstest]
    #[case::empty_healthcheck_table("cmd = [\"a\"]\n[healthcheck]\n")]
    #[case::empty_alive_table("cmd = [\"a\"]\n[healthcheck.alive]\n")]
    #[case::inline("cmd = [\"a\"]\nhealthcheck = { alive = {} }\n")]
    fn alive_five_seconds_is_the_default_healthcheck(#[case] text: &str) {
        assert_eq!(
            ok(text).healthcheck,
            HealthCheck::Alive {
                timeout: Duration::from_secs(5)
            }
        );
    }

    #[test]
    fn env_table_form() {
        let config = ok(
            "cmd = [\"a\"]\n[env]\nMODE = \"prod\"\nWHO = \"{{ Env \\\"HOME\\\" }}\"\n\"A.B\" = \"\"\n",
        );
        assert_eq!(
            config.env,
            vec![
                ("A.B".to_owned(), String::new()),
                ("MODE".to_owned(), "prod".to_owned()),
                ("WHO".to_owned(), "/home/app".to_owned()),
            ]
        );
        let inline = ok("cmd = [\"a\"]\nenv = { MODE = \"prod\" }\n");
        assert_eq!(inline.env, vec![("MODE".to_owned(), "prod".to_owned())]);
    }

    #[test]
    fn env_list_keeps_order_and_duplicates() {
        let config = ok("cmd = [\"a\"]\nenv = [\"B=1\", \"A=\", \"B=2\"]\n");
        assert_eq!(
            config.env,
            vec![
                ("B".to_owned(), "1".to_owned()),
                ("A".to_owned(), String::new()),
                ("B".to_owned(), "2".to_owned()),
            ]
        );
    }

    #[rstest]
    // File, position, key and message, for every kind of error.
    #[case::syntax("cmd = [\"a\"\n", "psflip.toml:1:11: unclosed array, expected `]`")]
    #[case::duplicate_key("cmd = [\"a\"]\ncmd = [\"b\"]\n", "psflip.toml:2:1: duplicate key")]
    #[case::missing_cmd(
        "quiet = true\n",
        "psflip.toml: cmd: missing: the command to run is required, e.g. cmd = [\"./server\"]"
    )]
    #[case::empty_cmd(
        "quiet = true\ncmd = []\n",
        "psflip.toml:2:7: cmd: must not be empty: it needs at least the program to run"
    )]
    #[case::empty_program(
        "cmd = [\"{{ Env `NOPE` }}\", \"x\"]\n",
        "psflip.toml:1:8: cmd[0]: the program name must not be empty"
    )]
    #[case::nul_in_arg(
        "cmd = [\"a\", \"b\\u0000\"]\n",
        "psflip.toml:1:13: cmd[1]: contains a NUL byte"
    )]
    #[case::cmd_not_array(
        "cmd = \"./server\"\n",
        "psflip.toml:1:7: cmd: invalid type: string \"./server\", expected a sequence"
    )]
    #[case::cmd_item_type(
        "cmd = [\"a\", 3]\n",
        "psflip.toml:1:13: cmd[1]: invalid type: integer `3`, expected a string"
    )]
    #[case::quiet_type(
        "cmd = [\"a\"]\nquiet = \"yes\"\n",
        "psflip.toml:2:9: quiet: invalid type: string \"yes\", expected a boolean"
    )]
    #[case::template_unknown(
        "cmd = [\"a\", \"{{ Foo }}\"]\n",
        "psflip.toml:1:13: cmd[1]: template: unknown function \"Foo\" (expected one of Env, EnvDefault, AB, BlueGreen, Local, Cat, Now, UTCNow, EscapeRE)"
    )]
    #[case::template_arity(
        "cmd = [\"a\"]\nworkdir = \"{{ AB `x` }}\"\n",
        "psflip.toml:2:11: workdir: template: AB takes 2 arguments, got 1"
    )]
    #[case::template_unterminated(
        "cmd = [\"a\"]\npidfile = \"{{ BlueGreen \"\n",
        "psflip.toml:2:11: pidfile: template: unterminated action \"{{ BlueGreen \": `{{` without a matching `}}`"
    )]
    #[case::template_missing_local(
        "cmd = [\"{{ Local `x` }}\"]\n",
        "psflip.toml:1:8: cmd[0]: template: no local named \"x\" in [locals]"
    )]
    #[case::local_in_local(
        "cmd = [\"a\"]\n[locals]\na = \"1\"\nb = \"{{ Local `a` }}\"\n",
        "psflip.toml:4:5: locals.b: template: locals cannot refer to other locals (`Local \"a\"`)"
    )]
    #[case::cat_missing(
        "cmd = [\"{{ Cat `nope.txt` }}\"]\n",
        "psflip.toml:1:8: cmd[0]: template: Cat \"nope.txt\": No such file or directory"
    )]
    #[case::empty_workdir(
        "cmd = [\"a\"]\nworkdir = \"\"\n",
        "psflip.toml:2:11: workdir: must not be empty (leave the key out instead)"
    )]
    #[case::empty_pidfile(
        "cmd = [\"a\"]\npidfile = \"{{ Env `NOPE` }}\"\n",
        "psflip.toml:2:11: pidfile: must not be empty (leave the key out instead)"
    )]
    #[case::env_no_equals(
        "cmd = [\"a\"]\nenv = [\"MODE\"]\n",
        "psflip.toml:2:8: env[0]: expected \"KEY=VALUE\", found \"MODE\""
    )]
    #[case::env_empty_key(
        "cmd = [\"a\"]\nenv = [\"A=1\", \"=x\"]\n",
        "psflip.toml:2:15: env[1]: empty variable name"
    )]
    #[case::env_table_key_with_equals(
        "cmd = [\"a\"]\nenv = { \"A=B\" = \"x\" }\n",
        "psflip.toml:2:17: env.\"A=B\": variable name contains '='"
    )]
    #[case::env_table_empty_key(
        "cmd = [\"a\"]\nenv = { \"\" = \"x\" }\n",
        "psflip.toml:2:14: env.\"\": empty variable name"
    )]
    #[case::env_nul(
        "cmd = [\"a\"]\nenv = { A = \"\\u0000\" }\n",
        "psflip.toml:2:13: env.A: contains a NUL byte"
    )]
    #[case::env_wrong_type(
        "cmd = [\"a\"]\nenv = \"A=1\"\n",
        "psflip.toml:2:7: env: invalid type: string \"A=1\", expected a list of \"KEY=VALUE\" strings or a table of KEY = \"VALUE\""
    )]
    #[case::env_item_type(
        "cmd = [\"a\"]\nenv = [1]\n",
        "psflip.toml:2:8: env[0]: invalid type: integer `1`, expected a string"
    )]
    #[case::bad_duration(
        "cmd = [\"a\"]\n\n[shutdown]\ntimeout = \"10 s\"\n",
        "psflip.toml:4:11: shutdown.timeout: invalid duration \"10 s\": unknown unit \" s\" (expected one of ns, us, µs, ms, s, m, h)"
    )]
    #[case::templated_bad_duration(
        "cmd = [\"a\"]\n[shutdown]\ndelay = \"{{ `5` }}\"\n",
        "psflip.toml:3:9: shutdown.delay: invalid duration \"5\": missing unit after \"5\" (expected one of ns, us, µs, ms, s, m, h)"
    )]
    #[case::duration_type(
        "cmd = [\"a\"]\n[upgrade]\ntimeout = 60\n",
        "psflip.toml:3:11: upgrade.timeout: invalid type: integer `60`, expected a string"
    )]
    #[case::bad_signal(
        "cmd = [\"a\"]\n[shutdown]\nsignal = \"SIGFOO\"\n",
        "psflip.toml:3:10: shutdown.signal: invalid signal \"SIGFOO\": unknown signal name (expected a name such as SIGHUP, TERM or usr1)"
    )]
    #[case::signal_number(
        "cmd = [\"a\"]\n[shutdown]\nsignal = \"9\"\n",
        "psflip.toml:3:10: shutdown.signal: invalid signal \"9\": signal numbers are not accepted, use a name such as SIGTERM"
    )]
    #[case::upgrade_timeout_beyond_bound(
        "cmd = [\"a\"]\n[upgrade]\ntimeout = \"1000000h\"\n",
        "psflip.toml:3:11: upgrade.timeout: invalid duration \"1000000h\": longer than 24h0m0s, the most upgrade.timeout allows"
    )]
    #[case::shutdown_timeout_beyond_bound(
        "cmd = [\"a\"]\n[shutdown]\ntimeout = \"25h\"\n",
        "psflip.toml:3:11: shutdown.timeout: invalid duration \"25h\": longer than 24h0m0s, the most shutdown.timeout allows"
    )]
    #[case::interval_below_bound(
        "cmd = [\"a\"]\n[healthcheck.command]\ncmd = [\"true\"]\ninterval = \"10us\"\n",
        "psflip.toml:4:12: healthcheck.command.interval: invalid duration \"10us\": shorter than 1ms, the least healthcheck.command.interval allows"
    )]
    #[case::shutdown_sigchld(
        "cmd = [\"a\"]\n[shutdown]\nsignal = \"SIGCHLD\"\n",
        "psflip.toml:3:10: shutdown.signal: invalid signal \"SIGCHLD\": SIGCHLD: it does not end a process (ignored or a no-op by default)"
    )]
    #[case::shutdown_stop(
        "cmd = [\"a\"]\n[shutdown]\nsignal = \"stop\"\n",
        "psflip.toml:3:10: shutdown.signal: invalid signal \"stop\": SIGSTOP: it stops the child instead of ending it"
    )]
    #[case::shutdown_kill(
        "cmd = [\"a\"]\n[shutdown]\nsignal = \"KILL\"\n",
        "psflip.toml:3:10: shutdown.signal: invalid signal \"KILL\": SIGKILL: it leaves the child no chance to finish; for an immediate kill set shutdown.timeout = \"0s\""
    )]
    #[case::upgrade_term(
        "cmd = [\"a\"]\n[upgrade]\nsignal = \"TERM\"\n",
        "psflip.toml:3:10: upgrade.signal: invalid signal \"TERM\": SIGTERM: it is a termination signal: psflip stops on it (and aborts an upgrade in flight)"
    )]
    #[case::upgrade_pipe(
        "cmd = [\"a\"]\n[upgrade]\nsignal = \"pipe\"\n",
        "psflip.toml:3:10: upgrade.signal: invalid signal \"pipe\": SIGPIPE: psflip's own writes to a closed pipe or socket raise it"
    )]
    #[case::upgrade_equals_shutdown(
        "cmd = [\"a\"]\n[upgrade]\nsignal = \"USR2\"\n[shutdown]\nsignal = \"usr2\"\n",
        "psflip.toml:5:10: shutdown.signal: the same signal as upgrade.signal (SIGUSR2): every signal but the upgrade signal is forwarded to the child, so a stop meant for the child would start an upgrade instead"
    )]
    #[case::upgrade_kill(
        "cmd = [\"a\"]\n[upgrade]\nsignal = \"kill\"\n",
        "psflip.toml:3:10: upgrade.signal: invalid signal \"kill\": SIGKILL: it cannot be caught, so it cannot be the upgrade signal"
    )]
    #[case::upgrade_stop(
        "cmd = [\"a\"]\n[upgrade]\nsignal = \"SIGSTOP\"\n",
        "psflip.toml:3:10: upgrade.signal: invalid signal \"SIGSTOP\": SIGSTOP: it cannot be caught, so it cannot be the upgrade signal"
    )]
    #[case::upgrade_chld(
        "cmd = [\"a\"]\n[upgrade]\nsignal = \"CHLD\"\n",
        "psflip.toml:3:10: upgrade.signal: invalid signal \"CHLD\": SIGCHLD: psflip needs SIGCHLD to learn that its children exited"
    )]
    #[case::upgrade_timeout_zero(
        "cmd = [\"a\"]\n[upgrade]\ntimeout = \"0s\"\n",
        "psflip.toml:3:11: upgrade.timeout: must be longer than 0s: the new child needs time to become healthy"
    )]
    #[case::alive_too_long(
        "cmd = [\"a\"]\n[upgrade]\ntimeout = \"10s\"\n[healthcheck.alive]\ntimeout = \"10s\"\n",
        "psflip.toml:5:11: healthcheck.alive.timeout: healthcheck.alive.timeout (10s) must be shorter than upgrade.timeout (10s): the new child could never be healthy in time"
    )]
    #[case::alive_default_too_long(
        "cmd = [\"a\"]\n[upgrade]\ntimeout = \"3s\"\n",
        "psflip.toml:3:11: healthcheck.alive.timeout: healthcheck.alive.timeout (5s, the default) must be shorter than upgrade.timeout (3s): the new child could never be healthy in time"
    )]
    #[case::command_after_too_long(
        "cmd = [\"a\"]\n[healthcheck.command]\ncmd = [\"true\"]\nafter = \"2m\"\n",
        "psflip.toml:4:9: healthcheck.command.after: healthcheck.command.after (2m0s) must be shorter than upgrade.timeout (1m0s): the check would never run in time"
    )]
    #[case::command_interval_zero(
        "cmd = [\"a\"]\n[healthcheck.command]\ncmd = [\"true\"]\ninterval = \"0\"\n",
        "psflip.toml:4:12: healthcheck.command.interval: must be longer than 0s"
    )]
    #[case::command_cmd_missing(
        "cmd = [\"a\"]\n\n[healthcheck.command]\ninterval = \"1s\"\n",
        "psflip.toml:3:14: healthcheck.command.cmd: missing: the healthcheck command is required"
    )]
    #[case::command_cmd_empty(
        "cmd = [\"a\"]\n[healthcheck.command]\ncmd = []\n",
        "psflip.toml:3:7: healthcheck.command.cmd: must not be empty: it needs at least the program to run"
    )]
    #[case::command_cmd_template(
        "cmd = [\"a\"]\n[healthcheck.command]\ncmd = [\"x\", \"{{ Env }}\"]\n",
        "psflip.toml:3:13: healthcheck.command.cmd[1]: template: Env takes 1 argument, got 0"
    )]
    #[case::two_healthchecks(
        "cmd = [\"a\"]\n[healthcheck.alive]\n[healthcheck.command]\ncmd = [\"true\"]\n",
        "psflip.toml:3:14: at most one healthcheck may be configured, found both `healthcheck.alive` and `healthcheck.command`"
    )]
    #[case::not_a_table(
        "cmd = [\"a\"]\nupgrade = [\"SIGHUP\", \"1m\"]\n",
        "psflip.toml:2:11: upgrade: expected a table, found an array"
    )]
    #[case::array_of_tables(
        "cmd = [\"a\"]\n[[shutdown]]\ndelay = \"1s\"\n",
        "psflip.toml:2:1: shutdown: expected a table, found an array"
    )]
    #[case::locals_not_a_table(
        "cmd = [\"a\"]\nlocals = \"x\"\n",
        "psflip.toml:2:10: locals: expected a table, found a string"
    )]
    #[case::local_not_a_string(
        "cmd = [\"a\"]\n[locals]\nport = 8080\n",
        "psflip.toml:3:8: locals.port: invalid type: integer `8080`, expected a string"
    )]
    #[case::healthcheck_not_a_table(
        "cmd = [\"a\"]\nhealthcheck = \"alive\"\n",
        "psflip.toml:2:15: healthcheck: expected a table, found a string"
    )]
    #[case::alive_not_a_table(
        "cmd = [\"a\"]\n[healthcheck]\nalive = true\n",
        "psflip.toml:3:9: healthcheck.alive: expected a table, found a boolean"
    )]
    fn errors_name_file_position_and_key(#[case] text: &str, #[case] expected: &str) {
        assert_eq!(err(text), expected);
    }

    #[rstest]
    #[case::listen(
        "cmd = [\"a\"]\n[[listen]]\naddress = \"tcp://:8080\"\n",
        "psflip.toml:2:3: `listen` is not supported yet"
    )]
    #[case::notify(
        "cmd = [\"a\"]\n[healthcheck.notify]\n",
        "psflip.toml:2:14: `healthcheck.notify` is not supported yet"
    )]
    #[case::docker(
        "cmd = [\"a\"]\n[healthcheck.docker]\ncontainer = \"app\"\n",
        "psflip.toml:2:14: `healthcheck.docker` is not supported yet"
    )]
    #[case::docker_inline(
        "cmd = [\"a\"]\nhealthcheck = { docker = { container = \"app\" } }\n",
        "psflip.toml:2:17: `healthcheck.docker` is not supported yet"
    )]
    fn unsupported_features_are_refused_by_name(#[case] text: &str, #[case] expected: &str) {
        assert_eq!(err(text), expected);
    }

    #[rstest]
    #[case::top(
        "cmd = [\"a\"]\n\ncmdd = 1\n",
        "psflip.toml:3:1: unknown key `cmdd` in the top level (expected one of `cmd`, `workdir`, `env`, `pidfile`, `control_socket`, `quiet`, `locals`, `upgrade`, `shutdown`, `healthcheck`, `proxy`)"
    )]
    #[case::upgrade(
        "cmd = [\"a\"]\n[upgrade]\nsignl = \"HUP\"\n",
        "psflip.toml:3:1: unknown key `signl` in [upgrade] (expected `signal` or `timeout`)"
    )]
    #[case::shutdown(
        "cmd = [\"a\"]\n[shutdown]\ntimeot = \"1s\"\n",
        "psflip.toml:3:1: unknown key `timeot` in [shutdown] (expected one of `delay`, `signal`, `timeout`)"
    )]
    #[case::shutdown_dotted(
        "cmd = [\"a\"]\nshutdown.dealy = \"1s\"\n",
        "psflip.toml:2:10: unknown key `dealy` in [shutdown] (expected one of `delay`, `signal`, `timeout`)"
    )]
    #[case::shutdown_inline(
        "cmd = [\"a\"]\nshutdown = { delay = \"1s\", x = 1 }\n",
        "psflip.toml:2:28: unknown key `x` in [shutdown] (expected one of `delay`, `signal`, `timeout`)"
    )]
    #[case::healthcheck(
        "cmd = [\"a\"]\n[healthcheck.alvie]\n",
        "psflip.toml:2:14: unknown key `alvie` in [healthcheck] (expected one of `alive`, `command`, `tcp`, `http`)"
    )]
    #[case::alive(
        "cmd = [\"a\"]\n[healthcheck.alive]\ntimeout = \"1s\"\ninterval = \"1s\"\n",
        "psflip.toml:4:1: unknown key `interval` in [healthcheck.alive] (expected `timeout`)"
    )]
    #[case::command(
        "cmd = [\"a\"]\n[healthcheck.command]\ncmd = [\"true\"]\ntimeout = \"1s\"\n",
        "psflip.toml:4:1: unknown key `timeout` in [healthcheck.command] (expected one of `cmd`, `after`, `interval`)"
    )]
    fn unknown_keys_are_errors_at_every_level(#[case] text: &str, #[case] expected: &str) {
        assert_eq!(err(text), expected);
    }

    #[test]
    fn error_fields_are_structured() {
        let e =
            parse_with("cmd = [\"a\"]\n[shutdown]\ntimeout = \"x\"\n", false).expect_err("invalid");
        assert_eq!(e.path, PathBuf::from("psflip.toml"));
        assert_eq!(
            e.position,
            Some(Position {
                line: 3,
                column: 11
            })
        );
        assert_eq!(e.key.as_deref(), Some("shutdown.timeout"));
        assert!(matches!(*e.kind, ConfigErrorKind::Duration { ref value, .. } if value == "x"));
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        assert_eq!(
            err("cmd = [\"é\", \"{{ X }}\"]\n"),
            "psflip.toml:1:13: cmd[1]: template: unknown function \"X\" (expected one of Env, EnvDefault, AB, BlueGreen, Local, Cat, Now, UTCNow, EscapeRE)"
        );
    }

    #[test]
    fn load_reports_unreadable_files() {
        let e =
            load(Path::new("/nonexistent/psflip.toml"), &opts_with(false)).expect_err("missing");
        assert_eq!(
            e.to_string(),
            "/nonexistent/psflip.toml: cannot read: No such file or directory"
        );
        let e = load(Path::new("/"), &opts_with(false)).expect_err("a directory");
        assert_eq!(e.to_string(), "/: cannot read: Is a directory");
    }

    #[test]
    fn load_reads_the_file_and_cat_resolves_against_base_dir() {
        let dir = std::env::temp_dir().join(format!("psflip-config-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("psflip.toml");
        std::fs::write(&file, "cmd = [\"./app\", \"{{ Cat `version` }}\"]\n").expect("write");
        std::fs::write(dir.join("version"), "v7").expect("write");
        let mut opts = opts_with(false);
        opts.base_dir = dir.clone();
        let loaded = load(&file, &opts);
        std::fs::write(&file, [0xffu8, 0xfe]).expect("write");
        let not_utf8 = load(&file, &opts).map_err(|e| *e.kind);
        std::fs::remove_dir_all(&dir).ok();
        let config = loaded.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.cmd, strings(&["./app", "v7"]));
        assert_eq!(config.path, file);
        assert_eq!(
            not_utf8,
            Err(ConfigErrorKind::Read {
                reason: "file is not valid UTF-8".to_owned()
            })
        );
    }

    #[test]
    fn now_uses_the_generation_start_time() {
        let config = ok("cmd = [\"a\", \"{{ UTCNow `%Y-%m-%dT%H:%M:%SZ` }}\"]\n");
        assert_eq!(config.cmd[1], "2024-02-29T13:14:15Z");
    }

    #[test]
    fn resolved_toml_of_the_spec_example() {
        let config = ok(SPEC_EXAMPLE);
        let expected = r#"# psflip: resolved configuration of "psflip.toml"
cmd = ["./server", "--port", "8081", "--name", "app-blue"]
workdir = "srv"
env = ["MODE=prod", "HOME_COPY=/home/app", "EQ=a=b"]
pidfile = "/run/app-blue.pid"
quiet = true

[locals]
name = "app-blue"
port = "9000"

[upgrade]
signal = "SIGUSR2"
timeout = "1m30s"

[shutdown]
delay = "250ms"
signal = "SIGQUIT"
timeout = "20s"

[healthcheck.alive]
timeout = "1.5s"
"#;
        assert_eq!(config.to_resolved_toml(), expected);
        assert_eq!(parse_with(expected, true), Ok(config));
    }

    #[test]
    fn resolved_toml_escapes_templates_and_toml() {
        let config = Config {
            path: PathBuf::from("x.toml"),
            cmd: strings(&[
                "{{ BlueGreen }}",
                "}}{{{",
                "quote\"back\\slash\nnl\ttab\u{7f}\u{1}é",
            ]),
            workdir: Some(PathBuf::from("{{")),
            env: vec![("K".to_owned(), "{{ Env \"HOME\" }}".to_owned())],
            pidfile: None,
            control_socket: None,
            quiet: false,
            locals: BTreeMap::from([("a b".to_owned(), "{{ Local \"x\" }}".to_owned())]),
            upgrade: UpgradeConfig::default(),
            shutdown: ShutdownConfig::default(),
            healthcheck: HealthCheck::Command {
                cmd: strings(&["check", "{{"]),
                after: Duration::from_millis(1),
                interval: Duration::from_millis(1),
            },
            proxy: vec![
                ProxyConfig {
                    listen: Endpoint::Unix(PathBuf::from("/run/{{ x }}.sock")),
                    forward: Endpoint::Tcp {
                        host: "::1".to_owned(),
                        port: 8081,
                    },
                },
                ProxyConfig {
                    listen: Endpoint::Tcp {
                        host: String::new(),
                        port: 0,
                    },
                    forward: Endpoint::Unix(PathBuf::from("app \"q\".sock")),
                },
            ],
        };
        let text = config.to_resolved_toml();
        assert_eq!(
            parse(&text, Path::new("x.toml"), &opts_with(true)),
            Ok(config),
            "{text}"
        );
    }

    #[test]
    fn proxies_are_templated_and_kept_in_order() {
        let config = ok(r#"
cmd = ["a"]
[locals]
port = '{{ AB "8081" "8082" }}'
[[proxy]]
listen = ":8000"
forward = '127.0.0.1:{{ Local "port" }}'
[[proxy]]
listen = "unix:///run/app-{{ BlueGreen }}.sock"
forward = "unix://srv/app.sock"
[[proxy]]
listen = "tcp://[::1]:8001"
forward = "localhost:8082"
"#);
        let tcp = |host: &str, port| Endpoint::Tcp {
            host: host.to_owned(),
            port,
        };
        assert_eq!(
            config.proxy,
            vec![
                ProxyConfig {
                    listen: tcp("", 8000),
                    forward: tcp("127.0.0.1", 8081),
                },
                ProxyConfig {
                    listen: Endpoint::Unix(PathBuf::from("/run/app-blue.sock")),
                    forward: Endpoint::Unix(PathBuf::from("srv/app.sock")),
                },
                ProxyConfig {
                    listen: tcp("::1", 8001),
                    forward: tcp("localhost", 8082),
                },
            ]
        );
        assert!(config.to_resolved_toml().ends_with(
            "\n[[proxy]]\nlisten = \"tcp://:8000\"\nforward = \"tcp://127.0.0.1:8081\"\n\
             \n[[proxy]]\nlisten = \"unix:///run/app-blue.sock\"\nforward = \"unix://srv/app.sock\"\n\
             \n[[proxy]]\nlisten = \"tcp://[::1]:8001\"\nforward = \"tcp://localhost:8082\"\n"
        ));
    }

    #[rstest]
    #[case::missing_listen(
        "cmd = [\"a\"]\n[[proxy]]\nforward = \"127.0.0.1:8081\"\n",
        "psflip.toml:2:1: proxy[0].listen: missing: each [[proxy]] needs `listen`"
    )]
    #[case::missing_forward(
        "cmd = [\"a\"]\n[[proxy]]\nlisten = \":80\"\n[[proxy]]\nlisten = \":81\"\n",
        "psflip.toml:2:1: proxy[0].forward: missing: each [[proxy]] needs `forward`"
    )]
    #[case::bad_listen(
        "cmd = [\"a\"]\n[[proxy]]\nlisten = \"8000\"\nforward = \"127.0.0.1:8081\"\n",
        "psflip.toml:3:10: proxy[0].listen: missing :port in \"8000\": expected unix:///path, tcp://host:port, host:port, :port or [ipv6]:port"
    )]
    #[case::forward_port_zero(
        "cmd = [\"a\"]\n[[proxy]]\nlisten = \":80\"\nforward = \"127.0.0.1:0\"\n",
        "psflip.toml:4:11: proxy[0].forward: port 0 cannot be connected to"
    )]
    #[case::ipv6_without_brackets(
        "cmd = [\"a\"]\n[[proxy]]\nlisten = \"::1:80\"\nforward = \"127.0.0.1:1\"\n",
        "psflip.toml:3:10: proxy[0].listen: an IPv6 address needs brackets, as in [::1]:80: expected unix:///path, tcp://host:port, host:port, :port or [ipv6]:port"
    )]
    #[case::template(
        "cmd = [\"a\"]\n[[proxy]]\nlisten = \":80\"\nforward = \"{{ Local \\\"p\\\" }}\"\n",
        "psflip.toml:4:11: proxy[0].forward: template: "
    )]
    #[case::listen_twice(
        "cmd = [\"a\"]\n[[proxy]]\nlisten = \"tcp://:80\"\nforward = \"127.0.0.1:1\"\n\
         [[proxy]]\nlisten = \":80\"\nforward = \"127.0.0.1:2\"\n",
        "psflip.toml:6:10: proxy[1].listen: tcp://:80 is already the listen address of proxy[0]"
    )]
    #[case::unknown_key(
        "cmd = [\"a\"]\n[[proxy]]\nlisten = \":80\"\nforwrd = \"127.0.0.1:1\"\n",
        "psflip.toml:4:1: unknown key `forwrd` in [proxy[0]] (expected `listen` or `forward`)"
    )]
    #[case::not_tables(
        "cmd = [\"a\"]\nproxy = \":80\"\n",
        "psflip.toml:2:9: proxy: invalid type: string \":80\", expected a sequence"
    )]
    fn proxy_errors_name_the_entry(#[case] text: &str, #[case] expected: &str) {
        let e = err(text);
        assert!(
            e.starts_with(expected),
            "{e}\nshould start with\n{expected}"
        );
    }

    fn tcp_check(address: Endpoint, interval_ms: u64) -> HealthCheck {
        HealthCheck::Tcp {
            address,
            interval: Duration::from_millis(interval_ms),
        }
    }

    fn tcp_at(host: &str, port: u16) -> Endpoint {
        Endpoint::Tcp {
            host: host.to_owned(),
            port,
        }
    }

    fn http_check(url: &str, status: &str, interval_ms: u64) -> HealthCheck {
        HealthCheck::Http {
            url: HttpUrl::parse(url).expect("a URL"),
            status: StatusPattern::parse(status).expect("a pattern"),
            interval: Duration::from_millis(interval_ms),
        }
    }

    #[rstest]
    #[case::defaults(
        "[healthcheck.tcp]\naddress = \"127.0.0.1:8080\"\n",
        tcp_check(tcp_at("127.0.0.1", 8080), 100)
    )]
    #[case::interval(
        "[healthcheck.tcp]\naddress = \"localhost:80\"\ninterval = \"1s\"\n",
        tcp_check(tcp_at("localhost", 80), 1000)
    )]
    #[case::ipv6(
        "[healthcheck.tcp]\naddress = \"[::1]:8080\"\n",
        tcp_check(tcp_at("::1", 8080), 100)
    )]
    #[case::tcp_scheme(
        "[healthcheck.tcp]\naddress = \"tcp://10.0.0.1:9\"\n",
        tcp_check(tcp_at("10.0.0.1", 9), 100)
    )]
    #[case::unix(
        "[healthcheck.tcp]\naddress = \"unix:///run/app-{{ BlueGreen }}.sock\"\n",
        tcp_check(Endpoint::Unix(PathBuf::from("/run/app-blue.sock")), 100)
    )]
    #[case::relative_unix(
        "[healthcheck.tcp]\naddress = \"unix://app.sock\"\n",
        tcp_check(Endpoint::Unix(PathBuf::from("app.sock")), 100)
    )]
    #[case::templated(
        "[locals]\nport = '{{ AB \"8081\" \"8082\" }}'\n[healthcheck.tcp]\naddress = '127.0.0.1:{{ Local \"port\" }}'\ninterval = '{{ `50ms` }}'\n",
        tcp_check(tcp_at("127.0.0.1", 8081), 50)
    )]
    #[case::inline(
        "healthcheck = { tcp = { address = \":8080\" } }\n",
        tcp_check(tcp_at("", 8080), 100)
    )]
    #[case::http_defaults(
        "[healthcheck.http]\nurl = \"http://127.0.0.1:8080/health\"\n",
        http_check("http://127.0.0.1:8080/health", "2xx", 250)
    )]
    #[case::http_every_key(
        "[healthcheck.http]\nurl = \"http://localhost:{{ Env `PORT` }}\"\nstatus = \"200,204\"\ninterval = \"2s\"\n",
        http_check("http://localhost:9000/", "200,204", 2000)
    )]
    #[case::http_range(
        "[healthcheck.http]\nurl = \"http://[::1]/ready?full=1\"\nstatus = \"{{ `200-399` }}\"\n",
        http_check("http://[::1]:80/ready?full=1", "200-399", 250)
    )]
    fn tcp_and_http_healthchecks(#[case] table: &str, #[case] expected: HealthCheck) {
        let config = ok(&format!("cmd = [\"a\"]\n{table}"));
        assert_eq!(config.healthcheck, expected);
        let text = config.to_resolved_toml();
        assert_eq!(parse_with(&text, false), Ok(config), "{text}");
    }

    #[test]
    fn resolved_toml_of_tcp_and_http() {
        let tcp = ok("cmd = [\"a\"]\n[healthcheck.tcp]\naddress = \"127.0.0.1:8080\"\n");
        assert!(
            tcp.to_resolved_toml().ends_with(
                "\n[healthcheck.tcp]\naddress = \"tcp://127.0.0.1:8080\"\ninterval = \"100ms\"\n"
            ),
            "{}",
            tcp.to_resolved_toml()
        );
        let http = ok(
            "cmd = [\"a\"]\n[healthcheck.http]\nurl = \"HTTP://h:80/{{ `{{` }}\"\nstatus = \"200-299, 304\"\n",
        );
        assert!(
            http.to_resolved_toml().ends_with(
                "\n[healthcheck.http]\nurl = \"http://h/{{\\\"{{\\\"}}\"\nstatus = \"2xx,304\"\ninterval = \"250ms\"\n"
            ),
            "{}",
            http.to_resolved_toml()
        );
    }

    #[rstest]
    #[case::tcp_address_missing(
        "[healthcheck.tcp]\ninterval = \"1s\"\n",
        "psflip.toml:2:14: healthcheck.tcp.address: missing: the address to connect to is required, e.g. address = \"127.0.0.1:8080\" or \"unix:///run/app.sock\""
    )]
    #[case::tcp_address_no_port(
        "[healthcheck.tcp]\naddress = \"127.0.0.1\"\n",
        "psflip.toml:3:11: healthcheck.tcp.address: missing :port in \"127.0.0.1\": expected unix:///path, tcp://host:port, host:port, :port or [ipv6]:port"
    )]
    #[case::tcp_port_zero(
        "[healthcheck.tcp]\naddress = \"127.0.0.1:0\"\n",
        "psflip.toml:3:11: healthcheck.tcp.address: port 0 cannot be connected to"
    )]
    #[case::tcp_http_scheme(
        "[healthcheck.tcp]\naddress = \"http://127.0.0.1:80\"\n",
        "psflip.toml:3:11: healthcheck.tcp.address: unknown scheme \"http\": expected unix:///path, tcp://host:port, host:port, :port or [ipv6]:port"
    )]
    #[case::tcp_address_type(
        "[healthcheck.tcp]\naddress = 8080\n",
        "psflip.toml:3:11: healthcheck.tcp.address: invalid type: integer `8080`, expected a string"
    )]
    #[case::tcp_address_template(
        "[healthcheck.tcp]\naddress = \"{{ Local `port` }}\"\n",
        "psflip.toml:3:11: healthcheck.tcp.address: template: no local named \"port\" in [locals]"
    )]
    #[case::tcp_interval_zero(
        "[healthcheck.tcp]\naddress = \":80\"\ninterval = \"0s\"\n",
        "psflip.toml:4:12: healthcheck.tcp.interval: must be longer than 0s"
    )]
    #[case::tcp_interval_bad(
        "[healthcheck.tcp]\naddress = \":80\"\ninterval = \"100\"\n",
        "psflip.toml:4:12: healthcheck.tcp.interval: invalid duration \"100\": missing unit after \"100\" (expected one of ns, us, µs, ms, s, m, h)"
    )]
    #[case::tcp_interval_too_long(
        "[upgrade]\ntimeout = \"1s\"\n[healthcheck.tcp]\naddress = \":80\"\ninterval = \"1s\"\n",
        "psflip.toml:6:12: healthcheck.tcp.interval: healthcheck.tcp.interval (1s) must be shorter than upgrade.timeout (1s): the check would run only once, at the spawn, before the new child is given up on"
    )]
    #[case::tcp_default_interval_too_long(
        "[upgrade]\ntimeout = \"50ms\"\n[healthcheck.tcp]\naddress = \":80\"\n",
        "psflip.toml:3:11: healthcheck.tcp.interval: healthcheck.tcp.interval (100ms, the default) must be shorter than upgrade.timeout (50ms): the check would run only once, at the spawn, before the new child is given up on"
    )]
    #[case::tcp_unknown_key(
        "[healthcheck.tcp]\naddress = \":80\"\ntimeout = \"1s\"\n",
        "psflip.toml:4:1: unknown key `timeout` in [healthcheck.tcp] (expected `address` or `interval`)"
    )]
    #[case::tcp_not_a_table(
        "[healthcheck]\ntcp = \":80\"\n",
        "psflip.toml:3:7: healthcheck.tcp: expected a table, found a string"
    )]
    #[case::http_url_missing(
        "\n[healthcheck.http]\nstatus = \"2xx\"\n",
        "psflip.toml:3:14: healthcheck.http.url: missing: the URL to check is required, e.g. url = \"http://127.0.0.1:8080/health\""
    )]
    #[case::https(
        "[healthcheck.http]\nurl = \"https://127.0.0.1:8443/health\"\n",
        "psflip.toml:3:7: healthcheck.http.url: https is not supported: the http healthcheck speaks plain HTTP only (point it at a plain-HTTP port, or use [healthcheck.command] with curl)"
    )]
    #[case::http_no_scheme(
        "[healthcheck.http]\nurl = \"127.0.0.1:8080/health\"\n",
        "psflip.toml:3:7: healthcheck.http.url: missing http:// in \"127.0.0.1:8080/health\": expected a URL such as http://127.0.0.1:8080/health"
    )]
    #[case::http_bad_port(
        "[healthcheck.http]\nurl = \"http://x:99999/\"\n",
        "psflip.toml:3:7: healthcheck.http.url: invalid port \"99999\" (expected 1 to 65535)"
    )]
    #[case::http_url_template(
        "[healthcheck.http]\nurl = \"http://x:{{ AB }}/\"\n",
        "psflip.toml:3:7: healthcheck.http.url: template: AB takes 2 arguments, got 0"
    )]
    #[case::http_status(
        "[healthcheck.http]\nurl = \"http://x/\"\nstatus = \"ok\"\n",
        "psflip.toml:4:10: healthcheck.http.status: invalid status \"ok\": expected 2xx, 200, 200-299 or a comma-separated list such as 200,204"
    )]
    #[case::http_status_class(
        "[healthcheck.http]\nurl = \"http://x/\"\nstatus = \"7xx\"\n",
        "psflip.toml:4:10: healthcheck.http.status: invalid status class \"7xx\": expected 2xx, 200, 200-299 or a comma-separated list such as 200,204"
    )]
    #[case::http_status_range(
        "[healthcheck.http]\nurl = \"http://x/\"\nstatus = \"299-200\"\n",
        "psflip.toml:4:10: healthcheck.http.status: empty status range \"299-200\": 299 is above 200"
    )]
    #[case::http_status_type(
        "[healthcheck.http]\nurl = \"http://x/\"\nstatus = 200\n",
        "psflip.toml:4:10: healthcheck.http.status: invalid type: integer `200`, expected a string"
    )]
    #[case::http_interval_zero(
        "[healthcheck.http]\nurl = \"http://x/\"\ninterval = \"0\"\n",
        "psflip.toml:4:12: healthcheck.http.interval: must be longer than 0s"
    )]
    #[case::http_interval_too_long(
        "[upgrade]\ntimeout = \"200ms\"\n[healthcheck.http]\nurl = \"http://x/\"\n",
        "psflip.toml:3:11: healthcheck.http.interval: healthcheck.http.interval (250ms, the default) must be shorter than upgrade.timeout (200ms): the check would run only once, at the spawn, before the new child is given up on"
    )]
    #[case::http_unknown_key(
        "[healthcheck.http]\nurl = \"http://x/\"\nstatuses = \"2xx\"\n",
        "psflip.toml:4:1: unknown key `statuses` in [healthcheck.http] (expected one of `url`, `status`, `interval`)"
    )]
    #[case::tcp_and_http(
        "[healthcheck.tcp]\naddress = \":80\"\n[healthcheck.http]\nurl = \"http://x/\"\n",
        "psflip.toml:4:14: at most one healthcheck may be configured, found both `healthcheck.tcp` and `healthcheck.http`"
    )]
    #[case::http_then_alive(
        "[healthcheck.http]\nurl = \"http://x/\"\n[healthcheck.alive]\n",
        "psflip.toml:4:14: at most one healthcheck may be configured, found both `healthcheck.alive` and `healthcheck.http`"
    )]
    #[case::command_and_tcp(
        "[healthcheck]\ntcp = { address = \":80\" }\ncommand = { cmd = [\"true\"] }\n",
        "psflip.toml:4:1: at most one healthcheck may be configured, found both `healthcheck.command` and `healthcheck.tcp`"
    )]
    #[case::three(
        "[healthcheck.alive]\n[healthcheck.tcp]\naddress = \":80\"\n[healthcheck.http]\nurl = \"http://x/\"\n",
        "psflip.toml:5:14: at most one healthcheck may be configured, found `healthcheck.alive`, `healthcheck.tcp` and `healthcheck.http`"
    )]
    fn tcp_and_http_errors_name_file_position_and_key(#[case] table: &str, #[case] expected: &str) {
        // The tables come after a first line, so line numbers start at 2.
        assert_eq!(err(&format!("cmd = [\"a\"]\n{table}")), expected);
    }

    #[test]
    fn load_options_debug_hides_the_environment() {
        let text = format!("{:?}", LoadOptions::new(true, 5, PathBuf::from("/srv")));
        assert_eq!(
            text,
            "LoadOptions { ab_second: true, now_unix_secs: 5, base_dir: \"/srv\", .. }"
        );
    }
}
