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

/// Open `r` by its path for fd `fd` of `pid`, at its offset.
pub(crate) fn open(pid: Pid, fd: i32, r: &RegFileEntry) -> Result<OwnedFd> {
    let strip = libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL | libc::O_CLOEXEC | libc::O_NOCTTY;
    let flags = r.flags.cast_signed() & !strip;
    let acc = flags & libc::O_ACCMODE;
    let file = OpenOptions::new()
        .read(acc == libc::O_RDONLY || acc == libc::O_RDWR)
        .write(acc == libc::O_WRONLY || acc == libc::O_RDWR)
        .custom_flags(flags & !libc::O_ACCMODE | libc::O_NOCTTY)
        .open(&r.name)
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
