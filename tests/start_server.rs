//! start_server's lifecycle, through the built binary, with real workers (the C http
//! example and a Perl worker using Debian's Server::Starter::server_ports()) on real
//! sockets.

mod common;
mod support;

use std::net::UdpSocket;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use common::{example, TempDir};
use support::*;

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// A HUP under load: the pid and generation change, and no request fails.
fn hup_without_failures(worker: Vec<String>) {
    let dir = TempDir::new("hup");
    let status = dir.path().join("status");
    let (server, port) = Server::start_retrying(
        |port| {
            let mut args = strings(&["--port", &format!("127.0.0.1:{port}"), "--interval=0.3"]);
            args.push(format!("--status-file={}", status.display()));
            args.push("--".into());
            args.extend(worker.iter().cloned());
            args
        },
        &[],
    );
    let addr = addr("127.0.0.1", port);
    let first = wait_generation(addr, 1);
    let load = Load::start(addr, 4);
    wait_until("some requests before the HUP", || {
        load.count.load(Ordering::Relaxed) > 20
    });
    server.signal(libc::SIGHUP);
    let second = wait_generation(addr, 2);
    server.wait_line(&format!("old worker {first} died, status:0"));
    let before = load.count.load(Ordering::Relaxed);
    wait_until("some requests after the restart", || {
        load.count.load(Ordering::Relaxed) > before + 20
    });
    let (generations, failures) = load.finish();

    assert_ne!(first, second);
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        generations.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(generations.contains(&1) && generations.contains(&2));
    assert_eq!(server.wait_status(&status, &[2]), vec![(2, second)]);
    server.wait_line("new worker is now running, sending TERM to old workers:");
}

#[test]
fn hup_replaces_the_c_worker_without_a_failed_request() {
    hup_without_failures(vec![example("http-static").display().to_string()]);
}

#[test]
fn hup_replaces_the_perl_worker_without_a_failed_request() {
    hup_without_failures(vec![perl_worker().display().to_string()]);
}

#[test]
fn failing_starts_leave_the_old_generation_serving() {
    let dir = TempDir::new("fail");
    let status = dir.path().join("status");
    let worker = perl_worker().display().to_string();
    let (server, port) = Server::start_retrying(
        |port| {
            strings(&[
                &format!("--port=127.0.0.1:{port}"),
                "--interval=0.5",
                &format!("--status-file={}", status.display()),
                "--",
                &worker,
            ])
        },
        &[("FAIL_GENERATIONS", "1,3,4")],
    );
    let addr = addr("127.0.0.1", port);
    server.wait_line("seems to have failed to start, exit status:768");
    let second = wait_generation(addr, 2);
    assert_eq!(server.wait_status(&status, &[2]), vec![(2, second)]);

    server.signal(libc::SIGHUP);
    server.wait_nth_line("seems to have failed to start", 2);
    // Generation 3 failed: generation 2 still answers while 4 is tried.
    assert_eq!(http_get(addr).unwrap(), (second, 2));
    server.wait_nth_line("seems to have failed to start", 3);
    assert_eq!(http_get(addr).unwrap(), (second, 2));
    let fifth = wait_generation(addr, 5);
    server.wait_line(&format!("old worker {second} died, status:0"));
    assert_eq!(server.wait_status(&status, &[5]), vec![(5, fifth)]);
    assert_eq!(server.worker_pids().len(), 5, "one spawn per generation");
}

#[test]
fn signal_on_hup_usr1() {
    let worker = perl_worker().display().to_string();
    let (server, port) = Server::start_retrying(
        |port| {
            strings(&[
                &format!("--port=127.0.0.1:{port}"),
                "--interval=0.2",
                "--signal-on-hup=usr1",
                "--",
                &worker,
            ])
        },
        &[],
    );
    let addr = addr("127.0.0.1", port);
    let first = wait_generation(addr, 1);
    server.signal(libc::SIGHUP);
    server.wait_line(&format!(
        "new worker is now running, sending USR1 to old workers:{first}"
    ));
    // The Perl worker exits 42 on USR1 (and 0 on TERM): 42 << 8.
    server.wait_line(&format!("old worker {first} died, status:10752"));
    wait_generation(addr, 2);
}

