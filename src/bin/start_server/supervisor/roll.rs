//! Restarts, as `Step`'s transitions: a new generation rolled out over the slots.
//!
//! - All at once (the default, the original's rule for N): a new worker in every
//!   slot; each old one serves until its replacement has started, and the old ones
//!   are signalled together once every slot's new worker has.
//! - `--rolling=K`: at most K new workers starting (or waiting out
//!   `--kill-old-delay` before their old one is signalled) at a time; each that starts
//!   retires the old worker of its slot, so that capacity never drops below N and at
//!   most N+K workers serve or start. One that fails is retried in its slot, paced,
//!   while that slot's old worker serves on.
//! - `--canary=SECS`: first one new worker beside the whole old generation. If it
//!   dies, is not ready in time or misses its watchdog within SECS of its start, the
//!   restart is rolled back: the canary is stopped, the old generation was never
//!   touched, the verdict is FAILED, and the generation is not retried. Healthy for
//!   SECS, it takes slot 1 and the rest follows, rolling or at once.

use crate::log;
use crate::notify::Said;
use crate::signals::Signal;
use crate::sys::Pid;

use super::effect::{Effect, Report, Status, Tell};
use super::state::{Canary, LastRestart, Place, Ready, Retiring, Roll, Serving, Worker};
use super::step::{exit_text, say, Step};
use crate::log::Line;

