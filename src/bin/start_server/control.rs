//! `--stop` and `--restart`: commands for an instance already running, found through
//! its pid file.

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::pid_file;
use crate::status_file;
use crate::sys;

/// How often `--restart` looks at the status file (the original: every second), and
/// a bounded `--stop` at the pid file's lock.
const POLL: Duration = Duration::from_millis(50);

/// How much longer than `--kill-timeout` `--stop` waits: the instance SIGKILLs its last
/// workers at the timeout, then reaps them, removes its files and lets a `| cmd` logger
/// finish.
pub const STOP_MARGIN: Duration = Duration::from_secs(5);

/// TERM the instance, then wait until it has exited (its lock on the pid file is
/// released, which happens only after its last worker is gone). With `kill_timeout`
/// (the instance's `--kill-timeout`), gives up after that plus `STOP_MARGIN`.
pub fn stop(pid_file: &Path, kill_timeout: Option<Duration>) -> Result<(), String> {
    let (pid, file) = pid_file::running_instance(pid_file)?;
    crate::log!(
        "stop_server (pid:{}) stopping now (pid:{pid})...",
        std::process::id()
    );
    sys::kill(pid, libc::SIGTERM)
        .map_err(|e| format!("failed to send SIGTERM to the server process {pid}: {e}"))?;
    let Some(kill_timeout) = kill_timeout else {
        return pid_file::wait_released(&file);
    };
    let bound = kill_timeout + STOP_MARGIN;
    let deadline = Instant::now() + bound;
    while pid_file::still_locked(&file) {
        if Instant::now() >= deadline {
            return Err(format!(
                "start_server (pid {pid}) is still running {} secs after SIGTERM \
                 (--kill-timeout={} plus {} secs)",
                crate::log::seconds(bound),
                crate::log::seconds(kill_timeout),
                crate::log::seconds(STOP_MARGIN)
            ));
        }
        thread::sleep(POLL);
    }
    Ok(())
}

/// HUP the instance, then wait until the status file shows only a generation newer
/// than any it showed before. Gives up, with an error, if the instance exits meanwhile.
pub fn restart(pid_file: &Path, status_file: &Path) -> Result<(), String> {
    let (pid, file) = pid_file::running_instance(pid_file)?;
    let newest = status_file::generations(status_file)?
        .into_iter()
        .max()
        .ok_or_else(|| {
            format!(
                "no active process found in the status file {}",
                status_file.display()
            )
        })?;
    sys::kill(pid, libc::SIGHUP)
        .map_err(|e| format!("failed to send SIGHUP to the server process {pid}: {e}"))?;
    loop {
        // A status file being replaced can be missing for an instant: only a stopped
        // instance is a reason to give up.
        if let Ok(generations) = status_file::generations(status_file) {
            if let [only] = generations[..] {
                if only > newest {
                    return Ok(());
                }
            }
        }
        if !pid_file::still_locked(&file) {
            return Err(format!(
                "start_server (pid {pid}) exited before a new generation started"
            ));
        }
        thread::sleep(POLL);
    }
}
