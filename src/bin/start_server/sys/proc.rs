//! /proc, read about start_server's own descendants: the process tree below a worker,
//! and what each of its threads is blocked in (`--ready=listening`). Reading /proc
//! never waits for the process read; a process or thread that is gone by the time it
//! is read answers `ENOENT` or `ESRCH`, which callers take as "not there".

use std::fs;
use std::io;
use std::os::unix::ffi::OsStringExt;

use super::Pid;

/// The processes below `root` (not `root` itself), found through each thread's
/// `children` file (Linux 3.5 and later, built with `CONFIG_PROC_CHILDREN`, as every
/// distribution's kernel is; without it, none is found). A process that exits
/// meanwhile is left out; one forked meanwhile may be missed.
pub fn descendants(root: Pid) -> Vec<Pid> {
    let mut found: Vec<Pid> = Vec::new();
    let mut next = vec![root];
    while let Some(pid) = next.pop() {
        for tid in threads(pid).unwrap_or_default() {
            let children = task_file(pid, tid, "children").unwrap_or_default();
            for child in children
                .split_ascii_whitespace()
                .filter_map(|c| c.parse().ok())
            {
                // A reused pid cannot make the walk go round in circles.
                if child != root && !found.contains(&child) {
                    found.push(child);
                    next.push(child);
                }
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
