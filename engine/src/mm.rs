//! A task's address space: its VMAs (`mm-ID.img`), the pages in them
//! (`pagemap-ID.img` + `pages-N.img`) and the special kernel areas (vdso,
//! vvar, vvar_vclock). Dump reads `/proc/PID/maps`, `smaps` VmFlags and
//! `pagemap`, and copies present pages in bounded chunks (gathered
//! `process_vm_readv`, one thread per CPU for large dumps). Restore maps
//! every VMA from inside the task (batched remote mmap), fills large runs
//! of anonymous memory with UFFDIO_COPY from the image and the rest with
//! the task's own `pread64`, and moves the vdso areas to their dumped
//! addresses.

use stasis_kernel as kernel;
use std::fs::File;
use std::os::unix::fs::FileExt;

use nix::unistd::Pid;
use stasis_arch::native::nr;
use stasis_proto::images::{PagemapEntry, PagemapHead, VmaEntry};

use crate::error::{EngineError as Error, Result};
use crate::files::Table;
use crate::images::Dir;
use crate::images::img;
use crate::progress::{Progress, Step};
use crate::task::proc;
use crate::task::remote::{self, Call, Remote};

/// shmat: replace whatever is mapped at the address.
const SHM_REMAP: i32 = 0o40000;

/// `vma_entry.status` bits (CRIU's VMA_AREA_* / VMA_FILE_* / VMA_ANON_*).
#[allow(missing_docs)]
pub mod status {
    pub const REGULAR: u32 = 1 << 0;
    pub const STACK: u32 = 1 << 1;
    pub const VSYSCALL: u32 = 1 << 2;
    pub const VDSO: u32 = 1 << 3;
    pub const HEAP: u32 = 1 << 5;
    pub const FILE_PRIVATE: u32 = 1 << 6;
    pub const FILE_SHARED: u32 = 1 << 7;
    pub const ANON_SHARED: u32 = 1 << 8;
    pub const ANON_PRIVATE: u32 = 1 << 9;
    pub const VVAR: u32 = 1 << 12;
    pub const MEMFD: u32 = 1 << 14;
    pub const SYSVIPC: u32 = 1 << 10;
}

/// `pagemap_entry.flags`: the pages are in the pages image.
const PE_PRESENT: u32 = 1 << 2;
/// `pagemap_entry.flags`, a stasis extension: a guard region
/// (MADV_GUARD_INSTALL), no data.
const PE_GUARD: u32 = 1 << 3;
const MADV_GUARD_INSTALL: u64 = 102;
const PM_PRESENT: u64 = 1 << 63;
const PM_SWAP: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;
/// A guard region marker (Linux 6.15), reported as a swap-like entry.
const PM_GUARD: u64 = 1 << 58;
/// Bytes a copying thread gets at least: below that a dump or restore
/// copies pages on one thread.
const PART_MIN: u64 = 16 << 20;
/// Bytes copied per read from the task: bounds the dumper's memory use.
const CHUNK: usize = 4 << 20;

/// smaps VmFlags set by madvise(), and the advice that sets each.
const MADV_FLAGS: [(&str, u32); 8] = [
    ("rr", 1),  // MADV_RANDOM
    ("sr", 2),  // MADV_SEQUENTIAL
    ("dc", 10), // MADV_DONTFORK
    ("mg", 12), // MADV_MERGEABLE
    ("hg", 14), // MADV_HUGEPAGE
    ("nh", 15), // MADV_NOHUGEPAGE
    ("dd", 16), // MADV_DONTDUMP
    ("wf", 18), // MADV_WIPEONFORK
];

fn is_special_name(name: &str) -> bool {
    matches!(name, "[vdso]" | "[vvar]" | "[vvar_vclock]" | "[vsyscall]")
}

fn is_special(v: &VmaEntry) -> bool {
    v.status & (status::VDSO | status::VVAR | status::VSYSCALL) != 0
}

/// A task's VMAs as /proc shows them: `maps`, and each one's `smaps`
/// VmFlags by start address.
#[derive(Debug)]
pub struct RawVmas {
    maps: Vec<proc::Map>,
    flags: proc::VmFlags,
}

/// Read the VMAs of `pid` (no other state needed: a helper thread does this
/// while the engine works on another task).
pub fn read_vmas(pid: Pid) -> Result<RawVmas> {
    let (maps, flags) = proc::smaps(pid)?;
    Ok(RawVmas { maps, flags })
}

/// Resident memory from which a task's smaps is read on a thread of its
/// own while its pages are copied: smaps walks every page table entry to
/// count pages (some 35 ms for 1 GiB), and only the maps decide which
/// pages go in the image.
const SMAPS_APART: u64 = 64 << 20;

/// Read the VMAs of `pid` and write its pages (`pagemap-ID.img`,
/// `pages-ID.img`).
pub fn dump_memory(
    pid: Pid,
    img_id: u64,
    dir: &Dir,
    id: u32,
    shared: &mut SharedPages,
    progress: Option<&Progress>,
) -> Result<(RawVmas, PageStats)> {
    if proc::resident(pid)? < SMAPS_APART {
        let raw = read_vmas(pid)?;
        let vmas = dump_vmas(pid, &raw, None)?;
        let pages = dump_pages(pid, img_id, &vmas, dir, id, shared, progress)?;
        return Ok((raw, pages));
    }
    let listed = RawVmas {
        maps: proc::maps(pid)?,
        flags: proc::VmFlags::new(),
    };
    let vmas = dump_vmas(pid, &listed, None)?;
    std::thread::scope(|s| {
        let smaps = s.spawn(|| read_vmas(pid));
        let pages = dump_pages(pid, img_id, &vmas, dir, id, shared, progress);
        let raw = smaps.join().unwrap_or_else(|_| {
            Err(Error::Unexpected {
                tid: pid,
                op: "reading smaps",
                what: "the reading thread panicked".into(),
            })
        });
        let (raw, pages) = (raw?, pages?);
        // The task is frozen: both reads list the same maps.
        if raw.maps != listed.maps {
            return Err(Error::Unexpected {
                tid: pid,
                op: "reading smaps",
                what: "its maps differ from /proc/PID/maps read just before".into(),
            });
        }
        Ok((raw, pages))
    })
}

impl RawVmas {
    /// Start and end of the map named `name` (`[vdso]`, ...), if any.
    pub fn named(&self, name: &str) -> Option<(u64, u64)> {
        self.maps
            .iter()
            .find(|m| m.name == name)
            .map(|m| (m.start, m.end))
    }
}

