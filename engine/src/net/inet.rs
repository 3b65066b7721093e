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

use stasis_kernel as kernel;
use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, Backlog, MsgFlags, SockFlag, SockType, SockaddrStorage, sockopt,
};
use nix::unistd::Pid;
use stasis_proto::images::file_entry::Kind;
use stasis_proto::images::{
    FownEntry, InetSkEntry, IpOptsEntry, IpOptsRawEntry, SkOptsEntry, SkPacketEntry,
};

use crate::error::{EngineError as Error, Result};
use crate::files::{FdCtx, FileKind, OpenCtx, Table};
use crate::images::img;

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
        e.hdrincl = Some(
            kernel::socket::getsockopt_int(fd.as_fd(), libc::IPPROTO_IP, libc::IP_HDRINCL)? != 0,
        );
        e.nodefrag =
            Some(kernel::socket::getsockopt_int(fd.as_fd(), libc::IPPROTO_IP, IP_NODEFRAG)? != 0);
        if proto == libc::IPPROTO_ICMP {
            let f = kernel::socket::getsockopt_bytes(fd.as_fd(), SOL_RAW, ICMP_FILTER, 4)?;
            e.icmpv_filter = crate::net::sk_opts::words(&f);
        }
    } else if proto == libc::IPPROTO_ICMPV6 {
        let f =
            kernel::socket::getsockopt_bytes(fd.as_fd(), libc::IPPROTO_ICMPV6, ICMPV6_FILTER, 32)?;
        e.icmpv_filter = crate::net::sk_opts::words(&f);
    } else {
        e.hdrincl = Some(
            kernel::socket::getsockopt_int(fd.as_fd(), libc::IPPROTO_IPV6, libc::IPV6_HDRINCL)?
                != 0,
        );
    }
    Ok(e)
}

/// Put the options of a raw socket back.
fn set_raw_opts(fd: &OwnedFd, family: u32, proto: i32, e: &IpOptsRawEntry) -> nix::Result<()> {
    let v4 = family == libc::AF_INET.cast_unsigned();
    if e.hdrincl == Some(true) {
        if v4 {
            kernel::socket::setsockopt_int(fd.as_fd(), libc::IPPROTO_IP, libc::IP_HDRINCL, 1)?;
        } else {
            kernel::socket::setsockopt_int(fd.as_fd(), libc::IPPROTO_IPV6, libc::IPV6_HDRINCL, 1)?;
        }
    }
    if e.nodefrag == Some(true) && v4 {
        kernel::socket::setsockopt_int(fd.as_fd(), libc::IPPROTO_IP, IP_NODEFRAG, 1)?;
    }
    if !e.icmpv_filter.is_empty() {
        let bytes: Vec<u8> = e
            .icmpv_filter
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .collect();
        if v4 && proto == libc::IPPROTO_ICMP {
            kernel::socket::setsockopt_bytes(fd.as_fd(), SOL_RAW, ICMP_FILTER, &bytes)?;
        } else if !v4 && proto == libc::IPPROTO_ICMPV6 {
            kernel::socket::setsockopt_bytes(
                fd.as_fd(),
                libc::IPPROTO_ICMPV6,
                ICMPV6_FILTER,
                &bytes,
            )?;
        }
    }
    Ok(())
}

/// An inet socket being dumped: a copy of the task's fd, what errors call
/// it, and its domain, type and protocol.
struct Probe<'a> {
    cx: &'a FdCtx<'a>,
    dup: OwnedFd,
    what: String,
    family: u32,
    ty: i32,
    proto: u32,
}

