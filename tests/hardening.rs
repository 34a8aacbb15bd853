//! start_server against a hostile or exhausted system, through the built binary: no
//! descriptors or processes left to spawn with, symlinks planted where the status file
//! is written, an envdir holding a huge file or a FIFO, a second instance racing the
//! first. (Bad command lines are in hostile_input.rs.)

mod common;
mod support;

use std::time::{Duration, Instant};

use common::TempDir;
use support::*;

/// A wrapper running start_server as nobody, whom RLIMIT_NPROC and file permissions
/// bind (root ignores both).
const AS_NOBODY: [&str; 4] = [
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
];

fn mkfifo(path: &std::path::Path) {
    let c_path = std::ffi::CString::new(path.display().to_string()).unwrap();
    // SAFETY: a NUL-terminated path; mkfifo has no other preconditions.
    let rc = unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) };
    assert_eq!(rc, 0, "mkfifo {}", path.display());
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
        let mut server = Server::start_wrapped(&["prlimit", &nofile, "--"], &args, &[]);
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
        wrapper.extend(AS_NOBODY);
    }
    wrapper.extend(["prlimit", "--nproc=1", "--"]);
    let mut server = Server::start_wrapped(&wrapper, &["--interval=0.1", "--", "true"], &[]);
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

// ------------------------------------------------------------------ status file

/// The names the temp file of `status` could be planted at: the original's
/// (`status.PID`) and others a guesser might try, `$$` standing for start_server's pid.
const PLANTED: &[&str] = &[
    "status.$$",
    ".status.$$",
    "status.$$.tmp",
    ".status.$$.0",
    ".status.$$.0000000000000000",
    ".status.$$.ffffffffffffffff",
    ".status.tmp",
    "status.tmp",
    "status~",
];

/// The directory's entries, by name: each symlink's target, or the kind of the rest.
fn listing(dir: &std::path::Path) -> std::collections::BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            let kind = match std::fs::read_link(e.path()) {
                Ok(target) => format!("-> {}", target.display()),
                Err(_) if e.path().is_dir() => "dir".to_string(),
                Err(_) => "file".to_string(),
            };
            (e.file_name().to_string_lossy().into_owned(), kind)
        })
        .collect()
}

/// Symlinks planted, before start_server runs, at the status file itself and at every
/// name its temp file could have, half to a file they must not overwrite, half to a
/// file they must not create: both stay as they were, and the status file is right.
#[test]
fn status_file_writes_never_follow_a_planted_symlink() {
    let dir = TempDir::new("st");
    let victim = dir.path().join("victim");
    let precious = b"precious\n\0binary\xff tail without newline";
    std::fs::write(&victim, precious).unwrap();
    let absent = dir.path().join("absent");
    // Planted by the shell that execs start_server: `$$` is start_server's pid.
    let mut script = format!("cd '{}' && ln -s victim status", dir.path().display());
    for (i, name) in PLANTED.iter().enumerate() {
        let target = if i % 2 == 0 { "victim" } else { "absent" };
        script += &format!(" && ln -s {target} \"{name}\"");
    }
    script += " && exec \"$@\"";
    let status = dir.path().join("status");
    let status_arg = format!("--status-file={}", status.display());
    let mut server = Server::start_wrapped(
        &["sh", "-c", &script, "sh"],
        &["--interval=0.1", &status_arg, "--", "sleep", "600"],
        &[],
    );
    let planted = |pid: i32| -> Vec<(String, String)> {
        PLANTED
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let target = if i % 2 == 0 { "victim" } else { "absent" };
                (name.replace("$$", &pid.to_string()), format!("-> {target}"))
            })
            .collect()
    };
    let check = |generation: u64| {
        let entries = server.wait_status(&status, &[generation]);
        let worker = *server.worker_pids().last().unwrap();
        assert_eq!(entries, vec![(generation, worker)]);
        assert!(std::fs::symlink_metadata(&status).unwrap().is_file());
        assert_eq!(std::fs::read(&victim).unwrap(), precious);
        assert!(!absent.exists(), "a write went through a dangling symlink");
        let now = listing(dir.path());
        for (name, target) in planted(server.pid()) {
            assert_eq!(now.get(&name), Some(&target), "{name} in {now:?}");
        }
    };
    check(1);
    server.signal(libc::SIGHUP);
    check(2);
    server.stop();
    // Gone at exit; nothing left but what was planted.
    let mut expected: std::collections::BTreeMap<String, String> =
        planted(server.pid()).into_iter().collect();
    expected.insert("victim".into(), "file".into());
    assert_eq!(listing(dir.path()), expected);
    assert_eq!(std::fs::read(&victim).unwrap(), precious);
}

