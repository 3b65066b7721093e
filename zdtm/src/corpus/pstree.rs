//! Process tree: fork trees deep and wide, sessions and process groups
//! (including ones whose leader is gone), zombies with their exit status,
//! stopped tasks, orphans reparented to a subreaper, pidfds, a traced child
//! (C/R must refuse) and a tree that keeps forking.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::Ordering;

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, getpgid, getpid, getppid, getsid, setpgid, setsid};

use super::util::{dup_over, fdinfo, proc_state};
use crate::meta::{Category::Pstree, Test};
use crate::testlib::sys::{self, TERM, USR2, exit_now, prctl, prctl_get_int};
use crate::testlib::{Ctx, Fail, OrFail, Res, Tick, forward, nap, slurp, status_field};
use crate::{ensure, ensure_eq};

pub(crate) const TESTS: &[Test] = &[
    Test::new(
        "fork-tree",
        Pstree,
        "three children with two grandchildren each",
        fork_tree,
    ),
    Test::new(
        "deep-tree",
        Pstree,
        "a chain of eight nested processes",
        deep_tree,
    ),
    Test::new(
        "wide-tree",
        Pstree,
        "forty children holding distinct values",
        wide_tree,
    ),
    Test::new(
        "session00",
        Pstree,
        "a child session with a member",
        session00,
    ),
    Test::new(
        "pgid00",
        Pstree,
        "a process group led by a child with another member",
        pgid00,
    ),
    Test::new(
        "pgid-dead-leader",
        Pstree,
        "a process group whose leader exited",
        pgid_dead_leader,
    ),
    Test::new(
        "sid-dead-leader",
        Pstree,
        "a session whose leader exited",
        sid_dead_leader,
    ),
    Test::new("zombie00", Pstree, "a zombie keeps its exit code", zombie00),
    Test::new(
        "zombie-signal",
        Pstree,
        "a zombie killed by a signal",
        zombie_signal,
    ),
    Test::new(
        "zombie-blocked",
        Pstree,
        "a zombie keeps the signal mask it died with",
        zombie_blocked,
    ),
    Test::new("stopped00", Pstree, "a child stopped by SIGSTOP", stopped00),
    Test::new(
        "orphan00",
        Pstree,
        "an orphan reparented to the subreaper test",
        orphan00,
    ),
    Test::new(
        "pdeathsig",
        Pstree,
        "a child's parent-death signal",
        pdeathsig,
    ),
    Test::new("pidfd00", Pstree, "a pidfd of a child", pidfd00),
    Test::new(
        "ptraced-child",
        Pstree,
        "a child traced by the test: C/R must refuse",
        ptraced_child,
    )
    .crfail(),
    Test::new(
        "fork-loop",
        Pstree,
        "children forked and reaped continuously",
        fork_loop,
    )
    .transition(),
];

/// Fork a bare child running `body` (its exit code); no readiness protocol.
/// It may be sent SIGTERM or SIGUSR2 before it first runs: [`sys::fork`]
/// keeps those for it.
fn raw_child(body: impl FnOnce() -> i32) -> Res<Pid> {
    match sys::fork().or_fail("fork")? {
        ForkResult::Child => exit_now(body()),
        ForkResult::Parent { child } => Ok(child),
    }
}

/// Sleep until SIGTERM (bare children).
fn until_term() {
    while !TERM.load(Ordering::SeqCst) {
        nap(50);
    }
}

fn kill_child(pid: Pid) -> Res {
    kill(pid, Signal::SIGKILL).or_fail("kill")
}

fn fork_tree(t: &mut Ctx) -> Res {
    let main = getpid();
    let mut kids = Vec::new();
    for i in 0..3u64 {
        let kid = t.spawn(&format!("child{i}"), |c| {
            let me = getpid();
            let mut grand = Vec::new();
            for j in 0..2u64 {
                grand.push(c.spawn(&format!("grandchild{i}.{j}"), |g| {
                    let value = i * 100 + j;
                    g.wait("nothing", || Ok(()))?;
                    ensure_eq!("parent of a grandchild", getppid(), me);
                    ensure_eq!("value", std::hint::black_box(value), i * 100 + j);
                    Ok(())
                })?);
            }
            let first = grand[0];
            c.wait("killed a grandchild", || kill_child(first))?;
            ensure_eq!("parent of a child", getppid(), main);
            c.check_kids()
        })?;
        kids.push(kid);
    }
    let first = kids[0];
    t.wait("asked child0 to kill a grandchild", || forward(first))?;
    t.check_kids()
}

