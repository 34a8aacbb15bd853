//! `--workers=N`: N workers of one command per generation on the same sockets, each
//! told its slot (`SERVER_STARTER_WORKER`) and supervised alone, through the built
//! binary with the Perl test worker (tests/workers/http.pl): all of them answer on one
//! port, one that dies is replaced alone while the others serve on, the status file
//! lists every one of them, and a restart replaces them all; `--rolling` under load
//! without a failed request or a missing worker, `--canary` rolled back or passed, a
//! new version that fails mid-roll, and an upgrade in place mid-roll.

mod common;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::TempDir;
use support::*;

/// start_server with the Perl test worker on a free port, a status file and a pid
/// file in `dir`, `extra` options before `--`.
fn start(dir: &TempDir, extra: &[&str], env: &[(&str, &str)]) -> (Server, SocketAddr, PathBuf) {
    start_command(dir, extra, env, &[&perl_worker().display().to_string()])
}

/// `start` with another command.
fn start_command(
    dir: &TempDir,
    extra: &[&str],
    env: &[(&str, &str)],
    command: &[&str],
) -> (Server, SocketAddr, PathBuf) {
    let status = dir.path().join("status");
    let files = [
        format!("--status-file={}", status.display()),
        format!("--pid-file={}", dir.path().join("pid").display()),
    ];
    let (server, port) = Server::start_retrying(
        |port| {
            let mut args = vec![format!("--port=127.0.0.1:{port}")];
            args.extend(files.iter().cloned());
            args.extend(extra.iter().map(|s| s.to_string()));
            args.push("--".into());
            args.extend(command.iter().map(|s| s.to_string()));
            args
        },
        env,
    );
    (server, addr("127.0.0.1", port), status)
}

/// `--ready-timeout` that a healthy test worker meets on this machine now.
fn ready_timeout() -> String {
    format!("--ready-timeout={}", worker_deadline().as_secs())
}

/// `--workers=n --rolling=1 --ready=notify`, each worker ready after `delay`
/// seconds: started, with its workers by slot.
fn start_rolling(
    dir: &TempDir,
    n: usize,
    delay: &str,
) -> (Server, SocketAddr, PathBuf, BTreeMap<u32, (u64, i32)>) {
    let timeout = ready_timeout();
    let workers = format!("--workers={n}");
    let extra = [&workers, "--rolling=1", "--ready=notify", &timeout];
    let (server, at, status) = start(dir, &extra, &[("READY_DELAY", delay)]);
    let old = wait_workers(&status, n, 0);
    (server, at, status, old)
}

/// `start_server --restart` for the instance of `dir`: its output.
fn restart(dir: &TempDir) -> Output {
    let pid_file = format!("--pid-file={}", dir.path().join("pid").display());
    let mut cmd = Command::new(start_server_bin());
    cmd.args(["--restart", &pid_file]);
    run_command_within(cmd, common::PATIENCE * 2)
}

/// The verdict `--restart` printed: `OK generation G` once it succeeded, `FAILED
/// why` once it failed.
fn verdict(out: &Output) -> String {
    let said = String::from_utf8_lossy(&out.stderr).trim().to_string();
    match (out.status.success(), said.split_once("restart failed: ")) {
        (true, _) => match said.split_once("restarted: ") {
            Some((_, rest)) => format!("OK {}", rest.split(" runs alone").next().unwrap()),
            None => said,
        },
        (false, Some((_, why))) => format!("FAILED {why}"),
        (false, None) => said,
    }
}

/// The fewest workers the status file listed while it was watched (read every few
/// milliseconds from another thread): a worker is listed from its start until it
/// exits.
struct Fewest {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<usize>,
}

