//! The `--pid-file`: start_server's pid, in a file it holds an exclusive flock(2) on for
//! its whole life. The lock is what tells a running instance from a stale file, for a
//! second start_server as for `--stop` and `--restart`; the original takes it too, but
//! truncates the file before trying, and so wipes the pid of a running instance.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use crate::sys::{self, Pid};

pub struct PidFile {
    file: File,
    path: PathBuf,
    /// Whether start_server created the file or wrote its pid there: then the file is
    /// its to remove. A stale file it merely locked is left as it was.
    ours: bool,
}

impl PidFile {
    /// Takes the lock, leaving the file's contents alone until `write_pid`. A file left
    /// by an instance that is gone is taken over; one held by a running instance is an
    /// error that touches nothing.
    pub fn lock(path: &Path) -> Result<PidFile, String> {
        let fail = |e: io::Error| format!("failed to open pid file {}: {e}", path.display());
        let ours = !path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            // Never truncated here: the file may be a running instance's.
            .truncate(false)
            .mode(0o644)
            .open(path)
            .map_err(fail)?;
        match sys::lock_exclusive(&file, false) {
            Ok(true) => Ok(PidFile {
                file,
                path: path.to_path_buf(),
                ours,
            }),
            Ok(false) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                Err(format!(
                    "already running (pid {}): pid file {} is locked",
                    text.trim(),
                    path.display()
                ))
            }
            Err(e) => Err(format!("flock failed on pid file {}: {e}", path.display())),
        }
    }

    /// Writes the pid of the process that will run the supervisor (after --daemonize).
    pub fn write_pid(&mut self) -> Result<(), String> {
        let text = format!("{}\n", std::process::id());
        self.ours = true;
        let result = self
            .file
            .set_len(0)
            .and_then(|()| self.file.rewind())
            .and_then(|()| self.file.write_all(text.as_bytes()));
        result.map_err(|e| format!("failed to write pid file {}: {e}", self.path.display()))
    }

    /// For an upgrade in place: the locked descriptor, the path, and whether the file
    /// is this instance's to remove.
    pub fn handover(&self) -> (RawFd, &Path, bool) {
        (self.file.as_raw_fd(), &self.path, self.ours)
    }

    /// The previous image's pid file: the same open file, so the same lock, never
    /// released in between.
    pub fn taken_over(fd: OwnedFd, path: PathBuf, ours: bool) -> PidFile {
        PidFile {
            file: File::from(fd),
            path,
            ours,
        }
    }

    /// At exit, or after a failed start: the file goes if it is ours, while still
    /// locked, so that no one can take it over in between (the lock dies with the
    /// descriptor).
    pub fn release(self) {
        if self.ours {
            if let Err(e) = fs::remove_file(&self.path) {
                crate::log!("failed to unlink file:{}: {e}", self.path.display());
            }
        }
    }
}

/// For `--stop` and `--restart`: the pid of the instance holding `path`, checked to be
/// running (the file is locked) so that no unrelated process that reused a stale pid gets
/// a signal. The returned file must stay open while the caller waits: `--stop` waits
/// for the lock on it.
pub fn running_instance(path: &Path) -> Result<(Pid, File), String> {
    let mut file =
        File::open(path).map_err(|e| format!("failed to open pid file {}: {e}", path.display()))?;
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|e| format!("failed to read pid file {}: {e}", path.display()))?;
    let pid: Pid = text
        .trim()
        .parse()
        .ok()
        .filter(|&pid| pid > 0)
        .ok_or_else(|| {
            format!(
                "pid file {} does not hold a pid: {:?}",
                path.display(),
                text.trim()
            )
        })?;
    match sys::lock_exclusive(&file, false) {
        Ok(false) => Ok((pid, file)),
        Ok(true) => Err(format!(
            "start_server (pid {pid}) is not running: pid file {} is stale",
            path.display()
        )),
        Err(e) => Err(format!("flock failed on pid file {}: {e}", path.display())),
    }
}

/// Blocks until the instance holding the lock on `file` has exited.
pub fn wait_released(file: &File) -> Result<(), String> {
    sys::lock_exclusive(file, true)
        .map(drop)
        .map_err(|e| format!("flock failed while waiting: {e}"))
}

/// Whether the instance still holds the lock on `file`.
pub fn still_locked(file: &File) -> bool {
    matches!(sys::lock_exclusive(file, false), Ok(false))
}
