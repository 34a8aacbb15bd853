//! Helpers shared by the integration tests: temp dirs, free ports, polling
//! with deadlines, and a guard that owns a `start_server` process and kills it
//! (and only it, and its workers) when a test ends, passing or not.
#![allow(dead_code)] // each test binary uses its own subset

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub mod notify;

/// How long anything in a test may take before it counts as hung. Generous:
/// the tests run in parallel on a small, busy machine.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A build artifact under the repository, or a failed test saying how to build it.
pub fn artifact(relative: &str, how: &str) -> PathBuf {
    let path = repo_root().join(relative);
    assert!(
        path.exists(),
        "{} is missing: run `{how}` first",
        path.display()
    );
    path
}

/// An example under build/examples/.
pub fn example(name: &str) -> PathBuf {
    artifact(&format!("build/examples/{name}"), "make examples")
}

/// Calls `probe` until it returns Some, or panics with `what` at the deadline.
pub fn poll_until<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// A directory removed again when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        // Short: unix socket paths must fit in 108 bytes.
        let path = std::env::temp_dir().join(format!(
            "ss-{tag}-{}-{}-{nanos:x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A port that was free a moment ago on `ip` for TCP (or UDP). Another process
/// may take it before we bind it again: callers retry on "Address in use".
pub fn free_port(ip: &str, udp: bool) -> u16 {
    let addr: SocketAddr = (ip.parse::<std::net::IpAddr>().expect("an IP address"), 0).into();
    if udp {
        UdpSocket::bind(addr)
            .and_then(|s| s.local_addr())
            .map(|a| a.port())
    } else {
        TcpListener::bind(addr)
            .and_then(|s| s.local_addr())
            .map(|a| a.port())
    }
    .unwrap_or_else(|e| panic!("binding {addr} to find a free port: {e}"))
}

pub fn ipv6_loopback() -> SocketAddr {
    (Ipv6Addr::LOCALHOST, 0).into()
}

/// A `start_server` (the Perl original, or ours) with its workers, in a process
/// group of its own. Its stdout and stderr go to a log file, which the tests read.
pub struct StartServer {
    child: Child,
    pub log: PathBuf,
    status: Option<ExitStatus>,
}

impl StartServer {
    /// Spawns `program args...` with the extra environment `envs`, logging to `log`.
    pub fn spawn(
        program: &Path,
        args: &[String],
        envs: &[(&str, String)],
        log: PathBuf,
    ) -> StartServer {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())));
        StartServer::spawn_command(cmd, log)
    }

    /// Spawns `cmd` (start_server, or a program that execs it), logging to `log`.
    pub fn spawn_command(mut cmd: Command, log: PathBuf) -> StartServer {
        let out =
            fs::File::create(&log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        let err = out.try_clone().expect("dup of the log file");
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // A group of its own: the guard can then reach the workers too, even
            // when start_server itself died before it could stop them.
            .process_group(0);
        // A program the test has just written can be busy for an instant (ETXTBSY): a
        // fork in another test thread holds it open for writing until its exec.
        let child = poll_until(
            "a program just written to be executable",
            PATIENCE,
            || match cmd.spawn() {
                Ok(child) => Some(child),
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => None,
                Err(e) => panic!("spawning {cmd:?}: {e}"),
            },
        );
        StartServer {
            child,
            log,
            status: None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The exit status, once start_server has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("waitpid on start_server");
        }
        self.status
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the pid of our own child, which we have not reaped yet.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(
            rc,
            0,
            "kill({}, {sig}): {}",
            self.pid(),
            std::io::Error::last_os_error()
        );
    }

    /// Waits for start_server to exit, failing the test (with its log, and what is
    /// left of its process group) at `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return status;
            }
            if Instant::now() >= deadline {
                let ps = Command::new("ps")
                    .args(["-e", "-o", "pgid=,pid=,ppid=,stat=,wchan:20=,args="])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                let group = self.pid().to_string();
                let ps: Vec<&str> = ps
                    .lines()
                    .filter(|l| l.split_whitespace().next() == Some(group.as_str()))
                    .collect();
                let ps = ps.join("\n");
                panic!(
                    "start_server did not exit within {timeout:?}; its log:\n{}\nits group:\n{ps}",
                    self.log_text()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Pids of the workers it said it started ("starting new worker N"), in order.
    pub fn worker_pids(&self) -> Vec<i32> {
        self.log_text()
            .lines()
            .filter_map(|l| l.strip_prefix("starting new worker "))
            .filter_map(|p| p.trim().parse().ok())
            .collect()
    }
}

impl Drop for StartServer {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            // Still running: the test failed or did not stop it. SIGKILL the whole
            // group (start_server and its workers, which are ours alone), then reap.
            // SAFETY: a negative pid names the process group we created at spawn.
            unsafe { libc::kill(-self.pid(), libc::SIGKILL) };
            let _ = self.child.wait();
        }
        // Killed (here or by the test), it could not remove its cgroups.
        remove_cgroups(self.pid());
    }
}

