//! The code a restored task runs on its own right after being forked (it is
//! still a copy of the engine): join its session and group, fork its
//! children with their PIDs, install its fds from the engine's file pool,
//! change directory, report to the engine, and wait to be taken over.

use std::os::fd::RawFd;

use nix::errno::Errno;
use nix::unistd::Pid;

use super::{Plan, pid_of};
use crate::sys;

const STEPS: [&str; 7] = [
    "its session",
    "its process group",
    "a child with its PID",
    "an fd",
    "its root directory",
    "its working directory",
    "closing inherited fds",
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
    let _ = nix::unistd::write(sys::borrow(ready), &msg);
}

/// Run task `idx` of `plans`; never returns.
pub fn run(plans: &[Plan], idx: usize, ready: RawFd) -> ! {
    let Some(p) = plans.get(idx) else {
        sys::exit_now(1)
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
                sys::set_disposition(s, sa.sigaction == 1 && !dies, catch);
            }
            if !tc.comm.is_empty() {
                sys::set_comm(&tc.comm);
            }
        }
        if sig != 0 {
            let _ = nix::sys::signal::raise(
                nix::sys::signal::Signal::try_from(sig.cast_signed())
                    .unwrap_or(nix::sys::signal::Signal::SIGKILL),
            );
        }
        sys::exit_now(((code >> 8) & 0xff).cast_signed());
    }
    match setup(plans, idx, ready) {
        Ok(()) => report(ready, pid, 0, 0),
        Err((errno, step)) => {
            report(ready, pid, errno as i32, step);
            sys::exit_now(1);
        }
    }
    loop {
        nix::unistd::pause();
    }
}

fn setup(plans: &[Plan], idx: usize, ready: RawFd) -> Result<(), (Errno, i32)> {
    let p = &plans[idx];
    let pid = p.pst.pid;
    // Die with the engine while the restore is in progress.
    sys::set_pdeathsig(libc::SIGKILL);
    if p.pst.sid == pid {
        nix::unistd::setsid().map_err(|e| (e, 0))?;
    } else if p.pst.pgid == pid {
        nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0)).map_err(|e| (e, 1))?;
    } else if nix::unistd::getpgrp().as_raw() != p.pst.pgid.cast_signed() {
        nix::unistd::setpgid(Pid::from_raw(0), pid_of(p.pst.pgid)).map_err(|e| (e, 1))?;
    }
    for (ci, c) in plans.iter().enumerate() {
        if c.pst.ppid != pid {
            continue;
        }
        match sys::fork_single_threaded(pid_of(c.pst.pid)) {
            Ok(sys::Forked::Child) => run(plans, ci, ready),
            Ok(sys::Forked::Parent(_)) => {}
            Err(e) => return Err((e, 2)),
        }
    }
    // The root directory is changed by the engine once it no longer opens
    // files by path in the task.
    if let Some(cwd) = &p.cwd {
        nix::unistd::chdir(cwd.as_str()).map_err(|e| (e, 5))?;
    }
    // The fd table: everything inherited goes, except the pool and the
    // report pipe (both above every target), then the targets go in.
    let keep_from = p.fds.iter().map(|f| f.1).min().unwrap_or(ready).min(ready);
    for fd in open_fds() {
        if fd < keep_from && !p.fds.iter().any(|f| f.0 == fd && f.1 == fd) {
            sys::close(fd);
        }
    }
    for &(target, from, cloexec) in &p.fds {
        sys::dup_to(from, target, cloexec).map_err(|e| (e, 3))?;
    }
    // The pool goes; the report pipe is closed by the engine once it took over.
    for fd in open_fds() {
        if fd >= keep_from && fd != ready && !p.fds.iter().any(|f| f.0 == fd) {
            sys::close(fd);
        }
    }
    Ok(())
}

fn open_fds() -> Vec<RawFd> {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}
