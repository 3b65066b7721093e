//! Memory: mappings this process owns ([`Mapping`], [`FileWindow`]), the
//! page size, mremap/munmap/mseal of areas no Rust object refers to, secret
//! memory, the program break, and the queries of another process' address
//! space (PAGEMAP_SCAN, PROCMAP_QUERY, PR_SET_MM_MAP_SIZE).
//!
//! Wrappers return `Errno` without context; callers say what failed.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;

use crate::ioctl::{ioc, ioctl_ptr};
use crate::process::prctl_raw;
use crate::raw::{check, long, nr, syscall, syscall_fd};

/// Anonymous (or file) memory this process mapped, unmapped on drop: the
/// restore's trampoline at a fixed address (which the tasks it forks
/// inherit), or a probe's test area. It is written through
/// [`Mapping::write`] or [`Mapping::poke`] only; [`Mapping::seal_code`]
/// makes a leading part executable and read-only for good.
#[derive(Debug)]
pub struct Mapping {
    addr: std::ptr::NonNull<libc::c_void>,
    len: usize,
    /// Bytes from the start no longer writable.
    sealed: usize,
}

impl Mapping {
    fn new(p: *mut libc::c_void, len: usize) -> Result<Self, Errno> {
        if p == libc::MAP_FAILED {
            return Err(Errno::last());
        }
        std::ptr::NonNull::new(p)
            .map(|addr| Self {
                addr,
                len,
                sealed: 0,
            })
            .ok_or(Errno::EFAULT)
    }