fn deep_level(c: &mut Ctx, depth: u32) -> Res {
    let parent = getppid();
    if depth > 0 {
        let me = getpid();
        let kid = c.spawn(&format!("level{}", 9 - depth), move |d| {
            ensure_eq!("parent", getppid(), me);
            deep_level(d, depth - 1)
        })?;
        c.wait("passed the request down", || forward(kid))?;
        c.check_kids()?;
    } else {
        let mut v = std::hint::black_box(0xdee9u32);
        c.wait("changed a value at the bottom", || {
            v ^= 1;
            Ok(())
        })?;
        ensure_eq!("value at the bottom of the chain", v, 0xdee9u32);
    }
    ensure_eq!("parent after restore", getppid(), parent);
    Ok(())
}

fn deep_tree(t: &mut Ctx) -> Res {
    let me = getpid();
    let kid = t.spawn("level1", move |c| {
        ensure_eq!("parent", getppid(), me);
        deep_level(c, 7)
    })?;
    t.wait("asked the bottom of the chain to change a value", || {
        forward(kid)
    })?;
    t.check_kids()
}

fn wide_tree(t: &mut Ctx) -> Res {
    let mut kids = Vec::new();
    for i in 0..40u32 {
        kids.push(t.spawn(&format!("child{i}"), move |c| {
            let v = std::hint::black_box(i.wrapping_mul(2_654_435_761));
            c.wait("nothing", || Ok(()))?;
            ensure_eq!("value", v, i.wrapping_mul(2_654_435_761));
            Ok(())
        })?);
    }
    let k = kids[17];
    t.wait("killed child17", || kill_child(k))?;
    t.check_kids()
}

fn session00(t: &mut Ctx) -> Res {
    let leader = t.spawn("leader", |c| {
        setsid().or_fail("setsid")?;
        let member = c.spawn("member", |m| m.wait("nothing", || Ok(())))?;
        c.wait("moved the member to its own group", || {
            setpgid(member, member).or_fail("setpgid")
        })?;
        c.check_kids()
    })?;
    let member = Pid::from_raw(
        slurp(format!("/proc/{leader}/task/{leader}/children"))?
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| Fail::Sys("the leader has no child".into()))?,
    );
    t.wait("asked the leader to regroup its member", || forward(leader))?;
    ensure_eq!(
        "session of the leader",
        getsid(Some(leader)).or_fail("getsid")?,
        leader
    );
    ensure_eq!(
        "session of the member",
        getsid(Some(member)).or_fail("getsid")?,
        leader
    );
    ensure_eq!(
        "group of the member",
        getpgid(Some(member)).or_fail("getpgid")?,
        leader
    );
    ensure_eq!("our own session", getsid(None).or_fail("getsid")?, getpid());
    t.check_kids()
}

fn pgid00(t: &mut Ctx) -> Res {
    let a = t.spawn("leader", |c| {
        setpgid(Pid::from_raw(0), Pid::from_raw(0)).or_fail("setpgid")?;
        c.wait("nothing", || Ok(()))
    })?;
    let b = t.spawn("member", |c| c.wait("nothing", || Ok(())))?;
    setpgid(b, a).or_fail("setpgid(member, leader)")?;
    t.wait("moved the member to its own group", || {
        setpgid(b, b).or_fail("setpgid")
    })?;
    ensure_eq!(
        "group of the leader",
        getpgid(Some(a)).or_fail("getpgid")?,
        a
    );
    ensure_eq!(
        "group of the member",
        getpgid(Some(b)).or_fail("getpgid")?,
        a
    );
    ensure_eq!(
        "session of the member",
        getsid(Some(b)).or_fail("getsid")?,
        getpid()
    );
    t.check_kids()
}

