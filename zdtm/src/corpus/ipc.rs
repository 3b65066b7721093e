//! SysV IPC (shared memory, semaphores, message queues) and POSIX message
//! queues. Each test makes its own IPC namespace, so the objects it checks
//! are exactly the ones it created.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd};

use nix::sched::{CloneFlags, unshare};

use crate::meta::{Category::Ipc, Test};
use crate::testlib::sys::Map;
use crate::testlib::{Ctx, Fail, OrFail, Res, pattern_vec};
use crate::{ensure, ensure_eq};

pub(crate) const TESTS: &[Test] = &[
    Test::new(
        "shm00",
        Ipc,
        "attached SysV shared memory with a pattern",
        shm00,
    ),
    Test::new("sem00", Ipc, "SysV semaphore set values", sem00),
    Test::new(
        "msgq00",
        Ipc,
        "SysV message queue with typed messages",
        msgq00,
    ),
    Test::new(
        "shm-removed",
        Ipc,
        "a SysV segment removed (IPC_RMID) while attached stays attached, and goes with its last user",
        shm_removed,
    ),
    Test::new(
        "mqueue-notify",
        Ipc,
        "a POSIX message queue with an mq_notify registration (refused: the signal's value cannot be read back)",
        mqueue_notify,
    )
    .crfail(),
    Test::new(
        "mqueue00",
        Ipc,
        "POSIX message queue with prioritized messages",
        mqueue00,
    ),
];

fn new_ipcns() -> Res {
    unshare(CloneFlags::CLONE_NEWIPC).or_fail("unshare(CLONE_NEWIPC)")
}

fn shm00(t: &mut Ctx) -> Res {
    new_ipcns()?;
    const SZ: usize = 1 << 20;
    // SAFETY: creating a segment has no memory effect.
    let id = unsafe { libc::shmget(0x2d74, SZ, libc::IPC_CREAT | 0o640) };
    nix::errno::Errno::result(id).or_fail("shmget")?;
    // SAFETY: attaching a fresh segment at an address the kernel picks.
    let p = unsafe { libc::shmat(id, std::ptr::null(), 0) };
    if p as isize == -1 {
        return Err(Fail::Sys(format!("shmat: {}", nix::errno::Errno::last())));
    }
    let m = Map::adopt(p as usize, SZ);
    m.fill(70);
    t.wait("flipped a byte of the segment", || {
        m.set(77_777, !m.get(77_777));
        Ok(())
    })?;
    if let Some((i, g, w)) = m.first_diff(70) {
        return Err(Fail::Mismatch(format!(
            "shm byte {i} is {g:#04x}, want {w:#04x}"
        )));
    }
    // SAFETY: plain old data.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: valid out pointer.
    nix::errno::Errno::result(unsafe { libc::shmctl(id, libc::IPC_STAT, &raw mut ds) })
        .or_fail("IPC_STAT")?;
    ensure_eq!("segment size", ds.shm_segsz, SZ);
    ensure_eq!("key", ds.shm_perm.__key, 0x2d74);
    ensure_eq!("mode", ds.shm_perm.mode & 0o777, 0o640);
    ensure_eq!("attach count", ds.shm_nattch, 1);
    Ok(())
}

