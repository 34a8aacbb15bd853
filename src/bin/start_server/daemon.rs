//! `--daemonize`: fork, setsid, fork, as the original does; but the command that was
//! run returns only once the daemon is set up (its pid file written), so that a script
//! that runs `start_server --daemonize` and then `start_server --stop` finds the pid.

use std::os::unix::io::OwnedFd;

use crate::sys::{self, Fork};

/// In the daemon: the pipe on which to tell the waiting launcher that set-up is done.
pub struct Daemon {
    ready: OwnedFd,
}

/// Returns only in the daemon process. The launcher exits 0 once the daemon calls
/// `ready`, or 1 if the daemon exits before (its error is then in the log file).
pub fn daemonize(keep_stdin: bool) -> Result<Daemon, String> {
    let (ready_read, ready_write) =
        sys::pipe_cloexec().map_err(|e| format!("pipe(2) failed: {e}"))?;
    match sys::fork().map_err(|e| format!("fork failed: {e}"))? {
        Fork::Parent(_) => {
            drop(ready_write);
            let mut byte = [0u8; 1];
            let ready = matches!(sys::read_full(&ready_read, &mut byte), Ok(1));
            std::process::exit(if ready { 0 } else { 1 });
        }
        Fork::Child => {}
    }
    drop(ready_read);
    sys::setsid().map_err(|e| format!("setsid failed: {e}"))?;
    if let Fork::Parent(_) = sys::fork().map_err(|e| format!("fork failed: {e}"))? {
        std::process::exit(0);
    }
    // A socket pinned at descriptor 0 (--port=N=0) stays; otherwise stdin is /dev/null.
    if !keep_stdin {
        sys::redirect_to_dev_null(&[libc::STDIN_FILENO])
            .map_err(|e| format!("reopen of stdin failed: {e}"))?;
    }
    Ok(Daemon { ready: ready_write })
}

impl Daemon {
    pub fn ready(self) {
        sys::child_write(std::os::unix::io::AsRawFd::as_raw_fd(&self.ready), b"1");
    }
}
