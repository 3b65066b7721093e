//! The kernel interfaces the probes call through `sys::NAME`: re-exports of
//! the system-call wrappers in `stasis-kernel` (where the `unsafe` is),
//! grouped by the kernel module that holds them (see `kernel-map.txt`).
//! Every wrapper returns `Result<_, Errno>` without context; the probe that
//! calls it says what the failure means.

pub use stasis_kernel::clone::{Child, clone3_exit, clone3_probe_set_tid, fork_child};
pub use stasis_kernel::fd::{
    KcmpEpollSlot, OpenHow, fcntl_getowner_uids, kcmp, kcmp_epoll, openat2, pidfd_getfd,
    pidfd_open, pidfd_send_signal,
};
pub use stasis_kernel::io::{aio, io_uring_setup};
pub use stasis_kernel::ioctl::{ioc, ioctl_int_ptr};
pub use stasis_kernel::mm::{
    Mapping, PageRegion, current_brk, memfd_secret, mm_map_size, pagemap_scan, procmap_query,
};
pub use stasis_kernel::mount::{MountAttr, mount_setattr, move_mount, open_tree};
#[cfg(target_arch = "x86_64")]
pub use stasis_kernel::process::{arch_map_vdso, int80};
pub use stasis_kernel::process::{
    auxv, get_tid_address, gettid, landlock_abi_version, prctl, rseq_probe, set_mm_map,
    set_seccomp_filter,
};
pub use stasis_kernel::ptrace::{
    get_sigmask, getregset, peek_siginfo, ptrace_seccomp_filter_len, ptrace_setoptions, rseq_config,
};
pub use stasis_kernel::sched::ns_type;
pub use stasis_kernel::signal::{
    default_action, raise, rt_sigqueueinfo, set_handler, sigtimedwait_now,
};
pub use stasis_kernel::socket::{
    getsockopt_bytes, setsockopt_bytes, socket, socket_filter, socket_netns, unix_socket_file,
};
pub use stasis_kernel::timer::{timer_create_raw, timerfd_set_ticks};
pub use stasis_kernel::uffd::{uffdio_api, uffdio_register, uffdio_writeprotect, userfaultfd};
