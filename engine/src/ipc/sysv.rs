//! SysV IPC objects of an IPC namespace of the tree's own: semaphore sets
//! (`ipcns-sem-1.img`, their values) and message queues (`ipcns-msg-1.img`,
//! the messages, copied with MSG_COPY so nothing is taken). Both halves run
//! inside the namespace (a thread joined to it at dump, the engine itself at
//! restore), where /proc/sysvipc lists its objects; ids come back by setting
//! `kernel.{sem,msg}_next_id` before each object is made.

use nix::unistd::Pid;
use stasis_kernel as kernel;
use stasis_proto::images::{IpcDescEntry, IpcMsg, IpcMsgEntry, IpcSemEntry, IpcShmEntry};

use crate::error::{EngineError as Error, Result};
use crate::images::Dir;
use crate::images::img;

/// A message: its type and bytes.
type Message = (i64, Vec<u8>);

/// The SysV objects of one namespace.
#[derive(Debug, Default)]
pub struct Objects {
    shms: Vec<(IpcShmEntry, Vec<u8>)>,
    sems: Vec<(IpcSemEntry, Vec<u16>)>,
    msgs: Vec<(IpcMsgEntry, Vec<Message>)>,
}

/// The rows of /proc/sysvipc/`kind`, as columns.
fn table(pid: Pid, kind: &str) -> Result<Vec<Vec<String>>> {
    let path = format!("/proc/sysvipc/{kind}");
    let text = std::fs::read_to_string(&path).map_err(|err| Error::Proc {
        pid,
        path: path.clone(),
        err,
    })?;
    Ok(text
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect())
}

/// Columns `key id perms` then `uid gid cuid cgid` at `owner`.
fn desc(pid: Pid, kind: &str, row: &[String], owner: usize) -> Result<IpcDescEntry> {
    let bad = || Error::ProcFormat {
        pid,
        file: format!("sysvipc/{kind}"),
    };
    let n = |i: usize| {
        row.get(i)
            .and_then(|v| v.parse::<i64>().ok())
            .ok_or_else(bad)
    };
    Ok(IpcDescEntry {
        key: i32::try_from(n(0)?).map_err(|_| bad())?.cast_unsigned(),
        id: u32::try_from(n(1)?).map_err(|_| bad())?,
        mode: row
            .get(2)
            .and_then(|v| u32::from_str_radix(v, 8).ok())
            .ok_or_else(bad)?,
        uid: u32::try_from(n(owner)?).map_err(|_| bad())?,
        gid: u32::try_from(n(owner + 1)?).map_err(|_| bad())?,
        cuid: u32::try_from(n(owner + 2)?).map_err(|_| bad())?,
        cgid: u32::try_from(n(owner + 3)?).map_err(|_| bad())?,
    })
}

/// SHM_DEST in a segment's mode: removed (IPC_RMID), alive while attached.
const SHM_DEST: u32 = 0o1000;

/// The key segment `id` had before IPC_RMID made it private: the name of
/// its mappings ("/SYSV%08x") in the maps of a task that attached it.
fn key_before_removal(id: u32, pids: &[&String]) -> Option<u32> {
    pids.iter().find_map(|p| {
        let maps = crate::proc::maps(Pid::from_raw(p.parse().ok()?)).ok()?;
        maps.iter().find_map(|m| {
            let name = m.name.strip_prefix("/SYSV")?;
            let key = name.split(' ').next()?;
            (m.ino == u64::from(id))
                .then(|| u32::from_str_radix(key, 16).ok())
                .flatten()
        })
    })
}

