//! What each signal does to start_server (start_server(1), SIGNALS) and how failed
//! starts are paced, through the built binary: every stop signal stops it cleanly
//! (workers signalled, files removed, exit 0); every ignored one leaves it serving with
//! the same worker and is logged with its sender; a worker that cannot start is retried
//! no faster than the floor, even at `--interval=0` and when fork(2) itself fails;
//! `--backoff` doubles the pause and starts over once a generation starts; a worker
//! that daemonizes itself gets a hint.
//!
//! The figures each test measures are printed on stderr (`cargo test -- --nocapture`).

mod common;
mod support;

use std::os::raw::c_int;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use common::{example, TempDir, PATIENCE};
use support::*;

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

// ------------------------------------------------------------------ stop signals

/// `sig` stops start_server as TERM does: the worker gets `worker_gets` (the
/// `--signal-on-term`, USR1 here, or TERM for INT), and once it has exited the status
/// file, pid file and socket file are gone and start_server exits 0.
fn stops_cleanly(sig: c_int, name: &str, worker_gets: &str) {
    let dir = TempDir::new("stop");
    let status = dir.path().join("status");
    let pid_file = dir.path().join("pid");
    let sock = dir.path().join("s.sock");
    let signal_log = dir.path().join("signals");
    let mut server = Server::start_with(
        &[
            "--interval=0.1",
            "--signal-on-term=USR1",
            &format!("--path={}", sock.display()),
            &format!("--status-file={}", status.display()),
            &format!("--pid-file={}", pid_file.display()),
            "--",
            "sh",
            &worker_script("report_signal.sh"),
        ],
        &[("SIGNAL_LOG", signal_log.to_str().unwrap())],
    );
    let worker = server.wait_status(&status, &[1])[0].1;
    wait_until("the worker's traps", || {
        read(&signal_log).contains(&format!("ready {worker}"))
    });
    assert!(pid_file.exists() && sock.exists());

    server.signal(sig);
    let exit = server.wait_exit();
    let lines = server.lines();
    assert_eq!(exit.code(), Some(0), "{name}: {exit:?} {lines:?}");
    assert!(
        lines.contains(&format!(
            "received {name}, sending {worker_gets} to all workers:{worker}"
        )),
        "{lines:?}"
    );
    assert!(
        lines.contains(&format!("worker {worker} died, status:0")),
        "{lines:?}"
    );
    assert_eq!(lines.last().map(String::as_str), Some("exiting"));
    let report = read(&signal_log);
    assert!(
        report.contains(&format!("{worker} got {worker_gets}")),
        "{name}: {report}"
    );
    for file in [&status, &pid_file, &sock] {
        assert!(!file.exists(), "{name} left {}", file.display());
    }
    assert!(!pid_alive(worker));
}

#[test]
fn term_stops_cleanly() {
    stops_cleanly(libc::SIGTERM, "TERM", "USR1");
}

#[test]
fn int_stops_cleanly_sending_term() {
    stops_cleanly(libc::SIGINT, "INT", "TERM");
}

#[test]
fn quit_stops_cleanly() {
    stops_cleanly(libc::SIGQUIT, "QUIT", "USR1");
}

#[test]
fn abrt_stops_cleanly() {
    stops_cleanly(libc::SIGABRT, "ABRT", "USR1");
}

#[test]
fn xcpu_stops_cleanly() {
    stops_cleanly(libc::SIGXCPU, "XCPU", "USR1");
}

// ------------------------------------------------------------------ ignored signals

/// Logged and ignored, with the names start_server gives them.
const LOGGED: [(c_int, &str); 13] = [
    (libc::SIGALRM, "ALRM"),
    (libc::SIGVTALRM, "VTALRM"),
    (libc::SIGPROF, "PROF"),
    (libc::SIGIO, "IO"),
    (libc::SIGPWR, "PWR"),
    (libc::SIGSYS, "SYS"),
    (libc::SIGTRAP, "TRAP"),
    (libc::SIGSTKFLT, "STKFLT"),
    (32, "NUM32"),
    (33, "NUM33"),
    (34, "RTMIN"),
    (40, "NUM40"),
    (64, "RTMAX"),
];

