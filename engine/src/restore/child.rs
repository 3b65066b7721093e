//! The code a restored task runs on its own right after being forked (it is
//! still a copy of the engine): join its session and group, fork its
//! children with their PIDs, install its fds from the engine's file pool,
//! change directory, report to the engine, and wait to be taken over.

use stasis_kernel as kernel;
use std::os::fd::{AsFd, RawFd};

use nix::errno::Errno;
use nix::unistd::Pid;

use super::{Plan, pid_of};

const STEPS: [&str; 13] = [
    "its session",
    "its process group",
    "a child with its PID",
    "an fd",
    "its root directory",
    "its working directory",
    "closing inherited fds",
    "the foreground of its terminal",
    "joining the tree's mount namespace",
    "mounting the tree's procfs",
    "its PID namespace for children",
    "joining its cgroups",
    "its cgroup namespace",
];

/// The name of a setup step a task reported failing.
pub fn step_name(i: i32) -> &'static str {
    usize::try_from(i)
        .ok()
        .and_then(|i| STEPS.get(i))
        .copied()
        .unwrap_or("its setup")
}

fn report(ready: RawFd, pid: i32, errno: i32, step: i32) {
    let mut msg = [0u8; 12];
    msg[..4].copy_from_slice(&pid.to_ne_bytes());
    msg[4..8].copy_from_slice(&errno.to_ne_bytes());
    msg[8..].copy_from_slice(&step.to_ne_bytes());
    // `ready` is the pipe's write end, inherited and open until exit.
    let _ = kernel::fd::write_raw(ready, &msg);
}

/// Run task `idx` of `plans`; never returns.
pub fn run(plans: &[Plan], idx: usize, ready: RawFd) -> ! {
    let Some(p) = plans.get(idx) else {
        kernel::process::exit_now(1)
    };
    let pid = p.pst.pid.cast_signed();
    if let Some(code) = p.zombie {
        // A zombie: exit at once the way it did, with its name and signal
        // dispositions; its parent never reaps it.
        let sig = code & 0x7f;
        if let Some(tc) = &p.core.tc {
            for (sa, s) in tc.sigactions.iter().zip(crate::task::sigaction_signals()) {
                let s = i32::try_from(s).unwrap_or(0);
                // The signal it died of must kill it again.
                let dies = s == sig.cast_signed();
                let catch = sa.sigaction >= crate::task::ZOMBIE_HANDLER && !dies;
                kernel::signal::set_disposition(s, sa.sigaction == 1 && !dies, catch);
            }
            if !tc.comm.is_empty() {
                kernel::process::set_comm(&tc.comm);
            }
            // The mask it died with, but the signal that kills it again.
            let mut blocked = nix::sys::signal::SigSet::empty();
            for s in nix::sys::signal::Signal::iterator() {
                let n = s as i32;
                if n != sig.cast_signed() && tc.blk_sigset & (1u64 << (n - 1)) != 0 {
                    blocked.add(s);
                }
            }
            let _ = blocked.thread_set_mask();
        }
        if sig != 0 && p.chain(0).last() == Some(&1) {
            // The init of a PID namespace ignores its own signals, even
            // SIGKILL: the engine sends it from outside once it is ready.
            report(ready, pid, 0, 0);
            loop {
                nix::unistd::pause();
            }
        }
        if sig != 0 {
            let _ = nix::sys::signal::raise(
                nix::sys::signal::Signal::try_from(sig.cast_signed())
                    .unwrap_or(nix::sys::signal::Signal::SIGKILL),
            );
        }
        kernel::process::exit_now(((code >> 8) & 0xff).cast_signed());
    }
    match setup(plans, idx, ready) {
        Ok(()) => report(ready, pid, 0, 0),
        Err((errno, step)) => {
            report(ready, pid, errno as i32, step);
            kernel::process::exit_now(1);
        }
    }
    loop {
        nix::unistd::pause();
    }
}

/// A failed step of the setup: the errno and the index of the step in
/// [`STEPS`], as reported to the engine.
type Step<T = ()> = Result<T, (Errno, i32)>;

