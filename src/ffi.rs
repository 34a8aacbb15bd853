//! The C ABI of libserver_starter. cbindgen turns this file into
//! `include/server_starter.h`; the doc comments become the header's comments.
//!
//! Every function checks its pointers for NULL, never allocates, never reads past
//! a C string or writes past `cap` entries, and runs inside a panic boundary
//! (release builds abort on panic anyway, and the code is written not to panic).
//! It needs only core and libc: the C library is built without std.

#![allow(non_camel_case_types)]

use core::ffi::{c_char, c_int, c_long, CStr};

use crate::notify;
use crate::parse::{self, Entry, ErrorKind, Source, Vars};
use crate::query::{self, Checked};
use crate::sys;

/// Version of the library, as numbers (also in `server_starter_version()` and
/// `SERVER_STARTER_VERSION_STRING`).
pub const SERVER_STARTER_VERSION_MAJOR: i32 = 0;
pub const SERVER_STARTER_VERSION_MINOR: i32 = 1;
pub const SERVER_STARTER_VERSION_PATCH: i32 = 0;

/// Size of `server_starter_listener.name`, terminating NUL included: enough for
/// any unix socket path (108 bytes) and any DNS host name (253) with brackets
/// and a port. Longer names are rejected with `SERVER_STARTER_ENAMETOOLONG`.
pub const SERVER_STARTER_NAME_MAX: usize = 272;

/// Error: neither `SERVER_STARTER_PORT` is set nor does systemd socket activation
/// (`LISTEN_PID` equal to `getpid()`, with `LISTEN_FDS`) apply to this process.
pub const SERVER_STARTER_ENOTSET: c_int = -1;
/// Error: a `SERVER_STARTER_PORT` entry is malformed (no `=`, empty name,
/// descriptor not a decimal in 0..INT_MAX, empty entry before a non-empty one), or
/// `LISTEN_PID`, `LISTEN_FDS` or `LISTEN_FDNAMES` is.
pub const SERVER_STARTER_EMALFORMED: c_int = -2;
/// Error: a listed descriptor is not open, or is not a socket.
pub const SERVER_STARTER_EBADFD: c_int = -3;
/// Error: no listener has the name asked for.
pub const SERVER_STARTER_ENOTFOUND: c_int = -4;
/// Error: a required pointer argument is NULL (or `out` is NULL with `cap` > 0).
pub const SERVER_STARTER_ENULL: c_int = -5;
/// Error: a name is longer than `SERVER_STARTER_NAME_MAX - 1` bytes.
pub const SERVER_STARTER_ENAMETOOLONG: c_int = -6;
/// Error: a bug in the library (an internal panic caught at the boundary in
/// debug builds; release builds abort instead).
pub const SERVER_STARTER_EINTERNAL: c_int = -7;

/// One inherited listening socket.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct server_starter_listener {
    /// The descriptor.
    pub fd: c_int,
    /// `AF_INET`, `AF_INET6` or `AF_UNIX`, as `getsockname()` reports it
    /// (from `server_starter_parse()`: the family the name's text implies, or
    /// `AF_UNSPEC`).
    pub family: c_int,
    /// `SOCK_STREAM` or `SOCK_DGRAM`, as `getsockopt(SO_TYPE)` reports it (0 from
    /// `server_starter_parse()`).
    pub socktype: c_int,
    /// The local port in host byte order, as `getsockname()` reports it; 0 for
    /// unix sockets (from `server_starter_parse()`: the port in the name, or 0).
    pub port: c_int,
    /// The name exactly as in the variable, without surrounding whitespace
    /// (`80`, `127.0.0.1:8080`, `[::1]:8443`, `/run/app.sock`, or the
    /// `LISTEN_FDNAMES` field, `unknown` when there is none), NUL-terminated, the
    /// rest of the array zero-filled.
    pub name: [c_char; SERVER_STARTER_NAME_MAX],
}

