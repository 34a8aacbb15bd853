//! `--ready=listening`: whether a new worker waits for connections, from what Linux
//! shows of its process tree in /proc. The rule, kept apart from the reading of /proc
//! (`Look`) so that it is tested on made-up threads as well as on real servers:
//!
//! a worker waits when a thread of it, or of a process below it, is blocked (not
//! running: /proc/TID/syscall names the call and its arguments) in
//! - `accept`/`accept4` on a listener, or `recvfrom`/`recvmsg`/`recvmmsg`/`read` on
//!   one (a UDP socket);
//! - `epoll_wait`/`epoll_pwait`/`epoll_pwait2` on an epoll set whose interest list
//!   holds a listener for reading (fdinfo's `tfd:` rows: `events:` with `EPOLLIN`,
//!   `ino:` in hex);
//! - `poll`/`ppoll` with a listener in its array for `POLLIN`, or `select`/`pselect6`
//!   with it in the read set (both read from the thread's memory);
//!
//! a listener being a socket start_server holds, known by its inode, whatever
//! descriptor number the thread has it at. An interest registered while no thread
//! waits (a server busy loading after it set its listener up) does not count.

use std::io;

use crate::sys::{self, Pid};

/// What a look at a worker's tree found.
#[derive(Clone, Debug, PartialEq)]
pub enum Probe {
    /// A thread waits for connections: which, and in what, for the log.
    Waiting(String),
    NotYet,
    /// /proc cannot tell, for this reason: no look will.
    Blind(String),
}

/// Reading /proc (`Proc`), or a made-up process table in tests.
pub trait Look {
    fn threads(&self, pid: Pid) -> io::Result<Vec<Pid>>;
    /// /proc/PID/task/TID/syscall.
    fn syscall(&self, pid: Pid, tid: Pid) -> io::Result<String>;
    /// The target of /proc/PID/task/TID/fd/FD.
    fn fd_link(&self, pid: Pid, tid: Pid, fd: i32) -> io::Result<Vec<u8>>;
    /// /proc/PID/task/TID/fdinfo/FD.
    fn fdinfo(&self, pid: Pid, tid: Pid, fd: i32) -> io::Result<String>;
    fn memory(&self, tid: Pid, addr: u64, len: usize) -> io::Result<Vec<u8>>;
}

/// The real /proc.
pub struct Proc;

impl Look for Proc {
    fn threads(&self, pid: Pid) -> io::Result<Vec<Pid>> {
        sys::threads(pid)
    }
    fn syscall(&self, pid: Pid, tid: Pid) -> io::Result<String> {
        sys::task_file(pid, tid, "syscall")
    }
    fn fd_link(&self, pid: Pid, tid: Pid, fd: i32) -> io::Result<Vec<u8>> {
        sys::fd_link(pid, tid, fd)
    }
    fn fdinfo(&self, pid: Pid, tid: Pid, fd: i32) -> io::Result<String> {
        sys::task_file(pid, tid, &format!("fdinfo/{fd}"))
    }
    fn memory(&self, tid: Pid, addr: u64, len: usize) -> io::Result<Vec<u8>> {
        sys::read_memory(tid, addr, len)
    }
}

/// The most `pollfd`s (8 bytes each) read from a thread's `poll` array: the listeners
/// come first in any server seen, and this keeps one look cheap.
const MAX_POLLFDS: u64 = 4096;

/// Whether a thread of `tree` (the worker first, then the processes below it) waits
/// for connections on one of `listeners` (socket inodes).
pub fn probe(tree: &[Pid], listeners: &[u64], look: &impl Look) -> Probe {
    let mut denied = None;
    for (i, &pid) in tree.iter().enumerate() {
        let tids = match look.threads(pid) {
            Ok(tids) => tids,
            // The worker itself is start_server's child, not yet reaped: its /proc
            // entry exists, unless this /proc does not show it.
            Err(e) if i == 0 && gone(&e) => {
                return Probe::Blind(format!(
                    "/proc/{pid} cannot be read ({e}): /proc is mounted with hidepid, or \
                     belongs to another pid namespace"
                ))
            }
            Err(e) => {
                note(&mut denied, pid, "task", &e);
                continue;
            }
        };
        for tid in tids {
            match waits(pid, tid, listeners, look) {
                Ok(Some((call, ino, fd))) => {
                    return Probe::Waiting(format!(
                        "thread {tid} of process {pid} waits in {call} on socket:[{ino}] \
                         (descriptor {fd})"
                    ))
                }
                Ok(None) => {}
                Err((what, e)) => note(&mut denied, pid, what, &e),
            }
        }
    }
    // Some process of the tree could not be read: it may be the one that serves.
    match denied {
        Some(why) => Probe::Blind(why),
        None => Probe::NotYet,
    }
}