#[test]
fn unix_socket_serves_and_is_removed_at_exit() {
    let dir = TempDir::new("unix");
    let sock = dir.path().join("app.sock");
    let mut server = Server::start(&[
        &format!("--path={}", sock.display()),
        "--interval=0.2",
        "--",
        &example("http-static").display().to_string(),
    ]);
    let (pid, generation) = wait_for("an answer on the unix socket", || http_get_unix(&sock).ok());
    assert_eq!(generation, 1);
    server.signal(libc::SIGHUP);
    wait_for("generation 2 on the unix socket", || {
        http_get_unix(&sock).ok().filter(|a| a.1 == 2)
    });
    server.wait_line(&format!("old worker {pid} died, status:0"));
    server.stop();
    assert!(!sock.exists(), "the socket file is removed at exit");
}

#[test]
fn stale_unix_socket_is_replaced_live_one_and_plain_file_are_refused() {
    let dir = TempDir::new("stale");
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let server = Server::start(&[&format!("--path={}", stale.display()), "--", "sleep", "60"]);
    server.wait_line(&format!(
        "removing existing socket file:{}",
        stale.display()
    ));
    server.wait_line("starting new worker");
    drop(server);

    let live = dir.path().join("live.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&live).unwrap();
    let mut server = Server::start(&[&format!("--path={}", live.display()), "--", "sleep", "60"]);
    assert!(!server.wait_exit().success());
    assert!(
        server.has_line("another process is accepting connections on it"),
        "{:?}",
        server.lines()
    );
    assert!(live.exists());

    let plain = dir.path().join("data.txt");
    std::fs::write(&plain, "precious").unwrap();
    let mut server = Server::start(&[&format!("--path={}", plain.display()), "--", "sleep", "60"]);
    assert!(!server.wait_exit().success());
    assert!(server.has_line(&format!(
        "{}: the file exists and is not a socket",
        plain.display()
    )));
    assert_eq!(std::fs::read_to_string(&plain).unwrap(), "precious");
    assert!(!server.has_line("starting new worker"));
}

#[test]
fn udp_and_ipv6_and_every_listener_reach_the_worker() {
    let dir = TempDir::new("udp");
    let log = dir.path().join("worker.log");
    let v6 = free_port("::1");
    let (server, port) = Server::start_retrying(
        |port| {
            strings(&[
                &format!("--port=127.0.0.1:{port}"),
                &format!("--port=127.0.0.1:u{port}"),
                &format!("--port=[::1]:{v6}"),
                "--interval=0.2",
                "--",
                &example("echo-static").display().to_string(),
            ])
        },
        &[("WORKER_LOG", log.to_str().unwrap())],
    );
    server.wait_line("starting new worker");
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let echoed = wait_for("a UDP echo", || {
        udp.send_to(b"ping", ("127.0.0.1", port)).ok()?;
        let mut buf = [0u8; 16];
        let n = udp.recv(&mut buf).ok()?;
        Some(buf[..n].to_vec())
    });
    assert_eq!(echoed, b"ping");
    for target in [addr("127.0.0.1", port), addr("::1", v6)] {
        let reply = wait_for("a TCP echo", || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(target).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            s.write_all(b"hello\n").ok()?;
            let mut buf = [0u8; 6];
            s.read_exact(&mut buf).ok()?;
            Some(buf)
        });
        assert_eq!(&reply, b"hello\n", "{target}");
    }
}

#[test]
fn environment_names_every_listener_as_the_original_does() {
    let dir = TempDir::new("env");
    let log = dir.path().join("worker.log");
    let sock = dir.path().join("s.sock");
    let v6 = free_port("::1");
    let (server, port) = Server::start_retrying(
        |port| {
            strings(&[
                &format!("--port=127.0.0.1:{port}"),
                &format!("--port=u{port}"),
                &format!("--port=[::1]:{v6}"),
                &format!("--path={}", sock.display()),
                &format!("--dir={}", dir.path().display()),
                "--interval=0.1",
                "--",
                &perl_worker().display().to_string(),
            ])
        },
        &[("WORKER_LOG", log.to_str().unwrap())],
    );
    let line = wait_for("the worker's report", || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|s| s.ends_with('\n'))
    });
    let expected = format!(
        "port=127.0.0.1:{port}=3;{port}=4;[::1]:{v6}=5;{}=6",
        sock.display()
    );
    assert!(line.contains(&expected), "{line} lacks {expected}");
    assert!(line.starts_with("generation=1 "), "{line}");
    // --dir, no signal left blocked, and only the listening sockets beyond what the
    // test itself passed down.
    assert!(
        line.contains(&format!("cwd={} ", dir.path().display())),
        "{line}"
    );
    assert!(line.contains("sigblk=0000000000000000"), "{line}");
    // Beyond stdio and the four sockets, the worker may hold only what the test
    // process itself passed down to start_server (same descriptor, same file).
    let fds = line.trim_end().split(" fds=").nth(1).unwrap();
    for entry in fds.split(' ') {
        let (fd, target) = entry.split_once('>').unwrap();
        let fd: i32 = fd.parse().unwrap();
        if (3..=6).contains(&fd) {
            assert!(target.starts_with("socket:"), "{entry}");
        } else if fd > 6 {
            let ours = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok();
            assert_eq!(
                ours.as_deref().and_then(|p| p.to_str()),
                Some(target),
                "worker inherited {entry}: {line}"
            );
        }
    }
    drop(server);
}

