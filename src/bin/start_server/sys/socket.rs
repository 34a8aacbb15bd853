//! Sockets: creation, options, addresses in the kernel's format, datagrams with
//! their sender's credentials.

use std::io;
use std::mem;
use std::os::raw::{c_char, c_int};
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr;

use super::{check, Pid};

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
