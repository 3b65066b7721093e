//! Files: regular-file offsets and flags, access modes, O_PATH, deleted
//! (ghost) files with holes, dup'ed and fork-shared file descriptions,
//! close-on-exec, fd gaps and many fds, cwd and root, file locks. Offsets
//! and contents are checked, and sharing is checked by moving an offset
//! through one fd and reading it through the other.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};

use nix::unistd::{Whence, lseek};

use super::util::{dup_at, dup_over, fd_link, fdinfo, getfd, getfl, offset, setfl};
use crate::meta::{Category::Files, Test};
use crate::testlib::sys::{self, exit_now};
use crate::testlib::{Ctx, Fail, OrFail, Res, Tick, diff_bytes, pattern_vec};
use crate::{ensure, ensure_eq};

pub(crate) const TESTS: &[Test] = &[
    Test::new(
        "file-offset",
        Files,
        "read-write file keeps its offset and contents",
        file_offset,
    ),
    Test::new(
        "file-append",
        Files,
        "O_APPEND file keeps the flag: writes go to the end",
        file_append,
    ),
    Test::new(
        "file-modes",
        Files,
        "O_RDONLY, O_WRONLY and O_RDWR fds of one file",
        file_modes,
    ),
    Test::new(
        "file-opath",
        Files,
        "O_PATH fd keeps its flag and target",
        file_opath,
    ),
    Test::new(
        "file-ghost",
        Files,
        "open file whose name was unlinked",
        file_ghost,
    ),
    Test::new(
        "file-ghost-holes",
        Files,
        "deleted sparse file keeps data and holes",
        file_ghost_holes,
    ),
    Test::new("fd-dup", Files, "dup'ed fds share one offset", fd_dup),
    Test::new(
        "fd-shared-fork",
        Files,
        "fd inherited by a child shares its offset",
        fd_shared_fork,
    ),
    Test::new(
        "fd-cloexec",
        Files,
        "FD_CLOEXEC set on one fd and not another",
        fd_cloexec,
    ),
    Test::new(
        "fd-gaps",
        Files,
        "fds at 17, 100 and 700 with the gaps closed",
        fd_gaps,
    ),
    Test::new("fd-many", Files, "400 fds with distinct offsets", fd_many),
    Test::new(
        "dir-fd",
        Files,
        "O_DIRECTORY fd refers to the same directory",
        dir_fd,
    ),
    Test::new(
        "symlink-opath",
        Files,
        "O_PATH|O_NOFOLLOW fd on a symlink",
        symlink_opath,
    ),
    Test::new("cwd00", Files, "working directory", cwd00),
    Test::new(
        "chroot00",
        Files,
        "root directory changed by chroot",
        chroot00,
    )
    .suid(),
    Test::new(
        "file-flock",
        Files,
        "flock(LOCK_EX) held on a file",
        file_flock,
    )
    .opts(&["--file-locks"]),
    Test::new(
        "file-posix-lock",
        Files,
        "fcntl write lock on a byte range",
        file_posix_lock,
    )
    .opts(&["--file-locks"]),
    Test::new(
        "file-flock-shared",
        Files,
        "two open files holding shared flocks, one inherited by a child",
        file_flock_shared,
    )
    .opts(&["--file-locks"]),
    Test::new(
        "file-lock-refused",
        Files,
        "a held flock without --file-locks: C/R must refuse",
        file_lock_refused,
    )
    .crfail(),
    Test::new("file-lease", Files, "a read lease on a file", file_lease).opts(&["--file-locks"]),
    Test::new(
        "file-lease-breaking",
        Files,
        "a write lease a reader is breaking (to a read lease)",
        file_lease_breaking,
    )
    .opts(&["--file-locks"]),
    Test::new(
        "file-ofd-lock",
        Files,
        "OFD read lock on a byte range",
        file_ofd_lock,
    )
    .opts(&["--file-locks"]),
    Test::new(
        "file-read",
        Files,
        "file read continuously, offset tracked",
        file_read,
    )
    .transition(),
    Test::new(
        "nsfd-own",
        Files,
        "fds on its own namespaces (net, uts, ipc, mnt, pid, cgroup, user, time, and the pid namespace for children): each names the same namespace after restore",
        nsfd_own,
    ),
    Test::new(
        "nsfd-orphan",
        Files,
        "an fd on a UTS namespace no process is in any more: C/R must refuse it by name",
        nsfd_orphan,
    )
    .crfail(),
];

