//! Helpers the wrappers share: raw system calls by number, and taking
//! ownership of the descriptors they return. Private to the crate.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

/// System call numbers at and above 424 are the same on every architecture
/// stasis supports (the kernel's unified table), and older `libc` releases
/// lack some of them for some targets.
pub(crate) mod nr {
    pub(crate) const PIDFD_SEND_SIGNAL: libc::c_long = 424;
    pub(crate) const IO_URING_SETUP: libc::c_long = 425;
    pub(crate) const OPEN_TREE: libc::c_long = 428;
    pub(crate) const MOVE_MOUNT: libc::c_long = 429;
    pub(crate) const CLONE3: libc::c_long = 435;
    pub(crate) const OPENAT2: libc::c_long = 437;
    pub(crate) const MOUNT_SETATTR: libc::c_long = 442;
    pub(crate) const LANDLOCK_CREATE_RULESET: libc::c_long = 444;
    pub(crate) const MEMFD_SECRET: libc::c_long = 447;
    pub(crate) const MSEAL: libc::c_long = 462;
}

/// A return value of -1 (or any negative one) as the errno it set.
pub(crate) fn check(ret: libc::c_long) -> Result<libc::c_long, Errno> {
    if ret < 0 { Err(Errno::last()) } else { Ok(ret) }
}

/// System call `nr` with five arguments.
///
/// # Safety
/// The numbered call must not take pointers, or `args` must hold pointers
/// valid for what that call reads and writes.
pub(crate) unsafe fn syscall(
    nr: libc::c_long,
    args: [libc::c_long; 5],
) -> Result<libc::c_long, Errno> {
    // SAFETY: forwarded to the caller, see above.
    check(unsafe { libc::syscall(nr, args[0], args[1], args[2], args[3], args[4]) })
}

/// Takes ownership of a descriptor a system call just returned.
///
/// # Safety
/// `fd` must be a descriptor the kernel just installed for this caller
/// (returned by a call, received in SCM_RIGHTS) that nothing else owns.
pub(crate) unsafe fn owned(fd: libc::c_long) -> Result<OwnedFd, Errno> {
    let fd = RawFd::try_from(fd).map_err(|_| Errno::EBADF)?;
    // SAFETY: by the caller's contract, nothing else owns this descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An integer argument as a `long`, saturating.
pub(crate) fn long<T: TryInto<libc::c_long>>(v: T) -> libc::c_long {
    v.try_into().unwrap_or(libc::c_long::MAX)
}

/// System call `nr`, which returns a new descriptor, as an owned one.
///
/// # Safety
/// As for [`syscall`]; besides, the numbered call must return a new
/// descriptor (nothing else owns) when it succeeds.
pub(crate) unsafe fn syscall_fd(
    nr: libc::c_long,
    args: [libc::c_long; 5],
) -> Result<OwnedFd, Errno> {
    // SAFETY: forwarded to the caller, who vouches for the arguments.
    let fd = unsafe { syscall(nr, args) }?;
    // SAFETY: the caller vouches that the call returns a new descriptor.
    unsafe { owned(fd) }
}
