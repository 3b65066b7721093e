//! cgroups: the cgroup of each hierarchy every task and thread of the tree
//! is in (`/proc/PID/task/TID/cgroup`). Identical lists make one set;
//! `cgroup.img` (CRIU's `cgroup_entry`) holds the sets and the hierarchies'
//! controllers, core images name each task's and thread's set (`cg_set`),
//! the inventory the set the engine was in (`root_cg_set`). When every task
//! is in the engine's own cgroups there is nothing to save, as in CRIU.
//! A cgroup namespace of the tree's own: each member's `cgns_prefix` is the
//! length of the namespace's root in its path, as in CRIU; the root task
//! joins that cgroup, unshares its namespace there, then joins its own.
//!
//! The restore (`--manage-cgroups`, soft by default as in CRIU) finds each
//! hierarchy where the engine's mount namespace mounts it, rewrites paths
//! under `--cgroup-root`, makes the cgroups that are missing and opens their
//! `cgroup.procs`; each task writes itself there first thing after its fork,
//! before it forks its children or allocates memory, so that they are
//! charged where the tree was. Not saved yet: directory permissions and
//! controller properties (the `full` and `strict` modes need them).

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::unistd::Pid;
use stasis_proto::images::{CgControllerEntry, CgMemberEntry, CgSetEntry, CgroupEntry};

use crate::error::{EngineError as Error, Result};
use crate::images::{Dir, img};

/// A membership list: (hierarchy name as /proc shows it, path), by name.
pub type Set = Vec<(String, String)>;

/// The set of `/proc/.../cgroup` text; `None` if a line is malformed.
pub fn parse(text: &str) -> Option<Set> {
    let mut set: Set = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut f = l.splitn(3, ':');
            let (_id, name, path) = (f.next()?, f.next()?, f.next()?);
            path.starts_with('/')
                .then(|| (name.to_owned(), path.to_owned()))
        })
        .collect::<Option<_>>()?;
    set.sort();
    Some(set)
}

fn read_set(pid: Pid, path: &str) -> Result<Set> {
    crate::task::proc::parsed(pid, path, parse)
}

/// The tree's sets: set `i` has id `i + 1`, and id 1 is the engine's own.
#[derive(Debug, Default)]
pub struct Sets {
    sets: Vec<Set>,
    of: HashMap<Pid, u32>,
    /// The root of the tree's own cgroup namespace in each hierarchy, by
    /// name; none when it has none.
    ns_roots: Option<HashMap<String, String>>,
}

/// The root of `root`'s cgroup namespace in each hierarchy: its paths seen
/// from outside, less the same paths seen from inside.
fn ns_roots(root: Pid) -> Result<HashMap<String, String>> {
    let outer = read_set(root, &format!("/proc/{root}/cgroup"))?;
    let inner = crate::ns::inside(
        root,
        "cgroup",
        nix::sched::CloneFlags::CLONE_NEWCGROUP,
        || read_set(root, &format!("/proc/{root}/cgroup")),
    )?;
    let mut out = HashMap::new();
    for (name, path) in outer {
        let inside = inner
            .iter()
            .find(|(n, _)| *n == name)
            .map_or("/", |(_, p)| p.as_str());
        let base = if inside == "/" {
            Some(path.as_str())
        } else {
            path.strip_suffix(inside)
        };
        let Some(base) = base.filter(|_| !inside.starts_with("/..")) else {
            return Err(Error::Unsupported {
                pid: root,
                what: format!(
                    "a cgroup ({path}) outside the root of its own cgroup namespace ({inside} \
                     from inside)"
                ),
            });
        };
        let base = if base.is_empty() { "/" } else { base };
        out.insert(name, base.to_owned());
    }
    Ok(out)
}

