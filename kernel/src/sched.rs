//! Scheduling: the CPUs the engine may run on (its affinity as first
//! asked), and namespace files (NS_GET_NSTYPE).
//!
//! Wrappers return `Errno` without context; callers say what failed.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;
use nix::unistd::Pid;

use crate::ioctl::ioc;

/// The CPUs the engine may run on, as first asked (the engine asks at the
/// start of a dump or restore, before it pins any thread).
pub fn engine_mask() -> Option<nix::sched::CpuSet> {
    static MASK: std::sync::OnceLock<Option<nix::sched::CpuSet>> = std::sync::OnceLock::new();
    *MASK.get_or_init(|| nix::sched::sched_getaffinity(nix::unistd::getpid()).ok())
}

/// The CPU numbers in [`engine_mask`].
pub fn engine_cpus() -> Option<Vec<usize>> {
    let m = engine_mask()?;
    Some(
        (0..nix::sched::CpuSet::count())
            .filter(|&c| m.is_set(c).unwrap_or(false))
            .collect(),
    )
}

/// Let the calling thread run on every CPU of [`engine_mask`] (a helper
/// spawned by a pinned thread inherits its one CPU).
pub fn unpin_thread() {
    if let Some(m) = engine_mask() {
        let _ = nix::sched::sched_setaffinity(Pid::from_raw(0), &m);
    }
}

/// The namespace type (a `CLONE_NEW*` flag) of namespace file `fd`
/// (NS_GET_NSTYPE).
pub fn ns_type(fd: BorrowedFd<'_>) -> Result<i64, Errno> {
    // SAFETY: NS_GET_NSTYPE takes no argument and returns an int.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), ioc::NS_GET_NSTYPE as _) };
    Errno::result(ret).map(i64::from)
}
