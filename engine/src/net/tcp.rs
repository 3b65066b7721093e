//! Established TCP connections (`tcp-stream-INO.img`, with `--tcp-established`),
//! taken and put back with TCP_REPAIR: sequence numbers, the receive and send
//! queues, MSS, window scaling, SACK and timestamps, and the window. A socket
//! in repair mode sends nothing: the dump leaves it so until the tree is
//! killed (the connection then goes without a FIN or RST), or takes it out
//! of repair mode without a window probe if the tree goes on.
//!
//! Half-closed connections (FIN_WAIT1/2, CLOSE_WAIT, LAST_ACK, CLOSING) are
//! kept with the sequence numbers the FINs took left out: they come back
//! established, then close the halves they had closed. A FIN this side sent
//! is sent again with shutdown (the peer acknowledges it once more); a FIN
//! it received is handed to it again as a packet from the peer, written on
//! a raw socket with the lock's mark so the network lock lets it in.

use stasis_kernel as kernel;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::MsgFlags;
use stasis_proto::images::file_entry::Kind;
use stasis_proto::images::{FileEntry, TcpStreamEntry};

use crate::images::{Dir, img};

use libc::{
    SOL_TCP, TCP_CORK, TCP_INFO, TCP_MAXSEG, TCP_NODELAY, TCP_QUEUE_SEQ, TCP_REPAIR,
    TCP_REPAIR_OPTIONS, TCP_REPAIR_QUEUE, TCP_REPAIR_WINDOW, TCP_TIMESTAMP,
};

// What libc does not name (linux/tcp.h, linux/sockios.h).
const TCP_RECV_QUEUE: i32 = 1;
const TCP_SEND_QUEUE: i32 = 2;
/// Leave repair mode without sending a window probe.
const TCP_REPAIR_OFF_NO_WP: i32 = -1;
const TCPOPT_MSS: u32 = 2;
const TCPOPT_WINDOW: u32 = 3;
const TCPOPT_SACK_PERM: u32 = 4;
const TCPOPT_TIMESTAMP: u32 = 8;
/// tcp_info.tcpi_options bits.
const TCPI_OPT_TIMESTAMPS: u32 = 1;
const TCPI_OPT_SACK: u32 = 2;
const TCPI_OPT_WSCALE: u32 = 4;
/// Bytes to read, bytes not yet acknowledged, bytes not yet sent.
const SIOCINQ: libc::c_ulong = libc::FIONREAD;
const SIOCOUTQ: libc::c_ulong = libc::TIOCOUTQ;
const SIOCOUTQNSD: libc::c_ulong = libc::SIOCOUTQNSD;

/// TCP states (tcp_info.tcpi_state), which the images use for every
/// socket kind (a unix socket is "established", "listening" or "closed").
pub const TCP_ESTABLISHED: u32 = 1;
const TCP_SYN_SENT: u32 = 2;
const TCP_SYN_RECV: u32 = 3;
const TCP_FIN_WAIT1: u32 = 4;
const TCP_FIN_WAIT2: u32 = 5;
const TCP_TIME_WAIT: u32 = 6;
/// Unconnected.
pub const TCP_CLOSE: u32 = 7;
const TCP_CLOSE_WAIT: u32 = 8;
const TCP_LAST_ACK: u32 = 9;
/// Listening.
pub const TCP_LISTEN: u32 = 10;
const TCP_CLOSING: u32 = 11;

/// The TCP state of socket `fd`.
pub fn state(fd: BorrowedFd<'_>) -> Result<u32, Errno> {
    let info = kernel::socket::getsockopt_bytes(fd, SOL_TCP, TCP_INFO, 8)?;
    Ok(u32::from(info.first().copied().unwrap_or(0)))
}

/// The name of `state` when a dump must refuse it: a connection being set
/// up, or one in TIME_WAIT.
pub fn refused(state: u32) -> Option<&'static str> {
    Some(match state {
        TCP_SYN_SENT => "SYN_SENT",
        TCP_SYN_RECV => "SYN_RECV",
        TCP_TIME_WAIT => "TIME_WAIT",
        _ => return None,
    })
}

