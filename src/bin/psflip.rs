//! `psflip`: run a service with zero-downtime upgrades (see SPEC §1).
//!
//! `main` is the C one (`#![no_main]`): std's own start-up work (finding the main
//! thread's stack guard by reading `/proc/self/maps`, a signal stack, SIGPIPE
//! ignored, a poll of fds 0–2) is a sixth of the instructions psflip runs before
//! its first child starts, and psflip needs none of it: it blocks every signal
//! first thing, and a stack overflow is a SIGSEGV either way.
#![no_main]

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use psflip::client;
use psflip::config::{self, Config, HealthCheck};
use psflip::effects::docker::Inspector;
use psflip::effects::listen::{self, Inherited};
use psflip::effects::readiness::ToPredecessor;
use psflip::effects::{control, fds, notify, pidfile, signals, spawn, standby};
use psflip::handoff::Handoff;
use psflip::log::{self, Level, Logger, Record};
use psflip::machine::{Generation, Health, ProbeKind, Settings};
use psflip::probe::{self, Check, HttpUrl, StatusPattern};
use psflip::proxy::{self, Proxy, Route};
use psflip::runtime::{self, RunSpec};

/// Zero-downtime process flipper: supervises one child and, on the upgrade signal,
/// replaces it with a fresh one once the new one is healthy.
/// The configuration read when no `-c FILE` is given.
const DEFAULT_CONFIG: &str = "psflip.toml";

#[derive(Parser)]
#[command(name = "psflip", version)]
struct Cli {
    /// Configuration file (TOML).
    #[arg(
        short,
        long,
        global = true,
        default_value = DEFAULT_CONFIG,
        value_name = "FILE"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration, expand its templates and print the result:
    /// by default the values the next generation would get (the running
    /// generation's successor, or the first when nothing runs).
    Check {
        /// Which generation's values: `next` (the default) or `first` (a fresh
        /// start, whatever runs).
        #[arg(long, value_enum, default_value_t = Which::Next)]
        generation: Which,
    },
    /// Ask the running psflip (found through the pidfile) to upgrade; wait for the
    /// outcome and print it. Exit 0 only when the new generation took over.
    Upgrade {
        /// After a successful upgrade, also wait until the old generation has
        /// exited (bounded by shutdown.delay + shutdown.timeout and a margin).
        /// For systemd's ExecReload=: systemd reads PIDFile= when the reload ends,
        /// and the new psflip is its own child only once the old one is gone.
        #[arg(long)]
        wait_old: bool,
    },
    /// Print the running generation as `key: value` lines. Exit 3 when nothing runs.
    Status {
        /// Print JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Internal: write man pages and shell completions into DIR (packaging).
    #[command(name = "__assets", hide = true)]
    Assets {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// Internal: replay a trace recorded with PSFLIP_TRACE through a fresh machine;
    /// exit 0 when every step gives the recorded effects and the machine's
    /// promises hold, 1 (saying where) otherwise.
    #[command(name = "__replay", hide = true)]
    Replay {
        #[arg(value_name = "TRACE")]
        traces: Vec<PathBuf>,
    },
    /// Internal: one `[healthcheck.tcp]` or `[healthcheck.http]` check, run as the
    /// healthcheck's probe process. Exit 0 when healthy, 1 (and one line on
    /// stderr) otherwise.
    #[command(name = probe::SUBCOMMAND, hide = true)]
    Probe {
        #[command(subcommand)]
        check: ProbeCommand,
    },
}

/// `psflip check --generation`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Which {
    First,
    Next,
}

/// The checks of `psflip __probe`; built by [`probe_argv`], which must agree.
#[derive(Subcommand)]
enum ProbeCommand {
    /// Healthy when a connection to ADDRESS (host:port or unix:///path) is accepted.
    Tcp {
        #[command(flatten)]
        opts: ProbeOpts,
        address: String,
    },
    /// Healthy when `GET URL` answers with a status STATUS matches (e.g. 2xx).
    Http {
        #[command(flatten)]
        opts: ProbeOpts,
        url: String,
        status: String,
    },
}

#[derive(clap::Args)]
struct ProbeOpts {
    /// Give up after this long (a Go duration).
    #[arg(long, value_parser = config::parse_duration)]
    timeout: Duration,
    /// Print nothing, even on failure.
    #[arg(long)]
    quiet: bool,
    /// The generation of the psflip whose healthcheck this is, for the log.
    #[arg(long)]
    generation: Option<u64>,
    /// The log format of that psflip.
    #[arg(long, default_value = "text", value_parser = parse_log_format)]
    log_format: log::Format,
}

fn parse_log_format(s: &str) -> Result<log::Format, String> {
    log::Format::parse(s).ok_or_else(|| format!("{s:?}: expected text or json"))
}

// libgcc's unwinder linked in rather than loaded: std refers to ten `_Unwind_*`
// functions (backtraces; with panic = "abort" nothing unwinds), and taking them
// from libgcc_s.so meant one more library to map and relocate against at every
// start. Listed here, in the binary, it comes before std's `-lgcc_s` on the link
// line, and `--as-needed` then drops libgcc_s. (Part of gcc, which links us.)
// (musl builds are static and take the unwinder from Rust's own libunwind.)
#[cfg(target_env = "gnu")]
#[link(name = "gcc_eh", kind = "static", modifiers = "-bundle")]
unsafe extern "C" {}

// The static musl build allocates with dlmalloc: musl's own allocator maps and
// unmaps single pages as small allocations come and go (an upgrade's old
// psflip made 8 mmap and 5 munmap calls before its clone), and with the unmaps'
// page-table work it was a fifth of psflip's CPU time in an upgrade (perf,
// BENCHMARKS.md session 8). glibc's malloc keeps its arena, as dlmalloc does.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOC: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

/// The C entry point. The arguments are read through `psflip::sys::args_os`:
/// std's `env::args` sees them under glibc only (which hands them to std's
/// initialiser), not in a static musl build.
#[unsafe(no_mangle)]
extern "C" fn main(argc: libc::c_int, argv: *const *const libc::c_char) -> libc::c_int {
    // SAFETY: argc and argv are what the C runtime hands to main.
    unsafe { psflip::sys::set_args(argc, argv) };
    let ExitCode(code) = psflip_main();
    // std flushes stdout at exit only when its own `main` ran.
    let _ = std::io::stdout().flush();
    libc::c_int::from(code)
}

/// An exit status, as `std::process::ExitCode` (which stable Rust cannot turn back
/// into a number for the C `main`).
#[derive(Clone, Copy)]
struct ExitCode(u8);

impl ExitCode {
    const SUCCESS: ExitCode = ExitCode(0);

