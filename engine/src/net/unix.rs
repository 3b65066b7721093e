//! Unix sockets (`unix_sk_entry` in `files.img`) and the data queued on them
//! (`sk-queues.img`, fds in flight included).
//!
//! The dump learns type, state, name, peer, backlog and pending connections
//! from sock_diag, and reads queues through a copy of the socket
//! (pidfd_getfd) by peeking with SO_PEEK_OFF, so nothing is consumed. Data
//! queued on a connection not yet accepted can only be read by accepting it:
//! that happens after the tree is killed, from a copy of the listener.
//!
//! The restore makes every socket of the images at once in the engine:
//! listeners are bound and listening, connected pairs come from socketpair,
//! pending connections connect to their listener again, datagram sockets
//! connect to their peer's name; then queued data is sent from each socket's
//! peer (or to its name), then halves are shut down.

use stasis_kernel as kernel;
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use netlink_packet_core::{
    Emitable, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::unix::{ShowFlags, StateFlags, UnixRequest, nlas::Nla};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::socket::{
    AddressFamily, Backlog, ControlMessage, MsgFlags, NetlinkAddr, Shutdown, SockFlag,
    SockProtocol, SockType, UnixAddr, sockopt,
};
use nix::unistd::Pid;
use stasis_proto::images::file_entry::Kind;
use stasis_proto::images::{
    FdTypes, FileEntry, FownEntry, ScmEntry, SkOptsEntry, SkPacketEntry, UnixSkEntry,
};

use crate::error::{EngineError as Error, Result};
use crate::files::{FdCtx, FileKind, OpenCtx, Table};
use crate::proc;

/// Unix sockets.
#[derive(Debug)]
pub struct UnixSk;

use crate::images::img;
use crate::net::tcp::{TCP_CLOSE, TCP_ESTABLISHED, TCP_LISTEN};
/// `uflags`: the socket is outside the tree (`--ext-unix-sk`); the restore
/// connects to its name instead of making it.
const USK_EXTERN: u32 = 1;
const SCM_RIGHTS: u32 = 1;
const RCV_SHUTDOWN: u32 = 1;
const SEND_SHUTDOWN: u32 = 2;
/// The largest packet peeked in one go.
const PEEK_MAX: usize = 4 << 20;

/// What sock_diag reports about one unix socket.
#[derive(Debug, Clone, Default)]
pub struct Diag {
    ty: u8,
    state: u8,
    name: Vec<u8>,
    /// Inode of the bound path, for a path name.
    vfs_ino: Option<u32>,
    peer: u32,
    icons: Vec<u32>,
    /// Bytes queued (for listeners: connections waiting), and the backlog.
    rqlen: (u32, u32),
    shutdown: u8,
}

/// Dump and restore state of the unix sockets of one dump or restore.
#[derive(Debug, Default)]
pub struct State {
    diag: Option<HashMap<u32, Diag>>,
    /// A task in the tree's network namespace, when it has its own:
    /// sock_diag answers for the asker's namespace.
    pub(crate) netns_of: Option<Pid>,
    /// Sockets described, by inode: the task and fd first seen with it.
    seen: HashMap<u32, (Pid, i32)>,
    /// Queued packets, by the inode of the socket whose queue holds them.
    queues: Vec<(u32, SkPacketEntry, Vec<u8>)>,
    /// fds received while peeking (SCM_RIGHTS), open while the dump runs so
    /// their numbers stay theirs.
    inflight: Vec<OwnedFd>,
    /// Sockets whose connection waits to be accepted: (inode, the
    /// listener's name, bytes sent into it). The pending connection itself
    /// has no inode, so the images give it one (`u32::MAX - n`).
    pending: Vec<(u32, Vec<u8>, u32)>,
    /// Listeners with connections waiting: (inode, name, a copy to accept
    /// from once the tree is dead), and which made-up inode holds the data.
    listeners: Vec<(u32, Vec<u8>, OwnedFd)>,
    data_embryo: HashMap<u32, u32>,
    embryos: HashSet<u32>,
    peek_buf: Vec<u8>,
}

impl State {
    /// Whether `ino` is a unix socket (sock_diag is asked once per dump).
    pub fn is_unix(&mut self, ino: u32) -> bool {
        self.diag_of(ino).is_some()
    }

    fn diag_of(&mut self, ino: u32) -> Option<Diag> {
        if self.diag.is_none() {
            let all = match self.netns_of {
                Some(pid) => crate::task::in_namespace_of(
                    pid,
                    "net",
                    nix::sched::CloneFlags::CLONE_NEWNET,
                    || Ok(diag_all().unwrap_or_default()),
                )
                .unwrap_or_default(),
                None => diag_all().unwrap_or_default(),
            };
            self.diag = Some(all);
        }
        self.diag.as_ref().and_then(|d| d.get(&ino)).cloned()
    }

    /// Loaded packets for the restore.
    pub fn set_queues(&mut self, q: Vec<(SkPacketEntry, Vec<u8>)>) {
        self.queues = q.into_iter().map(|(e, d)| (e.id_for, e, d)).collect();
    }
}

/// Every unix socket of this network namespace, by inode (sock_diag).
fn diag_all() -> std::result::Result<HashMap<u32, Diag>, Errno> {
    let answers = sock_diag(SockDiagMessage::UnixRequest(UnixRequest {
        state_flags: StateFlags::from_bits_retain(u32::MAX),
        inode: 0,
        show_flags: ShowFlags::NAME
            | ShowFlags::VFS
            | ShowFlags::PEER
            | ShowFlags::ICONS
            | ShowFlags::RQLEN,
        cookie: [0xff; 8],
    }))?;
    let mut out = HashMap::new();
    for a in answers {
        let SockDiagMessage::UnixResponse(r) = a else {
            continue;
        };
        let mut d = Diag {
            ty: r.header.kind,
            state: r.header.state,
            ..Diag::default()
        };
        for nla in &r.nlas {
            match nla {
                Nla::Name(_) => {
                    // The name as the kernel gives it: a path, or a NUL
                    // and the abstract name.
                    let mut b = vec![0u8; nla.buffer_len()];
                    nla.emit(&mut b);
                    d.name = attr_payload(&b);
                }
                Nla::Vfs(v) => {
                    let mut b = [0u8; 8];
                    v.emit(&mut b);
                    d.vfs_ino = Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                }
                Nla::Peer(p) => d.peer = *p,
                Nla::PendingConnections(v) => d.icons.clone_from(v),
                Nla::ReceiveQueueLength(a, b) => d.rqlen = (*a, *b),
                Nla::Shutdown(s) => d.shutdown = *s,
                _ => {}
            }
        }
        out.insert(r.header.inode, d);
    }
    Ok(out)
}

/// Send a sock_diag dump request in the current thread's network
/// namespace; every answer until the end of the dump.
pub(crate) fn sock_diag(req: SockDiagMessage) -> std::result::Result<Vec<SockDiagMessage>, Errno> {
    let sock = nix::sys::socket::socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )?;
    let mut hdr = NetlinkHeader::default();
    hdr.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut msg = NetlinkMessage::new(hdr, req.into());
    msg.finalize();
    let mut bytes = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut bytes);
    nix::sys::socket::sendto(
        sock.as_raw_fd(),
        &bytes,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = nix::sys::socket::recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty())?;
        if n == 0 {
            return Ok(out);
        }
        let mut off = 0;
        while off < n {
            let Ok(m) = NetlinkMessage::<SockDiagMessage>::deserialize(&buf[off..n]) else {
                return Err(Errno::EBADMSG);
            };
            let len = usize::try_from(m.header.length).unwrap_or(0);
            match m.payload {
                NetlinkPayload::InnerMessage(a) => out.push(a),
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => {
                    return Err(e.code.map_or(Errno::EIO, |c| Errno::from_raw(-c.get())));
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            off += (len + 3) & !3;
        }
    }
}

