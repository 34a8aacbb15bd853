//! `--daemonize`: fork, setsid, fork, as the original does; but the command that was
//! run returns only once generation 1 has started or failed to start, so that a deploy
//! script can trust its exit status (the original's returns 0 at once, whatever
//! follows), and a script that runs `--stop` next finds the pid file written.
//!
//! The launcher keeps the read end of a pipe; the daemon writes one report on it, an
//! exit status byte then the reason, and closes it. The launcher exits with that status,
//! the reason on its stderr:
//! - 0: generation 1 has started;
//! - 1: generation 1 failed to start; the daemon goes on trying, paced, as start_server
//!   does in the foreground (and the original too);
//! - 255: start_server gave up (an error in its set-up, or a command that cannot be
//!   executed): nothing of it is left running. So too if the daemon exits without a
//!   report.

use std::os::unix::io::{AsRawFd, OwnedFd};

use crate::sys::{self, Fork};

/// The launcher's exit status when generation 1 failed to start and the daemon goes on.
pub const FAILED_START: u8 = 1;
/// The launcher's exit status when start_server gave up.
pub const GAVE_UP: u8 = 255;

/// In the daemon: the pipe on which to tell the waiting launcher how generation 1 went.
pub struct Daemon {
    report: OwnedFd,
}

/// Returns only in the daemon process; the launcher exits with the daemon's report.
pub fn daemonize(keep_stdin: bool) -> Result<Daemon, String> {
    let (report_read, report_write) =
        sys::pipe_cloexec().map_err(|e| format!("pipe(2) failed: {e}"))?;
    match sys::fork().map_err(|e| format!("fork failed: {e}"))? {
        Fork::Parent(_) => {
            drop(report_write);
            std::process::exit(launcher_exit(&report_read));
        }
        Fork::Child => {}
    }
    drop(report_read);
    sys::setsid().map_err(|e| format!("setsid failed: {e}"))?;
    if let Fork::Parent(_) = sys::fork().map_err(|e| format!("fork failed: {e}"))? {
        std::process::exit(0);
    }
    // A socket pinned at descriptor 0 (--port=N=0) stays; otherwise stdin is /dev/null.
    if !keep_stdin {
        sys::redirect_to_dev_null(&[libc::STDIN_FILENO])
            .map_err(|e| format!("reopen of stdin failed: {e}"))?;
    }
    // A launcher that is gone (killed at the terminal) must never hold the daemon up.
    sys::set_nonblocking(report_write.as_raw_fd())
        .map_err(|e| format!("fcntl(O_NONBLOCK) on the launcher's pipe failed: {e}"))?;
    Ok(Daemon {
        report: report_write,
    })
}

/// In the launcher: waits for the daemon's report (or its end), says why on failure,
/// and returns the exit status.
fn launcher_exit(report: &OwnedFd) -> i32 {
    let mut buf = [0u8; 4096];
    let n = sys::read_full(report, &mut buf).unwrap_or(0);
    let Some((&status, why)) = buf[..n].split_first() else {
        eprintln!(
            "start_server: the daemon exited before generation 1 started (see the --log-file)"
        );
        return GAVE_UP.into();
    };
    if !why.is_empty() {
        eprintln!("start_server: {}", String::from_utf8_lossy(why));
    }
    status.into()
}

impl Daemon {
    /// Generation 1 has started: the launcher exits 0.
    pub fn started(self) {
        self.report(0, "");
    }

    /// The launcher exits `status` (`FAILED_START`, `GAVE_UP`), printing `why`.
    pub fn failed(self, status: u8, why: &str) {
        self.report(status, why);
    }

    /// One write, within PIPE_BUF so that it is whole or not at all; the pipe is closed
    /// when `self` goes.
    fn report(self, status: u8, why: &str) {
        let mut message = vec![status];
        message.extend(why.bytes().take(4000));
        let _ = sys::write(self.report.as_raw_fd(), &message);
    }
}
