//! Upgrading start_server in place (SIGUSR2, `start_server --upgrade`), with real
//! processes: a copy of the built binary is installed in a temp dir and started from
//! there; a deploy replaces it at that path (a copy, then an atomic rename), as a
//! package manager does, and the running instance is asked to upgrade. It must keep
//! its pid, its workers, its sockets and its pid file's lock, and run the new file
//! (/proc/PID/exe); a broken file at the path must change nothing.

mod common;
mod support;

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{example, TempDir};
use support::*;

/// The log lines say which version upgraded to which: here, this build to itself.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The version and build of the binary under test, as the upgrade's log line names
/// each side: `0.1.0 (build git:...)` (the build from `--version`'s second line).
fn built() -> String {
    let out = run_within(&["--version"], common::PATIENCE);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let build = text
        .lines()
        .find_map(|l| l.strip_prefix("build "))
        .expect("a build line");
    format!("{VERSION} (build {build})")
}

/// A start_server run from a copy of the build at `exe`, with a pid file and a status
/// file, serving `worker` on a free port.
struct Deployed {
    dir: TempDir,
    exe: PathBuf,
    pid_file: PathBuf,
    status: PathBuf,
    server: Server,
    addr: SocketAddr,
}

impl Deployed {
    fn start(extra: &[&str], worker: &[&str], env: &[(&str, &str)]) -> Deployed {
        let dir = TempDir::new("upgrade");
        let exe = dir.path().join("start_server");
        install(&start_server_bin(), &exe);
        let pid_file = dir.path().join("pid");
        let status = dir.path().join("status");
        let (server, port) = Server::start_program_retrying(
            &exe,
            |port| {
                let mut args = vec![
                    format!("--port=127.0.0.1:{port}"),
                    format!("--pid-file={}", pid_file.display()),
                    format!("--status-file={}", status.display()),
                ];
                args.extend(extra.iter().map(|s| s.to_string()));
                args.push("--".into());
                args.extend(worker.iter().map(|s| s.to_string()));
                args
            },
            env,
        );
        Deployed {
            addr: addr("127.0.0.1", port),
            dir,
            exe,
            pid_file,
            status,
            server,
        }
    }

    /// http-static under `--interval=0.1`, generation 1 started: (it, its worker).
    fn http() -> (Deployed, i32) {
        let d = Deployed::start(&["--interval=0.1"], &[&http_static()], &[]);
        let worker = wait_generation(d.addr, 1);
        d.server.wait_status(&d.status, &[1]);
        (d, worker)
    }

    /// Asserts that the log says `first` before `then`.
    fn assert_in_order(&self, first: &str, then: &str) {
        let lines = self.server.lines();
        let at = |needle: &str| lines.iter().position(|l| l.contains(needle));
        assert!(at(first).is_some() && at(first) < at(then), "{lines:?}");
    }

    /// Started with `args` alone (no port picked, nothing waited for).
    fn start_bare(args: &[&str]) -> Deployed {
        let dir = TempDir::new("upgrade");
        let exe = dir.path().join("start_server");
        install(&start_server_bin(), &exe);
        let pid_file = dir.path().join("pid");
        let status = dir.path().join("status");
        let mut all = vec![
            format!("--pid-file={}", pid_file.display()),
            format!("--status-file={}", status.display()),
        ];
        all.extend(args.iter().map(|s| s.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let server = Server::start_program(&exe, &all, &[]);
        Deployed {
            addr: addr("127.0.0.1", 0),
            dir,
            exe,
            pid_file,
            status,
            server,
        }
    }

    fn pid(&self) -> i32 {
        self.server.pid()
    }

    /// A new build at the path: a copy of the binary under test, renamed over it.
    fn deploy(&self) -> (u64, u64) {
        install(&start_server_bin(), &self.exe);
        identity(&self.exe)
    }

    /// Something else at the path, renamed over it (written by a child, as `install`
    /// copies).
    fn deploy_file(&self, contents: &[u8]) {
        let new = self.exe.with_extension("new");
        let mut cat = Command::new("sh")
            .args(["-c", "cat > \"$0\""])
            .arg(&new)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut cat.stdin.take().unwrap(), contents).unwrap();
        assert!(cat.wait().unwrap().success());
        fs::set_permissions(&new, fs::Permissions::from_mode(0o755)).unwrap();
        install(&new, &self.exe);
    }

    /// `start_server --upgrade`, run from the build (not from the path under test).
    fn upgrade(&self) -> Output {
        Command::new(start_server_bin())
            .args([
                "--upgrade",
                &format!("--pid-file={}", self.pid_file.display()),
            ])
            .output()
            .expect("start_server --upgrade")
    }

    fn upgrade_ok(&self) -> String {
        let out = self.upgrade();
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{said}{}\nlog: {:?}",
            String::from_utf8_lossy(&out.stderr),
            self.server.lines()
        );
        said
    }

