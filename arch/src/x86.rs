//! x86-64: the general registers (`struct user_regs_struct`), the XSAVE area
//! the kernel hands out through `PTRACE_GETREGSET NT_X86_XSTATE`, their
//! conversions to and from `thread_info_x86`, syscall numbers the engine runs
//! remotely and the remote-syscall instruction. Plain data: compiles on every
//! host so any host can read an x86-64 image.

use stasis_proto::images::{
    UserX86FpregsEntry, UserX86RegsEntry, UserX86RegsMode, UserX86XsaveEntry,
};

/// `syscall` followed by `int3`: the remote-syscall trampoline. The trap
/// stops the task right after the syscall returns.
pub const SYSCALL_INSN: [u8; 8] = [0x0f, 0x05, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc];
/// Length of the `syscall` instruction (rewinding `ip` by it restarts a syscall).
pub const SYSCALL_INSN_LEN: u64 = 2;
/// Where instructions may start: x86 instructions may start at any byte.
pub const INSN_ALIGN: usize = 1;

/// A batch of system calls run by the task itself, ended by `int3`. On
/// entry `rbx` points just past a count word, at `count` entries of eight
/// words: nr, six arguments, and the result the code stores. `r12` and
/// `r13` are used (the syscall instruction keeps them); `rcx` and `r11` are
/// clobbered as by any syscall.
///
/// ```text
///  0: mov r13, rbx          49 89 dd
///  3: mov r12, [rbx-8]      4c 8b 63 f8
///  7: test r12, r12         4d 85 e4
/// 10: jz 55                 74 2b
/// 12: mov rax, [r13]        49 8b 45 00
/// 16: mov rdi, [r13+8]      49 8b 7d 08
/// 20: mov rsi, [r13+16]     49 8b 75 10
/// 24: mov rdx, [r13+24]     49 8b 55 18
/// 28: mov r10, [r13+32]     4d 8b 55 20
/// 32: mov r8, [r13+40]      4d 8b 45 28
/// 36: mov r9, [r13+48]      4d 8b 4d 30
/// 40: syscall               0f 05
/// 42: mov [r13+56], rax     49 89 45 38
/// 46: add r13, 64           49 83 c5 40
/// 50: dec r12               49 ff cc
/// 53: jmp 7                 eb d0
/// 55: int3                  cc
/// ```
pub const SYSCALL_BATCH: [u8; 56] = [
    0x49, 0x89, 0xdd, 0x4c, 0x8b, 0x63, 0xf8, 0x4d, 0x85, 0xe4, 0x74, 0x2b, 0x49, 0x8b, 0x45, 0x00,
    0x49, 0x8b, 0x7d, 0x08, 0x49, 0x8b, 0x75, 0x10, 0x49, 0x8b, 0x55, 0x18, 0x4d, 0x8b, 0x55, 0x20,
    0x4d, 0x8b, 0x45, 0x28, 0x4d, 0x8b, 0x4d, 0x30, 0x0f, 0x05, 0x49, 0x89, 0x45, 0x38, 0x49, 0x83,
    0xc5, 0x40, 0x49, 0xff, 0xcc, 0xeb, 0xd0, 0xcc,
];

/// Registers to run [`SYSCALL_BATCH`] at `code` on the table at `table`
/// (the count word; the entries follow it).
pub fn for_batch(base: &Regs, code: u64, table: u64) -> Regs {
    Regs {
        ip: code,
        bx: table + 8,
        orig_ax: u64::MAX,
        ..*base
    }
}
/// `NT_X86_XSTATE`: the ptrace regset holding the XSAVE area.
pub const NT_X86_XSTATE: u32 = 0x202;

/// Whether `mmap` takes its six arguments in memory (s390x's old mmap).
pub const MMAP_TAKES_STRUCT: bool = false;

