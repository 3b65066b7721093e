//! A task and its threads (`core-TID.img`): registers and FPU/AVX state,
//! signal masks, sigactions, pending signals, sigaltstack, itimers, rseq,
//! robust-futex list and tid address, rlimits and the task's identity
//! (comm, state, exit code). What /proc and ptrace cannot tell is asked
//! inside the task with remote syscalls; restore sets it the same way.

pub(crate) mod cpu;
pub(crate) mod creds;

pub(crate) mod remote;
pub(crate) mod seccomp;
pub(crate) mod seize;
pub(crate) mod timers;
pub(crate) mod trampoline;

use stasis_kernel as kernel;
use std::collections::BTreeMap;

use nix::unistd::Pid;
use stasis_arch::native::{Regs, nr};
use stasis_proto::images::{
    CoreEntry, RlimitEntry, RseqEntry, SaEntry, SiginfoEntry, SignalQueueEntry, TaskCoreEntry,
    TaskRlimitsEntry, ThreadCoreEntry, ThreadSasEntry,
};

use crate::error::{EngineError as Error, Result};
use crate::proc;
use crate::task::remote::{Call, Remote, read_words, words};
use crate::task::seize::{State, Task, Thread};

/// `task_core_entry.task_state` values (CRIU's).
pub mod state {
    /// Running or sleeping.
    pub const ALIVE: u32 = 1;
    /// Stopped by job control.
    pub const STOPPED: u32 = 3;
    /// Exited, not reaped.
    pub const ZOMBIE: u32 = 6;
}

const PR_GET_TID_ADDRESS: u64 = 40;
const NSIG: u64 = 64;

/// Memory the dump maps in a task for its remote calls: answers at `data`,
/// the batch table at `table`, the batch code at `code`, and `syscall;
/// int3` at `trap`.
#[derive(Debug, Clone, Copy)]
pub struct Scratch {
    /// Writable room for answers (two pages).
    pub data: u64,
    /// The batch table (one page).
    pub table: u64,
    /// [`stasis_arch::native::SYSCALL_BATCH`].
    pub code: u64,
    /// A `syscall` followed by `int3`.
    pub trap: u64,
    /// Length of the whole mapping.
    len: u64,
}

impl Scratch {
    /// Map the scratch memory in the task of remote `r` (whose pid is
    /// `pid`) with one remote mmap, and write the code: two pages for
    /// answers, a batch table, then the code (the batch runner, and
    /// `syscall; int3` at the very end), so that the remaining calls cost
    /// one stop each, or one stop per batch.
    pub fn map(r: &Remote, pid: Pid) -> Result<Self> {
        let page = kernel::mm::page_size();
        let len = 4 * page;
        let prot = (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC).cast_unsigned();
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS).cast_unsigned();
        let scratch = r.call(
            "mmap",
            nr::MMAP,
            [0, len, u64::from(prot), u64::from(flags), u64::MAX, 0],
        )?;
        let sc = Self {
            data: scratch,
            table: scratch + 2 * page,
            code: scratch + 3 * page,
            trap: scratch + len - 8,
            len,
        };
        remote::write_code(pid, sc.code, &stasis_arch::native::SYSCALL_BATCH)?;
        remote::write_code(pid, sc.trap, &stasis_arch::native::SYSCALL_INSN)?;
        Ok(sc)
    }

    /// Unmap it again through `r`, once the task's state is read.
    pub fn unmap(&self, r: &Remote) -> Result<()> {
        r.call("munmap", nr::MUNMAP, [self.data, self.len, 0, 0, 0, 0])
            .map(drop)
    }

    /// A remote for thread `tid` whose registers are `regs`.
    pub fn remote(&self, tid: Pid, regs: Regs) -> Remote {
        Remote::with_trap(tid, regs, self.trap).with_batch(self.code, self.table)
    }
}

