//! Property tests of the configuration layer: durations and signals parse what
//! they print, nothing panics on arbitrary input, and a resolved configuration
//! printed by `psflip check` parses back to the same `Config`.

#[path = "common/props.rs"]
mod props;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use proptest::prelude::*;
use psflip::Signal;
use psflip::config::{
    self, Config, Endpoint, HealthCheck, LoadOptions, ShutdownConfig, UpgradeConfig,
    format_duration, parse_duration, parse_signal,
};
use psflip::template::{self, Context};
use psflip::values::{HttpUrl, StatusPattern};

/// Options with an empty environment, so nothing outside the text matters.
fn opts(ab_second: bool) -> LoadOptions {
    LoadOptions::new(ab_second, 1_709_212_455, PathBuf::from("/nonexistent-base"))
        .with_env(|_| None)
}

/// Any text, with template and TOML syntax over-represented.
fn tricky_text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            4 => any::<char>().prop_map(String::from),
            1 => prop::sample::select(vec![
                "{{", "}}", "{", "}", "\"", "`", "\\", "\n", "=", "[", "]", " ", "Env", "AB", "BlueGreen",
                "Local", "EscapeRE", "UTCNow", "%Y", "\\x", "\\u", "'''", "\"\"\"", "#", ".", "[[",
            ])
            .prop_map(String::from),
        ],
        0..24,
    )
    .prop_map(|parts| parts.concat())
}

/// A string value that can reach `execve`: no NUL.
fn value() -> impl Strategy<Value = String> {
    tricky_text().prop_map(|s| s.replace('\0', ""))
}

fn non_empty_value() -> impl Strategy<Value = String> {
    value().prop_map(|s| if s.is_empty() { "x".to_owned() } else { s })
}

fn command() -> impl Strategy<Value = Vec<String>> {
    (non_empty_value(), prop::collection::vec(value(), 0..4)).prop_map(|(program, args)| {
        let mut cmd = vec![program];
        cmd.extend(args);
        cmd
    })
}

fn env_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Z_][A-Z0-9_]{0,8}",
        non_empty_value().prop_map(|s| s.replace('=', "_")),
    ]
}

fn millis(max_ms: u64) -> impl Strategy<Value = Duration> {
    (0..=max_ms).prop_map(Duration::from_millis)
}

fn any_signal() -> impl Strategy<Value = Signal> {
    prop::sample::select(Signal::iterator().collect::<Vec<_>>())
}

fn upgrade_signal() -> impl Strategy<Value = Signal> {
    prop::sample::select(
        Signal::iterator()
            .filter(|s| config::unfit_upgrade_signal(*s).is_none())
            .collect::<Vec<_>>(),
    )
}

fn shutdown_signal() -> impl Strategy<Value = Signal> {
    prop::sample::select(
        Signal::iterator()
            .filter(|s| config::unfit_shutdown_signal(*s).is_none())
            .collect::<Vec<_>>(),
    )
}

const DAY_MS: u64 = 86_400_000;

/// A host to connect to: an IP address (IPv6 without brackets) or a name.
fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("localhost".to_owned()),
        any::<Ipv4Addr>().prop_map(|ip| ip.to_string()),
        any::<Ipv6Addr>().prop_map(|ip| ip.to_string()),
        "[A-Za-z0-9][A-Za-z0-9._-]{0,12}",
    ]
}

/// A `[healthcheck.tcp]` address: TCP (an empty host means the loopback) or a
/// Unix socket path.
fn address() -> impl Strategy<Value = Endpoint> {
    prop_oneof![
        (prop_oneof![Just(String::new()), host()], 1..=u16::MAX)
            .prop_map(|(host, port)| Endpoint::Tcp { host, port }),
        non_empty_value()
            .prop_filter("a valid Unix socket path", |p| {
                !p.starts_with('@') && !p.contains('\n') && p.len() <= 107
            })
            .prop_map(|p| Endpoint::Unix(PathBuf::from(p))),
    ]
}

