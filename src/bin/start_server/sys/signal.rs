//! Signals: the blocked set read through a signalfd, dispositions, kill(2).

use std::io;
use std::mem;
use std::os::raw::c_int;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr;
use std::time::Duration;

use super::time::timespec;
use super::{check, errno, Pid};

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