/// Syscall numbers the engine runs inside a task.
#[allow(missing_docs)]
pub mod nr {
    pub const READ: u64 = 0;
    pub const CLOSE: u64 = 3;
    pub const BRK: u64 = 12;
    pub const LSEEK: u64 = 8;
    pub const MMAP: u64 = 9;
    pub const MPROTECT: u64 = 10;
    pub const MUNMAP: u64 = 11;
    pub const RT_SIGACTION: u64 = 13;
    pub const MREMAP: u64 = 25;
    pub const MADVISE: u64 = 28;
    pub const GETITIMER: u64 = 36;
    pub const SETITIMER: u64 = 38;
    pub const GETPID: u64 = 39;
    pub const GETTID: u64 = 186;
    pub const FCNTL: u64 = 72;
    pub const SIGALTSTACK: u64 = 131;
    pub const PERSONALITY: u64 = 135;
    pub const PRCTL: u64 = 157;
    pub const SET_TID_ADDRESS: u64 = 218;
    pub const TIMER_CREATE: u64 = 222;
    pub const TIMER_SETTIME: u64 = 223;
    pub const TIMER_GETTIME: u64 = 224;
    pub const TIMER_GETOVERRUN: u64 = 225;
    pub const TIMER_DELETE: u64 = 226;
    pub const OPENAT: u64 = 257;
    pub const SET_ROBUST_LIST: u64 = 273;
    pub const RT_TGSIGQUEUEINFO: u64 = 297;
    pub const RSEQ: u64 = 334;
    pub const CLONE3: u64 = 435;
    pub const UMASK: u64 = 95;
    pub const SETGROUPS: u64 = 116;
    pub const SETRESUID: u64 = 117;
    pub const SETRESGID: u64 = 119;
    pub const SETFSUID: u64 = 122;
    pub const SETFSGID: u64 = 123;
    pub const CAPSET: u64 = 126;
    pub const RT_SIGQUEUEINFO: u64 = 129;
    pub const SETPRIORITY: u64 = 141;
    pub const MLOCK: u64 = 149;
    pub const PRLIMIT64: u64 = 302;
    pub const CHROOT: u64 = 161;
    pub const PREAD64: u64 = 17;
    pub const SECCOMP: u64 = 317;
    pub const DUP3: u64 = 292;
    pub const EPOLL_CTL: u64 = 233;
    pub const IOCTL: u64 = 16;
    pub const SHMAT: u64 = 30;
    pub const PIDFD_OPEN: u64 = 434;
    pub const USERFAULTFD: u64 = 323;
    pub const SETSOCKOPT: u64 = 54;
    pub const SHUTDOWN: u64 = 48;
}

/// `struct user_regs_struct` in kernel order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Regs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub bp: u64,
    pub bx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub ax: u64,
    pub cx: u64,
    pub dx: u64,
    pub si: u64,
    pub di: u64,
    pub orig_ax: u64,
    pub ip: u64,
    pub cs: u64,
    pub flags: u64,
    pub sp: u64,
    pub ss: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ds: u64,
    pub es: u64,
    pub fs: u64,
    pub gs: u64,
}

/// Kernel-internal "restart the syscall" return values a task stopped
/// inside a syscall shows in `ax`.
const ERESTARTSYS: i64 = 512;
const ERESTARTNOINTR: i64 = 513;
const ERESTARTNOHAND: i64 = 514;
const ERESTART_RESTARTBLOCK: i64 = 516;
const EINTR: i64 = 4;
const WAITS: crate::WaitNrs = crate::WaitNrs {
    poll: 7,
    nanosleep: 35,
    clock_nanosleep: 230,
    futex: 202,
};

impl Regs {
    /// The registers as the image stores them.
    pub fn to_proto(&self) -> UserX86RegsEntry {
        UserX86RegsEntry {
            r15: self.r15,
            r14: self.r14,
            r13: self.r13,
            r12: self.r12,
            bp: self.bp,
            bx: self.bx,
            r11: self.r11,
            r10: self.r10,
            r9: self.r9,
            r8: self.r8,
            ax: self.ax,
            cx: self.cx,
            dx: self.dx,
            si: self.si,
            di: self.di,
            orig_ax: self.orig_ax,
            ip: self.ip,
            cs: self.cs,
            flags: self.flags,
            sp: self.sp,
            ss: self.ss,
            fs_base: self.fs_base,
            gs_base: self.gs_base,
            ds: self.ds,
            es: self.es,
            fs: self.fs,
            gs: self.gs,
            mode: Some(UserX86RegsMode::Native as i32),
        }
    }