    /// Map `len` bytes at exactly `addr`, read-write, failing if anything
    /// is mapped there already.
    pub fn fixed_anon(addr: u64, len: usize) -> Result<Mapping, Errno> {
        // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping, so
        // no memory the program uses can change under it.
        let p = unsafe {
            libc::mmap(
                addr as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED && p as u64 != addr {
            // An old kernel that ignores NOREPLACE placed it elsewhere.
            // SAFETY: p is the mapping just created, of length len.
            unsafe { libc::munmap(p, len) };
            return Err(Errno::EEXIST);
        }
        Self::new(p, len)
    }

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
        Self::new(p, len)
    }

    /// `mmap(NULL, len, prot, flags, fd, 0)` of a file.
    pub fn file(len: usize, prot: i32, flags: i32, fd: BorrowedFd<'_>) -> Result<Self, Errno> {
        // SAFETY: a new mapping at a kernel-chosen address aliases no Rust object.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd.as_raw_fd(), 0) };
        Self::new(p, len)
    }

    /// Start address.
    pub fn addr(&self) -> u64 {
        self.addr.as_ptr() as u64
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (it never is: mmap refuses 0 bytes).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Raw pointer to the start.
    pub fn ptr(&self) -> *mut libc::c_void {
        self.addr.as_ptr()
    }

    /// Copy `data` in at `offset`, past the sealed part (EINVAL otherwise).
    pub fn write(&mut self, offset: usize, data: &[u8]) -> Result<(), Errno> {
        let end = offset.checked_add(data.len()).ok_or(Errno::EINVAL)?;
        if offset < self.sealed || end > self.len {
            return Err(Errno::EINVAL);
        }
        let at = self.addr.as_ptr().cast::<u8>().wrapping_add(offset);
        // SAFETY: [offset, end) lies in this mapping, which this value owns
        // and which is still writable there; nothing else refers to it.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), at, data.len()) };
        Ok(())
    }

    /// Make the first `len` bytes (whole pages) code: the instruction cache
    /// synced with what was written, then read and execute only.
    pub fn seal_code(&mut self, len: usize) -> Result<(), Errno> {
        if len > self.len || len < self.sealed {
            return Err(Errno::EINVAL);
        }
        // SAFETY: the first len bytes are this mapping's, owned by this
        // value; the slice lives for this statement only, before mprotect.
        clear_icache(unsafe {
            std::slice::from_raw_parts_mut(self.addr.as_ptr().cast::<u8>(), len)
        });
        // SAFETY: mprotect over a leading part of this process' own mapping,
        // which no reference points into any more.
        Errno::result(unsafe {
            libc::mprotect(self.addr.as_ptr(), len, libc::PROT_READ | libc::PROT_EXEC)
        })?;
        self.sealed = len;
        Ok(())
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

/// The system page size.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(v).unwrap_or(4096)
}

/// Make instruction fetches see what was just written to `code` as data
/// (libgcc's `__clear_cache`: cache maintenance on arm64 and POWER, nothing
/// on x86 and s390x, whose caches are coherent).
fn clear_icache(code: &mut [u8]) {
    #[cfg(any(target_arch = "aarch64", target_arch = "powerpc64"))]
    {
        unsafe extern "C" {
            fn __clear_cache(start: *mut libc::c_char, end: *mut libc::c_char);
        }
        let range = code.as_mut_ptr_range();
        // SAFETY: the range is one live, writable slice of our memory;
        // __clear_cache only runs cache maintenance over it.
        unsafe { __clear_cache(range.start.cast(), range.end.cast()) };
    }
    #[cfg(not(any(target_arch = "aarch64", target_arch = "powerpc64")))]
    let _ = code;
}

/// A read-only private mapping of part of a file (an image the engine
/// copies from without reading it into a buffer); unmapped on drop.
#[derive(Debug)]
pub struct FileWindow {
    ptr: std::ptr::NonNull<libc::c_void>,
    len: usize,
}

impl FileWindow {
    /// Map `len` bytes of `file` from `off` (page aligned), every page
    /// mapped at once (MAP_POPULATE: no fault per page later).
    pub fn map(file: &impl std::os::fd::AsFd, off: u64, len: usize) -> Result<FileWindow, Errno> {
        use std::os::fd::AsRawFd;
        let off = libc::off_t::try_from(off).map_err(|_| Errno::EINVAL)?;
        // SAFETY: a new mapping at an address the kernel chooses: no memory
        // the program uses changes.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_POPULATE,
                file.as_fd().as_raw_fd(),
                off,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Errno::last());
        }
        let ptr = std::ptr::NonNull::new(p).ok_or(Errno::EFAULT)?;
        Ok(FileWindow { ptr, len })
    }

    /// Address of byte `at` of the window (for the kernel to read from).
    pub fn addr(&self, at: usize) -> u64 {
        self.ptr.as_ptr() as u64 + at.min(self.len) as u64
    }
}

impl Drop for FileWindow {
    fn drop(&mut self) {
        // SAFETY: ptr/len is the mapping made in `map`, used by nothing else.
        unsafe { libc::munmap(self.ptr.as_ptr(), self.len) };
    }
}

/// `memfd_secret(2)`.
pub fn memfd_secret() -> Result<OwnedFd, Errno> {
    // SAFETY: integer arguments only.
    unsafe { syscall_fd(nr::MEMFD_SECRET, [libc::O_CLOEXEC.into(), 0, 0, 0, 0]) }
}

/// `mseal(2)` on a mapping the caller owns.
///
/// # Safety
/// `addr..addr+len` must be a mapping the caller created for this purpose.
pub unsafe fn mseal(addr: *mut libc::c_void, len: usize) -> Result<(), Errno> {
    // SAFETY: forwarded to the caller.
    unsafe { syscall(nr::MSEAL, [addr as libc::c_long, long(len), 0, 0, 0]) }.map(drop)
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

/// PROCMAP_QUERY on an open /proc/PID/maps: the VMA covering `addr`.
pub fn procmap_query(maps: BorrowedFd<'_>, addr: u64) -> Result<(u64, u64), Errno> {
    // struct procmap_query (104 bytes): size, query_flags, query_addr,
    // vma_start, vma_end, vma_flags, vma_page_size, vma_offset, inode,
    // dev_major, dev_minor, vma_name_size, build_id_size, vma_name_addr,
    // build_id_addr.
    let mut q = [0u64; 13];
    q[0] = 104;
    q[2] = addr;
    // SAFETY: q is a zeroed 104-byte procmap_query with no output buffers
    // (name and build-id sizes are 0).
    unsafe { ioctl_ptr(maps, ioc::PROCMAP_QUERY, &mut q) }?;
    Ok((q[3], q[4]))
}

/// The current program break (`brk(0)`).
pub fn current_brk() -> u64 {
    // SAFETY: brk(0) only queries the current break.
    let b = unsafe { libc::syscall(libc::SYS_brk, 0) };
    u64::try_from(b).unwrap_or(0)
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

/// `prctl(PR_SET_MM, PR_SET_MM_MAP_SIZE)`: the size of `struct prctl_mm_map`.
pub fn mm_map_size() -> Result<u32, Errno> {
    let mut size: u32 = 0;
    // SAFETY: PR_SET_MM_MAP_SIZE writes one unsigned int into the live `size`.
    unsafe {
        prctl_raw(
            libc::PR_SET_MM,
            libc::PR_SET_MM_MAP_SIZE as u64,
            std::ptr::from_mut(&mut size) as u64,
            0,
            0,
        )
    }?;
    Ok(size)
}