/// Address of a `syscall` instruction in the task's vdso (start, end).
pub fn syscall_insn(pid: Pid, vdso: Option<(u64, u64)>) -> Result<u64> {
    let (start, end) = vdso.ok_or_else(|| Error::Unsupported {
        pid,
        what: "a task without a vdso".into(),
    })?;
    let mut code = vec![0u8; usize::try_from(end - start).unwrap_or(0)];
    remote::read_mem(pid, start, &mut code)?;
    use stasis_arch::native::{INSN_ALIGN, SYSCALL_INSN, SYSCALL_INSN_LEN};
    let len = usize::try_from(SYSCALL_INSN_LEN).unwrap_or(2);
    code.windows(len)
        .step_by(INSN_ALIGN)
        .position(|w| *w == SYSCALL_INSN[..len])
        .map(|i| start + (i * INSN_ALIGN) as u64)
        .ok_or_else(|| Error::Unsupported {
            pid,
            what: "a vdso without a syscall instruction".into(),
        })
}

/// The per-thread part of the dump, asked inside `thread` through the
/// scratch memory `sc` mapped in the task; `known` are its /proc stat and
/// status when already read.
pub fn dump_thread(
    pid: Pid,
    th: &Thread,
    sc: Scratch,
    known: Option<(&proc::Stat, &BTreeMap<String, String>)>,
) -> Result<(cpu::ThreadInfo, ThreadCoreEntry)> {
    let tid = th.tid;
    let r = sc.remote(tid, th.regs);
    th.touched.set(true);
    th.pin();
    // Nothing may interrupt the remote calls; the mask is put back on release.
    kernel::ptrace::set_sigmask(tid, u64::MAX).map_err(Error::ptrace(tid, "SETSIGMASK"))?;
    let asked = Asked::ask(&r, tid, sc.data)?;
    let read;
    let (st, status) = match known {
        Some(k) => k,
        None => {
            read = (proc::stat(pid, Some(tid))?, proc::status(pid, Some(tid))?);
            (&read.0, &read.1)
        }
    };
    let creds = creds::dump(status, u32::try_from(asked.secbits).unwrap_or(0));
    let rseq =
        kernel::ptrace::rseq_config(tid).map_err(Error::ptrace(tid, "GET_RSEQ_CONFIGURATION"))?;
    let (rla, rla_len) =
        kernel::ptrace::robust_list(tid).map_err(Error::ptrace(tid, "get_robust_list"))?;
    let pending =
        kernel::ptrace::peek_siginfo(tid, false).map_err(Error::ptrace(tid, "PEEKSIGINFO"))?;
    let ti = cpu::dump(tid, &th.regs, asked.tid_addr)?;
    let tc = ThreadCoreEntry {
        futex_rla: rla,
        futex_rla_len: u32::try_from(rla_len).unwrap_or(0),
        sched_nice: Some(st.nice),
        pdeath_sig: Some(remote::int_in_word(asked.pdeath)).filter(|&s| s != 0),
        blk_sigset: Some(th.sigmask),
        sas: Some(ThreadSasEntry {
            ss_sp: asked.ss_sp,
            ss_size: asked.ss_size,
            ss_flags: remote::int_in_word(asked.ss_flags),
        }),
        signals_p: Some(queue(pending)),
        comm: Some(st.comm.clone()),
        timer_slack_ns: asked.slack,
        creds: Some(creds),
        rseq_entry: (rseq.abi_pointer != 0).then_some(RseqEntry {
            rseq_abi_pointer: rseq.abi_pointer,
            rseq_abi_size: rseq.abi_size,
            signature: rseq.signature,
            rseq_cs_pointer: None,
        }),
        ..ThreadCoreEntry::default()
    };
    Ok((ti, tc))
}

/// What a thread is asked with remote calls (one batch): its alternate
/// signal stack, tid address, parent-death signal, securebits and timer
/// slack.
struct Asked {
    ss_sp: u64,
    ss_flags: u64,
    ss_size: u64,
    tid_addr: u64,
    pdeath: u64,
    secbits: u64,
    slack: Option<u64>,
}

