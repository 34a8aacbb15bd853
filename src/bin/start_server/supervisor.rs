//! The supervisor: a state machine over three kinds of event, read top to bottom in
//! `run`: a signal (HUP, TERM/INT), a child's exit, a timer.
//!
//! A worker is spawned into an *attempt*. When it is still alive after `--interval`, it
//! has *started*: it becomes the current worker and, if it replaces others (a restart),
//! the old workers are signalled, after `--kill-old-delay`. If it dies first, the attempt
//! is retried at the same pace while the old workers go on serving. `started` is the one
//! place that transition happens, so that a readiness notice from the worker can later be
//! a second way to reach it.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::os::raw::c_int;
use std::os::unix::io::RawFd;
use std::time::{Duration, Instant};

use crate::control_socket::ControlSocket;
use crate::envdir::{self, Tunables};
use crate::log;
use crate::log_file::LogFile;
use crate::manager::Manager;
use crate::notify::{Channel, Notice, Said};
use crate::signals::{self, Events, Meaning, Signal};
use crate::spawn::Command;
use crate::status_file::StatusFile;
use crate::sys::{self, Pid, SockAddr};

pub struct Settings {
    pub interval: Duration,
    pub signal_on_hup: Signal,
    pub signal_on_term: Signal,
    /// The value of SERVER_STARTER_PORT.
    pub port_env: String,
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

#[derive(Clone, Copy, Debug)]
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
    /// The notification sockets of the workers (`--ready=notify`, `--watchdog`), by pid.
    channels: BTreeMap<Pid, Channel>,
    /// When the current worker is hung unless it says `WATCHDOG=1` first.
    watchdog_at: Option<Instant>,
    /// Where `--restart` clients ask (with `--pid-file`), and who is waiting.
    control: Option<ControlSocket>,
    waiting: Vec<Waiter>,
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
}

