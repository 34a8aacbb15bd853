//! `--ready=notify` and `--watchdog`: the receiving end of sd_notify's protocol.
//!
//! Each worker gets a socket of its own (`NOTIFY_SOCKET=@xxxxx`, a unix datagram socket
//! in the abstract namespace, named by the kernel), so that a message is known to be
//! about that worker whichever process below it sends it (`systemd-notify --ready`
//! from a shell worker, say). The kernel attaches the sender's credentials to each
//! message (SO_PASSCRED), and `accepts` decides from them whether it counts.

use std::io;
use std::os::unix::io::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::sys::{self, Pid};
use crate::throttle::Throttle;

/// Longer messages are dropped (systemd's limit too).
const MESSAGE_MAX: usize = 4096;

/// One worker's notification socket.
pub struct Channel {
    fd: OwnedFd,
    /// The value of the worker's NOTIFY_SOCKET.
    address: String,
}

/// What a message said that start_server acts on. Other assignments (`STOPPING=1`,
/// `RELOADING=1`, `ERRNO=`, `MAINPID=`, ...) are accepted and ignored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Said {
    Ready,
    Watchdog,
    /// `WATCHDOG=trigger`: the worker says it is hung.
    WatchdogTrigger,
    /// `EXTEND_TIMEOUT_USEC=N`.
    ExtendTimeout(Duration),
    Status(String),
}

/// A message that counts: the pid that sent it, and what it said.
pub struct Notice {
    pub sender: Pid,
    pub said: Vec<Said>,
}

impl Channel {
    pub fn new() -> io::Result<Channel> {
        let (fd, addr) = sys::credential_socket(None)?;
        // Autobind names are five hex digits after the leading NUL.
        let path = addr.unix_path_bytes().unwrap_or_default();
        let name = path.strip_prefix(&[0]).unwrap_or_default();
        Ok(Channel {
            fd,
            address: format!("@{}", String::from_utf8_lossy(name)),
        })
    }

    /// A worker's socket, from the previous image after an upgrade in place.
    pub fn taken_over(fd: OwnedFd, address: String) -> Channel {
        Channel { fd, address }
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The messages waiting for `worker` that count, as many as `throttle` lets
    /// through. The others are dropped with a log line, which `throttle` rate-limits:
    /// they never disturb the supervisor.
    /// `workers` are the pids of all workers, to tell an orphan from another worker.
    pub fn drain(&self, worker: Pid, workers: &[Pid], throttle: &mut Throttle) -> Vec<Notice> {
        let mut notices = Vec::new();
        let mut buf = [0u8; MESSAGE_MAX];
        let mut refused: Option<((Pid, libc::uid_t), String)> = None;
        let read = throttle.read(&self.fd, &mut buf, |throttle, datagram, bytes| {
            let Some((sender, uid)) = datagram.credentials else {
                throttle.dropped(format_args!(
                    "dropped a notification for worker {worker} without credentials"
                ));
                return;
            };
            if datagram.truncated {
                throttle.dropped(format_args!(
                    "dropped a notification from pid {sender} for worker {worker}: \
                     longer than {MESSAGE_MAX} bytes"
                ));
                return;
            }
            // A flood comes from one sender: the walk up /proc is done once per read.
            // A live process refused stays refused: none moves below the worker.
            if refused.as_ref().is_none_or(|r| r.0 != (sender, uid)) {
                refused = accepts(worker, sender, uid, workers)
                    .err()
                    .map(|why| ((sender, uid), why));
            }
            if let Some((_, why)) = &refused {
                throttle.dropped(format_args!(
                    "dropped a notification from pid {sender} for worker {worker}: {why}"
                ));
                return;
            }
            let (said, bad) = parse(bytes);
            for why in bad {
                log!(
                    "ignored a line of a notification from pid {sender} for worker {worker}: {why}"
                );
            }
            notices.push(Notice { sender, said });
        });
        if let Err(e) = read {
            log!("failed to read worker {worker}'s notification socket: {e}");
        }
        notices
    }
}

/// Who may speak for a worker: the worker itself or a live process below it,
/// whatever its uid (a worker that drops privileges, `setpriv` or `su` to a service
/// user, says `READY=1` as that user). A process of start_server's own uid may also
/// be an orphan of a worker's tree, which the kernel has handed to start_server (a
/// subreaper): it can only know this socket from the worker's environment; or a
/// sender that has exited by now (`systemd-notify --no-block` does not wait), which
/// cannot be placed any more: its uid has to do. Pid 0 is a sender in another PID
/// namespace, which cannot be placed either, so never counts.
pub fn accepts(worker: Pid, sender: Pid, uid: libc::uid_t, workers: &[Pid]) -> Result<(), String> {
    if sender <= 0 {
        return Err(format!(
            "sent from pid {sender}, a process outside start_server's PID namespace"
        ));
    }
    let ours = uid == sys::getuid();
    match place(worker, sender, workers) {
        Place::Below => Ok(()),
        Place::Orphan | Place::Gone if ours => Ok(()),
        _ if !ours => Err(format!(
            "sent by uid {uid}, not start_server's, from pid {sender}, which is not the \
             worker nor a live process below it"
        )),
        _ => Err(format!("pid {sender} is neither the worker nor below it")),
    }
}

/// Where a sender stands, from its parent chain in /proc.
enum Place {
    /// The worker, or a live process below it.
    Below,
    /// A child of start_server's that is not a worker: an orphan of some worker's tree.
    Orphan,
    /// Exited before its message was read.
    Gone,
    Elsewhere,
}

fn place(worker: Pid, sender: Pid, workers: &[Pid]) -> Place {
    let supervisor = std::process::id() as Pid;
    let mut pid = sender;
    // Bounded: a chain of parents longer than this is not worth following.
    for _ in 0..64 {
        if pid == worker {
            return Place::Below;
        }
        match parent_of(pid) {
            Some(parent) if parent == supervisor && !workers.contains(&pid) => {
                return Place::Orphan
            }
            Some(parent) if parent > 1 && parent != supervisor => pid = parent,
            Some(_) => break,
            None if pid == sender => return Place::Gone,
            // Gone mid-walk: it can no longer be placed.
            None => break,
        }
    }
    Place::Elsewhere
}

/// The parent pid of a live process, from /proc.
fn parent_of(pid: Pid) -> Option<Pid> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let fields = stat.rsplit_once(')')?.1;
    fields.split_whitespace().nth(1)?.parse().ok()
}

