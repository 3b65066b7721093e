//! Signals: handlers with flags and masks, ignored signals, the blocked
//! mask, pending signals (process-wide and per thread, standard and queued
//! real-time) with their siginfo, and the alternate signal stack.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicUsize, Ordering};

use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};

use super::util::{self_status, sigbit, sigmask_words, sigrt};
use crate::meta::{Category::Signals, Test};
use crate::testlib::sys::Map;
use crate::testlib::{Ctx, Fail, OrFail, Res};
use crate::{ensure, ensure_eq};

pub(crate) const TESTS: &[Test] = &[
    Test::new(
        "sig-handlers",
        Signals,
        "handlers with distinct flags and masks",
        sig_handlers,
    ),
    Test::new("sig-ignore", Signals, "ignored signals", sig_ignore),
    Test::new("sig-blocked", Signals, "blocked signal mask", sig_blocked),
    Test::new(
        "sig-pending",
        Signals,
        "pending SIGUSR1 with its siginfo",
        sig_pending,
    ),
    Test::new(
        "sig-pending-rt",
        Signals,
        "five queued real-time signals in order",
        sig_pending_rt,
    ),
    Test::new(
        "sig-pending-thread",
        Signals,
        "a signal pending on one thread only",
        sig_pending_thread,
    ),
    Test::new(
        "sigaltstack00",
        Signals,
        "alternate signal stack used by a handler",
        sigaltstack00,
    ),
];

extern "C" fn h_plain(_: libc::c_int) {}
extern "C" fn h_info(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn raw_set(sigs: &[i32]) -> libc::sigset_t {
    let mut s: libc::sigset_t = *SigSet::empty().as_ref();
    for sig in sigs {
        // SAFETY: valid sigset and signal number.
        unsafe { libc::sigaddset(&raw mut s, *sig) };
    }
    s
}

fn set_action(sig: i32, handler: usize, flags: i32, mask: &[i32]) -> Res {
    // SAFETY: sigaction is plain old data; all-zero is valid.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = handler;
    sa.sa_flags = flags;
    sa.sa_mask = raw_set(mask);
    // SAFETY: the handlers are valid extern "C" functions that do nothing,
    // which is async-signal-safe; the struct pointer is valid.
    let r = unsafe { libc::sigaction(sig, &raw const sa, std::ptr::null_mut()) };
    nix::errno::Errno::result(r).or_fail("sigaction").map(drop)
}

fn get_action(sig: i32) -> Res<libc::sigaction> {
    // SAFETY: plain old data.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: querying only; the out pointer is valid.
    let r = unsafe { libc::sigaction(sig, std::ptr::null(), &raw mut sa) };
    nix::errno::Errno::result(r).or_fail("sigaction query")?;
    Ok(sa)
}

fn is_member(set: &libc::sigset_t, sig: i32) -> bool {
    // SAFETY: reading a valid sigset.
    unsafe { libc::sigismember(set, sig) == 1 }
}

const SA_RESTORER: i32 = 0x0400_0000;

fn sig_handlers(t: &mut Ctx) -> Res {
    let table: [(i32, usize, i32, Vec<i32>); 4] = [
        (
            libc::SIGUSR1,
            h_plain as *const () as usize,
            libc::SA_RESTART,
            vec![libc::SIGHUP],
        ),
        (
            libc::SIGHUP,
            h_info as *const () as usize,
            libc::SA_SIGINFO | libc::SA_NODEFER,
            vec![libc::SIGUSR1, libc::SIGALRM],
        ),
        (
            sigrt(4),
            h_info as *const () as usize,
            libc::SA_SIGINFO | libc::SA_RESETHAND,
            vec![],
        ),
        (libc::SIGCHLD, libc::SIG_DFL, libc::SA_NOCLDSTOP, vec![]),
    ];
    for (sig, h, fl, mask) in &table {
        set_action(*sig, *h, *fl, mask)?;
    }
    t.wait("reset the SIGHUP handler", || {
        set_action(libc::SIGHUP, libc::SIG_DFL, 0, &[])
    })?;
    for (sig, h, fl, mask) in &table {
        let sa = get_action(*sig)?;
        ensure_eq!(format!("handler of signal {sig}"), sa.sa_sigaction, *h);
        ensure_eq!(
            format!("flags of signal {sig}"),
            format!("{:#x}", sa.sa_flags & !SA_RESTORER),
            format!("{fl:#x}")
        );
        for m in 1..65 {
            ensure_eq!(
                format!("signal {m} in the mask of {sig}"),
                is_member(&sa.sa_mask, m),
                mask.contains(&m)
            );
        }
    }
    Ok(())
}

fn sig_ignore(t: &mut Ctx) -> Res {
    let sigs = [libc::SIGHUP, libc::SIGPIPE, sigrt(7)];
    for s in sigs {
        set_action(s, libc::SIG_IGN, 0, &[])?;
    }
    t.wait("un-ignored SIGHUP", || {
        set_action(libc::SIGHUP, libc::SIG_DFL, 0, &[])
    })?;
    let ign = sigmask_words(&self_status("SigIgn")?)?;
    for s in sigs {
        ensure!(
            ign & sigbit(s) != 0,
            "signal {s} is not ignored (SigIgn {ign:x})"
        );
        ensure_eq!(
            format!("disposition of {s}"),
            get_action(s)?.sa_sigaction,
            libc::SIG_IGN
        );
    }
    Ok(())
}

fn sig_blocked(t: &mut Ctx) -> Res {
    let mut set = SigSet::empty();
    for s in [Signal::SIGUSR1, Signal::SIGHUP, Signal::SIGWINCH] {
        set.add(s);
    }
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None).or_fail("sigprocmask")?;
    let rt = raw_set(&[sigrt(5)]);
    // SAFETY: valid set pointer; changes only our mask.
    unsafe { libc::sigprocmask(libc::SIG_BLOCK, &raw const rt, std::ptr::null_mut()) };
    t.wait("unblocked SIGHUP", || {
        let mut s = SigSet::empty();
        s.add(Signal::SIGHUP);
        sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&s), None).or_fail("sigprocmask")
    })?;
    let want =
        sigbit(libc::SIGUSR1) | sigbit(libc::SIGHUP) | sigbit(libc::SIGWINCH) | sigbit(sigrt(5));
    let blk = sigmask_words(&self_status("SigBlk")?)?;
    ensure_eq!("blocked mask", format!("{blk:x}"), format!("{want:x}"));
    Ok(())
}

