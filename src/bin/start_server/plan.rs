//! Which socket is which, decided before anything is opened: each `--port` and
//! `--path` is either adopted from the sockets systemd passed (`inherited`) or to be
//! bound, gets its `SERVER_STARTER_PORT` name, and may have to sit at a given
//! descriptor: its `=fd`, or, under `--listen-fds`, its place in `LISTEN_FDS` (3, 4,
//! ... in `SERVER_STARTER_PORT` order).
//!
//! Those descriptor numbers are then reserved, so that nothing start_server opens
//! before the sockets are bound (its pid file, its log) lands on one.

use std::os::unix::io::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use crate::inherited::Inherited;
use crate::port_spec::PortSpec;
use crate::sys;

/// Where `LISTEN_FDS` puts the first socket (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

pub struct Planned {
    /// Its name in SERVER_STARTER_PORT.
    pub name: String,
    pub source: Source,
    /// The descriptor it must end up at, if any.
    pub target: Option<RawFd>,
    /// Whether the target is the user's `=fd` (which is logged, as the original
    /// logs it).
    pub pinned: bool,
}

pub enum Source {
    Port(PortSpec),
    Path(PathBuf),
    /// Taken as it is: not bound, no option changed.
    Adopted(Inherited),
}

/// Every socket, in SERVER_STARTER_PORT order: `--port`s first, then `--path`s (or,
/// with neither given, the inherited sockets in `LISTEN_FDS` order).
pub struct Plan(pub Vec<Planned>);

impl Plan {
    /// Matches the options with the inherited sockets. Every inherited socket must be
    /// adopted: one that no option names is an error, since start_server would keep it
    /// open for nothing while the option's own bind might fail against it.
    pub fn new(
        ports: &[PortSpec],
        paths: &[PathBuf],
        mut inherited: Vec<Inherited>,
        listen_fds: bool,
    ) -> Result<Plan, String> {
        let mut planned = Vec::new();
        if ports.is_empty() && paths.is_empty() {
            for socket in inherited.drain(..) {
                planned.push((socket.address.name(), Source::Adopted(socket), None));
            }
        }
        for spec in ports {
            let source = match inherited.is_empty() {
                true => Source::Port(spec.clone()),
                false => {
                    let resolved = spec.resolve()?;
                    match take_first(&mut inherited, |s| s.address.is_port(spec, resolved)) {
                        Some(socket) => Source::Adopted(socket),
                        None => Source::Port(spec.clone()),
                    }
                }
            };
            planned.push((spec.name.clone(), source, spec.pinned_fd));
        }
        for path in paths {
            let source = match take_first(&mut inherited, |s| s.address.is_path(path)) {
                Some(socket) => Source::Adopted(socket),
                None => Source::Path(path.clone()),
            };
            planned.push((path.display().to_string(), source, None));
        }
        if let Some(socket) = inherited.first() {
            return Err(format!(
                "the inherited {} (descriptor {}, from LISTEN_FDS) matches no --port or --path: add {} to adopt it",
                socket.address,
                socket.fd.as_raw_fd(),
                socket.address.option()
            ));
        }
        let mut plan = Vec::new();
        for (index, (name, source, pinned)) in planned.into_iter().enumerate() {
            let target = if listen_fds {
                let slot = RawFd::try_from(index)
                    .ok()
                    .and_then(|i| i.checked_add(LISTEN_FDS_START))
                    .ok_or("--listen-fds: too many sockets")?;
                if let Some(pinned) = pinned.filter(|&p| p != slot) {
                    return Err(format!(
                        "--listen-fds: socket {name} is pinned at descriptor {pinned}, but LISTEN_FDS puts it at descriptor {slot}"
                    ));
                }
                Some(slot)
            } else {
                pinned
            };
            plan.push(Planned {
                name,
                source,
                target,
                pinned: pinned.is_some(),
            });
        }
        Ok(Plan(plan))
    }

    /// Reserves the target descriptors, held open (on /dev/null) until the sockets
    /// are bound. An adopted socket in another's place, or not in its own, is moved
    /// out of the way first. Targets already open otherwise (stdin, say) are the
    /// user's to replace, as in the original.
    pub fn reserve(&mut self) -> Result<Reserved, String> {
        let mut targets: Vec<RawFd> = Vec::new();
        for target in self.0.iter().filter_map(|p| p.target) {
            if targets.contains(&target) {
                return Err(format!(
                    "invalid port value: descriptor {target} is pinned by two --port options"
                ));
            }
            targets.push(target);
        }
        let adopted_fds = self.0.iter().filter_map(|p| match &p.source {
            Source::Adopted(socket) => Some(socket.fd.as_raw_fd()),
            _ => None,
        });
        let above = targets
            .iter()
            .copied()
            .chain(adopted_fds)
            .max()
            .unwrap_or(0)
            .saturating_add(1);
        for planned in &mut self.0 {
            if let Source::Adopted(socket) = &mut planned.source {
                let fd = socket.fd.as_raw_fd();
                let in_place = planned.target.is_none_or(|t| t == fd);
                if !in_place || (planned.target.is_none() && targets.contains(&fd)) {
                    // The original number is closed when the old OwnedFd is dropped.
                    socket.fd = sys::dup_at_least(&socket.fd, above)
                        .map_err(|e| format!("failed to move descriptor {fd}: {e}"))?;
                }
            }
        }
        let mut placeholders = Vec::new();
        for target in targets {
            if !sys::fd_is_open(target) {
                let placeholder = sys::occupy_fd(target)
                    .map_err(|e| format!("failed to reserve descriptor {target}: {e}"))?;
                placeholders.push(placeholder);
            }
        }
        Ok(Reserved(placeholders))
    }
}

fn take_first(
    sockets: &mut Vec<Inherited>,
    matches: impl Fn(&Inherited) -> bool,
) -> Option<Inherited> {
    let index = sockets.iter().position(matches)?;
    Some(sockets.remove(index))
}

/// The target descriptor numbers, held open until the sockets take them.
pub struct Reserved(Vec<OwnedFd>);

impl Reserved {
    /// Gives up the placeholder at `target`, if there is one, because a dup2 onto the
    /// number is about to replace it (so it must not be closed afterwards).
    pub fn release(&mut self, target: RawFd) {
        if let Some(pos) = self.0.iter().position(|p| p.as_raw_fd() == target) {
            let _ = std::os::unix::io::IntoRawFd::into_raw_fd(self.0.swap_remove(pos));
        }
    }
}
