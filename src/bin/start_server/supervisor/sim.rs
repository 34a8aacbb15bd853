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
use crate::notify::Said;
use crate::signals::Signal;
use crate::sys::Pid;
use crate::upgrade::state::{Reader, Writer};
use crate::upgrade::{check, VERSION};

use super::effect::{Effect, Spawned, Status};
use super::event::Event;
use super::state::{Client, Config, Mono, Phase, State, UpgradePhase};
use super::step::{step, RETRY_FLOOR};

/// Events per seed (at most: a stop may end it sooner), and in all.
const STEPS: usize = 2_000;
const TOTAL: usize = 200_000;

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

/// The upgrade check, running.
struct CheckProc {
    exits_at: Mono,
    verdict: Result<String, String>,
}

/// The simulated world, and what it has seen.
struct World {
    rng: Rng,
    now: Mono,
    procs: BTreeMap<Pid, Proc>,
    next_pid: Pid,
    check: Option<CheckProc>,
    /// Children nothing waits for (a forgotten check): their exits come all the same.
    orphans: Vec<(Pid, Mono)>,
    /// The verdicts each client (`--restart`'s, `--upgrade`'s) got, ACCEPTED aside.
    replies: BTreeMap<Vec<u8>, Vec<String>>,
    clients: BTreeSet<Vec<u8>>,
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
        ready_notify: rng.chance(500),
        ready_timeout: rng.pick(&[secs(1000), secs(5000)]),
        watchdog: rng.pick(&[None, Some(secs(2000))]),
        exe: rng
            .pick(&[true, true, false])
            .then(|| "/sim/start_server".into()),
        workers: 1 + rng.below(4) as u32,
        name_slots: rng.chance(500),
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
    let newest = starting.chain(serving).map(|w| (w.pid, w.generation));
    let old = state.old.iter().map(|(&pid, old)| (pid, old.generation));
    let all: Vec<(Pid, u64)> = newest.chain(old).collect();
    let known: BTreeMap<Pid, u64> = all.iter().copied().collect();
    assert_eq!(known.len(), all.len(), "a worker known twice: {all:?}");
    known
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
            now: Mono(1_000_000),
            procs: BTreeMap::new(),
            next_pid: 100,
            check: None,
            orphans: Vec::new(),
            replies: BTreeMap::new(),
            clients: BTreeSet::new(),
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
        let trace = self.trace[self.trace.len().saturating_sub(40)..].join("\n");
        panic!("{why} (at {} us)\nlast events:\n{trace}", self.now.0)
    }

    /// One event through `step`, then its effects, as the executor carries them out;
    /// the invariants after it.
    fn feed(&mut self, state: &mut State, event: Event) {
        self.steps += 1;
        if self.trace.len() > 400 {
            self.trace.drain(..200);
        }
        self.nested(state, event);
        self.check_invariants(state);
    }

    fn nested(&mut self, state: &mut State, event: Event) {
        self.trace.push(format!("{:?} <- {event:?}", self.now));
        let exit = matches!(event, Event::Exited { .. });
        let effects = step(state, event, self.now);
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
            Effect::Spawn { slot, .. } => {
                // Never a spin: a spawn in a slot that is not a restart asked for comes
                // a retry pause after the slot's last one at the soonest (a crash loop,
                // a worker that hangs or triggers its watchdog at once, failed forks).
                let attempt = state.slots.get(slot).and_then(|s| s.starting.as_ref());
                let asked = attempt.is_some_and(|a| a.replacing);
                if let Some(&last) = self.last_spawn.get(&slot).filter(|_| !asked) {
                    if now < last.after(RETRY_FLOOR) {
                        self.fail(&format!(
                            "a respawn in slot {slot} {:?} after its last spawn",
                            last.until(now)
                        ));
                    }
                }
                self.last_spawn.insert(slot, now);
                return Some(self.spawn(state, slot));
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
            Effect::Reply { to, text } => {
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
                self.exited = true;
            }
        }
        None
    }

    /// A fork: it fails, or makes a worker of some temper.
    fn spawn(&mut self, state: &State, slot: usize) -> Event {
        let tunables = (!self.rng.chance(20)).then_some(state.tunables);
        if self.rng.chance(30) {
            let spawned =
                Spawned::Failed("fork(2) failed: Resource temporarily unavailable".into());
            return Event::Spawned {
                slot,
                tunables,
                spawned,
            };
        }
        if self.rng.chance(10) {
            let spawned = Spawned::NoChannel("Too many open files".into());
            return Event::Spawned {
                slot,
                tunables,
                spawned,
            };
        }
        let generation = state.slots[slot]
            .starting
            .as_ref()
            .expect("a spawn for a slot being started")
            .generation;
        let pid = self.next_pid;
        self.next_pid += 1;
        let now = self.now;
        let config = &state.config;
        let r = &mut self.rng;
        let mut proc = Proc {
            generation,
            ready_at: None,
            exit_at: None,
            obeys: config.kill_timeout.is_none() || !r.chance(150),
            ping_at: None,
            hangs: false,
            signalled_since_stop: false,
            told: false,
        };
        let (mut exec_error, mut unexecutable) = (None, false);
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
        if config.ready_notify && !proc.hangs {
            proc.ready_at = Some(now.after(r.millis(3000)));
        }
        if config.watchdog.is_some() && !proc.hangs {
            proc.ping_at = Some(now.after(r.millis(1500)));
        }
        self.procs.insert(pid, proc);
        let spawned = Spawned::Child {
            pid,
            exec_error,
            unexecutable,
        };
        Event::Spawned {
            slot,
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
        procs.chain([check]).chain(orphans).flatten().min()
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
            self.procs.remove(&pid);
            self.feed(state, Event::Exited { pid, status });
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
            70..=79 => Event::Reopen,
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
        // At most one restart in flight: besides the workers told to stop, no more than
        // a serving worker and one starting per slot (or the old ones waiting for
        // --kill-old-delay and those replacing them).
        let n = state.config.workers.max(1) as usize;
        if !state.stopping() {
            let untold = self.procs.values().filter(|p| !p.told).count();
            if untold > 2 * n {
                self.fail(&format!("{untold} workers serve, for {n} slots"));
            }
            // Every slot is supervised: it has a worker serving, or one on its way.
            if state.slots.len() != n {
                self.fail(&format!("{} slots for --workers={n}", state.slots.len()));
            }
            if let Some(i) = state
                .slots
                .iter()
                .position(|s| s.serving.is_none() && s.starting.is_none())
            {
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
