//! Namespace files (`ns_file_entry` in `files.img`): an fd on a namespace,
//! as `open("/proc/PID/ns/net")` or `ip netns` give; its /proc link reads
//! `KIND:[INODE]`. A namespace cannot be opened by number, only through a
//! process in it: the dump finds the task of the tree whose namespace it is
//! (the holder first), and the task holding the fd opens that task's
//! /proc/PID/ns file again once every task exists. A namespace no task of
//! the tree is in (one only held by fd, or an ancestor's the tree left) is
//! refused by name.

use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;

use nix::unistd::Pid;
use stasis_proto::images::NsFileEntry;
use stasis_proto::images::file_entry::Kind;

use crate::error::{EngineError as Error, Result};
use crate::files::{FdCtx, FileKind, InTask, OpenCtx, Table};
use crate::images::img;

/// Namespace files.
#[derive(Debug)]
pub struct NsFile;

/// The files of /proc/PID/ns: the kind its link names, the file, and the
/// namespace's CLONE_NEW* flag.
const FILES: &[(&str, &str, libc::c_int)] = &[
    ("net", "net", libc::CLONE_NEWNET),
    ("uts", "uts", libc::CLONE_NEWUTS),
    ("ipc", "ipc", libc::CLONE_NEWIPC),
    ("mnt", "mnt", libc::CLONE_NEWNS),
    ("pid", "pid", libc::CLONE_NEWPID),
    ("pid", "pid_for_children", libc::CLONE_NEWPID),
    ("user", "user", libc::CLONE_NEWUSER),
    ("cgroup", "cgroup", libc::CLONE_NEWCGROUP),
    ("time", "time", libc::CLONE_NEWTIME),
    ("time", "time_for_children", libc::CLONE_NEWTIME),
];

/// The kind a namespace file's link names (`net` of `net:[4026531840]`).
fn kind_of(link: &str) -> Option<&str> {
    let (kind, rest) = link.split_once(":[")?;
    let ino = rest.strip_suffix(']')?;
    (ino.bytes().all(|b| b.is_ascii_digit()) && FILES.iter().any(|f| f.0 == kind)).then_some(kind)
}

/// The inode of /proc/PID/ns/FILE.
fn ns_ino(pid: Pid, file: &str) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/{file}"))
        .ok()
        .map(|m| m.ino())
}

impl FileKind for NsFile {
    type Entry = NsFileEntry;
    const NAME: &'static str = "namespace file";

    fn by_link(link: &str) -> bool {
        kind_of(link).is_some()
    }

    fn set_id(e: &mut NsFileEntry, id: u32) {
        e.id = id;
    }

    fn dump(cx: &FdCtx<'_>, table: &mut Table) -> Result<Kind> {
        let kind = kind_of(&cx.fd.target).ok_or_else(|| cx.format_err("namespace kind"))?;
        let ino = cx.meta.ino();
        // The holder's own namespaces first, then the other tasks'.
        let holder = std::iter::once(cx.pid).chain(table.tree.iter().copied());
        let found = holder
            .flat_map(|pid| {
                FILES
                    .iter()
                    .filter(move |f| f.0 == kind)
                    .map(move |f| (pid, f))
            })
            .find(|&(pid, f)| ns_ino(pid, f.1) == Some(ino));
        let Some((pid, &(_, file, flag))) = found else {
            return Err(Error::Unsupported {
                pid: cx.pid,
                what: format!(
                    "fd {} ({}), a {kind} namespace no task of the tree is in; it cannot be \
                     opened again",
                    cx.fd.fd, cx.fd.target
                ),
            });
        };
        Ok(Kind::Nsf(NsFileEntry {
            id: 0,
            ns_id: 0,
            ns_cflag: flag.cast_unsigned(),
            flags: cx.flags(),
            stasis_pid: Some(pid.as_raw().cast_unsigned()),
            stasis_ns_file: Some(file.to_owned()),
        }))
    }

    fn number_pids(e: &mut NsFileEntry, image: &dyn Fn(i32) -> i32) {
        e.stasis_pid = e.stasis_pid.map(|p| image(p.cast_signed()).cast_unsigned());
    }

    /// Its namespace's task must exist: opened by the holder.
    fn in_task(e: &NsFileEntry, tree: &std::collections::HashSet<u32>) -> bool {
        e.stasis_pid.is_some_and(|p| tree.contains(&p))
    }

    fn open_in_task(e: &NsFileEntry, cx: &InTask<'_>, target: i32, cloexec: bool) -> Result<()> {
        let (pid, file) = where_(e)?;
        let path = format!("/proc/{pid}/ns/{file}");
        cx.open_as(
            "openat(a namespace file)",
            &path,
            libc::O_RDONLY,
            target,
            cloexec,
        )
        .map(drop)
    }

    fn open(e: &NsFileEntry, cx: &mut OpenCtx<'_>) -> Result<OwnedFd> {
        let (pid, file) = where_(e)?;
        Err(img::FILES.bad(
            0,
            format!(
                "task {} fd {}: namespace file {} names /proc/{pid}/ns/{file}, and no task of \
                 the images has PID {pid}",
                cx.pid, cx.fd, e.id
            ),
        ))
    }
}

/// The task and the /proc/PID/ns file namespace file `e` is opened by.
fn where_(e: &NsFileEntry) -> Result<(u32, &str)> {
    match (e.stasis_pid, e.stasis_ns_file.as_deref()) {
        (Some(pid), Some(file)) if FILES.iter().any(|f| f.1 == file) => Ok((pid, file)),
        _ => Err(img::FILES.bad(
            0,
            format!(
                "namespace file {}: no task of the tree is named for it (a dump by another \
                 engine?), so it cannot be opened again",
                e.id
            ),
        )),
    }
}
