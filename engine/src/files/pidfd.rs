//! pidfds (`pidfd_entry` in `files.img`): the process a pidfd refers to, by
//! its PID. A pidfd can only be made once its process exists, so each task
//! opens its own from inside (pidfd_open), after the whole tree is back.

use std::os::fd::OwnedFd;

use stasis_arch::native::nr;
use stasis_proto::images::file_entry::Kind;
use stasis_proto::images::{FownEntry, PidfdEntry};

use crate::error::{EngineError as Error, Result};
use crate::files::{FdCtx, FileKind, InTask, OpenCtx, Table};
use crate::images::img;
use crate::task::remote::Remote;

/// pidfd files.
#[derive(Debug)]
pub struct Pidfd;

impl FileKind for Pidfd {
    type Entry = PidfdEntry;
    const NAME: &'static str = "pidfd";
    const ANON_LINK: Option<&'static str> = Some("[pidfd]");

    /// Its process must exist: opened by the task with pidfd_open.
    fn in_task(_e: &PidfdEntry, _tree: &std::collections::HashSet<u32>) -> bool {
        true
    }

    fn open_in_task(e: &PidfdEntry, cx: &InTask<'_>, target: i32, cloexec: bool) -> Result<()> {
        open_pidfd(cx.r, e, target, cloexec)
    }

    fn set_id(e: &mut PidfdEntry, id: u32) {
        e.id = id;
    }

    fn number_pids(e: &mut PidfdEntry, image: &dyn Fn(i32) -> i32) {
        e.nspid = image(e.nspid);
    }

    fn dump(cx: &FdCtx<'_>, table: &mut Table) -> Result<Kind> {
        let pid: i32 = cx
            .field("Pid")?
            .parse()
            .map_err(|_| cx.format_err("pidfd Pid"))?;
        if pid <= 0 {
            return Err(Error::Unsupported {
                pid: cx.pid,
                what: format!("fd {} (a pidfd of a process that has exited)", cx.fd.fd),
            });
        }
        if !table.in_tree(nix::unistd::Pid::from_raw(pid)) {
            return Err(Error::Unsupported {
                pid: cx.pid,
                what: format!(
                    "fd {} (a pidfd of process {pid}, which is outside the dumped tree)",
                    cx.fd.fd
                ),
            });
        }
        Ok(Kind::Pidfd(PidfdEntry {
            id: 0,
            ino: u32::try_from(std::os::unix::fs::MetadataExt::ino(cx.meta)).unwrap_or(0),
            flags: cx.flags(),
            nspid: pid,
            fown: FownEntry::default(),
        }))
    }

    fn open(e: &PidfdEntry, cx: &mut OpenCtx<'_>) -> Result<OwnedFd> {
        Err(img::FILES.bad(
            0,
            format!(
                "task {} fd {}: pidfd {} is opened by the task itself",
                cx.pid, cx.fd, e.id
            ),
        ))
    }
}

/// Open pidfd `e` inside the task under `r`, as fd `target`.
fn open_pidfd(r: &Remote, e: &PidfdEntry, target: i32, cloexec: bool) -> Result<()> {
    let flags = e.flags.cast_signed() & libc::O_NONBLOCK;
    let fd = r.call(
        "pidfd_open",
        nr::PIDFD_OPEN,
        [
            u64::from(e.nspid.cast_unsigned()),
            flags.cast_unsigned().into(),
            0,
            0,
            0,
            0,
        ],
    )?;
    let target = u64::from(target.cast_unsigned());
    if fd == target && !cloexec {
        // pidfd_open gives a close-on-exec fd; this one was not.
        r.call(
            "fcntl(F_SETFD)",
            nr::FCNTL,
            [fd, libc::F_SETFD.cast_unsigned().into(), 0, 0, 0, 0],
        )?;
    }
    r.move_fd(fd, target, cloexec)
}
