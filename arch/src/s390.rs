//! s390x: the general registers (`s390_regs`: PSW, r0-r15, access
//! registers, `orig_gpr2`; regset `NT_PRSTATUS`) with the syscall a thread
//! is in (`NT_S390_SYSTEM_CALL`), the FP registers (`NT_PRFPREG`) and the
//! vector registers (`NT_S390_VXRS_LOW`/`_HIGH`), their conversions to and
//! from `thread_info_s390`, syscall numbers the engine runs remotely and the
//! remote-syscall instructions. Plain data: compiles on every host so any
//! host can read an s390x image. s390x is big-endian: regset buffers are
//! read and written big-endian whatever the host.

use stasis_proto::images::{
    UserS390FpregsEntry, UserS390RegsEntry, UserS390VxrsHighEntry, UserS390VxrsLowEntry,
};

/// `svc 0` followed by the breakpoint opcode `0x0001` (SIGTRAP under
/// ptrace): the remote-syscall trampoline. With `svc 0` the syscall number
/// is taken from r1.
pub const SYSCALL_INSN: [u8; 8] = [0x0a, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x01];
/// Length of the `svc` instruction.
pub const SYSCALL_INSN_LEN: u64 = 2;
/// Where instructions may start: s390x instructions are halfword aligned.
pub const INSN_ALIGN: usize = 2;

/// A batch of system calls run by the task itself, ended by the breakpoint.
/// On entry `r12` points just past a count word, at `count` entries of eight
/// words: nr, six arguments, and the result the code stores. `r11` and
/// `r13` are used; `r1`-`r7` are clobbered.
///
/// ```text
///  0: lgr   %r13, %r12        b90400dc
///  4: lg    %r11, -8(%r12)    e3b0cff8ff04
///  a: ltgr  %r11, %r11        b90200bb
///  e: je    0x50              a7840021
/// 12: lg    %r1, 0(%r13)      e310d0000004
/// 18: lg    %r2, 8(%r13)      e320d0080004
/// 1e: lg    %r3, 16(%r13)     e330d0100004
/// 24: lg    %r4, 24(%r13)     e340d0180004
/// 2a: lg    %r5, 32(%r13)     e350d0200004
/// 30: lg    %r6, 40(%r13)     e360d0280004
/// 36: lg    %r7, 48(%r13)     e370d0300004
/// 3c: svc   0                 0a00
/// 3e: stg   %r2, 56(%r13)     e320d0380024
/// 44: aghi  %r13, 64          a7db0040
/// 48: aghi  %r11, -1          a7bbffff
/// 4c: j     0xa               a7f4ffdf
/// 50: .short 0x0001           0001
/// ```
pub const SYSCALL_BATCH: [u8; 82] = [
    0xb9, 0x04, 0x00, 0xdc, 0xe3, 0xb0, 0xcf, 0xf8, 0xff, 0x04, 0xb9, 0x02, 0x00, 0xbb, 0xa7, 0x84,
    0x00, 0x21, 0xe3, 0x10, 0xd0, 0x00, 0x00, 0x04, 0xe3, 0x20, 0xd0, 0x08, 0x00, 0x04, 0xe3, 0x30,
    0xd0, 0x10, 0x00, 0x04, 0xe3, 0x40, 0xd0, 0x18, 0x00, 0x04, 0xe3, 0x50, 0xd0, 0x20, 0x00, 0x04,
    0xe3, 0x60, 0xd0, 0x28, 0x00, 0x04, 0xe3, 0x70, 0xd0, 0x30, 0x00, 0x04, 0x0a, 0x00, 0xe3, 0x20,
    0xd0, 0x38, 0x00, 0x24, 0xa7, 0xdb, 0x00, 0x40, 0xa7, 0xbb, 0xff, 0xff, 0xa7, 0xf4, 0xff, 0xdf,
    0x00, 0x01,
];

