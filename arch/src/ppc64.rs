//! ppc64le: the general registers (`struct pt_regs`, regset `NT_PRSTATUS`),
//! the FP registers (`NT_PRFPREG`), Altivec (`NT_PPC_VMX`) and the VSX
//! halves (`NT_PPC_VSX`), their conversions to and from `thread_info_ppc64`,
//! syscall numbers the engine runs remotely and the remote-syscall
//! instructions. Plain data: compiles on every host so any host can read a
//! ppc64le image. Regset buffers are in the byte order of the kernel that
//! filled them (little-endian: only ppc64le is supported).

use stasis_proto::images::{
    UserPpc64FpstateEntry, UserPpc64RegsEntry, UserPpc64VrstateEntry, UserPpc64VsxstateEntry,
};

/// `sc` followed by `trap`: the remote-syscall trampoline. The trap stops
/// the task (SIGTRAP) right after the syscall returns.
pub const SYSCALL_INSN: [u8; 8] = [0x02, 0x00, 0x00, 0x44, 0x08, 0x00, 0xe0, 0x7f];
/// Length of the `sc` instruction.
pub const SYSCALL_INSN_LEN: u64 = 4;
/// Where instructions may start: ppc64 instructions are 4-byte aligned words.
pub const INSN_ALIGN: usize = 4;

/// A batch of system calls run by the task itself, ended by `trap`. On
/// entry `r30` points just past a count word, at `count` entries of eight
/// words: nr, six arguments, and the result the code stores (negated on
/// error, as on the other arches). `r29` and `r31` are used; `r0`, `r3`-`r8`
/// and `cr0` are clobbered.
///
/// ```text
///  0: mr    r31, r30          7fdff378
///  4: ld    r29, -8(r30)      ebbefff8
///  8: cmpdi r29, 0            2c3d0000
///  c: beq   0x48              4182003c
/// 10: ld    r0, 0(r31)        e81f0000
/// 14: ld    r3, 8(r31)        e87f0008
/// 18: ld    r4, 16(r31)       e89f0010
/// 1c: ld    r5, 24(r31)       e8bf0018
/// 20: ld    r6, 32(r31)       e8df0020
/// 24: ld    r7, 40(r31)       e8ff0028
/// 28: ld    r8, 48(r31)       e91f0030
/// 2c: sc                      44000002
/// 30: bns   0x38              40830008
/// 34: neg   r3, r3            7c6300d0
/// 38: std   r3, 56(r31)       f87f0038
/// 3c: addi  r31, r31, 64      3bff0040
/// 40: addi  r29, r29, -1      3bbdffff
/// 44: b     0x8               4bffffc4
/// 48: trap                    7fe00008
/// ```
pub const SYSCALL_BATCH: [u8; 76] = [
    0x78, 0xf3, 0xdf, 0x7f, 0xf8, 0xff, 0xbe, 0xeb, 0x00, 0x00, 0x3d, 0x2c, 0x3c, 0x00, 0x82, 0x41,
    0x00, 0x00, 0x1f, 0xe8, 0x08, 0x00, 0x7f, 0xe8, 0x10, 0x00, 0x9f, 0xe8, 0x18, 0x00, 0xbf, 0xe8,
    0x20, 0x00, 0xdf, 0xe8, 0x28, 0x00, 0xff, 0xe8, 0x30, 0x00, 0x1f, 0xe9, 0x02, 0x00, 0x00, 0x44,
    0x08, 0x00, 0x83, 0x40, 0xd0, 0x00, 0x63, 0x7c, 0x38, 0x00, 0x7f, 0xf8, 0x40, 0x00, 0xff, 0x3b,
    0xff, 0xff, 0xbd, 0x3b, 0xc4, 0xff, 0xff, 0x4b, 0x08, 0x00, 0xe0, 0x7f,
];

/// Registers to run [`SYSCALL_BATCH`] at `code` on the table at `table`
/// (the count word; the entries follow it).
pub fn for_batch(base: &Regs, code: u64, table: u64) -> Regs {
    let mut r = *base;
    r.nip = code;
    r.gpr[30] = table + 8;
    r.trap = 0;
    r
}

