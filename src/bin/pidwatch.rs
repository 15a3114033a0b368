//! `pidwatch`: a foreground process for supervisors that need one (SPEC §7).

use std::process::ExitCode;

use clap::Parser;

use psflip::cli::pidwatch::Cli;

use psflip::effects::{fds, signals};
use psflip::log::{self, Level, Logger, Record};
use psflip::runtime::pidwatch::{self, WatchSpec};

fn main() -> ExitCode {
    if let Err(e) = signals::block_all() {
        eprintln!("pidwatch: {e}");
        return ExitCode::from(1);
    }
    // The command (psflip) must not inherit an ignored signal.
    signals::default_dispositions();
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
            .non_blocking(),
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
