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
use crate::listen_fds::WorkerVars;
use crate::log;
use crate::signals::{Events, Signal};
use crate::spawn::Command;
use crate::status_file::StatusFile;
use crate::sys::{self, Pid};

pub struct Settings {
    pub interval: Duration,
    pub signal_on_hup: Signal,
    pub signal_on_term: Signal,
    /// The value of SERVER_STARTER_PORT.
    pub port_env: String,
    /// systemd's variables for the workers (`--listen-fds`).
    pub listen_vars: WorkerVars,
}

#[derive(Clone, Copy, Debug)]
struct Worker {
    pid: Pid,
    generation: u64,
}

/// A generation being started.
struct Attempt {
    /// The spawned worker; `None` once it has died (or could not be forked): the next
    /// try is at `until`.
    worker: Option<Worker>,
    /// When the worker counts as started, or when to try again.
    until: Instant,
    /// Whether it replaces running workers (a restart), which are signalled once it
    /// has started.
    replacing: bool,
}

pub struct Supervisor {
    settings: Settings,
    /// What the environment (and --envdir) said at the last spawn.
    tunables: Tunables,
    command: Command,
    status_file: Option<StatusFile>,
    /// The last generation number given out; every spawn attempt takes the next one.
    generation: u64,
    /// The started worker of the newest generation.
    current: Option<Worker>,
    attempt: Option<Attempt>,
    /// Workers of older generations, by pid: signalled to stop (or about to be), and
    /// waited for.
    old: BTreeMap<Pid, u64>,
    /// When to signal the old workers, during `--kill-old-delay`.
    kill_old_at: Option<Instant>,
    /// A HUP arrived while a restart was under way: one more restart follows it.
    hup_pending: bool,
    /// When the current worker started, for auto-restart.
    started_at: Option<Instant>,
    /// TERM or INT arrived: every worker has been signalled; exit once all are gone.
    stopping: bool,
}

impl Supervisor {
    pub fn new(
        settings: Settings,
        tunables: Tunables,
        command: Command,
        status_file: Option<StatusFile>,
    ) -> Supervisor {
        Supervisor {
            settings,
            tunables,
            command,
            status_file,
            generation: 0,
            current: None,
            attempt: None,
            old: BTreeMap::new(),
            kill_old_at: None,
            hup_pending: false,
            started_at: None,
            stopping: false,
        }
    }

    /// Runs until TERM or INT has been handled and every worker has exited.
    pub fn run(&mut self, events: &Events) -> io::Result<()> {
        self.spawn(false);
        while !(self.stopping && self.old.is_empty()) {
            let arrived = match events.wait(self.next_deadline()) {
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
            if let Some(sig) = arrived.stop {
                self.stop(sig);
            }
            if arrived.hup {
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
        [attempt, self.kill_old_at, self.auto_restart_at()]
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

    /// TERM or INT: signal every worker, then wait for all of them to exit. Unlike the
    /// original, which ignores them, a repeated TERM or INT signals the workers still
    /// running again.
    fn stop(&mut self, sig: c_int) {
        if !self.stopping {
            self.stopping = true;
            self.hup_pending = false;
            self.kill_old_at = None;
            let starting = self.attempt.take().and_then(|a| a.worker);
            for worker in starting.into_iter().chain(self.current.take()) {
                self.old.insert(worker.pid, worker.generation);
            }
        }
        // As in the original, INT is passed on as TERM; only TERM becomes
        // --signal-on-term.
        let (received, send) = if sig == libc::SIGTERM {
            ("TERM", self.settings.signal_on_term.clone())
        } else {
            ("INT", Signal::term())
        };
        log!(
            "received {received}, sending {} to all workers:{}",
            send.name,
            self.old_pids()
        );
        self.signal_old(&send);
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

    fn exited(&mut self, pid: Pid, status: c_int) {
        if let Some(attempt) = &mut self.attempt {
            if attempt.worker.is_some_and(|w| w.pid == pid) {
                log!("new worker {pid} seems to have failed to start, exit status:{status}");
                attempt.worker = None;
                return;
            }
        }
        if self.current.is_some_and(|w| w.pid == pid) {
            self.current = None;
            log!("worker {pid} died unexpectedly with status:{status}, restarting");
            self.spawn(false);
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

    // ------------------------------------------------------------ transitions

    fn restart(&mut self) {
        if let Some(worker) = self.current.take() {
            self.old.insert(worker.pid, worker.generation);
        }
        self.spawn(true);
    }

    fn spawn(&mut self, replacing: bool) {
        self.generation += 1;
        let until = Instant::now() + self.settings.interval;
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
            until,
            replacing,
        });
    }

    /// The new worker outlived `--interval`: it is now the current one.
    fn started(&mut self, worker: Worker, replacing: bool) {
        self.current = Some(worker);
        self.started_at = Some(Instant::now());
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

    fn kill_old_workers(&mut self) {
        log!("killing old workers");
        let sig = self.settings.signal_on_hup.clone();
        self.signal_old(&sig);
    }

    // ------------------------------------------------------------ helpers

    fn signal_old(&self, sig: &Signal) {
        for &pid in self.old.keys() {
            if let Err(e) = sys::kill(pid, sig.number) {
                log!("failed to send {} to worker {pid}: {e}", sig.name);
            }
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
            .map(|(&pid, &generation)| (generation, pid))
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
        self.settings.listen_vars.apply(&mut env);
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
