//! Pipes and FIFOs: empty, with queued data, full, non-default size, packet
//! mode, shared between processes and dup'ed; named FIFOs, including a
//! deleted one. Queued bytes are read back and compared exactly, and the
//! ends are checked to still be connected.

use std::fs::OpenOptions;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};

use super::util::{dup_over, fionread, getfl, read_n, write_all};
use crate::meta::{Category::Pipes, Test};
use crate::testlib::{Ctx, OrFail, Res, Tick, diff_bytes, pattern_vec};
use crate::{ensure, ensure_eq};

pub(crate) const TESTS: &[Test] = &[
    Test::new(
        "pipe-empty",
        Pipes,
        "empty pipe stays empty and connected",
        pipe_empty,
    ),
    Test::new("pipe-data", Pipes, "pipe with 3000 queued bytes", pipe_data),
    Test::new(
        "pipe-full",
        Pipes,
        "non-blocking pipe filled to capacity",
        pipe_full,
    ),
    Test::new(
        "pipe-size",
        Pipes,
        "pipe resized to 1 MiB with data",
        pipe_size,
    ),
    Test::new(
        "pipe-packet",
        Pipes,
        "O_DIRECT pipe keeps packet boundaries",
        pipe_packet,
    ),
    Test::new(
        "pipe-dup",
        Pipes,
        "both fds of a dup'ed read end are one pipe",
        pipe_dup,
    ),
    Test::new(
        "pipe-shared",
        Pipes,
        "pipe written by a child, read by the parent",
        pipe_shared,
    ),
    Test::new(
        "pipe-closed-writer",
        Pipes,
        "pipe whose write end is closed reads data then EOF",
        pipe_closed_writer,
    ),
    Test::new(
        "fifo00",
        Pipes,
        "named FIFO opened read-write with data",
        fifo00,
    ),
    Test::new(
        "fifo-ro-wo",
        Pipes,
        "FIFO opened read-only and write-only",
        fifo_ro_wo,
    ),
    Test::new("fifo-ghost", Pipes, "deleted FIFO with data", fifo_ghost),
    Test::new(
        "pipe-loop",
        Pipes,
        "a counter stream flowing from a child",
        pipe_loop,
    )
    .transition(),
];

fn pipe(flags: OFlag) -> Res<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(flags | OFlag::O_CLOEXEC).or_fail("pipe2")
}

fn nonblock(fd: &impl AsFd) -> Res {
    let fl = getfl(fd)?;
    super::util::setfl(fd, fl | libc::O_NONBLOCK)
}

fn drain(fd: &impl AsFd, n: usize) -> Res {
    read_n(fd, n).map(drop)
}

/// Check that the queue holds exactly `want`, then that the pipe still
/// carries new data.
fn check_queue(r: &impl AsFd, w: &impl AsFd, want: &[u8]) -> Res {
    ensure_eq!("bytes queued", fionread(r)?, want.len());
    nonblock(r)?;
    let got = read_n(r, want.len() + 1)?;
    diff_bytes("queued data", &got, want)?;
    write_all(w, b"ping")?;
    ensure_eq!(
        "data written after restore",
        read_n(r, 4)?,
        b"ping".to_vec()
    );
    Ok(())
}

fn pipe_empty(t: &mut Ctx) -> Res {
    let (r, w) = pipe(OFlag::empty())?;
    t.wait("wrote a byte", || write_all(&w, b"x"))?;
    check_queue(&r, &w, b"")
}

fn pipe_data(t: &mut Ctx) -> Res {
    let (r, w) = pipe(OFlag::empty())?;
    let data = pattern_vec(30, 3000);
    write_all(&w, &data)?;
    t.wait("drained one byte", || drain(&r, 1))?;
    check_queue(&r, &w, &data)
}

