//! The environment start_server gives its workers and reads its own settings from:
//! its own environment, overlaid with `--envdir` (daemontools' envdir: each file's first
//! line is a variable), read again before every spawn, so that a deploy can change a
//! worker's environment without restarting start_server.
//!
//! As in the original, `ENABLE_AUTO_RESTART`, `AUTO_RESTART_INTERVAL` and
//! `KILL_OLD_DELAY` are read from that environment too.
//!
//! The envdir is read by the supervisor itself, so nothing in it may block or bloat
//! start_server: only regular files are read (a FIFO would block it for good, a
//! device might do anything on open), and of each only its first line, up to
//! `MAX_VALUE` bytes (the original reads the whole of a file without a newline).

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::time::Duration;

pub type Env = Vec<(OsString, OsString)>;

/// The longest value an envdir file may give, in bytes. A longer first line is
/// skipped, with a log line, rather than cut: a cut value is a wrong one, passed on
/// in silence. (Linux's execve refuses a variable over 128 KiB anyway.)
pub const MAX_VALUE: usize = 64 * 1024;

/// Checked once at start: `--envdir` (or `ENVDIR`) must name a directory. (The
/// original silently ignores anything else, which hides a typo until a deploy.)
pub fn check() -> Result<(), String> {
    match std::env::var_os("ENVDIR") {
        Some(dir) if !Path::new(&dir).is_dir() => Err(format!(
            "envdir {}: not a directory",
            Path::new(&dir).display()
        )),
        _ => Ok(()),
    }
}

/// start_server's environment with `ENVDIR`'s files overlaid: a removed file's
/// variable is back to what it was in start_server's own environment (or gone).
pub fn current() -> Env {
    let mut env: Env = std::env::vars_os().collect();
    if let Some(dir) = std::env::var_os("ENVDIR") {
        for (key, value) in load(Path::new(&dir)) {
            env.retain(|(k, _)| *k != key);
            env.push((key, value));
        }
    }
    env
}

/// The variables of an envdir. Names starting with `.`, files gone meanwhile and empty
/// files are skipped, as the original skips them; so is anything else that gives no
/// value, with a log line saying why.
fn load(dir: &Path) -> Env {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut vars: Env = entries
        .flatten()
        .filter(|e| !e.file_name().as_bytes().starts_with(b"."))
        .filter_map(|e| match first_line(&e.path()) {
            Ok(line) => Some((e.file_name(), OsString::from_vec(line?))),
            Err(why) => {
                crate::log!("envdir: skipping {}: {why}", e.path().display());
                None
            }
        })
        .collect();
    vars.sort();
    vars
}

/// The first line of the file at `path`, without its newline; `None` for an empty
/// file or one removed meanwhile; an error for anything that is not a regular file (a
/// symlink to one is fine, as for daemontools' envdir) or whose first line is longer
/// than `MAX_VALUE`.
fn first_line(path: &Path) -> Result<Option<Vec<u8>>, String> {
    let gone = |e: &io::Error| e.kind() == io::ErrorKind::NotFound;
    // Checked before opening, so that no device is ever opened, and again on the
    // descriptor, in case the file was swapped in between.
    match fs::metadata(path) {
        Ok(meta) => regular(meta.file_type())?,
        Err(e) if gone(&e) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    }
    let file = match OpenOptions::new()
        .read(true)
        // Opening a FIFO with no writer would block; O_NOCTTY: a terminal swapped in
        // must not become start_server's.
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if gone(&e) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    regular(file.metadata().map_err(|e| e.to_string())?.file_type())?;
    let mut line = Vec::new();
    BufReader::new(file.take(MAX_VALUE as u64 + 1))
        .read_until(b'\n', &mut line)
        .map_err(|e| e.to_string())?;
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.is_empty() {
        return Ok(None);
    } else if line.len() > MAX_VALUE {
        return Err(format!("its first line is longer than {MAX_VALUE} bytes"));
    }
    Ok(Some(line))
}

/// Ok for a regular file; else what it is instead, for a message (also the log
/// file's, see log_file.rs).
pub fn regular(kind: fs::FileType) -> Result<(), String> {
    if kind.is_file() {
        return Ok(());
    }
    let what = if kind.is_symlink() {
        "a symbolic link"
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else {
        "not a regular file"
    };
    Err(format!("{what}, not a regular file"))
}

pub fn get<'a>(env: &'a Env, key: &str) -> Option<&'a str> {
    env.iter()
        .rev()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v.to_str())
}

