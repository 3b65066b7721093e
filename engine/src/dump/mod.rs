//! `stasis dump`: freeze the tree, have every object module describe its
//! objects into the images directory, then kill the tree (or let it run on
//! with `--leave-running`). Any failure releases the tree exactly as it was.

use stasis_kernel as kernel;
use std::path::PathBuf;
use std::time::Instant;

use nix::unistd::Pid;
use stasis_arch::native::nr;
use stasis_proto::images::{
    DumpStatsEntry, FdinfoEntry, InventoryEntry, Lsmtype, MmEntry, PstreeEntry, StatsEntry,
    TaskCoreEntry, TaskKobjIdsEntry, VmaEntry,
};

use crate::error::{EngineError as Error, Result};
use crate::files::{self, Table};
use crate::images::Dir;
use crate::images::img;
use crate::progress::{Progress, Step};
use crate::task::remote::Remote;
use crate::task::seize::{self, State, Task, Tree};
use crate::{mm, proc, task, task::seccomp};

/// What `stasis dump` was asked to do.
#[derive(Debug, Clone)]
pub struct Opts {
    /// Root of the tree (`-t`).
    pub pid: Pid,
    /// Images directory (`-D`).
    pub dir: PathBuf,
    /// `--leave-running`.
    pub leave_running: bool,
    /// `--shell-job`.
    pub shell_job: bool,
    /// RPC `orphan_pts_master`: a pty slave whose master is outside the
    /// tree (a container's console) is dumped; the restore makes a new
    /// master and hands it to the caller.
    pub orphan_pts_master: bool,
    /// `--timeout`: how long freezing may take.
    pub timeout: std::time::Duration,
    /// `--ghost-limit`: largest deleted-while-open file saved, in bytes.
    pub ghost_limit: u64,
    /// `--file-locks`: dump the file locks held (refused otherwise).
    pub file_locks: bool,
    /// `--tcp-established`: dump established TCP connections (TCP repair).
    pub tcp_established: bool,
    /// `--external tty[RDEV:DEV]`: terminals that are the caller's.
    pub ext_ttys: Vec<String>,
    /// `--external net[INO]:KEY`: network namespaces that are the
    /// caller's, by inode, with the key the restore gets them by.
    pub ext_netns: Vec<(u64, String)>,
    /// `--cgroup-root`: the cgroups saved begin there (a container's
    /// cgroup, above its tasks' own), not at the tasks' cgroups.
    pub cgroup_roots: Vec<crate::cgroup::CgRoot>,
    /// `--skip-in-flight`: connections a listener has not accepted are
    /// dropped (else such a listener is refused).
    pub skip_in_flight: bool,
    /// `--ext-unix-sk`: datagram sockets connected outside the tree.
    pub ext_unix_sk: bool,
    /// `--network-lock`: drop the packets of the established TCP
    /// connections dumped until their restore (`skip` clears it).
    pub network_lock: bool,
    /// Where progress goes, if anywhere.
    pub progress: Option<Progress>,
    /// Who is told the action-script points (`pre-dump`, `post-dump`).
    pub notify: Option<crate::notify::Notify>,
    /// `--freeze-cgroup`: a freezer cgroup (v1 or v2) holding the tree,
    /// frozen while its tasks are seized.
    pub freeze_cgroup: Option<PathBuf>,
    /// `--external mnt[POINT]:KEY`: mounts of the tree that are the
    /// caller's, as (mount point, key).
    pub ext_mounts: Vec<(String, String)>,
    /// CRIU's `empty_ns` for the network: its devices other than loopback
    /// are the caller's (a runtime's network setup), not saved.
    pub empty_net: bool,
}

/// Figures of a dump, as `stats-dump` records them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    /// Microseconds spent freezing.
    pub freezing_us: u32,
    /// Microseconds the tree stayed frozen.
    pub frozen_us: u32,
    /// Microseconds spent copying memory.
    pub memdump_us: u32,
    /// Pages looked at and written.
    pub pages: mm::PageStats,
    /// Processes dumped.
    pub tasks: usize,
}

fn us(since: Instant) -> u32 {
    u32::try_from(since.elapsed().as_micros()).unwrap_or(u32::MAX)
}