fn setup(plans: &[Plan], idx: usize, ready: RawFd) -> Step {
    let p = &plans[idx];
    // Die with the engine while the restore is in progress.
    kernel::process::set_pdeathsig(libc::SIGKILL);
    join_cgroups(p)?;
    if let Some(ns) = &p.mnt_ns {
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNS).map_err(|e| (e, 8))?;
        crate::ns::mnt::mount_procs(&p.proc_mounts).map_err(|e| (e, 9))?;
    }
    join_session(plans, p)?;
    let kids = fork_children(plans, idx, ready)?;
    pidns_for_children(p, &kids)?;
    // The root directory is changed by the engine once it no longer opens
    // files by path in the task.
    if let Some(cwd) = &p.cwd {
        nix::unistd::chdir(cwd.as_str()).map_err(|e| (e, 5))?;
    }
    install_fds(p, ready)?;
    // Its name and umask from inside: no remote call needed for them. The
    // name first, before any thread: a thread starts with its leader's.
    if let Some(tc) = &p.core.tc {
        kernel::process::set_comm(&tc.comm);
    }
    if let Some(mask) = p.fs.as_ref().and_then(|f| f.umask) {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
    }
    Ok(())
}

/// Its cgroups before anything is charged or forked; a cgroup namespace
/// is made in the cgroup that was its root.
fn join_cgroups(p: &Plan) -> Step {
    if let Some(fds) = &p.cgroup_ns {
        for &fd in fds {
            kernel::fd::write_raw(fd, b"0").map_err(|e| (e, 12))?;
        }
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP).map_err(|e| (e, 12))?;
    }
    for &fd in &p.cgroup_fds {
        kernel::fd::write_raw(fd, b"0").map_err(|e| (e, 11))?;
    }
    Ok(())
}

/// Its session and process group (and, for a group leader, the foreground
/// of its terminal).
fn join_session(plans: &[Plan], p: &Plan) -> Step {
    let pid = p.pst.pid;
    if p.pst.sid == pid {
        nix::unistd::setsid().map_err(|e| (e, 0))?;
    } else if p.pst.pgid == pid {
        nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0)).map_err(|e| (e, 1))?;
        if let Some(tty) = &p.terminal {
            crate::files::tty::take_foreground(tty.as_fd()).map_err(|e| (e, 7))?;
        }
    } else if plans
        .iter()
        .find(|q| q.pst.pid == p.pst.ppid)
        .is_none_or(|parent| parent.pst.pgid != p.pst.pgid)
        && nix::unistd::getpgrp().as_raw() != p.pst.pgid.cast_signed()
    {
        // Not its parent's group, which it inherited (and which a task in
        // a nested PID namespace may not see).
        join_group(pid_of(p.pst.pgid)).map_err(|e| (e, 1))?;
    }
    Ok(())
}

/// Fork the children of task `idx` with their PIDs, in the order of the
/// plans; each runs its own setup. Their (PID in the images, PID here).
fn fork_children(plans: &[Plan], idx: usize, ready: RawFd) -> Step<Vec<(u32, Pid)>> {
    let p = &plans[idx];
    let pid = p.pst.pid;
    let depth = p.chain(0).len();
    let mut kids: Vec<(u32, Pid)> = Vec::new();
    for (ci, c) in plans.iter().enumerate() {
        if c.pst.ppid != pid {
            continue;
        }
        if let Some((leader, session)) = dead_leader(plans, c) {
            fork_through_helper(plans, ci, ready, leader, session)?;
            continue;
        }
        let ids = c.set_tid(0);
        // Deeper than its parent: the init of a PID namespace of its own,
        // or a task forked into the namespace of a sibling that is.
        let deeper = c.chain(0).len() > depth;
        let init = deeper && ids.first() == Some(&1);
        if deeper && !init {
            enter_sibling_pidns(plans, c, &kids).map_err(|e| (e, 10))?;
        }
        let forked = kernel::clone::fork_single_threaded_ids(&ids, init, false);
        if deeper && !init {
            leave_sibling_pidns().map_err(|e| (e, 10))?;
        }
        match forked {
            Ok(kernel::clone::Forked::Child) => run(plans, ci, ready),
            Ok(kernel::clone::Forked::Parent(kid)) => {
                kids.push((c.pst.pid, kid));
                // A group leader's group exists before its siblings try to
                // join it: the parent makes it too (as shells do).
                if c.pst.pgid == c.pst.pid && c.pst.sid != c.pst.pid {
                    let _ = nix::unistd::setpgid(kid, kid);
                }
            }
            Err(e) => return Err((e, 2)),
        }
    }
    Ok(kids)
}

