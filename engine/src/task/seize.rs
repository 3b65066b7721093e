//! Freezing a process tree with ptrace: every thread of every process under
//! the root is seized and interrupted, repeatedly, until no new task appears.
//! Releasing puts back each thread's registers and signal mask exactly as they
//! were (a failed or `--leave-running` dump) or kills the tree.

use stasis_kernel as kernel;
use std::cell::Cell;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sched::CpuSet;
use nix::sys::ptrace::{self, Options};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use stasis_arch::native::Regs;

use crate::error::{EngineError as Error, Result};
use crate::proc;

/// What a process was doing when frozen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Running or sleeping.
    Alive,
    /// Stopped by a job-control signal (the signal).
    Stopped(i32),
    /// Exited, not yet reaped (its wait status).
    Zombie(u32),
}

/// A frozen thread and the state to put back when releasing it.
#[derive(Debug)]
pub struct Thread {
    #[allow(missing_docs)]
    pub tid: Pid,
    /// Registers at the freeze.
    pub regs: Regs,
    /// Blocked signals at the freeze.
    pub sigmask: u64,
    /// Whether the engine ran syscalls in it (then it sits in a syscall-exit
    /// stop and needs its interrupted syscall restarted by hand).
    pub touched: Cell<bool>,
    /// Its CPU affinity before the engine pinned it, to put back.
    pub affinity: std::cell::RefCell<Option<CpuSet>>,
    /// Its seccomp mode (0 none, 1 strict, 2 filter).
    pub seccomp: i32,
}

impl Thread {
    /// Run the thread on the engine's CPU while the engine drives it: a
    /// remote call is then two context switches, not two wake-ups of an
    /// idle CPU (tens of microseconds each in a VM). Put back on release.
    pub fn pin(&self) {
        if self.affinity.borrow().is_some() {
            return;
        }
        let Ok(cpu) = nix::sched::sched_getcpu() else {
            return;
        };
        let mut one = CpuSet::new();
        if one.set(cpu).is_err() {
            return;
        }
        // A thread confined elsewhere (cpuset) just stays where it is.
        if let Ok(old) = nix::sched::sched_getaffinity(self.tid)
            && nix::sched::sched_setaffinity(self.tid, &one).is_ok()
        {
            *self.affinity.borrow_mut() = Some(old);
        }
    }
}

/// Pin the engine to the CPU it runs on (see [`Thread::pin`]); the returned
/// mask is the one to put back.
pub fn pin_engine() -> Option<CpuSet> {
    let me = Pid::from_raw(0);
    let old = nix::sched::sched_getaffinity(me).ok()?;
    let mut one = CpuSet::new();
    one.set(nix::sched::sched_getcpu().ok()?).ok()?;
    nix::sched::sched_setaffinity(me, &one).ok()?;
    Some(old)
}

/// Undo [`pin_engine`].
pub fn unpin_engine(old: Option<CpuSet>) {
    if let Some(m) = old {
        let _ = nix::sched::sched_setaffinity(Pid::from_raw(0), &m);
    }
}

/// A frozen process.
#[derive(Debug)]
pub struct Task {
    #[allow(missing_docs)]
    pub pid: Pid,
    /// Parent PID (0 for the dump's root).
    pub ppid: Pid,
    #[allow(missing_docs)]
    pub pgid: Pid,
    #[allow(missing_docs)]
    pub sid: Pid,
    #[allow(missing_docs)]
    pub state: State,
    /// Threads, the leader first; empty for a zombie.
    pub threads: Vec<Thread>,
}

/// A frozen tree, root first, parents before children.
#[derive(Debug, Default)]
pub struct Tree {
    /// Processes in tree order.
    pub tasks: Vec<Task>,
}

/// Wait for the next stop of `tid`, giving up at `deadline` (a task in an
/// uninterruptible sleep never stops).
fn wait_until(tid: Pid, deadline: Instant, secs: u64) -> Result<WaitStatus> {
    // A stop comes within microseconds: poll hot first, then back off.
    let mut tries = 0u32;
    loop {
        match waitpid(tid, Some(WaitPidFlag::__WALL | WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::EINTR) => {}
            Ok(s @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => {
                return Err(Error::TaskDied {
                    pid: tid,
                    step: "freezing",
                    status: format!(" ({s:?})"),
                });
            }
            Ok(s) => return Ok(s),
            Err(errno) => {
                return Err(Error::Ptrace {
                    tid,
                    op: "freezing",
                    errno,
                });
            }
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                secs,
                step: "freezing the tree (a task may be in an uninterruptible sleep; raise --timeout)",
            });
        }
        tries += 1;
        if tries <= 16 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(10 << (tries - 16).min(5)));
        }
    }
}

