//! Sockets. AF_UNIX: stream, datagram and seqpacket pairs with queued data
//! (message boundaries checked), a listener with a connection waiting in its
//! backlog, an fd in flight (SCM_RIGHTS). AF_INET: a TCP listener, a bound
//! UDP socket with queued datagrams and an established TCP connection, each
//! in a network namespace the test creates.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};

use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, SockaddrIn,
    UnixAddr, getpeername, getsockname, recvmsg, sendmsg, socketpair,
};

use super::util::{dup_over, fionread, new_netns, read_n, write_all};
use crate::meta::{Category::Inet, Category::Unix, Test};
use crate::testlib::{Ctx, Fail, OrFail, Res, diff_bytes, pattern_vec};
use crate::{ensure, ensure_eq};

pub(crate) const TESTS: &[Test] = &[
    Test::new(
        "unix-stream",
        Unix,
        "stream socketpair with data queued both ways",
        unix_stream,
    ),
    Test::new(
        "unix-dgram",
        Unix,
        "datagram socketpair with three queued datagrams",
        unix_dgram,
    ),
    Test::new(
        "unix-seqpacket",
        Unix,
        "seqpacket socketpair keeps record boundaries",
        unix_seqpacket,
    ),
    Test::new(
        "unix-listen",
        Unix,
        "listener with a queued, unaccepted connection",
        unix_listen,
    ),
    Test::new(
        "unix-scm-rights",
        Unix,
        "a pipe fd in flight over SCM_RIGHTS",
        unix_scm_rights,
    ),
    Test::new(
        "unix-shutdown",
        Unix,
        "stream pair with one direction shut down",
        unix_shutdown,
    ),
    Test::new(
        "unix-dgram-named",
        Unix,
        "bound datagram sockets: queued datagrams keep their senders",
        unix_dgram_named,
    ),
    Test::new(
        "unix-peer-gone",
        Unix,
        "stream socket whose peer closed: last data, then end of file",
        unix_peer_gone,
    ),
    Test::new(
        "unix-abstract-listen",
        Unix,
        "abstract-named listener with two connections waiting",
        unix_abstract_listen,
    ),
    Test::new(
        "unix-deleted",
        Unix,
        "listener whose socket file was removed",
        unix_deleted,
    ),
    Test::new(
        "unix-opts",
        Unix,
        "SO_PASSCRED, buffer sizes and timeouts of a pair",
        unix_opts,
    ),
    Test::new(
        "tcp-listen",
        Inet,
        "TCP listener on 127.0.0.1 in the test's netns",
        tcp_listen,
    ),
    Test::new(
        "udp-queued",
        Inet,
        "bound UDP socket with queued datagrams",
        udp_queued,
    ),
    Test::new(
        "udp6-connected",
        Inet,
        "connected IPv6 UDP pair with datagrams queued both ways",
        udp6_connected,
    ),
    Test::new(
        "inet-opts",
        Inet,
        "a listener on a non-local address (IP_FREEBIND), bound to lo, with SO_LINGER",
        inet_opts,
    ),
    Test::new(
        "netlink-route",
        Inet,
        "a NETLINK_ROUTE socket subscribed to link events",
        netlink_route,
    ),
    Test::new(
        "packet-raw",
        Inet,
        "an AF_PACKET socket bound to lo in the test's netns",
        packet_raw,
    ),
    Test::new(
        "icmp-raw",
        Inet,
        "a raw ICMP socket in the test's netns",
        icmp_raw,
    ),
    Test::new(
        "tcp-established",
        Inet,
        "established TCP connection with unread data",
        tcp_established,
    )
    .opts(&["--tcp-established"]),
];

fn pair(ty: SockType) -> Res<(OwnedFd, OwnedFd)> {
    socketpair(AddressFamily::Unix, ty, None, SockFlag::SOCK_CLOEXEC).or_fail("socketpair")
}

fn recv_one(fd: &impl AsFd) -> Res<Vec<u8>> {
    let mut buf = vec![0u8; 65536];
    let n = nix::sys::socket::recv(fd.as_fd().as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT)
        .or_fail("recv")?;
    buf.truncate(n);
    Ok(buf)
}

fn drain_one(fd: &impl AsFd) -> Res {
    recv_one(fd).map(drop)
}

