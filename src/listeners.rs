//! The Rust API (with the `std` feature, the default): listeners as std's own
//! socket types, on top of the query core it shares with the C API (`src/query.rs`).
//!
//! ```no_run
//! use server_starter::listeners;
//!
//! fn main() -> std::io::Result<()> {
//!     for listener in listeners::listeners()? {
//!         if listener.socket_type() == listeners::SocketType::Stream
//!             && listener.family() != listeners::Family::Unix
//!         {
//!             let tcp = listener.into_tcp_listener()?;
//!             // serve on `tcp` ...
//!             # drop(tcp);
//!         }
//!     }
//!     Ok(())
//! }
//! ```

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::net::{TcpListener, UdpSocket};
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::net::{UnixDatagram, UnixListener};

pub use crate::parse::ErrorKind;
use crate::parse::{self, ParseError, Source, Vars};
use crate::query::{check, checked, Checked, Failure};
use crate::sys;

/// The address family of a listener, as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// `AF_INET`
    Inet,
    /// `AF_INET6`
    Inet6,
    /// `AF_UNIX`
    Unix,
    /// Any other `AF_*` value.
    Other(i32),
}

impl Family {
    fn from_raw(family: i32) -> Self {
        match family {
            libc::AF_INET => Family::Inet,
            libc::AF_INET6 => Family::Inet6,
            libc::AF_UNIX => Family::Unix,
            other => Family::Other(other),
        }
    }
}

/// The socket type of a listener, as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SocketType {
    /// `SOCK_STREAM`
    Stream,
    /// `SOCK_DGRAM`
    Datagram,
    /// Any other `SOCK_*` value (e.g. `SOCK_SEQPACKET`).
    Other(i32),
}

impl SocketType {
    fn from_raw(socktype: i32) -> Self {
        match socktype {
            libc::SOCK_STREAM => SocketType::Stream,
            libc::SOCK_DGRAM => SocketType::Datagram,
            other => SocketType::Other(other),
        }
    }
}

fn describe(family: Family, socktype: SocketType) -> String {
    match (family, socktype) {
        (Family::Inet | Family::Inet6, SocketType::Stream) => "a TCP socket".into(),
        (Family::Inet | Family::Inet6, SocketType::Datagram) => "a UDP socket".into(),
        (Family::Unix, SocketType::Stream) => "a unix stream socket".into(),
        (Family::Unix, SocketType::Datagram) => "a unix datagram socket".into(),
        (family, socktype) => format!("a socket of family {family:?} and type {socktype:?}"),
    }
}

/// An error of the Rust API: what went wrong and where (which variable or entry,
/// which name, which descriptor).
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    context: String,
    source: Option<io::Error>,
}

