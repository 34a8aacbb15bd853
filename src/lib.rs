//! server_starter: the listening sockets a process inherited from `start_server`
//! (Server::Starter) or from systemd socket activation, for Rust
//! ([`listeners`]) and, through [`ffi`], for C (`include/server_starter.h`).
//!
//! Both APIs share one parser ([`parse`]). The `start_server` binary itself lives
//! in `src/bin/start_server/`.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod ffi;
pub mod listeners;
pub mod parse;
mod sys;

pub use listeners::{
    find, generation, listeners, Environment, Error, ErrorKind, Family, Listener, SocketType,
};

/// The header build.rs generated from `src/ffi.rs` for this build; the test
/// `header` compares it with the committed `include/server_starter.h`.
#[doc(hidden)]
pub const GENERATED_HEADER: &str = include_str!(concat!(env!("OUT_DIR"), "/server_starter.h"));

/// The README's Rust snippets, compiled as doc tests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
