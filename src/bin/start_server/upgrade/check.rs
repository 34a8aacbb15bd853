//! The check before the leap: the binary at start_server's path is run once, as a
//! child, as `PATH --upgrade-check`, and must answer with one line naming its version
//! and the state formats it reads. Anything else (no such file, not executable,
//! another program, a non-zero exit, no answer within `TIMEOUT`, a format it does not
//! read) means no upgrade, and start_server goes on as it was.
//!
//! The file is opened once, and that open file is both checked (executed with
//! execveat) and, once it has passed, executed as the new image: what is at the path
//! meanwhile does not matter.
//!
//! The check runs while the supervisor goes on: the child is watched as any other
//! (its exit wakes the main loop), with a deadline (`TIMEOUT`, kept in the supervisor's
//! state) after which it gets SIGKILL.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::raw::c_int;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use super::{call, state};
use crate::signals;
use crate::sys::{self, CStrArray, ChildSpec, Pid, Program};

/// How long the new binary may take to answer.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// The hidden command-line mode that answers a check.
pub const MODE: &str = "--upgrade-check";

const ANSWER: &str = "server_starter upgrade-check";

/// The longest answer read.
const ANSWER_MAX: usize = 4096;

/// `start_server --upgrade-check`: the line an older image reads before it executes
/// this one.
pub fn answer() {
    let formats: Vec<String> = state::READS.iter().map(u32::to_string).collect();
    crate::log::print(&format!(
        "{ANSWER} version={} formats={} build={}\n",
        env!("CARGO_PKG_VERSION"),
        formats.join(","),
        crate::build_id::id()
    ));
}

/// A check under way.
pub struct Check {
    pub pid: Pid,
    output: OwnedFd,
    pub killed: bool,
    /// The file checked, open: the one to execute, not another put at the path since.
    pub image: Option<OwnedFd>,
    /// Why the binary could not be executed (the child then exits at once).
    exec_error: Option<io::Error>,
}

/// Where the checked file is in the check: a script's interpreter reads it from there
/// (/dev/fd/3).
const IMAGE_FD: c_int = 3;

/// What the new binary said of itself.
pub struct Answer {
    pub version: String,
    /// Its build id (`--version`'s), if it says it.
    pub build: Option<String>,
}

impl Check {
    /// Runs `exe --upgrade-check` with start_server's environment, stdin on /dev/null,
    /// stdout into a pipe, stderr into the log, and no other descriptor. An error
    /// names the call that failed. `image` is the file at `exe`, opened once: the
    /// check runs it, not the path.
    pub fn spawn(exe: &Path, image: OwnedFd) -> Result<Check, String> {
        let path = CString::new(exe.as_os_str().as_bytes())
            .map_err(|_| "a NUL byte in the path".to_string())?;
        let argv = CStrArray::new(vec![path, CString::new(MODE).expect("no NUL")]);
        let env: Vec<_> = std::env::vars_os().collect();
        let null = File::open("/dev/null").map_err(call("open(2) /dev/null"))?;
        let (output, input) = sys::pipe_cloexec().map_err(call("pipe2(2)"))?;
        let fds = [
            (libc::STDIN_FILENO, null.as_raw_fd()),
            (libc::STDOUT_FILENO, input.as_raw_fd()),
            (IMAGE_FD, image.as_raw_fd()),
        ];
        let mut child = ChildSpec::new(Program::Fd(IMAGE_FD), &argv, &env);
        child.fds = &fds;
        child.only_fds = true;
        child.parent_death_signal = Some(libc::SIGKILL);
        let spawned = sys::spawn(&child).map_err(|e| call(e.call)(e.error))?;
        Ok(Check {
            pid: spawned.pid,
            output,
            killed: false,
            image: Some(image),
            exec_error: spawned.failed.map(|(_, error)| error),
        })
    }

    /// At the deadline: SIGKILL, and the exit that follows is a refusal.
    pub fn kill(&mut self) {
        self.killed = true;
        let _ = sys::kill(self.pid, libc::SIGKILL);
    }

    /// Once the child has exited (raw wait `status`): its answer, or why it is refused.
    pub fn verdict(&self, status: c_int) -> Result<Answer, String> {
        if let Some(error) = &self.exec_error {
            return Err(format!("cannot execute it: {error}"));
        }
        let output = sys::read_available(&self.output, ANSWER_MAX).unwrap_or_default();
        if self.killed {
            return Err(format!(
                "it did not answer {MODE} within {} secs",
                crate::log::seconds(TIMEOUT)
            ));
        }
        if libc::WIFSIGNALED(status) {
            return Err(format!(
                "{MODE} was killed by SIG{}",
                signals::name(libc::WTERMSIG(status))
            ));
        }
        let code = libc::WEXITSTATUS(status);
        if code != 0 {
            return Err(format!("{MODE} exited with status {code}"));
        }
        parse(&output)
    }
}

/// The answer line: `server_starter upgrade-check version=V formats=1,2`.
pub fn parse(output: &[u8]) -> Result<Answer, String> {
    let first = output.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(first);
    let not_ours = || {
        format!(
            "it is not a start_server that can take over (its {MODE} printed {:?})",
            OsStr::from_bytes(first)
        )
    };
    let rest = line.strip_prefix(ANSWER).ok_or_else(not_ours)?;
    let mut version = None;
    let mut build = None;
    let mut formats = Vec::new();
    for word in rest.split_whitespace() {
        match word.split_once('=') {
            Some(("version", v)) => version = Some(v.to_string()),
            Some(("build", b)) => build = Some(b.to_string()),
            Some(("formats", list)) => {
                formats = list.split(',').filter_map(|f| f.parse().ok()).collect()
            }
            // Words a later version may add.
            _ => {}
        }
    }
    let version = version.ok_or_else(not_ours)?;
    if !formats.contains(&state::FORMAT) {
        return Err(format!(
            "version {version} reads state formats {formats:?}, not format {} that this \
             version writes",
            state::FORMAT
        ));
    }
    Ok(Answer { version, build })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        let ok = parse(b"server_starter upgrade-check version=0.2.0 formats=1,2 more=x\n");
        let ok = ok.unwrap();
        assert_eq!((ok.version.as_str(), ok.build), ("0.2.0", None));
        let ok = parse(b"server_starter upgrade-check version=0.3.0 formats=2 build=git:ab12\n");
        assert_eq!(ok.unwrap().build.as_deref(), Some("git:ab12"));
        let e = |out: &[u8]| parse(out).err().unwrap();
        assert!(e(b"").contains("not a start_server"));
        assert!(e(b"Unknown option: upgrade-check\n").contains("Unknown option"));
        assert!(e(b"server_starter upgrade-check formats=1\n").contains("not a start_server"));
        assert!(e(b"server_starter upgrade-check version=9 formats=1,3\n").contains("[1, 3]"));
    }
}
