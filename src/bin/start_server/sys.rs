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
use std::os::unix::process::CommandExt;
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

/// A set of signals in the kernel's format (one bit per signal, 1 to 64). Not libc's
/// `sigset_t`: libc refuses the real-time signals it reserves for threads (32 to 34),
/// which start_server, single-threaded, handles too.
#[derive(Clone, Copy)]
pub struct SigSet(u64);

impl SigSet {
    pub fn of(signals: impl IntoIterator<Item = c_int>) -> SigSet {
        SigSet(
            signals
                .into_iter()
                .filter(|sig| (1..=64).contains(sig))
                .fold(0, |set, sig| set | 1 << (sig - 1)),
        )
    }
}

/// The size of the kernel's sigset, which rt_sigprocmask and signalfd4 are given.
const KERNEL_SIGSET_SIZE: usize = 8;

/// Blocks `set` in this (single-threaded) process, so that those signals wait in the
/// pending set until read from a signalfd.
pub fn block_signals(set: &SigSet) -> io::Result<()> {
    // SAFETY: the raw system call takes a pointer to an 8-byte kernel sigset, which
    // `set.0` is; the old mask is not wanted (null).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_BLOCK,
            &set.0 as *const u64,
            ptr::null_mut::<u64>(),
            KERNEL_SIGSET_SIZE,
        )
    };
    check(ret as c_int).map(drop)
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
    // SAFETY: -1 asks for a new descriptor; the raw system call reads an 8-byte kernel
    // sigset from the pointer, which `set.0` is.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_signalfd4,
            -1,
            &set.0 as *const u64,
            KERNEL_SIGSET_SIZE,
            libc::SFD_NONBLOCK | libc::SFD_CLOEXEC,
        )
    };
    let fd = check(fd as c_int)?;
    // SAFETY: signalfd returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads one pending signal from a non-blocking signalfd, with the pid that sent it
/// (0 from the kernel); `None` when none is pending.
pub fn read_signal(fd: &OwnedFd) -> io::Result<Option<(c_int, Pid)>> {
    // SAFETY: signalfd_siginfo is plain data.
    let mut info: libc::signalfd_siginfo = unsafe { mem::zeroed() };
    let size = mem::size_of::<libc::signalfd_siginfo>();
    loop {
        // SAFETY: `info` is a writable buffer of exactly `size` bytes.
        let n = unsafe { libc::read(fd.as_raw_fd(), ptr::addr_of_mut!(info).cast(), size) };
        if n == size as isize {
            return Ok(Some((info.ssi_signo as c_int, info.ssi_pid as Pid)));
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

/// Waits until one of `fds` is readable or `timeout` passes (`None`: no time limit).
/// Returns, for each of `fds`, whether it is readable. This is where start_server
/// sleeps.
pub fn wait_readable(fds: &[RawFd], timeout: Option<Duration>) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ts = timeout.map(timespec);
    let ts_ptr = ts
        .as_ref()
        .map_or(ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `pfds` holds `pfds.len()` valid pollfds; `ts_ptr` is null or points to a
    // live timespec; a null sigmask keeps the current mask.
    let n = unsafe {
        libc::ppoll(
            pfds.as_mut_ptr(),
            pfds.len() as libc::nfds_t,
            ts_ptr,
            ptr::null(),
        )
    };
    match n {
        -1 if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => {
            Ok(vec![false; fds.len()])
        }
        -1 => Err(io::Error::last_os_error()),
        // An error or hang-up counts as readable: the reader then sees it.
        _ => Ok(pfds.iter().map(|p| p.revents != 0).collect()),
    }
}

fn timespec(t: Duration) -> libc::timespec {
    libc::timespec {
        // Capped at 68 years, which fits time_t on every target.
        tv_sec: t.as_secs().min(i32::MAX as u64) as _,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    }
}

/// Sleeps until a SIGCHLD is pending (start_server keeps it blocked) or `timeout`
/// passes, and takes it off the pending set: how start_server waits for its logger at
/// exit, once the main loop's signalfd is gone.
pub fn wait_child_signal(timeout: Duration) -> io::Result<()> {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { mem::zeroed() };
    let ts = timespec(timeout);
    // SAFETY: `set` is a valid sigset and `ts` a live timespec; no siginfo is wanted
    // (null).
    let ret = unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        libc::sigtimedwait(&set, ptr::null_mut(), &ts)
    };
    match ret {
        -1 => match errno() {
            libc::EAGAIN | libc::EINTR => Ok(()),
            _ => Err(io::Error::last_os_error()),
        },
        _ => Ok(()),
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
    match waitpid_nohang(-1) {
        Err(e) if e.raw_os_error() == Some(libc::ECHILD) => Ok(None),
        result => result,
    }
}

/// Reaps the child `pid` if it has exited, without blocking: its raw wait status, or
/// `None` while it runs. ECHILD (already reaped, or not a child) is an error.
pub fn reap_child(pid: Pid) -> io::Result<Option<c_int>> {
    Ok(waitpid_nohang(pid)?.map(|(_, status)| status))
}

fn waitpid_nohang(pid: Pid) -> io::Result<Option<(Pid, c_int)>> {
    let mut status: c_int = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer.
        match unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } {
            0 => return Ok(None),
            -1 if errno() == libc::EINTR => continue,
            -1 => return Err(io::Error::last_os_error()),
            pid => return Ok(Some((pid, status))),
        }
    }
}

/// Marks start_server as a subreaper: processes orphaned below its workers are
/// reparented to it (not to PID 1), so that it reaps them and no zombie is left.
pub fn become_subreaper() -> io::Result<()> {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes plain integers.
    check(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong) }).map(drop)
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

