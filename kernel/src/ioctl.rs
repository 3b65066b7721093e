//! ioctl(2) request numbers built from the kernel's UAPI headers (with
//! powerpc's own direction bits, through nix's request-code macros), and
//! the ioctls that read or write one `int`, checked against a list of the
//! requests known to take one.
//!
//! Wrappers return `Errno` without context; callers say what failed.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;

use crate::raw::check;

/// ioctl request numbers built from the kernel's UAPI headers.
pub mod ioc {
    #![allow(missing_docs)]
    pub const UFFDIO_API: libc::c_ulong = nix::request_code_readwrite!(0xAA, 0x3F, 24);
    pub const UFFDIO_REGISTER: libc::c_ulong = nix::request_code_readwrite!(0xAA, 0x00, 32);
    pub const UFFDIO_UNREGISTER: libc::c_ulong = nix::request_code_read!(0xAA, 0x01, 16);
    pub const UFFDIO_COPY: libc::c_ulong = nix::request_code_readwrite!(0xAA, 0x03, 40);
    pub const UFFDIO_WRITEPROTECT: libc::c_ulong = nix::request_code_readwrite!(0xAA, 0x06, 24);
    pub const PAGEMAP_SCAN: libc::c_ulong = nix::request_code_readwrite!(b'f', 16, 96);
    pub const PROCMAP_QUERY: libc::c_ulong = nix::request_code_readwrite!(b'f', 17, 104);
    pub const TFD_IOC_SET_TICKS: libc::c_ulong = nix::request_code_write!(b'T', 0, 8);
    pub const TUNSETIFINDEX: libc::c_ulong = nix::request_code_write!(b'T', 218, 4);
    pub const TIOCSPTLCK: libc::c_ulong = nix::request_code_write!(b'T', 0x31, 4);
    pub const NS_GET_NSTYPE: libc::c_ulong = nix::request_code_none!(0xb7, 0x3);
}

/// Whether request `req` reads or writes exactly one `int` through its
/// argument: the requests the int helpers below accept (others fail with
/// EINVAL, since the kernel could write more than an int).
fn takes_int(req: libc::c_ulong) -> bool {
    [
        libc::TIOCGPTN,
        libc::TIOCSPTLCK,
        libc::TIOCGPTLCK,
        libc::TIOCGPKT,
        libc::TIOCPKT,
        libc::TIOCOUTQ,
        libc::FIONREAD,
        libc::SIOCOUTQNSD,
        ioc::TIOCSPTLCK,
        ioc::TUNSETIFINDEX,
    ]
    .contains(&req)
}

/// An ioctl whose argument is a pointer to `T`, read and/or written.
///
/// # Safety
/// `req` must be a request whose argument is a `T` (or a prefix of it the
/// kernel bounds by a size field inside `T`).
pub unsafe fn ioctl_ptr<T>(
    fd: BorrowedFd<'_>,
    req: libc::c_ulong,
    arg: &mut T,
) -> Result<i64, Errno> {
    // SAFETY: forwarded to the caller; arg is live and exclusive for the call.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, std::ptr::from_mut(arg)) };
    check(libc::c_long::from(ret))
}

/// An ioctl whose argument is a pointer to an `int` it reads or writes
/// (TUNSETIFINDEX, TIOCSPTLCK, TIOCGPTN, ...; EINVAL for requests not
/// known to take one).
pub fn ioctl_int_ptr(fd: BorrowedFd<'_>, req: libc::c_ulong, arg: &mut i32) -> Result<i64, Errno> {
    if !takes_int(req) {
        return Err(Errno::EINVAL);
    }
    // SAFETY: the request takes a pointer to one int (checked above), which
    // `arg` is.
    unsafe { ioctl_ptr(fd, req, arg) }
}

/// An ioctl that writes an int (SIOCINQ, SIOCOUTQ, ...; EINVAL for
/// requests not known to take one).
pub fn ioctl_int_get(fd: BorrowedFd<'_>, req: libc::c_ulong) -> Result<i32, Errno> {
    let mut v: libc::c_int = 0;
    ioctl_int_ptr(fd, req, &mut v)?;
    Ok(v)
}