impl Fewest {
    fn watch(status: &Path) -> Fewest {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, status) = (stop.clone(), status.to_path_buf());
        let thread = thread::spawn(move || {
            let mut fewest = usize::MAX;
            while !flag.load(Ordering::Relaxed) {
                fewest = fewest.min(read_status(&status).len());
                thread::sleep(Duration::from_millis(2));
            }
            fewest
        });
        Fewest { stop, thread }
    }

    fn finish(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// Waits until the status file lists `n` workers, none of a generation at or below
/// `above`; returns them by slot (1..N, from each one's SERVER_STARTER_WORKER).
fn wait_workers(status: &Path, n: usize, above: u64) -> BTreeMap<u32, (u64, i32)> {
    wait_for(&format!("{n} workers above generation {above}"), || {
        let listed = read_status(status);
        if listed.len() != n || listed.iter().any(|&(g, _)| g <= above) {
            return None;
        }
        let slots: BTreeMap<u32, (u64, i32)> = listed
            .iter()
            .filter_map(|&(g, pid)| {
                let slot = worker_env(pid, "SERVER_STARTER_WORKER")?.parse().ok()?;
                Some((slot, (g, pid)))
            })
            .collect();
        (slots.len() == n).then_some(slots)
    })
}

/// Waits until every one of `workers` has exited.
fn wait_gone(workers: &BTreeMap<u32, (u64, i32)>) {
    for (_, pid) in workers.values() {
        wait_until(&format!("old worker {pid} to exit"), || !pid_alive(*pid));
    }
}

/// The end of a restart: the old workers exit, every new one answers, and
/// start_server stops cleanly.
fn finish(
    mut server: Server,
    at: SocketAddr,
    old: &BTreeMap<u32, (u64, i32)>,
    new: &BTreeMap<u32, (u64, i32)>,
) {
    wait_gone(old);
    wait_all_answer(at, &new.values().map(|s| s.1).collect());
    server.stop();
}

/// Requests until every one of `pids` has answered one.
fn wait_all_answer(at: SocketAddr, pids: &BTreeSet<i32>) {
    let mut answered = BTreeSet::new();
    wait_until(&format!("every worker of {pids:?} to answer"), || {
        for _ in 0..20 {
            if let Ok((pid, _)) = http_get(at) {
                answered.insert(pid);
            }
        }
        pids.is_subset(&answered)
    });
}

#[test]
fn four_workers_serve_one_port_each_in_its_slot() {
    let dir = TempDir::new("workers");
    let (mut server, at, status) = start(&dir, &["--workers=4"], &[]);
    let slots = wait_workers(&status, 4, 0);
    assert_eq!(slots.keys().copied().collect::<Vec<_>>(), [1, 2, 3, 4]);
    // One generation, four processes, all start_server's children.
    for (g, pid) in slots.values() {
        assert_eq!(*g, 1, "{slots:?}");
        assert_eq!(ppid(*pid), Some(server.pid()), "worker {pid}");
        assert_eq!(
            worker_env(*pid, "SERVER_STARTER_GENERATION").as_deref(),
            Some("1")
        );
    }
    let pids: BTreeSet<i32> = slots.values().map(|s| s.1).collect();
    assert_eq!(
        server.count_lines("starting new worker"),
        4,
        "{:?}",
        server.lines()
    );
    wait_all_answer(at, &pids);
    server.stop();
    for pid in pids {
        assert!(!pid_alive(pid), "worker {pid} outlived start_server");
    }
}

#[test]
fn a_worker_that_dies_is_replaced_alone_in_its_slot() {
    let dir = TempDir::new("workers");
    let (mut server, at, status) = start(&dir, &["--workers=3", "--interval=0.5"], &[]);
    let before = wait_workers(&status, 3, 0);
    let (_, victim) = before[&2];
    signal(victim, libc::SIGKILL);
    server.wait_line(&format!("worker {victim} died unexpectedly"));
    // Slot 2 gets a new worker (a try of its own: the next generation number); slots
    // 1 and 3 keep theirs.
    let after = wait_for("slot 2 refilled", || {
        let listed = read_status(&status);
        let slots = listed.len() == 3 && !listed.iter().any(|&(_, pid)| pid == victim);
        slots.then_some(listed)
    });
    let refill = after
        .iter()
        .find(|&&(g, _)| g == 2)
        .expect("a generation 2 worker");
    assert_eq!(
        worker_env(refill.1, "SERVER_STARTER_WORKER").as_deref(),
        Some("2")
    );
    for slot in [1, 3] {
        let (g, pid) = before[&slot];
        assert!(after.contains(&(g, pid)), "slot {slot}: {after:?}");
        assert!(pid_alive(pid));
    }
    // Nobody else was told anything.
    assert_eq!(server.count_lines("sending"), 0, "{:?}", server.lines());
    let pids: BTreeSet<i32> = after.iter().map(|e| e.1).collect();
    wait_all_answer(at, &pids);
    server.stop();
}

#[test]
fn a_restart_replaces_every_worker_once_all_have_started() {
    let dir = TempDir::new("workers");
    let (server, at, status) = start(&dir, &["--workers=3", "--interval=0.5"], &[]);
    let old = wait_workers(&status, 3, 0);
    server.signal(libc::SIGHUP);
    let new = wait_workers(&status, 3, 1);
    assert!(new.values().all(|&(g, _)| g == 2), "{new:?}");
    // The old ones were signalled together, once the three new ones had started.
    let lines = server.lines();
    let running = lines
        .iter()
        .position(|l| l.contains("new worker is now running"));
    let starts: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].contains("starting new worker"))
        .collect();
    assert_eq!(starts.len(), 6, "{lines:?}");
    assert!(running > Some(starts[5]), "{lines:?}");
    assert_eq!(server.count_lines("new worker is now running"), 1);
    finish(server, at, &old, &new);
}

