//! Memory probes: vmsplice, vdso/vvar remapping and ARCH_MAP_VDSO, the aio
//! ring, dirty-page tracking (soft-dirty, userfaultfd write-protect,
//! PAGEMAP_SCAN), memfd flavours, mseal, guard regions, io_uring.

use stasis_kernel as kernel;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::fcntl::{OFlag, SpliceFFlags, open};
use nix::sys::signal::Signal;
use nix::sys::stat::Mode;
use nix::unistd::pipe;

use super::common::{CHILD_TIMEOUT, R, Step, error, no, read};
use crate::Outcome;
use stasis_kernel::mm::{Mapping, PageRegion};

const PAGE: usize = 4096;
const PAGE_IS_WRITTEN: u64 = 1 << 1;
const PAGE_IS_PRESENT: u64 = 1 << 3;
const PAGE_IS_GUARD: u64 = 1 << 8;
const MADV_GUARD_INSTALL: i32 = 102;
const RW: i32 = libc::PROT_READ | libc::PROT_WRITE;

fn page() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|v| usize::try_from(v).ok())
        .unwrap_or(PAGE)
}

pub fn vmsplice() -> R {
    let (r, w) = pipe().fail("pipe")?;
    let buf: Vec<u8> = (0..=255u8).cycle().take(2 * page() + 1).collect();
    let part = &buf[1..=page()];
    let n = nix::fcntl::vmsplice(
        w.as_fd(),
        &[std::io::IoSlice::new(part)],
        SpliceFFlags::SPLICE_F_GIFT | SpliceFFlags::SPLICE_F_NONBLOCK,
    )
    .no("vmsplice of an unaligned buffer with SPLICE_F_GIFT")?;
    let mut back = vec![0u8; n];
    let m = nix::unistd::read(&r, &mut back).fail("read")?;
    if m != n || back != part[..n] {
        return Err(no("the pipe returned different bytes than were spliced"));
    }
    Ok(String::new())
}

/// The special areas ([vdso], [vvar], [vvar_vclock], [sigpage]) of this process.
fn vdso_areas() -> Result<Vec<(u64, u64, String)>, Outcome> {
    let maps = read("/proc/self/maps")?;
    Ok(maps
        .lines()
        .filter_map(|l| {
            let name = l.split_whitespace().nth(5)?;
            if !matches!(name, "[vdso]" | "[vvar]" | "[vvar_vclock]" | "[sigpage]") {
                return None;
            }
            let (a, b) = l.split_whitespace().next()?.split_once('-')?;
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
                name.to_string(),
            ))
        })
        .collect())
}

static GOT_SIGNAL: AtomicBool = AtomicBool::new(false);

extern "C" fn note_signal(_: i32) {
    GOT_SIGNAL.store(true, Ordering::SeqCst);
}

