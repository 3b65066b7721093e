//! Process and thread probes: kcmp, prctl (TID address, PR_SET_MM_MAP),
//! signals (rt_sigqueueinfo, ptrace's PEEKSIGINFO/GETSIGMASK), ptrace
//! (seize, seccomp, rseq, syscall info, register sets, hardware breakpoints),
//! clone3 with set_tid, pidfds, process_vm_readv/writev, POSIX timer ids,
//! capabilities.

use stasis_kernel as kernel;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd};

use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::uio::RemoteIoVec;
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::{Pid, getpid, pipe};

use super::common::{CHILD_TIMEOUT, R, Step, cap_eff, error, has_cap, no, read};
use crate::Outcome;
use stasis_kernel::clone::Child;

const PTRACE_O_SUSPEND_SECCOMP: u64 = 1 << 21;

/// Forks a child that asks to be traced, runs `setup`, then stops itself;
/// returns it stopped.
fn traced_child(setup: impl FnOnce() -> bool) -> Result<Child, Outcome> {
    let mut c = kernel::clone::fork_child(|_cx| {
        if nix::sys::ptrace::traceme().is_err() {
            return 10;
        }
        if !setup() {
            return 11;
        }
        kernel::signal::raise(Signal::SIGSTOP);
        0
    })
    .fail("fork")?;
    match c
        .wait_timeout(CHILD_TIMEOUT, WaitPidFlag::WUNTRACED)
        .fail("waiting for the traced child")?
    {
        WaitStatus::Stopped(_, Signal::SIGSTOP) => Ok(c),
        WaitStatus::Exited(_, 10) => Err(no("PTRACE_TRACEME failed")),
        WaitStatus::Exited(_, 11) => Err(error("setting up the traced child failed")),
        other => Err(error(format!("the traced child did not stop: {other:?}"))),
    }
}

pub fn kcmp() -> R {
    let me = getpid();
    let f = std::fs::File::open("/proc/self/stat").fail("open")?;
    let g = f.try_clone().fail("dup")?;
    let fd = u64::try_from(f.as_raw_fd()).unwrap_or(0);
    let gd = u64::try_from(g.as_raw_fd()).unwrap_or(0);
    let same = kernel::fd::kcmp(me, me, 0, fd, gd)
        .no("kcmp(KCMP_FILE) (CONFIG_KCMP or CONFIG_CHECKPOINT_RESTORE)")?;
    if same != 0 {
        return Err(no("kcmp says a dup()ed fd is a different file"));
    }
    let vm = kernel::fd::kcmp(me, me, 1, 0, 0).no("kcmp(KCMP_VM)")?;
    if vm != 0 {
        return Err(no("kcmp says our own VM differs"));
    }
    Ok(String::new())
}

pub fn kcmp_epoll() -> R {
    use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
    let ep = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).fail("epoll_create")?;
    let (r, _w) = pipe().fail("pipe")?;
    ep.add(r.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, 1))
        .fail("epoll_ctl")?;
    let slot = kernel::fd::KcmpEpollSlot {
        efd: u32::try_from(ep.0.as_raw_fd()).unwrap_or(0),
        tfd: u32::try_from(r.as_raw_fd()).unwrap_or(0),
        toff: 0,
    };
    let v = kernel::fd::kcmp_epoll(getpid(), r.as_raw_fd(), &slot).no("kcmp(KCMP_EPOLL_TFD)")?;
    if v != 0 {
        return Err(no("kcmp(KCMP_EPOLL_TFD) does not match the registered fd"));
    }
    Ok(String::new())
}

pub fn prctl() -> R {
    kernel::process::get_tid_address().no("prctl(PR_GET_TID_ADDRESS)")?;
    prctl_mm_map_size()?;
    Ok(String::new())
}

