//! Threads: per-thread stack contents and ids, signal masks, names, TLS, and
//! threads asleep on a futex. Each thread checks its own state when asked,
//! so what is compared is what that thread sees after restore.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};

use super::util::{sigbit, sigmask_words, sigrt, task_status};
use crate::meta::{Category::Threads, Test};
use crate::testlib::sys::{gettid, prctl, syscall6};
use crate::testlib::{Ctx, Fail, OrFail, Res, nap, pattern};
use crate::{ensure, ensure_eq};

pub(crate) const TESTS: &[Test] = &[
    Test::new(
        "fpu-regs",
        Threads,
        "vector registers and the FP control register hold values across C/R",
        fpu_regs,
    ),
    Test::new(
        "threads00",
        Threads,
        "eight threads keep patterns on their stacks",
        threads00,
    ),
    Test::new(
        "threads-many",
        Threads,
        "sixty-four threads keep their thread ids",
        threads_many,
    ),
    Test::new(
        "thread-sigmask",
        Threads,
        "each thread blocks a different signal",
        thread_sigmask,
    ),
    Test::new(
        "thread-names",
        Threads,
        "each thread has its own comm",
        thread_names,
    ),
    Test::new(
        "thread-tls",
        Threads,
        "thread-local values differ per thread",
        thread_tls,
    ),
    Test::new(
        "futex00",
        Threads,
        "threads asleep in FUTEX_WAIT wake with the right value",
        futex00,
    ),
];

/// Run `n` threads: each builds its state with `setup`, then on request
/// damages it (`sabotage`, thread `sab_idx` only) or checks it (`check`).
fn run_threads<S>(
    t: &mut Ctx,
    n: usize,
    what: &str,
    sab_idx: usize,
    setup: impl Fn(usize) -> Res<S> + Sync,
    sabotage: impl Fn(usize, &mut S) -> Res + Sync,
    check: impl Fn(usize, &S) -> Res + Sync,
) -> Res {
    let ready = AtomicUsize::new(0);
    let verify = AtomicBool::new(false);
    let sab = AtomicBool::new(false);
    let sab_done = AtomicBool::new(false);
    std::thread::scope(|sc| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (ready, verify, sab, sab_done) = (&ready, &verify, &sab, &sab_done);
                let (setup, sabotage, check) = (&setup, &sabotage, &check);
                sc.spawn(move || -> Res {
                    let mut s = setup(i);
                    ready.fetch_add(1, Ordering::SeqCst);
                    loop {
                        if i == sab_idx && sab.swap(false, Ordering::SeqCst) {
                            if let Ok(s) = s.as_mut() {
                                sabotage(i, s)?;
                            }
                            sab_done.store(true, Ordering::SeqCst);
                        }
                        if verify.load(Ordering::SeqCst) {
                            return check(i, &s?)
                                .map_err(|e| Fail::Mismatch(format!("thread {i}: {e}")));
                        }
                        nap(20);
                    }
                })
            })
            .collect();
        while ready.load(Ordering::SeqCst) < n {
            nap(1);
        }
        let res = t.wait(what, || {
            sab.store(true, Ordering::SeqCst);
            while !sab_done.load(Ordering::SeqCst) {
                nap(1);
            }
            Ok(())
        });
        verify.store(true, Ordering::SeqCst);
        let mut out = res;
        for h in handles {
            let r = h
                .join()
                .unwrap_or_else(|_| Err(Fail::Sys("a thread panicked".into())));
            if out.is_ok() {
                out = r;
            }
        }
        out
    })
}

fn threads00(t: &mut Ctx) -> Res {
    run_threads(
        t,
        8,
        "flipped a stack byte of thread 3",
        3,
        |i| {
            Ok(std::hint::black_box(
                (0..512)
                    .map(|j| pattern(i as u64 + 40, j))
                    .collect::<Vec<u8>>(),
            ))
        },
        |_, s| {
            s[100] ^= 0xff;
            Ok(())
        },
        |i, s| {
            let bad = (0..512).find(|j| s[*j] != pattern(i as u64 + 40, *j));
            ensure!(bad.is_none(), "byte {bad:?} of its buffer differs");
            Ok(())
        },
    )
}

fn threads_many(t: &mut Ctx) -> Res {
    run_threads(
        t,
        64,
        "forgot thread 40's id",
        40,
        |_| Ok(gettid()),
        |_, s| {
            *s = nix::unistd::Pid::from_raw(1);
            Ok(())
        },
        |_, s| {
            ensure_eq!("gettid", gettid(), *s);
            Ok(())
        },
    )
}

