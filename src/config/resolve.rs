//! Pass 3, resolution: expands templates, applies defaults, parses durations,
//! signals and addresses, and checks the rules that span several keys (every
//! delay that must fit in `upgrade.timeout`, no `listen` twice).
//!
//! [`resolve`] reads top to bottom in file order, one small function per key or
//! table, so the first error reported is the first one in the file's key order.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::errors::{ConfigError, ConfigErrorKind, Source, key_span, toml_key};
use super::raw::{
    RawAlive, RawCommand, RawConfig, RawDocker, RawEnv, RawHealthcheck, RawHttp, RawListen,
    RawNotify, RawProxy, RawShutdown, RawTcp, RawUpgrade,
};
use super::*;
use crate::template::{self, Context, TemplateError};

/// Pass 3: the whole configuration, in the order its keys are checked.
pub(super) fn resolve(
    src: &Source,
    root: &DeTable,
    raw: RawConfig,
    opts: &LoadOptions,
) -> Result<Config, ConfigError> {
    let mut r = Resolver {
        src,
        root,
        opts,
        locals: BTreeMap::new(),
    };
    r.expand_locals(&raw.locals)?;
    let cmd = r.main_command(raw.cmd.as_ref())?;
    let workdir = r.path(raw.workdir.as_ref(), "workdir")?;
    let env = r.env(raw.env.as_ref())?;
    let pidfile = r.path(raw.pidfile.as_ref(), "pidfile")?;
    let control_socket = r.path(raw.control_socket.as_ref(), "control_socket")?;
    let log_format = r.log_format(raw.log_format.as_ref())?;
    let (upgrade, limit) = r.upgrade(&raw.upgrade)?;
    let shutdown = r.shutdown(&raw.shutdown, &raw.upgrade, upgrade.signal)?;
    let healthcheck = r.healthcheck(&raw.healthcheck, &limit)?;
    let proxy = r.proxies(&raw.proxy)?;
    let listen = r.listens(&raw.listen, &proxy)?;
    Ok(Config {
        path: src.path.to_owned(),
        cmd,
        workdir,
        env,
        pidfile,
        control_socket,
        quiet: raw.quiet.unwrap_or(false),
        log_format,
        upgrade,
        shutdown,
        healthcheck,
        proxy,
        listen,
        locals: r.locals,
    })
}

/// Expands and validates values, keeping the source for positioned errors.
struct Resolver<'a> {
    src: &'a Source<'a>,
    root: &'a DeTable<'a>,
    opts: &'a LoadOptions,
    locals: BTreeMap<String, String>,
}

/// `upgrade.timeout` and where it was written (`None`: the default): the bound
/// of every delay that must elapse before the new child is given up on.
struct Limit {
    timeout: Duration,
    span: Option<Range<usize>>,
}

// ---------------------------------------------------------------------------
// One function per table.

