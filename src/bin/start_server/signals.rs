//! Signals: their names on the command line, and their arrival as events.
//!
//! start_server blocks the signals it acts on and reads them from a signalfd, so that a
//! signal is an ordinary event of the main loop, never a handler running at an
//! arbitrary point; while nothing happens, the loop sleeps in ppoll with no timeout.
//! `meaning` is the one table of what each signal does.

use std::io;
use std::os::raw::c_int;
use std::os::unix::io::{AsRawFd, OwnedFd, RawFd};
use std::time::Instant;

use crate::port_spec::parse_decimal;
use crate::sys::{self, Pid, SigSet};

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

    pub fn kill() -> Signal {
        Signal {
            name: "KILL".into(),
            number: libc::SIGKILL,
        }
    }
}

/// What a signal sent to start_server means. Every catchable signal that would
/// otherwise kill start_server (and, through the parent-death signal, its workers) has
/// one; the reasons are in start_server(1), SIGNALS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Meaning {
    /// HUP: start a new generation.
    Restart,
    /// TERM, INT, QUIT, ABRT, XCPU: signal every worker, wait for them, clean up, exit.
    Stop,
    /// USR1: reopen the log file.
    Reopen,
    /// USR2: re-execute start_server's binary (an upgrade in place).
    Upgrade,
    /// CHLD: a child changed state.
    Child,
    /// Nothing start_server acts on (ALRM, VTALRM, PROF, IO, PWR, SYS, TRAP, STKFLT and
    /// the real-time signals): logged with its sender, then ignored.
    Ignore,
}

/// The meaning of `sig`, or `None` for the signals left at their default action:
/// KILL and STOP (which cannot be caught), the faults a bug raises (SEGV, BUS, ILL,
/// FPE: a real fault must still stop the process; the workers then get the
/// parent-death signal), the job-control stops (TSTP, TTIN, TTOU: a stopped
/// start_server loses nothing) and those whose default is to do nothing (CONT, URG,
/// WINCH). PIPE and XFSZ are ignored outright instead (see `block`).
pub fn meaning(sig: c_int) -> Option<Meaning> {
    use Meaning::*;
    Some(match sig {
        libc::SIGHUP => Restart,
        libc::SIGTERM | libc::SIGINT | libc::SIGQUIT | libc::SIGABRT | libc::SIGXCPU => Stop,
        libc::SIGUSR1 => Reopen,
        libc::SIGUSR2 => Upgrade,
        libc::SIGCHLD => Child,
        libc::SIGALRM
        | libc::SIGVTALRM
        | libc::SIGPROF
        | libc::SIGIO
        | libc::SIGPWR
        | libc::SIGSYS
        | libc::SIGTRAP
        | libc::SIGSTKFLT => Ignore,
        sig if (32..=64).contains(&sig) => Ignore,
        _ => return None,
    })
}

/// The signals start_server reads from its signalfd: all those with a meaning.
fn handled() -> SigSet {
    SigSet::of((1..=64).filter(|&sig| meaning(sig).is_some()))
}

/// The name start_server logs for a signal number: `HUP`, `RTMIN`, `NUM40`.
pub fn name(sig: c_int) -> String {
    match NAMES.iter().find(|&&(_, n)| n == sig) {
        Some((name, _)) => name.to_string(),
        None if sig == 34 => "RTMIN".into(),
        None if sig == 64 => "RTMAX".into(),
        None => format!("NUM{sig}"),
    }
}

/// Blocks every signal start_server acts on, first thing, so that one arriving while
/// the sockets are still being bound waits for the main loop instead of killing
/// start_server half-way. The mask survives execve, for an upgrade in place.
pub fn block() -> io::Result<()> {
    sys::block_signals(&handled())?;
    // A write to a log pipe whose reader died must be an error (EPIPE), and a write
    // past the file-size limit too (EFBIG), not a death: ignored in the kernel, so
    // that the write itself reports it.
    sys::ignore_signal(libc::SIGPIPE)?;
    sys::ignore_signal(libc::SIGXFSZ)
}

