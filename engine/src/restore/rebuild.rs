//! Rebuilding one task from the engine once the tree exists: seized, its
//! memory mapped and filled, threads cloned, sigactions, timers, creds,
//! seccomp and registers put back by remote syscalls through the
//! trampoline page.

use super::*;
use stasis_kernel as kernel;

/// The trampoline: one code page, then data pages (a seccomp program of up
/// to 32 KiB and its header among the largest things put there).
pub(super) const TRAMPOLINE_PAGES: u64 = 16;

/// Offset of the batch runner in the trampoline's code page.
pub(super) const BATCH_CODE: usize = 64;

/// Find a free 4 MiB hole for the trampoline, outside every dumped VMA and
/// every mapping of this process.
pub(super) fn pick_trampoline(plans: &[Plan]) -> Result<u64> {
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

/// Map the trampoline in the engine (the tasks inherit it): the syscall
/// and batch code on its first page, data pages after it. The mapping is
/// the engine's until the restore ends.
pub(super) fn map_trampoline(plans: &[Plan]) -> Result<(Trampoline, kernel::mm::Mapping)> {
    let ps = kernel::mm::page_size();
    let tstart = pick_trampoline(plans)?;
    let err = || Error::restore(nix::unistd::getpid(), "the trampoline");
    let mut map = kernel::mm::Mapping::fixed_anon(
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

/// What the restore workers share.
pub(super) struct Work<'a> {
    /// The engine's IDs of the tasks.
    pub(super) hosts: &'a crate::ns::pid::HostIds,
    pub(super) alive: &'a [&'a Plan],
    pub(super) files: &'a Table,
    pub(super) dir: &'a Dir,
    pub(super) tramp: &'a Trampoline,
    pub(super) ready_fd: RawFd,
    pub(super) filters: &'a seccomp::Table,
    pub(super) progress: Option<&'a crate::progress::Progress>,
    /// The engine's CPUs: what the tasks would have inherited.
    pub(super) mask: Option<&'a nix::sched::CpuSet>,
    pub(super) barrier: &'a std::sync::Barrier,
    pub(super) failed: &'a std::sync::atomic::AtomicBool,
    pub(super) done: &'a std::sync::atomic::AtomicUsize,
    /// With --root: the directory made the root of the tree's mount
    /// namespace, whether it was shared, and that namespace.
    pub(super) pivot: Option<(&'a std::ffi::CStr, bool, &'a OwnedFd)>,
    /// The cgroups the tasks join, and threads in others are moved to.
    pub(super) cgroups: &'a crate::cgroup::Joins,
}

impl Work<'_> {
    /// Rebuild task `p` (its threads' engine IDs go to `threads`); the
    /// pages written.
    fn restore_task(
        &self,
        p: &Plan,
        threads: &mut Vec<Pid>,
        shared: &mut mm::SharedAnon,
    ) -> Result<u64> {
        let t = self.tramp;
        let pid = self.hosts.get(p.pst.pid);
        let base = seize(pid)?;
        threads.push(pid);
        // The trampoline's `syscall` is followed by breakpoints.
        let r = Remote::with_trap(pid, base, t.start).with_batch(
            t.start + BATCH_CODE as u64,
            t.data + mm::layout::BATCH_TABLE,
        );
        let mm = p.mm.as_ref().ok_or_else(|| img::MM.bad(pid, "missing"))?;
        let pages = self.memory(&r, p, mm, shared)?;
        self.files_in_task(&r, p)?;
        let tc = p
            .core
            .tc
            .as_ref()
            .ok_or_else(|| img::CORE.bad(pid, "no task_core_entry"))?;
        if mm.thp_disabled == Some(true) {
            r.call("prctl(PR_SET_THP_DISABLE)", nr::PRCTL, [41, 1, 0, 0, 0, 0])?;
        }
        // Its name and umask the task set itself before it reported.
        task::restore_task(&r, tc, t.data)?;
        let made = self.threads(&r, p, tc, threads)?;
        // The leader's own state and the task-wide calls that wait for the
        // threads (personality, subreaper): one batch.
        let mut calls = task::thread_calls(pid, &p.core, t.data)?;
        calls.extend(task::late_calls(tc));
        r.call_all(&calls)?;
        task::queue_thread_signals(&r, pid, &p.core, t.data)?;
        task::restore_task_late(&r, tc, t.data)?;
        let all: Vec<_> = made
            .iter()
            .map(|(tr, c)| (tr, *c))
            .chain([(&r, &p.core)])
            .collect();
        self.credentials(pid, mm, &all)?;
        // Last: the trampoline itself. The leader stops at the syscall's exit
        // and never runs the (now unmapped) instruction after it.
        r.call_final("munmap", nr::MUNMAP, [t.start, t.len, 0, 0, 0, 0])?;
        for (tr, core) in &made {
            task::restore_regs(tr.tid, core)?;
        }
        task::restore_regs(pid, &p.core)?;
        Ok(pages)
    }

    /// The address space of `p`: the engine's memory unmapped, every VMA
    /// mapped and filled, then PR_SET_MM_MAP; the pages written.
    fn memory(
        &self,
        r: &Remote,
        p: &Plan,
        mm: &MmEntry,
        shared: &mut mm::SharedAnon,
    ) -> Result<u64> {
        let (t, pid) = (self.tramp, r.tid);
        // First, in the batch that unmaps the engine's memory: the report pipe
        // closed, and the engine's rseq registration, inherited through fork,
        // dropped before the memory it points to goes.
        let mut first: Vec<remote::Call> = Vec::new();
        if !p.fdinfo.iter().any(|f| f.fd.cast_signed() == self.ready_fd) {
            let fd = u64::from(self.ready_fd.cast_unsigned());
            first.push(("close", nr::CLOSE, [fd, 0, 0, 0, 0, 0]));
        }
        let rs = kernel::ptrace::rseq_config(pid)
            .map_err(Error::ptrace(pid, "GET_RSEQ_CONFIGURATION"))?;
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
        let exe = self
            .files
            .path_of(mm.exe_file_id)
            .ok_or_else(|| img::MM.bad(pid, "the executable's file id is not in files.img"))?;
        first.push(mm::open_call(
            pid,
            t,
            mm::layout::FIRST_PATH,
            "openat(exe)",
            exe.as_bytes(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )?);
        let (pages, opened) = mm::restore(
            r,
            t,
            &mm.vmas,
            self.files,
            (self.dir, u64::from(p.pst.pid)),
            shared,
            first,
        )?;
        let exe_fd = opened.last().copied().unwrap_or(u64::MAX);
        set_mm_map(r, t, mm, exe_fd)?;
        Ok(pages)
    }

    /// What `p`'s files need from inside it once its memory is back: the
    /// files it opens itself, the inherited memfds and ghosts closed, POSIX
    /// locks and leases, the controlling terminal, each kind's last step,
    /// and the root directory last among path lookups (every path in the
    /// images is as seen from the engine's root).
    fn files_in_task(&self, r: &Remote, p: &Plan) -> Result<()> {
        let (files, t) = (self.files, self.tramp);
        open_late_fds(r, t, p, files)?;
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
        crate::files::file_lock::take_in_task(r, t, &locks)?;
        crate::files::tty::restore_ctty(r, t, files, &p.pst, &p.fdinfo)?;
        let cx = crate::files::InTask { r, t };
        for &(fd, id) in &p.settle {
            if let Some(k) = files.get(id).and_then(|e| e.kind.as_ref()) {
                crate::files::registry::settle(k, &cx, fd)?;
            }
        }
        if let Some(root) = p.root_dir.as_deref().filter(|r| *r != "/") {
            let mut b = root.as_bytes().to_vec();
            b.push(0);
            let at = mm::put(r.tid, t, mm::layout::PATHS, &b)?;
            r.call("chroot", nr::CHROOT, [at, 0, 0, 0, 0, 0])?;
        }
        Ok(())
    }

    /// `p`'s threads, created from the leader `r` with their own TIDs
    /// (pushed to `threads`), each one's own state in one batch; each
    /// with its core.
    fn threads<'p>(
        &self,
        r: &Remote,
        p: &'p Plan,
        tc: &stasis_proto::images::TaskCoreEntry,
        threads: &mut Vec<Pid>,
    ) -> Result<Vec<(Remote, &'p CoreEntry)>> {
        let (t, pid) = (self.tramp, r.tid);
        let mut made = Vec::new();
        for (i, (core, &id)) in p
            .thread_cores
            .iter()
            .zip(p.pst.threads.iter().skip(1))
            .enumerate()
        {
            let (tr, tid) = clone_thread(r, t, &p.set_tid(i + 1), |made| {
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
        Ok(made)
    }

    /// Per thread of task `pid` (the leader last): seccomp (suspended for
    /// the engine), then its credentials (the capability to install
    /// filters may go with them). A credential change resets the dumpable
    /// flag and the parent-death signal, so those follow.
    fn credentials(&self, pid: Pid, mm: &MmEntry, all: &[(&Remote, &CoreEntry)]) -> Result<()> {
        let t = self.tramp;
        for &(tr, core) in all {
            let thc = core.thread_core.as_ref();
            self.filters.restore_thread(
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
        Ok(())
    }

    /// Restore the tasks `mine` (indices into `alive`) on `cpu`: the worker
    /// thread becomes their tracer, they and it run on that one CPU (a
    /// remote call then costs two context switches, not two wake-ups of an
    /// idle CPU), and once every worker is done they are released with the
    /// engine's CPUs. On failure every task of the tree is killed.
    pub(super) fn run(&self, mine: &[usize], cpu: Option<usize>) -> Result<u64> {
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
        let (pages, res) = self.rebuild_each(&tasks, &mut threads);
        // The first failure is the one to report; the others follow from
        // its killing the tree.
        let mut first = false;
        if res.is_err() {
            first = !self.failed.swap(true, Ordering::SeqCst);
            self.kill_all();
        }
        // Nothing runs before every task is restored.
        let lead = self.barrier.wait().is_leader();
        let mut pivoted = Ok(());
        if self.pivot.is_some() {
            if lead && !self.failed.load(Ordering::SeqCst) {
                pivoted = self.pivot();
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
        self.release(&tasks, &threads, one.is_some());
        Ok(pages)
    }

    /// Rebuild `tasks` in turn until one fails or another worker failed;
    /// the pages written and how it ended.
    fn rebuild_each(&self, tasks: &[&Plan], threads: &mut Vec<Pid>) -> (u64, Result<()>) {
        use std::sync::atomic::Ordering;
        let mut shared = mm::SharedAnon::new();
        let mut pages = 0;
        for p in tasks {
            if self.failed.load(Ordering::SeqCst) {
                break;
            }
            let started = Instant::now();
            tracing::debug!(pid = p.pst.pid, "restoring the task");
            match self.restore_task(p, threads, &mut shared) {
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
                Err(e) => return (pages, Err(e)),
            }
        }
        (pages, Ok(()))
    }

    /// Half-made tasks must not run once their tracer is gone.
    fn kill_all(&self) {
        for p in self.alive.iter().rev() {
            let _ = kill(self.hosts.get(p.pst.pid), Signal::SIGKILL);
        }
    }

    /// Every path looked up: the tree's root becomes its namespace's (by
    /// one worker, the others waiting). On failure the tree is killed.
    fn pivot(&self) -> Result<()> {
        let Some((root, shared, ns)) = self.pivot else {
            return Ok(());
        };
        let pivoted =
            kernel::mount::pivot_in(ns.as_fd(), root, shared).map_err(|errno| Error::Restore {
                pid: Pid::from_raw(0),
                what: format!(
                    "making {} the root of the tree's mount namespace (pivot_root)",
                    root.to_string_lossy()
                ),
                errno,
            });
        if pivoted.is_err() {
            self.failed.store(true, std::sync::atomic::Ordering::SeqCst);
            self.kill_all();
        }
        pivoted
    }

    /// Let `tasks` go as they were: stopped ones stopped again, every
    /// thread given the engine's CPUs back (if `pinned` to one) and
    /// detached.
    fn release(&self, tasks: &[&Plan], threads: &[Pid], pinned: bool) {
        for p in tasks {
            if p.core
                .tc
                .as_ref()
                .is_some_and(|t| t.task_state == task::state::STOPPED)
            {
                let _ = kill(self.hosts.get(p.pst.pid), Signal::SIGSTOP);
            }
        }
        if let Some(m) = self.mask.filter(|_| pinned) {
            for tid in threads {
                let _ = nix::sched::sched_setaffinity(*tid, m);
            }
        }
        for tid in threads {
            let _ = ptrace::detach(*tid, None);
        }
    }
}

/// Wait (briefly) until stopped tasks show as stopped and zombies as
/// zombies, so that the tree looks as dumped when restore returns: the
/// SIGSTOP sent before the release, and a zombie's own exit, take effect
/// asynchronously.
pub(super) fn settle(plans: &[Plan], hosts: &crate::ns::pid::HostIds) {
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

pub(super) fn seize(tid: Pid) -> Result<arch::Regs> {
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
    kernel::ptrace::set_sigmask(tid, u64::MAX).map_err(Error::ptrace(tid, "SETSIGMASK"))?;
    kernel::ptrace::getregs(tid).map_err(Error::ptrace(tid, "GETREGS"))
}

/// Create thread `tid` from the leader under `r` (clone3 with set_tid) and
/// take it over.
pub(super) fn clone_thread(
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
    let set_tid = mm::put(pid, t, mm::layout::ARRAY, &tid_bytes)?;
    let mut args = [0u64; 11];
    args[0] = flags;
    args[8] = set_tid;
    args[9] = ids.len() as u64;
    let bytes: Vec<u8> = args.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let a = mm::put(pid, t, mm::layout::ARGS, &bytes)?;
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
    kernel::ptrace::set_sigmask(tid, u64::MAX).map_err(Error::ptrace(tid, "SETSIGMASK"))?;
    let tregs = kernel::ptrace::getregs(tid).map_err(Error::ptrace(tid, "GETREGS"))?;
    Ok((
        Remote::with_trap(tid, tregs, t.start).with_batch(
            t.start + BATCH_CODE as u64,
            t.data + mm::layout::BATCH_TABLE,
        ),
        tid,
    ))
}

/// The call naming a thread `comm` (the name written in the trampoline's
/// data, past what [`task::thread_calls`] uses).
pub(super) fn comm_call(r: &Remote, t: &Trampoline, comm: &str) -> Result<remote::Call> {
    let mut b = comm.as_bytes().to_vec();
    b.truncate(15);
    b.push(0);
    let at = mm::put(r.tid, t, mm::layout::PATHS, &b)?;
    Ok(("prctl(PR_SET_NAME)", nr::PRCTL, [15, at, 0, 0, 0, 0]))
}

/// PR_SET_MM_MAP with the task's executable open as its fd `fd` (closed
/// in the same batch).
pub(super) fn set_mm_map(r: &Remote, t: &Trampoline, mm: &MmEntry, fd: u64) -> Result<()> {
    let pid = r.tid;
    let auxv: Vec<u8> = mm
        .mm_saved_auxv
        .iter()
        .flat_map(|w| w.to_ne_bytes())
        .collect();
    let auxv_at = mm::put(pid, t, mm::layout::ARRAY, &auxv)?;
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
    let at = mm::put(pid, t, mm::layout::ARGS, &map)?;
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
