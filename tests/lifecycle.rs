//! Bounded lifecycles, through the built binary: `--kill-timeout` after a HUP and
//! after a TERM (and `--stop`'s bound), `SIGUSR1` reopening `--log-file` behind a
//! rename and behind Debian's logrotate, orphans of workers reparented to start_server,
//! stopped with their generation and reaped, and start_server as PID 1 of a PID namespace, in the host's root and in
//! an empty one built from contrib/docker/Dockerfile.
//!
//! Without `--kill-timeout` a worker ignoring TERM is waited for however long it takes:
//! tests/reliability.rs, `worker_ignoring_term_is_waited_for_and_signalled_again`.
//!
//! The figures each test measures are printed on stderr (`cargo test -- --nocapture`).

mod common;
mod support;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::{example, TempDir};
use support::*;

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

fn arg(name: &str, path: &Path) -> String {
    format!("--{name}={}", path.display())
}

fn file_lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

fn wait_file_line(path: &Path, needle: &str) -> String {
    wait_for(&format!("{needle:?} in {}", path.display()), || {
        file_lines(path).into_iter().find(|l| l.contains(needle))
    })
}

/// Gone from the process table: exited and reaped (a zombie still has its /proc entry).
fn reaped(pid: i32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

// ------------------------------------------------------------------ zombies

/// Samples the children of `parent` until finished, and measures how long the
/// longest-lived zombie among them stayed one. start_server reaps a child as soon as
/// its SIGCHLD is read: a zombie it fails to reap shows up as one that lingers.
struct ZombieWatch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<(Duration, usize)>>,
}

/// Longer than this, a zombie was left behind, not merely caught between its exit and
/// its reaping on a busy machine.
const ZOMBIE_LINGER: Duration = Duration::from_secs(2);

impl ZombieWatch {
    fn start(parent: i32) -> ZombieWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let mut first_seen: HashMap<i32, Instant> = HashMap::new();
            let (mut longest, mut samples) = (Duration::ZERO, 0);
            while !flag.load(Ordering::Relaxed) {
                let now = Instant::now();
                let zombies: Vec<i32> = children(parent)
                    .into_iter()
                    .filter(|&(_, state)| state == 'Z')
                    .map(|(pid, _)| pid)
                    .collect();
                first_seen.retain(|pid, _| zombies.contains(pid));
                for pid in zombies {
                    let since = *first_seen.entry(pid).or_insert(now);
                    longest = longest.max(now - since);
                }
                samples += 1;
                // The sampling period.
                thread::sleep(Duration::from_millis(10));
            }
            (longest, samples)
        });
        ZombieWatch {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling; fails the test if a zombie lingered.
    fn finish(mut self, what: &str) {
        self.stop.store(true, Ordering::Relaxed);
        let (longest, samples) = self.thread.take().unwrap().join().unwrap();
        eprintln!(
            "{what}: {samples} samples of start_server's children, longest-lived zombie {}",
            secs(longest)
        );
        assert!(
            longest < ZOMBIE_LINGER,
            "{what}: a zombie child of start_server lingered {longest:?}"
        );
    }
}

impl Drop for ZombieWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

// ------------------------------------------------------------------ --kill-timeout

/// start_server with `--interval=0.1`, a status file in `dir` and `extra` options,
/// running `command`; the status file's path.
fn start_supervising(dir: &TempDir, extra: &[&str], command: &[&str]) -> (Server, PathBuf) {
    let status = dir.path().join("status");
    let mut args = strings(&["--interval=0.1", &arg("status-file", &status)]);
    args.extend(strings(extra));
    args.push("--".into());
    args.extend(strings(command));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (Server::start(&args), status)
}

fn ignore_term() -> [String; 2] {
    ["sh".into(), worker_script("ignore_term.sh")]
}