fn unix_stream(t: &mut Ctx) -> Res {
    let (a, b) = pair(SockType::Stream)?;
    let (ab, ba) = (pattern_vec(50, 5000), pattern_vec(51, 3000));
    write_all(&a, &ab)?;
    write_all(&b, &ba)?;
    t.wait("drained data queued for b", || drain_one(&b))?;
    ensure_eq!("bytes queued for b", fionread(&b)?, ab.len());
    diff_bytes("a -> b", &read_n(&b, ab.len())?, &ab)?;
    diff_bytes("b -> a", &read_n(&a, ba.len())?, &ba)?;
    write_all(&a, b"more")?;
    ensure_eq!("new data", read_n(&b, 4)?, b"more".to_vec());
    Ok(())
}

fn records(t: &mut Ctx, ty: SockType) -> Res {
    let (a, b) = pair(ty)?;
    let msgs: Vec<Vec<u8>> = (0..3)
        .map(|i| pattern_vec(52 + i, 10 + 700 * usize::try_from(i).unwrap_or(0)))
        .collect();
    for m in &msgs {
        write_all(&a, m)?;
    }
    t.wait("received the first record", || drain_one(&b))?;
    for (i, m) in msgs.iter().enumerate() {
        diff_bytes(&format!("record {i}"), &recv_one(&b)?, m)?;
    }
    ensure_eq!(
        "after the records",
        nix::sys::socket::recv(b.as_raw_fd(), &mut [0u8; 4], MsgFlags::MSG_DONTWAIT).err(),
        Some(nix::errno::Errno::EAGAIN)
    );
    Ok(())
}

fn unix_dgram(t: &mut Ctx) -> Res {
    records(t, SockType::Datagram)
}

fn unix_seqpacket(t: &mut Ctx) -> Res {
    records(t, SockType::SeqPacket)
}

fn unix_listen(t: &mut Ctx) -> Res {
    let path = t.mkdir()?.join("sock");
    let l = UnixListener::bind(&path).or_fail("bind")?;
    let mut c = UnixStream::connect(&path).or_fail("connect")?;
    c.write_all(b"hello from the backlog").or_fail("write")?;
    l.set_nonblocking(true).or_fail("nonblocking")?;
    t.wait("accepted the connection early", || {
        l.accept().map(drop).or_fail("accept")
    })?;
    let (mut s, _) = l.accept().or_fail("accept after restore")?;
    s.set_nonblocking(true).or_fail("nonblocking")?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).or_fail("read")?;
    ensure_eq!(
        "data of the queued connection",
        String::from_utf8_lossy(&buf[..n]),
        "hello from the backlog"
    );
    let name = getsockname::<UnixAddr>(l.as_raw_fd()).or_fail("getsockname")?;
    ensure_eq!(
        "listener address",
        name.path().map(std::path::Path::to_path_buf),
        Some(path)
    );
    Ok(())
}

fn unix_scm_rights(t: &mut Ctx) -> Res {
    let (a, b) = pair(SockType::Stream)?;
    let (pr, pw) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).or_fail("pipe")?;
    write_all(&pw, b"through the passed fd")?;
    let fds = [pr.as_raw_fd()];
    sendmsg::<()>(
        a.as_raw_fd(),
        &[IoSlice::new(b"F")],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .or_fail("sendmsg")?;
    drop(pr);
    let receive = || -> Res<Vec<OwnedFd>> {
        let mut byte = [0u8; 1];
        let mut iov = [IoSliceMut::new(&mut byte)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = recvmsg::<()>(
            b.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .or_fail("recvmsg")?;
        let mut out = Vec::new();
        for c in msg.cmsgs().or_fail("cmsgs")? {
            if let ControlMessageOwned::ScmRights(v) = c {
                for fd in v {
                    // SAFETY: SCM_RIGHTS gave us this fd; nothing else owns it.
                    #[allow(unsafe_code)]
                    out.push(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) });
                }
            }
        }
        Ok(out)
    };
    t.wait("received the fd early", || receive().map(drop))?;
    let got = receive()?;
    ensure_eq!("fds received", got.len(), 1);
    ensure_eq!(
        "data through the passed pipe",
        String::from_utf8_lossy(&read_n(&got[0], 21)?),
        "through the passed fd"
    );
    Ok(())
}

