//! End-to-end tests of the psflip binary: real processes, real signals, real
//! files. Each test runs in its own sandbox (see `util`), kills what it started
//! and checks that nothing outlived it. Fixtures live in `fixtures/`.

#[path = "../common/mod.rs"]
mod common;
mod util;

mod activation;
mod check;
mod cli;
mod control;
mod docker;
mod examples;
mod healthchecks;
mod logs;
mod notify;
mod pidfile;
mod pidwatch;
mod readiness;
mod security;
mod selfupgrade;
mod standby;
mod status;
mod supervision;
mod traces;
mod upgrade;