    /// The registers an image stores.
    pub fn from_proto(e: &UserX86RegsEntry) -> Regs {
        Regs {
            r15: e.r15,
            r14: e.r14,
            r13: e.r13,
            r12: e.r12,
            bp: e.bp,
            bx: e.bx,
            r11: e.r11,
            r10: e.r10,
            r9: e.r9,
            r8: e.r8,
            ax: e.ax,
            cx: e.cx,
            dx: e.dx,
            si: e.si,
            di: e.di,
            orig_ax: e.orig_ax,
            ip: e.ip,
            cs: e.cs,
            flags: e.flags,
            sp: e.sp,
            ss: e.ss,
            fs_base: e.fs_base,
            gs_base: e.gs_base,
            ds: e.ds,
            es: e.es,
            fs: e.fs,
            gs: e.gs,
        }
    }

    /// Registers that run syscall `nr(args)` at `ip` (a trampoline), leaving
    /// everything else as in `self`. `orig_ax` is -1 so the kernel does not
    /// treat the task as interrupted inside a syscall it should restart.
    pub fn for_syscall(&self, ip: u64, nr: u64, args: [u64; 6]) -> Regs {
        Regs {
            ip,
            ax: nr,
            orig_ax: u64::MAX,
            di: args[0],
            si: args[1],
            dx: args[2],
            r10: args[3],
            r8: args[4],
            r9: args[5],
            ..*self
        }
    }

    /// The stack pointer.
    pub fn stack_pointer(&self) -> u64 {
        self.sp
    }

    /// The syscall result of a task stopped after a remote syscall.
    #[allow(clippy::cast_possible_wrap)]
    pub fn retval(&self) -> i64 {
        self.ax as i64
    }

    /// Registers for resuming a task that was stopped inside a syscall,
    /// when the kernel will not restart it on its own (the task resumes from
    /// a syscall-exit stop): restartable syscalls are re-issued, those that
    /// had a restart block too (see [`crate::reissue`]), and any other one
    /// that needed its lost restart block returns EINTR, as after a signal.
    #[allow(clippy::cast_possible_wrap, clippy::cast_sign_loss)]
    pub fn with_syscall_restarted(&self) -> Regs {
        let mut r = *self;
        if (self.orig_ax as i64) < 0 {
            return r;
        }
        match -(self.ax as i64) {
            ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => {
                r.ax = self.orig_ax;
                r.ip = self.ip.wrapping_sub(SYSCALL_INSN_LEN);
            }
            ERESTART_RESTARTBLOCK => {
                let args = [r.di, r.si, r.dx, r.r10, r.r8, r.r9];
                if let Some(a) = crate::reissue(WAITS, self.orig_ax, args) {
                    [r.di, r.si, r.dx, r.r10, r.r8, r.r9] = a;
                    r.ax = self.orig_ax;
                    r.ip = self.ip.wrapping_sub(SYSCALL_INSN_LEN);
                } else {
                    r.ax = (-EINTR) as u64;
                }
            }
            _ => {}
        }
        r.orig_ax = u64::MAX;
        r
    }
}

/// Offsets of the XSAVE components in the standard (non-compacted) format
/// ptrace uses.
mod xoff {
    pub const XSTATE_BV: usize = 512;
    pub const YMMH: usize = 576;
    pub const BNDREGS: usize = 960;
    pub const BNDCSR: usize = 1024;
    pub const OPMASK: usize = 1088;
    pub const ZMM_HI256: usize = 1152;
    pub const HI16_ZMM: usize = 1664;
    pub const PKRU: usize = 2688;
}

fn u16_at(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 2)
        .map_or(0, |s| u32::from(u16::from_le_bytes([s[0], s[1]])))
}

fn u32s(b: &[u8], off: usize, n: usize) -> Vec<u32> {
    b.get(off..off + 4 * n).map_or_else(Vec::new, |s| {
        s.chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    })
}

fn u64s(b: &[u8], off: usize, n: usize) -> Vec<u64> {
    b.get(off..off + 8 * n).map_or_else(Vec::new, |s| {
        s.chunks_exact(8)
            .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect()
    })
}

fn put_u32s(b: &mut [u8], off: usize, v: &[u32]) {
    for (i, x) in v.iter().enumerate() {
        if let Some(s) = b.get_mut(off + 4 * i..off + 4 * i + 4) {
            s.copy_from_slice(&x.to_le_bytes());
        }
    }
}

