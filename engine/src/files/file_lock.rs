//! File locks (`filelocks.img`, dump with `--file-locks`): flock and OFD
//! locks belong to an open file description, so the restore takes them on
//! the engine's copy of that file before the tasks inherit it; POSIX
//! (fcntl) locks belong to a process, so each task takes its own from
//! inside, once its fds are in place. Leases belong to the open file too,
//! but the task that takes one is the one told (SIGIO) when it must give
//! it up, so each is taken from inside the task whose fd showed it; a
//! lease that was being broken is taken as it was before, then broken
//! again by an open that does not wait. fdinfo lists, for an fd, the locks
//! its file or its task holds.

use stasis_kernel as kernel;
use std::os::fd::BorrowedFd;

use nix::errno::Errno;
use nix::unistd::Pid;
use stasis_arch::native::nr;
use stasis_proto::images::FileLockEntry;

use crate::error::{EngineError as Error, Result};
use crate::images::{Dir, img};
use crate::task::remote::Remote;
use crate::task::trampoline::{self, Trampoline};

/// The file locks of a dump or a restore (`filelocks.img`).
#[derive(Debug, Default)]
pub struct Locks {
    list: Vec<FileLockEntry>,
    /// Dump: the keys that keep each lock once.
    keys: Vec<(u32, String, i64, i64, u32)>,
}

impl Locks {
    /// Dump: note the locks fdinfo showed on an fd of file `id` (with the
    /// dev:ino of their file), each once: a POSIX lock shows on every fd
    /// its process has on the file, a flock or OFD lock on every fd of its
    /// description.
    pub(crate) fn note(&mut self, id: u32, locks: Vec<(FileLockEntry, String)>) {
        for (e, dev_ino) in locks {
            let owner = if e.flag == POSIX {
                e.pid.cast_unsigned()
            } else {
                id
            };
            let key = (e.flag, dev_ino, e.start, e.len, owner);
            if !self.keys.contains(&key) {
                self.keys.push(key);
                self.list.push(e);
            }
        }
    }

    /// The locks.
    pub fn list(&self) -> &[FileLockEntry] {
        &self.list
    }

    /// Dump: give the lock owners' PIDs as the images number them.
    pub(crate) fn number_pids(&mut self, image: &impl Fn(i32) -> i32) {
        for l in &mut self.list {
            l.pid = image(l.pid);
        }
    }

    /// Write `filelocks.img` (where there is a lock).
    pub(crate) fn write(&self, dir: &Dir) -> Result<()> {
        if !self.list.is_empty() {
            dir.write_all(img::FILE_LOCKS, 0, &self.list)?;
        }
        Ok(())
    }

    /// Load `filelocks.img`, where it is.
    pub(crate) fn load(dir: &Dir) -> Result<Locks> {
        let mut l = Locks::default();
        if dir.exists(img::FILE_LOCKS, 0) {
            l.list = dir.read_all(img::FILE_LOCKS, 0)?;
        }
        Ok(l)
    }
}

/// fcntl (process-owned) lock.
pub const POSIX: u32 = 1;
/// flock lock.
pub const FLOCK: u32 = 2;
/// Open-file-description lock.
pub const OFD: u32 = 4;
/// Lease (F_SETLEASE).
pub const LEASE: u32 = 8;
/// Or'ed into a lease's type: it was being broken (the type is the one it
/// was being broken to).
pub const LEASE_BREAKING: u32 = 4;

/// A lock of an fdinfo `lock:` line, or `None` for a waiter (`->`). `Err`
/// carries the kind for the message. Types are CRIU's: F_RDLCK or F_WRLCK
/// for every kind (flock's shared and exclusive too).
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
    let [_, class, state, access, _, dev_ino, start, end, ..] = f.as_slice() else {
        return Err(format!("an fdinfo lock line stasis cannot read: {line:?}"));
    };
    let flag = match *class {
        "POSIX" => POSIX,
        "FLOCK" => FLOCK,
        "OFDLCK" => OFD,
        "LEASE" => LEASE,
        other => return Err(format!("a {other} file lock")),
    };
    let mut r#type = match (*access, flag) {
        ("WRITE", _) => libc::F_WRLCK.cast_unsigned(),
        ("READ", _) => libc::F_RDLCK.cast_unsigned(),
        // A lease being broken to nothing.
        ("UNLCK", LEASE) => libc::F_UNLCK.cast_unsigned(),
        (other, _) => return Err(format!("a {other} lock")),
    };
    if flag == LEASE && *state == "BREAKING" {
        r#type |= LEASE_BREAKING;
    }
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
            r#type,
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
        FLOCK => {
            let how = if e.r#type == libc::F_WRLCK.cast_unsigned() {
                libc::LOCK_EX
            } else {
                libc::LOCK_SH
            };
            kernel::fd::flock(file, how | libc::LOCK_NB).map_err(fail)?;
        }
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

