//! `step`: what each event leads to. It reads no clock (`now` is given) and makes no
//! system call: it changes the state and returns what is to be done, in order.
//!
//! Each of the `--workers` slots is supervised alone. A worker is spawned into its
//! slot's *attempt*. It has *started* when it is still alive after `--interval`, or,
//! with `--ready=notify`, when it says `READY=1`: it becomes the slot's serving worker,
//! and the one it replaces (in a restart) an old worker, signalled as `roll` says. If
//! it dies first (or is not ready in time), the attempt is retried, paced by that
//! slot's failures, while the old workers go on serving. Each transition ("started",
//! "failed to start", "stop the old ones", ...) is one method, here or in `roll`,
//! whatever event led to it.

use std::os::raw::c_int;
use std::time::Duration;

use crate::control_socket::{Ask, ACCEPTED};
use crate::envdir::Tunables;
use crate::listening::Probe;
use crate::log::{self, Line};
use crate::notify::Said;
use crate::signals::{self, Signal};
use crate::sys::Pid;
use crate::upgrade::{check, VERSION};

use super::effect::{Effect, Report, Spawned, Status, Tell};
use super::event::Event;
use super::state::{
    Attempt, Canary, Client, Leftover, Mono, Origin, Phase, Place, Probing, Ready, Retiring,
    Serving, Slot, State, Upgrade, UpgradePhase, Waiter, Worker,
};

/// How long a worker that was told to stop without `--kill-timeout` (because it was
/// not ready in time, or hung) has before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// The shortest pause between two tries after a failed start, even at `--interval=0`
/// (systemd's default RestartSec), so that a worker that cannot start never makes
/// start_server spin.
pub const RETRY_FLOOR: Duration = Duration::from_millis(100);

/// `--ready=listening`: the first look at a new worker's tree comes this long after
/// its spawn, and the pause between looks doubles up to `PROBE_MAX`, which bounds how
/// long after the server waits for connections it counts as started: often enough for
/// a fast server to take over within a few milliseconds, few enough looks for a slow
/// one that they cost nothing noticeable (none at all once it has started).
pub const PROBE_FIRST: Duration = Duration::from_millis(1);
pub const PROBE_MAX: Duration = Duration::from_millis(5);

/// What to do about a worker that never waited for connections.
const NOT_LISTENING_HINT: &str = "it never waited for connections on its listeners: if \
    the server waits in a way /proc does not show (io_uring, polling with a zero timeout), \
    use --ready=notify or --ready=interval; if it only needs longer, raise --ready-timeout";

/// What to do about a worker that never said READY=1.
pub(super) const NOT_READY_HINT: &str =
    "it sent no READY=1 to $NOTIFY_SOCKET: if the server does not \
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

/// One event's step: the state, the moment, and the effects so far. Its methods are
/// the transitions, here and in `roll` (restarts).
pub(super) struct Step<'a> {
    pub(super) s: &'a mut State,
    pub(super) now: Mono,
    pub(super) out: Vec<Effect>,
}

/// `say!(self, "...")`: one log line, as an effect;
/// `say!(self, "worker-exited", {generation: g, worker: pid}; "...")`: one that names
/// its event (`log::Line`) and numeric fields, for `--log-format=json`.
macro_rules! say {
    ($step:expr, $event:literal, { $($key:ident : $val:expr),* $(,)? }; $($arg:tt)*) => {
        $step.out.push($crate::supervisor::effect::Effect::Log(
            $crate::log::Line::new($event, format!($($arg)*))
                $(.set(stringify!($key), i64::try_from($val).unwrap_or(i64::MAX)))*
        ))
    };
    ($step:expr, $($arg:tt)*) => {
        $step.out.push($crate::supervisor::effect::Effect::Log(
            $crate::log::Line::new("log", format!($($arg)*)),
        ))
    };
}
pub(super) use say;