/// Fork a leader that makes a group (or session) and forks a member, then
/// exits; the member is reparented to us (subreaper). Returns (leader, member).
fn dead_leader(new_session: bool) -> Res<(Pid, Pid)> {
    prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0).or_fail("PR_SET_CHILD_SUBREAPER")?;
    let main = getpid();
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).or_fail("pipe")?;
    let leader = raw_child(|| {
        let ok = if new_session {
            setsid().is_ok()
        } else {
            setpgid(Pid::from_raw(0), Pid::from_raw(0)).is_ok()
        };
        if !ok {
            return 1;
        }
        let lead = getpid();
        let member = raw_child(|| {
            // The member tells its PID itself, once it runs with its own
            // signal mask (the fork blocks requests until then): the test is
            // ready only when the member's state is settled.
            let me = getpid().as_raw().to_le_bytes();
            if nix::unistd::write(&w, &me) != Ok(4) {
                return 1;
            }
            let mut sabotaged = false;
            let mut sabotage = || {
                if USR2.swap(false, Ordering::SeqCst) && !sabotaged {
                    // Only meaningful for the session case; harmless otherwise.
                    sabotaged = setsid().is_ok();
                }
            };
            while !TERM.load(Ordering::SeqCst) {
                sabotage();
                nap(50);
            }
            // SIGUSR2 and SIGTERM may both land in one nap: the sabotage
            // comes first.
            sabotage();
            let good = getppid() == main
                && getpgid(None).ok() == Some(lead)
                && (!new_session || getsid(None).ok() == Some(lead));
            i32::from(!good)
        });
        i32::from(member.is_err())
    })?;
    let mut b = [0u8; 4];
    let n = crate::testlib::read_retry(&r, &mut b).or_fail("read member pid")?;
    ensure_eq!("member pid bytes", n, 4);
    ensure_eq!(
        "leader exit",
        waitpid(leader, None).or_fail("waitpid leader")?,
        WaitStatus::Exited(leader, 0)
    );
    Ok((leader, Pid::from_raw(i32::from_le_bytes(b))))
}

fn finish_member(member: Pid) -> Res {
    kill(member, Signal::SIGTERM).or_fail("SIGTERM member")?;
    match waitpid(member, None).or_fail("waitpid member")? {
        WaitStatus::Exited(_, 0) => Ok(()),
        st => Err(Fail::Mismatch(format!(
            "the member's own check failed: {st:?}"
        ))),
    }
}

fn pgid_dead_leader(t: &mut Ctx) -> Res {
    let (leader, member) = dead_leader(false)?;
    let res = t
        .wait("moved the member to its own group", || {
            setpgid(member, member).or_fail("setpgid")
        })
        .and_then(|()| {
            ensure_eq!(
                "group of the member",
                getpgid(Some(member)).or_fail("getpgid")?,
                leader
            );
            ensure_eq!(
                "parent of the member",
                crate::corpus::util::proc_stat_fields(member)?[1],
                getpid().to_string()
            );
            Ok(())
        });
    let fin = finish_member(member);
    res.and(fin)
}

fn sid_dead_leader(t: &mut Ctx) -> Res {
    let (leader, member) = dead_leader(true)?;
    let res = t
        .wait("asked the member to start its own session", || {
            forward(member)
        })
        .and_then(|()| {
            ensure_eq!(
                "session of the member",
                getsid(Some(member)).or_fail("getsid")?,
                leader
            );
            ensure_eq!(
                "group of the member",
                getpgid(Some(member)).or_fail("getpgid")?,
                leader
            );
            Ok(())
        });
    let fin = finish_member(member);
    res.and(fin)
}

fn wait_state(pid: Pid, want: char) -> Res {
    for _ in 0..1000 {
        if proc_state(pid)? == want {
            return Ok(());
        }
        nap(2);
    }
    Err(Fail::Sys(format!("pid {pid} never reached state {want}")))
}

fn zombie00(t: &mut Ctx) -> Res {
    let z = raw_child(|| 42)?;
    wait_state(z, 'Z')?;
    t.wait("reaped the zombie", || {
        waitpid(z, None).or_fail("waitpid").map(drop)
    })?;
    ensure_eq!(
        "state of the zombie",
        proc_state(z).map_err(|_| "gone").ok(),
        Some('Z')
    );
    ensure_eq!(
        "exit status",
        waitpid(z, None).or_fail("waitpid")?,
        WaitStatus::Exited(z, 42)
    );
    Ok(())
}

