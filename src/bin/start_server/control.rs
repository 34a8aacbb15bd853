//! `--stop` and `--restart`: commands for an instance already running, found through
//! its pid file.

use std::fs::File;
use std::os::unix::io::{AsRawFd, OwnedFd};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::control_socket;
use crate::pid_file::{self, Instance};
use crate::status_file;
use crate::sys::{self, Pid, SockAddr};

/// How often `--restart` looks at the status file (the original: every second), and
/// a bounded `--stop` at the pid file's lock.
pub const POLL: Duration = Duration::from_millis(50);

/// How much longer than `--kill-timeout` `--stop` waits: the instance SIGKILLs its last
/// workers at the timeout, then reaps them, removes its files and lets a `| cmd` logger
/// finish.
pub const STOP_MARGIN: Duration = Duration::from_secs(5);

/// `--stop`'s exit status when no instance runs with the pid file (LSB's "program is
/// not running"), so that a script can tell it from a failure to stop one.
pub const NOT_RUNNING: u8 = 3;

/// TERM the instance, then wait until it has exited (its lock on the pid file is
/// released, which happens only after its last worker is gone). With `kill_timeout`
/// (the instance's `--kill-timeout`), gives up after that plus `STOP_MARGIN`. The error
/// comes with the exit status: `NOT_RUNNING`, or 255.
pub fn stop(pid_file: &Path, kill_timeout: Option<Duration>) -> Result<(), (u8, String)> {
    let (pid, file) = match pid_file::find_instance(pid_file).map_err(|e| (255, e))? {
        Instance::Running(pid, file) => (pid, file),
        Instance::NotRunning(why) => return Err((NOT_RUNNING, format!("nothing to stop: {why}"))),
    };
    stop_running(pid, &file, kill_timeout).map_err(|e| (255, e))
}

