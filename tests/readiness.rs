//! `--ready=notify`, `--ready-timeout`, `--watchdog` and `--restart`'s verdicts,
//! through the built binary, with workers that speak sd_notify's protocol
//! (tests/workers/http.pl, `systemd-notify` from Debian's systemd, gunicorn):
//! the old generation is signalled only once the new one said READY=1, a worker
//! never ready is stopped while the old one serves on, and `--restart` returns a
//! verdict instead of hanging.

mod common;
mod support;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::TempDir;
use support::*;

/// start_server with the Perl test worker on a free port, `extra` options before `--`.
fn start(extra: &[&str], env: &[(&str, &str)]) -> (Server, std::net::SocketAddr) {
    start_through(&start_server_bin(), &[], extra, env, &[])
}

/// `start`, with start_server run by `program` (`unshare ...`, which runs the rest of
/// its arguments, `launch`, then start_server's), and the worker by `wrapper` (a
/// command that runs the rest of its arguments, `setpriv ...`).
fn start_through(
    program: &Path,
    launch: &[&str],
    extra: &[&str],
    env: &[(&str, &str)],
    wrapper: &[&str],
) -> (Server, std::net::SocketAddr) {
    let (server, port) = Server::start_program_retrying(
        program,
        |port| {
            let mut args: Vec<String> = launch.iter().map(|s| s.to_string()).collect();
            args.push(format!("--port=127.0.0.1:{port}"));
            args.extend(extra.iter().map(|s| s.to_string()));
            args.push("--".into());
            args.extend(wrapper.iter().map(|s| s.to_string()));
            args.push(perl_worker().display().to_string());
            args
        },
        env,
    );
    (server, addr("127.0.0.1", port))
}

/// A Perl script that sends its second argument to the abstract socket its first
/// names; then, with a third, stays alive until killed (at most a minute).
const SEND: &str = "use Socket; socket(my $s, AF_UNIX, SOCK_DGRAM, 0) or die $!; \
                    send($s, $ARGV[1], 0, pack_sockaddr_un(\"\\0$ARGV[0]\")) or die $!; \
                    sleep 60 if $ARGV[2]";

/// Runs the user nobody's `perl -e script args...`.
fn perl_as_nobody(script: &str, args: &[&str]) -> std::process::Child {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "perl",
            "-e",
        ])
        .arg(script)
        .args(args)
        .spawn()
        .expect("setpriv")
}

/// Waits for a log line holding one of `needles`; returns the one the first such
/// line holds.
fn first_line_of<'a>(server: &Server, needles: &[&'a str]) -> &'a str {
    wait_for(&format!("one of {needles:?} in the log"), || {
        server
            .lines()
            .iter()
            .find_map(|l| needles.iter().copied().find(|n| l.contains(n)))
    })
}

fn arg(name: &str, path: &Path) -> String {
    format!("--{name}={}", path.display())
}

#[test]
fn the_old_generation_is_signalled_only_once_the_new_one_is_ready() {
    // The worker needs 1.5 s to load; the interval alone would declare it started
    // after 1 s, while it does not accept yet.
    let (mut server, addr) = start(
        &["--ready=notify", "--interval=1"],
        &[("READY_DELAY", "1.5")],
    );
    let first = wait_generation(addr, 1);
    let load = Load::start(addr, 4);
    load.wait_more(20);
    let hup = Instant::now();
    server.signal(libc::SIGHUP);
    server.wait_nth_line("starting new worker", 2);
    let running = wait_for("the new generation to be declared running", || {
        // One reading of the log: the lines below come right after this one.
        let alive = pid_alive(first);
        let lines = server.lines();
        if lines
            .iter()
            .any(|l| l.contains("new worker is now running"))
        {
            return Some(hup.elapsed());
        }
        // Until then the old worker is neither signalled nor gone.
        assert!(
            alive,
            "old worker {first} died before the new one was ready"
        );
        assert!(
            !lines.iter().any(|l| l.contains("killing old workers")),
            "{lines:?}"
        );
        None
    });
    assert!(
        running >= Duration::from_millis(1400),
        "declared running {running:?} after the HUP, before its READY=1"
    );
    let second = wait_generation(addr, 2);
    server.wait_line(&format!("old worker {first} died"));
    load.wait_more(20);
    let (generations, failures) = load.finish();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(generations.contains(&1) && generations.contains(&2));
    assert!(server.has_line(&format!("worker {second} status: serving generation 2")));
    server.stop();
}