/// `NT_PRSTATUS`: the general registers.
pub const NT_PRSTATUS: u32 = 1;
/// `NT_PRFPREG`: f0-f31 and fpscr.
pub const NT_PRFPREG: u32 = 2;
/// `NT_PPC_VMX`: Altivec v0-v31, vscr and vrsave.
pub const NT_PPC_VMX: u32 = 0x100;
/// `NT_PPC_VSX`: the low doublewords of vs0-vs31.
pub const NT_PPC_VSX: u32 = 0x102;

/// Whether `mmap` takes its six arguments in memory (s390x's old mmap).
pub const MMAP_TAKES_STRUCT: bool = false;

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
    pub const RT_SIGACTION: u64 = 173;
    pub const MREMAP: u64 = 163;
    pub const MADVISE: u64 = 205;
    pub const GETITIMER: u64 = 105;
    pub const SETITIMER: u64 = 104;
    pub const GETPID: u64 = 20;
    pub const GETTID: u64 = 207;
    pub const FCNTL: u64 = 55;
    pub const SIGALTSTACK: u64 = 185;
    pub const PERSONALITY: u64 = 136;
    pub const PRCTL: u64 = 171;
    pub const SET_TID_ADDRESS: u64 = 232;
    pub const TIMER_CREATE: u64 = 240;
    pub const TIMER_SETTIME: u64 = 241;
    pub const TIMER_GETTIME: u64 = 242;
    pub const TIMER_GETOVERRUN: u64 = 243;
    pub const TIMER_DELETE: u64 = 244;
    pub const OPENAT: u64 = 286;
    pub const SET_ROBUST_LIST: u64 = 300;
    pub const RT_TGSIGQUEUEINFO: u64 = 322;
    pub const RSEQ: u64 = 387;
    pub const CLONE3: u64 = 435;
    pub const UMASK: u64 = 60;
    pub const SETGROUPS: u64 = 81;
    pub const SETRESUID: u64 = 164;
    pub const SETRESGID: u64 = 169;
    pub const SETFSUID: u64 = 138;
    pub const SETFSGID: u64 = 139;
    pub const CAPSET: u64 = 184;
    pub const RT_SIGQUEUEINFO: u64 = 177;
    pub const SETPRIORITY: u64 = 97;
    pub const MLOCK: u64 = 150;
    pub const PRLIMIT64: u64 = 325;
    pub const CHROOT: u64 = 61;
    pub const PREAD64: u64 = 179;
    pub const SECCOMP: u64 = 358;
    pub const DUP3: u64 = 316;
    pub const EPOLL_CTL: u64 = 237;
    pub const IOCTL: u64 = 54;
    pub const SHMAT: u64 = 397;
    pub const PIDFD_OPEN: u64 = 434;
    pub const USERFAULTFD: u64 = 364;
    pub const SETSOCKOPT: u64 = 339;
    pub const SHUTDOWN: u64 = 338;
    pub const RESTART_SYSCALL: u64 = 0;
}

/// `struct pt_regs` as `NT_PRSTATUS` gives it (48 words, 384 bytes; the
/// words after `result` are padding).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Regs {
    pub gpr: [u64; 32],
    pub nip: u64,
    pub msr: u64,
    pub orig_gpr3: u64,
    pub ctr: u64,
    pub link: u64,
    pub xer: u64,
    pub ccr: u64,
    pub softe: u64,
    pub trap: u64,
    pub dar: u64,
    pub dsisr: u64,
    pub result: u64,
}

/// Size of the `NT_PRSTATUS` regset.
pub const REGS_SIZE: usize = 48 * 8;
/// `cr0.SO`: set by the kernel when a syscall (entered with `sc`) failed.
const CR0_SO: u64 = 0x1000_0000;
/// `regs->trap` of a thread that entered the kernel with `sc` / `scv 0`.
const TRAP_SC: u64 = 0xc00;
const TRAP_SCV: u64 = 0x3000;

