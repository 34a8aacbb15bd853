//! Starting a child: the one way start_server runs another program (its workers, the
//! `| cmd` logger, the upgrade check, a client's check of a binary).
//!
//! Everything the child needs (argv, envp, the files to try, the descriptors to move)
//! is built before fork, so that between fork and exec the child only makes
//! async-signal-safe system calls and allocates nothing. A failure in the child is
//! written to a close-on-exec pipe; the parent reads it and reports it, so that the
//! message is formatted (and allocated) on the parent's side.

use std::ffi::{CStr, CString, OsString};
use std::io;
use std::os::raw::{c_char, c_int};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::{AsRawFd, RawFd};
use std::ptr;

use super::{check, errno, Pid};

/// NUL-terminated strings and the NULL-terminated array of pointers to them that
/// execve(2) takes, built together so that the array is valid while it lives.
pub struct CStrArray {
    /// Owned here so that the pointers stay valid (moving a CString does not move its
    /// bytes).
    strings: Vec<CString>,
    pointers: Vec<*const c_char>,
}

impl CStrArray {
    pub fn new(strings: Vec<CString>) -> CStrArray {
        let pointers = strings
            .iter()
            .map(|s| s.as_ptr())
            .chain(Some(ptr::null()))
            .collect();
        CStrArray { strings, pointers }
    }

    /// An environment as `KEY=VALUE` strings; an entry with a NUL byte cannot be
    /// passed and is left out.
    pub fn env(env: &[(OsString, OsString)]) -> CStrArray {
        CStrArray::new(
            env.iter()
                .filter_map(|(k, v)| CString::new([k.as_bytes(), b"=", v.as_bytes()].concat()).ok())
                .collect(),
        )
    }

    pub fn strings(&self) -> &[CString] {
        &self.strings
    }

    pub(super) fn as_ptr(&self) -> *const *const c_char {
        self.pointers.as_ptr()
    }
}

/// What the child executes.
pub enum Program<'a> {
    /// These files, tried in order as execvp(3) tries the PATH: a missing one is
    /// skipped, a permission problem remembered.
    Files(&'a [CString]),
    /// The file this descriptor is open on (execveat with AT_EMPTY_PATH), even if it
    /// was replaced or deleted at its path since. The number is the child's: give it
    /// in `fds`, so that it is inheritable, which a `#!` script needs (its interpreter
    /// opens /dev/fd/N).
    Fd(RawFd),
}

/// A child to start: what it executes and the process it runs in. Everything but the
/// program and argv is optional (`ChildSpec::new` leaves it as start_server's).
pub struct ChildSpec<'a> {
    pub program: Program<'a>,
    pub argv: &'a CStrArray,
    /// The whole environment (later entries override earlier ones).
    pub env: &'a [(OsString, OsString)],
    /// Variables set to the child's own pid (`LISTEN_PID`, `WATCHDOG_PID`), which only
    /// the child can fill in; they replace any of the same name in `env`.
    pub own_pid_vars: &'a [&'static str],
    /// The descriptors the child is given, as (its number there, the descriptor here),
    /// at most `MAX_FDS`: its stdin, stdout, stderr, and any other. Each is
    /// inheritable there; a number not given keeps what start_server has there.
    pub fds: &'a [(RawFd, RawFd)],
    /// Closes at exec every descriptor numbered above the highest of `fds` (else the
    /// ones without FD_CLOEXEC, the listening sockets, are inherited).
    pub only_fds: bool,
    pub dir: Option<&'a CStr>,
    /// Sent to the child by the kernel when start_server dies.
    pub parent_death_signal: Option<c_int>,
    /// A process group of its own (setpgid(0, 0)).
    pub own_group: bool,
    /// A cgroup's `cgroup.procs`, open for writing: the child joins that cgroup first
    /// thing, so that every process it ever starts is in it too.
    pub cgroup: Option<RawFd>,
}

impl<'a> ChildSpec<'a> {
    pub fn new(
        program: Program<'a>,
        argv: &'a CStrArray,
        env: &'a [(OsString, OsString)],
    ) -> ChildSpec<'a> {
        ChildSpec {
            program,
            argv,
            env,
            own_pid_vars: &[],
            fds: &[],
            only_fds: false,
            dir: None,
            parent_death_signal: None,
            own_group: false,
            cgroup: None,
        }
    }
}

/// Which step of the child failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Moving the descriptors, the process group, the parent death signal.
    Setup = 1,
    Chdir = 2,
    Exec = 3,
    /// Joining its cgroup (`ChildSpec::cgroup`).
    Cgroup = 4,
}

/// A child that exists (it is to be reaped either way); `failed` says why it could not
/// become the program, in which case it exits 255.
pub struct Spawned {
    pub pid: Pid,
    pub failed: Option<(Stage, io::Error)>,
}

