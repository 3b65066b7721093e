//! The probe table: CRIU's required probes, CRIU's named features in CRIU's
//! order, CRIU's unnamed extra probes, then stasis' own. Probe bodies live in
//! one module per family of kernel objects.

mod common;
mod fs;
mod mm;
mod net;
mod procfs;
mod task;

use crate::{Category, Needs, Probe};
use Category::{
    Experimental as Exp, Extra, Feature, Informational as Info, Required as Req, Stasis,
};

macro_rules! probes {
    ($( $name:literal, $cat:expr, $criu:literal, $f:path, $kernel:literal, $config:literal, $desc:literal; )*) => {
        /// Every probe, in CRIU's order followed by stasis' own.
        pub static PROBES: &[Probe] = &[
            $( Probe {
                name: $name,
                category: $cat,
                criu_feature: $criu,
                description: $desc,
                needs: Needs { kernel: $kernel, config: $config },
                run: || common::finish($f()),
            }, )*
        ];
    };
}

probes! {
    // CRIU's 17 always-required probes (no --feature names in CRIU).
    "map_files", Req, false, procfs::map_files, "3.3", "CONFIG_CHECKPOINT_RESTORE",
        "/proc/PID/map_files lists and resolves file-backed mappings";
    "sock_diag", Req, false, net::sock_diag, "3.3", "CONFIG_UNIX_DIAG CONFIG_INET_DIAG CONFIG_INET_TCP_DIAG CONFIG_INET_UDP_DIAG",
        "sock_diag finds unix, tcp and udp (v4/v6) sockets, and reports udplite, packet and netlink";
    "ns_last_pid", Req, false, procfs::ns_last_pid, "3.3", "CONFIG_CHECKPOINT_RESTORE",
        "/proc/sys/kernel/ns_last_pid is writable";
    "so_peek_off", Req, false, net::so_peek_off, "3.4", "",
        "SO_PEEK_OFF reads -1 on a new unix datagram socket";
    "kcmp", Req, false, task::kcmp, "3.5", "CONFIG_KCMP",
        "kcmp compares files and address spaces";
    "prctl", Req, false, task::prctl, "3.5", "CONFIG_CHECKPOINT_RESTORE",
        "prctl PR_GET_TID_ADDRESS and PR_SET_MM_MAP_SIZE";
    "fcntl_owner_uids", Req, false, task::fcntl_owner_uids, "3.6", "CONFIG_CHECKPOINT_RESTORE",
        "fcntl(F_GETOWNER_UIDS) works";
    "proc_stat", Req, false, procfs::proc_stat, "3.5", "",
        "/proc/PID/stat has the memory-layout and exit_code fields";
    "tcp_repair", Req, false, net::tcp_repair, "3.5", "CONFIG_CHECKPOINT_RESTORE",
        "TCP_REPAIR can be set on a connected socket and TCP_TIMESTAMP read";
    "fdinfo_ext", Req, false, procfs::fdinfo_ext, "3.8", "CONFIG_PROC_FS",
        "fdinfo shows eventfd counters, epoll targets, signalfd masks and inotify watches";
    "vmsplice", Req, false, mm::vmsplice, "2.6.17", "",
        "vmsplice of an unaligned buffer with SPLICE_F_GIFT";
    "ptmx_lock", Req, false, fs::ptmx_lock, "3.8", "CONFIG_UNIX98_PTYS",
        "TIOCSPTLCK locks a pty and opening the locked slave fails with EIO";
    "so_get_filter", Req, false, net::so_get_filter, "3.8", "",
        "getsockopt reads back SO_GET_FILTER programs and SO_BINDTODEVICE";
    "ipc_next_id", Req, false, procfs::ipc_next_id, "3.8", "CONFIG_CHECKPOINT_RESTORE CONFIG_SYSVIPC",
        "/proc/sys/kernel/{sem,msg,shm}_next_id are writable";
    "rt_sigqueueinfo", Req, false, task::rt_sigqueueinfo, "3.9", "",
        "rt_sigqueueinfo to oneself with a positive si_code";
    "ptrace_peeksiginfo", Req, false, task::ptrace_peeksiginfo, "3.10", "",
        "ptrace PEEKSIGINFO and GETSIGMASK on a traced child";
    "vdso_remap", Req, false, mm::vdso_remap, "3.16", "",
        "a child survives moving its vdso/vvar areas with mremap and still gets signals";

    // CRIU's named features, in CRIU's order.
    "mnt_id", Extra, true, procfs::mnt_id, "3.15", "",
        "mnt_id: is present in /proc/PID/fdinfo";
    "mem_dirty_track", Extra, true, mm::mem_dirty_track, "3.11", "CONFIG_MEM_SOFT_DIRTY",
        "soft-dirty bits track written pages (clear_refs, pagemap bit 55)";
    "aio_remap", Extra, true, mm::aio_remap, "3.19", "CONFIG_AIO",
        "an aio ring can be moved with mremap and still works";
    "timerfd", Extra, true, fs::timerfd, "3.17", "CONFIG_CHECKPOINT_RESTORE",
        "timerfd TFD_IOC_SET_TICKS sets the expiry count";
    "tun", Extra, true, net::tun, "3.19", "CONFIG_TUN",
        "/dev/net/tun accepts TUNSETIFINDEX";
    "tun_ns", Feature, true, net::tun_ns, "4.17", "CONFIG_TUN CONFIG_NET_NS",
        "SIOCGSKNS on a tun fd returns its network namespace";
    "userns", Extra, true, procfs::userns, "4.3", "CONFIG_USER_NS",
        "user namespaces exist and PR_SET_MM_MAP works";
    "fdinfo_lock", Extra, true, procfs::fdinfo_lock, "4.1", "",
        "lock: lines in fdinfo show file locks";
    "seccomp_suspend", Extra, true, task::seccomp_suspend, "4.3", "CONFIG_SECCOMP CONFIG_CHECKPOINT_RESTORE",
        "ptrace PTRACE_O_SUSPEND_SECCOMP";
    "seccomp_filters", Extra, true, task::seccomp_filters, "4.4", "CONFIG_SECCOMP_FILTER CONFIG_CHECKPOINT_RESTORE",
        "ptrace PTRACE_SECCOMP_GET_FILTER reads a child's filter";
    "loginuid", Extra, true, procfs::loginuid, "3.18", "CONFIG_AUDITSYSCALL",
        "/proc/PID/loginuid can be read, unset and restored";
    "cgroupns", Extra, true, procfs::cgroupns, "4.6", "CONFIG_CGROUPS",
        "cgroup namespaces exist";
    "autofs", Exp, true, fs::autofs, "4.6", "CONFIG_AUTOFS_FS",
        "an autofs mount shows pipe_ino= in mountinfo";
    "tcp_half_closed", Extra, true, net::tcp_half_closed, "4.9", "CONFIG_CHECKPOINT_RESTORE",
        "TCP_REPAIR can be set on a socket after shutdown(SHUT_WR)";
    "compat_cr", Exp, true, mm::compat_cr, "4.12", "CONFIG_IA32_EMULATION",
        "32-bit tasks can be restored (x86: ia32 syscalls, ARCH_MAP_VDSO, 32-bit mmap)";
    "uffd", Extra, true, mm::uffd, "4.3", "CONFIG_USERFAULTFD",
        "userfaultfd and its API handshake";
    "uffd-noncoop", Extra, true, mm::uffd_noncoop, "4.11", "CONFIG_USERFAULTFD",
        "userfaultfd fork, remap, unmap and remove events";
    "can_map_vdso", Extra, true, mm::can_map_vdso, "4.9", "CONFIG_CHECKPOINT_RESTORE",
        "arch_prctl(ARCH_MAP_VDSO_64) maps a vdso at a chosen address";
    "sk_ns", Extra, true, net::sk_ns, "4.9", "CONFIG_NET_NS",
        "SIOCGSKNS returns a socket's network namespace";
    "sk_unix_file", Feature, true, net::sk_unix_file, "6.10", "",
        "SIOCUNIXFILE opens the file of a bound unix socket";
    "net_diag_raw", Extra, true, net::net_diag_raw, "4.14", "CONFIG_INET_RAW_DIAG",
        "sock_diag finds raw IPv4 and IPv6 sockets";
    "nsid", Feature, true, net::nsid, "4.0", "CONFIG_NET_NS",
        "netlink RTM_GETNSID answers with a namespace id";
    "link_nsid", Feature, true, net::link_nsid, "4.0", "CONFIG_VETH CONFIG_NET_NS",
        "links report IFLA_LINK_NETNSID for peers in other namespaces";
    "kcmp_epoll", Extra, true, task::kcmp_epoll, "4.18", "CONFIG_KCMP",
        "kcmp(KCMP_EPOLL_TFD) matches epoll targets";
    "timens", Extra, true, procfs::timens, "5.6", "CONFIG_TIME_NS",
        "/proc/PID/timens_offsets exists";
    "external_net_ns", Feature, true, net::external_net_ns, "-", "",
        "version marker: external network namespaces are understood";
    "clone3_set_tid", Extra, true, task::clone3_set_tid, "5.5", "",
        "clone3 accepts set_tid";
    "newifindex", Extra, true, net::newifindex, "4.15", "CONFIG_VETH",
        "a link can be created with a chosen ifindex (IFLA_NEW_IFINDEX)";
    "nftables", Feature, true, net::nftables, "3.13", "CONFIG_NF_TABLES",
        "nftables tables can be created and deleted over netlink";
    "has_ipt_legacy", Feature, true, net::has_ipt_legacy, "-", "",
        "iptables-legacy and ip6tables-legacy are in PATH";
    "pidfd_store", Extra, true, task::pidfd_store, "5.6", "",
        "pidfd_open and pidfd_getfd";
    "ns_pid", Extra, true, procfs::ns_pid, "4.1", "",
        "NSpid: in /proc/PID/status";
    "apparmor_stacking", Extra, true, fs::apparmor_stacking, "4.20", "CONFIG_SECURITY_APPARMOR",
        "AppArmor supports stacked profiles (checked only when the LSM is AppArmor)";
    "network_lock_nftables", Extra, true, net::network_lock_nftables, "5.6", "CONFIG_NF_TABLES",
        "nftables sets with concatenated keys, as the network lock uses";
    "sockopt_buf_lock", Extra, true, net::sockopt_buf_lock, "5.14", "",
        "SO_BUF_LOCK can be set and read";
    "memfd_hugetlb", Extra, true, mm::memfd_hugetlb, "4.14", "CONFIG_HUGETLBFS",
        "memfd_create(MFD_HUGETLB)";
    "move_mount_set_group", Extra, true, fs::move_mount_set_group, "5.15", "",
        "move_mount(MOVE_MOUNT_SET_GROUP) copies a peer group";
    "openat2", Extra, true, fs::openat2, "5.6", "",
        "the openat2 system call";
    "get_rseq_conf", Extra, true, task::get_rseq_conf, "5.13", "CONFIG_RSEQ",
        "ptrace PTRACE_GET_RSEQ_CONFIGURATION";
    "ipv6_freebind", Extra, true, net::ipv6_freebind, "4.15", "CONFIG_IPV6",
        "the IPV6_FREEBIND socket option";
    "pagemap_scan", Extra, true, mm::pagemap_scan, "6.7", "CONFIG_PROC_PAGE_MONITOR",
        "ioctl(PAGEMAP_SCAN) on /proc/PID/pagemap reports present pages";
    "timer_cr_ids", Extra, true, task::timer_cr_ids, "6.17", "CONFIG_POSIX_TIMERS",
        "prctl(PR_TIMER_CREATE_RESTORE_IDS) lets timer_create take a chosen id";
    "overlayfs_maps", Extra, true, fs::overlayfs_maps, "4.19", "CONFIG_OVERLAY_FS",
        "/proc/PID/maps shows the same device and inode as stat() for overlayfs files";
    // Always run, never counted (CRIU's category 4); CRIU lists it here.
    "breakpoints", Info, true, task::breakpoints, "2.6.33", "CONFIG_HAVE_HW_BREAKPOINT",
        "a hardware breakpoint set through ptrace traps";
    "pagemap_scan_guard_pages", Extra, true, mm::pagemap_scan_guard_pages, "6.14", "",
        "PAGEMAP_SCAN reports MADV_GUARD_INSTALL regions as PAGE_IS_GUARD";

    // CRIU's extra probes without a feature name.
    "prctl_mm_map_size", Extra, false, task::prctl_mm_map_size, "3.18", "CONFIG_CHECKPOINT_RESTORE",
        "PR_SET_MM_MAP_SIZE reports the prctl_mm_map size";
    "posix_timers", Extra, false, procfs::posix_timers, "3.10", "CONFIG_CHECKPOINT_RESTORE CONFIG_POSIX_TIMERS",
        "/proc/PID/timers lists a process's POSIX timers";
    "clone_newpid_parent", Extra, false, task::clone_newpid_parent, "4.?", "CONFIG_PID_NS",
        "clone with CLONE_PARENT | CLONE_NEWPID";
    "tcp_repair_window", Extra, false, net::tcp_repair_window, "4.8", "CONFIG_CHECKPOINT_RESTORE",
        "TCP_REPAIR_WINDOW reads the window of a socket in repair mode";

    // stasis' own probes.
    "pidfd_open", Stasis, false, task::pidfd_open, "5.3", "",
        "pidfd_open, and the pidfd becomes readable when the process dies";
    "pidfd_getfd", Stasis, false, task::pidfd_getfd, "5.6", "",
        "pidfd_getfd takes a descriptor from another process, as a dump does";
    "pidfd_send_signal", Stasis, false, task::pidfd_send_signal, "5.1", "",
        "pidfd_send_signal delivers a signal";
    "pidfd_fdinfo", Stasis, false, procfs::pidfd_fdinfo, "5.3", "",
        "pidfd fdinfo shows Pid: and NSpid: (to dump pidfds)";
    "clone3", Stasis, false, task::clone3, "5.3", "",
        "clone3 creates a child";
    "set_tid", Stasis, false, task::set_tid, "5.5", "",
        "clone3 creates a child with a chosen PID, as restore does";
    "process_vm_readv", Stasis, false, task::process_vm_readv, "3.2", "CONFIG_CROSS_MEMORY_ATTACH",
        "process_vm_readv reads another process's memory";
    "process_vm_writev", Stasis, false, task::process_vm_writev, "3.2", "CONFIG_CROSS_MEMORY_ATTACH",
        "process_vm_writev writes another process's memory";
    "ptrace_seize", Stasis, false, task::ptrace_seize, "3.4", "",
        "PTRACE_SEIZE and PTRACE_INTERRUPT stop a running task";
    "ptrace_syscall_info", Stasis, false, task::ptrace_syscall_info, "5.3", "",
        "PTRACE_GET_SYSCALL_INFO";
    "ptrace_regsets", Stasis, false, task::ptrace_regsets, "2.6.34", "",
        "PTRACE_GETREGSET for general and FPU/vector registers";
    "prctl_mm_map", Stasis, false, task::prctl_mm_map, "3.18", "CONFIG_CHECKPOINT_RESTORE",
        "prctl(PR_SET_MM, PR_SET_MM_MAP) applies a memory layout, as restore does";
    "uffd_wp", Stasis, false, mm::uffd_wp, "5.7", "CONFIG_USERFAULTFD CONFIG_HAVE_ARCH_USERFAULTFD_WP",
        "userfaultfd write-protects anonymous memory";
    "uffd_wp_async", Stasis, false, mm::uffd_wp_async, "6.7", "CONFIG_PTE_MARKER_UFFD_WP",
        "userfaultfd offers asynchronous write-protect (UFFD_FEATURE_WP_ASYNC)";
    "pagemap_scan_written", Stasis, false, mm::pagemap_scan_written, "6.7", "CONFIG_PTE_MARKER_UFFD_WP",
        "PAGEMAP_SCAN write-protects and then reports exactly the written pages (dirty tracking without soft-dirty)";
    "memfd_secret", Stasis, false, mm::memfd_secret, "5.14", "CONFIG_SECRETMEM",
        "memfd_secret areas exist (their contents cannot be dumped)";
    "mseal", Stasis, false, mm::mseal, "6.10", "CONFIG_64BIT",
        "mseal seals a mapping against munmap";
    "madv_guard", Stasis, false, mm::madv_guard, "6.13", "",
        "MADV_GUARD_INSTALL makes a page fault on access";
    "io_uring", Stasis, false, mm::io_uring, "5.1", "CONFIG_IO_URING",
        "io_uring is present (a tree using a ring cannot be dumped)";
    "timens_offsets", Stasis, false, fs::timens_offsets, "5.6", "CONFIG_TIME_NS",
        "a new time namespace takes clock offsets";
    "cgroup2_freeze", Stasis, false, fs::cgroup2_freeze, "5.2", "CONFIG_CGROUPS",
        "cgroup v2 cgroup.freeze freezes a member and reports it in cgroup.events";
    "cgroup2_kill", Stasis, false, fs::cgroup2_kill, "5.14", "CONFIG_CGROUPS",
        "cgroup v2 cgroup.kill kills every member";
    "tcp_repair_queue", Stasis, false, net::tcp_repair_queue, "3.5", "CONFIG_CHECKPOINT_RESTORE",
        "TCP_REPAIR_QUEUE selects a queue and TCP_QUEUE_SEQ reads its sequence";
    "tcp_repair_options", Stasis, false, net::tcp_repair_options, "3.5", "CONFIG_CHECKPOINT_RESTORE",
        "TCP_REPAIR_OPTIONS restores MSS and window scaling";
    "so_peek_off_stream", Stasis, false, net::so_peek_off_stream, "4.3", "",
        "SO_PEEK_OFF walks queued data of a unix stream socket";
    "unix_diag_peers", Stasis, false, net::unix_diag_peers, "3.3", "CONFIG_UNIX_DIAG",
        "unix_diag finds one socket by inode and names its peer";
    "netns_cookie", Stasis, false, net::netns_cookie, "5.14", "CONFIG_NET_NS",
        "SO_NETNS_COOKIE identifies a socket's network namespace";
    "open_tree", Stasis, false, fs::open_tree, "5.2", "",
        "open_tree(OPEN_TREE_CLONE) and move_mount attach a detached copy";
    "idmapped_mounts", Stasis, false, fs::idmapped_mounts, "6.3", "CONFIG_USER_NS",
        "mount_setattr(MOUNT_ATTR_IDMAP) on tmpfs";
    "nsfs_ioctl", Stasis, false, procfs::nsfs_ioctl, "4.11", "",
        "ioctl(NS_GET_NSTYPE) on a namespace file";
    "procmap_query", Stasis, false, procfs::procmap_query, "6.11", "",
        "ioctl(PROCMAP_QUERY) finds a VMA without parsing /proc/PID/maps";
    "mqueue_state", Stasis, false, procfs::mqueue_state, "2.6.6", "CONFIG_POSIX_MQUEUE",
        "a POSIX message queue descriptor reports its queued bytes";
    "fanotify", Stasis, false, procfs::fanotify, "5.1", "CONFIG_FANOTIFY",
        "fanotify fdinfo shows its flags and marks";
    "rseq", Stasis, false, task::rseq, "4.18", "CONFIG_RSEQ",
        "the rseq system call exists";
    "landlock", Stasis, false, task::landlock, "5.13", "CONFIG_SECURITY_LANDLOCK",
        "Landlock is enabled (its domains cannot be dumped)";
    "cap_checkpoint_restore", Stasis, false, task::cap_checkpoint_restore, "5.9", "",
        "the kernel knows CAP_CHECKPOINT_RESTORE and we hold it";
    "capabilities", Stasis, false, task::caps, "-", "",
        "this process holds every capability checkpoint/restore uses";
}

/// The probe with this name.
pub fn by_name(name: &str) -> Option<&'static Probe> {
    PROBES.iter().find(|p| p.name == name)
}
