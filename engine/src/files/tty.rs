//! Terminals: the controlling terminal of each session (`tty_info_entry`
//! in `tty-info.img`, with the session and its foreground process group).
//! The dump finds it in /proc/PID/stat of the session leader; the restore
//! makes the leader take it again (TIOCSCTTY) through one of its fds on
//! that terminal and sets the foreground group (TIOCSPGRP), so ^C and job
//! control reach the restored tree.

use stasis_kernel as kernel;
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::unistd::Pid;
use stasis_arch::native::nr;
use stasis_proto::images::file_entry::Kind;
use stasis_proto::images::{
    FownEntry, TermiosEntry, TtyDataEntry, TtyFileEntry, TtyInfoEntry, TtyPtyEntry, TtyType,
    WinsizeEntry,
};

use crate::error::{EngineError as Error, Result};
use crate::files::{FdCtx, FileKind, OpenCtx, Table};
use crate::images::{Dir, img};
use crate::proc;
use crate::task::remote::Remote;
use crate::task::trampoline::{self, Trampoline};

/// The terminals of a dump or a restore (`tty-info.img`, `tty-data.img`).
#[derive(Debug, Default)]
pub struct Ttys {
    /// Controlling terminals of the sessions, and ends of ptys.
    infos: Vec<TtyInfoEntry>,
    data: Vec<TtyDataEntry>,
    /// Dump: the terminals that are the caller's (`--external
    /// tty[RDEV:DEV]`), by key.
    external: Vec<String>,
    /// Restore: ptys the mount restore made (bind sources in a devpts of
    /// the tree's), their masters by index.
    premade: HashMap<u32, OwnedFd>,
}

impl Ttys {
    /// Note the controlling terminal of a session.
    pub fn add_ctty(&mut self, e: TtyInfoEntry) {
        self.infos.push(e);
    }

    /// Dump: note the controlling terminal of `pid` if it leads a session
    /// and holds it (see [`dump_ctty`]), with the session and foreground
    /// group as the tree sees them: its own PID namespace's numbers, given
    /// by `image`, which the restore's TIOCSPGRP takes.
    pub fn dump_ctty_of(
        &mut self,
        pid: Pid,
        st: &proc::Stat,
        fds: &[proc::Fd],
        image: impl Fn(Pid) -> u32,
    ) {
        if let Some(mut ctty) = dump_ctty(pid, st, fds) {
            ctty.sid = image(pid);
            ctty.pgrp = match u32::try_from(st.tpgid) {
                Ok(g) if g > 0 => image(Pid::from_raw(st.tpgid)),
                _ => 0,
            };
            self.add_ctty(ctty);
        }
    }

    /// The terminals of the images.
    pub fn infos(&self) -> &[TtyInfoEntry] {
        &self.infos
    }

    fn has_info(&self, id: u32) -> bool {
        self.infos.iter().any(|t| t.id == id)
    }

    fn add_info(&mut self, e: TtyInfoEntry) {
        if !self.has_info(e.id) {
            self.infos.push(e);
        }
    }

    /// Dump: the terminals that are the caller's, by key
    /// (`tty[RDEV:DEV]`).
    pub fn set_external(&mut self, keys: Vec<String>) {
        self.external = keys;
    }

    /// Dump: whether the terminal with key `key` is the caller's.
    pub(crate) fn is_external(&self, key: &str) -> bool {
        self.external.iter().any(|k| k == key)
    }

    /// Restore: the ptys the mount restore made, by index (see
    /// [`crate::ns::mnt`]).
    pub fn give_ptys(&mut self, ptys: Vec<(u32, OwnedFd)>) {
        self.premade.extend(ptys);
    }

