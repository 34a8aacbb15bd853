//! Driving our start_server in lifecycle tests, on top of `common`: waiting for log
//! lines and status-file contents, one-shot HTTP requests by address, retrying on a
//! port that another process took first.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::common::{self, StartServer, TempDir, PATIENCE};

/// The start_server under test: `$START_SERVER` (what `make test` sets: the static musl
/// build), else the one cargo built for these tests.
pub fn start_server_bin() -> PathBuf {
    std::env::var_os("START_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_start_server").into())
}

pub fn perl_worker() -> PathBuf {
    common::repo_root().join("tests/workers/http.pl")
}

pub fn wait_for<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    common::poll_until(what, PATIENCE, f)
}

pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    common::poll_until(what, PATIENCE, || cond().then_some(()))
}

/// A port free a moment ago on `ip` for both TCP and UDP.
pub fn free_port(ip: &str) -> u16 {
    loop {
        let port = common::free_port(ip, false);
        if std::net::UdpSocket::bind((ip, port)).is_ok() {
            return port;
        }
    }
}

pub fn pid_alive(pid: i32) -> bool {
    // A zombie still answers kill(0): look at its state too.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

pub fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions; `pid` is a process the test
    // started (a worker it read from start_server's log).
    unsafe { libc::kill(pid, sig) };
}

/// How start_server reports EADDRINUSE whatever its libc calls it (musl: "Address in
/// use", glibc: "Address already in use"): by the errno it prints.
pub const ADDRESS_IN_USE: &str = "(os error 98)";

/// Our start_server, logging to a file in its own temp dir.
pub struct Server {
    inner: StartServer,
    _dir: TempDir,
}

impl Server {
    pub fn start(args: &[&str]) -> Server {
        Server::start_with(args, &[])
    }

    pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = std::process::Command::new(start_server_bin());
        cmd.args(args).envs(env.iter().copied());
        Server::spawn(cmd)
    }

    /// Runs `cmd`: start_server, or a program that execs it (`systemd-socket-activate`).
    pub fn spawn(cmd: std::process::Command) -> Server {
        let dir = TempDir::new("log");
        let inner = StartServer::spawn_command(cmd, dir.path().join("log"));
        Server { inner, _dir: dir }
    }

    /// Starts start_server on a port picked by `make_args` (given a fresh free port
    /// each time), again if another process took the port first.
    pub fn start_retrying(
        mut make_args: impl FnMut(u16) -> Vec<String>,
        env: &[(&str, &str)],
    ) -> (Server, u16) {
        for _ in 0..5 {
            let port = free_port("127.0.0.1");
            let args = make_args(port);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut server = Server::start_with(&args, env);
            let started = wait_for("start_server to start a worker or fail", || {
                if server.has_line("starting new worker") {
                    return Some(true);
                }
                server.inner.try_status().map(|_| false)
            });
            if started {
                return (server, port);
            }
            assert!(
                server.has_line(ADDRESS_IN_USE),
                "start_server failed: {:?}",
                server.lines()
            );
        }
        panic!("no free port after 5 tries");
    }

    pub fn pid(&self) -> i32 {
        self.inner.pid()
    }

    pub fn lines(&self) -> Vec<String> {
        self.inner.log_text().lines().map(String::from).collect()
    }

    pub fn has_line(&self, needle: &str) -> bool {
        self.lines().iter().any(|l| l.contains(needle))
    }

    pub fn count_lines(&self, needle: &str) -> usize {
        self.lines().iter().filter(|l| l.contains(needle)).count()
    }

    pub fn wait_line(&self, needle: &str) -> String {
        self.wait_nth_line(needle, 1)
    }

    /// Waits for the `n`-th (1-based) line containing `needle`.
    pub fn wait_nth_line(&self, needle: &str, n: usize) -> String {
        wait_for(
            &format!("log line {needle:?} #{n} in {}", self.inner.log.display()),
            || {
                self.lines()
                    .into_iter()
                    .filter(|l| l.contains(needle))
                    .nth(n - 1)
            },
        )
    }

    pub fn worker_pids(&self) -> Vec<i32> {
        self.inner.worker_pids()
    }

    pub fn signal(&self, sig: i32) {
        self.inner.signal(sig);
    }

    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.inner.try_status()
    }

    pub fn wait_exit(&mut self) -> ExitStatus {
        self.inner.wait_exit(PATIENCE)
    }

    /// TERM, then wait: start_server must exit 0.
    pub fn stop(&mut self) {
        self.signal(libc::SIGTERM);
        let status = self.wait_exit();
        assert!(
            status.success(),
            "start_server exited with {status}: {:?}",
            self.lines()
        );
    }

    /// Waits until the status file holds exactly these generations.
    pub fn wait_status(&self, file: &Path, generations: &[u64]) -> Vec<(u64, i32)> {
        wait_for(
            &format!("status file with generations {generations:?}"),
            || {
                let entries = read_status(file);
                let gens: Vec<u64> = entries.iter().map(|e| e.0).collect();
                (gens == generations).then_some(entries)
            },
        )
    }
}