fn code(kind: ErrorKind) -> c_int {
    match kind {
        ErrorKind::NotSet => SERVER_STARTER_ENOTSET,
        ErrorKind::Malformed => SERVER_STARTER_EMALFORMED,
        ErrorKind::BadFd | ErrorKind::WrongType | ErrorKind::AlreadyTaken => SERVER_STARTER_EBADFD,
        ErrorKind::NotFound => SERVER_STARTER_ENOTFOUND,
        ErrorKind::Null => SERVER_STARTER_ENULL,
        ErrorKind::NameTooLong => SERVER_STARTER_ENAMETOOLONG,
        ErrorKind::Internal => SERVER_STARTER_EINTERNAL,
    }
}

fn kind_of(code: c_int) -> Option<ErrorKind> {
    Some(match code {
        SERVER_STARTER_ENOTSET => ErrorKind::NotSet,
        SERVER_STARTER_EMALFORMED => ErrorKind::Malformed,
        SERVER_STARTER_EBADFD => ErrorKind::BadFd,
        SERVER_STARTER_ENOTFOUND => ErrorKind::NotFound,
        SERVER_STARTER_ENULL => ErrorKind::Null,
        SERVER_STARTER_ENAMETOOLONG => ErrorKind::NameTooLong,
        SERVER_STARTER_EINTERNAL => ErrorKind::Internal,
        _ => return None,
    })
}

/// Runs `body`, turning a panic into `on_panic` so that no unwind crosses the C
/// ABI (in builds that unwind; release builds abort).
#[cfg(feature = "std")]
fn boundary<T>(on_panic: T, body: impl FnOnce() -> T) -> T {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).unwrap_or(on_panic)
}

/// Without std nothing unwinds: the panic handler (in `lib.rs`) aborts.
#[cfg(not(feature = "std"))]
fn boundary<T>(_on_panic: T, body: impl FnOnce() -> T) -> T {
    body()
}

fn static_cstr(bytes: &'static [u8]) -> *const c_char {
    debug_assert_eq!(bytes.last(), Some(&0));
    bytes.as_ptr().cast()
}

/// The variables as libc's environment holds them.
///
/// # Safety
///
/// See `sys::getenv`: the environment must not change while the result is used;
/// the header documents this for callers.
unsafe fn process_vars<'a>() -> Vars<'a> {
    // SAFETY: forwarded contract.
    unsafe {
        Vars {
            starter_port: sys::getenv(c"SERVER_STARTER_PORT"),
            listen_pid: sys::getenv(c"LISTEN_PID"),
            listen_fds: sys::getenv(c"LISTEN_FDS"),
            listen_fdnames: sys::getenv(c"LISTEN_FDNAMES"),
        }
    }
}

/// The listeners' source for this process.
///
/// # Safety
///
/// As for `process_vars`.
unsafe fn process_source<'a>() -> Result<Source<'a>, c_int> {
    // SAFETY: forwarded contract.
    let vars = unsafe { process_vars() };
    parse::resolve(&vars, sys::getpid()).map_err(|e| code(e.kind))
}

fn to_c(entry: &Entry<'_>, family: c_int, socktype: c_int, port: u16) -> server_starter_listener {
    let mut listener = server_starter_listener {
        fd: entry.fd,
        family,
        socktype,
        port: c_int::from(port),
        name: [0; SERVER_STARTER_NAME_MAX],
    };
    // The parser caps names at NAME_MAX - 1 bytes, so the last byte stays NUL.
    for (dst, &src) in listener.name.iter_mut().zip(entry.name) {
        *dst = src as c_char;
    }
    listener
}

/// Stores entries into the caller's array: the first `cap` ones, counting all.
struct Sink {
    out: *mut server_starter_listener,
    cap: usize,
    count: usize,
}