fn thread_sigmask(t: &mut Ctx) -> Res {
    let sig = |i: usize| sigrt(2 + i32::try_from(i).unwrap_or(0));
    run_threads(
        t,
        6,
        "unblocked thread 2's signal",
        2,
        |i| {
            let s = sig(i);
            super::util::block_sigs(&[libc::SIGUSR1, s]);
            Ok(s)
        },
        |_, s| {
            super::util::unblock_sigs(&[*s]);
            Ok(())
        },
        |_, s| {
            let blk = sigmask_words(&task_status(gettid(), "SigBlk")?)?;
            ensure_eq!(
                "SigBlk of this thread",
                format!("{blk:x}"),
                format!("{:x}", sigbit(*s) | sigbit(libc::SIGUSR1))
            );
            let mut cur = SigSet::empty();
            pthread_sigmask(SigmaskHow::SIG_BLOCK, None, Some(&mut cur))
                .or_fail("pthread_sigmask")?;
            ensure!(
                cur.contains(nix::sys::signal::SIGUSR1),
                "SIGUSR1 not blocked"
            );
            Ok(())
        },
    )
}

fn thread_names(t: &mut Ctx) -> Res {
    let set_name = |name: &str| -> Res {
        let c = std::ffi::CString::new(name).or_fail("name")?;
        prctl(libc::PR_SET_NAME, c.as_ptr() as u64, 0, 0, 0)
            .or_fail("PR_SET_NAME")
            .map(drop)
    };
    run_threads(
        t,
        5,
        "renamed thread 1",
        1,
        |i| {
            let n = format!("zdtm-thr-{i}");
            set_name(&n)?;
            Ok(n)
        },
        |_, _| set_name("renamed"),
        |_, n| {
            let comm = crate::testlib::slurp(format!("/proc/self/task/{}/comm", gettid()))?;
            ensure_eq!("comm", comm.trim_end(), n.as_str());
            Ok(())
        },
    )
}

thread_local! {
    static TLS: Cell<u64> = const { Cell::new(0) };
}

fn thread_tls(t: &mut Ctx) -> Res {
    let want = |i: usize| 0x7150_0000 + i as u64;
    run_threads(
        t,
        4,
        "changed thread 0's TLS value",
        0,
        |i| {
            TLS.with(|c| c.set(want(i)));
            Ok(())
        },
        |_, ()| {
            TLS.with(|c| c.set(1));
            Ok(())
        },
        |i, ()| {
            ensure_eq!("thread-local value", TLS.with(Cell::get), want(i));
            Ok(())
        },
    )
}

fn futex(word: &AtomicU32, op: i32, val: u32) -> Result<i64, nix::errno::Errno> {
    let addr = std::ptr::from_ref(word) as u64;
    // SAFETY: the futex word is a live AtomicU32; FUTEX_WAIT/WAKE only read it.
    unsafe {
        syscall6(
            libc::SYS_futex,
            [
                addr,
                u64::try_from(op).unwrap_or(0),
                u64::from(val),
                0,
                0,
                0,
            ],
        )
    }
}

fn futex00(t: &mut Ctx) -> Res {
    let word = AtomicU32::new(0);
    let seen: Vec<AtomicU32> = (0..4).map(|_| AtomicU32::new(0)).collect();
    let asleep = AtomicUsize::new(0);
    let res = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4)
            .map(|i| {
                let (word, seen, asleep) = (&word, &seen, &asleep);
                sc.spawn(move || {
                    asleep.fetch_add(1, Ordering::SeqCst);
                    while word.load(Ordering::SeqCst) == 0 {
                        let _ = futex(word, libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG, 0);
                    }
                    seen[i].store(word.load(Ordering::SeqCst), Ordering::SeqCst);
                })
            })
            .collect();
        while asleep.load(Ordering::SeqCst) < 4 {
            nap(1);
        }
        nap(20);
        let wake = |v: u32| {
            word.store(v, Ordering::SeqCst);
            futex(&word, libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG, 100)
                .or_fail("FUTEX_WAKE")
                .map(drop)
        };
        let r = t.wait("woke the waiters with a wrong value", || wake(0xdead));
        let r2 = wake(0x1234);
        for h in hs {
            let _ = h.join();
        }
        r.and(r2)
    });
    res?;
    for (i, s) in seen.iter().enumerate() {
        ensure_eq!(
            format!("futex value seen by waiter {i}"),
            format!("{:#x}", s.load(Ordering::SeqCst)),
            "0x1234"
        );
    }
    Ok(())
}