fn rw_file(t: &Ctx, data: &[u8]) -> Res<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(t.filename())
        .or_fail("create file")?;
    f.write_all_at(data, 0).or_fail("write file")?;
    Ok(f)
}

fn seek(fd: impl AsFd, off: i64) -> Res {
    lseek(fd, off, Whence::SeekSet).or_fail("lseek").map(drop)
}

fn file_offset(t: &mut Ctx) -> Res {
    let data = pattern_vec(20, 8192);
    let f = rw_file(t, &data)?;
    seek(&f, 1234)?;
    t.wait("moved the offset by one", || seek(&f, 1235))?;
    ensure_eq!("offset", offset(&f)?, 1234);
    let got = super::util::read_n(&f, 100)?;
    diff_bytes("data at the offset", &got, &data[1234..1334])
}

fn file_append(t: &mut Ctx) -> Res {
    rw_file(t, &pattern_vec(21, 100))?;
    let f = OpenOptions::new()
        .append(true)
        .open(t.filename())
        .or_fail("open O_APPEND")?;
    t.wait("cleared O_APPEND", || {
        setfl(&f, getfl(&f)? & !libc::O_APPEND)
    })?;
    let fl = getfl(&f)?;
    ensure!(fl & libc::O_APPEND != 0, "O_APPEND lost: flags {fl:#o}");
    ensure_eq!("access mode", fl & libc::O_ACCMODE, libc::O_WRONLY);
    super::util::write_all(&f, b"Z")?;
    let len = std::fs::metadata(t.filename()).or_fail("stat")?.len();
    ensure_eq!("size after an appending write", len, 101);
    Ok(())
}

fn file_modes(t: &mut Ctx) -> Res {
    rw_file(t, b"modes")?;
    let ro = File::open(t.filename()).or_fail("open ro")?;
    let wo = OpenOptions::new()
        .write(true)
        .open(t.filename())
        .or_fail("open wo")?;
    let rw = OpenOptions::new()
        .read(true)
        .write(true)
        .open(t.filename())
        .or_fail("open rw")?;
    t.wait("put the O_RDWR file on the O_RDONLY fd", || {
        dup_over(&rw, &ro)
    })?;
    for (what, f, want) in [
        ("ro", &ro, libc::O_RDONLY),
        ("wo", &wo, libc::O_WRONLY),
        ("rw", &rw, libc::O_RDWR),
    ] {
        ensure_eq!(
            format!("access mode of the {what} fd"),
            getfl(f)? & libc::O_ACCMODE,
            want
        );
    }
    Ok(())
}

fn file_opath(t: &mut Ctx) -> Res {
    rw_file(t, b"opath")?;
    let p = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(t.filename())
        .or_fail("open O_PATH")?;
    let want = t.filename().to_string_lossy().into_owned();
    let path = t.filename().to_owned();
    t.wait("replaced the O_PATH fd by a plain one", || {
        let plain = File::open(&path).or_fail("open")?;
        dup_over(&plain, &p)
    })?;
    ensure!(getfl(&p)? & libc::O_PATH != 0, "O_PATH flag lost");
    ensure_eq!("target", fd_link(&p)?, want);
    Ok(())
}

fn file_ghost(t: &mut Ctx) -> Res {
    let data = pattern_vec(22, 5000);
    let f = rw_file(t, &data)?;
    std::fs::remove_file(t.filename()).or_fail("unlink")?;
    t.wait("truncated the deleted file", || {
        f.set_len(4000).or_fail("ftruncate")
    })?;
    let md = f.metadata().or_fail("fstat")?;
    ensure_eq!("link count", md.nlink(), 0);
    ensure_eq!("size", md.len(), 5000);
    let mut got = vec![0u8; 5000];
    f.read_exact_at(&mut got, 0).or_fail("read")?;
    diff_bytes("deleted file contents", &got, &data)?;
    let link = fd_link(&f)?;
    ensure!(
        link.ends_with(" (deleted)"),
        "fd target {link:?} does not say deleted"
    );
    Ok(())
}