impl Sink {
    fn new(out: *mut server_starter_listener, cap: usize) -> Result<Self, c_int> {
        if out.is_null() && cap != 0 {
            return Err(SERVER_STARTER_ENULL);
        }
        Ok(Sink { out, cap, count: 0 })
    }

    fn push(&mut self, listener: server_starter_listener) -> Result<(), c_int> {
        if self.count < self.cap {
            // SAFETY: the caller provides `cap` writable entries at `out` (not
            // NULL, checked in `new`) and `count < cap`; an unaligned write asks
            // nothing of the array's alignment.
            unsafe { self.out.add(self.count).write_unaligned(listener) };
        }
        self.count = self.count.checked_add(1).ok_or(SERVER_STARTER_EMALFORMED)?;
        Ok(())
    }

    fn finish(self) -> c_int {
        // More than INT_MAX entries need a value of more than 8 GiB.
        c_int::try_from(self.count).unwrap_or(SERVER_STARTER_EMALFORMED)
    }
}

fn collect_checked<'a>(
    entries: impl Iterator<Item = Result<Checked<'a>, query::Failure<'a>>>,
    mut sink: Sink,
) -> c_int {
    for checked in entries {
        let c = match checked {
            Ok(c) => c,
            Err(failure) => return code(failure.kind()),
        };
        if let Err(e) = sink.push(to_c(&c.entry, c.info.family, c.info.socktype, c.info.port)) {
            return e;
        }
    }
    sink.finish()
}

/// Finds the listening sockets this process inherited.
///
/// Reads `SERVER_STARTER_PORT` (set by start_server), or, when it is not set
/// and `LISTEN_PID` equals `getpid()`, systemd's `LISTEN_FDS` (descriptors 3,
/// 4, ...) and `LISTEN_FDNAMES` (colon-separated; `unknown` for a missing or
/// empty field, as `sd_listen_fds_with_names()` does; a different number of
/// fields than `LISTEN_FDS` is `SERVER_STARTER_EMALFORMED`). Every descriptor is
/// checked to be an open socket, and `family`, `socktype` and `port` are what
/// the kernel reports for it.
///
/// Writes the first `cap` listeners to `out` and returns how many there are in
/// all, which may exceed `cap`: `server_starter_listeners(NULL, 0)` counts them.
/// An empty `SERVER_STARTER_PORT` is zero listeners. On error returns a negative
/// `SERVER_STARTER_E*` code, and the first `cap` entries of `out` may have been
/// overwritten.
///
/// Never allocates and never modifies the environment or the descriptors: unlike
/// `sd_listen_fds()` it does not set `FD_CLOEXEC` (set it yourself if you exec
/// programs that must not inherit the sockets) and, unlike
/// `sd_listen_fds(1)`, it never unsets the variables, since `unsetenv` is
/// neither allocation-free nor thread-safe (a child process that keeps
/// `LISTEN_PID` is not confused: the pid differs). Uses `getenv()`, so it must
/// not run while another thread modifies the environment.
///
/// # Safety
///
/// `out` must be NULL (with `cap` 0) or point to `cap` writable
/// `server_starter_listener` entries.
#[no_mangle]
pub unsafe extern "C" fn server_starter_listeners(
    out: *mut server_starter_listener,
    cap: usize,
) -> c_int {
    boundary(SERVER_STARTER_EINTERNAL, || {
        let sink = match Sink::new(out, cap) {
            Ok(sink) => sink,
            Err(e) => return e,
        };
        // SAFETY: the environment is read only within this call (documented).
        let source = match unsafe { process_source() } {
            Ok(source) => source,
            Err(e) => return e,
        };
        match query::checked(&source) {
            Ok(entries) => collect_checked(entries, sink),
            Err(failure) => code(failure.kind()),
        }
    })
}

