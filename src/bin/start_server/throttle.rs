//! What any local process can make start_server do through the sockets every process
//! may send to: a worker's `NOTIFY_SOCKET` (its name shows in /proc/net/unix) and
//! the control socket. Each socket is read at most `BURST` datagrams per `WINDOW`;
//! one that has had its burst is left unread until its window ends, while its
//! senders wait (the kernel queues a few datagrams, then blocks or refuses the
//! next), so that a flood costs a bounded number of reads a second. The lines about
//! messages dropped are limited to a few at once, then one a second: the others are
//! counted, and the count is logged with the next such line, or at the first event
//! once a line is allowed again. No timer is added for that: an idle start_server
//! never wakes up.

use std::fmt;
use std::io;
use std::os::unix::io::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use crate::sys::{self, Datagram};

/// Datagrams read from one socket per window: at most 640 a second.
const BURST: usize = 32;
const WINDOW: Duration = Duration::from_millis(50);
/// Lines about dropped messages logged at once, so that a few drops are all seen;
/// after them, one a second.
const LINES_AT_ONCE: u32 = 5;
const LINE_EVERY: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct Throttle {
    /// The sockets read lately (a handful): when each one's window began, and how
    /// many datagrams it has read since.
    windows: Vec<(RawFd, Instant, usize)>,
    /// Lines about dropped messages that may be logged now, and when they were last
    /// counted up (one per `LINE_EVERY`, up to `LINES_AT_ONCE`); none yet: all.
    lines: u32,
    counted_at: Option<Instant>,
    /// Dropped messages not logged one by one since the last count.
    held: u64,
}

impl Throttle {
    /// Whether to watch `fd` for datagrams now: not once it has had its burst.
    pub fn watched(&self, fd: RawFd) -> bool {
        self.window(fd).is_none_or(|(_, read)| read < BURST)
    }

    /// When the first socket that has had its burst is to be read again: a timer
    /// only while a socket is flooded.
    pub fn resume_at(&self) -> Option<Instant> {
        let spent = self.windows.iter().filter(|&&(_, _, read)| read >= BURST);
        spent.map(|&(_, began, _)| began + WINDOW).min()
    }

    /// At every turn of the loop: windows that have ended are forgotten, and the count
    /// of the lines held back is logged once a line is allowed again.
    pub fn tick(&mut self, now: Instant) {
        self.windows.retain(|&(_, began, _)| now < began + WINDOW);
        if self.held > 0 && self.take_line(now) {
            self.log_held();
        }
    }

    /// Reads what `fd`'s window allows, handing each datagram (with its bytes, cut to
    /// `buf`) to `take`.
    pub fn read(
        &mut self,
        fd: &OwnedFd,
        buf: &mut [u8],
        mut take: impl FnMut(&mut Throttle, Datagram, &[u8]),
    ) -> io::Result<()> {
        let now = Instant::now();
        let (began, mut read) = self.window(fd.as_raw_fd()).unwrap_or((now, 0));
        let result = loop {
            if read >= BURST {
                break Ok(());
            }
            match sys::receive(fd, buf) {
                Ok(Some(datagram)) => {
                    read += 1;
                    let len = datagram.len;
                    take(self, datagram, &buf[..len]);
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        self.windows.retain(|w| w.0 != fd.as_raw_fd());
        self.windows.push((fd.as_raw_fd(), began, read));
        result
    }

    fn window(&self, fd: RawFd) -> Option<(Instant, usize)> {
        let found = self.windows.iter().find(|w| w.0 == fd);
        found.map(|&(_, began, read)| (began, read))
    }

    /// Logs a line about a dropped message if one is allowed now; if not, it is only
    /// counted.
    pub fn dropped(&mut self, line: fmt::Arguments) {
        if !self.take_line(Instant::now()) {
            self.held += 1;
            return;
        }
        if self.held > 0 {
            self.log_held();
        }
        crate::log::line(line);
    }

    /// Whether a line may be logged now, which it then uses up.
    fn take_line(&mut self, now: Instant) -> bool {
        let (lines, counted_at) = match self.counted_at {
            None => (LINES_AT_ONCE, now),
            Some(at) => {
                let secs = now.saturating_duration_since(at).as_secs();
                let added = u32::try_from(secs / LINE_EVERY.as_secs().max(1)).unwrap_or(u32::MAX);
                let lines = self.lines.saturating_add(added).min(LINES_AT_ONCE);
                (lines, at + LINE_EVERY * added.min(LINES_AT_ONCE))
            }
        };
        self.counted_at = Some(if lines == LINES_AT_ONCE {
            now
        } else {
            counted_at
        });
        self.lines = lines.saturating_sub(1);
        lines > 0
    }

    fn log_held(&mut self) {
        log!(
            "dropped {} more messages on the notification and control sockets, \
             not logged one by one (at most one such line a second)",
            self.held
        );
        self.held = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_read_a_burst_per_window() {
        let (fd, addr) = sys::credential_socket(None).unwrap();
        let sender = sys::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_NONBLOCK).unwrap();
        let mut throttle = Throttle::default();
        let mut buf = [0u8; 16];
        let mut read = 0;
        // The kernel queues only a few (net.unix.max_dgram_qlen): send, read, again.
        while throttle.watched(fd.as_raw_fd()) {
            while sys::send_to(&sender, &addr, b"x").is_ok() {}
            throttle
                .read(&fd, &mut buf, |_, _, bytes| {
                    assert_eq!(bytes, b"x");
                    read += 1;
                })
                .unwrap();
        }
        assert_eq!(read, BURST);
        let resume = throttle.resume_at().unwrap();
        throttle.tick(resume);
        assert!(throttle.watched(fd.as_raw_fd()));
        assert_eq!(throttle.resume_at(), None);
    }

    #[test]
    fn dropped_lines_are_counted_beyond_a_few() {
        let mut throttle = Throttle::default();
        for _ in 0..LINES_AT_ONCE + 3 {
            throttle.dropped(format_args!("dropped"));
        }
        assert_eq!(throttle.held, 3);
        throttle.tick(Instant::now());
        assert_eq!(throttle.held, 3, "no line allowed yet: still held");
        throttle.tick(Instant::now() + LINE_EVERY);
        assert_eq!(throttle.held, 0, "logged as a count");
        throttle.dropped(format_args!("dropped"));
        assert_eq!(throttle.held, 1, "that line was the one allowed");
    }
}
