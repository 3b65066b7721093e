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
//! charged where the tree was. The cgroups of the tree's tasks and those
//! below them are saved with their permissions and properties (CRIU's v1
//! lists; on v2 its global files and, beyond CRIU, the controllers' limits:
//! `cpu.max`, `memory.max`, `pids.max`, ...), written back as CRIU's modes
//! say (`soft`: only on cgroups the restore made).

use stasis_kernel as kernel;
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::unistd::Pid;
use stasis_proto::images::{
    CgControllerEntry, CgMemberEntry, CgSetEntry, CgroupDirEntry, CgroupEntry, CgroupPerms,
    CgroupPropEntry,
};

use crate::error::{EngineError as Error, Result};
use crate::images::{Dir, img};

/// A membership list: (hierarchy name as /proc shows it, path), by name.
pub(crate) type Set = Vec<(String, String)>;

/// The set of `/proc/.../cgroup` text; `None` if a line is malformed.
pub(crate) fn parse(text: &str) -> Option<Set> {
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
    crate::proc::parsed(pid, path, parse)
}

/// The tree's sets: set `i` has id `i + 1`, and id 1 is the engine's own.
#[derive(Debug, Default)]
pub(crate) struct Sets {
    sets: Vec<Set>,
    of: HashMap<Pid, u32>,
    /// The root of the tree's own cgroup namespace in each hierarchy, by
    /// name; none when it has none.
    ns_roots: Option<HashMap<String, String>>,
    /// `--cgroup-root` at the dump: where the walk of the saved cgroups
    /// begins when it is above the tasks' cgroups.
    walk_roots: Vec<CgRoot>,
}

/// The root of `root`'s cgroup namespace in each hierarchy: its paths seen
/// from outside, less the same paths seen from inside.
fn ns_roots(root: Pid) -> Result<HashMap<String, String>> {
    let outer = read_set(root, &format!("/proc/{root}/cgroup"))?;
    let inner = crate::task::in_namespace_of(
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
    pub(crate) fn read(root: Pid, tasks: &[(Pid, Vec<Pid>)]) -> Result<Sets> {
        let me = nix::unistd::getpid();
        let mut s = Sets {
            sets: vec![read_set(me, "/proc/self/cgroup")?],
            of: HashMap::new(),
            ns_roots: if crate::ns::own_cgroup(root) {
                Some(ns_roots(root)?)
            } else {
                None
            },
            walk_roots: Vec::new(),
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
                        if !under_root(path, base) {
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

    /// The cgroups of the tree's tasks in each hierarchy of `names`, and
    /// those below them, with their properties: not the engine's own, not
    /// a hierarchy's root (the host's).
    fn dirs(&self, names: &[&str]) -> Result<HashMap<String, Vec<CgroupDirEntry>>> {
        let me = nix::unistd::getpid();
        let mounts = crate::proc::parsed(me, "/proc/self/mountinfo", crate::ns::mnt::parse)?;
        let mine: &[(String, String)] = self.sets.first().map_or(&[], Vec::as_slice);
        let mut out = HashMap::new();
        for &name in names {
            let Some(top) = mount_of(&mounts, name) else {
                continue;
            };
            let mut paths: Vec<&str> = self
                .sets
                .iter()
                .skip(1)
                .flat_map(|s| s.iter().filter(|(n, _)| n == name).map(|(_, p)| p.as_str()))
                .filter(|p| *p != "/" && !mine.iter().any(|(n, q)| n == name && q == p))
                .collect();
            if let Some(r) = root_of(&self.walk_roots, name)
                && r.path != "/"
                && paths.iter().any(|p| under_root(p, &r.path))
            {
                paths.push(&r.path);
            }
            paths.sort_unstable();
            paths.dedup();
            // A cgroup below another one listed is walked with it.
            let tops: Vec<&str> = paths
                .iter()
                .copied()
                .filter(|p| !paths.iter().any(|q| q != p && under_root(p, q)))
                .collect();
            let mut dirs = Vec::new();
            for p in tops {
                dirs_below(
                    name,
                    &Path::new(top).join(p.trim_start_matches('/')),
                    p,
                    &mut dirs,
                );
            }
            out.insert(name.to_owned(), dirs);
        }
        Ok(out)
    }

    /// `--cgroup-root` at the dump: the cgroups saved begin at `roots`
    /// where those hold the tasks' cgroups (empty cgroups between a
    /// container's and its tasks' come back with their properties).
    pub(crate) fn walk_from(&mut self, roots: &[CgRoot]) {
        self.walk_roots = roots.to_vec();
    }

    /// The set id of task or thread `tid`.
    pub(crate) fn of(&self, tid: Pid) -> Option<u32> {
        self.of.get(&tid).copied()
    }

    /// Write `cgroup.img`, unless every task is in the engine's set and
    /// the tree has no cgroup namespace of its own.
    pub(crate) fn write(&self, dir: &Dir) -> Result<()> {
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
        let mut dirs = self.dirs(&names)?;
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
                    dirs: dirs.remove(n).unwrap_or_default(),
                    // Every v1 hierarchy has a tasks file.
                    is_threaded: Some(!n.is_empty()),
                })
                .collect(),
        };
        dir.write_all(img::CGROUP, 0, &[entry])
    }
}

/// What the restore does with the cgroups in the images (CRIU's
/// `--manage-cgroups` modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Leave them: the tree stays where the engine is.
    Ignore,
    /// Join them; they must exist; no property is written (CRIU's `none`).
    Existing,
    /// Join them; they must exist; their properties are written.
    Props,
    /// Join them, making the missing ones, whose properties are written
    /// (CRIU's default).
    #[default]
    Soft,
    /// Join them, making the missing ones; every one's properties are
    /// written.
    Full,
    /// As `Full`, but a cgroup that exists already fails the restore.
    Strict,
}

