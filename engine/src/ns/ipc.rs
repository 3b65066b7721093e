//! The tree's IPC namespace (`ipcns-var-1.img`): its sysctls (SysV limits,
//! POSIX queue limits, the next ids), and its SysV objects (see
//! [`crate::ipc::sysv`]). The next ids are set after the objects are made,
//! so that made objects keep their ids and new ones follow as before.

use nix::sched::CloneFlags;
use nix::unistd::Pid;
use stasis_proto::images::IpcVarEntry;

use super::{KERNEL, MQUEUE, NS_ID, num, read_sys, write_sys};
use crate::error::Result;
use crate::images::{Dir, img};

/// Read the sysctls and objects from inside the namespace of `root`.
pub(super) fn dump(root: Pid, dir: &Dir) -> Result<()> {
    let e = crate::task::in_namespace_of(root, "ipc", CloneFlags::CLONE_NEWIPC, || {
        let objects = crate::ipc::sysv::dump(root)?;
        let k = |n: &str| format!("{KERNEL}/{n}");
        let q = |n: &str| format!("{MQUEUE}/{n}");
        let sem = read_sys(root, &k("sem"))?;
        let var = IpcVarEntry {
            sem_ctls: sem
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect(),
            msg_ctlmax: num(root, &k("msgmax"))?,
            msg_ctlmnb: num(root, &k("msgmnb"))?,
            msg_ctlmni: num(root, &k("msgmni"))?,
            auto_msgmni: num(root, &k("auto_msgmni")).unwrap_or(0),
            shm_ctlmax: num(root, &k("shmmax"))?,
            shm_ctlall: num(root, &k("shmall"))?,
            shm_ctlmni: num(root, &k("shmmni"))?,
            shm_rmid_forced: num(root, &k("shm_rmid_forced"))?,
            mq_queues_max: num(root, &q("queues_max"))?,
            mq_msg_max: num(root, &q("msg_max"))?,
            mq_msgsize_max: num(root, &q("msgsize_max"))?,
            mq_msg_default: num(root, &q("msg_default")).ok(),
            mq_msgsize_default: num(root, &q("msgsize_default")).ok(),
            msg_next_id: num::<i64>(root, &k("msg_next_id"))
                .ok()
                .and_then(|v| u32::try_from(v).ok()),
            sem_next_id: num::<i64>(root, &k("sem_next_id"))
                .ok()
                .and_then(|v| u32::try_from(v).ok()),
            shm_next_id: num::<i64>(root, &k("shm_next_id"))
                .ok()
                .and_then(|v| u32::try_from(v).ok()),
        };
        Ok((var, objects))
    })?;
    dir.write_all(img::IPC_VAR, NS_ID, &[e.0])?;
    crate::ipc::sysv::write(&e.1, dir, NS_ID)
}

/// Set the sysctls in the engine's new IPC namespace and make its objects;
/// the SysV segments to remove again once the tree runs.
pub(super) fn restore(dir: &Dir, e: &IpcVarEntry) -> Result<Vec<i32>> {
    let k = |n: &str| format!("{KERNEL}/{n}");
    let q = |n: &str| format!("{MQUEUE}/{n}");
    if !e.sem_ctls.is_empty() {
        let sem: Vec<String> = e.sem_ctls.iter().map(u32::to_string).collect();
        write_sys(&k("sem"), &sem.join(" "))?;
    }
    write_sys(&k("msgmax"), &e.msg_ctlmax.to_string())?;
    write_sys(&k("msgmnb"), &e.msg_ctlmnb.to_string())?;
    write_sys(&k("msgmni"), &e.msg_ctlmni.to_string())?;
    write_sys(&k("shmmax"), &e.shm_ctlmax.to_string())?;
    write_sys(&k("shmall"), &e.shm_ctlall.to_string())?;
    write_sys(&k("shmmni"), &e.shm_ctlmni.to_string())?;
    write_sys(&k("shm_rmid_forced"), &e.shm_rmid_forced.to_string())?;
    write_sys(&q("queues_max"), &e.mq_queues_max.to_string())?;
    write_sys(&q("msg_max"), &e.mq_msg_max.to_string())?;
    write_sys(&q("msgsize_max"), &e.mq_msgsize_max.to_string())?;
    if let Some(v) = e.mq_msg_default {
        write_sys(&q("msg_default"), &v.to_string())?;
    }
    if let Some(v) = e.mq_msgsize_default {
        write_sys(&q("msgsize_default"), &v.to_string())?;
    }
    let removed = crate::ipc::sysv::restore(dir, NS_ID)?;
    for (name, v) in [
        ("msg_next_id", e.msg_next_id),
        ("sem_next_id", e.sem_next_id),
        ("shm_next_id", e.shm_next_id),
    ] {
        if let Some(v) = v {
            write_sys(&k(name), &v.cast_signed().to_string())?;
        }
    }
    Ok(removed)
}
