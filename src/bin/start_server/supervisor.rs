//! The supervisor, as a sans-IO core and its executor:
//!
//! - `state`: what it knows, as plain data (generations, workers and their phases,
//!   what is under way, deadlines, waiting clients);
//! - `event`: what happens to it (a signal, a child's exit, a notification, a control
//!   request, the end of a turn with its due deadlines, the answer to an effect);
//! - `step`: what each event leads to, with no system call and no clock; `roll`, its
//!   restarts (all at once, `--rolling`, `--canary` and its rollback);
//! - `effect`: what `step` asks for (spawn, signal, write the status file, reply, tell
//!   the service manager, log, exec the new image, exit);
//! - `executor`: carries the effects out, owns every descriptor, reads the events;
//! - `run`: the loop: wait, step, execute;
//! - `report`: `--status`'s answer, rendered from the state;
//! - `record`: the state handed to a new image on an upgrade in place, declared once.

mod effect;
mod event;
mod executor;
mod record;
mod report;
mod roll;
mod run;
#[cfg(test)]
mod sim;
mod state;
mod step;

pub use event::Event;
pub use executor::Executor;
pub use record::Services;
pub use run::run;
pub use state::{Config, Ready, State};
