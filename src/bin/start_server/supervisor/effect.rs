//! What `step` asks the executor to do. Each is carried out in order; one whose result
//! matters to the supervisor (a spawn, the upgrade check, the exec) is answered with an
//! event, fed to `step` at once. Deadlines are not effects: they are in the state, and
//! the executor sleeps until `State::next_deadline`.

use std::os::raw::c_int;

use crate::envdir::Tunables;
use crate::signals::Signal;
use crate::sys::Pid;

use super::state::Client;

#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// One line of start_server's log.
    Log(String),
    /// Spawn a worker of `generation` in `slot` (0-based), its environment read afresh
    /// (`tunables` are kept if --envdir cannot be read): answered with
    /// `Event::Spawned`.
    Spawn {
        generation: u64,
        tunables: Tunables,
        slot: usize,
    },
    /// Send `signal` to the worker `pid` (a failure is logged, naming the worker).
    Signal { pid: Pid, signal: Signal },
    /// The status file lists exactly these workers, as (generation, pid).
    WriteStatus(Vec<(u64, Pid)>),
    /// Answer a `--restart` or `--upgrade` client.
    Reply { to: Client, text: String },
    /// Tell the service manager, if there is one.
    Manager(Tell),
    /// USR1: open the log file anew.
    ReopenLog,
    /// Run the binary at start_server's path as `--upgrade-check`: answered with
    /// `Event::CheckSpawned`, then `Event::Checked` once it has exited.
    SpawnCheck,
    /// SIGKILL for the check; `forget`: nothing waits for its verdict any more.
    KillCheck { forget: bool },
    /// Execute the checked binary with this state: answered with `Event::ExecFailed`
    /// only if it could not be done.
    Exec { version: String },
    /// Every worker is gone after a stop: remove the status file and return.
    Exit,
    /// Tell `--daemonize`'s launcher how generation 1 went.
    Launcher(Report),
    /// Give up, with this error, at the end of this turn (generation 1's command cannot
    /// be executed).
    GiveUp(String),
}

/// What `--daemonize`'s launcher hears.
#[derive(Clone, Debug, PartialEq)]
pub enum Report {
    Started,
    /// Generation `generation` failed to start, `why`; start_server goes on trying.
    Failed {
        generation: u64,
        why: String,
    },
}

/// What the service manager is told (sd_notify).
#[derive(Clone, Debug, PartialEq)]
pub enum Tell {
    Ready(String),
    Reloading(String),
    Stopping,
}

/// How a spawn went, for `Event::Spawned`.
#[derive(Clone, Debug, PartialEq)]
pub enum Spawned {
    /// The child exists and will be reaped; `exec_error` says why it could not become
    /// the server, `unexecutable` that no retry can help (no such file, ...).
    Child {
        pid: Pid,
        exec_error: Option<String>,
        unexecutable: bool,
    },
    /// No notification socket could be made for it: no child.
    NoChannel(String),
    /// fork (or the pipe before it) failed: no child.
    Failed(String),
}

/// A raw wait status.
pub type Status = c_int;
