//! PID namespaces: the IDs a tree's tasks and threads have in each PID
//! namespace from its root's inward (`NSpid:` of /proc/PID/status, read
//! through the engine's /proc, which shows every level from its own). The
//! images name tasks by their IDs in the root's namespace (CRIU's
//! `pstree_entry`); IDs in deeper, nested namespaces go in stasis' own
//! fields of it. A root in a PID namespace of its own must be its init
//! (PID 1); the restore then forks it with CLONE_NEWPID and every task with
//! a clone3 `set_tid` array of its IDs at every level of the tree. The
//! engine keeps driving the tasks by the IDs its own /proc shows
//! ([`HostIds`]).

use std::collections::HashMap;

use nix::unistd::Pid;

use crate::error::{EngineError as Error, Result};

/// The IDs of a thread, from the root's namespace inward.
pub type Chain = Vec<u32>;

fn link(pid: Pid, tid: Option<Pid>, ns: &str) -> Option<std::path::PathBuf> {
    let p = match tid {
        Some(t) => format!("/proc/{pid}/task/{t}/ns/{ns}"),
        None => format!("/proc/{pid}/ns/{ns}"),
    };
    std::fs::read_link(p).ok()
}

/// `NSpid` of thread `tid` of `pid` as the engine's /proc shows it.
pub fn nspid(pid: Pid, tid: Pid) -> Result<Vec<u32>> {
    let st = crate::proc::status(pid, Some(tid))?;
    let ids: Option<Vec<u32>> = st
        .get("NSpid")
        .map(|v| v.split_whitespace().map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| Some(vec![tid.as_raw().cast_unsigned()]));
    ids.filter(|v| !v.is_empty()).ok_or(Error::ProcFormat {
        pid,
        file: format!("task/{tid}/status"),
    })
}

/// The dumped tree's IDs, by the engine's.
#[derive(Debug, Default)]
pub struct Ids {
    /// Engine TID -> IDs from the root's namespace inward.
    chains: HashMap<i32, Chain>,
    /// Engine PID -> what `stasis_pidns_for_children` records.
    for_children: HashMap<i32, u32>,
    /// Engine PID -> its process group and session in the root's
    /// namespace (`NSpgid`, `NSsid`: right also for a leader that is gone).
    groups: HashMap<i32, (u32, u32)>,
}

impl Ids {
    /// Read the IDs of every thread of `tasks` ((pid, tids), the root
    /// first); refuse a root in a namespace of its own that is not its init.
    pub fn read(tasks: &[(Pid, Vec<Pid>)]) -> Result<Ids> {
        let Some((root, _)) = tasks.first() else {
            return Ok(Ids::default());
        };
        let root = *root;
        let me = nix::unistd::getpid();
        let own = link(root, None, "pid") != link(me, None, "pid");
        let root_ids = nspid(root, root)?;
        if own && root_ids.last() != Some(&1) {
            return Err(Error::Unsupported {
                pid: root,
                what: format!(
                    "a PID namespace of its own whose init is not in the tree (the root is PID \
                     {} there); dump from the namespace's init",
                    root_ids.last().copied().unwrap_or(0)
                ),
            });
        }
        let level = root_ids.len() - 1;
        let mut ids = Ids::default();
        let mut inits: HashMap<std::path::PathBuf, u32> = HashMap::new();
        for (pid, tids) in tasks {
            let tids: &[Pid] = if tids.is_empty() {
                std::slice::from_ref(pid)
            } else {
                tids
            };
            let st = crate::proc::status(*pid, None)?;
            let at_level =
                |k: &str| -> Option<u32> { st.get(k)?.split_whitespace().nth(level)?.parse().ok() };
            if let (Some(g), Some(s)) = (at_level("NSpgid"), at_level("NSsid")) {
                ids.groups.insert(pid.as_raw(), (g, s));
            }
            for &tid in tids {
                let all = nspid(*pid, tid)?;
                let chain = all.get(level..).map(<[u32]>::to_vec).unwrap_or_default();
                if chain.is_empty() {
                    return Err(Error::Unsupported {
                        pid: *pid,
                        what: "a task outside its root's PID namespace".into(),
                    });
                }
                if tid == *pid
                    && chain.last() == Some(&1)
                    && let Some(ns) = link(*pid, None, "pid")
                {
                    inits.insert(ns, chain[0]);
                }
                ids.chains.insert(tid.as_raw(), chain);
            }
        }
        for (pid, _) in tasks {
            let (mine, children) = (
                link(*pid, None, "pid"),
                link(*pid, None, "pid_for_children"),
            );
            if let Some(c) = children
                && Some(&c) != mine.as_ref()
            {
                ids.for_children
                    .insert(pid.as_raw(), inits.get(&c).copied().unwrap_or(0));
            }
        }
        Ok(ids)
    }

