//! The few raw calls the test library needs that nix does not wrap safely:
//! forking, leaving a forked child, the signal flags and raw syscalls.
#![allow(unsafe_code)]

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use nix::unistd::{ForkResult, Pid};

/// Set by the SIGTERM handler: verify now.
pub static TERM: AtomicBool = AtomicBool::new(false);
/// Set by the SIGUSR2 handler: damage your state (sabotage mode).
pub static USR2: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_: libc::c_int) {
    TERM.store(true, Ordering::SeqCst);
}

extern "C" fn on_usr2(_: libc::c_int) {
    USR2.store(true, Ordering::SeqCst);
}

/// Install the SIGTERM and SIGUSR2 flag handlers.
pub fn install_handlers() -> Result<(), Errno> {
    let term = SigAction::new(
        SigHandler::Handler(on_term),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    let usr2 = SigAction::new(
        SigHandler::Handler(on_usr2),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: the handlers only store to atomics, which is async-signal-safe.
    unsafe { sigaction(Signal::SIGTERM, &term) }?;
    // SAFETY: as above.
    unsafe { sigaction(Signal::SIGUSR2, &usr2) }?;
    Ok(())
}

/// Number of threads of this process, from /proc/self/status.
pub fn thread_count() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// fork(2), refusing to fork a multi-threaded process (whose child could
/// deadlock on a lock another thread held). A request ([`TERM`], [`USR2`])
/// the parent had taken but not yet handled is the parent's: the child
/// starts with it cleared. A flag the parent did not have set is left
/// alone, so a request that reaches the child before it first runs (its
/// parent goes on and may pass one on at once) is not lost; and the signal
/// mask never changes, so nothing a dump could catch differs from what the
/// test set up.
pub fn fork() -> Result<ForkResult, Errno> {
    if thread_count() != 1 {
        return Err(Errno::EDEADLK);
    }
    let (term, usr2) = (TERM.load(Ordering::SeqCst), USR2.load(Ordering::SeqCst));
    // SAFETY: the process has exactly one thread (checked above), so the child
    // inherits no lock held by another thread and may run arbitrary code.
    let forked = unsafe { nix::unistd::fork() };
    if let Ok(ForkResult::Child) = forked {
        if term {
            TERM.store(false, Ordering::SeqCst);
        }
        if usr2 {
            USR2.store(false, Ordering::SeqCst);
        }
    }
    forked
}

/// Leave the process now, without running exit handlers (for forked
/// children, which must not flush the parent's buffered state twice).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions and never returns.
    unsafe { libc::_exit(code) }
}

/// The calling thread's id.
pub fn gettid() -> Pid {
    nix::unistd::gettid()
}

/// A raw syscall with up to six integer arguments; returns the result or
/// the errno.
///
/// # Safety
///
/// The caller must pass a syscall number and arguments for which the call
/// does not write through invalid pointers or otherwise break Rust's memory
/// model (for example no call that unmaps memory Rust still uses).
pub unsafe fn syscall6(nr: libc::c_long, a: [u64; 6]) -> Result<i64, Errno> {
    // SAFETY: forwarded to the caller's contract.
    let r = unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]) };
    if r == -1 { Err(Errno::last()) } else { Ok(r) }
}

/// prctl(2) with integer arguments.
pub fn prctl(op: i32, a: u64, b: u64, c: u64, d: u64) -> Result<i64, Errno> {
    // SAFETY: prctl with integer arguments reads no user memory for the
    // options this corpus uses with it; those that write (PR_GET_*) are given
    // pointers by the helpers below, not here.
    let r = unsafe { libc::prctl(op, a, b, c, d) };
    if r == -1 {
        Err(Errno::last())
    } else {
        Ok(i64::from(r))
    }
}

/// prctl(2) whose second argument is a pointer to an int the kernel fills.
pub fn prctl_get_int(op: i32) -> Result<i32, Errno> {
    let mut v: libc::c_int = 0;
    // SAFETY: the kernel writes one int through the valid pointer.
    let r = unsafe { libc::prctl(op, &raw mut v, 0u64, 0u64, 0u64) };
    if r == -1 { Err(Errno::last()) } else { Ok(v) }
}

/// An anonymous or file mapping owned by the test: never unmapped implicitly,
/// because its contents are what the test checks after restore.
#[derive(Debug)]
pub struct Map {
    addr: *mut u8,
    len: usize,
}

impl Map {
    /// mmap(2) anonymous memory.
    pub fn anon(len: usize, prot: i32, flags: i32) -> Result<Self, Errno> {
        Self::raw(0, len, prot, flags | libc::MAP_ANONYMOUS, -1, 0)
    }

    /// mmap(2) with every argument.
    pub fn raw(
        hint: usize,
        len: usize,
        prot: i32,
        flags: i32,
        fd: i32,
        off: i64,
    ) -> Result<Self, Errno> {
        // SAFETY: mapping new memory does not touch existing Rust objects
        // unless MAP_FIXED is given, which callers only use on ranges they own.
        let p = unsafe { libc::mmap(hint as *mut libc::c_void, len, prot, flags, fd, off) };
        if p == libc::MAP_FAILED {
            return Err(Errno::last());
        }
        Ok(Self {
            addr: p.cast(),
            len,
        })
    }

    /// Adopt a range mapped by other means (shmat, mremap).
    pub fn adopt(addr: usize, len: usize) -> Self {
        Self {
            addr: addr as *mut u8,
            len,
        }
    }

