//! Helpers shared by the test programs: /proc readers for the test's own
//! state, fd placement, network-namespace setup and the raw calls several
//! categories need.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};

use crate::testlib::{Fail, OrFail, Res, slurp};

/// Put a duplicate of `fd` at exactly `target` (which must be free).
pub fn dup_at(fd: impl AsFd, target: RawFd) -> Res<OwnedFd> {
    // SAFETY: dup2 only touches the fd table; target is checked free by the
    // caller's design, and a stray close of a used target is caught below.
    let r = unsafe { libc::dup2(fd.as_fd().as_raw_fd(), target) };
    if r != target {
        return Err(Fail::Sys(format!("dup2 to {target}: {}", Errno::last())));
    }
    // SAFETY: r is a fresh fd this process now owns and nothing else wraps.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// Replace the file at fd `target` by a duplicate of `fd` (dup2 over it),
/// leaving the returned ownership with the existing owner of `target`.
pub fn dup_over(fd: impl AsFd, target: &impl AsFd) -> Res {
    let target = target.as_fd().as_raw_fd();
    // SAFETY: dup2 atomically replaces target's open file; its OwnedFd stays
    // valid (it now refers to the new file) and is closed once by its owner.
    let r = unsafe { libc::dup2(fd.as_fd().as_raw_fd(), target) };
    if r == -1 {
        Err(Fail::Sys(format!("dup2 over {target}: {}", Errno::last())))
    } else {
        Ok(())
    }
}

/// The file status flags of an fd (F_GETFL).
pub fn getfl(fd: impl AsFd) -> Res<i32> {
    fcntl(fd, FcntlArg::F_GETFL).or_fail("F_GETFL")
}

/// Set the file status flags of an fd (F_SETFL).
pub fn setfl(fd: impl AsFd, flags: i32) -> Res {
    fcntl(fd, FcntlArg::F_SETFL(OFlag::from_bits_retain(flags)))
        .or_fail("F_SETFL")
        .map(drop)
}

/// The fd flags (F_GETFD).
pub fn getfd(fd: impl AsFd) -> Res<i32> {
    fcntl(fd, FcntlArg::F_GETFD).or_fail("F_GETFD")
}

/// The current offset of an fd.
pub fn offset(fd: impl AsFd) -> Res<i64> {
    nix::unistd::lseek(fd, 0, nix::unistd::Whence::SeekCur).or_fail("lseek")
}

/// /proc/self/fdinfo/FD as text.
pub fn fdinfo(fd: impl AsFd) -> Res<String> {
    slurp(format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd()))
}

/// The target of /proc/self/fd/FD.
pub fn fd_link(fd: impl AsFd) -> Res<String> {
    let p = format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd());
    std::fs::read_link(&p)
        .or_fail(&p)
        .map(|t| t.to_string_lossy().into_owned())
}

/// Write all of `data` to an fd.
pub fn write_all(fd: impl AsFd, data: &[u8]) -> Res {
    let mut done = 0;
    while done < data.len() {
        done += nix::unistd::write(fd.as_fd(), &data[done..]).or_fail("write")?;
    }
    Ok(())
}

/// Read exactly `n` bytes (or fewer at EOF / EAGAIN).
pub fn read_n(fd: impl AsFd, n: usize) -> Res<Vec<u8>> {
    let mut v = vec![0u8; n];
    let mut done = 0;
    while done < n {
        match nix::unistd::read(fd.as_fd(), &mut v[done..]) {
            Ok(0) | Err(Errno::EAGAIN) => break,
            Ok(k) => done += k,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(Fail::Sys(format!("read: {e}"))),
        }
    }
    v.truncate(done);
    Ok(v)
}

/// Bytes queued for reading (FIONREAD).
pub fn fionread(fd: impl AsFd) -> Res<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the valid pointer.
    let r = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::FIONREAD, &raw mut n) };
    if r == -1 {
        return Err(Fail::Sys(format!("FIONREAD: {}", Errno::last())));
    }
    usize::try_from(n).or_fail("FIONREAD value")
}

/// One line of /proc/self/maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapsLine {
    /// Start address.
    pub start: usize,
    /// End address.
    pub end: usize,
    /// `rwxp` string.
    pub perms: String,
    /// File offset.
    pub offset: u64,
    /// Path or pseudo-name, possibly empty.
    pub path: String,
}

/// Parse /proc/self/maps.
pub fn maps() -> Res<Vec<MapsLine>> {
    let text = slurp("/proc/self/maps")?;
    Ok(text.lines().filter_map(parse_maps_line).collect())
}

fn parse_maps_line(l: &str) -> Option<MapsLine> {
    let mut it = l.split_whitespace();
    let (s, e) = it.next()?.split_once('-')?;
    let perms = it.next()?.to_owned();
    let offset = u64::from_str_radix(it.next()?, 16).ok()?;
    let _dev = it.next()?;
    let _ino = it.next()?;
    let path = it.collect::<Vec<_>>().join(" ");
    Some(MapsLine {
        start: usize::from_str_radix(s, 16).ok()?,
        end: usize::from_str_radix(e, 16).ok()?,
        perms,
        offset,
        path,
    })
}

/// The maps line covering `addr`.
pub fn maps_at(addr: usize) -> Res<MapsLine> {
    maps()?
        .into_iter()
        .find(|m| m.start <= addr && addr < m.end)
        .ok_or_else(|| Fail::Mismatch(format!("no mapping covers {addr:#x}")))
}

