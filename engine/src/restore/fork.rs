//! Making the tree's root: the cgroups each task joins, the fork with its
//! PIDs (clone3 set_tid; in the tree's user namespace through its helper),
//! and, when the restore fails, the kill that leaves no task behind.

use super::*;
use stasis_kernel as kernel;

/// Fork the root with its PIDs (in a user namespace of the tree's through
/// its helper); the child never returns into the engine. Its PID here.
pub(super) fn fork_root(
    plans: &[Plan],
    user: Option<&crate::ns::user::Helper>,
    ready_fd: RawFd,
    sibling: bool,
) -> Result<Pid> {
    let root = pid_of(plans.first().map_or(0, |p| p.pst.pid));
    let root_ids = plans.first().map(|p| p.set_tid(0)).unwrap_or_default();
    if sibling && user.is_some() {
        return Err(Error::Unsupported {
            pid: root,
            what: "restoring a tree with a user namespace of its own as a sibling (rst_sibling)"
                .into(),
        });
    }
    match user {
        Some(u) => {
            fork_in_userns(plans, &root_ids, u, ready_fd).map_err(|errno| fork_error(root, errno))
        }
        None => match kernel::clone::fork_single_threaded_ids(&root_ids, own_pidns(plans), sibling)
            .map_err(|errno| fork_error(root, errno))?
        {
            kernel::clone::Forked::Child => child::run(plans, 0, ready_fd),
            kernel::clone::Forked::Parent(p) => Ok(p),
        },
    }
}

/// A failed restore leaves no task: every task made is killed (in a PID
/// namespace of the tree's, its init takes the others with it).
pub(super) fn kill_tree(
    plans: &[Plan],
    hosts: &crate::ns::pid::HostIds,
    root_host: Pid,
    sibling: bool,
) {
    if own_pidns(plans) {
        let _ = kill(root_host, Signal::SIGKILL);
    } else {
        for p in plans.iter().rev() {
            let _ = kill(hosts.get(p.pst.pid), Signal::SIGKILL);
        }
    }
    if !sibling {
        let _ = waitpid(root_host, None);
    }
}

/// The cgroups each live task joins (`--manage-cgroups`): made and opened
/// at fds from `first` up, which the tasks inherit; held until they are in.
pub(super) fn join_cgroups(
    plans: &mut [Plan],
    dir: &Dir,
    opts: &Opts,
    remap: &crate::cgroup::Remap,
    first: RawFd,
) -> Result<crate::cgroup::Joins> {
    let set = |p: &Plan| p.core.tc.as_ref().and_then(|t| t.cg_set);
    // Threads in other cgroups than their process are moved there by TID
    // once made.
    let threads: Vec<u32> = plans
        .iter()
        .filter(|p| p.zombie.is_none())
        .flat_map(|p| {
            p.thread_cores
                .iter()
                .filter_map(|c| c.thread_core.as_ref().and_then(|t| t.cg_set))
                .filter(move |&s| Some(s) != set(p))
        })
        .collect();
    let live: Vec<u32> = plans
        .iter()
        .filter(|p| p.zombie.is_none())
        .filter_map(set)
        .collect();
    let root_set = plans.first().and_then(set);
    let joins = crate::cgroup::prepare(dir, opts.cgroups, remap, root_set, &live, &threads, first)?;
    for p in plans.iter_mut().filter(|p| p.zombie.is_none()) {
        p.cgroup_fds = joins.of(set(p));
    }
    if joins.new_ns {
        match plans.first_mut() {
            Some(root) if root.zombie.is_none() => root.cgroup_ns = Some(joins.ns_root.clone()),
            _ => {
                return Err(Error::Unsupported {
                    pid: plans
                        .first()
                        .map_or(Pid::from_raw(0), |p| pid_of(p.pst.pid)),
                    what: "a cgroup namespace whose root task is a zombie".into(),
                });
            }
        }
    }
    Ok(joins)
}

/// Fork the root inside the tree's user namespace (held by `user`): a
/// helper joins it and forks the root as the engine's child
/// (CLONE_PARENT), so that the root's PID namespace is owned by the tree's
/// user namespace as it was, and its tasks may set PIDs there. The root's
/// PID.
pub(super) fn fork_in_userns(
    plans: &[Plan],
    ids: &[libc::pid_t],
    user: &crate::ns::user::Helper,
    ready: RawFd,
) -> Result<Pid, nix::errno::Errno> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    match kernel::clone::fork_single_threaded_ids(&[], false, false)? {
        kernel::clone::Forked::Child => {
            drop(r);
            let res = nix::sched::setns(user.ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWUSER)
                .and_then(|()| {
                    kernel::clone::fork_single_threaded_ids(ids, own_pidns(plans), true)
                });
            match res {
                Ok(kernel::clone::Forked::Child) => child::run(plans, 0, ready),
                Ok(kernel::clone::Forked::Parent(p)) => {
                    let _ = nix::unistd::write(&w, &p.as_raw().to_ne_bytes());
                    kernel::process::exit_now(0)
                }
                Err(e) => {
                    let _ = nix::unistd::write(&w, &(-(e as i32)).to_ne_bytes());
                    kernel::process::exit_now(1)
                }
            }
        }
        kernel::clone::Forked::Parent(helper) => {
            drop(w);
            let mut f = std::fs::File::from(r);
            let mut b = [0u8; 4];
            let n = f.read_exact(&mut b);
            let _ = waitpid(helper, None);
            let v = i32::from_ne_bytes(b);
            match n {
                Ok(()) if v > 0 => Ok(Pid::from_raw(v)),
                Ok(()) => Err(nix::errno::Errno::from_raw(-v)),
                Err(_) => Err(nix::errno::Errno::ECHILD),
            }
        }
    }
}

/// Whether the tree has a PID namespace of its own: its root is PID 1.
pub(super) fn own_pidns(plans: &[Plan]) -> bool {
    plans.first().is_some_and(|p| p.pst.pid == 1)
}

/// EEXIST from clone3 set_tid means another process took the PID meanwhile.
pub(crate) fn fork_error(pid: Pid, errno: nix::errno::Errno) -> Error {
    if errno == nix::errno::Errno::EEXIST {
        Error::PidTaken { pid }
    } else {
        Error::Fork { pid, errno }
    }
}