/// Dump the tree under `opts.pid` into `opts.dir`.
pub fn dump(opts: &Opts) -> Result<Stats> {
    crate::task::cpu::host_supported()?;
    // The engine's CPUs, noted before any thread is pinned.
    kernel::sched::engine_mask();
    let dir = Dir::open(&opts.dir)?;
    let before = dir.entries();
    crate::notify::point(opts.notify.as_ref(), "pre-dump", opts.pid)?;
    let t0 = Instant::now();
    let tree = seize::freeze(opts.pid, opts.timeout, || match &opts.freeze_cgroup {
        Some(dir) => crate::cgroup::seize_frozen(dir, opts.timeout),
        None => Ok(std::collections::BTreeSet::new()),
    })?;
    let engine_mask = seize::pin_engine();
    let freezing_us = us(t0);
    let t1 = Instant::now();
    let res = dump_frozen(&tree, &dir, opts).and_then(|r| {
        crate::notify::point(opts.notify.as_ref(), "post-dump", opts.pid).map(|()| r)
    });
    match res {
        Ok((mut stats, mut files)) => {
            seize::unpin_engine(engine_mask);
            stats.freezing_us = freezing_us;
            if opts.leave_running {
                tree.release();
            } else {
                tree.kill();
            }
            files.finish(&dir, !opts.leave_running)?;
            stats.frozen_us = us(t1);
            write_stats(&dir, &stats)?;
            Ok(stats)
        }
        Err(e) => {
            tree.release();
            seize::unpin_engine(engine_mask);
            // No half-written images are left behind (a full disk, say).
            dir.remove_new(&before);
            Err(e)
        }
    }
}

fn write_stats(dir: &Dir, s: &Stats) -> Result<()> {
    let mut w = dir.create_stats("dump")?;
    w.write(&StatsEntry {
        dump: Some(DumpStatsEntry {
            freezing_time: s.freezing_us,
            frozen_time: s.frozen_us,
            memdump_time: s.memdump_us,
            memwrite_time: s.memdump_us,
            pages_scanned: s.pages.scanned,
            pages_skipped_parent: 0,
            pages_written: s.pages.written,
            pages_lazy: 0,
            ..DumpStatsEntry::default()
        }),
        restore: None,
    })?;
    w.finish()?;
    Ok(())
}

/// The object ids of the task whose ID in the images is `id`.
fn ids(id: u32) -> TaskKobjIdsEntry {
    TaskKobjIdsEntry {
        vm_id: id,
        files_id: id,
        fs_id: id,
        sighand_id: id,
        ..TaskKobjIdsEntry::default()
    }
}

/// The tree's tasks with their threads' IDs, zombies too unless `live`.
fn threads_of(tree: &Tree, live: bool) -> Vec<(Pid, Vec<Pid>)> {
    tree.tasks
        .iter()
        .filter(|t| !live || !matches!(t.state, State::Zombie(_)))
        .map(|t| (t.pid, t.threads.iter().map(|th| th.tid).collect()))
        .collect()
}

/// Namespaces, cgroups and the tables every task adds to, then every task,
/// then the images that take all tasks into account.
fn dump_frozen(tree: &Tree, dir: &Dir, opts: &Opts) -> Result<(Stats, Table)> {
    let root = tree.root().map_or(opts.pid, |t| t.pid);
    let pids = crate::ns::pid::Ids::read(&threads_of(tree, false))?;
    let tasks: Vec<Pid> = tree.tasks.iter().map(|t| t.pid).collect();
    let userns = crate::ns::dump(
        root,
        dir,
        &opts.ext_mounts,
        opts.empty_net,
        &opts.ext_netns,
        &tasks,
    )?;
    let mut cgroups = crate::cgroup::Sets::read(root, &threads_of(tree, true))?;
    cgroups.walk_from(&opts.cgroup_roots);
    let mut files = files_table(tree, opts, root)?;
    let mut filters = seccomp::Table::default();
    let mut stats = Stats::default();
    crate::progress::report(
        opts.progress.as_ref(),
        Step::Tasks {
            done: 0,
            total: tree.tasks.len(),
        },
    );
    let mut out = Out {
        dir,
        files: &mut files,
        filters: &mut filters,
        stats: &mut stats,
        pids: &pids,
        userns: userns.as_ref(),
        cgroups: &cgroups,
        foreign: None,
        pstree: Vec::new(),
    };
    dump_all_tasks(tree, opts, root, &mut out)?;
    write_tree(&mut out, root, opts)?;
    Ok((stats, files))
}