impl Asked {
    /// Ask thread `tid` through `r`; the answers written to memory land at
    /// `scratch`.
    fn ask(r: &Remote, tid: Pid, scratch: u64) -> Result<Self> {
        let got = r.call_all(&[
            ("sigaltstack", nr::SIGALTSTACK, [0, scratch, 0, 0, 0, 0]),
            (
                "prctl(PR_GET_TID_ADDRESS)",
                nr::PRCTL,
                [PR_GET_TID_ADDRESS, scratch + 32, 0, 0, 0, 0],
            ),
            (
                "prctl(PR_GET_PDEATHSIG)",
                nr::PRCTL,
                [2, scratch + 40, 0, 0, 0, 0],
            ),
            ("prctl(PR_GET_SECUREBITS)", nr::PRCTL, [27, 0, 0, 0, 0, 0]),
            ("prctl(PR_GET_TIMERSLACK)", nr::PRCTL, [30, 0, 0, 0, 0, 0]),
        ])?;
        let [ss_sp, ss_flags, ss_size, _, tid_addr, pdeath] = read_words::<6>(tid, scratch)?;
        Ok(Self {
            ss_sp,
            ss_flags,
            ss_size,
            tid_addr,
            pdeath,
            secbits: got.get(3).copied().unwrap_or(0),
            slack: got.get(4).copied(),
        })
    }
}

fn queue(sigs: Vec<Vec<u8>>) -> SignalQueueEntry {
    SignalQueueEntry {
        signals: sigs
            .into_iter()
            .map(|siginfo| SiginfoEntry { siginfo })
            .collect(),
    }
}

/// The task-wide part of the dump (leader's `core` image), asked through
/// `r`; `st` and `status` are its /proc files, read once.
pub fn dump_task(
    task: &Task,
    r: &Remote,
    scratch: u64,
    st: &proc::Stat,
    status: &BTreeMap<String, String>,
) -> Result<TaskCoreEntry> {
    let pid = task.pid;
    let sigactions = dump_sigactions(pid, r, scratch)?;
    // itimers and the subreaper flag: one more batch, answers after the
    // sigactions'.
    let at = scratch + 32 * sigactions.len() as u64;
    let mut more = timers::itimer_calls(at).to_vec();
    more.push((
        "prctl(PR_GET_CHILD_SUBREAPER)",
        nr::PRCTL,
        [37, at + 96, 0, 0, 0, 0],
    ));
    r.call_all(&more)?;
    let itimers = timers::itimers_at(pid, at)?;
    let [subreaper] = read_words::<1>(pid, at + 96)?;
    let mut timers = timers::dump(pid, r, scratch, itimers)?;
    let shared =
        kernel::ptrace::peek_siginfo(r.tid, true).map_err(Error::ptrace(r.tid, "PEEKSIGINFO"))?;
    let shared = timers::absorb_pending(&mut timers, shared);
    let rlimits = proc::limits(pid)?
        .into_iter()
        .map(|(cur, max)| RlimitEntry { cur, max })
        .collect();
    let (task_state, exit_code, stop_signo) = state_of(task.state);
    Ok(TaskCoreEntry {
        task_state,
        exit_code,
        personality: personality(pid),
        flags: st.flags,
        blk_sigset: task.threads.first().map_or(0, |t| t.sigmask),
        comm: st.comm.clone(),
        timers: Some(timers),
        child_subreaper: Some(remote::int_in_word(subreaper) != 0),
        rlimits: Some(TaskRlimitsEntry { rlimits }),
        signals_s: Some(queue(shared)),
        oom_score_adj: std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
            .ok()
            .and_then(|s| s.trim().parse().ok()),
        sigactions,
        stop_signo,
        loginuid: status.get("loginuid").and_then(|s| s.parse().ok()),
        ..TaskCoreEntry::default()
    })
}

/// The sigactions of every signal but SIGKILL and SIGSTOP, asked in one
/// batch whose answers land 32 bytes apart from `scratch`.
fn dump_sigactions(pid: Pid, r: &Remote, scratch: u64) -> Result<Vec<SaEntry>> {
    let sigs: Vec<u64> = sigaction_signals().collect();
    let calls: Vec<Call> = sigs
        .iter()
        .enumerate()
        .map(|(i, &sig)| {
            (
                "rt_sigaction",
                nr::RT_SIGACTION,
                [sig, 0, scratch + 32 * i as u64, 8, 0, 0],
            )
        })
        .collect();
    r.call_all(&calls)?;
    let mut raw = vec![0u8; 32 * sigs.len()];
    remote::read_mem(pid, scratch, &mut raw)?;
    Ok(raw
        .chunks_exact(32)
        .map(|e| {
            let w = |k: usize| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&e[8 * k..8 * k + 8]);
                u64::from_ne_bytes(b)
            };
            SaEntry {
                sigaction: w(0),
                flags: w(1),
                restorer: w(2),
                mask: w(3),
                compat_sigaction: None,
                mask_extended: None,
            }
        })
        .collect())
}