    fn upgrade_refused(&self) -> String {
        let out = self.upgrade();
        assert!(!out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// The image the instance runs, as (device, inode).
    fn image(&self) -> (u64, u64) {
        identity(Path::new(&format!("/proc/{}/exe", self.pid())))
    }

    /// A second instance with the same pid file must be refused.
    fn assert_locked(&self) {
        let out = Command::new(start_server_bin())
            .args([
                "--port=127.0.0.1:0",
                &format!("--pid-file={}", self.pid_file.display()),
                "--",
                "true",
            ])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(255), "{said}");
        let running = format!("already running (pid {})", self.pid());
        assert!(said.contains(&running), "{said}");
    }
}

/// Copies by cp(1), so that the copy is never open for writing in this process: a
/// child another test thread forks meanwhile would hold it open until its exec, and
/// executing the file then fails with ETXTBSY.
fn install(from: &Path, to: &Path) {
    let tmp = to.with_extension("tmp");
    let copied = Command::new("cp").arg(from).arg(&tmp).status().unwrap();
    assert!(copied.success(), "cp {} {}", from.display(), tmp.display());
    fs::rename(&tmp, to).unwrap();
}

fn identity(path: &Path) -> (u64, u64) {
    let meta = fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (meta.dev(), meta.ino())
}

/// What each of the instance's descriptors is (sorted), to compare before and after.
fn descriptors(pid: i32) -> Vec<String> {
    let mut fds: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .map(|e| {
            let target = fs::read_link(e.path()).unwrap_or_default();
            format!("{}>{}", e.file_name().to_string_lossy(), target.display())
        })
        .collect();
    fds.sort();
    fds
}

/// Polls the pid file's lock from another open file, the whole time it runs: a shared
/// lock is granted only if start_server's exclusive one is gone, even for an instant.
struct LockWatch {
    stop: Arc<AtomicBool>,
    granted: Arc<AtomicUsize>,
    polls: Arc<AtomicUsize>,
    thread: thread::JoinHandle<()>,
}

impl LockWatch {
    fn start(pid_file: &Path) -> LockWatch {
        let file = fs::File::open(pid_file).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let granted = Arc::new(AtomicUsize::new(0));
        let polls = Arc::new(AtomicUsize::new(0));
        let (s, g, p) = (stop.clone(), granted.clone(), polls.clone());
        let thread = thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                // SAFETY: flock on a descriptor this thread's File owns.
                if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
                    g.fetch_add(1, Ordering::Relaxed);
                    // SAFETY: as above.
                    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
                }
                p.fetch_add(1, Ordering::Relaxed);
            }
        });
        LockWatch {
            stop,
            granted,
            polls,
            thread,
        }
    }

    /// How many of how many polls found the lock free.
    fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        (
            self.granted.load(Ordering::Relaxed),
            self.polls.load(Ordering::Relaxed),
        )
    }
}

fn environ(pid: i32) -> String {
    let bytes = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    String::from_utf8_lossy(&bytes).replace('\0', "\n")
}

fn http_static() -> String {
    example("http-static").display().to_string()
}

#[test]
fn an_upgrade_under_load_keeps_the_pid_the_sockets_and_the_workers() {
    let (mut d, worker) = Deployed::http();
    let before = descriptors(d.pid());
    let load = Load::start(d.addr, 4);
    load.wait_more(50);
    let lock = LockWatch::start(&d.pid_file);

    let new = d.deploy();
    assert_ne!(
        d.image(),
        new,
        "the running image is the file it was started from"
    );
    let said = d.upgrade_ok();
    assert!(
        said.contains(&format!("upgraded from {VERSION} to {VERSION} in")),
        "{said}"
    );
    assert_eq!(d.image(), new, "runs the new file");
    let link = fs::read_link(format!("/proc/{}/exe", d.pid())).unwrap();
    assert_eq!(link, d.exe);

    load.wait_more(50);
    let (granted, polls) = lock.finish();
    assert_eq!(
        granted, 0,
        "the pid file was unlocked in {granted} of {polls} polls"
    );
    assert!(polls > 100, "{polls}");
    let (generations, failures) = load.finish();
    assert!(failures.is_empty(), "{failures:?}");
    assert!(generations.iter().all(|&g| g == 1));
    assert_eq!(d.server.worker_pids(), vec![worker], "no worker restarted");
    assert_eq!(child_pids(d.pid()), vec![worker]);
    assert_eq!(read_status(&d.status), vec![(1, worker)]);
    assert_eq!(descriptors(d.pid()), before, "the same descriptors");
    let lines = d.server.lines();
    let exe = d.exe.display();
    let me = built();
    assert!(lines.contains(&format!("upgrading from {me} to {me} ({exe})")));
    d.assert_locked();

    // The next generation number, through the new image; the handover never reaches a
    // worker's environment.
    d.server.signal(libc::SIGHUP);
    let second = wait_generation(d.addr, 2);
    assert!(!environ(second).contains("SERVER_STARTER_UPGRADE"));
    assert!(environ(second).contains("SERVER_STARTER_PORT="));
    d.server.wait_status(&d.status, &[2]);
    d.server.stop();
    assert!(!d.pid_file.exists() && !d.status.exists());
}

