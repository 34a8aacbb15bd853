//! `--log-file="| cmd"` as part of the supervised world: a logger that dies is
//! restarted (paced when it keeps dying), lines written meanwhile wait in the pipe for
//! the next one, the workers never get SIGPIPE, the logger starts clean (default
//! signals, no inherited socket), and nothing holding the pipe keeps start_server from
//! exiting.
//!
//! Each logger here writes its pid (`$$`, which its `exec` keeps) to a file, so that
//! the test can look at it in /proc.

mod common;
mod support;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{poll_until, TempDir, PATIENCE};
use support::*;

/// Well above the bounded wait at exit (2 s, then TERM), well below "hangs forever".
const EXIT_BOUND: Duration = Duration::from_secs(10);

/// A `--log-file` whose first run writes its pid to `dir/logger1` and runs `first`,
/// and whose later runs write theirs to `dir/logger2` and run `then`.
fn logger_spec(dir: &Path, first: &str, then: &str) -> String {
    let d = dir.display();
    format!(
        "--log-file=| if [ -e {d}/logger1 ]; then echo $$ > {d}/logger2; {then}; \
         else echo $$ > {d}/logger1; {first}; fi"
    )
}

fn text(file: &Path) -> String {
    fs::read_to_string(file).unwrap_or_default()
}

fn wait_text(file: &Path, needle: &str) -> String {
    wait_for(&format!("{needle:?} in {}", file.display()), || {
        let text = text(file);
        text.contains(needle).then_some(text)
    })
}

fn read_pid(file: &Path) -> i32 {
    wait_for(&format!("a pid in {}", file.display()), || {
        text(file).trim().parse().ok()
    })
}

/// Waits until `pid` runs `comm`: the logger's shell has exec'd its command.
fn wait_comm(pid: i32, comm: &str) {
    wait_until(&format!("pid {pid} to run {comm}"), || {
        fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
    });
}

fn ppid(pid: i32) -> i32 {
    stat_fields(pid).unwrap_or_default()[1].parse().unwrap()
}

/// What start_server logs when a logger that ran for less than 10 s exits.
fn restarting_after_a_second(status: i32) -> String {
    format!("log command exited with status {status}, restarting it in 1 secs\n")
}

/// A line of /proc/PID/status, such as `SigIgn`.
fn proc_status(pid: i32, field: &str) -> String {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

/// What each open descriptor of `pid` points to, by number.
fn fds(pid: i32) -> Vec<(i32, PathBuf)> {
    let mut fds: Vec<(i32, PathBuf)> = fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            Some((
                e.file_name().to_str()?.parse().ok()?,
                fs::read_link(e.path()).ok()?,
            ))
        })
        .collect();
    fds.sort();
    fds
}

/// The logger starts as a shell-run command would: nothing ignored or blocked, and
/// stdin, stdout and stderr only, stdin being the log pipe and stdout not.
fn assert_clean_logger(pid: i32) {
    assert_eq!(
        proc_status(pid, "SigIgn"),
        "0000000000000000",
        "logger {pid}"
    );
    assert_eq!(
        proc_status(pid, "SigBlk"),
        "0000000000000000",
        "logger {pid}"
    );
    let fds = fds(pid);
    let numbers: BTreeSet<i32> = fds.iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers, BTreeSet::from([0, 1, 2]), "logger {pid}: {fds:?}");
    let pipe = &fds[0].1;
    assert!(pipe.to_string_lossy().starts_with("pipe:"), "{fds:?}");
    assert!(fds[1..].iter().all(|(_, target)| target != pipe), "{fds:?}");
}

