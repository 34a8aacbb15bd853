//! The supervisor: a state machine over four kinds of event, read top to bottom in
//! `run`: a signal (see `signals::meaning`), a child's exit, a message on a worker's
//! notification socket or the control socket, a timer.
//!
//! A worker is spawned into an *attempt*. It has *started* when it is still alive after
//! `--interval`, or, with `--ready=notify`, when it says `READY=1`: it becomes the
//! current worker and, if it replaces others (a restart), the old workers are
//! signalled, after `--kill-old-delay`. If it dies first (or is not ready in time), the
//! attempt is retried, paced, while the old workers go on serving.
//!
//! This file holds the state and the events; `timers` the deadlines, `transitions`
//! what each event leads to ("started", "failed to start", "stop the old ones"), each
//! in one place; `upgrade` the upgrade in place (USR2), which hands this state over to
//! a new image of start_server.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::os::raw::c_int;
use std::os::unix::io::RawFd;
use std::time::{Duration, Instant};

use crate::control_socket::{self, Ask, ControlSocket};
use crate::daemon::{self, Daemon};
use crate::envdir::{self, Tunables};
use crate::listen_fds::WorkerVars;
use crate::log;
use crate::log_file::LogFile;
use crate::manager::Manager;
use crate::notify::{Channel, Notice, Said};
use crate::signals::{self, Events, Meaning, Signal};
use crate::spawn::Command;
use crate::status_file::StatusFile;
use crate::sys::{self, Pid, SockAddr};
use crate::throttle::Throttle;
use crate::upgrade::Context;

mod timers;
mod transitions;
mod upgrade;

pub use self::upgrade::Saved;

pub struct Settings {
    pub interval: Duration,
    pub signal_on_hup: Signal,
    pub signal_on_term: Signal,
    /// The value of SERVER_STARTER_PORT.
    pub port_env: String,
    /// systemd's variables for the workers (`--listen-fds`).
    pub listen_vars: WorkerVars,
    /// `--kill-timeout`: how long a signalled worker may take to exit before SIGKILL.
    pub kill_timeout: Option<Duration>,
    /// `--backoff`: the longest pause between failed starts, which double up to it.
    pub backoff: Option<Duration>,
    /// `--ready=notify`: a worker has started when it says `READY=1`, not when it
    /// outlives the interval.
    pub ready_notify: bool,
    /// `--ready-timeout`: how long a worker may take to say `READY=1`.
    pub ready_timeout: Duration,
    /// `--watchdog`: how long a started worker may go without saying `WATCHDOG=1`.
    pub watchdog: Option<Duration>,
}

/// Why the current worker counts as hung (`--watchdog`).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Hang {
    /// No `WATCHDOG=1` within the period.
    Silent,
    /// It said `WATCHDOG=trigger`.
    Triggered,
}

/// A `--restart` client waiting for the verdict on a restart that began after it
/// asked: the first generation above `after` to start, or to fail.
struct Waiter {
    to: SockAddr,
    after: u64,
}

/// How long a worker that was told to stop without `--kill-timeout` (because it was
/// not ready in time, or hung) has before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The shortest pause between two tries after a failed start, even at `--interval=0`
/// (systemd's default RestartSec), so that a worker that cannot start never makes
/// start_server spin.
pub const RETRY_FLOOR: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug, PartialEq)]
struct Worker {
    pid: Pid,
    generation: u64,
    spawned_at: Instant,
}

/// A worker of an older generation (or any worker, once stopping): signalled to stop,
/// or about to be, and waited for.
#[derive(Clone, Copy, Debug)]
struct Old {
    generation: u64,
    /// Whether the status file lists it: not a worker that never became ready.
    listed: bool,
    /// When it gets SIGKILL, and the grace it had since its stop signal.
    kill: Option<(Instant, Duration)>,
}

/// A generation being started.
struct Attempt {
    /// The spawned worker; `None` once it has died (or could not be forked): the next
    /// try is at `until`.
    worker: Option<Worker>,
    /// When the last try was made, from which the pause before the next is counted.
    spawned_at: Instant,
    /// When the worker counts as started, or when to try again.
    until: Instant,
    /// Whether it replaces running workers (a restart), which are signalled once it
    /// has started.
    replacing: bool,
}

