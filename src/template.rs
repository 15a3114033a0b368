//! `{{ … }}` templates in configuration strings (SPEC §3).
//!
//! Why a hand-written expander and not a template engine: the configuration
//! only needs Go-template *call* syntax with string-literal arguments — the
//! reference implementation used Go's `text/template`, so existing configs
//! write `{{ AB "8081" "8082" }}` — and every value it may produce must be
//! known exactly, because the successor re-reads the configuration and must
//! compute the same thing the old generation would, except for `AB`, which is
//! what flips.
//!
//! The grammar, deliberately small:
//!
//! ```text
//! text    := (literal | action)*          literal text is copied verbatim
//! action  := "{{" ws* call ws* "}}"
//! call    := Func (ws+ string)*           Func is one of the functions below
//!          | string                       a bare string yields itself: {{ "{{" }}
//! string  := "…" (Go escapes: \" \\ \n \t \r \a \b \f \v \xHH \ooo \uHHHH \UHHHHHHHH)
//!          | `…` (raw, no escapes, may span lines)
//! ```
//!
//! As in Go, a `}}` outside an action is ordinary text (so JSON such as
//! `{"a":{"b":1}}` passes through untouched), and the value a function returns
//! is never expanded again. The only way to write a literal `{{` is the Go
//! idiom `{{ "{{" }}`; [`escape`] produces it.
//!
//! Functions: `Env "K"`, `EnvDefault "K" "d"`, `AB "a" "b"`, `BlueGreen`,
//! `Local "name"`, `Cat "path"`, `Now "fmt"`, `UTCNow "fmt"`, `EscapeRE "s"`.
//! Everything that depends on the outside world (environment, clock, which
//! generation this is, the directory `Cat` resolves against) comes in through
//! [`Context`], so expansion is a pure function of its inputs plus, for `Cat`,
//! the file system, and for `Now`, the process's time zone.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::Read;
use std::path::Path;

/// The names of all template functions, for error messages.
const FUNCTIONS: &[&str] = &[
    "Env",
    "EnvDefault",
    "AB",
    "BlueGreen",
    "Local",
    "Cat",
    "Now",
    "UTCNow",
    "EscapeRE",
];

/// `Cat` refuses files larger than this: a configuration value ends up in an
/// argv or environment entry, which Linux caps at 128 KiB each anyway, and
/// `Cat "/dev/zero"` must fail rather than eat all memory.
pub const CAT_MAX_BYTES: u64 = 1 << 20;

/// Everything a template may depend on.
pub struct Context<'a> {
    /// Environment lookup (`Env`, `EnvDefault`); tests inject a map.
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// `false`: `AB "a" "b"` yields `a` (first generation, and every other one
    /// after it); `true`: it yields `b`.
    pub ab_second: bool,
    /// This generation's start time, in seconds since the Unix epoch (`Now`, `UTCNow`).
    pub now_unix_secs: i64,
    /// Already-expanded `[locals]` (`Local`).
    pub locals: &'a BTreeMap<String, String>,
    /// Relative `Cat` paths resolve against this (psflip's initial working directory).
    pub base_dir: &'a Path,
}

