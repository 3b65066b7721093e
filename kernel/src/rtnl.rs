//! Route netlink (NETLINK_ROUTE) in the caller's network namespace: its
//! links, addresses and routes; making links (veth pairs, with one end in
//! another namespace) and setting their state; and iproute2's save format
//! (`ip addr save`, `ip route save`: a magic, then the kernel's messages as
//! a dump gave them), which CRIU's `ifaddr-N.img` and `route-N.img` hold.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;
use nix::sys::socket::SockProtocol;

use crate::netlink::{self as nl, Builder, Msg, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, Socket};

/// Make a link, or change one (by index).
pub const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
/// Add an address.
pub const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
/// Add a route.
pub const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
/// Add a routing rule.
pub const RTM_NEWRULE: u16 = 32;
const RTM_GETRULE: u16 = 34;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_LINK: u16 = 5;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_LINK_NETNSID: u16 = 37;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const IFLA_INFO_SLAVE_KIND: u16 = 4;
const IFLA_INFO_SLAVE_DATA: u16 = 5;
const VETH_INFO_PEER: u16 = 1;
const IFLA_MACVLAN_MODE: u16 = 1;
const IFLA_MACVLAN_FLAGS: u16 = 2;
const IFLA_TUN_OWNER: u16 = 1;
const IFLA_TUN_GROUP: u16 = 2;
const IFLA_TUN_TYPE: u16 = 3;
const IFLA_TUN_PI: u16 = 4;
const IFLA_TUN_VNET_HDR: u16 = 5;
const IFLA_TUN_PERSIST: u16 = 6;
const IFLA_TUN_MULTI_QUEUE: u16 = 7;
const IFLA_TUN_NUM_QUEUES: u16 = 8;

const IFA_FLAGS: u16 = 8;
/// The address needs no duplicate address detection (IPv6).
pub const IFA_F_NODAD: u32 = 0x02;
/// The address is still being checked for duplicates (IPv6).
pub const IFA_F_TENTATIVE: u32 = 0x40;

const RTA_DST: u16 = 1;
const RTA_GATEWAY: u16 = 5;
const RTA_PREFSRC: u16 = 7;
const RTA_TABLE: u16 = 15;
const RT_TABLE_LOCAL: u32 = 255;
const RTPROT_KERNEL: u8 = 2;
const RTM_F_CLONED: u32 = 0x200;
const RTNH_F_ONLINK: u32 = 4;

/// `ARPHRD_LOOPBACK`: the link type of `lo`.
pub const ARPHRD_LOOPBACK: u16 = 772;
/// The link is up (administratively).
pub const IFF_UP: u32 = 0x1;
/// The link flags a caller can set (up, debug, noarp, promisc, allmulti,
/// multicast); the others are the kernel's to report.
pub const IFF_SETTABLE: u32 = 0x1 | 0x4 | 0x80 | 0x100 | 0x200 | 0x1000;

/// The first u32 of `ip addr save`'s output.
pub const ADDR_MAGIC: u32 = 0x4736_1222;
/// The first u32 of `ip route save`'s output.
pub const ROUTE_MAGIC: u32 = 0x4531_1224;

/// The first u32 of `ip rule save`'s output.
pub const RULE_MAGIC: u32 = 0x7170_6986;

/// IPv4.
pub const AF_INET: u8 = 2;
/// IPv6.
pub const AF_INET6: u8 = 10;

/// A route netlink socket in the caller's network namespace.
pub fn open() -> Result<Socket, Errno> {
    Socket::open(SockProtocol::NetlinkRoute)
}

fn ifinfomsg(index: i32, flags: u32, change: u32) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[4..8].copy_from_slice(&index.to_ne_bytes());
    m[8..12].copy_from_slice(&flags.to_ne_bytes());
    m[12..16].copy_from_slice(&change.to_ne_bytes());
    m
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|v| u32::from_ne_bytes([v[0], v[1], v[2], v[3]]))
}

fn i32_attr(v: &[u8]) -> Option<i32> {
    u32_at(v, 0).map(u32::cast_signed)
}

