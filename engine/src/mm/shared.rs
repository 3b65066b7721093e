//! Shared anonymous memory (MAP_SHARED|MAP_ANONYMOUS, `/dev/zero`, and
//! the shmem objects behind them) across the tasks of a tree. Its pages go
//! in the pages images of the first task that maps each page, read from
//! the object itself (`/proc/PID/map_files`), since one task's page table
//! lacks what the others wrote; on restore the first task makes the object
//! and the others map it through that task's `map_files`.

use nix::unistd::Pid;
use stasis_kernel as kernel;
use stasis_proto::images::VmaEntry;
use std::fs::File;

use crate::error::{EngineError as Error, Result};

/// The page-aligned stretches `[from, to)` of file offsets of `f` that hold
/// data: for shmem, pages in memory and pages swapped out alike, whether or
/// not any task maps them.
pub fn data_extents(f: &File, from: u64, to: u64) -> std::io::Result<Vec<(u64, u64)>> {
    use std::os::fd::AsFd;
    Ok(kernel::fd::data_extents(
        f.as_fd(),
        from,
        to,
        kernel::mm::page_size(),
    )?)
}

/// Pages of shared anonymous memory objects (by inode) already in the
/// images of this dump, as object offset ranges: each page goes in once,
/// with the first task that maps it.
#[derive(Debug, Default)]
pub struct SharedPages(std::collections::HashMap<u64, Vec<(u64, u64)>>);

impl SharedPages {
    /// The parts of `ranges` (object offsets of object `ino`) not taken
    /// yet, which are marked taken.
    pub(super) fn take(&mut self, ino: u64, ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
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

/// Shared anonymous memory objects already restored: the dump's shmid, and
/// the first task that mapped it (pid, VMA start, end and page offset).
/// Later tasks map the same object through that task's `map_files`.
pub type SharedAnon = std::collections::HashMap<u64, (Pid, u64, u64, u64)>;

/// The address ranges of shared anonymous VMA `v` of `pid` whose pages the
/// object holds and no earlier task of the dump took.
pub(super) fn object_pages(
    pid: Pid,
    v: &VmaEntry,
    shared: &mut SharedPages,
) -> Result<Vec<(u64, u64)>> {
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