impl Sets {
    /// The sets of `tasks` (each a PID and its thread IDs; zombies have
    /// none and are left out) of the tree under `root`.
    pub fn read(root: Pid, tasks: &[(Pid, Vec<Pid>)]) -> Result<Sets> {
        let me = nix::unistd::getpid();
        let mut s = Sets {
            sets: vec![read_set(me, "/proc/self/cgroup")?],
            of: HashMap::new(),
            ns_roots: if crate::ns::own_cgroup(root) {
                Some(ns_roots(root)?)
            } else {
                None
            },
        };
        for (pid, tids) in tasks {
            for tid in tids {
                let set = read_set(*pid, &format!("/proc/{pid}/task/{tid}/cgroup"))?;
                let id = match s.sets.iter().position(|x| *x == set) {
                    Some(i) => i,
                    None => {
                        s.sets.push(set);
                        s.sets.len() - 1
                    }
                };
                s.of.insert(*tid, u32::try_from(id + 1).unwrap_or(u32::MAX));
                if let Some(roots) = &s.ns_roots {
                    let set = &s.sets[id];
                    for (name, path) in set {
                        let base = roots.get(name).map_or("/", String::as_str);
                        if base != "/" && !under_root(path, base) {
                            return Err(Error::Unsupported {
                                pid: *pid,
                                what: format!(
                                    "thread {tid} in cgroup {path}, outside the root of the \
                                     tree's cgroup namespace ({base})"
                                ),
                            });
                        }
                    }
                }
            }
        }
        Ok(s)
    }

    /// The set id of task or thread `tid`.
    pub fn of(&self, tid: Pid) -> Option<u32> {
        self.of.get(&tid).copied()
    }

    /// Write `cgroup.img`, unless every task is in the engine's set and
    /// the tree has no cgroup namespace of its own.
    pub fn write(&self, dir: &Dir) -> Result<()> {
        if self.of.values().all(|&id| id == 1) && self.ns_roots.is_none() {
            return Ok(());
        }
        // Only the tree's paths are in its namespace (not the engine's).
        let prefix = |name: &str, path: &str| {
            let base = self
                .ns_roots
                .as_ref()?
                .get(name)
                .map_or("/", String::as_str);
            under_root(path, base).then(|| u32::try_from(base.len()).unwrap_or(0))
        };
        let mut names: Vec<&str> = self
            .sets
            .iter()
            .flat_map(|s| s.iter().map(|(n, _)| n.as_str()))
            .collect();
        names.sort_unstable();
        names.dedup();
        let entry = CgroupEntry {
            sets: self
                .sets
                .iter()
                .zip(1u32..)
                .map(|(set, id)| CgSetEntry {
                    id,
                    ctls: set
                        .iter()
                        .map(|(name, path)| CgMemberEntry {
                            name: name.clone(),
                            path: path.clone(),
                            cgns_prefix: prefix(name, path),
                        })
                        .collect(),
                })
                .collect(),
            controllers: names
                .into_iter()
                .map(|n| CgControllerEntry {
                    cnames: n.split(',').map(str::to_owned).collect(),
                    dirs: Vec::new(),
                    // Every v1 hierarchy has a tasks file.
                    is_threaded: Some(!n.is_empty()),
                })
                .collect(),
        };
        dir.write_all(img::CGROUP, 0, &[entry])
    }
}

/// What the restore does with the cgroups in the images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Leave them: the tree stays where the engine is.
    Ignore,
    /// Join them, making the missing ones (CRIU's default).
    #[default]
    Soft,
}

impl Mode {
    /// CRIU's mode names (`--manage-cgroups[=MODE]`); the ones stasis
    /// cannot honour are refused with the reason.
    pub fn from_criu(name: &str) -> std::result::Result<Mode, String> {
        match name {
            "" | "soft" | "default" => Ok(Mode::Soft),
            "ignore" => Ok(Mode::Ignore),
            "none" | "props" | "full" | "strict" => Err(format!(
                "cgroup mode {name} is not supported yet: stasis does not save cgroup \
                 properties (soft and ignore are)"
            )),
            other => Err(format!(
                "{other:?} is not a cgroup mode (soft, ignore, full, strict, props, none)"
            )),
        }
    }
}

/// `--cgroup-root [CONTROLLER:]/PATH`: the tree's cgroups go under PATH
/// instead of under its root task's (for one hierarchy, or all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgRoot {
    /// The hierarchy (a controller it has, or `name=NAME`); `None` for all.
    pub ctrl: Option<String>,
    /// The new root path.
    pub path: String,
}

