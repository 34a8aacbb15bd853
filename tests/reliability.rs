//! start_server under stress and in awkward situations, through the built binary: no
//! request dropped across twenty restarts under load (TCP and unix socket), a storm of
//! SIGHUPs that must leave no worker, zombie, descriptor or memory behind, a crash
//! loop that must be paced and cheap, and workers that ignore TERM, die early, fork
//! children of their own, or outlive a SIGKILLed start_server.
//!
//! The figures each test measures are printed on stderr (`cargo test -- --nocapture`).

mod common;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{example, parse_hello, ReadWrite, Target, TempDir};
use support::*;

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

// ------------------------------------------------------------------ /proc

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn vm_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// The pids of the last log line starting with `prefix` and ending in a pid list.
fn pid_list(line: &str) -> BTreeSet<i32> {
    line.rsplit(':')
        .next()
        .unwrap()
        .split(',')
        .filter_map(|p| p.trim().parse().ok())
        .collect()
}

// ------------------------------------------------------------------ load client

/// A response read from a keep-alive connection: the body, and whether the server
/// closes the connection after it.
struct Response {
    body: String,
    close: bool,
}

/// One HTTP/1.1 request on `conn`. On error, also how many bytes of the response had
/// arrived: none, on a reused keep-alive connection, is the race every HTTP client
/// meets (the server closed the idle connection as the request left) and retries.
fn request(conn: &mut dyn ReadWrite, keep_alive: bool) -> Result<Response, (usize, io::Error)> {
    let req: &[u8] = if keep_alive {
        b"GET / HTTP/1.1\r\nHost: test\r\n\r\n"
    } else {
        b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    };
    conn.write_all(req).map_err(|e| (0, e))?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        match conn.read(&mut chunk) {
            Ok(0) => {
                return Err((
                    buf.len(),
                    io::Error::new(io::ErrorKind::UnexpectedEof, "EOF in the head"),
                ))
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err((buf.len(), e)),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        return Err((buf.len(), io::Error::other(format!("status: {head:?}"))));
    }
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    let length: usize = header("content-length:")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            (
                buf.len(),
                io::Error::other(format!("no content-length: {head:?}")),
            )
        })?;
    while buf.len() < head_end + length {
        match conn.read(&mut chunk) {
            Ok(0) => {
                return Err((
                    buf.len(),
                    io::Error::new(io::ErrorKind::UnexpectedEof, "EOF in the body"),
                ))
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err((buf.len(), e)),
        }
    }
    if buf.len() > head_end + length {
        return Err((buf.len(), io::Error::other("bytes after the response")));
    }
    let body = String::from_utf8_lossy(&buf[head_end..]).into_owned();
    let close = !keep_alive || header("connection:").is_some_and(|v| v.contains("close"));
    Ok(Response { body, close })
}

#[derive(Default)]
struct Tally {
    /// Answers by generation.
    by_generation: BTreeMap<u64, usize>,
    failures: Vec<String>,
    /// Keep-alive connections the server had closed when a request was sent on them.
    stale_retries: usize,
    connections: usize,
}

/// Client threads requesting until stopped: half keep their connection alive, half
/// open one per request.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
    tally: Arc<Mutex<Tally>>,
    count: Arc<AtomicUsize>,
}

impl Load {
    fn start(target: Target, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let count = Arc::new(AtomicUsize::new(0));
        let threads = (0..threads)
            .map(|i| {
                let (stop, tally, count, target) =
                    (stop.clone(), tally.clone(), count.clone(), target.clone());
                thread::spawn(move || client(&target, i % 2 == 0, &stop, &tally, &count))
            })
            .collect();
        Load {
            stop,
            threads,
            tally,
            count,
        }
    }

    fn served_by(&self, generation: u64) -> usize {
        self.tally
            .lock()
            .unwrap()
            .by_generation
            .get(&generation)
            .copied()
            .unwrap_or(0)
    }

    fn finish(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        Arc::try_unwrap(self.tally)
            .ok()
            .unwrap()
            .into_inner()
            .unwrap()
    }
}