/// PTRACE_SEIZE and INTERRUPT thread `tid` of `pid` (in seccomp mode
/// `seccomp`), not waiting for it to stop; `false` if it is gone.
pub(crate) fn seize_only(pid: Pid, tid: Pid, seccomp: i32) -> Result<bool> {
    // Filters suspended: the engine's remote calls must not be filtered.
    match ptrace::seize(
        tid,
        crate::task::seccomp::options(seccomp, Options::PTRACE_O_TRACESYSGOOD),
    ) {
        Ok(()) => {}
        Err(Errno::ESRCH) => return Ok(false),
        // A thread that exited since the listing cannot be seized either.
        Err(Errno::EPERM)
            if proc::stat(pid, Some(tid)).is_ok_and(|s| s.state == 'Z')
                || !std::path::Path::new(&format!("/proc/{pid}/task/{tid}")).exists() =>
        {
            return Ok(false);
        }
        Err(errno) => return Err(Error::Seize { pid: tid, errno }),
    }
    ptrace::interrupt(tid).map_err(Error::ptrace(tid, "INTERRUPT"))?;
    Ok(true)
}

/// Seize thread `tid` of `pid` (unless `pre` says it was, while its cgroup
/// was frozen) and wait for it to stop.
fn seize_thread(
    pid: Pid,
    tid: Pid,
    deadline: Instant,
    secs: u64,
    pre: &BTreeSet<Pid>,
) -> Result<Option<Thread>> {
    let seccomp = crate::task::seccomp::mode_of(pid, tid).unwrap_or(0);
    if !pre.contains(&tid) && !seize_only(pid, tid, seccomp)? {
        return Ok(None);
    }
    loop {
        match wait_until(tid, deadline, secs) {
            Ok(WaitStatus::PtraceEvent(..)) => break,
            // A signal arrived first: let it through, the interrupt stays pending.
            Ok(WaitStatus::Stopped(_, sig)) => {
                ptrace::cont(tid, sig).map_err(Error::ptrace(tid, "CONT"))?;
            }
            Ok(_) => {}
            Err(Error::TaskDied { .. }) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    let regs = kernel::ptrace::getregs(tid).map_err(Error::ptrace(tid, "GETREGS"))?;
    let sigmask = kernel::ptrace::get_sigmask(tid).map_err(Error::ptrace(tid, "GETSIGMASK"))?;
    Ok(Some(Thread {
        tid,
        regs,
        sigmask,
        touched: Cell::new(false),
        affinity: std::cell::RefCell::new(None),
        seccomp,
    }))
}

/// Freeze the tree under `root` within `timeout`. `seized_first` seizes
/// threads before the tree is walked (its tasks while their freezer cgroup
/// holds them frozen, so that none forks or exits meanwhile: see
/// [`crate::cgroup::seize_frozen`]); they must all be the tree's. On
/// failure every seized thread is released.
pub fn freeze(
    root: Pid,
    timeout: Duration,
    seized_first: impl FnOnce() -> Result<BTreeSet<Pid>>,
) -> Result<Tree> {
    if !std::path::Path::new(&format!("/proc/{root}")).exists() {
        return Err(Error::NoSuchTask { pid: root });
    }
    // The engine cannot freeze itself: refuse before touching anything.
    let mut up = nix::unistd::getpid();
    while up.as_raw() > 1 {
        if up == root {
            return Err(Error::InsideTree { pid: root });
        }
        up = match proc::stat(up, None) {
            Ok(st) => Pid::from_raw(st.ppid),
            Err(_) => break,
        };
    }
    let mut tree = Tree::default();
    let deadline = Instant::now() + timeout;
    let secs = timeout.as_secs();
    let pre = seized_first()?;
    let res = freeze_into(root, &mut tree, deadline, secs, &pre).and_then(|()| {
        // A task of the cgroup is part of the tree, or the dump would
        // miss it.
        let mine = tree.tids();
        match pre.iter().find(|t| !mine.contains(t)) {
            Some(&stray) => Err(Error::Unsupported {
                pid: stray,
                what: format!(
                    "a task in the freezer cgroup that is not in the tree of {root} (dump \
                     the cgroup's whole tree, or leave out --freeze-cgroup)"
                ),
            }),
            None => Ok(()),
        }
    });
    match res {
        Ok(()) => Ok(tree),
        Err(e) => {
            tree.release();
            let mine = tree.tids();
            let_go(pre.iter().filter(|t| !mine.contains(t)));
            Err(e)
        }
    }
}

/// Release threads seized while their cgroup was frozen that the tree
/// does not hold: each stops first (only a stopped tracee can be
/// detached).
pub(crate) fn let_go<'a>(tids: impl IntoIterator<Item = &'a Pid>) {
    for &t in tids {
        let _ = wait_until(t, Instant::now() + Duration::from_secs(1), 1);
        let _ = ptrace::detach(t, None);
    }
}

fn freeze_into(
    root: Pid,
    tree: &mut Tree,
    deadline: Instant,
    secs: u64,
    pre: &BTreeSet<Pid>,
) -> Result<()> {
    let mut seen: BTreeSet<Pid> = BTreeSet::new();
    // Breadth-first; each process is revisited until its threads are stable.
    let mut queue = vec![(root, Pid::from_raw(0))];
    while let Some((pid, ppid)) = queue.first().copied() {
        queue.remove(0);
        let st = proc::stat(pid, None)?;
        let state = match st.state {
            'Z' => State::Zombie(st.exit_code),
            'T' => State::Stopped(0),
            _ => State::Alive,
        };
        let mut task = Task {
            pid,
            ppid,
            pgid: Pid::from_raw(st.pgid),
            sid: Pid::from_raw(st.sid),
            state,
            threads: Vec::new(),
        };
        if !matches!(state, State::Zombie(_)) {
            loop {
                let mut grew = false;
                for tid in proc::threads(pid)? {
                    if seen.insert(tid)
                        && let Some(t) = seize_thread(pid, tid, deadline, secs, pre)?
                    {
                        task.threads.push(t);
                        grew = true;
                    }
                }
                if !grew {
                    break;
                }
            }
            if task.threads.is_empty() {
                // Exited meanwhile: a zombie now, or already reaped.
                match proc::stat(pid, None) {
                    Ok(s) if s.state == 'Z' => {
                        task.state = State::Zombie(s.exit_code);
                        tree.tasks.push(task);
                    }
                    _ => {}
                }
                continue;
            }
            if let State::Stopped(_) = state {
                // The job-control signal shows in the group-stop report; the
                // stopped state is what matters, SIGSTOP is the usual cause.
                task.state = State::Stopped(libc::SIGSTOP);
            }
        }
        let children = if matches!(state, State::Zombie(_)) {
            Vec::new()
        } else {
            proc::children(pid)?
        };
        tree.tasks.push(task);
        for c in children {
            queue.push((c, pid));
        }
    }
    Ok(())
}

impl Tree {
    /// The frozen root.
    pub fn root(&self) -> Option<&Task> {
        self.tasks.first()
    }

    /// Every thread of the tree.
    fn tids(&self) -> BTreeSet<Pid> {
        self.tasks
            .iter()
            .flat_map(|t| t.threads.iter().map(|th| th.tid))
            .collect()
    }

    /// Let every thread run again exactly as it was frozen.
    pub fn release(&self) {
        for t in &self.tasks {
            for th in &t.threads {
                if th.touched.get() {
                    let _ = kernel::ptrace::setregs(th.tid, &th.regs.with_syscall_restarted());
                }
                let _ = kernel::ptrace::set_sigmask(th.tid, th.sigmask);
                if let Some(m) = th.affinity.borrow().as_ref() {
                    let _ = nix::sched::sched_setaffinity(th.tid, m);
                }
                let _ = ptrace::detach(th.tid, None);
            }
        }
    }

    /// Kill every process of the tree (after a successful dump), and take
    /// each thread's death as its tracer: until then a dead tracee stays a
    /// zombie its parent cannot reap, and the init of a PID namespace
    /// waits for it, so the tree would look alive to a caller (runc).
    pub fn kill(&self) {
        for t in &self.tasks {
            if !matches!(t.state, State::Zombie(_)) {
                let _ = kill(t.pid, Signal::SIGKILL);
            }
        }
        // Round after round: an init's exit is reported only once the
        // tasks of its namespace were released.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut pending: Vec<Pid> = self.tids().into_iter().collect();
        while !pending.is_empty() && Instant::now() < deadline {
            pending.retain(|&tid| {
                match waitpid(tid, Some(WaitPidFlag::__WALL | WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) | Err(_) => false,
                    Ok(WaitStatus::StillAlive) => true,
                    // A stop on the way out (PTRACE_EVENT_EXIT): go on.
                    Ok(_) => {
                        let _ = ptrace::cont(tid, None);
                        true
                    }
                }
            });
            if !pending.is_empty() {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
    }
}