impl Error {
    /// The kind of error, which maps onto the C API's error codes.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    fn parse(e: &ParseError) -> Self {
        let context = if e.variable == "SERVER_STARTER_PORT" || e.variable == "LISTEN_FDNAMES" {
            format!(
                "{} entry {} (at byte {}): {}",
                e.variable, e.entry, e.offset, e.reason
            )
        } else {
            format!("{}: {}", e.variable, e.reason)
        };
        Error {
            kind: e.kind,
            context,
            source: None,
        }
    }

    fn listener(
        kind: ErrorKind,
        name: &[u8],
        fd: RawFd,
        what: &str,
        source: Option<io::Error>,
    ) -> Self {
        let context = format!(
            "listener \"{}\" (fd {fd}){what}",
            String::from_utf8_lossy(name)
        );
        Error {
            kind,
            context,
            source,
        }
    }

    fn from_failure(failure: Failure<'_>) -> Self {
        match failure {
            Failure::Parse(e) => Error::parse(&e),
            Failure::Socket { entry, error } => Error::listener(
                ErrorKind::BadFd,
                entry.name,
                entry.fd,
                "",
                Some(error.into()),
            ),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.context, self.kind.message())?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        let kind = match e.kind {
            ErrorKind::NotSet | ErrorKind::NotFound => io::ErrorKind::NotFound,
            ErrorKind::Malformed
            | ErrorKind::NameTooLong
            | ErrorKind::Null
            | ErrorKind::WrongType => io::ErrorKind::InvalidInput,
            ErrorKind::AlreadyTaken => io::ErrorKind::AlreadyExists,
            ErrorKind::BadFd | ErrorKind::Internal => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

/// One inherited listening socket, as the kernel describes it.
///
/// A `Listener` does not own its descriptor; the `into_*` conversions take
/// ownership, once per descriptor in the whole process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    name: OsString,
    fd: RawFd,
    family: Family,
    socket_type: SocketType,
    port: u16,
}

impl Listener {
    fn from_checked(c: &Checked<'_>) -> Self {
        Listener {
            name: OsStr::from_bytes(c.entry.name).to_owned(),
            fd: c.entry.fd,
            family: Family::from_raw(c.info.family),
            socket_type: SocketType::from_raw(c.info.socktype),
            port: c.info.port,
        }
    }

    /// The name as given in `SERVER_STARTER_PORT` (`80`, `127.0.0.1:8080`,
    /// `[::1]:8443`, `/run/app.sock`) or in `LISTEN_FDNAMES` (`unknown` if none).
    pub fn name(&self) -> &OsStr {
        &self.name
    }

    /// The descriptor number.
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// The address family (from `getsockname`).
    pub fn family(&self) -> Family {
        self.family
    }

    /// The socket type (from `getsockopt(SO_TYPE)`).
    pub fn socket_type(&self) -> SocketType {
        self.socket_type
    }

    /// The local port (0 for unix sockets).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Checks the descriptor is (still) a socket of the wanted kind, then takes
    /// ownership of it, setting `FD_CLOEXEC` as std does for the sockets it
    /// creates (a child process does not inherit it unless the caller clears the
    /// flag again).
    fn take(
        self,
        wanted: &str,
        fits: impl Fn(Family, SocketType) -> bool,
    ) -> Result<OwnedFd, Error> {
        let name = self.name.as_bytes();
        let info = sys::socket_info(self.fd)
            .map_err(|e| Error::listener(ErrorKind::BadFd, name, self.fd, "", Some(e.into())))?;
        let (family, socktype) = (
            Family::from_raw(info.family),
            SocketType::from_raw(info.socktype),
        );
        if !fits(family, socktype) {
            let what = format!(" is {}, not {wanted}", describe(family, socktype));
            return Err(Error::listener(
                ErrorKind::WrongType,
                name,
                self.fd,
                &what,
                None,
            ));
        }
        sys::set_cloexec(self.fd).map_err(|e| {
            Error::listener(
                ErrorKind::BadFd,
                name,
                self.fd,
                ": cannot set FD_CLOEXEC",
                Some(e.into()),
            )
        })?;
        match sys::take_once(self.fd) {
            Ok(Some(fd)) => Ok(fd),
            Ok(None) => Err(Error::listener(
                ErrorKind::AlreadyTaken,
                name,
                self.fd,
                "",
                None,
            )),
            Err(e) => Err(Error::listener(
                ErrorKind::BadFd,
                name,
                self.fd,
                "",
                Some(e.into()),
            )),
        }
    }

    /// Takes ownership as a `TcpListener`; fails unless it is a TCP (IPv4 or
    /// IPv6 stream) socket.
    pub fn into_tcp_listener(self) -> Result<TcpListener, Error> {
        self.take("a TCP socket", |f, t| {
            matches!(f, Family::Inet | Family::Inet6) && t == SocketType::Stream
        })
        .map(TcpListener::from)
    }

    /// Takes ownership as a `UdpSocket`; fails unless it is a UDP (IPv4 or IPv6
    /// datagram) socket.
    pub fn into_udp_socket(self) -> Result<UdpSocket, Error> {
        self.take("a UDP socket", |f, t| {
            matches!(f, Family::Inet | Family::Inet6) && t == SocketType::Datagram
        })
        .map(UdpSocket::from)
    }

    /// Takes ownership as a `UnixListener`; fails unless it is a unix stream socket.
    pub fn into_unix_listener(self) -> Result<UnixListener, Error> {
        self.take("a unix stream socket", |f, t| {
            f == Family::Unix && t == SocketType::Stream
        })
        .map(UnixListener::from)
    }

    /// Takes ownership as a `UnixDatagram`; fails unless it is a unix datagram socket.
    pub fn into_unix_datagram(self) -> Result<UnixDatagram, Error> {
        self.take("a unix datagram socket", |f, t| {
            f == Family::Unix && t == SocketType::Datagram
        })
        .map(UnixDatagram::from)
    }
}

/// The variables the listeners come from. [`Environment::from_process`] reads
/// them; building one by hand lets a program (or a test) resolve listeners
/// without touching the process environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Environment {
    /// `SERVER_STARTER_PORT`; when set (even empty) systemd's variables are ignored.
    pub server_starter_port: Option<OsString>,
    /// `LISTEN_PID`: systemd's variables apply only if it is this process's id.
    pub listen_pid: Option<OsString>,
    /// `LISTEN_FDS`: how many descriptors, from 3 on.
    pub listen_fds: Option<OsString>,
    /// `LISTEN_FDNAMES`: their names, colon-separated.
    pub listen_fdnames: Option<OsString>,
}