impl Step<'_> {
    /// HUP, `--restart` or auto-restart: a new generation.
    pub(super) fn restart(&mut self) {
        self.s.last_restart = Some(LastRestart {
            began: self.now,
            after: self.s.generation,
            outcome: None,
        });
        let generation = self.s.generation + 1;
        self.out.push(Effect::Manager(Tell::Reloading(format!(
            "restarting: starting generation {generation}"
        ))));
        self.s.roll = Some(Roll {
            generation,
            reloading: true,
            canary: Canary::Passed,
        });
        // Before the new generation exists: all seen now is older.
        self.out.push(Effect::Survey);
        match self.s.config.canary {
            Some(secs) => self.spawn_canary(generation, secs),
            None => self.roll_on(),
        }
    }

    /// The slots whose old worker is still to be replaced, none of its replacement
    /// being started.
    fn pending(&self) -> Vec<usize> {
        let Some(roll) = &self.s.roll else {
            return Vec::new();
        };
        let old = |i: &usize| {
            let slot = &self.s.slots[*i];
            let serving = slot.serving.as_ref();
            slot.starting.is_none()
                && serving.is_some_and(|s| s.worker.generation < roll.generation)
        };
        (0..self.s.slots.len()).filter(old).collect()
    }

    /// Starts the restart's new workers in the slots still to be rolled: all of them,
    /// or, with `--rolling=K`, as many as keep K at most starting or waiting for their
    /// old worker's `--kill-old-delay`. Nothing while a canary is on trial.
    pub(super) fn roll_on(&mut self) {
        let Some(roll) = &self.s.roll else {
            return;
        };
        if roll.canary != Canary::Passed {
            return;
        }
        let generation = roll.generation;
        let busy = self.s.attempts().count()
            + self
                .s
                .old
                .values()
                .filter(|o| o.signal_at.is_some())
                .count();
        let room = match self.s.config.rolling {
            Some(k) => (k as usize).saturating_sub(busy),
            None => usize::MAX,
        };
        for i in self.pending().into_iter().take(room) {
            // An old worker now, no longer watched.
            if let Some(serving) = &mut self.s.slots[i].serving {
                serving.watchdog_at = None;
            }
            self.spawn(i, Some(generation), true);
        }
    }

    /// `serving` is slot `i`'s worker now: the one it replaces is an old worker (with
    /// `--rolling`, signalled now or after `--kill-old-delay`), the roll goes on, and
    /// once every slot's new worker has started, it is done.
    pub(super) fn install(&mut self, i: usize, serving: Serving) {
        let worker = serving.worker;
        let slot = &mut self.s.slots[i];
        let replaced = slot.serving.replace(serving);
        slot.failures_before_start = slot.failures;
        slot.failures = 0;
        if let Some(replaced) = replaced {
            match self.s.config.rolling.is_some() && self.s.roll.is_some() {
                true => self.retire_one(replaced.worker, worker.pid),
                false => self.retire(replaced.worker),
            }
        }
        self.roll_on();
        let on_trial = self.s.canary().is_some_and(|c| *c != Canary::Passed);
        if on_trial || self.s.attempts().next().is_some() || !self.pending().is_empty() {
            return self.write_status();
        }
        self.rolled_out(worker.generation);
    }

    /// Every slot's new worker has started (a restart's, or the first generation's,
    /// or a refill's): the service manager hears READY=1, and a restart all at once
    /// signals the old workers now, or after `--kill-old-delay`.
    fn rolled_out(&mut self, generation: u64) {
        if std::mem::take(&mut self.s.launcher) {
            self.out.push(Effect::Launcher(Report::Started));
        }
        let roll = self.s.roll.take();
        self.write_status();
        self.settle();
        let pids: Vec<String> = self
            .s
            .serving()
            .map(|(_, s)| s.worker.pid.to_string())
            .collect();
        let s = if pids.len() == 1 { "" } else { "s" };
        self.out.push(Effect::Manager(Tell::Ready(format!(
            "generation {generation} serving (worker{s} {})",
            pids.join(",")
        ))));
        let Some(roll) = roll else {
            return;
        };
        if self.s.config.rolling.is_some() {
            return say!(self, "rolled-out", {generation: roll.generation}; "generation {} rolled out", roll.generation);
        }
        let old = match self.s.old.is_empty() {
            true => "none".to_string(),
            false => self.old_pids(),
        };
        say!(
            self,
            "worker-started", {};
            "new worker is now running, sending {} to old workers:{old}",
            self.s.config.signal_on_hup.name
        );
        let delay = self.s.tunables.kill_old_delay;
        if delay.is_zero() {
            self.kill_old_workers();
        } else {
            say!(
                self,
                "kill-old-delay", {};
                "sleeping {} secs before killing old workers",
                log::seconds(delay)
            );
            self.s.kill_old_at = Some(self.now.after(delay));
        }
    }

    /// `--rolling`: the new worker `by` has started in place of `old`, which is
    /// signalled now, or after `--kill-old-delay`.
    fn retire_one(&mut self, old: Worker, by: Pid) {
        let delay = self.s.tunables.kill_old_delay;
        say!(
            self,
            "worker-started", {worker: by};
            "new worker {by} is now running, sending {} to old worker {}",
            self.s.config.signal_on_hup.name,
            old.pid
        );
        if !delay.is_zero() {
            say!(
                self,
                "kill-old-delay", {worker: old.pid};
                "sleeping {} secs before killing old worker {}",
                log::seconds(delay),
                old.pid
            );
        }
        let retiring = Retiring {
            generation: old.generation,
            listed: true,
            kill: None,
            signal_at: Some(self.now.after(delay)),
        };
        self.s.old.insert(old.pid, retiring);
        self.retired(old.pid);
        self.signal_due();
    }

    /// `--rolling`: the old workers whose `--kill-old-delay` is over get
    /// `--signal-on-hup`, which makes room for the next new ones.
    pub(super) fn signal_due(&mut self) {
        let now = self.now;
        let kill = self.s.config.kill_timeout.map(|t| (now.after(t), t));
        let signal = self.s.config.signal_on_hup.clone();
        let due: Vec<Pid> = self
            .s
            .old
            .iter()
            .filter(|(_, old)| old.signal_at.is_some_and(|at| at <= now))
            .map(|(&pid, _)| pid)
            .collect();
        if due.is_empty() {
            return;
        }
        // While they live: what they started is seen as theirs.
        self.out.push(Effect::Survey);
        for pid in due {
            if let Some(old) = self.s.old.get_mut(&pid) {
                old.signal_at = None;
                old.kill = old.kill.or(kill);
            }
            self.out.push(Effect::Log(
                Line::new("old-workers-signalled", format!("killing old worker {pid}"))
                    .set("worker", pid.into()),
            ));
            self.out.push(Effect::Signal {
                pid,
                signal: signal.clone(),
            });
        }
        self.roll_on();
    }

    // ------------------------------------------------------------ the canary

    fn spawn_canary(&mut self, generation: u64, secs: std::time::Duration) {
        let attempt = self.attempt(Some(generation), true);
        if let Some(roll) = &mut self.s.roll {
            roll.canary = Canary::Starting(attempt);
        }
        say!(
            self,
            "canary-starting", {generation: generation};
            "starting a canary of generation {generation}, to serve {} secs beside the old \
             generation",
            log::seconds(secs)
        );
        self.out.push(Effect::Spawn {
            generation,
            tunables: self.s.tunables,
            place: Place::Canary,
        });
    }

    /// Slot `i` lost its worker while a canary runs: if it is slot 1, the canary's, it
    /// is left for the canary (refilled if the canary is rolled back).
    pub(super) fn canary_takes(&self, i: usize) -> bool {
        i == 0 && self.s.canary_worker().is_some()
    }

    /// The canary is on trial from now on, listed in the status file.
    pub(super) fn canary_started(&mut self) {
        let (now, config) = (self.now, &self.s.config);
        let secs = config.canary.unwrap_or_default();
        let watchdog_at = config.watchdog.map(|w| now.after(w));
        let Some(roll) = &mut self.s.roll else {
            return;
        };
        let Canary::Starting(attempt) = &roll.canary else {
            return;
        };
        let Some(worker) = attempt.worker else {
            return;
        };
        let serving = Serving {
            worker,
            started_at: now,
            watchdog_at,
        };
        let until = now.after(secs);
        roll.canary = Canary::Trial { serving, until };
        say!(
            self,
            "canary-started", {worker: worker.pid};
            "canary worker {} has started, on trial for {} secs",
            worker.pid,
            log::seconds(secs)
        );
        self.write_status();
    }

    pub(super) fn canary_exited(&mut self, pid: Pid, status: Status) {
        match self.s.canary() {
            Some(Canary::Starting(_)) => say!(
                self,
                "start-failed", {worker: pid, status: status};
                "new worker {pid} seems to have failed to start, exit status:{status}"
            ),
            _ => {
                say!(self, "canary-exited", {worker: pid, status: status}; "canary worker {pid} died with status:{status}")
            }
        }
        // Gone: nothing to stop.
        if let Some(roll) = &mut self.s.roll {
            roll.canary = Canary::Passed;
        }
        self.rollback(&format!("canary worker {pid} {}", exit_text(status)));
    }

    pub(super) fn canary_said(&mut self, pid: Pid, sender: Pid, said: Said) {
        let (now, config) = (self.now, &self.s.config);
        let ready_notify = config.ready == Ready::Notify;
        let (ready_timeout, watchdog) = (config.ready_timeout, config.watchdog);
        let Some(roll) = &mut self.s.roll else {
            return;
        };
        match (said, &mut roll.canary) {
            (Said::Status(status), _) => {
                say!(self, "worker-status", {worker: pid}; "worker {pid} status: {status}")
            }
            (Said::Ready, Canary::Starting(_)) if ready_notify => {
                if sender != pid {
                    say!(self, "worker-ready", {worker: pid, sender: sender}; "worker {pid} is ready (said pid {sender})");
                }
                self.canary_started();
            }
            (Said::ExtendTimeout(by), Canary::Starting(attempt)) if ready_notify => {
                attempt.extend(ready_timeout, now, by);
            }
            (Said::Watchdog, Canary::Trial { serving, .. }) => {
                serving.watchdog_at = watchdog.map(|w| now.after(w));
            }
            (Said::WatchdogTrigger, Canary::Trial { .. }) => {
                self.rollback(&format!("canary worker {pid} sent WATCHDOG=trigger"));
            }
            _ => {}
        }
    }

    /// The canary's deadlines: not ready in time, a missed watchdog (both roll back),
    /// or the end of its trial (it passed).
    pub(super) fn canary_tick(&mut self) {
        let now = self.now;
        match self.s.canary() {
            Some(Canary::Starting(attempt)) if attempt.until <= now => match attempt.worker {
                Some(worker) if self.s.config.ready == Ready::Notify || attempt.probe.is_some() => {
                    let timeout = log::seconds(self.s.config.ready_timeout);
                    say!(
                        self,
                        "worker-not-ready", {worker: worker.pid};
                        "new worker {} was not ready within {timeout} secs, stopping it",
                        worker.pid
                    );
                    say!(self, "hint", {}; "{}", self.not_ready_hint());
                    self.rollback(&format!(
                        "canary worker {} was not ready within {timeout} secs",
                        worker.pid
                    ));
                }
                Some(_) => self.canary_started(),
                None => {}
            },
            Some(Canary::Trial { serving, until }) => {
                let pid = serving.worker.pid;
                if serving.watchdog_at.is_some_and(|at| at <= now) {
                    let period = log::seconds(self.s.config.watchdog.unwrap_or_default());
                    self.rollback(&format!(
                        "canary worker {pid} sent no WATCHDOG=1 for {period} secs"
                    ));
                } else if *until <= now {
                    self.promote();
                }
            }
            _ => {}
        }
    }

    /// The canary served its trial: it takes slot 1, and the rest follows.
    fn promote(&mut self) {
        let Some(roll) = &mut self.s.roll else {
            return;
        };
        let Canary::Trial { serving, .. } = std::mem::replace(&mut roll.canary, Canary::Passed)
        else {
            return;
        };
        let secs = log::seconds(self.s.config.canary.unwrap_or_default());
        say!(
            self,
            "canary-passed", {worker: serving.worker.pid};
            "canary worker {} served {secs} secs: rolling out generation {}",
            serving.worker.pid,
            roll.generation
        );
        self.install(0, serving);
    }

    /// The canary failed, `why`: it is stopped, the old generation serves on
    /// untouched, the restart's clients hear FAILED, and the generation is not tried
    /// again.
    pub(super) fn rollback(&mut self, why: &str) {
        let Some(roll) = self.s.roll.take() else {
            return;
        };
        let generation = roll.generation;
        say!(
            self,
            "rollback", {generation: generation};
            "rolling back generation {generation}: {why}; the old generation serves on"
        );
        let worker = match roll.canary {
            Canary::Passed => None,
            Canary::Starting(attempt) => attempt.worker,
            Canary::Trial { serving, .. } => Some(serving.worker),
        };
        if let Some(worker) = worker {
            self.stop_now(worker, Signal::term(), false);
        }
        // Slot 1's worker died during the trial, left for the canary: refilled, paced.
        let slot = &mut self.s.slots[0];
        if slot.serving.is_none() && slot.starting.is_none() {
            let mut attempt = self.attempt(Some(self.s.generation), false);
            attempt.until = self.now.after(self.retry_base());
            self.s.slots[0].starting = Some(attempt);
        }
        self.write_status();
        let text = format!("FAILED generation {generation}: {why}; rolled back");
        self.verdict(generation, &text);
        if roll.reloading {
            let serving = self.serves_on();
            self.out.push(Effect::Manager(Tell::Ready(format!(
                "restart failed: generation {generation} rolled back: {why}; {serving}"
            ))));
        }
    }
}
