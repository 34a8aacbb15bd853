//! Binding the listening sockets, once, before the first worker is spawned. They stay
//! open in start_server for its whole life, which is why a restart refuses no
//! connection.

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::io::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use crate::log;
use crate::port_spec::{PortSpec, Protocol};
use crate::sys::{self, SockAddr};

/// One bound socket, as a worker will find it.
pub struct Listener {
    /// Its name in SERVER_STARTER_PORT.
    pub name: String,
    pub fd: RawFd,
    /// For unix sockets: the file we created, to remove at exit if it is still ours.
    unix_file: Option<UnixFile>,
}

struct UnixFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

/// All the sockets, in the original's order: `--port`s first, then `--path`s.
pub struct Listeners(Vec<Listener>);

impl Listeners {
    /// Binds every socket, or none: on error, the unix socket files already created
    /// are removed again. `reserved` holds the pinned descriptor numbers free of
    /// anything else start_server opened first (pid file, log file).
    pub fn bind(
        ports: &[PortSpec],
        paths: &[PathBuf],
        backlog: i32,
        reserved: Reserved,
    ) -> Result<Listeners, String> {
        let mut bound = Listeners(Vec::new());
        let result = bound.bind_all(ports, paths, backlog, reserved);
        match result {
            Ok(()) => Ok(bound),
            Err(e) => {
                bound.remove_socket_files();
                Err(e)
            }
        }
    }

    fn bind_all(
        &mut self,
        ports: &[PortSpec],
        paths: &[PathBuf],
        backlog: i32,
        reserved: Reserved,
    ) -> Result<(), String> {
        let mut placeholders = reserved.0;
        for spec in ports {
            let fd = bind_port(spec, backlog)?;
            let fd = match spec.pinned_fd {
                Some(target) => {
                    // dup2 replaces the placeholder, so it must not be closed later.
                    if let Some(pos) = placeholders.iter().position(|p| p.as_raw_fd() == target) {
                        let _ = placeholders.swap_remove(pos).into_raw_fd();
                    }
                    sys::dup2(fd.as_raw_fd(), target).map_err(|e| {
                        format!(
                            "dup2(2) failed for {} to descriptor {target}: {e}",
                            spec.name
                        )
                    })?;
                    log!("socket is duplicated to file descriptor {target}");
                    target
                }
                None => inheritable(fd)
                    .map_err(|e| format!("fcntl(F_SETFD) failed for {}: {e}", spec.name))?,
            };
            self.0.push(Listener {
                name: spec.name.clone(),
                fd,
                unix_file: None,
            });
        }
        for path in paths {
            let listener = bind_path(path, backlog)?;
            self.0.push(listener);
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

/// The descriptor numbers that `=fd` pins, held open (on /dev/null) from the start
/// until the sockets are bound, so that nothing start_server opens meanwhile (its pid
/// file, its log, the other sockets) lands on one and is replaced by dup2.
pub struct Reserved(Vec<OwnedFd>);

/// Reserves the pinned descriptors. Those already open when start_server starts
/// (stdin, say) are the user's to replace, as in the original.
pub fn reserve_pinned_fds(ports: &[PortSpec]) -> Result<Reserved, String> {
    let mut seen = Vec::new();
    let mut placeholders = Vec::new();
    for spec in ports {
        let Some(target) = spec.pinned_fd else {
            continue;
        };
        if seen.contains(&target) {
            return Err(format!(
                "invalid port value: descriptor {target} is pinned by two --port options"
            ));
        }
        seen.push(target);
        if !sys::fd_is_open(target) {
            let placeholder = sys::occupy_fd(target)
                .map_err(|e| format!("failed to reserve descriptor {target}: {e}"))?;
            placeholders.push(placeholder);
        }
    }
    Ok(Reserved(placeholders))
}

fn bind_port(spec: &PortSpec, backlog: i32) -> Result<OwnedFd, String> {
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
    sys::bind(&fd, &SockAddr::from_std(&addr)).map_err(|e| fail("failed to bind to", e))?;
    if spec.protocol == Protocol::Tcp {
        sys::listen(&fd, backlog).map_err(|e| fail("listen(2) failed for", e))?;
    }
    Ok(fd)
}

fn bind_path(path: &Path, backlog: i32) -> Result<Listener, String> {
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
    let listener = |fd| Listener {
        name: path.display().to_string(),
        fd,
        unix_file: Some(unix_file),
    };
    if let Err(e) = sys::listen(&fd, backlog) {
        let _ = fs::remove_file(path);
        return Err(fail(e.to_string()));
    }
    let fd = inheritable(fd).map_err(|e| fail(e.to_string()))?;
    Ok(listener(fd))
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

/// One socket as the upgrade state carries it: its name, its descriptor, and the unix
/// socket file this instance created there, as (path, device, inode).
pub type Handover = (String, RawFd, Option<(PathBuf, u64, u64)>);

impl Listeners {
    pub fn handover(&self) -> Vec<Handover> {
        self.0
            .iter()
            .map(|l| {
                let file = l.unix_file.as_ref();
                let file = file.map(|f| (f.path.clone(), f.dev, f.ino));
                (l.name.clone(), l.fd, file)
            })
            .collect()
    }

    /// The sockets of the previous image, still open at the same descriptors.
    pub fn taken_over(sockets: Vec<Handover>) -> Listeners {
        Listeners(
            sockets
                .into_iter()
                .map(|(name, fd, file)| Listener {
                    name,
                    fd,
                    unix_file: file.map(|(path, dev, ino)| UnixFile { path, dev, ino }),
                })
                .collect(),
        )
    }
}
