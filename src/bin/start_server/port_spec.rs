//! Parsing a `--port` value: `port`, `host:port`, `[ipv6]:port`, each with an optional
//! `u` before the port (UDP) and `=fd` after it (pin the socket at that descriptor).
//!
//! The name each form gets in `SERVER_STARTER_PORT` is the one Server::Starter gives it:
//! the port alone, `host:port` with the host as typed, or `[ipv6]:port`; the `u` and
//! `=fd` parts never appear in it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::os::unix::io::RawFd;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

/// Where to listen, before any name is resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    /// A bare port: the original binds IPv4's 0.0.0.0 only.
    Any,
    /// An IPv4 address or a host name, resolved to IPv4 as the original does.
    V4(String),
    V6(Ipv6Addr),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSpec {
    pub host: Host,
    pub port: u16,
    pub protocol: Protocol,
    pub pinned_fd: Option<RawFd>,
    /// The entry's name in SERVER_STARTER_PORT.
    pub name: String,
}

pub fn parse(spec: &str) -> Result<PortSpec, String> {
    let invalid = |why: &str| {
        format!("invalid port value: {spec:?}: {why} (expected port, host:port or [ipv6]:port, optionally u before the port and =fd after it)")
    };
    let text = spec.trim();
    let (hostport, pinned_fd) = match text.rsplit_once('=') {
        Some((left, fd)) => {
            let fd = fd.trim();
            let fd = parse_decimal(fd)
                .and_then(|n| RawFd::try_from(n).ok())
                .ok_or_else(|| invalid(&format!("{fd:?} is not a descriptor number")))?;
            (left.trim_end(), Some(fd))
        }
        None => (text, None),
    };

    // A bare port, or a host, a colon and a port.
    let (host_text, port_text) = match hostport.rsplit_once(':') {
        Some((host, port)) => (Some(host.trim()), port.trim()),
        None => (None, hostport),
    };
    let (protocol, digits) = match port_text.strip_prefix('u') {
        Some(rest) => (Protocol::Udp, rest),
        None => (Protocol::Tcp, port_text),
    };
    let port = parse_decimal(digits)
        .and_then(|n| u16::try_from(n).ok())
        .ok_or_else(|| invalid(&format!("{port_text:?} is not a port number")))?;

    // Named with the digits as typed (`08080` stays `08080`), as the original names it.
    let (host, name) = match host_text {
        None => (Host::Any, digits.to_string()),
        Some(host) => {
            let bracketed = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
            let host = bracketed.unwrap_or(host).trim();
            if host.is_empty() {
                return Err(invalid("empty host"));
            }
            if host.contains(':') {
                let ip = host
                    .parse::<Ipv6Addr>()
                    .map_err(|_| invalid(&format!("{host:?} is not an IPv6 address")))?;
                (Host::V6(ip), format!("[{host}]:{digits}"))
            } else if host.contains(['[', ']']) {
                return Err(invalid("unbalanced brackets"));
            } else {
                // The original takes `[127.0.0.1]:80` and `[localhost]:80` too, and
                // names them without the brackets.
                (Host::V4(host.to_string()), format!("{host}:{digits}"))
            }
        }
    };
    Ok(PortSpec {
        host,
        port,
        protocol,
        pinned_fd,
        name,
    })
}

/// Only ASCII digits: `str::parse` would also take a sign.
pub fn parse_decimal(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 10 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

impl PortSpec {
    /// The address to bind, resolving a host name to its first IPv4 address.
    pub fn resolve(&self) -> Result<SocketAddr, String> {
        match &self.host {
            Host::Any => Ok(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                self.port,
            )),
            Host::V6(ip) => Ok(SocketAddr::new(IpAddr::V6(*ip), self.port)),
            Host::V4(host) => {
                if let Ok(ip) = host.parse::<Ipv4Addr>() {
                    return Ok(SocketAddr::new(IpAddr::V4(ip), self.port));
                }
                let addrs = (host.as_str(), self.port)
                    .to_socket_addrs()
                    .map_err(|e| format!("failed to resolve host {host}: {e}"))?;
                addrs
                    .into_iter()
                    .find(SocketAddr::is_ipv4)
                    .ok_or_else(|| format!("failed to resolve host {host}: it has no IPv4 address"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(spec: &str) -> PortSpec {
        parse(spec).unwrap_or_else(|e| panic!("{spec}: {e}"))
    }

    #[test]
    fn names_are_the_originals() {
        assert_eq!(ok("8080").name, "8080");
        assert_eq!(ok(" 8080 ").name, "8080");
        assert_eq!(ok("u53").name, "53");
        assert_eq!(ok("u53").protocol, Protocol::Udp);
        assert_eq!(ok("127.0.0.1:8080").name, "127.0.0.1:8080");
        assert_eq!(ok("localhost:u8080=5").name, "localhost:8080");
        assert_eq!(ok("[::1]:8443").name, "[::1]:8443");
        assert_eq!(ok("::1:8443").name, "[::1]:8443");
        assert_eq!(ok("[ ::1 ]:8443").name, "[::1]:8443");
        assert_eq!(ok("[127.0.0.1]:80").name, "127.0.0.1:80");
        assert_eq!(ok("[localhost]:u80").name, "localhost:80");
        assert_eq!(ok("08080").name, "08080");
        assert_eq!(ok("08080").port, 8080);
        assert_eq!(ok("[::1]:0443=5").name, "[::1]:0443");
    }

    #[test]
    fn pinned_descriptors() {
        assert_eq!(ok("8080=0").pinned_fd, Some(0));
        assert_eq!(ok("8080 = 7").pinned_fd, Some(7));
        assert_eq!(ok("[::1]:u99=12").pinned_fd, Some(12));
        assert_eq!(ok("[::1]:u99=12").protocol, Protocol::Udp);
        assert_eq!(ok("8080").pinned_fd, None);
    }

    #[test]
    fn hosts() {
        assert_eq!(ok("8080").host, Host::Any);
        assert_eq!(ok("10.1.2.3:1").host, Host::V4("10.1.2.3".into()));
        assert_eq!(ok("[::]:1").host, Host::V6(Ipv6Addr::UNSPECIFIED));
    }

    #[test]
    fn rejects_what_is_not_a_port() {
        for bad in [
            "",
            "   ",
            "http",
            "-1",
            "+80",
            "65536",
            "u",
            "uu80",
            "80u",
            "8080=",
            "8080=x",
            "8080=-1",
            ":80",
            "[]:80",
            "[::1]",
            "[::1]:",
            "[zz::1]:80",
            "[1.2.3.4:80",
            "1.2.3.4]:80",
            "host:",
            "1:2:3",
            "80=1=2",
            "8080=99999999999",
        ] {
            let err = parse(bad).expect_err(bad);
            assert!(err.starts_with("invalid port value"), "{bad}: {err}");
        }
    }

    #[test]
    fn resolves_names_to_ipv4() {
        assert_eq!(
            ok("localhost:80").resolve().unwrap(),
            "127.0.0.1:80".parse().unwrap()
        );
        assert_eq!(ok("80").resolve().unwrap(), "0.0.0.0:80".parse().unwrap());
        assert!(ok("no-such-host.invalid:80").resolve().is_err());
    }
}