fn put_u64s(b: &mut [u8], off: usize, v: &[u64]) {
    for (i, x) in v.iter().enumerate() {
        if let Some(s) = b.get_mut(off + 8 * i..off + 8 * i + 8) {
            s.copy_from_slice(&x.to_le_bytes());
        }
    }
}

/// Bits of `xstate_bv` for the components the image keeps.
const XFEATURE_YMM: u64 = 1 << 2;
const XFEATURE_BNDREGS: u64 = 1 << 3;
const XFEATURE_BNDCSR: u64 = 1 << 4;
const XFEATURE_AVX512: u64 = 0b111 << 5;
const XFEATURE_PKRU: u64 = 1 << 9;

/// The FPU/SSE/AVX state of an XSAVE area (as `NT_X86_XSTATE` returns it).
pub fn fpregs_from_xsave(b: &[u8]) -> UserX86FpregsEntry {
    let bv = u64s(b, xoff::XSTATE_BV, 1).first().copied().unwrap_or(0);
    let has = |bit: u64, end: usize| bv & bit != 0 && b.len() >= end;
    let xsave = (b.len() > xoff::YMMH).then(|| UserX86XsaveEntry {
        xstate_bv: bv,
        ymmh_space: if has(XFEATURE_YMM, xoff::YMMH + 256) {
            u32s(b, xoff::YMMH, 64)
        } else {
            Vec::new()
        },
        bndreg_state: if has(XFEATURE_BNDREGS, xoff::BNDREGS + 64) {
            u64s(b, xoff::BNDREGS, 8)
        } else {
            Vec::new()
        },
        bndcsr_state: if has(XFEATURE_BNDCSR, xoff::BNDCSR + 16) {
            u64s(b, xoff::BNDCSR, 2)
        } else {
            Vec::new()
        },
        opmask_reg: if has(XFEATURE_AVX512, xoff::OPMASK + 64) {
            u64s(b, xoff::OPMASK, 8)
        } else {
            Vec::new()
        },
        zmm_upper: if has(XFEATURE_AVX512, xoff::ZMM_HI256 + 512) {
            u64s(b, xoff::ZMM_HI256, 64)
        } else {
            Vec::new()
        },
        hi16_zmm: if has(XFEATURE_AVX512, xoff::HI16_ZMM + 1024) {
            u64s(b, xoff::HI16_ZMM, 128)
        } else {
            Vec::new()
        },
        pkru: if has(XFEATURE_PKRU, xoff::PKRU + 8) {
            u32s(b, xoff::PKRU, 2)
        } else {
            Vec::new()
        },
        cet: None,
    });
    UserX86FpregsEntry {
        cwd: u16_at(b, 0),
        swd: u16_at(b, 2),
        twd: u16_at(b, 4),
        fop: u16_at(b, 6),
        rip: u64s(b, 8, 1).first().copied().unwrap_or(0),
        rdp: u64s(b, 16, 1).first().copied().unwrap_or(0),
        mxcsr: u32s(b, 24, 1).first().copied().unwrap_or(0),
        mxcsr_mask: u32s(b, 28, 1).first().copied().unwrap_or(0),
        st_space: u32s(b, 32, 32),
        xmm_space: u32s(b, 160, 64),
        padding: u32s(b, 416, 12),
        xsave,
    }
}