/// Registers to run [`SYSCALL_BATCH`] at `code` on the table at `table`
/// (the count word; the entries follow it).
pub fn for_batch(base: &Regs, code: u64, table: u64) -> Regs {
    let mut r = *base;
    r.psw_addr = code;
    r.gprs[12] = table + 8;
    r.system_call = 0;
    r
}

/// `NT_PRSTATUS`: the general registers.
pub const NT_PRSTATUS: u32 = 1;
/// `NT_PRFPREG`: fpc and f0-f15.
pub const NT_PRFPREG: u32 = 2;
/// `NT_S390_SYSTEM_CALL`: the interruption code of the syscall a thread
/// stopped in (0 outside one); the kernel restarts by it.
pub const NT_S390_SYSTEM_CALL: u32 = 0x307;
/// `NT_S390_VXRS_LOW`: the right halves of v0-v15.
pub const NT_S390_VXRS_LOW: u32 = 0x309;
/// `NT_S390_VXRS_HIGH`: v16-v31.
pub const NT_S390_VXRS_HIGH: u32 = 0x30a;

/// s390x's `mmap` is the old one: its only argument points at the six
/// usual arguments in memory.
pub const MMAP_TAKES_STRUCT: bool = true;

/// Syscall numbers the engine runs inside a task.
#[allow(missing_docs)]
pub mod nr {
    pub const READ: u64 = 3;
    pub const CLOSE: u64 = 6;
    pub const BRK: u64 = 45;
    pub const LSEEK: u64 = 19;
    pub const MMAP: u64 = 90;
    pub const MPROTECT: u64 = 125;
    pub const MUNMAP: u64 = 91;
    pub const RT_SIGACTION: u64 = 174;
    pub const MREMAP: u64 = 163;
    pub const MADVISE: u64 = 219;
    pub const GETITIMER: u64 = 105;
    pub const SETITIMER: u64 = 104;
    pub const GETPID: u64 = 20;
    pub const GETTID: u64 = 236;
    pub const FCNTL: u64 = 55;
    pub const SIGALTSTACK: u64 = 186;
    pub const PERSONALITY: u64 = 136;
    pub const PRCTL: u64 = 172;
    pub const SET_TID_ADDRESS: u64 = 252;
    pub const TIMER_CREATE: u64 = 254;
    pub const TIMER_SETTIME: u64 = 255;
    pub const TIMER_GETTIME: u64 = 256;
    pub const TIMER_GETOVERRUN: u64 = 257;
    pub const TIMER_DELETE: u64 = 258;
    pub const OPENAT: u64 = 288;
    pub const SET_ROBUST_LIST: u64 = 304;
    pub const RT_TGSIGQUEUEINFO: u64 = 330;
    pub const RSEQ: u64 = 383;
    pub const CLONE3: u64 = 435;
    pub const UMASK: u64 = 60;
    pub const SETGROUPS: u64 = 206;
    pub const SETRESUID: u64 = 208;
    pub const SETRESGID: u64 = 210;
    pub const SETFSUID: u64 = 215;
    pub const SETFSGID: u64 = 216;
    pub const CAPSET: u64 = 185;
    pub const RT_SIGQUEUEINFO: u64 = 178;
    pub const SETPRIORITY: u64 = 97;
    pub const MLOCK: u64 = 150;
    pub const PRLIMIT64: u64 = 334;
    pub const CHROOT: u64 = 61;
    pub const PREAD64: u64 = 180;
    pub const SECCOMP: u64 = 348;
    pub const DUP3: u64 = 326;
    pub const EPOLL_CTL: u64 = 250;
    pub const IOCTL: u64 = 54;
    pub const SHMAT: u64 = 397;
    pub const PIDFD_OPEN: u64 = 434;
    pub const USERFAULTFD: u64 = 355;
    pub const SETSOCKOPT: u64 = 366;
    pub const SHUTDOWN: u64 = 373;
}

