//! Binding the listening sockets (or adopting those systemd passed), once, before the
//! first worker is spawned, each at the descriptor the plan says. They stay open in
//! start_server for its whole life, which is why a restart refuses no connection.

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::io::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use crate::inherited::Address;
use crate::log;
use crate::plan::{Plan, Reserved, Source};
use crate::port_spec::{PortSpec, Protocol};
use crate::sys::{self, SockAddr};

/// One bound (or adopted) socket, as a worker will find it.
pub struct Listener {
    /// Its name in SERVER_STARTER_PORT.
    pub name: String,
    pub fd: RawFd,
    /// Taken from systemd socket activation rather than bound.
    pub adopted: bool,
    /// For an adopted socket, its name in the manager's LISTEN_FDNAMES, if given.
    pub fdname: Option<String>,
    /// For unix sockets: the file we created, to remove at exit if it is still ours.
    /// (An adopted socket's file is the manager's, and stays.)
    unix_file: Option<UnixFile>,
    /// A TCP or unix stream socket: one that a worker's shutdown(2) can stop listening.
    stream: bool,
}

struct UnixFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

/// All the sockets, in the plan's order (SERVER_STARTER_PORT's), and the backlog they
/// listen with.
pub struct Listeners(Vec<Listener>, i32);

impl Listeners {
    /// Binds or adopts every socket of the plan, or none: on error, the unix socket
    /// files already created are removed again. `reserved` holds the target
    /// descriptor numbers free of anything else start_server opened first (pid file,
    /// log file).
    pub fn bind(plan: Plan, backlog: i32, reserved: Reserved) -> Result<Listeners, String> {
        let mut bound = Listeners(Vec::new(), backlog);
        let result = bound.bind_all(plan, backlog, reserved);
        match result {
            Ok(()) => Ok(bound),
            Err(e) => {
                bound.remove_socket_files();
                Err(e)
            }
        }
    }

    fn bind_all(&mut self, plan: Plan, backlog: i32, mut reserved: Reserved) -> Result<(), String> {
        let adopted: Vec<Address> = plan
            .0
            .iter()
            .filter_map(|p| match &p.source {
                Source::Adopted(socket) => Some(socket.address.clone()),
                _ => None,
            })
            .collect();
        for planned in plan.0 {
            let is_adopted = matches!(planned.source, Source::Adopted(_));
            let (fd, unix_file, fdname) = match planned.source {
                Source::Port(spec) => (bind_port(&spec, backlog, &adopted)?, None, None),
                Source::Path(path) => {
                    let (fd, file) = bind_path(&path, backlog)?;
                    (fd, Some(file), None)
                }
                Source::Adopted(socket) => (socket.fd, None, socket.fdname),
            };
            let fd = place(
                fd,
                &planned.name,
                planned.target,
                planned.pinned,
                &mut reserved,
            )?;
            self.0.push(Listener {
                name: planned.name,
                fd,
                adopted: is_adopted,
                fdname,
                unix_file,
                stream: is_stream(fd),
            });
        }
        Ok(())
    }

    /// The value of SERVER_STARTER_PORT: `name=fd` entries joined by `;`.
    pub fn env_value(&self) -> String {
        let entries: Vec<String> = self
            .0
            .iter()
            .map(|l| format!("{}={}", l.name, l.fd))
            .collect();
        entries.join(";")
    }

    pub fn iter(&self) -> impl Iterator<Item = &Listener> {
        self.0.iter()
    }

    /// Before each generation: a stream socket that no longer listens is listened on
    /// again. A worker's shutdown(2) acts on the socket every generation shares, and
    /// would leave it refusing connections for good (the next worker's accept fails
    /// with EINVAL).
    pub fn relisten(&self) {
        for l in self.0.iter().filter(|l| l.stream) {
            if sys::getsockopt_int(&l.fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN).ok() != Some(0) {
                continue;
            }
            match sys::listen(&l.fd, self.1) {
                Ok(()) => log!(
                    "socket {} (descriptor {}) was no longer listening (a worker shut it \
                     down?): listening on it again",
                    l.name,
                    l.fd
                ),
                Err(e) => log!(
                    "socket {} (descriptor {}) no longer listens, and listen(2) failed: {e}",
                    l.name,
                    l.fd
                ),
            }
        }
    }

    /// Whether a socket sits at descriptor 0 (then a daemon keeps it as stdin).
    pub fn has_fd(&self, fd: RawFd) -> bool {
        self.0.iter().any(|l| l.fd == fd)
    }

    /// Removes the unix socket files we created, if they are still the sockets we
    /// bound (another instance may have replaced them meanwhile).
    pub fn remove_socket_files(&self) {
        for file in self.0.iter().filter_map(|l| l.unix_file.as_ref()) {
            match fs::symlink_metadata(&file.path) {
                Ok(m)
                    if m.file_type().is_socket() && m.dev() == file.dev && m.ino() == file.ino =>
                {
                    if let Err(e) = fs::remove_file(&file.path) {
                        log!("failed to remove socket file {}: {e}", file.path.display());
                    }
                }
                _ => {}
            }
        }
    }
}

/// Puts the socket at its target descriptor, if it has one, and leaves it open and
/// inheritable for start_server's whole life.
fn place(
    fd: OwnedFd,
    name: &str,
    target: Option<RawFd>,
    pinned: bool,
    reserved: &mut Reserved,
) -> Result<RawFd, String> {
    let Some(target) = target.filter(|&t| t != fd.as_raw_fd()) else {
        return inheritable(fd).map_err(|e| format!("fcntl(F_SETFD) failed for {name}: {e}"));
    };
    reserved.release(target);
    sys::dup2(fd.as_raw_fd(), target)
        .map_err(|e| format!("dup2(2) failed for {name} to descriptor {target}: {e}"))?;
    if pinned {
        log!("socket is duplicated to file descriptor {target}");
    }
    Ok(target)
}

