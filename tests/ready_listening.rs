//! `--ready=listening`, through the built binary, with real servers from Debian run
//! unchanged (h2o, Starlet, gunicorn, Node, HAProxy, a Python asyncio server, the C
//! and Go examples): each is restarted under load with no failed request, and the old
//! generation is signalled only once the new one waits for connections, which
//! start_server sees in /proc. A server that loads for longer than `--interval` is
//! switched to once it has loaded, not at the interval; one that registers its
//! listener early but is busy is not ready until it waits. A program a test needs
//! that is not installed skips that test, saying so.

mod common;
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use common::TempDir;
use support::*;

/// A Python asyncio HTTP server on the socket start_server hands it, ready `DELAY`
/// seconds after it starts (a slow loader: it sleeps before it sets its listener up,
/// and stamps `STAMP.GENERATION` just before it does). It accepts in a reader callback
/// of its own, which serves every connection it accepts: asyncio's `start_server` and
/// `sock_accept` can accept a connection as they are stopped and drop it (a reset per
/// restart or so under load, in interval mode as well).
const ASYNCIO: &str = r#"
import asyncio, os, signal, socket, time
generation = os.environ["SERVER_STARTER_GENERATION"].encode()
active = 0
async def handle(loop, conn):
    global active
    try:
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = await loop.sock_recv(conn, 65536)
            if not chunk:
                break
            request += chunk
        body = b"hello from pid %d generation %s\n" % (os.getpid(), generation)
        await loop.sock_sendall(conn, b"HTTP/1.0 200 OK\r\nConnection: close\r\n\r\n" + body)
    finally:
        conn.close()
        active -= 1
async def main():
    global active
    time.sleep(float(os.environ.get("DELAY", "0")))
    loop = asyncio.get_running_loop()
    listener = socket.socket(fileno=int(os.environ["SERVER_STARTER_PORT"].split("=")[-1]))
    listener.setblocking(False)
    open(os.environ["STAMP"] + "." + generation.decode(), "w").close()
    def accept():
        # Every connection accepted here is served: none is dropped at the stop.
        global active
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return
        conn.setblocking(False)
        active += 1
        asyncio.ensure_future(handle(loop, conn))
    loop.add_reader(listener.fileno(), accept)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    loop.remove_reader(listener.fileno())
    while active:
        await asyncio.sleep(0.05)
asyncio.run(main())
"#;

