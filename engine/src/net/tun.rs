//! tun and tap devices, and the files on `/dev/net/tun` attached to them.
//!
//! - A device of the tree's network namespace is a `net_device_entry` of
//!   type TUN in `netdev-1.img` with its `tun_link_entry` (flags, owner,
//!   group, virtio header size, send buffer; what only an attached file
//!   tells is read through one of the tree's, or, for a persistent device
//!   no file holds, through a file the dump attaches for a moment). The
//!   restore makes it with its index (TUNSETIFINDEX) and keeps it
//!   persistent until a file of the tree is attached again.
//! - A file is a `tunfile_entry` in `files.img` (the device it is attached
//!   to, whether its queue is detached) with, as CRIU writes them, a
//!   `reg_file_entry` of the same id holding its open flags. A file on a
//!   device of another namespace is refused, but for a persistent device
//!   of the engine's own (it is still there at the restore, and the file is
//!   attached to it again).

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use nix::errno::Errno;
use nix::unistd::Pid;
use stasis_kernel as kernel;
use stasis_kernel::rtnl;
use stasis_kernel::tun::{IFF_DETACH_QUEUE, IFF_NAPI, IFF_NAPI_FRAGS, IFF_PERSIST, IFF_SETTABLE};
use stasis_proto::images::file_entry::Kind;
use stasis_proto::images::{
    FdTypes, FileEntry, NdType, NetDeviceEntry, RegFileEntry, TunLinkEntry, TunfileEntry,
};

use crate::error::{EngineError as Error, Result};
use crate::files::{FdCtx, FileKind, OpenCtx, Table};
use crate::images::{Dir, img};

/// Files on `/dev/net/tun`.
#[derive(Debug)]
pub struct TunFile;

/// Whether a file of device number `rdev` (a character device) is a tun
/// file.
pub(crate) fn is_tun(meta: &std::fs::Metadata) -> bool {
    let (major, minor) = kernel::tun::TUN_RDEV;
    meta.file_type().is_char_device()
        && nix::sys::stat::major(meta.rdev()) == major
        && nix::sys::stat::minor(meta.rdev()) == minor
}

/// What the tun files of a dump or a restore keep.
#[derive(Debug, Default)]
pub(crate) struct Tuns {
    /// Dump: each file's `reg_file_entry` twin, by the task and fd it was
    /// found as (its id is given at the write).
    twins: Vec<(Pid, i32, RegFileEntry)>,
    /// Restore: each file's open flags (its twin's), by id.
    flags: HashMap<u32, u32>,
    /// Restore: the tun devices of the tree's network namespace, by name.
    devices: HashMap<String, TunLinkEntry>,
}

impl Tuns {
    /// Dump: the `reg_file_entry` twins of the tun files, each given the
    /// id of its file by `described` (the task and fd a file was found as
    /// → its id).
    pub(crate) fn twins(&self, described: impl Fn(Pid, i32) -> Option<u32>) -> Vec<FileEntry> {
        self.twins
            .iter()
            .filter_map(|(pid, fd, r)| {
                let id = described(*pid, *fd)?;
                Some(FileEntry {
                    r#type: FdTypes::Reg as i32,
                    id,
                    kind: Some(Kind::Reg(RegFileEntry { id, ..r.clone() })),
                })
            })
            .collect()
    }