impl std::str::FromStr for CgRoot {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<CgRoot, String> {
        let (ctrl, path) = match s.split_once(':') {
            Some((c, p)) => (Some(c.to_owned()), p),
            None => (None, s),
        };
        if !path.starts_with('/') {
            return Err(format!("{s:?}: the cgroup root must be an absolute path"));
        }
        Ok(CgRoot {
            ctrl,
            path: path.to_owned(),
        })
    }
}

/// The `cgroup.procs` files each set's tasks write themselves into.
#[derive(Debug, Default)]
pub struct Joins {
    fds: Vec<OwnedFd>,
    by_set: HashMap<u32, Vec<RawFd>>,
    /// The tree had a cgroup namespace of its own: its root task makes one
    /// again, once in the cgroups of [`Joins::ns_root`].
    pub new_ns: bool,
    /// `cgroup.procs` of the root of the tree's cgroup namespace in each
    /// hierarchy (where that is not the engine's cgroup).
    pub ns_root: Vec<RawFd>,
    /// The cgroups made, parents first: removed again unless the restore
    /// [keeps](Joins::keep) them.
    made: Vec<PathBuf>,
    kept: bool,
}

impl Joins {
    /// The fds a task of set `id` writes "0" to.
    pub fn of(&self, id: Option<u32>) -> Vec<RawFd> {
        id.and_then(|i| self.by_set.get(&i))
            .cloned()
            .unwrap_or_default()
    }

    /// The highest fd held, if any.
    pub fn last(&self) -> Option<RawFd> {
        self.fds.iter().map(std::os::fd::AsRawFd::as_raw_fd).max()
    }

    /// The restore succeeded: the cgroups made stay.
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Joins {
    /// A failed restore leaves no cgroup it made (its tasks are dead by
    /// now; a cgroup empties as they exit).
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        self.fds.clear();
        for d in self.made.iter().rev() {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            while std::fs::remove_dir(d).is_err()
                && d.exists()
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }
}

/// Where the tree's cgroups go at restore (`--cgroup-root`), for the
/// cgroup mounts of its mount namespace: a container's own mounts of its
/// cgroups show what the runtime made for it, which a restore under a new
/// name puts elsewhere.
#[derive(Debug, Default)]
pub struct Remap {
    /// The root task's cgroup in each hierarchy: (name, path).
    bases: Vec<(String, String)>,
    roots: Vec<CgRoot>,
}

impl Remap {
    /// The remapping of the tree in `dir` whose root task is in set
    /// `root_set`, under `roots` (none: nothing moves).
    pub fn new(dir: &Dir, mode: Mode, roots: &[CgRoot], root_set: Option<u32>) -> Result<Remap> {
        if mode == Mode::Ignore || roots.is_empty() || !dir.exists(img::CGROUP, 0) {
            return Ok(Remap::default());
        }
        let entry: CgroupEntry = dir.read_one(img::CGROUP, 0)?;
        let bases = entry
            .sets
            .iter()
            .find(|s| Some(s.id) == root_set)
            .map(|s| {
                s.ctls
                    .iter()
                    .map(|m| (m.name.clone(), m.path.clone()))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Remap {
            bases,
            roots: roots.to_vec(),
        })
    }

    /// The root a mount of type `fstype` (cgroup or cgroup2) with options
    /// `options` has after the restore, for `root` at the dump.
    pub fn mount_root(&self, fstype: &str, options: &str, root: &str) -> String {
        let opts: Vec<&str> = options.split(',').collect();
        let hierarchy = self.bases.iter().find(|(n, _)| {
            if fstype == "cgroup2" {
                n.is_empty()
            } else {
                !n.is_empty() && n.split(',').all(|c| opts.contains(&c))
            }
        });
        match hierarchy {
            Some((name, base)) => rewrite(root, name, base, &self.roots),
            None => root.to_owned(),
        }
    }
}

/// Whether cgroup `path` is `base` or below it.
fn under_root(path: &str, base: &str) -> bool {
    base == "/"
        || path
            .strip_prefix(base)
            .is_some_and(|r| r.is_empty() || r.starts_with('/'))
}

/// Where the engine's mount namespace mounts the root of hierarchy `name`.
fn mount_of<'a>(mounts: &'a [crate::ns::mnt::Mount], name: &str) -> Option<&'a str> {
    mounts
        .iter()
        .filter(|m| m.root == "/")
        .find(|m| {
            if name.is_empty() {
                m.fstype == "cgroup2"
            } else {
                let opts: Vec<&str> = m.options.split(',').collect();
                m.fstype == "cgroup" && name.split(',').all(|c| opts.contains(&c))
            }
        })
        .map(|m| m.point.as_str())
}