/// A spawn that failed in start_server itself: which call, and why.
#[derive(Debug)]
pub struct SpawnError {
    pub call: &'static str,
    pub error: io::Error,
}

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} failed: {}", self.call, self.error)
    }
}

/// Tags an error with the call that returned it.
fn failed(call: &'static str) -> impl FnOnce(io::Error) -> SpawnError {
    move |error| SpawnError { call, error }
}

/// Forks and executes `spec`; returns once the child has executed the program or
/// failed to (it then reports why).
pub fn spawn(spec: &ChildSpec) -> Result<Spawned, SpawnError> {
    let mut prepared = Prepared::new(spec);
    let (report_read, report_write) = super::pipe_cloexec().map_err(failed("pipe2(2)"))?;
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: start_server starts no thread, so the child is a consistent copy; the
    // child runs only `Prepared::exec`, which makes async-signal-safe system calls on
    // memory built before fork, allocates nothing, and ends in exec or _exit.
    match unsafe { fork() }.map_err(failed("fork(2)"))? {
        0 => prepared.exec(spec, parent, report_write.as_raw_fd()),
        pid => {
            drop(report_write);
            let mut buf = [0u8; 5];
            // EOF (0 bytes) means exec succeeded and closed the pipe.
            let n = super::read_full(&report_read, &mut buf).map_err(failed("read(2)"))?;
            let failure = (n == buf.len()).then(|| {
                let stage = match buf[0] {
                    1 => Stage::Setup,
                    2 => Stage::Chdir,
                    4 => Stage::Cgroup,
                    _ => Stage::Exec,
                };
                let errno = c_int::from_ne_bytes([buf[1], buf[2], buf[3], buf[4]]);
                (stage, io::Error::from_raw_os_error(errno))
            });
            Ok(Spawned {
                pid,
                failed: failure,
            })
        }
    }
}

/// fork(2) as a raw system call: 0 in the child, the child's pid in the parent.
///
/// # Safety
///
/// The process must be single-threaded (start_server never starts a thread), and the
/// child must keep to async-signal-safe calls unless the parent holds no lock, which
/// single-threaded it does not (then the child may run any code, as `detach` does).
pub(super) unsafe fn fork() -> io::Result<Pid> {
    // SAFETY: fork has no memory-safety preconditions of its own; the caller keeps the
    // child's contract stated above.
    check(unsafe { libc::fork() })
}

/// errno values after which execvp goes on to the next PATH entry.
const TRY_NEXT: [c_int; 5] = [
    libc::ENOENT,
    libc::ENOTDIR,
    libc::ESTALE,
    libc::ENODEV,
    libc::ETIMEDOUT,
];

/// What the child uses, built before fork.
struct Prepared {
    envp: CStrArray,
    /// `NAME=<pid>` buffers, and their slots in `envp`'s pointers.
    own_pids: Vec<(PidEntry, usize)>,
    /// How far the descriptors are marked close-on-exec where close_range(2) is missing.
    limit: c_int,
}

impl Prepared {
    fn new(spec: &ChildSpec) -> Prepared {
        assert!(spec.fds.len() <= MAX_FDS, "at most {MAX_FDS} descriptors");
        let env: Vec<(OsString, OsString)> = spec
            .env
            .iter()
            .filter(|(k, _)| !spec.own_pid_vars.iter().any(|name| k == name))
            .cloned()
            .collect();
        let mut envp = CStrArray::env(&env);
        // Each pid variable gets a slot before the terminating NULL, filled in by the
        // child, which alone knows its pid.
        let own_pids = spec
            .own_pid_vars
            .iter()
            .map(|name| {
                let slot = envp.pointers.len() - 1;
                envp.pointers.insert(slot, ptr::null());
                (PidEntry::new(name), slot)
            })
            .collect();
        Prepared {
            envp,
            own_pids,
            limit: descriptor_limit(),
        }
    }

