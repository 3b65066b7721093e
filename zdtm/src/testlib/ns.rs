//! The `ns` and `uns` flavors: the launcher moves the test into new pid,
//! mount, net, uts and ipc namespaces (and for `uns` first a user namespace
//! with an identity id map), so the test process is init of its pid
//! namespace and sees a fresh /proc.

use std::process::ExitCode;

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::ForkResult;

use super::{read_retry, sys};

/// Fork a helper that unshares a user namespace; this process writes the
/// helper's id maps and then waits for it. Returns `None` in the helper
/// (which carries on as the launcher) and the helper's exit code here.
pub fn enter_userns() -> Result<Option<ExitCode>, String> {
    let (r1, w1) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let (r2, w2) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    match sys::fork().map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            drop((r1, w2));
            let res = unshare(CloneFlags::CLONE_NEWUSER)
                .map_err(|e| format!("unshare(CLONE_NEWUSER): {e}"));
            let _ = nix::unistd::write(&w1, if res.is_ok() { b"U" } else { b"E" });
            res?;
            let mut b = [0u8; 1];
            if read_retry(&r2, &mut b) != Ok(1) {
                return Err("the launcher could not write the id maps".into());
            }
            Ok(None)
        }
        ForkResult::Parent { child } => {
            drop((w1, r2));
            let mut b = [0u8; 1];
            if read_retry(&r1, &mut b) == Ok(1) && b[0] == b'U' {
                for (file, map) in [
                    ("uid_map", "0 0 4294967295\n"),
                    ("gid_map", "0 0 4294967295\n"),
                ] {
                    let path = format!("/proc/{child}/{file}");
                    std::fs::write(&path, map).map_err(|e| format!("write {path}: {e}"))?;
                }
                let _ = nix::unistd::write(&w2, b"G");
            }
            drop(w2);
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, c)) => {
                    Ok(Some(ExitCode::from(u8::try_from(c).unwrap_or(1))))
                }
                other => Err(format!("user-namespace launcher ended with {other:?}")),
            }
        }
    }
}

/// Unshare the namespaces the test process (our next child) will live in:
/// pid, mount, net, uts, ipc, and a time namespace whose monotonic and
/// boottime clocks are 10 and 20 days ahead (as CRIU's suite does), where
/// the kernel has time namespaces.
pub fn unshare_for_test() -> Result<(), String> {
    let flags = CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC;
    unshare(flags).map_err(|e| format!("unshare(pid|mnt|net|uts|ipc): {e}"))?;
    if std::path::Path::new("/proc/self/ns/time").exists() {
        unshare(CloneFlags::from_bits_retain(libc::CLONE_NEWTIME))
            .map_err(|e| format!("unshare(CLONE_NEWTIME): {e}"))?;
        std::fs::write(
            "/proc/self/timens_offsets",
            "monotonic 864000 0\nboottime 1728000 0\n",
        )
        .map_err(|e| format!("write timens_offsets: {e}"))?;
    }
    Ok(())
}

/// Inside the namespaces: private mounts, a /proc of the new pid namespace,
/// and loopback up.
pub fn setup_inside() -> Result<(), String> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("make / private: {e}"))?;
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| format!("mount /proc: {e}"))?;
    crate::corpus::util::loopback_up().map_err(|e| format!("loopback up: {e}"))
}
