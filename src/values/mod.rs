//! The values psflip's configuration and probes are made of: durations in Go
//! syntax, signals by name, stream endpoints (`tcp`/`unix`), `http://` URLs and
//! HTTP status patterns. Each parses from the text a user writes and prints back
//! to a form that parses to the same value.
//!
//! A leaf: nothing here imports anything else from the crate, so `config`,
//! `probe`, `proxy` and `effects` can all build on it without importing each
//! other (quinn-proto's `varint.rs` and `coding.rs` are the model).

pub mod duration;
pub mod endpoint;
pub mod signal;
pub mod status;
pub mod url;

pub use duration::{format_duration, parse_duration};
pub use endpoint::{Endpoint, UNIX_PATH_MAX};
pub use signal::parse_signal;
pub use status::StatusPattern;
pub use url::HttpUrl;