fn client(
    target: &Target,
    keep_alive: bool,
    stop: &AtomicBool,
    tally: &Mutex<Tally>,
    count: &AtomicUsize,
) {
    let mut conn: Option<Box<dyn ReadWrite>> = None;
    let mut reused = false;
    while !stop.load(Ordering::Relaxed) {
        if conn.is_none() {
            match target.connect() {
                Ok(c) => {
                    conn = Some(c);
                    reused = false;
                    tally.lock().unwrap().connections += 1;
                }
                Err(e) => {
                    tally.lock().unwrap().failures.push(format!("connect: {e}"));
                    count.fetch_add(1, Ordering::Relaxed);
                    thread::sleep(Duration::from_millis(5));
                    continue;
                }
            }
        }
        let result = request(conn.as_mut().unwrap().as_mut(), keep_alive);
        match result {
            Ok(response) => {
                let mut t = tally.lock().unwrap();
                match parse_hello(&response.body) {
                    Some((_, generation)) => {
                        *t.by_generation.entry(generation as u64).or_default() += 1
                    }
                    None => t.failures.push(format!("bad body {:?}", response.body)),
                }
                drop(t);
                if response.close {
                    conn = None;
                } else {
                    reused = true;
                }
            }
            Err((0, _)) if reused => {
                tally.lock().unwrap().stale_retries += 1;
                conn = None;
                continue; // the same request again, on a new connection: not counted
            }
            Err((received, e)) => {
                let what = if reused { "reused" } else { "fresh" };
                tally
                    .lock()
                    .unwrap()
                    .failures
                    .push(format!("{what} connection, {received} bytes received: {e}"));
                conn = None;
            }
        }
        count.fetch_add(1, Ordering::Relaxed);
        // Paced: enough to meet every generation, not so much as to starve the tests
        // running alongside (and a one-shot client spends a port on each request).
        thread::sleep(Duration::from_millis(if keep_alive { 1 } else { 2 }));
    }
}

// ------------------------------------------------------------------ 1. zero drops

const RESTARTS: u64 = 20;
const CLIENTS: usize = 16;

fn zero_drops(server: &mut Server, target: Target, status: &Path, label: &str) {
    let started = Instant::now();
    wait_for("generation 1 to answer", || target.get().ok());
    let load = Load::start(target.clone(), CLIENTS);
    wait_until("the load to be served by generation 1", || {
        load.served_by(1) > 0
    });
    // How long each new generation took to serve the load, after its HUP.
    let mut latencies = Vec::new();
    for generation in 2..=RESTARTS + 1 {
        let sent = Instant::now();
        server.signal(libc::SIGHUP);
        wait_until(
            &format!("the load to be served by generation {generation}"),
            || load.served_by(generation) > 0,
        );
        latencies.push(sent.elapsed());
    }
    let slowest = latencies.iter().max().unwrap();
    let median = {
        let mut sorted = latencies.clone();
        sorted.sort();
        sorted[sorted.len() / 2]
    };
    let last = RESTARTS + 1;
    server.wait_status(status, &[last]);
    let before = load.count.load(Ordering::Relaxed);
    wait_until("more requests after the last restart", || {
        load.count.load(Ordering::Relaxed) > before + 200
    });
    let tally = load.finish();
    let total: usize = tally.by_generation.values().sum();
    eprintln!(
        "zero drops ({label}): HUP to first answer of the new generation: median {median:?}, slowest {slowest:?}; \
         {total} requests answered over {} connections by {} generations in {:?}, \
         {} failed, {} keep-alive connections closed by the server under a request (retried); by generation: {:?}",
        tally.connections,
        tally.by_generation.len(),
        started.elapsed(),
        tally.failures.len(),
        tally.stale_retries,
        tally.by_generation
    );
    assert!(
        tally.failures.is_empty(),
        "{} of {} requests failed: {:?}",
        tally.failures.len(),
        total + tally.failures.len(),
        &tally.failures[..tally.failures.len().min(10)]
    );
    let generations: Vec<u64> = tally.by_generation.keys().copied().collect();
    assert_eq!(
        generations,
        (1..=last).collect::<Vec<_>>(),
        "every generation served, none other"
    );
    assert_eq!(
        server.count_lines("received HUP, spawning a new worker"),
        RESTARTS as usize
    );
    assert!(!server.has_line("failed"), "{:?}", server.lines());
    server.stop();
}