#[test]
fn kill_timeout_sigkills_an_old_worker_ignoring_term_after_a_hup() {
    let dir = TempDir::new("kthup");
    let [sh, script] = ignore_term();
    let (mut server, status) = start_supervising(&dir, &["--kill-timeout=1"], &[&sh, &script]);
    let leftovers = Leftovers::new(server.pid());
    let first = server.wait_status(&status, &[1])[0].1;
    leftovers.watch(first);

    let hup = Instant::now();
    server.signal(libc::SIGHUP);
    server.wait_line(&format!(
        "new worker is now running, sending TERM to old workers:{first}"
    ));
    let second = server.wait_status(&status, &[1, 2])[1].1;
    leftovers.watch(second);
    let kill_line =
        format!("worker {first} still running 1 secs after it was told to stop, sending KILL");
    server.wait_line(&kill_line);
    let killed = hup.elapsed();
    server.wait_line(&format!("old worker {first} died, status:9"));
    eprintln!(
        "--kill-timeout=1: old worker ignoring TERM got KILL {} after the HUP",
        secs(killed)
    );
    // Never before its TERM plus the timeout; a little after, on a busy machine.
    assert!(
        killed >= Duration::from_secs(1) && killed < Duration::from_secs(4),
        "KILL {killed:?} after the HUP"
    );
    let lines = server.lines();
    let at = |needle: &str| lines.iter().position(|l| l.contains(needle)).unwrap();
    assert!(at("killing old workers") < at(&kill_line), "{lines:?}");
    assert_eq!(server.wait_status(&status, &[2]), vec![(2, second)]);
    assert!(pid_alive(second), "the new worker was killed: {lines:?}");
    assert!(server.try_exit().is_none(), "{lines:?}");

    // The new worker ignores TERM too: the stop is bounded the same way.
    server.stop();
    assert!(server.has_line(&format!("worker {second} died, status:9")));
}

/// start_server whose worker ignores TERM, with a status file and a pid file.
struct IgnoringTerm {
    server: Server,
    status: PathBuf,
    pid_file: PathBuf,
    worker: i32,
    _leftovers: Leftovers,
}

impl IgnoringTerm {
    fn start(dir: &TempDir, extra: &[&str]) -> IgnoringTerm {
        let pid_file = dir.path().join("pid");
        let pid_arg = arg("pid-file", &pid_file);
        let [sh, script] = ignore_term();
        let extra: Vec<&str> = [pid_arg.as_str()]
            .into_iter()
            .chain(extra.iter().copied())
            .collect();
        let (server, status) = start_supervising(dir, &extra, &[&sh, &script]);
        let leftovers = Leftovers::new(server.pid());
        let worker = server.wait_status(&status, &[1])[0].1;
        leftovers.watch(worker);
        wait_until("the pid file", || {
            fs::read_to_string(&pid_file).is_ok_and(|s| s == format!("{}\n", server.pid()))
        });
        IgnoringTerm {
            server,
            status,
            pid_file,
            worker,
            _leftovers: leftovers,
        }
    }
}

#[test]
fn kill_timeout_bounds_a_stop_and_nothing_is_left_behind() {
    let dir = TempDir::new("ktterm");
    let sock = dir.path().join("s.sock");
    let IgnoringTerm {
        mut server,
        status,
        pid_file,
        worker,
        _leftovers,
    } = IgnoringTerm::start(&dir, &["--kill-timeout=2", &arg("path", &sock)]);
    assert!(sock.exists());

    let term = Instant::now();
    server.signal(libc::SIGTERM);
    let sent = format!("received TERM, sending TERM to all workers:{worker}");
    server.wait_line(&sent);
    // Half-way through the timeout, a second TERM: sent on to the worker again, and
    // the KILL stays due 2 s after the first (at 3.5 s, had it restarted the clock).
    thread::sleep(Duration::from_millis(1500));
    assert!(pid_alive(worker) && server.try_exit().is_none());
    server.signal(libc::SIGTERM);
    server.wait_nth_line(&sent, 2);
    server.wait_line(&format!(
        "worker {worker} still running 2 secs after it was told to stop, sending KILL"
    ));
    let killed = term.elapsed();
    let exit = server.wait_exit();
    let exited = term.elapsed();
    eprintln!(
        "--kill-timeout=2: worker ignoring TERM got KILL {} after the first TERM, start_server exited {} after it",
        secs(killed),
        secs(exited)
    );
    assert!(exit.success(), "{exit}: {:?}", server.lines());
    assert!(
        killed >= Duration::from_secs(2) && killed < Duration::from_millis(3400),
        "KILL {killed:?} after the first TERM"
    );
    assert!(
        exited < Duration::from_secs(4),
        "exited {exited:?} after TERM"
    );
    let lines = server.lines();
    assert!(
        lines.contains(&format!("worker {worker} died, status:9")),
        "{lines:?}"
    );
    assert_eq!(lines.last().map(String::as_str), Some("exiting"));
    assert!(!pid_alive(worker));
    for file in [&status, &pid_file, &sock] {
        assert!(!file.exists(), "{} left behind", file.display());
    }
}

