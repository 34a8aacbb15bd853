//! The control socket, through which `start_server --restart` asks the running
//! instance for a restart, and `start_server --upgrade` for an upgrade in place, and
//! learns how it went.
//!
//! A unix datagram socket in the abstract namespace, named after the instance's pid
//! (`@server_starter/PID/control`), so that the client finds it from the pid file and
//! there is no file to clean up. The client sends `RESTART` from a socket of its own;
//! the instance answers `ACCEPTED` at once, acts as on SIGHUP and, once the restart has
//! a verdict, answers `OK generation G` (the new generation runs alone) or
//! `FAILED generation G: why`. `UPGRADE` is answered the same way, by the new image.
//! Each side checks the other's credentials: the instance serves only its own uid and
//! root, and the client believes only the instance's pid.

use std::io;
use std::os::unix::io::{AsRawFd, OwnedFd, RawFd};

use crate::sys::{self, Pid, SockAddr};
use crate::throttle::Throttle;

pub const RESTART: &[u8] = b"RESTART";
/// The instance's first answer, at once: the client then knows it reached the instance
/// itself, not a socket another process took that name for, and waits for the verdict.
pub const ACCEPTED: &str = "ACCEPTED";

/// `start_server --upgrade`: acknowledged with `ACCEPTED`, then answered
/// `OK upgraded from ...` by the new image once it has taken over, or `FAILED why`
/// (see `supervisor::step`).
pub const UPGRADE: &[u8] = b"UPGRADE";

/// `start_server --status`: answered at once, with one datagram: a first line,
/// `SERVING` or `NOT-SERVING`, then the report, as a table or (`STATUS json`) JSON.
pub const STATUS: &[u8] = b"STATUS";
pub const STATUS_JSON: &[u8] = b"STATUS json";
pub const SERVING: &str = "SERVING";
pub const NOT_SERVING: &str = "NOT-SERVING";

/// What a client asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ask {
    Restart,
    Upgrade,
    Status { json: bool },
}

/// The socket's name for the instance `pid`, without the leading NUL.
pub fn name(pid: Pid) -> String {
    format!("server_starter/{pid}/control")
}

/// Whether an instance running as `instance` takes requests from `client` (uids, the
/// kernel's real ones): its own user's and root's only. The client checks it too,
/// rather than wait for an answer that will not come.
pub fn serves(instance: libc::uid_t, client: libc::uid_t) -> bool {
    client == instance || client == 0
}

pub struct ControlSocket {
    fd: OwnedFd,
}

/// A client's request: where to send the verdict.
pub struct Request {
    pub from: SockAddr,
    pub pid: Pid,
    pub ask: Ask,
}

impl ControlSocket {
    pub fn bind() -> io::Result<ControlSocket> {
        let name = name(std::process::id() as Pid);
        let (fd, _) = sys::credential_socket(Some(name.as_bytes()))?;
        Ok(ControlSocket { fd })
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The requests waiting, as many as `throttle` lets through; anything else is
    /// dropped with a log line, which `throttle` rate-limits.
    pub fn requests(&self, throttle: &mut Throttle) -> Vec<Request> {
        let mut requests = Vec::new();
        let mut buf = [0u8; 64];
        let read = throttle.read(&self.fd, &mut buf, |throttle, datagram, bytes| {
            let Some((pid, uid)) = datagram.credentials else {
                return;
            };
            if !serves(sys::getuid(), uid) {
                throttle.dropped(format_args!(
                    "ignored a control request from pid {pid}: uid {uid} is not start_server's"
                ));
                return;
            }
            let ask = match bytes {
                _ if datagram.truncated => None,
                RESTART => Some(Ask::Restart),
                UPGRADE => Some(Ask::Upgrade),
                STATUS => Some(Ask::Status { json: false }),
                STATUS_JSON => Some(Ask::Status { json: true }),
                _ => None,
            };
            match ask {
                Some(ask) => requests.push(Request {
                    from: datagram.from,
                    pid,
                    ask,
                }),
                None => throttle.dropped(format_args!(
                    "ignored a control request from pid {pid}: not understood"
                )),
            }
        });
        if let Err(e) = read {
            crate::log!("failed to read the control socket: {e}");
        }
        requests
    }

    /// The socket of the previous image, after an upgrade in place.
    pub fn taken_over(fd: OwnedFd) -> ControlSocket {
        ControlSocket { fd }
    }

    /// Sends a verdict; a client that has gone away meanwhile is no error, nor one
    /// that reads nothing (the send does not wait: its queue full, the answer is lost).
    /// Each is sent from a socket of its own, gone once sent: what waits unread in a
    /// client's queue is charged to the socket that sent it, and a client that never
    /// reads would otherwise fill the control socket's send buffer and silence every
    /// answer to everyone. The client believes the sender's pid (SCM_CREDENTIALS),
    /// which is the same from any socket of start_server's.
    pub fn reply(&self, to: &SockAddr, verdict: &str) -> io::Result<()> {
        let socket = sys::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_NONBLOCK)?;
        sys::send_to(&socket, to, verdict.as_bytes())
    }
}
