//! start_server's log lines, on stderr, worded as Server::Starter words them so that
//! existing log watchers keep working.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, AtomicU8, AtomicUsize, Ordering};
use std::sync::Mutex;

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
    let mut text = args.to_string();
    text.push('\n');
    let fd = OUTPUT.load(Ordering::Relaxed);
    let how = HOW.load(Ordering::Relaxed);
    if how == WAITING {
        // Nothing sensible is left to do when stderr itself fails.
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
        return;
    }
    let dropped = DROPPED.load(Ordering::Relaxed);
    if dropped > 0 {
        text.insert_str(
            0,
            &format!("{dropped} log lines of start_server were dropped: the log was full\n"),
        );
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
