//! Timers: interval timers (real, virtual, prof), POSIX timers on several
//! clocks with their signal and overrun, and timerfd (remaining time,
//! interval, flags, accumulated ticks). Remaining times are checked against
//! bounds computed from the set value and the time elapsed since.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use super::util::{fdinfo, getfl, mono_ns, read_n, sigrt};
use crate::meta::{Category::Timers, Test};
use crate::testlib::{Ctx, OrFail, Res, status_field};
use crate::{ensure, ensure_eq};

pub(crate) const TESTS: &[Test] = &[
    Test::new(
        "itimer-real",
        Timers,
        "ITIMER_REAL value and interval",
        itimer_real,
    ),
    Test::new(
        "itimer-virt-prof",
        Timers,
        "ITIMER_VIRTUAL and ITIMER_PROF intervals",
        itimer_virt_prof,
    ),
    Test::new(
        "posix-timers",
        Timers,
        "POSIX timers on four clocks with signals and values",
        posix_timers,
    ),
    Test::new(
        "posix-timer-overrun",
        Timers,
        "a 1 ms POSIX timer overrunning a blocked signal",
        posix_timer_overrun,
    ),
    Test::new(
        "timerfd00",
        Timers,
        "timerfd remaining time, interval and flags",
        timerfd00,
    )
    .features(&["timerfd"]),
    Test::new(
        "timerfd-ticks",
        Timers,
        "expired timerfd ticks accumulate",
        timerfd_ticks,
    )
    .features(&["timerfd"]),
];

const NS: u64 = 1_000_000_000;

fn tv(sec: i64, usec: i64) -> libc::timeval {
    libc::timeval {
        tv_sec: sec,
        tv_usec: usec,
    }
}

fn ts(sec: i64, nsec: i64) -> libc::timespec {
    libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    }
}

fn tv_ns(t: &libc::timeval) -> u64 {
    u64::try_from(t.tv_sec).unwrap_or(0) * NS + u64::try_from(t.tv_usec).unwrap_or(0) * 1000
}

fn ts_ns(t: &libc::timespec) -> u64 {
    u64::try_from(t.tv_sec).unwrap_or(0) * NS + u64::try_from(t.tv_nsec).unwrap_or(0)
}

fn setitimer(which: libc::c_int, value: libc::timeval, interval: libc::timeval) -> Res {
    let it = libc::itimerval {
        it_interval: interval,
        it_value: value,
    };
    // SAFETY: valid pointer; the signal it raises has a harmless disposition.
    let r = unsafe { libc::setitimer(which, &raw const it, std::ptr::null_mut()) };
    nix::errno::Errno::result(r).or_fail("setitimer").map(drop)
}

fn getitimer(which: libc::c_int) -> Res<libc::itimerval> {
    // SAFETY: plain old data.
    let mut it: libc::itimerval = unsafe { std::mem::zeroed() };
    // SAFETY: valid out pointer.
    let r = unsafe { libc::getitimer(which, &raw mut it) };
    nix::errno::Errno::result(r).or_fail("getitimer")?;
    Ok(it)
}

/// `remaining` must lie in [set - elapsed - slack, set].
fn check_remaining(what: &str, remaining: u64, set: u64, since: u64) -> Res {
    let elapsed = mono_ns().saturating_sub(since);
    let low = set.saturating_sub(elapsed + NS / 10);
    ensure!(
        remaining <= set && remaining >= low,
        "{what}: {remaining} ns left, want between {low} and {set} ({elapsed} ns elapsed)"
    );
    Ok(())
}

fn itimer_real(t: &mut Ctx) -> Res {
    let since = mono_ns();
    setitimer(libc::ITIMER_REAL, tv(1000, 0), tv(50, 250_000))?;
    t.wait("re-armed the timer at 2000 s", || {
        setitimer(libc::ITIMER_REAL, tv(2000, 0), tv(50, 250_000))
    })?;
    let it = getitimer(libc::ITIMER_REAL)?;
    ensure_eq!(
        "interval (ns)",
        tv_ns(&it.it_interval),
        50 * NS + 250_000_000
    );
    check_remaining("ITIMER_REAL", tv_ns(&it.it_value), 1000 * NS, since)
}