/// The payload of an emitted netlink attribute (after its 4-byte header),
/// without padding or the trailing NUL of a path.
fn attr_payload(b: &[u8]) -> Vec<u8> {
    let len = usize::from(u16::from_ne_bytes([b[0], b[1]])).min(b.len());
    let mut p = b.get(4..len).unwrap_or_default().to_vec();
    if p.first() != Some(&0) && p.last() == Some(&0) {
        p.pop();
    }
    p
}

/// A sender's name from its raw sockaddr: for unix sockets the name as
/// sock_diag gives it (a path without trailing NULs, or a NUL and the
/// abstract name); other families keep the whole sockaddr.
fn name_of_raw(raw: &[u8], unix_names: bool) -> Vec<u8> {
    if !unix_names {
        return raw.to_vec();
    }
    let mut from = raw.get(2..).unwrap_or_default().to_vec();
    if from.first() != Some(&0) {
        while from.last() == Some(&0) {
            from.pop();
        }
    }
    from
}

/// A datagram: its bytes and its sender's raw sockaddr.
pub(crate) type Datagram = (Vec<u8>, Option<Vec<u8>>);

/// Peek the datagrams queued on an inet socket: bytes and raw sender.
pub(crate) fn peek_datagrams(
    fd: &OwnedFd,
    table: &mut Table,
) -> std::result::Result<Vec<Datagram>, Errno> {
    let mut buf = std::mem::take(&mut table.unix.peek_buf);
    let got = read_queue(fd, &mut buf, false, false);
    table.unix.peek_buf = buf;
    Ok(got?.into_iter().map(|(d, _, from)| (d, from)).collect())
}

impl State {
    /// Queue a packet for the socket with inode `ino`.
    pub(crate) fn push_queue(&mut self, ino: u32, data: Vec<u8>, from: Option<Vec<u8>>) {
        let mut e = packet(0, &data, Vec::new());
        e.addr = from;
        self.queues.push((ino, e, data));
    }

    /// Restore: the packets queued for the files `want` picks.
    pub(crate) fn queued_for(
        &self,
        want: impl Fn(u32) -> bool,
    ) -> Vec<(u32, SkPacketEntry, Vec<u8>)> {
        self.queues
            .iter()
            .filter(|(id, _, _)| want(*id))
            .cloned()
            .collect()
    }
}

/// The name in a unix address as sock_diag gives it.
fn name_of(a: &UnixAddr) -> Option<Vec<u8>> {
    if let Some(p) = a.path() {
        return Some(p.as_os_str().as_bytes().to_vec());
    }
    a.as_abstract().map(|n| {
        let mut v = vec![0u8];
        v.extend_from_slice(n);
        v
    })
}

fn sock_type(ty: u32) -> Option<SockType> {
    Some(match ty {
        1 => SockType::Stream,
        2 => SockType::Datagram,
        5 => SockType::SeqPacket,
        _ => return None,
    })
}

