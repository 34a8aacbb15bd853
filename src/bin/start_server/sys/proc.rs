//! /proc, read about start_server's own descendants: the process tree below a worker,
//! each one's process group, session and environment, and what each of its threads is
//! blocked in (`--ready=listening`). Reading /proc never waits for the process read.
//! Every read tolerates the process vanishing under it (`ENOENT`, `ESRCH`: it then
//! counts as having no children, no group, no environment, no threads), since any of
//! them may exit at any moment.

use std::fs;
use std::io;
use std::os::unix::ffi::OsStringExt;

use super::Pid;

/// The children of `pid` (of every thread of it: a child belongs to the thread that
/// forked it), from /proc/PID/task/TID/children (Linux 3.5 and later, built with
/// `CONFIG_PROC_CHILDREN`, as every distribution's kernel is; without it, none is
/// found).
pub fn children(pid: Pid) -> Vec<Pid> {
    let mut children = Vec::new();
    for tid in threads(pid).unwrap_or_default() {
        let text = task_file(pid, tid, "children").unwrap_or_default();
        children.extend(
            text.split_ascii_whitespace()
                .filter_map(|p| p.parse::<Pid>().ok()),
        );
    }
    children
}

/// Every descendant of `root` (not `root` itself), parents before their children. A
/// process that exits during the walk is left out with its subtree, or listed though
/// gone: a caller that signals them must expect ESRCH.
pub fn descendants(root: Pid) -> Vec<Pid> {
    let mut found = children(root);
    let mut next = 0;
    while next < found.len() {
        // A pid reused during the walk could close a loop: each is listed once.
        for child in children(found[next]) {
            if child != root && !found.contains(&child) {
                found.push(child);
            }
        }
        next += 1;
    }
    found
}

/// The threads of `pid` (their ids).
pub fn threads(pid: Pid) -> io::Result<Vec<Pid>> {
    let dir = fs::read_dir(format!("/proc/{pid}/task"))?;
    let names = dir.flatten().map(|entry| entry.file_name());
    Ok(names
        .filter_map(|name| name.to_str()?.parse().ok())
        .collect())
}

/// A file of thread `tid` of `pid`, under /proc/PID/task/TID/ (`syscall`,
/// `fdinfo/N`): a thread's own view, right even where it does not share its
/// process's descriptor table.
pub fn task_file(pid: Pid, tid: Pid, name: &str) -> io::Result<String> {
    fs::read_to_string(format!("/proc/{pid}/task/{tid}/{name}"))
}

/// What descriptor `fd` of thread `tid` of `pid` is (`socket:[INODE]`, a path, ...).
pub fn fd_link(pid: Pid, tid: Pid, fd: i32) -> io::Result<Vec<u8>> {
    let link = fs::read_link(format!("/proc/{pid}/task/{tid}/fd/{fd}"))?;
    Ok(link.into_os_string().into_vec())
}

/// `len` bytes of the memory of process (or thread) `pid` at `addr`, with
/// process_vm_readv(2), which the kernel allows on a process start_server may trace
/// (its own descendant, of the same user, still dumpable; or any, as root). Fewer
/// bytes if the range ends in unmapped memory.
pub fn read_memory(pid: Pid, addr: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: len,
    };
    let remote = libc::iovec {
        iov_base: addr as usize as *mut libc::c_void,
        iov_len: len,
    };
    // SAFETY: `local` describes `buf`, writable for `len` bytes and alive for the
    // call; the remote range is only read by the kernel, in the other process, and
    // checked there.
    let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// The process group and session of `pid`.
pub fn group_and_session(pid: Pid) -> Option<(Pid, Pid)> {
    stat(pid).map(|[_, pgrp, session]| (pgrp, session))
}

/// The parent of `pid`.
pub fn ppid(pid: Pid) -> Option<Pid> {
    stat(pid).map(|[ppid, _, _]| ppid)
}

/// The parent, process group and session of `pid`, from /proc/PID/stat.
fn stat(pid: Pid) -> Option<[Pid; 3]> {
    let stat = fs::read(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: the fields start after the
    // last ')'. Then: state, ppid, pgrp, session.
    let end = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&stat[end + 1..]).ok()?;
    let mut fields = rest.split_ascii_whitespace().skip(1);
    let mut next = || fields.next()?.parse().ok();
    Some([next()?, next()?, next()?])
}

/// The value of `name` in the environment `pid` was executed with (/proc/PID/environ:
/// readable by its own user and root).
pub fn env_var(pid: Pid, name: &str) -> Option<Vec<u8>> {
    let environ = fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ.split(|&b| b == 0).find_map(|entry| {
        let value = entry.strip_prefix(name.as_bytes())?.strip_prefix(b"=")?;
        Some(value.to_vec())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_group_and_environment() {
        let me = std::process::id() as Pid;
        // SAFETY: getpgrp and getsid have no preconditions.
        let (pgrp, sid) = unsafe { (libc::getpgrp(), libc::getsid(0)) };
        assert_eq!(group_and_session(me), Some((pgrp, sid)));
        assert!(env_var(me, "PATH").is_some() || std::env::var_os("PATH").is_none());
        assert_eq!(group_and_session(-1), None);
        assert!(descendants(Pid::MAX).is_empty());
    }

    /// A shell's background sleeps, and theirs, are found below the test process;
    /// the test process is not.
    #[test]
    fn finds_children_and_grandchildren() {
        let mut sh = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & (sleep 30 & wait) & wait"])
            .spawn()
            .unwrap();
        let shell = sh.id() as Pid;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let below = loop {
            let below = descendants(shell);
            // two sleeps, a subshell.
            if below.len() >= 3 || std::time::Instant::now() > deadline {
                break below;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        for &pid in &below {
            let _ = super::super::kill(pid, libc::SIGKILL);
        }
        let _ = sh.kill();
        let _ = sh.wait();
        assert_eq!(below.len(), 3, "{below:?}");
        assert!(!below.contains(&shell));
        assert!(!below.contains(&(std::process::id() as Pid)));
    }
}
