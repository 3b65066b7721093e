//! Socket and network probes: sock_diag for every family, socket options C/R
//! reads and restores, TCP repair, network namespaces ids, tun, and nftables
//! (the network lock) over netlink. Everything that creates network state does
//! it in a throw-away network namespace.

use stasis_kernel as kernel;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::linux::fs::MetadataExt;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};

use nix::sys::socket::{AddressFamily, SockFlag, SockProtocol, SockType, socket};

use super::common::{R, Step, error, in_netns, no};
use crate::Outcome;
use stasis_kernel::netlink::{self as nl, Builder, nft};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
// Address families and protocols as the one-byte fields of diag requests.
const AF_UNIX: u8 = 1;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const AF_NETLINK: u8 = 16;
const AF_PACKET: u8 = 17;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_UDPLITE: u8 = 136;
const IPPROTO_RAW: u8 = 255;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_GETNSID: u16 = 90;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_LINK_NETNSID: u16 = 37;
const IFLA_NEW_IFINDEX: u16 = 49;
use libc::{
    SOL_TCP, TCP_QUEUE_SEQ, TCP_REPAIR, TCP_REPAIR_OPTIONS, TCP_REPAIR_QUEUE, TCP_REPAIR_WINDOW,
    TCP_TIMESTAMP,
};

fn ifinfomsg(index: i32, flags: u32, change: u32) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[4..8].copy_from_slice(&index.to_ne_bytes());
    m[8..12].copy_from_slice(&flags.to_ne_bytes());
    m[12..16].copy_from_slice(&change.to_ne_bytes());
    m
}

/// Brings `lo` up in the current network namespace.
pub fn loopback_up() -> Result<(), Outcome> {
    let s = nl::Socket::open(SockProtocol::NetlinkRoute).fail("netlink route socket")?;
    let iff_up = libc::IFF_UP as u32;
    s.request(
        Builder::new(
            RTM_NEWLINK,
            nl::NLM_F_REQUEST | nl::NLM_F_ACK,
            &ifinfomsg(1, iff_up, iff_up),
        )
        .finish(),
    )
    .fail("bringing lo up in the throw-away namespace")?;
    Ok(())
}

fn ino(fd: BorrowedFd<'_>) -> Result<u32, Outcome> {
    let st = nix::sys::stat::fstat(fd).fail("fstat")?;
    u32::try_from(st.st_ino).fail("socket inode")
}

fn inet_req(family: u8, proto: u8) -> Vec<u8> {
    let mut r = vec![0u8; 56];
    r[0] = family;
    r[1] = proto;
    r[4..8].copy_from_slice(&u32::MAX.to_ne_bytes());
    r[48..56].copy_from_slice(&[0xff; 8]);
    r
}

fn diag_req(family: u8, proto: u8, states: bool, show: u32) -> Vec<u8> {
    // unix_diag_req (24 bytes) / packet_diag_req and netlink_diag_req (20 bytes).
    let mut r = vec![0u8; if family == AF_UNIX { 24 } else { 20 }];
    r[0] = family;
    r[1] = proto;
    if states {
        r[4..8].copy_from_slice(&u32::MAX.to_ne_bytes());
        r[12..16].copy_from_slice(&show.to_ne_bytes());
    } else {
        r[8..12].copy_from_slice(&show.to_ne_bytes());
    }
    r
}

/// Dumps one family/protocol and returns the inodes found.
fn diag_inodes(s: &nl::Socket, req: Vec<u8>) -> Result<Vec<u32>, nix::errno::Errno> {
    let family = req[0];
    let msgs = s.dump(SOCK_DIAG_BY_FAMILY, &req)?;
    // Inode offset in each reply: inet_diag_msg 68, unix/packet/netlink 4 (after family, type, state/proto, pad).
    let at = match family {
        AF_INET | AF_INET6 => 68,
        AF_NETLINK => 16,
        _ => 4,
    };
    Ok(msgs
        .iter()
        .filter_map(|m| {
            m.payload
                .get(at..at + 4)
                .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        })
        .collect())
}