/// Asks for a pipe buffer of `size` bytes (F_SETPIPE_SZ; unprivileged processes get
/// at most /proc/sys/fs/pipe-max-size).
pub fn set_pipe_size(fd: &OwnedFd, size: c_int) -> io::Result<()> {
    // SAFETY: fcntl(F_SETPIPE_SZ) takes an integer; no memory is involved.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, size) }).map(drop)
}

/// How many bytes wait to be read in the pipe whose read end is `fd` (FIONREAD).
pub fn pipe_queued(fd: &OwnedFd) -> io::Result<usize> {
    let mut n: c_int = 0;
    // SAFETY: FIONREAD writes one int to the valid out-pointer.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) })?;
    Ok(n.max(0) as usize)
}

/// One write(2): how many bytes were written.
pub fn write(fd: RawFd, bytes: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `bytes` is a readable buffer of `bytes.len()` bytes.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        match n {
            -1 if errno() == libc::EINTR => continue,
            -1 => return Err(io::Error::last_os_error()),
            n => return Ok(n as usize),
        }
    }
}

/// One send(2) that never waits (MSG_DONTWAIT), nor raises SIGPIPE: how start_server
/// writes its lines to a stderr that is a socket.
pub fn send_nowait(fd: RawFd, bytes: &[u8]) -> io::Result<usize> {
    loop {
        let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
        // SAFETY: `bytes` is a readable buffer of `bytes.len()` bytes.
        let n = unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), flags) };
        match n {
            -1 if errno() == libc::EINTR => continue,
            -1 => return Err(io::Error::last_os_error()),
            n => return Ok(n as usize),
        }
    }
}

/// Whether a write to `fd` can go through now (poll(2) with no wait).
pub fn writable_now(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd, a zero timeout.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n == 1 && pfd.revents & libc::POLLOUT != 0
}