const ERESTARTSYS: u64 = 512;
const ERESTARTNOINTR: u64 = 513;
const ERESTARTNOHAND: u64 = 514;
const ERESTART_RESTARTBLOCK: u64 = 516;
const EINTR: u64 = 4;
const WAITS: crate::WaitNrs = crate::WaitNrs {
    poll: 167,
    nanosleep: 162,
    clock_nanosleep: 248,
    futex: 221,
};

fn words_le(b: &[u8]) -> Vec<u64> {
    b.chunks_exact(8)
        .map(|c| {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            u64::from_le_bytes(w)
        })
        .collect()
}

fn bytes_le(w: &[u64]) -> Vec<u8> {
    w.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl Regs {
    /// The registers of an `NT_PRSTATUS` regset buffer; `None` if it is short.
    pub fn from_regset(b: &[u8]) -> Option<Regs> {
        let w = words_le(b.get(..44 * 8)?);
        let mut gpr = [0u64; 32];
        gpr.copy_from_slice(&w[..32]);
        Some(Regs {
            gpr,
            nip: w[32],
            msr: w[33],
            orig_gpr3: w[34],
            ctr: w[35],
            link: w[36],
            xer: w[37],
            ccr: w[38],
            softe: w[39],
            trap: w[40],
            dar: w[41],
            dsisr: w[42],
            result: w[43],
        })
    }

    /// The `NT_PRSTATUS` regset buffer of the registers.
    pub fn to_regset(&self) -> Vec<u8> {
        let mut w = self.gpr.to_vec();
        w.extend_from_slice(&[
            self.nip,
            self.msr,
            self.orig_gpr3,
            self.ctr,
            self.link,
            self.xer,
            self.ccr,
            self.softe,
            self.trap,
            self.dar,
            self.dsisr,
            self.result,
            0,
            0,
            0,
            0,
        ]);
        bytes_le(&w)
    }

    /// The registers as the image stores them.
    pub fn to_proto(&self) -> UserPpc64RegsEntry {
        UserPpc64RegsEntry {
            gpr: self.gpr.to_vec(),
            nip: self.nip,
            msr: self.msr,
            orig_gpr3: self.orig_gpr3,
            ctr: self.ctr,
            link: self.link,
            xer: self.xer,
            ccr: self.ccr,
            trap: self.trap,
            texasr: None,
            tfhar: None,
            tfiar: None,
        }
    }

    /// The registers an image stores (missing ones are zero).
    pub fn from_proto(e: &UserPpc64RegsEntry) -> Regs {
        let mut gpr = [0u64; 32];
        for (d, s) in gpr.iter_mut().zip(&e.gpr) {
            *d = *s;
        }
        Regs {
            gpr,
            nip: e.nip,
            msr: e.msr,
            orig_gpr3: e.orig_gpr3,
            ctr: e.ctr,
            link: e.link,
            xer: e.xer,
            ccr: e.ccr,
            trap: e.trap,
            ..Regs::default()
        }
    }

    /// Registers to run syscall `nr` with `args` at the `sc` at `ip`. `trap`
    /// 0 keeps the kernel from treating the thread as inside a syscall it
    /// should restart.
    pub fn for_syscall(&self, ip: u64, nr: u64, args: [u64; 6]) -> Regs {
        let mut r = *self;
        r.nip = ip;
        r.gpr[0] = nr;
        r.gpr[3..9].copy_from_slice(&args);
        r.trap = 0;
        r
    }

    /// The stack pointer.
    pub fn stack_pointer(&self) -> u64 {
        self.gpr[1]
    }

    /// A syscall's result, negative on error as on the other arches (the
    /// kernel returns a positive errno with `cr0.SO` set after `sc`).
    #[allow(clippy::cast_possible_wrap)]
    pub fn retval(&self) -> i64 {
        if self.trap & 0xfff0 != TRAP_SCV && self.ccr & CR0_SO != 0 {
            -(self.gpr[3] as i64)
        } else {
            self.gpr[3] as i64
        }
    }

    /// The registers to resume with: a syscall interrupted by the stop is
    /// set up to run again (or to return EINTR when it cannot), as the
    /// kernel does after a signal without a handler.
    pub fn with_syscall_restarted(&self) -> Regs {
        let mut r = *self;
        let kind = self.trap & 0xfff0;
        let err = match kind {
            TRAP_SC if self.ccr & CR0_SO != 0 => Some(self.gpr[3]),
            TRAP_SCV => Some(self.gpr[3].wrapping_neg()),
            _ => None,
        };
        match err {
            Some(ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND) => {
                r.gpr[3] = self.orig_gpr3;
                r.nip = self.nip.wrapping_sub(SYSCALL_INSN_LEN);
                r.ccr &= !CR0_SO;
            }
            Some(ERESTART_RESTARTBLOCK)
                if let Some(a) = crate::reissue(
                    WAITS,
                    self.gpr[0],
                    [
                        self.orig_gpr3,
                        self.gpr[4],
                        self.gpr[5],
                        self.gpr[6],
                        self.gpr[7],
                        self.gpr[8],
                    ],
                ) =>
            {
                r.gpr[3..9].copy_from_slice(&a);
                r.nip = self.nip.wrapping_sub(SYSCALL_INSN_LEN);
                r.ccr &= !CR0_SO;
            }
            Some(ERESTART_RESTARTBLOCK) => {
                if kind == TRAP_SCV {
                    r.gpr[3] = EINTR.wrapping_neg();
                } else {
                    r.gpr[3] = EINTR;
                }
            }
            _ => {}
        }
        r.trap = 0;
        r
    }
}

/// The FP, Altivec and VSX registers of a thread.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fpu {
    /// f0-f31 and fpscr (`NT_PRFPREG`, 33 words).
    pub fp: Vec<u64>,
    /// v0-v31 and vscr, two words each, then vrsave (`NT_PPC_VMX`); empty
    /// without Altivec.
    pub vr: Vec<u64>,
    /// vrsave.
    pub vrsave: u32,
    /// The low doublewords of vs0-vs31 (`NT_PPC_VSX`); empty without VSX.
    pub vsx: Vec<u64>,
}