/// Why a template could not be expanded. The configuration layer adds the
/// file, key and position; these messages say what is wrong inside the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `{{` with no matching `}}`.
    #[error("unterminated action {snippet:?}: `{{{{` without a matching `}}}}`")]
    UnterminatedAction {
        /// The start of the action, shortened.
        snippet: String,
    },
    /// A string literal with no closing quote (or, for `"…"`, a newline inside).
    #[error("unterminated string literal {snippet:?}")]
    UnterminatedString {
        /// The start of the literal, shortened.
        snippet: String,
    },
    /// A backslash sequence Go does not know, or a malformed one.
    #[error("invalid escape sequence {sequence:?} in string literal")]
    InvalidEscape {
        /// The offending sequence, backslash included.
        sequence: String,
    },
    /// `\x`/octal escapes that do not form valid UTF-8.
    #[error("string literal is not valid UTF-8 once unescaped")]
    InvalidUtf8,
    /// `{{}}` or `{{ }}`.
    #[error("empty action `{{{{}}}}`")]
    EmptyAction,
    /// A character that starts neither a name nor a string literal.
    #[error("unexpected {found:?} in action (expected a function name or a string literal)")]
    UnexpectedChar {
        /// The character found.
        found: char,
    },
    /// A function name where a string literal was expected, e.g. `{{ Env BlueGreen }}`.
    #[error("argument {index} of {func} must be a string literal, found {found:?}")]
    ArgumentNotString {
        /// The function being called.
        func: String,
        /// 1-based argument number.
        index: usize,
        /// The name found instead.
        found: String,
    },
    /// `{{ "a" "b" }}`: a string literal cannot be called.
    #[error("a string literal cannot take arguments")]
    LiteralWithArguments,
    /// A name that is not one of the functions.
    #[error("unknown function {name:?}{hint}")]
    UnknownFunction {
        /// The name used.
        name: String,
        /// `" (did you mean \"Env\"?)"` or the list of functions.
        hint: String,
    },
    /// A known function called with the wrong number of arguments.
    #[error("{func} takes {expected} argument{}, got {got}", if *.expected == 1 { "" } else { "s" })]
    WrongArgumentCount {
        /// The function.
        func: &'static str,
        /// How many it takes.
        expected: usize,
        /// How many it got.
        got: usize,
    },
    /// `Local "x"` with no `x` in `[locals]`.
    #[error("no local named {name:?} in [locals]")]
    MissingLocal {
        /// The name asked for.
        name: String,
    },
    /// `Local` used inside a `[locals]` value.
    #[error("locals cannot refer to other locals (`Local {name:?}`)")]
    LocalInLocal {
        /// The name asked for.
        name: String,
    },
    /// `Cat` could not read its file.
    #[error("Cat {path:?}: {reason}")]
    Cat {
        /// The path as written.
        path: String,
        /// Why it failed.
        reason: String,
    },
    /// `Now`/`UTCNow` could not format the time.
    #[error("{func} {format:?}: {reason}")]
    Time {
        /// `Now` or `UTCNow`.
        func: &'static str,
        /// The format as written.
        format: String,
        /// Why it failed.
        reason: String,
    },
}

