//! aarch64: the general registers (`struct user_pt_regs`, regset
//! `NT_PRSTATUS`), the FP/SIMD registers (`struct user_fpsimd_state`,
//! `NT_PRFPREG`), the TLS register (`NT_ARM_TLS`), their conversions to and
//! from `thread_info_aarch64`, syscall numbers the engine runs remotely and
//! the remote-syscall instructions. Plain data: compiles on every host so
//! any host can read an aarch64 image. Regset buffers are in the byte order
//! of the kernel that filled them (little-endian on every aarch64 Linux).

use stasis_proto::images::{
    PacAddressKeys, PacGenericKeys, PacKeys, UserAarch64FpsimdContextEntry, UserAarch64RegsEntry,
};

/// `svc #0` followed by `brk #0`: the remote-syscall trampoline. The
/// breakpoint stops the task right after the syscall returns.
pub const SYSCALL_INSN: [u8; 8] = [0x01, 0x00, 0x00, 0xd4, 0x00, 0x00, 0x20, 0xd4];
/// Length of the `svc` instruction.
pub const SYSCALL_INSN_LEN: u64 = 4;
/// Where instructions may start: aarch64 instructions are 4-byte aligned words.
pub const INSN_ALIGN: usize = 4;

/// A batch of system calls run by the task itself, ended by `brk #0`. On
/// entry `x19` points just past a count word, at `count` entries of eight
/// words: nr, six arguments, and the result the code stores. `x20` and
/// `x21` are used; `x0`-`x5` and `x8` are clobbered.
///
/// ```text
///  0: mov  x21, x19           aa1303f5
///  4: ldur x20, [x19, #-8]    f85f8274
///  8: cbz  x20, 0x30          b4000154
///  c: ldr  x8, [x21]          f94002a8
/// 10: ldp  x0, x1, [x21, #8]  a94086a0
/// 14: ldp  x2, x3, [x21, #24] a9418ea2
/// 18: ldp  x4, x5, [x21, #40] a94296a4
/// 1c: svc  #0                 d4000001
/// 20: str  x0, [x21, #56]     f9001ea0
/// 24: add  x21, x21, #64      910102b5
/// 28: sub  x20, x20, #1       d1000694
/// 2c: b    0x8                17fffff7
/// 30: brk  #0                 d4200000
/// ```
pub const SYSCALL_BATCH: [u8; 52] = [
    0xf5, 0x03, 0x13, 0xaa, 0x74, 0x82, 0x5f, 0xf8, 0x54, 0x01, 0x00, 0xb4, 0xa8, 0x02, 0x40, 0xf9,
    0xa0, 0x86, 0x40, 0xa9, 0xa2, 0x8e, 0x41, 0xa9, 0xa4, 0x96, 0x42, 0xa9, 0x01, 0x00, 0x00, 0xd4,
    0xa0, 0x1e, 0x00, 0xf9, 0xb5, 0x02, 0x01, 0x91, 0x94, 0x06, 0x00, 0xd1, 0xf7, 0xff, 0xff, 0x17,
    0x00, 0x00, 0x20, 0xd4,
];

/// Registers to run [`SYSCALL_BATCH`] at `code` on the table at `table`
/// (the count word; the entries follow it).
pub fn for_batch(base: &Regs, code: u64, table: u64) -> Regs {
    let mut r = *base;
    r.pc = code;
    r.x[19] = table + 8;
    r
}

/// `NT_PRSTATUS`: the general registers.
pub const NT_PRSTATUS: u32 = 1;
/// `NT_PRFPREG`: the FP/SIMD registers.
pub const NT_PRFPREG: u32 = 2;
/// `NT_ARM_TLS`: `tpidr_el0` (and `tpidr2_el0` with SME).
pub const NT_ARM_TLS: u32 = 0x401;
/// `NT_ARM_SYSTEM_CALL`: the syscall number a stopped thread is in.
pub const NT_ARM_SYSTEM_CALL: u32 = 0x404;
/// `NT_ARM_PACA_KEYS`: the pointer-authentication address keys.
pub const NT_ARM_PACA_KEYS: u32 = 0x407;
/// `NT_ARM_PACG_KEYS`: the pointer-authentication generic key.
pub const NT_ARM_PACG_KEYS: u32 = 0x408;

/// Whether `mmap` takes its six arguments in memory (s390x's old mmap).
pub const MMAP_TAKES_STRUCT: bool = false;

