//! Terminals: pty masters and slaves (TIOCGPTPEER), their int-valued
//! ioctls (TIOCGPTN, TIOCSPTLCK, packet mode, queued bytes) and window
//! sizes.
//!
//! Wrappers return `Errno` without context; callers say what failed.

use std::os::fd::{FromRawFd, OwnedFd};

use nix::errno::Errno;

use crate::ioctl::ioctl_int_ptr;

/// A tty ioctl that reads an int into `*v` or takes one from it
/// (TIOCGPTN, TIOCGPKT, TIOCPKT, TIOCSPTLCK, ...; EINVAL for requests
/// not known to take one).
pub fn tty_ioctl_int(
    fd: std::os::fd::BorrowedFd<'_>,
    req: libc::Ioctl,
    v: &mut i32,
) -> Result<(), Errno> {
    ioctl_int_ptr(fd, req, v).map(drop)
}

/// The window size of a tty (rows, cols, xpixel, ypixel).
pub fn tty_winsize(fd: std::os::fd::BorrowedFd<'_>) -> Result<[u16; 4], Errno> {
    use std::os::fd::AsRawFd;
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes the valid struct.
    Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &raw mut ws) })?;
    Ok([ws.ws_row, ws.ws_col, ws.ws_xpixel, ws.ws_ypixel])
}

/// Set the window size of a tty.
pub fn tty_set_winsize(fd: std::os::fd::BorrowedFd<'_>, w: [u16; 4]) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    let ws = libc::winsize {
        ws_row: w[0],
        ws_col: w[1],
        ws_xpixel: w[2],
        ws_ypixel: w[3],
    };
    // SAFETY: TIOCSWINSZ reads the valid struct.
    Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &raw const ws) }).map(drop)
}

/// A new fd on the slave of pty master `fd` (TIOCGPTPEER; no path lookup).
pub fn pty_peer(fd: std::os::fd::BorrowedFd<'_>, flags: i32) -> Result<OwnedFd, Errno> {
    use std::os::fd::AsRawFd;
    // SAFETY: TIOCGPTPEER takes open flags and returns a new fd.
    let ret = Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGPTPEER, flags) })?;
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(ret) })
}

/// A new pty with index `index` if it is free, through `ptmx` of the devpts
/// superblock `dir` (a detached mount), or /dev/ptmx: ptys get the lowest
/// free index, so open until it is ours (no ioctl picks one). Past it (it
/// is taken), the next one: the caller reads which it got (TIOCGPTN).
pub fn open_pty(dir: Option<std::os::fd::BorrowedFd<'_>>, index: u32) -> Result<OwnedFd, Errno> {
    use nix::fcntl::OFlag;
    use std::os::fd::AsFd;
    let mut extra = Vec::new();
    loop {
        let flags = OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
        let m = match dir {
            Some(d) => nix::fcntl::openat(d, "ptmx", flags, nix::sys::stat::Mode::empty())?,
            None => nix::fcntl::open("/dev/ptmx", flags, nix::sys::stat::Mode::empty())?,
        };
        let mut n = 0;
        tty_ioctl_int(m.as_fd(), libc::TIOCGPTN, &mut n)?;
        if u32::try_from(n).unwrap_or(u32::MAX) >= index || extra.len() > 4096 {
            return Ok(m);
        }
        extra.push(m);
    }
}
