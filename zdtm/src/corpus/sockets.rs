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
        "unix-ext-dgram",
        Unix,
        "a named datagram socket connected to one outside the tree (--ext-unix-sk) talks to it again",
        unix_ext_dgram,
    )
    .opts(&["--ext-unix-sk"]),
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
        "listeners on non-local IPv4 and IPv6 addresses (IP_FREEBIND, IPV6_FREEBIND), bound to lo, with SO_LINGER and keepalive timing",
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
        "netlink-groups",
        Inet,
        "a NETLINK_ROUTE socket keeps its port id and groups past the first 32, and hears a link change",
        netlink_groups,
    ),
    Test::new(
        "packet-bound",
        Inet,
        "a packet socket bound to lo with PACKET_AUXDATA and a multicast membership sees UDP on lo",
        packet_bound,
    ),
    Test::new(
        "ping-socket",
        Inet,
        "an ICMP ping socket keeps its echo identifier and gets its reply",
        ping_socket,
    ),
    Test::new(
        "raw-opts",
        Inet,
        "raw sockets keep IP_HDRINCL, IP_NODEFRAG and their ICMP and ICMPv6 filters",
        raw_opts,
    ),
    Test::new(
        "sock-buf-lock",
        Inet,
        "buffer sizes the kernel tunes stay tuned (a listener, the sockets it accepts), sizes set by hand stay locked",
        sock_buf_lock,
    ),
    Test::new(
        "sock-filter",
        Inet,
        "classic BPF filters on a UDP socket and a unix datagram socket drop long datagrams",
        sock_filter,
    ),
    Test::new(
        "tcp-half-closed",
        Inet,
        "a TCP connection whose client shut down its sending half (FIN_WAIT2 / CLOSE_WAIT) with data queued",
        tcp_half_closed,
    )
    .opts(&["--tcp-established"]),
    Test::new(
        "udp-corked",
        Inet,
        "a corked UDP socket with a datagram not yet sent (refused: it cannot be read back)",
        udp_corked,
    )
    .crfail(),
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

/// A datagram socket bound at `path` in a process outside the test's tree
/// (a grandchild in a session of its own, which the runner adopts): it
/// answers each datagram with "pong:" and it, and leaves on "bye" or after
/// 30 s of silence.
fn outside_echo(path: &std::path::Path) -> Res {
    use crate::testlib::sys::{exit_now, fork};
    use nix::unistd::ForkResult;
    let (r, w) = nix::unistd::pipe().or_fail("pipe")?;
    match fork().or_fail("fork")? {
        ForkResult::Parent { child } => {
            drop(w);
            let _ = nix::sys::wait::waitpid(child, None);
            let mut b = [0u8; 1];
            let n = crate::testlib::read_retry(&r, &mut b).or_fail("wait for the echo")?;
            ensure!(n == 1 && b[0] == b'R', "the outside echo did not start");
            Ok(())
        }
        ForkResult::Child => {
            drop(r);
            if !matches!(fork(), Ok(ForkResult::Child)) {
                exit_now(0);
            }
            let _ = nix::unistd::setsid();
            let Ok(s) = std::os::unix::net::UnixDatagram::bind(path) else {
                exit_now(1);
            };
            let _ = nix::unistd::write(&w, b"R");
            drop(w);
            let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(30)));
            let mut buf = [0u8; 256];
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                if &buf[..n] == b"bye" {
                    break;
                }
                if let Some(p) = from.as_pathname() {
                    let _ = s.send_to(&[b"pong:", &buf[..n]].concat(), p);
                }
            }
            let _ = std::fs::remove_file(path);
            exit_now(0);
        }
    }
}

