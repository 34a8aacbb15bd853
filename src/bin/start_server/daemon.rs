//! `--daemonize`: fork, setsid, fork, as the original does; but the command that was
//! run returns only once the daemon is set up (its pid file written), so that a script
//! that runs `start_server --daemonize` and then `start_server --stop` finds the pid.

use std::os::unix::io::{AsRawFd, OwnedFd};

use crate::sys;

/// In the daemon: the pipe on which to tell the waiting launcher that set-up is done.
pub struct Daemon {
    ready: OwnedFd,
}

/// Returns only in the daemon process. The launcher exits 0 once the daemon calls
/// `ready`, or 1 if the daemon exits before (its error is then in the log file).
pub fn daemonize(keep_stdin: bool) -> Result<Daemon, String> {
    let (ready_read, ready_write) =
        sys::pipe_cloexec().map_err(|e| format!("pipe(2) failed: {e}"))?;
    // The launcher closes its copy of the write end (`take`), so that it reads EOF if
    // the daemon exits before it is ready.
    let mut ready_write = Some(ready_write);
    sys::fork_into_child(|_| {
        ready_write.take();
        let mut byte = [0u8; 1];
        let ready = matches!(sys::read_full(&ready_read, &mut byte), Ok(1));
        std::process::exit(if ready { 0 } else { 1 });
    })
    .map_err(|e| format!("fork failed: {e}"))?;
    drop(ready_read);
    sys::setsid().map_err(|e| format!("setsid failed: {e}"))?;
    sys::fork_into_child(|_| {}).map_err(|e| format!("fork failed: {e}"))?;
    // A socket pinned at descriptor 0 (--port=N=0) stays; otherwise stdin is /dev/null.
    if !keep_stdin {
        sys::redirect_to_dev_null(&[libc::STDIN_FILENO])
            .map_err(|e| format!("reopen of stdin failed: {e}"))?;
    }
    let ready = ready_write.expect("only the launcher takes it");
    Ok(Daemon { ready })
}

impl Daemon {
    pub fn ready(self) {
        // Should it fail, the launcher sees the pipe close and exits 1.
        let _ = sys::write(self.ready.as_raw_fd(), b"1");
    }
}