/// Without `--workers`, the workers' environment is what it was: no
/// SERVER_STARTER_WORKER (the drop-in promise); one from start_server's own
/// environment passes through untouched, and `--workers` replaces it.
#[test]
fn server_starter_worker_only_with_workers() {
    let dir = TempDir::new("workers");
    let env = [("SERVER_STARTER_WORKER", "outer")];
    let (mut plain, _, status) = start(&dir, &[], &env);
    let (_, pid) = wait_workers_any(&status);
    assert_eq!(
        worker_env(pid, "SERVER_STARTER_WORKER").as_deref(),
        Some("outer")
    );
    plain.stop();
    let dir = TempDir::new("workers");
    let (mut one, _, status) = start(&dir, &["--workers=1"], &env);
    let slots = wait_workers(&status, 1, 0);
    assert!(slots.contains_key(&1), "{slots:?}");
    one.stop();
}

fn wait_workers_any(status: &Path) -> (u64, i32) {
    wait_for("one worker listed", || read_status(status).first().copied())
}

#[test]
fn bad_workers_values_are_refused_in_one_line() {
    for bad in ["0", "x", "-1", "100000"] {
        let out = run_within(
            &[&format!("--workers={bad}"), "--port=0", "--", "true"],
            common::PATIENCE,
        );
        assert_eq!(out.status.code(), Some(255), "{bad}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains(&format!("--workers value \"{bad}\"")),
            "{stderr}"
        );
    }
}

/// `--rolling=1` under load: one new worker starting at a time, each retiring one old
/// one once it has said READY=1; no request fails, the status file never lists fewer
/// than N workers, and `--restart` answers OK once the new generation runs alone.
#[test]
fn a_rolling_restart_under_load_keeps_every_request_and_n_workers() {
    let dir = TempDir::new("workers");
    let (mut server, at, status, old) = start_rolling(&dir, 4, "0.2");
    let load = Load::start(at, 4);
    load.wait_more(20);
    let fewest = Fewest::watch(&status);
    let out = restart(&dir);
    assert_eq!(
        verdict(&out),
        "OK generation 2",
        "{out:?}\n{:?}",
        server.lines()
    );
    let new = wait_workers(&status, 4, 1);
    load.wait_more(20);
    let fewest = fewest.finish();
    let generations = load.finish_without_failures();
    assert!(generations.contains(&2), "generation 2 never answered");
    assert!(
        fewest >= 4,
        "the status file listed {fewest} workers at one point"
    );
    // One at a time: each new worker was started only once the previous one ran, and
    // each old worker was signalled after its replacement had started.
    let lines = server.lines();
    let roll: Vec<&String> = lines
        .iter()
        .skip_while(|l| !l.contains("restart request"))
        .filter(|l| l.contains("starting new worker") || l.contains("is now running"))
        .collect();
    assert_eq!(roll.len(), 8, "{lines:#?}");
    for (i, line) in roll.iter().enumerate() {
        let expected = ["starting new worker", "is now running"][i % 2];
        assert!(line.contains(expected), "line {i} of the roll: {roll:#?}");
    }
    for (slot, (_, pid)) in &old {
        let replaced = format!("to old worker {pid}");
        assert_eq!(server.count_lines(&replaced), 1, "slot {slot}: {lines:#?}");
        wait_until(&format!("old worker {pid} to exit"), || !pid_alive(*pid));
    }
    assert!(new.values().all(|&(g, _)| g == 2), "{new:?}");
    assert!(server.has_line("generation 2 rolled out"));
    server.stop();
}