/// Newline-separated `KEY=VALUE` assignments, as sd_notify sends them: what was said,
/// and the lines that could not be understood. As systemd does, a bad line is
/// skipped, not the whole message.
pub fn parse(bytes: &[u8]) -> (Vec<Said>, Vec<String>) {
    let mut said = Vec::new();
    let mut bad = Vec::new();
    for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let Some((key, value)) = std::str::from_utf8(line)
            .ok()
            .and_then(|l| l.split_once('='))
        else {
            bad.push(format!(
                "{:?} is not an assignment",
                String::from_utf8_lossy(line)
            ));
            continue;
        };
        match (key, value) {
            ("READY", "1") => said.push(Said::Ready),
            ("WATCHDOG", "1") => said.push(Said::Watchdog),
            ("WATCHDOG", "trigger") => said.push(Said::WatchdogTrigger),
            ("EXTEND_TIMEOUT_USEC", usec) => match usec.parse() {
                Ok(usec) => said.push(Said::ExtendTimeout(Duration::from_micros(usec))),
                Err(_) => bad.push(format!("EXTEND_TIMEOUT_USEC={usec:?} is not a number")),
            },
            ("STATUS", status) => said.push(Said::Status(status.to_string())),
            _ => {}
        }
    }
    (said, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages() {
        let said = |bytes: &[u8]| parse(bytes).0;
        assert_eq!(said(b"READY=1"), vec![Said::Ready]);
        assert_eq!(
            said(b"STATUS=loading data\nEXTEND_TIMEOUT_USEC=2500000\n"),
            vec![
                Said::Status("loading data".into()),
                Said::ExtendTimeout(Duration::from_millis(2500))
            ]
        );
        assert_eq!(
            said(b"WATCHDOG=1\nWATCHDOG=trigger\nSTOPPING=1\nMAINPID=7\nERRNO=2"),
            vec![Said::Watchdog, Said::WatchdogTrigger]
        );
        assert_eq!(said(b"READY=0"), vec![]);
        assert_eq!(parse(b"").1.len(), 0);
        // A bad line is skipped, and the rest of the message still counts.
        for bad in [&b"READY"[..], b"EXTEND_TIMEOUT_USEC=x", b"\xff=1"] {
            let message = [bad, b"\nREADY=1"].concat();
            let (said, problems) = parse(&message);
            assert_eq!(said, vec![Said::Ready], "{bad:?}");
            assert_eq!(problems.len(), 1, "{bad:?}");
        }
    }

    #[test]
    fn senders() {
        let me = std::process::id() as Pid;
        let uid = sys::getuid();
        assert!(accepts(me, me, uid, &[]).is_ok());
        // Our parent is alive and not below us.
        let parent = parent_of(me).unwrap();
        assert!(accepts(me, parent, uid, &[]).is_err());
        // The worker itself counts whatever its uid (it dropped privileges); another
        // uid elsewhere never does.
        assert!(accepts(me, me, uid.wrapping_add(1), &[]).is_ok());
        assert!(accepts(me, parent, uid.wrapping_add(1), &[]).is_err());
        // A pid that does not exist: the uid decides.
        assert!(accepts(me, i32::MAX, uid, &[]).is_ok());
        assert!(accepts(me, i32::MAX, uid.wrapping_add(1), &[]).is_err());
        // Pid 0: a sender in another PID namespace, never placed.
        assert!(accepts(me, 0, uid, &[]).is_err());
    }
}
