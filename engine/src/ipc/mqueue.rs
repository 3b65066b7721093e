//! POSIX message queues the tree has open (`posix-mqueue.img`, stasis' own
//! image: CRIU cannot checkpoint them). Each queue's attributes and queued
//! messages are read at dump by opening it again inside the tree's IPC
//! namespace, taking every message and sending it back in the same order
//! (the tree is frozen meanwhile); the restore makes the queue with its
//! messages in the namespace it recreated, then opens each file on it.

use stasis_kernel as kernel;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;

use nix::mqueue::{MQ_OFlag, MqAttr, mq_getattr, mq_open, mq_receive, mq_send, mq_set_nonblock};
use nix::sys::stat::Mode;
use nix::unistd::Pid;
use stasis_proto::images::{PosixMqueueEntry, PosixMqueueMsg};

use crate::error::{EngineError as Error, Result};
use crate::images::Dir;
use crate::images::img;

/// statfs f_type of the mqueue filesystem.
const MQUEUE_MAGIC: nix::sys::statfs::FsType = nix::sys::statfs::FsType(0x1980_0202);

/// The process registered with mq_notify on queue `q`, if any: reading the
/// queue as a file gives "QSIZE:.. NOTIFY:.. SIGNO:.. NOTIFY_PID:..".
fn notify_pid(q: &nix::mqueue::MqdT) -> Option<i32> {
    use std::os::fd::AsFd;
    let mut buf = [0u8; 256];
    let n = nix::sys::uio::pread(q.as_fd(), &mut buf, 0).ok()?;
    let text = String::from_utf8_lossy(&buf[..n]);
    text.split_whitespace()
        .find_map(|kv| kv.strip_prefix("NOTIFY_PID:"))
        .and_then(|v| v.parse::<i32>().ok())
        .filter(|&p| p != 0)
}

fn cname(name: &str) -> Result<std::ffi::CString> {
    std::ffi::CString::new(name)
        .map_err(|_| img::POSIX_MQUEUE.bad(0, format!("queue name {name:?} holds a NUL")))
}

/// Open queue `c` (run inside the tree's IPC namespace) and read its
/// attributes and messages, leaving it as it was.
fn read_queue(pid: Pid, what: &str, c: &std::ffi::CStr) -> Result<(MqAttr, Vec<PosixMqueueMsg>)> {
    let q = mq_open(
        c,
        MQ_OFlag::O_RDWR | MQ_OFlag::O_NONBLOCK,
        Mode::empty(),
        None,
    )
    .map_err(Error::dump(pid, what))?;
    // A registered process would be told (and unregistered) when the
    // messages are put back: refuse before taking them.
    if let Some(who) = notify_pid(&q) {
        return Err(Error::Unsupported {
            pid,
            what: format!(
                "{what}: an mq_notify registration (process {who}), whose signal value cannot be read back,"
            ),
        });
    }
    let attr = mq_getattr(&q).map_err(Error::dump(pid, what))?;
    let msgs = take_all(&q, &attr, pid, what)?;
    // Put them back, highest priority first, so the order is kept.
    for m in &msgs {
        mq_send(&q, &m.data, m.prio).map_err(Error::dump(pid, what))?;
    }
    Ok((attr, msgs))
}

/// Every message queued on `q`, highest priority first (the order
/// mq_receive gives them in); the queue is empty afterwards.
fn take_all(
    q: &nix::mqueue::MqdT,
    attr: &MqAttr,
    pid: Pid,
    what: &str,
) -> Result<Vec<PosixMqueueMsg>> {
    let mut msgs = Vec::new();
    let mut buf = vec![0u8; usize::try_from(attr.msgsize()).unwrap_or(8192)];
    loop {
        let mut prio = 0;
        match mq_receive(q, &mut buf, &mut prio) {
            Ok(n) => msgs.push(PosixMqueueMsg {
                prio,
                data: buf[..n].to_vec(),
            }),
            Err(nix::errno::Errno::EAGAIN) => return Ok(msgs),
            Err(e) => return Err(Error::dump(pid, what)(e)),
        }
    }
}

/// The queues of a dump or restore, by name.
#[derive(Debug, Default)]
pub struct Queues {
    by_name: HashMap<String, PosixMqueueEntry>,
    /// Dump: whether each device (a filesystem) seen is the mqueue one.
    devs: HashMap<u64, bool>,
}