/// A canary that dies during its trial: rolled back, the old generation untouched
/// (same workers, never signalled), `--restart` FAILED with the reason, and the
/// generation not tried again; the next restart is a new generation.
#[test]
fn a_canary_that_crashes_is_rolled_back() {
    let dir = TempDir::new("workers");
    let timeout = ready_timeout();
    let extra = [
        "--workers=3",
        "--canary=30",
        "--ready=notify",
        &timeout,
        "--watchdog=30",
    ];
    // Generation 2 says READY=1, then WATCHDOG=trigger: a crash on trial.
    let env = [("TRIGGER_GENERATIONS", "2")];
    let (mut server, at, status) = start(&dir, &extra, &env);
    let old = wait_workers(&status, 3, 0);
    let out = restart(&dir);
    let verdict = verdict(&out);
    assert!(
        verdict.starts_with("FAILED generation 2: canary worker")
            && verdict.contains("WATCHDOG=trigger")
            && verdict.ends_with("rolled back"),
        "{verdict:?}\n{:#?}",
        server.lines()
    );
    server.wait_line("rolling back generation 2");
    assert_eq!(wait_workers(&status, 3, 0), old);
    for (_, pid) in old.values() {
        assert!(pid_alive(*pid));
    }
    assert_eq!(
        server.count_lines("killing old worker"),
        0,
        "{:#?}",
        server.lines()
    );
    wait_all_answer(at, &old.values().map(|s| s.1).collect());
    // Not tried again: the canary of generation 3 comes with the next restart only.
    assert_eq!(server.count_lines("starting a canary"), 1);
    server.signal(libc::SIGHUP);
    server.wait_line("starting a canary of generation 3");
    server.stop();
}

/// A canary that stays healthy for its trial: the rest follows (here all at once),
/// and `--restart` answers OK once generation 2 runs alone.
#[test]
fn a_canary_that_survives_rolls_out() {
    let dir = TempDir::new("workers");
    let extra = ["--workers=3", "--canary=1", "--interval=0.3"];
    let (server, at, status) = start(&dir, &extra, &[]);
    let old = wait_workers(&status, 3, 0);
    let fewest = Fewest::watch(&status);
    let out = restart(&dir);
    assert_eq!(verdict(&out), "OK generation 2", "{:#?}", server.lines());
    assert!(fewest.finish() >= 3);
    let new = wait_workers(&status, 3, 1);
    assert!(new.values().all(|&(g, _)| g == 2), "{new:?}");
    let lines = server.lines();
    let trial = lines.iter().position(|l| l.contains("on trial for 1 secs"));
    let passed = lines
        .iter()
        .position(|l| l.contains("served 1 secs: rolling out generation 2"));
    let killing = lines.iter().position(|l| l.contains("killing old workers"));
    assert!(
        trial < passed && passed < killing && trial.is_some(),
        "{lines:#?}"
    );
    finish(server, at, &old, &new);
}