/// `--ready-timeout=N` for the ready workers of a test to meet on this machine now.
fn ready_timeout() -> (String, u64) {
    let secs = worker_deadline().as_secs();
    (format!("--ready-timeout={secs}"), secs)
}

#[test]
fn a_worker_never_ready_is_stopped_and_retried_while_the_old_one_serves() {
    let dir = TempDir::new("notready");
    let status = dir.path().join("status");
    // Generation 2 never says READY=1, whatever the timeout: the others must.
    let (timeout, secs) = ready_timeout();
    let (mut server, addr) = start(
        &[
            "--ready=notify",
            &timeout,
            "--interval=0.2",
            &arg("status-file", &status),
        ],
        &[("NOT_READY_GENERATIONS", "2")],
    );
    let first = wait_generation(addr, 1);
    server.signal(libc::SIGHUP);
    let line = server.wait_line(&format!("was not ready within {secs} secs, stopping it"));
    let stuck: i32 = line.split_whitespace().nth(2).unwrap().parse().unwrap();
    // Stopped with TERM (the Perl worker exits 0 on it), and never listed.
    server.wait_line(&format!("worker {stuck} died, status:0"));
    assert_eq!(
        http_get(addr).unwrap(),
        (first, 1),
        "the old generation serves on"
    );
    assert!(read_status(&status).iter().all(|&(g, _)| g != 2));
    // The next try is generation 3, which is ready.
    wait_generation(addr, 3);
    assert_eq!(server.wait_status(&status, &[3]).len(), 1);
    server.stop();
}

#[test]
fn extend_timeout_usec_moves_the_deadline() {
    let dir = TempDir::new("extend");
    let status = dir.path().join("status");
    // The worker sends EXTEND_TIMEOUT_USEC as soon as it runs, well within the
    // timeout, then says READY=1 a second more than the timeout later: in time only
    // if the extension (twice that) counts.
    let (timeout, secs) = ready_timeout();
    let delay = secs + 1;
    let extend = (2 * delay * 1_000_000).to_string();
    let (mut server, addr) = start(
        &["--ready=notify", &timeout, &arg("status-file", &status)],
        &[
            ("EXTEND_USEC", &extend),
            ("READY_DELAY", &delay.to_string()),
        ],
    );
    common::poll_until(
        "generation 1 listed, after its delay",
        common::PATIENCE + Duration::from_secs(delay),
        || (read_status(&status).len() == 1).then_some(()),
    );
    wait_generation(addr, 1);
    server.wait_status(&status, &[1]);
    assert!(!server.has_line("not ready"), "{:?}", server.lines());
    server.stop();
}

#[test]
fn ready_from_a_grandchild_counts() {
    let dir = TempDir::new("grandchild");
    let status = dir.path().join("status");
    let (mut server, addr) = start(
        &[
            "--ready=notify",
            "--interval=60",
            &arg("status-file", &status),
        ],
        &[("READY_FROM", "grandchild")],
    );
    let worker = wait_generation(addr, 1);
    server.wait_status(&status, &[1]);
    let line = server.wait_line(&format!("worker {worker} status: ready (from pid "));
    assert!(!line.contains(&format!("from pid {worker})")), "{line}");
    server.stop();
}

#[test]
fn ready_from_outside_the_worker_does_not_count() {
    let dir = TempDir::new("outsider");
    let status = dir.path().join("status");
    let (mut server, addr) = start(
        &[
            "--ready=notify",
            "--ready-timeout=60",
            &arg("status-file", &status),
        ],
        &[("NOT_READY_GENERATIONS", "1")],
    );
    let worker = wait_generation(addr, 1);
    let socket = worker_env(worker, "NOTIFY_SOCKET").expect("the worker's NOTIFY_SOCKET");
    let name = socket.strip_prefix('@').expect("an abstract socket");

    // This test process: same uid, alive, not below the worker.
    send_abstract(name, b"READY=1");
    server.wait_line(&format!(
        "dropped a notification from pid {} for worker {worker}: pid {} is neither the worker nor below it",
        std::process::id(),
        std::process::id()
    ));
    // Another uid, which has exited by the time start_server reads the message.
    if unsafe { libc::geteuid() } == 0 {
        let status = perl_as_nobody(SEND, &[name, "READY=1"]).wait().unwrap();
        assert!(status.success(), "{status}");
        server.wait_line("sent by uid 65534, not start_server's");
    } else {
        eprintln!("skipped the other-uid sender: not root");
    }
    // Malformed and oversized messages are dropped too, and disturb nothing.
    send_abstract(name, b"\xff\xfe");
    send_abstract(name, &[b'x'; 5000]);
    assert!(
        read_status(&status).is_empty(),
        "declared started: {:?}",
        server.lines()
    );
    assert_eq!(http_get(addr).unwrap().0, worker);
    server.stop();
}

