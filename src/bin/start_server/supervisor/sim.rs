//! Deterministic simulation of the supervisor's core, as FoundationDB and TigerBeetle
//! test theirs: a seeded world (workers that get ready, crash, hang, ignore TERM;
//! forks that fail; upgrade checks that pass, fail or hang; execs that fail or
//! succeed; HUP, TERM, INT, USR1, USR2, stray signals, `--restart` and `--upgrade`
//! requests at any moment; time jumping to the next deadline) played through `step`,
//! with the invariants checked after every event. A failure names its seed;
//! `SIM_SEED=N cargo test --bin start_server simulation` replays it exactly, and
//! `SIM_RUNS` sets how many seeds are played.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::control_socket::{Ask, ACCEPTED};
use crate::envdir::Tunables;
use crate::listening::Probe;
use crate::log::Format;
use crate::notify::Said;
use crate::signals::Signal;
use crate::sys::Pid;
use crate::upgrade::state::{Reader, Writer};
use crate::upgrade::{check, VERSION};

use super::effect::{Effect, Spawned, Status};
use super::event::Event;
use super::report;
use super::state::{
    Canary, Client, Config, Exe, FileId, Mono, Phase, Place, Ready, State, UpgradePhase,
};
use super::step::{step, RETRY_FLOOR};

/// Events per seed (at most: a stop may end it sooner), and in all.
const STEPS: usize = 2_000;
const TOTAL: usize = 200_000;

/// The events a failure's report shows.
const SIM_TRACE: usize = 140;

/// splitmix64: small, fast, and the same sequence for the same seed everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True `per_mille` times in a thousand.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }

    fn millis(&mut self, max: u64) -> Duration {
        Duration::from_millis(self.below(max + 1))
    }

    fn pick<T: Clone>(&mut self, of: &[T]) -> T {
        of[self.below(of.len() as u64) as usize].clone()
    }
}

/// A simulated child of start_server's: a worker.
struct Proc {
    generation: u64,
    /// It says READY=1 then (with --ready=notify).
    ready_at: Option<Mono>,
    /// It waits for connections from then on (with --ready=listening); or /proc cannot
    /// tell (`blind`).
    listens_at: Option<Mono>,
    blind: bool,
    /// A look at its tree found it waiting (or blind): it may be declared started.
    seen_waiting: bool,
    /// It exits then, with that status; until reaped, it is still a child.
    exit_at: Option<(Mono, Status)>,
    /// It exits soon after a stop signal; if not, only KILL ends it.
    obeys: bool,
    /// With --watchdog: it says WATCHDOG=1 then, unless it hangs.
    ping_at: Option<Mono>,
    hangs: bool,
    /// It had a signal since the stop began.
    signalled_since_stop: bool,
    /// It had any signal.
    told: bool,
}

/// What a worker left running when it exited (orphans, a `setsid` child): it exits
/// by itself then, or when signalled if it obeys, or at SIGKILL.
struct Left {
    generation: u64,
    exit_at: Option<Mono>,
    obeys: bool,
}

/// The upgrade check, running.
struct CheckProc {
    exits_at: Mono,
    verdict: Result<String, String>,
}

/// The simulated world, and what it has seen.
struct World {
    rng: Rng,
    /// A started worker died or was found hung since the last restart began: fewer
    /// than N serve, not by start_server's doing.
    degraded: bool,
    now: Mono,
    procs: BTreeMap<Pid, Proc>,
    /// What exited workers left running, by the worker's pid.
    left: BTreeMap<Pid, Left>,
    /// Workers killed with all they started: they leave nothing.
    tree_killed: BTreeSet<Pid>,
    next_pid: Pid,
    check: Option<CheckProc>,
    /// Children nothing waits for (a forgotten check): their exits come all the same.
    orphans: Vec<(Pid, Mono)>,
    /// The verdicts each client (`--restart`'s, `--upgrade`'s) got, ACCEPTED aside,
    /// and the answers each `--status` client got.
    replies: BTreeMap<Vec<u8>, Vec<String>>,
    clients: BTreeSet<Vec<u8>>,
    /// `--status` clients asking in this event, answered within it.
    asking: BTreeSet<Vec<u8>>,
    next_client: u32,
    /// The newest generation seen started (serving, or listed in the status file).
    max_started: u64,
    stop_at: Option<Mono>,
    exited: bool,
    upgrades: u32,
    /// What `--daemonize`'s launcher was told, and whether start_server gave up.
    reports: u32,
    gave_up: bool,
    /// When the last worker was spawned, by slot.
    last_spawn: BTreeMap<usize, Mono>,
    /// A deadline already due at the end of the last turn.
    due: Option<(Mono, State)>,
    /// Events fed to `step` from outside it (its answers to effects aside).
    steps: usize,
    /// The last events, for the report of a failure.
    trace: Vec<String>,
}