/// `task_state`, `exit_code` and `stop_signo` of a task in state `s`.
fn state_of(s: State) -> (u32, u32, Option<u32>) {
    match s {
        State::Alive => (state::ALIVE, 0, None),
        State::Stopped(sig) => (state::STOPPED, 0, u32::try_from(sig).ok()),
        State::Zombie(c) => (state::ZOMBIE, c, None),
    }
}

fn personality(pid: Pid) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/personality"))
        .ok()
        .and_then(|s| u32::from_str_radix(s.trim(), 16).ok())
        .unwrap_or(0)
}

/// `sa_entry.sigaction` of a zombie's caught signal: the handler is gone
/// with the task, only the fact that one was set is known.
pub const ZOMBIE_HANDLER: u64 = 2;

/// A zombie's core: its identity, exit status, signal dispositions and
/// blocked mask (what `/proc` still shows of it).
pub fn zombie_core(pid: Pid, code: u32) -> CoreEntry {
    let status = proc::status(pid, None).unwrap_or_default();
    let mask = |k: &str| {
        status
            .get(k)
            .and_then(|v| u64::from_str_radix(v, 16).ok())
            .unwrap_or(0)
    };
    let (caught, ignored) = (mask("SigCgt"), mask("SigIgn"));
    let sigactions = sigaction_signals()
        .map(|s| {
            let bit = 1u64 << (s - 1);
            SaEntry {
                sigaction: if caught & bit != 0 {
                    ZOMBIE_HANDLER
                } else {
                    u64::from(ignored & bit != 0)
                },
                ..SaEntry::default()
            }
        })
        .collect();
    CoreEntry {
        mtype: stasis_arch::Arch::host().map_or(0, |a| a.march() as i32),
        tc: Some(TaskCoreEntry {
            task_state: state::ZOMBIE,
            exit_code: code,
            comm: proc::stat(pid, None).map(|s| s.comm).unwrap_or_default(),
            // /proc still shows the mask it died with.
            blk_sigset: mask("SigBlk"),
            sigactions,
            ..TaskCoreEntry::default()
        }),
        ..CoreEntry::default()
    }
}

/// Signal numbers of `sigactions` entries, in order (1..=64 without SIGKILL
/// and SIGSTOP).
pub fn sigaction_signals() -> impl Iterator<Item = u64> {
    (1..=NSIG).filter(|&s| s != libc::SIGKILL as u64 && s != libc::SIGSTOP as u64)
}

/// Restore the task-wide state through the leader's remote `r`.
pub fn restore_task(r: &Remote, tc: &TaskCoreEntry, data: u64) -> Result<()> {
    let pid = r.tid;
    // The task is a fork of the engine: signals the engine left at their
    // defaults need no call when the image has the default too.
    let status = proc::status(pid, None)?;
    let mask = |k: &str| {
        status
            .get(k)
            .and_then(|v| u64::from_str_radix(v, 16).ok())
            .unwrap_or(u64::MAX)
    };
    let set = mask("SigCgt") | mask("SigIgn");
    // The actions side by side, then one batch of calls.
    let mut acts = Vec::new();
    let mut calls = Vec::new();
    for (sa, sig) in tc.sigactions.iter().zip(sigaction_signals()) {
        let default = sa.sigaction == 0 && sa.flags == 0 && sa.mask == 0;
        if default && sig != libc::SIGCHLD as u64 && set & (1 << (sig - 1)) == 0 {
            continue;
        }
        let at = data + 32 * calls.len() as u64;
        acts.extend_from_slice(&[sa.sigaction, sa.flags, sa.restorer, sa.mask]);
        calls.push(("rt_sigaction", nr::RT_SIGACTION, [sig, at, 0, 8, 0, 0]));
    }
    remote::write_mem(pid, data, &words(&acts))?;
    r.call_all(&calls)?;
    if let Some(t) = &tc.timers {
        timers::restore_itimers(r, t, data)?;
    }
    if let Some(q) = &tc.signals_s {
        for s in &q.signals {
            queue_signal(r, pid, None, &s.siginfo, data)?;
        }
    }
    Ok(())
}

