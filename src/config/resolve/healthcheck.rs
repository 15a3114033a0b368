//! `[healthcheck.*]`: one function per kind, and the rules its delays obey
//! (every one shorter than `upgrade.timeout`).

use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use super::{Limit, Resolver};
use crate::config::errors::ConfigError;
use crate::config::raw::{
    RawAlive, RawCommand, RawDocker, RawHealthcheck, RawHttp, RawNotify, RawTcp,
};
use crate::config::*;

impl Resolver<'_, '_> {
    /// `[healthcheck.*]`: the shape pass has made sure at most one is given.
    pub(super) fn healthcheck(
        &self,
        raw: &RawHealthcheck,
        limit: &Limit,
    ) -> Result<HealthCheck, ConfigError> {
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
}
