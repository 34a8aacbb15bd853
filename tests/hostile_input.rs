//! Bad command lines and environments, through the built binary. Each row runs in a
//! fresh temp dir (also start_server's working directory) that is snapshotted before
//! and after (names, types, sizes, modes, inodes, mtimes and ctimes, contents): the row
//! must end with a non-zero exit status, exactly one line on stderr (after the
//! `start_server (pid:N) starting now...` line, when start_server got that far) that
//! names the offending value, nothing on stdout, no worker spawned, and the directory
//! exactly as it was.
//!
//! The rows run in parallel threads; every failing row is reported, not just the first.

mod common;
mod support;

use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use common::TempDir;
use support::{start_server_bin, Server};

/// One bad invocation, built in its temp dir.
struct Row {
    args: Vec<OsString>,
    env: Vec<(String, String)>,
    /// The error line must contain one of these.
    expect: Vec<String>,
    /// Whatever must stay alive while the row runs (a listener, a running instance).
    keep: Vec<Box<dyn std::any::Any + Send>>,
}

fn row(args: &[&str], expect: &[&str]) -> Row {
    Row {
        args: args.iter().map(OsString::from).collect(),
        env: Vec::new(),
        expect: expect.iter().map(|s| s.to_string()).collect(),
        keep: Vec::new(),
    }
}