/// Read the objects of the current IPC namespace (for the tree of `pid`).
pub fn dump(pid: Pid) -> Result<Objects> {
    let mut o = Objects::default();
    // key shmid perms size cpid lpid nattch uid gid cuid cgid ...
    for row in table(pid, "shm")? {
        let mut d = desc(pid, "shm", &row, 7)?;
        if d.mode & SHM_DEST != 0 {
            // The last process to attach or detach, then the creator.
            let pids: Vec<&String> = [row.get(5), row.get(4)].into_iter().flatten().collect();
            d.key = key_before_removal(d.id, &pids).unwrap_or(d.key);
        }
        let size: u64 = row.get(3).and_then(|v| v.parse().ok()).unwrap_or(0);
        let id = d.id.cast_signed();
        let data = kernel::ipc::shm_read(id, usize::try_from(size).unwrap_or(0))
            .map_err(Error::dump(pid, format!("SysV shared memory {id}")))?;
        o.shms.push((
            IpcShmEntry {
                desc: d,
                size,
                in_pagemaps: Some(false),
                hugetlb_flag: None,
            },
            data,
        ));
    }
    // key semid perms nsems uid gid cuid cgid otime ctime
    for row in table(pid, "sem")? {
        let d = desc(pid, "sem", &row, 4)?;
        let nsems: u32 = row.get(3).and_then(|v| v.parse().ok()).unwrap_or(0);
        let id = d.id.cast_signed();
        let values = kernel::ipc::sem_getall(id, nsems as usize)
            .map_err(Error::dump(pid, format!("SysV semaphore set {id}")))?;
        o.sems.push((IpcSemEntry { desc: d, nsems }, values));
    }
    // key msqid perms cbytes qnum lspid lrpid uid gid cuid cgid stime rtime ctime
    for row in table(pid, "msg")? {
        let d = desc(pid, "msg", &row, 7)?;
        let id = d.id.cast_signed();
        let qnum: u32 = row.get(4).and_then(|v| v.parse().ok()).unwrap_or(0);
        let fail = Error::dump(pid, format!("SysV message queue {id}"));
        let qbytes = kernel::ipc::msg_qbytes(id)
            .map_err(Error::dump(pid, format!("SysV message queue {id}")))?;
        let mut msgs = Vec::new();
        for i in 0..i64::from(qnum) {
            match kernel::ipc::msg_copy(id, i) {
                Ok(Some(m)) => msgs.push(m),
                Ok(None) => break,
                Err(e) => return Err(fail(e)),
            }
        }
        let entry = IpcMsgEntry {
            desc: d,
            qbytes: u32::try_from(qbytes).unwrap_or(u32::MAX),
            qnum: u32::try_from(msgs.len()).unwrap_or(0),
        };
        o.msgs.push((entry, msgs));
    }
    Ok(o)
}

/// Write the objects' images (namespace `ns_id`).
pub fn write(o: &Objects, dir: &Dir, ns_id: u64) -> Result<()> {
    if !o.shms.is_empty() {
        let mut w = dir.create(img::IPCNS_SHM, ns_id)?;
        for (e, data) in &o.shms {
            w.write(e)?;
            let mut raw = data.clone();
            raw.resize(data.len().div_ceil(4) * 4, 0);
            w.write_payload(&raw)?;
        }
        w.finish()?;
    }
    if !o.sems.is_empty() {
        let mut w = dir.create(img::IPCNS_SEM, ns_id)?;
        for (e, values) in &o.sems {
            w.write(e)?;
            let mut raw: Vec<u8> = values.iter().flat_map(|v| v.to_ne_bytes()).collect();
            raw.resize(
                usize::try_from(stasis_proto::json::padded(raw.len() as u64)).unwrap_or(0),
                0,
            );
            w.write_payload(&raw)?;
        }
        w.finish()?;
    }
    if !o.msgs.is_empty() {
        let mut w = dir.create(img::IPCNS_MSG, ns_id)?;
        for (e, msgs) in &o.msgs {
            w.write(e)?;
            for (mtype, data) in msgs {
                w.write(&IpcMsg {
                    mtype: mtype.cast_unsigned(),
                    msize: u32::try_from(data.len()).unwrap_or(u32::MAX),
                })?;
                let mut raw = data.clone();
                raw.resize(
                    usize::try_from(stasis_proto::json::padded(raw.len() as u64)).unwrap_or(0),
                    0,
                );
                w.write_payload(&raw)?;
            }
        }
        w.finish()?;
    }
    Ok(())
}

fn next_id(kind: &str, id: u32) -> Result<()> {
    let path = format!("/proc/sys/kernel/{kind}_next_id");
    std::fs::write(&path, id.to_string()).map_err(|err| Error::Proc {
        pid: nix::unistd::getpid(),
        path,
        err,
    })
}

/// Make the objects of `ipcns-*-ns_id.img` again in the current namespace.
/// Remove (IPC_RMID) the segments that were removed at dump time, once the
/// restored tasks hold them attached again.
pub fn remove_again(ids: &[i32]) -> Result<()> {
    for &id in ids {
        kernel::ipc::shm_remove(id).map_err(Error::restore(
            nix::unistd::getpid(),
            format!("SysV shared memory {id} (removing it again)"),
        ))?;
    }
    Ok(())
}

/// Make the objects of the images in the current IPC namespace; the ids of
/// segments to remove again once the tasks attached them.
pub fn restore(dir: &Dir, ns_id: u64) -> Result<Vec<i32>> {
    let me = nix::unistd::getpid();
    let removed = restore_shm(dir, ns_id, me)?;
    restore_sem(dir, ns_id, me)?;
    restore_msg(dir, ns_id, me)?;
    // Later objects get the ids the kernel picks.
    let _ = next_id("sem", u32::MAX);
    let _ = next_id("msg", u32::MAX);
    let _ = next_id("shm", u32::MAX);
    Ok(removed)
}

