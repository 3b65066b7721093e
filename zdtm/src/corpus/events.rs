//! Event objects: eventfd counters (plain and semaphore), epoll with
//! registered fds and their data words, signalfd with a pending signal, and
//! inotify watches (checked by an event after restore).
#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};

use super::util::{fdinfo, read_n, sigrt, write_all};
use crate::meta::{Category::Events, Flavor, Test};
use crate::testlib::{Ctx, OrFail, Res, slurp, status_field};
use crate::{ensure, ensure_eq};

pub(crate) const TESTS: &[Test] = &[
    Test::new("eventfd00", Events, "eventfd counter 12345", eventfd00),
    Test::new(
        "eventfd-sem",
        Events,
        "semaphore eventfd counts down by one",
        eventfd_sem,
    ),
    Test::new(
        "epoll00",
        Events,
        "epoll with three fds, their events and data words",
        epoll00,
    ),
    Test::new(
        "signalfd00",
        Events,
        "signalfd mask and a pending queued signal",
        signalfd00,
    ),
    Test::new(
        "inotify00",
        Events,
        "inotify watch reports a file created after restore",
        inotify00,
    ),
    Test::new(
        "inotify-wds",
        Events,
        "inotify watches keep their descriptors 2 and 3 (1 was removed)",
        inotify_wds,
    ),
    Test::new(
        "signalfd-thread",
        Events,
        "a thread's signalfd reads a signal pending on that thread",
        signalfd_thread,
    ),
    Test::new(
        "fanotify-marks",
        Events,
        "fanotify group with an inode mark, an ignore mask and a mount mark, as fdinfo shows them",
        fanotify_marks,
    )
    // fanotify_init needs CAP_SYS_ADMIN in the initial user namespace.
    .flavors(&[Flavor::H, Flavor::Ns]),
    Test::new(
        "fanotify00",
        Events,
        "fanotify mark reports an open after restore",
        fanotify00,
    )
    // fanotify_init needs CAP_SYS_ADMIN in the initial user namespace.
    .flavors(&[Flavor::H, Flavor::Ns]),
    Test::new(
        "epoll-nested",
        Events,
        "an epoll set watching another epoll set",
        epoll_nested,
    ),
    Test::new(
        "eventfd-shared",
        Events,
        "one eventfd shared by a parent and its child",
        eventfd_shared,
    ),
    Test::new(
        "epoll-closed-tfd",
        Events,
        "epoll watching a file whose registered fd was closed: C/R must refuse",
        epoll_closed_tfd,
    )
    .crfail(),
];

