//! systemd socket activation both ways, with programs written elsewhere:
//! start_server adopting the sockets Debian's `systemd-socket-activate` (or a test
//! holding the socket, as a socket unit does) passes it, and `--listen-fds` handing
//! them on to workers that find them with libsystemd (python-systemd's
//! `listen_fds_with_names`) or by themselves (gunicorn, run with no `--bind`).
//!
//! Needs Debian's systemd, gunicorn and python3-systemd, and `make examples` (the
//! library, which a worker reads both variables with).

mod common;
mod support;

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{artifact, example, repo_root, TempDir, PATIENCE};
use support::*;

/// Debian's Python, which has python3-systemd (the one on PATH may not).
const PYTHON: &str = "/usr/bin/python3";

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// A program from a Debian package, or a failed test saying which package.
fn debian(path: &str, package: &str) -> String {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: apt-get install {package}"
    );
    path.to_string()
}

/// A worker written for socket activation: python-systemd finds its sockets.
fn sd_worker() -> Vec<String> {
    debian(
        "/usr/lib/python3/dist-packages/systemd/daemon.py",
        "python3-systemd",
    );
    let script = repo_root().join("tests/workers/sd_worker.py");
    vec![PYTHON.into(), script.display().to_string()]
}

fn library() -> String {
    artifact(
        "build/stage/usr/lib/libserver_starter.so.0",
        "make examples",
    )
    .display()
    .to_string()
}

/// The `n`-th (1-based) line a worker appended to `file`.
fn nth_report(file: &Path, n: usize) -> String {
    wait_for(&format!("report #{n} in {}", file.display()), || {
        let text = fs::read_to_string(file).ok()?;
        text.split_inclusive('\n')
            .nth(n - 1)
            .filter(|l| l.ends_with('\n'))
            .map(String::from)
    })
}

fn assert_has(haystack: &str, needles: &[String]) {
    for needle in needles {
        assert!(haystack.contains(needle), "{needle}\n  not in\n{haystack}");
    }
}

fn env_lines(file: &Path) -> Vec<String> {
    let text = wait_for(
        &format!("the worker's environment in {}", file.display()),
        || {
            fs::read_to_string(file)
                .ok()
                .filter(|t| t.contains("SERVER_STARTER_GENERATION="))
        },
    );
    text.lines().map(String::from).collect()
}

/// `sh -c 'env > $ENV_OUT; exec worker...'`: the environment the worker got.
fn dumping_env(worker: &[String]) -> Vec<String> {
    let mut cmd = strings(&["sh", "-c", "env > \"$ENV_OUT\"; exec \"$@\"", "sh"]);
    cmd.extend(worker.iter().cloned());
    cmd
}

// ------------------------------------------------------------------ --listen-fds