fn zombie_signal(t: &mut Ctx) -> Res {
    let z = raw_child(|| {
        until_term();
        0
    })?;
    kill(z, Signal::SIGKILL).or_fail("kill")?;
    wait_state(z, 'Z')?;
    t.wait("reaped the zombie", || {
        waitpid(z, None).or_fail("waitpid").map(drop)
    })?;
    ensure_eq!(
        "state of the zombie",
        proc_state(z).map_err(|_| "gone").ok(),
        Some('Z')
    );
    ensure_eq!(
        "wait status",
        waitpid(z, None).or_fail("waitpid")?,
        WaitStatus::Signaled(z, Signal::SIGKILL, false)
    );
    Ok(())
}

fn zombie_blocked(t: &mut Ctx) -> Res {
    // SIGHUP, SIGUSR1 and SIGWINCH blocked.
    const MASK: &str = "0000000008000201";
    let z = raw_child(|| {
        let mut set = nix::sys::signal::SigSet::empty();
        for s in [Signal::SIGHUP, Signal::SIGUSR1, Signal::SIGWINCH] {
            set.add(s);
        }
        if set.thread_set_mask().is_err() {
            return 2;
        }
        0
    })?;
    wait_state(z, 'Z')?;
    let blocked = || {
        status_field(&slurp(format!("/proc/{z}/status"))?, "SigBlk")
            .ok_or_else(|| Fail::Mismatch("no SigBlk in the zombie's status".into()))
    };
    ensure_eq!("the zombie's blocked mask", blocked()?, MASK);
    t.wait("reaped the zombie", || {
        waitpid(z, None).or_fail("waitpid").map(drop)
    })?;
    ensure_eq!("the zombie's blocked mask after restore", blocked()?, MASK);
    ensure_eq!(
        "wait status",
        waitpid(z, None).or_fail("waitpid")?,
        WaitStatus::Exited(z, 0)
    );
    Ok(())
}

fn stopped00(t: &mut Ctx) -> Res {
    let kid = t.spawn("stopped", |c| {
        let v = std::hint::black_box(0x0570_7bed_u32);
        c.wait("nothing", || Ok(()))?;
        ensure_eq!("value", v, 0x0570_7bed_u32);
        Ok(())
    })?;
    kill(kid, Signal::SIGSTOP).or_fail("SIGSTOP")?;
    ensure_eq!(
        "stop report",
        waitpid(kid, Some(WaitPidFlag::WUNTRACED)).or_fail("waitpid")?,
        WaitStatus::Stopped(kid, Signal::SIGSTOP)
    );
    t.wait("continued the child", || {
        kill(kid, Signal::SIGCONT).or_fail("SIGCONT")
    })?;
    ensure_eq!("state of the stopped child", proc_state(kid)?, 'T');
    kill(kid, Signal::SIGCONT).or_fail("SIGCONT")?;
    t.check_kids()
}

fn orphan00(t: &mut Ctx) -> Res {
    let (_, orphan) = dead_leader(false)?;
    let res = t
        .wait("killed the orphan", || kill_child(orphan))
        .and_then(|()| {
            ensure_eq!(
                "subreaper flag",
                prctl_get_int(libc::PR_GET_CHILD_SUBREAPER).or_fail("prctl")?,
                1
            );
            let kids = slurp(format!("/proc/self/task/{}/children", getpid()))?;
            ensure!(
                kids.split_whitespace().any(|k| k == orphan.to_string()),
                "the orphan {orphan} is not our child: {kids:?}"
            );
            Ok(())
        });
    let fin = finish_member(orphan);
    res.and(fin)
}

