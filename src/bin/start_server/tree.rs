//! A generation is its whole process tree: where each worker's processes are kept
//! together, and how those a worker leaves behind when it exits are found, signalled
//! and heard to be gone.
//!
//! Two modes, chosen once at start:
//! - cgroup: where cgroup v2 is writable, start_server moves itself into a leaf of a
//!   subtree it makes under its own cgroup, and each worker joins a cgroup of its own
//!   before it executes: membership is exact, `cgroup.kill` ends all of it, and
//!   `cgroup.events` (watched with inotify) says when it is empty.
//! - subreaper: elsewhere, each worker gets a process group of its own; what it leaves
//!   is what is left below start_server (the subreaper) that can be traced to it: its
//!   group or session, the processes seen below it while it ran (looked at only while
//!   something is starting or stopping), or `SERVER_STARTER_GENERATION` in the
//!   environment it was started with.

use std::os::unix::io::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use crate::spawn::Place;
use crate::sys::{self, cgroup, Pid};

/// `SERVER_STARTER_PROCESS_TREE`: `cgroup` (required), `subreaper` (forced), or
/// `auto` (the default: cgroup where it can be had).
pub const KNOB: &str = "SERVER_STARTER_PROCESS_TREE";

/// What `SERVER_STARTER_PROCESS_TREE` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    Auto,
    Cgroup,
    Subreaper,
}

impl Choice {
    /// Read at start, before anything is bound: a wrong value is a mistake said at
    /// once.
    pub fn from_env() -> Result<Choice, String> {
        let value = std::env::var_os(KNOB).unwrap_or_default();
        match value.to_str() {
            Some("") | Some("auto") => Ok(Choice::Auto),
            Some("cgroup") => Ok(Choice::Cgroup),
            Some("subreaper") => Ok(Choice::Subreaper),
            _ => Err(format!(
                "{KNOB}={value:?}: must be auto, cgroup or subreaper"
            )),
        }
    }
}

/// The executor's part: the mode, and each worker's tree, from its spawn until
/// nothing of it is left.
pub struct Trees {
    mode: Mode,
    workers: Vec<Tree>,
}

enum Mode {
    Cgroup(Cgroups),
    Subreaper,
}

struct Cgroups {
    /// start_server's cgroup at start, where it goes back before removing its subtree.
    home: PathBuf,
    /// The subtree it made: `supervisor` (itself, a leaf) and one cgroup per worker.
    root: PathBuf,
    watch: cgroup::Watch,
    /// The cgroup made for the spawn under way, and its `cgroup.procs`.
    next: Option<(PathBuf, OwnedFd)>,
}

/// One worker's tree, from its spawn until nothing of it is left; it crosses an
/// upgrade's exec (`supervisor::record`).
#[derive(Clone, Debug, PartialEq)]
pub struct Tree {
    pub pid: Pid,
    pub generation: u64,
    /// The worker itself has not exited.
    pub alive: bool,
    /// Its cgroup (cgroup mode).
    pub cgroup: Option<PathBuf>,
    /// The processes seen below it (subreaper mode).
    pub seen: Vec<Pid>,
    /// Subreaper mode: the last worker to exit at a stop, to which everything left
    /// below start_server is attributed (no upgrade happens while stopping).
    pub last: bool,
}

impl Trees {
    /// Sets up the mode `choice` asks for: the line to log, once, saying which is in
    /// force.
    pub fn start(choice: Choice) -> Result<(Trees, String), String> {
        let why_not = match choice {
            Choice::Subreaper => format!("{KNOB}=subreaper"),
            Choice::Auto | Choice::Cgroup => match Cgroups::set_up() {
                Ok(cgroups) => {
                    let line = format!(
                        "process tree: each worker in a cgroup of its own, under {}",
                        cgroups.root.display()
                    );
                    return Ok((Trees::new(Mode::Cgroup(cgroups)), line));
                }
                Err(why) if choice == Choice::Cgroup => {
                    return Err(format!("{KNOB}=cgroup, but no cgroup can be had: {why}"))
                }
                Err(why) => why,
            },
        };
        let line = format!(
            "process tree: each worker in a process group of its own, its orphans followed \
             as subreaper (no cgroup: {why_not})"
        );
        Ok((Trees::new(Mode::Subreaper), line))
    }

