//! The supervisor's timers: the one deadline the event loop sleeps until, and what
//! happens when it passes (a worker counts as started or is retried, the old workers
//! are signalled, lingering ones killed, a hung one replaced, auto-restart).

use std::time::Instant;

use super::{Hang, Supervisor};
use crate::log;
use crate::log_file::LogFile;
use crate::sys;

impl Supervisor<'_> {
    /// The next timer, if any: with none, the loop sleeps until a signal comes.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let attempt = self.attempt.as_ref().map(|a| a.until);
        let kill = self.old.values().filter_map(|o| o.kill.map(|k| k.0)).min();
        let logger = self.log_file.as_deref().and_then(LogFile::restart_at);
        [
            attempt,
            self.kill_old_at,
            self.auto_restart_at(),
            kill,
            self.watchdog_at,
            self.check_deadline(),
            logger,
            self.throttle.resume_at(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// With auto-restart on, when the current worker is due for replacement: once the
    /// interval has passed and no old worker remains, or at twice the interval anyway.
    /// (The original checks every second; this is a timer at the exact moment.)
    pub(super) fn auto_restart_at(&self) -> Option<Instant> {
        let interval = self.tunables.auto_restart?;
        let started = self.started_at?;
        if self.stopping
            || self.attempt.is_some()
            || self.kill_old_at.is_some()
            || self.current.is_none()
        {
            return None;
        }
        Some(if self.old.is_empty() {
            started + interval
        } else {
            started + interval * 2
        })
    }

    pub(super) fn fire_timers(&mut self, now: Instant) {
        if self.attempt.as_ref().is_some_and(|a| a.until <= now) {
            if let Some(attempt) = self.attempt.take() {
                match attempt.worker {
                    Some(worker) if self.settings.ready_notify => self.not_ready(worker, attempt),
                    Some(worker) => self.started(worker, attempt.replacing),
                    None => self.spawn(attempt.replacing),
                }
            }
        }
        if self.kill_old_at.is_some_and(|at| at <= now) {
            self.kill_old_at = None;
            self.kill_old_workers();
        }
        self.kill_lingering(now);
        self.check_overdue(now);
        if let Some(log_file) = self.log_file.as_deref_mut() {
            log_file.fire_timers(now);
        }
        if self.watchdog_at.is_some_and(|at| at <= now) {
            self.hung(Hang::Silent);
        }
        if self.hup_pending && self.attempt.is_none() && self.kill_old_at.is_none() {
            self.hup_pending = false;
            log!("received HUP, spawning a new worker");
            self.restart();
        } else if self.auto_restart_at().is_some_and(|at| at <= now) {
            let interval = log::seconds(self.tunables.auto_restart.unwrap_or_default());
            if self.old.is_empty() {
                log!("autorestart triggered (interval={interval})");
            } else {
                log!("autorestart triggered (forced, interval={interval})");
            }
            self.restart();
        }
    }

    /// SIGKILL for the signalled workers still running at their deadline
    /// (`--kill-timeout`, or `STOP_GRACE` for one that failed to start or hung).
    pub(super) fn kill_lingering(&mut self, now: Instant) {
        for (&pid, old) in self.old.iter_mut() {
            let Some((_, grace)) = old.kill.filter(|k| k.0 <= now) else {
                continue;
            };
            old.kill = None;
            log!(
                "worker {pid} still running {} secs after it was told to stop, sending KILL",
                log::seconds(grace)
            );
            if let Err(e) = sys::kill(pid, libc::SIGKILL) {
                log!("failed to send KILL to worker {pid}: {e}");
            }
        }
    }
}