#[test]
fn a_broken_file_at_the_path_is_refused_and_the_old_image_serves_on() {
    let (mut d, worker) = Deployed::http();
    let running = d.image();
    let before = descriptors(d.pid());
    let cases: [(&str, Option<&[u8]>, &str); 5] = [
        (
            "a script that exits 1",
            Some(b"#!/bin/sh\nexit 1\n"),
            "exited with status 1",
        ),
        ("a text file", Some(b"hello\n"), "cannot execute it"),
        ("no file", None, "No such file or directory"),
        (
            "another program",
            Some(b"#!/bin/sh\necho hello\n"),
            "not a start_server that can take over",
        ),
        (
            "a format it does not read",
            Some(b"#!/bin/sh\necho server_starter upgrade-check version=9.0 formats=9\n"),
            "version 9.0 reads state formats [9], not format 2",
        ),
    ];
    for (what, contents, why) in cases {
        match contents {
            Some(contents) => d.deploy_file(contents),
            None => fs::remove_file(&d.exe).unwrap(),
        }
        let said = d.upgrade_refused();
        assert!(said.contains(why), "{what}: {said}");
        assert_eq!(d.image(), running, "{what}");
        assert_eq!(http_get(d.addr).unwrap(), (worker, 1), "{what}");
        assert_eq!(descriptors(d.pid()), before, "{what}");
        assert_eq!(
            child_pids(d.pid()),
            vec![worker],
            "{what}: no check left behind"
        );
    }
    assert_eq!(d.server.count_lines("not upgrading to"), cases.len());
    d.assert_locked();
    // USR2 with a broken file there: the same refusal, logged.
    d.deploy_file(b"#!/bin/sh\nexit 1\n");
    d.server.signal(libc::SIGUSR2);
    d.server.wait_nth_line("not upgrading to", cases.len() + 1);

    // A good build again: the instance upgrades as if nothing had happened.
    let new = d.deploy();
    d.upgrade_ok();
    assert_eq!(d.image(), new);
    d.server.signal(libc::SIGHUP);
    wait_generation(d.addr, 2);
    d.server.stop();
}

#[test]
fn a_binary_that_does_not_answer_the_check_is_killed_and_refused() {
    let (mut d, worker) = Deployed::http();
    let running = d.image();
    d.deploy_file(b"#!/bin/sh\nexec sleep 60\n");
    let begun = Instant::now();
    let said = d.upgrade_refused();
    let took = begun.elapsed();
    assert!(
        said.contains("did not answer --upgrade-check within 5 secs"),
        "{said}"
    );
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(12),
        "{took:?}"
    );
    assert_eq!(d.image(), running);
    assert_eq!(http_get(d.addr).unwrap(), (worker, 1));
    wait_until("the killed check to be reaped", || {
        child_pids(d.pid()) == vec![worker]
    });
    d.server.stop();
}