impl<'a> Probe<'a> {
    /// Copy the task's fd and ask it what socket it is.
    fn new(cx: &'a FdCtx<'a>) -> Result<Probe<'a>> {
        let what = format!("fd {} ({})", cx.fd.fd, cx.fd.target);
        let dup = cx.dup().map_err(Error::dump(cx.pid, what.clone()))?;
        let mut sk = Probe {
            cx,
            dup,
            what,
            family: 0,
            ty: 0,
            proto: 0,
        };
        sk.family = sk.int(libc::SO_DOMAIN)?.cast_unsigned();
        sk.ty = sk.int(libc::SO_TYPE)?;
        sk.proto = sk.int(libc::SO_PROTOCOL)?.cast_unsigned();
        Ok(sk)
    }

    /// A SOL_SOCKET option of the socket.
    fn int(&self, name: i32) -> Result<i32> {
        kernel::socket::getsockopt_int(self.dup.as_fd(), libc::SOL_SOCKET, name)
            .map_err(Error::dump(self.cx.pid, self.what.clone()))
    }

    /// The socket cannot be dumped as it is: `what` says why.
    fn unsupported(&self, what: String) -> Error {
        Error::Unsupported {
            pid: self.cx.pid,
            what,
        }
    }

    /// Refuse the types and protocols the restore cannot make again.
    fn check_supported(&self) -> Result<()> {
        let p = self.proto.cast_signed();
        let known = match self.ty {
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
        if known {
            return Ok(());
        }
        Err(self.unsupported(format!(
            "{}: an inet socket of type {}, protocol {} (TCP, UDP, UDP-Lite, \
             ping and raw sockets are dumped; SCTP and others are not),",
            self.what, self.ty, self.proto
        )))
    }

    /// The local and the peer address, where the socket has them.
    fn addresses(&self) -> (Option<SocketAddr>, Option<SocketAddr>) {
        let local = nix::sys::socket::getsockname::<SockaddrStorage>(self.dup.as_raw_fd())
            .ok()
            .and_then(|s| std_addr(&s));
        let peer = nix::sys::socket::getpeername::<SockaddrStorage>(self.dup.as_raw_fd())
            .ok()
            .and_then(|s| std_addr(&s));
        (local, peer)
    }

    /// The TCP state of a stream; connections being set up cannot be put
    /// back.
    fn tcp_state(&self) -> Result<u32> {
        let state = crate::net::tcp::state(self.dup.as_fd())
            .map_err(Error::dump(self.cx.pid, format!("{}: TCP_INFO", self.what)))?;
        if let Some(name) = crate::net::tcp::refused(state) {
            return Err(self.unsupported(format!(
                "{}: a TCP connection in state {name} (connections being set up, \
                 and TIME_WAIT, are not dumped),",
                self.what
            )));
        }
        Ok(state)
    }

    /// The state recorded, and whether the socket listens: TCP_LISTEN for
    /// a listener, a connected stream's TCP state, else whether it has a
    /// peer.
    fn state(&self, has_peer: bool) -> Result<(u32, bool)> {
        let tcp_state = if self.ty == libc::SOCK_STREAM {
            self.tcp_state()?
        } else {
            0
        };
        let listening = self.int(libc::SO_ACCEPTCONN)? == 1;
        let state = if listening {
            TCP_LISTEN
        } else if self.ty == libc::SOCK_STREAM && crate::net::tcp::connected(tcp_state) {
            tcp_state
        } else if has_peer {
            TCP_ESTABLISHED
        } else {
            TCP_CLOSE
        };
        Ok((state, listening))
    }

    /// Refuse a corked UDP socket with bytes not sent yet: they cannot be
    /// read back. Without any, the cork alone is dropped.
    fn check_cork(&self) -> Result<()> {
        let corked =
            kernel::socket::getsockopt_int(self.dup.as_fd(), libc::SOL_UDP, libc::UDP_CORK)
                .map_err(Error::dump(self.cx.pid, format!("{}: UDP_CORK", self.what)))?;
        let pending = kernel::ioctl::ioctl_int_get(self.dup.as_fd(), libc::TIOCOUTQ)
            .map_err(Error::dump(self.cx.pid, format!("{}: SIOCOUTQ", self.what)))?;
        if corked != 0 && pending > 0 {
            return Err(self.unsupported(format!(
                "{}: a corked UDP socket holding {pending} bytes not yet \
                 sent (they cannot be read back),",
                self.what
            )));
        }
        if corked != 0 {
            tracing::warn!(pid = %self.cx.pid, fd = self.cx.fd.fd, "UDP_CORK is not kept: the restored socket sends each datagram at once");
        }
        Ok(())
    }

    /// Take an established connection (`local` to `peer`) with TCP repair:
    /// lock it, put it in repair mode for the rest of the dump, and keep its
    /// state and queues in `table`.
    fn take_stream(
        &self,
        table: &mut Table,
        ino: u32,
        state: u32,
        (local, peer): (Option<SocketAddr>, Option<SocketAddr>),
    ) -> Result<()> {
        let (pid, what) = (self.cx.pid, &self.what);
        if !table.opts().tcp_established {
            return Err(self.unsupported(format!(
                "{what}: an established TCP connection without --tcp-established,"
            )));
        }
        let keep = self.dup.try_clone().map_err(|err| Error::Proc {
            pid,
            path: what.clone(),
            err,
        })?;
        // Locked first: nothing the peer sends from now on is taken in
        // (and acknowledged) after the queues are read.
        if let (Some(lock), Some(l), Some(p)) = (table.tcp.lock_mut(), local, peer) {
            lock.add(l, p).map_err(Error::dump(
                pid,
                format!(
                    "{what}: locking the connection with nftables (CONFIG_NF_TABLES; \
                     --network-lock skip dumps without the lock)"
                ),
            ))?;
        }
        crate::net::tcp::repair_on(self.dup.as_fd())
            .map_err(Error::dump(pid, format!("{what}: TCP_REPAIR")))?;
        table.tcp.repairing(keep);
        let (e, inq, outq) = crate::net::tcp::dump(&self.dup, state)
            .map_err(Error::dump(pid, format!("{what}: the connection's state")))?;
        table.tcp.push(ino, e, inq, outq);
        Ok(())
    }

    /// The socket options kept: the SOL_SOCKET ones, and the keepalive
    /// timing of a stream that sends probes.
    fn opts(&self) -> Result<SkOptsEntry> {
        let dup = &self.dup;
        let mut opts = SkOptsEntry {
            reuseaddr: opt_bool(dup, sockopt::ReuseAddr),
            so_reuseport: opt_bool(dup, sockopt::ReusePort),
            so_keepalive: opt_bool(dup, sockopt::KeepAlive),
            so_broadcast: opt_bool(dup, sockopt::Broadcast),
            so_linger: nix::sys::socket::getsockopt(dup, sockopt::Linger)
                .ok()
                .filter(|l| l.l_onoff != 0)
                .and_then(|l| u32::try_from(l.l_linger).ok()),
            so_bound_dev: nix::sys::socket::getsockopt(dup, sockopt::BindToDevice)
                .ok()
                .map(|d| d.to_string_lossy().into_owned())
                .filter(|d| !d.is_empty()),
            ..crate::net::sk_opts::dump_common(self.cx, dup.as_fd())?
        };
        if self.ty == libc::SOCK_STREAM && opts.so_keepalive == Some(true) {
            let tcp = |o| {
                kernel::socket::getsockopt_int(dup.as_fd(), libc::SOL_TCP, o)
                    .ok()
                    .map(i32::cast_unsigned)
            };
            opts.tcp_keepidle = tcp(libc::TCP_KEEPIDLE);
            opts.tcp_keepintvl = tcp(libc::TCP_KEEPINTVL);
            opts.tcp_keepcnt = tcp(libc::TCP_KEEPCNT);
        }
        Ok(opts)
    }

    /// Whether the socket may bind a non-local address (IP_FREEBIND, or
    /// IPV6_FREEBIND).
    fn freebind(&self) -> bool {
        if self.family == libc::AF_INET.cast_unsigned() {
            opt_bool(&self.dup, sockopt::IpFreebind) == Some(true)
        } else {
            kernel::socket::getsockopt_int(self.dup.as_fd(), libc::IPPROTO_IPV6, IPV6_FREEBIND)
                .is_ok_and(|v| v != 0)
        }
    }

    /// The backlog of listener `ino`, asked in the tree's network
    /// namespace. Connections not accepted yet go with the killed listener:
    /// refused unless --skip-in-flight drops them.
    fn backlog(&self, table: &Table, ino: u32) -> Result<u32> {
        let ask = || listen_backlog(self.family, ino);
        let got = match table.unix.netns_of {
            Some(p) => crate::task::in_namespace_of(
                p,
                "net",
                nix::sched::CloneFlags::CLONE_NEWNET,
                || Ok(ask()),
            )?,
            None => ask(),
        };
        let (backlog, waiting) =
            got.ok_or_else(|| self.cx.format_err("listen backlog (sock_diag)"))?;
        if waiting > 0 && !table.opts().leave_running {
            if !table.opts().skip_in_flight {
                return Err(self.unsupported(format!(
                    "{}: a listener with {waiting} connection(s) not accepted yet \
                     (they would be lost; dump again once they are accepted, or pass \
                     --skip-in-flight to drop them),",
                    self.what
                )));
            }
            tracing::warn!(pid = %self.cx.pid, "{}: {waiting} connection(s) not accepted yet are dropped (--skip-in-flight)", self.what);
        }
        Ok(backlog)
    }

    /// Keep the datagrams queued on a UDP socket, with their senders, for
    /// `sk-queues.img`.
    fn queue_datagrams(&self, table: &mut Table, ino: u32) -> Result<()> {
        let packets = crate::net::unix::peek_datagrams(&self.dup, table).map_err(Error::dump(
            self.cx.pid,
            format!("{}: its queued datagrams", self.what),
        ))?;
        for (data, from) in packets {
            table.unix.push_queue(ino, data, from);
        }
        Ok(())
    }
}

