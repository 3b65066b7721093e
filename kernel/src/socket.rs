//! Sockets: creation for any protocol, int and byte socket options, classic
//! BPF filters (SO_GET_FILTER, SO_ATTACH_FILTER), binding packet sockets,
//! accept4, recvmsg with the descriptors it carries (SCM_RIGHTS) returned
//! owned, and the ioctls that open a socket's network namespace
//! (SIOCGSKNS) or bound file (SIOCUNIXFILE).
//!
//! Wrappers return `Errno` without context; callers say what failed.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

/// One recvmsg on a socket: bytes read, fds received (SCM_RIGHTS,
/// close-on-exec) and the sender's raw sockaddr, empty when it has none
/// (raw, as nix panics on the empty names datagrams from unbound unix
/// sockets carry).
pub fn recv_msg(
    fd: RawFd,
    buf: &mut [u8],
    flags: i32,
) -> Result<(usize, Vec<OwnedFd>, Vec<u8>), Errno> {
    // Room for the most fds one message may carry (SCM_MAX_FD, 253).
    let mut control = vec![0u64; 256];
    // SAFETY: sockaddr_un is plain old data.
    let mut name: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain old data; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&raw mut name).cast();
    msg.msg_namelen =
        libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_un>()).unwrap_or(110);
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len() * 8;
    // SAFETY: every buffer msg points to is valid for the lengths given.
    let n =
        Errno::result(unsafe { libc::recvmsg(fd, &raw mut msg, flags | libc::MSG_CMSG_CLOEXEC) })?;
    // The control messages: { size_t len; int level; int type; data },
    // each aligned to a size_t.
    let bytes: Vec<u8> = control.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let used = msg.msg_controllen.min(bytes.len());
    let word = std::mem::size_of::<usize>();
    let head = word + 8;
    let mut fds = Vec::new();
    let mut off = 0;
    while off + head <= used {
        let mut lb = [0u8; std::mem::size_of::<usize>()];
        lb.copy_from_slice(&bytes[off..off + word]);
        let len = usize::from_ne_bytes(lb);
        let int_at = |at: usize| {
            i32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        if len < head || off + len > used {
            break;
        }
        if int_at(off + word) == libc::SOL_SOCKET && int_at(off + word + 4) == libc::SCM_RIGHTS {
            for at in (off + head..off + len).step_by(4) {
                // SAFETY: SCM_RIGHTS installed this fd in this process just
                // now; nothing else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(int_at(at)) });
            }
        }
        off += len.div_ceil(word) * word;
    }
    // The sender's sockaddr as the kernel wrote it (family first).
    let len = usize::try_from(msg.msg_namelen).unwrap_or(0);
    let mut raw: Vec<u8> = name.sun_family.to_ne_bytes().to_vec();
    raw.extend(name.sun_path.iter().map(|&c| c.to_ne_bytes()[0]));
    raw.truncate(len);
    Ok((usize::try_from(n).unwrap_or(0), fds, raw))
}

/// The network namespace socket `fd` was made in (SIOCGSKNS).
pub fn socket_netns(fd: std::os::fd::BorrowedFd<'_>) -> Result<OwnedFd, Errno> {
    use std::os::fd::AsRawFd;
    const SIOCGSKNS: libc::c_ulong = 0x894C;
    // SAFETY: SIOCGSKNS takes no argument and returns a new fd.
    let ret = Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), SIOCGSKNS as _) })?;
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(ret) })
}

/// A new close-on-exec socket of any protocol (nix names only some).
pub fn socket(domain: i32, ty: i32, proto: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: socket() takes no pointers; it returns a new fd or -1.
    let fd = Errno::result(unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) })?;
    // SAFETY: socket() just made this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Bind packet socket `fd` to device `ifindex` for protocol `proto_be`
/// (network byte order).
pub fn bind_packet(
    fd: std::os::fd::BorrowedFd<'_>,
    proto_be: u16,
    ifindex: i32,
) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    // SAFETY: sockaddr_ll is plain data; all zeroes is a valid value.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = u16::try_from(libc::AF_PACKET).unwrap_or(17);
    sa.sll_protocol = proto_be;
    sa.sll_ifindex = ifindex;
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_ll>()).unwrap_or(20);
    // SAFETY: the kernel reads `len` bytes of `sa` during the call.
    let ret = unsafe { libc::bind(fd.as_raw_fd(), (&raw const sa).cast(), len) };
    Errno::result(ret).map(drop)
}

