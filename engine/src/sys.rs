//! The engine's only `unsafe`: thin wrappers over the ptrace requests, system
//! calls and memory operations `nix` does not expose safely (register sets,
//! signal masks and queues of a traced thread, rseq configuration, robust
//! lists, clone3 with set_tid, fixed anonymous mappings); pidfds through
//! rustix.
//! Wrappers return `Errno` without context; callers say what failed.
#![allow(unsafe_code)]

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::unistd::Pid;
use stasis_arch::native::Regs;

/// System calls numbered alike on every arch (the unified table, 424+).
mod nr {
    pub const CLONE3: libc::c_long = 435;
}

const PTRACE_PEEKSIGINFO: u32 = 0x4209;
const PTRACE_GETSIGMASK: u32 = 0x420a;
const PTRACE_SETSIGMASK: u32 = 0x420b;
const PTRACE_GET_RSEQ_CONFIGURATION: u32 = 0x420f;
const PTRACE_GETREGSET: u32 = 0x4204;
const PTRACE_SETREGSET: u32 = 0x4205;

fn ptrace_raw(req: u32, tid: Pid, addr: u64, data: u64) -> Result<i64, Errno> {
    Errno::clear();
    // SAFETY: every request issued through this helper writes at most into the
    // buffer `data` points to, which the callers size as the kernel requires.
    let ret = unsafe {
        libc::ptrace(
            req as _,
            tid.as_raw(),
            addr as *mut libc::c_void,
            data as *mut libc::c_void,
        )
    };
    if ret == -1 && Errno::last_raw() != 0 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

/// The general registers of a stopped tracee.
#[cfg(target_arch = "x86_64")]
pub fn getregs(tid: Pid) -> Result<Regs, Errno> {
    let r = nix::sys::ptrace::getregs(tid)?;
    Ok(Regs {
        r15: r.r15,
        r14: r.r14,
        r13: r.r13,
        r12: r.r12,
        bp: r.rbp,
        bx: r.rbx,
        r11: r.r11,
        r10: r.r10,
        r9: r.r9,
        r8: r.r8,
        ax: r.rax,
        cx: r.rcx,
        dx: r.rdx,
        si: r.rsi,
        di: r.rdi,
        orig_ax: r.orig_rax,
        ip: r.rip,
        cs: r.cs,
        flags: r.eflags,
        sp: r.rsp,
        ss: r.ss,
        fs_base: r.fs_base,
        gs_base: r.gs_base,
        ds: r.ds,
        es: r.es,
        fs: r.fs,
        gs: r.gs,
    })
}

/// Set the general registers of a stopped tracee.
#[cfg(target_arch = "x86_64")]
pub fn setregs(tid: Pid, r: &Regs) -> Result<(), Errno> {
    let u = libc::user_regs_struct {
        r15: r.r15,
        r14: r.r14,
        r13: r.r13,
        r12: r.r12,
        rbp: r.bp,
        rbx: r.bx,
        r11: r.r11,
        r10: r.r10,
        r9: r.r9,
        r8: r.r8,
        rax: r.ax,
        rcx: r.cx,
        rdx: r.dx,
        rsi: r.si,
        rdi: r.di,
        orig_rax: r.orig_ax,
        rip: r.ip,
        cs: r.cs,
        eflags: r.flags,
        rsp: r.sp,
        ss: r.ss,
        fs_base: r.fs_base,
        gs_base: r.gs_base,
        ds: r.ds,
        es: r.es,
        fs: r.fs,
        gs: r.gs,
    };
    nix::sys::ptrace::setregs(tid, u)
}

/// The general registers of a stopped tracee.
#[cfg(target_arch = "aarch64")]
pub fn getregs(tid: Pid) -> Result<Regs, Errno> {
    let b = getregset(tid, stasis_arch::aarch64::NT_PRSTATUS)?;
    Regs::from_regset(&b).ok_or(Errno::EIO)
}

/// Set the general registers of a stopped tracee.
#[cfg(target_arch = "aarch64")]
pub fn setregs(tid: Pid, r: &Regs) -> Result<(), Errno> {
    setregset(tid, stasis_arch::aarch64::NT_PRSTATUS, &r.to_regset())
}

/// The general registers of a stopped tracee.
#[cfg(target_arch = "powerpc64")]
pub fn getregs(tid: Pid) -> Result<Regs, Errno> {
    let b = getregset(tid, stasis_arch::ppc64::NT_PRSTATUS)?;
    Regs::from_regset(&b).ok_or(Errno::EIO)
}

/// Set the general registers of a stopped tracee.
#[cfg(target_arch = "powerpc64")]
pub fn setregs(tid: Pid, r: &Regs) -> Result<(), Errno> {
    setregset(tid, stasis_arch::ppc64::NT_PRSTATUS, &r.to_regset())
}

/// The general registers of a stopped tracee, with the syscall it is in.
#[cfg(target_arch = "s390x")]
pub fn getregs(tid: Pid) -> Result<Regs, Errno> {
    use stasis_arch::s390;
    let b = getregset(tid, s390::NT_PRSTATUS)?;
    let sc = getregset(tid, s390::NT_S390_SYSTEM_CALL)?;
    Regs::from_regset(&b, &sc).ok_or(Errno::EIO)
}

/// Set the general registers of a stopped tracee, and the syscall the
/// kernel may restart.
#[cfg(target_arch = "s390x")]
pub fn setregs(tid: Pid, r: &Regs) -> Result<(), Errno> {
    use stasis_arch::s390;
    setregset(tid, s390::NT_PRSTATUS, &r.to_regset())?;
    setregset(tid, s390::NT_S390_SYSTEM_CALL, &r.system_call_regset())
}

/// A register set (`NT_*`) of a stopped tracee, as many bytes as the kernel
/// gives.
pub fn getregset(tid: Pid, nt: u32) -> Result<Vec<u8>, Errno> {
    let mut buf = vec![0u8; 16 << 10];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    ptrace_raw(
        PTRACE_GETREGSET,
        tid,
        u64::from(nt),
        std::ptr::from_mut(&mut iov) as u64,
    )?;
    buf.truncate(iov.iov_len);
    Ok(buf)
}

/// Set a register set (`NT_*`) of a stopped tracee.
pub fn setregset(tid: Pid, nt: u32, data: &[u8]) -> Result<(), Errno> {
    let mut copy = data.to_vec();
    let mut iov = libc::iovec {
        iov_base: copy.as_mut_ptr().cast(),
        iov_len: copy.len(),
    };
    ptrace_raw(
        PTRACE_SETREGSET,
        tid,
        u64::from(nt),
        std::ptr::from_mut(&mut iov) as u64,
    )
    .map(drop)
}

/// The blocked-signal mask of a stopped tracee.
pub fn get_sigmask(tid: Pid) -> Result<u64, Errno> {
    let mut mask = 0u64;
    ptrace_raw(
        PTRACE_GETSIGMASK,
        tid,
        8,
        std::ptr::from_mut(&mut mask) as u64,
    )?;
    Ok(mask)
}

/// Set the blocked-signal mask of a stopped tracee.
pub fn set_sigmask(tid: Pid, mask: u64) -> Result<(), Errno> {
    let mut m = mask;
    ptrace_raw(PTRACE_SETSIGMASK, tid, 8, std::ptr::from_mut(&mut m) as u64).map(drop)
}

const PTRACE_SECCOMP_GET_FILTER: u32 = 0x420c;
const PTRACE_SECCOMP_GET_METADATA: u32 = 0x420d;

/// Seccomp filter `index` of a stopped tracee (0 is the newest) as raw
/// `struct sock_filter` bytes, with its SECCOMP_FILTER_FLAG_* flags.
pub fn seccomp_filter(tid: Pid, index: u64) -> Result<(Vec<u8>, u64), Errno> {
    let n = ptrace_raw(PTRACE_SECCOMP_GET_FILTER, tid, index, 0)?;
    let mut buf = vec![0u8; usize::try_from(n).map_err(|_| Errno::EINVAL)? * 8];
    ptrace_raw(
        PTRACE_SECCOMP_GET_FILTER,
        tid,
        index,
        buf.as_mut_ptr() as u64,
    )?;
    let mut meta = [index, 0u64];
    ptrace_raw(
        PTRACE_SECCOMP_GET_METADATA,
        tid,
        16,
        meta.as_mut_ptr() as u64,
    )?;
    Ok((buf, meta[1]))
}

/// Size of the kernel's `siginfo_t`.
pub const SIGINFO_SIZE: usize = 128;

/// The queued signals of a stopped tracee: its own (`shared` false) or its
/// thread group's, each as raw `siginfo_t` bytes.
pub fn peek_siginfo(tid: Pid, shared: bool) -> Result<Vec<Vec<u8>>, Errno> {
    #[repr(C)]
    struct Args {
        off: u64,
        flags: u32,
        nr: i32,
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; SIGINFO_SIZE * 32];
    loop {
        let mut args = Args {
            off: out.len() as u64,
            flags: u32::from(shared),
            nr: 32,
        };
        let n = ptrace_raw(
            PTRACE_PEEKSIGINFO,
            tid,
            std::ptr::from_mut(&mut args) as u64,
            buf.as_mut_ptr() as u64,
        )?;
        let n = usize::try_from(n).map_err(|_| Errno::EINVAL)?;
        if n == 0 {
            return Ok(out);
        }
        out.extend(buf.chunks_exact(SIGINFO_SIZE).take(n).map(<[u8]>::to_vec));
    }
}

/// A thread's rseq registration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RseqConf {
    /// Address of the registered `struct rseq`, 0 if none.
    pub abi_pointer: u64,
    /// Registered length.
    pub abi_size: u32,
    /// Abort signature.
    pub signature: u32,
}

