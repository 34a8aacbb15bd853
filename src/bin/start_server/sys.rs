//! Thin wrappers over the libc calls start_server makes. Every `unsafe` block of the
//! binary lives here, each with the reason it is sound; the rest of the code sees safe
//! functions returning `io::Result`.
//!
//! The functions under "between fork and exec" are the only ones the child calls after
//! `fork()`: each is async-signal-safe and none allocates.

use std::ffi::CStr;
use std::io;
use std::mem;
use std::os::raw::{c_char, c_int};
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;
use std::time::Duration;

pub type Pid = libc::pid_t;

fn check(ret: c_int) -> io::Result<c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

// ---------------------------------------------------------------- signals

/// A set of signals, as `sigset_t`.
#[derive(Clone, Copy)]
pub struct SigSet(libc::sigset_t);

impl SigSet {
    pub fn of(signals: &[c_int]) -> SigSet {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it before any use.
        let mut set: libc::sigset_t = unsafe { mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t we own; sigaddset only fails for invalid
        // signal numbers, which callers do not pass.
        unsafe {
            libc::sigemptyset(&mut set);
            for &sig in signals {
                libc::sigaddset(&mut set, sig);
            }
        }
        SigSet(set)
    }
}

/// Blocks `set` in this (single-threaded) process, so that those signals wait in the
/// pending set until read from a signalfd.
pub fn block_signals(set: &SigSet) -> io::Result<()> {
    // SAFETY: valid pointer to an initialised sigset_t; the old mask is not wanted.
    check(unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set.0, ptr::null_mut()) }).map(drop)
}

/// Sets the disposition of `sig` to "ignore" (start_server ignores SIGPIPE, so that a
/// closed log pipe is an error to handle, not a death).
pub fn ignore_signal(sig: c_int) -> io::Result<()> {
    // SAFETY: SIG_IGN is a valid disposition for every catchable signal.
    if unsafe { libc::signal(sig, libc::SIG_IGN) } == libc::SIG_ERR {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A signalfd for `set` (which must be blocked), non-blocking and close-on-exec.
pub fn signalfd(set: &SigSet) -> io::Result<OwnedFd> {
    // SAFETY: -1 asks for a new descriptor; `set` is initialised.
    let fd = check(unsafe { libc::signalfd(-1, &set.0, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) })?;
    // SAFETY: signalfd returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads one pending signal from a non-blocking signalfd; `None` when none is pending.
pub fn read_signal(fd: &OwnedFd) -> io::Result<Option<c_int>> {
    // SAFETY: signalfd_siginfo is plain data.
    let mut info: libc::signalfd_siginfo = unsafe { mem::zeroed() };
    let size = mem::size_of::<libc::signalfd_siginfo>();
    loop {
        // SAFETY: `info` is a writable buffer of exactly `size` bytes.
        let n = unsafe { libc::read(fd.as_raw_fd(), ptr::addr_of_mut!(info).cast(), size) };
        if n == size as isize {
            return Ok(Some(info.ssi_signo as c_int));
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => return Ok(None),
            _ if n >= 0 => return Err(io::Error::other("short read from signalfd")),
            _ => return Err(err),
        }
    }
}

/// Waits until `fd` is readable or `timeout` passes (`None`: no time limit). Returns
/// whether it is readable. This is where start_server sleeps.
pub fn wait_readable(fd: &OwnedFd, timeout: Option<Duration>) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = timeout.map(|t| libc::timespec {
        // Capped at 68 years, which fits time_t on every target.
        tv_sec: t.as_secs().min(i32::MAX as u64) as _,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: one valid pollfd; `ts_ptr` is null or points to a live timespec; a null
    // sigmask keeps the current mask.
    let n = unsafe { libc::ppoll(&mut pfd, 1, ts_ptr, ptr::null()) };
    match n {
        -1 if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => Ok(false),
        -1 => Err(io::Error::last_os_error()),
        n => Ok(n > 0),
    }
}

/// Sends `sig` to `pid`.
pub fn kill(pid: Pid, sig: c_int) -> io::Result<()> {
    // SAFETY: kill has no memory-safety preconditions.
    check(unsafe { libc::kill(pid, sig) }).map(drop)
}

// ---------------------------------------------------------------- processes

/// Reaps one exited child without blocking: `Some((pid, raw wait status))`, or `None`
/// when no child has exited (or there are no children).
pub fn reap_one() -> io::Result<Option<(Pid, c_int)>> {
    let mut status: c_int = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        match pid {
            0 => return Ok(None),
            -1 => match io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ECHILD) => return Ok(None),
                _ => return Err(io::Error::last_os_error()),
            },
            pid => return Ok(Some((pid, status))),
        }
    }
}

pub enum Fork {
    Child,
    Parent(Pid),
}

/// fork(2). The caller must restrict the child to the functions below.
pub fn fork() -> io::Result<Fork> {
    // SAFETY: start_server is single-threaded, so the child is a consistent copy; the
    // child branch only calls the async-signal-safe functions of this module.
    match check(unsafe { libc::fork() })? {
        0 => Ok(Fork::Child),
        pid => Ok(Fork::Parent(pid)),
    }
}

/// A pipe whose both ends are close-on-exec: (read end, write end).
pub fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: `fds` has room for the two descriptors.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 returned two new descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Reads into `buf` until EOF or `buf` is full; returns the byte count.
pub fn read_full(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        let rest = &mut buf[got..];
        // SAFETY: `rest` is a writable buffer of `rest.len()` bytes.
        let n = unsafe { libc::read(fd.as_raw_fd(), rest.as_mut_ptr().cast(), rest.len()) };
        match n {
            0 => break,
            -1 if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => continue,
            -1 => return Err(io::Error::last_os_error()),
            n => got += n as usize,
        }
    }
    Ok(got)
}

