//! Signals: their names on the command line, and their arrival as events.
//!
//! start_server blocks the signals it acts on and reads them from a signalfd, so that a
//! signal is an ordinary event of the main loop, never a handler running at an
//! arbitrary point; while nothing happens, the loop sleeps in ppoll with no timeout.

use std::io;
use std::os::raw::c_int;
use std::os::unix::io::OwnedFd;
use std::time::Instant;

use crate::port_spec::parse_decimal;
use crate::sys::{self, SigSet};

/// A signal as named on the command line; `name` is how the original prints it
/// (upper case, without the `SIG` prefix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signal {
    pub name: String,
    pub number: c_int,
}

const NAMES: &[(&str, c_int)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("IOT", libc::SIGIOT),
    ("BUS", libc::SIGBUS),
    ("FPE", libc::SIGFPE),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("STKFLT", libc::SIGSTKFLT),
    ("CHLD", libc::SIGCHLD),
    ("CLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("WINCH", libc::SIGWINCH),
    ("IO", libc::SIGIO),
    ("POLL", libc::SIGPOLL),
    ("PWR", libc::SIGPWR),
    ("SYS", libc::SIGSYS),
];

impl Signal {
    /// `TERM`, `SIGTERM`, `term`, or a number such as `15`.
    pub fn parse(text: &str) -> Result<Signal, String> {
        let upper = text.trim().to_ascii_uppercase();
        let name = upper.strip_prefix("SIG").unwrap_or(&upper);
        if let Some(&(_, number)) = NAMES.iter().find(|(n, _)| *n == name) {
            return Ok(Signal {
                name: name.to_string(),
                number,
            });
        }
        let number = match name {
            // Perl's names for the real-time signals (its sig_name on Linux), which
            // the original takes: RTMIN, RTMAX and NUM32 to NUM63.
            "RTMIN" => Some(34),
            "RTMAX" => Some(64),
            _ => parse_decimal(name.strip_prefix("NUM").unwrap_or(name))
                .and_then(|n| c_int::try_from(n).ok()),
        };
        match number {
            Some(number) if (1..=64).contains(&number) => Ok(Signal {
                name: name.to_string(),
                number,
            }),
            _ => Err(format!("unknown signal name: {text:?}")),
        }
    }

    pub fn term() -> Signal {
        Signal {
            name: "TERM".into(),
            number: libc::SIGTERM,
        }
    }
}

/// What woke the main loop: the signals that arrived (each at most once: standard
/// signals do not queue), or nothing, when a timer expired.
#[derive(Default, Debug)]
pub struct Arrived {
    pub hup: bool,
    /// TERM or INT, whichever came first.
    pub stop: Option<c_int>,
    pub child: bool,
}

/// The signals start_server acts on, read from a signalfd.
pub struct Events {
    fd: OwnedFd,
}

const HANDLED: [c_int; 4] = [libc::SIGHUP, libc::SIGINT, libc::SIGTERM, libc::SIGCHLD];

/// Blocks the signals start_server acts on, first thing, so that one arriving while
/// the sockets are still being bound waits for the main loop instead of killing
/// start_server half-way.
pub fn block() -> io::Result<()> {
    sys::block_signals(&SigSet::of(&HANDLED))?;
    // A write to a log pipe whose reader died must be an error, not a death.
    sys::ignore_signal(libc::SIGPIPE)?;
    // The original catches ALRM (its auto-restart tick) and does nothing with one
    // sent from outside: it must not kill start_server and orphan its workers.
    sys::ignore_signal(libc::SIGALRM)
}

impl Events {
    /// Opened after the sockets are bound, so that they get the lowest descriptors, as
    /// with the original.
    pub fn new() -> io::Result<Events> {
        Ok(Events {
            fd: sys::signalfd(&SigSet::of(&HANDLED))?,
        })
    }

    /// Sleeps until a signal arrives or `deadline` passes.
    pub fn wait(&self, deadline: Option<Instant>) -> io::Result<Arrived> {
        let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if sys::wait_readable(&self.fd, timeout)? {
            return self.drain();
        }
        Ok(Arrived::default())
    }

    fn drain(&self) -> io::Result<Arrived> {
        let mut arrived = Arrived::default();
        while let Some(sig) = sys::read_signal(&self.fd)? {
            match sig {
                libc::SIGHUP => arrived.hup = true,
                libc::SIGCHLD => arrived.child = true,
                sig => {
                    arrived.stop.get_or_insert(sig);
                }
            }
        }
        Ok(arrived)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(Signal::parse("TERM").unwrap(), Signal::term());
        assert_eq!(Signal::parse("sigterm").unwrap().name, "TERM");
        assert_eq!(Signal::parse("SIGUSR1").unwrap().number, libc::SIGUSR1);
        assert_eq!(Signal::parse("usr2").unwrap().name, "USR2");
        assert_eq!(Signal::parse("9").unwrap().number, 9);
        assert_eq!(Signal::parse("SIGRTMIN").unwrap().number, 34);
        assert_eq!(Signal::parse("rtmax").unwrap().name, "RTMAX");
        assert_eq!(Signal::parse("NUM40").unwrap().number, 40);
        for bad in [
            "",
            "TERMINATE",
            "0",
            "65",
            "-1",
            "+9",
            "SIG",
            "NUM",
            "NUM+3",
            "NUM100",
        ] {
            assert!(Signal::parse(bad).is_err(), "{bad}");
        }
    }
}