/// A status file that cannot be written is logged (path and errno) and does not stop
/// start_server; the next change writes it whole. Unwritable twice over: a directory
/// at the status file's path (the temp file is created, the rename fails, and the
/// temp file must go), and a directory start_server may not create files in.
#[test]
fn status_file_failures_are_logged_cleaned_up_and_retried() {
    let dir = TempDir::new("stf");
    let status = dir.path().join("status");
    std::fs::create_dir(&status).unwrap();
    std::fs::write(status.join("keep"), "x").unwrap();
    let status_arg = format!("--status-file={}", status.display());
    let mut server = Server::start(&["--interval=0.1", &status_arg, "--", "sleep", "600"]);
    let line = server.wait_line("failed to write status file");
    assert!(
        line.contains(&status.display().to_string()) && line.contains("(os error 21)"),
        "{line}"
    );
    let stray: Vec<String> = listing(dir.path()).into_keys().collect();
    assert_eq!(stray, vec!["status"], "the temp file was left behind");
    std::fs::remove_dir_all(&status).unwrap();
    server.signal(libc::SIGHUP);
    let entries = server.wait_status(&status, &[2]);
    assert_eq!(entries[0].1, server.worker_pids()[1]);
    server.stop();
    assert!(!status.exists());
}

#[test]
fn status_file_in_a_read_only_directory_is_logged_and_retried() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("stro");
    let status = dir.path().join("status");
    let status_arg = format!("--status-file={}", status.display());
    let args = ["--interval=0.1", &status_arg, "--", "sleep", "600"];
    // Root writes anywhere: then start_server runs as nobody, to whom the directory
    // (root's, mode 0755) is read-only.
    let mut server = if is_root() {
        if !have("setpriv") {
            eprintln!("SKIP: running as root without setpriv (util-linux)");
            return;
        }
        Server::start_wrapped(&AS_NOBODY, &args, &[])
    } else {
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
        Server::start(&args)
    };
    let Some(line) = first_of(&mut server, &["failed to write status file"]) else {
        eprintln!("SKIP: start_server did not start: {:?}", server.lines());
        return;
    };
    assert!(
        line.contains(&dir.path().display().to_string()) && line.contains("(os error 13)"),
        "{line}"
    );
    assert!(server.has_line("starting new worker"));
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    server.signal(libc::SIGHUP);
    server.wait_status(&status, &[2]);
    server.stop();
    assert!(!status.exists());
}

// ------------------------------------------------------------------ envdir

/// start_server's peak resident memory (VmHWM), in KiB.
fn peak_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in {status}"))
}

/// A worker that prints the variables it was given, then waits.
fn env_reporter(vars: &[&str]) -> Vec<String> {
    let report: Vec<String> = vars.iter().map(|v| format!("{v}=${{{v}-unset}}")).collect();
    let script = format!("echo \"env: {}\"; exec sleep 600", report.join(" "));
    vec!["sh".into(), "-c".into(), script]
}

/// Two 300 MB (sparse) files in the envdir, one whose first line is short, one
/// without a newline at all: each HUP reads at most 64 KiB of each, so start_server's
/// peak memory stays that of an idle start_server.
#[test]
fn a_huge_envdir_file_costs_no_memory() {
    let dir = TempDir::new("envbig");
    let envdir = dir.path().join("env");
    std::fs::create_dir(&envdir).unwrap();
    let size = 300 << 20;
    let no_newline = std::fs::File::create(envdir.join("NO_NEWLINE")).unwrap();
    no_newline.set_len(size).unwrap();
    std::fs::write(envdir.join("SHORT_LINE"), "value\n").unwrap();
    let short_line = std::fs::OpenOptions::new()
        .write(true)
        .open(envdir.join("SHORT_LINE"))
        .unwrap();
    short_line.set_len(size).unwrap();
    let envdir_arg = format!("--envdir={}", envdir.display());
    let worker = env_reporter(&["SHORT_LINE", "NO_NEWLINE"]);
    let mut args = vec!["--interval=0.1", &envdir_arg, "--"];
    args.extend(worker.iter().map(String::as_str));
    let mut server = Server::start(&args);
    server.wait_line("env: SHORT_LINE=value NO_NEWLINE=unset");
    for restart in 1..=3 {
        server.signal(libc::SIGHUP);
        server.wait_nth_line("killing old workers", restart);
    }
    assert_eq!(
        server.count_lines("env: SHORT_LINE=value NO_NEWLINE=unset"),
        4
    );
    let peak = peak_rss_kib(server.pid());
    eprintln!("start_server VmHWM after 3 HUPs with two 300 MB envdir files: {peak} KiB");
    assert!(peak < 4096, "VmHWM {peak} KiB");
    let skipped = format!(
        "envdir: skipping {}: its first line is longer than 65536 bytes",
        envdir.join("NO_NEWLINE").display()
    );
    // Read at start (for start_server's own settings) and before each spawn.
    assert!(server.count_lines(&skipped) >= 4, "{:?}", server.lines());
    server.stop();
}