fn unix_ext_dgram(t: &mut Ctx) -> Res {
    use std::os::unix::net::UnixDatagram;
    let dir = t.mkdir()?;
    let ext = dir.join("outside.sock");
    outside_echo(&ext)?;
    let s = UnixDatagram::bind(dir.join("me.sock")).or_fail("bind")?;
    let res = (|| {
        s.connect(&ext).or_fail("connect outside")?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .or_fail("timeout")?;
        s.send(b"ping").or_fail("send")?;
        let mut buf = [0u8; 64];
        let n = s.recv(&mut buf).or_fail("recv")?;
        ensure_eq!("answer before", &buf[..n], b"pong:ping");
        t.wait("connected elsewhere", || {
            let other = dir.join("other.sock");
            let _o = UnixDatagram::bind(&other).or_fail("bind other")?;
            s.connect(&other).or_fail("connect other")
        })?;
        let peer = s.peer_addr().or_fail("peer")?;
        ensure_eq!(
            "peer",
            peer.as_pathname().map(std::path::Path::to_path_buf),
            Some(ext.clone())
        );
        s.send(b"again").or_fail("send again")?;
        let n = s.recv(&mut buf).or_fail("recv again")?;
        ensure_eq!("answer after", &buf[..n], b"pong:again");
        Ok(())
    })();
    let _ = s.send_to(b"bye", &ext);
    res
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

/// A socket option as bytes.
#[allow(unsafe_code)]
fn sockopt_bytes(fd: &impl AsFd, level: i32, name: i32, len: usize) -> Res<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut l = libc::socklen_t::try_from(len).unwrap_or(0);
    // SAFETY: the kernel writes at most `l` bytes into `buf`.
    let r = unsafe {
        libc::getsockopt(
            fd.as_fd().as_raw_fd(),
            level,
            name,
            buf.as_mut_ptr().cast(),
            &raw mut l,
        )
    };
    nix::errno::Errno::result(r).or_fail("getsockopt")?;
    buf.truncate(usize::try_from(l).unwrap_or(0));
    Ok(buf)
}

/// Set a socket option from bytes.
#[allow(unsafe_code)]
fn set_sockopt(fd: &impl AsFd, level: i32, name: i32, v: &[u8]) -> Res {
    let l = libc::socklen_t::try_from(v.len()).unwrap_or(0);
    // SAFETY: the kernel reads `l` bytes of `v`.
    let r = unsafe { libc::setsockopt(fd.as_fd().as_raw_fd(), level, name, v.as_ptr().cast(), l) };
    nix::errno::Errno::result(r).or_fail("setsockopt").map(drop)
}

const SO_BUF_LOCK: i32 = 72;

fn sock_buf_lock(t: &mut Ctx) -> Res {
    new_netns()?;
    // Tuned by the kernel: a listener and a client of it.
    let tuned = std::net::TcpListener::bind("127.0.0.1:0").or_fail("bind")?;
    let at = tuned.local_addr().or_fail("local_addr")?;
    // Set by hand: both sizes.
    let fixed = raw_socket(libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_TCP)?;
    set_int(&fixed, libc::SOL_SOCKET, libc::SO_SNDBUF, 96 << 10)?;
    set_int(&fixed, libc::SOL_SOCKET, libc::SO_RCVBUF, 80 << 10)?;
    let sizes = |fd: &OwnedFd| -> Res<(i32, i32)> {
        Ok((
            super::util::sockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF)?,
            super::util::sockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF)?,
        ))
    };
    let fixed_sizes = sizes(&fixed)?;
    t.wait("set the listener's send buffer by hand", || {
        set_int(&tuned, libc::SOL_SOCKET, libc::SO_SNDBUF, 64 << 10)
    })?;
    ensure_eq!(
        "the listener's SO_BUF_LOCK",
        super::util::sockopt_int(&tuned, libc::SOL_SOCKET, SO_BUF_LOCK)?,
        0
    );
    ensure_eq!(
        "the fixed socket's SO_BUF_LOCK",
        super::util::sockopt_int(&fixed, libc::SOL_SOCKET, SO_BUF_LOCK)?,
        3
    );
    ensure_eq!(
        "the fixed socket's buffer sizes",
        sizes(&fixed)?,
        fixed_sizes
    );
    // A connection accepted now inherits the listener's locks.
    let client = std::net::TcpStream::connect(at).or_fail("connect")?;
    let (served, _) = tuned.accept().or_fail("accept")?;
    ensure_eq!(
        "an accepted socket's SO_BUF_LOCK",
        super::util::sockopt_int(&served, libc::SOL_SOCKET, SO_BUF_LOCK)?,
        0
    );
    drop(client);
    Ok(())
}

fn set_int(fd: &impl AsFd, level: i32, name: i32, v: i32) -> Res {
    set_sockopt(fd, level, name, &v.to_ne_bytes())
}

/// Wait up to two seconds for a datagram on `fd`.
fn recv_timeout(fd: &impl AsFd, buf: &mut [u8]) -> Res<usize> {
    let tv = nix::sys::time::TimeVal::new(2, 0);
    nix::sys::socket::setsockopt(fd, nix::sys::socket::sockopt::ReceiveTimeout, &tv)
        .or_fail("SO_RCVTIMEO")?;
    nix::sys::socket::recv(fd.as_fd().as_raw_fd(), buf, MsgFlags::empty()).or_fail("recv")
}

