//! Upgrading start_server in place: SIGUSR2 (or `start_server --upgrade`) replaces
//! the running image with the binary now at the path it was started from, in the same
//! process, keeping its pid, its children (the workers) and its descriptors (the
//! listening sockets, the locked pid file, the log), so that no worker notices and no
//! connection is refused.
//!
//! 1. `check`: the new binary is run once as `PATH --upgrade-check`, and must say its
//!    version and that it reads this version's state format. If not, no upgrade.
//! 2. the supervisor's executor: the state (`state`'s format: this module's records of
//!    what `main` set up, then `supervisor::record`'s) is written to a memfd, and
//!    `exec` executes the new binary with the same command line and
//!    `SERVER_STARTER_UPGRADE_STATE=STATE_FD,IMAGE_FD` (the memfd, and the previous
//!    image opened read-only, for the way back).
//! 3. `resume`, in the new image, first thing: the variable leaves the environment (no
//!    worker ever sees it), the state is read and checked whole, then taken over, and
//!    `main` enters the same loop as at a fresh start, where the previous image left
//!    off. A new image that cannot
//!    read the state executes the previous image again (`exec::back`), with the same
//!    state and `SERVER_STARTER_UPGRADE_REFUSED=why`: the workers are never left
//!    without a supervisor.
//!
//! Signals are never lost: the handled ones are blocked, and both the mask and the
//! pending set survive execve; the new image's signalfd reads what arrived meanwhile.

pub mod check;
pub mod client;
pub mod exec;
pub mod record;
pub mod state;

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::PathBuf;

use crate::bind::{Listener, Listeners};
use crate::log_file::LogFile;
use crate::log_pipe::{self, LogPipe};
use crate::pid_file::PidFile;
use crate::signals::{self, Events};
use crate::sys;
use log_pipe::Handover;
use record::{persist, record, Persist};
use state::{Cursor, Field, Reader, Writer};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `STATE_FD,IMAGE_FD`: set by the previous image for the next one, and only for it.
pub const STATE_VAR: &str = "SERVER_STARTER_UPGRADE_STATE";
/// Set by the previous image when the new one is a script: the descriptor of the
/// script, which its interpreter read, and the new image closes.
pub const SCRIPT_VAR: &str = "SERVER_STARTER_UPGRADE_SCRIPT_FD";
/// Set by a new image that could not restore the state, for the previous image it
/// goes back to: why.
pub const REFUSED_VAR: &str = "SERVER_STARTER_UPGRADE_REFUSED";
/// A test hook, documented in start_server(1): a new image started with it set
/// refuses the state it is handed, as one that cannot read it would, so that the way
/// back can be tested with the same build on both sides.
pub const TEST_REFUSE_VAR: &str = "SERVER_STARTER_UPGRADE_TEST_REFUSE";

/// A larger state is not one start_server wrote.
const STATE_MAX: usize = 64 << 20;

/// What an upgrade hands over besides the supervisor's own state: what `main` set up.
pub struct Context<'a> {
    pub listeners: &'a Listeners,
    pub pid_file: Option<&'a PidFile>,
}

/// The path this image was executed by, as given (made absolute): a symbolic link
/// stays one, followed when an upgrade opens it, so that a deploy that switches a link
/// (`current -> v2`) is upgraded to. Where that was an open file rather than a path
/// (fexecve), the file's own path, which /proc/self/exe says; `None` if not known.
pub fn own_exe() -> Option<PathBuf> {
    let given = sys::exec_path()
        .map(PathBuf::from)
        .filter(|p| !p.starts_with("/dev/fd") && !p.starts_with("/proc"))
        .and_then(|p| std::path::absolute(p).ok());
    given.or_else(|| {
        std::fs::read_link("/proc/self/exe").ok().map(|path| {
            // Replaced at its path since it was executed: the path is still where the
            // next binary will be.
            let bytes = path.into_os_string().into_vec();
            let bytes = bytes.strip_suffix(b" (deleted)").unwrap_or(&bytes);
            PathBuf::from(OsString::from_vec(bytes.to_vec()))
        })
    })
}