    /// Restore: the indices of ptys whose master was outside the tree (a
    /// slave entry without a master entry).
    pub fn orphan_ptys(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .infos
            .iter()
            .filter(|t| t.r#type == TtyType::Pty as i32 && t.id % 2 == 0)
            .filter_map(|t| t.pty.as_ref().map(|p| p.index))
            .filter(|&i| !self.has_info(end_id(i, true)))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Restore: the keys of the terminals the caller must give
    /// (`--inherit-fd fd[N]:tty[RDEV:DEV]`).
    pub(crate) fn external_keys(&self) -> impl Iterator<Item = String> + '_ {
        self.infos.iter().filter_map(ext_key)
    }

    /// Write `tty-info.img` and `tty-data.img` (where there is anything).
    pub(crate) fn write(&self, dir: &Dir) -> Result<()> {
        if !self.infos.is_empty() {
            dir.write_all(img::TTY_INFO, 0, &self.infos)?;
        }
        if !self.data.is_empty() {
            dir.write_all(img::TTY_DATA, 0, &self.data)?;
        }
        Ok(())
    }

    /// Load `tty-info.img` and `tty-data.img`, where they are.
    pub(crate) fn load(dir: &Dir) -> Result<Ttys> {
        let mut t = Ttys::default();
        if dir.exists(img::TTY_INFO, 0) {
            t.infos = dir.read_all(img::TTY_INFO, 0)?;
        }
        if dir.exists(img::TTY_DATA, 0) {
            t.data = dir.read_all(img::TTY_DATA, 0)?;
        }
        Ok(t)
    }
}

impl Table {
    /// Dump: a copy of the master of pty `index`, if a task of the tree
    /// has it.
    pub(crate) fn pty_master(&self, index: u32) -> Option<OwnedFd> {
        for &pid in &self.tree {
            let Ok(fds) = proc::fds(pid) else { continue };
            for f in fds
                .iter()
                .filter(|f| f.target == "/dev/ptmx" || f.target == "/dev/pts/ptmx")
            {
                let Ok(m) =
                    kernel::fd::pidfd_open(pid).and_then(|p| kernel::fd::pidfd_getfd(&p, f.fd))
                else {
                    continue;
                };
                let mut n = -1;
                if kernel::tty::tty_ioctl_int(m.as_fd(), libc::TIOCGPTN, &mut n).is_ok()
                    && u32::try_from(n).ok() == Some(index)
                {
                    return Some(m);
                }
            }
        }
        None
    }
}

/// Whether `major` is a terminal's: a console, a virtual terminal or
/// serial line, or a pty (BSD or Unix 98 slave).
pub(crate) fn is_tty_major(major: u32) -> bool {
    matches!(major, 4 | 5 | 136..=143)
}

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
        // Apart from the ids of pty ends (index * 2 + 1 or 2).
        id: 0x8000_0000 | st.tty_nr,
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
    pst: &stasis_proto::images::PstreeEntry,
    fdinfo: &[stasis_proto::images::FdinfoEntry],
) -> Result<()> {
    let pid = r.tid;
    // By the session's number in the images (the tree's own PID namespace).
    let Some(info) = files
        .ttys
        .infos()
        .iter()
        .find(|i| i.sid == pst.pid && i.id & 0x8000_0000 != 0)
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
        let at = trampoline::put(pid, t, trampoline::layout::PGRP, &info.pgrp.to_ne_bytes())?;
        r.call(
            "ioctl(TIOCSPGRP)",
            nr::IOCTL,
            [fd, libc::TIOCSPGRP, at, 0, 0, 0],
        )?;
    }
    Ok(())
}

/// `--shell-job`: the terminal of the shell root task `pid` ran from (its
/// session is outside the tree), recorded when the job was the terminal's
/// foreground group, so that a restore run in the foreground of a shell
/// gives it the terminal again.
pub fn dump_shell_job(pid: Pid, st: &proc::Stat) -> Option<TtyInfoEntry> {
    if st.sid == pid.as_raw() || st.tty_nr == 0 || st.tpgid != st.pgid {
        return None;
    }
    let rdev = rdev_of_tty_nr(st.tty_nr);
    Some(TtyInfoEntry {
        id: 0x8000_0000 | st.tty_nr,
        r#type: TtyType::ExtTty as i32,
        sid: st.sid.cast_unsigned(),
        pgrp: st.tpgid.cast_unsigned(),
        rdev: u32::try_from(rdev).unwrap_or(0),
        ..TtyInfoEntry::default()
    })
}

/// The restore's own controlling terminal, when the shell job `root` was
/// dumped in the foreground of that terminal and the restore runs in its
/// foreground too: the job is given it.
pub fn shell_job_terminal(
    files: &Table,
    root: &stasis_proto::images::PstreeEntry,
) -> Option<OwnedFd> {
    let dumped =
        files.ttys.infos().iter().find(|i| {
            i.r#type == TtyType::ExtTty as i32 && i.sid == root.sid && i.pgrp == root.pgid
        })?;
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open("/dev/tty");
    let Ok(tty) = tty else {
        tracing::warn!(
            "the job was in the foreground of its terminal; this restore has no terminal, so it runs in the background"
        );
        return None;
    };
    // /dev/tty's own inode is (5, 0): the terminal is the one /proc names.
    let same = proc::stat(nix::unistd::getpid(), None)
        .is_ok_and(|st| rdev_of_tty_nr(st.tty_nr) == u64::from(dumped.rdev));
    let ours = nix::unistd::tcgetpgrp(tty.as_fd()).ok() == Some(nix::unistd::getpgrp());
    if !same || !ours {
        tracing::warn!(
            "the job was in the foreground of its terminal; the restore runs in the background or on another terminal, so the job does too"
        );
        return None;
    }
    Some(OwnedFd::from(tty))
}

