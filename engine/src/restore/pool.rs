//! The tree's files opened once, in the engine, inside the tree's
//! namespaces: a pool of fds the tasks inherit at their fd numbers (files
//! of the tree's own /proc are opened later, by their tasks), flock and OFD
//! locks taken on it.

use super::*;
use stasis_kernel as kernel;

/// Which fd of each task comes from where: files of the tree's own /proc
/// are opened by their tasks, every other file once into the pool; the
/// pool's uses as (task, fd, file id), in tree order.
pub(super) fn plan_files(plans: &mut [Plan], files: &Table) -> Vec<(Pid, i32, u32)> {
    let late = late_files(plans, files);
    plan_fds(plans, &late, files);
    plans
        .iter()
        .flat_map(|p| {
            p.fdinfo
                .iter()
                .filter(|f| !late.contains(&f.id))
                .map(move |f| (pid_of(p.pst.pid), f.fd.cast_signed(), f.id))
        })
        .collect()
}

/// The fd pool: every file of `uses` opened once inside the tree's
/// namespaces (ghosts made first, flock and OFD locks taken on it), then
/// the engine back in its own mount namespace, the root given the tree's.
/// The pool, the first fd free above it, and the directory the root pivots
/// into under `--root` (and whether its mount was shared).
#[allow(clippy::type_complexity)]
pub(super) fn open_files(
    plans: &mut [Plan],
    files: &mut Table,
    uses: &[(Pid, i32, u32)],
    ns_done: &mut crate::ns::Restored,
    opts: &Opts,
) -> Result<(HashMap<u32, OwnedFd>, RawFd, Option<(PathBuf, bool)>)> {
    let max_fd = uses.iter().map(|u| u.1).max().unwrap_or(2);
    let high = room_for_fds(uses, max_fd)?;
    if let Some(m) = ns_done.mnt.as_mut() {
        files.ttys.give_ptys(std::mem::take(&mut m.ptys));
    }
    let opened = (|| {
        files.make_ghosts()?;
        let (pool, next) = open_pool(files, uses, max_fd, high, opts.notify.as_ref())?;
        take_file_locks(plans, files, &pool)?;
        Ok::<_, Error>((pool, next))
    })();
    let (pool, next) = match opened {
        Ok(p) => p,
        Err(e) => {
            if let Some(m) = &ns_done.mnt {
                let _ = m.leave();
            }
            return Err(e);
        }
    };
    // Files are open: the engine goes back to its own mount namespace (its
    // /proc shows the tasks), the root joins the tree's.
    let mut pivot = None;
    if let Some(m) = ns_done.mnt.take() {
        m.leave()?;
        pivot = m.root.clone().map(|r| (r, m.root_shared));
        if let Some(root) = plans.first_mut() {
            root.mnt_ns = Some(m.ns);
            root.proc_mounts = m.procs;
        }
    }
    for p in plans.iter_mut() {
        p.fds = p
            .fdinfo
            .iter()
            .filter_map(|f| {
                pool.get(&f.id)
                    .map(|o| (f.fd.cast_signed(), o.as_raw_fd(), f.flags & 1 != 0))
            })
            .collect();
    }
    Ok((pool, next, pivot))
}

/// Files that cannot be opened before the tree exists, each task opens
/// later ([`crate::files::FileKind::in_task`]).
pub(super) fn late_files(plans: &[Plan], files: &Table) -> std::collections::HashSet<u32> {
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
pub(super) fn plan_fds(plans: &mut [Plan], late: &std::collections::HashSet<u32>, files: &Table) {
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
pub(super) fn room_for_fds(uses: &[(Pid, i32, u32)], max_fd: i32) -> Result<bool> {
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
pub(super) fn open_pool(
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
        let copy = kernel::fd::dup_at_least(fd.as_fd(), next)
            .map_err(Error::restore(nix::unistd::getpid(), "the file pool"))?;
        next = copy.as_raw_fd() + 1;
        pool.insert(id, copy);
    }
    Ok((pool, next))
}

/// flock and OFD locks belong to the open file: taken on the pool's copy,
/// which the tasks inherit.
pub(super) fn take_file_locks(
    plans: &[Plan],
    files: &Table,
    pool: &HashMap<u32, OwnedFd>,
) -> Result<()> {
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

/// Open the task's late files inside it ([`crate::files::FileKind::open_in_task`]).
pub(super) fn open_late_fds(r: &Remote, t: &Trampoline, p: &Plan, files: &Table) -> Result<()> {
    let cx = crate::files::InTask { r, t };
    for &(target, id, cloexec) in &p.late_fds {
        if let Some(k) = files.get(id).and_then(|e| e.kind.as_ref()) {
            crate::files::registry::open_in_task(k, &cx, target, cloexec)?;
        }
    }
    Ok(())
}
