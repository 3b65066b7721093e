//! Helpers shared by the probes: result plumbing, /proc readers, throw-away
//! network and mount namespaces.

use std::fmt::Display;
use std::time::Duration;

use nix::sched::{CloneFlags, unshare};

use crate::Outcome;

/// A probe body: `Ok(detail)` when supported, otherwise the outcome to report.
pub type R = Result<String, Outcome>;

/// How long a probe waits for a child it forked.
pub const CHILD_TIMEOUT: Duration = Duration::from_secs(2);

/// Turns a probe body's result into its outcome.
pub fn finish(r: R) -> Outcome {
    match r {
        Ok(s) => Outcome::Supported(s),
        Err(o) => o,
    }
}

/// A plain "not supported" with a reason.
pub fn no(reason: impl Into<String>) -> Outcome {
    Outcome::Unsupported(reason.into())
}

/// "could not run" with a reason.
pub fn error(reason: impl Into<String>) -> Outcome {
    Outcome::Error(reason.into())
}

/// Maps failures of a step to an outcome naming the step.
pub trait Step<T> {
    /// A failure here means the feature is missing.
    fn no(self, step: &str) -> Result<T, Outcome>;
    /// A failure here means the probe could not run.
    fn fail(self, step: &str) -> Result<T, Outcome>;
}

impl<T, E: Display> Step<T> for Result<T, E> {
    fn no(self, step: &str) -> Result<T, Outcome> {
        self.map_err(|e| Outcome::Unsupported(format!("{step}: {e}")))
    }

    fn fail(self, step: &str) -> Result<T, Outcome> {
        self.map_err(|e| Outcome::Error(format!("{step}: {e}")))
    }
}

/// Reads a /proc (or /sys) file; a missing file means "not supported".
pub fn read(path: &str) -> Result<String, Outcome> {
    std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => no(format!("{path} does not exist")),
        _ => no(format!("reading {path}: {e}")),
    })
}

/// The effective capability set of this process.
pub fn cap_eff() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Whether the effective set holds capability number `cap`.
pub fn has_cap(cap: u32) -> bool {
    cap_eff() & (1u64 << cap) != 0
}

/// The scratch network namespace the probes share: created once per
/// process (an empty namespace with only `lo`, brought up), kept alive by
/// this descriptor, gone when the process exits. Creating one namespace per
/// probe would cost more than all the probes together.
fn scratch_netns() -> Result<&'static std::fs::File, Outcome> {
    static NS: std::sync::OnceLock<Result<std::fs::File, String>> = std::sync::OnceLock::new();
    NS.get_or_init(|| {
        std::thread::scope(|s| {
            s.spawn(|| {
                unshare(CloneFlags::CLONE_NEWNET).map_err(|e| {
                    format!("unshare(CLONE_NEWNET) for a throw-away network namespace: {e}")
                })?;
                super::net::loopback_up().map_err(|o| o.reason())?;
                std::fs::File::open("/proc/thread-self/ns/net")
                    .map_err(|e| format!("opening the scratch namespace: {e}"))
            })
            .join()
            .unwrap_or_else(|_| Err("the namespace thread panicked".into()))
        })
    })
    .as_ref()
    .map_err(|e| error(e.clone()))
}

/// Runs `f` on a new thread inside the scratch network namespace (never the
/// host's). Objects `f` creates there must have names no other probe uses.
pub fn in_netns<T: Send>(f: impl FnOnce() -> Result<T, Outcome> + Send) -> Result<T, Outcome> {
    let ns = scratch_netns()?;
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(ns, CloneFlags::CLONE_NEWNET)
                .fail("entering the scratch network namespace")?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(error("the probe thread panicked")))
    })
}

/// Runs `f` on a new thread with a private mount namespace in which every
/// mount is private and a fresh tmpfs covers /tmp; the namespace, and all
/// mounts made in it, disappear when the thread ends.
pub fn in_mntns<T: Send>(f: impl FnOnce() -> Result<T, Outcome> + Send) -> Result<T, Outcome> {
    use nix::mount::{MsFlags, mount};
    std::thread::scope(|s| {
        s.spawn(|| {
            unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_FS).map_err(|e| {
                error(format!(
                    "unshare(CLONE_NEWNS) for a throw-away mount namespace: {e}"
                ))
            })?;
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .fail("making / private in the throw-away mount namespace")?;
            mount(
                Some("stasis-probe"),
                "/tmp",
                Some("tmpfs"),
                MsFlags::empty(),
                Some("size=4m"),
            )
            .fail("mounting a scratch tmpfs on /tmp")?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(error("the probe thread panicked")))
    })
}

/// The `key:` line of an fdinfo/status style file.
pub fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(str::trim)
}
