//! The receiving end of sd_notify messages, as a supervisor binds it: a unix
//! datagram socket with `SO_PASSCRED`, so that each message arrives with the
//! sender's pid, uid and gid (`SCM_CREDENTIALS`), which the sender cannot forge.

use std::io;
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// One datagram and who sent it.
#[derive(Debug)]
pub struct Notification {
    pub text: String,
    pub pid: i32,
    pub uid: u32,
}

impl Notification {
    /// Whether one of its newline-separated assignments is exactly `assignment`.
    pub fn has(&self, assignment: &str) -> bool {
        self.text.lines().any(|line| line == assignment)
    }
}

pub struct NotifySocket {
    socket: UnixDatagram,
    /// What NOTIFY_SOCKET must be set to for a sender to reach it.
    pub env: String,
}

impl NotifySocket {
    /// An abstract socket with a name no other test uses (`@...`).
    pub fn new_abstract() -> NotifySocket {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "server_starter_test/{}/{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let addr = SocketAddr::from_abstract_name(&name).expect("an abstract address");
        let socket = UnixDatagram::bind_addr(&addr)
            .unwrap_or_else(|e| panic!("binding the abstract socket @{name}: {e}"));
        NotifySocket::with_passcred(socket, format!("@{name}"))
    }

    /// A socket in the filesystem at `path`.
    pub fn at_path(path: &Path) -> NotifySocket {
        let socket =
            UnixDatagram::bind(path).unwrap_or_else(|e| panic!("binding {}: {e}", path.display()));
        NotifySocket::with_passcred(socket, path.display().to_string())
    }

    fn with_passcred(socket: UnixDatagram, env: String) -> NotifySocket {
        let one: libc::c_int = 1;
        // SAFETY: setsockopt reads a c_int of the stated size from a live local.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PASSCRED,
                (&one as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(
            rc,
            0,
            "SO_PASSCRED on {env}: {}",
            io::Error::last_os_error()
        );
        NotifySocket { socket, env }
    }

    /// The next message, waiting up to `timeout` for it.
    pub fn recv(&self, timeout: Duration) -> io::Result<Notification> {
        self.socket.set_read_timeout(Some(timeout))?;
        self.recv_with(0)
    }

    /// The next message if one is queued already.
    pub fn try_recv(&self) -> io::Result<Notification> {
        self.recv_with(libc::MSG_DONTWAIT)
    }

    fn recv_with(&self, flags: libc::c_int) -> io::Result<Notification> {
        let mut buf = [0u8; 4096];
        // u64s: aligned for a cmsghdr.
        let mut control = [0u64; 16];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of_val(&control) as _;
        // SAFETY: msg points at `iov` and `control`, which outlive the call and
        // are as large as it says.
        let n = unsafe { libc::recvmsg(self.socket.as_raw_fd(), &mut msg, flags) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut credentials = None;
        // SAFETY: the CMSG_* macros walk the control data recvmsg filled in and
        // reported in msg_controllen; SCM_CREDENTIALS data is a ucred, read
        // unaligned.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET
                    && (*cmsg).cmsg_type == libc::SCM_CREDENTIALS
                {
                    credentials =
                        Some(libc::CMSG_DATA(cmsg).cast::<libc::ucred>().read_unaligned());
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        let credentials = credentials.ok_or_else(|| {
            io::Error::other(format!("a message on {} without credentials", self.env))
        })?;
        Ok(Notification {
            text: String::from_utf8_lossy(&buf[..n as usize]).into_owned(),
            pid: credentials.pid,
            uid: credentials.uid,
        })
    }
}