fn eventfd(init: u32, flags: i32) -> Res<OwnedFd> {
    // SAFETY: eventfd returns a new fd or -1.
    let fd = unsafe { libc::eventfd(init, flags | libc::EFD_CLOEXEC) };
    nix::errno::Errno::result(fd).or_fail("eventfd")?;
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn read_u64(fd: &impl AsFd) -> Res<Option<u64>> {
    let mut b = [0u8; 8];
    match nix::unistd::read(fd, &mut b) {
        Ok(8) => Ok(Some(u64::from_ne_bytes(b))),
        Err(nix::errno::Errno::EAGAIN) => Ok(None),
        r => Err(crate::testlib::Fail::Sys(format!("read counter: {r:?}"))),
    }
}

fn eventfd00(t: &mut Ctx) -> Res {
    let fd = eventfd(12345, libc::EFD_NONBLOCK)?;
    t.wait("added one", || write_all(&fd, &1u64.to_ne_bytes()))?;
    ensure_eq!(
        "eventfd-count in fdinfo",
        status_field(&fdinfo(&fd)?, "eventfd-count"),
        Some("3039".to_owned())
    );
    ensure_eq!("counter", read_u64(&fd)?, Some(12345));
    ensure_eq!("counter after reading", read_u64(&fd)?, None);
    Ok(())
}

fn eventfd_sem(t: &mut Ctx) -> Res {
    let fd = eventfd(3, libc::EFD_NONBLOCK | libc::EFD_SEMAPHORE)?;
    t.wait("took one unit", || read_u64(&fd).map(drop))?;
    for i in 0..3 {
        ensure_eq!(format!("semaphore read {i}"), read_u64(&fd)?, Some(1));
    }
    ensure_eq!("empty semaphore", read_u64(&fd)?, None);
    Ok(())
}

fn epoll00(t: &mut Ctx) -> Res {
    let ep = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).or_fail("epoll_create")?;
    let ev = eventfd(1, libc::EFD_NONBLOCK)?;
    let (pr, pw) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).or_fail("pipe")?;
    let quiet = eventfd(0, libc::EFD_NONBLOCK)?;
    ep.add(&ev, EpollEvent::new(EpollFlags::EPOLLIN, 0x1111))
        .or_fail("add eventfd")?;
    ep.add(
        &pw,
        EpollEvent::new(EpollFlags::EPOLLOUT | EpollFlags::EPOLLET, 0x2222),
    )
    .or_fail("add pipe")?;
    ep.add(&quiet, EpollEvent::new(EpollFlags::EPOLLIN, 0x3333))
        .or_fail("add quiet eventfd")?;
    let _ = &pr;
    t.wait("removed the eventfd from the set", || {
        ep.delete(&ev).or_fail("EPOLL_CTL_DEL")
    })?;
    let info = fdinfo(ep.0.as_fd())?;
    let tfds = info.lines().filter(|l| l.starts_with("tfd:")).count();
    ensure_eq!("registered fds in fdinfo", tfds, 3);
    let mut events = [EpollEvent::empty(); 8];
    let n = ep.wait(&mut events, 0u8).or_fail("epoll_wait")?;
    let mut got: Vec<(u64, i32)> = events[..n]
        .iter()
        .map(|e| (e.data(), e.events().bits()))
        .collect();
    got.sort_unstable();
    let want = vec![
        (0x1111, EpollFlags::EPOLLIN.bits()),
        (0x2222, EpollFlags::EPOLLOUT.bits()),
    ];
    ensure_eq!("ready events (data, events)", got, want);
    Ok(())
}

fn signalfd00(t: &mut Ctx) -> Res {
    let s = sigrt(3);
    let set = super::util::sigset(&[s, libc::SIGUSR1]);
    super::util::block_sigs(&[s, libc::SIGUSR1]);
    // SAFETY: a valid mask pointer; returns a new fd.
    let fd = unsafe { libc::signalfd(-1, &raw const set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
    nix::errno::Errno::result(fd).or_fail("signalfd")?;
    // SAFETY: a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let v = libc::sigval {
        sival_ptr: 31337usize as *mut libc::c_void,
    };
    // SAFETY: queue to ourselves with an integer payload.
    nix::errno::Errno::result(unsafe { libc::sigqueue(nix::unistd::getpid().as_raw(), s, v) })
        .or_fail("sigqueue")?;
    t.wait("read the signal early", || read_n(&fd, 128).map(drop))?;
    let mask = status_field(&fdinfo(&fd)?, "sigmask").unwrap_or_default();
    let want = super::util::sigbit(s) | super::util::sigbit(libc::SIGUSR1);
    ensure_eq!(
        "sigmask in fdinfo",
        u64::from_str_radix(&mask, 16).unwrap_or(0),
        want
    );
    let b = read_n(&fd, 128)?;
    ensure_eq!("signalfd_siginfo size", b.len(), 128);
    let word = |o: usize| u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    ensure_eq!("ssi_signo", word(0), u32::try_from(s).unwrap_or(0));
    ensure_eq!(
        "ssi_code",
        i32::from_ne_bytes(word(8).to_ne_bytes()),
        libc::SI_QUEUE
    );
    ensure_eq!(
        "ssi_pid",
        word(12),
        u32::try_from(nix::unistd::getpid().as_raw()).unwrap_or(0)
    );
    // The value went as sival_ptr: ssi_ptr has it on every arch (ssi_int
    // only where the int overlays the pointer's low half, little-endian).
    let mut ptr = [0u8; 8];
    ptr.copy_from_slice(&b[48..56]);
    ensure_eq!("ssi_ptr", u64::from_ne_bytes(ptr), 31337);
    Ok(())
}

fn inotify00(t: &mut Ctx) -> Res {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let dir = t.mkdir()?;
    let ino =
        Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).or_fail("inotify_init")?;
    let wd = ino
        .add_watch(&dir, AddWatchFlags::IN_CREATE | AddWatchFlags::IN_DELETE)
        .or_fail("add_watch")?;
    t.wait("removed the watch", || ino.rm_watch(wd).or_fail("rm_watch"))?;
    let info = fdinfo(ino.as_fd())?;
    let line = info
        .lines()
        .find(|l| l.starts_with("inotify "))
        .unwrap_or_default()
        .to_owned();
    ensure!(line.contains("mask:300"), "watch mask in fdinfo: {line:?}");
    std::fs::write(dir.join("created-after-restore"), "x").or_fail("create")?;
    let events = ino.read_events().or_fail("read events")?;
    let names: Vec<_> = events
        .iter()
        .map(|e| (e.mask.bits(), e.name.clone()))
        .collect();
    ensure_eq!(
        "events",
        names,
        vec![(
            AddWatchFlags::IN_CREATE.bits(),
            Some(std::ffi::OsString::from("created-after-restore"))
        )]
    );
    ensure_eq!("watch descriptor", events[0].wd, wd);
    let _ = AsRawFd::as_raw_fd(&ino.as_fd());
    Ok(())
}