/// Clears O_NONBLOCK on the file description of `fd`.
pub fn clear_nonblocking(fd: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: fcntl(F_GETFL/F_SETFL) takes and returns integers.
    let flags = check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    // SAFETY: as above.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) })
        .map(drop)
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

/// Has the child of `command` start clean, as a worker does: between fork and exec
/// it resets its signals (`child_reset_signals`) and marks every descriptor above
/// stderr close-on-exec, so that the program inherits its stdin, stdout and stderr
/// from start_server and nothing else (no listening socket).
pub fn exec_clean(command: &mut std::process::Command) {
    let limit = descriptor_limit();
    // SAFETY: std runs the closure in the child, between fork and exec. It only makes
    // the raw system calls of the two functions below, which are async-signal-safe,
    // and allocates nothing (it captures one integer).
    unsafe {
        command.pre_exec(move || {
            child_reset_signals();
            child_cloexec_above_stdio(limit);
            Ok(())
        });
    }
}

/// The soft limit on open descriptors, capped at 65536: how far
/// `child_cloexec_above_stdio` goes on a kernel without close_range(2).
fn descriptor_limit() -> c_int {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    limit.rlim_cur.min(65536) as c_int
}

/// In the child: marks every descriptor above 2 close-on-exec, with one
/// close_range(2) (Linux 5.11), or on older kernels one fcntl per descriptor number
/// below `limit`.
fn child_cloexec_above_stdio(limit: c_int) {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC and fcntl(F_SETFD) change only
    // descriptor flags; both are plain, async-signal-safe system calls.
    unsafe {
        let first: libc::c_uint = 3;
        let all = libc::c_uint::MAX;
        if libc::syscall(libc::SYS_close_range, first, all, libc::CLOSE_RANGE_CLOEXEC) == 0 {
            return;
        }
        for fd in 3..limit {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
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

/// execveat(fd, "", ..., AT_EMPTY_PATH), in a child as in start_server itself: executes
/// the file `fd` was opened on. Returns only on failure, with errno.
pub fn child_execve_fd(fd: RawFd, argv: &[*const c_char], envp: &[*const c_char]) -> c_int {
    debug_assert!(argv.last().is_some_and(|p| p.is_null()));
    debug_assert!(envp.last().is_some_and(|p| p.is_null()));
    let empty = c"";
    // SAFETY: the path is an empty NUL-terminated string, as AT_EMPTY_PATH requires;
    // argv and envp are NULL-terminated arrays of NUL-terminated strings the caller
    // keeps alive. A raw system call, async-signal-safe.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            fd,
            empty.as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    errno()
}

/// In the child: writes `bytes` to `fd`, ignoring errors (used to report a failure
/// back to the parent, which then reports it).
pub fn child_write(fd: RawFd, bytes: &[u8]) {
    // SAFETY: `bytes` is a readable buffer; write is async-signal-safe.
    unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
}

/// In the child: dup2(2); false on failure.
pub fn child_dup2(from: RawFd, to: RawFd) -> bool {
    // SAFETY: dup2 on integer descriptors is async-signal-safe.
    unsafe { libc::dup2(from, to) != -1 }
}

/// In the child: closes every descriptor from `lowest` up (close_range(2); on a kernel
/// without it, they stay open, which the caller tolerates).
pub fn child_close_from(lowest: RawFd) {
    // SAFETY: a raw close_range system call on integer descriptors.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            lowest as libc::c_uint,
            libc::c_uint::MAX,
            0,
        )
    };
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

/// Sets O_NONBLOCK on `fd`'s open file description (shared with its duplicates).
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an integer descriptor has no memory-safety preconditions.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: as above.
    check(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) }).map(drop)
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

/// Eight random bytes from getrandom(2), without waiting for the kernel's pool at
/// early boot (GRND_NONBLOCK): `None` then, or on a kernel without the call.
pub fn random_u64() -> Option<u64> {
    let mut bytes = [0u8; 8];
    // SAFETY: `bytes` is a writable buffer of exactly the length passed.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), libc::GRND_NONBLOCK) };
    (n == bytes.len() as isize).then(|| u64::from_ne_bytes(bytes))
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
        // The path needs a terminating NUL inside sun_path.
        if path.is_empty() || path.contains(&0) {
            return None;
        }
        SockAddr::unix_bytes(path)
    }

    /// An address in the abstract namespace (`name` without the leading NUL).
    pub fn abstract_unix(name: &[u8]) -> Option<SockAddr> {
        let mut path = Vec::with_capacity(name.len() + 1);
        path.push(0);
        path.extend_from_slice(name);
        let mut addr = SockAddr::unix_bytes(&path)?;
        // No terminating NUL: every byte of an abstract name counts.
        addr.len -= 1;
        Some(addr)
    }

    /// `path` as sun_path's bytes, NUL-terminated (an abstract name starts with NUL).
    fn unix_bytes(path: &[u8]) -> Option<SockAddr> {
        // SAFETY: as in from_std.
        let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
        // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_un.
        let sun: &mut libc::sockaddr_un = unsafe { &mut *ptr::addr_of_mut!(storage).cast() };
        if path.len() >= sun.sun_path.len() {
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

/// A unix datagram socket, non-blocking and close-on-exec, that receives its senders'
/// credentials (SO_PASSCRED), bound to `name` in the abstract namespace, or, with
/// `None`, to a fresh name the kernel picks (autobind: five hex digits, never taken).
pub fn credential_socket(name: Option<&[u8]>) -> io::Result<(OwnedFd, SockAddr)> {
    let fd = socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_NONBLOCK)?;
    setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_PASSCRED, 1)?;
    match name {
        Some(name) => {
            let addr = SockAddr::abstract_unix(name)
                .ok_or_else(|| io::Error::from_raw_os_error(libc::ENAMETOOLONG))?;
            bind(&fd, &addr)?;
        }
        None => {
            // SAFETY: sa_family_t alone is a valid address of its own size: autobind.
            let family = libc::AF_UNIX as libc::sa_family_t;
            check(unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    ptr::addr_of!(family).cast(),
                    mem::size_of::<libc::sa_family_t>() as libc::socklen_t,
                )
            })?;
        }
    }
    let addr = SockAddr::local(&fd)?;
    Ok((fd, addr))
}

