//! Mounts: the new mount API (open_tree, move_mount, mount_setattr) and
//! making a directory the root of a mount namespace (pivot_root).
//!
//! Wrappers return `Errno` without context; callers say what failed.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::unistd::Pid;

use crate::raw::{long, nr, syscall, syscall_fd};

/// Make `dir` the root of mount namespace `ns` (pivot_root(2)'s
/// `pivot_root(".", ".")` then a lazy unmount of the old root), from a
/// child process, since a multi-threaded caller cannot join a mount
/// namespace. Every process of the namespace whose root was the old root
/// gets `dir`. pivot_root refuses a shared mount: `dir`'s is private for
/// the call, and shared again after it if `shared`.
pub fn pivot_in(
    ns: std::os::fd::BorrowedFd<'_>,
    dir: &std::ffi::CStr,
    shared: bool,
) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    let (ns, dir) = (ns.as_raw_fd(), dir.as_ptr());
    // SAFETY: the child makes raw syscalls on values prepared before the
    // fork (no allocation, no lock another thread may hold) and leaves with
    // _exit; the parent only waits for it.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(Errno::last());
    }
    if pid == 0 {
        pivot_child(ns, dir, shared);
    }
    let status = nix::sys::wait::waitpid(Pid::from_raw(pid), None)?;
    match status {
        nix::sys::wait::WaitStatus::Exited(_, 0) => Ok(()),
        nix::sys::wait::WaitStatus::Exited(_, e) => Err(Errno::from_raw(e)),
        _ => Err(Errno::EINTR),
    }
}

/// The child of [`pivot_in`]: raw syscalls only (it was forked from a
/// multi-threaded process), its exit status the errno of the call that
/// failed.
fn pivot_child(ns: RawFd, dir: *const libc::c_char, shared: bool) -> ! {
    let step = |r: libc::c_long| {
        if r < 0 {
            // SAFETY: _exit ends the child at once; nothing is left to run.
            unsafe { libc::_exit(Errno::last_raw()) }
        }
    };
    // SAFETY: `ns` is an open fd of the parent's, inherited.
    step(libc::c_long::from(unsafe {
        libc::setns(ns, libc::CLONE_NEWNS)
    }));
    // SAFETY: `dir` points to a C string in the child's copy of the
    // parent's memory, alive for the call.
    step(libc::c_long::from(unsafe { libc::chdir(dir) }));
    let dot = c".".as_ptr();
    let change = |flags: libc::c_ulong| {
        // SAFETY: static C strings and null pointers, as mount(2) takes for
        // a change of propagation.
        step(libc::c_long::from(unsafe {
            libc::mount(
                std::ptr::null(),
                dot,
                std::ptr::null(),
                flags,
                std::ptr::null(),
            )
        }));
    };
    if shared {
        change(libc::MS_PRIVATE);
    }
    // SAFETY: two pointers to a static C string.
    step(unsafe { libc::syscall(libc::SYS_pivot_root, dot, dot) });
    // SAFETY: a pointer to a static C string.
    step(libc::c_long::from(unsafe {
        libc::umount2(dot, libc::MNT_DETACH)
    }));
    if shared {
        change(libc::MS_SHARED);
    }
    // SAFETY: _exit ends the child at once.
    unsafe { libc::_exit(0) }
}

/// `open_tree(dirfd, path, flags)`.
pub fn open_tree(path: &std::ffi::CStr, flags: u32) -> Result<OwnedFd, Errno> {
    // SAFETY: path is a NUL-terminated string alive for the call.
    unsafe {
        syscall_fd(
            nr::OPEN_TREE,
            [
                long(libc::AT_FDCWD),
                path.as_ptr() as libc::c_long,
                long(flags),
                0,
                0,
            ],
        )
    }
}

/// `move_mount(from_dirfd, from_path, to_dirfd, to_path, flags)`.
pub fn move_mount(
    from: Option<BorrowedFd<'_>>,
    from_path: &std::ffi::CStr,
    to: Option<BorrowedFd<'_>>,
    to_path: &std::ffi::CStr,
    flags: u32,
) -> Result<(), Errno> {
    let dfd = |fd: Option<BorrowedFd<'_>>| long(fd.map_or(libc::AT_FDCWD, |f| f.as_raw_fd()));
    // SAFETY: both paths are NUL-terminated strings alive for the call.
    unsafe {
        syscall(
            nr::MOVE_MOUNT,
            [
                dfd(from),
                from_path.as_ptr() as libc::c_long,
                dfd(to),
                to_path.as_ptr() as libc::c_long,
                long(flags),
            ],
        )
    }
    .map(drop)
}

/// `struct mount_attr`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct MountAttr {
    /// MOUNT_ATTR_* to set.
    pub attr_set: u64,
    /// MOUNT_ATTR_* to clear.
    pub attr_clr: u64,
    /// Propagation type.
    pub propagation: u64,
    /// User namespace fd for MOUNT_ATTR_IDMAP.
    pub userns_fd: u64,
}

/// `mount_setattr(fd, "", AT_EMPTY_PATH, attr, size)`.
pub fn mount_setattr(fd: BorrowedFd<'_>, attr: &MountAttr) -> Result<(), Errno> {
    let empty = c"";
    // SAFETY: the path is a static empty string and attr a live mount_attr of the size passed.
    unsafe {
        syscall(
            nr::MOUNT_SETATTR,
            [
                long(fd.as_raw_fd()),
                empty.as_ptr() as libc::c_long,
                long(libc::AT_EMPTY_PATH),
                std::ptr::from_ref(attr) as libc::c_long,
                long(std::mem::size_of::<MountAttr>()),
            ],
        )
    }
    .map(drop)
}
