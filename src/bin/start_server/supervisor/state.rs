//! What the supervisor knows, as plain data: its settings, the generations and their
//! workers, what is under way (a restart, a stop, an upgrade), the `--restart` clients
//! waiting, the failures in a row. No descriptor, no clock: `step` changes it, the
//! executor reads it, and an upgrade in place hands it whole to the next image
//! (`record`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::envdir::Tunables;
use crate::log::Format;
use crate::signals::Signal;
use crate::sys::Pid;

/// CLOCK_MONOTONIC in microseconds: the supervisor's time, passed to `step` by the
/// executor (or fabricated by the simulation), and the same across execve.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mono(pub u64);

impl Mono {
    pub fn after(self, d: Duration) -> Mono {
        Mono(
            self.0
                .saturating_add(d.as_micros().min(u64::MAX.into()) as u64),
        )
    }

    /// How long from `self` to `later` (zero if it has passed).
    pub fn until(self, later: Mono) -> Duration {
        Duration::from_micros(later.0.saturating_sub(self.0))
    }
}

/// Where a `--restart` or `--upgrade` client waits for its answer: its socket address,
/// in the kernel's format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Client(pub Vec<u8>);

/// The settings the supervisor decides with (the command line's).
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub interval: Duration,
    pub signal_on_hup: Signal,
    pub signal_on_term: Signal,
    /// `--kill-timeout`: how long a signalled worker may take to exit before SIGKILL.
    pub kill_timeout: Option<Duration>,
    /// `--backoff`: the longest pause between failed starts, which double up to it.
    pub backoff: Option<Duration>,
    /// `--ready`: when a new worker has started.
    pub ready: Ready,
    /// `--ready-timeout`: how long a worker may take to say `READY=1` (or to wait for
    /// connections).
    pub ready_timeout: Duration,
    /// `--watchdog`: how long a started worker may go without saying `WATCHDOG=1`.
    pub watchdog: Option<Duration>,
    /// The path start_server was started by (`AT_EXECFN`, made absolute), which an
    /// upgrade opens, following a symbolic link then; `None` if it was not known.
    pub exe: Option<PathBuf>,
    /// `--workers`: how many workers a generation has (at least 1).
    pub workers: u32,
    /// `--workers` was given: each worker is told its slot (`SERVER_STARTER_WORKER`).
    pub name_slots: bool,
    /// `--log-format`, kept for the next image of an upgrade in place, which does not
    /// read the command line.
    pub log_format: Format,
    /// `--rolling`: at most this many new workers starting at once in a restart, each
    /// retiring one old worker once it has started.
    pub rolling: Option<u32>,
    /// `--canary`: a restart first starts one new worker, which must serve this long
    /// beside the old generation before the rest follows.
    pub canary: Option<Duration>,
}

/// `--ready`: when a new worker has started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ready {
    /// It is still alive after `--interval` (the original's rule).
    Interval,
    /// It said `READY=1`.
    Notify,
    /// It, or a process below it, waits for connections on a listener (`listening`).
    Listening,
}

impl Ready {
    /// As `--ready=` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Ready::Interval => "interval",
            Ready::Notify => "notify",
            Ready::Listening => "listening",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Worker {
    pub pid: Pid,
    pub generation: u64,
    pub spawned_at: Mono,
}

/// One of the `--workers` places of a generation (`SERVER_STARTER_WORKER`, 1..N), each
/// supervised alone: the worker serving in it, of whatever generation, and the one
/// being started for it (its first, a replacement in a restart, or a refill after the
/// serving one died).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Slot {
    pub serving: Option<Serving>,
    pub starting: Option<Attempt>,
    /// Failed starts in a row in this slot, for the pause before its next try.
    pub failures: u32,
    /// `failures` before the serving worker's start reset it: at an `--interval` below
    /// `RETRY_FLOOR`, a worker declared started that dies within a retry pause is a
    /// failed start after all, and the count goes on from there.
    pub failures_before_start: u32,
    /// How many times the slot was refilled (its started worker died or hung and was
    /// replaced), and the last exit status of a worker in it (raw), for `--status`.
    pub refills: u32,
    pub last_exit: Option<i32>,
}

