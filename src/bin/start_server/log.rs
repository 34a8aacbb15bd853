//! start_server's log lines, on stderr, worded as Server::Starter words them so that
//! existing log watchers keep working.

use std::io::Write;
use std::os::unix::io::RawFd;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

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

/// Prints `text` on stdout, for the clients' and `--help`'s output. An error is
/// ignored: the command's outcome is its exit status, which a reader that went away
/// (`start_server --upgrade ... | head -0`) must not turn into a panic.
pub fn print(text: &str) {
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// `log!("starting new worker {pid}")`: one line on stderr.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {
        $crate::log::line(format_args!($($arg)*))
    };
}

/// Milliseconds with a tenth, for how long something took: `2.4`.
pub fn millis(d: std::time::Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// Seconds as the original prints them: `5`, or `0.25` for a fraction.
pub fn seconds(d: std::time::Duration) -> String {
    let secs = d.as_secs_f64();
    if secs.fract() == 0.0 {
        format!("{}", d.as_secs())
    } else {
        let text = format!("{secs:.3}");
        text.trim_end_matches('0').to_string()
    }
}
