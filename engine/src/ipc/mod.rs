//! Inter-process communication objects: SysV shared memory, semaphores and
//! message queues of an IPC namespace (`sysv`), and POSIX message queues
//! (`mqueue`).

pub(crate) mod mqueue;
pub(crate) mod sysv;
