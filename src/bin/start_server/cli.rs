//! The command line: every option of Server::Starter 0.35's start_server, spelled the
//! same, as `--opt=value` or `--opt value`, and, as Getopt::Long allows, with one dash
//! or abbreviated to any unambiguous prefix.

use std::path::PathBuf;
use std::time::Duration;

use getopts::{Options, ParsingStyle};

use crate::port_names;
use crate::port_spec::{self, PortSpec};
use crate::signals::Signal;

/// What start_server was asked to do.
pub enum Mode {
    Help,
    Version,
    Start(Box<Config>),
    /// `--restart`: ask the running instance for a restart and wait for the verdict.
    Restart {
        pid_file: PathBuf,
        /// Needed only for an instance without a control socket.
        status_file: Option<PathBuf>,
    },
    /// `--stop`: TERM the running instance and wait for it to exit; with
    /// `--kill-timeout`, for at most that long plus `control::STOP_MARGIN`.
    Stop {
        pid_file: PathBuf,
        kill_timeout: Option<Duration>,
    },
    /// `--upgrade`: have the running instance re-execute its binary in place, and say
    /// whether it now runs the new one.
    Upgrade {
        pid_file: PathBuf,
    },
}

pub struct Config {
    pub ports: Vec<PortSpec>,
    pub paths: Vec<PathBuf>,
    pub dir: Option<PathBuf>,
    pub interval: Duration,
    pub signal_on_hup: Signal,
    pub signal_on_term: Signal,
    pub pid_file: Option<PathBuf>,
    pub status_file: Option<PathBuf>,
    pub envdir: Option<PathBuf>,
    pub log_file: Option<String>,
    pub daemonize: bool,
    pub enable_auto_restart: bool,
    pub auto_restart_interval: Option<Duration>,
    pub kill_old_delay: Option<Duration>,
    pub kill_timeout: Option<Duration>,
    pub backoff: Option<Duration>,
    pub ready_notify: bool,
    pub ready_timeout: Duration,
    pub watchdog: Option<Duration>,
    pub backlog: i32,
    /// Also hand the sockets to the workers as systemd does (LISTEN_FDS).
    pub listen_fds: bool,
    /// `--workers`, if given: how many workers a generation has.
    pub workers: Option<u32>,
    pub command: Vec<String>,
}

/// The most `--workers` a generation may have: far beyond any machine's cores, low
/// enough that a typo is not taken as a fork bomb.
pub const MAX_WORKERS: u32 = 1024;

/// A command-line error: the message, and the exit status the original uses for it
/// (1 for what Getopt::Long rejects, 255 for what it dies on later).
#[derive(Debug)]
pub struct Error {
    pub message: String,
    pub status: u8,
}

fn usage(message: String) -> Error {
    Error { message, status: 1 }
}

fn invalid(message: String) -> Error {
    Error {
        message,
        status: 255,
    }
}

/// (name, takes a value). The original's options come first: an abbreviation that
/// names one of them unambiguously still does, whatever options were added since.
const OPTIONS: &[(&str, bool)] = &[
    ("port", true),
    ("path", true),
    ("interval", true),
    ("log-file", true),
    ("pid-file", true),
    ("dir", true),
    ("signal-on-hup", true),
    ("signal-on-term", true),
    ("backlog", true),
    ("envdir", true),
    ("enable-auto-restart", false),
    ("daemonize", false),
    ("auto-restart-interval", true),
    ("kill-old-delay", true),
    ("status-file", true),
    ("restart", false),
    ("stop", false),
    ("help", false),
    ("version", false),
    // Ours.
    ("kill-timeout", true),
    ("backoff", true),
    ("ready", true),
    ("ready-timeout", true),
    ("watchdog", true),
    ("listen-fds", false),
    ("upgrade", false),
    ("workers", true),
];

/// How many of `OPTIONS` are the original's.
const ORIGINAL_OPTIONS: usize = 19;

/// `--ready-timeout`'s default, systemd's start timeout.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(90);