fn str_attr(v: &[u8]) -> String {
    let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

/// A network device as RTM_GETLINK describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Its index in its namespace.
    pub index: i32,
    /// Its hardware type (`ARPHRD_*`).
    pub hw_type: u16,
    /// Its flags (`IFF_*`), the kernel's included.
    pub flags: u32,
    /// Its name.
    pub name: String,
    /// Its MTU.
    pub mtu: u32,
    /// Its hardware address.
    pub address: Option<Vec<u8>>,
    /// Its kind (`IFLA_INFO_KIND`: "veth", "bridge", ...); none for lo and
    /// physical devices.
    pub kind: Option<String>,
    /// The index of the device it is linked to (a veth's peer).
    pub link: Option<i32>,
    /// The namespace of that device, when not this one (its id here).
    pub link_netnsid: Option<i32>,
    /// The index of its master (a bridge).
    pub master: Option<i32>,
    /// A macvlan's mode (`MACVLAN_MODE_*`) and flags.
    pub macvlan: Option<(u32, u16)>,
    /// A tun or tap device's settings.
    pub tun: Option<TunInfo>,
    /// Its kind's settings (`IFLA_INFO_DATA`), raw.
    pub info_data: Option<Vec<u8>>,
    /// The kind of its master (`IFLA_INFO_SLAVE_KIND`: "bridge", ...) and
    /// its settings as a port of it (`IFLA_INFO_SLAVE_DATA`), raw.
    pub slave: Option<(String, Vec<u8>)>,
}

/// What route netlink tells of a tun or tap device (`IFLA_TUN_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TunInfo {
    /// Its flags as TUNGETIFF gives them ([`crate::tun`]'s `IFF_TUN` or
    /// `IFF_TAP`, `IFF_NO_PI`, `IFF_VNET_HDR`, `IFF_MULTI_QUEUE`,
    /// `IFF_PERSIST`), but the NAPI ones, which only a file can tell.
    pub flags: u32,
    /// The user allowed to attach to it, if one is.
    pub owner: Option<u32>,
    /// The group allowed to attach to it, if one is.
    pub group: Option<u32>,
    /// How many files are attached to it with their queue enabled.
    pub queues: u32,
}

impl TunInfo {
    fn parse(data: &[u8]) -> TunInfo {
        use crate::tun::{IFF_MULTI_QUEUE, IFF_NO_PI, IFF_PERSIST, IFF_VNET_HDR};
        let byte = |ty| nl::find(data, ty).and_then(|v| v.first().copied());
        let on = |ty, flag| if byte(ty).unwrap_or(0) != 0 { flag } else { 0 };
        let u32_of = |ty| nl::find(data, ty).and_then(|v| u32_at(v, 0));
        TunInfo {
            // IFLA_TUN_PI is set when packets carry the information
            // header, that is without IFF_NO_PI.
            flags: u32::from(byte(IFLA_TUN_TYPE).unwrap_or(0))
                | (if byte(IFLA_TUN_PI).unwrap_or(1) == 0 {
                    IFF_NO_PI
                } else {
                    0
                })
                | on(IFLA_TUN_VNET_HDR, IFF_VNET_HDR)
                | on(IFLA_TUN_PERSIST, IFF_PERSIST)
                | on(IFLA_TUN_MULTI_QUEUE, IFF_MULTI_QUEUE),
            owner: u32_of(IFLA_TUN_OWNER),
            group: u32_of(IFLA_TUN_GROUP),
            queues: u32_of(IFLA_TUN_NUM_QUEUES).unwrap_or(0),
        }
    }
}