fn file_ghost_holes(t: &mut Ctx) -> Res {
    let f = rw_file(t, b"A")?;
    f.write_all_at(b"B", 1 << 20).or_fail("write at 1 MiB")?;
    std::fs::remove_file(t.filename()).or_fail("unlink")?;
    t.wait("wrote into the hole", || {
        f.write_all_at(b"C", 512 << 10)
            .or_fail("write into the hole")
    })?;
    ensure_eq!("size", f.metadata().or_fail("fstat")?.len(), (1 << 20) + 1);
    // Holes are whole pages: 4 KiB here, 64 KiB on ppc64le.
    let page = i64::try_from(crate::testlib::sys::page_size()).unwrap_or(4096);
    let data = lseek(&f, page, Whence::SeekData).or_fail("SEEK_DATA")?;
    ensure_eq!("next data after the first page", data, 1 << 20);
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, 1 << 20).or_fail("read")?;
    ensure_eq!("byte at 1 MiB", b[0], b'B');
    f.read_exact_at(&mut b, 0).or_fail("read")?;
    ensure_eq!("byte 0", b[0], b'A');
    Ok(())
}

fn fd_dup(t: &mut Ctx) -> Res {
    let a = rw_file(t, &pattern_vec(23, 1000))?;
    let b = a.try_clone().or_fail("dup")?;
    seek(&a, 500)?;
    let path = t.filename().to_owned();
    t.wait("replaced the dup by an independent open", || {
        let other = File::open(&path).or_fail("open")?;
        seek(&other, 500)?;
        dup_over(&other, &b)
    })?;
    ensure_eq!("offset seen through the dup", offset(&b)?, 500);
    seek(&b, 700)?;
    ensure_eq!(
        "offset moved through the dup, seen through the original",
        offset(&a)?,
        700
    );
    Ok(())
}

fn fd_shared_fork(t: &mut Ctx) -> Res {
    let f = rw_file(t, &pattern_vec(24, 1000))?;
    seek(&f, 100)?;
    let fr = &f;
    t.spawn("sharer", |c| {
        c.wait("no sabotage in the child", || Ok(()))?;
        ensure_eq!("offset in the child", offset(fr)?, 100);
        seek(fr, 4242)
    })?;
    let path = t.filename().to_owned();
    t.wait("replaced the parent's fd by an independent open", || {
        let other = File::open(&path).or_fail("open")?;
        seek(&other, 100)?;
        dup_over(&other, &f)
    })?;
    ensure_eq!("offset in the parent", offset(&f)?, 100);
    t.check_kids()?;
    ensure_eq!(
        "offset the child set, seen by the parent",
        offset(&f)?,
        4242
    );
    Ok(())
}