/// Describe every VMA of `raw`, registering mapped files in `files`; with
/// no table, file ids stay 0 (enough to tell which pages to dump).
pub fn dump_vmas(pid: Pid, raw: &RawVmas, mut files: Option<&mut Table>) -> Result<Vec<VmaEntry>> {
    let (maps, flags) = (&raw.maps, &raw.flags);
    let mut out = Vec::with_capacity(maps.len());
    for m in maps {
        let vmflags = flags.get(&m.start).map(Vec::as_slice).unwrap_or(&[]);
        let has = |f: &str| vmflags.iter().any(|x| x == f);
        let mut mflags = if m.shared {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        }
        .cast_unsigned();
        if has("gd") {
            mflags |= libc::MAP_GROWSDOWN.cast_unsigned();
        }
        if has("lo") {
            mflags |= libc::MAP_LOCKED.cast_unsigned();
        }
        let madv = MADV_FLAGS
            .iter()
            .filter(|(f, _)| has(f))
            .fold(0u64, |acc, (_, a)| acc | 1 << a);
        let anon = libc::MAP_ANONYMOUS.cast_unsigned();
        let mut shmid = 0;
        let st = match m.name.as_str() {
            "[vdso]" => status::REGULAR | status::VDSO,
            "[vvar]" | "[vvar_vclock]" => status::REGULAR | status::VVAR,
            "[vsyscall]" => status::VSYSCALL,
            "[heap]" => {
                mflags |= anon;
                status::REGULAR | status::HEAP | status::ANON_PRIVATE
            }
            "[stack]" => {
                mflags |= anon;
                status::REGULAR | status::STACK | status::ANON_PRIVATE
            }
            n if n.is_empty() || n.starts_with("[anon:") || n.starts_with("[anon_shmem:") => {
                mflags |= anon;
                if m.shared {
                    shmid = m.ino;
                    status::REGULAR | status::ANON_SHARED
                } else {
                    status::REGULAR | status::ANON_PRIVATE
                }
            }
            // SysV shared memory: maps shows the segment id as the inode;
            // its contents are in the IPC namespace's images.
            n if n.starts_with("/SYSV") && m.shared => {
                shmid = m.ino;
                status::REGULAR | status::SYSVIPC
            }
            n if n.starts_with("/dev/zero") && m.shared => {
                mflags |= anon;
                shmid = m.ino;
                status::REGULAR | status::ANON_SHARED
            }
            n if n.starts_with("/memfd:") => {
                let write = m.shared && m.prot & libc::PROT_WRITE.cast_unsigned() != 0;
                let oflags = if write { libc::O_RDWR } else { libc::O_RDONLY };
                if let Some(files) = files.as_deref_mut() {
                    shmid = u64::from(files.memfd_map_id(
                        pid,
                        m.start,
                        m.end,
                        n,
                        oflags.cast_unsigned(),
                    )?);
                }
                status::MEMFD
                    | if m.shared {
                        status::REGULAR | status::FILE_SHARED
                    } else {
                        status::REGULAR | status::FILE_PRIVATE
                    }
            }
            n if n.starts_with('/')
                && n.ends_with(" (deleted)")
                && !n.starts_with("/SYSV")
                && !n.starts_with("/dev/zero") =>
            {
                if let Some(files) = files.as_deref_mut() {
                    shmid = u64::from(files.ghost_map_id(pid, m.start, m.end, n)?);
                }
                if m.shared {
                    status::REGULAR | status::FILE_SHARED
                } else {
                    status::REGULAR | status::FILE_PRIVATE
                }
            }
            n if n.starts_with('/') && !n.ends_with(" (deleted)") => {
                if let Some(files) = files.as_deref_mut() {
                    shmid = u64::from(files.path_id(n, libc::O_RDONLY.cast_unsigned()));
                }
                if m.shared {
                    status::REGULAR | status::FILE_SHARED
                } else {
                    status::REGULAR | status::FILE_PRIVATE
                }
            }
            n => {
                return Err(Error::Unsupported {
                    pid,
                    what: format!("memory mapping {:#x}-{:#x} of {n}", m.start, m.end),
                });
            }
        };
        out.push(VmaEntry {
            start: m.start,
            end: m.end,
            pgoff: m.pgoff,
            shmid,
            prot: m.prot,
            flags: mflags,
            status: st,
            fd: -1,
            madv: (madv != 0 && !is_special_name(&m.name)).then_some(madv),
            fdflags: None,
        });
    }
    Ok(out)
}

/// Whether a page with pagemap word `pm` in `v` belongs in the image.
fn wanted(v: &VmaEntry, pm: u64) -> bool {
    if v.status & status::FILE_SHARED != 0 || is_special(v) {
        return false;
    }
    if v.status & status::FILE_PRIVATE != 0 {
        // Only pages the task changed (copied on write) differ from the file.
        return pm & PM_SWAP != 0 || (pm & PM_PRESENT != 0 && pm & PM_FILE == 0);
    }
    pm & (PM_PRESENT | PM_SWAP) != 0
}

/// Page counts of a memory dump.
#[derive(Debug, Clone, Copy, Default)]
pub struct PageStats {
    /// Pages looked at.
    pub scanned: u64,
    /// Pages written to the image.
    pub written: u64,
}