/// Task-wide calls that wait until every thread exists and the address
/// space is final (run with the leader's own [`thread_calls`]): the
/// personality and the child-subreaper flag.
pub fn late_calls(tc: &TaskCoreEntry) -> Vec<Call> {
    let mut calls = vec![(
        "personality",
        nr::PERSONALITY,
        [u64::from(tc.personality), 0, 0, 0, 0, 0],
    )];
    if tc.child_subreaper == Some(true) {
        calls.push((
            "prctl(PR_SET_CHILD_SUBREAPER)",
            nr::PRCTL,
            [36, 1, 0, 0, 0, 0],
        ));
    }
    calls
}

/// The task-wide state that must wait until every thread exists and the
/// address space is final, after [`late_calls`]: POSIX timers (one may
/// target a thread), oom_score_adj and the resource limits (lowered limits
/// could stop the restore's own calls).
pub fn restore_task_late(r: &Remote, tc: &TaskCoreEntry, data: u64) -> Result<()> {
    let pid = r.tid;
    if let Some(t) = &tc.timers {
        timers::restore_posix(r, t, data)?;
    }
    if let Some(adj) = tc.oom_score_adj {
        let path = format!("/proc/{pid}/oom_score_adj");
        std::fs::write(&path, adj.to_string()).map_err(|err| Error::Restore {
            pid,
            what: format!(
                "oom_score_adj {adj} ({path}: lowering it below this restore's own value needs CAP_SYS_RESOURCE)"
            ),
            errno: nix::errno::Errno::from_raw(err.raw_os_error().unwrap_or(libc::EIO)),
        })?;
    }
    if let Some(rl) = &tc.rlimits {
        let now = proc::limits(pid)?;
        for (res, l) in rl.rlimits.iter().enumerate() {
            if now.get(res) == Some(&(l.cur, l.max)) {
                continue;
            }
            remote::write_mem(pid, data, &words(&[l.cur, l.max]))?;
            let rc = r.call_raw("prlimit64", nr::PRLIMIT64, [0, res as u64, data, 0, 0, 0])?;
            if rc < 0 {
                let errno = nix::errno::Errno::from_raw(i32::try_from(-rc).unwrap_or(libc::EINVAL));
                return Err(Error::Restore {
                    pid,
                    what: format!(
                        "resource limit {res} (soft {}, hard {}): raising a hard limit above this restore's own needs CAP_SYS_RESOURCE",
                        l.cur, l.max
                    ),
                    errno,
                });
            }
        }
    }
    Ok(())
}

fn queue_signal(r: &Remote, pid: Pid, tid: Option<Pid>, siginfo: &[u8], data: u64) -> Result<()> {
    let signo = siginfo
        .get(..4)
        .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
    remote::write_mem(pid, data, siginfo)?;
    // The IDs as the task's own PID namespace numbers them.
    let own_pid = r.call("getpid", nr::GETPID, [0; 6])?;
    // A shared signal queued at the leader's thread group, a private one at the thread.
    let (nr, args) = match tid {
        Some(_) => (
            nr::RT_TGSIGQUEUEINFO,
            [
                own_pid,
                r.call("gettid", nr::GETTID, [0; 6])?,
                u64::from(signo.cast_unsigned()),
                data,
                0,
                0,
            ],
        ),
        None => (
            nr::RT_SIGQUEUEINFO,
            [own_pid, u64::from(signo.cast_unsigned()), data, 0, 0, 0],
        ),
    };
    r.call("rt_sigqueueinfo", nr, args).map(drop)
}

