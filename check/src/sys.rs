//! The only `unsafe` in `check`: thin wrappers over the raw system calls and
//! ioctls that neither `nix` nor the standard library expose (kcmp, clone3,
//! pidfd_getfd, memfd_secret, landlock, mseal, the userfaultfd API, PAGEMAP_SCAN,
//! ...), plus `fork` for probes that must change process state in a child.
//! Every wrapper returns `Result<_, Errno>` without context; the probe that
//! calls it says what the failure means.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};

/// System call numbers at and above 424 are the same on every architecture
/// stasis supports (the kernel's unified table), and older `libc` releases
/// lack some of them for some targets.
pub mod nr {
    #![allow(missing_docs)]
    pub const IO_URING_SETUP: libc::c_long = 425;
    pub const OPEN_TREE: libc::c_long = 428;
    pub const MOVE_MOUNT: libc::c_long = 429;
    pub const PIDFD_SEND_SIGNAL: libc::c_long = 424;
    pub const PIDFD_OPEN: libc::c_long = 434;
    pub const CLONE3: libc::c_long = 435;
    pub const OPENAT2: libc::c_long = 437;
    pub const PIDFD_GETFD: libc::c_long = 438;
    pub const MOUNT_SETATTR: libc::c_long = 442;
    pub const LANDLOCK_CREATE_RULESET: libc::c_long = 444;
    pub const MEMFD_SECRET: libc::c_long = 447;
    pub const MSEAL: libc::c_long = 462;
}

fn check(ret: libc::c_long) -> Result<libc::c_long, Errno> {
    if ret < 0 { Err(Errno::last()) } else { Ok(ret) }
}

/// # Safety
/// The numbered call must not take pointers, or `args` must hold pointers
/// valid for what that call reads and writes.
unsafe fn raw(nr: libc::c_long, args: [libc::c_long; 5]) -> Result<libc::c_long, Errno> {
    // SAFETY: forwarded to the caller, see above.
    check(unsafe { libc::syscall(nr, args[0], args[1], args[2], args[3], args[4]) })
}

/// Takes ownership of a descriptor a system call just returned.
fn owned(fd: libc::c_long) -> Result<OwnedFd, Errno> {
    let fd = RawFd::try_from(fd).map_err(|_| Errno::EBADF)?;
    // SAFETY: the kernel just returned this descriptor to us and nobody else
    // knows its number, so we are its sole owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn long<T: TryInto<libc::c_long>>(v: T) -> libc::c_long {
    v.try_into().unwrap_or(libc::c_long::MAX)
}