fn expect_found(s: &nl::Socket, what: &str, req: Vec<u8>, want: u32) -> Result<(), String> {
    match diag_inodes(s, req) {
        Ok(found) if found.contains(&want) => Ok(()),
        Ok(_) => Err(format!("{what}: our socket is missing from the dump")),
        Err(nix::errno::Errno::ENOENT) => Err(format!("{what}: no diag module (ENOENT)")),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

pub fn sock_diag() -> R {
    in_netns(|| {
        let s = nl::Socket::open(SockProtocol::NetlinkSockDiag).no("socket(NETLINK_SOCK_DIAG)")?;
        let (ua, _ub) = UnixStream::pair().fail("socketpair")?;
        let tcp4 = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).fail("tcp listen")?;
        let tcp6 = TcpListener::bind("[::1]:0").fail("tcp6 listen")?;
        let udp4 = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).fail("udp bind")?;
        let udp6 = UdpSocket::bind("[::1]:0").fail("udp6 bind")?;
        let (af4, af6, tcp, udp) = (AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP);
        let mut fatal = Vec::new();
        let unix = diag_req(AF_UNIX, 0, true, 0);
        for (what, req, fd) in [
            ("unix", unix, ua.as_fd()),
            ("tcp", inet_req(af4, tcp), tcp4.as_fd()),
            ("tcp6", inet_req(af6, tcp), tcp6.as_fd()),
            ("udp", inet_req(af4, udp), udp4.as_fd()),
            ("udp6", inet_req(af6, udp), udp6.as_fd()),
        ] {
            if let Err(e) = expect_found(&s, what, req, ino(fd)?) {
                fatal.push(e);
            }
        }
        // UDP-lite, packet and netlink diag are needed only by trees that use them.
        let mut missing = Vec::new();
        let udplite =
            kernel::socket::socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_UDPLITE);
        if let Ok(fd) = &udplite {
            let _ = nix::sys::socket::bind(
                fd.as_raw_fd(),
                &nix::sys::socket::SockaddrIn::new(127, 0, 0, 1, 0),
            );
            if let Err(e) = expect_found(
                &s,
                "udplite",
                inet_req(af4, IPPROTO_UDPLITE),
                ino(fd.as_fd())?,
            ) {
                missing.push(e);
            }
        }
        match socket(
            AddressFamily::Packet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            None,
        ) {
            Ok(fd) => {
                if let Err(e) = expect_found(
                    &s,
                    "packet",
                    diag_req(AF_PACKET, 0, false, 0),
                    ino(fd.as_fd())?,
                ) {
                    missing.push(e);
                }
            }
            Err(e) => missing.push(format!("packet: socket: {e}")),
        }
        let nls = nl::Socket::open(SockProtocol::NetlinkRoute).fail("netlink socket")?;
        if let Err(e) = expect_found(
            &s,
            "netlink",
            diag_req(AF_NETLINK, 255, false, 0),
            ino(nls.fd())?,
        ) {
            missing.push(e);
        }
        if !fatal.is_empty() {
            return Err(no(format!(
                "{} (enable CONFIG_UNIX_DIAG, CONFIG_INET_DIAG, CONFIG_INET_TCP_DIAG, CONFIG_INET_UDP_DIAG or load their modules)",
                fatal.join("; ")
            )));
        }
        if missing.is_empty() {
            Ok("unix, tcp, udp, udplite (v4/v6), packet and netlink sockets all found".into())
        } else {
            Ok(format!(
                "unix, tcp and udp found; trees using these cannot be dumped: {}",
                missing.join("; ")
            ))
        }
    })
}