/// A new version that fails mid-roll (slot 2's new worker exits at once): `--restart`
/// answers FAILED; slot 2's old worker serves on while its slot is retried, paced,
/// and slot 3 is not touched; once the fault is gone, the roll completes.
#[test]
fn a_new_version_failing_mid_roll_leaves_the_old_workers_serving() {
    let dir = TempDir::new("workers");
    let flag = dir.path().join("broken");
    std::fs::write(&flag, "").unwrap();
    let script = format!(
        "if [ \"$SERVER_STARTER_GENERATION\" -gt 1 ] && [ \"$SERVER_STARTER_WORKER\" = 2 ] \
         && [ -e '{}' ]; then exit 3; fi; exec '{}'",
        flag.display(),
        perl_worker().display()
    );
    let timeout = ready_timeout();
    let extra = [
        "--workers=3",
        "--rolling=1",
        "--ready=notify",
        &timeout,
        "--interval=0.2",
    ];
    let (mut server, at, status) = start_command(&dir, &extra, &[], &["sh", "-c", &script]);
    let old = wait_workers(&status, 3, 0);
    let fewest = Fewest::watch(&status);
    let out = restart(&dir);
    let verdict = verdict(&out);
    assert!(
        verdict.starts_with("FAILED generation") && verdict.contains("exited with status 3"),
        "{verdict:?}"
    );
    // Slot 1 rolled; slot 2 fails again and again while its old worker serves; slot
    // 3 waits.
    let tries = server.count_lines("seems to have failed to start");
    server.wait_nth_line("seems to have failed to start", tries + 2);
    let listed = read_status(&status);
    let (_, old2) = old[&2];
    let (_, old3) = old[&3];
    assert!(
        listed.contains(&(1, old2)) && listed.contains(&(1, old3)),
        "{listed:?}"
    );
    assert!(pid_alive(old2) && pid_alive(old3));
    let (_, old1) = old[&1];
    wait_until("slot 1's old worker to exit", || !pid_alive(old1));
    wait_all_answer(at, &[old2, old3].into());
    std::fs::remove_file(&flag).unwrap();
    let new = wait_workers(&status, 3, 1);
    assert!(fewest.finish() >= 3);
    for (slot, (_, pid)) in &old {
        assert!(!new.values().any(|s| s.1 == *pid), "slot {slot}: {new:?}");
        wait_until(&format!("old worker {pid} to exit"), || !pid_alive(*pid));
    }
    server.wait_line("rolled out");
    server.stop();
}

/// SIGUSR2 in the middle of a rolling restart: the new image takes the roll over and
/// finishes it, and a HUP held during the roll is followed by one more restart.
#[test]
fn an_upgrade_mid_roll_finishes_the_roll() {
    let dir = TempDir::new("workers");
    let (mut server, _, status, old) = start_rolling(&dir, 3, "0.5");
    server.signal(libc::SIGHUP);
    server.wait_line("is now running, sending TERM to old worker");
    server.signal(libc::SIGUSR2);
    server.wait_line("upgraded from");
    // Held: one more restart once the roll is done.
    server.signal(libc::SIGHUP);
    server.wait_line("generation 2 rolled out");
    let new = wait_workers(&status, 3, 2);
    assert!(new.values().all(|&(g, _)| g == 3), "{new:?}");
    wait_gone(&old);
    assert_eq!(server.pid(), wait_pid_file(&dir.path().join("pid")));
    server.stop();
}

/// Each worker has its own notification socket and, with `--listen-fds`, its own
/// `LISTEN_PID`.
#[test]
fn each_worker_has_its_own_notify_socket_and_listen_pid() {
    let dir = TempDir::new("workers");
    let extra = ["--workers=3", "--ready=notify", "--listen-fds"];
    let (mut server, _, status) = start(&dir, &extra, &[]);
    let slots = wait_workers(&status, 3, 0);
    let mut sockets = BTreeSet::new();
    for (_, pid) in slots.values() {
        let own = worker_env(*pid, "LISTEN_PID");
        assert_eq!(own, Some(pid.to_string()), "worker {pid}");
        sockets.insert(worker_env(*pid, "NOTIFY_SOCKET").expect("a NOTIFY_SOCKET"));
    }
    assert_eq!(sockets.len(), 3, "{sockets:?}");
    server.stop();
}

