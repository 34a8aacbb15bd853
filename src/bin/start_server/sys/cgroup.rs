//! cgroup v2: finding the hierarchy and start_server's own place in it, making and
//! removing cgroups, moving processes, reading who is in one and whether it is empty,
//! killing all of it, and hearing (inotify on `cgroup.events`) when one empties.

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use super::{check, Pid};

/// The directory of start_server's own cgroup in the cgroup2 hierarchy, found from
/// /proc/self/mountinfo (on a hybrid host the hierarchy is at /sys/fs/cgroup/unified,
/// not /sys/fs/cgroup) and /proc/self/cgroup; `Err(why not)` where there is none, or
/// where it is mounted read-only.
pub fn own_dir() -> Result<PathBuf, String> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    let own = fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
    let own = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or("no cgroup2 hierarchy in /proc/self/cgroup")?;
    let mut read_only = None;
    for mount in mountinfo.lines().filter_map(Mount::parse) {
        if mount.fstype != "cgroup2" {
            continue;
        }
        // The mount shows the part of the hierarchy below its root: ours must be in it.
        let Some(below) = below(own, &mount.root) else {
            continue;
        };
        let dir = Path::new(&mount.point).join(below);
        if mount.read_only {
            read_only = Some(mount.point);
            continue;
        }
        return Ok(dir);
    }
    Err(match read_only {
        Some(point) => format!("cgroup2 is mounted read-only at {point}"),
        None => "no cgroup2 mount shows start_server's cgroup".into(),
    })
}

/// Whether systemd has handed the cgroup `dir` over to its processes (`Delegate=yes`,
/// marked by the `trusted.delegate` or `user.delegate` attribute): a unit's cgroup
/// without it is systemd's alone to arrange.
pub fn delegated(dir: &Path) -> bool {
    let Ok(path) = c_path(dir) else {
        return false;
    };
    [c"trusted.delegate", c"user.delegate"].iter().any(|name| {
        let mut value = [0u8; 8];
        // SAFETY: `path` and `name` are NUL-terminated; `value` is writable for its
        // length.
        let n = unsafe {
            libc::getxattr(
                path.as_ptr(),
                name.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        n > 0 && value[0] == b'1'
    })
}

/// `path` relative to `root`, if it is below it (or is it).
fn below<'a>(path: &'a str, root: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(root.trim_end_matches('/'))?;
    match rest {
        "" => Some(""),
        rest => rest.strip_prefix('/'),
    }
}

/// One line of /proc/self/mountinfo, the fields that matter here.
struct Mount {
    root: String,
    point: String,
    read_only: bool,
    fstype: String,
}

impl Mount {
    /// `ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER`, with
    /// spaces in paths as `\040`.
    fn parse(line: &str) -> Option<Mount> {
        let (left, right) = line.split_once(" - ")?;
        let mut left = left.split(' ');
        let root = unescape(left.nth(3)?);
        let point = unescape(left.next()?);
        let read_only = left.next()?.split(',').any(|o| o == "ro");
        let fstype = right.split(' ').next()?.to_string();
        Some(Mount {
            root,
            point,
            read_only,
            fstype,
        })
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Makes the cgroup `dir` (its parent must exist).
pub fn create(dir: &Path) -> io::Result<()> {
    let path = c_path(dir)?;
    // SAFETY: `path` is NUL-terminated; mkdir takes it and a mode.
    check(unsafe { libc::mkdir(path.as_ptr(), 0o755) }).map(drop)
}

/// Removes the cgroup `dir`, which must be empty (no process, no child cgroup).
pub fn remove(dir: &Path) -> io::Result<()> {
    let path = c_path(dir)?;
    // SAFETY: `path` is NUL-terminated.
    check(unsafe { libc::rmdir(path.as_ptr()) }).map(drop)
}

fn c_path(path: &Path) -> io::Result<std::ffi::CString> {
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// `dir`'s `cgroup.procs`, open for writing (close-on-exec): a child writes "0" to it
/// to join the cgroup before it executes its program.
pub fn open_procs(dir: &Path) -> io::Result<OwnedFd> {
    Ok(fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.procs"))?
        .into())
}

/// Moves the process `pid` (0: this one) into the cgroup `dir`.
pub fn move_into(dir: &Path, pid: Pid) -> io::Result<()> {
    fs::write(dir.join("cgroup.procs"), pid.to_string())
}

/// The processes in the cgroup `dir` (not in its children).
pub fn procs(dir: &Path) -> io::Result<Vec<Pid>> {
    let text = fs::read_to_string(dir.join("cgroup.procs"))?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// Whether a process is left in the cgroup `dir` or below (`cgroup.events`).
pub fn populated(dir: &Path) -> io::Result<bool> {
    let text = fs::read_to_string(dir.join("cgroup.events"))?;
    Ok(text.lines().any(|l| l == "populated 1"))
}

/// SIGKILL to every process in the cgroup `dir` and below, at once (`cgroup.kill`,
/// Linux 5.14), even those forking meanwhile.
pub fn kill_all(dir: &Path) -> io::Result<()> {
    fs::write(dir.join("cgroup.kill"), "1")
}

/// An inotify instance watching cgroups' `cgroup.events` files: readable when one
/// changes (a cgroup's last process exits, among others), so that emptiness is heard,
/// never polled for.
pub struct Watch {
    fd: OwnedFd,
}

impl Watch {
    pub fn new() -> io::Result<Watch> {
        // SAFETY: inotify_init1 takes flags only; the descriptor it returns is ours.
        let fd = check(unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) })?;
        // SAFETY: `fd` was just returned open and is owned by nothing else.
        Ok(Watch {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Watches the cgroup `dir`'s `cgroup.events` for modification.
    pub fn add(&self, dir: &Path) -> io::Result<()> {
        let path = c_path(&dir.join("cgroup.events"))?;
        // SAFETY: `path` is NUL-terminated; the watch descriptor is an integer.
        check(unsafe { libc::inotify_add_watch(self.fd(), path.as_ptr(), libc::IN_MODIFY) })
            .map(drop)
    }

    /// Reads every queued event, without blocking: whether there were any. (A watch is
    /// dropped by the kernel when its cgroup is removed.)
    pub fn drain(&self) -> bool {
        let mut buf = [0u8; 4096];
        let mut any = false;
        loop {
            // SAFETY: `buf` is writable for its length.
            let n = unsafe { libc::read(self.fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return any;
            }
            any = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines() {
        let hybrid = "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw";
        let m = Mount::parse(hybrid).unwrap();
        assert_eq!(
            (m.root.as_str(), m.point.as_str()),
            ("/", "/sys/fs/cgroup/unified")
        );
        assert!(!m.read_only);
        assert_eq!(m.fstype, "cgroup2");
        let ro = "30 24 0:26 /a /mnt/my\\040cg ro,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate";
        let m = Mount::parse(ro).unwrap();
        assert_eq!((m.root.as_str(), m.point.as_str()), ("/a", "/mnt/my cg"));
        assert!(m.read_only);
        assert_eq!(below("/a/b/c", "/a"), Some("b/c"));
        assert_eq!(below("/a", "/a"), Some(""));
        assert_eq!(below("/ab", "/a"), None);
        assert_eq!(below("/x/y", "/"), Some("x/y"));
        assert_eq!(below("/", "/"), Some(""));
    }
}
