//! tun/tap devices through their files on `/dev/net/tun`: attaching a file
//! to a device by name (TUNSETIFF, which makes the device when there is
//! none), what an attached file tells of its device (TUNGETIFF, the
//! virtio header size, the send buffer, the device's network namespace),
//! and what makes a device like a dumped one (its index before it exists,
//! owner, group, persistence, queues detached).
//!
//! Wrappers return `Errno` without context; callers say what failed.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

use crate::ioctl::ioc;

/// The character device every tun file is an open of (misc 10:200).
pub const TUN_RDEV: (u64, u64) = (10, 200);

/// Flags of a device (`IFF_*` of if_tun.h) as TUNGETIFF gives them.
pub const IFF_TUN: u32 = 0x0001;
/// A tap device (Ethernet frames).
pub const IFF_TAP: u32 = 0x0002;
/// NAPI receive.
pub const IFF_NAPI: u32 = 0x0010;
/// NAPI fragments.
pub const IFF_NAPI_FRAGS: u32 = 0x0020;
/// Several files, one queue each.
pub const IFF_MULTI_QUEUE: u32 = 0x0100;
/// (TUNSETQUEUE) the file's queue is attached.
pub const IFF_ATTACH_QUEUE: u32 = 0x0200;
/// The file's queue is detached (TUNGETIFF; TUNSETQUEUE detaches it).
pub const IFF_DETACH_QUEUE: u32 = 0x0400;
/// The device outlives its files.
pub const IFF_PERSIST: u32 = 0x0800;
/// No packet information header.
pub const IFF_NO_PI: u32 = 0x1000;
/// A virtio-net header on each packet.
pub const IFF_VNET_HDR: u32 = 0x4000;

/// The flags a file attaching to a device gives it (the kernel's
/// TUN_FEATURES plus the device's type): what TUNSETIFF takes.
pub const IFF_SETTABLE: u32 =
    IFF_TUN | IFF_TAP | IFF_NAPI | IFF_NAPI_FRAGS | IFF_MULTI_QUEUE | IFF_NO_PI | IFF_VNET_HDR;

/// `struct ifreq` as the tun ioctls read it: a name and a short of flags.
#[repr(C)]
#[derive(Clone, Copy)]
struct Ifreq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _rest: [u8; 22],
}

/// Open `/dev/net/tun` with open(2) flags `flags` (O_RDWR, O_NONBLOCK, ...;
/// O_CLOEXEC is added). The file is of the calling thread's network
/// namespace.
pub fn open(flags: i32) -> Result<OwnedFd, Errno> {
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_CLOEXEC;
    nix::fcntl::open("/dev/net/tun", flags, nix::sys::stat::Mode::empty())
}

fn ifreq(name: &str, flags: u32) -> Result<Ifreq, Errno> {
    let mut r = Ifreq {
        name: [0; libc::IFNAMSIZ],
        // The kernel's ifr_flags is a short: the flags are its bits.
        flags: libc::c_short::from_ne_bytes(
            u16::try_from(flags & 0xffff).unwrap_or(0).to_ne_bytes(),
        ),
        _rest: [0; 22],
    };
    let b = name.as_bytes();
    if b.len() >= libc::IFNAMSIZ || b.contains(&0) {
        return Err(Errno::EINVAL);
    }
    r.name[..b.len()].copy_from_slice(b);
    Ok(r)
}

fn ioctl_ifreq(fd: BorrowedFd<'_>, req: libc::Ioctl, r: &mut Ifreq) -> Result<(), Errno> {
    // SAFETY: the tun requests taking an ifreq read and write at most the
    // struct, which `r` is, whole and exclusive for the call.
    Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), req, std::ptr::from_mut(r)) }).map(drop)
}

fn ioctl_set_int(fd: BorrowedFd<'_>, req: libc::Ioctl, v: i32) -> Result<(), Errno> {
    let mut v = v;
    // SAFETY: the request reads one int through its pointer argument.
    Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), req, &raw mut v) }).map(drop)
}

fn ioctl_get_int(fd: BorrowedFd<'_>, req: libc::Ioctl) -> Result<i32, Errno> {
    let mut v: libc::c_int = 0;
    // SAFETY: the request writes one int through its pointer argument.
    Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), req, &raw mut v) })?;
    Ok(v)
}