/// A FIFO (never opened for writing), a socket, a device and a directory in the
/// envdir, directly or through symlinks: each is skipped with a log line naming it,
/// and start_server still restarts on HUP and stops at once on TERM.
#[test]
fn envdir_entries_that_are_not_files_are_skipped() {
    let dir = TempDir::new("envfifo");
    let envdir = dir.path().join("env");
    std::fs::create_dir(&envdir).unwrap();
    let fifo = envdir.join("FIFO");
    mkfifo(&fifo);
    std::os::unix::fs::symlink(&fifo, envdir.join("FIFO_LINK")).unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(envdir.join("SOCKET")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", envdir.join("DEVICE")).unwrap();
    std::fs::create_dir(envdir.join("DIR")).unwrap();
    std::fs::write(envdir.join("PLAIN"), "plain\n").unwrap();
    let envdir_arg = format!("--envdir={}", envdir.display());
    let worker = env_reporter(&["PLAIN", "FIFO", "FIFO_LINK", "SOCKET", "DEVICE", "DIR"]);
    let mut args = vec!["--interval=0.1", &envdir_arg, "--"];
    args.extend(worker.iter().map(String::as_str));
    let mut server = Server::start(&args);
    let report = "env: PLAIN=plain FIFO=unset FIFO_LINK=unset SOCKET=unset DEVICE=unset DIR=unset";
    server.wait_line(report);
    server.signal(libc::SIGHUP);
    server.wait_line("killing old workers");
    server.wait_nth_line(report, 2);
    for (name, what) in [
        ("FIFO", "a FIFO"),
        ("FIFO_LINK", "a FIFO"),
        ("SOCKET", "a socket"),
        ("DEVICE", "a device"),
        ("DIR", "a directory"),
    ] {
        let line = format!(
            "envdir: skipping {}: {what}, not a regular file",
            envdir.join(name).display()
        );
        assert!(
            server.has_line(&line),
            "no {line:?} in {:?}",
            server.lines()
        );
    }
    let asked = std::time::Instant::now();
    server.stop();
    assert!(
        asked.elapsed() < std::time::Duration::from_secs(5),
        "TERM took {:?}",
        asked.elapsed()
    );
}

// ------------------------------------------------------------------ pid file

/// Instances started together on one pid file, over and over: one runs, and every
/// other says which pid runs, or that it is still starting; never `(pid )`. The
/// running one binds 100 unix sockets between taking the lock and writing its pid,
/// which is the window a second instance must wait through.
#[test]
fn a_second_instance_names_the_running_one() {
    let (mut named, mut starting) = (0, 0);
    for round in 0..3 {
        let dir = TempDir::new("race");
        let pid_file = format!("--pid-file={}", dir.path().join("pid").display());
        let paths: Vec<String> = (0..100)
            .map(|i| format!("--path={}", dir.path().join(format!("{i}.sock")).display()))
            .collect();
        let mut args = vec![pid_file.as_str()];
        args.extend(paths.iter().map(String::as_str));
        args.extend(["--", "sleep", "600"]);
        let mut instances: Vec<Server> = (0..25).map(|_| Server::start(&args)).collect();
        let mut outcomes = Vec::new();
        for server in &mut instances {
            let line = first_of(server, &["starting new worker"]);
            outcomes.push(line.is_some());
        }
        let running: Vec<usize> = (0..instances.len()).filter(|&i| outcomes[i]).collect();
        assert_eq!(running.len(), 1, "round {round}: not one instance running");
        let winner = instances[running[0]].pid();
        for (i, server) in instances.iter_mut().enumerate() {
            if i == running[0] {
                continue;
            }
            let status = server.wait_exit();
            let lines = server.lines();
            assert!(!status.success() && lines.len() == 1, "{lines:?}");
            if lines[0].contains(&format!("already running (pid {winner}): pid file")) {
                named += 1;
            } else if lines[0]
                .contains("already running (still starting, pid not written yet): pid file")
            {
                starting += 1;
            } else {
                panic!("round {round}: instance {i} said {lines:?}; pid {winner} runs");
            }
        }
        instances[running[0]].stop();
    }
    eprintln!("second instances: {named} named the running pid, {starting} said still starting");
}

/// Whether some process holds a flock(2) on the file at `path` (from /proc/locks).
fn flocked(path: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(ino) = std::fs::metadata(path).map(|m| m.ino()) else {
        return false;
    };
    let locks = std::fs::read_to_string("/proc/locks").unwrap();
    locks.lines().any(|l| {
        let fields: Vec<&str> = l.split_whitespace().collect();
        fields.get(1) == Some(&"FLOCK")
            && fields
                .get(5)
                .is_some_and(|f| f.ends_with(&format!(":{ino}")))
    })
}

/// Whether process `pid` has `path` open and is asleep in a timed wait (when the
/// kernel says where it sleeps).
fn waiting_on(pid: i32, path: &std::path::Path) -> bool {
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.flatten()
                .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == path))
        })
        .unwrap_or(false);
    let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
    open && (wchan.contains("sleep") || wchan.is_empty() || wchan == "0")
}

