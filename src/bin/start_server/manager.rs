//! start_server under a service manager: with `NOTIFY_SOCKET` in its own environment
//! (systemd's `Type=notify` or `Type=notify-reload`), it reports its own state, as a
//! worker reports to it: `READY=1` once generation 1 has started; on a restart
//! `RELOADING=1`, then `READY=1` once the restart has succeeded or failed (so that
//! `systemctl reload` never hangs); `STOPPING=1` on a stop; and `STATUS=` lines that
//! say which generation serves.

use std::ffi::{OsStr, OsString};

use crate::sys;

pub struct Manager {
    socket: OsString,
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
        Some(Manager { socket: socket? })
    }

    /// For an upgrade in place: the socket, which is no longer in the environment.
    pub fn socket(&self) -> &OsStr {
        &self.socket
    }

    pub fn taken_over(socket: OsString) -> Manager {
        Manager { socket }
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
        if let Err(e) = server_starter::notify_to(Some(&self.socket), state) {
            log!("failed to notify the service manager: {e}");
        }
    }
}
