//! Socket options every kind of socket has (`sk_opts_entry`): buffer sizes
//! with whether they were set by hand (SO_BUF_LOCK; otherwise the kernel
//! tunes them, and a socket accepted from a listener inherits that) and the
//! socket filter, the classic BPF program attached with
//! SO_ATTACH_FILTER (`so_filter`, one `struct sock_filter` per word, as CRIU
//! keeps it). The dump reads the filter back with SO_GET_FILTER; an eBPF
//! program (SO_ATTACH_BPF) cannot be read back and is refused.

use stasis_kernel as kernel;
use std::os::fd::BorrowedFd;

use nix::errno::Errno;
use nix::sys::socket::sockopt;
use stasis_proto::images::SkOptsEntry;

/// A socket option's bytes as native-endian 32-bit words (ICMP filters,
/// netlink group bitmaps).
pub fn words(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// SO_BUF_LOCK (Linux 5.14): which buffer sizes were set by hand.
const SO_BUF_LOCK: i32 = 72;

/// Which of `fd`'s buffer sizes are locked (SOCK_SNDBUF_LOCK 1,
/// SOCK_RCVBUF_LOCK 2); `None` where the kernel cannot tell.
pub fn buf_lock(fd: BorrowedFd<'_>) -> Option<u32> {
    kernel::socket::getsockopt_int(fd, libc::SOL_SOCKET, SO_BUF_LOCK)
        .ok()
        .map(i32::cast_unsigned)
}

/// SO_SNDBUF and SO_RCVBUF of `fd` (as the kernel reports them: doubled).
pub fn buffers(fd: BorrowedFd<'_>) -> (u32, u32) {
    let get = |o| {
        kernel::socket::getsockopt_int(fd, libc::SOL_SOCKET, o)
            .map(i32::cast_unsigned)
            .unwrap_or(0)
    };
    (get(libc::SO_SNDBUF), get(libc::SO_RCVBUF))
}

/// The buffer sizes and the filter of fd `cx` (`fd`, a copy of it).
pub fn dump_common(
    cx: &crate::files::FdCtx<'_>,
    fd: BorrowedFd<'_>,
) -> crate::error::Result<SkOptsEntry> {
    let (so_sndbuf, so_rcvbuf) = buffers(fd);
    Ok(SkOptsEntry {
        so_filter: dump_fd(cx, fd)?,
        so_sndbuf,
        so_rcvbuf,
        so_buf_lock: buf_lock(fd),
        ..SkOptsEntry::default()
    })
}

/// Put buffer sizes and the filter of `o` back on `fd`; the failing step
/// is named.
pub fn restore_common(fd: BorrowedFd<'_>, o: &SkOptsEntry) -> Result<(), (&'static str, Errno)> {
    // The kernel doubles what is set and reports the doubled value.
    if o.so_sndbuf > 0 {
        nix::sys::socket::setsockopt(&fd, sockopt::SndBufForce, &(o.so_sndbuf as usize / 2))
            .map_err(|e| ("SO_SNDBUF", e))?;
    }
    if o.so_rcvbuf > 0 {
        nix::sys::socket::setsockopt(&fd, sockopt::RcvBufForce, &(o.so_rcvbuf as usize / 2))
            .map_err(|e| ("SO_RCVBUF", e))?;
    }
    // Setting a size locks it; sizes the kernel was tuning are unlocked
    // again (else the socket, and every one a listener accepts, keeps the
    // size it had at the dump: an 8 MiB send took 4 s instead of 30 ms).
    if let Some(lock) = o.so_buf_lock {
        kernel::socket::setsockopt_int(fd, libc::SOL_SOCKET, SO_BUF_LOCK, lock.cast_signed())
            .map_err(|e| ("SO_BUF_LOCK", e))?;
    }
    restore(fd, &o.so_filter).map_err(|e| ("SO_ATTACH_FILTER", e))
}

/// The filter of `fd`, one word per instruction (none: empty). EACCES from
/// the kernel means an eBPF program, which has no classic form to keep.
pub fn dump(fd: BorrowedFd<'_>) -> Result<Vec<u64>, Errno> {
    Ok(kernel::socket::socket_filter(fd)?
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
    kernel::socket::attach_socket_filter(fd, &bytes)
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
