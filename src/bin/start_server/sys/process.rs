//! Processes: starting a child (fork and exec, the child side prepared before fork),
//! reaping, replacing this image, and process attributes.

use std::ffi::CStr;
use std::io;
use std::os::raw::{c_char, c_int};
use std::os::unix::io::RawFd;
use std::os::unix::process::CommandExt;
use std::ptr;

use super::{check, errno, Pid};

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

/// The real uid of start_server.
pub fn getuid() -> libc::uid_t {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() }
}

/// setsid(2): a new session, without a controlling terminal.
pub fn setsid() -> io::Result<()> {
    // SAFETY: setsid has no memory-safety preconditions.
    check(unsafe { libc::setsid() }).map(drop)
}

/// execve(2), in start_server itself (not a forked child): replaces the image, keeping
/// the pid, the children and every descriptor without FD_CLOEXEC. Returns only on
/// failure.
pub fn execve(path: &CStr, argv: &[*const c_char], envp: &[*const c_char]) -> io::Error {
    let errno = child_execve(path, argv, envp);
    io::Error::from_raw_os_error(errno)
}

/// execveat(fd, "", ..., AT_EMPTY_PATH): executes the file `fd` was opened on, even if
/// it has been replaced or deleted since. Returns only on failure.
pub fn execve_fd(fd: RawFd, argv: &[*const c_char], envp: &[*const c_char]) -> io::Error {
    debug_assert!(argv.last().is_some_and(|p| p.is_null()));
    debug_assert!(envp.last().is_some_and(|p| p.is_null()));
    let empty = c"";
    // SAFETY: the path is an empty NUL-terminated string, as AT_EMPTY_PATH requires;
    // argv and envp are NULL-terminated arrays of NUL-terminated strings the caller
    // keeps alive.
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
    io::Error::last_os_error()
}