/// Whether a connection in `state` is dumped with TCP repair: established
/// or half-closed.
pub fn connected(state: u32) -> bool {
    matches!(
        state,
        TCP_ESTABLISHED
            | TCP_FIN_WAIT1
            | TCP_FIN_WAIT2
            | TCP_CLOSE_WAIT
            | TCP_LAST_ACK
            | TCP_CLOSING
    )
}

/// This side sent its FIN.
fn sent_fin(state: u32) -> bool {
    matches!(
        state,
        TCP_FIN_WAIT1 | TCP_FIN_WAIT2 | TCP_LAST_ACK | TCP_CLOSING
    )
}

/// The peer's FIN arrived.
fn got_fin(state: u32) -> bool {
    matches!(state, TCP_CLOSE_WAIT | TCP_LAST_ACK | TCP_CLOSING)
}

fn set(fd: BorrowedFd<'_>, name: i32, v: i32) -> Result<(), Errno> {
    kernel::socket::setsockopt_int(fd, SOL_TCP, name, v)
}

fn get(fd: BorrowedFd<'_>, name: i32) -> Result<i32, Errno> {
    kernel::socket::getsockopt_int(fd, SOL_TCP, name)
}

/// A connection's state and its receive and send queues, by socket inode.
type Stream = (u32, TcpStreamEntry, Vec<u8>, Vec<u8>);

/// The established connections of a dump or a restore, and on the dump
/// side the sockets in repair mode meanwhile and the network lock of
/// their tree.
#[derive(Debug, Default)]
pub struct Streams {
    streams: Vec<Stream>,
    repaired: Repaired,
    /// Dropped after `repaired`: lifted once the connections are out of
    /// repair mode.
    lock: Option<crate::net::netlock::Lock>,
}

impl Streams {
    /// Dump: connections are locked with `lock` before they are taken.
    pub(crate) fn set_lock(&mut self, lock: crate::net::netlock::Lock) {
        self.lock = Some(lock);
    }

    /// Dump: the network lock, if the dump takes one.
    pub(crate) fn lock_mut(&mut self) -> Option<&mut crate::net::netlock::Lock> {
        self.lock.as_mut()
    }

    /// Dump: whether a lock is held (the restore must lift it).
    pub(crate) fn lock_held(&self) -> bool {
        self.lock
            .as_ref()
            .is_some_and(crate::net::netlock::Lock::held)
    }

    /// Dump: socket `fd` is in repair mode until the dump ends.
    pub(crate) fn repairing(&mut self, fd: OwnedFd) {
        self.repaired.fds.push(fd);
    }

    /// Dump: connection `ino` as taken.
    pub(crate) fn push(&mut self, ino: u32, e: TcpStreamEntry, inq: Vec<u8>, outq: Vec<u8>) {
        self.streams.push((ino, e, inq, outq));
    }

    /// Dump: the tree was killed; the connections taken in repair mode die
    /// in it, and the lock stays for the restore to lift.
    pub fn keep(&mut self) {
        self.repaired.keep = true;
        if let Some(l) = self.lock.as_mut() {
            l.keep();
        }
    }

    /// Restore: connection `ino`, if it was taken.
    pub(crate) fn of(&self, ino: u32) -> Option<&Stream> {
        self.streams.iter().find(|t| t.0 == ino)
    }

    /// Write a `tcp-stream-INO.img` per connection.
    pub(crate) fn write(&self, dir: &Dir) -> crate::error::Result<()> {
        for (ino, e, inq, outq) in &self.streams {
            let mut w = dir.create(img::TCP_STREAM, u64::from(*ino))?;
            w.write(e)?;
            w.write_payload(inq)?;
            w.write_payload(outq)?;
            w.finish()?;
        }
        Ok(())
    }

    /// Load the connections of the established TCP sockets of `entries`.
    pub(crate) fn load(dir: &Dir, entries: &[FileEntry]) -> crate::error::Result<Streams> {
        let mut t = Streams::default();
        for e in entries {
            if let Some(Kind::Isk(s)) = &e.kind
                && connected(s.state)
                && s.r#type == libc::SOCK_STREAM.cast_unsigned()
            {
                let mut r = dir.open_image(img::TCP_STREAM, u64::from(s.ino))?;
                let path = r.path().to_owned();
                let entry: TcpStreamEntry =
                    r.read_entry()?
                        .ok_or_else(|| crate::error::EngineError::BadImage {
                            path,
                            what: "empty".into(),
                        })?;
                let inq = r.read_payload(u64::from(entry.inq_len))?;
                let outq = r.read_payload(u64::from(entry.outq_len))?;
                t.streams.push((s.ino, entry, inq, outq));
            }
        }
        Ok(t)
    }
}

