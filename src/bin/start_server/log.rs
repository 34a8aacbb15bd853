//! start_server's log lines, on stderr, worded as Server::Starter words them so that
//! existing log watchers keep working.

use std::io::Write;

/// Writes one line to stderr with a single write(2), so that lines from start_server and
/// its workers sharing the same file or pipe do not interleave mid-line.
pub fn line(args: std::fmt::Arguments) {
    let mut text = args.to_string();
    text.push('\n');
    // Nothing sensible is left to do when stderr itself fails.
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
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