fn send_abstract(name: &str, bytes: &[u8]) {
    use std::os::linux::net::SocketAddrExt;
    let to = std::os::unix::net::SocketAddr::from_abstract_name(name).unwrap();
    let socket = UnixDatagram::unbound().unwrap();
    socket.send_to_addr(bytes, &to).unwrap();
}

#[test]
fn watchdog_replaces_a_hung_worker() {
    // A period the pinging workers keep on this machine now (they ping every half).
    let period = worker_deadline();
    let (mut server, addr) = start(
        &[
            "--ready=notify",
            &format!("--watchdog={}", period.as_secs()),
        ],
        &[("HUNG_GENERATIONS", "2")],
    );
    let first = wait_generation(addr, 1);
    assert_eq!(
        worker_env(first, "WATCHDOG_USEC"),
        Some(period.as_micros().to_string())
    );
    // Its own pid, written between fork and exec; start_server's own never passed on.
    assert_eq!(worker_env(first, "WATCHDOG_PID"), Some(first.to_string()));
    server.signal(libc::SIGHUP);
    let hung = wait_generation(addr, 2);
    server.wait_line(&format!(
        "worker {hung} sent no WATCHDOG=1 for {} secs, sending ABRT and restarting",
        period.as_secs()
    ));
    // SIGABRT's raw wait status, as the original logs statuses.
    server.wait_line(&format!("old worker {hung} died, status:{}", libc::SIGABRT));
    let third = wait_generation(addr, 3);
    // The pinging worker outlives several watchdog periods.
    let since = Instant::now();
    common::poll_until("three watchdog periods", period * 4, || {
        (since.elapsed() > period * 3).then_some(())
    });
    assert_eq!(http_get(addr).unwrap(), (third, 3));
    assert!(!server.has_line(&format!("worker {third} sent no WATCHDOG")));
    assert!(!server.has_line(&format!("worker {first} sent no WATCHDOG")));
    server.stop();
}

fn restart(pid_file: &Path, status: &Path) -> (Output, Duration) {
    let begun = Instant::now();
    let out = Command::new(start_server_bin())
        .args([
            "--restart",
            &arg("pid-file", pid_file),
            &arg("status-file", status),
        ])
        .output()
        .expect("start_server --restart");
    (out, begun.elapsed())
}

#[test]
fn restart_gets_a_verdict_in_notify_mode() {
    let dir = TempDir::new("verdict");
    let (pid_file, status) = (dir.path().join("pid"), dir.path().join("status"));
    // Generation 3 exits and generation 5 is never ready, whatever the timeout; the
    // others must be ready within it.
    let (timeout, secs) = ready_timeout();
    let (mut server, addr) = start(
        &[
            "--ready=notify",
            &timeout,
            "--interval=0.2",
            &arg("pid-file", &pid_file),
            &arg("status-file", &status),
        ],
        &[("FAIL_GENERATIONS", "3"), ("NOT_READY_GENERATIONS", "5")],
    );
    wait_generation(addr, 1);
    server.wait_status(&status, &[1]);

    let (out, _) = restart(&pid_file, &status);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        read_status(&status).len(),
        1,
        "runs alone once --restart returns"
    );
    assert_eq!(read_status(&status)[0].0, 2);

    let (out, took) = restart(&pid_file, &status);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        said.contains("restart failed: generation 3: exited with status 3"),
        "{said}"
    );
    // As soon as it failed: not after the next try.
    assert!(took < worker_deadline(), "{took:?}");
    // Generation 2 served throughout; the retry, generation 4, takes over.
    server.wait_status(&status, &[4]);

    let (out, took) = restart(&pid_file, &status);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        said.contains(&format!(
            "restart failed: generation 5: not ready within {secs} secs"
        )),
        "{said}"
    );
    let timeout = Duration::from_secs(secs);
    assert!(
        took >= timeout - Duration::from_millis(100) && took < timeout + worker_deadline(),
        "{took:?}"
    );
    // The old generation serves on: generation 5 was never listed (though it may
    // have answered a request before its TERM: it accepts, it is just never ready),
    // until the next try, generation 6, takes over (an --interval after the last
    // try: on a busy machine, that may be before this test looks).
    let serving = read_status(&status);
    let generations: Vec<u64> = serving.iter().map(|e| e.0).collect();
    assert!(
        !generations.is_empty() && generations.iter().all(|&g| g == 4 || g == 6),
        "{serving:?}"
    );
    if generations == [4] {
        assert!(pid_alive(serving[0].1));
    }
    server.stop();
}