/// A host in the canonical form `HttpUrl::parse` gives it (the URL standard's):
/// an IP address (IPv6 without brackets) or a lowercase name whose labels do
/// not read as numbers or as punycode.
fn http_host() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("localhost".to_owned()),
        any::<Ipv4Addr>().prop_map(|ip| ip.to_string()),
        any::<Ipv6Addr>().prop_map(|ip| ip.to_string()),
        "[a-z][a-z0-9_-]{0,8}(\\.[a-z_][a-z0-9_-]{0,8}){0,2}"
            .prop_filter("not punycode", |h| !h.contains("--")),
    ]
}

/// A `[healthcheck.http]` URL.
fn http_url() -> impl Strategy<Value = HttpUrl> {
    (http_host(), 1..=u16::MAX, "(/[!-\"$-~]{0,16}){1,3}").prop_map(|(host, port, path)| HttpUrl {
        host,
        port,
        path,
    })
}

/// A `[healthcheck.http]` status pattern.
fn status_pattern() -> impl Strategy<Value = StatusPattern> {
    let item = prop_oneof![
        (1..=5u16).prop_map(|class| format!("{class}xx")),
        (100..=599u16).prop_map(|code| code.to_string()),
        (100..=599u16, 100..=599u16).prop_map(|(a, b)| format!("{}-{}", a.min(b), a.max(b))),
    ];
    prop::collection::vec(item, 1..4)
        .prop_map(|items| StatusPattern::parse(&items.join(",")).expect("a valid pattern"))
}

/// Valid configurations: every rule of `config::parse` holds.
fn configs() -> impl Strategy<Value = Config> {
    let upgrade = (
        upgrade_signal(),
        (2..=DAY_MS).prop_map(Duration::from_millis),
    );
    let shutdown = (millis(DAY_MS), shutdown_signal(), millis(DAY_MS));
    let healthcheck_choice = (
        0..4u8,
        command(),
        0.0..1.0f64,
        1..=DAY_MS,
        address(),
        http_url(),
        status_pattern(),
    );
    (
        command(),
        prop::option::of(non_empty_value()),
        prop::collection::vec((env_name(), value()), 0..4),
        prop::option::of(non_empty_value()),
        any::<bool>(),
        prop::collection::btree_map(tricky_text(), tricky_text(), 0..3),
        upgrade,
        shutdown,
        healthcheck_choice,
    )
        .prop_map(
            |(cmd, workdir, env, pidfile, quiet, locals, (up_signal, up_timeout), shutdown, hc)| {
                let (kind, hc_cmd, fraction, interval_ms, address, url, status) = hc;
                // Healthcheck delays strictly below upgrade.timeout, in whole ms.
                let below = |fraction: f64| {
                    let max_ms = up_timeout.as_millis() as u64 - 1;
                    Duration::from_millis((max_ms as f64 * fraction) as u64)
                };
                // A tcp or http interval is also at least 1ms.
                let interval = below(fraction).max(Duration::from_millis(1));
                let healthcheck = match kind {
                    0 => HealthCheck::Alive {
                        timeout: below(fraction),
                    },
                    1 => HealthCheck::Command {
                        cmd: hc_cmd,
                        after: below(fraction),
                        interval: Duration::from_millis(interval_ms),
                    },
                    2 => HealthCheck::Tcp { address, interval },
                    _ => HealthCheck::Http {
                        url,
                        status,
                        interval,
                    },
                };
                // The two signals differ: the shutdown signal is forwarded.
                let up_signal = if up_signal == shutdown.1 {
                    if shutdown.1 == Signal::SIGHUP {
                        Signal::SIGUSR2
                    } else {
                        Signal::SIGHUP
                    }
                } else {
                    up_signal
                };
                Config {
                    path: PathBuf::from("generated.toml"),
                    cmd,
                    workdir: workdir.map(PathBuf::from),
                    env,
                    pidfile: pidfile.map(PathBuf::from),
                    control_socket: None,
                    quiet,
                    log_format: if quiet {
                        psflip::log::Format::Json
                    } else {
                        psflip::log::Format::Text
                    },
                    locals: locals.into_iter().collect::<BTreeMap<_, _>>(),
                    upgrade: UpgradeConfig {
                        signal: up_signal,
                        timeout: up_timeout,
                        standby: !quiet,
                    },
                    shutdown: ShutdownConfig {
                        delay: shutdown.0,
                        signal: shutdown.1,
                        timeout: shutdown.2,
                    },
                    healthcheck,
                    proxy: Vec::new(),
                    listen: Vec::new(),
                }
            },
        )
}

