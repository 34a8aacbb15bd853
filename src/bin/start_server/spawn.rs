//! Spawning a worker: fork, then exec the server command.
//!
//! Everything the child needs (argv, envp, the PATH candidates execvp would try) is
//! built before fork, so that between fork and exec the child only makes
//! async-signal-safe system calls and allocates nothing. A failure in the child is
//! written to a close-on-exec pipe; the parent reads it and reports it, so that the
//! message is formatted (and allocated) on the parent's side.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::raw::{c_char, c_int};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::Path;
use std::ptr;

use crate::sys::{self, Fork, Pid};

/// The server command and where to run it, as given on the command line.
pub struct Command {
    argv: Vec<CString>,
    dir: Option<CString>,
    /// Sent to the worker by the kernel if start_server dies without stopping it.
    parent_death_signal: c_int,
    /// The variables naming the worker's own pid (`LISTEN_PID` with `--listen-fds`,
    /// `WATCHDOG_PID` with `--watchdog`), which only the child can fill in.
    own_pid_vars: Vec<&'static str>,
}

/// How a spawn went: the child exists either way and will be reaped; `exec_error` says
/// why it could not become the server.
pub struct Spawned {
    pub pid: Pid,
    pub exec_error: Option<String>,
    /// The command itself cannot be executed (missing, not executable, not a program):
    /// trying again cannot help until someone changes the file.
    pub unexecutable: bool,
}

/// A spawn that failed in start_server itself (the child, if any, reports through
/// `Spawned::exec_error`): which call failed, and why.
#[derive(Debug)]
pub struct SpawnError {
    pub call: &'static str,
    pub error: io::Error,
}

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} failed: {}", self.call, self.error)
    }
}

/// Tags an error with the call that returned it.
fn failed(call: &'static str) -> impl FnOnce(io::Error) -> SpawnError {
    move |error| SpawnError { call, error }
}

/// errno values after which execvp goes on to the next PATH entry.
const TRY_NEXT: [c_int; 5] = [
    libc::ENOENT,
    libc::ENOTDIR,
    libc::ESTALE,
    libc::ENODEV,
    libc::ETIMEDOUT,
];

/// errno values of exec that say the command is wrong, not that the moment is.
const CANNOT_EXECUTE: [c_int; 6] = [
    libc::ENOENT,
    libc::ENOTDIR,
    libc::EACCES,
    libc::ENOEXEC,
    libc::ELOOP,
    libc::ENAMETOOLONG,
];

const STAGE_CHDIR: u8 = b'c';
const STAGE_EXEC: u8 = b'e';

impl Command {
    pub fn new(
        args: &[String],
        dir: Option<&Path>,
        parent_death_signal: c_int,
    ) -> Result<Command, String> {
        let cstring = |bytes: &[u8]| {
            CString::new(bytes)
                .map_err(|_| format!("a NUL byte in {:?}", String::from_utf8_lossy(bytes)))
        };
        if args.is_empty() {
            return Err("server program not specified".into());
        }
        let argv = args
            .iter()
            .map(|a| cstring(a.as_bytes()))
            .collect::<Result<_, _>>()?;
        let dir = dir.map(|d| cstring(d.as_os_str().as_bytes())).transpose()?;
        Ok(Command {
            argv,
            dir,
            parent_death_signal,
            own_pid_vars: Vec::new(),
        })
    }

    /// Gives every worker the variable `name` set to its own pid (replacing any in its
    /// environment).
    pub fn export_own_pid(&mut self, name: &'static str) {
        self.own_pid_vars.push(name);
    }