#[test]
fn restart_gets_a_verdict_in_interval_mode() {
    let dir = TempDir::new("verdict-interval");
    let (pid_file, status) = (dir.path().join("pid"), dir.path().join("status"));
    // Generation 2 exits at once: within an interval it surely dies in on this
    // machine now, so that it is a failed start, not a started worker that died.
    let interval = worker_deadline();
    let (mut server, addr) = start(
        &[
            &format!("--interval={}", interval.as_secs()),
            &arg("pid-file", &pid_file),
            &arg("status-file", &status),
        ],
        &[("FAIL_GENERATIONS", "2")],
    );
    wait_generation(addr, 1);
    server.wait_status(&status, &[1]);
    let (out, took) = restart(&pid_file, &status);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        said.contains("restart failed: generation 2: exited with status 3"),
        "{said}"
    );
    assert!(took < interval, "{took:?}");
    let (out, _) = restart(&pid_file, &status);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop();
}

#[test]
fn start_servers_own_notify_socket_never_reaches_a_worker() {
    let dir = TempDir::new("own-notify");
    let manager = dir.path().join("manager.sock");
    let _listening = UnixDatagram::bind(&manager).unwrap();
    let socket = manager.display().to_string();
    for ready in ["--ready=interval", "--ready=notify"] {
        let (mut server, addr) = start(
            &[ready, "--interval=0.1"],
            &[
                ("NOTIFY_SOCKET", &socket),
                ("WATCHDOG_USEC", "1000000"),
                ("WATCHDOG_PID", "1"),
            ],
        );
        let worker = wait_generation(addr, 1);
        let seen = worker_env(worker, "NOTIFY_SOCKET");
        assert_ne!(seen.as_deref(), Some(socket.as_str()), "{ready}");
        assert_eq!(seen.is_some(), ready == "--ready=notify");
        assert_eq!(worker_env(worker, "WATCHDOG_USEC"), None);
        assert_eq!(worker_env(worker, "WATCHDOG_PID"), None);
        server.stop();
    }
}

/// Debian's gunicorn sends READY=1 itself: switched under load with an interval so
/// long that only its notification can explain a prompt switch-over.
#[test]
fn gunicorn_is_switched_at_its_own_readiness_under_load() {
    let gunicorn = PathBuf::from("/usr/bin/gunicorn");
    if !gunicorn.exists() {
        eprintln!("skipped: Debian's gunicorn is not installed (apt-get install gunicorn)");
        return;
    }
    let dir = TempDir::new("gunicorn");
    std::fs::write(
        dir.path().join("app.py"),
        "import os\n\
         def app(environ, start_response):\n\
         \x20   start_response('200 OK', [('Content-Type', 'text/plain')])\n\
         \x20   return [b'hello from pid %d generation %s\\n' % (os.getpid(), os.environ['SERVER_STARTER_GENERATION'].encode())]\n",
    )
    .unwrap();
    let (mut server, port) = Server::start_retrying(
        |port| {
            vec![
                format!("--port=127.0.0.1:{port}"),
                "--ready=notify".into(),
                "--interval=60".into(),
                "--".into(),
                gunicorn.display().to_string(),
                "--bind=fd://3".into(),
                "--workers=2".into(),
                format!("--chdir={}", dir.path().display()),
                "app:app".into(),
            ]
        },
        &[],
    );
    let addr = addr("127.0.0.1", port);
    wait_generation(addr, 1);
    let load = Load::start(addr, 4);
    load.wait_more(50);
    server.signal(libc::SIGHUP);
    server.wait_line("new worker is now running");
    wait_generation(addr, 2);
    load.wait_more(50);
    // A gunicorn told to stop while it still boots its workers boots the missing
    // one anyway and then waits its graceful timeout (30 s) for it: stop it booted.
    server.wait_nth_line("Booting worker with pid", 4);
    let (generations, failures) = load.finish();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(generations.contains(&1) && generations.contains(&2));
    server.stop();
}

fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// This test plays systemd for a `Type=notify-reload` start_server.
#[test]
fn start_server_reports_to_its_service_manager() {
    let dir = TempDir::new("manager");
    let path = dir.path().join("notify.sock");
    let manager = UnixDatagram::bind(&path).unwrap();
    let socket = path.display().to_string();
    // Generation 3 exits at once: within an interval it surely dies in on this
    // machine now, so that the restart fails rather than a started worker dies.
    let interval = format!("--interval={}", worker_deadline().as_secs());
    let (mut server, addr) = start(
        &[&interval],
        &[("NOTIFY_SOCKET", &socket), ("FAIL_GENERATIONS", "3")],
    );
    let first = wait_generation(addr, 1);
    assert_eq!(
        next_message(&manager),
        format!("READY=1\nSTATUS=generation 1 serving (worker {first})")
    );

    let before = monotonic_usec();
    server.signal(libc::SIGHUP);
    let reloading = next_message(&manager);
    let after = monotonic_usec();
    let lines: Vec<&str> = reloading.lines().collect();
    assert_eq!(lines[0], "RELOADING=1", "{reloading}");
    let usec: u64 = lines[1]
        .strip_prefix("MONOTONIC_USEC=")
        .unwrap()
        .parse()
        .unwrap();
    assert!(before <= usec && usec <= after, "{reloading}");
    assert_eq!(lines[2], "STATUS=restarting: starting generation 2");
    let second = wait_generation(addr, 2);
    assert_eq!(
        next_message(&manager),
        format!("READY=1\nSTATUS=generation 2 serving (worker {second})")
    );

    // A failed restart still answers the reload, so that `systemctl reload` returns.
    server.signal(libc::SIGHUP);
    assert!(next_message(&manager).starts_with("RELOADING=1\n"));
    assert_eq!(
        next_message(&manager),
        format!(
            "READY=1\nSTATUS=restart failed: generation 3 exited with status 3; \
             generation 2 serves on (worker {second})"
        )
    );
    let fourth = wait_generation(addr, 4);
    assert_eq!(
        next_message(&manager),
        format!("READY=1\nSTATUS=generation 4 serving (worker {fourth})")
    );
    server.stop();
    assert_eq!(next_message(&manager), "STOPPING=1\nSTATUS=stopping");
}

/// Another process holds the control socket's name before start_server can bind it:
/// start_server says so and runs without, and `--restart`, unanswered by the instance,
/// falls back to SIGHUP and the status file.
#[test]
fn restart_falls_back_when_another_process_took_the_control_socket() {
    let dir = TempDir::new("squatter");
    let (pid_file, status) = (dir.path().join("pid"), dir.path().join("status"));
    // A child binds the name for its parent's pid; the parent then execs start_server.
    let squat = "import os, socket, sys, time\n\
                 r, w = os.pipe()\n\
                 if os.fork() == 0:\n\
                 \x20   s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
                 \x20   s.bind('\\0server_starter/%d/control' % os.getppid())\n\
                 \x20   os.write(w, b'1')\n\
                 \x20   time.sleep(60)\n\
                 \x20   sys.exit(0)\n\
                 os.read(r, 1)\n\
                 os.execv(sys.argv[1], sys.argv[1:])\n";
    let worker = perl_worker().display().to_string();
    let mut server = Server::start_wrapped(
        &["python3", "-c", squat],
        &[
            &arg("pid-file", &pid_file),
            &arg("status-file", &status),
            "--interval=0.2",
            "--",
            &worker,
        ],
        &[],
    );
    server.wait_line("no control socket for --restart");
    server.wait_status(&status, &[1]);
    let (out, took) = restart(&pid_file, &status);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("sending SIGHUP instead"));
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert_eq!(
        read_status(&status).iter().map(|e| e.0).collect::<Vec<_>>(),
        vec![2]
    );
    // The squatter is start_server's child, not a worker: ours to kill, by pid.
    let squatters: Vec<i32> = child_pids(server.pid())
        .into_iter()
        .filter(|&pid| comm(pid).as_deref() == Some("python3"))
        .collect();
    assert_eq!(squatters.len(), 1);
    server.stop();
    signal(squatters[0], libc::SIGKILL);
}