/// Every way of writing a signal name: any case, with or without `SIG`.
fn signal_spelling() -> impl Strategy<Value = (Signal, String)> {
    (
        any_signal(),
        any::<bool>(),
        prop::collection::vec(any::<bool>(), 16),
    )
        .prop_map(|(signal, with_prefix, upper)| {
            let name = signal.as_str();
            let name = if with_prefix { name } else { &name[3..] };
            let spelled = name
                .chars()
                .zip(upper.iter().cycle())
                .map(|(c, up)| {
                    if *up {
                        c.to_ascii_uppercase()
                    } else {
                        c.to_ascii_lowercase()
                    }
                })
                .collect();
            (signal, spelled)
        })
}

proptest! {
    #![proptest_config(props::config(512))]

    #[test]
    fn durations_round_trip_in_milliseconds(ms in 0..=365 * DAY_MS) {
        let d = Duration::from_millis(ms);
        prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
    }

    #[test]
    fn durations_round_trip_in_nanoseconds(nanos in 0..=i64::MAX as u64) {
        let d = Duration::from_nanos(nanos);
        prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
    }

    #[test]
    fn parse_duration_never_panics(s in any::<String>(), t in "[-+0-9.µμnumshd ]{0,24}") {
        let _ = parse_duration(&s);
        if let Ok(d) = parse_duration(&t) {
            // Whatever it accepts, it can print and read back.
            prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }

    #[test]
    fn parse_signal_never_panics(s in any::<String>()) {
        let _ = parse_signal(&s);
    }

    #[test]
    fn parse_signal_accepts_every_spelling((signal, spelled) in signal_spelling()) {
        prop_assert_eq!(parse_signal(&spelled), Ok(signal), "{}", spelled);
    }

    #[test]
    fn expand_never_panics(s in any::<String>(), t in tricky_text(), ab_second in any::<bool>()) {
        let locals = BTreeMap::from([("x".to_owned(), "y".to_owned())]);
        let env = |key: &str| (key == "HOME").then(|| "/home".to_owned());
        let ctx = Context {
            env: &env,
            ab_second,
            now_unix_secs: 1_709_212_455,
            locals: &locals,
            base_dir: Path::new("/nonexistent-base"),
        };
        let _ = template::expand(&s, &ctx);
        let _ = template::expand(&t, &ctx);
    }

    #[test]
    fn escape_expands_to_itself(s in tricky_text()) {
        let locals = BTreeMap::new();
        let ctx = Context {
            env: &|_: &str| None,
            ab_second: false,
            now_unix_secs: 0,
            locals: &locals,
            base_dir: Path::new("/"),
        };
        prop_assert_eq!(template::expand(&template::escape(&s), &ctx), Ok(s));
    }

    #[test]
    fn parse_never_panics(s in any::<String>(), t in tricky_text()) {
        let _ = config::parse(&s, Path::new("p.toml"), &opts(false));
        let with_cmd = format!("cmd = [\"a\"]\n{t}");
        let _ = config::parse(&with_cmd, Path::new("p.toml"), &opts(false));
        let in_value = format!("cmd = [\"{}\"]\n", t.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n"));
        let _ = config::parse(&in_value, Path::new("p.toml"), &opts(true));
    }

    #[test]
    fn resolved_toml_parses_back_to_the_same_config(config in configs(), ab_second in any::<bool>()) {
        let text = config.to_resolved_toml();
        let parsed = config::parse(&text, &config.path, &opts(ab_second));
        prop_assert_eq!(parsed, Ok(config), "{}", text);
    }
}