/// Vector registers the test fills: xmm0-15 on x86-64, v0-31 on aarch64.
#[cfg(target_arch = "x86_64")]
const VREGS: usize = 16;
#[cfg(target_arch = "aarch64")]
const VREGS: usize = 32;
/// The caller-saved ones: vs0-vs13 (f0-f13 and their VSX halves) and
/// vs32-vs51 (Altivec v0-v19).
#[cfg(target_arch = "powerpc64")]
const VREGS: usize = 34;
/// The caller-saved ones: v0-v7 and v16-v31.
#[cfg(target_arch = "s390x")]
const VREGS: usize = 24;

/// Round toward zero, all exceptions masked (MXCSR); default 0x1f80.
#[cfg(target_arch = "x86_64")]
const FP_CONTROL: u64 = 0x7f80;
/// Round toward zero (FPCR.RMode = 0b11) and flush-to-zero; default 0.
#[cfg(target_arch = "aarch64")]
const FP_CONTROL: u64 = (0b11 << 22) | (1 << 24);
/// FPSCR[RN] = 0b01, round toward zero (the rest of the FPSCR is left out).
#[cfg(target_arch = "powerpc64")]
const FP_CONTROL: u64 = 1;
/// FPC BFP rounding mode 1, round toward zero (the rest is left out).
#[cfg(target_arch = "s390x")]
const FP_CONTROL: u64 = 1;

