//! The examples (C echo and http, static and shared; the Go and Python workers)
//! run as workers under the Perl original, /usr/bin/start_server
//! (PERL_START_SERVER overrides it), and answer on every kind of listener:
//! TCP on 127.0.0.1 and [::1], UDP, and a unix socket. Restarts (SIGHUP) bring a
//! new pid and generation; SIGTERM makes the worker exit 0.
//!
//! Needs `make examples` (the tests say so when its outputs are missing).

use std::net::SocketAddr;
use std::path::PathBuf;

mod common;

use common::*;

fn perl_start_server() -> PathBuf {
    let path = PathBuf::from(
        std::env::var("PERL_START_SERVER").unwrap_or_else(|_| "/usr/bin/start_server".into()),
    );
    assert!(
        path.exists(),
        "{} is missing: install libserver-starter-perl",
        path.display()
    );
    path
}

/// What a worker serves: HTTP on its stream listeners (with UDP echo, or
/// leaving UDP alone), or echo on everything.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Echo,
    HttpNoUdp,
    HttpAndUdpEcho,
}

/// A Perl start_server running `worker` on four listeners.
struct Running {
    server: StartServer,
    tcp4: SocketAddr,
    tcp6: SocketAddr,
    udp: SocketAddr,
    unix: PathBuf,
    _dir: TempDir,
}

/// Starts the Perl start_server on fresh ports; when one of them was taken in
/// the meantime (start_server exits with "failed to bind"), tries new ones.
fn start(tag: &str, worker: &[String], extra_args: &[&str], extra_env: &[(&str, &str)]) -> Running {
    let dir = TempDir::new(tag);
    let unix = dir.path().join("s.sock");
    for attempt in 1..=5 {
        let tcp4: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1", false))
            .parse()
            .unwrap();
        let tcp6: SocketAddr = format!("[::1]:{}", free_port("::1", false))
            .parse()
            .unwrap();
        let udp: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1", true))
            .parse()
            .unwrap();
        let mut args = vec![
            format!("--port={tcp4}"),
            format!("--port={tcp6}"),
            format!("--port=127.0.0.1:u{}", udp.port()),
            format!("--path={}", unix.display()),
        ];
        args.extend(extra_args.iter().map(|s| s.to_string()));
        args.push("--".into());
        args.extend(worker.iter().cloned());
        // Nothing to find the library by: the examples as built find the staged copy
        // themselves (the C ones by their rpath, build/examples/python/worker.py by
        // the path `make examples` wrote into it), as the README runs them.
        let envs: Vec<(&str, String)> =
            extra_env.iter().map(|(k, v)| (*k, v.to_string())).collect();
        let log = dir.path().join(format!("start_server.{attempt}.log"));
        let mut server = StartServer::spawn(&perl_start_server(), &args, &envs, log);
        let started = poll_until("start_server to start a worker or fail", PATIENCE, || {
            if server.log_text().contains("starting new worker") {
                Some(true)
            } else {
                server.try_status().map(|_| false)
            }
        });
        if started {
            return Running {
                server,
                tcp4,
                tcp6,
                udp,
                unix,
                _dir: dir,
            };
        }
        let log = server.log_text();
        assert!(
            log.contains("failed to bind"),
            "start_server {args:?} exited:\n{log}"
        );
    }
    panic!("no free ports after 5 attempts");
}

impl Running {
    fn streams(&self) -> Vec<Target> {
        vec![
            Target::Tcp(self.tcp4),
            Target::Tcp(self.tcp6),
            Target::Unix(self.unix.clone()),
        ]
    }

    /// Checks every listener answers as `kind` says.
    fn check_listeners(&self, kind: Kind) {
        for target in self.streams() {
            match kind {
                Kind::Echo => echo_eventually(&target),
                Kind::HttpNoUdp | Kind::HttpAndUdpEcho => {
                    let body = target.get_eventually();
                    let (pid, generation) =
                        parse_hello(&body).unwrap_or_else(|| panic!("{target:?} said {body:?}"));
                    assert_eq!(generation, 1, "{target:?}");
                    assert_eq!(
                        Some(&pid),
                        self.server.worker_pids().first(),
                        "{target:?}: {body}"
                    );
                }
            }
        }
        if kind != Kind::HttpNoUdp {
            udp_echo_eventually(self.udp, b"datagram");
        }
    }