/// Syscall numbers the engine runs inside a task (the generic table).
#[allow(missing_docs)]
pub mod nr {
    pub const READ: u64 = 63;
    pub const CLOSE: u64 = 57;
    pub const BRK: u64 = 214;
    pub const LSEEK: u64 = 62;
    pub const MMAP: u64 = 222;
    pub const MPROTECT: u64 = 226;
    pub const MUNMAP: u64 = 215;
    pub const RT_SIGACTION: u64 = 134;
    pub const MREMAP: u64 = 216;
    pub const MADVISE: u64 = 233;
    pub const GETITIMER: u64 = 102;
    pub const SETITIMER: u64 = 103;
    pub const GETPID: u64 = 172;
    pub const GETTID: u64 = 178;
    pub const FCNTL: u64 = 25;
    pub const SIGALTSTACK: u64 = 132;
    pub const PERSONALITY: u64 = 92;
    pub const PRCTL: u64 = 167;
    pub const SET_TID_ADDRESS: u64 = 96;
    pub const TIMER_CREATE: u64 = 107;
    pub const TIMER_SETTIME: u64 = 110;
    pub const TIMER_GETTIME: u64 = 108;
    pub const TIMER_GETOVERRUN: u64 = 109;
    pub const TIMER_DELETE: u64 = 111;
    pub const OPENAT: u64 = 56;
    pub const SET_ROBUST_LIST: u64 = 99;
    pub const RT_TGSIGQUEUEINFO: u64 = 240;
    pub const RSEQ: u64 = 293;
    pub const CLONE3: u64 = 435;
    pub const UMASK: u64 = 166;
    pub const SETGROUPS: u64 = 159;
    pub const SETRESUID: u64 = 147;
    pub const SETRESGID: u64 = 149;
    pub const SETFSUID: u64 = 151;
    pub const SETFSGID: u64 = 152;
    pub const CAPSET: u64 = 91;
    pub const RT_SIGQUEUEINFO: u64 = 138;
    pub const SETPRIORITY: u64 = 140;
    pub const MLOCK: u64 = 228;
    pub const PRLIMIT64: u64 = 261;
    pub const CHROOT: u64 = 51;
    pub const PREAD64: u64 = 67;
    pub const SECCOMP: u64 = 277;
    pub const DUP3: u64 = 24;
    pub const EPOLL_CTL: u64 = 21;
    pub const IOCTL: u64 = 29;
    pub const SHMAT: u64 = 196;
    pub const PIDFD_OPEN: u64 = 434;
    pub const USERFAULTFD: u64 = 282;
    pub const SETSOCKOPT: u64 = 208;
    pub const SHUTDOWN: u64 = 210;
}

/// `struct user_pt_regs`: x0-x30, sp, pc, pstate (272 bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Regs {
    /// x0 to x30 (x30 is the link register).
    pub x: [u64; 31],
    /// The stack pointer.
    pub sp: u64,
    /// The program counter.
    pub pc: u64,
    /// PSTATE (NZCV, DAIF, ...).
    pub pstate: u64,
}

/// Size of `struct user_pt_regs`.
pub const REGS_SIZE: usize = 34 * 8;
/// Size of `struct user_fpsimd_state` (32 128-bit registers, fpsr, fpcr,
/// padding).
pub const FPSIMD_SIZE: usize = 32 * 16 + 16;

fn words_le(b: &[u8]) -> impl Iterator<Item = u64> + '_ {
    b.chunks_exact(8).map(|c| {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        u64::from_le_bytes(w)
    })
}

impl Regs {
    /// The registers of an `NT_PRSTATUS` regset buffer; `None` if it is short.
    pub fn from_regset(b: &[u8]) -> Option<Regs> {
        let w: Vec<u64> = words_le(b.get(..REGS_SIZE)?).collect();
        let mut x = [0u64; 31];
        x.copy_from_slice(w.get(..31)?);
        Some(Regs {
            x,
            sp: w[31],
            pc: w[32],
            pstate: w[33],
        })
    }

    /// The `NT_PRSTATUS` regset buffer of the registers.
    pub fn to_regset(&self) -> Vec<u8> {
        self.x
            .iter()
            .chain([self.sp, self.pc, self.pstate].iter())
            .flat_map(|w| w.to_le_bytes())
            .collect()
    }

    /// The registers as the image stores them.
    pub fn to_proto(&self) -> UserAarch64RegsEntry {
        UserAarch64RegsEntry {
            regs: self.x.to_vec(),
            sp: self.sp,
            pc: self.pc,
            pstate: self.pstate,
        }
    }

