//! One function per kind of value: templates expanded, then parsed, each error
//! pointing at the value's span.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::Resolver;
use crate::config::errors::{ConfigError, ConfigErrorKind, key_span, toml_key};
use crate::config::raw::RawEnv;
use crate::config::*;
use crate::template::{self, Context, TemplateError};

impl Resolver<'_, '_> {
    pub(super) fn context<'c>(&'c self, locals: &'c BTreeMap<String, String>) -> Context<'c> {
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
    pub(super) fn required<'v, T>(
        &self,
        value: Option<&'v T>,
        table: &[&str],
        key: &str,
        message: &str,
    ) -> Result<&'v T, ConfigError> {
        value.ok_or_else(|| {
            self.src
                .invalid(key_span(self.root.get(), table), key, message)
        })
    }

    /// A string value expanded, then parsed by `parse` (whose error is the message).
    pub(super) fn parsed<T>(
        &self,
        raw: &Spanned<String>,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        let text = self.expand(raw, key)?;
        parse(&text).map_err(|why| self.src.invalid(Some(raw.span()), key, why))
    }

    pub(super) fn template_error(
        &self,
        span: Range<usize>,
        key: &str,
        e: TemplateError,
    ) -> ConfigError {
        self.src.error(
            Some(span),
            Some(key.to_owned()),
            ConfigErrorKind::Template(e),
        )
    }

    /// Expands the templates of a string value.
    pub(super) fn expand(&self, value: &Spanned<String>, key: &str) -> Result<String, ConfigError> {
        template::expand(value.get_ref(), &self.context(&self.locals))
            .map_err(|e| self.template_error(value.span(), key, e))
    }

    /// Expands a value that will reach `execve` or the file system, where a
    /// NUL byte cannot go.
    pub(super) fn expand_c(
        &self,
        value: &Spanned<String>,
        key: &str,
    ) -> Result<String, ConfigError> {
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
    pub(super) fn expand_locals(
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
    pub(super) fn command(
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
    pub(super) fn log_format(
        &self,
        raw: Option<&Spanned<String>>,
    ) -> Result<crate::log::Format, ConfigError> {
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

    pub(super) fn path(
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
    pub(super) fn env(&self, raw: Option<&RawEnv>) -> Result<Vec<(String, String)>, ConfigError> {
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

    pub(super) fn check_env_name(
        &self,
        name: &str,
        span: Range<usize>,
        key: &str,
    ) -> Result<(), ConfigError> {
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
    pub(super) fn duration(
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
    pub(super) fn signal(
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
    pub(super) fn quoted<T>(
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