/// Expands every `{{ … }}` action in `input`.
///
/// Text outside actions is copied verbatim; function results are inserted
/// verbatim (never re-expanded). Never panics, whatever the input.
pub fn expand(input: &str, ctx: &Context) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let action = &rest[open..];
        let (tokens, consumed) = lex_action(action)?;
        out.push_str(&evaluate(&tokens, ctx)?);
        rest = &action[consumed..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Returns a template whose expansion is exactly `literal`.
///
/// Only `{{` needs escaping (as `{{"{{"}}`): a lone `}}` is plain text. Used to
/// print a resolved configuration that parses back to the same values.
pub fn escape(literal: &str) -> String {
    literal.replace("{{", r#"{{"{{"}}"#)
}

/// One token of an action.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// A function name.
    Name(String),
    /// An unescaped string literal.
    Str(String),
}

/// Splits the action at the start of `action` (which begins with `{{`) into
/// tokens; returns them and the number of bytes up to and including `}}`.
fn lex_action(action: &str) -> Result<(Vec<Token>, usize), TemplateError> {
    let mut tokens = Vec::new();
    let mut pos = 2; // past "{{"
    loop {
        let rest = &action[pos..];
        let trimmed = rest.trim_start_matches([' ', '\t', '\r', '\n']);
        pos += rest.len() - trimmed.len();
        if trimmed.starts_with("}}") {
            return Ok((tokens, pos + 2));
        }
        let Some(first) = trimmed.chars().next() else {
            return Err(TemplateError::UnterminatedAction {
                snippet: snippet(action),
            });
        };
        match first {
            '"' | '`' => {
                let (value, len) = lex_string(trimmed)?;
                tokens.push(Token::Str(value));
                pos += len;
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let len = trimmed
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(trimmed.len());
                tokens.push(Token::Name(trimmed[..len].to_owned()));
                pos += len;
            }
            // `{{ BlueGreen }`: a brace short, the action never ends.
            '}' if !trimmed.contains("}}") => {
                return Err(TemplateError::UnterminatedAction {
                    snippet: snippet(action),
                });
            }
            found => return Err(TemplateError::UnexpectedChar { found }),
        }
    }
}

/// Lexes the string literal at the start of `s` (which begins with `"` or a
/// backquote); returns its value and its length in bytes, quotes included.
fn lex_string(s: &str) -> Result<(String, usize), TemplateError> {
    let unterminated = || TemplateError::UnterminatedString {
        snippet: snippet(s),
    };
    if let Some(raw) = s.strip_prefix('`') {
        let end = raw.find('`').ok_or_else(unterminated)?;
        return Ok((raw[..end].to_owned(), end + 2));
    }
    // Interpreted string: collect bytes, since \x and octal escapes are bytes.
    let mut bytes: Vec<u8> = Vec::new();
    let mut chars = s.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => {
                let value = String::from_utf8(bytes).map_err(|_| TemplateError::InvalidUtf8)?;
                return Ok((value, i + 1));
            }
            '\n' => return Err(unterminated()),
            '\\' => {
                let Some((_, e)) = chars.next() else {
                    return Err(unterminated());
                };
                let simple = match e {
                    'a' => Some(0x07),
                    'b' => Some(0x08),
                    'f' => Some(0x0c),
                    'n' => Some(b'\n'),
                    'r' => Some(b'\r'),
                    't' => Some(b'\t'),
                    'v' => Some(0x0b),
                    '\\' => Some(b'\\'),
                    '"' => Some(b'"'),
                    _ => None,
                };
                if let Some(b) = simple {
                    bytes.push(b);
                    continue;
                }
                let (digits, radix) = match e {
                    'x' => (2, 16),
                    'u' => (4, 16),
                    'U' => (8, 16),
                    '0'..='7' => (2, 8), // the first octal digit is `e` itself
                    _ => {
                        return Err(TemplateError::InvalidEscape {
                            sequence: format!("\\{e}"),
                        });
                    }
                };
                let mut sequence = format!("\\{e}");
                let mut value: u32 = if radix == 8 {
                    e.to_digit(8).unwrap_or(0)
                } else {
                    0
                };
                for _ in 0..digits {
                    let Some((_, d)) = chars.next() else {
                        return Err(unterminated());
                    };
                    sequence.push(d);
                    let Some(d) = d.to_digit(radix) else {
                        return Err(TemplateError::InvalidEscape { sequence });
                    };
                    value = value * radix + d;
                }
                match e {
                    'u' | 'U' => {
                        let c = char::from_u32(value)
                            .ok_or(TemplateError::InvalidEscape { sequence })?;
                        let mut buf = [0u8; 4];
                        bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                    _ => {
                        // \xHH is at most 0xff; \ooo above 0o377 is invalid, as in Go.
                        let b = u8::try_from(value)
                            .map_err(|_| TemplateError::InvalidEscape { sequence })?;
                        bytes.push(b);
                    }
                }
            }
            c => {
                let mut buf = [0u8; 4];
                bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    Err(unterminated())
}

/// The first few characters of `s`, for error messages.
fn snippet(s: &str) -> String {
    const MAX_CHARS: usize = 24;
    let mut out: String = s.chars().take(MAX_CHARS).collect();
    if s.chars().nth(MAX_CHARS).is_some() {
        out.push('…');
    }
    out
}

/// Evaluates one lexed action.
fn evaluate(tokens: &[Token], ctx: &Context) -> Result<String, TemplateError> {
    let (func, args) = match tokens.split_first() {
        None => return Err(TemplateError::EmptyAction),
        Some((Token::Str(s), [])) => return Ok(s.clone()),
        Some((Token::Str(_), _)) => return Err(TemplateError::LiteralWithArguments),
        Some((Token::Name(name), args)) => (name.as_str(), args),
    };
    let Some(&func) = FUNCTIONS.iter().find(|f| **f == func) else {
        return Err(unknown_function(func));
    };
    let args = args
        .iter()
        .enumerate()
        .map(|(i, t)| match t {
            Token::Str(s) => Ok(s.as_str()),
            Token::Name(found) => Err(TemplateError::ArgumentNotString {
                func: func.to_owned(),
                index: i + 1,
                found: found.clone(),
            }),
        })
        .collect::<Result<Vec<&str>, _>>()?;
    let arity = |expected: usize| {
        if args.len() == expected {
            Ok(())
        } else {
            Err(TemplateError::WrongArgumentCount {
                func,
                expected,
                got: args.len(),
            })
        }
    };
    match (func, args.as_slice()) {
        ("Env", [key]) => Ok((ctx.env)(key).unwrap_or_default()),
        ("EnvDefault", [key, default]) => {
            Ok((ctx.env)(key).unwrap_or_else(|| (*default).to_owned()))
        }
        ("AB", [a, b]) => Ok(if ctx.ab_second { b } else { a }.to_string()),
        ("BlueGreen", []) => Ok(if ctx.ab_second { "green" } else { "blue" }.to_owned()),
        ("Local", [name]) => {
            ctx.locals
                .get(*name)
                .cloned()
                .ok_or_else(|| TemplateError::MissingLocal {
                    name: (*name).to_owned(),
                })
        }
        ("Cat", [path]) => cat(path, ctx.base_dir),
        ("Now", [format]) => {
            strftime(format, ctx.now_unix_secs, false).map_err(|reason| TemplateError::Time {
                func: "Now",
                format: (*format).to_owned(),
                reason,
            })
        }
        ("UTCNow", [format]) => {
            strftime(format, ctx.now_unix_secs, true).map_err(|reason| TemplateError::Time {
                func: "UTCNow",
                format: (*format).to_owned(),
                reason,
            })
        }
        ("EscapeRE", [s]) => Ok(escape_regex(s)),
        ("BlueGreen", _) => arity(0).map(|()| String::new()),
        ("Env" | "Local" | "Cat" | "Now" | "UTCNow" | "EscapeRE", _) => {
            arity(1).map(|()| String::new())
        }
        _ => arity(2).map(|()| String::new()),
    }
}

/// The error for a name that is not a function, with a hint.
fn unknown_function(name: &str) -> TemplateError {
    let hint = match FUNCTIONS.iter().find(|f| f.eq_ignore_ascii_case(name)) {
        Some(f) => format!(" (did you mean {f:?}?)"),
        None => format!(" (expected one of {})", FUNCTIONS.join(", ")),
    };
    TemplateError::UnknownFunction {
        name: name.to_owned(),
        hint,
    }
}

/// `Cat`: the file's contents, verbatim.
fn cat(path: &str, base_dir: &Path) -> Result<String, TemplateError> {
    let error = |reason: String| TemplateError::Cat {
        path: path.to_owned(),
        reason,
    };
    let full = base_dir.join(path);
    let file = std::fs::File::open(&full).map_err(|e| error(io_reason(&e)))?;
    let mut bytes = Vec::new();
    file.take(CAT_MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| error(io_reason(&e)))?;
    if bytes.len() as u64 > CAT_MAX_BYTES {
        return Err(error(format!("file is larger than {CAT_MAX_BYTES} bytes")));
    }
    String::from_utf8(bytes).map_err(|_| error("file is not valid UTF-8".to_owned()))
}

/// An I/O error as a short sentence ("No such file or directory"), without
/// Rust's "(os error 2)" suffix.
pub(crate) fn io_reason(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).desc().to_owned(),
        None => e.to_string(),
    }
}

/// `EscapeRE`: escapes the characters Go's `regexp.QuoteMeta` escapes.
fn escape_regex(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if r"\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Formats `unix_secs` with the C library's `strftime`, in the local time zone
/// or in UTC.
///
/// `%f` (microseconds, which Python and the reference's strftime know but C
/// does not) is replaced first; the start time has whole-second precision, so
/// it is always `000000`.
fn strftime(format: &str, unix_secs: i64, utc: bool) -> Result<String, String> {
    /// Longest result accepted; a format cannot reasonably need more.
    const MAX_LEN: usize = 1 << 16;
    let format = replace_percent_f(format);
    // A trailing sentinel keeps the result non-empty, because strftime's 0
    // means both "empty result" and "buffer too small".
    let c_format =
        CString::new(format + " ").map_err(|_| "format contains a NUL byte".to_owned())?;
    // (libc marks time_t deprecated for musl only, where it is 64 bits as here.)
    #[allow(deprecated)]
    let time = libc::time_t::try_from(unix_secs).map_err(|_| "time out of range".to_owned())?;
    // SAFETY: `tm` is plain data; all-zero is a valid value.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call; the `_r` variants are thread-safe.
    let converted = unsafe {
        if utc {
            libc::gmtime_r(&time, &mut tm)
        } else {
            libc::localtime_r(&time, &mut tm)
        }
    };
    if converted.is_null() {
        return Err("time out of range".to_owned());
    }
    let mut capacity = 256;
    while capacity <= MAX_LEN {
        let mut buf = vec![0u8; capacity];
        // SAFETY: `buf` has `capacity` writable bytes, the format is
        // NUL-terminated and `tm` was filled in above.
        let written =
            unsafe { libc::strftime(buf.as_mut_ptr().cast(), capacity, c_format.as_ptr(), &tm) };
        if written > 0 {
            buf.truncate(written.saturating_sub(1)); // drop the sentinel
            return Ok(String::from_utf8_lossy(&buf).into_owned());
        }
        capacity *= 4;
    }
    Err(format!("result longer than {MAX_LEN} bytes"))
}

/// Replaces `%f` with `000000`, leaving `%%f` alone.
fn replace_percent_f(format: &str) -> String {
    let mut out = String::with_capacity(format.len());
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('f') => out.push_str("000000"),
            Some(next) => {
                out.push('%');
                out.push(next);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    /// 2024-02-29 13:14:15 UTC.
    const LEAP_DAY: i64 = 1_709_212_455;

    fn env(key: &str) -> Option<String> {
        match key {
            "HOME" => Some("/home/app".to_owned()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn run_with(input: &str, ab_second: bool, base_dir: &Path) -> Result<String, TemplateError> {
        let locals = BTreeMap::from([
            ("port".to_owned(), "8081".to_owned()),
            ("tricky".to_owned(), "{{ Env \"HOME\" }}".to_owned()),
        ]);
        let ctx = Context {
            env: &env,
            ab_second,
            now_unix_secs: LEAP_DAY,
            locals: &locals,
            base_dir,
        };
        expand(input, &ctx)
    }

    fn run(input: &str) -> Result<String, TemplateError> {
        run_with(input, false, Path::new("/nonexistent-base"))
    }

    #[rstest]
    #[case::plain("no templates here", "no templates here")]
    #[case::empty("", "")]
    #[case::env("home={{ Env \"HOME\" }}", "home=/home/app")]
    #[case::env_unset("[{{ Env \"NOPE\" }}]", "[]")]
    #[case::env_default_unset("{{ EnvDefault \"NOPE\" \"dflt\" }}", "dflt")]
    #[case::env_default_set("{{ EnvDefault \"HOME\" \"dflt\" }}", "/home/app")]
    #[case::env_default_empty_is_set("[{{ EnvDefault \"EMPTY\" \"dflt\" }}]", "[]")]
    #[case::ab("{{ AB \"8081\" \"8082\" }}", "8081")]
    #[case::blue_green("app-{{BlueGreen}}", "app-blue")]
    #[case::blue_green_spaced("app-{{ BlueGreen }}", "app-blue")]
    #[case::local("127.0.0.1:{{ Local \"port\" }}", "127.0.0.1:8081")]
    #[case::local_not_reexpanded("{{ Local \"tricky\" }}", "{{ Env \"HOME\" }}")]
    #[case::escape_re("{{ EscapeRE \"a.b*c\" }}", r"a\.b\*c")]
    #[case::escape_re_all(
        r#"{{ EscapeRE "\\.+*?()|[]{}^$x" }}"#,
        r"\\\.\+\*\?\(\)\|\[\]\{\}\^\$x"
    )]
    #[case::utc_now("{{ UTCNow \"%Y-%m-%d %H:%M:%S\" }}", "2024-02-29 13:14:15")]
    #[case::utc_now_percent_f("{{ UTCNow \"%S.%f %%f\" }}", "15.000000 %f")]
    #[case::utc_now_empty_format("[{{ UTCNow \"\" }}]", "[]")]
    #[case::several("{{Env \"HOME\"}}/{{BlueGreen}}/{{AB `x` `y`}}", "/home/app/blue/x")]
    #[case::adjacent("{{BlueGreen}}{{BlueGreen}}", "blueblue")]
    #[case::newlines_in_action("{{\n  AB\n  \"a\"\n  \"b\"\n}}", "a")]
    #[case::literal("{{ \"{{\" }}", "{{")]
    #[case::escaped_literal(r#"{{"{{"}}x}}"#, "{{x}}")]
    #[case::stray_close("{\"a\":{\"b\":1}}", "{\"a\":{\"b\":1}}")]
    #[case::single_braces("{ BlueGreen }", "{ BlueGreen }")]
    #[case::escapes(
        r#"{{ "q\"b\\n\nt\tx\x41\101\u00e9\U0001F600" }}"#,
        "q\"b\\n\nt\txAAé😀"
    )]
    #[case::raw_string("{{ `a\\n\"b\n` }}", "a\\n\"b\n")]
    #[case::close_braces_in_string("{{ EscapeRE \"}}\" }}", r"\}\}")]
    #[case::unicode("héllo {{ AB \"ünï\" \"b\" }} wörld", "héllo ünï wörld")]
    fn expands(#[case] input: &str, #[case] expected: &str) {
        assert_eq!(run(input).as_deref(), Ok(expected));
    }

    #[rstest]
    #[case("{{ AB \"a\" \"b\" }}", false, "a")]
    #[case("{{ AB \"a\" \"b\" }}", true, "b")]
    #[case("{{ BlueGreen }}", false, "blue")]
    #[case("{{ BlueGreen }}", true, "green")]
    fn ab_alternates_with_the_generation(
        #[case] input: &str,
        #[case] ab_second: bool,
        #[case] expected: &str,
    ) {
        assert_eq!(
            run_with(input, ab_second, Path::new("/")).as_deref(),
            Ok(expected)
        );
    }

    #[test]
    fn now_uses_the_local_time_zone() {
        // Whatever the zone, local and UTC agree on minutes and seconds for
        // every zone with whole-quarter-hour offsets, and both are well formed.
        let local = run("{{ Now \"%Y-%m-%dT%H:%M:%S\" }}").unwrap_or_default();
        assert_eq!(local.len(), 19, "{local:?}");
        assert!(local.ends_with(":15"), "{local:?}");
    }

    #[test]
    fn cat_reads_files_verbatim_relative_to_base_dir() {
        let dir = std::env::temp_dir().join(format!("psflip-template-cat-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("version"), "1.2.3\n{{ BlueGreen }}\n").expect("write");
        let relative = run_with("v={{ Cat \"version\" }}", false, &dir);
        let absolute = run_with(
            &format!(
                "{{{{ Cat {:?} }}}}",
                dir.join("version").display().to_string()
            ),
            false,
            Path::new("/elsewhere"),
        );
        std::fs::write(dir.join("latin1"), [0xe9u8]).expect("write");
        let not_utf8 = run_with("{{ Cat \"latin1\" }}", false, &dir);
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(relative.as_deref(), Ok("v=1.2.3\n{{ BlueGreen }}\n"));
        assert_eq!(absolute.as_deref(), Ok("1.2.3\n{{ BlueGreen }}\n"));
        assert_eq!(
            not_utf8.map_err(|e| e.to_string()),
            Err("Cat \"latin1\": file is not valid UTF-8".to_owned())
        );
    }

    #[test]
    fn cat_of_a_missing_file_is_an_error() {
        assert_eq!(
            run("{{ Cat \"missing.txt\" }}").map_err(|e| e.to_string()),
            Err("Cat \"missing.txt\": No such file or directory".to_owned())
        );
    }

    #[test]
    fn cat_refuses_endless_files() {
        let err = run("{{ Cat \"/dev/zero\" }}").map_err(|e| e.to_string());
        assert_eq!(
            err,
            Err(format!(
                "Cat \"/dev/zero\": file is larger than {CAT_MAX_BYTES} bytes"
            ))
        );
    }

    #[rstest]
    #[case::unterminated_action(
        "a {{ Env \"HOME\" ",
        "unterminated action \"{{ Env \\\"HOME\\\" \": `{{` without a matching `}}`"
    )]
    #[case::single_close(
        "{{ BlueGreen }",
        "unterminated action \"{{ BlueGreen }\": `{{` without a matching `}}`"
    )]
    #[case::only_open("{{", "unterminated action \"{{\": `{{` without a matching `}}`")]
    #[case::unterminated_string("{{ Env \"HOME }}", "unterminated string literal \"\\\"HOME }}\"")]
    #[case::unterminated_raw("{{ Env `HOME }}", "unterminated string literal \"`HOME }}\"")]
    #[case::newline_in_string(
        "{{ Env \"HO\nME\" }}",
        "unterminated string literal \"\\\"HO\\nME\\\" }}\""
    )]
    #[case::bad_escape(
        r#"{{ Env "\q" }}"#,
        r#"invalid escape sequence "\\q" in string literal"#
    )]
    #[case::bad_hex(
        r#"{{ Env "\xZZ" }}"#,
        r#"invalid escape sequence "\\xZ" in string literal"#
    )]
    #[case::bad_octal(
        r#"{{ Env "\400" }}"#,
        r#"invalid escape sequence "\\400" in string literal"#
    )]
    #[case::surrogate(
        r#"{{ Env "\uD800" }}"#,
        r#"invalid escape sequence "\\uD800" in string literal"#
    )]
    #[case::invalid_utf8(
        r#"{{ Env "\xff" }}"#,
        "string literal is not valid UTF-8 once unescaped"
    )]
    #[case::empty("{{}}", "empty action `{{}}`")]
    #[case::blank("{{  }}", "empty action `{{}}`")]
    #[case::unexpected(
        "{{ .Field }}",
        "unexpected '.' in action (expected a function name or a string literal)"
    )]
    #[case::trim_marker(
        "{{- BlueGreen }}",
        "unexpected '-' in action (expected a function name or a string literal)"
    )]
    #[case::single_close_then_more(
        "{{ BlueGreen } }}",
        "unexpected '}' in action (expected a function name or a string literal)"
    )]
    #[case::nested(
        "{{ Env {{ }}",
        "unexpected '{' in action (expected a function name or a string literal)"
    )]
    #[case::unknown(
        "{{ Foo \"x\" }}",
        "unknown function \"Foo\" (expected one of Env, EnvDefault, AB, BlueGreen, Local, Cat, Now, UTCNow, EscapeRE)"
    )]
    #[case::wrong_case("{{ now \"%Y\" }}", "unknown function \"now\" (did you mean \"Now\"?)")]
    #[case::env_no_args("{{ Env }}", "Env takes 1 argument, got 0")]
    #[case::env_two_args("{{ Env \"A\" \"B\" }}", "Env takes 1 argument, got 2")]
    #[case::env_default_one("{{ EnvDefault \"A\" }}", "EnvDefault takes 2 arguments, got 1")]
    #[case::ab_one("{{ AB \"a\" }}", "AB takes 2 arguments, got 1")]
    #[case::ab_three("{{ AB \"a\" \"b\" \"c\" }}", "AB takes 2 arguments, got 3")]
    #[case::blue_green_arg("{{ BlueGreen \"x\" }}", "BlueGreen takes 0 arguments, got 1")]
    #[case::local_none("{{ Local }}", "Local takes 1 argument, got 0")]
    #[case::cat_none("{{ Cat }}", "Cat takes 1 argument, got 0")]
    #[case::now_none("{{ Now }}", "Now takes 1 argument, got 0")]
    #[case::utc_now_two("{{ UTCNow \"a\" \"b\" }}", "UTCNow takes 1 argument, got 2")]
    #[case::escape_re_none("{{ EscapeRE }}", "EscapeRE takes 1 argument, got 0")]
    #[case::name_as_argument(
        "{{ Env BlueGreen }}",
        "argument 1 of Env must be a string literal, found \"BlueGreen\""
    )]
    #[case::literal_called("{{ \"a\" \"b\" }}", "a string literal cannot take arguments")]
    #[case::missing_local("{{ Local \"nope\" }}", "no local named \"nope\" in [locals]")]
    #[case::now_nul("{{ Now \"%Y\\x00\" }}", "Now \"%Y\\0\": format contains a NUL byte")]
    fn errors(#[case] input: &str, #[case] message: &str) {
        assert_eq!(
            run(input).map_err(|e| e.to_string()),
            Err(message.to_owned())
        );
    }

    #[test]
    fn time_out_of_range_is_an_error() {
        let locals = BTreeMap::new();
        let ctx = Context {
            env: &env,
            ab_second: false,
            now_unix_secs: i64::MAX,
            locals: &locals,
            base_dir: Path::new("/"),
        };
        assert_eq!(
            expand("{{ UTCNow \"%Y\" }}", &ctx).map_err(|e| e.to_string()),
            Err("UTCNow \"%Y\": time out of range".to_owned())
        );
    }

    #[test]
    fn long_strftime_results_grow_the_buffer() {
        let format = "%Y".repeat(500);
        let out = run(&format!("{{{{ UTCNow {format:?} }}}}")).unwrap_or_default();
        assert_eq!(out, "2024".repeat(500));
    }

    #[rstest]
    #[case("")]
    #[case("plain }} text")]
    #[case("{{")]
    #[case("{{{")]
    #[case("{{{{ x }}")]
    #[case("a{{b{{c")]
    #[case("{{ Env \"HOME\" }}")]
    fn escape_round_trips(#[case] literal: &str) {
        assert_eq!(run(&escape(literal)).as_deref(), Ok(literal));
    }
}
