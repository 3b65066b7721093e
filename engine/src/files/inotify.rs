//! inotify: an inotify instance and its watches (`inotify_file_entry` in
//! `files.img`). fdinfo gives each watch's descriptor, mask and a file handle
//! of the watched inode; the dump turns the handle into a path
//! (open_by_handle_at on the inode's mount) and the restore watches that path
//! again, under the same watch descriptor.

use stasis_kernel as kernel;
use std::collections::HashMap;
use std::fs;
use std::os::fd::{AsFd, OwnedFd};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify as Instance};
use nix::unistd::Pid;
use stasis_proto::images::file_entry::Kind;
use stasis_proto::images::{FhEntry, FownEntry, InotifyFileEntry, InotifyWdEntry};

use crate::error::{EngineError as Error, Result};
use crate::files::{FdCtx, FileKind, OpenCtx, Table};
use crate::images::img;
use crate::proc;

/// inotify files.
#[derive(Debug)]
pub struct Inotify;

/// Mask bits inotify_add_watch accepts: events and watch options.
const WATCH_BITS: u32 =
    0xfff | libc::IN_ONLYDIR | libc::IN_DONT_FOLLOW | libc::IN_EXCL_UNLINK | libc::IN_ONESHOT;

/// The mount point of the device `sdev` (kernel encoding, as fdinfo prints
/// it) in the mount table of `pid`.
fn mount_of(pid: Pid, sdev: u64) -> Option<String> {
    let (major, minor) = (sdev >> 20, sdev & 0xf_ffff);
    let want = format!("{major}:{minor}");
    let table = fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok()?;
    table.lines().find_map(|l| {
        let mut f = l.split(' ');
        (f.nth(2)? == want).then_some(())?;
        f.nth(1).map(str::to_owned)
    })
}

/// The path of a watched inode (`kind`: "inotify", "fanotify"), from its
/// file handle.
fn path_of(cx: &FdCtx<'_>, kind: &str, sdev: u64, ty: i32, handle: &[u8]) -> Result<String> {
    let fail = |why: String| Error::Unsupported {
        pid: cx.pid,
        what: format!("fd {} ({kind}): a watch whose inode {why}", cx.fd.fd),
    };
    let mnt = mount_of(cx.pid, sdev)
        .ok_or_else(|| fail(format!("is on device {sdev:#x}, which no mount shows")))?;
    let mfd = fs::File::open(&mnt)
        .map_err(|e| fail(format!("is on {mnt}, which cannot be opened: {e}")))?;
    let fd = kernel::fd::open_by_handle(mfd.as_fd(), ty, handle, libc::O_PATH)
        .map_err(|e| fail(format!("on {mnt} cannot be opened by its handle: {e}")))?;
    let link = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
    let path = fs::read_link(&link)
        .map_err(|e| fail(format!("has no path: {e}")))?
        .to_string_lossy()
        .into_owned();
    if path.ends_with(" (deleted)") || !path.starts_with('/') {
        return Err(fail(format!("was deleted ({path})")));
    }
    Ok(path)
}

