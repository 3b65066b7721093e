//! Terminals: the controlling terminal of each session (`tty_info_entry`
//! in `tty-info.img`, with the session and its foreground process group).
//! The dump finds it in /proc/PID/stat of the session leader; the restore
//! makes the leader take it again (TIOCSCTTY) through one of its fds on
//! that terminal and sets the foreground group (TIOCSPGRP), so ^C and job
//! control reach the restored tree.

use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;

use nix::unistd::Pid;
use stasis_arch::x86::nr;
use stasis_proto::images::{TtyInfoEntry, TtyType};

use crate::error::Result;
use crate::mm::{self, Trampoline};
use crate::remote::Remote;
use crate::{files::Table, proc};

/// Where the foreground group's number goes in the trampoline's data area.
const PGRP_AT: u64 = 21 << 10;

/// A device number as stat reports it, from the kernel's encoding in
/// /proc/PID/stat (major in bits 8-19, minor in bits 0-7 and 20-31).
fn rdev_of_tty_nr(n: u32) -> u64 {
    let major = u64::from((n >> 8) & 0xfff);
    let minor = u64::from((n & 0xff) | ((n >> 12) & 0xf_ff00));
    nix::sys::stat::makedev(major, minor)
}

/// The controlling terminal of session leader `pid` (`st` its stat), if it
/// has one and holds an fd on it.
pub fn dump_ctty(pid: Pid, st: &proc::Stat, fds: &[proc::Fd]) -> Option<TtyInfoEntry> {
    if st.sid != pid.as_raw() || st.tty_nr == 0 {
        return None;
    }
    let rdev = rdev_of_tty_nr(st.tty_nr);
    let holds = fds.iter().any(|f| {
        std::fs::metadata(format!("/proc/{pid}/fd/{}", f.fd))
            .is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == rdev)
    });
    if !holds {
        tracing::warn!(%pid, "the controlling terminal is not open in the session leader; it is not restored");
        return None;
    }
    let major = nix::sys::stat::major(rdev);
    Some(TtyInfoEntry {
        id: st.tty_nr,
        r#type: if (136..=143).contains(&major) {
            TtyType::Pty as i32
        } else {
            TtyType::ExtTty as i32
        },
        locked: false,
        exclusive: false,
        packet_mode: false,
        sid: pid.as_raw().cast_unsigned(),
        pgrp: u32::try_from(st.tpgid).unwrap_or(0),
        rdev: u32::try_from(rdev).unwrap_or(0),
        ..TtyInfoEntry::default()
    })
}

/// Make session leader `r.tid` take its controlling terminal again, through
/// its first fd on it, and give the terminal its foreground group.
pub fn restore_ctty(
    r: &Remote,
    t: &Trampoline,
    files: &Table,
    fdinfo: &[stasis_proto::images::FdinfoEntry],
) -> Result<()> {
    let pid = r.tid;
    let Some(info) = files
        .ttys()
        .iter()
        .find(|i| i.sid == pid.as_raw().cast_unsigned())
    else {
        return Ok(());
    };
    let fd = fdinfo.iter().find(|f| {
        std::fs::metadata(format!("/proc/{pid}/fd/{}", f.fd))
            .is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == u64::from(info.rdev))
    });
    let Some(fd) = fd else {
        tracing::warn!(%pid, "no fd on the controlling terminal; it is not restored");
        return Ok(());
    };
    let fd = u64::from(fd.fd);
    r.call(
        "ioctl(TIOCSCTTY)",
        nr::IOCTL,
        [fd, libc::TIOCSCTTY, 0, 0, 0, 0],
    )?;
    if info.pgrp != 0 {
        let at = mm::put(pid, t, PGRP_AT, &info.pgrp.to_ne_bytes())?;
        r.call(
            "ioctl(TIOCSPGRP)",
            nr::IOCTL,
            [fd, libc::TIOCSPGRP, at, 0, 0, 0],
        )?;
    }
    Ok(())
}