/// `path` (of hierarchy `name`) under `--cgroup-root`: the part below the
/// root task's path `base` goes under the new root.
fn rewrite(path: &str, name: &str, base: &str, roots: &[CgRoot]) -> String {
    let Some(r) = roots
        .iter()
        .find(|r| {
            r.ctrl
                .as_deref()
                .is_some_and(|c| name.split(',').any(|n| n == c))
        })
        .or_else(|| roots.iter().find(|r| r.ctrl.is_none()))
    else {
        return path.to_owned();
    };
    let rest = if base == "/" {
        Some(path)
    } else {
        path.strip_prefix(base)
            .filter(|r| r.is_empty() || r.starts_with('/'))
    };
    match rest {
        Some(rest) => crate::ns::mnt::under(Path::new(&r.path), rest),
        None => path.to_owned(),
    }
}

fn cg_err(
    path: &Path,
    what: &'static str,
    hint: &'static str,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.display().to_string();
    move |err| Error::Cgroup {
        path,
        what,
        err,
        hint,
    }
}

/// Make cgroup `dir` and its missing parents below `top` (a new v1 cpuset
/// takes its parent's CPUs and memory nodes: it cannot hold tasks without).
fn make(top: &Path, dir: &Path, cpuset: bool, made: &mut Vec<PathBuf>) -> Result<()> {
    let rel = dir.strip_prefix(top).unwrap_or(dir);
    let mut at = top.to_path_buf();
    for part in rel.components() {
        let parent = at.clone();
        at.push(part);
        if at.is_dir() {
            continue;
        }
        std::fs::create_dir(&at).map_err(cg_err(&at, "making it", ""))?;
        made.push(at.clone());
        if cpuset {
            for f in ["cpuset.cpus", "cpuset.mems"] {
                let v = std::fs::read(parent.join(f)).map_err(cg_err(&parent, f, ""))?;
                std::fs::write(at.join(f), v).map_err(cg_err(&at, f, ""))?;
            }
        }
    }
    Ok(())
}

/// What [`prepare`] needs to open a cgroup's `cgroup.procs`.
struct Opener<'a> {
    mine: Set,
    mounts: Vec<crate::ns::mnt::Mount>,
    opened: HashMap<PathBuf, RawFd>,
    joins: &'a mut Joins,
    first: RawFd,
}

impl Opener<'_> {
    /// `cgroup.procs` of cgroup `path` of hierarchy `name`, made if
    /// missing and kept open at an fd from `first` up; none when it is the
    /// engine's own (the tasks inherit it).
    fn open(&mut self, name: &str, path: &str) -> Result<Option<RawFd>> {
        let me = nix::unistd::getpid();
        if self.mine.iter().any(|(n, p)| n == name && p == path) {
            return Ok(None);
        }
        let shown = if name.is_empty() { "cgroup2" } else { name };
        let top = mount_of(&self.mounts, name).ok_or_else(|| Error::Unsupported {
            pid: me,
            what: format!(
                "cgroup {path} of hierarchy {shown}, which is not mounted here (mount it, \
                 or restore with --manage-cgroups=ignore)"
            ),
        })?;
        let top = Path::new(top);
        let at = top.join(path.trim_start_matches('/'));
        if let Some(&fd) = self.opened.get(&at) {
            return Ok(Some(fd));
        }
        if !at.is_dir() {
            make(
                top,
                &at,
                name.split(',').any(|c| c == "cpuset"),
                &mut self.joins.made,
            )?;
        }
        let procs = at.join("cgroup.procs");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&procs)
            .map_err(cg_err(&at, "opening cgroup.procs", ""))?;
        let low = self.first.max(self.joins.last().map_or(0, |l| l + 1));
        let fd = crate::sys::dup_at_least(f.as_fd(), low).map_err(|e| Error::Cgroup {
            path: at.display().to_string(),
            what: "keeping cgroup.procs open",
            err: e.into(),
            hint: "",
        })?;
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        self.opened.insert(at, raw);
        self.joins.fds.push(fd);
        Ok(Some(raw))
    }
}