/// The way back is tested with the same build on both sides through a documented test
/// hook: a wrapper at the path runs the build with SERVER_STARTER_UPGRADE_TEST_REFUSE
/// set, so that the new image refuses the state it is handed, as one that cannot read
/// it would, and must execute the previous image again.
#[test]
fn a_new_image_that_cannot_restore_the_state_goes_back_to_the_previous_one() {
    let (mut d, worker) = Deployed::http();
    let running = d.image();
    let before = descriptors(d.pid());
    let real = d.dir.path().join("refusing");
    install(&start_server_bin(), &real);
    let wrapper = format!(
        "#!/bin/sh\nSERVER_STARTER_UPGRADE_TEST_REFUSE=1 exec {} \"$@\"\n",
        real.display()
    );
    let load = Load::start(d.addr, 4);
    load.wait_more(20);
    let lock = LockWatch::start(&d.pid_file);
    d.deploy_file(wrapper.as_bytes());

    let said = d.upgrade_refused();
    assert!(
        said.contains(&format!(
            "the new image ({VERSION}) could not restore the state: \
             SERVER_STARTER_UPGRADE_TEST_REFUSE is set (a test hook)"
        )),
        "{said}"
    );
    assert_eq!(d.image(), running, "back to the previous image");
    d.server
        .wait_line("cannot restore the state it was handed: SERVER_STARTER_UPGRADE_TEST_REFUSE");
    d.server
        .wait_line(&format!("back to {VERSION}: the new image"));

    load.wait_more(20);
    let (granted, polls) = lock.finish();
    assert_eq!(
        granted, 0,
        "the pid file was unlocked in {granted} of {polls} polls"
    );
    let (_, failures) = load.finish();
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(d.server.worker_pids(), vec![worker]);
    assert_eq!(child_pids(d.pid()), vec![worker]);
    assert_eq!(descriptors(d.pid()), before);
    d.assert_locked();
    d.server.signal(libc::SIGHUP);
    let second = wait_generation(d.addr, 2);
    assert!(!environ(second).contains("SERVER_STARTER_UPGRADE"));
    d.server.stop();
}

#[test]
fn usr2_during_a_restart_lets_it_complete_under_the_new_image() {
    // The restart's interval is under way when the upgrade comes, half-way through:
    // the new image counts the rest of it, not a whole one again.
    const INTERVAL: f64 = 2.5;
    let interval = format!("--interval={INTERVAL}");
    let worker = perl_worker().display().to_string();
    let mut d = Deployed::start(&[&interval], &[&worker], &[]);
    let first = d.server.wait_status(&d.status, &[1])[0].1;
    let hup = Instant::now();
    d.server.signal(libc::SIGHUP);
    d.server.wait_nth_line("starting new worker", 2);
    let new = d.deploy();
    thread::sleep(Duration::from_secs_f64(INTERVAL / 2.0).saturating_sub(hup.elapsed()));
    d.server.signal(libc::SIGUSR2);
    d.server.wait_line("upgraded from");
    assert_eq!(d.image(), new);
    d.server.wait_line("new worker is now running");
    let took = hup.elapsed().as_secs_f64();
    assert!(
        (INTERVAL - 0.1..INTERVAL * 1.5 - 0.1).contains(&took),
        "started {took} s after HUP: the interval was not carried over"
    );
    let entries = d.server.wait_status(&d.status, &[2]);
    d.server.wait_line(&format!("old worker {first} died"));
    d.assert_in_order("upgraded from", "new worker is now running");
    assert_eq!(http_get(d.addr).unwrap(), (entries[0].1, 2));
    d.server.stop();
}

#[test]
fn usr2_storms_settle_with_no_leaked_descriptor_or_worker() {
    let (mut d, worker) = Deployed::http();
    let before = descriptors(d.pid());
    let load = Load::start(d.addr, 4);
    load.wait_more(20);
    let new = d.deploy();
    for _ in 0..10 {
        d.server.signal(libc::SIGUSR2);
    }
    // A HUP sent in the storm is acted on by one image or the other, never lost.
    d.server.signal(libc::SIGHUP);
    // Asked after every signal was sent: answered once the storm has settled.
    d.upgrade_ok();
    assert_eq!(d.image(), new);
    let entries = d.server.wait_status(&d.status, &[2]);
    load.wait_more(20);
    let (_, failures) = load.finish();
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(
        child_pids(d.pid()),
        vec![entries[0].1],
        "no check or worker left"
    );
    assert_eq!(d.server.worker_pids(), vec![worker, entries[0].1]);
    assert_eq!(descriptors(d.pid()), before, "no descriptor leaked");
    let upgrades = d.server.count_lines("upgraded from");
    assert!((1..=11).contains(&upgrades), "{upgrades}");
    d.server.stop();
}

#[test]
fn readiness_sent_to_the_previous_image_s_socket_counts_in_the_new_one() {
    let worker = perl_worker().display().to_string();
    let mut d = Deployed::start(
        &["--ready=notify", "--ready-timeout=20"],
        &[&worker],
        &[("READY_DELAY", "1.5")],
    );
    d.server.wait_status(&d.status, &[1]);
    d.server.signal(libc::SIGHUP);
    d.server.wait_nth_line("starting new worker", 2);
    d.deploy();
    d.upgrade_ok();
    // Generation 2 says READY=1 on the socket the previous image made for it.
    let entries = d.server.wait_status(&d.status, &[2]);
    assert_eq!(http_get(d.addr).unwrap(), (entries[0].1, 2));
    d.assert_in_order("upgraded from", "new worker is now running");
    d.server.stop();
}

