//! Dumping a task's pages: `/proc/PID/pagemap` walked once per VMA to
//! write `pagemap-ID.img`, and the pages it finds copied into
//! `pages-ID.img`. Copying reads the frozen task with gathered
//! `process_vm_readv` in bounded chunks, so the dumper's memory stays small
//! whatever the task's size, and large dumps copy on several threads while
//! the walk goes on, since reading the task is the slow part.

use nix::unistd::Pid;
use stasis_kernel as kernel;
use stasis_proto::images::{PagemapEntry, PagemapHead, VmaEntry};
use std::fs::File;
use std::os::unix::fs::FileExt;

use super::shared::{SharedPages, object_pages};
use super::vma::{RawVmas, dump_vmas, read_vmas};
use super::{Item, PE_GUARD, PE_PRESENT, copy_threads, is_special, status};
use crate::error::{EngineError as Error, Result};
use crate::images::Dir;
use crate::images::img;
use crate::proc;
use crate::progress::{Progress, Step};
use crate::task::remote;

const PM_PRESENT: u64 = 1 << 63;
const PM_SWAP: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;
/// A guard region marker (Linux 6.15), reported as a swap-like entry.
const PM_GUARD: u64 = 1 << 58;
/// Bytes copied per read from the task: bounds the dumper's memory use.
const CHUNK: usize = 4 << 20;

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

/// Write the pages of `vmas` to `pagemap-ID.img` and `pages-ID.img`.
///
/// The pagemap is walked once. Large dumps copy while it is walked: each
/// stretch of found pages (up to [`CHUNK`] bytes) goes to whichever
/// copying thread is free, written at its own offset of the image.
fn dump_pages(
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
    let d = PageDump {
        pid,
        img_id,
        vmas,
        dir,
        id,
        pages,
        shown: pages_path.display().to_string(),
        progress,
    };
    // The most there can be to copy: what the dumped VMAs span.
    let span: u64 = vmas
        .iter()
        .filter(|v| dumped(v))
        .map(|v| v.end - v.start)
        .sum();
    let n = copy_threads(span);
    if n <= 1 {
        return d.on_one_thread(shared);
    }
    d.on_threads(n, shared)
}

/// Whether `v` may have pages in the image.
fn dumped(v: &VmaEntry) -> bool {
    v.status & (status::ANON_PRIVATE | status::ANON_SHARED | status::FILE_PRIVATE) != 0
        && !is_special(v)
}

/// The page dump of one task: the task and its VMAs, the images, and the
/// pages image open for writing (`shown` in messages).
struct PageDump<'a> {
    pid: Pid,
    img_id: u64,
    vmas: &'a [VmaEntry],
    dir: &'a Dir,
    id: u32,
    pages: File,
    shown: String,
    progress: Option<&'a Progress>,
}

/// A run of pages for the pagemap image: start, pages, guard region.
type Run = (u64, u64, bool);