/// Load `regs` into the vector registers and `ctl` into the FP control
/// register, spin (touching neither, calling nothing) until SIGTERM or
/// SIGUSR2 sets its flag, then store what the registers hold and put the
/// control register back. Once the registers are loaded it writes "R" to
/// the readiness pipe `ready` and closes it (unless `ready` is -1). What is
/// stored is what the thread's registers held across the dump and restore.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn spin_in_registers(regs: &[u128; VREGS], ctl: u64, ready: i64) -> ([u128; VREGS], u64) {
    use crate::testlib::sys::{TERM, USR2};
    let mut out = [0u128; VREGS];
    let ctl_out: u64;
    let term = TERM.as_ptr().cast_const();
    let usr2 = USR2.as_ptr().cast_const();
    let byte = b"R".as_ptr();
    #[cfg(target_arch = "x86_64")]
    // SAFETY: reads `regs` (16 x 16 bytes) and the two flags, writes `out`
    // (16 x 16 bytes) and `ctl_out` (4 bytes used); the vector registers it
    // changes are declared clobbered, MXCSR is put back before it ends.
    unsafe {
        let mut ctl32 = u32::try_from(ctl).unwrap_or(0x1f80);
        let mut saved = 0u32;
        std::arch::asm!(
            "stmxcsr [{saved}]",
            "ldmxcsr [{ctl}]",
            "movdqu xmm0, [{l}]", "movdqu xmm1, [{l} + 16]", "movdqu xmm2, [{l} + 32]",
            "movdqu xmm3, [{l} + 48]", "movdqu xmm4, [{l} + 64]", "movdqu xmm5, [{l} + 80]",
            "movdqu xmm6, [{l} + 96]", "movdqu xmm7, [{l} + 112]", "movdqu xmm8, [{l} + 128]",
            "movdqu xmm9, [{l} + 144]", "movdqu xmm10, [{l} + 160]", "movdqu xmm11, [{l} + 176]",
            "movdqu xmm12, [{l} + 192]", "movdqu xmm13, [{l} + 208]", "movdqu xmm14, [{l} + 224]",
            "movdqu xmm15, [{l} + 240]",
            // Ready: write(ready, "R", 1) and close(ready), if asked.
            "cmp {ready}, 0",
            "jl 2f",
            "mov eax, 1",
            "mov rdi, {ready}",
            "mov rsi, {byte}",
            "mov edx, 1",
            "syscall",
            "mov eax, 3",
            "mov rdi, {ready}",
            "syscall",
            "2:",
            "pause",
            "cmp byte ptr [{t}], 0",
            "jne 3f",
            "cmp byte ptr [{u}], 0",
            "je 2b",
            "3:",
            "movdqu [{s}], xmm0", "movdqu [{s} + 16], xmm1", "movdqu [{s} + 32], xmm2",
            "movdqu [{s} + 48], xmm3", "movdqu [{s} + 64], xmm4", "movdqu [{s} + 80], xmm5",
            "movdqu [{s} + 96], xmm6", "movdqu [{s} + 112], xmm7", "movdqu [{s} + 128], xmm8",
            "movdqu [{s} + 144], xmm9", "movdqu [{s} + 160], xmm10", "movdqu [{s} + 176], xmm11",
            "movdqu [{s} + 192], xmm12", "movdqu [{s} + 208], xmm13", "movdqu [{s} + 224], xmm14",
            "movdqu [{s} + 240], xmm15",
            "stmxcsr [{ctl}]",
            "ldmxcsr [{saved}]",
            l = in(reg) regs.as_ptr(),
            s = in(reg) out.as_mut_ptr(),
            t = in(reg) term,
            u = in(reg) usr2,
            ctl = in(reg) &raw mut ctl32,
            saved = in(reg) &raw mut saved,
            ready = in(reg) ready,
            byte = in(reg) byte,
            out("rax") _, out("rdi") _, out("rsi") _, out("rdx") _, out("rcx") _, out("r11") _,
            out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _,
            out("xmm4") _, out("xmm5") _, out("xmm6") _, out("xmm7") _,
            out("xmm8") _, out("xmm9") _, out("xmm10") _, out("xmm11") _,
            out("xmm12") _, out("xmm13") _, out("xmm14") _, out("xmm15") _,
            options(nostack),
        );
        ctl_out = u64::from(ctl32);
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: reads `regs` (32 x 16 bytes) and the two flags, writes `out`
    // (32 x 16 bytes); the vector registers and the scratch registers it
    // changes are declared clobbered, FPCR is put back before it ends.
    unsafe {
        std::arch::asm!(
            "mrs {saved}, fpcr",
            "msr fpcr, {ctl}",
            "ldp q0, q1, [{l}]", "ldp q2, q3, [{l}, #32]", "ldp q4, q5, [{l}, #64]",
            "ldp q6, q7, [{l}, #96]", "ldp q8, q9, [{l}, #128]", "ldp q10, q11, [{l}, #160]",
            "ldp q12, q13, [{l}, #192]", "ldp q14, q15, [{l}, #224]", "ldp q16, q17, [{l}, #256]",
            "ldp q18, q19, [{l}, #288]", "ldp q20, q21, [{l}, #320]", "ldp q22, q23, [{l}, #352]",
            "ldp q24, q25, [{l}, #384]", "ldp q26, q27, [{l}, #416]", "ldp q28, q29, [{l}, #448]",
            "ldp q30, q31, [{l}, #480]",
            // Ready: write(ready, "R", 1) and close(ready), if asked.
            "cmp {ready}, #0",
            "b.lt 2f",
            "mov x8, #64",
            "mov x0, {ready}",
            "mov x1, {byte}",
            "mov x2, #1",
            "svc #0",
            "mov x8, #57",
            "mov x0, {ready}",
            "svc #0",
            "2:",
            "yield",
            "ldrb {tmp:w}, [{t}]",
            "cbnz {tmp:w}, 3f",
            "ldrb {tmp:w}, [{u}]",
            "cbz {tmp:w}, 2b",
            "3:",
            "stp q0, q1, [{s}]", "stp q2, q3, [{s}, #32]", "stp q4, q5, [{s}, #64]",
            "stp q6, q7, [{s}, #96]", "stp q8, q9, [{s}, #128]", "stp q10, q11, [{s}, #160]",
            "stp q12, q13, [{s}, #192]", "stp q14, q15, [{s}, #224]", "stp q16, q17, [{s}, #256]",
            "stp q18, q19, [{s}, #288]", "stp q20, q21, [{s}, #320]", "stp q22, q23, [{s}, #352]",
            "stp q24, q25, [{s}, #384]", "stp q26, q27, [{s}, #416]", "stp q28, q29, [{s}, #448]",
            "stp q30, q31, [{s}, #480]",
            "mrs {ctl_out}, fpcr",
            "msr fpcr, {saved}",
            l = in(reg) regs.as_ptr(),
            s = in(reg) out.as_mut_ptr(),
            t = in(reg) term,
            u = in(reg) usr2,
            ctl = in(reg) ctl,
            ctl_out = out(reg) ctl_out,
            ready = in(reg) ready,
            byte = in(reg) byte,
            out("x0") _, out("x1") _, out("x2") _, out("x8") _,
            saved = out(reg) _,
            tmp = out(reg) _,
            out("v0") _, out("v1") _, out("v2") _, out("v3") _, out("v4") _, out("v5") _,
            out("v6") _, out("v7") _, out("v8") _, out("v9") _, out("v10") _, out("v11") _,
            out("v12") _, out("v13") _, out("v14") _, out("v15") _, out("v16") _, out("v17") _,
            out("v18") _, out("v19") _, out("v20") _, out("v21") _, out("v22") _, out("v23") _,
            out("v24") _, out("v25") _, out("v26") _, out("v27") _, out("v28") _, out("v29") _,
            out("v30") _, out("v31") _,
            options(nostack),
        );
    }
    (out, ctl_out)
}

