//! start_server: a superdaemon for hot-deploying server programs, compatible with
//! Server::Starter 0.35's command of the same name.

// Unsafe code lives in `sys` alone, behind safe functions.
#![deny(unsafe_code)]

mod bind;
mod build_id;
mod cli;
mod control;
mod control_socket;
mod daemon;
mod envdir;
mod inherited;
mod listen_fds;
mod listening;
#[macro_use]
mod log;
mod log_file;
mod log_pipe;
mod manager;
mod notify;
mod pid_file;
mod plan;
mod port_names;
mod port_spec;
mod signals;
mod spawn;
mod status_file;
mod supervisor;
#[allow(unsafe_code)]
mod sys;
mod throttle;
mod tree;
mod upgrade;

use std::ffi::OsString;
use std::process::ExitCode;

use bind::Listeners;
use cli::{Config, Mode};
use control_socket::ControlSocket;
use listen_fds::WorkerVars;
use log_file::LogFile;
use manager::Manager;
use pid_file::PidFile;
use plan::Plan;
use signals::Events;
use spawn::Command;
use status_file::StatusFile;
use supervisor::{Event, Executor, Services, State};
use upgrade::{Context, Resumed};

fn main() -> ExitCode {
    let mut args = Vec::new();
    for arg in std::env::args_os().skip(1) {
        match arg.into_string() {
            Ok(arg) => args.push(arg),
            Err(arg) => return fail(255, &format!("argument {arg:?} is not valid UTF-8")),
        }
    }
    // Before anything else: the modes in which this binary is an upgrade's new image.
    if args == [upgrade::check::MODE] {
        upgrade::check::answer();
        return ExitCode::SUCCESS;
    }
    if let Some(handed) = upgrade::handed_over() {
        return match resume(handed) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => fail(255, &message),
        };
    }
    let mut format = log::Format::Plain;
    let parsed = cli::parse_with_log_format(&args, &mut format);
    log::set_format(format);
    let mode = match parsed {
        Ok(mode) => mode,
        Err(e) => return fail(e.status, &e.message),
    };
    let result = match mode {
        Mode::Help => {
            log::print(cli::HELP);
            Ok(())
        }
        Mode::Version => {
            log::print(&format!(
                "{} (Server::Starter 0.35 compatible)\nbuild {}\n",
                env!("CARGO_PKG_VERSION"),
                build_id::id()
            ));
            Ok(())
        }
        Mode::Start(config) => start(*config),
        Mode::Restart {
            pid_file,
            status_file,
        } => control::restart(&pid_file, status_file.as_deref()),
        Mode::Stop {
            pid_file,
            kill_timeout,
        } => {
            return match control::stop(&pid_file, kill_timeout) {
                Ok(()) => ExitCode::SUCCESS,
                Err((status, message)) => fail(status, &message),
            }
        }
        Mode::Upgrade { pid_file } => upgrade::client::upgrade(&pid_file),
        Mode::Status { pid_file, json } => {
            return match control::status(&pid_file, json) {
                Ok(status) => ExitCode::from(status),
                Err((status, message)) => fail(status, &message),
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => fail(255, &message),
    }
}

fn fail(status: u8, message: &str) -> ExitCode {
    // Through the log's writer: a supervisor's last line must not hang it either.
    let line = log::Line::new("error", format!("start_server: {message}"));
    log::write_line(&line.level(log::Level::Error));
    ExitCode::from(status)
}

/// Set-up, in the original's order, then the supervisor. A step that fails undoes the
/// ones before it: no file is left behind that was not there before.
fn start(config: Config) -> Result<(), String> {
    signals::block().map_err(|e| format!("failed to block signals: {e}"))?;
    export_options(&config);
    envdir::check()?;
    // Checked before anything is bound; read again where it is used.
    tree::Choice::from_env()?;
    let tunables = envdir::tunables(&envdir::current())?;
    let command = Command::new(
        &config.command,
        config.dir.as_deref(),
        config.signal_on_term.number,
    )?;

    let inherited = inherited::take()?;
    let mut plan = Plan::new(&config.ports, &config.paths, inherited, config.listen_fds)?;
    if config.ready == supervisor::Ready::Listening && plan.0.is_empty() {
        return Err("--ready=listening: no socket to watch (give --port or --path)".into());
    }
    let reserved = plan.reserve()?;
    // Not before: a descriptor it opens must not take a number a socket is to have.
    log::follow_stderr();
    // Locked before binding, so that a second instance is told that it is one, rather
    // than that its ports are in use.
    let mut pid_file = config.pid_file.as_deref().map(PidFile::lock).transpose()?;
    let bound = config
        .log_file
        .as_deref()
        .map(LogFile::open)
        .transpose()
        .and_then(|log_file| {
            // A daemon says it once it is one, with its own pid.
            if !config.daemonize {
                starting_now();
            }
            let listeners = Listeners::bind(plan, config.backlog, reserved)?;
            Ok((log_file, listeners))
        });
    let result = match bound {
        Ok((mut log_file, listeners)) => {
            let result = serve(
                config,
                tunables,
                command,
                &listeners,
                pid_file.as_mut(),
                log_file.as_mut(),
            );
            listeners.remove_socket_files();
            if let Some(log_file) = log_file {
                log_file.finish();
            }
            result
        }
        Err(e) => Err(e),
    };
    if let Some(pid_file) = pid_file {
        pid_file.release();
    }
    result
}

fn starting_now() {
    log!(event "starting", "start_server (pid:{}) starting now...", std::process::id());
}

/// With the sockets bound: detach if asked to, then supervise until stopped. A daemon's
/// launcher waits for word of generation 1: an error before the supervisor has it
/// reaches the launcher here.
fn serve(
    config: Config,
    tunables: envdir::Tunables,
    command: Command,
    listeners: &Listeners,
    pid_file: Option<&mut PidFile>,
    log_file: Option<&mut LogFile>,
) -> Result<(), String> {
    let mut daemon = if config.daemonize {
        let daemon = daemon::daemonize(listeners.has_fd(0))?;
        starting_now();
        Some(daemon)
    } else {
        None
    };
    let result = supervise(
        config,
        tunables,
        command,
        listeners,
        pid_file,
        log_file,
        &mut daemon,
    );
    if let (Err(e), Some(daemon)) = (&result, daemon) {
        daemon.failed(daemon::GAVE_UP, e);
    }
    result
}

fn supervise(
    config: Config,
    tunables: envdir::Tunables,
    mut command: Command,
    listeners: &Listeners,
    pid_file: Option<&mut PidFile>,
    mut log_file: Option<&mut LogFile>,
    daemon: &mut Option<daemon::Daemon>,
) -> Result<(), String> {
    let pid_file = match pid_file {
        Some(pid_file) => {
            pid_file.write_pid()?;
            Some(&*pid_file)
        }
        None => None,
    };
    let events = Events::new().map_err(|e| format!("failed to create a signalfd: {e}"))?;
    // After --daemonize's forks, in the process that supervises.
    sys::become_subreaper().map_err(|e| format!("prctl(PR_SET_CHILD_SUBREAPER) failed: {e}"))?;
    // Before the logger is spawned, which then runs in start_server's own leaf cgroup.
    let (trees, mode) = tree::Trees::start(tree::Choice::from_env()?)?;
    // Before the logger is spawned, which must not inherit the manager's variables.
    let manager = Manager::from_environment();
    // The logger too: it must be the supervising process's child, to be reaped and
    // restarted. Errors up to here still reach the terminal.
    if let Some(log_file) = log_file.as_deref_mut() {
        log_file.start(daemon.is_some())?;
        log_file.redirect()?;
    }
    log!(event "process-tree", "{mode}");
    let listen_vars = WorkerVars::new(listeners, config.listen_fds);
    if listen_vars.exports() {
        command.export_own_pid("LISTEN_PID");
    }
    if config.watchdog.is_some() {
        command.export_own_pid("WATCHDOG_PID");
    }
    let status_file = config.status_file.clone().map(StatusFile::new);
    // Only an instance with a pid file can be found by `--restart`.
    let control = match pid_file.is_some() {
        false => None,
        true => ControlSocket::bind()
            .map_err(|e| {
                log!("no control socket for --restart (it will fall back to the status file): {e}")
            })
            .ok(),
    };
    let config = supervisor::Config {
        interval: config.interval,
        signal_on_hup: config.signal_on_hup,
        signal_on_term: config.signal_on_term,
        kill_timeout: config.kill_timeout,
        backoff: config.backoff,
        ready: config.ready,
        ready_timeout: config.ready_timeout,
        watchdog: config.watchdog,
        exe: upgrade::own_exe(),
        log_format: config.log_format,
        workers: config.workers.unwrap_or(1),
        name_slots: config.workers.is_some(),
        rolling: config.rolling,
        canary: config.canary,
    };
    let context = Context {
        listeners,
        pid_file,
    };
    let mut executor = Executor::new(
        command,
        listeners.env_value(),
        listen_vars,
        status_file,
        log_file,
        control,
        manager,
        daemon.take(),
        context,
        trees,
    );
    let mut state = State::new(config, tunables);
    // A daemon's launcher waits to hear how generation 1 went.
    state.launcher = executor.has_launcher();
    executor.feed(&mut state, Event::Start);
    supervisor::run(&mut state, &mut executor, &events)
}

/// The new image of an upgrade in place: the state taken over, then the same loop as
/// `serve`'s, where the previous image left off.
fn resume(handed: OsString) -> Result<(), String> {
    let Resumed {
        from,
        listeners,
        pid_file,
        mut log_file,
        rest: (mut state, services),
        events,
        refused,
    } = upgrade::resume(
        handed,
        |r| Ok((State::read(r)?, Services::read(r)?)),
        |(_, services): &(State, Services)| services.descriptors(),
    )?;
    log::set_format(state.config.log_format);
    let context = Context {
        listeners: &listeners,
        pid_file: pid_file.as_ref(),
    };
    let signal_on_term = state.config.signal_on_term.number;
    let mut executor = Executor::resume(services, signal_on_term, log_file.as_mut(), context)?;
    sys::become_subreaper().map_err(|e| format!("prctl(PR_SET_CHILD_SUBREAPER) failed: {e}"))?;
    executor.feed(&mut state, Event::Resumed { from, refused });
    let result = supervisor::run(&mut state, &mut executor, &events);
    drop(executor);
    listeners.remove_socket_files();
    if let Some(log_file) = log_file {
        log_file.finish();
    }
    if let Some(pid_file) = pid_file {
        pid_file.release();
    }
    result
}

/// Like the original, the options that have environment equivalents are exported, for
/// start_server's own later reading (through --envdir's overlay) and for the workers.
fn export_options(config: &Config) {
    let set = |key: &str, value: Option<String>| {
        if let Some(value) = value {
            std::env::set_var(key, value);
        }
    };
    set(
        "ENVDIR",
        config.envdir.as_ref().map(|d| d.display().to_string()),
    );
    set(
        "ENABLE_AUTO_RESTART",
        config.enable_auto_restart.then(|| "1".to_string()),
    );
    set("KILL_OLD_DELAY", config.kill_old_delay.map(log::seconds));
    set(
        "AUTO_RESTART_INTERVAL",
        config.auto_restart_interval.map(log::seconds),
    );
}
