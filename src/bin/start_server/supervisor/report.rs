//! `start_server --status`: what the state says, as a table or as JSON. A pure
//! function of the state, the time (`now`) and what only the executor can know
//! (`Facts`): no system call here.
//!
//! The JSON document's schema is start_server(1)'s (STATUS); its `version` changes only
//! when a field changes meaning or goes away (new fields may be added).

use std::time::Duration;

use crate::log::{self, json_string};
use crate::sys::Pid;

use super::state::{Canary, Mono, Phase, Ready, State, UpgradePhase};

/// The JSON document's schema version.
pub const SCHEMA: u32 = 1;

/// What the executor knows besides the state.
pub struct Facts<'a> {
    /// start_server's own pid, version and build id.
    pub pid: Pid,
    pub version: &'a str,
    pub build: &'a str,
    /// The time of day at `now`, since the epoch.
    pub wall: Duration,
    /// Each worker whose executable was recorded: whether the file at its path is
    /// another one now (`None`: it cannot be told, such as when it is gone).
    pub changed: Vec<(Pid, Option<bool>)>,
    /// What each exited worker that left processes running left (by its pid).
    pub left: Vec<(Pid, Vec<Pid>)>,
}

/// One worker, as the report shows it.
struct Row<'a> {
    pid: Pid,
    generation: u64,
    slot: Option<u32>,
    state: &'static str,
    since: Mono,
    exe: Option<(&'a std::path::Path, Option<bool>)>,
}

/// Whether a started generation serves: what `--status` exits 0 for. A slot's worker
/// serves until its replacement has started; a stopping start_server serves no more.
pub fn serving(state: &State) -> bool {
    !state.stopping() && state.serving().next().is_some()
}

/// The report: `(serving, text)`.
pub fn render(state: &State, now: Mono, facts: &Facts, json: bool) -> (bool, String) {
    let report = Report { state, now, facts };
    let text = match json {
        true => report.json(),
        false => report.table(),
    };
    (serving(state), text)
}

/// The last restart, as shown: its verdict is `under way`, `retrying` (a try failed,
/// the next is due), `failed` or `ok`.
struct Restart<'a> {
    began: String,
    verdict: &'static str,
    generation: Option<u64>,
    at: Option<String>,
    why: &'a str,
}

struct Report<'a> {
    state: &'a State,
    now: Mono,
    facts: &'a Facts<'a>,
}