/// Size of the `NT_PPC_VMX` regset: 34 16-byte slots.
pub const VMX_SIZE: usize = 34 * 16;

impl Fpu {
    /// The registers of the three regset buffers (`vmx` and `vsx` empty
    /// when the CPU lacks them).
    pub fn from_regsets(fp: &[u8], vmx: &[u8], vsx: &[u8]) -> Fpu {
        let (vr, vrsave) = match vmx.get(..VMX_SIZE) {
            Some(b) => {
                let mut w = [0u8; 4];
                w.copy_from_slice(&b[33 * 16..33 * 16 + 4]);
                (words_le(&b[..33 * 16]), u32::from_le_bytes(w))
            }
            None => (Vec::new(), 0),
        };
        Fpu {
            fp: words_le(fp.get(..33 * 8).unwrap_or_default()),
            vr,
            vrsave,
            vsx: words_le(vsx.get(..32 * 8).unwrap_or_default()),
        }
    }

    /// The `NT_PRFPREG` buffer.
    pub fn fp_regset(&self) -> Vec<u8> {
        let mut w = self.fp.clone();
        w.resize(33, 0);
        bytes_le(&w)
    }

    /// The `NT_PPC_VMX` buffer, if there are Altivec registers.
    pub fn vmx_regset(&self) -> Option<Vec<u8>> {
        if self.vr.is_empty() {
            return None;
        }
        let mut w = self.vr.clone();
        w.resize(66, 0);
        let mut b = bytes_le(&w);
        b.extend_from_slice(&self.vrsave.to_le_bytes());
        b.resize(VMX_SIZE, 0);
        Some(b)
    }

    /// The `NT_PPC_VSX` buffer, if there are VSX registers.
    pub fn vsx_regset(&self) -> Option<Vec<u8>> {
        if self.vsx.is_empty() {
            return None;
        }
        let mut w = self.vsx.clone();
        w.resize(32, 0);
        Some(bytes_le(&w))
    }