/// Node's http server, listening `DELAY_MS` after it starts (its event loop runs
/// meanwhile, without the listener), stamping as the asyncio one does.
const NODE: &str = r#"
const http = require('http');
const fs = require('fs');
const fd = Number(process.env.SERVER_STARTER_PORT.split('=').pop());
const generation = process.env.SERVER_STARTER_GENERATION;
const server = http.createServer((req, res) => {
  res.setHeader('Connection', 'close');
  res.end(`hello from pid ${process.pid} generation ${generation}\n`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
setTimeout(() => {
  fs.writeFileSync(`${process.env.STAMP}.${generation}`, '');
  server.listen({ fd });
}, Number(process.env.DELAY_MS));
"#;

/// A server that registers its listener in an epoll set at once, then is busy for
/// `BUSY` seconds (loading) before it waits on that set: the interest is there all
/// along, the waiting thread only afterwards.
const BUSY: &str = r#"
import os, select, signal, socket, time
generation = os.environ["SERVER_STARTER_GENERATION"].encode()
fd = int(os.environ["SERVER_STARTER_PORT"].split("=")[-1])
listener = socket.socket(fileno=fd)
listener.setblocking(False)
poller = select.epoll()
poller.register(fd, select.EPOLLIN)
stopping = []
signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
time.sleep(float(os.environ["BUSY"]))
while not stopping:
    for _ in poller.poll(0.1):
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            continue
        conn.setblocking(True)
        conn.recv(65536)
        conn.sendall(b"HTTP/1.0 200 OK\r\n\r\nhello from pid %d generation %s\n" % (os.getpid(), generation))
        conn.close()
"#;

/// Starlet's application.
const PSGI: &str = "sub { [200, ['Content-Type' => 'text/plain'], \
    [\"hello from pid $$ generation $ENV{SERVER_STARTER_GENERATION}\\n\"]] }\n";

/// gunicorn's application.
const WSGI: &str = "import os\n\
    def app(environ, start_response):\n\
    \x20   start_response('200 OK', [('Content-Type', 'text/plain')])\n\
    \x20   return [b'hello from pid %d generation %s\\n' % (os.getpid(), os.environ['SERVER_STARTER_GENERATION'].encode())]\n";

/// h2o, configured for the port given as `$1`, which it finds in SERVER_STARTER_PORT
/// by itself, serving a file that names the generation.
const H2O: &str = r#"
dir=$(mktemp -d)
chmod 755 "$dir"
printf 'hello from pid %s generation %s\n' $$ "$SERVER_STARTER_GENERATION" > "$dir/index.txt"
cat > "$dir/h2o.conf" <<CONF
user: $(id -un)
listen:
  host: 127.0.0.1
  port: $1
hosts:
  default:
    paths:
      /:
        file.dir: $dir
        file.index: [index.txt]
CONF
exec h2o -c "$dir/h2o.conf"
"#;

/// HAProxy in master-worker mode, on the inherited descriptor 3, answering itself.
const HAPROXY: &str = r#"
dir=$(mktemp -d)
cat > "$dir/haproxy.cfg" <<CONF
global
    master-worker
defaults
    mode http
    timeout connect 5s
    timeout client 10s
    timeout server 10s
frontend web
    bind fd@3
    http-request return status 200 content-type text/plain string "hello from pid $$ generation $SERVER_STARTER_GENERATION\n"
CONF
exec haproxy -W -f "$dir/haproxy.cfg"
"#;

/// A server under test: what it needs installed, how it is run.
struct Subject<'a> {
    /// Programs that must be on PATH (else the test skips).
    needs: &'a [&'a str],
    /// Files written to the test's directory: (name, contents).
    files: &'a [(&'a str, &'a str)],
    /// The command, given the port and the directory (its files, `stamp`).
    command: &'a dyn Fn(u16, &Path) -> Vec<String>,
    env: &'a [(&'a str, &'a str)],
    /// Start_server's options for it besides the readiness (how it is told to stop
    /// gracefully).
    options: &'a [&'a str],
    /// How long it loads before it waits for connections, if it stamps the moment
    /// (`stamp.GENERATION` in its directory).
    delay: Option<Duration>,
}

/// Python from Debian, not a user's own installation.
fn python() -> String {
    match Path::new("/usr/bin/python3").exists() {
        true => "/usr/bin/python3".into(),
        false => "python3".into(),
    }
}

fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

fn missing(needs: &[&str]) -> Option<String> {
    let missing: Vec<&str> = needs.iter().copied().filter(|p| !have(p)).collect();
    (!missing.is_empty()).then(|| missing.join(", "))
}

/// Starts `subject` under `--ready=listening --interval=1`, then restarts it under
/// load: the old worker lives on, unsignalled, until start_server has seen the new
/// one wait for connections; the switch comes no sooner than the server's own
/// delay; no request fails. Returns how long after the HUP the new generation was
/// declared running.
fn restart_under_load(what: &str, subject: Subject) -> Option<Duration> {
    if let Some(missing) = missing(subject.needs) {
        eprintln!("skipped {what}: not installed: {missing}");
        return None;
    }
    let dir = TempDir::new("listening");
    for (name, contents) in subject.files {
        std::fs::write(dir.path().join(name), contents).unwrap();
    }
    let stamp = dir.path().join("stamp");
    let stamp_env = stamp.display().to_string();
    let mut env = subject.env.to_vec();
    env.push(("STAMP", &stamp_env));
    let (mut server, port) = Server::start_retrying(
        |port| {
            let mut args = strings(&["--ready=listening", "--interval=1", "--kill-timeout=20"]);
            args.push(format!("--port=127.0.0.1:{port}"));
            args.extend(strings(subject.options));
            args.push("--".into());
            args.extend((subject.command)(port, dir.path()));
            args
        },
        &env,
    );
    let addr = addr("127.0.0.1", port);
    let old = worker_pid(&server, 1);
    server.wait_line(&format!("new worker {old} waits for connections"));
    wait_generation(addr, 1);
    let load = Load::start(addr, 4);
    load.wait_more(20);
    let hup = Instant::now();
    server.signal(libc::SIGHUP);
    let new = worker_pid(&server, 2);
    let running = wait_for("the new generation to be declared running", || {
        // One reading of the log (and of the stamp) per look: what it says held then.
        let stamped = stamp.with_extension("2").exists();
        let alive = pid_alive(old);
        let lines = server.lines();
        if let Some(at) = lines
            .iter()
            .position(|l| l.contains("new worker is now running"))
        {
            let waits = format!("new worker {new} waits for connections");
            assert!(
                lines[..at].iter().any(|l| l.contains(&waits)),
                "declared running before it was seen waiting: {lines:?}"
            );
            assert!(
                subject.delay.is_none() || stamped,
                "declared running before the server set its listener up: {lines:?}"
            );
            return Some(hup.elapsed());
        }
        assert!(
            alive,
            "old worker {old} died before the new one waited: {lines:?}"
        );
        assert!(
            !lines.iter().any(|l| l.contains("killing old workers")),
            "{lines:?}"
        );
        None
    });
    if let Some(delay) = subject.delay {
        assert!(
            running >= delay,
            "declared running {running:?} after the HUP, before its {delay:?} of loading"
        );
    }
    wait_generation(addr, 2);
    server.wait_line(&format!("old worker {old} died"));
    load.wait_more(20);
    let generations = load.finish_without_failures();
    assert!(generations.contains(&1) && generations.contains(&2));
    server.stop();
    eprintln!("{what}: declared running {running:?} after the HUP");
    Some(running)
}

