//! Durations in Go syntax (`250ms`, `1m30s`), as the reference configuration
//! writes them: parsed from the file, printed back by `psflip check` and in log
//! lines.

use std::time::Duration;

/// The largest duration accepted: Go's `time.Duration` is an `int64` of
/// nanoseconds, and configurations written for the reference must mean the
/// same thing here.
const MAX_DURATION_NANOS: u128 = i64::MAX as u128;

/// Parses a Go duration: a sequence of decimal numbers, each with an optional
/// fraction and a unit (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`), such as `250ms`,
/// `1m30s` or `1.5h`; `0` needs no unit. Negative durations, spaces, empty
/// strings and anything above Go's limit (~292 years) are refused.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.starts_with('-') {
        return Err("negative durations are not allowed".to_owned());
    }
    let body = s.strip_prefix('+').unwrap_or(s);
    if body == "0" {
        return Ok(Duration::ZERO);
    }
    if body.is_empty() {
        return Err("empty duration (expected a number and a unit, e.g. \"10s\")".to_owned());
    }
    let mut total: u128 = 0;
    let mut rest = body;
    while !rest.is_empty() {
        let (nanos, next) = leading_part(rest)?;
        total += nanos;
        if total > MAX_DURATION_NANOS {
            return Err(too_large());
        }
        rest = next;
    }
    u64::try_from(total)
        .map(Duration::from_nanos)
        .map_err(|_| too_large())
}

const UNITS: &str = "ns, us, µs, ms, s, m, h";

fn too_large() -> String {
    format!(
        "too large (the maximum is {})",
        format_duration(Duration::from_nanos(MAX_DURATION_NANOS as u64))
    )
}

/// The first `NUMBER[.FRACTION]UNIT` of `text` in nanoseconds, and the rest.
fn leading_part(text: &str) -> Result<(u128, &str), String> {
    let (int_digits, after_int) = split_digits(text);
    let (frac_digits, after_number) = match after_int.strip_prefix('.') {
        Some(f) => split_digits(f),
        None => ("", after_int),
    };
    if int_digits.is_empty() && frac_digits.is_empty() {
        return Err(match text.chars().next() {
            Some(c) => format!("expected a number, found {c:?}"),
            None => "expected a number".to_owned(),
        });
    }
    let number = &text[..text.len() - after_number.len()];
    let unit_len = after_number
        .find(|c: char| c == '.' || c.is_ascii_digit())
        .unwrap_or(after_number.len());
    let (unit, next) = after_number.split_at(unit_len);
    let unit = unit_nanos(unit, number)?;
    let int = decimal(int_digits).ok_or_else(too_large)?;
    // Digits past the 18th are below a nanosecond for every unit.
    let kept = &frac_digits[..frac_digits.len().min(18)];
    let frac = decimal(kept).unwrap_or(0) * unit / 10u128.pow(kept.len() as u32);
    Ok((int * unit + frac, next))
}

/// The leading ASCII digits of `text`, and the rest.
fn split_digits(text: &str) -> (&str, &str) {
    text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    )
}

/// The value of a string of ASCII digits; `None` above the largest duration.
fn decimal(digits: &str) -> Option<u128> {
    digits.bytes().try_fold(0u128, |n, d| {
        let n = n * 10 + u128::from(d - b'0');
        (n <= MAX_DURATION_NANOS).then_some(n)
    })
}

/// Nanoseconds in one `unit`; `number` is what came before it, for the error.
fn unit_nanos(unit: &str, number: &str) -> Result<u128, String> {
    Ok(match unit {
        "ns" => 1,
        "us" | "µs" | "μs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        "" => {
            return Err(format!(
                "missing unit after {number:?} (expected one of {UNITS})"
            ));
        }
        _ => return Err(format!("unknown unit {unit:?} (expected one of {UNITS})")),
    })
}

/// Formats a duration exactly as Go's `time.Duration.String` does: `0s`,
/// `250ms`, `1.5µs`, `1m30s`, `1h0m0s`. [`parse_duration`] reads it back.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    if nanos < 1_000 {
        return format!("{nanos}ns");
    }
    if nanos < 1_000_000 {
        return format!("{}µs", with_fraction(nanos, 1_000, 3));
    }
    if nanos < 1_000_000_000 {
        return format!("{}ms", with_fraction(nanos, 1_000_000, 6));
    }
    let secs = nanos / 1_000_000_000;
    let (hours, minutes) = (secs / 3600, secs / 60 % 60);
    let mut out = String::new();
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if hours > 0 || minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    let sub_minute = nanos % 60_000_000_000;
    out.push_str(&format!("{}s", with_fraction(sub_minute, 1_000_000_000, 9)));
    out
}

