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
            log_format: crate::log::Format::Text,
            locals: BTreeMap::new(),
            upgrade: UpgradeConfig {
                signal: Signal::SIGHUP,
                timeout: Duration::from_secs(60),
                standby: false,
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
            listen: Vec::new(),
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
            timeout: Duration::from_secs(90),
            standby: false,
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
#[case::standby_type(
    "cmd = [\"a\"]\n[upgrade]\nstandby = \"yes\"\n",
    "psflip.toml:3:11: upgrade.standby: invalid type: string \"yes\", expected a boolean"
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
#[case::log_format(
    "cmd = [\"a\"]\nlog_format = \"xml\"\n",
    "psflip.toml:2:14: log_format: \"xml\" is not a log format: expected \"text\" or \"json\""
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

#[test]
fn notify_docker_and_listen_tables_resolve_with_defaults() {
    let config = ok("cmd = [\"a\"]\n[healthcheck.notify]\n");
    assert_eq!(
        config.healthcheck,
        HealthCheck::Notify {
            socket: NotifySocketKind::Path
        }
    );
    let config = ok("cmd = [\"a\"]\nhealthcheck = { notify = { socket = \"abstract\" } }\n");
    assert_eq!(
        config.healthcheck,
        HealthCheck::Notify {
            socket: NotifySocketKind::Abstract
        }
    );
    let config = ok("cmd = [\"a\"]\n[healthcheck.docker]\ncontainer = \"app-{{ BlueGreen }}\"\n");
    assert_eq!(
        config.healthcheck,
        HealthCheck::Docker {
            container: "app-blue".to_owned(),
            socket: PathBuf::from("/var/run/docker.sock"),
            interval: Duration::from_secs(1),
        }
    );
    let config = ok("cmd = [\"a\"]\n[healthcheck.docker]\ncontainer = \"c1\"\n\
         socket = \"unix:///tmp/d.sock\"\ninterval = \"250ms\"\n\
         [[listen]]\naddress = \"tcp://[::1]:8080\"\nname = \"http\"\n\
         [[listen]]\naddress = \"unix://app.sock\"\n");
    assert_eq!(
        config.healthcheck,
        HealthCheck::Docker {
            container: "c1".to_owned(),
            socket: PathBuf::from("/tmp/d.sock"),
            interval: Duration::from_millis(250),
        }
    );
    assert_eq!(
        config.listen,
        vec![
            ListenConfig {
                address: Endpoint::Tcp {
                    host: "::1".to_owned(),
                    port: 8080
                },
                name: "http".to_owned()
            },
            ListenConfig {
                address: Endpoint::Unix(PathBuf::from("app.sock")),
                name: "unknown".to_owned()
            },
        ]
    );
    // psflip check prints them back in a form that reads the same.
    assert!(
        config
            .to_resolved_toml()
            .contains("[[listen]]\naddress = \"tcp://[::1]:8080\"\nname = \"http\"\n")
    );
    let text = config.to_resolved_toml();
    assert!(text.contains("[healthcheck.docker]\ncontainer = \"c1\"\nsocket = \"unix:///tmp/d.sock\"\ninterval = \"250ms\"\n"), "{text}");
    assert_eq!(parse_with(&text, false), Ok(config));
}

#[rstest]
#[case::notify_socket(
    "cmd = [\"a\"]\n[healthcheck.notify]\nsocket = \"file\"\n",
    "psflip.toml:3:10: healthcheck.notify.socket: expected \"path\" (a socket file in a private directory) or \"abstract\" (an abstract socket), found \"file\""
)]
#[case::notify_unknown_key(
    "cmd = [\"a\"]\n[healthcheck.notify]\nready = true\n",
    "psflip.toml:3:1: unknown key `ready` in [healthcheck.notify] (expected `socket`)"
)]
#[case::docker_no_container(
    "cmd = [\"a\"]\n[healthcheck.docker]\n",
    "psflip.toml:2:14: healthcheck.docker.container: missing: the container to watch is required, e.g. container = \"app-{{ BlueGreen }}\""
)]
#[case::docker_bad_name(
    "cmd = [\"a\"]\n[healthcheck.docker]\ncontainer = \"a/../b\"\n",
    "psflip.toml:3:13: healthcheck.docker.container: \"a/../b\" is not a container name: expected [a-zA-Z0-9][a-zA-Z0-9_.-]*"
)]
#[case::docker_tcp_socket(
    "cmd = [\"a\"]\n[healthcheck.docker]\ncontainer = \"a\"\nsocket = \"tcp://127.0.0.1:2375\"\n",
    "psflip.toml:4:10: healthcheck.docker.socket: expected the Docker engine's Unix socket as unix:///absolute/path, found \"tcp://127.0.0.1:2375\""
)]
#[case::docker_interval(
    "cmd = [\"a\"]\n[upgrade]\ntimeout = \"1s\"\n[healthcheck.docker]\ncontainer = \"a\"\n",
    "psflip.toml:3:11: healthcheck.docker.interval: healthcheck.docker.interval (1s, the default) must be shorter than upgrade.timeout (1s): the check would run only once, at the spawn, before the new child is given up on"
)]
#[case::two_healthchecks(
    "cmd = [\"a\"]\n[healthcheck.notify]\n[healthcheck.docker]\ncontainer = \"a\"\n",
    "psflip.toml:3:14: at most one healthcheck may be configured, found both `healthcheck.notify` and `healthcheck.docker`"
)]
#[case::listen_no_address(
    "cmd = [\"a\"]\n[[listen]]\nname = \"http\"\n",
    "psflip.toml:2:1: listen[0].address: missing: each [[listen]] needs `address`, e.g. address = \"tcp://:8080\""
)]
#[case::listen_bad_address(
    "cmd = [\"a\"]\n[[listen]]\naddress = \"8080\"\n",
    "psflip.toml:3:11: listen[0].address: missing :port in \"8080\": expected unix:///path, tcp://host:port, host:port, :port or [ipv6]:port"
)]
#[case::listen_twice(
    "cmd = [\"a\"]\n[[listen]]\naddress = \":80\"\n[[listen]]\naddress = \"tcp://:80\"\n",
    "psflip.toml:5:11: listen[1].address: tcp://:80 is already listen[0]"
)]
#[case::listen_proxy_clash(
    "cmd = [\"a\"]\n[[proxy]]\nlisten = \":80\"\nforward = \"127.0.0.1:81\"\n[[listen]]\naddress = \":80\"\n",
    "psflip.toml:6:11: listen[0].address: tcp://:80 is already the listen address of proxy[0]"
)]
#[case::listen_bad_name(
    "cmd = [\"a\"]\n[[listen]]\naddress = \":80\"\nname = \"a:b\"\n",
    "psflip.toml:4:8: listen[0].name: \"a:b\" cannot go into LISTEN_FDNAMES: 1 to 255 printable ASCII characters, no ':' and no space"
)]
#[case::listen_unknown_key(
    "cmd = [\"a\"]\n[[listen]]\naddress = \":80\"\nbacklog = 5\n",
    "psflip.toml:4:1: unknown key `backlog` in [listen[0]] (expected `address` or `name`)"
)]
fn notify_docker_and_listen_errors_name_the_key(#[case] text: &str, #[case] expected: &str) {
    assert_eq!(err(text), expected);
}