/// The part of `path` (of member `m`) that is the root of the tree's
/// cgroup namespace, if the member says it has one.
fn ns_root_of(m: &CgMemberEntry) -> Option<&str> {
    let n = usize::try_from(m.cgns_prefix?).ok().filter(|&n| n > 0)?;
    m.path.get(..n)
}

/// Prepare the tasks' joins: each set's cgroups made where missing and
/// their `cgroup.procs` opened at fds from `first` up. `tasks` are the set
/// ids of the live tasks; `root_set` the root task's.
pub fn prepare(
    dir: &Dir,
    mode: Mode,
    roots: &[CgRoot],
    root_set: Option<u32>,
    tasks: &[u32],
    first: RawFd,
) -> Result<Joins> {
    let mut joins = Joins::default();
    if !dir.exists(img::CGROUP, 0) {
        return Ok(joins);
    }
    let entry: CgroupEntry = dir.read_one(img::CGROUP, 0)?;
    let bad = |what: String| Error::BadImage {
        path: crate::images::img::CGROUP.file_name(0),
        what,
    };
    let set_of = |id: u32| entry.sets.iter().find(|s| s.id == id);
    let root_members = root_set
        .and_then(set_of)
        .map(|s| s.ctls.clone())
        .unwrap_or_default();
    joins.new_ns = root_members.iter().any(|m| ns_root_of(m).is_some());
    if mode == Mode::Ignore {
        return Ok(joins);
    }
    let me = nix::unistd::getpid();
    let mut at = Opener {
        mine: read_set(me, "/proc/self/cgroup")?,
        mounts: crate::task::proc::parsed(me, "/proc/self/mountinfo", crate::ns::mnt::parse)?,
        opened: HashMap::new(),
        joins: &mut joins,
        first,
    };
    let base_of = |name: &str| {
        root_members
            .iter()
            .find(|r| r.name == name)
            .map_or("/".to_owned(), |r| r.path.clone())
    };
    let mut ns_root = Vec::new();
    for m in &root_members {
        if let Some(r) = ns_root_of(m) {
            let path = rewrite(r, &m.name, &base_of(&m.name), roots);
            ns_root.extend(at.open(&m.name, &path)?);
        }
    }
    let mut wanted: Vec<u32> = tasks.to_vec();
    wanted.sort_unstable();
    wanted.dedup();
    let mut by_set = HashMap::new();
    for id in wanted {
        let set = set_of(id).ok_or_else(|| {
            bad(format!(
                "a task is in cgroup set {id}, which it does not list"
            ))
        })?;
        let mut fds = Vec::new();
        for m in &set.ctls {
            let path = rewrite(&m.path, &m.name, &base_of(&m.name), roots);
            fds.extend(at.open(&m.name, &path)?);
        }
        by_set.insert(id, fds);
    }
    joins.ns_root = ns_root;
    joins.by_set = by_set;
    Ok(joins)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_cgroup_lines_make_a_sorted_set() {
        let s = parse("9:name=systemd:/\n4:memory:/a/b\n0::/x\n").unwrap();
        assert_eq!(
            s,
            vec![
                (String::new(), "/x".to_owned()),
                ("memory".to_owned(), "/a/b".to_owned()),
                ("name=systemd".to_owned(), "/".to_owned()),
            ]
        );
        assert!(parse("4:memory\n").is_none());
    }

    #[test]
    fn cgroup_root_moves_the_part_below_the_root_tasks_cgroup() {
        let all: CgRoot = "/new".parse().unwrap();
        let mem: CgRoot = "memory:/m".parse().unwrap();
        assert_eq!(
            rewrite("/old/ctr/sub", "", "/old/ctr", std::slice::from_ref(&all)),
            "/new/sub"
        );
        assert_eq!(
            rewrite("/old/ctr", "", "/old/ctr", std::slice::from_ref(&all)),
            "/new"
        );
        assert_eq!(
            rewrite("/elsewhere", "", "/old/ctr", std::slice::from_ref(&all)),
            "/elsewhere"
        );
        assert_eq!(
            rewrite(
                "/old/ctr",
                "cpu,memory",
                "/old/ctr",
                &[all.clone(), mem.clone()]
            ),
            "/m"
        );
        assert_eq!(rewrite("/a", "pids", "/", &[mem]), "/a");
        assert_eq!(rewrite("/a", "pids", "/", &[all]), "/new/a");
        "x:rel".parse::<CgRoot>().unwrap_err();
    }
}