/// Attach `fd` to the device `name` with `flags` (those of
/// [`IFF_SETTABLE`]); a device of that name is made when there is none.
pub fn set_iff(fd: BorrowedFd<'_>, name: &str, flags: u32) -> Result<(), Errno> {
    let mut r = ifreq(name, flags & IFF_SETTABLE)?;
    ioctl_ifreq(fd, libc::TUNSETIFF, &mut r)
}

/// The device `fd` is attached to: its name and flags (IFF_DETACH_QUEUE
/// when this file's queue is detached). EBADFD: attached to none.
pub fn get_iff(fd: BorrowedFd<'_>) -> Result<(String, u32), Errno> {
    let mut r = ifreq("", 0)?;
    ioctl_ifreq(fd, libc::TUNGETIFF, &mut r)?;
    let end = r.name.iter().position(|&b| b == 0).unwrap_or(r.name.len());
    let name = String::from_utf8_lossy(&r.name[..end]).into_owned();
    Ok((name, u32::from(u16::from_ne_bytes(r.flags.to_ne_bytes()))))
}

/// Give the device `fd` will make (by its next [`set_iff`]) index `index`.
pub fn set_ifindex(fd: BorrowedFd<'_>, index: u32) -> Result<(), Errno> {
    let mut v = index.cast_signed();
    crate::ioctl::ioctl_int_ptr(fd, ioc::TUNSETIFINDEX, &mut v).map(drop)
}

/// Make the device of `fd` outlive its files, or not.
pub fn set_persist(fd: BorrowedFd<'_>, on: bool) -> Result<(), Errno> {
    // SAFETY: TUNSETPERSIST takes its value as the argument itself.
    Errno::result(unsafe {
        libc::ioctl(fd.as_raw_fd(), libc::TUNSETPERSIST, libc::c_ulong::from(on))
    })
    .map(drop)
}

/// Let user `uid` use the device of `fd`.
pub fn set_owner(fd: BorrowedFd<'_>, uid: u32) -> Result<(), Errno> {
    // SAFETY: TUNSETOWNER takes the uid as the argument itself.
    Errno::result(unsafe {
        libc::ioctl(fd.as_raw_fd(), libc::TUNSETOWNER, libc::c_ulong::from(uid))
    })
    .map(drop)
}

/// Let group `gid` use the device of `fd`.
pub fn set_group(fd: BorrowedFd<'_>, gid: u32) -> Result<(), Errno> {
    // SAFETY: TUNSETGROUP takes the gid as the argument itself.
    Errno::result(unsafe {
        libc::ioctl(fd.as_raw_fd(), libc::TUNSETGROUP, libc::c_ulong::from(gid))
    })
    .map(drop)
}

/// The virtio-net header size of the device of `fd`.
pub fn vnet_hdr_sz(fd: BorrowedFd<'_>) -> Result<i32, Errno> {
    ioctl_get_int(fd, libc::TUNGETVNETHDRSZ)
}

/// Set the virtio-net header size of the device of `fd`.
pub fn set_vnet_hdr_sz(fd: BorrowedFd<'_>, size: i32) -> Result<(), Errno> {
    ioctl_set_int(fd, libc::TUNSETVNETHDRSZ, size)
}

/// The send buffer of the device of `fd`.
pub fn sndbuf(fd: BorrowedFd<'_>) -> Result<i32, Errno> {
    ioctl_get_int(fd, libc::TUNGETSNDBUF)
}

/// Set the send buffer of the device of `fd`.
pub fn set_sndbuf(fd: BorrowedFd<'_>, size: i32) -> Result<(), Errno> {
    ioctl_set_int(fd, libc::TUNSETSNDBUF, size)
}

/// Detach the queue of `fd` from its multi-queue device, or attach it
/// again.
pub fn set_queue(fd: BorrowedFd<'_>, attached: bool) -> Result<(), Errno> {
    let flags = if attached {
        IFF_ATTACH_QUEUE
    } else {
        IFF_DETACH_QUEUE
    };
    let mut r = ifreq("", flags)?;
    ioctl_ifreq(fd, libc::TUNSETQUEUE, &mut r)
}

/// The network namespace of the device `fd` is attached to.
pub fn dev_netns(fd: BorrowedFd<'_>) -> Result<OwnedFd, Errno> {
    // SAFETY: TUNGETDEVNETNS takes no argument and returns a new fd.
    let ns = Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNGETDEVNETNS) })?;
    // SAFETY: the kernel just gave us this fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(ns) })
}
