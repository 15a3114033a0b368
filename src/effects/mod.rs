//! The effects of the machine, carried out on Linux: one module per kind.
//!
//! Everything here talks to the OS (through `nix`, and `libc` where nix has no safe
//! wrapper usable between fork and exec). Nothing here decides anything: the
//! machine (`src/machine/`) says what, these modules say how.

pub mod control;
pub mod docker;
pub mod fds;
pub mod filewatch;
pub mod listen;
pub mod notify;
pub mod pidfile;
pub mod procfs;
pub mod readiness;
pub mod reap;
pub mod resident;
pub mod sd_notify;
pub mod signals;
pub mod spawn;
pub mod standby;
pub mod subreaper;

use thiserror::Error;

/// An effect that could not be carried out. Once the child runs, such a failure is
/// logged and psflip carries on (the machine decides what it means).
#[derive(Debug, Error)]
pub enum EffectError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: nix::Error,
    },
}

impl EffectError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> EffectError {
        EffectError::Io {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn sys(what: impl Into<String>, source: nix::Error) -> EffectError {
        EffectError::Sys {
            what: what.into(),
            source,
        }
    }
}