/// One datagram read by `receive`, with what the kernel says of its sender.
pub struct Datagram {
    pub len: usize,
    /// It did not fit the buffer: the rest is lost.
    pub truncated: bool,
    /// The sender's pid and uid (SCM_CREDENTIALS); `None` if the kernel sent none.
    pub credentials: Option<(Pid, libc::uid_t)>,
    pub from: SockAddr,
}

/// Reads one datagram, without blocking: `None` when none is waiting.
pub fn receive(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<Option<Datagram>> {
    // u64 elements keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 8];
    // SAFETY: as in from_std.
    let mut from: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = ptr::addr_of_mut!(from).cast();
    msg.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = mem::size_of_val(&control) as _;
    let n = loop {
        // SAFETY: `msg` points to live buffers of the sizes it states.
        let n = unsafe {
            libc::recvmsg(
                fd.as_raw_fd(),
                &mut msg,
                libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
            )
        };
        if n >= 0 {
            break n as usize;
        }
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => return Ok(None),
            _ => return Err(io::Error::last_os_error()),
        }
    };
    let mut credentials = None;
    // SAFETY: the CMSG_* macros walk the control buffer recvmsg filled in, within
    // msg_controllen; SCM_CREDENTIALS carries a ucred, read unaligned to be safe.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_CREDENTIALS
            {
                let cred: libc::ucred = ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                credentials = Some((cred.pid, cred.uid));
            } else if (*cmsg).cmsg_level == libc::SOL_SOCKET
                && (*cmsg).cmsg_type == libc::SCM_RIGHTS
            {
                // Descriptors passed along are not wanted: close them (they arrived
                // close-on-exec, so no worker got them meanwhile).
                let data = libc::CMSG_DATA(cmsg);
                let count = ((*cmsg).cmsg_len as usize - (data as usize - cmsg as usize))
                    / mem::size_of::<c_int>();
                for i in 0..count {
                    libc::close(ptr::read_unaligned(data.cast::<c_int>().add(i)));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(Some(Datagram {
        len: n.min(buf.len()),
        truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
        credentials,
        from: SockAddr {
            storage: from,
            len: msg.msg_namelen,
        },
    }))
}

/// Sends one datagram to `to`, without blocking.
pub fn send_to(fd: &OwnedFd, to: &SockAddr, bytes: &[u8]) -> io::Result<()> {
    // SAFETY: `bytes` is readable for its length; `to` is an initialised address.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            to.as_ptr(),
            to.len,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// CLOCK_MONOTONIC in microseconds, as systemd's MONOTONIC_USEC wants it.
pub fn monotonic_usec() -> u64 {
    // SAFETY: timespec is plain data, filled in by clock_gettime.
    let mut ts: libc::timespec = unsafe { mem::zeroed() };
    // SAFETY: a valid clock id and a writable timespec; it cannot fail then.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// The real uid of start_server.
pub fn getuid() -> libc::uid_t {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() }
}

pub fn bind(fd: &OwnedFd, addr: &SockAddr) -> io::Result<()> {
    // SAFETY: `addr` points to an initialised address of `addr.len` bytes.
    check(unsafe { libc::bind(fd.as_raw_fd(), addr.as_ptr(), addr.len) }).map(drop)
}

pub fn connect(fd: &OwnedFd, addr: &SockAddr) -> io::Result<()> {
    // SAFETY: as in bind.
    check(unsafe { libc::connect(fd.as_raw_fd(), addr.as_ptr(), addr.len) }).map(drop)
}

pub fn listen(fd: &impl AsRawFd, backlog: c_int) -> io::Result<()> {
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

/// A POSIX write lock (fcntl F_SETLK) on the whole file, besides the flock: the kernel
/// tells who holds this one (`lock_holder`), as the asker's PID namespace sees it.
/// It is this process's, not inherited by a fork, kept across execve, and released
/// when the process closes any descriptor of the file.
pub fn lock_record(fd: &impl AsRawFd) -> io::Result<()> {
    let mut lock = whole_file_write_lock();
    // SAFETY: F_SETLK reads the flock struct, which lives across the call.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETLK, &mut lock) }).map(drop)
}

/// Who holds a POSIX lock on the file that would conflict with a write lock on all
/// of it (fcntl F_GETLK): its pid as this process's PID namespace sees it, 0 if it is
/// in a namespace this one cannot see; `None` if no one does.
pub fn lock_holder(fd: &impl AsRawFd) -> io::Result<Option<Pid>> {
    let mut lock = whole_file_write_lock();
    // SAFETY: F_GETLK fills in the flock struct, which lives across the call.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETLK, &mut lock) })?;
    Ok((lock.l_type != libc::F_UNLCK as libc::c_short).then_some(lock.l_pid))
}

fn whole_file_write_lock() -> libc::flock {
    // SAFETY: flock is plain data; all zeroes is a valid value, and the fields that
    // matter are set below.
    let mut lock: libc::flock = unsafe { mem::zeroed() };
    lock.l_type = libc::F_WRLCK as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock
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

// ---------------------------------------------------------------- upgrading in place

/// Takes ownership of a descriptor the previous image handed over across execve (its
/// number written in the upgrade state), close-on-exec again as it was there; an error
/// if no such descriptor is open.
pub fn adopt_fd(fd: RawFd) -> io::Result<OwnedFd> {
    set_cloexec(fd, true)?;
    // SAFETY: the descriptor is open (F_SETFD succeeded), and nothing in this image has
    // claimed it: the upgrade state that names it is read once, and each descriptor it
    // names is adopted once (`upgrade::Plan::read` checks that no number appears twice).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The file type bits of an open descriptor (`S_IFSOCK`, `S_IFREG`, ...).
pub fn file_type(fd: RawFd) -> io::Result<libc::mode_t> {
    // SAFETY: stat is plain data, filled in by fstat.
    let mut st: libc::stat = unsafe { mem::zeroed() };
    // SAFETY: `st` is a writable stat; fstat on an integer descriptor.
    check(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st.st_mode & libc::S_IFMT)
}

/// An anonymous file in memory (memfd_create), close-on-exec: where the upgrade state
/// is written for the next image.
pub fn memfd(name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated; the flags are valid.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_memfd_create,
            name.as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    let fd = check(fd as c_int)?;
    // SAFETY: memfd_create returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Seals a memfd for good: no process that gets it can change its contents or size.
pub fn seal(fd: &impl AsRawFd) -> io::Result<()> {
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fcntl(F_ADD_SEALS) takes an integer argument.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) }).map(drop)
}

/// Reads a whole file from offset 0, whatever the descriptor's offset, without taking
/// the descriptor over; at most `max` bytes (more is an error).
pub fn read_whole(fd: RawFd, max: usize) -> io::Result<Vec<u8>> {
    let mut data = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        // SAFETY: `chunk` is a writable buffer of `chunk.len()` bytes.
        let n = unsafe {
            libc::pread(
                fd,
                chunk.as_mut_ptr().cast(),
                chunk.len(),
                data.len() as libc::off_t,
            )
        };
        match n {
            0 => return Ok(data),
            -1 if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => continue,
            -1 => return Err(io::Error::last_os_error()),
            n => data.extend_from_slice(&chunk[..n as usize]),
        }
        if data.len() > max {
            return Err(io::Error::from_raw_os_error(libc::EFBIG));
        }
    }
}

/// execveat(fd, "", ..., AT_EMPTY_PATH): executes the file `fd` was opened on, even if
/// it has been replaced or deleted since. Returns only on failure.
pub fn execve_fd(fd: RawFd, argv: &[*const c_char], envp: &[*const c_char]) -> io::Error {
    io::Error::from_raw_os_error(child_execve_fd(fd, argv, envp))
}

/// The path this image was executed by (the execve(2) argument, as the kernel keeps it
/// in the auxiliary vector: a symbolic link is not resolved), if the kernel has it.
pub fn exec_path() -> Option<std::ffi::OsString> {
    // SAFETY: getauxval reads this process's auxiliary vector; it has no preconditions.
    let at = unsafe { libc::getauxval(libc::AT_EXECFN) } as *const c_char;
    if at.is_null() {
        return None;
    }
    // SAFETY: AT_EXECFN points at a NUL-terminated string the kernel placed on the
    // initial stack, which lives as long as the process.
    let bytes = unsafe { CStr::from_ptr(at) }.to_bytes();
    use std::os::unix::ffi::OsStrExt;
    Some(std::ffi::OsStr::from_bytes(bytes).to_os_string())
}

impl SockAddr {
    /// The address as bytes, to be written into the upgrade state.
    pub fn to_bytes(&self) -> Vec<u8> {
        // SAFETY: `storage` is plain data of at least `len` bytes.
        let bytes: &[u8] = unsafe {
            std::slice::from_raw_parts(ptr::addr_of!(self.storage).cast(), self.len as usize)
        };
        bytes.to_vec()
    }

    /// The address `to_bytes` gave; `None` when it cannot be one.
    pub fn from_bytes(bytes: &[u8]) -> Option<SockAddr> {
        if bytes.len() < mem::size_of::<libc::sa_family_t>()
            || bytes.len() > mem::size_of::<libc::sockaddr_storage>()
        {
            return None;
        }
        // SAFETY: as in from_std.
        let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
        // SAFETY: `bytes` fits in `storage`, checked above; both are plain data.
        unsafe {
            ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                ptr::addr_of_mut!(storage).cast::<u8>(),
                bytes.len(),
            )
        };
        Some(SockAddr {
            storage,
            len: bytes.len() as libc::socklen_t,
        })
    }
}

/// What can be read from `fd` now, up to `max` bytes, without blocking: stops at EOF,
/// or where a read would wait (a writer still holds the other end).
pub fn read_available(fd: &OwnedFd, max: usize) -> io::Result<Vec<u8>> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    while data.len() < max && wait_readable(&[fd.as_raw_fd()], Some(Duration::ZERO))?[0] {
        // SAFETY: `buf` is a writable buffer of `buf.len()` bytes.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        match n {
            0 => break,
            -1 if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => continue,
            -1 => return Err(io::Error::last_os_error()),
            n => data.extend_from_slice(&buf[..n as usize]),
        }
    }
    data.truncate(max);
    Ok(data)
}