/// The table of open files, with the options fds are described with and
/// where the tree's sockets and connections are.
fn files_table(tree: &Tree, opts: &Opts, root: Pid) -> Result<Table> {
    let mut files = Table::default();
    files.ttys.set_external(opts.ext_ttys.clone());
    if crate::ns::own_net(root) {
        files.unix.netns_of = Some(root);
        if opts.network_lock && opts.tcp_established {
            // Its peers outside reach it over its devices: locked in it.
            let net = nix::sched::CloneFlags::CLONE_NEWNET;
            let sock = crate::task::in_namespace_of(root, "net", net, || {
                crate::net::netlock::socket().map_err(Error::dump(
                    root,
                    "a netfilter socket in its network namespace, for the network lock \
                     (--network-lock skip dumps without it)",
                ))
            })?;
            files
                .tcp
                .set_lock(crate::net::netlock::Lock::in_namespace_of(root, sock));
        }
    } else if opts.network_lock && opts.tcp_established {
        // Peers outside the tree share this namespace with it.
        files.tcp.set_lock(crate::net::netlock::Lock::new(root));
    }
    let fopts = files::Opts {
        shell_job: opts.shell_job,
        orphan_pts_master: opts.orphan_pts_master,
        ghost_limit: opts.ghost_limit,
        leave_running: opts.leave_running,
        file_locks: opts.file_locks,
        tcp_established: opts.tcp_established,
        skip_in_flight: opts.skip_in_flight,
        ext_unix_sk: opts.ext_unix_sk,
    };
    files.start(fopts, tree.tasks.iter().map(|t| t.pid).collect());
    Ok(files)
}

/// Every task of the tree. A helper thread reads each live task's VMAs and
/// copies its pages (no ptrace needed) ahead of this thread, which
/// describes the task's files and asks the task itself for the rest: the
/// two halves overlap.
fn dump_all_tasks(tree: &Tree, opts: &Opts, root: Pid, out: &mut Out<'_>) -> Result<()> {
    // (pid, its ID in the images, the ID of its pages).
    let live: Vec<(Pid, u64, u32)> = tree
        .tasks
        .iter()
        .enumerate()
        .filter(|(_, t)| !matches!(t.state, State::Zombie(_)))
        .map(|(i, t)| {
            (
                t.pid,
                u64::from(out.pids.image(t.pid)),
                u32::try_from(i + 1).unwrap_or(u32::MAX),
            )
        })
        .collect();
    let (dir, progress) = (out.dir, opts.progress.as_ref());
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Memory>>(4);
        s.spawn(move || {
            // Off the engine's pinned CPU.
            kernel::sched::unpin_thread();
            let mut shared = mm::SharedPages::default();
            for (pid, img_id, id) in live {
                let m = memory_of((pid, img_id), dir, id, &mut shared, progress);
                let failed = m.is_err();
                if tx.send(m).is_err() || failed {
                    break;
                }
            }
        });
        out.foreign = crate::ns::own_mnt(root)
            .then(|| crate::ns::mnt::Foreign::new(root))
            .transpose()?;
        let res = dump_tasks(tree, opts, &rx, out, root);
        // A helper blocked on a full channel gives up once it is gone.
        drop(rx);
        res
    })
}

/// The images that take every task into account: the files, seccomp
/// filters and cgroups they share, the process tree and the inventory.
fn write_tree(out: &mut Out<'_>, root: Pid, opts: &Opts) -> Result<()> {
    let (dir, pids) = (out.dir, out.pids);
    out.files
        .number_pids(|p| pids.image(Pid::from_raw(p)).cast_signed());
    crate::ns::dump_clocks(root, dir)?;
    // memfd contents are pages of the images too.
    out.stats.pages.written += out.files.write(dir)?;
    out.filters.write(dir)?;
    out.cgroups.write(dir)?;
    dir.write_all(img::PSTREE, 0, &out.pstree)?;
    dir.write_all(img::INVENTORY, 0, &[inventory(out, root, opts)])
}