#[test]
fn twenty_restarts_under_load_drop_no_request_tcp() {
    let dir = TempDir::new("zd-tcp");
    let status = dir.path().join("status");
    let http = example("http-static").display().to_string();
    let (mut server, port) = Server::start_retrying(
        |port| {
            strings(&[
                &format!("--port=127.0.0.1:{port}"),
                "--interval=0.1",
                &format!("--status-file={}", status.display()),
                "--",
                &http,
            ])
        },
        &[],
    );
    zero_drops(
        &mut server,
        Target::Tcp(addr("127.0.0.1", port)),
        &status,
        "tcp",
    );
}

#[test]
fn twenty_restarts_under_load_drop_no_request_unix() {
    let dir = TempDir::new("zd-unix");
    let status = dir.path().join("status");
    let sock = dir.path().join("http.sock");
    let mut server = Server::start(&[
        &format!("--path={}", sock.display()),
        "--interval=0.1",
        &format!("--status-file={}", status.display()),
        "--",
        &example("http-static").display().to_string(),
    ]);
    zero_drops(&mut server, Target::Unix(sock.clone()), &status, "unix");
    assert!(!sock.exists());
}

// ------------------------------------------------------------------ 2. HUP storm

/// Waits until start_server is at rest: one worker in the status file, that worker its
/// only child, no zombie, and no spawn for a while. Returns (generation, pid).
fn settled(server: &Server, status: &Path) -> (u64, i32) {
    // Quiet for long enough that a spawn still to come would have been logged: a
    // spawn's cost on this machine now, measured, with room for a busy moment.
    let quiet = Duration::from_millis(600).max(failing_worker_latency(3) * 20);
    let mut quiet_since = (server.count_lines("starting new worker"), Instant::now());
    wait_for("start_server to settle with one worker", || {
        let spawns = server.count_lines("starting new worker");
        if spawns != quiet_since.0 {
            quiet_since = (spawns, Instant::now());
            return None;
        }
        let entries = read_status(status);
        let kids = children(server.pid());
        let settled = entries.len() == 1
            && kids.len() == 1
            && kids[0].0 == entries[0].1
            && kids[0].1 != 'Z'
            && quiet_since.1.elapsed() > quiet;
        settled.then(|| entries[0])
    })
}

