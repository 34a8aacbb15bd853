//! `start_server --status` (a table, or JSON checked against the schema start_server(1)
//! documents), its exit statuses as a health probe, and `--log-format`: through the
//! built binary, the Perl test worker, real sockets.

mod common;
mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{TempDir, PATIENCE};
use support::*;

/// What start_server(1) documents for `--status`'s exit statuses.
const SERVING: i32 = 0;
const NOT_SERVING: i32 = 2;
const NOT_RUNNING: i32 = 3;
const REFUSED: i32 = 4;
const NO_ANSWER: i32 = 5;

/// start_server with `--pid-file` in `dir`, on a free port, running the Perl test
/// worker (`worker`: another copy of it) with `extra` options and `env`.
fn start(
    dir: &TempDir,
    extra: &[&str],
    env: &[(&str, &str)],
    worker: Option<&Path>,
) -> (Server, SocketAddr) {
    let pid_file = dir.path().join("pid");
    let worker = worker.map_or_else(perl_worker, Path::to_path_buf);
    let (server, port) = Server::start_retrying(
        |port| {
            let mut args = vec![
                format!("--port=127.0.0.1:{port}"),
                format!("--pid-file={}", pid_file.display()),
            ];
            args.extend(extra.iter().map(|s| s.to_string()));
            args.push("--".into());
            args.push(worker.display().to_string());
            args
        },
        env,
    );
    (server, addr("127.0.0.1", port))
}

/// `start_server --status[=json] --pid-file=DIR/pid`, run by `wrapper` if any.
fn status_through(wrapper: &[&str], dir: &TempDir, json: bool) -> Output {
    let bin = start_server_bin().display().to_string();
    let mode = if json { "--status=json" } else { "--status" };
    let pid_file = format!("--pid-file={}", dir.path().join("pid").display());
    let mut all: Vec<&str> = wrapper.to_vec();
    all.extend([bin.as_str(), mode, pid_file.as_str()]);
    let mut cmd = Command::new(all[0]);
    cmd.args(&all[1..]);
    run_command_within(cmd, PATIENCE)
}

fn status(dir: &TempDir, json: bool) -> Output {
    status_through(&[], dir, json)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The documented schema (start_server(1), STATUS), checked by Python's json module:
/// every field there, of its type, and none that is not documented. Prints the
/// fields a test asks for (`path.to.field`, one a line) as JSON.
const SCHEMA_CHECK: &str = r#"
import json, re, sys
doc = json.loads(sys.stdin.read())
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
def time(v): return isinstance(v, str) and TIME.match(v)
def opt(check): return lambda v: v is None or check(v)
def integer(v): return isinstance(v, int) and not isinstance(v, bool)
def one_of(*names): return lambda v: v in names
def string(v): return isinstance(v, str)
def boolean(v): return isinstance(v, bool)
def number_or_string(v): return isinstance(v, (int, float, str)) and not isinstance(v, bool)
def exit_status(v):
    return isinstance(v, dict) and len(v) == 1 and (integer(v.get("code")) or integer(v.get("signal")))
def obj(fields):
    def check(v):
        if not isinstance(v, dict): return False
        if set(v) != set(fields): raise SystemExit(f"fields {sorted(v)} != {sorted(fields)}")
        for k, c in fields.items():
            if not c(v[k]): raise SystemExit(f"{k}: {v[k]!r}")
        return True
    return check
def array(check): return lambda v: isinstance(v, list) and all(check(x) for x in v)
def options(v): return isinstance(v, dict) and all(number_or_string(x) for x in v.values())
SCHEMA = obj({
    "version": lambda v: v == 1,
    "pid": integer, "start_server_version": string, "build": string,
    "started": time, "uptime_ms": integer,
    "state": one_of("running", "restarting", "upgrading", "stopping"),
    "serving": boolean, "options": options, "generation": integer,
    "generations": array(obj({"generation": integer,
                              "state": one_of("starting", "canary", "serving", "draining")})),
    "workers": array(obj({
        "pid": integer, "generation": integer, "slot": opt(integer),
        "state": one_of("starting", "canary", "ready", "draining"), "since": time,
        "refills": opt(integer), "last_exit": opt(exit_status),
        "executable": opt(string), "executable_changed": opt(boolean)})),
    "last_restart": opt(obj({
        "began": time, "verdict": one_of("under way", "retrying", "failed", "ok"),
        "generation": opt(integer), "at": opt(time), "reason": opt(string)})),
    "next_try": opt(time), "next_auto_restart": opt(time),
    "upgrade": opt(obj({"began": time, "phase": one_of("checking", "passed", "executing")})),
})
SCHEMA(doc)
for path in sys.argv[1:]:
    v = doc
    for key in path.split("."):
        if isinstance(v, list):
            v = v[int(key)] if int(key) < len(v) else None
        elif isinstance(v, dict):
            v = v[key]
    print(json.dumps(v))
"#;

/// `--status=json`'s document checked against the schema; the values at `paths`.
fn status_json(dir: &TempDir, paths: &[&str]) -> (i32, Vec<String>) {
    let out = status(dir, true);
    let code = out.status.code().expect("an exit status");
    let mut python = Command::new("python3")
        .arg("-c")
        .arg(SCHEMA_CHECK)
        .args(paths)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    python.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    let checked = python.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "the document does not follow the schema: {}\n{}",
        text(&checked.stderr),
        text(&out.stdout)
    );
    let values = text(&checked.stdout).lines().map(String::from).collect();
    (code, values)
}