/// `s390_regs` with the syscall the thread is in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Regs {
    pub psw_mask: u64,
    pub psw_addr: u64,
    pub gprs: [u64; 16],
    pub acrs: [u32; 16],
    pub orig_gpr2: u64,
    /// `NT_S390_SYSTEM_CALL`: the interruption code of the syscall (its
    /// instruction length in bits 16 and up), 0 outside one.
    pub system_call: u32,
}

/// Size of the `NT_PRSTATUS` regset.
pub const REGS_SIZE: usize = 16 + 16 * 8 + 16 * 4 + 8;

const ERESTARTSYS: i64 = 512;
const ERESTARTNOINTR: i64 = 513;
const ERESTARTNOHAND: i64 = 514;
const ERESTART_RESTARTBLOCK: i64 = 516;
const WAITS: crate::WaitNrs = crate::WaitNrs {
    poll: 168,
    nanosleep: 162,
    clock_nanosleep: 262,
    futex: 238,
};
const EINTR: i64 = 4;

fn be64(b: &[u8], off: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[off..off + 8]);
    u64::from_be_bytes(w)
}

fn be32(b: &[u8], off: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[off..off + 4]);
    u32::from_be_bytes(w)
}

impl Regs {
    /// The registers of an `NT_PRSTATUS` regset buffer and the
    /// `NT_S390_SYSTEM_CALL` one; `None` if the first is short.
    pub fn from_regset(b: &[u8], system_call: &[u8]) -> Option<Regs> {
        let b = b.get(..REGS_SIZE)?;
        Some(Regs {
            psw_mask: be64(b, 0),
            psw_addr: be64(b, 8),
            gprs: std::array::from_fn(|i| be64(b, 16 + 8 * i)),
            acrs: std::array::from_fn(|i| be32(b, 144 + 4 * i)),
            orig_gpr2: be64(b, 208),
            system_call: if system_call.len() >= 4 {
                be32(system_call, 0)
            } else {
                0
            },
        })
    }

    /// The `NT_PRSTATUS` regset buffer of the registers.
    pub fn to_regset(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(REGS_SIZE);
        b.extend_from_slice(&self.psw_mask.to_be_bytes());
        b.extend_from_slice(&self.psw_addr.to_be_bytes());
        for g in self.gprs {
            b.extend_from_slice(&g.to_be_bytes());
        }
        for a in self.acrs {
            b.extend_from_slice(&a.to_be_bytes());
        }
        b.extend_from_slice(&self.orig_gpr2.to_be_bytes());
        b
    }

    /// The `NT_S390_SYSTEM_CALL` buffer.
    pub fn system_call_regset(&self) -> Vec<u8> {
        self.system_call.to_be_bytes().to_vec()
    }

    /// The registers as the image stores them.
    pub fn to_proto(&self) -> UserS390RegsEntry {
        UserS390RegsEntry {
            psw_mask: self.psw_mask,
            psw_addr: self.psw_addr,
            gprs: self.gprs.to_vec(),
            acrs: self.acrs.to_vec(),
            orig_gpr2: self.orig_gpr2,
            system_call: self.system_call,
        }
    }

    /// The registers an image stores (missing ones are zero).
    pub fn from_proto(e: &UserS390RegsEntry) -> Regs {
        let mut r = Regs {
            psw_mask: e.psw_mask,
            psw_addr: e.psw_addr,
            orig_gpr2: e.orig_gpr2,
            system_call: e.system_call,
            ..Regs::default()
        };
        for (d, s) in r.gprs.iter_mut().zip(&e.gprs) {
            *d = *s;
        }
        for (d, s) in r.acrs.iter_mut().zip(&e.acrs) {
            *d = *s;
        }
        r
    }

    /// Registers to run syscall `nr` with `args` at the `svc 0` at `ip`;
    /// `system_call` 0 keeps the kernel from restarting anything.
    pub fn for_syscall(&self, ip: u64, nr: u64, args: [u64; 6]) -> Regs {
        let mut r = *self;
        r.psw_addr = ip;
        r.gprs[1] = nr;
        r.gprs[2..8].copy_from_slice(&args);
        r.system_call = 0;
        r
    }