/// Under `--listen-fds` (and a pid file, opened before the sockets are bound) the
/// worker's libsystemd finds the sockets at 3, 4, 5, named as closely to
/// SERVER_STARTER_PORT as systemd allows; the library reads either variable to the
/// same sockets; each generation gets its own LISTEN_PID.
#[test]
fn listen_fds_worker_finds_the_sockets_with_libsystemd_and_the_library_reads_either() {
    let dir = TempDir::new("lfd");
    let report = dir.path().join("report");
    let sock = dir.path().join("s.sock");
    let s = sock.display().to_string();
    let pid_arg = format!("--pid-file={}", dir.path().join("pid").display());
    let v6 = free_port("::1");
    let (mut server, port) = Server::start_retrying(
        |port| {
            let mut args = strings(&[
                "--listen-fds",
                &pid_arg,
                &format!("--port=127.0.0.1:{port}"),
                &format!("--port=[::1]:{v6}"),
                &format!("--path={s}"),
                "--interval=0.1",
                // The subject is the variables, not the drain: a worker still draining
                // a connection is not waited for past 5 s.
                "--kill-timeout=5",
                "--",
            ]);
            args.extend(sd_worker());
            args
        },
        &[
            ("REPORT", report.to_str().unwrap()),
            ("SERVER_STARTER_LIBRARY", &library()),
        ],
    );
    let first = nth_report(&report, 1);
    let pid = server.worker_pids()[0];
    assert_has(
        &first,
        &[
            format!("\"pid\": {pid}, "),
            format!("\"LISTEN_PID\": \"{pid}\""),
            "\"LISTEN_FDS\": \"3\"".into(),
            format!("\"LISTEN_FDNAMES\": \"127.0.0.1_{port}:[__1]_{v6}:{s}\""),
            format!("\"SERVER_STARTER_PORT\": \"127.0.0.1:{port}=3;[::1]:{v6}=4;{s}=5\""),
            format!("\"systemd\": [[3, \"127.0.0.1_{port}\"], [4, \"[__1]_{v6}\"], [5, \"{s}\"]]"),
            // Both set: SERVER_STARTER_PORT wins, names as the original's.
            format!("\"both\": [[3, \"127.0.0.1:{port}\"], [4, \"[::1]:{v6}\"], [5, \"{s}\"]]"),
            format!(
                "\"listen_fds_only\": [[3, \"127.0.0.1_{port}\"], [4, \"[__1]_{v6}\"], [5, \"{s}\"]]"
            ),
            format!("\"find\": {{\"127.0.0.1:{port}\": 3, \"[::1]:{v6}\": 4, \"{s}\": 5}}"),
        ],
    );
    assert_eq!(wait_generation(addr("127.0.0.1", port), 1), pid);
    assert_eq!(http_get(addr("::1", v6)).unwrap(), (pid, 1));
    assert_eq!(http_get_unix(&sock).unwrap(), (pid, 1));

    // The pid file, moved above the sockets' descriptors, kept its lock.
    let second = Command::new(start_server_bin())
        .args([&pid_arg, "--", "true"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains(&format!("already running (pid {})", server.pid())),
        "{stderr}"
    );

    server.signal(libc::SIGHUP);
    let next = nth_report(&report, 2);
    let pid2 = wait_for("the second worker", || server.worker_pids().get(1).copied());
    assert_ne!(pid, pid2);
    assert_has(&next, &[format!("\"LISTEN_PID\": \"{pid2}\"")]);
    assert_eq!(wait_generation(addr("127.0.0.1", port), 2), pid2);
    server.stop();
    assert!(!sock.exists(), "start_server's own socket file is removed");
}

/// The drop-in promise: without the option no worker sees any LISTEN_* variable.
#[test]
fn without_the_option_workers_see_no_listen_variables() {
    let dir = TempDir::new("nolfd");
    let env_out = dir.path().join("env");
    let mut args = strings(&[
        &format!("--path={}", dir.path().join("s.sock").display()),
        "--interval=0.1",
        "--",
    ]);
    args.extend(dumping_env(&strings(&["sleep", "60"])));
    let mut cmd = Command::new(start_server_bin());
    cmd.args(&args).env("ENV_OUT", &env_out);
    for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        cmd.env_remove(name);
    }
    let mut server = Server::spawn(cmd);
    let env = env_lines(&env_out);
    assert!(!env.iter().any(|l| l.starts_with("LISTEN_")), "{env:?}");
    assert!(env.iter().any(|l| l.starts_with("SERVER_STARTER_PORT=")));
    server.stop();
}

/// A socket pinned with `=fd` where LISTEN_FDS cannot have it is refused at once:
/// one line naming the descriptor, and nothing bound or created.
#[test]
fn pinned_descriptor_is_refused_with_listen_fds() {
    let dir = TempDir::new("pin");
    let sock = dir.path().join("s.sock");
    let (first, second) = (free_port("127.0.0.1"), free_port("127.0.0.1"));
    let mut server = Server::start(&[
        "--listen-fds",
        &format!("--path={}", sock.display()),
        &format!("--port=127.0.0.1:{first}"),
        // The second socket: LISTEN_FDS has it at 4.
        &format!("--port=127.0.0.1:{second}=3"),
        "--",
        "true",
    ]);
    assert_eq!(server.wait_exit().code(), Some(255));
    assert_eq!(
        server.lines(),
        [format!(
            "start_server: --listen-fds: socket 127.0.0.1:{second} is pinned at descriptor 3, but LISTEN_FDS puts it at descriptor 4"
        )]
    );
    assert!(!sock.exists());
}

