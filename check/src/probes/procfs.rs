//! Probes of /proc and sysctl interfaces: map_files, stat, status, fdinfo of
//! event objects, ns_last_pid and the IPC next-id knobs, loginuid, timers.

use stasis_kernel as kernel;
use std::os::fd::{AsFd, AsRawFd};

use nix::fcntl::{FlockArg, OFlag, open};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::stat::Mode;
use nix::unistd::getpid;

use super::common::{CHILD_TIMEOUT, R, Step, error, field, no, read};

fn fdinfo(fd: &impl AsFd) -> Result<String, crate::Outcome> {
    read(&format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd()))
}

pub fn map_files() -> R {
    let dir = std::fs::read_dir("/proc/self/map_files").no("listing /proc/self/map_files")?;
    let mut n = 0;
    for e in dir.flatten() {
        std::fs::read_link(e.path()).no("reading a /proc/self/map_files link")?;
        n += 1;
    }
    if n == 0 {
        return Err(no("/proc/self/map_files is empty"));
    }
    Ok(format!("{n} file-backed areas readable"))
}

pub fn proc_stat() -> R {
    let s = read("/proc/self/stat")?;
    // The command may hold spaces and parentheses: fields start after the last ')'.
    let rest = s
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| no("no ')' in /proc/self/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 is fields[0]; CRIU needs up to field 52 (exit_code).
    if fields.len() < 50 {
        return Err(no(format!(
            "/proc/self/stat has {} fields, need 52 (start_data ... exit_code)",
            fields.len() + 2
        )));
    }
    let nums: Result<Vec<u64>, _> = fields[42..50].iter().map(|f| f.parse::<u64>()).collect();
    let nums = nums.no("parsing the memory layout fields of /proc/self/stat")?;
    if nums[3] == 0 || nums[4] <= nums[3] {
        return Err(no(
            "arg_start/arg_end in /proc/self/stat are not a valid range",
        ));
    }
    Ok(format!("{} fields", fields.len() + 2))
}

pub fn ns_last_pid() -> R {
    let path = "/proc/sys/kernel/ns_last_pid";
    let cur = read(path)?;
    open(path, OFlag::O_WRONLY | OFlag::O_CLOEXEC, Mode::empty())
        .no("opening ns_last_pid for writing")?;
    Ok(format!("writable (now {})", cur.trim()))
}

pub fn ipc_next_id() -> R {
    for name in ["sem_next_id", "msg_next_id", "shm_next_id"] {
        let path = format!("/proc/sys/kernel/{name}");
        read(&path)?;
        open(
            path.as_str(),
            OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .no(&format!("opening {path} for writing"))?;
    }
    Ok("sem/msg/shm_next_id writable".into())
}

pub fn fdinfo_ext() -> R {
    let efd = EventFd::from_value_and_flags(42, EfdFlags::EFD_CLOEXEC).fail("eventfd")?;
    let text = fdinfo(&efd)?;
    match field(&text, "eventfd-count:") {
        Some(v) if u64::from_str_radix(v, 16).ok() == Some(42) || v == "42" => {}
        other => {
            return Err(no(format!(
                "eventfd fdinfo: eventfd-count is {other:?}, expected 42"
            )));
        }
    }

    let ep = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).fail("epoll_create")?;
    ep.add(
        efd.as_fd(),
        EpollEvent::new(EpollFlags::EPOLLIN, 0x5ca1ab1e),
    )
    .fail("epoll_ctl")?;
    let text = fdinfo(&ep.0)?;
    let want = format!("tfd: {:>8}", efd.as_fd().as_raw_fd());
    let line = text
        .lines()
        .find(|l| l.starts_with(&want))
        .ok_or_else(|| no("epoll fdinfo has no tfd: line"))?;
    let data = line.split_whitespace().skip_while(|w| *w != "data:").nth(1);
    if data != Some("5ca1ab1e") {
        return Err(no(format!(
            "epoll fdinfo line lacks the registered data: {line}"
        )));
    }

    let mut mask = SigSet::empty();
    mask.add(Signal::SIGUSR2);
    let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC).fail("signalfd")?;
    let text = fdinfo(&sfd)?;
    let sig = field(&text, "sigmask:").and_then(|v| u64::from_str_radix(v, 16).ok());
    if sig != Some(1 << (Signal::SIGUSR2 as u32 - 1)) {
        return Err(no(format!("signalfd fdinfo: sigmask is {sig:?}")));
    }

    let ino = Inotify::init(InitFlags::IN_CLOEXEC).fail("inotify_init")?;
    ino.add_watch("/proc/self", AddWatchFlags::IN_ACCESS)
        .fail("inotify_add_watch")?;
    let text = fdinfo(&ino)?;
    let line = text
        .lines()
        .find(|l| l.starts_with("inotify wd:"))
        .ok_or_else(|| no("inotify fdinfo has no wd: line"))?;
    if !line.contains("mask:1") || !line.contains("fhandle-bytes:") {
        return Err(no(format!(
            "inotify fdinfo line lacks mask or file handle: {line}"
        )));
    }
    Ok("eventfd, epoll, signalfd and inotify fdinfo complete".into())
}