/// New options taken only in full, so that every abbreviation still means what it
/// means to the original (`-l` is `--log-file`).
const NOT_ABBREVIATED: &[&str] = &["listen-fds"];

pub const HELP: &str = "\
Usage: start_server [options] -- server-prog server-arg1 server-arg2 ...

  # start Plack using Starlet listening at TCP port 8000
  start_server --port=8000 -- plackup -s Starlet --max-workers=100 index.psgi

A superdaemon for hot-deploying server programs: it binds the listening sockets
once, runs the server program as a worker that inherits them (named in
SERVER_STARTER_PORT), and on SIGHUP starts a new worker, then tells the old one
to stop once the new one has started.

Options:
  --port=(port|host:port|[ipv6]:port)[=fd]
                          TCP port to listen to (repeatable); a bare port binds
                          0.0.0.0; =fd puts the socket at that descriptor; a u
                          before the port number binds UDP (e.g. --port=u443)
  --path=path             unix socket to listen to (repeatable)
  --dir=path              working directory of the workers
  --interval=seconds      how long a new worker must live to count as started
                          (0: at once), and the pause before a failed one is
                          tried again, which is 0.1 at least (default: 1;
                          fractions allowed)
  --signal-on-hup=SIGNAL  signal for the old workers on SIGHUP (default: TERM)
  --signal-on-term=SIGNAL signal for the workers on SIGTERM (default: TERM)
  --pid-file=filename     write start_server's pid there (locked while running)
  --status-file=filename  keep `generation:pid` lines of the workers there
  --envdir=ENVDIR         directory of files whose first lines become environment
                          variables, read again before every spawn (or $ENVDIR)
  --log-file=file         append start_server's and the workers' output to file
  --log-file=\"| cmd args\" pipe it to a command
  --daemonize             detach (fork, setsid, fork); needs --log-file; returns
                          once generation 1 has started (0) or failed to (1:
                          the daemon goes on trying; 255: it gave up)
  --enable-auto-restart   restart the workers periodically (or $ENABLE_AUTO_RESTART)
  --auto-restart-interval=seconds
                          period of the automatic restart (default: 360)
  --kill-old-delay=seconds
                          wait before signalling the old workers (default: 5 with
                          --enable-auto-restart, 0 otherwise)
  --kill-timeout=seconds  SIGKILL a worker still running that long after it was
                          sent --signal-on-hup or --signal-on-term (default:
                          wait for it however long it takes)
  --backoff=seconds       double the pause between tries after each failed
                          start in a row, up to this; back to --interval once
                          a generation starts (default: no doubling)
  --ready=notify          a new worker has started when it sends READY=1 to the
                          NOTIFY_SOCKET it is given (sd_notify), not when it
                          outlives --interval (--ready=interval, the default)
  --ready-timeout=seconds how long a worker may take to send READY=1 before it is
                          stopped and counts as a failed start (default: 90)
  --watchdog=seconds      a started worker that sends no WATCHDOG=1 for that long
                          is hung: killed (ABRT) and replaced (WATCHDOG_USEC)
  --workers=N             run N workers of the command per generation, each told
                          its slot in SERVER_STARTER_WORKER (1..N) and supervised
                          alone (default: 1)
  --backlog=size          listen backlog (default: SOMAXCONN)
  --listen-fds            also hand the sockets to the workers as systemd socket
                          activation does (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES),
                          at descriptors 3, 4, ... in SERVER_STARTER_PORT order
  --restart               ask the instance of --pid-file for a restart, wait
                          for the verdict and print it: 0 once the new
                          generation runs alone, non-zero once it failed to
                          start (an instance without a control socket: HUP,
                          then --status-file, which it then needs)
  --stop                  TERM the instance of --pid-file and wait for its exit
                          (with --kill-timeout: at most that plus 5 seconds);
                          exit status 3 if none runs
  --upgrade               have the instance of --pid-file re-execute its binary
                          in place (SIGUSR2), keeping its sockets and workers,
                          and say whether it now runs the new one
  --help                  print this help
  --version               print the version number
";