    /// Restore: take the `reg_file_entry` twins of the tun files out of
    /// `entries` (their flags are kept here), and read the tun devices of
    /// the tree's network namespace, if it has one.
    pub(crate) fn load(dir: &Dir, entries: &mut Vec<FileEntry>) -> Result<Tuns> {
        let tun_ids: Vec<u32> = entries
            .iter()
            .filter(|e| matches!(e.kind, Some(Kind::Tunf(_))))
            .map(|e| e.id)
            .collect();
        let mut t = Tuns::default();
        if tun_ids.is_empty() {
            return Ok(t);
        }
        entries.retain(|e| match &e.kind {
            Some(Kind::Reg(r)) if tun_ids.contains(&e.id) => {
                t.flags.insert(e.id, r.flags);
                false
            }
            _ => true,
        });
        let ns = crate::ns::NS_ID;
        if dir.exists(img::NETDEV, ns) {
            let devs: Vec<NetDeviceEntry> = dir.read_all(img::NETDEV, ns)?;
            t.devices = devs
                .into_iter()
                .filter_map(|d| Some((d.name, d.tun?)))
                .collect();
        }
        Ok(t)
    }
}

/// The inode of a network namespace file.
fn ns_ino(path: &str) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.ino())
}

impl FileKind for TunFile {
    type Entry = TunfileEntry;
    const NAME: &'static str = "tun file";

    fn by_link(_link: &str) -> bool {
        // Known by its device number ([`is_tun`]), whatever its path.
        false
    }

    fn set_id(e: &mut TunfileEntry, id: u32) {
        e.id = id;
    }

    fn dump(cx: &FdCtx<'_>, table: &mut Table) -> Result<Kind> {
        let what = || format!("fd {} (a tun file)", cx.fd.fd);
        let fd = kernel::fd::pidfd_open(cx.pid)
            .and_then(|p| kernel::fd::pidfd_getfd(&p, cx.fd.fd))
            .map_err(Error::dump(cx.pid, what()))?;
        let twin = RegFileEntry {
            id: 0,
            flags: cx.flags(),
            pos: 0,
            fown: Default::default(),
            name: cx.fd.target.clone(),
            mnt_id: Some(cx.fd.mnt_id),
            ..RegFileEntry::default()
        };
        table.tuns.twins.push((cx.pid, cx.fd.fd, twin));
        let (name, flags) = match kernel::tun::get_iff(fd.as_fd()) {
            // Opened, attached to no device.
            Err(Errno::EBADFD) => return Ok(Kind::Tunf(TunfileEntry::default())),
            r => r.map_err(Error::dump(cx.pid, format!("{}: its device", what())))?,
        };
        let dev_ns = kernel::tun::dev_netns(fd.as_fd())
            .ok()
            .and_then(|ns| nix::sys::stat::fstat(ns.as_fd()).ok())
            .map(|st| st.st_ino);
        let task_ns = ns_ino(&format!("/proc/{}/ns/net", cx.pid));
        let engine_ns = ns_ino("/proc/thread-self/ns/net");
        let refuse = |why: &str| Error::Unsupported {
            pid: cx.pid,
            what: format!("{}, attached to tun device {name} {why}", what()),
        };
        let ns_id = if dev_ns.is_some() && dev_ns == task_ns && task_ns != engine_ns {
            Some(u32::try_from(crate::ns::NS_ID).unwrap_or(1))
        } else if dev_ns.is_some() && dev_ns == engine_ns {
            if flags & IFF_PERSIST == 0 {
                return Err(refuse(
                    "of the engine's network namespace, which is not persistent: it would be \
                     gone at the restore (make it persistent, or give the tree a network \
                     namespace of its own)",
                ));
            }
            None
        } else {
            return Err(refuse(
                "of a network namespace other than its task's (tun devices moved to another \
                 namespace)",
            ));
        };
        Ok(Kind::Tunf(TunfileEntry {
            id: 0,
            netdev: Some(name),
            detached: Some(flags & IFF_DETACH_QUEUE != 0),
            ns_id,
        }))
    }

