//! A generation is its whole process tree (issue 18): what a worker leaves running when
//! it exits (a prefork server's children, a child that called setsid, a double-forked
//! grandchild holding the socket) is stopped with its generation, so that after a
//! restart's OK only the new generation answers, and after a stop nothing does and the
//! port can be bound again. Each case runs in both modes: subreaper (forced with
//! `SERVER_STARTER_PROCESS_TREE=subreaper`), always; cgroup where a child cgroup can be
//! made here, skipped with a message otherwise.

mod common;
mod support;

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use common::{TempDir, PATIENCE};
use support::*;

const KNOB: &str = "SERVER_STARTER_PROCESS_TREE";

/// Why no child cgroup can be made here, if none can: a probe directory under this
/// process's own cgroup.
fn no_cgroup() -> Option<String> {
    let Some(own) = common::own_cgroup_dir() else {
        return Some("no read-write cgroup2 mount of the whole hierarchy".into());
    };
    let probe = own.join(format!("tree-test-probe.{}", std::process::id()));
    match fs::create_dir(&probe) {
        Ok(()) => {
            let _ = fs::remove_dir(&probe);
            None
        }
        Err(e) => Some(format!(
            "cannot make a child cgroup ({}): {e}",
            probe.display()
        )),
    }
}

/// The modes this machine can test.
fn mode_available(mode: &str) -> bool {
    if mode == "cgroup" {
        if let Some(why) = no_cgroup() {
            eprintln!("skipping the cgroup mode: {why}");
            return false;
        }
    }
    true
}

/// What a test leaves if it fails (and start_server is killed): when dropped, after
/// the server, it kills every process that carries this test's marker in its
/// environment (never a reused pid), and removes the cgroups start_server made.
struct Cleanup {
    marker: String,
    subtree: Mutex<Option<String>>,
}

impl Cleanup {
    fn new(dir: &TempDir) -> Cleanup {
        Cleanup {
            marker: dir.path().display().to_string(),
            subtree: Mutex::new(None),
        }
    }

    fn marked(&self) -> Vec<i32> {
        let Ok(procs) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        procs
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .filter(|&pid| worker_env(pid, "TREE_TEST").as_deref() == Some(self.marker.as_str()))
            .collect()
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for pid in self.marked() {
            signal(pid, libc::SIGKILL);
        }
        let Some(subtree) = self.subtree.lock().unwrap().take() else {
            return;
        };
        let _ = wait_for_within(Duration::from_secs(5), || {
            self.marked().is_empty().then_some(())
        });
        if let Ok(children) = fs::read_dir(&subtree) {
            for child in children.flatten().filter(|c| c.path().is_dir()) {
                let _ = fs::remove_dir(child.path());
            }
        }
        let _ = fs::remove_dir(&subtree);
    }
}

