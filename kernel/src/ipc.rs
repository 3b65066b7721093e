//! SysV IPC: semaphore sets, shared memory segments and message queues
//! (their values, contents, messages and owners).
//!
//! Wrappers return `Errno` without context; callers say what failed.

use nix::errno::Errno;

/// The values of SysV semaphore set `id` (`n` semaphores).
pub fn sem_getall(id: i32, n: usize) -> Result<Vec<u16>, Errno> {
    let mut v = vec![0u16; n];
    // SAFETY: GETALL writes `n` unsigned shorts into the buffer.
    Errno::result(unsafe { libc::semctl(id, 0, libc::GETALL, v.as_mut_ptr()) })?;
    Ok(v)
}

/// Set every value of SysV semaphore set `id`.
pub fn sem_setall(id: i32, v: &[u16]) -> Result<(), Errno> {
    // SAFETY: SETALL reads as many unsigned shorts as the set has.
    Errno::result(unsafe { libc::semctl(id, 0, libc::SETALL, v.as_ptr()) }).map(drop)
}

/// Create SysV semaphore set `key` with `n` semaphores and mode `mode`.
pub fn sem_create(key: i32, n: i32, mode: i32) -> Result<i32, Errno> {
    // SAFETY: integer arguments only.
    Errno::result(unsafe { libc::semget(key, n, libc::IPC_CREAT | libc::IPC_EXCL | mode) })
}

/// The contents of SysV shared memory segment `id` (`size` bytes), read
/// through a read-only attach of this process.
pub fn shm_read(id: i32, size: usize) -> Result<Vec<u8>, Errno> {
    // SAFETY: a fresh read-only attach at an address the kernel picks.
    let p = unsafe { libc::shmat(id, std::ptr::null(), libc::SHM_RDONLY) };
    if p as isize == -1 {
        return Err(Errno::last());
    }
    // SAFETY: the segment is mapped at `p` for at least `size` bytes.
    let data = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), size) }.to_vec();
    // SAFETY: `p` is this attach, detached once.
    unsafe { libc::shmdt(p) };
    Ok(data)
}

/// Create SysV shared memory segment `key` of `size` bytes with mode
/// `mode`, holding `data`.
pub fn shm_create(key: i32, size: usize, mode: i32, data: &[u8]) -> Result<i32, Errno> {
    // SAFETY: integer arguments only.
    let id =
        Errno::result(unsafe { libc::shmget(key, size, libc::IPC_CREAT | libc::IPC_EXCL | mode) })?;
    // SAFETY: a fresh attach at an address the kernel picks.
    let p = unsafe { libc::shmat(id, std::ptr::null(), 0) };
    if p as isize == -1 {
        return Err(Errno::last());
    }
    let n = data.len().min(size);
    // SAFETY: the segment is mapped writable at `p` for `size` bytes.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p.cast::<u8>(), n) };
    // SAFETY: `p` is this attach, detached once.
    unsafe { libc::shmdt(p) };
    Ok(id)
}

/// Remove shared memory segment `id` (IPC_RMID): it goes once nothing has
/// it attached.
pub fn shm_remove(id: i32) -> Result<(), Errno> {
    // SAFETY: IPC_RMID takes no buffer.
    Errno::result(unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) }).map(drop)
}

/// Set the owner of shared memory segment `id`.
pub fn shm_set_owner(id: i32, uid: u32, gid: u32, mode: u32) -> Result<(), Errno> {
    // SAFETY: shmid_ds is plain old data.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT writes the valid struct.
    Errno::result(unsafe { libc::shmctl(id, libc::IPC_STAT, &raw mut ds) })?;
    ds.shm_perm.uid = uid;
    ds.shm_perm.gid = gid;
    ds.shm_perm.mode = perm_mode(mode);
    // SAFETY: IPC_SET reads the valid struct.
    Errno::result(unsafe { libc::shmctl(id, libc::IPC_SET, &raw mut ds) }).map(drop)
}

/// Create SysV message queue `key` with mode `mode`.
pub fn msg_create(key: i32, mode: i32) -> Result<i32, Errno> {
    // SAFETY: integer arguments only.
    Errno::result(unsafe { libc::msgget(key, libc::IPC_CREAT | libc::IPC_EXCL | mode) })
}

