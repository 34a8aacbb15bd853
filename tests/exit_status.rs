//! Exit statuses a deploy script can trust, and messages that say what to do next,
//! through the built binary: `--daemonize` returns once generation 1 has started or
//! failed to, a command that cannot be executed is an error at once at generation 1
//! (and a paced retry at later ones), `--stop` with nothing to stop, `--restart`
//! without a status file, an unknown option, a worker that never says READY=1.

mod common;
mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use common::{TempDir, PATIENCE};
use support::*;

fn arg(name: &str, path: &Path) -> String {
    format!("--{name}={}", path.display())
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The pid in the launcher's `start_server (pid:N) starting now...` line.
fn starting_now_pid(out: &Output) -> i32 {
    let text = stderr(out);
    text.lines()
        .find_map(|l| {
            l.strip_prefix("start_server (pid:")?
                .strip_suffix(") starting now...")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no starting-now line in {text:?}"))
}

/// `--daemonize` with a pid file and a log file in `dir`, then `args`.
fn daemonize(dir: &Path, args: &[&str]) -> Output {
    let (pid_file, log) = (
        arg("pid-file", &dir.join("pid")),
        arg("log-file", &dir.join("log")),
    );
    let mut all = vec!["--daemonize", &pid_file, &log];
    all.extend_from_slice(args);
    run_within(&all, PATIENCE)
}

#[test]
fn daemonize_returns_once_generation_1_has_started_and_names_the_daemon() {
    let dir = TempDir::new("ex-daemon-ok");
    let (pid_file, status) = (dir.path().join("pid"), dir.path().join("status"));
    let _daemon = KillOnDrop(&pid_file);
    // A whole second before generation 1 counts as started: a launcher that returned
    // at set-up would find no generation in the status file yet.
    let out = daemonize(
        dir.path(),
        &[
            &arg("status-file", &status),
            "--interval=1",
            "--",
            "sleep",
            "60",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let generations: Vec<u64> = read_status(&status).iter().map(|e| e.0).collect();
    assert_eq!(
        generations,
        vec![1],
        "status file when the launcher returned"
    );
    // The pid a user copies from the terminal is the daemon's, the pid file's.
    let daemon: i32 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(starting_now_pid(&out), daemon);
    assert!(pid_alive(daemon));
    let out = run_within(&["--stop", &arg("pid-file", &pid_file)], PATIENCE);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn daemonize_reports_a_failed_first_start_and_the_daemon_goes_on_trying() {
    let dir = TempDir::new("ex-daemon-fail");
    let pid_file = dir.path().join("pid");
    let _daemon = KillOnDrop(&pid_file);
    let out = daemonize(dir.path(), &["--interval=0.2", "--", "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stderr(&out);
    assert!(
        text.contains("generation 1 failed to start: exited with status 3")
            && text.contains("goes on trying"),
        "{text}"
    );
    // As in the foreground (and the original): the daemon tries again, paced.
    let daemon = starting_now_pid(&out);
    assert!(pid_alive(daemon));
    let log = dir.path().join("log");
    wait_until("a second try in the log", || {
        fs::read_to_string(&log).is_ok_and(|l| l.matches("starting new worker").count() >= 2)
    });
    let out = run_within(&["--stop", &arg("pid-file", &pid_file)], PATIENCE);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn daemonize_reports_a_worker_never_ready_within_the_ready_timeout_with_a_hint() {
    let dir = TempDir::new("ex-daemon-notify");
    let pid_file = dir.path().join("pid");
    let _daemon = KillOnDrop(&pid_file);
    let out = daemonize(
        dir.path(),
        &["--ready=notify", "--ready-timeout=0.5", "--", "sleep", "60"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stderr(&out);
    assert!(text.contains("not ready within 0.5 secs"), "{text}");
    assert!(
        text.contains("does not speak sd_notify") && text.contains("without --ready=notify"),
        "{text}"
    );
    let log = fs::read_to_string(dir.path().join("log")).unwrap();
    assert!(log.contains("does not speak sd_notify"), "{log}");
    let out = run_within(&["--stop", &arg("pid-file", &pid_file)], PATIENCE);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn daemonize_with_a_command_that_cannot_be_executed_fails_and_leaves_nothing() {
    let dir = TempDir::new("ex-daemon-enoent");
    let (pid_file, sock) = (dir.path().join("pid"), dir.path().join("app.sock"));
    let _daemon = KillOnDrop(&pid_file);
    let out = daemonize(
        dir.path(),
        &[&arg("path", &sock), "--", "/nonexistent/app", "--flag"],
    );
    assert_eq!(out.status.code(), Some(255), "{}", stderr(&out));
    let text = stderr(&out);
    assert!(
        text.contains("start_server: failed to exec /nonexistent/app: No such file or directory"),
        "{text}"
    );
    let daemon = starting_now_pid(&out);
    wait_until("the daemon to exit", || !pid_alive(daemon));
    assert!(!pid_file.exists(), "the pid file is removed");
    assert!(!sock.exists(), "the socket file is removed");
}

/// start_server in the foreground with an unexecutable `command`: the status, and the
/// log.
fn foreground(command: &str) -> (Option<i32>, Vec<String>) {
    let dir = TempDir::new("ex-fg");
    let (pid_file, sock) = (dir.path().join("pid"), dir.path().join("s.sock"));
    let mut server = Server::start(&[
        &arg("pid-file", &pid_file),
        &arg("path", &sock),
        "--interval=0.1",
        "--",
        command,
    ]);
    let status = server.wait_exit();
    assert!(
        !pid_file.exists() && !sock.exists(),
        "{command}: files left"
    );
    (status.code(), server.lines())
}

#[test]
fn a_command_that_cannot_be_executed_at_generation_1_is_an_error_at_once() {
    let dir = TempDir::new("ex-unexec");
    let not_executable = dir.path().join("not-executable");
    fs::write(&not_executable, "#!/bin/sh\nexec sleep 60\n").unwrap();
    fs::set_permissions(&not_executable, fs::Permissions::from_mode(0o644)).unwrap();
    // Executable, but neither ELF nor a script: execve(2) says ENOEXEC.
    let not_a_program = dir.path().join("not-a-program");
    fs::write(&not_a_program, [0u8, 1, 2, 3, 4, 5, 6, 7]).unwrap();
    fs::set_permissions(&not_a_program, fs::Permissions::from_mode(0o755)).unwrap();
    // Even root may not execute a file without any x bit.
    let cases = [
        ("/nonexistent/app".to_string(), "(os error 2)"),
        ("no-such-command-on-path".to_string(), "(os error 2)"),
        (not_a_program.display().to_string(), "(os error 8)"),
        (not_executable.display().to_string(), "(os error 13)"),
    ];
    for (command, errno) in cases {
        let (status, lines) = foreground(&command);
        assert_eq!(status, Some(255), "{command}: {lines:?}");
        let errors: Vec<&String> = lines
            .iter()
            .filter(|l| l.contains("failed to exec"))
            .collect();
        assert_eq!(errors.len(), 1, "{command}: one error line: {lines:?}");
        assert!(
            errors[0].starts_with("start_server: failed to exec")
                && errors[0].contains(&command)
                && errors[0].contains(errno),
            "{command}: {lines:?}"
        );
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.contains("starting new worker"))
                .count(),
            1,
            "{command}: not retried: {lines:?}"
        );
    }
}

#[test]
fn a_command_that_cannot_be_executed_after_a_restart_is_retried_while_the_old_serves() {
    let dir = TempDir::new("ex-unexec-later");
    let (status, script) = (dir.path().join("status"), dir.path().join("app"));
    fs::write(&script, "#!/bin/sh\nexec sleep 60\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let mut server = Server::start(&[
        &arg("status-file", &status),
        "--interval=0.1",
        "--",
        &script.display().to_string(),
    ]);
    let first = server.wait_status(&status, &[1])[0].1;
    // A bad deploy: the new file has lost its x bit.
    fs::set_permissions(&script, fs::Permissions::from_mode(0o644)).unwrap();
    server.signal(libc::SIGHUP);
    server.wait_nth_line("failed to exec", 2);
    assert!(server.try_exit().is_none(), "{:?}", server.lines());
    assert!(pid_alive(first), "the old generation serves on");
    assert_eq!(read_status(&status), vec![(1, first)]);
    // Fixed: the next try starts, and replaces the old one.
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    wait_until(
        "a new generation alone in the status file",
        || matches!(read_status(&status)[..], [(g, _)] if g > 1),
    );
    server.stop();
}

#[test]
fn stop_with_nothing_running_says_so_and_exits_3() {
    let dir = TempDir::new("ex-stop-none");
    let pid_file = dir.path().join("pid");
    let out = run_within(&["--stop", &arg("pid-file", &pid_file)], PATIENCE);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).starts_with("start_server: nothing to stop: ")
            && stderr(&out).contains(&pid_file.display().to_string()),
        "{}",
        stderr(&out)
    );
    // Stale: no instance holds the file's lock.
    fs::write(&pid_file, format!("{}\n", std::process::id())).unwrap();
    let out = run_within(&["--stop", &arg("pid-file", &pid_file)], PATIENCE);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("nothing to stop: ") && stderr(&out).contains("is stale"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn restart_without_a_status_file_asks_the_control_socket_and_prints_the_verdict() {
    let dir = TempDir::new("ex-restart");
    let (pid_file, status) = (dir.path().join("pid"), dir.path().join("status"));
    let mut server = Server::start(&[
        &arg("pid-file", &pid_file),
        &arg("status-file", &status),
        "--interval=0.2",
        "--",
        "sleep",
        "60",
    ]);
    server.wait_status(&status, &[1]);
    let out = run_within(&["--restart", &arg("pid-file", &pid_file)], PATIENCE);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("restarted: generation 2 runs alone"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        read_status(&status).iter().map(|e| e.0).collect::<Vec<_>>(),
        vec![2]
    );
    server.stop();
}

#[test]
fn an_unknown_option_keeps_the_originals_words_and_suggests_the_closest() {
    let ours = Command::new(start_server_bin())
        .args(["--pidfile=x", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(ours.status.code(), Some(1));
    assert_eq!(
        stderr(&ours),
        "start_server: Unknown option: pidfile (did you mean --pid-file? start_server --help \
         lists every option)\n"
    );
    // What the original says, which ours begins with.
    let perl = Path::new("/usr/bin/start_server");
    if perl.exists() {
        let theirs = Command::new(perl)
            .args(["--pidfile=x", "--", "true"])
            .output()
            .unwrap();
        assert_eq!(theirs.status.code(), Some(1));
        let line = stderr(&theirs).trim_end().to_string();
        assert!(
            stderr(&ours).starts_with(&format!("start_server: {line} (")),
            "{line:?}"
        );
    } else {
        eprintln!("skipped the comparison: /usr/bin/start_server (the original) is missing");
    }
    let far = Command::new(start_server_bin())
        .args(["--frobnicate", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(far.status.code(), Some(1));
    assert_eq!(
        stderr(&far),
        "start_server: Unknown option: frobnicate (start_server --help lists every option)\n"
    );
}

#[test]
fn help_tells_the_truth_about_interval_0() {
    let help = Command::new(start_server_bin())
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let interval: String = help
        .split("--interval=seconds")
        .nth(1)
        .and_then(|rest| rest.split("\n  --").next())
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(interval.contains("(0: at once)"), "{interval}");
    assert!(
        interval.contains("tried again, which is 0.1 at least"),
        "{interval}"
    );
    // And 0 is taken: generation 1 starts at once.
    let dir = TempDir::new("ex-interval-0");
    let status = dir.path().join("status");
    let mut server = Server::start(&[
        &arg("status-file", &status),
        "--interval=0",
        "--",
        "sleep",
        "60",
    ]);
    server.wait_status(&status, &[1]);
    server.stop();
}