fn stop_client(pid_file: &Path, kill_timeout: &str) -> (std::process::Output, Duration) {
    let started = Instant::now();
    let out = Command::new(start_server_bin())
        .args([
            "--stop".to_string(),
            arg("pid-file", pid_file),
            format!("--kill-timeout={kill_timeout}"),
        ])
        .output()
        .expect("running start_server --stop");
    (out, started.elapsed())
}

#[test]
fn stop_client_returns_once_the_kill_timeout_has_done_its_work() {
    let dir = TempDir::new("stopkt");
    let IgnoringTerm {
        mut server,
        pid_file,
        worker,
        _leftovers,
        ..
    } = IgnoringTerm::start(&dir, &["--kill-timeout=1"]);
    let (out, took) = stop_client(&pid_file, "1");
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "--stop --kill-timeout=1 on an instance with --kill-timeout=1: returned after {}",
        secs(took)
    );
    assert!(out.status.success(), "{}: {stderr}", out.status);
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(4),
        "{took:?}"
    );
    assert!(
        server.try_exit().is_some_and(|s| s.success()),
        "{:?}",
        server.lines()
    );
    assert!(!pid_alive(worker));
    assert!(!pid_file.exists());
}

#[test]
fn stop_client_gives_up_after_the_kill_timeout_plus_a_margin() {
    let dir = TempDir::new("stopgu");
    // The instance itself has no --kill-timeout: its worker is waited for forever.
    let IgnoringTerm {
        mut server,
        pid_file,
        worker,
        _leftovers,
        ..
    } = IgnoringTerm::start(&dir, &[]);
    let (out, took) = stop_client(&pid_file, "0.5");
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "--stop --kill-timeout=0.5 on an instance that cannot stop: gave up after {}",
        secs(took)
    );
    assert_eq!(out.status.code(), Some(255), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "start_server (pid {}) is still running 5.5 secs after SIGTERM",
            server.pid()
        )),
        "{stderr}"
    );
    assert!(
        took >= Duration::from_millis(5500) && took < Duration::from_secs(8),
        "{took:?}"
    );
    assert!(server.try_exit().is_none() && pid_alive(worker));
    assert!(pid_file.exists());
    // Ours to end: the worker, by pid; then start_server leaves as usual.
    signal(worker, libc::SIGKILL);
    assert!(server.wait_exit().success(), "{:?}", server.lines());
}

#[test]
fn idle_with_kill_timeout_never_wakes_up() {
    let dir = TempDir::new("idle");
    let (mut server, status) = start_supervising(&dir, &["--kill-timeout=1"], &["sleep", "600"]);
    let first = server.wait_status(&status, &[1])[0].1;
    // A restart whose old worker leaves in time: its KILL timer goes with it.
    server.signal(libc::SIGHUP);
    server.wait_line(&format!("old worker {first} died, status:15"));
    server.wait_status(&status, &[2]);
    // Settled: back in ppoll for good.
    let switches = idle_context_switches(server.pid(), Duration::from_secs(2));
    eprintln!("idle with --kill-timeout=1 after a restart: {switches} context switches in 2 s");
    assert_eq!(switches, 0, "start_server woke up while idle");
    assert!(!server.has_line("sending KILL"), "{:?}", server.lines());
    server.stop();
}

// ------------------------------------------------------------------ USR1: log reopen

/// start_server with `--log-file`, serving on a unix socket (no port to race for),
/// its workers http-static, which log their start and their exit.
fn logging_server(dir: &TempDir, log: &Path, extra: &[&str]) -> (Server, PathBuf) {
    let sock = dir.path().join("s.sock");
    let http = example("http-static");
    let mut args = strings(&["--interval=0.2", &arg("path", &sock), &arg("log-file", log)]);
    args.extend(strings(extra));
    args.extend(strings(&["--", http.to_str().unwrap()]));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (Server::start(&args), sock)
}