// --- between fork and exec: async-signal-safe, allocation-free ---

/// In the child: unblocks every signal and resets every disposition to the default, so
/// the worker starts as if exec'd by a shell (SIGPIPE included, and even the real-time
/// signals libc reserves for itself, which its sigaction() refuses to touch).
pub fn child_reset_signals() {
    /// The kernel's `struct sigaction` for rt_sigaction(2); all zeroes is SIG_DFL with
    /// no flags and an empty mask.
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: u64,
        restorer: usize,
        mask: u64,
    }
    let dfl = KernelSigaction {
        handler: 0,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    let empty: u64 = 0;
    // SAFETY: raw rt_sigprocmask/rt_sigaction system calls are async-signal-safe; the
    // structures are initialised and live on the stack, and their size is the kernel's
    // sigset size (8 bytes). Errors (SIGKILL, SIGSTOP) are expected and ignored.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &empty as *const u64,
            ptr::null_mut::<u64>(),
            8,
        );
        // Linux numbers signals 1..=64 (the kernel's _NSIG is 64).
        for sig in 1..=64 {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                &dfl as *const KernelSigaction,
                ptr::null_mut::<KernelSigaction>(),
                8,
            );
        }
    }
}

/// In the child: asks the kernel to send `sig` when the parent (start_server) dies, so
/// that a start_server killed with SIGKILL leaves no worker behind. Returns false when
/// the parent is already gone (it died between fork and this call).
pub fn child_set_parent_death_signal(sig: c_int, parent: Pid) -> bool {
    // SAFETY: prctl(PR_SET_PDEATHSIG) and getppid are plain system calls, async-signal-safe.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong) == 0 && libc::getppid() == parent
    }
}

/// In the child: chdir(2); on failure returns errno.
pub fn child_chdir(dir: &CStr) -> Result<(), c_int> {
    // SAFETY: `dir` is NUL-terminated; chdir is async-signal-safe.
    if unsafe { libc::chdir(dir.as_ptr()) } == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

/// In the child: execve(2). Returns only on failure, with errno.
pub fn child_execve(path: &CStr, argv: &[*const c_char], envp: &[*const c_char]) -> c_int {
    debug_assert!(argv.last().is_some_and(|p| p.is_null()));
    debug_assert!(envp.last().is_some_and(|p| p.is_null()));
    // SAFETY: `path` is NUL-terminated; argv and envp are NULL-terminated arrays of
    // pointers to NUL-terminated strings that the parent built and keeps alive.
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    errno()
}

/// In the child: writes `bytes` to `fd`, ignoring errors (used to report a failure
/// back to the parent, which then reports it).
pub fn child_write(fd: RawFd, bytes: &[u8]) {
    // SAFETY: `bytes` is a readable buffer; write is async-signal-safe.
    unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
}

/// In the child: _exit(2), skipping atexit handlers and stdio buffers of the parent.
pub fn child_exit(code: c_int) -> ! {
    // SAFETY: _exit is async-signal-safe and never returns.
    unsafe { libc::_exit(code) }
}

/// In the child: its own pid (for `LISTEN_PID`), from getpid(2), which is
/// async-signal-safe.
pub fn child_getpid() -> Pid {
    // SAFETY: getpid has no preconditions and cannot fail.
    unsafe { libc::getpid() }
}

fn errno() -> c_int {
    // SAFETY: __errno_location returns this thread's errno slot, always valid.
    unsafe { *libc::__errno_location() }
}

// ---------------------------------------------------------------- descriptors and files

/// Sets or clears FD_CLOEXEC: the listening sockets are the only descriptors of ours a
/// worker inherits.
pub fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: fcntl on an integer descriptor has no memory-safety preconditions.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    let flags = if on {
        flags | libc::FD_CLOEXEC
    } else {
        flags & !libc::FD_CLOEXEC
    };
    // SAFETY: as above.
    check(unsafe { libc::fcntl(fd, libc::F_SETFD, flags) }).map(drop)
}