/// Starts a Perl worker on a socket pinned at `fd` (with `extra` arguments before the
/// `--port`), and checks that the worker found it there and serves on it.
fn start_pinned(dir: &TempDir, fd: i32, extra: &[&str]) -> Server {
    let log = dir.path().join("worker.log");
    let (server, port) = Server::start_retrying(
        |port| {
            let mut args = strings(extra);
            args.extend(strings(&[
                &format!("--port=127.0.0.1:{port}={fd}"),
                "--interval=0.1",
                "--",
                &perl_worker().display().to_string(),
            ]));
            args
        },
        &[("WORKER_LOG", log.to_str().unwrap())],
    );
    server.wait_line(&format!("socket is duplicated to file descriptor {fd}"));
    let line = wait_for("the worker's report", || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|s| s.ends_with('\n'))
    });
    assert!(
        line.contains(&format!("port=127.0.0.1:{port}={fd} ")),
        "{line}"
    );
    assert_eq!(
        wait_generation(addr("127.0.0.1", port), 1),
        server.worker_pids()[0]
    );
    server
}

#[test]
fn socket_pinned_at_fd_0() {
    start_pinned(&TempDir::new("fd0"), 0, &[]);
}

#[test]
fn term_stops_every_worker_and_cleans_up() {
    let dir = TempDir::new("term");
    let status = dir.path().join("status");
    let sock = dir.path().join("s.sock");
    let mut server = Server::start(&[
        &format!("--path={}", sock.display()),
        &format!("--status-file={}", status.display()),
        "--interval=0.1",
        "--signal-on-term=INT",
        "--",
        "sh",
        "-c",
        "trap 'exit 7' INT; while :; do sleep 0.05; done",
    ]);
    let entries = server.wait_status(&status, &[1]);
    server.stop();
    let pid = entries[0].1;
    assert!(
        server.has_line(&format!("received TERM, sending INT to all workers:{pid}")),
        "{:?}",
        server.lines()
    );
    assert!(
        server.has_line(&format!("worker {pid} died, status:1792")),
        "{:?}",
        server.lines()
    );
    assert_eq!(server.lines().last().map(String::as_str), Some("exiting"));
    assert!(!status.exists() && !sock.exists());
    assert!(!pid_alive(pid));
}

#[test]
fn int_sends_term() {
    let mut server = Server::start(&[
        "--interval=0.1",
        "--signal-on-term=USR1",
        "--",
        "sleep",
        "60",
    ]);
    server.wait_line("starting new worker");
    let pid = server.worker_pids()[0];
    server.signal(libc::SIGINT);
    assert!(server.wait_exit().success());
    assert!(
        server.has_line(&format!("received INT, sending TERM to all workers:{pid}")),
        "{:?}",
        server.lines()
    );
    assert!(server.has_line(&format!("worker {pid} died, status:15")));
}

#[test]
fn term_during_the_interval_is_acted_on_at_once() {
    let mut server = Server::start(&["--interval=60", "--", "sleep", "600"]);
    server.wait_line("starting new worker");
    let sent = Instant::now();
    server.stop();
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "took {:?}",
        sent.elapsed()
    );
}

#[test]
fn term_during_the_kill_old_delay_is_acted_on_at_once() {
    let mut server = Server::start(&[
        "--interval=0.1",
        "--kill-old-delay=60",
        "--",
        "sleep",
        "600",
    ]);
    server.wait_line("starting new worker");
    server.signal(libc::SIGHUP);
    server.wait_line("sleeping 60 secs before killing old workers");
    let pids = server.worker_pids();
    server.stop();
    for pid in pids {
        assert!(!pid_alive(pid));
    }
}