impl FileKind for InetSk {
    type Entry = InetSkEntry;
    const NAME: &'static str = "inet socket";

    fn set_id(e: &mut InetSkEntry, id: u32) {
        e.id = id;
    }

    fn dump(cx: &FdCtx<'_>, table: &mut Table) -> Result<Kind> {
        let sk = Probe::new(cx)?;
        sk.check_supported()?;
        let (family, ty, p) = (sk.family, sk.ty, sk.proto.cast_signed());
        let udp = ty == libc::SOCK_DGRAM && matches!(p, libc::IPPROTO_UDP | libc::IPPROTO_UDPLITE);
        let (local, peer) = sk.addresses();
        if udp {
            sk.check_cork()?;
        }
        let (state, listening) = sk.state(peer.is_some())?;
        let ino = u32::try_from(std::os::unix::fs::MetadataExt::ino(cx.meta)).unwrap_or(0);
        if ty == libc::SOCK_STREAM && crate::net::tcp::connected(state) {
            sk.take_stream(table, ino, state, (local, peer))?;
        }
        let (src_addr, src_port) = local.as_ref().map(split).unwrap_or_default();
        let (dst_addr, dst_port) = peer.as_ref().map(split).unwrap_or_default();
        let opts = sk.opts()?;
        let freebind = sk.freebind();
        let backlog = if listening {
            sk.backlog(table, ino)?
        } else {
            0
        };
        let raw = (ty == libc::SOCK_RAW)
            .then(|| raw_opts(&sk.dup, family, p))
            .transpose()
            .map_err(Error::dump(
                cx.pid,
                format!("{}: its raw socket options", sk.what),
            ))?;
        if udp {
            sk.queue_datagrams(table, ino)?;
        }
        Ok(Kind::Isk(InetSkEntry {
            id: 0,
            ino,
            family,
            r#type: ty.cast_unsigned(),
            proto: sk.proto,
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
                .then(|| opt_bool(&sk.dup, sockopt::Ipv6V6Only))
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
            .ok_or_else(|| img::FILES.bad(0, format!("inet socket {} was not made", e.ino)))?;
        fd.try_clone().map_err(|err| Error::Proc {
            pid: cx.pid,
            path: format!("fd {} (inet socket)", cx.fd),
            err,
        })
    }
}

/// Make every inet socket of the images (see the module comment).
fn make_all(cx: &OpenCtx<'_>) -> Result<HashMap<u32, OwnedFd>> {
    let all: Vec<&InetSkEntry> = cx
        .table
        .entries()
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Isk(u)) => Some(u),
            _ => None,
        })
        .collect();
    let mut m = Making {
        pid: cx.pid,
        table: cx.table,
        all,
        made: HashMap::new(),
        bound: Vec::new(),
    };
    for u in m.all.clone() {
        let s = m.make(u)?;
        m.made.insert(u.id, s);
    }
    m.leave_repair()?;
    m.send_queued()?;
    Ok(m.made)
}