    fn from(code: u8) -> ExitCode {
        ExitCode(code)
    }
}

/// What the previous generation handed us, if we are a successor (a handoff
/// whose readiness fd is not open makes no successor): the handoff, our end of
/// its readiness pipe, and the proxy listeners and [[listen]] sockets.
fn inherit() -> (
    Option<Handoff>,
    Option<ToPredecessor>,
    (Inherited, Inherited),
) {
    let handoff = Handoff::from_env(|var| std::env::var(var).ok());
    let predecessor = handoff
        .as_ref()
        .and_then(|h| ToPredecessor::from_fd(h.ready_fd));
    let handoff = handoff.filter(|_| predecessor.is_some());
    let inherited = match &handoff {
        Some(h) => (
            Inherited::from_env(Some(&h.listeners)),
            Inherited::from_env(Some(&h.activation)),
        ),
        None => (Inherited::default(), Inherited::default()),
    };
    (handoff, predecessor, inherited)
}

/// `psflip __assets DIR`: the man pages and shell completions.
fn assets(dir: &std::path::Path) -> ExitCode {
    use clap::CommandFactory;
    match psflip::cli::assets::write(dir, Cli::command()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("psflip: {}: {e}", dir.display());
            ExitCode::from(1)
        }
    }
}

fn psflip_main() -> ExitCode {
    // Before anything else: a signal arriving now must wait for the event loop, not
    // kill us, and nothing we inherited may leak into a child.
    if let Err(e) = signals::block_all() {
        eprintln!("psflip: {e}");
        return ExitCode::from(1);
    }
    // A standby successor waits here, its inherited fds still without
    // close-on-exec in case it must exec a new binary (effects::standby).
    let woken = standby::wait_if_standby();
    if woken == standby::Woken::LetGo {
        return ExitCode::SUCCESS;
    }
    fds::cloexec_from_3();
    let (handoff, predecessor, inherited) = inherit();
    if let standby::Woken::ExecFailed(reason) = woken {
        match &predecessor {
            Some(p) => p.report_failure(&reason),
            None => eprintln!("psflip: {reason}"),
        }
        return ExitCode::from(1);
    }
    let cli = match run_mode_args().map_or_else(|| Cli::try_parse_from(psflip::sys::args_os()), Ok)
    {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    // A probe reads no configuration: everything it needs is on its command line.
    let command = match cli.command {
        Some(Command::Probe { check }) => return run_probe(check),
        Some(Command::Replay { traces }) => return replay(&traces),
        Some(Command::Assets { dir }) => return assets(&dir),
        command => command,
    };
    let ab_second = handoff.as_ref().is_some_and(|h| h.ab_second);
    let options = config::LoadOptions::from_process(ab_second);
    let config = match config::load(&cli.config, &options) {
        Ok(c) => c,
        Err(e) => {
            match &predecessor {
                // The old generation logs why its upgrade failed, this reason
                // included, after it logged starting us: one line, in order.
                Some(p) => p.report_failure(&format!("invalid configuration: {e}")),
                None => eprintln!("psflip: {e}"),
            }
            return ExitCode::from(2);
        }
    };
    match command {
        Some(Command::Probe { .. } | Command::Assets { .. } | Command::Replay { .. }) => {
            unreachable!("probes and assets return before the configuration is read")
        }
        Some(Command::Check { generation }) => check(&cli.config, config, generation),
        Some(Command::Upgrade { wait_old }) => answer(client::upgrade(&config, wait_old)),
        Some(Command::Status { json }) => answer(client::status(&config, json)),
        None => {
            // A first generation may have been started with signals ignored; a
            // successor (or a woken standby) was started by a psflip whose
            // dispositions were all default, and exec kept them so.
            if predecessor.is_none() {
                signals::default_dispositions();
            }
            // This generation's number: 1, or what the previous generation told us.
            let generation = handoff.as_ref().map_or(1, |h| h.generation);
            log::init(
                Logger::plain("psflip")
                    .with_generation(Some(generation))
                    .with_format(config.log_format)
                    .with_quiet(config.quiet)
                    .non_blocking(),
            );
            let code = run(config, predecessor, handoff, inherited, generation);
            log::flush();
            code
        }
    }
}

/// The command line of the run mode in its usual forms (`psflip`, `psflip -c
/// FILE`, `psflip --config FILE`, `psflip --config=FILE`), read without clap:
/// building clap's parser is most of the instructions psflip runs before its
/// configuration, and its code is pages of the binary a running psflip would
/// otherwise keep mapped. Anything else (`-cFILE`, a subcommand, `--help`, an
/// error) goes to clap, which gives the same result for these forms.
fn run_mode_args() -> Option<Cli> {
    let mut args = psflip::sys::args_os().iter().skip(1).cloned();
    let config = match (args.next(), args.next(), args.next()) {
        (None, _, _) => PathBuf::from(DEFAULT_CONFIG),
        (Some(flag), Some(file), None)
            if (flag == "-c" || flag == "--config")
                && !file.is_empty()
                && !file.as_encoded_bytes().starts_with(b"-") =>
        {
            PathBuf::from(file)
        }
        (Some(arg), None, _) => {
            let file = arg.as_encoded_bytes().strip_prefix(b"--config=")?;
            if file.is_empty() || file.starts_with(b"-") {
                return None;
            }
            PathBuf::from(std::ffi::OsStr::from_bytes(file))
        }
        _ => return None,
    };
    Some(Cli {
        config,
        command: None,
    })
}

/// `psflip check`: the configuration as the chosen generation would resolve it
/// (`AB`, `BlueGreen`), with a header saying which generation that is and, for
/// a successor, how the running generation's `upgrade.timeout` bounds its own.
fn check(path: &std::path::Path, loaded: Config, which: Which) -> ExitCode {
    let running = match which {
        Which::Next => client::report(&loaded),
        Which::First => None,
    };
    let mut header = String::new();
    let ab_second = match (which, &running) {
        (Which::First, _) => {
            header += "# psflip check: the values of the first generation (a fresh start);\n\
                       # `--generation next` shows those of the running service's successor\n";
            false
        }
        (Which::Next, None) => {
            header += "# psflip check: nothing of this configuration runs, so the next generation\n\
                       # is the first: these are its values\n";
            false
        }
        (Which::Next, Some(r)) => {
            header += &format!(
                "# psflip check: the values of generation {}, the next: generation {} runs\n\
                 # (psflip pid {}); `--generation first` shows those of a fresh start\n",
                r.generation + 1,
                r.generation,
                r.psflip_pid
            );
            r.ab == "a"
        }
    };
    let config = if ab_second {
        match config::load(path, &config::LoadOptions::from_process(true)) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("psflip: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        loaded
    };
    if let Some(r) = &running {
        let cap = Duration::from_millis(r.upgrade_timeout_ms);
        let own = config.upgrade.timeout;
        let fmt = config::format_duration;
        header += &if own > cap {
            format!(
                "# upgrade.timeout: the new child must be healthy within {} (not this file's {}):\n\
                 # the running generation's upgrade.timeout bounds its successor's, since it\n\
                 # gives up on a successor after its own timeout (+ 5 s)\n",
                fmt(cap),
                fmt(own)
            )
        } else {
            format!(
                "# upgrade.timeout: the new child must be healthy within {} (the running\n\
                 # generation's own, {}, bounds it too)\n",
                fmt(own),
                fmt(cap)
            )
        };
    }
    print!("{header}{}", config.to_resolved_toml());
    ExitCode::SUCCESS
}

/// `psflip __probe …`: one check, bounded by its timeout.
fn run_probe(command: ProbeCommand) -> ExitCode {
    let (check, opts) = match command {
        ProbeCommand::Tcp { opts, address } => (
            config::Endpoint::parse(&address, false).map(Check::Tcp),
            opts,
        ),
        ProbeCommand::Http { opts, url, status } => (
            HttpUrl::parse(&url).and_then(|url| {
                StatusPattern::parse(&status).map(|status| Check::Http { url, status })
            }),
            opts,
        ),
    };
    let check = match check {
        Ok(check) => check,
        Err(e) => {
            eprintln!("psflip: {} {e}", probe::SUBCOMMAND);
            return ExitCode::from(2);
        }
    };
    match probe::run(&check, opts.timeout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            if !opts.quiet {
                // Under the pid and generation of the psflip whose healthcheck
                // this is, in its format: its log, one line per failed check.
                let logger = Logger::plain("psflip")
                    .with_pid(std::os::unix::process::parent_id())
                    .with_generation(opts.generation)
                    .with_format(opts.log_format);
                let kind = match check {
                    Check::Tcp(_) => "tcp",
                    Check::Http { .. } => "http",
                };
                logger.log(
                    Record::new(
                        Level::Warning,
                        "healthcheck_failed",
                        format!("healthcheck failed: {check}: {why}"),
                    )
                    .field("check", kind)
                    .field("target", check.to_string())
                    .field("reason", why.to_string()),
                );
            }
            ExitCode::from(1)
        }
    }
}

/// `psflip __replay TRACE…` (see `psflip::trace`).
fn replay(traces: &[PathBuf]) -> ExitCode {
    let mut ok = true;
    for path in traces {
        let result = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| psflip::trace::replay(&text));
        match result {
            Ok(r) => println!(
                "{}: {} steps replayed, same effects",
                path.display(),
                r.steps.len()
            ),
            Err(why) => {
                ok = false;
                eprintln!("psflip: {}: {why}", path.display());
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn answer(a: client::Answer) -> ExitCode {
    print!("{}", a.stdout);
    eprint!("{}", a.stderr);
    ExitCode::from(a.code.clamp(0, 255) as u8)
}

/// Open (or take over) the `[[proxy]]` listeners and start the proxy thread. An
/// address that cannot be listened on is a configuration-level error: exit 2
/// before any child starts (in a successor, the old generation keeps serving).
/// Plan the control socket (SPEC §10, `effects::control`): its directory made or
/// verified now, the socket bound later by the runtime (the first generation
/// right after it started its child, a successor when it becomes the service).
/// A first generation refuses to start beside a live psflip serving the same
/// name (one service per configuration).
fn plan_control(config: &Config, first: bool) -> Result<Option<control::Listener>, String> {
    let path = control::server_path(&config.path, config.control_socket.as_deref())?;
    if first && let Some(peer) = control::live_server(&path) {
        return Err(format!(
            "psflip (pid {}) already runs this configuration (its control socket is {}); stop it first, or `psflip upgrade` it",
            peer.pid,
            path.display()
        ));
    }
    Ok(Some(control::Listener::planned(&path)))
}

fn start_proxy(config: &Config, inherited: Inherited) -> Result<Option<Proxy>, ExitCode> {
    if config.proxy.is_empty() && inherited.is_empty() {
        return Ok(None);
    }
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("psflip: {}: {e}", config.path.display());
        ExitCode::from(2)
    };
    let cwd = std::env::current_dir().map_err(|e| fail(&e))?;
    let mut routes = Vec::with_capacity(config.proxy.len());
    for (i, p) in config.proxy.iter().enumerate() {
        let targets = proxy::targets(&p.forward, &cwd)
            .map_err(|e| fail(&format!("proxy[{i}].forward: {e}")))?;
        routes.push(Route {
            listen: p.listen.to_string(),
            forward: p.forward.to_string(),
            targets,
        });
    }
    let opened = listen::open(&config.proxy, inherited, &cwd).map_err(|e| fail(&e))?;
    if opened.listeners.is_empty() && opened.dropped.is_empty() {
        return Ok(None);
    }
    fds::raise_nofile_limit();
    Proxy::start(opened.listeners, opened.dropped, routes, config.quiet)
        .map(Some)
        .map_err(|e| {
            eprintln!("psflip: {e}");
            ExitCode::from(1)
        })
}

/// Open (or take over) the `[[listen]]` sockets. As for the proxy, an address
/// that cannot be listened on is an error before any child starts. An inherited
/// socket the configuration dropped is closed here (its file, if any, is left).
fn open_listen(
    config: &Config,
    inherited: Inherited,
) -> Result<Vec<(listen::Listener, String)>, ExitCode> {
    if config.listen.is_empty() {
        return Ok(Vec::new());
    }
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("psflip: {}: {e}", config.path.display());
        ExitCode::from(2)
    };
    let cwd = std::env::current_dir().map_err(|e| fail(&e))?;
    let endpoints: Vec<(String, &config::Endpoint)> = config
        .listen
        .iter()
        .enumerate()
        .map(|(i, l)| (format!("listen[{i}].address"), &l.address))
        .collect();
    let opened = listen::open_endpoints(&endpoints, inherited, &cwd).map_err(|e| fail(&e))?;
    Ok(opened
        .listeners
        .into_iter()
        .zip(config.listen.iter().map(|l| l.name.clone()))
        .collect())
}

/// What a generation opens before its child: refused (with the exit status)
/// when it cannot, the reason told to the previous generation if there is one.
struct Opened {
    activation: Vec<(listen::Listener, String)>,
    control: Option<control::Listener>,
    proxy: Option<Proxy>,
}

fn open_all(
    config: &Config,
    predecessor: Option<&ToPredecessor>,
    (inherited, inherited_listen): (Inherited, Inherited),
) -> Result<Opened, ExitCode> {
    let tell = |why: &str| {
        if let Some(p) = predecessor {
            p.report_failure(why);
        }
    };
    // The first generation refuses to start a service it could not report:
    // without its pidfile, `status` and `upgrade` would say "not running" while
    // it runs. (A successor that cannot write it fails its upgrade instead, and
    // the old generation carries on.)
    if predecessor.is_none()
        && let Some(path) = &config.pidfile
        && let Err(why) = pidfile::check_writable(path)
    {
        eprintln!(
            "psflip: {}: pidfile: cannot write {}: {why}",
            config.path.display(),
            path.display()
        );
        return Err(ExitCode::from(2));
    }
    let activation = open_listen(config, inherited_listen)
        .inspect_err(|_| tell("cannot open the [[listen]] sockets (see the log)"))?;
    let control = plan_control(config, predecessor.is_none()).map_err(|why| {
        eprintln!("psflip: {}: {why}", config.path.display());
        tell(&format!("no control socket: {why}"));
        ExitCode::from(2)
    })?;
    let proxy = start_proxy(config, inherited)
        .inspect_err(|_| tell("cannot open the proxy listeners (see the log)"))?;
    Ok(Opened {
        activation,
        control,
        proxy,
    })
}

/// How the child's health is judged, and what that needs at run time.
struct HealthPlan {
    health: Health,
    probe_cmd: Option<Vec<String>>,
    probe_check: Option<Check>,
    notify: Option<notify::Kind>,
    docker: Option<Inspector>,
}

impl HealthPlan {
    fn judged_by(health: Health) -> HealthPlan {
        HealthPlan {
            health,
            probe_cmd: None,
            probe_check: None,
            notify: None,
            docker: None,
        }
    }
}

fn health_plan(config: &Config) -> HealthPlan {
    // The probe runs in `workdir`: a relative socket path is psflip's, as for [[proxy]].
    let absolute = |address: &config::Endpoint| match std::env::current_dir() {
        Ok(cwd) => address.absolute(&cwd),
        Err(_) => address.clone(),
    };
    let probe = |kind: ProbeKind, interval: Duration, check: Check| HealthPlan {
        probe_check: Some(check),
        ..HealthPlan::judged_by(Health::Command {
            kind,
            after: Duration::ZERO,
            interval,
        })
    };
    match &config.healthcheck {
        HealthCheck::Notify { socket } => HealthPlan {
            notify: Some(match socket {
                config::NotifySocketKind::Path => notify::Kind::Path,
                config::NotifySocketKind::Abstract => notify::Kind::Abstract,
            }),
            ..HealthPlan::judged_by(Health::Notify)
        },
        HealthCheck::Docker {
            container,
            socket,
            interval,
        } => HealthPlan {
            docker: Some(Inspector::new(socket.clone(), container.clone())),
            ..HealthPlan::judged_by(Health::Docker {
                interval: *interval,
            })
        },
        HealthCheck::Alive { timeout } => {
            HealthPlan::judged_by(Health::Alive { timeout: *timeout })
        }
        HealthCheck::Command {
            cmd,
            after,
            interval,
        } => HealthPlan {
            probe_cmd: Some(cmd.clone()),
            ..HealthPlan::judged_by(Health::Command {
                kind: ProbeKind::Command,
                after: *after,
                interval: *interval,
            })
        },
        HealthCheck::Tcp { address, interval } => {
            probe(ProbeKind::Tcp, *interval, Check::Tcp(absolute(address)))
        }
        HealthCheck::Http {
            url,
            status,
            interval,
        } => probe(
            ProbeKind::Http,
            *interval,
            Check::Http {
                url: url.clone(),
                status: status.clone(),
            },
        ),
    }
}

fn settings(config: &Config, successor: bool, health: Health) -> Settings {
    Settings {
        generation: if successor {
            Generation::Successor
        } else {
            Generation::First
        },
        upgrade_signal: config.upgrade.signal,
        upgrade_timeout: config.upgrade.timeout,
        shutdown_delay: config.shutdown.delay,
        shutdown_signal: config.shutdown.signal,
        shutdown_timeout: config.shutdown.timeout,
        health,
        pidfile: config.pidfile.is_some(),
    }
}

fn run(
    config: Config,
    predecessor: Option<ToPredecessor>,
    handoff: Option<Handoff>,
    inherited: (Inherited, Inherited),
    generation: u64,
) -> ExitCode {
    let opened = match open_all(&config, predecessor.as_ref(), inherited) {
        Ok(opened) => opened,
        Err(code) => return code,
    };
    let mut argv = psflip::sys::args_os().iter().cloned();
    let arg0 = argv.next().unwrap_or_else(|| OsString::from("psflip"));
    let args: Vec<OsString> = argv.collect();
    let exe = spawn::own_binary(&arg0);
    let plan = health_plan(&config);
    let spec = RunSpec {
        settings: settings(&config, predecessor.is_some(), plan.health),
        exe,
        arg0,
        args,
        cmd: config.cmd,
        env: config.env,
        workdir: config.workdir,
        probe_cmd: plan.probe_cmd,
        probe_check: plan.probe_check,
        pidfile: config.pidfile,
        quiet: config.quiet,
        generation,
        log_format: config.log_format,
        ab_second: handoff.as_ref().is_some_and(|h| h.ab_second),
        predecessor_upgrade_timeout: handoff.as_ref().map(|h| h.upgrade_timeout),
        history: handoff
            .as_ref()
            .map(|h| h.history.clone())
            .unwrap_or_default(),
        predecessor,
        proxy: opened.proxy,
        notify: plan.notify,
        docker: plan.docker,
        listen: opened.activation,
        control: opened.control,
        standby: config.upgrade.standby,
    };
    match runtime::run(spec) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("psflip: {e}");
            ExitCode::from(1)
        }
    }
}