/// Parses a `SERVER_STARTER_PORT` value without any system call.
///
/// Entries are separated by `;`; in each, the descriptor is the decimal after
/// the *last* `=` (unix socket paths may contain `=`); whitespace around names
/// and numbers is ignored. An empty value, and trailing empty entries (`80=3;`),
/// mean no listeners; an empty entry before a non-empty one, an entry without
/// `=`, an empty name or a descriptor that is not a decimal in 0..INT_MAX is
/// `SERVER_STARTER_EMALFORMED`; a name longer than `SERVER_STARTER_NAME_MAX - 1`
/// bytes is `SERVER_STARTER_ENAMETOOLONG`.
///
/// Fills `fd` and `name`; `family` as the text implies it (a name starting with
/// `/` is `AF_UNIX`, `[address]:port` is `AF_INET6`, `a.b.c.d:port` is
/// `AF_INET`, anything else, such as a bare port or a host name, `AF_UNSPEC`);
/// `socktype` 0; `port` from the text when it has one, else 0.
///
/// Writes the first `cap` entries to `out` and returns how many there are in all
/// (`out` may be NULL when `cap` is 0), or a negative `SERVER_STARTER_E*` code
/// (`SERVER_STARTER_ENULL` when `value` is NULL), in which case the first `cap`
/// entries of `out` may have been overwritten.
///
/// # Safety
///
/// `value` must be NULL or a NUL-terminated string; `out` must be NULL (with
/// `cap` 0) or point to `cap` writable `server_starter_listener` entries.
#[no_mangle]
pub unsafe extern "C" fn server_starter_parse(
    value: *const c_char,
    out: *mut server_starter_listener,
    cap: usize,
) -> c_int {
    boundary(SERVER_STARTER_EINTERNAL, || {
        if value.is_null() {
            return SERVER_STARTER_ENULL;
        }
        let mut sink = match Sink::new(out, cap) {
            Ok(sink) => sink,
            Err(e) => return e,
        };
        // SAFETY: `value` is not NULL and the caller passes a NUL-terminated
        // string, which is only read up to its NUL.
        let value = unsafe { CStr::from_ptr(value) }.to_bytes();
        for entry in parse::Entries::new(value) {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => return code(e.kind),
            };
            if let Err(e) = sink.push(to_c(&entry, entry.family, 0, entry.port)) {
                return e;
            }
        }
        sink.finish()
    })
}

/// Returns the descriptor of the inherited listener whose name is exactly
/// `name` (e.g. `"127.0.0.1:8080"`, or a `LISTEN_FDNAMES` name), checked to be an
/// open socket; the first one when several have that name. Under systemd's
/// variables a `SERVER_STARTER_PORT` name also finds the `LISTEN_FDNAMES` name
/// `start_server --listen-fds` makes of it (`"127.0.0.1:8080"` finds
/// `127.0.0.1_8080`: each `:`, control or non-ASCII byte is `_`), so a worker
/// asking by address gets the same socket from either variable.
///
/// The whole variable is parsed, so a malformed entry anywhere is an error, as
/// for `server_starter_listeners()`. Errors: `SERVER_STARTER_ENULL`,
/// `SERVER_STARTER_ENAMETOOLONG` (`name` longer than `SERVER_STARTER_NAME_MAX -
/// 1`), `SERVER_STARTER_ENOTSET`, `SERVER_STARTER_EMALFORMED`,
/// `SERVER_STARTER_ENOTFOUND`, `SERVER_STARTER_EBADFD`. Same environment caveats
/// as `server_starter_listeners()`.
///
/// # Safety
///
/// `name` must be NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn server_starter_find(name: *const c_char) -> c_int {
    boundary(SERVER_STARTER_EINTERNAL, || {
        if name.is_null() {
            return SERVER_STARTER_ENULL;
        }
        // SAFETY: `name` is not NULL and the caller passes a NUL-terminated string.
        let wanted = unsafe { CStr::from_ptr(name) }.to_bytes();
        if wanted.len() >= SERVER_STARTER_NAME_MAX {
            return SERVER_STARTER_ENAMETOOLONG;
        }
        // SAFETY: the environment is read only within this call (documented).
        let source = match unsafe { process_source() } {
            Ok(source) => source,
            Err(e) => return e,
        };
        let found = match parse::find(&source, wanted) {
            Ok(found) => found,
            Err(e) => return code(e.kind),
        };
        match found.map(query::check) {
            Some(Ok(c)) => c.entry.fd,
            Some(Err(failure)) => code(failure.kind()),
            None => SERVER_STARTER_ENOTFOUND,
        }
    })
}

