//! Driving our start_server in lifecycle tests, on top of `common`: waiting for log
//! lines and status-file contents, one-shot HTTP requests by address, retrying on a
//! port that another process took first.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

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

/// How long `command` takes to run on this machine now, from spawn to exit: the
/// slowest of three runs, under whatever load the other tests and processes put on
/// the machine then. It must exit with `code`.
pub fn run_latency(mut command: impl FnMut() -> Command, code: i32) -> Duration {
    (0..3)
        .map(|_| {
            let mut cmd = command();
            let begun = Instant::now();
            let status = cmd.stdin(Stdio::null()).status().expect("running a probe");
            assert_eq!(status.code(), Some(code), "{cmd:?}: {status}");
            begun.elapsed()
        })
        .max()
        .unwrap_or_default()
}

/// How long a worker that fails at once (`sh -c 'exit CODE'`) takes to run on this
/// machine now.
pub fn failing_worker_latency(code: i32) -> Duration {
    run_latency(
        || {
            let mut sh = Command::new("sh");
            sh.args(["-c", &format!("exit {code}")]);
            sh
        },
        code,
    )
}

/// How long this machine takes, now, to start the Perl test worker up to its first
/// act (in a failing generation it exits 3 there; otherwise it would take its
/// sockets and say READY=1).
pub fn worker_start_latency() -> Duration {
    run_latency(
        || {
            let mut cmd = Command::new(perl_worker());
            cmd.env("SERVER_STARTER_GENERATION", "1")
                .env("FAIL_GENERATIONS", "1")
                .env_remove("SERVER_STARTER_PORT")
                .env_remove("NOTIFY_SOCKET");
            cmd
        },
        3,
    )
}

/// A deadline that a healthy Perl test worker meets on this machine now, for
/// start_server's own deadlines (`--ready-timeout`, the `--interval` a failing
/// worker must die within, `--watchdog`): twenty times its measured start (the
/// load comes in bursts: tests start their workers together), two seconds more, in
/// whole seconds so that start_server's log lines name it plainly. A guess fixed in
/// a test fails on a busy machine; this grows with the load, up to a third of
/// PATIENCE, so that a wait that includes it is not taken for a hang.
pub fn worker_deadline() -> Duration {
    let latency = worker_start_latency();
    let deadline = Duration::from_secs((latency * 20).as_secs() + 2).min(PATIENCE / 3);
    eprintln!("the Perl test worker starts in {latency:?} now: deadline {deadline:?}");
    deadline
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

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether `program` is on PATH.
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program} >/dev/null")])
        .status()
        .is_ok_and(|s| s.success())
}

pub fn pid_alive(pid: i32) -> bool {
    // A zombie still answers kill(0): look at its state too.
    stat_fields(pid)
        .unwrap_or_default()
        .first()
        .is_some_and(|state| state != "Z")
}

pub fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions; `pid` is a process the test
    // started (a worker it read from start_server's log).
    unsafe { libc::kill(pid, sig) };
}

/// Kills, when dropped, the process whose pid a file holds (a daemon, through whose
/// parent-death signal its workers go too; a logger; a worker's orphan) if it is still
/// alive: what a test started indirectly and would leave behind if it failed midway.
pub struct KillOnDrop<'a>(pub &'a Path);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(pid) = std::fs::read_to_string(self.0)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            if pid_alive(pid) {
                signal(pid, libc::SIGKILL);
            }
        }
    }
}

/// Runs start_server with `args` (a control command such as `--stop`, or a
/// `--daemonize` launcher), failing the test if it has not returned within `timeout`.
pub fn run_within(args: &[&str], timeout: Duration) -> Output {
    let mut cmd = Command::new(start_server_bin());
    cmd.args(args);
    run_command_within(cmd, timeout)
}