fn pipe_full(t: &mut Ctx) -> Res {
    let (r, w) = pipe(OFlag::O_NONBLOCK)?;
    let chunk = pattern_vec(31, 4096);
    let mut all = Vec::new();
    loop {
        match nix::unistd::write(&w, &chunk) {
            Ok(n) => all.extend_from_slice(&chunk[..n]),
            Err(Errno::EAGAIN) => break,
            Err(e) => return Err(crate::testlib::Fail::Sys(format!("write: {e}"))),
        }
    }
    t.wait("read 100 bytes", || drain(&r, 100))?;
    ensure!(
        getfl(&w)? & libc::O_NONBLOCK != 0,
        "write end lost O_NONBLOCK"
    );
    ensure_eq!(
        "write to the full pipe",
        nix::unistd::write(&w, b"x").err(),
        Some(Errno::EAGAIN)
    );
    ensure_eq!("bytes queued", fionread(&r)?, all.len());
    diff_bytes("full pipe", &read_n(&r, all.len())?, &all)
}

fn pipe_size(t: &mut Ctx) -> Res {
    let (r, w) = pipe(OFlag::empty())?;
    fcntl(&w, FcntlArg::F_SETPIPE_SZ(1 << 20)).or_fail("F_SETPIPE_SZ")?;
    let data = pattern_vec(32, 200_000);
    write_all(&w, &data)?;
    t.wait("shrank the pipe to 256 KiB", || {
        fcntl(&w, FcntlArg::F_SETPIPE_SZ(256 << 10))
            .or_fail("F_SETPIPE_SZ")
            .map(drop)
    })?;
    ensure_eq!(
        "pipe size",
        fcntl(&r, FcntlArg::F_GETPIPE_SZ).or_fail("F_GETPIPE_SZ")?,
        1 << 20
    );
    check_queue(&r, &w, &data)
}

fn pipe_packet(t: &mut Ctx) -> Res {
    let (r, w) = pipe(OFlag::O_DIRECT)?;
    let sizes = [10usize, 300, 1];
    for (i, n) in sizes.iter().enumerate() {
        write_all(&w, &pattern_vec(33 + i as u64, *n))?;
    }
    t.wait("read the first packet", || drain(&r, 10))?;
    ensure!(getfl(&w)? & libc::O_DIRECT != 0, "write end lost O_DIRECT");
    for (i, n) in sizes.iter().enumerate() {
        let mut buf = vec![0u8; 4096];
        let k = nix::unistd::read(&r, &mut buf).or_fail("read")?;
        ensure_eq!(format!("size of packet {i}"), k, *n);
        diff_bytes(
            &format!("packet {i}"),
            &buf[..k],
            &pattern_vec(33 + i as u64, *n),
        )?;
    }
    Ok(())
}

fn pipe_dup(t: &mut Ctx) -> Res {
    let (r, w) = pipe(OFlag::empty())?;
    let r2 = r.try_clone().or_fail("dup")?;
    write_all(&w, b"abcdef")?;
    t.wait("replaced the dup by a new pipe", || {
        let (other, _w) = pipe(OFlag::empty())?;
        dup_over(&other, &r2)
    })?;
    let (a, b) = (
        nix::sys::stat::fstat(&r).or_fail("fstat")?,
        nix::sys::stat::fstat(&r2).or_fail("fstat")?,
    );
    ensure_eq!("pipe inode of the two read fds", a.st_ino, b.st_ino);
    ensure_eq!(
        "bytes through the first fd",
        read_n(&r, 3)?,
        b"abc".to_vec()
    );
    ensure_eq!("bytes through the dup", read_n(&r2, 3)?, b"def".to_vec());
    Ok(())
}

fn pipe_shared(t: &mut Ctx) -> Res {
    let (r, w) = pipe(OFlag::empty())?;
    let wr = &w;
    let kid = t.spawn("writer", |c| {
        write_all(wr, b"before;")?;
        c.wait("no sabotage in the child", || Ok(()))?;
        write_all(wr, b"after")
    })?;
    drop(w);
    let _ = kid;
    t.wait("drained the child's first write", || drain(&r, 7))?;
    t.check_kids()?;
    let got = read_n(&r, 100)?;
    ensure_eq!(
        "data from the child",
        String::from_utf8_lossy(&got),
        "before;after"
    );
    Ok(())
}

