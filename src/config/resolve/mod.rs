//! Pass 3, resolution: expands templates, applies defaults, parses durations,
//! signals and addresses, and checks the rules that span several keys (every
//! delay that must fit in `upgrade.timeout`, no `listen` twice).
//!
//! [`resolve`] reads top to bottom in file order, one small function per key or
//! table, so the first error reported is the first one in the file's key order.
//! Here: the tables; `healthcheck`: one function per healthcheck kind;
//! `value`: one function per kind of value (templates, paths, durations,
//! signals) and the bounds each key puts on its value.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::errors::{ConfigError, Source};
use super::raw::{RawConfig, RawListen, RawProxy, RawShutdown, RawUpgrade};
use super::*;

mod healthcheck;
mod value;

pub use value::{duration_bounds, unfit_shutdown_signal, unfit_upgrade_signal};

/// Pass 3: the whole configuration, in the order its keys are checked.
pub(super) fn resolve(
    src: &Source,
    root: &LazyRoot,
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

/// The parsed document, for the positions of errors only: parsed again from the
/// text on first use, so that a valid configuration never holds a second copy of
/// its tree while it is resolved (a 10 MB `[env]` is over a million nodes).
pub(in crate::config) struct LazyRoot<'a> {
    text: &'a str,
    tree: std::cell::OnceCell<Option<toml::Spanned<DeTable<'a>>>>,
}

impl<'a> LazyRoot<'a> {
    pub(in crate::config) fn new(text: &'a str) -> LazyRoot<'a> {
        LazyRoot {
            text,
            tree: std::cell::OnceCell::new(),
        }
    }

    /// The document's root table (empty if it does not parse, which cannot be:
    /// it parsed once already).
    pub(in crate::config) fn get(&self) -> &DeTable<'a> {
        static EMPTY: std::sync::OnceLock<DeTable<'static>> = std::sync::OnceLock::new();
        match self.tree.get_or_init(|| DeTable::parse(self.text).ok()) {
            Some(tree) => tree.get_ref(),
            None => EMPTY.get_or_init(DeTable::default),
        }
    }
}

/// Expands and validates values, keeping the source for positioned errors.
struct Resolver<'a, 't> {
    src: &'a Source<'a>,
    root: &'a LazyRoot<'t>,
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

impl Resolver<'_, '_> {
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
        let upgrade = UpgradeConfig {
            signal,
            timeout,
            standby: raw.standby.unwrap_or(false),
        };
        Ok((upgrade, Limit { timeout, span }))
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

    /// `[[proxy]]`: both addresses required and valid, no `listen` twice.
    fn proxies(&self, raw: &[RawProxy]) -> Result<Vec<ProxyConfig>, ConfigError> {
        let table_span = |i: usize| match self.root.get().get("proxy").map(|v| v.get_ref()) {
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
        let table_span = |i: usize| match self.root.get().get("listen").map(|v| v.get_ref()) {
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