fn fd_cloexec(t: &mut Ctx) -> Res {
    rw_file(t, b"x")?;
    let a = File::open(t.filename()).or_fail("open")?; // std sets O_CLOEXEC
    let b = OpenOptions::new()
        .read(true)
        .open(t.filename())
        .or_fail("open")?;
    nix::fcntl::fcntl(
        &b,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .or_fail("F_SETFD")?;
    t.wait("set FD_CLOEXEC on the second fd", || {
        nix::fcntl::fcntl(
            &b,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .or_fail("F_SETFD")
        .map(drop)
    })?;
    ensure_eq!("fd flags of the cloexec fd", getfd(&a)?, libc::FD_CLOEXEC);
    ensure_eq!("fd flags of the inheritable fd", getfd(&b)?, 0);
    Ok(())
}

fn fd_gaps(t: &mut Ctx) -> Res {
    let dir = t.mkdir()?;
    let mut fds = Vec::new();
    for n in [17, 100, 700] {
        let p = dir.join(format!("f{n}"));
        std::fs::write(&p, format!("file for fd {n}")).or_fail("write")?;
        let f = File::open(&p).or_fail("open")?;
        fds.push((n, dup_at(&f, n)?));
    }
    let first = &fds[0].1;
    t.wait("filled fd 50", || dup_at(first, 50).map(std::mem::forget))?;
    for (n, fd) in &fds {
        ensure_eq!("fd number", fd.as_raw_fd(), *n);
        let mut buf = [0u8; 32];
        let k = nix::sys::uio::pread(fd, &mut buf, 0).or_fail("pread")?;
        ensure_eq!(
            format!("contents behind fd {n}"),
            String::from_utf8_lossy(&buf[..k]),
            format!("file for fd {n}")
        );
    }
    for gap in (18..100).chain(101..700) {
        let open = std::path::Path::new(&format!("/proc/self/fd/{gap}")).exists();
        ensure!(!open, "fd {gap} should be closed");
    }
    Ok(())
}

fn fd_many(t: &mut Ctx) -> Res {
    rw_file(t, &pattern_vec(25, 2000))?;
    let mut v = Vec::new();
    for i in 0..400 {
        let f = File::open(t.filename()).or_fail("open")?;
        seek(&f, i * 3)?;
        v.push(f);
    }
    t.wait("moved the offset of fd #200", || seek(&v[200], 601))?;
    for (i, f) in (0i64..).zip(&v) {
        ensure_eq!(format!("offset of file #{i}"), offset(f)?, i * 3);
    }
    Ok(())
}

fn dir_fd(t: &mut Ctx) -> Res {
    let dir = t.mkdir()?;
    let d = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(&dir)
        .or_fail("open dir")?;
    t.wait("replaced the fd by one of /", || {
        let root = File::open("/").or_fail("open /")?;
        dup_over(&root, &d)
    })?;
    let (a, b) = (
        d.metadata().or_fail("fstat")?,
        std::fs::metadata(&dir).or_fail("stat")?,
    );
    ensure_eq!("directory inode", (a.dev(), a.ino()), (b.dev(), b.ino()));
    ensure!(getfl(&d)? & libc::O_DIRECTORY != 0, "O_DIRECTORY flag lost");
    Ok(())
}

fn symlink_opath(t: &mut Ctx) -> Res {
    let dir = t.mkdir()?;
    std::os::unix::fs::symlink("/target/of/the/link", dir.join("l1")).or_fail("symlink")?;
    std::os::unix::fs::symlink("/other", dir.join("l2")).or_fail("symlink")?;
    let open = |n: &str| {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
            .open(dir.join(n))
            .or_fail("open symlink")
    };
    let l = open("l1")?;
    t.wait("replaced the fd by one of another symlink", || {
        dup_over(&open("l2")?, &l)
    })?;
    let target = nix::fcntl::readlinkat(&l, "").or_fail("readlinkat")?;
    ensure_eq!(
        "symlink target through the fd",
        target.to_string_lossy(),
        "/target/of/the/link"
    );
    Ok(())
}

fn cwd00(t: &mut Ctx) -> Res {
    let dir = t.mkdir()?.join("sub dir");
    std::fs::create_dir(&dir).or_fail("mkdir")?;
    std::env::set_current_dir(&dir).or_fail("chdir")?;
    t.wait("changed to /", || {
        std::env::set_current_dir("/").or_fail("chdir")
    })?;
    ensure_eq!("cwd", std::env::current_dir().or_fail("getcwd")?, dir);
    Ok(())
}

fn chroot00(t: &mut Ctx) -> Res {
    let dir = t.mkdir()?;
    std::fs::create_dir(dir.join("sub")).or_fail("mkdir")?;
    std::fs::write(dir.join("marker"), "inside the chroot").or_fail("write marker")?;
    let old_root = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open("/")
        .or_fail("open /")?;
    nix::unistd::chroot(&dir).or_fail("chroot")?;
    std::env::set_current_dir("/").or_fail("chdir /")?;
    t.wait("chrooted one level deeper", || {
        nix::unistd::chroot("/sub").or_fail("chroot /sub")
    })?;
    let got = std::fs::read_to_string("/marker");
    // Leave the chroot so the outfile can be renamed by its path.
    nix::unistd::fchdir(&old_root).or_fail("fchdir")?;
    nix::unistd::chroot(".").or_fail("chroot back")?;
    ensure_eq!(
        "/marker inside the chroot",
        got.map_err(|e| e.kind()),
        Ok("inside the chroot".to_owned())
    );
    Ok(())
}

/// Run `f` in a forked process and report whether it returned true.
fn in_child(f: impl FnOnce() -> bool) -> Res<bool> {
    match sys::fork().or_fail("fork")? {
        nix::unistd::ForkResult::Child => exit_now(if f() { 0 } else { 1 }),
        nix::unistd::ForkResult::Parent { child } => {
            match nix::sys::wait::waitpid(child, None).or_fail("waitpid")? {
                nix::sys::wait::WaitStatus::Exited(_, c) => Ok(c == 0),
                st => Err(Fail::Sys(format!("checker child: {st:?}"))),
            }
        }
    }
}

fn flock(fd: &impl AsFd, op: i32) -> Result<(), nix::errno::Errno> {
    // SAFETY: flock only takes an fd and flags.
    nix::errno::Errno::result(unsafe { libc::flock(fd.as_fd().as_raw_fd(), op) }).map(drop)
}

fn file_flock(t: &mut Ctx) -> Res {
    let f = rw_file(t, b"locked")?;
    flock(&f, libc::LOCK_EX).or_fail("flock")?;
    t.wait("unlocked", || {
        flock(&f, libc::LOCK_UN).or_fail("flock(LOCK_UN)")
    })?;
    let path = t.filename().to_owned();
    let blocked = in_child(|| {
        File::open(&path).is_ok_and(|g| {
            flock(&g, libc::LOCK_EX | libc::LOCK_NB) == Err(nix::errno::Errno::EWOULDBLOCK)
        })
    })?;
    ensure!(
        blocked,
        "another open file description could take the lock: our LOCK_EX is gone"
    );
    let info = fdinfo(&f)?;
    ensure!(
        info.contains("FLOCK") && info.contains("WRITE"),
        "fdinfo shows no exclusive flock: {info:?}"
    );
    Ok(())
}

fn posix_lock_at(
    fd: &impl AsFd,
    cmd: i32,
    ty: i32,
    start: i64,
    len: i64,
) -> Result<libc::flock, nix::errno::Errno> {
    // SAFETY: flock is plain old data; zero is valid.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = i16::try_from(ty).unwrap_or(0);
    fl.l_whence = 0;
    fl.l_start = start;
    fl.l_len = len;
    // SAFETY: the lock commands read and (for GETLK) write the valid struct.
    nix::errno::Errno::result(unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), cmd, &raw mut fl) })?;
    Ok(fl)
}