/// Waits until `generation` answers on the unix socket; its pid.
fn wait_generation_unix(sock: &Path, generation: u64) -> i32 {
    wait_for(
        &format!("generation {generation} to answer on {}", sock.display()),
        || match http_get_unix(sock) {
            Ok((pid, g)) if g == generation => Some(pid),
            _ => None,
        },
    )
}

/// After the log was moved to `rotated` and start_server reopened `log`: a HUP's new
/// generation logs to the new file, the old one to the file it holds (the rotated
/// one), and start_server to the new one; then TERM.
fn check_rotation(mut server: Server, sock: &Path, log: &Path, rotated: &Path, first: i32) {
    let path = log.display().to_string();
    wait_file_line(rotated, &format!("reopening log file {path}"));
    wait_file_line(log, "log file reopened");
    assert!(server.try_exit().is_none(), "USR1 killed start_server");
    assert_eq!(
        http_get_unix(sock).expect("served after USR1"),
        (first, 1),
        "USR1 restarted the worker"
    );

    server.signal(libc::SIGHUP);
    let second = wait_generation_unix(sock, 2);
    wait_file_line(log, &format!("http: pid {second} generation 2 serving"));
    wait_file_line(log, &format!("old worker {first} died, status:0"));
    // The old worker still wrote to the file it had: the rotated one.
    wait_file_line(rotated, &format!("http: pid {first} exiting"));
    let (new_lines, old_lines) = (file_lines(log), file_lines(rotated));
    assert!(
        new_lines
            .iter()
            .any(|l| l == "received HUP, spawning a new worker"),
        "{new_lines:?}"
    );
    assert!(
        !new_lines
            .iter()
            .any(|l| l.contains(&format!("http: pid {first} "))),
        "the old worker's lines moved: {new_lines:?}"
    );
    assert!(
        !old_lines.iter().any(|l| l.contains(&second.to_string())
            || l.contains("received HUP")
            || l.contains("log file reopened")),
        "new lines in the rotated file: {old_lines:?}"
    );
    server.stop();
    assert_eq!(file_lines(log).last().map(String::as_str), Some("exiting"));
}

#[test]
fn usr1_reopens_the_log_file_moved_away() {
    let dir = TempDir::new("reopen");
    let (log, rotated) = (dir.path().join("app.log"), dir.path().join("app.log.1"));
    let (server, sock) = logging_server(&dir, &log, &[]);
    let first = wait_generation_unix(&sock, 1);
    wait_file_line(&log, &format!("http: pid {first} generation 1 serving"));

    fs::rename(&log, &rotated).unwrap();
    server.signal(libc::SIGUSR1);
    check_rotation(server, &sock, &log, &rotated, first);
}