/// The page-aligned stretches `[from, to)` of file offsets of `f` that hold
/// data (SEEK_DATA / SEEK_HOLE): for shmem, pages in memory and pages
/// swapped out alike, whether or not any task maps them.
pub fn data_extents(f: &File, from: u64, to: u64) -> std::io::Result<Vec<(u64, u64)>> {
    use nix::unistd::{Whence, lseek};
    use std::os::fd::AsFd;
    let ps = kernel::mm::page_size();
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut off = from;
    while off < to {
        let data = match lseek(
            f.as_fd(),
            i64::try_from(off).unwrap_or(i64::MAX),
            Whence::SeekData,
        ) {
            Ok(d) => d.cast_unsigned() / ps * ps,
            // ENXIO: no data past `off`.
            Err(nix::errno::Errno::ENXIO) => break,
            Err(e) => return Err(e.into()),
        };
        if data >= to {
            break;
        }
        let hole = match lseek(
            f.as_fd(),
            i64::try_from(data).unwrap_or(i64::MAX),
            Whence::SeekHole,
        ) {
            Ok(h) => h.cast_unsigned().div_ceil(ps) * ps,
            Err(nix::errno::Errno::ENXIO) => to,
            Err(e) => return Err(e.into()),
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

/// Pages of shared anonymous memory objects (by inode) already in the
/// images of this dump, as object offset ranges: each page goes in once,
/// with the first task that maps it.
#[derive(Debug, Default)]
pub struct SharedPages(std::collections::HashMap<u64, Vec<(u64, u64)>>);

impl SharedPages {
    /// The parts of `ranges` (object offsets of object `ino`) not taken
    /// yet, which are marked taken.
    fn take(&mut self, ino: u64, ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
        let seen = self.0.entry(ino).or_default();
        let mut out = Vec::new();
        for (mut a, b) in ranges {
            // `seen` is sorted and disjoint.
            for &(s, e) in seen.iter() {
                if e <= a || s >= b {
                    continue;
                }
                if s > a {
                    out.push((a, s));
                }
                a = a.max(e);
                if a >= b {
                    break;
                }
            }
            if a < b {
                out.push((a, b));
            }
        }
        seen.extend(out.iter().copied());
        seen.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(seen.len());
        for &(s, e) in seen.iter() {
            match merged.last_mut() {
                Some((_, me)) if *me >= s => *me = (*me).max(e),
                _ => merged.push((s, e)),
            }
        }
        *seen = merged;
        out
    }
}

/// Write the pages of `vmas` to `pagemap-ID.img` and `pages-ID.img`.
///
/// The pagemap is walked once. Large dumps copy while it is walked: each
/// stretch of found pages (up to [`CHUNK`] bytes) goes to whichever
/// copying thread is free, written at its own offset of the image.
pub fn dump_pages(
    pid: Pid,
    img_id: u64,
    vmas: &[VmaEntry],
    dir: &Dir,
    id: u32,
    shared: &mut SharedPages,
    progress: Option<&Progress>,
) -> Result<PageStats> {
    let pages_path = dir.pages_file(id);
    let pages = File::create(&pages_path).map_err(|e| Error::ImagesDir {
        path: pages_path.display().to_string(),
        err: e,
    })?;
    let shown = pages_path.display().to_string();
    let copy =
        |part: &[Item], buf: &mut Vec<u8>| copy_pages(pid, &pages, part, buf, &shown, progress);
    // The most there can be to copy: what the dumped VMAs span.
    let span: u64 = vmas
        .iter()
        .filter(|v| dumped(v))
        .map(|v| v.end - v.start)
        .sum();
    let cpus = kernel::sched::engine_cpus().map_or(1, |c| c.len());
    let n = cpus
        .min(4)
        .min(usize::try_from(span / PART_MIN).unwrap_or(1))
        .max(1);
    if n <= 1 {
        let mut items = Vec::new();
        let stats = walk_pages(pid, img_id, vmas, dir, id, shared, &mut |batch| {
            items.extend(batch);
            Ok(())
        })?;
        copy(&items, &mut Vec::new())?;
        return Ok(stats);
    }
    let (tx, rx) = std::sync::mpsc::channel::<Vec<Item>>();
    let rx = std::sync::Mutex::new(rx);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let copier = || {
        kernel::sched::unpin_thread();
        let mut buf = Vec::new();
        loop {
            let next = match rx.lock() {
                Ok(r) => r.recv(),
                Err(_) => return Ok(()),
            };
            let Ok(batch) = next else {
                return Ok(());
            };
            if failed.load(std::sync::atomic::Ordering::Relaxed) {
                return Ok(());
            }
            copy(&batch, &mut buf)
                .inspect_err(|_| failed.store(true, std::sync::atomic::Ordering::Relaxed))?;
        }
    };
    let (walked, copied) = crate::workers::run_beside(
        (0..n).map(|_| copier).collect(),
        |_| {
            Err(Error::Unexpected {
                tid: pid,
                op: "dumping pages",
                what: "a copying thread panicked".into(),
            })
        },
        || {
            // Taken by the walk and dropped when it ends: the copiers finish.
            let tx = tx;
            walk_pages(pid, img_id, vmas, dir, id, shared, &mut |batch| {
                if failed.load(std::sync::atomic::Ordering::Relaxed) {
                    return Err(Error::Unexpected {
                        tid: pid,
                        op: "dumping pages",
                        what: "a copying thread failed".into(),
                    });
                }
                // The copiers hold the receiver until every one is joined.
                let _ = tx.send(batch);
                Ok(())
            })
        },
    );
    // A copier's own error says more than the walk stopping because of it.
    copied.into_iter().collect::<Result<()>>()?;
    walked
}

/// (address, length, offset in the pages image) of pages to copy.
type Item = (u64, u64, u64);

/// Whether `v` may have pages in the image.
fn dumped(v: &VmaEntry) -> bool {
    v.status & (status::ANON_PRIVATE | status::ANON_SHARED | status::FILE_PRIVATE) != 0
        && !is_special(v)
}

/// Walk the pagemap of `vmas`, write `pagemap-ID.img` and hand the pages to
/// copy to `found`, in image order, at most [`CHUNK`] bytes at a time.
fn walk_pages(
    pid: Pid,
    img_id: u64,
    vmas: &[VmaEntry],
    dir: &Dir,
    id: u32,
    shared: &mut SharedPages,
    found: &mut dyn FnMut(Vec<Item>) -> Result<()>,
) -> Result<PageStats> {
    let ps = kernel::mm::page_size();
    let pagemap_path = format!("/proc/{pid}/pagemap");
    let pagemap = File::open(&pagemap_path).map_err(|e| Error::Proc {
        pid,
        path: pagemap_path.clone(),
        err: e,
    })?;
    let mut head = dir.create(img::PAGEMAP, img_id)?;
    head.write(&PagemapHead { pages_id: id })?;
    let mut stats = PageStats::default();
    let mut pm = vec![0u8; 8 * 4096];
    // Pages found and not yet handed over, and their bytes.
    let mut batch: Vec<Item> = Vec::new();
    let mut batched = 0u64;
    let mut off = 0;
    for v in vmas.iter().filter(|v| dumped(v)) {
        // (start, pages, guard region)
        let mut runs: Vec<(u64, u64, bool)> = Vec::new();
        // Shared anonymous memory: the object's pages, not the task's page
        // table, which lacks those another task (maybe gone) wrote and those
        // it never touched or that were reclaimed or swapped out.
        let object = if v.status & status::ANON_SHARED != 0 {
            Some(object_pages(pid, v, shared)?)
        } else {
            None
        };
        let mut next_obj = 0;
        let mut addr = v.start;
        while addr < v.end {
            let n = ((v.end - addr) / ps).min(4096);
            let bytes = usize::try_from(n * 8).unwrap_or(0);
            pagemap
                .read_exact_at(&mut pm[..bytes], addr / ps * 8)
                .map_err(|e| Error::Proc {
                    pid,
                    path: pagemap_path.clone(),
                    err: e,
                })?;
            for (i, w) in pm[..bytes].chunks_exact(8).enumerate() {
                let word = u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
                let page = addr + i as u64 * ps;
                stats.scanned += 1;
                let guard = word & PM_GUARD != 0;
                let take = match &object {
                    Some(o) => {
                        while o.get(next_obj).is_some_and(|&(_, e)| e <= page) {
                            next_obj += 1;
                        }
                        o.get(next_obj).is_some_and(|&(s, _)| s <= page)
                    }
                    None => wanted(v, word),
                };
                if !guard && !take {
                    continue;
                }
                match runs.last_mut() {
                    Some((s, len, g)) if *s + *len * ps == page && *g == guard => *len += 1,
                    _ => runs.push((page, 1, guard)),
                }
                if guard {
                    continue;
                }
                // Image offsets follow the order pages are found in.
                match batch.last_mut() {
                    Some((s, len, _)) if *s + *len == page => *len += ps,
                    _ => batch.push((page, ps, off)),
                }
                batched += ps;
                off += ps;
                stats.written += 1;
                if batched >= CHUNK as u64 {
                    found(std::mem::take(&mut batch))?;
                    batched = 0;
                }
            }
            addr += n * ps;
        }
        for (start, len, guard) in runs {
            head.write(&PagemapEntry {
                vaddr: start,
                compat_nr_pages: u32::try_from(len).unwrap_or(u32::MAX),
                in_parent: None,
                flags: Some(if guard { PE_GUARD } else { PE_PRESENT }),
                nr_pages: Some(len),
            })?;
        }
    }
    if !batch.is_empty() {
        found(batch)?;
    }
    head.finish()?;
    Ok(stats)
}

/// The address ranges of shared anonymous VMA `v` of `pid` whose pages the
/// object holds and no earlier task of the dump took.
fn object_pages(pid: Pid, v: &VmaEntry, shared: &mut SharedPages) -> Result<Vec<(u64, u64)>> {
    let path = format!("/proc/{pid}/map_files/{:x}-{:x}", v.start, v.end);
    let err = |e: std::io::Error| Error::Proc {
        pid,
        path: path.clone(),
        err: e,
    };
    let f = File::open(&path).map_err(err)?;
    let len = v.end - v.start;
    let data = data_extents(&f, v.pgoff, v.pgoff + len).map_err(err)?;
    Ok(shared
        .take(v.shmid, data)
        .into_iter()
        .map(|(a, b)| (v.start + (a - v.pgoff), v.start + (b - v.pgoff)))
        .collect())
}

/// Copy `items` (address, length, offset) of task `pid` into `file`: runs
/// gathered into one buffer with one process_vm_readv and written with one
/// pwrite while they are contiguous in the image.
/// `buf` is the caller's, kept from call to call and grown as needed.
fn copy_pages(
    pid: Pid,
    file: &File,
    items: &[Item],
    buf: &mut Vec<u8>,
    shown: &str,
    progress: Option<&Progress>,
) -> Result<()> {
    let ps = kernel::mm::page_size();
    // No bigger than needed: a small task's pages are a few KiB, and a
    // zeroed 4 MiB per task would cost more than copying them.
    let need: u64 = items.iter().map(|i| i.1).sum();
    let want = usize::try_from(need).map_or(CHUNK, |n| n.min(CHUNK));
    if buf.len() < want {
        buf.resize(want, 0);
    }
    let cap = buf.len();
    // Pending: (address, length) pieces filling buf from its start, and
    // the image offset of buf[0].
    let mut pending: Vec<(u64, usize)> = Vec::new();
    let mut fill = 0usize;
    let mut at_off = 0u64;
    let flush = |pending: &mut Vec<(u64, usize)>, fill: &mut usize, buf: &mut [u8], at_off: u64| {
        if *fill == 0 {
            return Ok(());
        }
        remote::read_mem_v(pid, pending, &mut buf[..*fill])?;
        file.write_all_at(&buf[..*fill], at_off)
            .map_err(|e| Error::ImagesDir {
                path: shown.to_owned(),
                err: e,
            })?;
        crate::progress::report(progress, Step::Pages(*fill as u64 / ps));
        pending.clear();
        *fill = 0;
        Ok::<(), Error>(())
    };
    for &(addr, len, off) in items {
        let mut done = 0u64;
        while done < len {
            if fill == cap
                || pending.len() == remote::IOV_MAX
                || (fill > 0 && at_off + fill as u64 != off + done)
            {
                flush(&mut pending, &mut fill, buf, at_off)?;
            }
            if fill == 0 {
                at_off = off + done;
            }
            let n = usize::try_from(len - done).unwrap_or(cap).min(cap - fill);
            pending.push((addr + done, n));
            fill += n;
            done += n as u64;
        }
    }
    flush(&mut pending, &mut fill, buf, at_off)
}

/// Where the engine's trampoline lives in a task being restored, and the
/// free room next to it used to park the vdso areas while moving them.
#[derive(Debug, Clone, Copy)]
pub struct Trampoline {
    /// Start of the trampoline mapping (code page, then data pages).
    pub start: u64,
    /// Its length.
    pub len: u64,
    /// Start of the data pages.
    pub data: u64,
    /// Free room reserved after it.
    pub park: u64,
}

/// Write `bytes` into the trampoline's data area at `off` and return the address.
pub fn put(pid: Pid, t: &Trampoline, off: u64, bytes: &[u8]) -> Result<u64> {
    remote::write_mem(pid, t.data + off, bytes)?;
    Ok(t.data + off)
}

/// The room kept free for the trampoline in every task: it, then room to
/// park the vdso areas.
pub const TRAMPOLINE_HOLE: u64 = 4 << 20;
/// The lowest address looked at for free room in a task.
pub const LOWEST_FREE: u64 = 0x1000_0000;

/// Where the paths of a [`MapBatch`] go in the trampoline's data area:
/// from 8 KiB up to the batch table at 48 KiB.
const PATHS_AT: u64 = 8 << 10;
/// Where a caller of [`restore`] puts a path its `first` calls take (the
/// pages image's goes at [`PATHS_AT`], below it).
pub const FIRST_PATH_AT: u64 = PATHS_AT + 4096;
const PATHS_ROOM: usize = 40 << 10;

/// Consecutive VMAs mapped in two stops: every distinct file opened once,
/// then every mmap (and the moves some need) and the closes.
#[derive(Default)]
struct MapBatch {
    /// The calls, with the file whose fd an mmap takes, and the VMA each is
    /// for (start, length).
    maps: Vec<(Option<usize>, Call, (u64, u64))>,
    /// Files to open: path and open flags.
    files: Vec<(String, i32)>,
    /// Bytes of paths so far, terminators included.
    bytes: usize,
}

impl MapBatch {
    /// Map with `args`, from `file` if any (its fd goes in `args[4]`).
    fn add(
        &mut self,
        r: &Remote,
        t: &Trampoline,
        file: Option<(String, i32)>,
        args: [u64; 6],
    ) -> Result<()> {
        let idx = match file {
            None => None,
            Some(f) => Some(match self.files.iter().position(|g| *g == f) {
                Some(i) => i,
                None => {
                    let need = f.0.len() + 1;
                    if self.bytes + need > PATHS_ROOM {
                        self.flush(r, t)?;
                    }
                    self.bytes += need;
                    self.files.push(f);
                    self.files.len() - 1
                }
            }),
        };
        self.maps
            .push((idx, ("mmap", nr::MMAP, args), (args[0], args[1])));
        Ok(())
    }

    /// A call on memory mapped earlier in the batch, for the VMA `vma`.
    fn then(&mut self, call: Call, vma: (u64, u64)) {
        self.maps.push((None, call, vma));
    }

    fn flush(&mut self, r: &Remote, t: &Trampoline) -> Result<()> {
        self.flush_with(r, t, &[]).map(drop)
    }

    /// Flush, with `tail` run after the maps in the same batch (when they
    /// all succeeded); the raw results of `tail`.
    fn flush_with(&mut self, r: &Remote, t: &Trampoline, tail: &[Call]) -> Result<Vec<i64>> {
        if self.maps.is_empty() {
            return r.call_many(tail);
        }
        let pid = r.tid;
        let mut blob = Vec::with_capacity(self.bytes);
        let mut opens = Vec::with_capacity(self.files.len());
        for (path, flags) in &self.files {
            let at = t.data + PATHS_AT + blob.len() as u64;
            blob.extend_from_slice(path.as_bytes());
            blob.push(0);
            let flags = (flags | libc::O_CLOEXEC).cast_unsigned();
            let dirfd = libc::AT_FDCWD.cast_unsigned().into();
            opens.push(("openat", nr::OPENAT, [dirfd, at, flags.into(), 0, 0, 0]));
        }
        if !blob.is_empty() {
            remote::write_mem(pid, t.data + PATHS_AT, &blob)?;
        }
        let fds = r.call_many(&opens)?;
        let errno = |r: i64| {
            (-4095..0)
                .contains(&r)
                .then(|| nix::errno::Errno::from_raw(i32::try_from(-r).unwrap_or(libc::EINVAL)))
        };
        let opened = fds.iter().filter(|&&fd| errno(fd).is_none());
        let closes = opened.map(|&fd| ("close", nr::CLOSE, [fd.cast_unsigned(), 0, 0, 0, 0, 0]));
        let bad_open = fds.iter().position(|&fd| errno(fd).is_some());
        let calls: Vec<_> = if bad_open.is_some() {
            closes.collect()
        } else {
            self.maps
                .iter()
                .map(|&(idx, (name, nr, mut args), _)| {
                    if let Some(fd) = idx.and_then(|i| fds.get(i)) {
                        args[4] = fd.cast_unsigned();
                    }
                    (name, nr, args)
                })
                .chain(closes)
                .chain(tail.iter().copied())
                .collect()
        };
        let res = r.call_many(&calls)?;
        if let Some(i) = bad_open {
            let path = self.files.get(i).map_or("", |f| f.0.as_str());
            let used = self
                .maps
                .iter()
                .find(|m| m.0 == Some(i))
                .map_or(0, |m| m.2.0);
            return Err(Error::Restore {
                pid,
                what: format!("opening {path} to map it at {used:#x}"),
                errno: fds
                    .get(i)
                    .copied()
                    .and_then(errno)
                    .unwrap_or(nix::errno::Errno::EIO),
            });
        }
        for (&(idx, (name, _, _), (start, len)), &got) in self.maps.iter().zip(&res) {
            if let Some(e) = errno(got) {
                let of = idx
                    .and_then(|i| self.files.get(i))
                    .map(|f| format!(" of {}", f.0))
                    .unwrap_or_default();
                return Err(Error::Restore {
                    pid,
                    what: format!("the mapping {start:#x}-{:#x}{of} ({name})", start + len),
                    errno: e,
                });
            }
        }
        let tail_res = res
            .get(res.len().saturating_sub(tail.len())..)
            .unwrap_or(&[]);
        let tail_res = tail_res.to_vec();
        *self = MapBatch::default();
        Ok(tail_res)
    }
}

/// The call opening `path` in task `pid` with `flags`, the path written in
/// the trampoline's data at `off`.
pub fn open_call(
    pid: Pid,
    t: &Trampoline,
    off: u64,
    name: &'static str,
    path: &[u8],
    flags: i32,
) -> Result<Call> {
    let mut p = path.to_vec();
    p.push(0);
    let at = put(pid, t, off, &p)?;
    let dirfd = libc::AT_FDCWD.cast_unsigned().into();
    Ok((
        name,
        nr::OPENAT,
        [dirfd, at, flags.cast_unsigned().into(), 0, 0, 0],
    ))
}

/// The lowest free place for `len` bytes in the task once `vmas` are
/// mapped, away from the trampoline's hole.
fn free_gap(vmas: &[VmaEntry], t: &Trampoline, len: u64) -> Option<u64> {
    let mut busy: Vec<(u64, u64)> = vmas.iter().map(|v| (v.start, v.end)).collect();
    busy.push((t.start, t.start + TRAMPOLINE_HOLE));
    busy.sort_unstable();
    let mut at = LOWEST_FREE;
    for (start, end) in busy {
        if start >= at.checked_add(len)? {
            break;
        }
        at = at.max(end);
    }
    Some(at)
}

/// The call moving a mapping of `len` bytes from `from` to `to`.
fn move_call(from: u64, len: u64, to: u64) -> Call {
    let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED).cast_unsigned();
    (
        "mremap",
        nr::MREMAP,
        [from, len, len, u64::from(flags), to, 0],
    )
}

/// Shared anonymous memory objects already restored: the dump's shmid, and
/// the first task that mapped it (pid, VMA start, end and page offset).
/// Later tasks map the same object through that task's `map_files`.
pub type SharedAnon = std::collections::HashMap<u64, (Pid, u64, u64, u64)>;

/// Rebuild the address space of a freshly forked task stopped under `r`;
/// `first` are calls to run before anything is unmapped, in the same batch
/// (their paths, if any, at [`FIRST_PATH_AT`]). `images` are the images
/// and the task's ID in them. Returns the pages restored and the results
/// of `first`.
pub fn restore(
    r: &Remote,
    t: &Trampoline,
    vmas: &[VmaEntry],
    files: &Table,
    images: (&Dir, u64),
    shared: &mut SharedAnon,
    first: Vec<Call>,
) -> Result<(u64, Vec<u64>)> {
    let (dir, img_id) = images;
    let pid = r.tid;
    let current = proc::maps(pid)?;
    let page_vmas: Vec<&VmaEntry> = vmas
        .iter()
        .filter(|v| v.status & status::REGULAR != 0 && !is_special(v))
        .collect();
    // What to read, from the pagemap image, before anything is mapped: the
    // task opens the pages image in its first batch.
    let pages = plan_pages(img_id, dir, &page_vmas)?;
    // 1-2. The engine's memory goes and the special areas move, in the
    //      first batch with `first`.
    let n_first = first.len();
    let mut calls = first;
    calls.extend(clear_calls(pid, t, &current, vmas)?);
    let open_at = if pages.slow.is_empty() {
        None
    } else {
        let path = pages.abs.as_os_str().as_encoded_bytes();
        // With its terminator, below the caller's path.
        if path.len() as u64 >= FIRST_PATH_AT - PATHS_AT {
            return Err(Error::ImagesDir {
                path: pages.shown.clone(),
                err: std::io::Error::from_raw_os_error(libc::ENAMETOOLONG),
            });
        }
        calls.push(open_call(
            pid,
            t,
            PATHS_AT,
            "openat(pages)",
            path,
            libc::O_RDONLY | libc::O_CLOEXEC,
        )?);
        Some(calls.len() - 1)
    };
    let res = r.call_all(&calls)?;
    let first_res = res.get(..n_first).unwrap_or(&[]).to_vec();
    let mut fd = open_at.and_then(|i| res.get(i).copied());
    // 3. Every other VMA, writable until its pages are in.
    let mut batch = MapBatch::default();
    let mut cx = MapCtx {
        r,
        own_id: Pid::from_raw(i32::try_from(img_id).unwrap_or(0)),
        t,
        files,
        vmas,
        shared,
        batch: &mut batch,
    };
    for (k, v) in page_vmas.iter().enumerate() {
        let prev = k.checked_sub(1).and_then(|p| page_vmas.get(p)).copied();
        cx.map(v, prev)?;
    }
    // 4. Pages: the task reads its own with the last maps; large
    //    anonymous runs are copied in with UFFDIO_COPY after.
    let reads = fd.map_or_else(Vec::new, |fd| pread_calls(fd, &pages.slow));
    let got = batch.flush_with(r, t, &reads);
    let read = got.and_then(|got| match fd {
        Some(fd) => finish_reads(r, fd, &pages.slow, &got, &pages.shown),
        None => Ok(()),
    });
    let read = read.and_then(|()| fill_fast(r, t, &pages, &page_vmas, &mut fd));
    if let Err(e) = read {
        if let Some(fd) = fd {
            // The read's error is the one to report.
            let _ = r.call("close", nr::CLOSE, [fd, 0, 0, 0, 0, 0]);
        }
        return Err(e);
    }
    // 5. The pages image closed, guards and advice, then final
    //    protections: one batch.
    let mut calls: Vec<Call> = fd
        .map(|fd| ("close", nr::CLOSE, [fd, 0, 0, 0, 0, 0]))
        .into_iter()
        .collect();
    calls.extend(pages.guards.iter().map(|&(start, len)| {
        (
            "madvise(MADV_GUARD_INSTALL)",
            nr::MADVISE,
            [start, len, MADV_GUARD_INSTALL, 0, 0, 0],
        )
    }));
    for v in &page_vmas {
        let madv = v.madv.unwrap_or(0);
        for advice in (0..64).filter(|a| madv & (1 << a) != 0) {
            calls.push((
                "madvise",
                nr::MADVISE,
                [v.start, v.end - v.start, advice, 0, 0, 0],
            ));
        }
    }
    for v in &page_vmas {
        if v.status & status::FILE_SHARED == 0 && v.prot & libc::PROT_WRITE.cast_unsigned() == 0 {
            calls.push((
                "mprotect",
                nr::MPROTECT,
                [v.start, v.end - v.start, u64::from(v.prot), 0, 0, 0],
            ));
        }
    }
    r.call_all(&calls)?;
    Ok((pages.total, first_res))
}

/// What mapping the VMAs of one task needs: the task, the files, every VMA
/// (for free room), the shared objects made so far and the batch of calls.
struct MapCtx<'a> {
    r: &'a Remote,
    /// The task as its PID namespace numbers it (and the tree's /proc
    /// shows it): where others find its shared memory.
    own_id: Pid,
    t: &'a Trampoline,
    files: &'a Table,
    vmas: &'a [VmaEntry],
    shared: &'a mut SharedAnon,
    batch: &'a mut MapBatch,
}

impl MapCtx<'_> {
    /// Map VMA `v` (after `prev`), writable until its pages are in: a file,
    /// a SysV segment attached, a shared object made by an earlier task, or
    /// anonymous memory.
    fn map(&mut self, v: &VmaEntry, prev: Option<&VmaEntry>) -> Result<()> {
        let anon = v.status & (status::FILE_PRIVATE | status::FILE_SHARED) == 0;
        // Two anonymous VMAs the dump saw apart would merge if mapped side
        // by side (fresh anonymous VMAs get contiguous page offsets); one
        // mapped elsewhere and moved keeps its own offset and stays apart.
        let would_merge = anon
            && prev.is_some_and(|p| {
                p.end == v.start
                    && p.prot == v.prot
                    && p.flags == v.flags
                    && p.status & (status::FILE_PRIVATE | status::FILE_SHARED) == 0
            });
        let needs_pages = v.status & status::FILE_SHARED == 0;
        let prot = if needs_pages {
            v.prot | libc::PROT_WRITE.cast_unsigned()
        } else {
            v.prot
        };
        if v.status & (status::FILE_PRIVATE | status::FILE_SHARED) != 0 {
            self.map_file(v, prot)
        } else if v.status & status::SYSVIPC != 0 {
            self.attach_sysv(v)
        } else if v.status & status::ANON_SHARED != 0
            && let Some(&owner) = self.shared.get(&v.shmid)
        {
            self.map_shared(v, prot, owner)
        } else {
            self.map_anon(v, prot, would_merge)
        }
    }

    /// A file mapping, from the file the images name.
    fn map_file(&mut self, v: &VmaEntry, prot: u32) -> Result<()> {
        let pid = self.r.tid;
        let r = self.r;
        let t = self.t;
        let files = self.files;
        let batch = &mut *self.batch;
        let len = v.end - v.start;
        let fixed = libc::MAP_FIXED.cast_unsigned();
        let id = u32::try_from(v.shmid).unwrap_or(0);
        let path = files.path_of(id).ok_or_else(|| {
            img::MM.bad(
                pid,
                format!(
                    "mapping at {:#x} names file id {id}, which is not in files.img",
                    v.start
                ),
            )
        })?;
        let oflags = if v.status & status::FILE_SHARED != 0
            && v.prot & libc::PROT_WRITE.cast_unsigned() != 0
        {
            libc::O_RDWR
        } else {
            libc::O_RDONLY
        };
        let args = [
            v.start,
            len,
            u64::from(prot),
            u64::from(v.flags | fixed),
            0,
            v.pgoff,
        ];
        batch.add(r, t, Some((path.to_owned(), oflags)), args)?;
        Ok(())
    }

    /// A SysV segment, attached (made in the namespace already); later
    /// parts of a split one are covered by it.
    fn attach_sysv(&mut self, v: &VmaEntry) -> Result<()> {
        let pid = self.r.tid;
        let r = self.r;
        let t = self.t;
        let batch = &mut *self.batch;
        batch.flush(r, t)?;
        // The segment exists already (made in the namespace): attach it
        // at its address; later parts of a split one are covered by it.
        if v.pgoff == 0 {
            let mut shmflg = SHM_REMAP;
            if v.prot & libc::PROT_WRITE.cast_unsigned() == 0 {
                shmflg |= libc::SHM_RDONLY;
            }
            let got = r.call(
                "shmat",
                nr::SHMAT,
                [v.shmid, v.start, shmflg.cast_unsigned().into(), 0, 0, 0],
            )?;
            if got != v.start {
                return Err(Error::Restore {
                    pid,
                    what: format!(
                        "SysV shared memory {} at {:#x} (attached at {got:#x})",
                        v.shmid, v.start
                    ),
                    errno: nix::errno::Errno::EINVAL,
                });
            }
        }
        Ok(())
    }

    /// Shared anonymous memory an earlier task made (`owner`: its pid, VMA
    /// and page offset): mapped through that task's `map_files`.
    fn map_shared(&mut self, v: &VmaEntry, prot: u32, owner: (Pid, u64, u64, u64)) -> Result<()> {
        let (owner, ostart, oend, opgoff) = owner;
        let pid = self.r.tid;
        let r = self.r;
        let t = self.t;
        let batch = &mut *self.batch;
        let len = v.end - v.start;
        let fixed = libc::MAP_FIXED.cast_unsigned();
        // The object exists: map it from the task that made it.
        let page = v
            .pgoff
            .checked_sub(opgoff)
            .filter(|&p| p + len <= oend - ostart);
        let Some(off) = page else {
            return Err(Error::Restore {
                pid,
                what: format!(
                    "shared memory at {:#x}: it maps beyond the part task {owner} maps",
                    v.start
                ),
                errno: nix::errno::Errno::EINVAL,
            });
        };
        let path = format!("/proc/{owner}/map_files/{ostart:x}-{oend:x}");
        let flags = (v.flags & !libc::MAP_ANONYMOUS.cast_unsigned()) | fixed;
        let args = [v.start, len, u64::from(prot), u64::from(flags), 0, off];
        batch.add(r, t, Some((path, libc::O_RDWR)), args)?;
        Ok(())
    }

    /// Anonymous memory made here (a shared object is noted for the tasks
    /// after); `would_merge`: it would merge with the VMA before it if
    /// mapped in place.
    fn map_anon(&mut self, v: &VmaEntry, prot: u32, would_merge: bool) -> Result<()> {
        let pid = self.r.tid;
        let r = self.r;
        let t = self.t;
        let vmas = self.vmas;
        let batch = &mut *self.batch;
        let shared = &mut *self.shared;
        let len = v.end - v.start;
        let fixed = libc::MAP_FIXED.cast_unsigned();
        if v.status & status::ANON_SHARED != 0 {
            shared.insert(v.shmid, (self.own_id, v.start, v.end, v.pgoff));
        }
        let flags = v.flags | libc::MAP_ANONYMOUS.cast_unsigned();
        if !would_merge {
            let args = [
                v.start,
                len,
                u64::from(prot),
                u64::from(flags | fixed),
                u64::MAX,
                0,
            ];
            batch.add(r, t, None, args)?;
            return Ok(());
        }
        let flags = flags & !libc::MAP_FIXED_NOREPLACE.cast_unsigned();
        if let Some(at) = free_gap(vmas, t, len) {
            // Mapped at a free place, touched (getitimer writes zeros:
            // a forked task has no interval timers yet), then moved
            // over: all in the batch.
            let vma = (v.start, len);
            let args = [
                at,
                len,
                u64::from(prot),
                u64::from(flags | fixed),
                u64::MAX,
                0,
            ];
            batch.then(("mmap", nr::MMAP, args), vma);
            batch.then(("getitimer", nr::GETITIMER, [2, at, 0, 0, 0, 0]), vma);
            batch.then(move_call(at, len, v.start), vma);
            return Ok(());
        }
        batch.flush(r, t)?;
        let at = 0;
        let map = || {
            r.call(
                "mmap",
                nr::MMAP,
                [at, len, u64::from(prot), u64::from(flags), u64::MAX, 0],
            )
        };
        let mut got = map()?;
        if got == v.start {
            // The kernel chose the target itself (same offset as a
            // fixed mapping): map again elsewhere, move over it.
            got = map()?;
        }
        if got != v.start {
            // A never-touched anonymous VMA takes the offset of where it
            // lands and would merge after all: touch one page first.
            remote::write_mem(pid, got, &[0])?;
            r.call_all(&[move_call(got, len, v.start)])?;
        }
        Ok(())
    }
}