/// The rseq registration of a stopped tracee.
pub fn rseq_config(tid: Pid) -> Result<RseqConf, Errno> {
    #[repr(C)]
    #[derive(Default)]
    struct Conf {
        abi_pointer: u64,
        abi_size: u32,
        signature: u32,
        flags: u32,
        pad: u32,
    }
    let mut c = Conf::default();
    ptrace_raw(
        PTRACE_GET_RSEQ_CONFIGURATION,
        tid,
        std::mem::size_of::<Conf>() as u64,
        std::ptr::from_mut(&mut c) as u64,
    )?;
    Ok(RseqConf {
        abi_pointer: c.abi_pointer,
        abi_size: c.abi_size,
        signature: c.signature,
    })
}

/// The robust-futex list head and its length of any thread.
pub fn robust_list(tid: Pid) -> Result<(u64, u64), Errno> {
    let mut head: u64 = 0;
    let mut len: libc::size_t = 0;
    // SAFETY: both out-pointers are live locals of the sizes the syscall writes.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            tid.as_raw(),
            std::ptr::from_mut(&mut head),
            std::ptr::from_mut(&mut len),
        )
    };
    Errno::result(ret)?;
    Ok((head, len as u64))
}

/// A pidfd for a process.
pub fn pidfd_open(pid: Pid) -> Result<OwnedFd, Errno> {
    let pid = rustix::process::Pid::from_raw(pid.as_raw()).ok_or(Errno::ESRCH)?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
        .map_err(|e| Errno::from_raw(e.raw_os_error()))
}

/// Duplicate fd `fd` of the process behind `pidfd` into this process.
pub fn pidfd_getfd(pidfd: &OwnedFd, fd: RawFd) -> Result<OwnedFd, Errno> {
    rustix::process::pidfd_getfd(pidfd, fd, rustix::process::PidfdGetfdFlags::empty())
        .map_err(|e| Errno::from_raw(e.raw_os_error()))
}

/// Which side of a clone this process is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forked {
    /// The new task.
    Child,
    /// The caller, with the new task's PID.
    Parent(Pid),
}

