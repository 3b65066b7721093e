//! Reading a dump for the restore: every image read and checked (the
//! tree's shape, required fields, VMAs, the arch of the registers), one
//! [`Plan`] per task, the fds the caller gives taken (`--inherit-fd`), the
//! tree's paths rebased under `--root`, and everything refused up front
//! that would fail later (PIDs in use, a pty master nobody would hold).

use super::*;
use crate::images::img;
use stasis_kernel as kernel;

pub(super) fn load(dir: &Dir) -> Result<(Vec<Plan>, Table, InventoryEntry)> {
    if !dir.exists(img::INVENTORY, 0) {
        return Err(Error::BadImage {
            path: dir.path().join("inventory.img").display().to_string(),
            what: "missing: this is not an images directory, or the dump into it did not finish"
                .into(),
        });
    }
    let inv: InventoryEntry = dir.read_one(img::INVENTORY, 0)?;
    if inv.img_version != stasis_proto::kind::IMAGES_VERSION {
        return Err(
            img::INVENTORY.bad(0, format!("image version {} (expected 2)", inv.img_version))
        );
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
        let tc = core
            .tc
            .as_ref()
            .ok_or_else(|| img::CORE.bad(id, "no task_core_entry"))?;
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

/// The images read and checked, and what the caller gave for them.
pub(super) struct Loaded {
    pub(super) plans: Vec<Plan>,
    pub(super) files: Table,
    pub(super) inv: InventoryEntry,
    /// The caller's network namespace, if the dump left it to the caller.
    pub(super) netns: Option<OwnedFd>,
}

/// Read the images; take the fds the caller gives (`--inherit-fd`) and
/// rebase the tree's paths under `--root`. Everything the restore refuses
/// up front is refused here, before anything is made.
pub(super) fn prepare(opts: &Opts, dir: &Dir) -> Result<Loaded> {
    tracing::debug!("reading the images");
    let (mut plans, mut files, inv) = load(dir)?;
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
    let net_key = crate::ns::ext_netns_key(dir)?;
    let (netns, given): (Vec<_>, Vec<_>) = given
        .into_iter()
        .partition(|(k, _)| Some(k) == net_key.as_ref());
    if let Some(key) = &net_key
        && netns.is_empty()
    {
        return Err(img::NETNS.bad(
            crate::ns::NS_ID,
            format!(
                "the network namespace was the caller's ({key}); give it with --inherit-fd fd[N]:{key}"
            ),
        ));
    }
    files.take_inherited(given)?;
    if let Some(root) = &opts.root {
        // Paths are as the tree saw them: looked up under --root until the
        // pivot makes it the root.
        let root = std::fs::canonicalize(root).map_err(|err| Error::ImagesDir {
            path: root.display().to_string(),
            err,
        })?;
        files.rebase(&root, &crate::ns::mnt::mount_ids(dir)?);
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
    Ok(Loaded {
        plans,
        files,
        inv,
        netns: netns.into_iter().next().map(|(_, fd)| fd),
    })
}

/// Every PID and TID of the tree is free here. One held by a zombie (the
/// dumped task, killed and not yet reaped by its parent: right after the
/// dump, say) is waited for, a few seconds at most.
pub(super) fn check_pids_free(plans: &[Plan]) -> Result<()> {
    // A PID namespace of its own is new: every ID in it is free.
    if own_pidns(plans) {
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for p in plans {
        for &t in &p.pst.threads {
            loop {
                let dying = match crate::proc::stat(pid_of(t), None) {
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

/// The process tree describes tasks that can be made: PIDs above 0, each
/// once, every task's first thread itself, parents in the tree before
/// their children (the root's parent is outside).
pub(super) fn check_pstree(pstree: &[PstreeEntry]) -> Result<()> {
    let bad = |what: String| img::PSTREE.bad(0, what);
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
pub(super) fn inherit_unseen_leaders(pstree: &mut [PstreeEntry]) {
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
pub(super) fn check_vmas(id: u64, mm: &MmEntry) -> Result<()> {
    let ps = kernel::mm::page_size();
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
        return Err(img::MM.bad(
            id,
            format!(
                "mapping {:#x}-{:#x} (offset {:#x}) {what}",
                v.start, v.end, v.pgoff
            ),
        ));
    }
    Ok(())
}

/// `--shell-job`: the job's session (its shell's, outside the tree) is the
/// restore's own, and a job dumped in the foreground of its terminal takes
/// it again when the restore waits for it there.
pub(super) fn shell_job(plans: &mut [Plan], files: &Table, detached: bool) {
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
