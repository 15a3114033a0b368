//! Signals by name (`SIGHUP`, `hup`, `Usr1`), as the configuration writes them.

use nix::sys::signal::Signal;

/// Parses a signal name: case-insensitive, with or without the `SIG` prefix
/// (`SIGHUP`, `hup`, `Usr1`). The aliases `IOT`, `POLL` and `CLD` are known;
/// numbers are not accepted. Any signal is returned, SIGKILL included: whether
/// a signal suits a given key is the caller's business.
pub fn parse_signal(s: &str) -> Result<Signal, String> {
    let upper = s.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    let alias = match bare {
        "IOT" => "ABRT",
        "POLL" => "IO",
        "CLD" => "CHLD",
        other => other,
    };
    if let Some(signal) =
        Signal::iterator().find(|sig| sig.as_str().strip_prefix("SIG") == Some(alias))
    {
        return Ok(signal);
    }
    if !bare.is_empty() && bare.bytes().all(|b| b.is_ascii_digit()) {
        return Err("signal numbers are not accepted, use a name such as SIGTERM".to_owned());
    }
    Err("unknown signal name (expected a name such as SIGHUP, TERM or usr1)".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("SIGHUP", Signal::SIGHUP)]
    #[case("HUP", Signal::SIGHUP)]
    #[case("hup", Signal::SIGHUP)]
    #[case("sigHup", Signal::SIGHUP)]
    #[case("USR1", Signal::SIGUSR1)]
    #[case("usr2", Signal::SIGUSR2)]
    #[case("SIGTERM", Signal::SIGTERM)]
    #[case("kill", Signal::SIGKILL)]
    #[case("SIGIOT", Signal::SIGABRT)]
    #[case("cld", Signal::SIGCHLD)]
    #[case("WINCH", Signal::SIGWINCH)]
    fn parses_signal_names(#[case] text: &str, #[case] expected: Signal) {
        assert_eq!(parse_signal(text), Ok(expected));
    }

    const UNKNOWN: &str = "unknown signal name (expected a name such as SIGHUP, TERM or usr1)";
    const NUMBER: &str = "signal numbers are not accepted, use a name such as SIGTERM";

    #[rstest]
    #[case("", UNKNOWN)]
    #[case("SIG", UNKNOWN)]
    #[case("SIGSIGHUP", UNKNOWN)]
    #[case("HANGUP", UNKNOWN)]
    #[case(" HUP", UNKNOWN)]
    #[case("HUP ", UNKNOWN)]
    #[case("SIG_HUP", UNKNOWN)]
    #[case("9", NUMBER)]
    #[case("SIG15", NUMBER)]
    fn rejects_unknown_names_and_numbers(#[case] text: &str, #[case] why: &str) {
        assert_eq!(parse_signal(text), Err(why.to_owned()));
    }
}