/// Fork a child process with IDs `ids` in the PID namespaces it will be
/// in, innermost first (clone3's `set_tid`); with `new_pidns`, the child is
/// the init of a new PID namespace (`ids[0]` is then 1).
///
/// With `sibling`, the new process is the caller's sibling (CLONE_PARENT).
///
/// # Safety
/// As for `fork`: in a multi-threaded caller the child may only run
/// async-signal-safe code. The restore path forks from a single thread.
pub unsafe fn fork_with_ids(
    ids: &[libc::pid_t],
    new_pidns: bool,
    exit_signal: i32,
    sibling: bool,
) -> Result<Forked, Errno> {
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    let mut flags = 0u64;
    if sibling {
        flags |= libc::CLONE_PARENT as u64;
    }
    if new_pidns {
        flags |= libc::CLONE_NEWPID as u64;
    }
    let args = CloneArgs {
        flags,
        exit_signal: u64::try_from(exit_signal).map_err(|_| Errno::EINVAL)?,
        // No IDs: the kernel picks them (set_tid must then be null).
        set_tid: if ids.is_empty() {
            0
        } else {
            ids.as_ptr() as u64
        },
        set_tid_size: ids.len() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: args and the set_tid array outlive the call; the fork contract
    // is forwarded to the caller.
    let ret = unsafe {
        libc::syscall(
            nr::CLONE3,
            std::ptr::from_ref(&args),
            std::mem::size_of::<CloneArgs>(),
        )
    };
    let ret = Errno::result(ret)?;
    Ok(if ret == 0 {
        Forked::Child
    } else {
        Forked::Parent(Pid::from_raw(
            libc::pid_t::try_from(ret).map_err(|_| Errno::EINVAL)?,
        ))
    })
}

/// Anonymous memory this process mapped at a fixed address (the restore's
/// trampoline, which the tasks it forks inherit), unmapped on drop. It is
/// written through [`Mapping::write`] only; [`Mapping::seal_code`] makes a
/// leading part executable and read-only for good.
#[derive(Debug)]
pub struct Mapping {
    addr: u64,
    len: usize,
    /// Bytes from the start no longer writable.
    sealed: usize,
}

impl Mapping {
    /// Map `len` bytes at exactly `addr`, read-write, failing if anything
    /// is mapped there already.
    pub fn fixed_anon(addr: u64, len: usize) -> Result<Mapping, Errno> {
        // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping, so
        // no memory the program uses can change under it.
        let p = unsafe {
            libc::mmap(
                addr as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Errno::last());
        }
        if p as u64 != addr {
            // An old kernel that ignores NOREPLACE placed it elsewhere.
            // SAFETY: p is the mapping just created, of length len.
            unsafe { libc::munmap(p, len) };
            return Err(Errno::EEXIST);
        }
        Ok(Mapping {
            addr,
            len,
            sealed: 0,
        })
    }

    /// Copy `data` in at `offset`, past the sealed part (EINVAL otherwise).
    pub fn write(&mut self, offset: usize, data: &[u8]) -> Result<(), Errno> {
        let end = offset.checked_add(data.len()).ok_or(Errno::EINVAL)?;
        if offset < self.sealed || end > self.len {
            return Err(Errno::EINVAL);
        }
        let at = (self.addr as *mut u8).wrapping_add(offset);
        // SAFETY: [offset, end) lies in this mapping, which this value owns
        // and which is still writable there; nothing else refers to it.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), at, data.len()) };
        Ok(())
    }

    /// Make the first `len` bytes (whole pages) code: the instruction cache
    /// synced with what was written, then read and execute only.
    pub fn seal_code(&mut self, len: usize) -> Result<(), Errno> {
        if len > self.len || len < self.sealed {
            return Err(Errno::EINVAL);
        }
        // SAFETY: the first len bytes are this mapping's, owned by this
        // value; the slice lives for this statement only, before mprotect.
        clear_icache(unsafe { std::slice::from_raw_parts_mut(self.addr as *mut u8, len) });
        // SAFETY: mprotect over a leading part of this process' own mapping,
        // which no reference points into any more.
        Errno::result(unsafe {
            libc::mprotect(
                self.addr as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_EXEC,
            )
        })?;
        self.sealed = len;
        Ok(())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping is this value's, and nothing refers into it.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

/// `_exit`: leave a forked child without running the parent's destructors.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and is async-signal-safe.
    unsafe { libc::_exit(code) }
}

/// The system page size.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(v).unwrap_or(4096)
}

/// How the open file descriptions behind fd `fd1` of `pid1` and `fd2` of
/// `pid2` order (kcmp KCMP_FILE: a stable, obfuscated pointer order); None
/// when the kernel tells only that they differ.
pub fn kcmp_file_order(
    pid1: Pid,
    fd1: i32,
    pid2: Pid,
    fd2: i32,
) -> Result<Option<std::cmp::Ordering>, Errno> {
    const KCMP_FILE: libc::c_long = 0;
    // SAFETY: kcmp takes integers only and has no memory effects.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid1.as_raw(),
            pid2.as_raw(),
            KCMP_FILE,
            libc::c_long::from(fd1),
            libc::c_long::from(fd2),
        )
    };
    Ok(match Errno::result(ret)? {
        0 => Some(std::cmp::Ordering::Equal),
        1 => Some(std::cmp::Ordering::Less),
        2 => Some(std::cmp::Ordering::Greater),
        _ => None,
    })
}

/// Whether fd `fd` of `pid` is the file registered as fd `tfd` in epoll fd
/// `epfd` of the same task (kcmp KCMP_EPOLL_TFD).
pub fn kcmp_epoll_tfd(pid: Pid, fd: i32, epfd: i32, tfd: i32) -> Result<bool, Errno> {
    const KCMP_EPOLL_TFD: libc::c_long = 7;
    #[repr(C)]
    struct Slot {
        efd: u32,
        tfd: u32,
        toff: u32,
    }
    let slot = Slot {
        efd: epfd.cast_unsigned(),
        tfd: tfd.cast_unsigned(),
        toff: 0,
    };
    // SAFETY: the kernel reads the slot through the pointer for the call's
    // duration only.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid.as_raw(),
            pid.as_raw(),
            KCMP_EPOLL_TFD,
            libc::c_long::from(fd),
            &raw const slot,
        )
    };
    Ok(Errno::result(ret)? == 0)
}