/// `generation:pid` lines of a status file (empty when it is missing).
pub fn read_status(file: &Path) -> Vec<(u64, i32)> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (g, p) = l.split_once(':')?;
            Some((g.parse().ok()?, p.parse().ok()?))
        })
        .collect()
}

fn hello(mut stream: impl Read + Write) -> std::io::Result<(i32, u64)> {
    stream.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("");
    match common::parse_hello(body) {
        Some((pid, generation)) if response.starts_with("HTTP/1.") => Ok((pid, generation as u64)),
        _ => Err(std::io::Error::other(format!("bad response: {response:?}"))),
    }
}

/// One HTTP/1.0 request over TCP: the (pid, generation) that answered.
pub fn http_get(addr: SocketAddr) -> std::io::Result<(i32, u64)> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    hello(stream)
}

/// The same over a unix socket.
pub fn http_get_unix(path: &Path) -> std::io::Result<(i32, u64)> {
    let stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    hello(stream)
}

/// Waits until a request over TCP is answered by `generation`; returns its pid.
pub fn wait_generation(addr: SocketAddr, generation: u64) -> i32 {
    wait_for(
        &format!("generation {generation} to answer at {addr}"),
        || match http_get(addr) {
            Ok((pid, g)) if g == generation => Some(pid),
            _ => None,
        },
    )
}

pub fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// Requests in a loop from a few threads until stopped: (answers by generation, failures).
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
    generations: Arc<Mutex<Vec<u64>>>,
    failures: Arc<Mutex<Vec<String>>>,
    /// Requests made so far, answered or not.
    pub count: Arc<AtomicUsize>,
}

impl Load {
    pub fn start(addr: std::net::SocketAddr, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let generations = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let count = Arc::new(AtomicUsize::new(0));
        let threads = (0..threads)
            .map(|_| {
                let (stop, generations, failures, count) = (
                    stop.clone(),
                    generations.clone(),
                    failures.clone(),
                    count.clone(),
                );
                thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match http_get(addr) {
                            Ok((_, g)) => generations.lock().unwrap().push(g),
                            Err(e) => failures.lock().unwrap().push(e.to_string()),
                        }
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Load {
            stop,
            threads,
            generations,
            failures,
            count,
        }
    }

    /// Waits until `n` more requests have been made.
    pub fn wait_more(&self, n: usize) {
        let before = self.count.load(Ordering::Relaxed);
        wait_until(&format!("{n} more requests"), || {
            self.count.load(Ordering::Relaxed) >= before + n
        });
    }

    /// Stops the clients, failing the test if any request failed; returns the
    /// generations that answered, in order.
    pub fn finish_without_failures(self) -> Vec<u64> {
        let (generations, failures) = self.finish();
        assert!(
            failures.is_empty(),
            "{} of {} requests failed: {:?}",
            failures.len(),
            generations.len() + failures.len(),
            &failures[..failures.len().min(5)]
        );
        generations
    }

    pub fn finish(self) -> (Vec<u64>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let generations = self.generations.lock().unwrap().clone();
        let failures = self.failures.lock().unwrap().clone();
        (generations, failures)
    }
}
