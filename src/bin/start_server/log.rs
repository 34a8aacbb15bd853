//! start_server's log lines, on stderr, worded as Server::Starter words them so that
//! existing log watchers keep working.

use std::io::Write;
use std::os::unix::io::RawFd;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::time::Duration;

use crate::sys;

/// Where start_server's own lines go: stderr, or with a log pipe a non-blocking
/// descriptor of start_server's own for the pipe (see log_pipe.rs).
static OUTPUT: AtomicI32 = AtomicI32::new(libc::STDERR_FILENO);

/// Lines a full log pipe refused since the last line that got through.
static DROPPED: AtomicUsize = AtomicUsize::new(0);

/// Sends start_server's lines to `fd` from now on: stderr, or a non-blocking
/// descriptor, on which a line that does not fit is dropped, and counted, rather than
/// waited for: start_server must never hang on its log.
pub fn set_output(fd: RawFd) {
    OUTPUT.store(fd, Ordering::Relaxed);
}

/// Writes one line to stderr with a single write(2), so that lines from start_server and
/// its workers sharing the same file or pipe do not interleave mid-line.
pub fn line(args: std::fmt::Arguments) {
    let mut text = args.to_string();
    text.push('\n');
    let fd = OUTPUT.load(Ordering::Relaxed);
    if fd == libc::STDERR_FILENO {
        // Nothing sensible is left to do when stderr itself fails.
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
        return;
    }
    let dropped = DROPPED.load(Ordering::Relaxed);
    if dropped > 0 {
        text.insert_str(
            0,
            &format!("{dropped} log lines of start_server were dropped: the log pipe was full\n"),
        );
    }
    // Up to PIPE_BUF bytes, a non-blocking write to a pipe is all or nothing; a longer
    // line may be cut short.
    match sys::write(fd, text.as_bytes()) {
        Ok(n) if n == text.len() => DROPPED.store(0, Ordering::Relaxed),
        _ => {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// `log!("starting new worker {pid}")`: one line on stderr.
#[macro_export]
macro_rules! log {
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