/// The calls that unmap everything task `pid` inherited from the engine
/// but the trampoline and the kernel's special areas (one munmap per run),
/// then move the special areas (`current` holds them) to where `vmas` had
/// them: parked first, so that no move lands on an area still in the way.
fn clear_calls(
    pid: Pid,
    t: &Trampoline,
    current: &[proc::Map],
    vmas: &[VmaEntry],
) -> Result<Vec<Call>> {
    // 1. Everything inherited from the engine goes, except the trampoline
    //    and the kernel's special areas (moved below).
    //    One munmap per run of unwanted mappings, not one per mapping.
    let keep = |m: &proc::Map| {
        is_special_name(&m.name) || (m.start >= t.start && m.end <= t.start + t.len)
    };
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut open = false;
    for m in current.iter().filter(|m| m.name != "[vsyscall]") {
        if keep(m) {
            open = false;
        } else {
            match runs.last_mut() {
                Some((_, b)) if open => *b = m.end,
                _ => runs.push((m.start, m.end)),
            }
            open = true;
        }
    }
    let mut calls: Vec<Call> = runs
        .iter()
        .map(|&(a, b)| ("munmap", nr::MUNMAP, [a, b - a, 0, 0, 0, 0]))
        .collect();
    // 2. The special areas, matched by kind in address order; parked first
    //    so that no move lands on another area still in the way. In the
    //    same batch as the unmapping.
    let cur_special: Vec<&proc::Map> = current
        .iter()
        .filter(|m| matches!(m.name.as_str(), "[vdso]" | "[vvar]" | "[vvar_vclock]"))
        .collect();
    let want: Vec<&VmaEntry> = vmas
        .iter()
        .filter(|v| v.status & (status::VDSO | status::VVAR) != 0)
        .collect();
    let kind_of = |name: &str| {
        if name == "[vdso]" {
            status::VDSO
        } else {
            status::VVAR
        }
    };
    let mismatch = || Error::Restore {
        pid,
        what: format!(
            "the vdso: the image has {} vdso/vvar areas, this kernel {}; restore on the kernel that made the dump",
            want.len(),
            cur_special.len()
        ),
        errno: nix::errno::Errno::EINVAL,
    };
    if want.len() != cur_special.len() {
        return Err(mismatch());
    }
    let mut parked = Vec::new();
    let mut park = t.park;
    for (m, v) in cur_special.iter().zip(&want) {
        if kind_of(&m.name) & v.status == 0 || m.len() != v.end - v.start {
            return Err(mismatch());
        }
        calls.push(move_call(m.start, m.len(), park));
        parked.push((park, m.len(), v.start));
        park += m.len();
    }
    calls.extend(
        parked
            .into_iter()
            .map(|(from, len, to)| move_call(from, len, to)),
    );
    Ok(calls)
}

