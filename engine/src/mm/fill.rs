//! Filling a restored task's pages from `pagemap-ID.img` and
//! `pages-N.img`. The pagemap image is read before anything is mapped, so
//! the reads can ride in the mapping batches. Large runs of anonymous
//! private memory are copied in with UFFDIO_COPY straight from the image's
//! page cache (one copy, no zeroing, no fault per page); the rest, and
//! anything userfaultfd refuses, the task reads itself with `pread64`.

use nix::unistd::Pid;
use stasis_arch::native::nr;
use stasis_kernel as kernel;
use stasis_proto::images::{PagemapEntry, PagemapHead, VmaEntry};
use std::fs::File;

use super::{Item, PE_GUARD, PE_PRESENT, copy_threads, status};
use crate::error::{EngineError as Error, Result};
use crate::images::Dir;
use crate::images::img;
use crate::task::remote::{Call, Remote};
use crate::task::trampoline::{Trampoline, layout, open_call};

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
pub(super) struct PagesPlan {
    /// Pages in the image.
    pub(super) total: u64,
    /// Guard regions to install (start, length).
    pub(super) guards: Vec<(u64, u64)>,
    /// Runs (address, length, image offset) for UFFDIO_COPY.
    pub(super) fast: Vec<(u64, u64, u64)>,
    /// Runs the task reads.
    pub(super) slow: Vec<(u64, u64, u64)>,
    /// The pages image, absolute (the task's working directory is its own
    /// by then), and as shown in messages.
    pub(super) abs: std::path::PathBuf,
    pub(super) shown: String,
}

pub(super) fn plan_pages(img_id: u64, dir: &Dir, vmas: &[&VmaEntry]) -> Result<PagesPlan> {
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
pub(super) fn fill_fast(
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
                layout::PATHS,
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
    items: &[Item],
    vmas: &[&VmaEntry],
) -> Result<Vec<Item>> {
    let uffd = task_uffd(r)?;
    let regs = register(r.tid, &uffd, items, vmas)?;
    let file = File::open(path).map_err(|e| Error::ImagesDir {
        path: path.display().to_string(),
        err: e,
    })?;
    let left = copy_on_threads(&uffd, &file, items);
    // Closing the userfaultfd would unregister too; say so explicitly.
    for (start, end) in regs {
        let _ = kernel::uffd::uffd_unregister(&uffd, start, end - start);
    }
    Ok(left)
}

/// The restore error of `pid` about `what`, from an errno.
fn failed(pid: Pid, what: String) -> impl FnOnce(nix::errno::Errno) -> Error {
    move |errno| Error::Restore { pid, what, errno }
}

/// A userfaultfd made in the task under `r` and taken into the engine (the
/// task's fd closed), its API handshake done.
fn task_uffd(r: &Remote) -> Result<std::os::fd::OwnedFd> {
    let pid = r.tid;
    let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK).cast_unsigned();
    let fd = r.call(
        "userfaultfd",
        nr::USERFAULTFD,
        [flags.into(), 0, 0, 0, 0, 0],
    )?;
    let got = kernel::fd::pidfd_open(pid)
        .and_then(|p| kernel::fd::pidfd_getfd(&p, i32::try_from(fd).unwrap_or(-1)));
    r.call("close", nr::CLOSE, [fd, 0, 0, 0, 0, 0])?;
    let uffd = got.map_err(failed(pid, "its userfaultfd".into()))?;
    kernel::uffd::uffd_api(&uffd).map_err(failed(pid, "UFFDIO_API".into()))?;
    Ok(uffd)
}

/// Register with `uffd` every VMA of `vmas` that one of `items` starts in;
/// the VMAs registered (start, end).
fn register(
    pid: Pid,
    uffd: &std::os::fd::OwnedFd,
    items: &[Item],
    vmas: &[&VmaEntry],
) -> Result<Vec<(u64, u64)>> {
    let mut regs: Vec<(u64, u64)> = Vec::new();
    for &(at, _, _) in items {
        if let Some(v) = vmas.iter().find(|v| v.start <= at && at < v.end)
            && !regs.contains(&(v.start, v.end))
        {
            kernel::uffd::uffd_register(uffd, v.start, v.end - v.start).map_err(failed(
                pid,
                format!("UFFDIO_REGISTER of {:#x}-{:#x}", v.start, v.end),
            ))?;
            regs.push((v.start, v.end));
        }
    }
    Ok(regs)
}

/// UFFDIO_COPY `items` from `file` on every CPU the engine has (calls on
/// disjoint ranges run side by side); returns the parts not copied.
fn copy_on_threads(uffd: &std::os::fd::OwnedFd, file: &File, items: &[Item]) -> Vec<Item> {
    let total: u64 = items.iter().map(|i| i.1).sum();
    let parts = split_bytes(items, copy_threads(total));
    let jobs: Vec<_> = parts
        .iter()
        .enumerate()
        .map(|(k, part)| {
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
    crate::workers::run(jobs, |k| parts.get(k).cloned().unwrap_or_default()).concat()
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
pub(super) fn pread_calls(fd: u64, reads: &[(u64, u64, u64)]) -> Vec<Call> {
    reads
        .iter()
        .map(|&(at, len, off)| ("pread64(pages)", nr::PREAD64, [fd, at, len, off, 0, 0]))
        .collect()
}

/// Check the results `res` of [`pread_calls`]: a short read (a file that
/// shrank meanwhile) is finished call by call.
pub(super) fn finish_reads(
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
