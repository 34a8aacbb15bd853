//! The supervisor's part of an upgrade's state, declared once (`upgrade::record`):
//! every field of `State` and of the executor's `Services`.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::envdir::Tunables;
use crate::log::Format;
use crate::signals::Signal;
use crate::tree::Tree;
use crate::upgrade::record::{persist, record, Persist};
use crate::upgrade::state::{Cursor, Field};

use super::state::{
    Attempt, Canary, Client, Config, Exe, FileId, LastRestart, Leftover, Mono, Origin, Phase,
    Probing, Ready, Retiring, Roll, Serving, Slot, State, Upgrade, UpgradePhase, Waiter, Worker,
};

record!(State {
    config,
    tunables,
    generation,
    slots,
    old,
    leftovers,
    kill_old_at,
    phase,
    roll,
    waiters,
    upgrade,
    started_at,
    last_restart,
    origins,
} transient {
    launcher
});
persist!(Config {
    interval,
    signal_on_hup,
    signal_on_term,
    kill_timeout,
    backoff,
    ready,
    ready_timeout,
    watchdog,
    exe,
    workers,
    name_slots,
    log_format,
    rolling,
    canary,
});
persist!(Tunables {
    auto_restart,
    kill_old_delay
});
persist!(Signal { name, number });
persist!(Worker {
    pid,
    generation,
    spawned_at
});
persist!(Slot {
    serving,
    starting,
    failures,
    failures_before_start,
    refills,
    last_exit,
});
persist!(Attempt {
    generation,
    worker,
    spawned_at,
    until,
    replacing,
    probe,
});
persist!(Probing { at, pause });
persist!(Serving {
    worker,
    started_at,
    watchdog_at
});
persist!(Retiring {
    generation,
    listed,
    kill,
    signal_at,
});
persist!(Roll {
    generation,
    reloading,
    canary
});
persist!(Leftover {
    worker,
    generation,
    since,
    kill
});
persist!(Waiter { to, after });
persist!(Origin {
    pid,
    slot,
    spawned_at,
    retired_at,
    exe
});
persist!(Exe { path, file });
persist!(FileId { dev, ino, mtime });
persist!(LastRestart {
    began,
    after,
    outcome
});
persist!(Upgrade {
    began,
    clients,
    phase
});

/// The executor's part: plain data naming its descriptors, which the next image takes
/// over.
#[derive(Clone, Debug, PartialEq)]
pub struct Services {
    /// The server command: its arguments, directory, and the variables set to each
    /// worker's own pid.
    pub argv: Vec<String>,
    pub dir: Option<PathBuf>,
    pub own_pid_vars: Vec<String>,
    /// SERVER_STARTER_PORT's value, and systemd's variables for the workers
    /// (`WorkerVars`: whether `LISTEN_*` are stripped, and what is set).
    pub port_env: String,
    pub listen_strip: bool,
    pub listen_set: Vec<(OsString, OsString)>,
    /// The status file's path, and whether this instance has written it.
    pub status_file: Option<(PathBuf, bool)>,
    /// The control socket, and each worker's notification socket with its address.
    pub control: Option<i32>,
    pub channels: Vec<(i32, i32, String)>,
    /// The service manager's socket.
    pub manager: Option<OsString>,
    /// The cgroup subtree start_server made (cgroup mode), and each worker's process
    /// tree.
    pub cgroups: Option<PathBuf>,
    pub trees: Vec<Tree>,
}

record!(Services {
    argv,
    dir,
    own_pid_vars,
    port_env,
    listen_strip,
    listen_set,
    status_file,
    control,
    channels,
    manager,
    cgroups,
    trees,
});
persist!(Tree {
    pid,
    generation,
    alive,
    cgroup,
    seen,
} transient {
    last
});

// ---------------------------------------------------------------- enums

impl Persist for Canary {
    fn put(&self, out: &mut Vec<Field>) {
        match self {
            Canary::Passed => out.push(Field::text("passed")),
            Canary::Starting(attempt) => {
                out.push(Field::text("starting"));
                attempt.put(out);
            }
            Canary::Trial { serving, until } => {
                out.push(Field::text("trial"));
                serving.put(out);
                until.put(out);
            }
        }
    }
    fn take(c: &mut Cursor) -> Result<Self, String> {
        match String::take(c)?.as_str() {
            "passed" => Ok(Canary::Passed),
            "starting" => Ok(Canary::Starting(Persist::take(c)?)),
            "trial" => Ok(Canary::Trial {
                serving: Persist::take(c)?,
                until: Persist::take(c)?,
            }),
            other => Err(format!("canary: {other:?} is not a phase")),
        }
    }
}