#[rstest]
#[case::top(
    "cmd = [\"a\"]\n\ncmdd = 1\n",
    "psflip.toml:3:1: unknown key `cmdd` in the top level (expected one of `cmd`, `workdir`, `env`, `pidfile`, `control_socket`, `quiet`, `log_format`, `locals`, `upgrade`, `shutdown`, `healthcheck`, `proxy`, `listen`)"
)]
#[case::upgrade(
    "cmd = [\"a\"]\n[upgrade]\nsignl = \"HUP\"\n",
    "psflip.toml:3:1: unknown key `signl` in [upgrade] (expected one of `signal`, `timeout`, `standby`)"
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
    "psflip.toml:2:14: unknown key `alvie` in [healthcheck] (expected one of `alive`, `command`, `tcp`, `http`, `notify`, `docker`)"
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
    let e = parse_with("cmd = [\"a\"]\n[shutdown]\ntimeout = \"x\"\n", false).expect_err("invalid");
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
    let e = load(Path::new("/nonexistent/psflip.toml"), &opts_with(false)).expect_err("missing");
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
log_format = "text"

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
        log_format: crate::log::Format::Json,
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
        listen: Vec::new(),
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
            "\n[healthcheck.http]\nurl = 'http://h/{{\"{{\"}}'\nstatus = \"2xx,304\"\ninterval = \"250ms\"\n"
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

#[test]
fn standby_is_off_unless_asked_and_shown_only_when_on() {
    let off = ok("cmd = [\"a\"]\n");
    assert!(!off.upgrade.standby);
    assert!(!off.to_resolved_toml().contains("standby"));
    let on = ok("cmd = [\"a\"]\n[upgrade]\nstandby = true\n");
    assert!(on.upgrade.standby);
    let resolved = on.to_resolved_toml();
    assert!(
        resolved.contains("[upgrade]\nsignal = \"SIGHUP\"\ntimeout = \"1m0s\"\nstandby = true\n"),
        "{resolved}"
    );
    assert_eq!(parse_with(&resolved, true), Ok(on));
}