/// The address of `name`, a path looked up under `root` (`--root`) when
/// there is one.
fn addr_of(name: &[u8], root: Option<&std::path::Path>) -> std::result::Result<UnixAddr, Errno> {
    match (name.split_first(), root) {
        (Some((0, abs)), _) => UnixAddr::new_abstract(abs),
        (Some((b'/', _)), Some(r)) => UnixAddr::new(&r.join(OsStr::from_bytes(&name[1..]))),
        _ => UnixAddr::new(OsStr::from_bytes(name)),
    }
}

/// One packet peeked (or read): its bytes, the fds that came with it and
/// the sender's name (datagrams from a bound socket).
type Packet = (Vec<u8>, Vec<OwnedFd>, Option<Vec<u8>>);

/// Read the queue of `fd` packet by packet: peeking with SO_PEEK_OFF (put
/// back as it was), or reading for real (`consume`, a socket we own).
fn read_queue(
    fd: &OwnedFd,
    buf: &mut Vec<u8>,
    consume: bool,
    unix_names: bool,
) -> std::result::Result<Vec<Packet>, Errno> {
    if buf.len() < PEEK_MAX {
        buf.resize(PEEK_MAX, 0);
    }
    let raw = fd.as_raw_fd();
    let old_off = if consume {
        None
    } else {
        let old = kernel::socket::getsockopt_int(fd.as_fd(), libc::SOL_SOCKET, libc::SO_PEEK_OFF)?;
        kernel::socket::setsockopt_int(fd.as_fd(), libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0)?;
        Some(old)
    };
    let mut flags = libc::MSG_DONTWAIT;
    if !consume {
        flags |= libc::MSG_PEEK;
    }
    let mut out = Vec::new();
    let result = loop {
        match kernel::socket::recv_msg(raw, buf, flags) {
            Ok((n, fds, from)) => {
                if n == 0 && fds.is_empty() {
                    break Ok(());
                }
                let from = Some(name_of_raw(&from, unix_names)).filter(|a| !a.is_empty());
                out.push((buf[..n].to_vec(), fds, from));
                if out.len() > 1 << 20 {
                    break Err(Errno::E2BIG);
                }
            }
            Err(Errno::EAGAIN) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    if let Some(old) = old_off {
        kernel::socket::setsockopt_int(fd.as_fd(), libc::SOL_SOCKET, libc::SO_PEEK_OFF, old)?;
    }
    result.map(|()| out)
}

fn sk_opts(fd: &OwnedFd) -> std::result::Result<SkOptsEntry, Errno> {
    let tmo = |opt: libc::c_int| -> std::result::Result<(u64, u64), Errno> {
        let tv = if opt == libc::SO_SNDTIMEO {
            nix::sys::socket::getsockopt(fd, sockopt::SendTimeout)?
        } else {
            nix::sys::socket::getsockopt(fd, sockopt::ReceiveTimeout)?
        };
        Ok((
            u64::try_from(tv.tv_sec()).unwrap_or(0),
            u64::try_from(tv.tv_usec()).unwrap_or(0),
        ))
    };
    let (ss, su) = tmo(libc::SO_SNDTIMEO)?;
    let (rs, ru) = tmo(libc::SO_RCVTIMEO)?;
    Ok(SkOptsEntry {
        so_sndbuf: u32::try_from(nix::sys::socket::getsockopt(fd, sockopt::SndBuf)?).unwrap_or(0),
        so_rcvbuf: u32::try_from(nix::sys::socket::getsockopt(fd, sockopt::RcvBuf)?).unwrap_or(0),
        so_snd_tmo_sec: ss,
        so_snd_tmo_usec: su,
        so_rcv_tmo_sec: rs,
        so_rcv_tmo_usec: ru,
        so_passcred: Some(nix::sys::socket::getsockopt(fd, sockopt::PassCred)?),
        so_buf_lock: crate::net::sk_opts::buf_lock(fd.as_fd()),
        ..SkOptsEntry::default()
    })
}

/// A unix socket being dumped: a copy of the task's fd, its inode, and
/// what errors call it.
struct Dumped<'a> {
    cx: &'a FdCtx<'a>,
    dup: OwnedFd,
    ino: u32,
    what: String,
}

impl Dumped<'_> {
    /// Keep a copy of a listener with connections waiting, to read their
    /// data once the tree is dead (`Table::after_kill`).
    fn keep_listener(&self, table: &mut Table, d: &Diag) -> Result<()> {
        let keep = self.dup.try_clone().map_err(|e| Error::Proc {
            pid: self.cx.pid,
            path: self.what.clone(),
            err: e,
        })?;
        table.unix.listeners.push((self.ino, d.name.clone(), keep));
        Ok(())
    }

    /// Peek the packets queued on the socket, with the fds in flight and
    /// the senders' names, for `sk-queues.img`.
    fn read_queue(&self, table: &mut Table) -> Result<()> {
        let mut buf = std::mem::take(&mut table.unix.peek_buf);
        let packets = read_queue(&self.dup, &mut buf, false, true);
        table.unix.peek_buf = buf;
        let packets = packets.map_err(Error::dump(
            self.cx.pid,
            format!("{}: its queued data", self.what),
        ))?;
        for (data, fds, from) in packets {
            let scm = in_flight(table, fds)?;
            let mut e = packet(0, &data, scm);
            e.addr = from;
            table.unix.queues.push((self.ino, e, data));
        }
        Ok(())
    }

    /// Connected, but to no socket with an inode: a connection not yet
    /// accepted (it has the listener's name), or a dead peer. The first is
    /// noted, to become a socket of its own when the dump ends.
    fn note_pending(&self, table: &mut Table, d: &Diag) -> Result<()> {
        if u32::from(d.state) != TCP_ESTABLISHED
            || d.peer != 0
            || u32::from(d.ty) == 2
            || d.shutdown & 3 == 3
        {
            return Ok(());
        }
        let name = nix::sys::socket::getpeername::<UnixAddr>(self.dup.as_raw_fd())
            .ok()
            .and_then(|a| name_of(&a))
            .unwrap_or_default();
        if name.is_empty() {
            return Ok(());
        }
        let sent = d.rqlen.1;
        if sent > 0 && table.opts().leave_running {
            return Err(Error::Unsupported {
                pid: self.cx.pid,
                what: format!(
                    "{}: its connection waits to be accepted and holds {sent} unread bytes, which can be read only by accepting it; dump without --leave-running, or let the server accept it first",
                    self.what
                ),
            });
        }
        table.unix.pending.push((self.ino, name, sent));
        Ok(())
    }
}