/// Sockets a dump put in repair mode: taken out of it when dropped, unless
/// the tree was killed (`keep`), so a dump that gives up or leaves the tree
/// running leaves its connections working.
#[derive(Debug, Default)]
struct Repaired {
    fds: Vec<OwnedFd>,
    /// The tree is dead: let the sockets die in repair mode.
    keep: bool,
}

impl Drop for Repaired {
    fn drop(&mut self) {
        if !self.keep {
            for fd in &self.fds {
                repair_off_quietly(fd.as_fd());
            }
        }
    }
}

/// Put `fd` in repair mode (the caller takes it out on failure).
pub fn repair_on(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    set(fd, TCP_REPAIR, 1)
}

/// Leave repair mode without a window probe (a dump that gives up, or one
/// with `--leave-running`).
pub fn repair_off_quietly(fd: BorrowedFd<'_>) {
    let _ = set(fd, TCP_REPAIR, TCP_REPAIR_OFF_NO_WP);
}

fn peek(fd: &OwnedFd, len: usize) -> Result<Vec<u8>, Errno> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    if len > 0 {
        got = nix::sys::socket::recv(
            fd.as_raw_fd(),
            &mut buf,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
        )?;
    }
    buf.truncate(got);
    Ok(buf)
}

/// Read the state of connection `fd`, in repair mode: the entry and the
/// receive and send queues.
pub fn dump(fd: &OwnedFd, state: u32) -> Result<(TcpStreamEntry, Vec<u8>, Vec<u8>), Errno> {
    let b = fd.as_fd();
    let inq_len = kernel::ioctl::ioctl_int_get(b, SIOCINQ)?;
    let outq_len = kernel::ioctl::ioctl_int_get(b, SIOCOUTQ)?;
    let unsq_len = kernel::ioctl::ioctl_int_get(b, SIOCOUTQNSD)?;
    set(b, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)?;
    let inq_seq = get(b, TCP_QUEUE_SEQ)?.cast_unsigned();
    let inq = peek(fd, usize::try_from(inq_len).unwrap_or(0))?;
    set(b, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)?;
    let outq_seq = get(b, TCP_QUEUE_SEQ)?.cast_unsigned();
    let outq = peek(fd, usize::try_from(outq_len).unwrap_or(0))?;
    let info = kernel::socket::getsockopt_bytes(b, SOL_TCP, TCP_INFO, 104)?;
    // struct tcp_info: state, ca_state, retransmits, probes, backoff,
    // options, then snd_wscale:4 | rcv_wscale:4.
    let opts = u32::from(*info.get(5).unwrap_or(&0));
    let ws = *info.get(6).unwrap_or(&0);
    let win = kernel::socket::getsockopt_bytes(b, SOL_TCP, TCP_REPAIR_WINDOW, 20)?;
    let w =
        |i: usize| u32::from_ne_bytes([win[4 * i], win[4 * i + 1], win[4 * i + 2], win[4 * i + 3]]);
    // A FIN takes a sequence number of its own; it is not data.
    let inq_seq = inq_seq.wrapping_sub(u32::from(got_fin(state)));
    let outq_seq = outq_seq.wrapping_sub(u32::from(sent_fin(state)));
    let e = TcpStreamEntry {
        inq_len: u32::try_from(inq.len()).unwrap_or(0),
        inq_seq,
        outq_len: u32::try_from(outq.len()).unwrap_or(0),
        outq_seq,
        opt_mask: opts,
        snd_wscale: u32::from(ws & 0xf),
        mss_clamp: get(b, TCP_MAXSEG)?.cast_unsigned(),
        rcv_wscale: Some(u32::from(ws >> 4)),
        timestamp: Some(get(b, TCP_TIMESTAMP)?.cast_unsigned()),
        cork: Some(get(b, TCP_CORK)? != 0),
        nodelay: Some(get(b, TCP_NODELAY)? != 0),
        unsq_len: Some(unsq_len.cast_unsigned()),
        snd_wl1: (win.len() >= 20).then(|| w(0)),
        snd_wnd: (win.len() >= 20).then(|| w(1)),
        max_window: (win.len() >= 20).then(|| w(2)),
        rcv_wnd: (win.len() >= 20).then(|| w(3)),
        // The window was last advertised past the FIN, at most.
        rcv_wup: (win.len() >= 20).then(|| {
            let wup = w(4);
            if wup.wrapping_sub(inq_seq).cast_signed() > 0 {
                inq_seq
            } else {
                wup
            }
        }),
    };
    Ok((e, inq, outq))
}

