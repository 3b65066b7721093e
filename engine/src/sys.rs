//! The kernel interfaces the engine calls through `sys::NAME`: re-exports
//! of the system-call wrappers in `stasis-kernel` (where the `unsafe` is),
//! grouped by the kernel module that holds them (see `kernel-map.txt`).

pub(crate) use stasis_kernel::clone::{Forked, fork_single_threaded, fork_single_threaded_ids};
pub(crate) use stasis_kernel::fd::{
    close_except, dup_above, dup_at_least, dup_inherited, dup_to, flock, kcmp_epoll_tfd,
    kcmp_file_order, open_by_handle, pidfd_getfd, pidfd_open, set_cloexec, write_raw,
};
pub(crate) use stasis_kernel::ioctl::ioctl_int_get;
pub(crate) use stasis_kernel::ipc::{
    msg_copy, msg_create, msg_qbytes, msg_send, msg_set, sem_create, sem_getall, sem_set_owner,
    sem_setall, shm_create, shm_read, shm_remove, shm_set_owner,
};
pub(crate) use stasis_kernel::mm::{FileWindow, Mapping, page_size};
pub(crate) use stasis_kernel::mount::pivot_in;
pub(crate) use stasis_kernel::mqueue::mq_fd;
pub(crate) use stasis_kernel::process::{exit_now, set_comm, set_pdeathsig};
pub(crate) use stasis_kernel::ptrace::{
    get_sigmask, getregs, getregset, peek_siginfo, robust_list, rseq_config, seccomp_filter,
    set_sigmask, setregs, setregset,
};
pub(crate) use stasis_kernel::sched::{engine_cpus, engine_mask, unpin_thread};
pub(crate) use stasis_kernel::signal::{set_disposition, signalfd};
pub(crate) use stasis_kernel::socket::{
    accept, attach_socket_filter, bind_packet, getsockopt_bytes, getsockopt_int, recv_msg,
    setsockopt_bytes, setsockopt_int, socket, socket_filter, socket_netns,
};
pub(crate) use stasis_kernel::timer::{timerfd_gettime, timerfd_set_ticks};
pub(crate) use stasis_kernel::tty::{pty_peer, tty_ioctl_int, tty_set_winsize, tty_winsize};
pub(crate) use stasis_kernel::uffd::{uffd_api, uffd_copy, uffd_register, uffd_unregister};