/// `kcmp(2)`: compare kernel objects of two processes.
pub fn kcmp(pid1: Pid, pid2: Pid, kind: i32, idx1: u64, idx2: u64) -> Result<i64, Errno> {
    // SAFETY: every argument is an integer (KCMP_EPOLL_TFD's pointer is not used here).
    unsafe {
        raw(
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
    const KCMP_EPOLL_TFD: libc::c_long = 7;
    let p = long(pid.as_raw());
    // SAFETY: `slot` is a live, correctly laid out kcmp_epoll_slot the kernel only reads.
    unsafe {
        raw(
            libc::SYS_kcmp,
            [
                p,
                p,
                KCMP_EPOLL_TFD,
                long(fd),
                std::ptr::from_ref(slot) as libc::c_long,
            ],
        )
    }
}

/// `pidfd_open(2)`.
pub fn pidfd_open(pid: Pid) -> Result<OwnedFd, Errno> {
    // SAFETY: integer arguments only.
    owned(unsafe { raw(nr::PIDFD_OPEN, [long(pid.as_raw()), 0, 0, 0, 0]) }?)
}

/// `pidfd_getfd(2)`: duplicate `target_fd` of the process behind `pidfd`.
pub fn pidfd_getfd(pidfd: BorrowedFd<'_>, target_fd: RawFd) -> Result<OwnedFd, Errno> {
    // SAFETY: integer arguments only.
    owned(unsafe {
        raw(
            nr::PIDFD_GETFD,
            [long(pidfd.as_raw_fd()), long(target_fd), 0, 0, 0],
        )
    }?)
}

/// `pidfd_send_signal(2)` without siginfo.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: i32) -> Result<(), Errno> {
    // SAFETY: a null siginfo pointer is allowed; the rest are integers.
    unsafe {
        raw(
            nr::PIDFD_SEND_SIGNAL,
            [long(pidfd.as_raw_fd()), long(sig), 0, 0, 0],
        )
    }
    .map(drop)
}

/// `struct clone_args` up to and including `cgroup` (CLONE_ARGS_SIZE_VER2).
#[repr(C)]
#[derive(Debug, Default)]
pub struct CloneArgs {
    /// CLONE_* flags.
    pub flags: u64,
    /// Where to store a pidfd (CLONE_PIDFD).
    pub pidfd: u64,
    /// CLONE_CHILD_SETTID target.
    pub child_tid: u64,
    /// CLONE_PARENT_SETTID target.
    pub parent_tid: u64,
    /// Signal sent to the parent at exit.
    pub exit_signal: u64,
    /// Stack (0: share the caller's, fork-like).
    pub stack: u64,
    /// Stack size.
    pub stack_size: u64,
    /// TLS (CLONE_SETTLS).
    pub tls: u64,
    /// Pointer to the array of wanted PIDs, innermost namespace first.
    pub set_tid: u64,
    /// Length of that array.
    pub set_tid_size: u64,
    /// Cgroup fd (CLONE_INTO_CGROUP).
    pub cgroup: u64,
}

/// What a fork-like call returned.
#[derive(Debug)]
pub enum Forked {
    /// In the parent: the child's pid.
    Parent(Pid),
    /// In the child.
    Child,
}

/// `clone3(2)` used like `fork`: no new stack, no CLONE_VM.
///
/// # Safety
/// As for `fork` in a multi-threaded program: in the child, only
/// async-signal-safe work may happen before `_exit`. `args.set_tid` must be 0
/// or point to `set_tid_size` live `pid_t`s.
pub unsafe fn clone3(args: &CloneArgs) -> Result<Forked, Errno> {
    let size = long(std::mem::size_of::<CloneArgs>());
    // SAFETY: args is a live clone_args of the size passed; the caller upholds
    // the fork rules and the set_tid pointer contract.
    let ret = unsafe {
        raw(
            nr::CLONE3,
            [std::ptr::from_ref(args) as libc::c_long, size, 0, 0, 0],
        )
    }?;
    Ok(if ret == 0 {
        Forked::Child
    } else {
        Forked::Parent(Pid::from_raw(i32::try_from(ret).unwrap_or(-1)))
    })
}

/// Calls clone3 with a deliberately invalid set_tid (size 1, null array) so
/// that the kernel answers with an error and creates nothing: ENOSYS (no
/// clone3), E2BIG (no set_tid fields) or EINVAL (set_tid understood).
pub fn clone3_probe_set_tid() -> Errno {
    let args = CloneArgs {
        set_tid_size: 1,
        exit_signal: 17,
        ..CloneArgs::default()
    };
    // SAFETY: set_tid is null with a non-zero size, which every kernel rejects
    // before creating a task, so no child can ever run.
    match unsafe { clone3(&args) } {
        Err(e) => e,
        Ok(Forked::Parent(pid)) => {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
            Errno::UnknownErrno
        }
        // SAFETY: _exit is async-signal-safe; nothing else runs in the child.
        Ok(Forked::Child) => unsafe { libc::_exit(0) },
    }
}

/// `memfd_secret(2)`.
pub fn memfd_secret() -> Result<OwnedFd, Errno> {
    // SAFETY: integer arguments only.
    owned(unsafe { raw(nr::MEMFD_SECRET, [libc::O_CLOEXEC.into(), 0, 0, 0, 0]) }?)
}

/// `landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)`: the ABI version.
pub fn landlock_abi_version() -> Result<i64, Errno> {
    // SAFETY: a null attr with size 0 is the documented version query.
    unsafe { raw(nr::LANDLOCK_CREATE_RULESET, [0, 0, 1, 0, 0]) }
}

/// `mseal(2)` on a mapping the caller owns.
///
/// # Safety
/// `addr..addr+len` must be a mapping the caller created for this purpose.
pub unsafe fn mseal(addr: *mut libc::c_void, len: usize) -> Result<(), Errno> {
    // SAFETY: forwarded to the caller.
    unsafe { raw(nr::MSEAL, [addr as libc::c_long, long(len), 0, 0, 0]) }.map(drop)
}

/// `io_uring_setup(entries, params)`; returns the ring fd.
pub fn io_uring_setup(entries: u32) -> Result<OwnedFd, Errno> {
    let mut params = [0u8; 120];
    // SAFETY: params is a zeroed struct io_uring_params (120 bytes) the kernel fills.
    owned(unsafe {
        raw(
            nr::IO_URING_SETUP,
            [long(entries), params.as_mut_ptr() as libc::c_long, 0, 0, 0],
        )
    }?)
}

/// `open_tree(dirfd, path, flags)`.
pub fn open_tree(path: &std::ffi::CStr, flags: u32) -> Result<OwnedFd, Errno> {
    // SAFETY: path is a NUL-terminated string alive for the call.
    owned(unsafe {
        raw(
            nr::OPEN_TREE,
            [
                long(libc::AT_FDCWD),
                path.as_ptr() as libc::c_long,
                long(flags),
                0,
                0,
            ],
        )
    }?)
}

/// `move_mount(from_dirfd, from_path, to_dirfd, to_path, flags)`.
pub fn move_mount(
    from: Option<BorrowedFd<'_>>,
    from_path: &std::ffi::CStr,
    to: Option<BorrowedFd<'_>>,
    to_path: &std::ffi::CStr,
    flags: u32,
) -> Result<(), Errno> {
    let dfd = |fd: Option<BorrowedFd<'_>>| long(fd.map_or(libc::AT_FDCWD, |f| f.as_raw_fd()));
    // SAFETY: both paths are NUL-terminated strings alive for the call.
    unsafe {
        raw(
            nr::MOVE_MOUNT,
            [
                dfd(from),
                from_path.as_ptr() as libc::c_long,
                dfd(to),
                to_path.as_ptr() as libc::c_long,
                long(flags),
            ],
        )
    }
    .map(drop)
}

/// `struct mount_attr`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct MountAttr {
    /// MOUNT_ATTR_* to set.
    pub attr_set: u64,
    /// MOUNT_ATTR_* to clear.
    pub attr_clr: u64,
    /// Propagation type.
    pub propagation: u64,
    /// User namespace fd for MOUNT_ATTR_IDMAP.
    pub userns_fd: u64,
}