/// The classic BPF filter attached to socket `fd` (SO_GET_FILTER), as raw
/// `struct sock_filter` bytes, 8 per instruction; empty when none is.
pub fn socket_filter(fd: std::os::fd::BorrowedFd<'_>) -> Result<Vec<u8>, Errno> {
    use std::os::fd::AsRawFd;
    // The option's length counts instructions: 0 asks how many there are.
    let mut n: libc::socklen_t = 0;
    // SAFETY: with a length of 0 the kernel writes nothing to the buffer.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_GET_FILTER,
            std::ptr::null_mut(),
            &raw mut n,
        )
    };
    Errno::result(ret)?;
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut buf = vec![0u8; usize::try_from(n).unwrap_or(0) * 8];
    let mut len = n;
    // SAFETY: `buf` holds `n` instructions of 8 bytes, what `len` allows.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_GET_FILTER,
            buf.as_mut_ptr().cast(),
            &raw mut len,
        )
    };
    Errno::result(ret)?;
    buf.truncate(usize::try_from(len).unwrap_or(0) * 8);
    Ok(buf)
}

/// Attach the classic BPF program `insns` (raw `struct sock_filter`s) to
/// socket `fd` (SO_ATTACH_FILTER).
pub fn attach_socket_filter(fd: std::os::fd::BorrowedFd<'_>, insns: &[u8]) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    let prog = libc::sock_fprog {
        len: u16::try_from(insns.len() / 8).map_err(|_| Errno::EINVAL)?,
        filter: insns.as_ptr().cast_mut().cast(),
    };
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::sock_fprog>()).unwrap_or(16);
    // SAFETY: the kernel copies the program `prog` points to during the call.
    let ret = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&raw const prog).cast(),
            len,
        )
    };
    Errno::result(ret).map(drop)
}

/// An int socket option (for options the nix crate does not name).
pub fn getsockopt_int(
    fd: std::os::fd::BorrowedFd<'_>,
    level: i32,
    name: i32,
) -> Result<i32, Errno> {
    use std::os::fd::AsRawFd;
    let mut v: libc::c_int = 0;
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4);
    // SAFETY: the kernel writes at most `len` bytes into `v`.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw mut v).cast(),
            &raw mut len,
        )
    };
    Errno::result(ret).map(|_| v)
}

/// A socket option read as bytes (at most `len`).
pub fn getsockopt_bytes(
    fd: std::os::fd::BorrowedFd<'_>,
    level: i32,
    name: i32,
    len: usize,
) -> Result<Vec<u8>, Errno> {
    use std::os::fd::AsRawFd;
    let mut buf = vec![0u8; len];
    let mut l = libc::socklen_t::try_from(len).map_err(|_| Errno::EINVAL)?;
    // SAFETY: the kernel writes at most `l` bytes into `buf`.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            buf.as_mut_ptr().cast(),
            &raw mut l,
        )
    };
    Errno::result(ret)?;
    buf.truncate(usize::try_from(l).unwrap_or(0));
    Ok(buf)
}

/// Set a socket option from bytes.
pub fn setsockopt_bytes(
    fd: std::os::fd::BorrowedFd<'_>,
    level: i32,
    name: i32,
    v: &[u8],
) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    let l = libc::socklen_t::try_from(v.len()).map_err(|_| Errno::EINVAL)?;
    // SAFETY: the kernel reads `l` bytes from `v` during the call.
    let ret = unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, v.as_ptr().cast(), l) };
    Errno::result(ret).map(drop)
}

/// Set an int socket option.
pub fn setsockopt_int(
    fd: std::os::fd::BorrowedFd<'_>,
    level: i32,
    name: i32,
    v: i32,
) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4);
    // SAFETY: the kernel reads `len` bytes from `v` during the call.
    let ret = unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, (&raw const v).cast(), len) };
    Errno::result(ret).map(drop)
}

/// accept4(2) on listener `l`: the connection's socket.
pub fn accept(
    l: std::os::fd::BorrowedFd<'_>,
    flags: nix::sys::socket::SockFlag,
) -> Result<OwnedFd, Errno> {
    use std::os::fd::AsRawFd;
    let fd = nix::sys::socket::accept4(l.as_raw_fd(), flags)?;
    // SAFETY: accept4 just made this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The file a bound unix socket `fd` was bound to, opened (SIOCUNIXFILE).
pub fn unix_socket_file(fd: BorrowedFd<'_>) -> Result<OwnedFd, Errno> {
    const SIOCUNIXFILE: libc::c_ulong = 0x89E0;
    // SAFETY: SIOCUNIXFILE takes no argument and returns a new fd.
    let ret = Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), SIOCUNIXFILE as _) })?;
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(ret) })
}