/// The calls that restore one thread's own state, for that thread to run
/// in one batch; the alternate stack is written to `data` first.
pub fn thread_calls(pid: Pid, core: &CoreEntry, data: u64) -> Result<Vec<Call>> {
    let mut calls = Vec::new();
    let Some(tc) = &core.thread_core else {
        return Ok(calls);
    };
    if let Some(slack) = tc.timer_slack_ns {
        calls.push((
            "prctl(PR_SET_TIMERSLACK)",
            nr::PRCTL,
            [29, slack, 0, 0, 0, 0],
        ));
    }
    if let Some(nice) = tc.sched_nice {
        calls.push((
            "setpriority",
            nr::SETPRIORITY,
            [0, 0, i64::from(nice).cast_unsigned(), 0, 0, 0],
        ));
    }
    if tc.futex_rla != 0 {
        calls.push((
            "set_robust_list",
            nr::SET_ROBUST_LIST,
            [tc.futex_rla, u64::from(tc.futex_rla_len), 0, 0, 0, 0],
        ));
    }
    if let Some(addr) = cpu::clear_tid_addr(core) {
        calls.push((
            "set_tid_address",
            nr::SET_TID_ADDRESS,
            [addr, 0, 0, 0, 0, 0],
        ));
    }
    // Always set: a disabled one too, or the engine's own alternate stack
    // (inherited through fork, gone with its memory) would take signals.
    if let Some(sas) = &tc.sas {
        const SS_DISABLE: u32 = 2;
        let (sp, flags, size) = if sas.ss_size == 0 {
            (0, SS_DISABLE, 0)
        } else {
            // SS_ONSTACK only reports where the thread was; it cannot be set.
            (sas.ss_sp, sas.ss_flags & !1, sas.ss_size)
        };
        remote::write_mem(pid, data, &words(&[sp, remote::word_with_int(flags), size]))?;
        calls.push(("sigaltstack", nr::SIGALTSTACK, [data, 0, 0, 0, 0, 0]));
    }
    if let Some(rs) = &tc.rseq_entry {
        calls.push((
            "rseq",
            nr::RSEQ,
            [
                rs.rseq_abi_pointer,
                u64::from(rs.rseq_abi_size),
                0,
                u64::from(rs.signature),
                0,
                0,
            ],
        ));
    }
    Ok(calls)
}

/// Queue the signals pending for the thread of `r` alone, once its state
/// is back.
pub fn queue_thread_signals(r: &Remote, pid: Pid, core: &CoreEntry, data: u64) -> Result<()> {
    if let Some(q) = core.thread_core.as_ref().and_then(|t| t.signals_p.as_ref()) {
        for s in &q.signals {
            queue_signal(r, pid, Some(r.tid), &s.siginfo, data)?;
        }
    }
    Ok(())
}

/// Registers and FPU state last: the thread resumes exactly where it was
/// dumped. It sits in a syscall-exit stop, so an interrupted syscall is
/// restarted by hand.
pub fn restore_regs(tid: Pid, core: &CoreEntry) -> Result<()> {
    cpu::restore(tid, core)?;
    let mask = core
        .thread_core
        .as_ref()
        .and_then(|t| t.blk_sigset)
        .or_else(|| core.tc.as_ref().map(|t| t.blk_sigset))
        .unwrap_or(0);
    kernel::ptrace::set_sigmask(tid, mask).map_err(Error::ptrace(tid, "SETSIGMASK"))?;
    Ok(())
}

/// A full core entry for a thread.
pub fn core_entry(
    ti: cpu::ThreadInfo,
    thc: ThreadCoreEntry,
    tc: Option<TaskCoreEntry>,
) -> CoreEntry {
    let mut core = CoreEntry {
        tc,
        thread_core: Some(thc),
        ..CoreEntry::default()
    };
    cpu::set(&mut core, ti);
    core
}

/// Run `f` in a thread that joined namespace `ns` of `pid`.
pub(crate) fn in_namespace_of<T: Send>(
    pid: Pid,
    ns: &str,
    kind: nix::sched::CloneFlags,
    f: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    let path = format!("/proc/{pid}/ns/{ns}");
    let file = std::fs::File::open(&path).map_err(|err| Error::Proc {
        pid,
        path: path.clone(),
        err,
    })?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // A thread shares its process' root and cwd, which a mount
            // namespace change would move: it gets copies of its own.
            if kind == nix::sched::CloneFlags::CLONE_NEWNS {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)
                    .map_err(Error::dump(pid, "a thread of its own"))?;
            }
            nix::sched::setns(std::os::fd::AsFd::as_fd(&file), kind)
                .map_err(Error::dump(pid, format!("joining its {ns} namespace")))?;
            f()
        })
        .join()
        .unwrap_or_else(|_| {
            Err(Error::Unexpected {
                tid: pid,
                op: "reading a namespace",
                what: "the reading thread panicked".into(),
            })
        })
    })
}
