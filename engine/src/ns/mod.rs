//! Namespaces of the tree's own: which ones a task has, and the order the
//! dump reads and the restore makes them in. UTS (host and domain name:
//! `uts`), IPC (its sysctls and objects: `ipc`), network (devices,
//! addresses, routes and sysctls: `net`). The dump reads them from a
//! thread that joins the namespace (setns affects that thread only); the
//! restore unshares them in the engine before it forks the tree, so every
//! task starts inside. The mount namespace and its mounts: [`mnt`]. Other
//! namespaces must be the engine's.

mod ipc;
pub mod mnt;
mod net;
pub mod pid;
mod time;
mod tmpfs;
pub mod user;
mod uts;

use nix::sched::{CloneFlags, unshare};
use nix::unistd::Pid;
use stasis_proto::images::{IpcVarEntry, UtsnsEntry};

use crate::error::{EngineError as Error, Result};
use crate::images::Dir;
use crate::images::img;

/// The id the images give the tree's namespaces (`utsns-1.img`, ...).
pub const NS_ID: u64 = 1;

fn link(pid: Option<Pid>, ns: &str) -> Option<std::path::PathBuf> {
    let who = pid.map_or_else(|| "self".to_owned(), |p| p.to_string());
    std::fs::read_link(format!("/proc/{who}/ns/{ns}")).ok()
}

/// The namespace `ns` (`net`, `mnt`, ...) the calling thread is in, held
/// by an fd.
fn this_thread(ns: &str) -> Result<std::os::fd::OwnedFd> {
    let path = format!("/proc/thread-self/ns/{ns}");
    std::fs::File::open(&path)
        .map(std::os::fd::OwnedFd::from)
        .map_err(|err| Error::Proc {
            pid: nix::unistd::getpid(),
            path,
            err,
        })
}

/// Whether the tree under `root` has a namespace `ns` of its own.
fn own(root: Pid, ns: &str) -> bool {
    link(Some(root), ns) != link(None, ns)
}

/// The namespaces every task of a tree must be in: UTS, IPC, network,
/// mount, time, user and cgroup the root's, the others the engine's (read
/// once per dump).
#[derive(Debug)]
pub struct Expected(Vec<(&'static str, Option<std::path::PathBuf>)>);

/// What [`check_task`] compares each task of the tree under `root` with.
pub fn expected(root: Pid) -> Expected {
    Expected(
        [
            "uts",
            "ipc",
            "net",
            "mnt",
            "pid",
            "user",
            "cgroup",
            "time",
            "time_for_children",
        ]
        .into_iter()
        .map(|ns| match ns {
            "uts" | "ipc" | "net" | "mnt" | "time" | "user" | "cgroup" => {
                (ns, link(Some(root), ns))
            }
            // Checked by pid::Ids (tasks may be in nested ones).
            "pid" => (ns, None),
            "time_for_children" => (ns, link(Some(root), "time")),
            _ => (ns, link(None, ns)),
        })
        .collect(),
    )
}

/// Refuse a task whose namespaces cannot come back (see [`Expected`]).
pub fn check_task(pid: Pid, want: &Expected) -> Result<()> {
    // One directory lookup, then a link each.
    let dir = crate::proc::dir(pid, "ns")?;
    for (ns, expected) in &want.0 {
        if *ns == "pid" {
            continue;
        }
        let theirs = nix::fcntl::readlinkat(&dir, *ns)
            .ok()
            .map(std::path::PathBuf::from);
        if theirs != *expected {
            let what = match *ns {
                "uts" | "ipc" | "net" | "mnt" | "time" | "user" | "cgroup" => {
                    format!("a {ns} namespace other than its root's")
                }
                "time_for_children" => {
                    "a time namespace for its children other than its own (it called \
                     unshare(CLONE_NEWTIME))"
                        .to_owned()
                }
                _ => format!("a {ns} namespace of its own"),
            };
            return Err(Error::Unsupported { pid, what });
        }
    }
    Ok(())
}

fn read_sys(pid: Pid, path: &str) -> Result<String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|err| Error::Proc {
            pid,
            path: path.to_owned(),
            err,
        })
}

fn num<T: std::str::FromStr>(pid: Pid, path: &str) -> Result<T> {
    let s = read_sys(pid, path)?;
    s.parse().map_err(|_| Error::ProcFormat {
        pid,
        file: path.to_owned(),
    })
}

/// The IPC sysctls, as /proc/sys shows them in the current namespace.
const KERNEL: &str = "/proc/sys/kernel";
const MQUEUE: &str = "/proc/sys/fs/mqueue";

/// Dump the clocks of the tree's own time namespace, if it has one: last
/// thing before the tree is killed, so that its clocks go on from the
/// state of its timers (their expirations counted until now).
pub fn dump_clocks(root: Pid, dir: &Dir) -> Result<()> {
    if own(root, "time") {
        time::dump(root, dir)?;
    }
    Ok(())
}

/// Whether the tree under `root` has a mount namespace of its own.
pub fn own_mnt(root: Pid) -> bool {
    own(root, "mnt")
}

/// Whether the tree under `root` has a cgroup namespace of its own.
pub fn own_cgroup(root: Pid) -> bool {
    own(root, "cgroup")
}

/// Whether the tree under `root` has a network namespace of its own.
pub fn own_net(root: Pid) -> bool {
    own(root, "net")
}