/// Where inline assembly is not stable (powerpc64, s390x) the spinning
/// code is machine code run from an executable mapping; listings below.
#[cfg(any(target_arch = "powerpc64", target_arch = "s390x"))]
fn spin_in_registers(regs: &[u128; VREGS], _ctl: u64, ready: i64) -> ([u128; VREGS], u64) {
    use crate::testlib::sys::{TERM, USR2};
    use nix::sys::mman::{MapFlags, ProtFlags, mmap_anonymous, mprotect};
    let len = std::num::NonZeroUsize::new(4096).unwrap_or(std::num::NonZeroUsize::MIN);
    let mut out = [0u8; VREGS * 16 + 8];
    let term = TERM.as_ptr().cast_const();
    let usr2 = USR2.as_ptr().cast_const();
    let byte = b"R".as_ptr();
    // SAFETY: a fresh private anonymous page; nothing else refers to it.
    let page = unsafe {
        mmap_anonymous(
            None,
            len,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_PRIVATE,
        )
    };
    let Ok(page) = page else {
        return ([0; VREGS], u64::MAX);
    };
    // SAFETY: the page is writable and larger than the code.
    unsafe {
        std::ptr::copy_nonoverlapping(
            SPIN_CODE.as_ptr(),
            page.as_ptr().cast::<u8>(),
            SPIN_CODE.len(),
        );
    }
    // SAFETY: the page is ours; it becomes read-only and executable.
    if unsafe { mprotect(page, len.get(), ProtFlags::PROT_READ | ProtFlags::PROT_EXEC) }.is_err() {
        return ([0; VREGS], u64::MAX);
    }
    // The code follows the C calling convention, saves what it must, reads
    // `regs` and the flags, writes `out` (VREGS * 16 + 8 bytes, as the
    // listing stores) and returns; the page is never unmapped (the test
    // process ends soon after).
    #[cfg(target_arch = "powerpc64")]
    {
        // SAFETY: the page holds a function of this signature (see above).
        let f: extern "C" fn(*const u128, *mut u8, *const u8, *const u8, i64, *const u8) =
            unsafe { std::mem::transmute(page.as_ptr()) };
        f(
            regs.as_ptr(),
            out.as_mut_ptr(),
            term.cast::<u8>(),
            usr2.cast::<u8>(),
            ready,
            byte,
        );
    }
    #[cfg(target_arch = "s390x")]
    {
        let args: [u64; 6] = [
            regs.as_ptr() as u64,
            out.as_mut_ptr() as u64,
            term as u64,
            usr2 as u64,
            ready.cast_unsigned(),
            byte as u64,
        ];
        // SAFETY: the page holds a function of this signature (see above).
        let f: extern "C" fn(*const [u64; 6]) = unsafe { std::mem::transmute(page.as_ptr()) };
        f(&raw const args);
    }
    let got = std::array::from_fn(|i| {
        let mut b = [0u8; 16];
        b.copy_from_slice(&out[16 * i..16 * i + 16]);
        u128::from_ne_bytes(b)
    });
    let mut c = [0u8; 8];
    c.copy_from_slice(&out[VREGS * 16..]);
    // ppc64: mffs leaves the FPSCR in the low word of f0 (stored as a
    // doubleword); s390x: stfpc stores the 4-byte FPC.
    #[cfg(target_arch = "powerpc64")]
    let ctl = u64::from_ne_bytes(c) & 0b11;
    #[cfg(target_arch = "s390x")]
    let ctl = u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]]) & 0b111);
    (got, ctl)
}

