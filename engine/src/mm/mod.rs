//! A task's address space: its VMAs (`mm-ID.img`), the pages in them
//! (`pagemap-ID.img` + `pages-N.img`) and the special kernel areas (vdso,
//! vvar, vvar_vclock). Dump reads `/proc/PID/maps`, `smaps` VmFlags and
//! `pagemap`, and copies present pages in bounded chunks (gathered
//! `process_vm_readv`, one thread per CPU for large dumps). Restore maps
//! every VMA from inside the task (batched remote mmap), fills large runs
//! of anonymous memory with UFFDIO_COPY from the image and the rest with
//! the task's own `pread64`, and moves the vdso areas to their dumped
//! addresses.
//!
//! One file per concern: `vma` (the VMAs /proc shows), `pages` (the
//! pagemap walk and the pages images), `shared` (shared anonymous memory),
//! `batch`
//! (batched remote mapping), `restore` (rebuilding the address space) and
//! `fill` (putting the pages back). This file holds what they share and
//! re-exports what the rest of the engine uses (the restore trampoline and
//! its data area are the remote-call layer's: [`crate::task::trampoline`]).

use stasis_kernel as kernel;
use stasis_proto::images::VmaEntry;

mod batch;
mod fill;
mod pages;
mod restore;
mod shared;
mod vma;

pub(crate) use crate::task::trampoline::{
    LOWEST_FREE, TRAMPOLINE_HOLE, Trampoline, layout, open_call, put,
};
pub(crate) use pages::{PageStats, dump_memory};
pub(crate) use restore::restore;
pub(crate) use shared::{SharedAnon, SharedPages};
pub(crate) use vma::{RawVmas, dump_vmas};

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
/// Bytes a copying thread gets at least: below that a dump or restore
/// copies pages on one thread.
const PART_MIN: u64 = 16 << 20;

/// (address, length, offset in the pages image) of pages to copy.
type Item = (u64, u64, u64);

/// How many threads copy `bytes`: one per CPU the engine has, at most 4,
/// each with at least [`PART_MIN`] bytes.
fn copy_threads(bytes: u64) -> usize {
    let cpus = kernel::sched::engine_cpus().map_or(1, |c| c.len());
    cpus.min(4)
        .min(usize::try_from(bytes / PART_MIN).unwrap_or(1))
        .max(1)
}

fn is_special_name(name: &str) -> bool {
    matches!(name, "[vdso]" | "[vvar]" | "[vvar_vclock]" | "[vsyscall]")
}

fn is_special(v: &VmaEntry) -> bool {
    v.status & (status::VDSO | status::VVAR | status::VSYSCALL) != 0
}
