//! File locks (`filelocks.img`, dump with `--file-locks`): flock and OFD
//! locks belong to an open file description, so the restore takes them on
//! the engine's copy of that file before the tasks inherit it; POSIX
//! (fcntl) locks belong to a process, so each task takes its own from
//! inside, once its fds are in place. fdinfo lists, for an fd, the locks
//! its file or its task holds.

use std::os::fd::BorrowedFd;

use nix::errno::Errno;
use nix::unistd::Pid;
use stasis_arch::native::nr;
use stasis_proto::images::FileLockEntry;

use crate::error::{EngineError as Error, Result};
use crate::mm::{self, Trampoline};
use crate::remote::Remote;
use crate::sys;

/// fcntl (process-owned) lock.
pub const POSIX: u32 = 1;
/// flock lock.
pub const FLOCK: u32 = 2;
/// Open-file-description lock.
pub const OFD: u32 = 4;

/// Where in the trampoline's data area the `struct flock` goes.
const FLOCK_AT: u64 = 20 << 10;

/// A lock of an fdinfo `lock:` line, or `None` for a waiter (`->`), a lease
/// or a kind stasis does not take. `Err` carries the kind for the message.
pub fn parse(
    pid: Pid,
    fd: i32,
    line: &str,
) -> std::result::Result<Option<(FileLockEntry, String)>, String> {
    // "lock:\t1: POSIX  ADVISORY  WRITE 1234 08:02:5678 100 199"
    let rest = line.strip_prefix("lock:").unwrap_or(line);
    if rest.contains("->") {
        return Ok(None);
    }
    let f: Vec<&str> = rest.split_whitespace().collect();
    let [_, class, _, access, _, dev_ino, start, end, ..] = f.as_slice() else {
        return Err(format!("an fdinfo lock line stasis cannot read: {line:?}"));
    };
    let flag = match *class {
        "POSIX" => POSIX,
        "FLOCK" => FLOCK,
        "OFDLCK" => OFD,
        other => return Err(format!("a {other} file lock")),
    };
    let write = match *access {
        "WRITE" => true,
        "READ" => false,
        other => return Err(format!("a {other} lock")),
    };
    let r#type = match (flag, write) {
        (FLOCK, false) => libc::LOCK_SH,
        (FLOCK, true) => libc::LOCK_EX,
        (_, false) => libc::F_RDLCK,
        (_, true) => libc::F_WRLCK,
    };
    let start: i64 = start.parse().map_err(|_| format!("lock start {start:?}"))?;
    let len = if *end == "EOF" {
        0
    } else {
        let end: i64 = end.parse().map_err(|_| format!("lock end {end:?}"))?;
        end - start + 1
    };
    Ok(Some((
        FileLockEntry {
            flag,
            r#type: r#type.cast_unsigned(),
            pid: pid.as_raw(),
            fd,
            start,
            len,
        },
        (*dev_ino).to_owned(),
    )))
}

/// `struct flock` as the task's ABI lays it out (64-bit: type, whence,
/// start, len, pid).
fn flock_bytes(e: &FileLockEntry) -> Vec<u8> {
    let mut b = Vec::with_capacity(32);
    b.extend_from_slice(&i16::try_from(e.r#type).unwrap_or(0).to_ne_bytes());
    b.extend_from_slice(&0i16.to_ne_bytes());
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&e.start.to_ne_bytes());
    b.extend_from_slice(&e.len.to_ne_bytes());
    b.extend_from_slice(&[0; 8]);
    b
}

/// Take a flock or OFD lock on `file`, the engine's copy of the locked
/// open file description.
pub fn take_on_file(file: BorrowedFd<'_>, e: &FileLockEntry) -> Result<()> {
    let fail = |errno: Errno| Error::Restore {
        pid: Pid::from_raw(e.pid),
        what: format!(
            "fd {}: its file lock (another process holds a conflicting one?)",
            e.fd
        ),
        errno,
    };
    match e.flag {
        FLOCK => sys::flock(file, e.r#type.cast_signed() | libc::LOCK_NB).map_err(fail)?,
        OFD => {
            let fl = libc::flock {
                l_type: i16::try_from(e.r#type).unwrap_or(0),
                l_whence: 0,
                l_start: e.start,
                l_len: e.len,
                l_pid: 0,
            };
            nix::fcntl::fcntl(file, nix::fcntl::FcntlArg::F_OFD_SETLK(&fl)).map_err(fail)?;
        }
        _ => {}
    }
    Ok(())
}

/// Take the task's POSIX locks from inside it.
pub fn take_in_task(r: &Remote, t: &Trampoline, locks: &[&FileLockEntry]) -> Result<()> {
    for e in locks.iter().filter(|e| e.flag == POSIX) {
        let at = mm::put(r.tid, t, FLOCK_AT, &flock_bytes(e))?;
        r.call(
            "fcntl(F_SETLK)",
            nr::FCNTL,
            [
                u64::from(e.fd.cast_unsigned()),
                libc::F_SETLK.cast_unsigned().into(),
                at,
                0,
                0,
                0,
            ],
        )?;
    }
    Ok(())
}
