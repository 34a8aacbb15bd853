//! `step`: what each event leads to. It reads no clock (`now` is given) and makes no
//! system call: it changes the state and returns what is to be done, in order.
//!
//! A worker is spawned into an *attempt*. It has *started* when it is still alive after
//! `--interval`, or, with `--ready=notify`, when it says `READY=1`: it becomes the
//! serving worker and, if it replaces others (a restart), the old workers are
//! signalled, after `--kill-old-delay`. If it dies first (or is not ready in time), the
//! attempt is retried, paced, while the old workers go on serving. Each transition
//! ("started", "failed to start", "stop the old ones", ...) is one method below,
//! whatever event led to it.

use std::os::raw::c_int;
use std::time::Duration;

use crate::control_socket::{Ask, ACCEPTED};
use crate::envdir::Tunables;
use crate::log;
use crate::notify::Said;
use crate::signals::{self, Signal};
use crate::sys::Pid;
use crate::upgrade::{check, VERSION};

use super::effect::{Effect, Report, Spawned, Status, Tell};
use super::event::Event;
use super::state::{
    Attempt, Client, Mono, Phase, Retiring, Roll, Serving, Slot, State, Upgrade, UpgradePhase,
    Waiter, Worker,
};

/// How long a worker that was told to stop without `--kill-timeout` (because it was
/// not ready in time, or hung) has before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// The shortest pause between two tries after a failed start, even at `--interval=0`
/// (systemd's default RestartSec), so that a worker that cannot start never makes
/// start_server spin.
pub const RETRY_FLOOR: Duration = Duration::from_millis(100);

/// What to do about a worker that never said READY=1.
const NOT_READY_HINT: &str = "it sent no READY=1 to $NOTIFY_SOCKET: if the server does not \
    speak sd_notify, run start_server without --ready=notify (--interval then decides when a \
    worker has started); if it only needs longer, raise --ready-timeout";

/// The verdict for `--restart` clients once start_server is stopping.
const STOPPING: &str = "FAILED start_server is stopping";

/// Applies `event`, which happened at `now`, to `state`: what is to be done.
pub fn step(state: &mut State, event: Event, now: Mono) -> Vec<Effect> {
    let mut step = Step {
        s: state,
        now,
        out: Vec::new(),
    };
    step.event(event);
    step.out
}

struct Step<'a> {
    s: &'a mut State,
    now: Mono,
    out: Vec<Effect>,
}

/// `say!(self, "...")`: one log line, as an effect.
macro_rules! say {
    ($step:expr, $($arg:tt)*) => {
        $step.out.push(Effect::Log(format!($($arg)*)))
    };
}