impl<'a> Supervisor<'a> {
    pub fn new(
        settings: Settings,
        tunables: Tunables,
        command: Command,
        status_file: Option<StatusFile>,
        log_file: Option<&'a mut LogFile>,
        control: Option<ControlSocket>,
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
            channels: BTreeMap::new(),
            watchdog_at: None,
            control,
            waiting: Vec::new(),
            manager: Manager::from_environment(),
            reloading: false,
            kill_old_at: None,
            hup_pending: false,
            started_at: None,
            stopping: false,
        }
    }

    /// Runs until a stop signal has been handled and every worker has exited.
    pub fn run(&mut self, events: &Events) -> io::Result<()> {
        self.spawn(false);
        while !(self.stopping && self.old.is_empty()) {
            let watched: Vec<RawFd> = self
                .channels
                .values()
                .map(Channel::fd)
                .chain(self.control.as_ref().map(ControlSocket::fd))
                .collect();
            let arrived = match events.wait(self.next_deadline(), &watched) {
                Ok(arrived) => arrived,
                Err(e) => {
                    // Blind from here on: at least leave no worker running.
                    self.stop(libc::SIGTERM);
                    return Err(e);
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
            if arrived.has(Meaning::Upgrade) {
                log!("received USR2, ignoring it: upgrading in place is not supported yet");
            }
            if arrived.has(Meaning::Restart) {
                self.hup();
            }
            self.read_requests(&arrived.readable);
            self.fire_timers(Instant::now());
        }
        log!("exiting");
        if let Some(status_file) = &self.status_file {
            status_file.remove();
        }
        Ok(())
    }

    /// The next timer, if any: with none, the loop sleeps until a signal comes.
    fn next_deadline(&self) -> Option<Instant> {
        let attempt = self.attempt.as_ref().map(|a| a.until);
        let kill = self.old.values().filter_map(|o| o.kill.map(|k| k.0)).min();
        [
            attempt,
            self.kill_old_at,
            self.auto_restart_at(),
            kill,
            self.watchdog_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// With auto-restart on, when the current worker is due for replacement: once the
    /// interval has passed and no old worker remains, or at twice the interval anyway.
    /// (The original checks every second; this is a timer at the exact moment.)
    fn auto_restart_at(&self) -> Option<Instant> {
        let interval = self.tunables.auto_restart?;
        let started = self.started_at?;
        if self.stopping
            || self.attempt.is_some()
            || self.kill_old_at.is_some()
            || self.current.is_none()
        {
            return None;
        }
        Some(if self.old.is_empty() {
            started + interval
        } else {
            started + interval * 2
        })
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
            if let Some(manager) = &self.manager {
                manager.stopping();
            }
            self.verdict(u64::MAX, "FAILED start_server is stopping");
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

    /// `--restart` clients: each is a HUP, and waits for its verdict.
    fn read_requests(&mut self, readable: &[RawFd]) {
        let requests = match &self.control {
            Some(control) if readable.contains(&control.fd()) => control.requests(),
            _ => return,
        };
        for request in requests {
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

    /// A child exited. Children that are not workers (orphans of a worker, reparented
    /// to start_server as subreaper) are reaped and otherwise ignored.
    fn exited(&mut self, pid: Pid, status: c_int) {
        self.channels.remove(&pid);
        if let Some(attempt) = &mut self.attempt {
            if attempt.worker.is_some_and(|w| w.pid == pid) {
                log!("new worker {pid} seems to have failed to start, exit status:{status}");
                if status == 0 {
                    log!(
                        "worker {pid} exited with status 0 before it had started: a server \
                         that daemonizes itself (forks and exits) cannot be supervised; run \
                         it in the foreground"
                    );
                }
                attempt.worker = None;
                self.failed_start(&exit_text(status));
                return;
            }
        }
        if let Some(worker) = self.current.filter(|w| w.pid == pid) {
            self.current = None;
            self.watchdog_at = None;
            log!("worker {pid} died unexpectedly with status:{status}, restarting");
            // One that dies before a retry pause has passed is a crash loop: paced as
            // a failed start, whether or not it was declared started.
            let now = Instant::now();
            if now < worker.spawned_at + self.retry_base() {
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

    fn fire_timers(&mut self, now: Instant) {
        if self.attempt.as_ref().is_some_and(|a| a.until <= now) {
            if let Some(attempt) = self.attempt.take() {
                match attempt.worker {
                    Some(worker) if self.settings.ready_notify => self.not_ready(worker, attempt),
                    Some(worker) => self.started(worker, attempt.replacing),
                    None => self.spawn(attempt.replacing),
                }
            }
        }
        if self.kill_old_at.is_some_and(|at| at <= now) {
            self.kill_old_at = None;
            self.kill_old_workers();
        }
        self.kill_lingering(now);
        if self.watchdog_at.is_some_and(|at| at <= now) {
            self.hung();
        }
        if self.hup_pending && self.attempt.is_none() && self.kill_old_at.is_none() {
            self.hup_pending = false;
            log!("received HUP, spawning a new worker");
            self.restart();
        } else if self.auto_restart_at().is_some_and(|at| at <= now) {
            let interval = log::seconds(self.tunables.auto_restart.unwrap_or_default());
            if self.old.is_empty() {
                log!("autorestart triggered (interval={interval})");
            } else {
                log!("autorestart triggered (forced, interval={interval})");
            }
            self.restart();
        }
    }

    /// SIGKILL for the signalled workers still running at their deadline
    /// (`--kill-timeout`, or `STOP_GRACE` for one that failed to start or hung).
    fn kill_lingering(&mut self, now: Instant) {
        for (&pid, old) in self.old.iter_mut() {
            let Some((_, grace)) = old.kill.filter(|k| k.0 <= now) else {
                continue;
            };
            old.kill = None;
            log!(
                "worker {pid} still running {} secs after it was told to stop, sending KILL",
                log::seconds(grace)
            );
            if let Err(e) = sys::kill(pid, libc::SIGKILL) {
                log!("failed to send KILL to worker {pid}: {e}");
            }
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
                let notices = channel.drain(pid, &workers);
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
                if let Some(attempt) = &mut self.attempt {
                    // As systemd does: never sooner than --ready-timeout allowed.
                    attempt.until = attempt.until.max(Instant::now() + by);
                }
            }
            Said::Watchdog if current => {
                self.watchdog_at = self.settings.watchdog.map(|w| Instant::now() + w);
            }
            Said::WatchdogTrigger if current => self.hung(),
            // A repeated READY=1, or one from an old worker: nothing to do.
            _ => {}
        }
    }

    // ------------------------------------------------------------ transitions

    fn restart(&mut self) {
        if let Some(worker) = self.current.take() {
            self.retire(worker);
        }
        if let Some(manager) = &self.manager {
            self.reloading = true;
            manager.reloading(&format!(
                "restarting: starting generation {}",
                self.generation + 1
            ));
        }
        self.spawn(true);
    }

    fn spawn(&mut self, replacing: bool) {
        self.generation += 1;
        let now = Instant::now();
        let mut env = self.worker_env();
        let channel = match self.notify_channel() {
            Ok(channel) => channel,
            Err(e) => {
                log!("failed to create a notification socket: {e}");
                self.attempt = Some(Attempt {
                    worker: None,
                    spawned_at: now,
                    until: now,
                    replacing,
                });
                self.failed_start(&format!("no notification socket: {e}"));
                return;
            }
        };
        if let Some(channel) = &channel {
            env.push(("NOTIFY_SOCKET".into(), channel.address().into()));
        }
        if let Some(watchdog) = self.settings.watchdog {
            env.push((
                "WATCHDOG_USEC".into(),
                watchdog.as_micros().to_string().into(),
            ));
        }
        let worker = match self.command.spawn(&env) {
            Ok(spawned) => {
                if let Some(channel) = channel {
                    self.channels.insert(spawned.pid, channel);
                }
                log!("starting new worker {}", spawned.pid);
                if let Some(error) = spawned.exec_error {
                    log!("{error}");
                }
                Some(Worker {
                    pid: spawned.pid,
                    generation: self.generation,
                    spawned_at: now,
                })
            }
            Err(e) => {
                log!(
                    "fork(2) failed: {e}; trying again in {} secs",
                    log::seconds(self.settings.interval)
                );
                None
            }
        };
        let wait = if self.settings.ready_notify {
            self.settings.ready_timeout
        } else {
            self.settings.interval
        };
        self.attempt = Some(Attempt {
            worker,
            spawned_at: now,
            until: now + wait,
            replacing,
        });
        if worker.is_none() {
            self.failed_start("it could not be spawned");
        }
    }

    /// The new worker outlived `--interval`, or said `READY=1`: it is now the current
    /// one.
    fn started(&mut self, worker: Worker, replacing: bool) {
        self.current = Some(worker);
        self.started_at = Some(Instant::now());
        self.watchdog_at = self.settings.watchdog.map(|w| Instant::now() + w);
        self.failures = 0;
        self.write_status();
        self.settle();
        if let Some(manager) = &self.manager {
            self.reloading = false;
            manager.ready(&format!(
                "generation {} serving (worker {})",
                worker.generation, worker.pid
            ));
        }
        if !replacing {
            return;
        }
        let old = if self.old.is_empty() {
            "none".to_string()
        } else {
            self.old_pids()
        };
        log!(
            "new worker is now running, sending {} to old workers:{old}",
            self.settings.signal_on_hup.name
        );
        let delay = self.tunables.kill_old_delay;
        if delay.is_zero() {
            self.kill_old_workers();
        } else {
            log!(
                "sleeping {} secs before killing old workers",
                log::seconds(delay)
            );
            self.kill_old_at = Some(Instant::now() + delay);
        }
    }

    /// `--ready=notify`: the new worker did not say `READY=1` within
    /// `--ready-timeout`. It is stopped (TERM, then KILL if it lingers) and counts as a
    /// failed start, while the old generation goes on serving.
    fn not_ready(&mut self, worker: Worker, attempt: Attempt) {
        log!(
            "new worker {} was not ready within {} secs, stopping it",
            worker.pid,
            log::seconds(self.settings.ready_timeout)
        );
        self.stop_now(worker, &Signal::term(), false);
        // The pause before the next try counts from now, not from the spawn.
        self.attempt = Some(Attempt {
            worker: None,
            spawned_at: Instant::now(),
            ..attempt
        });
        self.failed_start(&format!(
            "not ready within {} secs",
            log::seconds(self.settings.ready_timeout)
        ));
    }

    /// `--watchdog`: the current worker said no `WATCHDOG=1` in time (or said
    /// `WATCHDOG=trigger`). It gets SIGABRT, as systemd sends, then SIGKILL if it
    /// lingers, and is replaced at once, as a worker that died unexpectedly.
    fn hung(&mut self) {
        self.watchdog_at = None;
        let Some(worker) = self.current.take() else {
            return;
        };
        log!(
            "worker {} sent no WATCHDOG=1 for {} secs, sending ABRT and restarting",
            worker.pid,
            log::seconds(self.settings.watchdog.unwrap_or_default())
        );
        let abrt = Signal::parse("ABRT").expect("a known signal name");
        self.stop_now(worker, &abrt, true);
        self.write_status();
        self.spawn(false);
    }

    /// Signals one worker to stop now, outside a restart's order, with a KILL deadline.
    fn stop_now(&mut self, worker: Worker, sig: &Signal, listed: bool) {
        if let Err(e) = sys::kill(worker.pid, sig.number) {
            log!("failed to send {} to worker {}: {e}", sig.name, worker.pid);
        }
        let grace = self.settings.kill_timeout.unwrap_or(STOP_GRACE);
        self.old.insert(
            worker.pid,
            Old {
                generation: worker.generation,
                listed,
                kill: Some((Instant::now() + grace, grace)),
            },
        );
    }

    /// The attempt's worker died before it had started, or could not be spawned: the
    /// next try comes after the interval, never sooner than `RETRY_FLOOR`, doubling up
    /// to `--backoff` while the failures go on.
    fn failed_start(&mut self, why: &str) {
        self.verdict(
            self.generation,
            &format!("FAILED generation {}: {why}", self.generation),
        );
        if let (Some(manager), true) = (&self.manager, self.reloading) {
            self.reloading = false;
            let serving = match self.old.iter().rev().find(|(_, old)| old.listed) {
                Some((pid, old)) => {
                    format!("generation {} serves on (worker {pid})", old.generation)
                }
                None => "no generation serves".into(),
            };
            manager.ready(&format!(
                "restart failed: generation {} {why}; {serving}",
                self.generation
            ));
        }
        self.failures = self.failures.saturating_add(1);
        let base = self.retry_base();
        let delay = match self.settings.backoff {
            Some(max) => {
                let doublings = (self.failures - 1).min(30);
                base.saturating_mul(1 << doublings).min(max.max(base))
            }
            None => base,
        };
        if let Some(attempt) = &mut self.attempt {
            attempt.until = attempt.spawned_at + delay;
        }
        if delay != self.settings.interval {
            log!(
                "failed starts in a row: {}; trying again in {} secs",
                self.failures,
                log::seconds(delay)
            );
        }
    }

    /// A worker's own notification socket, when it needs one.
    fn notify_channel(&self) -> io::Result<Option<Channel>> {
        if self.settings.ready_notify || self.settings.watchdog.is_some() {
            Channel::new().map(Some)
        } else {
            Ok(None)
        }
    }

    /// The pause after one failed start.
    fn retry_base(&self) -> Duration {
        self.settings.interval.max(RETRY_FLOOR)
    }

    fn kill_old_workers(&mut self) {
        log!("killing old workers");
        let sig = self.settings.signal_on_hup.clone();
        self.signal_old(&sig);
    }

    /// Moves a worker to the old ones, which are signalled and waited for.
    fn retire(&mut self, worker: Worker) {
        self.old.insert(
            worker.pid,
            Old {
                generation: worker.generation,
                listed: true,
                kill: None,
            },
        );
    }

    /// A restart succeeded once its generation runs alone: no older worker is left.
    fn settle(&mut self) {
        let Some(current) = self.current else {
            return;
        };
        if self.old.values().all(|old| !old.listed) {
            self.verdict(
                current.generation,
                &format!("OK generation {}", current.generation),
            );
        }
    }

    /// Answers the clients waiting for a generation up to `generation`.
    fn verdict(&mut self, generation: u64, text: &str) {
        let Some(control) = &self.control else {
            return;
        };
        self.waiting.retain(|waiter| {
            if waiter.after >= generation {
                return true;
            }
            control.reply(&waiter.to, text);
            false
        });
    }

    // ------------------------------------------------------------ helpers

    /// Sends `sig` to every old worker; with `--kill-timeout`, each gets SIGKILL that
    /// long after the first stop signal it was sent.
    fn signal_old(&mut self, sig: &Signal) {
        let kill = self.settings.kill_timeout.map(|t| (Instant::now() + t, t));
        for (&pid, old) in self.old.iter_mut() {
            if let Err(e) = sys::kill(pid, sig.number) {
                log!("failed to send {} to worker {pid}: {e}", sig.name);
            }
            old.kill = old.kill.or(kill);
        }
    }

    fn old_pids(&self) -> String {
        let pids: Vec<String> = self.old.keys().map(|pid| pid.to_string()).collect();
        pids.join(",")
    }

    fn write_status(&mut self) {
        let Some(status_file) = &mut self.status_file else {
            return;
        };
        let mut workers: Vec<(u64, Pid)> = self
            .old
            .iter()
            .filter(|(_, old)| old.listed)
            .map(|(&pid, old)| (old.generation, pid))
            .collect();
        workers.extend(self.current.map(|w| (w.generation, w.pid)));
        if let Err(e) = status_file.write(&workers) {
            log!("{e}");
        }
    }

    /// start_server's environment with --envdir read again, plus the two variables of
    /// the protocol. The settings taken from the environment are refreshed on the way.
    fn worker_env(&mut self) -> Vec<(OsString, OsString)> {
        let mut env = envdir::current();
        match envdir::tunables(&env) {
            Ok(tunables) => self.tunables = tunables,
            Err(e) => log!("{e}; keeping the previous settings"),
        }
        // The service manager's variables are start_server's, never a worker's: its own
        // notification socket and watchdog, if any, are not the worker's to use.
        const OURS: [&str; 5] = [
            "SERVER_STARTER_PORT",
            "SERVER_STARTER_GENERATION",
            "NOTIFY_SOCKET",
            "WATCHDOG_USEC",
            "WATCHDOG_PID",
        ];
        env.retain(|(k, _)| !OURS.iter().any(|ours| k == ours));
        // The original exports its `||= 360` default too (from the second generation
        // on); workers see the interval in force from the first.
        if let Some(interval) = self.tunables.auto_restart {
            env.retain(|(k, _)| k != "AUTO_RESTART_INTERVAL");
            env.push((
                "AUTO_RESTART_INTERVAL".into(),
                log::seconds(interval).into(),
            ));
        }
        env.push((
            "SERVER_STARTER_PORT".into(),
            self.settings.port_env.clone().into(),
        ));
        env.push((
            "SERVER_STARTER_GENERATION".into(),
            self.generation.to_string().into(),
        ));
        env
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
