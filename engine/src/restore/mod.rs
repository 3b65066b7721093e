//! `stasis restore`: fork the tree with the dumped PIDs (clone3 set_tid), let
//! each new task put its own fds, session and cwd in place, then rebuild its
//! address space and thread state from the engine through remote syscalls
//! run from a trampoline page, and release every task at once. A failure
//! kills every task created.

mod child;
mod finish;
mod fork;
mod load;
mod pool;
mod rebuild;

use finish::*;
use fork::*;
use load::*;
use pool::*;
use rebuild::*;
use stasis_kernel as kernel;

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::ptrace::{self, Options};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use stasis_arch::native::{self as arch, nr};
use stasis_proto::images::{
    CoreEntry, FdinfoEntry, FsEntry, InventoryEntry, MmEntry, PstreeEntry, RestoreStatsEntry,
    StatsEntry,
};

use crate::error::{EngineError as Error, Result};
use crate::files::Table;
use crate::images::Dir;
use crate::images::img;
use crate::mm::{self, Trampoline};
use crate::task::remote::{self, Remote};
use crate::{proc, task, task::creds, task::seccomp};

/// What `stasis restore` was asked to do.
#[derive(Debug, Clone)]
pub struct Opts {
    /// Images directory (`-D`).
    pub dir: PathBuf,
    /// `--shell-job`.
    pub shell_job: bool,
    /// RPC `orphan_pts_master`: the new master of each pty whose master
    /// was outside the tree goes to the caller through the notification
    /// hook (`orphan-pts-master`); without it such a tree is refused.
    pub orphan_pts_master: bool,
    /// `-d`: the restore does not wait for the tree, so a shell job does
    /// not take the terminal.
    pub detached: bool,
    /// `--network-lock`: lift the lock the dump left (`skip` leaves it).
    pub network_lock: bool,
    /// The root becomes a child of the engine's parent (CLONE_PARENT; RPC
    /// `rst_sibling`), not of the engine.
    pub sibling: bool,
    /// Who is told the action-script points: `pre-restore`, then with the
    /// root's PID `setup-namespaces` and `post-setup-namespaces` once it
    /// exists in its namespaces, `post-restore` and `post-resume` once the
    /// tree runs.
    pub notify: Option<crate::notify::Notify>,
    /// Where progress goes, if anywhere.
    pub progress: Option<crate::progress::Progress>,
    /// `--manage-cgroups`: whether the tasks go back to their cgroups.
    pub cgroups: crate::cgroup::Mode,
    /// `--cgroup-root`: where they go instead.
    pub cgroup_roots: Vec<crate::cgroup::CgRoot>,
    /// `--root`: the directory holding the root file system of a tree that
    /// had a root of its own (pivot_root'ed, a container).
    pub root: Option<PathBuf>,
    /// `--external mnt[KEY]:PATH`: what to bind at the tree's external
    /// mounts, as (key, path).
    pub ext_mounts: Vec<(String, String)>,
    /// `--external veth[INNER]:OUTER`: the name a veth of the tree whose
    /// peer was outside gets for that peer, made again in the engine's
    /// network namespace, as (inner, outer).
    pub ext_veths: Vec<(String, String)>,
    /// `--external macvlan[IN]:OUT`: the device outside each macvlan of
    /// the tree's network namespace is made on, as (inner, outer).
    pub ext_macvlans: Vec<(String, String)>,
    /// `--inherit-fd fd[N]:KEY`: fd N of the engine stands for the object
    /// KEY of the images (`pipe:[INO]`), as (KEY, N).
    pub inherit_fds: Vec<(String, RawFd)>,
}

/// A restored tree, released and running.
#[derive(Debug)]
pub struct Restored {
    /// PID of the root task (a child of this process).
    pub root: Pid,
    /// Pages written into the tasks.
    pub pages: u64,
    /// A shell job given the terminal: wait for it with
    /// [`crate::files::tty::wait_foreground`].
    pub terminal: Option<OwnedFd>,
}

/// One task to create.
#[derive(Debug)]
pub(crate) struct Plan {
    pub pst: PstreeEntry,
    pub core: CoreEntry,
    pub zombie: Option<u32>,
    pub mm: Option<MmEntry>,
    pub fs: Option<FsEntry>,
    pub fdinfo: Vec<FdinfoEntry>,
    pub thread_cores: Vec<CoreEntry>,
    /// (target fd, pool fd, close-on-exec).
    pub fds: Vec<(RawFd, RawFd, bool)>,
    /// Files under /proc/PID/ of a task of the tree: opened by the task
    /// itself once every task exists (target fd, file id, close-on-exec).
    pub late_fds: Vec<(RawFd, u32, bool)>,
    /// Files whose last step this task takes once its fds are in (fd,
    /// file id): each file once, in the first task that has it.
    pub settle: Vec<(RawFd, u32)>,
    pub cwd: Option<String>,
    pub root_dir: Option<String>,
    /// The shell job's root: the terminal whose foreground it takes.
    pub terminal: Option<OwnedFd>,
    /// The root: the tree's mount namespace, which it joins first, and
    /// the procfs mounts it makes there.
    pub mnt_ns: Option<OwnedFd>,
    pub proc_mounts: Vec<crate::ns::mnt::ProcMount>,
    /// `cgroup.procs` of the cgroups it joins first thing (see
    /// [`crate::cgroup`]).
    pub cgroup_fds: Vec<RawFd>,
    /// The root, when the tree had a cgroup namespace of its own: the
    /// `cgroup.procs` of that namespace's root cgroups, which it joins
    /// before it makes the namespace again (then it joins its own).
    pub cgroup_ns: Option<Vec<RawFd>>,