/// ppc64le (ELFv2), `f(inp r3, out r4, term r5, usr2 r6, ready r7, byte r8)`:
///
/// ```text
/// std r14..r17, -8..-32(r1)    ; nonvolatile, kept across sc
/// mr r14, r4; mr r15, r5; mr r16, r6; mr r17, r7
/// mtfsfi 7, 1                  ; FPSCR[RN] = round toward zero
/// li r11, 0
/// for N in 0..=13, 32..=51: lxvd2x vsN, r3, r11; addi r11, r11, 16
/// cmpdi r17, 0; blt 1f
/// li r0, 4; mr r3, r17; mr r4, r8; li r5, 1; sc     ; write(ready, "R", 1)
/// li r0, 6; mr r3, r17; sc                          ; close(ready)
/// 1: lbz r0, 0(r15); cmpwi r0, 0; bne 2f
///    lbz r0, 0(r16); cmpwi r0, 0; beq 1b
/// 2: li r11, 0
/// for N in 0..=13, 32..=51: stxvd2x vsN, r14, r11; addi r11, r11, 16
/// mffs f0; stfd f0, 544(r14); mtfsfi 7, 0
/// ld r14..r17, -8..-32(r1); blr
/// ```
#[cfg(target_arch = "powerpc64")]
const SPIN_CODE: [u8; 684] = [
    0xf8, 0xff, 0xc1, 0xf9, 0xf0, 0xff, 0xe1, 0xf9, 0xe8, 0xff, 0x01, 0xfa, 0xe0, 0xff, 0x21, 0xfa,
    0x78, 0x23, 0x8e, 0x7c, 0x78, 0x2b, 0xaf, 0x7c, 0x78, 0x33, 0xd0, 0x7c, 0x78, 0x3b, 0xf1, 0x7c,
    0x0c, 0x11, 0x80, 0xff, 0x00, 0x00, 0x60, 0x39, 0x98, 0x5e, 0x03, 0x7c, 0x10, 0x00, 0x6b, 0x39,
    0x98, 0x5e, 0x23, 0x7c, 0x10, 0x00, 0x6b, 0x39, 0x98, 0x5e, 0x43, 0x7c, 0x10, 0x00, 0x6b, 0x39,
    0x98, 0x5e, 0x63, 0x7c, 0x10, 0x00, 0x6b, 0x39, 0x98, 0x5e, 0x83, 0x7c, 0x10, 0x00, 0x6b, 0x39,
    0x98, 0x5e, 0xa3, 0x7c, 0x10, 0x00, 0x6b, 0x39, 0x98, 0x5e, 0xc3, 0x7c, 0x10, 0x00, 0x6b, 0x39,
    0x98, 0x5e, 0xe3, 0x7c, 0x10, 0x00, 0x6b, 0x39, 0x98, 0x5e, 0x03, 0x7d, 0x10, 0x00, 0x6b, 0x39,
    0x98, 0x5e, 0x23, 0x7d, 0x10, 0x00, 0x6b, 0x39, 0x98, 0x5e, 0x43, 0x7d, 0x10, 0x00, 0x6b, 0x39,
    0x98, 0x5e, 0x63, 0x7d, 0x10, 0x00, 0x6b, 0x39, 0x98, 0x5e, 0x83, 0x7d, 0x10, 0x00, 0x6b, 0x39,
    0x98, 0x5e, 0xa3, 0x7d, 0x10, 0x00, 0x6b, 0x39, 0x99, 0x5e, 0x03, 0x7c, 0x10, 0x00, 0x6b, 0x39,
    0x99, 0x5e, 0x23, 0x7c, 0x10, 0x00, 0x6b, 0x39, 0x99, 0x5e, 0x43, 0x7c, 0x10, 0x00, 0x6b, 0x39,
    0x99, 0x5e, 0x63, 0x7c, 0x10, 0x00, 0x6b, 0x39, 0x99, 0x5e, 0x83, 0x7c, 0x10, 0x00, 0x6b, 0x39,
    0x99, 0x5e, 0xa3, 0x7c, 0x10, 0x00, 0x6b, 0x39, 0x99, 0x5e, 0xc3, 0x7c, 0x10, 0x00, 0x6b, 0x39,
    0x99, 0x5e, 0xe3, 0x7c, 0x10, 0x00, 0x6b, 0x39, 0x99, 0x5e, 0x03, 0x7d, 0x10, 0x00, 0x6b, 0x39,
    0x99, 0x5e, 0x23, 0x7d, 0x10, 0x00, 0x6b, 0x39, 0x99, 0x5e, 0x43, 0x7d, 0x10, 0x00, 0x6b, 0x39,
    0x99, 0x5e, 0x63, 0x7d, 0x10, 0x00, 0x6b, 0x39, 0x99, 0x5e, 0x83, 0x7d, 0x10, 0x00, 0x6b, 0x39,
    0x99, 0x5e, 0xa3, 0x7d, 0x10, 0x00, 0x6b, 0x39, 0x99, 0x5e, 0xc3, 0x7d, 0x10, 0x00, 0x6b, 0x39,
    0x99, 0x5e, 0xe3, 0x7d, 0x10, 0x00, 0x6b, 0x39, 0x99, 0x5e, 0x03, 0x7e, 0x10, 0x00, 0x6b, 0x39,
    0x99, 0x5e, 0x23, 0x7e, 0x10, 0x00, 0x6b, 0x39, 0x99, 0x5e, 0x43, 0x7e, 0x10, 0x00, 0x6b, 0x39,
    0x99, 0x5e, 0x63, 0x7e, 0x10, 0x00, 0x6b, 0x39, 0x00, 0x00, 0x31, 0x2c, 0x24, 0x00, 0x80, 0x41,
    0x04, 0x00, 0x00, 0x38, 0x78, 0x8b, 0x23, 0x7e, 0x78, 0x43, 0x04, 0x7d, 0x01, 0x00, 0xa0, 0x38,
    0x02, 0x00, 0x00, 0x44, 0x06, 0x00, 0x00, 0x38, 0x78, 0x8b, 0x23, 0x7e, 0x02, 0x00, 0x00, 0x44,
    0x00, 0x00, 0x0f, 0x88, 0x00, 0x00, 0x00, 0x2c, 0x10, 0x00, 0x82, 0x40, 0x00, 0x00, 0x10, 0x88,
    0x00, 0x00, 0x00, 0x2c, 0xec, 0xff, 0x82, 0x41, 0x00, 0x00, 0x60, 0x39, 0x98, 0x5f, 0x0e, 0x7c,
    0x10, 0x00, 0x6b, 0x39, 0x98, 0x5f, 0x2e, 0x7c, 0x10, 0x00, 0x6b, 0x39, 0x98, 0x5f, 0x4e, 0x7c,
    0x10, 0x00, 0x6b, 0x39, 0x98, 0x5f, 0x6e, 0x7c, 0x10, 0x00, 0x6b, 0x39, 0x98, 0x5f, 0x8e, 0x7c,
    0x10, 0x00, 0x6b, 0x39, 0x98, 0x5f, 0xae, 0x7c, 0x10, 0x00, 0x6b, 0x39, 0x98, 0x5f, 0xce, 0x7c,
    0x10, 0x00, 0x6b, 0x39, 0x98, 0x5f, 0xee, 0x7c, 0x10, 0x00, 0x6b, 0x39, 0x98, 0x5f, 0x0e, 0x7d,
    0x10, 0x00, 0x6b, 0x39, 0x98, 0x5f, 0x2e, 0x7d, 0x10, 0x00, 0x6b, 0x39, 0x98, 0x5f, 0x4e, 0x7d,
    0x10, 0x00, 0x6b, 0x39, 0x98, 0x5f, 0x6e, 0x7d, 0x10, 0x00, 0x6b, 0x39, 0x98, 0x5f, 0x8e, 0x7d,
    0x10, 0x00, 0x6b, 0x39, 0x98, 0x5f, 0xae, 0x7d, 0x10, 0x00, 0x6b, 0x39, 0x99, 0x5f, 0x0e, 0x7c,
    0x10, 0x00, 0x6b, 0x39, 0x99, 0x5f, 0x2e, 0x7c, 0x10, 0x00, 0x6b, 0x39, 0x99, 0x5f, 0x4e, 0x7c,
    0x10, 0x00, 0x6b, 0x39, 0x99, 0x5f, 0x6e, 0x7c, 0x10, 0x00, 0x6b, 0x39, 0x99, 0x5f, 0x8e, 0x7c,
    0x10, 0x00, 0x6b, 0x39, 0x99, 0x5f, 0xae, 0x7c, 0x10, 0x00, 0x6b, 0x39, 0x99, 0x5f, 0xce, 0x7c,
    0x10, 0x00, 0x6b, 0x39, 0x99, 0x5f, 0xee, 0x7c, 0x10, 0x00, 0x6b, 0x39, 0x99, 0x5f, 0x0e, 0x7d,
    0x10, 0x00, 0x6b, 0x39, 0x99, 0x5f, 0x2e, 0x7d, 0x10, 0x00, 0x6b, 0x39, 0x99, 0x5f, 0x4e, 0x7d,
    0x10, 0x00, 0x6b, 0x39, 0x99, 0x5f, 0x6e, 0x7d, 0x10, 0x00, 0x6b, 0x39, 0x99, 0x5f, 0x8e, 0x7d,
    0x10, 0x00, 0x6b, 0x39, 0x99, 0x5f, 0xae, 0x7d, 0x10, 0x00, 0x6b, 0x39, 0x99, 0x5f, 0xce, 0x7d,
    0x10, 0x00, 0x6b, 0x39, 0x99, 0x5f, 0xee, 0x7d, 0x10, 0x00, 0x6b, 0x39, 0x99, 0x5f, 0x0e, 0x7e,
    0x10, 0x00, 0x6b, 0x39, 0x99, 0x5f, 0x2e, 0x7e, 0x10, 0x00, 0x6b, 0x39, 0x99, 0x5f, 0x4e, 0x7e,
    0x10, 0x00, 0x6b, 0x39, 0x99, 0x5f, 0x6e, 0x7e, 0x10, 0x00, 0x6b, 0x39, 0x8e, 0x04, 0x00, 0xfc,
    0x20, 0x02, 0x0e, 0xd8, 0x0c, 0x01, 0x80, 0xff, 0xf8, 0xff, 0xc1, 0xe9, 0xf0, 0xff, 0xe1, 0xe9,
    0xe8, 0xff, 0x01, 0xea, 0xe0, 0xff, 0x21, 0xea, 0x20, 0x00, 0x80, 0x4e,
];