impl Step<'_> {
    fn event(&mut self, event: Event) {
        match event {
            Event::Start => self.start(),
            Event::Exited { pid, status } => self.exited(pid, status),
            Event::Remains { worker, pids } => self.remains(worker, &pids),
            Event::TreeGone { worker } => self.tree_gone(worker),
            Event::Ignored { sig, pid } => {
                say!(
                    self,
                    "signal-ignored", {signal: sig, sender: pid};
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
                place,
                tunables,
                spawned,
            } => self.spawned(place, tunables, spawned),
            Event::Probed { pid, probe } => self.probed(pid, probe),
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
            say!(self, "restart", {}; "received HUP, spawning a new worker");
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
            if let Some(canary) = self.s.canary_worker() {
                self.retire(canary);
            }
            self.s.roll = None;
            for slot in std::mem::take(&mut self.s.slots) {
                let starting = slot.starting.and_then(|a| a.worker);
                for worker in slot.serving.map(|s| s.worker).into_iter().chain(starting) {
                    self.retire(worker);
                }
            }
            self.out.push(Effect::Survey);
        }
        // As in the original, INT is passed on as TERM; the other stop signals become
        // --signal-on-term, as TERM does.
        let send = match sig == libc::SIGINT {
            true => Signal::term(),
            false => self.s.config.signal_on_term.clone(),
        };
        say!(
            self,
            "stop", {signal: sig};
            "received {}, sending {} to all workers:{}",
            signals::name(sig),
            send.name,
            self.old_pids()
        );
        self.signal_old(&send);
        for worker in self.s.leftovers.iter().map(|l| l.worker) {
            let signal = send.clone();
            self.out.push(Effect::SignalTree { worker, signal });
        }
    }

    /// A `--restart` client: a HUP, and a wait for its verdict. An `--upgrade`
    /// client: a USR2.
    fn request(&mut self, pid: Pid, from: Client, ask: Ask) {
        // A question, answered at once from the state, unlogged: a health probe asks
        // every few seconds.
        if let Ask::Status { json } = ask {
            return self.out.push(Effect::Status { to: from, json });
        }
        self.reply(&from, ACCEPTED);
        if ask == Ask::Upgrade {
            return self.upgrade(pid, Some(from));
        }
        say!(self, "restart-request", {sender: pid}; "received a restart request from pid {pid}");
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
        let known = self.s.origins.iter().position(|o| o.pid == pid);
        if let Some(origin) = known.map(|i| self.s.origins.swap_remove(i)) {
            if let Some(slot) = self.s.slots.get_mut(origin.slot as usize) {
                slot.last_exit = Some(status);
            }
        }
        if self.s.canary_worker().is_some_and(|w| w.pid == pid) {
            return self.canary_exited(pid, status);
        }
        let is = |w: &Worker| w.pid == pid;
        let starting = |slot: &Slot| {
            slot.starting
                .as_ref()
                .and_then(|a| a.worker)
                .is_some_and(|w| is(&w))
        };
        if let Some(i) = self.s.slots.iter().position(starting) {
            let mut generation = 0;
            if let Some(attempt) = &mut self.s.slots[i].starting {
                attempt.worker = None;
                generation = attempt.generation;
                attempt.probe = None;
            }
            say!(
                self,
                "start-failed", {generation: generation, worker: pid, status: status};
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
                say!(
                    self,
                    "worker-exited", {generation: worker.generation, worker: pid, status: status};
                    "old worker {pid} died, status:{status}"
                );
                self.write_status();
                return self.settle();
            }
            slot.refills = slot.refills.saturating_add(1);
            // The file never lists a dead worker for the interval a respawn takes.
            self.write_status();
            if self.canary_takes(i) {
                return say!(
                    self,
                    "worker {pid} died unexpectedly with status:{status}; the canary will \
                     take its slot"
                );
            }
            say!(
                self,
                "worker-died", {generation: worker.generation, worker: pid, status: status};
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
                    probe: None,
                });
                self.hint_if_daemonizing(pid, status);
                self.failed_start(i, &exit_text(status));
            } else {
                self.spawn(i, None, false);
            }
            return;
        }
        if let Some(old) = self.s.old.remove(&pid) {
            let generation = old.generation;
            match self.s.stopping() || !old.listed {
                true => say!(
                    self,
                    "worker-exited", {generation: generation, worker: pid, status: status};
                    "worker {pid} died, status:{status}"
                ),
                false => say!(
                    self,
                    "worker-exited", {generation: generation, worker: pid, status: status};
                    "old worker {pid} died, status:{status}"
                ),
            }
            self.write_status();
            self.settle();
        }
    }

    /// A worker is about to be reported exited, leaving processes of its tree running:
    /// they are told to stop as its generation was (`--signal-on-hup`, or
    /// `--signal-on-term` once stopping), and get SIGKILL when the worker would have
    /// (`--kill-timeout` after its own stop signal: the generation's time is the
    /// tree's), else after `--kill-timeout` (`STOP_GRACE` without) from now.
    fn remains(&mut self, worker: Pid, pids: &[Pid]) {
        let serving = self.s.serving().map(|(_, s)| s.worker);
        let starting = self.s.attempts().filter_map(|(_, a)| a.worker);
        let canary = self.s.canary_worker();
        let found = serving
            .chain(starting)
            .chain(canary)
            .find(|w| w.pid == worker);
        let generation = match (self.s.old.get(&worker), found) {
            (Some(old), _) => old.generation,
            (None, Some(w)) => w.generation,
            (None, None) => return,
        };
        let signal = match self.s.stopping() {
            true => self.s.config.signal_on_term.clone(),
            false => self.s.config.signal_on_hup.clone(),
        };
        let grace = self.s.config.kill_timeout.unwrap_or(STOP_GRACE);
        let pending = self.s.old.get(&worker).and_then(|old| old.kill);
        let kill = Some(pending.unwrap_or((self.now.after(grace), grace)));
        let left = Leftover {
            worker,
            generation,
            since: self.now,
            kill,
        };
        // A worker exits once: no entry of its own is there yet.
        self.s.leftovers.push(left);
        let pids: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
        say!(
            self,
            "tree-remains", {generation: generation, worker: worker};
            "worker {worker} (generation {generation}) exited, leaving processes {}; sending {}",
            pids.join(","),
            signal.name
        );
        self.out.push(Effect::SignalTree { worker, signal });
    }

    /// What an exited worker left running is gone: its generation is, if nothing else
    /// of it runs.
    fn tree_gone(&mut self, worker: Pid) {
        let Some(i) = self.s.leftovers.iter().position(|l| l.worker == worker) else {
            return;
        };
        let left = self.s.leftovers.remove(i);
        say!(
            self,
            "tree-gone", {generation: left.generation, worker: worker};
            "the processes worker {worker} (generation {}) left are gone",
            left.generation
        );
        if self.s.stopping() && self.s.old.is_empty() && self.s.leftovers.is_empty() {
            say!(self, "all-gone", {}; "no process of any generation is left");
        }
        self.settle();
    }

    /// One thing a worker (`pid`, through `sender`) said.
    fn notified(&mut self, pid: Pid, sender: Pid, said: Said) {
        if self.s.canary_worker().is_some_and(|w| w.pid == pid) {
            return self.canary_said(pid, sender, said);
        }
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
            (Said::Status(status), _, _) => {
                say!(self, "worker-status", {worker: pid}; "worker {pid} status: {status}")
            }
            (Said::Ready, Some(i), _) if config.ready == Ready::Notify => {
                let attempt = self.s.slots[i].starting.take().expect("a worker starting");
                if sender != pid {
                    say!(
                        self,
                        "worker-ready", {worker: pid, sender: sender};
                        "worker {pid} is ready (said pid {sender})"
                    );
                }
                if let Some(worker) = attempt.worker {
                    self.started(i, worker);
                }
            }
            (Said::ExtendTimeout(by), Some(i), _) if config.ready == Ready::Notify => {
                let ready_timeout = config.ready_timeout;
                let now = self.now;
                if let Some(attempt) = &mut self.s.slots[i].starting {
                    attempt.extend(ready_timeout, now, by);
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
        // Those due as the turn ends: one started meanwhile (a rolling restart's next)
        // waits for its spawn's answer.
        let due: Vec<usize> = self
            .s
            .attempts()
            .filter(|(_, a)| a.until <= now)
            .map(|(i, _)| i)
            .collect();
        for i in due {
            let Some(slot) = self.s.slots.get_mut(i) else {
                break;
            };
            let Some(attempt) = slot.starting.take_if(|a| a.until <= now) else {
                continue;
            };
            let waits_for_word = self.s.config.ready == Ready::Notify || attempt.probe.is_some();
            match attempt.worker {
                Some(worker) if waits_for_word => self.not_ready(i, worker, attempt),
                Some(worker) => self.started(i, worker),
                None => self.spawn(i, None, attempt.replacing),
            }
        }
        self.canary_tick();
        self.probe_if_due();
        if self.s.kill_old_at.is_some_and(|at| at <= now) {
            self.s.kill_old_at = None;
            self.kill_old_workers();
        }
        self.signal_due();
        self.kill_lingering();
        self.kill_leftovers();
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
        if !self.queued_restart() && self.s.auto_restart_at().is_some_and(|at| at <= now) {
            let interval = log::seconds(self.s.tunables.auto_restart.unwrap_or_default());
            match self.s.old.is_empty() {
                true => {
                    say!(self, "auto-restart", {}; "autorestart triggered (interval={interval})")
                }
                false => say!(
                    self,
                    "auto-restart", {};
                    "autorestart triggered (forced, interval={interval})"
                ),
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
        if self.s.phase == Phase::Stopping && self.s.old.is_empty() && self.s.leftovers.is_empty() {
            say!(self, "exiting", {}; "exiting");
            self.out.push(Effect::Exit);
        }
    }

    /// A HUP that came during the restart just ended: the restart it asked for.
    fn queued_restart(&mut self) -> bool {
        if self.s.phase != Phase::RestartQueued || self.s.restarting() {
            return false;
        }
        self.s.phase = Phase::Running;
        say!(self, "restart", {}; "received HUP, spawning a new worker");
        self.restart();
        true
    }

    /// `--ready=listening`: each starting worker's tree (the canary's too) is looked
    /// at when due, and the pause before its next look doubles.
    fn probe_if_due(&mut self) {
        let now = self.now;
        let canary = match self.s.roll.as_mut().map(|r| &mut r.canary) {
            Some(Canary::Starting(attempt)) => Some(attempt),
            _ => None,
        };
        let slots = self.s.slots.iter_mut().filter_map(|s| s.starting.as_mut());
        for attempt in slots.chain(canary) {
            let Attempt {
                worker: Some(worker),
                probe: Some(probe),
                ..
            } = attempt
            else {
                continue;
            };
            if probe.at > now {
                continue;
            }
            probe.at = now.after(probe.pause);
            probe.pause = (probe.pause * 2).min(PROBE_MAX);
            self.out.push(Effect::Probe { pid: worker.pid });
        }
    }

    /// What a look at worker `pid`'s tree found, if it is still starting.
    fn probed(&mut self, pid: Pid, probe: Probe) {
        let looked_at = |attempt: &Attempt| {
            attempt.probe.is_some() && attempt.worker.is_some_and(|w| w.pid == pid)
        };
        let place = match self.s.canary_attempt().is_some_and(looked_at) {
            true => Place::Canary,
            false => match self.s.attempts().find(|(_, a)| looked_at(a)) {
                Some((i, _)) => Place::Slot(i),
                None => return,
            },
        };
        match probe {
            Probe::NotYet => {}
            Probe::Waiting(how) => {
                say!(
                    self,
                    "worker-listening", {worker: pid};
                    "new worker {pid} waits for connections: {how}"
                );
                match place {
                    Place::Canary => self.canary_started(),
                    Place::Slot(i) => {
                        let attempt = self.s.slots[i].starting.take();
                        if let Some(worker) = attempt.and_then(|a| a.worker) {
                            self.started(i, worker);
                        }
                    }
                }
                // Answered after this turn's tick: a HUP held meanwhile is acted on now.
                self.queued_restart();
            }
            // What the original does, said once.
            Probe::Blind(why) => {
                let interval = self.s.config.interval;
                if let Some(attempt) = self.attempt_at(place) {
                    attempt.probe = None;
                    attempt.until = attempt.spawned_at.after(interval);
                }
                say!(
                    self,
                    "worker-blind", {worker: pid};
                    "cannot tell whether new worker {pid} waits for connections: {why}; it \
                     counts as started once it has run for --interval ({} secs)",
                    log::seconds(interval)
                );
            }
        }
    }

    /// Why a worker may not have been ready in time, and what to do about it.
    pub(super) fn not_ready_hint(&self) -> &'static str {
        match self.s.config.ready {
            Ready::Listening => NOT_LISTENING_HINT,
            _ => NOT_READY_HINT,
        }
    }

    // ------------------------------------------------------------ transitions

    /// The first generation: a worker in every slot.
    fn start(&mut self) {
        self.s.started_at = self.now;
        let workers = self.s.config.workers.max(1) as usize;
        self.s.slots = vec![Slot::default(); workers];
        self.spawn(0, None, false);
        let generation = self.s.generation;
        for i in 1..workers {
            self.spawn(i, Some(generation), false);
        }
    }

    /// A worker is tried in slot `i`, of `generation` (`None`: the next number, as
    /// every try takes but those a start or a restart starts together): the executor
    /// answers with `Event::Spawned`.
    pub(super) fn spawn(&mut self, i: usize, generation: Option<u64>, replacing: bool) {
        let attempt = self.attempt(generation, replacing);
        self.s.slots[i].starting = Some(attempt);
        self.out.push(Effect::Spawn {
            generation: self.s.generation,
            tunables: self.s.tunables,
            place: Place::Slot(i),
        });
    }

    /// A new attempt, of `generation` or of the next number.
    pub(super) fn attempt(&mut self, generation: Option<u64>, replacing: bool) -> Attempt {
        let generation = generation.unwrap_or(self.s.generation + 1);
        self.s.generation = self.s.generation.max(generation);
        Attempt {
            generation,
            worker: None,
            spawned_at: self.now,
            until: self.now,
            replacing,
            probe: None,
        }
    }

    fn spawned(&mut self, place: Place, tunables: Option<Tunables>, spawned: Spawned) {
        if let Some(tunables) = tunables {
            self.s.tunables = tunables;
        }
        let Some(generation) = self.attempt_at(place).map(|a| a.generation) else {
            return;
        };
        match (spawned, place) {
            (Spawned::NoChannel(e), Place::Canary) | (Spawned::Failed(e), Place::Canary) => {
                say!(self, "{e}");
                self.rollback(&format!("could not be spawned: {e}"));
            }
            (Spawned::NoChannel(e), Place::Slot(i)) => {
                say!(
                    self,
                    "spawn-failed", {generation: generation, slot: i + 1};
                    "failed to create a notification socket: {e}"
                );
                self.failed_start(i, &format!("no notification socket: {e}"));
            }
            (Spawned::Failed(e), Place::Slot(i)) => {
                let pause = self.pause_after(self.s.slots[i].failures.saturating_add(1));
                say!(
                    self,
                    "spawn-failed", {generation: generation, slot: i + 1};
                    "{e}; trying again in {} secs",
                    log::seconds(pause)
                );
                self.failed_start(i, "it could not be spawned");
            }
            (
                Spawned::Child {
                    pid,
                    exec_error,
                    unexecutable,
                    exe,
                },
                _,
            ) => {
                say!(
                    self,
                    "worker-spawned", {generation: generation, worker: pid, slot: place.slot() + 1};
                    "starting new worker {pid}"
                );
                if let Some(error) = exec_error {
                    // Unlike a later generation's (a bad deploy, while the old one
                    // serves on), the first's is a mistake in the command line: said
                    // at once, not retried forever.
                    if unexecutable && generation == 1 {
                        self.s.phase = Phase::GaveUp;
                        self.s.slots.clear();
                        self.s.origins.clear();
                        return self.out.push(Effect::GiveUp(error));
                    }
                    say!(self, "exec-failed", {generation: generation, worker: pid}; "{error}");
                }
                self.s.origins.push(Origin {
                    pid,
                    slot: place.slot() as u32,
                    spawned_at: self.now,
                    retired_at: None,
                    exe,
                });
                let config = &self.s.config;
                let wait = match config.ready {
                    Ready::Notify | Ready::Listening => config.ready_timeout,
                    Ready::Interval => config.interval,
                };
                let probe = (config.ready == Ready::Listening).then(|| Probing {
                    at: self.now.after(PROBE_FIRST),
                    pause: PROBE_FIRST,
                });
                if let Some(attempt) = self.attempt_at(place) {
                    attempt.probe = probe;
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
    /// the slot's serving one (`roll::install`).
    fn started(&mut self, i: usize, worker: Worker) {
        let serving = Serving {
            worker,
            started_at: self.now,
            watchdog_at: self.s.config.watchdog.map(|w| self.now.after(w)),
        };
        self.install(i, serving);
    }

    /// `--ready=notify` or `--ready=listening`: the new worker of slot `i` did not
    /// say `READY=1` (or wait for connections) within `--ready-timeout`. It is stopped
    /// (TERM, then KILL if it lingers) and counts as a failed start, while the old
    /// generation goes on serving.
    fn not_ready(&mut self, i: usize, worker: Worker, attempt: Attempt) {
        let timeout = log::seconds(self.s.config.ready_timeout);
        say!(
            self,
            "worker-not-ready", {generation: worker.generation, worker: worker.pid};
            "new worker {} was not ready within {timeout} secs, stopping it",
            worker.pid
        );
        // The most common cause: a server that does not speak sd_notify at all (or
        // waits in a way /proc does not show).
        let hint = self.not_ready_hint();
        say!(self, "hint", {generation: worker.generation}; "{hint}");
        self.stop_now(worker, Signal::term(), false);
        // The pause before the next try counts from now, not from the spawn.
        self.s.slots[i].starting = Some(Attempt {
            worker: None,
            spawned_at: self.now,
            probe: None,
            ..attempt
        });
        self.failed_start(i, &format!("not ready within {timeout} secs ({hint})"));
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
            "worker-hung", {generation: worker.generation, worker: worker.pid};
            "worker {} {why}, sending ABRT and restarting",
            worker.pid
        );
        let abrt = Signal::parse("ABRT").expect("a known signal name");
        self.stop_now(worker, abrt, true);
        self.write_status();
        if self.canary_takes(i) {
            return;
        }
        let slot = &mut self.s.slots[i];
        slot.failures = slot.failures_before_start;
        slot.refills = slot.refills.saturating_add(1);
        slot.starting = Some(Attempt {
            generation: worker.generation,
            worker: None,
            spawned_at: self.now,
            until: self.now,
            replacing: false,
            probe: None,
        });
        self.failed_start(i, &format!("worker {} {why}", worker.pid));
    }

    /// Signals one worker to stop now, outside a restart's order, with a KILL deadline.
    pub(super) fn stop_now(&mut self, worker: Worker, signal: Signal, listed: bool) {
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
        self.retired(worker.pid);
    }

    /// Slot `i`'s worker died before it had started, or could not be spawned: the next
    /// try comes after the interval, never sooner than `RETRY_FLOOR`, doubling up to
    /// `--backoff` while the failures in that slot go on.
    pub(super) fn failed_start(&mut self, i: usize, why: &str) {
        let Some(attempt) = self.slot_attempt(i) else {
            return;
        };
        let (generation, replacing) = (attempt.generation, attempt.replacing);
        if std::mem::take(&mut self.s.launcher) {
            let why = why.to_string();
            self.out
                .push(Effect::Launcher(Report::Failed { generation, why }));
        }
        // A refill's failure during a restart is not the restart's.
        if replacing || self.s.roll.is_none() {
            let text = format!("FAILED generation {generation}: {why}");
            self.verdict(generation, &text);
            self.outcome(generation, Some(why));
        }
        if let Some(roll) = self.s.roll.as_mut().filter(|r| r.reloading && replacing) {
            roll.reloading = false;
            let serving = self.serves_on();
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
                "backoff", {generation: generation, slot: i + 1, failures: failures};
                "failed starts in a row: {failures}; trying again in {} secs",
                log::seconds(delay)
            );
        }
    }

    /// What serves on after a failed restart, for the service manager.
    pub(super) fn serves_on(&self) -> String {
        let listed = self.s.old.iter().filter(|(_, old)| old.listed);
        let listed = listed.map(|(&pid, old)| (pid, old.generation));
        let serving = self
            .s
            .serving()
            .map(|(_, s)| (s.worker.pid, s.worker.generation));
        match listed.chain(serving).max() {
            Some((pid, generation)) => format!("generation {generation} serves on (worker {pid})"),
            None => "no generation serves".into(),
        }
    }

    fn slot_attempt(&self, i: usize) -> Option<&Attempt> {
        self.s.slots.get(i).and_then(|slot| slot.starting.as_ref())
    }

    fn attempt_at(&mut self, place: Place) -> Option<&mut Attempt> {
        match place {
            Place::Slot(i) => self.s.slots.get_mut(i)?.starting.as_mut(),
            Place::Canary => match &mut self.s.roll.as_mut()?.canary {
                Canary::Starting(attempt) => Some(attempt),
                _ => None,
            },
        }
    }

    /// The pause after `failures` (at least 1) failed starts in a row.
    pub(super) fn pause_after(&self, failures: u32) -> Duration {
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
    pub(super) fn retry_base(&self) -> Duration {
        self.s.config.interval.max(RETRY_FLOOR)
    }

    pub(super) fn kill_old_workers(&mut self) {
        say!(self, "old-workers-signalled", {}; "killing old workers");
        if !self.s.old.is_empty() {
            self.out.push(Effect::Survey);
        }
        let signal = self.s.config.signal_on_hup.clone();
        self.signal_old(&signal);
    }

    /// SIGKILL for the signalled workers still running at their deadline
    /// (`--kill-timeout`, or `STOP_GRACE` for one that failed to start or hung).
    fn kill_lingering(&mut self) {
        let now = self.now;
        let kill = Signal::kill();
        for (&pid, old) in self.s.old.iter_mut() {
            let Some((_, grace)) = old.kill.filter(|k| k.0 <= now) else {
                continue;
            };
            old.kill = None;
            let text = format!(
                "worker {pid} still running {} secs after it was told to stop, sending KILL",
                log::seconds(grace)
            );
            let line = Line::new("worker-killed", text).set("worker", pid.into());
            self.out
                .push(Effect::Log(line.set("generation", old.generation as i64)));
            self.out.push(Effect::Signal {
                pid,
                signal: kill.clone(),
            });
            // With everything it started: its generation had its time.
            self.out.push(Effect::SignalTree {
                worker: pid,
                signal: kill.clone(),
            });
        }
    }

    /// SIGKILL for what exited workers left, still running at its deadline.
    fn kill_leftovers(&mut self) {
        let now = self.now;
        for left in self.s.leftovers.iter_mut() {
            let worker = left.worker;
            let Some((_, grace)) = left.kill.filter(|k| k.0 <= now) else {
                continue;
            };
            left.kill = None;
            let text = format!(
                "the processes worker {worker} (generation {}) left are still running {} secs \
                 after the stop signal, sending KILL",
                left.generation,
                log::seconds(grace)
            );
            let line = Line::new("tree-killed", text).set("worker", worker.into());
            self.out
                .push(Effect::Log(line.set("generation", left.generation as i64)));
            self.out.push(Effect::SignalTree {
                worker,
                signal: Signal::kill(),
            });
        }
    }

    /// Moves a worker to the old ones, which are signalled and waited for.
    pub(super) fn retire(&mut self, worker: Worker) {
        let retiring = Retiring {
            generation: worker.generation,
            listed: true,
            kill: None,
            signal_at: None,
        };
        self.s.old.insert(worker.pid, retiring);
        self.retired(worker.pid);
    }

    /// A restart succeeded once its generation runs alone: every slot's worker has
    /// started and no older worker is left.
    pub(super) fn settle(&mut self) {
        if !self.s.settled() || self.s.roll.is_some() {
            return;
        }
        let Some(generation) = self.s.serving().map(|(_, s)| s.worker.generation).min() else {
            return;
        };
        // Not while any process of an older generation runs: a listed old worker, one
        // that never started but was not yet reaped, or what one left behind.
        let older = |g: u64| g < generation;
        let old_left = self
            .s
            .old
            .values()
            .any(|old| old.listed || older(old.generation));
        let leftovers = self.s.leftovers.iter().any(|l| older(l.generation));
        if !old_left && !leftovers {
            self.verdict(generation, &format!("OK generation {generation}"));
            self.outcome(generation, None);
        }
    }

    /// For `--status`: since when the worker `pid` is an old one.
    pub(super) fn retired(&mut self, pid: Pid) {
        let now = self.now;
        if let Some(origin) = self.s.origins.iter_mut().find(|o| o.pid == pid) {
            origin.retired_at = Some(now);
        }
    }

    /// A try of the last restart has its outcome: `why` it failed, or `None`.
    pub(super) fn outcome(&mut self, generation: u64, why: Option<&str>) {
        let now = self.now;
        if let Some(last) = self.s.last_restart.as_mut() {
            let known = last.outcome.as_ref().is_some_and(|o| o.1 == generation);
            if generation > last.after && !(known && why.is_none()) {
                last.outcome = Some((now, generation, why.map(str::to_string)));
            }
        }
    }

    /// Answers the clients waiting for a generation up to `generation`.
    pub(super) fn verdict(&mut self, generation: u64, text: &str) {
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

    pub(super) fn old_pids(&self) -> String {
        let pids: Vec<String> = self.s.old.keys().map(|pid| pid.to_string()).collect();
        pids.join(",")
    }

    pub(super) fn write_status(&mut self) {
        let mut workers: Vec<(u64, Pid)> = self
            .s
            .old
            .iter()
            .filter(|(_, old)| old.listed)
            .map(|(&pid, old)| (old.generation, pid))
            .collect();
        let serving = self.s.serving().map(|(_, s)| s.worker);
        let canary = match self.s.canary() {
            Some(Canary::Trial { serving, .. }) => Some(serving.worker),
            _ => None,
        };
        workers.extend(serving.chain(canary).map(|w| (w.generation, w.pid)));
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
    pub(super) fn hint_if_daemonizing(&mut self, pid: Pid, status: Status) {
        if status == 0 {
            say!(
                self,
                "hint", {worker: pid};
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
            say!(self, "upgrade-refused", {sender: pid}; "{who}, but start_server is stopping");
            return self.answer(client.as_slice(), STOPPING);
        }
        if let Some(upgrade) = &mut self.s.upgrade {
            upgrade.clients.extend(client);
            return say!(self, "upgrade", {sender: pid}; "{who}, joining the upgrade under way");
        }
        let Some(exe) = &self.s.config.exe else {
            say!(
                self,
                "upgrade-refused", {sender: pid};
                "{who}, but the path of start_server's binary was not known at start"
            );
            let why = "FAILED the path of start_server's binary is unknown";
            return self.answer(client.as_slice(), why);
        };
        say!(self, "upgrade", {sender: pid}; "{who}, checking {}", exe.display());
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
                say!(self, "upgraded", {}; "upgraded from {from} to {VERSION} in {took} ms");
                let text = format!("OK upgraded from {from} to {VERSION} in {took} ms");
                self.answer(&clients, &text);
            }
            Some(why) => {
                say!(self, "upgrade-refused", {}; "back to {VERSION}: {why}");
                self.answer(&clients, &format!("FAILED {why}"));
            }
        }
    }

    fn refuse(&mut self, clients: &[Client], why: &str) {
        let exe = match &self.s.config.exe {
            Some(exe) => exe.display().to_string(),
            None => "?".into(),
        };
        say!(self, "upgrade-refused", {}; "not upgrading to {exe}: {why}");
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
pub(super) fn exit_text(status: Status) -> String {
    if libc::WIFSIGNALED(status) {
        format!("killed by SIG{}", signals::name(libc::WTERMSIG(status)))
    } else {
        format!("exited with status {}", libc::WEXITSTATUS(status))
    }
}
