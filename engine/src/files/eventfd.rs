//! eventfd: the counter and semaphore mode of an eventfd file
//! (`eventfd_file_entry` in `files.img`). The dump reads both from fdinfo
//! (the mode is shown since Linux 6.6; before, a read on a copy of the fd
//! tells it, and the counter is put back); the restore writes the counter
//! into a new eventfd.

use std::os::fd::OwnedFd;

use nix::sys::eventfd::{EfdFlags, EventFd};
use stasis_proto::images::file_entry::Kind;
use stasis_proto::images::{EventfdFileEntry, FownEntry};

use crate::error::Result;
use crate::files::{FdCtx, FileKind, OpenCtx, Table};

/// eventfd files.
#[derive(Debug)]
pub struct Eventfd;

/// EFD_SEMAPHORE, kept in the entry's flags as CRIU does (it is no O_ flag).
const SEMAPHORE: u32 = 1;

/// Whether the eventfd is in semaphore mode, on kernels whose fdinfo does
/// not say: on a copy of the fd (the tree is frozen), make the counter at
/// least 2, read once (a semaphore gives 1, else the whole counter) and
/// put the counter back as it was.
fn probe_semaphore(cx: &FdCtx<'_>, counter: u64) -> Result<bool> {
    let fd = cx
        .dup()
        .map_err(cx.err("pidfd_getfd (probing semaphore mode)"))?;
    let add = 2u64.saturating_sub(counter);
    let write =
        |v: u64| nix::unistd::write(&fd, &v.to_ne_bytes()).map_err(cx.err("eventfd write (probe)"));
    if add > 0 {
        write(add)?;
    }
    let mut buf = [0u8; 8];
    nix::unistd::read(&fd, &mut buf).map_err(cx.err("eventfd read (probe)"))?;
    let got = u64::from_ne_bytes(buf);
    // What is left is counter + add - got; make it counter again.
    let left = (counter + add).saturating_sub(got);
    if left < counter {
        write(counter - left)?;
    } else if left > counter {
        // Only a semaphore leaves more (counter + add - 1): take the rest.
        for _ in counter..left {
            nix::unistd::read(&fd, &mut buf).map_err(cx.err("eventfd read (probe)"))?;
        }
    }
    Ok(got == 1)
}

impl FileKind for Eventfd {
    type Entry = EventfdFileEntry;
    const NAME: &'static str = "eventfd";
    const ANON_LINK: Option<&'static str> = Some("[eventfd]");

    fn set_id(e: &mut EventfdFileEntry, id: u32) {
        e.id = id;
    }

    fn dump(cx: &FdCtx<'_>, _table: &mut Table) -> Result<Kind> {
        let counter = u64::from_str_radix(cx.field("eventfd-count")?, 16)
            .map_err(|_| cx.format_err("eventfd-count"))?;
        let mut flags = cx.flags();
        let semaphore = match cx.fd.field("eventfd-semaphore") {
            Some(v) => v == "1",
            None => probe_semaphore(cx, counter)?,
        };
        if semaphore {
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
