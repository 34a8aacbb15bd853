//! The executor: everything of the supervisor that touches the system. It owns the
//! descriptors (the workers' notification sockets, by pid; the control socket; the
//! upgrade check's pipe), the status file, the service manager, the log, the server
//! command; it carries out `step`'s effects, and turns what they return (a spawn, a
//! check, an exec that failed) into events fed to `step` at once. The event sources
//! (`reap`, `notifications`, `requests`) read what the one event wait found.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::{OwnedFd, RawFd};
use std::time::Instant;

use crate::build_id;
use crate::control_socket::{self, ControlSocket};
use crate::daemon::{self, Daemon};
use crate::envdir;
use crate::listen_fds::WorkerVars;
use crate::listening::{self, Probe};
use crate::log;
use crate::log_file::LogFile;
use crate::manager::Manager;
use crate::notify::{Channel, Said};
use crate::spawn::Command;
use crate::status_file::StatusFile;
use crate::sys::{self, Pid, SockAddr};
use crate::throttle::Throttle;
use crate::tree::Trees;
use crate::upgrade::check::Check;
use crate::upgrade::state::Writer;
use crate::upgrade::{self as up, Context, VERSION};

use super::effect::{Effect, Report, Spawned, Tell};
use super::event::Event;
use super::record::Services;
use super::report;
use super::state::{Client, Exe, FileId, Mono, Place, Ready, State};
use super::step::step;

/// The variables `Command::export_own_pid` is given, which an upgrade's state names.
const OWN_PID_VARS: [&str; 2] = ["LISTEN_PID", "WATCHDOG_PID"];

pub struct Executor<'a> {
    command: Command,
    /// The value of SERVER_STARTER_PORT.
    port_env: String,
    /// systemd's variables for the workers (`--listen-fds`).
    listen_vars: WorkerVars,
    status_file: Option<StatusFile>,
    log_file: Option<&'a mut LogFile>,
    /// Where `--restart` and `--upgrade` clients ask (with `--pid-file`).
    control: Option<ControlSocket>,
    /// The notification sockets of the workers (`--ready=notify`, `--watchdog`).
    channels: BTreeMap<Pid, Channel>,
    /// What other processes may cost through the notification and control sockets.
    throttle: Throttle,
    /// The service manager start_server reports to, if any.
    manager: Option<Manager>,
    /// The upgrade check running, and, once it has passed, the file it checked, open:
    /// the one executed, whatever is put at the path meanwhile.
    check: Option<Check>,
    checked: Option<OwnedFd>,
    /// `--daemonize`'s launcher, waiting to hear how generation 1 went.
    launcher: Option<Daemon>,
    /// What an upgrade in place hands over besides the state and the services.
    context: Context<'a>,
    /// Each worker's process tree.
    trees: Trees,
    /// `Effect::Exit` or `Effect::GiveUp` was carried out: the loop ends with this turn,
    /// with the error given up with, if any.
    pub exited: bool,
    pub fatal: Option<String>,
}