fn inotify_wds(t: &mut Ctx) -> Res {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let dirs = [
        t.mkdir()?.join("a"),
        t.mkdir()?.join("b"),
        t.mkdir()?.join("c"),
    ];
    for d in &dirs {
        std::fs::create_dir_all(d).or_fail("mkdir")?;
    }
    let ino =
        Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).or_fail("inotify_init")?;
    let mut wds = Vec::new();
    for d in &dirs {
        wds.push(
            ino.add_watch(d, AddWatchFlags::IN_CREATE)
                .or_fail("add_watch")?,
        );
    }
    ino.rm_watch(wds[0]).or_fail("rm_watch")?;
    let _ = ino.read_events();
    t.wait("removed watch 2", || {
        ino.rm_watch(wds[1]).or_fail("rm_watch")
    })?;
    std::fs::write(dirs[2].join("x"), "x").or_fail("create")?;
    std::fs::write(dirs[1].join("y"), "y").or_fail("create")?;
    std::fs::write(dirs[0].join("z"), "z").or_fail("create")?;
    let got: Vec<_> = ino
        .read_events()
        .or_fail("read events")?
        .iter()
        .map(|e| (e.wd, e.name.clone()))
        .collect();
    ensure_eq!(
        "events (watch, name)",
        got,
        vec![
            (wds[2], Some(std::ffi::OsString::from("x"))),
            (wds[1], Some(std::ffi::OsString::from("y"))),
        ]
    );
    Ok(())
}

fn epoll_nested(t: &mut Ctx) -> Res {
    let inner = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).or_fail("epoll_create")?;
    let outer = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).or_fail("epoll_create")?;
    let ev = eventfd(0, libc::EFD_NONBLOCK)?;
    inner
        .add(&ev, EpollEvent::new(EpollFlags::EPOLLIN, 0xaaaa))
        .or_fail("add eventfd")?;
    outer
        .add(&inner.0, EpollEvent::new(EpollFlags::EPOLLIN, 0xbbbb))
        .or_fail("add inner epoll")?;
    t.wait("signalled the eventfd", || {
        write_all(&ev, &1u64.to_ne_bytes())
    })?;
    let mut events = [EpollEvent::empty(); 4];
    ensure_eq!(
        "outer ready before any event",
        outer.wait(&mut events, 0u8).or_fail("epoll_wait")?,
        0
    );
    write_all(&ev, &7u64.to_ne_bytes())?;
    let n = outer.wait(&mut events, 100u8).or_fail("epoll_wait")?;
    ensure_eq!("outer events", (n, events[0].data()), (1, 0xbbbb));
    let n = inner.wait(&mut events, 0u8).or_fail("epoll_wait")?;
    ensure_eq!("inner events", (n, events[0].data()), (1, 0xaaaa));
    ensure_eq!("counter", read_u64(&ev)?, Some(7));
    Ok(())
}

fn eventfd_shared(t: &mut Ctx) -> Res {
    let fd = eventfd(40, libc::EFD_NONBLOCK)?;
    let theirs = fd.try_clone().or_fail("dup")?;
    t.spawn("adder", move |c| {
        c.wait("nothing", || Ok(()))?;
        write_all(&theirs, &2u64.to_ne_bytes())
    })?;
    t.wait("added one", || write_all(&fd, &1u64.to_ne_bytes()))?;
    t.check_kids()?;
    ensure_eq!(
        "counter: 40, and 2 from the child",
        read_u64(&fd)?,
        Some(42)
    );
    Ok(())
}

