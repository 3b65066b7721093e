//! epoll: an epoll instance and the fds registered in it, with their event
//! masks and data words (`eventpoll_file_entry` in `files.img`).
//! The kernel keys a registration by file and fd number, so the restore
//! makes the epoll file in the engine and registers the targets from inside
//! the task, once its fds carry their numbers again.

use stasis_kernel as kernel;
use std::os::fd::OwnedFd;

use nix::sys::epoll::{Epoll, EpollCreateFlags};
use nix::unistd::Pid;
use stasis_arch::native::nr;
use stasis_proto::images::file_entry::Kind;
use stasis_proto::images::{EventpollFileEntry, EventpollTfdEntry, FownEntry};

use crate::error::{EngineError as Error, Result};
use crate::files::{FdCtx, FileKind, InTask, OpenCtx, Table};
use crate::proc;
use crate::task::remote::{BATCH_MAX, Remote};
use crate::task::trampoline::{self, Trampoline};

/// epoll files.
#[derive(Debug)]
pub struct Eventpoll;

fn tfd_entry(cx: &FdCtx<'_>, line: &str) -> Result<EventpollTfdEntry> {
    let kv = proc::pairs(line);
    let get = |k: &str, radix: u32| {
        kv.iter()
            .find(|(key, _)| *key == k)
            .and_then(|(_, v)| u64::from_str_radix(v, radix).ok())
            .ok_or_else(|| cx.format_err(&format!("epoll target {k}")))
    };
    let tfd = u32::try_from(get("tfd", 10)?).map_err(|_| cx.format_err("epoll tfd"))?;
    // The registration names an fd number of the task that made it; it must
    // still be the registered file, as the restore registers by number.
    let same = kernel::fd::kcmp_epoll_tfd(cx.pid, tfd.cast_signed(), cx.fd.fd, tfd.cast_signed())
        .unwrap_or(false);
    if !same {
        return Err(Error::Unsupported {
            pid: cx.pid,
            what: format!(
                "fd {} (epoll) holding a file registered under fd {tfd}, a number the task has since closed or reused,",
                cx.fd.fd
            ),
        });
    }
    Ok(EventpollTfdEntry {
        id: 0,
        tfd,
        events: u32::try_from(get("events", 16)?).map_err(|_| cx.format_err("epoll events"))?,
        data: get("data", 16)?,
        dev: get("sdev", 16).ok().and_then(|v| u32::try_from(v).ok()),
        inode: get("ino", 16).ok(),
        pos: get("pos", 10).ok(),
    })
}

impl FileKind for Eventpoll {
    type Entry = EventpollFileEntry;
    const NAME: &'static str = "epoll";
    const ANON_LINK: Option<&'static str> = Some("[eventpoll]");
    /// Its targets are registered by a task holding it, once its fds are in.
    const SETTLES: bool = true;

    fn settle(e: &EventpollFileEntry, cx: &InTask<'_>, fd: i32) -> Result<()> {
        register(cx.r, cx.t, fd, e)
    }

    fn set_id(e: &mut EventpollFileEntry, id: u32) {
        e.id = id;
        for t in &mut e.tfd {
            t.id = id;
        }
    }

    fn dump(cx: &FdCtx<'_>, _table: &mut Table) -> Result<Kind> {
        let tfd = cx
            .fd
            .extra
            .iter()
            .filter(|l| l.starts_with("tfd:"))
            .map(|l| tfd_entry(cx, l))
            .collect::<Result<Vec<_>>>()?;
        Ok(Kind::Epfd(EventpollFileEntry {
            id: 0,
            flags: cx.flags(),
            fown: FownEntry::default(),
            tfd,
        }))
    }

    fn open(_e: &EventpollFileEntry, cx: &mut OpenCtx<'_>) -> Result<OwnedFd> {
        let ep = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(cx.err("epoll_create"))?;
        Ok(ep.0)
    }
}

/// `struct epoll_event` as the task's ABI lays it out (packed on x86-64).
fn event_bytes(events: u32, data: u64) -> Vec<u8> {
    let mut b = events.to_ne_bytes().to_vec();
    if !cfg!(target_arch = "x86_64") {
        b.extend_from_slice(&[0; 4]);
    }
    b.extend_from_slice(&data.to_ne_bytes());
    b
}

/// Register the targets of epoll fd `epfd` of the task under `r`, whose fds
/// are in place.
fn register(r: &Remote, t: &Trampoline, epfd: i32, e: &EventpollFileEntry) -> Result<()> {
    let pid: Pid = r.tid;
    for chunk in e.tfd.chunks(BATCH_MAX) {
        let mut bytes = Vec::new();
        let mut at = Vec::new();
        for tfd in chunk {
            at.push(t.data + trampoline::layout::EVENTS + bytes.len() as u64);
            bytes.extend(event_bytes(tfd.events, tfd.data));
        }
        trampoline::put(pid, t, trampoline::layout::EVENTS, &bytes)?;
        let calls: Vec<_> = chunk
            .iter()
            .zip(at)
            .map(|(tfd, ev)| {
                (
                    "epoll_ctl(EPOLL_CTL_ADD)",
                    nr::EPOLL_CTL,
                    [
                        u64::from(epfd.cast_unsigned()),
                        libc::EPOLL_CTL_ADD.cast_unsigned().into(),
                        u64::from(tfd.tfd),
                        ev,
                        0,
                        0,
                    ],
                )
            })
            .collect();
        let res = r.call_many(&calls)?;
        if let Some((tfd, &ret)) = chunk.iter().zip(&res).find(|(_, r)| **r < 0) {
            return Err(Error::Restore {
                pid,
                what: format!("fd {epfd} (epoll): registering fd {}", tfd.tfd),
                errno: nix::errno::Errno::from_raw(i32::try_from(-ret).unwrap_or(libc::EINVAL)),
            });
        }
    }
    Ok(())
}
