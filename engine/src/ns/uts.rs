//! The tree's UTS namespace (`utsns-1.img`): its host and domain names.

use nix::sched::CloneFlags;
use nix::unistd::Pid;
use stasis_proto::images::UtsnsEntry;

use super::{KERNEL, NS_ID, write_sys};
use crate::error::{EngineError as Error, Result};
use crate::images::{Dir, img};

/// Read the names from inside the namespace of `root`.
pub(super) fn dump(root: Pid, dir: &Dir) -> Result<()> {
    let e = crate::task::in_namespace_of(root, "uts", CloneFlags::CLONE_NEWUTS, || {
        let u = nix::sys::utsname::uname().map_err(Error::dump(root, "uname"))?;
        Ok(UtsnsEntry {
            nodename: u.nodename().to_string_lossy().into_owned(),
            domainname: u.domainname().to_string_lossy().into_owned(),
        })
    })?;
    dir.write_all(img::UTSNS, NS_ID, &[e])
}

/// Set the names in the engine's new UTS namespace.
pub(super) fn restore(e: &UtsnsEntry) -> Result<()> {
    let me = nix::unistd::getpid();
    nix::unistd::sethostname(&e.nodename).map_err(Error::restore(me, "the host name"))?;
    write_sys(&format!("{KERNEL}/domainname"), &e.domainname)
}