fn config(rng: &mut Rng) -> (Config, Tunables) {
    let secs = |s: u64| Duration::from_millis(s);
    let config = Config {
        interval: rng.pick(&[secs(0), secs(50), secs(1000), secs(3000)]),
        // Told apart from the stop signals, so that the order of a restart shows.
        signal_on_hup: Signal::parse("QUIT").unwrap(),
        signal_on_term: Signal::term(),
        kill_timeout: rng.pick(&[None, Some(secs(3000))]),
        backoff: rng.pick(&[None, Some(secs(10_000))]),
        ready: rng.pick(&[Ready::Interval, Ready::Notify, Ready::Listening]),
        ready_timeout: rng.pick(&[secs(1000), secs(5000)]),
        watchdog: rng.pick(&[None, Some(secs(2000))]),
        exe: rng
            .pick(&[true, true, false])
            .then(|| "/sim/start_server".into()),
        workers: 1 + rng.below(4) as u32,
        name_slots: rng.chance(500),
        log_format: rng.pick(&[Format::Plain, Format::Timestamp, Format::Json]),
        rolling: rng.pick(&[None, None, Some(1), Some(2)]),
        canary: rng.pick(&[None, None, Some(secs(2000))]),
    };
    let tunables = Tunables {
        auto_restart: rng.pick(&[None, Some(secs(30_000))]),
        kill_old_delay: rng.pick(&[secs(0), secs(2000)]),
    };
    (config, tunables)
}

/// Every worker the state waits for, with its generation.
fn workers(state: &State) -> BTreeMap<Pid, u64> {
    let starting = state.attempts().filter_map(|(_, a)| a.worker);
    let serving = state.serving().map(|(_, s)| s.worker);
    let canary = state.canary_worker();
    let newest = starting.chain(serving).chain(canary);
    let newest = newest.map(|w| (w.pid, w.generation));
    let old = state.old.iter().map(|(&pid, old)| (pid, old.generation));
    let all: Vec<(Pid, u64)> = newest.chain(old).collect();
    let known: BTreeMap<Pid, u64> = all.iter().copied().collect();
    assert_eq!(known.len(), all.len(), "a worker known twice: {all:?}");
    known
}

/// The started workers: those serving in a slot, and a canary on trial.
fn started(state: &State) -> Vec<Pid> {
    let canary = match state.canary() {
        Some(Canary::Trial { serving, .. }) => Some(serving.worker.pid),
        _ => None,
    };
    let serving = state.serving().map(|(_, s)| s.worker.pid);
    serving.chain(canary).collect()
}

/// The state written as an upgrade writes it, and read back.
fn round_trip(state: &State) -> State {
    let mut w = Writer::new();
    state.save(&mut w);
    let text = w.finish();
    let mut r = Reader::parse(text.as_bytes()).expect("the state parses");
    let back = State::read(&mut r).unwrap_or_else(|e| panic!("{e}\n{text}"));
    r.finish().expect("every record read");
    // Transient fields start over in the next image.
    let expected = State {
        launcher: false,
        ..state.clone()
    };
    assert_eq!(back, expected, "the state round-trips\n{text}");
    back
}

impl World {
    fn new(seed: u64) -> World {
        World {
            rng: Rng(seed),
            degraded: false,
            now: Mono(1_000_000),
            procs: BTreeMap::new(),
            left: BTreeMap::new(),
            tree_killed: BTreeSet::new(),
            next_pid: 100,
            check: None,
            orphans: Vec::new(),
            replies: BTreeMap::new(),
            clients: BTreeSet::new(),
            asking: BTreeSet::new(),
            next_client: 0,
            max_started: 0,
            stop_at: None,
            exited: false,
            upgrades: 0,
            reports: 0,
            gave_up: false,
            steps: 0,
            last_spawn: BTreeMap::new(),
            due: None,
            trace: Vec::new(),
        }
    }

    fn fail(&self, why: &str) -> ! {
        let trace = self.trace[self.trace.len().saturating_sub(SIM_TRACE)..].join("\n");
        panic!("{why} (at {} us)\nlast events:\n{trace}", self.now.0)
    }

    /// One event through `step`, then its effects, as the executor carries them out;
    /// the invariants after it.
    fn feed(&mut self, state: &mut State, event: Event) {
        self.steps += 1;
        if self.trace.len() > 400 {
            self.trace.drain(..200);
        }
        if let Event::Request {
            from,
            ask: Ask::Status { .. },
            ..
        } = &event
        {
            self.asking.insert(from.0.clone());
        }
        self.nested(state, event);
        // A status is answered at once: within the event that asked.
        if let Some(client) = self.asking.pop_first() {
            let got = self.replies.get(&client).map_or(0, Vec::len);
            self.fail(&format!("status client {client:?} got {got} answers"));
        }
        self.check_invariants(state);
    }