/// gunicorn, given no `--bind`, takes its socket from LISTEN_FDS; two restarts
/// under load fail no request.
#[test]
fn gunicorn_without_bind_is_restarted_under_load_without_a_failed_request() {
    let gunicorn = debian("/usr/bin/gunicorn", "gunicorn");
    let dir = TempDir::new("gunicorn");
    fs::write(
        dir.path().join("app.py"),
        "import os\n\
         def app(environ, start_response):\n\
         \x20   body = ('hello from pid %d generation %s\\n' % (os.getpid(), os.environ['SERVER_STARTER_GENERATION'])).encode()\n\
         \x20   start_response('200 OK', [('Content-Type', 'text/plain'), ('Content-Length', str(len(body)))])\n\
         \x20   return [body]\n",
    )
    .unwrap();
    let status = dir.path().join("status");
    let (server, port) = Server::start_retrying(
        |port| {
            strings(&[
                "--listen-fds",
                &format!("--port=127.0.0.1:{port}"),
                "--interval=0.5",
                &format!("--status-file={}", status.display()),
                "--",
                &gunicorn,
                "--chdir",
                &dir.path().display().to_string(),
                "--workers=2",
                "--log-level=warning",
                "app:app",
            ])
        },
        &[],
    );
    let addr = addr("127.0.0.1", port);
    wait_generation(addr, 1);
    let load = Load::start(addr, 4);
    load.wait_more(20);
    for generation in [2, 3] {
        let old = server.worker_pids()[generation - 2];
        server.signal(libc::SIGHUP);
        wait_generation(addr, generation as u64);
        server.wait_line(&format!("old worker {old} died"));
        load.wait_more(20);
    }
    let generations = load.finish_without_failures();
    eprintln!(
        "gunicorn: {} requests over 3 generations, none failed",
        generations.len()
    );
    for generation in 1..=3 {
        assert!(generations.contains(&generation), "{generation}");
    }
    assert_eq!(server.wait_status(&status, &[3])[0].0, 3);
}

// ------------------------------------------------------------------ adopting

/// `systemd-socket-activate OPTIONS... start_server ARGS...`, `make` giving both for
/// a fresh port (called again when another process took it first). It binds every
/// `--listen=ADDR`, then execs start_server on the first connection, which the
/// caller makes.
fn socket_activated(
    mut make: impl FnMut(u16) -> (Vec<String>, Vec<String>),
    env: &[(&str, &str)],
) -> (Server, u16) {
    let program = debian("/usr/bin/systemd-socket-activate", "systemd");
    for _ in 0..5 {
        let port = free_port("127.0.0.1");
        let (options, args) = make(port);
        let sockets = options
            .iter()
            .filter(|o| o.starts_with("--listen="))
            .count();
        let mut cmd = Command::new(&program);
        // It passes on only TERM, PATH, USER, HOME and what --setenv gives.
        cmd.args(options)
            .args(env.iter().map(|(k, v)| format!("--setenv={k}={v}")))
            .arg(start_server_bin())
            .args(args);
        let mut server = Server::spawn(cmd);
        let listening = wait_for("systemd-socket-activate to listen or fail", || {
            if server.count_lines("Listening on ") == sockets {
                return Some(true);
            }
            server.try_exit().map(|_| false)
        });
        if listening {
            return (server, port);
        }
        assert!(
            server.has_line("Address already in use"),
            "systemd-socket-activate failed: {:?}",
            server.lines()
        );
    }
    panic!("no free port after 5 tries");
}

fn listen(addrs: &[&str]) -> Vec<String> {
    addrs.iter().map(|a| format!("--listen={a}")).collect()
}

