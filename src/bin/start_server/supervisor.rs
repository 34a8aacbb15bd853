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
use std::time::{Duration, Instant};

use crate::envdir::{self, Tunables};
use crate::log;
use crate::log_file::LogFile;
use crate::signals::{self, Events, Meaning, Signal};
use crate::spawn::Command;
use crate::status_file::StatusFile;
use crate::sys::{self, Pid};

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
}

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
    /// When it gets SIGKILL (`--kill-timeout` after its stop signal).
    kill_at: Option<Instant>,
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
            let arrived = match events.wait(self.next_deadline(), &[]) {
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
        let kill = self.old.values().filter_map(|o| o.kill_at).min();
        let logger = self.log_file.as_deref().and_then(LogFile::restart_at);
        [attempt, self.kill_old_at, self.auto_restart_at(), kill]
            .into_iter()
            .flatten()
            .chain(logger)
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
        if let Some(log_file) = self.log_file.as_deref_mut() {
            if log_file.child_exited(pid, status) {
                return;
            }
        }
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
                self.failed_start();
                return;
            }
        }
        if let Some(worker) = self.current.filter(|w| w.pid == pid) {
            self.current = None;
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
                self.failed_start();
            } else {
                self.spawn(false);
            }
            return;
        }
        if self.old.remove(&pid).is_some() {
            if self.stopping {
                log!("worker {pid} died, status:{status}");
            } else {
                log!("old worker {pid} died, status:{status}");
            }
            self.write_status();
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        if self.attempt.as_ref().is_some_and(|a| a.until <= now) {
            if let Some(attempt) = self.attempt.take() {
                match attempt.worker {
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
        if let Some(log_file) = self.log_file.as_deref_mut() {
            log_file.fire_timers(now);
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

    /// `--kill-timeout`: SIGKILL for the signalled workers still running at their
    /// deadline.
    fn kill_lingering(&mut self, now: Instant) {
        let Some(timeout) = self.settings.kill_timeout else {
            return;
        };
        for (&pid, old) in self.old.iter_mut() {
            if old.kill_at.is_some_and(|at| at <= now) {
                old.kill_at = None;
                log!(
                    "worker {pid} still running {} secs after it was told to stop, sending KILL",
                    log::seconds(timeout)
                );
                if let Err(e) = sys::kill(pid, libc::SIGKILL) {
                    log!("failed to send KILL to worker {pid}: {e}");
                }
            }
        }
    }

    // ------------------------------------------------------------ transitions

    fn restart(&mut self) {
        if let Some(worker) = self.current.take() {
            self.retire(worker);
        }
        self.spawn(true);
    }

    fn spawn(&mut self, replacing: bool) {
        self.generation += 1;
        let now = Instant::now();
        let env = self.worker_env();
        let worker = match self.command.spawn(&env) {
            Ok(spawned) => {
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
        self.attempt = Some(Attempt {
            worker,
            spawned_at: now,
            until: now + self.settings.interval,
            replacing,
        });
        if worker.is_none() {
            self.failed_start();
        }
    }

    /// The new worker outlived `--interval`: it is now the current one.
    fn started(&mut self, worker: Worker, replacing: bool) {
        self.current = Some(worker);
        self.started_at = Some(Instant::now());
        self.failures = 0;
        self.write_status();
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

    /// The attempt's worker died before it had started, or could not be spawned: the
    /// next try comes after the interval, never sooner than `RETRY_FLOOR`, doubling up
    /// to `--backoff` while the failures go on.
    fn failed_start(&mut self) {
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
                kill_at: None,
            },
        );
    }

    // ------------------------------------------------------------ helpers

    /// Sends `sig` to every old worker; with `--kill-timeout`, each gets SIGKILL that
    /// long after the first stop signal it was sent.
    fn signal_old(&mut self, sig: &Signal) {
        let kill_at = self.settings.kill_timeout.map(|t| Instant::now() + t);
        for (&pid, old) in self.old.iter_mut() {
            if let Err(e) = sys::kill(pid, sig.number) {
                log!("failed to send {} to worker {pid}: {e}", sig.name);
            }
            old.kill_at = old.kill_at.or(kill_at);
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
        env.retain(|(k, _)| k != "SERVER_STARTER_PORT" && k != "SERVER_STARTER_GENERATION");
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
