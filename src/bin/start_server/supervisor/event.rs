//! What happens to the supervisor, one event at a time: read from the one event wait
//! (signals, exits, notifications, control requests, the end of a turn with its due
//! deadlines), or the executor's answer to an effect (a spawn, the upgrade check, an
//! exec that failed).

use crate::control_socket::Ask;
use crate::envdir::Tunables;
use crate::notify::Said;
use crate::sys::Pid;

use super::effect::{Spawned, Status};
use super::state::Client;

#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The first generation is to be spawned (a fresh start, not a resumed one).
    Start,
    /// A child exited (not the logger, not the upgrade check).
    Exited { pid: Pid, status: Status },
    /// A signal start_server does not act on, from `pid`.
    Ignored { sig: i32, pid: Pid },
    /// A worker `pid` said something on its notification socket, through `sender`.
    Notified { pid: Pid, sender: Pid, said: Said },
    /// TERM, INT, QUIT, ABRT, XCPU (or the event wait failed: TERM).
    Stop { sig: i32 },
    /// USR1.
    Reopen,
    /// USR2 from `pid` (`client: None`), or an `--upgrade` client's request.
    Upgrade { pid: Pid, client: Option<Client> },
    /// HUP.
    Restart,
    /// A control socket request from `pid`, answered at `from`.
    Request { pid: Pid, from: Client, ask: Ask },
    /// The end of a turn of the loop: the deadlines due at `now` fire, then an upgrade
    /// that passed its check is executed.
    Tick,
    /// The answer to `Effect::Spawn` for `slot`: the settings read from the
    /// environment (`None` if they could not be), and the child.
    Spawned {
        slot: usize,
        tunables: Option<Tunables>,
        spawned: Spawned,
    },
    /// The answer to `Effect::SpawnCheck`: `Err(why)` if it could not be started.
    CheckSpawned(Result<(), String>),
    /// The check exited: the version the new binary said, or why it is refused.
    Checked(Result<String, String>),
    /// The answer to `Effect::Exec` when the exec did not happen: why.
    ExecFailed(String),
    /// A new image took the state over (`refused`: no, the previous image is back,
    /// because the new one could not restore it): the first event after an upgrade.
    Resumed {
        from: String,
        refused: Option<String>,
    },
}
