//! start_server under a service manager: with `NOTIFY_SOCKET` in its own environment
//! (systemd's `Type=notify` or `Type=notify-reload`), it reports its own state, as a
//! worker reports to it: `READY=1` once generation 1 has started; on a restart
//! `RELOADING=1`, then `READY=1` once the restart has succeeded or failed (so that
//! `systemctl reload` never hangs); `STOPPING=1` on a stop; and `STATUS=` lines that
//! say which generation serves.
//!
//! Sent without blocking, as systemd's own clients do: a manager that does not read
//! its socket (its queue holds ten datagrams) must never stop start_server. A
//! notification that does not fit is dropped and counted; the count is logged with
//! the next one that goes through.

use std::cell::Cell;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;

use crate::sys::{self, SockAddr};

pub struct Manager {
    socket: OsString,
    /// Notifications dropped since the last one that went through.
    dropped: Cell<u64>,
}

impl Manager {
    /// Takes the manager's variables out of start_server's environment, before
    /// anything is spawned, so that no child (a worker, the `| cmd` logger) ever
    /// mistakes the manager's socket or watchdog for its own, as `inherited::take`
    /// does with the sockets' (start_server does not keep a watchdog of its own).
    pub fn from_environment() -> Option<Manager> {
        let socket = std::env::var_os("NOTIFY_SOCKET");
        for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            std::env::remove_var(var);
        }
        let socket = socket?;
        // Empty, as sd_notify takes it: nobody listens.
        (!socket.is_empty()).then(|| Manager::taken_over(socket))
    }

    /// For an upgrade in place: the socket, which is no longer in the environment.
    pub fn socket(&self) -> &OsStr {
        &self.socket
    }

    pub fn taken_over(socket: OsString) -> Manager {
        Manager {
            socket,
            dropped: Cell::new(0),
        }
    }

    pub fn ready(&self, status: &str) {
        self.tell(&format!("READY=1\nSTATUS={status}"));
    }

    pub fn reloading(&self, status: &str) {
        let now = sys::monotonic_usec();
        self.tell(&format!(
            "RELOADING=1\nMONOTONIC_USEC={now}\nSTATUS={status}"
        ));
    }

    pub fn stopping(&self) {
        self.tell("STOPPING=1\nSTATUS=stopping");
    }

    fn tell(&self, state: &str) {
        let shown = self.socket.as_bytes().escape_ascii();
        match self.send(state.as_bytes()) {
            Ok(()) => {
                let dropped = self.dropped.replace(0);
                if dropped > 0 {
                    log!(
                        "dropped {dropped} notifications to the service manager \
                         (NOTIFY_SOCKET=\"{shown}\") before this one: its socket was full"
                    );
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.dropped.set(self.dropped.get() + 1);
            }
            Err(e) => log!("failed to notify the service manager (NOTIFY_SOCKET=\"{shown}\"): {e}"),
        }
    }

    /// One datagram to `NOTIFY_SOCKET` (`@abstract` or `/path`), from a fresh socket,
    /// without blocking.
    fn send(&self, state: &[u8]) -> io::Result<()> {
        let to = match self.socket.as_bytes().split_first() {
            Some((b'@', name)) if !name.is_empty() => SockAddr::abstract_unix(name),
            Some((b'/', _)) => SockAddr::unix(self.socket.as_bytes()),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "neither an absolute path nor @abstract",
                ))
            }
        };
        let to = to.ok_or_else(|| io::Error::from_raw_os_error(libc::ENAMETOOLONG))?;
        let fd = sys::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_NONBLOCK)?;
        sys::send_to(&fd, &to, state)
    }
}
