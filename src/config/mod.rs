//! The TOML configuration (SPEC §2): parsing, template expansion, validation.
//!
//! Why it is shaped this way:
//!
//! 1. Every generation re-reads the file, so a configuration error must be
//!    caught before a child is started, and the message must lead the user
//!    straight to the spot: it names the file, the dotted key (`cmd[2]`,
//!    `shutdown.timeout`) and the line and column.
//! 2. A typo must never fall back to a default, so every table is
//!    `deny_unknown_fields`; a feature not built yet is recognised and refused
//!    by name rather than reported as an unknown key (none is left today).
//! 3. The result, [`Config`], is plain comparable data with every template
//!    expanded and every default filled in: the rest of psflip never sees TOML
//!    or templates. [`Config::to_resolved_toml`] prints it back (for
//!    `psflip check`) in a form that parses to the same `Config`.
//!
//! Parsing goes in three passes over one parsed document, one file each:
//! `shape` (tables are tables, unsupported features refused by name), `raw`
//! (serde into structs that keep every string's span) and `resolve` (templates,
//! defaults, durations, signals, cross-field rules). `errors` turns a span into
//! the file, key, line and column of a [`ConfigError`]; `emit` prints a
//! [`Config`] back as TOML through the `toml` serializer. Everything outside the
//! file that expansion depends on comes in through [`LoadOptions`].

mod emit;
mod errors;
mod raw;
mod resolve;
mod shape;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::de::DeTable;

use crate::Signal;
use crate::template;
pub use crate::values::{Endpoint, format_duration, parse_duration, parse_signal};
use crate::values::{HttpUrl, StatusPattern};
use errors::Source;
pub use errors::{ConfigError, ConfigErrorKind, Position};
pub use resolve::{duration_bounds, unfit_shutdown_signal, unfit_upgrade_signal};

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
/// Default `healthcheck.docker.socket`.
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";
/// Default `healthcheck.docker.interval`.
pub const DEFAULT_DOCKER_INTERVAL: Duration = Duration::from_secs(1);
/// Default `[[listen]] name`: what `sd_listen_fds_with_names` reports for an
/// unnamed socket.
pub const DEFAULT_LISTEN_NAME: &str = "unknown";

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
    /// `log_format`: `text` (default) or `json`, one object per line.
    pub log_format: crate::log::Format,
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
    /// `[[listen]]` (socket activation), in file order: passed to every child as
    /// fds 3, 4…; no address twice, none a `[[proxy]]` listen address.
    pub listen: Vec<ListenConfig>,
}

/// One `[[listen]]`: a socket psflip binds once and passes to every child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenConfig {
    /// Where to listen: TCP (v4 or v6) or a Unix socket path.
    pub address: Endpoint,
    /// Its name in `LISTEN_FDNAMES`: 1 to 255 printable ASCII characters, no `:`
    /// and no space.
    pub name: String,
}

/// `[healthcheck.notify] socket`: the kind of socket each child gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NotifySocketKind {
    /// A socket file in a private directory (`"path"`, the default).
    #[default]
    Path,
    /// An abstract socket (`"abstract"`), for a child in another mount namespace.
    Abstract,
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
    /// Keep a successor started ahead of time, waiting (`effects::standby`).
    pub standby: bool,
}

impl Default for UpgradeConfig {
    fn default() -> Self {
        Self {
            signal: DEFAULT_UPGRADE_SIGNAL,
            timeout: DEFAULT_UPGRADE_TIMEOUT,
            standby: false,
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
    /// `[healthcheck.notify]`: healthy once `READY=1` arrives on the child's own
    /// `NOTIFY_SOCKET` (the sd_notify protocol).
    Notify {
        /// A socket file in a private directory, or an abstract socket.
        socket: NotifySocketKind,
    },
    /// `[healthcheck.docker]`: healthy once the Docker engine reports the
    /// container's `State.Health.Status` as `healthy`; asked at the spawn, then
    /// every `interval`.
    Docker {
        /// The container's name or id.
        container: String,
        /// The engine's Unix socket (`unix:///var/run/docker.sock` unless
        /// configured), absolute.
        socket: PathBuf,
        /// Delay between inspections; > 0, shorter than `upgrade.timeout`.
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
    shape::check_shape(&src, document.get_ref())?;
    // The tree goes into the deserializer; errors find positions in a new parse.
    let root = resolve::LazyRoot::new(text);
    let raw = raw::RawConfig::deserialize(toml::de::Deserializer::from(document))
        .map_err(|e| src.serde_error(&e, root.get()))?;
    resolve::resolve(&src, &root, raw, opts)
}