impl Queues {
    /// Dump: whether fd `fd` of `pid`, a file on device `dev`, is a POSIX
    /// message queue; the answer is kept per device (one filesystem each).
    pub fn is_mqueue(&mut self, pid: Pid, fd: i32, dev: u64) -> bool {
        *self.devs.entry(dev).or_insert_with(|| {
            nix::sys::statfs::statfs(format!("/proc/{pid}/fd/{fd}").as_str())
                .is_ok_and(|s| s.filesystem_type() == MQUEUE_MAGIC)
        })
    }

    /// Dump: note file `id` (fd `fd` of `pid`) on queue `name`, reading the
    /// queue the first time.
    pub fn note(&mut self, pid: Pid, fd: i32, name: &str, id: u32) -> Result<()> {
        if let Some(q) = self.by_name.get_mut(name) {
            q.file_ids.push(id);
            return Ok(());
        }
        let meta =
            std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).map_err(|err| Error::Proc {
                pid,
                path: format!("fd/{fd}"),
                err,
            })?;
        let what = format!("fd {fd} (POSIX message queue {name})");
        let c = cname(name)?;
        let (attr, msgs) =
            crate::task::in_namespace_of(pid, "ipc", nix::sched::CloneFlags::CLONE_NEWIPC, || {
                read_queue(pid, &what, &c)
            })?;
        self.by_name.insert(
            name.to_owned(),
            PosixMqueueEntry {
                name: name.to_owned(),
                mode: meta.mode() & 0o777,
                uid: meta.uid(),
                gid: meta.gid(),
                maxmsg: attr.maxmsg(),
                msgsize: attr.msgsize(),
                msgs,
                file_ids: vec![id],
            },
        );
        Ok(())
    }

    /// Write `posix-mqueue.img`.
    pub fn write(&self, dir: &Dir) -> Result<()> {
        if self.by_name.is_empty() {
            return Ok(());
        }
        let mut all: Vec<&PosixMqueueEntry> = self.by_name.values().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        let all: Vec<PosixMqueueEntry> = all.into_iter().cloned().collect();
        dir.write_all(img::POSIX_MQUEUE, 0, &all)
    }

    /// Load `posix-mqueue.img`.
    pub fn load(dir: &Dir) -> Result<Queues> {
        let mut q = Queues::default();
        if dir.exists(img::POSIX_MQUEUE, 0) {
            let all: Vec<PosixMqueueEntry> = dir.read_all(img::POSIX_MQUEUE, 0)?;
            q.by_name = all.into_iter().map(|e| (e.name.clone(), e)).collect();
        }
        Ok(q)
    }

    /// The queue file `id` is open on, if any.
    pub fn of_file(&self, id: u32) -> Option<&PosixMqueueEntry> {
        self.by_name.values().find(|q| q.file_ids.contains(&id))
    }
}

/// Restore: open file `flags` on queue `q`, making the queue (with its
/// messages) first if needed. `made` keeps the makers' descriptors.
pub fn open(
    q: &PosixMqueueEntry,
    flags: u32,
    made: &mut HashMap<String, OwnedFd>,
    pid: Pid,
    fd: i32,
) -> Result<OwnedFd> {
    let what = format!("fd {fd} (POSIX message queue {})", q.name);
    let c = cname(&q.name)?;
    if !made.contains_key(&q.name) {
        let attr = MqAttr::new(0, q.maxmsg, q.msgsize, 0);
        let mode = Mode::from_bits_truncate(q.mode);
        let m = mq_open(
            c.as_c_str(),
            MQ_OFlag::O_CREAT | MQ_OFlag::O_EXCL | MQ_OFlag::O_RDWR,
            mode,
            Some(&attr),
        )
        .map_err(Error::restore(pid, what.clone()))?;
        mq_set_nonblock(&m).map_err(Error::restore(pid, what.clone()))?;
        for msg in &q.msgs {
            mq_send(&m, &msg.data, msg.prio).map_err(Error::restore(pid, what.clone()))?;
        }
        let owned = kernel::mqueue::mq_fd(m);
        nix::unistd::fchown(&owned, Some(q.uid.into()), Some(q.gid.into()))
            .map_err(Error::restore(pid, what.clone()))?;
        made.insert(q.name.clone(), owned);
    }
    let acc = flags.cast_signed() & libc::O_ACCMODE;
    let mut f = match acc {
        libc::O_WRONLY => MQ_OFlag::O_WRONLY,
        libc::O_RDWR => MQ_OFlag::O_RDWR,
        _ => MQ_OFlag::O_RDONLY,
    };
    if flags.cast_signed() & libc::O_NONBLOCK != 0 {
        f |= MQ_OFlag::O_NONBLOCK;
    }
    let d = mq_open(c.as_c_str(), f, Mode::empty(), None).map_err(Error::restore(pid, what))?;
    Ok(kernel::mqueue::mq_fd(d))
}