/// A new signalfd for the signals in `mask` (bit n-1 for signal n); raw,
/// as the kernel's sigset holds real-time signals the libc types do not name.
pub fn signalfd(mask: u64, flags: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: the kernel reads 8 bytes of mask during the call; the result
    // is a new fd.
    let ret = unsafe { libc::syscall(libc::SYS_signalfd4, -1, &raw const mask, 8usize, flags) };
    let fd = RawFd::try_from(Errno::result(ret)?).map_err(|_| Errno::EBADF)?;
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Set the expirations a timerfd reports (TFD_IOC_SET_TICKS).
pub fn timerfd_set_ticks(fd: std::os::fd::BorrowedFd<'_>, ticks: u64) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    // _IOW('T', 0, u64): the direction bits differ on powerpc.
    const TFD_IOC_SET_TICKS: libc::c_ulong = nix::request_code_write!(b'T', 0, 8);
    // SAFETY: the ioctl reads a u64 through the pointer during the call.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), TFD_IOC_SET_TICKS as _, &raw const ticks) };
    Errno::result(ret).map(drop)
}

/// timerfd_gettime on `fd`, for its side effect: an expired periodic timer
/// adds its missed expirations to the ticks and is re-armed.
pub fn timerfd_gettime(fd: std::os::fd::BorrowedFd<'_>) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    let mut its = std::mem::MaybeUninit::<libc::itimerspec>::uninit();
    // SAFETY: the kernel writes a struct itimerspec through the pointer.
    let ret = unsafe { libc::timerfd_gettime(fd.as_raw_fd(), its.as_mut_ptr()) };
    Errno::result(ret).map(drop)
}

/// Open the inode behind a file handle (`handle_type`, `handle`) on the
/// mount of `mount_fd` (open_by_handle_at; needs CAP_DAC_READ_SEARCH).
pub fn open_by_handle(
    mount_fd: std::os::fd::BorrowedFd<'_>,
    handle_type: i32,
    handle: &[u8],
    flags: i32,
) -> Result<OwnedFd, Errno> {
    use std::os::fd::AsRawFd;
    // struct file_handle: u32 handle_bytes, i32 handle_type, then the bytes.
    let mut buf = Vec::with_capacity(8 + handle.len());
    buf.extend_from_slice(
        &u32::try_from(handle.len())
            .map_err(|_| Errno::EINVAL)?
            .to_ne_bytes(),
    );
    buf.extend_from_slice(&handle_type.to_ne_bytes());
    buf.extend_from_slice(handle);
    // SAFETY: the kernel reads the handle header and bytes from `buf`
    // during the call; the result is a new fd.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount_fd.as_raw_fd(),
            buf.as_ptr(),
            flags,
        )
    };
    let fd = RawFd::try_from(Errno::result(ret)?).map_err(|_| Errno::EBADF)?;
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// One recvmsg on a socket: bytes read, fds received (SCM_RIGHTS,
/// close-on-exec) and the sender's raw sockaddr, empty when it has none
/// (raw, as nix panics on the empty names datagrams from unbound unix
/// sockets carry).
pub fn recv_msg(
    fd: RawFd,
    buf: &mut [u8],
    flags: i32,
) -> Result<(usize, Vec<OwnedFd>, Vec<u8>), Errno> {
    // Room for the most fds one message may carry (SCM_MAX_FD, 253).
    let mut control = vec![0u64; 256];
    // SAFETY: sockaddr_un is plain old data.
    let mut name: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain old data; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&raw mut name).cast();
    msg.msg_namelen =
        libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_un>()).unwrap_or(110);
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len() * 8;
    // SAFETY: every buffer msg points to is valid for the lengths given.
    let n =
        Errno::result(unsafe { libc::recvmsg(fd, &raw mut msg, flags | libc::MSG_CMSG_CLOEXEC) })?;
    // The control messages: { size_t len; int level; int type; data },
    // each aligned to a size_t.
    let bytes: Vec<u8> = control.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let used = msg.msg_controllen.min(bytes.len());
    let word = std::mem::size_of::<usize>();
    let head = word + 8;
    let mut fds = Vec::new();
    let mut off = 0;
    while off + head <= used {
        let mut lb = [0u8; std::mem::size_of::<usize>()];
        lb.copy_from_slice(&bytes[off..off + word]);
        let len = usize::from_ne_bytes(lb);
        let int_at = |at: usize| {
            i32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        if len < head || off + len > used {
            break;
        }
        if int_at(off + word) == libc::SOL_SOCKET && int_at(off + word + 4) == libc::SCM_RIGHTS {
            for at in (off + head..off + len).step_by(4) {
                // SAFETY: SCM_RIGHTS installed this fd in this process just
                // now; nothing else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(int_at(at)) });
            }
        }
        off += len.div_ceil(word) * word;
    }
    // The sender's sockaddr as the kernel wrote it (family first).
    let len = usize::try_from(msg.msg_namelen).unwrap_or(0);
    let mut raw: Vec<u8> = name.sun_family.to_ne_bytes().to_vec();
    raw.extend(name.sun_path.iter().map(|&c| c.to_ne_bytes()[0]));
    raw.truncate(len);
    Ok((usize::try_from(n).unwrap_or(0), fds, raw))
}

/// flock(2) on `fd` (nix only offers it as a guard that unlocks on drop).
pub fn flock(fd: std::os::fd::BorrowedFd<'_>, op: i32) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock takes an fd and an int.
    Errno::result(unsafe { libc::flock(fd.as_raw_fd(), op) }).map(drop)
}

/// A tty ioctl that reads an int into `*v` or takes one from it
/// (TIOCGPTN, TIOCGPKT, TIOCPKT, TIOCSPTLCK, ...).
pub fn tty_ioctl_int(
    fd: std::os::fd::BorrowedFd<'_>,
    req: libc::Ioctl,
    v: &mut i32,
) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    // SAFETY: these ioctls read or write one int through the valid pointer.
    Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), req, std::ptr::from_mut(v)) }).map(drop)
}

/// The window size of a tty (rows, cols, xpixel, ypixel).
pub fn tty_winsize(fd: std::os::fd::BorrowedFd<'_>) -> Result<[u16; 4], Errno> {
    use std::os::fd::AsRawFd;
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes the valid struct.
    Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &raw mut ws) })?;
    Ok([ws.ws_row, ws.ws_col, ws.ws_xpixel, ws.ws_ypixel])
}

/// Set the window size of a tty.
pub fn tty_set_winsize(fd: std::os::fd::BorrowedFd<'_>, w: [u16; 4]) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    let ws = libc::winsize {
        ws_row: w[0],
        ws_col: w[1],
        ws_xpixel: w[2],
        ws_ypixel: w[3],
    };
    // SAFETY: TIOCSWINSZ reads the valid struct.
    Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &raw const ws) }).map(drop)
}

/// A new fd on the slave of pty master `fd` (TIOCGPTPEER; no path lookup).
pub fn pty_peer(fd: std::os::fd::BorrowedFd<'_>, flags: i32) -> Result<OwnedFd, Errno> {
    use std::os::fd::AsRawFd;
    // SAFETY: TIOCGPTPEER takes open flags and returns a new fd.
    let ret = Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGPTPEER, flags) })?;
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(ret) })
}

/// The network namespace socket `fd` was made in (SIOCGSKNS).
pub fn socket_netns(fd: std::os::fd::BorrowedFd<'_>) -> Result<OwnedFd, Errno> {
    use std::os::fd::AsRawFd;
    const SIOCGSKNS: libc::c_ulong = 0x894C;
    // SAFETY: SIOCGSKNS takes no argument and returns a new fd.
    let ret = Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), SIOCGSKNS as _) })?;
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(ret) })
}

/// The values of SysV semaphore set `id` (`n` semaphores).
pub fn sem_getall(id: i32, n: usize) -> Result<Vec<u16>, Errno> {
    let mut v = vec![0u16; n];
    // SAFETY: GETALL writes `n` unsigned shorts into the buffer.
    Errno::result(unsafe { libc::semctl(id, 0, libc::GETALL, v.as_mut_ptr()) })?;
    Ok(v)
}

/// Set every value of SysV semaphore set `id`.
pub fn sem_setall(id: i32, v: &[u16]) -> Result<(), Errno> {
    // SAFETY: SETALL reads as many unsigned shorts as the set has.
    Errno::result(unsafe { libc::semctl(id, 0, libc::SETALL, v.as_ptr()) }).map(drop)
}

/// Create SysV semaphore set `key` with `n` semaphores and mode `mode`.
pub fn sem_create(key: i32, n: i32, mode: i32) -> Result<i32, Errno> {
    // SAFETY: integer arguments only.
    Errno::result(unsafe { libc::semget(key, n, libc::IPC_CREAT | libc::IPC_EXCL | mode) })
}