/// What `main` set up, as it crosses the exec: the version that writes the state, the
/// sockets, the pid file, the log.
struct Setup {
    version: String,
    listeners: Vec<Taken>,
    pid_file: Option<(RawFd, PathBuf, bool)>,
    log: Option<Log>,
}

record!(Setup {
    version,
    listeners,
    pid_file,
    log
});

/// A listening socket: its name, descriptor, whether it was adopted (and its
/// LISTEN_FDNAMES name), the socket file start_server created.
struct Taken {
    name: String,
    fd: RawFd,
    adopted: bool,
    fdname: Option<String>,
    file: Option<(PathBuf, u64, u64)>,
}

persist!(Taken {
    name,
    fd,
    adopted,
    fdname,
    file
});

/// The log: a file (descriptor, path), or a pipe to a command (`--log-file` as given,
/// and the pipe's own state).
enum Log {
    File(RawFd, String),
    Pipe(String, log_pipe::Handover),
}

persist!(Handover {
    command,
    read,
    write,
    own,
    output,
    logger,
    restart_at,
    pause,
    redirected,
});

impl Persist for Log {
    fn put(&self, out: &mut Vec<Field>) {
        match self {
            Log::File(fd, path) => {
                out.push(Field::text("file"));
                (*fd, path.clone()).put(out);
            }
            Log::Pipe(spec, handover) => {
                out.push(Field::text("pipe"));
                spec.put(out);
                handover.put(out);
            }
        }
    }
    fn take(c: &mut Cursor) -> Result<Self, String> {
        match String::take(c)?.as_str() {
            "file" => Ok(Log::File(Persist::take(c)?, Persist::take(c)?)),
            "pipe" => Ok(Log::Pipe(Persist::take(c)?, Persist::take(c)?)),
            other => Err(format!("log: {other:?} is neither file nor pipe")),
        }
    }
}

/// The records of what `main` set up.
pub fn save(w: &mut Writer, context: &Context, log_file: Option<&LogFile>) {
    let listeners = context.listeners.iter().map(|listener| Taken {
        name: listener.name.clone(),
        fd: listener.fd,
        adopted: listener.adopted,
        fdname: listener.fdname.clone(),
        file: listener.unix_file(),
    });
    let pid_file = context.pid_file.map(|pid_file| {
        let (fd, path, ours) = pid_file.handover();
        (fd, path.to_path_buf(), ours)
    });
    let log = log_file.map(|log_file| match log_file {
        LogFile::File { file, path } => Log::File(file.as_raw_fd(), path.clone()),
        LogFile::Pipe { pipe, spec } => Log::Pipe(spec.clone(), pipe.handover()),
    });
    let setup = Setup {
        version: VERSION.to_string(),
        listeners: listeners.collect(),
        pid_file,
        log,
    };
    setup.save(w);
}

/// The descriptors of the log, which the next image needs.
pub fn log_fds(log_file: &LogFile) -> Vec<RawFd> {
    match log_file {
        LogFile::File { file, .. } => vec![file.as_raw_fd()],
        LogFile::Pipe { pipe, .. } => pipe.handover().fds(),
    }
}

/// `SERVER_STARTER_UPGRADE_STATE`, if this image was started by an upgrade: taken out
/// of the environment at once, so that no worker ever sees it.
pub fn handed_over() -> Option<OsString> {
    let value = std::env::var_os(STATE_VAR)?;
    std::env::remove_var(STATE_VAR);
    Some(value)
}

/// For `map_err`: an error of the system call `name`, saying which one failed (a
/// refused upgrade names the call, not only the errno).
pub fn call(name: &'static str) -> impl Fn(std::io::Error) -> String {
    move |e| format!("{name}: {e}")
}

fn take_var(key: &str) -> Option<String> {
    let value = std::env::var_os(key)?;
    std::env::remove_var(key);
    Some(value.to_string_lossy().into_owned())
}