    fn new(mode: Mode) -> Trees {
        Trees {
            mode,
            workers: Vec::new(),
        }
    }

    /// Where the next worker, of `generation`, is to be spawned.
    pub fn place(&mut self, generation: u64) -> Result<Place<'_>, String> {
        let Mode::Cgroup(cgroups) = &mut self.mode else {
            return Ok(Place::OwnGroup);
        };
        let (dir, procs) = cgroups.make(generation)?;
        let (dir, procs) = &*cgroups.next.insert((dir, procs));
        Ok(Place::Cgroup(procs.as_raw_fd(), dir))
    }

    /// The spawn `place` was for made `pid` (`None`: no child).
    pub fn spawned(&mut self, pid: Option<Pid>, generation: u64) {
        let cgroup = match &mut self.mode {
            Mode::Cgroup(cgroups) => match (cgroups.next.take(), pid) {
                (Some((dir, _)), Some(_)) => {
                    if let Err(e) = cgroups.watch.add(&dir) {
                        log!("cannot watch {}/cgroup.events: {e}", dir.display());
                    }
                    Some(dir)
                }
                (Some((dir, _)), None) => {
                    let _ = cgroup::remove(&dir);
                    None
                }
                (None, _) => None,
            },
            Mode::Subreaper => None,
        };
        if let Some(pid) = pid {
            let tree = Tree {
                pid,
                generation,
                alive: true,
                cgroup,
                seen: Vec::new(),
                last: false,
            };
            self.workers.push(tree);
        }
    }

    /// The child `pid` exited. A worker: the processes of its tree still running
    /// (`Some`, with their pids, while any remain). Anything else (an orphan): `None`.
    pub fn exited(&mut self, pid: Pid, stopping: bool) -> Option<Vec<Pid>> {
        let others = self.workers.iter().any(|t| t.alive && t.pid != pid);
        let tree = self.workers.iter_mut().find(|t| t.pid == pid && t.alive)?;
        tree.alive = false;
        tree.last = stopping && !others;
        let remains = match &tree.cgroup {
            Some(dir) => match cgroup::populated(dir) {
                Ok(true) => Some(cgroup::procs(dir).unwrap_or_default()),
                _ => None,
            },
            None => {
                let pids = self.left_by(pid);
                (!pids.is_empty()).then_some(pids)
            }
        };
        if remains.is_none() {
            self.forget(pid);
        }
        remains
    }

    /// The workers whose trees, left behind, are now gone. In cgroup mode, called when
    /// the watch is readable; in subreaper mode, when an orphan has exited.
    pub fn gone(&mut self) -> Vec<Pid> {
        if let Mode::Cgroup(cgroups) = &self.mode {
            cgroups.watch.drain();
        }
        let gone: Vec<Pid> = self
            .workers
            .iter()
            .filter(|t| !t.alive)
            .filter(|t| match &t.cgroup {
                Some(dir) => !cgroup::populated(dir).unwrap_or(false),
                None => self.left_by(t.pid).is_empty(),
            })
            .map(|t| t.pid)
            .collect();
        for &pid in &gone {
            self.forget(pid);
        }
        gone
    }

    /// Sends `sig` to what the exited worker `pid` left, or to all that the running
    /// worker `pid` started (SIGKILL in cgroup mode: all of it at once, by
    /// `cgroup.kill`).
    pub fn signal(&self, pid: Pid, sig: i32) {
        let Some(tree) = self.tree(pid) else {
            return;
        };
        let pids = match &tree.cgroup {
            Some(dir) if sig == libc::SIGKILL => match cgroup::kill_all(dir) {
                Ok(()) => return,
                // Before Linux 5.14: one by one.
                Err(_) => cgroup::procs(dir).unwrap_or_default(),
            },
            Some(dir) => cgroup::procs(dir).unwrap_or_default(),
            // A running worker's (at its SIGKILL): what is below it.
            None if tree.alive => {
                let _ = sys::kill(-pid, sig);
                sys::descendants(pid)
            }
            None => {
                let left = self.left_by(pid);
                // Its group too, for what forked since the last look, while a process
                // of it is left (a group that is gone may be another's by now).
                let group = |p: &Pid| sys::group_and_session(*p).is_some_and(|g| g.0 == pid);
                if left.iter().any(group) {
                    let _ = sys::kill(-pid, sig);
                }
                left
            }
        };
        for pid in pids {
            // One that exited meanwhile is no error.
            let _ = sys::kill(pid, sig);
        }
    }

    /// What the exited worker `pid` left running (`--status`).
    pub fn left(&self, pid: Pid) -> Vec<Pid> {
        match self.tree(pid) {
            Some(Tree {
                alive: false,
                cgroup: Some(dir),
                ..
            }) => cgroup::procs(dir).unwrap_or_default(),
            Some(Tree { alive: false, .. }) => self.left_by(pid),
            _ => Vec::new(),
        }
    }

    /// Subreaper mode: notes the processes below each running worker, so that they can
    /// be traced to it once orphaned. Only while something starts or stops.
    pub fn survey(&mut self) {
        if let Mode::Subreaper = self.mode {
            for tree in self.workers.iter_mut().filter(|t| t.alive) {
                for seen in sys::descendants(tree.pid) {
                    if !tree.seen.contains(&seen) {
                        tree.seen.push(seen);
                    }
                }
            }
        }
    }

    /// The inotify descriptor the event wait watches (cgroup mode).
    pub fn fd(&self) -> Option<RawFd> {
        match &self.mode {
            Mode::Cgroup(cgroups) => Some(cgroups.watch.fd()),
            Mode::Subreaper => None,
        }
    }

    /// Subreaper mode: the processes below start_server that trace to the exited
    /// worker `pid` (all that no running worker or start_server's own group holds, for
    /// the last worker to exit at a stop).
    fn left_by(&self, pid: Pid) -> Vec<Pid> {
        let Some(tree) = self.tree(pid) else {
            return Vec::new();
        };
        let me = std::process::id() as Pid;
        let own_group = sys::group_and_session(me).map(|g| g.0);
        let alive: Vec<Pid> = self
            .workers
            .iter()
            .filter(|t| t.alive)
            .map(|t| t.pid)
            .collect();
        let everything = tree.last;
        let generation = tree.generation.to_string();
        let mut left = Vec::new();
        // Parents first: a process below one that traces to `pid` does too, and nothing
        // below a running worker (its own tree) does.
        let mut skip: Vec<Pid> = alive.clone();
        for p in sys::descendants(me) {
            let parent = sys::ppid(p);
            if parent.is_some_and(|q| skip.contains(&q)) {
                skip.push(p);
                continue;
            }
            if alive.contains(&p) {
                continue;
            }
            let Some((group, session)) = sys::group_and_session(p) else {
                continue;
            };
            let traced = parent.is_some_and(|q| left.contains(&q))
                || tree.seen.contains(&p)
                || [group, session]
                    .iter()
                    .any(|g| *g == pid || tree.seen.contains(g))
                || sys::env_var(p, "SERVER_STARTER_GENERATION")
                    .is_some_and(|g| g == generation.as_bytes())
                || (everything && Some(group) != own_group);
            if traced {
                left.push(p);
            }
        }
        left
    }

    fn tree(&self, pid: Pid) -> Option<&Tree> {
        self.workers.iter().find(|t| t.pid == pid)
    }

    fn forget(&mut self, pid: Pid) {
        let Some(i) = self.workers.iter().position(|t| t.pid == pid) else {
            return;
        };
        if let Some(dir) = self.workers.remove(i).cgroup {
            let _ = cgroup::remove(&dir);
        }
    }

    // ------------------------------------------------------------ upgrade in place

    /// What crosses an exec: the cgroup subtree's root (cgroup mode; start_server's
    /// own cgroup at start is its parent), and each tree.
    pub fn handover(&self) -> (Option<PathBuf>, Vec<Tree>) {
        let root = match &self.mode {
            Mode::Cgroup(c) => Some(c.root.clone()),
            Mode::Subreaper => None,
        };
        (root, self.workers.clone())
    }

    /// The trees of the previous image, each cgroup watched again.
    pub fn taken_over(root: Option<PathBuf>, workers: Vec<Tree>) -> Result<Trees, String> {
        let mode = match root {
            Some(root) => {
                let watch = cgroup::Watch::new()
                    .map_err(|e| format!("taking the state over failed: inotify_init1(2): {e}"))?;
                let home = root.parent().unwrap_or(&root).to_path_buf();
                Mode::Cgroup(Cgroups {
                    home,
                    root,
                    watch,
                    next: None,
                })
            }
            None => Mode::Subreaper,
        };
        if let Mode::Cgroup(c) = &mode {
            // One that cannot be watched is looked at when an orphan exits.
            for dir in workers.iter().filter_map(|t| t.cgroup.as_ref()) {
                let _ = c.watch.add(dir);
            }
        }
        Ok(Trees { mode, workers })
    }
}