pub fn net_diag_raw() -> R {
    in_netns(|| {
        let s = nl::Socket::open(SockProtocol::NetlinkSockDiag).no("socket(NETLINK_SOCK_DIAG)")?;
        for (fam, af, name) in [
            (AddressFamily::Inet, AF_INET, "raw"),
            (AddressFamily::Inet6, AF_INET6, "raw6"),
        ] {
            let fd = socket(
                fam,
                SockType::Raw,
                SockFlag::SOCK_CLOEXEC,
                SockProtocol::Raw,
            )
            .fail("socket(SOCK_RAW)")?;
            expect_found(&s, name, inet_req(af, IPPROTO_RAW), ino(fd.as_fd())?).map_err(|e| {
                no(format!(
                    "{e}: raw sockets cannot be dumped (CONFIG_INET_RAW_DIAG)"
                ))
            })?;
        }
        Ok(String::new())
    })
}

pub fn so_peek_off() -> R {
    let (a, _b) = UnixDatagram::pair().fail("socketpair")?;
    let v = kernel::socket::getsockopt_bytes(a.as_fd(), libc::SOL_SOCKET, libc::SO_PEEK_OFF, 4)
        .no("getsockopt(SO_PEEK_OFF)")?;
    let v = i32::from_ne_bytes(v.get(..4).and_then(|b| b.try_into().ok()).unwrap_or([0; 4]));
    if v != -1 {
        return Err(no(format!(
            "SO_PEEK_OFF of a new socket is {v}, expected -1"
        )));
    }
    Ok(String::new())
}

pub fn so_peek_off_stream() -> R {
    let (mut a, b) = UnixStream::pair().fail("socketpair")?;
    kernel::socket::setsockopt_bytes(
        b.as_fd(),
        libc::SOL_SOCKET,
        libc::SO_PEEK_OFF,
        &0i32.to_ne_bytes(),
    )
    .no("setsockopt(SO_PEEK_OFF) on a stream socket")?;
    a.write_all(b"abcdef").fail("write")?;
    let mut buf = [0u8; 3];
    for want in [b"abc", b"def"] {
        let n = nix::sys::socket::recv(
            b.as_raw_fd(),
            &mut buf,
            nix::sys::socket::MsgFlags::MSG_PEEK,
        )
        .fail("recv")?;
        if &buf[..n] != want {
            return Err(no(format!(
                "peeking with an offset returned {:?}",
                String::from_utf8_lossy(&buf[..n])
            )));
        }
    }
    Ok("queued stream data can be read without consuming it".into())
}

fn tcp_pair() -> Result<(TcpStream, TcpStream), Outcome> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).fail("listen")?;
    let addr: SocketAddr = l.local_addr().fail("local_addr")?;
    let c = TcpStream::connect(addr).fail("connect")?;
    let (s, _) = l.accept().fail("accept")?;
    Ok((c, s))
}

fn set_int(fd: BorrowedFd<'_>, level: i32, name: i32, v: i32) -> Result<(), nix::errno::Errno> {
    kernel::socket::setsockopt_bytes(fd, level, name, &v.to_ne_bytes())
}

fn get_int(fd: BorrowedFd<'_>, level: i32, name: i32) -> Result<i32, nix::errno::Errno> {
    let v = kernel::socket::getsockopt_bytes(fd, level, name, 4)?;
    Ok(i32::from_ne_bytes(
        v.get(..4).and_then(|b| b.try_into().ok()).unwrap_or([0; 4]),
    ))
}

pub fn tcp_repair() -> R {
    in_netns(|| {
        let (c, _s) = tcp_pair()?;
        set_int(c.as_fd(), SOL_TCP, TCP_REPAIR, 1)
            .no("setsockopt(TCP_REPAIR) (CONFIG_CHECKPOINT_RESTORE, CAP_NET_ADMIN)")?;
        get_int(c.as_fd(), SOL_TCP, TCP_TIMESTAMP).no("getsockopt(TCP_TIMESTAMP)")?;
        set_int(c.as_fd(), SOL_TCP, TCP_REPAIR, 0).no("leaving repair mode")?;
        Ok(String::new())
    })
}