/// s390x, `f(args r2)` with args = [inp, out, term, usr2, ready, byte]:
///
/// ```text
/// stmg %r6,%r15,48(%r15)
/// lg %r6..%r11, 0..40(%r2)
/// srnm 1                          ; BFP rounding toward zero
/// vlm %v0,%v7,0(%r6); vlm %v16,%v31,128(%r6)
/// ltgr %r10,%r10; jl 1f
/// lghi %r1,4; lgr %r2,%r10; lgr %r3,%r11; lghi %r4,1; svc 0   ; write
/// lghi %r1,6; lgr %r2,%r10; svc 0                             ; close
/// 1: cli 0(%r8),0; jne 2f; cli 0(%r9),0; je 1b
/// 2: vstm %v0,%v7,0(%r7); vstm %v16,%v31,128(%r7)
/// stfpc 384(%r7); srnm 0
/// lmg %r6,%r15,48(%r15); br %r14
/// ```
#[cfg(target_arch = "s390x")]
const SPIN_CODE: [u8; 138] = [
    0xeb, 0x6f, 0xf0, 0x30, 0x00, 0x24, 0xe3, 0x60, 0x20, 0x00, 0x00, 0x04, 0xe3, 0x70, 0x20, 0x08,
    0x00, 0x04, 0xe3, 0x80, 0x20, 0x10, 0x00, 0x04, 0xe3, 0x90, 0x20, 0x18, 0x00, 0x04, 0xe3, 0xa0,
    0x20, 0x20, 0x00, 0x04, 0xe3, 0xb0, 0x20, 0x28, 0x00, 0x04, 0xb2, 0x99, 0x00, 0x01, 0xe7, 0x07,
    0x60, 0x00, 0x00, 0x36, 0xe7, 0x0f, 0x60, 0x80, 0x0c, 0x36, 0xb9, 0x02, 0x00, 0xaa, 0xa7, 0x44,
    0x00, 0x10, 0xa7, 0x19, 0x00, 0x04, 0xb9, 0x04, 0x00, 0x2a, 0xb9, 0x04, 0x00, 0x3b, 0xa7, 0x49,
    0x00, 0x01, 0x0a, 0x00, 0xa7, 0x19, 0x00, 0x06, 0xb9, 0x04, 0x00, 0x2a, 0x0a, 0x00, 0x95, 0x00,
    0x80, 0x00, 0xa7, 0x74, 0x00, 0x06, 0x95, 0x00, 0x90, 0x00, 0xa7, 0x84, 0xff, 0xfa, 0xe7, 0x07,
    0x70, 0x00, 0x00, 0x3e, 0xe7, 0x0f, 0x70, 0x80, 0x0c, 0x3e, 0xb2, 0x9c, 0x71, 0x80, 0xb2, 0x99,
    0x00, 0x00, 0xeb, 0x6f, 0xf0, 0x30, 0x00, 0x04, 0x07, 0xfe,
];