impl Link {
    /// Parse the payload of an RTM_NEWLINK message.
    pub fn parse(payload: &[u8]) -> Option<Link> {
        let hdr = payload.get(..16)?;
        let mut l = Link {
            index: i32_attr(&hdr[4..8])?,
            hw_type: u16::from_ne_bytes([hdr[2], hdr[3]]),
            flags: u32_at(hdr, 8)?,
            name: String::new(),
            mtu: 0,
            address: None,
            kind: None,
            link: None,
            link_netnsid: None,
            master: None,
            macvlan: None,
            tun: None,
            info_data: None,
            slave: None,
        };
        for (ty, v) in nl::attrs(&payload[16..]) {
            match ty {
                IFLA_IFNAME => l.name = str_attr(v),
                IFLA_MTU => l.mtu = u32_at(v, 0).unwrap_or(0),
                IFLA_ADDRESS => l.address = Some(v.to_vec()),
                IFLA_LINK => l.link = i32_attr(v),
                IFLA_LINK_NETNSID => l.link_netnsid = i32_attr(v),
                IFLA_MASTER => l.master = i32_attr(v),
                IFLA_LINKINFO => {
                    l.kind = nl::find(v, IFLA_INFO_KIND).map(str_attr);
                    l.info_data = nl::find(v, IFLA_INFO_DATA).map(<[u8]>::to_vec);
                    l.slave = nl::find(v, IFLA_INFO_SLAVE_KIND)
                        .map(str_attr)
                        .zip(nl::find(v, IFLA_INFO_SLAVE_DATA).map(<[u8]>::to_vec));
                    if l.kind.as_deref() == Some("macvlan") {
                        let data = nl::find(v, IFLA_INFO_DATA).unwrap_or(&[]);
                        let mode = nl::find(data, IFLA_MACVLAN_MODE).and_then(|m| u32_at(m, 0));
                        let flags = nl::find(data, IFLA_MACVLAN_FLAGS)
                            .and_then(|f| f.get(..2))
                            .map_or(0, |f| u16::from_ne_bytes([f[0], f[1]]));
                        l.macvlan = mode.map(|m| (m, flags));
                    }
                    if l.kind.as_deref() == Some("tun") {
                        let data = nl::find(v, IFLA_INFO_DATA).unwrap_or(&[]);
                        l.tun = Some(TunInfo::parse(data));
                    }
                }
                _ => {}
            }
        }
        Some(l)
    }
}

/// Every link of the namespace.
pub fn links(s: &Socket) -> Result<Vec<Link>, Errno> {
    let msgs = s.dump(RTM_GETLINK, &ifinfomsg(0, 0, 0))?;
    Ok(msgs
        .iter()
        .filter_map(|m| Link::parse(&m.payload))
        .collect())
}

/// Every address of the namespace, as `ip addr save` writes them.
pub fn addresses(s: &Socket) -> Result<Vec<Msg>, Errno> {
    s.dump(RTM_GETADDR, &[0u8; 8])
}

/// The routes of family `family` a restore must make again: those of
/// every table but `local`, neither cached nor made by the kernel for an
/// address (the kernel makes those again when the address comes back).
/// Their flags keep only `onlink`, as `ip route save` does: the others are
/// the kernel's to report and it refuses some of them in a request.
pub fn routes(s: &Socket, family: u8) -> Result<Vec<Msg>, Errno> {
    let mut rtmsg = [0u8; 12];
    rtmsg[0] = family;
    let mut out = s.dump(RTM_GETROUTE, &rtmsg)?;
    out.retain_mut(|m| {
        let Some(h) = m.payload.get(..12) else {
            return false;
        };
        let table = nl::find(&m.payload[12..], RTA_TABLE)
            .and_then(|v| u32_at(v, 0))
            .unwrap_or(u32::from(h[4]));
        let flags = u32_at(h, 8).unwrap_or(0);
        if table == RT_TABLE_LOCAL || h[5] == RTPROT_KERNEL || flags & RTM_F_CLONED != 0 {
            return false;
        }
        m.payload[8..12].copy_from_slice(&(flags & RTNH_F_ONLINK).to_ne_bytes());
        true
    });
    Ok(out)
}

/// Every routing rule of the namespace (IPv4 and IPv6), as `ip rule save`
/// writes them, a fresh namespace's defaults included.
pub fn rules(s: &Socket) -> Result<Vec<Msg>, Errno> {
    s.dump(RTM_GETRULE, &[0u8; 12])
}