/// Returns `SERVER_STARTER_GENERATION` (how many times start_server has started
/// workers), or -1 when it is unset or not a decimal number (whitespace around
/// it is ignored). Same environment caveats as `server_starter_listeners()`.
#[no_mangle]
pub extern "C" fn server_starter_generation() -> c_long {
    boundary(-1, || {
        // SAFETY: the environment is read only within this call (documented).
        let value = unsafe { sys::getenv(c"SERVER_STARTER_GENERATION") };
        value
            .and_then(parse::parse_generation)
            .and_then(|g| c_long::try_from(g).ok())
            .unwrap_or(-1)
    })
}

/// Tells the supervisor how this process is doing, as `sd_notify(3)` does
/// (without libsystemd): sends `state` as one datagram to the unix socket
/// `NOTIFY_SOCKET` names (`/absolute/path`, or `@name` for an abstract socket),
/// which a supervisor that listens for notifications sets (start_server, or
/// systemd for a `Type=notify` service). `state` is one or more
/// newline-separated assignments: `"READY=1"` once the program serves,
/// `"READY=1\nSTATUS=serving"`, `"WATCHDOG=1"` as a keep-alive every
/// `WATCHDOG_USEC` / 2 microseconds when that variable is set, `"STOPPING=1"`
/// when it begins to shut down.
///
/// Returns 0 when `NOTIFY_SOCKET` is unset or empty (nothing is sent, so a
/// program may always call it), a positive number when the message was sent,
/// and otherwise a negative errno value, as `sd_notify()` does. Unlike the
/// other functions' results these are *not* `SERVER_STARTER_E*` codes: pass
/// `-result` to `strerror()`, not to `server_starter_strerror()`. `-EINVAL`:
/// `state` is NULL, or `NOTIFY_SOCKET` is neither an absolute path nor `@name`;
/// `-ENAMETOOLONG`: it does not fit in a unix socket address; otherwise the
/// `-errno` of `socket()` or `sendto()`, such as `-ECONNREFUSED` or `-ENOENT`
/// when nobody listens there.
///
/// Each call opens a new `SOCK_CLOEXEC` datagram socket and closes it again.
/// It never allocates and, unlike `sd_notify()` with a non-zero
/// `unset_environment`, never changes the environment. Like `sd_notify()`, it
/// blocks while the receiver's queue is full. Same environment caveats as
/// `server_starter_listeners()`.
///
/// # Safety
///
/// `state` must be NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn server_starter_notify(state: *const c_char) -> c_int {
    // -EIO only if the library has a bug (see `boundary`).
    boundary(-libc::EIO, || {
        if state.is_null() {
            return -libc::EINVAL;
        }
        // SAFETY: `state` is not NULL and the caller passes a NUL-terminated string.
        let state = unsafe { CStr::from_ptr(state) }.to_bytes();
        // SAFETY: the environment is read only within this call (documented).
        let socket = unsafe { sys::getenv(c"NOTIFY_SOCKET") };
        match notify::send(socket, state) {
            Ok(sent) => c_int::from(sent),
            Err(failure) => failure.errno().0.saturating_neg(),
        }
    })
}