    /// In the child, between fork and exec: only async-signal-safe calls, no
    /// allocation, no panic. Exits 255 (as the original's child does when exec fails)
    /// after writing `[stage, errno]` to `report`.
    fn exec(&mut self, spec: &ChildSpec, parent: Pid, report: RawFd) -> ! {
        if let Some(procs) = spec.cgroup {
            // "0" is the writer itself: nothing to format, nothing to allocate.
            // SAFETY: a write of a static buffer, async-signal-safe.
            if unsafe { libc::write(procs, b"0".as_ptr().cast(), 1) } != 1 {
                fail(report, Stage::Cgroup, errno());
            }
        }
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        for (entry, slot) in self.own_pids.iter_mut() {
            if let Some(pointer) = self.envp.pointers.get_mut(*slot) {
                *pointer = entry.fill(pid);
            }
        }
        reset_signals();
        if let Some(sig) = spec.parent_death_signal {
            // SAFETY: prctl(PR_SET_PDEATHSIG) and getppid are plain system calls.
            let set = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong) } == 0;
            // SAFETY: as above.
            if !set || unsafe { libc::getppid() } != parent {
                // start_server died between fork and here: nobody to run for.
                exit(255);
            }
        }
        // SAFETY: setpgid on this process with plain integers.
        if spec.own_group && unsafe { libc::setpgid(0, 0) } == -1 {
            fail(report, Stage::Setup, errno());
        }
        let highest = spec.fds.iter().map(|&(to, _)| to).max().unwrap_or(2);
        if let Err(errno) = move_fds(spec.fds, highest) {
            fail(report, Stage::Setup, errno);
        }
        if spec.only_fds {
            cloexec_above(highest, self.limit);
        }
        if let Some(dir) = spec.dir {
            // SAFETY: `dir` is NUL-terminated; chdir is async-signal-safe.
            if unsafe { libc::chdir(dir.as_ptr()) } == -1 {
                fail(report, Stage::Chdir, errno());
            }
        }
        let errno = match spec.program {
            Program::Files(files) => search(files, spec.argv, &self.envp),
            Program::Fd(fd) => execveat(fd, spec.argv, &self.envp),
        };
        fail(report, Stage::Exec, errno)
    }
}

/// execvp's search over `files`: go on past a missing file; remember a permission
/// problem and report it if nothing better is found. Returns only on failure.
fn search(files: &[CString], argv: &CStrArray, envp: &CStrArray) -> c_int {
    let mut errno = libc::ENOENT;
    let mut denied = false;
    for file in files {
        errno = execve(file, argv, envp);
        denied |= errno == libc::EACCES;
        if errno != libc::EACCES && !TRY_NEXT.contains(&errno) {
            return errno;
        }
    }
    if denied && TRY_NEXT.contains(&errno) {
        libc::EACCES
    } else {
        errno
    }
}

/// execve(2); returns only on failure, with errno. Async-signal-safe.
fn execve(path: &CStr, argv: &CStrArray, envp: &CStrArray) -> c_int {
    // SAFETY: `path` is NUL-terminated; argv and envp are NULL-terminated arrays of
    // pointers to NUL-terminated strings, which `CStrArray` keeps alive.
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    errno()
}

/// execveat(fd, "", ..., AT_EMPTY_PATH); returns only on failure, with errno.
/// Async-signal-safe.
pub(super) fn execveat(fd: RawFd, argv: &CStrArray, envp: &CStrArray) -> c_int {
    // SAFETY: the path is an empty NUL-terminated string, as AT_EMPTY_PATH requires;
    // argv and envp are as in `execve`.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            fd,
            c"".as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    errno()
}

/// In the child: tells the parent which step failed with which errno, and exits 255.
fn fail(report: RawFd, stage: Stage, errno: c_int) -> ! {
    let [a, b, c, d] = errno.to_ne_bytes();
    let bytes = [stage as u8, a, b, c, d];
    // SAFETY: `bytes` is a readable buffer; write is async-signal-safe. Nothing is
    // left to do if it fails: the parent then sees the child exit 255.
    unsafe { libc::write(report, bytes.as_ptr().cast(), bytes.len()) };
    exit(255)
}

/// In the child: _exit(2), skipping atexit handlers and stdio buffers of the parent.
fn exit(code: c_int) -> ! {
    // SAFETY: _exit is async-signal-safe and never returns.
    unsafe { libc::_exit(code) }
}

/// How many descriptors a child can be given (`ChildSpec::fds`).
pub const MAX_FDS: usize = 8;

/// In the child: gives each descriptor its number, inheritable. A source that is
/// itself one of the numbers given (up to `highest`) is first copied above them, so
/// that no move overwrites a descriptor a later one reads. Returns errno on failure.
fn move_fds(fds: &[(RawFd, RawFd)], highest: RawFd) -> Result<(), c_int> {
    let mut sources = [-1; MAX_FDS];
    for (source, &(to, from)) in sources.iter_mut().zip(fds) {
        *source = from;
        if from != to && from <= highest {
            // SAFETY: fcntl(F_DUPFD_CLOEXEC) on integer descriptors, async-signal-safe.
            *source = unsafe { libc::fcntl(from, libc::F_DUPFD_CLOEXEC, highest + 1) };
            if *source == -1 {
                return Err(errno());
            }
        }
    }
    for (&source, &(to, _)) in sources.iter().zip(fds) {
        // dup2 clears FD_CLOEXEC on its target, but onto itself it does nothing.
        // SAFETY: dup2 and fcntl(F_SETFD) on integer descriptors, async-signal-safe.
        let ret = unsafe {
            match source == to {
                true => libc::fcntl(to, libc::F_SETFD, 0),
                false => libc::dup2(source, to),
            }
        };
        if ret == -1 {
            return Err(errno());
        }
    }
    Ok(())
}