/// The contents of SysV shared memory segment `id` (`size` bytes), read
/// through a read-only attach of this process.
pub fn shm_read(id: i32, size: usize) -> Result<Vec<u8>, Errno> {
    // SAFETY: a fresh read-only attach at an address the kernel picks.
    let p = unsafe { libc::shmat(id, std::ptr::null(), libc::SHM_RDONLY) };
    if p as isize == -1 {
        return Err(Errno::last());
    }
    // SAFETY: the segment is mapped at `p` for at least `size` bytes.
    let data = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), size) }.to_vec();
    // SAFETY: `p` is this attach, detached once.
    unsafe { libc::shmdt(p) };
    Ok(data)
}

/// Create SysV shared memory segment `key` of `size` bytes with mode
/// `mode`, holding `data`.
pub fn shm_create(key: i32, size: usize, mode: i32, data: &[u8]) -> Result<i32, Errno> {
    // SAFETY: integer arguments only.
    let id =
        Errno::result(unsafe { libc::shmget(key, size, libc::IPC_CREAT | libc::IPC_EXCL | mode) })?;
    // SAFETY: a fresh attach at an address the kernel picks.
    let p = unsafe { libc::shmat(id, std::ptr::null(), 0) };
    if p as isize == -1 {
        return Err(Errno::last());
    }
    let n = data.len().min(size);
    // SAFETY: the segment is mapped writable at `p` for `size` bytes.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p.cast::<u8>(), n) };
    // SAFETY: `p` is this attach, detached once.
    unsafe { libc::shmdt(p) };
    Ok(id)
}

/// Remove shared memory segment `id` (IPC_RMID): it goes once nothing has
/// it attached.
pub fn shm_remove(id: i32) -> Result<(), Errno> {
    // SAFETY: IPC_RMID takes no buffer.
    Errno::result(unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) }).map(drop)
}

/// Set the owner of shared memory segment `id`.
pub fn shm_set_owner(id: i32, uid: u32, gid: u32, mode: u32) -> Result<(), Errno> {
    // SAFETY: shmid_ds is plain old data.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT writes the valid struct.
    Errno::result(unsafe { libc::shmctl(id, libc::IPC_STAT, &raw mut ds) })?;
    ds.shm_perm.uid = uid;
    ds.shm_perm.gid = gid;
    ds.shm_perm.mode = perm_mode(mode);
    // SAFETY: IPC_SET reads the valid struct.
    Errno::result(unsafe { libc::shmctl(id, libc::IPC_SET, &raw mut ds) }).map(drop)
}

/// Create SysV message queue `key` with mode `mode`.
pub fn msg_create(key: i32, mode: i32) -> Result<i32, Errno> {
    // SAFETY: integer arguments only.
    Errno::result(unsafe { libc::msgget(key, libc::IPC_CREAT | libc::IPC_EXCL | mode) })
}

/// Message `index` of queue `id`, copied without being taken (MSG_COPY):
/// its type and bytes, or `None` past the last.
pub fn msg_copy(id: i32, index: i64) -> Result<Option<(i64, Vec<u8>)>, Errno> {
    const MSG_COPY: i32 = 0o40000;
    // Room for the largest message (msgmax is at most 2^31; 64 KiB suffices
    // for the default, larger ones are retried).
    let mut size = 1usize << 16;
    loop {
        let mut buf = vec![0u8; 8 + size];
        // SAFETY: the buffer holds a long and `size` bytes.
        let n = unsafe {
            libc::msgrcv(
                id,
                buf.as_mut_ptr().cast(),
                size,
                index,
                MSG_COPY | libc::IPC_NOWAIT,
            )
        };
        match Errno::result(n) {
            Ok(n) => {
                let mut t = [0u8; 8];
                t.copy_from_slice(&buf[..8]);
                let len = usize::try_from(n).unwrap_or(0);
                return Ok(Some((i64::from_ne_bytes(t), buf[8..8 + len].to_vec())));
            }
            Err(Errno::ENOMSG) => return Ok(None),
            Err(Errno::E2BIG) if size < 1 << 30 => size *= 4,
            Err(e) => return Err(e),
        }
    }
}

/// Queue a message of type `mtype` on `id` (without waiting).
pub fn msg_send(id: i32, mtype: i64, data: &[u8]) -> Result<(), Errno> {
    let mut buf = mtype.to_ne_bytes().to_vec();
    buf.extend_from_slice(data);
    // SAFETY: the buffer holds a long and `data.len()` bytes.
    Errno::result(unsafe { libc::msgsnd(id, buf.as_ptr().cast(), data.len(), libc::IPC_NOWAIT) })
        .map(drop)
}

/// The byte limit of message queue `id` (msg_qbytes).
pub fn msg_qbytes(id: i32) -> Result<u64, Errno> {
    // SAFETY: msqid_ds is plain old data.
    let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT writes the valid struct.
    Errno::result(unsafe { libc::msgctl(id, libc::IPC_STAT, &raw mut ds) })?;
    Ok(ds.msg_qbytes)
}

/// The permission bits of an `ipc_perm.mode` (u16 on some arches, u32 on
/// others).
fn perm_mode<T: TryFrom<u32> + From<u16>>(mode: u32) -> T {
    T::try_from(mode & 0o777).unwrap_or_else(|_| T::from(0o600))
}

/// Set the owner and byte limit of message queue `id`.
pub fn msg_set(id: i32, uid: u32, gid: u32, mode: u32, qbytes: u64) -> Result<(), Errno> {
    // SAFETY: msqid_ds is plain old data.
    let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT writes the valid struct.
    Errno::result(unsafe { libc::msgctl(id, libc::IPC_STAT, &raw mut ds) })?;
    ds.msg_perm.uid = uid;
    ds.msg_perm.gid = gid;
    ds.msg_perm.mode = perm_mode(mode);
    ds.msg_qbytes = qbytes;
    // SAFETY: IPC_SET reads the valid struct.
    Errno::result(unsafe { libc::msgctl(id, libc::IPC_SET, &raw mut ds) }).map(drop)
}

/// Set the owner of semaphore set `id`.
pub fn sem_set_owner(id: i32, uid: u32, gid: u32, mode: u32) -> Result<(), Errno> {
    // SAFETY: semid_ds is plain old data.
    let mut ds: libc::semid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT writes the valid struct.
    Errno::result(unsafe { libc::semctl(id, 0, libc::IPC_STAT, &raw mut ds) })?;
    ds.sem_perm.uid = uid;
    ds.sem_perm.gid = gid;
    ds.sem_perm.mode = perm_mode(mode);
    // SAFETY: IPC_SET reads the valid struct.
    Errno::result(unsafe { libc::semctl(id, 0, libc::IPC_SET, &raw mut ds) }).map(drop)
}

