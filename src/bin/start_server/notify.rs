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

    /// Every message waiting for `worker` that counts. The others are dropped with a
    /// log line: they never disturb the supervisor.
    /// `workers` are the pids of all workers, to tell an orphan from another worker.
    pub fn drain(&self, worker: Pid, workers: &[Pid]) -> Vec<Notice> {
        let mut notices = Vec::new();
        let mut buf = [0u8; MESSAGE_MAX];
        loop {
            let datagram = match sys::receive(&self.fd, &mut buf) {
                Ok(Some(datagram)) => datagram,
                Ok(None) => return notices,
                Err(e) => {
                    log!("failed to read worker {worker}'s notification socket: {e}");
                    return notices;
                }
            };
            let Some((sender, uid)) = datagram.credentials else {
                log!("dropped a notification for worker {worker} without credentials");
                continue;
            };
            if datagram.truncated {
                log!("dropped a notification from pid {sender} for worker {worker}: longer than {MESSAGE_MAX} bytes");
                continue;
            }
            if let Err(why) = accepts(worker, sender, uid, workers) {
                log!("dropped a notification from pid {sender} for worker {worker}: {why}");
                continue;
            }
            let (said, bad) = parse(&buf[..datagram.len]);
            for why in bad {
                log!(
                    "ignored a line of a notification from pid {sender} for worker {worker}: {why}"
                );
            }
            notices.push(Notice { sender, said });
        }
    }
}

/// Who may speak for a worker: a process of start_server's own uid that is the worker
/// or below it. Below it includes an orphan of its tree, which the kernel has handed
/// to start_server (a subreaper): it can only know this socket from the worker's
/// environment. A sender that has exited by now (`systemd-notify` does not wait)
/// cannot be placed any more; its message counts if its uid is ours, for the same
/// reason. A message from another uid never counts.
pub fn accepts(worker: Pid, sender: Pid, uid: libc::uid_t, workers: &[Pid]) -> Result<(), String> {
    if uid != sys::getuid() {
        return Err(format!("sent by uid {uid}, not start_server's"));
    }
    let supervisor = std::process::id() as Pid;
    let mut pid = sender;
    // Bounded: a chain of parents longer than this is not worth following.
    for _ in 0..64 {
        if pid == worker {
            return Ok(());
        }
        match parent_of(pid) {
            // A child of start_server's that is not a worker: an orphan.
            Some(parent) if parent == supervisor && !workers.contains(&pid) => return Ok(()),
            Some(parent) if parent > 1 && parent != supervisor => pid = parent,
            Some(_) => break,
            // Gone (or gone mid-walk): the uid has to do.
            None if pid == sender => return Ok(()),
            None => break,
        }
    }
    Err(format!("pid {sender} is neither the worker nor below it"))
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
        // Another uid, even as the worker itself.
        assert!(accepts(me, me, uid.wrapping_add(1), &[]).is_err());
        // A pid that does not exist: the uid decides.
        assert!(accepts(me, i32::MAX, uid, &[]).is_ok());
        assert!(accepts(me, i32::MAX, uid.wrapping_add(1), &[]).is_err());
    }
}