/// An instance holds the pid file's lock and has not written its pid yet (it is
/// binding; here the test holds the lock, since a --log-file FIFO, which used to keep
/// start_server there, is now refused): a second instance waits a bounded time for
/// its pid, then says it is still starting. A third, waiting when the lock is
/// released, takes it over and starts.
#[test]
fn a_second_instance_waits_a_bounded_time_for_a_starting_one() {
    use std::os::unix::io::AsRawFd;
    let dir = TempDir::new("starting");
    let pid_path = dir.path().join("pid");
    let pid_arg = format!("--pid-file={}", pid_path.display());
    let first = std::fs::File::create(&pid_path).unwrap();
    // SAFETY: flock on a descriptor the test owns has no other preconditions.
    let rc = unsafe { libc::flock(first.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock {}", pid_path.display());
    assert!(flocked(&pid_path));

    let asked = std::time::Instant::now();
    let mut second = Server::start(&[&pid_arg, "--", "sleep", "600"]);
    assert!(!second.wait_exit().success());
    let took = asked.elapsed();
    let expected = format!(
        "start_server: already running (still starting, pid not written yet): pid file {} is locked",
        pid_path.display()
    );
    assert_eq!(second.lines(), vec![expected]);
    assert!(took >= std::time::Duration::from_millis(900), "{took:?}");
    assert!(took < std::time::Duration::from_secs(10), "{took:?}");

    let third = Server::start(&[&pid_arg, "--", "sleep", "600"]);
    wait_until("the third instance to wait for a pid", || {
        waiting_on(third.pid(), &pid_path)
    });
    drop(first);
    third.wait_line("starting new worker");
    let text = std::fs::read_to_string(&pid_path).unwrap();
    assert_eq!(text, format!("{}\n", third.pid()));
}

// ------------------------------------------------------------------ log file

/// Runs `script` with `sh`, as nobody if `as_nobody` (then root must run the test).
fn shell(script: &str, as_nobody: bool) {
    let wrapper: &[&str] = if as_nobody { &AS_NOBODY } else { &[] };
    let mut cmd = std::process::Command::new(wrapper.first().copied().unwrap_or("sh"));
    if as_nobody {
        cmd.args(&wrapper[1..]).arg("sh");
    }
    let status = cmd.args(["-c", script]).status().unwrap();
    assert!(status.success(), "{script}: {status}");
}

/// Leaves at the log file's `path` what a user who owns its directory could (as
/// nobody, if `as_nobody`): a symlink to `victim` or to a file that does not exist, a
/// FIFO, a directory; or, as root, a device node (/dev/null's).
fn plant(kind: &str, path: &std::path::Path, victim: &std::path::Path, as_nobody: bool) {
    let (p, v) = (path.display(), victim.display());
    match kind {
        "symlink" => shell(&format!("ln -s '{v}' '{p}'"), as_nobody),
        "dangling symlink" => shell(&format!("ln -s '{v}.absent' '{p}'"), as_nobody),
        "FIFO" => shell(&format!("mkfifo '{p}'"), as_nobody),
        "directory" => shell(&format!("mkdir '{p}'"), as_nobody),
        "device" => {
            let c_path = std::ffi::CString::new(path.display().to_string()).unwrap();
            // SAFETY: a NUL-terminated path; mknod has no other preconditions. 1:7 is
            // /dev/full's device number (/dev/null's, 1:3, is the one device allowed).
            let rc =
                unsafe { libc::mknod(c_path.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 7)) };
            assert_eq!(rc, 0, "mknod {}", path.display());
        }
        _ => unreachable!("{kind}"),
    }
}

/// What start_server says of each planted kind.
fn refused_as(kind: &str) -> &'static str {
    match kind {
        "symlink" | "dangling symlink" => "it is a symbolic link, not a regular file",
        "FIFO" => "it is a FIFO, not a regular file",
        "directory" => "it is a directory, not a regular file",
        "device" => "it is a device, not a regular file",
        _ => unreachable!("{kind}"),
    }
}

/// Takes away what `plant` left at `path`.
fn unplant(path: &std::path::Path) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir(path).unwrap(),
        Ok(_) => std::fs::remove_file(path).unwrap(),
        Err(_) => {}
    }
}

/// Root appends to a log file in a directory that `nobody` owns. After a rotation,
/// nobody leaves a symlink to a root-owned file at the path (or a FIFO, which used to
/// hang USR1 in open(2), a directory, a device): USR1 refuses each in one line, the
/// log goes on to the old file (the workers' output too), and the root-owned file is
/// untouched. A regular file at the path is then reopened as before.
#[test]
fn usr1_never_reopens_the_log_through_a_symlink_or_onto_a_non_regular_file() {
    if !is_root() || !have("setpriv") {
        eprintln!("SKIP: needs root (a log directory owned by nobody, a device node) and setpriv");
        return;
    }
    let dir = TempDir::new("lf-usr1");
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    std::os::unix::fs::chown(&logs, Some(65534), Some(65534)).unwrap();
    let victim = dir.path().join("shadow");
    let precious = b"root:secret:\n\0binary\xff tail without newline";
    std::fs::write(&victim, precious).unwrap();
    let (log, rotated) = (logs.join("app.log"), logs.join("app.log.1"));
    let mut server = Server::start(&[
        &format!("--log-file={}", log.display()),
        "--interval=0.1",
        "--",
        "sh",
        "-c",
        "echo worker $$ of generation $SERVER_STARTER_GENERATION; exec sleep 600",
    ]);
    let read = |path: &std::path::Path| std::fs::read_to_string(path).unwrap_or_default();
    let wait_in = |path: &std::path::Path, needle: &str| {
        wait_until(&format!("{needle:?} in {}", path.display()), || {
            read(path).contains(needle)
        })
    };
    wait_in(&log, "of generation 1");
    // The owner of the directory rotates the log, then plants something at its path.
    shell(
        &format!("mv '{}' '{}'", log.display(), rotated.display()),
        true,
    );
    let kinds = ["symlink", "dangling symlink", "FIFO", "directory", "device"];
    for (i, kind) in kinds.into_iter().enumerate() {
        plant(kind, &log, &victim, true);
        // A FIFO with a reader opens without O_NONBLOCK's ENXIO: refused all the same.
        let reader = (kind == "FIFO").then(|| {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&log)
                .unwrap()
        });
        server.signal(libc::SIGUSR1);
        let refusal = format!(
            "failed to reopen log file {}: {}: refused; logging on to the old one",
            log.display(),
            refused_as(kind)
        );
        wait_in(&rotated, &refusal);
        // The old file still gets everything, the next generation's output included.
        server.signal(libc::SIGHUP);
        wait_in(&rotated, &format!("of generation {}", i + 2));
        if let Some(mut reader) = reader {
            let mut got = Vec::new();
            let _ = std::io::Read::read_to_end(&mut reader, &mut got);
            assert!(got.is_empty(), "written to the FIFO: {got:?}");
        }
        assert_eq!(
            std::fs::read(&victim).unwrap(),
            precious,
            "after the {kind}"
        );
        assert!(
            !victim.with_extension("absent").exists(),
            "after the {kind}"
        );
        // One line for each refusal, and nothing else refused.
        let refusals = read(&rotated).matches("failed to reopen").count();
        assert_eq!(refusals, i + 1, "{}", read(&rotated));
        unplant(&log);
    }
    // Nothing at the path: a new file, as before.
    server.signal(libc::SIGUSR1);
    wait_in(&log, "log file reopened");
    server.stop();
    assert_eq!(std::fs::read(&victim).unwrap(), precious);
    assert!(std::fs::symlink_metadata(&log).unwrap().is_file());
}