fn block(sigs: &[i32]) {
    let s = raw_set(sigs);
    // SAFETY: valid set pointer; changes only this thread's mask.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &raw const s, std::ptr::null_mut()) };
}

fn queue(sig: i32, value: i32) -> Res {
    let v = libc::sigval {
        sival_ptr: usize::try_from(value).unwrap_or(0) as *mut libc::c_void,
    };
    // SAFETY: sigqueue to ourselves with an integer payload.
    let r = unsafe { libc::sigqueue(nix::unistd::getpid().as_raw(), sig, v) };
    nix::errno::Errno::result(r).or_fail("sigqueue").map(drop)
}

/// Take one pending `sig` without waiting: (si_code, value, pid).
fn take(sig: i32) -> Res<Option<(i32, i32, i32)>> {
    let set = raw_set(&[sig]);
    // SAFETY: plain old data.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointers for set, info and timeout.
    let r = unsafe { libc::sigtimedwait(&raw const set, &raw mut info, &raw const ts) };
    if r == -1 {
        return match nix::errno::Errno::last() {
            nix::errno::Errno::EAGAIN => Ok(None),
            e => Err(Fail::Sys(format!("sigtimedwait: {e}"))),
        };
    }
    // SAFETY: for SI_QUEUE / SI_TKILL signals the kernel filled the rt fields.
    let value = unsafe { info.si_value() }.sival_ptr as usize;
    // SAFETY: as above.
    let pid = unsafe { info.si_pid() };
    Ok(Some((
        info.si_code,
        i32::try_from(value).unwrap_or(-1),
        pid,
    )))
}

fn sig_pending(t: &mut Ctx) -> Res {
    block(&[libc::SIGUSR1]);
    queue(libc::SIGUSR1, 4242)?;
    t.wait("consumed the pending signal", || {
        take(libc::SIGUSR1).map(drop)
    })?;
    let pnd = sigmask_words(&self_status("ShdPnd")?)?;
    ensure!(
        pnd & sigbit(libc::SIGUSR1) != 0,
        "SIGUSR1 is not pending (ShdPnd {pnd:x})"
    );
    let me = nix::unistd::getpid().as_raw();
    ensure_eq!(
        "siginfo (code, value, pid)",
        take(libc::SIGUSR1)?,
        Some((libc::SI_QUEUE, 4242, me))
    );
    Ok(())
}

fn sig_pending_rt(t: &mut Ctx) -> Res {
    let s = sigrt(2);
    block(&[s]);
    for v in 0..5 {
        queue(s, 100 + v)?;
    }
    t.wait("consumed one queued signal", || take(s).map(drop))?;
    for v in 0..5 {
        let got = take(s)?.map(|(_, val, _)| val);
        ensure_eq!(format!("queued signal #{v}"), got, Some(100 + v));
    }
    ensure_eq!("after five signals", take(s)?, None);
    Ok(())
}

