//! The visible state of a test's process tree, read from outside through
//! /proc before dump and after restore: tree shape, credentials and signal
//! masks, fds with their targets, flags and offsets, and memory maps. Kernel
//! object numbers (pipe and socket inodes) are replaced by the order of first
//! appearance, so equal sharing compares equal while numbers may change.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

/// One process as seen from /proc.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcState {
    /// Parent, process group and session ids (as numbers seen by the runner).
    pub ids: (i32, i32, i32),
    /// `Z` for zombies, `T` for stopped or traced, `-` for anything else.
    pub run: char,
    /// Command name.
    pub comm: String,
    /// `/proc/PID/status` fields that a restore must bring back exactly.
    pub status: Vec<(String, String)>,
    /// fd number -> (target, flags, pos).
    pub fds: BTreeMap<i32, (String, String, String)>,
    /// Merged map ranges (`start-end perms offset path`).
    pub maps: Vec<String>,
    /// `/proc/PID/cgroup`: the cgroup of each hierarchy.
    pub cgroup: String,
}

/// The state of every process in a test's tree.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// pid -> its state.
    pub procs: BTreeMap<i32, ProcState>,
}

const STATUS_KEYS: &[&str] = &[
    "Umask",
    "Uid",
    "Gid",
    "Groups",
    "Threads",
    "SigBlk",
    "SigIgn",
    "SigCgt",
    "CapInh",
    "CapPrm",
    "CapEff",
    "CapBnd",
    "CapAmb",
    "NoNewPrivs",
    "Seccomp",
    "Seccomp_filters",
];

/// Every pid of the tree rooted at `root` (root first, then depth first).
pub fn tree(root: i32) -> Vec<i32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let pid = out[i];
        i += 1;
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let path = t.path().join("children");
            let Ok(kids) = std::fs::read_to_string(path) else {
                continue;
            };
            for k in kids.split_whitespace().filter_map(|k| k.parse().ok()) {
                if !out.contains(&k) {
                    out.push(k);
                }
            }
        }
    }
    out
}

/// Read the state of the tree rooted at `root`. With `shape_only` (for
/// transition tests, whose state moves on its own) only the root process's
/// fd numbers and targets are recorded.
pub fn snapshot(root: i32, shape_only: bool) -> Snapshot {
    let pids = if shape_only { vec![root] } else { tree(root) };
    // PIDs as the root's PID namespace numbers them (the runner's own when
    // the test shares it): the ns flavors come back with other outer PIDs.
    let nspid = |pid: i32| -> Vec<i32> {
        let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        crate::testlib::status_field(&st, "NSpid")
            .map(|v| {
                v.split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let level = nspid(root).len().saturating_sub(1);
    let inner: HashMap<i32, i32> = pids
        .iter()
        .filter_map(|&p| nspid(p).get(level).map(|&v| (p, v)))
        .collect();
    let map = |p: i32| inner.get(&p).copied().unwrap_or(p);
    let mut inodes: HashMap<String, usize> = HashMap::new();
    let mut procs = BTreeMap::new();
    for pid in pids {
        let Some(mut p) = read_proc(pid, &mut inodes) else {
            continue;
        };
        if shape_only {
            // The test library reads /proc/self/status before each fork
            // (it forks single-threaded only): a test that forks on its own
            // has that fd open now and then, at a dump or not. In a PID
            // namespace of its own the link names it by its PID there.
            let own = [pid, map(pid)].map(|p| format!("/proc/{p}/status"));
            p = ProcState {
                fds: p
                    .fds
                    .into_iter()
                    .filter(|(_, (t, _, _))| !own.contains(t))
                    .map(|(n, (t, _, _))| (n, (t, String::new(), String::new())))
                    .collect(),
                ..ProcState::default()
            };
        }
        // Group and session as the namespace numbers them, also when their
        // leader is gone (then not in the map).
        let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let at = |k: &str| -> Option<i32> {
            crate::testlib::status_field(&st, k)?
                .split_whitespace()
                .nth(level)?
                .parse()
                .ok()
        };
        p.ids = (
            map(p.ids.0),
            at("NSpgid").unwrap_or_else(|| map(p.ids.1)),
            at("NSsid").unwrap_or_else(|| map(p.ids.2)),
        );
        procs.insert(map(pid), p);
    }
    Snapshot { procs }
}

fn read_proc(pid: i32, inodes: &mut HashMap<String, usize>) -> Option<ProcState> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head
        .split_once('(')
        .map(|(_, c)| c.to_owned())
        .unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse().ok()).unwrap_or(-1);
    let run = match f.first().copied() {
        Some("Z") => 'Z',
        Some("T" | "t") => 'T',
        _ => '-',
    };
    let status_text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let status = STATUS_KEYS
        .iter()
        .filter_map(|k| {
            crate::testlib::status_field(&status_text, k).map(|v| {
                (
                    (*k).to_owned(),
                    v.split_whitespace().collect::<Vec<_>>().join(" "),
                )
            })
        })
        .collect();
    let mut fds = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        let mut nums: Vec<i32> = dir
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        nums.sort_unstable();
        for n in nums {
            let Ok(target) = std::fs::read_link(format!("/proc/{pid}/fd/{n}")) else {
                continue;
            };
            let target = normalize_target(&target.to_string_lossy(), inodes);
            let info =
                std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{n}")).unwrap_or_default();
            let field = |k: &str| crate::testlib::status_field(&info, k).unwrap_or_default();
            fds.insert(n, (target, field("flags"), field("pos")));
        }
    }
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map(|m| merge_maps(&m))
        .unwrap_or_default();
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    Some(ProcState {
        ids: (num(1), num(2), num(3)),
        run,
        comm,
        status,
        fds,
        maps,
        cgroup,
    })
}