/// What `main` set up, taken over from the previous image, and the rest of the state
/// (the supervisor's), read by the caller's `read`.
pub struct Resumed<T> {
    /// The version that wrote the state.
    pub from: String,
    pub listeners: Listeners,
    pub pid_file: Option<PidFile>,
    pub log_file: Option<LogFile>,
    pub rest: T,
    pub events: Events,
    /// Set when this is the previous image, back after the new one refused the state:
    /// why.
    pub refused: Option<String>,
}

/// The new image: reads the state whole (`read` the supervisor's part, which names
/// `descriptors`), checks it, then takes over what `main` set up; or, unable to, goes
/// back to the previous image. The caller then supervises, as `main` does after its
/// set-up.
pub fn resume<T>(
    handed: OsString,
    read: impl FnOnce(&mut Reader) -> Result<T, String>,
    descriptors: impl FnOnce(&T) -> Vec<(RawFd, &'static str)>,
) -> Result<Resumed<T>, String> {
    // Before the first line: stderr may be the log pipe, full (see log.rs).
    crate::log::follow_stderr();
    let refused = take_var(REFUSED_VAR);
    if let Some(fd) = take_var(SCRIPT_VAR).and_then(|fd| fd.parse::<RawFd>().ok()) {
        // Not one of the state's descriptors, nor stdio: those the state names are
        // checked for being what it says, a script being none of them.
        if fd > libc::STDERR_FILENO && sys::file_type(fd).ok() == Some(libc::S_IFREG) {
            drop(sys::take_inherited_fd(fd));
        }
    }
    let test_refuse = take_var(TEST_REFUSE_VAR).is_some_and(|v| !v.is_empty());
    let handed = handed.to_string_lossy().into_owned();
    let fds = handed
        .split_once(',')
        .and_then(|(state, image)| Some((state.parse().ok()?, image.parse().ok()?)));
    let Some((state_fd, image_fd)) = fds else {
        return Err(format!("{STATE_VAR}={handed:?}: not STATE_FD,IMAGE_FD"));
    };
    // Not an upgrade's (the variable set by mistake): nothing to go back to.
    for fd in [state_fd, image_fd] {
        if let Err(e) = sys::file_type(fd) {
            return Err(format!("{STATE_VAR}={handed:?}: descriptor {fd}: {e}"));
        }
    }
    let plan = match test_refuse {
        true => Err(format!("{TEST_REFUSE_VAR} is set (a test hook)")),
        false => Plan::read(state_fd, image_fd, read, descriptors),
    };
    match plan {
        Ok(plan) => plan.take_over(state_fd, image_fd, refused),
        Err(why) => Err(go_back(image_fd, &handed, &why, refused)),
    }
}

/// A new image that cannot restore the state executes the previous one, which wrote it.
/// If this is that previous image already (`refused` says why the new one gave up),
/// there is nothing to go back to: start_server exits, and the kernel sends each worker
/// its parent-death signal (`--signal-on-term`), so that none is left unsupervised.
fn go_back(image: RawFd, handed: &str, why: &str, refused: Option<String>) -> String {
    if let Some(first) = refused {
        return format!(
            "cannot restore the state handed back after a failed upgrade ({first}): {why}; \
             exiting (the workers get their parent-death signal)"
        );
    }
    log!("start_server {VERSION} cannot restore the state it was handed: {why}; going back to the previous image");
    let why = format!("the new image ({VERSION}) could not restore the state: {why}");
    let e = exec::back(image, handed, &why);
    format!(
        "cannot go back to the previous image: execveat(2): {e}; exiting (the workers get their \
         parent-death signal)"
    )
}

/// The `--backlog` of the command line, which the next image is executed with
/// unchanged (the state does not carry it).
fn backlog() -> i32 {
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .filter_map(|a| a.into_string().ok())
        .collect();
    match crate::cli::parse(&args) {
        Ok(crate::cli::Mode::Start(config)) => config.backlog,
        _ => libc::SOMAXCONN,
    }
}

/// A state read and checked whole, its descriptors not yet taken over: until then,
/// going back to the previous image leaves everything as it was handed.
struct Plan<T> {
    from: String,
    listeners: Vec<Listener>,
    pid_file: Option<(RawFd, PathBuf, bool)>,
    log_file: Option<Log>,
    rest: T,
    events: Events,
}

impl<T> Plan<T> {
    fn read(
        state_fd: RawFd,
        image_fd: RawFd,
        read: impl FnOnce(&mut Reader) -> Result<T, String>,
        descriptors: impl FnOnce(&T) -> Vec<(RawFd, &'static str)>,
    ) -> Result<Plan<T>, String> {
        let bytes = sys::read_whole(state_fd, STATE_MAX)
            .map_err(|e| format!("cannot read the state (descriptor {state_fd}): pread(2): {e}"))?;
        let mut r = Reader::parse(&bytes)?;
        let Setup {
            version: from,
            listeners,
            pid_file,
            log: log_file,
        } = Setup::read(&mut r)?;
        let listeners: Vec<Listener> = listeners
            .into_iter()
            .map(|l| Listener::taken_over(l.name, l.fd, l.adopted, l.fdname, l.file))
            .collect();
        let rest = read(&mut r)?;
        r.finish()?;

        let socket = Some(libc::S_IFSOCK);
        let mut fds = vec![
            (state_fd, "the state", None),
            (image_fd, "the previous image", None),
        ];
        fds.extend(
            listeners
                .iter()
                .map(|l| (l.fd, "a listening socket", socket)),
        );
        fds.extend(
            pid_file
                .iter()
                .map(|p| (p.0, "the pid file", Some(libc::S_IFREG))),
        );
        let log_fds = match &log_file {
            Some(Log::File(fd, _)) => vec![*fd],
            Some(Log::Pipe(_, h)) => h.fds(),
            None => Vec::new(),
        };
        fds.extend(log_fds.into_iter().map(|fd| (fd, "the log", None)));
        fds.extend(
            descriptors(&rest)
                .into_iter()
                .map(|(fd, what)| (fd, what, socket)),
        );
        for (i, &(fd, what, kind)) in fds.iter().enumerate() {
            let found = sys::file_type(fd)
                .map_err(|e| format!("{what} (descriptor {fd}): fstat(2): {e}"))?;
            if kind.is_some_and(|kind| kind != found) {
                return Err(format!("{what} (descriptor {fd}) is not one"));
            }
            if let Some((_, other, _)) = fds[..i].iter().find(|f| f.0 == fd) {
                return Err(format!("descriptor {fd} is both {other} and {what}"));
            }
        }
        signals::block().map_err(|e| format!("failed to block signals: {e}"))?;
        let events = Events::new().map_err(|e| format!("failed to create a signalfd: {e}"))?;
        Ok(Plan {
            from,
            listeners,
            pid_file,
            log_file,
            rest,
            events,
        })
    }

    /// Takes the descriptors over (close-on-exec again, as the previous image had
    /// them).
    fn take_over(
        self,
        state_fd: RawFd,
        image_fd: RawFd,
        refused: Option<String>,
    ) -> Result<Resumed<T>, String> {
        // Every descriptor is taken over by fcntl(F_SETFD), close-on-exec again.
        let fail = |e: std::io::Error| format!("taking the state over failed: fcntl(2): {e}");
        // Read: no longer needed, nor the way back.
        drop(sys::adopt_fd(state_fd));
        drop(sys::adopt_fd(image_fd));
        let listeners = Listeners::taken_over(self.listeners, backlog());
        let pid_file = match self.pid_file {
            Some((fd, path, ours)) => Some(PidFile::taken_over(
                sys::adopt_fd(fd).map_err(fail)?,
                path,
                ours,
            )),
            None => None,
        };
        let log_file = match self.log_file {
            Some(Log::File(fd, path)) => {
                let file = std::fs::File::from(sys::adopt_fd(fd).map_err(fail)?);
                Some(LogFile::File { file, path })
            }
            Some(Log::Pipe(spec, handover)) => {
                let pipe = LogPipe::taken_over(handover).map_err(fail)?;
                Some(LogFile::Pipe { pipe, spec })
            }
            None => None,
        };
        Ok(Resumed {
            from: self.from,
            listeners,
            pid_file,
            log_file,
            rest: self.rest,
            events: self.events,
            refused,
        })
    }
}