/// The same rules at start: one line on stderr naming the path, a non-zero exit, and
/// nothing bound, created or left behind (no pid file, nothing through the symlink).
#[test]
fn start_refuses_a_log_file_that_is_a_symlink_or_not_a_regular_file() {
    let dir = TempDir::new("lf-start");
    let victim = dir.path().join("victim");
    let precious = b"precious\n\0binary";
    std::fs::write(&victim, precious).unwrap();
    let mut kinds = vec!["symlink", "dangling symlink", "FIFO", "directory"];
    if is_root() {
        kinds.push("device");
    } else {
        eprintln!("not root: no device node planted");
    }
    for kind in kinds {
        let log = dir.path().join("log");
        plant(kind, &log, &victim, false);
        let pid_file = dir.path().join("pid");
        let sock = dir.path().join("sock");
        let out = run_within(
            &[
                &format!("--log-file={}", log.display()),
                &format!("--pid-file={}", pid_file.display()),
                &format!("--path={}", sock.display()),
                "--",
                "sleep",
                "600",
            ],
            std::time::Duration::from_secs(10),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(255), "{kind}: {stderr}");
        assert_eq!(
            stderr,
            format!(
                "start_server: failed to open log file:{}: {}: refused\n",
                log.display(),
                refused_as(kind)
            ),
            "{kind}"
        );
        assert_eq!(std::fs::read(&victim).unwrap(), precious, "{kind}");
        unplant(&log);
        let left: Vec<String> = listing(dir.path()).into_keys().collect();
        assert_eq!(left, vec!["victim".to_string()], "{kind}");
    }
}

// ------------------------------------------------------------------ upgrade errors

/// The lowest descriptor number `pid` does not have open: with RLIMIT_NOFILE there,
/// it can open nothing more.
fn lowest_free_fd(pid: i32) -> i32 {
    let open: std::collections::BTreeSet<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    (0..).find(|fd| !open.contains(fd)).unwrap()
}

/// An upgrade refused for lack of descriptors names the call that failed (it used to
/// say "fork" whatever failed): with no descriptor left, opening the new image; with
/// one, opening /dev/null for the check; with two, the check's pipe.
#[test]
fn an_upgrade_refused_for_lack_of_descriptors_names_the_call() {
    if !have("prlimit") {
        eprintln!("SKIP: prlimit (util-linux) is not installed");
        return;
    }
    let mut server = Server::start(&["--interval=0.1", "--", "sleep", "600"]);
    server.wait_line("starting new worker");
    let pid = server.pid();
    let free = lowest_free_fd(pid);
    for (n, (spare, call)) in [
        (0, "cannot open it: open(2)"),
        (1, "open(2) /dev/null"),
        (2, "pipe2(2)"),
    ]
    .into_iter()
    .enumerate()
    {
        // The soft limit only: it may go up again.
        let limit = free + spare;
        let set = std::process::Command::new("prlimit")
            .args([&format!("--pid={pid}"), &format!("--nofile={limit}:")])
            .status()
            .unwrap();
        assert!(set.success(), "prlimit");
        server.signal(libc::SIGUSR2);
        let line = server.wait_nth_line("not upgrading to", n + 1);
        // EMFILE as musl and glibc word it.
        assert!(
            line.ends_with(&format!(
                ": {call}: No file descriptors available (os error 24)"
            )) || line.ends_with(&format!(": {call}: Too many open files (os error 24)")),
            "RLIMIT_NOFILE {limit}: {line}"
        );
        eprintln!("RLIMIT_NOFILE {limit}: {line}");
    }
    server.stop();
}

// ------------------------------------------------------------------ log writer