/// A worker being started. It has *started* when it is still alive after
/// `--interval`, or, with `--ready=notify`, when it says `READY=1`. If it dies first
/// (or is not ready in time), it is retried in its slot, paced.
#[derive(Clone, Debug, PartialEq)]
pub struct Attempt {
    /// The generation it is (to be) spawned as.
    pub generation: u64,
    /// The spawned worker; `None` once it has died (or could not be forked): the next
    /// try is at `until`.
    pub worker: Option<Worker>,
    /// When the last try was made, from which the pause before the next is counted.
    pub spawned_at: Mono,
    /// When the worker counts as started, or when to try again.
    pub until: Mono,
    /// Whether it is part of a restart, which retires older workers once it has
    /// started.
    pub replacing: bool,
    /// `--ready=listening`: when the worker's tree is looked at next; `None` with no
    /// worker, under another `--ready`, or once /proc was found unable to tell.
    pub probe: Option<Probing>,
}

/// The looks at a starting worker's tree (`--ready=listening`): the next, and the
/// pause after it, which doubles from `step::PROBE_FIRST` up to `step::PROBE_MAX`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Probing {
    pub at: Mono,
    pub pause: Duration,
}

impl Attempt {
    /// `EXTEND_TIMEOUT_USEC`: as systemd does, the last extension counts, and the
    /// deadline is never sooner than `--ready-timeout` allowed.
    pub fn extend(&mut self, ready_timeout: Duration, now: Mono, by: Duration) {
        self.until = self.spawned_at.after(ready_timeout).max(now.after(by));
    }
}

/// A started worker.
#[derive(Clone, Debug, PartialEq)]
pub struct Serving {
    pub worker: Worker,
    pub started_at: Mono,
    /// `--watchdog`: it is hung unless it says `WATCHDOG=1` before this; `None` once
    /// its replacement is being started (as an old worker, it is no longer watched).
    pub watchdog_at: Option<Mono>,
}

/// A restart under way: a new generation rolled out over the slots, all at once (the
/// old workers signalled once all have started) or `--rolling` at a time (each
/// retiring one), after a `--canary` if asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct Roll {
    /// The generation the restart started; a worker retried after a failed start takes
    /// a number of its own.
    pub generation: u64,
    /// The service manager was told of this restart, and not yet of its outcome.
    pub reloading: bool,
    pub canary: Canary,
}

/// `--canary`: where the restart's first new worker is in its trial. It is no slot's
/// yet: the old worker of slot 1 serves on beside it, and is replaced by it only once
/// it has passed.
#[derive(Clone, Debug, PartialEq)]
pub enum Canary {
    /// No canary, or it passed: the rest of the generation follows.
    Passed,
    /// Being started, beside the whole old generation.
    Starting(Attempt),
    /// Started: it serves beside the old generation until `until`, then takes slot 1
    /// and the rest follows; if it fails before, the restart is rolled back.
    Trial { serving: Serving, until: Mono },
}

/// Where a worker being started goes: a slot (0-based), or the canary's trial (slot
/// 1's worker to be).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    Slot(usize),
    Canary,
}

impl Place {
    /// The slot (0-based) the worker is told (`SERVER_STARTER_WORKER`, 1-based).
    pub fn slot(self) -> usize {
        match self {
            Place::Slot(i) => i,
            Place::Canary => 0,
        }
    }
}

/// A worker of an older generation (or any worker, once stopping): signalled to stop,
/// or about to be (`kill_old_at`, `signal_at`), and waited for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Retiring {
    pub generation: u64,
    /// Whether the status file lists it: not a worker that never became ready.
    pub listed: bool,
    /// When it gets SIGKILL, and the grace it had since its stop signal; `None` until
    /// it has been signalled (or with no `--kill-timeout`).
    pub kill: Option<(Mono, Duration)>,
    /// `--rolling`: when it gets `--signal-on-hup` (after `--kill-old-delay`), its
    /// replacement having started; `None` once signalled, or in a whole restart
    /// (`kill_old_at`).
    pub signal_at: Option<Mono>,
}

/// The processes a worker left running when it exited (orphans, a `setsid` child, a
/// double-forked daemon): still its generation's, so signalled to stop as soon as the
/// worker is gone, then killed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Leftover {
    /// The worker that left them.
    pub worker: Pid,
    pub generation: u64,
    /// When the worker exited (`--status`).
    pub since: Mono,
    /// When they get SIGKILL, and the grace they had; `None` once they have.
    pub kill: Option<(Mono, Duration)>,
}