#[test]
fn hups_during_a_start_coalesce_into_one_restart() {
    let dir = TempDir::new("coalesce");
    let status = dir.path().join("status");
    let server = Server::start(&[
        "--interval=0.5",
        &format!("--status-file={}", status.display()),
        "--",
        "sleep",
        "600",
    ]);
    server.wait_status(&status, &[1]);
    server.signal(libc::SIGHUP);
    server.wait_line("received HUP, spawning a new worker");
    for _ in 0..5 {
        server.signal(libc::SIGHUP);
        thread::sleep(Duration::from_millis(20));
    }
    server.wait_status(&status, &[3]);
    // Gen 3 started: one restart for the five HUPs sent during gen 2's start.
    thread::sleep(Duration::from_millis(800));
    assert_eq!(
        server.count_lines("received HUP, spawning a new worker"),
        2,
        "{:?}",
        server.lines()
    );
    assert_eq!(read_status(&status).len(), 1);
}

#[test]
fn a_worker_that_dies_is_restarted() {
    let dir = TempDir::new("respawn");
    let status = dir.path().join("status");
    let server = Server::start(&[
        "--interval=0.1",
        &format!("--status-file={}", status.display()),
        "--",
        "sleep",
        "600",
    ]);
    let first = server.wait_status(&status, &[1])[0].1;
    signal(first, libc::SIGKILL);
    server.wait_line(&format!(
        "worker {first} died unexpectedly with status:9, restarting"
    ));
    let second = server.wait_status(&status, &[2])[0].1;
    assert_ne!(first, second);
}

/// At generation 1, a command that cannot be executed is an error (retried only at
/// later generations: tests/exit_status.rs).
#[test]
fn exec_failure_is_reported() {
    for command in ["/nonexistent/server-prog", "no-such-command-anywhere"] {
        let mut server = Server::start(&["--interval=0.1", "--", command, "arg"]);
        server.wait_line(&format!(
            "start_server: failed to exec {command}: No such file or directory"
        ));
        assert_eq!(server.wait_exit().code(), Some(255), "{:?}", server.lines());
    }
}

#[test]
fn path_lookup_and_zero_interval() {
    let dir = TempDir::new("path");
    let status = dir.path().join("status");
    let mut server = Server::start(&[
        "--interval=0",
        &format!("--status-file={}", status.display()),
        "--",
        "sleep",
        "600",
    ]);
    server.wait_status(&status, &[1]);
    server.signal(libc::SIGHUP);
    server.wait_status(&status, &[2]);
    server.stop();
}

/// A signal mask or set of /proc/PID/status (`SigBlk:`, `SigIgn:`) as bits, signal N
/// at bit N-1.
fn sigset(status: &str, field: &str) -> u64 {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field} in {status}"));
    u64::from_str_radix(hex.trim(), 16).unwrap()
}

fn bit(sig: i32) -> u64 {
    1 << (sig - 1)
}

#[test]
fn worker_starts_with_default_signal_dispositions_and_mask() {
    // cat reports what it inherited, on the log (start_server's stdout).
    let server = Server::start(&["--interval=5", "--", "cat", "/proc/self/status"]);
    let worker = wait_for("cat's report", || {
        let text = server.lines().join("\n");
        text.contains("SigCgt:").then_some(text)
    });
    // start_server itself blocks every signal it reads from its signalfd (the
    // real-time ones too, 32 to 34 included, which libc refuses to block) and ignores
    // PIPE and XFSZ: the worker's clean slate is a reset, not an inheritance.
    let own = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    let blocked = sigset(&own, "SigBlk:");
    let handled = [
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGTRAP,
        libc::SIGABRT,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGALRM,
        libc::SIGTERM,
        libc::SIGSTKFLT,
        libc::SIGCHLD,
        libc::SIGXCPU,
        libc::SIGVTALRM,
        libc::SIGPROF,
        libc::SIGIO,
        libc::SIGPWR,
        libc::SIGSYS,
    ];
    for sig in handled.into_iter().chain(32..=64) {
        assert!(
            blocked & bit(sig) != 0,
            "signal {sig} not blocked: {blocked:016x}"
        );
    }
    let ignored = sigset(&own, "SigIgn:");
    for sig in [libc::SIGPIPE, libc::SIGXFSZ] {
        assert!(
            ignored & bit(sig) != 0,
            "signal {sig} not ignored: {ignored:016x}"
        );
    }

    assert_eq!(sigset(&worker, "SigBlk:"), 0, "{worker}");
    assert_eq!(sigset(&worker, "SigIgn:"), 0, "{worker}");
}

/// The shipped binary, as `make bin` builds it.
fn release_binary() -> std::path::PathBuf {
    common::artifact(
        "target/x86_64-unknown-linux-musl/release/start_server",
        "make bin",
    )
}

