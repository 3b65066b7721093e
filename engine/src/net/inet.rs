//! IPv4 and IPv6 sockets (`inet_sk_entry` in `files.img`): TCP listeners,
//! UDP and UDP-Lite sockets bound or connected, with their options and the
//! datagrams queued on them (`sk-queues.img`, each with its sender's
//! address), ICMP "ping" sockets with their echo identifier, and raw
//! sockets of any protocol with IP_HDRINCL, IP_NODEFRAG and the ICMP type
//! filters. Packets queued on ping and raw sockets are not kept: they came
//! from the network, and are lost as a network may lose them. Established
//! TCP connections are taken with TCP repair (see `tcp`). The restore makes
//! every inet socket at once, inside the network namespace the engine
//! recreated, so queued datagrams can be sent again from the socket that
//! sent them.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::sys::socket::{
    AddressFamily, Backlog, MsgFlags, SockFlag, SockType, SockaddrStorage, sockopt,
};
use stasis_proto::images::file_entry::Kind;
use stasis_proto::images::{FownEntry, InetSkEntry, IpOptsEntry, IpOptsRawEntry, SkOptsEntry};

use crate::error::{EngineError as Error, Result};
use crate::files::{FdCtx, FileKind, OpenCtx, Table};
use crate::sys;

/// IPv4 and IPv6 sockets.
#[derive(Debug)]
pub struct InetSk;

use crate::net::tcp::{TCP_CLOSE, TCP_ESTABLISHED, TCP_LISTEN};

/// (address words in network order, port) of a socket address.
fn split(a: &SocketAddr) -> (Vec<u32>, u32) {
    match a {
        SocketAddr::V4(v) => (
            vec![u32::from_ne_bytes(v.ip().octets())],
            u32::from(v.port()),
        ),
        SocketAddr::V6(v) => (
            v.ip()
                .octets()
                .chunks_exact(4)
                .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            u32::from(v.port()),
        ),
    }
}

fn join(family: u32, words: &[u32], port: u32) -> Option<SocketAddr> {
    let port = u16::try_from(port).ok()?;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    if family == libc::AF_INET6.cast_unsigned() {
        let b: [u8; 16] = bytes.get(..16)?.try_into().ok()?;
        Some(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(b),
            port,
            0,
            0,
        )))
    } else {
        let b: [u8; 4] = bytes.get(..4)?.try_into().ok()?;
        Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(b), port)))
    }
}

fn std_addr(s: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v) = s.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::new(v.ip(), v.port())));
    }
    s.as_sockaddr_in6().map(|v| {
        SocketAddr::V6(SocketAddrV6::new(
            v.ip(),
            v.port(),
            v.flowinfo(),
            v.scope_id(),
        ))
    })
}

/// The address in a raw sockaddr_in / sockaddr_in6 (as recvmsg wrote it).
fn parse_raw(raw: &[u8]) -> Option<SocketAddr> {
    let fam = i32::from(u16::from_ne_bytes([*raw.first()?, *raw.get(1)?]));
    let port = u16::from_be_bytes([*raw.get(2)?, *raw.get(3)?]);
    if fam == libc::AF_INET {
        let b: [u8; 4] = raw.get(4..8)?.try_into().ok()?;
        Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(b), port)))
    } else if fam == libc::AF_INET6 {
        let b: [u8; 16] = raw.get(8..24)?.try_into().ok()?;
        Some(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(b),
            port,
            0,
            0,
        )))
    } else {
        None
    }
}

/// The backlog of TCP listener `ino` and the connections waiting in its
/// accept queue (sock_diag gives them as its send and receive queues),
/// asked in the current thread's namespace.
fn listen_backlog(family: u32, ino: u32) -> Option<(u32, u32)> {
    use netlink_packet_sock_diag::SockDiagMessage;
    use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
    let v6 = family == libc::AF_INET6.cast_unsigned();
    let answers = crate::net::unix::sock_diag(SockDiagMessage::InetRequest(InetRequest {
        family: u8::try_from(family).ok()?,
        protocol: u8::try_from(libc::IPPROTO_TCP).ok()?,
        extensions: ExtensionFlags::empty(),
        states: StateFlags::LISTEN,
        socket_id: if v6 {
            SocketId::new_v6()
        } else {
            SocketId::new_v4()
        },
    }))
    .ok()?;
    answers.into_iter().find_map(|a| match a {
        SockDiagMessage::InetResponse(r) if r.header.inode == ino => {
            Some((r.header.send_queue, r.header.recv_queue))
        }
        _ => None,
    })
}