/// It had called unshare(CLONE_NEWPID): its next children go there.
fn pidns_for_children(p: &Plan, kids: &[(u32, Pid)]) -> Step {
    match p.pst.stasis_pidns_for_children {
        Some(0) => {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID).map_err(|e| (e, 10))?
        }
        Some(init) => {
            let kid = kids
                .iter()
                .find(|k| k.0 == init)
                .map(|k| k.1)
                .ok_or((Errno::ESRCH, 10))?;
            join_pidns_of(kid).map_err(|e| (e, 10))?;
        }
        None => {}
    }
    Ok(())
}

/// The fd table: pool fds onto their targets, then everything else
/// inherited goes but the report pipe (closed by the engine once it took
/// over) and the remade memfds and ghost files its memory maps.
fn install_fds(p: &Plan, ready: RawFd) -> Step {
    place_fds(&p.fds, ready + 1).map_err(|e| (e, 3))?;
    let mut keep: Vec<RawFd> = p.fds.iter().map(|f| f.0).collect();
    keep.push(ready);
    keep.extend(&p.inherited);
    kernel::fd::close_except(0, u32::MAX >> 1, &keep).map_err(|e| (e, 6))?;
    Ok(())
}

/// Make the next child of this task go into the PID namespace of `kid`
/// (a child of this task, by its PID here).
fn join_pidns_of(kid: Pid) -> Result<(), Errno> {
    let fd = kernel::fd::pidfd_open(kid)?;
    nix::sched::setns(fd.as_fd(), nix::sched::CloneFlags::CLONE_NEWPID)
}

/// Before forking `c` into a namespace nested below this task's: join the
/// namespace of the sibling forked last before it that is the init of one
/// at its level.
fn enter_sibling_pidns(plans: &[Plan], c: &Plan, kids: &[(u32, Pid)]) -> Result<(), Errno> {
    let level = c.chain(0).len();
    let init = kids
        .iter()
        .rev()
        .find(|(id, _)| {
            plans
                .iter()
                .find(|q| q.pst.pid == *id)
                .is_some_and(|q| q.chain(0).len() == level && q.chain(0).last() == Some(&1))
        })
        .ok_or(Errno::ESRCH)?;
    join_pidns_of(init.1)
}

/// Back to forking into this task's own PID namespace.
fn leave_sibling_pidns() -> Result<(), Errno> {
    join_pidns_of(nix::unistd::getpid())
}

/// Put each pool fd on its target (target, pool fd, close-on-exec), however
/// pool and target numbers overlap: a target whose fd another target still
/// needs waits for it, and in a cycle one is first copied aside (to `spare`
/// or above).
fn place_fds(moves: &[(RawFd, RawFd, bool)], spare: RawFd) -> Result<(), Errno> {
    use std::collections::HashMap;
    let mut from: Vec<RawFd> = moves.iter().map(|m| m.1).collect();
    // Unplaced moves reading each fd number.
    let mut readers: HashMap<RawFd, Vec<usize>> = HashMap::new();
    let mut done = vec![false; moves.len()];
    for (i, &(target, src, cloexec)) in moves.iter().enumerate() {
        if target == src {
            kernel::fd::set_cloexec(target, cloexec)?;
            done[i] = true;
        } else {
            readers.entry(src).or_default().push(i);
        }
    }
    let by_target: HashMap<RawFd, usize> =
        moves.iter().enumerate().map(|(i, m)| (m.0, i)).collect();
    let free =
        |readers: &HashMap<RawFd, Vec<usize>>, t: RawFd| readers.get(&t).is_none_or(Vec::is_empty);
    let mut ready: Vec<usize> = (0..moves.len())
        .filter(|&i| !done[i] && free(&readers, moves[i].0))
        .collect();
    let mut left = done.iter().filter(|d| !**d).count();
    let mut spare = spare;
    while left > 0 {
        while let Some(i) = ready.pop() {
            if done[i] {
                continue;
            }
            let (target, _, cloexec) = moves[i];
            let src = from[i];
            kernel::fd::dup_to(src, target, cloexec)?;
            done[i] = true;
            left -= 1;
            if let Some(r) = readers.get_mut(&src) {
                r.retain(|&k| k != i);
                if r.is_empty()
                    && let Some(&j) = by_target.get(&src)
                    && !done[j]
                {
                    ready.push(j);
                }
            }
        }
        if left == 0 {
            break;
        }
        // Only cycles are left: copy one target's current fd aside.
        let Some(i) = (0..moves.len()).find(|&i| !done[i]) else {
            break;
        };
        let target = moves[i].0;
        let aside = kernel::fd::dup_above(target, spare)?;
        spare = aside + 1;
        for k in readers.remove(&target).unwrap_or_default() {
            from[k] = aside;
            readers.entry(aside).or_default().push(k);
        }
        ready.push(i);
    }
    Ok(())
}