/// A freezer cgroup frozen for the dump (`--freeze-cgroup`): v2
/// (`cgroup.freeze`, `cgroup.events`) or v1 (`freezer.state`), whichever
/// control file the directory has. Thawed when dropped.
#[derive(Debug)]
pub struct Frozen {
    dir: PathBuf,
    v2: bool,
    thawed: bool,
}

impl Frozen {
    /// Freeze `dir` and wait until every task in it is frozen (v1's freezer
    /// may need the request again), within `timeout`.
    pub fn freeze(dir: &Path, timeout: std::time::Duration) -> Result<Frozen> {
        let v2 = dir.join("cgroup.freeze").exists();
        if !v2 && !dir.join("freezer.state").exists() {
            return Err(Error::Cgroup {
                path: dir.display().to_string(),
                what: "freezing it",
                err: std::io::Error::from(std::io::ErrorKind::NotFound),
                hint: ": neither cgroup.freeze (v2) nor freezer.state (v1) is there; give the \
                       directory of a cgroup (v2) or of a freezer cgroup (v1)",
            });
        }
        let frozen = Frozen {
            dir: dir.to_owned(),
            v2,
            thawed: false,
        };
        if frozen.is_frozen()? {
            return Err(Error::Cgroup {
                path: dir.display().to_string(),
                what: "freezing it",
                err: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
                hint: ": it is frozen already; thaw it first (the dump must see its tasks stop)",
            });
        }
        let deadline = std::time::Instant::now() + timeout;
        let mut asked = std::time::Instant::now();
        frozen.request(true)?;
        while !frozen.is_frozen()? {
            if std::time::Instant::now() > deadline {
                // Dropped: thawed again.
                return Err(Error::Timeout {
                    secs: timeout.as_secs(),
                    step: "freezing the freezer cgroup (a task may be in an uninterruptible \
                           sleep; raise --timeout)",
                });
            }
            if !v2 && asked.elapsed() > std::time::Duration::from_millis(100) {
                frozen.request(true)?;
                asked = std::time::Instant::now();
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Ok(frozen)
    }

    fn request(&self, freeze: bool) -> Result<()> {
        let (file, value) = match (self.v2, freeze) {
            (true, f) => ("cgroup.freeze", if f { "1" } else { "0" }),
            (false, true) => ("freezer.state", "FROZEN"),
            (false, false) => ("freezer.state", "THAWED"),
        };
        std::fs::write(self.dir.join(file), value).map_err(cg_err(&self.dir, file, ""))
    }

    fn is_frozen(&self) -> Result<bool> {
        let file = if self.v2 {
            "cgroup.events"
        } else {
            "freezer.state"
        };
        let text =
            std::fs::read_to_string(self.dir.join(file)).map_err(cg_err(&self.dir, file, ""))?;
        Ok(if self.v2 {
            text.lines().any(|l| l.trim() == "frozen 1")
        } else {
            text.trim() == "FROZEN"
        })
    }

    /// Every thread in the cgroup and the cgroups below it.
    pub fn threads(&self) -> Result<Vec<Pid>> {
        let file = if self.v2 { "cgroup.threads" } else { "tasks" };
        let mut out = Vec::new();
        let mut dirs = vec![self.dir.clone()];
        while let Some(d) = dirs.pop() {
            let text = std::fs::read_to_string(d.join(file)).map_err(cg_err(&d, file, ""))?;
            out.extend(
                text.lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .map(Pid::from_raw),
            );
            let entries = std::fs::read_dir(&d).map_err(cg_err(&d, "listing it", ""))?;
            dirs.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        Ok(out)
    }

    /// Thaw it: the seized tasks then stop for the dump.
    pub fn thaw(mut self) -> Result<()> {
        self.thawed = true;
        self.request(false)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if !self.thawed {
            let _ = self.request(false);
        }
    }
}