/// `pipe:[1234]` -> `pipe:#0` (index of first appearance); the same for
/// pty slaves (`/dev/pts/3` -> `/dev/pts/#1`): a restored pty gets its old
/// index only if no other process took it meanwhile.
fn normalize_target(t: &str, inodes: &mut HashMap<String, usize>) -> String {
    if let Some(n) = t.strip_prefix("/dev/pts/")
        && !n.is_empty()
        && n.bytes().all(|b| b.is_ascii_digit())
    {
        let next = inodes.len();
        let idx = *inodes.entry(t.to_owned()).or_insert(next);
        return format!("/dev/pts/#{idx}");
    }
    if let Some((kind, rest)) = t.split_once(":[")
        && rest.ends_with(']')
        && rest[..rest.len() - 1].bytes().all(|b| b.is_ascii_digit())
    {
        let n = inodes.len();
        let idx = *inodes.entry(t.to_owned()).or_insert(n);
        return format!("{kind}:#{idx}");
    }
    t.to_owned()
}

/// Merge adjacent maps lines that the kernel may split or join differently
/// after a restore (same protection and path, contiguous file offsets).
fn merge_maps(text: &str) -> Vec<String> {
    struct R {
        start: u64,
        end: u64,
        perms: String,
        off: u64,
        path: String,
    }
    let mut out: Vec<R> = Vec::new();
    for l in text.lines() {
        let mut it = l.split_whitespace();
        let (Some(range), Some(perms), Some(off)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        let (_dev, _ino) = (it.next(), it.next());
        let path = it.collect::<Vec<_>>().join(" ");
        let Some((s, e)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end), Ok(off)) = (
            u64::from_str_radix(s, 16),
            u64::from_str_radix(e, 16),
            u64::from_str_radix(off, 16),
        ) else {
            continue;
        };
        if let Some(last) = out.last_mut()
            && last.end == start
            && last.perms == perms
            && last.path == path
            && (path.is_empty() || last.off + (last.end - last.start) == off)
        {
            last.end = end;
            continue;
        }
        out.push(R {
            start,
            end,
            perms: perms.to_owned(),
            off,
            path,
        });
    }
    out.into_iter()
        .map(|r| {
            format!(
                "{:x}-{:x} {} {:x} {}",
                r.start,
                r.end,
                r.perms,
                if r.path.is_empty() { 0 } else { r.off },
                r.path
            )
        })
        .collect()
}

