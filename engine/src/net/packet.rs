//! Packet sockets (`packet_sock_entry` in `files.img`): type and protocol,
//! the device bound, the PACKET_* options (version, reserve, auxdata,
//! origdev, vnet header, loss, timestamps, copy threshold), multicast
//! memberships and the fanout group, read with sock_diag inside the
//! socket's network namespace. Packets queued on the socket are not kept
//! (they came from the wire); mmap'ed rings are refused.

use stasis_kernel as kernel;
use std::os::fd::{AsFd, OwnedFd};

use nix::sys::socket::SockProtocol;
use stasis_kernel::netlink as nl;
use stasis_proto::images::file_entry::Kind;
use stasis_proto::images::{FownEntry, PacketMclist, PacketSockEntry};

use crate::error::{EngineError as Error, Result};
use crate::files::{FdCtx, FileKind, OpenCtx, Table};

/// Packet sockets.
#[derive(Debug)]
pub struct PacketSk;

// linux/sock_diag.h, linux/packet_diag.h, linux/if_packet.h.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const PACKET_SHOW_INFO: u32 = 1;
const PACKET_SHOW_MCLIST: u32 = 2;
const PACKET_SHOW_RING_CFG: u32 = 4;
const PACKET_SHOW_FANOUT: u32 = 8;
const PACKET_DIAG_INFO: u16 = 0;
const PACKET_DIAG_MCLIST: u16 = 1;
const PACKET_DIAG_RX_RING: u16 = 2;
const PACKET_DIAG_TX_RING: u16 = 3;
const PACKET_DIAG_FANOUT: u16 = 4;
const PDI_AUXDATA: u32 = 2;
const PDI_ORIGDEV: u32 = 4;
const PDI_VNETHDR: u32 = 8;
const PDI_LOSS: u32 = 16;
const SOL_PACKET: i32 = 263;
const PACKET_ADD_MEMBERSHIP: i32 = 1;
const PACKET_COPY_THRESH: i32 = 7;
const PACKET_AUXDATA: i32 = 8;
const PACKET_ORIGDEV: i32 = 9;
const PACKET_VERSION: i32 = 10;
const PACKET_RESERVE: i32 = 12;
const PACKET_LOSS: i32 = 14;
const PACKET_VNET_HDR: i32 = 15;
const PACKET_TIMESTAMP: i32 = 17;
const PACKET_FANOUT: i32 = 18;
/// `fanout` when the socket is in no fanout group.
const NO_FANOUT: u32 = 0xffff_ffff;

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |w| u32::from_ne_bytes([w[0], w[1], w[2], w[3]]))
}

/// What sock_diag tells of a packet socket.
struct Diag {
    ty: u32,
    /// Host byte order.
    protocol: u32,
    attrs: Vec<(u16, Vec<u8>)>,
}

/// What sock_diag tells of packet socket `ino`.
fn diag(ino: u32) -> std::result::Result<Option<Diag>, nix::errno::Errno> {
    let s = nl::Socket::open(SockProtocol::NetlinkSockDiag)?;
    let mut req = vec![u8::try_from(libc::AF_PACKET).unwrap_or(17), 0, 0, 0];
    req.extend_from_slice(&ino.to_ne_bytes());
    let show = PACKET_SHOW_INFO | PACKET_SHOW_MCLIST | PACKET_SHOW_RING_CFG | PACKET_SHOW_FANOUT;
    req.extend_from_slice(&show.to_ne_bytes());
    req.extend_from_slice(&[0xff; 8]);
    let msgs = s.dump(SOCK_DIAG_BY_FAMILY, &req)?;
    Ok(msgs.into_iter().find_map(|m| {
        let p = &m.payload;
        (p.len() >= 16 && u32_at(p, 4) == ino).then(|| Diag {
            ty: u32::from(p[1]),
            protocol: u32::from(u16::from_ne_bytes([p[2], p[3]])),
            attrs: nl::attrs(&p[16..])
                .into_iter()
                .map(|(t, v)| (t, v.to_vec()))
                .collect(),
        })
    }))
}

/// The multicast memberships in a PACKET_DIAG_MCLIST attribute (struct
/// packet_diag_mclist: index, count, type, alen, addr[32]), one entry per
/// time joined.
fn mclist(raw: &[u8]) -> Vec<PacketMclist> {
    raw.chunks_exact(44)
        .flat_map(|m| {
            let alen = usize::from(u16::from_ne_bytes([m[10], m[11]])).min(32);
            let one = PacketMclist {
                index: u32_at(m, 0),
                r#type: u32::from(u16::from_ne_bytes([m[8], m[9]])),
                addr: m[12..12 + alen].to_vec(),
            };
            // Joined `count` times: left as many times.
            std::iter::repeat_n(one, usize::try_from(u32_at(m, 4)).unwrap_or(1))
        })
        .collect()
}

impl FileKind for PacketSk {
    type Entry = PacketSockEntry;
    const NAME: &'static str = "packet socket";

    fn set_id(e: &mut PacketSockEntry, id: u32) {
        e.id = id;
    }