fn epoll_closed_tfd(t: &mut Ctx) -> Res {
    let ep = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).or_fail("epoll_create")?;
    let ev = eventfd(1, libc::EFD_NONBLOCK)?;
    ep.add(&ev, EpollEvent::new(EpollFlags::EPOLLIN, 0x77))
        .or_fail("add eventfd")?;
    // The file stays registered (a copy keeps it open) under a closed number.
    let copy = ev.try_clone().or_fail("dup")?;
    drop(ev);
    t.wait("drained the eventfd", || read_u64(&copy).map(drop))?;
    let mut events = [EpollEvent::empty(); 2];
    let n = ep.wait(&mut events, 0u8).or_fail("epoll_wait")?;
    ensure_eq!("ready events", (n, events[0].data()), (1, 0x77));
    Ok(())
}

fn fanotify00(t: &mut Ctx) -> Res {
    use nix::sys::fanotify::{EventFFlags, Fanotify, InitFlags, MarkFlags, MaskFlags};
    let file = t.mkdir()?.join("watched");
    std::fs::write(&file, "x").or_fail("create")?;
    let fa = Fanotify::init(
        InitFlags::FAN_CLASS_NOTIF | InitFlags::FAN_NONBLOCK | InitFlags::FAN_CLOEXEC,
        EventFFlags::O_RDONLY | EventFFlags::O_CLOEXEC,
    )
    .or_fail("fanotify_init")?;
    fa.mark(
        MarkFlags::FAN_MARK_ADD,
        MaskFlags::FAN_OPEN,
        nix::fcntl::AT_FDCWD,
        Some(&file),
    )
    .or_fail("fanotify_mark")?;
    t.wait("removed the mark", || {
        fa.mark(
            MarkFlags::FAN_MARK_REMOVE,
            MaskFlags::FAN_OPEN,
            nix::fcntl::AT_FDCWD,
            Some(&file),
        )
        .or_fail("fanotify_mark remove")
    })?;
    let _ = std::fs::read(&file).or_fail("open the watched file")?;
    let events = fa.read_events().or_fail("read events")?;
    ensure!(
        events
            .iter()
            .any(|e| e.mask().contains(MaskFlags::FAN_OPEN)),
        "no FAN_OPEN event after opening the watched file"
    );
    Ok(())
}

/// The marks of a fanotify group, as its fdinfo lists them (sorted).
fn fanotify_lines(fd: &impl AsFd) -> Res<Vec<String>> {
    // A mount mark names its mount by id (hex), which a restored mount
    // namespace numbers anew: named here by its mount point instead.
    let mounts = slurp("/proc/self/mountinfo")?;
    let point_of = |hex: &str| {
        let id = u64::from_str_radix(hex, 16).ok()?;
        mounts.lines().find_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.first()?.parse::<u64>().ok()? == id).then(|| f.get(4).map(|p| (*p).to_owned()))?
        })
    };
    let mut l: Vec<String> = fdinfo(fd)?
        .lines()
        .filter(|l| l.starts_with("fanotify "))
        .map(|l| match l.strip_prefix("fanotify mnt_id:") {
            Some(rest) => {
                let (hex, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let point = point_of(hex).unwrap_or_else(|| format!("unknown mount {hex}"));
                format!("fanotify mount:{point} {tail}")
            }
            None => l.to_owned(),
        })
        .collect();
    l.sort();
    Ok(l)
}

