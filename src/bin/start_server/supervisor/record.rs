//! The supervisor's part of an upgrade's state, declared once (`upgrade::record`):
//! every field of `State` and of the executor's `Services`.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::envdir::Tunables;
use crate::signals::Signal;
use crate::upgrade::record::{persist, record, Persist};
use crate::upgrade::state::{Cursor, Field};

use super::state::{
    Attempt, Client, Config, Mono, Phase, Retiring, Roll, Serving, Slot, State, Upgrade,
    UpgradePhase, Waiter, Worker,
};

record!(State {
    config,
    tunables,
    generation,
    slots,
    old,
    kill_old_at,
    phase,
    roll,
    waiters,
    upgrade,
} transient {
    launcher
});
persist!(Config {
    interval,
    signal_on_hup,
    signal_on_term,
    kill_timeout,
    backoff,
    ready_notify,
    ready_timeout,
    watchdog,
    exe,
    workers,
    name_slots,
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
});
persist!(Attempt {
    generation,
    worker,
    spawned_at,
    until,
    replacing,
});
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
    reloading
});
persist!(Waiter { to, after });
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
});

// ---------------------------------------------------------------- enums

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
        };
        let mut w = Writer::new();
        services.save(&mut w);
        let text = w.finish();
        let mut r = Reader::parse(text.as_bytes()).unwrap();
        assert_eq!(Services::read(&mut r).unwrap(), services, "{text}");
        r.finish().unwrap();
    }
}