impl Report<'_> {
    /// The time of day at `at`, as RFC 3339.
    fn time(&self, at: Mono) -> String {
        let ago = at.until(self.now);
        let later = self.now.until(at);
        log::rfc3339((self.facts.wall + later).saturating_sub(ago))
    }

    fn rows(&self) -> Vec<Row<'_>> {
        let s = self.state;
        let row = |pid: Pid, generation: u64, state: &'static str, since: Option<Mono>| {
            let origin = s.origin(pid);
            let exe = origin.and_then(|o| o.exe.as_ref()).map(|exe| {
                let changed = self.facts.changed.iter().find(|c| c.0 == pid);
                (exe.path.as_path(), changed.and_then(|c| c.1))
            });
            Row {
                pid,
                generation,
                slot: origin.map(|o| o.slot),
                state,
                since: since
                    .or(origin.map(|o| o.retired_at.unwrap_or(o.spawned_at)))
                    .unwrap_or_default(),
                exe,
            }
        };
        let mut rows = Vec::new();
        for (_, attempt) in s.attempts() {
            if let Some(w) = attempt.worker {
                rows.push(row(w.pid, w.generation, "starting", Some(w.spawned_at)));
            }
        }
        for (_, serving) in s.serving() {
            let w = serving.worker;
            rows.push(row(w.pid, w.generation, "ready", Some(serving.started_at)));
        }
        // `--canary`: the restart's first worker, being started or on trial.
        match s.canary() {
            Some(Canary::Starting(attempt)) => {
                if let Some(w) = attempt.worker {
                    rows.push(row(w.pid, w.generation, "starting", Some(w.spawned_at)));
                }
            }
            Some(Canary::Trial { serving, .. }) => {
                let w = serving.worker;
                rows.push(row(w.pid, w.generation, "canary", Some(serving.started_at)));
            }
            _ => {}
        }
        for (&pid, old) in &s.old {
            // Not yet told to stop (`--kill-old-delay`): it serves on until then.
            let waiting = s.kill_old_at.is_some() || old.signal_at.is_some();
            let state = match waiting && old.listed && !s.stopping() {
                true => "ready",
                false => "draining",
            };
            rows.push(row(pid, old.generation, state, None));
        }
        // What exited workers left running: their generation's until gone.
        for leftover in &s.leftovers {
            let left = self.facts.left.iter().find(|l| l.0 == leftover.worker);
            for &pid in left.map(|l| l.1.as_slice()).unwrap_or_default() {
                rows.push(Row {
                    pid,
                    generation: leftover.generation,
                    slot: None,
                    state: "left",
                    since: leftover.since,
                    exe: None,
                });
            }
        }
        // In order of generation, slot, pid: a few rows, put in place by hand (a sort
        // costs the binary a few KB).
        let mut sorted: Vec<Row> = Vec::with_capacity(rows.len());
        for row in rows {
            let key = |r: &Row| (r.generation, r.slot, r.pid);
            let at = sorted.partition_point(|r| key(r) <= key(&row));
            sorted.insert(at, row);
        }
        sorted
    }

    /// Each generation with a worker, oldest first, and its state: starting, serving
    /// (a worker ready) or draining.
    fn generations(&self, rows: &[Row]) -> Vec<(u64, &'static str)> {
        // A generation with a ready worker serves; else one with a worker starting is
        // starting; else it drains.
        const RANKED: [&str; 4] = ["draining", "starting", "canary", "serving"];
        let rank = |state: &str| RANKED.iter().position(|&r| r == state);
        let mut out: Vec<(u64, &'static str)> = Vec::new();
        for row in rows {
            let state = match row.state {
                "ready" => "serving",
                "starting" => "starting",
                "canary" => "canary",
                _ => "draining",
            };
            match out.last_mut() {
                Some(last) if last.0 == row.generation => {
                    if rank(state) > rank(last.1) {
                        last.1 = state;
                    }
                }
                _ => out.push((row.generation, state)),
            }
        }
        out
    }

    fn phase(&self) -> &'static str {
        match self.state.phase {
            Phase::Stopping | Phase::GaveUp => "stopping",
            _ if self.state.upgrade.is_some() => "upgrading",
            _ if self.state.restarting() => "restarting",
            _ => "running",
        }
    }

    /// The last restart: when it began, its verdict, the generation its last try was,
    /// when that had its outcome, and why it failed.
    fn last_restart(&self) -> Option<Restart<'_>> {
        let r = self.state.last_restart.as_ref()?;
        let (verdict, generation, at, why) = match &r.outcome {
            None => ("under way", None, None, ""),
            Some((at, generation, why)) => (
                match why {
                    Some(_) if self.state.restarting() => "retrying",
                    Some(_) => "failed",
                    None => "ok",
                },
                Some(*generation),
                Some(self.time(*at)),
                why.as_deref().unwrap_or_default(),
            ),
        };
        Some(Restart {
            began: self.time(r.began),
            verdict,
            generation,
            at,
            why,
        })
    }

    /// When a failed start is tried again.
    fn next_try(&self) -> Option<Mono> {
        let waiting = self.state.attempts().filter(|(_, a)| a.worker.is_none());
        waiting.map(|(_, a)| a.until).min()
    }

    fn upgrade(&self) -> Option<(String, &'static str)> {
        let upgrade = self.state.upgrade.as_ref()?;
        let phase = match upgrade.phase {
            UpgradePhase::Checking { .. } => "checking",
            UpgradePhase::Passed { .. } => "passed",
            UpgradePhase::Executing => "executing",
        };
        Some((self.time(upgrade.began), phase))
    }

    /// The options that shape a deploy, as `--name=value` (those set).
    fn options(&self) -> Vec<(&'static str, String)> {
        let c = &self.state.config;
        let t = &self.state.tunables;
        let secs = |d: Duration| log::seconds(d);
        let mut out = vec![
            ("interval", secs(c.interval)),
            ("ready", c.ready.name().into()),
            ("signal-on-hup", c.signal_on_hup.name.clone()),
            ("signal-on-term", c.signal_on_term.name.clone()),
            ("kill-old-delay", secs(t.kill_old_delay)),
            ("workers", c.workers.to_string()),
        ];
        if c.ready != Ready::Interval {
            out.push(("ready-timeout", secs(c.ready_timeout)));
        }
        let optional = [
            ("kill-timeout", c.kill_timeout),
            ("backoff", c.backoff),
            ("watchdog", c.watchdog),
            ("auto-restart-interval", t.auto_restart),
        ];
        for (name, value) in optional {
            out.extend(value.map(|v| (name, secs(v))));
        }
        out
    }

    /// The refills of a worker's slot, and the last exit status in it.
    fn slot(&self, row: &Row) -> (Option<u32>, Option<i32>) {
        let slot = row.slot.and_then(|i| self.state.slots.get(i as usize));
        (slot.map(|s| s.refills), slot.and_then(|s| s.last_exit))
    }

    fn uptime(&self) -> Duration {
        self.state.started_at.until(self.now)
    }

    fn table(&self) -> String {
        let s = self.state;
        let f = self.facts;
        let mut out = format!(
            "start_server pid {}, version {} (build {}), up {} ({})\n",
            f.pid,
            f.version,
            f.build,
            span(self.uptime()),
            self.phase()
        );
        let options: Vec<String> = self
            .options()
            .into_iter()
            .map(|(name, value)| format!("--{name}={value}"))
            .collect();
        out += &format!("options: {}\n", options.join(" "));
        let rows = self.rows();
        let generations: Vec<String> = self
            .generations(&rows)
            .into_iter()
            .map(|(g, state)| format!("{g} {state}"))
            .collect();
        let generations = match generations.is_empty() {
            true => "none".to_string(),
            false => generations.join(", "),
        };
        out += &format!("generations: {generations}\n");
        if let Some(Restart {
            began,
            verdict,
            generation,
            why,
            ..
        }) = self.last_restart()
        {
            out += &format!("last restart: {began}, {verdict}");
            if let Some(generation) = generation {
                out += &format!(" (generation {generation})");
            }
            if !why.is_empty() {
                out += &format!(": {why}");
            }
            out.push('\n');
        }
        if let Some(at) = self.next_try() {
            out += &format!("next try: {}\n", self.time(at));
        }
        if let Some(at) = s.auto_restart_at() {
            out += &format!("next auto-restart: {}\n", self.time(at));
        }
        if let Some((began, phase)) = self.upgrade() {
            out += &format!("upgrade in place: {phase}, since {began}\n");
        }
        out += "\n    PID   GEN  SLOT  STATE     SINCE                     REFILLS  \
                LAST-EXIT  EXECUTABLE\n";
        for row in &rows {
            let exe = match row.exe {
                None => "-".to_string(),
                Some((path, Some(true))) => format!("{} (changed on disk)", path.display()),
                Some((path, None)) => format!("{} (cannot be read now)", path.display()),
                Some((path, Some(false))) => path.display().to_string(),
            };
            let (refills, last_exit) = self.slot(row);
            let dash = |n: Option<String>| n.unwrap_or_else(|| "-".into());
            out += &format!(
                "{:>7} {:>5} {:>5}  {:<9} {:<25} {:>7}  {:>9}  {exe}\n",
                row.pid,
                row.generation,
                dash(row.slot.map(|i| (i + 1).to_string())),
                row.state,
                self.time(row.since),
                dash(refills.map(|n| n.to_string())),
                dash(last_exit.map(exit_text)),
            );
        }
        out
    }

    fn json(&self) -> String {
        let s = self.state;
        let f = self.facts;
        let rows = self.rows();
        let workers: Vec<String> = rows
            .iter()
            .map(|row| {
                let (path, changed) = match row.exe {
                    Some((path, changed)) => (
                        text(&path.display().to_string()),
                        changed.map_or("null".into(), |c| c.to_string()),
                    ),
                    None => ("null".into(), "null".into()),
                };
                let (refills, last_exit) = self.slot(row);
                object(&[
                    ("pid", row.pid.to_string()),
                    ("generation", row.generation.to_string()),
                    ("slot", number(row.slot.map(|i| i + 1))),
                    ("state", text(row.state)),
                    ("since", text(&self.time(row.since))),
                    ("refills", number(refills)),
                    ("last_exit", last_exit.map_or("null".into(), exit_json)),
                    ("executable", path),
                    ("executable_changed", changed),
                ])
            })
            .collect();
        let generations: Vec<String> = self
            .generations(&rows)
            .into_iter()
            .map(|(g, state)| object(&[("generation", g.to_string()), ("state", text(state))]))
            .collect();
        let options: Vec<(&str, String)> = self
            .options()
            .into_iter()
            .map(
                |(name, value)| match value.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
                    true => (name, value),
                    false => (name, text(&value)),
                },
            )
            .collect();
        let last_restart = match self.last_restart() {
            None => "null".into(),
            Some(r) => object(&[
                ("began", text(&r.began)),
                ("verdict", text(r.verdict)),
                ("generation", number(r.generation)),
                ("at", r.at.map_or("null".into(), |at| text(&at))),
                (
                    "reason",
                    match r.why.is_empty() {
                        true => "null".into(),
                        false => text(r.why),
                    },
                ),
            ]),
        };
        let upgrade = match self.upgrade() {
            None => "null".into(),
            Some((began, phase)) => object(&[("began", text(&began)), ("phase", text(phase))]),
        };
        let at = |at: Option<Mono>| at.map_or("null".into(), |at| text(&self.time(at)));
        let mut out = object(&[
            ("version", SCHEMA.to_string()),
            ("pid", f.pid.to_string()),
            ("start_server_version", text(f.version)),
            ("build", text(f.build)),
            ("started", text(&self.time(s.started_at))),
            ("uptime_ms", self.uptime().as_millis().to_string()),
            ("state", text(self.phase())),
            ("serving", serving(s).to_string()),
            ("options", object(&options)),
            ("generation", s.generation.to_string()),
            ("generations", array(&generations)),
            ("workers", array(&workers)),
            ("last_restart", last_restart),
            ("next_try", at(self.next_try())),
            ("next_auto_restart", at(s.auto_restart_at())),
            ("upgrade", upgrade),
        ]);
        out.push('\n');
        out
    }
}