#[test]
fn the_log_pipe_and_the_envdir_are_kept() {
    let dir = TempDir::new("upgrade-log");
    let piped = dir.path().join("piped.log");
    let envdir = dir.path().join("env");
    fs::create_dir(&envdir).unwrap();
    fs::write(envdir.join("GREETING"), "one\n").unwrap();
    // tee: the lines reach the test's log of start_server's output too.
    let log = format!("--log-file=| tee -a {}", piped.display());
    let env = format!("--envdir={}", envdir.display());
    let report = dir.path().join("report");
    let script = format!(
        "echo \"$SERVER_STARTER_GENERATION $GREETING\" >> {}; exec sleep 60",
        report.display()
    );
    let mut d = Deployed::start(&["--interval=0.1", &log, &env], &["sh", "-c", &script], &[]);
    let worker = d.server.wait_status(&d.status, &[1])[0].1;
    let loggers = |d: &Deployed| -> Vec<i32> {
        let workers: Vec<i32> = read_status(&d.status).iter().map(|e| e.1).collect();
        let children = child_pids(d.pid());
        children
            .into_iter()
            .filter(|p| !workers.contains(p))
            .collect()
    };
    let logger = wait_for("the logger", || match loggers(&d)[..] {
        [one] => Some(one),
        _ => None,
    });
    d.deploy();
    d.upgrade_ok();
    assert_eq!(child_pids(d.pid()), {
        let mut both = vec![worker, logger];
        both.sort();
        both
    });
    // The new image supervises the logger it was handed: one that dies is restarted
    // (after a pause, having run for less than 10 secs), and the line saying so reaches
    // the file through the new one. The logger leads a process group of its own.
    signal(-logger, libc::SIGTERM);
    wait_until("the logger's restart noted in the file", || {
        fs::read_to_string(&piped).is_ok_and(|t| t.contains("log command exited"))
    });
    let restarted = wait_for("a new logger", || match loggers(&d)[..] {
        [one] if one != logger => Some(one),
        _ => None,
    });
    // The envdir is read again, by the new image, for the next generation.
    fs::write(envdir.join("GREETING"), "two\n").unwrap();
    d.server.signal(libc::SIGHUP);
    d.server.wait_status(&d.status, &[2]);
    wait_until("generation 2's report", || {
        fs::read_to_string(&report).unwrap_or_default() == "1 one\n2 two\n"
    });
    d.server.stop();
    // The logger was waited for: every line is there, the last one included.
    let text = fs::read_to_string(&piped).unwrap();
    for line in ["upgraded from", "starting new worker", "exiting"] {
        assert!(text.contains(line), "{line:?} not in {text}");
    }
    assert!(!pid_alive(restarted));
}

#[test]
fn usr1_reopens_the_log_file_after_an_upgrade() {
    let dir = TempDir::new("upgrade-usr1");
    let log = dir.path().join("app.log");
    // The test's log of start_server's output is left empty: a worker on a port taken
    // meanwhile shows as no answer, and the next port is tried.
    let (mut d, port) = (0..5)
        .find_map(|_| {
            let port = free_port("127.0.0.1");
            let log = format!("--log-file={}", log.display());
            let port_arg = format!("--port=127.0.0.1:{port}");
            let d =
                Deployed::start_bare(&[&port_arg, "--interval=0.1", &log, "--", &http_static()]);
            let answered = wait_for("an answer or an exit", || {
                if http_get(addr("127.0.0.1", port)).is_ok() {
                    return Some(true);
                }
                fs::read_to_string(&log)
                    .is_ok_and(|t| t.contains(ADDRESS_IN_USE))
                    .then_some(false)
            });
            answered.then_some((d, port))
        })
        .expect("a free port in 5 tries");
    wait_generation(addr("127.0.0.1", port), 1);
    d.deploy();
    d.upgrade_ok();
    fs::rename(&log, dir.path().join("app.log.1")).unwrap();
    d.server.signal(libc::SIGUSR1);
    wait_until("the reopened log", || {
        fs::read_to_string(&log).is_ok_and(|t| t.contains("log file reopened"))
    });
    let old = fs::read_to_string(dir.path().join("app.log.1")).unwrap();
    assert!(old.contains("upgraded from"), "{old}");
    d.server.stop();
}