/// A process outside start_server's PID namespace (this test, outside the `unshare
/// --pid` start_server runs in) is given as pid 0 by the kernel: its READY=1 never
/// counts, though it is alive and of start_server's uid.
#[test]
fn ready_from_outside_the_pid_namespace_does_not_count() {
    if let Some(why) = no_pid_namespace() {
        eprintln!("skipping: start_server cannot run in a PID namespace of its own here: {why}");
        return;
    }
    let dir = TempDir::new("pid0");
    let status = dir.path().join("status");
    let bin = start_server_bin().display().to_string();
    let (mut server, addr) = start_through(
        Path::new("unshare"),
        &["--pid", "--fork", "--mount-proc", &bin],
        &[
            "--ready=notify",
            "--ready-timeout=60",
            &arg("status-file", &status),
        ],
        &[("NOT_READY_GENERATIONS", "1")],
        &[],
    );
    let init = namespace_init(&server);
    let line = server.wait_line("starting new worker");
    let inner: i32 = line.rsplit(' ').next().unwrap().parse().unwrap();
    let worker = child_known_as(init, inner);
    let socket = worker_env(worker, "NOTIFY_SOCKET").expect("the worker's NOTIFY_SOCKET");
    send_abstract(socket.strip_prefix('@').unwrap(), b"READY=1");
    let dropped = format!("dropped a notification from pid 0 for worker {inner}: sent from pid 0");
    let said = first_line_of(&server, &[&dropped, "is ready (said pid 0)"]);
    assert_eq!(said, dropped, "{:?}", server.lines());
    assert!(read_status(&status).is_empty(), "{:?}", server.lines());
    assert_eq!(http_get(addr).unwrap().0, inner, "the worker serves on");
    signal(init, libc::SIGTERM);
    assert!(server.wait_exit().success(), "{:?}", server.lines());
}

/// A worker that drops privileges (bound as root, then `setpriv` to nobody, as a
/// server started by root does) says READY=1 as nobody: it counts, as the sender is
/// the worker itself. A live process of nobody's that is not below the worker still
/// does not count.
#[test]
fn a_worker_that_drops_privileges_becomes_ready() {
    if !is_root() {
        eprintln!("skipping: only root can start a worker that drops privileges");
        return;
    }
    let dir = TempDir::new("setpriv");
    let status = dir.path().join("status");
    let (mut server, addr) = start_through(
        &start_server_bin(),
        &[],
        &[
            "--ready=notify",
            "--ready-timeout=60",
            "--interval=0.1",
            &arg("status-file", &status),
        ],
        &[("NOT_READY_GENERATIONS", "2")],
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ],
    );
    let said = first_line_of(
        &server,
        &["status: serving generation 1", "sent by uid 65534"],
    );
    assert_eq!(said, "status: serving generation 1", "{:?}", server.lines());
    let first = server.wait_status(&status, &[1])[0].1;
    let uid = std::fs::read_to_string(format!("/proc/{first}/status")).unwrap();
    assert!(uid.lines().any(|l| l.starts_with("Uid:\t65534")), "{uid}");
    assert_eq!(http_get(addr).unwrap(), (first, 1));

    // Generation 2 is never ready; nobody's process elsewhere says it is.
    server.signal(libc::SIGHUP);
    let line = server.wait_nth_line("starting new worker", 2);
    let second: i32 = line.rsplit(' ').next().unwrap().parse().unwrap();
    let socket = wait_for("generation 2's NOTIFY_SOCKET", || {
        worker_env(second, "NOTIFY_SOCKET")
    });
    let mut outsider = perl_as_nobody(SEND, &[&socket[1..], "READY=1", "stay"]);
    server.wait_line(&format!(
        "dropped a notification from pid {} for worker {second}: sent by uid 65534",
        outsider.id()
    ));
    signal(outsider.id() as i32, libc::SIGKILL);
    outsider.wait().unwrap();
    assert_eq!(
        read_status(&status),
        vec![(1, first)],
        "{:?}",
        server.lines()
    );
    server.stop();
}

