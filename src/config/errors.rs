//! Errors that lead the user straight to the spot: every [`ConfigError`] names
//! the file, the dotted key (`cmd[2]`, `shutdown.timeout`) and the line and
//! column, found from the span of the value or key to blame.

use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

use crate::template::TemplateError;

/// A 1-based line and column (in characters) in the configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
}

/// A configuration error. Displays as
/// `FILE[:LINE:COLUMN]: [KEY: ]MESSAGE`, e.g.
/// `psflip.toml:7:11: shutdown.timeout: invalid duration "10 s": unknown unit " s" …`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}", location(.path, .position, .key), .kind)]
pub struct ConfigError {
    /// The configuration file, as given.
    pub path: PathBuf,
    /// Where in the file, when known.
    pub position: Option<Position>,
    /// The dotted key (`cmd[2]`, `shutdown.timeout`), when one is to blame.
    pub key: Option<String>,
    /// What is wrong (boxed to keep `Result<_, ConfigError>` small).
    pub kind: Box<ConfigErrorKind>,
}

/// What is wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigErrorKind {
    /// The file could not be read.
    #[error("cannot read: {reason}")]
    Read {
        /// E.g. "No such file or directory".
        reason: String,
    },
    /// Not valid TOML (the TOML parser's message).
    #[error("{message}")]
    Syntax {
        /// The parser's message.
        message: String,
    },
    /// A key that psflip does not know.
    #[error("unknown key `{key}` in {table} ({expected})")]
    UnknownKey {
        /// The key as written.
        key: String,
        /// `the top level` or `[shutdown]`.
        table: String,
        /// `expected one of `cmd`, …`.
        expected: String,
    },
    /// A part of the design that is not implemented yet.
    #[error("`{feature}` is not supported yet")]
    Unsupported {
        /// The dotted key, e.g. `healthcheck.notify`.
        feature: String,
    },
    /// A template in the value could not be expanded.
    #[error("template: {0}")]
    Template(TemplateError),
    /// Not a Go duration.
    #[error("invalid duration {value:?}: {reason}")]
    Duration {
        /// The value, templates expanded.
        value: String,
        /// Why.
        reason: String,
    },
    /// Not a signal name, or not allowed here.
    #[error("invalid signal {value:?}: {reason}")]
    Signal {
        /// The value, templates expanded.
        value: String,
        /// Why.
        reason: String,
    },
    /// Any other invalid value or combination of values.
    #[error("{0}")]
    Invalid(String),
}

/// The `FILE[:LINE:COL]: [KEY: ]` prefix of a [`ConfigError`].
fn location(path: &Path, position: &Option<Position>, key: &Option<String>) -> String {
    let mut out = path.display().to_string();
    if let Some(p) = position {
        out.push_str(&format!(":{}:{}", p.line, p.column));
    }
    out.push_str(": ");
    if let Some(key) = key {
        out.push_str(key);
        out.push_str(": ");
    }
    out
}

/// The text being parsed and its file name, to build positioned errors.
pub(super) struct Source<'a> {
    pub(super) text: &'a str,
    pub(super) path: &'a Path,
}

impl Source<'_> {
    pub(super) fn error(
        &self,
        span: Option<Range<usize>>,
        key: Option<String>,
        kind: ConfigErrorKind,
    ) -> ConfigError {
        ConfigError {
            path: self.path.to_owned(),
            position: span.map(|s| position(self.text, s.start)),
            key,
            kind: Box::new(kind),
        }
    }

    pub(super) fn invalid(
        &self,
        span: Option<Range<usize>>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        self.error(
            span,
            Some(key.to_owned()),
            ConfigErrorKind::Invalid(message.into()),
        )
    }

    /// Rewrites a serde error in psflip's terms, finding the key from the span.
    pub(super) fn serde_error(&self, e: &toml::de::Error, root: &DeTable) -> ConfigError {
        let span = e.span();
        let path = span.as_ref().and_then(|s| find_path(root, s));
        let message = e.message();
        if let Some((key, expected)) = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split_once("`, "))
        {
            let table = match path.as_deref() {
                Some([parent @ .., _]) if !parent.is_empty() => {
                    format!("[{}]", render_path(parent))
                }
                _ => "the top level".to_owned(),
            };
            return self.error(
                span,
                None,
                ConfigErrorKind::UnknownKey {
                    key: key.to_owned(),
                    table,
                    expected: expected.to_owned(),
                },
            );
        }
        let key = path.map(|p| render_path(&p));
        self.error(span, key, ConfigErrorKind::Invalid(message.to_owned()))
    }
}

/// The 1-based line and column of byte `offset` in `text`.
fn position(text: &str, offset: usize) -> Position {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Position {
        line: before.matches('\n').count() + 1,
        column: before[line_start..].chars().count() + 1,
    }
}

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// `healthcheck.command.cmd[0]`, `locals."a b"`.
fn render_path(path: &[Segment]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&toml_key(k));
            }
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// The path of the key or value whose span is exactly `span`.
fn find_path(root: &DeTable, span: &Range<usize>) -> Option<Vec<Segment>> {
    fn in_table(table: &DeTable, span: &Range<usize>, path: &mut Vec<Segment>) -> bool {
        for (key, value) in table.iter() {
            path.push(Segment::Key(key.get_ref().to_string()));
            if key.span() == *span || value.span() == *span || in_value(value.get_ref(), span, path)
            {
                return true;
            }
            path.pop();
        }
        false
    }
    fn in_value(value: &DeValue, span: &Range<usize>, path: &mut Vec<Segment>) -> bool {
        match value {
            DeValue::Table(table) => in_table(table, span, path),
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    path.push(Segment::Index(i));
                    if item.span() == *span || in_value(item.get_ref(), span, path) {
                        return true;
                    }
                    path.pop();
                }
                false
            }
            _ => false,
        }
    }
    let mut path = Vec::new();
    in_table(root, span, &mut path).then_some(path)
}

/// The span of the key at `path` (a list of table keys), if present.
pub(super) fn key_span(root: &DeTable, path: &[&str]) -> Option<Range<usize>> {
    let (last, parents) = path.split_last()?;
    let mut table = root;
    for name in parents {
        table = table.get(*name)?.get_ref().as_table()?;
    }
    table.get_key_value(*last).map(|(k, _)| k.span())
}

/// "an array", "a string"…
pub(super) fn with_article(type_name: &str) -> String {
    let article = if type_name.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {type_name}")
}

/// A TOML key: bare when possible, else a quoted string.
pub(super) fn toml_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        key.to_owned()
    } else {
        toml_basic_string(key)
    }
}

/// A TOML basic (double-quoted) string, escaped.
fn toml_basic_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