fn opt_bool<O: nix::sys::socket::GetSockOpt<Val = bool>>(fd: &OwnedFd, o: O) -> Option<bool> {
    nix::sys::socket::getsockopt(fd, o).ok()
}

// What libc does not name (linux/in.h, linux/icmp.h, linux/icmpv6.h).
const IP_NODEFRAG: i32 = 22;
const IPV6_FREEBIND: i32 = 78;
const SOL_RAW: i32 = 255;
const ICMP_FILTER: i32 = 1;
const ICMPV6_FILTER: i32 = 1;

/// The options of a raw socket: IP_HDRINCL, IP_NODEFRAG, and the filter of
/// ICMP types (one word for ICMP, eight for ICMPv6).
fn raw_opts(fd: &OwnedFd, family: u32, proto: i32) -> nix::Result<IpOptsRawEntry> {
    let mut e = IpOptsRawEntry::default();
    if family == libc::AF_INET.cast_unsigned() {
        e.hdrincl = Some(sys::getsockopt_int(fd.as_fd(), libc::IPPROTO_IP, libc::IP_HDRINCL)? != 0);
        e.nodefrag = Some(sys::getsockopt_int(fd.as_fd(), libc::IPPROTO_IP, IP_NODEFRAG)? != 0);
        if proto == libc::IPPROTO_ICMP {
            let f = sys::getsockopt_bytes(fd.as_fd(), SOL_RAW, ICMP_FILTER, 4)?;
            e.icmpv_filter = crate::net::sk_opts::words(&f);
        }
    } else if proto == libc::IPPROTO_ICMPV6 {
        let f = sys::getsockopt_bytes(fd.as_fd(), libc::IPPROTO_ICMPV6, ICMPV6_FILTER, 32)?;
        e.icmpv_filter = crate::net::sk_opts::words(&f);
    } else {
        e.hdrincl =
            Some(sys::getsockopt_int(fd.as_fd(), libc::IPPROTO_IPV6, libc::IPV6_HDRINCL)? != 0);
    }
    Ok(e)
}

/// Put the options of a raw socket back.
fn set_raw_opts(fd: &OwnedFd, family: u32, proto: i32, e: &IpOptsRawEntry) -> nix::Result<()> {
    let v4 = family == libc::AF_INET.cast_unsigned();
    if e.hdrincl == Some(true) {
        if v4 {
            sys::setsockopt_int(fd.as_fd(), libc::IPPROTO_IP, libc::IP_HDRINCL, 1)?;
        } else {
            sys::setsockopt_int(fd.as_fd(), libc::IPPROTO_IPV6, libc::IPV6_HDRINCL, 1)?;
        }
    }
    if e.nodefrag == Some(true) && v4 {
        sys::setsockopt_int(fd.as_fd(), libc::IPPROTO_IP, IP_NODEFRAG, 1)?;
    }
    if !e.icmpv_filter.is_empty() {
        let bytes: Vec<u8> = e
            .icmpv_filter
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .collect();
        if v4 && proto == libc::IPPROTO_ICMP {
            sys::setsockopt_bytes(fd.as_fd(), SOL_RAW, ICMP_FILTER, &bytes)?;
        } else if !v4 && proto == libc::IPPROTO_ICMPV6 {
            sys::setsockopt_bytes(fd.as_fd(), libc::IPPROTO_ICMPV6, ICMPV6_FILTER, &bytes)?;
        }
    }
    Ok(())
}

impl FileKind for InetSk {
    type Entry = InetSkEntry;
    const NAME: &'static str = "inet socket";

