//! A user namespace of the tree's own: its uid and gid maps
//! (`userns-ID.img`, CRIU's `userns_entry`). The restore makes it in a
//! helper process that also makes the tree's other namespaces from inside
//! it, so that they are owned by it as they were; the engine (root of the
//! initial user namespace, which has every capability over them) joins
//! them to fill them, and the tree's root joins the user namespace first
//! thing. Credentials read from /proc (in the engine's terms) are put in
//! the namespace's terms at the dump.

use stasis_kernel as kernel;
use std::os::fd::{AsFd, OwnedFd};

use nix::sched::CloneFlags;
use nix::unistd::Pid;
use stasis_proto::images::{UidGidExtent, UsernsEntry};

use crate::error::{EngineError as Error, Result};
use crate::images::{Dir, img};

fn parse_map(text: &str) -> Vec<UidGidExtent> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace().map(|v| v.parse::<u32>().ok());
            Some(UidGidExtent {
                first: f.next()??,
                lower_first: f.next()??,
                count: f.next()??,
            })
        })
        .collect()
}

/// An id as the namespace of `map` numbers it (the overflow id 65534 when
/// it is not mapped).
fn inside(map: &[UidGidExtent], outer: u32) -> u32 {
    map.iter()
        .find(|e| outer >= e.lower_first && outer - e.lower_first < e.count)
        .map_or(65534, |e| e.first + (outer - e.lower_first))
}

/// The maps of the tree's user namespace, read at the dump.
#[derive(Debug, Clone)]
pub struct Maps(UsernsEntry);

impl Maps {
    /// Put credentials read from the engine's /proc in the namespace's terms.
    pub fn creds(&self, c: &mut stasis_proto::images::CredsEntry) {
        let (u, g) = (&self.0.uid_map, &self.0.gid_map);
        for id in [&mut c.uid, &mut c.euid, &mut c.suid, &mut c.fsuid] {
            *id = inside(u, *id);
        }
        for id in [&mut c.gid, &mut c.egid, &mut c.sgid, &mut c.fsgid] {
            *id = inside(g, *id);
        }
        for id in &mut c.groups {
            *id = inside(g, *id);
        }
    }
}

/// Dump the maps of `root`'s user namespace.
pub(crate) fn dump(root: Pid, dir: &Dir) -> Result<Maps> {
    let read = |f: &str| {
        let path = format!("/proc/{root}/{f}");
        std::fs::read_to_string(&path).map_err(|err| Error::Proc {
            pid: root,
            path,
            err,
        })
    };
    let e = UsernsEntry {
        uid_map: parse_map(&read("uid_map")?),
        gid_map: parse_map(&read("gid_map")?),
    };
    dir.write_all(img::USERNS, super::NS_ID, std::slice::from_ref(&e))?;
    Ok(Maps(e))
}

/// The helper holding the tree's user namespace and the namespaces made
/// inside it; killed and reaped on drop.
#[derive(Debug)]
pub struct Helper {
    pid: Pid,
    /// The user namespace, for the tree's root to join.
    pub ns: OwnedFd,
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(self.pid, None);
    }
}

impl Helper {
    /// Namespace `kind` the helper made (`pid_for_children` for its PID
    /// namespace).
    pub fn open(&self, kind: &str) -> Result<OwnedFd> {
        let path = format!("/proc/{}/ns/{kind}", self.pid);
        std::fs::File::open(&path)
            .map(OwnedFd::from)
            .map_err(|err| Error::Proc {
                pid: self.pid,
                path,
                err,
            })
    }

    /// Join the helper's namespace `kind`.
    pub fn join(&self, kind: &str, flag: CloneFlags) -> Result<()> {
        let fd = self.open(kind)?;
        nix::sched::setns(fd.as_fd(), flag).map_err(Error::restore(
            nix::unistd::getpid(),
            format!("joining the tree's {kind} namespace"),
        ))
    }
}