fn unix_shutdown(t: &mut Ctx) -> Res {
    let (a, b) = pair(SockType::Stream)?;
    write_all(&a, b"final")?;
    nix::sys::socket::shutdown(a.as_raw_fd(), nix::sys::socket::Shutdown::Write)
        .or_fail("shutdown")?;
    t.wait("shut down the other direction too", || {
        nix::sys::socket::shutdown(b.as_raw_fd(), nix::sys::socket::Shutdown::Write)
            .or_fail("shutdown")
    })?;
    ensure_eq!(
        "data before the shutdown",
        read_n(&b, 100)?,
        b"final".to_vec()
    );
    write_all(&b, b"reply").map_err(|e| Fail::Mismatch(format!("b can no longer send: {e}")))?;
    ensure_eq!("reply", read_n(&a, 5)?, b"reply".to_vec());
    Ok(())
}

fn tcp_listen(t: &mut Ctx) -> Res {
    new_netns()?;
    let l = std::net::TcpListener::bind("127.0.0.1:5901").or_fail("bind")?;
    t.wait("replaced the listener by one on another port", || {
        let other = std::net::TcpListener::bind("127.0.0.1:5902").or_fail("bind")?;
        dup_over(&other, &l)
    })?;
    ensure_eq!(
        "listen address",
        l.local_addr().or_fail("getsockname")?.to_string(),
        "127.0.0.1:5901"
    );
    let mut c = std::net::TcpStream::connect("127.0.0.1:5901").or_fail("connect after restore")?;
    c.write_all(b"hi").or_fail("write")?;
    let (mut s, _) = l.accept().or_fail("accept")?;
    let mut buf = [0u8; 2];
    s.read_exact(&mut buf).or_fail("read")?;
    ensure_eq!("data", &buf, b"hi");
    Ok(())
}

fn udp_queued(t: &mut Ctx) -> Res {
    new_netns()?;
    let r = std::net::UdpSocket::bind("127.0.0.1:6001").or_fail("bind")?;
    let s = std::net::UdpSocket::bind("127.0.0.1:6002").or_fail("bind")?;
    let msgs: Vec<Vec<u8>> = (0..3)
        .map(|i| pattern_vec(60 + i, 100 + 200 * usize::try_from(i).unwrap_or(0)))
        .collect();
    for m in &msgs {
        s.send_to(m, "127.0.0.1:6001").or_fail("send_to")?;
    }
    r.set_nonblocking(true).or_fail("nonblocking")?;
    t.wait("received a datagram", || {
        r.recv_from(&mut [0u8; 2048]).map(drop).or_fail("recv_from")
    })?;
    for (i, m) in msgs.iter().enumerate() {
        let mut buf = [0u8; 2048];
        let (n, from) = r.recv_from(&mut buf).or_fail("recv_from")?;
        diff_bytes(&format!("datagram {i}"), &buf[..n], m)?;
        ensure_eq!("sender", from.to_string(), "127.0.0.1:6002");
    }
    let peer = getpeername::<SockaddrIn>(r.as_raw_fd()).err();
    ensure_eq!(
        "the receiver is not connected",
        peer,
        Some(nix::errno::Errno::ENOTCONN)
    );
    Ok(())
}

fn tcp_established(t: &mut Ctx) -> Res {
    new_netns()?;
    let l = std::net::TcpListener::bind("127.0.0.1:7001").or_fail("bind")?;
    let mut c = std::net::TcpStream::connect("127.0.0.1:7001").or_fail("connect")?;
    let (mut s, _) = l.accept().or_fail("accept")?;
    drop(l);
    c.set_nodelay(true).or_fail("TCP_NODELAY")?;
    let (cs, sc) = (pattern_vec(62, 10_000), pattern_vec(63, 3000));
    c.write_all(&cs).or_fail("write")?;
    s.write_all(&sc).or_fail("write")?;
    crate::testlib::nap(20);
    s.set_nonblocking(true).or_fail("nonblocking")?;
    t.wait("read 10 bytes on the server side", || {
        let mut b = [0u8; 10];
        (&s).read_exact(&mut b).or_fail("read")
    })?;
    s.set_nonblocking(false).or_fail("blocking")?;
    ensure_eq!("bytes queued at the server", fionread(&s)?, cs.len());
    ensure_eq!("bytes queued at the client", fionread(&c)?, sc.len());
    let mut got = vec![0u8; cs.len()];
    s.read_exact(&mut got).or_fail("read client data")?;
    diff_bytes("client -> server", &got, &cs)?;
    let mut got = vec![0u8; sc.len()];
    c.read_exact(&mut got).or_fail("read server data")?;
    diff_bytes("server -> client", &got, &sc)?;
    ensure!(c.nodelay().or_fail("TCP_NODELAY")?, "TCP_NODELAY lost");
    c.write_all(b"after").or_fail("write")?;
    let mut b = [0u8; 5];
    s.read_exact(&mut b).or_fail("read")?;
    ensure_eq!("new data", &b, b"after");
    Ok(())
}

