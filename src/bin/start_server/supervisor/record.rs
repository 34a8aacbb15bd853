//! The supervisor's part of an upgrade's state, declared once: `record!` names every
//! field of `State` (and of the executor's `Services`) that crosses the exec, and both
//! the writing and the reading come from that one list. Its encoder destructures the
//! struct without `..`, so a field added to the struct but not to the list (as
//! persisted, or as `transient`) does not compile. Each top-level field is one record
//! of the state (`upgrade::state`'s format), named after the field; a nested value
//! takes its fields in order (`Persist`).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::time::Duration;

use crate::envdir::Tunables;
use crate::signals::Signal;
use crate::upgrade::state::{Cursor, Field, Reader, Writer};

use super::state::{
    Attempt, Client, Config, Mono, Newest, Phase, Retiring, Serving, State, Upgrade, UpgradePhase,
    Waiter, Worker,
};

/// A value written as one or more fields of a record, and read back from them.
pub trait Persist: Sized {
    fn put(&self, out: &mut Vec<Field>);
    fn take(c: &mut Cursor) -> Result<Self, String>;
}

/// A struct whose fields are written in order; `transient` fields are not handed over
/// and start from their `Default` in the next image.
macro_rules! persist {
    ($ty:ident { $($field:ident),* $(,)? } $(transient { $($skip:ident),* })?) => {
        impl Persist for $ty {
            fn put(&self, out: &mut Vec<Field>) {
                let $ty { $($field,)* $($($skip: _,)*)? } = self;
                $($field.put(out);)*
            }
            fn take(c: &mut Cursor) -> Result<Self, String> {
                Ok($ty {
                    $($field: Persist::take(c)?,)*
                    $($($skip: Default::default(),)*)?
                })
            }
        }
    };
}

/// A struct whose fields are each one record of the state, named after the field.
macro_rules! record {
    ($ty:ident { $($field:ident),* $(,)? }) => {
        impl $ty {
            pub fn save(&self, w: &mut Writer) {
                let $ty { $($field),* } = self;
                $(
                    let mut out = Vec::new();
                    $field.put(&mut out);
                    w.put(stringify!($field), &out);
                )*
            }
            pub fn read(r: &mut Reader) -> Result<Self, String> {
                Ok($ty {
                    $($field: {
                        let mut c = r.one(stringify!($field))?.cursor();
                        let value = Persist::take(&mut c)?;
                        c.finish()?;
                        value
                    },)*
                })
            }
        }
    };
}

