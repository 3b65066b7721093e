//! Syscalls a task sleeps in when it is dumped: poll, nanosleep and a
//! timed futex wait, which the kernel resumes through the task's restart
//! block. After the restore each must still be waiting, and return as it
//! would have without the dump (not EINTR); a sleep keeps the time it had
//! left. The sabotage interrupts the call with a handled signal: it returns
//! EINTR early, as a lost restart would.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, Ordering};

use crate::meta::{Category::Signals, Test};
use crate::testlib::sys::{gettid, syscall6};
use crate::testlib::{Ctx, Fail, OrFail, Res, nap};
use crate::{ensure, ensure_eq};

pub(crate) const TESTS: &[Test] = &[
    Test::new(
        "restart-poll",
        Signals,
        "a thread asleep in poll() with no timeout wakes for its fd",
        restart_poll,
    ),
    Test::new(
        "restart-nanosleep",
        Signals,
        "a thread in a one-hour clock_nanosleep keeps the time it had left",
        restart_nanosleep,
    ),
    Test::new(
        "restart-futex-timed",
        Signals,
        "a thread in FUTEX_WAIT with a timeout wakes on FUTEX_WAKE",
        restart_futex_timed,
    ),
];

/// Not returned yet.
const WAITING: i64 = i64::MIN;
/// The signal the sabotage interrupts the call with (handled, no SA_RESTART).
const POKE: i32 = libc::SIGURG;

extern "C" fn poked(_: libc::c_int) {}

fn handle_poke() -> Res {
    // SAFETY: all-zero sigaction is valid plain old data.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = poked as *const () as usize;
    // SAFETY: the handler does nothing (async-signal-safe); valid pointer.
    let r = unsafe { libc::sigaction(POKE, &raw const sa, std::ptr::null_mut()) };
    nix::errno::Errno::result(r).or_fail("sigaction").map(drop)
}

/// Interrupt thread `tid` of this process with [`POKE`].
fn poke(tid: i32) -> Res {
    let pid = u64::from(std::process::id());
    let args = [pid, u64::try_from(tid).unwrap_or(0), POKE as u64, 0, 0, 0];
    // SAFETY: tgkill writes no memory.
    unsafe { syscall6(libc::SYS_tgkill, args) }
        .or_fail("tgkill")
        .map(drop)
}

/// The syscall thread `tid` of this process sleeps in, from /proc.
fn sleeping_in(tid: i32) -> Option<i64> {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).ok()?;
    s.split(' ').next()?.parse().ok()
}

/// Run `call` on a thread until it returns; the dump finds the thread
/// asleep in syscall `nr` for `settle` at least. After SIGTERM the call
/// must still be waiting; `wake` (given the thread's id) ends it and
/// `check` judges what it returned.
fn blocked_call(
    t: &mut Ctx,
    nr: libc::c_long,
    settle: std::time::Duration,
    call: impl FnOnce() -> i64 + Send,
    wake: impl FnOnce(i32) -> Res,
    check: impl FnOnce(i64) -> Res,
) -> Res {
    handle_poke()?;
    let got = AtomicI64::new(WAITING);
    let tid = AtomicI32::new(0);
    std::thread::scope(|s| {
        let (got, tid) = (&got, &tid);
        let h = s.spawn(move || {
            tid.store(gettid().as_raw(), Ordering::SeqCst);
            got.store(call(), Ordering::SeqCst);
        });
        let res = (|| {
            let mut id = 0;
            for _ in 0..2000 {
                id = tid.load(Ordering::SeqCst);
                if id != 0 && sleeping_in(id) == Some(nr) {
                    break;
                }
                ensure!(
                    got.load(Ordering::SeqCst) == WAITING,
                    "the call returned {} at once",
                    got.load(Ordering::SeqCst)
                );
                nap(5);
            }
            ensure_eq!("syscall the thread sleeps in", sleeping_in(id), Some(nr));
            std::thread::sleep(settle);
            t.wait(
                "interrupted the sleeping call with a handled signal",
                || poke(id),
            )?;
            // Time for a restart gone wrong to show.
            nap(100);
            let early = got.load(Ordering::SeqCst);
            ensure!(
                early == WAITING,
                "the call returned {early} ({}) before it was woken",
                nix::errno::Errno::from_raw(i32::try_from(-early).unwrap_or(0))
            );
            Ok(())
        })();
        // Whatever happened, the thread must end for the scope to.
        let woke = wake(tid.load(Ordering::SeqCst));
        let joined = h
            .join()
            .map_err(|_| Fail::Mismatch("the thread panicked".into()));
        res?;
        woke?;
        joined?;
        check(got.load(Ordering::SeqCst))
    })
}

