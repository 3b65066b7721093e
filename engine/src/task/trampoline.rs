//! The restore trampoline: a code page and data pages the engine maps
//! before forking, so every restored task inherits them at the same
//! address. Remote calls run from its code page and take their arguments
//! (paths, structs, arrays) from its data pages, because a task being
//! rebuilt has no other memory the engine can count on. [`layout`] says
//! which step puts what where in those data pages.

use nix::unistd::Pid;
use stasis_arch::native::nr;

use crate::error::Result;
use crate::task::remote::{self, Call};

/// Where the engine's trampoline lives in a task being restored, and the
/// free room next to it used to park the vdso areas while moving them.
#[derive(Debug, Clone, Copy)]
pub struct Trampoline {
    /// Start of the trampoline mapping (code page, then data pages).
    pub start: u64,
    /// Its length.
    pub len: u64,
    /// Start of the data pages.
    pub data: u64,
    /// Free room reserved after it.
    pub park: u64,
}

/// The trampoline's data area, by offset from [`Trampoline::data`]: what
/// each restore step puts where. Slots overlap only where their users never
/// run at the same time: the paths of a mapping batch (while the address
/// space is rebuilt) span the slots the fd and terminal steps use later,
/// and a seccomp filter, written at [`ARGS`](layout::ARGS), may reach up
/// to [`SECCOMP_PROG`](layout::SECCOMP_PROG).
pub mod layout {
    /// A call's argument struct (`clone_args`, `prctl_mm_map`); the task
    /// helpers' scratch words (timers, signals, creds) start here too.
    pub const ARGS: u64 = 0;
    /// An array such a struct points to: the `set_tid` list of clone3,
    /// the auxv of PR_SET_MM_MAP.
    pub const ARRAY: u64 = 4 << 10;
    /// A path or name one call takes (chroot, a file opened in the task,
    /// the task's name); also where the paths of a mapping batch start,
    /// up to [`BATCH_TABLE`].
    pub const PATHS: u64 = 8 << 10;
    /// A path the calls run first by a caller of `mm::restore` take (the
    /// pages image's path goes at [`PATHS`], below it).
    pub const FIRST_PATH: u64 = PATHS + 4096;
    /// The `epoll_event`s of the targets added to an epoll file.
    pub const EVENTS: u64 = 16 << 10;
    /// The `struct flock` of a file lock.
    pub const FLOCK: u64 = 20 << 10;
    /// A terminal's foreground process group number.
    pub const PGRP: u64 = 21 << 10;
    /// The `sock_fprog` of a seccomp filter (the filter itself at
    /// [`ARGS`], up to 32 KiB).
    pub const SECCOMP_PROG: u64 = 40 << 10;
    /// The batch runner's table of calls (page 13 of 15).
    pub const BATCH_TABLE: u64 = 48 << 10;
}

/// Bytes of paths a mapping batch may write at [`layout::PATHS`], up to
/// [`layout::BATCH_TABLE`].
pub(crate) const PATHS_ROOM: usize = 40 << 10;

/// Write `bytes` into the trampoline's data area at `off` and return the address.
pub fn put(pid: Pid, t: &Trampoline, off: u64, bytes: &[u8]) -> Result<u64> {
    remote::write_mem(pid, t.data + off, bytes)?;
    Ok(t.data + off)
}

/// The room kept free for the trampoline in every task: it, then room to
/// park the vdso areas.
pub const TRAMPOLINE_HOLE: u64 = 4 << 20;
/// The lowest address looked at for free room in a task.
pub const LOWEST_FREE: u64 = 0x1000_0000;

/// The call opening `path` in task `pid` with `flags`, the path written in
/// the trampoline's data at `off`.
pub fn open_call(
    pid: Pid,
    t: &Trampoline,
    off: u64,
    name: &'static str,
    path: &[u8],
    flags: i32,
) -> Result<Call> {
    let mut p = path.to_vec();
    p.push(0);
    let at = put(pid, t, off, &p)?;
    let dirfd = libc::AT_FDCWD.cast_unsigned().into();
    Ok((
        name,
        nr::OPENAT,
        [dirfd, at, flags.cast_unsigned().into(), 0, 0, 0],
    ))
}