pub fn prctl_mm_map_size() -> R {
    let size = kernel::mm::mm_map_size()
        .no("prctl(PR_SET_MM, PR_SET_MM_MAP_SIZE) (CONFIG_CHECKPOINT_RESTORE)")?;
    if size != 104 {
        return Err(no(format!(
            "PR_SET_MM_MAP_SIZE reports {size}, expected 104"
        )));
    }
    Ok(String::new())
}

pub fn prctl_mm_map() -> R {
    // Apply the current layout through PR_SET_MM_MAP in a child: the same call
    // restore makes, without needing CAP_SYS_RESOURCE.
    let stat = read("/proc/self/stat")?;
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| error("bad /proc/self/stat"))?;
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let at = |n: usize| f.get(n - 3).copied().unwrap_or(0);
    let map: [u64; 13] = [
        at(26),
        at(27),
        at(45),
        at(46),
        at(47),
        kernel::mm::current_brk(),
        at(28),
        at(48),
        at(49),
        at(50),
        at(51),
        0,
        u64::from(u32::MAX) << 32, // auxv_size 0 (keep), exe_fd -1 (keep)
    ];
    let mut c = kernel::clone::fork_child(|_cx| match kernel::process::set_mm_map(&map) {
        Ok(_) => 0,
        Err(e) => e as i32,
    })
    .fail("fork")?;
    match c.exit_code(CHILD_TIMEOUT) {
        Ok(0) => Ok(String::new()),
        Ok(e) => Err(no(format!(
            "prctl(PR_SET_MM, PR_SET_MM_MAP): {}",
            nix::errno::Errno::from_raw(e)
        ))),
        Err(e) => Err(error(e)),
    }
}

pub fn fcntl_owner_uids() -> R {
    let (r, _w) = pipe().fail("pipe")?;
    let uids = kernel::fd::fcntl_getowner_uids(r.as_fd()).no("fcntl(F_GETOWNER_UIDS)")?;
    Ok(format!("owner uids {} {}", uids[0], uids[1]))
}

pub fn rt_sigqueueinfo() -> R {
    let mut c = kernel::clone::fork_child(|_cx| {
        if SigSet::from(Signal::SIGUSR1).thread_block().is_err() {
            return 1;
        }
        if kernel::signal::rt_sigqueueinfo(getpid(), libc::SIGUSR1, 1, 0x5151).is_err() {
            return 2;
        }
        match kernel::signal::sigtimedwait_now(Signal::SIGUSR1) {
            Ok((1, 0x5151)) => 0,
            Ok(_) => 3,
            Err(_) => 4,
        }
    })
    .fail("fork")?;
    match c.exit_code(CHILD_TIMEOUT) {
        Ok(0) => Ok(String::new()),
        Ok(2) => Err(no(
            "rt_sigqueueinfo with a positive si_code to ourselves was refused",
        )),
        Ok(3) => Err(no(
            "the queued siginfo came back with a different code or value",
        )),
        Ok(4) => Err(no("the queued signal was not pending")),
        Ok(n) => Err(error(format!("child setup failed ({n})"))),
        Err(e) => Err(error(e)),
    }
}

pub fn ptrace_peeksiginfo() -> R {
    let c = traced_child(|| {
        SigSet::from(Signal::SIGUSR1).thread_block().is_ok() && {
            kernel::signal::raise(Signal::SIGUSR1);
            true
        }
    })?;
    let infos: Vec<(i32, i32)> = kernel::ptrace::peek_siginfo(c.pid(), false)
        .no("ptrace(PTRACE_PEEKSIGINFO)")?
        .iter()
        .map(|i| (int_at(i, 0), int_at(i, 8)))
        .collect();
    if infos.len() != 1 || infos[0].0 != libc::SIGUSR1 {
        return Err(no(format!(
            "PTRACE_PEEKSIGINFO returned {infos:?}, expected one SIGUSR1"
        )));
    }
    let mask = kernel::ptrace::get_sigmask(c.pid()).no("ptrace(PTRACE_GETSIGMASK)")?;
    if mask & (1 << (libc::SIGUSR1 - 1)) == 0 {
        return Err(no(format!(
            "PTRACE_GETSIGMASK returned {mask:#x} without SIGUSR1"
        )));
    }
    Ok(String::new())
}