fn unix_dgram_named(t: &mut Ctx) -> Res {
    use std::os::unix::net::UnixDatagram;
    let dir = t.mkdir()?;
    let (rpath, spath) = (dir.join("recv"), dir.join("send"));
    let r = UnixDatagram::bind(&rpath).or_fail("bind receiver")?;
    let s = UnixDatagram::bind(&spath).or_fail("bind sender")?;
    s.connect(&rpath).or_fail("connect")?;
    let other = UnixDatagram::unbound().or_fail("socket")?;
    s.send(b"from s").or_fail("send")?;
    other
        .send_to(b"from an unbound socket", &rpath)
        .or_fail("send_to")?;
    s.send(b"from s again").or_fail("send")?;
    r.set_nonblocking(true).or_fail("nonblocking")?;
    t.wait("received a datagram early", || {
        r.recv(&mut [0u8; 64]).map(drop).or_fail("recv")
    })?;
    let mut b = [0u8; 64];
    let want: [(&[u8], Option<&std::path::Path>); 3] = [
        (b"from s", Some(&spath)),
        (b"from an unbound socket", None),
        (b"from s again", Some(&spath)),
    ];
    for (i, (data, from)) in want.iter().enumerate() {
        let (n, addr) = r.recv_from(&mut b).or_fail("recv_from")?;
        ensure_eq!(format!("datagram {i}"), &b[..n], *data);
        ensure_eq!(format!("sender of datagram {i}"), addr.as_pathname(), *from);
    }
    ensure_eq!(
        "peer of the connected sender",
        s.peer_addr().or_fail("getpeername")?.as_pathname(),
        Some(rpath.as_path())
    );
    s.send(b"after").or_fail("send after restore")?;
    let n = r.recv(&mut b).or_fail("recv")?;
    ensure_eq!("new datagram", &b[..n], b"after");
    Ok(())
}

fn unix_peer_gone(t: &mut Ctx) -> Res {
    let (a, b) = pair(SockType::Stream)?;
    write_all(&b, b"last words")?;
    drop(b);
    t.wait("read the last words early", || drain_one(&a))?;
    ensure_eq!(
        "data left by the gone peer",
        read_n(&a, 64)?,
        b"last words".to_vec()
    );
    let mut buf = [0u8; 4];
    ensure_eq!(
        "read after the data",
        nix::sys::socket::recv(a.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT),
        Ok(0)
    );
    ensure_eq!(
        "write to the gone peer",
        nix::sys::socket::send(a.as_raw_fd(), b"x", MsgFlags::MSG_NOSIGNAL).err(),
        Some(nix::errno::Errno::EPIPE)
    );
    Ok(())
}

fn unix_abstract_listen(t: &mut Ctx) -> Res {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("zdtm-abstract-{}", nix::unistd::getpid());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        .or_fail("abstract address")?;
    let l = UnixListener::bind_addr(&addr).or_fail("bind")?;
    let c1 = UnixStream::connect_addr(&addr).or_fail("connect 1")?;
    let c2 = UnixStream::connect_addr(&addr).or_fail("connect 2")?;
    l.set_nonblocking(true).or_fail("nonblocking")?;
    t.wait("accepted a connection early", || {
        l.accept().map(drop).or_fail("accept")
    })?;
    for (i, mut c) in [c1, c2].into_iter().enumerate() {
        let (mut s, _) = l.accept().or_fail(&format!("accept {i}"))?;
        c.write_all(format!("client {i}").as_bytes())
            .or_fail("write")?;
        let mut b = [0u8; 8];
        s.read_exact(&mut b).or_fail("read")?;
        ensure_eq!(
            format!("data of connection {i}"),
            &b,
            format!("client {i}").as_bytes()
        );
    }
    ensure_eq!(
        "listener name",
        l.local_addr()
            .or_fail("getsockname")?
            .as_abstract_name()
            .map(<[u8]>::to_vec),
        Some(name.into_bytes())
    );
    Ok(())
}

