//! server_starter: the listening sockets a process inherited from `start_server`
//! (Server::Starter) or from systemd socket activation, for Rust
//! ([`listeners`](mod@listeners)) and, through [`ffi`], for C (`include/server_starter.h`).
//!
//! Both APIs share one parser ([`parse`]), and both send the supervisor
//! `sd_notify(3)` messages such as `READY=1` ([`notify()`] in Rust,
//! `server_starter_notify` in C). The `start_server` binary itself lives
//! in `src/bin/start_server/`.
//!
//! The Rust API needs the `std` feature (on by default). Without it the crate is
//! `no_std`, needing only core and libc: that is how the C library is built
//! (`make lib`), so that it carries none of std's panic and backtrace machinery.

#![cfg_attr(not(feature = "std"), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
// Unsafe code lives in `sys` (the libc calls) and `ffi` (the C ABI) alone.
#![deny(unsafe_code)]

#[allow(unsafe_code)]
pub mod ffi;
#[cfg(feature = "std")]
pub mod listeners;
mod notify;
pub mod parse;
mod query;
#[allow(unsafe_code)]
mod sys;

#[cfg(feature = "std")]
pub use listeners::{
    find, generation, listeners, Environment, Error, Family, Listener, SocketType,
};
#[cfg(feature = "std")]
pub use notify::{notify, notify_to};
pub use parse::ErrorKind;

/// Without std, a panic aborts the process. The C API is written not to panic
/// (no indexing, unwrapping or overflowing arithmetic on its paths), so this is
/// never reached.
#[cfg(all(not(feature = "std"), not(test)))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    sys::abort()
}

// Without std nothing links libc, whose functions the library calls (getenv,
// getsockname, ...): the shared library must name it (`NEEDED libc.so.6`) to
// be loadable wherever libc is not already there.
#[cfg(not(feature = "std"))]
#[link(name = "c")]
extern "C" {}

/// The header build.rs generated from `src/ffi.rs` for this build; the test
/// `header` compares it with the committed `include/server_starter.h`.
#[doc(hidden)]
pub const GENERATED_HEADER: &str = include_str!(concat!(env!("OUT_DIR"), "/server_starter.h"));

/// The README's Rust snippets, compiled as doc tests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