/// Whether the path a socket is bound to is gone (or is another file now).
/// Looked up as the task sees it: from its root (a container's is not the
/// engine's), a relative name from its directory.
fn name_deleted(pid: Pid, d: &Diag) -> bool {
    match d.name.first() {
        Some(&c) if c != 0 => {
            let base = if c == b'/' { "root" } else { "cwd/" };
            let mut path = std::ffi::OsString::from(format!("/proc/{pid}/{base}"));
            path.push(OsStr::from_bytes(&d.name));
            std::fs::symlink_metadata(&path).map_or(true, |m| {
                Some(u32::try_from(m.ino()).unwrap_or(0)) != d.vfs_ino
            })
        }
        _ => false,
    }
}
impl FileKind for UnixSk {
    type Entry = UnixSkEntry;
    const NAME: &'static str = "unix socket";

    fn set_id(e: &mut UnixSkEntry, id: u32) {
        e.id = id;
    }

    fn dump(cx: &FdCtx<'_>, table: &mut Table) -> Result<Kind> {
        let ino = u32::try_from(cx.meta.ino()).unwrap_or(0);
        let what = format!("fd {} (unix socket {ino})", cx.fd.fd);
        let d = table
            .unix
            .diag_of(ino)
            .ok_or_else(|| cx.format_err("unix socket missing from sock_diag"))?;
        let dup = cx.dup().map_err(Error::dump(cx.pid, what.clone()))?;
        let sk = Dumped { cx, dup, ino, what };
        let mut opts =
            sk_opts(&sk.dup).map_err(Error::dump(cx.pid, format!("{}: options", sk.what)))?;
        opts.so_filter = crate::net::sk_opts::dump_fd(cx, sk.dup.as_fd())?;
        let state = u32::from(d.state);
        if state == TCP_LISTEN {
            if !d.icons.is_empty() {
                sk.keep_listener(table, &d)?;
            }
        } else {
            sk.read_queue(table)?;
            sk.note_pending(table, &d)?;
        }
        let deleted = name_deleted(cx.pid, &d);
        table.unix.seen.insert(ino, (cx.pid, cx.fd.fd));
        Ok(Kind::Usk(UnixSkEntry {
            id: 0,
            ino,
            r#type: u32::from(d.ty),
            state,
            flags: cx.flags(),
            uflags: 0,
            backlog: if state == TCP_LISTEN { d.rqlen.1 } else { 0 },
            peer: d.peer,
            fown: FownEntry::default(),
            opts,
            name: d.name,
            shutdown: Some(i32::from(d.shutdown)),
            file_perms: None,
            name_dir: None,
            deleted: Some(deleted),
            ns_id: None,
            mnt_id: None,
        }))
    }

    fn open(e: &UnixSkEntry, cx: &mut OpenCtx<'_>) -> Result<OwnedFd> {
        if cx.unix_made.is_none() {
            let made = make_all(cx)?;
            cx.unix_made = Some(made);
        }
        let fd = cx
            .unix_made
            .as_ref()
            .and_then(|m| m.get(&e.id))
            .ok_or_else(|| img::FILES.bad(0, format!("unix socket {} was not made", e.ino)))?;
        fd.try_clone().map_err(|err| Error::Proc {
            pid: cx.pid,
            path: format!("fd {} (unix socket)", cx.fd),
            err,
        })
    }
}

fn packet(id_for: u32, data: &[u8], scm: Vec<u32>) -> SkPacketEntry {
    SkPacketEntry {
        id_for,
        length: u32::try_from(data.len()).unwrap_or(u32::MAX),
        addr: None,
        scm: if scm.is_empty() {
            Vec::new()
        } else {
            vec![ScmEntry {
                r#type: SCM_RIGHTS,
                rights: scm,
            }]
        },
    }
}

/// Describe fds received from a queue as files of the engine itself; they
/// stay open while the dump runs.
fn in_flight(table: &mut Table, fds: Vec<OwnedFd>) -> Result<Vec<u32>> {
    let me = nix::unistd::getpid();
    let mut ids = Vec::new();
    for fd in fds {
        let pfd = proc::fd(me, fd.as_raw_fd())?;
        ids.push(table.dump_fd(me, &pfd)?.id);
        table.unix.inflight.push(fd);
    }
    Ok(ids)
}

/// The fields of a socket no task has an fd of (a connection waiting to be
/// accepted, a peer outside the tree).
fn without_fd() -> UnixSkEntry {
    UnixSkEntry {
        flags: libc::O_RDWR.cast_unsigned(),
        deleted: Some(false),
        ..UnixSkEntry::default()
    }
}

