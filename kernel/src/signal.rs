//! Signals: signalfds with any signal in their mask, dispositions set
//! through the kernel's own sigaction, queued signals with chosen siginfo
//! (rt_sigqueueinfo), waiting for one without blocking, and raising.
//!
//! Wrappers return `Errno` without context; callers say what failed.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::raw::{check, long, syscall};

/// A new signalfd for the signals in `mask` (bit n-1 for signal n); raw,
/// as the kernel's sigset holds real-time signals the libc types do not name.
pub fn signalfd(mask: u64, flags: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: the kernel reads 8 bytes of mask during the call; the result
    // is a new fd.
    let ret = unsafe { libc::syscall(libc::SYS_signalfd4, -1, &raw const mask, 8usize, flags) };
    let fd = RawFd::try_from(Errno::result(ret)?).map_err(|_| Errno::EBADF)?;
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

extern "C" fn no_op_handler(_: libc::c_int) {}

/// Give `sig` a disposition: default, ignored, or caught (by a handler that
/// does nothing; used for zombies, whose own handlers are gone).
pub fn set_disposition(sig: i32, ignore: bool, catch: bool) {
    // The kernel's struct sigaction: glibc's sigaction() refuses the
    // signals it keeps for itself (32, 33), which a zombie may ignore.
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: u64,
        restorer: usize,
        mask: u64,
    }
    let handler = if catch {
        no_op_handler as extern "C" fn(libc::c_int) as usize
    } else {
        usize::from(ignore)
    };
    let sa = KernelSigaction {
        handler,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    // SAFETY: `sa` outlives the call and has the kernel's layout; the
    // handler is async-signal-safe (it does nothing) and never runs in a
    // zombie, which exits right after.
    let _ = unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            &raw const sa,
            std::ptr::null_mut::<KernelSigaction>(),
            8usize,
        )
    };
}

/// `rt_sigqueueinfo(pid, sig, info)` with `si_code = code` (positive: "from the kernel").
pub fn rt_sigqueueinfo(pid: Pid, sig: i32, code: i32, value: i32) -> Result<(), Errno> {
    // siginfo_t is 128 bytes: si_signo, si_errno, si_code, then the union
    // whose rt members start at offset 16 on 64-bit targets.
    let mut info = [0i32; 32];
    info[0] = sig;
    info[2] = code;
    info[4] = pid.as_raw();
    // SAFETY: getuid has no preconditions.
    info[5] = i32::from_ne_bytes(unsafe { libc::getuid() }.to_ne_bytes());
    info[6] = value;
    // SAFETY: info is a live 128-byte siginfo_t the kernel copies in.
    unsafe {
        syscall(
            libc::SYS_rt_sigqueueinfo,
            [
                long(pid.as_raw()),
                long(sig),
                info.as_mut_ptr() as libc::c_long,
                0,
                0,
            ],
        )
    }
    .map(drop)
}

/// `raise`-like: sends `sig` to the calling thread (async-signal-safe).
pub fn raise(sig: Signal) {
    // SAFETY: raise is async-signal-safe and takes a plain integer.
    unsafe { libc::raise(sig as i32) };
}

/// `sigtimedwait` for one signal with a zero timeout: (si_code, si_int).
pub fn sigtimedwait_now(sig: Signal) -> Result<(i32, i32), Errno> {
    let set = nix::sys::signal::SigSet::from(sig);
    let ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let mut info = [0i32; 32];
    // SAFETY: set is a valid sigset, info a 128-byte siginfo buffer, ts a live timespec.
    let ret = unsafe { libc::sigtimedwait(set.as_ref(), info.as_mut_ptr().cast(), &ts) };
    check(ret.into())?;
    Ok((info[2], info[6]))
}

/// Installs `handler` for `sig` (async-signal-safe: for use in probe children).
pub fn set_handler(sig: Signal, handler: extern "C" fn(i32)) -> Result<(), Errno> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, sigaction};
    let act = SigAction::new(
        SigHandler::Handler(handler),
        SaFlags::empty(),
        nix::sys::signal::SigSet::empty(),
    );
    // SAFETY: the handlers passed here only store to an atomic.
    unsafe { sigaction(sig, &act) }.map(drop)
}

/// Restores the default action for `sig` (in a probe child, so that a fault
/// kills it plainly instead of entering the Rust runtime's handler, which
/// may need locks another thread of the parent held at fork time).
pub fn default_action(sig: Signal) {
    // SAFETY: setting SIG_DFL installs no handler code and is async-signal-safe.
    let _ = unsafe { nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigDfl) };
}
