//! `stasis restore`: fork the tree with the dumped PIDs (clone3 set_tid), let
//! each new task put its own fds, session and cwd in place, then rebuild its
//! address space and thread state from the engine through remote syscalls
//! run from a trampoline page, and release every task at once. A failure
//! kills every task created.

mod child;

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
use crate::{sys, task, task::creds, task::proc, task::seccomp};

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

/// The trampoline: one code page, then data pages (a seccomp program of up
/// to 32 KiB and its header among the largest things put there).
const TRAMPOLINE_PAGES: u64 = 16;
/// Offset of the batch runner in the trampoline's code page.
const BATCH_CODE: usize = 64;
/// Offset of the batch table in the trampoline's data pages (page 13 of 15).
const BATCH_TABLE: u64 = 48 << 10;

fn pid_of(v: u32) -> Pid {
    Pid::from_raw(v.cast_signed())
}

fn load(dir: &Dir) -> Result<(Vec<Plan>, Table, InventoryEntry)> {
    if !dir.exists(img::INVENTORY, 0) {
        return Err(Error::BadImage {
            path: dir.path().join("inventory.img").display().to_string(),
            what: "missing: this is not an images directory, or the dump into it did not finish"
                .into(),
        });
    }
    let inv: InventoryEntry = dir.read_one(img::INVENTORY, 0)?;
    if inv.img_version != stasis_proto::kind::IMAGES_VERSION {
        return Err(Error::BadImage {
            path: crate::images::img::INVENTORY.file_name(0),
            what: format!("image version {} (expected 2)", inv.img_version),
        });
    }
    let mut files = Table::load(dir)?;
    files.make_memfds(dir)?;
    let mut pstree: Vec<PstreeEntry> = dir.read_all(img::PSTREE, 0)?;
    check_pstree(&pstree)?;
    inherit_unseen_leaders(&mut pstree);
    let mut plans = Vec::new();
    for pst in pstree {
        let id = u64::from(pst.pid);
        let core: CoreEntry = dir.read_one(img::CORE, id)?;
        let tc = core.tc.as_ref().ok_or_else(|| Error::BadImage {
            path: img::CORE.file_name(id),
            what: "no task_core_entry".into(),
        })?;
        let host = stasis_arch::Arch::host().unwrap_or(stasis_arch::Arch::X86_64);
        if core.mtype != host.march() as i32 {
            let arch = stasis_proto::images::core_entry::March::try_from(core.mtype)
                .ok()
                .and_then(stasis_arch::Arch::from_march)
                .map_or_else(|| format!("arch {}", core.mtype), |a| a.to_string());
            return Err(Error::Arch {
                what: format!(
                    "core-{id}.img holds the registers of {arch}; restore it on a machine of \
                     that arch (this one is {host})"
                ),
            });
        }
        let zombie = (tc.task_state == task::state::ZOMBIE).then_some(tc.exit_code);
        let mut plan = Plan::new(pst, core, zombie);
        if zombie.is_none() {
            let files_id = plan.core.ids.as_ref().map_or(id, |i| u64::from(i.files_id));
            let mm: MmEntry = dir.read_one(img::MM, id)?;
            check_vmas(id, &mm)?;
            plan.mm = Some(mm);
            let fs: FsEntry = dir.read_one(img::FS, id)?;
            plan.cwd = files.path_of(fs.cwd_id).map(str::to_owned);
            plan.root_dir = files.path_of(fs.root_id).map(str::to_owned);
            plan.fs = Some(fs);
            plan.fdinfo = dir.read_all(img::FDINFO, files_id)?;
            for &tid in plan.pst.threads.iter().skip(1) {
                plan.thread_cores
                    .push(dir.read_one(img::CORE, u64::from(tid))?);
            }
        }
        plans.push(plan);
    }
    Ok((plans, files, inv))
}

/// Find a free 4 MiB hole for the trampoline, outside every dumped VMA and
/// every mapping of this process.
fn pick_trampoline(plans: &[Plan]) -> Result<u64> {
    let me = nix::unistd::getpid();
    let mut busy: Vec<(u64, u64)> = proc::maps(me)?.iter().map(|m| (m.start, m.end)).collect();
    for p in plans {
        if let Some(mm) = &p.mm {
            busy.extend(mm.vmas.iter().map(|v| (v.start, v.end)));
        }
    }
    let size = mm::TRAMPOLINE_HOLE;
    let mut at = mm::LOWEST_FREE;
    while at < 0x7f00_0000_0000 {
        if !busy.iter().any(|&(s, e)| s < at + size && at < e) {
            return Ok(at);
        }
        at += size;
    }
    Err(Error::Restore {
        pid: me,
        what: "a free address range for the restore trampoline".into(),
        errno: nix::errno::Errno::ENOMEM,
    })
}