/// `wait_for` with a bound of its own, `None` past it.
fn wait_for_within<T>(bound: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + bound;
    loop {
        if let Some(found) = f() {
            return Some(found);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Gone: no such process, or a zombie about to be reaped.
fn gone(pid: i32) -> bool {
    stat_fields(pid).is_none_or(|f| f[0] == "Z")
}

/// start_server in `mode` on a fresh port, with a pid file and a status file in `dir`,
/// then `args`; the server command `command`, with `env`.
fn start(
    mode: &str,
    dir: &TempDir,
    cleanup: &Cleanup,
    args: &[&str],
    command: &[&str],
    env: &[(&str, &str)],
) -> (Server, SocketAddr) {
    let marker = dir.path().display().to_string();
    let mut env: Vec<(&str, &str)> = env.to_vec();
    env.extend([(KNOB, mode), ("TREE_TEST", marker.as_str())]);
    let (pid_file, status_file) = (file_arg(dir, "pid"), file_arg(dir, "status"));
    let (server, port) = Server::start_retrying(
        |port| {
            let mut all = vec![format!("--port=127.0.0.1:{port}"), pid_file.clone()];
            all.push(status_file.clone());
            all.extend(args.iter().map(|a| a.to_string()));
            all.push("--".into());
            all.extend(command.iter().map(|a| a.to_string()));
            all
        },
        &env,
    );
    let line = server.wait_line("process tree: ");
    let expected = match mode {
        "cgroup" => "each worker in a cgroup of its own",
        _ => "each worker in a process group of its own",
    };
    assert!(line.contains(expected), "{mode}: {line}");
    *cleanup.subtree.lock().unwrap() = line.split(" under ").nth(1).map(String::from);
    // Started, as `--restart` needs: listed in the status file.
    server.wait_status(&dir.path().join("status"), &[1]);
    (server, addr("127.0.0.1", port))
}

fn file_arg(dir: &TempDir, name: &str) -> String {
    let option = match name {
        "pid" => "--pid-file",
        _ => "--status-file",
    };
    format!("{option}={}", dir.path().join(name).display())
}

/// `start_server --restart`, which must say OK.
fn restart(dir: &TempDir) {
    let out = run_within(
        &["--restart", &file_arg(dir, "pid"), &file_arg(dir, "status")],
        PATIENCE,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "--restart: {err}");
}

/// `start_server --stop`, which must succeed; then nothing answers at `addr`, and the
/// port can be bound again.
fn stop_leaves_nothing(server: &mut Server, dir: &TempDir, addr: SocketAddr) {
    let out = run_within(&["--stop", &file_arg(dir, "pid")], PATIENCE);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "--stop: {err}");
    assert!(server.wait_exit().success(), "{:?}", server.lines());
    let connected = TcpStream::connect_timeout(&addr, Duration::from_secs(5));
    assert!(
        connected.is_err(),
        "something still answers at {addr} after --stop: {:?}",
        server.lines()
    );
    TcpListener::bind(addr).unwrap_or_else(|e| panic!("binding {addr} after --stop: {e}"));
}

/// After a restart's OK: every answer comes from `generation`.
fn only(addr: SocketAddr, generation: u64) {
    for _ in 0..30 {
        let (pid, g) = http_get(addr).expect("a request after the restart");
        assert_eq!(g, generation, "pid {pid} of generation {g} still answers");
    }
}

// ------------------------------------------------------------------ Starlet

/// The issue's case, unchanged from a typical Perl deployment: `--signal-on-hup=QUIT`
/// kills the Starlet master, whose prefork children would go on accepting.
fn starlet_quit(mode: &str) {
    if !mode_available(mode) {
        return;
    }
    if !have("plackup") || !perl_module("Plack::Handler::Starlet") {
        eprintln!(
            "skipping: plackup -s Starlet is not installed (apt-get install libstarlet-perl)"
        );
        return;
    }
    let dir = TempDir::new("tree-starlet");
    let app = dir.path().join("app.psgi");
    fs::write(
        &app,
        "my $g = $ENV{SERVER_STARTER_GENERATION};\n\
         sub { [200, ['Content-Type' => 'text/plain'], [\"hello from pid $$ generation $g\\n\"]] }\n",
    )
    .unwrap();
    let app = app.display().to_string();
    let cleanup = Cleanup::new(&dir);
    let (mut server, addr) = start(
        mode,
        &dir,
        &cleanup,
        &["--signal-on-hup=QUIT"],
        &["plackup", "-s", "Starlet", "--max-workers=4", &app],
        &[],
    );
    let old = wait_generation(addr, 1);
    let subtree = cleanup.subtree.lock().unwrap().clone();
    restart(&dir);
    only(addr, 2);
    assert!(gone(old), "generation 1's pid {old} still runs");
    let line = server.wait_line("(generation 1) exited, leaving processes ");
    assert!(
        line.contains(&old.to_string()),
        "the log names {old}: {line}"
    );
    server.wait_line("(generation 1) left are gone");
    stop_leaves_nothing(&mut server, &dir, addr);
    if let Some(subtree) = subtree {
        assert!(
            !Path::new(&subtree).exists(),
            "{subtree} is left after the stop"
        );
    }
}

#[test]
fn starlet_quit_cgroup() {
    starlet_quit("cgroup");
}

#[test]
fn starlet_quit_subreaper() {
    starlet_quit("subreaper");
}

fn perl_module(name: &str) -> bool {
    std::process::Command::new("perl")
        .args([&format!("-M{name}"), "-e1"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

// ------------------------------------------------------------------ setsid, double fork

/// A worker that serves from a child that left its session (`setsid`) or from a
/// double-forked grandchild; `stubborn`: that process ignores TERM, so only the KILL
/// after `--kill-timeout` ends it.
fn detached_server(mode: &str, from: &str, stubborn: bool) {
    if !mode_available(mode) {
        return;
    }
    let dir = TempDir::new("tree-detached");
    let worker = perl_worker().display().to_string();
    let mut env = vec![("SERVE_FROM", from)];
    if stubborn {
        env.push(("STUBBORN_CHILD", "1"));
    }
    let cleanup = Cleanup::new(&dir);
    let (mut server, addr) = start(
        mode,
        &dir,
        &cleanup,
        &["--kill-timeout=1"],
        &["perl", &worker],
        &env,
    );
    let first = wait_generation(addr, 1);
    let worker = read_status(&dir.path().join("status"))[0].1;
    assert_ne!(
        first, worker,
        "generation 1 serves from a process of its own"
    );
    restart(&dir);
    only(addr, 2);
    assert!(gone(first), "generation 1's pid {first} still runs");
    let line = server.wait_line("(generation 1) exited, leaving processes ");
    assert!(
        line.contains(&first.to_string()),
        "the log names {first}: {line}"
    );
    if stubborn {
        server.wait_line("(generation 1) left are still running 1 secs after");
    }
    let second = wait_generation(addr, 2);
    // Idle again once the old tree is gone: no timer, no look at /proc (no context
    // switch across 500 ms).
    let mut last = context_switches(server.pid());
    wait_until("start_server to be idle again", || {
        std::thread::sleep(Duration::from_millis(500));
        let now = context_switches(server.pid());
        std::mem::replace(&mut last, now) == now
    });
    stop_leaves_nothing(&mut server, &dir, addr);
    assert!(
        gone(second),
        "generation 2's pid {second} runs after --stop"
    );
    server.wait_line("no process of any generation is left");
}

/// While what an exited worker left runs out its grace, `--status` lists it, as
/// `left`, in its generation (which drains until then); once it is gone, it is not.
fn status_shows_what_was_left(mode: &str) {
    if !mode_available(mode) {
        return;
    }
    let dir = TempDir::new("tree-status");
    let worker = perl_worker().display().to_string();
    // Generation 1's child ignores TERM; generation 2's does not (--envdir), so that
    // the stop at the end is quick.
    let envdir = dir.path().join("env");
    fs::create_dir(&envdir).unwrap();
    fs::write(envdir.join("STUBBORN_CHILD"), "1\n").unwrap();
    let envdir_arg = format!("--envdir={}", envdir.display());
    let cleanup = Cleanup::new(&dir);
    let (mut server, addr) = start(
        mode,
        &dir,
        &cleanup,
        &["--kill-timeout=60", &envdir_arg],
        &["perl", &worker],
        &[("SERVE_FROM", "setsid")],
    );
    let first = wait_generation(addr, 1);
    fs::remove_file(envdir.join("STUBBORN_CHILD")).unwrap();
    server.signal(libc::SIGHUP);
    server.wait_line("(generation 1) exited, leaving processes ");
    let status = |json: bool| {
        let mode = if json { "--status=json" } else { "--status" };
        let out = run_within(&[mode, &file_arg(&dir, "pid")], PATIENCE);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let json = status(true);
    let entry = format!(r#"{{"pid":{first},"generation":1,"slot":null,"state":"left","#);
    assert!(json.contains(&entry), "{entry} in {json}");
    assert!(
        json.contains(r#"{"generation":1,"state":"draining"}"#),
        "{json}"
    );
    let table = status(false);
    let row = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&first.to_string()));
    let row: Vec<&str> = row
        .unwrap_or_else(|| panic!("{first} in {table}"))
        .split_whitespace()
        .collect();
    assert_eq!(row[1..4], ["1", "-", "left"], "{table}");
    // Ours to end: it is the test's server's child.
    signal(first, libc::SIGKILL);
    server.wait_line("(generation 1) left are gone");
    let json = status(true);
    assert!(!json.contains(r#""state":"left""#), "{json}");
    stop_leaves_nothing(&mut server, &dir, addr);
}

#[test]
fn status_shows_what_was_left_cgroup() {
    status_shows_what_was_left("cgroup");
}

#[test]
fn status_shows_what_was_left_subreaper() {
    status_shows_what_was_left("subreaper");
}

#[test]
fn setsid_child_cgroup() {
    detached_server("cgroup", "setsid", false);
}

#[test]
fn setsid_child_subreaper() {
    detached_server("subreaper", "setsid", false);
}

#[test]
fn stubborn_setsid_child_cgroup() {
    detached_server("cgroup", "setsid", true);
}

#[test]
fn stubborn_setsid_child_subreaper() {
    detached_server("subreaper", "setsid", true);
}

#[test]
fn double_forked_grandchild_cgroup() {
    detached_server("cgroup", "double-fork", false);
}

#[test]
fn double_forked_grandchild_subreaper() {
    detached_server("subreaper", "double-fork", false);
}

// ------------------------------------------------------------------ under load

/// Restarts under load, each generation serving from a double-forked grandchild that
/// finishes the request in hand on TERM: no request fails, and after each OK only the
/// new generation answers.
fn under_load(mode: &str) {
    if !mode_available(mode) {
        return;
    }
    let dir = TempDir::new("tree-load");
    let worker = perl_worker().display().to_string();
    let cleanup = Cleanup::new(&dir);
    let (mut server, addr) = start(
        mode,
        &dir,
        &cleanup,
        &["--kill-timeout=10"],
        &["perl", &worker],
        &[("SERVE_FROM", "double-fork")],
    );
    wait_generation(addr, 1);
    let load = Load::start(addr, 4);
    for generation in 2..=4 {
        load.wait_more(20);
        restart(&dir);
        only(addr, generation);
    }
    load.wait_more(20);
    let answered = load.finish_without_failures();
    eprintln!(
        "{mode}: {} requests through 3 restarts, none failed",
        answered.len()
    );
    stop_leaves_nothing(&mut server, &dir, addr);
}

#[test]
fn no_failed_requests_through_restarts_cgroup() {
    under_load("cgroup");
}

#[test]
fn no_failed_requests_through_restarts_subreaper() {
    under_load("subreaper");
}

// ------------------------------------------------------------------ upgrade in place

/// An upgrade in place between the start and the restart: the new image takes over
/// the trees (the cgroups, the attributions), so that what generation 1 leaves is
/// still stopped with it, and the stop still removes every cgroup made before.
fn across_an_upgrade(mode: &str) {
    if !mode_available(mode) {
        return;
    }
    let dir = TempDir::new("tree-upgrade");
    let worker = perl_worker().display().to_string();
    let cleanup = Cleanup::new(&dir);
    let (mut server, addr) = start(
        mode,
        &dir,
        &cleanup,
        &["--kill-timeout=5"],
        &["perl", &worker],
        &[("SERVE_FROM", "setsid")],
    );
    let first = wait_generation(addr, 1);
    let out = run_within(&["--upgrade", &file_arg(&dir, "pid")], PATIENCE);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "--upgrade: {said}{:?}",
        server.lines()
    );
    server.wait_line("upgraded from ");
    restart(&dir);
    only(addr, 2);
    assert!(gone(first), "generation 1's pid {first} still runs");
    server.wait_line(&format!("leaving processes {first}; sending TERM"));
    stop_leaves_nothing(&mut server, &dir, addr);
    let subtree = cleanup.subtree.lock().unwrap().clone();
    if let Some(subtree) = subtree {
        assert!(
            !Path::new(&subtree).exists(),
            "{subtree} is left after the stop"
        );
    }
}

#[test]
fn across_an_upgrade_cgroup() {
    across_an_upgrade("cgroup");
}

#[test]
fn across_an_upgrade_subreaper() {
    across_an_upgrade("subreaper");
}

/// A wrong `SERVER_STARTER_PROCESS_TREE` is said at once, naming the value, before
/// anything is bound or written.
#[test]
fn a_wrong_knob_is_refused_at_once() {
    let dir = TempDir::new("tree-knob");
    let pid_file = dir.path().join("pid");
    let mut cmd = std::process::Command::new(start_server_bin());
    cmd.args([
        "--port=127.0.0.1:0",
        &format!("--pid-file={}", pid_file.display()),
        "--",
        "true",
    ])
    .env(KNOB, "cgroups");
    let out = run_command_within(cmd, PATIENCE);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert_eq!(
        err.trim_end(),
        "start_server: SERVER_STARTER_PROCESS_TREE=\"cgroups\": must be auto, cgroup or subreaper"
    );
    assert!(!pid_file.exists(), "the pid file was written");
}

// ------------------------------------------------------------------ no trace

/// A shell worker: `start` (which ends by starting a process in the background), the
/// pid of that process written to a file by rename, `end`, then `exec sleep 600`. The
/// file, and the script.
fn shell_worker(dir: &TempDir, start: &str, end: &str) -> (std::path::PathBuf, String) {
    let pid_file = dir.path().join("child.pid");
    let script = format!(
        "{start} echo $! > {0}.tmp; mv {0}.tmp {0}{end}; exec sleep 600",
        pid_file.display()
    );
    (pid_file, script)
}

/// A process that left the worker's session and cleared its environment at once,
/// reparented to start_server before anything looked: in subreaper mode nothing traces
/// it to a generation while others run, but a stop leaves no process of any generation
/// (all that remains below start_server outside its own process group goes with the
/// last worker); in cgroup mode it is in the worker's cgroup all along.
fn untraceable_orphan(mode: &str) {
    if !mode_available(mode) {
        return;
    }
    let dir = TempDir::new("tree-untraceable");
    let (pid_file, script) = shell_worker(&dir, "(setsid env -i sleep 600 &", ")");
    let cleanup = Cleanup::new(&dir);
    // It carries no marker: killed by its pid if the test fails.
    let _orphan = KillOnDrop(&pid_file);
    let (mut server, addr) = start(mode, &dir, &cleanup, &[], &["sh", "-c", &script], &[]);
    let orphan = wait_pid_file(&pid_file);
    wait_until("the orphan to be reparented to start_server", || {
        ppid(orphan) == Some(server.pid())
    });
    assert_eq!(worker_env(orphan, "SERVER_STARTER_GENERATION"), None);
    stop_leaves_nothing(&mut server, &dir, addr);
    assert!(gone(orphan), "the orphan {orphan} runs after --stop");
    server.wait_line(&format!("leaving processes {orphan}; sending TERM"));
}

#[test]
fn untraceable_orphan_cgroup() {
    untraceable_orphan("cgroup");
}

#[test]
fn untraceable_orphan_subreaper() {
    untraceable_orphan("subreaper");
}

// ------------------------------------------------------------------ SIGKILL

/// A worker that ignores TERM, as does the child it started: at `--kill-timeout` the
/// worker gets SIGKILL with everything it started, so the stop takes one
/// `--kill-timeout`, not one more for what it would have left.
fn stubborn_tree(mode: &str) {
    if !mode_available(mode) {
        return;
    }
    let dir = TempDir::new("tree-stubborn");
    let (pid_file, script) = shell_worker(&dir, "trap '' TERM; sleep 600 &", "");
    let cleanup = Cleanup::new(&dir);
    let (mut server, addr) = start(
        mode,
        &dir,
        &cleanup,
        &["--kill-timeout=1"],
        &["sh", "-c", &script],
        &[],
    );
    let child = wait_pid_file(&pid_file);
    let worker = read_status(&dir.path().join("status"))[0].1;
    let out = run_within(
        &["--stop", &file_arg(&dir, "pid"), "--kill-timeout=1"],
        PATIENCE,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "--stop: {err}");
    assert!(server.wait_exit().success());
    assert!(gone(child), "the worker's child {child} runs after --stop");
    let lines = server.lines();
    let killed = format!("worker {worker} still running 1 secs after it was told to stop");
    assert!(lines.iter().any(|l| l.starts_with(&killed)), "{lines:?}");
    assert!(
        !lines.iter().any(|l| l.contains("left are still running")),
        "what the worker left had a grace of its own: {lines:?}"
    );
    TcpListener::bind(addr).unwrap_or_else(|e| panic!("binding {addr} after --stop: {e}"));
}

#[test]
fn stubborn_tree_cgroup() {
    stubborn_tree("cgroup");
}

#[test]
fn stubborn_tree_subreaper() {
    stubborn_tree("subreaper");
}

// ------------------------------------------------------------------ systemd

/// A cgroup made for the test, removed when dropped with the cgroups in it (once
/// empty).
struct TestCgroup(std::path::PathBuf);

impl Drop for TestCgroup {
    fn drop(&mut self) {
        fn remove(dir: &Path) -> Option<()> {
            for entry in fs::read_dir(dir).ok()?.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    remove(&entry.path());
                }
            }
            fs::remove_dir(dir).ok()
        }
        let _ = wait_for_within(Duration::from_secs(5), || remove(&self.0));
    }
}

/// start_server in a systemd unit's cgroup (a child cgroup named `*.service`): without
/// `Delegate=yes` (systemd's `trusted.delegate` attribute) it leaves the unit's cgroup
/// to systemd and follows the trees as a subreaper; with it, cgroup mode.
#[test]
fn a_unit_cgroup_is_used_only_when_delegated() {
    if !mode_available("cgroup") {
        return;
    }
    let own = common::own_cgroup_dir().expect("a cgroup2 mount");
    let unit = TestCgroup(own.join(format!("tree-test-{}.service", std::process::id())));
    fs::create_dir(&unit.0).unwrap();
    let join = format!("echo $$ > {}/cgroup.procs && exec \"$@\"", unit.0.display());
    let run = |expected: &str| {
        let bin = start_server_bin().display().to_string();
        let args = ["-c", &join, "sh", &bin, "--", "sleep", "600"];
        let mut server = Server::start_program(Path::new("sh"), &args, &[]);
        let line = server.wait_line("process tree: ");
        assert!(line.contains(expected), "{line}");
        server.stop();
    };
    let name = unit.0.file_name().unwrap().to_str().unwrap().to_string();
    run(&format!(
        "(no cgroup: {name} is systemd's to arrange: give the unit Delegate=yes)"
    ));
    let path = std::ffi::CString::new(unit.0.as_os_str().to_str().unwrap()).unwrap();
    // SAFETY: NUL-terminated path and name, a value buffer of the length given.
    let set = unsafe {
        libc::setxattr(
            path.as_ptr(),
            c"trusted.delegate".as_ptr(),
            b"1".as_ptr().cast(),
            1,
            0,
        )
    };
    if set != 0 {
        eprintln!(
            "skipping the delegated half: setxattr(trusted.delegate): {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    run(&format!(
        "each worker in a cgroup of its own, under {}/",
        unit.0.display()
    ));
}

/// A subtree that a start_server of the same pid left when it was killed (empty) is
/// taken over, as a stale socket file is, rather than piling up beside: start_server
/// as PID 1 of a namespace of its own, in a test cgroup where `server_starter.1`
/// already is.
#[test]
fn a_stale_subtree_of_the_same_pid_is_reused() {
    if !mode_available("cgroup") {
        return;
    }
    if let Some(why) = no_pid_namespace() {
        eprintln!("skipping: start_server cannot run as PID 1 here: {why}");
        return;
    }
    let own = common::own_cgroup_dir().expect("a cgroup2 mount");
    let home = TestCgroup(own.join(format!("tree-test-{}", std::process::id())));
    let stale = home.0.join("server_starter.1");
    fs::create_dir_all(stale.join("generation-7")).unwrap();
    let join = format!("echo $$ > {}/cgroup.procs && exec \"$@\"", home.0.display());
    let bin = start_server_bin().display().to_string();
    let args = [
        "-c",
        &join,
        "sh",
        "unshare",
        "--pid",
        "--fork",
        "--mount-proc",
        &bin,
        "--",
        "sleep",
        "600",
    ];
    let mut server = Server::start_program(Path::new("sh"), &args, &[]);
    let line = server.wait_line("process tree: ");
    assert!(
        line.ends_with(&format!("under {}", stale.display())),
        "{line}"
    );
    assert!(!stale.join("generation-7").exists());
    let init = namespace_init(&server);
    signal(init, libc::SIGTERM);
    assert!(server.wait_exit().success(), "{:?}", server.lines());
    assert!(
        !stale.exists(),
        "{} is left after the stop",
        stale.display()
    );
}