fn file_posix_lock(t: &mut Ctx) -> Res {
    let f = rw_file(t, &[0u8; 300])?;
    posix_lock_at(&f, libc::F_SETLK, libc::F_WRLCK, 100, 100).or_fail("F_SETLK")?;
    t.wait("unlocked the range", || {
        posix_lock_at(&f, libc::F_SETLK, libc::F_UNLCK, 100, 100)
            .or_fail("unlock")
            .map(drop)
    })?;
    let (path, me) = (t.filename().to_owned(), nix::unistd::getpid().as_raw());
    let seen = in_child(|| {
        File::open(&path)
            .ok()
            .and_then(|g| posix_lock_at(&g, libc::F_GETLK, libc::F_RDLCK, 150, 10).ok())
            .is_some_and(|fl| {
                i32::from(fl.l_type) == libc::F_WRLCK
                    && fl.l_pid == me
                    && fl.l_start == 100
                    && fl.l_len == 100
            })
    })?;
    ensure!(
        seen,
        "F_GETLK from another process does not see our write lock on 100..200"
    );
    Ok(())
}

fn file_ofd_lock(t: &mut Ctx) -> Res {
    let f = rw_file(t, &[0u8; 64])?;
    posix_lock_at(&f, libc::F_OFD_SETLK, libc::F_RDLCK, 0, 10).or_fail("F_OFD_SETLK")?;
    t.wait("unlocked", || {
        posix_lock_at(&f, libc::F_OFD_SETLK, libc::F_UNLCK, 0, 10)
            .or_fail("unlock")
            .map(drop)
    })?;
    let info = fdinfo(&f)?;
    ensure!(
        info.contains("OFDLCK") && info.contains("READ"),
        "fdinfo shows no OFD read lock: {info:?}"
    );
    let g = OpenOptions::new()
        .read(true)
        .write(true)
        .open(t.filename())
        .or_fail("open")?;
    let fl = posix_lock_at(&g, libc::F_OFD_GETLK, libc::F_WRLCK, 5, 1).or_fail("F_OFD_GETLK")?;
    ensure_eq!(
        "lock type seen by another description",
        i32::from(fl.l_type),
        libc::F_RDLCK
    );
    Ok(())
}

