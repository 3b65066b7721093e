//! signalfd: the set of signals a signalfd file reads (`signalfd_entry` in
//! `files.img`), from fdinfo's `sigmask`. A signalfd reads the signals of
//! whichever task reads it, so one made by the engine serves the task.

use stasis_kernel as kernel;
use std::os::fd::OwnedFd;

use stasis_proto::images::file_entry::Kind;
use stasis_proto::images::{FownEntry, SignalfdEntry};

use crate::error::Result;
use crate::files::{FdCtx, FileKind, OpenCtx, Table};

/// signalfd files.
#[derive(Debug)]
pub struct Signalfd;

impl FileKind for Signalfd {
    type Entry = SignalfdEntry;
    const NAME: &'static str = "signalfd";
    const ANON_LINK: Option<&'static str> = Some("[signalfd]");

    fn set_id(e: &mut SignalfdEntry, id: u32) {
        e.id = id;
    }

    fn dump(cx: &FdCtx<'_>, _table: &mut Table) -> Result<Kind> {
        let sigmask =
            u64::from_str_radix(cx.field("sigmask")?, 16).map_err(|_| cx.format_err("sigmask"))?;
        Ok(Kind::Sgfd(SignalfdEntry {
            id: 0,
            flags: cx.flags(),
            fown: FownEntry::default(),
            sigmask,
        }))
    }

    fn open(e: &SignalfdEntry, cx: &mut OpenCtx<'_>) -> Result<OwnedFd> {
        let flags = (e.flags.cast_signed() & libc::O_NONBLOCK) | libc::O_CLOEXEC;
        kernel::signal::signalfd(e.sigmask, flags).map_err(cx.err("signalfd"))
    }
}