/// What is under way besides serving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// A HUP arrived while a restart was under way: one more restart follows it.
    RestartQueued,
    /// TERM or INT arrived: every worker has been signalled; exit once all are gone.
    Stopping,
    /// Generation 1's command cannot be executed: start_server gives up at the end of
    /// this turn, with an error.
    GaveUp,
}

/// A `--restart` client waiting for the verdict on a restart that began after it
/// asked: the first generation above `after` to start, or to fail.
#[derive(Clone, Debug, PartialEq)]
pub struct Waiter {
    pub to: Client,
    pub after: u64,
}

/// An upgrade in place under way (USR2, or `--upgrade` clients).
#[derive(Clone, Debug, PartialEq)]
pub struct Upgrade {
    /// When it was asked for.
    pub began: Mono,
    /// The `--upgrade` clients waiting for the outcome.
    pub clients: Vec<Client>,
    pub phase: UpgradePhase,
}

#[derive(Clone, Debug, PartialEq)]
pub enum UpgradePhase {
    /// The new binary is run as `--upgrade-check`; it gets SIGKILL at `deadline`
    /// (`None` once it has).
    Checking { deadline: Option<Mono> },
    /// It passed, saying its version: executed at the end of this turn of the loop.
    Passed { version: String },
    /// Being executed: the state is handed over as it is now.
    Executing,
}

/// Where a worker came from, for `--status`: its slot (0-based), when it was
/// spawned, and the file it was executed from.
#[derive(Clone, Debug, PartialEq)]
pub struct Origin {
    pub pid: Pid,
    pub slot: u32,
    pub spawned_at: Mono,
    /// When it became an old worker (replaced, or told to stop).
    pub retired_at: Option<Mono>,
    pub exe: Option<Exe>,
}

/// The file a worker was executed from, as it was at the spawn: the path (the command's
/// program, found through PATH), and the file's identity then, to tell whether what
/// is at the path now is another build.
#[derive(Clone, Debug, PartialEq)]
pub struct Exe {
    pub path: PathBuf,
    pub file: Option<FileId>,
}

/// A file's identity: device, inode, modification time (nanoseconds, as bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    pub mtime: u64,
}

/// The last restart (HUP, `--restart`, auto-restart), for `--status`.
#[derive(Clone, Debug, PartialEq)]
pub struct LastRestart {
    pub began: Mono,
    /// The last generation given out when it began: the restart's tries are newer.
    pub after: u64,
    /// How its last try went, once one has: when, which generation, and why it failed
    /// (`None`: it started).
    pub outcome: Option<(Mono, u64, Option<String>)>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct State {
    pub config: Config,
    /// What the environment (and --envdir) said at the last spawn.
    pub tunables: Tunables,
    /// The last generation number given out; every spawn attempt takes the next one.
    pub generation: u64,
    /// The workers, slot 1..N at 0..N-1 (empty once stopping, or given up).
    pub slots: Vec<Slot>,
    /// Workers leaving: of older generations, or failed, or every one once stopping.
    pub old: BTreeMap<Pid, Retiring>,
    /// What exited workers left running: a generation is gone only once its whole
    /// process tree is.
    pub leftovers: Vec<Leftover>,
    /// When to signal the old workers, during `--kill-old-delay`.
    pub kill_old_at: Option<Mono>,
    pub phase: Phase,
    /// The restart under way, until every slot's new worker has started.
    pub roll: Option<Roll>,
    pub waiters: Vec<Waiter>,
    pub upgrade: Option<Upgrade>,
    /// When start_server started (the first image's start, across upgrades).
    pub started_at: Mono,
    pub last_restart: Option<LastRestart>,
    /// Every worker's origin, as long as it is waited for.
    pub origins: Vec<Origin>,
    /// `--daemonize`'s launcher waits to hear how generation 1 went (its pipe does
    /// not cross an upgrade's exec).
    pub launcher: bool,
}

impl State {
    pub fn new(config: Config, tunables: Tunables) -> State {
        State {
            config,
            tunables,
            generation: 0,
            slots: Vec::new(),
            old: BTreeMap::new(),
            leftovers: Vec::new(),
            kill_old_at: None,
            phase: Phase::Running,
            roll: None,
            waiters: Vec::new(),
            upgrade: None,
            started_at: Mono::default(),
            last_restart: None,
            origins: Vec::new(),
            launcher: false,
        }
    }