    fn set_id(e: &mut InetSkEntry, id: u32) {
        e.id = id;
    }

    fn dump(cx: &FdCtx<'_>, table: &mut Table) -> Result<Kind> {
        let what = format!("fd {} ({})", cx.fd.fd, cx.fd.target);
        let dup = cx.dup().map_err(Error::dump(cx.pid, what.clone()))?;
        let int = |name| {
            sys::getsockopt_int(dup.as_fd(), libc::SOL_SOCKET, name)
                .map_err(Error::dump(cx.pid, what.clone()))
        };
        let family = int(libc::SO_DOMAIN)?.cast_unsigned();
        let ty = int(libc::SO_TYPE)?;
        let proto = int(libc::SO_PROTOCOL)?.cast_unsigned();
        let p = proto.cast_signed();
        let known = match ty {
            libc::SOCK_STREAM => p == libc::IPPROTO_TCP,
            libc::SOCK_DGRAM => matches!(
                p,
                libc::IPPROTO_UDP
                    | libc::IPPROTO_UDPLITE
                    | libc::IPPROTO_ICMP
                    | libc::IPPROTO_ICMPV6
            ),
            libc::SOCK_RAW => true,
            _ => false,
        };
        if !known {
            return Err(Error::Unsupported {
                pid: cx.pid,
                what: format!(
                    "{what}: an inet socket of type {ty}, protocol {proto} (TCP, UDP, UDP-Lite, \
                     ping and raw sockets are dumped; SCTP and others are not),"
                ),
            });
        }
        let udp = ty == libc::SOCK_DGRAM && matches!(p, libc::IPPROTO_UDP | libc::IPPROTO_UDPLITE);
        let local = nix::sys::socket::getsockname::<SockaddrStorage>(dup.as_raw_fd())
            .ok()
            .and_then(|s| std_addr(&s));
        let peer = nix::sys::socket::getpeername::<SockaddrStorage>(dup.as_raw_fd())
            .ok()
            .and_then(|s| std_addr(&s));
        let mut tcp_state = 0;
        if ty == libc::SOCK_STREAM {
            // Connections being set up cannot be put back.
            tcp_state = crate::net::tcp::state(dup.as_fd())
                .map_err(Error::dump(cx.pid, format!("{what}: TCP_INFO")))?;
            if let Some(name) = crate::net::tcp::refused(tcp_state) {
                return Err(Error::Unsupported {
                    pid: cx.pid,
                    what: format!(
                        "{what}: a TCP connection in state {name} (connections being set up, \
                         and TIME_WAIT, are not dumped),"
                    ),
                });
            }
        }
        if udp {
            let corked = sys::getsockopt_int(dup.as_fd(), libc::SOL_UDP, libc::UDP_CORK)
                .map_err(Error::dump(cx.pid, format!("{what}: UDP_CORK")))?;
            let pending = sys::ioctl_int_get(dup.as_fd(), libc::TIOCOUTQ)
                .map_err(Error::dump(cx.pid, format!("{what}: SIOCOUTQ")))?;
            if corked != 0 && pending > 0 {
                return Err(Error::Unsupported {
                    pid: cx.pid,
                    what: format!(
                        "{what}: a corked UDP socket holding {pending} bytes not yet \
                         sent (they cannot be read back),"
                    ),
                });
            }
            if corked != 0 {
                tracing::warn!(pid = %cx.pid, fd = cx.fd.fd, "UDP_CORK is not kept: the restored socket sends each datagram at once");
            }
        }
        let listening = int(libc::SO_ACCEPTCONN)? == 1;
        let state = if listening {
            TCP_LISTEN
        } else if ty == libc::SOCK_STREAM && crate::net::tcp::connected(tcp_state) {
            tcp_state
        } else if peer.is_some() {
            TCP_ESTABLISHED
        } else {
            TCP_CLOSE
        };
        let ino = u32::try_from(std::os::unix::fs::MetadataExt::ino(cx.meta)).unwrap_or(0);
        if ty == libc::SOCK_STREAM && crate::net::tcp::connected(state) {
            if !table.opts().tcp_established {
                return Err(Error::Unsupported {
                    pid: cx.pid,
                    what: format!(
                        "{what}: an established TCP connection without --tcp-established,"
                    ),
                });
            }
            let keep = dup.try_clone().map_err(|err| Error::Proc {
                pid: cx.pid,
                path: what.clone(),
                err,
            })?;
            // Locked first: nothing the peer sends from now on is taken in
            // (and acknowledged) after the queues are read.
            if let (Some(lock), Some(l), Some(p)) = (table.tcp.lock_mut(), local, peer) {
                lock.add(l, p).map_err(Error::dump(
                    cx.pid,
                    format!(
                        "{what}: locking the connection with nftables (CONFIG_NF_TABLES; \
                         --network-lock skip dumps without the lock)"
                    ),
                ))?;
            }
            crate::net::tcp::repair_on(dup.as_fd())
                .map_err(Error::dump(cx.pid, format!("{what}: TCP_REPAIR")))?;
            table.tcp.repairing(keep);
            let (e, inq, outq) = crate::net::tcp::dump(&dup, state).map_err(Error::dump(
                cx.pid,
                format!("{what}: the connection's state"),
            ))?;
            table.tcp.push(ino, e, inq, outq);
        }
        let (src_addr, src_port) = local.as_ref().map(split).unwrap_or_default();
        let (dst_addr, dst_port) = peer.as_ref().map(split).unwrap_or_default();
        let opts = SkOptsEntry {
            reuseaddr: opt_bool(&dup, sockopt::ReuseAddr),
            so_reuseport: opt_bool(&dup, sockopt::ReusePort),
            so_keepalive: opt_bool(&dup, sockopt::KeepAlive),
            so_broadcast: opt_bool(&dup, sockopt::Broadcast),
            so_linger: nix::sys::socket::getsockopt(&dup, sockopt::Linger)
                .ok()
                .filter(|l| l.l_onoff != 0)
                .and_then(|l| u32::try_from(l.l_linger).ok()),
            so_bound_dev: nix::sys::socket::getsockopt(&dup, sockopt::BindToDevice)
                .ok()
                .map(|d| d.to_string_lossy().into_owned())
                .filter(|d| !d.is_empty()),
            ..crate::net::sk_opts::dump_common(cx, dup.as_fd())?
        };
        let freebind = if family == libc::AF_INET.cast_unsigned() {
            opt_bool(&dup, sockopt::IpFreebind) == Some(true)
        } else {
            sys::getsockopt_int(dup.as_fd(), libc::IPPROTO_IPV6, IPV6_FREEBIND)
                .is_ok_and(|v| v != 0)
        };
        // Keepalive timing, for a stream that sends probes.
        let mut opts = opts;
        if ty == libc::SOCK_STREAM && opts.so_keepalive == Some(true) {
            let tcp = |o| {
                sys::getsockopt_int(dup.as_fd(), libc::SOL_TCP, o)
                    .ok()
                    .map(i32::cast_unsigned)
            };
            opts.tcp_keepidle = tcp(libc::TCP_KEEPIDLE);
            opts.tcp_keepintvl = tcp(libc::TCP_KEEPINTVL);
            opts.tcp_keepcnt = tcp(libc::TCP_KEEPCNT);
        }
        let backlog = if listening {
            let ask = || listen_backlog(family, ino);
            let got = match table.unix.netns_of {
                Some(p) => {
                    crate::ns::inside(p, "net", nix::sched::CloneFlags::CLONE_NEWNET, || Ok(ask()))?
                }
                None => ask(),
            };
            let (backlog, waiting) =
                got.ok_or_else(|| cx.format_err("listen backlog (sock_diag)"))?;
            // Connections not accepted yet go with the killed listener.
            if waiting > 0 && !table.opts().leave_running {
                if !table.opts().skip_in_flight {
                    return Err(Error::Unsupported {
                        pid: cx.pid,
                        what: format!(
                            "{what}: a listener with {waiting} connection(s) not accepted yet \
                             (they would be lost; dump again once they are accepted, or pass \
                             --skip-in-flight to drop them),"
                        ),
                    });
                }
                tracing::warn!(pid = %cx.pid, "{what}: {waiting} connection(s) not accepted yet are dropped (--skip-in-flight)");
            }
            backlog
        } else {
            0
        };
        let raw = (ty == libc::SOCK_RAW)
            .then(|| raw_opts(&dup, family, p))
            .transpose()
            .map_err(Error::dump(
                cx.pid,
                format!("{what}: its raw socket options"),
            ))?;
        if udp {
            let packets = crate::net::unix::peek_datagrams(&dup, table)
                .map_err(Error::dump(cx.pid, format!("{what}: its queued datagrams")))?;
            for (data, from) in packets {
                table.unix.push_queue(ino, data, from);
            }
        }
        Ok(Kind::Isk(InetSkEntry {
            id: 0,
            ino,
            family,
            r#type: ty.cast_unsigned(),
            proto,
            state,
            src_port,
            dst_port,
            flags: cx.flags(),
            backlog,
            src_addr,
            dst_addr,
            fown: FownEntry::default(),
            opts,
            // Raw sockets have no IPV6_V6ONLY to set back.
            v6only: (family == libc::AF_INET6.cast_unsigned() && ty != libc::SOCK_RAW)
                .then(|| opt_bool(&dup, sockopt::Ipv6V6Only))
                .flatten(),
            ip_opts: (freebind || raw.is_some()).then_some(IpOptsEntry {
                freebind: freebind.then_some(true),
                raw,
            }),
            ifname: None,
            ns_id: None,
            shutdown: None,
        }))
    }