/// start_server's lines to a stderr that is a FIFO (or pipe, or tty) go through a
/// non-blocking descriptor of its own. That descriptor must never take the number of
/// a socket: with --listen-fds the sockets sit at 3, 4, ... in start_server too, and
/// the descriptor is closed again once the log file is set up.
#[test]
fn the_log_writer_s_own_descriptor_never_takes_a_socket_s_number() {
    let dir = TempDir::new("lw-fd");
    let err = dir.path().join("err");
    mkfifo(&err);
    // A reader, so that start_server's open of the FIFO as its stderr does not wait;
    // never read: start_server must not mind.
    let mut reader = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&err)
            .unwrap()
    };
    let log = dir.path().join("log");
    let redirect = format!("exec \"$@\" 2>{}", err.display());
    let bin = start_server_bin().display().to_string();
    let worker = perl_worker().display().to_string();
    let (mut server, port) = (0..5)
        .find_map(|_| {
            let port = free_port("127.0.0.1");
            let args = [
                "-c",
                &redirect,
                "sh",
                &bin,
                &format!("--port=127.0.0.1:{port}"),
                "--listen-fds",
                &format!("--log-file={}", log.display()),
                "--interval=0.1",
                "--",
                "perl",
                &worker,
            ];
            let mut server = Server::start_program(std::path::Path::new("sh"), &args, &[]);
            let started = wait_for("a worker, or start_server to fail", || {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if text.contains("starting new worker") {
                    return Some(true);
                }
                server.try_exit().map(|_| false)
            });
            if started {
                return Some((server, port));
            }
            let mut said = String::new();
            let _ = std::io::Read::read_to_string(&mut reader, &mut said);
            assert!(said.contains(ADDRESS_IN_USE), "start_server failed: {said}");
            None
        })
        .expect("a free port in 5 tries");
    wait_generation(addr("127.0.0.1", port), 1);
    let fd3 = std::fs::read_link(format!("/proc/{}/fd/3", server.pid())).unwrap();
    assert!(fd3.to_string_lossy().starts_with("socket:"), "{fd3:?}");
    server.signal(libc::SIGHUP);
    wait_generation(addr("127.0.0.1", port), 2);
    server.stop();
}

/// stderr a socket that is not read (as a journal that has stopped reading would be):
/// the worker's output fills it and the worker blocks, but start_server's own lines
/// (received TERM, the worker's exit) are sent without waiting, dropped if need be, so
/// TERM still stops it. It used to block in write(2) on its first line.
#[test]
fn start_server_never_blocks_on_a_stderr_socket_that_is_not_read() {
    if !have("bash") {
        eprintln!("SKIP: bash (for /dev/tcp) is not installed");
        return;
    }
    let dir = TempDir::new("lw-sock");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let to = listener.local_addr().unwrap();
    let worker_pid = dir.path().join("worker");
    let mut server = Server::start_wrapped(
        &[
            "bash",
            "-c",
            &format!("exec \"$@\" 2>/dev/tcp/127.0.0.1/{}", to.port()),
            "bash",
        ],
        &[
            "--interval=0.1",
            "--",
            "sh",
            "-c",
            &format!("echo $$ > {}; exec yes flood >&2", worker_pid.display()),
        ],
        &[],
    );
    // Accepted, never read.
    let _journal = wait_for("start_server's stderr to connect", || {
        listener.accept().ok()
    });
    let worker = wait_pid_file(&worker_pid);
    wait_until("the worker to block on the full socket", || {
        comm(worker).as_deref() == Some("yes")
            && stat_fields(worker)
                .unwrap_or_default()
                .first()
                .is_some_and(|state| state == "S")
    });
    server.signal(libc::SIGTERM);
    let status = common::poll_until(
        "start_server to exit",
        std::time::Duration::from_secs(10),
        || server.try_exit(),
    );
    assert!(status.success(), "{status}");
    assert!(!pid_alive(worker));
}

/// The one device a log may go to: `--log-file=/dev/null` discarded the log with the
/// original and still does, at start and on USR1.
#[test]
fn the_null_device_is_a_log_file_that_is_allowed() {
    let dir = TempDir::new("lf-null");
    let status = dir.path().join("status");
    let mut server = Server::start(&[
        "--log-file=/dev/null",
        &format!("--status-file={}", status.display()),
        "--interval=0.1",
        "--",
        "sleep",
        "600",
    ]);
    server.wait_status(&status, &[1]);
    server.signal(libc::SIGUSR1);
    server.signal(libc::SIGHUP);
    server.wait_status(&status, &[2]);
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit().code(), Some(0));
}

// ------------------------------------------------------------------ floods

/// Sends `READY=1` to the abstract socket `$ARGV[0]` for `$ARGV[1]` seconds, as fast as
/// the receiver takes them: each send waits (at most 0.1 s) while the receiver's queue
/// is full, so that the flood costs this process only what start_server reads, and
/// other tests running meanwhile keep their CPU. Prints how many were taken.
const FLOOD: &str = "use Socket; use Time::HiRes qw(time); \
                     socket(my $s, AF_UNIX, SOCK_DGRAM, 0) or die $!; \
                     setsockopt($s, SOL_SOCKET, SO_SNDTIMEO, pack('l!l!', 0, 100000)) or die $!; \
                     my $to = pack_sockaddr_un(\"\\0$ARGV[0]\"); my $end = time + $ARGV[1]; \
                     my $sent = 0; while (time < $end) { $sent++ if send($s, 'READY=1', 0, $to) } \
                     print \"$sent\\n\"";