fn shm_removed(t: &mut Ctx) -> Res {
    new_ipcns()?;
    const SZ: usize = 64 << 10;
    // SAFETY: creating a segment has no memory effect.
    let id = unsafe { libc::shmget(0x2d75, SZ, libc::IPC_CREAT | 0o600) };
    nix::errno::Errno::result(id).or_fail("shmget")?;
    // SAFETY: attaching a fresh segment at an address the kernel picks.
    let p = unsafe { libc::shmat(id, std::ptr::null(), 0) };
    if p as isize == -1 {
        return Err(Fail::Sys(format!("shmat: {}", nix::errno::Errno::last())));
    }
    let m = Map::adopt(p as usize, SZ);
    m.fill(33);
    // SAFETY: removing needs no buffer.
    nix::errno::Errno::result(unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) })
        .or_fail("IPC_RMID")?;
    let stat = || -> Res<libc::shmid_ds> {
        // SAFETY: plain old data.
        let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
        // SAFETY: valid out pointer.
        nix::errno::Errno::result(unsafe { libc::shmctl(id, libc::IPC_STAT, &raw mut ds) })
            .or_fail("IPC_STAT")?;
        Ok(ds)
    };
    ensure!(
        stat()?.shm_perm.mode & 0o1000 != 0, /* SHM_DEST */
        "not marked removed"
    );
    t.wait("flipped a byte of the segment", || {
        m.set(4321, !m.get(4321));
        Ok(())
    })?;
    if let Some((i, g, w)) = m.first_diff(33) {
        return Err(Fail::Mismatch(format!(
            "shm byte {i} is {g:#04x}, want {w:#04x}"
        )));
    }
    let ds = stat()?;
    ensure!(
        ds.shm_perm.mode & 0o1000 != 0,
        "the segment is no longer marked removed (mode {:o})",
        ds.shm_perm.mode
    );
    ensure_eq!("key of a removed segment", ds.shm_perm.__key, 0);
    ensure_eq!("attach count", ds.shm_nattch, 1);
    Ok(())
}

fn mqueue_notify(t: &mut Ctx) -> Res {
    use nix::mqueue::{MQ_OFlag, MqAttr, mq_open};
    new_ipcns()?;
    let attr = MqAttr::new(0, 4, 64, 0);
    let mq = mq_open(
        c"/zdtm-mq-notify",
        MQ_OFlag::O_CREAT | MQ_OFlag::O_RDWR | MQ_OFlag::O_NONBLOCK,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        Some(&attr),
    )
    .or_fail("mq_open")?;
    // SAFETY: plain old data.
    let mut ev: libc::sigevent = unsafe { std::mem::zeroed() };
    ev.sigev_notify = libc::SIGEV_SIGNAL;
    ev.sigev_signo = libc::SIGUSR1;
    // SAFETY: a valid sigevent for the queue's fd.
    nix::errno::Errno::result(unsafe {
        libc::syscall(libc::SYS_mq_notify, mq.as_fd().as_raw_fd(), &raw const ev)
    })
    .or_fail("mq_notify")?;
    let registered = || -> Res<bool> {
        // Another registration is refused while one is in place.
        // SAFETY: a valid sigevent for the queue's fd.
        let r =
            unsafe { libc::syscall(libc::SYS_mq_notify, mq.as_fd().as_raw_fd(), &raw const ev) };
        Ok(r == -1 && nix::errno::Errno::last() == nix::errno::Errno::EBUSY)
    };
    ensure!(registered()?, "no registration");
    t.wait("removed the registration", || {
        // SAFETY: a null sigevent removes the registration.
        nix::errno::Errno::result(unsafe {
            libc::syscall(
                libc::SYS_mq_notify,
                mq.as_fd().as_raw_fd(),
                std::ptr::null::<libc::sigevent>(),
            )
        })
        .or_fail("mq_notify(NULL)")
        .map(drop)
    })?;
    ensure!(registered()?, "the registration is gone");
    Ok(())
}

fn sem00(t: &mut Ctx) -> Res {
    new_ipcns()?;
    // SAFETY: creating a semaphore set has no memory effect.
    let id = unsafe { libc::semget(0x5e3, 4, libc::IPC_CREAT | 0o600) };
    nix::errno::Errno::result(id).or_fail("semget")?;
    let vals: [u16; 4] = [3, 0, 17, 32000];
    // SAFETY: SETALL reads 4 shorts from the valid array.
    nix::errno::Errno::result(unsafe { libc::semctl(id, 0, libc::SETALL, vals.as_ptr()) })
        .or_fail("SETALL")?;
    t.wait("set semaphore 2 to 5", || {
        // SAFETY: SETVAL takes an int.
        nix::errno::Errno::result(unsafe { libc::semctl(id, 2, libc::SETVAL, 5) })
            .or_fail("SETVAL")
            .map(drop)
    })?;
    let mut got = [0u16; 4];
    // SAFETY: GETALL writes 4 shorts into the valid array.
    nix::errno::Errno::result(unsafe { libc::semctl(id, 0, libc::GETALL, got.as_mut_ptr()) })
        .or_fail("GETALL")?;
    ensure_eq!("semaphore values", got, vals);
    Ok(())
}

