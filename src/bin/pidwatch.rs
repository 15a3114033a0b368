//! `pidwatch`: a foreground process for supervisors that need one (SPEC §7).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use psflip::effects::{fds, signals};
use psflip::log::{self, Level, Logger, Record};
use psflip::runtime::pidwatch::{self, WatchSpec};

/// Start CMD, forward every signal to the process named by the pidfile, and stay
/// until that process is gone — across psflip upgrades, which end the first psflip.
#[derive(Parser)]
#[command(name = "pidwatch", version)]
struct Cli {
    /// The pidfile naming the process to watch (psflip's `pidfile`).
    #[arg(long, value_name = "FILE")]
    pidfile: PathBuf,
    /// Do not log.
    #[arg(short, long)]
    quiet: bool,
    /// Poll with kill(pid, 0) every 100 ms instead of becoming a child subreaper.
    #[arg(long)]
    poll: bool,
    /// Exit with the watched service's final status (its exit code, or 128 +
    /// the signal that killed it) instead of 0, so runit or OpenRC can tell a
    /// crash from a stop. Known when pidwatch reaped the service (the default,
    /// as a child subreaper); 0 when it could not (--poll).
    #[arg(long)]
    exit_status: bool,
    /// The command to start, usually `psflip -c FILE`.
    #[arg(last = true, required = true, value_name = "CMD")]
    cmd: Vec<String>,
}

fn main() -> ExitCode {
    if let Err(e) = signals::block_all() {
        eprintln!("pidwatch: {e}");
        return ExitCode::from(1);
    }
    fds::cloexec_from_3();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    log::init(
        Logger::plain("pidwatch")
            .with_quiet(cli.quiet)
            .with_writer_thread(),
    );
    let spec = WatchSpec {
        pidfile: cli.pidfile,
        argv: cli.cmd,
        quiet: cli.quiet,
        poll: cli.poll,
        exit_status: cli.exit_status,
    };
    let code = match pidwatch::run(spec) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            log::logger().shout(Record::new(Level::Error, "error", e.to_string()));
            ExitCode::from(1)
        }
    };
    log::flush();
    code
}