/// With `--port` and `--path` naming the sockets systemd-socket-activate holds,
/// start_server adopts them (no bind), the workers get them without any LISTEN_*,
/// and at exit the unix socket file, which is the manager's, is left in place.
#[test]
fn socket_activated_tcp_and_unix_sockets_are_adopted_by_matching_options() {
    let dir = TempDir::new("sa");
    let sock = dir.path().join("s.sock");
    let s = sock.display().to_string();
    let worker_log = dir.path().join("worker.log");
    let env_out = dir.path().join("env");
    let (mut server, port) = socket_activated(
        |port| {
            let tcp = format!("127.0.0.1:{port}");
            let mut args = strings(&[
                &format!("--port={tcp}"),
                &format!("--path={s}"),
                "--interval=0.1",
                "--",
            ]);
            args.extend(dumping_env(&[perl_worker().display().to_string()]));
            (listen(&[&tcp, &s]), args)
        },
        &[
            ("WORKER_LOG", worker_log.to_str().unwrap()),
            ("ENV_OUT", env_out.to_str().unwrap()),
        ],
    );
    let first = wait_generation(addr("127.0.0.1", port), 1);
    assert_eq!(http_get_unix(&sock).unwrap(), (first, 1));
    let report = nth_report(&worker_log, 1);
    assert_has(&report, &[format!(" port=127.0.0.1:{port}=3;{s}=4 ")]);
    let env = env_lines(&env_out);
    assert!(!env.iter().any(|l| l.starts_with("LISTEN_")), "{env:?}");

    server.signal(libc::SIGHUP);
    wait_until("generation 2 on the unix socket", || {
        http_get_unix(&sock).is_ok_and(|(_, g)| g == 2)
    });
    server.stop();
    assert!(sock.exists(), "the manager's socket file was removed");
    assert!(!server.has_line("removing"), "{:?}", server.lines());
}

/// With no `--port` or `--path`, every socket is adopted, named as the options
/// would name it; under `--listen-fds` the manager's names are passed on.
#[test]
fn socket_activated_without_options_adopts_every_socket_and_passes_its_names_on() {
    let dir = TempDir::new("sa-all");
    let sock = dir.path().join("s.sock");
    let s = sock.display().to_string();
    let report = dir.path().join("report");
    let (mut server, port) = socket_activated(
        |port| {
            let mut args = strings(&["--listen-fds", "--interval=0.1", "--"]);
            args.extend(sd_worker());
            let mut options = listen(&[&format!("127.0.0.1:{port}"), &s]);
            options.push("--fdname=web:admin".into());
            (options, args)
        },
        &[("REPORT", report.to_str().unwrap())],
    );
    let pid = wait_generation(addr("127.0.0.1", port), 1);
    assert_eq!(http_get_unix(&sock).unwrap(), (pid, 1));
    let worker = server.worker_pids()[0];
    assert_has(
        &nth_report(&report, 1),
        &[
            format!("\"SERVER_STARTER_PORT\": \"127.0.0.1:{port}=3;{s}=4\""),
            "\"LISTEN_FDS\": \"2\"".into(),
            format!("\"LISTEN_PID\": \"{worker}\""),
            "\"LISTEN_FDNAMES\": \"web:admin\"".into(),
            "\"systemd\": [[3, \"web\"], [4, \"admin\"]]".into(),
        ],
    );
    server.stop();
    assert!(sock.exists());
}

/// Inherited sockets in another order than the options', beside one start_server
/// binds itself and a pid file: under `--listen-fds` each is moved to its place, 3,
/// 4, 5 in SERVER_STARTER_PORT order (`--port`s, then `--path`s).
#[test]
fn socket_activated_in_another_order_is_laid_out_in_the_options_order() {
    let dir = TempDir::new("sa-order");
    let held = dir.path().join("held.sock");
    let own = dir.path().join("own.sock");
    let (h, o) = (held.display().to_string(), own.display().to_string());
    let report = dir.path().join("report");
    let pid_arg = format!("--pid-file={}", dir.path().join("pid").display());
    let (mut server, port) = socket_activated(
        |port| {
            let mut args = strings(&[
                "--listen-fds",
                &pid_arg,
                &format!("--path={h}"),
                &format!("--path={o}"),
                &format!("--port=127.0.0.1:{port}"),
                "--interval=0.1",
                "--",
            ]);
            args.extend(sd_worker());
            (listen(&[&h, &format!("127.0.0.1:{port}")]), args)
        },
        &[("REPORT", report.to_str().unwrap())],
    );
    let pid = wait_generation(addr("127.0.0.1", port), 1);
    assert_eq!(http_get_unix(&held).unwrap(), (pid, 1));
    assert_eq!(http_get_unix(&own).unwrap(), (pid, 1));
    assert_has(
        &nth_report(&report, 1),
        &[
            format!("\"SERVER_STARTER_PORT\": \"127.0.0.1:{port}=3;{h}=4;{o}=5\""),
            format!("\"systemd\": [[3, \"127.0.0.1_{port}\"], [4, \"{h}\"], [5, \"{o}\"]]"),
        ],
    );
    server.stop();
    assert!(held.exists() && !own.exists());
}