fn fanotify_marks(t: &mut Ctx) -> Res {
    use nix::sys::fanotify::{EventFFlags, Fanotify, InitFlags, MarkFlags, MaskFlags};
    let dir = t.mkdir()?;
    let (a, b) = (dir.join("a"), dir.join("b"));
    std::fs::write(&a, "a").or_fail("create a")?;
    std::fs::write(&b, "b").or_fail("create b")?;
    let fa = Fanotify::init(
        InitFlags::FAN_CLASS_NOTIF
            | InitFlags::FAN_CLOEXEC
            | InitFlags::FAN_NONBLOCK
            | InitFlags::FAN_UNLIMITED_QUEUE,
        EventFFlags::O_RDONLY | EventFFlags::O_LARGEFILE,
    )
    .or_fail("fanotify_init")?;
    let mark = |flags: MarkFlags, mask: MaskFlags, path: &std::path::Path| {
        fa.mark(flags, mask, nix::fcntl::AT_FDCWD, Some(path))
            .or_fail("fanotify_mark")
    };
    mark(
        MarkFlags::FAN_MARK_ADD,
        MaskFlags::FAN_MODIFY | MaskFlags::FAN_CLOSE_WRITE,
        &a,
    )?;
    mark(
        MarkFlags::FAN_MARK_ADD
            | MarkFlags::FAN_MARK_IGNORED_MASK
            | MarkFlags::FAN_MARK_IGNORED_SURV_MODIFY,
        MaskFlags::FAN_OPEN,
        &b,
    )?;
    mark(
        MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_MOUNT,
        MaskFlags::FAN_CLOSE_NOWRITE,
        std::path::Path::new("/"),
    )?;
    let before = fanotify_lines(&fa)?;
    ensure_eq!("marks listed", before.len(), 4);
    t.wait("removed the mount mark", || {
        mark(
            MarkFlags::FAN_MARK_REMOVE | MarkFlags::FAN_MARK_MOUNT,
            MaskFlags::FAN_CLOSE_NOWRITE,
            std::path::Path::new("/"),
        )
    })?;
    ensure_eq!("marks", fanotify_lines(&fa)?, before);
    // And they work: a write to a is reported (among the events the
    // mount mark collects from everyone).
    std::fs::write(&a, "again").or_fail("write a")?;
    loop {
        match fa.read_events() {
            Ok(ev) if ev.iter().any(|e| e.mask().contains(MaskFlags::FAN_MODIFY)) => {
                return Ok(());
            }
            Ok(ev) if !ev.is_empty() => {}
            _ => break,
        }
    }
    Err(crate::testlib::Fail::Mismatch(
        "no FAN_MODIFY event after writing the marked file".into(),
    ))
}

fn signalfd_thread(t: &mut Ctx) -> Res {
    use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
    let s = sigrt(5);
    let tid = AtomicI32::new(0);
    let (verify, sab) = (AtomicBool::new(false), AtomicBool::new(false));
    std::thread::scope(|sc| {
        let h = sc.spawn(|| -> Res {
            super::util::block_sigs(&[s]);
            let set = super::util::sigset(&[s]);
            // SAFETY: a valid mask pointer; returns a new fd.
            let fd = unsafe {
                libc::signalfd(-1, &raw const set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC)
            };
            nix::errno::Errno::result(fd).or_fail("signalfd")?;
            // SAFETY: a fresh fd we own.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            tid.store(nix::unistd::gettid().as_raw(), Ordering::SeqCst);
            loop {
                if sab.swap(false, Ordering::SeqCst) {
                    read_n(&fd, 128).map(drop)?;
                }
                if verify.load(Ordering::SeqCst) {
                    let b = read_n(&fd, 128)?;
                    ensure_eq!("signalfd_siginfo size", b.len(), 128);
                    let signo = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
                    ensure_eq!("ssi_signo", signo, u32::try_from(s).unwrap_or(0));
                    return Ok(());
                }
                crate::testlib::nap(20);
            }
        });
        while tid.load(Ordering::SeqCst) == 0 {
            crate::testlib::nap(1);
        }
        // SAFETY: tgkill to a thread of this process with a blocked signal.
        let r = unsafe {
            libc::syscall(
                libc::SYS_tgkill,
                nix::unistd::getpid().as_raw(),
                tid.load(Ordering::SeqCst),
                s,
            )
        };
        nix::errno::Errno::result(r).or_fail("tgkill")?;
        let waited = t.wait("read the signal early", || {
            sab.store(true, Ordering::SeqCst);
            crate::testlib::nap(100);
            Ok(())
        });
        verify.store(true, Ordering::SeqCst);
        let res = h
            .join()
            .unwrap_or_else(|_| Err(crate::testlib::Fail::Sys("the thread panicked".into())));
        waited.and(res)
    })
}