/// An instance without a control socket (here, one started without --pid-file, whose
/// pid file the test writes and locks itself; the instance has it open, as an older
/// start_server has its own, through a descriptor it inherited) is sent USR2; the
/// client watches /proc/PID/exe.
#[test]
fn without_a_control_socket_the_client_signals_and_watches_the_image() {
    let dir = TempDir::new("upgrade-nosock");
    let exe = dir.path().join("start_server");
    install(&start_server_bin(), &exe);
    let http = http_static();
    let pid_file = dir.path().join("pid");
    fs::write(&pid_file, "").unwrap();
    let (mut server, port) = Server::start_program_retrying(
        Path::new("sh"),
        |port| {
            vec![
                "-c".into(),
                format!("exec \"$0\" \"$@\" 9<{}", pid_file.display()),
                exe.display().to_string(),
                format!("--port=127.0.0.1:{port}"),
                "--interval=0.1".into(),
                "--".into(),
                http.clone(),
            ]
        },
        &[],
    );
    let addr = addr("127.0.0.1", port);
    let worker = wait_generation(addr, 1);
    fs::write(&pid_file, format!("{}\n", server.pid())).unwrap();
    let held = fs::File::open(&pid_file).unwrap();
    // SAFETY: flock on a descriptor the test owns.
    assert_eq!(unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX) }, 0);
    let upgrade = || {
        Command::new(start_server_bin())
            .args(["--upgrade", &format!("--pid-file={}", pid_file.display())])
            .output()
            .unwrap()
    };

    let out = upgrade();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(said.contains("already runs"), "{said}");
    assert!(
        !server.has_line("received USR2"),
        "not sent when nothing can be seen"
    );

    install(&start_server_bin(), &exe);
    let out = upgrade();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        said.contains(&format!("runs {} now", exe.display())),
        "{said}"
    );
    assert_eq!(
        identity(Path::new(&format!("/proc/{}/exe", server.pid()))),
        identity(&exe)
    );
    server.wait_line("upgraded from");
    assert_eq!(http_get(addr).unwrap(), (worker, 1));
    server.stop();
}

/// The Perl original dies of USR2 (its default action): the client must never send it.
#[test]
fn the_perl_original_is_never_sent_usr2() {
    let dir = TempDir::new("upgrade-perl");
    let pid_file = dir.path().join("pid");
    let mut perl = common::StartServer::spawn(
        Path::new("/usr/bin/start_server"),
        &[
            format!("--pid-file={}", pid_file.display()),
            "--interval=0".into(),
            "--".into(),
            "sleep".into(),
            "60".into(),
        ],
        &[],
        dir.path().join("log"),
    );
    wait_until("the original's pid file", || {
        fs::read_to_string(&pid_file).is_ok_and(|t| t.trim() == perl.pid().to_string())
    });
    let out = Command::new(start_server_bin())
        .args(["--upgrade", &format!("--pid-file={}", pid_file.display())])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(said.contains("not sending USR2"), "{said}");
    assert!(perl.try_status().is_none(), "the original is still running");
    perl.signal(libc::SIGTERM);
    perl.wait_exit(common::PATIENCE);
}

/// A socket adopted from systemd (held by the test, as a socket unit holds it), with
/// `--listen-fds` and `--watchdog`: after the upgrade, the next generation still gets
/// the socket-activation variables and its own LISTEN_PID and WATCHDOG_PID.
#[test]
fn adopted_sockets_and_systemd_variables_are_kept() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap();
    let dir = TempDir::new("upgrade-sd");
    let exe = dir.path().join("start_server");
    install(&start_server_bin(), &exe);
    let pid_file = dir.path().join("pid");
    let status = dir.path().join("status");
    let mut cmd = socket_activated_command(&exe, holder.as_raw_fd());
    cmd.args([
        "--port",
        &addr.to_string(),
        "--listen-fds",
        "--watchdog=10",
        "--interval=0.1",
        &format!("--pid-file={}", pid_file.display()),
        &format!("--status-file={}", status.display()),
        "--",
    ])
    .arg(perl_worker());
    let mut d = Deployed {
        server: Server::spawn(cmd),
        dir,
        exe,
        pid_file,
        status,
        addr,
    };
    let first = wait_generation(d.addr, 1);
    d.deploy();
    d.upgrade_ok();
    d.server.signal(libc::SIGHUP);
    let second = wait_generation(d.addr, 2);
    let env = environ(second);
    for expected in [
        format!("LISTEN_PID={second}"),
        format!("WATCHDOG_PID={second}"),
        "LISTEN_FDS=1".into(),
        format!("SERVER_STARTER_PORT={addr}=3"),
    ] {
        assert!(
            env.lines().any(|l| l == expected),
            "{expected} not in {env}"
        );
    }
    assert!(!env.contains("SERVER_STARTER_UPGRADE"));
    assert!(!d
        .server
        .has_line(&format!("worker {first} sent no WATCHDOG")));
    d.server.stop();
    assert!(d.dir.path().exists());
}