/// An inherited socket no option names is an error naming its address; so is an
/// option that cannot be bound because an inherited socket holds its port.
#[test]
fn inherited_socket_an_option_does_not_name_is_an_error_naming_it() {
    let other = free_port("127.0.0.1");
    let (mut server, port) = socket_activated(
        |port| {
            let args = strings(&[&format!("--port=127.0.0.1:{other}"), "--", "true"]);
            (listen(&[&format!("127.0.0.1:{port}")]), args)
        },
        &[],
    );
    let _ = TcpStream::connect(addr("127.0.0.1", port));
    assert_eq!(server.wait_exit().code(), Some(255));
    assert!(
        server.has_line(&format!(
            "start_server: the inherited TCP socket 127.0.0.1:{port} (descriptor 3, from LISTEN_FDS) matches no --port or --path: add --port=127.0.0.1:{port} to adopt it"
        )),
        "{:?}",
        server.lines()
    );
    assert!(!server.has_line("starting new worker"));

    // A bare -l PORT is [::]:PORT for IPv4 and IPv6: --port=PORT adopts it, and
    // 127.0.0.1:PORT cannot be bound beside it.
    let (mut server, port) = socket_activated(
        |port| {
            let args = strings(&[
                &format!("--port={port}"),
                &format!("--port=127.0.0.1:{port}"),
                "--",
                "true",
            ]);
            (listen(&[&port.to_string()]), args)
        },
        &[],
    );
    let _ = TcpStream::connect(addr("127.0.0.1", port));
    assert_eq!(server.wait_exit().code(), Some(255));
    let line = server.wait_line("start_server: failed to bind to");
    assert!(
        line.starts_with(&format!(
            "start_server: failed to bind to 127.0.0.1:{port}: "
        )) && line.contains(ADDRESS_IN_USE)
            && line.ends_with(&format!(":{port} (from LISTEN_FDS) holds that port")),
        "{line}"
    );
}

/// What a socket unit gives: the socket is held elsewhere (here, by the test), so
/// start_server itself can be stopped and started again while clients keep
/// connecting; they wait in the backlog and not one request fails.
#[test]
fn start_server_restarted_while_the_socket_is_held_elsewhere_fails_no_request() {
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap();
    let start = || {
        // The socket at descriptor 3 and LISTEN_PID the pid that execs start_server,
        // as systemd passes them.
        let mut cmd = socket_activated_command(&start_server_bin(), holder.as_raw_fd());
        cmd.args(["--port", &addr.to_string(), "--interval=0.1", "--"])
            .arg(perl_worker());
        Server::spawn(cmd)
    };
    let mut first = start();
    wait_generation(addr, 1);
    let load = Load::start(addr, 4);
    load.wait_more(20);
    first.stop();
    let second = start();
    let worker = wait_for("the second start_server's worker", || {
        second.worker_pids().first().copied()
    });
    wait_until("the second start_server's worker to answer", || {
        http_get(addr).is_ok_and(|(pid, _)| pid == worker)
    });
    load.wait_more(20);
    let answered = load.finish_without_failures().len();
    eprintln!("start_server restarted: {answered} requests, none failed");
    assert!(answered >= 40, "{answered}");
}

// ------------------------------------------------------------------ unit files

/// Both sets of contrib/systemd's units pass `systemd-analyze verify`, with
/// start_server's path pointed at this build (the units name
/// /usr/local/bin/start_server) and the example worker's at one that exists:
/// systemd-252/ (Debian 12) with no complaint on any systemd, the top set with none
/// on systemd 253 and later (before that, none but the unknown notify-reload, which
/// is why systemd-252/ exists).
#[test]
fn contrib_systemd_units_verify() {
    let Some(analyze) = systemd_analyze() else {
        eprintln!("skipped: systemd-analyze is not installed (Debian's systemd)");
        return;
    };
    let version = Command::new(&analyze).arg("--version").output().unwrap();
    let major: u32 = String::from_utf8_lossy(&version.stdout)
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let complaints = verify_units(&analyze, "contrib/systemd/systemd-252");
    assert!(
        complaints.is_empty(),
        "systemd {major}, systemd-252/: {complaints:#?}"
    );
    for line in verify_units(&analyze, "contrib/systemd") {
        assert!(
            major < 253 && line.ends_with("Failed to parse service type, ignoring: notify-reload"),
            "systemd {major}: {line}"
        );
    }
}

