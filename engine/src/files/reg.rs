//! Files opened by path — regular files, directories, device nodes, files
//! of /proc and other pseudo filesystems: a `reg_file_entry` in
//! `files.img` (path, flags, offset, size and mode as seen, the mount it was
//! opened through). A file deleted while open is a ghost (see [`ghost`]);
//! a POSIX message queue is one of these too (see
//! [`crate::ipc::mqueue`]). The restore opens the path again and checks
//! that the file did not shrink under its offset.
//!
//! [`ghost`]: super::ghost

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

use nix::unistd::Pid;
use stasis_proto::images::file_entry::Kind;
use stasis_proto::images::{FownEntry, RegFileEntry};

use super::{FdCtx, FileKind, InTask, OpenCtx, Table, open_err};
use crate::error::{EngineError as Error, Result};
use crate::images::img;

/// Regular files, directories and device nodes opened by path.
#[derive(Debug)]
pub struct Reg;

impl FileKind for Reg {
    type Entry = RegFileEntry;
    const NAME: &'static str = "regular file";

    /// A file under /proc/PID/ of a task of the tree names a process made
    /// by the restore: its task opens it once the tree exists.
    fn in_task(e: &RegFileEntry, tree: &std::collections::HashSet<u32>) -> bool {
        e.name
            .strip_prefix("/proc/")
            .and_then(|p| p.split('/').next())
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| tree.contains(&n))
    }

    fn open_in_task(e: &RegFileEntry, cx: &InTask<'_>, target: i32, cloexec: bool) -> Result<()> {
        let strip = libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL | libc::O_CLOEXEC;
        let flags = e.flags.cast_signed() & !strip;
        let fd = cx.open_as(
            "openat(/proc file of the tree)",
            &e.name,
            flags,
            target,
            cloexec,
        )?;
        if e.pos != 0 {
            let lseek = stasis_arch::native::nr::LSEEK;
            cx.r.call("lseek", lseek, [fd, e.pos, 0, 0, 0, 0])?;
        }
        Ok(())
    }

    fn set_id(e: &mut RegFileEntry, id: u32) {
        e.id = id;
    }

    fn dump(cx: &FdCtx<'_>, _table: &mut Table) -> Result<Kind> {
        Ok(Kind::Reg(RegFileEntry {
            id: 0,
            flags: cx.fd.flags & !(libc::O_CLOEXEC.cast_unsigned()),
            pos: cx.fd.pos,
            fown: FownEntry::default(),
            name: cx.fd.target.clone(),
            mnt_id: Some(cx.fd.mnt_id),
            size: Some(cx.meta.size()),
            mode: Some(cx.meta.mode()),
            stasis_detached_at: cx.fd.detached_at.clone(),
            ..RegFileEntry::default()
        }))
    }

    fn open(r: &RegFileEntry, cx: &mut OpenCtx<'_>) -> Result<OwnedFd> {
        let (pid, fd) = (cx.pid, cx.fd);
        // A POSIX message queue is a file of the mqueue filesystem.
        if let Some(q) = cx.table.mqueues.of_file(r.id) {
            return crate::ipc::mqueue::open(q, r.flags, &mut cx.mq_made, pid, fd);
        }
        match cx.table.ghosts.path_of(r.id) {
            None => open(pid, fd, r),
            Some(None) => {
                Err(img::REMAP_FPATH.bad(0, format!("file {}: its ghost file was not made", r.id)))
            }
            Some(Some(name)) => open(
                pid,
                fd,
                &RegFileEntry {
                    name: name.to_owned(),
                    size: None,
                    ..r.clone()
                },
            ),
        }
    }
}

/// The mount point a file whose mount was detached is found through, and
/// its path below it.
fn detached(r: &RegFileEntry) -> Option<(&str, &str)> {
    let point = r.stasis_detached_at.as_deref()?;
    let rest = r.name.strip_prefix(point)?;
    (rest.is_empty() || rest.starts_with('/') || point == "/")
        .then(|| (point, rest.trim_start_matches('/')))
}

/// Open `rest` below mount point `point` through a detached clone of its
/// mount, with open(2) `flags`: as on a mount gone from every namespace.
/// A failure leaves the caller to open the same file by its path.
fn open_detached(point: &str, rest: &str, flags: i32) -> std::io::Result<std::fs::File> {
    use rustix::mount::OpenTreeFlags;
    let flags_clone = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
    // A mount with mounts locked under it (in a user namespace's copy) is
    // cloned with them.
    let clone = rustix::mount::open_tree(rustix::fs::CWD, point, flags_clone).or_else(|_| {
        rustix::mount::open_tree(
            rustix::fs::CWD,
            point,
            flags_clone | OpenTreeFlags::AT_RECURSIVE,
        )
    })?;
    let path = if rest.is_empty() { "." } else { rest };
    let oflags = rustix::fs::OFlags::from_bits_retain(
        u32::try_from(flags | libc::O_NOCTTY | libc::O_CLOEXEC).unwrap_or(0),
    );
    let fd = rustix::fs::openat(&clone, path, oflags, rustix::fs::Mode::empty())?;
    Ok(std::fs::File::from(fd))
}

/// Open `r` by its path for fd `fd` of `pid`, at its offset.
pub(crate) fn open(pid: Pid, fd: i32, r: &RegFileEntry) -> Result<OwnedFd> {
    let strip = libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL | libc::O_CLOEXEC | libc::O_NOCTTY;
    let flags = r.flags.cast_signed() & !strip;
    let acc = flags & libc::O_ACCMODE;
    let by_path = || {
        OpenOptions::new()
            .read(acc == libc::O_RDONLY || acc == libc::O_RDWR)
            .write(acc == libc::O_WRONLY || acc == libc::O_RDWR)
            .custom_flags(flags & !libc::O_ACCMODE | libc::O_NOCTTY)
            .open(&r.name)
    };
    // Where no clone of the mount can be had, the same file by its path.
    let file = detached(r)
        .and_then(|(point, rest)| open_detached(point, rest, flags).ok())
        .map_or_else(by_path, Ok)
        .map_err(|e| open_err(pid, fd, &r.name, e))?;
    if flags & libc::O_PATH == 0 {
        let meta = file.metadata().map_err(|e| open_err(pid, fd, &r.name, e))?;
        if meta.is_file() {
            if let Some(size) = r.size
                && meta.size() < size
                && r.pos > meta.size()
            {
                return Err(Error::FileChanged {
                    pid,
                    fd,
                    path: r.name.clone(),
                    what: format!("it was {size} bytes and is {} now", meta.size()),
                });
            }
            let mut f = &file;
            f.seek(SeekFrom::Start(r.pos))
                .map_err(|e| open_err(pid, fd, &r.name, e))?;
        }
    }
    Ok(OwnedFd::from(file))
}
