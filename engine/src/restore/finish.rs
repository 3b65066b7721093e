//! The last stage: every task taken over by worker threads (tasks sharing
//! memory on one worker), pivoted into `--root` once all are rebuilt, then
//! released together.

use super::*;

/// The forked tree and what restoring it takes: the plans, the files, the
/// images, the trampoline, where progress goes and the engine's CPUs.
pub(super) struct Made<'a> {
    /// The engine's IDs of the tasks (empty: their own).
    pub(super) hosts: &'a crate::ns::pid::HostIds,
    /// The engine's ID of the root.
    pub(super) root_host: Pid,
    pub(super) plans: &'a [Plan],
    pub(super) files: &'a Table,
    pub(super) dir: &'a Dir,
    pub(super) tramp: &'a Trampoline,
    pub(super) progress: Option<&'a crate::progress::Progress>,
    pub(super) mask: Option<&'a nix::sched::CpuSet>,
    /// With --root: the directory made the root of the tree's mount
    /// namespace once every task is restored, and whether that mount was
    /// shared.
    pub(super) pivot: Option<(&'a std::ffi::CStr, bool)>,
    /// The cgroups the tasks join.
    pub(super) cgroups: &'a crate::cgroup::Joins,
}

/// Wait until every forked task has set itself up (its report on
/// `ready_r`), restore them all on worker threads, release them together;
/// the pages restored.
pub(super) fn finish(m: &Made<'_>, ready_r: OwnedFd, ready_fd: RawFd, t0: Instant) -> Result<u64> {
    let plans = m.plans;
    let alive: Vec<&Plan> = plans.iter().filter(|p| p.zombie.is_none()).collect();
    // A zombie that was the init of a PID namespace and died of a signal
    // waits for it (see child::run), and reports too.
    let zombie_inits: Vec<&Plan> = plans
        .iter()
        .filter(|p| p.zombie.is_some_and(|c| c & 0x7f != 0) && p.chain(0).last() == Some(&1))
        .collect();
    wait_reports(ready_r, alive.len() + zombie_inits.len())?;
    if own_pidns(plans) || plans.iter().any(|p| !p.pst.stasis_nested.is_empty()) {
        m.hosts.learn_tree(m.root_host)?;
    }
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
    let pages = rebuild_all(m, &alive, ready_fd)?;
    tracing::debug!(
        us = t0.elapsed().as_micros(),
        "every task restored and released"
    );
    settle(plans, m.hosts);
    let mut w = m.dir.create_stats("restore")?;
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

/// Read `n` reports (pid, errno, step) from the tasks, each sent once its
/// own setup is done; the first failure reported is the restore's.
fn wait_reports(ready_r: OwnedFd, n: usize) -> Result<()> {
    let mut f = std::fs::File::from(ready_r);
    let deadline = Instant::now() + Duration::from_secs(10);
    for _ in 0..n {
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
    Ok(())
}

/// Rebuild the live tasks `alive` on worker threads, one per CPU the
/// engine may use (tasks sharing memory on one); the pages written.
fn rebuild_all(m: &Made<'_>, alive: &[&Plan], ready_fd: RawFd) -> Result<u64> {
    let filters = seccomp::Table::load(m.dir)?;
    crate::progress::report(
        m.progress,
        crate::progress::Step::Tasks {
            done: 0,
            total: alive.len(),
        },
    );
    let cpus = worker_cpus(m.mask, alive.len());
    let groups = split(alive, cpus.len().max(1));
    let barrier = std::sync::Barrier::new(groups.len());
    let failed = std::sync::atomic::AtomicBool::new(false);
    let done = std::sync::atomic::AtomicUsize::new(0);
    let w = Work {
        hosts: m.hosts,
        alive,
        files: m.files,
        dir: m.dir,
        tramp: m.tramp,
        ready_fd,
        filters: &filters,
        progress: m.progress,
        mask: m.mask,
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
    Ok(pages)
}

/// CPUs to restore on, one worker each: those the engine may use, up to
/// one per task and at most eight.
pub(super) fn worker_cpus(mask: Option<&nix::sched::CpuSet>, tasks: usize) -> Vec<usize> {
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
pub(super) fn split(alive: &[&Plan], n: usize) -> Vec<Vec<usize>> {
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