pub fn seccomp_suspend() -> R {
    let c = traced_child(|| true)?;
    kernel::ptrace::ptrace_setoptions(c.pid(), PTRACE_O_SUSPEND_SECCOMP).no(
        "PTRACE_O_SUSPEND_SECCOMP (CONFIG_SECCOMP, CONFIG_CHECKPOINT_RESTORE, CAP_SYS_ADMIN)",
    )?;
    Ok(String::new())
}

pub fn seccomp_filters() -> R {
    // "ret ALLOW" (0x7fff0000) as a one-instruction filter: struct
    // sock_filter { u16 code; u8 jt, jf; u32 k } in native byte order.
    let mut insn = [0u8; 8];
    insn[..2].copy_from_slice(&0x06u16.to_ne_bytes());
    insn[4..].copy_from_slice(&0x7fff_0000u32.to_ne_bytes());
    let c = traced_child(|| {
        kernel::process::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0).is_ok()
            && kernel::process::set_seccomp_filter(&insn).is_ok()
    })?;
    let n = kernel::ptrace::ptrace_seccomp_filter_len(c.pid(), 0).no(
        "ptrace(PTRACE_SECCOMP_GET_FILTER) (CONFIG_SECCOMP_FILTER, CONFIG_CHECKPOINT_RESTORE)",
    )?;
    if n != 1 {
        return Err(no(format!(
            "PTRACE_SECCOMP_GET_FILTER reports {n} instructions, expected 1"
        )));
    }
    Ok(String::new())
}

pub fn get_rseq_conf() -> R {
    let c = traced_child(|| true)?;
    let conf = kernel::ptrace::rseq_config(c.pid()).no("ptrace(PTRACE_GET_RSEQ_CONFIGURATION)")?;
    let (area, size) = (conf.abi_pointer, conf.abi_size);
    Ok(if area != 0 {
        format!("the child has a {size}-byte rseq area registered")
    } else {
        String::new()
    })
}

#[inline(never)]
fn breakpoint_target() -> i32 {
    std::hint::black_box(7)
}