pub fn parse(args: &[String]) -> Result<Mode, Error> {
    let args = expand_abbreviations(args)?;
    let mut opts = Options::new();
    opts.parsing_style(ParsingStyle::StopAtFirstFree);
    for &(name, takes_value) in OPTIONS {
        if takes_value {
            opts.optmulti("", name, "", "VALUE");
        } else {
            opts.optflagmulti("", name, "");
        }
    }
    let m = opts
        .parse(&args)
        .map_err(|e| usage(getopt_long_message(e)))?;
    // Getopt::Long checks the original's integer options while it parses, before
    // --help and --version are looked at. (Ours take fractions too.)
    for name in [
        "interval",
        "backlog",
        "auto-restart-interval",
        "kill-old-delay",
        "kill-timeout",
        "backoff",
        "ready-timeout",
        "watchdog",
    ] {
        if let Some(value) = m.opt_strs(name).into_iter().find(|v| decimal(v).is_none()) {
            return Err(usage(format!(
                "Value \"{value}\" invalid for option {name} (number expected)"
            )));
        }
    }
    // As with Getopt::Long, a repeated option keeps its last value (but --port and
    // --path accumulate).
    let last = |name: &str| m.opt_strs(name).pop();
    let path = |name: &str| last(name).map(PathBuf::from);

    let seconds = |name: &str| {
        last(name)
            .map(|s| {
                parse_seconds(&s)
                    .map_err(|why| invalid(format!("invalid --{name} value {s:?}: {why}")))
            })
            .transpose()
    };
    // A zero --ready-timeout or --watchdog would fail every worker at once.
    let positive_seconds = |name: &str| match seconds(name)? {
        Some(d) if d.is_zero() => Err(invalid(format!(
            "invalid --{name} value {:?}: expected more than 0 seconds",
            last(name).unwrap_or_default()
        ))),
        other => Ok(other),
    };

    if m.opt_present("help") {
        return Ok(Mode::Help);
    }
    if m.opt_present("version") {
        return Ok(Mode::Version);
    }
    if m.opt_present("restart") {
        return match path("pid-file") {
            Some(pid_file) => Ok(Mode::Restart {
                pid_file,
                status_file: path("status-file"),
            }),
            None => Err(invalid(
                "--restart option requires --pid-file to be set as well (and --status-file \
                 for an instance without a control socket)"
                    .into(),
            )),
        };
    }
    if m.opt_present("upgrade") {
        return match path("pid-file") {
            Some(pid_file) => Ok(Mode::Upgrade { pid_file }),
            None => Err(invalid(
                "--upgrade option requires --pid-file to be set as well".into(),
            )),
        };
    }
    if m.opt_present("stop") {
        return match path("pid-file") {
            Some(pid_file) => Ok(Mode::Stop {
                pid_file,
                kill_timeout: seconds("kill-timeout")?,
            }),
            None => Err(invalid(
                "--stop option requires --pid-file to be set as well".into(),
            )),
        };
    }

    let daemonize = m.opt_present("daemonize");
    let log_file = last("log-file");
    if daemonize && log_file.is_none() {
        return Err(invalid(
            "--log-file option must be specified together with --daemonize".into(),
        ));
    }
    // Every name must be one SERVER_STARTER_PORT can carry.
    let carried = |option: &str, value: &str, name: &str| {
        port_names::check(name)
            .map_err(|why| invalid(format!("invalid --{option} value {value:?}: {why}")))
    };
    let ports = m
        .opt_strs("port")
        .iter()
        .map(|p| {
            let spec = port_spec::parse(p).map_err(invalid)?;
            carried("port", p, &spec.name)?;
            Ok(spec)
        })
        .collect::<Result<_, _>>()?;
    let paths = m.opt_strs("path");
    for path in &paths {
        carried("path", path, path)?;
    }
    let signal = |name: &str| {
        last(name)
            .map(|s| Signal::parse(&s).map_err(|e| invalid(format!("--{name}: {e}"))))
            .unwrap_or(Ok(Signal::term()))
    };
    let backlog = match last("backlog") {
        None => libc::SOMAXCONN,
        Some(text) => match text.trim().parse::<i32>() {
            // The original treats 0 as "not given".
            Ok(0) => libc::SOMAXCONN,
            Ok(n) if n > 0 => n,
            _ => {
                return Err(invalid(format!(
                    "invalid --backlog value {text:?}: expected a positive number"
                )))
            }
        },
    };
    let workers = match last("workers") {
        None => None,
        Some(text) => match text.trim().parse::<u32>() {
            Ok(n) if (1..=MAX_WORKERS).contains(&n) => Some(n),
            _ => {
                return Err(invalid(format!(
                    "invalid --workers value {text:?}: expected a number from 1 to {MAX_WORKERS}"
                )))
            }
        },
    };
    let ready_notify = match last("ready").as_deref().map(str::trim) {
        None | Some("interval") => false,
        Some("notify") => true,
        Some(other) => {
            return Err(invalid(format!(
                "invalid --ready value {other:?}: expected notify or interval"
            )))
        }
    };
    let dir = path("dir");
    if let Some(dir) = &dir {
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(invalid(format!("--dir {}: not a directory", dir.display()))),
            Err(e) => return Err(invalid(format!("--dir {}: {e}", dir.display()))),
        }
    }
    let config = Config {
        ports,
        paths: paths.into_iter().map(PathBuf::from).collect(),
        dir,
        interval: seconds("interval")?.unwrap_or(Duration::from_secs(1)),
        signal_on_hup: signal("signal-on-hup")?,
        signal_on_term: signal("signal-on-term")?,
        pid_file: path("pid-file"),
        status_file: path("status-file"),
        envdir: path("envdir"),
        log_file,
        daemonize,
        enable_auto_restart: m.opt_present("enable-auto-restart"),
        auto_restart_interval: seconds("auto-restart-interval")?,
        kill_old_delay: seconds("kill-old-delay")?,
        kill_timeout: seconds("kill-timeout")?,
        backoff: seconds("backoff")?,
        ready_notify,
        ready_timeout: positive_seconds("ready-timeout")?.unwrap_or(DEFAULT_READY_TIMEOUT),
        watchdog: positive_seconds("watchdog")?,
        backlog,
        listen_fds: m.opt_present("listen-fds"),
        workers,
        command: m.free.clone(),
    };
    if config.command.is_empty() {
        return Err(invalid("server program not specified".into()));
    }
    Ok(Mode::Start(Box::new(config)))
}