fn unix_deleted(t: &mut Ctx) -> Res {
    let path = t.mkdir()?.join("gone.sock");
    let l = UnixListener::bind(&path).or_fail("bind")?;
    std::fs::remove_file(&path).or_fail("unlink")?;
    t.wait("recreated the socket file", || {
        std::fs::write(&path, b"").or_fail("create")
    })?;
    ensure!(!path.exists(), "{} exists again", path.display());
    ensure_eq!(
        "listener name",
        l.local_addr()
            .or_fail("getsockname")?
            .as_pathname()
            .map(std::path::Path::to_path_buf),
        Some(path)
    );
    Ok(())
}

fn unix_opts(t: &mut Ctx) -> Res {
    use nix::sys::socket::{getsockopt, setsockopt, sockopt};
    let (a, b) = pair(SockType::Datagram)?;
    setsockopt(&a, sockopt::PassCred, &true).or_fail("SO_PASSCRED")?;
    setsockopt(&a, sockopt::SndBuf, &65536).or_fail("SO_SNDBUF")?;
    setsockopt(&b, sockopt::RcvBuf, &32768).or_fail("SO_RCVBUF")?;
    let tmo = nix::sys::time::TimeVal::new(3, 500_000);
    setsockopt(&b, sockopt::ReceiveTimeout, &tmo).or_fail("SO_RCVTIMEO")?;
    let want = (
        getsockopt(&a, sockopt::SndBuf).or_fail("SO_SNDBUF")?,
        getsockopt(&b, sockopt::RcvBuf).or_fail("SO_RCVBUF")?,
    );
    t.wait("turned SO_PASSCRED off", || {
        setsockopt(&a, sockopt::PassCred, &false).or_fail("SO_PASSCRED")
    })?;
    ensure!(
        getsockopt(&a, sockopt::PassCred).or_fail("SO_PASSCRED")?,
        "SO_PASSCRED lost"
    );
    ensure!(
        !getsockopt(&b, sockopt::PassCred).or_fail("SO_PASSCRED")?,
        "SO_PASSCRED set on b"
    );
    ensure_eq!(
        "buffer sizes",
        (
            getsockopt(&a, sockopt::SndBuf).or_fail("SO_SNDBUF")?,
            getsockopt(&b, sockopt::RcvBuf).or_fail("SO_RCVBUF")?
        ),
        want
    );
    ensure_eq!(
        "receive timeout",
        getsockopt(&b, sockopt::ReceiveTimeout).or_fail("SO_RCVTIMEO")?,
        tmo
    );
    Ok(())
}

fn udp6_connected(t: &mut Ctx) -> Res {
    new_netns()?;
    let a = std::net::UdpSocket::bind("[::1]:6101").or_fail("bind a")?;
    let b = std::net::UdpSocket::bind("[::1]:6102").or_fail("bind b")?;
    a.connect("[::1]:6102").or_fail("connect a")?;
    b.connect("[::1]:6101").or_fail("connect b")?;
    let (ab, ba) = (pattern_vec(64, 300), pattern_vec(65, 900));
    a.send(&ab).or_fail("send a")?;
    b.send(&ba).or_fail("send b")?;
    a.send(b"second").or_fail("send a")?;
    a.set_nonblocking(true).or_fail("nonblocking")?;
    b.set_nonblocking(true).or_fail("nonblocking")?;
    t.wait("b read a datagram early", || {
        b.recv(&mut [0u8; 2048]).map(drop).or_fail("recv")
    })?;
    let mut buf = [0u8; 2048];
    let n = b.recv(&mut buf).or_fail("recv b")?;
    diff_bytes("first datagram for b", &buf[..n], &ab)?;
    let n = b.recv(&mut buf).or_fail("recv b")?;
    ensure_eq!("second datagram for b", &buf[..n], b"second");
    let n = a.recv(&mut buf).or_fail("recv a")?;
    diff_bytes("datagram for a", &buf[..n], &ba)?;
    ensure_eq!(
        "a's peer",
        a.peer_addr().or_fail("getpeername")?.to_string(),
        "[::1]:6102"
    );
    b.send(b"after").or_fail("send after restore")?;
    a.set_nonblocking(false).or_fail("blocking")?;
    let n = a.recv(&mut buf).or_fail("recv a")?;
    ensure_eq!("new datagram", &buf[..n], b"after");
    Ok(())
}