/// Runs of at least this many bytes in anonymous private memory are filled
/// with UFFDIO_COPY, when they add up to [`UFFD_TOTAL`].
const UFFD_RUN: u64 = 256 << 10;
const UFFD_TOTAL: u64 = 4 << 20;
/// Bytes of the pages image mapped into the engine at a time for UFFDIO_COPY.
const UFFD_WINDOW: u64 = 16 << 20;

/// A task's pages, as its pagemap image gives them: read by the engine
/// before anything is mapped. Large runs of anonymous private memory are
/// copied in with UFFDIO_COPY straight from the image's page cache (one
/// copy; the new pages are not zeroed first and take no fault each); the
/// rest the task reads itself (remote pread64 into its mappings), as does
/// any run userfaultfd cannot take.
struct PagesPlan {
    /// Pages in the image.
    total: u64,
    /// Guard regions to install (start, length).
    guards: Vec<(u64, u64)>,
    /// Runs (address, length, image offset) for UFFDIO_COPY.
    fast: Vec<(u64, u64, u64)>,
    /// Runs the task reads.
    slow: Vec<(u64, u64, u64)>,
    /// The pages image, absolute (the task's working directory is its own
    /// by then), and as shown in messages.
    abs: std::path::PathBuf,
    shown: String,
}