fn pipe_closed_writer(t: &mut Ctx) -> Res {
    let (r, w) = pipe(OFlag::empty())?;
    write_all(&w, b"last words")?;
    drop(w);
    t.wait("read two bytes", || drain(&r, 2))?;
    ensure_eq!("data", read_n(&r, 100)?, b"last words".to_vec());
    let mut b = [0u8; 1];
    ensure_eq!(
        "read after the data (EOF)",
        nix::unistd::read(&r, &mut b).or_fail("read")?,
        0
    );
    Ok(())
}

fn mkfifo(t: &Ctx, name: &str) -> Res<std::path::PathBuf> {
    let p = t.mkdir()?.join(name);
    nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).or_fail("mkfifo")?;
    Ok(p)
}

fn fifo00(t: &mut Ctx) -> Res {
    let p = mkfifo(t, "fifo")?;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .or_fail("open fifo rw")?;
    let data = pattern_vec(36, 1000);
    write_all(&f, &data)?;
    t.wait("drained a byte", || drain(&f, 1))?;
    let md = f.metadata().or_fail("fstat")?;
    ensure!(md.file_type().is_fifo(), "fd is not a FIFO");
    ensure_eq!(
        "FIFO inode",
        md.ino(),
        std::fs::metadata(&p).or_fail("stat")?.ino()
    );
    ensure_eq!("access mode", getfl(&f)? & libc::O_ACCMODE, libc::O_RDWR);
    check_queue(&f, &f, &data)
}

fn fifo_ro_wo(t: &mut Ctx) -> Res {
    let p = mkfifo(t, "fifo")?;
    let r = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&p)
        .or_fail("open fifo ro")?;
    let w = OpenOptions::new()
        .write(true)
        .open(&p)
        .or_fail("open fifo wo")?;
    let data = pattern_vec(37, 500);
    write_all(&w, &data)?;
    t.wait("wrote an extra byte", || write_all(&w, b"!"))?;
    ensure_eq!(
        "read end flags",
        getfl(&r)? & (libc::O_ACCMODE | libc::O_NONBLOCK),
        libc::O_RDONLY | libc::O_NONBLOCK
    );
    ensure_eq!(
        "write end flags",
        getfl(&w)? & (libc::O_ACCMODE | libc::O_NONBLOCK),
        libc::O_WRONLY
    );
    check_queue(&r, &w, &data)
}

fn fifo_ghost(t: &mut Ctx) -> Res {
    let p = mkfifo(t, "fifo")?;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .or_fail("open fifo rw")?;
    std::fs::remove_file(&p).or_fail("unlink")?;
    let data = pattern_vec(38, 777);
    write_all(&f, &data)?;
    t.wait("drained a byte", || drain(&f, 1))?;
    ensure!(
        f.metadata().or_fail("fstat")?.file_type().is_fifo(),
        "fd is not a FIFO"
    );
    ensure!(!p.exists(), "the deleted FIFO's name exists again");
    check_queue(&f, &f, &data)
}

fn pipe_loop(t: &mut Ctx) -> Res {
    let (r, w) = pipe(OFlag::empty())?;
    let wr = &w;
    t.spawn("counter", |c| {
        // Non-blocking, so SIGTERM is noticed even while the pipe is full.
        nonblock(wr)?;
        c.ready()?;
        let mut n = 0u32;
        while !crate::testlib::sys::TERM.load(std::sync::atomic::Ordering::SeqCst) {
            match nix::unistd::write(wr, &n.to_le_bytes()) {
                Ok(4) => n += 1,
                Ok(_) => {
                    return Err(crate::testlib::Fail::Mismatch(
                        "short write to the pipe".into(),
                    ));
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => crate::testlib::nap(1),
                Err(e) => return Err(crate::testlib::Fail::Sys(format!("write: {e}"))),
            }
        }
        Ok(())
    })?;
    drop(w);
    let mut next = 0u32;
    t.transition("dropped 4 bytes of the stream", |tick| {
        if tick == Tick::Sabotage {
            return drain(&r, 4);
        }
        for _ in 0..64 {
            let b = read_n(&r, 4)?;
            ensure_eq!("stream length", b.len(), 4);
            let v = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            ensure_eq!("next counter in the stream", v, next);
            next += 1;
        }
        Ok(())
    })?;
    ensure!(next > 0, "no data flowed");
    t.check_kids()
}
