//! start_server against a hostile or exhausted system, through the built binary: no
//! descriptors or processes left to spawn with, symlinks planted where the status file
//! is written, an envdir holding a huge file or a FIFO, a second instance racing the
//! first. (Bad command lines are in hostile_input.rs.)

mod common;
mod support;

use common::TempDir;
use support::*;

/// Whether `program` is on PATH.
fn have(program: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {program} >/dev/null")])
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Waits until start_server has either given up at start (`None`) or logged one of
/// `needles` (the first line holding one).
fn first_of(server: &mut Server, needles: &[&str]) -> Option<String> {
    wait_for(
        &format!("start_server to exit or log one of {needles:?}"),
        || {
            if let Some(line) = server
                .lines()
                .into_iter()
                .find(|l| needles.iter().any(|n| l.contains(n)))
            {
                return Some(Some(line));
            }
            server.try_exit().map(|_| None)
        },
    )
}

// ------------------------------------------------------------------ spawn errors

/// With every descriptor taken by the listeners, the spawn fails in pipe2, and the log
/// says so (it used to say fork). The limit is found by raising it one descriptor at a
/// time from where start_server cannot even bind: the first limit it starts with
/// leaves it fewer than the two descriptors a pipe needs.
#[test]
fn out_of_descriptors_the_log_names_pipe2_and_emfile() {
    if !have("prlimit") {
        eprintln!("SKIP: prlimit (util-linux) is not installed");
        return;
    }
    let dir = TempDir::new("nofile");
    let paths: Vec<String> = (0..4)
        .map(|i| format!("--path={}", dir.path().join(format!("{i}.sock")).display()))
        .collect();
    for limit in 4..=32 {
        let nofile = format!("--nofile={limit}");
        let mut args = vec!["--interval=0.1"];
        args.extend(paths.iter().map(String::as_str));
        args.extend(["--", "true"]);
        let mut server = Server::start_via(&["prlimit", &nofile, "--"], &args, &[]);
        let Some(line) = first_of(&mut server, &["trying again in", "starting new worker"]) else {
            // Too few even to bind: one more.
            continue;
        };
        assert!(
            line.starts_with("pipe2(2) failed: ") && line.contains("(os error 24)"),
            "limit {limit}: {:?}",
            server.lines()
        );
        eprintln!("RLIMIT_NOFILE {limit}: {line}");
        server.stop();
        return;
    }
    panic!("no descriptor limit made the spawn fail");
}

/// Out of processes (RLIMIT_NPROC, which root ignores: run as nobody then), the
/// spawn fails in fork, with EAGAIN.
#[test]
fn out_of_processes_the_log_names_fork_and_eagain() {
    if !have("prlimit") || (is_root() && !have("setpriv")) {
        eprintln!("SKIP: needs prlimit and, as root, setpriv (util-linux)");
        return;
    }
    let mut wrapper = Vec::new();
    if is_root() {
        wrapper.extend([
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ]);
    }
    wrapper.extend(["prlimit", "--nproc=1", "--"]);
    let mut server = Server::start_via(&wrapper, &["--interval=0.1", "--", "true"], &[]);
    let Some(line) = first_of(&mut server, &["trying again in", "starting new worker"]) else {
        eprintln!(
            "SKIP: start_server did not start as an unprivileged user: {:?}",
            server.lines()
        );
        return;
    };
    assert!(
        line.starts_with("fork(2) failed: ") && line.contains("(os error 11)"),
        "{:?}",
        server.lines()
    );
    eprintln!("RLIMIT_NPROC 1: {line}");
    server.stop();
}