#[test]
fn stray_signals_leave_start_server_serving_with_the_same_worker() {
    let http = example("http-static").display().to_string();
    let (mut server, port) = Server::start_retrying(
        |port| {
            vec![
                format!("--port=127.0.0.1:{port}"),
                "--interval=0.1".into(),
                "--".into(),
                http.clone(),
            ]
        },
        &[],
    );
    let addr = addr("127.0.0.1", port);
    let worker = wait_generation(addr, 1);
    let serving = |after: &str| {
        assert!(pid_alive(server.pid()), "start_server died of {after}");
        match http_get(addr) {
            Ok(answer) => assert_eq!(answer, (worker, 1), "after {after}"),
            Err(e) => panic!("no answer after {after}: {e}"),
        }
    };
    let me = std::process::id();

    // Ignored in the kernel: nothing to log; the ALRM line below shows that
    // start_server lived on to read a later signal.
    for sig in [libc::SIGPIPE, libc::SIGXFSZ] {
        server.signal(sig);
    }
    for (sig, name) in LOGGED {
        server.signal(sig);
        server.wait_line(&format!("received {name} from pid {me}, ignoring it"));
        serving(name);
    }
    // USR2 upgrades start_server in place, here to the same binary: the same worker
    // serves on, and the signals below are read by the new image.
    server.signal(libc::SIGUSR2);
    server.wait_line(&format!("received USR2 from pid {me}, checking"));
    server.wait_line("upgraded from");
    serving("USR2");
    // Without --log-file, USR1 has nothing to reopen.
    server.signal(libc::SIGUSR1);
    server.wait_line("received USR1");
    serving("USR1");
    // Real-time signals queue: all the others at once.
    let others: Vec<c_int> = (35..64).filter(|&sig| sig != 40).collect();
    for &sig in &others {
        server.signal(sig);
    }
    for sig in others {
        server.wait_line(&format!("received NUM{sig} from pid {me}, ignoring it"));
    }
    serving("the real-time signals");

    let lines = server.lines();
    assert_eq!(server.worker_pids(), vec![worker], "{lines:?}");
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("PIPE") || l.contains("XFSZ") || l.contains("died")),
        "{lines:?}"
    );
    server.stop();
}

/// XFSZ is ignored, so that a log write past RLIMIT_FSIZE fails (EFBIG) instead of
/// killing start_server: it fills its log to the limit and lives on to stop cleanly.
#[test]
fn a_log_at_the_file_size_limit_does_not_kill_start_server() {
    const LIMIT: u64 = 1024;
    let mut server = Server::start_wrapped(
        &["/usr/bin/prlimit", &format!("--fsize={LIMIT}"), "--"],
        &["--interval=0.1", "--", "sleep", "600"],
        &[],
    );
    server.wait_line("starting new worker");
    let worker = server.worker_pids()[0];
    // Real-time signals queue: each of these is one more line, far past the limit.
    for _ in 0..100 {
        server.signal(40);
    }
    let log = server.log_path();
    wait_until("the log to reach the file size limit", || {
        std::fs::metadata(&log).is_ok_and(|m| m.len() == LIMIT)
    });
    assert!(pid_alive(server.pid()), "{:?}", server.lines());
    server.signal(libc::SIGTERM);
    let exit = server.wait_exit();
    assert_eq!(exit.code(), Some(0), "{exit:?}");
    assert!(!pid_alive(worker));
    assert_eq!(std::fs::metadata(&log).unwrap().len(), LIMIT);
}

// ------------------------------------------------------------------ retry pacing

/// How many lines containing `needle` start_server logs in a 2 s window, and the CPU
/// time it spends meanwhile.
fn rate(server: &Server, needle: &str) -> (usize, f64, Duration) {
    let (before, cpu_before, from) = (
        server.count_lines(needle),
        cpu_seconds(server.pid()),
        Instant::now(),
    );
    // The measurement window itself.
    thread::sleep(Duration::from_secs(2));
    (
        server.count_lines(needle) - before,
        cpu_seconds(server.pid()) - cpu_before,
        from.elapsed(),
    )
}

#[test]
fn a_worker_failing_at_once_at_interval_0_is_retried_at_the_floor() {
    let mut server = Server::start(&["--interval=0", "--", "sh", "-c", "exit 3"]);
    server.wait_nth_line("starting new worker", 2);
    let (spawns, cpu, window) = rate(&server, "starting new worker");
    eprintln!(
        "--interval=0, a worker exiting at once: {spawns} spawns in {window:?} (floor 0.1 s: ~20); start_server CPU {cpu:.3} s"
    );
    assert!((5..=25).contains(&spawns), "{spawns} spawns in {window:?}");
    assert!(cpu < 0.2, "start_server used {cpu} s of CPU in {window:?}");
    assert!(server.has_line("trying again in 0.1 secs"));
    server.stop();
}

/// When each of the first `n` "starting new worker" lines appeared, polled every 5 ms.
fn spawn_times(server: &Server, n: usize) -> Vec<Instant> {
    let mut times = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while times.len() < n {
        let seen = server.count_lines("starting new worker").min(n);
        times.resize(seen.max(times.len()), Instant::now());
        assert!(
            Instant::now() < deadline,
            "{} spawns only: {:?}",
            times.len(),
            server.lines()
        );
        thread::sleep(Duration::from_millis(5));
    }
    times
}

