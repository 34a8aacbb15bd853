//! The `--pid-file`: start_server's pid, in a file it holds an exclusive flock(2) on for
//! its whole life. The lock is what tells a running instance from a stale file, for a
//! second start_server as for `--stop` and `--restart`; the original takes it too, but
//! truncates the file before trying, and so wipes the pid of a running instance.
//!
//! A running instance writes its pid only once its sockets are bound: a second one
//! that finds the file locked but empty waits a little for the pid, so that it can say
//! which instance runs.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::sys::{self, Pid};

/// How long a second instance waits for the running one's pid before saying that it
/// is still starting.
const PID_WAIT: Duration = Duration::from_secs(1);
const PID_POLL: Duration = Duration::from_millis(10);

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
        let deadline = Instant::now() + PID_WAIT;
        loop {
            let ours = !path.exists();
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                // Never truncated here: the file may be a running instance's.
                .truncate(false)
                .mode(0o644)
                .open(path)
                .map_err(fail)?;
            let holder = match sys::lock_exclusive(&file, false) {
                Ok(true) => {
                    return Ok(PidFile {
                        file,
                        path: path.to_path_buf(),
                        ours,
                    })
                }
                Ok(false) => wait_for_holder(&file, deadline),
                Err(e) => return Err(format!("flock failed on pid file {}: {e}", path.display())),
            };
            let running = match holder {
                Holder::Pid(pid) => format!("pid {pid}"),
                Holder::Starting => "still starting, pid not written yet".to_string(),
                // It gave up before writing its pid: try again, as if it had never been.
                Holder::Gone => continue,
            };
            return Err(format!(
                "already running ({running}): pid file {} is locked",
                path.display()
            ));
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
        result.map_err(|e| format!("failed to write pid file {}: {e}", self.path.display()))?;
        self.record_lock()
    }

    /// The lock that says which process runs the instance (`running_instance`): taken
    /// by the process that supervises, after --daemonize's forks, where the flock is
    /// still the launcher's.
    fn record_lock(&self) -> Result<(), String> {
        sys::lock_record(&self.file).map_err(|e| {
            format!(
                "fcntl(F_SETLK) failed on pid file {}: {e}",
                self.path.display()
            )
        })
    }

    /// For an upgrade in place: the locked descriptor, the path, and whether the file
    /// is this instance's to remove.
    pub fn handover(&self) -> (RawFd, &Path, bool) {
        (self.file.as_raw_fd(), &self.path, self.ours)
    }

    /// The previous image's pid file: the same open file, so the same lock, never
    /// released in between.
    pub fn taken_over(fd: OwnedFd, path: PathBuf, ours: bool) -> PidFile {
        let pid_file = PidFile {
            file: File::from(fd),
            path,
            ours,
        };
        // Kept across execve; taken here for an image before this one that had none.
        if let Err(e) = pid_file.record_lock() {
            crate::log!("{e}");
        }
        pid_file
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

/// What a second instance learns of the one holding the lock.
enum Holder {
    Pid(Pid),
    /// It has not written its pid by the deadline.
    Starting,
    /// It let go of the lock without writing its pid (it failed to start).
    Gone,
}

/// Waits, until `deadline`, for the instance holding the lock on `file` to write its
/// pid there.
fn wait_for_holder(file: &File, deadline: Instant) -> Holder {
    loop {
        if let Some(pid) = written_pid(file) {
            return Holder::Pid(pid);
        }
        if Instant::now() >= deadline {
            return Holder::Starting;
        }
        // Taking the lock here tells that the holder is gone; it is let go of again
        // when `lock` drops this descriptor and starts over.
        if matches!(sys::lock_exclusive(file, false), Ok(true)) {
            return Holder::Gone;
        }
        thread::sleep(PID_POLL);
    }
}

/// The pid in `file`, once written whole (`write_pid` writes it with its newline in
/// one write) and naming a live process: a stale file taken over still holds the pid
/// of an instance that is gone until the new one writes its own.
fn written_pid(file: &File) -> Option<Pid> {
    let mut buf = [0u8; 16];
    let n = file.read_at(&mut buf, 0).ok()?;
    let digits = buf.get(..n)?.strip_suffix(b"\n")?;
    let pid: Pid = std::str::from_utf8(digits).ok()?.parse().ok()?;
    if pid <= 0 {
        return None;
    }
    // Signal 0 only asks whether the process exists (EPERM: it does, someone else's).
    let exists = match sys::kill(pid, 0) {
        Ok(()) => true,
        Err(e) => e.raw_os_error() == Some(libc::EPERM),
    };
    exists.then_some(pid)
}

/// For `--stop` and `--restart`: the pid of the instance holding `path`, checked to be
/// running (the file is locked) so that no unrelated process that reused a stale pid gets
/// a signal. The returned file must stay open while the caller waits: `--stop` waits
/// for the lock on it.
pub fn running_instance(path: &Path) -> Result<(Pid, File), String> {
    match find_instance(path)? {
        Instance::Running(pid, file) => Ok((pid, file)),
        Instance::NotRunning(why) => Err(why),
    }
}

/// What a pid file says of its instance.
pub enum Instance {
    Running(Pid, File),
    /// No instance runs with it (the file is missing, or stale): why, in words.
    NotRunning(String),
}

/// `running_instance`, telling an instance that is not running from an error.
pub fn find_instance(path: &Path) -> Result<Instance, String> {
    let opened = File::open(path);
    let failed = |e: &io::Error| format!("failed to open pid file {}: {e}", path.display());
    let mut file = match opened {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Instance::NotRunning(failed(&e)))
        }
        Err(e) => return Err(failed(&e)),
    };
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
        Ok(false) => holds(pid, &file, path).map(|()| Instance::Running(pid, file)),
        Ok(true) => Ok(Instance::NotRunning(format!(
            "start_server (pid {pid}) is not running: pid file {} is stale",
            path.display()
        ))),
        Err(e) => Err(format!("flock failed on pid file {}: {e}", path.display())),
    }
}

/// Whether `pid`, which the locked pid file names, is the process that runs the
/// instance, as this process's PID namespace sees it. An instance in a namespace of
/// its own writes its pid there (1, often), which here is another process: the one
/// holding the file's POSIX lock, as the kernel translates its pid, says. An instance
/// without that lock (the Perl original, an older start_server) must at least have
/// the file open.
fn holds(pid: Pid, file: &File, path: &Path) -> Result<(), String> {
    let holder = sys::lock_holder(file)
        .map_err(|e| format!("fcntl(F_GETLK) failed on pid file {}: {e}", path.display()))?;
    let path = path.display();
    match holder {
        Some(holder) if holder == pid => Ok(()),
        Some(0) => Err(format!(
            "pid file {path} is locked by a process in a PID namespace this one cannot \
             see: not signalling pid {pid} (run this in the instance's namespace)"
        )),
        Some(holder) => Err(format!(
            "pid file {path} says pid {pid}, but its lock is held by pid {holder} (as \
             seen from here: the instance runs in another PID namespace): not signalling \
             pid {pid}"
        )),
        None if has_open(pid, file) => Ok(()),
        None => Err(format!(
            "pid file {path} says pid {pid}, but that process does not have it open \
             (the instance may run in another PID namespace): not signalling pid {pid}"
        )),
    }
}

/// Whether process `pid` has `file` open (false if that cannot be read).
fn has_open(pid: Pid, file: &File) -> bool {
    let Ok(own) = file.metadata() else {
        return false;
    };
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    entries.flatten().any(|entry| {
        fs::metadata(entry.path()).is_ok_and(|m| m.dev() == own.dev() && m.ino() == own.ino())
    })
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