/// Every difference between two snapshots, one line each (empty when equal).
pub fn diff(before: &Snapshot, after: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    for (pid, b) in &before.procs {
        let Some(a) = after.procs.get(pid) else {
            out.push(format!("pid {pid} ({}) is missing", b.comm));
            continue;
        };
        diff_proc(*pid, b, a, &mut out);
    }
    for (pid, a) in &after.procs {
        if !before.procs.contains_key(pid) {
            out.push(format!("pid {pid} ({}) is new", a.comm));
        }
    }
    out
}

fn diff_proc(pid: i32, b: &ProcState, a: &ProcState, out: &mut Vec<String>) {
    let mut line = |what: &str, x: &dyn std::fmt::Debug, y: &dyn std::fmt::Debug| {
        let y = format!("{y:?}");
        if y == "\"\"" {
            out.push(format!("pid {pid}: {what}: {x:?}"));
        } else {
            out.push(format!("pid {pid}: {what}: {x:?} -> {y}"));
        }
    };
    if b.ids != a.ids {
        line("ppid/pgid/sid", &b.ids, &a.ids);
    }
    if b.run != a.run {
        line("run state", &b.run, &a.run);
    }
    if b.comm != a.comm {
        line("comm", &b.comm, &a.comm);
    }
    for ((k, v), (_, w)) in b.status.iter().zip(&a.status) {
        if v != w {
            line(k, v, w);
        }
    }
    if b.status.len() != a.status.len() {
        line("status fields", &b.status.len(), &a.status.len());
    }
    for (n, f) in &b.fds {
        match a.fds.get(n) {
            None => line(&format!("fd {n}"), &f.0, &"closed"),
            Some(g) if g != f => {
                let mut s = String::new();
                for (what, x, y) in [
                    ("target", &f.0, &g.0),
                    ("flags", &f.1, &g.1),
                    ("pos", &f.2, &g.2),
                ] {
                    if x != y {
                        let _ = write!(s, " {what} {x} -> {y}");
                    }
                }
                line(&format!("fd {n}"), &s.trim(), &"");
            }
            Some(_) => {}
        }
    }
    for (n, g) in &a.fds {
        if !b.fds.contains_key(n) {
            line(&format!("fd {n}"), &"absent", &g.0);
        }
    }
    if b.cgroup != a.cgroup {
        line("cgroups", &b.cgroup.trim(), &a.cgroup.trim());
    }
    let missing: Vec<_> = b.maps.iter().filter(|m| !a.maps.contains(m)).collect();
    let extra: Vec<_> = a.maps.iter().filter(|m| !b.maps.contains(m)).collect();
    for m in missing.iter().take(5) {
        line("mapping lost", m, &"");
    }
    for m in extra.iter().take(5) {
        line("mapping added", m, &"");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_merge_adjacent_same_file() {
        let text = "1000-2000 r--p 00000000 08:01 12 /bin/x\n2000-3000 r--p 00001000 08:01 12 /bin/x\n3000-4000 rw-p 00000000 00:00 0\n4000-5000 rw-p 00000000 00:00 0\n";
        assert_eq!(
            merge_maps(text),
            vec!["1000-3000 r--p 0 /bin/x", "3000-5000 rw-p 0 "]
        );
    }

    #[test]
    fn targets_numbered_by_first_appearance() {
        let mut m = HashMap::new();
        assert_eq!(normalize_target("pipe:[77]", &mut m), "pipe:#0");
        assert_eq!(normalize_target("socket:[5]", &mut m), "socket:#1");
        assert_eq!(normalize_target("pipe:[77]", &mut m), "pipe:#0");
        assert_eq!(normalize_target("/tmp/x", &mut m), "/tmp/x");
        assert_eq!(
            normalize_target("anon_inode:[eventfd]", &mut m),
            "anon_inode:[eventfd]"
        );
    }
}