    /// Remade memfds and ghost files every task inherits (above every
    /// target fd) to map them, closed once its memory is back.
    pub inherited: Vec<RawFd>,
}

impl Plan {
    /// The IDs of thread `i` (0: the leader) from the root's PID namespace
    /// inward.
    pub(crate) fn chain(&self, i: usize) -> Vec<u32> {
        let mut c = vec![self.pst.threads.get(i).copied().unwrap_or(self.pst.pid)];
        if let Some(n) = self.pst.stasis_nested.get(i) {
            c.extend(&n.ids);
        }
        c
    }

    /// `set_tid` for thread `i`: its IDs innermost first.
    pub(crate) fn set_tid(&self, i: usize) -> Vec<libc::pid_t> {
        self.chain(i)
            .iter()
            .rev()
            .map(|&v| v.cast_signed())
            .collect()
    }

    /// The task `pst` with its core; everything else is filled in later.
    fn new(pst: PstreeEntry, core: CoreEntry, zombie: Option<u32>) -> Plan {
        Plan {
            pst,
            core,
            zombie,
            mm: None,
            fs: None,
            fdinfo: Vec::new(),
            thread_cores: Vec::new(),
            fds: Vec::new(),
            late_fds: Vec::new(),
            settle: Vec::new(),
            cwd: None,
            root_dir: None,
            terminal: None,
            mnt_ns: None,
            proc_mounts: Vec::new(),
            cgroup_fds: Vec::new(),
            cgroup_ns: None,
            inherited: Vec::new(),
        }
    }
}

fn pid_of(v: u32) -> Pid {
    Pid::from_raw(v.cast_signed())
}

/// Restore the images in `opts.dir`.
pub fn restore(opts: &Opts) -> Result<Restored> {
    crate::task::cpu::host_supported()?;
    let dir = Dir::open(&opts.dir)?;
    crate::notify::point(opts.notify.as_ref(), "pre-restore", nix::unistd::getpid())?;
    let Loaded {
        mut plans,
        mut files,
        inv,
        netns,
    } = prepare(opts, &dir)?;
    let uses = plan_files(&mut plans, &files);
    let image_root = pid_of(plans.first().map_or(0, |p| p.pst.pid));
    let locked =
        inv.network_lock_method == Some(crate::net::netlock::METHOD_NFTABLES) && opts.network_lock;
    // The dump locked the connections in the namespace they were in: the
    // engine's, or the tree's own (then the socket that lifts the lock is
    // opened in it, below).
    let tree_net = dir.exists(img::NETNS, crate::ns::NS_ID);
    let unlock_socket = || {
        crate::net::netlock::socket().map_err(Error::restore(
            image_root,
            "a netfilter socket to lift the network lock (--network-lock skip leaves it)",
        ))
    };
    let mut unlock = if locked && !tree_net {
        Some(unlock_socket()?)
    } else {
        None
    };
    // The tree's own namespaces, which the engine enters and the tasks
    // inherit; files are opened inside them.
    let root_set = plans
        .first()
        .and_then(|p| p.core.tc.as_ref())
        .and_then(|t| t.cg_set);
    let remap = crate::cgroup::Remap::new(&dir, opts.cgroups, &opts.cgroup_roots, root_set)?;
    let mut ns_done = crate::ns::restore(
        &dir,
        &crate::ns::Given {
            root: opts.root.as_deref(),
            ext_mounts: &opts.ext_mounts,
            veths: &opts.ext_veths,
            macvlans: &opts.ext_macvlans,
            cgroups: &remap,
            netns: netns.as_ref(),
            lock_tcp: locked && netns.is_none(),
        },
    )?;
    // The engine is in the tree's network namespace now.
    if locked && tree_net {
        unlock = Some(unlock_socket()?);
    }
    let (pool, next, pivot) = open_files(&mut plans, &mut files, &uses, &mut ns_done, opts)?;
    let (ready_r, ready_w) = inherit_above(&mut plans, &mut files, next)?;
    // Held until every task joined its cgroups; the cgroups made go again
    // if the restore fails.
    let cgroups = join_cgroups(&mut plans, &dir, opts, &remap, ready_w.as_raw_fd() + 1)?;
    let (tramp, _tramp_map) = map_trampoline(&plans)?;

    let mask = kernel::sched::engine_mask();
    tracing::debug!("forking the tree");
    let t0 = Instant::now();
    let root_host = fork_root(
        &plans,
        ns_done.user.as_ref(),
        ready_w.as_raw_fd(),
        opts.sibling,
    )?;
    let hosts = crate::ns::pid::HostIds::default();
    let ready_fd = ready_w.as_raw_fd();
    drop(ready_w);
    drop(pool);
    // A path never holds a NUL byte.
    let pivot_c = pivot
        .as_ref()
        .and_then(|(p, _)| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).ok());
    let made = Made {
        hosts: &hosts,
        root_host,
        plans: &plans,
        files: &files,
        dir: &dir,
        tramp: &tramp,
        progress: opts.progress.as_ref(),
        mask: mask.as_ref(),
        pivot: pivot_c
            .as_deref()
            .zip(pivot.as_ref().map(|&(_, shared)| shared)),
        cgroups: &cgroups,
    };
    let hook = opts.notify.as_ref();
    let result = crate::notify::point(hook, "setup-namespaces", root_host)
        .and_then(|()| crate::notify::point(hook, "post-setup-namespaces", root_host))
        .and_then(|()| finish(&made, ready_r, ready_fd, t0))
        .and_then(|pages| crate::notify::point(hook, "post-restore", root_host).map(|()| pages))
        // The tasks hold these attached again: removed, they go with the
        // last of them, as before.
        .and_then(|pages| crate::ipc::sysv::remove_again(&ns_done.shm_removed).map(|()| pages));
    match result {
        Ok(pages) => {
            cgroups.keep();
            released(hook, root_host, image_root, unlock.as_ref());
            let terminal = plans.first_mut().and_then(|p| p.terminal.take());
            Ok(Restored {
                root: root_host,
                pages,
                terminal,
            })
        }
        Err(e) => {
            kill_tree(&plans, &hosts, root_host, opts.sibling);
            Err(e)
        }
    }
}