/// What Getopt::Long says for the same mistake, so that the original's users see the
/// messages they know.
fn getopt_long_message(fail: getopts::Fail) -> String {
    use getopts::Fail;
    match fail {
        // The original's words, then what to do about it.
        Fail::UnrecognizedOption(name) => match closest_option(&name) {
            Some(option) => format!(
                "Unknown option: {name} (did you mean --{option}? start_server --help lists \
                 every option)"
            ),
            None => format!("Unknown option: {name} (start_server --help lists every option)"),
        },
        Fail::ArgumentMissing(name) => format!("Option {name} requires an argument"),
        Fail::UnexpectedArgument(name) => format!("Option {name} does not take an argument"),
        other => other.to_string(),
    }
}

/// The option `name` most likely stands for: one it is a prefix of (a new option that
/// is not abbreviated), or the nearest by edit distance, if near enough to be a typo.
fn closest_option(name: &str) -> Option<&'static str> {
    let name = name.trim_start_matches('-');
    let (distance, option) = OPTIONS
        .iter()
        .map(|&(option, _)| {
            let distance = match option.starts_with(name) {
                true => 0,
                false => edit_distance(name, option),
            };
            (distance, option)
        })
        .min_by_key(|&(distance, _)| distance)?;
    (distance <= (name.len() / 3).max(1)).then_some(option)
}