/// The `--interval` of the backoff tests, in tenths of a second: one that a worker
/// failing at once surely dies within on this machine now (twenty times what it
/// takes, measured), so that it is a failed start and not a started worker that
/// died; 0.1 s at least.
fn failing_interval_tenths() -> u64 {
    let tenths = ((failing_worker_latency(1) * 20).as_millis() as u64)
        .div_ceil(100)
        .max(1);
    eprintln!("a worker failing at once: --interval={}", secs(tenths));
    tenths
}

/// Tenths of a second as start_server writes seconds.
fn secs(tenths: u64) -> String {
    (tenths as f64 / 10.0).to_string()
}

#[test]
fn backoff_doubles_the_pause_up_to_its_maximum() {
    // 0.1, 0.2, 0.4, 0.8, 0.8 on an idle machine.
    let base = failing_interval_tenths();
    let mut server = Server::start(&[
        &format!("--interval={}", secs(base)),
        &format!("--backoff={}", secs(8 * base)),
        "--",
        "false",
    ]);
    let times = spawn_times(&server, 6);
    let gaps: Vec<f64> = times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    let expected = [1, 2, 4, 8, 8].map(|n| (n * base) as f64 / 10.0);
    eprintln!("pauses between tries {gaps:.3?} s ({expected:?})");
    // The pause is a timer, never early, but a line seen late on a busy machine
    // shortens the gap after it; late by at most a busy moment: as long as the
    // base pause, which grows with the load, and 0.45 s more.
    let late = 0.45 + base as f64 / 10.0;
    for (gap, expected) in gaps.iter().zip(expected) {
        assert!(*gap > expected * 0.6 && *gap < expected + late, "{gaps:?}");
    }
    assert!(
        gaps[0] < gaps[1] && gaps[1] < gaps[2] && gaps[2] < gaps[3],
        "{gaps:?}"
    );
    for (n, times) in [(2, 2), (3, 4), (4, 8), (5, 8)] {
        assert!(
            server.has_line(&format!(
                "failed starts in a row: {n}; trying again in {} secs",
                secs(times * base)
            )),
            "{:?}",
            server.lines()
        );
    }
    server.stop();
}

/// A worker that fails (exit 1) as many times as $FAILS says, then serves (sleeps),
/// saying READY=1 first when it has a NOTIFY_SOCKET.
const FAIL_THEN_RUN: &str = r#"n=$(cat "$FAILS"); if [ "$n" -gt 0 ]; then echo $((n - 1)) > "$FAILS"; exit 1; fi; if [ -n "$NOTIFY_SOCKET" ]; then systemd-notify --ready; fi; exec sleep 600"#;

/// Three failed starts, a generation that starts, then, once it dies, failures again:
/// the count, and so the pause, starts over from the first. `options` make the
/// failures sure; `pauses` in tenths of a second (the first is logged only when it is
/// not the interval).
fn backoff_starts_over(options: &[&str], pauses: [u64; 3], first_logged: bool) {
    let dir = TempDir::new("backoff");
    let fails = dir.path().join("fails");
    let status = dir.path().join("status");
    std::fs::write(&fails, "3").unwrap();
    let backoff = format!("--backoff={}", secs(pauses[2] * 2));
    let status_file = format!("--status-file={}", status.display());
    let mut args = options.to_vec();
    args.extend([&*backoff, &*status_file, "--", "sh", "-c", FAIL_THEN_RUN]);
    let mut server = Server::start_with(&args, &[("FAILS", fails.to_str().unwrap())]);
    let worker = server.wait_status(&status, &[4])[0].1;
    // A start counts once the worker has outlived a retry pause (0.1 s at least).
    thread::sleep(Duration::from_millis(300));
    assert_eq!(read_status(&status), vec![(4, worker)]);
    std::fs::write(&fails, "3").unwrap();
    signal(worker, libc::SIGKILL);
    server.wait_line(&format!("worker {worker} died unexpectedly with status:9"));
    let worker = server.wait_status(&status, &[8])[0].1;
    let lines = server.lines();
    for (n, pause) in (1..=3).zip(pauses) {
        let line = format!(
            "failed starts in a row: {n}; trying again in {} secs",
            secs(pause)
        );
        if n > 1 || first_logged {
            assert_eq!(
                lines.iter().filter(|l| **l == line).count(),
                2,
                "{line:?} once per run of failures: {lines:?}"
            );
        }
    }
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("failed starts in a row: 4")),
        "the count went on past a start: {lines:?}"
    );
    assert!(pid_alive(worker));
    server.stop();
}