    fn nested(&mut self, state: &mut State, event: Event) {
        self.trace.push(format!("{:?} <- {event:?}", self.now));
        let exit = matches!(event, Event::Exited { .. });
        if let Event::Exited { pid, .. } = event {
            self.degraded |= started(state).contains(&pid);
        }
        let rolling = state.roll.is_some();
        let canary = state.canary_worker().map(|w| w.pid);
        let effects = step(state, event, self.now);
        if !rolling && state.roll.is_some() {
            self.degraded = false;
        }
        // A worker found hung leaves its slot in this step, whatever the order of the
        // effects.
        let abrt = |e: &Effect| matches!(e, Effect::Signal { signal, .. } if signal.number == libc::SIGABRT);
        self.degraded |= effects.iter().any(abrt);
        // Until the canary has passed (it then serves in slot 1), no old worker is
        // signalled: a rollback leaves the old generation untouched.
        let promoted = canary.is_some_and(|c| state.serving().any(|(_, s)| s.worker.pid == c));
        if canary.is_some() && !promoted {
            let on_hup = &state.config.signal_on_hup;
            let told = |pid: &Pid| self.procs.get(pid).is_none_or(|p| p.told);
            let signalled = effects.iter().any(
                |e| matches!(e, Effect::Signal { pid, signal } if signal == on_hup && !told(pid)),
            );
            if signalled {
                self.fail("an old worker signalled while the canary was on trial");
            }
        }
        for (_, serving) in state.serving() {
            self.max_started = self.max_started.max(serving.worker.generation);
        }
        // A worker that dies is replaced alone: the others serve on, unsignalled.
        if exit && effects.iter().any(|e| matches!(e, Effect::Signal { .. })) {
            self.fail("an exit led to a signal");
        }
        let count = effects.len();
        for (i, effect) in effects.into_iter().enumerate() {
            if !matches!(effect, Effect::Log(_)) {
                self.trace.push(format!("   -> {effect:?}"));
            }
            if let Effect::Exec { .. } = effect {
                if i + 1 != count {
                    self.fail("effects after an exec, which never returns when it works");
                }
            }
            if let Some(answer) = self.execute(state, effect) {
                self.nested(state, answer);
            }
        }
    }