    fn dump(cx: &FdCtx<'_>, table: &mut Table) -> Result<Kind> {
        let what = format!("fd {} ({})", cx.fd.fd, cx.fd.target);
        let ino = u32::try_from(std::os::unix::fs::MetadataExt::ino(cx.meta)).unwrap_or(0);
        let ask = || diag(ino);
        let got = match table.unix.netns_of {
            Some(p) => crate::task::in_namespace_of(
                p,
                "net",
                nix::sched::CloneFlags::CLONE_NEWNET,
                || Ok(ask()),
            )?,
            None => ask(),
        };
        let Diag {
            ty,
            protocol,
            attrs,
        } = got
            .map_err(Error::dump(
                cx.pid,
                format!("{what}: sock_diag (CONFIG_PACKET_DIAG)"),
            ))?
            .ok_or_else(|| cx.format_err("packet socket not found by sock_diag"))?;
        let attr = |t: u16| {
            attrs
                .iter()
                .find(|(a, _)| *a == t)
                .map(|(_, v)| v.as_slice())
        };
        if attr(PACKET_DIAG_RX_RING).is_some() || attr(PACKET_DIAG_TX_RING).is_some() {
            return Err(Error::Unsupported {
                pid: cx.pid,
                what: format!(
                    "{what}: a packet socket with an mmap'ed ring (PACKET_RX_RING/TX_RING),"
                ),
            });
        }
        let info = attr(PACKET_DIAG_INFO).ok_or_else(|| cx.format_err("PACKET_DIAG_INFO"))?;
        let flags = u32_at(info, 20);
        let mclist = mclist(attr(PACKET_DIAG_MCLIST).unwrap_or(&[]));
        let dup = cx.dup().map_err(Error::dump(cx.pid, what.clone()))?;
        Ok(Kind::Psk(PacketSockEntry {
            id: 0,
            r#type: ty,
            protocol,
            flags: cx.flags(),
            ifindex: u32_at(info, 0),
            fown: FownEntry::default(),
            opts: crate::net::sk_opts::dump_common(cx, dup.as_fd())?,
            version: u32_at(info, 4),
            reserve: u32_at(info, 8),
            aux_data: flags & PDI_AUXDATA != 0,
            orig_dev: flags & PDI_ORIGDEV != 0,
            vnet_hdr: flags & PDI_VNETHDR != 0,
            loss: flags & PDI_LOSS != 0,
            timestamp: u32_at(info, 16),
            copy_thresh: u32_at(info, 12),
            mclist,
            fanout: attr(PACKET_DIAG_FANOUT).map(|f| u32_at(f, 0)),
            rx_ring: None,
            tx_ring: None,
        }))
    }

    fn open(e: &PacketSockEntry, cx: &mut OpenCtx<'_>) -> Result<OwnedFd> {
        let fail = |step: &str| cx.err(&format!("packet socket: {step}"));
        let proto = u16::try_from(e.protocol).unwrap_or(0).to_be();
        let s = kernel::socket::socket(libc::AF_PACKET, e.r#type.cast_signed(), i32::from(proto))
            .map_err(fail("socket"))?;
        let int = |name: i32, v: u32, step: &str| {
            kernel::socket::setsockopt_int(s.as_fd(), SOL_PACKET, name, v.cast_signed())
                .map_err(fail(step))
        };
        // Defaults are left alone: TPACKET_V1, no reserve, no flags.
        for (name, v, step) in [
            (PACKET_VERSION, e.version, "PACKET_VERSION"),
            (PACKET_RESERVE, e.reserve, "PACKET_RESERVE"),
            (PACKET_AUXDATA, u32::from(e.aux_data), "PACKET_AUXDATA"),
            (PACKET_ORIGDEV, u32::from(e.orig_dev), "PACKET_ORIGDEV"),
            (PACKET_VNET_HDR, u32::from(e.vnet_hdr), "PACKET_VNET_HDR"),
            (PACKET_LOSS, u32::from(e.loss), "PACKET_LOSS"),
            (PACKET_TIMESTAMP, e.timestamp, "PACKET_TIMESTAMP"),
            (PACKET_COPY_THRESH, e.copy_thresh, "PACKET_COPY_THRESH"),
        ] {
            if v != 0 {
                int(name, v, step)?;
            }
        }
        crate::net::sk_opts::restore_common(s.as_fd(), &e.opts)
            .map_err(|(step, err)| fail(step)(err))?;
        if e.ifindex != 0 {
            kernel::socket::bind_packet(s.as_fd(), proto, e.ifindex.cast_signed())
                .map_err(fail(&format!("bind to device {}", e.ifindex)))?;
        }
        for m in &e.mclist {
            // struct packet_mreq: ifindex, type, alen, address[8].
            let mut mreq = Vec::with_capacity(16);
            mreq.extend_from_slice(&m.index.to_ne_bytes());
            mreq.extend_from_slice(&u16::try_from(m.r#type).unwrap_or(0).to_ne_bytes());
            let alen = m.addr.len().min(8);
            mreq.extend_from_slice(&u16::try_from(alen).unwrap_or(0).to_ne_bytes());
            let mut addr = [0u8; 8];
            addr[..alen].copy_from_slice(&m.addr[..alen]);
            mreq.extend_from_slice(&addr);
            kernel::socket::setsockopt_bytes(s.as_fd(), SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mreq)
                .map_err(fail("PACKET_ADD_MEMBERSHIP"))?;
        }
        if let Some(f) = e.fanout.filter(|&f| f != NO_FANOUT) {
            int(PACKET_FANOUT, f, "PACKET_FANOUT")?;
        }
        let fl = nix::fcntl::OFlag::from_bits_truncate(e.flags.cast_signed() & libc::O_NONBLOCK);
        nix::fcntl::fcntl(s.as_fd(), nix::fcntl::FcntlArg::F_SETFL(fl)).map_err(fail("flags"))?;
        Ok(s)
    }
}