    /// For an upgrade in place: the command line and the directory, as `new` took
    /// them, and the variables given to `export_own_pid`.
    pub fn handover(&self) -> (Vec<&[u8]>, Option<&[u8]>, &[&'static str]) {
        let argv = self.argv.iter().map(|a| a.as_bytes()).collect();
        let dir = self.dir.as_ref().map(|d| d.as_bytes());
        (argv, dir, &self.own_pid_vars)
    }

    fn program(&self) -> &CString {
        &self.argv[0]
    }

    /// The files execvp would try, in order, for this environment's PATH.
    fn candidates(&self, env: &[(OsString, OsString)]) -> Vec<CString> {
        let program = self.program().as_bytes();
        if program.contains(&b'/') {
            return vec![self.program().clone()];
        }
        let path = env
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_os_str());
        let path = path.unwrap_or(OsStr::new("/bin:/usr/bin")).as_bytes();
        path.split(|&b| b == b':')
            .filter_map(|dir| {
                // An empty PATH element means the current directory.
                let dir: &[u8] = if dir.is_empty() { b"." } else { dir };
                CString::new([dir, b"/", program].concat()).ok()
            })
            .collect()
    }

    /// Forks and execs the command with `env` (later entries override earlier ones).
    pub fn spawn(&self, env: &[(OsString, OsString)]) -> Result<Spawned, SpawnError> {
        let candidates = self.candidates(env);
        let envp_strings = envp(env, &self.own_pid_vars);
        let argv = pointers(&self.argv);
        let mut envp = pointers(&envp_strings);
        // Each pid variable gets a slot before the terminating NULL, filled in by the
        // child, which alone knows its pid.
        let mut own_pids: Vec<(PidEntry, usize)> = self
            .own_pid_vars
            .iter()
            .map(|name| {
                envp.insert(envp.len() - 1, ptr::null());
                (PidEntry::new(name), envp.len() - 2)
            })
            .collect();
        let (report_read, report_write) = sys::pipe_cloexec().map_err(failed("pipe2(2)"))?;
        let parent = std::process::id() as Pid;

        match sys::fork().map_err(failed("fork(2)"))? {
            Fork::Child => {
                let pid = sys::child_getpid();
                for (entry, slot) in own_pids.iter_mut() {
                    if let Some(pointer) = envp.get_mut(*slot) {
                        *pointer = entry.fill(pid);
                    }
                }
                self.exec_child(parent, &candidates, &argv, &envp, report_write.as_raw_fd())
            }
            Fork::Parent(pid) => {
                drop(report_write);
                let mut buf = [0u8; 5];
                // EOF (0 bytes) means exec succeeded and closed the pipe.
                let n = sys::read_full(&report_read, &mut buf).map_err(failed("read(2)"))?;
                let errno = c_int::from_ne_bytes([buf[1], buf[2], buf[3], buf[4]]);
                let unexecutable =
                    n == buf.len() && buf[0] == STAGE_EXEC && CANNOT_EXECUTE.contains(&errno);
                let exec_error = (n == buf.len()).then(|| {
                    let err = io::Error::from_raw_os_error(errno);
                    let program = self.program().to_string_lossy();
                    match (buf[0], &self.dir) {
                        (STAGE_CHDIR, Some(dir)) => {
                            format!("failed to chdir to {}: {err}", dir.to_string_lossy())
                        }
                        _ => format!("failed to exec {program}: {err}"),
                    }
                });
                Ok(Spawned {
                    pid,
                    exec_error,
                    unexecutable,
                })
            }
        }
    }
}

impl Command {
    /// In the child, between fork and exec: only async-signal-safe calls, no allocation.
    fn exec_child(
        &self,
        parent: Pid,
        candidates: &[CString],
        argv: &[*const c_char],
        envp: &[*const c_char],
        report: RawFd,
    ) -> ! {
        sys::child_reset_signals();
        if !sys::child_set_parent_death_signal(self.parent_death_signal, parent) {
            sys::child_exit(255);
        }
        if let Some(dir) = &self.dir {
            if let Err(errno) = sys::child_chdir(dir) {
                child_fail(report, STAGE_CHDIR, errno);
            }
        }
        // execvp's search: go on past a missing file; remember a permission problem
        // and report it if nothing better is found.
        let mut errno = libc::ENOENT;
        let mut denied = false;
        for candidate in candidates {
            errno = sys::child_execve(candidate, argv, envp);
            denied |= errno == libc::EACCES;
            if errno != libc::EACCES && !TRY_NEXT.contains(&errno) {
                break;
            }
        }
        child_fail(
            report,
            STAGE_EXEC,
            if denied && TRY_NEXT.contains(&errno) {
                libc::EACCES
            } else {
                errno
            },
        )
    }
}