/// Levenshtein distance: the insertions, deletions and substitutions from `a` to `b`.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// A non-negative number of seconds, fractions allowed (`0.25`, `.5`, `5.`), exactly,
/// in whole microseconds (what the upgrade state keeps): a finer fraction is refused
/// rather than rounded. A value beyond `MAX_SECONDS` is that.
pub fn parse_seconds(text: &str) -> Result<Duration, String> {
    let invalid = || "expected a number of seconds".to_string();
    let (whole, fraction) = decimal(text).ok_or_else(invalid)?;
    // "-0" is zero, as it was to the original's Perl.
    let nonzero = |s: &str| s.bytes().any(|b| (b'1'..=b'9').contains(&b));
    if whole.starts_with('-') && (nonzero(whole) || nonzero(fraction)) {
        return Err(invalid());
    }
    let (micros, finer) = fraction.split_at(fraction.len().min(6));
    if nonzero(finer) {
        return Err("expected a number of seconds to the microsecond (at most 6 decimals)".into());
    }
    let digits = |text: &str| {
        text.bytes().filter(u8::is_ascii_digit).fold(0u64, |n, d| {
            n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
        })
    };
    let secs = digits(whole);
    if secs >= MAX_SECONDS {
        return Ok(Duration::from_secs(MAX_SECONDS));
    }
    let micros = digits(micros) * 10u64.pow(6 - micros.len() as u32);
    Ok(Duration::from_secs(secs) + Duration::from_micros(micros))
}

/// The longest duration start_server keeps (136 years): one that long never ends, and
/// any deadline it sets stays within what the clock can hold.
pub const MAX_SECONDS: u64 = u32::MAX as u64;

/// A decimal number as Getopt::Long's numeric options take it, ours with a fraction
/// too: an optional sign, digits, and optionally `.` and more digits (at least one
/// digit in all), with blanks around. Returns the signed whole part and the fraction's
/// digits.
fn decimal(text: &str) -> Option<(&str, &str)> {
    let text = text.trim();
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let unsigned = whole.strip_prefix(['+', '-']).unwrap_or(whole);
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    (all_digits(unsigned) && all_digits(fraction) && unsigned.len() + fraction.len() > 0)
        .then_some((whole, fraction))
}