/// Sockets no task has an fd of, found when the dump ends: connections
/// waiting to be accepted, each with its client, and peers outside the
/// tree. They go into `files.img` after every socket a task has.
#[derive(Debug)]
#[must_use]
pub(crate) struct Unheld {
    /// The entries, and for a waiting connection the inode of its client.
    sockets: Vec<(Option<u32>, UnixSkEntry)>,
}

impl Unheld {
    /// Add the sockets to `table` in order, each waiting connection made
    /// its client's peer.
    pub(crate) fn add_to(self, table: &mut Table) {
        for (client, e) in self.sockets {
            let ino = e.ino;
            table.add_entry(|id| Kind::Usk(UnixSkEntry { id, ..e }), FdTypes::Unixsk);
            if let Some(client) = client {
                table.set_unix_peer(client, ino);
            }
        }
    }
}

impl State {
    /// Dump: the sockets no task has (pending connections, as sockets of
    /// their own, and with `ext_unix_sk` the outside peers), once every
    /// connected socket's peer is checked to be in the images or allowed
    /// outside.
    pub(crate) fn finish(&mut self, ext_unix_sk: bool) -> Result<Unheld> {
        let mut sockets = self.pending_connections()?;
        sockets.extend(
            self.external_peers(ext_unix_sk)?
                .into_iter()
                .map(|e| (None, e)),
        );
        Ok(Unheld { sockets })
    }

    /// The connections waiting to be accepted, each an entry of its own
    /// with a made-up inode (`u32::MAX - n`), with its client. The data
    /// sent into one is read at `after_kill`: one per listener only.
    fn pending_connections(&mut self) -> Result<Vec<(Option<u32>, UnixSkEntry)>> {
        let pending = std::mem::take(&mut self.pending);
        let mut out = Vec::new();
        for (k, (client, name, sent)) in pending.iter().enumerate() {
            let (pid, fd) = self
                .seen
                .get(client)
                .copied()
                .unwrap_or((Pid::from_raw(0), -1));
            let Some((lino, _, _)) = self.listeners.iter().find(|l| &l.1 == name) else {
                return Err(Error::Unsupported {
                    pid,
                    what: format!(
                        "fd {fd} (unix socket {client}) waits to be accepted by a listener outside the dumped tree"
                    ),
                });
            };
            let lino = *lino;
            let embryo = u32::MAX - u32::try_from(k).unwrap_or(0);
            if *sent > 0 && self.data_embryo.insert(lino, embryo).is_some() {
                return Err(Error::Unsupported {
                    pid,
                    what: format!(
                        "fd {fd} (unix socket {client}): several connections waiting on listener {lino} hold unread data; stasis restores the data of one only"
                    ),
                });
            }
            let ty = self.diag_of(*client).map_or(1, |d| u32::from(d.ty));
            out.push((
                Some(*client),
                UnixSkEntry {
                    ino: embryo,
                    r#type: ty,
                    state: TCP_ESTABLISHED,
                    peer: *client,
                    name: name.clone(),
                    shutdown: Some(0),
                    ..without_fd()
                },
            ));
            self.embryos.insert(embryo);
        }
        Ok(out)
    }

    /// The peers outside the tree of sockets a task has, once each: named
    /// datagram sockets only, with `ext_unix_sk`, and never made by the
    /// restore (it connects to their names).
    fn external_peers(&self, ext_unix_sk: bool) -> Result<Vec<UnixSkEntry>> {
        let mut external: Vec<(u32, Diag)> = Vec::new();
        for (&ino, &(pid, fd)) in &self.seen {
            let diag = self.diag.as_ref().and_then(|d| d.get(&ino));
            let peer = diag.map_or(0, |d| d.peer);
            if peer == 0 || self.seen.contains_key(&peer) {
                continue;
            }
            let refuse = |why: &str| Error::Unsupported {
                pid,
                what: format!(
                    "fd {fd} (unix socket {ino}) is connected to socket {peer}, which is outside the dumped tree ({why})"
                ),
            };
            if !ext_unix_sk {
                return Err(refuse(
                    "dump with --ext-unix-sk to connect it to the same name again on restore",
                ));
            }
            if diag.map(|d| d.ty) != Some(u8::try_from(libc::SOCK_DGRAM).unwrap_or(2)) {
                return Err(refuse(
                    "only datagram sockets can be connected again: the other end of a stream would see a new connection",
                ));
            }
            let Some(p) = self
                .diag
                .as_ref()
                .and_then(|d| d.get(&peer))
                .filter(|p| !p.name.is_empty())
                .cloned()
            else {
                return Err(refuse("it has no name to connect to again"));
            };
            external.push((peer, p));
        }
        external.sort_by_key(|e| e.0);
        external.dedup_by_key(|e| e.0);
        Ok(external
            .into_iter()
            .map(|(peer, d)| UnixSkEntry {
                ino: peer,
                r#type: u32::from(d.ty),
                state: TCP_CLOSE,
                uflags: USK_EXTERN,
                name: d.name,
                ..without_fd()
            })
            .collect())
    }

    /// Write `sk-queues.img`: the packets queued on unix and inet sockets,
    /// each given the id of its socket's entry in `entries`.
    pub fn write_socket_queues(
        &self,
        entries: &[FileEntry],
        dir: &crate::images::Dir,
    ) -> Result<()> {
        if self.queues.is_empty() {
            return Ok(());
        }
        let ids: HashMap<u32, u32> = entries
            .iter()
            .filter_map(|e| match &e.kind {
                Some(Kind::Usk(u)) => Some((u.ino, u.id)),
                Some(Kind::Isk(u)) => Some((u.ino, u.id)),
                _ => None,
            })
            .collect();
        let mut w = dir.create(img::SK_QUEUES, 0)?;
        for (ino, e, data) in &self.queues {
            let mut e = e.clone();
            e.id_for = ids.get(ino).copied().unwrap_or(0);
            w.write(&e)?;
            w.write_payload(data)?;
        }
        w.finish()?;
        Ok(())
    }
}