/// Whether two rule messages (with their headers) say the same: the same
/// family header and the same attributes, in any order.
pub fn same_rule(a: &[u8], b: &[u8]) -> bool {
    let norm = |m: &[u8]| {
        let mut v: Vec<(u16, Vec<u8>)> = m
            .get(16 + 12..)
            .map(|r| {
                nl::attrs(r)
                    .into_iter()
                    .map(|(t, v)| (t, v.to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        (m.get(16..16 + 12).map(<[u8]>::to_vec), v)
    };
    norm(a) == norm(b)
}

/// The order `ip route restore` makes routes in: 0 for routes to a local
/// address, 1 for routes to local networks, 2 for routes through a
/// gateway, each needing the ones before.
pub fn route_stage(msg: &[u8]) -> u8 {
    let Some(attrs) = msg.get(16 + 12..) else {
        return 2;
    };
    let dst = nl::find(attrs, RTA_DST);
    let src = nl::find(attrs, RTA_PREFSRC);
    if nl::find(attrs, RTA_GATEWAY).is_some() {
        2
    } else if src.is_some() && src != dst {
        1
    } else {
        0
    }
}

/// Write `msgs` in iproute2's save format under `magic`.
pub fn save(magic: u32, msgs: &[Msg]) -> Vec<u8> {
    let mut out = magic.to_ne_bytes().to_vec();
    for m in msgs {
        out.extend(m.bytes());
    }
    out
}

/// What is wrong with a file in iproute2's save format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadSave {
    /// It does not start with the expected magic.
    Magic(u32),
    /// A message at this offset runs past the end or is shorter than its
    /// header.
    Truncated(usize),
}

impl std::fmt::Display for BadSave {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadSave::Magic(m) => write!(f, "magic {m:#x} is not iproute2's save format"),
            BadSave::Truncated(at) => write!(f, "message at offset {at} is cut short"),
        }
    }
}

/// The messages in `bytes` (iproute2's save format under `magic`), each
/// with its header. Messages must be at least `fixed` bytes past the
/// header (the family header their type carries).
pub fn load(magic: u32, bytes: &[u8], fixed: usize) -> Result<Vec<&[u8]>, BadSave> {
    let got = u32_at(bytes, 0).ok_or(BadSave::Magic(0))?;
    if got != magic {
        return Err(BadSave::Magic(got));
    }
    let mut out = Vec::new();
    let mut at = 4;
    while at < bytes.len() {
        let len = u32_at(bytes, at).ok_or(BadSave::Truncated(at))? as usize;
        if len < 16 + fixed || at + len > bytes.len() {
            return Err(BadSave::Truncated(at));
        }
        out.push(&bytes[at..at + len]);
        at += (len + 3) & !3;
    }
    Ok(out)
}

/// Send a saved message again as a request to create what it describes,
/// as `ip addr/route restore` does: what exists already is left alone.
pub fn replay(s: &Socket, msg: &[u8]) -> Result<(), Errno> {
    let mut m = msg.to_vec();
    if m.len() < 16 {
        return Err(Errno::EINVAL);
    }
    let flags = nl::NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK;
    m[6..8].copy_from_slice(&flags.to_ne_bytes());
    match s.request(m) {
        Err(Errno::EEXIST) => Ok(()),
        r => r.map(drop),
    }
}

/// `msg` (an RTM_NEWADDR message) with `set` added to its flags, in the
/// header's byte and in the u32 attribute the kernel reads first.
pub fn addr_with_flags(msg: &[u8], set: u32) -> Vec<u8> {
    let (Some((_, flags)), Some(hdr), Some(attrs)) =
        (addr_family_flags(msg), msg.get(16..24), msg.get(24..))
    else {
        return msg.to_vec();
    };
    let flags = flags | set;
    let mut hdr = hdr.to_vec();
    hdr[2] = u8::try_from(flags & 0xff).unwrap_or(0);
    let ty = u16::from_ne_bytes([msg[4], msg[5]]);
    let mut b = Builder::new(ty, u16::from_ne_bytes([msg[6], msg[7]]), &hdr);
    for (raw, v) in nl::raw_attrs(attrs) {
        if raw & 0x3fff != IFA_FLAGS {
            b = b.attr(raw, v);
        }
    }
    b.attr(IFA_FLAGS, &flags.to_ne_bytes()).finish()
}

/// The family and flags of an RTM_NEWADDR message.
pub fn addr_family_flags(msg: &[u8]) -> Option<(u8, u32)> {
    let hdr = msg.get(16..24)?;
    let flags = nl::find(&msg[24..], IFA_FLAGS)
        .and_then(|v| u32_at(v, 0))
        .unwrap_or(u32::from(hdr[2]));
    Some((hdr[0], flags))
}

/// One end of a new link.
#[derive(Debug, Clone, Copy)]
pub struct NewLink<'a> {
    /// Its index; 0 lets the kernel choose.
    pub index: i32,
    /// Its name; empty lets the kernel choose.
    pub name: &'a str,
    /// Its MTU; 0 keeps the kind's default.
    pub mtu: u32,
    /// Its hardware address.
    pub address: Option<&'a [u8]>,
    /// The network namespace it goes to; none keeps it in the caller's.
    pub netns: Option<BorrowedFd<'a>>,
}