impl PageDump<'_> {
    /// Walk the whole pagemap, then copy what it found on this thread.
    fn on_one_thread(&self, shared: &mut SharedPages) -> Result<PageStats> {
        let mut items = Vec::new();
        let stats = self.walk(shared, &mut |batch| {
            items.extend(batch);
            Ok(())
        })?;
        self.copy(&items, &mut Vec::new())?;
        Ok(stats)
    }

    /// Walk the pagemap on this thread while `n` threads copy the batches
    /// it finds; a copier's failure stops the walk.
    fn on_threads(&self, n: usize, shared: &mut SharedPages) -> Result<PageStats> {
        let pid = self.pid;
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
                self.copy(&batch, &mut buf)
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
                self.walk(shared, &mut |batch| {
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

    /// Walk the pagemap of the VMAs, write `pagemap-ID.img` and hand the
    /// pages to copy to `found`, in image order, at most [`CHUNK`] bytes
    /// at a time.
    fn walk(
        &self,
        shared: &mut SharedPages,
        found: &mut dyn FnMut(Vec<Item>) -> Result<()>,
    ) -> Result<PageStats> {
        let pid = self.pid;
        let path = format!("/proc/{pid}/pagemap");
        let pagemap = File::open(&path).map_err(|e| Error::Proc {
            pid,
            path: path.clone(),
            err: e,
        })?;
        let mut head = self.dir.create(img::PAGEMAP, self.img_id)?;
        head.write(&PagemapHead { pages_id: self.id })?;
        let mut w = Walk {
            pid,
            pagemap,
            path,
            ps: kernel::mm::page_size(),
            stats: PageStats::default(),
            batch: Vec::new(),
            batched: 0,
            off: 0,
            found,
        };
        let mut pm = vec![0u8; 8 * 4096];
        for v in self.vmas.iter().filter(|v| dumped(v)) {
            // Shared anonymous memory: the object's pages, not the task's page
            // table, which lacks those another task (maybe gone) wrote and those
            // it never touched or that were reclaimed or swapped out.
            let object = if v.status & status::ANON_SHARED != 0 {
                Some(object_pages(pid, v, shared)?)
            } else {
                None
            };
            for (start, len, guard) in w.vma(v, object.as_deref(), &mut pm)? {
                head.write(&PagemapEntry {
                    vaddr: start,
                    compat_nr_pages: u32::try_from(len).unwrap_or(u32::MAX),
                    in_parent: None,
                    flags: Some(if guard { PE_GUARD } else { PE_PRESENT }),
                    nr_pages: Some(len),
                })?;
            }
        }
        if !w.batch.is_empty() {
            (w.found)(std::mem::take(&mut w.batch))?;
        }
        head.finish()?;
        Ok(w.stats)
    }

    /// Copy `items` of the task into the pages image: runs gathered into
    /// one buffer with one process_vm_readv and written with one pwrite
    /// while they are contiguous in the image.
    /// `buf` is the caller's, kept from call to call and grown as needed.
    fn copy(&self, items: &[Item], buf: &mut Vec<u8>) -> Result<()> {
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
        let flush =
            |pending: &mut Vec<(u64, usize)>, fill: &mut usize, buf: &mut [u8], at_off: u64| {
                if *fill == 0 {
                    return Ok(());
                }
                remote::read_mem_v(self.pid, pending, &mut buf[..*fill])?;
                self.pages
                    .write_all_at(&buf[..*fill], at_off)
                    .map_err(|e| Error::ImagesDir {
                        path: self.shown.clone(),
                        err: e,
                    })?;
                crate::progress::report(self.progress, Step::Pages(*fill as u64 / ps));
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
}

/// One walk of a task's pagemap: where the next page goes in the image,
/// and the pages found and not yet handed to `found` (`batched` bytes).
struct Walk<'f> {
    pid: Pid,
    pagemap: File,
    path: String,
    ps: u64,
    stats: PageStats,
    batch: Vec<Item>,
    batched: u64,
    off: u64,
    found: &'f mut dyn FnMut(Vec<Item>) -> Result<()>,
}

impl Walk<'_> {
    /// Scan the pagemap of `v` (read into `pm`) and return its runs for
    /// the pagemap image, handing its pages on as they are found.
    /// `object`: for shared anonymous memory, the ranges to take instead of
    /// what the page table says.
    fn vma(
        &mut self,
        v: &VmaEntry,
        object: Option<&[(u64, u64)]>,
        pm: &mut [u8],
    ) -> Result<Vec<Run>> {
        let ps = self.ps;
        let mut runs: Vec<Run> = Vec::new();
        let mut next_obj = 0;
        let mut addr = v.start;
        while addr < v.end {
            let n = ((v.end - addr) / ps).min(4096);
            let bytes = usize::try_from(n * 8).unwrap_or(0);
            self.pagemap
                .read_exact_at(&mut pm[..bytes], addr / ps * 8)
                .map_err(|e| Error::Proc {
                    pid: self.pid,
                    path: self.path.clone(),
                    err: e,
                })?;
            for (i, w) in pm[..bytes].chunks_exact(8).enumerate() {
                let word = u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
                let page = addr + i as u64 * ps;
                self.stats.scanned += 1;
                let guard = word & PM_GUARD != 0;
                let take = match object {
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
                if !guard {
                    self.add(page)?;
                }
            }
            addr += n * ps;
        }
        Ok(runs)
    }

    /// Page `page` goes in the image next; the batch is handed on once it
    /// holds [`CHUNK`] bytes.
    fn add(&mut self, page: u64) -> Result<()> {
        let ps = self.ps;
        // Image offsets follow the order pages are found in.
        match self.batch.last_mut() {
            Some((s, len, _)) if *s + *len == page => *len += ps,
            _ => self.batch.push((page, ps, self.off)),
        }
        self.batched += ps;
        self.off += ps;
        self.stats.written += 1;
        if self.batched >= CHUNK as u64 {
            (self.found)(std::mem::take(&mut self.batch))?;
            self.batched = 0;
        }
        Ok(())
    }
}