/// Restore the images in `opts.dir`.
pub fn restore(opts: &Opts) -> Result<Restored> {
    crate::task::cpu::host_supported()?;
    let dir = Dir::open(&opts.dir)?;
    crate::notify::point(opts.notify.as_ref(), "pre-restore", nix::unistd::getpid())?;
    tracing::debug!("reading the images");
    let (mut plans, mut files, inv) = load(&dir)?;
    if let Some(&index) = files.ttys.orphan_ptys().first()
        && !(opts.orphan_pts_master && opts.notify.is_some())
    {
        // Refused before anything is made: nobody would hold its master.
        return Err(Error::OrphanPty { index });
    }
    tracing::debug!(tasks = plans.len(), "images read");
    let given = opts
        .inherit_fds
        .iter()
        .map(|(key, n)| {
            crate::inherited_fd(*n)
                .map(|fd| (key.clone(), fd))
                .map_err(|errno| Error::Restore {
                    pid: nix::unistd::getpid(),
                    what: format!("--inherit-fd fd[{n}]:{key}: fd {n} of stasis"),
                    errno,
                })
        })
        .collect::<Result<Vec<_>>>()?;
    // The caller's network namespace, if the dump left it to the caller.
    let net_key = crate::ns::ext_netns_key(&dir)?;
    let (netns, given): (Vec<_>, Vec<_>) = given
        .into_iter()
        .partition(|(k, _)| Some(k) == net_key.as_ref());
    if let Some(key) = &net_key
        && netns.is_empty()
    {
        return Err(Error::BadImage {
            path: img::NETNS.file_name(crate::ns::NS_ID),
            what: format!(
                "the network namespace was the caller's ({key}); give it with --inherit-fd fd[N]:{key}"
            ),
        });
    }
    files.take_inherited(given)?;
    if let Some(root) = &opts.root {
        // Paths are as the tree saw them: looked up under --root until the
        // pivot makes it the root.
        let root = std::fs::canonicalize(root).map_err(|err| Error::ImagesDir {
            path: root.display().to_string(),
            err,
        })?;
        files.rebase(&root, &crate::ns::mnt::mount_ids(&dir)?);
        for p in &mut plans {
            if let Some(fs) = &p.fs {
                p.cwd = files.path_of(fs.cwd_id).map(str::to_owned);
                p.root_dir = files.path_of(fs.root_id).map(str::to_owned);
            }
        }
    }
    if opts.shell_job {
        shell_job(&mut plans, &files, opts.detached);
    }
    check_pids_free(&plans)?;
    let late = late_files(&plans, &files);
    plan_fds(&mut plans, &late, &files);
    // Every other file is opened once, into a pool the tasks inherit.
    let uses: Vec<(Pid, i32, u32)> = plans
        .iter()
        .flat_map(|p| {
            p.fdinfo
                .iter()
                .filter(|f| !late.contains(&f.id))
                .map(move |f| (pid_of(p.pst.pid), f.fd.cast_signed(), f.id))
        })
        .collect();
    let max_fd = uses.iter().map(|u| u.1).max().unwrap_or(2);
    let high = room_for_fds(&uses, max_fd)?;
    let root = pid_of(plans.first().map_or(0, |p| p.pst.pid));
    // The dump locked the connections in this namespace: the socket that
    // lifts the lock is opened before the engine enters the tree's own.
    let unlock = match inv.network_lock_method {
        Some(crate::net::netlock::METHOD_NFTABLES) if opts.network_lock => {
            Some(crate::net::netlock::socket().map_err(Error::restore(
                root,
                "a netfilter socket to lift the network lock (--network-lock skip leaves it)",
            ))?)
        }
        _ => None,
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
            netns: netns.first().map(|(_, fd)| fd),
        },
    )?;
    let mut pivot: Option<PathBuf> = None;
    let mut root_shared = false;
    if let Some(m) = ns_done.mnt.as_mut() {
        files.ttys.give_ptys(std::mem::take(&mut m.ptys));
    }

    let (pool, next) = (|| {
        files.make_ghosts()?;
        let (pool, next) = open_pool(&files, &uses, max_fd, high, opts.notify.as_ref())?;
        take_file_locks(&plans, &files, &pool)?;
        Ok::<_, Error>((pool, next))
    })()
    .and_then(|p| {
        // Files are open: the engine goes back to its own mount
        // namespace (its /proc shows the tasks), the root joins the tree's.
        if let Some(m) = ns_done.mnt.take() {
            m.leave()?;
            pivot = m.root.clone();
            root_shared = m.root_shared;
            if let Some(root) = plans.first_mut() {
                root.mnt_ns = Some(m.ns);
                root.proc_mounts = m.procs;
            }
        }
        Ok(p)
    })
    .inspect_err(|_| {
        if let Some(m) = &ns_done.mnt {
            let _ = m.leave();
        }
    })?;
    for p in &mut plans {
        p.fds = p
            .fdinfo
            .iter()
            .filter_map(|f| {
                pool.get(&f.id)
                    .map(|o| (f.fd.cast_signed(), o.as_raw_fd(), f.flags & 1 != 0))
            })
            .collect();
    }
    let inherited = files.inherit(next)?;
    let next = inherited.last().map_or(next, |&n| n + 1);
    for p in &mut plans {
        p.inherited.clone_from(&inherited);
    }
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(Error::restore(nix::unistd::getpid(), "a pipe"))?;
    let ready_w = sys::dup_at_least(ready_w.as_fd(), next)
        .map_err(Error::restore(nix::unistd::getpid(), "a pipe"))?;
    // Held until every task joined its cgroups; the cgroups made go again
    // if the restore fails.
    let cgroups = join_cgroups(&mut plans, &dir, opts, &remap, ready_w.as_raw_fd() + 1)?;
    let (tramp, _tramp_map) = map_trampoline(&plans)?;

    let mask = sys::engine_mask();
    tracing::debug!("forking the tree");
    let t0 = Instant::now();
    // The child never returns into the engine.
    let root_ids = plans.first().map(|p| p.set_tid(0)).unwrap_or_default();
    if opts.sibling && ns_done.user.is_some() {
        return Err(Error::Unsupported {
            pid: root,
            what: "restoring a tree with a user namespace of its own as a sibling (rst_sibling)"
                .into(),
        });
    }
    let root_host = match &ns_done.user {
        Some(u) => fork_in_userns(&plans, &root_ids, u, ready_w.as_raw_fd())
            .map_err(|errno| fork_error(root, errno))?,
        None => match sys::fork_single_threaded_ids(&root_ids, own_pidns(&plans), opts.sibling)
            .map_err(|errno| fork_error(root, errno))?
        {
            sys::Forked::Child => child::run(&plans, 0, ready_w.as_raw_fd()),
            sys::Forked::Parent(p) => p,
        },
    };
    let hosts = crate::ns::pid::HostIds::default();
    let ready_fd = ready_w.as_raw_fd();
    drop(ready_w);
    drop(pool);
    // A path never holds a NUL byte.
    let pivot_c = pivot
        .as_ref()
        .and_then(|p| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).ok());
    let made = Made {
        hosts: &hosts,
        root_host,
        plans: &plans,
        files: &files,
        dir: &dir,
        tramp: &tramp,
        progress: opts.progress.as_ref(),
        mask: mask.as_ref(),
        pivot: pivot_c.as_deref().map(|p| (p, root_shared)),
        cgroups: &cgroups,
    };
    let hook = opts.notify.as_ref();
    let result = crate::notify::point(hook, "setup-namespaces", root_host)
        .and_then(|()| crate::notify::point(hook, "post-setup-namespaces", root_host))
        .and_then(|()| finish(&made, ready_r, ready_fd, t0))
        .and_then(|pages| crate::notify::point(hook, "post-restore", root_host).map(|()| pages));
    let root = root_host;
    // The tasks hold these attached again: removed, they go with the last
    // of them, as before.
    let result = result
        .and_then(|pages| crate::ipc::sysv::remove_again(&ns_done.shm_removed).map(|()| pages));
    match result {
        Ok(pages) => {
            cgroups.keep();
            if let Err(e) = crate::notify::point(hook, "post-resume", root) {
                // The tree runs; the caller only hears of it.
                tracing::warn!("{e}");
            }
            if let Some(s) = unlock
                && let Err(e) = crate::net::netlock::unlock(&s, root)
            {
                // The tree runs; only its connections wait.
                tracing::warn!(
                    "could not lift the network lock ({e}): delete table inet {} to let \
                     the restored connections through",
                    crate::net::netlock::table_name(root)
                );
            }
            let terminal = plans.first_mut().and_then(|p| p.terminal.take());
            Ok(Restored {
                root,
                pages,
                terminal,
            })
        }
        Err(e) => {
            if own_pidns(&plans) {
                // Its init gone, the namespace's tasks go too.
                let _ = kill(root_host, Signal::SIGKILL);
            } else {
                for p in plans.iter().rev() {
                    let _ = kill(hosts.get(p.pst.pid), Signal::SIGKILL);
                }
            }
            if !opts.sibling {
                let _ = waitpid(root, None);
            }
            Err(e)
        }
    }
}

