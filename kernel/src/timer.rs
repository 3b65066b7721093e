//! Timers: timerfd expirations (TFD_IOC_SET_TICKS) and re-arming
//! (timerfd_gettime), and POSIX timers created with a chosen id.
//!
//! Wrappers return `Errno` without context; callers say what failed.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;

use crate::ioctl::ioc;
use crate::raw::{long, syscall};

/// Set the expirations a timerfd reports (TFD_IOC_SET_TICKS).
pub fn timerfd_set_ticks(fd: BorrowedFd<'_>, ticks: u64) -> Result<(), Errno> {
    // SAFETY: the ioctl reads a u64 through the pointer during the call.
    let ret = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            ioc::TFD_IOC_SET_TICKS as _,
            &raw const ticks,
        )
    };
    Errno::result(ret).map(drop)
}

/// timerfd_gettime on `fd`, for its side effect: an expired periodic timer
/// adds its missed expirations to the ticks and is re-armed.
pub fn timerfd_gettime(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    let mut its = std::mem::MaybeUninit::<libc::itimerspec>::uninit();
    // SAFETY: the kernel writes a struct itimerspec through the pointer.
    let ret = unsafe { libc::timerfd_gettime(fd.as_raw_fd(), its.as_mut_ptr()) };
    Errno::result(ret).map(drop)
}

/// `timer_create` through the raw system call, so that the kernel sees the
/// timer id we pass (needed for PR_TIMER_CREATE_RESTORE_IDS); `want` is the
/// id to request, if any. Async-signal-safe.
pub fn timer_create_raw(
    clock: i32,
    signo: i32,
    value: i64,
    want: Option<i32>,
) -> Result<i32, Errno> {
    // struct sigevent: sigev_value (8), sigev_signo (4), sigev_notify (4), rest.
    let mut sev = [0u8; 64];
    sev[..8].copy_from_slice(&value.to_ne_bytes());
    sev[8..12].copy_from_slice(&signo.to_ne_bytes());
    sev[12..16].copy_from_slice(&libc::SIGEV_SIGNAL.to_ne_bytes());
    let mut id: i32 = want.unwrap_or(0);
    // SAFETY: sev is a 64-byte sigevent and id a live timer_t (int) the kernel
    // reads (with restore ids on) and writes.
    unsafe {
        syscall(
            libc::SYS_timer_create,
            [
                long(clock),
                sev.as_mut_ptr() as libc::c_long,
                std::ptr::from_mut(&mut id) as libc::c_long,
                0,
                0,
            ],
        )
    }?;
    Ok(id)
}
