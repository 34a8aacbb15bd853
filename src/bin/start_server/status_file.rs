//! The `--status-file`: one `generation:pid` line per live worker, for `--restart` and
//! for monitoring. It is rewritten whole (temp file, then rename) so that a reader
//! never sees half of it, and so that a write that failed is made good by the next one.
//!
//! start_server often runs as root in a directory others can write to, so no symlink
//! planted there may redirect a write: the temp file gets a name no one can guess in
//! advance and is created with O_EXCL|O_NOFOLLOW (a name taken by anything, a symlink
//! included, is passed over), and rename(2) replaces whatever is at the status file's
//! path without following it. (The original writes through `FILE.PID`, following a
//! symlink there.)

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::sys::{self, Pid};

/// How many taken temp names to pass over before giving up (each one taken means
/// someone is planting files at random names, faster than we can pick them).
const TEMP_NAME_TRIES: u32 = 100;

pub struct StatusFile {
    path: PathBuf,
    created: bool,
}

impl StatusFile {
    pub fn new(path: PathBuf) -> StatusFile {
        StatusFile {
            path,
            created: false,
        }
    }

    /// Replaces the file's contents with `workers` as (generation, pid), sorted by
    /// generation.
    pub fn write(&mut self, workers: &[(u64, Pid)]) -> Result<(), String> {
        let mut workers = workers.to_vec();
        workers.sort_unstable();
        let text: String = workers
            .iter()
            .map(|(generation, pid)| format!("{generation}:{pid}\n"))
            .collect();
        replace(&self.path, text.as_bytes())
            .map_err(|e| format!("failed to write status file {}: {e}", self.path.display()))?;
        self.created = true;
        Ok(())
    }

    /// For an upgrade in place: the path, and whether this instance has written it.
    pub fn handover(&self) -> (&std::path::Path, bool) {
        (&self.path, self.created)
    }

    pub fn taken_over(path: PathBuf, created: bool) -> StatusFile {
        StatusFile { path, created }
    }

    /// Removes the file at exit, if start_server wrote it.
    pub fn remove(&self) {
        if self.created {
            if let Err(e) = fs::remove_file(&self.path) {
                crate::log!("failed to remove status file {}: {e}", self.path.display());
            }
        }
    }
}

/// Writes `bytes` to a new temp file beside `path`, then renames it to `path`. On
/// failure the temp file is gone again and `path` is as it was.
fn replace(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let (tmp, mut file) = create_temp(path)?;
    let result = file
        .write_all(bytes)
        .map_err(|e| format!("writing {}: {e}", tmp.display()))
        .and_then(|()| {
            fs::rename(&tmp, path).map_err(|e| format!("renaming {} to it: {e}", tmp.display()))
        });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates `.NAME.PID.RANDOM` in `path`'s directory, a name that did not exist: in
/// the same directory, so that the rename is atomic; hidden, so that a `*` glob over
/// the directory does not pick it up half-written.
fn create_temp(path: &Path) -> Result<(PathBuf, File), String> {
    let name = path
        .file_name()
        .ok_or_else(|| "the path does not end in a file name".to_string())?;
    let dir = path.parent().unwrap_or(Path::new(""));
    let mut last_error = None;
    for attempt in 0..TEMP_NAME_TRIES {
        let tmp = dir.join(format!(
            ".{}.{}.{:016x}",
            String::from_utf8_lossy(name.as_bytes()),
            std::process::id(),
            random(attempt)
        ));
        let created = OpenOptions::new()
            .write(true)
            // O_CREAT|O_EXCL: fails on any existing file, a symlink (even a dangling
            // one) included, instead of writing through it.
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .mode(0o644)
            .open(&tmp);
        match created {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_error = Some(e),
            Err(e) => return Err(format!("creating {}: {e}", tmp.display())),
        }
    }
    Err(format!(
        "no free temporary name in {} after {TEMP_NAME_TRIES} tries: {}",
        dir.display(),
        last_error.map_or_else(String::new, |e| e.to_string())
    ))
}

/// A number for a temp name: random when the kernel can give one, else one that at
/// least differs from try to try (O_EXCL is what keeps the write safe; the randomness
/// only keeps anyone from taking every name in advance).
fn random(attempt: u32) -> u64 {
    sys::random_u64().unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        nanos ^ u64::from(attempt).rotate_left(48)
    })
}

/// The generations a status file lists, for `--restart`.
pub fn generations(path: &std::path::Path) -> Result<Vec<u64>, String> {
    let text = fs::read_to_string(path)
        .map_err(|e| format!("failed to open file:{}: {e}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(':')?.0.parse().ok())
        .collect())
}