/// A new close-on-exec socket of any protocol (nix names only some).
pub fn socket(domain: i32, ty: i32, proto: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: socket() takes no pointers; it returns a new fd or -1.
    let fd = Errno::result(unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) })?;
    Ok(own(fd))
}

/// Bind packet socket `fd` to device `ifindex` for protocol `proto_be`
/// (network byte order).
pub fn bind_packet(
    fd: std::os::fd::BorrowedFd<'_>,
    proto_be: u16,
    ifindex: i32,
) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    // SAFETY: sockaddr_ll is plain data; all zeroes is a valid value.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = u16::try_from(libc::AF_PACKET).unwrap_or(17);
    sa.sll_protocol = proto_be;
    sa.sll_ifindex = ifindex;
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_ll>()).unwrap_or(20);
    // SAFETY: the kernel reads `len` bytes of `sa` during the call.
    let ret = unsafe { libc::bind(fd.as_raw_fd(), (&raw const sa).cast(), len) };
    Errno::result(ret).map(drop)
}

/// The classic BPF filter attached to socket `fd` (SO_GET_FILTER), as raw
/// `struct sock_filter` bytes, 8 per instruction; empty when none is.
pub fn socket_filter(fd: std::os::fd::BorrowedFd<'_>) -> Result<Vec<u8>, Errno> {
    use std::os::fd::AsRawFd;
    // The option's length counts instructions: 0 asks how many there are.
    let mut n: libc::socklen_t = 0;
    // SAFETY: with a length of 0 the kernel writes nothing to the buffer.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_GET_FILTER,
            std::ptr::null_mut(),
            &raw mut n,
        )
    };
    Errno::result(ret)?;
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut buf = vec![0u8; usize::try_from(n).unwrap_or(0) * 8];
    let mut len = n;
    // SAFETY: `buf` holds `n` instructions of 8 bytes, what `len` allows.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_GET_FILTER,
            buf.as_mut_ptr().cast(),
            &raw mut len,
        )
    };
    Errno::result(ret)?;
    buf.truncate(usize::try_from(len).unwrap_or(0) * 8);
    Ok(buf)
}

/// Attach the classic BPF program `insns` (raw `struct sock_filter`s) to
/// socket `fd` (SO_ATTACH_FILTER).
pub fn attach_socket_filter(fd: std::os::fd::BorrowedFd<'_>, insns: &[u8]) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    let prog = libc::sock_fprog {
        len: u16::try_from(insns.len() / 8).map_err(|_| Errno::EINVAL)?,
        filter: insns.as_ptr().cast_mut().cast(),
    };
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::sock_fprog>()).unwrap_or(16);
    // SAFETY: the kernel copies the program `prog` points to during the call.
    let ret = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&raw const prog).cast(),
            len,
        )
    };
    Errno::result(ret).map(drop)
}

/// An int socket option (for options the nix crate does not name).
pub fn getsockopt_int(
    fd: std::os::fd::BorrowedFd<'_>,
    level: i32,
    name: i32,
) -> Result<i32, Errno> {
    use std::os::fd::AsRawFd;
    let mut v: libc::c_int = 0;
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4);
    // SAFETY: the kernel writes at most `len` bytes into `v`.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw mut v).cast(),
            &raw mut len,
        )
    };
    Errno::result(ret).map(|_| v)
}

/// A socket option read as bytes (at most `len`).
pub fn getsockopt_bytes(
    fd: std::os::fd::BorrowedFd<'_>,
    level: i32,
    name: i32,
    len: usize,
) -> Result<Vec<u8>, Errno> {
    use std::os::fd::AsRawFd;
    let mut buf = vec![0u8; len];
    let mut l = libc::socklen_t::try_from(len).map_err(|_| Errno::EINVAL)?;
    // SAFETY: the kernel writes at most `l` bytes into `buf`.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            buf.as_mut_ptr().cast(),
            &raw mut l,
        )
    };
    Errno::result(ret)?;
    buf.truncate(usize::try_from(l).unwrap_or(0));
    Ok(buf)
}

/// Set a socket option from bytes.
pub fn setsockopt_bytes(
    fd: std::os::fd::BorrowedFd<'_>,
    level: i32,
    name: i32,
    v: &[u8],
) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    let l = libc::socklen_t::try_from(v.len()).map_err(|_| Errno::EINVAL)?;
    // SAFETY: the kernel reads `l` bytes from `v` during the call.
    let ret = unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, v.as_ptr().cast(), l) };
    Errno::result(ret).map(drop)
}

/// An ioctl that writes an int (SIOCINQ, SIOCOUTQ, ...).
pub fn ioctl_int_get(fd: std::os::fd::BorrowedFd<'_>, req: libc::c_ulong) -> Result<i32, Errno> {
    use std::os::fd::AsRawFd;
    let mut v: libc::c_int = 0;
    // SAFETY: the ioctl writes one int through the valid pointer.
    Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), req as _, &raw mut v) })?;
    Ok(v)
}

/// Set an int socket option.
pub fn setsockopt_int(
    fd: std::os::fd::BorrowedFd<'_>,
    level: i32,
    name: i32,
    v: i32,
) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4);
    // SAFETY: the kernel reads `len` bytes from `v` during the call.
    let ret = unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, (&raw const v).cast(), len) };
    Errno::result(ret).map(drop)
}

/// write(2) to fd number `fd`, which this process inherited (a forked
/// task's report pipe, the cgroup.procs files it joins): no claim on the
/// fd's lifetime is made.
pub fn write_raw(fd: RawFd, data: &[u8]) -> Result<usize, Errno> {
    // SAFETY: write reads data.len() bytes from a live slice; on a number
    // that is not open it fails with EBADF.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    Errno::result(n).map(|n| usize::try_from(n).unwrap_or(0))
}

/// A close-on-exec copy, from 3 up, of fd number `fd`, which this process
/// inherited (`swrk FD`'s socket); EBADF when it is not open.
pub fn dup_inherited(fd: RawFd) -> Result<OwnedFd, Errno> {
    // SAFETY: F_DUPFD_CLOEXEC on a number makes a new fd and touches no
    // memory; on a number that is not open it fails with EBADF.
    let n = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    Errno::result(n).map(own)
}

