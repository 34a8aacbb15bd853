//! What any local process can make start_server do through the sockets every process
//! may send to: a worker's `NOTIFY_SOCKET` (its name shows in /proc/net/unix) and
//! the control socket. Each socket is read at most `BURST` datagrams per `WINDOW`;
//! one that has had its burst is left unread until its window ends, while its
//! senders wait (the kernel queues a few datagrams, then blocks or refuses the
//! next), so that a flood costs a bounded number of reads a second. The lines about
//! messages dropped are limited to about one a second: the others are counted, and
//! the count is logged with the next such line, or at the first event after a
//! second. No timer is added for that: an idle start_server never wakes up.

use std::fmt;
use std::io;
use std::os::unix::io::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use crate::sys::{self, Datagram};

/// Datagrams read from one socket per window: at most 640 a second.
const BURST: usize = 32;
const WINDOW: Duration = Duration::from_millis(50);
/// At most one line about dropped messages per period.
const LOG_PERIOD: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct Throttle {
    /// The sockets read lately (a handful): when each one's window began, and how
    /// many datagrams it has read since.
    windows: Vec<(RawFd, Instant, usize)>,
    /// When the last line about a dropped message was logged.
    logged_at: Option<Instant>,
    /// Dropped messages not logged since.
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
    /// of the lines held back is logged once a period has passed.
    pub fn tick(&mut self, now: Instant) {
        self.windows.retain(|&(_, began, _)| now < began + WINDOW);
        if self.held > 0 && !self.logged_within_period(now) {
            self.log_held(now);
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

    /// Logs a line about a dropped message, unless one was logged within the period:
    /// then it is only counted.
    pub fn dropped(&mut self, line: fmt::Arguments) {
        let now = Instant::now();
        if self.logged_within_period(now) {
            self.held += 1;
            return;
        }
        if self.held > 0 {
            self.log_held(now);
        }
        crate::log::line(line);
        self.logged_at = Some(now);
    }

    fn logged_within_period(&self, now: Instant) -> bool {
        self.logged_at.is_some_and(|at| now < at + LOG_PERIOD)
    }

    fn log_held(&mut self, now: Instant) {
        log!(
            "dropped {} more messages on the notification and control sockets, \
             not logged one by one (at most one such line a second)",
            self.held
        );
        self.held = 0;
        self.logged_at = Some(now);
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
    fn dropped_lines_are_counted_within_a_period() {
        let mut throttle = Throttle::default();
        throttle.dropped(format_args!("first"));
        for _ in 0..5 {
            throttle.dropped(format_args!("held"));
        }
        assert_eq!(throttle.held, 5);
        throttle.tick(Instant::now());
        assert_eq!(throttle.held, 5, "within the period: still held");
        throttle.tick(Instant::now() + LOG_PERIOD);
        assert_eq!(throttle.held, 0);
    }
}
