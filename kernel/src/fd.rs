//! File descriptors: duplicating (above a number, onto a number, from an
//! inherited number), close-on-exec, closing all but some, pidfds
//! (pidfd_open, pidfd_getfd, pidfd_send_signal), kcmp of open files,
//! open_by_handle_at, openat2, flock and F_GETOWNER_UIDS.
//!
//! Wrappers return `Errno` without context; callers say what failed.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::unistd::Pid;

use crate::raw::{check, long, nr, syscall, syscall_fd};

/// kcmp's type comparing a file with an epoll target.
const KCMP_EPOLL_TFD: i32 = 7;

/// A pidfd for a process.
pub fn pidfd_open(pid: Pid) -> Result<OwnedFd, Errno> {
    let pid = rustix::process::Pid::from_raw(pid.as_raw()).ok_or(Errno::ESRCH)?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
        .map_err(|e| Errno::from_raw(e.raw_os_error()))
}

/// Duplicate fd `fd` of the process behind `pidfd` into this process.
pub fn pidfd_getfd(pidfd: impl AsFd, fd: RawFd) -> Result<OwnedFd, Errno> {
    rustix::process::pidfd_getfd(pidfd, fd, rustix::process::PidfdGetfdFlags::empty())
        .map_err(|e| Errno::from_raw(e.raw_os_error()))
}

/// How the open file descriptions behind fd `fd1` of `pid1` and `fd2` of
/// `pid2` order (kcmp KCMP_FILE: a stable, obfuscated pointer order); None
/// when the kernel tells only that they differ.
pub fn kcmp_file_order(
    pid1: Pid,
    fd1: i32,
    pid2: Pid,
    fd2: i32,
) -> Result<Option<std::cmp::Ordering>, Errno> {
    const KCMP_FILE: i32 = 0;
    let idx = |fd: i32| u64::try_from(fd).map_err(|_| Errno::EBADF);
    let ret = kcmp(pid1, pid2, KCMP_FILE, idx(fd1)?, idx(fd2)?)?;
    Ok(match ret {
        0 => Some(std::cmp::Ordering::Equal),
        1 => Some(std::cmp::Ordering::Less),
        2 => Some(std::cmp::Ordering::Greater),
        _ => None,
    })
}

/// Whether fd `fd` of `pid` is the file registered as fd `tfd` in epoll fd
/// `epfd` of the same task (kcmp KCMP_EPOLL_TFD).
pub fn kcmp_epoll_tfd(pid: Pid, fd: i32, epfd: i32, tfd: i32) -> Result<bool, Errno> {
    let slot = KcmpEpollSlot {
        efd: epfd.cast_unsigned(),
        tfd: tfd.cast_unsigned(),
        toff: 0,
    };
    Ok(kcmp_epoll(pid, fd, &slot)? == 0)
}

/// Open the inode behind a file handle (`handle_type`, `handle`) on the
/// mount of `mount_fd` (open_by_handle_at; needs CAP_DAC_READ_SEARCH).
pub fn open_by_handle(
    mount_fd: std::os::fd::BorrowedFd<'_>,
    handle_type: i32,
    handle: &[u8],
    flags: i32,
) -> Result<OwnedFd, Errno> {
    use std::os::fd::AsRawFd;
    // struct file_handle: u32 handle_bytes, i32 handle_type, then the bytes.
    let mut buf = Vec::with_capacity(8 + handle.len());
    buf.extend_from_slice(
        &u32::try_from(handle.len())
            .map_err(|_| Errno::EINVAL)?
            .to_ne_bytes(),
    );
    buf.extend_from_slice(&handle_type.to_ne_bytes());
    buf.extend_from_slice(handle);
    // SAFETY: the kernel reads the handle header and bytes from `buf`
    // during the call; the result is a new fd.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount_fd.as_raw_fd(),
            buf.as_ptr(),
            flags,
        )
    };
    let fd = RawFd::try_from(Errno::result(ret)?).map_err(|_| Errno::EBADF)?;
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// flock(2) on `fd` (nix only offers it as a guard that unlocks on drop).
pub fn flock(fd: std::os::fd::BorrowedFd<'_>, op: i32) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock takes an fd and an int.
    Errno::result(unsafe { libc::flock(fd.as_raw_fd(), op) }).map(drop)
}

