//! The resolved configuration printed back as TOML (`psflip check`), through
//! the `toml` crate's serializer: every key explicit, durations in Go syntax,
//! signals as `SIGNAME`, every string template-escaped so that it expands to
//! itself.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Config, HealthCheck, NotifySocketKind};
use crate::template;
use crate::values::format_duration;

impl Config {
    /// The resolved configuration as TOML, for `psflip check`: every key
    /// explicit, durations in Go syntax, signals as `SIGNAME`. Values are
    /// template-escaped, so [`super::parse`] turns this text back into an equal
    /// `Config` (given the same path).
    pub fn to_resolved_toml(&self) -> String {
        let header = format!(
            "# psflip: resolved configuration of {:?}\n",
            self.path.display().to_string()
        );
        // Serializing plain strings, maps and lists cannot fail.
        let body = toml::to_string(&Document::from(self)).expect("a TOML document");
        header + &body
    }
}

/// The document as written: field order is key order.
#[derive(Serialize)]
struct Document {
    cmd: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    workdir: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    env: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pidfile: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    control_socket: Option<String>,
    quiet: bool,
    log_format: &'static str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    locals: BTreeMap<String, String>,
    upgrade: Upgrade,
    shutdown: Shutdown,
    healthcheck: Healthcheck,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    proxy: Vec<Proxy>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    listen: Vec<Listen>,
}

#[derive(Serialize)]
struct Listen {
    address: String,
    name: String,
}

#[derive(Serialize)]
struct Upgrade {
    signal: &'static str,
    timeout: String,
    /// Shown only when on: the default is off.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    standby: bool,
}

#[derive(Serialize)]
struct Shutdown {
    delay: String,
    signal: &'static str,
    timeout: String,
}

/// `[healthcheck.KIND]`: the one configured kind.
#[derive(Serialize)]
#[serde(rename_all = "lowercase")]
enum Healthcheck {
    Alive {
        timeout: String,
    },
    Command {
        cmd: Vec<String>,
        after: String,
        interval: String,
    },
    Tcp {
        address: String,
        interval: String,
    },
    Http {
        url: String,
        status: String,
        interval: String,
    },
    Notify {
        socket: &'static str,
    },
    Docker {
        container: String,
        socket: String,
        interval: String,
    },
}

#[derive(Serialize)]
struct Proxy {
    listen: String,
    forward: String,
}

/// A string whose template expansion is `value`.
fn text(value: impl ToString) -> String {
    template::escape(&value.to_string())
}

fn texts(values: &[String]) -> Vec<String> {
    values.iter().map(text).collect()
}

impl From<&Config> for Document {
    fn from(c: &Config) -> Document {
        let path = |p: &std::path::Path| text(p.to_string_lossy());
        Document {
            cmd: texts(&c.cmd),
            workdir: c.workdir.as_deref().map(path),
            env: c
                .env
                .iter()
                .map(|(k, v)| text(format!("{k}={v}")))
                .collect(),
            pidfile: c.pidfile.as_deref().map(path),
            control_socket: c.control_socket.as_deref().map(path),
            quiet: c.quiet,
            log_format: c.log_format.as_str(),
            locals: c.locals.iter().map(|(k, v)| (k.clone(), text(v))).collect(),
            upgrade: Upgrade {
                signal: c.upgrade.signal.as_str(),
                timeout: format_duration(c.upgrade.timeout),
                standby: c.upgrade.standby,
            },
            shutdown: Shutdown {
                delay: format_duration(c.shutdown.delay),
                signal: c.shutdown.signal.as_str(),
                timeout: format_duration(c.shutdown.timeout),
            },
            healthcheck: Healthcheck::from(&c.healthcheck),
            proxy: c
                .proxy
                .iter()
                .map(|p| Proxy {
                    listen: text(&p.listen),
                    forward: text(&p.forward),
                })
                .collect(),
            listen: c
                .listen
                .iter()
                .map(|l| Listen {
                    address: text(&l.address),
                    name: text(&l.name),
                })
                .collect(),
        }
    }
}

impl From<&HealthCheck> for Healthcheck {
    fn from(h: &HealthCheck) -> Healthcheck {
        match h {
            HealthCheck::Alive { timeout } => Healthcheck::Alive {
                timeout: format_duration(*timeout),
            },
            HealthCheck::Command {
                cmd,
                after,
                interval,
            } => Healthcheck::Command {
                cmd: texts(cmd),
                after: format_duration(*after),
                interval: format_duration(*interval),
            },
            HealthCheck::Tcp { address, interval } => Healthcheck::Tcp {
                address: text(address),
                interval: format_duration(*interval),
            },
            HealthCheck::Http {
                url,
                status,
                interval,
            } => Healthcheck::Http {
                url: text(url),
                status: text(status),
                interval: format_duration(*interval),
            },
            HealthCheck::Notify { socket } => Healthcheck::Notify {
                socket: match socket {
                    NotifySocketKind::Path => "path",
                    NotifySocketKind::Abstract => "abstract",
                },
            },
            HealthCheck::Docker {
                container,
                socket,
                interval,
            } => Healthcheck::Docker {
                container: text(container),
                socket: text(format!("unix://{}", socket.display())),
                interval: format_duration(*interval),
            },
        }
    }
}