impl Resolver<'_> {
    /// `cmd`: required.
    fn main_command(
        &self,
        raw: Option<&Spanned<Vec<Spanned<String>>>>,
    ) -> Result<Vec<String>, ConfigError> {
        let raw = self.required(
            raw,
            &[],
            "cmd",
            "missing: the command to run is required, e.g. cmd = [\"./server\"]",
        )?;
        self.command(raw, "cmd")
    }

    /// `[upgrade]`, and the limit its timeout sets.
    fn upgrade(&self, raw: &RawUpgrade) -> Result<(UpgradeConfig, Limit), ConfigError> {
        let signal = self.signal(
            raw.signal.as_ref(),
            "upgrade.signal",
            DEFAULT_UPGRADE_SIGNAL,
        )?;
        let (timeout, span) = self.duration(
            raw.timeout.as_ref(),
            "upgrade.timeout",
            DEFAULT_UPGRADE_TIMEOUT,
        )?;
        if timeout.is_zero() {
            return Err(self.src.invalid(
                span,
                "upgrade.timeout",
                "must be longer than 0s: the new child needs time to become healthy",
            ));
        }
        Ok((UpgradeConfig { signal, timeout }, Limit { timeout, span }))
    }

    /// `[shutdown]`; its signal must differ from the upgrade signal.
    fn shutdown(
        &self,
        raw: &RawShutdown,
        raw_upgrade: &RawUpgrade,
        upgrade_signal: Signal,
    ) -> Result<ShutdownConfig, ConfigError> {
        let delay = self.duration(raw.delay.as_ref(), "shutdown.delay", DEFAULT_SHUTDOWN_DELAY)?;
        let signal = self.signal(
            raw.signal.as_ref(),
            "shutdown.signal",
            DEFAULT_SHUTDOWN_SIGNAL,
        )?;
        let timeout = self.duration(
            raw.timeout.as_ref(),
            "shutdown.timeout",
            DEFAULT_SHUTDOWN_TIMEOUT,
        )?;
        if signal == upgrade_signal {
            let span = raw.signal.as_ref().or(raw_upgrade.signal.as_ref());
            return Err(self.src.invalid(
                span.map(|s| s.span()),
                "shutdown.signal",
                format!(
                    "the same signal as upgrade.signal ({}): every signal but the upgrade signal is forwarded to the child, so a stop meant for the child would start an upgrade instead",
                    upgrade_signal.as_str()
                ),
            ));
        }
        Ok(ShutdownConfig {
            delay: delay.0,
            signal,
            timeout: timeout.0,
        })
    }

    /// `[healthcheck.*]`: the shape pass has made sure at most one is given.
    fn healthcheck(&self, raw: &RawHealthcheck, limit: &Limit) -> Result<HealthCheck, ConfigError> {
        if let Some(command) = &raw.command {
            self.command_check(command, limit)
        } else if let Some(tcp) = &raw.tcp {
            self.tcp_check(tcp, limit)
        } else if let Some(http) = &raw.http {
            self.http_check(http, limit)
        } else if let Some(notify) = &raw.notify {
            self.notify_check(notify)
        } else if let Some(docker) = &raw.docker {
            self.docker_check(docker, limit)
        } else {
            self.alive_check(raw.alive.as_ref(), limit)
        }
    }

    /// `[healthcheck.command]`.
    fn command_check(&self, raw: &RawCommand, limit: &Limit) -> Result<HealthCheck, ConfigError> {
        let raw_cmd = self.required(
            raw.cmd.as_ref(),
            &["healthcheck", "command"],
            "healthcheck.command.cmd",
            "missing: the healthcheck command is required",
        )?;
        let cmd = self.command(raw_cmd, "healthcheck.command.cmd")?;
        let key = "healthcheck.command.after";
        let (after, after_span) = self.duration(raw.after.as_ref(), key, DEFAULT_COMMAND_AFTER)?;
        self.fits(
            limit,
            after,
            after_span,
            key,
            "the check would never run in time",
        )?;
        let key = "healthcheck.command.interval";
        let (interval, span) =
            self.duration(raw.interval.as_ref(), key, DEFAULT_COMMAND_INTERVAL)?;
        if interval.is_zero() {
            return Err(self.src.invalid(span, key, "must be longer than 0s"));
        }
        Ok(HealthCheck::Command {
            cmd,
            after,
            interval,
        })
    }

    /// `[healthcheck.tcp]`.
    fn tcp_check(&self, raw: &RawTcp, limit: &Limit) -> Result<HealthCheck, ConfigError> {
        let key = "healthcheck.tcp.address";
        let raw_address = self.required(
            raw.address.as_ref(),
            &["healthcheck", "tcp"],
            key,
            "missing: the address to connect to is required, e.g. address = \"127.0.0.1:8080\" or \"unix:///run/app.sock\"",
        )?;
        let address = self.parsed(raw_address, key, |text| Endpoint::parse(text, false))?;
        let interval = self.probe_interval(
            raw.interval.as_ref(),
            "healthcheck.tcp.interval",
            DEFAULT_TCP_INTERVAL,
            limit,
        )?;
        Ok(HealthCheck::Tcp { address, interval })
    }

    /// `[healthcheck.http]`.
    fn http_check(&self, raw: &RawHttp, limit: &Limit) -> Result<HealthCheck, ConfigError> {
        let key = "healthcheck.http.url";
        let raw_url = self.required(
            raw.url.as_ref(),
            &["healthcheck", "http"],
            key,
            "missing: the URL to check is required, e.g. url = \"http://127.0.0.1:8080/health\"",
        )?;
        let url = self.parsed(raw_url, key, HttpUrl::parse)?;
        let status = match &raw.status {
            None => StatusPattern::success(),
            Some(raw_status) => {
                self.parsed(raw_status, "healthcheck.http.status", StatusPattern::parse)?
            }
        };
        let interval = self.probe_interval(
            raw.interval.as_ref(),
            "healthcheck.http.interval",
            DEFAULT_HTTP_INTERVAL,
            limit,
        )?;
        Ok(HealthCheck::Http {
            url,
            status,
            interval,
        })
    }

    /// `[healthcheck.notify]`.
    fn notify_check(&self, raw: &RawNotify) -> Result<HealthCheck, ConfigError> {
        let socket = match &raw.socket {
            None => NotifySocketKind::default(),
            Some(value) => self.parsed(value, "healthcheck.notify.socket", |text| match text {
                "path" => Ok(NotifySocketKind::Path),
                "abstract" => Ok(NotifySocketKind::Abstract),
                other => Err(format!(
                    "expected \"path\" (a socket file in a private directory) or \"abstract\" (an abstract socket), found {other:?}"
                )),
            })?,
        };
        Ok(HealthCheck::Notify { socket })
    }

    /// `[healthcheck.docker]`.
    fn docker_check(&self, raw: &RawDocker, limit: &Limit) -> Result<HealthCheck, ConfigError> {
        let key = "healthcheck.docker.container";
        let raw_container = self.required(
            raw.container.as_ref(),
            &["healthcheck", "docker"],
            key,
            "missing: the container to watch is required, e.g. container = \"app-{{ BlueGreen }}\"",
        )?;
        let container = self.parsed(raw_container, key, |name| {
            // Docker's own rule for names (ids fit it too); it also keeps the
            // name safe in the request's path.
            let valid = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
            if valid {
                Ok(name.to_owned())
            } else {
                Err(format!(
                    "{name:?} is not a container name: expected [a-zA-Z0-9][a-zA-Z0-9_.-]*"
                ))
            }
        })?;
        let socket = match &raw.socket {
            None => PathBuf::from(DEFAULT_DOCKER_SOCKET),
            Some(value) => self.parsed(value, "healthcheck.docker.socket", |text| {
                match text.strip_prefix("unix://") {
                    Some(path) if path.starts_with('/') && !path.contains('\0') => {
                        Ok(PathBuf::from(path))
                    }
                    _ => Err(format!(
                        "expected the Docker engine's Unix socket as unix:///absolute/path, found {text:?}"
                    )),
                }
            })?,
        };
        let interval = self.probe_interval(
            raw.interval.as_ref(),
            "healthcheck.docker.interval",
            DEFAULT_DOCKER_INTERVAL,
            limit,
        )?;
        Ok(HealthCheck::Docker {
            container,
            socket,
            interval,
        })
    }

    /// `[healthcheck.alive]`, also when no healthcheck is configured.
    fn alive_check(
        &self,
        raw: Option<&RawAlive>,
        limit: &Limit,
    ) -> Result<HealthCheck, ConfigError> {
        let key = "healthcheck.alive.timeout";
        let raw_timeout = raw.and_then(|a| a.timeout.as_ref());
        let (timeout, span) = self.duration(raw_timeout, key, DEFAULT_ALIVE_TIMEOUT)?;
        self.fits(
            limit,
            timeout,
            span,
            key,
            "the new child could never be healthy in time",
        )?;
        Ok(HealthCheck::Alive { timeout })
    }

    /// The interval of a tcp or http check, which first runs at the spawn.
    fn probe_interval(
        &self,
        raw: Option<&Spanned<String>>,
        key: &str,
        default: Duration,
        limit: &Limit,
    ) -> Result<Duration, ConfigError> {
        let (interval, span) = self.duration(raw, key, default)?;
        if interval.is_zero() {
            return Err(self.src.invalid(span, key, "must be longer than 0s"));
        }
        self.fits(
            limit,
            interval,
            span,
            key,
            "the check would run only once, at the spawn, before the new child is given up on",
        )?;
        Ok(interval)
    }

    /// A delay that must be shorter than `upgrade.timeout`; the error names both
    /// keys, and points at the delay (or at `upgrade.timeout` when the delay is a
    /// default).
    fn fits(
        &self,
        limit: &Limit,
        delay: Duration,
        span: Option<Range<usize>>,
        key: &str,
        what: &str,
    ) -> Result<(), ConfigError> {
        if delay < limit.timeout {
            return Ok(());
        }
        let default = if span.is_none() { ", the default" } else { "" };
        Err(self.src.invalid(
            span.or(limit.span.clone()),
            key,
            format!(
                "{key} ({}{default}) must be shorter than upgrade.timeout ({}): {what}",
                format_duration(delay),
                format_duration(limit.timeout)
            ),
        ))
    }

    /// `[[proxy]]`: both addresses required and valid, no `listen` twice.
    fn proxies(&self, raw: &[RawProxy]) -> Result<Vec<ProxyConfig>, ConfigError> {
        let table_span = |i: usize| match self.root.get("proxy").map(|v| v.get_ref()) {
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
                self.parsed(value, &key, |text| Endpoint::parse(text, listen))
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

    /// `[[listen]]`: an address required, no address twice (nor one a
    /// `[[proxy]]` listens on), a name fit for `LISTEN_FDNAMES`.
    fn listens(
        &self,
        raw: &[RawListen],
        proxies: &[ProxyConfig],
    ) -> Result<Vec<ListenConfig>, ConfigError> {
        let table_span = |i: usize| match self.root.get("listen").map(|v| v.get_ref()) {
            Some(DeValue::Array(items)) => items.get(i).map(|t| t.span()),
            _ => None,
        };
        let base = &self.opts.base_dir;
        let mut out: Vec<ListenConfig> = Vec::with_capacity(raw.len());
        for (i, entry) in raw.iter().enumerate() {
            let key = format!("listen[{i}].address");
            let Some(raw_address) = entry.address.as_ref() else {
                return Err(self.src.invalid(
                    table_span(i),
                    &key,
                    "missing: each [[listen]] needs `address`, e.g. address = \"tcp://:8080\"",
                ));
            };
            let address = self.parsed(raw_address, &key, |text| Endpoint::parse(text, true))?;
            let same = |other: &Endpoint| other.absolute(base) == address.absolute(base);
            let taken = if let Some(j) = out.iter().position(|l| same(&l.address)) {
                Some(format!("listen[{j}]"))
            } else {
                proxies
                    .iter()
                    .position(|p| same(&p.listen))
                    .map(|j| format!("the listen address of proxy[{j}]"))
            };
            if let Some(taken) = taken {
                return Err(self.src.invalid(
                    Some(raw_address.span()),
                    &key,
                    format!("{address} is already {taken}"),
                ));
            }
            let name = match &entry.name {
                None => DEFAULT_LISTEN_NAME.to_owned(),
                Some(value) => self.parsed(value, &format!("listen[{i}].name"), |name| {
                    let fit = !name.is_empty()
                        && name.len() <= 255
                        && name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
                    if fit {
                        Ok(name.to_owned())
                    } else {
                        Err(format!(
                            "{name:?} cannot go into LISTEN_FDNAMES: 1 to 255 printable ASCII characters, no ':' and no space"
                        ))
                    }
                })?,
            };
            out.push(ListenConfig { address, name });
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------
// One function per kind of value.

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

    /// A required value; when missing, the error points at `table` (the
    /// top level: no position) and names `key`.
    fn required<'v, T>(
        &self,
        value: Option<&'v T>,
        table: &[&str],
        key: &str,
        message: &str,
    ) -> Result<&'v T, ConfigError> {
        value.ok_or_else(|| self.src.invalid(key_span(self.root, table), key, message))
    }

    /// A string value expanded, then parsed by `parse` (whose error is the message).
    fn parsed<T>(
        &self,
        raw: &Spanned<String>,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        let text = self.expand(raw, key)?;
        parse(&text).map_err(|why| self.src.invalid(Some(raw.span()), key, why))
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
    /// `log_format`: `text` or `json`.
    fn log_format(&self, raw: Option<&Spanned<String>>) -> Result<crate::log::Format, ConfigError> {
        let Some(raw) = raw else {
            return Ok(crate::log::Format::Text);
        };
        let value = self.expand(raw, "log_format")?;
        crate::log::Format::parse(&value).ok_or_else(|| {
            self.src.invalid(
                Some(raw.span()),
                "log_format",
                format!("{value:?} is not a log format: expected \"text\" or \"json\""),
            )
        })
    }

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
        let kind = |value, reason| ConfigErrorKind::Duration { value, reason };
        let d = self.quoted(raw, key, kind, |text| bounded_duration(text, key))?;
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
        let kind = |value, reason| ConfigErrorKind::Signal { value, reason };
        self.quoted(raw, key, kind, |text| fitting_signal(text, key))
    }

    /// A value whose error quotes it (a duration, a signal): expanded, then
    /// `parse`d; `kind` words the error.
    fn quoted<T>(
        &self,
        raw: &Spanned<String>,
        key: &str,
        kind: fn(String, String) -> ConfigErrorKind,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        let value = self.expand(raw, key)?;
        parse(&value).map_err(|reason| {
            self.src
                .error(Some(raw.span()), Some(key.to_owned()), kind(value, reason))
        })
    }
}

/// A Go duration within the bounds of `key` ([`duration_bounds`]).
fn bounded_duration(text: &str, key: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    let (min, max) = duration_bounds(key);
    if d > max {
        return Err(format!(
            "longer than {}, the most {key} allows",
            format_duration(max)
        ));
    }
    // Zero, where it is not allowed, gets its own message from the caller.
    if !d.is_zero() && d < min {
        return Err(format!(
            "shorter than {}, the least {key} allows",
            format_duration(min)
        ));
    }
    Ok(d)
}

/// A signal name, refused when unfit for `key`.
fn fitting_signal(text: &str, key: &str) -> Result<Signal, String> {
    let signal = parse_signal(text)?;
    let why = match key {
        "upgrade.signal" => unfit_upgrade_signal(signal),
        "shutdown.signal" => unfit_shutdown_signal(signal),
        _ => None,
    };
    match why {
        Some(why) => Err(format!("{}: {why}", signal.as_str())),
        None => Ok(signal),
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