fn raw(r: Result<i64, nix::errno::Errno>) -> i64 {
    r.unwrap_or_else(|e| -i64::from(e as i32))
}

fn restart_poll(t: &mut Ctx) -> Res {
    let (rd, wr): (OwnedFd, OwnedFd) = nix::unistd::pipe().or_fail("pipe")?;
    let mut pfd = libc::pollfd {
        fd: rd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let pfd_addr = std::ptr::from_mut(&mut pfd) as u64;
    // aarch64 has only ppoll, which needs no restart block.
    #[cfg(not(target_arch = "aarch64"))]
    let (nr, args) = (libc::SYS_poll, [pfd_addr, 1, u64::MAX, 0, 0, 0]);
    #[cfg(target_arch = "aarch64")]
    let (nr, args) = (libc::SYS_ppoll, [pfd_addr, 1, 0, 0, 8, 0]);
    blocked_call(
        t,
        nr,
        std::time::Duration::ZERO,
        // SAFETY: pfd outlives the thread (joined in the scope).
        move || raw(unsafe { syscall6(nr, args) }),
        |_| {
            nix::unistd::write(&wr, b"x")
                .or_fail("write to the pipe")
                .map(drop)
        },
        |r| {
            ensure_eq!("poll() result", r, 1);
            ensure_eq!("revents", pfd.revents, libc::POLLIN);
            Ok(())
        },
    )
}

fn now() -> Res<libc::timespec> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    nix::errno::Errno::result(r).or_fail("clock_gettime")?;
    Ok(ts)
}

const HOUR: i64 = 3600;

fn restart_nanosleep(t: &mut Ctx) -> Res {
    let req = libc::timespec {
        tv_sec: HOUR,
        tv_nsec: 0,
    };
    let mut rem = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let start = now()?;
    let (req_addr, rem_addr) = (
        std::ptr::from_ref(&req) as u64,
        std::ptr::from_mut(&mut rem) as u64,
    );
    let nr = libc::SYS_clock_nanosleep;
    if cfg!(target_arch = "aarch64") {
        // arm64 rewinds the call before the stop: the dump cannot tell it
        // was interrupted, so a restored sleep starts over (README).
        t.log("aarch64: the time left is not checked (a restored sleep starts over)");
    }
    let args = [libc::CLOCK_MONOTONIC as u64, 0, req_addr, rem_addr, 0, 0];
    // The dump comes at least a second into the sleep: a sleep that starts
    // again in full after the restore has more than HOUR - 1 s left.
    blocked_call(
        t,
        nr,
        std::time::Duration::from_secs(1),
        // SAFETY: req and rem outlive the thread (joined in the scope).
        move || raw(unsafe { syscall6(nr, args) }),
        |sleeper| {
            // Ended by a handled signal: it returns EINTR with the time left.
            poke(sleeper)
        },
        |r| {
            ensure_eq!(
                "clock_nanosleep() woken by a signal",
                r,
                -i64::from(libc::EINTR)
            );
            let slept = now()?.tv_sec - start.tv_sec;
            if cfg!(target_arch = "aarch64") {
                return Ok(());
            }
            ensure!(
                rem.tv_sec < HOUR - 1 || (rem.tv_sec == HOUR - 1 && rem.tv_nsec == 0),
                "{}.{:09} s left of {HOUR} s after {slept} s: the sleep started over",
                rem.tv_sec,
                rem.tv_nsec
            );
            Ok(())
        },
    )
}

fn restart_futex_timed(t: &mut Ctx) -> Res {
    let word = AtomicU32::new(0);
    let timeout = libc::timespec {
        tv_sec: HOUR,
        tv_nsec: 0,
    };
    let addr = std::ptr::from_ref(&word) as u64;
    let op = (libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG) as u64;
    let args = [addr, op, 0, std::ptr::from_ref(&timeout) as u64, 0, 0];
    let nr = libc::SYS_futex;
    blocked_call(
        t,
        nr,
        std::time::Duration::ZERO,
        // SAFETY: the word and the timeout outlive the thread.
        move || raw(unsafe { syscall6(nr, args) }),
        |_| {
            word.store(1, Ordering::SeqCst);
            let wake = (libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG) as u64;
            // SAFETY: FUTEX_WAKE only reads the live word.
            unsafe { syscall6(nr, [addr, wake, 1, 0, 0, 0]) }
                .or_fail("FUTEX_WAKE")
                .map(drop)
        },
        |r| {
            ensure_eq!("FUTEX_WAIT result", r, 0);
            Ok(())
        },
    )
}
