//! Thin wrappers over the few libc calls the library makes. The rest of the crate
//! is safe code; every `unsafe` block outside `ffi.rs` is here.
//!
//! None of these allocate and, but for `take_once`, none needs std: a failure is a
//! plain [`Errno`], so the C API can use them in a build without std. What only
//! the Rust API uses is compiled only with the `std` feature.

use core::ffi::{c_int, CStr};
use core::mem::{size_of, MaybeUninit};
#[cfg(feature = "std")]
use std::os::fd::{FromRawFd, OwnedFd};

/// A descriptor number (what `std::os::fd::RawFd` is, without needing std).
pub type RawFd = c_int;

/// A failed system call's `errno`. With std it converts into the `io::Error`
/// that `io::Error::last_os_error()` would have given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub c_int);

impl Errno {
    /// The calling thread's current `errno`.
    pub fn last() -> Self {
        // SAFETY: the libc function returns a valid pointer to this thread's errno.
        Errno(unsafe { *errno_location() })
    }
}

// Where libc keeps the thread's errno, as std's own `errno()` finds it.
#[cfg(any(
    target_os = "linux",
    target_os = "emscripten",
    target_os = "l4re",
    target_os = "hurd",
    target_os = "redox",
    target_os = "dragonfly"
))]
use libc::__errno_location as errno_location;

#[cfg(any(
    target_os = "android",
    target_os = "netbsd",
    target_os = "openbsd",
    target_os = "cygwin"
))]
use libc::__errno as errno_location;

#[cfg(any(target_vendor = "apple", target_os = "freebsd"))]
use libc::__error as errno_location;

#[cfg(feature = "std")]
impl From<Errno> for std::io::Error {
    fn from(e: Errno) -> Self {
        std::io::Error::from_raw_os_error(e.0)
    }
}

/// The value of an environment variable, without the terminating NUL.
///
/// # Safety
///
/// The result borrows libc's environment: it is valid only as long as nothing
/// calls `setenv`, `putenv` or `unsetenv` (from any thread). The caller must not
/// keep it past the call of the public function that asked for it.
pub unsafe fn getenv<'a>(name: &CStr) -> Option<&'a [u8]> {
    // SAFETY: `name` is NUL-terminated; getenv returns NULL or a NUL-terminated
    // string that stays valid under the contract stated above.
    unsafe {
        let value = libc::getenv(name.as_ptr());
        if value.is_null() {
            None
        } else {
            Some(CStr::from_ptr(value).to_bytes())
        }
    }
}

/// The calling process's id.
pub fn getpid() -> i32 {
    // SAFETY: getpid has no preconditions and cannot fail.
    unsafe { libc::getpid() }
}

/// What the kernel says about a socket descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketInfo {
    /// `AF_INET`, `AF_INET6`, `AF_UNIX`, ...
    pub family: i32,
    /// `SOCK_STREAM`, `SOCK_DGRAM`, ...
    pub socktype: i32,
    /// The local port in host byte order; 0 for families without ports.
    pub port: u16,
}