impl Row {
    fn env(mut self, key: &str, value: &str) -> Row {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Appends the server command: one that would leave a file behind if it ever ran.
    fn worker(mut self, dir: &Path) -> Row {
        self.args.extend([
            "--".into(),
            "touch".into(),
            dir.join("WORKER_RAN").into_os_string(),
        ]);
        self
    }

    fn keep(mut self, thing: impl std::any::Any + Send) -> Row {
        self.keep.push(Box::new(thing));
        self
    }
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

type Build = fn(&Path) -> Row;

/// Every row: a name, and how to build it in its directory.
fn table() -> Vec<(&'static str, Build)> {
    vec![
        // ---------------------------------------------------------------- --port
        ("port not a number", |d| {
            row(&["--port=80x"], &["80x"]).worker(d)
        }),
        ("port out of range", |d| {
            row(&["--port=127.0.0.1:70000"], &["70000"]).worker(d)
        }),
        ("port in hex", |d| {
            row(&["--port=0x50"], &["0x50"]).worker(d)
        }),
        ("port empty host", |d| {
            row(&["--port=:8089"], &[":8089"]).worker(d)
        }),
        ("port with a bad fd", |d| {
            row(&["--port=8089=fdx"], &["fdx"]).worker(d)
        }),
        ("port with a negative fd", |d| {
            row(&["--port=8089=-3"], &["8089=-3"]).worker(d)
        }),
        ("udp port without digits", |d| {
            row(&["--port=127.0.0.1:uqq"], &["uqq"]).worker(d)
        }),
        ("ipv6 without brackets, not an address", |d| {
            row(&["--port=fe80::zz:8089"], &["fe80::zz"]).worker(d)
        }),
        ("ipv4 with one bracket", |d| {
            row(&["--port=127.0.0.1]:8089"], &["127.0.0.1]:8089"]).worker(d)
        }),
        ("host that does not resolve", |d| {
            row(
                &["--port=no-such-host.invalid:8089"],
                &["no-such-host.invalid"],
            )
            .worker(d)
        }),
        ("port in use", |d| {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let spec = format!("127.0.0.1:{port}");
            row(&[&format!("--port={spec}")], &[&spec])
                .worker(d)
                .keep(listener)
        }),
        ("two ports pinned to one fd", |d| {
            let (a, b) = (
                common::free_port("127.0.0.1", false),
                common::free_port("127.0.0.1", false),
            );
            row(
                &[
                    &format!("--port=127.0.0.1:{a}=9"),
                    &format!("--port=127.0.0.1:{b}=9"),
                ],
                &["descriptor 9"],
            )
            .worker(d)
        }),
        ("unterminated ipv6 bracket", |d| {
            row(&["--port=[::1:8089"], &["[::1"]).worker(d)
        }),
        ("fd number overflowing", |d| {
            row(&["--port=8089=99999999999"], &["99999999999"]).worker(d)
        }),
        ("--port without a value", |_| row(&["--port"], &["port"])),
        ("non-UTF-8 argument", |d| {
            let mut r = row(&[], &["\\xFF"]).worker(d);
            r.args
                .insert(0, OsString::from_vec(b"--port=80\xff".to_vec()));
            r
        }),
        // ---------------------------------------------------------------- signals
        ("unknown --signal-on-hup", |d| {
            row(&["--signal-on-hup=FOO"], &["FOO"]).worker(d)
        }),
        ("unknown --signal-on-term", |d| {
            row(&["--signal-on-term=SIGBOGUS"], &["SIGBOGUS"]).worker(d)
        }),
        ("signal number out of range", |d| {
            row(&["--signal-on-hup=65"], &["65"]).worker(d)
        }),
        ("signal zero", |d| {
            row(&["--signal-on-term=0"], &["\"0\"", " 0"]).worker(d)
        }),
        // ---------------------------------------------------------------- numbers
        ("--backlog=xyzzy", |d| {
            row(&["--backlog=xyzzy"], &["xyzzy"]).worker(d)
        }),
        ("--backlog negative", |d| {
            row(&["--backlog=-5"], &["-5"]).worker(d)
        }),
        ("--interval=-1", |d| {
            row(&["--interval=-1"], &["-1"]).worker(d)
        }),
        ("--interval=nan", |d| {
            row(&["--interval=nan"], &["nan"]).worker(d)
        }),
        ("--interval=inf", |d| {
            row(&["--interval=inf"], &["inf"]).worker(d)
        }),
        ("--interval=1e10", |d| {
            row(&["--interval=1e10"], &["1e10"]).worker(d)
        }),
        // Zero would fail every worker: none could ever start.
        ("--ready-timeout=0", |d| {
            row(
                &["--ready=notify", "--ready-timeout=0"],
                &["--ready-timeout value \"0\""],
            )
            .worker(d)
        }),
        ("--watchdog=0.0", |d| {
            row(&["--watchdog=0.0"], &["--watchdog value \"0.0\""]).worker(d)
        }),
        ("--kill-old-delay=abc", |d| {
            row(&["--kill-old-delay=abc"], &["abc"]).worker(d)
        }),
        ("--kill-old-delay negative", |d| {
            row(&["--kill-old-delay=-0.5"], &["-0.5"]).worker(d)
        }),
        ("--auto-restart-interval=xq", |d| {
            row(
                &["--enable-auto-restart", "--auto-restart-interval=xq"],
                &["xq"],
            )
            .worker(d)
        }),
        // ---------------------------------------------------------------- options
        ("no server command", |_| {
            row(&["--interval=1"], &["server program not specified"])
        }),
        ("unknown option", |d| {
            row(&["--frobnicate"], &["frobnicate"]).worker(d)
        }),
        ("ambiguous abbreviation", |d| {
            row(&["--sig=TERM"], &["Option sig is ambiguous"]).worker(d)
        }),
        ("--daemonize without --log-file", |d| {
            row(&["--daemonize"], &["--log-file"]).worker(d)
        }),
        ("--restart without --pid-file", |d| {
            row(
                &[
                    "--restart",
                    &format!("--status-file={}", p(&d.join("status"))),
                ],
                &["--pid-file"],
            )
        }),
        ("--stop without --pid-file", |_| {
            row(&["--stop"], &["--pid-file"])
        }),
        // ---------------------------------------------------------------- files
        ("missing --dir", |d| {
            let dir = p(&d.join("nonexistent"));
            row(&[&format!("--dir={dir}")], &[&dir]).worker(d)
        }),
        ("--dir is a file", |d| {
            let file = d.join("plain");
            fs::write(&file, "not a directory").unwrap();
            row(&[&format!("--dir={}", p(&file))], &[&p(&file)]).worker(d)
        }),
        ("--path at a plain file", |d| {
            let file = d.join("data.txt");
            fs::write(&file, "precious").unwrap();
            row(&[&format!("--path={}", p(&file))], &[&p(&file)]).worker(d)
        }),
        ("--path at a live socket", |d| {
            let sock = d.join("live.sock");
            let listener = UnixListener::bind(&sock).unwrap();
            row(&[&format!("--path={}", p(&sock))], &[&p(&sock)])
                .worker(d)
                .keep(listener)
        }),
        ("--path longer than 107 bytes", |d| {
            let long = p(&d.join(format!("{}.sock", "s".repeat(110))));
            row(&[&format!("--path={long}")], &[&long]).worker(d)
        }),
        // Names SERVER_STARTER_PORT cannot carry: refused before anything is created.
        ("--path with ';'", |d| {
            let path = p(&d.join("a;b.sock"));
            row(&[&format!("--path={path}")], &[&path]).worker(d)
        }),
        ("--path with '='", |d| {
            let path = p(&d.join("a=b.sock"));
            row(&[&format!("--path={path}")], &[&path]).worker(d)
        }),
        ("--path with a newline", |d| {
            let path = p(&d.join("a\nb.sock"));
            row(&[&format!("--path={path}")], &["a\\nb.sock"]).worker(d)
        }),
        ("--path with a tab", |d| {
            let path = p(&d.join("a\tb.sock"));
            row(&[&format!("--path={path}")], &["a\\tb.sock"]).worker(d)
        }),
        ("--path with an escape character", |d| {
            let path = p(&d.join("a\u{1b}b.sock"));
            row(&[&format!("--path={path}")], &["a\\u{1b}b.sock"]).worker(d)
        }),
        ("--path with a trailing space", |d| {
            let path = p(&d.join("a.sock "));
            row(&[&format!("--path={path}")], &[&format!("{path:?}")]).worker(d)
        }),
        ("--path empty", |d| {
            row(&["--path="], &["--path value \"\""]).worker(d)
        }),
        ("--port host with ';'", |d| {
            row(&["--port=a;b:8089"], &["a;b:8089"]).worker(d)
        }),
        ("--port name longer than the workers take", |d| {
            let spec = format!("{}:8089", "h".repeat(300));
            row(&[&format!("--port={spec}")], &[&spec]).worker(d)
        }),
        ("--pid-file in a missing directory", |d| {
            let file = p(&d.join("missing/run.pid"));
            row(&[&format!("--pid-file={file}")], &[&file]).worker(d)
        }),
        ("--pid-file of a running instance", |d| {
            let file = d.join("run.pid");
            let running =
                Server::start(&[&format!("--pid-file={}", p(&file)), "--", "sleep", "600"]);
            running.wait_line("starting new worker");
            let pid = running.pid();
            support::wait_until("the running instance's pid file", || {
                fs::read_to_string(&file).is_ok_and(|t| t.trim() == pid.to_string())
            });
            row(
                &[&format!("--pid-file={}", p(&file))],
                &[&format!("already running (pid {pid})")],
            )
            .worker(d)
            .keep(running)
        }),
        ("--pid-file is a directory", |d| {
            let dir = d.join("adir");
            fs::create_dir(&dir).unwrap();
            row(&[&format!("--pid-file={}", p(&dir))], &[&p(&dir)]).worker(d)
        }),
        ("--log-file is a directory", |d| {
            let dir = d.join("adir");
            fs::create_dir(&dir).unwrap();
            row(&[&format!("--log-file={}", p(&dir))], &[&p(&dir)]).worker(d)
        }),
        ("--stop with a missing pid file", |d| {
            let file = p(&d.join("none.pid"));
            row(&["--stop", &format!("--pid-file={file}")], &[&file])
        }),
        ("--stop with a dead pid", |d| {
            let mut child = Command::new("true").spawn().unwrap();
            let pid = child.id().to_string();
            child.wait().unwrap();
            let file = d.join("dead.pid");
            fs::write(&file, format!("{pid}\n")).unwrap();
            row(
                &["--stop", &format!("--pid-file={}", p(&file))],
                &[&p(&file), &pid],
            )
        }),
        ("--restart with a missing pid file", |d| {
            let file = p(&d.join("none.pid"));
            row(
                &[
                    "--restart",
                    &format!("--pid-file={file}"),
                    &format!("--status-file={}", p(&d.join("st"))),
                ],
                &[&file],
            )
        }),
        ("--log-file in a missing directory", |d| {
            let file = p(&d.join("missing/log"));
            row(&[&format!("--log-file={file}")], &[&file]).worker(d)
        }),
        ("--envdir is a file", |d| {
            let file = d.join("envfile");
            fs::write(&file, "X=1\n").unwrap();
            row(&[&format!("--envdir={}", p(&file))], &[&p(&file)]).worker(d)
        }),
        ("--envdir is missing", |d| {
            let dir = p(&d.join("noenv"));
            row(&[&format!("--envdir={dir}")], &[&dir]).worker(d)
        }),
        // ---------------------------------------------------------------- environment
        ("ENABLE_AUTO_RESTART with AUTO_RESTART_INTERVAL=abc", |d| {
            row(&[], &["abc"])
                .worker(d)
                .env("ENABLE_AUTO_RESTART", "1")
                .env("AUTO_RESTART_INTERVAL", "abc")
        }),
        ("ENABLE_AUTO_RESTART with KILL_OLD_DELAY=-2", |d| {
            row(&[], &["-2"])
                .worker(d)
                .env("ENABLE_AUTO_RESTART", "1")
                .env("KILL_OLD_DELAY", "-2")
        }),
        ("KILL_OLD_DELAY=whenever", |d| {
            row(&[], &["whenever"])
                .worker(d)
                .env("KILL_OLD_DELAY", "whenever")
        }),
        ("ENVDIR is a file", |d| {
            let file = d.join("envfile");
            fs::write(&file, "X=1\n").unwrap();
            row(&[], &[&p(&file)]).worker(d).env("ENVDIR", &p(&file))
        }),
        ("ENVDIR with KILL_OLD_DELAY=later", |d| {
            let env = d.join("env");
            fs::create_dir(&env).unwrap();
            fs::write(env.join("KILL_OLD_DELAY"), "later\n").unwrap();
            row(&[&format!("--envdir={}", p(&env))], &["later"]).worker(d)
        }),
    ]
}

// ------------------------------------------------------------------ snapshots

#[derive(Debug, PartialEq)]
struct Entry {
    path: String,
    kind: char,
    len: u64,
    mode: u32,
    ino: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    content: Option<Vec<u8>>,
}

/// Everything under `root`, `root` itself included, sorted by path.
fn snapshot(root: &Path) -> Vec<Entry> {
    let mut entries = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            'd'
        } else if ft.is_file() {
            'f'
        } else if ft.is_symlink() {
            'l'
        } else if ft.is_socket() {
            's'
        } else if ft.is_fifo() {
            'p'
        } else {
            '?'
        };
        if ft.is_dir() {
            pending.extend(fs::read_dir(&path).unwrap().flatten().map(|e| e.path()));
        }
        entries.push(Entry {
            path: match path.strip_prefix(root).unwrap().display().to_string() {
                root if root.is_empty() => ".".to_string(),
                relative => relative,
            },
            kind,
            len: meta.len(),
            mode: meta.mode(),
            ino: meta.ino(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            content: ft.is_file().then(|| fs::read(&path).unwrap()),
        });
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    entries
}

// ------------------------------------------------------------------ running a row

/// How long one row may take before it counts as hung (start_server serving).
const ROW_TIMEOUT: Duration = Duration::from_secs(15);

/// Runs one row; `Err` says what was wrong.
fn run(name: &str, build: Build) -> Result<Duration, String> {
    let dir = TempDir::new("hi");
    let out = TempDir::new("ho");
    let row = build(dir.path());
    let before = snapshot(dir.path());
    let (stdout_path, stderr_path) = (out.path().join("stdout"), out.path().join("stderr"));
    let mut cmd = Command::new(start_server_bin());
    cmd.args(&row.args)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(fs::File::create(&stdout_path).unwrap())
        .stderr(fs::File::create(&stderr_path).unwrap())
        .process_group(0);
    // Only what the row sets: none of start_server's variables from the test's own
    // environment.
    for key in [
        "ENVDIR",
        "ENABLE_AUTO_RESTART",
        "KILL_OLD_DELAY",
        "AUTO_RESTART_INTERVAL",
        "SERVER_STARTER_PORT",
    ] {
        cmd.env_remove(key);
    }
    cmd.envs(row.env.iter().map(|(k, v)| (k, v)));
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("spawning: {e}"))?;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        // A worker spawned: the row has failed, no need to watch it crash-loop.
        let spawned =
            fs::read_to_string(&stderr_path).is_ok_and(|t| t.contains("starting new worker"));
        if spawned || started.elapsed() > ROW_TIMEOUT {
            // SAFETY: a negative pid names the process group created at spawn, ours.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            child.wait().unwrap();
            break None;
        }
        thread::sleep(Duration::from_millis(5));
    };
    let took = started.elapsed();
    let after = snapshot(dir.path());
    drop(row.keep);

