//! `[healthcheck.http] status`: which HTTP statuses count as healthy.

use std::fmt;

/// Which HTTP statuses count as healthy: `2xx`, `200`, `200-299`, or a
/// comma-separated list of these (`200,204`, `2xx, 304`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusPattern {
    /// Inclusive ranges, as written.
    ranges: Vec<(u16, u16)>,
}

const STATUS_EXPECTED: &str =
    "expected 2xx, 200, 200-299 or a comma-separated list such as 200,204";

impl StatusPattern {
    /// Parses a pattern; codes are 100 to 599.
    pub fn parse(text: &str) -> Result<StatusPattern, String> {
        let code = |s: &str| {
            s.parse::<u16>()
                .ok()
                .filter(|c| s.len() == 3 && (100..=599).contains(c))
                .ok_or_else(|| format!("invalid status {s:?}: {STATUS_EXPECTED}"))
        };
        let mut ranges = Vec::new();
        for item in text.split(',') {
            let item = item.trim();
            if item.is_empty() {
                return Err(format!("empty status in {text:?}: {STATUS_EXPECTED}"));
            }
            let range = if let Some(class) =
                item.strip_suffix("xx").or_else(|| item.strip_suffix("XX"))
            {
                match class.as_bytes() {
                    [d @ b'1'..=b'5'] => {
                        let lo = u16::from(d - b'0') * 100;
                        (lo, lo + 99)
                    }
                    _ => return Err(format!("invalid status class {item:?}: {STATUS_EXPECTED}")),
                }
            } else if let Some((lo, hi)) = item.split_once('-') {
                let (lo, hi) = (code(lo.trim())?, code(hi.trim())?);
                if lo > hi {
                    return Err(format!("empty status range {item:?}: {lo} is above {hi}"));
                }
                (lo, hi)
            } else {
                let c = code(item)?;
                (c, c)
            };
            ranges.push(range);
        }
        Ok(StatusPattern { ranges })
    }

    /// `2xx`, psflip's default.
    pub fn success() -> StatusPattern {
        StatusPattern {
            ranges: vec![(200, 299)],
        }
    }

    /// Whether `code` is healthy.
    pub fn matches(&self, code: u16) -> bool {
        self.ranges
            .iter()
            .any(|&(lo, hi)| (lo..=hi).contains(&code))
    }
}

/// The canonical form (`2xx`, `200`, `200-204`, joined by `,`), which
/// [`StatusPattern::parse`] reads back to the same value.
impl fmt::Display for StatusPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, &(lo, hi)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else if lo % 100 == 0 && hi == lo + 99 {
                write!(f, "{}xx", lo / 100)?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("2xx", &[200, 250, 299], &[199, 300, 404], "2xx")]
    #[case("2XX", &[200], &[300], "2xx")]
    #[case("3xx", &[301, 304], &[200], "3xx")]
    #[case("200", &[200], &[201, 204], "200")]
    #[case("200-204", &[200, 202, 204], &[199, 205], "200-204")]
    #[case("200-299", &[200, 299], &[300], "2xx")]
    #[case("200,204", &[200, 204], &[201], "200,204")]
    #[case(" 2xx , 304 ", &[204, 304], &[301], "2xx,304")]
    #[case("204-204", &[204], &[200], "204")]
    #[case("100-599", &[100, 599], &[600], "100-599")]
    fn status_patterns(
        #[case] text: &str,
        #[case] yes: &[u16],
        #[case] no: &[u16],
        #[case] canonical: &str,
    ) {
        let pattern = StatusPattern::parse(text).expect(text);
        for &code in yes {
            assert!(pattern.matches(code), "{text} should match {code}");
        }
        for &code in no {
            assert!(!pattern.matches(code), "{text} should not match {code}");
        }
        assert_eq!(pattern.to_string(), canonical);
        assert_eq!(StatusPattern::parse(canonical), Ok(pattern));
    }

    #[rstest]
    #[case("", "empty status")]
    #[case("200,", "empty status")]
    #[case(",200", "empty status")]
    #[case("2x", "invalid status \"2x\"")]
    #[case("6xx", "invalid status class \"6xx\"")]
    #[case("xx", "invalid status class")]
    #[case("20xx", "invalid status class")]
    #[case("OK", "invalid status \"OK\"")]
    #[case("99", "invalid status \"99\"")]
    #[case("600", "invalid status \"600\"")]
    #[case("0200", "invalid status \"0200\"")]
    #[case("+200", "invalid status \"+200\"")]
    #[case("299-200", "empty status range \"299-200\"")]
    #[case("200-", "invalid status \"\"")]
    #[case("2xx-3xx", "invalid status class")]
    fn refuses_status_patterns(#[case] text: &str, #[case] why: &str) {
        let e = StatusPattern::parse(text).expect_err(text);
        assert!(e.contains(why), "{text:?}: {e}");
    }

    #[test]
    fn success_is_2xx() {
        assert_eq!(
            StatusPattern::success(),
            StatusPattern::parse("2xx").unwrap()
        );
    }
}