#[test]
fn logrotate_with_postrotate_usr1_rotates_without_a_restart() {
    let logrotate = ["/usr/sbin/logrotate", "/sbin/logrotate"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists());
    let Some(logrotate) = logrotate else {
        eprintln!("skipping: logrotate is not installed (Debian package logrotate)");
        return;
    };
    let dir = TempDir::new("logrot");
    let (log, pid_file) = (dir.path().join("app.log"), dir.path().join("app.pid"));
    let (server, sock) = logging_server(&dir, &log, &[&arg("pid-file", &pid_file)]);
    let first = wait_generation_unix(&sock, 1);
    wait_file_line(&log, &format!("http: pid {first} generation 1 serving"));
    wait_until("the pid file", || {
        fs::read_to_string(&pid_file).is_ok_and(|s| s.ends_with('\n'))
    });

    // The README's stanza, with this test's paths.
    let conf = dir.path().join("logrotate.conf");
    let stanza = [
        "weekly",
        "rotate 8",
        "missingok",
        "notifempty",
        "create 0644",
        "delaycompress",
        "compress",
        "postrotate",
        &format!("    kill -USR1 \"$(cat {})\"", pid_file.display()),
        "endscript",
    ];
    let body: String = stanza.iter().map(|l| format!("    {l}\n")).collect();
    fs::write(&conf, format!("{} {{\n{body}}}\n", log.display())).unwrap();
    let out = Command::new(logrotate)
        .arg("-f")
        .arg("-s")
        .arg(dir.path().join("logrotate.state"))
        .arg(&conf)
        .output()
        .expect("running logrotate");
    assert!(
        out.status.success(),
        "logrotate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rotated = dir.path().join("app.log.1");
    assert!(rotated.exists(), "logrotate did not rotate");
    check_rotation(server, &sock, &log, &rotated, first);
}

#[test]
fn usr1_without_a_log_file_is_logged_and_harmless() {
    let dir = TempDir::new("usr1");
    let sock = dir.path().join("s.sock");
    let http = example("http-static");
    let mut server = Server::start(&[
        "--interval=0.2",
        &arg("path", &sock),
        "--",
        http.to_str().unwrap(),
    ]);
    let first = wait_generation_unix(&sock, 1);
    server.signal(libc::SIGUSR1);
    server.wait_line("received USR1, but there is no --log-file to reopen");
    assert_eq!(http_get_unix(&sock).unwrap(), (first, 1));
    // Still acting on signals, in order.
    server.signal(libc::SIGHUP);
    wait_generation_unix(&sock, 2);
    server.stop();
}

#[test]
fn usr1_with_a_log_pipe_is_logged_and_harmless() {
    let dir = TempDir::new("usr1p");
    let piped = dir.path().join("piped.log");
    let spec = format!("| cat >> {}", piped.display());
    let (mut server, sock) = logging_server(&dir, Path::new(&spec), &[]);
    let first = wait_generation_unix(&sock, 1);
    server.signal(libc::SIGUSR1);
    let line = wait_file_line(&piped, "received USR1");
    eprintln!("USR1 with a log pipe: {line:?}");
    assert_eq!(http_get_unix(&sock).unwrap(), (first, 1));
    server.signal(libc::SIGHUP);
    let second = wait_generation_unix(&sock, 2);
    wait_file_line(&piped, &format!("http: pid {second} generation 2 serving"));
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit().success());
    assert_eq!(
        file_lines(&piped).last().map(String::as_str),
        Some("exiting")
    );
}

// ------------------------------------------------------------------ orphans

#[test]
fn orphan_of_a_dead_worker_is_stopped_with_its_generation_and_reaped() {
    let dir = TempDir::new("orphan");
    let ForkChild {
        mut server,
        leftovers,
        status,
        grandchild_file,
        worker,
        grandchild: orphan,
    } = ForkChild::start(&dir);
    let zombies = ZombieWatch::start(server.pid());
    assert_eq!(ppid(orphan), Some(worker));

    fs::remove_file(&grandchild_file).unwrap();
    signal(worker, libc::SIGKILL);
    // Its generation is gone only once its whole tree is: the orphan gets the stop
    // signal (reparented to start_server, a subreaper, not to PID 1) and is reaped.
    server.wait_line(&format!(
        "worker {worker} (generation 1) exited, leaving processes {orphan}; sending TERM"
    ));
    server.wait_line(&format!(
        "worker {worker} died unexpectedly with status:9, restarting"
    ));
    let next = server.wait_status(&status, &[2])[0].1;
    leftovers.watch(next);
    let next_child = wait_pid_file(&grandchild_file);
    leftovers.watch(next_child);
    wait_until("the orphan to be reaped", || reaped(orphan));
    server.wait_line(&format!(
        "the processes worker {worker} (generation 1) left are gone"
    ));
    assert_eq!(child_pids(server.pid()), vec![next]);
    zombies.finish("orphan of a dead worker");
    assert_eq!(read_status(&status), vec![(2, next)]);

    server.stop();
    // The new worker's own child outlives it: no one's to stop but ours.
    signal(next_child, libc::SIGKILL);
}

#[test]
fn orphan_of_a_worker_that_forks_and_exits_is_reaped() {
    let dir = TempDir::new("daemon");
    let orphan_file = dir.path().join("orphan.pid");
    // A server that daemonizes itself: its child lives on, it exits 0.
    let script = "sleep 600 & echo $! > \"$ORPHAN_FILE.tmp\"; mv \"$ORPHAN_FILE.tmp\" \"$ORPHAN_FILE\"; exit 0";
    let mut server = Server::start_with(
        &["--interval=30", "--", "sh", "-c", script],
        &[("ORPHAN_FILE", orphan_file.to_str().unwrap())],
    );
    let leftovers = Leftovers::new(server.pid());
    let zombies = ZombieWatch::start(server.pid());
    let orphan = wait_pid_file(&orphan_file);
    leftovers.watch(orphan);
    server.wait_line("seems to have failed to start, exit status:0");
    server.wait_line("a server that daemonizes itself (forks and exits) cannot be supervised");
    // What it left is its failed generation's, stopped with it.
    server.wait_line(&format!("leaving processes {orphan}; sending TERM"));
    wait_until("the orphan to be reaped", || reaped(orphan));
    assert_eq!(child_pids(server.pid()), vec![]);
    zombies.finish("orphan of a daemonizing worker");
    assert!(server.try_exit().is_none());
    server.stop();
}