/// The inet sockets of a restore, as they are made.
struct Making<'a> {
    pid: Pid,
    table: &'a Table,
    all: Vec<&'a InetSkEntry>,
    /// The sockets made so far, by file id.
    made: HashMap<u32, OwnedFd>,
    /// The addresses bound, with the id of the socket bound to each: the
    /// senders of queued datagrams.
    bound: Vec<(SocketAddr, u32)>,
}

/// The socket domain of `u`.
fn domain(u: &InetSkEntry) -> i32 {
    if u.family == libc::AF_INET6.cast_unsigned() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    }
}

/// The socket type of `u` (a stream unless datagram or raw).
fn sock_type(u: &InetSkEntry) -> SockType {
    match u.r#type.cast_signed() {
        libc::SOCK_DGRAM => SockType::Datagram,
        libc::SOCK_RAW => SockType::Raw,
        _ => SockType::Stream,
    }
}

/// Set boolean option `opt` on `s` when the image has it on.
fn set_on<O: nix::sys::socket::SetSockOpt<Val = bool>>(
    s: &OwnedFd,
    opt: O,
    on: Option<bool>,
) -> nix::Result<()> {
    if on == Some(true) {
        nix::sys::socket::setsockopt(s, opt, &true)
    } else {
        Ok(())
    }
}