/// `mount_setattr(fd, "", AT_EMPTY_PATH, attr, size)`.
pub fn mount_setattr(fd: BorrowedFd<'_>, attr: &MountAttr) -> Result<(), Errno> {
    let empty = c"";
    // SAFETY: the path is a static empty string and attr a live mount_attr of the size passed.
    unsafe {
        raw(
            nr::MOUNT_SETATTR,
            [
                long(fd.as_raw_fd()),
                empty.as_ptr() as libc::c_long,
                long(libc::AT_EMPTY_PATH),
                std::ptr::from_ref(attr) as libc::c_long,
                long(std::mem::size_of::<MountAttr>()),
            ],
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
    owned(unsafe {
        raw(
            nr::OPENAT2,
            [
                long(libc::AT_FDCWD),
                path.as_ptr() as libc::c_long,
                std::ptr::from_ref(how) as libc::c_long,
                long(std::mem::size_of::<OpenHow>()),
                0,
            ],
        )
    }?)
}

/// `userfaultfd(flags)`.
pub fn userfaultfd(flags: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: integer arguments only.
    owned(unsafe { raw(libc::SYS_userfaultfd, [long(flags), 0, 0, 0, 0]) }?)
}

/// `struct uffdio_api`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct UffdioApi {
    /// UFFD_API.
    pub api: u64,
    /// Requested, then granted, feature bits.
    pub features: u64,
    /// Supported ioctls (out).
    pub ioctls: u64,
}

/// Where the direction bits start: powerpc has 3 of them above a 13-bit
/// size, the others 2 above a 14-bit size.
#[cfg(any(target_arch = "powerpc64", target_arch = "powerpc"))]
const DIR_SHIFT: u32 = 29;
#[cfg(not(any(target_arch = "powerpc64", target_arch = "powerpc")))]
const DIR_SHIFT: u32 = 30;

const fn iowr(ty: u8, nr: u8, size: usize) -> libc::c_ulong {
    // _IOC(_IOC_READ|_IOC_WRITE, type, nr, size) in the generic layout; powerpc
    // uses different direction bits, handled by `dir_rw`.
    ((dir_rw() as libc::c_ulong) << DIR_SHIFT)
        | ((size as libc::c_ulong) << 16)
        | ((ty as libc::c_ulong) << 8)
        | nr as libc::c_ulong
}

const fn iow(ty: u8, nr: u8, size: usize) -> libc::c_ulong {
    ((dir_w() as libc::c_ulong) << DIR_SHIFT)
        | ((size as libc::c_ulong) << 16)
        | ((ty as libc::c_ulong) << 8)
        | nr as libc::c_ulong
}

const fn io(ty: u8, nr: u8) -> libc::c_ulong {
    (dir_none() << DIR_SHIFT) | ((ty as libc::c_ulong) << 8) | nr as libc::c_ulong
}

#[cfg(any(target_arch = "powerpc64", target_arch = "powerpc"))]
const fn dir_rw() -> u32 {
    6
}
#[cfg(any(target_arch = "powerpc64", target_arch = "powerpc"))]
const fn dir_w() -> u32 {
    4
}
#[cfg(any(target_arch = "powerpc64", target_arch = "powerpc"))]
const fn dir_none() -> libc::c_ulong {
    1
}
#[cfg(not(any(target_arch = "powerpc64", target_arch = "powerpc")))]
const fn dir_rw() -> u32 {
    3
}
#[cfg(not(any(target_arch = "powerpc64", target_arch = "powerpc")))]
const fn dir_w() -> u32 {
    1
}
#[cfg(not(any(target_arch = "powerpc64", target_arch = "powerpc")))]
const fn dir_none() -> libc::c_ulong {
    0
}

/// ioctl request numbers built from the kernel's UAPI headers.
pub mod ioc {
    #![allow(missing_docs)]
    use super::{io, iow, iowr};
    pub const UFFDIO_API: libc::c_ulong = iowr(0xAA, 0x3F, 24);
    pub const UFFDIO_REGISTER: libc::c_ulong = iowr(0xAA, 0x00, 32);
    pub const UFFDIO_WRITEPROTECT: libc::c_ulong = iowr(0xAA, 0x06, 24);
    pub const PAGEMAP_SCAN: libc::c_ulong = iowr(b'f', 16, 96);
    pub const TFD_IOC_SET_TICKS: libc::c_ulong = iow(b'T', 0, 8);
    pub const TUNSETIFINDEX: libc::c_ulong = iow(b'T', 218, 4);
    pub const TIOCSPTLCK: libc::c_ulong = iow(b'T', 0x31, 4);
    pub const NS_GET_NSTYPE: libc::c_ulong = io(0xb7, 0x3);
}

/// An ioctl whose argument is a pointer to `T`, read and/or written.
///
/// # Safety
/// `req` must be a request whose argument is a `T` (or a prefix of it the
/// kernel bounds by a size field inside `T`).
pub unsafe fn ioctl_ptr<T>(
    fd: BorrowedFd<'_>,
    req: libc::c_ulong,
    arg: &mut T,
) -> Result<i64, Errno> {
    // SAFETY: forwarded to the caller; arg is live and exclusive for the call.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, std::ptr::from_mut(arg)) };
    check(libc::c_long::from(ret))
}

/// An ioctl with an integer argument (or none).
pub fn ioctl_int(fd: BorrowedFd<'_>, req: libc::c_ulong, arg: libc::c_ulong) -> Result<i64, Errno> {
    // SAFETY: only called with requests whose argument is an integer (SIOCGSKNS,
    // NS_GET_NSTYPE, SIOCUNIXFILE), never a pointer.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg) };
    check(libc::c_long::from(ret))
}

/// `struct pm_scan_arg` for PAGEMAP_SCAN.
#[repr(C)]
#[derive(Debug, Default)]
pub struct PmScanArg {
    /// sizeof(struct pm_scan_arg).
    pub size: u64,
    /// PM_SCAN_* flags.
    pub flags: u64,
    /// Range start.
    pub start: u64,
    /// Range end.
    pub end: u64,
    /// Where the walk stopped (out).
    pub walk_end: u64,
    /// Output array of page_region.
    pub vec: u64,
    /// Its length.
    pub vec_len: u64,
    /// Maximum pages to report (0: no limit).
    pub max_pages: u64,
    /// Pages must have all of these.
    pub category_inverted: u64,
    /// Categories of interest.
    pub category_mask: u64,
    /// Pages must have any of these.
    pub category_anyof_mask: u64,
    /// Categories to return.
    pub return_mask: u64,
}

/// `struct page_region`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct PageRegion {
    /// Start address.
    pub start: u64,
    /// End address.
    pub end: u64,
    /// Category bits.
    pub categories: u64,
}

/// PAGEMAP_SCAN over `[start, end)` on an open `/proc/.../pagemap`.
pub fn pagemap_scan(
    pagemap: BorrowedFd<'_>,
    start: u64,
    end: u64,
    flags: u64,
    mask: u64,
    out: &mut [PageRegion],
) -> Result<usize, Errno> {
    let mut arg = PmScanArg {
        size: u64::try_from(std::mem::size_of::<PmScanArg>()).unwrap_or(96),
        flags,
        start,
        end,
        vec: out.as_mut_ptr() as u64,
        vec_len: u64::try_from(out.len()).unwrap_or(0),
        category_mask: mask,
        return_mask: mask,
        ..PmScanArg::default()
    };
    // SAFETY: PAGEMAP_SCAN takes a pm_scan_arg whose vec/vec_len describe
    // `out`, a live exclusive buffer of page_region.
    let n = unsafe { ioctl_ptr(pagemap, ioc::PAGEMAP_SCAN, &mut arg) }?;
    usize::try_from(n).map_err(|_| Errno::EINVAL)
}