record!(State {
    config,
    tunables,
    generation,
    newest,
    old,
    kill_old_at,
    phase,
    failures,
    failures_before_start,
    waiters,
    upgrade,
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
persist!(Attempt {
    worker,
    spawned_at,
    until,
    replacing,
    reloading,
});
persist!(Serving {
    worker,
    started_at,
    watchdog_at
});
persist!(Retiring {
    generation,
    listed,
    kill
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

impl Persist for Newest {
    fn put(&self, out: &mut Vec<Field>) {
        match self {
            Newest::None => out.push(Field::text("none")),
            Newest::Starting(attempt) => {
                out.push(Field::text("starting"));
                attempt.put(out);
            }
            Newest::Serving(serving) => {
                out.push(Field::text("serving"));
                serving.put(out);
            }
        }
    }
    fn take(c: &mut Cursor) -> Result<Self, String> {
        match String::take(c)?.as_str() {
            "none" => Ok(Newest::None),
            "starting" => Ok(Newest::Starting(Persist::take(c)?)),
            "serving" => Ok(Newest::Serving(Persist::take(c)?)),
            other => Err(format!("newest: {other:?} is not a phase")),
        }
    }
}

impl Persist for Phase {
    fn put(&self, out: &mut Vec<Field>) {
        out.push(Field::text(match self {
            Phase::Running => "running",
            Phase::RestartQueued => "restart-queued",
            Phase::Stopping => "stopping",
        }));
    }
    fn take(c: &mut Cursor) -> Result<Self, String> {
        match String::take(c)?.as_str() {
            "running" => Ok(Phase::Running),
            "restart-queued" => Ok(Phase::RestartQueued),
            "stopping" => Ok(Phase::Stopping),
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

macro_rules! number {
    ($($ty:ty),*) => {$(
        impl Persist for $ty {
            fn put(&self, out: &mut Vec<Field>) {
                out.push(Field::num(self));
            }
            fn take(c: &mut Cursor) -> Result<Self, String> {
                c.next(|f, i| f.num(i))
            }
        }
    )*};
}
number!(u32, u64, i32);

impl Persist for bool {
    fn put(&self, out: &mut Vec<Field>) {
        out.push(Field::flag(*self));
    }
    fn take(c: &mut Cursor) -> Result<Self, String> {
        c.next(|f, i| f.flag(i))
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

impl Persist for Duration {
    fn put(&self, out: &mut Vec<Field>) {
        out.push(Field::duration(*self));
    }
    fn take(c: &mut Cursor) -> Result<Self, String> {
        c.next(|f, i| f.duration(i))
    }
}

impl Persist for String {
    fn put(&self, out: &mut Vec<Field>) {
        out.push(Field::text(self));
    }
    fn take(c: &mut Cursor) -> Result<Self, String> {
        c.next(|f, i| f.text(i))
    }
}

impl Persist for OsString {
    fn put(&self, out: &mut Vec<Field>) {
        out.push(Field::bytes(self.as_bytes()));
    }
    fn take(c: &mut Cursor) -> Result<Self, String> {
        c.next(|f, i| f.bytes(i)).map(OsString::from_vec)
    }
}

impl Persist for PathBuf {
    fn put(&self, out: &mut Vec<Field>) {
        self.as_os_str().to_owned().put(out);
    }
    fn take(c: &mut Cursor) -> Result<Self, String> {
        OsString::take(c).map(PathBuf::from)
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

impl<T: Persist> Persist for Option<T> {
    fn put(&self, out: &mut Vec<Field>) {
        match self {
            None => out.push(Field::none()),
            Some(value) => {
                out.push(Field::some());
                value.put(out);
            }
        }
    }
    fn take(c: &mut Cursor) -> Result<Self, String> {
        match c.present()? {
            false => Ok(None),
            true => T::take(c).map(Some),
        }
    }
}

impl<T: Persist> Persist for Vec<T> {
    fn put(&self, out: &mut Vec<Field>) {
        out.push(Field::num(self.len()));
        self.iter().for_each(|item| item.put(out));
    }
    fn take(c: &mut Cursor) -> Result<Self, String> {
        let len: usize = c.next(|f, i| f.num(i))?;
        (0..len).map(|_| T::take(c)).collect()
    }
}

impl<K: Persist + Ord, V: Persist> Persist for BTreeMap<K, V> {
    fn put(&self, out: &mut Vec<Field>) {
        out.push(Field::num(self.len()));
        for (key, value) in self {
            key.put(out);
            value.put(out);
        }
    }
    fn take(c: &mut Cursor) -> Result<Self, String> {
        let len: usize = c.next(|f, i| f.num(i))?;
        (0..len).map(|_| Ok((K::take(c)?, V::take(c)?))).collect()
    }
}

impl<A: Persist, B: Persist> Persist for (A, B) {
    fn put(&self, out: &mut Vec<Field>) {
        self.0.put(out);
        self.1.put(out);
    }
    fn take(c: &mut Cursor) -> Result<Self, String> {
        Ok((A::take(c)?, B::take(c)?))
    }
}

impl<A: Persist, B: Persist, C: Persist> Persist for (A, B, C) {
    fn put(&self, out: &mut Vec<Field>) {
        self.0.put(out);
        self.1.put(out);
        self.2.put(out);
    }
    fn take(c: &mut Cursor) -> Result<Self, String> {
        Ok((A::take(c)?, B::take(c)?, C::take(c)?))
    }
}