/// The pid of the `n`-th worker start_server spawned, from its log.
fn worker_pid(server: &Server, n: usize) -> i32 {
    let line = server.wait_nth_line("starting new worker ", n);
    let pid = line.rsplit(' ').next().unwrap_or_default();
    pid.parse().unwrap_or_else(|_| panic!("no pid in {line:?}"))
}

#[test]
fn h2o() {
    restart_under_load(
        "h2o",
        Subject {
            needs: &["h2o"],
            files: &[("h2o.sh", H2O)],
            command: &|port, dir| {
                let script = dir.join("h2o.sh").display().to_string();
                vec!["sh".into(), script, port.to_string()]
            },
            env: &[],
            options: &[],
            delay: None,
        },
    );
}

/// Starlet forks its workers, which block in accept(2): seen in a descendant.
#[test]
fn starlet_prefork() {
    restart_under_load(
        "Starlet",
        Subject {
            needs: &["plackup"],
            files: &[("app.psgi", PSGI)],
            command: &|_, dir| {
                let app = dir.join("app.psgi").display().to_string();
                let mut cmd = strings(&["plackup", "-s", "Starlet", "--max-workers=4"]);
                cmd.push(app);
                cmd
            },
            env: &[],
            options: &[],
            delay: None,
        },
    );
}

#[test]
fn python_asyncio_with_a_start_up_delay() {
    restart_under_load(
        "asyncio",
        Subject {
            needs: &["python3"],
            files: &[("server.py", ASYNCIO)],
            command: &|_, dir| vec![python(), dir.join("server.py").display().to_string()],
            env: &[("DELAY", "1.5")],
            options: &[],
            delay: Some(Duration::from_millis(1500)),
        },
    );
}

#[test]
fn node_with_a_start_up_delay() {
    restart_under_load(
        "node",
        Subject {
            needs: &["node"],
            files: &[("server.js", NODE)],
            command: &|_, dir| vec!["node".into(), dir.join("server.js").display().to_string()],
            env: &[("DELAY_MS", "1500")],
            options: &[],
            delay: Some(Duration::from_millis(1500)),
        },
    );
}

/// gunicorn's sync workers wait in select(2) on the listener.
#[test]
fn gunicorn_sync_workers() {
    restart_under_load(
        "gunicorn",
        Subject {
            needs: &["gunicorn", "python3"],
            files: &[("app.py", WSGI)],
            command: &|_, dir| {
                let mut cmd = strings(&["gunicorn", "--bind=fd://3", "--workers=2"]);
                cmd.push(format!("--chdir={}", dir.display()));
                cmd.push("app:app".into());
                cmd
            },
            env: &[],
            options: &[],
            delay: None,
        },
    );
}

#[test]
fn haproxy_master_worker() {
    restart_under_load(
        "HAProxy",
        Subject {
            needs: &["haproxy"],
            files: &[("haproxy.sh", HAPROXY)],
            command: &|_, dir| vec!["sh".into(), dir.join("haproxy.sh").display().to_string()],
            env: &[],
            // Its graceful stop (TERM is its hard stop, which resets connections).
            options: &["--signal-on-hup=USR1"],
            delay: None,
        },
    );
}

