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