    fn execute(&mut self, state: &mut State, effect: Effect) -> Option<Event> {
        let now = self.now;
        match effect {
            Effect::Log(_) | Effect::Manager(_) | Effect::ReopenLog => {}
            Effect::Launcher(_) => {
                self.reports += 1;
                if self.reports > 1 {
                    self.fail("the launcher told twice");
                }
            }
            // The exec-failed child exits by itself; start_server exits too.
            Effect::GiveUp(_) => {
                self.procs.clear();
                self.exited = true;
                self.gave_up = true;
            }
            // Nothing is started once start_server has given up (the executor's rule).
            Effect::Spawn { .. } if self.gave_up => {}
            Effect::Spawn { place, .. } => {
                // Never a spin: a spawn in a slot that is not a restart asked for comes
                // a retry pause after the slot's last one at the soonest (a crash loop,
                // a worker that hangs or triggers its watchdog at once, failed forks).
                let slot = match place {
                    Place::Slot(i) => i,
                    // Paced apart from slot 1's own workers.
                    Place::Canary => usize::MAX,
                };
                let attempt = state.slots.get(slot).and_then(|s| s.starting.as_ref());
                let asked = place == Place::Canary || attempt.is_some_and(|a| a.replacing);
                if let Some(&last) = self.last_spawn.get(&slot).filter(|_| !asked) {
                    if now < last.after(RETRY_FLOOR) {
                        self.fail(&format!(
                            "a respawn in slot {slot} {:?} after its last spawn",
                            last.until(now)
                        ));
                    }
                }
                self.last_spawn.insert(slot, now);
                return Some(self.spawn(state, place));
            }
            Effect::Probe { pid } => {
                // Only a starting worker (the canary included) is looked at.
                let canary = state.canary_attempt().and_then(|a| a.worker);
                let starting = state.attempts().filter_map(|(_, a)| a.worker);
                if !starting.chain(canary).any(|w| w.pid == pid)
                    || state.config.ready != Ready::Listening
                {
                    self.fail(&format!("a look at {pid}, which is not starting"));
                }
                let Some(proc) = self.procs.get_mut(&pid) else {
                    self.fail(&format!("a look at {pid}, not a child"));
                };
                let probe = match proc.listens_at {
                    _ if proc.blind => Probe::Blind("process 1 cannot be read".into()),
                    Some(at) if at <= now => Probe::Waiting("accept4(3)".into()),
                    _ => Probe::NotYet,
                };
                proc.seen_waiting |= probe != Probe::NotYet;
                return Some(Event::Probed { pid, probe });
            }
            Effect::Signal { pid, signal } => {
                let Some(generation) = self.procs.get(&pid).map(|p| p.generation) else {
                    self.fail(&format!("{} sent to {pid}, not a child", signal.name));
                };
                let told = self.procs[&pid].told;
                if signal == state.config.signal_on_hup && !told && generation >= self.max_started {
                    self.fail(&format!(
                        "generation {generation} signalled before a newer one started"
                    ));
                }
                // Capacity never drops below N by start_server's doing: an old worker
                // is signalled only when N started workers serve besides it.
                let n = state.config.workers as usize;
                if signal == state.config.signal_on_hup && !told && !self.degraded {
                    let started = started(state);
                    let serving = started
                        .iter()
                        .filter(|&&p| p != pid && !self.procs[&p].told);
                    let serving = serving.count();
                    if serving < n {
                        self.fail(&format!(
                            "worker {pid} signalled with {serving} of {n} serving ({started:?})"
                        ));
                    }
                }
                let delay = self.rng.millis(500);
                let stopping = state.stopping();
                let proc = self.procs.get_mut(&pid).expect("a child");
                proc.told = true;
                proc.signalled_since_stop |= stopping;
                if signal.number == libc::SIGKILL {
                    proc.exit_at = Some((now, libc::SIGKILL));
                } else if proc.obeys && proc.exit_at.is_none_or(|(at, _)| at > now) {
                    proc.exit_at = Some((now.after(delay), signal.number));
                }
            }
            Effect::SignalTree { worker, signal } => {
                let delay = self.rng.millis(500);
                if signal.number == libc::SIGKILL && self.procs.contains_key(&worker) {
                    self.tree_killed.insert(worker);
                    return None;
                }
                let Some(left) = self.left.get_mut(&worker) else {
                    self.fail(&format!("{} sent to what {worker} left: gone", signal.name));
                };
                if signal.number == libc::SIGKILL {
                    left.exit_at = Some(now);
                } else if left.obeys && left.exit_at.is_none_or(|at| at > now.after(delay)) {
                    left.exit_at = Some(now.after(delay));
                }
            }
            // No cost while idle: /proc is looked at only while something starts or
            // stops.
            Effect::Survey => {
                let busy = state.restarting()
                    || state.stopping()
                    || !state.old.is_empty()
                    || !state.leftovers.is_empty();
                if !busy {
                    self.fail("a survey of the process trees while nothing starts or stops");
                }
            }
            Effect::WriteStatus(listed) => {
                // A generation the status file lists has started.
                let newest = listed.iter().map(|l| l.0).max().unwrap_or_default();
                self.max_started = self.max_started.max(newest);
                for (generation, pid) in listed {
                    if self.procs.get(&pid).map(|p| p.generation) != Some(generation) {
                        self.fail(&format!("the status file lists {generation}:{pid}"));
                    }
                }
            }
            Effect::Status { to, json } => {
                if !self.asking.remove(&to.0) {
                    self.fail(&format!("a status for {:?}, which did not ask now", to.0));
                }
                // Rendered as the executor does, with whatever the world's disk says.
                let changed = state.origins.iter().map(|o| o.pid).map(|pid| {
                    let changed = self.rng.pick(&[None, Some(true), Some(false)]);
                    (pid, changed)
                });
                let facts = report::Facts {
                    pid: 1,
                    version: VERSION,
                    build: "git:sim",
                    wall: Duration::from_secs(1_796_477_370),
                    changed: changed.collect(),
                    left: state
                        .leftovers
                        .iter()
                        .map(|l| (l.worker, vec![l.worker + 1]))
                        .collect(),
                };
                let (serving, text) = report::render(state, now, &facts, json);
                if serving != report::serving(state) || text.is_empty() {
                    self.fail("a status that does not say whether it serves");
                }
                if json && !balanced(&text) {
                    self.fail(&format!("a status that is not JSON: {text}"));
                }
                let replies = self.replies.entry(to.0.clone()).or_default();
                replies.push(text);
            }
            Effect::Reply { to, text } => {
                // A restart's OK only once no process of an older generation runs.
                if let Some(n) = text.strip_prefix("OK generation ") {
                    let n: u64 = n.parse().expect("a generation");
                    let procs = self.procs.values().map(|p| p.generation);
                    let left = self.left.values().map(|l| l.generation);
                    if let Some(g) = procs.chain(left).find(|&g| g < n) {
                        self.fail(&format!("OK generation {n} while generation {g} runs"));
                    }
                }
                if text != ACCEPTED {
                    let replies = self.replies.entry(to.0.clone()).or_default();
                    replies.push(text);
                    if replies.len() > 1 {
                        let replies = replies.clone();
                        self.fail(&format!("client {:?} answered twice: {replies:?}", to.0));
                    }
                }
            }
            Effect::SpawnCheck => {
                if self.rng.chance(50) {
                    return Some(Event::CheckSpawned(Err("Resource busy".into())));
                }
                let verdict = match self.rng.chance(700) {
                    true => Ok("9.9.9".to_string()),
                    false => Err("--upgrade-check exited with status 1".to_string()),
                };
                let exits_at = now.after(self.rng.millis(7000));
                self.check = Some(CheckProc { exits_at, verdict });
                return Some(Event::CheckSpawned(Ok(())));
            }
            Effect::KillCheck { forget } => {
                if let Some(check) = &mut self.check {
                    check.exits_at = now;
                    check.verdict = Err(format!(
                        "it did not answer --upgrade-check within {} secs",
                        check::TIMEOUT.as_secs()
                    ));
                }
                // Forgotten: its exit comes all the same, from a pid nothing knows.
                if forget && self.check.take().is_some() {
                    let pid = self.next_pid;
                    self.next_pid += 1;
                    self.orphans.push((pid, now));
                }
            }
            Effect::Exec { .. } => {
                if self.rng.chance(200) {
                    return Some(Event::ExecFailed("execve failed: ENOEXEC".into()));
                }
                // The new image: the state as it reads it back, and the same loop.
                self.upgrades += 1;
                *state = round_trip(state);
                let refused = self
                    .rng
                    .chance(100)
                    .then(|| "the new image could not restore the state".to_string());
                let from = VERSION.to_string();
                return Some(Event::Resumed { from, refused });
            }
            Effect::Exit => {
                if let Some((pid, _)) = self.procs.iter().next() {
                    self.fail(&format!("exited with worker {pid} not reaped"));
                }
                if let Some((pid, _)) = self.left.iter().next() {
                    self.fail(&format!("exited with what worker {pid} left running"));
                }
                self.exited = true;
            }
        }
        None
    }

