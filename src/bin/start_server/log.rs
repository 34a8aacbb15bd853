//! start_server's log lines, on stderr, worded as Server::Starter words them so that
//! existing log watchers keep working.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, AtomicU8, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::sys;

/// Where start_server's own lines go: stderr, or a descriptor of start_server's own
/// for the same file (see `follow_stderr`), or the log pipe's (see log_pipe.rs).
static OUTPUT: AtomicI32 = AtomicI32::new(libc::STDERR_FILENO);

/// How a line is written to `OUTPUT`, one of the constants below.
static HOW: AtomicU8 = AtomicU8::new(WAITING);
/// A client's stderr: written whole, however long that takes.
const WAITING: u8 = 0;
/// One write(2) to a non-blocking descriptor, or a regular file.
const ONCE: u8 = 1;
/// One send(2) with MSG_DONTWAIT: a socket (systemd's journal stream).
const SEND: u8 = 2;
/// One write(2) if poll(2) says there is room now: the last resort when no
/// non-blocking descriptor could be had (another process's tty or FIFO, no /proc).
const IF_ROOM: u8 = 3;

/// The descriptor `follow_stderr` opened, kept open while `OUTPUT` names it.
static REOPENED: Mutex<Option<OwnedFd>> = Mutex::new(None);

/// Lines a full pipe (or a full disk) refused since the last line that got through.
static DROPPED: AtomicUsize = AtomicUsize::new(0);

/// Sends start_server's lines to `fd` from now on, a non-blocking descriptor on
/// which a line that does not fit is dropped, and counted, rather than waited for.
pub fn set_output(fd: RawFd) {
    use_output(fd, ONCE, None);
}

/// The supervisor's lines go to whatever stderr is now, without ever waiting for it:
/// start_server must not hang on its log (a terminal stopped with ^S, a pipe or a
/// journal that is not read). A write to a non-blocking descriptor of stderr applies
/// to start_server's lines only: O_NONBLOCK on stderr itself would be shared with
/// the workers, and with whoever else holds that file description. So a pipe, a FIFO
/// or a tty is opened again (through /proc) as a file description of its own, a
/// socket is sent to with MSG_DONTWAIT, and a regular file is written as it is.
pub fn follow_stderr() {
    let fd = libc::STDERR_FILENO;
    match sys::file_type(fd) {
        Ok(libc::S_IFREG) | Err(_) => use_output(fd, ONCE, None),
        Ok(libc::S_IFSOCK) => use_output(fd, SEND, None),
        Ok(_) => match nonblocking_twin(fd) {
            Ok(own) => use_output(own.as_raw_fd(), ONCE, Some(own)),
            Err(_) => use_output(fd, IF_ROOM, None),
        },
    }
}

/// The file (pipe, FIFO, tty) `fd` points to, opened again for writing through /proc,
/// as a file description of start_server's own, non-blocking and close-on-exec.
pub fn nonblocking_twin(fd: RawFd) -> std::io::Result<OwnedFd> {
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(format!("/proc/self/fd/{fd}"))
        .map(OwnedFd::from)
}

fn use_output(fd: RawFd, how: u8, reopened: Option<OwnedFd>) {
    OUTPUT.store(fd, Ordering::Relaxed);
    HOW.store(how, Ordering::Relaxed);
    // The previous reopened descriptor, if any, is closed only once no longer named.
    let mut kept = REOPENED.lock().unwrap_or_else(|e| e.into_inner());
    *kept = reopened;
}

/// Writes one line with a single write(2), so that lines from start_server and its
/// workers sharing the same file or pipe do not interleave mid-line.
pub fn line(args: std::fmt::Arguments) {
    write_line(&Line::new("log", args.to_string()));
}

/// How start_server's lines are written (`--log-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// The original's lines, byte for byte.
    #[default]
    Plain,
    /// The same lines after an RFC 3339 UTC time with milliseconds.
    Timestamp,
    /// One JSON object per line.
    Json,
}

impl Format {
    pub fn parse(text: &str) -> Option<Format> {
        match text {
            "plain" => Some(Format::Plain),
            "timestamp" => Some(Format::Timestamp),
            "json" => Some(Format::Json),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Plain => "plain",
            Format::Timestamp => "timestamp",
            Format::Json => "json",
        }
    }
}

static FORMAT: AtomicU8 = AtomicU8::new(0);

pub fn set_format(format: Format) {
    FORMAT.store(format as u8, Ordering::Relaxed);
}