/// The inventory of the images.
fn inventory(out: &Out<'_>, root: Pid, opts: &Opts) -> InventoryEntry {
    InventoryEntry {
        img_version: stasis_proto::kind::IMAGES_VERSION,
        fdinfo_per_id: Some(true),
        root_ids: Some(ids(out.pids.image(root))),
        ns_per_id: Some(true),
        // The engine's own cgroups are set 1 (see crate::cgroup).
        root_cg_set: Some(1),
        lsmtype: Some(Lsmtype::NoLsm as i32),
        dump_criu_run_id: Some(format!("stasis-{}-{}", std::process::id(), root)),
        // The restore lifts a lock the killed tree's connections left.
        network_lock_method: (out.files.tcp.lock_held() && !opts.leave_running)
            .then_some(crate::net::netlock::METHOD_NFTABLES),
        ..InventoryEntry::default()
    }
}

/// A task's memory, as the helper thread found and dumped it.
struct Memory {
    raw: mm::RawVmas,
    pages: mm::PageStats,
    us: u32,
}

fn memory_of(
    (pid, img_id): (Pid, u64),
    dir: &Dir,
    pages_id: u32,
    shared: &mut mm::SharedPages,
    progress: Option<&Progress>,
) -> Result<Memory> {
    let t = Instant::now();
    let (raw, pages) = mm::dump_memory(pid, img_id, dir, pages_id, shared, progress)?;
    Ok(Memory {
        raw,
        pages,
        us: us(t),
    })
}

impl Stats {
    /// Count the memory of one task.
    fn add_memory(&mut self, mem: &Memory) {
        self.memdump_us = self.memdump_us.saturating_add(mem.us);
        self.pages.scanned += mem.pages.scanned;
        self.pages.written += mem.pages.written;
    }
}

/// Where the dump of each task goes: the images directory, the tables
/// every task adds to (open files, seccomp filters, the process tree) and
/// the figures.
struct Out<'a> {
    dir: &'a Dir,
    files: &'a mut Table,
    filters: &'a mut seccomp::Table,
    stats: &'a mut Stats,
    /// The tasks' IDs in the images.
    pids: &'a crate::ns::pid::Ids,
    /// The maps of the tree's user namespace: credentials in its terms.
    userns: Option<&'a crate::ns::user::Maps>,
    /// The cgroup set of each task and thread.
    cgroups: &'a crate::cgroup::Sets,
    /// Files open on mounts the tree's own namespace does not have.
    foreign: Option<crate::ns::mnt::Foreign>,
    /// The entries of `pstree.img`, in the tree's order.
    pstree: Vec<PstreeEntry>,
}

/// Every task of the tree in order, each live one with its [`Memory`] from
/// `rx`.
fn dump_tasks(
    tree: &Tree,
    opts: &Opts,
    rx: &std::sync::mpsc::Receiver<Result<Memory>>,
    out: &mut Out<'_>,
    root: Pid,
) -> Result<()> {
    let namespaces = crate::ns::expected(root);
    let px = out.pids;
    for (i, t) in tree.tasks.iter().enumerate() {
        out.pstree.push(pstree_entry(px, t, i == 0));
        if let State::Zombie(code) = t.state {
            let mut core = task::zombie_core(t.pid, code);
            core.ids = Some(ids(px.image(t.pid)));
            out.dir
                .write_all(img::CORE, u64::from(px.image(t.pid)), &[core])?;
            continue;
        }
        dump_task(t, &namespaces, rx, out)?;
        if i == 0
            && out.files.opts().shell_job
            && let Some(ext) = crate::files::tty::dump_shell_job(t.pid, &proc::stat(t.pid, None)?)
        {
            out.files.ttys.add_ctty(ext);
        }
        out.stats.tasks += 1;
        crate::progress::report(
            opts.progress.as_ref(),
            Step::Tasks {
                done: i + 1,
                total: tree.tasks.len(),
            },
        );
    }
    Ok(())
}