/// Runs `cmd` to its end, failing the test if it has not returned within `timeout`.
/// Its output goes through files, not pipes, so that a process it leaves behind with
/// them open (a daemon, a logger) cannot make the test wait.
pub fn run_command_within(mut cmd: Command, timeout: Duration) -> Output {
    let dir = TempDir::new("run");
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let file = |path: &Path| std::fs::File::create(path).expect("an output file");
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file(&out))
        .stderr(file(&err))
        .spawn()
        .unwrap_or_else(|e| panic!("running {what}: {e}"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waitpid") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} still running after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: std::fs::read(&out).unwrap_or_default(),
        stderr: std::fs::read(&err).unwrap_or_default(),
    }
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
        Server::start_program(&start_server_bin(), args, env)
    }

    /// Runs `cmd`: start_server, or a program that execs it (`systemd-socket-activate`).
    pub fn spawn(cmd: std::process::Command) -> Server {
        let dir = TempDir::new("log");
        let inner = StartServer::spawn_command(cmd, dir.path().join("log"));
        Server { inner, _dir: dir }
    }

    /// Runs `program` with `args` instead of start_server: a wrapper (`unshare ...`)
    /// that ends by running it. `pid` is then the wrapper's.
    pub fn start_program(program: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let dir = TempDir::new("log");
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (*k, v.to_string())).collect();
        let inner = StartServer::spawn(program, &args, &env, dir.path().join("log"));
        Server { inner, _dir: dir }
    }

    /// start_server run by `wrapper` (a command and its arguments, such as `prlimit
    /// ...`), which must exec it, so that the pid stays start_server's.
    pub fn start_wrapped(wrapper: &[&str], args: &[&str], env: &[(&str, &str)]) -> Server {
        let bin = start_server_bin();
        let bin = bin.display().to_string();
        let mut rest: Vec<&str> = wrapper[1..].to_vec();
        rest.push(&bin);
        rest.extend_from_slice(args);
        Server::start_program(Path::new(wrapper[0]), &rest, env)
    }

    /// Starts start_server on a port picked by `make_args` (given a fresh free port
    /// each time), again if another process took the port first.
    pub fn start_retrying(
        make_args: impl FnMut(u16) -> Vec<String>,
        env: &[(&str, &str)],
    ) -> (Server, u16) {
        Server::start_program_retrying(&start_server_bin(), make_args, env)
    }

    /// `start_retrying` through a wrapper, as `start_program` runs one.
    pub fn start_program_retrying(
        program: &Path,
        mut make_args: impl FnMut(u16) -> Vec<String>,
        env: &[(&str, &str)],
    ) -> (Server, u16) {
        for _ in 0..5 {
            let port = free_port("127.0.0.1");
            let args = make_args(port);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut server = Server::start_program(program, &args, env);
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

    pub fn log_path(&self) -> PathBuf {
        self.inner.log.clone()
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

/// Reads the next datagram a service manager's socket received, within PATIENCE.
pub fn next_message(socket: &UnixDatagram) -> String {
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = [0u8; 4096];
    let n = socket
        .recv(&mut buf)
        .expect("a notification within the deadline");
    String::from_utf8_lossy(&buf[..n]).into_owned()
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

    pub fn finish(self) -> (Vec<u64>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let generations = self.generations.lock().unwrap().clone();
        let failures = self.failures.lock().unwrap().clone();
        (generations, failures)
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

    /// Waits until `n` more requests have been answered or failed.
    pub fn wait_more(&self, n: usize) {
        let before = self.count.load(Ordering::Relaxed);
        wait_until(&format!("{n} more requests"), || {
            self.count.load(Ordering::Relaxed) >= before + n
        });
    }
}

/// A script of tests/workers/.
pub fn worker_script(name: &str) -> String {
    common::repo_root()
        .join("tests/workers")
        .join(name)
        .display()
        .to_string()
}

// ------------------------------------------------------------------ /proc

/// Fields of /proc/PID/stat after the command name: [0] is the state, [1] the ppid.
pub fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(String::from).collect())
}

/// Every process whose /proc/PID/stat field `index` (after the command name) is
/// `value`, with its state letter.
fn processes_where(index: usize, value: i32) -> Vec<(i32, char)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if let Some(fields) = stat_fields(pid) {
            if fields.get(index).and_then(|p| p.parse::<i32>().ok()) == Some(value) {
                found.push((pid, fields[0].chars().next().unwrap_or('?')));
            }
        }
    }
    found.sort();
    found
}

/// Every process whose parent is `pid`, with its state letter (Z for a zombie).
pub fn children(pid: i32) -> Vec<(i32, char)> {
    processes_where(1, pid)
}

/// Every process in the process group `pgid` (a test's start_server leads its own).
pub fn group_members(pgid: i32) -> Vec<i32> {
    processes_where(2, pgid).into_iter().map(|p| p.0).collect()
}

/// The command name of `pid` (/proc/PID/comm).
pub fn comm(pid: i32) -> Option<String> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(comm.trim_end().to_string())
}

/// utime + stime of `pid`, in seconds.
pub fn cpu_seconds(pid: i32) -> f64 {
    let fields = stat_fields(pid).expect("/proc/PID/stat");
    // utime and stime are fields 14 and 15 of the whole line; 3 is the state, [0] here.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / hz
}

/// A worker's environment variable, from /proc.
pub fn worker_env(pid: i32, key: &str) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ
        .split(|&b| b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok())
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(String::from))
}

/// The pids of `children(pid)`.
pub fn child_pids(pid: i32) -> Vec<i32> {
    children(pid).into_iter().map(|c| c.0).collect()
}

pub fn ppid(pid: i32) -> Option<i32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// Once `pid` has settled (no context switch across 200 ms), how many it makes in
/// the `window` that follows: 0 for a process asleep until an event comes.
pub fn idle_context_switches(pid: i32, window: Duration) -> u64 {
    let mut last = context_switches(pid);
    wait_until("the process to settle", || {
        thread::sleep(Duration::from_millis(200));
        let now = context_switches(pid);
        std::mem::replace(&mut last, now) == now
    });
    let before = context_switches(pid);
    // The measurement window.
    thread::sleep(window);
    context_switches(pid) - before
}