    /// The stack pointer.
    pub fn stack_pointer(&self) -> u64 {
        self.gprs[15]
    }

    /// A syscall's result.
    #[allow(clippy::cast_possible_wrap)]
    pub fn retval(&self) -> i64 {
        self.gprs[2] as i64
    }

    /// The registers to resume with: a syscall interrupted by the stop is
    /// set up to run again (or to return EINTR when it cannot), as the
    /// kernel does after a signal without a handler.
    #[allow(clippy::cast_possible_wrap, clippy::cast_sign_loss)]
    pub fn with_syscall_restarted(&self) -> Regs {
        let mut r = *self;
        if self.system_call != 0 {
            match -(self.gprs[2] as i64) {
                ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => {
                    r.gprs[2] = self.orig_gpr2;
                    r.psw_addr = self
                        .psw_addr
                        .wrapping_sub(u64::from(self.system_call >> 16));
                }
                ERESTART_RESTARTBLOCK => {
                    // `svc NR` carries the number below 256, `svc 0` in r1.
                    let nr = match u64::from(self.system_call & 0xffff) {
                        0 => self.gprs[1],
                        n => n,
                    };
                    let mut args = [0; 6];
                    args[0] = self.orig_gpr2;
                    args[1..].copy_from_slice(&self.gprs[3..8]);
                    if let Some(a) = crate::reissue(WAITS, nr, args) {
                        r.gprs[2..8].copy_from_slice(&a);
                        r.psw_addr = self
                            .psw_addr
                            .wrapping_sub(u64::from(self.system_call >> 16));
                    } else {
                        r.gprs[2] = (-EINTR) as u64;
                    }
                }
                _ => {}
            }
        }
        r.system_call = 0;
        r
    }
}

/// The FP and vector registers of a thread.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fpu {
    /// The FP control register.
    pub fpc: u32,
    /// f0-f15 (the left halves of v0-v15).
    pub fprs: Vec<u64>,
    /// The right halves of v0-v15; empty without the vector facility.
    pub vxrs_low: Vec<u64>,
    /// v16-v31, two words each; empty without the vector facility.
    pub vxrs_high: Vec<u64>,
}

fn be_words(b: &[u8]) -> Vec<u64> {
    (0..b.len() / 8).map(|i| be64(b, 8 * i)).collect()
}

fn be_bytes(w: &[u64]) -> Vec<u8> {
    w.iter().flat_map(|x| x.to_be_bytes()).collect()
}

impl Fpu {
    /// The registers of the regset buffers (`low` and `high` empty without
    /// the vector facility).
    pub fn from_regsets(fp: &[u8], low: &[u8], high: &[u8]) -> Fpu {
        Fpu {
            fpc: if fp.len() >= 4 { be32(fp, 0) } else { 0 },
            fprs: be_words(fp.get(8..8 + 16 * 8).unwrap_or_default()),
            vxrs_low: be_words(low.get(..16 * 8).unwrap_or_default()),
            vxrs_high: be_words(high.get(..32 * 8).unwrap_or_default()),
        }
    }

    /// The `NT_PRFPREG` buffer.
    pub fn fp_regset(&self) -> Vec<u8> {
        let mut w = self.fprs.clone();
        w.resize(16, 0);
        let mut b = self.fpc.to_be_bytes().to_vec();
        b.extend_from_slice(&[0; 4]);
        b.extend(be_bytes(&w));
        b
    }

    /// The `NT_S390_VXRS_LOW` and `_HIGH` buffers, if there are vector
    /// registers.
    pub fn vx_regsets(&self) -> Option<(Vec<u8>, Vec<u8>)> {
        if self.vxrs_low.is_empty() {
            return None;
        }
        let mut low = self.vxrs_low.clone();
        low.resize(16, 0);
        let mut high = self.vxrs_high.clone();
        high.resize(32, 0);
        Some((be_bytes(&low), be_bytes(&high)))
    }