pub fn tcp_half_closed() -> R {
    in_netns(|| {
        let (c, mut s) = tcp_pair()?;
        c.shutdown(std::net::Shutdown::Write)
            .fail("shutdown(SHUT_WR)")?;
        let mut b = [0u8; 1];
        let _ = s.read(&mut b);
        set_int(c.as_fd(), SOL_TCP, TCP_REPAIR, 1).no("TCP_REPAIR on a half-closed socket")?;
        Ok(String::new())
    })
}

pub fn tcp_repair_window() -> R {
    in_netns(|| {
        let (c, _s) = tcp_pair()?;
        set_int(c.as_fd(), SOL_TCP, TCP_REPAIR, 1).no("TCP_REPAIR")?;
        let w = kernel::socket::getsockopt_bytes(c.as_fd(), SOL_TCP, TCP_REPAIR_WINDOW, 20)
            .no("getsockopt(TCP_REPAIR_WINDOW)")?;
        if w.len() != 20 {
            return Err(no(format!(
                "TCP_REPAIR_WINDOW returned {} bytes, expected 20",
                w.len()
            )));
        }
        Ok(String::new())
    })
}

pub fn tcp_repair_queue() -> R {
    in_netns(|| {
        let (mut c, _s) = tcp_pair()?;
        c.write_all(b"x").fail("write")?;
        set_int(c.as_fd(), SOL_TCP, TCP_REPAIR, 1).no("TCP_REPAIR")?;
        let mut seqs = Vec::new();
        for q in [1, 2] {
            set_int(c.as_fd(), SOL_TCP, TCP_REPAIR_QUEUE, q).no("setsockopt(TCP_REPAIR_QUEUE)")?;
            seqs.push(get_int(c.as_fd(), SOL_TCP, TCP_QUEUE_SEQ).no("getsockopt(TCP_QUEUE_SEQ)")?);
        }
        Ok(format!("recv seq {:#x}, send seq {:#x}", seqs[0], seqs[1]))
    })
}

pub fn tcp_repair_options() -> R {
    in_netns(|| {
        let (c, _s) = tcp_pair()?;
        set_int(c.as_fd(), SOL_TCP, TCP_REPAIR, 1).no("TCP_REPAIR")?;
        // struct tcp_repair_opt { u32 opt_code; u32 opt_val; }: MSS (2) and window scale (3).
        let mut opts = Vec::new();
        for (code, val) in [(2u32, 1400u32), (3, 7)] {
            opts.extend_from_slice(&code.to_ne_bytes());
            opts.extend_from_slice(&val.to_ne_bytes());
        }
        kernel::socket::setsockopt_bytes(c.as_fd(), SOL_TCP, TCP_REPAIR_OPTIONS, &opts)
            .no("setsockopt(TCP_REPAIR_OPTIONS)")?;
        Ok(String::new())
    })
}

pub fn so_get_filter() -> R {
    in_netns(|| {
        let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).fail("udp socket")?;
        // A one-instruction classic BPF program: "ret #0xffff".
        let insn: [u8; 8] = [0x06, 0, 0, 0, 0xff, 0xff, 0, 0];
        let mut prog = Vec::new();
        prog.extend_from_slice(&1u16.to_ne_bytes());
        prog.extend_from_slice(&[0; 6]);
        prog.extend_from_slice(&(insn.as_ptr() as u64).to_ne_bytes());
        kernel::socket::setsockopt_bytes(
            s.as_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            &prog,
        )
        .fail("SO_ATTACH_FILTER")?;
        let got = kernel::socket::socket_filter(s.as_fd()).no("getsockopt(SO_GET_FILTER)")?;
        if got != insn {
            return Err(no(format!(
                "SO_GET_FILTER returned {got:?}, not the attached program"
            )));
        }
        kernel::socket::setsockopt_bytes(
            s.as_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            b"lo\0",
        )
        .fail("SO_BINDTODEVICE lo")?;
        let dev = kernel::socket::getsockopt_bytes(
            s.as_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            16,
        )
        .no("getsockopt(SO_BINDTODEVICE)")?;
        if !dev.starts_with(b"lo") {
            return Err(no(format!(
                "SO_BINDTODEVICE read back {:?}",
                String::from_utf8_lossy(&dev)
            )));
        }
        Ok(String::new())
    })
}

