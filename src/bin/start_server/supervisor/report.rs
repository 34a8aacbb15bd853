//! `start_server --status`: what the state says, as a table or as JSON. A pure
//! function of the state, the time (`now`) and what only the executor can know
//! (`Facts`): no system call here.
//!
//! The JSON document's schema is start_server(1)'s (STATUS); its `version` changes only
//! when a field changes meaning or goes away (new fields may be added).

use std::time::Duration;

use crate::log::{self, json_string};
use crate::sys::Pid;

use super::state::{Mono, Phase, State, UpgradePhase};

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
}

/// One worker, as the report shows it.
struct Row<'a> {
    pid: Pid,
    generation: u64,
    state: &'static str,
    since: Mono,
    exe: Option<(&'a std::path::Path, Option<bool>)>,
}

/// Whether a started generation serves: what `--status` exits 0 for. During a restart
/// the previous generation does, until the new one has started; a stopping
/// start_server serves no more.
pub fn serving(state: &State) -> bool {
    let previous = state.attempt().is_some() && state.old.values().any(|o| o.listed);
    !state.stopping() && (state.serving().is_some() || previous)
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
        let exe = |pid: Pid| {
            s.exes.get(&pid).map(|exe| {
                let changed = self.facts.changed.iter().find(|c| c.0 == pid);
                (exe.path.as_path(), changed.and_then(|c| c.1))
            })
        };
        let mut rows = Vec::new();
        let stopping = s.stopping();
        // Old workers not yet told to stop serve on while a restart is under way.
        let restarting = s.restarting();
        for (&pid, old) in &s.old {
            let state = match !stopping && restarting && old.listed && old.kill.is_none() {
                true => "ready",
                false => "draining",
            };
            let since = s.last_restart.as_ref().map_or(s.started_at, |r| r.began);
            rows.push(Row {
                pid,
                generation: old.generation,
                state,
                since,
                exe: exe(pid),
            });
        }
        if let Some(attempt) = s.attempt() {
            if let Some(worker) = attempt.worker {
                rows.push(Row {
                    pid: worker.pid,
                    generation: worker.generation,
                    state: "starting",
                    since: worker.spawned_at,
                    exe: exe(worker.pid),
                });
            }
        }
        if let Some(serving) = s.serving() {
            rows.push(Row {
                pid: serving.worker.pid,
                generation: serving.worker.generation,
                state: "ready",
                since: serving.started_at,
                exe: exe(serving.worker.pid),
            });
        }
        rows.sort_by_key(|r| (r.generation, r.pid));
        rows
    }

    /// Each generation with a worker, oldest first, and its state: starting, serving
    /// (a worker ready) or draining.
    fn generations(&self, rows: &[Row]) -> Vec<(u64, &'static str)> {
        let mut out: Vec<(u64, &'static str)> = Vec::new();
        for row in rows {
            let state = match row.state {
                "ready" => "serving",
                other => other,
            };
            match out.last_mut() {
                Some(last) if last.0 == row.generation => {
                    if state == "serving" {
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
        let attempt = self.state.attempt()?;
        attempt.worker.is_none().then_some(attempt.until)
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
            (
                "ready",
                if c.ready_notify { "notify" } else { "interval" }.into(),
            ),
            ("signal-on-hup", c.signal_on_hup.name.clone()),
            ("signal-on-term", c.signal_on_term.name.clone()),
            ("kill-old-delay", secs(t.kill_old_delay)),
        ];
        if c.ready_notify {
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
        out += &format!(
            "refills: {}, last exit status: {}\n",
            s.refills,
            s.last_exit.map_or("-".into(), |e| e.to_string())
        );
        out += "\n    PID   GEN  SLOT  STATE     SINCE                     EXECUTABLE\n";
        for row in &rows {
            let exe = match row.exe {
                None => "-".to_string(),
                Some((path, Some(true))) => format!("{} (changed on disk)", path.display()),
                Some((path, None)) => format!("{} (cannot be read now)", path.display()),
                Some((path, Some(false))) => path.display().to_string(),
            };
            out += &format!(
                "{:>7} {:>5} {:>5}  {:<9} {:<25} {exe}\n",
                row.pid,
                row.generation,
                0,
                row.state,
                self.time(row.since)
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
                object(&[
                    ("pid", row.pid.to_string()),
                    ("generation", row.generation.to_string()),
                    ("slot", "0".into()),
                    ("state", text(row.state)),
                    ("since", text(&self.time(row.since))),
                    ("refills", s.refills.to_string()),
                    ("last_exit_status", number(s.last_exit)),
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
            ("refills", s.refills.to_string()),
            ("last_exit_status", number(s.last_exit)),
            ("last_restart", last_restart),
            ("next_try", at(self.next_try())),
            ("next_auto_restart", at(s.auto_restart_at())),
            ("upgrade", upgrade),
        ]);
        out.push('\n');
        out
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