/// Another user (or, not as root, a process outside the worker) floods a worker's
/// NOTIFY_SOCKET and the control socket, whose names anyone reads in /proc/net/unix:
/// the log grows by a few lines, start_server spends little CPU on it, counts what it
/// did not log, serves on, and is idle again as soon as the flood stops.
#[test]
fn a_flood_of_messages_that_never_count_costs_little_log_and_cpu() {
    const SECS: u64 = 3;
    let dir = TempDir::new("flood");
    let status = dir.path().join("status");
    let pid_file = dir.path().join("pid");
    let (mut server, port) = Server::start_retrying(
        |port| {
            vec![
                format!("--port=127.0.0.1:{port}"),
                "--ready=notify".into(),
                format!("--status-file={}", status.display()),
                format!("--pid-file={}", pid_file.display()),
                "--".into(),
                perl_worker().display().to_string(),
            ]
        },
        &[],
    );
    let worker = server.wait_status(&status, &[1])[0].1;
    let pid = server.pid();
    let notify = worker_env(worker, "NOTIFY_SOCKET").expect("the worker's NOTIFY_SOCKET");
    let control = format!("server_starter/{pid}/control");
    let log_size = |server: &Server| std::fs::metadata(server.log_path()).unwrap().len();
    let (log_before, cpu_before, began) = (log_size(&server), cpu_seconds(pid), Instant::now());
    let flooders: Vec<_> = [&notify[1..], &control]
        .into_iter()
        .map(|name| {
            let secs = SECS.to_string();
            let mut cmd = if is_root() {
                let mut cmd = std::process::Command::new(AS_NOBODY[0]);
                cmd.args(&AS_NOBODY[1..]).arg("perl");
                cmd
            } else {
                std::process::Command::new("perl")
            };
            cmd.args(["-e", FLOOD, name, &secs])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("perl")
        })
        .collect();
    let mut sent = 0u64;
    for flooder in flooders {
        let out = flooder.wait_with_output().expect("the flooder's count");
        sent += String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u64>()
            .unwrap_or(0);
    }
    let wall = began.elapsed();
    let cpu = cpu_seconds(pid) - cpu_before;
    let grown = log_size(&server) - log_before;
    eprintln!(
        "flood: {sent} datagrams taken in {:.1} s; start_server: {cpu:.2} s CPU, log +{grown} bytes",
        wall.as_secs_f64()
    );
    assert!(
        grown < 8192,
        "the log grew by {grown} bytes: {:?}",
        server.lines()
    );
    assert!(
        cpu < 0.1 * wall.as_secs_f64() + 0.05,
        "start_server spent {cpu:.2} s CPU in {wall:?}"
    );
    // The first dropped message is logged; then at most about a line a second.
    assert!(
        server.has_line("dropped a notification from pid ")
            || server.has_line("ignored a control request from pid "),
        "{:?}",
        server.lines()
    );
    // What was not logged is counted, at the next event at the latest.
    wait_until("the count of messages not logged", || {
        server.signal(libc::SIGUSR1);
        server.has_line("more messages on the notification and control sockets")
    });
    assert_eq!(read_status(&status), vec![(1, worker)]);
    // Idle again: no timer left behind (no switch across 500 ms).
    let mut last = context_switches(pid);
    wait_until("start_server to be idle again", || {
        std::thread::sleep(Duration::from_millis(500));
        let now = context_switches(pid);
        std::mem::replace(&mut last, now) == now
    });
    assert_eq!(
        http_get(addr("127.0.0.1", port)).unwrap(),
        (worker, 1),
        "the worker serves on"
    );
    server.stop();
}

// ------------------------------------------------------------------ shared sockets

/// A worker that shuts the listening socket down acts on the one socket every
/// generation shares: the next generation must find it listening again.
#[test]
fn a_listener_a_worker_shut_down_listens_again_for_the_next_generation() {
    let http = common::example("http-static").display().to_string();
    // Generation 1 shuts the socket down for reading (the kernel then closes the
    // listener) and exits; the ones after it serve.
    let script = format!(
        "if [ \"$SERVER_STARTER_GENERATION\" = 1 ]; then exec python3 -c '{}'; fi; exec {http}",
        "import os, socket; fd = int(os.environ[\"SERVER_STARTER_PORT\"].rsplit(\"=\", 1)[1]); \
         socket.socket(fileno=fd).shutdown(socket.SHUT_RD)"
    );
    let (mut server, port) = Server::start_retrying(
        |port| {
            vec![
                format!("--port=127.0.0.1:{port}"),
                "--interval=0".into(),
                "--".into(),
                "sh".into(),
                "-c".into(),
                script.clone(),
            ]
        },
        &[],
    );
    let addr = addr("127.0.0.1", port);
    let second = wait_generation(addr, 2);
    let relistened = format!(
        "socket 127.0.0.1:{port} (descriptor 3) was no longer listening (a worker shut it \
         down?): listening on it again"
    );
    assert_eq!(server.count_lines(&relistened), 1, "{:?}", server.lines());
    // Once listening, it is left alone: a HUP logs nothing more.
    server.signal(libc::SIGHUP);
    wait_generation(addr, 3);
    // Generation 2 may still take a connection until its TERM lands.
    wait_until("generation 2 to be gone", || !pid_alive(second));
    assert_eq!(server.count_lines("no longer listening"), 1);
    server.stop();
}