impl Mode {
    /// CRIU's mode names (`--manage-cgroups[=MODE]`).
    pub fn from_criu(name: &str) -> std::result::Result<Mode, String> {
        match name {
            "" | "soft" | "default" => Ok(Mode::Soft),
            "ignore" => Ok(Mode::Ignore),
            "none" => Ok(Mode::Existing),
            "props" => Ok(Mode::Props),
            "full" => Ok(Mode::Full),
            "strict" => Ok(Mode::Strict),
            other => Err(format!(
                "{other:?} is not a cgroup mode (soft, ignore, full, strict, props, none)"
            )),
        }
    }

    /// Whether missing cgroups are made.
    fn makes(self) -> bool {
        matches!(self, Mode::Soft | Mode::Full | Mode::Strict)
    }

    /// Whether the properties of a cgroup are written (`made`: the restore
    /// made it).
    fn writes_props(self, made: bool) -> bool {
        match self {
            Mode::Ignore | Mode::Existing => false,
            Mode::Soft => made,
            Mode::Props | Mode::Full | Mode::Strict => true,
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
pub(crate) struct Joins {
    fds: Vec<OwnedFd>,
    by_set: HashMap<u32, Vec<RawFd>>,
    /// The tree had a cgroup namespace of its own: its root task makes one
    /// again, once in the cgroups of [`Joins::ns_root`].
    pub new_ns: bool,
    /// `cgroup.procs` of the root of the tree's cgroup namespace in each
    /// hierarchy (where that is not the engine's cgroup).
    pub ns_root: Vec<RawFd>,
    /// The files a thread of each set is moved in by its TID (v1 `tasks`,
    /// v2 `cgroup.threads`), for threads in other cgroups than their
    /// process.
    thread_files: HashMap<u32, Vec<PathBuf>>,
    /// The cgroups made, parents first: removed again unless the restore
    /// [keeps](Joins::keep) them.
    made: Vec<PathBuf>,
    kept: bool,
}

impl Joins {
    /// The fds a task of set `id` writes "0" to.
    pub(crate) fn of(&self, id: Option<u32>) -> Vec<RawFd> {
        id.and_then(|i| self.by_set.get(&i))
            .cloned()
            .unwrap_or_default()
    }

    /// Move thread `tid` (the engine's number) into the cgroups of set
    /// `id`, one hierarchy after the other.
    pub(crate) fn move_thread(&self, tid: Pid, id: u32) -> Result<()> {
        for f in self.thread_files.get(&id).map_or(&[][..], Vec::as_slice) {
            std::fs::write(f, tid.as_raw().to_string()).map_err(cg_err(
                f,
                "moving a thread into it",
                " (a v2 cgroup takes threads only when threaded: cgroup.type)",
            ))?;
        }
        Ok(())
    }

    /// The highest fd held, if any.
    pub(crate) fn last(&self) -> Option<RawFd> {
        self.fds.iter().map(std::os::fd::AsRawFd::as_raw_fd).max()
    }

    /// The restore succeeded: the cgroups made stay.
    pub(crate) fn keep(mut self) {
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
pub(crate) struct Remap {
    /// The root task's cgroup in each hierarchy: (name, path).
    bases: Vec<(String, String)>,
    roots: Vec<CgRoot>,
}

impl Remap {
    /// The remapping of the tree in `dir` whose root task is in set
    /// `root_set`, under `roots` (none: nothing moves).
    pub(crate) fn new(
        dir: &Dir,
        mode: Mode,
        roots: &[CgRoot],
        root_set: Option<u32>,
    ) -> Result<Remap> {
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
    pub(crate) fn mount_root(&self, fstype: &str, options: &str, root: &str) -> String {
        let opts: Vec<&str> = options.split(',').collect();
        let hierarchy = self.bases.iter().find(|(n, _)| {
            if fstype == "cgroup2" {
                n.is_empty()
            } else {
                !n.is_empty() && n.split(',').all(|c| opts.contains(&c))
            }
        });
        match hierarchy {
            Some((name, _)) => self.path(name, root),
            None => root.to_owned(),
        }
    }

    /// Where cgroup `path` of hierarchy `name` goes: the part below the
    /// root task's cgroup moves under `--cgroup-root`.
    pub(crate) fn path(&self, name: &str, path: &str) -> String {
        let base = self
            .bases
            .iter()
            .find(|(n, _)| n == name)
            .map_or("/", |(_, b)| b.as_str());
        rewrite(path, name, base, &self.roots)
    }
}

/// The properties saved of a cgroup of hierarchy `name` ("" for v2): CRIU's
/// lists for v1, and for v2 its global files and, beyond CRIU, the
/// controllers' limits. In the order a restore writes them.
fn props_of(name: &str) -> Vec<&'static str> {
    if name.is_empty() {
        return vec![
            // First: a threaded cgroup (its threads' own) is made so
            // before anything else of it.
            "cgroup.type",
            "cgroup.subtree_control",
            "cgroup.max.descendants",
            "cgroup.max.depth",
            "cpuset.cpus",
            "cpuset.mems",
            "cpu.max",
            "cpu.weight",
            "memory.min",
            "memory.low",
            "memory.high",
            "memory.max",
            "memory.swap.max",
            "pids.max",
            "io.weight",
        ];
    }
    let mut out = vec!["cgroup.clone_children", "notify_on_release"];
    for c in name.split(',') {
        out.extend_from_slice(match c {
            "cpu" => &[
                "cpu.shares",
                "cpu.cfs_period_us",
                "cpu.cfs_quota_us",
                "cpu.rt_period_us",
                "cpu.rt_runtime_us",
            ][..],
            "memory" => &[
                "memory.use_hierarchy",
                "memory.limit_in_bytes",
                "memory.memsw.limit_in_bytes",
                "memory.swappiness",
                "memory.soft_limit_in_bytes",
                "memory.move_charge_at_immigrate",
                "memory.oom_control",
            ][..],
            "cpuset" => &[
                "cpuset.cpus",
                "cpuset.mems",
                "cpuset.memory_migrate",
                "cpuset.cpu_exclusive",
                "cpuset.mem_exclusive",
                "cpuset.mem_hardwall",
                "cpuset.memory_spread_page",
                "cpuset.memory_spread_slab",
                "cpuset.sched_load_balance",
                "cpuset.sched_relax_domain_level",
            ][..],
            "blkio" => &["blkio.weight"][..],
            "net_cls" => &["net_cls.classid"][..],
            "pids" => &["pids.max"][..],
            _ => &[][..],
        });
    }
    out
}

/// The value of property `prop` as read, as a restore writes it back.
fn prop_value(prop: &str, read: &str) -> String {
    let v = read.trim_end();
    match prop {
        // Only the switch is written back.
        "memory.oom_control" => v
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill_disable "))
            .unwrap_or("0")
            .to_owned(),
        _ => v.to_owned(),
    }
}

/// Cgroup `at` (path `rel` in its hierarchy `name`) and the cgroups below
/// it, parents first, with their properties and permissions.
fn dirs_below(name: &str, at: &Path, rel: &str, out: &mut Vec<CgroupDirEntry>) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(at) else {
        return;
    };
    let properties = props_of(name)
        .into_iter()
        .filter_map(|p| {
            let v = std::fs::read_to_string(at.join(p)).ok()?;
            Some(CgroupPropEntry {
                name: p.to_owned(),
                value: prop_value(p, &v),
                perms: None,
            })
        })
        .collect();
    out.push(CgroupDirEntry {
        dir_name: rel.to_owned(),
        children: Vec::new(),
        properties,
        dir_perms: Some(CgroupPerms {
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
        }),
    });
    let Ok(rd) = std::fs::read_dir(at) else {
        return;
    };
    let mut kids: Vec<String> = rd
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .collect();
    kids.sort();
    for k in kids {
        dirs_below(
            name,
            &at.join(&k),
            &format!("{}/{k}", rel.trim_end_matches('/')),
            out,
        );
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
/// The `--cgroup-root` for hierarchy `name`: the one naming a controller
/// of it, else the one for all.
fn root_of<'a>(roots: &'a [CgRoot], name: &str) -> Option<&'a CgRoot> {
    roots
        .iter()
        .find(|r| {
            r.ctrl
                .as_deref()
                .is_some_and(|c| name.split(',').any(|n| n == c))
        })
        .or_else(|| roots.iter().find(|r| r.ctrl.is_none()))
}

fn rewrite(path: &str, name: &str, base: &str, roots: &[CgRoot]) -> String {
    let Some(r) = root_of(roots, name) else {
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

/// The cgroup sets of the images, and where their cgroups go.
struct SavedSets<'a> {
    entry: &'a CgroupEntry,
    remap: &'a Remap,
}

impl SavedSets<'_> {
    /// Set `id`, which a task or thread (`who`) is in.
    fn get(&self, id: u32, who: &str) -> Result<&CgSetEntry> {
        self.entry.sets.iter().find(|s| s.id == id).ok_or_else(|| {
            img::CGROUP.bad(
                0,
                format!("a {who} is in cgroup set {id}, which it does not list"),
            )
        })
    }

    /// For each set the `tasks` are in, the `cgroup.procs` of its cgroups,
    /// opened at fds the tasks inherit.
    fn task_fds(&self, at: &mut Opener<'_>, tasks: &[u32]) -> Result<HashMap<u32, Vec<RawFd>>> {
        let mut wanted: Vec<u32> = tasks.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        let mut by_set = HashMap::new();
        for id in wanted {
            let mut fds = Vec::new();
            for m in &self.get(id, "task")?.ctls {
                let path = self.remap.path(&m.name, &m.path);
                fds.extend(at.open(&m.name, &path)?);
            }
            by_set.insert(id, fds);
        }
        Ok(by_set)
    }

    /// For each set the `threads` are in, the files a thread is moved to
    /// its cgroups by (`cgroup.threads` in v2, `tasks` in v1).
    fn thread_files(
        &self,
        at: &mut Opener<'_>,
        threads: &[u32],
    ) -> Result<HashMap<u32, Vec<PathBuf>>> {
        let mut threads: Vec<u32> = threads.to_vec();
        threads.sort_unstable();
        threads.dedup();
        let mut out = HashMap::new();
        for id in threads {
            let mut files = Vec::new();
            for m in &self.get(id, "thread")?.ctls {
                let dir = at.place(&m.name, &self.remap.path(&m.name, &m.path))?;
                files.push(dir.join(if m.name.is_empty() {
                    "cgroup.threads"
                } else {
                    "tasks"
                }));
            }
            out.insert(id, files);
        }
        Ok(out)
    }
}

/// What [`prepare`] needs to open a cgroup's `cgroup.procs`.
struct Opener<'a> {
    mode: Mode,
    mine: Set,
    mounts: Vec<crate::ns::mnt::Mount>,
    opened: HashMap<PathBuf, RawFd>,
    joins: &'a mut Joins,
    first: RawFd,
}

impl Opener<'_> {
    /// Where hierarchy `name` (of cgroup `path`) is mounted here.
    fn top(&self, name: &str, path: &str) -> Result<PathBuf> {
        let shown = if name.is_empty() { "cgroup2" } else { name };
        mount_of(&self.mounts, name)
            .map(PathBuf::from)
            .ok_or_else(|| Error::Unsupported {
                pid: nix::unistd::getpid(),
                what: format!(
                    "cgroup {path} of hierarchy {shown}, which is not mounted here (mount it, \
                     or restore with --manage-cgroups=ignore)"
                ),
            })
    }

    /// Cgroup `at` (under hierarchy mount `top`, of hierarchy `name`)
    /// there as the mode wants it: made when missing, refused when it
    /// must not exist yet or must exist already.
    fn ensure(&mut self, top: &Path, at: &Path, name: &str) -> Result<()> {
        if at.is_dir() {
            if self.mode == Mode::Strict && !self.joins.made.iter().any(|m| m == at) {
                return Err(Error::Cgroup {
                    path: at.display().to_string(),
                    what: "it exists already",
                    err: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
                    hint: " (--manage-cgroups=strict restores into new cgroups only)",
                });
            }
            return Ok(());
        }
        if !self.mode.makes() {
            return Err(Error::Cgroup {
                path: at.display().to_string(),
                what: "it is missing",
                err: std::io::Error::from(std::io::ErrorKind::NotFound),
                hint: " (--manage-cgroups=none and props join existing cgroups only)",
            });
        }
        make(
            top,
            at,
            name.split(',').any(|c| c == "cpuset"),
            &mut self.joins.made,
        )
    }

    /// Make or check cgroup `d` of hierarchy `name` (its path rewritten
    /// to `path`), then write its properties and permissions where the
    /// mode wants them.
    fn dir(&mut self, name: &str, path: &str, d: &CgroupDirEntry) -> Result<()> {
        let at = self.place(name, path)?;
        let made = self.joins.made.contains(&at);
        if !self.mode.writes_props(made) {
            return Ok(());
        }
        if let Some(p) = &d.dir_perms
            && made
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&at, std::fs::Permissions::from_mode(p.mode & 0o7777))
                .map_err(cg_err(&at, "setting its mode", ""))?;
            std::os::unix::fs::chown(&at, Some(p.uid), Some(p.gid)).map_err(cg_err(
                &at,
                "setting its owner",
                "",
            ))?;
        }
        for prop in &d.properties {
            write_prop(&at, &prop.name, &prop.value)?;
        }
        Ok(())
    }