/// The settings start_server takes from the environment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tunables {
    /// `Some(interval)` when auto-restart is on.
    pub auto_restart: Option<Duration>,
    pub kill_old_delay: Duration,
}

pub fn tunables(env: &Env) -> Result<Tunables, String> {
    // Perl's truth: unset, empty and "0" are false.
    let enabled = get(env, "ENABLE_AUTO_RESTART").is_some_and(|v| !v.is_empty() && v != "0");
    let seconds = |key: &str| {
        get(env, key)
            .map(|v| {
                crate::cli::parse_seconds(v)
                    .map_err(|why| format!("invalid {key} value {v:?}: {why}"))
            })
            .transpose()
    };
    let interval = match seconds("AUTO_RESTART_INTERVAL")? {
        // The original's `||= 360`: zero means the default too.
        Some(d) if !d.is_zero() => d,
        _ => Duration::from_secs(360),
    };
    let default_delay = if enabled {
        Duration::from_secs(5)
    } else {
        Duration::ZERO
    };
    Ok(Tunables {
        auto_restart: enabled.then_some(interval),
        kill_old_delay: seconds("KILL_OLD_DELAY")?.unwrap_or(default_delay),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs.iter().map(|(k, v)| (k.into(), v.into())).collect()
    }

    #[test]
    fn defaults() {
        let t = tunables(&env(&[])).unwrap();
        assert_eq!(
            t,
            Tunables {
                auto_restart: None,
                kill_old_delay: Duration::ZERO
            }
        );
        let t = tunables(&env(&[("ENABLE_AUTO_RESTART", "1")])).unwrap();
        assert_eq!(
            t,
            Tunables {
                auto_restart: Some(Duration::from_secs(360)),
                kill_old_delay: Duration::from_secs(5)
            }
        );
        let t = tunables(&env(&[
            ("ENABLE_AUTO_RESTART", "0"),
            ("KILL_OLD_DELAY", "2"),
        ]))
        .unwrap();
        assert_eq!(
            t,
            Tunables {
                auto_restart: None,
                kill_old_delay: Duration::from_secs(2)
            }
        );
        let t = tunables(&env(&[
            ("ENABLE_AUTO_RESTART", "yes"),
            ("AUTO_RESTART_INTERVAL", "0.5"),
        ]))
        .unwrap();
        assert_eq!(t.auto_restart, Some(Duration::from_millis(500)));
        assert!(tunables(&env(&[("AUTO_RESTART_INTERVAL", "abc")])).is_err());
    }

    #[test]
    fn envdir_files() {
        let dir = std::env::temp_dir().join(format!("envdir-unit-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("A"), "one\ntwo\n").unwrap();
        fs::write(dir.join("B"), "no newline").unwrap();
        fs::write(dir.join("EMPTY"), "").unwrap();
        fs::write(dir.join(".hidden"), "x\n").unwrap();
        fs::create_dir_all(dir.join("SUBDIR")).unwrap();
        let vars = load(&dir);
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(vars, env(&[("A", "one"), ("B", "no newline")]));
    }

    #[test]
    fn envdir_value_limits() {
        let dir = std::env::temp_dir().join(format!("envdir-cap-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let longest = "x".repeat(MAX_VALUE);
        fs::write(dir.join("NEWLINE_ONLY"), "\n").unwrap();
        fs::write(dir.join("LONGEST"), format!("{longest}\nrest")).unwrap();
        fs::write(dir.join("LONGEST_AT_EOF"), &longest).unwrap();
        fs::write(dir.join("TOO_LONG"), format!("{longest}y\n")).unwrap();
        fs::write(dir.join("TOO_LONG_AT_EOF"), format!("{longest}y")).unwrap();
        std::os::unix::fs::symlink("LONGEST", dir.join("LINK")).unwrap();
        std::os::unix::fs::symlink("nowhere", dir.join("DANGLING")).unwrap();
        let vars = load(&dir);
        fs::remove_dir_all(&dir).unwrap();
        let names: Vec<_> = vars.iter().map(|(k, _)| k.to_str().unwrap()).collect();
        assert_eq!(names, ["LINK", "LONGEST", "LONGEST_AT_EOF", "NEWLINE_ONLY"]);
        assert!(vars[..3].iter().all(|(_, v)| *v == *longest));
        assert_eq!(vars[3].1, "");
    }
}