/// A raw wait status as the report says it: `exit 3`, `signal 9`.
fn exit_text(status: i32) -> String {
    match libc::WIFSIGNALED(status) {
        true => format!("signal {}", libc::WTERMSIG(status)),
        false => format!("exit {}", libc::WEXITSTATUS(status)),
    }
}

/// `{"code":3}` or `{"signal":9}`.
fn exit_json(status: i32) -> String {
    match libc::WIFSIGNALED(status) {
        true => object(&[("signal", libc::WTERMSIG(status).to_string())]),
        false => object(&[("code", libc::WEXITSTATUS(status).to_string())]),
    }
}

fn text(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    json_string(&mut out, value);
    out
}

fn number<T: ToString>(value: Option<T>) -> String {
    value.map_or("null".into(), |v| v.to_string())
}

/// `{"key":value,...}`, the values already JSON.
fn object(fields: &[(&str, String)]) -> String {
    let fields: Vec<String> = fields
        .iter()
        .map(|(key, value)| format!("{}:{value}", text(key)))
        .collect();
    format!("{{{}}}", fields.join(","))
}

fn array(items: &[String]) -> String {
    format!("[{}]", items.join(","))
}

/// `3d4h`, `2h5m`, `4m10s`, `12s`: a span to its two largest units.
fn span(d: Duration) -> String {
    let secs = d.as_secs();
    let (days, hours, mins) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60);
    match () {
        _ if days > 0 => format!("{days}d{hours}h"),
        _ if hours > 0 => format!("{hours}h{mins}m"),
        _ if mins > 0 => format!("{mins}m{}s", secs % 60),
        _ => format!("{}s", secs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envdir::Tunables;
    use crate::log::Format;
    use crate::signals::Signal;
    use crate::supervisor::state::{
        Attempt, Config, Exe, LastRestart, Leftover, Origin, Retiring, Serving, Slot, Upgrade,
        Worker,
    };

    /// Generation 2 starting in slot 1 while generation 1 serves there, slot 2 refilled
    /// after a crash, an old worker draining, a restart whose last try failed, an
    /// upgrade being checked: each shows, at its time of day.
    #[test]
    fn a_restart_under_way_as_shown() {
        let secs = Duration::from_secs;
        let config = Config {
            interval: secs(1),
            signal_on_hup: Signal::term(),
            signal_on_term: Signal::term(),
            kill_timeout: Some(secs(20)),
            backoff: None,
            ready: Ready::Notify,
            ready_timeout: secs(90),
            watchdog: None,
            exe: None,
            workers: 2,
            name_slots: true,
            rolling: None,
            canary: None,
            log_format: Format::Plain,
        };
        let tunables = Tunables {
            auto_restart: None,
            kill_old_delay: Duration::ZERO,
        };
        let mut state = State::new(config, tunables);
        let at = |s: u64| Mono(s * 1_000_000);
        let worker = |pid, generation, s| Worker {
            pid,
            generation,
            spawned_at: at(s),
        };
        state.started_at = at(100);
        state.generation = 3;
        let serving = |w: Worker, s| Serving {
            worker: w,
            started_at: at(s),
            watchdog_at: None,
        };
        state.slots = vec![
            Slot {
                serving: Some(serving(worker(11, 1, 100), 101)),
                starting: Some(Attempt {
                    generation: 3,
                    worker: Some(worker(13, 3, 160)),
                    spawned_at: at(160),
                    until: at(250),
                    replacing: true,
                    probe: None,
                }),
                last_exit: Some(3 << 8),
                ..Slot::default()
            },
            Slot {
                serving: Some(serving(worker(12, 1, 130), 131)),
                refills: 1,
                last_exit: Some(libc::SIGKILL),
                ..Slot::default()
            },
        ];
        let retiring = Retiring {
            generation: 0,
            listed: true,
            kill: Some((at(170), secs(20))),
            signal_at: None,
        };
        state.old.insert(9, retiring);
        // Worker 8 of generation 0 exited at 120 s, leaving 21 running.
        state.leftovers.push(Leftover {
            worker: 8,
            generation: 0,
            since: at(120),
            kill: Some((at(220), secs(20))),
        });
        let origin = |pid, slot, s| Origin {
            pid,
            slot,
            spawned_at: at(s),
            retired_at: None,
            exe: Some(Exe {
                path: "/srv/app/server".into(),
                file: None,
            }),
        };
        state.origins = vec![
            origin(11, 0, 100),
            origin(12, 1, 130),
            origin(13, 0, 160),
            origin(9, 0, 50),
        ];
        state.last_restart = Some(LastRestart {
            began: at(150),
            after: 1,
            outcome: Some((at(155), 2, Some("exited with status 3".into()))),
        });
        state.upgrade = Some(Upgrade {
            began: at(158),
            clients: Vec::new(),
            phase: UpgradePhase::Checking { deadline: None },
        });
        let facts = Facts {
            pid: 7,
            version: "0.1.0",
            build: "git:abc",
            // 2026-12-05T13:29:30.000Z at 200 s.
            wall: secs(1_796_477_370),
            changed: vec![(11, Some(true)), (12, Some(false))],
            left: vec![(8, vec![21])],
        };
        let (serving, table) = render(&state, at(200), &facts, false);
        assert!(serving);
        let expected = [
            "start_server pid 7, version 0.1.0 (build git:abc), up 1m40s (upgrading)",
            "generations: 0 draining, 1 serving, 3 starting",
            "last restart: 2026-12-05T13:28:40.000Z, retrying (generation 2): exited with status 3",
            "upgrade in place: checking, since 2026-12-05T13:28:48.000Z",
            "      9     0     1  draining  2026-12-05T13:27:00.000Z        0     exit 3  /srv/app/server (cannot be read now)",
            "     11     1     1  ready     2026-12-05T13:27:51.000Z        0     exit 3  /srv/app/server (changed on disk)",
            "     12     1     2  ready     2026-12-05T13:28:21.000Z        1   signal 9  /srv/app/server",
            "     21     0     -  left      2026-12-05T13:28:10.000Z        -          -  -",
            "     13     3     1  starting  2026-12-05T13:28:50.000Z        0     exit 3  /srv/app/server (cannot be read now)",
        ];
        for line in expected {
            assert!(table.lines().any(|l| l == line), "{line:?} in\n{table}");
        }
        let (_, json) = render(&state, at(200), &facts, true);
        for part in [
            r#"{"version":1,"pid":7,"#,
            r#""state":"upgrading","serving":true,"#,
            r#""generations":[{"generation":0,"state":"draining"},{"generation":1,"state":"serving"},{"generation":3,"state":"starting"}]"#,
            r#"{"pid":12,"generation":1,"slot":2,"state":"ready","since":"2026-12-05T13:28:21.000Z","refills":1,"last_exit":{"signal":9},"executable":"/srv/app/server","executable_changed":false}"#,
            r#""last_restart":{"began":"2026-12-05T13:28:40.000Z","verdict":"retrying","generation":2,"at":"2026-12-05T13:28:45.000Z","reason":"exited with status 3"}"#,
            r#"{"pid":21,"generation":0,"slot":null,"state":"left","since":"2026-12-05T13:28:10.000Z","refills":null,"last_exit":null,"executable":null,"executable_changed":null}"#,
            r#""upgrade":{"began":"2026-12-05T13:28:48.000Z","phase":"checking"}}"#,
        ] {
            assert!(json.contains(part), "{part} in\n{json}");
        }
    }
}