/// The directory of this process's own cgroup in the cgroup2 hierarchy (a child
/// start_server's too), from /proc/self/mountinfo and /proc/self/cgroup, if the
/// hierarchy is mounted read-write whole.
pub fn own_cgroup_dir() -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let f: Vec<&str> = left.split(' ').collect();
        let rw = f.get(5)?.split(',').any(|o| o == "rw");
        (right.starts_with("cgroup2 ") && rw && f.get(3) == Some(&"/")).then(|| f[4].to_string())
    })?;
    let own = fs::read_to_string("/proc/self/cgroup").ok()?;
    let own = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(PathBuf::from(format!("{mount}{own}")))
}

/// The cgroups a killed start_server `pid` left (it removes them itself when it
/// exits): removed once their processes are gone, within a bound.
fn remove_cgroups(pid: i32) {
    let Some(root) = own_cgroup_dir().map(|d| d.join(format!("server_starter.{pid}"))) else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while root.exists() && Instant::now() < deadline {
        for child in fs::read_dir(&root).into_iter().flatten().flatten() {
            let _ = fs::remove_dir(child.path());
        }
        if fs::remove_dir(&root).is_ok() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Sends one HTTP/1.1 request and returns the response's status line and body.
pub fn http_get(stream: &mut (impl Read + Write)) -> std::io::Result<(String, String)> {
    stream.write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no end of headers in {text:?}")))?;
    let status = head.lines().next().unwrap_or_default().to_string();
    Ok((status, body.to_string()))
}

/// Where a test client connects to.
#[derive(Clone, Debug)]
pub enum Target {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl Target {
    pub fn connect(&self) -> std::io::Result<Box<dyn ReadWrite>> {
        let timeout = Some(Duration::from_secs(10));
        Ok(match self {
            Target::Tcp(addr) => {
                let s = TcpStream::connect_timeout(addr, Duration::from_secs(5))?;
                s.set_read_timeout(timeout)?;
                s.set_write_timeout(timeout)?;
                Box::new(s)
            }
            Target::Unix(path) => {
                let s = UnixStream::connect(path)?;
                s.set_read_timeout(timeout)?;
                s.set_write_timeout(timeout)?;
                Box::new(s)
            }
        })
    }

    /// One GET; the body on a 200, an error otherwise.
    pub fn get(&self) -> std::io::Result<String> {
        let mut s = self.connect()?;
        let (status, body) = http_get(&mut s)?;
        if !status.starts_with("HTTP/1.1 200") && !status.starts_with("HTTP/1.0 200") {
            return Err(std::io::Error::other(format!("status {status:?}")));
        }
        Ok(body)
    }

    /// Polls until a GET succeeds (the worker may still be starting).
    pub fn get_eventually(&self) -> String {
        let mut last = String::new();
        poll_until(
            &format!("an HTTP answer on {self:?}"),
            PATIENCE,
            || match self.get() {
                Ok(body) => Some(body),
                Err(e) => {
                    last = e.to_string();
                    None
                }
            },
        )
    }
}

pub trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Sends a datagram to `to` until the same bytes come back.
pub fn udp_echo_eventually(to: SocketAddr, payload: &[u8]) {
    let bind: SocketAddr = if to.is_ipv6() {
        ipv6_loopback()
    } else {
        "127.0.0.1:0".parse().unwrap()
    };
    let sock = UdpSocket::bind(bind).expect("binding a UDP client socket");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    sock.connect(to).expect("connecting a UDP socket");
    let mut buf = [0u8; 2048];
    poll_until(&format!("a UDP echo from {to}"), PATIENCE, || {
        // Datagrams may be lost, or arrive before the worker reads: ask again.
        sock.send(payload).ok()?;
        let n = sock.recv(&mut buf).ok()?;
        (buf[..n] == *payload).then_some(())
    });
}

/// Parses "hello from pid P generation G" into (P, G).
pub fn parse_hello(body: &str) -> Option<(i32, i64)> {
    let rest = body.trim_end().strip_prefix("hello from pid ")?;
    let (pid, generation) = rest.split_once(" generation ")?;
    Some((pid.parse().ok()?, generation.parse().ok()?))
}