/// In the child: unblocks every signal and resets every disposition to the default, so
/// the program starts as if exec'd by a shell (SIGPIPE included, and even the
/// real-time signals libc reserves for itself, which its sigaction() refuses to touch).
fn reset_signals() {
    /// The kernel's `struct sigaction` for rt_sigaction(2); all zeroes is SIG_DFL with
    /// no flags and an empty mask.
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: u64,
        restorer: usize,
        mask: u64,
    }
    let dfl = KernelSigaction {
        handler: 0,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    let empty: u64 = 0;
    // SAFETY: raw rt_sigprocmask/rt_sigaction system calls are async-signal-safe; the
    // structures are initialised and live on the stack, and their size is the kernel's
    // sigset size (8 bytes). Errors (SIGKILL, SIGSTOP) are expected and ignored.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &empty as *const u64,
            ptr::null_mut::<u64>(),
            8,
        );
        // Linux numbers signals 1..=64 (the kernel's _NSIG is 64).
        for sig in 1..=64 {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                &dfl as *const KernelSigaction,
                ptr::null_mut::<KernelSigaction>(),
                8,
            );
        }
    }
}

/// The soft limit on open descriptors, capped at 65536: how far `cloexec_above` goes
/// on a kernel without close_range(2).
fn descriptor_limit() -> c_int {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    limit.rlim_cur.min(65536) as c_int
}

/// In the child: marks every descriptor above `highest` close-on-exec, with one
/// close_range(2) (Linux 5.11), or on older kernels one fcntl per descriptor number
/// below `limit`.
fn cloexec_above(highest: RawFd, limit: c_int) {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC and fcntl(F_SETFD) change only
    // descriptor flags; both are plain, async-signal-safe system calls.
    unsafe {
        let first = (highest + 1) as libc::c_uint;
        let all = libc::c_uint::MAX;
        if libc::syscall(libc::SYS_close_range, first, all, libc::CLOSE_RANGE_CLOEXEC) == 0 {
            return;
        }
        for fd in highest + 1..limit {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
}

/// A `NAME=<pid>` entry (`LISTEN_PID=`, `WATCHDOG_PID=`), in a buffer made before fork
/// and filled in the child without allocating.
struct PidEntry {
    bytes: [u8; PidEntry::SIZE],
    prefix: usize,
}

impl PidEntry {
    /// Room for the longest name, `=`, the ten digits of the largest pid_t, and the NUL.
    const SIZE: usize = 32;

    fn new(name: &str) -> PidEntry {
        let mut bytes = [0; Self::SIZE];
        let prefix = [name.as_bytes(), b"="].concat();
        assert!(prefix.len() + 11 <= Self::SIZE, "{name} is too long");
        bytes[..prefix.len()].copy_from_slice(&prefix);
        PidEntry {
            bytes,
            prefix: prefix.len(),
        }
    }

    /// Writes `pid` after the prefix, NUL-terminated; returns the entry for envp.
    /// Async-signal-safe: no allocation, no panic.
    fn fill(&mut self, pid: Pid) -> *const c_char {
        let pid = pid.unsigned_abs();
        let width = pid.checked_ilog10().unwrap_or(0) + 1;
        for (i, dst) in (0u32..).zip(self.bytes.iter_mut().skip(self.prefix)) {
            *dst = match width.checked_sub(i + 1) {
                Some(power) => b'0' + (pid / 10u32.pow(power) % 10) as u8,
                None => 0,
            };
        }
        self.bytes.as_ptr().cast()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_entries() {
        let mut entry = PidEntry::new("LISTEN_PID");
        for (pid, text) in [
            (1, "LISTEN_PID=1"),
            (4_194_304, "LISTEN_PID=4194304"),
            (Pid::MAX, "LISTEN_PID=2147483647"),
            (10, "LISTEN_PID=10"),
        ] {
            assert_eq!(entry.fill(pid), entry.bytes.as_ptr().cast());
            let (written, rest) = entry.bytes.split_at(text.len());
            assert_eq!(written, text.as_bytes());
            assert!(rest.iter().all(|&b| b == 0), "{text}: {rest:?}");
        }
    }

    #[test]
    fn watchdog_pid_entry() {
        let mut entry = PidEntry::new("WATCHDOG_PID");
        entry.fill(Pid::MAX);
        assert_eq!(&entry.bytes[..23], b"WATCHDOG_PID=2147483647");
        assert_eq!(entry.bytes[23], 0);
    }
}