pub fn sockopt_buf_lock() -> R {
    let (a, _b) = UnixDatagram::pair().fail("socketpair")?;
    const SO_BUF_LOCK: i32 = 72;
    set_int(a.as_fd(), libc::SOL_SOCKET, SO_BUF_LOCK, 3).no("setsockopt(SO_BUF_LOCK)")?;
    let v = get_int(a.as_fd(), libc::SOL_SOCKET, SO_BUF_LOCK).no("getsockopt(SO_BUF_LOCK)")?;
    if v != 3 {
        return Err(no(format!("SO_BUF_LOCK read back {v}")));
    }
    Ok(String::new())
}

pub fn ipv6_freebind() -> R {
    let fd = socket(
        AddressFamily::Inet6,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .no("socket(AF_INET6)")?;
    set_int(fd.as_fd(), libc::SOL_IPV6, libc::IPV6_FREEBIND, 1).no("setsockopt(IPV6_FREEBIND)")?;
    if get_int(fd.as_fd(), libc::SOL_IPV6, libc::IPV6_FREEBIND).no("getsockopt(IPV6_FREEBIND)")?
        != 1
    {
        return Err(no("IPV6_FREEBIND did not read back as 1"));
    }
    Ok(String::new())
}

fn same_ns(fd: BorrowedFd<'_>, path: &str) -> Result<bool, Outcome> {
    let a = nix::sys::stat::fstat(fd).fail("fstat")?;
    let b = std::fs::metadata(path).fail(path)?;
    Ok(a.st_ino == b.st_ino() && a.st_dev == b.st_dev())
}

fn skns(fd: BorrowedFd<'_>) -> Result<OwnedFd, Outcome> {
    kernel::socket::socket_netns(fd).no("ioctl(SIOCGSKNS)")
}

pub fn sk_ns() -> R {
    let (a, _b) = UnixDatagram::pair().fail("socketpair")?;
    let ns = skns(a.as_fd())?;
    if !same_ns(ns.as_fd(), "/proc/thread-self/ns/net")? {
        return Err(no("SIOCGSKNS returned a different network namespace"));
    }
    Ok(String::new())
}

pub fn netns_cookie() -> R {
    let (a, _b) = UnixDatagram::pair().fail("socketpair")?;
    const SO_NETNS_COOKIE: i32 = 71;
    let v = kernel::socket::getsockopt_bytes(a.as_fd(), libc::SOL_SOCKET, SO_NETNS_COOKIE, 8)
        .no("getsockopt(SO_NETNS_COOKIE)")?;
    if v.len() != 8 || v.iter().all(|b| *b == 0) {
        return Err(no("SO_NETNS_COOKIE returned no cookie"));
    }
    Ok(String::new())
}

pub fn sk_unix_file() -> R {
    let dir = tempfile::tempdir().fail("temporary directory")?;
    let path = dir.path().join("sk");
    let l = UnixListener::bind(&path).fail("bind")?;
    let fd = kernel::socket::unix_socket_file(l.as_fd()).no("ioctl(SIOCUNIXFILE)")?;
    let a = nix::sys::stat::fstat(fd.as_fd()).fail("fstat")?;
    let b = std::fs::metadata(&path).fail("stat")?;
    if a.st_ino != b.st_ino() {
        return Err(no("SIOCUNIXFILE opened a different file"));
    }
    Ok(String::new())
}

pub fn nsid() -> R {
    let s = nl::Socket::open(SockProtocol::NetlinkRoute).no("netlink route socket")?;
    let pid = u32::try_from(nix::unistd::getpid().as_raw()).unwrap_or(0);
    let msgs = s
        .request(
            Builder::new(RTM_GETNSID, nl::NLM_F_REQUEST | nl::NLM_F_ACK, &[0u8; 4])
                .attr(2, &pid.to_ne_bytes())
                .finish(),
        )
        .no("RTM_GETNSID")?;
    let m = msgs.first().ok_or_else(|| no("no answer to RTM_GETNSID"))?;
    nl::find(m.payload.get(4..).unwrap_or(&[]), 1)
        .ok_or_else(|| no("RTM_GETNSID answer lacks NETNSA_NSID"))?;
    Ok(String::new())
}

fn new_veth(
    s: &nl::Socket,
    name: &str,
    peer: &str,
    index: Option<i32>,
    peer_ns: Option<BorrowedFd<'_>>,
) -> Result<(), nix::errno::Errno> {
    let mut peer_msg = Builder::new(0, 0, &ifinfomsg(0, 0, 0)).str(IFLA_IFNAME, peer);
    if let Some(ns) = peer_ns {
        peer_msg = peer_msg.attr(IFLA_NET_NS_FD, &ns.as_raw_fd().to_ne_bytes());
    }
    let peer_bytes = peer_msg.finish();
    let mut b = Builder::new(
        RTM_NEWLINK,
        nl::NLM_F_REQUEST | nl::NLM_F_ACK | nl::NLM_F_CREATE | nl::NLM_F_EXCL,
        &ifinfomsg(0, 0, 0),
    )
    .str(IFLA_IFNAME, name);
    if let Some(i) = index {
        b = b.attr(IFLA_NEW_IFINDEX, &i.to_ne_bytes());
    }
    let msg = b
        .nest(IFLA_LINKINFO)
        .str(1, "veth")
        .nest(2)
        .attr(1, &peer_bytes[16..])
        .end()
        .end()
        .finish();
    s.request(msg).map(drop)
}

/// A number and an ifindex no earlier probe run in this process used: links
/// made in a second namespace vanish with it, but asynchronously, so
/// repeated runs must not reuse names.
fn unique() -> (u32, i32) {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 100_000;
    (n, 4242 + i32::try_from(n).unwrap_or(0))
}

fn links(s: &nl::Socket) -> Result<Vec<nl::Msg>, nix::errno::Errno> {
    s.request(
        Builder::new(
            RTM_GETLINK,
            nl::NLM_F_REQUEST | nl::NLM_F_DUMP,
            &ifinfomsg(0, 0, 0),
        )
        .finish(),
    )
}

fn link_index(s: &nl::Socket, name: &str) -> Result<Option<i32>, nix::errno::Errno> {
    Ok(links(s)?.iter().find_map(|m| {
        let n = nl::find(m.payload.get(16..).unwrap_or(&[]), IFLA_IFNAME)?;
        (n.strip_suffix(&[0]).unwrap_or(n) == name.as_bytes())
            .then(|| {
                m.payload
                    .get(4..8)
                    .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            })
            .flatten()
    }))
}

/// From inside the scratch namespace: keeps a handle on it, moves the calling
/// thread into a second, new namespace and opens a route socket there.
fn second_netns() -> Result<(std::fs::File, nl::Socket), Outcome> {
    let first =
        std::fs::File::open("/proc/thread-self/ns/net").fail("opening the first namespace")?;
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).fail("a second namespace")?;
    let s = nl::Socket::open(SockProtocol::NetlinkRoute).fail("netlink route socket")?;
    Ok((first, s))
}