fn file_read(t: &mut Ctx) -> Res {
    const LEN: usize = 256 << 10;
    let data = pattern_vec(26, LEN);
    let f = rw_file(t, &data)?;
    seek(&f, 0)?;
    let mut pos = 0usize;
    t.transition("moved the offset behind the reader's back", |tick| {
        if tick == Tick::Sabotage {
            return lseek(&f, 1, Whence::SeekCur).or_fail("lseek").map(drop);
        }
        let got = super::util::read_n(&f, 4096)?;
        diff_bytes(
            &format!("chunk read at {pos}"),
            &got,
            &data[pos..pos + 4096],
        )?;
        pos += 4096;
        if pos == LEN {
            seek(&f, 0)?;
            pos = 0;
        }
        Ok(())
    })?;
    ensure_eq!("offset", offset(&f)?, i64::try_from(pos).or_fail("pos")?);
    Ok(())
}

fn file_flock_shared(t: &mut Ctx) -> Res {
    let a = rw_file(t, b"shared")?;
    let b = File::open(t.filename()).or_fail("open")?;
    flock(&a, libc::LOCK_SH).or_fail("flock a")?;
    flock(&b, libc::LOCK_SH).or_fail("flock b")?;
    let theirs = a.try_clone().or_fail("dup")?;
    t.spawn("holder", move |c| {
        c.wait("nothing", || Ok(()))?;
        let info = fdinfo(&theirs)?;
        ensure!(
            info.contains("FLOCK"),
            "the child's inherited fd shows no flock: {info:?}"
        );
        Ok(())
    })?;
    t.wait("dropped b's lock", || {
        flock(&b, libc::LOCK_UN).or_fail("unlock b")
    })?;
    let path = t.filename().to_owned();
    let exclusive_blocked = in_child(|| {
        File::open(&path).is_ok_and(|g| {
            flock(&g, libc::LOCK_EX | libc::LOCK_NB) == Err(nix::errno::Errno::EWOULDBLOCK)
        })
    })?;
    ensure!(
        exclusive_blocked,
        "an exclusive flock was granted: the shared locks are gone"
    );
    t.check_kids()?;
    // a's lock alone would let b upgrade: b's own shared lock must block it.
    flock(&a, libc::LOCK_UN).or_fail("unlock a")?;
    ensure_eq!(
        "a's exclusive lock while b holds a shared one",
        flock(&a, libc::LOCK_EX | libc::LOCK_NB).err(),
        Some(nix::errno::Errno::EWOULDBLOCK)
    );
    Ok(())
}

fn file_lock_refused(t: &mut Ctx) -> Res {
    let f = rw_file(t, b"locked")?;
    flock(&f, libc::LOCK_EX).or_fail("flock")?;
    t.wait("unlocked", || {
        flock(&f, libc::LOCK_UN).or_fail("flock(LOCK_UN)")
    })?;
    let info = fdinfo(&f)?;
    ensure!(info.contains("FLOCK"), "the lock is gone: {info:?}");
    Ok(())
}

#[allow(unsafe_code)]
fn lease(fd: &impl AsFd, cmd: i32, arg: i32) -> Res<i32> {
    // SAFETY: F_SETLEASE / F_GETLEASE take an int argument.
    let r = unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), cmd, arg) };
    nix::errno::Errno::result(r).or_fail("lease fcntl")
}