/// In a task being restored (the shell job's root, just made leader of its
/// group): take the foreground of the terminal `tty` of the session.
pub fn take_foreground(tty: std::os::fd::BorrowedFd<'_>) -> std::result::Result<(), Errno> {
    // A group outside the foreground may take it only with SIGTTOU blocked
    // (the engine sets the task's mask later).
    let ttou = nix::sys::signal::SigSet::from(nix::sys::signal::Signal::SIGTTOU);
    nix::sys::signal::pthread_sigmask(nix::sys::signal::SigmaskHow::SIG_BLOCK, Some(&ttou), None)?;
    nix::unistd::tcsetpgrp(tty, nix::unistd::getpgrp())
}

/// Wait for the restored shell job `root` that holds the terminal `tty`,
/// as a shell waits for its foreground job: when it stops (^Z) the engine
/// takes the terminal back and stops too, so the shell sees its job
/// stopped; continued in the foreground (`fg`) it hands the terminal to the
/// job again and continues it. Its exit code (128+signal if killed).
pub fn wait_foreground(root: Pid, tty: &OwnedFd) -> i32 {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, killpg, pthread_sigmask};
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    let me = nix::unistd::getpgrp();
    let job = nix::unistd::getpgid(Some(root)).unwrap_or(root);
    // Taking the terminal back from the background needs SIGTTOU blocked.
    let _ = pthread_sigmask(
        SigmaskHow::SIG_BLOCK,
        Some(&SigSet::from(Signal::SIGTTOU)),
        None,
    );
    let give_back = || {
        let _ = nix::unistd::tcsetpgrp(tty.as_fd(), me);
    };
    loop {
        match waitpid(root, Some(WaitPidFlag::WUNTRACED | WaitPidFlag::__WALL)) {
            Ok(WaitStatus::Exited(_, code)) => {
                give_back();
                return code;
            }
            Ok(WaitStatus::Signaled(_, sig, _)) => {
                give_back();
                return 128 + sig as i32;
            }
            Ok(WaitStatus::Stopped(..)) => {
                give_back();
                let _ = kill(nix::unistd::getpid(), Signal::SIGTSTP);
                // Continued: by `fg` with the terminal, by `bg` without.
                if nix::unistd::tcgetpgrp(tty.as_fd()).ok() == Some(me) {
                    let _ = nix::unistd::tcsetpgrp(tty.as_fd(), job);
                }
                let _ = killpg(job, Signal::SIGCONT);
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => {
                give_back();
                return 1;
            }
        }
    }
}

/// Pseudo-terminal ends whose master is in the tree: the open file
/// (`tty_file_entry` in `files.img`), each end's state (`tty_info_entry`:
/// lock, packet mode, termios, window size, index) and the bytes queued
/// for each end (`tty-data.img`). The restore opens a new pair, on the same
/// index when it is free.
#[derive(Debug)]
pub struct Tty;

/// Major of /dev/ptmx (5, minor 2) and the first of the slaves' majors.
const PTMX: (u64, u64) = (5, 2);
const PTS_MAJOR: std::ops::RangeInclusive<u64> = 136..=143;

/// Which end of which pty an fd is: (index, master).
pub fn pty_end(rdev: u64, master_index: impl FnOnce() -> Option<u32>) -> Option<(u32, bool)> {
    let (maj, min) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
    if (maj, min) == PTMX {
        return master_index().map(|i| (i, true));
    }
    PTS_MAJOR
        .contains(&maj)
        .then(|| u32::try_from((maj - 136) * 256 + min).ok())
        .flatten()
        .map(|i| (i, false))
}

/// The tty_info id of one end of pty `index`.
pub fn end_id(index: u32, master: bool) -> u32 {
    index * 2 + if master { 1 } else { 2 }
}

fn winsize_entry(ws: [u16; 4]) -> WinsizeEntry {
    WinsizeEntry {
        ws_row: u32::from(ws[0]),
        ws_col: u32::from(ws[1]),
        ws_xpixel: u32::from(ws[2]),
        ws_ypixel: u32::from(ws[3]),
    }
}