/// An anonymous private mapping, unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    addr: std::ptr::NonNull<libc::c_void>,
    len: usize,
}

impl Mapping {
    /// `mmap(NULL, len, prot, MAP_PRIVATE|MAP_ANONYMOUS|extra, -1, 0)`.
    pub fn anon(len: usize, prot: i32, extra: i32) -> Result<Self, Errno> {
        // SAFETY: a fresh anonymous mapping at a kernel-chosen address aliases nothing.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | extra,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Errno::last());
        }
        std::ptr::NonNull::new(p)
            .map(|addr| Self { addr, len })
            .ok_or(Errno::EFAULT)
    }

    /// `mmap(NULL, len, prot, flags, fd, 0)` of a file.
    pub fn file(len: usize, prot: i32, flags: i32, fd: BorrowedFd<'_>) -> Result<Self, Errno> {
        // SAFETY: a new mapping at a kernel-chosen address aliases no Rust object.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd.as_raw_fd(), 0) };
        if p == libc::MAP_FAILED {
            return Err(Errno::last());
        }
        std::ptr::NonNull::new(p)
            .map(|addr| Self { addr, len })
            .ok_or(Errno::EFAULT)
    }

    /// Start address.
    pub fn addr(&self) -> u64 {
        self.addr.as_ptr() as u64
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Raw pointer to the start.
    pub fn ptr(&self) -> *mut libc::c_void {
        self.addr.as_ptr()
    }

    /// Writes one byte at `off` (the mapping must be writable).
    pub fn poke(&self, off: usize, val: u8) {
        if off < self.len {
            // SAFETY: off is inside the mapping, which we own and which is
            // writable by the caller's contract; volatile because the kernel
            // observes the access (dirty bits, uffd).
            unsafe {
                std::ptr::write_volatile(self.addr.as_ptr().cast::<u8>().wrapping_add(off), val)
            }
        }
    }

    /// Reads one byte at `off` (the mapping must be readable).
    pub fn peek(&self, off: usize) -> u8 {
        if off >= self.len {
            return 0;
        }
        // SAFETY: off is inside the readable mapping we own.
        unsafe { std::ptr::read_volatile(self.addr.as_ptr().cast::<u8>().wrapping_add(off)) }
    }

    /// `madvise` on the sub-range `[off, off+len)`.
    pub fn madvise(&self, off: usize, len: usize, advice: i32) -> Result<(), Errno> {
        if off.saturating_add(len) > self.len {
            return Err(Errno::EINVAL);
        }
        // SAFETY: the range lies inside our own mapping; no Rust reference points into it.
        check(
            unsafe {
                libc::madvise(
                    self.addr.as_ptr().cast::<u8>().wrapping_add(off).cast(),
                    len,
                    advice,
                )
            }
            .into(),
        )
        .map(drop)
    }

    /// Gives up ownership without unmapping (after mseal, say).
    pub fn leak(self) {
        std::mem::forget(self);
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: we own the mapping and nothing refers into it any more.
        unsafe { libc::munmap(self.addr.as_ptr(), self.len) };
    }
}

/// `mremap(old, len, len, MREMAP_MAYMOVE|MREMAP_FIXED, new)`.
///
/// # Safety
/// Moves a mapping under the program's feet: only for forked probe children
/// moving mappings no Rust object refers to (vdso, vvar, aio rings).
pub unsafe fn mremap_fixed(old: u64, len: u64, new: u64) -> Result<u64, Errno> {
    // SAFETY: forwarded to the caller.
    let p = unsafe {
        libc::mremap(
            old as *mut libc::c_void,
            usize::try_from(len).map_err(|_| Errno::EINVAL)?,
            usize::try_from(len).map_err(|_| Errno::EINVAL)?,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            new as *mut libc::c_void,
        )
    };
    if p == libc::MAP_FAILED {
        Err(Errno::last())
    } else {
        Ok(p as u64)
    }
}