/// write(2) to fd number `fd`, which this process inherited (a forked
/// task's report pipe, the cgroup.procs files it joins): no claim on the
/// fd's lifetime is made.
pub fn write_raw(fd: RawFd, data: &[u8]) -> Result<usize, Errno> {
    // SAFETY: write reads data.len() bytes from a live slice; on a number
    // that is not open it fails with EBADF.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    Errno::result(n).map(|n| usize::try_from(n).unwrap_or(0))
}

/// A close-on-exec copy, from 3 up, of fd number `fd`, which this process
/// inherited (`swrk FD`'s socket); EBADF when it is not open.
pub fn dup_inherited(fd: RawFd) -> Result<OwnedFd, Errno> {
    // SAFETY: F_DUPFD_CLOEXEC on a number makes a new fd and touches no
    // memory; on a number that is not open it fails with EBADF.
    let n = Errno::result(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) })?;
    // SAFETY: the fcntl just made this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// Close every fd from `lo` to `hi` (inclusive) except those in `keep`,
/// with close_range over the gaps: no listing of /proc/self/fd, whose cost
/// grows with every fd the process holds. ENOSYS before Linux 5.9.
pub fn close_except(lo: u32, hi: u32, keep: &[RawFd]) -> Result<(), Errno> {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter_map(|&k| u32::try_from(k).ok())
        .filter(|k| (lo..=hi).contains(k))
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let close_range = |a: u32, b: u32| {
        // SAFETY: closing fd numbers has no memory effects; callers close
        // only fds no owned handle refers to.
        Errno::result(unsafe { libc::syscall(libc::SYS_close_range, a, b, 0) }).map(drop)
    };
    let mut start = Some(lo);
    let mut ranges = Vec::new();
    for &k in &keep {
        if let Some(s) = start
            && k > s
        {
            ranges.push((s, k - 1));
        }
        start = k.checked_add(1);
    }
    if let Some(s) = start
        && s <= hi
    {
        ranges.push((s, hi));
    }
    match ranges.iter().try_for_each(|&(a, b)| close_range(a, b)) {
        // No close_range (before Linux 5.9): the table, listed.
        Err(Errno::ENOSYS) => {
            let open: Vec<u32> = std::fs::read_dir("/proc/self/fd")
                .map_err(|_| Errno::ENOSYS)?
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect();
            for fd in open {
                if (lo..=hi).contains(&fd) && keep.binary_search(&fd).is_err() {
                    // SAFETY: as close_range above, one number at a time.
                    unsafe { libc::close(fd.cast_signed()) };
                }
            }
            Ok(())
        }
        r => r,
    }
}

/// Set or clear close-on-exec on `fd`.
pub fn set_cloexec(fd: RawFd, on: bool) -> Result<(), Errno> {
    let flag = if on { libc::FD_CLOEXEC } else { 0 };
    // SAFETY: F_SETFD on an fd number changes only its flags.
    Errno::result(unsafe { libc::fcntl(fd, libc::F_SETFD, flag) }).map(drop)
}

/// A close-on-exec copy of `fd` at `min` or the lowest free number above.
pub fn dup_above(fd: RawFd, min: RawFd) -> Result<RawFd, Errno> {
    // SAFETY: F_DUPFD_CLOEXEC makes a new fd; nothing else changes.
    Errno::result(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) })
}

/// dup3 `from` onto `to`, with or without close-on-exec.
pub fn dup_to(from: RawFd, to: RawFd, cloexec: bool) -> Result<(), Errno> {
    if from == to {
        return Ok(());
    }
    let flags = if cloexec { libc::O_CLOEXEC } else { 0 };
    // SAFETY: dup3 on fd numbers; `to` is replaced atomically.
    Errno::result(unsafe { libc::dup3(from, to, flags) }).map(drop)
}

/// A copy of `fd` at the lowest number from `min` up, close-on-exec.
pub fn dup_at_least(fd: std::os::fd::BorrowedFd<'_>, min: RawFd) -> Result<OwnedFd, Errno> {
    rustix::io::fcntl_dupfd_cloexec(fd, min).map_err(|e| Errno::from_raw(e.raw_os_error()))
}

/// `kcmp(2)`: compare kernel objects of two processes.
pub fn kcmp(pid1: Pid, pid2: Pid, kind: i32, idx1: u64, idx2: u64) -> Result<i64, Errno> {
    if kind == KCMP_EPOLL_TFD {
        // Its second index is a pointer: see kcmp_epoll.
        return Err(Errno::EINVAL);
    }
    // SAFETY: every argument is an integer (KCMP_EPOLL_TFD, whose second
    // index is a pointer, was refused above).
    unsafe {
        syscall(
            libc::SYS_kcmp,
            [
                long(pid1.as_raw()),
                long(pid2.as_raw()),
                long(kind),
                long(idx1),
                long(idx2),
            ],
        )
    }
}