/// The `pstree.img` entry of task `t`, in the images' IDs; the root's
/// parent is outside the tree and keeps its own.
fn pstree_entry(px: &crate::ns::pid::Ids, t: &Task, is_root: bool) -> PstreeEntry {
    let tids: Vec<Pid> = if t.threads.is_empty() {
        vec![t.pid]
    } else {
        t.threads.iter().map(|th| th.tid).collect()
    };
    PstreeEntry {
        pid: px.image(t.pid),
        ppid: if is_root {
            t.ppid.as_raw().cast_unsigned()
        } else {
            px.image(t.ppid)
        },
        pgid: px.group(t.pid).map_or_else(|| px.image(t.pgid), |g| g.0),
        sid: px.group(t.pid).map_or_else(|| px.image(t.sid), |g| g.1),
        threads: tids.iter().map(|&th| px.image(th)).collect(),
        stasis_nested: if px.has_nested() {
            tids.iter()
                .map(|&th| stasis_proto::images::StasisNsIds { ids: px.nested(th) })
                .collect()
        } else {
            Vec::new()
        },
        stasis_pidns_for_children: px.for_children(t.pid),
    }
}

/// A live task whose objects and memory are described: what the steps
/// that ask the task itself need.
struct Described<'t> {
    t: &'t Task,
    /// Its /proc/PID/stat, read once: the task is frozen.
    st: proc::Stat,
    vmas: Vec<VmaEntry>,
    fdinfo: Vec<FdinfoEntry>,
}

/// One live task: its objects first, so an unsupported one fails the dump
/// before the task is touched (its pages are being copied by the memory
/// thread meanwhile), then its memory, then what the task is asked with
/// remote calls through scratch memory mapped in it for the time.
fn dump_task(
    t: &Task,
    namespaces: &crate::ns::Expected,
    rx: &std::sync::mpsc::Receiver<Result<Memory>>,
    out: &mut Out<'_>,
) -> Result<()> {
    let pid = t.pid;
    crate::ns::check_task(pid, namespaces)?;
    let mut fds = proc::fds(pid)?;
    if let Some(f) = &out.foreign {
        fds.iter_mut().for_each(|fd| f.fix(pid, fd));
    }
    let fdinfo = out.files.dump_fds(pid, &fds)?;
    let st = proc::stat(pid, None)?;
    let px = out.pids;
    out.files.ttys.dump_ctty_of(pid, &st, &fds, |p| px.image(p));
    let mem = rx.recv().map_err(|_| Error::Unexpected {
        tid: pid,
        op: "dumping memory",
        what: "the memory thread stopped".into(),
    })??;
    let vmas = mm::dump_vmas(pid, &mem.raw, Some(out.files))?;
    out.stats.add_memory(&mem);

    let leader = t.threads.first().ok_or(Error::NoSuchTask { pid })?;
    let insn = task::syscall_insn(pid, mem.raw.named("[vdso]"))?;
    let r = Remote::new(leader.tid, leader.regs, insn);
    leader.touched.set(true);
    leader.pin();
    kernel::ptrace::set_sigmask(leader.tid, u64::MAX)
        .map_err(Error::ptrace(leader.tid, "SETSIGMASK"))?;
    let sc = task::Scratch::map(&r, pid)?;
    let fast = sc.remote(leader.tid, leader.regs);
    let task = Described {
        t,
        st,
        vmas,
        fdinfo,
    };
    let res = dump_task_state(&task, &fast, sc, out);
    sc.unmap(&r)?;
    res
}

/// What the task is asked, through `r` and the scratch memory `sc`: the
/// task-wide core, its mm, fs and fd table images, and each thread's core.
fn dump_task_state(
    task: &Described<'_>,
    r: &Remote,
    sc: task::Scratch,
    out: &mut Out<'_>,
) -> Result<()> {
    let (t, pid) = (task.t, task.t.pid);
    let id = u64::from(out.pids.image(pid));
    let status = proc::status(pid, None)?;
    let tc = task::dump_task(t, r, sc.data, &task.st, &status)?;
    let mm = mm_entry(task, r, out.files)?;
    out.dir.write_all(img::MM, id, &[mm])?;
    let umask = status
        .get("Umask")
        .and_then(|u| u32::from_str_radix(u, 8).ok());
    let fs = out.files.dump_fs(pid, umask)?;
    out.dir.write_all(img::FS, id, &[fs])?;
    out.dir.write_all(img::FDINFO, id, &task.fdinfo)?;
    dump_threads(task, &status, sc, tc, out)
}