    /// The registers an image stores (missing ones are zero).
    pub fn from_proto(e: &UserAarch64RegsEntry) -> Regs {
        let mut x = [0u64; 31];
        for (d, s) in x.iter_mut().zip(&e.regs) {
            *d = *s;
        }
        Regs {
            x,
            sp: e.sp,
            pc: e.pc,
            pstate: e.pstate,
        }
    }

    /// Registers to run syscall `nr` with `args` at the `svc` at `ip`.
    pub fn for_syscall(&self, ip: u64, nr: u64, args: [u64; 6]) -> Regs {
        let mut r = *self;
        r.pc = ip;
        r.x[8] = nr;
        r.x[..6].copy_from_slice(&args);
        r
    }

    /// The stack pointer.
    pub fn stack_pointer(&self) -> u64 {
        self.sp
    }

    /// A syscall's result.
    #[allow(clippy::cast_possible_wrap)]
    pub fn retval(&self) -> i64 {
        self.x[0] as i64
    }

    /// The registers to resume with. On arm64 the kernel rewinds `pc` and
    /// puts back `x0` of an interrupted syscall before the thread stops for
    /// a signal, so they resume as they are.
    pub fn with_syscall_restarted(&self) -> Regs {
        *self
    }
}

/// `struct user_fpsimd_state`: v0-v31, fpsr, fpcr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fpsimd {
    /// v0 to v31.
    pub v: [u128; 32],
    /// The FP status register.
    pub fpsr: u32,
    /// The FP control register.
    pub fpcr: u32,
}

impl Fpsimd {
    /// The registers of an `NT_PRFPREG` regset buffer; `None` if it is short.
    pub fn from_regset(b: &[u8]) -> Option<Fpsimd> {
        let b = b.get(..32 * 16 + 8)?;
        let mut v = [0u128; 32];
        for (d, c) in v.iter_mut().zip(b.chunks_exact(16)) {
            let mut w = [0u8; 16];
            w.copy_from_slice(c);
            *d = u128::from_le_bytes(w);
        }
        let word = |off: usize| {
            let mut w = [0u8; 4];
            w.copy_from_slice(&b[off..off + 4]);
            u32::from_le_bytes(w)
        };
        Some(Fpsimd {
            v,
            fpsr: word(512),
            fpcr: word(516),
        })
    }

    /// The `NT_PRFPREG` regset buffer of the registers.
    pub fn to_regset(&self) -> Vec<u8> {
        let mut b: Vec<u8> = self.v.iter().flat_map(|r| r.to_le_bytes()).collect();
        b.extend_from_slice(&self.fpsr.to_le_bytes());
        b.extend_from_slice(&self.fpcr.to_le_bytes());
        b.extend_from_slice(&[0; 8]);
        b
    }

    /// The registers as the image stores them: each vector register as two
    /// words, low half first.
    pub fn to_proto(&self) -> UserAarch64FpsimdContextEntry {
        UserAarch64FpsimdContextEntry {
            vregs: self
                .v
                .iter()
                .flat_map(|r| {
                    #[allow(clippy::cast_possible_truncation)]
                    let lo = *r as u64;
                    #[allow(clippy::cast_possible_truncation)]
                    let hi = (*r >> 64) as u64;
                    [lo, hi]
                })
                .collect(),
            fpsr: self.fpsr,
            fpcr: self.fpcr,
        }
    }

    /// The registers an image stores (missing ones are zero).
    pub fn from_proto(e: &UserAarch64FpsimdContextEntry) -> Fpsimd {
        let mut v = [0u128; 32];
        for (d, c) in v.iter_mut().zip(e.vregs.chunks_exact(2)) {
            *d = u128::from(c[0]) | (u128::from(c[1]) << 64);
        }
        Fpsimd {
            v,
            fpsr: e.fpsr,
            fpcr: e.fpcr,
        }
    }
}

/// The pointer-authentication keys of the `NT_ARM_PACA_KEYS` (apia, apib,
/// apda, apdb; 128 bits each, low half first) and `NT_ARM_PACG_KEYS` (apga)
/// regset buffers; `None` if either is short.
pub fn pac_keys_from_regsets(a: &[u8], g: &[u8]) -> Option<PacKeys> {
    let a: Vec<u64> = words_le(a.get(..64)?).collect();
    let g: Vec<u64> = words_le(g.get(..16)?).collect();
    Some(PacKeys {
        pac_address_keys: Some(PacAddressKeys {
            apiakey_lo: a[0],
            apiakey_hi: a[1],
            apibkey_lo: a[2],
            apibkey_hi: a[3],
            apdakey_lo: a[4],
            apdakey_hi: a[5],
            apdbkey_lo: a[6],
            apdbkey_hi: a[7],
            pac_enabled_key: 0,
        }),
        pac_generic_keys: Some(PacGenericKeys {
            apgakey_lo: g[0],
            apgakey_hi: g[1],
        }),
    })
}