impl Making<'_> {
    /// A failed step of making socket `u`.
    fn fail(&self, u: &InetSkEntry, step: &str) -> impl FnOnce(Errno) -> Error + use<> {
        Error::restore(self.pid, format!("inet socket {} ({step})", u.ino))
    }

    /// Make the socket of `u` with its options, bound, listening or
    /// connected as it was, with its status flags.
    fn make(&mut self, u: &InetSkEntry) -> Result<OwnedFd> {
        let s = kernel::socket::socket(domain(u), u.r#type.cast_signed(), u.proto.cast_signed())
            .map_err(self.fail(u, "socket"))?;
        crate::net::sk_opts::restore_common(s.as_fd(), &u.opts)
            .map_err(|(step, err)| self.fail(u, step)(err))?;
        if let Some(r) = u.ip_opts.as_ref().and_then(|o| o.raw.as_ref()) {
            set_raw_opts(&s, u.family, u.proto.cast_signed(), r)
                .map_err(self.fail(u, "raw socket options"))?;
        }
        self.set_options(&s, u)?;
        self.place(&s, u)?;
        let fl = nix::fcntl::OFlag::from_bits_truncate(u.flags.cast_signed() & libc::O_NONBLOCK);
        nix::fcntl::fcntl(s.as_fd(), nix::fcntl::FcntlArg::F_SETFL(fl))
            .map_err(self.fail(u, "flags"))?;
        Ok(s)
    }

    /// Set the socket options of `u` on `s`, all before bind: a non-local
    /// address needs IP_FREEBIND, a device binding limits which addresses
    /// and routes apply.
    fn set_options(&self, s: &OwnedFd, u: &InetSkEntry) -> Result<()> {
        let o = &u.opts;
        set_on(s, sockopt::ReuseAddr, o.reuseaddr).map_err(self.fail(u, "SO_REUSEADDR"))?;
        set_on(s, sockopt::ReusePort, o.so_reuseport).map_err(self.fail(u, "SO_REUSEPORT"))?;
        set_on(s, sockopt::KeepAlive, o.so_keepalive).map_err(self.fail(u, "SO_KEEPALIVE"))?;
        set_on(s, sockopt::Broadcast, o.so_broadcast).map_err(self.fail(u, "SO_BROADCAST"))?;
        if let Some(v6) = u.v6only {
            nix::sys::socket::setsockopt(s, sockopt::Ipv6V6Only, &v6)
                .map_err(self.fail(u, "IPV6_V6ONLY"))?;
        }
        if u.ip_opts.as_ref().and_then(|o| o.freebind) == Some(true) {
            if domain(u) == libc::AF_INET6 {
                kernel::socket::setsockopt_int(s.as_fd(), libc::IPPROTO_IPV6, IPV6_FREEBIND, 1)
                    .map_err(self.fail(u, "IPV6_FREEBIND"))?;
            } else {
                nix::sys::socket::setsockopt(s, sockopt::IpFreebind, &true)
                    .map_err(self.fail(u, "IP_FREEBIND"))?;
            }
        }
        for (v, name, what) in [
            (o.tcp_keepidle, libc::TCP_KEEPIDLE, "TCP_KEEPIDLE"),
            (o.tcp_keepintvl, libc::TCP_KEEPINTVL, "TCP_KEEPINTVL"),
            (o.tcp_keepcnt, libc::TCP_KEEPCNT, "TCP_KEEPCNT"),
        ] {
            if let Some(v) = v.filter(|_| sock_type(u) == SockType::Stream) {
                kernel::socket::setsockopt_int(s.as_fd(), libc::SOL_TCP, name, v.cast_signed())
                    .map_err(self.fail(u, what))?;
            }
        }
        if let Some(dev) = o.so_bound_dev.as_deref() {
            let dev = std::ffi::OsString::from(dev);
            nix::sys::socket::setsockopt(s, sockopt::BindToDevice, &dev)
                .map_err(self.fail(u, "SO_BINDTODEVICE"))?;
        }
        if let Some(secs) = o.so_linger {
            let l = libc::linger {
                l_onoff: 1,
                l_linger: i32::try_from(secs).unwrap_or(i32::MAX),
            };
            nix::sys::socket::setsockopt(s, sockopt::Linger, &l)
                .map_err(self.fail(u, "SO_LINGER"))?;
        }
        Ok(())
    }

    /// Bind `s`, make it listen or connect it, as `u` was. A connection
    /// taken with TCP repair is connected in repair mode and given its
    /// state and queues back.
    fn place(&mut self, s: &OwnedFd, u: &InetSkEntry) -> Result<()> {
        let table = self.table;
        let stream = table
            .tcp
            .of(u.ino)
            .filter(|_| crate::net::tcp::connected(u.state));
        // Repair mode, last before bind: it lets a connection share its port
        // with a listener (SO_REUSEADDR set later would undo that).
        if let Some((_, e, _, _)) = stream {
            crate::net::tcp::prepare(s, e).map_err(self.fail(u, "TCP_REPAIR"))?;
        }
        if u.src_port != 0
            && let Some(a) = join(u.family, &u.src_addr, u.src_port)
        {
            let st = SockaddrStorage::from(a);
            nix::sys::socket::bind(s.as_raw_fd(), &st).map_err(self.fail(u, "bind"))?;
            self.bound.push((a, u.id));
        }
        if u.state == TCP_LISTEN {
            let backlog = Backlog::new(i32::try_from(u.backlog.clamp(1, 4096)).unwrap_or(128))
                .unwrap_or(Backlog::MAXCONN);
            nix::sys::socket::listen(s, backlog).map_err(self.fail(u, "listen"))?;
        }
        if let Some((_, e, inq, outq)) = stream {
            let a = join(u.family, &u.dst_addr, u.dst_port).ok_or_else(|| {
                img::FILES.bad(0, format!("inet socket {}: no peer address", u.ino))
            })?;
            nix::sys::socket::connect(s.as_raw_fd(), &SockaddrStorage::from(a))
                .map_err(self.fail(u, "connect (repair)"))?;
            crate::net::tcp::finish(s, e, inq, outq).map_err(self.fail(u, "TCP repair"))?;
        }
        // Raw sockets have no ports: a peer address alone means connected.
        let ty = sock_type(u);
        let connected =
            u.dst_port != 0 || (ty == SockType::Raw && u.dst_addr.iter().any(|&w| w != 0));
        if ty != SockType::Stream
            && connected
            && let Some(a) = join(u.family, &u.dst_addr, u.dst_port)
        {
            let st = SockaddrStorage::from(a);
            nix::sys::socket::connect(s.as_raw_fd(), &st).map_err(self.fail(u, "connect"))?;
        }
        Ok(())
    }

    /// Both ends of each connection exist now: take them out of repair
    /// mode, and close again the halves a half-closed connection had
    /// closed.
    fn leave_repair(&self) -> Result<()> {
        for u in &self.all {
            if let Some((_, e, _, _)) = self
                .table
                .tcp
                .of(u.ino)
                .filter(|_| crate::net::tcp::connected(u.state))
                && let Some(s) = self.made.get(&u.id)
            {
                crate::net::tcp::repair_done(s.as_fd())
                    .map_err(self.fail(u, "leaving TCP repair"))?;
                // Leaving repair mode clears SO_REUSEADDR.
                if u.opts.reuseaddr == Some(true) {
                    nix::sys::socket::setsockopt(s, sockopt::ReuseAddr, &true)
                        .map_err(self.fail(u, "SO_REUSEADDR"))?;
                }
                if u.state != TCP_ESTABLISHED
                    && let (Some(l), Some(p)) = (
                        join(u.family, &u.src_addr, u.src_port),
                        join(u.family, &u.dst_addr, u.dst_port),
                    )
                {
                    crate::net::tcp::close_halves(s, e, u.state, l, p).map_err(self.fail(
                        u,
                        &format!("closing its half-closed halves again, state {}", u.state),
                    ))?;
                }
            }
        }
        Ok(())
    }

    /// Queue the datagrams of the images again, each sent to the address
    /// of the socket that held it.
    fn send_queued(&self) -> Result<()> {
        let table = self.table;
        for (id_for, e, data) in table
            .unix
            .queued_for(|id| self.all.iter().any(|u| u.id == id))
        {
            let Some(u) = self.all.iter().find(|u| u.id == id_for) else {
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
            self.send_datagram(u, &e, &data, to)?;
        }
        Ok(())
    }

    /// Send one queued datagram of `u` to `to`: from the socket that sent
    /// it when it is in the images, else from a fresh unbound one.
    fn send_datagram(
        &self,
        u: &InetSkEntry,
        e: &SkPacketEntry,
        data: &[u8],
        to: SocketAddr,
    ) -> Result<()> {
        let from = e
            .addr
            .as_deref()
            .and_then(parse_raw)
            .and_then(|from| self.bound.iter().find(|(a, _)| *a == from))
            .and_then(|(_, id)| self.made.get(id));
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
                .map_err(Error::restore(self.pid, "a socket for queued datagrams"))?;
                &tmp
            }
        };
        let st = SockaddrStorage::from(to);
        nix::sys::socket::sendto(sender.as_raw_fd(), data, &st, MsgFlags::MSG_DONTWAIT)
            .map_err(self.fail(u, "queued datagram"))?;
        Ok(())
    }
}