// ------------------------------------------------------------------ PID 1

#[test]
fn pid1_of_a_pid_namespace_acts_on_signals_from_outside_and_reaps_orphans() {
    if let Some(why) = no_pid_namespace() {
        eprintln!("skipping: start_server cannot run as PID 1 here: {why}");
        return;
    }
    let dir = TempDir::new("pid1");
    let sock = dir.path().join("s.sock");
    let http = example("http-static");
    // Each worker leaves a child behind when it exits.
    let mut server = Server::start_program(
        Path::new("unshare"),
        &[
            "--pid",
            "--fork",
            "--mount-proc",
            start_server_bin().to_str().unwrap(),
            "--interval=0.2",
            "--kill-timeout=5",
            &arg("path", &sock),
            "--",
            "sh",
            "-c",
            "sleep 600 & exec \"$0\"",
            http.to_str().unwrap(),
        ],
        &[],
    );
    let init = namespace_init(&server);
    let zombies = ZombieWatch::start(init);
    let first = wait_generation_unix(&sock, 1);
    let first_outer = child_known_as(init, first);
    let orphan = wait_for("the first worker's child", || {
        child_pids(first_outer).first().copied()
    });
    let orphan_inside = pid_in_namespace(orphan).expect("the orphan's pid inside");

    signal(init, libc::SIGHUP);
    let second = wait_generation_unix(&sock, 2);
    server.wait_line(&format!("old worker {first} died, status:0"));
    // The orphan, reparented to PID 1, is stopped with its generation, and reaped.
    server.wait_line(&format!("exited, leaving processes {orphan_inside}"));
    wait_until("the orphan to be reaped", || reaped(orphan));
    assert_eq!(
        children(init).len(),
        1,
        "PID 1's children: {:?}",
        children(init)
    );

    signal(init, libc::SIGUSR1);
    server.wait_line("received USR1, but there is no --log-file to reopen");
    assert_eq!(http_get_unix(&sock).unwrap(), (second, 2));
    zombies.finish("PID 1 of a PID namespace");

    let term = Instant::now();
    signal(init, libc::SIGTERM);
    let exit = server.wait_exit();
    eprintln!(
        "PID 1: unshare reported {exit} {} after TERM",
        secs(term.elapsed())
    );
    assert!(exit.success(), "{exit}: {:?}", server.lines());
    let lines = server.lines();
    assert!(
        lines.contains(&format!(
            "received TERM, sending TERM to all workers:{second}"
        )),
        "{lines:?}"
    );
    assert_eq!(lines.last().map(String::as_str), Some("exiting"));
    assert!(!sock.exists());
}

/// What contrib/docker/Dockerfile ships: its final stage's `COPY --from=build` lines
/// (source under the repository, destination in the image) and its ENTRYPOINT.
struct Recipe {
    copies: Vec<(PathBuf, String)>,
    entrypoint: Vec<String>,
}

fn docker_recipe() -> Recipe {
    let path = common::repo_root().join("contrib/docker/Dockerfile");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut copies = Vec::new();
    let mut entrypoint = None;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let ["COPY", "--from=build", source, dest] = words[..] {
            let source = source
                .strip_prefix("/src/")
                .unwrap_or_else(|| panic!("a COPY from outside the build's /src: {line}"));
            copies.push((PathBuf::from(source), dest.to_string()));
        }
        if let Some(array) = line.strip_prefix("ENTRYPOINT ") {
            let array = array.trim();
            assert!(
                array.starts_with('[') && array.ends_with(']'),
                "ENTRYPOINT not in exec form (a shell would be PID 1): {line}"
            );
            let items = array[1..array.len() - 1].split(',').map(|item| {
                let item = item.trim();
                assert!(item.len() >= 2 && item.starts_with('"') && item.ends_with('"'));
                item[1..item.len() - 1].to_string()
            });
            entrypoint = Some(items.collect());
        }
    }
    Recipe {
        copies,
        entrypoint: entrypoint.expect("an ENTRYPOINT in the Dockerfile"),
    }
}

