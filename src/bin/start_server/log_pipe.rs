//! `--log-file="| cmd"`: the log is the standard input of `/bin/sh -c cmd`, the logger,
//! which start_server supervises as it does its workers.
//!
//! start_server makes the pipe and keeps its read end for its whole life, so that no
//! write to the pipe fails (EPIPE, or a worker killed by SIGPIPE) even while no logger
//! runs: lines wait in the pipe, enlarged to `PIPE_SIZE` where the system allows, and
//! the next logger gets the same read end as its stdin. A logger that exits is started
//! again, at once if it had run for `STEADY`, otherwise after a pause that doubles from
//! `FIRST_PAUSE` up to `MAX_PAUSE`. Should the pipe fill meanwhile, the workers' writes
//! block until the next logger reads (at most that pause); start_server's own lines go
//! through a non-blocking descriptor of their own and are dropped instead (then
//! counted), so that start_server itself never hangs on its log.
//!
//! At exit start_server closes its ends of the pipe and waits for the logger to read
//! what is left and exit. Something else that holds the pipe open (a worker's orphan)
//! keeps the logger from ever reading EOF, so the wait is bounded: `LINGER` once the
//! logger has stopped reading, `MAX_EXIT_WAIT` in all; then TERM, and after `LINGER`
//! more KILL, to the logger's process group.

use std::io;
use std::os::unix::io::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::log;
use crate::sys::{self, Pid};

/// The pipe's capacity asked for (64 KiB by default): 1 MiB is what Linux lets an
/// unprivileged process have by default (/proc/sys/fs/pipe-max-size).
const PIPE_SIZE: i32 = 1 << 20;
/// A logger that ran this long is restarted at once when it exits.
const STEADY: Duration = Duration::from_secs(10);
/// The pause before restarting a logger that exited sooner, doubling to `MAX_PAUSE`.
const FIRST_PAUSE: Duration = Duration::from_secs(1);
const MAX_PAUSE: Duration = Duration::from_secs(60);
/// At exit: how long the logger may take to exit once it has stopped reading, and
/// between TERM and KILL.
const LINGER: Duration = Duration::from_secs(2);
/// At exit: the longest wait for a logger that keeps reading before it is signalled.
const MAX_EXIT_WAIT: Duration = Duration::from_secs(10);
/// At exit: how often the pipe is looked at, to see whether the logger still reads.
const EXIT_POLL: Duration = Duration::from_millis(100);

pub struct LogPipe {
    /// The shell command, as given after the `|`.
    command: String,
    read: OwnedFd,
    /// The workers' stdout and stderr, and start_server's once redirected: blocking.
    write: OwnedFd,
    /// start_server's own lines: the same pipe through a file description of its own
    /// that is non-blocking (O_NONBLOCK would otherwise apply to the workers' writes
    /// too); `None` without /proc, when they go as `log::follow_stderr` has them.
    own: Option<OwnedFd>,
    /// The logger's stdout and stderr: start_server's from before the redirection;
    /// `None` (/dev/null) once daemonized, so that the daemon keeps no terminal open.
    output: Option<(OwnedFd, OwnedFd)>,
    logger: Option<Logger>,
    /// When to start the next logger, while none runs.
    restart_at: Option<Instant>,
    /// The pause after the next logger that exits quickly.
    pause: Duration,
    /// Whether start_server's stdout and stderr point at the pipe.
    redirected: bool,
}

#[derive(Clone, Copy)]
struct Logger {
    pid: Pid,
    started: Instant,
}

impl LogPipe {
    /// Makes the pipe; the logger is started later by `start`, in the process that
    /// supervises (after --daemonize's forks), so that it can be reaped and restarted.
    pub fn open(command: &str) -> io::Result<LogPipe> {
        let (read, write) = sys::pipe_cloexec()?;
        // A smaller pipe only means less room while no logger runs.
        let _ = sys::set_pipe_size(&read, PIPE_SIZE);
        let own = log::nonblocking_twin(write.as_raw_fd()).ok();
        Ok(LogPipe {
            command: command.to_string(),
            read,
            write,
            own,
            output: None,
            logger: None,
            restart_at: None,
            pause: FIRST_PAUSE,
            redirected: false,
        })
    }