pub struct Supervisor<'a> {
    settings: Settings,
    /// What the environment (and --envdir) said at the last spawn.
    tunables: Tunables,
    command: Command,
    status_file: Option<StatusFile>,
    log_file: Option<&'a mut LogFile>,
    /// The last generation number given out; every spawn attempt takes the next one.
    generation: u64,
    /// The started worker of the newest generation.
    current: Option<Worker>,
    attempt: Option<Attempt>,
    /// Workers of older generations, by pid: signalled to stop (or about to be), and
    /// waited for.
    old: BTreeMap<Pid, Old>,
    /// Failed starts in a row, for the pause before the next try.
    failures: u32,
    /// `failures` before the current worker's start reset it: at an `--interval` below
    /// `RETRY_FLOOR`, a worker declared started that dies within a retry pause is a
    /// failed start after all, and the count goes on from there.
    failures_before_start: u32,
    /// The notification sockets of the workers (`--ready=notify`, `--watchdog`), by pid.
    channels: BTreeMap<Pid, Channel>,
    /// When the current worker is hung unless it says `WATCHDOG=1` first.
    watchdog_at: Option<Instant>,
    /// Where `--restart` clients ask (with `--pid-file`), and who is waiting.
    control: Option<ControlSocket>,
    waiting: Vec<Waiter>,
    /// What other processes may cost through the notification and control sockets.
    throttle: Throttle,
    /// The service manager start_server reports to, if any, and whether it was told
    /// of a restart that has no outcome yet.
    manager: Option<Manager>,
    reloading: bool,
    /// When to signal the old workers, during `--kill-old-delay`.
    kill_old_at: Option<Instant>,
    /// A HUP arrived while a restart was under way: one more restart follows it.
    hup_pending: bool,
    /// When the current worker started, for auto-restart.
    started_at: Option<Instant>,
    /// TERM or INT arrived: every worker has been signalled; exit once all are gone.
    stopping: bool,
    /// What an upgrade in place hands over besides this state, and the upgrade under
    /// way, if any.
    context: Context<'a>,
    upgrade: Option<upgrade::Upgrade>,
    /// `--daemonize`'s launcher, waiting to hear how generation 1 went.
    launcher: Option<Daemon>,
    /// Why start_server gives up, once it has (generation 1's command cannot be
    /// executed): the loop ends, and `run` returns it.
    fatal: Option<String>,
}