    /// The registers as the image stores them.
    pub fn to_proto(
        &self,
    ) -> (
        UserPpc64FpstateEntry,
        Option<UserPpc64VrstateEntry>,
        Option<UserPpc64VsxstateEntry>,
    ) {
        (
            UserPpc64FpstateEntry {
                fpregs: self.fp.clone(),
            },
            (!self.vr.is_empty()).then(|| UserPpc64VrstateEntry {
                vrregs: self.vr.clone(),
                vrsave: self.vrsave,
            }),
            (!self.vsx.is_empty()).then(|| UserPpc64VsxstateEntry {
                vsxregs: self.vsx.clone(),
            }),
        )
    }

    /// The registers an image stores.
    pub fn from_proto(
        fp: Option<&UserPpc64FpstateEntry>,
        vr: Option<&UserPpc64VrstateEntry>,
        vsx: Option<&UserPpc64VsxstateEntry>,
    ) -> Fpu {
        Fpu {
            fp: fp.map(|f| f.fpregs.clone()).unwrap_or_default(),
            vr: vr.map(|v| v.vrregs.clone()).unwrap_or_default(),
            vrsave: vr.map_or(0, |v| v.vrsave),
            vsx: vsx.map(|v| v.vsxregs.clone()).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regs_round_trip_through_regset_and_proto() {
        let mut r = Regs::default();
        for (i, g) in r.gpr.iter_mut().enumerate() {
            *g = 0x2222_0000 + i as u64;
        }
        r.nip = 0x1000_0400;
        r.msr = 0x8000_0000_0280_f033;
        r.ccr = 0x2400_0482;
        r.link = 0x1000_0100;
        let b = r.to_regset();
        assert_eq!(b.len(), REGS_SIZE, "ELF_NGREG words");
        assert_eq!(Regs::from_regset(&b), Some(r));
        assert_eq!(Regs::from_proto(&r.to_proto()), r);
    }

    #[test]
    fn errors_come_back_negative() {
        let mut r = Regs {
            trap: TRAP_SC,
            ..Regs::default()
        };
        r.gpr[3] = 9;
        assert_eq!(r.retval(), 9);
        r.ccr |= CR0_SO;
        assert_eq!(r.retval(), -9, "cr0.SO marks an error");
    }

    #[test]
    fn interrupted_syscalls_restart() {
        let mut r = Regs {
            trap: TRAP_SC,
            ccr: CR0_SO,
            nip: 0x1004,
            orig_gpr3: 7,
            ..Regs::default()
        };
        r.gpr[3] = ERESTARTSYS;
        let s = r.with_syscall_restarted();
        assert_eq!((s.nip, s.gpr[3], s.trap, s.ccr & CR0_SO), (0x1000, 7, 0, 0));
        r.gpr[3] = ERESTART_RESTARTBLOCK;
        assert_eq!(r.with_syscall_restarted().gpr[3], EINTR);
    }

    #[test]
    fn fpu_round_trips() {
        let f = Fpu {
            fp: (0..33).collect(),
            vr: (100..166).collect(),
            vrsave: 0xffff_0000,
            vsx: (200..232).collect(),
        };
        let vmx = f.vmx_regset().unwrap_or_default();
        assert_eq!(vmx.len(), VMX_SIZE, "ELF_NVRREG slots");
        let back = Fpu::from_regsets(&f.fp_regset(), &vmx, &f.vsx_regset().unwrap_or_default());
        assert_eq!(back, f);
        let (a, b, c) = f.to_proto();
        assert_eq!(Fpu::from_proto(Some(&a), b.as_ref(), c.as_ref()), f);
    }

    #[test]
    fn batch_code_is_whole_instructions_ending_in_trap() {
        assert_eq!(SYSCALL_BATCH.len() % 4, 0);
        assert_eq!(SYSCALL_BATCH[SYSCALL_BATCH.len() - 4..], SYSCALL_INSN[4..]);
        assert_eq!(SYSCALL_BATCH[0x2c..0x30], SYSCALL_INSN[..4]);
    }
}