/// The kernel gave object `want` the id `got`: anything but `want` means
/// the id was taken.
fn check(me: Pid, kind: &str, want: u32, got: i32) -> Result<()> {
    if got.cast_unsigned() == want {
        Ok(())
    } else {
        Err(Error::Restore {
            pid: me,
            what: format!("SysV {kind} {want} (the kernel gave id {got})"),
            errno: nix::errno::Errno::EEXIST,
        })
    }
}

/// The shared memory segments, with their contents; the ids of those that
/// were removed at dump time.
fn restore_shm(dir: &Dir, ns_id: u64, me: Pid) -> Result<Vec<i32>> {
    let mut removed = Vec::new();
    if !dir.exists(img::IPCNS_SHM, ns_id) {
        return Ok(removed);
    }
    let mut r = dir.open_image(img::IPCNS_SHM, ns_id)?;
    while let Some(e) = r.read_entry::<IpcShmEntry>()? {
        let d = &e.desc;
        if e.in_pagemaps == Some(true) {
            return Err(img::IPCNS_SHM.bad(
                ns_id,
                format!(
                    "segment {} keeps its contents in pagemaps, which stasis does not read",
                    d.id
                ),
            ));
        }
        let mut data = r.read_payload(e.size.div_ceil(4) * 4)?;
        data.truncate(usize::try_from(e.size).unwrap_or(0));
        let what = format!("SysV shared memory {}", d.id);
        next_id("shm", d.id)?;
        let size = usize::try_from(e.size).unwrap_or(0);
        let id = kernel::ipc::shm_create(
            d.key.cast_signed(),
            size,
            (d.mode & 0o777).cast_signed(),
            &data,
        )
        .map_err(Error::restore(me, what.clone()))?;
        check(me, "shared memory", d.id, id)?;
        kernel::ipc::shm_set_owner(id, d.uid, d.gid, d.mode).map_err(Error::restore(me, what))?;
        if d.mode & SHM_DEST != 0 {
            removed.push(id);
        }
    }
    Ok(removed)
}

/// The semaphore sets, with their values.
fn restore_sem(dir: &Dir, ns_id: u64, me: Pid) -> Result<()> {
    if !dir.exists(img::IPCNS_SEM, ns_id) {
        return Ok(());
    }
    let mut r = dir.open_image(img::IPCNS_SEM, ns_id)?;
    while let Some(e) = r.read_entry::<IpcSemEntry>()? {
        let raw = r.read_payload(stasis_proto::json::padded(u64::from(e.nsems) * 2))?;
        let values: Vec<u16> = raw
            .chunks_exact(2)
            .take(e.nsems as usize)
            .map(|c| u16::from_ne_bytes([c[0], c[1]]))
            .collect();
        let d = &e.desc;
        let what = format!("SysV semaphore set {}", d.id);
        next_id("sem", d.id)?;
        let id = kernel::ipc::sem_create(
            d.key.cast_signed(),
            e.nsems.cast_signed(),
            (d.mode & 0o777).cast_signed(),
        )
        .map_err(Error::restore(me, what.clone()))?;
        check(me, "semaphore set", d.id, id)?;
        kernel::ipc::sem_setall(id, &values).map_err(Error::restore(me, what.clone()))?;
        kernel::ipc::sem_set_owner(id, d.uid, d.gid, d.mode).map_err(Error::restore(me, what))?;
    }
    Ok(())
}

/// The message queues, with their messages in order.
fn restore_msg(dir: &Dir, ns_id: u64, me: Pid) -> Result<()> {
    if !dir.exists(img::IPCNS_MSG, ns_id) {
        return Ok(());
    }
    let mut r = dir.open_image(img::IPCNS_MSG, ns_id)?;
    while let Some(e) = r.read_entry::<IpcMsgEntry>()? {
        let d = &e.desc;
        let what = format!("SysV message queue {}", d.id);
        next_id("msg", d.id)?;
        let id = kernel::ipc::msg_create(d.key.cast_signed(), (d.mode & 0o777).cast_signed())
            .map_err(Error::restore(me, what.clone()))?;
        check(me, "message queue", d.id, id)?;
        // Room for every message first, then the dumped limit.
        kernel::ipc::msg_set(id, d.uid, d.gid, d.mode, u64::MAX >> 1).ok();
        for _ in 0..e.qnum {
            let Some(m) = r.read_entry::<IpcMsg>()? else {
                return Err(img::IPCNS_MSG.bad(
                    ns_id,
                    format!("queue {} ends before its {} messages", d.id, e.qnum),
                ));
            };
            let mut data = r.read_payload(stasis_proto::json::padded(u64::from(m.msize)))?;
            data.truncate(m.msize as usize);
            kernel::ipc::msg_send(id, m.mtype.cast_signed(), &data)
                .map_err(Error::restore(me, what.clone()))?;
        }
        kernel::ipc::msg_set(id, d.uid, d.gid, d.mode, u64::from(e.qbytes))
            .map_err(Error::restore(me, what))?;
    }
    Ok(())
}