/// Message `index` of queue `id`, copied without being taken (MSG_COPY):
/// its type and bytes, or `None` past the last.
pub fn msg_copy(id: i32, index: i64) -> Result<Option<(i64, Vec<u8>)>, Errno> {
    const MSG_COPY: i32 = 0o40000;
    // Room for the largest message (msgmax is at most 2^31; 64 KiB suffices
    // for the default, larger ones are retried).
    let mut size = 1usize << 16;
    loop {
        let mut buf = vec![0u8; 8 + size];
        // SAFETY: the buffer holds a long and `size` bytes.
        let n = unsafe {
            libc::msgrcv(
                id,
                buf.as_mut_ptr().cast(),
                size,
                index,
                MSG_COPY | libc::IPC_NOWAIT,
            )
        };
        match Errno::result(n) {
            Ok(n) => {
                let mut t = [0u8; 8];
                t.copy_from_slice(&buf[..8]);
                let len = usize::try_from(n).unwrap_or(0);
                return Ok(Some((i64::from_ne_bytes(t), buf[8..8 + len].to_vec())));
            }
            Err(Errno::ENOMSG) => return Ok(None),
            Err(Errno::E2BIG) if size < 1 << 30 => size *= 4,
            Err(e) => return Err(e),
        }
    }
}

/// Queue a message of type `mtype` on `id` (without waiting).
pub fn msg_send(id: i32, mtype: i64, data: &[u8]) -> Result<(), Errno> {
    let mut buf = mtype.to_ne_bytes().to_vec();
    buf.extend_from_slice(data);
    // SAFETY: the buffer holds a long and `data.len()` bytes.
    Errno::result(unsafe { libc::msgsnd(id, buf.as_ptr().cast(), data.len(), libc::IPC_NOWAIT) })
        .map(drop)
}

/// The byte limit of message queue `id` (msg_qbytes).
pub fn msg_qbytes(id: i32) -> Result<u64, Errno> {
    // SAFETY: msqid_ds is plain old data.
    let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT writes the valid struct.
    Errno::result(unsafe { libc::msgctl(id, libc::IPC_STAT, &raw mut ds) })?;
    Ok(ds.msg_qbytes)
}

/// The permission bits of an `ipc_perm.mode` (u16 on some arches, u32 on
/// others).
fn perm_mode<T: TryFrom<u32> + From<u16>>(mode: u32) -> T {
    T::try_from(mode & 0o777).unwrap_or_else(|_| T::from(0o600))
}

/// Set the owner and byte limit of message queue `id`.
pub fn msg_set(id: i32, uid: u32, gid: u32, mode: u32, qbytes: u64) -> Result<(), Errno> {
    // SAFETY: msqid_ds is plain old data.
    let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT writes the valid struct.
    Errno::result(unsafe { libc::msgctl(id, libc::IPC_STAT, &raw mut ds) })?;
    ds.msg_perm.uid = uid;
    ds.msg_perm.gid = gid;
    ds.msg_perm.mode = perm_mode(mode);
    ds.msg_qbytes = qbytes;
    // SAFETY: IPC_SET reads the valid struct.
    Errno::result(unsafe { libc::msgctl(id, libc::IPC_SET, &raw mut ds) }).map(drop)
}

/// Set the owner of semaphore set `id`.
pub fn sem_set_owner(id: i32, uid: u32, gid: u32, mode: u32) -> Result<(), Errno> {
    // SAFETY: semid_ds is plain old data.
    let mut ds: libc::semid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT writes the valid struct.
    Errno::result(unsafe { libc::semctl(id, 0, libc::IPC_STAT, &raw mut ds) })?;
    ds.sem_perm.uid = uid;
    ds.sem_perm.gid = gid;
    ds.sem_perm.mode = perm_mode(mode);
    // SAFETY: IPC_SET reads the valid struct.
    Errno::result(unsafe { libc::semctl(id, 0, libc::IPC_SET, &raw mut ds) }).map(drop)
}