/// The smaps block (header plus fields) of the VMA covering `addr`.
pub fn smaps_at(addr: usize) -> Res<String> {
    let text = slurp("/proc/self/smaps")?;
    let mut cur: Option<(bool, String)> = None;
    for l in text.lines() {
        if let Some(m) =
            parse_maps_line(l).filter(|_| !l.contains(':') || l.split_whitespace().count() >= 5)
        {
            if let Some((true, block)) = cur.take() {
                return Ok(block);
            }
            cur = Some((m.start <= addr && addr < m.end, String::new()));
        }
        if let Some((_, block)) = cur.as_mut() {
            block.push_str(l);
            block.push('\n');
        }
    }
    match cur {
        Some((true, block)) => Ok(block),
        _ => Err(Fail::Mismatch(format!("no smaps entry covers {addr:#x}"))),
    }
}

/// The `VmFlags` of the VMA covering `addr`, as words.
pub fn vmflags_at(addr: usize) -> Res<Vec<String>> {
    let block = smaps_at(addr)?;
    let flags = block
        .lines()
        .find_map(|l| l.strip_prefix("VmFlags:"))
        .ok_or_else(|| Fail::Sys("smaps has no VmFlags".into()))?;
    Ok(flags.split_whitespace().map(str::to_owned).collect())
}

/// A field of /proc/self/status.
pub fn self_status(key: &str) -> Res<String> {
    crate::testlib::status_field(&slurp("/proc/self/status")?, key)
        .ok_or_else(|| Fail::Sys(format!("/proc/self/status has no {key}")))
}

/// A field of /proc/self/task/TID/status.
pub fn task_status(tid: nix::unistd::Pid, key: &str) -> Res<String> {
    crate::testlib::status_field(&slurp(format!("/proc/self/task/{tid}/status"))?, key)
        .ok_or_else(|| Fail::Sys(format!("task {tid} status has no {key}")))
}

/// Bring the loopback interface up in the current network namespace.
pub fn loopback_up() -> Result<(), Errno> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *d = libc::c_char::from_ne_bytes([*s]);
    }
    // SAFETY: SIOCGIFFLAGS fills the flags member of the valid ifreq.
    Errno::result(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &raw mut ifr) })?;
    // SAFETY: the union's flags member was just written by the kernel.
    let flags = unsafe { ifr.ifr_ifru.ifru_flags };
    ifr.ifr_ifru.ifru_flags = flags | libc::c_short::try_from(libc::IFF_UP).unwrap_or(1);
    // SAFETY: SIOCSIFFLAGS reads the valid ifreq.
    Errno::result(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &raw mut ifr) })?;
    Ok(())
}

/// Move this process into a new network namespace with loopback up.
pub fn new_netns() -> Res {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).or_fail("unshare(CLONE_NEWNET)")?;
    loopback_up().or_fail("loopback up")
}

/// Parse a hex signal mask (as in /proc status SigBlk) into signal numbers.
pub fn sigmask_words(hex: &str) -> Res<u64> {
    u64::from_str_radix(hex.trim(), 16).or_fail("parse signal mask")
}

/// The bit of signal `sig` in a /proc-style mask.
pub fn sigbit(sig: i32) -> u64 {
    1u64 << (sig - 1).clamp(0, 63)
}

/// Real-time signal SIGRTMIN+n.
pub fn sigrt(n: i32) -> i32 {
    libc::SIGRTMIN() + n
}

/// The monotonic clock in nanoseconds.
pub fn mono_ns() -> u64 {
    clock_ns(nix::time::ClockId::CLOCK_MONOTONIC)
}

/// A clock in nanoseconds.
pub fn clock_ns(c: nix::time::ClockId) -> u64 {
    nix::time::clock_gettime(c).map_or(0, |ts| {
        u64::try_from(ts.tv_sec()).unwrap_or(0) * 1_000_000_000
            + u64::try_from(ts.tv_nsec()).unwrap_or(0)
    })
}

/// Process state letter from /proc/PID/stat.
pub fn proc_state(pid: nix::unistd::Pid) -> Res<char> {
    let stat = slurp(format!("/proc/{pid}/stat"))?;
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next())
        .ok_or_else(|| Fail::Sys(format!("bad /proc/{pid}/stat")))
}

/// The numeric fields of /proc/PID/stat after the command name (field 3 is
/// index 0).
pub fn proc_stat_fields(pid: nix::unistd::Pid) -> Res<Vec<String>> {
    let stat = slurp(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    Ok(rest.split_whitespace().map(str::to_owned).collect())
}

/// A raw signal set holding `sigs` (real-time signals included, which nix's
/// `Signal` cannot name).
pub fn sigset(sigs: &[i32]) -> libc::sigset_t {
    let mut s: libc::sigset_t = *nix::sys::signal::SigSet::empty().as_ref();
    for sig in sigs {
        // SAFETY: a valid sigset and a signal number in range.
        unsafe { libc::sigaddset(&raw mut s, *sig) };
    }
    s
}

/// Block `sigs` in the calling thread.
pub fn block_sigs(sigs: &[i32]) {
    let s = sigset(sigs);
    // SAFETY: a valid set pointer; only this thread's mask changes.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &raw const s, std::ptr::null_mut()) };
}

/// Unblock `sigs` in the calling thread.
pub fn unblock_sigs(sigs: &[i32]) {
    let s = sigset(sigs);
    // SAFETY: a valid set pointer; only this thread's mask changes.
    unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &raw const s, std::ptr::null_mut()) };
}

/// An int socket option.
#[allow(unsafe_code)]
pub fn sockopt_int(fd: &impl AsFd, level: i32, name: i32) -> Res<i32> {
    let mut v: libc::c_int = 0;
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4);
    // SAFETY: the kernel writes at most `len` bytes into `v`.
    let r = unsafe {
        libc::getsockopt(
            fd.as_fd().as_raw_fd(),
            level,
            name,
            (&raw mut v).cast(),
            &raw mut len,
        )
    };
    Errno::result(r).or_fail("getsockopt")?;
    Ok(v)
}