/// Describes an error code: a static NUL-terminated English message, never
/// NULL ("success" for codes >= 0, "unknown libserver_starter error code" for
/// codes it does not know).
#[no_mangle]
pub extern "C" fn server_starter_strerror(code: c_int) -> *const c_char {
    boundary(
        static_cstr(b"internal error in libserver_starter (a bug)\0"),
        || {
            if code >= 0 {
                return static_cstr(b"success\0");
            }
            match kind_of(code) {
                Some(kind) => static_cstr(kind.message_with_nul()),
                None => static_cstr(b"unknown libserver_starter error code\0"),
            }
        },
    )
}

/// The library's version as a NUL-terminated string, e.g. "0.1.0". Never NULL.
#[no_mangle]
pub extern "C" fn server_starter_version() -> *const c_char {
    static_cstr(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_match_the_crate() {
        assert_eq!(SERVER_STARTER_NAME_MAX, parse::NAME_MAX);
        let version =
            format!("{SERVER_STARTER_VERSION_MAJOR}.{SERVER_STARTER_VERSION_MINOR}.{SERVER_STARTER_VERSION_PATCH}");
        assert_eq!(
            version,
            env!("CARGO_PKG_VERSION"),
            "update the version constants in src/ffi.rs"
        );
        // SAFETY: a static NUL-terminated string.
        let v = unsafe { CStr::from_ptr(server_starter_version()) };
        assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn every_code_has_its_own_message() {
        let codes = [
            SERVER_STARTER_ENOTSET,
            SERVER_STARTER_EMALFORMED,
            SERVER_STARTER_EBADFD,
            SERVER_STARTER_ENOTFOUND,
            SERVER_STARTER_ENULL,
            SERVER_STARTER_ENAMETOOLONG,
            SERVER_STARTER_EINTERNAL,
        ];
        let mut messages = std::collections::HashSet::new();
        for c in codes.into_iter().chain([0, -8, 5, c_int::MIN]) {
            assert_eq!(
                kind_of(c).map(code),
                if codes.contains(&c) { Some(c) } else { None }
            );
            // SAFETY: server_starter_strerror never returns NULL.
            let m = unsafe { CStr::from_ptr(server_starter_strerror(c)) };
            assert!(!m.to_bytes().is_empty());
            messages.insert(m.to_bytes().to_vec());
        }
        assert_eq!(messages.len(), codes.len() + 2);
    }

    #[test]
    fn parse_fills_hints_and_zero_fills_names() {
        let mut out = [server_starter_listener {
            fd: -9,
            family: -9,
            socktype: -9,
            port: -9,
            name: [1; SERVER_STARTER_NAME_MAX],
        }; 3];
        let value = b" [::1]:8443 = 5 ;/a=b=6\0";
        // SAFETY (whole test): NUL-terminated strings and arrays of the stated sizes.
        let n = unsafe { server_starter_parse(value.as_ptr().cast(), out.as_mut_ptr(), 1) };
        assert_eq!(n, 2);
        assert_eq!(
            (out[0].fd, out[0].family, out[0].socktype, out[0].port),
            (5, libc::AF_INET6, 0, 8443)
        );
        assert_eq!(
            &out[0].name[..11],
            b"[::1]:8443\0".map(|b| b as c_char).as_slice()
        );
        assert!(out[0].name[11..].iter().all(|&b| b == 0));
        assert_eq!(out[1].fd, -9, "nothing past cap");
        // SAFETY: NULL pointers are what is being tested; `value` is NUL-terminated.
        unsafe {
            let null = std::ptr::null_mut();
            assert_eq!(
                server_starter_parse(std::ptr::null(), out.as_mut_ptr(), 3),
                SERVER_STARTER_ENULL
            );
            assert_eq!(
                server_starter_parse(value.as_ptr().cast(), null, 3),
                SERVER_STARTER_ENULL
            );
            assert_eq!(server_starter_parse(value.as_ptr().cast(), null, 0), 2);
            assert_eq!(server_starter_find(std::ptr::null()), SERVER_STARTER_ENULL);
        }
    }
}
