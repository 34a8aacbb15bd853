//! server_starter: the listening sockets a process inherited from `start_server`
//! (or from systemd socket activation), for Rust and, through `ffi`, for C.
//!
//! The `start_server` binary itself lives in `src/bin/start_server/`.

pub mod ffi;