    /// A fork: it fails, or makes a worker of some temper.
    fn spawn(&mut self, state: &State, place: Place) -> Event {
        let tunables = (!self.rng.chance(20)).then_some(state.tunables);
        if self.rng.chance(30) {
            let spawned =
                Spawned::Failed("fork(2) failed: Resource temporarily unavailable".into());
            return Event::Spawned {
                place,
                tunables,
                spawned,
            };
        }
        if self.rng.chance(10) {
            let spawned = Spawned::NoChannel("Too many open files".into());
            return Event::Spawned {
                place,
                tunables,
                spawned,
            };
        }
        let attempt = match place {
            Place::Slot(i) => state.slots[i].starting.as_ref(),
            Place::Canary => state.canary_attempt(),
        };
        let generation = attempt
            .expect("a spawn for a worker being started")
            .generation;
        let pid = self.next_pid;
        self.next_pid += 1;
        let now = self.now;
        let config = &state.config;
        let r = &mut self.rng;
        let mut proc = Proc {
            generation,
            ready_at: None,
            listens_at: None,
            blind: r.chance(30),
            seen_waiting: false,
            exit_at: None,
            obeys: config.kill_timeout.is_none() || !r.chance(150),
            ping_at: None,
            hangs: false,
            signalled_since_stop: false,
            told: false,
        };
        let (mut exec_error, mut unexecutable) = (None, false);
        let exe = r.chance(900).then(|| Exe {
            path: "/sim/server".into(),
            file: r.chance(900).then_some(FileId {
                dev: 1,
                ino: pid as u64,
                mtime: 0,
            }),
        });
        match r.below(100) {
            // Exec fails: the child exits 255 at once.
            0..=4 => {
                exec_error = Some("failed to exec ./server: No such file or directory".into());
                unexecutable = r.chance(500);
                proc.exit_at = Some((now, 255 << 8));
            }
            // Crashes early, or later, or exits 0 (daemonizes).
            5..=14 => proc.exit_at = Some((now.after(r.millis(1500)), 3 << 8)),
            15..=22 => proc.exit_at = Some((now.after(r.millis(60_000)), libc::SIGSEGV)),
            23..=25 => proc.exit_at = Some((now.after(r.millis(200)), 0)),
            // Hangs: never ready, no watchdog pings.
            26..=32 => proc.hangs = true,
            _ => {}
        }
        if config.ready == Ready::Notify && !proc.hangs {
            proc.ready_at = Some(now.after(r.millis(3000)));
        }
        if config.ready == Ready::Listening && !proc.hangs {
            proc.listens_at = Some(now.after(r.millis(3000)));
        }
        if config.watchdog.is_some() && !proc.hangs {
            proc.ping_at = Some(now.after(r.millis(1500)));
        }
        self.procs.insert(pid, proc);
        let spawned = Spawned::Child {
            pid,
            exec_error,
            unexecutable,
            exe,
        };
        Event::Spawned {
            place,
            tunables,
            spawned,
        }
    }

    /// When something happens in the world next, if anything will.
    fn next_due(&self) -> Option<Mono> {
        let procs = self.procs.values().flat_map(|p| {
            let exit = p.exit_at.map(|e| e.0);
            [exit, p.ready_at, p.ping_at.filter(|_| !p.hangs)]
        });
        let check = self.check.as_ref().map(|c| c.exits_at);
        let orphans = self.orphans.iter().map(|o| Some(o.1));
        let left = self.left.values().map(|l| l.exit_at);
        procs
            .chain([check])
            .chain(orphans)
            .chain(left)
            .flatten()
            .min()
    }

