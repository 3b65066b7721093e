//! Pseudo-terminals: queued input, termios settings, window size, packet
//! mode and the slave lock state.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::pty::{PtyMaster, grantpt, posix_openpt, ptsname_r, unlockpt};
use nix::sys::termios::{self, LocalFlags, SetArg, SpecialCharacterIndices};

use super::util::{fionread, read_n, write_all};
use crate::meta::{Category::Tty, Test};
use crate::testlib::{Ctx, OrFail, Res};
use crate::{ensure, ensure_eq};

pub(crate) const TESTS: &[Test] = &[
    Test::new(
        "pty00",
        Tty,
        "pty pair with input queued for the slave",
        pty00,
    ),
    Test::new(
        "pty-termios",
        Tty,
        "raw-ish termios with custom control characters",
        pty_termios,
    ),
    Test::new("pty-winsize", Tty, "window size of a pty", pty_winsize),
    Test::new(
        "pty-modes",
        Tty,
        "packet mode on and the slave lock state",
        pty_modes,
    ),
];

fn open_pty() -> Res<(PtyMaster, File)> {
    let m = posix_openpt(nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY)
        .or_fail("posix_openpt")?;
    grantpt(&m).or_fail("grantpt")?;
    unlockpt(&m).or_fail("unlockpt")?;
    let name = ptsname_r(&m).or_fail("ptsname")?;
    let s = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags_noctty()
        .open(&name)
        .or_fail("open slave")?;
    Ok((m, s))
}

trait NoCtty {
    fn custom_flags_noctty(&mut self) -> &mut Self;
}

impl NoCtty for OpenOptions {
    fn custom_flags_noctty(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::custom_flags(self, libc::O_NOCTTY)
    }
}

fn raw(fd: &impl AsFd) -> Res {
    let mut tio = termios::tcgetattr(fd).or_fail("tcgetattr")?;
    termios::cfmakeraw(&mut tio);
    termios::tcsetattr(fd, SetArg::TCSANOW, &tio).or_fail("tcsetattr")
}

fn pty00(t: &mut Ctx) -> Res {
    let (m, s) = open_pty()?;
    raw(&s)?;
    write_all(&m, b"typed before the dump")?;
    crate::testlib::nap(10);
    t.wait("read the queued input", || read_n(&s, 5).map(drop))?;
    ensure_eq!("input queued", fionread(&s)?, 21);
    ensure_eq!(
        "input",
        String::from_utf8_lossy(&read_n(&s, 21)?),
        "typed before the dump"
    );
    write_all(&s, b"out")?;
    crate::testlib::nap(10);
    ensure_eq!("output through the master", read_n(&m, 3)?, b"out".to_vec());
    Ok(())
}

fn pty_termios(t: &mut Ctx) -> Res {
    let (_m, s) = open_pty()?;
    let mut tio = termios::tcgetattr(&s).or_fail("tcgetattr")?;
    tio.local_flags
        .remove(LocalFlags::ECHO | LocalFlags::ICANON);
    tio.control_chars[SpecialCharacterIndices::VMIN as usize] = 3;
    tio.control_chars[SpecialCharacterIndices::VTIME as usize] = 7;
    tio.control_chars[SpecialCharacterIndices::VINTR as usize] = 0x01;
    // The speed bits by hand: libc's cfsetspeed links to a versioned
    // glibc symbol that static builds (the cross-arch VMs) lack.
    tio.control_flags = termios::ControlFlags::from_bits_retain(
        (tio.control_flags.bits() & !libc::CBAUD) | libc::B9600,
    );
    termios::tcsetattr(&s, SetArg::TCSANOW, &tio).or_fail("tcsetattr")?;
    let want = termios::tcgetattr(&s).or_fail("tcgetattr")?;
    t.wait("turned echo back on", || {
        let mut x = termios::tcgetattr(&s).or_fail("tcgetattr")?;
        x.local_flags.insert(LocalFlags::ECHO);
        termios::tcsetattr(&s, SetArg::TCSANOW, &x).or_fail("tcsetattr")
    })?;
    let got = termios::tcgetattr(&s).or_fail("tcgetattr")?;
    ensure_eq!("local flags", got.local_flags, want.local_flags);
    ensure_eq!("input flags", got.input_flags, want.input_flags);
    ensure_eq!("control chars", got.control_chars, want.control_chars);
    ensure_eq!("speed", got.control_flags.bits() & libc::CBAUD, libc::B9600);
    Ok(())
}

fn winsize(fd: &impl AsFd) -> Res<(u16, u16, u16, u16)> {
    // SAFETY: plain old data.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes the valid struct.
    nix::errno::Errno::result(unsafe {
        libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCGWINSZ, &raw mut ws)
    })
    .or_fail("TIOCGWINSZ")?;
    Ok((ws.ws_row, ws.ws_col, ws.ws_xpixel, ws.ws_ypixel))
}

fn set_winsize(fd: &impl AsFd, rows: u16, cols: u16) -> Res {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 640,
        ws_ypixel: 480,
    };
    // SAFETY: TIOCSWINSZ reads the valid struct.
    nix::errno::Errno::result(unsafe {
        libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCSWINSZ, &raw const ws)
    })
    .or_fail("TIOCSWINSZ")
    .map(drop)
}

fn pty_winsize(t: &mut Ctx) -> Res {
    let (m, s) = open_pty()?;
    set_winsize(&m, 43, 132)?;
    t.wait("resized to 24x80", || set_winsize(&m, 24, 80))?;
    ensure_eq!(
        "window size seen by the slave",
        winsize(&s)?,
        (43, 132, 640, 480)
    );
    Ok(())
}

fn ioctl_int(fd: &impl AsFd, req: libc::c_ulong, v: &mut libc::c_int) -> Res {
    // SAFETY: these tty ioctls read or write one int through the valid pointer.
    nix::errno::Errno::result(unsafe {
        libc::ioctl(fd.as_fd().as_raw_fd(), req, std::ptr::from_mut(v))
    })
    .or_fail("tty ioctl")
    .map(drop)
}

fn pty_modes(t: &mut Ctx) -> Res {
    let (m, _s) = open_pty()?;
    let locked = posix_openpt(nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY)
        .or_fail("posix_openpt")?;
    let mut on = 1;
    ioctl_int(&m, libc::TIOCPKT, &mut on)?;
    t.wait("unlocked the second pty", || {
        unlockpt(&locked).or_fail("unlockpt")
    })?;
    let mut pkt = 0;
    ioctl_int(&m, libc::TIOCGPKT, &mut pkt)?;
    ensure_eq!("packet mode", pkt, 1);
    let mut lock = 0;
    ioctl_int(&locked, libc::TIOCGPTLCK, &mut lock)?;
    ensure_eq!("slave lock of the second pty", lock, 1);
    ioctl_int(&m, libc::TIOCGPTLCK, &mut lock)?;
    ensure_eq!("slave lock of the first pty", lock, 0);
    let _: Option<&OwnedFd> = None;
    ensure!(m.as_fd().as_raw_fd() >= 0, "master fd");
    Ok(())
}