/// `ptrace(req, pid, addr, data)` for the requests nix does not wrap.
///
/// # Safety
/// `addr` and `data` must be what `req` expects (integers, or pointers to live
/// buffers of the size the request reads or writes).
pub unsafe fn ptrace_raw(req: u32, pid: Pid, addr: u64, data: u64) -> Result<i64, Errno> {
    Errno::clear();
    // SAFETY: forwarded to the caller.
    let ret = unsafe {
        libc::ptrace(
            req as _,
            pid.as_raw(),
            addr as *mut libc::c_void,
            data as *mut libc::c_void,
        )
    };
    if ret == -1 && Errno::last_raw() != 0 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

/// `rt_sigqueueinfo(pid, sig, info)` with `si_code = code` (positive: "from the kernel").
pub fn rt_sigqueueinfo(pid: Pid, sig: i32, code: i32, value: i32) -> Result<(), Errno> {
    // siginfo_t is 128 bytes: si_signo, si_errno, si_code, then the union
    // whose rt members start at offset 16 on 64-bit targets.
    let mut info = [0i32; 32];
    info[0] = sig;
    info[2] = code;
    info[4] = pid.as_raw();
    // SAFETY: getuid has no preconditions.
    info[5] = i32::from_ne_bytes(unsafe { libc::getuid() }.to_ne_bytes());
    info[6] = value;
    // SAFETY: info is a live 128-byte siginfo_t the kernel copies in.
    unsafe {
        raw(
            libc::SYS_rt_sigqueueinfo,
            [
                long(pid.as_raw()),
                long(sig),
                info.as_mut_ptr() as libc::c_long,
                0,
                0,
            ],
        )
    }
    .map(drop)
}

/// `arch_prctl(ARCH_MAP_VDSO_64, addr)`: x86-64 only.
#[cfg(target_arch = "x86_64")]
pub fn arch_map_vdso(addr: u64) -> Result<i64, Errno> {
    const ARCH_MAP_VDSO_64: libc::c_long = 0x2003;
    // SAFETY: integer arguments; the kernel maps a new vdso at a free address we chose.
    unsafe {
        raw(
            libc::SYS_arch_prctl,
            [ARCH_MAP_VDSO_64, long(addr), 0, 0, 0],
        )
    }
}

/// `prctl` with integer arguments.
pub fn prctl(op: i32, a: u64, b: u64, c: u64, d: u64) -> Result<i64, Errno> {
    // SAFETY: only used with operations taking integers or a pointer to an
    // integer the caller passes as `a` and keeps alive (PR_GET_TID_ADDRESS,
    // PR_SET_MM_MAP_SIZE).
    let ret = unsafe { libc::prctl(op, a, b, c, d) };
    check(libc::c_long::from(ret))
}

/// `io_setup`, `io_getevents(0 events)`, `io_destroy` around a ring.
pub mod aio {
    use super::{Errno, check, long, raw};

    /// `io_setup(nr, &ctx)`: the ring's address.
    pub fn setup(nr: u32) -> Result<u64, Errno> {
        let mut ctx: u64 = 0;
        // SAFETY: ctx is a live, zeroed aio_context_t the kernel fills.
        unsafe {
            raw(
                libc::SYS_io_setup,
                [
                    long(nr),
                    std::ptr::from_mut(&mut ctx) as libc::c_long,
                    0,
                    0,
                    0,
                ],
            )
        }?;
        Ok(ctx)
    }

    /// `io_getevents(ctx, 0, 0, NULL, &zero_timeout)`.
    pub fn getevents_nowait(ctx: u64) -> Result<i64, Errno> {
        let ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: no events are requested, so the null events pointer is never written.
        check(unsafe {
            libc::syscall(
                libc::SYS_io_getevents,
                ctx,
                0,
                0,
                std::ptr::null_mut::<u8>(),
                std::ptr::from_ref(&ts),
            )
        })
    }

    /// An aio context whose ring we may move: no Rust reference ever
    /// points into the ring, the kernel alone reads and writes it.
    #[derive(Debug)]
    pub struct Ring(u64);

    impl Ring {
        /// `io_setup(nr)`.
        pub fn new(nr: u32) -> Result<Self, Errno> {
            setup(nr).map(Self)
        }

        /// The context id, which is the ring's address.
        pub fn id(&self) -> u64 {
            self.0
        }

        /// Moves the ring (`len` bytes) elsewhere with mremap; the kernel
        /// renames the context to the new address.
        pub fn remap(&mut self, len: u64) -> Result<(), Errno> {
            let dst = super::Mapping::anon(
                usize::try_from(len).map_err(|_| Errno::EINVAL)?,
                libc::PROT_NONE,
                0,
            )?;
            let to = dst.addr();
            dst.leak();
            // SAFETY: the ring is ours and nothing in Rust refers into it.
            match unsafe { super::mremap_fixed(self.0, len, to) } {
                Ok(new) => {
                    self.0 = new;
                    Ok(())
                }
                Err(e) => {
                    // SAFETY: the placeholder is ours and unused.
                    let _ = unsafe { super::munmap(to, len) };
                    Err(e)
                }
            }
        }
    }

    impl Drop for Ring {
        fn drop(&mut self) {
            destroy(self.0);
        }
    }

    /// `io_destroy(ctx)`.
    pub fn destroy(ctx: u64) {
        // SAFETY: ctx is a ring we created; destroying twice only returns EINVAL.
        let _ = unsafe { raw(libc::SYS_io_destroy, [long(ctx), 0, 0, 0, 0]) };
    }
}

/// `_exit`: leave a forked child without running anything of the parent's.
pub fn exit_child(code: i32) -> ! {
    // SAFETY: _exit is async-signal-safe and never returns.
    unsafe { libc::_exit(code) }
}

/// A forked child, killed and reaped when dropped.
#[derive(Debug)]
pub struct Child {
    pid: Pid,
    reaped: bool,
}

/// Forks; the child runs `f` and exits with its return value (or 127 if it
/// returns an error code that does not fit).
///
/// In the child only async-signal-safe work may happen: no allocation, no
/// locks, no std I/O. The child gets SIGKILL if its parent thread dies, so a
/// hung probe never leaves it behind.
pub fn fork_child(f: impl FnOnce(&ChildCtx) -> i32) -> Result<Child, Errno> {
    // SAFETY: the child runs only `f`, which by this function's contract is
    // async-signal-safe, then _exit; it never returns into the parent's code.
    match unsafe { nix::unistd::fork() }? {
        ForkResult::Parent { child } => Ok(Child {
            pid: child,
            reaped: false,
        }),
        ForkResult::Child => {
            // SAFETY: prctl is async-signal-safe.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
            exit_child(f(&ChildCtx(())))
        }
    }
}

impl Child {
    /// Wraps a child created some other way (clone3).
    pub fn adopt(pid: Pid) -> Self {
        Self { pid, reaped: false }
    }

    /// The child's pid.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Waits up to `timeout` for the child to exit or stop (`WUNTRACED`
    /// style flags are the caller's choice through `flags`).
    pub fn wait_timeout(
        &mut self,
        timeout: Duration,
        flags: WaitPidFlag,
    ) -> Result<WaitStatus, Errno> {
        let deadline = Instant::now() + timeout;
        let pidfd = pidfd_open(self.pid).ok();
        loop {
            let st = waitpid(self.pid, Some(flags | WaitPidFlag::WNOHANG))?;
            if st != WaitStatus::StillAlive {
                if matches!(st, WaitStatus::Exited(..) | WaitStatus::Signaled(..)) {
                    self.reaped = true;
                }
                return Ok(st);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Errno::ETIMEDOUT);
            }
            match &pidfd {
                // A pidfd becomes readable only at exit; stops need polling.
                Some(fd) if flags.is_empty() => {
                    let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX).max(1);
                    let mut fds = [PollFd::new(std::os::fd::AsFd::as_fd(fd), PollFlags::POLLIN)];
                    let _ = poll(&mut fds, PollTimeout::from(ms));
                }
                _ => std::thread::sleep(Duration::from_micros(200).min(left)),
            }
        }
    }

    /// Waits for exit; `Ok(code)` for a normal exit, `Err` describes anything else.
    pub fn exit_code(&mut self, timeout: Duration) -> Result<i32, String> {
        match self.wait_timeout(timeout, WaitPidFlag::empty()) {
            Ok(WaitStatus::Exited(_, code)) => Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => Err(format!("the child was killed by {sig}")),
            Ok(other) => Err(format!("unexpected child state {other:?}")),
            Err(Errno::ETIMEDOUT) => Err(format!(
                "the child did not finish within {} ms",
                timeout.as_millis()
            )),
            Err(e) => Err(format!("waitpid: {e}")),
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = kill(self.pid, Signal::SIGKILL);
            let _ = waitpid(self.pid, None);
        }
    }
}

