//! The `--status-file`: one `generation:pid` line per live worker, for `--restart` and
//! for monitoring. It is rewritten whole (temp file, then rename) so that a reader
//! never sees half of it.

use std::fs;
use std::io::Write;
use std::path::PathBuf;

use crate::sys::Pid;

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
        // The temporary name is the original's: FILE.PID, in the same directory, so
        // that rename is atomic.
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(format!(".{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let result = fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .and_then(|()| fs::rename(&tmp, &self.path));
        match result {
            Ok(()) => {
                self.created = true;
                Ok(())
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(format!(
                    "failed to write status file {}: {e}",
                    self.path.display()
                ))
            }
        }
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

/// The generations a status file lists, for `--restart`.
pub fn generations(path: &std::path::Path) -> Result<Vec<u64>, String> {
    let text = fs::read_to_string(path)
        .map_err(|e| format!("failed to open file:{}: {e}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(':')?.0.parse().ok())
        .collect())
}