impl Table {
    /// After the tree was killed: read the data queued on a connection
    /// nobody accepted, by accepting from a kept copy of its listener.
    pub fn after_kill(&mut self) -> Result<()> {
        let me = nix::unistd::getpid();
        let mut buf = std::mem::take(&mut self.unix.peek_buf);
        for (lino, _, l) in std::mem::take(&mut self.unix.listeners) {
            let Some(&embryo) = self.unix.data_embryo.get(&lino) else {
                continue;
            };
            while let Ok(conn) =
                kernel::socket::accept(l.as_fd(), SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK)
            {
                let packets = read_queue(&conn, &mut buf, true, true).map_err(Error::dump(
                    me,
                    format!("data of a connection waiting on unix socket {lino}"),
                ))?;
                for (data, fds, _) in packets {
                    let scm = in_flight(self, fds)?;
                    self.unix.queues.push((embryo, packet(0, &data, scm), data));
                }
            }
        }
        self.unix.peek_buf = buf;
        Ok(())
    }
}

/// A unix socket entry by inode.
fn by_ino<'a>(all: &[&'a UnixSkEntry], ino: u32) -> Option<&'a UnixSkEntry> {
    all.iter().copied().find(|e| e.ino == ino)
}

/// Make every unix socket of the images (see the module comment).
fn make_all(cx: &mut OpenCtx<'_>) -> Result<HashMap<u32, OwnedFd>> {
    let table = cx.table;
    let all: Vec<&UnixSkEntry> = table
        .entries()
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Usk(u)) => Some(u),
            _ => None,
        })
        .collect();
    let embryos = embryos(cx, &all);
    let mut m = Making {
        pid: cx.pid,
        table,
        all,
        embryos,
        made: HashMap::new(),
        gone_peers: HashMap::new(),
    };
    let connects = m.make_sockets()?;
    m.connect_names(&connects)?;
    for u in &m.all {
        if let Some(s) = m.made.get(&u.id) {
            set_opts(s, &u.opts).map_err(m.fail(u, "options"))?;
        }
    }
    m.send_queued(cx)?;
    // Closing a gone peer's end shuts both halves down.
    let gone_peers = std::mem::take(&mut m.gone_peers);
    let gone: HashSet<u32> = gone_peers.keys().copied().collect();
    drop(gone_peers);
    m.shut_down(&gone)?;
    // Pending connections are kept alive by their client's end only.
    Ok(m.made)
}

/// The pending connections among `all`, by inode: no task has them, and
/// their name is a listener's.
fn embryos(cx: &OpenCtx<'_>, all: &[&UnixSkEntry]) -> HashSet<u32> {
    let listener_named = |name: &[u8]| {
        all.iter()
            .any(|l| l.state == TCP_LISTEN && !name.is_empty() && l.name == name)
    };
    all.iter()
        .filter(|u| u.state == TCP_ESTABLISHED && !cx.is_used(u.id) && listener_named(&u.name))
        .map(|u| u.ino)
        .collect()
}

/// The image says something impossible of socket `u`.
fn bad(u: &UnixSkEntry, what: &str) -> Error {
    img::FILES.bad(0, format!("unix socket {}: {what}", u.ino))
}

/// The unix sockets of a restore, as they are made.
struct Making<'a> {
    pid: Pid,
    table: &'a Table,
    all: Vec<&'a UnixSkEntry>,
    /// The pending connections, by inode: made by connecting their
    /// client's end to the listener, never on their own.
    embryos: HashSet<u32>,
    /// The sockets made so far, by file id.
    made: HashMap<u32, OwnedFd>,
    /// The other end of sockets whose peer is gone, by the id of the
    /// socket: the data queued is sent from it, then it is closed.
    gone_peers: HashMap<u32, OwnedFd>,
}

impl<'a> Making<'a> {
    /// A failed step of making socket `u`.
    fn fail(&self, u: &UnixSkEntry, step: &str) -> impl FnOnce(Errno) -> Error + use<> {
        Error::restore(self.pid, format!("unix socket {} ({step})", u.ino))
    }