/// Family, type and port of `fd` from `getsockopt(SO_TYPE)` and `getsockname`.
/// Fails with `EBADF` when `fd` is not open and `ENOTSOCK` when it is not a socket.
pub fn socket_info(fd: RawFd) -> Result<SocketInfo, Errno> {
    let mut socktype: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the option buffer is a c_int and `len` says so.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut socktype as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(Errno::last());
    }

    let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `storage` is large enough for any address and `len` says how large.
    let rc = unsafe { libc::getsockname(fd, storage.as_mut_ptr().cast(), &mut len) };
    if rc != 0 {
        return Err(Errno::last());
    }
    // SAFETY: zero-initialised, then (partly) written by the kernel: every bit
    // pattern is a valid sockaddr_storage.
    let storage = unsafe { storage.assume_init() };
    let family = i32::from(storage.ss_family);
    let port = match family {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in, which fits in and has no
            // stricter alignment than sockaddr_storage.
            let sin = unsafe {
                &*(&storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            u16::from_be(sin.sin_port)
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe {
                &*(&storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            u16::from_be(sin6.sin6_port)
        }
        _ => 0,
    };
    Ok(SocketInfo {
        family,
        socktype,
        port,
    })
}

/// A unix socket address (`sockaddr_un`) and how many of its bytes count.
pub struct UnixAddress {
    raw: libc::sockaddr_un,
    len: libc::socklen_t,
}

impl UnixAddress {
    /// A filesystem socket at `path`, NUL-terminated in `sun_path`. `None` when
    /// it does not fit, terminating NUL included.
    pub fn path(path: &[u8]) -> Option<Self> {
        Self::new(path, 0, 1)
    }

    /// The abstract socket `name`: `sun_path` is a NUL then the name, and the
    /// address is exactly that long (no terminating NUL: it would be part of
    /// the name). `None` when it does not fit.
    pub fn abstract_name(name: &[u8]) -> Option<Self> {
        Self::new(name, 1, 0)
    }

    /// `bytes` at `sun_path[at..]`, followed by `trailing` NUL bytes.
    fn new(bytes: &[u8], at: usize, trailing: usize) -> Option<Self> {
        // SAFETY: sockaddr_un is plain integers and arrays of them: all zeros
        // is a valid value (and the NULs the address needs).
        let mut raw: libc::sockaddr_un = unsafe { MaybeUninit::zeroed().assume_init() };
        raw.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let end = at.checked_add(bytes.len())?;
        let used = end.checked_add(trailing)?;
        if used > raw.sun_path.len() {
            return None;
        }
        for (dst, &src) in raw.sun_path.get_mut(at..end)?.iter_mut().zip(bytes) {
            *dst = src as libc::c_char;
        }
        let len = core::mem::offset_of!(libc::sockaddr_un, sun_path).checked_add(used)?;
        Some(UnixAddress {
            raw,
            len: libc::socklen_t::try_from(len).ok()?,
        })
    }
}

/// Closes the descriptor it owns when dropped.
struct Closing(RawFd);

impl Drop for Closing {
    fn drop(&mut self) {
        // SAFETY: the descriptor was opened by `send_datagram` and is closed once,
        // here; a failed close leaves nothing to do.
        unsafe { libc::close(self.0) };
    }
}

/// Sends `data` as one datagram to `to` from a new, unbound unix datagram
/// socket, closed again before returning. Blocks while the receiver's queue is
/// full (as `sd_notify` does); retries when a signal interrupts it.
pub fn send_datagram(to: &UnixAddress, data: &[u8]) -> Result<(), Errno> {
    // SAFETY: socket takes plain integers.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(Errno::last());
    }
    let socket = Closing(fd);
    loop {
        // SAFETY: `data` is readable for its length; the first `to.len` bytes of
        // `to.raw`, a sockaddr_un, are the address.
        let sent = unsafe {
            libc::sendto(
                socket.0,
                data.as_ptr().cast(),
                data.len(),
                libc::MSG_NOSIGNAL,
                (&to.raw as *const libc::sockaddr_un).cast(),
                to.len,
            )
        };
        if sent >= 0 {
            // A datagram is sent whole or not at all.
            return Ok(());
        }
        let error = Errno::last();
        if error.0 != libc::EINTR {
            return Err(error);
        }
    }
}

/// Sets `FD_CLOEXEC` on `fd`, keeping its other descriptor flags (Rust API only).
#[cfg(feature = "std")]
pub fn set_cloexec(fd: RawFd) -> Result<(), Errno> {
    // SAFETY: F_GETFD/F_SETFD take and return plain integers; a bad fd is EBADF.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) < 0 {
            return Err(Errno::last());
        }
    }
    Ok(())
}

/// The inode number of the file `fd` refers to (for a socket, its sockfs inode;
/// Rust API only).
#[cfg(feature = "std")]
pub fn inode(fd: RawFd) -> Result<u64, Errno> {
    let mut st = MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: `st` is a writable stat buffer; a bad fd is EBADF.
    if unsafe { libc::fstat(fd, st.as_mut_ptr()) } != 0 {
        return Err(Errno::last());
    }
    // SAFETY: zero-initialised, then filled in by fstat.
    #[allow(clippy::useless_conversion)] // st_ino is narrower than u64 on some targets
    Ok(u64::from(unsafe { st.assume_init() }.st_ino))
}

/// Takes ownership of an inherited descriptor, once: `None` when it was taken
/// before (Rust API only).
#[cfg(feature = "std")]
pub fn take_once(fd: RawFd) -> Result<Option<OwnedFd>, Errno> {
    /// Sockets already turned into owned sockets, as (descriptor, socket inode):
    /// handing one out twice would let two owners close it. The inode tells a
    /// descriptor number that was closed and reused for another socket from the
    /// one handed out (sockfs inode numbers are not reused while a socket lives).
    static TAKEN: std::sync::Mutex<std::vec::Vec<(RawFd, u64)>> =
        std::sync::Mutex::new(std::vec::Vec::new());
    let key = (fd, inode(fd)?);
    // A poisoned lock still holds a consistent list: every push is complete.
    let mut taken = TAKEN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if taken.contains(&key) {
        return Ok(None);
    }
    taken.push(key);
    // SAFETY: the descriptor is open (fstat succeeded), inherited from our parent
    // for this process to use, and handed out here once, so it has no other owner.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Ends the process at once (a panic without std, which must not unwind).
#[cfg(not(feature = "std"))]
pub fn abort() -> ! {
    // SAFETY: abort has no preconditions and does not return.
    unsafe { libc::abort() }
}

/// The precompiled `core` is built to unwind, so its code still names the
/// personality routine that std would provide, and a shared library that leaves
/// the name undefined fails to load (`dlopen`: undefined symbol). With
/// `panic = "abort"` nothing ever unwinds, so the routine is never called.
///
/// Defined in assembly, as an alias of this function, because only there can a
/// symbol be made hidden on stable Rust: the shared library must export nothing
/// but `server_starter_*` (and so cannot stand in for another library's routine).
#[cfg(all(not(feature = "std"), not(test)))]
extern "C" fn personality_never_called() {
    abort()
}

// SAFETY: the assembly only defines a symbol, as an alias of a Rust function
// that never returns; it runs no code of its own.
#[cfg(all(not(feature = "std"), not(test)))]
core::arch::global_asm!(
    ".globl rust_eh_personality",
    ".hidden rust_eh_personality",
    ".set rust_eh_personality, {f}",
    f = sym personality_never_called,
);