    /// One turn of the loop: time moves to the next deadline or world event (or a
    /// random moment before, for an outside event), what is due arrives in the loop's
    /// order, then the turn ends.
    fn turn(&mut self, state: &mut State) {
        let next = [state.next_deadline(), self.next_due()]
            .into_iter()
            .flatten()
            .min();
        let outside = self.rng.chance(250);
        let horizon = match next {
            Some(next) => self.now.until(next),
            None => Duration::from_secs(10),
        };
        let jump = match outside || next.is_none() {
            true => self.rng.millis(horizon.as_millis() as u64),
            false => horizon,
        };
        self.now = self.now.after(jump);
        let now = self.now;

        // Exits first.
        let dead: Vec<(Pid, Status)> = self
            .procs
            .iter()
            .filter_map(|(&pid, p)| p.exit_at.filter(|e| e.0 <= now).map(|e| (pid, e.1)))
            .collect();
        for (pid, status) in dead {
            let generation = self.procs[&pid].generation;
            // Now and then a worker leaves processes of its tree running: a prefork
            // server's children, a `setsid` child, a double-forked daemon.
            if self.rng.chance(250) && !self.tree_killed.contains(&pid) {
                let left = Left {
                    generation,
                    exit_at: self
                        .rng
                        .chance(500)
                        .then(|| now.after(self.rng.millis(5000))),
                    obeys: self.rng.chance(700),
                };
                self.left.insert(pid, left);
                let pids = vec![pid + 100_000];
                self.feed(state, Event::Remains { worker: pid, pids });
            }
            self.procs.remove(&pid);
            self.feed(state, Event::Exited { pid, status });
        }
        let gone: Vec<Pid> = self
            .left
            .iter()
            .filter(|(_, l)| l.exit_at.is_some_and(|at| at <= now))
            .map(|(&pid, _)| pid)
            .collect();
        for worker in gone {
            self.left.remove(&worker);
            self.feed(state, Event::TreeGone { worker });
        }
        let orphans: Vec<Pid> = self
            .orphans
            .iter()
            .filter(|o| o.1 <= now)
            .map(|o| o.0)
            .collect();
        self.orphans.retain(|o| o.1 > now);
        for pid in orphans {
            self.feed(state, Event::Exited { pid, status: 9 });
        }
        if let Some(check) = self.check.take_if(|c| c.exits_at <= now) {
            self.feed(state, Event::Checked(check.verdict));
        }
        // Then what the workers said.
        let mut said = Vec::new();
        for (&pid, p) in self.procs.iter_mut() {
            if p.ready_at.is_some_and(|at| at <= now) {
                p.ready_at = None;
                said.push((pid, Said::Ready));
            }
            if p.ping_at.is_some_and(|at| at <= now) && !p.hangs {
                let interval = state.config.watchdog.unwrap_or_default() / 2;
                p.ping_at = Some(now.after(interval));
                said.push((pid, Said::Watchdog));
            }
        }
        if let Some(&pid) = self.procs.keys().next() {
            if self.rng.chance(20) {
                said.push((pid, Said::Status("warming up".into())));
            }
            if self.rng.chance(10) {
                let by = self.rng.millis(4000);
                said.push((pid, Said::ExtendTimeout(by)));
            }
            if self.rng.chance(3) {
                said.push((pid, Said::WatchdogTrigger));
            }
        }
        // A serving worker that says it is hung, now and then at once.
        let serving: Vec<Pid> = state.serving().map(|(_, s)| s.worker.pid).collect();
        if !serving.is_empty() && self.rng.chance(15) {
            said.push((self.rng.pick(&serving), Said::WatchdogTrigger));
        }
        for (pid, said) in said {
            let sender = if self.rng.chance(100) {
                pid + 1000
            } else {
                pid
            };
            self.feed(state, Event::Notified { pid, sender, said });
        }
        if outside {
            let event = self.outside();
            self.feed(state, event);
        }
        self.feed(state, Event::Tick);
        if self.rng.chance(10) {
            round_trip(state);
        }
    }

    /// Something from outside: a signal or a client's request.
    fn outside(&mut self) -> Event {
        let sender = 1;
        match self.rng.below(100) {
            0..=29 => Event::Restart,
            30..=44 => {
                let from = self.client();
                Event::Request {
                    pid: sender,
                    from,
                    ask: Ask::Restart,
                }
            }
            45..=59 => Event::Upgrade {
                pid: sender,
                client: None,
            },
            60..=69 => Event::Request {
                pid: sender,
                from: self.client(),
                ask: Ask::Upgrade,
            },
            70..=74 => Event::Reopen,
            75..=79 => Event::Request {
                pid: sender,
                from: self.status_client(),
                ask: Ask::Status {
                    json: self.rng.chance(500),
                },
            },
            80..=97 => Event::Ignored {
                sig: libc::SIGALRM,
                pid: sender,
            },
            _ => match self.stop_at {
                None => self.stop(),
                // A repeated stop signal.
                Some(_) => Event::Stop { sig: libc::SIGTERM },
            },
        }
    }

    fn stop(&mut self) -> Event {
        self.stop_at = Some(self.now);
        for proc in self.procs.values_mut() {
            proc.signalled_since_stop = false;
        }
        let sig = self.rng.pick(&[libc::SIGTERM, libc::SIGINT]);
        Event::Stop { sig }
    }

    /// A `--status` client: answered at once, not a verdict to wait for.
    fn status_client(&mut self) -> Client {
        self.next_client += 1;
        Client(format!("status-{}", self.next_client).into_bytes())
    }

    fn client(&mut self) -> Client {
        self.next_client += 1;
        let client = format!("client-{}", self.next_client).into_bytes();
        self.clients.insert(client.clone());
        Client(client)
    }