fn hex_bytes(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The `key:value` fields of an fdinfo line of an inotify or fanotify fd
/// (`kind`), numbers in hex; a missing or bad one is an error naming the fd.
pub(crate) struct Fields<'c, 'l> {
    cx: &'c FdCtx<'c>,
    kind: &'static str,
    kv: HashMap<&'l str, &'l str>,
}

impl<'c, 'l> Fields<'c, 'l> {
    pub(crate) fn new(cx: &'c FdCtx<'c>, kind: &'static str, line: &'l str) -> Self {
        Self {
            cx,
            kind,
            kv: proc::pairs(line).into_iter().collect(),
        }
    }

    pub(crate) fn has(&self, key: &str) -> bool {
        self.kv.contains_key(key)
    }

    pub(crate) fn hex(&self, key: &str) -> Result<u64> {
        self.kv
            .get(key)
            .and_then(|v| u64::from_str_radix(v, 16).ok())
            .ok_or_else(|| self.cx.format_err(&format!("{} {key}", self.kind)))
    }

    pub(crate) fn small(&self, key: &str) -> Result<u32> {
        u32::try_from(self.hex(key)?)
            .map_err(|_| self.cx.format_err(&format!("{} {key}", self.kind)))
    }

    /// The watched inode's device (`sdev`) and file handle, with the path
    /// the handle opens to.
    pub(crate) fn watched(&self) -> Result<(u32, FhEntry)> {
        let sdev = self.hex("sdev")?;
        let ty = self.small("fhandle-type")?;
        let handle = self
            .kv
            .get("f_handle")
            .and_then(|h| hex_bytes(h))
            .ok_or_else(|| self.cx.format_err(&format!("{} f_handle", self.kind)))?;
        let path = path_of(self.cx, self.kind, sdev, ty.cast_signed(), &handle)?;
        let s_dev =
            u32::try_from(sdev).map_err(|_| self.cx.format_err(&format!("{} sdev", self.kind)))?;
        Ok((
            s_dev,
            FhEntry {
                bytes: u32::try_from(handle.len()).unwrap_or(0),
                r#type: ty,
                handle: handle_words(&handle),
                path: Some(path),
                mnt_id: None,
            },
        ))
    }
}

fn wd_entry(cx: &FdCtx<'_>, line: &str) -> Result<InotifyWdEntry> {
    let f = Fields::new(cx, "inotify", line);
    let (s_dev, f_handle) = f.watched()?;
    Ok(InotifyWdEntry {
        id: 0,
        i_ino: f.hex("ino")?,
        mask: f.small("mask")?,
        ignored_mask: f.small("ignored_mask")?,
        s_dev,
        wd: f.small("wd")?,
        f_handle,
    })
}

/// A file handle as CRIU keeps it: native-endian words, zero-padded.
fn handle_words(handle: &[u8]) -> Vec<u64> {
    handle
        .chunks(8)
        .map(|c| {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            u64::from_ne_bytes(w)
        })
        .collect()
}

impl FileKind for Inotify {
    type Entry = InotifyFileEntry;
    const NAME: &'static str = "inotify";
    const ANON_LINK: Option<&'static str> = Some("inotify");

    fn set_id(e: &mut InotifyFileEntry, id: u32) {
        e.id = id;
        for w in &mut e.wd {
            w.id = id;
        }
    }

    fn dump(cx: &FdCtx<'_>, _table: &mut Table) -> Result<Kind> {
        let wd = cx
            .fd
            .extra
            .iter()
            .filter(|l| l.starts_with("inotify "))
            .map(|l| wd_entry(cx, l))
            .collect::<Result<Vec<_>>>()?;
        Ok(Kind::Ify(InotifyFileEntry {
            id: 0,
            flags: cx.flags(),
            fown: FownEntry::default(),
            wd,
        }))
    }

    fn open(e: &InotifyFileEntry, cx: &mut OpenCtx<'_>) -> Result<OwnedFd> {
        let ino = Instance::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(cx.err("inotify_init"))?;
        let mut wds: Vec<&InotifyWdEntry> = e.wd.iter().collect();
        wds.sort_by_key(|w| w.wd);
        for w in wds {
            add_watch(&ino, w, cx)?;
        }
        // Watches added only to move the descriptor counter on were removed
        // again; their IN_IGNORED events are not the task's.
        while ino.read_events().is_ok_and(|ev| !ev.is_empty()) {}
        let fl = OFlag::from_bits_truncate(e.flags.cast_signed() & libc::O_NONBLOCK);
        fcntl(ino.as_fd(), FcntlArg::F_SETFL(fl)).map_err(cx.err("inotify flags"))?;
        Ok(OwnedFd::from(ino))
    }
}

/// Watch `w`'s path under its old descriptor: descriptors are handed out in
/// increasing order, so watches made and removed move the counter up to it.
fn add_watch(ino: &Instance, w: &InotifyWdEntry, cx: &OpenCtx<'_>) -> Result<()> {
    let path = w.f_handle.path.as_deref().ok_or_else(|| {
        img::FILES.bad(
            0,
            format!(
                "task {} fd {}: inotify watch {} has no path",
                cx.pid, cx.fd, w.wd
            ),
        )
    })?;
    let mask = AddWatchFlags::from_bits_retain(w.mask & WATCH_BITS);
    let what = format!("inotify watch {} on {path}", w.wd);
    for _ in 0..=w.wd {
        let got = ino.add_watch(path, mask).map_err(cx.err(&what))?;
        let n = u32::try_from(got.as_raw()).unwrap_or(u32::MAX);
        if n == w.wd {
            return Ok(());
        }
        if n > w.wd {
            break;
        }
        ino.rm_watch(got).map_err(cx.err(&what))?;
    }
    Err(Error::Restore {
        pid: cx.pid,
        what: format!("fd {} ({what}): the descriptor number is taken", cx.fd),
        errno: nix::errno::Errno::EEXIST,
    })
}
