//! ptrace(2) on a stopped tracee: its general registers and register sets
//! (`NT_*`), blocked-signal mask, queued signals (`siginfo_t`), seccomp
//! filters, rseq registration, robust-futex list and trace options; the
//! requests `nix` does not wrap go through one private raw call.
//!
//! Wrappers return `Errno` without context; callers say what failed.

use nix::errno::Errno;
use nix::unistd::Pid;
use stasis_arch::native::Regs;

const PTRACE_PEEKSIGINFO: u32 = 0x4209;

const PTRACE_GETSIGMASK: u32 = 0x420a;

const PTRACE_SETSIGMASK: u32 = 0x420b;

const PTRACE_GET_RSEQ_CONFIGURATION: u32 = 0x420f;

const PTRACE_GETREGSET: u32 = 0x4204;

const PTRACE_SETREGSET: u32 = 0x4205;
const PTRACE_SETOPTIONS: u32 = 0x4200;

const PTRACE_SECCOMP_GET_FILTER: u32 = 0x420c;

const PTRACE_SECCOMP_GET_METADATA: u32 = 0x420d;

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

/// The general registers of a stopped tracee.
#[cfg(target_arch = "aarch64")]
pub fn getregs(tid: Pid) -> Result<Regs, Errno> {
    let b = getregset(tid, stasis_arch::aarch64::NT_PRSTATUS)?;
    Regs::from_regset(&b).ok_or(Errno::EIO)
}

/// The general registers of a stopped tracee.
#[cfg(target_arch = "powerpc64")]
pub fn getregs(tid: Pid) -> Result<Regs, Errno> {
    let b = getregset(tid, stasis_arch::ppc64::NT_PRSTATUS)?;
    Regs::from_regset(&b).ok_or(Errno::EIO)
}

/// The general registers of a stopped tracee, with the syscall it is in.
#[cfg(target_arch = "s390x")]
pub fn getregs(tid: Pid) -> Result<Regs, Errno> {
    use stasis_arch::s390;
    let b = getregset(tid, s390::NT_PRSTATUS)?;
    let sc = getregset(tid, s390::NT_S390_SYSTEM_CALL)?;
    Regs::from_regset(&b, &sc).ok_or(Errno::EIO)
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

/// Set the general registers of a stopped tracee.
#[cfg(target_arch = "aarch64")]
pub fn setregs(tid: Pid, r: &Regs) -> Result<(), Errno> {
    setregset(tid, stasis_arch::aarch64::NT_PRSTATUS, &r.to_regset())
}

/// Set the general registers of a stopped tracee.
#[cfg(target_arch = "powerpc64")]
pub fn setregs(tid: Pid, r: &Regs) -> Result<(), Errno> {
    setregset(tid, stasis_arch::ppc64::NT_PRSTATUS, &r.to_regset())
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
    // SAFETY: iov describes `buf`, live and writable for its whole length.
    unsafe {
        ptrace_raw(
            PTRACE_GETREGSET,
            tid,
            u64::from(nt),
            std::ptr::from_mut(&mut iov) as u64,
        )
    }?;
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
    // SAFETY: iov describes `copy`, live for the call; the kernel only reads it.
    unsafe {
        ptrace_raw(
            PTRACE_SETREGSET,
            tid,
            u64::from(nt),
            std::ptr::from_mut(&mut iov) as u64,
        )
    }
    .map(drop)
}

/// The blocked-signal mask of a stopped tracee.
pub fn get_sigmask(tid: Pid) -> Result<u64, Errno> {
    let mut mask = 0u64;
    // SAFETY: addr is the sigset size and data a live u64 of that size.
    unsafe {
        ptrace_raw(
            PTRACE_GETSIGMASK,
            tid,
            8,
            std::ptr::from_mut(&mut mask) as u64,
        )
    }?;
    Ok(mask)
}

/// Set the blocked-signal mask of a stopped tracee.
pub fn set_sigmask(tid: Pid, mask: u64) -> Result<(), Errno> {
    let mut m = mask;
    // SAFETY: addr is the sigset size and data a live u64 of that size.
    unsafe { ptrace_raw(PTRACE_SETSIGMASK, tid, 8, std::ptr::from_mut(&mut m) as u64) }.map(drop)
}

/// Seccomp filter `index` of a stopped tracee (0 is the newest) as raw
/// `struct sock_filter` bytes, with its SECCOMP_FILTER_FLAG_* flags.
pub fn seccomp_filter(tid: Pid, index: u64) -> Result<(Vec<u8>, u64), Errno> {
    let n = ptrace_seccomp_filter_len(tid, index)?;
    let mut buf = vec![0u8; usize::try_from(n).map_err(|_| Errno::EINVAL)? * 8];
    // SAFETY: `buf` has room for the `n` 8-byte instructions the filter has.
    unsafe {
        ptrace_raw(
            PTRACE_SECCOMP_GET_FILTER,
            tid,
            index,
            buf.as_mut_ptr() as u64,
        )
    }?;
    let mut meta = [index, 0u64];
    // SAFETY: addr is the size of `meta`, a live struct seccomp_metadata.
    unsafe {
        ptrace_raw(
            PTRACE_SECCOMP_GET_METADATA,
            tid,
            16,
            meta.as_mut_ptr() as u64,
        )
    }?;
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
        // SAFETY: `args` is a live ptrace_peeksiginfo_args asking for 32 entries, and `buf` holds 32 siginfo_t.
        let n = unsafe {
            ptrace_raw(
                PTRACE_PEEKSIGINFO,
                tid,
                std::ptr::from_mut(&mut args) as u64,
                buf.as_mut_ptr() as u64,
            )
        }?;
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
    // SAFETY: addr is the size of `c`, a live ptrace_rseq_configuration.
    unsafe {
        ptrace_raw(
            PTRACE_GET_RSEQ_CONFIGURATION,
            tid,
            std::mem::size_of::<Conf>() as u64,
            std::ptr::from_mut(&mut c) as u64,
        )
    }?;
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

/// `ptrace(req, pid, addr, data)` for the requests nix does not wrap.
///
/// Returns the call's value (some requests answer through it).
///
/// # Safety
/// `addr` and `data` must be what `req` expects (integers, or pointers to live
/// buffers of the size the request reads or writes).
unsafe fn ptrace_raw(req: u32, pid: Pid, addr: u64, data: u64) -> Result<i64, Errno> {
    Errno::clear();
    // SAFETY: forwarded to the caller.
    let ret = unsafe {
        libc::ptrace(
            req as _,
            pid.as_raw(),
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

/// ptrace SETOPTIONS with raw option bits.
pub fn ptrace_setoptions(pid: Pid, opts: u64) -> Result<(), Errno> {
    // SAFETY: PTRACE_SETOPTIONS takes the options as data, no pointers.
    unsafe { ptrace_raw(PTRACE_SETOPTIONS, pid, 0, opts) }.map(drop)
}

/// ptrace SECCOMP_GET_FILTER: the length of filter `index` of a stopped tracee.
pub fn ptrace_seccomp_filter_len(pid: Pid, index: u64) -> Result<i64, Errno> {
    // SAFETY: a null data pointer asks only for the length.
    unsafe { ptrace_raw(PTRACE_SECCOMP_GET_FILTER, pid, index, 0) }
}