    fn open(e: &InetSkEntry, cx: &mut OpenCtx<'_>) -> Result<OwnedFd> {
        if cx.inet_made.is_none() {
            let m = make_all(cx)?;
            cx.inet_made = Some(m);
        }
        let fd = cx
            .inet_made
            .as_ref()
            .and_then(|m| m.get(&e.id))
            .ok_or_else(|| Error::BadImage {
                path: crate::images::img::FILES.file_name(0),
                what: format!("inet socket {} was not made", e.ino),
            })?;
        fd.try_clone().map_err(|err| Error::Proc {
            pid: cx.pid,
            path: format!("fd {} (inet socket)", cx.fd),
            err,
        })
    }
}

fn make_all(cx: &OpenCtx<'_>) -> Result<HashMap<u32, OwnedFd>> {
    let pid = cx.pid;
    let all: Vec<&InetSkEntry> = cx
        .table
        .entries()
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Isk(u)) => Some(u),
            _ => None,
        })
        .collect();
    let mut made = HashMap::new();
    let mut bound: Vec<(SocketAddr, u32)> = Vec::new();
    for u in &all {
        let fail = |step: &str| Error::restore(pid, format!("inet socket {} ({step})", u.ino));
        let domain = if u.family == libc::AF_INET6.cast_unsigned() {
            libc::AF_INET6
        } else {
            libc::AF_INET
        };
        let raw_ty = u.r#type.cast_signed();
        let ty = match raw_ty {
            libc::SOCK_DGRAM => SockType::Datagram,
            libc::SOCK_RAW => SockType::Raw,
            _ => SockType::Stream,
        };
        let s = sys::socket(domain, raw_ty, u.proto.cast_signed()).map_err(fail("socket"))?;
        crate::net::sk_opts::restore_common(s.as_fd(), &u.opts)
            .map_err(|(step, err)| fail(step)(err))?;
        if let Some(r) = u.ip_opts.as_ref().and_then(|o| o.raw.as_ref()) {
            set_raw_opts(&s, u.family, u.proto.cast_signed(), r)
                .map_err(fail("raw socket options"))?;
        }
        let o = &u.opts;
        let set = |r: nix::Result<()>, step: &str| r.map_err(fail(step));
        let stream = cx
            .table
            .tcp
            .of(u.ino)
            .filter(|_| crate::net::tcp::connected(u.state));
        if o.reuseaddr == Some(true) {
            set(
                nix::sys::socket::setsockopt(&s, sockopt::ReuseAddr, &true),
                "SO_REUSEADDR",
            )?;
        }
        if o.so_reuseport == Some(true) {
            set(
                nix::sys::socket::setsockopt(&s, sockopt::ReusePort, &true),
                "SO_REUSEPORT",
            )?;
        }
        if o.so_keepalive == Some(true) {
            set(
                nix::sys::socket::setsockopt(&s, sockopt::KeepAlive, &true),
                "SO_KEEPALIVE",
            )?;
        }
        if o.so_broadcast == Some(true) {
            set(
                nix::sys::socket::setsockopt(&s, sockopt::Broadcast, &true),
                "SO_BROADCAST",
            )?;
        }
        if let Some(v6) = u.v6only {
            set(
                nix::sys::socket::setsockopt(&s, sockopt::Ipv6V6Only, &v6),
                "IPV6_V6ONLY",
            )?;
        }
        // Before bind: a non-local address needs IP_FREEBIND, a device
        // binding limits which addresses and routes apply.
        if u.ip_opts.as_ref().and_then(|o| o.freebind) == Some(true) {
            if domain == libc::AF_INET6 {
                sys::setsockopt_int(s.as_fd(), libc::IPPROTO_IPV6, IPV6_FREEBIND, 1)
                    .map_err(fail("IPV6_FREEBIND"))?;
            } else {
                set(
                    nix::sys::socket::setsockopt(&s, sockopt::IpFreebind, &true),
                    "IP_FREEBIND",
                )?;
            }
        }
        for (v, name, what) in [
            (o.tcp_keepidle, libc::TCP_KEEPIDLE, "TCP_KEEPIDLE"),
            (o.tcp_keepintvl, libc::TCP_KEEPINTVL, "TCP_KEEPINTVL"),
            (o.tcp_keepcnt, libc::TCP_KEEPCNT, "TCP_KEEPCNT"),
        ] {
            if let Some(v) = v.filter(|_| ty == SockType::Stream) {
                sys::setsockopt_int(s.as_fd(), libc::SOL_TCP, name, v.cast_signed())
                    .map_err(fail(what))?;
            }
        }
        if let Some(dev) = o.so_bound_dev.as_deref() {
            set(
                nix::sys::socket::setsockopt(
                    &s,
                    sockopt::BindToDevice,
                    &std::ffi::OsString::from(dev),
                ),
                "SO_BINDTODEVICE",
            )?;
        }
        if let Some(secs) = o.so_linger {
            let l = libc::linger {
                l_onoff: 1,
                l_linger: i32::try_from(secs).unwrap_or(i32::MAX),
            };
            set(
                nix::sys::socket::setsockopt(&s, sockopt::Linger, &l),
                "SO_LINGER",
            )?;
        }
        // Repair mode, last before bind: it lets a connection share its port
        // with a listener (SO_REUSEADDR set later would undo that).
        if let Some((_, e, _, _)) = stream {
            crate::net::tcp::prepare(&s, e).map_err(fail("TCP_REPAIR"))?;
        }
        if u.src_port != 0
            && let Some(a) = join(u.family, &u.src_addr, u.src_port)
        {
            let st = SockaddrStorage::from(a);
            nix::sys::socket::bind(s.as_raw_fd(), &st).map_err(fail("bind"))?;
            bound.push((a, u.id));
        }
        if u.state == TCP_LISTEN {
            let backlog = Backlog::new(i32::try_from(u.backlog.clamp(1, 4096)).unwrap_or(128))
                .unwrap_or(Backlog::MAXCONN);
            nix::sys::socket::listen(&s, backlog).map_err(fail("listen"))?;
        }
        if let Some((_, e, inq, outq)) = stream {
            let a = join(u.family, &u.dst_addr, u.dst_port).ok_or_else(|| Error::BadImage {
                path: crate::images::img::FILES.file_name(0),
                what: format!("inet socket {}: no peer address", u.ino),
            })?;
            nix::sys::socket::connect(s.as_raw_fd(), &SockaddrStorage::from(a))
                .map_err(fail("connect (repair)"))?;
            crate::net::tcp::finish(&s, e, inq, outq).map_err(fail("TCP repair"))?;
        }
        // Raw sockets have no ports: a peer address alone means connected.
        let connected =
            u.dst_port != 0 || (ty == SockType::Raw && u.dst_addr.iter().any(|&w| w != 0));
        if ty != SockType::Stream
            && connected
            && let Some(a) = join(u.family, &u.dst_addr, u.dst_port)
        {
            let st = SockaddrStorage::from(a);
            nix::sys::socket::connect(s.as_raw_fd(), &st).map_err(fail("connect"))?;
        }
        let fl = nix::fcntl::OFlag::from_bits_truncate(u.flags.cast_signed() & libc::O_NONBLOCK);
        nix::fcntl::fcntl(s.as_fd(), nix::fcntl::FcntlArg::F_SETFL(fl)).map_err(fail("flags"))?;
        made.insert(u.id, s);
    }
    // Both ends of a connection exist now: out of repair mode.
    for u in &all {
        if let Some((_, e, _, _)) = cx
            .table
            .tcp
            .of(u.ino)
            .filter(|_| crate::net::tcp::connected(u.state))
            && let Some(s) = made.get(&u.id)
        {
            crate::net::tcp::repair_done(s.as_fd()).map_err(Error::restore(
                pid,
                format!("inet socket {} (leaving TCP repair)", u.ino),
            ))?;
            // Leaving repair mode clears SO_REUSEADDR.
            if u.opts.reuseaddr == Some(true) {
                nix::sys::socket::setsockopt(s, sockopt::ReuseAddr, &true).map_err(
                    Error::restore(pid, format!("inet socket {} (SO_REUSEADDR)", u.ino)),
                )?;
            }
            if u.state != TCP_ESTABLISHED
                && let (Some(l), Some(p)) = (
                    join(u.family, &u.src_addr, u.src_port),
                    join(u.family, &u.dst_addr, u.dst_port),
                )
            {
                crate::net::tcp::close_halves(s, e, u.state, l, p).map_err(Error::restore(
                    pid,
                    format!(
                        "inet socket {} (closing its half-closed halves again, state {})",
                        u.ino, u.state
                    ),
                ))?;
            }
        }
    }
    // Queued datagrams, from the socket that sent them when it is in the
    // images, to the receiver's address.
    for (id_for, e, data) in cx
        .table
        .unix
        .queued_for(|id| all.iter().any(|u| u.id == id))
    {
        let Some(u) = all.iter().find(|u| u.id == id_for) else {
            continue;
        };
        let Some(to) = join(u.family, &u.src_addr, u.src_port) else {
            continue;
        };
        let to = match to {
            SocketAddr::V4(v) if v.ip().is_unspecified() => {
                SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, v.port()))
            }
            other => other,
        };
        let from = e
            .addr
            .as_deref()
            .and_then(parse_raw)
            .and_then(|from| bound.iter().find(|(a, _)| *a == from))
            .and_then(|(_, id)| made.get(id));
        let tmp;
        let sender = match from {
            Some(s) => s,
            None => {
                tmp = nix::sys::socket::socket(
                    if to.is_ipv6() {
                        AddressFamily::Inet6
                    } else {
                        AddressFamily::Inet
                    },
                    SockType::Datagram,
                    SockFlag::SOCK_CLOEXEC,
                    None,
                )
                .map_err(Error::restore(pid, "a socket for queued datagrams"))?;
                &tmp
            }
        };
        let st = SockaddrStorage::from(to);
        nix::sys::socket::sendto(sender.as_raw_fd(), &data, &st, MsgFlags::MSG_DONTWAIT).map_err(
            Error::restore(pid, format!("inet socket {} (queued datagram)", u.ino)),
        )?;
    }
    Ok(made)
}