/// Rewrites `-name`, and any unambiguous prefix of a long option, to `--full-name`,
/// up to the first argument that is not an option (the server command).
fn expand_abbreviations(args: &[String]) -> Result<Vec<String>, Error> {
    let mut out = Vec::with_capacity(args.len());
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if arg == "--" || !arg.starts_with('-') || arg == "-" {
            out.push(arg.clone());
            out.extend(rest.cloned());
            break;
        }
        let body = arg.trim_start_matches('-');
        let (name, value) = match body.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (body, None),
        };
        let exact = OPTIONS.iter().find(|(o, _)| *o == name);
        let prefixed_in = |options: &'static [(&'static str, bool)]| -> Vec<_> {
            options
                .iter()
                .filter(|(o, _)| o.starts_with(name) && !NOT_ABBREVIATED.contains(o))
                .collect()
        };
        let mut prefixed = prefixed_in(&OPTIONS[..ORIGINAL_OPTIONS]);
        if prefixed.len() != 1 {
            prefixed.extend(prefixed_in(&OPTIONS[ORIGINAL_OPTIONS..]));
        }
        let option = match (exact, prefixed.as_slice()) {
            (Some(&option), _) | (None, [&option]) => option,
            (None, []) => {
                // Unknown: getopts reports it.
                out.push(arg.clone());
                continue;
            }
            (None, many) => {
                let names: Vec<_> = many.iter().map(|(o, _)| *o).collect();
                return Err(usage(format!(
                    "Option {name} is ambiguous ({})",
                    names.join(", ")
                )));
            }
        };
        let (full, takes_value) = option;
        match value {
            Some(value) => out.push(format!("--{full}={value}")),
            None => {
                out.push(format!("--{full}"));
                if takes_value {
                    out.extend(rest.next().cloned());
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(args: &[&str]) -> Config {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        match parse(&args) {
            Ok(Mode::Start(c)) => *c,
            Ok(_) => panic!("not a start"),
            Err(e) => panic!("{}", e.message),
        }
    }

    fn error(args: &[&str]) -> Error {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        match parse(&args) {
            Err(e) => e,
            Ok(_) => panic!("{args:?} was accepted"),
        }
    }

    #[test]
    fn both_spellings_and_abbreviations() {
        let c = start(&[
            "--port=80",
            "--port",
            "81",
            "-path=/tmp/x.sock",
            "--int",
            "0.25",
            "--",
            "prog",
            "--port=9",
        ]);
        assert_eq!(c.ports.len(), 2);
        assert_eq!(c.ports[1].name, "81");
        assert_eq!(c.paths, vec![PathBuf::from("/tmp/x.sock")]);
        assert_eq!(c.interval, Duration::from_millis(250));
        assert_eq!(c.command, vec!["prog", "--port=9"]);
    }

    #[test]
    fn abbreviations_of_the_originals_options_outrank_new_ones() {
        let c = start(&[
            "--kill=2",
            "--back=7",
            "--kill-t=3",
            "--backo=9",
            "--",
            "prog",
        ]);
        assert_eq!(c.kill_old_delay, Some(Duration::from_secs(2)));
        assert_eq!(c.backlog, 7);
        assert_eq!(c.kill_timeout, Some(Duration::from_secs(3)));
        assert_eq!(c.backoff, Some(Duration::from_secs(9)));
    }

    #[test]
    fn stop_takes_the_kill_timeout_as_its_bound() {
        let stop = |args: &[&str]| {
            let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            match parse(&args) {
                Ok(Mode::Stop { kill_timeout, .. }) => kill_timeout,
                _ => panic!("{args:?} is not a stop"),
            }
        };
        assert_eq!(stop(&["--stop", "--pid-file=p"]), None);
        assert_eq!(
            stop(&["--stop", "--pid-file=p", "--kill-timeout=2.5"]),
            Some(Duration::from_millis(2500))
        );
        let e = error(&["--stop", "--pid-file=p", "--kill-timeout=-1"]);
        assert!(e.message.contains("--kill-timeout"), "{}", e.message);
    }

    #[test]
    fn new_options_are_not_abbreviated() {
        let c = start(&["-l", "/tmp/log", "--listen-fds", "--", "prog"]);
        assert_eq!(c.log_file.as_deref(), Some("/tmp/log"));
        assert!(c.listen_fds);
        assert!(!start(&["--", "prog"]).listen_fds);
        assert_eq!(
            error(&["--listen", "--", "prog"]).message,
            "Unknown option: listen (did you mean --listen-fds? start_server --help lists \
             every option)"
        );
    }

    #[test]
    fn typos_are_near_their_option_and_nonsense_is_not() {
        assert_eq!(closest_option("intreval"), Some("interval"));
        assert_eq!(closest_option("deamonize"), Some("daemonize"));
        assert_eq!(closest_option("log_file"), Some("log-file"));
        assert_eq!(closest_option("ports"), Some("port"));
        assert_eq!(closest_option("bogus"), None);
        assert_eq!(closest_option("x"), None);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn command_without_double_dash_stops_option_parsing() {
        let c = start(&["--port=80", "prog", "--port=9"]);
        assert_eq!(c.ports.len(), 1);
        assert_eq!(c.command, vec!["prog", "--port=9"]);
    }

    #[test]
    fn defaults_and_last_value_wins() {
        let c = start(&[
            "--interval=3",
            "--interval=2",
            "--signal-on-hup=usr1",
            "--",
            "prog",
        ]);
        assert_eq!(c.interval, Duration::from_secs(2));
        assert_eq!(c.signal_on_hup.name, "USR1");
        assert_eq!(c.signal_on_term.name, "TERM");
        assert_eq!(c.backlog, libc::SOMAXCONN);
        assert!(c.kill_old_delay.is_none());
    }

    #[test]
    fn errors() {
        assert_eq!(error(&["--bogus", "--", "x"]).status, 1);
        assert_eq!(error(&["--s", "--", "x"]).status, 1); // --signal-*, --status-file, --stop
        assert_eq!(
            error(&["--s", "--", "x"]).message,
            "Option s is ambiguous (signal-on-hup, signal-on-term, status-file, stop)"
        );
        assert_eq!(
            error(&["--bogus", "--", "x"]).message,
            "Unknown option: bogus (start_server --help lists every option)"
        );
        assert_eq!(
            error(&["--pidfile=x", "--", "x"]).message,
            "Unknown option: pidfile (did you mean --pid-file? start_server --help lists \
             every option)"
        );
        assert_eq!(
            error(&["--daemonize=1", "--", "x"]).message,
            "Option daemonize does not take an argument"
        );
        let e = error(&["--interval=abc", "--version"]);
        assert_eq!(e.status, 1);
        assert_eq!(
            e.message,
            "Value \"abc\" invalid for option interval (number expected)"
        );
        assert!(error(&["--port=80"])
            .message
            .contains("server program not specified"));
        assert!(error(&["--port=80x", "--", "x"]).message.contains("80x"));
        assert!(error(&["--signal-on-hup=FOO", "--", "x"])
            .message
            .contains("FOO"));
        assert!(error(&["--interval=-1", "--", "x"]).message.contains("-1"));
        assert!(error(&["--backlog=x", "--", "x"])
            .message
            .contains("backlog"));
        for bad in ["0", "-2", "x", "1025", ""] {
            let e = error(&[&format!("--workers={bad}"), "--", "x"]);
            assert_eq!(e.status, 255);
            assert!(
                e.message.contains(&format!("--workers value {bad:?}")),
                "{e:?}"
            );
        }
        assert!(error(&["--daemonize", "--", "x"])
            .message
            .contains("--log-file"));
        assert!(error(&["--restart", "--status-file=x"])
            .message
            .contains("--pid-file"));
        assert!(error(&["--stop"]).message.contains("--pid-file"));
        assert!(error(&["--upgrade"]).message.contains("--pid-file"));
        assert!(error(&["--dir=/nonexistent/dir", "--", "x"])
            .message
            .contains("/nonexistent/dir"));
        assert!(error(&["--port"]).message.contains("port"));
    }

    #[test]
    fn seconds_are_read_exactly_and_read_back_as_printed() {
        let read = |s: &str| parse_seconds(s).unwrap();
        assert_eq!(read("1"), Duration::from_secs(1));
        assert_eq!(read(" 0.25 "), Duration::from_millis(250));
        assert_eq!(read("+.5"), Duration::from_millis(500));
        assert_eq!(read("5."), Duration::from_secs(5));
        assert_eq!(read("0.000001"), Duration::from_micros(1));
        assert_eq!(read("0.1"), Duration::from_millis(100));
        assert_eq!(read("2.5000000000"), Duration::from_millis(2500));
        assert_eq!(read("-0"), Duration::ZERO);
        // Saturated, not refused or wrapped.
        let max = Duration::from_secs(MAX_SECONDS);
        assert_eq!(read("99999999999999999999999999.5"), max);
        assert_eq!(read(&MAX_SECONDS.to_string()), max);
        for bad in [
            "", ".", "-1", "-0.5", "1e3", "nan", "inf", "0x10", "1.2.3", "5 s",
        ] {
            assert!(parse_seconds(bad).is_err(), "{bad:?}");
        }
        assert!(parse_seconds("0.0000001")
            .unwrap_err()
            .contains("microsecond"));
        // What log::seconds prints reads back as the same duration.
        for micros in [
            0, 1, 10, 500, 999, 1_000, 100_000, 1_000_000, 1_500_000, 12_345_678,
        ] {
            let d = Duration::from_micros(micros);
            assert_eq!(read(&crate::log::seconds(d)), d, "{micros} us");
        }
        assert_eq!(crate::log::seconds(Duration::from_micros(500)), "0.0005");
        assert_eq!(crate::log::seconds(Duration::from_millis(1500)), "1.5");
        assert_eq!(crate::log::seconds(Duration::from_secs(60)), "60");
        assert_eq!(crate::log::millis(Duration::from_micros(2_449)), "2.4");
        assert_eq!(crate::log::millis(Duration::from_micros(2_450)), "2.5");
        assert_eq!(crate::log::millis(Duration::from_secs(12)), "12000.0");
    }
}
