//! `--listen-fds`: the workers also get systemd's socket-activation variables, so
//! that servers finding their sockets with `sd_listen_fds` (gunicorn, Puma, uWSGI,
//! Go's activation package, Rust's listenfd, ...) run under start_server unchanged.
//!
//! `LISTEN_FDS` counts the sockets, which the plan put at descriptors 3, 4, ... in
//! `SERVER_STARTER_PORT` order; `LISTEN_FDNAMES` names them; `LISTEN_PID` is the
//! worker's own pid, which only the child knows: spawn writes it in between fork and
//! exec.

use std::ffi::OsString;

use server_starter::parse::{fdname_byte, FDNAME_MAX};

use crate::bind::Listeners;
use crate::envdir::Env;
use crate::inherited::VARIABLES;

/// What the workers' environment gets of systemd's variables.
pub struct WorkerVars {
    /// Whether any `LISTEN_*` of start_server's environment (or `--envdir`) is
    /// removed: they are replaced under `--listen-fds`, and sockets adopted from the
    /// manager were start_server's, not the workers'.
    strip: bool,
    /// `LISTEN_FDS` and `LISTEN_FDNAMES`, under `--listen-fds` with sockets.
    set: Vec<(OsString, OsString)>,
}

impl WorkerVars {
    pub fn new(listeners: &Listeners, listen_fds: bool) -> WorkerVars {
        let adopted = listeners.iter().any(|l| l.adopted);
        let count = listeners.iter().count();
        // systemd has no way to say "no sockets" (LISTEN_FDS=0 is invalid): then
        // the variables are left out.
        let set = if listen_fds && count > 0 {
            let names: Vec<String> = listeners
                .iter()
                .map(|l| l.fdname.clone().unwrap_or_else(|| fdname(&l.name)))
                .collect();
            vec![
                ("LISTEN_FDS".into(), count.to_string().into()),
                ("LISTEN_FDNAMES".into(), names.join(":").into()),
            ]
        } else {
            Vec::new()
        };
        WorkerVars {
            strip: listen_fds || adopted,
            set,
        }
    }

    /// Whether the workers get `LISTEN_PID` (written in by spawn).
    pub fn exports(&self) -> bool {
        !self.set.is_empty()
    }

    pub fn apply(&self, env: &mut Env) {
        if self.strip {
            env.retain(|(k, _)| !VARIABLES.iter().any(|v| k == v));
        }
        env.extend(self.set.iter().cloned());
    }
}

// ---------------------------------------------------------------- upgrade in place

impl WorkerVars {
    /// What an upgrade in place carries: whether systemd's variables are stripped, and
    /// those set instead.
    pub fn handover(&self) -> (bool, &[(OsString, OsString)]) {
        (self.strip, &self.set)
    }

    pub fn taken_over(strip: bool, set: Vec<(OsString, OsString)>) -> WorkerVars {
        WorkerVars { strip, set }
    }
}

/// The `LISTEN_FDNAMES` name of a socket named `name` in SERVER_STARTER_PORT: each
/// byte systemd does not allow in a name (`:`, control and non-ASCII bytes) becomes
/// `_`, cut at systemd's 255 bytes. The library finds a socket by either name.
pub fn fdname(name: &str) -> String {
    name.bytes()
        .take(FDNAME_MAX)
        .map(|b| char::from(fdname_byte(b)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_as_close_to_the_originals_as_systemd_allows() {
        assert_eq!(fdname("8080"), "8080");
        assert_eq!(fdname("127.0.0.1:8080"), "127.0.0.1_8080");
        assert_eq!(fdname("localhost:8080"), "localhost_8080");
        assert_eq!(fdname("[::1]:8443"), "[__1]_8443");
        assert_eq!(fdname("/run/app.sock"), "/run/app.sock");
        assert_eq!(fdname("/run/a:b é.sock"), "/run/a_b __.sock");
        let long = format!("{}.example:80", "h".repeat(300));
        assert_eq!(fdname(&long), "h".repeat(255));
        for name in ["127.0.0.1:8080", "[::1]:8443", "/run/a:b é.sock", &long] {
            let made = fdname(name);
            assert!(server_starter::parse::is_fdname_of(
                made.as_bytes(),
                name.as_bytes()
            ));
            assert!(made.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b':'));
        }
    }
}
