//! start_server(1) read against the binary it documents: every long option the page
//! names is one the binary takes (and every one `--help` lists is in OPTIONS), every
//! environment variable it names is one the source uses, read back from a real
//! worker's environment where the page says a worker gets it, every signal of the
//! SIGNALS table does what the table says, and every exit status of EXIT STATUS is
//! the one the binary exits with in the cases the page gives.

mod common;
mod support;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::Path;

use common::{TempDir, PATIENCE};
use support::*;

fn page() -> String {
    let path = common::repo_root().join("man/start_server.1");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Roff source made text: escapes undone, font changes and macro names dropped,
/// lines joined with spaces (so that a phrase split over lines reads whole).
fn plain(roff: &str) -> String {
    roff.lines()
        .filter(|l| !l.starts_with(".\\\"") && !l.starts_with("'\\\""))
        .map(|l| {
            let l = match l.strip_prefix('.') {
                // `.B text`, `.BR a b`: the macro's words; `.PP`, `.TP`: nothing.
                Some(rest) => rest.split_once(' ').map_or("", |(_, text)| text),
                None => l,
            };
            l.replace("\\-", "-")
                .replace("\\fB", "")
                .replace("\\fI", "")
                .replace("\\fR", "")
                .replace("\\fP", "")
                .replace("\\c", "")
                .replace("\\&", "")
                .replace("\\(dq", "\"")
                .replace("\\e", "\\")
                .replace('"', "")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The roff source of section `name` (`.SH name` up to the next `.SH`).
fn section(page: &str, name: &str) -> String {
    let start = page
        .find(&format!("\n.SH {name}\n"))
        .unwrap_or_else(|| panic!("start_server(1) has no section {name}"));
    let body = &page[start + 1..];
    let body = &body[body.find('\n').unwrap() + 1..];
    body[..body.find("\n.SH ").unwrap_or(body.len())].to_string()
}

/// Every `--name` in `text`.
fn long_options(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (i, _) in text.match_indices("--") {
        let before = text[..i].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-') {
            continue;
        }
        let name: String = text[i + 2..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
            .collect();
        if name.starts_with(|c: char| c.is_ascii_lowercase()) {
            found.insert(name.trim_end_matches('-').to_string());
        }
    }
    found
}

fn help() -> String {
    let out = run_within(&["--help"], PATIENCE);
    assert!(out.status.success(), "--help: {}", out.status);
    String::from_utf8(out.stdout).expect("--help prints UTF-8")
}

#[test]
fn the_options_of_help_are_those_of_the_page() {
    // The options `--help` lists, each on a line of its own.
    let listed: BTreeSet<String> = help()
        .lines()
        .filter_map(|l| l.strip_prefix("  --"))
        .map(|l| {
            let end = l.find(['=', ' ']).unwrap_or(l.len());
            l[..end].to_string()
        })
        .collect();
    // The options OPTIONS documents: the first option of each item's tag line.
    let options = section(&page(), "OPTIONS");
    let mut documented = BTreeSet::new();
    let mut lines = options.lines();
    while let Some(line) = lines.next() {
        if line == ".TP" || line == ".TQ" {
            let tag = plain(lines.next().unwrap_or_default());
            let first = long_options(&tag).into_iter().next();
            documented
                .insert(first.unwrap_or_else(|| panic!("an option item without an option: {tag}")));
        }
    }
    assert!(listed.len() > 20, "--help lists {listed:?}");
    let undocumented: Vec<_> = listed.difference(&documented).collect();
    let unlisted: Vec<_> = documented.difference(&listed).collect();
    assert!(
        undocumented.is_empty() && unlisted.is_empty(),
        "in --help but not in OPTIONS: {undocumented:?}; in OPTIONS but not in --help: {unlisted:?}"
    );
}

/// Options of other programs that the page names (gunicorn's, systemd-notify's).
const NOT_OURS: [&str; 3] = ["bind", "chdir", "no-block"];

#[test]
fn every_option_the_page_names_is_taken_by_the_binary() {
    let named = long_options(&plain(&page()));
    assert!(named.contains("kill-old-delay") && named.contains("upgrade-check"));
    for option in &named {
        // Alone, every option stops before anything starts: it lacks a value, a
        // server command or a pid file, or it prints something and exits.
        let out = run_within(&[&format!("--{option}")], PATIENCE);
        let said = String::from_utf8_lossy(&out.stderr).to_lowercase();
        let unknown = said.contains("unknown option");
        assert_eq!(
            unknown,
            NOT_OURS.contains(&option.as_str()),
            "--{option}, named in start_server(1): {said}"
        );
    }
}

/// Words of the page that look like variables but name sections or values.
fn is_variable(word: &str, page: &str) -> bool {
    word.len() > 3
        && word
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        && word.starts_with(|c: char| c.is_ascii_uppercase())
        && !page.contains(&format!(".SH {word}"))
        && !page
            .lines()
            .any(|l| l.starts_with(".SH ") && l.contains(word))
}

/// The bold words of a `.B`, `.BR` or `.BI` line (`.BI NAME= ARG`: NAME alone).
fn bold(line: &str) -> Vec<String> {
    let Some((mac, args)) = line.split_once(' ') else {
        return Vec::new();
    };
    // Quoted arguments may hold spaces.
    let mut words = Vec::new();
    let mut rest = args.trim();
    while !rest.is_empty() {
        let (word, after) = match rest.strip_prefix('"') {
            Some(quoted) => quoted.split_once('"').unwrap_or((quoted, "")),
            None => rest.split_once(' ').unwrap_or((rest, "")),
        };
        words.push(word.to_string());
        rest = after.trim_start();
    }
    match mac {
        ".B" => vec![words.join(" ")],
        // Alternating fonts, bold first.
        ".BR" | ".BI" => words.into_iter().step_by(2).collect(),
        _ => Vec::new(),
    }
}

/// The variables ENVIRONMENT names, in bold.
fn environment_variables(page: &str) -> BTreeSet<String> {
    section(page, "ENVIRONMENT")
        .lines()
        .flat_map(bold)
        .flat_map(|text| {
            plain(&text)
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .filter(|w| is_variable(w, page))
        .collect()
}

/// Every file under `dir`, read as text.
fn sources(dir: &Path, into: &mut String) {
    for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
}

/// The variables of /proc/PID/environ.
fn environ(pid: i32) -> Vec<(String, String)> {
    let bytes = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    bytes
        .split(|&b| b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok()?.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn the_environment_the_page_names_is_the_binarys() {
    let page = page();
    let named = environment_variables(&page);
    assert!(
        named.contains("SERVER_STARTER_PORT") && named.contains("ENVDIR"),
        "{named:?}"
    );

    // A worker given every variable the page says a worker may get, under a
    // start_server that has a service manager's variables of its own.
    let dir = TempDir::new("manenv");
    let envdir = dir.path().join("env");
    std::fs::create_dir(&envdir).unwrap();
    let manager = std::os::unix::net::UnixDatagram::bind(dir.path().join("notify")).unwrap();
    let manager_socket = dir.path().join("notify").display().to_string();
    let server = Server::start_with(
        &[
            &format!("--path={}", dir.path().join("s.sock").display()),
            &format!("--envdir={}", envdir.display()),
            "--listen-fds",
            "--ready=notify",
            "--ready-timeout=600",
            "--watchdog=600",
            "--enable-auto-restart",
            "--kill-old-delay=7",
            "--",
            "sleep",
            "600",
        ],
        &[
            ("NOTIFY_SOCKET", &manager_socket),
            ("WATCHDOG_USEC", "123"),
            ("WATCHDOG_PID", "1"),
        ],
    );
    let worker = wait_for("a worker", || server.worker_pids().first().copied());
    let env = wait_for("the worker's exec", || {
        let env = environ(worker);
        env.iter()
            .any(|(k, _)| k == "SERVER_STARTER_GENERATION")
            .then_some(env)
    });
    let get = |key: &str| env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());

    let mut source = String::new();
    sources(&common::repo_root().join("src"), &mut source);
    let text = plain(&page);
    for var in &named {
        assert!(
            source.contains(&format!("\"{var}\"")) || source.contains(&format!("{var}=")),
            "{var} is named in start_server(1), ENVIRONMENT, but not in the source"
        );
        if get(var).is_some() {
            assert!(
                !text.contains(&format!("{var} is not set")),
                "start_server(1) says {var} is not set; a worker has {var}={:?}",
                get(var)
            );
        }
    }
    // What the page says a worker gets, and what it says never reaches one.
    for var in [
        "SERVER_STARTER_PORT",
        "SERVER_STARTER_GENERATION",
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "ENVDIR",
        "ENABLE_AUTO_RESTART",
        "AUTO_RESTART_INTERVAL",
        "KILL_OLD_DELAY",
    ] {
        assert!(named.contains(var), "ENVIRONMENT does not name {var}");
        assert!(get(var).is_some(), "the worker has no {var}: {env:?}");
    }
    assert_eq!(get("WATCHDOG_PID"), Some(worker.to_string().as_str()));
    assert_eq!(get("LISTEN_PID"), Some(worker.to_string().as_str()));
    assert_eq!(get("WATCHDOG_USEC"), Some("600000000"));
    assert_ne!(get("NOTIFY_SOCKET"), Some(manager_socket.as_str()));
    assert_eq!(get("KILL_OLD_DELAY"), Some("7"));
    assert!(get("SERVER_STARTER_UPGRADE_STATE").is_none());
    drop(manager);
    drop(server);
}

/// The signals of a SIGNALS table row (`ALRM, VTALRM, PROF`; `32 to 64`), with what
/// the row says first (`Stop`, `Logged and ignored`, ...).
fn signal_rows(page: &str) -> Vec<(Vec<String>, String)> {
    let signals = section(page, "SIGNALS");
    let table = &signals[signals.find("\n_\n").expect("the table's header rule") + 3..];
    let table = &table[..table.find("\n.TE").expect("the table's end")];
    let mut rows = Vec::new();
    for row in table.split("T}\n") {
        let Some((names, what)) = row.split_once("|T{\n") else {
            continue;
        };
        let names = names.split(", ").map(|n| n.trim().to_string()).collect();
        rows.push((names, plain(what)));
    }
    rows
}

fn number(name: &str) -> Option<i32> {
    Some(match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "ABRT" => libc::SIGABRT,
        "TERM" => libc::SIGTERM,
        "XCPU" => libc::SIGXCPU,
        "ALRM" => libc::SIGALRM,
        "VTALRM" => libc::SIGVTALRM,
        "PROF" => libc::SIGPROF,
        "IO" => libc::SIGIO,
        "PWR" => libc::SIGPWR,
        "SYS" => libc::SIGSYS,
        "TRAP" => libc::SIGTRAP,
        "STKFLT" => libc::SIGSTKFLT,
        "PIPE" => libc::SIGPIPE,
        "XFSZ" => libc::SIGXFSZ,
        _ => return None,
    })
}

fn sleeper(extra: &[&str]) -> Server {
    let mut args = extra.to_vec();
    args.extend(["--interval=0", "--", "sleep", "600"]);
    let server = Server::start(&args);
    server.wait_line("starting new worker");
    server
}

#[test]
fn the_signals_do_what_the_table_says() {
    let rows = signal_rows(&page());
    let me = std::process::id();
    let (mut stops, mut logged, mut silent) = (Vec::new(), Vec::new(), Vec::new());
    for (names, what) in &rows {
        for name in names {
            if name == "32 to 64" {
                assert!(what.starts_with("The real-time signals"), "{what}");
                // RTMIN, one in the middle, RTMAX: as the row names them.
                logged.extend([
                    (34, "RTMIN".to_string()),
                    (40, "NUM40".into()),
                    (64, "RTMAX".into()),
                ]);
                continue;
            }
            let Some(sig) = number(name) else { continue };
            if what.starts_with("Stop") {
                stops.push((sig, name.clone()));
            } else if what.starts_with("Logged and ignored") {
                logged.push((sig, name.clone()));
            } else if what.starts_with("Ignored (SIG_IGN, not logged)") {
                silent.push(sig);
            }
        }
    }
    let names = |v: &[(i32, String)]| v.iter().map(|s| s.1.clone()).collect::<Vec<_>>();
    assert_eq!(names(&stops), ["TERM", "INT", "QUIT", "ABRT", "XCPU"]);
    assert!(
        logged.len() >= 10 && silent.len() == 2,
        "{logged:?} {silent:?}"
    );

    // The ignored ones, to one instance: logged with the sender, or not at all.
    let mut server = sleeper(&[]);
    for sig in silent {
        server.signal(sig);
    }
    for (sig, name) in &logged {
        server.signal(*sig);
        server.wait_line(&format!("received {name} from pid {me}, ignoring it"));
    }
    assert!(server.try_exit().is_none(), "{:?}", server.lines());
    assert!(!server.has_line("received PIPE") && !server.has_line("received XFSZ"));
    server.stop();

    // Each stop signal: a clean stop, exit 0, its pid file removed.
    for (sig, name) in stops {
        let dir = TempDir::new("manstop");
        let pid_file = dir.path().join("pid");
        let mut server = sleeper(&[&format!("--pid-file={}", pid_file.display())]);
        wait_until("the pid file", || pid_file.exists());
        server.signal(sig);
        let status = server.wait_exit();
        assert!(status.success(), "{name}: {status} {:?}", server.lines());
        assert!(!pid_file.exists(), "{name} left the pid file");
    }
}

#[test]
fn the_exit_statuses_are_those_of_the_page() {
    let exits = plain(&section(&page(), "EXIT STATUS"));
    let listed: BTreeSet<i32> = exits
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    let dir = TempDir::new("manexit");
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let missing = dir.path().join("none.pid").display().to_string();
    // The page's cases, each with the status it gives for them.
    let cases: [(&[&str], i32); 9] = [
        (&["--version"], 0),
        (&["--no-such-option"], 1),
        (&["--port"], 1),
        (&["--interval=soon", "--", "true"], 1),
        (&["--signal-on-hup=NOSUCHSIG", "--", "true"], 255),
        (&[&format!("--port=127.0.0.1:{port}"), "--", "true"], 255),
        (&["--stop", &format!("--pid-file={missing}")], 3),
        (&["--upgrade", &format!("--pid-file={missing}")], 255),
        (&["--port=127.0.0.1:99999", "--", "true"], 255),
    ];
    let mut seen = BTreeSet::new();
    for (args, expected) in cases {
        let out = run_within(args, PATIENCE);
        assert_eq!(
            out.status.code(),
            Some(expected),
            "start_server {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        seen.insert(expected);
    }
    // A clean stop is 0 too (the_signals_do_what_the_table_says).
    assert_eq!(
        listed, seen,
        "EXIT STATUS lists {listed:?}; the binary's cases give {seen:?} (a status the page \
         lists needs a case here)"
    );
    drop(taken);
}
