//! Creating processes: clone3(2) used like fork (with chosen PIDs through
//! `set_tid`, CLONE_PARENT, CLONE_NEWPID), forks refused unless the caller
//! is single-threaded, and probe children forked to run async-signal-safe
//! code, killed and reaped when dropped.
//!
//! Wrappers return `Errno` without context; callers say what failed.

use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};

use crate::fd::pidfd_open;
use crate::mm::{Mapping, mremap_fixed, mseal, munmap};
use crate::process::exit_now;
use crate::raw::{long, nr, syscall};

/// Which side of a clone this process is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forked {
    /// The new task.
    Child,
    /// The caller, with the new task's PID.
    Parent(Pid),
}

/// Fork a child process with IDs `ids` in the PID namespaces it will be
/// in, innermost first (clone3's `set_tid`); with `new_pidns`, the child is
/// the init of a new PID namespace (`ids[0]` is then 1).
///
/// With `sibling`, the new process is the caller's sibling (CLONE_PARENT).
///
/// # Safety
/// As for `fork`: in a multi-threaded caller the child may only run
/// async-signal-safe code. The restore path forks from a single thread.
pub unsafe fn fork_with_ids(
    ids: &[libc::pid_t],
    new_pidns: bool,
    exit_signal: i32,
    sibling: bool,
) -> Result<Forked, Errno> {
    let mut flags = 0u64;
    if sibling {
        flags |= libc::CLONE_PARENT as u64;
    }
    if new_pidns {
        flags |= libc::CLONE_NEWPID as u64;
    }
    let args = CloneArgs {
        flags,
        exit_signal: u64::try_from(exit_signal).map_err(|_| Errno::EINVAL)?,
        // No IDs: the kernel picks them (set_tid must then be null).
        set_tid: if ids.is_empty() {
            0
        } else {
            ids.as_ptr() as u64
        },
        set_tid_size: ids.len() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: set_tid points to `ids`, alive for the call, of the length
    // given; the fork contract is forwarded to the caller.
    unsafe { clone3(&args) }
}

/// Fork a child with PID `pid` from a single-threaded process (the restore
/// path). Refuses with EDEADLK when other threads exist, since the child of a
/// multi-threaded fork may only run async-signal-safe code.
pub fn fork_single_threaded(pid: Pid, sibling: bool) -> Result<Forked, Errno> {
    fork_single_threaded_ids(&[pid.as_raw()], false, sibling)
}

/// [`fork_single_threaded`] with IDs at every level of nested PID
/// namespaces (see [`fork_with_ids`]).
pub fn fork_single_threaded_ids(
    ids: &[libc::pid_t],
    new_pidns: bool,
    sibling: bool,
) -> Result<Forked, Errno> {
    let threads = || {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Threads:").map(|v| v.trim().to_owned()))
            })
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    };
    // A thread just joined is counted until the kernel has released it, a
    // little after the join returns (long enough to see under emulation).
    let mut tries = 0;
    while threads() != 1 {
        if tries == 200 {
            return Err(Errno::EDEADLK);
        }
        tries += 1;
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    // A sibling takes the caller's exit signal (SIGCHLD); clone3 wants 0 then.
    let exit_signal = if sibling { 0 } else { libc::SIGCHLD };
    // SAFETY: the process has one thread, so the child may run ordinary code.
    unsafe { fork_with_ids(ids, new_pidns, exit_signal, sibling) }
}

/// `struct clone_args` up to and including `cgroup` (CLONE_ARGS_SIZE_VER2).
#[repr(C)]
#[derive(Debug, Default)]
pub struct CloneArgs {
    /// CLONE_* flags.
    pub flags: u64,
    /// Where to store a pidfd (CLONE_PIDFD).
    pub pidfd: u64,
    /// CLONE_CHILD_SETTID target.
    pub child_tid: u64,
    /// CLONE_PARENT_SETTID target.
    pub parent_tid: u64,
    /// Signal sent to the parent at exit.
    pub exit_signal: u64,
    /// Stack (0: share the caller's, fork-like).
    pub stack: u64,
    /// Stack size.
    pub stack_size: u64,
    /// TLS (CLONE_SETTLS).
    pub tls: u64,
    /// Pointer to the array of wanted PIDs, innermost namespace first.
    pub set_tid: u64,
    /// Length of that array.
    pub set_tid_size: u64,
    /// Cgroup fd (CLONE_INTO_CGROUP).
    pub cgroup: u64,
}