/// The access mode of fd `fd` of `pid` (O_RDONLY, O_WRONLY or O_RDWR).
fn access_mode(pid: Pid, fd: i32) -> Result<i32> {
    let path = format!("/proc/{pid}/fdinfo/{fd}");
    let text = std::fs::read_to_string(&path).map_err(|err| Error::Proc {
        pid,
        path: path.clone(),
        err,
    })?;
    text.lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|v| i32::from_str_radix(v.trim(), 8).ok())
        .map(|f| f & libc::O_ACCMODE)
        .ok_or(Error::ProcFormat { pid, file: path })
}

/// Take lease `e` from inside the task (which becomes the one told to
/// give it up), and break it again if it was being broken.
fn take_lease(r: &Remote, e: &FileLockEntry) -> Result<()> {
    let pid = r.tid;
    let breaking = e.r#type & LEASE_BREAKING != 0;
    let target = e.r#type & !LEASE_BREAKING;
    // Being broken, it was still the lease its access mode allows.
    let held = if breaking {
        if access_mode(pid, e.fd)? == libc::O_RDONLY {
            libc::F_RDLCK
        } else {
            libc::F_WRLCK
        }
    } else {
        target.cast_signed()
    };
    r.call(
        "fcntl(F_SETLEASE)",
        nr::FCNTL,
        [
            u64::from(e.fd.cast_unsigned()),
            libc::F_SETLEASE.cast_unsigned().into(),
            u64::from(held.cast_unsigned()),
            0,
            0,
            0,
        ],
    )?;
    if breaking {
        // An open that conflicts starts the break (the task gets its
        // SIGIO) and fails at once instead of waiting for it.
        let how = if target == libc::F_UNLCK.cast_unsigned() {
            nix::fcntl::OFlag::O_WRONLY
        } else {
            nix::fcntl::OFlag::O_RDONLY
        };
        let path = format!("/proc/{pid}/fd/{}", e.fd);
        match nix::fcntl::open(
            path.as_str(),
            how | nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        ) {
            Err(Errno::EWOULDBLOCK) => {}
            Err(errno) => {
                return Err(Error::Restore {
                    pid,
                    what: format!("fd {}: breaking its lease again", e.fd),
                    errno,
                });
            }
            Ok(_) => {
                return Err(Error::Restore {
                    pid,
                    what: format!(
                        "fd {}: its lease did not break when the file was opened",
                        e.fd
                    ),
                    errno: Errno::EINVAL,
                });
            }
        }
    }
    Ok(())
}

/// Take the task's POSIX locks and leases from inside it.
pub fn take_in_task(r: &Remote, t: &Trampoline, locks: &[&FileLockEntry]) -> Result<()> {
    for e in locks.iter().filter(|e| e.flag == LEASE) {
        take_lease(r, e)?;
    }
    for e in locks.iter().filter(|e| e.flag == POSIX) {
        let at = trampoline::put(r.tid, t, trampoline::layout::FLOCK, &flock_bytes(e))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(line: &str) -> std::result::Result<Option<(FileLockEntry, String)>, String> {
        parse(Pid::from_raw(42), 5, line)
    }

    #[test]
    fn posix_range_and_flock_to_eof() {
        let (e, key) = lock("lock:\t1: POSIX  ADVISORY  WRITE 42 08:02:5678 100 199")
            .unwrap()
            .unwrap();
        assert_eq!(
            (e.flag, e.start, e.len, e.fd, e.pid),
            (POSIX, 100, 100, 5, 42)
        );
        assert_eq!(e.r#type, libc::F_WRLCK.cast_unsigned());
        assert_eq!(key, "08:02:5678");
        let (e, _) = lock("lock:\t2: FLOCK  ADVISORY  READ 42 00:1f:99 0 EOF")
            .unwrap()
            .unwrap();
        assert_eq!((e.flag, e.len), (FLOCK, 0));
        assert_eq!(e.r#type, libc::F_RDLCK.cast_unsigned());
    }

    #[test]
    fn a_lease_being_broken_and_a_waiter() {
        let (e, _) = lock("lock:\t1: LEASE  BREAKING  UNLCK 42 00:1f:99 0 EOF")
            .unwrap()
            .unwrap();
        assert_eq!(e.flag, LEASE);
        assert_eq!(e.r#type, libc::F_UNLCK.cast_unsigned() | LEASE_BREAKING);
        // A task waiting for the lock, not holding it: nothing to keep.
        assert!(
            lock("lock:\t1: -> POSIX  ADVISORY  WRITE 43 08:02:5678 0 EOF")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn unknown_classes_and_short_lines_are_refused_by_name() {
        assert_eq!(
            lock("lock:\t1: DELEG  ADVISORY  READ 42 00:1f:99 0 EOF").unwrap_err(),
            "a DELEG file lock"
        );
        assert!(lock("lock:\t1: POSIX").unwrap_err().contains("cannot read"));
    }
}