/// Whether `fd` is an open descriptor.
pub fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only queries the descriptor table.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// dup2(2); the new descriptor is inheritable (dup2 clears FD_CLOEXEC).
pub fn dup2(from: RawFd, to: RawFd) -> io::Result<()> {
    // SAFETY: dup2 on integer descriptors; the caller owns `to` (it may replace it).
    check(unsafe { libc::dup2(from, to) }).map(drop)
}

/// A close-on-exec duplicate of `fd` at the lowest free number from `min` on
/// (F_DUPFD_CLOEXEC): how a socket is moved out of the way of another's number.
pub fn dup_at_least(fd: &impl AsRawFd, min: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) on an open descriptor has no memory-safety
    // preconditions.
    let new = check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) })?;
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Takes ownership of descriptor `fd`, which systemd socket activation passed to
/// this process (`LISTEN_FDS`), checked open. Returns `None` when it is not open.
/// Called once per number (`inherited::take`), so no two owners close it.
pub fn take_inherited_fd(fd: RawFd) -> Option<OwnedFd> {
    if !fd_is_open(fd) {
        return None;
    }
    // SAFETY: the descriptor is open, was handed to this process by its launcher
    // for it to use, and nothing else in start_server refers to it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Makes the free descriptor number `target` an open, close-on-exec descriptor (on
/// /dev/null) owned by the caller, so that no socket created meanwhile lands there.
pub fn occupy_fd(target: RawFd) -> io::Result<OwnedFd> {
    let null = OwnedFd::from(std::fs::File::open("/dev/null")?);
    if null.as_raw_fd() == target {
        // `target` was the lowest free descriptor: open(2) took it already.
        return Ok(null);
    }
    // SAFETY: dup3 on integer descriptors has no memory-safety preconditions; the
    // caller has checked that `target` is not open, so nothing is replaced.
    check(unsafe { libc::dup3(null.as_raw_fd(), target, libc::O_CLOEXEC) })?;
    // SAFETY: dup3 made `target` a new descriptor that only the returned value owns.
    Ok(unsafe { OwnedFd::from_raw_fd(target) })
}

/// Sets the umask, returning the previous one.
pub fn umask(mask: libc::mode_t) -> libc::mode_t {
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(mask) }
}

// ---------------------------------------------------------------- sockets

/// socket(2), close-on-exec until the caller decides otherwise.
pub fn socket(domain: c_int, ty: c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket has no memory-safety preconditions.
    let fd = check(unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn setsockopt_int(fd: &OwnedFd, level: c_int, name: c_int, value: c_int) -> io::Result<()> {
    // SAFETY: `value` is a c_int and we pass its exact size.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            ptr::addr_of!(value).cast(),
            mem::size_of::<c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// getsockopt(2) for an int-valued option (SO_TYPE, SO_ACCEPTCONN, ...).
pub fn getsockopt_int(fd: &impl AsRawFd, level: c_int, name: c_int) -> io::Result<c_int> {
    let mut value: c_int = 0;
    let mut len = mem::size_of::<c_int>() as libc::socklen_t;
    // SAFETY: `value` is a writable c_int and `len` says so.
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            ptr::addr_of_mut!(value).cast(),
            &mut len,
        )
    })?;
    Ok(value)
}