impl Environment {
    /// The variables of this process. Unlike `sd_listen_fds(1)`, never unsets them.
    pub fn from_process() -> Self {
        Environment {
            server_starter_port: std::env::var_os("SERVER_STARTER_PORT"),
            listen_pid: std::env::var_os("LISTEN_PID"),
            listen_fds: std::env::var_os("LISTEN_FDS"),
            listen_fdnames: std::env::var_os("LISTEN_FDNAMES"),
        }
    }

    fn source(&self) -> Result<Source<'_>, Error> {
        fn bytes(v: &Option<OsString>) -> Option<&[u8]> {
            v.as_deref().map(OsStr::as_bytes)
        }
        let vars = Vars {
            starter_port: bytes(&self.server_starter_port),
            listen_pid: bytes(&self.listen_pid),
            listen_fds: bytes(&self.listen_fds),
            listen_fdnames: bytes(&self.listen_fdnames),
        };
        parse::resolve(&vars, sys::getpid()).map_err(|e| Error::parse(&e))
    }

    /// Every listener, each checked to be an open socket.
    pub fn listeners(&self) -> Result<Vec<Listener>, Error> {
        let source = self.source()?;
        checked(&source)
            .map_err(Error::from_failure)?
            .map(|c| {
                c.map(|c| Listener::from_checked(&c))
                    .map_err(Error::from_failure)
            })
            .collect()
    }

    /// The first listener named `name`. The whole variable is parsed, so a
    /// malformed entry anywhere is an error, as in [`Environment::listeners`].
    /// Under systemd's variables a `SERVER_STARTER_PORT` name also finds the
    /// `LISTEN_FDNAMES` name `start_server --listen-fds` makes of it
    /// (`127.0.0.1:8080` finds `127.0.0.1_8080`).
    pub fn find(&self, name: impl AsRef<OsStr>) -> Result<Listener, Error> {
        let wanted = name.as_ref().as_bytes();
        if wanted.len() >= parse::NAME_MAX {
            return Err(Error {
                kind: ErrorKind::NameTooLong,
                context: format!("listener name of {} bytes", wanted.len()),
                source: None,
            });
        }
        let source = self.source()?;
        let found = parse::find(&source, wanted).map_err(|e| Error::parse(&e))?;
        let entry = found.ok_or_else(|| Error {
            kind: ErrorKind::NotFound,
            context: format!("listener \"{}\"", String::from_utf8_lossy(wanted)),
            source: None,
        })?;
        check(entry)
            .map(|c| Listener::from_checked(&c))
            .map_err(Error::from_failure)
    }
}

/// The listeners this process inherited, from `SERVER_STARTER_PORT` or, when it
/// is not set, from systemd socket activation.
pub fn listeners() -> Result<Vec<Listener>, Error> {
    Environment::from_process().listeners()
}

