//! `[[proxy]]` addresses: `unix:///path`, `tcp://host:port`, `host:port`, `:port`,
//! `[::1]:port`. Pure parsing and printing; binding and resolving live in
//! `effects::listen` and `proxy`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

/// The longest Unix socket path the kernel takes (`sun_path` is 108 bytes with its
/// NUL).
pub const UNIX_PATH_MAX: usize = 107;

/// A stream socket address as written in the configuration.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Endpoint {
    /// TCP. `host` is empty (every local address for `listen`, the loopback for
    /// `forward`), an IP address (IPv6 without brackets) or a host name.
    Tcp { host: String, port: u16 },
    /// A Unix stream socket at this path (relative to psflip's working directory
    /// when relative).
    Unix(PathBuf),
}

const EXPECTED: &str = "expected unix:///path, tcp://host:port, host:port, :port or [ipv6]:port";

impl Endpoint {
    /// Parses an address; `listen` allows an empty host (every local address) and
    /// port 0 (a port the kernel picks, kept across upgrades).
    pub fn parse(text: &str, listen: bool) -> Result<Endpoint, String> {
        if let Some(path) = text.strip_prefix("unix://") {
            return unix(path);
        }
        let hostport = match text.split_once("://") {
            Some(("tcp", rest)) => rest,
            Some((scheme, _)) => return Err(format!("unknown scheme {scheme:?}: {EXPECTED}")),
            None => text,
        };
        let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
            let (host, rest) = rest
                .split_once(']')
                .ok_or_else(|| format!("unbalanced '[' in {text:?}: {EXPECTED}"))?;
            let port = rest
                .strip_prefix(':')
                .ok_or_else(|| format!("missing :port after [{host}]: {EXPECTED}"))?;
            host.parse::<Ipv6Addr>()
                .map_err(|_| format!("{host:?} is not an IPv6 address"))?;
            (host, port)
        } else {
            let (host, port) = hostport
                .rsplit_once(':')
                .ok_or_else(|| format!("missing :port in {text:?}: {EXPECTED}"))?;
            if host.contains(':') {
                return Err(format!(
                    "an IPv6 address needs brackets, as in [::1]:{port}: {EXPECTED}"
                ));
            }
            if !host.is_empty()
                && host.parse::<Ipv4Addr>().is_err()
                && !host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
            {
                return Err(format!("{host:?} is not a host name or an IP address"));
            }
            (host, port)
        };
        let port: u16 = port
            .parse()
            .map_err(|_| format!("invalid port {port:?} (expected 0 to 65535)"))?;
        if port == 0 && !listen {
            return Err("port 0 cannot be connected to".to_owned());
        }
        Ok(Endpoint::Tcp {
            host: host.to_owned(),
            port,
        })
    }

    /// The socket addresses to bind (`listen`: the first is used) or to connect to
    /// (`forward`: tried in order). Host names are resolved now, once per
    /// generation, so the proxy never blocks on DNS.
    pub fn resolve(&self, listen: bool) -> Result<Vec<SocketAddr>, String> {
        let Endpoint::Tcp { host, port } = self else {
            return Ok(Vec::new());
        };
        let port = *port;
        if host.is_empty() {
            return Ok(if listen {
                // Dual-stack when IPv6 is there; the binder falls back to IPv4.
                vec![
                    SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
                    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
                ]
            } else {
                vec![
                    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
                    SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port),
                ]
            });
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let mut addrs: Vec<SocketAddr> = (host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {host:?}: {e}"))?
            .collect();
        // IPv4 first, as Go's listeners do for a name; order kept otherwise.
        addrs.sort_by_key(|a| !a.is_ipv4());
        addrs.dedup();
        if addrs.is_empty() {
            return Err(format!("{host:?} resolves to no address"));
        }
        Ok(addrs)
    }

    /// The Unix socket path made absolute against `cwd`.
    pub fn absolute(&self, cwd: &Path) -> Endpoint {
        match self {
            Endpoint::Unix(p) if p.is_relative() => Endpoint::Unix(cwd.join(p)),
            other => other.clone(),
        }
    }
}

