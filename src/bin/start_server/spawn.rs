//! The server command, and spawning a worker from it: the PATH search execvp would
//! make, done through `sys::spawn` (which prepares everything before fork).

use std::ffi::{CString, OsStr, OsString};
use std::os::raw::c_int;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::RawFd;
use std::path::{Path, PathBuf};

pub use crate::sys::SpawnError;
use crate::sys::{self, CStrArray, ChildSpec, Pid, Program, Stage};

/// Where a worker's processes are kept together, so that they can be found and
/// stopped after it has exited.
pub enum Place<'a> {
    /// In this cgroup (its `cgroup.procs` open for writing, and its directory).
    Cgroup(RawFd, &'a Path),
    /// In a process group of its own.
    OwnGroup,
}

/// The server command and where to run it, as given on the command line.
pub struct Command {
    argv: CStrArray,
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

/// errno values of exec that say the command is wrong, not that the moment is.
const CANNOT_EXECUTE: [c_int; 6] = [
    libc::ENOENT,
    libc::ENOTDIR,
    libc::EACCES,
    libc::ENOEXEC,
    libc::ELOOP,
    libc::ENAMETOOLONG,
];

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
        let argv = CStrArray::new(
            args.iter()
                .map(|a| cstring(a.as_bytes()))
                .collect::<Result<_, _>>()?,
        );
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
        let argv = self.argv.strings().iter().map(|a| a.as_bytes()).collect();
        let dir = self.dir.as_ref().map(|d| d.as_bytes());
        (argv, dir, &self.own_pid_vars)
    }

    fn program(&self) -> &CString {
        &self.argv.strings()[0]
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

    /// The file execvp would execute for `env`'s PATH (the first candidate that is a
    /// regular, executable file), relative to `--dir` where it is relative, made
    /// absolute: what `--status` watches for a new build.
    pub fn program_file(&self, env: &[(OsString, OsString)]) -> Option<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        self.candidates(env).into_iter().find_map(|candidate| {
            let path = Path::new(OsStr::from_bytes(candidate.as_bytes()));
            let path = match (&self.dir, path.is_relative()) {
                (Some(dir), true) => Path::new(OsStr::from_bytes(dir.as_bytes())).join(path),
                _ => path.to_path_buf(),
            };
            let meta = std::fs::metadata(&path).ok()?;
            let executable = meta.is_file() && meta.permissions().mode() & 0o111 != 0;
            executable
                .then(|| std::path::absolute(&path).ok())
                .flatten()
        })
    }

    /// Forks and execs the command with `env` (later entries override earlier ones),
    /// in the tree `place` says.
    pub fn spawn(&self, env: &[(OsString, OsString)], place: Place) -> Result<Spawned, SpawnError> {
        let candidates = self.candidates(env);
        let mut child = ChildSpec::new(Program::Files(&candidates), &self.argv, env);
        child.own_pid_vars = &self.own_pid_vars;
        child.dir = self.dir.as_deref();
        child.parent_death_signal = Some(self.parent_death_signal);
        match place {
            Place::Cgroup(procs, _) => child.cgroup = Some(procs),
            Place::OwnGroup => child.own_group = true,
        }
        let spawned = sys::spawn(&child)?;
        let unexecutable = matches!(
            &spawned.failed,
            Some((Stage::Exec, err)) if err.raw_os_error().is_some_and(|e| CANNOT_EXECUTE.contains(&e))
        );
        let exec_error = spawned.failed.map(|(stage, err)| match (stage, &self.dir) {
            (Stage::Chdir, Some(dir)) => {
                format!("failed to chdir to {}: {err}", dir.to_string_lossy())
            }
            (Stage::Cgroup, _) => match &place {
                Place::Cgroup(_, dir) => format!("failed to join cgroup {}: {err}", dir.display()),
                Place::OwnGroup => format!("failed to join its cgroup: {err}"),
            },
            _ => format!("failed to exec {}: {err}", self.program().to_string_lossy()),
        });
        Ok(Spawned {
            pid: spawned.pid,
            exec_error,
            unexecutable,
        })
    }
}