impl Persist for Ready {
    fn put(&self, out: &mut Vec<Field>) {
        out.push(Field::text(self.name()));
    }
    fn take(c: &mut Cursor) -> Result<Self, String> {
        let name = String::take(c)?;
        let rules = [Ready::Interval, Ready::Notify, Ready::Listening];
        match rules.into_iter().find(|r| r.name() == name) {
            Some(rule) => Ok(rule),
            None => Err(format!("ready: {name:?} is not a readiness rule")),
        }
    }
}

impl Persist for Phase {
    fn put(&self, out: &mut Vec<Field>) {
        out.push(Field::text(match self {
            Phase::Running => "running",
            Phase::RestartQueued => "restart-queued",
            Phase::Stopping => "stopping",
            Phase::GaveUp => "gave-up",
        }));
    }
    fn take(c: &mut Cursor) -> Result<Self, String> {
        match String::take(c)?.as_str() {
            "running" => Ok(Phase::Running),
            "restart-queued" => Ok(Phase::RestartQueued),
            "stopping" => Ok(Phase::Stopping),
            "gave-up" => Ok(Phase::GaveUp),
            other => Err(format!("phase: {other:?} is not a phase")),
        }
    }
}

impl Persist for UpgradePhase {
    fn put(&self, out: &mut Vec<Field>) {
        match self {
            UpgradePhase::Checking { deadline } => {
                out.push(Field::text("checking"));
                deadline.put(out);
            }
            UpgradePhase::Passed { version } => {
                out.push(Field::text("passed"));
                version.put(out);
            }
            UpgradePhase::Executing => out.push(Field::text("executing")),
        }
    }
    fn take(c: &mut Cursor) -> Result<Self, String> {
        match String::take(c)?.as_str() {
            "checking" => Ok(UpgradePhase::Checking {
                deadline: Persist::take(c)?,
            }),
            "passed" => Ok(UpgradePhase::Passed {
                version: Persist::take(c)?,
            }),
            "executing" => Ok(UpgradePhase::Executing),
            other => Err(format!("upgrade: {other:?} is not a phase")),
        }
    }
}

// ---------------------------------------------------------------- plain values

impl Persist for Format {
    fn put(&self, out: &mut Vec<Field>) {
        out.push(Field::text(self.name()));
    }
    fn take(c: &mut Cursor) -> Result<Self, String> {
        let name = String::take(c)?;
        Format::parse(&name).ok_or_else(|| format!("log format: {name:?} is not one"))
    }
}

impl Persist for Mono {
    fn put(&self, out: &mut Vec<Field>) {
        self.0.put(out);
    }
    fn take(c: &mut Cursor) -> Result<Self, String> {
        u64::take(c).map(Mono)
    }
}