#[test]
fn backoff_starts_over_once_a_generation_starts() {
    let base = failing_interval_tenths();
    let interval = format!("--interval={}", secs(base));
    backoff_starts_over(&[&interval], [base, 2 * base, 4 * base], false);
}

#[test]
fn backoff_grows_and_starts_over_at_interval_0() {
    // At --interval=0 the pause grows from the retry floor, 0.1 s. A worker that
    // fails is one that exits before its READY=1: for sure, however slow the machine
    // (in interval mode, it would have to die within the floor).
    backoff_starts_over(&["--interval=0", "--ready=notify"], [1, 2, 4], true);
}

// ------------------------------------------------------------------ daemonizing

/// A worker that forks into the background and exits 0 (as a daemonizing server does)
/// gets the hint, whether its exit is seen before `--interval` has passed (`seems to
/// have failed to start`) or, at an interval below the floor, after it was declared
/// started but within a retry pause (`died unexpectedly`, which `exit` names); the child
/// it leaves is its generation's, stopped with it, and reaped by start_server (a
/// subreaper).
fn hint_for_a_daemonizing_worker(interval: &str, exit: &str) {
    let mut server = Server::start(&[interval, "--", "sh", "-c", "sleep 30 & exit 0"]);
    let exited = server.wait_line(exit);
    let worker = exited
        .split_whitespace()
        .find_map(|word| word.parse::<i32>().ok())
        .unwrap();
    let hint = server.wait_line(&format!(
        "worker {worker} exited with status 0 before it had started"
    ));
    assert!(
        hint.contains("daemonizes itself") && hint.contains("run it in the foreground"),
        "{hint}"
    );
    let left = server.wait_line(&format!("worker {worker} (generation "));
    let orphan: i32 = left
        .split("leaving processes ")
        .nth(1)
        .and_then(|rest| rest.split(';').next()?.parse().ok())
        .unwrap_or_else(|| panic!("the orphan named: {left}"));
    assert!(left.ends_with("; sending TERM"), "{left}");
    wait_until("start_server to stop and reap the orphan", || {
        stat_fields(orphan).is_none()
    });
    server.wait_line(&format!("the processes worker {worker} "));
    server.stop();
    // The other orphans were reparented on; they are still in the test's process group.
    for pid in group_members(server.pid()) {
        if comm(pid).as_deref() == Some("sleep") {
            signal(pid, libc::SIGKILL);
        }
    }
}

#[test]
fn daemonizing_worker_gets_a_hint() {
    hint_for_a_daemonizing_worker(
        "--interval=0.2",
        "seems to have failed to start, exit status:0",
    );
}

#[test]
fn daemonizing_worker_gets_a_hint_at_interval_0() {
    hint_for_a_daemonizing_worker("--interval=0", "died unexpectedly with status:0");
}

// ------------------------------------------------------------------ fork failures

/// fork(2) fails (EAGAIN) for every try: RLIMIT_NPROC of 1 for a uid of start_server's
/// own. Retried at the floor, with no hot loop.
#[test]
fn fork_failures_at_interval_0_are_paced_by_the_floor() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let tools = ["/usr/bin/prlimit", "/usr/bin/setpriv"];
    if !root || !tools.iter().all(|t| Path::new(t).exists()) {
        eprintln!(
            "skipped: needs root and {tools:?} to run start_server under a uid with RLIMIT_NPROC=1"
        );
        return;
    }
    // A uid no other process has, so that start_server is its only process.
    let uid = format!("{}", 200_000 + std::process::id() % 100_000);
    let mut server = Server::start_wrapped(
        &[
            tools[0],
            "--nproc=1:1",
            tools[1],
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            "--",
        ],
        &["--interval=0", "--", "true"],
        &[],
    );
    let first = wait_for("the first fork failure, or an exit", || {
        if server.has_line("fork(2) failed") {
            return Some(true);
        }
        server.try_exit().map(|_| false)
    });
    if !first {
        eprintln!(
            "skipped: start_server did not run as uid {uid}: {:?}",
            server.lines()
        );
        return;
    }
    let (failures, cpu, window) = rate(&server, "fork(2) failed");
    eprintln!(
        "--interval=0, fork(2) failing: {failures} tries in {window:?} (floor 0.1 s: ~20); start_server CPU {cpu:.3} s"
    );
    assert!((5..=25).contains(&failures), "{failures} in {window:?}");
    assert!(cpu < 0.2, "start_server used {cpu} s of CPU in {window:?}");
    let lines = server.lines();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("(os error 11); trying again in 0.1 secs")),
        "{lines:?}"
    );
    assert!(!server.has_line("starting new worker"), "{lines:?}");
    server.stop();
}
