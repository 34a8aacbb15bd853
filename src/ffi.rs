//! The C ABI of libserver_starter. cbindgen turns this file into
//! `include/server_starter.h`.

use std::os::raw::c_char;

/// Version of the library, as numbers (also in `server_starter_version()`).
pub const SERVER_STARTER_VERSION_MAJOR: i32 = 0;
pub const SERVER_STARTER_VERSION_MINOR: i32 = 1;
pub const SERVER_STARTER_VERSION_PATCH: i32 = 0;

/// The library's version as a NUL-terminated string, e.g. "0.1.0". Never NULL.
#[no_mangle]
pub extern "C" fn server_starter_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