/// `raise`-like: sends `sig` to the calling thread (async-signal-safe).
pub fn raise(sig: Signal) {
    // SAFETY: raise is async-signal-safe and takes a plain integer.
    unsafe { libc::raise(sig as i32) };
}

/// The calling thread's kernel id (gettid).
pub fn gettid() -> Pid {
    // SAFETY: gettid has no preconditions.
    Pid::from_raw(unsafe { libc::gettid() })
}

/// `timer_create` through the raw system call, so that the kernel sees the
/// timer id we pass (needed for PR_TIMER_CREATE_RESTORE_IDS); `want` is the
/// id to request, if any. Async-signal-safe.
pub fn timer_create_raw(
    clock: i32,
    signo: i32,
    value: i64,
    want: Option<i32>,
) -> Result<i32, Errno> {
    // struct sigevent: sigev_value (8), sigev_signo (4), sigev_notify (4), rest.
    let mut sev = [0u8; 64];
    sev[..8].copy_from_slice(&value.to_ne_bytes());
    sev[8..12].copy_from_slice(&signo.to_ne_bytes());
    sev[12..16].copy_from_slice(&libc::SIGEV_SIGNAL.to_ne_bytes());
    let mut id: i32 = want.unwrap_or(0);
    // SAFETY: sev is a 64-byte sigevent and id a live timer_t (int) the kernel
    // reads (with restore ids on) and writes.
    unsafe {
        raw(
            libc::SYS_timer_create,
            [
                long(clock),
                sev.as_mut_ptr() as libc::c_long,
                std::ptr::from_mut(&mut id) as libc::c_long,
                0,
                0,
            ],
        )
    }?;
    Ok(id)
}

/// PROCMAP_QUERY on an open /proc/PID/maps: the VMA covering `addr`.
pub fn procmap_query(maps: BorrowedFd<'_>, addr: u64) -> Result<(u64, u64), Errno> {
    // struct procmap_query (104 bytes): size, query_flags, query_addr,
    // vma_start, vma_end, vma_flags, vma_page_size, vma_offset, inode,
    // dev_major, dev_minor, vma_name_size, build_id_size, vma_name_addr,
    // build_id_addr.
    let mut q = [0u64; 13];
    q[0] = 104;
    q[2] = addr;
    const PROCMAP_QUERY: libc::c_ulong = iowr(b'f', 17, 104);
    // SAFETY: q is a zeroed 104-byte procmap_query with no output buffers
    // (name and build-id sizes are 0).
    unsafe { ioctl_ptr(maps, PROCMAP_QUERY, &mut q) }?;
    Ok((q[3], q[4]))
}

/// `setsockopt` with a raw byte value.
pub fn setsockopt_raw(fd: BorrowedFd<'_>, level: i32, name: i32, val: &[u8]) -> Result<(), Errno> {
    let len = libc::socklen_t::try_from(val.len()).map_err(|_| Errno::EINVAL)?;
    // SAFETY: val is a live buffer of the length passed, only read by the kernel.
    let ret = unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, val.as_ptr().cast(), len) };
    check(ret.into()).map(drop)
}

/// `getsockopt` into a buffer of `cap` bytes; returns the bytes the kernel wrote
/// (or, for options answering in optlen, a buffer of the length it reported).
pub fn getsockopt_raw(
    fd: BorrowedFd<'_>,
    level: i32,
    name: i32,
    cap: usize,
) -> Result<Vec<u8>, Errno> {
    let mut buf = vec![0u8; cap];
    let mut len = libc::socklen_t::try_from(cap).map_err(|_| Errno::EINVAL)?;
    // SAFETY: buf has `len` writable bytes and len is a live socklen_t.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    check(ret.into())?;
    buf.resize(usize::try_from(len).unwrap_or(0), 0);
    Ok(buf)
}

/// `sigtimedwait` for one signal with a zero timeout: (si_code, si_int).
pub fn sigtimedwait_now(sig: Signal) -> Result<(i32, i32), Errno> {
    let set = nix::sys::signal::SigSet::from(sig);
    let ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let mut info = [0i32; 32];
    // SAFETY: set is a valid sigset, info a 128-byte siginfo buffer, ts a live timespec.
    let ret = unsafe { libc::sigtimedwait(set.as_ref(), info.as_mut_ptr().cast(), &ts) };
    check(ret.into())?;
    Ok((info[2], info[6]))
}

/// Takes ownership of a descriptor returned through an ioctl.
pub fn owned_fd(fd: i64) -> Result<OwnedFd, Errno> {
    owned(libc::c_long::try_from(fd).map_err(|_| Errno::EBADF)?)
}

/// An ioctl whose argument is a pointer to an `int`.
pub fn ioctl_int_ptr(fd: BorrowedFd<'_>, req: libc::c_ulong, arg: &mut i32) -> Result<i64, Errno> {
    // SAFETY: the requests used with this helper (TUNSETIFINDEX, TIOCSPTLCK,
    // TIOCGPTN) take a pointer to one int, which `arg` is.
    unsafe { ioctl_ptr(fd, req, arg) }
}