#[test]
fn hup_storm_settles_on_one_worker_and_leaks_nothing() {
    let dir = TempDir::new("storm");
    let status = dir.path().join("status");
    let http = example("http-static").display().to_string();
    let (mut server, port) = Server::start_retrying(
        |port| {
            strings(&[
                &format!("--port=127.0.0.1:{port}"),
                "--interval=0.1",
                &format!("--status-file={}", status.display()),
                "--",
                &http,
            ])
        },
        &[],
    );
    let pid = server.pid();
    let addr = addr("127.0.0.1", port);
    server.wait_status(&status, &[1]);
    // A first restart, so that whatever start_server allocates once for one is counted
    // in the baseline.
    server.signal(libc::SIGHUP);
    server.wait_status(&status, &[2]);
    let (generation, worker) = settled(&server, &status);
    assert_eq!(wait_generation(addr, generation), worker);
    let (fds_before, rss_before) = (fd_count(pid), vm_rss_kib(pid));
    let spawns_before = server.count_lines("starting new worker");

    let storm = Instant::now();
    for _ in 0..200 {
        server.signal(libc::SIGHUP);
        thread::sleep(Duration::from_millis(4));
    }
    let storm_took = storm.elapsed();
    // Some restart comes of it, however late start_server gets to read the storm.
    server.wait_nth_line("starting new worker", spawns_before + 1);
    let (generation, worker) = settled(&server, &status);
    let (fds_after, rss_after) = (fd_count(pid), vm_rss_kib(pid));
    let spawns = server.count_lines("starting new worker") - spawns_before;
    eprintln!(
        "HUP storm: 200 SIGHUPs in {storm_took:?} -> {spawns} spawns, settled on generation {generation} (pid {worker}); \
         start_server fds {fds_before} -> {fds_after}, VmRSS {rss_before} KiB -> {rss_after} KiB"
    );
    assert!(
        storm_took < Duration::from_millis(1500),
        "the storm took {storm_took:?}"
    );
    assert!(spawns >= 1, "the storm caused no restart");
    assert_eq!(read_status(&status), vec![(generation, worker)]);
    let kids = children(pid);
    assert_eq!(
        kids.iter().map(|c| c.0).collect::<Vec<_>>(),
        vec![worker],
        "children of start_server: {kids:?}"
    );
    assert!(
        kids.iter().all(|&(_, state)| state != 'Z'),
        "zombies: {kids:?}"
    );
    // No growth: the baseline may hold a descriptor of a spawn still under way.
    assert!(
        fds_after <= fds_before,
        "descriptors of start_server: {fds_before} -> {fds_after}"
    );
    assert!(
        rss_after <= rss_before + 64,
        "VmRSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    assert_eq!(wait_generation(addr, generation), worker);
    // Every worker but the last was told to stop and did.
    let lines = server.lines();
    let old_died = lines
        .iter()
        .filter(|l| l.starts_with("old worker ") && l.contains(" died, status:0"))
        .count();
    assert_eq!(
        old_died,
        server.count_lines("starting new worker") - 1,
        "{lines:?}"
    );
    server.stop();
}

// ------------------------------------------------------------------ 3. crash loop

#[test]
fn crash_loop_is_paced_by_the_interval_and_costs_no_cpu() {
    let mut server = Server::start(&["--interval=0.2", "--", "sh", "-c", "exit 3"]);
    server.wait_line("seems to have failed to start, exit status:768");
    let pid = server.pid();
    let (spawns_before, cpu_before, from) = (
        server.count_lines("starting new worker"),
        cpu_seconds(pid),
        Instant::now(),
    );
    // The measurement window itself: 2 s of crash loop.
    thread::sleep(Duration::from_secs(2));
    let (spawns_after, cpu_after, window) = (
        server.count_lines("starting new worker"),
        cpu_seconds(pid),
        from.elapsed(),
    );
    let spawns = spawns_after - spawns_before;
    let cpu = cpu_after - cpu_before;
    eprintln!(
        "crash loop: {spawns} spawns in {window:?} at --interval=0.2 (expected ~{:.0}); start_server CPU {cpu:.3} s (total {cpu_after:.3} s)",
        window.as_secs_f64() / 0.2
    );
    // Never faster than the interval; and not much slower than the interval plus
    // what a spawn of this worker costs on this machine now (measured, with slack
    // for the bursts of a busy machine).
    let cycle = Duration::from_millis(200) + failing_worker_latency(3) * 4;
    let at_least = ((window.as_secs_f64() / cycle.as_secs_f64()) as usize / 2).max(2);
    // Spawns 0.2 s apart at the least; one more for a log line written late.
    let at_most = (window.as_secs_f64() / 0.2) as usize + 2;
    assert!(
        (at_least..=at_most).contains(&spawns),
        "{spawns} spawns in {window:?}, not {at_least} to {at_most} (a cycle of {cycle:?} at most)"
    );
    assert!(cpu < 0.2, "start_server used {cpu} s of CPU in {window:?}");
    assert!(
        server.count_lines("seems to have failed to start, exit status:768") >= spawns_after - 1
    );
    assert!(
        !server.has_line("died unexpectedly"),
        "a failed start is not a running worker"
    );
    server.stop();
}

// ------------------------------------------------------------------ 4. specified behaviours

#[test]
fn worker_ignoring_term_is_waited_for_and_signalled_again() {
    let dir = TempDir::new("ignterm");
    let status = dir.path().join("status");
    let mut server = Server::start(&[
        "--interval=0.1",
        &format!("--status-file={}", status.display()),
        "--",
        "sh",
        &worker_script("ignore_term.sh"),
    ]);
    let leftovers = Leftovers::new(server.pid());
    let first = server.wait_status(&status, &[1])[0].1;
    leftovers.watch(first);
    server.signal(libc::SIGHUP);
    server.wait_line(&format!(
        "new worker is now running, sending TERM to old workers:{first}"
    ));
    server.wait_line("killing old workers");
    let second = server.wait_status(&status, &[1, 2])[1].1;
    leftovers.watch(second);
    // It ignores the TERM: still there, still listed, for as long as we look.
    let look = Instant::now();
    while look.elapsed() < Duration::from_millis(500) {
        assert!(pid_alive(first));
        assert_eq!(read_status(&status), vec![(1, first), (2, second)]);
        thread::sleep(Duration::from_millis(50));
    }

    let both: BTreeSet<i32> = [first, second].into();
    server.signal(libc::SIGTERM);
    let line = server.wait_line("received TERM, sending TERM to all workers:");
    assert_eq!(pid_list(&line), both, "{line}");
    // Waiting for both; a repeated TERM sends TERM again.
    thread::sleep(Duration::from_millis(300));
    assert!(
        server.try_exit().is_none(),
        "start_server left while its workers live: {:?}",
        server.lines()
    );
    server.signal(libc::SIGTERM);
    let line = server.wait_nth_line("received TERM, sending TERM to all workers:", 2);
    assert_eq!(pid_list(&line), both, "{line}");

    signal(first, libc::SIGKILL);
    server.wait_line(&format!("worker {first} died, status:9"));
    server.signal(libc::SIGINT);
    let line = server.wait_line("received INT, sending TERM to all workers:");
    assert_eq!(pid_list(&line), [second].into(), "{line}");
    thread::sleep(Duration::from_millis(200));
    assert!(
        server.try_exit().is_none(),
        "start_server left while a worker lives: {:?}",
        server.lines()
    );
    assert!(pid_alive(second));

    signal(second, libc::SIGKILL);
    let took = Instant::now();
    assert!(server.wait_exit().success(), "{:?}", server.lines());
    eprintln!(
        "worker ignoring TERM: start_server exited {:?} after its last worker was killed",
        took.elapsed()
    );
    let lines = server.lines();
    assert!(
        lines.contains(&format!("worker {second} died, status:9")),
        "{lines:?}"
    );
    assert_eq!(
        lines.last().map(String::as_str),
        Some("exiting"),
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("failed to send")),
        "{lines:?}"
    );
    assert!(!status.exists());
}