#[test]
fn dockerfile_copies_what_make_scratch_builds() {
    let recipe = docker_recipe();
    let dests: Vec<&str> = recipe.copies.iter().map(|c| c.1.as_str()).collect();
    assert_eq!(recipe.copies.len(), 2, "{dests:?}");
    for (source, dest) in &recipe.copies {
        let built = common::artifact(source.to_str().unwrap(), "make scratch");
        let file = Command::new("file").arg(&built).output().expect("file(1)");
        let file = String::from_utf8_lossy(&file.stdout);
        assert!(
            file.contains("statically linked"),
            "{dest} would not run FROM scratch: {file}"
        );
    }
    // start_server first, the worker after `--`: both in the image.
    let entry = &recipe.entrypoint;
    let dashes = entry
        .iter()
        .position(|a| a == "--")
        .expect("-- in ENTRYPOINT");
    assert!(dests.contains(&entry[0].as_str()), "{entry:?}");
    assert!(dests.contains(&entry[dashes + 1].as_str()), "{entry:?}");
    // Below `docker stop`'s 10 s, so that start_server reaches its clean exit.
    let kill_timeout: f64 = entry
        .iter()
        .find_map(|a| a.strip_prefix("--kill-timeout="))
        .expect("--kill-timeout in ENTRYPOINT")
        .parse()
        .unwrap();
    assert!(kill_timeout < 10.0, "{entry:?}");
}

#[test]
fn pid1_in_an_empty_root_holding_the_dockerfile_recipe() {
    if let Some(why) = no_pid_namespace() {
        eprintln!("skipping: start_server cannot run as PID 1 here: {why}");
        return;
    }
    let recipe = docker_recipe();
    let root = TempDir::new("scratch");
    for (source, dest) in &recipe.copies {
        let built = common::artifact(source.to_str().unwrap(), "make scratch");
        fs::copy(&built, root.path().join(dest.trim_start_matches('/'))).unwrap();
    }
    assert_eq!(fs::read_dir(root.path()).unwrap().count(), 2);
    let root_arg = arg("root", root.path());
    let kill_timeout: f64 = recipe
        .entrypoint
        .iter()
        .find_map(|a| a.strip_prefix("--kill-timeout="))
        .unwrap()
        .parse()
        .unwrap();
    // The ENTRYPOINT as it is, but on a free loopback port instead of the image's.
    let args = |port: u16| {
        let mut args = strings(&["--pid", "--fork", &root_arg]);
        args.extend(recipe.entrypoint.iter().map(|a| {
            if a.starts_with("--port=") {
                format!("--port=127.0.0.1:{port}")
            } else {
                a.clone()
            }
        }));
        args
    };
    let (mut server, port) = Server::start_program_retrying(Path::new("unshare"), args, &[]);
    let addr = addr("127.0.0.1", port);
    let init = namespace_init(&server);
    let zombies = ZombieWatch::start(init);
    let first = server.wait_generation(addr, 1);
    server.wait_line("start_server (pid:1) starting now...");

    signal(init, libc::SIGHUP);
    let second = server.wait_generation(addr, 2);
    server.wait_line(&format!("old worker {first} died, status:0"));
    signal(init, libc::SIGUSR1);
    server.wait_line("received USR1, but there is no --log-file to reopen");
    assert_eq!(http_get(addr).unwrap(), (second, 2));
    zombies.finish("PID 1 in an empty root");

    let term = Instant::now();
    signal(init, libc::SIGTERM);
    let exit = server.wait_exit();
    let took = term.elapsed();
    eprintln!(
        "PID 1 in an empty root: unshare reported {exit} {} after TERM",
        secs(took)
    );
    assert!(exit.success(), "{exit}: {:?}", server.lines());
    assert!(took.as_secs_f64() < kill_timeout + 2.0, "{took:?}");
    assert!(server.has_line(&format!("http: pid {second} exiting")));
    assert_eq!(
        server.lines().last().map(String::as_str),
        Some("exiting"),
        "{:?}",
        server.lines()
    );
}