/// The session (`true`) or process group `c` must be born into whose leader
/// is not in the tree and which does not exist yet here: its id.
fn dead_leader(plans: &[Plan], c: &Plan) -> Option<(u32, bool)> {
    let gone = |id: u32| id != c.pst.pid && !plans.iter().any(|p| p.pst.pid == id);
    let sid = nix::unistd::getsid(None).ok()?.as_raw().cast_unsigned();
    if gone(c.pst.sid) && sid != c.pst.sid {
        return Some((c.pst.sid, true));
    }
    // An existing group of the session is joined with setpgid; a missing one
    // needs a leader.
    let exists = nix::sys::signal::kill(Pid::from_raw(-c.pst.pgid.cast_signed()), None).is_ok();
    (gone(c.pst.pgid) && !exists).then_some((c.pst.pgid, false))
}

/// Create the dead leader `leader` (PID of the session or group) as a
/// helper that makes the session or group, forks child `ci` of this task as
/// its sibling (so the child is ours and born into it) and exits; reap it.
fn fork_through_helper(
    plans: &[Plan],
    ci: usize,
    ready: RawFd,
    leader: u32,
    session: bool,
) -> Step {
    let c = &plans[ci];
    match kernel::clone::fork_single_threaded(pid_of(leader), false) {
        Ok(kernel::clone::Forked::Child) => {
            let made = if session {
                nix::unistd::setsid().map(drop)
            } else {
                nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0))
            };
            if made.is_err() {
                kernel::process::exit_now(2);
            }
            match kernel::clone::fork_single_threaded(pid_of(c.pst.pid), true) {
                Ok(kernel::clone::Forked::Child) => run(plans, ci, ready),
                Ok(kernel::clone::Forked::Parent(_)) => kernel::process::exit_now(0),
                Err(_) => kernel::process::exit_now(3),
            }
        }
        Ok(kernel::clone::Forked::Parent(h)) => {
            let step = i32::from(!session);
            match nix::sys::wait::waitpid(h, None) {
                Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => Ok(()),
                Ok(nix::sys::wait::WaitStatus::Exited(_, 2)) => Err((Errno::EPERM, step)),
                // Reaped already (SIGCHLD ignored): the child tells.
                Err(Errno::ECHILD)
                    if std::path::Path::new(&format!("/proc/{}", c.pst.pid)).exists() =>
                {
                    Ok(())
                }
                Ok(_) | Err(_) => Err((Errno::ECHILD, 2)),
            }
        }
        Err(e) => Err((e, 2)),
    }
}

/// Join process group `pgid`, made by another task of the tree that may not
/// have got there yet (EPERM until the group exists): retry for a while.
fn join_group(pgid: Pid) -> Result<(), Errno> {
    let mut tries = 0;
    loop {
        match nix::unistd::setpgid(Pid::from_raw(0), pgid) {
            Err(Errno::EPERM) if tries < 400 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            r => return r,
        }
    }
}