    /// Start address.
    pub fn addr(&self) -> usize {
        self.addr as usize
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Read one byte (volatile: the value may have changed behind Rust's back,
    /// which is the point of a C/R test).
    pub fn get(&self, off: usize) -> u8 {
        assert!(
            off < self.len,
            "offset {off} outside a mapping of {} bytes",
            self.len
        );
        // SAFETY: off is inside the mapping (checked), which is readable by
        // the caller's choice of protection.
        unsafe { self.addr.wrapping_add(off).read_volatile() }
    }

    /// Write one byte.
    pub fn set(&self, off: usize, v: u8) {
        assert!(
            off < self.len,
            "offset {off} outside a mapping of {} bytes",
            self.len
        );
        // SAFETY: off is inside the mapping (checked), which is writable by
        // the caller's choice of protection.
        unsafe { self.addr.wrapping_add(off).write_volatile(v) }
    }

    /// Read a u64 at an 8-aligned offset.
    pub fn get_u64(&self, off: usize) -> u64 {
        assert!(
            off.is_multiple_of(8) && off + 8 <= self.len,
            "bad u64 offset {off}"
        );
        // SAFETY: aligned (mappings are page aligned and off is 8-aligned)
        // and inside the mapping.
        unsafe { self.addr.wrapping_add(off).cast::<u64>().read_volatile() }
    }

    /// Write a u64 at an 8-aligned offset.
    pub fn set_u64(&self, off: usize, v: u64) {
        assert!(
            off.is_multiple_of(8) && off + 8 <= self.len,
            "bad u64 offset {off}"
        );
        // SAFETY: aligned and inside the mapping.
        unsafe { self.addr.wrapping_add(off).cast::<u64>().write_volatile(v) }
    }

    /// Fill with the position-dependent pattern of `seed`.
    pub fn fill(&self, seed: u64) {
        for i in 0..self.len {
            self.set(i, super::pattern(seed, i));
        }
    }

    /// Compare with the pattern of `seed`; the first differing offset.
    pub fn first_diff(&self, seed: u64) -> Option<(usize, u8, u8)> {
        (0..self.len).find_map(|i| {
            let (got, want) = (self.get(i), super::pattern(seed, i));
            (got != want).then_some((i, got, want))
        })
    }

    /// mprotect(2) part of the mapping.
    pub fn protect(&self, off: usize, len: usize, prot: i32) -> Result<(), Errno> {
        // SAFETY: the range lies in this mapping, which no Rust reference
        // points into.
        let r = unsafe { libc::mprotect(self.addr.wrapping_add(off).cast(), len, prot) };
        Errno::result(r).map(drop)
    }

    /// madvise(2) part of the mapping.
    pub fn advise(&self, off: usize, len: usize, advice: i32) -> Result<(), Errno> {
        // SAFETY: as for protect; advice on our own range.
        let r = unsafe { libc::madvise(self.addr.wrapping_add(off).cast(), len, advice) };
        Errno::result(r).map(drop)
    }

    /// munmap(2) part of the mapping (the rest stays owned).
    pub fn unmap_part(&self, off: usize, len: usize) -> Result<(), Errno> {
        // SAFETY: the range lies in this mapping; later accesses to it are the
        // test's deliberate business (they are never made by the helpers).
        let r = unsafe { libc::munmap(self.addr.wrapping_add(off).cast(), len) };
        Errno::result(r).map(drop)
    }
}

/// The system page size.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(v).unwrap_or(4096)
}

/// Close every fd from `first` up (close_range(2)).
pub fn close_from(first: u32) {
    // SAFETY: called first thing in main, before any fd is wrapped in an
    // owning Rust object, so nothing closed here is used afterwards.
    let _ = unsafe {
        syscall6(
            libc::SYS_close_range,
            [u64::from(first), u64::from(u32::MAX), 0, 0, 0, 0],
        )
    };
}

/// A pidfd for `pid` (pidfd_open(2)): names the process whatever /proc a
/// mount namespace shows.
pub fn pidfd_open(pid: Pid) -> Result<std::os::fd::OwnedFd, Errno> {
    let pid = u64::try_from(pid.as_raw()).map_err(|_| Errno::EINVAL)?;
    // SAFETY: pidfd_open takes integers and returns a new fd, owned below.
    let fd = unsafe { syscall6(libc::SYS_pidfd_open, [pid, 0, 0, 0, 0, 0]) }?;
    let fd = i32::try_from(fd).map_err(|_| Errno::EBADF)?;
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// A duplicate of fd `target` of the process behind `pidfd`
/// (pidfd_getfd(2)); EBADF once the process has closed it.
pub fn pidfd_getfd(pidfd: &impl AsRawFd, target: i32) -> Result<std::os::fd::OwnedFd, Errno> {
    let pidfd = u64::try_from(pidfd.as_raw_fd()).map_err(|_| Errno::EBADF)?;
    let target = u64::try_from(target).map_err(|_| Errno::EBADF)?;
    // SAFETY: pidfd_getfd takes integers and returns a new fd, owned below.
    let fd = unsafe { syscall6(libc::SYS_pidfd_getfd, [pidfd, target, 0, 0, 0, 0]) }?;
    let fd = i32::try_from(fd).map_err(|_| Errno::EBADF)?;
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}