#[test]
fn worker_exiting_during_the_kill_old_delay_is_not_signalled() {
    let dir = TempDir::new("delay");
    let status = dir.path().join("status");
    let mut server = Server::start(&[
        "--interval=0.1",
        "--kill-old-delay=1.5",
        &format!("--status-file={}", status.display()),
        "--",
        "sleep",
        "600",
    ]);
    let first = server.wait_status(&status, &[1])[0].1;
    server.signal(libc::SIGHUP);
    server.wait_line(&format!(
        "new worker is now running, sending TERM to old workers:{first}"
    ));
    server.wait_line("sleeping 1.5 secs before killing old workers");
    let second = server.wait_status(&status, &[1, 2])[1].1;
    signal(first, libc::SIGKILL);
    server.wait_line(&format!("old worker {first} died, status:9"));
    assert_eq!(server.wait_status(&status, &[2]), vec![(2, second)]);
    let killing = "killing old workers".to_string();
    assert!(
        !server.lines().contains(&killing),
        "the delay was over too soon to test: {:?}",
        server.lines()
    );
    // The delay ends: nothing left to signal, so nothing fails.
    wait_until("the end of the delay", || server.lines().contains(&killing));
    thread::sleep(Duration::from_millis(200));
    let lines = server.lines();
    assert!(
        !lines.iter().any(|l| l.contains("failed to send")),
        "{lines:?}"
    );
    assert!(
        pid_alive(second),
        "the current worker was signalled: {lines:?}"
    );
    assert_eq!(read_status(&status), vec![(2, second)]);
    server.stop();
    assert!(server.has_line(&format!(
        "received TERM, sending TERM to all workers:{second}"
    )));
}