/// Asks until `probe` (given the exit status and the values at `paths`) is satisfied.
fn wait_status(
    dir: &TempDir,
    paths: &[&str],
    what: &str,
    probe: impl Fn(i32, &[String]) -> bool,
) -> Vec<String> {
    wait_for(what, || {
        let (code, values) = status_json(dir, paths);
        probe(code, &values).then_some(values)
    })
}

/// The one stderr line a failing `--status` says.
fn one_line(out: &Output) -> String {
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err:?}");
    err
}

#[test]
fn during_a_slow_start_nothing_serves_yet() {
    let dir = TempDir::new("st-slow");
    let (mut server, _) = start(&dir, &["--ready=notify"], &[("READY_DELAY", "60")], None);
    server.wait_line("starting new worker");
    let values = wait_status(
        &dir,
        &["serving", "generations", "workers.0.state", "state"],
        "generation 1 starting",
        |code, v| code == NOT_SERVING && v[2] == "\"starting\"",
    );
    assert_eq!(values[0], "false");
    assert_eq!(values[1], r#"[{"generation": 1, "state": "starting"}]"#);
    let out = status(&dir, false);
    assert_eq!(out.status.code(), Some(NOT_SERVING));
    assert!(one_line(&out).contains("no started generation serves"));
    let table = text(&out.stdout);
    assert!(table.contains("generations: 1 starting"), "{table}");
    server.stop();
}

#[test]
fn after_a_failed_restart_the_verdict_and_its_reason() {
    let dir = TempDir::new("st-failed");
    // Generation 2 exits 3 at once; its retry is 60 s away.
    let (mut server, addr) = start(
        &dir,
        &["--ready=notify", "--interval=60"],
        &[("FAIL_GENERATIONS", "2")],
        None,
    );
    wait_generation(addr, 1);
    server.signal(libc::SIGHUP);
    server.wait_line("seems to have failed to start");
    let values = wait_status(
        &dir,
        &["last_restart", "next_try", "generations"],
        "the failed restart's verdict",
        |code, v| code == SERVING && v[0] != "null" && v[0].contains("retrying"),
    );
    assert!(values[0].contains(r#""generation": 2"#), "{}", values[0]);
    assert!(
        values[0].contains(r#""reason": "exited with status 3""#),
        "{}",
        values[0]
    );
    assert_ne!(values[1], "null", "the next try is due");
    assert_eq!(values[2], r#"[{"generation": 1, "state": "serving"}]"#);
    let table = text(&status(&dir, false).stdout);
    assert!(
        table.contains("retrying (generation 2): exited with status 3"),
        "{table}"
    );
    assert!(table.contains("next try: "), "{table}");
    server.stop();
}

#[test]
fn after_a_worker_crash_its_slot_was_refilled() {
    let dir = TempDir::new("st-crash");
    let (mut server, addr) = start(&dir, &["--ready=notify"], &[], None);
    let first = wait_generation(addr, 1);
    let values = wait_status(
        &dir,
        &["workers.0.refills", "workers.0.last_exit"],
        "a ready worker",
        |c, _| c == SERVING,
    );
    assert_eq!(values, ["0", "null"]);
    signal(first, libc::SIGKILL);
    server.wait_line(&format!("worker {first} died unexpectedly"));
    let values = wait_status(
        &dir,
        &[
            "workers.0.refills",
            "workers.0.last_exit",
            "workers.0.slot",
            "workers.0.pid",
        ],
        "the refilled slot serving",
        |code, v| code == SERVING && v[0] == "1",
    );
    assert_eq!(values[1], r#"{"signal": 9}"#);
    assert_eq!(values[2], "1");
    assert_ne!(values[3], first.to_string());
    server.stop();
}

#[test]
fn a_worker_whose_executable_was_replaced_is_marked_stale() {
    let dir = TempDir::new("st-stale");
    let worker = dir.path().join("worker.pl");
    std::fs::copy(perl_worker(), &worker).unwrap();
    let (mut server, addr) = start(&dir, &["--ready=notify"], &[], Some(&worker));
    wait_generation(addr, 1);
    let path = worker.display().to_string();
    let values = wait_status(
        &dir,
        &["workers.0.executable", "workers.0.executable_changed"],
        "a ready worker",
        |c, _| c == SERVING,
    );
    assert_eq!(values, [format!("{path:?}"), "false".to_string()]);
    // A deploy: a new file renamed over the old one.
    let next = dir.path().join("worker.pl.new");
    std::fs::copy(perl_worker(), &next).unwrap();
    std::fs::rename(&next, &worker).unwrap();
    let (_, values) = status_json(&dir, &["workers.0.executable_changed"]);
    assert_eq!(values, ["true"]);
    let table = text(&status(&dir, false).stdout);
    assert!(
        table.contains(&format!("{path} (changed on disk)")),
        "{table}"
    );
    // The next generation runs the file now there.
    server.signal(libc::SIGHUP);
    wait_generation(addr, 2);
    wait_status(
        &dir,
        &["workers.0.executable_changed", "workers.0.generation"],
        "generation 2 alone",
        |c, v| c == SERVING && v == ["false", "2"],
    );
    server.stop();
}

/// `--canary`: the restart's first worker on trial shows as the canary, beside the
/// old generation serving.
#[test]
fn a_canary_on_trial() {
    let dir = TempDir::new("st-canary");
    let (mut server, addr) = start(
        &dir,
        &["--ready=notify", "--workers=2", "--canary=60"],
        &[],
        None,
    );
    wait_generation(addr, 1);
    server.signal(libc::SIGHUP);
    let values = wait_status(
        &dir,
        &["generations", "workers"],
        "a canary on trial",
        |code, v| code == SERVING && v[1].contains(r#""state": "canary""#),
    );
    assert_eq!(
        values[0],
        r#"[{"generation": 1, "state": "serving"}, {"generation": 2, "state": "canary"}]"#
    );
    let table = text(&status(&dir, false).stdout);
    assert!(
        table.contains("generations: 1 serving, 2 canary"),
        "{table}"
    );
    server.stop();
}

#[test]
fn another_user_is_refused() {
    if !is_root() || !have("setpriv") {
        eprintln!("skipped: needs root and setpriv to ask as the user nobody");
        return;
    }
    let dir = TempDir::new("st-uid");
    let (mut server, addr) = start(&dir, &["--ready=notify"], &[], None);
    wait_generation(addr, 1);
    // Nobody may read the pid file, as anyone may in /run: the instance refuses.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let nobody = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ];
    let out = status_through(&nobody, &dir, false);
    assert_eq!(out.status.code(), Some(REFUSED), "{}", text(&out.stderr));
    let err = one_line(&out);
    assert!(err.contains("refuses its status from uid 65534"), "{err}");
    assert!(out.stdout.is_empty());
    server.stop();
}

#[test]
fn with_no_instance_not_running() {
    let dir = TempDir::new("st-none");
    let out = status(&dir, false);
    assert_eq!(out.status.code(), Some(NOT_RUNNING));
    assert!(one_line(&out).contains("not running"));
    // A stale pid file: the pid of a process that holds no lock on it.
    std::fs::write(dir.path().join("pid"), format!("{}\n", std::process::id())).unwrap();
    let out = status(&dir, true);
    assert_eq!(out.status.code(), Some(NOT_RUNNING));
    assert!(one_line(&out).contains("stale"));
    // Its line follows --log-format too.
    let pid_file = format!("--pid-file={}", dir.path().join("pid").display());
    let out = run_within(&["--status", &pid_file, "--log-format=json"], PATIENCE);
    assert_eq!(out.status.code(), Some(NOT_RUNNING));
    let line = one_line(&out);
    assert!(
        line.starts_with(r#"{"time":""#) && line.contains(r#","level":"error","event":"error","#),
        "{line}"
    );
}

/// An instance without a control socket (the Perl original) cannot be asked: 5, in
/// one line.
#[test]
fn an_instance_without_a_control_socket_cannot_be_asked() {
    const PERL: &str = "/usr/bin/start_server";
    if !Path::new(PERL).exists() {
        eprintln!("skipped: {PERL} (the Perl original) is missing");
        return;
    }
    let dir = TempDir::new("st-perl");
    let pid_file = dir.path().join("pid");
    let mut server = Server::start_program(
        Path::new(PERL),
        &[
            &format!("--pid-file={}", pid_file.display()),
            "--",
            "sleep",
            "60",
        ],
        &[],
    );
    server.wait_line("starting new worker");
    wait_until("the pid file", || pid_file.exists());
    let out = status(&dir, false);
    assert_eq!(out.status.code(), Some(NO_ANSWER), "{}", text(&out.stderr));
    assert!(one_line(&out).contains("has no control socket"));
    server.stop();
}

/// Milliseconds, with a tenth.
fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// `start_server --status=json` run to its end, timed (process start included).
fn timed_status(dir: &TempDir) -> (Option<i32>, Duration) {
    let pid_file = format!("--pid-file={}", dir.path().join("pid").display());
    let begun = Instant::now();
    let out = Command::new(start_server_bin())
        .args(["--status=json", &pid_file])
        .stdin(Stdio::null())
        .output()
        .expect("start_server --status");
    (out.status.code(), begun.elapsed())
}

/// The status taken again and again during a restart under load: the restart goes
/// as without it (no request fails). The answer times are printed (the targets:
/// 10 ms idle, 50 ms during a restart; not asserted on a shared machine): the time
/// `start_server --status` takes to run, process start included.
#[test]
fn a_status_during_a_restart_under_load_disturbs_nothing() {
    let dir = TempDir::new("st-load");
    let (mut server, addr) = start(&dir, &["--ready=notify"], &[("READY_DELAY", "0.5")], None);
    wait_generation(addr, 1);
    let mut idle = Vec::new();
    for _ in 0..20 {
        let (code, took) = timed_status(&dir);
        assert_eq!(code, Some(SERVING));
        idle.push(took);
    }
    let load = Load::start(addr, 4);
    load.wait_more(50);
    server.signal(libc::SIGHUP);
    let mut during = Vec::new();
    while !server.has_line("killing old workers") {
        let (code, took) = timed_status(&dir);
        during.push(took);
        assert_eq!(code, Some(SERVING));
    }
    wait_generation(addr, 2);
    load.wait_more(50);
    load.finish_without_failures();
    idle.sort();
    during.sort();
    eprintln!(
        "--status answered in {} (median of {}, slowest {}) idle, {} (median of {}, slowest {}) during the restart",
        ms(idle[idle.len() / 2]),
        idle.len(),
        ms(idle[idle.len() - 1]),
        ms(during[during.len() / 2]),
        during.len(),
        ms(during[during.len() - 1]),
    );
    server.stop();
}

/// A client that floods the control socket with status requests and reads no answer
/// costs the supervisor nothing it waits for: the answers are dropped, and a real
/// client and a restart are served as ever.
#[test]
fn a_client_that_reads_nothing_cannot_stall_it() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
    let dir = TempDir::new("st-deaf");
    let (mut server, addr) = start(&dir, &["--ready=notify"], &[], None);
    wait_generation(addr, 1);
    let name = format!("server_starter/{}/control", server.pid());
    let to = UnixAddr::from_abstract_name(name.as_bytes()).unwrap();
    let bound = UnixAddr::from_abstract_name(format!("ss-deaf-{}", std::process::id())).unwrap();
    let deaf = UnixDatagram::bind_addr(&bound).unwrap();
    deaf.set_nonblocking(true).unwrap();
    let mut sent = 0;
    let begun = Instant::now();
    while sent < 2000 && begun.elapsed() < Duration::from_secs(10) {
        match deaf.send_to_addr(b"STATUS json", &to) {
            Ok(_) => sent += 1,
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    assert!(sent > 100, "only {sent} requests sent");
    let out = status(&dir, false);
    assert_eq!(out.status.code(), Some(SERVING), "{}", text(&out.stderr));
    server.signal(libc::SIGHUP);
    wait_generation(addr, 2);
    server.wait_line("killing old workers");
    server.stop();
}

/// `--log-format=timestamp`: each of start_server's lines after an RFC 3339 UTC time
/// to the millisecond; `json`: one object a line, with the documented keys; the
/// worker's own output untouched in both.
#[test]
fn each_log_format() {
    let stamp = |line: &str| -> Option<String> {
        let (time, rest) = line.split_once(' ')?;
        let b = time.as_bytes();
        let shape = time.len() == 24
            && b[4] == b'-'
            && b[10] == b'T'
            && b[19] == b'.'
            && b[23] == b'Z'
            && time.bytes().filter(u8::is_ascii_digit).count() == 17;
        shape.then(|| rest.to_string())
    };
    for format in ["timestamp", "json"] {
        let dir = TempDir::new("st-log");
        let pid_file = dir.path().join("pid");
        let (mut server, _) = Server::start_retrying(
            |port| {
                vec![
                    format!("--port=127.0.0.1:{port}"),
                    format!("--pid-file={}", pid_file.display()),
                    format!("--log-format={format}"),
                    "--".into(),
                    "sh".into(),
                    "-c".into(),
                    "echo \"worker says {hi}\" >&2; exec sleep 60".into(),
                ]
            },
            &[],
        );
        server.wait_line("worker says {hi}");
        server.signal(libc::SIGHUP);
        server.wait_nth_line("worker says {hi}", 2);
        server.wait_line("old worker");
        server.stop();
        let lines = server.lines();
        let (worker, ours): (Vec<&String>, Vec<&String>) =
            lines.iter().partition(|l| l.as_str() == "worker says {hi}");
        assert_eq!(worker.len(), 2, "{lines:?}");
        match format {
            "timestamp" => {
                let texts: Vec<String> = ours
                    .iter()
                    .map(|l| stamp(l).unwrap_or_else(|| panic!("no time: {l:?}")))
                    .collect();
                assert!(texts[0].starts_with("start_server (pid:"), "{texts:?}");
                assert!(texts.contains(&"received HUP, spawning a new worker".to_string()));
                assert_eq!(texts.last().map(String::as_str), Some("exiting"));
            }
            _ => {
                let script = r#"
import json, re, sys
for line in sys.stdin:
    o = json.loads(line)
    assert list(o)[:6] == ["time", "level", "event", "generation", "pid", "message"], o
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", o["time"]), o
    assert o["level"] in ("info", "warning", "error"), o
    assert isinstance(o["event"], str) and o["event"], o
    assert o["generation"] is None or isinstance(o["generation"], int), o
    assert isinstance(o["pid"], int), o
    print(o["event"], o["generation"], o["message"], sep="|")
"#;
                let mut python = Command::new("python3")
                    .args(["-c", script])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap();
                let input: Vec<&str> = ours.iter().map(|l| l.as_str()).collect();
                let mut stdin = python.stdin.take().unwrap();
                stdin
                    .write_all((input.join("\n") + "\n").as_bytes())
                    .unwrap();
                drop(stdin);
                let out = python.wait_with_output().unwrap();
                assert!(out.status.success(), "{}\n{input:?}", text(&out.stderr));
                let parsed = text(&out.stdout);
                for line in [
                    "starting|None|start_server (pid:",
                    "worker-spawned|1|starting new worker ",
                    "restart|None|received HUP, spawning a new worker\n",
                    "worker-spawned|2|starting new worker ",
                    "old-workers-signalled|None|killing old workers\n",
                    "worker-exited|1|old worker ",
                ] {
                    assert!(parsed.contains(line), "{line:?} in {parsed}");
                }
                assert!(
                    parsed.lines().last().unwrap().ends_with("|exiting"),
                    "{parsed}"
                );
            }
        }
    }
}