impl NewLink<'_> {
    fn attrs(&self, b: Builder) -> Builder {
        let mut b = b;
        if !self.name.is_empty() {
            b = b.str(IFLA_IFNAME, self.name);
        }
        if self.mtu != 0 {
            b = b.attr(IFLA_MTU, &self.mtu.to_ne_bytes());
        }
        if let Some(a) = self.address {
            b = b.attr(IFLA_ADDRESS, a);
        }
        if let Some(ns) = self.netns {
            b = b.attr(IFLA_NET_NS_FD, &ns.as_raw_fd().to_ne_bytes());
        }
        b
    }
}

/// A request making link `me` of `kind`, its IFLA_LINKINFO left open
/// for the kind's data.
fn new_link_msg(me: &NewLink<'_>, kind: &str) -> Builder {
    let b = Builder::new(
        RTM_NEWLINK,
        nl::NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        &ifinfomsg(me.index, 0, 0),
    );
    me.attrs(b).nest(IFLA_LINKINFO).str(IFLA_INFO_KIND, kind)
}

/// Make a veth pair: `me` and its `peer`.
pub fn new_veth(s: &Socket, me: &NewLink<'_>, peer: &NewLink<'_>) -> Result<(), Errno> {
    let b = new_link_msg(me, "veth")
        .nest(IFLA_INFO_DATA)
        .nest(VETH_INFO_PEER)
        .attr_raw(&ifinfomsg(peer.index, 0, 0));
    let b = peer.attrs(b).end().end().end();
    s.request(b.finish()).map(drop)
}

/// Make macvlan `me` on link `lower` of the caller's namespace, with
/// `mode` and `flags` (`me.netns` moves it where it belongs).
pub fn new_macvlan(
    s: &Socket,
    me: &NewLink<'_>,
    lower: i32,
    mode: u32,
    flags: u16,
) -> Result<(), Errno> {
    let b = new_link_msg(me, "macvlan")
        .nest(IFLA_INFO_DATA)
        .attr(IFLA_MACVLAN_MODE, &mode.to_ne_bytes())
        .attr(IFLA_MACVLAN_FLAGS, &flags.to_ne_bytes())
        .end()
        .end()
        .attr(IFLA_LINK, &lower.to_ne_bytes());
    s.request(b.finish()).map(drop)
}

/// The attributes of `data` (a nest's contents) whose type is in `keep`,
/// encoded again, in their order.
pub fn keep_attrs(data: &[u8], keep: &[u16]) -> Vec<u8> {
    let mut out = Vec::new();
    for (ty, v) in nl::attrs(data)
        .into_iter()
        .filter(|(ty, _)| keep.contains(ty))
    {
        push_attr(&mut out, ty, v);
    }
    out
}

