//! userfaultfd(2): opening one, negotiating its API and features, and the
//! ioctls on it (UFFDIO_REGISTER/UNREGISTER of a range, UFFDIO_COPY into
//! another process, UFFDIO_WRITEPROTECT).
//!
//! Wrappers return `Errno` without context; callers say what failed.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;

use crate::ioctl::{ioc, ioctl_ptr};
use crate::mm::Mapping;
use crate::raw::{long, syscall_fd};

/// UFFD_API, the API version asked for.
const API: u64 = 0xAA;
/// UFFDIO_REGISTER_MODE_MISSING.
const REGISTER_MODE_MISSING: u64 = 1;

/// UFFDIO_API: negotiates `features`, returns the granted (or, for 0, the
/// offered) set.
fn api(fd: impl AsFd, features: u64) -> Result<u64, Errno> {
    let mut api = UffdioApi {
        api: API,
        features,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes a struct uffdio_api, which `api` is.
    unsafe { ioctl_ptr(fd.as_fd(), ioc::UFFDIO_API, &mut api) }?;
    Ok(api.features)
}

/// UFFDIO_REGISTER of `[start, start + len)` with `mode`.
fn register(fd: impl AsFd, start: u64, len: u64, mode: u64) -> Result<(), Errno> {
    // struct uffdio_register { range { start, len }, mode, ioctls }
    let mut reg: [u64; 4] = [start, len, mode, 0];
    // SAFETY: UFFDIO_REGISTER reads and writes a struct uffdio_register, which
    // `reg` is; it changes the registered process's VMA flags only.
    unsafe { ioctl_ptr(fd.as_fd(), ioc::UFFDIO_REGISTER, &mut reg) }.map(drop)
}

/// UFFDIO_API on a fresh userfaultfd, no optional features.
pub fn uffd_api(fd: &impl AsFd) -> Result<(), Errno> {
    api(fd, 0).map(drop)
}

/// Register `[start, start + len)` of the userfaultfd's process for
/// missing-page handling (what makes UFFDIO_COPY into it possible).
pub fn uffd_register(fd: &impl AsFd, start: u64, len: u64) -> Result<(), Errno> {
    register(fd, start, len, REGISTER_MODE_MISSING)
}

/// Undo [`uffd_register`] for `[start, start + len)`.
pub fn uffd_unregister(fd: &impl AsFd, start: u64, len: u64) -> Result<(), Errno> {
    let mut range: [u64; 2] = [start, len];
    // SAFETY: UFFDIO_UNREGISTER reads a struct uffdio_range, which `range` is.
    unsafe { ioctl_ptr(fd.as_fd(), ioc::UFFDIO_UNREGISTER, &mut range) }.map(drop)
}

/// UFFDIO_COPY: fill `len` bytes at `dst` in the userfaultfd's process with
/// the engine's memory at `src` (new pages, written once: no zeroing, no
/// fault per page). Returns the bytes copied, fewer on a partial copy.
pub fn uffd_copy(fd: &impl AsFd, dst: u64, src: u64, len: u64) -> Result<u64, Errno> {
    // struct uffdio_copy { dst, src, len, mode, copy }
    let mut c: [i64; 5] = [
        dst.cast_signed(),
        src.cast_signed(),
        len.cast_signed(),
        0,
        0,
    ];
    // SAFETY: UFFDIO_COPY reads and writes a struct uffdio_copy, which `c` is;
    // the kernel only reads the `len` bytes at `src` (EFAULT if unmapped).
    match unsafe { ioctl_ptr(fd.as_fd(), ioc::UFFDIO_COPY, &mut c) } {
        Ok(_) => Ok(len),
        // Partly done: `copy` says how far.
        Err(_) if c[4] > 0 => Ok(c[4].cast_unsigned()),
        Err(e) => Err(e),
    }
}

/// `userfaultfd(flags)`.
pub fn userfaultfd(flags: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: integer arguments only.
    unsafe { syscall_fd(libc::SYS_userfaultfd, [long(flags), 0, 0, 0, 0]) }
}

/// `struct uffdio_api`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct UffdioApi {
    /// UFFD_API.
    pub api: u64,
    /// Requested, then granted, feature bits.
    pub features: u64,
    /// Supported ioctls (out).
    pub ioctls: u64,
}

/// UFFDIO_API: negotiates `features`, returns the granted (or, for 0, the offered) set.
pub fn uffdio_api(fd: BorrowedFd<'_>, features: u64) -> Result<u64, Errno> {
    api(fd, features)
}

/// UFFDIO_REGISTER of `m` with `mode`.
pub fn uffdio_register(fd: BorrowedFd<'_>, m: &Mapping, mode: u64) -> Result<(), Errno> {
    register(fd, m.addr(), m.len() as u64, mode)
}

/// UFFDIO_WRITEPROTECT of all of `m`.
pub fn uffdio_writeprotect(fd: BorrowedFd<'_>, m: &Mapping, mode: u64) -> Result<(), Errno> {
    let mut wp: [u64; 3] = [m.addr(), m.len() as u64, mode];
    // SAFETY: UFFDIO_WRITEPROTECT takes a struct uffdio_writeprotect (range, mode).
    unsafe { ioctl_ptr(fd, ioc::UFFDIO_WRITEPROTECT, &mut wp) }.map(drop)
}