impl<'a> Executor<'a> {
    // Each is one thing `main` set up, in its order (the manager before the logger is
    // spawned, see `Manager::from_environment`); a struct of them would only rename them.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        command: Command,
        port_env: String,
        listen_vars: WorkerVars,
        status_file: Option<StatusFile>,
        log_file: Option<&'a mut LogFile>,
        control: Option<ControlSocket>,
        manager: Option<Manager>,
        launcher: Option<Daemon>,
        context: Context<'a>,
        trees: Trees,
    ) -> Executor<'a> {
        Executor {
            command,
            port_env,
            listen_vars,
            status_file,
            log_file,
            control,
            channels: BTreeMap::new(),
            throttle: Throttle::default(),
            manager,
            check: None,
            checked: None,
            launcher,
            context,
            trees,
            exited: false,
            fatal: None,
        }
    }

    pub fn has_launcher(&self) -> bool {
        self.launcher.is_some()
    }

    /// start_server gives up with `why`: the launcher, if still waiting, says so too.
    pub fn give_up(&mut self, why: String) -> String {
        if let Some(launcher) = self.launcher.take() {
            launcher.failed(daemon::GAVE_UP, &why);
        }
        why
    }

    /// Steps `state` through `event`, carrying out the effects in order; an effect's
    /// answer is stepped through at once, before the next effect.
    pub fn feed(&mut self, state: &mut State, event: Event) {
        if let Event::Exited { pid, .. } = event {
            self.tree_exited(state, pid);
        }
        for effect in step(state, event, now()) {
            if let Some(answer) = self.execute(state, effect) {
                self.feed(state, answer);
            }
        }
    }

    fn execute(&mut self, state: &State, effect: Effect) -> Option<Event> {
        match effect {
            Effect::Log(line) => log::write_line(&line),
            // Nothing more is started once start_server gives up.
            Effect::Spawn { .. } if self.fatal.is_some() => {}
            Effect::Spawn {
                generation,
                tunables,
                place,
            } => return Some(self.spawn(state, generation, tunables, place)),
            Effect::Probe { pid } => {
                let probe = self.probe(pid);
                return Some(Event::Probed { pid, probe });
            }
            Effect::Signal { pid, signal } => {
                if let Err(e) = sys::kill(pid, signal.number) {
                    log!(event "signal-failed", "failed to send {} to worker {pid}: {e}", signal.name);
                }
            }
            Effect::SignalTree { worker, signal } => self.trees.signal(worker, signal.number),
            Effect::Survey => self.trees.survey(),
            Effect::WriteStatus(workers) => {
                if let Some(status_file) = &mut self.status_file {
                    if let Err(e) = status_file.write(&workers) {
                        log!(event "status-file-failed", "{e}");
                    }
                }
            }
            Effect::Reply { to, text } => self.reply(&to, &text),
            Effect::Status { to, json } => {
                let (serving, report) = report::render(state, now(), &self.facts(state), json);
                let head = match serving {
                    true => control_socket::SERVING,
                    false => control_socket::NOT_SERVING,
                };
                self.reply(&to, &format!("{head}\n{report}"));
            }
            Effect::Manager(tell) => match (&self.manager, tell) {
                (None, _) => {}
                (Some(manager), Tell::Ready(status)) => manager.ready(&status),
                (Some(manager), Tell::Reloading(status)) => manager.reloading(&status),
                (Some(manager), Tell::Stopping) => manager.stopping(),
            },
            Effect::ReopenLog => match &mut self.log_file {
                Some(log_file) => log_file.reopen(),
                None => {
                    log!(event "log-reopen", "received USR1, but there is no --log-file to reopen")
                }
            },
            Effect::SpawnCheck => {
                let exe = state.config.exe.clone().unwrap_or_default();
                // Opened once, following a symbolic link now: the file checked is the
                // one executed.
                let spawned = up::exec::open(&exe)
                    .map_err(|e| format!("cannot open it: open(2): {e}"))
                    .and_then(|image| Check::spawn(&exe, image));
                return Some(Event::CheckSpawned(spawned.map(|check| {
                    self.check = Some(check);
                })));
            }
            Effect::KillCheck { forget } => {
                if let Some(check) = &mut self.check {
                    check.kill();
                }
                if forget {
                    self.check = None;
                }
            }
            Effect::Exec { version } => return Some(Event::ExecFailed(self.exec(state, &version))),
            Effect::Launcher(report) => match (self.launcher.take(), report) {
                (None, _) => {}
                (Some(launcher), Report::Started) => launcher.started(),
                (Some(launcher), Report::Failed { generation, why }) => launcher.failed(
                    daemon::FAILED_START,
                    &format!(
                        "generation {generation} failed to start: {why}; start_server (pid {}) \
                         goes on trying (see its log file; --stop stops it)",
                        std::process::id()
                    ),
                ),
            },
            Effect::GiveUp(why) => {
                self.exited = true;
                self.fatal = Some(why);
            }
            Effect::Exit => {
                self.exited = true;
                if let Some(status_file) = &self.status_file {
                    status_file.remove();
                }
            }
        }
        None
    }

    /// A client that has gone away, or reads nothing, is no error: an answer is sent
    /// without waiting, or lost.
    fn reply(&self, to: &Client, text: &str) {
        if let (Some(control), Some(to)) = (&self.control, SockAddr::from_bytes(&to.0)) {
            let _ = control.reply(&to, text);
        }
    }

    /// What `--status` needs besides the state: the time of day, the build, and each
    /// worker's executable as it is on disk now.
    fn facts(&self, state: &State) -> report::Facts<'static> {
        let exes = state.origins.iter();
        let exes = exes.filter_map(|origin| origin.exe.as_ref().map(|exe| (origin.pid, exe)));
        let changed = exes.map(|(pid, exe)| {
            let now = file_id(&exe.path);
            let changed = now.zip(exe.file).map(|(now, then)| now != then);
            (pid, changed)
        });
        report::Facts {
            pid: std::process::id() as Pid,
            version: VERSION,
            build: build_id::id(),
            wall: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default(),
            changed: changed.collect(),
            left: state
                .leftovers
                .iter()
                .map(|l| (l.worker, self.trees.left(l.worker)))
                .collect(),
        }
    }

    /// Forks and execs a worker of `generation`, with start_server's environment
    /// (--envdir read again) plus the variables of the protocol.
    fn spawn(
        &mut self,
        state: &State,
        generation: u64,
        previous: envdir::Tunables,
        place: Place,
    ) -> Event {
        let mut env = envdir::current();
        let tunables = match envdir::tunables(&env) {
            Ok(tunables) => Some(tunables),
            Err(e) => {
                let line = log::Line::new(
                    "envdir-unreadable",
                    format!("{e}; keeping the previous settings"),
                );
                log::write_line(&line.level(log::Level::Warning).generation(generation));
                None
            }
        };
        // The service manager's variables are start_server's, never a worker's: its own
        // notification socket and watchdog, if any, are not the worker's to use.
        const OURS: [&str; 5] = [
            "SERVER_STARTER_PORT",
            "SERVER_STARTER_GENERATION",
            "NOTIFY_SOCKET",
            "WATCHDOG_USEC",
            "WATCHDOG_PID",
        ];
        env.retain(|(k, _)| !OURS.iter().any(|ours| k == ours));
        self.listen_vars.apply(&mut env);
        // The original exports its `||= 360` default too (from the second generation
        // on); workers see the interval in force from the first.
        if let Some(interval) = tunables.unwrap_or(previous).auto_restart {
            env.retain(|(k, _)| k != "AUTO_RESTART_INTERVAL");
            let interval = log::seconds(interval).into();
            env.push(("AUTO_RESTART_INTERVAL".into(), interval));
        }
        env.push(("SERVER_STARTER_PORT".into(), self.port_env.clone().into()));
        let generation_number = generation;
        let generation = generation.to_string().into();
        env.push(("SERVER_STARTER_GENERATION".into(), generation));
        let config = &state.config;
        if config.name_slots {
            env.retain(|(k, _)| k != "SERVER_STARTER_WORKER");
            let slot = (place.slot() + 1).to_string();
            env.push(("SERVER_STARTER_WORKER".into(), slot.into()));
        }
        // A worker's own notification socket, when it needs one.
        let channel = match config.ready == Ready::Notify || config.watchdog.is_some() {
            true => match Channel::new() {
                Ok(channel) => Some(channel),
                Err(e) => {
                    let spawned = Spawned::NoChannel(e.to_string());
                    return Event::Spawned {
                        place,
                        tunables,
                        spawned,
                    };
                }
            },
            false => None,
        };
        if let Some(channel) = &channel {
            env.push(("NOTIFY_SOCKET".into(), channel.address().into()));
        }
        if let Some(watchdog) = config.watchdog {
            let usec = watchdog.as_micros().to_string().into();
            env.push(("WATCHDOG_USEC".into(), usec));
        }
        // A listener a worker shut down is listened on again, for this generation.
        self.context.listeners.relisten();
        // Before the fork: what a deploy replaces after it is another file.
        let exe = self.command.program_file(&env).map(|path| Exe {
            file: file_id(&path),
            path,
        });
        let tree = match self.trees.place(generation_number) {
            Ok(tree) => tree,
            Err(e) => {
                let spawned = Spawned::Failed(e);
                return Event::Spawned {
                    place,
                    tunables,
                    spawned,
                };
            }
        };
        let spawned = self.command.spawn(&env, tree);
        let pid = spawned.as_ref().ok().map(|child| child.pid);
        self.trees.spawned(pid, generation_number);
        let spawned = match spawned {
            Ok(child) => {
                if let Some(channel) = channel {
                    self.channels.insert(child.pid, channel);
                }
                Spawned::Child {
                    pid: child.pid,
                    exec_error: child.exec_error,
                    unexecutable: child.unexecutable,
                    exe,
                }
            }
            Err(e) => Spawned::Failed(e.to_string()),
        };
        Event::Spawned {
            place,
            tunables,
            spawned,
        }
    }

    /// `--ready=listening`: whether worker `pid`, or a process below it, waits for
    /// connections on one of the listeners (known by their sockets' inodes).
    fn probe(&self, pid: Pid) -> Probe {
        let listeners: Vec<u64> = self
            .context
            .listeners
            .iter()
            .filter_map(|l| sys::inode(l.fd).ok())
            .collect();
        let mut tree = vec![pid];
        tree.extend(sys::descendants(pid));
        listening::probe(&tree, &listeners, &listening::Proc)
    }

    // ------------------------------------------------------------ event sources

    /// The next child that exited, if any: the upgrade check's exit is its verdict; the
    /// logger of `--log-file="| cmd"` is restarted by the log.
    pub fn reap(&mut self) -> Option<Event> {
        loop {
            let (pid, status) = match sys::reap_one() {
                Ok(Some(exited)) => exited,
                Ok(None) => return None,
                Err(e) => {
                    log!("waitpid(2) failed: {e}");
                    return None;
                }
            };
            if let Some(mut check) = self.check.take_if(|c| c.pid == pid) {
                let verdict = check.verdict(status).map(|answer| match answer.build {
                    Some(build) => format!("{} (build {build})", answer.version),
                    None => answer.version,
                });
                // Kept only for the exec: a refused file is closed before anyone is told.
                self.checked = verdict.is_ok().then(|| check.image.take()).flatten();
                // Closed before anyone is told: nothing of the check outlives it.
                drop(check);
                return Some(Event::Checked(verdict));
            }
            if let Some(log_file) = self.log_file.as_deref_mut() {
                if log_file.child_exited(pid, status) {
                    continue;
                }
            }
            self.channels.remove(&pid);
            return Some(Event::Exited { pid, status });
        }
    }

    /// A child exited: a worker whose tree is not empty is said to leave processes
    /// (before its exit is stepped); any other child is an orphan whose exit may be
    /// the last of what a worker left (in cgroup mode, the watch says so too).
    fn tree_exited(&mut self, state: &mut State, pid: Pid) {
        let known = workers_of(state).any(|w| w == pid);
        match self.trees.exited(pid, state.stopping()) {
            Some(pids) => self.feed(state, Event::Remains { worker: pid, pids }),
            None if !known => {
                for worker in self.trees.gone() {
                    self.feed(state, Event::TreeGone { worker });
                }
            }
            None => {}
        }
    }

    /// In cgroup mode, when the watch on the `cgroup.events` files is readable: the
    /// trees left behind that are now empty.
    pub fn trees_gone(&mut self, readable: &[RawFd]) -> Vec<Event> {
        match self.trees.fd() {
            Some(fd) if readable.contains(&fd) => self
                .trees
                .gone()
                .into_iter()
                .map(|worker| Event::TreeGone { worker })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Messages on the workers' notification sockets found readable.
    pub fn notifications(&mut self, readable: &[RawFd]) -> Vec<Event> {
        let workers: Vec<Pid> = self.channels.keys().copied().collect();
        let mut events = Vec::new();
        for (&pid, channel) in &self.channels {
            if !readable.contains(&channel.fd()) {
                continue;
            }
            for mut notice in channel.drain(pid, &workers, &mut self.throttle) {
                // A status first, so that the log reads in order of what happened.
                notice
                    .said
                    .sort_by_key(|said| !matches!(said, Said::Status(_)));
                events.extend(notice.said.into_iter().map(|said| Event::Notified {
                    pid,
                    sender: notice.sender,
                    said,
                }));
            }
        }
        events
    }

    /// The control socket's requests, if it was found readable.
    pub fn requests(&mut self, readable: &[RawFd]) -> Vec<Event> {
        let requests = match &self.control {
            Some(control) if readable.contains(&control.fd()) => {
                control.requests(&mut self.throttle)
            }
            _ => return Vec::new(),
        };
        requests
            .into_iter()
            .map(|request| Event::Request {
                pid: request.pid,
                from: Client(request.from.to_bytes()),
                ask: request.ask,
            })
            .collect()
    }

    /// The descriptors the event wait watches besides the signals (those the throttle
    /// has not set aside for now).
    pub fn watched(&self) -> Vec<RawFd> {
        let channels = self.channels.values().map(Channel::fd);
        channels
            .chain(self.control.as_ref().map(ControlSocket::fd))
            .chain(self.trees.fd())
            .filter(|&fd| self.throttle.watched(fd))
            .collect()
    }

    /// The executor's own next deadline: the throttle's, a dead logger's restart.
    pub fn deadline(&self) -> Option<Instant> {
        let logger = self.log_file.as_deref().and_then(LogFile::restart_at);
        logger.into_iter().chain(self.throttle.resume_at()).min()
    }

    /// At the end of a turn, before the state's deadlines: the executor's own.
    pub fn fire_timers(&mut self) {
        self.throttle.tick(Instant::now());
        if let Some(log_file) = self.log_file.as_deref_mut() {
            log_file.fire_timers(Instant::now());
        }
    }

    // ------------------------------------------------------------ upgrade in place

    /// Executes the binary that passed its check, handing it the state: returns only
    /// if that could not be done, with why.
    fn exec(&mut self, state: &State, version: &str) -> String {
        let exe = state.config.exe.clone().unwrap_or_default();
        let Some(image) = self.checked.take() else {
            return "the checked file was not kept open".into();
        };
        let text = format!(
            "upgrading from {} to {version} ({})",
            build_id::identity(),
            exe.display()
        );
        let line = log::Line::new("upgrading", text)
            .text_field("from_version", VERSION)
            .text_field("from_build", build_id::id())
            .text_field("to", version)
            .text_field("path", exe.display().to_string());
        log::write_line(&line);
        let mut w = Writer::new();
        up::save(&mut w, &self.context, self.log_file.as_deref());
        state.save(&mut w);
        self.services().save(&mut w);
        up::exec::exec(&image, &w.finish(), &self.kept_fds())
    }

    /// The descriptors of the supervisor's own that the next image needs.
    fn kept_fds(&self) -> Vec<RawFd> {
        let pid_file = self.context.pid_file.map(|p| p.handover().0);
        let log_file = self.log_file.as_deref().map(up::log_fds);
        let control = self.control.as_ref().map(ControlSocket::fd);
        let channels = self.channels.values().map(Channel::fd);
        pid_file
            .into_iter()
            .chain(log_file.unwrap_or_default())
            .chain(control)
            .chain(channels)
            .collect()
    }

    /// What of the executor crosses an exec, as plain data.
    fn services(&self) -> Services {
        let Executor {
            command,
            port_env,
            listen_vars,
            status_file,
            log_file: _,
            control,
            channels,
            // Rates start over in the next image.
            throttle: _,
            manager,
            check: _,
            checked: _,
            // A launcher's pipe does not survive the exec (close-on-exec).
            launcher: _,
            context: _,
            trees,
            exited: _,
            fatal: _,
        } = self;
        let (argv, dir, own_pid_vars) = command.handover();
        let (listen_strip, listen_set) = listen_vars.handover();
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        let (cgroups, trees) = trees.handover();
        Services {
            argv: argv.into_iter().map(text).collect(),
            dir: dir.map(|d| OsString::from(std::ffi::OsStr::from_bytes(d)).into()),
            own_pid_vars: own_pid_vars.iter().map(|v| v.to_string()).collect(),
            port_env: port_env.clone(),
            listen_strip,
            listen_set: listen_set.to_vec(),
            status_file: status_file.as_ref().map(|s| {
                let (path, created) = s.handover();
                (path.to_path_buf(), created)
            }),
            control: control.as_ref().map(ControlSocket::fd),
            channels: channels
                .iter()
                .map(|(&pid, c)| (pid, c.fd(), c.address().to_string()))
                .collect(),
            manager: manager.as_ref().map(|m| m.socket().to_owned()),
            cgroups,
            trees,
        }
    }

    /// The executor of the previous image, from its services, taking their
    /// descriptors over (checked open by the caller).
    pub fn resume(
        services: Services,
        signal_on_term: i32,
        log_file: Option<&'a mut LogFile>,
        context: Context<'a>,
    ) -> Result<Executor<'a>, String> {
        // Every descriptor is taken over by fcntl(F_SETFD), close-on-exec again.
        let fail = |e: io::Error| format!("taking the state over failed: fcntl(2): {e}");
        let mut command = Command::new(&services.argv, services.dir.as_deref(), signal_on_term)?;
        for name in &services.own_pid_vars {
            let known = OWN_PID_VARS.iter().find(|&&known| known == name);
            let name = known.ok_or_else(|| format!("own pid variable {name:?} is not known"))?;
            command.export_own_pid(name);
        }
        let control = match services.control {
            Some(fd) => Some(ControlSocket::taken_over(sys::adopt_fd(fd).map_err(fail)?)),
            None => None,
        };
        let mut channels = BTreeMap::new();
        for (pid, fd, address) in services.channels {
            let fd = sys::adopt_fd(fd).map_err(fail)?;
            channels.insert(pid, Channel::taken_over(fd, address));
        }
        let trees = Trees::taken_over(services.cgroups, services.trees)?;
        let mut executor = Executor::new(
            command,
            services.port_env,
            WorkerVars::taken_over(services.listen_strip, services.listen_set),
            services
                .status_file
                .map(|(path, created)| StatusFile::taken_over(path, created)),
            log_file,
            control,
            services.manager.map(Manager::taken_over),
            None,
            context,
            trees,
        );
        executor.channels = channels;
        Ok(executor)
    }
}

impl Services {
    /// The descriptors it names, with what each must be.
    pub fn descriptors(&self) -> Vec<(RawFd, &'static str)> {
        let control = self.control.map(|fd| (fd, "the control socket"));
        let channels = self
            .channels
            .iter()
            .map(|&(_, fd, _)| (fd, "a notification socket"));
        control.into_iter().chain(channels).collect()
    }
}

/// The identity of the file at `path` now (following a symbolic link), if it can be
/// read.
fn file_id(path: &std::path::Path) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    let mtime = (meta.mtime() as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(meta.mtime_nsec() as u64);
    Some(FileId {
        dev: meta.dev(),
        ino: meta.ino(),
        mtime,
    })
}

/// The supervisor's clock.
pub fn now() -> Mono {
    Mono(sys::monotonic_usec())
}

/// The pids of the workers `state` knows.
fn workers_of(state: &State) -> impl Iterator<Item = Pid> + '_ {
    let serving = state.serving().map(|(_, s)| s.worker.pid);
    let starting = state
        .attempts()
        .filter_map(|(_, a)| a.worker.map(|w| w.pid));
    serving.chain(starting).chain(state.old.keys().copied())
}