impl Persist for Client {
    fn put(&self, out: &mut Vec<Field>) {
        out.push(Field::bytes(&self.0));
    }
    fn take(c: &mut Cursor) -> Result<Self, String> {
        c.next(|f, i| f.bytes(i)).map(Client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upgrade::state::{Reader, Writer};
    use std::time::Duration;

    /// A deadline as far off as `EXTEND_TIMEOUT_USEC=18446744073709551615` (systemd's
    /// infinity) is the farthest one, never wrapped into the past, and crosses as it is.
    #[test]
    fn far_deadlines_saturate() {
        let far = Mono(1_000_000).after(Duration::MAX);
        assert_eq!(far, Mono(u64::MAX));
        let mut out = Vec::new();
        Some(far).put(&mut out);
        let mut w = Writer::new();
        w.put("at", &out);
        let text = w.finish();
        let mut r = Reader::parse(text.as_bytes()).unwrap();
        let mut c = r.one("at").unwrap().cursor();
        let back: Option<Mono> = Persist::take(&mut c).unwrap();
        assert_eq!(back, Some(far), "{text}");
    }

    /// A state with four workers mid-roll (`--rolling=2 --canary`): two slots with a
    /// new worker serving, one whose replacement is starting beside its old worker,
    /// one still to roll, an old worker waiting out `--kill-old-delay`, another
    /// signalled, crosses an upgrade as it is (the simulation round-trips states at
    /// random points too).
    #[test]
    fn a_rolling_restart_round_trips() {
        let worker = |pid, generation| Worker {
            pid,
            generation,
            spawned_at: Mono(1_000 + pid as u64),
        };
        let serving = |pid, generation| Serving {
            worker: worker(pid, generation),
            started_at: Mono(2_000 + pid as u64),
            watchdog_at: Some(Mono(9_000)),
        };
        let config = Config {
            interval: Duration::from_millis(500),
            signal_on_hup: Signal::parse("QUIT").unwrap(),
            signal_on_term: Signal::term(),
            kill_timeout: Some(Duration::from_secs(3)),
            backoff: None,
            ready: Ready::Listening,
            ready_timeout: Duration::from_secs(90),
            watchdog: Some(Duration::from_secs(2)),
            exe: Some("/usr/bin/start_server".into()),
            workers: 4,
            name_slots: true,
            rolling: Some(2),
            canary: Some(Duration::from_secs(10)),
            log_format: Format::Json,
        };
        let tunables = Tunables {
            auto_restart: None,
            kill_old_delay: Duration::from_secs(1),
        };
        let mut state = State::new(config, tunables);
        state.generation = 8;
        let starting = Attempt {
            generation: 8,
            worker: Some(worker(107, 8)),
            spawned_at: Mono(5_000),
            until: Mono(95_000),
            replacing: true,
            probe: Some(Probing {
                at: Mono(5_004),
                pause: Duration::from_millis(4),
            }),
        };
        state.slots = vec![
            Slot {
                serving: Some(serving(105, 7)),
                ..Slot::default()
            },
            Slot {
                serving: Some(serving(106, 7)),
                failures: 1,
                failures_before_start: 2,
                ..Slot::default()
            },
            Slot {
                serving: Some(Serving {
                    watchdog_at: None,
                    ..serving(103, 6)
                }),
                starting: Some(starting),
                failures: 3,
                ..Slot::default()
            },
            Slot {
                serving: Some(serving(104, 6)),
                ..Slot::default()
            },
        ];
        let retiring = |kill, signal_at| Retiring {
            generation: 6,
            listed: true,
            kill,
            signal_at,
        };
        let kill = Some((Mono(8_000), Duration::from_secs(3)));
        state.old.insert(101, retiring(None, Some(Mono(6_000))));
        state.old.insert(102, retiring(kill, None));
        state.roll = Some(Roll {
            generation: 7,
            reloading: false,
            canary: Canary::Passed,
        });
        state.waiters.push(Waiter {
            to: Client(b"\0client".to_vec()),
            after: 6,
        });
        let mut w = Writer::new();
        state.save(&mut w);
        let text = w.finish();
        let mut r = Reader::parse(text.as_bytes()).unwrap();
        assert_eq!(State::read(&mut r).unwrap(), state, "{text}");
        r.finish().unwrap();
        // A canary on trial, and one being started, too.
        for canary in [
            Canary::Trial {
                serving: serving(108, 9),
                until: Mono(20_000),
            },
            Canary::Starting(Attempt {
                generation: 9,
                worker: None,
                spawned_at: Mono(7_000),
                until: Mono(7_000),
                replacing: true,
                probe: None,
            }),
        ] {
            state.roll.as_mut().unwrap().canary = canary;
            let mut w = Writer::new();
            state.save(&mut w);
            let text = w.finish();
            let mut r = Reader::parse(text.as_bytes()).unwrap();
            assert_eq!(State::read(&mut r).unwrap(), state, "{text}");
        }
    }

    /// The states themselves are round-tripped by the simulation (`sim`), at random
    /// points; the services, every field filled, here.
    #[test]
    fn services_round_trip() {
        let services = Services {
            argv: vec![
                "sh".into(),
                "-c".into(),
                "exec ./server --name 'a b'".into(),
            ],
            dir: Some("/srv/app dir".into()),
            own_pid_vars: vec!["LISTEN_PID".into(), "WATCHDOG_PID".into()],
            port_env: "127.0.0.1:8080=3;/tmp/app.sock=4".into(),
            listen_strip: true,
            listen_set: vec![("LISTEN_FDS".into(), "2".into())],
            status_file: Some(("/run/app.status".into(), true)),
            control: Some(7),
            channels: vec![(4242, 8, "@00001".into()), (4243, 9, "@0000a".into())],
            manager: Some(OsString::from("/run/systemd/notify")),
            cgroups: Some("/sys/fs/cgroup/unified/s".into()),
            trees: vec![
                Tree {
                    pid: 4242,
                    generation: 3,
                    alive: false,
                    cgroup: Some("/sys/fs/cgroup/unified/s/generation-3.1".into()),
                    seen: vec![],
                    last: false,
                },
                Tree {
                    pid: 4243,
                    generation: 4,
                    alive: true,
                    cgroup: None,
                    seen: vec![4250, 4251],
                    last: false,
                },
            ],
        };
        let mut w = Writer::new();
        services.save(&mut w);
        let text = w.finish();
        let mut r = Reader::parse(text.as_bytes()).unwrap();
        assert_eq!(Services::read(&mut r).unwrap(), services, "{text}");
        r.finish().unwrap();
    }
}
