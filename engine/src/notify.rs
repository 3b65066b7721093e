//! The action-script points of a dump and a restore (CRIU's
//! `--action-script` and RPC notifications, which container runtimes hook
//! into: runc runs its hooks at `setup-namespaces` and learns the restored
//! PID at `post-restore`). The caller is told each point with the root's
//! PID and may refuse it, which fails the dump or the restore. One point
//! carries an fd: `orphan-pts-master`, the new master of a pty whose master
//! was outside the tree (a container's console), for the caller to hold.

use std::os::fd::BorrowedFd;
use std::sync::Arc;

use nix::unistd::Pid;

use crate::error::{EngineError as Error, Result};

/// What a hook is called with: the point, the root's PID and the point's
/// fd if it has one; an error (its message) refuses the point.
type Hook =
    dyn Fn(&str, i32, Option<BorrowedFd<'_>>) -> std::result::Result<(), String> + Send + Sync;

/// A caller's hook.
#[derive(Clone)]
pub struct Notify(Arc<Hook>);

impl std::fmt::Debug for Notify {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Notify")
    }
}

impl Notify {
    /// Tell `f` each point.
    pub fn new(
        f: impl Fn(&str, i32, Option<BorrowedFd<'_>>) -> std::result::Result<(), String>
        + Send
        + Sync
        + 'static,
    ) -> Notify {
        Notify(Arc::new(f))
    }
}

/// Tell `hook`, if any, that point `script` is reached for the tree under `pid`.
pub fn point(hook: Option<&Notify>, script: &'static str, pid: Pid) -> Result<()> {
    match hook {
        Some(h) => (h.0)(script, pid.as_raw(), None).map_err(|what| Error::Notify { script, what }),
        None => Ok(()),
    }
}

/// Hand `fd` to `hook` at point `script` (no PID goes with it, as in
/// CRIU).
pub fn point_with_fd(hook: &Notify, script: &'static str, fd: BorrowedFd<'_>) -> Result<()> {
    (hook.0)(script, 0, Some(fd)).map_err(|what| Error::Notify { script, what })
}
