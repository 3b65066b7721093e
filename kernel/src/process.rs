//! The calling process: prctl (its name, parent-death signal, the
//! operations probes ask about), leaving at once (`_exit`), its thread id,
//! the auxiliary vector, and capabilities of the kernel it runs on (rseq,
//! Landlock, the x86 vdso and 32-bit system calls).
//!
//! Wrappers return `Errno` without context; callers say what failed.

use nix::errno::Errno;
use nix::unistd::Pid;

use crate::raw::{check, nr, syscall};

/// `_exit`: leave a forked child without running the parent's destructors.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and is async-signal-safe.
    unsafe { libc::_exit(code) }
}

/// Ask for `sig` when the parent dies.
pub fn set_pdeathsig(sig: i32) {
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig) };
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

/// `landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)`: the ABI version.
pub fn landlock_abi_version() -> Result<i64, Errno> {
    // SAFETY: a null attr with size 0 is the documented version query.
    unsafe { syscall(nr::LANDLOCK_CREATE_RULESET, [0, 0, 1, 0, 0]) }
}

/// `arch_prctl(ARCH_MAP_VDSO_64, addr)`: x86-64 only.
#[cfg(target_arch = "x86_64")]
pub fn arch_map_vdso(addr: u64) -> Result<i64, Errno> {
    const ARCH_MAP_VDSO_64: libc::c_long = 0x2003;
    // SAFETY: integer arguments; the kernel maps a new vdso at a free address we chose.
    unsafe {
        syscall(
            libc::SYS_arch_prctl,
            [ARCH_MAP_VDSO_64, crate::raw::long(addr), 0, 0, 0],
        )
    }
}

/// prctl(2) operations whose arguments are all integers (no pointer the
/// kernel would read or write): the ones [`prctl`] accepts.
const INTEGER_PRCTLS: [i32; 6] = [
    libc::PR_SET_NO_NEW_PRIVS,
    libc::PR_SET_PDEATHSIG,
    libc::PR_SET_DUMPABLE,
    libc::PR_GET_DUMPABLE,
    libc::PR_SET_CHILD_SUBREAPER,
    // PR_TIMER_CREATE_RESTORE_IDS (Linux 6.13), not yet in libc.
    77,
];

/// `prctl` with integer arguments; EINVAL for an operation not known to
/// take only integers (those that take pointers have their own wrappers:
/// [`get_tid_address`], [`set_mm_map`], [`set_seccomp_filter`],
/// [`mm_map_size`](crate::mm::mm_map_size)).
pub fn prctl(op: i32, a: u64, b: u64, c: u64, d: u64) -> Result<i64, Errno> {
    if !INTEGER_PRCTLS.contains(&op) {
        return Err(Errno::EINVAL);
    }
    // SAFETY: the operation takes integers only (checked above).
    unsafe { prctl_raw(op, a, b, c, d) }
}

/// prctl(2) with any arguments.
///
/// # Safety
/// The arguments `op` takes as pointers must point to live memory of the
/// size the operation reads or writes.
pub(crate) unsafe fn prctl_raw(op: i32, a: u64, b: u64, c: u64, d: u64) -> Result<i64, Errno> {
    // SAFETY: forwarded to the caller.
    let ret = unsafe { libc::prctl(op, a, b, c, d) };
    check(libc::c_long::from(ret))
}

/// The calling thread's clear_child_tid address (PR_GET_TID_ADDRESS).
pub fn get_tid_address() -> Result<u64, Errno> {
    let mut addr: u64 = 0;
    // SAFETY: PR_GET_TID_ADDRESS writes one pointer into the live `addr`.
    unsafe {
        prctl_raw(
            libc::PR_GET_TID_ADDRESS,
            std::ptr::from_mut(&mut addr) as u64,
            0,
            0,
            0,
        )
    }?;
    Ok(addr)
}

/// Apply a memory layout to the calling process (PR_SET_MM, PR_SET_MM_MAP):
/// `map` is a `struct prctl_mm_map` without auxv (its `auxv` pointer 0).
pub fn set_mm_map(map: &[u64; 13]) -> Result<(), Errno> {
    // The auxv pointer (word 11) must be null: the kernel would read it.
    if map[11] != 0 {
        return Err(Errno::EINVAL);
    }
    // SAFETY: the kernel reads the 104-byte struct `map` is, during the call.
    unsafe {
        prctl_raw(
            libc::PR_SET_MM,
            libc::PR_SET_MM_MAP as u64,
            std::ptr::from_ref(map) as u64,
            104,
            0,
        )
    }
    .map(drop)
}

/// Install the classic BPF program `insns` (raw `struct sock_filter`s, 8
/// bytes each) as the calling thread's seccomp filter (PR_SET_SECCOMP,
/// SECCOMP_MODE_FILTER).
pub fn set_seccomp_filter(insns: &[u8]) -> Result<(), Errno> {
    let prog = libc::sock_fprog {
        len: u16::try_from(insns.len() / 8).map_err(|_| Errno::EINVAL)?,
        filter: insns.as_ptr().cast_mut().cast(),
    };
    // SAFETY: the kernel copies the program `prog` describes during the call.
    unsafe {
        prctl_raw(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as u64,
            std::ptr::from_ref(&prog) as u64,
            0,
            0,
        )
    }
    .map(drop)
}

/// The calling thread's kernel id (gettid).
pub fn gettid() -> Pid {
    // SAFETY: gettid has no preconditions.
    Pid::from_raw(unsafe { libc::gettid() })
}

/// `rseq(NULL, 0, 0, 0)`: an invalid registration the kernel rejects with
/// EINVAL when rseq exists and ENOSYS when it does not.
pub fn rseq_probe() -> Errno {
    // SAFETY: a null area with length 0 is rejected before anything is read.
    match unsafe { syscall(libc::SYS_rseq, [0, 0, 0, 0, 0]) } {
        Ok(_) => Errno::UnknownErrno,
        Err(e) => e,
    }
}

/// `getauxval(key)`.
pub fn auxv(key: u64) -> u64 {
    // SAFETY: getauxval has no preconditions and returns 0 for unknown keys.
    unsafe { libc::getauxval(key as libc::c_ulong) }
}

/// A 32-bit system call through `int $0x80` (x86-64 with IA32 emulation).
#[cfg(target_arch = "x86_64")]
pub fn int80(nr: u32, a: [u32; 5]) -> i64 {
    let ret: u32;
    // SAFETY: the ia32 entry only reads the six argument registers and returns
    // in eax; ebp (6th argument) is saved, zeroed and restored around it.
    unsafe {
        std::arch::asm!(
            "push rbp",
            "push rbx",
            "mov ebx, {a0:e}",
            "xor ebp, ebp",
            "int 0x80",
            "pop rbx",
            "pop rbp",
            a0 = in(reg) a[0],
            inlateout("eax") nr => ret,
            in("ecx") a[1], in("edx") a[2], in("esi") a[3], in("edi") a[4],
        );
    }
    i64::from(i32::from_ne_bytes(ret.to_ne_bytes()))
}

/// Wait for child `pid` to end (wait4): its raw wait status and the
/// resources it used (`struct rusage`: peak RSS, CPU times...).
pub fn wait4(pid: Pid) -> Result<(i32, libc::rusage), Errno> {
    let mut status = 0;
    // SAFETY: rusage is plain old data; all zeroes is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: status and rusage are live out-pointers of the types wait4
    // writes.
    let r = unsafe { libc::wait4(pid.as_raw(), &raw mut status, 0, &raw mut ru) };
    Errno::result(r)?;
    Ok((status, ru))
}