const SOL_NETLINK: i32 = 270;
const NETLINK_ADD_MEMBERSHIP: i32 = 1;
const NETLINK_DROP_MEMBERSHIP: i32 = 2;
const NETLINK_LIST_MEMBERSHIPS: i32 = 9;

#[allow(unsafe_code)]
fn netlink_groups(t: &mut Ctx) -> Res {
    use nix::sys::socket::{NetlinkAddr, bind};
    new_netns()?;
    let s = raw_socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE)?;
    bind(s.as_raw_fd(), &NetlinkAddr::new(0, 1)).or_fail("bind RTMGRP_LINK")?;
    set_int(&s, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, 33)?;
    let port = getsockname::<NetlinkAddr>(s.as_raw_fd())
        .or_fail("getsockname")?
        .pid();
    let groups = sockopt_bytes(&s, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, 64)?;
    ensure!(port != 0, "the socket has no port id");
    t.wait("left group 33", || {
        set_int(&s, SOL_NETLINK, NETLINK_DROP_MEMBERSHIP, 33)
    })?;
    let now = getsockname::<NetlinkAddr>(s.as_raw_fd()).or_fail("getsockname")?;
    ensure_eq!("port id", now.pid(), port);
    ensure_eq!(
        "groups",
        sockopt_bytes(&s, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, 64)?,
        groups
    );
    // A new MTU on lo is a link event the socket hears.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").or_fail("udp socket")?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, c) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *d = libc::c_char::from_ne_bytes([*c]);
    }
    ifr.ifr_ifru.ifru_mtu = 1500;
    // SAFETY: SIOCSIFMTU reads the valid ifreq.
    nix::errno::Errno::result(unsafe {
        libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFMTU, &raw mut ifr)
    })
    .or_fail("SIOCSIFMTU")?;
    let mut buf = vec![0u8; 8192];
    let n = recv_timeout(&s, &mut buf)?;
    ensure!(n >= 16, "a short netlink message ({n} bytes)");
    ensure_eq!(
        "message type",
        u16::from_ne_bytes([buf[4], buf[5]]),
        libc::RTM_NEWLINK
    );
    Ok(())
}

const SOL_PACKET: i32 = 263;
const PACKET_ADD_MEMBERSHIP: i32 = 1;
const PACKET_DROP_MEMBERSHIP: i32 = 2;
const PACKET_AUXDATA: i32 = 8;
const PACKET_MR_MULTICAST: u16 = 0;
const MCAST: [u8; 6] = [0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb];

/// struct packet_mreq: membership of lo (ifindex 1) in multicast MCAST.
fn mcast_mreq() -> Vec<u8> {
    let mut m = 1i32.to_ne_bytes().to_vec();
    m.extend_from_slice(&PACKET_MR_MULTICAST.to_ne_bytes());
    m.extend_from_slice(&6u16.to_ne_bytes());
    m.extend_from_slice(&MCAST);
    m.extend_from_slice(&[0u8; 2]);
    m
}

/// Whether lo's multicast list (this netns's /proc/net/dev_mcast) has MCAST.
fn lo_has_mcast() -> Res<bool> {
    let want: String = MCAST.iter().map(|b| format!("{b:02x}")).collect();
    let list = crate::testlib::slurp("/proc/self/net/dev_mcast")?;
    Ok(list.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(1) == Some(&"lo") && f.get(4) == Some(&want.as_str())
    }))
}