/// Before bind and connect: repair mode and the sequence numbers.
pub fn prepare(fd: &OwnedFd, e: &TcpStreamEntry) -> Result<(), Errno> {
    let b = fd.as_fd();
    set(b, TCP_REPAIR, 1)?;
    // The dumped numbers are past the queued bytes, which are queued again
    // below and move them on.
    set(b, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)?;
    set(
        b,
        TCP_QUEUE_SEQ,
        e.inq_seq.wrapping_sub(e.inq_len).cast_signed(),
    )?;
    set(b, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)?;
    set(
        b,
        TCP_QUEUE_SEQ,
        e.outq_seq.wrapping_sub(e.outq_len).cast_signed(),
    )?;
    Ok(())
}

/// After connect: options, queues and window. The socket stays in repair
/// mode until every connection exists (see [`repair_done`]).
pub fn finish(fd: &OwnedFd, e: &TcpStreamEntry, inq: &[u8], outq: &[u8]) -> Result<(), Errno> {
    let b = fd.as_fd();
    let mut opts: Vec<u8> = Vec::new();
    let mut push = |code: u32, val: u32| {
        opts.extend_from_slice(&code.to_ne_bytes());
        opts.extend_from_slice(&val.to_ne_bytes());
    };
    push(TCPOPT_MSS, e.mss_clamp);
    if e.opt_mask & TCPI_OPT_WSCALE != 0 {
        push(
            TCPOPT_WINDOW,
            e.snd_wscale | (e.rcv_wscale.unwrap_or(0) << 16),
        );
    }
    if e.opt_mask & TCPI_OPT_SACK != 0 {
        push(TCPOPT_SACK_PERM, 0);
    }
    if e.opt_mask & TCPI_OPT_TIMESTAMPS != 0 {
        push(TCPOPT_TIMESTAMP, 0);
    }
    kernel::socket::setsockopt_bytes(b, SOL_TCP, TCP_REPAIR_OPTIONS, &opts)?;
    if let Some(ts) = e.timestamp {
        set(b, TCP_TIMESTAMP, ts.cast_signed())?;
    }
    set(b, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)?;
    send_all(fd, inq)?;
    set(b, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)?;
    send_all(fd, outq)?;
    if let (Some(a), Some(bw), Some(c), Some(d), Some(f)) =
        (e.snd_wl1, e.snd_wnd, e.max_window, e.rcv_wnd, e.rcv_wup)
    {
        let win: Vec<u8> = [a, bw, c, d, f]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        kernel::socket::setsockopt_bytes(b, SOL_TCP, TCP_REPAIR_WINDOW, &win)?;
    }
    if e.nodelay == Some(true) {
        set(b, TCP_NODELAY, 1)?;
    }
    if e.cork == Some(true) {
        set(b, TCP_CORK, 1)?;
    }
    Ok(())
}

/// Out of repair mode: the connection runs (a window probe tells the peer,
/// whose socket must exist by then, or it answers with a reset).
pub fn repair_done(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    set(fd, TCP_REPAIR, 0)
}