fn file_lease_breaking(t: &mut Ctx) -> Res {
    drop(rw_file(t, b"leased")?);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(t.filename())
        .or_fail("open read-write")?;
    // The break notice (SIGIO) would end the test.
    // SAFETY: SIG_IGN installs no handler code.
    unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGIO,
            nix::sys::signal::SigHandler::SigIgn,
        )
    }
    .or_fail("ignore SIGIO")?;
    lease(&f, libc::F_SETLEASE, libc::F_WRLCK)?;
    // A reader that does not wait starts the break and fails.
    let r = nix::fcntl::open(
        t.filename(),
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_NONBLOCK,
        nix::sys::stat::Mode::empty(),
    );
    ensure!(
        r.as_ref().err() == Some(&nix::errno::Errno::EWOULDBLOCK),
        "a reader opened the leased file: {r:?}"
    );
    let breaking = |f: &File| -> Res<bool> {
        Ok(super::util::fdinfo(f)?
            .lines()
            .any(|l| l.contains("LEASE") && l.contains("BREAKING")))
    };
    ensure!(breaking(&f)?, "the lease is not being broken");
    t.wait("gave the lease up", || {
        lease(&f, libc::F_SETLEASE, libc::F_UNLCK).map(drop)
    })?;
    ensure!(
        breaking(&f)?,
        "the lease is no longer being broken: {}",
        super::util::fdinfo(&f)?
    );
    ensure_eq!(
        "the type the lease is broken to",
        lease(&f, libc::F_GETLEASE, 0)?,
        libc::F_RDLCK
    );
    Ok(())
}

fn file_lease(t: &mut Ctx) -> Res {
    drop(rw_file(t, b"leased")?);
    let f = File::open(t.filename()).or_fail("open read-only")?;
    lease(&f, libc::F_SETLEASE, libc::F_RDLCK)?;
    t.wait("dropped the lease", || {
        lease(&f, libc::F_SETLEASE, libc::F_UNLCK).map(drop)
    })?;
    ensure_eq!("lease", lease(&f, libc::F_GETLEASE, 0)?, libc::F_RDLCK);
    Ok(())
}

/// The /proc/self/ns files an fd is opened on (those this kernel has).
const NS_FILES: &[&str] = &[
    "net",
    "uts",
    "ipc",
    "mnt",
    "pid",
    "pid_for_children",
    "cgroup",
    "user",
    "time",
];

fn nsfd_own(t: &mut Ctx) -> Res {
    let mut held = Vec::new();
    for name in NS_FILES {
        let path = format!("/proc/self/ns/{name}");
        if std::fs::metadata(&path).is_err() {
            continue;
        }
        held.push((*name, File::open(&path).or_fail(&path)?));
    }
    ensure!(held.len() >= 6, "only {} namespace files here", held.len());
    t.wait(
        "replaced the fd on the network namespace by one on the UTS one",
        || {
            let find = |want: &str| {
                held.iter()
                    .find(|(n, _)| *n == want)
                    .ok_or_else(|| Fail::Sys(format!("no fd on ns/{want}")))
            };
            dup_over(&find("uts")?.1, &find("net")?.1)
        },
    )?;
    for (name, f) in &held {
        let now = std::fs::metadata(format!("/proc/self/ns/{name}"))
            .or_fail("stat ns file")?
            .ino();
        let got = f.metadata().or_fail("fstat ns fd")?.ino();
        ensure_eq!(format!("inode of the fd on ns/{name}"), got, now);
    }
    Ok(())
}

fn nsfd_orphan(t: &mut Ctx) -> Res {
    // A thread of its own makes the namespace and leaves it to the fd.
    let held = std::thread::spawn(|| -> Res<File> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUTS).or_fail("unshare(UTS)")?;
        nix::unistd::sethostname("nsfd-orphan").or_fail("sethostname")?;
        File::open("/proc/thread-self/ns/uts").or_fail("open ns/uts")
    })
    .join()
    .map_err(|_| Fail::Sys("the thread panicked".into()))??;
    let mine = std::fs::metadata("/proc/self/ns/uts")
        .or_fail("stat ns/uts")?
        .ino();
    t.wait("closed the fd on the orphan namespace", || {
        let own = File::open("/proc/self/ns/uts").or_fail("open own ns/uts")?;
        dup_over(&own, &held)
    })?;
    let got = held.metadata().or_fail("fstat")?.ino();
    ensure!(got != mine, "the fd names the task's own UTS namespace");
    Ok(())
}