/// Above the pool (from `next` up): the remade memfds and ghost files
/// every task inherits, then the pipe the tasks report on (its read and
/// write ends).
fn inherit_above(plans: &mut [Plan], files: &mut Table, next: RawFd) -> Result<(OwnedFd, OwnedFd)> {
    let inherited = files.inherit(next)?;
    let next = inherited.last().map_or(next, |&n| n + 1);
    for p in plans.iter_mut() {
        p.inherited.clone_from(&inherited);
    }
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(Error::restore(nix::unistd::getpid(), "a pipe"))?;
    let ready_w = kernel::fd::dup_at_least(ready_w.as_fd(), next)
        .map_err(Error::restore(nix::unistd::getpid(), "a pipe"))?;
    Ok((ready_r, ready_w))
}

/// The tree runs: the last notification, and the network lock lifted.
/// Failures here are only reported, as the tree goes on.
fn released(
    hook: Option<&crate::notify::Notify>,
    root: Pid,
    image_root: Pid,
    unlock: Option<&stasis_kernel::netlink::Socket>,
) {
    if let Err(e) = crate::notify::point(hook, "post-resume", root) {
        tracing::warn!("{}", e.chain());
    }
    // The dump's table is named after the root's PID in the images (the
    // tree's own namespace may give it another outside).
    if let Some(s) = unlock
        && let Err(e) = crate::net::netlock::unlock(s, image_root)
            .and_then(|()| crate::net::netlock::unlock_all_tcp(s))
    {
        // Only its connections wait.
        tracing::warn!(
            "could not lift the network lock ({e}): delete tables inet {} and inet {} in \
             the tree's network namespace to let the restored connections through",
            crate::net::netlock::table_name(image_root),
            crate::net::netlock::NETNS_TABLE
        );
    }
}

pub use crate::files::tty::wait_foreground;

/// Wait for the restored root to exit; its exit code (128+signal if killed).
pub fn wait_root(root: Pid) -> i32 {
    loop {
        match waitpid(root, Some(WaitPidFlag::__WALL)) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(shmids: &[u64]) -> Plan {
        let vmas = shmids
            .iter()
            .map(|&shmid| stasis_proto::images::VmaEntry {
                shmid,
                status: mm::status::ANON_SHARED,
                ..Default::default()
            })
            .collect();
        let mut p = Plan::new(PstreeEntry::default(), CoreEntry::default(), None);
        p.mm = Some(MmEntry {
            vmas,
            ..Default::default()
        });
        p
    }

    #[test]
    fn tasks_sharing_memory_through_others_stay_on_one_worker() {
        // 0 and 2 share object 7, 1 and 2 share object 8; 3 shares nothing.
        let plans = [plan(&[7]), plan(&[8]), plan(&[7, 8]), plan(&[])];
        let alive: Vec<&Plan> = plans.iter().collect();
        let groups = split(&alive, 2);
        let with_0 = groups.iter().find(|g| g.contains(&0)).expect("task 0");
        assert_eq!(with_0, &vec![0, 1, 2], "in tree order, on one worker");
        assert!(groups.iter().any(|g| g == &vec![3]));
    }
}