#[repr(C)]
struct Msg {
    mtype: libc::c_long,
    text: [u8; 64],
}

fn msgq00(t: &mut Ctx) -> Res {
    new_ipcns()?;
    // SAFETY: creating a queue has no memory effect.
    let id = unsafe { libc::msgget(0x3a9, libc::IPC_CREAT | 0o600) };
    nix::errno::Errno::result(id).or_fail("msgget")?;
    let send = |ty: libc::c_long, s: &str| -> Res {
        let mut m = Msg {
            mtype: ty,
            text: [0; 64],
        };
        m.text[..s.len()].copy_from_slice(s.as_bytes());
        // SAFETY: a valid message of s.len() text bytes.
        nix::errno::Errno::result(unsafe {
            libc::msgsnd(id, (&raw const m).cast(), s.len(), libc::IPC_NOWAIT)
        })
        .or_fail("msgsnd")
        .map(drop)
    };
    let recv = |ty: libc::c_long| -> Res<Option<(libc::c_long, String)>> {
        let mut m = Msg {
            mtype: 0,
            text: [0; 64],
        };
        // SAFETY: a valid buffer of 64 text bytes.
        let n = unsafe { libc::msgrcv(id, (&raw mut m).cast(), 64, ty, libc::IPC_NOWAIT) };
        if n == -1 {
            return match nix::errno::Errno::last() {
                nix::errno::Errno::ENOMSG => Ok(None),
                e => Err(Fail::Sys(format!("msgrcv: {e}"))),
            };
        }
        let n = usize::try_from(n).unwrap_or(0);
        Ok(Some((
            m.mtype,
            String::from_utf8_lossy(&m.text[..n]).into_owned(),
        )))
    };
    for (ty, s) in [(1, "first"), (2, "second message"), (1, "third")] {
        send(ty, s)?;
    }
    t.wait("received a message", || recv(0).map(drop))?;
    ensure_eq!(
        "first of type 2",
        recv(2)?,
        Some((2, "second message".to_owned()))
    );
    ensure_eq!("next", recv(0)?, Some((1, "first".to_owned())));
    ensure_eq!("next", recv(0)?, Some((1, "third".to_owned())));
    ensure_eq!("after three", recv(0)?, None);
    Ok(())
}

fn mqueue00(t: &mut Ctx) -> Res {
    use nix::mqueue::{MQ_OFlag, MqAttr, mq_getattr, mq_open, mq_receive, mq_send};
    new_ipcns()?;
    let attr = MqAttr::new(0, 8, 256, 0);
    let name = c"/zdtm-mq";
    let mq = mq_open(
        name,
        MQ_OFlag::O_CREAT | MQ_OFlag::O_RDWR | MQ_OFlag::O_NONBLOCK,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        Some(&attr),
    )
    .or_fail("mq_open")?;
    let msgs = [
        (pattern_vec(71, 100), 1u32),
        (pattern_vec(72, 256), 9),
        (pattern_vec(73, 1), 5),
    ];
    for (m, prio) in &msgs {
        mq_send(&mq, m, *prio).or_fail("mq_send")?;
    }
    t.wait("received the most urgent message", || {
        let mut b = [0u8; 256];
        let mut p = 0;
        mq_receive(&mq, &mut b, &mut p)
            .or_fail("mq_receive")
            .map(drop)
    })?;
    let a = mq_getattr(&mq).or_fail("mq_getattr")?;
    ensure_eq!(
        "(maxmsg, msgsize, curmsgs)",
        (a.maxmsg(), a.msgsize(), a.curmsgs()),
        (8, 256, 3)
    );
    for want in [1usize, 2, 0].map(|i| &msgs[i]) {
        let mut b = [0u8; 256];
        let mut p = 0;
        let n = mq_receive(&mq, &mut b, &mut p).or_fail("mq_receive")?;
        ensure_eq!("priority", p, want.1);
        crate::testlib::diff_bytes(&format!("message of priority {p}"), &b[..n], &want.0)?;
    }
    ensure!(mq.as_fd().as_raw_fd() >= 0, "mq fd");
    Ok(())
}