/// A worker that says WATCHDOG=trigger right after READY=1 is replaced paced as a
/// failed start (here after 1, then 2 secs), not as fast as it starts, and the log
/// says it was a trigger, not a silent worker.
#[test]
fn a_watchdog_trigger_at_once_is_paced_as_a_failed_start() {
    let (mut server, _) = start(
        &[
            "--ready=notify",
            "--watchdog=10",
            "--interval=1",
            "--backoff=30",
        ],
        &[("TRIGGER_GENERATIONS", "all")],
    );
    let began = Instant::now();
    server.wait_line("failed starts in a row: 2; trying again in 2 secs");
    let spawned = server.count_lines("starting new worker");
    assert_eq!(spawned, 2, "{:?}", server.lines());
    assert!(began.elapsed() >= Duration::from_millis(900));
    assert_eq!(
        server.count_lines("sent WATCHDOG=trigger, sending ABRT and restarting"),
        2
    );
    assert!(
        !server.has_line("sent no WATCHDOG=1"),
        "{:?}",
        server.lines()
    );
    server.stop();
}

/// EXTEND_TIMEOUT_USEC at its maximum (systemd's infinity) survives an upgrade in
/// place: the deadline is saved saturated, not wrapped into the past (which stopped
/// the worker at once as not ready).
#[test]
fn an_infinite_extend_timeout_survives_an_upgrade() {
    let dir = TempDir::new("extend-upgrade");
    let status = dir.path().join("status");
    let (mut server, addr) = start(
        &[
            "--ready=notify",
            "--ready-timeout=0.5",
            &arg("status-file", &status),
        ],
        &[
            ("EXTEND_USEC", "18446744073709551615"),
            ("READY_DELAY", "6"),
        ],
    );
    let spawned = Instant::now();
    // Extended: past --ready-timeout, and not stopped.
    wait_until("--ready-timeout to pass", || {
        spawned.elapsed() > Duration::from_millis(800)
    });
    assert!(!server.has_line("not ready"), "{:?}", server.lines());
    server.signal(libc::SIGUSR2);
    server.wait_line("upgraded from");
    assert!(
        read_status(&status).is_empty(),
        "ready before the upgrade: the test proves nothing"
    );
    let said = first_line_of(&server, &["status: serving generation 1", "not ready"]);
    assert_eq!(said, "status: serving generation 1", "{:?}", server.lines());
    wait_generation(addr, 1);
    server.wait_status(&status, &[1]);
    server.stop();
}

/// This test plays a service manager that never reads its socket, whose queue is
/// full before start_server starts (filled here, so as not to depend on how many
/// datagrams the kernel queues: ten on some, 512 on others): start_server goes on
/// restarting and stops on TERM; its notifications are dropped, and their count
/// logged with the next one that goes through.
#[test]
fn a_service_manager_that_does_not_read_never_blocks_start_server() {
    use std::os::unix::net::UnixDatagram as Datagram;
    let dir = TempDir::new("deaf-manager");
    let path = dir.path().join("notify.sock");
    let manager = Datagram::bind(&path).unwrap();
    // From a fresh socket each time, as start_server sends: the receiver's queue
    // fills, not the sender's buffer.
    let send = || {
        let socket = Datagram::unbound().unwrap();
        socket.set_nonblocking(true).unwrap();
        socket.send_to(b"filler", &path)
    };
    let mut filled = 0;
    while send().is_ok() {
        filled += 1;
        assert!(filled < 100_000, "the manager's queue never fills");
    }
    let (mut server, _) = start(
        &["--interval=0.1"],
        &[("NOTIFY_SOCKET", path.to_str().unwrap())],
    );
    // READY=1, then RELOADING=1 and READY=1 per restart: 7 dropped.
    for restarts in 1..=3 {
        server.signal(libc::SIGHUP);
        server.wait_nth_line("new worker is now running", restarts);
    }
    manager.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    for _ in 0..filled {
        let n = manager.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"filler");
    }
    assert!(
        manager.recv(&mut buf).is_err(),
        "start_server got one through"
    );
    server.stop();
    manager.set_nonblocking(false).unwrap();
    assert_eq!(next_message(&manager), "STOPPING=1\nSTATUS=stopping");
    assert!(
        server.has_line("dropped 7 notifications to the service manager"),
        "{:?}",
        server.lines()
    );
}