/// Close every fd from `lo` to `hi` (inclusive) except those in `keep`,
/// with close_range over the gaps: no listing of /proc/self/fd, whose cost
/// grows with every fd the process holds. ENOSYS before Linux 5.9.
pub fn close_except(lo: u32, hi: u32, keep: &[RawFd]) -> Result<(), Errno> {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter_map(|&k| u32::try_from(k).ok())
        .filter(|k| (lo..=hi).contains(k))
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let close_range = |a: u32, b: u32| {
        // SAFETY: closing fd numbers has no memory effects; callers close
        // only fds no owned handle refers to.
        Errno::result(unsafe { libc::syscall(libc::SYS_close_range, a, b, 0) }).map(drop)
    };
    let mut start = Some(lo);
    let mut ranges = Vec::new();
    for &k in &keep {
        if let Some(s) = start
            && k > s
        {
            ranges.push((s, k - 1));
        }
        start = k.checked_add(1);
    }
    if let Some(s) = start
        && s <= hi
    {
        ranges.push((s, hi));
    }
    match ranges.iter().try_for_each(|&(a, b)| close_range(a, b)) {
        // No close_range (before Linux 5.9): the table, listed.
        Err(Errno::ENOSYS) => {
            let open: Vec<u32> = std::fs::read_dir("/proc/self/fd")
                .map_err(|_| Errno::ENOSYS)?
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect();
            for fd in open {
                if (lo..=hi).contains(&fd) && keep.binary_search(&fd).is_err() {
                    // SAFETY: as close_range above, one number at a time.
                    unsafe { libc::close(fd.cast_signed()) };
                }
            }
            Ok(())
        }
        r => r,
    }
}

/// Set or clear close-on-exec on `fd`.
pub fn set_cloexec(fd: RawFd, on: bool) -> Result<(), Errno> {
    let flag = if on { libc::FD_CLOEXEC } else { 0 };
    // SAFETY: F_SETFD on an fd number changes only its flags.
    Errno::result(unsafe { libc::fcntl(fd, libc::F_SETFD, flag) }).map(drop)
}

/// A close-on-exec copy of `fd` at `min` or the lowest free number above.
pub fn dup_above(fd: RawFd, min: RawFd) -> Result<RawFd, Errno> {
    // SAFETY: F_DUPFD_CLOEXEC makes a new fd; nothing else changes.
    Errno::result(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) })
}

/// dup3 `from` onto `to`, with or without close-on-exec.
pub fn dup_to(from: RawFd, to: RawFd, cloexec: bool) -> Result<(), Errno> {
    if from == to {
        return Ok(());
    }
    let flags = if cloexec { libc::O_CLOEXEC } else { 0 };
    // SAFETY: dup3 on fd numbers; `to` is replaced atomically.
    Errno::result(unsafe { libc::dup3(from, to, flags) }).map(drop)
}

/// Ask for `sig` when the parent dies.
pub fn set_pdeathsig(sig: i32) {
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig) };
}

extern "C" fn no_op_handler(_: libc::c_int) {}

/// Give `sig` a disposition: default, ignored, or caught (by a handler that
/// does nothing; used for zombies, whose own handlers are gone).
pub fn set_disposition(sig: i32, ignore: bool, catch: bool) {
    // The kernel's struct sigaction: glibc's sigaction() refuses the
    // signals it keeps for itself (32, 33), which a zombie may ignore.
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: u64,
        restorer: usize,
        mask: u64,
    }
    let handler = if catch {
        no_op_handler as extern "C" fn(libc::c_int) as usize
    } else {
        usize::from(ignore)
    };
    let sa = KernelSigaction {
        handler,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    // SAFETY: `sa` outlives the call and has the kernel's layout; the
    // handler is async-signal-safe (it does nothing) and never runs in a
    // zombie, which exits right after.
    let _ = unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            &raw const sa,
            std::ptr::null_mut::<KernelSigaction>(),
            8usize,
        )
    };
}

/// Make instruction fetches see what was just written to `code` as data
/// (libgcc's `__clear_cache`: cache maintenance on arm64 and POWER, nothing
/// on x86 and s390x, whose caches are coherent).
fn clear_icache(code: &mut [u8]) {
    #[cfg(any(target_arch = "aarch64", target_arch = "powerpc64"))]
    {
        unsafe extern "C" {
            fn __clear_cache(start: *mut libc::c_char, end: *mut libc::c_char);
        }
        let range = code.as_mut_ptr_range();
        // SAFETY: the range is one live, writable slice of our memory;
        // __clear_cache only runs cache maintenance over it.
        unsafe { __clear_cache(range.start.cast(), range.end.cast()) };
    }
    #[cfg(not(any(target_arch = "aarch64", target_arch = "powerpc64")))]
    let _ = code;
}

/// Set the calling thread's name (PR_SET_NAME).
pub fn set_comm(name: &str) {
    let mut b = [0u8; 16];
    for (d, c) in b.iter_mut().zip(name.bytes().take(15)) {
        *d = c;
    }
    // SAFETY: PR_SET_NAME reads at most 16 bytes from a NUL-terminated buffer.
    unsafe { libc::prctl(libc::PR_SET_NAME, b.as_ptr()) };
}

/// Take ownership of an fd number just returned by a syscall (only here:
/// each caller passes an fd the kernel just made).
fn own(fd: RawFd) -> OwnedFd {
    // SAFETY: callers pass fds fresh from the kernel that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Take ownership of an fd just received in an SCM_RIGHTS message (the
/// kernel installed it in this process for the receiver alone).
pub fn own_received(fd: RawFd) -> OwnedFd {
    own(fd)
}

/// A copy of `fd` at the lowest number from `min` up, close-on-exec.
pub fn dup_at_least(fd: std::os::fd::BorrowedFd<'_>, min: RawFd) -> Result<OwnedFd, Errno> {
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(min)).map(own)
}

/// accept4(2) on listener `l`: the connection's socket.
pub fn accept(
    l: std::os::fd::BorrowedFd<'_>,
    flags: nix::sys::socket::SockFlag,
) -> Result<OwnedFd, Errno> {
    use std::os::fd::AsRawFd;
    nix::sys::socket::accept4(l.as_raw_fd(), flags).map(own)
}

/// A POSIX message queue descriptor as an owned fd (it is one on Linux).
pub fn mq_fd(m: nix::mqueue::MqdT) -> OwnedFd {
    use std::os::fd::IntoRawFd;
    own(m.into_raw_fd())
}

/// Fork a child with PID `pid` from a single-threaded process (the restore
/// path). Refuses with EDEADLK when other threads exist, since the child of a
/// multi-threaded fork may only run async-signal-safe code.
pub fn fork_single_threaded(pid: Pid, sibling: bool) -> Result<Forked, Errno> {
    fork_single_threaded_ids(&[pid.as_raw()], false, sibling)
}

