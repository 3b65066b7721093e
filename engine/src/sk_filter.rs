//! Socket filters: the classic BPF program attached with SO_ATTACH_FILTER
//! to any socket (`sk_opts_entry.so_filter`, one `struct sock_filter` per
//! word, as CRIU keeps it). The dump reads it back with SO_GET_FILTER; an
//! eBPF program (SO_ATTACH_BPF) cannot be read back and is refused.

use std::os::fd::BorrowedFd;

use nix::errno::Errno;

use crate::sys;

/// The filter of `fd`, one word per instruction (none: empty). EACCES from
/// the kernel means an eBPF program, which has no classic form to keep.
pub fn dump(fd: BorrowedFd<'_>) -> Result<Vec<u64>, Errno> {
    Ok(sys::socket_filter(fd)?
        .chunks_exact(8)
        .map(|c| u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect())
}

/// Attach `words` (from [`dump`]) to `fd`, if there are any.
pub fn restore(fd: BorrowedFd<'_>, words: &[u64]) -> Result<(), Errno> {
    if words.is_empty() {
        return Ok(());
    }
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    sys::attach_socket_filter(fd, &bytes)
}

/// [`dump`] for fd `cx`, with the errors a user can act on.
pub fn dump_fd(cx: &crate::files::FdCtx<'_>, fd: BorrowedFd<'_>) -> crate::error::Result<Vec<u64>> {
    dump(fd).map_err(|errno| match errno {
        Errno::EACCES => crate::error::EngineError::Unsupported {
            pid: cx.pid,
            what: format!(
                "fd {} ({}): a socket with an eBPF filter (SO_ATTACH_BPF), which cannot be read back,",
                cx.fd.fd, cx.fd.target
            ),
        },
        e => crate::error::EngineError::dump(cx.pid, format!("fd {} (SO_GET_FILTER)", cx.fd.fd))(e),
    })
}