    fn open(e: &TunfileEntry, cx: &mut OpenCtx<'_>) -> Result<OwnedFd> {
        let keep = libc::O_ACCMODE | libc::O_NONBLOCK | libc::O_APPEND;
        let oflags = cx
            .table
            .tuns
            .flags
            .get(&e.id)
            .map_or(libc::O_RDWR, |f| f.cast_signed() & keep);
        let fd = kernel::tun::open(oflags).map_err(cx.err("opening /dev/net/tun"))?;
        let Some(name) = e.netdev.as_deref() else {
            return Ok(fd);
        };
        let attach = format!("attaching it to tun device {name}");
        let saved = cx.table.tuns.devices.get(name);
        // A device of the tree's namespace was made by the restore, with
        // its flags; one outside is the persistent device it was attached
        // to, still there.
        let flags = match saved {
            Some(d) if e.ns_id.is_some() => d.flags,
            _ => outside_flags(name).map_err(|errno| Error::Net {
                what: format!("task {} fd {} ({attach})", cx.pid, cx.fd),
                errno,
                hint: " (the device was a persistent one outside the tree's network namespace: \
                       make it again before the restore)",
            })?,
        };
        kernel::tun::set_iff(fd.as_fd(), name, flags).map_err(cx.err(&attach))?;
        // A file takes the device's send buffer only when it is set, not
        // when it attaches.
        if let Some(d) = saved.filter(|_| e.ns_id.is_some()) {
            kernel::tun::set_sndbuf(fd.as_fd(), d.sndbuf.cast_signed())
                .map_err(cx.err(&format!("the send buffer of tun device {name}")))?;
        }
        if e.detached == Some(true) {
            kernel::tun::set_queue(fd.as_fd(), false)
                .map_err(cx.err(&format!("detaching its queue of tun device {name}")))?;
        }
        // Persistent since it was made: now that a file holds it, as it was.
        if e.ns_id.is_some() && saved.is_some_and(|d| d.flags & IFF_PERSIST == 0) {
            kernel::tun::set_persist(fd.as_fd(), false)
                .map_err(cx.err(&format!("making tun device {name} not persistent")))?;
        }
        Ok(fd)
    }
}

/// The flags of tun device `name` of the current network namespace, read
/// over route netlink (ENODEV: there is no such device).
fn outside_flags(name: &str) -> std::result::Result<u32, Errno> {
    let s = rtnl::open()?;
    rtnl::links(&s)?
        .into_iter()
        .find(|l| l.name == name)
        .and_then(|l| l.tun)
        .map(|t| t.flags)
        .ok_or(Errno::ENODEV)
}

/// What an attached file tells of its tun device: its flags (TUNGETIFF's),
/// virtio header size and send buffer.
fn read_attached(fd: &OwnedFd) -> std::result::Result<(u32, i32, i32), Errno> {
    let (_, flags) = kernel::tun::get_iff(fd.as_fd())?;
    Ok((
        flags & !IFF_DETACH_QUEUE,
        kernel::tun::vnet_hdr_sz(fd.as_fd())?,
        kernel::tun::sndbuf(fd.as_fd())?,
    ))
}

/// A file of one of `tasks` attached to tun device `name` of the current
/// thread's network namespace (`netns`: its inode).
fn holder(tasks: &[Pid], name: &str, netns: u64) -> Option<OwnedFd> {
    for &pid in tasks {
        let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for ent in rd.flatten() {
            let Some(n) = ent.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            if !std::fs::metadata(ent.path()).is_ok_and(|m| is_tun(&m)) {
                continue;
            }
            let fdinfo =
                std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{n}")).unwrap_or_default();
            let iff = fdinfo.lines().find_map(|l| l.strip_prefix("iff:"));
            if iff.map(str::trim) != Some(name) {
                continue;
            }
            let Ok(fd) = kernel::fd::pidfd_open(pid).and_then(|p| kernel::fd::pidfd_getfd(&p, n))
            else {
                continue;
            };
            let same_ns = kernel::tun::dev_netns(fd.as_fd())
                .ok()
                .and_then(|ns| nix::sys::stat::fstat(ns.as_fd()).ok())
                .is_some_and(|st| st.st_ino == netns);
            if same_ns {
                return Some(fd);
            }
        }
    }
    None
}