/// `value / unit` with its fraction (`digits` wide, trailing zeros trimmed).
fn with_fraction(value: u128, unit: u128, digits: usize) -> String {
    let (whole, frac) = (value / unit, value % unit);
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:0digits$}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("0", Duration::ZERO)]
    #[case("+0", Duration::ZERO)]
    #[case("0s", Duration::ZERO)]
    #[case("0.0s", Duration::ZERO)]
    #[case("1ns", Duration::from_nanos(1))]
    #[case("100us", Duration::from_micros(100))]
    #[case("100µs", Duration::from_micros(100))]
    #[case("100μs", Duration::from_micros(100))]
    #[case("250ms", Duration::from_millis(250))]
    #[case("10s", Duration::from_secs(10))]
    #[case("+10s", Duration::from_secs(10))]
    #[case("1.5s", Duration::from_millis(1500))]
    #[case(".5s", Duration::from_millis(500))]
    #[case("5.s", Duration::from_secs(5))]
    #[case("1m", Duration::from_secs(60))]
    #[case("1m30s", Duration::from_secs(90))]
    #[case("1h", Duration::from_secs(3600))]
    #[case("1h2m3s4ms5us6ns", Duration::new(3723, 4_005_006))]
    #[case("2h45m", Duration::from_secs(9900))]
    #[case("1.5h", Duration::from_secs(5400))]
    #[case("3s3s", Duration::from_secs(6))]
    #[case("0.000000001s", Duration::from_nanos(1))]
    #[case("0.0000000019999999999999999999999s", Duration::from_nanos(1))]
    #[case("000000000000000000000000000001s", Duration::from_secs(1))]
    #[case("2562047h47m16.854775807s", Duration::from_nanos(i64::MAX as u64))]
    fn parses_go_durations(#[case] text: &str, #[case] expected: Duration) {
        assert_eq!(parse_duration(text), Ok(expected));
    }

    #[rstest]
    #[case("", "empty duration (expected a number and a unit, e.g. \"10s\")")]
    #[case("+", "empty duration (expected a number and a unit, e.g. \"10s\")")]
    #[case("-1s", "negative durations are not allowed")]
    #[case("-0", "negative durations are not allowed")]
    #[case(
        "10",
        "missing unit after \"10\" (expected one of ns, us, µs, ms, s, m, h)"
    )]
    #[case(
        "1m30",
        "missing unit after \"30\" (expected one of ns, us, µs, ms, s, m, h)"
    )]
    #[case(
        "1.5",
        "missing unit after \"1.5\" (expected one of ns, us, µs, ms, s, m, h)"
    )]
    #[case(
        "10 s",
        "unknown unit \" s\" (expected one of ns, us, µs, ms, s, m, h)"
    )]
    #[case(" 10s", "expected a number, found ' '")]
    #[case(
        "10s ",
        "unknown unit \"s \" (expected one of ns, us, µs, ms, s, m, h)"
    )]
    #[case("10d", "unknown unit \"d\" (expected one of ns, us, µs, ms, s, m, h)")]
    #[case("10S", "unknown unit \"S\" (expected one of ns, us, µs, ms, s, m, h)")]
    #[case("1e3s", "unknown unit \"e\" (expected one of ns, us, µs, ms, s, m, h)")]
    #[case("s", "expected a number, found 's'")]
    #[case(".s", "expected a number, found '.'")]
    #[case(
        "1.2.3s",
        "missing unit after \"1.2\" (expected one of ns, us, µs, ms, s, m, h)"
    )]
    #[case(
        "2562047h47m16.854775808s",
        "too large (the maximum is 2562047h47m16.854775807s)"
    )]
    #[case(
        "9999999999999999999999999999999h",
        "too large (the maximum is 2562047h47m16.854775807s)"
    )]
    #[case("3000000h", "too large (the maximum is 2562047h47m16.854775807s)")]
    fn rejects_bad_durations(#[case] text: &str, #[case] message: &str) {
        assert_eq!(parse_duration(text), Err(message.to_owned()));
    }

    #[rstest]
    #[case(Duration::ZERO, "0s")]
    #[case(Duration::from_nanos(1), "1ns")]
    #[case(Duration::from_nanos(999), "999ns")]
    #[case(Duration::from_nanos(1_500), "1.5µs")]
    #[case(Duration::from_micros(100), "100µs")]
    #[case(Duration::from_millis(250), "250ms")]
    #[case(Duration::from_nanos(1_000_001), "1.000001ms")]
    #[case(Duration::from_secs(10), "10s")]
    #[case(Duration::from_millis(1500), "1.5s")]
    #[case(Duration::from_secs(60), "1m0s")]
    #[case(Duration::from_secs(90), "1m30s")]
    #[case(Duration::from_secs(3600), "1h0m0s")]
    #[case(Duration::new(3723, 4_000_000), "1h2m3.004s")]
    #[case(Duration::from_secs(3 * 86_400), "72h0m0s")]
    #[case(Duration::from_nanos(i64::MAX as u64), "2562047h47m16.854775807s")]
    #[case(Duration::MAX, "5124095576030431h0m15.999999999s")]
    fn formats_like_go(#[case] duration: Duration, #[case] expected: &str) {
        assert_eq!(format_duration(duration), expected);
    }
}
