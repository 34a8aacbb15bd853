//! The environment start_server gives its workers and reads its own settings from:
//! its own environment, overlaid with `--envdir` (daemontools' envdir: each file's first
//! line is a variable), read again before every spawn, so that a deploy can change a
//! worker's environment without restarting start_server.
//!
//! As in the original, `ENABLE_AUTO_RESTART`, `AUTO_RESTART_INTERVAL` and
//! `KILL_OLD_DELAY` are read from that environment too.

use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::time::Duration;

pub type Env = Vec<(OsString, OsString)>;

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

/// The variables of an envdir. Names starting with `.`, unreadable entries and empty
/// files are skipped, as the original skips them.
fn load(dir: &Path) -> Env {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut vars: Env = entries
        .flatten()
        .filter(|e| !e.file_name().as_bytes().starts_with(b"."))
        .filter_map(|e| {
            let bytes = fs::read(e.path()).ok().filter(|b| !b.is_empty())?;
            let line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
            Some((e.file_name(), OsString::from_vec(line.to_vec())))
        })
        .collect();
    vars.sort();
    vars
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
}