    /// `cgroup.procs` of cgroup `path` of hierarchy `name`, made if
    /// missing and kept open at an fd from `first` up; none when it is the
    /// engine's own (the tasks inherit it).
    /// Where cgroup `path` of hierarchy `name` is here, made if the mode
    /// makes missing ones.
    fn place(&mut self, name: &str, path: &str) -> Result<PathBuf> {
        let top = self.top(name, path)?;
        let at = top.join(path.trim_start_matches('/'));
        self.ensure(&top, &at, name)?;
        Ok(at)
    }

    fn open(&mut self, name: &str, path: &str) -> Result<Option<RawFd>> {
        if self.mine.iter().any(|(n, p)| n == name && p == path) {
            return Ok(None);
        }
        let at = self.place(name, path)?;
        if let Some(&fd) = self.opened.get(&at) {
            return Ok(Some(fd));
        }
        let procs = at.join("cgroup.procs");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&procs)
            .map_err(cg_err(&at, "opening cgroup.procs", ""))?;
        let low = self.first.max(self.joins.last().map_or(0, |l| l + 1));
        let fd = kernel::fd::dup_at_least(f.as_fd(), low).map_err(|e| Error::Cgroup {
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

/// Write property `name` of cgroup `at` with `value` as dumped. A property
/// this kernel does not have is reported and left.
fn write_prop(at: &Path, name: &str, value: &str) -> Result<()> {
    if name == "cgroup.type" && value != "threaded" {
        // "domain threaded" and the rest follow from the children.
        return Ok(());
    }
    let v = match name {
        // Controllers are enabled one by one.
        "cgroup.subtree_control" => value
            .split_whitespace()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(" "),
        _ => value.to_owned(),
    };
    if v.is_empty() {
        return Ok(());
    }
    let file = at.join(name);
    if std::fs::read_to_string(&file).is_ok_and(|now| prop_value(name, &now) == value) {
        return Ok(());
    }
    match std::fs::write(&file, &v) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(cgroup = %at.display(), property = name, "cgroup property not restored: this kernel has none");
            Ok(())
        }
        r => r.map_err(|err| Error::Cgroup {
            path: at.display().to_string(),
            what: "writing a property",
            err: std::io::Error::new(err.kind(), format!("{name} = {v}: {err}")),
            hint: "",
        }),
    }
}

/// The part of `path` (of member `m`) that is the root of the tree's
/// cgroup namespace, if the member says it has one.
fn ns_root_of(m: &CgMemberEntry) -> Option<&str> {
    let n = usize::try_from(m.cgns_prefix?).ok().filter(|&n| n > 0)?;
    m.path.get(..n)
}

/// Prepare the tasks' joins: each set's cgroups made where missing and
/// their `cgroup.procs` opened at fds from `first` up, where `remap` puts
/// them. `tasks` are the set ids of the live tasks; `root_set` the root
/// task's.
pub(crate) fn prepare(
    dir: &Dir,
    mode: Mode,
    remap: &Remap,
    root_set: Option<u32>,
    tasks: &[u32],
    threads: &[u32],
    first: RawFd,
) -> Result<Joins> {
    let mut joins = Joins::default();
    if !dir.exists(img::CGROUP, 0) {
        return Ok(joins);
    }
    let entry: CgroupEntry = dir.read_one(img::CGROUP, 0)?;
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
        mode,
        mine: read_set(me, "/proc/self/cgroup")?,
        mounts: crate::proc::parsed(me, "/proc/self/mountinfo", crate::ns::mnt::parse)?,
        opened: HashMap::new(),
        joins: &mut joins,
        first,
    };
    // The saved cgroups, parents first, with their properties.
    for c in &entry.controllers {
        let name = c.cnames.join(",");
        for d in &c.dirs {
            let path = remap.path(&name, &d.dir_name);
            at.dir(&name, &path, d)?;
        }
    }
    let mut ns_root = Vec::new();
    for m in &root_members {
        if let Some(r) = ns_root_of(m) {
            let path = remap.path(&m.name, r);
            ns_root.extend(at.open(&m.name, &path)?);
        }
    }
    let sets = SavedSets {
        entry: &entry,
        remap,
    };
    let by_set = sets.task_fds(&mut at, tasks)?;
    let thread_files = sets.thread_files(&mut at, threads)?;
    joins.ns_root = ns_root;
    joins.by_set = by_set;
    joins.thread_files = thread_files;
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
    fn properties_and_modes_follow_criu() {
        assert_eq!(
            prop_value("memory.oom_control", "oom_kill_disable 1\nunder_oom 0\n"),
            "1"
        );
        assert_eq!(prop_value("pids.max", "77\n"), "77");
        assert!(props_of("").contains(&"memory.max"));
        assert!(props_of("cpu,cpuacct").contains(&"cpu.cfs_quota_us"));
        assert_eq!(Mode::from_criu("none"), Ok(Mode::Existing));
        assert!(Mode::Soft.writes_props(true) && !Mode::Soft.writes_props(false));
        assert!(Mode::Full.writes_props(false) && !Mode::Existing.writes_props(true));
        assert!(Mode::Strict.makes() && !Mode::Props.makes());
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

/// Freeze cgroup `dir`, seize and interrupt every thread in it, thaw it:
/// the threads seized, each stopping as soon as it runs.
pub(crate) fn seize_frozen(
    dir: &std::path::Path,
    timeout: std::time::Duration,
) -> Result<std::collections::BTreeSet<Pid>> {
    let frozen = Frozen::freeze(dir, timeout)?;
    let mut pre = std::collections::BTreeSet::new();
    let res = frozen.threads().and_then(|tids| {
        for tid in tids {
            let tgid = crate::proc::status(tid, None)
                .ok()
                .and_then(|s| s.get("Tgid").and_then(|v| v.parse().ok()))
                .map_or(tid, Pid::from_raw);
            let seccomp = crate::task::seccomp::mode_of(tgid, tid).unwrap_or(0);
            if crate::task::seize::seize_only(tgid, tid, seccomp)? {
                pre.insert(tid);
            }
        }
        Ok(())
    });
    // Thawed either way (dropped on failure); the seized ones stop at once.
    let res = res.and_then(|()| frozen.thaw());
    if let Err(e) = res {
        crate::task::seize::let_go(&pre);
        return Err(e);
    }
    Ok(pre)
}