    pub fn origin(&self, pid: Pid) -> Option<&Origin> {
        self.origins.iter().find(|o| o.pid == pid)
    }

    /// The workers being started, with their slots (0-based).
    pub fn attempts(&self) -> impl Iterator<Item = (usize, &Attempt)> {
        let slots = self.slots.iter().enumerate();
        slots.filter_map(|(i, slot)| slot.starting.as_ref().map(|a| (i, a)))
    }

    /// The started workers, with their slots (0-based).
    pub fn serving(&self) -> impl Iterator<Item = (usize, &Serving)> {
        let slots = self.slots.iter().enumerate();
        slots.filter_map(|(i, slot)| slot.serving.as_ref().map(|s| (i, s)))
    }

    /// The canary, being started or on trial, if any.
    pub fn canary(&self) -> Option<&Canary> {
        self.roll.as_ref().map(|r| &r.canary)
    }

    /// The canary's attempt, while it is being started.
    pub fn canary_attempt(&self) -> Option<&Attempt> {
        match self.canary()? {
            Canary::Starting(attempt) => Some(attempt),
            _ => None,
        }
    }

    /// The canary's worker, if one runs.
    pub fn canary_worker(&self) -> Option<Worker> {
        match self.canary()? {
            Canary::Passed => None,
            Canary::Starting(attempt) => attempt.worker,
            Canary::Trial { serving, .. } => Some(serving.worker),
        }
    }

    /// Every slot has a started worker and none is being started: the generation
    /// runs whole.
    pub fn settled(&self) -> bool {
        !self.slots.is_empty()
            && self
                .slots
                .iter()
                .all(|s| s.serving.is_some() && s.starting.is_none())
    }

    pub fn stopping(&self) -> bool {
        matches!(self.phase, Phase::Stopping | Phase::GaveUp)
    }

    /// A restart is under way: a worker is being started, or old workers are about to
    /// be signalled.
    pub fn restarting(&self) -> bool {
        self.attempts().next().is_some()
            || self.roll.is_some()
            || self.kill_old_at.is_some()
            || self.old.values().any(|o| o.signal_at.is_some())
    }

    /// With auto-restart on, when the serving workers are due for replacement: once
    /// the interval has passed since the oldest started and no old worker remains, or
    /// at twice the interval anyway. (The original checks every second; this is a timer
    /// at the exact moment.)
    pub fn auto_restart_at(&self) -> Option<Mono> {
        let interval = self.tunables.auto_restart?;
        if self.stopping() || self.restarting() || !self.settled() {
            return None;
        }
        let started_at = self.serving().map(|(_, s)| s.started_at).min()?;
        Some(match self.old.is_empty() {
            true => started_at.after(interval),
            false => started_at.after(interval * 2),
        })
    }

    /// The one deadline the event loop sleeps until, if any: with none, it sleeps until
    /// an event comes.
    pub fn next_deadline(&self) -> Option<Mono> {
        let attempt = self.attempts().map(|(_, a)| a.until).min();
        let probe = self
            .attempts()
            .filter_map(|(_, a)| a.probe)
            .map(|p| p.at)
            .min();
        let watchdog = self.serving().filter_map(|(_, s)| s.watchdog_at).min();
        let kill = self.old.values().filter_map(|o| o.kill.map(|k| k.0));
        let leftover = self.leftovers.iter().filter_map(|l| l.kill.map(|k| k.0));
        let kill = kill.chain(leftover).min();
        let signal = self.old.values().filter_map(|o| o.signal_at).min();
        let canary = match self.canary() {
            Some(Canary::Starting(attempt)) => {
                let probe = attempt.probe.map(|p| p.at);
                probe.into_iter().chain([attempt.until]).min()
            }
            Some(Canary::Trial { serving, until }) => {
                let at = serving.watchdog_at.into_iter().chain([*until]);
                at.min()
            }
            _ => None,
        };
        let check = match &self.upgrade {
            Some(Upgrade {
                phase: UpgradePhase::Checking { deadline },
                ..
            }) => *deadline,
            _ => None,
        };
        [
            attempt,
            probe,
            self.kill_old_at,
            self.auto_restart_at(),
            kill,
            signal,
            watchdog,
            canary,
            check,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}