/// Private memory of `pid` (clean and dirty, from smaps_rollup), in kB.
pub fn private_kb(pid: i32) -> u64 {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    rollup
        .lines()
        .filter(|l| l.starts_with("Private_"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// Voluntary plus involuntary context switches of `pid` so far: how often it woke up.
pub fn context_switches(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .filter(|l| l.contains("ctxt_switches:"))
        .filter_map(|l| l.split(':').nth(1)?.trim().parse::<u64>().ok())
        .sum()
}

/// Kills, when dropped, the processes in `pids` that are still alive and still in the
/// process group `pgid` (start_server's): a failed test leaves nothing running, and a
/// reused pid is never hit.
pub struct Leftovers {
    pgid: i32,
    pids: Mutex<Vec<i32>>,
}

impl Leftovers {
    pub fn new(pgid: i32) -> Leftovers {
        Leftovers {
            pgid,
            pids: Mutex::new(Vec::new()),
        }
    }

    pub fn watch(&self, pid: i32) {
        self.pids.lock().unwrap().push(pid);
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        for &pid in self.pids.lock().unwrap().iter() {
            // SAFETY: getpgid and kill have no memory-safety preconditions.
            if pid_alive(pid) && unsafe { libc::getpgid(pid) } == self.pgid {
                signal(pid, libc::SIGKILL);
            }
        }
    }
}

/// A pid that a worker script wrote to `path` (by rename, so never half-written).
pub fn wait_pid_file(path: &Path) -> i32 {
    wait_for(&format!("a pid in {}", path.display()), || {
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    })
}

/// start_server (`--interval=0.1`, a status file) running tests/workers/fork_child.sh:
/// its worker forks a child of its own, start_server's grandchild.
pub struct ForkChild {
    pub server: Server,
    /// Both pids below are watched.
    pub leftovers: Leftovers,
    pub status: PathBuf,
    /// Where each worker writes its child's pid.
    pub grandchild_file: PathBuf,
    pub worker: i32,
    pub grandchild: i32,
}

impl ForkChild {
    pub fn start(dir: &TempDir) -> ForkChild {
        let status = dir.path().join("status");
        let grandchild_file = dir.path().join("grandchild.pid");
        let server = Server::start_with(
            &[
                "--interval=0.1",
                &format!("--status-file={}", status.display()),
                "--",
                "sh",
                &worker_script("fork_child.sh"),
            ],
            &[("GRANDCHILD_PID_FILE", grandchild_file.to_str().unwrap())],
        );
        let leftovers = Leftovers::new(server.pid());
        let worker = server.wait_status(&status, &[1])[0].1;
        leftovers.watch(worker);
        let grandchild = wait_pid_file(&grandchild_file);
        leftovers.watch(grandchild);
        ForkChild {
            server,
            leftovers,
            status,
            grandchild_file,
            worker,
            grandchild,
        }
    }
}

// ------------------------------------------------------------------ PID namespaces

/// Why start_server cannot be PID 1 of a new PID namespace here, if it cannot.
pub fn no_pid_namespace() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    match Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .output()
    {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "unshare --pid --fork --mount-proc failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!("unshare: {e}")),
    }
}

/// The pid of `pid` in its own PID namespace (the last of /proc/PID/status's NSpid).
pub fn pid_in_namespace(pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    line.split_whitespace().last()?.parse().ok()
}

/// The child of `parent` known as `inner` inside the namespace.
pub fn child_known_as(parent: i32, inner: i32) -> i32 {
    wait_for(
        &format!("pid {inner} among the children of {parent}"),
        || {
            children(parent)
                .into_iter()
                .map(|(pid, _)| pid)
                .find(|&pid| pid_in_namespace(pid) == Some(inner))
        },
    )
}

/// start_server as `unshare` runs it: its pid outside the namespace, once it has
/// blocked its signals (it has started a worker). Before that, PID 1 would drop the
/// signals from outside: a namespace's init gets none it has not asked for.
pub fn namespace_init(server: &Server) -> i32 {
    server.wait_line("starting new worker");
    let init = wait_for("unshare's child", || {
        child_pids(server.pid()).first().copied()
    });
    assert_eq!(pid_in_namespace(init), Some(1));
    init
}

/// A command that runs `program` as systemd passes it a socket: `fd` at descriptor 3,
/// `LISTEN_FDS=1`, and `LISTEN_PID` the pid that execs it (through `sh`). Arguments
/// added to the command go to `program`.
pub fn socket_activated_command(program: &Path, fd: std::os::unix::io::RawFd) -> Command {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "LISTEN_PID=$$ exec \"$@\"", "sh"])
        .arg(program)
        .env("LISTEN_FDS", "1");
    // SAFETY: between fork and exec only dup2(2) and fcntl(2), which are
    // async-signal-safe; `fd` stays open in the caller until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            let ok = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0) != -1
            } else {
                libc::dup2(fd, 3) != -1
            };
            if ok {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    cmd
}