/// The handover variable set by mistake at a normal start: one line naming it, exit
/// 255, nothing bound or spawned.
#[test]
fn a_stray_handover_variable_is_refused_in_one_line() {
    let dir = TempDir::new("upgrade-stray");
    let port = free_port("127.0.0.1");
    for (value, said) in [
        (
            "x",
            "SERVER_STARTER_UPGRADE_STATE=\"x\": not STATE_FD,IMAGE_FD",
        ),
        (
            "50,51",
            "SERVER_STARTER_UPGRADE_STATE=\"50,51\": descriptor 50: Bad file descriptor",
        ),
    ] {
        let out = Command::new(start_server_bin())
            .args([&format!("--port=127.0.0.1:{port}"), "--", "sleep", "60"])
            .env("SERVER_STARTER_UPGRADE_STATE", value)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(255), "{stderr}");
        assert!(stderr.contains(said), "{value}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
}

/// The state is sealed before the exec: a new image cannot change what the previous
/// one would read back if it had to go back. Here the "new image" is a script that
/// tries to overwrite the state, then runs the build, whose upgrade goes through.
#[test]
fn the_handed_state_cannot_be_written_by_the_new_image() {
    let (mut d, worker) = Deployed::http();
    let real = d.dir.path().join("real");
    install(&start_server_bin(), &real);
    let marker = d.dir.path().join("wrote-the-state");
    let script = format!(
        "#!/bin/sh\n\
         if [ \"$1\" != --upgrade-check ]; then\n\
         \x20 state=${{SERVER_STARTER_UPGRADE_STATE%%,*}}\n\
         \x20 if printf 'x' | dd of=/proc/self/fd/$state conv=notrunc status=none 2>/dev/null; then\n\
         \x20   touch {}\n\
         \x20 fi\n\
         fi\n\
         exec {} \"$@\"\n",
        marker.display(),
        real.display()
    );
    d.deploy_file(script.as_bytes());
    d.upgrade_ok();
    assert!(!marker.exists(), "the new image could write the state");
    assert_eq!(http_get(d.addr).unwrap(), (worker, 1));
    d.server.stop();
}

/// `start_server --upgrade ... | true`: the client's reader is gone when it says how the
/// upgrade went. Its exit status still says so, with no panic (EPIPE is not an error of
/// the upgrade's).
#[test]
fn a_client_whose_output_is_closed_exits_by_the_outcome() {
    let (mut d, _) = Deployed::http();
    // start_server with `args`, its stdout a pipe whose reader is gone: (exit code,
    // what it said on stderr).
    let run = |args: &[&str]| {
        let mut child = Command::new(start_server_bin())
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!said.contains("panicked"), "{args:?}: {said}");
        (out.status.code(), said)
    };
    let pid_file = format!("--pid-file={}", d.pid_file.display());
    let new = d.deploy();
    assert_eq!(run(&["--upgrade", &pid_file]), (Some(0), String::new()));
    assert_eq!(d.image(), new);
    d.deploy_file(b"#!/bin/sh\nexit 1\n");
    let (code, said) = run(&["--upgrade", &pid_file]);
    assert_eq!(code, Some(255), "{said}");
    assert!(said.contains("exited with status 1"), "{said}");
    d.server.stop();
    // The same for what the other modes print.
    for mode in ["--version", "--help"] {
        assert_eq!(run(&[mode]), (Some(0), String::new()), "{mode}");
    }
}