/// The `tun_link_entry` of tun device `l` of the current thread's network
/// namespace (that of the tree under `root`, whose tasks are `tasks`).
pub(crate) fn link_entry(root: Pid, l: &rtnl::Link, tasks: &[Pid]) -> Result<TunLinkEntry> {
    let info = l.tun.unwrap_or_default();
    let what = format!("tun device {} of its network namespace", l.name);
    let netns = ns_ino("/proc/thread-self/ns/net").unwrap_or(0);
    let fd = match holder(tasks, &l.name, netns) {
        Some(fd) => fd,
        None if info.flags & IFF_PERSIST != 0 && info.queues == 0 => {
            // Persistent, and no file holds it (but maybe a detached
            // queue of a multi-queue device): attached for a moment, with
            // the flags it has.
            let fd = kernel::tun::open(libc::O_RDWR).map_err(Error::dump(root, what.clone()))?;
            kernel::tun::set_iff(fd.as_fd(), &l.name, info.flags)
                .map_err(Error::dump(root, format!("attaching a file to {what}")))?;
            fd
        }
        None => {
            return Err(Error::Unsupported {
                pid: root,
                what: format!(
                    "{what}, attached to a file of a process outside the tree (its virtio \
                     header size and send buffer cannot be read)"
                ),
            });
        }
    };
    let (flags, vnethdr, sndbuf) =
        read_attached(&fd).map_err(Error::dump(root, format!("the settings of {what}")))?;
    let id = |v: Option<u32>| v.map_or(-1, u32::cast_signed);
    Ok(TunLinkEntry {
        // TUNGETIFF's 0x1000 is IFF_NO_PI or IFF_NOFILTER (the file has no
        // socket filter): the rest comes from route netlink, the NAPI
        // flags, which only a file tells, from the file.
        flags: info.flags | (flags & (IFF_NAPI | IFF_NAPI_FRAGS)),
        owner: id(info.owner),
        group: id(info.group),
        vnethdr: vnethdr.cast_unsigned(),
        sndbuf: sndbuf.cast_unsigned(),
    })
}

/// Make tun device `d` in the current network namespace (a new one), with
/// its index, and persistent until a file of the tree is attached to it
/// again ([`TunFile::open`]).
pub(crate) fn make_device(d: &NetDeviceEntry) -> Result<()> {
    let t = d.tun.as_ref().ok_or_else(|| {
        img::NETDEV.bad(
            crate::ns::NS_ID,
            format!("tun device {} without its tun_link_entry", d.name),
        )
    })?;
    debug_assert_eq!(d.r#type, NdType::Tun as i32);
    let err = |step: &str| {
        let what = format!("making tun device {} ({step})", d.name);
        move |errno| Error::Net {
            what,
            errno,
            hint: "",
        }
    };
    let fd = kernel::tun::open(libc::O_RDWR).map_err(err("opening /dev/net/tun"))?;
    kernel::tun::set_ifindex(fd.as_fd(), d.ifindex).map_err(err("its index"))?;
    kernel::tun::set_iff(fd.as_fd(), &d.name, t.flags & IFF_SETTABLE).map_err(err("TUNSETIFF"))?;
    if t.owner >= 0 {
        kernel::tun::set_owner(fd.as_fd(), t.owner.cast_unsigned()).map_err(err("its owner"))?;
    }
    if t.group >= 0 {
        kernel::tun::set_group(fd.as_fd(), t.group.cast_unsigned()).map_err(err("its group"))?;
    }
    kernel::tun::set_vnet_hdr_sz(fd.as_fd(), t.vnethdr.cast_signed())
        .map_err(err("its virtio header size"))?;
    kernel::tun::set_sndbuf(fd.as_fd(), t.sndbuf.cast_signed()).map_err(err("its send buffer"))?;
    kernel::tun::set_persist(fd.as_fd(), true).map_err(err("persistent"))
}