fn itimer_virt_prof(t: &mut Ctx) -> Res {
    setitimer(libc::ITIMER_VIRTUAL, tv(500, 0), tv(7, 0))?;
    setitimer(libc::ITIMER_PROF, tv(600, 0), tv(0, 300_000))?;
    t.wait("changed the prof interval", || {
        setitimer(libc::ITIMER_PROF, tv(600, 0), tv(0, 400_000))
    })?;
    let v = getitimer(libc::ITIMER_VIRTUAL)?;
    let p = getitimer(libc::ITIMER_PROF)?;
    ensure_eq!("virtual interval", tv_ns(&v.it_interval), 7 * NS);
    ensure_eq!("prof interval", tv_ns(&p.it_interval), 300_000_000);
    // CPU-time timers only move while we run, which is very little.
    // (The kernel rounds the set value up to its clock granularity.)
    let (vv, pv) = (tv_ns(&v.it_value), tv_ns(&p.it_value));
    ensure!(
        vv > 499 * NS && vv <= 500 * NS + NS / 50,
        "virtual value {vv} ns, want about 500 s"
    );
    ensure!(
        pv > 599 * NS && pv <= 600 * NS + NS / 50,
        "prof value {pv} ns, want about 600 s"
    );
    Ok(())
}

fn timer_create(
    clock: libc::clockid_t,
    notify: libc::c_int,
    sig: i32,
    value: usize,
) -> Res<libc::timer_t> {
    // SAFETY: plain old data.
    let mut sev: libc::sigevent = unsafe { std::mem::zeroed() };
    sev.sigev_notify = notify;
    sev.sigev_signo = sig;
    sev.sigev_value = libc::sigval {
        sival_ptr: value as *mut libc::c_void,
    };
    let mut id: libc::timer_t = std::ptr::null_mut();
    // SAFETY: valid sigevent and out pointer.
    let r = unsafe { libc::timer_create(clock, &raw mut sev, &raw mut id) };
    nix::errno::Errno::result(r).or_fail("timer_create")?;
    Ok(id)
}

fn timer_set(id: libc::timer_t, value: libc::timespec, interval: libc::timespec) -> Res {
    let its = libc::itimerspec {
        it_interval: interval,
        it_value: value,
    };
    // SAFETY: id is a live timer of ours; valid pointer.
    let r = unsafe { libc::timer_settime(id, 0, &raw const its, std::ptr::null_mut()) };
    nix::errno::Errno::result(r)
        .or_fail("timer_settime")
        .map(drop)
}

fn timer_get(id: libc::timer_t) -> Res<libc::itimerspec> {
    // SAFETY: plain old data.
    let mut its: libc::itimerspec = unsafe { std::mem::zeroed() };
    // SAFETY: id is a live timer of ours; valid pointer.
    let r = unsafe { libc::timer_gettime(id, &raw mut its) };
    nix::errno::Errno::result(r).or_fail("timer_gettime")?;
    Ok(its)
}

fn block(sig: i32) {
    super::util::block_sigs(&[sig]);
}

fn posix_timers(t: &mut Ctx) -> Res {
    let since = mono_ns();
    let clocks = [
        (libc::CLOCK_REALTIME, libc::SIGEV_SIGNAL, 900),
        (libc::CLOCK_MONOTONIC, libc::SIGEV_SIGNAL, 901),
        (libc::CLOCK_BOOTTIME, libc::SIGEV_NONE, 902),
        (libc::CLOCK_PROCESS_CPUTIME_ID, libc::SIGEV_SIGNAL, 903),
    ];
    block(sigrt(3));
    let mut ids = Vec::new();
    for (i, (clock, notify, secs)) in clocks.iter().enumerate() {
        let id = timer_create(*clock, *notify, sigrt(3), 0x7000 + i)?;
        timer_set(
            id,
            ts(*secs, 0),
            ts(i64::try_from(i).unwrap_or(0) + 1, 5000),
        )?;
        ids.push(id);
    }
    let first = ids[1];
    t.wait("disarmed the monotonic timer", || {
        timer_set(first, ts(0, 0), ts(0, 0))
    })?;
    for (i, (id, (_, _, secs))) in ids.iter().zip(&clocks).enumerate() {
        let its = timer_get(*id)?;
        ensure_eq!(
            format!("interval of timer {i}"),
            ts_ns(&its.it_interval),
            (i as u64 + 1) * NS + 5000
        );
        check_remaining(
            &format!("timer {i}"),
            ts_ns(&its.it_value),
            u64::try_from(*secs).unwrap_or(0) * NS,
            since,
        )?;
    }
    let text = crate::testlib::slurp("/proc/self/timers")?;
    let n = text.lines().filter(|l| l.starts_with("ID:")).count();
    ensure_eq!("timers in /proc/self/timers", n, 4);
    Ok(())
}