/// Every service of contrib/systemd writes a pid file (`start_server --restart`,
/// `--stop` and `--upgrade` find it by that), and those of systemd-252/ reload with
/// `start_server --restart` given that same file (`systemd-analyze verify` cannot
/// tell a --restart that would find nothing); the top set reloads by notify-reload.
#[test]
fn contrib_systemd_services_have_pid_files_and_reload_with_them() {
    let root = repo_root().join("contrib/systemd");
    let mut services = 0;
    for (dir, service_type) in [
        (root.join("systemd-252"), "notify"),
        (root, "notify-reload"),
    ] {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "service") {
                continue;
            }
            services += 1;
            let text = fs::read_to_string(&path).unwrap().replace("\\\n", " ");
            let directive = |key: &str| -> Option<String> {
                text.lines()
                    .find(|l| l.starts_with(key))
                    .map(str::to_string)
            };
            let name = path.display();
            assert_eq!(
                directive("Type="),
                Some(format!("Type={service_type}")),
                "{name}"
            );
            let start = directive("ExecStart=").unwrap_or_else(|| panic!("{name}: no ExecStart"));
            let pid_file = start
                .split_whitespace()
                .find(|w| w.starts_with("--pid-file="))
                .unwrap_or_else(|| panic!("{name}: ExecStart has no --pid-file"));
            if service_type == "notify" {
                let reload = directive("ExecReload=").unwrap_or_default();
                let reload: Vec<&str> = reload.split_whitespace().collect();
                assert!(
                    reload.contains(&"--restart") && reload.contains(&pid_file),
                    "{name}: ExecReload is not `start_server --restart {pid_file}`: {reload:?}"
                );
            }
        }
    }
    assert!(services >= 4, "{services}");
}

/// Every unit that contrib/systemd's files name (in a directive or a comment that
/// tells the reader where to look) is one of them.
#[test]
fn contrib_systemd_units_name_only_units_that_exist() {
    let root = repo_root().join("contrib/systemd");
    let mut files = Vec::new();
    for dir in [root.clone(), root.join("systemd-252")] {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                files.push(path);
            }
        }
    }
    for path in &files {
        let text = fs::read_to_string(path).unwrap();
        for word in text.split(|c: char| !(c.is_alphanumeric() || "-_./".contains(c))) {
            let word = word.trim_end_matches('.');
            let Some(name) = word.rsplit('/').next() else {
                continue;
            };
            if !(name.ends_with(".service") || name.ends_with(".socket")) || name.starts_with('.') {
                continue;
            }
            assert!(
                files.iter().any(|f| f.file_name().unwrap() == name),
                "{} names {word}, which contrib/systemd does not have",
                path.display()
            );
        }
    }
}

