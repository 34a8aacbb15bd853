//! The supervisor's transitions: a generation is spawned, has started, failed to start,
//! is not ready in time, hangs; old workers are retired and signalled; restart clients
//! get their verdict. Each happens in one place, whatever event led to it.

use super::*;

/// What to do about a worker that never said READY=1.
const NOT_READY_HINT: &str = "it sent no READY=1 to $NOTIFY_SOCKET: if the server does not \
    speak sd_notify, run start_server without --ready=notify (--interval then decides when a \
    worker has started); if it only needs longer, raise --ready-timeout";

impl Supervisor<'_> {
    pub(super) fn restart(&mut self) {
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

    pub(super) fn spawn(&mut self, replacing: bool) {
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
        self.context.listeners.relisten();
        let worker = match self.command.spawn(&env) {
            Ok(spawned) => {
                if let Some(channel) = channel {
                    self.channels.insert(spawned.pid, channel);
                }
                log!("starting new worker {}", spawned.pid);
                if let Some(error) = spawned.exec_error {
                    // Unlike a later generation's (a bad deploy, while the old one
                    // serves on), the first's is a mistake in the command line:
                    // said at once, not retried forever.
                    if spawned.unexecutable && self.generation == 1 {
                        self.fatal = Some(error);
                        self.stopping = true;
                        return;
                    }
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
                    "{e}; trying again in {} secs",
                    log::seconds(self.pause_after(self.failures.saturating_add(1)))
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
    pub(super) fn started(&mut self, worker: Worker, replacing: bool) {
        if let Some(launcher) = self.launcher.take() {
            launcher.started();
        }
        self.current = Some(worker);
        self.started_at = Some(Instant::now());
        self.failures_before_start = self.failures;
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
    pub(super) fn not_ready(&mut self, worker: Worker, attempt: Attempt) {
        log!(
            "new worker {} was not ready within {} secs, stopping it",
            worker.pid,
            log::seconds(self.settings.ready_timeout)
        );
        // The most common cause: a server that does not speak sd_notify at all.
        log!("{NOT_READY_HINT}");
        self.stop_now(worker, &Signal::term(), false);
        // The pause before the next try counts from now, not from the spawn.
        self.attempt = Some(Attempt {
            worker: None,
            spawned_at: Instant::now(),
            ..attempt
        });
        self.failed_start(&format!(
            "not ready within {} secs ({NOT_READY_HINT})",
            log::seconds(self.settings.ready_timeout)
        ));
    }

    /// `--watchdog`: the current worker said no `WATCHDOG=1` in time (or said
    /// `WATCHDOG=trigger`). It gets SIGABRT, as systemd sends, then SIGKILL if it
    /// lingers, and is replaced, paced as a failed start: its start counts as failed
    /// after all, so that a worker that hangs as soon as it starts is retried after
    /// the retry floor, then `--backoff`'s doubling pauses, never in a loop.
    pub(super) fn hung(&mut self, hang: Hang) {
        self.watchdog_at = None;
        let Some(worker) = self.current.take() else {
            return;
        };
        let why = match hang {
            Hang::Silent => format!(
                "sent no WATCHDOG=1 for {} secs",
                log::seconds(self.settings.watchdog.unwrap_or_default())
            ),
            Hang::Triggered => "sent WATCHDOG=trigger".to_string(),
        };
        log!("worker {} {why}, sending ABRT and restarting", worker.pid);
        let abrt = Signal::parse("ABRT").expect("a known signal name");
        self.stop_now(worker, &abrt, true);
        self.write_status();
        // A generation being started replaces it anyway.
        if self.attempt.is_some() {
            return;
        }
        self.failures = self.failures_before_start;
        let now = Instant::now();
        self.attempt = Some(Attempt {
            worker: None,
            spawned_at: now,
            until: now,
            replacing: false,
        });
        self.failed_start(&format!("worker {} {why}", worker.pid));
    }

    /// Signals one worker to stop now, outside a restart's order, with a KILL deadline.
    pub(super) fn stop_now(&mut self, worker: Worker, sig: &Signal, listed: bool) {
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
    pub(super) fn failed_start(&mut self, why: &str) {
        if let Some(launcher) = self.launcher.take() {
            launcher.failed(
                daemon::FAILED_START,
                &format!(
                    "generation {} failed to start: {why}; start_server (pid {}) goes on \
                     trying (see its log file; --stop stops it)",
                    self.generation,
                    std::process::id()
                ),
            );
        }
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
        let delay = self.pause_after(self.failures);
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
    pub(super) fn notify_channel(&self) -> io::Result<Option<Channel>> {
        if self.settings.ready_notify || self.settings.watchdog.is_some() {
            Channel::new().map(Some)
        } else {
            Ok(None)
        }
    }

    /// The pause after `failures` (at least 1) failed starts in a row.
    pub(super) fn pause_after(&self, failures: u32) -> Duration {
        let base = self.retry_base();
        match self.settings.backoff {
            Some(max) => {
                let doublings = failures.saturating_sub(1).min(30);
                base.saturating_mul(1 << doublings).min(max.max(base))
            }
            None => base,
        }
    }

    /// The pause after one failed start.
    pub(super) fn retry_base(&self) -> Duration {
        self.settings.interval.max(RETRY_FLOOR)
    }

    pub(super) fn kill_old_workers(&mut self) {
        log!("killing old workers");
        let sig = self.settings.signal_on_hup.clone();
        self.signal_old(&sig);
    }

    /// Moves a worker to the old ones, which are signalled and waited for.
    pub(super) fn retire(&mut self, worker: Worker) {
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
    pub(super) fn settle(&mut self) {
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
    pub(super) fn verdict(&mut self, generation: u64, text: &str) {
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
    pub(super) fn signal_old(&mut self, sig: &Signal) {
        let kill = self.settings.kill_timeout.map(|t| (Instant::now() + t, t));
        for (&pid, old) in self.old.iter_mut() {
            if let Err(e) = sys::kill(pid, sig.number) {
                log!("failed to send {} to worker {pid}: {e}", sig.name);
            }
            old.kill = old.kill.or(kill);
        }
    }

    pub(super) fn old_pids(&self) -> String {
        let pids: Vec<String> = self.old.keys().map(|pid| pid.to_string()).collect();
        pids.join(",")
    }

    pub(super) fn write_status(&mut self) {
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
    pub(super) fn worker_env(&mut self) -> Vec<(OsString, OsString)> {
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
