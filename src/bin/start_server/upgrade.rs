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
pub mod state;

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::PathBuf;

use crate::bind::{Listener, Listeners};
use crate::log_file::LogFile;
use crate::log_pipe::{self, LogPipe};
use crate::pid_file::PidFile;
use crate::signals::{self, Events};
use crate::sys;
use state::{Field, Reader, Writer};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `STATE_FD,IMAGE_FD`: set by the previous image for the next one, and only for it.
pub const STATE_VAR: &str = "SERVER_STARTER_UPGRADE_STATE";
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

/// The binary start_server was started from, resolved when it started; `None` if
/// /proc/self/exe could not be read.
pub fn own_exe() -> Option<PathBuf> {
    std::fs::read_link("/proc/self/exe").ok().map(|path| {
        // Replaced at its path since it was executed: the path is still where the next
        // binary will be.
        let bytes = path.into_os_string().into_vec();
        let bytes = bytes.strip_suffix(b" (deleted)").unwrap_or(&bytes);
        PathBuf::from(OsString::from_vec(bytes.to_vec()))
    })
}

/// The records of what `main` set up: the version that writes them, the sockets, the
/// pid file, the log.
pub fn save(w: &mut Writer, context: &Context, log_file: Option<&LogFile>) {
    w.put("version", &[Field::text(VERSION)]);
    for listener in context.listeners.iter() {
        let mut fields = vec![
            Field::text(&listener.name),
            Field::num(listener.fd),
            Field::flag(listener.adopted),
            listener
                .fdname
                .as_deref()
                .map_or_else(Field::none, Field::text),
        ];
        match listener.unix_file() {
            Some((path, dev, ino)) => fields.extend([
                Field::bytes(path.as_os_str().as_bytes()),
                Field::num(dev),
                Field::num(ino),
            ]),
            None => fields.extend([Field::none(), Field::none(), Field::none()]),
        }
        w.put("listener", &fields);
    }
    if let Some(pid_file) = context.pid_file {
        let (fd, path, ours) = pid_file.handover();
        let path = Field::bytes(path.as_os_str().as_bytes());
        w.put("pid-file", &[Field::num(fd), path, Field::flag(ours)]);
    }
    match log_file {
        Some(LogFile::File { file, path }) => w.put(
            "log-file",
            &[Field::num(file.as_raw_fd()), Field::text(path)],
        ),
        Some(LogFile::Pipe { pipe, spec }) => {
            w.put("log-pipe", &[Field::text(spec)]);
            let h = pipe.handover();
            let (out, err) = h.output.unzip();
            let (logger, started) = h.logger.unzip();
            w.put(
                "logger",
                &[
                    Field::text(&h.command),
                    Field::num(h.read),
                    Field::num(h.write),
                    h.own.map_or_else(Field::none, Field::num),
                    out.map_or_else(Field::none, Field::num),
                    err.map_or_else(Field::none, Field::num),
                    logger.map_or_else(Field::none, Field::num),
                    w.opt_instant(started),
                    w.opt_instant(h.restart_at),
                    Field::duration(h.pause),
                    Field::flag(h.redirected),
                ],
            );
        }
        None => {}
    }
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
    let refused = take_var(REFUSED_VAR);
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
        "cannot go back to the previous image: {e}; exiting (the workers get their \
         parent-death signal)"
    )
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

enum Log {
    File(RawFd, String),
    Pipe(String, log_pipe::Handover),
}

impl<T> Plan<T> {
    fn read(
        state_fd: RawFd,
        image_fd: RawFd,
        read: impl FnOnce(&mut Reader) -> Result<T, String>,
        descriptors: impl FnOnce(&T) -> Vec<(RawFd, &'static str)>,
    ) -> Result<Plan<T>, String> {
        let bytes = sys::read_whole(state_fd, STATE_MAX)
            .map_err(|e| format!("cannot read the state (descriptor {state_fd}): {e}"))?;
        let mut r = Reader::parse(&bytes)?;
        let from = r.one("version")?.expect(1)?.text(0)?;
        let mut listeners = Vec::new();
        for f in r.all("listener") {
            let f = f.expect(7)?;
            let fdname = match f.is_none(3) {
                true => None,
                false => Some(f.text(3)?),
            };
            let file = match f.is_none(4) {
                true => None,
                false => Some((
                    PathBuf::from(OsString::from_vec(f.bytes(4)?)),
                    f.num(5)?,
                    f.num(6)?,
                )),
            };
            let (name, fd, adopted) = (f.text(0)?, f.num(1)?, f.flag(2)?);
            listeners.push(Listener::taken_over(name, fd, adopted, fdname, file));
        }
        let pid_file = match r.maybe("pid-file")? {
            Some(f) => {
                let f = f.expect(3)?;
                let path = PathBuf::from(OsString::from_vec(f.bytes(1)?));
                Some((f.num(0)?, path, f.flag(2)?))
            }
            None => None,
        };
        let log_file = match (
            r.maybe("log-file")?,
            r.maybe("log-pipe")?,
            r.maybe("logger")?,
        ) {
            (Some(f), None, None) => {
                let f = f.expect(2)?;
                Some(Log::File(f.num(0)?, f.text(1)?))
            }
            (None, Some(spec), Some(f)) => {
                let f = f.expect(11)?;
                Some(Log::Pipe(
                    spec.expect(1)?.text(0)?,
                    log_pipe::Handover {
                        command: f.text(0)?,
                        read: f.num(1)?,
                        write: f.num(2)?,
                        own: f.opt_num(3)?,
                        output: f.opt_num(4)?.zip(f.opt_num(5)?),
                        logger: f.opt_num(6)?.zip(f.opt_instant(7)?),
                        restart_at: f.opt_instant(8)?,
                        pause: f.duration(9)?,
                        redirected: f.flag(10)?,
                    },
                ))
            }
            (None, None, None) => None,
            _ => return Err("the log records of the state do not go together".into()),
        };
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
            let found = sys::file_type(fd).map_err(|e| format!("{what} (descriptor {fd}): {e}"))?;
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
        let fail = |e: std::io::Error| format!("taking the state over failed: {e}");
        // Read: no longer needed, nor the way back.
        drop(sys::adopt_fd(state_fd));
        drop(sys::adopt_fd(image_fd));
        let listeners = Listeners::taken_over(self.listeners);
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