#[test]
fn worker_forking_children_is_stopped_and_then_what_it_leaves() {
    let dir = TempDir::new("fork");
    let ForkChild {
        mut server,
        leftovers: _leftovers,
        worker,
        grandchild,
        ..
    } = ForkChild::start(&dir);
    assert_eq!(ppid(grandchild), Some(worker));
    assert_eq!(
        children(server.pid())
            .iter()
            .map(|c| c.0)
            .collect::<Vec<_>>(),
        vec![worker]
    );

    let sent = Instant::now();
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit().success(), "{:?}", server.lines());
    let took = sent.elapsed();
    eprintln!("worker forking a child: start_server exited {took:?} after TERM");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let lines = server.lines();
    assert!(
        lines.contains(&format!(
            "received TERM, sending TERM to all workers:{worker}"
        )),
        "{lines:?}"
    );
    assert!(
        lines.contains(&format!("worker {worker} died, status:15")),
        "{lines:?}"
    );
    assert_eq!(lines.last().map(String::as_str), Some("exiting"));
    // The worker is signalled alone; what it leaves when it exits is its generation's,
    // stopped in turn, before start_server exits.
    assert!(
        lines.contains(&format!(
            "worker {worker} (generation 1) exited, leaving processes {grandchild}; sending TERM"
        )),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"no process of any generation is left".to_string()),
        "{lines:?}"
    );
    wait_until("the grandchild to be gone", || !pid_alive(grandchild));
}

#[test]
fn sigkilled_start_server_leaves_no_worker_and_its_sockets_can_be_reused() {
    let dir = TempDir::new("sigkill");
    let sock = dir.path().join("s.sock");
    let http = example("http-static").display().to_string();
    let args = |port: u16| {
        strings(&[
            &format!("--port=127.0.0.1:{port}"),
            &format!("--path={}", sock.display()),
            "--interval=0.1",
            "--kill-old-delay=60",
            "--",
            &http,
        ])
    };
    let (mut server, port) = Server::start_retrying(args, &[]);
    let leftovers = Leftovers::new(server.pid());
    let addr = addr("127.0.0.1", port);
    let first = wait_generation(addr, 1);
    leftovers.watch(first);
    server.signal(libc::SIGHUP);
    server.wait_line("sleeping 60 secs before killing old workers");
    let second = wait_generation(addr, 2);
    leftovers.watch(second);
    assert!(pid_alive(first) && pid_alive(second));

    server.signal(libc::SIGKILL);
    let status = server.wait_exit();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    let killed = Instant::now();
    wait_until("both workers to exit after start_server's death", || {
        !pid_alive(first) && !pid_alive(second)
    });
    eprintln!(
        "SIGKILLed start_server: old and current worker gone {:?} later",
        killed.elapsed()
    );
    assert!(sock.exists(), "the unix socket file stays after a SIGKILL");
    // The kernel's signal was --signal-on-term's TERM: http-static says so on the log.
    for pid in [first, second] {
        server.wait_line(&format!("http: pid {pid} got signal 15"));
    }

    // The port and the socket path can be served again.
    let args: Vec<String> = args(port);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut again = Server::start(&args);
    again.wait_line(&format!("removing existing socket file:{}", sock.display()));
    assert!(!again.has_line(ADDRESS_IN_USE), "{:?}", again.lines());
    let pid = wait_generation(addr, 1);
    assert!(pid != first && pid != second);
    let (unix_pid, generation) = wait_for("an answer on the reused unix socket", || {
        http_get_unix(&sock).ok()
    });
    assert_eq!((unix_pid, generation), (pid, 1));
    again.stop();
    assert!(!sock.exists());
}

#[test]
fn sigkilled_start_server_has_the_kernel_send_signal_on_term() {
    let dir = TempDir::new("pdeath");
    let signal_log = dir.path().join("signals");
    let mut server = Server::start_with(
        &[
            "--interval=0.1",
            "--signal-on-term=USR1",
            "--",
            "sh",
            &worker_script("report_signal.sh"),
        ],
        &[("SIGNAL_LOG", signal_log.to_str().unwrap())],
    );
    let leftovers = Leftovers::new(server.pid());
    server.wait_line("starting new worker");
    let worker = server.worker_pids()[0];
    leftovers.watch(worker);
    wait_until("the worker to be ready", || {
        std::fs::read_to_string(&signal_log).is_ok_and(|t| t.contains(&format!("ready {worker}")))
    });
    server.signal(libc::SIGKILL);
    server.wait_exit();
    let text = wait_for("the worker's report", || {
        std::fs::read_to_string(&signal_log)
            .ok()
            .filter(|t| t.contains(" got "))
    });
    assert!(text.contains(&format!("{worker} got USR1")), "{text}");
    wait_until("the worker to exit", || !pid_alive(worker));
}
