//! psflip's log lines on stderr: `psflip[PID]: LINE`, `pidwatch[PID]: LINE`.
//!
//! A leaf that every part of the crate may call (runtime, proxy, probe,
//! pidwatch) without importing any of the others.

use std::io::Write;

/// Writes `PROGRAM[PID]: LINE` to stderr in one write; a failed write is
/// dropped (there is nowhere else to report it).
pub fn write(program: &str, pid: u32, line: &str) {
    let _ = std::io::stderr().write_all(format!("{program}[{pid}]: {line}\n").as_bytes());
}

/// One of psflip's own log lines, `pid` being the generation that speaks.
pub fn log_line(pid: u32, line: &str) {
    write("psflip", pid, line);
}