    fn check_invariants(&self, state: &State) {
        // No worker unknown, none left unsupervised: the state waits for exactly the
        // children the world has.
        let known = workers(state);
        let children: BTreeMap<Pid, u64> = self
            .procs
            .iter()
            .map(|(&pid, p)| (pid, p.generation))
            .collect();
        if known != children {
            self.fail(&format!(
                "the state knows {known:?}, the children are {children:?}"
            ));
        }
        // What workers left is known, and ends: it will exit, or has a KILL deadline.
        let left: BTreeSet<Pid> = self.left.keys().copied().collect();
        let leftovers: BTreeSet<Pid> = state.leftovers.iter().map(|l| l.worker).collect();
        if left != leftovers || leftovers.len() != state.leftovers.len() {
            self.fail(&format!(
                "the state knows {leftovers:?} left, the world {left:?}"
            ));
        }
        for l in &state.leftovers {
            let pid = l.worker;
            if l.kill.is_none() && self.left[&pid].exit_at.is_none() {
                self.fail(&format!("what {pid} left is waited for forever"));
            }
        }
        // At most one restart in flight: besides the workers told to stop, no more than
        // a serving worker and one starting per slot (or the old ones waiting for
        // --kill-old-delay and those replacing them).
        let n = state.config.workers.max(1) as usize;
        if !state.stopping() {
            // With --rolling=K, N+K at most; at once, N old and N new (one of
            // which may be a canary that passed).
            let untold = self.procs.values().filter(|p| !p.told).count();
            let most = match state.config.rolling {
                Some(k) => n + k as usize,
                None => 2 * n + 1,
            };
            if untold > most {
                self.fail(&format!("{untold} workers serve or start, for {n} slots"));
            }
            // Every slot is supervised: it has a worker serving, or one on its way.
            if state.slots.len() != n {
                self.fail(&format!("{} slots for --workers={n}", state.slots.len()));
            }
            // (Slot 1's may wait for the canary, which takes it if it passes.)
            let canary = state.canary_worker().is_some();
            let empty = |(i, s): &(usize, &super::state::Slot)| {
                s.serving.is_none() && s.starting.is_none() && !(*i == 0 && canary)
            };
            if let Some((i, _)) = state.slots.iter().enumerate().find(empty) {
                self.fail(&format!(
                    "slot {} has no worker, and none on its way",
                    i + 1
                ));
            }
        }
        // No deadline lost: every old worker will exit (it was told and obeys), or
        // has a KILL deadline, or waits for its replacement to start or for
        // --kill-old-delay.
        for (pid, old) in &state.old {
            let exits = self.procs[pid].exit_at.is_some();
            let waits = state.kill_old_at.is_some()
                || state.attempts().next().is_some()
                || state.roll.is_some()
                || old.signal_at.is_some();
            if !(exits || old.kill.is_some() || waits) {
                self.fail(&format!("old worker {pid} is waited for forever"));
            }
        }
        let unwatched = state.slots.iter().any(|s| {
            s.starting.is_none() && s.serving.as_ref().is_some_and(|s| s.watchdog_at.is_none())
        });
        if unwatched && state.config.watchdog.is_some() {
            self.fail("a serving worker without its watchdog deadline");
        }
        match &state.upgrade {
            Some(u) if u.phase == UpgradePhase::Executing => {
                self.fail("an exec still under way after its step")
            }
            Some(u)
                if u.phase == (UpgradePhase::Checking { deadline: None })
                    && self.check.is_none() =>
            {
                self.fail("waiting for a check that will never exit")
            }
            _ => {}
        }
        // The last restart's outcome is one of its own tries', never later than now.
        if let Some(r) = &state.last_restart {
            if r.outcome
                .as_ref()
                .is_some_and(|o| o.1 <= r.after || o.0 > self.now)
            {
                self.fail(&format!("the last restart {r:?} has another's outcome"));
            }
        }
        // Origins are known of workers only, and of every one.
        let origins: Vec<Pid> = state.origins.iter().map(|o| o.pid).collect();
        if origins.len() != known.len() || origins.iter().any(|p| !known.contains_key(p)) {
            self.fail(&format!("origins of {origins:?}, workers {known:?}"));
        }
        // --ready=listening: a worker is declared started only once a look at its tree
        // found it waiting for connections (or found that /proc cannot tell); a look
        // is due only for a worker starting, and always for one (unless blind).
        let canary = match state.canary() {
            Some(Canary::Trial { serving, .. }) => Some(serving),
            _ => None,
        };
        for serving in state.serving().map(|(_, s)| s).chain(canary) {
            let pid = serving.worker.pid;
            let seen = self.procs.get(&pid).is_some_and(|p| p.seen_waiting);
            if state.config.ready == Ready::Listening && !seen {
                self.fail(&format!(
                    "worker {pid} started before a look found it waiting"
                ));
            }
        }
        let canary = state.canary_attempt();
        for attempt in state.attempts().map(|(_, a)| a).chain(canary) {
            if attempt.probe.is_some() && attempt.worker.is_none() {
                self.fail("a look at a starting worker due, with no worker starting");
            }
            let pid = attempt.worker.map(|w| w.pid);
            let blind = pid.is_some_and(|pid| self.procs.get(&pid).is_some_and(|p| p.blind));
            if state.config.ready == Ready::Listening
                && pid.is_some()
                && attempt.probe.is_none()
                && !blind
            {
                self.fail("a starting worker that nothing looks at");
            }
        }
        if state.stopping() && (state.upgrade.is_some() || !state.slots.is_empty()) {
            self.fail("stopping, yet starting or upgrading");
        }
    }