/// The task's `mm` entry: the layout /proc/PID/stat gives, the brk,
/// dumpable and THP flags it is asked through `r`, its executable and
/// auxiliary vector, and its VMAs.
fn mm_entry(task: &Described<'_>, r: &Remote, files: &mut Table) -> Result<MmEntry> {
    let (pid, st) = (task.t.pid, &task.st);
    let got = r.call_all(&[
        ("brk", nr::BRK, [0; 6]),
        ("prctl(PR_GET_DUMPABLE)", nr::PRCTL, [3, 0, 0, 0, 0, 0]),
        ("prctl(PR_GET_THP_DISABLE)", nr::PRCTL, [42, 0, 0, 0, 0, 0]),
    ])?;
    let (brk, dumpable, thp) = match got[..] {
        [b, d, t] => (b, d, t),
        _ => {
            return Err(Error::Unexpected {
                tid: pid,
                op: "brk and prctl",
                what: format!("{} answers to 3 calls", got.len()),
            });
        }
    };
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map_err(|e| Error::Proc {
            pid,
            path: format!("/proc/{pid}/exe"),
            err: e,
        })?
        .to_string_lossy()
        .into_owned();
    Ok(MmEntry {
        mm_start_code: st.start_code,
        mm_end_code: st.end_code,
        mm_start_data: st.start_data,
        mm_end_data: st.end_data,
        mm_start_stack: st.start_stack,
        mm_start_brk: st.start_brk,
        mm_brk: brk,
        mm_arg_start: st.arg_start,
        mm_arg_end: st.arg_end,
        mm_env_start: st.env_start,
        mm_env_end: st.env_end,
        exe_file_id: exe_id(pid, &exe, &task.vmas, files)?,
        mm_saved_auxv: proc::auxv(pid)?,
        vmas: task.vmas.clone(),
        dumpable: Some(i32::try_from(dumpable).unwrap_or(1)),
        aios: Vec::new(),
        thp_disabled: Some(thp != 0),
    })
}

/// Each thread's core, the leader's with the task-wide part `tc`:
/// credentials in the tree's user namespace, seccomp filters and cgroups.
fn dump_threads(
    task: &Described<'_>,
    status: &std::collections::BTreeMap<String, String>,
    sc: task::Scratch,
    tc: TaskCoreEntry,
    out: &mut Out<'_>,
) -> Result<()> {
    let (t, pid, px) = (task.t, task.t.pid, out.pids);
    let mut tc = Some(tc);
    for th in &t.threads {
        // The leader's /proc/PID/stat and status are its thread's.
        let known = (th.tid == pid).then_some((&task.st, status));
        let (ti, mut thc) = task::dump_thread(pid, th, sc, known)?;
        if let (Some(m), Some(c)) = (out.userns, thc.creds.as_mut()) {
            m.creds(c);
        }
        let (mode, newest) = out.filters.dump_thread(th.tid, th.seccomp)?;
        thc.seccomp_mode = Some(mode);
        thc.seccomp_filter = newest;
        thc.cg_set = out.cgroups.of(th.tid);
        let leader = th.tid == pid;
        if let (true, Some(tc)) = (leader, tc.as_mut()) {
            tc.cg_set = out.cgroups.of(pid);
        }
        let mut core = task::core_entry(ti, thc, if leader { tc.take() } else { None });
        if leader {
            core.ids = Some(ids(px.image(pid)));
        }
        out.dir
            .write_all(img::CORE, u64::from(px.image(th.tid)), &[core])?;
    }
    Ok(())
}

/// The file id of the executable: by path, or, when it was deleted since,
/// the ghost file its mappings were saved as.
fn exe_id(pid: Pid, exe: &str, vmas: &[VmaEntry], files: &mut Table) -> Result<u32> {
    if !exe.ends_with(" (deleted)") {
        return Ok(files.path_id(exe, libc::O_RDONLY.cast_unsigned()));
    }
    let maps = proc::maps(pid)?;
    maps.iter()
        .find(|m| m.name == exe)
        .and_then(|m| vmas.iter().find(|v| v.start == m.start))
        .and_then(|v| u32::try_from(v.shmid).ok())
        .ok_or_else(|| Error::Unsupported {
            pid,
            what: format!("an executable deleted while running and not mapped ({exe})"),
        })
}