fn pdeathsig(t: &mut Ctx) -> Res {
    let kid = t.spawn("child", |c| {
        prctl(
            libc::PR_SET_PDEATHSIG,
            u64::try_from(libc::SIGUSR1).unwrap_or(10),
            0,
            0,
            0,
        )
        .or_fail("PR_SET_PDEATHSIG")?;
        c.wait("cleared the parent-death signal", || {
            prctl(libc::PR_SET_PDEATHSIG, 0, 0, 0, 0)
                .or_fail("prctl")
                .map(drop)
        })?;
        ensure_eq!(
            "parent-death signal",
            prctl_get_int(libc::PR_GET_PDEATHSIG).or_fail("prctl")?,
            libc::SIGUSR1
        );
        Ok(())
    })?;
    t.wait("asked the child to clear it", || forward(kid))?;
    t.check_kids()
}

fn pidfd_open(pid: Pid) -> Res<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd.
    let fd = unsafe {
        sys::syscall6(
            libc::SYS_pidfd_open,
            [u64::try_from(pid.as_raw()).unwrap_or(0), 0, 0, 0, 0, 0],
        )
    }
    .or_fail("pidfd_open")?;
    // SAFETY: the fd was just created for us.
    Ok(unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).or_fail("fd")?) })
}

fn pidfd00(t: &mut Ctx) -> Res {
    let kid = t.spawn("target", |c| c.wait("nothing", || Ok(())))?;
    let fd = pidfd_open(kid)?;
    t.wait("replaced the pidfd by one of ourselves", || {
        dup_over(&pidfd_open(getpid())?, &fd)
    })?;
    let info = fdinfo(&fd)?;
    ensure_eq!(
        "Pid in the pidfd's fdinfo",
        status_field(&info, "Pid"),
        Some(kid.to_string())
    );
    // SAFETY: pidfd_send_signal with signal 0 and no siginfo only checks.
    let r = unsafe {
        sys::syscall6(
            libc::SYS_pidfd_send_signal,
            [u64::try_from(fd.as_raw_fd()).unwrap_or(0), 0, 0, 0, 0, 0],
        )
    };
    ensure!(r.is_ok(), "pidfd_send_signal(0): {r:?}");
    t.check_kids()
}

fn ptraced_child(t: &mut Ctx) -> Res {
    use nix::sys::ptrace;
    let kid = t.spawn("tracee", |c| c.wait("nothing", || Ok(())))?;
    ptrace::seize(kid, ptrace::Options::empty()).or_fail("PTRACE_SEIZE")?;
    t.wait("detached from the child", || {
        ptrace::interrupt(kid).or_fail("PTRACE_INTERRUPT")?;
        waitpid(kid, None).or_fail("waitpid")?;
        ptrace::detach(kid, None).or_fail("PTRACE_DETACH")
    })?;
    let status = slurp(format!("/proc/{kid}/status"))?;
    ensure_eq!(
        "TracerPid of the child",
        status_field(&status, "TracerPid"),
        Some(getpid().to_string())
    );
    // SIGTERM is delivered through the tracer: pass it on.
    kill(kid, Signal::SIGTERM).or_fail("SIGTERM")?;
    loop {
        match waitpid(kid, None).or_fail("waitpid")? {
            WaitStatus::Stopped(_, sig) => ptrace::cont(kid, Some(sig)).or_fail("PTRACE_CONT")?,
            WaitStatus::Exited(_, 0) => {
                t.take_kids();
                return Ok(());
            }
            st => return Err(Fail::Mismatch(format!("tracee ended with {st:?}"))),
        }
    }
}

fn fork_loop(t: &mut Ctx) -> Res {
    let mut n = 0u8;
    let mut extra = None;
    t.transition("forked a child that is never reaped", |tick| {
        if tick == Tick::Sabotage {
            extra = Some(raw_child(|| {
                until_term();
                0
            })?);
            return Ok(());
        }
        n = n.wrapping_add(1);
        let code = n;
        let kid = raw_child(move || i32::from(code))?;
        ensure_eq!(
            "status of a short-lived child",
            waitpid(kid, None).or_fail("waitpid")?,
            WaitStatus::Exited(kid, i32::from(code))
        );
        nap(2);
        Ok(())
    })?;
    let left = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG));
    if let Some(e) = extra {
        let _ = kill(e, Signal::SIGKILL);
        let _ = waitpid(e, None);
    }
    ensure_eq!(
        "children left after the loop",
        left.map_err(|e| e.to_string()),
        Err(nix::errno::Errno::ECHILD.to_string())
    );
    Ok(())
}