/// Binds `--port=spec`. When an adopted socket holds the port, the error names it:
/// an inherited socket should have been used (another option adopted it).
fn bind_port(spec: &PortSpec, backlog: i32, adopted: &[Address]) -> Result<OwnedFd, String> {
    let addr = spec.resolve()?;
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let ty = match spec.protocol {
        Protocol::Tcp => libc::SOCK_STREAM,
        Protocol::Udp => libc::SOCK_DGRAM,
    };
    let fail = |what: &str, e: io::Error| format!("{what} {}: {e}", spec.name);
    let fd = sys::socket(domain, ty).map_err(|e| fail("failed to create socket for", e))?;
    sys::setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)
        .map_err(|e| fail("setsockopt(SO_REUSEADDR) failed for", e))?;
    if domain == libc::AF_INET6 {
        sys::setsockopt_int(&fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)
            .map_err(|e| fail("setsockopt(IPV6_V6ONLY) failed for", e))?;
    }
    sys::bind(&fd, &SockAddr::from_std(&addr)).map_err(|e| {
        let held = adopted.iter().find(|a| a.holds_port_of(spec, addr));
        match held {
            Some(a) => format!(
                "failed to bind to {}: {e}: the inherited {a} (from LISTEN_FDS) holds that port",
                spec.name
            ),
            None => fail("failed to bind to", e),
        }
    })?;
    if spec.protocol == Protocol::Tcp {
        sys::listen(&fd, backlog).map_err(|e| fail("listen(2) failed for", e))?;
    }
    Ok(fd)
}

fn bind_path(path: &Path, backlog: i32) -> Result<(OwnedFd, UnixFile), String> {
    let fail = |why: String| format!("failed to listen to file {}: {why}", path.display());
    let addr = SockAddr::unix(path.as_os_str().as_bytes())
        .ok_or_else(|| fail("the path is empty or longer than 107 bytes".into()))?;
    remove_stale_socket(path, &addr).map_err(fail)?;

    let fd = sys::socket(libc::AF_UNIX, libc::SOCK_STREAM).map_err(|e| fail(e.to_string()))?;
    // Like the original, the socket file is created with mode 0777: who may connect is
    // decided by the directory it is in.
    let saved = sys::umask(0);
    let bound = sys::bind(&fd, &addr);
    sys::umask(saved);
    bound.map_err(|e| fail(e.to_string()))?;
    let meta = fs::symlink_metadata(path).map_err(|e| fail(e.to_string()))?;
    let unix_file = UnixFile {
        path: path.to_path_buf(),
        dev: meta.dev(),
        ino: meta.ino(),
    };
    if let Err(e) = sys::listen(&fd, backlog) {
        let _ = fs::remove_file(path);
        return Err(fail(e.to_string()));
    }
    Ok((fd, unix_file))
}

/// A socket file left by a server that is gone is removed, with a warning. Anything
/// else at the path is left alone and is an error: a file that is not a socket (the
/// original deletes it), or a socket some process still accepts on.
fn remove_stale_socket(path: &Path, addr: &SockAddr) -> Result<(), String> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.to_string()),
    };
    if !meta.file_type().is_socket() {
        return Err("the file exists and is not a socket (not removing it)".into());
    }
    let probe = sys::socket(libc::AF_UNIX, libc::SOCK_STREAM).map_err(|e| e.to_string())?;
    match sys::connect(&probe, addr) {
        Ok(()) => Err("another process is accepting connections on it".into()),
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
            log!("removing existing socket file:{}", path.display());
            fs::remove_file(path).map_err(|e| format!("failed to remove existing socket file: {e}"))
        }
        Err(e) => Err(format!(
            "cannot tell whether the existing socket is in use: {e}"
        )),
    }
}

/// Clears close-on-exec so that workers inherit the socket, and gives up ownership: the
/// descriptor stays open for start_server's whole life.
fn inheritable(fd: OwnedFd) -> io::Result<RawFd> {
    sys::set_cloexec(fd.as_raw_fd(), false)?;
    Ok(fd.into_raw_fd())
}

// ---------------------------------------------------------------- upgrade in place

/// The unix socket file a listener created, as (path, device, inode), as the upgrade
/// state carries it.
pub type UnixFileId = (PathBuf, u64, u64);

impl Listener {
    pub fn unix_file(&self) -> Option<UnixFileId> {
        let file = self.unix_file.as_ref()?;
        Some((file.path.clone(), file.dev, file.ino))
    }

    /// A socket of the previous image, still open at the same descriptor.
    pub fn taken_over(
        name: String,
        fd: RawFd,
        adopted: bool,
        fdname: Option<String>,
        unix_file: Option<UnixFileId>,
    ) -> Listener {
        Listener {
            name,
            fd,
            adopted,
            fdname,
            unix_file: unix_file.map(|(path, dev, ino)| UnixFile { path, dev, ino }),
            stream: is_stream(fd),
        }
    }
}

impl Listeners {
    /// `backlog`: the command line's, which an upgrade keeps.
    pub fn taken_over(sockets: Vec<Listener>, backlog: i32) -> Listeners {
        Listeners(sockets, backlog)
    }
}

fn is_stream(fd: RawFd) -> bool {
    sys::getsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_TYPE).ok() == Some(libc::SOCK_STREAM)
}