// ------------------------------------------------------------------ PID namespaces

/// An instance in a PID namespace of its own writes its pid there (1) to the pid file.
/// A client elsewhere must not signal its own namespace's pid 1: it signals only the
/// process holding the pid file's lock, as its namespace sees it, and refuses in one
/// line when that is not the pid the file names (a parent namespace), or cannot be
/// seen at all (a sibling one). The whole scene runs in a namespace of the test's own
/// (`--kill-child` tears it down), whose pid 1 is a shell that reports a TERM.
#[test]
fn clients_never_signal_another_namespace_s_pid_1() {
    if !is_root() || !have("unshare") || !have("flock") {
        eprintln!("skipped: needs root, unshare(1) and flock(1)");
        return;
    }
    let dir = TempDir::new("pidns");
    let pid_file = dir.path().join("pid");
    let log = dir.path().join("log");
    let script = r#"
trap 'echo "TERM reached pid 1"' TERM
S=$1; PF=$2; LOG=$3; PORT=$4
unshare --pid --fork --mount-proc "$S" --port=127.0.0.1:$PORT --pid-file="$PF" \
    -- sleep 600 2>"$LOG" &
i=0
until [ "$(cat "$PF" 2>/dev/null)" = 1 ]; do
    i=$((i+1)); [ $i -gt 3000 ] && { echo "no pid file"; exit 1; }; sleep 0.01
done
for mode in --stop --restart --upgrade; do
    "$S" $mode --pid-file="$PF" --status-file="$PF.status" --kill-timeout=1 2>&1
    echo "parent $mode: $?"
done
unshare --pid --fork --mount-proc "$S" --stop --pid-file="$PF" --kill-timeout=1 2>&1
echo "sibling --stop: $?"
flock -n "$PF" true && echo unlocked || echo locked
"#;
    let port = free_port("127.0.0.1").to_string();
    let out_file = dir.path().join("out");
    let mut child = std::process::Command::new("unshare")
        .args([
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child",
            "sh",
            "-c",
        ])
        .arg(script)
        .arg("sh")
        .arg(start_server_bin())
        .args([&pid_file, &log])
        .arg(&port)
        .stdout(std::fs::File::create(&out_file).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status = wait_for("the namespaced scene to finish", || {
        child.try_wait().unwrap()
    });
    let out = std::fs::read_to_string(&out_file).unwrap();
    assert!(status.success(), "{out}");
    let path = pid_file.display();
    let refused = format!("start_server: pid file {path} says pid 1, but its lock is held by pid ");
    assert_eq!(out.matches(&refused).count(), 3, "{out}");
    for mode in ["--stop", "--restart", "--upgrade"] {
        assert!(out.contains(&format!("parent {mode}: 255\n")), "{out}");
    }
    assert!(
        out.contains(&format!(
            "start_server: pid file {path} is locked by a process in a PID namespace this \
             one cannot see: not signalling pid 1"
        )),
        "{out}"
    );
    assert!(out.contains("sibling --stop: 255\n"), "{out}");
    assert!(!out.contains("TERM reached pid 1"), "{out}");
    assert!(!out.contains("stopping now"), "{out}");
    assert!(
        out.ends_with("locked\n") && !out.contains("unlocked"),
        "{out}"
    );
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        !log.contains("received"),
        "the instance was sent nothing: {log}"
    );
}

// ------------------------------------------------------------------ control clients

/// `--restart` and `--upgrade` run by a user the instance does not take requests from
/// (it serves its own user and root) say so at once, naming the uid, rather than
/// waiting 10 s for an answer that never comes.
#[test]
fn a_user_the_instance_refuses_is_told_so_at_once() {
    if !is_root() || !have("setpriv") {
        eprintln!("skipped: needs root and setpriv(1)");
        return;
    }
    let dir = TempDir::new("refused");
    let pid_file = dir.path().join("pid");
    let status = dir.path().join("status");
    let (mut server, _) = Server::start_retrying(
        |port| {
            vec![
                format!("--port=127.0.0.1:{port}"),
                format!("--pid-file={}", pid_file.display()),
                format!("--status-file={}", status.display()),
                "--".into(),
                "sleep".into(),
                "600".into(),
            ]
        },
        &[],
    );
    server.wait_status(&status, &[1]);
    let pid = wait_pid_file(&pid_file);
    for (mode, what) in [("--restart", "a restart"), ("--upgrade", "an upgrade")] {
        let mut client = std::process::Command::new(AS_NOBODY[0]);
        client
            .args(&AS_NOBODY[1..])
            .arg(start_server_bin())
            .arg(mode)
            .arg(format!("--pid-file={}", pid_file.display()));
        if mode == "--restart" {
            client.arg(format!("--status-file={}", status.display()));
        }
        let asked = std::time::Instant::now();
        let out = client.output().unwrap();
        let took = asked.elapsed();
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            said,
            format!(
                "start_server: start_server (pid {pid}) refuses {what} from uid 65534: it \
                 takes requests only from its own user (uid 0) and root\n"
            )
        );
        assert_eq!(out.status.code(), Some(255));
        assert!(took < std::time::Duration::from_secs(5), "{took:?}");
    }
    assert!(!server.has_line("ignored a control request"));
    assert_eq!(server.worker_pids().len(), 1, "nothing restarted");
    server.stop();
}
