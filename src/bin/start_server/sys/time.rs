//! Clocks and the kernel's time format.

use std::mem;
use std::time::Duration;

pub(super) fn timespec(t: Duration) -> libc::timespec {
    libc::timespec {
        // Capped at 68 years, which fits time_t on every target.
        tv_sec: t.as_secs().min(i32::MAX as u64) as _,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    }
}

/// CLOCK_MONOTONIC in microseconds, as systemd's MONOTONIC_USEC wants it.
pub fn monotonic_usec() -> u64 {
    // SAFETY: timespec is plain data, filled in by clock_gettime.
    let mut ts: libc::timespec = unsafe { mem::zeroed() };
    // SAFETY: a valid clock id and a writable timespec; it cannot fail then.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}
