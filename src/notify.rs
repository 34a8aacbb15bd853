//! Telling the supervisor how the worker is doing, as `sd_notify(3)` does: one
//! datagram of `VAR=value` lines (`READY=1`, `STATUS=...`, `WATCHDOG=1`,
//! `STOPPING=1`) to the unix socket named by `NOTIFY_SOCKET`, which
//! start_server and systemd both set. The receiver learns the sender's pid
//! from the kernel (`SO_PASSCRED`), so the message needs no more than that.
//!
//! The core is allocation-free and needs only core and libc: the C API
//! (`server_starter_notify`) and the Rust API ([`notify`]) both call [`send`].

use crate::sys::{self, Errno, UnixAddress};

/// Why a notification was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// `NOTIFY_SOCKET` is neither `/absolute/path` nor `@abstract-name`
    /// (`EINVAL`).
    NotAnAddress,
    /// `NOTIFY_SOCKET` does not fit in `sun_path` (`ENAMETOOLONG`).
    TooLong,
    /// The state holds a NUL byte, which receivers reject (`EINVAL`; only Rust
    /// strings can hold one).
    NulInState,
    /// `socket` or `sendto` failed.
    Os(Errno),
}

impl Failure {
    /// The errno `sd_notify` would have returned, negated.
    pub(crate) fn errno(self) -> Errno {
        match self {
            Failure::NotAnAddress | Failure::NulInState => Errno(libc::EINVAL),
            Failure::TooLong => Errno(libc::ENAMETOOLONG),
            Failure::Os(e) => e,
        }
    }
}

/// The address `NOTIFY_SOCKET` names: `@name` is the abstract socket `name`,
/// `/path` a socket in the filesystem; anything else is not an address.
fn address(socket: &[u8]) -> Result<UnixAddress, Failure> {
    let found = match socket.split_first() {
        Some((b'@', name)) if !name.is_empty() => UnixAddress::abstract_name(name),
        // A NUL would silently cut the path short.
        Some((b'/', _)) if !socket.contains(&0) => UnixAddress::path(socket),
        _ => return Err(Failure::NotAnAddress),
    };
    found.ok_or(Failure::TooLong)
}

/// Sends `state` to `socket`, the value of `NOTIFY_SOCKET`: `Ok(false)` when it
/// is unset or empty (nobody is listening for notifications), `Ok(true)` once
/// the datagram is sent. A new socket each time, closed again: nothing is kept.
pub(crate) fn send(socket: Option<&[u8]>, state: &[u8]) -> Result<bool, Failure> {
    let socket = match socket {
        Some(socket) if !socket.is_empty() => socket,
        _ => return Ok(false),
    };
    let to = address(socket)?;
    if state.contains(&0) {
        return Err(Failure::NulInState);
    }
    sys::send_datagram(&to, state).map_err(Failure::Os)?;
    Ok(true)
}

/// Tells the supervisor about this process's state, as `sd_notify(3)` does:
/// sends `state`, one or more newline-separated assignments such as `READY=1`,
/// `READY=1\nSTATUS=serving`, `WATCHDOG=1` or `STOPPING=1`, as one datagram to
/// the unix socket `NOTIFY_SOCKET` names (`/path`, or `@name` for an abstract
/// socket).
///
/// Returns `Ok(false)` when `NOTIFY_SOCKET` is unset or empty (so a program
/// may always call it), `Ok(true)` when the message was sent. Errors say which
/// `NOTIFY_SOCKET` was used; their kind is that of the errno `sd_notify` would
/// return: `InvalidInput` for a value that is not an address or a state
/// holding a NUL byte, `ConnectionRefused` or `NotFound` when nobody listens
/// there, and so on. Like `sd_notify`, it blocks while the receiver's queue is
/// full, and it never changes the environment.
///
/// ```no_run
/// // ... after binding or finding the listeners:
/// server_starter::notify("READY=1\nSTATUS=serving")?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[cfg(feature = "std")]
pub fn notify(state: &str) -> std::io::Result<bool> {
    notify_to(std::env::var_os("NOTIFY_SOCKET").as_deref(), state)
}

/// [`notify`] to the socket `socket` names (a `NOTIFY_SOCKET` value), rather than to
/// the one in the environment: for a supervisor that took its own `NOTIFY_SOCKET`
/// out of the environment its children inherit, as start_server does.
#[cfg(feature = "std")]
pub fn notify_to(socket: Option<&std::ffi::OsStr>, state: &str) -> std::io::Result<bool> {
    use std::os::unix::ffi::OsStrExt;

    let socket = socket.map(OsStrExt::as_bytes);
    send(socket, state.as_bytes()).map_err(|failure| {
        let errno = std::io::Error::from(failure.errno());
        let socket = socket.unwrap_or_default().escape_ascii();
        let message = match failure {
            Failure::NotAnAddress => {
                format!("NOTIFY_SOCKET=\"{socket}\" is neither an absolute path nor @abstract")
            }
            Failure::TooLong => {
                format!("NOTIFY_SOCKET=\"{socket}\" is too long for a unix socket address")
            }
            Failure::NulInState => format!("notification {state:?} holds a NUL byte"),
            Failure::Os(_) => format!("sending {state:?} to NOTIFY_SOCKET=\"{socket}\": {errno}"),
        };
        std::io::Error::new(errno.kind(), message)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_socket_sends_nothing() {
        assert_eq!(send(None, b"READY=1"), Ok(false));
        assert_eq!(send(Some(b""), b"READY=1"), Ok(false));
    }

    #[test]
    fn addresses_are_absolute_paths_or_abstract_names() {
        for bad in [&b"relative/path"[..], b"@", b"x", b"/a\0b", b"vsock:2:1"] {
            assert_eq!(
                send(Some(bad), b"READY=1"),
                Err(Failure::NotAnAddress),
                "{bad:?}"
            );
        }
        // sun_path holds 108 bytes: a path and its NUL, or a NUL and a name.
        let long = [b'/'; 108];
        assert_eq!(address(&long).err(), Some(Failure::TooLong));
        assert!(address(&long[..107]).is_ok());
        let mut long_abstract = [b'x'; 109];
        long_abstract[0] = b'@';
        assert_eq!(address(&long_abstract).err(), Some(Failure::TooLong));
        assert!(address(&long_abstract[..108]).is_ok());
    }

    #[test]
    fn failures_map_to_sd_notify_errnos() {
        assert_eq!(Failure::NotAnAddress.errno(), Errno(libc::EINVAL));
        assert_eq!(Failure::NulInState.errno(), Errno(libc::EINVAL));
        assert_eq!(Failure::TooLong.errno(), Errno(libc::ENAMETOOLONG));
        assert_eq!(
            Failure::Os(Errno(libc::ECONNREFUSED)).errno(),
            Errno(libc::ECONNREFUSED)
        );
        assert_eq!(
            send(Some(b"@"), b"a\0b"),
            Err(Failure::NotAnAddress),
            "the address is checked first"
        );
    }
}