/// Under a service manager: READY=1 once all N workers have started, RELOADING=1
/// when a rolling restart begins, READY=1 only once it has rolled out.
#[test]
fn the_service_manager_hears_ready_once_the_roll_ends() {
    let dir = TempDir::new("workers");
    let path = dir.path().join("notify.sock");
    let manager = UnixDatagram::bind(&path).unwrap();
    let socket = path.display().to_string();
    let extra = ["--workers=3", "--rolling=1", "--interval=0.3"];
    let (mut server, _, status) = start(&dir, &extra, &[("NOTIFY_SOCKET", &socket)]);
    let ready = next_message(&manager);
    let first = wait_workers(&status, 3, 0);
    let pids: Vec<String> = first.values().map(|s| s.1.to_string()).collect();
    let said: BTreeSet<&str> = ready
        .strip_prefix("READY=1\nSTATUS=generation 1 serving (workers ")
        .and_then(|rest| rest.strip_suffix(')'))
        .map(|rest| rest.split(',').collect())
        .unwrap_or_default();
    assert_eq!(said, pids.iter().map(String::as_str).collect(), "{ready:?}");
    server.signal(libc::SIGHUP);
    assert!(next_message(&manager).starts_with("RELOADING=1\n"));
    let ready = next_message(&manager);
    assert!(
        ready.starts_with("READY=1\nSTATUS=generation 2 serving (workers "),
        "{ready}"
    );
    // Said once the last slot's new worker had started, not before.
    assert_eq!(
        server.count_lines("is now running, sending TERM to old worker"),
        3
    );
    server.wait_line("generation 2 rolled out");
    server.stop();
    assert_eq!(next_message(&manager), "STOPPING=1\nSTATUS=stopping");
}

/// TERM during a canary's trial stops every worker: the old generation's and the
/// canary.
#[test]
fn term_during_a_canary_stops_every_worker() {
    let dir = TempDir::new("workers");
    let extra = ["--workers=2", "--canary=60", "--interval=0.3"];
    let (mut server, _, status) = start(&dir, &extra, &[]);
    let old = wait_workers(&status, 2, 0);
    server.signal(libc::SIGHUP);
    server.wait_line("on trial for 60 secs");
    let listed = read_status(&status);
    assert_eq!(
        listed.len(),
        3,
        "the canary is listed beside the old: {listed:?}"
    );
    server.stop();
    for (_, pid) in listed {
        assert!(!pid_alive(pid), "worker {pid} outlived start_server");
    }
    assert!(old.values().all(|s| !pid_alive(s.1)));
}

/// Sixteen workers cost start_server no wake-up while idle (after a rolling restart
/// too), and each less than 20 kB of private memory.
#[test]
fn sixteen_idle_workers_cost_no_wakeup_and_little_memory() {
    let dir = TempDir::new("workers");
    let sleeper = ["sleep", "600"];
    let (mut one, _, status) = start_command(&dir, &["--interval=0.2"], &[], &sleeper);
    wait_workers_any(&status);
    let dir16 = TempDir::new("workers");
    let extra = ["--workers=16", "--rolling=4", "--interval=0.2"];
    let (mut sixteen, _, status16) = start_command(&dir16, &extra, &[], &sleeper);
    wait_workers(&status16, 16, 0);
    sixteen.signal(libc::SIGHUP);
    wait_workers(&status16, 16, 1);
    sixteen.wait_line("generation 2 rolled out");
    let switches = idle_context_switches(sixteen.pid(), Duration::from_secs(2));
    let (base, many) = (private_kb(one.pid()), private_kb(sixteen.pid()));
    let per_worker = many.saturating_sub(base) / 15;
    eprintln!(
        "--workers=16 idle: {switches} context switches in 2 s; private memory {many} kB \
         ({base} kB with one worker): {per_worker} kB per worker"
    );
    assert_eq!(switches, 0, "start_server woke up while idle");
    assert!(
        base > 0 && per_worker < 20,
        "{many} kB for 16 workers, {base} kB for one"
    );
    sixteen.stop();
    one.stop();
}
