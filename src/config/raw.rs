//! Pass 2: the raw structs serde fills in, every string keeping its span so
//! that resolution can point at it. `deny_unknown_fields` everywhere: a typo
//! never falls back to a default.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{MapAccess, SeqAccess, Visitor};
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) cmd: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) workdir: Option<Spanned<String>>,
    pub(super) env: Option<RawEnv>,
    pub(super) pidfile: Option<Spanned<String>>,
    pub(super) control_socket: Option<Spanned<String>>,
    pub(super) quiet: Option<bool>,
    pub(super) log_format: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) locals: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    pub(super) upgrade: RawUpgrade,
    #[serde(default)]
    pub(super) shutdown: RawShutdown,
    #[serde(default)]
    pub(super) healthcheck: RawHealthcheck,
    #[serde(default)]
    pub(super) proxy: Vec<RawProxy>,
    #[serde(default)]
    pub(super) listen: Vec<RawListen>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListen {
    pub(super) address: Option<Spanned<String>>,
    pub(super) name: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProxy {
    pub(super) listen: Option<Spanned<String>>,
    pub(super) forward: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpgrade {
    pub(super) signal: Option<Spanned<String>>,
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) standby: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawShutdown {
    pub(super) delay: Option<Spanned<String>>,
    pub(super) signal: Option<Spanned<String>>,
    pub(super) timeout: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealthcheck {
    pub(super) alive: Option<RawAlive>,
    pub(super) command: Option<RawCommand>,
    pub(super) tcp: Option<RawTcp>,
    pub(super) http: Option<RawHttp>,
    pub(super) notify: Option<RawNotify>,
    pub(super) docker: Option<RawDocker>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotify {
    pub(super) socket: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDocker {
    pub(super) container: Option<Spanned<String>>,
    pub(super) socket: Option<Spanned<String>>,
    pub(super) interval: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAlive {
    pub(super) timeout: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCommand {
    pub(super) cmd: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) after: Option<Spanned<String>>,
    pub(super) interval: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTcp {
    pub(super) address: Option<Spanned<String>>,
    pub(super) interval: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    pub(super) url: Option<Spanned<String>>,
    pub(super) status: Option<Spanned<String>>,
    pub(super) interval: Option<Spanned<String>>,
}

/// `env`: a list of `"KEY=VALUE"` or a table `{ KEY = "VALUE" }`.
#[derive(Debug)]
pub(super) enum RawEnv {
    List(Vec<Spanned<String>>),
    Table(Vec<(String, Spanned<String>)>),
}

impl<'de> Deserialize<'de> for RawEnv {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EnvVisitor;
        impl<'de> Visitor<'de> for EnvVisitor {
            type Value = RawEnv;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of \"KEY=VALUE\" strings or a table of KEY = \"VALUE\"")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawEnv, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<String>>()? {
                    items.push(item);
                }
                Ok(RawEnv::List(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawEnv, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    entries.push((key, map.next_value::<Spanned<String>>()?));
                }
                Ok(RawEnv::Table(entries))
            }
        }
        deserializer.deserialize_any(EnvVisitor)
    }
}
