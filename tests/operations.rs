//! The options start_server is run with in production, through the built binary: pid
//! file, --stop, --restart, --daemonize, --log-file (file and pipe), --envdir,
//! auto-restart; their error paths included.

mod common;
mod support;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use common::TempDir;
use support::*;

fn run(args: &[&str]) -> Output {
    Command::new(start_server_bin())
        .args(args)
        .output()
        .expect("run start_server")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn arg(name: &str, path: &Path) -> String {
    format!("--{name}={}", path.display())
}

#[test]
fn second_instance_on_a_pid_file_refuses_and_leaves_it_intact() {
    let dir = TempDir::new("pid2");
    let pid_file = dir.path().join("pid");
    let mut first = Server::start(&[
        &arg("pid-file", &pid_file),
        "--interval=0.1",
        "--",
        "sleep",
        "60",
    ]);
    first.wait_line("starting new worker");
    let contents = wait_for("the pid file", || {
        fs::read(&pid_file).ok().filter(|c| !c.is_empty())
    });
    assert_eq!(
        String::from_utf8_lossy(&contents),
        format!("{}\n", first.pid())
    );
    let modified = fs::metadata(&pid_file).unwrap().modified().unwrap();

    let out = run(&[&arg("pid-file", &pid_file), "--", "sleep", "60"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("already running (pid {})", first.pid())),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("starting new worker"));
    assert_eq!(fs::read(&pid_file).unwrap(), contents);
    assert_eq!(
        fs::metadata(&pid_file).unwrap().modified().unwrap(),
        modified
    );

    first.stop();
    assert!(!pid_file.exists(), "removed at exit");
}

#[test]
fn stale_pid_file_is_taken_over() {
    let dir = TempDir::new("stale-pid");
    let pid_file = dir.path().join("pid");
    fs::write(&pid_file, "999999999\n").unwrap();
    let mut server = Server::start(&[
        &arg("pid-file", &pid_file),
        "--interval=0.1",
        "--",
        "sleep",
        "60",
    ]);
    let expected = format!("{}\n", server.pid());
    wait_until("the pid file to be rewritten", || {
        fs::read_to_string(&pid_file).ok().as_deref() == Some(&expected)
    });
    server.stop();
    assert!(!pid_file.exists());
}

#[test]
fn stop_a_running_instance_and_none() {
    let dir = TempDir::new("stop");
    let pid_file = dir.path().join("pid");
    let mut server = Server::start(&[
        &arg("pid-file", &pid_file),
        "--interval=0.1",
        "--",
        "sleep",
        "60",
    ]);
    server.wait_line("starting new worker");
    wait_until("the pid file", || {
        fs::read_to_string(&pid_file).is_ok_and(|s| s.ends_with('\n'))
    });
    let worker = server.worker_pids()[0];

    let out = run(&["--stop", &arg("pid-file", &pid_file)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains(&format!("stopping now (pid:{})", server.pid())));
    // --stop returns only once the instance is done, workers included: its lock on
    // the pid file is released as it exits, after it has removed the file. The
    // kernel may not have told its parent yet, on a busy machine: wait for that.
    assert!(!pid_alive(worker));
    assert!(!pid_file.exists());
    let status = server.wait_exit();
    assert!(status.success(), "{status}");

    // Nothing to stop: a status of its own (3), so that a script can tell.
    let out = run(&["--stop", &arg("pid-file", &pid_file)]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains(&format!(
            "nothing to stop: failed to open pid file {}: No such file or directory",
            pid_file.display()
        )),
        "{}",
        stderr(&out)
    );

    // A stale file: nothing holds its lock, so no signal goes to whatever has that pid.
    fs::write(&pid_file, format!("{}\n", std::process::id())).unwrap();
    let out = run(&["--stop", &arg("pid-file", &pid_file)]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("is not running"), "{}", stderr(&out));
    assert_eq!(
        fs::read_to_string(&pid_file).unwrap(),
        format!("{}\n", std::process::id())
    );
}

#[test]
fn restart_waits_for_the_new_generation() {
    let dir = TempDir::new("restart");
    let (pid_file, status) = (dir.path().join("pid"), dir.path().join("status"));
    let server = Server::start(&[
        &arg("pid-file", &pid_file),
        &arg("status-file", &status),
        "--interval=0.3",
        "--",
        "sleep",
        "60",
    ]);
    let first = server.wait_status(&status, &[1])[0].1;
    let out = run(&[
        "--restart",
        &arg("pid-file", &pid_file),
        &arg("status-file", &status),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Returned only once the status file shows the new generation alone.
    let entries = read_status(&status);
    assert_eq!(entries.iter().map(|e| e.0).collect::<Vec<_>>(), vec![2]);
    assert!(!pid_alive(first));
}

#[test]
fn restart_without_an_instance_or_a_worker_fails_instead_of_waiting() {
    let dir = TempDir::new("restart-none");
    let (pid_file, status) = (dir.path().join("pid"), dir.path().join("status"));
    let out = run(&[
        "--restart",
        &arg("pid-file", &pid_file),
        &arg("status-file", &status),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("No such file or directory"),
        "{}",
        stderr(&out)
    );

    // An instance whose worker never starts: no generation in the status file.
    let mut server = Server::start(&[
        &arg("pid-file", &pid_file),
        &arg("status-file", &status),
        "--interval=0.1",
        "--",
        "false",
    ]);
    server.wait_nth_line("seems to have failed to start", 1);
    fs::write(&status, "").unwrap();
    let out = run(&[
        "--restart",
        &arg("pid-file", &pid_file),
        &arg("status-file", &status),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no active process found"),
        "{}",
        stderr(&out)
    );
    server.stop();
}

#[test]
fn restart_gives_up_when_the_instance_exits() {
    // Generation 1 serves; generation 2 is never ready, so the restart can only end
    // with the instance: stopped (a verdict says so) or killed (the lock goes).
    for (sig, expect) in [
        (libc::SIGTERM, "restart failed: start_server is stopping"),
        (libc::SIGKILL, "exited before a new generation started"),
    ] {
        let dir = TempDir::new("restart-exit");
        let (pid_file, status) = (dir.path().join("pid"), dir.path().join("status"));
        let mut server = Server::start_with(
            &[
                &arg("pid-file", &pid_file),
                &arg("status-file", &status),
                "--ready=notify",
                "--ready-timeout=60",
                "--",
                &perl_worker().display().to_string(),
            ],
            &[("NOT_READY_GENERATIONS", "2")],
        );
        server.wait_status(&status, &[1]);
        let restart = Command::new(start_server_bin())
            .args([
                "--restart",
                &arg("pid-file", &pid_file),
                &arg("status-file", &status),
            ])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        server.wait_nth_line("starting new worker", 2);
        server.signal(sig);
        server.wait_exit();
        let out = restart.wait_with_output().unwrap();
        assert!(!out.status.success());
        assert!(stderr(&out).contains(expect), "{}", stderr(&out));
    }
}

#[test]
fn daemonized_instance_is_stopped_with_stop() {
    let dir = TempDir::new("daemon");
    let (pid_file, log) = (dir.path().join("pid"), dir.path().join("log"));
    let _guard = KillOnDrop(&pid_file);
    // Again on a fresh port if another process took this one first.
    let (port, out) = (0..5)
        .map(|_| {
            let port = free_port("127.0.0.1");
            let out = run(&[
                "--daemonize",
                &arg("log-file", &log),
                &arg("pid-file", &pid_file),
                &format!("--port=127.0.0.1:{port}"),
                "--interval=0.1",
                "--",
                &perl_worker().display().to_string(),
            ]);
            (port, out)
        })
        .find(|(_, out)| !stderr(out).contains(ADDRESS_IN_USE))
        .expect("a free port within 5 tries");
    assert!(out.status.success(), "{}", stderr(&out));
    // The launcher returns once the daemon has written its pid.
    let pid: i32 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(pid_alive(pid));
    let (worker, generation) = wait_for("the daemon's worker", || {
        http_get(addr("127.0.0.1", port)).ok()
    });
    assert_eq!(generation, 1);
    // Detached: a session of its own.
    let fields = stat_fields(pid).unwrap_or_default();
    assert_ne!(
        fields[3],
        pid.to_string(),
        "not a session leader after the second fork"
    );
    assert_ne!(fields[3], std::process::id().to_string());

    let out = run(&["--stop", &arg("pid-file", &pid_file)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!pid_alive(pid) && !pid_alive(worker));
    let text = fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(&format!("worker {worker} died, status:0")),
        "{text}"
    );
    assert!(text.ends_with("exiting\n"), "{text}");
}

#[test]
fn daemonize_errors_reach_the_terminal() {
    let dir = TempDir::new("daemon-err");
    let log = dir.path().join("log");
    let out = run(&[
        "--daemonize",
        &arg("log-file", &log),
        "--port=127.0.0.1:99999",
        "--",
        "sleep",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(255));
    assert!(stderr(&out).contains("99999"), "{}", stderr(&out));
    let out = run(&["--daemonize", "--", "sleep", "1"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--log-file"), "{}", stderr(&out));
}

#[test]
fn log_pipe_receives_every_line_before_start_server_exits() {
    let dir = TempDir::new("logpipe");
    let out_file = dir.path().join("piped");
    // A slow logger: start_server must wait for it before exiting.
    let log_spec = format!(
        "--log-file=| sleep 0.3; sed -u 's/^/[log] /' >> {}",
        out_file.display()
    );
    let mut server = Server::start(&[
        &log_spec,
        "--interval=0.1",
        "--",
        "sh",
        "-c",
        "echo worker says hello; trap 'echo worker says bye; exit 0' TERM; while :; do sleep 0.05; done",
    ]);
    // start_server's own log goes through the pipe too, so the worker's pid is read there.
    let worker: i32 = wait_for("the worker", || {
        let text = fs::read_to_string(&out_file).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("[log] starting new worker ")?.parse().ok())
    });
    wait_until("the worker's first line", || {
        fs::read_to_string(&out_file).is_ok_and(|t| t.contains("[log] worker says hello"))
    });
    server.stop();
    let text = fs::read_to_string(&out_file).unwrap();
    for line in [
        format!("[log] starting new worker {worker}"),
        format!("[log] received TERM, sending TERM to all workers:{worker}"),
        "[log] worker says bye".to_string(),
        format!("[log] worker {worker} died, status:0"),
        "[log] exiting".to_string(),
    ] {
        assert!(text.contains(&line), "{line:?} missing from {text}");
    }
}

#[test]
fn log_file_appends() {
    let dir = TempDir::new("logfile");
    let log = dir.path().join("log");
    fs::write(&log, "earlier line\n").unwrap();
    let mut server = Server::start(&[
        &arg("log-file", &log),
        "--interval=0.1",
        "--",
        "sleep",
        "60",
    ]);
    wait_until("the log", || {
        fs::read_to_string(&log).is_ok_and(|t| t.contains("starting new worker"))
    });
    server.stop();
    let text = fs::read_to_string(&log).unwrap();
    // Then ours, from the line saying how process trees are kept (start_server(1),
    // A GENERATION IS ITS WHOLE PROCESS TREE).
    assert!(
        text.starts_with("earlier line\nprocess tree: ") && text.contains("\nstarting new worker "),
        "{text}"
    );
    assert!(text.ends_with("exiting\n"), "{text}");
}

#[test]
fn envdir_is_read_again_before_every_spawn() {
    let dir = TempDir::new("envdir");
    let env = dir.path().join("env");
    fs::create_dir(&env).unwrap();
    fs::write(env.join("GREETING"), "hello\nignored second line\n").unwrap();
    fs::write(env.join(".hidden"), "x\n").unwrap();
    let seen = dir.path().join("seen");
    let script = format!(
        "echo \"$SERVER_STARTER_GENERATION:${{GREETING-unset}}:${{_HIDDEN-none}}:$ENVDIR\" >> {}; exec sleep 60",
        seen.display()
    );
    let status = dir.path().join("status");
    let server = Server::start(&[
        &arg("envdir", &env),
        &arg("status-file", &status),
        "--interval=0.1",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let line = |n: usize| {
        wait_for("the worker's line", || {
            fs::read_to_string(&seen)
                .ok()?
                .lines()
                .nth(n)
                .map(String::from)
        })
    };
    assert_eq!(line(0), format!("1:hello:none:{}", env.display()));
    server.wait_status(&status, &[1]);
    fs::write(env.join("GREETING"), "changed").unwrap();
    server.signal(libc::SIGHUP);
    assert_eq!(line(1), format!("2:changed:none:{}", env.display()));
    server.wait_status(&status, &[2]);
    fs::remove_file(env.join("GREETING")).unwrap();
    server.signal(libc::SIGHUP);
    assert_eq!(line(2), format!("3:unset:none:{}", env.display()));
}

/// A worker that appends `report` (shell words, expanded) to `dir`/seen and then
/// runs `then`: (the file, the `sh -c` script).
fn reporting_worker(dir: &Path, report: &str, then: &str) -> (std::path::PathBuf, String) {
    let seen = dir.join("seen");
    let script = format!("echo \"{report}\" >> {}; {then}", seen.display());
    (seen, script)
}

#[test]
fn auto_restart_with_a_short_interval() {
    let dir = TempDir::new("auto");
    let status = dir.path().join("status");
    let (seen, script) = reporting_worker(
        dir.path(),
        "$ENABLE_AUTO_RESTART:$AUTO_RESTART_INTERVAL:$KILL_OLD_DELAY",
        "exec sleep 60",
    );
    let server = Server::start(&[
        "--enable-auto-restart",
        "--auto-restart-interval=0.5",
        "--kill-old-delay=0.1",
        "--interval=0.1",
        &arg("status-file", &status),
        "--",
        "sh",
        "-c",
        &script,
    ]);
    server.wait_line("autorestart triggered (interval=0.5)");
    server.wait_line("sleeping 0.1 secs before killing old workers");
    server.wait_status(&status, &[3]);
    assert!(fs::read_to_string(&seen)
        .unwrap()
        .starts_with("1:0.5:0.1\n"));
    assert!(!server.has_line("received HUP"));
}

/// Durations below a millisecond are printed with their digits (not as `0.`), and the
/// exported `KILL_OLD_DELAY` reads back as the delay given (issue 15 item 19).
#[test]
fn sub_millisecond_durations_print_and_read_back_as_given() {
    let dir = TempDir::new("submilli");
    let status = dir.path().join("status");
    // Ignores TERM, so that --kill-timeout's KILL (and its line) follows.
    let (seen, script) = reporting_worker(dir.path(), "$KILL_OLD_DELAY", "exec sleep 60");
    let script = format!("trap '' TERM; {script}");
    let delays = ["--kill-old-delay=0.0001", "--kill-timeout=0.0004"];
    let status_arg = arg("status-file", &status);
    let mut args = vec!["--interval=0.1", &status_arg];
    args.extend(delays);
    args.extend(["--", "sh", "-c", &script]);
    let mut server = Server::start(&args);
    let first = server.wait_status(&status, &[1])[0].1;
    server.signal(libc::SIGHUP);
    server.wait_line("sleeping 0.0001 secs before killing old workers");
    server.wait_line(&format!(
        "worker {first} still running 0.0004 secs after it was told to stop, sending KILL"
    ));
    server.wait_status(&status, &[2]);
    assert_eq!(fs::read_to_string(&seen).unwrap(), "0.0001\n0.0001\n");
    server.stop();
}

/// With auto-restart on and no interval given, workers see the default in force, as
/// the original's do (it exports its `||= 360`).
#[test]
fn auto_restart_default_interval_is_exported() {
    let dir = TempDir::new("auto-default");
    let seen = dir.path().join("seen");
    let script = format!(
        "echo \"$ENABLE_AUTO_RESTART:$AUTO_RESTART_INTERVAL:$KILL_OLD_DELAY\" >> {}; exec sleep 60",
        seen.display()
    );
    let mut server = Server::start(&["--enable-auto-restart", "--", "sh", "-c", &script]);
    let line = wait_for("the worker's report", || {
        fs::read_to_string(&seen).ok().filter(|s| s.ends_with('\n'))
    });
    assert_eq!(line, "1:360:\n");
    server.stop();
}

#[test]
fn auto_restart_from_the_environment_and_its_default_kill_old_delay() {
    let dir = TempDir::new("auto-env");
    let status = dir.path().join("status");
    let server = Server::start_with(
        &[
            "--interval=0.1",
            &arg("status-file", &status),
            "--",
            "sleep",
            "60",
        ],
        &[
            ("ENABLE_AUTO_RESTART", "1"),
            ("AUTO_RESTART_INTERVAL", "0.3"),
        ],
    );
    server.wait_line("autorestart triggered (interval=0.3)");
    // With auto-restart on, the old worker is signalled after 5 s by default.
    server.wait_line("sleeping 5 secs before killing old workers");
    assert_eq!(
        read_status(&status).len(),
        2,
        "both generations run during the delay"
    );

    let out = Command::new(start_server_bin())
        .args(["--", "sleep", "1"])
        .env("ENABLE_AUTO_RESTART", "1")
        .env("AUTO_RESTART_INTERVAL", "abc")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("invalid AUTO_RESTART_INTERVAL value \"abc\""),
        "{}",
        stderr(&out)
    );
}

/// An instance without a control socket (here the Perl original itself) is restarted
/// the original's way: HUP, then the status file is watched.
#[test]
fn restart_of_an_instance_without_a_control_socket_watches_the_status_file() {
    let perl = Path::new("/usr/bin/start_server");
    assert!(perl.exists(), "apt-get install libserver-starter-perl");
    let dir = TempDir::new("restart-perl");
    let (pid_file, status) = (dir.path().join("pid"), dir.path().join("status"));
    let args: Vec<String> = vec![
        arg("pid-file", &pid_file),
        arg("status-file", &status),
        "--interval=1".into(),
        "--".into(),
        "sleep".into(),
        "60".into(),
    ];
    let original = common::StartServer::spawn(perl, &args, &[], dir.path().join("log"));
    wait_until("the original's status file", || {
        read_status(&status).len() == 1 && fs::metadata(&pid_file).is_ok_and(|m| m.len() > 0)
    });
    let out = run(&[
        "--restart",
        &arg("pid-file", &pid_file),
        &arg("status-file", &status),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        read_status(&status).iter().map(|e| e.0).collect::<Vec<_>>(),
        vec![2]
    );
    drop(original);
}
