//! The loop: wait (until the state's next deadline), step, execute.

use std::time::Instant;

use crate::signals::{Events, Meaning};

use super::event::Event;
use super::executor::{now, Executor};
use super::state::State;

/// Runs until a stop has been handled and every worker has exited, or until
/// start_server gives up (an error). A fresh start has been fed `Event::Start`, a
/// resumed one `Event::Resumed`: the loop is the same.
pub fn run(state: &mut State, executor: &mut Executor, events: &Events) -> Result<(), String> {
    while !executor.exited {
        let next = state
            .next_deadline()
            .map(|d| Instant::now() + now().until(d));
        let deadline = next.into_iter().chain(executor.deadline()).min();
        let arrived = match events.wait(deadline, &executor.watched()) {
            Ok(arrived) => arrived,
            Err(e) => {
                // Blind from here on: at least leave no worker running.
                executor.feed(state, Event::Stop { sig: libc::SIGTERM });
                return Err(executor.give_up(format!("waiting for events failed: {e}")));
            }
        };
        // Exits first: a worker that is gone must be neither signalled nor declared
        // started.
        while let Some(exit) = executor.reap() {
            executor.feed(state, exit);
        }
        for r in arrived.ignored() {
            let (sig, pid) = (r.sig, r.pid);
            executor.feed(state, Event::Ignored { sig, pid });
        }
        for notice in executor.notifications(&arrived.readable) {
            executor.feed(state, notice);
        }
        for gone in executor.trees_gone(&arrived.readable) {
            executor.feed(state, gone);
        }
        let mut turn = Vec::new();
        turn.extend(arrived.stop().map(|sig| Event::Stop { sig }));
        if arrived.has(Meaning::Reopen) {
            turn.push(Event::Reopen);
        }
        // Standard signals do not queue: one upgrade for those read together.
        let mut upgrades = arrived.of(Meaning::Upgrade);
        turn.extend(
            upgrades
                .next()
                .map(|pid| Event::Upgrade { pid, client: None }),
        );
        if arrived.has(Meaning::Restart) {
            turn.push(Event::Restart);
        }
        for event in turn {
            executor.feed(state, event);
        }
        for request in executor.requests(&arrived.readable) {
            executor.feed(state, request);
        }
        executor.fire_timers();
        executor.feed(state, Event::Tick);
    }
    match executor.fatal.take() {
        Some(why) => Err(executor.give_up(why)),
        None => Ok(()),
    }
}