/// `clone3(2)` used like `fork`: no new stack, no CLONE_VM.
///
/// # Safety
/// As for `fork` in a multi-threaded program: in the child, only
/// async-signal-safe work may happen before `_exit`. `args.set_tid` must be 0
/// or point to `set_tid_size` live `pid_t`s.
pub unsafe fn clone3(args: &CloneArgs) -> Result<Forked, Errno> {
    let size = long(std::mem::size_of::<CloneArgs>());
    // SAFETY: args is a live clone_args of the size passed; the caller upholds
    // the fork rules and the set_tid pointer contract.
    let ret = unsafe {
        syscall(
            nr::CLONE3,
            [std::ptr::from_ref(args) as libc::c_long, size, 0, 0, 0],
        )
    }?;
    Ok(if ret == 0 {
        Forked::Child
    } else {
        Forked::Parent(Pid::from_raw(
            libc::pid_t::try_from(ret).map_err(|_| Errno::EINVAL)?,
        ))
    })
}

/// Calls clone3 with a deliberately invalid set_tid (size 1, null array) so
/// that the kernel answers with an error and creates nothing: ENOSYS (no
/// clone3), E2BIG (no set_tid fields) or EINVAL (set_tid understood).
pub fn clone3_probe_set_tid() -> Errno {
    let args = CloneArgs {
        set_tid_size: 1,
        exit_signal: 17,
        ..CloneArgs::default()
    };
    // SAFETY: set_tid is null with a non-zero size, which every kernel rejects
    // before creating a task, so no child can ever run.
    match unsafe { clone3(&args) } {
        Err(e) => e,
        Ok(Forked::Parent(pid)) => {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
            Errno::UnknownErrno
        }
        // SAFETY: _exit is async-signal-safe; nothing else runs in the child.
        Ok(Forked::Child) => exit_now(0),
    }
}