fn stop_running(pid: Pid, file: &File, kill_timeout: Option<Duration>) -> Result<(), String> {
    crate::log!(
        "stop_server (pid:{}) stopping now (pid:{pid})...",
        std::process::id()
    );
    sys::kill(pid, libc::SIGTERM)
        .map_err(|e| format!("failed to send SIGTERM to the server process {pid}: {e}"))?;
    let Some(kill_timeout) = kill_timeout else {
        return pid_file::wait_released(file);
    };
    let bound = kill_timeout + STOP_MARGIN;
    let deadline = Instant::now() + bound;
    while pid_file::still_locked(file) {
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

/// Asks the instance for a restart, waits for its verdict and says it: Ok once the new
/// generation runs alone, an error saying why once it failed to start (the old
/// generation goes on serving). An instance without a control socket (an older
/// start_server) is sent HUP instead, and its status file watched as the original does:
/// only that needs `status_file`.
pub fn restart(pid_file: &Path, status_file: Option<&Path>) -> Result<(), String> {
    let (pid, file) = pid_file::running_instance(pid_file)?;
    // As the original, given a status file: no restart without a generation in it.
    let newest = status_file.map(newest_generation).transpose()?;
    let Some(socket) = ask(pid, control_socket::RESTART, "a restart")? else {
        return restart_by_signal(pid, &file, status_file.zip(newest));
    };
    match answer(pid, &socket, &file, None)? {
        Answer::Ok(generation) => {
            restarted(pid, &generation);
            Ok(())
        }
        Answer::Failed(why) => Err(format!("restart failed: {why}")),
        Answer::Exited | Answer::Silent => Err(exited(pid)),
        Answer::Unacknowledged => {
            crate::log!(
                "start_server (pid {pid}) did not answer on its control socket; sending SIGHUP instead"
            );
            restart_by_signal(pid, &file, status_file.zip(newest))
        }
    }
}

/// The verdict of a restart that succeeded.
fn restarted(pid: Pid, generation: &str) {
    crate::log!("restarted: {generation} runs alone (start_server pid {pid})");
}

/// The newest generation in the status file.
fn newest_generation(status_file: &Path) -> Result<u64, String> {
    status_file::generations(status_file)?
        .into_iter()
        .max()
        .ok_or_else(|| {
            format!(
                "no active process found in the status file {}",
                status_file.display()
            )
        })
}

/// How long `--restart` and `--upgrade` wait for the instance to acknowledge their
/// request.
const ACCEPT_PATIENCE: Duration = Duration::from_secs(10);

fn exited(pid: Pid) -> String {
    format!("start_server (pid {pid}) exited before a new generation started")
}

/// Sends `request` to the instance's control socket, from a socket of the client's own
/// where the answer will come; `None` when the instance has no control socket.
pub fn ask(pid: Pid, request: &[u8], what: &str) -> Result<Option<OwnedFd>, String> {
    let fail =
        |e: std::io::Error| format!("failed to ask start_server (pid {pid}) for {what}: {e}");
    if let Some(why) = refusal(pid, what) {
        return Err(why);
    }
    let (socket, _) = sys::credential_socket(None).map_err(fail)?;
    let name = control_socket::name(pid);
    let to = SockAddr::abstract_unix(name.as_bytes()).ok_or_else(|| format!("{name}: too long"))?;
    match sys::send_to(&socket, &to, request) {
        Ok(()) => Ok(Some(socket)),
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => Ok(None),
        Err(e) => Err(fail(e)),
    }
}

/// Why the instance `pid` will not take a request from this user, if it will not.
fn refusal(pid: Pid, what: &str) -> Option<String> {
    let client = sys::getuid();
    let instance = real_uid(pid).filter(|&uid| !control_socket::serves(uid, client))?;
    Some(format!(
        "start_server (pid {pid}) refuses {what} from uid {client}: it takes requests \
         only from its own user (uid {instance}) and root"
    ))
}

/// The real uid of process `pid` (the one its control socket compares), if /proc says.
fn real_uid(pid: Pid) -> Option<libc::uid_t> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    line.split_whitespace().next()?.parse().ok()
}

/// What the instance answered on the control socket.
pub enum Answer {
    /// `OK text`.
    Ok(String),
    /// `FAILED why`.
    Failed(String),
    /// It exited (its pid file's lock is released) before it answered.
    Exited,
    /// Nothing before the deadline.
    Silent,
    /// Not even `ACCEPTED` within `ACCEPT_PATIENCE`: the socket under the instance's
    /// name is someone else's, and the instance has none.
    Unacknowledged,
}

/// Waits for the instance's answer on `socket`, until `deadline` if any. Only the
/// instance itself is believed (its pid, from SCM_CREDENTIALS).
pub fn answer(
    pid: Pid,
    socket: &OwnedFd,
    file: &File,
    deadline: Option<Instant>,
) -> Result<Answer, String> {
    let asked = Instant::now();
    let mut accepted = false;
    let mut buf = [0u8; 512];
    loop {
        let _ = sys::wait_readable(&[socket.as_raw_fd()], Some(POLL));
        while let Some(reply) = sys::receive(socket, &mut buf)
            .map_err(|e| format!("failed to read the reply of start_server (pid {pid}): {e}"))?
        {
            if reply.credentials.map(|(sender, _)| sender) != Some(pid) {
                continue;
            }
            let text = String::from_utf8_lossy(&buf[..reply.len]);
            if text == control_socket::ACCEPTED {
                accepted = true;
                continue;
            }
            return Ok(match text.strip_prefix("OK ") {
                Some(text) => Answer::Ok(text.to_string()),
                None => Answer::Failed(text.strip_prefix("FAILED ").unwrap_or(&text).to_string()),
            });
        }
        if !pid_file::still_locked(file) {
            return Ok(Answer::Exited);
        }
        if !accepted && asked.elapsed() > ACCEPT_PATIENCE {
            return Ok(Answer::Unacknowledged);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(Answer::Silent);
        }
    }
}

/// `--status`'s exit statuses besides 0 (a started generation serves) and
/// `NOT_RUNNING` (no instance runs with the pid file): a health probe's answers.
pub const NOT_SERVING: u8 = 2;
pub const REFUSED: u8 = 4;
pub const NO_ANSWER: u8 = 5;

/// How long `--status` waits for the answer, which an instance sends at once.
const STATUS_PATIENCE: Duration = Duration::from_secs(5);

/// The largest answer read: a report of some hundred workers.
const STATUS_MAX: usize = 1 << 20;

/// Asks the instance how it is, prints the answer, and returns the exit status: 0 if a
/// started generation serves, `NOT_SERVING` if none does; the error, with its status,
/// if it cannot be asked.
pub fn status(pid_file: &Path, json: bool) -> Result<u8, (u8, String)> {
    let (pid, file) = match pid_file::find_instance(pid_file).map_err(|e| (NO_ANSWER, e))? {
        Instance::Running(pid, file) => (pid, file),
        Instance::NotRunning(why) => return Err((NOT_RUNNING, format!("not running: {why}"))),
    };
    let request = match json {
        true => control_socket::STATUS_JSON,
        false => control_socket::STATUS,
    };
    if let Some(why) = refusal(pid, "its status") {
        return Err((REFUSED, why));
    }
    let socket = match ask(pid, request, "its status") {
        Ok(Some(socket)) => socket,
        Ok(None) => {
            return Err((
                NO_ANSWER,
                format!(
                    "start_server (pid {pid}) has no control socket (an older start_server)                      to ask for its status"
                ),
            ))
        }
        Err(e) => return Err((NO_ANSWER, e)),
    };
    let mut buf = vec![0u8; STATUS_MAX];
    let deadline = Instant::now() + STATUS_PATIENCE;
    let silent = || {
        format!(
            "start_server (pid {pid}) did not answer within {} secs",
            crate::log::seconds(STATUS_PATIENCE)
        )
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err((NO_ANSWER, silent()));
        }
        let _ = sys::wait_readable(&[socket.as_raw_fd()], Some(left.min(POLL)));
        let received = sys::receive(&socket, &mut buf).map_err(|e| {
            let why = format!("failed to read the answer of start_server (pid {pid}): {e}");
            (NO_ANSWER, why)
        })?;
        let Some(reply) = received else {
            if !pid_file::still_locked(&file) {
                return Err((NOT_RUNNING, format!("start_server (pid {pid}) exited")));
            }
            continue;
        };
        if reply.credentials.map(|(sender, _)| sender) != Some(pid) {
            continue;
        }
        let text = String::from_utf8_lossy(&buf[..reply.len]);
        let (head, report) = text.split_once('\n').unwrap_or((&text, ""));
        crate::log::print(report);
        return match head {
            control_socket::SERVING => Ok(0),
            _ => {
                crate::log!("start_server (pid {pid}) runs, but no started generation serves");
                Ok(NOT_SERVING)
            }
        };
    }
}

/// The original's way: HUP, then wait until the status file shows only a generation
/// newer than `newest`. Gives up, with an error, if the instance exits meanwhile.
fn restart_by_signal(pid: Pid, file: &File, watched: Option<(&Path, u64)>) -> Result<(), String> {
    let Some((status_file, newest)) = watched else {
        return Err(format!(
            "start_server (pid {pid}) has no control socket (an older start_server): \
             --restart needs its --status-file as well, to follow the restart"
        ));
    };
    sys::kill(pid, libc::SIGHUP)
        .map_err(|e| format!("failed to send SIGHUP to the server process {pid}: {e}"))?;
    loop {
        // A status file being replaced can be missing for an instant: only a stopped
        // instance is a reason to give up.
        if let Ok(generations) = status_file::generations(status_file) {
            if let [only] = generations[..] {
                if only > newest {
                    restarted(pid, &format!("generation {only}"));
                    return Ok(());
                }
            }
        }
        if !pid_file::still_locked(file) {
            return Err(exited(pid));
        }
        thread::sleep(POLL);
    }
}
