//! `[healthcheck.http] url`: plain `http://` URLs, parsed by the `url` crate.

use std::fmt;

use super::Endpoint;

/// An `http://` URL: `http://host[:port][/path][?query]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl {
    /// An IPv4 address, an IPv6 address (without brackets) or a host name
    /// (lowercase).
    pub host: String,
    /// 80 unless given.
    pub port: u16,
    /// The request target: starts with `/`, printable ASCII without spaces.
    pub path: String,
}

const URL_EXPECTED: &str = "expected a URL such as http://127.0.0.1:8080/health";

impl HttpUrl {
    /// Parses an `http://` URL; `https://` is refused (plain HTTP only).
    ///
    /// The `url` crate (the WHATWG URL standard, as browsers and curl read
    /// URLs) parses the scheme, host and port: IPv4 in every spelling, IPv6,
    /// host names (lowercased; non-ASCII names are refused, see Cargo.lock's
    /// `idna_adapter` pin). Before it, the text is checked for what the standard
    /// would quietly repair but a healthcheck should not guess at (an empty
    /// host or port, `http:///x`, user information, a fragment, spaces). The
    /// request target is then sent as written, not re-encoded or normalised:
    /// servers route on it byte for byte.
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
        check_as_written(text, authority, target)?;
        let url = url::Url::parse(text).map_err(|e| why_not(e, text, authority))?;
        let host = match url.host() {
            Some(url::Host::Domain(name)) => name.to_owned(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err(format!("missing host in {text:?}: {URL_EXPECTED}")),
        };
        let port = match url.port_or_known_default() {
            Some(0) | None => return Err("invalid port \"0\" (expected 1 to 65535)".to_owned()),
            Some(port) => port,
        };
        let path = match target {
            "" => "/".to_owned(),
            t if t.starts_with('?') => format!("/{t}"),
            t => t.to_owned(),
        };
        Ok(HttpUrl { host, port, path })
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

/// Refuses what the URL standard would accept by repairing it.
fn check_as_written(text: &str, authority: &str, target: &str) -> Result<(), String> {
    if target.contains('#') {
        return Err("a fragment (#…) is never sent to the server: remove it".to_owned());
    }
    if authority.contains('@') {
        return Err("user information (user@host) is not supported".to_owned());
    }
    let port = if let Some(inner) = authority.strip_prefix('[') {
        let (host, after) = inner
            .split_once(']')
            .ok_or_else(|| format!("unbalanced '[' in {text:?}: {URL_EXPECTED}"))?;
        if !after.is_empty() && !after.starts_with(':') {
            return Err(format!(
                "unexpected {after:?} after [{host}]: {URL_EXPECTED}"
            ));
        }
        after.strip_prefix(':')
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
        if host.is_empty() {
            return Err(format!("missing host in {text:?}: {URL_EXPECTED}"));
        }
        port
    };
    if port == Some("") {
        return Err("invalid port \"\" (expected 1 to 65535)".to_owned());
    }
    if !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "the path must be printable ASCII without spaces (percent-encode the rest)".to_owned(),
        );
    }
    Ok(())
}

/// The `url` crate's refusal in the words of the configuration.
fn why_not(e: url::ParseError, text: &str, authority: &str) -> String {
    let (host, port) = match authority.strip_prefix('[') {
        Some(inner) => inner.split_once(']').unwrap_or((inner, "")),
        None => authority.split_once(':').unwrap_or((authority, "")),
    };
    let port = port.strip_prefix(':').unwrap_or(port);
    match e {
        url::ParseError::EmptyHost => format!("missing host in {text:?}: {URL_EXPECTED}"),
        url::ParseError::InvalidPort => {
            format!("invalid port {port:?} (expected 1 to 65535)")
        }
        url::ParseError::InvalidIpv6Address => format!("{host:?} is not an IPv6 address"),
        url::ParseError::InvalidIpv4Address
        | url::ParseError::InvalidDomainCharacter
        | url::ParseError::IdnaError => {
            format!("{host:?} is not a host name or an IP address")
        }
        e => format!("invalid URL {text:?}: {e}"),
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
    #[case("HTTP://Host_1", url("host_1", 80, "/"), "http://host_1/")]
    #[case(
        "http://127.1:8080/",
        url("127.0.0.1", 8080, "/"),
        "http://127.0.0.1:8080/"
    )]
    #[case("http://h/a/../b", url("h", 80, "/a/../b"), "http://h/a/../b")]
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
    #[case("http://bücher/", "not a host name")]
    #[case("http://1.2.3.4.5/", "not a host name")]
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