pub fn mnt_id() -> R {
    let f = std::fs::File::open("/proc/self/stat").fail("open")?;
    let text = fdinfo(&f)?;
    field(&text, "mnt_id:")
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| no("no mnt_id: in fdinfo"))?;
    Ok(String::new())
}

pub fn fdinfo_lock() -> R {
    let f = tempfile::tempfile().fail("creating a temporary file")?;
    let f = nix::fcntl::Flock::lock(f, FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| error(format!("flock: {e}")))?;
    let text = read(&format!("/proc/self/fdinfo/{}", f.as_raw_fd()))?;
    let line = text
        .lines()
        .find(|l| l.starts_with("lock:"))
        .ok_or_else(|| no("no lock: line in fdinfo of a flock()ed file"))?;
    if !line.contains("FLOCK") || !line.contains("WRITE") {
        return Err(no(format!("unexpected lock line: {line}")));
    }
    Ok(String::new())
}

pub fn ns_pid() -> R {
    let s = read("/proc/self/status")?;
    let v = field(&s, "NSpid:").ok_or_else(|| no("no NSpid: line in /proc/self/status"))?;
    let me = getpid().as_raw().to_string();
    if v.split_whitespace().last() != Some(me.as_str()) {
        return Err(no(format!("NSpid: {v} does not end with our pid {me}")));
    }
    Ok(format!("NSpid: {v}"))
}

pub fn cgroupns() -> R {
    std::fs::metadata("/proc/self/ns/cgroup").no("/proc/self/ns/cgroup")?;
    Ok(String::new())
}

pub fn timens() -> R {
    let s = read("/proc/self/timens_offsets")?;
    if !s.contains("monotonic") || !s.contains("boottime") {
        return Err(no(format!("unexpected timens_offsets: {s:?}")));
    }
    Ok(String::new())
}

pub fn userns() -> R {
    std::fs::metadata("/proc/self/ns/user").no("/proc/self/ns/user")?;
    kernel::mm::mm_map_size().no("prctl(PR_SET_MM, PR_SET_MM_MAP_SIZE)")?;
    Ok(String::new())
}

pub fn loginuid() -> R {
    let cur = read("/proc/self/loginuid")?;
    let cur: u32 = cur.trim().parse().no("parsing /proc/self/loginuid")?;
    // Unset it in a child (loginuid is per process), read it back, set it again.
    let orig = cur.to_string();
    let mut child = kernel::clone::fork_child(|_cx| {
        let set = |v: &[u8]| -> bool {
            match open(c"/proc/self/loginuid", OFlag::O_WRONLY, Mode::empty()) {
                Ok(fd) => nix::unistd::write(&fd, v).is_ok(),
                Err(_) => false,
            }
        };
        if !set(b"4294967295") {
            return 1;
        }
        let mut buf = [0u8; 16];
        let n = match open(c"/proc/self/loginuid", OFlag::O_RDONLY, Mode::empty()) {
            Ok(fd) => nix::unistd::read(&fd, &mut buf).unwrap_or(0),
            Err(_) => 0,
        };
        if &buf[..n.min(16)] != b"4294967295" {
            return 2;
        }
        if !set(orig.as_bytes()) {
            return 3;
        }
        0
    })
    .fail("fork")?;
    match child.exit_code(CHILD_TIMEOUT) {
        Ok(0) => Ok(format!("loginuid {cur} can be unset and restored")),
        Ok(1) => Err(no(
            "writing 4294967295 to /proc/self/loginuid failed (CAP_AUDIT_CONTROL, or an immutable loginuid)",
        )),
        Ok(2) => Err(no("/proc/self/loginuid did not read back as unset")),
        Ok(3) => Err(no("restoring the original loginuid failed")),
        Ok(c) => Err(error(format!("child exited with {c}"))),
        Err(e) => Err(error(e)),
    }
}