#[allow(unsafe_code)]
fn packet_bound(t: &mut Ctx) -> Res {
    new_netns()?;
    let proto = u16::try_from(libc::ETH_P_IP).unwrap_or(0x800).to_be();
    let s = raw_socket(libc::AF_PACKET, libc::SOCK_DGRAM, i32::from(proto))?;
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = u16::try_from(libc::AF_PACKET).unwrap_or(17);
    sa.sll_protocol = proto;
    sa.sll_ifindex = 1;
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_ll>()).unwrap_or(20);
    // SAFETY: the kernel reads `len` bytes of `sa`.
    nix::errno::Errno::result(unsafe { libc::bind(s.as_raw_fd(), (&raw const sa).cast(), len) })
        .or_fail("bind to lo")?;
    set_int(&s, SOL_PACKET, PACKET_AUXDATA, 1)?;
    set_sockopt(&s, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mcast_mreq())?;
    ensure!(lo_has_mcast()?, "lo did not join the multicast address");
    t.wait("dropped the multicast membership", || {
        set_sockopt(&s, SOL_PACKET, PACKET_DROP_MEMBERSHIP, &mcast_mreq())
    })?;
    ensure!(
        lo_has_mcast()?,
        "lo left the multicast address: the membership was lost"
    );
    ensure_eq!(
        "PACKET_AUXDATA",
        super::util::sockopt_int(&s, SOL_PACKET, PACKET_AUXDATA)?,
        1
    );
    // Bound to lo for IPv4: a UDP datagram over lo reaches it.
    let u = std::net::UdpSocket::bind("127.0.0.1:0").or_fail("udp bind")?;
    u.send_to(b"seen-by-packet-socket", u.local_addr().or_fail("addr")?)
        .or_fail("udp send")?;
    let mut buf = vec![0u8; 2048];
    let n = recv_timeout(&s, &mut buf)?;
    ensure!(
        buf[..n].windows(21).any(|w| w == b"seen-by-packet-socket"),
        "the packet socket did not see the datagram ({n} bytes)"
    );
    Ok(())
}

/// An ICMP echo request with identifier 0 (the kernel puts the socket's).
fn echo_request(seq: u16) -> Vec<u8> {
    let mut p = vec![8, 0, 0, 0, 0, 0];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(b"stasis");
    p
}

fn ping_socket(t: &mut Ctx) -> Res {
    new_netns()?;
    // Ping sockets are for the groups in this range (none in a new netns).
    std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 0").or_fail("ping_group_range")?;
    let s = raw_socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP)?;
    let at = SockaddrIn::new(127, 0, 0, 1, 4242);
    nix::sys::socket::bind(s.as_raw_fd(), &at).or_fail("bind ident 4242")?;
    t.wait(
        "replaced it by a ping socket with another identifier",
        || {
            let other = raw_socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP)?;
            nix::sys::socket::bind(other.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, 4343))
                .or_fail("bind")?;
            dup_over(&other, &s)
        },
    )?;
    let me = getsockname::<SockaddrIn>(s.as_raw_fd()).or_fail("getsockname")?;
    ensure_eq!("echo identifier", me.port(), 4242);
    nix::sys::socket::sendto(
        s.as_raw_fd(),
        &echo_request(7),
        &SockaddrIn::new(127, 0, 0, 1, 0),
        MsgFlags::empty(),
    )
    .or_fail("send echo")?;
    let mut buf = [0u8; 64];
    let n = recv_timeout(&s, &mut buf)?;
    ensure!(
        n >= 8 && buf[0] == 0,
        "no echo reply ({n} bytes, type {})",
        buf[0]
    );
    ensure_eq!("echo sequence", u16::from_be_bytes([buf[6], buf[7]]), 7);
    Ok(())
}

const IP_NODEFRAG: i32 = 22;
const SOL_RAW: i32 = 255;
const ICMP_FILTER: i32 = 1;
const ICMP6_FILTER: i32 = 1;

fn raw_opts(t: &mut Ctx) -> Res {
    new_netns()?;
    let icmp = raw_socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP)?;
    // Only echo replies (type 0) get through.
    let filter = !1u32;
    set_sockopt(&icmp, SOL_RAW, ICMP_FILTER, &filter.to_ne_bytes())?;
    let udp = raw_socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_UDP)?;
    set_int(&udp, libc::IPPROTO_IP, libc::IP_HDRINCL, 1)?;
    set_int(&udp, libc::IPPROTO_IP, IP_NODEFRAG, 1)?;
    let icmp6 = raw_socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6)?;
    let mut f6 = [0xffu8; 32];
    f6[16] = 0xfe; // let type 128 (echo request) through
    set_sockopt(&icmp6, libc::IPPROTO_ICMPV6, ICMP6_FILTER, &f6)?;
    t.wait("cleared IP_HDRINCL", || {
        set_int(&udp, libc::IPPROTO_IP, libc::IP_HDRINCL, 0)
    })?;
    ensure_eq!(
        "ICMP_FILTER",
        sockopt_bytes(&icmp, SOL_RAW, ICMP_FILTER, 4)?,
        filter.to_ne_bytes().to_vec()
    );
    ensure_eq!(
        "IP_HDRINCL",
        super::util::sockopt_int(&udp, libc::IPPROTO_IP, libc::IP_HDRINCL)?,
        1
    );
    ensure_eq!(
        "IP_NODEFRAG",
        super::util::sockopt_int(&udp, libc::IPPROTO_IP, IP_NODEFRAG)?,
        1
    );
    ensure_eq!(
        "ICMP6_FILTER",
        sockopt_bytes(&icmp6, libc::IPPROTO_ICMPV6, ICMP6_FILTER, 32)?,
        f6.to_vec()
    );
    ensure_eq!(
        "protocol",
        super::util::sockopt_int(&udp, libc::SOL_SOCKET, libc::SO_PROTOCOL)?,
        libc::IPPROTO_UDP
    );
    Ok(())
}