    /// The registers as the image stores them.
    pub fn to_proto(
        &self,
    ) -> (
        UserS390FpregsEntry,
        Option<UserS390VxrsLowEntry>,
        Option<UserS390VxrsHighEntry>,
    ) {
        let vx = !self.vxrs_low.is_empty();
        (
            UserS390FpregsEntry {
                fpc: self.fpc,
                fprs: self.fprs.clone(),
            },
            vx.then(|| UserS390VxrsLowEntry {
                regs: self.vxrs_low.clone(),
            }),
            vx.then(|| UserS390VxrsHighEntry {
                regs: self.vxrs_high.clone(),
            }),
        )
    }

    /// The registers an image stores.
    pub fn from_proto(
        fp: &UserS390FpregsEntry,
        low: Option<&UserS390VxrsLowEntry>,
        high: Option<&UserS390VxrsHighEntry>,
    ) -> Fpu {
        Fpu {
            fpc: fp.fpc,
            fprs: fp.fprs.clone(),
            vxrs_low: low.map(|v| v.regs.clone()).unwrap_or_default(),
            vxrs_high: high.map(|v| v.regs.clone()).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regs_round_trip_big_endian() {
        let mut r = Regs {
            psw_mask: 0x0705_0001_8000_0000,
            psw_addr: 0x1000_0a32,
            orig_gpr2: 3,
            system_call: 0x2_0003,
            ..Regs::default()
        };
        for (i, g) in r.gprs.iter_mut().enumerate() {
            *g = 0x3333_0000 + i as u64;
        }
        r.acrs[0] = 0x3ff;
        let b = r.to_regset();
        assert_eq!(b.len(), REGS_SIZE, "sizeof(s390_regs)");
        assert_eq!(
            b[..8],
            [0x07, 0x05, 0x00, 0x01, 0x80, 0, 0, 0],
            "big-endian"
        );
        assert_eq!(Regs::from_regset(&b, &r.system_call_regset()), Some(r));
        assert_eq!(Regs::from_proto(&r.to_proto()), r);
    }

    #[test]
    fn interrupted_syscalls_restart() {
        let mut r = Regs {
            psw_addr: 0x1002,
            orig_gpr2: 9,
            system_call: 0x2_0003,
            ..Regs::default()
        };
        r.gprs[2] = (-ERESTARTSYS).cast_unsigned();
        let s = r.with_syscall_restarted();
        assert_eq!((s.psw_addr, s.gprs[2], s.system_call), (0x1000, 9, 0));
        r.system_call = 0;
        assert_eq!(
            r.with_syscall_restarted().psw_addr,
            0x1002,
            "not in a syscall"
        );
    }

    #[test]
    fn fpu_round_trips() {
        let f = Fpu {
            fpc: 0x0800_0000,
            fprs: (0..16).collect(),
            vxrs_low: (16..32).collect(),
            vxrs_high: (32..64).collect(),
        };
        let (low, high) = f.vx_regsets().unwrap_or_default();
        assert_eq!(f.fp_regset().len(), 136, "sizeof(s390_fp_regs)");
        assert_eq!(Fpu::from_regsets(&f.fp_regset(), &low, &high), f);
        let (a, b, c) = f.to_proto();
        assert_eq!(Fpu::from_proto(&a, b.as_ref(), c.as_ref()), f);
    }

    #[test]
    fn batch_code_ends_in_the_breakpoint() {
        assert_eq!(SYSCALL_BATCH[SYSCALL_BATCH.len() - 2..], SYSCALL_INSN[2..4]);
        assert_eq!(SYSCALL_BATCH[0x3c..0x3e], SYSCALL_INSN[..2]);
    }
}