#[cfg(target_arch = "x86_64")]
pub fn breakpoints() -> R {
    let mut c = kernel::clone::fork_child(|_cx| {
        if nix::sys::ptrace::traceme().is_err() {
            return 10;
        }
        kernel::signal::raise(Signal::SIGSTOP);
        std::hint::black_box(breakpoint_target as fn() -> i32)()
    })
    .fail("fork")?;
    c.wait_timeout(CHILD_TIMEOUT, WaitPidFlag::WUNTRACED)
        .fail("waiting for the child to stop")?;
    // offsetof(struct user, u_debugreg) on x86-64.
    const DEBUGREG: u64 = 848;
    let target = i64::try_from(breakpoint_target as fn() -> i32 as usize).unwrap_or(0);
    nix::sys::ptrace::write_user(c.pid(), DEBUGREG as _, target).no("PTRACE_POKEUSER DR0")?;
    nix::sys::ptrace::write_user(c.pid(), (DEBUGREG + 7 * 8) as _, 1).no("PTRACE_POKEUSER DR7")?;
    nix::sys::ptrace::cont(c.pid(), None).fail("PTRACE_CONT")?;
    match c
        .wait_timeout(CHILD_TIMEOUT, WaitPidFlag::WUNTRACED)
        .fail("waiting for the breakpoint")?
    {
        WaitStatus::Stopped(_, Signal::SIGTRAP) => Ok(String::new()),
        other => Err(no(format!(
            "the hardware breakpoint did not trap: {other:?}"
        ))),
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub fn breakpoints() -> R {
    let _ = breakpoint_target();
    Err(Outcome::NotApplicable(
        "hardware breakpoints are probed on x86-64 only".into(),
    ))
}

pub fn clone3_set_tid() -> R {
    match kernel::clone::clone3_probe_set_tid() {
        nix::errno::Errno::EINVAL => Ok(String::new()),
        nix::errno::Errno::ENOSYS => Err(no("clone3: ENOSYS (kernel older than 5.3)")),
        nix::errno::Errno::E2BIG => Err(no("clone3 does not know set_tid (kernel older than 5.5)")),
        e => Err(error(format!(
            "clone3 with an invalid set_tid answered {e}"
        ))),
    }
}

pub fn clone3() -> R {
    let mut c =
        Child::adopt(kernel::clone::clone3_exit(0, libc::SIGCHLD as u64, &[], 7).no("clone3")?);
    match c.exit_code(CHILD_TIMEOUT) {
        Ok(7) => Ok(String::new()),
        other => Err(error(format!("the clone3 child ended with {other:?}"))),
    }
}

pub fn set_tid() -> R {
    let last: i32 = read("/proc/sys/kernel/ns_last_pid")?
        .trim()
        .parse()
        .fail("ns_last_pid")?;
    let max: i32 = read("/proc/sys/kernel/pid_max")?
        .trim()
        .parse()
        .fail("pid_max")?;
    let mut want = last + 1000;
    for _ in 0..16 {
        if want >= max {
            want = 1000;
        }
        if std::fs::metadata(format!("/proc/{want}")).is_ok() {
            want += 37;
            continue;
        }
        match kernel::clone::clone3_exit(0, libc::SIGCHLD as u64, &[want], 0).map(Child::adopt) {
            Ok(mut c) => {
                let got = c.pid().as_raw();
                let _ = c.exit_code(CHILD_TIMEOUT);
                return if got == want {
                    Ok(format!("child created with PID {want}"))
                } else {
                    Err(no(format!("asked for PID {want}, got {got}")))
                };
            }
            Err(nix::errno::Errno::EEXIST) => want += 37,
            Err(e) => {
                return Err(no(format!(
                    "clone3 with set_tid: {e} (needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN)"
                )));
            }
        }
    }
    Err(error("no free PID found to try"))
}

pub fn clone_newpid_parent() -> R {
    let (r, w) = pipe().fail("pipe")?;
    let mut c = kernel::clone::fork_child(|cx| {
        match cx.clone3_exit((libc::CLONE_PARENT | libc::CLONE_NEWPID) as u64, 0, 0) {
            Ok(gc) => {
                let pid = gc.as_raw();
                if nix::unistd::write(&w, &pid.to_ne_bytes()).is_err() {
                    2
                } else {
                    0
                }
            }
            Err(_) => 1,
        }
    })
    .fail("fork")?;
    let code = c.exit_code(CHILD_TIMEOUT);
    drop(w);
    let mut b = [0u8; 4];
    let got = std::fs::File::from(r).read_exact(&mut b).is_ok();
    if got {
        // The grandchild became our child (CLONE_PARENT): reap it.
        let mut gc = Child::adopt(Pid::from_raw(i32::from_ne_bytes(b)));
        let _ = gc.wait_timeout(CHILD_TIMEOUT, WaitPidFlag::__WALL);
    }
    match code {
        Ok(0) if got => Ok(String::new()),
        Ok(1) => Err(no("clone(CLONE_PARENT | CLONE_NEWPID) was refused")),
        other => Err(error(format!("the child ended with {other:?}"))),
    }
}

fn sleeper() -> Result<Child, Outcome> {
    kernel::clone::fork_child(|_cx| {
        loop {
            nix::unistd::pause();
        }
    })
    .fail("fork")
}

pub fn pidfd_store() -> R {
    let pidfd = kernel::fd::pidfd_open(getpid()).no("pidfd_open")?;
    let (r, _w) = pipe().fail("pipe")?;
    let dup = kernel::fd::pidfd_getfd(pidfd.as_fd(), r.as_raw_fd()).no("pidfd_getfd")?;
    let (a, b) = (
        nix::sys::stat::fstat(r.as_fd()).fail("fstat")?,
        nix::sys::stat::fstat(dup.as_fd()).fail("fstat")?,
    );
    if a.st_ino != b.st_ino {
        return Err(no("pidfd_getfd returned another file"));
    }
    Ok(String::new())
}

pub fn pidfd_open() -> R {
    let mut c = sleeper()?;
    let pidfd = kernel::fd::pidfd_open(c.pid()).no("pidfd_open")?;
    kill(c.pid(), Signal::SIGKILL).fail("kill")?;
    let mut fds = [nix::poll::PollFd::new(
        pidfd.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    let n = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(2000u16)).fail("poll")?;
    let _ = c.exit_code(CHILD_TIMEOUT);
    if n != 1 {
        return Err(no(
            "the pidfd did not become readable when the process died",
        ));
    }
    Ok(String::new())
}

pub fn pidfd_send_signal() -> R {
    let mut c = sleeper()?;
    let pidfd = kernel::fd::pidfd_open(c.pid()).no("pidfd_open")?;
    kernel::fd::pidfd_send_signal(pidfd.as_fd(), libc::SIGTERM).no("pidfd_send_signal")?;
    match c.exit_code(CHILD_TIMEOUT) {
        Err(s) if s.contains("SIGTERM") => Ok(String::new()),
        other => Err(no(format!("the signal did not arrive: {other:?}"))),
    }
}

pub fn pidfd_getfd() -> R {
    let (r, w) = pipe().fail("pipe")?;
    let _c = kernel::clone::fork_child(|_cx| {
        // A pipe only the child has, with data in it; tell the parent its fd number.
        let Ok((pr, pw)) = pipe() else { return 1 };
        if nix::unistd::write(&pw, b"from child").is_err() {
            return 2;
        }
        let n = pr.as_raw_fd().to_ne_bytes();
        if nix::unistd::write(&w, &n).is_err() {
            return 3;
        }
        loop {
            nix::unistd::pause();
        }
    })
    .fail("fork")?;
    let mut b = [0u8; 4];
    std::fs::File::from(r)
        .read_exact(&mut b)
        .fail("reading the child's fd number")?;
    let pidfd = kernel::fd::pidfd_open(_c.pid()).no("pidfd_open")?;
    let fd = kernel::fd::pidfd_getfd(pidfd.as_fd(), i32::from_ne_bytes(b))
        .no("pidfd_getfd (CAP_SYS_PTRACE)")?;
    let mut buf = [0u8; 10];
    std::fs::File::from(fd)
        .read_exact(&mut buf)
        .fail("reading the stolen pipe")?;
    if &buf != b"from child" {
        return Err(no("the duplicated fd does not carry the child's data"));
    }
    Ok(String::new())
}

pub fn process_vm_readv() -> R {
    let cell = Box::new(std::cell::Cell::new(0u64));
    let addr = std::ptr::from_ref(&*cell) as usize;
    let mut c = kernel::clone::fork_child(|_cx| {
        cell.set(0xfeed_f00d);
        kernel::signal::raise(Signal::SIGSTOP);
        0
    })
    .fail("fork")?;
    c.wait_timeout(CHILD_TIMEOUT, WaitPidFlag::WUNTRACED)
        .fail("waiting for the child")?;
    let mut v = [0u8; 8];
    let n = nix::sys::uio::process_vm_readv(
        c.pid(),
        &mut [std::io::IoSliceMut::new(&mut v)],
        &[RemoteIoVec { base: addr, len: 8 }],
    )
    .no("process_vm_readv")?;
    if n != 8 || u64::from_ne_bytes(v) != 0xfeed_f00d {
        return Err(no("process_vm_readv read the wrong value"));
    }
    Ok(String::new())
}

pub fn process_vm_writev() -> R {
    let cell = Box::new(std::cell::Cell::new(0u64));
    let addr = std::ptr::from_ref(&*cell) as usize;
    let mut c = kernel::clone::fork_child(|_cx| {
        kernel::signal::raise(Signal::SIGSTOP);
        if cell.get() == 0xbeef { 0 } else { 1 }
    })
    .fail("fork")?;
    c.wait_timeout(CHILD_TIMEOUT, WaitPidFlag::WUNTRACED)
        .fail("waiting for the child")?;
    let v = 0xbeefu64.to_ne_bytes();
    nix::sys::uio::process_vm_writev(
        c.pid(),
        &[std::io::IoSlice::new(&v)],
        &[RemoteIoVec { base: addr, len: 8 }],
    )
    .no("process_vm_writev")?;
    kill(c.pid(), Signal::SIGCONT).fail("SIGCONT")?;
    match c.exit_code(CHILD_TIMEOUT) {
        Ok(0) => Ok(String::new()),
        other => Err(no(format!(
            "the child did not see the written value: {other:?}"
        ))),
    }
}

fn seized() -> Result<Child, Outcome> {
    let mut c = sleeper()?;
    nix::sys::ptrace::seize(c.pid(), nix::sys::ptrace::Options::empty()).no("PTRACE_SEIZE")?;
    nix::sys::ptrace::interrupt(c.pid()).no("PTRACE_INTERRUPT")?;
    match c
        .wait_timeout(CHILD_TIMEOUT, WaitPidFlag::__WALL)
        .fail("waiting for the interrupt stop")?
    {
        WaitStatus::PtraceEvent(_, Signal::SIGTRAP, 128) => Ok(c),
        other => Err(no(format!(
            "PTRACE_INTERRUPT gave {other:?}, not a PTRACE_EVENT_STOP"
        ))),
    }
}

pub fn ptrace_seize() -> R {
    seized().map(|_| String::new())
}

pub fn ptrace_syscall_info() -> R {
    let c = seized()?;
    let info = nix::sys::ptrace::syscall_info(c.pid()).no("PTRACE_GET_SYSCALL_INFO")?;
    if info.instruction_pointer == 0 {
        return Err(no(
            "PTRACE_GET_SYSCALL_INFO returned no instruction pointer",
        ));
    }
    Ok(String::new())
}

pub fn ptrace_regsets() -> R {
    let c = seized()?;
    let mut sizes = Vec::new();
    #[cfg(target_arch = "x86_64")]
    let sets: [(u32, &str); 2] = [(1, "NT_PRSTATUS"), (0x202, "NT_X86_XSTATE")];
    #[cfg(not(target_arch = "x86_64"))]
    let sets: [(u32, &str); 2] = [(1, "NT_PRSTATUS"), (2, "NT_PRFPREG")];
    for (nt, name) in sets {
        let len = kernel::ptrace::getregset(c.pid(), nt)
            .no(&format!("PTRACE_GETREGSET {name}"))?
            .len();
        sizes.push(format!("{name} {len} bytes"));
    }
    Ok(sizes.join(", "))
}

pub fn timer_cr_ids() -> R {
    const PR_TIMER_CREATE_RESTORE_IDS: i32 = 77;
    let mut c = kernel::clone::fork_child(|_cx| {
        if kernel::process::prctl(PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0).is_err() {
            return 1;
        }
        match kernel::timer::timer_create_raw(libc::CLOCK_MONOTONIC, libc::SIGUSR1, 0, Some(4242)) {
            Ok(4242) => 0,
            Ok(_) => 2,
            Err(_) => 3,
        }
    })
    .fail("fork")?;
    match c.exit_code(CHILD_TIMEOUT) {
        Ok(0) => Ok(String::new()),
        Ok(1) => Err(no(
            "prctl(PR_TIMER_CREATE_RESTORE_IDS) failed (kernel older than 6.17)",
        )),
        Ok(2) => Err(no("timer_create ignored the requested id")),
        Ok(3) => Err(no("timer_create with a requested id failed")),
        other => Err(error(format!("child ended with {other:?}"))),
    }
}

pub fn rseq() -> R {
    match kernel::process::rseq_probe() {
        nix::errno::Errno::ENOSYS => Err(no("rseq: ENOSYS (CONFIG_RSEQ)")),
        _ => {
            let size = kernel::process::auxv(27);
            Ok(if size > 0 {
                format!("rseq feature size {size}")
            } else {
                String::new()
            })
        }
    }
}

pub fn landlock() -> R {
    let v = kernel::process::landlock_abi_version()
        .no("landlock_create_ruleset (CONFIG_SECURITY_LANDLOCK, lsm=landlock)")?;
    Ok(format!(
        "ABI version {v}; processes inside a Landlock domain cannot be dumped"
    ))
}

pub fn cap_checkpoint_restore() -> R {
    let last: u32 = read("/proc/sys/kernel/cap_last_cap")?
        .trim()
        .parse()
        .fail("cap_last_cap")?;
    if last < 40 {
        return Err(no(format!(
            "the kernel knows capabilities up to {last}; CAP_CHECKPOINT_RESTORE (40) needs 5.9"
        )));
    }
    if !has_cap(40) {
        return Err(no(
            "the kernel has CAP_CHECKPOINT_RESTORE but this process does not hold it",
        ));
    }
    Ok(String::new())
}

/// Capabilities C/R uses and what breaks without each.
const CAPS: &[(u32, &str, &str)] = &[
    (
        21,
        "CAP_SYS_ADMIN",
        "namespaces, mounts, PTRACE_O_SUSPEND_SECCOMP, most of restore",
    ),
    (
        19,
        "CAP_SYS_PTRACE",
        "seizing tasks, pidfd_getfd, /proc/PID/map_files",
    ),
    (
        40,
        "CAP_CHECKPOINT_RESTORE",
        "clone3 set_tid and ns_last_pid without CAP_SYS_ADMIN",
    ),
    (
        12,
        "CAP_NET_ADMIN",
        "TCP_REPAIR, the nftables network lock, network namespaces",
    ),
    (
        24,
        "CAP_SYS_RESOURCE",
        "raising rlimits above the current hard limits, pipe buffers above fs.pipe-max-size, \
         lowering oom_score_adj, POSIX queues beyond their limits, and the legacy PR_SET_MM_* calls",
    ),
    (6, "CAP_SETGID", "restoring gids and supplementary groups"),
    (7, "CAP_SETUID", "restoring uids"),
    (8, "CAP_SETPCAP", "restoring capability sets and securebits"),
    (
        1,
        "CAP_DAC_OVERRIDE",
        "opening files the dumped task could open but we cannot",
    ),
    (
        3,
        "CAP_FOWNER",
        "restoring file modes and owners of ghost files",
    ),
    (13, "CAP_NET_RAW", "packet and raw sockets"),
    (29, "CAP_AUDIT_CONTROL", "restoring loginuid"),
    (
        23,
        "CAP_SYS_NICE",
        "restoring scheduling policies and nice values below 0",
    ),
];

pub fn caps() -> R {
    let eff = cap_eff();
    let missing: Vec<String> = CAPS
        .iter()
        .filter(|(n, _, _)| eff & (1u64 << n) == 0)
        .map(|(_, name, why)| format!("{name} (breaks {why})"))
        .collect();
    if missing.is_empty() {
        Ok(format!("all {} capabilities C/R uses are held", CAPS.len()))
    } else {
        Err(no(format!("missing {}", missing.join("; "))))
    }
}

/// The int at byte `at` of a raw `siginfo_t` (si_signo at 0, si_code at 8).
fn int_at(info: &[u8], at: usize) -> i32 {
    let mut b = [0u8; 4];
    if let Some(v) = info.get(at..at + 4) {
        b.copy_from_slice(v);
    }
    i32::from_ne_bytes(b)
}