pub fn format() -> Format {
    match FORMAT.load(Ordering::Relaxed) {
        1 => Format::Timestamp,
        2 => Format::Json,
        _ => Format::Plain,
    }
}

/// The events that are warnings: something failed, or needs a look.
const WARNINGS: &[&str] = &[
    "backoff",
    "envdir-unreadable",
    "exec-failed",
    "hint",
    "log-dropped",
    "signal-failed",
    "spawn-failed",
    "start-failed",
    "status-file-failed",
    "upgrade-refused",
    "worker-died",
    "worker-hung",
    "worker-killed",
    "worker-not-ready",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Info,
    Warning,
    Error,
}

/// A value of a line's field, for `--log-format=json`.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Number(i64),
    Text(String),
}

/// One line of start_server's log, with what `--log-format=json` says of it besides
/// the text: the event it reports, its level, the generation it is about, its fields.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    pub level: Level,
    pub event: &'static str,
    pub generation: Option<u64>,
    pub fields: Vec<(&'static str, Value)>,
    pub text: String,
}

impl Line {
    /// A line reporting `event`, at the level that event has. (Not inlined: every
    /// log call site builds one.)
    #[inline(never)]
    pub fn new(event: &'static str, text: String) -> Line {
        let level = match event {
            "error" => Level::Error,
            _ if WARNINGS.contains(&event) => Level::Warning,
            _ => Level::Info,
        };
        Line {
            level,
            event,
            generation: None,
            fields: Vec::new(),
            text,
        }
    }

    pub fn level(mut self, level: Level) -> Line {
        self.level = level;
        self
    }

    /// A numeric field; `generation` is the line's generation.
    #[inline(never)]
    pub fn set(mut self, name: &'static str, value: i64) -> Line {
        match name {
            "generation" => self.generation = u64::try_from(value).ok(),
            _ => self.fields.push((name, Value::Number(value))),
        }
        self
    }

    pub fn generation(mut self, generation: u64) -> Line {
        self.generation = Some(generation);
        self
    }

    pub fn field(mut self, name: &'static str, value: impl Into<i64>) -> Line {
        self.fields.push((name, Value::Number(value.into())));
        self
    }

    pub fn text_field(mut self, name: &'static str, value: impl Into<String>) -> Line {
        self.fields.push((name, Value::Text(value.into())));
        self
    }

    /// The line as `format` writes it, with its newline; `now` is the time of day
    /// (since the epoch), `pid` start_server's.
    pub fn render(&self, format: Format, now: Duration, pid: u32) -> String {
        match format {
            Format::Plain => format!("{}\n", self.text),
            Format::Timestamp => format!("{} {}\n", rfc3339(now), self.text),
            Format::Json => {
                let level = match self.level {
                    Level::Info => "info",
                    Level::Warning => "warning",
                    Level::Error => "error",
                };
                let mut out = String::with_capacity(self.text.len() + 128);
                out.push_str("{\"time\":");
                json_string(&mut out, &rfc3339(now));
                out.push_str(",\"level\":\"");
                out.push_str(level);
                out.push_str("\",\"event\":\"");
                out.push_str(self.event);
                out.push_str("\",\"generation\":");
                match self.generation {
                    Some(g) => out.push_str(&g.to_string()),
                    None => out.push_str("null"),
                }
                out.push_str(",\"pid\":");
                out.push_str(&pid.to_string());
                out.push_str(",\"message\":");
                json_string(&mut out, &self.text);
                for (name, value) in &self.fields {
                    out.push_str(",\"");
                    out.push_str(name);
                    out.push_str("\":");
                    match value {
                        Value::Number(n) => out.push_str(&n.to_string()),
                        Value::Text(t) => json_string(&mut out, t),
                    }
                }
                out.push_str("}\n");
                out
            }
        }
    }
}

/// `"text"` with JSON's escapes: quotes, backslashes and control characters.
pub fn json_string(out: &mut String, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str("\\u00");
                out.push(HEX[(c as usize) >> 4] as char);
                out.push(HEX[(c as usize) & 15] as char);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `2026-12-05T13:09:30.123Z`: `since_epoch` as an RFC 3339 UTC time to the
/// millisecond, by integer arithmetic on days (the proleptic Gregorian calendar).
pub fn rfc3339(since_epoch: Duration) -> String {
    let secs = since_epoch.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60,
        since_epoch.subsec_millis()
    )
}