/// A classic BPF program: accept a packet of at most `max` bytes, drop a
/// longer one (raw `struct sock_filter`s).
fn short_only(max: u32) -> Vec<u8> {
    let insn = |code: u16, jt: u8, jf: u8, k: u32| {
        let mut v = code.to_ne_bytes().to_vec();
        v.extend_from_slice(&[jt, jf]);
        v.extend_from_slice(&k.to_ne_bytes());
        v
    };
    [
        insn(0x80, 0, 0, 0),      // ld len
        insn(0x25, 1, 0, max),    // jgt #max -> drop
        insn(0x06, 0, 0, 0xffff), // ret #0xffff (accept)
        insn(0x06, 0, 0, 0),      // ret #0 (drop)
    ]
    .concat()
}

#[allow(unsafe_code)]
fn attach(fd: &impl AsFd, prog: &[u8]) -> Res {
    let fprog = libc::sock_fprog {
        len: u16::try_from(prog.len() / 8).unwrap_or(0),
        filter: prog.as_ptr().cast_mut().cast(),
    };
    // SAFETY: sock_fprog is plain data the kernel reads during the call.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (&raw const fprog).cast::<u8>(),
            std::mem::size_of::<libc::sock_fprog>(),
        )
    };
    set_sockopt(fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, bytes)
}

/// The filter of `fd` (SO_GET_FILTER counts in instructions, not bytes).
#[allow(unsafe_code)]
fn get_filter(fd: &impl AsFd) -> Res<Vec<u8>> {
    let mut buf = vec![0u8; 64 * 8];
    let mut n: libc::socklen_t = 64;
    // SAFETY: room for 64 instructions of 8 bytes, as `n` says.
    let r = unsafe {
        libc::getsockopt(
            fd.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_GET_FILTER,
            buf.as_mut_ptr().cast(),
            &raw mut n,
        )
    };
    nix::errno::Errno::result(r).or_fail("SO_GET_FILTER")?;
    buf.truncate(usize::try_from(n).unwrap_or(0) * 8);
    Ok(buf)
}

fn sock_filter(t: &mut Ctx) -> Res {
    new_netns()?;
    // UDP sees the 8-byte header too; a unix socket only the data.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").or_fail("udp bind")?;
    let (ua, ub) = pair(SockType::Datagram)?;
    attach(&udp, &short_only(8 + 5))?;
    attach(&ub, &short_only(5))?;
    t.wait("detached the UDP filter", || {
        set_int(&udp, libc::SOL_SOCKET, libc::SO_DETACH_FILTER, 0)
    })?;
    ensure_eq!("UDP filter", get_filter(&udp)?, short_only(13));
    ensure_eq!("unix filter", get_filter(&ub)?, short_only(5));
    let to = udp.local_addr().or_fail("addr")?;
    udp.send_to(b"far too long", to).or_fail("send long")?;
    udp.send_to(b"short", to).or_fail("send short")?;
    let mut buf = [0u8; 64];
    let n = recv_timeout(&udp, &mut buf)?;
    ensure_eq!("first UDP datagram let through", &buf[..n], b"short");
    write_all(&ua, b"far too long")?;
    write_all(&ua, b"tiny")?;
    let n = recv_timeout(&ub, &mut buf)?;
    ensure_eq!("first unix datagram let through", &buf[..n], b"tiny");
    Ok(())
}