/// The `NT_ARM_PACA_KEYS` and `NT_ARM_PACG_KEYS` buffers of the keys an
/// image holds (each `None` if the image has none).
pub fn pac_keys_to_regsets(k: &PacKeys) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    let bytes = |w: &[u64]| w.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    (
        k.pac_address_keys.as_ref().map(|a| {
            bytes(&[
                a.apiakey_lo,
                a.apiakey_hi,
                a.apibkey_lo,
                a.apibkey_hi,
                a.apdakey_lo,
                a.apdakey_hi,
                a.apdbkey_lo,
                a.apdbkey_hi,
            ])
        }),
        k.pac_generic_keys
            .as_ref()
            .map(|g| bytes(&[g.apgakey_lo, g.apgakey_hi])),
    )
}

/// The TLS register (`tpidr_el0`) of an `NT_ARM_TLS` regset buffer.
pub fn tls_from_regset(b: &[u8]) -> Option<u64> {
    words_le(b.get(..8)?).next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regs_round_trip_through_regset_and_proto() {
        let mut r = Regs::default();
        for (i, x) in r.x.iter_mut().enumerate() {
            *x = 0x1111_0000 + i as u64;
        }
        r.sp = 0x7fff_f000;
        r.pc = 0x40_1000;
        r.pstate = 0x6000_0000;
        let b = r.to_regset();
        assert_eq!(b.len(), REGS_SIZE, "sizeof(struct user_pt_regs)");
        assert_eq!(Regs::from_regset(&b), Some(r));
        assert_eq!(Regs::from_proto(&r.to_proto()), r);
        assert_eq!(Regs::from_regset(&b[..REGS_SIZE - 1]), None);
    }

    #[test]
    fn fpsimd_round_trips_through_regset_and_proto() {
        let mut f = Fpsimd {
            v: [0; 32],
            fpsr: 0x0800_0010,
            fpcr: 0x0040_0000,
        };
        for (i, v) in f.v.iter_mut().enumerate() {
            *v = (u128::from(0xdead_beef_u32) << 64) | i as u128;
        }
        let b = f.to_regset();
        assert_eq!(b.len(), FPSIMD_SIZE, "sizeof(struct user_fpsimd_state)");
        assert_eq!(Fpsimd::from_regset(&b), Some(f));
        let p = f.to_proto();
        assert_eq!(p.vregs.len(), 64);
        assert_eq!(p.vregs[2], 1, "low half first");
        assert_eq!(p.vregs[3], 0xdead_beef, "then the high half");
        assert_eq!(Fpsimd::from_proto(&p), f);
    }

    #[test]
    fn pac_keys_round_trip_through_regsets() {
        let a: Vec<u8> = (0u8..64).collect();
        let g: Vec<u8> = (100u8..116).collect();
        let k = pac_keys_from_regsets(&a, &g).expect("whole buffers");
        assert_eq!(
            k.pac_address_keys.as_ref().map(|x| x.apiakey_lo),
            Some(u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7]))
        );
        assert_eq!(pac_keys_to_regsets(&k), (Some(a.clone()), Some(g.clone())));
        assert_eq!(pac_keys_from_regsets(&a[..63], &g), None);
        assert_eq!(
            tls_from_regset(&a),
            Some(u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7]))
        );
    }

    #[test]
    fn syscall_registers() {
        let base = Regs::default();
        let r = base.for_syscall(0x1000, nr::GETPID, [1, 2, 3, 4, 5, 6]);
        assert_eq!((r.pc, r.x[8]), (0x1000, 172));
        assert_eq!(&r.x[..6], &[1, 2, 3, 4, 5, 6]);
        let b = for_batch(&base, 0x2000, 0x3000);
        assert_eq!((b.pc, b.x[19]), (0x2000, 0x3008));
    }

    #[test]
    fn batch_code_is_whole_instructions_ending_in_brk() {
        assert_eq!(SYSCALL_BATCH.len() % 4, 0);
        assert_eq!(SYSCALL_BATCH[SYSCALL_BATCH.len() - 4..], SYSCALL_INSN[4..]);
        // The one svc is at 0x1c.
        assert_eq!(SYSCALL_BATCH[0x1c..0x20], SYSCALL_INSN[..4]);
    }
}
