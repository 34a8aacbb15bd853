//! `--log-file`: a file to append to, or, with a leading `|`, a command (run by
//! `/bin/sh -c`) whose standard input receives the log. Once set-up is done,
//! start_server's stdout and stderr point there, and so do its workers'.

use std::fs::{File, OpenOptions};
use std::os::unix::io::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use crate::sys::{self, Pid};

pub enum LogFile {
    File {
        file: File,
        path: String,
    },
    /// The write end of the logger's stdin, and the logger.
    Pipe {
        stdin: File,
        logger: Pid,
    },
}

impl LogFile {
    /// Opens the log before any socket is bound, so that the logger inherits none.
    pub fn open(spec: &str) -> Result<LogFile, String> {
        if let Some(command) = spec.trim_start().strip_prefix('|') {
            let command = command.trim_start();
            let mut logger = Command::new("/bin/sh")
                .arg("-c")
                .arg(command)
                .stdin(Stdio::piped())
                // Its own process group: a Ctrl-C meant for start_server and its
                // workers must not kill the logger before it has read their last lines.
                .process_group(0)
                .spawn()
                .map_err(|e| format!("failed to open pipe:{spec}: {e}"))?;
            let stdin = logger
                .stdin
                .take()
                .ok_or_else(|| format!("failed to open pipe:{spec}"))?;
            return Ok(LogFile::Pipe {
                stdin: File::from(OwnedFd::from(stdin)),
                logger: logger.id() as Pid,
            });
        }
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(spec)
            .map_err(|e| format!("failed to open log file:{spec}: {e}"))?;
        Ok(LogFile::File {
            file,
            path: spec.to_string(),
        })
    }

    /// Points stdout and stderr at the log.
    pub fn redirect(&self) -> Result<(), String> {
        let fd = self.fd();
        for target in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
            sys::dup2(fd, target)
                .map_err(|e| format!("failed to redirect output to the log: {e}"))?;
        }
        Ok(())
    }

    /// USR1, after logrotate moved the file away: start_server's own output goes to
    /// the file at the path from now on (created if need be), and so does the next
    /// generations'; running workers keep theirs until they are replaced. A line in
    /// each file marks the switch.
    pub fn reopen(&mut self) {
        let LogFile::File { file, path } = self else {
            crate::log!("received USR1, but the log is a pipe to a command: nothing to reopen");
            return;
        };
        crate::log!("received USR1, reopening log file {path}");
        match OpenOptions::new().append(true).create(true).open(&*path) {
            Ok(new) => {
                *file = new;
                match self.redirect() {
                    Ok(()) => crate::log!("log file reopened"),
                    Err(e) => crate::log!("{e}"),
                }
            }
            Err(e) => {
                crate::log!("failed to reopen log file {path}: {e}; logging on to the old one")
            }
        }
    }

    /// At exit, once every worker is gone: closes start_server's ends of the pipe, then
    /// waits for the logger to write out what it has read, so that no line is lost.
    pub fn finish(self) {
        if let LogFile::Pipe { stdin, logger } = self {
            let _ = sys::redirect_to_dev_null(&[libc::STDOUT_FILENO, libc::STDERR_FILENO]);
            drop(stdin);
            // After --daemonize the logger is the launcher's child, not ours: nothing
            // to wait for then (ECHILD).
            sys::wait_child(logger);
        }
    }

    // ------------------------------------------------------------ upgrade in place

    /// The descriptor the log is written to, which an upgrade in place keeps open for
    /// the next image.
    pub fn fd(&self) -> RawFd {
        match self {
            LogFile::File { file, .. } => file.as_raw_fd(),
            LogFile::Pipe { stdin, .. } => stdin.as_raw_fd(),
        }
    }
}
