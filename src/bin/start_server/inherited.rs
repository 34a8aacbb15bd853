//! Sockets handed to start_server by systemd socket activation (a socket unit,
//! `systemd-socket-activate`): `LISTEN_FDS` descriptors from 3 on, when `LISTEN_PID`
//! is start_server's own pid. They are taken instead of bound, so that start_server
//! itself can be restarted (a new build, a changed command line) while the manager
//! keeps the ports open: connections wait in the backlog, none is refused.
//!
//! The variables are read by the library's parser, the one workers use.

use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::io::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use server_starter::listeners::Environment;
use server_starter::ErrorKind;

use crate::port_spec::{Host, PortSpec, Protocol};
use crate::sys::{self, SockAddr};

/// systemd's socket-activation variables.
pub const VARIABLES: [&str; 3] = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];

/// One inherited socket.
pub struct Inherited {
    pub fd: OwnedFd,
    pub address: Address,
    /// Its name in `LISTEN_FDNAMES`, when the manager gave names.
    pub fdname: Option<String>,
}

/// The kinds of socket start_server adopts: those `--port` and `--path` make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    Tcp(SocketAddr),
    Udp(SocketAddr),
    /// A listening unix stream socket bound to this file.
    Unix(PathBuf),
}

/// Takes the sockets systemd passed to this process, in `LISTEN_FDS` order, and
/// removes the variables from the environment: they were start_server's, and the
/// workers get their own only with `--listen-fds`. Empty when the variables are
/// unset or name another process.
pub fn take() -> Result<Vec<Inherited>, String> {
    let env = Environment {
        server_starter_port: None,
        ..Environment::from_process()
    };
    let listeners = match env.listeners() {
        Ok(listeners) => listeners,
        Err(e) if e.kind() == ErrorKind::NotSet => return Ok(Vec::new()),
        Err(e) => return Err(format!("systemd socket activation: {e}")),
    };
    for name in VARIABLES {
        std::env::remove_var(name);
    }
    let named = env.listen_fdnames.is_some();
    listeners
        .iter()
        .map(|l| {
            let n = l.fd();
            let fd = sys::take_inherited_fd(n)
                .ok_or_else(|| format!("inherited descriptor {n} (LISTEN_FDS) is not open"))?;
            // Like a socket start_server binds: inheritable once placed, so that
            // nothing spawned before (the --log-file command) holds it.
            sys::set_cloexec(n, true).map_err(|e| {
                format!("fcntl(F_SETFD) failed for inherited descriptor {n} (LISTEN_FDS): {e}")
            })?;
            let address = address(&fd)?;
            // As for --path: the workers must be able to read the name back.
            crate::port_names::check(&address.name()).map_err(|why| {
                format!("inherited descriptor {n} (LISTEN_FDS) is the {address}: {why}")
            })?;
            Ok(Inherited {
                address,
                fd,
                fdname: named.then(|| l.name().to_string_lossy().into_owned()),
            })
        })
        .collect()
}

/// What an inherited socket is, or why start_server cannot take it.
fn address(fd: &OwnedFd) -> Result<Address, String> {
    let n = fd.as_raw_fd();
    let fail = |what: String| format!("inherited descriptor {n} (LISTEN_FDS) {what}");
    let sock_opt = |name| {
        sys::getsockopt_int(fd, libc::SOL_SOCKET, name)
            .map_err(|e| fail(format!("is not a socket: {e}")))
    };
    let ty = sock_opt(libc::SO_TYPE)?;
    let local = SockAddr::local(fd).map_err(|e| fail(format!("getsockname(2) failed: {e}")))?;
    let listening = ty == libc::SOCK_STREAM && sock_opt(libc::SO_ACCEPTCONN)? != 0;
    if ty == libc::SOCK_STREAM && !listening {
        return Err(fail(
            "is a connection, not a listening socket (a socket unit with Accept=yes?)".into(),
        ));
    }
    if let Some(addr) = local.to_std() {
        return match ty {
            libc::SOCK_STREAM => Ok(Address::Tcp(addr)),
            libc::SOCK_DGRAM => Ok(Address::Udp(addr)),
            _ => Err(fail(format!(
                "is a socket of type {ty} on {addr}: --port makes TCP and UDP sockets only"
            ))),
        };
    }
    let Some(mut path) = local.unix_path_bytes() else {
        return Err(fail(format!(
            "is a socket of family {}: start_server takes TCP, UDP and unix stream sockets",
            local.family()
        )));
    };
    if ty != libc::SOCK_STREAM {
        return Err(fail(format!(
            "is a unix socket of type {ty}: --path makes stream sockets only"
        )));
    }
    match path.first() {
        None => Err(fail("is an unnamed unix socket".into())),
        Some(0) => Err(fail(format!(
            "is the abstract unix socket @{}: --path takes files only",
            String::from_utf8_lossy(&path[1..])
        ))),
        Some(_) => {
            let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
            path.truncate(end);
            Ok(Address::Unix(PathBuf::from(OsString::from_vec(path))))
        }
    }
}

/// For messages: `TCP socket [::]:8080`, `unix socket /run/app.sock`.
impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(addr) => write!(f, "TCP socket {addr}"),
            Address::Udp(addr) => write!(f, "UDP socket {addr}"),
            Address::Unix(path) => write!(f, "unix socket {}", path.display()),
        }
    }
}

