//! POSIX message queues: their descriptors, which are file descriptors on
//! Linux.
//!
//! Wrappers return `Errno` without context; callers say what failed.

use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};

/// A POSIX message queue descriptor as an owned fd (it is one on Linux).
/// The `MqdT` owned it and is consumed, so ownership passes over whole.
pub fn mq_fd(m: nix::mqueue::MqdT) -> OwnedFd {
    // SAFETY: an MqdT owns its descriptor (it is made only by mq_open or an
    // unsafe from_raw_fd); into_raw_fd gives that ownership up to us.
    unsafe { OwnedFd::from_raw_fd(m.into_raw_fd()) }
}