/// [`fork_single_threaded`] with IDs at every level of nested PID
/// namespaces (see [`fork_with_ids`]).
pub fn fork_single_threaded_ids(
    ids: &[libc::pid_t],
    new_pidns: bool,
    sibling: bool,
) -> Result<Forked, Errno> {
    let threads = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:").map(|v| v.trim().to_owned()))
        })
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(0);
    if threads != 1 {
        return Err(Errno::EDEADLK);
    }
    // A sibling takes the caller's exit signal (SIGCHLD); clone3 wants 0 then.
    let exit_signal = if sibling { 0 } else { libc::SIGCHLD };
    // SAFETY: the process has one thread, so the child may run ordinary code.
    unsafe { fork_with_ids(ids, new_pidns, exit_signal, sibling) }
}

/// A read-only private mapping of part of a file (an image the engine
/// copies from without reading it into a buffer); unmapped on drop.
#[derive(Debug)]
pub struct FileWindow {
    ptr: std::ptr::NonNull<libc::c_void>,
    len: usize,
}

impl FileWindow {
    /// Map `len` bytes of `file` from `off` (page aligned), every page
    /// mapped at once (MAP_POPULATE: no fault per page later).
    pub fn map(file: &impl std::os::fd::AsFd, off: u64, len: usize) -> Result<FileWindow, Errno> {
        use std::os::fd::AsRawFd;
        let off = libc::off_t::try_from(off).map_err(|_| Errno::EINVAL)?;
        // SAFETY: a new mapping at an address the kernel chooses: no memory
        // the program uses changes.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_POPULATE,
                file.as_fd().as_raw_fd(),
                off,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Errno::last());
        }
        let ptr = std::ptr::NonNull::new(p).ok_or(Errno::EFAULT)?;
        Ok(FileWindow { ptr, len })
    }

    /// Address of byte `at` of the window (for the kernel to read from).
    pub fn addr(&self, at: usize) -> u64 {
        self.ptr.as_ptr() as u64 + at.min(self.len) as u64
    }
}

impl Drop for FileWindow {
    fn drop(&mut self) {
        // SAFETY: ptr/len is the mapping made in `map`, used by nothing else.
        unsafe { libc::munmap(self.ptr.as_ptr(), self.len) };
    }
}

/// userfaultfd ioctls and their argument structs (linux/userfaultfd.h).
mod uffd {
    pub const API: u64 = 0xAA;
    pub const UFFDIO_API: libc::c_ulong = nix::request_code_readwrite!(0xAA, 0x3F, 24);
    pub const UFFDIO_REGISTER: libc::c_ulong = nix::request_code_readwrite!(0xAA, 0x00, 32);
    pub const UFFDIO_UNREGISTER: libc::c_ulong = nix::request_code_read!(0xAA, 0x01, 16);
    pub const UFFDIO_COPY: libc::c_ulong = nix::request_code_readwrite!(0xAA, 0x03, 40);
    pub const REGISTER_MODE_MISSING: u64 = 1;
}

/// UFFDIO_API on a fresh userfaultfd, no optional features.
pub fn uffd_api(fd: &impl std::os::fd::AsFd) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    // struct uffdio_api { api, features, ioctls }
    let mut api: [u64; 3] = [uffd::API, 0, 0];
    // SAFETY: UFFDIO_API reads and writes a struct uffdio_api, which `api` is.
    Errno::result(unsafe {
        libc::ioctl(fd.as_fd().as_raw_fd(), uffd::UFFDIO_API, api.as_mut_ptr())
    })
    .map(drop)
}

/// Register `[start, start + len)` of the userfaultfd's process for
/// missing-page handling (what makes UFFDIO_COPY into it possible).
pub fn uffd_register(fd: &impl std::os::fd::AsFd, start: u64, len: u64) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    // struct uffdio_register { range { start, len }, mode, ioctls }
    let mut reg: [u64; 4] = [start, len, uffd::REGISTER_MODE_MISSING, 0];
    // SAFETY: UFFDIO_REGISTER reads and writes a struct uffdio_register, which
    // `reg` is; it changes the other process's VMA flags only.
    Errno::result(unsafe {
        libc::ioctl(
            fd.as_fd().as_raw_fd(),
            uffd::UFFDIO_REGISTER,
            reg.as_mut_ptr(),
        )
    })
    .map(drop)
}

/// Undo [`uffd_register`] for `[start, start + len)`.
pub fn uffd_unregister(fd: &impl std::os::fd::AsFd, start: u64, len: u64) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    let mut range: [u64; 2] = [start, len];
    // SAFETY: UFFDIO_UNREGISTER reads a struct uffdio_range, which `range` is.
    Errno::result(unsafe {
        libc::ioctl(
            fd.as_fd().as_raw_fd(),
            uffd::UFFDIO_UNREGISTER,
            range.as_mut_ptr(),
        )
    })
    .map(drop)
}

/// UFFDIO_COPY: fill `len` bytes at `dst` in the userfaultfd's process with
/// the engine's memory at `src` (new pages, written once: no zeroing, no
/// fault per page). Returns the bytes copied, fewer on a partial copy.
pub fn uffd_copy(fd: &impl std::os::fd::AsFd, dst: u64, src: u64, len: u64) -> Result<u64, Errno> {
    use std::os::fd::AsRawFd;
    // struct uffdio_copy { dst, src, len, mode, copy }
    let mut c: [i64; 5] = [
        dst.cast_signed(),
        src.cast_signed(),
        len.cast_signed(),
        0,
        0,
    ];
    // SAFETY: UFFDIO_COPY reads and writes a struct uffdio_copy, which `c` is;
    // the kernel reads `len` bytes at `src`, which the caller keeps mapped.
    let ret = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), uffd::UFFDIO_COPY, c.as_mut_ptr()) };
    match Errno::result(ret) {
        Ok(_) => Ok(len),
        // Partly done: `copy` says how far.
        Err(_) if c[4] > 0 => Ok(c[4].cast_unsigned()),
        Err(e) => Err(e),
    }
}

/// The CPUs the engine may run on, as first asked (the engine asks at the
/// start of a dump or restore, before it pins any thread).
pub fn engine_mask() -> Option<nix::sched::CpuSet> {
    static MASK: std::sync::OnceLock<Option<nix::sched::CpuSet>> = std::sync::OnceLock::new();
    *MASK.get_or_init(|| nix::sched::sched_getaffinity(nix::unistd::getpid()).ok())
}

/// The CPU numbers in [`engine_mask`].
pub fn engine_cpus() -> Option<Vec<usize>> {
    let m = engine_mask()?;
    Some(
        (0..nix::sched::CpuSet::count())
            .filter(|&c| m.is_set(c).unwrap_or(false))
            .collect(),
    )
}

/// Let the calling thread run on every CPU of [`engine_mask`] (a helper
/// spawned by a pinned thread inherits its one CPU).
pub fn unpin_thread() {
    if let Some(m) = engine_mask() {
        let _ = nix::sched::sched_setaffinity(Pid::from_raw(0), &m);
    }
}

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
