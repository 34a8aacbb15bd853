//! The examples tell their supervisor how they are doing through
//! server_starter_notify: each (C, Go, Python) is started here directly, as
//! start_server would start it, on a TCP listener this test bound (descriptor 3,
//! named in SERVER_STARTER_PORT) and with NOTIFY_SOCKET naming a socket this
//! test bound. It must say READY=1 once it serves and STOPPING=1 on SIGTERM,
//! each from its own pid (SCM_CREDENTIALS); the C http worker also sends
//! WATCHDOG=1 keep-alives when WATCHDOG_USEC asks for them, and never wakes up
//! when it does not.
//!
//! Needs `make examples` (the tests say so when its outputs are missing).

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::notify::{Notification, NotifySocket};
use common::*;

/// An example running as a worker, killed if the test ends before it exits.
struct Worker {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: TempDir,
}

impl Worker {
    /// Starts `program` with a fresh TCP listener as descriptor 3 and
    /// NOTIFY_SOCKET set to `notify` (unset for None).
    fn start(program: &[String], notify: Option<&NotifySocket>, env: &[(&str, &str)]) -> Worker {
        let dir = TempDir::new("notify-ex");
        let log = dir.path().join("worker.log");
        let out = fs::File::create(&log).expect("the worker's log file");
        let listener = TcpListener::bind("127.0.0.1:0").expect("a TCP listener");
        let addr = listener.local_addr().unwrap();
        let fd = listener.as_raw_fd();
        let stage = repo_root().join("build/stage");
        let mut cmd = Command::new(&program[0]);
        cmd.args(&program[1..])
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("LISTEN_PID")
            .env_remove("NOTIFY_SOCKET")
            .env("SERVER_STARTER_PORT", format!("{addr}=3"))
            .env("SERVER_STARTER_GENERATION", "1")
            // The staged install, for the Python worker's pkg-config lookup.
            .env("PKG_CONFIG_PATH", stage.join("usr/lib/pkgconfig"))
            .env("PKG_CONFIG_SYSROOT_DIR", &stage)
            .envs(notify.map(|n| ("NOTIFY_SOCKET", n.env.as_str())))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        // SAFETY: between fork and exec the closure only calls dup2 and fcntl,
        // which are async-signal-safe, on the listener this process owns.
        unsafe {
            cmd.pre_exec(move || {
                // dup2 onto itself would keep FD_CLOEXEC: clear it instead.
                let rc = if fd == 3 {
                    libc::fcntl(3, libc::F_SETFD, 0)
                } else {
                    libc::dup2(fd, 3)
                };
                if rc < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {program:?}: {e}"));
        // The worker has its copy; ours closes when `listener` drops here.
        Worker {
            child,
            addr,
            log,
            _dir: dir,
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The next notification, which must come from this worker and hold
    /// `assignment`.
    fn expect(&self, notify: &NotifySocket, assignment: &str) -> Notification {
        let got = notify.recv(PATIENCE).unwrap_or_else(|e| {
            panic!(
                "waiting for {assignment} from pid {}: {e}\n{}",
                self.pid(),
                self.log_text()
            )
        });
        assert!(got.has(assignment), "expected {assignment}, got {got:?}");
        assert_eq!(got.pid, self.pid(), "sender of {got:?}");
        got
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child, not reaped yet.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }

    fn wait_exit_success(&mut self) {
        let status = poll_until("the worker to exit", PATIENCE, || {
            self.child.try_wait().expect("waitpid")
        });
        assert!(status.success(), "{status:?}\n{}", self.log_text());
    }

    /// Voluntary and involuntary context switches of its (only) thread so far.
    fn context_switches(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
            .sum()
    }

    /// Whether it is asleep (in poll, for the C examples).
    fn sleeping(&self) -> bool {
        fs::read_to_string(format!("/proc/{}/stat", self.pid())).is_ok_and(|stat| {
            stat.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('S')
        })
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) on our own child, not reaped yet.
            unsafe { libc::kill(self.pid(), libc::SIGKILL) };
            let _ = self.child.wait();
        }
    }
}

#[derive(Clone, Copy)]
enum Serves {
    Http,
    Echo,
}

/// Checks the worker answers on its listener as `serves` says.
fn check_serving(worker: &Worker, serves: Serves) {
    match serves {
        Serves::Http => {
            let body = Target::Tcp(worker.addr)
                .get()
                .expect("an answer once READY=1");
            assert_eq!(parse_hello(&body), Some((worker.pid(), 1)), "{body:?}");
        }
        Serves::Echo => {
            let mut s = TcpStream::connect(worker.addr).expect("a connection once READY=1");
            s.set_read_timeout(Some(PATIENCE)).unwrap();
            s.write_all(b"ready?\n").unwrap();
            let mut buf = [0u8; 7];
            s.read_exact(&mut buf).expect("the echo");
            assert_eq!(&buf, b"ready?\n");
        }
    }
}

/// READY=1 from the worker's own pid once it serves; STOPPING=1 on SIGTERM,
/// and nothing in between (no keep-alives without WATCHDOG_USEC); exit 0.
fn ready_then_stopping(program: Vec<String>, serves: Serves) {
    let notify = NotifySocket::new_abstract();
    let mut worker = Worker::start(&program, Some(&notify), &[]);
    worker.expect(&notify, "READY=1");
    check_serving(&worker, serves);
    worker.signal(libc::SIGTERM);
    worker.expect(&notify, "STOPPING=1");
    worker.wait_exit_success();
    assert!(notify.try_recv().is_err(), "nothing after STOPPING=1");
}

fn path_arg(name: &str) -> Vec<String> {
    vec![example(name).display().to_string()]
}

#[test]
fn echo_static_says_ready_and_stopping() {
    ready_then_stopping(path_arg("echo-static"), Serves::Echo);
}

#[test]
fn http_static_says_ready_and_stopping() {
    ready_then_stopping(path_arg("http-static"), Serves::Http);
}

#[test]
fn http_shared_says_ready_and_stopping() {
    ready_then_stopping(path_arg("http-shared"), Serves::Http);
}

#[test]
fn go_worker_says_ready_and_stopping() {
    ready_then_stopping(path_arg("go-worker"), Serves::Http);
}

#[test]
fn python_worker_says_ready_and_stopping() {
    let script = example("python/worker.py").display().to_string();
    ready_then_stopping(vec!["python3".into(), script], Serves::Http);
}

/// The C workers read READY's STATUS line from the listener count.
#[test]
fn c_ready_carries_a_status_line() {
    let notify = NotifySocket::new_abstract();
    let worker = Worker::start(&path_arg("http-static"), Some(&notify), &[]);
    let ready = worker.expect(&notify, "READY=1");
    assert_eq!(ready.text, "READY=1\nSTATUS=serving 1 listener(s)");
}

/// WATCHDOG_USEC=100000: a WATCHDOG=1 every 50 ms, so three of them take at
/// least 150 ms from the start.
#[test]
fn c_workers_send_keep_alives_every_half_watchdog_usec() {
    for program in [path_arg("http-static"), path_arg("echo-static")] {
        let notify = NotifySocket::new_abstract();
        let started = Instant::now();
        let worker = Worker::start(&program, Some(&notify), &[("WATCHDOG_USEC", "100000")]);
        worker.expect(&notify, "READY=1");
        for _ in 0..3 {
            worker.expect(&notify, "WATCHDOG=1");
        }
        assert!(
            started.elapsed() >= Duration::from_millis(150),
            "{program:?}: three keep-alives within {:?}",
            started.elapsed()
        );
    }
}

/// Without WATCHDOG_USEC, or with WATCHDOG_PID naming another process, an idle
/// C worker sleeps in poll() and does not wake up at all.
#[test]
fn idle_c_worker_never_wakes_up_without_a_watchdog_for_it() {
    let cases: [&[(&str, &str)]; 2] = [&[], &[("WATCHDOG_USEC", "20000"), ("WATCHDOG_PID", "1")]];
    for env in cases {
        let notify = NotifySocket::new_abstract();
        let worker = Worker::start(&path_arg("http-static"), Some(&notify), env);
        worker.expect(&notify, "READY=1");
        poll_until("the worker to sleep in poll()", PATIENCE, || {
            worker.sleeping().then_some(())
        });
        let before = worker.context_switches();
        // The window in which a keep-alive every 10 ms would have woken it ~30 times.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            worker.context_switches(),
            before,
            "{env:?}: woke up while idle"
        );
        assert!(notify.try_recv().is_err(), "{env:?}: no keep-alive");
    }
}

/// With no NOTIFY_SOCKET the examples serve as before (the call returns 0,
/// and they say nothing about it).
#[test]
fn c_worker_serves_without_notify_socket() {
    let mut worker = Worker::start(&path_arg("http-static"), None, &[]);
    let body = Target::Tcp(worker.addr).get_eventually();
    assert_eq!(parse_hello(&body), Some((worker.pid(), 1)));
    worker.signal(libc::SIGTERM);
    worker.wait_exit_success();
    assert!(
        !worker.log_text().contains("telling the supervisor"),
        "{}",
        worker.log_text()
    );
}