fn plan_pages(img_id: u64, dir: &Dir, vmas: &[&VmaEntry]) -> Result<PagesPlan> {
    let ps = kernel::mm::page_size();
    let mut pm = dir.open_image(img::PAGEMAP, img_id)?;
    let head: PagemapHead = pm.read_entry()?.ok_or_else(|| Error::BadImage {
        path: pm.path().to_owned(),
        what: "no pagemap head".into(),
    })?;
    let path = dir.pages_file(head.pages_id);
    let shown = path.display().to_string();
    let abs = std::fs::canonicalize(&path).map_err(|e| Error::ImagesDir {
        path: shown.clone(),
        err: e,
    })?;
    let size = std::fs::metadata(&abs)
        .map_err(|e| Error::ImagesDir {
            path: shown.clone(),
            err: e,
        })?
        .len();
    let (total, guards, reads) = read_entries(&mut pm, size, ps, &shown)?;
    let anon = |&(at, len, _): &(u64, u64, u64)| {
        len >= UFFD_RUN
            && vmas.iter().any(|v| {
                v.status & status::ANON_PRIVATE != 0
                    && v.status & status::SYSVIPC == 0
                    && v.start <= at
                    && at + len <= v.end
            })
    };
    let (mut fast, mut slow): (Vec<_>, Vec<_>) = reads.into_iter().partition(anon);
    if fast.iter().map(|f| f.1).sum::<u64>() < UFFD_TOTAL {
        slow.append(&mut fast);
    }
    Ok(PagesPlan {
        total,
        guards,
        fast,
        slow,
        abs,
        shown,
    })
}