fn tcp_half_closed(t: &mut Ctx) -> Res {
    new_netns()?;
    let l = std::net::TcpListener::bind("127.0.0.1:7002").or_fail("bind")?;
    let c = std::net::TcpStream::connect("127.0.0.1:7002").or_fail("connect")?;
    let (s, _) = l.accept().or_fail("accept")?;
    // The client sends its last bytes and is done sending (FIN_WAIT2 once
    // acknowledged); the server has them unread and still sends.
    (&c).write_all(b"last words").or_fail("client write")?;
    c.shutdown(std::net::Shutdown::Write).or_fail("shutdown")?;
    (&s).write_all(b"queued ").or_fail("server write")?;
    let state = |fd: &std::net::TcpStream| -> Res<u8> {
        Ok(sockopt_bytes(fd, libc::SOL_TCP, libc::TCP_INFO, 8)?[0])
    };
    let mut tries = 0;
    while (state(&c)?, state(&s)?) != (5, 8) && tries < 200 {
        std::thread::sleep(std::time::Duration::from_millis(5));
        tries += 1;
    }
    ensure_eq!(
        "(client, server) states before",
        (state(&c)?, state(&s)?),
        (5, 8)
    );
    t.wait("the server closed its end too", || {
        s.shutdown(std::net::Shutdown::Write).or_fail("shutdown")
    })?;
    ensure_eq!(
        "(client, server) states after",
        (state(&c)?, state(&s)?),
        (5, 8)
    );
    let mut buf = [0u8; 16];
    let n = (&s).read(&mut buf).or_fail("server read")?;
    ensure_eq!("the client's last bytes", &buf[..n], b"last words");
    ensure_eq!(
        "then the client's end",
        (&s).read(&mut buf).or_fail("server read")?,
        0
    );
    (&s).write_all(b"still open").or_fail("server write")?;
    s.shutdown(std::net::Shutdown::Write)
        .or_fail("server shutdown")?;
    let mut got = Vec::new();
    (&c).read_to_end(&mut got).or_fail("client read")?;
    ensure_eq!(
        "what the client gets, then the end",
        &got[..],
        b"queued still open"
    );
    Ok(())
}

fn udp_corked(t: &mut Ctx) -> Res {
    new_netns()?;
    let r = std::net::UdpSocket::bind("127.0.0.1:0").or_fail("bind")?;
    let s = std::net::UdpSocket::bind("127.0.0.1:0").or_fail("bind")?;
    s.connect(r.local_addr().or_fail("addr")?)
        .or_fail("connect")?;
    set_int(&s, libc::SOL_UDP, libc::UDP_CORK, 1)?;
    s.send(b"part one, ").or_fail("send")?;
    t.wait("sent the corked data", || {
        set_int(&s, libc::SOL_UDP, libc::UDP_CORK, 0)
    })?;
    s.send(b"part two").or_fail("send")?;
    set_int(&s, libc::SOL_UDP, libc::UDP_CORK, 0)?;
    let mut buf = [0u8; 64];
    let n = recv_timeout(&r, &mut buf)?;
    ensure_eq!(
        "one datagram of both parts",
        &buf[..n],
        b"part one, part two"
    );
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
    // IPv6: a listener on an address of no interface (IPV6_FREEBIND), with
    // keepalive timing of its own.
    let s6 = raw_socket(libc::AF_INET6, libc::SOCK_STREAM, libc::IPPROTO_TCP)?;
    set_int(&s6, libc::IPPROTO_IPV6, IPV6_FREEBIND, 1)?;
    set_int(&s6, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    set_int(&s6, libc::SOL_TCP, libc::TCP_KEEPIDLE, 33)?;
    set_int(&s6, libc::SOL_TCP, libc::TCP_KEEPINTVL, 7)?;
    set_int(&s6, libc::SOL_TCP, libc::TCP_KEEPCNT, 3)?;
    let a6: nix::sys::socket::SockaddrIn6 = "[fd00:99::1]:5004"
        .parse::<std::net::SocketAddrV6>()
        .or_fail("addr6")?
        .into();
    bind(s6.as_raw_fd(), &a6).or_fail("bind fd00:99::1")?;
    listen(&s6, Backlog::new(5).or_fail("backlog")?).or_fail("listen6")?;
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
    ensure_eq!(
        "IPv6 local address",
        getsockname::<nix::sys::socket::SockaddrIn6>(s6.as_raw_fd())
            .or_fail("getsockname6")?
            .to_string(),
        "[fd00:99::1]:5004"
    );
    for (name, what, want) in [
        (libc::TCP_KEEPIDLE, "TCP_KEEPIDLE", 33),
        (libc::TCP_KEEPINTVL, "TCP_KEEPINTVL", 7),
        (libc::TCP_KEEPCNT, "TCP_KEEPCNT", 3),
    ] {
        ensure_eq!(
            what,
            super::util::sockopt_int(&s6, libc::SOL_TCP, name)?,
            want
        );
    }
    Ok(())
}

const IPV6_FREEBIND: i32 = 78;
