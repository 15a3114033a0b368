//! `[healthcheck.http] url`: plain `http://` URLs.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::Endpoint;

/// An `http://` URL: `http://host[:port][/path][?query]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl {
    /// An IPv4 address, an IPv6 address (without brackets) or a host name.
    pub host: String,
    /// 80 unless given.
    pub port: u16,
    /// The request target: starts with `/`, printable ASCII without spaces.
    pub path: String,
}

const URL_EXPECTED: &str = "expected a URL such as http://127.0.0.1:8080/health";

impl HttpUrl {
    /// Parses an `http://` URL; `https://` is refused (plain HTTP only).
    pub fn parse(text: &str) -> Result<HttpUrl, String> {
        let Some((scheme, rest)) = text.split_once("://") else {
            return Err(format!("missing http:// in {text:?}: {URL_EXPECTED}"));
        };
        if scheme.eq_ignore_ascii_case("https") {
            return Err(
                "https is not supported: the http healthcheck speaks plain HTTP only \
                 (point it at a plain-HTTP port, or use [healthcheck.command] with curl)"
                    .to_owned(),
            );
        }
        if !scheme.eq_ignore_ascii_case("http") {
            return Err(format!("unknown scheme {scheme:?}: {URL_EXPECTED}"));
        }
        let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, target) = rest.split_at(split);
        if target.contains('#') {
            return Err("a fragment (#…) is never sent to the server: remove it".to_owned());
        }
        if authority.contains('@') {
            return Err("user information (user@host) is not supported".to_owned());
        }
        let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
            let (host, after) = inner
                .split_once(']')
                .ok_or_else(|| format!("unbalanced '[' in {text:?}: {URL_EXPECTED}"))?;
            host.parse::<Ipv6Addr>()
                .map_err(|_| format!("{host:?} is not an IPv6 address"))?;
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':').ok_or_else(|| {
                    format!("unexpected {after:?} after [{host}]: {URL_EXPECTED}")
                })?),
            };
            (host, port)
        } else {
            let (host, port) = match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            };
            if port.is_some_and(|p| p.contains(':')) {
                return Err(format!(
                    "an IPv6 address needs brackets, as in http://[::1]:8080/: {URL_EXPECTED}"
                ));
            }
            if host.parse::<Ipv4Addr>().is_err()
                && !host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
            {
                return Err(format!("{host:?} is not a host name or an IP address"));
            }
            (host, port)
        };
        if host.is_empty() {
            return Err(format!("missing host in {text:?}: {URL_EXPECTED}"));
        }
        let port = match port {
            None => 80,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("invalid port {p:?} (expected 1 to 65535)"))?,
        };
        let path = match target {
            "" => "/".to_owned(),
            t if t.starts_with('?') => format!("/{t}"),
            t => t.to_owned(),
        };
        if !path.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(
                "the path must be printable ASCII without spaces (percent-encode the rest)"
                    .to_owned(),
            );
        }
        Ok(HttpUrl {
            host: host.to_owned(),
            port,
            path,
        })
    }

    /// The address to connect to.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::Tcp {
            host: self.host.clone(),
            port: self.port,
        }
    }

    /// `host[:port]`, as the `Host` header and the URL write it.
    fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 80 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// The whole request.
    pub fn request(&self) -> String {
        format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: psflip-healthcheck\r\nAccept: */*\r\nConnection: close\r\n\r\n",
            self.path,
            self.authority()
        )
    }
}

/// The canonical form, which [`HttpUrl::parse`] reads back to the same value.
impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority(), self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn url(host: &str, port: u16, path: &str) -> HttpUrl {
        HttpUrl {
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        }
    }

    #[rstest]
    #[case(
        "http://127.0.0.1:8080/health",
        url("127.0.0.1", 8080, "/health"),
        "http://127.0.0.1:8080/health"
    )]
    #[case(
        "http://127.0.0.1:8080",
        url("127.0.0.1", 8080, "/"),
        "http://127.0.0.1:8080/"
    )]
    #[case("http://localhost/", url("localhost", 80, "/"), "http://localhost/")]
    #[case(
        "http://app.internal:80/x",
        url("app.internal", 80, "/x"),
        "http://app.internal/x"
    )]
    #[case("HTTP://Host_1", url("Host_1", 80, "/"), "http://Host_1/")]
    #[case(
        "http://[::1]:9000/a/b?c=d&e",
        url("::1", 9000, "/a/b?c=d&e"),
        "http://[::1]:9000/a/b?c=d&e"
    )]
    #[case("http://[::1]", url("::1", 80, "/"), "http://[::1]/")]
    #[case("http://h?q=1", url("h", 80, "/?q=1"), "http://h/?q=1")]
    #[case("http://h/%20x", url("h", 80, "/%20x"), "http://h/%20x")]
    fn parses_urls(#[case] text: &str, #[case] expected: HttpUrl, #[case] canonical: &str) {
        assert_eq!(HttpUrl::parse(text), Ok(expected.clone()));
        assert_eq!(expected.to_string(), canonical);
        assert_eq!(HttpUrl::parse(canonical), Ok(expected));
    }

    #[rstest]
    #[case("https://127.0.0.1/", "https is not supported")]
    #[case("HTTPS://x/", "https is not supported")]
    #[case("127.0.0.1:8080/health", "missing http://")]
    #[case("ftp://x/", "unknown scheme \"ftp\"")]
    #[case("http://", "missing host")]
    #[case("http:///health", "missing host")]
    #[case("http://:8080/", "missing host")]
    #[case("http://x:/", "invalid port \"\"")]
    #[case("http://x:0/", "invalid port \"0\"")]
    #[case("http://x:65536/", "invalid port")]
    #[case("http://x:http/", "invalid port")]
    #[case("http://::1:80/", "needs brackets")]
    #[case("http://[::1/", "unbalanced")]
    #[case("http://[x]:80/", "not an IPv6 address")]
    #[case("http://[::1]x/", "unexpected \"x\"")]
    #[case("http://a b/", "not a host name")]
    #[case("http://u:p@x/", "user information")]
    #[case("http://x/#top", "fragment")]
    #[case("http://x/a b", "printable ASCII")]
    #[case("http://x/é", "printable ASCII")]
    #[case("http://x/\r\nX: y", "printable ASCII")]
    fn refuses_urls(#[case] text: &str, #[case] why: &str) {
        let e = HttpUrl::parse(text).expect_err(text);
        assert!(e.contains(why), "{text:?}: {e}");
    }

    #[test]
    fn the_host_header_carries_the_port_unless_80() {
        assert!(
            url("::1", 8080, "/")
                .request()
                .contains("\r\nHost: [::1]:8080\r\n")
        );
        assert!(
            url("example", 80, "/")
                .request()
                .contains("\r\nHost: example\r\n")
        );
    }
}