fn unix(path: &str) -> Result<Endpoint, String> {
    if path.is_empty() {
        return Err("empty Unix socket path (expected unix:///path/to/socket)".to_owned());
    }
    if path.contains(['\0', '\n']) {
        return Err("a Unix socket path must not contain a NUL byte or a newline".to_owned());
    }
    if path.starts_with('@') {
        return Err("abstract Unix sockets are not supported".to_owned());
    }
    if path.len() > UNIX_PATH_MAX {
        return Err(format!(
            "Unix socket path too long ({} bytes, the limit is {UNIX_PATH_MAX})",
            path.len()
        ));
    }
    Ok(Endpoint::Unix(PathBuf::from(path)))
}

/// Prints the canonical form, which [`Endpoint::parse`] reads back to the same value.
impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp { host, port } if host.contains(':') => {
                write!(f, "tcp://[{host}]:{port}")
            }
            Endpoint::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            Endpoint::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn tcp(host: &str, port: u16) -> Endpoint {
        Endpoint::Tcp {
            host: host.to_owned(),
            port,
        }
    }

    #[rstest]
    #[case(":8000", tcp("", 8000))]
    #[case("tcp://:8000", tcp("", 8000))]
    #[case("127.0.0.1:8000", tcp("127.0.0.1", 8000))]
    #[case("tcp://127.0.0.1:8000", tcp("127.0.0.1", 8000))]
    #[case("[::1]:8000", tcp("::1", 8000))]
    #[case("tcp://[::]:80", tcp("::", 80))]
    #[case("localhost:8080", tcp("localhost", 8080))]
    #[case("127.0.0.1:0", tcp("127.0.0.1", 0))]
    #[case("unix:///tmp/app.sock", Endpoint::Unix(PathBuf::from("/tmp/app.sock")))]
    #[case("unix://run/app.sock", Endpoint::Unix(PathBuf::from("run/app.sock")))]
    fn parses(#[case] text: &str, #[case] expected: Endpoint) {
        assert_eq!(Endpoint::parse(text, true), Ok(expected.clone()));
        let printed = expected.to_string();
        assert_eq!(Endpoint::parse(&printed, true), Ok(expected));
    }

    #[rstest]
    #[case("8000", true, "missing :port")]
    #[case("http://x:80", true, "unknown scheme \"http\"")]
    #[case("::1:80", true, "needs brackets")]
    #[case("[::1:80", true, "unbalanced")]
    #[case("[x]:80", true, "not an IPv6 address")]
    #[case("a b:80", true, "not a host name")]
    #[case(":65536", true, "invalid port")]
    #[case(":http", true, "invalid port")]
    #[case("127.0.0.1:0", false, "port 0")]
    #[case("unix://", true, "empty Unix socket path")]
    #[case("unix://@abstract", true, "abstract")]
    #[case("unix://a\nb", true, "newline")]
    fn refuses(#[case] text: &str, #[case] listen: bool, #[case] why: &str) {
        let e = Endpoint::parse(text, listen).unwrap_err();
        assert!(e.contains(why), "{e:?} should contain {why:?}");
    }

    #[test]
    fn refuses_long_unix_paths() {
        let long = format!("unix:///{}", "a".repeat(UNIX_PATH_MAX));
        assert!(
            Endpoint::parse(&long, true)
                .unwrap_err()
                .contains("too long")
        );
    }

    #[test]
    fn resolves_without_dns_for_literals_and_empty_hosts() {
        let v4: SocketAddr = "127.0.0.1:81".parse().unwrap();
        assert_eq!(tcp("127.0.0.1", 81).resolve(false), Ok(vec![v4]));
        let any = tcp("", 82).resolve(true).unwrap();
        assert_eq!(any[0], "[::]:82".parse::<SocketAddr>().unwrap());
        let local = tcp("", 83).resolve(false).unwrap();
        assert_eq!(local[0], "127.0.0.1:83".parse::<SocketAddr>().unwrap());
    }

    #[test]
    fn absolute_only_touches_relative_unix_paths() {
        let cwd = Path::new("/srv");
        assert_eq!(
            Endpoint::Unix(PathBuf::from("a.sock")).absolute(cwd),
            Endpoint::Unix(PathBuf::from("/srv/a.sock"))
        );
        assert_eq!(tcp("", 1).absolute(cwd), tcp("", 1));
    }
}
