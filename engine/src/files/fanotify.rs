//! fanotify: a notification group and its marks (`fanotify_file_entry` in
//! `files.img`). fdinfo gives the group's init and event flags and each
//! mark: an inode mark with the inode's file handle (turned into a path as
//! for inotify), or a mount mark with the mount's id (turned into its mount
//! point). The restore makes a group with the same flags and marks the
//! same objects with the same masks and ignore masks. Events queued in the
//! group are not kept; filesystem-wide marks are refused.

use std::os::fd::OwnedFd;

use nix::sys::fanotify::{EventFFlags, Fanotify, InitFlags, MarkFlags, MaskFlags};
use stasis_proto::images::file_entry::Kind;
use stasis_proto::images::{
    FanotifyFileEntry, FanotifyInodeMarkEntry, FanotifyMarkEntry, FanotifyMountMarkEntry,
    FownEntry, MarkType,
};

use crate::error::{EngineError as Error, Result};
use crate::files::inotify::Fields;
use crate::files::{FdCtx, FileKind, OpenCtx, Table};
use crate::images::img;

/// fanotify groups.
#[derive(Debug)]
pub struct FanotifyGroup;

/// fdinfo's `mflags` bit for an ignore mask that survives modification.
const IGNORED_SURV_MODIFY: u32 = 0x40;

/// The mount point of mount `mnt_id` in the mount table of `cx`'s task.
fn mount_point(cx: &FdCtx<'_>, mnt_id: u32) -> Option<String> {
    let table = std::fs::read_to_string(format!("/proc/{}/mountinfo", cx.pid)).ok()?;
    table.lines().find_map(|l| {
        let mut f = l.split(' ');
        (f.next()?.parse::<u32>().ok()? == mnt_id).then_some(())?;
        f.nth(3).map(str::to_owned)
    })
}

fn mark(cx: &FdCtx<'_>, line: &str) -> Result<FanotifyMarkEntry> {
    let f = Fields::new(cx, "fanotify", line);
    let mut e = FanotifyMarkEntry {
        id: 0,
        r#type: MarkType::Inode as i32,
        mflags: f.small("mflags")?,
        mask: f.small("mask")?,
        ignored_mask: f.small("ignored_mask")?,
        s_dev: 0,
        ie: None,
        me: None,
    };
    if f.has("ino") {
        let (s_dev, f_handle) = f.watched()?;
        e.s_dev = s_dev;
        e.ie = Some(FanotifyInodeMarkEntry {
            i_ino: f.hex("ino")?,
            f_handle,
        });
    } else if f.has("mnt_id") {
        let mnt_id = f.small("mnt_id")?;
        let path = mount_point(cx, mnt_id).ok_or_else(|| Error::Unsupported {
            pid: cx.pid,
            what: format!(
                "fd {} (fanotify): a mark on mount {mnt_id}, which its mount table does not show",
                cx.fd.fd
            ),
        })?;
        e.r#type = MarkType::Mount as i32;
        e.me = Some(FanotifyMountMarkEntry {
            mnt_id,
            path: Some(path),
        });
    } else {
        return Err(Error::Unsupported {
            pid: cx.pid,
            what: format!(
                "fd {} (fanotify): a filesystem-wide mark (FAN_MARK_FILESYSTEM),",
                cx.fd.fd
            ),
        });
    }
    Ok(e)
}

impl FileKind for FanotifyGroup {
    type Entry = FanotifyFileEntry;
    const NAME: &'static str = "fanotify";
    const ANON_LINK: Option<&'static str> = Some("[fanotify]");

    fn set_id(e: &mut FanotifyFileEntry, id: u32) {
        e.id = id;
        for m in &mut e.mark {
            m.id = id;
        }
    }

    fn dump(cx: &FdCtx<'_>, _table: &mut Table) -> Result<Kind> {
        let head = cx
            .fd
            .extra
            .iter()
            .find(|l| l.starts_with("fanotify flags:"))
            .ok_or_else(|| cx.format_err("fanotify flags"))?;
        let head = Fields::new(cx, "fanotify", head);
        let marks = cx
            .fd
            .extra
            .iter()
            .filter(|l| l.starts_with("fanotify ") && !l.starts_with("fanotify flags:"))
            .map(|l| mark(cx, l))
            .collect::<Result<Vec<_>>>()?;
        Ok(Kind::Ffy(FanotifyFileEntry {
            id: 0,
            flags: cx.flags(),
            fown: FownEntry::default(),
            faflags: head.small("flags")?,
            evflags: head.small("event-flags")?,
            mark: marks,
        }))
    }

    fn open(e: &FanotifyFileEntry, cx: &mut OpenCtx<'_>) -> Result<OwnedFd> {
        let mut init = InitFlags::from_bits_retain(e.faflags) | InitFlags::FAN_CLOEXEC;
        if e.flags & libc::O_NONBLOCK.cast_unsigned() != 0 {
            init |= InitFlags::FAN_NONBLOCK;
        }
        let group = Fanotify::init(init, EventFFlags::from_bits_retain(e.evflags))
            .map_err(cx.err("fanotify_init"))?;
        for m in &e.mark {
            let (path, base) = match (&m.ie, &m.me) {
                (Some(i), _) => (i.f_handle.path.as_deref(), MarkFlags::FAN_MARK_DONT_FOLLOW),
                (None, Some(mm)) => (mm.path.as_deref(), MarkFlags::FAN_MARK_MOUNT),
                (None, None) => (None, MarkFlags::empty()),
            };
            let path = path.ok_or_else(|| {
                img::FILES.bad(
                    0,
                    format!(
                        "task {} fd {}: fanotify mark {} has no path",
                        cx.pid, cx.fd, m.id
                    ),
                )
            })?;
            let what = format!("fanotify mark on {path}");
            let add = MarkFlags::FAN_MARK_ADD | base;
            if m.mask != 0 {
                group
                    .mark(
                        add,
                        MaskFlags::from_bits_retain(u64::from(m.mask)),
                        nix::fcntl::AT_FDCWD,
                        Some(path),
                    )
                    .map_err(cx.err(&what))?;
            }
            if m.ignored_mask != 0 {
                let mut f = add | MarkFlags::FAN_MARK_IGNORED_MASK;
                if m.mflags & IGNORED_SURV_MODIFY != 0 {
                    f |= MarkFlags::FAN_MARK_IGNORED_SURV_MODIFY;
                }
                group
                    .mark(
                        f,
                        MaskFlags::from_bits_retain(u64::from(m.ignored_mask)),
                        nix::fcntl::AT_FDCWD,
                        Some(path),
                    )
                    .map_err(cx.err(&format!("{what} (ignore mask)")))?;
            }
        }
        Ok(OwnedFd::from(group))
    }
}