fn posix_timer_overrun(t: &mut Ctx) -> Res {
    let s = sigrt(6);
    block(s);
    let id = timer_create(libc::CLOCK_MONOTONIC, libc::SIGEV_SIGNAL, s, 0xabc)?;
    let start = mono_ns();
    timer_set(id, ts(0, 1_000_000), ts(0, 1_000_000))?;
    crate::testlib::nap(100);
    t.wait("changed the period to 2 ms", || {
        timer_set(id, ts(0, 2_000_000), ts(0, 2_000_000))
    })?;
    let its = timer_get(id)?;
    ensure_eq!("period", ts_ns(&its.it_interval), 1_000_000);
    let set = super::util::sigset(&[s]);
    // SAFETY: plain old data.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let zero = ts(0, 0);
    // SAFETY: valid set, out and timeout pointers; no wait.
    let got = unsafe { libc::sigtimedwait(&raw const set, &raw mut info, &raw const zero) };
    ensure!(got == s, "the timer's signal is not pending");
    // SAFETY: the kernel filled the timer fields of a SI_TIMER siginfo.
    let value = unsafe { info.si_value() }.sival_ptr as usize;
    let code = info.si_code;
    // si_overrun sits after si_tid (an int), at offset 20.
    // SAFETY: reading an int inside the siginfo's 128 bytes.
    let overrun = unsafe {
        (&raw const info)
            .cast::<u8>()
            .wrapping_add(20)
            .cast::<i32>()
            .read_unaligned()
    };
    ensure_eq!("si_code", code, libc::SI_TIMER);
    ensure_eq!("sigev value", value, 0xabc);
    let elapsed_ms = (mono_ns() - start) / 1_000_000;
    // At least half the expirations since arming must have been counted.
    ensure!(
        u64::try_from(overrun).unwrap_or(0) + 1 >= elapsed_ms / 2,
        "overrun {overrun} after {elapsed_ms} ms of a 1 ms timer"
    );
    Ok(())
}

fn timerfd_create(flags: i32) -> Res<OwnedFd> {
    // SAFETY: timerfd_create returns a new fd or -1.
    let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, flags) };
    nix::errno::Errno::result(fd).or_fail("timerfd_create")?;
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn timerfd_set(fd: &impl AsFd, value: libc::timespec, interval: libc::timespec) -> Res {
    let its = libc::itimerspec {
        it_interval: interval,
        it_value: value,
    };
    // SAFETY: a timerfd of ours and a valid pointer.
    let r = unsafe {
        libc::timerfd_settime(
            fd.as_fd().as_raw_fd(),
            0,
            &raw const its,
            std::ptr::null_mut(),
        )
    };
    nix::errno::Errno::result(r)
        .or_fail("timerfd_settime")
        .map(drop)
}

fn timerfd_get(fd: &impl AsFd) -> Res<libc::itimerspec> {
    // SAFETY: plain old data.
    let mut its: libc::itimerspec = unsafe { std::mem::zeroed() };
    // SAFETY: a timerfd of ours and a valid pointer.
    let r = unsafe { libc::timerfd_gettime(fd.as_fd().as_raw_fd(), &raw mut its) };
    nix::errno::Errno::result(r).or_fail("timerfd_gettime")?;
    Ok(its)
}

fn timerfd00(t: &mut Ctx) -> Res {
    let since = mono_ns();
    let fd = timerfd_create(libc::TFD_NONBLOCK | libc::TFD_CLOEXEC)?;
    timerfd_set(&fd, ts(100, 0), ts(3, 500))?;
    t.wait("re-armed at 200 s", || {
        timerfd_set(&fd, ts(200, 0), ts(3, 500))
    })?;
    let its = timerfd_get(&fd)?;
    ensure_eq!("interval", ts_ns(&its.it_interval), 3 * NS + 500);
    check_remaining("timerfd", ts_ns(&its.it_value), 100 * NS, since)?;
    ensure!(getfl(&fd)? & libc::O_NONBLOCK != 0, "O_NONBLOCK lost");
    ensure_eq!(
        "clockid in fdinfo",
        status_field(&fdinfo(&fd)?, "clockid"),
        Some(libc::CLOCK_MONOTONIC.to_string())
    );
    ensure_eq!(
        "read of an unexpired timerfd",
        nix::unistd::read(&fd, &mut [0u8; 8]).err(),
        Some(nix::errno::Errno::EAGAIN)
    );
    Ok(())
}

fn timerfd_ticks(t: &mut Ctx) -> Res {
    let fd = timerfd_create(libc::TFD_NONBLOCK)?;
    let start = mono_ns();
    timerfd_set(&fd, ts(0, 1_000_000), ts(0, 1_000_000))?;
    crate::testlib::nap(100);
    t.wait("re-armed with a 1 s period", || {
        timerfd_set(&fd, ts(1, 0), ts(1, 0))
    })?;
    let b = read_n(&fd, 8)?;
    ensure_eq!("ticks read size", b.len(), 8);
    let ticks = u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    let elapsed_ms = (mono_ns() - start) / 1_000_000;
    // The 100 ms before the dump tick whatever the machine's speed; the
    // time the tree spends dumped does not (a slow machine, e.g. under
    // emulation, may spend longer there than running).
    ensure!(
        ticks >= 50 && ticks <= elapsed_ms + 1,
        "{ticks} ticks after {elapsed_ms} ms of a 1 ms timerfd (100 ms before the dump)"
    );
    Ok(())
}
