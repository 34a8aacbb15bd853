//! Descriptors and files: pipes, reads and writes, flags, locks, and taking over
//! descriptors handed to this process.

use std::ffi::CStr;
use std::io;
use std::mem;
use std::os::raw::c_int;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use super::time::timespec;
use super::{check, errno};

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

// ---------------------------------------------------------------- descriptors and files

/// Sets or clears FD_CLOEXEC: the listening sockets are the only descriptors of ours a
/// worker inherits. A descriptor made inheritable counts as taken (see `adopt_fd`).
pub fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: fcntl on an integer descriptor has no memory-safety preconditions.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    let flags = if on {
        flags | libc::FD_CLOEXEC
    } else {
        claim(fd);
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

/// dup2(2); the new descriptor is inheritable (dup2 clears FD_CLOEXEC), and counts
/// as taken (see `adopt_fd`). What `to` was is replaced: stdio, or a number reserved
/// for a socket.
pub fn dup2(from: RawFd, to: RawFd) -> io::Result<()> {
    claim(to);
    // SAFETY: dup2 on integer descriptors has no memory-safety preconditions.
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
/// this process (`LISTEN_FDS`). Returns `None` when it is not one that was passed (see
/// `adopt_fd`).
pub fn take_inherited_fd(fd: RawFd) -> Option<OwnedFd> {
    take_handed(fd).ok()
}

/// Takes ownership of a descriptor the previous image handed over across execve (its
/// number written in the upgrade state), close-on-exec again as it was there; an error
/// if no such descriptor was handed over.
///
/// Ownership by number is sound only for a descriptor that nothing else in this
/// process owns, which is checked: the descriptor must be open, inheritable (every
/// descriptor start_server opens is close-on-exec, until `set_cloexec` or `dup2` make
/// it inheritable, which marks it taken), and not taken before.
pub fn adopt_fd(fd: RawFd) -> io::Result<OwnedFd> {
    let owned = take_handed(fd)?;
    set_cloexec(fd, true)?;
    Ok(owned)
}

/// Descriptor numbers that have an owner known by number: taken over by `adopt_fd` or
/// `take_inherited_fd`, or made inheritable by start_server itself.
static TAKEN: Mutex<Vec<RawFd>> = Mutex::new(Vec::new());

/// Marks `fd` taken; false if it was already.
fn claim(fd: RawFd) -> bool {
    // A poisoned lock still holds a consistent list: every push is complete.
    let mut taken = TAKEN.lock().unwrap_or_else(PoisonError::into_inner);
    if taken.contains(&fd) {
        return false;
    }
    taken.push(fd);
    true
}

/// `fd` as an owned descriptor, if this process received it across execve and nothing
/// has taken it yet.
fn take_handed(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_GETFD only queries the descriptor table.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    if flags & libc::FD_CLOEXEC != 0 || !claim(fd) {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("descriptor {fd} was not handed over, or is taken already"),
        ));
    }
    // SAFETY: `fd` is open and inheritable, so it was received across execve (this
    // process opens every descriptor close-on-exec and marks taken those it makes
    // inheritable), and `claim` has just recorded its one owner.
    Ok(unsafe { own(fd) })
}

/// Takes ownership of descriptor number `fd`.
///
/// # Safety
///
/// `fd` must be open, and nothing else may own it (close it) while the returned value
/// lives.
unsafe fn own(fd: RawFd) -> OwnedFd {
    // SAFETY: the caller's promise above is OwnedFd's requirement.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Makes the free descriptor number `target` an open, close-on-exec descriptor (on
/// /dev/null) owned by the caller, so that no socket created meanwhile lands there.
pub fn occupy_fd(target: RawFd) -> io::Result<OwnedFd> {
    let null = OwnedFd::from(std::fs::File::open("/dev/null")?);
    if null.as_raw_fd() == target {
        // `target` was the lowest free descriptor: open(2) took it already.
        return Ok(null);
    }
    if fd_is_open(target) {
        return Err(io::Error::from_raw_os_error(libc::EBUSY));
    }
    // SAFETY: dup3 on integer descriptors has no memory-safety preconditions; `target`
    // is not open, so nothing is replaced.
    check(unsafe { libc::dup3(null.as_raw_fd(), target, libc::O_CLOEXEC) })?;
    // SAFETY: dup3 made `target` a new descriptor that only the returned value owns.
    Ok(unsafe { OwnedFd::from_raw_fd(target) })
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
pub fn lock_holder(fd: &impl AsRawFd) -> io::Result<Option<super::Pid>> {
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

/// The file type bits of an open descriptor (`S_IFSOCK`, `S_IFREG`, ...).
pub fn file_type(fd: RawFd) -> io::Result<libc::mode_t> {
    Ok(fstat(fd)?.st_mode & libc::S_IFMT)
}

/// The inode number of an open descriptor: for a socket, the number /proc shows as
/// `socket:[INODE]`, whoever holds it at whatever descriptor.
pub fn inode(fd: RawFd) -> io::Result<u64> {
    Ok(fstat(fd)?.st_ino)
}

fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: stat is plain data, filled in by fstat.
    let mut st: libc::stat = unsafe { mem::zeroed() };
    // SAFETY: `st` is a writable stat; fstat on an integer descriptor.
    check(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st)
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