    /// SIGTERM to start_server: the worker exits 0, and so does start_server.
    fn stop_cleanly(mut self) {
        let pid = *self
            .server
            .worker_pids()
            .last()
            .expect("a worker was started");
        self.server.signal(libc::SIGTERM);
        let status = self.server.wait_exit(PATIENCE);
        let log = self.server.log_text();
        assert!(
            log.contains(&format!("worker {pid} died, status:0\n")),
            "worker {pid} did not exit 0:\n{log}"
        );
        assert!(status.success(), "start_server: {status:?}\n{log}");
    }
}

/// Writes a line and expects the same bytes back, retrying while the worker starts.
fn echo_eventually(target: &Target) {
    use std::io::{Read, Write};
    poll_until(&format!("an echo on {target:?}"), PATIENCE, || {
        let mut s = target.connect().ok()?;
        let line = b"hello, echo\n";
        s.write_all(line).ok()?;
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).ok()?;
        assert_eq!(&buf, line, "{target:?} echoed something else");
        Some(())
    });
}

fn run_example(tag: &str, worker: Vec<String>, kind: Kind) {
    let running = start(tag, &worker, &["--interval=0"], &[]);
    running.check_listeners(kind);
    running.stop_cleanly();
}

fn path_arg(name: &str) -> Vec<String> {
    vec![example(name).display().to_string()]
}

#[test]
fn echo_static_answers_on_every_listener() {
    run_example("echo-st", path_arg("echo-static"), Kind::Echo);
}

#[test]
fn echo_shared_answers_on_every_listener() {
    run_example("echo-sh", path_arg("echo-shared"), Kind::Echo);
}

#[test]
fn http_static_answers_on_every_stream_listener() {
    run_example("http-st", path_arg("http-static"), Kind::HttpNoUdp);
}

#[test]
fn http_shared_answers_on_every_stream_listener() {
    run_example("http-sh", path_arg("http-shared"), Kind::HttpNoUdp);
}

#[test]
fn go_worker_answers_on_every_listener() {
    run_example("go", path_arg("go-worker"), Kind::HttpAndUdpEcho);
}

#[test]
fn python_worker_answers_on_every_listener() {
    let script = example("python/worker.py").display().to_string();
    run_example("py", vec!["python3".into(), script], Kind::HttpAndUdpEcho);
}

/// SIGHUP to start_server: a new worker with generation 2 answers, the old one
/// exits 0 after finishing, and the listeners never stop answering.
#[test]
fn sighup_brings_a_new_http_worker_generation() {
    let running = start("hup", &path_arg("http-static"), &["--interval=0"], &[]);
    let target = Target::Tcp(running.tcp4);
    let (first_pid, first_gen) = parse_hello(&target.get_eventually()).expect("a hello");
    assert_eq!(first_gen, 1);

    running.server.signal(libc::SIGHUP);
    let (second_pid, second_gen) = poll_until("generation 2 to answer", PATIENCE, || {
        let hello = parse_hello(
            &target
                .get()
                .expect("requests keep succeeding during a restart"),
        )?;
        (hello.1 == 2).then_some(hello)
    });
    assert_eq!(second_gen, 2);
    assert_ne!(second_pid, first_pid);
    poll_until(
        &format!("old worker {first_pid} to exit 0"),
        PATIENCE,
        || {
            running
                .server
                .log_text()
                .contains(&format!("old worker {first_pid} died, status:0\n"))
                .then_some(())
        },
    );
    // Every listener now reaches the new worker.
    for target in running.streams() {
        let body = target.get_eventually();
        assert_eq!(parse_hello(&body), Some((second_pid, 2)), "{target:?}");
    }
    running.stop_cleanly();
}