pub fn newifindex() -> R {
    let (n, index) = unique();
    let (end0, end1) = (format!("stasisi{n}"), format!("stasisj{n}"));
    in_netns(|| {
        // Create a veth pair in a second namespace, then move one end into
        // the first with IFLA_NEW_IFINDEX, as restore does for links.
        let (first, s) = second_netns()?;
        new_veth(&s, &end0, &end1, None, None).no("creating a veth pair (CONFIG_VETH)")?;
        let idx = link_index(&s, &end1)
            .fail("RTM_GETLINK")?
            .ok_or_else(|| error("the new veth end is not listed"))?;
        let msg = Builder::new(
            RTM_NEWLINK,
            nl::NLM_F_REQUEST | nl::NLM_F_ACK,
            &ifinfomsg(idx, 0, 0),
        )
        .attr(IFLA_NET_NS_FD, &first.as_raw_fd().to_ne_bytes())
        .attr(IFLA_NEW_IFINDEX, &index.to_ne_bytes())
        .finish();
        s.request(msg).no("moving a link with IFLA_NEW_IFINDEX")?;
        nix::sched::setns(&first, nix::sched::CloneFlags::CLONE_NEWNET).fail("setns back")?;
        let s = nl::Socket::open(SockProtocol::NetlinkRoute).fail("netlink route socket")?;
        let got = link_index(&s, &end1).fail("RTM_GETLINK")?;
        match got {
            Some(i) if i == index => Ok(String::new()),
            other => Err(no(format!(
                "the moved link has index {other:?}, not the requested {index}"
            ))),
        }
    })
}