/// The C example waits in poll(2), the Go one in the Go runtime's epoll_pwait(2).
#[test]
fn c_and_go_examples() {
    let c = common::example("http-static").display().to_string();
    restart_under_load(
        "the C example",
        Subject {
            needs: &[],
            files: &[],
            command: &|_, _| vec![c.clone()],
            env: &[],
            options: &[],
            delay: None,
        },
    );
    let go = common::repo_root().join("build/examples/go-worker");
    if !go.exists() {
        eprintln!("skipped the Go example: {} is not built", go.display());
        return;
    }
    let go = go.display().to_string();
    restart_under_load(
        "the Go example",
        Subject {
            needs: &[],
            files: &[],
            command: &|_, _| vec![go.clone()],
            env: &[],
            options: &[],
            delay: None,
        },
    );
}

/// A server that sleeps 2 s before it accepts (the C example, loading), under
/// `--interval=1`: switched to after its 2 s, not after the interval's 1 s.
#[test]
fn a_server_that_sleeps_two_seconds_is_switched_to_after_two_seconds() {
    let c = common::example("http-static").display().to_string();
    let running = restart_under_load(
        "a server loading for 2 s",
        Subject {
            needs: &[],
            files: &[],
            command: &|_, _| vec![c.clone()],
            env: &[("EXAMPLE_READY_DELAY_MS", "2000")],
            options: &[],
            delay: None,
        },
    );
    let running = running.expect("the C example needs nothing installed");
    assert!(
        running >= Duration::from_secs(2),
        "switched to {running:?} after the HUP, before the server had loaded"
    );
}

/// A server that registers its listener in an epoll set at once and then loads for
/// 2 s is not ready while it loads: the interest is there, no thread waits.
#[test]
fn a_listener_registered_early_by_a_busy_server_is_not_ready() {
    let running = restart_under_load(
        "a busy server with its listener registered",
        Subject {
            needs: &["python3"],
            files: &[("busy.py", BUSY)],
            command: &|_, dir| vec![python(), dir.join("busy.py").display().to_string()],
            env: &[("BUSY", "2")],
            options: &[],
            delay: None,
        },
    );
    if let Some(running) = running {
        assert!(
            running >= Duration::from_secs(2),
            "switched to {running:?} after the HUP, while it was still busy"
        );
    }
}

/// Without a socket to watch, `--ready=listening` is refused in one line.
#[test]
fn no_socket_to_watch_is_refused() {
    let out = run_within(&["--ready=listening", "--", "true"], PATIENCE_SHORT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        stderr.contains("--ready=listening: no socket to watch"),
        "{stderr}"
    );
    let out = run_within(
        &["--ready=listen", "--port=0", "--", "true"],
        PATIENCE_SHORT,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        stderr.contains("invalid --ready value \"listen\": expected interval, notify or listening"),
        "{stderr}"
    );
}

const PATIENCE_SHORT: Duration = Duration::from_secs(10);

/// A worker that /proc cannot show to start_server (start_server runs as nobody, the
/// worker makes itself non-dumpable): said in one line, and the worker counts as
/// started after `--interval`, as without the option.
#[test]
fn a_worker_proc_cannot_show_falls_back_to_the_interval() {
    if !is_root() || !have("setpriv") {
        eprintln!("skipped: needs root and setpriv, to run start_server as another user");
        return;
    }
    let dir = TempDir::new("blind");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let script = dir.path().join("server.py");
    // prctl(PR_SET_DUMPABLE, 0), then the asyncio server.
    let hidden = format!("import ctypes\nctypes.CDLL(None).prctl(4, 0)\n{ASYNCIO}");
    std::fs::write(&script, hidden).unwrap();
    let stamp = dir.path().join("stamp").display().to_string();
    let bin = start_server_bin().display().to_string();
    let script = script.display().to_string();
    let python = python();
    let (mut server, port) = Server::start_program_retrying(
        Path::new("setpriv"),
        |port| {
            let mut args = strings(&["--reuid=65534", "--regid=65534", "--clear-groups"]);
            args.push(bin.clone());
            args.push(format!("--port=127.0.0.1:{port}"));
            args.extend(strings(&["--ready=listening", "--interval=1", "--"]));
            args.push(python.clone());
            args.push(script.clone());
            args
        },
        &[("STAMP", &stamp), ("DELAY", "0")],
    );
    let line = server.wait_line("cannot tell whether new worker");
    assert!(
        line.contains("counts as started once it has run for --interval (1 secs)"),
        "{line}"
    );
    wait_generation(addr("127.0.0.1", port), 1);
    server.signal(libc::SIGHUP);
    server.wait_line("new worker is now running");
    server.stop();
}