/// The date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Writes `line` in the format in force, as one write(2).
pub fn write_line(line: &Line) {
    let format = format();
    let now = match format {
        Format::Plain => Duration::ZERO,
        _ => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default(),
    };
    let mut text = line.render(format, now, std::process::id());
    let fd = OUTPUT.load(Ordering::Relaxed);
    let how = HOW.load(Ordering::Relaxed);
    if how == WAITING {
        // Nothing sensible is left to do when stderr itself fails.
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
        return;
    }
    let dropped = DROPPED.load(Ordering::Relaxed);
    if dropped > 0 {
        let lost = Line::new(
            "log-dropped",
            format!("{dropped} log lines of start_server were dropped: the log was full"),
        )
        .level(Level::Warning)
        .field("dropped", dropped as i64);
        text.insert_str(0, &lost.render(format, now, std::process::id()));
    }
    // Up to PIPE_BUF bytes, a non-blocking write to a pipe is all or nothing; a longer
    // line may be cut short.
    let written = match how {
        SEND => sys::send_nowait(fd, text.as_bytes()),
        IF_ROOM if !sys::writable_now(fd) => Ok(0),
        _ => sys::write(fd, text.as_bytes()),
    };
    match written {
        Ok(n) if n == text.len() => DROPPED.store(0, Ordering::Relaxed),
        _ => {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Prints `text` on stdout, for the clients' and `--help`'s output. An error is
/// ignored: the command's outcome is its exit status, which a reader that went away
/// (`start_server --upgrade ... | head -0`) must not turn into a panic.
pub fn print(text: &str) {
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// `log!("starting new worker {pid}")`: one line on stderr;
/// `log!(event "signal-failed", "failed to ...")`: one that names its event.
#[macro_export]
macro_rules! log {
    (event $event:literal, $($arg:tt)*) => {
        $crate::log::write_line(&$crate::log::Line::new($event, format!($($arg)*)))
    };
    ($($arg:tt)*) => {
        $crate::log::line(format_args!($($arg)*))
    };
}

/// Milliseconds with a tenth, for how long something took: `2.4` (rounded).
pub fn millis(d: Duration) -> String {
    let tenths = d.as_micros().saturating_add(50) / 100;
    format!("{}.{}", tenths / 10, tenths % 10)
}

/// Seconds as the original prints them: `5`, or `0.25` for a fraction, with every
/// digit it has (to the nanosecond), so that `cli::parse_seconds` reads back the same
/// duration: `0.0005`, never `0.`.
pub fn seconds(d: Duration) -> String {
    let secs = d.as_secs();
    let nanos = d.subsec_nanos();
    if nanos == 0 {
        return secs.to_string();
    }
    let fraction = format!("{nanos:09}");
    format!("{secs}.{}", fraction.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_by_integers() {
        let at = |secs: u64, millis: u64| {
            rfc3339(Duration::from_secs(secs) + Duration::from_millis(millis))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.007Z");
        assert_eq!(at(1_709_210_096, 999), "2024-02-29T12:34:56.999Z");
        assert_eq!(at(4_102_444_799, 500), "2099-12-31T23:59:59.500Z");
        assert_eq!(at(1_796_477_370, 123), "2026-12-05T13:29:30.123Z");
    }

    #[test]
    fn each_format() {
        let line = Line::new("worker-exited", "old worker 42 died, status:0".into())
            .generation(3)
            .field("worker", 42)
            .text_field("note", "a \"quoted\"\tbit\\\u{1}");
        let now = Duration::from_millis(1_796_477_370_123);
        assert_eq!(
            line.render(Format::Plain, now, 7),
            "old worker 42 died, status:0\n"
        );
        assert_eq!(
            line.render(Format::Timestamp, now, 7),
            "2026-12-05T13:29:30.123Z old worker 42 died, status:0\n"
        );
        assert_eq!(
            line.render(Format::Json, now, 7),
            "{\"time\":\"2026-12-05T13:29:30.123Z\",\"level\":\"info\",\
             \"event\":\"worker-exited\",\"generation\":3,\"pid\":7,\
             \"message\":\"old worker 42 died, status:0\",\"worker\":42,\
             \"note\":\"a \\\"quoted\\\"\\tbit\\\\\\u0001\"}\n"
        );
        for name in ["plain", "timestamp", "json"] {
            assert_eq!(Format::parse(name).map(Format::name), Some(name));
        }
        assert_eq!(Format::parse("JSON"), None);
    }
}