    /// The directory path names are under (`--root`), if any.
    fn root(&self) -> Option<&'a std::path::Path> {
        self.table.root.as_deref()
    }

    /// Make the sockets of the images but pending connections and outside
    /// peers; the ones to connect to a name, with that name.
    fn make_sockets(&mut self) -> Result<Vec<(&'a UnixSkEntry, Vec<u8>)>> {
        let mut connects = Vec::new();
        for u in self.all.clone() {
            if self.made.contains_key(&u.id)
                || self.embryos.contains(&u.ino)
                || u.uflags & USK_EXTERN != 0
            {
                continue;
            }
            if let Some(name) = self.make(u)? {
                connects.push((u, name));
            }
        }
        Ok(connects)
    }

    /// Make the socket of `u` (and of its peer, for a pair); the name it
    /// is to connect to, if any.
    fn make(&mut self, u: &UnixSkEntry) -> Result<Option<Vec<u8>>> {
        let ty = sock_type(u.r#type).ok_or_else(|| bad(u, "unknown socket type"))?;
        let peer = by_ino(&self.all, u.peer).filter(|p| u.peer != 0 && p.peer == u.ino);
        // Both ends in the images, connected to each other: a socketpair
        // (named datagram sockets connect to each other's names instead).
        let paired = peer.filter(|p| {
            !self.embryos.contains(&p.ino)
                && (ty != SockType::Datagram || u.name.is_empty() && p.name.is_empty())
        });
        let pair = || {
            nix::sys::socket::socketpair(AddressFamily::Unix, ty, None, SockFlag::SOCK_CLOEXEC)
                .map_err(self.fail(u, "socketpair"))
        };
        match paired {
            Some(p) => {
                let (a, b) = pair()?;
                self.made.insert(u.id, a);
                self.made.insert(p.id, b);
                Ok(None)
            }
            // Connected to a peer that is gone: the other end of a pair,
            // closed once the data it sent is queued.
            None if u.state == TCP_ESTABLISHED && u.peer == 0 && ty != SockType::Datagram => {
                let (a, b) = pair()?;
                self.made.insert(u.id, a);
                self.gone_peers.insert(u.id, b);
                Ok(None)
            }
            _ => self.make_alone(u, ty),
        }
    }

    /// A socket of its own: bound to its name, listening, and if it has a
    /// peer, its peer's name to connect to once every name is bound.
    fn make_alone(&mut self, u: &UnixSkEntry, ty: SockType) -> Result<Option<Vec<u8>>> {
        let s = nix::sys::socket::socket(AddressFamily::Unix, ty, SockFlag::SOCK_CLOEXEC, None)
            .map_err(self.fail(u, "socket"))?;
        if !u.name.is_empty() {
            bind(&s, u, self.root()).map_err(self.fail(u, "bind"))?;
        }
        if u.state == TCP_LISTEN {
            let backlog = Backlog::new(i32::try_from(u.backlog.min(4096)).unwrap_or(128))
                .unwrap_or(Backlog::MAXCONN);
            nix::sys::socket::listen(&s, backlog).map_err(self.fail(u, "listen"))?;
        }
        let mut name = None;
        if u.peer != 0 {
            let target = by_ino(&self.all, u.peer)
                .ok_or_else(|| bad(u, "its peer is missing from the images"))?;
            name = Some(target.name.clone());
        }
        self.made.insert(u.id, s);
        Ok(name)
    }

    /// Connect sockets to their peers' names, once every name is bound.
    fn connect_names(&self, connects: &[(&UnixSkEntry, Vec<u8>)]) -> Result<()> {
        for (u, name) in connects {
            if name.is_empty() {
                return Err(bad(u, "connected to a socket without a name"));
            }
            let s = self.made.get(&u.id).ok_or_else(|| bad(u, "not made"))?;
            let addr = addr_of(name, self.root()).map_err(self.fail(u, "peer address"))?;
            nix::sys::socket::connect(s.as_raw_fd(), &addr).map_err(self.fail(u, "connect"))?;
        }
        Ok(())
    }

    /// Queue the data of the images again, fds in flight opened first.
    fn send_queued(&self, cx: &mut OpenCtx<'_>) -> Result<()> {
        for (id_for, e, data) in &self.table.unix.queues {
            // Datagrams of inet sockets are theirs to send.
            if matches!(
                self.table.get(*id_for).and_then(|f| f.kind.as_ref()),
                Some(Kind::Isk(_))
            ) {
                continue;
            }
            let Some(u) = self.all.iter().find(|u| u.id == *id_for) else {
                return Err(img::SK_QUEUES.bad(
                    0,
                    format!("data queued for file {id_for}, which is no unix socket"),
                ));
            };
            let mut fds = Vec::new();
            for scm in &e.scm {
                for &r in &scm.rights {
                    fds.push(cx.open_id(r)?);
                }
            }
            let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
            self.send_packet(u, e, data, &raw)?;
        }
        Ok(())
    }

    /// Send one packet queued on `u`, with the fds `raw`: a datagram goes
    /// from the bound socket that sent it, if there is one, to the
    /// receiver's name; other data from the receiver's peer.
    fn send_packet(
        &self,
        u: &UnixSkEntry,
        e: &SkPacketEntry,
        data: &[u8],
        raw: &[RawFd],
    ) -> Result<()> {
        let named_sender = e
            .addr
            .as_deref()
            .filter(|_| sock_type(u.r#type) == Some(SockType::Datagram) && !u.name.is_empty())
            .and_then(|a| {
                self.all
                    .iter()
                    .find(|s| s.name == a && s.r#type == u.r#type)
            })
            .and_then(|s| self.made.get(&s.id));
        if let Some(s) = named_sender {
            let addr = addr_of(&u.name, self.root()).map_err(self.fail(u, "queued data"))?;
            let cmsg: Vec<ControlMessage<'_>> = if raw.is_empty() {
                Vec::new()
            } else {
                vec![ControlMessage::ScmRights(raw)]
            };
            nix::sys::socket::sendmsg(
                s.as_raw_fd(),
                &[IoSlice::new(data)],
                &cmsg,
                MsgFlags::MSG_DONTWAIT,
                Some(&addr),
            )
            .map_err(self.fail(u, "queued data"))?;
            return Ok(());
        }
        let sender = self
            .all
            .iter()
            .find(|p| p.peer == u.ino && (u.peer == p.ino || self.embryos.contains(&u.ino)))
            .and_then(|p| self.made.get(&p.id))
            .or_else(|| self.gone_peers.get(&u.id));
        send(sender, u, data, raw, self.root()).map_err(self.fail(u, "queued data"))
    }

    /// Shut down the halves shut down in the images, last (data had to get
    /// through first), and give every socket its status flags. A socket
    /// whose peer is `gone` is shut down by its closing.
    fn shut_down(&self, gone: &HashSet<u32>) -> Result<()> {
        for u in &self.all {
            let Some(s) = self.made.get(&u.id) else {
                continue;
            };
            if !gone.contains(&u.id) {
                let sd = u.shutdown.unwrap_or(0).cast_unsigned();
                let peer_sent = by_ino(&self.all, u.peer)
                    .is_some_and(|p| p.shutdown.unwrap_or(0).cast_unsigned() & SEND_SHUTDOWN != 0);
                let how = match (
                    sd & SEND_SHUTDOWN != 0,
                    sd & RCV_SHUTDOWN != 0 && !peer_sent,
                ) {
                    (true, true) => Some(Shutdown::Both),
                    (true, false) => Some(Shutdown::Write),
                    (false, true) => Some(Shutdown::Read),
                    (false, false) => None,
                };
                if let Some(how) = how {
                    match nix::sys::socket::shutdown(s.as_raw_fd(), how) {
                        Ok(()) | Err(Errno::ENOTCONN) => {}
                        Err(e) => return Err(self.fail(u, "shutdown")(e)),
                    }
                }
            }
            let fl = OFlag::from_bits_truncate(u.flags.cast_signed() & libc::O_NONBLOCK);
            fcntl(s.as_fd(), FcntlArg::F_SETFL(fl)).map_err(self.fail(u, "flags"))?;
        }
        Ok(())
    }
}

/// Bind `s` to `u`'s name; a socket file left at the path by the dumped
/// task goes first. A name whose file was deleted is unlinked again.
fn bind(
    s: &OwnedFd,
    u: &UnixSkEntry,
    root: Option<&std::path::Path>,
) -> std::result::Result<(), Errno> {
    // A path name under --root is bound from within it, so that the
    // socket's name is the one the tree saw.
    if let (Some(r), Some(b'/')) = (root, u.name.first()) {
        return crate::ns::mnt::within_root(r, || bind(s, u, None))?;
    }
    let addr = addr_of(&u.name, None)?;
    if let Some(path) = addr.path()
        && let Ok(m) = std::fs::symlink_metadata(path)
        && m.file_type().is_socket()
    {
        let _ = std::fs::remove_file(path);
    }
    nix::sys::socket::bind(s.as_raw_fd(), &addr)?;
    if u.deleted == Some(true)
        && let Some(path) = addr.path()
    {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

fn set_opts(s: &OwnedFd, o: &SkOptsEntry) -> std::result::Result<(), Errno> {
    crate::net::sk_opts::restore_common(s.as_fd(), o).map_err(|(_, e)| e)?;
    if o.so_passcred == Some(true) {
        nix::sys::socket::setsockopt(s, sockopt::PassCred, &true)?;
    }
    let tv = |sec: u64, usec: u64| {
        nix::sys::time::TimeVal::new(
            i64::try_from(sec).unwrap_or(0),
            i64::try_from(usec).unwrap_or(0),
        )
    };
    if o.so_snd_tmo_sec != 0 || o.so_snd_tmo_usec != 0 {
        nix::sys::socket::setsockopt(
            s,
            sockopt::SendTimeout,
            &tv(o.so_snd_tmo_sec, o.so_snd_tmo_usec),
        )?;
    }
    if o.so_rcv_tmo_sec != 0 || o.so_rcv_tmo_usec != 0 {
        nix::sys::socket::setsockopt(
            s,
            sockopt::ReceiveTimeout,
            &tv(o.so_rcv_tmo_sec, o.so_rcv_tmo_usec),
        )?;
    }
    Ok(())
}

/// Queue `data` (and `fds`) on `u`: from its peer, or from a fresh socket
/// to its name.
fn send(
    sender: Option<&OwnedFd>,
    u: &UnixSkEntry,
    data: &[u8],
    fds: &[RawFd],
    root: Option<&std::path::Path>,
) -> std::result::Result<(), Errno> {
    let cmsg: Vec<ControlMessage<'_>> = if fds.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(fds)]
    };
    let iov = [IoSlice::new(data)];
    let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
    match sender {
        Some(s) => {
            // The peer may have a smaller send buffer than what is queued.
            let need = data.len() * 2 + (64 << 10);
            let cur = nix::sys::socket::getsockopt(s, sockopt::SndBuf)?;
            if cur < need {
                nix::sys::socket::setsockopt(s, sockopt::SndBufForce, &need)?;
            }
            let n = nix::sys::socket::sendmsg::<()>(s.as_raw_fd(), &iov, &cmsg, flags, None)?;
            if cur < need {
                nix::sys::socket::setsockopt(s, sockopt::SndBufForce, &(cur / 2))?;
            }
            if n != data.len() {
                return Err(Errno::EMSGSIZE);
            }
        }
        None => {
            let ty = sock_type(u.r#type).ok_or(Errno::EINVAL)?;
            if ty != SockType::Datagram || u.name.is_empty() {
                return Err(Errno::ENOTCONN);
            }
            let tmp =
                nix::sys::socket::socket(AddressFamily::Unix, ty, SockFlag::SOCK_CLOEXEC, None)?;
            let addr = addr_of(&u.name, root)?;
            nix::sys::socket::sendmsg(tmp.as_raw_fd(), &iov, &cmsg, flags, Some(&addr))?;
        }
    }
    Ok(())
}