/// Stops `supervisor` (whose pid file is `pid_file`) with `--stop`, which must return
/// within `EXIT_BOUND`.
fn stop_within_bound(pid_file: &Path) {
    let started = Instant::now();
    let out = run_within(
        &["--stop", &format!("--pid-file={}", pid_file.display())],
        EXIT_BOUND,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("--stop returned after {:?}", started.elapsed());
}

#[test]
fn exit_and_stop_do_not_wait_for_an_orphan_holding_the_log_pipe() {
    let dir = TempDir::new("lp-orphan");
    let d = dir.path();
    let (pid_file, orphan, log) = (d.join("pid"), d.join("orphan"), d.join("out"));
    let _orphan = KillOnDrop(&orphan);
    let _logger = KillOnDrop(&d.join("logger1"));
    let mut server = Server::start(&[
        &format!("--pid-file={}", pid_file.display()),
        &logger_spec(d, &format!("exec cat >> {}", log.display()), "exit 1"),
        "--interval=0.1",
        "--",
        "sh",
        "-c",
        &format!(
            "sleep 300 & echo $! > {}; exec sleep 1000",
            orphan.display()
        ),
    ]);
    let orphan_pid = read_pid(&orphan);
    let logger = read_pid(&d.join("logger1"));
    wait_text(&log, "starting new worker");

    // The orphan keeps stderr, so the logger never reads EOF: start_server signals it.
    stop_within_bound(&pid_file);
    let status = server.wait_exit();
    assert!(status.success(), "{status}");
    assert!(!pid_file.exists(), "pid file left behind");
    assert!(!pid_alive(logger), "logger {logger} still running");
    // The orphan is its generation's: stopped with it (start_server(1), A GENERATION IS
    // ITS WHOLE PROCESS TREE), so nothing holds the pipe once start_server has exited.
    wait_until("the orphan to be stopped with its generation", || {
        !pid_alive(orphan_pid)
    });
    // What start_server wrote reached the logger before it was signalled.
    assert!(text(&log).ends_with("exiting\n"), "{}", text(&log));
}

/// After the first logger exits with `status`, start_server restarts it; a HUP then
/// starts generation 2, whose first line must reach the new logger (before, it died of
/// SIGPIPE, and every restart failed). `supervisor` must be the loggers' parent.
fn check_restart_after_logger_death(dir: &Path, supervisor: i32, status_file: &Path, status: i32) {
    let out = dir.join("out");
    let first = read_pid(&dir.join("logger1"));
    wait_until("the first logger to exit", || !pid_alive(first));
    signal(supervisor, libc::SIGHUP);
    wait_for("generation 2 alone in the status file", || {
        let generations: Vec<u64> = read_status(status_file).iter().map(|e| e.0).collect();
        (generations == [2]).then_some(())
    });
    let text = wait_text(&out, "up 2\n");
    assert!(text.contains(&restarting_after_a_second(status)), "{text}");
    let second = read_pid(&dir.join("logger2"));
    wait_comm(second, "cat");
    assert_eq!(
        ppid(second),
        supervisor,
        "the logger is not start_server's child"
    );
}

#[test]
fn a_dead_logger_is_restarted_and_restarts_go_on() {
    let dir = TempDir::new("lp-dead");
    let d = dir.path();
    let status_file = d.join("status");
    let _logger = KillOnDrop(&d.join("logger2"));
    let mut server = Server::start(&[
        &format!("--status-file={}", status_file.display()),
        &logger_spec(
            d,
            "exec head -n 1 > /dev/null",
            &format!("exec cat >> {}", d.join("out").display()),
        ),
        "--interval=0.1",
        "--",
        "sh",
        "-c",
        "echo up $SERVER_STARTER_GENERATION; exec sleep 1000",
    ]);
    check_restart_after_logger_death(d, server.pid(), &status_file, 0);
    server.stop();
    assert!(text(&d.join("out")).ends_with("exiting\n"));
}

#[test]
fn a_daemon_restarts_its_logger_too() {
    let dir = TempDir::new("lp-daemon");
    let d = dir.path();
    let (pid_file, status_file) = (d.join("pid"), d.join("status"));
    let cat = format!("exec cat >> {}", d.join("out").display());
    let _daemon = KillOnDrop(&pid_file);
    let _first = KillOnDrop(&d.join("logger1"));
    let _second = KillOnDrop(&d.join("logger2"));
    let out = run_within(
        &[
            "--daemonize",
            &format!("--pid-file={}", pid_file.display()),
            &format!("--status-file={}", status_file.display()),
            &logger_spec(d, &cat, &cat),
            "--interval=0.1",
            "--",
            "sh",
            "-c",
            "echo up $SERVER_STARTER_GENERATION; exec sleep 1000",
        ],
        PATIENCE,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let daemon = read_pid(&pid_file);
    let first = read_pid(&d.join("logger1"));
    wait_comm(first, "cat");
    assert_eq!(ppid(first), daemon, "the logger is not the daemon's child");
    signal(first, libc::SIGKILL);
    check_restart_after_logger_death(d, daemon, &status_file, 9);
    // Detached: the daemon's logger keeps no terminal open.
    let second = read_pid(&d.join("logger2"));
    assert_eq!(fds(second)[2].1, Path::new("/dev/null"));
    stop_within_bound(&pid_file);
    assert!(!pid_alive(daemon));
    assert!(text(&d.join("out")).ends_with("exiting\n"));
}

#[test]
fn a_logger_that_keeps_dying_is_restarted_at_a_slowing_pace() {
    let dir = TempDir::new("lp-pace");
    let starts = dir.path().join("starts");
    let mut server = Server::start(&[
        &format!("--log-file=| date +%s.%N >> {}", starts.display()),
        "--interval=0.1",
        "--",
        "sleep",
        "1000",
    ]);
    let times: Vec<f64> = wait_for("three starts of the logger", || {
        let times: Vec<f64> = text(&starts)
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect();
        (times.len() >= 3).then_some(times)
    });
    // 1 s, then 2 s (a busy machine only makes the pauses longer).
    assert!(times[1] - times[0] >= 0.9, "{times:?}");
    assert!(times[2] - times[1] >= 1.9, "{times:?}");
    assert!(server.try_exit().is_none(), "start_server exited");
    server.signal(libc::SIGTERM);
    let status = poll_until("start_server to exit", EXIT_BOUND, || server.try_exit());
    assert!(status.success(), "{status}");
}

#[test]
fn loggers_start_with_default_signals_and_no_socket() {
    let dir = TempDir::new("lp-clean");
    let d = dir.path();
    let cat = format!("exec cat >> {}", d.join("out").display());
    let _first = KillOnDrop(&d.join("logger1"));
    let _second = KillOnDrop(&d.join("logger2"));
    let mut server = Server::start(&[
        // A listening socket that the workers inherit, and the loggers must not.
        &format!("--path={}", d.join("sock").display()),
        &logger_spec(d, &cat, &cat),
        "--interval=0.1",
        "--",
        "sleep",
        "1000",
    ]);
    // The first logger, started before the main loop; then one the loop restarts.
    let first = read_pid(&d.join("logger1"));
    wait_comm(first, "cat");
    assert_eq!(ppid(first), server.pid());
    assert_clean_logger(first);
    signal(first, libc::SIGKILL);
    let second = read_pid(&d.join("logger2"));
    wait_comm(second, "cat");
    assert_eq!(ppid(second), server.pid());
    assert_clean_logger(second);
    server.stop();
    let text = text(&d.join("out"));
    assert!(text.contains(&restarting_after_a_second(9)), "{text}");
}

#[test]
fn lines_written_while_no_logger_runs_reach_the_next_one() {
    let dir = TempDir::new("lp-gap");
    let d = dir.path();
    let out = d.join("out");
    let _logger = KillOnDrop(&d.join("logger2"));
    let mut server = Server::start(&[
        &logger_spec(
            d,
            "exec head -n 1 > /dev/null",
            &format!(
                "echo logger2 $(date +%s%N) >> {0}; exec cat >> {0}",
                out.display()
            ),
        ),
        "--interval=0.1",
        "--",
        "sh",
        "-c",
        "i=0; while :; do i=$((i+1)); echo tick $i $(date +%s%N); sleep 0.05; done",
    ]);
    let parse = |text: &str| -> (u64, Vec<(u64, u64)>) {
        let started = text
            .lines()
            .find_map(|l| l.strip_prefix("logger2 ")?.parse().ok())
            .unwrap_or(u64::MAX);
        let ticks = text
            .lines()
            .filter_map(|l| {
                let mut words = l.strip_prefix("tick ")?.split(' ');
                Some((words.next()?.parse().ok()?, words.next()?.parse().ok()?))
            })
            .collect();
        (started, ticks)
    };
    // Until the new logger has passed on a line written after it started.
    let (started, ticks) = wait_for("ticks from after the second logger started", || {
        let (started, ticks) = parse(&text(&out));
        ticks
            .iter()
            .any(|&(_, at)| at > started)
            .then_some((started, ticks))
    });
    server.stop();
    let text = text(&out);
    // The first logger swallowed some lines and died; from the first one the second
    // logger got, none is missing.
    assert!(
        ticks.windows(2).all(|w| w[1].0 == w[0].0 + 1),
        "a gap in the ticks: {text}"
    );
    let waited = ticks.iter().filter(|&&(_, at)| at < started).count();
    assert!(
        waited >= 3,
        "only {waited} lines from before the second logger started: {text}"
    );
    assert!(text.contains(&restarting_after_a_second(0)), "{text}");
}

/// start_server with a logger that never reads and a worker that floods the pipe, once
/// the pipe is full (the worker blocks on it): (it, the logger's pid, the worker's).
fn flooded(d: &Path, env: &[(&str, &str)]) -> (Server, i32, i32) {
    let (logger, worker) = (d.join("logger"), d.join("worker"));
    let server = Server::start_with(
        &[
            &format!(
                "--log-file=| echo $$ > {}; exec sleep 1000",
                logger.display()
            ),
            "--interval=0.1",
            "--",
            "sh",
            "-c",
            &format!("echo $$ > {}; exec yes flood", worker.display()),
        ],
        env,
    );
    let logger = read_pid(&logger);
    let worker = read_pid(&worker);
    wait_comm(worker, "yes");
    // The pipe is full once the writer sleeps: `yes` never does otherwise.
    wait_until("the worker to block on the full pipe", || {
        stat_fields(worker)
            .unwrap_or_default()
            .first()
            .is_some_and(|state| state == "S")
    });
    (server, logger, worker)
}

/// TERM, and start_server must exit 0 within the bound, its worker and logger gone.
fn stops_within_bound(mut server: Server, logger: i32, worker: i32) {
    server.signal(libc::SIGTERM);
    let status = poll_until("start_server to exit", EXIT_BOUND, || server.try_exit());
    assert!(status.success(), "{status}");
    assert!(!pid_alive(worker) && !pid_alive(logger));
}

#[test]
fn start_server_never_blocks_on_a_full_log_pipe() {
    let dir = TempDir::new("lp-full");
    let _logger = KillOnDrop(&dir.path().join("logger"));
    let (server, logger, worker) = flooded(dir.path(), &[]);
    // Its own lines (received TERM, worker died, exiting) must not block it.
    stops_within_bound(server, logger, worker);
}

/// Whether `pid` runs an image handed an upgrade's state: its environment at exec
/// (/proc/PID/environ, which removing the variable later does not change) has it.
fn handed_an_upgrade(pid: i32) -> bool {
    fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .any(|var| var.starts_with(b"SERVER_STARTER_UPGRADE_STATE="))
}

/// The way back from a refused upgrade (the new image's line, then the previous
/// image's) used to block in write(2) on stderr, the full pipe, with TERM blocked:
/// TERM must still stop start_server within the bound.
#[test]
fn a_refused_upgrade_going_back_never_blocks_on_a_full_log_pipe() {
    let dir = TempDir::new("lp-back");
    let _logger = KillOnDrop(&dir.path().join("logger"));
    // The test hook of start_server(1): every new image refuses the state.
    let refuse = [("SERVER_STARTER_UPGRADE_TEST_REFUSE", "1")];
    let (server, logger, worker) = flooded(dir.path(), &refuse);
    server.signal(libc::SIGUSR2);
    wait_until("the new image to be executed", || {
        handed_an_upgrade(server.pid())
    });
    stops_within_bound(server, logger, worker);
}

/// The variables start_server's own service manager set for it: its notification
/// socket, its watchdog, and the sockets it passed.
const MANAGER_VARIABLES: [&str; 6] = [
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
];

/// The names in a file of NUL-separated `NAME=value` entries (/proc/PID/environ).
fn names(file: &Path) -> Vec<String> {
    let bytes = wait_for(&format!("{}", file.display()), || fs::read(file).ok());
    bytes
        .split(|&b| b == 0)
        .filter_map(|var| {
            let name = var.split(|&b| b == b'=').next()?;
            (!name.is_empty()).then(|| String::from_utf8_lossy(name).into_owned())
        })
        .collect()
}

/// Like the workers, the logger (the first, and one restarted by the main loop) gets
/// none of the variables start_server's own service manager set for start_server.
#[test]
fn loggers_get_none_of_start_servers_manager_variables() {
    let dir = TempDir::new("lp-env");
    let d = dir.path();
    let manager = common::notify::NotifySocket::new_abstract();
    // Each logger copies the environment it was started with, whole, then reads on.
    let copy = |name: &str| {
        let file = d.join(name).display().to_string();
        format!("cat /proc/$$/environ > {file}.tmp; mv {file}.tmp {file}")
    };
    let _first = KillOnDrop(&d.join("logger1"));
    let _second = KillOnDrop(&d.join("logger2"));
    let spec = logger_spec(
        d,
        &format!("{}; exec head -n 1 > /dev/null", copy("env1")),
        &format!("{}; exec cat > /dev/null", copy("env2")),
    );
    // Socket-activated, as systemd does it, with a notification socket and a watchdog:
    // LISTEN_PID and WATCHDOG_PID name start_server (the shells exec it).
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap().to_string();
    let mut cmd =
        socket_activated_command(Path::new("sh"), std::os::fd::AsRawFd::as_raw_fd(&holder));
    cmd.args(["-c", "WATCHDOG_PID=$$ exec \"$@\"", "sh"])
        .arg(start_server_bin())
        .args([&format!("--port={addr}"), &spec, "--interval=0.1", "--"])
        .args(["sleep", "1000"])
        .env("NOTIFY_SOCKET", &manager.env)
        .env("WATCHDOG_USEC", "600000000")
        .env("LISTEN_FDNAMES", "web");
    let mut server = Server::spawn(cmd);
    for env in ["env1", "env2"] {
        let names = names(&d.join(env));
        assert!(names.iter().any(|n| n == "PATH"), "{env}: {names:?}");
        let leaked: Vec<&String> = names
            .iter()
            .filter(|n| MANAGER_VARIABLES.contains(&n.as_str()))
            .collect();
        assert!(leaked.is_empty(), "{env}: the logger got {leaked:?}");
    }
    server.stop();
}