fn fpu_regs(t: &mut Ctx) -> Res {
    use crate::testlib::sys::{TERM, USR2};
    let want: [u128; VREGS] = std::array::from_fn(|i| {
        let lo = u64::from_ne_bytes(std::array::from_fn(|j| pattern(7, i * 16 + j)));
        let hi = u64::from_ne_bytes(std::array::from_fn(|j| pattern(7, i * 16 + 8 + j)));
        u128::from(lo) | (u128::from(hi) << 64)
    });
    // Ready only once the registers hold the values: the spinning code
    // writes and closes the readiness pipe itself once it has loaded them.
    let ready = t
        .take_ready()
        .map_or(-1, |fd| i64::from(std::os::fd::IntoRawFd::into_raw_fd(fd)));
    let (mut got, mut ctl) = spin_in_registers(&want, FP_CONTROL, ready);
    if !TERM.load(Ordering::SeqCst) && USR2.swap(false, Ordering::SeqCst) {
        // Sabotage: the registers lose one bit, as a bad restore would.
        t.log("sabotage: flipped a bit of the last vector register");
        let mut hurt = want;
        hurt[VREGS - 1] ^= 1 << 100;
        (got, ctl) = spin_in_registers(&hurt, FP_CONTROL, -1);
    }
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        ensure!(g == w, "vector register {i}: got {g:#034x}, want {w:#034x}");
    }
    ensure_eq!("FP control register", ctl, FP_CONTROL);
    Ok(())
}