/// One signal as read from the signalfd, with its sender (0 for the kernel).
#[derive(Clone, Copy, Debug)]
pub struct Received {
    pub sig: c_int,
    pub pid: Pid,
}

/// What woke the main loop: the signals that arrived (standard signals do not queue,
/// so each at most a few times), and which of the watched descriptors are readable.
/// Both empty when a timer expired.
#[derive(Default, Debug)]
pub struct Arrived {
    pub signals: Vec<Received>,
    pub readable: Vec<RawFd>,
}

impl Arrived {
    pub fn has(&self, meaning: Meaning) -> bool {
        self.signals
            .iter()
            .any(|r| self::meaning(r.sig) == Some(meaning))
    }

    /// The senders of the signals of `meaning`, in order.
    pub fn of(&self, meaning: Meaning) -> impl Iterator<Item = Pid> + '_ {
        self.signals
            .iter()
            .filter(move |r| self::meaning(r.sig) == Some(meaning))
            .map(|r| r.pid)
    }

    /// The first stop signal that arrived, if any.
    pub fn stop(&self) -> Option<c_int> {
        self.signals
            .iter()
            .map(|r| r.sig)
            .find(|&sig| meaning(sig) == Some(Meaning::Stop))
    }

    pub fn ignored(&self) -> impl Iterator<Item = &Received> {
        self.signals
            .iter()
            .filter(|r| meaning(r.sig) == Some(Meaning::Ignore))
    }
}

/// The event source of the main loop: a signalfd for the handled signals, polled
/// together with the descriptors the supervisor watches (readiness sockets).
pub struct Events {
    fd: OwnedFd,
}

impl Events {
    /// Opened after the sockets are bound, so that they get the lowest descriptors, as
    /// with the original.
    pub fn new() -> io::Result<Events> {
        Ok(Events {
            fd: sys::signalfd(&handled())?,
        })
    }

    /// Sleeps until a signal arrives, one of `watched` becomes readable, or `deadline`
    /// passes (with no deadline, only the first two wake it).
    pub fn wait(&self, deadline: Option<Instant>, watched: &[RawFd]) -> io::Result<Arrived> {
        let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let mut fds = Vec::with_capacity(watched.len() + 1);
        fds.push(self.fd.as_raw_fd());
        fds.extend_from_slice(watched);
        let ready = sys::wait_readable(&fds, timeout)?;
        let mut arrived = Arrived::default();
        if ready.first() == Some(&true) {
            while let Some((sig, pid)) = sys::read_signal(&self.fd)? {
                arrived.signals.push(Received { sig, pid });
            }
        }
        arrived.readable = fds
            .iter()
            .zip(&ready)
            .skip(1)
            .filter(|(_, &r)| r)
            .map(|(&fd, _)| fd)
            .collect();
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

    #[test]
    fn every_signal_that_would_kill_has_a_meaning() {
        // Default action "terminate" or "core", minus the uncatchable and the faults.
        let left_at_default = [
            libc::SIGKILL,
            libc::SIGSTOP,
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGILL,
            libc::SIGFPE,
        ];
        let fatal = [
            "HUP", "INT", "QUIT", "TRAP", "ABRT", "USR1", "USR2", "ALRM", "TERM", "STKFLT", "XCPU",
            "VTALRM", "PROF", "IO", "PWR", "SYS",
        ];
        for name in fatal {
            let sig = Signal::parse(name).unwrap().number;
            assert!(meaning(sig).is_some(), "{name}");
        }
        for sig in 32..=64 {
            assert_eq!(meaning(sig), Some(Meaning::Ignore), "{sig}");
        }
        for sig in left_at_default {
            assert_eq!(meaning(sig), None, "{sig}");
        }
        assert_eq!(name(libc::SIGUSR1), "USR1");
        assert_eq!(name(34), "RTMIN");
        assert_eq!(name(40), "NUM40");
    }
}