/// The current program break (`brk(0)`).
pub fn current_brk() -> u64 {
    // SAFETY: brk(0) only queries the current break.
    let b = unsafe { libc::syscall(libc::SYS_brk, 0) };
    u64::try_from(b).unwrap_or(0)
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

/// `rseq(NULL, 0, 0, 0)`: an invalid registration the kernel rejects with
/// EINVAL when rseq exists and ENOSYS when it does not.
pub fn rseq_probe() -> Errno {
    // SAFETY: a null area with length 0 is rejected before anything is read.
    match unsafe { raw(libc::SYS_rseq, [0, 0, 0, 0, 0]) } {
        Ok(_) => Errno::UnknownErrno,
        Err(e) => e,
    }
}

/// `getauxval(key)`.
pub fn auxv(key: u64) -> u64 {
    // SAFETY: getauxval has no preconditions and returns 0 for unknown keys.
    unsafe { libc::getauxval(key as libc::c_ulong) }
}

/// `munmap` of an area no Rust object refers to.
///
/// # Safety
/// Nothing may use `[addr, addr+len)` afterwards (forked probe children
/// removing their vdso, say).
pub unsafe fn munmap(addr: u64, len: u64) -> Result<(), Errno> {
    // SAFETY: forwarded to the caller.
    check(
        unsafe {
            libc::munmap(
                addr as *mut libc::c_void,
                usize::try_from(len).map_err(|_| Errno::EINVAL)?,
            )
        }
        .into(),
    )
    .map(drop)
}

/// A 32-bit system call through `int $0x80` (x86-64 with IA32 emulation).
#[cfg(target_arch = "x86_64")]
pub fn int80(nr: u32, a: [u32; 5]) -> i64 {
    let ret: u32;
    // SAFETY: the ia32 entry only reads the six argument registers and returns
    // in eax; ebp (6th argument) is saved, zeroed and restored around it.
    unsafe {
        std::arch::asm!(
            "push rbp",
            "push rbx",
            "mov ebx, {a0:e}",
            "xor ebp, ebp",
            "int 0x80",
            "pop rbx",
            "pop rbp",
            a0 = in(reg) a[0],
            inlateout("eax") nr => ret,
            in("ecx") a[1], in("edx") a[2], in("esi") a[3], in("edi") a[4],
        );
    }
    i64::from(i32::from_ne_bytes(ret.to_ne_bytes()))
}

/// Installs `handler` for `sig` (async-signal-safe: for use in probe children).
pub fn set_handler(sig: Signal, handler: extern "C" fn(i32)) -> Result<(), Errno> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, sigaction};
    let act = SigAction::new(
        SigHandler::Handler(handler),
        SaFlags::empty(),
        nix::sys::signal::SigSet::empty(),
    );
    // SAFETY: the handlers passed here only store to an atomic.
    unsafe { sigaction(sig, &act) }.map(drop)
}

/// Proof that code runs in a probe child forked by [`fork_child`], which
/// exits without returning into the parent's code: operations that would be
/// unsound in the main process (moving or removing mappings behind the
/// program's back) are safe there, because nothing else runs afterwards.
#[derive(Debug)]
pub struct ChildCtx(());

impl ChildCtx {
    /// Moves `[old, old+len)` to a fresh kernel-chosen place.
    pub fn move_area(&self, old: u64, len: u64) -> Result<u64, Errno> {
        let len_us = usize::try_from(len).map_err(|_| Errno::EINVAL)?;
        let dst = Mapping::anon(len_us, libc::PROT_NONE, 0)?;
        let to = dst.addr();
        dst.leak();
        // SAFETY: we are in a probe child (self proves it); the caller's code
        // holds no Rust references into the moved area and exits soon.
        unsafe { mremap_fixed(old, len, to) }
    }

    /// Unmaps `[addr, addr+len)`.
    pub fn unmap(&self, addr: u64, len: u64) -> Result<(), Errno> {
        // SAFETY: as for move_area: a probe child that never touches the area again.
        unsafe { munmap(addr, len) }
    }

    /// Seals `m` with mseal(2) and gives it up (it can never be unmapped).
    pub fn seal(&self, m: Mapping) -> Result<(u64, u64), Errno> {
        let (a, l) = (m.addr(), m.len() as u64);
        // SAFETY: the mapping is ours, created for this purpose.
        unsafe { mseal(m.ptr(), m.len()) }?;
        m.leak();
        Ok((a, l))
    }

    /// Creates a child with clone3 whose only action is `_exit(code)`; the
    /// returned pid is ours to reap (or our parent's with CLONE_PARENT).
    pub fn clone3_exit(&self, flags: u64, exit_signal: u64, code: i32) -> Result<Pid, Errno> {
        clone3_exit(flags, exit_signal, &[], code)
    }
}