fn termios_entry(t: &libc::termios) -> TermiosEntry {
    TermiosEntry {
        c_iflag: t.c_iflag,
        c_oflag: t.c_oflag,
        c_cflag: t.c_cflag,
        c_lflag: t.c_lflag,
        c_line: u32::from(t.c_line),
        c_ispeed: t.c_ispeed,
        c_ospeed: t.c_ospeed,
        c_cc: t.c_cc.iter().map(|&c| u32::from(c)).collect(),
    }
}

fn termios_of(e: &TermiosEntry) -> libc::termios {
    let mut cc = [0u8; libc::NCCS];
    for (d, s) in cc.iter_mut().zip(&e.c_cc) {
        *d = u8::try_from(*s).unwrap_or(0);
    }
    libc::termios {
        c_iflag: e.c_iflag,
        c_oflag: e.c_oflag,
        c_cflag: e.c_cflag,
        c_lflag: e.c_lflag,
        c_line: u8::try_from(e.c_line).unwrap_or(0),
        c_cc: cc,
        c_ispeed: e.c_ispeed,
        c_ospeed: e.c_ospeed,
    }
}

/// Read what is queued for reading on `fd` (non-blocking, consuming it).
fn drain(fd: &OwnedFd) -> std::result::Result<Vec<u8>, Errno> {
    let fl = fcntl(fd.as_fd(), FcntlArg::F_GETFL)?;
    fcntl(
        fd.as_fd(),
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(fl) | OFlag::O_NONBLOCK),
    )?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let res = loop {
        match nix::unistd::read(fd.as_fd(), &mut buf) {
            Ok(0) | Err(Errno::EAGAIN | Errno::EIO) => break Ok(()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(Errno::EINTR) => {}
            Err(e) => break Err(e),
        }
    };
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(OFlag::from_bits_truncate(fl)))?;
    res.map(|()| out)
}