pub fn vdso_remap() -> R {
    let areas = vdso_areas()?;
    if !areas.iter().any(|a| a.2 == "[vdso]") {
        return Err(no("no [vdso] in /proc/self/maps"));
    }
    let ranges: Vec<(u64, u64)> = areas.iter().map(|a| (a.0, a.1)).collect();
    let mut c = kernel::clone::fork_child(|cx| {
        for &(start, end) in &ranges {
            if cx.move_area(start, end - start).is_err() {
                return 2;
            }
        }
        if kernel::signal::set_handler(Signal::SIGUSR1, note_signal).is_err() {
            return 3;
        }
        kernel::signal::raise(Signal::SIGUSR1);
        if GOT_SIGNAL.load(Ordering::SeqCst) {
            0
        } else {
            4
        }
    })
    .fail("fork")?;
    match c.exit_code(CHILD_TIMEOUT) {
        Ok(0) => Ok(format!(
            "moved {}",
            areas
                .iter()
                .map(|a| a.2.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
        Ok(2) => Err(no("mremap of the vdso/vvar areas failed")),
        Ok(4) => Err(no("no signal delivered after moving the vdso")),
        Ok(n) => Err(error(format!("child setup failed ({n})"))),
        Err(e) => Err(no(format!("after moving the vdso: {e}"))),
    }
}

#[cfg(target_arch = "x86_64")]
fn map_vdso_in_child() -> Result<i32, Outcome> {
    let areas = vdso_areas()?;
    let base = areas
        .iter()
        .map(|a| a.0)
        .min()
        .ok_or_else(|| no("no [vdso] in /proc/self/maps"))?;
    let ranges: Vec<(u64, u64)> = areas.iter().map(|a| (a.0, a.1)).collect();
    let mut c = kernel::clone::fork_child(|cx| {
        for &(s, e) in &ranges {
            if cx.unmap(s, e - s).is_err() {
                return 1;
            }
        }
        match kernel::process::arch_map_vdso(base) {
            Ok(_) => 0,
            Err(_) => 2,
        }
    })
    .fail("fork")?;
    c.exit_code(CHILD_TIMEOUT).map_err(error)
}

#[cfg(target_arch = "x86_64")]
pub fn can_map_vdso() -> R {
    match map_vdso_in_child()? {
        0 => Ok(String::new()),
        2 => Err(no(
            "arch_prctl(ARCH_MAP_VDSO_64) failed (CONFIG_CHECKPOINT_RESTORE); restore falls back to mremap",
        )),
        n => Err(error(format!("child setup failed ({n})"))),
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub fn can_map_vdso() -> R {
    Err(no(
        "ARCH_MAP_VDSO exists on x86 only; restore moves the vdso with mremap instead",
    ))
}

#[cfg(target_arch = "x86_64")]
pub fn compat_cr() -> R {
    can_map_vdso()?;
    let mut c = kernel::clone::fork_child(|_cx| {
        // getpid through the ia32 entry, then an ia32 mmap2, which must land below 4 GiB.
        if kernel::process::int80(20, [0; 5]) <= 0 {
            return 1;
        }
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32;
        let addr = kernel::process::int80(192, [0, 4096, RW as u32, flags, u32::MAX]);
        if addr < 0 && addr > -4096 {
            return 2;
        }
        0
    })
    .fail("fork")?;
    match c.exit_code(CHILD_TIMEOUT) {
        Ok(0) => Ok(String::new()),
        Ok(1) => Err(no(
            "32-bit system calls do not work (CONFIG_IA32_EMULATION, or ia32_emulation=0)",
        )),
        Ok(2) => Err(no("a 32-bit mmap from a 64-bit task failed")),
        other => Err(no(format!(
            "the 32-bit probe child ended with {other:?} (CONFIG_IA32_EMULATION)"
        ))),
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub fn compat_cr() -> R {
    Err(no("C/R of 32-bit tasks is implemented on x86 only"))
}

pub fn aio_remap() -> R {
    let mut ring = kernel::io::aio::Ring::new(16).no("io_setup (CONFIG_AIO)")?;
    let ctx = ring.id();
    let maps = read("/proc/self/maps")?;
    let start = format!("{ctx:x}-");
    let line = maps
        .lines()
        .find(|l| l.starts_with(&start))
        .ok_or_else(|| no("the aio ring is not in /proc/self/maps"))?;
    if !line.contains("/[aio]") {
        return Err(no(format!("the ring mapping is not named /[aio]: {line}")));
    }
    let end = line
        .split_whitespace()
        .next()
        .and_then(|r| r.split_once('-'))
        .and_then(|(_, e)| u64::from_str_radix(e, 16).ok());
    let len = end.ok_or_else(|| error("parsing the ring mapping"))? - ctx;
    ring.remap(len).no("mremap of the aio ring")?;
    kernel::io::aio::getevents_nowait(ring.id()).no("io_getevents on the moved ring")?;
    Ok(String::new())
}

pub fn mem_dirty_track() -> R {
    let m = Mapping::anon(page(), RW, 0).fail("mmap")?;
    let (addr, pg) = (m.addr(), page());
    let mut c = kernel::clone::fork_child(|_cx| {
        let Ok(cr) = open(c"/proc/self/clear_refs", OFlag::O_WRONLY, Mode::empty()) else {
            return 1;
        };
        if nix::unistd::write(&cr, b"4").is_err() {
            return 1;
        }
        m.poke(0, 1);
        let Ok(pm) = open(c"/proc/self/pagemap", OFlag::O_RDONLY, Mode::empty()) else {
            return 3;
        };
        let mut e = [0u8; 8];
        let off = i64::try_from(addr / pg as u64 * 8).unwrap_or(0);
        if nix::sys::uio::pread(&pm, &mut e, off) != Ok(8) {
            return 3;
        }
        if u64::from_ne_bytes(e) & (1 << 55) != 0 {
            0
        } else {
            2
        }
    })
    .fail("fork")?;
    match c.exit_code(CHILD_TIMEOUT) {
        Ok(0) => Ok(String::new()),
        Ok(1) => Err(no(
            "clearing soft-dirty bits through /proc/self/clear_refs failed",
        )),
        Ok(2) => Err(no(
            "a written page is not marked soft-dirty (CONFIG_MEM_SOFT_DIRTY); the uffd_wp_async and pagemap_scan probes tell whether userfaultfd write-protect can track memory instead",
        )),
        other => Err(error(format!("child ended with {other:?}"))),
    }
}

fn scan(m: &Mapping, flags: u64, mask: u64) -> Result<Vec<PageRegion>, nix::errno::Errno> {
    let pm = std::fs::File::open("/proc/self/pagemap").map_err(|_| nix::errno::Errno::ENOENT)?;
    let mut out = [PageRegion::default(); 8];
    let n = kernel::mm::pagemap_scan(
        pm.as_fd(),
        m.addr(),
        m.addr() + m.len() as u64,
        flags,
        mask,
        &mut out,
    )?;
    Ok(out[..n.min(8)].to_vec())
}

/// Whether `regions` is exactly page `k` of `m`.
fn only_page(m: &Mapping, pg: usize, k: u64, regions: &[PageRegion]) -> bool {
    let start = m.addr() + k * pg as u64;
    matches!(regions, [r] if (r.start, r.end) == (start, start + pg as u64))
}

pub fn pagemap_scan() -> R {
    let pg = page();
    let m = Mapping::anon(4 * pg, RW, 0).fail("mmap")?;
    m.poke(pg, 1);
    let regions = scan(&m, 0, PAGE_IS_PRESENT).no("ioctl(PAGEMAP_SCAN) (kernel 6.7)")?;
    if !only_page(&m, pg, 1, &regions) {
        return Err(no(format!(
            "PAGEMAP_SCAN reported {regions:?}, expected only the written page"
        )));
    }
    Ok(String::new())
}

pub fn pagemap_scan_guard_pages() -> R {
    let pg = page();
    let m = Mapping::anon(3 * pg, RW, 0).fail("mmap")?;
    m.madvise(pg, pg, MADV_GUARD_INSTALL)
        .no("madvise(MADV_GUARD_INSTALL) (kernel 6.13)")?;
    let regions = scan(&m, 0, PAGE_IS_GUARD).no("ioctl(PAGEMAP_SCAN)")?;
    if !only_page(&m, pg, 1, &regions) {
        return Err(no(format!(
            "PAGEMAP_SCAN did not report the guard page as PAGE_IS_GUARD: {regions:?}"
        )));
    }
    Ok(String::new())
}

pub fn madv_guard() -> R {
    let pg = page();
    let m = Mapping::anon(2 * pg, RW, 0).fail("mmap")?;
    let mut c = kernel::clone::fork_child(|_cx| {
        if m.madvise(pg, pg, MADV_GUARD_INSTALL).is_err() {
            return 1;
        }
        kernel::signal::default_action(Signal::SIGSEGV);
        m.poke(pg, 1);
        0
    })
    .fail("fork")?;
    match c.exit_code(CHILD_TIMEOUT) {
        Err(e) if e.contains("SIGSEGV") => {
            Ok("guard regions fault; their markers are dumped and restored".into())
        }
        Ok(1) => Err(no("madvise(MADV_GUARD_INSTALL) failed (kernel 6.13)")),
        other => Err(no(format!(
            "touching a guard page did not fault: {other:?}"
        ))),
    }
}

const UFFD_FEATURE_PAGEFAULT_FLAG_WP: u64 = 1 << 0;
const UFFD_FEATURE_EVENT_FORK: u64 = 1 << 1;
const UFFD_FEATURE_EVENT_REMAP: u64 = 1 << 2;
const UFFD_FEATURE_EVENT_REMOVE: u64 = 1 << 3;
const UFFD_FEATURE_EVENT_UNMAP: u64 = 1 << 6;
const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;

fn uffd_open() -> Result<std::os::fd::OwnedFd, Outcome> {
    kernel::uffd::userfaultfd(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .or_else(|_| kernel::uffd::userfaultfd(libc::O_CLOEXEC | libc::O_NONBLOCK | 1))
        .no("userfaultfd (CONFIG_USERFAULTFD, vm.unprivileged_userfaultfd)")
}

/// Opens a uffd and negotiates `features`; returns it and the granted set.
fn uffd_api(features: u64) -> Result<(std::os::fd::OwnedFd, u64), Outcome> {
    let fd = uffd_open()?;
    let granted = kernel::uffd::uffdio_api(fd.as_fd(), features).no("ioctl(UFFDIO_API)")?;
    Ok((fd, granted))
}

fn uffd_available() -> Result<u64, Outcome> {
    uffd_api(0).map(|(_, f)| f)
}

pub fn uffd() -> R {
    uffd_api(0).map(|(_, f)| format!("features {f:#x}"))
}

pub fn uffd_noncoop() -> R {
    let want = UFFD_FEATURE_EVENT_FORK
        | UFFD_FEATURE_EVENT_REMAP
        | UFFD_FEATURE_EVENT_REMOVE
        | UFFD_FEATURE_EVENT_UNMAP;
    let have = uffd_available()?;
    if have & want != want {
        return Err(no(format!(
            "missing non-cooperative events: {:#x}",
            want & !have
        )));
    }
    uffd_api(want).map(|_| String::new())
}

fn uffd_register_wp(fd: std::os::fd::BorrowedFd<'_>, m: &Mapping) -> Result<(), Outcome> {
    // UFFDIO_REGISTER_MODE_WP
    kernel::uffd::uffdio_register(fd, m, 2).no("UFFDIO_REGISTER in write-protect mode")?;
    Ok(())
}

pub fn uffd_wp() -> R {
    let (fd, _) = uffd_api(UFFD_FEATURE_PAGEFAULT_FLAG_WP)
        .map_err(|e| no(format!("write-protect feature: {}", e.reason())))?;
    let m = Mapping::anon(2 * page(), RW, 0).fail("mmap")?;
    m.poke(0, 1);
    uffd_register_wp(fd.as_fd(), &m)?;
    // UFFDIO_WRITEPROTECT_MODE_WP
    kernel::uffd::uffdio_writeprotect(fd.as_fd(), &m, 1).no("UFFDIO_WRITEPROTECT")?;
    Ok(String::new())
}

pub fn uffd_wp_async() -> R {
    let have = uffd_available()?;
    if have & UFFD_FEATURE_WP_ASYNC == 0 {
        return Err(no(
            "UFFD_FEATURE_WP_ASYNC is not offered (kernel 6.7, CONFIG_PTE_MARKER_UFFD_WP)",
        ));
    }
    uffd_api(UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED).map(|_| String::new())
}

pub fn pagemap_scan_written() -> R {
    let pg = page();
    let (fd, _) = uffd_api(UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED)
        .map_err(|e| no(format!("async write-protect: {}", e.reason())))?;
    let m = Mapping::anon(4 * pg, RW, 0).fail("mmap")?;
    uffd_register_wp(fd.as_fd(), &m)?;
    // Write-protect everything (PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC), as a pre-dump does.
    scan(&m, 1 | 2, PAGE_IS_WRITTEN).no("PAGEMAP_SCAN with PM_SCAN_WP_MATCHING")?;
    m.poke(2 * pg, 7);
    let regions = scan(&m, 0, PAGE_IS_WRITTEN).no("PAGEMAP_SCAN for written pages")?;
    if !only_page(&m, pg, 2, &regions) {
        return Err(no(format!(
            "expected exactly the written page, PAGEMAP_SCAN reported {regions:?}"
        )));
    }
    drop(fd);
    Ok("dirty pages can be tracked without soft-dirty".into())
}

pub fn memfd_hugetlb() -> R {
    use nix::sys::memfd::{MFdFlags, memfd_create};
    memfd_create(
        c"stasis-probe",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_HUGETLB,
    )
    .no("memfd_create(MFD_HUGETLB) (CONFIG_HUGETLBFS)")?;
    Ok(String::new())
}

pub fn memfd_secret() -> R {
    let fd = kernel::mm::memfd_secret().no("memfd_secret (CONFIG_SECRETMEM, secretmem.enable)")?;
    nix::unistd::ftruncate(&fd, i64::try_from(page()).unwrap_or(4096)).fail("ftruncate")?;
    let m = Mapping::file(page(), RW, libc::MAP_SHARED, fd.as_fd()).no("mmap of secret memory")?;
    m.poke(0, 42);
    if m.peek(0) != 42 {
        return Err(no("secret memory did not keep a written byte"));
    }
    Ok("secret memory exists; its contents cannot be read by a dumper".into())
}

pub fn mseal() -> R {
    let mut c = kernel::clone::fork_child(|cx| {
        let Ok(m) = Mapping::anon(page(), RW, 0) else {
            return 1;
        };
        let Ok((a, l)) = cx.seal(m) else { return 2 };
        match cx.unmap(a, l) {
            Err(nix::errno::Errno::EPERM) => 0,
            _ => 3,
        }
    })
    .fail("fork")?;
    match c.exit_code(CHILD_TIMEOUT) {
        Ok(0) => Ok(
            "sealed mappings exist; restore must seal after rebuilding the address space".into(),
        ),
        Ok(2) => Err(no("mseal failed (kernel 6.10)")),
        Ok(3) => Err(no("a sealed mapping could be unmapped")),
        other => Err(error(format!("child ended with {other:?}"))),
    }
}

pub fn io_uring() -> R {
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").ok();
    let ring = kernel::io::io_uring_setup(4).no("io_uring_setup (CONFIG_IO_URING)")?;
    drop(ring);
    let extra = match disabled.as_deref().map(str::trim) {
        Some("1") => " (restricted to the io_uring_group)",
        _ => "",
    };
    Ok(format!(
        "io_uring is available{extra}; a tree using a ring cannot be dumped"
    ))
}