/// The cgroups each live task joins (`--manage-cgroups`): made and opened
/// at fds from `first` up, which the tasks inherit; held until they are in.
fn join_cgroups(
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
fn fork_in_userns(
    plans: &[Plan],
    ids: &[libc::pid_t],
    user: &crate::ns::user::Helper,
    ready: RawFd,
) -> Result<Pid, nix::errno::Errno> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    match sys::fork_single_threaded_ids(&[], false, false)? {
        sys::Forked::Child => {
            drop(r);
            let res = nix::sched::setns(user.ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWUSER)
                .and_then(|()| sys::fork_single_threaded_ids(ids, own_pidns(plans), true));
            match res {
                Ok(sys::Forked::Child) => child::run(plans, 0, ready),
                Ok(sys::Forked::Parent(p)) => {
                    let _ = nix::unistd::write(&w, &p.as_raw().to_ne_bytes());
                    sys::exit_now(0)
                }
                Err(e) => {
                    let _ = nix::unistd::write(&w, &(-(e as i32)).to_ne_bytes());
                    sys::exit_now(1)
                }
            }
        }
        sys::Forked::Parent(helper) => {
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
fn own_pidns(plans: &[Plan]) -> bool {
    plans.first().is_some_and(|p| p.pst.pid == 1)
}

/// Every PID and TID of the tree is free here. One held by a zombie (the
/// dumped task, killed and not yet reaped by its parent: right after the
/// dump, say) is waited for, a few seconds at most.
fn check_pids_free(plans: &[Plan]) -> Result<()> {
    // A PID namespace of its own is new: every ID in it is free.
    if own_pidns(plans) {
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for p in plans {
        for &t in &p.pst.threads {
            loop {
                let dying = match crate::task::proc::stat(pid_of(t), None) {
                    Ok(st) => matches!(st.state, 'Z' | 'X'),
                    // Gone (or going) meanwhile.
                    Err(_) => !std::path::Path::new(&format!("/proc/{t}")).exists(),
                };
                if !std::path::Path::new(&format!("/proc/{t}")).exists() {
                    break;
                }
                if !dying || Instant::now() >= deadline {
                    return Err(Error::PidTaken { pid: pid_of(t) });
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    Ok(())
}

/// Files that cannot be opened before the tree exists, each task opens
/// later ([`crate::files::FileKind::in_task`]).
fn late_files(plans: &[Plan], files: &Table) -> std::collections::HashSet<u32> {
    let tree_pids: std::collections::HashSet<u32> = plans
        .iter()
        .flat_map(|p| p.pst.threads.iter().copied())
        .collect();
    plans
        .iter()
        .flat_map(|p| p.fdinfo.iter().map(|f| f.id))
        .filter(|&id| {
            files
                .get(id)
                .and_then(|e| e.kind.as_ref())
                .is_some_and(|k| crate::files::registry::in_task(k, &tree_pids))
        })
        .collect()
}

/// Which fds each task handles itself: the files whose last step it takes
/// (each file once, in the first task that has it: an epoll set registers
/// its targets) and the late files it opens.
fn plan_fds(plans: &mut [Plan], late: &std::collections::HashSet<u32>, files: &Table) {
    let mut seen = std::collections::HashSet::new();
    let settles = |id: u32| {
        files
            .get(id)
            .and_then(|e| e.kind.as_ref())
            .is_some_and(crate::files::registry::settles)
    };
    for p in plans {
        p.settle = p
            .fdinfo
            .iter()
            .filter(|f| settles(f.id) && seen.insert(f.id))
            .map(|f| (f.fd.cast_signed(), f.id))
            .collect();
        p.late_fds = p
            .fdinfo
            .iter()
            .filter(|f| late.contains(&f.id))
            .map(|f| (f.fd.cast_signed(), f.id, f.flags & 1 != 0))
            .collect();
    }
}

/// Make room for the file pool under RLIMIT_NOFILE; whether it goes high,
/// above the highest fd a task uses (`max_fd`; then no task's fd can land
/// on a pool fd), or stays low where the files were opened (each task then
/// sorts out the overlap). Raising the soft limit to the hard one needs no
/// privilege.
fn room_for_fds(uses: &[(Pid, i32, u32)], max_fd: i32) -> Result<bool> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let me = nix::unistd::getpid();
    let (soft, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).map_err(Error::restore(me, "its own fd limit"))?;
    // Pool fds go above the highest target, one per open description.
    let ids: std::collections::HashSet<u32> = uses.iter().map(|u| u.2).collect();
    let top = u64::try_from(max_fd).unwrap_or(0);
    let n = ids.len() as u64;
    // High: originals and their copies above the top, at once.
    let high = top + 24 + 2 * n <= hard;
    // Low: the originals, the top target and a few spares.
    let need = if high {
        top + 24 + 2 * n
    } else {
        (top + 32).max(n + 64)
    };
    if need > hard {
        return Err(Error::Restore {
            pid: me,
            what: format!(
                "room for fd numbers up to {need} (the tasks use numbers up to {max_fd} and {n} open files); raise the hard RLIMIT_NOFILE ({hard}) of the restore"
            ),
            errno: nix::errno::Errno::EMFILE,
        });
    }
    if need > soft {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
            .map_err(Error::restore(me, "its own fd limit"))?;
    }
    Ok(high)
}

/// Open every file of `uses` once: the pool by file id (above `max_fd`
/// when `high`), and the first fd number free above it.
fn open_pool(
    files: &Table,
    uses: &[(Pid, i32, u32)],
    max_fd: i32,
    high: bool,
    notify: Option<&crate::notify::Notify>,
) -> Result<(HashMap<u32, OwnedFd>, i32)> {
    let (opened, orphans) = files.open_all(uses)?;
    // The new masters of ptys whose master was outside the tree go to the
    // caller now, as CRIU hands them over while it opens the tree's files.
    for (index, m) in &orphans {
        let hook = notify.ok_or(Error::OrphanPty { index: *index })?;
        crate::notify::point_with_fd(hook, "orphan-pts-master", m.as_fd())?;
    }
    let mut next = max_fd + 16;
    if !high {
        next = next.max(opened.values().map(|f| f.as_raw_fd()).max().unwrap_or(0) + 16);
        return Ok((opened, next));
    }
    let mut pool = HashMap::new();
    for (id, fd) in opened {
        let copy = sys::dup_at_least(fd.as_fd(), next)
            .map_err(Error::restore(nix::unistd::getpid(), "the file pool"))?;
        next = copy.as_raw_fd() + 1;
        pool.insert(id, copy);
    }
    Ok((pool, next))
}

/// flock and OFD locks belong to the open file: taken on the pool's copy,
/// which the tasks inherit.
fn take_file_locks(plans: &[Plan], files: &Table, pool: &HashMap<u32, OwnedFd>) -> Result<()> {
    for l in files.locks.list() {
        let id = plans
            .iter()
            .find(|p| p.pst.pid.cast_signed() == l.pid)
            .and_then(|p| p.fdinfo.iter().find(|f| f.fd.cast_signed() == l.fd))
            .map(|f| f.id);
        if let Some(f) = id.and_then(|id| pool.get(&id)) {
            crate::files::file_lock::take_on_file(f.as_fd(), l)?;
        }
    }
    Ok(())
}

/// Map the trampoline in the engine (the tasks inherit it): the syscall
/// and batch code on its first page, data pages after it. The mapping is
/// the engine's until the restore ends.
fn map_trampoline(plans: &[Plan]) -> Result<(Trampoline, sys::Mapping)> {
    let ps = sys::page_size();
    let tstart = pick_trampoline(plans)?;
    let err = || Error::restore(nix::unistd::getpid(), "the trampoline");
    let mut map = sys::Mapping::fixed_anon(
        tstart,
        usize::try_from(TRAMPOLINE_PAGES * ps).unwrap_or(65536),
    )
    .map_err(err())?;
    map.write(0, &arch::SYSCALL_INSN).map_err(err())?;
    map.write(BATCH_CODE, &arch::SYSCALL_BATCH).map_err(err())?;
    map.seal_code(usize::try_from(ps).unwrap_or(4096))
        .map_err(err())?;
    let t = Trampoline {
        start: tstart,
        len: TRAMPOLINE_PAGES * ps,
        data: tstart + ps,
        park: tstart + (1 << 20),
    };
    Ok((t, map))
}

/// The process tree describes tasks that can be made: PIDs above 0, each
/// once, every task's first thread itself, parents in the tree before
/// their children (the root's parent is outside).
fn check_pstree(pstree: &[PstreeEntry]) -> Result<()> {
    let bad = |what: String| Error::BadImage {
        path: crate::images::img::PSTREE.file_name(0),
        what,
    };
    if pstree.is_empty() {
        return Err(bad("no task".into()));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, p) in pstree.iter().enumerate() {
        let limit = u32::try_from(i32::MAX).unwrap_or(u32::MAX);
        if p.pid == 0 || p.pid > limit || p.pgid > limit || p.sid > limit {
            return Err(bad(format!(
                "task {} has pid {}, group {}, session {}",
                i, p.pid, p.pgid, p.sid
            )));
        }
        if p.threads.first().is_some_and(|&t| t != p.pid) {
            return Err(bad(format!(
                "task {}: its first thread is {}, not the task itself",
                p.pid, p.threads[0]
            )));
        }
        for &t in p.threads.iter().chain(std::iter::once(&p.pid)) {
            if t == 0 || t > limit || (!seen.insert(t) && t != p.pid) {
                return Err(bad(format!(
                    "task {}: thread id {t} is used twice or out of range",
                    p.pid
                )));
            }
        }
        if i > 0 && !pstree[..i].iter().any(|q| q.pid == p.ppid) {
            return Err(bad(format!(
                "task {}: its parent {} is not before it in the tree",
                p.pid, p.ppid
            )));
        }
    }
    Ok(())
}

/// Group and session 0 are ones whose leader the dump could not see (in an
/// outer PID namespace: the dump ran in a container, or under a supervisor
/// whose session began there). No task can make them again, so the tree
/// takes the restore's own, as its children would; in a PID namespace of its
/// own (root PID 1) that already is what the restore's init inherits.
fn inherit_unseen_leaders(pstree: &mut [PstreeEntry]) {
    if pstree.first().is_some_and(|p| p.pid == 1) {
        return;
    }
    let sid = nix::unistd::getsid(None).map_or(0, |s| s.as_raw().cast_unsigned());
    let pgid = nix::unistd::getpgrp().as_raw().cast_unsigned();
    for p in pstree.iter_mut() {
        if p.sid == 0 {
            tracing::info!(
                "task {}: its session's leader was out of sight; it joins ours",
                p.pid
            );
            p.sid = sid;
        }
        if p.pgid == 0 {
            tracing::info!(
                "task {}: its group's leader was out of sight; it joins ours",
                p.pid
            );
            p.pgid = pgid;
        }
    }
}

/// The VMAs of `mm-ID.img` are mappings a task can have: page-aligned,
/// not empty, in address order without overlap.
fn check_vmas(id: u64, mm: &MmEntry) -> Result<()> {
    let ps = sys::page_size();
    let mut prev_end = 0;
    for v in &mm.vmas {
        let what = if v.start % ps != 0 || v.end % ps != 0 || v.pgoff % ps != 0 {
            "is not page-aligned"
        } else if v.start >= v.end {
            "is empty or inverted"
        } else if v.start < prev_end {
            "overlaps the one before it"
        } else {
            prev_end = v.end;
            continue;
        };
        return Err(Error::BadImage {
            path: img::MM.file_name(id),
            what: format!(
                "mapping {:#x}-{:#x} (offset {:#x}) {what}",
                v.start, v.end, v.pgoff
            ),
        });
    }
    Ok(())
}

/// `--shell-job`: the job's session (its shell's, outside the tree) is the
/// restore's own, and a job dumped in the foreground of its terminal takes
/// it again when the restore waits for it there.
fn shell_job(plans: &mut [Plan], files: &Table, detached: bool) {
    let Some(root) = plans.first() else {
        return;
    };
    let old = root.pst.sid;
    let terminal = crate::files::tty::shell_job_terminal(files, &root.pst);
    if terminal.is_some() && detached {
        tracing::warn!(
            "the job was in the foreground of this terminal; restored with -d it runs in the background"
        );
    }
    if !plans.iter().any(|p| p.pst.pid == old)
        && let Ok(sid) = nix::unistd::getsid(None)
    {
        for p in plans.iter_mut().filter(|p| p.pst.sid == old) {
            p.pst.sid = sid.as_raw().cast_unsigned();
        }
    }
    if let Some(root) = plans.first_mut()
        && !detached
    {
        root.terminal = terminal;
    }
}

/// EEXIST from clone3 set_tid means another process took the PID meanwhile.
pub(crate) fn fork_error(pid: Pid, errno: nix::errno::Errno) -> Error {
    if errno == nix::errno::Errno::EEXIST {
        Error::PidTaken { pid }
    } else {
        Error::Fork { pid, errno }
    }
}

/// The forked tree and what restoring it takes: the plans, the files, the
/// images, the trampoline, where progress goes and the engine's CPUs.
struct Made<'a> {
    /// The engine's IDs of the tasks (empty: their own).
    hosts: &'a crate::ns::pid::HostIds,
    /// The engine's ID of the root.
    root_host: Pid,
    plans: &'a [Plan],
    files: &'a Table,
    dir: &'a Dir,
    tramp: &'a Trampoline,
    progress: Option<&'a crate::progress::Progress>,
    mask: Option<&'a nix::sched::CpuSet>,
    /// With --root: the directory made the root of the tree's mount
    /// namespace once every task is restored, and whether that mount was
    /// shared.
    pivot: Option<(&'a std::ffi::CStr, bool)>,
    /// The cgroups the tasks join.
    cgroups: &'a crate::cgroup::Joins,
}

/// Wait until every forked task has set itself up (its report on
/// `ready_r`), restore them all on worker threads, release them together;
/// the pages restored.
fn finish(m: &Made<'_>, ready_r: OwnedFd, ready_fd: RawFd, t0: Instant) -> Result<u64> {
    let (plans, files, dir, tramp) = (m.plans, m.files, m.dir, m.tramp);
    let (progress, mask) = (m.progress, m.mask);
    let alive: Vec<&Plan> = plans.iter().filter(|p| p.zombie.is_none()).collect();
    // Every task reports (pid, errno, step) once its own setup is done;
    // so does a zombie that waits for its signal (see below).
    let mut f = std::fs::File::from(ready_r);
    let deadline = Instant::now() + Duration::from_secs(10);
    let zombie_inits: Vec<&Plan> = plans
        .iter()
        .filter(|p| p.zombie.is_some_and(|c| c & 0x7f != 0) && p.chain(0).last() == Some(&1))
        .collect();
    for _ in 0..alive.len() + zombie_inits.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pfd = [PollFd::new(f.as_fd(), PollFlags::POLLIN)];
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        if poll(&mut pfd, PollTimeout::from(ms)).unwrap_or(0) == 0 {
            return Err(Error::Timeout {
                secs: 10,
                step: "waiting for the restored tasks to set up their files",
            });
        }
        let mut msg = [0u8; 12];
        f.read_exact(&mut msg).map_err(|_| Error::TaskDied {
            pid: Pid::from_raw(0),
            step: "setting up its files",
            status: String::new(),
        })?;
        let word = |i: usize| i32::from_ne_bytes([msg[i], msg[i + 1], msg[i + 2], msg[i + 3]]);
        if word(4) != 0 {
            return Err(Error::Restore {
                pid: Pid::from_raw(word(0)),
                what: child::step_name(word(8)).into(),
                errno: nix::errno::Errno::from_raw(word(4)),
            });
        }
    }
    if own_pidns(plans) || plans.iter().any(|p| !p.pst.stasis_nested.is_empty()) {
        m.hosts.learn_tree(m.root_host)?;
    }
    // A zombie that was the init of a PID namespace and died of a signal
    // waits for it (see child::run).
    for p in zombie_inits {
        let code = p.zombie.unwrap_or(0) & 0x7f;
        let sig = Signal::try_from(code.cast_signed()).unwrap_or(Signal::SIGKILL);
        let _ = kill(m.hosts.get(p.pst.pid), sig);
    }
    let forking = t0.elapsed();
    tracing::debug!(
        us = forking.as_micros(),
        "every task forked and set up its files"
    );
    let filters = seccomp::Table::load(dir)?;
    crate::progress::report(
        progress,
        crate::progress::Step::Tasks {
            done: 0,
            total: alive.len(),
        },
    );
    let cpus = worker_cpus(mask, alive.len());
    let groups = split(&alive, cpus.len().max(1));
    let barrier = std::sync::Barrier::new(groups.len());
    let failed = std::sync::atomic::AtomicBool::new(false);
    let done = std::sync::atomic::AtomicUsize::new(0);
    let w = Work {
        hosts: m.hosts,
        alive: &alive,
        files,
        dir,
        tramp,
        ready_fd,
        filters: &filters,
        progress,
        mask,
        barrier: &barrier,
        failed: &failed,
        done: &done,
        pivot: m
            .pivot
            .zip(m.plans.first().and_then(|p| p.mnt_ns.as_ref()))
            .map(|((dir, shared), ns)| (dir, shared, ns)),
        cgroups: m.cgroups,
    };
    let jobs: Vec<_> = groups
        .iter()
        .enumerate()
        .map(|(k, g)| {
            let cpu = cpus.get(k).copied();
            let w = &w;
            move || w.run(g, cpu)
        })
        .collect();
    let results = crate::workers::run(jobs, |_| {
        Err(Error::Unexpected {
            tid: Pid::from_raw(0),
            op: "restore",
            what: "a restore worker panicked".into(),
        })
    });
    let mut pages = 0;
    for r in results {
        pages += r?;
    }
    tracing::debug!(
        us = t0.elapsed().as_micros(),
        "every task restored and released"
    );
    settle(plans, m.hosts);
    let mut w = dir.create_stats("restore")?;
    w.write(&StatsEntry {
        dump: None,
        restore: Some(RestoreStatsEntry {
            pages_compared: 0,
            pages_skipped_cow: 0,
            forking_time: u32::try_from(forking.as_micros()).unwrap_or(u32::MAX),
            restore_time: u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX),
            pages_restored: Some(pages),
        }),
    })?;
    w.finish()?;
    Ok(pages)
}

/// CPUs to restore on, one worker each: those the engine may use, up to
/// one per task and at most eight.
fn worker_cpus(mask: Option<&nix::sched::CpuSet>, tasks: usize) -> Vec<usize> {
    let Some(m) = mask else {
        return Vec::new();
    };
    (0..nix::sched::CpuSet::count())
        .filter(|&c| m.is_set(c).unwrap_or(false))
        .take(tasks.clamp(1, 8))
        .collect()
}

/// Split the tasks (indices into `alive`, in tree order) between `n`
/// workers. Tasks sharing anonymous shared memory, directly or through
/// others (A and C share one object, C and B another), stay on one worker,
/// in order: a later one maps the memory through the first one's
/// map_files.
fn split(alive: &[&Plan], n: usize) -> Vec<Vec<usize>> {
    // Union-find over the tasks, joined by the objects they map.
    let mut parent: Vec<usize> = (0..alive.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let mut first_of: HashMap<u64, usize> = HashMap::new();
    for (i, p) in alive.iter().enumerate() {
        let shmids = p.mm.iter().flat_map(|m| {
            m.vmas
                .iter()
                .filter(|v| v.status & mm::status::ANON_SHARED != 0)
                .map(|v| v.shmid)
        });
        for id in shmids {
            let j = *first_of.entry(id).or_insert(i);
            let (a, b) = (root(&mut parent, i), root(&mut parent, j));
            parent[a.max(b)] = a.min(b);
        }
    }
    let mut out: Vec<Vec<usize>> = vec![Vec::new(); n.max(1)];
    let mut worker_of: HashMap<usize, usize> = HashMap::new();
    for i in 0..alive.len() {
        let group = root(&mut parent, i);
        let least = (0..out.len())
            .min_by_key(|&k| out.get(k).map_or(0, Vec::len))
            .unwrap_or(0);
        let w = *worker_of.entry(group).or_insert(least);
        if let Some(list) = out.get_mut(w) {
            list.push(i);
        }
    }
    out.retain(|l| !l.is_empty());
    out
}

/// What the restore workers share.
struct Work<'a> {
    /// The engine's IDs of the tasks.
    hosts: &'a crate::ns::pid::HostIds,
    alive: &'a [&'a Plan],
    files: &'a Table,
    dir: &'a Dir,
    tramp: &'a Trampoline,
    ready_fd: RawFd,
    filters: &'a seccomp::Table,
    progress: Option<&'a crate::progress::Progress>,
    /// The engine's CPUs: what the tasks would have inherited.
    mask: Option<&'a nix::sched::CpuSet>,
    barrier: &'a std::sync::Barrier,
    failed: &'a std::sync::atomic::AtomicBool,
    done: &'a std::sync::atomic::AtomicUsize,
    /// With --root: the directory made the root of the tree's mount
    /// namespace, whether it was shared, and that namespace.
    pivot: Option<(&'a std::ffi::CStr, bool, &'a OwnedFd)>,
    /// The cgroups the tasks join, and threads in others are moved to.
    cgroups: &'a crate::cgroup::Joins,
}

impl Work<'_> {
    fn restore_task(
        &self,
        p: &Plan,
        threads: &mut Vec<Pid>,
        shared: &mut mm::SharedAnon,
    ) -> Result<u64> {
        let (files, dir, t) = (self.files, self.dir, self.tramp);
        let (ready_fd, filters) = (self.ready_fd, self.filters);
        let pid = self.hosts.get(p.pst.pid);
        let base = seize(pid)?;
        threads.push(pid);
        // The trampoline's `syscall` is followed by breakpoints.
        let r = Remote::with_trap(pid, base, t.start)
            .with_batch(t.start + BATCH_CODE as u64, t.data + BATCH_TABLE);
        let mm = p.mm.as_ref().ok_or_else(|| Error::BadImage {
            path: img::MM.file_name(pid),
            what: "missing".into(),
        })?;
        // First, in the batch that unmaps the engine's memory: the report pipe
        // closed, and the engine's rseq registration, inherited through fork,
        // dropped before the memory it points to goes.
        let mut first: Vec<remote::Call> = Vec::new();
        if !p.fdinfo.iter().any(|f| f.fd.cast_signed() == ready_fd) {
            let fd = u64::from(ready_fd.cast_unsigned());
            first.push(("close", nr::CLOSE, [fd, 0, 0, 0, 0, 0]));
        }
        let rs = sys::rseq_config(pid).map_err(Error::ptrace(pid, "GET_RSEQ_CONFIGURATION"))?;
        if rs.abi_pointer != 0 {
            first.push((
                "rseq(unregister)",
                nr::RSEQ,
                [
                    rs.abi_pointer,
                    u64::from(rs.abi_size),
                    1,
                    u64::from(rs.signature),
                    0,
                    0,
                ],
            ));
        }
        // The executable, for PR_SET_MM_MAP, opened in that batch too.
        let exe = files
            .path_of(mm.exe_file_id)
            .ok_or_else(|| Error::BadImage {
                path: img::MM.file_name(pid),
                what: "the executable's file id is not in files.img".into(),
            })?;
        first.push(mm::open_call(
            pid,
            t,
            mm::FIRST_PATH_AT,
            "openat(exe)",
            exe.as_bytes(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )?);
        let (pages, opened) = mm::restore(
            &r,
            t,
            &mm.vmas,
            files,
            (dir, u64::from(p.pst.pid)),
            shared,
            first,
        )?;
        let exe_fd = opened.last().copied().unwrap_or(u64::MAX);
        set_mm_map(&r, t, mm, exe_fd)?;
        open_late_fds(&r, t, p, files)?;
        if !p.inherited.is_empty() {
            let calls: Vec<_> = p
                .inherited
                .iter()
                .map(|&fd| {
                    (
                        "close",
                        nr::CLOSE,
                        [u64::from(fd.cast_unsigned()), 0, 0, 0, 0, 0],
                    )
                })
                .collect();
            r.call_all(&calls)?;
        }
        let locks: Vec<_> = files
            .locks
            .list()
            .iter()
            .filter(|l| l.pid.cast_unsigned() == p.pst.pid)
            .collect();
        crate::files::file_lock::take_in_task(&r, t, &locks)?;
        crate::files::tty::restore_ctty(&r, t, files, &p.pst, &p.fdinfo)?;
        let cx = crate::files::InTask { r: &r, t };
        for &(fd, id) in &p.settle {
            if let Some(k) = files.get(id).and_then(|e| e.kind.as_ref()) {
                crate::files::registry::settle(k, &cx, fd)?;
            }
        }
        // The root directory last among path lookups: every path in the images
        // is as seen from the engine's root.
        if let Some(root) = p.root_dir.as_deref().filter(|r| *r != "/") {
            let mut b = root.as_bytes().to_vec();
            b.push(0);
            let at = mm::put(pid, t, 8192, &b)?;
            r.call("chroot", nr::CHROOT, [at, 0, 0, 0, 0, 0])?;
        }
        let tc = p.core.tc.as_ref().ok_or_else(|| Error::BadImage {
            path: img::CORE.file_name(pid),
            what: "no task_core_entry".into(),
        })?;
        if mm.thp_disabled == Some(true) {
            r.call("prctl(PR_SET_THP_DISABLE)", nr::PRCTL, [41, 1, 0, 0, 0, 0])?;
        }
        // Its name and umask the task set itself before it reported.
        task::restore_task(&r, tc, t.data)?;
        // Threads: created from the leader with their own TIDs; each one's own
        // state in one batch.
        let mut made = Vec::new();
        for (i, (core, &id)) in p
            .thread_cores
            .iter()
            .zip(p.pst.threads.iter().skip(1))
            .enumerate()
        {
            let (tr, tid) = clone_thread(&r, t, &p.set_tid(i + 1), |made| {
                if self.hosts.is_empty() {
                    Ok(made)
                } else {
                    self.hosts.learn_thread(pid, id)
                }
            })?;
            threads.push(tid);
            if let Some(s) = core.thread_core.as_ref().and_then(|c| c.cg_set)
                && Some(s) != tc.cg_set
            {
                self.cgroups.move_thread(tid, s)?;
            }
            let mut calls = task::thread_calls(pid, core, t.data)?;
            if let Some(comm) = core.thread_core.as_ref().and_then(|c| c.comm.as_ref()) {
                calls.push(comm_call(&tr, t, comm)?);
            }
            tr.call_all(&calls)?;
            task::queue_thread_signals(&tr, pid, core, t.data)?;
            made.push((tr, core));
        }
        // The leader's own state and the task-wide calls that wait for the
        // threads (personality, subreaper): one batch.
        let mut calls = task::thread_calls(pid, &p.core, t.data)?;
        calls.extend(task::late_calls(tc));
        r.call_all(&calls)?;
        task::queue_thread_signals(&r, pid, &p.core, t.data)?;
        task::restore_task_late(&r, tc, t.data)?;
        // Per thread: seccomp (suspended for the engine), then its credentials
        // (the capability to install filters may go with them). A credential
        // change resets the dumpable flag and the parent-death signal, so those
        // follow.
        for (tr, core) in made.iter().map(|(tr, c)| (tr, *c)).chain([(&r, &p.core)]) {
            let thc = core.thread_core.as_ref();
            filters.restore_thread(
                tr,
                thc.and_then(|c| c.seccomp_mode),
                thc.and_then(|c| c.seccomp_filter),
                t.data,
            )?;
            if let Some(c) = thc.and_then(|c| c.creds.as_ref()) {
                creds::restore(tr, pid, c, t.data)?;
                creds::restore_no_new_privs(tr, c)?;
            }
            // While restoring it was SIGKILL (a dying engine takes its
            // half-made tasks along); now the dumped one.
            let pdeath = thc.and_then(|c| c.pdeath_sig).unwrap_or(0);
            let mut calls = vec![(
                "prctl(PR_SET_PDEATHSIG)",
                nr::PRCTL,
                [1, u64::from(pdeath), 0, 0, 0, 0],
            )];
            // The leader comes last: the dumpable flag goes with its call.
            if tr.tid == pid
                && let Some(d @ (0 | 1)) = mm.dumpable
            {
                calls.push((
                    "prctl(PR_SET_DUMPABLE)",
                    nr::PRCTL,
                    [4, d.unsigned_abs().into(), 0, 0, 0, 0],
                ));
            }
            tr.call_all(&calls)?;
        }
        // Last: the trampoline itself. The leader stops at the syscall's exit
        // and never runs the (now unmapped) instruction after it.
        r.call_final("munmap", nr::MUNMAP, [t.start, t.len, 0, 0, 0, 0])?;
        for (tr, core) in &made {
            task::restore_regs(tr.tid, core)?;
        }
        task::restore_regs(pid, &p.core)?;
        Ok(pages)
    }

    /// Restore the tasks `mine` (indices into `alive`) on `cpu`: the worker
    /// thread becomes their tracer, they and it run on that one CPU (a
    /// remote call then costs two context switches, not two wake-ups of an
    /// idle CPU), and once every worker is done they are released with the
    /// engine's CPUs. On failure every task of the tree is killed.
    fn run(&self, mine: &[usize], cpu: Option<usize>) -> Result<u64> {
        use std::sync::atomic::Ordering;
        let one = cpu.and_then(|c| {
            let mut set = nix::sched::CpuSet::new();
            set.set(c).ok()?;
            nix::sched::sched_setaffinity(Pid::from_raw(0), &set).ok()?;
            Some(set)
        });
        let tasks: Vec<&Plan> = mine
            .iter()
            .filter_map(|&i| self.alive.get(i).copied())
            .collect();
        if let Some(set) = &one {
            for p in &tasks {
                let _ = nix::sched::sched_setaffinity(self.hosts.get(p.pst.pid), set);
            }
        }
        let mut threads: Vec<Pid> = Vec::new();
        let mut shared = mm::SharedAnon::new();
        let mut pages = 0;
        let mut res = Ok(());
        for p in &tasks {
            if self.failed.load(Ordering::SeqCst) {
                break;
            }
            let started = Instant::now();
            tracing::debug!(pid = p.pst.pid, "restoring the task");
            match self.restore_task(p, &mut threads, &mut shared) {
                Ok(n) => {
                    tracing::debug!(
                        pid = p.pst.pid,
                        us = started.elapsed().as_micros(),
                        "task restored"
                    );
                    pages += n;
                    use crate::progress::{Step, report};
                    report(self.progress, Step::Pages(n));
                    let done = self.done.fetch_add(1, Ordering::SeqCst) + 1;
                    report(
                        self.progress,
                        Step::Tasks {
                            done,
                            total: self.alive.len(),
                        },
                    );
                }
                Err(e) => {
                    res = Err(e);
                    break;
                }
            }
        }
        // The first failure is the one to report; the others follow from
        // its killing the tree.
        let mut first = false;
        if res.is_err() {
            first = !self.failed.swap(true, Ordering::SeqCst);
            // Half-made tasks must not run once their tracer is gone.
            for p in self.alive.iter().rev() {
                let _ = kill(self.hosts.get(p.pst.pid), Signal::SIGKILL);
            }
        }
        // Nothing runs before every task is restored.
        let lead = self.barrier.wait().is_leader();
        // Every path looked up: the tree's root becomes its namespace's.
        let mut pivoted = Ok(());
        if let Some((root, shared, ns)) = self.pivot {
            if lead && !self.failed.load(Ordering::SeqCst) {
                pivoted = sys::pivot_in(ns.as_fd(), root, shared).map_err(|errno| Error::Restore {
                    pid: Pid::from_raw(0),
                    what: format!(
                        "making {} the root of the tree's mount namespace (pivot_root)",
                        root.to_string_lossy()
                    ),
                    errno,
                });
                if pivoted.is_err() {
                    self.failed.store(true, Ordering::SeqCst);
                    for p in self.alive.iter().rev() {
                        let _ = kill(self.hosts.get(p.pst.pid), Signal::SIGKILL);
                    }
                }
            }
            self.barrier.wait();
        }
        if first {
            res?;
        }
        pivoted?;
        if self.failed.load(Ordering::SeqCst) {
            return Ok(pages);
        }
        for p in &tasks {
            if p.core
                .tc
                .as_ref()
                .is_some_and(|t| t.task_state == task::state::STOPPED)
            {
                let _ = kill(self.hosts.get(p.pst.pid), Signal::SIGSTOP);
            }
        }
        if let Some(m) = self.mask.filter(|_| one.is_some()) {
            for tid in &threads {
                let _ = nix::sched::sched_setaffinity(*tid, m);
            }
        }
        for tid in &threads {
            let _ = ptrace::detach(*tid, None);
        }
        Ok(pages)
    }
}

/// Wait (briefly) until stopped tasks show as stopped and zombies as
/// zombies, so that the tree looks as dumped when restore returns: the
/// SIGSTOP sent before the release, and a zombie's own exit, take effect
/// asynchronously.
fn settle(plans: &[Plan], hosts: &crate::ns::pid::HostIds) {
    let want: Vec<(Pid, char)> = plans
        .iter()
        .filter_map(|p| {
            let state = p.core.tc.as_ref()?.task_state;
            let c = match state {
                task::state::STOPPED => 'T',
                task::state::ZOMBIE => 'Z',
                _ => return None,
            };
            Some((hosts.get(p.pst.pid), c))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(2);
    for (pid, c) in want {
        while proc::stat(pid, None).is_ok_and(|s| s.state != c) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn seize(tid: Pid) -> Result<arch::Regs> {
    ptrace::seize(
        tid,
        Options::PTRACE_O_TRACESYSGOOD | Options::PTRACE_O_TRACECLONE,
    )
    .map_err(Error::ptrace(tid, "SEIZE"))?;
    ptrace::interrupt(tid).map_err(Error::ptrace(tid, "INTERRUPT"))?;
    loop {
        match remote::wait(tid, "taking over a restored task")? {
            WaitStatus::PtraceEvent(..) => break,
            WaitStatus::Stopped(_, sig) => {
                ptrace::cont(tid, sig).map_err(Error::ptrace(tid, "CONT"))?;
            }
            _ => {}
        }
    }
    sys::set_sigmask(tid, u64::MAX).map_err(Error::ptrace(tid, "SETSIGMASK"))?;
    sys::getregs(tid).map_err(Error::ptrace(tid, "GETREGS"))
}

/// Create thread `tid` from the leader under `r` (clone3 with set_tid) and
/// take it over.
fn clone_thread(
    r: &Remote,
    t: &Trampoline,
    ids: &[libc::pid_t],
    host: impl FnOnce(Pid) -> Result<Pid>,
) -> Result<(Remote, Pid)> {
    let pid = r.tid;
    let flags: u64 = (libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD
        | libc::CLONE_SYSVSEM)
        .cast_unsigned()
        .into();
    let tid_bytes: Vec<u8> = ids.iter().flat_map(|v| v.to_ne_bytes()).collect();
    let set_tid = mm::put(pid, t, 4096, &tid_bytes)?;
    let mut args = [0u64; 11];
    args[0] = flags;
    args[8] = set_tid;
    args[9] = ids.len() as u64;
    let bytes: Vec<u8> = args.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let a = mm::put(pid, t, 0, &bytes)?;
    let made = r.call("clone3", nr::CLONE3, [a, 88, 0, 0, 0, 0])?;
    let tid = host(Pid::from_raw(i32::try_from(made).unwrap_or(0)))?;
    match remote::wait(tid, "creating a thread")? {
        WaitStatus::PtraceEvent(..) => {}
        other => {
            return Err(Error::Unexpected {
                tid,
                op: "clone3",
                what: format!("{other:?}"),
            });
        }
    }
    sys::set_sigmask(tid, u64::MAX).map_err(Error::ptrace(tid, "SETSIGMASK"))?;
    let tregs = sys::getregs(tid).map_err(Error::ptrace(tid, "GETREGS"))?;
    Ok((
        Remote::with_trap(tid, tregs, t.start)
            .with_batch(t.start + BATCH_CODE as u64, t.data + BATCH_TABLE),
        tid,
    ))
}

/// Open the task's late files inside it ([`crate::files::FileKind::open_in_task`]).
fn open_late_fds(r: &Remote, t: &Trampoline, p: &Plan, files: &Table) -> Result<()> {
    let cx = crate::files::InTask { r, t };
    for &(target, id, cloexec) in &p.late_fds {
        if let Some(k) = files.get(id).and_then(|e| e.kind.as_ref()) {
            crate::files::registry::open_in_task(k, &cx, target, cloexec)?;
        }
    }
    Ok(())
}

/// The call naming a thread `comm` (the name written in the trampoline's
/// data, past what [`task::thread_calls`] uses).
fn comm_call(r: &Remote, t: &Trampoline, comm: &str) -> Result<remote::Call> {
    let mut b = comm.as_bytes().to_vec();
    b.truncate(15);
    b.push(0);
    let at = mm::put(r.tid, t, 8192, &b)?;
    Ok(("prctl(PR_SET_NAME)", nr::PRCTL, [15, at, 0, 0, 0, 0]))
}

/// PR_SET_MM_MAP with the task's executable open as its fd `fd` (closed
/// in the same batch).
fn set_mm_map(r: &Remote, t: &Trampoline, mm: &MmEntry, fd: u64) -> Result<()> {
    let pid = r.tid;
    let auxv: Vec<u8> = mm
        .mm_saved_auxv
        .iter()
        .flat_map(|w| w.to_ne_bytes())
        .collect();
    let auxv_at = mm::put(pid, t, 4096, &auxv)?;
    let auxv_len = u64::try_from(auxv.len()).unwrap_or(0);
    let words = [
        mm.mm_start_code,
        mm.mm_end_code,
        mm.mm_start_data,
        mm.mm_end_data,
        mm.mm_start_brk,
        mm.mm_brk,
        mm.mm_start_stack,
        mm.mm_arg_start,
        mm.mm_arg_end,
        mm.mm_env_start,
        mm.mm_env_end,
        auxv_at,
    ];
    // Then two u32: auxv_size and exe_fd.
    let mut map: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    map.extend_from_slice(&u32::try_from(auxv_len).unwrap_or(0).to_ne_bytes());
    map.extend_from_slice(&u32::try_from(fd).unwrap_or(u32::MAX).to_ne_bytes());
    let at = mm::put(pid, t, 0, &map)?;
    let res = r.call_many(&[
        (
            "prctl(PR_SET_MM_MAP)",
            nr::PRCTL,
            [35, 14, at, map.len() as u64, 0, 0],
        ),
        ("close", nr::CLOSE, [fd, 0, 0, 0, 0, 0]),
    ])?;
    let got = |i: usize, name| r.result(name, res.get(i).copied().unwrap_or(0));
    got(0, "prctl(PR_SET_MM_MAP)")?;
    got(1, "close").map(drop)
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
