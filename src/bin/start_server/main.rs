//! start_server: a superdaemon for hot-deploying server programs, compatible with
//! Server::Starter 0.35's command of the same name.

mod bind;
mod cli;
#[macro_use]
mod log;
mod port_spec;
mod signals;
mod spawn;
mod status_file;
mod supervisor;
mod sys;

use std::process::ExitCode;

use bind::Listeners;
use cli::{Config, Mode};
use signals::Events;
use spawn::Command;
use status_file::StatusFile;
use supervisor::{Settings, Supervisor};

fn main() -> ExitCode {
    let mut args = Vec::new();
    for arg in std::env::args_os().skip(1) {
        match arg.into_string() {
            Ok(arg) => args.push(arg),
            Err(arg) => return fail(255, &format!("argument {arg:?} is not valid UTF-8")),
        }
    }
    let mode = match cli::parse(&args) {
        Ok(mode) => mode,
        Err(e) => return fail(e.status, &e.message),
    };
    let result = match mode {
        Mode::Help => {
            print!("{}", cli::HELP);
            Ok(())
        }
        Mode::Version => {
            println!("{} (Server::Starter 0.35 compatible)", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Mode::Start(config) => start(config),
        Mode::Restart { .. } | Mode::Stop { .. } => Err("--restart and --stop are not implemented yet".to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => fail(255, &message),
    }
}

fn fail(status: u8, message: &str) -> ExitCode {
    eprintln!("start_server: {message}");
    ExitCode::from(status)
}

fn start(config: Config) -> Result<(), String> {
    signals::block().map_err(|e| format!("failed to block signals: {e}"))?;
    let command = Command::new(&config.command, config.dir.as_deref())?;

    log!("start_server (pid:{}) starting now...", std::process::id());
    let listeners = Listeners::bind(&config.ports, &config.paths, config.backlog)?;
    let events = Events::new().map_err(|e| format!("failed to create a signalfd: {e}"))?;
    let settings = Settings {
        interval: config.interval,
        kill_old_delay: config.kill_old_delay.unwrap_or_default(),
        signal_on_hup: config.signal_on_hup,
        signal_on_term: config.signal_on_term,
        port_env: listeners.env_value(),
    };
    let status_file = config.status_file.map(StatusFile::new);
    let mut supervisor = Supervisor::new(settings, command, status_file);
    let result = supervisor.run(&events).map_err(|e| format!("waiting for events failed: {e}"));
    listeners.remove_socket_files();
    result
}
