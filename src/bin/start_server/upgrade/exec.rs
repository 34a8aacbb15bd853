//! The leap itself: the state into a memfd, the descriptors the next image needs made
//! inheritable (and only those), then execveat of the checked file with the same
//! command line. And the way
//! back, for a new image that cannot restore the state: execveat on the previous
//! image, kept open across the exec for that purpose.

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io::Write;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileExt;
use std::os::unix::io::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use super::{call, REFUSED_VAR, SCRIPT_VAR, STATE_VAR};
use crate::spawn;
use crate::sys;

/// Opens the new binary at `path` (following a symbolic link now), once: the check
/// and the exec are both of this open file.
pub fn open(path: &Path) -> std::io::Result<OwnedFd> {
    File::open(path).map(OwnedFd::from)
}

/// Executes `image` (the file `open` gave, which passed its check) with the same
/// command line and `state`, keeping `keep` (besides the listening sockets and stdio,
/// which are inheritable anyway). Returns only if that failed, with why; everything is
/// then as it was.
pub fn exec(image: &OwnedFd, state: &str, keep: &[RawFd]) -> String {
    let prepared = prepare(state);
    let (memfd, previous) = match prepared {
        Ok(fds) => fds,
        Err(e) => return format!("cannot hand the state over: {e}"),
    };
    let handed = [memfd.as_raw_fd(), previous.as_raw_fd()];
    let mut all: Vec<RawFd> = keep.iter().chain(&handed).copied().collect();
    // A script's interpreter reads it from /dev/fd/N, which must then stay open across
    // execve; the new image closes it (`SCRIPT_VAR`, set empty for a binary, which
    // needs nothing of it, so that no stray value gets through).
    let script = is_script(image).then(|| image.as_raw_fd());
    all.extend(script);
    let extra = [
        (STATE_VAR, format!("{},{}", handed[0], handed[1])),
        (
            SCRIPT_VAR,
            script.map(|fd| fd.to_string()).unwrap_or_default(),
        ),
    ];
    if let Err(e) = inheritable(&all, true) {
        let _ = inheritable(&all, false);
        return format!("cannot keep the descriptors open across execve: fcntl(F_SETFD): {e}");
    }
    let e = exec_with(
        |argv, envp| sys::execve_fd(image.as_raw_fd(), argv, envp),
        &extra,
    );
    // Still here: the old image goes on, and keeps its descriptors to itself.
    let _ = inheritable(&all, false);
    format!("execveat(2) of the checked file failed: {e}")
}

/// Whether the open file starts with `#!`.
fn is_script(image: &OwnedFd) -> bool {
    let mut magic = [0u8; 2];
    let read = image
        .try_clone()
        .map(File::from)
        .and_then(|file| file.read_exact_at(&mut magic, 0));
    read.is_ok() && &magic == b"#!"
}

/// The state in a memfd (close-on-exec for now), and the running image opened for the
/// way back. An error names the call that failed.
fn prepare(state: &str) -> Result<(OwnedFd, OwnedFd), String> {
    let memfd = sys::memfd(c"server_starter-state").map_err(call("memfd_create(2)"))?;
    let mut file = File::from(memfd);
    file.write_all(state.as_bytes())
        .map_err(call("write(2) to the memfd"))?;
    // Read-only from here on: if the new image gives up, the previous one reads back
    // exactly what it wrote, whatever the new one did.
    sys::seal(&file).map_err(call("fcntl(F_ADD_SEALS)"))?;
    // Executable even once replaced or deleted at its path: the open file keeps it.
    let image = File::open("/proc/self/exe").map_err(call("open(2) /proc/self/exe"))?;
    Ok((OwnedFd::from(file), OwnedFd::from(image)))
}

/// In a new image that cannot restore the state: executes the previous image (`image`),
/// which wrote the state and can read it, handing it the same state (`handed`, the
/// value of `STATE_VAR`) and saying why (`REFUSED_VAR`). Returns only if that failed.
pub fn back(image: RawFd, handed: &str, why: &str) -> std::io::Error {
    exec_with(
        |argv, envp| sys::execve_fd(image, argv, envp),
        &[
            (STATE_VAR, handed.to_string()),
            (REFUSED_VAR, why.to_string()),
        ],
    )
}

/// Builds argv (start_server's own, unchanged) and the environment (start_server's,
/// plus `extra`), then calls `exec`.
fn exec_with(
    exec: impl FnOnce(&[*const libc::c_char], &[*const libc::c_char]) -> std::io::Error,
    extra: &[(&str, String)],
) -> std::io::Error {
    let argv: Vec<CString> = std::env::args_os()
        .filter_map(|a| CString::new(a.into_vec()).ok())
        .collect();
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| !extra.iter().any(|(key, _)| k.as_bytes() == key.as_bytes()))
        .collect();
    env.extend(extra.iter().map(|(k, v)| (k.into(), v.into())));
    let envp = spawn::envp(&env, &[]);
    exec(&spawn::pointers(&argv), &spawn::pointers(&envp))
}

/// Clears FD_CLOEXEC on `fds` (`on`), or sets it again.
pub fn inheritable(fds: &[RawFd], on: bool) -> std::io::Result<()> {
    fds.iter().try_for_each(|&fd| sys::set_cloexec(fd, !on))
}
