//! Established TCP connections (`tcp-stream-INO.img`, with `--tcp-established`),
//! taken and put back with TCP_REPAIR: sequence numbers, the receive and send
//! queues, MSS, window scaling, SACK and timestamps, and the window. A socket
//! in repair mode sends nothing: the dump leaves it so until the tree is
//! killed (the connection then goes without a FIN or RST), or takes it out
//! of repair mode without a window probe if the tree goes on.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::MsgFlags;
use stasis_proto::images::TcpStreamEntry;

use crate::sys;

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

fn set(fd: BorrowedFd<'_>, name: i32, v: i32) -> Result<(), Errno> {
    sys::setsockopt_int(fd, SOL_TCP, name, v)
}

fn get(fd: BorrowedFd<'_>, name: i32) -> Result<i32, Errno> {
    sys::getsockopt_int(fd, SOL_TCP, name)
}

/// Sockets a dump put in repair mode: taken out of it when dropped, unless
/// the tree was killed (`keep`), so a dump that gives up or leaves the tree
/// running leaves its connections working.
#[derive(Debug, Default)]
pub struct Repaired {
    pub(crate) fds: Vec<OwnedFd>,
    /// The tree is dead: let the sockets die in repair mode.
    pub keep: bool,
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
pub fn dump(fd: &OwnedFd) -> Result<(TcpStreamEntry, Vec<u8>, Vec<u8>), Errno> {
    let b = fd.as_fd();
    let inq_len = sys::ioctl_int_get(b, SIOCINQ)?;
    let outq_len = sys::ioctl_int_get(b, SIOCOUTQ)?;
    let unsq_len = sys::ioctl_int_get(b, SIOCOUTQNSD)?;
    set(b, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)?;
    let inq_seq = get(b, TCP_QUEUE_SEQ)?.cast_unsigned();
    let inq = peek(fd, usize::try_from(inq_len).unwrap_or(0))?;
    set(b, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)?;
    let outq_seq = get(b, TCP_QUEUE_SEQ)?.cast_unsigned();
    let outq = peek(fd, usize::try_from(outq_len).unwrap_or(0))?;
    let info = sys::getsockopt_bytes(b, SOL_TCP, TCP_INFO, 104)?;
    // struct tcp_info: state, ca_state, retransmits, probes, backoff,
    // options, then snd_wscale:4 | rcv_wscale:4.
    let opts = u32::from(*info.get(5).unwrap_or(&0));
    let ws = *info.get(6).unwrap_or(&0);
    let win = sys::getsockopt_bytes(b, SOL_TCP, TCP_REPAIR_WINDOW, 20)?;
    let w =
        |i: usize| u32::from_ne_bytes([win[4 * i], win[4 * i + 1], win[4 * i + 2], win[4 * i + 3]]);
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
        rcv_wup: (win.len() >= 20).then(|| w(4)),
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
    sys::setsockopt_bytes(b, SOL_TCP, TCP_REPAIR_OPTIONS, &opts)?;
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
        sys::setsockopt_bytes(b, SOL_TCP, TCP_REPAIR_WINDOW, &win)?;
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