pub fn posix_timers() -> R {
    // The child creates a timer with a known signal and stops; we read its
    // /proc/PID/timers from outside, as a dump does.
    let mut child = kernel::clone::fork_child(|_cx| {
        let Ok(id) = kernel::timer::timer_create_raw(
            libc::CLOCK_MONOTONIC,
            libc::SIGRTMIN() + 3,
            0x5eed,
            None,
        ) else {
            return 1;
        };
        let _ = id;
        kernel::signal::raise(Signal::SIGSTOP);
        0
    })
    .fail("fork")?;
    let st = child
        .wait_timeout(CHILD_TIMEOUT, nix::sys::wait::WaitPidFlag::WUNTRACED)
        .fail("waiting for the child to stop")?;
    if !matches!(st, nix::sys::wait::WaitStatus::Stopped(..)) {
        return Err(no(format!("timer_create failed in the child ({st:?})")));
    }
    let text = read(&format!("/proc/{}/timers", child.pid()))?;
    let sig = format!("signal: {}/", libc::SIGRTMIN() + 3);
    if !text.contains("ID:") || !text.contains(&sig) || !text.contains("ClockID: 1") {
        return Err(no(format!("/proc/PID/timers lacks the timer: {text:?}")));
    }
    Ok(String::new())
}

pub fn mqueue_state() -> R {
    use nix::mqueue::{MQ_OFlag, MqAttr, mq_close, mq_open, mq_send, mq_unlink};
    let name = std::ffi::CString::new(format!(
        "/stasis-probe-{}-{}",
        getpid(),
        kernel::process::gettid()
    ))
    .fail("name")?;
    let attr = MqAttr::new(0, 4, 64, 0);
    let mq = mq_open(
        name.as_c_str(),
        MQ_OFlag::O_RDWR | MQ_OFlag::O_CREAT | MQ_OFlag::O_EXCL | MQ_OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
        Some(&attr),
    )
    .no("mq_open (CONFIG_POSIX_MQUEUE)")?;
    let _ = mq_unlink(name.as_c_str());
    let r = (|| {
        mq_send(&mq, b"hello", 7).fail("mq_send")?;
        // read(2) on a queue descriptor returns its state line.
        let mut buf = [0u8; 128];
        let n = nix::unistd::read(mq.as_fd(), &mut buf).no("read(2) of the queue state")?;
        let s = String::from_utf8_lossy(&buf[..n]).to_string();
        if !s.contains("QSIZE:5") {
            return Err(no(format!(
                "queue state {s:?} does not show the 5 queued bytes"
            )));
        }
        Ok(
            "queue state readable; messages are dumped by receiving and re-sending them"
                .to_string(),
        )
    })();
    let _ = mq_close(mq);
    r
}

pub fn pidfd_fdinfo() -> R {
    let pidfd = kernel::fd::pidfd_open(getpid()).no("pidfd_open")?;
    let text = fdinfo(&pidfd)?;
    let pid = field(&text, "Pid:").ok_or_else(|| no("no Pid: line in pidfd fdinfo"))?;
    if pid != getpid().as_raw().to_string() {
        return Err(no(format!("pidfd fdinfo Pid: {pid}")));
    }
    if field(&text, "NSpid:").is_none() {
        return Err(no("no NSpid: line in pidfd fdinfo"));
    }
    Ok(String::new())
}

pub fn procmap_query() -> R {
    let maps = std::fs::File::open("/proc/self/maps").fail("open /proc/self/maps")?;
    let probe = 0u8;
    let addr = std::ptr::from_ref(&probe) as u64;
    let (start, end) = kernel::mm::procmap_query(maps.as_fd(), addr).no("ioctl(PROCMAP_QUERY)")?;
    if !(start <= addr && addr < end) {
        return Err(no(format!(
            "PROCMAP_QUERY returned {start:#x}-{end:#x}, not covering {addr:#x}"
        )));
    }
    Ok("VMAs can be queried without parsing /proc/PID/maps".into())
}

pub fn nsfs_ioctl() -> R {
    let f = std::fs::File::open("/proc/self/ns/net").fail("open /proc/self/ns/net")?;
    let t = kernel::sched::ns_type(f.as_fd()).no("ioctl(NS_GET_NSTYPE)")?;
    if t != i64::from(libc::CLONE_NEWNET) {
        return Err(no(format!("NS_GET_NSTYPE returned {t:#x}")));
    }
    Ok(String::new())
}

pub fn fanotify() -> R {
    use nix::sys::fanotify::{EventFFlags, Fanotify, InitFlags as FInit, MarkFlags, MaskFlags};
    let fa = Fanotify::init(
        FInit::FAN_CLASS_NOTIF | FInit::FAN_CLOEXEC,
        EventFFlags::O_RDONLY,
    )
    .no("fanotify_init")?;
    fa.mark(
        MarkFlags::FAN_MARK_ADD,
        MaskFlags::FAN_OPEN,
        nix::fcntl::AT_FDCWD,
        Some("/proc/self"),
    )
    .no("fanotify_mark")?;
    let text = fdinfo(&fa)?;
    if !text.contains("fanotify flags:") || !text.contains("fanotify ino:") {
        return Err(no("fanotify fdinfo lacks the flags or the mark"));
    }
    Ok(String::new())
}