/// Make the tree's user namespace from `userns-ID.img`, if the dump wrote
/// one, with the namespaces `inner` made inside it.
pub(crate) fn restore(dir: &Dir, inner: CloneFlags) -> Result<Option<Helper>> {
    if !dir.exists(img::USERNS, super::NS_ID) {
        return Ok(None);
    }
    let e: UsernsEntry = dir.read_one(img::USERNS, super::NS_ID)?;
    let me = nix::unistd::getpid();
    let fail = |what: &'static str| Error::restore(me, what);
    let (to_r, to_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(fail("a pipe"))?;
    let (from_r, from_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(fail("a pipe"))?;
    let pid = match kernel::clone::fork_single_threaded_ids(&[], false, false)
        .map_err(fail("a helper for the user namespace"))?
    {
        kernel::clone::Forked::Child => {
            drop((to_w, from_r));
            helper_main(&to_r, &from_w, inner)
        }
        kernel::clone::Forked::Parent(p) => p,
    };
    drop((to_r, from_w));
    let mut b = [0u8; 1];
    let mut step = |what: &'static str| -> Result<()> {
        match nix::unistd::read(&from_r, &mut b) {
            Ok(1) if b[0] == b'1' => Ok(()),
            _ => Err(Error::Restore {
                pid,
                what: what.into(),
                errno: nix::errno::Errno::EPERM,
            }),
        }
    };
    let held = |h: Pid| -> Result<Helper> {
        let path = format!("/proc/{h}/ns/user");
        let ns = std::fs::File::open(&path)
            .map(OwnedFd::from)
            .map_err(|err| Error::Proc { pid: h, path, err })?;
        Ok(Helper { pid: h, ns })
    };
    // Killed and reaped on any failure from here.
    struct Guard(Pid);
    impl Drop for Guard {
        fn drop(&mut self) {
            if self.0.as_raw() > 0 {
                let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(self.0, None);
            }
        }
    }
    let mut guard = Guard(pid);
    step("a user namespace")?;
    write_maps(pid, &e)?;
    nix::unistd::write(&to_w, b"g").map_err(fail("starting the helper"))?;
    step("the tree's namespaces inside its user namespace")?;
    let helper = held(pid)?;
    guard.0 = Pid::from_raw(0);
    Ok(Some(helper))
}

/// The helper of [`restore`]: a user namespace, the maps from the engine
/// (it waits for them on `to_r`), then the other namespaces (`inner`)
/// inside it; each step reported on `from_w`; then it waits to be killed.
fn helper_main(to_r: &OwnedFd, from_w: &OwnedFd, inner: CloneFlags) -> ! {
    kernel::process::set_pdeathsig(libc::SIGKILL);
    let step = |ok: bool| {
        let _ = nix::unistd::write(from_w, if ok { b"1" } else { b"0" });
    };
    let user = nix::sched::unshare(CloneFlags::CLONE_NEWUSER).is_ok();
    step(user);
    let mut b = [0u8; 1];
    if !user || nix::unistd::read(to_r, &mut b) != Ok(1) {
        kernel::process::exit_now(1);
    }
    step(nix::sched::unshare(inner).is_ok());
    loop {
        nix::unistd::pause();
    }
}

/// Write the tree's uid and gid maps for the helper `pid`'s namespace.
fn write_maps(pid: Pid, e: &UsernsEntry) -> Result<()> {
    let line = |m: &[UidGidExtent]| {
        m.iter()
            .map(|x| format!("{} {} {}\n", x.first, x.lower_first, x.count))
            .collect::<String>()
    };
    for (file, map) in [("uid_map", &e.uid_map), ("gid_map", &e.gid_map)] {
        let path = format!("/proc/{pid}/{file}");
        std::fs::write(&path, line(map)).map_err(|err| Error::Proc {
            pid,
            path: path.clone(),
            err,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn maps_parse_and_translate() {
        let m = super::parse_map("         0     100000      65536\n 70000 200 1\n");
        assert_eq!(m.len(), 2);
        assert_eq!(super::inside(&m, 100_005), 5);
        assert_eq!(super::inside(&m, 200), 70000);
        assert_eq!(super::inside(&m, 7), 65534);
    }
}
