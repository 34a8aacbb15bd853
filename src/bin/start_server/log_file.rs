//! `--log-file`: a file to append to, or, with a leading `|`, a command (run by
//! `/bin/sh -c`) whose standard input receives the log (see log_pipe.rs). Once set-up
//! is done, start_server's stdout and stderr point there, and so do its workers'.
//!
//! start_server often runs as root and appends to a file in a directory that others
//! may write to (a service user's log directory): whoever can replace the file there
//! (after a rotation, say) must not make root append to another file. So the file is
//! opened, at start and on every USR1, as the status file is written: never through a
//! symlink at the path (O_NOFOLLOW), and never anything but a regular file, which is
//! checked on the file opened (fstat), not before, so that nothing can be swapped in
//! between. O_NONBLOCK keeps a FIFO at the path from hanging open(2) until a reader
//! comes; the file opened is then made blocking again, for the workers that share it.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::time::Instant;

use crate::envdir::regular;
use crate::log_pipe::LogPipe;
use crate::sys::{self, Pid};

pub enum LogFile {
    File { file: File, path: String },
    Pipe { pipe: LogPipe, spec: String },
}

impl LogFile {
    /// Opens the file or makes the pipe, early, so that an error reaches the terminal.
    pub fn open(spec: &str) -> Result<LogFile, String> {
        if let Some(command) = spec.trim_start().strip_prefix('|') {
            let pipe = LogPipe::open(command.trim_start())
                .map_err(|e| format!("failed to open pipe:{spec}: {e}"))?;
            return Ok(LogFile::Pipe {
                pipe,
                spec: spec.to_string(),
            });
        }
        let file = open_append(spec).map_err(|e| format!("failed to open log file:{spec}: {e}"))?;
        Ok(LogFile::File {
            file,
            path: spec.to_string(),
        })
    }

    /// Starts the logger of a pipe, in the process that supervises (the daemon, once
    /// `daemonized`), so that it is that process's child.
    pub fn start(&mut self, daemonized: bool) -> Result<(), String> {
        match self {
            LogFile::File { .. } => Ok(()),
            LogFile::Pipe { pipe, spec } => pipe
                .start(daemonized)
                .map_err(|e| format!("failed to open pipe:{spec}: {e}")),
        }
    }

    /// Points stdout and stderr at the log.
    pub fn redirect(&mut self) -> Result<(), String> {
        let result = match self {
            LogFile::File { file, .. } => [libc::STDOUT_FILENO, libc::STDERR_FILENO]
                .into_iter()
                .try_for_each(|target| sys::dup2(file.as_raw_fd(), target))
                .map(|()| crate::log::follow_stderr()),
            LogFile::Pipe { pipe, .. } => pipe.redirect(),
        };
        result.map_err(|e| format!("failed to redirect output to the log: {e}"))
    }

    /// USR1, after logrotate moved the file away: start_server's own output goes to
    /// the file at the path from now on (created if need be), and so does the next
    /// generations'; running workers keep theirs until they are replaced. A line in
    /// each file marks the switch. What is not a regular file at the path (see the
    /// module's documentation) is refused: the log goes on to the old file.
    pub fn reopen(&mut self) {
        let LogFile::File { file, path } = self else {
            crate::log!(event "log-reopen", "received USR1, but the log is a pipe to a command: nothing to reopen");
            return;
        };
        crate::log!(event "log-reopen", "received USR1, reopening log file {path}");
        match open_append(path) {
            Ok(new) => {
                *file = new;
                match self.redirect() {
                    Ok(()) => crate::log!(event "log-reopen", "log file reopened"),
                    Err(e) => crate::log!("{e}"),
                }
            }
            Err(e) => {
                crate::log!(event "log-reopen", "failed to reopen log file {path}: {e}; logging on to the old one")
            }
        }
    }

    /// A child exited: true if it was the logger, which is then restarted (see
    /// log_pipe.rs).
    pub fn child_exited(&mut self, pid: Pid, status: i32) -> bool {
        match self {
            LogFile::Pipe { pipe, .. } => pipe.child_exited(pid, status),
            LogFile::File { .. } => false,
        }
    }

    /// When a logger is due to be restarted, if one is.
    pub fn restart_at(&self) -> Option<Instant> {
        match self {
            LogFile::Pipe { pipe, .. } => pipe.restart_at(),
            LogFile::File { .. } => None,
        }
    }

    pub fn fire_timers(&mut self, now: Instant) {
        if let LogFile::Pipe { pipe, .. } = self {
            pipe.fire_timers(now);
        }
    }

    /// At exit, once every worker is gone: lets the logger write out what it has read,
    /// within bounds, so that no line is lost and nothing keeps start_server waiting.
    pub fn finish(self) {
        if let LogFile::Pipe { pipe, .. } = self {
            pipe.finish();
        }
    }
}

/// Opens `path` to append to, creating it if need be, by the rules of the module's
/// documentation.
fn open_append(path: &str) -> Result<File, String> {
    let opened = OpenOptions::new()
        .append(true)
        .create(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path);
    let file = match opened {
        Ok(file) => file,
        // ELOOP for a symlink, ENXIO for a FIFO no one reads, EISDIR: say what is
        // there rather than the errno's riddle.
        Err(e) => {
            let there = std::fs::symlink_metadata(path).map(|m| regular(m.file_type()));
            return Err(match there {
                Ok(Err(what)) => refused(what),
                _ => e.to_string(),
            });
        }
    };
    let meta = file
        .metadata()
        .map_err(|e| format!("fstat(2) failed: {e}"))?;
    if !is_null_device(&meta) {
        regular(meta.file_type()).map_err(refused)?;
    }
    sys::clear_nonblocking(&file).map_err(|e| format!("fcntl(F_SETFL) failed: {e}"))?;
    Ok(file)
}

/// `--log-file=/dev/null` is a common way to discard the log, and worked with the
/// original: the null device loses nothing that was asked to be kept, and only root
/// can make a device node, so it is the one exception to "a regular file only".
fn is_null_device(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    meta.file_type().is_char_device() && meta.rdev() == libc::makedev(1, 3)
}

fn refused(what: String) -> String {
    format!("it is {what}: refused")
}