/// clone3 a child that immediately calls `_exit(code)`; `set_tid` lists the
/// PIDs wanted, innermost namespace first (empty: any).
pub fn clone3_exit(flags: u64, exit_signal: u64, set_tid: &[i32], code: i32) -> Result<Pid, Errno> {
    let args = CloneArgs {
        flags,
        exit_signal,
        set_tid: if set_tid.is_empty() {
            0
        } else {
            set_tid.as_ptr() as u64
        },
        set_tid_size: set_tid.len() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: the child only calls _exit; set_tid points to a live array of
    // the length given.
    match unsafe { clone3(&args) }? {
        Forked::Parent(pid) => Ok(pid),
        Forked::Child => exit_child(code),
    }
}

/// ptrace PEEKSIGINFO: up to 8 pending siginfos of a stopped tracee as
/// (signo, code) pairs, from the shared queue if `shared`.
pub fn ptrace_peeksiginfo(pid: Pid, shared: bool) -> Result<Vec<(i32, i32)>, Errno> {
    const PTRACE_PEEKSIGINFO: u32 = 0x4209;
    let args: [u32; 4] = [0, 0, u32::from(shared), 8];
    let mut infos = [[0i32; 32]; 8];
    // SAFETY: args is a live ptrace_peeksiginfo_args; infos has room for the 8 siginfo_t asked for.
    let n = unsafe {
        ptrace_raw(
            PTRACE_PEEKSIGINFO,
            pid,
            args.as_ptr() as u64,
            infos.as_mut_ptr() as u64,
        )
    }?;
    Ok(infos
        .iter()
        .take(usize::try_from(n).unwrap_or(0))
        .map(|i| (i[0], i[2]))
        .collect())
}

/// ptrace GETSIGMASK of a stopped tracee.
pub fn ptrace_getsigmask(pid: Pid) -> Result<u64, Errno> {
    const PTRACE_GETSIGMASK: u32 = 0x420a;
    let mut mask: u64 = 0;
    // SAFETY: addr is the sigset size and data a live u64 of that size.
    unsafe {
        ptrace_raw(
            PTRACE_GETSIGMASK,
            pid,
            8,
            std::ptr::from_mut(&mut mask) as u64,
        )
    }?;
    Ok(mask)
}

/// ptrace SETOPTIONS with raw option bits.
pub fn ptrace_setoptions(pid: Pid, opts: u64) -> Result<(), Errno> {
    // SAFETY: PTRACE_SETOPTIONS takes the options as data, no pointers.
    unsafe { ptrace_raw(0x4200, pid, 0, opts) }.map(drop)
}

/// ptrace SECCOMP_GET_FILTER: the length of filter `index` of a stopped tracee.
pub fn ptrace_seccomp_filter_len(pid: Pid, index: u64) -> Result<i64, Errno> {
    // SAFETY: a null data pointer asks only for the length.
    unsafe { ptrace_raw(0x420c, pid, index, 0) }
}

/// ptrace GET_RSEQ_CONFIGURATION: (rseq area address, size) of a stopped tracee.
pub fn ptrace_rseq_conf(pid: Pid) -> Result<(u64, u64), Errno> {
    let mut conf = [0u64; 4];
    // SAFETY: addr is the buffer size and data a live 32-byte ptrace_rseq_configuration.
    unsafe { ptrace_raw(0x420f, pid, 32, conf.as_mut_ptr() as u64) }?;
    Ok((conf[0], conf[1] & 0xffff_ffff))
}

/// ptrace GETREGSET: the size of register set `nt` of a stopped tracee.
pub fn ptrace_regset_len(pid: Pid, nt: u64) -> Result<u64, Errno> {
    let mut buf = vec![0u8; 16384];
    let mut iov = [buf.as_mut_ptr() as u64, buf.len() as u64];
    // SAFETY: iov describes `buf`, live and writable for its whole length.
    unsafe { ptrace_raw(0x4204, pid, nt, iov.as_mut_ptr() as u64) }?;
    Ok(iov[1])
}

/// UFFDIO_API: negotiates `features`, returns the granted (or, for 0, the offered) set.
pub fn uffdio_api(fd: BorrowedFd<'_>, features: u64) -> Result<u64, Errno> {
    let mut api = UffdioApi {
        api: 0xAA,
        features,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API takes a struct uffdio_api, which `api` is.
    unsafe { ioctl_ptr(fd, ioc::UFFDIO_API, &mut api) }?;
    Ok(api.features)
}

/// UFFDIO_REGISTER of `m` with `mode`.
pub fn uffdio_register(fd: BorrowedFd<'_>, m: &Mapping, mode: u64) -> Result<(), Errno> {
    let mut reg: [u64; 4] = [m.addr(), m.len() as u64, mode, 0];
    // SAFETY: UFFDIO_REGISTER takes a struct uffdio_register (range, mode, ioctls).
    unsafe { ioctl_ptr(fd, ioc::UFFDIO_REGISTER, &mut reg) }.map(drop)
}

/// UFFDIO_WRITEPROTECT of all of `m`.
pub fn uffdio_writeprotect(fd: BorrowedFd<'_>, m: &Mapping, mode: u64) -> Result<(), Errno> {
    let mut wp: [u64; 3] = [m.addr(), m.len() as u64, mode];
    // SAFETY: UFFDIO_WRITEPROTECT takes a struct uffdio_writeprotect (range, mode).
    unsafe { ioctl_ptr(fd, ioc::UFFDIO_WRITEPROTECT, &mut wp) }.map(drop)
}

/// TFD_IOC_SET_TICKS on a timerfd.
pub fn timerfd_set_ticks(fd: BorrowedFd<'_>, ticks: u64) -> Result<(), Errno> {
    let mut t = ticks;
    // SAFETY: TFD_IOC_SET_TICKS takes a pointer to a u64.
    unsafe { ioctl_ptr(fd, ioc::TFD_IOC_SET_TICKS, &mut t) }.map(drop)
}

/// `socket(domain, type | SOCK_CLOEXEC, proto)` for protocols nix lacks.
pub fn socket(domain: i32, ty: i32, proto: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: integer arguments only.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) };
    owned(check(fd.into())?)
}

/// getsockopt(SO_GET_FILTER): the attached classic BPF program as raw
/// `sock_filter` bytes (the option's length is counted in instructions).
pub fn getsockopt_filter(fd: BorrowedFd<'_>) -> Result<Vec<u8>, Errno> {
    let mut n: libc::socklen_t = 0;
    let (fd, level, name) = (fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_ATTACH_FILTER);
    // SAFETY: with optlen 0 the kernel writes nothing to optval and returns the count in optlen.
    let ret = unsafe { libc::getsockopt(fd, level, name, std::ptr::null_mut(), &mut n) };
    check(ret.into())?;
    let mut buf = vec![0u8; usize::try_from(n).unwrap_or(0) * 8];
    // SAFETY: buf holds n sock_filter entries (8 bytes each), the count passed in optlen.
    let ret = unsafe { libc::getsockopt(fd, level, name, buf.as_mut_ptr().cast(), &mut n) };
    check(ret.into())?;
    buf.truncate(usize::try_from(n).unwrap_or(0) * 8);
    Ok(buf)
}

/// Restores the default action for `sig` (in a probe child, so that a fault
/// kills it plainly instead of entering the Rust runtime's handler, which
/// may need locks another thread of the parent held at fork time).
pub fn default_action(sig: Signal) {
    // SAFETY: setting SIG_DFL installs no handler code and is async-signal-safe.
    let _ = unsafe { nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigDfl) };
}

/// `prctl(PR_SET_MM, PR_SET_MM_MAP_SIZE)`: the size of `struct prctl_mm_map`.
pub fn mm_map_size() -> Result<u32, Errno> {
    let mut size: u32 = 0;
    prctl(
        libc::PR_SET_MM,
        libc::PR_SET_MM_MAP_SIZE as u64,
        std::ptr::from_mut(&mut size) as u64,
        0,
        0,
    )?;
    Ok(size)
}