pub fn link_nsid() -> R {
    let (n, _) = unique();
    let (end0, end1) = (format!("stasisp{n}"), format!("stasisq{n}"));
    in_netns(|| {
        let (first, s) = second_netns()?;
        new_veth(&s, &end0, &end1, None, Some(first.as_fd()))
            .no("veth pair across namespaces (CONFIG_VETH)")?;
        let msgs = links(&s).fail("RTM_GETLINK")?;
        let has = msgs
            .iter()
            .any(|m| nl::find(m.payload.get(16..).unwrap_or(&[]), IFLA_LINK_NETNSID).is_some());
        if !has {
            return Err(no(
                "no IFLA_LINK_NETNSID on a veth whose peer is in another namespace",
            ));
        }
        Ok(String::new())
    })
}

fn open_tun() -> Result<std::fs::File, Outcome> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| no(format!("opening /dev/net/tun: {e} (CONFIG_TUN)")))
}

pub fn tun() -> R {
    let f = open_tun()?;
    let mut idx: i32 = 13;
    kernel::ioctl::ioctl_int_ptr(f.as_fd(), kernel::ioctl::ioc::TUNSETIFINDEX, &mut idx)
        .no("ioctl(TUNSETIFINDEX)")?;
    Ok(String::new())
}

pub fn tun_ns() -> R {
    // A tun file remembers the namespace it was opened in; SIOCGSKNS on it
    // must return that namespace even before a device is attached.
    let f = open_tun()?;
    let ns = skns(f.as_fd())?;
    if !same_ns(ns.as_fd(), "/proc/thread-self/ns/net")? {
        return Err(no("SIOCGSKNS on a tun fd returned another namespace"));
    }
    Ok(String::new())
}

use nft::{
    NFPROTO_INET, NFT_MSG_DELTABLE, NFT_MSG_GETSET, NFT_MSG_GETTABLE, NFT_MSG_NEWSET,
    NFT_MSG_NEWTABLE, batch as nft_batch, msg_type, nfgen, table_msg as nft_table_msg,
};

fn nft_with_table(
    table: &str,
    body: impl FnOnce(&nl::Socket) -> Result<String, Outcome> + Send,
) -> R {
    in_netns(|| {
        let s = nl::Socket::open(SockProtocol::NetlinkNetFilter).no("socket(NETLINK_NETFILTER)")?;
        nft_batch(&s, vec![nft_table_msg(NFT_MSG_NEWTABLE, table)])
            .no("creating an nftables table (CONFIG_NF_TABLES)")?;
        let tables = s
            .request(
                Builder::new(
                    msg_type(NFT_MSG_GETTABLE),
                    nl::NLM_F_REQUEST | nl::NLM_F_DUMP,
                    &nfgen(NFPROTO_INET, 0),
                )
                .finish(),
            )
            .no("listing nftables tables")?;
        if !tables.iter().any(|m| {
            nl::find(m.payload.get(4..).unwrap_or(&[]), 1)
                .is_some_and(|n| n.starts_with(table.as_bytes()))
        }) {
            return Err(no("the new table is not listed"));
        }
        let r = body(&s);
        nft_batch(&s, vec![nft_table_msg(NFT_MSG_DELTABLE, table)])
            .fail("deleting the probe table")?;
        r
    })
}