/// Append attribute `ty` with value `v` to `out`, encoded (padded to 4).
pub fn push_attr(out: &mut Vec<u8>, ty: u16, v: &[u8]) {
    let len = u16::try_from(4 + v.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(v);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// Make a link of `kind` with its kind's settings `data` (attributes of
/// `IFLA_INFO_DATA`, encoded).
pub fn new_link_with(s: &Socket, kind: &str, me: &NewLink<'_>, data: &[u8]) -> Result<(), Errno> {
    let b = new_link_msg(me, kind)
        .nest(IFLA_INFO_DATA)
        .attr_raw(data)
        .end()
        .end();
    s.request(b.finish()).map(drop)
}

/// Set the settings of link `index` as a port of its master
/// (`IFLA_INFO_SLAVE_DATA` attributes, encoded).
pub fn set_port(s: &Socket, index: i32, data: &[u8]) -> Result<(), Errno> {
    let b = Builder::new(
        RTM_NEWLINK,
        nl::NLM_F_REQUEST | NLM_F_ACK,
        &ifinfomsg(index, 0, 0),
    )
    .nest(IFLA_LINKINFO)
    .nest(IFLA_INFO_SLAVE_DATA)
    .attr_raw(data)
    .end()
    .end();
    s.request(b.finish()).map(drop)
}

/// Make a link of `kind` ("bridge", ...) with no peer: `me`.
pub fn new_link(s: &Socket, kind: &str, me: &NewLink<'_>) -> Result<(), Errno> {
    s.request(new_link_msg(me, kind).end().finish()).map(drop)
}

/// Enslave link `index` to `master` (a bridge's index).
pub fn set_master(s: &Socket, index: i32, master: i32) -> Result<(), Errno> {
    let b = Builder::new(
        RTM_NEWLINK,
        nl::NLM_F_REQUEST | NLM_F_ACK,
        &ifinfomsg(index, 0, 0),
    )
    .attr(IFLA_MASTER, &master.to_ne_bytes());
    s.request(b.finish()).map(drop)
}

/// The index of the link named `name`, if there is one.
pub fn index_of(s: &Socket, name: &str) -> Result<Option<i32>, Errno> {
    Ok(links(s)?
        .into_iter()
        .find(|l| l.name == name)
        .map(|l| l.index))
}

/// Set the hardware address of link `index`.
pub fn set_address(s: &Socket, index: i32, address: &[u8]) -> Result<(), Errno> {
    let b = Builder::new(
        RTM_NEWLINK,
        nl::NLM_F_REQUEST | NLM_F_ACK,
        &ifinfomsg(index, 0, 0),
    )
    .attr(IFLA_ADDRESS, address);
    s.request(b.finish()).map(drop)
}

/// Set the settable flags of link `index` to those of `flags`, and its
/// MTU when `mtu` is not 0.
pub fn set_link(s: &Socket, index: i32, flags: u32, mtu: u32) -> Result<(), Errno> {
    let mut b = Builder::new(
        RTM_NEWLINK,
        nl::NLM_F_REQUEST | NLM_F_ACK,
        &ifinfomsg(index, flags & IFF_SETTABLE, IFF_SETTABLE),
    );
    if mtu != 0 {
        b = b.attr(IFLA_MTU, &mtu.to_ne_bytes());
    }
    s.request(b.finish()).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(ty: u16, payload: Vec<u8>) -> Msg {
        Msg { ty, payload }
    }

    #[test]
    fn save_and_load_round_trip() {
        let a = msg(
            RTM_NEWADDR,
            vec![2, 24, 0x80, 0, 3, 0, 0, 0, 8, 0, 1, 0, 10, 0, 0, 1],
        );
        let b = msg(RTM_NEWADDR, vec![10, 64, 0, 0, 1, 0, 0, 0]);
        let bytes = save(ADDR_MAGIC, &[a.clone(), b]);
        assert_eq!(&bytes[..4], &ADDR_MAGIC.to_ne_bytes());
        let got = load(ADDR_MAGIC, &bytes, 8).expect("loads");
        assert_eq!(got.len(), 2);
        assert_eq!(&got[0][16..], &a.payload[..]);
        assert_eq!(u16::from_ne_bytes([got[1][4], got[1][5]]), RTM_NEWADDR);
        assert_eq!(
            load(ROUTE_MAGIC, &bytes, 8),
            Err(BadSave::Magic(ADDR_MAGIC))
        );
        assert_eq!(
            load(ADDR_MAGIC, &bytes[..bytes.len() - 1], 8),
            Err(BadSave::Truncated(36))
        );
    }

    #[test]
    fn address_flags_are_added_to_the_attribute_or_the_header() {
        let plain = msg(RTM_NEWADDR, vec![10, 64, 0x80, 0, 1, 0, 0, 0]).bytes();
        let m = addr_with_flags(&plain, IFA_F_NODAD);
        assert_eq!(addr_family_flags(&m), Some((10, 0x80 | IFA_F_NODAD)));
        let mut with = vec![10, 64, 0x80, 0, 1, 0, 0, 0, 8, 0, 8, 0];
        with.extend_from_slice(&0x180u32.to_ne_bytes());
        let m = addr_with_flags(&msg(RTM_NEWADDR, with).bytes(), IFA_F_NODAD);
        assert_eq!(addr_family_flags(&m), Some((10, 0x180 | IFA_F_NODAD)));
    }

    #[test]
    fn rules_compare_by_header_and_attributes_in_any_order() {
        let hdr = [2u8, 0, 0, 0, 254, 0, 0, 1, 0, 0, 0, 0];
        let a = Builder::new(RTM_NEWRULE, 0, &hdr)
            .attr(6, &32766u32.to_ne_bytes())
            .attr(15, &254u32.to_ne_bytes())
            .finish();
        let b = Builder::new(RTM_NEWRULE, 2, &hdr)
            .attr(15, &254u32.to_ne_bytes())
            .attr(6, &32766u32.to_ne_bytes())
            .finish();
        let c = Builder::new(RTM_NEWRULE, 0, &hdr)
            .attr(6, &100u32.to_ne_bytes())
            .attr(15, &254u32.to_ne_bytes())
            .finish();
        assert!(same_rule(&a, &b));
        assert!(!same_rule(&a, &c));
    }

    #[test]
    fn route_stages_follow_iproute2() {
        let route = |attrs: &[(u16, [u8; 4])]| {
            let mut b = Builder::new(RTM_NEWROUTE, 0, &[2, 24, 0, 0, 254, 3, 0, 1, 0, 0, 0, 0]);
            for (t, v) in attrs {
                b = b.attr(*t, v);
            }
            b.finish()
        };
        assert_eq!(route_stage(&route(&[(RTA_DST, [10, 0, 0, 0])])), 0);
        assert_eq!(
            route_stage(&route(&[
                (RTA_DST, [10, 0, 0, 0]),
                (RTA_PREFSRC, [10, 0, 0, 1])
            ])),
            1
        );
        assert_eq!(route_stage(&route(&[(RTA_GATEWAY, [10, 0, 0, 1])])), 2);
    }

    #[test]
    fn links_parse_name_kind_and_peer() {
        let m = Builder::new(RTM_NEWLINK, 0, &ifinfomsg(7, 0x1003, 0))
            .str(IFLA_IFNAME, "v0")
            .attr(IFLA_MTU, &1400u32.to_ne_bytes())
            .attr(IFLA_LINK, &8i32.to_ne_bytes())
            .nest(IFLA_LINKINFO)
            .str(IFLA_INFO_KIND, "veth")
            .end()
            .finish();
        let l = Link::parse(&m[16..]).expect("parses");
        assert_eq!(l.index, 7);
        assert_eq!(l.flags, 0x1003);
        assert_eq!(l.name, "v0");
        assert_eq!(l.mtu, 1400);
        assert_eq!(l.link, Some(8));
        assert_eq!(l.link_netnsid, None);
        assert_eq!(l.kind.as_deref(), Some("veth"));
        assert_eq!(Link::parse(&m[16..20]), None);
    }
}