impl<'a> Supervisor<'a> {
    // Each is one thing `main` set up, in its order (the manager before the logger is
    // spawned, see `Manager::from_environment`); a struct of them would only rename them.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: Settings,
        tunables: Tunables,
        command: Command,
        status_file: Option<StatusFile>,
        log_file: Option<&'a mut LogFile>,
        control: Option<ControlSocket>,
        manager: Option<Manager>,
        context: Context<'a>,
    ) -> Supervisor<'a> {
        Supervisor {
            settings,
            tunables,
            command,
            status_file,
            log_file,
            generation: 0,
            current: None,
            attempt: None,
            old: BTreeMap::new(),
            failures: 0,
            failures_before_start: 0,
            channels: BTreeMap::new(),
            watchdog_at: None,
            control,
            waiting: Vec::new(),
            throttle: Throttle::default(),
            manager,
            reloading: false,
            kill_old_at: None,
            hup_pending: false,
            started_at: None,
            stopping: false,
            context,
            upgrade: None,
            launcher: None,
            fatal: None,
        }
    }

    /// Tells `launcher` how generation 1 went, once it has started or failed to.
    pub fn report_first_start(&mut self, launcher: Option<Daemon>) {
        self.launcher = launcher;
    }

    /// Runs until a stop signal has been handled and every worker has exited, or until
    /// start_server gives up (an error). A supervisor restored after an upgrade in place
    /// goes on where the previous image left off; a new one starts the first generation.
    pub fn run(&mut self, events: &Events) -> Result<(), String> {
        if self.generation == 0 {
            self.spawn(false);
        }
        while !(self.stopping && self.old.is_empty()) {
            let watched: Vec<RawFd> = self
                .channels
                .values()
                .map(Channel::fd)
                .chain(self.control.as_ref().map(ControlSocket::fd))
                .filter(|&fd| self.throttle.watched(fd))
                .collect();
            let arrived = match events.wait(self.next_deadline(), &watched) {
                Ok(arrived) => arrived,
                Err(e) => {
                    // Blind from here on: at least leave no worker running.
                    self.stop(libc::SIGTERM);
                    return Err(self.give_up(format!("waiting for events failed: {e}")));
                }
            };
            // Exits first: a worker that is gone must be neither signalled nor
            // declared started.
            self.reap();
            for ignored in arrived.ignored() {
                log!(
                    "received {} from pid {}, ignoring it",
                    signals::name(ignored.sig),
                    ignored.pid
                );
            }
            self.read_notifications(&arrived.readable);
            if let Some(sig) = arrived.stop() {
                self.stop(sig);
            }
            if arrived.has(Meaning::Reopen) {
                self.reopen_log();
            }
            let upgrades = arrived
                .signals
                .iter()
                .filter(|r| signals::meaning(r.sig) == Some(Meaning::Upgrade));
            // Standard signals do not queue: one upgrade for those read together.
            if let Some(first) = upgrades.map(|r| r.pid).next() {
                self.upgrade(first, None);
            }
            if arrived.has(Meaning::Restart) {
                self.hup();
            }
            self.read_requests(&arrived.readable);
            self.throttle.tick(Instant::now());
            self.fire_timers(Instant::now());
            // Last, once every event read in this turn has been acted on: what arrives
            // from now on waits in the kernel (blocked signals, queued datagrams, exits)
            // for the new image.
            self.exec_upgrade();
        }
        if let Some(why) = self.fatal.take() {
            return Err(self.give_up(why));
        }
        log!("exiting");
        if let Some(status_file) = &self.status_file {
            status_file.remove();
        }
        Ok(())
    }

    /// start_server gives up with `why`: the launcher, if still waiting, says so too.
    fn give_up(&mut self, why: String) -> String {
        if let Some(launcher) = self.launcher.take() {
            launcher.failed(daemon::GAVE_UP, &why);
        }
        why
    }

    // ------------------------------------------------------------ events

    fn hup(&mut self) {
        if self.stopping {
            return;
        }
        if self.attempt.is_some() || self.kill_old_at.is_some() {
            self.hup_pending = true;
        } else {
            log!("received HUP, spawning a new worker");
            self.restart();
        }
    }

    /// A stop signal: signal every worker, then wait for all of them to exit. Unlike
    /// the original, which ignores them, a repeated stop signal signals the workers
    /// still running again.
    fn stop(&mut self, sig: c_int) {
        if !self.stopping {
            self.stopping = true;
            self.watchdog_at = None;
            if let Some(manager) = &self.manager {
                manager.stopping();
            }
            self.verdict(u64::MAX, "FAILED start_server is stopping");
            self.abandon_upgrade("start_server is stopping");
            self.hup_pending = false;
            self.kill_old_at = None;
            let starting = self.attempt.take().and_then(|a| a.worker);
            for worker in starting.into_iter().chain(self.current.take()) {
                self.retire(worker);
            }
        }
        // As in the original, INT is passed on as TERM; the other stop signals become
        // --signal-on-term, as TERM does.
        let send = if sig == libc::SIGINT {
            Signal::term()
        } else {
            self.settings.signal_on_term.clone()
        };
        log!(
            "received {}, sending {} to all workers:{}",
            signals::name(sig),
            send.name,
            self.old_pids()
        );
        self.signal_old(&send);
    }

    /// `--restart` clients: each is a HUP, and waits for its verdict. `--upgrade`
    /// clients: each is a USR2.
    fn read_requests(&mut self, readable: &[RawFd]) {
        let requests = match &self.control {
            Some(control) if readable.contains(&control.fd()) => {
                control.requests(&mut self.throttle)
            }
            _ => return,
        };
        for request in requests {
            if let Some(control) = &self.control {
                control.reply(&request.from, control_socket::ACCEPTED);
            }
            if request.ask == Ask::Upgrade {
                self.upgrade(request.pid, Some(request.from));
                continue;
            }
            log!("received a restart request from pid {}", request.pid);
            self.waiting.push(Waiter {
                to: request.from,
                after: self.generation,
            });
            if self.stopping {
                self.verdict(u64::MAX, "FAILED start_server is stopping");
            } else {
                self.hup();
            }
        }
    }

    /// USR1: the log file is opened anew (after logrotate moved it away).
    fn reopen_log(&mut self) {
        match &mut self.log_file {
            Some(log_file) => log_file.reopen(),
            None => log!("received USR1, but there is no --log-file to reopen"),
        }
    }

    fn reap(&mut self) {
        loop {
            match sys::reap_one() {
                Ok(Some((pid, status))) => self.exited(pid, status),
                Ok(None) => return,
                Err(e) => {
                    log!("waitpid(2) failed: {e}");
                    return;
                }
            }
        }
    }

    /// A child exited. The logger of `--log-file="| cmd"` is restarted; children that
    /// are neither it nor workers (orphans of a worker, reparented to start_server as
    /// subreaper) are reaped and otherwise ignored.
    fn exited(&mut self, pid: Pid, status: c_int) {
        if self.checked(pid, status) {
            return;
        }
        if let Some(log_file) = self.log_file.as_deref_mut() {
            if log_file.child_exited(pid, status) {
                return;
            }
        }
        self.channels.remove(&pid);
        if let Some(attempt) = &mut self.attempt {
            if attempt.worker.is_some_and(|w| w.pid == pid) {
                log!("new worker {pid} seems to have failed to start, exit status:{status}");
                hint_if_daemonizing(pid, status);
                attempt.worker = None;
                self.failed_start(&exit_text(status));
                return;
            }
        }
        if let Some(worker) = self.current.filter(|w| w.pid == pid) {
            self.current = None;
            self.watchdog_at = None;
            // The file never lists a dead worker for the interval a respawn takes.
            self.write_status();
            log!("worker {pid} died unexpectedly with status:{status}, restarting");
            // One that dies before a retry pause has passed is a crash loop: paced as
            // a failed start, whether or not it was declared started.
            let now = Instant::now();
            if now < worker.spawned_at + self.retry_base() {
                self.failures = self.failures_before_start;
                hint_if_daemonizing(pid, status);
                self.attempt = Some(Attempt {
                    worker: None,
                    spawned_at: worker.spawned_at,
                    until: now,
                    replacing: false,
                });
                self.failed_start(&exit_text(status));
            } else {
                self.spawn(false);
            }
            return;
        }
        if let Some(old) = self.old.remove(&pid) {
            if self.stopping || !old.listed {
                log!("worker {pid} died, status:{status}");
            } else {
                log!("old worker {pid} died, status:{status}");
            }
            self.write_status();
            self.settle();
        }
    }

    /// Messages on the workers' notification sockets.
    fn read_notifications(&mut self, readable: &[RawFd]) {
        let workers: Vec<Pid> = self.channels.keys().copied().collect();
        let notices: Vec<(Pid, Notice)> = self
            .channels
            .iter()
            .filter(|(_, channel)| readable.contains(&channel.fd()))
            .flat_map(|(&pid, channel)| {
                let notices = channel.drain(pid, &workers, &mut self.throttle);
                notices.into_iter().map(move |n| (pid, n))
            })
            .collect();
        for (pid, mut notice) in notices {
            // A status first, so that the log reads in order of what happened.
            notice
                .said
                .sort_by_key(|said| !matches!(said, Said::Status(_)));
            for said in notice.said {
                self.notified(pid, notice.sender, said);
            }
        }
    }

    /// One thing a worker (`pid`, through `sender`) said.
    fn notified(&mut self, pid: Pid, sender: Pid, said: Said) {
        let starting = self
            .attempt
            .as_ref()
            .is_some_and(|a| a.worker.is_some_and(|w| w.pid == pid));
        let current = self.current.is_some_and(|w| w.pid == pid);
        match said {
            Said::Status(status) => log!("worker {pid} status: {status}"),
            Said::Ready if starting && self.settings.ready_notify => {
                if let Some(attempt) = self.attempt.take() {
                    if sender != pid {
                        log!("worker {pid} is ready (said pid {sender})");
                    }
                    if let Some(worker) = attempt.worker {
                        self.started(worker, attempt.replacing);
                    }
                }
            }
            Said::ExtendTimeout(by) if starting && self.settings.ready_notify => {
                let ready_timeout = self.settings.ready_timeout;
                if let Some(attempt) = &mut self.attempt {
                    // As systemd does: the last extension counts, and the deadline is
                    // never sooner than --ready-timeout allowed.
                    attempt.until = (attempt.spawned_at + ready_timeout).max(Instant::now() + by);
                }
            }
            Said::Watchdog if current => {
                self.watchdog_at = self.settings.watchdog.map(|w| Instant::now() + w);
            }
            Said::WatchdogTrigger if current => self.hung(Hang::Triggered),
            // A repeated READY=1, or one from an old worker: nothing to do.
            _ => {}
        }
    }
}

/// A wait status in words, for a `--restart` verdict (the log keeps the original's raw
/// number).
fn exit_text(status: c_int) -> String {
    if libc::WIFSIGNALED(status) {
        format!("killed by SIG{}", signals::name(libc::WTERMSIG(status)))
    } else {
        format!("exited with status {}", libc::WEXITSTATUS(status))
    }
}

/// A worker that exits 0 before it has started most likely forked into the background,
/// leaving a child that start_server reaps (as subreaper) but does not supervise. Said
/// for a death within a retry pause at an `--interval` below the floor too, which counts
/// as a failed start.
fn hint_if_daemonizing(pid: Pid, status: c_int) {
    if status == 0 {
        log!(
            "worker {pid} exited with status 0 before it had started: a server that \
             daemonizes itself (forks and exits) cannot be supervised; run it in the \
             foreground"
        );
    }
}