impl Step<'_> {
    fn event(&mut self, event: Event) {
        match event {
            Event::Start => self.start(),
            Event::Exited { pid, status } => self.exited(pid, status),
            Event::Ignored { sig, pid } => {
                say!(
                    self,
                    "received {} from pid {pid}, ignoring it",
                    signals::name(sig)
                )
            }
            Event::Notified { pid, sender, said } => self.notified(pid, sender, said),
            Event::Stop { sig } => self.stop(sig),
            Event::Reopen => self.out.push(Effect::ReopenLog),
            Event::Upgrade { pid, client } => self.upgrade(pid, client),
            Event::Restart => self.hup(),
            Event::Request { pid, from, ask } => self.request(pid, from, ask),
            Event::Tick => self.tick(),
            Event::Spawned {
                slot,
                tunables,
                spawned,
            } => self.spawned(slot, tunables, spawned),
            Event::CheckSpawned(result) => self.check_spawned(result),
            Event::Checked(verdict) => self.checked(verdict),
            Event::ExecFailed(why) => {
                if let Some(upgrade) = self.s.upgrade.take() {
                    self.refuse(&upgrade.clients, &why);
                }
            }
            Event::Resumed { from, refused } => self.resumed(&from, refused),
        }
    }

    // ------------------------------------------------------------ events

    fn hup(&mut self) {
        if self.s.stopping() {
            return;
        }
        if self.s.restarting() {
            self.s.phase = Phase::RestartQueued;
        } else {
            say!(self, "received HUP, spawning a new worker");
            self.restart();
        }
    }

    /// A stop signal: signal every worker, then wait for all of them to exit. Unlike
    /// the original, which ignores them, a repeated stop signal signals the workers
    /// still running again.
    fn stop(&mut self, sig: c_int) {
        if !self.s.stopping() {
            self.s.phase = Phase::Stopping;
            self.out.push(Effect::Manager(Tell::Stopping));
            self.verdict(u64::MAX, STOPPING);
            self.abandon_upgrade("start_server is stopping");
            self.s.kill_old_at = None;
            self.s.roll = None;
            for slot in std::mem::take(&mut self.s.slots) {
                let starting = slot.starting.and_then(|a| a.worker);
                for worker in slot.serving.map(|s| s.worker).into_iter().chain(starting) {
                    self.retire(worker);
                }
            }
        }
        // As in the original, INT is passed on as TERM; the other stop signals become
        // --signal-on-term, as TERM does.
        let send = match sig == libc::SIGINT {
            true => Signal::term(),
            false => self.s.config.signal_on_term.clone(),
        };
        say!(
            self,
            "received {}, sending {} to all workers:{}",
            signals::name(sig),
            send.name,
            self.old_pids()
        );
        self.signal_old(&send);
    }

    /// A `--restart` client: a HUP, and a wait for its verdict. An `--upgrade`
    /// client: a USR2.
    fn request(&mut self, pid: Pid, from: Client, ask: Ask) {
        self.reply(&from, ACCEPTED);
        if ask == Ask::Upgrade {
            return self.upgrade(pid, Some(from));
        }
        say!(self, "received a restart request from pid {pid}");
        self.s.waiters.push(Waiter {
            to: from,
            after: self.s.generation,
        });
        match self.s.stopping() {
            true => self.verdict(u64::MAX, STOPPING),
            false => self.hup(),
        }
    }

    /// A child exited: a worker, or an orphan of one (reparented to start_server as
    /// subreaper), which is ignored.
    fn exited(&mut self, pid: Pid, status: Status) {
        let is = |w: &Worker| w.pid == pid;
        let starting = |slot: &Slot| {
            slot.starting
                .as_ref()
                .and_then(|a| a.worker)
                .is_some_and(|w| is(&w))
        };
        if let Some(i) = self.s.slots.iter().position(starting) {
            if let Some(attempt) = &mut self.s.slots[i].starting {
                attempt.worker = None;
            }
            say!(
                self,
                "new worker {pid} seems to have failed to start, exit status:{status}"
            );
            self.hint_if_daemonizing(pid, status);
            return self.failed_start(i, &exit_text(status));
        }
        let serving = |slot: &Slot| slot.serving.as_ref().is_some_and(|s| is(&s.worker));
        if let Some(i) = self.s.slots.iter().position(serving) {
            let slot = &mut self.s.slots[i];
            let worker = slot.serving.take().expect("a serving worker").worker;
            // Its replacement is on its way: it was an old worker already.
            if slot.starting.is_some() {
                say!(self, "old worker {pid} died, status:{status}");
                self.write_status();
                return self.settle();
            }
            // The file never lists a dead worker for the interval a respawn takes.
            self.write_status();
            say!(
                self,
                "worker {pid} died unexpectedly with status:{status}, restarting"
            );
            // One that dies before a retry pause has passed is a crash loop: paced as
            // a failed start, whether or not it was declared started.
            if self.now < worker.spawned_at.after(self.retry_base()) {
                let slot = &mut self.s.slots[i];
                slot.failures = slot.failures_before_start;
                slot.starting = Some(Attempt {
                    generation: worker.generation,
                    worker: None,
                    spawned_at: worker.spawned_at,
                    until: self.now,
                    replacing: false,
                });
                self.hint_if_daemonizing(pid, status);
                self.failed_start(i, &exit_text(status));
            } else {
                self.spawn(i, None, false);
            }
            return;
        }
        if let Some(old) = self.s.old.remove(&pid) {
            match self.s.stopping() || !old.listed {
                true => say!(self, "worker {pid} died, status:{status}"),
                false => say!(self, "old worker {pid} died, status:{status}"),
            }
            self.write_status();
            self.settle();
        }
    }

    /// One thing a worker (`pid`, through `sender`) said.
    fn notified(&mut self, pid: Pid, sender: Pid, said: Said) {
        let starting = self.s.slots.iter().position(|slot| {
            let worker = slot.starting.as_ref().and_then(|a| a.worker);
            worker.is_some_and(|w| w.pid == pid)
        });
        // A worker whose replacement is being started is no longer watched.
        let serving = self.s.slots.iter().position(|slot| {
            let serving = slot.serving.as_ref();
            serving.is_some_and(|s| s.worker.pid == pid) && slot.starting.is_none()
        });
        let config = &self.s.config;
        match (said, starting, serving) {
            (Said::Status(status), _, _) => say!(self, "worker {pid} status: {status}"),
            (Said::Ready, Some(i), _) if config.ready_notify => {
                let attempt = self.s.slots[i].starting.take().expect("a worker starting");
                if sender != pid {
                    say!(self, "worker {pid} is ready (said pid {sender})");
                }
                if let Some(worker) = attempt.worker {
                    self.started(i, worker);
                }
            }
            (Said::ExtendTimeout(by), Some(i), _) if config.ready_notify => {
                let ready_timeout = config.ready_timeout;
                let now = self.now;
                if let Some(attempt) = &mut self.s.slots[i].starting {
                    // As systemd does: the last extension counts, and the deadline is
                    // never sooner than --ready-timeout allowed.
                    attempt.until = attempt.spawned_at.after(ready_timeout).max(now.after(by));
                }
            }
            (Said::Watchdog, _, Some(i)) => {
                let at = config.watchdog.map(|w| self.now.after(w));
                if let Some(serving) = &mut self.s.slots[i].serving {
                    serving.watchdog_at = at;
                }
            }
            (Said::WatchdogTrigger, _, Some(i)) => self.hung(i, "sent WATCHDOG=trigger"),
            // A repeated READY=1, or one from an old worker: nothing to do.
            _ => {}
        }
    }

    /// The end of a turn: the deadlines due fire (a worker counts as started or is
    /// retried, the old workers are signalled, lingering ones killed, a hung one
    /// replaced, auto-restart), then a checked upgrade is executed, then, once stopped
    /// with every worker gone, start_server exits.
    fn tick(&mut self) {
        let now = self.now;
        for i in 0..self.s.slots.len() {
            let Some(slot) = self.s.slots.get_mut(i) else {
                break;
            };
            let Some(attempt) = slot.starting.take_if(|a| a.until <= now) else {
                continue;
            };
            match attempt.worker {
                Some(worker) if self.s.config.ready_notify => self.not_ready(i, worker, attempt),
                Some(worker) => self.started(i, worker),
                None => self.spawn(i, None, attempt.replacing),
            }
        }
        if self.s.kill_old_at.is_some_and(|at| at <= now) {
            self.s.kill_old_at = None;
            self.kill_old_workers();
        }
        self.kill_lingering();
        if let Some(Upgrade {
            phase: UpgradePhase::Checking { deadline },
            ..
        }) = &mut self.s.upgrade
        {
            // A check that has not answered in time is killed; its exit is the refusal.
            if deadline.is_some_and(|d| d <= now) {
                *deadline = None;
                self.out.push(Effect::KillCheck { forget: false });
            }
        }
        for i in 0..self.s.slots.len() {
            let serving = self.s.slots.get(i).and_then(|s| s.serving.as_ref());
            if serving
                .and_then(|s| s.watchdog_at)
                .is_some_and(|at| at <= now)
            {
                let period = log::seconds(self.s.config.watchdog.unwrap_or_default());
                self.hung(i, &format!("sent no WATCHDOG=1 for {period} secs"));
            }
        }
        if self.s.phase == Phase::RestartQueued && !self.s.restarting() {
            self.s.phase = Phase::Running;
            say!(self, "received HUP, spawning a new worker");
            self.restart();
        } else if self.s.auto_restart_at().is_some_and(|at| at <= now) {
            let interval = log::seconds(self.s.tunables.auto_restart.unwrap_or_default());
            match self.s.old.is_empty() {
                true => say!(self, "autorestart triggered (interval={interval})"),
                false => say!(self, "autorestart triggered (forced, interval={interval})"),
            }
            self.restart();
        }
        // Last, once every event of this turn has been acted on: what arrives from now
        // on waits in the kernel (blocked signals, queued datagrams, exits) for the new
        // image.
        if let Some(upgrade) = &mut self.s.upgrade {
            if let UpgradePhase::Passed { version } = &upgrade.phase {
                let version = version.clone();
                upgrade.phase = UpgradePhase::Executing;
                self.out.push(Effect::Exec { version });
            }
        }
        if self.s.phase == Phase::Stopping && self.s.old.is_empty() {
            say!(self, "exiting");
            self.out.push(Effect::Exit);
        }
    }

    // ------------------------------------------------------------ transitions

    /// The first generation: a worker in every slot.
    fn start(&mut self) {
        let workers = self.s.config.workers.max(1) as usize;
        self.s.slots = vec![Slot::default(); workers];
        self.spawn(0, None, false);
        let generation = self.s.generation;
        for i in 1..workers {
            self.spawn(i, Some(generation), false);
        }
    }

    /// A new generation in every slot; each slot's worker serves until its
    /// replacement has started, and is signalled once all have.
    fn restart(&mut self) {
        let generation = self.s.generation + 1;
        self.out.push(Effect::Manager(Tell::Reloading(format!(
            "restarting: starting generation {generation}"
        ))));
        self.s.roll = Some(Roll {
            generation,
            reloading: true,
        });
        for i in 0..self.s.slots.len() {
            if let Some(serving) = &mut self.s.slots[i].serving {
                serving.watchdog_at = None;
            }
            let shared = (i > 0).then_some(generation);
            self.spawn(i, shared, true);
        }
    }

    /// A worker is tried in slot `i`, of `generation` (`None`: the next number, as
    /// every try takes but those a restart starts together): the executor answers
    /// with `Event::Spawned`.
    fn spawn(&mut self, i: usize, generation: Option<u64>, replacing: bool) {
        let generation = generation.unwrap_or_else(|| {
            self.s.generation += 1;
            self.s.generation
        });
        self.s.slots[i].starting = Some(Attempt {
            generation,
            worker: None,
            spawned_at: self.now,
            until: self.now,
            replacing,
        });
        self.out.push(Effect::Spawn {
            generation,
            tunables: self.s.tunables,
            slot: i,
        });
    }

    fn spawned(&mut self, i: usize, tunables: Option<Tunables>, spawned: Spawned) {
        if let Some(tunables) = tunables {
            self.s.tunables = tunables;
        }
        let Some(generation) = self.slot_attempt(i).map(|a| a.generation) else {
            return;
        };
        match spawned {
            Spawned::NoChannel(e) => {
                say!(self, "failed to create a notification socket: {e}");
                self.failed_start(i, &format!("no notification socket: {e}"));
            }
            Spawned::Failed(e) => {
                let pause = self.pause_after(self.s.slots[i].failures.saturating_add(1));
                say!(self, "{e}; trying again in {} secs", log::seconds(pause));
                self.failed_start(i, "it could not be spawned");
            }
            Spawned::Child {
                pid,
                exec_error,
                unexecutable,
            } => {
                say!(self, "starting new worker {pid}");
                if let Some(error) = exec_error {
                    // Unlike a later generation's (a bad deploy, while the old one
                    // serves on), the first's is a mistake in the command line: said
                    // at once, not retried forever.
                    if unexecutable && generation == 1 {
                        self.s.phase = Phase::GaveUp;
                        self.s.slots.clear();
                        return self.out.push(Effect::GiveUp(error));
                    }
                    say!(self, "{error}");
                }
                let config = &self.s.config;
                let wait = match config.ready_notify {
                    true => config.ready_timeout,
                    false => config.interval,
                };
                if let Some(attempt) = &mut self.s.slots[i].starting {
                    attempt.worker = Some(Worker {
                        pid,
                        generation,
                        spawned_at: attempt.spawned_at,
                    });
                    attempt.until = attempt.spawned_at.after(wait);
                }
            }
        }
    }

    /// The new worker of slot `i` outlived `--interval`, or said `READY=1`: it is now
    /// the slot's serving one, and the worker it replaces is an old one. Once every
    /// slot's has started, a restart signals the old workers.
    fn started(&mut self, i: usize, worker: Worker) {
        let slot = &mut self.s.slots[i];
        let replaced = slot.serving.replace(Serving {
            worker,
            started_at: self.now,
            watchdog_at: self.s.config.watchdog.map(|w| self.now.after(w)),
        });
        slot.failures_before_start = slot.failures;
        slot.failures = 0;
        if let Some(replaced) = replaced {
            self.retire(replaced.worker);
        }
        if self.s.attempts().next().is_some() {
            return self.write_status();
        }
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
            "generation {} serving (worker{s} {})",
            worker.generation,
            pids.join(",")
        ))));
        if roll.is_none() {
            return;
        }
        let old = match self.s.old.is_empty() {
            true => "none".to_string(),
            false => self.old_pids(),
        };
        say!(
            self,
            "new worker is now running, sending {} to old workers:{old}",
            self.s.config.signal_on_hup.name
        );
        let delay = self.s.tunables.kill_old_delay;
        if delay.is_zero() {
            self.kill_old_workers();
        } else {
            say!(
                self,
                "sleeping {} secs before killing old workers",
                log::seconds(delay)
            );
            self.s.kill_old_at = Some(self.now.after(delay));
        }
    }

    /// `--ready=notify`: the new worker of slot `i` did not say `READY=1` within
    /// `--ready-timeout`. It is stopped (TERM, then KILL if it lingers) and counts as a
    /// failed start, while the old generation goes on serving.
    fn not_ready(&mut self, i: usize, worker: Worker, attempt: Attempt) {
        let timeout = log::seconds(self.s.config.ready_timeout);
        say!(
            self,
            "new worker {} was not ready within {timeout} secs, stopping it",
            worker.pid
        );
        // The most common cause: a server that does not speak sd_notify at all.
        say!(self, "{NOT_READY_HINT}");
        self.stop_now(worker, Signal::term(), false);
        // The pause before the next try counts from now, not from the spawn.
        self.s.slots[i].starting = Some(Attempt {
            worker: None,
            spawned_at: self.now,
            ..attempt
        });
        self.failed_start(
            i,
            &format!("not ready within {timeout} secs ({NOT_READY_HINT})"),
        );
    }

    /// `--watchdog`: the serving worker of slot `i` said no `WATCHDOG=1` in time (or
    /// said `WATCHDOG=trigger`): `why`. It gets SIGABRT, as systemd sends, then SIGKILL
    /// if it lingers, and is replaced, paced as a failed start: its start counts as
    /// failed after all, so that a worker that hangs as soon as it starts is retried
    /// after the retry floor, then `--backoff`'s doubling pauses, never in a loop.
    fn hung(&mut self, i: usize, why: &str) {
        let Some(serving) = self.s.slots[i].serving.take() else {
            return;
        };
        let worker = serving.worker;
        say!(
            self,
            "worker {} {why}, sending ABRT and restarting",
            worker.pid
        );
        let abrt = Signal::parse("ABRT").expect("a known signal name");
        self.stop_now(worker, abrt, true);
        self.write_status();
        let slot = &mut self.s.slots[i];
        slot.failures = slot.failures_before_start;
        slot.starting = Some(Attempt {
            generation: worker.generation,
            worker: None,
            spawned_at: self.now,
            until: self.now,
            replacing: false,
        });
        self.failed_start(i, &format!("worker {} {why}", worker.pid));
    }

    /// Signals one worker to stop now, outside a restart's order, with a KILL deadline.
    fn stop_now(&mut self, worker: Worker, signal: Signal, listed: bool) {
        self.out.push(Effect::Signal {
            pid: worker.pid,
            signal,
        });
        let grace = self.s.config.kill_timeout.unwrap_or(STOP_GRACE);
        let retiring = Retiring {
            generation: worker.generation,
            listed,
            kill: Some((self.now.after(grace), grace)),
            signal_at: None,
        };
        self.s.old.insert(worker.pid, retiring);
    }

    /// Slot `i`'s worker died before it had started, or could not be spawned: the next
    /// try comes after the interval, never sooner than `RETRY_FLOOR`, doubling up to
    /// `--backoff` while the failures in that slot go on.
    fn failed_start(&mut self, i: usize, why: &str) {
        let Some(generation) = self.slot_attempt(i).map(|a| a.generation) else {
            return;
        };
        if std::mem::take(&mut self.s.launcher) {
            let why = why.to_string();
            self.out
                .push(Effect::Launcher(Report::Failed { generation, why }));
        }
        self.verdict(
            generation,
            &format!("FAILED generation {generation}: {why}"),
        );
        if let Some(roll) = self.s.roll.as_mut().filter(|r| r.reloading) {
            roll.reloading = false;
            let listed = self.s.old.iter().filter(|(_, old)| old.listed);
            let listed = listed.map(|(&pid, old)| (pid, old.generation));
            let serving = self
                .s
                .serving()
                .map(|(_, s)| (s.worker.pid, s.worker.generation));
            let serving = match listed.chain(serving).max() {
                Some((pid, generation)) => {
                    format!("generation {generation} serves on (worker {pid})")
                }
                None => "no generation serves".into(),
            };
            self.out.push(Effect::Manager(Tell::Ready(format!(
                "restart failed: generation {generation} {why}; {serving}"
            ))));
        }
        let slot = &mut self.s.slots[i];
        slot.failures = slot.failures.saturating_add(1);
        let failures = slot.failures;
        let delay = self.pause_after(failures);
        if let Some(attempt) = &mut self.s.slots[i].starting {
            attempt.until = attempt.spawned_at.after(delay);
        }
        if delay != self.s.config.interval {
            say!(
                self,
                "failed starts in a row: {failures}; trying again in {} secs",
                log::seconds(delay)
            );
        }
    }

    fn slot_attempt(&self, i: usize) -> Option<&Attempt> {
        self.s.slots.get(i).and_then(|slot| slot.starting.as_ref())
    }

    /// The pause after `failures` (at least 1) failed starts in a row.
    fn pause_after(&self, failures: u32) -> Duration {
        let base = self.retry_base();
        match self.s.config.backoff {
            Some(max) => {
                let doublings = failures.saturating_sub(1).min(30);
                base.saturating_mul(1 << doublings).min(max.max(base))
            }
            None => base,
        }
    }

    /// The pause after one failed start.
    fn retry_base(&self) -> Duration {
        self.s.config.interval.max(RETRY_FLOOR)
    }

    fn kill_old_workers(&mut self) {
        say!(self, "killing old workers");
        let signal = self.s.config.signal_on_hup.clone();
        self.signal_old(&signal);
    }

    /// SIGKILL for the signalled workers still running at their deadline
    /// (`--kill-timeout`, or `STOP_GRACE` for one that failed to start or hung).
    fn kill_lingering(&mut self) {
        let now = self.now;
        let kill = Signal::parse("KILL").expect("a known signal name");
        for (&pid, old) in self.s.old.iter_mut() {
            let Some((_, grace)) = old.kill.filter(|k| k.0 <= now) else {
                continue;
            };
            old.kill = None;
            self.out.push(Effect::Log(format!(
                "worker {pid} still running {} secs after it was told to stop, sending KILL",
                log::seconds(grace)
            )));
            self.out.push(Effect::Signal {
                pid,
                signal: kill.clone(),
            });
        }
    }

    /// Moves a worker to the old ones, which are signalled and waited for.
    fn retire(&mut self, worker: Worker) {
        let retiring = Retiring {
            generation: worker.generation,
            listed: true,
            kill: None,
            signal_at: None,
        };
        self.s.old.insert(worker.pid, retiring);
    }

    /// A restart succeeded once its generation runs alone: every slot's worker has
    /// started and no older worker is left.
    fn settle(&mut self) {
        if !self.s.settled() || self.s.roll.is_some() {
            return;
        }
        let Some(generation) = self.s.serving().map(|(_, s)| s.worker.generation).min() else {
            return;
        };
        if self.s.old.values().all(|old| !old.listed) {
            self.verdict(generation, &format!("OK generation {generation}"));
        }
    }

    /// Answers the clients waiting for a generation up to `generation`.
    fn verdict(&mut self, generation: u64, text: &str) {
        let (answered, waiting) = std::mem::take(&mut self.s.waiters)
            .into_iter()
            .partition(|waiter| waiter.after < generation);
        self.s.waiters = waiting;
        for waiter in answered {
            self.reply(&waiter.to, text);
        }
    }

    /// Sends `signal` to every old worker; with `--kill-timeout`, each gets SIGKILL
    /// that long after the first stop signal it was sent.
    fn signal_old(&mut self, signal: &Signal) {
        let kill = self.s.config.kill_timeout.map(|t| (self.now.after(t), t));
        for (&pid, old) in self.s.old.iter_mut() {
            self.out.push(Effect::Signal {
                pid,
                signal: signal.clone(),
            });
            old.kill = old.kill.or(kill);
            old.signal_at = None;
        }
    }

    fn old_pids(&self) -> String {
        let pids: Vec<String> = self.s.old.keys().map(|pid| pid.to_string()).collect();
        pids.join(",")
    }

    fn write_status(&mut self) {
        let mut workers: Vec<(u64, Pid)> = self
            .s
            .old
            .iter()
            .filter(|(_, old)| old.listed)
            .map(|(&pid, old)| (old.generation, pid))
            .collect();
        let serving = self.s.serving().map(|(_, s)| s.worker);
        workers.extend(serving.map(|w| (w.generation, w.pid)));
        self.out.push(Effect::WriteStatus(workers));
    }

    fn reply(&mut self, to: &Client, text: &str) {
        self.out.push(Effect::Reply {
            to: to.clone(),
            text: text.to_string(),
        });
    }

    /// A worker that exits 0 before it has started most likely forked into the
    /// background, leaving a child that start_server reaps (as subreaper) but does not
    /// supervise. Said for a death within a retry pause at an `--interval` below the
    /// floor too, which counts as a failed start.
    fn hint_if_daemonizing(&mut self, pid: Pid, status: Status) {
        if status == 0 {
            say!(
                self,
                "worker {pid} exited with status 0 before it had started: a server that \
                 daemonizes itself (forks and exits) cannot be supervised; run it in the \
                 foreground"
            );
        }
    }

    // ------------------------------------------------------------ upgrade in place

    /// USR2 from `pid`, or an `--upgrade` client's request (`client`, from `pid`): the
    /// binary at start_server's path is checked (while the supervisor goes on), then,
    /// at the end of the turn in which it passed, executed with this state.
    fn upgrade(&mut self, pid: Pid, client: Option<Client>) {
        let who = match client {
            None => format!("received USR2 from pid {pid}"),
            Some(_) => format!("received an upgrade request from pid {pid}"),
        };
        if self.s.stopping() {
            say!(self, "{who}, but start_server is stopping");
            return self.answer(client.as_slice(), STOPPING);
        }
        if let Some(upgrade) = &mut self.s.upgrade {
            upgrade.clients.extend(client);
            return say!(self, "{who}, joining the upgrade under way");
        }
        let Some(exe) = &self.s.config.exe else {
            say!(
                self,
                "{who}, but the path of start_server's binary was not known at start"
            );
            let why = "FAILED the path of start_server's binary is unknown";
            return self.answer(client.as_slice(), why);
        };
        say!(self, "{who}, checking {}", exe.display());
        self.s.upgrade = Some(Upgrade {
            began: self.now,
            clients: client.into_iter().collect(),
            phase: UpgradePhase::Checking { deadline: None },
        });
        self.out.push(Effect::SpawnCheck);
    }

    fn check_spawned(&mut self, result: Result<(), String>) {
        let Some(upgrade) = &mut self.s.upgrade else {
            return;
        };
        match result {
            Ok(()) => {
                let deadline = Some(self.now.after(check::TIMEOUT));
                upgrade.phase = UpgradePhase::Checking { deadline };
            }
            Err(why) => {
                let clients = std::mem::take(&mut upgrade.clients);
                self.s.upgrade = None;
                self.refuse(&clients, &why);
            }
        }
    }

    /// The check exited: the exec comes at the end of this turn of the loop.
    fn checked(&mut self, verdict: Result<String, String>) {
        let Some(upgrade) = &mut self.s.upgrade else {
            return;
        };
        match verdict {
            Ok(version) => upgrade.phase = UpgradePhase::Passed { version },
            Err(why) => {
                let clients = std::mem::take(&mut upgrade.clients);
                self.s.upgrade = None;
                self.refuse(&clients, &why);
            }
        }
    }

    /// TERM while an upgrade is under way: no upgrade.
    fn abandon_upgrade(&mut self, why: &str) {
        if let Some(upgrade) = self.s.upgrade.take() {
            if let UpgradePhase::Checking { .. } = upgrade.phase {
                self.out.push(Effect::KillCheck { forget: true });
            }
            self.refuse(&upgrade.clients, why);
        }
    }

    /// The first event of a new image (or of the previous one, back after the new one
    /// refused the state): the `--upgrade` clients learn how it went.
    fn resumed(&mut self, from: &str, refused: Option<String>) {
        let clients = self.s.upgrade.take().map(|u| (u.began, u.clients));
        let (began, clients) = clients.unwrap_or((self.now, Vec::new()));
        match refused {
            None => {
                let took = log::millis(began.until(self.now));
                say!(self, "upgraded from {from} to {VERSION} in {took} ms");
                let text = format!("OK upgraded from {from} to {VERSION} in {took} ms");
                self.answer(&clients, &text);
            }
            Some(why) => {
                say!(self, "back to {VERSION}: {why}");
                self.answer(&clients, &format!("FAILED {why}"));
            }
        }
    }

    fn refuse(&mut self, clients: &[Client], why: &str) {
        let exe = match &self.s.config.exe {
            Some(exe) => exe.display().to_string(),
            None => "?".into(),
        };
        say!(self, "not upgrading to {exe}: {why}");
        self.answer(clients, &format!("FAILED {why}"));
    }

    fn answer(&mut self, clients: &[Client], text: &str) {
        for client in clients {
            self.reply(client, text);
        }
    }
}

/// A wait status in words, for a `--restart` verdict (the log keeps the original's raw
/// number).
fn exit_text(status: Status) -> String {
    if libc::WIFSIGNALED(status) {
        format!("killed by SIG{}", signals::name(libc::WTERMSIG(status)))
    } else {
        format!("exited with status {}", libc::WEXITSTATUS(status))
    }
}
