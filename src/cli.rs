//! Command-line definitions shared beyond their binary: pidwatch's (so that
//! `psflip __assets` can write its man page and completions) and the writer of
//! those assets.

/// `pidwatch` (SPEC §7).
pub mod pidwatch {
    use std::path::PathBuf;

    use clap::Parser;

    /// Start CMD, forward every signal to the process named by the pidfile, and stay
    /// until that process is gone — across psflip upgrades, which end the first psflip.
    #[derive(Parser)]
    #[command(name = "pidwatch", version)]
    pub struct Cli {
        /// The pidfile naming the process to watch (psflip's `pidfile`).
        #[arg(long, value_name = "FILE")]
        pub pidfile: PathBuf,
        /// Do not log.
        #[arg(short, long)]
        pub quiet: bool,
        /// Poll with kill(pid, 0) every 100 ms instead of becoming a child subreaper.
        #[arg(long)]
        pub poll: bool,
        /// Exit with the watched service's final status (its exit code, or 128 +
        /// the signal that killed it) instead of 0, so runit or OpenRC can tell a
        /// crash from a stop. Known when pidwatch reaped the service (the default,
        /// as a child subreaper); when it could not (--poll, and the few cases the
        /// README lists), pidwatch says the status is unknown and exits 0.
        #[arg(long)]
        pub exit_status: bool,
        /// The command to start, usually `psflip -c FILE`.
        #[arg(last = true, required = true, value_name = "CMD")]
        pub cmd: Vec<String>,
    }
}

/// Man pages and shell completions, generated from the clap definitions.
pub mod assets {
    use std::io;
    use std::path::Path;

    use clap::CommandFactory;
    use clap_complete::Shell;

    /// Write into `dir`: `man/NAME.1` for both programs and each visible
    /// psflip subcommand (`psflip-check.1`…), and `completions/` for bash
    /// (`NAME.bash`), zsh (`_NAME`) and fish (`NAME.fish`).
    pub fn write(dir: &Path, psflip: clap::Command) -> io::Result<()> {
        let man = dir.join("man");
        let completions = dir.join("completions");
        std::fs::create_dir_all(&man)?;
        std::fs::create_dir_all(&completions)?;
        let pidwatch = super::pidwatch::Cli::command();
        for cmd in [psflip, pidwatch] {
            // `psflip help SUB` needs no pages of its own.
            let mut cmd = cmd.disable_help_subcommand(true);
            cmd.build();
            // NAME.1, and NAME-SUB.1 for each visible subcommand.
            clap_mangen::generate_to(cmd.clone(), &man)?;
            for (shell, file) in [
                (Shell::Bash, format!("{}.bash", cmd.get_name())),
                (Shell::Zsh, format!("_{}", cmd.get_name())),
                (Shell::Fish, format!("{}.fish", cmd.get_name())),
            ] {
                let mut out = std::fs::File::create(completions.join(file))?;
                let name = cmd.get_name().to_owned();
                clap_complete::generate(shell, &mut cmd.clone(), name, &mut out);
            }
        }
        Ok(())
    }
}