/// `struct kcmp_epoll_slot` for KCMP_EPOLL_TFD.
#[repr(C)]
#[derive(Debug)]
pub struct KcmpEpollSlot {
    /// The epoll descriptor in the first process.
    pub efd: u32,
    /// The target fd registered in it.
    pub tfd: u32,
    /// Its position among registrations of that fd.
    pub toff: u32,
}

/// `kcmp(pid, pid, KCMP_EPOLL_TFD, fd, &slot)`.
pub fn kcmp_epoll(pid: Pid, fd: RawFd, slot: &KcmpEpollSlot) -> Result<i64, Errno> {
    let p = long(pid.as_raw());
    // SAFETY: `slot` is a live, correctly laid out kcmp_epoll_slot the kernel only reads.
    unsafe {
        syscall(
            libc::SYS_kcmp,
            [
                p,
                p,
                long(KCMP_EPOLL_TFD),
                long(fd),
                std::ptr::from_ref(slot) as libc::c_long,
            ],
        )
    }
}

/// `pidfd_send_signal(2)` without siginfo.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: i32) -> Result<(), Errno> {
    // SAFETY: a null siginfo pointer is allowed; the rest are integers.
    unsafe {
        syscall(
            nr::PIDFD_SEND_SIGNAL,
            [long(pidfd.as_raw_fd()), long(sig), 0, 0, 0],
        )
    }
    .map(drop)
}

/// `struct open_how` for openat2.
#[repr(C)]
#[derive(Debug, Default)]
pub struct OpenHow {
    /// O_* flags.
    pub flags: u64,
    /// Creation mode.
    pub mode: u64,
    /// RESOLVE_* flags.
    pub resolve: u64,
}

/// `openat2(AT_FDCWD, path, how)`.
pub fn openat2(path: &std::ffi::CStr, how: &OpenHow) -> Result<OwnedFd, Errno> {
    // SAFETY: path is NUL-terminated and how is a live open_how of the size passed.
    unsafe {
        syscall_fd(
            nr::OPENAT2,
            [
                long(libc::AT_FDCWD),
                path.as_ptr() as libc::c_long,
                std::ptr::from_ref(how) as libc::c_long,
                long(std::mem::size_of::<OpenHow>()),
                0,
            ],
        )
    }
}

/// `fcntl(fd, F_GETOWNER_UIDS, uids)`.
pub fn fcntl_getowner_uids(fd: BorrowedFd<'_>) -> Result<[u32; 2], Errno> {
    const F_GETOWNER_UIDS: i32 = 17;
    let mut uids = [0u32; 2];
    // SAFETY: F_GETOWNER_UIDS writes two uid_t into the live array.
    let ret = unsafe { libc::fcntl(fd.as_raw_fd(), F_GETOWNER_UIDS, uids.as_mut_ptr()) };
    check(ret.into())?;
    Ok(uids)
}

/// The stretches `[start, end)` of offsets of file `f` between `from` and
/// `to` that hold data (SEEK_DATA / SEEK_HOLE), widened to multiples of
/// `granule` (1: exact; a page: for shmem, pages in memory and swapped out
/// alike). Holes stay out.
pub fn data_extents(
    f: BorrowedFd<'_>,
    from: u64,
    to: u64,
    granule: u64,
) -> Result<Vec<(u64, u64)>, Errno> {
    use nix::unistd::{Whence, lseek};
    let g = granule.max(1);
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut off = from;
    while off < to {
        let data = match lseek(f, i64::try_from(off).unwrap_or(i64::MAX), Whence::SeekData) {
            Ok(d) => d.cast_unsigned() / g * g,
            // ENXIO: no data past `off`.
            Err(Errno::ENXIO) => break,
            Err(e) => return Err(e),
        };
        if data >= to {
            break;
        }
        let hole = match lseek(f, i64::try_from(data).unwrap_or(i64::MAX), Whence::SeekHole) {
            Ok(h) => h.cast_unsigned().div_ceil(g) * g,
            Err(Errno::ENXIO) => to,
            Err(e) => return Err(e),
        }
        .min(to);
        if hole <= data.max(off) {
            break;
        }
        out.push((data.max(off), hole));
        off = hole;
    }
    Ok(out)
}