impl Cgroups {
    /// Makes `server_starter.PID` under start_server's cgroup, with a leaf
    /// `supervisor` that start_server moves into (a cgroup with children holds no
    /// process: the "no internal processes" rule), and the watch.
    fn set_up() -> Result<Cgroups, String> {
        let home = cgroup::own_dir()?;
        let unit = home
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if (unit.ends_with(".service") || unit.ends_with(".scope")) && !cgroup::delegated(&home) {
            return Err(format!(
                "{unit} is systemd's to arrange: give the unit Delegate=yes"
            ));
        }
        let root = home.join(format!("server_starter.{}", std::process::id()));
        // Left by an instance of the same pid that was killed (SIGKILL leaves no
        // chance to clean up), as a stale socket file is: empty, so nothing is lost.
        if cgroup::populated(&root).is_ok_and(|p| !p) {
            remove_tree(&root);
        }
        let root = make_unique(&root)?;
        let leaf = root.join("supervisor");
        let joined = cgroup::create(&leaf)
            .and_then(|()| cgroup::move_into(&leaf, 0))
            .map_err(|e| format!("cannot move into {}: {e}", leaf.display()));
        let watched = joined.and_then(|()| {
            cgroup::Watch::new().map_err(|e| format!("inotify_init1(2) failed: {e}"))
        });
        match watched {
            Ok(watch) => Ok(Cgroups {
                home,
                root,
                watch,
                next: None,
            }),
            Err(why) => {
                let _ = cgroup::move_into(&home, 0);
                let _ = cgroup::remove(&leaf);
                let _ = cgroup::remove(&root);
                Err(why)
            }
        }
    }