/// The shipped binary's budget: 700 KB with every feature. A plain `cargo build` of it
/// keeps std's backtrace symbolizer and does not fit (DESIGN.md, "Size").
#[test]
fn release_binary_fits_its_size_budget() {
    const BUDGET: u64 = 700 * 1024;
    let bin = release_binary();
    let size = std::fs::metadata(&bin).unwrap().len();
    assert!(
        size <= BUDGET,
        "{} is {size} bytes, over the budget of {BUDGET}: build it with `make bin`, and \
         see DESIGN.md, \"Size\", for where the bytes go",
        bin.display()
    );
}

/// The shipped binary (what `make` builds) needs nothing from the host: it runs alone in
/// an empty root, as in a `FROM scratch` container.
#[test]
fn release_binary_is_static_and_runs_in_an_empty_root() {
    let bin = release_binary();
    let file = std::process::Command::new("file")
        .arg(&bin)
        .output()
        .expect("run file(1)");
    let file = String::from_utf8_lossy(&file.stdout);
    assert!(file.contains("statically linked"), "{file}");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let root = TempDir::new("scratch");
        std::fs::copy(&bin, root.path().join("start_server")).unwrap();
        // chroot execs start_server: the pid is start_server's.
        let mut child = std::process::Command::new("chroot")
            .arg(root.path())
            .args([
                "/start_server",
                "--port=127.0.0.1:0",
                "--interval=0.2",
                "--",
                "/no-such-server",
            ])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run chroot");
        let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut seen = Vec::new();
        // Bounded, should start_server retry: each failed start logs two lines.
        for line in std::io::BufRead::lines(stderr).take(20) {
            let line = line.unwrap();
            let done = line.contains("failed to exec /no-such-server: No such file or directory");
            seen.push(line);
            if done {
                break;
            }
        }
        // A command that cannot be executed at generation 1 ends start_server; TERM in
        // case it did not.
        signal(child.id() as i32, libc::SIGTERM);
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(255), "{status:?}: {seen:?}");
        assert!(
            seen.iter()
                .any(|l| l.contains("failed to exec /no-such-server")),
            "{seen:?}"
        );
    }
}

/// Binding a privileged port without the privilege: a clear error, nothing spawned.
#[test]
fn permission_denied_is_reported_before_anything_is_spawned() {
    // SAFETY: geteuid has no preconditions.
    let as_root = unsafe { libc::geteuid() } == 0;
    let mut cmd = if as_root {
        let mut cmd = std::process::Command::new("setpriv");
        cmd.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--",
        ]);
        cmd.arg(start_server_bin());
        cmd
    } else {
        std::process::Command::new(start_server_bin())
    };
    let out = cmd
        .args(["--port=127.0.0.1:81", "--", "sleep", "60"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{stderr}");
    assert!(
        stderr.contains("failed to bind to 127.0.0.1:81: Permission denied"),
        "{stderr}"
    );
    assert!(!stderr.contains("starting new worker"), "{stderr}");
}

/// `=fd` naming the lowest free descriptor, with a pid file that start_server opens
/// before it binds: the pinned number is held for the socket from the start, so the
/// pid file lands elsewhere and stays locked.
#[test]
fn socket_pinned_at_the_lowest_free_descriptor() {
    let dir = TempDir::new("fd3");
    let pid_arg = format!("--pid-file={}", dir.path().join("pid").display());
    let mut server = start_pinned(&dir, 3, &[&pid_arg]);
    // The pid file kept its lock: a second instance on it is refused.
    let second = std::process::Command::new(start_server_bin())
        .args([&pid_arg, "--", "true"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        !second.status.success()
            && stderr.contains(&format!("already running (pid {})", server.pid())),
        "{stderr}"
    );
    server.stop();
}

/// The original catches ALRM and carries on; so do we (it must not kill start_server
/// and orphan the workers).
#[test]
fn alrm_is_ignored() {
    let dir = TempDir::new("alrm");
    let status = dir.path().join("status");
    let mut server = Server::start(&[
        "--interval=0.1",
        &format!("--status-file={}", status.display()),
        "--",
        "sleep",
        "60",
    ]);
    server.wait_status(&status, &[1]);
    server.signal(libc::SIGALRM);
    // Signals are taken in order: the HUP is acted on only if the ALRM was survived.
    server.signal(libc::SIGHUP);
    server.wait_status(&status, &[2]);
    assert!(server.try_exit().is_none(), "{:?}", server.lines());
    server.stop();
}