/// The inherited listener named `name` (e.g. `"127.0.0.1:8080"`).
pub fn find(name: impl AsRef<OsStr>) -> Result<Listener, Error> {
    Environment::from_process().find(name)
}

/// `SERVER_STARTER_GENERATION`: how many times start_server has (re)started
/// workers; `None` when unset or not a decimal number.
pub fn generation() -> Option<u64> {
    let value = std::env::var_os("SERVER_STARTER_GENERATION")?.into_vec();
    parse::parse_generation(&value).and_then(|g| u64::try_from(g).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpStream, UdpSocket};
    use std::os::fd::{AsRawFd, IntoRawFd};
    use std::os::unix::net::UnixStream;

    fn starter(value: String) -> Environment {
        Environment {
            server_starter_port: Some(value.into()),
            ..Environment::default()
        }
    }

    fn temp_dir(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("server_starter-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn tcp_udp_and_unix_listeners_round_trip() {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp_port = tcp.local_addr().unwrap().port();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let udp_port = udp.local_addr().unwrap().port();
        let dir = temp_dir("api");
        let path = dir.join("s=1.sock");
        let unix = UnixListener::bind(&path).unwrap();
        let (tcp_fd, udp_fd, unix_fd) = (tcp.into_raw_fd(), udp.into_raw_fd(), unix.into_raw_fd());

        let env = starter(format!(
            "127.0.0.1:{tcp_port}={tcp_fd}; {udp_port} = {udp_fd};{}={unix_fd};",
            path.display()
        ));
        let all = env.listeners().unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].name(), format!("127.0.0.1:{tcp_port}").as_str());
        assert_eq!(
            (all[0].family(), all[0].socket_type(), all[0].port()),
            (Family::Inet, SocketType::Stream, tcp_port)
        );
        assert_eq!(
            (all[1].family(), all[1].socket_type(), all[1].port()),
            (Family::Inet, SocketType::Datagram, udp_port)
        );
        assert_eq!(
            (all[2].family(), all[2].socket_type(), all[2].port()),
            (Family::Unix, SocketType::Stream, 0)
        );
        assert_eq!(all[2].name(), path.as_os_str());

        // Wrong conversions fail with context and leave the descriptor usable.
        let err = all[1].clone().into_tcp_listener().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WrongType);
        let text = err.to_string();
        assert!(
            text.contains(&format!("fd {udp_fd}")) && text.contains("UDP"),
            "{text}"
        );
        assert_eq!(
            all[0].clone().into_unix_listener().unwrap_err().kind(),
            ErrorKind::WrongType
        );
        assert_eq!(
            all[2].clone().into_udp_socket().unwrap_err().kind(),
            ErrorKind::WrongType
        );

        let tcp = env
            .find(format!("127.0.0.1:{tcp_port}"))
            .unwrap()
            .into_tcp_listener()
            .unwrap();
        assert_eq!(tcp.as_raw_fd(), tcp_fd);
        let mut client = TcpStream::connect(("127.0.0.1", tcp_port)).unwrap();
        let (mut served, _) = tcp.accept().unwrap();
        client.write_all(b"ping").unwrap();
        let mut buf = [0; 4];
        served.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        // The kernel's view of the descriptor flags.
        let flags = std::fs::read_to_string(format!("/proc/self/fdinfo/{tcp_fd}")).unwrap();
        let flags = flags.lines().find(|l| l.starts_with("flags:")).unwrap();
        let flags = u32::from_str_radix(flags.trim_start_matches("flags:").trim(), 8).unwrap();
        assert_ne!(
            flags & libc::O_CLOEXEC as u32,
            0,
            "into_tcp_listener sets FD_CLOEXEC"
        );

        // A descriptor is handed out once.
        let again = env
            .find(format!("127.0.0.1:{tcp_port}"))
            .unwrap()
            .into_tcp_listener()
            .unwrap_err();
        assert_eq!(again.kind(), ErrorKind::AlreadyTaken);

        let udp = all[1].clone().into_udp_socket().unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        sender.send_to(b"dgram", ("127.0.0.1", udp_port)).unwrap();
        let mut buf = [0; 16];
        assert_eq!(udp.recv(&mut buf).unwrap(), 5);

        let unix = all[2].clone().into_unix_listener().unwrap();
        let _client = UnixStream::connect(&path).unwrap();
        unix.accept().unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn ipv6_listener() {
        let Ok(tcp) = TcpListener::bind("[::1]:0") else {
            eprintln!("SKIP: no IPv6 loopback");
            return;
        };
        let port = tcp.local_addr().unwrap().port();
        let fd = tcp.into_raw_fd();
        let env = starter(format!("[::1]:{port}={fd}"));
        let l = env.find(format!("[::1]:{port}")).unwrap();
        assert_eq!(
            (l.family(), l.socket_type(), l.port()),
            (Family::Inet6, SocketType::Stream, port)
        );
        drop(l.into_tcp_listener().unwrap());
    }

    #[test]
    fn errors_carry_context() {
        let env = starter("80=3;bad;81=4".into());
        let e = env.listeners().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Malformed);
        assert!(
            e.to_string()
                .starts_with("SERVER_STARTER_PORT entry 1 (at byte 5): no '='"),
            "{e}"
        );

        // A descriptor that is a file, not a socket.
        let file = std::fs::File::open("/proc/self/status").unwrap();
        let env = starter(format!("app={}", file.as_raw_fd()));
        let e = env.listeners().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BadFd);
        assert!(
            e.to_string()
                .contains(&format!("listener \"app\" (fd {})", file.as_raw_fd())),
            "{e}"
        );
        assert!(std::error::Error::source(&e).is_some());

        assert_eq!(
            starter("80=2147483647".into())
                .listeners()
                .unwrap_err()
                .kind(),
            ErrorKind::BadFd
        );
        assert_eq!(starter("".into()).listeners().unwrap(), vec![]);
        assert_eq!(
            starter("80=3".into()).find("81").unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert_eq!(
            starter("80=3".into())
                .find("8".repeat(300))
                .unwrap_err()
                .kind(),
            ErrorKind::NameTooLong
        );
        assert_eq!(
            Environment::default().listeners().unwrap_err().kind(),
            ErrorKind::NotSet
        );
        let io: io::Error = Environment::default().listeners().unwrap_err().into();
        assert_eq!(io.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn systemd_activation() {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        // systemd passes descriptors from 3 on; this test cannot own 3, so it
        // checks the resolution through a descriptor it does own via LISTEN_FDS=1
        // only when 3 happens to be a socket, and otherwise the naming and errors.
        let pid = std::process::id().to_string();
        let env = Environment {
            listen_pid: Some(pid.clone().into()),
            listen_fds: Some("1".into()),
            listen_fdnames: Some("web".into()),
            ..Environment::default()
        };
        match env.listeners() {
            Ok(all) => assert_eq!(all[0].name(), "web"),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::BadFd);
                assert!(e.to_string().contains("listener \"web\" (fd 3)"), "{e}");
            }
        }
        // Up to INT_MAX - 3 descriptors: nothing walks them all.
        let huge = Environment {
            listen_fds: Some("2147483644".into()),
            listen_fdnames: None,
            ..env.clone()
        };
        let started = std::time::Instant::now();
        assert_eq!(huge.find("web").unwrap_err().kind(), ErrorKind::NotFound);
        let _ = huge.find("unknown");
        let _ = huge.listeners();
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        let other = Environment {
            listen_pid: Some("1".into()),
            ..env.clone()
        };
        assert_eq!(other.listeners().unwrap_err().kind(), ErrorKind::NotSet);
        let bad = Environment {
            listen_fds: Some("two".into()),
            ..env.clone()
        };
        let e = bad.listeners().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Malformed);
        assert!(e.to_string().starts_with("LISTEN_FDS: "), "{e}");
        // SERVER_STARTER_PORT wins.
        let both = Environment {
            server_starter_port: Some(format!("x={}", a.as_raw_fd()).into()),
            ..env
        };
        assert_eq!(both.listeners().unwrap()[0].name(), "x");
    }
}
