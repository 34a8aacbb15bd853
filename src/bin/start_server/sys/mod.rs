//! Thin wrappers over the libc calls start_server makes, one module per topic. Every
//! `unsafe` block of the binary lives under here, each with the reason it is sound;
//! the rest of the code sees safe functions returning `io::Result` (the crate denies
//! `unsafe` everywhere else). A function whose caller must keep a promise for it to be
//! sound is an `unsafe fn` with a `# Safety` section, and is called only from here.
//!
//! The items are re-exported flat (`crate::sys::kill`), so that callers need not know
//! which topic a call belongs to.

/// cgroup v2, called by topic (`sys::cgroup::create`): its names are generic.
pub mod cgroup;
mod child;
mod fd;
mod proc;
mod process;
mod signal;
mod socket;
mod time;

use std::io;
use std::os::raw::c_int;

pub use child::{spawn, CStrArray, ChildSpec, Program, SpawnError, Stage};
pub use fd::*;
pub use proc::*;
pub use process::*;
pub use signal::*;
pub use socket::*;
pub use time::*;

pub type Pid = libc::pid_t;

fn check(ret: c_int) -> io::Result<c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn errno() -> c_int {
    // SAFETY: __errno_location returns this thread's errno slot, always valid.
    unsafe { *libc::__errno_location() }
}