/// In the child: tells the parent which step failed with which errno, and exits 255 as
/// the original's child does when exec fails.
fn child_fail(fd: RawFd, stage: u8, errno: c_int) -> ! {
    let [a, b, c, d] = errno.to_ne_bytes();
    sys::child_write(fd, &[stage, a, b, c, d]);
    sys::child_exit(255)
}

/// `KEY=VALUE` strings; an entry with a NUL byte cannot be passed and is left out, and
/// so are the pid variables the child writes itself.
pub fn envp(env: &[(OsString, OsString)], own_pid_vars: &[&str]) -> Vec<CString> {
    env.iter()
        .filter(|(k, _)| !own_pid_vars.iter().any(|name| k == name))
        .filter_map(|(k, v)| CString::new([k.as_bytes(), b"=", v.as_bytes()].concat()).ok())
        .collect()
}

/// A `NAME=<pid>` entry (`LISTEN_PID=`, `WATCHDOG_PID=`), in a buffer made before fork
/// and filled in the child without allocating.
struct PidEntry {
    bytes: [u8; PidEntry::SIZE],
    prefix: usize,
}

impl PidEntry {
    /// Room for the longest name, `=`, the ten digits of the largest pid_t, and the NUL.
    const SIZE: usize = 32;

    fn new(name: &str) -> PidEntry {
        let mut bytes = [0; Self::SIZE];
        let prefix = [name.as_bytes(), b"="].concat();
        assert!(prefix.len() + 11 <= Self::SIZE, "{name} is too long");
        bytes[..prefix.len()].copy_from_slice(&prefix);
        PidEntry {
            bytes,
            prefix: prefix.len(),
        }
    }

    /// Writes `pid` after the prefix, NUL-terminated; returns the entry for envp.
    /// Async-signal-safe: no allocation, no panic.
    fn fill(&mut self, pid: Pid) -> *const c_char {
        let pid = pid.unsigned_abs();
        let width = pid.checked_ilog10().unwrap_or(0) + 1;
        for (i, dst) in (0u32..).zip(self.bytes.iter_mut().skip(self.prefix)) {
            *dst = match width.checked_sub(i + 1) {
                Some(power) => b'0' + (pid / 10u32.pow(power) % 10) as u8,
                None => 0,
            };
        }
        self.bytes.as_ptr().cast()
    }
}

/// The NULL-terminated pointer array execve wants; `strings` must outlive it.
pub fn pointers(strings: &[CString]) -> Vec<*const c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(Some(ptr::null()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_entries() {
        let mut entry = PidEntry::new("LISTEN_PID");
        for (pid, text) in [
            (1, "LISTEN_PID=1"),
            (4_194_304, "LISTEN_PID=4194304"),
            (Pid::MAX, "LISTEN_PID=2147483647"),
            (10, "LISTEN_PID=10"),
        ] {
            assert_eq!(entry.fill(pid), entry.bytes.as_ptr().cast());
            let (written, rest) = entry.bytes.split_at(text.len());
            assert_eq!(written, text.as_bytes());
            assert!(rest.iter().all(|&b| b == 0), "{text}: {rest:?}");
        }
    }

    #[test]
    fn watchdog_pid_entry() {
        let mut entry = PidEntry::new("WATCHDOG_PID");
        entry.fill(Pid::MAX);
        assert_eq!(&entry.bytes[..23], b"WATCHDOG_PID=2147483647");
        assert_eq!(entry.bytes[23], 0);
    }
}