/// Keeps the first reason a part of the tree could not be read (a process or thread
/// that is gone is no reason).
fn note(denied: &mut Option<String>, pid: Pid, what: &str, e: &io::Error) {
    if denied.is_none() && !gone(e) {
        *denied = Some(format!(
            "process {pid} cannot be read ({what}: {e}): it changed its user or became \
             non-dumpable"
        ));
    }
}

/// An error that means the process, the thread, or the memory the call named is gone
/// (the call returned meanwhile).
fn gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT | libc::ESRCH | libc::EFAULT)
    )
}

type Failed = (&'static str, io::Error);

/// Whether thread `tid` of `pid` waits on a listener: if so, in which call, on which
/// socket (its inode), through which descriptor (an epoll set's, for epoll).
fn waits(
    pid: Pid,
    tid: Pid,
    listeners: &[u64],
    look: &impl Look,
) -> Result<Option<(&'static str, u64, i32)>, Failed> {
    let text = look.syscall(pid, tid).map_err(|e| ("syscall", e))?;
    let Some((call, args)) = parse_syscall(&text) else {
        return Ok(None);
    };
    // A descriptor is an int: an argument that is not one names none.
    let fd = |arg: u64| i32::try_from(arg).ok();
    let listener = |fd: i32| -> Result<Option<u64>, Failed> {
        match look.fd_link(pid, tid, fd) {
            Ok(link) => Ok(socket_inode(&link).filter(|ino| listeners.contains(ino))),
            Err(e) if gone(&e) => Ok(None),
            Err(e) => Err(("fd", e)),
        }
    };
    let memory = |addr: u64, len: usize| match look.memory(tid, addr, len) {
        Ok(bytes) => Ok(bytes),
        Err(e) if gone(&e) => Ok(Vec::new()),
        Err(e) => Err(("memory", e)),
    };
    // The descriptors the call waits on, the first one that is a listener found.
    let candidates: Vec<i32> = match call {
        Call::OnFd(_) => fd(args[0]).into_iter().collect(),
        Call::Epoll(_) => {
            let Some(epfd) = fd(args[0]) else {
                return Ok(None);
            };
            let info = match look.fdinfo(pid, tid, epfd) {
                Ok(info) => info,
                Err(e) if gone(&e) => return Ok(None),
                Err(e) => return Err(("fdinfo", e)),
            };
            let ino = epoll_readers(&info).find(|ino| listeners.contains(ino));
            return Ok(ino.map(|ino| (call.name(), ino, epfd)));
        }
        Call::Poll(_) => {
            let n = args[1].min(MAX_POLLFDS) as usize;
            poll_readers(&memory(args[0], n * 8)?).collect()
        }
        Call::Select(_) => {
            let nfds = args[0].min(libc::FD_SETSIZE as u64) as usize;
            set_members(&memory(args[1], nfds.div_ceil(64) * 8)?, nfds).collect()
        }
    };
    for fd in candidates {
        if let Some(ino) = listener(fd)? {
            return Ok(Some((call.name(), ino, fd)));
        }
    }
    Ok(None)
}

/// The blocking calls a server waits for connections in, by what their arguments
/// name.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Call {
    /// The first argument is the socket.
    OnFd(&'static str),
    /// The first argument is an epoll set.
    Epoll(&'static str),
    /// A `pollfd` array and its length.
    Poll(&'static str),
    /// The number of descriptors, then the read set.
    Select(&'static str),
}

impl Call {
    fn name(self) -> &'static str {
        match self {
            Call::OnFd(name) | Call::Epoll(name) | Call::Poll(name) | Call::Select(name) => name,
        }
    }

    /// The call with this number, on this architecture, if a server waits in it.
    fn of(nr: i64) -> Option<Call> {
        Some(match nr {
            #[cfg(target_arch = "x86_64")]
            libc::SYS_accept => Call::OnFd("accept"),
            libc::SYS_accept4 => Call::OnFd("accept4"),
            libc::SYS_recvfrom => Call::OnFd("recvfrom"),
            libc::SYS_recvmsg => Call::OnFd("recvmsg"),
            libc::SYS_recvmmsg => Call::OnFd("recvmmsg"),
            libc::SYS_read => Call::OnFd("read"),
            #[cfg(target_arch = "x86_64")]
            libc::SYS_epoll_wait => Call::Epoll("epoll_wait"),
            libc::SYS_epoll_pwait => Call::Epoll("epoll_pwait"),
            libc::SYS_epoll_pwait2 => Call::Epoll("epoll_pwait2"),
            #[cfg(target_arch = "x86_64")]
            libc::SYS_poll => Call::Poll("poll"),
            libc::SYS_ppoll => Call::Poll("ppoll"),
            #[cfg(target_arch = "x86_64")]
            libc::SYS_select => Call::Select("select"),
            libc::SYS_pselect6 => Call::Select("pselect6"),
            _ => return None,
        })
    }
}

/// /proc/TID/syscall: `NR ARG1 ... ARG6 SP PC` while the thread is blocked in a system
/// call; `-1 SP PC` blocked elsewhere, or `running`: then `None`, as for a call no
/// server waits for connections in.
fn parse_syscall(text: &str) -> Option<(Call, [u64; 6])> {
    let mut words = text.split_ascii_whitespace();
    let call = Call::of(words.next()?.parse().ok()?)?;
    let mut args = [0u64; 6];
    for arg in &mut args {
        let hex = words.next()?.strip_prefix("0x")?;
        *arg = u64::from_str_radix(hex, 16).ok()?;
    }
    Some((call, args))
}

/// `socket:[INODE]`, a descriptor's link in /proc: the inode.
fn socket_inode(link: &[u8]) -> Option<u64> {
    let inner = link.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(inner).ok()?.parse().ok()
}

/// An epoll descriptor's fdinfo: the inodes it watches for reading (`tfd:` rows:
/// `tfd: FD events: HEX data: HEX pos:N ino:HEX sdev:HEX`).
fn epoll_readers(info: &str) -> impl Iterator<Item = u64> + '_ {
    info.lines().filter_map(|line| {
        let line = line.strip_prefix("tfd:")?;
        let value = |key: &str| {
            let word = line.split(key).nth(1)?.split_ascii_whitespace().next()?;
            u64::from_str_radix(word, 16).ok()
        };
        let (events, ino) = (value(" events:")?, value(" ino:")?);
        (events & libc::EPOLLIN as u64 != 0).then_some(ino)
    })
}

/// A `pollfd` array: the descriptors it asks `POLLIN` of.
fn poll_readers(array: &[u8]) -> impl Iterator<Item = i32> + '_ {
    array.chunks_exact(8).filter_map(|p| {
        let fd = i32::from_ne_bytes([p[0], p[1], p[2], p[3]]);
        let events = i16::from_ne_bytes([p[4], p[5]]);
        (fd >= 0 && events & libc::POLLIN != 0).then_some(fd)
    })
}

/// An `fd_set` (words of `long` bits) of `nfds` descriptors: its members.
fn set_members(set: &[u8], nfds: usize) -> impl Iterator<Item = i32> + '_ {
    let word = |fd: usize| {
        let bytes = &set[fd / 64 * 8..][..8];
        u64::from_ne_bytes(bytes.try_into().expect("8 bytes"))
    };
    (0..nfds.min(set.len() / 8 * 64))
        .filter(move |&fd| word(fd) & (1 << (fd % 64)) != 0)
        .map(|fd| fd as i32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const LISTENER: u64 = 4242;

    /// A made-up process table: per thread, its syscall line; per descriptor, its link
    /// and fdinfo; memory by address; the errors some reads meet.
    #[derive(Default)]
    struct Fake {
        threads: BTreeMap<Pid, Vec<Pid>>,
        syscall: BTreeMap<Pid, String>,
        links: BTreeMap<i32, String>,
        fdinfo: BTreeMap<i32, String>,
        memory: BTreeMap<u64, Vec<u8>>,
        denied: Vec<Pid>,
    }

    fn err(code: i32) -> io::Error {
        io::Error::from_raw_os_error(code)
    }

    impl Look for Fake {
        fn threads(&self, pid: Pid) -> io::Result<Vec<Pid>> {
            self.threads.get(&pid).cloned().ok_or(err(libc::ENOENT))
        }
        fn syscall(&self, _: Pid, tid: Pid) -> io::Result<String> {
            if self.denied.contains(&tid) {
                return Err(err(libc::EACCES));
            }
            self.syscall.get(&tid).cloned().ok_or(err(libc::ESRCH))
        }
        fn fd_link(&self, _: Pid, _: Pid, fd: i32) -> io::Result<Vec<u8>> {
            let link = self.links.get(&fd).ok_or(err(libc::ENOENT))?;
            Ok(link.as_bytes().to_vec())
        }
        fn fdinfo(&self, _: Pid, _: Pid, fd: i32) -> io::Result<String> {
            self.fdinfo.get(&fd).cloned().ok_or(err(libc::ENOENT))
        }
        fn memory(&self, _: Pid, addr: u64, len: usize) -> io::Result<Vec<u8>> {
            let bytes = self.memory.get(&addr).ok_or(err(libc::EFAULT))?;
            Ok(bytes[..len.min(bytes.len())].to_vec())
        }
    }

    /// One process, one thread, in `line`; the listener at descriptor 7 (a dup:
    /// not the number start_server gave), a pipe at 5.
    fn one(line: String) -> Fake {
        let mut fake = Fake::default();
        fake.threads.insert(10, vec![10]);
        fake.syscall.insert(10, line);
        fake.links.insert(7, format!("socket:[{LISTENER}]"));
        fake.links.insert(5, "pipe:[99]".into());
        fake
    }

    fn line(nr: i64, args: [u64; 6]) -> String {
        let args: Vec<String> = args.iter().map(|a| format!("0x{a:x}")).collect();
        format!("{nr} {} 0x7ffd0000 0x7f000000\n", args.join(" "))
    }

    fn verdict(fake: &Fake) -> Probe {
        probe(&[10], &[LISTENER], fake)
    }

    fn waiting(fake: &Fake) -> bool {
        matches!(verdict(fake), Probe::Waiting(_))
    }

    #[test]
    fn accept_on_the_listener_at_any_descriptor() {
        assert!(waiting(&one(line(
            libc::SYS_accept4,
            [7, 0, 0, 0x80800, 0, 0]
        ))));
        assert_eq!(
            verdict(&one(line(libc::SYS_accept4, [7, 0, 0, 0, 0, 0]))),
            Probe::Waiting(
                "thread 10 of process 10 waits in accept4 on socket:[4242] (descriptor 7)".into()
            )
        );
        // On another socket, or on a pipe: no.
        assert!(!waiting(&one(line(libc::SYS_accept4, [5, 0, 0, 0, 0, 0]))));
        assert!(!waiting(&one(line(libc::SYS_recvfrom, [5, 0, 0, 0, 0, 0]))));
        assert!(waiting(&one(line(libc::SYS_recvmsg, [7, 0, 0, 0, 0, 0]))));
    }

    #[test]
    fn running_or_sleeping_is_not_waiting() {
        assert_eq!(verdict(&one("running\n".into())), Probe::NotYet);
        assert_eq!(verdict(&one("-1 0x7ffd 0x7f00\n".into())), Probe::NotYet);
        let sleep = line(libc::SYS_clock_nanosleep, [0, 0, 0x7ffd, 0, 0, 0]);
        assert_eq!(verdict(&one(sleep)), Probe::NotYet);
    }

    const EPOLL_INFO: &str = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\n\
        tfd:        5 events:       19 data:                5  pos:0 ino:63 sdev:9\n";

    fn epoll(events: &str, ino: u64) -> Fake {
        let mut fake = one(line(
            libc::SYS_epoll_pwait,
            [9, 0x1000, 1024, 0xffffffffffffffff, 0, 8],
        ));
        let row = format!(
            "tfd:        7 events: {events:>8} data:                7  pos:0 ino:{ino:x} sdev:9\n"
        );
        fake.fdinfo.insert(9, format!("{EPOLL_INFO}{row}"));
        fake
    }

    #[test]
    fn epoll_wait_on_a_set_holding_the_listener_for_reading() {
        assert!(waiting(&epoll("19", LISTENER)));
        assert!(waiting(&epoll("1", LISTENER)));
        // Registered for writing only, or disarmed (EPOLLONESHOT, fired): no.
        assert!(!waiting(&epoll("4", LISTENER)));
        assert!(!waiting(&epoll("0", LISTENER)));
        assert!(!waiting(&epoll("19", LISTENER + 1)));
        // The set holds the listener, but the thread is busy: no.
        let mut busy = epoll("19", LISTENER);
        busy.syscall.insert(10, "running\n".into());
        assert!(!waiting(&busy));
    }

    #[test]
    fn poll_and_select_read_from_the_threads_memory() {
        let pollfd = |fd: i32, events: i16| {
            let mut p = fd.to_ne_bytes().to_vec();
            p.extend(events.to_ne_bytes());
            p.extend(0i16.to_ne_bytes());
            p
        };
        let mut fake = one(line(libc::SYS_ppoll, [0x5000, 3, 0, 0, 8, 0]));
        let array = [
            pollfd(5, libc::POLLIN),
            pollfd(-1, libc::POLLIN),
            pollfd(7, libc::POLLIN),
        ];
        fake.memory.insert(0x5000, array.concat());
        assert!(waiting(&fake));
        // Past the length given, or not for reading: no.
        fake.syscall
            .insert(10, line(libc::SYS_ppoll, [0x5000, 2, 0, 0, 8, 0]));
        assert!(!waiting(&fake));
        fake.memory.insert(
            0x5000,
            [pollfd(5, libc::POLLIN), pollfd(7, libc::POLLOUT)].concat(),
        );
        fake.syscall
            .insert(10, line(libc::SYS_ppoll, [0x5000, 2, 0, 0, 8, 0]));
        assert!(!waiting(&fake));

        let mut set = vec![0u8; 128];
        set[0] = 1 << 7; // descriptor 7
        fake.memory.insert(0x6000, set);
        fake.syscall
            .insert(10, line(libc::SYS_pselect6, [8, 0x6000, 0, 0, 0, 0]));
        assert!(waiting(&fake));
        // nfds says descriptor 7 is not looked at.
        fake.syscall
            .insert(10, line(libc::SYS_pselect6, [7, 0x6000, 0, 0, 0, 0]));
        assert!(!waiting(&fake));
        // The call returned meanwhile: its memory is gone.
        fake.syscall
            .insert(10, line(libc::SYS_pselect6, [8, 0x7000, 0, 0, 0, 0]));
        assert_eq!(verdict(&fake), Probe::NotYet);
    }

    #[test]
    fn a_descendant_counts_and_vanished_threads_are_skipped() {
        let mut fake = one("running\n".into());
        fake.threads.insert(11, vec![11, 12, 13]);
        // 12 vanished between the listing and the read.
        fake.syscall.insert(11, "running\n".into());
        fake.syscall
            .insert(13, line(libc::SYS_accept, [7, 0, 0, 0, 0, 0]));
        // 14 exited before its threads were listed.
        let found = probe(&[10, 14, 11], &[LISTENER], &fake);
        assert_eq!(
            found,
            Probe::Waiting(
                "thread 13 of process 11 waits in accept on socket:[4242] (descriptor 7)".into()
            )
        );
    }

    #[test]
    fn an_unreadable_tree_is_blind() {
        let mut fake = one(line(libc::SYS_accept4, [5, 0, 0, 0, 0, 0]));
        fake.denied.push(10);
        assert!(matches!(verdict(&fake), Probe::Blind(why) if why.contains("process 10")));
        // The worker itself not in /proc (hidepid, another namespace).
        let blind = probe(&[20], &[LISTENER], &fake);
        assert!(matches!(blind, Probe::Blind(why) if why.contains("hidepid")));
        // One that waits wins over one that cannot be read.
        fake.threads.insert(10, vec![10, 11]);
        fake.syscall
            .insert(11, line(libc::SYS_accept4, [7, 0, 0, 0, 0, 0]));
        assert!(waiting(&fake));
    }

    /// The real /proc: this test's own thread blocked in accept(2) on a listener, then
    /// in poll(2), seen from another thread (a process sees its own threads as it sees
    /// its descendants').
    #[test]
    fn real_threads() {
        use std::os::unix::io::AsRawFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ino = sys::inode(listener.as_raw_fd()).unwrap();
        let me = std::process::id() as Pid;
        let addr = listener.local_addr().unwrap();
        let accepting = std::thread::spawn(move || listener.accept().map(drop));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let tree = [me];
        let seen = loop {
            match probe(&tree, &[ino], &Proc) {
                Probe::Waiting(how) => break how,
                other if std::time::Instant::now() > deadline => panic!("{other:?}"),
                _ => std::thread::sleep(std::time::Duration::from_millis(1)),
            }
        };
        assert!(seen.contains(&format!("socket:[{ino}]")), "{seen}");
        std::net::TcpStream::connect(addr).unwrap();
        accepting.join().unwrap().unwrap();
        assert_eq!(probe(&tree, &[ino], &Proc), Probe::NotYet);
    }
}
