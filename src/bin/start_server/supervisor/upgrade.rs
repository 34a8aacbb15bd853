//! Upgrading start_server in place: on USR2 (or an `--upgrade` client), the binary at
//! start_server's path is checked (`upgrade::check`, while the supervisor goes on);
//! once it has passed, at the end of that turn of the loop, the supervisor's state is
//! written (`save`) and the new binary executed in this process (`upgrade::exec`).
//! The new image reads the state back (`Saved::read`) and goes on with the same
//! workers, timers and clients (`Supervisor::resume`).

use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::io::OwnedFd;
use std::path::{Path, PathBuf};

use super::*;
use crate::listen_fds::WorkerVars;
use crate::upgrade::check::Check;
use crate::upgrade::state::{self, Field, Reader, Writer};
use crate::upgrade::{self as up, VERSION};

/// The variables `Command::export_own_pid` is given, which the state names.
const OWN_PID_VARS: [&str; 2] = ["LISTEN_PID", "WATCHDOG_PID"];

/// An upgrade under way.
pub(super) struct Upgrade {
    /// When it was asked for.
    began: Instant,
    /// The `--upgrade` clients waiting for the outcome.
    clients: Vec<SockAddr>,
    /// The check of the new binary, until it has passed; then the version it said,
    /// and the file it was, still open.
    check: Option<Check>,
    version: String,
    image: Option<OwnedFd>,
}