/// With `--workers=2`, each new worker is looked at on its own: the old generation is
/// signalled once both have been seen waiting.
#[test]
fn each_of_several_workers_is_seen_waiting() {
    if let Some(missing) = missing(&["python3"]) {
        eprintln!("skipped: not installed: {missing}");
        return;
    }
    let dir = TempDir::new("listening-workers");
    let script = dir.path().join("server.py");
    std::fs::write(&script, ASYNCIO).unwrap();
    let stamp = dir.path().join("stamp").display().to_string();
    let script = script.display().to_string();
    let (mut server, port) = Server::start_retrying(
        |port| {
            let mut args = strings(&["--ready=listening", "--workers=2", "--interval=1"]);
            args.push(format!("--port=127.0.0.1:{port}"));
            args.extend([String::from("--"), python(), script.clone()]);
            args
        },
        &[("STAMP", &stamp), ("DELAY", "0.5")],
    );
    let addr = addr("127.0.0.1", port);
    wait_generation(addr, 1);
    let load = Load::start(addr, 4);
    load.wait_more(20);
    server.signal(libc::SIGHUP);
    let new = [worker_pid(&server, 3), worker_pid(&server, 4)];
    server.wait_line("new worker is now running");
    let lines = server.lines();
    let running = lines
        .iter()
        .position(|l| l.contains("new worker is now running"))
        .unwrap();
    for pid in new {
        let waits = format!("new worker {pid} waits for connections");
        assert!(
            lines[..running].iter().any(|l| l.contains(&waits)),
            "{pid} not seen waiting before the switch: {lines:?}"
        );
    }
    wait_generation(addr, 2);
    load.wait_more(20);
    load.finish_without_failures();
    server.stop();
}

/// A worker with only a UDP socket (the C echo example, loading 1.5 s) is seen
/// waiting on it in poll(2) as well: switched to once it has loaded.
#[test]
fn a_udp_only_worker_is_seen_waiting() {
    let echo = common::example("echo-static").display().to_string();
    let (mut server, port) = Server::start_retrying(
        |port| {
            let mut args = strings(&["--ready=listening", "--interval=1"]);
            args.push(format!("--port=127.0.0.1:u{port}"));
            args.extend([String::from("--"), echo.clone()]);
            args
        },
        &[("EXAMPLE_READY_DELAY_MS", "1500")],
    );
    let first = worker_pid(&server, 1);
    server.wait_line(&format!("new worker {first} waits for connections"));
    let to = addr("127.0.0.1", port);
    common::udp_echo_eventually(to, b"first");
    let hup = Instant::now();
    server.signal(libc::SIGHUP);
    let second = worker_pid(&server, 2);
    let line = server.wait_line("new worker is now running");
    let running = hup.elapsed();
    assert!(line.contains(&first.to_string()), "{line}");
    assert!(
        running >= Duration::from_millis(1500),
        "switched to {running:?} after the HUP, before the worker had loaded"
    );
    let waits = server.wait_line(&format!("new worker {second} waits for connections"));
    assert!(waits.contains("poll on socket:["), "{waits}");
    server.wait_line(&format!("old worker {first} died"));
    common::udp_echo_eventually(to, b"second");
    server.stop();
}

/// /proc is looked at only while a worker starts: once it has, start_server sleeps
/// (no context switch across half a second), before and after a restart.
#[test]
fn no_look_once_started() {
    let c = common::example("http-static").display().to_string();
    let (mut server, port) = Server::start_retrying(
        |port| {
            let mut args = strings(&["--ready=listening", "--interval=1"]);
            args.push(format!("--port=127.0.0.1:{port}"));
            args.extend([String::from("--"), c.clone()]);
            args
        },
        &[],
    );
    let idle = || {
        let mut last = context_switches(server.pid());
        wait_until("start_server to be idle", || {
            std::thread::sleep(Duration::from_millis(500));
            let now = context_switches(server.pid());
            std::mem::replace(&mut last, now) == now
        });
    };
    let first = worker_pid(&server, 1);
    server.wait_line(&format!("new worker {first} waits for connections"));
    idle();
    server.signal(libc::SIGHUP);
    server.wait_line("new worker is now running");
    server.wait_line(&format!("old worker {first} died"));
    idle();
    wait_generation(addr("127.0.0.1", port), 2);
    server.stop();
}