/// Requests in flight when SIGTERM arrives are still answered (the worker holds
/// each answer 300 ms), then the worker exits 0.
#[test]
fn sigterm_lets_http_requests_in_flight_finish() {
    const CLIENTS: usize = 20;
    let running = start(
        "inflight",
        &path_arg("http-static"),
        &["--interval=0"],
        &[("EXAMPLE_RESPONSE_DELAY_MS", "300")],
    );
    let target = Target::Tcp(running.tcp4);
    target.get_eventually(); // the worker is up
    let worker = running.server.worker_pids()[0];
    let open_fds = || {
        std::fs::read_dir(format!("/proc/{worker}/fd"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let baseline = open_fds();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let target = target.clone();
            std::thread::spawn(move || target.get())
        })
        .collect();
    // Stop the worker only once it has accepted every connection: a connection
    // still queued on the listener when the last worker is gone is lost, and
    // that is not what this test is about.
    poll_until("the worker to accept every client", PATIENCE, || {
        (open_fds() >= baseline + CLIENTS).then_some(())
    });
    running.stop_cleanly();
    for c in clients {
        let body = c
            .join()
            .expect("client thread")
            .expect("an in-flight request is answered");
        assert!(parse_hello(&body).is_some(), "{body:?}");
    }
}

/// Reads one response off a keep-alive connection: (its headers, its body).
fn read_response(s: &mut std::net::TcpStream) -> std::io::Result<(String, String)> {
    use std::io::Read;
    let mut data = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).into_owned();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| std::io::Error::other(format!("no Content-Length in {head:?}")))?;
            if data.len() >= end + 4 + length {
                let body = String::from_utf8_lossy(&data[end + 4..end + 4 + length]).into_owned();
                return Ok((head, body));
            }
        }
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::Error::other(format!(
                "connection closed after {} bytes",
                data.len()
            )));
        }
        data.extend_from_slice(&buf[..n]);
    }
}

/// Restarts under load lose no request: 64 keep-alive clients request without
/// pause through two SIGHUPs; every request gets its answer (a client whose
/// answer said "Connection: close" reconnects).
#[test]
fn restarts_under_keep_alive_load_lose_no_request() {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    let running = start("load", &path_arg("http-static"), &["--interval=0"], &[]);
    let addr = running.tcp4;
    Target::Tcp(addr).get_eventually();
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let generations = Arc::new(Mutex::new(std::collections::BTreeSet::new()));
    let clients: Vec<_> = (0..64)
        .map(|_| {
            let (stop, answered, failures, generations) = (
                stop.clone(),
                answered.clone(),
                failures.clone(),
                generations.clone(),
            );
            std::thread::spawn(move || {
                let mut conn: Option<std::net::TcpStream> = None;
                // Bounded even if `stop` never comes.
                let deadline = Instant::now() + PATIENCE;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let result = (|| {
                        if conn.is_none() {
                            let s = std::net::TcpStream::connect(addr)?;
                            s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
                            conn = Some(s);
                        }
                        let s = conn.as_mut().unwrap();
                        s.write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")?;
                        read_response(s)
                    })();
                    match result {
                        Ok((head, body)) => {
                            if head.to_ascii_lowercase().contains("connection: close") {
                                conn = None;
                            }
                            match parse_hello(&body) {
                                Some((_, generation)) => {
                                    generations.lock().unwrap().insert(generation);
                                    answered.fetch_add(1, Ordering::Relaxed);
                                }
                                None => failures.lock().unwrap().push(format!("odd body {body:?}")),
                            }
                        }
                        Err(e) => {
                            conn = None;
                            failures.lock().unwrap().push(e.to_string());
                        }
                    }
                }
            })
        })
        .collect();

    let wait_for_more = |what: &str| {
        let before = answered.load(Ordering::Relaxed);
        poll_until(what, PATIENCE, || {
            (answered.load(Ordering::Relaxed) > before + 500).then_some(())
        });
    };
    wait_for_more("answers before the first restart");
    for generation in 2..=3 {
        running.server.signal(libc::SIGHUP);
        poll_until(
            &format!("generation {generation} to answer"),
            PATIENCE,
            || {
                generations
                    .lock()
                    .unwrap()
                    .contains(&generation)
                    .then_some(())
            },
        );
        wait_for_more("answers after a restart");
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client thread");
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed, e.g. {:?}",
        failures.len(),
        answered.load(Ordering::Relaxed) + failures.len(),
        &failures[..failures.len().min(5)]
    );
    running.stop_cleanly();
}
