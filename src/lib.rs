//! psflip: a zero-downtime process flipper.
//!
//! The crate is split the way the design card fixes it:
//! - [`machine`]: the pure transition function (events in, effects out, time as data);
//! - [`effects`]: one module per kind of effect, talking to the OS;
//! - [`runtime`]: the event loop turning OS happenings into events and interpreting effects;
//! - [`config`] and [`template`]: the TOML configuration and its `{{ … }}` templates.
//! - [`probe`]: the `[healthcheck.tcp]` and `[healthcheck.http]` checks, run by `psflip __probe`.
//!
//! Three leaves import nothing else from the crate, so the modules above build on
//! them without importing each other: [`values`] (durations, signals, endpoints,
//! URLs, status patterns), [`log`] (the one logger: text, JSON or journald lines, never blocking its caller) and [`sys`] (raw socket, epoll and
//! splice calls).

pub mod cli;
pub mod client;
pub mod config;
pub mod log;
pub mod sys;
pub mod template;
pub mod trace;
pub mod values;

/// Signals are plain data everywhere, the machine included.
pub use nix::sys::signal::Signal;
pub mod effects;
pub mod handoff;
pub mod machine;
pub mod probe;
pub mod proxy;
pub mod runtime;
pub mod status;
pub mod watch;