    /// Starts the first logger, with start_server's stdout and stderr as its own, or
    /// /dev/null once `daemonized`.
    pub fn start(&mut self, daemonized: bool) -> io::Result<()> {
        if !daemonized {
            let stdout = io::stdout().as_fd().try_clone_to_owned()?;
            let stderr = io::stderr().as_fd().try_clone_to_owned()?;
            self.output = Some((stdout, stderr));
        }
        self.spawn()
    }

    fn spawn(&mut self) -> io::Result<()> {
        let (stdout, stderr) = match &self.output {
            Some((out, err)) => (out.try_clone()?.into(), err.try_clone()?.into()),
            None => (Stdio::null(), Stdio::null()),
        };
        let mut command = Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(&self.command)
            .stdin(self.read.try_clone()?)
            .stdout(stdout)
            .stderr(stderr)
            // Its own process group: a Ctrl-C meant for start_server and its workers
            // must not kill the logger before it has read their last lines.
            .process_group(0);
        // No signal ignored or blocked as in start_server, no listening socket.
        sys::exec_clean(&mut command);
        let child = command.spawn()?;
        self.logger = Some(Logger {
            pid: child.id() as Pid,
            started: Instant::now(),
        });
        Ok(())
    }

    /// Points stdout and stderr at the pipe, and start_server's own lines at its
    /// non-blocking descriptor.
    pub fn redirect(&mut self) -> io::Result<()> {
        for target in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
            sys::dup2(self.write.as_raw_fd(), target)?;
        }
        match &self.own {
            Some(own) => log::set_output(own.as_raw_fd()),
            None => log::follow_stderr(),
        }
        self.redirected = true;
        Ok(())
    }

    /// If `pid` is the logger, notes its exit and schedules the next one: true.
    pub fn child_exited(&mut self, pid: Pid, status: i32) -> bool {
        let Some(logger) = self.logger.filter(|l| l.pid == pid) else {
            return false;
        };
        self.logger = None;
        if logger.started.elapsed() >= STEADY {
            self.pause = FIRST_PAUSE;
            log!("log command exited with status {status}, restarting it");
            self.restart();
        } else {
            log!(
                "log command exited with status {status}, restarting it in {} secs",
                log::seconds(self.pause)
            );
            self.schedule_restart();
        }
        true
    }

    /// When the next logger is due, while none runs.
    pub fn restart_at(&self) -> Option<Instant> {
        self.restart_at
    }

    pub fn fire_timers(&mut self, now: Instant) {
        if self.restart_at.is_some_and(|at| at <= now) {
            self.restart_at = None;
            self.restart();
        }
    }

    fn restart(&mut self) {
        if let Err(e) = self.spawn() {
            log!(
                "failed to start log command: {e}; trying again in {} secs",
                log::seconds(self.pause)
            );
            self.schedule_restart();
        }
    }

    fn schedule_restart(&mut self) {
        self.restart_at = Some(Instant::now() + self.pause);
        self.pause = (self.pause * 2).min(MAX_PAUSE);
    }

    /// At exit, once every worker is gone: closes start_server's ends of the pipe and
    /// lets the logger write out what it has read, within the bounds of the module
    /// documentation. If the logger is down, waiting for its restart, one more is
    /// started for the lines left in the pipe.
    pub fn finish(mut self) {
        if self.redirected {
            let _ = sys::redirect_to_dev_null(&[libc::STDOUT_FILENO, libc::STDERR_FILENO]);
            log::follow_stderr();
        }
        if self.logger.is_none()
            && self.restart_at.is_some()
            && sys::pipe_queued(&self.read).is_ok_and(|n| n > 0)
        {
            let _ = self.spawn();
        }
        let Some(logger) = self.logger else {
            return;
        };
        drop(self.own);
        drop(self.write);
        if wait_reading(logger.pid, &self.read) {
            return;
        }
        for sig in [libc::SIGTERM, libc::SIGKILL] {
            // Not reaped yet, so the logger's pid (its group's id) is still its own.
            let _ = sys::kill(-logger.pid, sig);
            if wait_exit(logger.pid, Instant::now() + LINGER) {
                return;
            }
        }
    }
}