/// A socket address in the kernel's format, with its length.
pub struct SockAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl SockAddr {
    pub fn from_std(addr: &std::net::SocketAddr) -> SockAddr {
        // SAFETY: sockaddr_storage is plain data, large and aligned enough for any
        // address family; we write one of the sockaddr_in/in6 variants into it.
        let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let len = match addr {
            std::net::SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
                unsafe { ptr::write(ptr::addr_of_mut!(storage).cast(), sin) };
                mem::size_of::<libc::sockaddr_in>()
            }
            std::net::SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
                unsafe { ptr::write(ptr::addr_of_mut!(storage).cast(), sin6) };
                mem::size_of::<libc::sockaddr_in6>()
            }
        };
        SockAddr {
            storage,
            len: len as libc::socklen_t,
        }
    }

    /// A unix-domain address; `None` when the path does not fit in sun_path.
    pub fn unix(path: &[u8]) -> Option<SockAddr> {
        // SAFETY: as in from_std.
        let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
        // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_un; the
        // zeroed storage is a valid sockaddr_un.
        let sun: &mut libc::sockaddr_un = unsafe { &mut *ptr::addr_of_mut!(storage).cast() };
        // The path needs a terminating NUL inside sun_path.
        if path.is_empty() || path.len() >= sun.sun_path.len() || path.contains(&0) {
            return None;
        }
        sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (dst, &src) in sun.sun_path.iter_mut().zip(path) {
            *dst = src as c_char;
        }
        let len = mem::size_of::<libc::sa_family_t>() + path.len() + 1;
        Some(SockAddr {
            storage,
            len: len as libc::socklen_t,
        })
    }

    /// The address socket `fd` is bound to (getsockname(2)).
    pub fn local(fd: &impl AsRawFd) -> io::Result<SockAddr> {
        // SAFETY: as in from_std; getsockname fills it in.
        let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: `storage` is writable for `len` bytes, which getsockname updates.
        check(unsafe {
            libc::getsockname(fd.as_raw_fd(), ptr::addr_of_mut!(storage).cast(), &mut len)
        })?;
        Ok(SockAddr { storage, len })
    }

    pub fn family(&self) -> c_int {
        c_int::from(self.storage.ss_family)
    }

    /// An AF_INET or AF_INET6 address as std's; `None` for other families.
    pub fn to_std(&self) -> Option<std::net::SocketAddr> {
        match self.family() {
            libc::AF_INET => {
                // SAFETY: the kernel wrote a sockaddr_in here (ss_family says so);
                // sockaddr_storage is larger than and aligned for it.
                let sin: &libc::sockaddr_in = unsafe { &*ptr::addr_of!(self.storage).cast() };
                let ip = std::net::Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
                Some((ip, u16::from_be(sin.sin_port)).into())
            }
            libc::AF_INET6 => {
                // SAFETY: as above, for sockaddr_in6.
                let sin6: &libc::sockaddr_in6 = unsafe { &*ptr::addr_of!(self.storage).cast() };
                let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                Some(std::net::SocketAddr::V6(std::net::SocketAddrV6::new(
                    ip,
                    u16::from_be(sin6.sin6_port),
                    sin6.sin6_flowinfo,
                    sin6.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }

    /// An AF_UNIX address's `sun_path` bytes, as long as the address is: empty for an
    /// unnamed socket, starting with NUL for an abstract one, else a file's path
    /// (with its terminating NUL, if the kernel kept it). `None` for other families.
    pub fn unix_path_bytes(&self) -> Option<Vec<u8>> {
        if self.family() != libc::AF_UNIX {
            return None;
        }
        // SAFETY: the kernel wrote a sockaddr_un here (ss_family says so);
        // sockaddr_storage is larger than and aligned for it.
        let sun: &libc::sockaddr_un = unsafe { &*ptr::addr_of!(self.storage).cast() };
        let n = (self.len as usize).saturating_sub(mem::size_of::<libc::sa_family_t>());
        Some(sun.sun_path.iter().take(n).map(|&c| c as u8).collect())
    }

    fn as_ptr(&self) -> *const libc::sockaddr {
        ptr::addr_of!(self.storage).cast()
    }
}

pub fn bind(fd: &OwnedFd, addr: &SockAddr) -> io::Result<()> {
    // SAFETY: `addr` points to an initialised address of `addr.len` bytes.
    check(unsafe { libc::bind(fd.as_raw_fd(), addr.as_ptr(), addr.len) }).map(drop)
}

pub fn connect(fd: &OwnedFd, addr: &SockAddr) -> io::Result<()> {
    // SAFETY: as in bind.
    check(unsafe { libc::connect(fd.as_raw_fd(), addr.as_ptr(), addr.len) }).map(drop)
}

pub fn listen(fd: &OwnedFd, backlog: c_int) -> io::Result<()> {
    // SAFETY: listen has no memory-safety preconditions.
    check(unsafe { libc::listen(fd.as_raw_fd(), backlog) }).map(drop)
}

// ---------------------------------------------------------------- locks and sessions

/// flock(2) with LOCK_EX, without blocking unless `wait`. Ok(false): someone else holds
/// the lock.
pub fn lock_exclusive(fd: &impl AsRawFd, wait: bool) -> io::Result<bool> {
    let op = if wait {
        libc::LOCK_EX
    } else {
        libc::LOCK_EX | libc::LOCK_NB
    };
    loop {
        // SAFETY: flock on an open descriptor has no memory-safety preconditions.
        if unsafe { libc::flock(fd.as_raw_fd(), op) } == 0 {
            return Ok(true);
        }
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Ok(false),
            _ => return Err(io::Error::last_os_error()),
        }
    }
}

/// setsid(2): a new session, without a controlling terminal.
pub fn setsid() -> io::Result<()> {
    // SAFETY: setsid has no memory-safety preconditions.
    check(unsafe { libc::setsid() }).map(drop)
}

/// Points each of `fds` at /dev/null.
pub fn redirect_to_dev_null(fds: &[RawFd]) -> io::Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    for &fd in fds {
        dup2(null.as_raw_fd(), fd)?;
    }
    Ok(())
}
