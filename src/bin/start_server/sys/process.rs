//! Processes: reaping children, replacing this image, detaching, and process
//! attributes. (Starting a child is `child.rs`.)

use std::ffi::CStr;
use std::io;
use std::os::raw::c_int;
use std::os::unix::io::RawFd;

use super::child::{self, CStrArray};
use super::{check, errno, Pid};

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

/// Waits for the child `pid` to exit and reaps it: its raw wait status.
pub fn wait_child(pid: Pid) -> io::Result<c_int> {
    let mut status: c_int = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer.
        match unsafe { libc::waitpid(pid, &mut status, 0) } {
            -1 if errno() == libc::EINTR => continue,
            -1 => return Err(io::Error::last_os_error()),
            _ => return Ok(status),
        }
    }
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

/// execveat(fd, "", ..., AT_EMPTY_PATH): executes the file `fd` was opened on, even if
/// it has been replaced or deleted since. Returns only on failure.
pub fn execve_fd(fd: RawFd, argv: &CStrArray, envp: &CStrArray) -> io::Error {
    io::Error::from_raw_os_error(child::execveat(fd, argv, envp))
}

/// Forks; the parent runs `parent` with the child's pid, then exits 0 (unless `parent`
/// exits otherwise), and this returns in the child, which goes on as start_server: how
/// --daemonize detaches.
pub fn fork_into_child(parent: impl FnOnce(Pid)) -> io::Result<()> {
    // SAFETY: start_server starts no thread, so no lock is held by another thread at
    // fork and the child, a consistent copy, may run any code.
    match unsafe { child::fork() }? {
        0 => Ok(()),
        pid => {
            parent(pid);
            std::process::exit(0)
        }
    }
}

/// The path this image was executed by (the execve(2) argument, as the kernel keeps it
/// in the auxiliary vector: a symbolic link is not resolved), if the kernel has it.
pub fn exec_path() -> Option<std::ffi::OsString> {
    // SAFETY: getauxval reads this process's auxiliary vector; it has no preconditions.
    let at = unsafe { libc::getauxval(libc::AT_EXECFN) } as *const std::os::raw::c_char;
    if at.is_null() {
        return None;
    }
    // SAFETY: AT_EXECFN points at a NUL-terminated string the kernel placed on the
    // initial stack, which lives as long as the process.
    let bytes = unsafe { CStr::from_ptr(at) }.to_bytes();
    use std::os::unix::ffi::OsStrExt;
    Some(std::ffi::OsStr::from_bytes(bytes).to_os_string())
}