    let stdout = fs::read_to_string(&stdout_path).unwrap_or_default();
    let stderr = fs::read_to_string(&stderr_path).unwrap_or_default();
    let args: Vec<String> = row
        .args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let context = format!(
        "{name}: start_server {args:?} env {:?}\n  stderr: {stderr:?}\n  stdout: {stdout:?}",
        row.env
    );
    let mut problems = Vec::new();
    match status {
        None => problems.push(format!(
            "still running after {:?} (killed)",
            started.elapsed()
        )),
        Some(s) if s.success() => problems.push("exit status 0".to_string()),
        Some(s) if s.code().is_none() => problems.push(format!("killed: {s}")),
        Some(_) => {}
    }
    let mut lines: Vec<&str> = stderr.lines().collect();
    if lines
        .first()
        .is_some_and(|l| l.starts_with("start_server (pid:") && l.ends_with(") starting now..."))
    {
        lines.remove(0);
    }
    match lines[..] {
        [line] => {
            if !row.expect.iter().any(|e| line.contains(e.as_str())) {
                problems.push(format!("the error does not name any of {:?}", row.expect));
            }
        }
        _ => problems.push(format!("{} lines on stderr, not one", lines.len())),
    }
    if stderr.contains("starting new worker") {
        problems.push("a worker was spawned".into());
    }
    if !stdout.is_empty() {
        problems.push("output on stdout".into());
    }
    if before != after {
        let changed: Vec<String> = before
            .iter()
            .filter(|e| !after.contains(e))
            .map(|e| format!("-{}", e.path))
            .chain(
                after
                    .iter()
                    .filter(|e| !before.contains(e))
                    .map(|e| format!("+{}", e.path)),
            )
            .collect();
        problems.push(format!("the directory changed: {changed:?}"));
    }
    if problems.is_empty() {
        eprintln!("  {name} ({took:?}): {}", lines[0]);
        Ok(took)
    } else {
        Err(format!("{context}\n  problems: {}", problems.join("; ")))
    }
}

#[test]
fn bad_command_lines_and_environments_fail_cleanly() {
    let table = table();
    assert!(table.len() >= 30, "{} rows", table.len());
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::new());
    let started = Instant::now();
    thread::scope(|s| {
        for _ in 0..6 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(name, build)) = table.get(i) else {
                    break;
                };
                let result = std::panic::catch_unwind(|| run(name, build))
                    .unwrap_or_else(|_| Err(format!("{name}: the row panicked")));
                results.lock().unwrap().push((i, name, result));
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|r| r.0);
    let slowest = results
        .iter()
        .filter_map(|(_, n, r)| r.as_ref().ok().map(|d| (*d, *n)))
        .max();
    let failures: Vec<&String> = results
        .iter()
        .filter_map(|(_, _, r)| r.as_ref().err())
        .collect();
    eprintln!(
        "hostile input: {} rows in {:?}, {} failed; slowest passing row {slowest:?}",
        results.len(),
        started.elapsed(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        results.len(),
        failures
            .iter()
            .map(|f| f.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}