    /// A new cgroup for a worker of `generation`, and its `cgroup.procs`.
    fn make(&self, generation: u64) -> Result<(PathBuf, OwnedFd), String> {
        let dir = make_unique(&self.root.join(format!("generation-{generation}")))?;
        match cgroup::open_procs(&dir) {
            Ok(procs) => Ok((dir, procs)),
            Err(e) => {
                let _ = cgroup::remove(&dir);
                Err(format!("cannot open {}/cgroup.procs: {e}", dir.display()))
            }
        }
    }
}

/// Makes the cgroup `base`, or `base.1`, `base.2`... if taken (by a start_server of
/// the same pid killed before it could remove its own, or in another PID namespace).
fn make_unique(base: &Path) -> Result<PathBuf, String> {
    let mut n = 0;
    loop {
        let dir = match n {
            0 => base.to_path_buf(),
            n => PathBuf::from(format!("{}.{n}", base.display())),
        };
        match cgroup::create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 100 => n += 1,
            Err(e) => return Err(format!("cannot create cgroup {}: {e}", dir.display())),
        }
    }
}

/// Removes the cgroup `dir` and the cgroups in it (one level: start_server makes no
/// more), those that are empty.
fn remove_tree(dir: &Path) -> bool {
    if let Ok(entries) = std::fs::read_dir(dir) {
        // The interface files are not removable: only the cgroups go.
        for entry in entries.flatten() {
            let _ = cgroup::remove(&entry.path());
        }
    }
    cgroup::remove(dir).is_ok()
}

/// At the end (an exit, a give-up, an error; never an upgrade's exec, which runs no
/// destructor): start_server (and its logger) go back to the cgroup it started in, and
/// every cgroup it made is removed once empty: at once after a stop, within a second
/// otherwise (a worker whose exec failed may still be exiting when start_server gives
/// up).
impl Drop for Cgroups {
    fn drop(&mut self) {
        let leaf = self.root.join("supervisor");
        for pid in cgroup::procs(&leaf).unwrap_or_default() {
            let _ = cgroup::move_into(&self.home, pid);
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        loop {
            if remove_tree(&self.root) || std::time::Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}