/// Waits for the logger to exit, as long as it keeps taking lines out of the pipe
/// (`read` is its read end) and `LINGER` more, `MAX_EXIT_WAIT` at most. False if it is
/// still running then.
fn wait_reading(pid: Pid, read: &OwnedFd) -> bool {
    let end = Instant::now() + MAX_EXIT_WAIT;
    let mut deadline = Instant::now() + LINGER;
    let mut queued = sys::pipe_queued(read).unwrap_or(0);
    loop {
        if wait_exit(pid, deadline.min(Instant::now() + EXIT_POLL)) {
            return true;
        }
        let left = sys::pipe_queued(read).unwrap_or(0);
        if left < queued {
            deadline = (Instant::now() + LINGER).min(end);
        }
        queued = left;
        if Instant::now() >= deadline {
            return false;
        }
    }
}

/// Waits until the child `pid` has exited (true), or `deadline` passes (false).
fn wait_exit(pid: Pid, deadline: Instant) -> bool {
    loop {
        match sys::reap_child(pid) {
            Ok(None) => {}
            // Exited, or not ours to wait for any more.
            _ => return true,
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        let _ = sys::wait_child_signal(deadline - now);
    }
}

// ---------------------------------------------------------------- upgrade in place

/// A `LogPipe` as an upgrade in place carries it to the next image: its descriptors by
/// number, the logger, and its restart schedule.
pub struct Handover {
    pub command: String,
    pub read: RawFd,
    pub write: RawFd,
    pub own: Option<RawFd>,
    pub output: Option<(RawFd, RawFd)>,
    /// The logger's pid, and when it was started.
    pub logger: Option<(Pid, Instant)>,
    pub restart_at: Option<Instant>,
    pub pause: Duration,
    pub redirected: bool,
}

impl Handover {
    /// Every descriptor the pipe holds.
    pub fn fds(&self) -> Vec<RawFd> {
        let output = self.output.iter().flat_map(|&(out, err)| [out, err]);
        [self.read, self.write]
            .into_iter()
            .chain(self.own)
            .chain(output)
            .collect()
    }
}

impl LogPipe {
    pub fn handover(&self) -> Handover {
        Handover {
            command: self.command.clone(),
            read: self.read.as_raw_fd(),
            write: self.write.as_raw_fd(),
            own: self.own.as_ref().map(AsRawFd::as_raw_fd),
            output: self
                .output
                .as_ref()
                .map(|(out, err)| (out.as_raw_fd(), err.as_raw_fd())),
            logger: self.logger.map(|l| (l.pid, l.started)),
            restart_at: self.restart_at,
            pause: self.pause,
            redirected: self.redirected,
        }
    }

    /// The previous image's pipe, the same descriptors, its logger still running (or
    /// due); start_server's own lines go through the same non-blocking descriptor.
    pub fn taken_over(h: Handover) -> io::Result<LogPipe> {
        let own = h.own.map(sys::adopt_fd).transpose()?;
        let output = match h.output {
            Some((out, err)) => Some((sys::adopt_fd(out)?, sys::adopt_fd(err)?)),
            None => None,
        };
        let pipe = LogPipe {
            command: h.command,
            read: sys::adopt_fd(h.read)?,
            write: sys::adopt_fd(h.write)?,
            own,
            output,
            logger: h.logger.map(|(pid, started)| Logger { pid, started }),
            restart_at: h.restart_at,
            pause: h.pause,
            redirected: h.redirected,
        };
        if let (true, Some(own)) = (pipe.redirected, &pipe.own) {
            log::set_output(own.as_raw_fd());
        }
        Ok(pipe)
    }
}
