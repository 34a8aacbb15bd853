//! `start_server --upgrade --pid-file=FILE`: asks the running instance to upgrade in
//! place, and says whether it now runs the new binary.
//!
//! Through the control socket (`UPGRADE`), the answer is the instance's own, checked
//! by its pid (SCM_CREDENTIALS): `OK upgraded from V1 to V2 in N ms` is sent only by
//! the new image, once it has taken the state over; `FAILED why` by the old image when
//! the new binary did not pass its check, or by the old image back in place when the
//! new one could not restore the state.
//!
//! An instance without a control socket is sent SIGUSR2, after its own image has
//! answered `--upgrade-check` (so that a program that would die of USR2, such as the
//! Perl original, is never sent it), and the client watches /proc/PID/exe until it is
//! the file now at the path, and stays so for `SETTLE` (a new image that goes back to
//! the previous one does so within milliseconds).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::check;
use crate::control::{self, Answer};
use crate::control_socket;
use crate::pid_file;
use crate::sys::{self, Pid};

/// How long the client waits for the outcome: the check's bound, the exec, and room.
pub const WAIT: Duration = Duration::from_secs(15);

/// How long a new image must stay in place, without a control socket to ask.
const SETTLE: Duration = Duration::from_secs(1);

pub fn upgrade(pid_file: &Path) -> Result<(), String> {
    let (pid, file) = pid_file::running_instance(pid_file)?;
    let Some(socket) = control::ask(pid, control_socket::UPGRADE, "an upgrade")? else {
        return by_signal(pid, &file);
    };
    match control::answer(pid, &socket, &file, Some(Instant::now() + WAIT))? {
        Answer::Ok(text) => {
            crate::log::print(&format!("start_server (pid {pid}) {text}\n"));
            Ok(())
        }
        Answer::Failed(why) => Err(format!("upgrade failed: {why}")),
        Answer::Exited => Err(format!("start_server (pid {pid}) exited")),
        Answer::Unacknowledged => {
            crate::log!(
                "start_server (pid {pid}) did not answer on its control socket; sending SIGUSR2 instead"
            );
            by_signal(pid, &file)
        }
        Answer::Silent => Err(format!(
            "start_server (pid {pid}) did not answer within {} secs (see its log)",
            crate::log::seconds(WAIT)
        )),
    }
}

/// Without a control socket: USR2, then /proc/PID/exe.
fn by_signal(pid: Pid, file: &std::fs::File) -> Result<(), String> {
    let exe = PathBuf::from(format!("/proc/{pid}/exe"));
    let version = answers_check(&exe).map_err(|why| {
        format!(
            "start_server (pid {pid}) has no control socket, and its binary does not \
             answer {}: {why}; not sending USR2, which it may not survive",
            check::MODE
        )
    })?;
    let running = identity(&exe)?;
    let link = std::fs::read_link(&exe).map_err(|e| format!("{}: {e}", exe.display()))?;
    let link = link.to_string_lossy();
    let path = PathBuf::from(link.strip_suffix(" (deleted)").unwrap_or(&link));
    let new = identity(&path)?;
    if new == running {
        return Err(format!(
            "{} is the binary start_server (pid {pid}) already runs, and without a control \
             socket an upgrade to it cannot be told from none: not sending USR2",
            path.display()
        ));
    }
    sys::kill(pid, libc::SIGUSR2)
        .map_err(|e| format!("failed to send SIGUSR2 to start_server (pid {pid}): {e}"))?;
    let deadline = Instant::now() + WAIT;
    let mut since: Option<Instant> = None;
    loop {
        if !pid_file::still_locked(file) {
            return Err(format!("start_server (pid {pid}) exited"));
        }
        let now = Instant::now();
        match identity(&exe) {
            Ok(id) if id == new => {
                let since = *since.get_or_insert(now);
                if now >= since + SETTLE {
                    crate::log::print(&format!(
                        "start_server (pid {pid}) runs {} now (from version {version}; seen \
                         in {}: it has no control socket to say more)\n",
                        path.display(),
                        exe.display()
                    ));
                    return Ok(());
                }
            }
            _ => since = None,
        }
        if now >= deadline {
            return Err(format!(
                "start_server (pid {pid}) still runs its previous binary {} secs after \
                 SIGUSR2 (see its log)",
                crate::log::seconds(WAIT)
            ));
        }
        thread::sleep(control::POLL);
    }
}

/// Runs `exe --upgrade-check`, bounded by the check's timeout: the version it says.
fn answers_check(exe: &Path) -> Result<String, String> {
    let mut child = Command::new(exe)
        .arg(check::MODE)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + check::TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("no answer in time".into());
        }
        thread::sleep(Duration::from_millis(10));
    };
    let mut output = Vec::new();
    if let Some(mut stdout) = child.stdout.take() {
        use std::io::Read;
        let _ = stdout.read_to_end(&mut output);
    }
    if !status.success() {
        return Err(format!("{status}"));
    }
    check::parse(&output).map(|answer| answer.version)
}

/// The file a path leads to, as (device, inode).
fn identity(path: &Path) -> Result<(u64, u64), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((meta.dev(), meta.ino()))
}