#[allow(unsafe_code)]
fn raw_socket(domain: i32, ty: i32, proto: i32) -> Res<OwnedFd> {
    // SAFETY: socket returns a new fd or -1.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) };
    nix::errno::Errno::result(fd).or_fail("socket")?;
    // SAFETY: a fresh fd we own.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
}

fn netlink_route(t: &mut Ctx) -> Res {
    use nix::sys::socket::{NetlinkAddr, bind};
    let s = raw_socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE)?;
    bind(s.as_raw_fd(), &NetlinkAddr::new(0, 1)).or_fail("bind RTMGRP_LINK")?;
    t.wait("replaced it by an unsubscribed one", || {
        let other = raw_socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE)?;
        dup_over(&other, &s)
    })?;
    let name = getsockname::<NetlinkAddr>(s.as_raw_fd()).or_fail("getsockname")?;
    ensure_eq!("groups", name.groups(), 1);
    Ok(())
}

fn packet_raw(t: &mut Ctx) -> Res {
    new_netns()?;
    let s = raw_socket(
        libc::AF_PACKET,
        libc::SOCK_RAW,
        i32::from(u16::try_from(libc::ETH_P_ALL).unwrap_or(3).to_be()),
    )?;
    t.wait("replaced it by a UDP socket", || {
        let other = std::net::UdpSocket::bind("127.0.0.1:0").or_fail("bind")?;
        dup_over(&other, &s)
    })?;
    ensure_eq!(
        "socket family",
        nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::SockType).or_fail("SO_TYPE")?,
        SockType::Raw
    );
    ensure_eq!(
        "address family",
        super::util::sockopt_int(&s, libc::SOL_SOCKET, libc::SO_DOMAIN)?,
        libc::AF_PACKET
    );
    Ok(())
}

fn icmp_raw(t: &mut Ctx) -> Res {
    new_netns()?;
    let s = raw_socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP)?;
    t.wait("replaced it by a UDP socket", || {
        let other = std::net::UdpSocket::bind("127.0.0.1:0").or_fail("bind")?;
        dup_over(&other, &s)
    })?;
    ensure_eq!(
        "protocol",
        super::util::sockopt_int(&s, libc::SOL_SOCKET, libc::SO_PROTOCOL)?,
        libc::IPPROTO_ICMP
    );
    Ok(())
}

fn inet_opts(t: &mut Ctx) -> Res {
    use nix::sys::socket::{Backlog, SockaddrIn, bind, getsockopt, listen, setsockopt, sockopt};
    new_netns()?;
    let s = raw_socket(libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_TCP)?;
    setsockopt(&s, sockopt::IpFreebind, &true).or_fail("IP_FREEBIND")?;
    setsockopt(&s, sockopt::BindToDevice, &std::ffi::OsString::from("lo"))
        .or_fail("SO_BINDTODEVICE")?;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 7,
    };
    setsockopt(&s, sockopt::Linger, &linger).or_fail("SO_LINGER")?;
    // 10.99.0.1 is no address of this namespace: only IP_FREEBIND allows it.
    let addr: SockaddrIn = "10.99.0.1:5003"
        .parse::<std::net::SocketAddrV4>()
        .or_fail("addr")?
        .into();
    bind(s.as_raw_fd(), &addr).or_fail("bind")?;
    listen(&s, Backlog::new(5).or_fail("backlog")?).or_fail("listen")?;
    t.wait("replaced it by a plain listener", || {
        let other = std::net::TcpListener::bind("127.0.0.1:0").or_fail("bind")?;
        dup_over(&other, &s)
    })?;
    ensure_eq!(
        "local address",
        getsockname::<SockaddrIn>(s.as_raw_fd())
            .or_fail("getsockname")?
            .to_string(),
        "10.99.0.1:5003"
    );
    ensure!(
        getsockopt(&s, sockopt::IpFreebind).or_fail("IP_FREEBIND")?,
        "IP_FREEBIND lost"
    );
    ensure_eq!(
        "bound device",
        getsockopt(&s, sockopt::BindToDevice).or_fail("SO_BINDTODEVICE")?,
        std::ffi::OsString::from("lo")
    );
    let l = getsockopt(&s, sockopt::Linger).or_fail("SO_LINGER")?;
    ensure_eq!("linger", (l.l_onoff, l.l_linger), (1, 7));
    Ok(())
}