/// A deploy that switches a symbolic link (`current -> v2`) is upgraded to: the path
/// start_server was started by is kept as given, and followed at the upgrade, not
/// resolved once at start (which re-executed v1 and reported success).
#[test]
fn a_deploy_that_switches_a_symbolic_link_is_upgraded_to() {
    let dir = TempDir::new("upgrade-link");
    for v in ["v1", "v2"] {
        fs::create_dir(dir.path().join(v)).unwrap();
        install(
            &start_server_bin(),
            &dir.path().join(v).join("start_server"),
        );
    }
    let current = dir.path().join("current");
    std::os::unix::fs::symlink("v1", &current).unwrap();
    let exe = current.join("start_server");
    let pid_file = dir.path().join("pid");
    let (mut server, port) = Server::start_program_retrying(
        &exe,
        |port| {
            vec![
                format!("--port=127.0.0.1:{port}"),
                format!("--pid-file={}", pid_file.display()),
                "--interval=0.1".into(),
                "--".into(),
                http_static(),
            ]
        },
        &[],
    );
    let worker = wait_generation(addr("127.0.0.1", port), 1);
    let image = || identity(Path::new(&format!("/proc/{}/exe", server.pid())));
    assert_eq!(image(), identity(&dir.path().join("v1/start_server")));

    let next = dir.path().join("current.new");
    std::os::unix::fs::symlink("v2", &next).unwrap();
    fs::rename(&next, &current).unwrap();
    let out = run_within(
        &["--upgrade", &format!("--pid-file={}", pid_file.display())],
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        image(),
        identity(&dir.path().join("v2/start_server")),
        "runs v2"
    );
    let me = built();
    assert!(server.has_line(&format!("upgrading from {me} to {me} ({})", exe.display())));
    assert_eq!(server.worker_pids(), vec![worker]);
    server.stop();
}

/// The file checked is the one executed: opened once, both checked and executed from
/// that open file. Here the path is exchanged (renameat2 RENAME_EXCHANGE) with a
/// binary that fails the check while the check runs (it waits for the test's go): the
/// upgrade goes ahead with the file that passed, and the other one never runs.
#[test]
fn the_file_checked_is_the_file_executed_whatever_the_path_holds_meanwhile() {
    let tools = TempDir::new("upgrade-swap");
    let real = tools.path().join("real");
    install(&start_server_bin(), &real);
    let gate = tools.path().join("go");
    let checking = tools.path().join("go.checking");
    // A start_server whose --upgrade-check waits (boundedly) for the go.
    let source = tools.path().join("slow_check.c");
    fs::write(
        &source,
        r#"#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
    const char *real = getenv("SLOW_CHECK_REAL"), *gate = getenv("SLOW_CHECK_GATE");
    const char *checking = getenv("SLOW_CHECK_CHECKING");
    if (!real || !gate || !checking) return 100;
    if (argc == 2 && strcmp(argv[1], "--upgrade-check") == 0) {
        close(open(checking, O_CREAT | O_WRONLY, 0644));
        for (int i = 0; i < 400 && access(gate, F_OK) != 0; i++) usleep(10000);
    }
    execv(real, argv);
    return 101;
}
"#,
    )
    .unwrap();
    let slow = tools.path().join("slow_check");
    let built = Command::new("cc")
        .arg("-o")
        .arg(&slow)
        .arg(&source)
        .output()
        .unwrap();
    assert!(built.status.success(), "{built:?}");
    let env = [
        ("SLOW_CHECK_REAL", real.display().to_string()),
        ("SLOW_CHECK_GATE", gate.display().to_string()),
        ("SLOW_CHECK_CHECKING", checking.display().to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut d = Deployed::start(&["--interval=0.1"], &[&http_static()], &env);
    let worker = wait_generation(d.addr, 1);
    install(&slow, &d.exe);
    // What must never run: a binary that fails the check (and would take the
    // instance down with it).
    let other = d.dir.path().join("other");
    install(Path::new("/bin/false"), &other);
    let failing = identity(&other);

    let client = Command::new(start_server_bin())
        .args(["--upgrade", &format!("--pid-file={}", d.pid_file.display())])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the check to start", || checking.exists());
    let c = |p: &Path| std::ffi::CString::new(p.display().to_string()).unwrap();
    let (a, b) = (c(&d.exe), c(&other));
    // SAFETY: two NUL-terminated paths; renameat2 has no other preconditions.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    assert_eq!(rc, 0, "renameat2: {}", std::io::Error::last_os_error());
    assert_eq!(
        identity(&d.exe),
        failing,
        "the path now holds the failing binary"
    );
    fs::write(&gate, b"").unwrap();

    let out = client.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains(&format!("upgraded from {VERSION} to {VERSION}")),
        "{out:?}\nlog: {:?}",
        d.server.lines()
    );
    assert!(pid_alive(d.pid()), "the instance runs on");
    // The checked file exec'd the build under test, which now runs.
    assert_eq!(d.image(), identity(&real));
    assert_eq!(http_get(d.addr).unwrap(), (worker, 1));
    assert_eq!(d.server.worker_pids(), vec![worker]);
    d.server.stop();
}