/// Copy the plan's large runs in with UFFDIO_COPY; what it cannot take,
/// the task reads through `fd` (opened here if the task had none).
fn fill_fast(
    r: &Remote,
    t: &Trampoline,
    pages: &PagesPlan,
    vmas: &[&VmaEntry],
    fd: &mut Option<u64>,
) -> Result<()> {
    if pages.fast.is_empty() {
        return Ok(());
    }
    let left = match fill_by_uffd(r, &pages.abs, &pages.fast, vmas) {
        Ok(left) => left,
        Err(e) => {
            let pid = r.tid;
            tracing::debug!("task {pid}: UFFDIO_COPY not used ({e}); the task reads its pages");
            pages.fast.clone()
        }
    };
    if left.is_empty() {
        return Ok(());
    }
    let f = match *fd {
        Some(f) => f,
        None => {
            let open = open_call(
                r.tid,
                t,
                PATHS_AT,
                "openat(pages)",
                pages.abs.as_os_str().as_encoded_bytes(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            )?;
            let f = r.call(open.0, open.1, open.2)?;
            *fd = Some(f);
            f
        }
    };
    let got = r.call_many(&pread_calls(f, &left))?;
    finish_reads(r, f, &left, &got, &pages.shown)
}

/// Split `items` (address, length, offset) into `n` parts of about the same
/// number of bytes, cutting an item where needed (at a page boundary).
fn split_bytes(items: &[(u64, u64, u64)], n: usize) -> Vec<Vec<(u64, u64, u64)>> {
    let total: u64 = items.iter().map(|i| i.1).sum();
    let ps = kernel::mm::page_size();
    let per = ((total / n.max(1) as u64).div_ceil(ps) * ps).max(ps);
    let mut out = vec![Vec::new()];
    let mut room = per;
    for &(mut at, mut len, mut off) in items {
        while len > 0 {
            if room == 0 {
                out.push(Vec::new());
                room = per;
            }
            let k = len.min(room);
            if let Some(last) = out.last_mut() {
                last.push((at, k, off));
            }
            (at, len, off, room) = (at + k, len - k, off + k, room - k);
        }
    }
    out
}

/// UFFDIO_COPY each of `items` from `file`, window by window; returns the
/// parts not copied.
fn uffd_copy_all(
    uffd: &std::os::fd::OwnedFd,
    file: &File,
    items: &[(u64, u64, u64)],
) -> Vec<(u64, u64, u64)> {
    let mut left = Vec::new();
    for &(at, len, off) in items {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(UFFD_WINDOW);
            let Ok(win) =
                kernel::mm::FileWindow::map(file, off + done, usize::try_from(n).unwrap_or(0))
            else {
                break;
            };
            match kernel::uffd::uffd_copy(uffd, at + done, win.addr(0), n) {
                Ok(k) if k > 0 => done += k,
                _ => break,
            }
        }
        if done < len {
            left.push((at + done, len - done, off + done));
        }
    }
    left
}