    /// After a turn: what must hold once every event of it has been acted on.
    fn check_after_turn(&mut self, state: &State) {
        // A deadline due at the end of a turn (`--interval=0`) is the next turn's at
        // once; one that turn leaves as it was would keep the loop spinning.
        let due = state.next_deadline().filter(|&d| d <= self.now);
        let due = due.map(|d| (d, state.clone()));
        if due.is_some() && due == self.due {
            self.fail("a deadline due that its turn did not act on");
        }
        self.due = due;
        // No --restart client waits once nothing is under way (no process of an older
        // generation left either): every one heard OK or FAILED.
        let quiet = !state.restarting() && state.settled() && state.phase == Phase::Running;
        let newest = state.serving().map(|(_, s)| s.worker.generation).min();
        let older = |g: u64| newest.is_some_and(|n| g < n);
        let old_left = state.old.values().any(|o| o.listed || older(o.generation))
            || state.leftovers.iter().any(|l| older(l.generation));
        if quiet && !old_left && !state.waiters.is_empty() {
            self.fail("a --restart client waits with nothing under way");
        }
        // No cost while idle: with nothing starting or stopping (no old worker, nothing
        // left by one, no upgrade), the only timers are those asked for (--watchdog,
        // auto-restart).
        let idle = !state.restarting()
            && !state.stopping()
            && state.old.is_empty()
            && state.leftovers.is_empty()
            && state.upgrade.is_none();
        if idle {
            let watchdog = state.serving().filter_map(|(_, s)| s.watchdog_at);
            let asked = watchdog.chain(state.auto_restart_at()).min();
            if state.next_deadline() != asked {
                self.fail(&format!(
                    "idle, yet a deadline at {:?} (asked for: {asked:?})",
                    state.next_deadline()
                ));
            }
        }
        if state.phase == Phase::RestartQueued && !state.restarting() {
            self.fail("a queued restart with nothing under way: it would never come");
        }
        if let Some(u) = &state.upgrade {
            if let UpgradePhase::Passed { .. } = u.phase {
                self.fail("a checked upgrade not executed at the end of its turn");
            }
        }
    }
}

/// Whether `text` is one JSON value's worth of brackets and strings: every `{`/`[`
/// closed in order, outside strings, nothing left open. (The document's fields are
/// checked by tests/status.rs with a real parser.)
fn balanced(text: &str) -> bool {
    let mut open = Vec::new();
    let (mut in_string, mut escaped) = (false, false);
    for c in text.trim_end().chars() {
        match (in_string, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (true, false, '"') => in_string = false,
            (true, false, c) if (c as u32) < 0x20 => return false,
            (true, ..) => {}
            (false, _, '"') => in_string = true,
            (false, _, '{' | '[') => open.push(c),
            (false, _, '}') if open.pop() != Some('{') => return false,
            (false, _, ']') if open.pop() != Some('[') => return false,
            _ => {}
        }
    }
    open.is_empty() && !in_string && text.ends_with("}\n")
}

/// One seed: upgrades done, events stepped, and the last of them.
fn run_seed(seed: u64) -> (u32, usize, Vec<String>) {
    let mut world = World::new(seed);
    let (config, tunables) = config(&mut world.rng);
    let mut state = State::new(config, tunables);
    state.launcher = world.rng.chance(500);
    world.feed(&mut state, Event::Start);
    while world.steps < STEPS {
        world.turn(&mut state);
        world.check_after_turn(&state);
        if world.exited {
            break;
        }
    }
    if world.gave_up {
        return (world.upgrades, world.steps, world.trace);
    }
    // Then a stop (if none came), which must end with every worker signalled and
    // reaped, within bounded time.
    if world.stop_at.is_none() {
        let stop = world.stop();
        world.feed(&mut state, stop);
    }
    let deadline = world.now.after(Duration::from_secs(600));
    while !world.exited {
        if world.now > deadline {
            world.fail("still not exited 600 s after the stop");
        }
        world.turn(&mut state);
        world.check_after_turn(&state);
    }
    for proc in world.procs.values() {
        if !proc.signalled_since_stop {
            world.fail("a worker alive at the stop was never signalled");
        }
    }
    // Every --restart (and --upgrade) client got exactly one verdict.
    for client in &world.clients {
        let got = world.replies.get(client).map_or(0, Vec::len);
        if got != 1 {
            world.fail(&format!("restart client {client:?} got {got} verdicts"));
        }
    }
    (world.upgrades, world.steps, world.trace)
}

#[test]
fn simulation() {
    let replay = std::env::var("SIM_SEED").ok();
    let first = match &replay {
        Some(seed) => seed.parse().expect("SIM_SEED is a number"),
        None => crate::sys::monotonic_usec(),
    };
    let total = std::env::var("SIM_STEPS").map_or(TOTAL, |n| n.parse().expect("a number"));
    let (mut seed, mut upgrades, mut steps) = (first, 0, 0);
    while steps < total {
        let outcome = std::panic::catch_unwind(|| run_seed(seed));
        let Ok((u, s, _)) = outcome else {
            panic!(
                "simulation failed with seed {seed}: replay with \
                 SIM_SEED={seed} cargo test --bin start_server simulation"
            );
        };
        upgrades += u;
        steps += s;
        seed += 1;
        if replay.is_some() {
            break;
        }
    }
    let seeds = seed - first;
    eprintln!("simulation: {seeds} seeds from {first}, {steps} steps, {upgrades} upgrades");
}

#[test]
fn a_seed_replays_exactly() {
    let seed = crate::sys::monotonic_usec();
    assert_eq!(run_seed(seed), run_seed(seed), "seed {seed}");
}