/// Dump the tree's own user, UTS, IPC, network, mount and time namespaces,
/// if it has them; the user namespace's maps. With `empty_net` (CRIU's
/// `empty_ns` for the network), devices other than loopback are the
/// caller's, who sets them up again after the restore: left out.
pub fn dump(
    root: Pid,
    dir: &Dir,
    ext_mounts: &[(String, String)],
    empty_net: bool,
    ext_netns: &[(u64, String)],
    tasks: &[Pid],
) -> Result<Option<user::Maps>> {
    let maps = if own(root, "user") {
        Some(user::dump(root, dir)?)
    } else {
        None
    };
    if own(root, "mnt") {
        mnt::dump(root, dir, ext_mounts)?;
    }

    if own(root, "net") {
        net::dump_or_key(root, dir, empty_net, ext_netns, tasks)?;
    }
    if own(root, "uts") {
        uts::dump(root, dir)?;
    }
    if own(root, "ipc") {
        ipc::dump(root, dir)?;
    }
    Ok(maps)
}

fn write_sys(path: &str, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(|err| Error::Proc {
        pid: nix::unistd::getpid(),
        path: path.to_owned(),
        err,
    })
}

/// What the restore of the namespaces leaves to do once the tree runs.
#[derive(Debug, Default)]
pub struct Restored {
    /// SysV segments to remove again (see [`crate::ipc::sysv::remove_again`]).
    pub shm_removed: Vec<i32>,
    /// The tree's mount namespace, which the engine is in until it
    /// [leaves](mnt::Restored::leave) it.
    pub mnt: Option<mnt::Restored>,
    /// The tree's user namespace, held by a helper.
    pub user: Option<user::Helper>,
}

/// What the restore of the namespaces is given.
#[derive(Debug)]
pub struct Given<'a> {
    /// `--root`: the directory a tree with a root of its own goes under.
    pub root: Option<&'a std::path::Path>,
    /// `--external mnt[KEY]:PATH`, as (key, path).
    pub ext_mounts: &'a [(String, String)],
    /// `--external veth[IN]:OUT`, as (inner, outer).
    pub veths: &'a [(String, String)],
    /// `--external macvlan[IN]:OUT`, as (inner, outer lower device).
    pub macvlans: &'a [(String, String)],
    /// Where the tree's cgroups go (for its cgroup mounts).
    pub cgroups: &'a crate::cgroup::Remap,
    /// Its connections were locked at the dump: a new network namespace
    /// of the tree's drops TCP until the restore lifts the lock.
    pub lock_tcp: bool,
    /// The caller's network namespace, when the images say the tree's was
    /// the caller's (`--external net[INO]:KEY` at the dump): the one it
    /// gave by `--inherit-fd fd[N]:KEY`, which the restore made sure of.
    pub netns: Option<&'a std::os::fd::OwnedFd>,
}

/// The key of the network namespace of the images if it was the caller's.
pub fn ext_netns_key(dir: &Dir) -> Result<Option<String>> {
    if !dir.exists(img::NETNS, NS_ID) {
        return Ok(None);
    }
    let e: stasis_proto::images::NetnsEntry = dir.read_one(img::NETNS, NS_ID)?;
    Ok(e.ext_key)
}

/// Make the tree's namespaces again in the engine (which then forks the
/// tree into them).
pub fn restore(dir: &Dir, given: &Given<'_>) -> Result<Restored> {
    let mut out = Restored::default();
    let me = nix::unistd::getpid();
    // In a user namespace of the tree's own, the other namespaces are made
    // inside it (owned by it) by its helper, and joined here.
    let mut inner = CloneFlags::empty();
    let own_net = dir.exists(img::NETNS, NS_ID) && given.netns.is_none();
    for (has, flag) in [
        (own_net, CloneFlags::CLONE_NEWNET),
        (dir.exists(img::UTSNS, NS_ID), CloneFlags::CLONE_NEWUTS),
        (dir.exists(img::IPC_VAR, NS_ID), CloneFlags::CLONE_NEWIPC),
        (dir.exists(img::MNTS, NS_ID), CloneFlags::CLONE_NEWNS),
    ] {
        if has {
            inner |= flag;
        }
    }
    out.user = user::restore(dir, inner)?;
    let helper = out.user.as_ref();
    let enter = |kind: &str, flag: CloneFlags, what: &'static str| match helper {
        Some(h) => h.join(kind, flag),
        None => unshare(flag).map_err(Error::restore(me, what)),
    };
    // A PID namespace cannot be joined before its init exists: the engine
    // forks the root with CLONE_NEWPID (the namespace is then owned by the
    // engine's user namespace; the root mounts its procfs before it joins
    // the tree's).
    if dir.exists(img::NETNS, NS_ID) {
        if let Some(fd) = given.netns {
            // The caller's: joined as it is.
            nix::sched::setns(fd, CloneFlags::CLONE_NEWNET)
                .map_err(Error::restore(me, "joining the caller's network namespace"))?;
        } else {
            // Veth peers outside the tree go to the engine's own namespace.
            let outer = net::outside()?;
            enter("net", CloneFlags::CLONE_NEWNET, "a network namespace")?;
            net::restore(dir, &outer, given.veths, given.macvlans, given.lock_tcp)?;
        }
    }
    if dir.exists(img::UTSNS, NS_ID) {
        let e: UtsnsEntry = dir.read_one(img::UTSNS, NS_ID)?;
        enter("uts", CloneFlags::CLONE_NEWUTS, "a UTS namespace")?;
        uts::restore(&e)?;
    }
    if dir.exists(img::IPC_VAR, NS_ID) {
        let e: IpcVarEntry = dir.read_one(img::IPC_VAR, NS_ID)?;
        enter("ipc", CloneFlags::CLONE_NEWIPC, "an IPC namespace")?;
        out.shm_removed = ipc::restore(dir, &e)?;
    }
    time::restore(dir)?;
    // Last: sysfs shows the network namespace of whoever mounts it.
    out.mnt = mnt::restore(dir, helper, given.root, given.ext_mounts, given.cgroups)?;
    Ok(out)
}