/// Write the image's FPU state into an XSAVE area of the size the kernel
/// uses (`b`, usually read from the task first so that components the image
/// does not carry keep valid init values).
pub fn fpregs_into_xsave(e: &UserX86FpregsEntry, b: &mut [u8]) {
    for (off, v) in [(0, e.cwd), (2, e.swd), (4, e.twd), (6, e.fop)] {
        if let Some(s) = b.get_mut(off..off + 2) {
            // The legacy area holds 16-bit fields; the image widens them.
            s.copy_from_slice(&(v & 0xffff).to_le_bytes()[..2]);
        }
    }
    put_u64s(b, 8, &[e.rip, e.rdp]);
    put_u32s(b, 24, &[e.mxcsr, e.mxcsr_mask]);
    put_u32s(b, 32, &e.st_space);
    put_u32s(b, 160, &e.xmm_space);
    let Some(x) = &e.xsave else { return };
    put_u64s(b, xoff::XSTATE_BV, &[x.xstate_bv]);
    put_u32s(b, xoff::YMMH, &x.ymmh_space);
    put_u64s(b, xoff::BNDREGS, &x.bndreg_state);
    put_u64s(b, xoff::BNDCSR, &x.bndcsr_state);
    put_u64s(b, xoff::OPMASK, &x.opmask_reg);
    put_u64s(b, xoff::ZMM_HI256, &x.zmm_upper);
    put_u64s(b, xoff::HI16_ZMM, &x.hi16_zmm);
    put_u32s(b, xoff::PKRU, &x.pkru);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regs_round_trip_through_proto() {
        let r = Regs {
            ip: 0x401000,
            sp: 0x7ffd_0000,
            fs_base: 0x7f00_1234,
            orig_ax: 61,
            ax: 7,
            ..Regs::default()
        };
        assert_eq!(Regs::from_proto(&r.to_proto()), r);
    }

    #[test]
    fn interrupted_syscalls_restart_or_return_eintr() {
        let base = Regs {
            ip: 0x1002,
            orig_ax: 61,
            ..Regs::default()
        };
        let r = Regs {
            ax: (-512i64).cast_unsigned(),
            ..base
        }
        .with_syscall_restarted();
        assert_eq!((r.ax, r.ip), (61, 0x1000));
        let r = Regs {
            ax: (-516i64).cast_unsigned(),
            ..base
        }
        .with_syscall_restarted();
        assert_eq!((r.retval(), r.ip), (-4, 0x1002));
        // poll and the timed waits are issued again; a nanosleep with the
        // time left the kernel wrote to `rem`.
        let poll = Regs {
            ax: (-516i64).cast_unsigned(),
            orig_ax: 7,
            di: 0x5000,
            si: 2,
            dx: u64::MAX,
            ..base
        }
        .with_syscall_restarted();
        assert_eq!(
            (poll.ax, poll.ip, poll.di, poll.si, poll.dx),
            (7, 0x1000, 0x5000, 2, u64::MAX)
        );
        let sleep = Regs {
            ax: (-516i64).cast_unsigned(),
            orig_ax: 230,
            di: 1,
            si: 0,
            dx: 0x6000,
            r10: 0x6010,
            ..base
        }
        .with_syscall_restarted();
        assert_eq!((sleep.ax, sleep.ip, sleep.dx), (230, 0x1000, 0x6010));
        let no_rem = Regs {
            ax: (-516i64).cast_unsigned(),
            orig_ax: 35,
            di: 0x6000,
            si: 0,
            ..base
        }
        .with_syscall_restarted();
        assert_eq!((no_rem.ax, no_rem.di), (35, 0x6000));
        let done = Regs { ax: 3, ..base }.with_syscall_restarted();
        assert_eq!((done.ax, done.ip), (3, 0x1002));
        let user = Regs {
            orig_ax: u64::MAX,
            ax: (-512i64).cast_unsigned(),
            ..base
        };
        assert_eq!(user.with_syscall_restarted(), user);
    }

    #[test]
    fn xsave_round_trips() {
        let mut area = vec![0u8; 2696];
        for (i, b) in area.iter_mut().enumerate() {
            *b = u8::try_from(i % 251).expect("below 251");
        }
        // Only the components the image keeps, with valid header bits.
        area[xoff::XSTATE_BV..xoff::XSTATE_BV + 8]
            .copy_from_slice(&(0b1110_0111u64 | XFEATURE_PKRU).to_le_bytes());
        let fp = fpregs_from_xsave(&area);
        assert_eq!(fp.st_space.len(), 32);
        assert_eq!(fp.xmm_space.len(), 64);
        let x = fp.xsave.as_ref().expect("xsave part");
        assert_eq!(
            (x.ymmh_space.len(), x.zmm_upper.len(), x.hi16_zmm.len()),
            (64, 64, 128)
        );
        let mut back = vec![0u8; 2696];
        fpregs_into_xsave(&fp, &mut back);
        for (name, range) in [
            ("legacy", 0..416),
            ("ymmh", xoff::YMMH..xoff::YMMH + 256),
            ("avx512", xoff::OPMASK..xoff::HI16_ZMM + 1024),
            ("pkru", xoff::PKRU..xoff::PKRU + 8),
        ] {
            assert_eq!(back[range.clone()], area[range], "{name}");
        }
    }
}