/// Copy `items` (address, length, offset in the image at `path`) into the
/// task under `r` with a userfaultfd made in the task; returns the parts it
/// could not copy.
fn fill_by_uffd(
    r: &Remote,
    path: &std::path::Path,
    items: &[(u64, u64, u64)],
    vmas: &[&VmaEntry],
) -> Result<Vec<(u64, u64, u64)>> {
    let pid = r.tid;
    let fail = |what: String| {
        move |errno| Error::Restore {
            pid,
            what: what.clone(),
            errno,
        }
    };
    let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK).cast_unsigned();
    let fd = r.call(
        "userfaultfd",
        nr::USERFAULTFD,
        [flags.into(), 0, 0, 0, 0, 0],
    )?;
    let got = kernel::fd::pidfd_open(pid)
        .and_then(|p| kernel::fd::pidfd_getfd(&p, i32::try_from(fd).unwrap_or(-1)));
    r.call("close", nr::CLOSE, [fd, 0, 0, 0, 0, 0])?;
    let uffd = got.map_err(fail("its userfaultfd".into()))?;
    kernel::uffd::uffd_api(&uffd).map_err(fail("UFFDIO_API".into()))?;
    let mut regs: Vec<(u64, u64)> = Vec::new();
    for &(at, _, _) in items {
        if let Some(v) = vmas.iter().find(|v| v.start <= at && at < v.end)
            && !regs.contains(&(v.start, v.end))
        {
            kernel::uffd::uffd_register(&uffd, v.start, v.end - v.start).map_err(fail(format!(
                "UFFDIO_REGISTER of {:#x}-{:#x}",
                v.start, v.end
            )))?;
            regs.push((v.start, v.end));
        }
    }
    let file = File::open(path).map_err(|e| Error::ImagesDir {
        path: path.display().to_string(),
        err: e,
    })?;
    // Large copies on every CPU the engine has: UFFDIO_COPY calls on
    // disjoint ranges run side by side.
    let total: u64 = items.iter().map(|i| i.1).sum();
    let cpus = kernel::sched::engine_cpus().map_or(1, |c| c.len());
    let parts = split_bytes(
        items,
        cpus.min(4)
            .min(usize::try_from(total / PART_MIN).unwrap_or(1))
            .max(1),
    );
    let jobs: Vec<_> = parts
        .iter()
        .enumerate()
        .map(|(k, part)| {
            let (uffd, file) = (&uffd, &file);
            move || {
                if k > 0 {
                    // Helpers may run anywhere the engine may (the
                    // restore worker that spawns them is pinned).
                    kernel::sched::unpin_thread();
                }
                uffd_copy_all(uffd, file, part)
            }
        })
        .collect();
    // A part whose thread panicked is left for the task to read.
    let left: Vec<_> =
        crate::workers::run(jobs, |k| parts.get(k).cloned().unwrap_or_default()).concat();
    // Closing the userfaultfd would unregister too; say so explicitly.
    for (start, end) in regs {
        let _ = kernel::uffd::uffd_unregister(&uffd, start, end - start);
    }
    Ok(left)
}

/// Pages to read and guard regions to install.
type PageWork = (u64, Vec<(u64, u64)>, Vec<(u64, u64, u64)>);

/// The pagemap entries, checked against the size of the pages image:
/// pages in all, guard regions (start, length) and reads (address, length,
/// offset in the image).
fn read_entries<R: std::io::BufRead>(
    pm: &mut stasis_proto::ImageReader<R>,
    size: u64,
    ps: u64,
    shown: &str,
) -> Result<PageWork> {
    let mut off: u64 = 0;
    let mut total = 0;
    let mut guards = Vec::new();
    let mut reads: Vec<(u64, u64, u64)> = Vec::new();
    while let Some(e) = pm.read_entry::<PagemapEntry>()? {
        let n = e.nr_pages.unwrap_or(u64::from(e.compat_nr_pages));
        let flags = e.flags.unwrap_or(PE_PRESENT);
        if flags & PE_GUARD != 0 {
            guards.push((e.vaddr, n.saturating_mul(ps)));
            continue;
        }
        if flags & PE_PRESENT == 0 {
            continue;
        }
        let len = n.checked_mul(ps).ok_or_else(|| Error::BadImage {
            path: shown.to_owned(),
            what: format!("{n} pages at {:#x}", e.vaddr),
        })?;
        if off.saturating_add(len) > size {
            return Err(Error::BadImage {
                path: shown.to_owned(),
                what: format!(
                    "truncated: pages for {:#x} missing ({size} bytes, {} needed)",
                    e.vaddr,
                    off.saturating_add(len)
                ),
            });
        }
        let mut done = 0;
        while done < len {
            let chunk = (len - done).min(1 << 30);
            reads.push((e.vaddr + done, chunk, off + done));
            done += chunk;
        }
        off += len;
        total += n;
    }
    Ok((total, guards, reads))
}

/// The calls by which the task reads `reads` (address, length, offset)
/// from the pages image open as its fd `fd`.
fn pread_calls(fd: u64, reads: &[(u64, u64, u64)]) -> Vec<Call> {
    reads
        .iter()
        .map(|&(at, len, off)| ("pread64(pages)", nr::PREAD64, [fd, at, len, off, 0, 0]))
        .collect()
}

/// Check the results `res` of [`pread_calls`]: a short read (a file that
/// shrank meanwhile) is finished call by call.
fn finish_reads(
    r: &Remote,
    fd: u64,
    reads: &[(u64, u64, u64)],
    res: &[i64],
    shown: &str,
) -> Result<()> {
    for (&(at, len, off), &got) in reads.iter().zip(res) {
        let mut done = r.result("pread64(pages)", got)?;
        while done < len {
            let got = r.call(
                "pread64(pages)",
                nr::PREAD64,
                [fd, at + done, len - done, off + done, 0, 0],
            )?;
            if got == 0 {
                return Err(Error::BadImage {
                    path: shown.to_owned(),
                    what: format!("truncated at byte {}", off + done),
                });
            }
            done += got;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{kernel, split_bytes};

    #[test]
    fn split_bytes_cuts_at_pages_and_keeps_every_byte() {
        let ps = kernel::mm::page_size();
        // Three runs: 10, 1 and 5 pages, back to back in the image.
        let items = [
            (0x10_0000, 10 * ps, 0),
            (0x40_0000, ps, 10 * ps),
            (0x80_0000, 5 * ps, 11 * ps),
        ];
        for n in 1..=5 {
            let parts = split_bytes(&items, n);
            assert!(parts.len() <= n, "{n} parts asked, {} made", parts.len());
            let flat: Vec<_> = parts.concat();
            assert!(flat.iter().all(|p| p.1 > 0 && p.1 % ps == 0));
            // Glued back together, the pieces are the runs again.
            let mut glued: Vec<(u64, u64, u64)> = Vec::new();
            for (at, len, off) in flat {
                match glued.last_mut() {
                    Some(g) if g.0 + g.1 == at && g.2 + g.1 == off => g.1 += len,
                    _ => glued.push((at, len, off)),
                }
            }
            assert_eq!(glued, items, "{n} parts");
        }
    }
}
