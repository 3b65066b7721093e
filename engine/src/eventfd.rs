//! eventfd: the counter and semaphore mode of an eventfd file
//! (`eventfd_file_entry` in `files.img`). The dump reads both from fdinfo;
//! the restore writes the counter into a new eventfd.

use std::os::fd::OwnedFd;

use nix::sys::eventfd::{EfdFlags, EventFd};
use stasis_proto::images::file_entry::Kind;
use stasis_proto::images::{EventfdFileEntry, FdTypes, FownEntry};

use crate::error::Result;
use crate::files::{FdCtx, FileKind, OpenCtx, Table};

/// eventfd files.
#[derive(Debug)]
pub struct Eventfd;

/// EFD_SEMAPHORE, kept in the entry's flags as CRIU does (it is no O_ flag).
const SEMAPHORE: u32 = 1;

impl FileKind for Eventfd {
    const TYPE: FdTypes = FdTypes::Eventfd;
    type Entry = EventfdFileEntry;

    fn dump(cx: &FdCtx<'_>, _table: &mut Table) -> Result<Kind> {
        let counter = u64::from_str_radix(cx.field("eventfd-count")?, 16)
            .map_err(|_| cx.format_err("eventfd-count"))?;
        let mut flags = cx.flags();
        // Shown since Linux 6.6; older kernels cannot tell, as for CRIU.
        if cx.fd.field("eventfd-semaphore") == Some("1") {
            flags |= SEMAPHORE;
        }
        Ok(Kind::Efd(EventfdFileEntry {
            id: 0,
            flags,
            fown: FownEntry::default(),
            counter,
        }))
    }

    fn open(e: &EventfdFileEntry, cx: &mut OpenCtx<'_>) -> Result<OwnedFd> {
        let mut flags = EfdFlags::EFD_CLOEXEC;
        if e.flags & SEMAPHORE != 0 {
            flags |= EfdFlags::EFD_SEMAPHORE;
        }
        if e.flags & libc::O_NONBLOCK.cast_unsigned() != 0 {
            flags |= EfdFlags::EFD_NONBLOCK;
        }
        let efd = EventFd::from_value_and_flags(0, flags).map_err(cx.err("eventfd"))?;
        // A write adds to the counter; the largest one (2^64 - 2) never blocks.
        if e.counter > 0 {
            efd.write(e.counter.min(u64::MAX - 1))
                .map_err(cx.err("eventfd counter"))?;
        }
        Ok(OwnedFd::from(efd))
    }
}