impl Supervisor<'_> {
    /// USR2 from `pid`, or an `--upgrade` client's request (`client`, from `pid`).
    pub(super) fn upgrade(&mut self, pid: Pid, client: Option<SockAddr>) {
        let who = match client {
            None => format!("received USR2 from pid {pid}"),
            Some(_) => format!("received an upgrade request from pid {pid}"),
        };
        if self.stopping {
            log!("{who}, but start_server is stopping");
            self.answer(client.as_slice(), "FAILED start_server is stopping");
            return;
        }
        if let Some(upgrade) = &mut self.upgrade {
            log!("{who}, joining the upgrade under way");
            upgrade.clients.extend(client);
            return;
        }
        let Some(exe) = self.context.exe.clone() else {
            log!("{who}, but the path of start_server's binary was not known at start");
            let why = "FAILED the path of start_server's binary is unknown";
            self.answer(client.as_slice(), why);
            return;
        };
        log!("{who}, checking {}", exe.display());
        // Opened once, following a symbolic link now: the file checked is the one
        // executed, whatever is put at the path meanwhile.
        let image = match up::exec::open(&exe) {
            Ok(image) => image,
            Err(e) => {
                self.refuse(client.as_slice(), &format!("cannot open it: open(2): {e}"));
                return;
            }
        };
        let check = match Check::spawn(&exe, image) {
            Ok(check) => check,
            Err(e) => {
                self.refuse(client.as_slice(), &e);
                return;
            }
        };
        self.upgrade = Some(Upgrade {
            began: Instant::now(),
            clients: client.into_iter().collect(),
            check: Some(check),
            version: String::new(),
            image: None,
        });
    }

    /// A child exited: whether it was the check, which then has its verdict.
    pub(super) fn checked(&mut self, pid: Pid, status: c_int) -> bool {
        let Some(upgrade) = &mut self.upgrade else {
            return false;
        };
        let Some(mut check) = upgrade.check.take_if(|c| c.pid == pid) else {
            return false;
        };
        let verdict = check.verdict(status);
        // Kept only for the exec: a refused file is closed before anyone is told.
        let image = verdict.is_ok().then(|| check.image.take()).flatten();
        // Closed before anyone is told: nothing of the check outlives it.
        drop(check);
        match verdict {
            // The exec comes at the end of this turn of the loop.
            Ok(answer) => {
                upgrade.version = answer.version;
                upgrade.image = image;
            }
            Err(why) => {
                let clients = std::mem::take(&mut upgrade.clients);
                self.upgrade = None;
                self.refuse(&clients, &why);
            }
        }
        true
    }

    pub(super) fn check_deadline(&self) -> Option<Instant> {
        let check = self.upgrade.as_ref()?.check.as_ref()?;
        (!check.killed).then_some(check.deadline)
    }

    /// A check that has not answered in time is killed; its exit is the refusal.
    pub(super) fn check_overdue(&mut self, now: Instant) {
        let check = self.upgrade.as_mut().and_then(|u| u.check.as_mut());
        if let Some(check) = check.filter(|c| !c.killed && c.deadline <= now) {
            check.kill();
        }
    }

    /// TERM while an upgrade is under way: no upgrade.
    pub(super) fn abandon_upgrade(&mut self, why: &str) {
        if let Some(mut upgrade) = self.upgrade.take() {
            if let Some(check) = &mut upgrade.check {
                check.kill();
            }
            self.refuse(&upgrade.clients, why);
        }
    }

    fn refuse(&self, clients: &[SockAddr], why: &str) {
        let exe = self.context.exe.as_deref().unwrap_or(Path::new("?"));
        log!("not upgrading to {}: {why}", exe.display());
        self.answer(clients, &format!("FAILED {why}"));
    }

    fn answer(&self, clients: &[SockAddr], text: &str) {
        if let Some(control) = &self.control {
            for client in clients {
                control.reply(client, text);
            }
        }
    }

    /// The end of a turn of the loop: a binary that passed its check is executed. Only
    /// if that fails does this return.
    pub(super) fn exec_upgrade(&mut self) {
        let Some(mut upgrade) = self.upgrade.take_if(|u| u.check.is_none()) else {
            return;
        };
        let exe = self.context.exe.clone().unwrap_or_default();
        let Some(image) = upgrade.image.take() else {
            self.refuse(&upgrade.clients, "the checked file was not kept open");
            return;
        };
        log!(
            "upgrading from {VERSION} to {} ({})",
            upgrade.version,
            exe.display()
        );
        let state = self.save(&upgrade);
        let why = up::exec::exec(&image, &state, &self.kept_fds());
        drop(image);
        self.refuse(&upgrade.clients, &why);
    }

    /// The descriptors of the supervisor's own that the next image needs.
    fn kept_fds(&self) -> Vec<RawFd> {
        let pid_file = self.context.pid_file.map(|p| p.handover().0);
        let log_file = self
            .log_file
            .as_deref()
            .map(up::log_fds)
            .unwrap_or_default();
        let control = self.control.as_ref().map(ControlSocket::fd);
        let channels = self.channels.values().map(Channel::fd);
        pid_file
            .into_iter()
            .chain(log_file)
            .chain(control)
            .chain(channels)
            .collect()
    }

    /// The state, as `Saved::read` reads it back.
    fn save(&self, upgrade: &Upgrade) -> String {
        let mut w = Writer::new();
        up::save(&mut w, &self.context, self.log_file.as_deref());
        w.put("began", &[w.instant(upgrade.began)]);
        for client in &upgrade.clients {
            w.put("upgrader", &[Field::bytes(&client.to_bytes())]);
        }
        let s = &self.settings;
        w.put("interval", &[Field::duration(s.interval)]);
        for (key, signal) in [
            ("signal-on-hup", &s.signal_on_hup),
            ("signal-on-term", &s.signal_on_term),
        ] {
            w.put(key, &[Field::text(&signal.name), Field::num(signal.number)]);
        }
        w.put("port-env", &[Field::text(&s.port_env)]);
        w.put("kill-timeout", &[Field::opt_duration(s.kill_timeout)]);
        w.put("backoff", &[Field::opt_duration(s.backoff)]);
        w.put(
            "ready",
            &[
                Field::flag(s.ready_notify),
                Field::duration(s.ready_timeout),
            ],
        );
        w.put("watchdog", &[Field::opt_duration(s.watchdog)]);
        let (argv, dir, own_pid_vars) = self.command.handover();
        let mut command = vec![dir.map_or_else(Field::none, Field::bytes)];
        command.extend(argv.into_iter().map(Field::bytes));
        w.put("command", &command);
        let own_pid_vars: Vec<Field> = own_pid_vars.iter().map(|v| Field::text(v)).collect();
        w.put("own-pid-vars", &own_pid_vars);
        let (strip, set) = s.listen_vars.handover();
        w.put("listen-vars", &[Field::flag(strip)]);
        for (key, value) in set {
            let fields = [Field::bytes(key.as_bytes()), Field::bytes(value.as_bytes())];
            w.put("listen-var", &fields);
        }
        if let Some(status_file) = &self.status_file {
            let (path, created) = status_file.handover();
            let path = Field::bytes(path.as_os_str().as_bytes());
            w.put("status-file", &[path, Field::flag(created)]);
        }
        if let Some(control) = &self.control {
            w.put("control", &[Field::num(control.fd())]);
        }
        if let Some(manager) = &self.manager {
            w.put("manager", &[Field::bytes(manager.socket().as_bytes())]);
        }
        let t = &self.tunables;
        w.put(
            "tunables",
            &[
                Field::opt_duration(t.auto_restart),
                Field::duration(t.kill_old_delay),
            ],
        );
        w.put("generation", &[Field::num(self.generation)]);
        w.put(
            "failures",
            &[
                Field::num(self.failures),
                Field::num(self.failures_before_start),
            ],
        );
        let worker = |w: &Writer, worker: Option<Worker>| match worker {
            Some(x) => [
                Field::num(x.pid),
                Field::num(x.generation),
                w.instant(x.spawned_at),
            ],
            None => [Field::none(), Field::none(), Field::none()],
        };
        if let Some(current) = self.current {
            w.put("current", &worker(&w, Some(current)));
        }
        if let Some(a) = &self.attempt {
            let mut fields = Vec::from(worker(&w, a.worker));
            fields.extend([
                w.instant(a.spawned_at),
                w.instant(a.until),
                Field::flag(a.replacing),
            ]);
            w.put("attempt", &fields);
        }
        for (&pid, old) in &self.old {
            let (kill_at, grace) = old.kill.unzip();
            w.put(
                "old",
                &[
                    Field::num(pid),
                    Field::num(old.generation),
                    Field::flag(old.listed),
                    w.opt_instant(kill_at),
                    Field::opt_duration(grace),
                ],
            );
        }
        for (&pid, channel) in &self.channels {
            let fields = [
                Field::num(pid),
                Field::num(channel.fd()),
                Field::text(channel.address()),
            ];
            w.put("channel", &fields);
        }
        for waiter in &self.waiting {
            let to = Field::bytes(&waiter.to.to_bytes());
            w.put("waiter", &[to, Field::num(waiter.after)]);
        }
        w.put(
            "timers",
            &[
                w.opt_instant(self.watchdog_at),
                w.opt_instant(self.kill_old_at),
                w.opt_instant(self.started_at),
            ],
        );
        w.put(
            "flags",
            &[Field::flag(self.hup_pending), Field::flag(self.reloading)],
        );
        w.finish()
    }
}

