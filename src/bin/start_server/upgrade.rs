//! Upgrading start_server in place: SIGUSR2 (or `start_server --upgrade`) replaces
//! the running image with the binary now at the path it was started from, in the same
//! process, keeping its pid, its children (the workers) and its descriptors (the
//! listening sockets, the locked pid file, the log), so that no worker notices and no
//! connection is refused.
//!
//! 1. `check`: the new binary is run once as `PATH --upgrade-check`, and must say its
//!    version and that it reads this version's state format. If not, no upgrade.
//! 2. `supervisor::upgrade`: the state (`state`'s format) is written to a memfd, and
//!    `exec` executes the new binary with the same command line and
//!    `SERVER_STARTER_UPGRADE_STATE=STATE_FD,IMAGE_FD` (the memfd, and the previous
//!    image opened read-only, for the way back).
//! 3. `resume`, in the new image, first thing: the variable leaves the environment (no
//!    worker ever sees it), the state is read and checked whole, then taken over; the
//!    supervisor goes on where the previous image left off. A new image that cannot
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
use crate::supervisor::{Saved, Supervisor};
use crate::sys;
use state::{Field, Reader, Writer};

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

/// What an upgrade hands over besides the supervisor's own state: the path of the
/// binary to execute and what `main` set up.
pub struct Context<'a> {
    /// The path start_server was started by, as given (made absolute): a symbolic link
    /// stays one, followed when an upgrade opens it, so that a deploy that switches a
    /// link (`current -> v2`) is upgraded to. `None` if it is not known.
    pub exe: Option<PathBuf>,
    pub listeners: &'a Listeners,
    pub pid_file: Option<&'a PidFile>,
}

impl<'a> Context<'a> {
    pub fn new(listeners: &'a Listeners, pid_file: Option<&'a PidFile>) -> Context<'a> {
        Context {
            exe: started_by(),
            listeners,
            pid_file,
        }
    }
}

/// The path this image was executed by; where that was an open file rather than a
/// path (fexecve), the file's own path, which /proc/self/exe says.
fn started_by() -> Option<PathBuf> {
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

/// The records of what `main` set up: the version that writes them, the path, the
/// sockets, the pid file, the log.
pub fn save(w: &mut Writer, context: &Context, log_file: Option<&LogFile>) {
    w.put("version", &[Field::text(VERSION)]);
    if let Some(exe) = &context.exe {
        w.put("exe", &[Field::bytes(exe.as_os_str().as_bytes())]);
    }
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

/// The new image: takes the state over and supervises on, as `main::start` would
/// after its set-up; or, unable to, goes back to the previous image.
pub fn resume(handed: OsString) -> Result<(), String> {
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
        false => Plan::read(state_fd, image_fd),
    };
    match plan {
        Ok(plan) => plan.run(state_fd, image_fd, refused),
        Err(why) => go_back(image_fd, &handed, &why, refused),
    }
}

/// A new image that cannot restore the state executes the previous one, which wrote it.
/// If this is that previous image already (`refused` says why the new one gave up),
/// there is nothing to go back to: start_server exits, and the kernel sends each worker
/// its parent-death signal (`--signal-on-term`), so that none is left unsupervised.
fn go_back(image: RawFd, handed: &str, why: &str, refused: Option<String>) -> Result<(), String> {
    if let Some(first) = refused {
        return Err(format!(
            "cannot restore the state handed back after a failed upgrade ({first}): {why}; \
             exiting (the workers get their parent-death signal)"
        ));
    }
    log!("start_server {VERSION} cannot restore the state it was handed: {why}; going back to the previous image");
    let why = format!("the new image ({VERSION}) could not restore the state: {why}");
    let e = exec::back(image, handed, &why);
    Err(format!(
        "cannot go back to the previous image: execveat(2): {e}; exiting (the workers get their \
         parent-death signal)"
    ))
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
struct Plan {
    from: String,
    exe: Option<PathBuf>,
    listeners: Vec<Listener>,
    pid_file: Option<(RawFd, PathBuf, bool)>,
    log_file: Option<Log>,
    saved: Saved,
    events: Events,
}

enum Log {
    File(RawFd, String),
    Pipe(String, log_pipe::Handover),
}

impl Plan {
    fn read(state_fd: RawFd, image_fd: RawFd) -> Result<Plan, String> {
        let bytes = sys::read_whole(state_fd, STATE_MAX)
            .map_err(|e| format!("cannot read the state (descriptor {state_fd}): pread(2): {e}"))?;
        let mut r = Reader::parse(&bytes)?;
        let from = r.one("version")?.expect(1)?.text(0)?;
        let exe = match r.maybe("exe")? {
            Some(f) => Some(PathBuf::from(OsString::from_vec(f.expect(1)?.bytes(0)?))),
            None => None,
        };
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
        let saved = Saved::read(&mut r)?;
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
            saved
                .descriptors()
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
            exe,
            listeners,
            pid_file,
            log_file,
            saved,
            events,
        })
    }

    /// Takes the descriptors over (close-on-exec again, as the previous image had
    /// them), then supervises.
    fn run(self, state_fd: RawFd, image_fd: RawFd, refused: Option<String>) -> Result<(), String> {
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
        let mut log_file = match self.log_file {
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
        let context = Context {
            exe: self.exe,
            listeners: &listeners,
            pid_file: pid_file.as_ref(),
        };
        let began = self.saved.began;
        let (mut supervisor, clients) =
            Supervisor::resume(self.saved, log_file.as_mut(), context).map_err(fail)?;
        sys::become_subreaper()
            .map_err(|e| format!("prctl(PR_SET_CHILD_SUBREAPER) failed: {e}"))?;
        let took = crate::log::millis(began.elapsed());
        match refused {
            None => {
                log!("upgraded from {} to {VERSION} in {took} ms", self.from);
                let text = format!("OK upgraded from {} to {VERSION} in {took} ms", self.from);
                supervisor.answer_upgrade(&clients, &text);
            }
            Some(why) => {
                log!("back to {VERSION}: {why}");
                supervisor.answer_upgrade(&clients, &format!("FAILED {why}"));
            }
        }
        let result = supervisor.run(&self.events);
        drop(supervisor);
        listeners.remove_socket_files();
        if let Some(log_file) = log_file {
            log_file.finish();
        }
        if let Some(pid_file) = pid_file {
            pid_file.release();
        }
        result
    }
}
