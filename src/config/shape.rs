//! Pass 1, the shape: runs on the parsed document before serde, for what serde
//! would get wrong or word badly.

use toml::de::DeTable;

use super::errors::{ConfigError, ConfigErrorKind, Source, key_span, with_article};

/// Pass 1: refuses tables written as other values (serde would happily read
/// `upgrade = ["SIGHUP", "1m"]` as a struct), and more than one healthcheck.
/// (A feature not built yet would be refused here by name, with
/// `ConfigErrorKind::Unsupported`.)
pub(super) fn check_shape(src: &Source, root: &DeTable) -> Result<(), ConfigError> {
    let must_be_table = |parent: &DeTable, name: &str, dotted: &str| match parent.get(name) {
        Some(value) if !value.get_ref().is_table() => Err(src.invalid(
            Some(value.span()),
            dotted,
            format!(
                "expected a table, found {}",
                with_article(value.get_ref().type_str())
            ),
        )),
        _ => Ok(()),
    };
    for name in ["locals", "upgrade", "shutdown", "healthcheck"] {
        must_be_table(root, name, name)?;
    }
    let Some(healthcheck) = root.get("healthcheck").and_then(|v| v.get_ref().as_table()) else {
        return Ok(());
    };
    const KINDS: [&str; 6] = ["alive", "command", "tcp", "http", "notify", "docker"];
    for kind in KINDS {
        must_be_table(healthcheck, kind, &format!("healthcheck.{kind}"))?;
    }
    let found: Vec<String> = KINDS
        .into_iter()
        .filter(|kind| healthcheck.contains_key(*kind))
        .map(|kind| format!("`healthcheck.{kind}`"))
        .collect();
    if let [first @ .., last] = found.as_slice()
        && !first.is_empty()
    {
        // Points at the one written last.
        let span = KINDS
            .into_iter()
            .filter_map(|kind| key_span(root, &["healthcheck", kind]))
            .max_by_key(|s| s.start);
        let both = if first.len() == 1 { "both " } else { "" };
        return Err(src.error(
            span,
            None,
            ConfigErrorKind::Invalid(format!(
                "at most one healthcheck may be configured, found {both}{} and {last}",
                first.join(", ")
            )),
        ));
    }
    Ok(())
}