    /// The ID the images give engine TID `tid` (itself when unknown: a
    /// process outside the tree).
    pub fn image(&self, tid: Pid) -> u32 {
        self.chains
            .get(&tid.as_raw())
            .and_then(|c| c.first().copied())
            .unwrap_or(tid.as_raw().cast_unsigned())
    }

    /// The IDs of `tid` in namespaces nested below the root's.
    pub fn nested(&self, tid: Pid) -> Vec<u32> {
        self.chains
            .get(&tid.as_raw())
            .map(|c| c.get(1..).unwrap_or_default().to_vec())
            .unwrap_or_default()
    }

    /// Whether any thread is in a namespace nested below the root's.
    pub fn has_nested(&self) -> bool {
        self.chains.values().any(|c| c.len() > 1)
    }

    /// The process group and session of engine PID `pid` in the images.
    pub fn group(&self, pid: Pid) -> Option<(u32, u32)> {
        self.groups.get(&pid.as_raw()).copied()
    }

    /// `stasis_pidns_for_children` of engine PID `pid`.
    pub fn for_children(&self, pid: Pid) -> Option<u32> {
        self.for_children.get(&pid.as_raw()).copied()
    }
}

/// Restore: the engine's IDs of the restored tree's threads, by their IDs
/// in the root's namespace. Empty (every ID its own) when the tree shares
/// the engine's namespace.
#[derive(Debug, Default)]
pub struct HostIds {
    map: std::sync::RwLock<HashMap<u32, Pid>>,
    /// The level of the root's namespace in the engine's /proc.
    root_level: std::sync::atomic::AtomicUsize,
}

impl HostIds {
    /// The engine's ID of image ID `id`.
    pub fn get(&self, id: u32) -> Pid {
        self.map
            .read()
            .ok()
            .and_then(|m| m.get(&id).copied())
            .unwrap_or(Pid::from_raw(id.cast_signed()))
    }

    /// Learn every process of the tree under engine PID `root` (forked into
    /// a namespace of its own, whose level in the engine's /proc is
    /// `level`): walk the children from /proc.
    pub fn learn_tree(&self, root: Pid) -> Result<()> {
        let level = nspid(root, root)?.len() - 1;
        self.root_level
            .store(level, std::sync::atomic::Ordering::Relaxed);
        let mut todo = vec![root];
        let mut found = HashMap::new();
        while let Some(p) = todo.pop() {
            let ids = nspid(p, p)?;
            if let Some(&id) = ids.get(level) {
                found.insert(id, p);
            }
            for t in crate::proc::threads(p)? {
                let path = format!("/proc/{p}/task/{t}/children");
                if let Ok(s) = std::fs::read_to_string(&path) {
                    todo.extend(
                        s.split_whitespace()
                            .filter_map(|c| c.parse().ok())
                            .map(Pid::from_raw),
                    );
                }
            }
        }
        if let Ok(mut m) = self.map.write() {
            m.extend(found);
        }
        Ok(())
    }

    /// Learn thread `id` (its ID in the root's namespace is `id`) of the
    /// task whose engine PID is `pid`.
    pub fn learn_thread(&self, pid: Pid, id: u32) -> Result<Pid> {
        let level = self.root_level.load(std::sync::atomic::Ordering::Relaxed);
        for t in crate::proc::threads(pid)? {
            if nspid(pid, t)?.get(level) == Some(&id) {
                if let Ok(mut m) = self.map.write() {
                    m.insert(id, t);
                }
                return Ok(t);
            }
        }
        Err(Error::NoSuchTask {
            pid: Pid::from_raw(id.cast_signed()),
        })
    }

    /// Whether the tree has IDs of its own.
    pub fn is_empty(&self) -> bool {
        self.map.read().map(|m| m.is_empty()).unwrap_or(true)
    }
}
