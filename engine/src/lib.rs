//! stasis: checkpoint/restore of Linux process trees in CRIU's image format.
//!
//! This library holds the engine (dump, restore) and the image inspector; the
//! `stasis` command (the `stasis-cli` crate) is its command line. `dump/` and `restore/` orchestrate the
//! steps; the kernel objects live in subsystem folders, one module per kind
//! (see ARCHITECTURE.md at the top of the repository):
//!
//! - `proc`: the /proc parsers every kind reads through;
//! - `task/`: a process and its threads: freezing (`seize`), remote
//!   syscalls (`remote`) and their trampoline, registers (`cpu`),
//!   credentials, seccomp, timers;
//! - `mm`: the address space and its pages;
//! - `files/`: the fd table and each kind of open file;
//! - `net/`: sockets and the network lock;
//! - `ipc/`: SysV IPC and POSIX message queues;
//! - `ns`: namespaces;
//! - `cgroup`: the cgroups the tasks are in;
//!
//! System calls go through `stasis-kernel`; this crate has no `unsafe`.
#![forbid(unsafe_code)]

pub mod cgroup;
pub mod dump;
pub mod error;
pub(crate) mod files;
pub(crate) mod images;
pub mod inspect;
pub(crate) mod ipc;
pub(crate) mod mm;
pub(crate) mod net;
pub mod notify;
pub(crate) mod ns;
pub(crate) mod proc;
pub mod progress;
pub mod restore;
pub(crate) mod task;
pub(crate) mod workers;

pub use error::{EngineError, Result};
use stasis_kernel as kernel;

/// Copy `buf.len()` bytes of task `pid`'s memory at `addr` the way the dump
/// copies pages (for the engine's benchmarks).
pub fn read_task_memory(
    pid: nix::unistd::Pid,
    addr: u64,
    buf: &mut [u8],
) -> std::result::Result<(), EngineError> {
    task::remote::read_mem(pid, addr, buf)
}

/// Fork a worker process (an RPC service serves each connection in one):
/// `None` in the worker, the worker's PID in the caller. The caller must be
/// single-threaded (EDEADLK otherwise): the worker may fork trees itself.
pub fn fork_worker() -> std::result::Result<Option<nix::unistd::Pid>, nix::errno::Errno> {
    match kernel::clone::fork_single_threaded_ids(&[], false, false)? {
        kernel::clone::Forked::Child => Ok(None),
        kernel::clone::Forked::Parent(p) => Ok(Some(p)),
    }
}

/// A descriptor this process inherited by number (`swrk FD`'s socket, an
/// RPC request's images_dir_fd): a close-on-exec duplicate of it, or
/// EBADF when it is not open.
pub fn inherited_fd(
    fd: std::os::fd::RawFd,
) -> std::result::Result<std::os::fd::OwnedFd, nix::errno::Errno> {
    if fd < 0 {
        return Err(nix::errno::Errno::EBADF);
    }
    kernel::fd::dup_inherited(fd)
}