/// Write `data` into `to` so that it lands, unchanged, in the queue of the
/// other end: with echo and output processing off on `slave` meanwhile.
fn requeue(to: &OwnedFd, slave: &OwnedFd, data: &[u8]) -> std::result::Result<(), Errno> {
    if data.is_empty() {
        return Ok(());
    }
    let saved = nix::sys::termios::tcgetattr(slave)?;
    let mut quiet: libc::termios = saved.clone().into();
    quiet.c_lflag &= !(libc::ECHO | libc::ICANON | libc::ISIG | libc::IEXTEN);
    quiet.c_oflag &= !libc::OPOST;
    quiet.c_iflag &= !(libc::ICRNL | libc::INLCR | libc::IGNCR | libc::ISTRIP | libc::IXON);
    let quiet = nix::sys::termios::Termios::from(quiet);
    nix::sys::termios::tcsetattr(slave, nix::sys::termios::SetArg::TCSANOW, &quiet)?;
    let mut before = 0;
    kernel::tty::tty_ioctl_int(slave.as_fd(), libc::FIONREAD, &mut before)?;
    let res = nix::unistd::write(to, data).and_then(|n| {
        if n == data.len() {
            Ok(())
        } else {
            Err(Errno::EAGAIN)
        }
    });
    // Bytes written to the master reach the slave's line discipline later,
    // from a kernel worker: wait until they are queued, or the termios put
    // back below would echo them.
    if res.is_ok() && to.as_raw_fd() != slave.as_raw_fd() {
        let want = before.saturating_add(i32::try_from(data.len()).unwrap_or(i32::MAX));
        for _ in 0..2000 {
            let mut now = 0;
            kernel::tty::tty_ioctl_int(slave.as_fd(), libc::FIONREAD, &mut now)?;
            if now >= want {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    nix::sys::termios::tcsetattr(slave, nix::sys::termios::SetArg::TCSANOW, &saved)?;
    res
}

/// The state of both ends of pty `index`, read through its master at
/// dump: what its two `tty_info_entry`s and its queued bytes are made of.
struct PtyState {
    locked: bool,
    packet_mode: bool,
    winsize: WinsizeEntry,
    /// The slave's, when it is unlocked (read through the peer).
    termios: Option<TermiosEntry>,
    /// Bytes queued for each end, by end id.
    data: Vec<(u32, Vec<u8>)>,
}

impl PtyState {
    /// Read the state through master `m`; `what` names the fd in errors.
    fn read(cx: &FdCtx<'_>, what: &str, m: &OwnedFd, index: u32) -> Result<Self> {
        let fail = |step: &str| Error::dump(cx.pid, format!("{what}: {step}"));
        let mut locked = 0;
        kernel::tty::tty_ioctl_int(m.as_fd(), libc::TIOCGPTLCK, &mut locked)
            .map_err(fail("TIOCGPTLCK"))?;
        let mut pkt = 0;
        kernel::tty::tty_ioctl_int(m.as_fd(), libc::TIOCGPKT, &mut pkt)
            .map_err(fail("TIOCGPKT"))?;
        let ws = kernel::tty::tty_winsize(m.as_fd()).map_err(fail("TIOCGWINSZ"))?;
        let peer = if locked == 0 {
            Some(
                kernel::tty::pty_peer(m.as_fd(), libc::O_RDWR | libc::O_NOCTTY)
                    .map_err(fail("TIOCGPTPEER"))?,
            )
        } else {
            None
        };
        let termios = match &peer {
            Some(s) => Some(nix::sys::termios::tcgetattr(s).map_err(fail("tcgetattr"))?),
            None => None,
        };
        let data = match &peer {
            Some(s) => queued(cx, what, m, s, index)?,
            None => Vec::new(),
        };
        Ok(Self {
            locked: locked != 0,
            packet_mode: pkt != 0,
            winsize: winsize_entry(ws),
            termios: termios.map(|t| termios_entry(&t.into())),
            data,
        })
    }

    /// Add both ends' entries and their queued bytes to the table.
    fn add_to(self, table: &mut Table, index: u32) {
        let info = |id: u32, rdev: u64| TtyInfoEntry {
            id,
            r#type: TtyType::Pty as i32,
            locked: self.locked,
            exclusive: false,
            packet_mode: self.packet_mode,
            sid: 0,
            pgrp: 0,
            rdev: u32::try_from(rdev).unwrap_or(0),
            termios: self.termios.clone(),
            termios_locked: None,
            winsize: Some(self.winsize),
            pty: Some(TtyPtyEntry { index }),
            dev: None,
            uid: None,
            gid: None,
        };
        let slave_rdev =
            nix::sys::stat::makedev(136 + u64::from(index) / 256, u64::from(index) % 256);
        table.ttys.add_info(info(
            end_id(index, true),
            nix::sys::stat::makedev(PTMX.0, PTMX.1),
        ));
        table.ttys.add_info(info(end_id(index, false), slave_rdev));
        for (tty_id, d) in self.data.into_iter().filter(|d| !d.1.is_empty()) {
            table.ttys.data.push(TtyDataEntry { tty_id, data: d });
        }
    }
}

/// The bytes queued between master `m` and slave `s` of pty `index`: for
/// the slave to read, and for the master; put back at once (the tree keeps
/// them whatever the dump's fate). A partial canonical line is refused.
fn queued(
    cx: &FdCtx<'_>,
    what: &str,
    m: &OwnedFd,
    s: &OwnedFd,
    index: u32,
) -> Result<Vec<(u32, Vec<u8>)>> {
    let fail = |step: &str| Error::dump(cx.pid, format!("{what}: {step}"));
    let for_slave = drain(s).map_err(fail("input queued for the slave"))?;
    let mut left = 0;
    kernel::tty::tty_ioctl_int(s.as_fd(), libc::FIONREAD, &mut left).map_err(fail("FIONREAD"))?;
    let for_master = drain(m).map_err(fail("output queued for the master"))?;
    requeue(m, s, &for_slave).map_err(fail("putting its input back"))?;
    requeue(s, s, &for_master).map_err(fail("putting its output back"))?;
    if left > 0 {
        return Err(Error::Unsupported {
            pid: cx.pid,
            what: format!(
                "{what}: a partial line of input (canonical mode) that cannot be read without taking it,"
            ),
        });
    }
    Ok(vec![
        (end_id(index, false), for_slave),
        (end_id(index, true), for_master),
    ])
}

impl FileKind for Tty {
    type Entry = TtyFileEntry;
    const NAME: &'static str = "tty";

    fn set_id(e: &mut TtyFileEntry, id: u32) {
        e.id = id;
    }

    fn dump(cx: &FdCtx<'_>, table: &mut Table) -> Result<Kind> {
        let what = format!("fd {} ({})", cx.fd.fd, cx.fd.target);
        let fail = |step: &str| Error::dump(cx.pid, format!("{what}: {step}"));
        let dup = cx.dup().map_err(fail("a copy of it"))?;
        if table
            .ttys
            .is_external(&key_of(cx.meta.rdev(), cx.meta.dev()))
        {
            let info = ext_tty(cx, &dup)?;
            let id = info.id;
            table.ttys.add_info(info);
            return Ok(file_entry(cx, id));
        }
        let (index, master) = pty_end(cx.meta.rdev(), || {
            let mut n = 0;
            kernel::tty::tty_ioctl_int(dup.as_fd(), libc::TIOCGPTN, &mut n).ok()?;
            u32::try_from(n).ok()
        })
        .ok_or_else(|| cx.format_err("pty index"))?;
        let id = end_id(index, master);
        if table.ttys.has_info(id) {
            return Ok(file_entry(cx, id));
        }
        // Both ends' state, read through the master (and its peer).
        let m = if master {
            Some(dup.try_clone().map_err(|e| Error::Proc {
                pid: cx.pid,
                path: what.clone(),
                err: e,
            })?)
        } else {
            table.pty_master(index)
        };
        let Some(m) = m else {
            if !table.opts.orphan_pts_master {
                return Err(cx.format_err("pty master"));
            }
            table.ttys.add_info(orphan_slave(cx, &dup, index)?);
            return Ok(file_entry(cx, id));
        };
        PtyState::read(cx, &what, &m, index)?.add_to(table, index);
        Ok(file_entry(cx, id))
    }

    fn open(e: &TtyFileEntry, cx: &mut OpenCtx<'_>) -> Result<OwnedFd> {
        let info = cx
            .table
            .ttys
            .infos()
            .iter()
            .find(|i| i.id == e.tty_info_id)
            .ok_or_else(|| {
                img::TTY_INFO.bad(
                    0,
                    format!("tty {} of file {} is missing", e.tty_info_id, e.id),
                )
            })?;
        if let Some(key) = ext_key(info) {
            // The caller's terminal, as it gave it.
            let given = cx
                .table
                .inherited
                .get(&key)
                .ok_or_else(|| not_given(&key))?;
            return given.try_clone().map_err(|err| Error::Proc {
                pid: cx.pid,
                path: key,
                err,
            });
        }
        let index = info.pty.as_ref().map_or(0, |p| p.index);
        let master = e.tty_info_id % 2 == 1;
        if !cx.ptys.contains_key(&index) {
            let pair = make_pair(cx, index)?;
            cx.ptys.insert(index, pair);
        }
        let first_slave = !master && !cx.slave_taken(index);
        let (m, s, path) = cx
            .ptys
            .get(&index)
            .ok_or_else(|| img::TTY_INFO.bad(0, format!("pty {index} was not made")))?;
        let fd = if master {
            m.try_clone().map_err(|err| Error::Proc {
                pid: cx.pid,
                path: "a pty master".into(),
                err,
            })?
        } else if let Some(s) = s.as_ref().filter(|_| first_slave) {
            s.try_clone().map_err(|err| Error::Proc {
                pid: cx.pid,
                path: path.clone(),
                err,
            })?
        } else {
            // Another open file on the same slave: open it again.
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOCTTY)
                .open(path)
                .map(OwnedFd::from)
                .map_err(|err| Error::OpenFile {
                    pid: cx.pid,
                    fd: cx.fd,
                    path: path.clone(),
                    err,
                })?
        };
        let fl = OFlag::from_bits_truncate(e.flags.cast_signed() & libc::O_NONBLOCK);
        fcntl(fd.as_fd(), FcntlArg::F_SETFL(fl)).map_err(cx.err("tty flags"))?;
        Ok(fd)
    }
}

/// The key of a terminal the caller gives (`--external` at the dump,
/// `--inherit-fd` at the restore), as CRIU writes it: device number and
/// device, in hex.
pub fn key_of(rdev: u64, dev: u64) -> String {
    format!("tty[{rdev:x}:{dev:x}]")
}

/// The key of an external terminal of the images, if `t` is one.
pub fn ext_key(t: &TtyInfoEntry) -> Option<String> {
    (t.r#type == TtyType::ExtTty as i32 && t.id & EXT_ID != 0)
        .then(|| key_of(u64::from(t.rdev), u64::from(t.dev.unwrap_or(0))))
}

/// The images have external terminal `key` and the restore was not given
/// it.
pub fn not_given(key: &str) -> Error {
    img::TTY_INFO.bad(
        0,
        format!(
            "terminal {key} was the caller's at the dump; give it with --inherit-fd fd[N]:{key}"
        ),
    )
}

/// Ids of external terminals' entries (apart from pty ends and the
/// controlling terminals' records).
const EXT_ID: u32 = 0x4000_0000;

/// A terminal that is the caller's (`--external tty[RDEV:DEV]`): its
/// termios and window size, read through it; nothing else of it is taken.
fn ext_tty(cx: &FdCtx<'_>, fd: &OwnedFd) -> Result<TtyInfoEntry> {
    let what = format!("fd {} ({}, an external terminal)", cx.fd.fd, cx.fd.target);
    let fail = |step: &str| Error::dump(cx.pid, format!("{what}: {step}"));
    let termios = nix::sys::termios::tcgetattr(fd).map_err(fail("tcgetattr"))?;
    let ws = kernel::tty::tty_winsize(fd.as_fd()).map_err(fail("TIOCGWINSZ"))?;
    let rdev = u32::try_from(cx.meta.rdev()).unwrap_or(0);
    Ok(TtyInfoEntry {
        id: EXT_ID | (rdev & (EXT_ID - 1)),
        r#type: TtyType::ExtTty as i32,
        rdev,
        dev: u32::try_from(cx.meta.dev()).ok(),
        termios: Some(termios_entry(&termios.into())),
        winsize: Some(winsize_entry(ws)),
        ..TtyInfoEntry::default()
    })
}

fn file_entry(cx: &FdCtx<'_>, tty_info_id: u32) -> Kind {
    Kind::Tty(TtyFileEntry {
        id: 0,
        tty_info_id,
        flags: cx.flags(),
        fown: FownEntry::default(),
        regf_id: None,
    })
}

/// The state of slave `index` whose master is outside the tree, read
/// through the slave (`fd`): its termios, window size and owner. What is
/// queued between it and the master is the caller's (its master is), so
/// nothing of it is taken; there is no master entry, which is how the
/// restore knows to make one and hand it over.
fn orphan_slave(cx: &FdCtx<'_>, fd: &OwnedFd, index: u32) -> Result<TtyInfoEntry> {
    let what = format!(
        "fd {} ({}, a pty whose master is outside the tree)",
        cx.fd.fd, cx.fd.target
    );
    let fail = |step: &str| Error::dump(cx.pid, format!("{what}: {step}"));
    let termios = nix::sys::termios::tcgetattr(fd).map_err(fail("tcgetattr"))?;
    let ws = kernel::tty::tty_winsize(fd.as_fd()).map_err(fail("TIOCGWINSZ"))?;
    Ok(TtyInfoEntry {
        id: end_id(index, false),
        r#type: TtyType::Pty as i32,
        locked: false,
        exclusive: false,
        packet_mode: false,
        sid: 0,
        pgrp: 0,
        rdev: u32::try_from(cx.meta.rdev()).unwrap_or(0),
        termios: Some(termios_entry(&termios.into())),
        termios_locked: None,
        winsize: Some(winsize_entry(ws)),
        pty: Some(TtyPtyEntry { index }),
        dev: u32::try_from(cx.meta.dev()).ok(),
        uid: Some(cx.meta.uid()),
        gid: Some(cx.meta.gid()),
    })
}

/// Open a new pty for `index` (the same index if free), with the dumped
/// state and queued bytes; (master, slave unless locked, slave path). A
/// pty the mount restore made already (the bind source of a container's
/// /dev/console) is taken as it is. Paths are the tree's: under --root they
/// are looked up from there.
fn make_pair(cx: &OpenCtx<'_>, index: u32) -> Result<(OwnedFd, Option<OwnedFd>, String)> {
    let infos = cx.table.ttys.infos();
    let mi = infos.iter().find(|i| i.id == end_id(index, true));
    let si = infos.iter().find(|i| i.id == end_id(index, false));
    let err = |step: &str| cx.err(&format!("pty {index}: {step}"));
    let master = match cx.table.ttys.premade.get(&index) {
        Some(m) => m.try_clone().map_err(|e| Error::Proc {
            pid: cx.pid,
            path: format!("the master of pty {index}"),
            err: e,
        })?,
        None => {
            in_root(cx, &|| kernel::tty::open_pty(None, index)).map_err(err("open /dev/ptmx"))?
        }
    };
    let mut n = 0;
    kernel::tty::tty_ioctl_int(master.as_fd(), libc::TIOCGPTN, &mut n).map_err(err("TIOCGPTN"))?;
    if u32::try_from(n).ok() != Some(index) {
        tracing::warn!(
            index,
            got = n,
            "pty index taken; the restored pty has another"
        );
    }
    let path = format!("/dev/pts/{n}");
    let mut unlock = 0;
    kernel::tty::tty_ioctl_int(master.as_fd(), libc::TIOCSPTLCK, &mut unlock)
        .map_err(err("unlock"))?;
    let slave = open_slave(cx, &path)?;
    if let (Some(uid), Some(gid)) = (si.and_then(|i| i.uid), si.and_then(|i| i.gid)) {
        // The owner the container's runtime gave its console.
        if let Err(e) = nix::unistd::fchown(&slave, Some(uid.into()), Some(gid.into())) {
            tracing::warn!(index, uid, gid, "pty: its owner is not set again: {e}");
        }
    }
    refill(cx, index, &master, &slave)?;
    let locked = set_state(cx, index, &master, &slave, mi.or(si), si)?;
    Ok((master, (!locked).then_some(slave), path))
}

/// Run `f` with the tree's root as the root under --root, so that the
/// paths it opens are the tree's.
fn in_root(
    cx: &OpenCtx<'_>,
    f: &dyn Fn() -> std::result::Result<OwnedFd, Errno>,
) -> std::result::Result<OwnedFd, Errno> {
    match &cx.table.root {
        Some(r) => crate::ns::mnt::within_root(r, f).and_then(|r| r),
        None => f(),
    }
}

/// The slave at `path`, opened by path as the task opened it (open(2) adds
/// O_LARGEFILE, which fcntl cannot).
fn open_slave(cx: &OpenCtx<'_>, path: &str) -> Result<OwnedFd> {
    in_root(cx, &|| {
        nix::fcntl::open(
            path,
            OFlag::O_RDWR | OFlag::O_NOCTTY,
            nix::sys::stat::Mode::empty(),
        )
    })
    .map_err(|e| Error::OpenFile {
        pid: cx.pid,
        fd: cx.fd,
        path: path.to_owned(),
        err: e.into(),
    })
}

/// Put back the bytes queued for each end of pty `index` at dump.
fn refill(cx: &OpenCtx<'_>, index: u32, master: &OwnedFd, slave: &OwnedFd) -> Result<()> {
    let err = |step: &str| cx.err(&format!("pty {index}: {step}"));
    let data = |id: u32| {
        cx.table
            .ttys
            .data
            .iter()
            .filter(move |d| d.tty_id == id)
            .flat_map(|d| d.data.iter().copied())
            .collect::<Vec<u8>>()
    };
    requeue(master, slave, &data(end_id(index, false))).map_err(err("input for the slave"))?;
    requeue(slave, slave, &data(end_id(index, true))).map_err(err("output for the master"))?;
    Ok(())
}

/// Set the dumped termios (the slave's, from `si`), then the window size,
/// packet mode and lock of `info` (the master's entry, else the slave's);
/// whether the pty is locked again.
fn set_state(
    cx: &OpenCtx<'_>,
    index: u32,
    master: &OwnedFd,
    slave: &OwnedFd,
    info: Option<&TtyInfoEntry>,
    si: Option<&TtyInfoEntry>,
) -> Result<bool> {
    let err = |step: &str| cx.err(&format!("pty {index}: {step}"));
    if let Some(t) = si.and_then(|i| i.termios.as_ref()) {
        let t = nix::sys::termios::Termios::from(termios_of(t));
        nix::sys::termios::tcsetattr(slave, nix::sys::termios::SetArg::TCSANOW, &t)
            .map_err(err("termios"))?;
    }
    if let Some(w) = info.and_then(|i| i.winsize.as_ref()) {
        let ws =
            [w.ws_row, w.ws_col, w.ws_xpixel, w.ws_ypixel].map(|v| u16::try_from(v).unwrap_or(0));
        kernel::tty::tty_set_winsize(master.as_fd(), ws).map_err(err("window size"))?;
    }
    if info.is_some_and(|i| i.packet_mode) {
        let mut on = 1;
        kernel::tty::tty_ioctl_int(master.as_fd(), libc::TIOCPKT, &mut on)
            .map_err(err("packet mode"))?;
    }
    let locked = info.is_some_and(|i| i.locked);
    if locked {
        let mut on = 1;
        kernel::tty::tty_ioctl_int(master.as_fd(), libc::TIOCSPTLCK, &mut on)
            .map_err(err("lock"))?;
    }
    Ok(locked)
}