pub fn nftables() -> R {
    nft_with_table("stasis_probe", |_| {
        Ok("nftables tables can be created and deleted over netlink".into())
    })
}

pub fn network_lock_nftables() -> R {
    nft_with_table("stasis_lock_probe", |s| {
        let elem = |len: u32| Builder::new(0, 0, &[]).nest(1).be32(1, len).end().finish();
        let (e1, e2) = (elem(4), elem(4));
        let set = Builder::new(msg_type(NFT_MSG_NEWSET), nl::NLM_F_REQUEST | nl::NLM_F_ACK | nl::NLM_F_CREATE, &nfgen(NFPROTO_INET, 0))
            .str(1, "stasis_lock_probe")
            .str(2, "lock")
            .be32(4, (7 << 6) | 13) // ipv4_addr . inet_service
            .be32(5, 8)
            .be32(10, 1)
            .be32(3, 0x80) // NFT_SET_CONCAT
            .nest(9)
            .nest(2)
            .attr_raw(&e1[16..])
            .attr_raw(&e2[16..])
            .end()
            .end()
            .finish();
        nft_batch(s, vec![set]).no("creating a set with a concatenated key")?;
        let sets = s
            .request(
                Builder::new(
                    msg_type(NFT_MSG_GETSET),
                    nl::NLM_F_REQUEST | nl::NLM_F_DUMP,
                    &nfgen(NFPROTO_INET, 0),
                )
                .str(1, "stasis_lock_probe")
                .finish(),
            )
            .no("listing sets")?;
        let concat = sets.iter().any(|m| {
            nl::find(m.payload.get(4..).unwrap_or(&[]), 9)
                .and_then(|d| nl::find(d, 2))
                .is_some()
        });
        if !concat {
            return Err(no(
                "the kernel dropped the set's concatenation description (needs 5.6+)",
            ));
        }
        Ok(String::new())
    })
}

pub fn has_ipt_legacy() -> R {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    let mut missing = Vec::new();
    for bin in ["iptables-legacy", "ip6tables-legacy"] {
        if !std::env::split_paths(&path).any(|d| d.join(bin).is_file()) {
            missing.push(bin);
        }
    }
    if missing.is_empty() {
        Ok(String::new())
    } else {
        Err(no(format!(
            "{} not found in PATH (stasis locks the network with nftables and does not need them)",
            missing.join(" and ")
        )))
    }
}

pub fn external_net_ns() -> R {
    Ok("a version marker: --external net[...] is understood".into())
}

pub fn unix_diag_peers() -> R {
    let (a, b) = UnixStream::pair().fail("socketpair")?;
    let (ia, ib) = (ino(a.as_fd())?, ino(b.as_fd())?);
    let s = nl::Socket::open(SockProtocol::NetlinkSockDiag).no("socket(NETLINK_SOCK_DIAG)")?;
    // A single-socket query by inode, asking for the peer (UDIAG_SHOW_PEER = 4)
    // and the queue lengths (UDIAG_SHOW_RQLEN = 16).
    let mut req = diag_req(AF_UNIX, 0, true, 4 | 16);
    req[8..12].copy_from_slice(&ia.to_ne_bytes());
    req[16..24].copy_from_slice(&[0xff; 8]);
    let msgs = s
        .request(
            Builder::new(SOCK_DIAG_BY_FAMILY, nl::NLM_F_REQUEST | nl::NLM_F_ACK, &req).finish(),
        )
        .no("unix_diag lookup by inode")?;
    let m = msgs.first().ok_or_else(|| no("no answer for our socket"))?;
    let peer = nl::find(m.payload.get(16..).unwrap_or(&[]), 2)
        .ok_or_else(|| no("UNIX_DIAG_PEER missing"))?;
    if peer.get(..4) != Some(&ib.to_ne_bytes()[..]) {
        return Err(no("UNIX_DIAG_PEER names the wrong socket"));
    }
    Ok(String::new())
}