/// After [`repair_done`]: close the halves a half-closed connection in
/// `state` had closed. `local` and `peer` are its addresses.
pub fn close_halves(
    fd: &OwnedFd,
    e: &TcpStreamEntry,
    state: u32,
    local: std::net::SocketAddr,
    peer: std::net::SocketAddr,
) -> Result<(), Errno> {
    let shut = || nix::sys::socket::shutdown(fd.as_raw_fd(), nix::sys::socket::Shutdown::Write);
    // CLOSING: ours went first; LAST_ACK: theirs did.
    if sent_fin(state) && state != TCP_LAST_ACK {
        shut()?;
    }
    if got_fin(state) {
        // Our unacknowledged data starts at outq_seq - outq_len: acking
        // that much acknowledges nothing new, whatever was sent since.
        let fin = fin_packet(
            peer,
            local,
            e.inq_seq,
            e.outq_seq.wrapping_sub(e.outq_len),
            u16::try_from(e.snd_wnd.unwrap_or(65535) >> e.snd_wscale.min(14)).unwrap_or(u16::MAX),
        );
        send_fin(&fin, local)?;
        // The packet is taken on the way in, before sendto returns; give
        // the socket a moment if it is not there yet.
        let want = if state == TCP_LAST_ACK {
            TCP_CLOSE_WAIT
        } else {
            state
        };
        let mut tries = 0;
        while self::state(fd.as_fd())? != want {
            tries += 1;
            if tries > 100 {
                return Err(Errno::EPROTO);
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    if state == TCP_LAST_ACK {
        shut()?;
    }
    Ok(())
}

/// The 16-bit ones' complement sum of `parts`, folded and inverted.
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for p in parts {
        for w in p.chunks(2) {
            sum += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(0)
}

/// A FIN+ACK segment from `src` to `dst` with its IP header: IPv4 when
/// both ends are IPv4 (or IPv4-mapped), else IPv6.
fn fin_packet(
    src: std::net::SocketAddr,
    dst: std::net::SocketAddr,
    seq: u32,
    ack: u32,
    window: u16,
) -> Vec<u8> {
    use std::net::IpAddr;
    let v4 = |a: IpAddr| match a {
        IpAddr::V4(v) => Some(v),
        IpAddr::V6(v) => v.to_ipv4_mapped(),
    };
    let mut tcp = Vec::with_capacity(20);
    tcp.extend_from_slice(&src.port().to_be_bytes());
    tcp.extend_from_slice(&dst.port().to_be_bytes());
    tcp.extend_from_slice(&seq.to_be_bytes());
    tcp.extend_from_slice(&ack.to_be_bytes());
    tcp.extend_from_slice(&[5 << 4, 0x11]); // 20-byte header; FIN, ACK
    tcp.extend_from_slice(&window.to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    let len = u16::try_from(tcp.len()).unwrap_or(20);
    let proto = u8::try_from(libc::IPPROTO_TCP).unwrap_or(6);
    if let (Some(s), Some(d)) = (v4(src.ip()), v4(dst.ip())) {
        let pseudo = [
            &s.octets()[..],
            &d.octets(),
            &[0, proto],
            &len.to_be_bytes(),
        ]
        .concat();
        let c = checksum(&[&pseudo, &tcp]);
        tcp[16..18].copy_from_slice(&c.to_be_bytes());
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&(20 + len).to_be_bytes());
        ip.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]); // DF, TTL 64
        ip.extend_from_slice(&s.octets());
        ip.extend_from_slice(&d.octets());
        let c = checksum(&[&ip]);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        ip.extend_from_slice(&tcp);
        return ip;
    }
    let six = |a: IpAddr| match a {
        IpAddr::V4(v) => v.to_ipv6_mapped().octets(),
        IpAddr::V6(v) => v.octets(),
    };
    let (s, d) = (six(src.ip()), six(dst.ip()));
    let pseudo = [&s[..], &d, &u32::from(len).to_be_bytes(), &[0, 0, 0, proto]].concat();
    let c = checksum(&[&pseudo, &tcp]);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend_from_slice(&len.to_be_bytes());
    ip.extend_from_slice(&[proto, 64]);
    ip.extend_from_slice(&s);
    ip.extend_from_slice(&d);
    ip.extend_from_slice(&tcp);
    ip
}

/// Send packet `pkt` (IP header included) to `to`'s address on a raw
/// socket carrying the network lock's mark.
fn send_fin(pkt: &[u8], to: std::net::SocketAddr) -> Result<(), Errno> {
    use nix::sys::socket::{SockaddrIn, SockaddrIn6};
    // The packet's IP version decides (fin_packet picked it).
    let v6 = pkt.first().is_some_and(|b| b >> 4 == 6);
    let (domain, level, opt) = if v6 {
        (libc::AF_INET6, libc::IPPROTO_IPV6, libc::IPV6_HDRINCL)
    } else {
        (libc::AF_INET, libc::IPPROTO_IP, libc::IP_HDRINCL)
    };
    let raw = kernel::socket::socket(domain, libc::SOCK_RAW, libc::IPPROTO_RAW)?;
    kernel::socket::setsockopt_int(raw.as_fd(), level, opt, 1)?;
    kernel::socket::setsockopt_int(
        raw.as_fd(),
        libc::SOL_SOCKET,
        libc::SO_MARK,
        crate::net::netlock::MARK.cast_signed(),
    )?;
    let sent = match to {
        std::net::SocketAddr::V6(a) if v6 => nix::sys::socket::sendto(
            raw.as_raw_fd(),
            pkt,
            &SockaddrIn6::from(std::net::SocketAddrV6::new(*a.ip(), 0, 0, a.scope_id())),
            MsgFlags::empty(),
        )?,
        std::net::SocketAddr::V4(a) if v6 => nix::sys::socket::sendto(
            raw.as_raw_fd(),
            pkt,
            &SockaddrIn6::from(std::net::SocketAddrV6::new(
                a.ip().to_ipv6_mapped(),
                0,
                0,
                0,
            )),
            MsgFlags::empty(),
        )?,
        other => {
            let ip = match other.ip() {
                std::net::IpAddr::V4(v4) => v4,
                std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().ok_or(Errno::EAFNOSUPPORT)?,
            };
            nix::sys::socket::sendto(
                raw.as_raw_fd(),
                pkt,
                &SockaddrIn::from(std::net::SocketAddrV4::new(ip, 0)),
                MsgFlags::empty(),
            )?
        }
    };
    if sent != pkt.len() {
        return Err(Errno::EIO);
    }
    Ok(())
}

fn send_all(fd: &OwnedFd, mut data: &[u8]) -> Result<(), Errno> {
    while !data.is_empty() {
        let n = nix::sys::socket::send(fd.as_raw_fd(), data, MsgFlags::empty())?;
        if n == 0 {
            return Err(Errno::EIO);
        }
        data = &data[n..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fin_packets_carry_valid_checksums_in_both_families() {
        let (peer, local) = (
            "10.0.0.2:80".parse().unwrap(),
            "10.0.0.1:5555".parse().unwrap(),
        );
        let p = fin_packet(peer, local, 1000, 2000, 512);
        assert_eq!(p.len(), 40);
        // A header with its checksum in sums to zero.
        assert_eq!(checksum(&[&p[..20]]), 0);
        let pseudo = [&p[12..20], &[0, 6, 0, 20][..]].concat();
        assert_eq!(checksum(&[&pseudo, &p[20..]]), 0);
        assert_eq!(u32::from_be_bytes([p[24], p[25], p[26], p[27]]), 1000);
        assert_eq!(p[33], 0x11, "FIN and ACK");
        let (peer, local) = (
            "[fd00::2]:80".parse().unwrap(),
            "[fd00::1]:5555".parse().unwrap(),
        );
        let p = fin_packet(peer, local, 7, 9, 512);
        assert_eq!((p.len(), p[0] >> 4, p[6]), (60, 6, 6));
        let pseudo = [&p[8..40], &[0, 0, 0, 20, 0, 0, 0, 6][..]].concat();
        assert_eq!(checksum(&[&pseudo, &p[40..]]), 0);
    }

    #[test]
    fn half_closed_states_are_dumped_and_half_open_ones_are_not() {
        for s in [1, 4, 5, 8, 9, 11] {
            assert!(connected(s), "state {s}");
        }
        for s in [2, 3, 6, 7, 10] {
            assert!(!connected(s), "state {s}");
        }
        assert!(sent_fin(5) && !got_fin(5));
        assert!(got_fin(8) && !sent_fin(8));
        assert!(sent_fin(9) && got_fin(9) && sent_fin(11) && got_fin(11));
    }
}
