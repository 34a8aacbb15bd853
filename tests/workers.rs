//! `--workers=N`: N workers of one command per generation on the same sockets, each
//! told its slot (`SERVER_STARTER_WORKER`) and supervised alone, through the built
//! binary with the Perl test worker (tests/workers/http.pl): all of them answer on one
//! port, one that dies is replaced alone while the others serve on, the status file
//! lists every one of them, and a restart replaces them all.

mod common;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use common::TempDir;
use support::*;

/// start_server with the Perl test worker on a free port and a status file in `dir`,
/// `extra` options before `--`.
fn start(dir: &TempDir, extra: &[&str], env: &[(&str, &str)]) -> (Server, SocketAddr, PathBuf) {
    let status = dir.path().join("status");
    let status_arg = format!("--status-file={}", status.display());
    let (server, port) = Server::start_retrying(
        |port| {
            let mut args = vec![format!("--port=127.0.0.1:{port}"), status_arg.clone()];
            args.extend(extra.iter().map(|s| s.to_string()));
            args.push("--".into());
            args.push(perl_worker().display().to_string());
            args
        },
        env,
    );
    (server, addr("127.0.0.1", port), status)
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
    let (mut server, at, status) = start(&dir, &["--workers=3", "--interval=0.5"], &[]);
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
    for (_, pid) in old.values() {
        wait_until(&format!("old worker {pid} to exit"), || !pid_alive(*pid));
    }
    wait_all_answer(at, &new.values().map(|s| s.1).collect());
    server.stop();
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
