//! Rebuilding a restored task's address space from `mm-ID.img`: the
//! engine's own mappings inherited by fork go, the vdso areas move to
//! their dumped addresses, and every VMA is mapped again from inside the
//! task (its files, SysV segments and shared objects included), writable
//! until its pages are in. All of it runs as remote calls in a few
//! batches, since each stop of the task costs more than a call.

use nix::unistd::Pid;
use stasis_arch::native::nr;
use stasis_proto::images::VmaEntry;

use super::batch::MapBatch;
use super::fill::{PagesPlan, fill_fast, finish_reads, plan_pages, pread_calls};
use super::shared::SharedAnon;
use super::{is_special, is_special_name, status};
use crate::error::{EngineError as Error, Result};
use crate::files::Table;
use crate::images::Dir;
use crate::images::img;
use crate::proc;
use crate::task::remote::{self, Call, Remote};
use crate::task::trampoline::{LOWEST_FREE, TRAMPOLINE_HOLE, Trampoline, layout, open_call};

/// shmat: replace whatever is mapped at the address.
const SHM_REMAP: i32 = 0o40000;
const MADV_GUARD_INSTALL: u64 = 102;

/// Rebuild the address space of a freshly forked task stopped under `r`;
/// `first` are calls to run before anything is unmapped, in the same batch
/// (their paths, if any, at [`layout::FIRST_PATH`]). `images` are the
/// images and the task's ID in them. Returns the pages restored and the
/// results of `first`.
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
    let current = proc::maps(r.tid)?;
    let page_vmas: Vec<&VmaEntry> = vmas
        .iter()
        .filter(|v| v.status & status::REGULAR != 0 && !is_special(v))
        .collect();
    // What to read, from the pagemap image, before anything is mapped: the
    // task opens the pages image in its first batch.
    let pages = plan_pages(img_id, dir, &page_vmas)?;
    let rb = Rebuild {
        r,
        t,
        vmas,
        page_vmas,
        pages,
    };
    // 1-2. The engine's memory goes and the special areas move.
    let (first_res, mut fd) = rb.clear(&current, first)?;
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
    for (k, v) in rb.page_vmas.iter().enumerate() {
        let prev = k.checked_sub(1).and_then(|p| rb.page_vmas.get(p)).copied();
        cx.map(v, prev)?;
    }
    // 4. Pages, with the last maps.
    rb.fill(&mut batch, &mut fd)?;
    // 5. Guards, advice and final protections.
    r.call_all(&rb.last_calls(fd))?;
    Ok((rb.pages.total, first_res))
}

/// The address space of one task being rebuilt: the task, its VMAs, those
/// mapped again (`page_vmas`: all but the kernel's special areas) and the
/// plan for their pages.
struct Rebuild<'a> {
    r: &'a Remote,
    t: &'a Trampoline,
    vmas: &'a [VmaEntry],
    page_vmas: Vec<&'a VmaEntry>,
    pages: PagesPlan,
}

impl Rebuild<'_> {
    /// Steps 1-2: the engine's memory goes and the special areas move (`current`
    /// holds them), in the first batch with `first`, where the task also
    /// opens the pages image if it reads any. The results of `first`, and
    /// the task's fd of the pages image.
    fn clear(&self, current: &[proc::Map], first: Vec<Call>) -> Result<(Vec<u64>, Option<u64>)> {
        let pid = self.r.tid;
        let pages = &self.pages;
        let n_first = first.len();
        let mut calls = first;
        calls.extend(clear_calls(pid, self.t, current, self.vmas)?);
        let open_at = if pages.slow.is_empty() {
            None
        } else {
            let path = pages.abs.as_os_str().as_encoded_bytes();
            // With its terminator, below the caller's path.
            if path.len() as u64 >= layout::FIRST_PATH - layout::PATHS {
                return Err(Error::ImagesDir {
                    path: pages.shown.clone(),
                    err: std::io::Error::from_raw_os_error(libc::ENAMETOOLONG),
                });
            }
            calls.push(open_call(
                pid,
                self.t,
                layout::PATHS,
                "openat(pages)",
                path,
                libc::O_RDONLY | libc::O_CLOEXEC,
            )?);
            Some(calls.len() - 1)
        };
        let res = self.r.call_all(&calls)?;
        let first_res = res.get(..n_first).unwrap_or(&[]).to_vec();
        Ok((first_res, open_at.and_then(|i| res.get(i).copied())))
    }

    /// Step 4, pages: the task reads its own through `fd` with the last maps of
    /// `batch`; large anonymous runs are copied in with UFFDIO_COPY after.
    /// On failure the task's fd of the pages image is closed.
    fn fill(&self, batch: &mut MapBatch, fd: &mut Option<u64>) -> Result<()> {
        let (r, pages) = (self.r, &self.pages);
        let reads = fd.map_or_else(Vec::new, |fd| pread_calls(fd, &pages.slow));
        let got = batch.flush_with(r, self.t, &reads);
        let read = got.and_then(|got| match *fd {
            Some(fd) => finish_reads(r, fd, &pages.slow, &got, &pages.shown),
            None => Ok(()),
        });
        let read = read.and_then(|()| fill_fast(r, self.t, pages, &self.page_vmas, fd));
        if let Err(e) = read {
            if let Some(fd) = *fd {
                // The read's error is the one to report.
                let _ = r.call("close", nr::CLOSE, [fd, 0, 0, 0, 0, 0]);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Step 5: the pages image closed, guards and advice, then final
    /// protections: the calls of one batch.
    fn last_calls(&self, fd: Option<u64>) -> Vec<Call> {
        let mut calls: Vec<Call> = fd
            .map(|fd| ("close", nr::CLOSE, [fd, 0, 0, 0, 0, 0]))
            .into_iter()
            .collect();
        calls.extend(self.pages.guards.iter().map(|&(start, len)| {
            (
                "madvise(MADV_GUARD_INSTALL)",
                nr::MADVISE,
                [start, len, MADV_GUARD_INSTALL, 0, 0, 0],
            )
        }));
        for v in &self.page_vmas {
            let madv = v.madv.unwrap_or(0);
            for advice in (0..64).filter(|a| madv & (1 << a) != 0) {
                calls.push((
                    "madvise",
                    nr::MADVISE,
                    [v.start, v.end - v.start, advice, 0, 0, 0],
                ));
            }
        }
        for v in &self.page_vmas {
            if v.status & status::FILE_SHARED == 0 && v.prot & libc::PROT_WRITE.cast_unsigned() == 0
            {
                calls.push((
                    "mprotect",
                    nr::MPROTECT,
                    [v.start, v.end - v.start, u64::from(v.prot), 0, 0, 0],
                ));
            }
        }
        calls
    }
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
    let mut calls = unmap_calls(t, current);
    calls.extend(move_special_calls(pid, t, current, vmas)?);
    Ok(calls)
}

/// Step 1: everything inherited from the engine goes, except the
/// trampoline and the kernel's special areas (moved after): one munmap per
/// run of unwanted mappings, not one per mapping.
fn unmap_calls(t: &Trampoline, current: &[proc::Map]) -> Vec<Call> {
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
    runs.iter()
        .map(|&(a, b)| ("munmap", nr::MUNMAP, [a, b - a, 0, 0, 0, 0]))
        .collect()
}

/// Step 2: the special areas, matched by kind in address order; parked
/// first so that no move lands on another area still in the way. In the
/// same batch as the unmapping.
fn move_special_calls(
    pid: Pid,
    t: &Trampoline,
    current: &[proc::Map],
    vmas: &[VmaEntry],
) -> Result<Vec<Call>> {
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
    let mut calls = Vec::new();
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