fn sig_pending_thread(t: &mut Ctx) -> Res {
    use std::sync::atomic::AtomicBool;
    let tid = AtomicUsize::new(0);
    let (verify, sab) = (AtomicBool::new(false), AtomicBool::new(false));
    std::thread::scope(|sc| {
        let h = sc.spawn(|| -> Res {
            block(&[libc::SIGUSR1]);
            let me = nix::unistd::gettid();
            tid.store(usize::try_from(me.as_raw()).unwrap_or(0), Ordering::SeqCst);
            loop {
                if sab.swap(false, Ordering::SeqCst) {
                    take(libc::SIGUSR1)?;
                    tid.store(1, Ordering::SeqCst);
                }
                if verify.load(Ordering::SeqCst) {
                    let st = crate::testlib::slurp(format!("/proc/self/task/{me}/status"))?;
                    let pnd = crate::testlib::status_field(&st, "SigPnd").unwrap_or_default();
                    ensure!(
                        sigmask_words(&pnd)? & sigbit(libc::SIGUSR1) != 0,
                        "SIGUSR1 not pending on the thread ({pnd})"
                    );
                    let shd = sigmask_words(&self_status("ShdPnd")?)?;
                    ensure_eq!("process-wide pending", shd & sigbit(libc::SIGUSR1), 0);
                    let got = take(libc::SIGUSR1)?.map(|(code, v, _)| (code, v));
                    ensure_eq!(
                        "thread siginfo (code, value)",
                        got,
                        Some((libc::SI_QUEUE, 77))
                    );
                    return Ok(());
                }
                crate::testlib::nap(20);
            }
        });
        while tid.load(Ordering::SeqCst) == 0 {
            crate::testlib::nap(1);
        }
        let target = i32::try_from(tid.load(Ordering::SeqCst)).unwrap_or(0);
        // siginfo_t as bytes: signo, errno, code, then (at 16) pid, uid and
        // the value, where sigqueue puts them.
        let mut info = [0u8; 128];
        info[0..4].copy_from_slice(&libc::SIGUSR1.to_ne_bytes());
        info[8..12].copy_from_slice(&libc::SI_QUEUE.to_ne_bytes());
        info[16..20].copy_from_slice(&nix::unistd::getpid().as_raw().to_ne_bytes());
        info[20..24].copy_from_slice(&nix::unistd::getuid().as_raw().to_ne_bytes());
        info[24..32].copy_from_slice(&77u64.to_ne_bytes());
        let me = nix::unistd::getpid().as_raw();
        // SAFETY: rt_tgsigqueueinfo to a thread of our own process with a valid siginfo.
        let r = unsafe {
            crate::testlib::sys::syscall6(
                libc::SYS_rt_tgsigqueueinfo,
                [
                    u64::try_from(me).unwrap_or(0),
                    u64::try_from(target).unwrap_or(0),
                    u64::try_from(libc::SIGUSR1).unwrap_or(0),
                    info.as_ptr() as u64,
                    0,
                    0,
                ],
            )
        };
        let res = r.or_fail("rt_tgsigqueueinfo").and_then(|_| {
            t.wait("the thread consumed its pending signal", || {
                sab.store(true, Ordering::SeqCst);
                while tid.load(Ordering::SeqCst) != 1 {
                    crate::testlib::nap(1);
                }
                Ok(())
            })
        });
        verify.store(true, Ordering::SeqCst);
        let r2 = h
            .join()
            .unwrap_or_else(|_| Err(Fail::Sys("thread panicked".into())));
        res.and(r2)
    })
}

static ALT_SEEN: AtomicUsize = AtomicUsize::new(0);

extern "C" fn h_alt(_: libc::c_int) {
    let local = 0u8;
    ALT_SEEN.store(std::ptr::from_ref(&local) as usize, Ordering::SeqCst);
}

fn sigaltstack00(t: &mut Ctx) -> Res {
    const SZ: usize = 64 << 10;
    let stack =
        Map::anon(SZ, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE).or_fail("mmap")?;
    let ss = libc::stack_t {
        ss_sp: stack.addr() as *mut libc::c_void,
        ss_flags: 0,
        ss_size: SZ,
    };
    // SAFETY: the stack is a live mapping of SZ bytes owned for the test's life.
    nix::errno::Errno::result(unsafe { libc::sigaltstack(&raw const ss, std::ptr::null_mut()) })
        .or_fail("sigaltstack")?;
    set_action(
        libc::SIGUSR1,
        h_alt as *const () as usize,
        libc::SA_ONSTACK,
        &[],
    )?;
    t.wait("disabled the alternate stack", || {
        let off = libc::stack_t {
            ss_sp: std::ptr::null_mut(),
            ss_flags: libc::SS_DISABLE,
            ss_size: 0,
        };
        // SAFETY: disabling needs no memory.
        nix::errno::Errno::result(unsafe {
            libc::sigaltstack(&raw const off, std::ptr::null_mut())
        })
        .or_fail("sigaltstack")
        .map(drop)
    })?;
    // SAFETY: plain old data.
    let mut cur: libc::stack_t = unsafe { std::mem::zeroed() };
    // SAFETY: query into a valid struct.
    unsafe { libc::sigaltstack(std::ptr::null(), &raw mut cur) };
    ensure_eq!(
        "alternate stack (sp, size, flags)",
        (cur.ss_sp as usize, cur.ss_size, cur.ss_flags),
        (stack.addr(), SZ, 0)
    );
    nix::sys::signal::raise(Signal::SIGUSR1).or_fail("raise")?;
    let seen = ALT_SEEN.load(Ordering::SeqCst);
    ensure!(
        (stack.addr()..stack.addr() + SZ).contains(&seen),
        "the handler ran at {seen:#x}, outside the alternate stack"
    );
    Ok(())
}