impl Address {
    /// The name `--port` or `--path` gives such a socket: the port alone for a
    /// wildcard address (what a bare `--port=P` binds), else `host:port`,
    /// `[v6]:port`, or the path.
    pub fn name(&self) -> String {
        match self {
            Address::Tcp(addr) | Address::Udp(addr) if addr.ip().is_unspecified() => {
                addr.port().to_string()
            }
            Address::Tcp(addr) | Address::Udp(addr) => addr.to_string(),
            Address::Unix(path) => path.display().to_string(),
        }
    }

    /// The option that adopts it.
    pub fn option(&self) -> String {
        match self {
            Address::Tcp(_) => format!("--port={}", self.name()),
            Address::Udp(addr) if addr.ip().is_unspecified() => format!("--port=u{}", addr.port()),
            Address::Udp(addr) => {
                let host = addr.to_string();
                let host = host.rsplit_once(':').map_or("", |(host, _)| host);
                format!("--port={host}:u{}", addr.port())
            }
            Address::Unix(path) => format!("--path={}", path.display()),
        }
    }

    /// Whether `--port=spec`, resolved to `resolved`, names this socket: the same
    /// protocol and address, a bare port matching either wildcard address (systemd
    /// binds a bare `ListenStream=P` to `[::]:P`, for IPv4 and IPv6).
    pub fn is_port(&self, spec: &PortSpec, resolved: SocketAddr) -> bool {
        let addr = match (self, spec.protocol) {
            (Address::Tcp(addr), Protocol::Tcp) | (Address::Udp(addr), Protocol::Udp) => addr,
            _ => return false,
        };
        if spec.host == Host::Any {
            addr.ip().is_unspecified() && addr.port() == spec.port
        } else {
            addr.ip() == resolved.ip() && addr.port() == resolved.port()
        }
    }

    /// Whether `--path=path` names this socket: the same file name, once both are
    /// made absolute (a relative one is taken from start_server's directory).
    pub fn is_path(&self, path: &Path) -> bool {
        let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        matches!(self, Address::Unix(own) if absolute(own) == absolute(path))
    }

    /// Whether binding `spec` fails because of this socket: the same protocol and
    /// port on an overlapping address (a wildcard covers every address).
    pub fn holds_port_of(&self, spec: &PortSpec, resolved: SocketAddr) -> bool {
        let addr = match (self, spec.protocol) {
            (Address::Tcp(addr), Protocol::Tcp) | (Address::Udp(addr), Protocol::Udp) => addr,
            _ => return false,
        };
        addr.port() == resolved.port()
            && (addr.ip().is_unspecified()
                || resolved.ip().is_unspecified()
                || addr.ip() == resolved.ip())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port_spec::parse;

    fn tcp(addr: &str) -> Address {
        Address::Tcp(addr.parse().unwrap())
    }

    fn is_port(a: &Address, spec: &str) -> bool {
        let spec = parse(spec).unwrap();
        let resolved = spec.resolve().unwrap();
        a.is_port(&spec, resolved)
    }

    #[test]
    fn named_as_the_options_name_them() {
        assert_eq!(tcp("0.0.0.0:8080").name(), "8080");
        assert_eq!(tcp("[::]:8080").name(), "8080");
        assert_eq!(tcp("127.0.0.1:8080").name(), "127.0.0.1:8080");
        assert_eq!(tcp("[::1]:8443").name(), "[::1]:8443");
        assert_eq!(Address::Unix("/run/a.sock".into()).name(), "/run/a.sock");
        assert_eq!(tcp("[::1]:8443").option(), "--port=[::1]:8443");
        let udp = |a: &str| Address::Udp(a.parse().unwrap());
        assert_eq!(udp("0.0.0.0:53").option(), "--port=u53");
        assert_eq!(udp("127.0.0.1:53").option(), "--port=127.0.0.1:u53");
        assert_eq!(udp("[::1]:53").option(), "--port=[::1]:u53");
        assert_eq!(Address::Unix("/a".into()).option(), "--path=/a");
        // Each suggested option adopts the socket it was made from.
        for a in [tcp("[::]:80"), udp("127.0.0.1:53"), udp("[::1]:53")] {
            let option = a.option();
            assert!(
                is_port(&a, option.strip_prefix("--port=").unwrap()),
                "{a:?}"
            );
        }
    }

    #[test]
    fn matched_by_protocol_and_address() {
        assert!(is_port(&tcp("0.0.0.0:8080"), "8080"));
        assert!(is_port(&tcp("[::]:8080"), "8080"));
        assert!(is_port(&tcp("127.0.0.1:8080"), "127.0.0.1:8080"));
        assert!(is_port(&tcp("[::1]:8080"), "[::1]:8080"));
        assert!(!is_port(&tcp("127.0.0.1:8080"), "8080"));
        assert!(!is_port(&tcp("0.0.0.0:8080"), "127.0.0.1:8080"));
        assert!(!is_port(&tcp("127.0.0.1:8080"), "127.0.0.1:8081"));
        assert!(!is_port(&tcp("127.0.0.1:8080"), "127.0.0.1:u8080"));
        assert!(is_port(&Address::Udp("0.0.0.0:53".parse().unwrap()), "u53"));
        let unix = Address::Unix("/run/a.sock".into());
        assert!(unix.is_path(Path::new("/run/a.sock")));
        assert!(unix.is_path(Path::new("/run/./a.sock")));
        assert!(!unix.is_path(Path::new("/run/b.sock")));
        assert!(!is_port(&unix, "8080"));
    }
}
