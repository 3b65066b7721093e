//! Netlink sockets (`netlink_sk_entry` in `files.img`): the protocol, the
//! port id and every multicast group bound (NETLINK_LIST_MEMBERSHIPS, not
//! only the first 32 that getsockname shows), the peer connected to, and
//! buffer sizes. The restore binds the same port id, so a peer that
//! addresses the task by it still reaches it. Messages queued on the socket
//! (answers and events of the past) are not kept, as CRIU does not.

use stasis_kernel as kernel;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::sys::socket::NetlinkAddr;
use stasis_proto::images::file_entry::Kind;
use stasis_proto::images::{FownEntry, NetlinkSkEntry};

use crate::error::{EngineError as Error, Result};
use crate::files::{FdCtx, FileKind, OpenCtx, Table};

/// Netlink sockets.
#[derive(Debug)]
pub struct NetlinkSk;

// linux/netlink.h.
const SOL_NETLINK: i32 = 270;
const NETLINK_ADD_MEMBERSHIP: i32 = 1;
const NETLINK_LIST_MEMBERSHIPS: i32 = 9;

/// The groups of a bitmap of 32-bit words, numbered from 1.
fn groups_of(words: &[u32]) -> Vec<u32> {
    let mut out = Vec::new();
    for (i, w) in words.iter().enumerate() {
        for bit in 0..32u32 {
            if w & (1 << bit) != 0 {
                out.push(u32::try_from(i).unwrap_or(0) * 32 + bit + 1);
            }
        }
    }
    out
}

impl FileKind for NetlinkSk {
    type Entry = NetlinkSkEntry;
    const NAME: &'static str = "netlink socket";

    fn set_id(e: &mut NetlinkSkEntry, id: u32) {
        e.id = id;
    }

    fn dump(cx: &FdCtx<'_>, _table: &mut Table) -> Result<Kind> {
        let what = format!("fd {} ({})", cx.fd.fd, cx.fd.target);
        let dup = cx.dup().map_err(Error::dump(cx.pid, what.clone()))?;
        let protocol =
            kernel::socket::getsockopt_int(dup.as_fd(), libc::SOL_SOCKET, libc::SO_PROTOCOL)
                .map_err(Error::dump(cx.pid, format!("{what}: SO_PROTOCOL")))?;
        let me = nix::sys::socket::getsockname::<NetlinkAddr>(dup.as_raw_fd())
            .map_err(Error::dump(cx.pid, format!("{what}: its address")))?;
        // Every group; older kernels only tell the first 32.
        let mut groups = match kernel::socket::getsockopt_bytes(
            dup.as_fd(),
            SOL_NETLINK,
            NETLINK_LIST_MEMBERSHIPS,
            1024,
        ) {
            Ok(b) => crate::net::sk_opts::words(&b),
            Err(_) => vec![me.groups()],
        };
        while groups.last() == Some(&0) {
            groups.pop();
        }
        let peer = nix::sys::socket::getpeername::<NetlinkAddr>(dup.as_raw_fd()).ok();
        let (dst_portid, dst_group) = peer.map_or((0, 0), |p| (p.pid(), p.groups()));
        Ok(Kind::Nlsk(NetlinkSkEntry {
            id: 0,
            ino: u32::try_from(std::os::unix::fs::MetadataExt::ino(cx.meta)).unwrap_or(0),
            protocol: protocol.cast_unsigned(),
            state: u32::from(dst_portid != 0 || dst_group != 0),
            flags: cx.flags(),
            portid: me.pid(),
            groups,
            dst_portid,
            dst_group,
            fown: FownEntry::default(),
            opts: crate::net::sk_opts::dump_common(cx, dup.as_fd())?,
            ns_id: None,
        }))
    }

    fn open(e: &NetlinkSkEntry, cx: &mut OpenCtx<'_>) -> Result<OwnedFd> {
        let fail = |step: &str| cx.err(&format!("netlink socket {}: {step}", e.ino));
        let s = kernel::socket::socket(libc::AF_NETLINK, libc::SOCK_RAW, e.protocol.cast_signed())
            .map_err(fail("socket"))?;
        crate::net::sk_opts::restore_common(s.as_fd(), &e.opts)
            .map_err(|(step, err)| fail(step)(err))?;
        let first = e.groups.first().copied().unwrap_or(0);
        if e.portid != 0 {
            nix::sys::socket::bind(s.as_raw_fd(), &NetlinkAddr::new(e.portid, first))
                .map_err(fail(&format!("bind to port id {}", e.portid)))?;
        }
        // Groups past the first 32 (and all of them when the socket never
        // bound: joining a group does not bind it).
        let skip = if e.portid != 0 { 32 } else { 0 };
        for g in groups_of(&e.groups).into_iter().filter(|&g| g > skip) {
            kernel::socket::setsockopt_int(
                s.as_fd(),
                SOL_NETLINK,
                NETLINK_ADD_MEMBERSHIP,
                g.cast_signed(),
            )
            .map_err(fail(&format!("joining group {g}")))?;
        }
        if e.dst_portid != 0 || e.dst_group != 0 {
            nix::sys::socket::connect(s.as_raw_fd(), &NetlinkAddr::new(e.dst_portid, e.dst_group))
                .map_err(fail("connect"))?;
        }
        let fl = nix::fcntl::OFlag::from_bits_truncate(e.flags.cast_signed() & libc::O_NONBLOCK);
        nix::fcntl::fcntl(s.as_fd(), nix::fcntl::FcntlArg::F_SETFL(fl)).map_err(fail("flags"))?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::groups_of;

    #[test]
    fn group_bitmaps_number_groups_from_one() {
        assert_eq!(groups_of(&[0b101, 0, 1 << 31]), vec![1, 3, 96]);
        assert!(groups_of(&[]).is_empty());
    }
}