fn systemd_analyze() -> Option<PathBuf> {
    ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// `systemd-analyze verify` of the units in `dir` (of the repository), copied with
/// the paths of this build; its complaints, one a line.
fn verify_units(analyze: &Path, dir: &str) -> Vec<String> {
    let copies = TempDir::new("units");
    let mut units: Vec<PathBuf> = Vec::new();
    for entry in fs::read_dir(repo_root().join(dir)).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            continue;
        }
        let text = fs::read_to_string(&path).unwrap();
        let copy = copies.path().join(path.file_name().unwrap());
        let bin = start_server_bin().display().to_string();
        let text = text.replace("/usr/local/bin/start_server", &bin).replace(
            "/usr/local/bin/my-server",
            &perl_worker().display().to_string(),
        );
        fs::write(&copy, text).unwrap();
        units.push(copy);
    }
    assert!(units.len() >= 2, "{dir}: {units:?}");
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .args(&units)
        .current_dir(copies.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{dir}: {stderr}");
    stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// The hot-deploy unit for the systemd that runs here (systemd-252/ on 252, the top
/// set on 253 and later) under that real service manager: `systemctl start` returns
/// once generation 1 serves, `systemctl reload` once generation 2 has replaced it,
/// `systemctl stop` stops it all. A user instance when there is one, else the
/// system's (root only); the unit is linked for this boot only (`--runtime`) under a
/// name of its own, and unlinked at the end. Skipped where no systemd runs (a
/// container like CI's: `systemd --user` refuses to start without a booted system).
#[test]
fn hot_deploy_unit_runs_under_systemd() {
    let scope = match running_service_manager() {
        Ok(scope) => scope,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let systemctl = |args: &[&str]| {
        let mut cmd = Command::new("systemctl");
        cmd.args(&scope).args(args);
        let what = format!("{cmd:?}");
        let out = run_command_within(cmd, PATIENCE * 2);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{what}: {}: {stderr}", out.status);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let version = systemctl(&["--version"]);
    let major: u32 = version
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let source = match major {
        253.. => "contrib/systemd/hot-deploy.service",
        _ => "contrib/systemd/systemd-252/hot-deploy.service",
    };
    let dir = TempDir::new("unit");
    let name = format!("ss-test-{}", std::process::id());
    let port = free_port("127.0.0.1");
    let text = fs::read_to_string(repo_root().join(source))
        .unwrap()
        .replace(
            "/usr/local/bin/start_server",
            &start_server_bin().display().to_string(),
        )
        .replace(
            "/usr/local/bin/my-server",
            &example("http-static").display().to_string(),
        )
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"))
        // %t: /run for the system's instance, $XDG_RUNTIME_DIR for a user's.
        .replace("/run/my-server/", &format!("%t/{name}/"))
        .replace(
            "RuntimeDirectory=my-server",
            &format!("RuntimeDirectory={name}"),
        )
        .replace("Restart=on-failure", "Restart=no");
    let unit = dir.path().join(format!("{name}.service"));
    fs::write(&unit, text).unwrap();
    let service = format!("{name}.service");
    systemctl(&["--runtime", "link", &unit.display().to_string()]);
    let at = addr("127.0.0.1", port);
    let outcome = std::panic::catch_unwind(|| {
        systemctl(&["start", &service]);
        assert_eq!(http_get(at).expect("an answer once started").1, 1);
        systemctl(&["reload", &service]);
        wait_generation(at, 2);
        systemctl(&["stop", &service]);
        assert!(http_get(at).is_err(), "still answering once stopped");
    });
    let _ = Command::new("systemctl")
        .args(&scope)
        .args(["stop", &service])
        .status();
    let _ = Command::new("systemctl")
        .args(&scope)
        .args(["--runtime", "disable", &service])
        .status();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// The `systemctl` scope of a service manager this test may use (`--user`, or none
/// for the system's), or why there is none.
fn running_service_manager() -> Result<Vec<&'static str>, String> {
    if !Path::new("/run/systemd/system").exists() {
        return Err("no systemd runs here (/run/systemd/system is missing)".into());
    }
    let user = Command::new("systemctl")
        .args(["--user", "show-environment"])
        .output();
    if user.is_ok_and(|o| o.status.success()) {
        return Ok(vec!["--user"]);
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(vec![]);
    }
    Err("no systemd --user instance, and the system's needs root".into())
}

/// An adopted unix socket whose path SERVER_STARTER_PORT cannot carry (the library
/// would refuse the workers' variable) is refused at start, in one line naming it, as
/// `--path` refuses such a path.
#[test]
fn an_adopted_unix_socket_whose_path_workers_cannot_be_told_is_refused() {
    let dir = TempDir::new("activation-name");
    for (name, why) in [
        (
            "a;b.sock",
            "';' separates the entries of SERVER_STARTER_PORT",
        ),
        ("a=b.sock", "'=' separates a name from its descriptor"),
    ] {
        let path = dir.path().join(name);
        let socket = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let mut cmd = socket_activated_command(&start_server_bin(), socket.as_raw_fd());
        cmd.args(["--", "true"]);
        let mut server = Server::spawn(cmd);
        assert_eq!(server.wait_exit().code(), Some(255), "{:?}", server.lines());
        let lines = server.lines();
        let expected = format!(
            "start_server: inherited descriptor 3 (LISTEN_FDS) is the unix socket {}: {why}",
            path.display()
        );
        assert!(
            lines.len() == 1 && lines[0].starts_with(&expected),
            "{lines:?}"
        );
        assert!(
            path.exists(),
            "the socket file is not start_server's to remove"
        );
    }
}