/// clone3 a child that immediately calls `_exit(code)`; `set_tid` lists the
/// PIDs wanted, innermost namespace first (empty: any).
pub fn clone3_exit(flags: u64, exit_signal: u64, set_tid: &[i32], code: i32) -> Result<Pid, Errno> {
    let args = CloneArgs {
        flags,
        exit_signal,
        set_tid: if set_tid.is_empty() {
            0
        } else {
            set_tid.as_ptr() as u64
        },
        set_tid_size: set_tid.len() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: the child only calls _exit; set_tid points to a live array of
    // the length given.
    match unsafe { clone3(&args) }? {
        Forked::Parent(pid) => Ok(pid),
        Forked::Child => exit_now(code),
    }
}

/// A forked child, killed and reaped when dropped.
#[derive(Debug)]
pub struct Child {
    pid: Pid,
    reaped: bool,
}

/// Forks; the child runs `f` and exits with its return value (or 127 if it
/// returns an error code that does not fit).
///
/// In the child only async-signal-safe work may happen: no allocation, no
/// locks, no std I/O. The child gets SIGKILL if its parent thread dies, so a
/// hung probe never leaves it behind.
pub fn fork_child(f: impl FnOnce(&ChildCtx) -> i32) -> Result<Child, Errno> {
    // SAFETY: the child runs only `f`, which by this function's contract is
    // async-signal-safe, then _exit; it never returns into the parent's code.
    match unsafe { nix::unistd::fork() }? {
        ForkResult::Parent { child } => Ok(Child {
            pid: child,
            reaped: false,
        }),
        ForkResult::Child => {
            // SAFETY: prctl is async-signal-safe.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
            exit_now(f(&ChildCtx(())))
        }
    }
}

impl Child {
    /// Wraps a child created some other way (clone3).
    pub fn adopt(pid: Pid) -> Self {
        Self { pid, reaped: false }
    }

    /// The child's pid.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Waits up to `timeout` for the child to exit or stop (`WUNTRACED`
    /// style flags are the caller's choice through `flags`).
    pub fn wait_timeout(
        &mut self,
        timeout: Duration,
        flags: WaitPidFlag,
    ) -> Result<WaitStatus, Errno> {
        let deadline = Instant::now() + timeout;
        let pidfd = pidfd_open(self.pid).ok();
        loop {
            let st = waitpid(self.pid, Some(flags | WaitPidFlag::WNOHANG))?;
            if st != WaitStatus::StillAlive {
                if matches!(st, WaitStatus::Exited(..) | WaitStatus::Signaled(..)) {
                    self.reaped = true;
                }
                return Ok(st);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Errno::ETIMEDOUT);
            }
            match &pidfd {
                // A pidfd becomes readable only at exit; stops need polling.
                Some(fd) if flags.is_empty() => {
                    let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX).max(1);
                    let mut fds = [PollFd::new(std::os::fd::AsFd::as_fd(fd), PollFlags::POLLIN)];
                    let _ = poll(&mut fds, PollTimeout::from(ms));
                }
                _ => std::thread::sleep(Duration::from_micros(200).min(left)),
            }
        }
    }

    /// Waits for exit; `Ok(code)` for a normal exit, `Err` describes anything else.
    pub fn exit_code(&mut self, timeout: Duration) -> Result<i32, String> {
        match self.wait_timeout(timeout, WaitPidFlag::empty()) {
            Ok(WaitStatus::Exited(_, code)) => Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => Err(format!("the child was killed by {sig}")),
            Ok(other) => Err(format!("unexpected child state {other:?}")),
            Err(Errno::ETIMEDOUT) => Err(format!(
                "the child did not finish within {} ms",
                timeout.as_millis()
            )),
            Err(e) => Err(format!("waitpid: {e}")),
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = kill(self.pid, Signal::SIGKILL);
            let _ = waitpid(self.pid, None);
        }
    }
}

/// Proof that code runs in a probe child forked by [`fork_child`], which
/// exits without returning into the parent's code: operations that would be
/// unsound in the main process (moving or removing mappings behind the
/// program's back) are safe there, because nothing else runs afterwards.
#[derive(Debug)]
pub struct ChildCtx(());

impl ChildCtx {
    /// Moves `[old, old+len)` to a fresh kernel-chosen place.
    pub fn move_area(&self, old: u64, len: u64) -> Result<u64, Errno> {
        let len_us = usize::try_from(len).map_err(|_| Errno::EINVAL)?;
        let dst = Mapping::anon(len_us, libc::PROT_NONE, 0)?;
        let to = dst.addr();
        dst.leak();
        // SAFETY: we are in a probe child (self proves it); the caller's code
        // holds no Rust references into the moved area and exits soon.
        unsafe { mremap_fixed(old, len, to) }
    }

    /// Unmaps `[addr, addr+len)`.
    pub fn unmap(&self, addr: u64, len: u64) -> Result<(), Errno> {
        // SAFETY: as for move_area: a probe child that never touches the area again.
        unsafe { munmap(addr, len) }
    }

    /// Seals `m` with mseal(2) and gives it up (it can never be unmapped).
    pub fn seal(&self, m: Mapping) -> Result<(u64, u64), Errno> {
        let (a, l) = (m.addr(), m.len() as u64);
        // SAFETY: the mapping is ours, created for this purpose.
        unsafe { mseal(m.ptr(), m.len()) }?;
        m.leak();
        Ok((a, l))
    }

    /// Creates a child with clone3 whose only action is `_exit(code)`; the
    /// returned pid is ours to reap (or our parent's with CLONE_PARENT).
    pub fn clone3_exit(&self, flags: u64, exit_signal: u64, code: i32) -> Result<Pid, Errno> {
        clone3_exit(flags, exit_signal, &[], code)
    }
}
