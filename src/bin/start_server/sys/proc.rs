//! What /proc says about other processes: their children, their process group and
//! session, a variable of their environment. Every read tolerates the process
//! vanishing under it (it then counts as having no children, no group, no
//! environment), since any of them may exit at any moment.

use std::fs;

use super::Pid;

/// The children of `pid` (of every thread of it: a child belongs to the thread that
/// forked it), from /proc/PID/task/TID/children.
pub fn children(pid: Pid) -> Vec<Pid> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut children = Vec::new();
    for task in tasks.flatten() {
        let mut path = task.path();
        path.push("children");
        if let Ok(text) = fs::read_to_string(&path) {
            children.extend(
                text.split_ascii_whitespace()
                    .filter_map(|p| p.parse::<Pid>().ok()),
            );
        }
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
}