/// The supervisor's part of a state, read back, its descriptors not yet taken over
/// (see `upgrade::resume`: only once everything has been read and checked).
pub struct Saved {
    settings: Settings,
    tunables: Tunables,
    command: Command,
    status_file: Option<StatusFile>,
    control: Option<RawFd>,
    channels: Vec<(Pid, RawFd, String)>,
    manager: Option<OsString>,
    generation: u64,
    failures: u32,
    failures_before_start: u32,
    current: Option<Worker>,
    attempt: Option<Attempt>,
    old: BTreeMap<Pid, Old>,
    waiting: Vec<(SockAddr, u64)>,
    watchdog_at: Option<Instant>,
    kill_old_at: Option<Instant>,
    started_at: Option<Instant>,
    hup_pending: bool,
    reloading: bool,
    /// When the upgrade was asked for, and who waits for its outcome.
    pub began: Instant,
    clients: Vec<SockAddr>,
}

impl Saved {
    pub fn read(r: &mut Reader) -> Result<Saved, String> {
        let began = r.one("began")?.expect(1)?.instant(0)?;
        let address = |bytes: Vec<u8>| {
            SockAddr::from_bytes(&bytes).ok_or_else(|| "a socket address too long".to_string())
        };
        let clients = r
            .all("upgrader")
            .into_iter()
            .map(|f| address(f.expect(1)?.bytes(0)?))
            .collect::<Result<_, String>>()?;
        let signal = |f: state::Fields| -> Result<Signal, String> {
            let f = f.expect(2)?;
            Ok(Signal {
                name: f.text(0)?,
                number: f.num(1)?,
            })
        };
        let ready = r.one("ready")?.expect(2)?;
        let listen_vars = r
            .all("listen-var")
            .into_iter()
            .map(|f| {
                let f = f.expect(2)?;
                let bytes = |i| f.bytes(i).map(OsString::from_vec);
                Ok((bytes(0)?, bytes(1)?))
            })
            .collect::<Result<_, String>>()?;
        let strip = r.one("listen-vars")?.expect(1)?.flag(0)?;
        let settings = Settings {
            interval: r.one("interval")?.expect(1)?.duration(0)?,
            signal_on_hup: signal(r.one("signal-on-hup")?)?,
            signal_on_term: signal(r.one("signal-on-term")?)?,
            port_env: r.one("port-env")?.expect(1)?.text(0)?,
            kill_timeout: r.one("kill-timeout")?.expect(1)?.opt_duration(0)?,
            backoff: r.one("backoff")?.expect(1)?.opt_duration(0)?,
            ready_notify: ready.flag(0)?,
            ready_timeout: ready.duration(1)?,
            watchdog: r.one("watchdog")?.expect(1)?.opt_duration(0)?,
            listen_vars: WorkerVars::taken_over(strip, listen_vars),
        };
        let command = r.one("command")?;
        let dir = match command.is_none(0) {
            true => None,
            false => Some(PathBuf::from(OsString::from_vec(command.bytes(0)?))),
        };
        let args = (1..command.count())
            .map(|i| command.text(i))
            .collect::<Result<Vec<_>, _>>()?;
        let mut command = Command::new(&args, dir.as_deref(), settings.signal_on_term.number)?;
        let own_pid_vars = r.one("own-pid-vars")?;
        for i in 0..own_pid_vars.count() {
            let name = own_pid_vars.text(i)?;
            let known = OWN_PID_VARS.iter().find(|&&known| known == name);
            let name = known.ok_or_else(|| format!("own pid variable {name:?} is not known"))?;
            command.export_own_pid(name);
        }
        let status_file = match r.maybe("status-file")? {
            Some(f) => {
                let f = f.expect(2)?;
                let path = PathBuf::from(OsString::from_vec(f.bytes(0)?));
                Some(StatusFile::taken_over(path, f.flag(1)?))
            }
            None => None,
        };
        let control = match r.maybe("control")? {
            Some(f) => Some(f.expect(1)?.num(0)?),
            None => None,
        };
        let channels = r
            .all("channel")
            .into_iter()
            .map(|f| {
                let f = f.expect(3)?;
                Ok((f.num(0)?, f.num(1)?, f.text(2)?))
            })
            .collect::<Result<_, String>>()?;
        let manager = match r.maybe("manager")? {
            Some(f) => Some(OsString::from_vec(f.expect(1)?.bytes(0)?)),
            None => None,
        };
        let t = r.one("tunables")?.expect(2)?;
        let tunables = Tunables {
            auto_restart: t.opt_duration(0)?,
            kill_old_delay: t.duration(1)?,
        };
        // A worker's three fields from `i` on: all of them, or all `-`.
        let worker = |f: &state::Fields, i: usize| -> Result<Option<Worker>, String> {
            if f.is_none(i) {
                return Ok(None);
            }
            Ok(Some(Worker {
                pid: f.num(i)?,
                generation: f.num(i + 1)?,
                spawned_at: f.instant(i + 2)?,
            }))
        };
        let current = match r.maybe("current")? {
            Some(f) => worker(&f.expect(3)?, 0)?,
            None => None,
        };
        let attempt = match r.maybe("attempt")? {
            Some(f) => {
                let f = f.expect(6)?;
                Some(Attempt {
                    worker: worker(&f, 0)?,
                    spawned_at: f.instant(3)?,
                    until: f.instant(4)?,
                    replacing: f.flag(5)?,
                })
            }
            None => None,
        };
        let old = r
            .all("old")
            .into_iter()
            .map(|f| {
                let f = f.expect(5)?;
                let kill = match (f.opt_instant(3)?, f.opt_duration(4)?) {
                    (Some(at), Some(grace)) => Some((at, grace)),
                    _ => None,
                };
                let old = Old {
                    generation: f.num(1)?,
                    listed: f.flag(2)?,
                    kill,
                };
                Ok((f.num(0)?, old))
            })
            .collect::<Result<_, String>>()?;
        let waiting = r
            .all("waiter")
            .into_iter()
            .map(|f| {
                let f = f.expect(2)?;
                Ok((address(f.bytes(0)?)?, f.num(1)?))
            })
            .collect::<Result<_, String>>()?;
        let timers = r.one("timers")?.expect(3)?;
        let failures = r.one("failures")?.expect(2)?;
        let flags = r.one("flags")?.expect(2)?;
        Ok(Saved {
            settings,
            tunables,
            command,
            status_file,
            control,
            channels,
            manager,
            generation: r.one("generation")?.expect(1)?.num(0)?,
            failures: failures.num(0)?,
            failures_before_start: failures.num(1)?,
            current,
            attempt,
            old,
            waiting,
            watchdog_at: timers.opt_instant(0)?,
            kill_old_at: timers.opt_instant(1)?,
            started_at: timers.opt_instant(2)?,
            hup_pending: flags.flag(0)?,
            reloading: flags.flag(1)?,
            began,
            clients,
        })
    }

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

impl<'a> Supervisor<'a> {
    /// The supervisor of the previous image, from its state, taking its descriptors
    /// over (checked open by the caller).
    pub fn resume(
        saved: Saved,
        log_file: Option<&'a mut LogFile>,
        context: Context<'a>,
    ) -> io::Result<(Supervisor<'a>, Vec<SockAddr>)> {
        let control = match saved.control {
            Some(fd) => Some(ControlSocket::taken_over(sys::adopt_fd(fd)?)),
            None => None,
        };
        let mut channels = BTreeMap::new();
        for (pid, fd, address) in saved.channels {
            channels.insert(pid, Channel::taken_over(sys::adopt_fd(fd)?, address));
        }
        let supervisor = Supervisor {
            settings: saved.settings,
            tunables: saved.tunables,
            command: saved.command,
            status_file: saved.status_file,
            log_file,
            generation: saved.generation,
            current: saved.current,
            attempt: saved.attempt,
            old: saved.old,
            failures: saved.failures,
            failures_before_start: saved.failures_before_start,
            channels,
            watchdog_at: saved.watchdog_at,
            control,
            throttle: Throttle::default(),
            waiting: saved
                .waiting
                .into_iter()
                .map(|(to, after)| Waiter { to, after })
                .collect(),
            manager: saved.manager.map(Manager::taken_over),
            reloading: saved.reloading,
            kill_old_at: saved.kill_old_at,
            hup_pending: saved.hup_pending,
            started_at: saved.started_at,
            stopping: false,
            context,
            upgrade: None,
            // A launcher's pipe does not survive the exec (close-on-exec).
            launcher: None,
            fatal: None,
        };
        Ok((supervisor, saved.clients))
    }

    /// After `resume`: tells the `--upgrade` clients how it went.
    pub fn answer_upgrade(&self, clients: &[SockAddr], text: &str) {
        self.answer(clients, text);
    }
}
