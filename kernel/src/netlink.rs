//! A minimal netlink client: builds a request with attributes, sends it,
//! and collects the replies (all parts of a dump, or the ACKs). Used by the
//! probes with NETLINK_SOCK_DIAG, NETLINK_ROUTE and NETLINK_NETFILTER, and by
//! the engine's network lock (nf_tables transactions, see [`nft`]) and
//! network namespaces (route netlink, see [`crate::rtnl`]).

use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, send,
    socket,
};

/// Reply type: an error, or the ACK when the code is 0.
pub const NLMSG_ERROR: u16 = 2;
/// Reply type: the end of a dump.
pub const NLMSG_DONE: u16 = 3;
/// A request (every message to the kernel).
pub const NLM_F_REQUEST: u16 = 1;
/// A part of a multi-part answer (a dump).
pub const NLM_F_MULTI: u16 = 2;
/// Ask for an ACK.
pub const NLM_F_ACK: u16 = 4;
/// Dump: from the root.
pub const NLM_F_ROOT: u16 = 0x100;
/// Dump: every match.
pub const NLM_F_MATCH: u16 = 0x200;
/// Dump the whole table.
pub const NLM_F_DUMP: u16 = NLM_F_ROOT | NLM_F_MATCH;
/// Create the object if it is missing.
pub const NLM_F_CREATE: u16 = 0x400;
/// Fail if the object exists.
pub const NLM_F_EXCL: u16 = 0x200;
/// Add after the existing objects (rules at the end of their chain).
pub const NLM_F_APPEND: u16 = 0x800;
/// The attribute holds attributes.
pub const NLA_F_NESTED: u16 = 0x8000;

/// One received data message: its type and payload (after the 16-byte header).
#[derive(Debug, Clone)]
pub struct Msg {
    /// The message type (`nlmsg_type`).
    pub ty: u16,
    /// The bytes after the 16-byte header.
    pub payload: Vec<u8>,
}

impl Msg {
    /// The whole message as a dump part carries it: the header (flags
    /// NLM_F_MULTI, sequence and port 0) and the payload.
    pub fn bytes(&self) -> Vec<u8> {
        let len = u32::try_from(16 + self.payload.len()).unwrap_or(u32::MAX);
        let mut out = Vec::with_capacity(16 + self.payload.len());
        out.extend_from_slice(&len.to_ne_bytes());
        out.extend_from_slice(&self.ty.to_ne_bytes());
        out.extend_from_slice(&NLM_F_MULTI.to_ne_bytes());
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&self.payload);
        out
    }
}

/// A netlink message under construction.
#[derive(Debug, Clone)]
pub struct Builder {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

impl Builder {
    /// Starts a message of type `ty` with `flags` and a fixed header `fixed`.
    pub fn new(ty: u16, flags: u16, fixed: &[u8]) -> Self {
        let mut buf = vec![0u8; 16];
        buf[4..6].copy_from_slice(&ty.to_ne_bytes());
        buf[6..8].copy_from_slice(&flags.to_ne_bytes());
        buf[8..12].copy_from_slice(&1u32.to_ne_bytes());
        buf.extend_from_slice(fixed);
        buf.resize(align4(buf.len()), 0);
        Self {
            buf,
            nests: Vec::new(),
        }
    }

    /// Appends an attribute.
    pub fn attr(mut self, ty: u16, data: &[u8]) -> Self {
        let len = u16::try_from(4 + data.len()).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    /// Appends a NUL-terminated string attribute.
    pub fn str(self, ty: u16, s: &str) -> Self {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.attr(ty, &v)
    }

    /// Appends a big-endian u32 attribute (netfilter's convention).
    pub fn be32(self, ty: u16, v: u32) -> Self {
        self.attr(ty, &v.to_be_bytes())
    }

    /// Opens a nested attribute; close with [`Builder::end`].
    pub fn nest(mut self, ty: u16) -> Self {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        self
    }

    /// Closes the innermost nested attribute.
    pub fn end(mut self) -> Self {
        if let Some(at) = self.nests.pop() {
            let len = u16::try_from(self.buf.len() - at).unwrap_or(u16::MAX);
            self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
        }
        self
    }

    /// The finished message bytes.
    pub fn finish(mut self) -> Vec<u8> {
        let len = u32::try_from(self.buf.len()).unwrap_or(u32::MAX);
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

/// A bound netlink socket.
#[derive(Debug)]
pub struct Socket(OwnedFd);

impl Socket {
    /// A socket of `proto`, bound, with a 2 s receive timeout.
    pub fn open(proto: SockProtocol) -> Result<Self, Errno> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            proto,
        )?;
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &NetlinkAddr::new(0, 0),
        )?;
        // A kernel that never answers must not hang the probe.
        nix::sys::socket::setsockopt(
            &fd,
            nix::sys::socket::sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(2, 0),
        )?;
        Ok(Self(fd))
    }

    /// Sends raw bytes (one message or a batch).
    pub fn send(&self, bytes: &[u8]) -> Result<(), Errno> {
        send(
            std::os::fd::AsRawFd::as_raw_fd(&self.0),
            bytes,
            MsgFlags::empty(),
        )
        .map(drop)
    }

    /// Receives until NLMSG_DONE, an error, or (for non-dumps) the ACK.
    /// A negative NLMSG_ERROR code becomes `Err`; data messages are returned.
    pub fn collect(&self, acks: usize) -> Result<Vec<Msg>, Errno> {
        self.collect_at(acks).map_err(|(_, e)| e)
    }

    /// [`Socket::collect`], an error with the sequence number of the
    /// request it answers.
    pub fn collect_at(&self, acks: usize) -> Result<Vec<Msg>, (u32, Errno)> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut acked = 0;
        loop {
            let n = recv(
                std::os::fd::AsRawFd::as_raw_fd(&self.0),
                &mut buf,
                MsgFlags::empty(),
            )
            .map_err(|e| (0, e))?;
            let mut off = 0;
            while off + 16 <= n {
                let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]])
                    as usize;
                let ty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
                if len < 16 || off + len > n {
                    return Err((0, Errno::EBADMSG));
                }
                let payload = &buf[off + 16..off + len];
                match ty {
                    NLMSG_DONE => {
                        let code = payload
                            .get(..4)
                            .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                        return if code < 0 {
                            Err((0, Errno::from_raw(-code)))
                        } else {
                            Ok(out)
                        };
                    }
                    NLMSG_ERROR => {
                        let code = payload
                            .get(..4)
                            .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                        if code < 0 {
                            // The request's header follows the code.
                            let seq = payload
                                .get(12..16)
                                .map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                            return Err((seq, Errno::from_raw(-code)));
                        }
                        acked += 1;
                        if acked >= acks {
                            return Ok(out);
                        }
                    }
                    _ => out.push(Msg {
                        ty,
                        payload: payload.to_vec(),
                    }),
                }
                off += align4(len);
            }
        }
    }

    /// Asks for a dump of message type `ty` with fixed header `fixed`, and
    /// collects every part.
    pub fn dump(&self, ty: u16, fixed: &[u8]) -> Result<Vec<Msg>, Errno> {
        self.request(Builder::new(ty, NLM_F_REQUEST | NLM_F_DUMP, fixed).finish())
    }

    /// Sends one request and collects its answer.
    pub fn request(&self, msg: Vec<u8>) -> Result<Vec<Msg>, Errno> {
        self.send(&msg)?;
        self.collect(1)
    }

    /// The socket.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// Iterates over the attributes in `data`: (type without flags, payload).
pub fn attrs(data: &[u8]) -> Vec<(u16, &[u8])> {
    raw_attrs(data)
        .into_iter()
        .map(|(t, v)| (t & 0x3fff, v))
        .collect()
}

/// Iterates over the attributes in `data`: (type with its flags, payload),
/// to copy them as they are.
pub fn raw_attrs(mut data: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while data.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([data[0], data[1]]));
        let ty = u16::from_ne_bytes([data[2], data[3]]);
        if len < 4 || len > data.len() {
            break;
        }
        out.push((ty, &data[4..len]));
        data = &data[align4(len).min(data.len())..];
    }
    out
}

/// Finds attribute `ty` in `data`.
pub fn find(data: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(data)
        .into_iter()
        .find(|(t, _)| *t == ty)
        .map(|(_, v)| v)
}

impl Builder {
    /// Appends bytes that are already encoded attributes.
    pub fn attr_raw(mut self, bytes: &[u8]) -> Self {
        self.buf.extend_from_slice(bytes);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }
}

/// nf_tables over NETLINK_NETFILTER: message types, the `nfgenmsg` header
/// and atomic transactions (BEGIN, messages, END).
pub mod nft {
    use nix::errno::Errno;

    use super::{Builder, NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST, Socket};

    const NFNL_SUBSYS_NFTABLES: u16 = 10;
    const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
    const NFNL_MSG_BATCH_END: u16 = 0x11;
    /// Message type NFT_MSG_NEWTABLE.
    pub const NFT_MSG_NEWTABLE: u16 = 0;
    /// Message type NFT_MSG_GETTABLE.
    pub const NFT_MSG_GETTABLE: u16 = 1;
    /// Message type NFT_MSG_DELTABLE.
    pub const NFT_MSG_DELTABLE: u16 = 2;
    /// Message type NFT_MSG_NEWCHAIN.
    pub const NFT_MSG_NEWCHAIN: u16 = 3;
    /// Message type NFT_MSG_NEWRULE.
    pub const NFT_MSG_NEWRULE: u16 = 6;
    /// Message type NFT_MSG_NEWSET.
    pub const NFT_MSG_NEWSET: u16 = 9;
    /// Message type NFT_MSG_GETSET.
    pub const NFT_MSG_GETSET: u16 = 10;
    /// Message type NFT_MSG_GETCHAIN.
    pub const NFT_MSG_GETCHAIN: u16 = 4;
    /// Message type NFT_MSG_GETRULE.
    pub const NFT_MSG_GETRULE: u16 = 7;
    /// Message type NFT_MSG_NEWSETELEM.
    pub const NFT_MSG_NEWSETELEM: u16 = 12;
    /// Message type NFT_MSG_GETSETELEM.
    pub const NFT_MSG_GETSETELEM: u16 = 13;
    /// Message type NFT_MSG_NEWOBJ.
    pub const NFT_MSG_NEWOBJ: u16 = 18;
    /// Message type NFT_MSG_GETOBJ.
    pub const NFT_MSG_GETOBJ: u16 = 19;
    /// Message type NFT_MSG_NEWFLOWTABLE.
    pub const NFT_MSG_NEWFLOWTABLE: u16 = 22;
    /// Message type NFT_MSG_GETFLOWTABLE.
    pub const NFT_MSG_GETFLOWTABLE: u16 = 23;
    /// A chain's table (NFTA_CHAIN_TABLE).
    pub const NFTA_CHAIN_TABLE: u16 = 1;
    /// A chain's name (NFTA_CHAIN_NAME).
    pub const NFTA_CHAIN_NAME: u16 = 3;
    /// A rule's table (NFTA_RULE_TABLE).
    pub const NFTA_RULE_TABLE: u16 = 1;
    /// A rule's chain (NFTA_RULE_CHAIN).
    pub const NFTA_RULE_CHAIN: u16 = 2;
    /// The `inet` family: one table sees IPv4 and IPv6.
    pub const NFPROTO_INET: u8 = 1;

    /// The `nfgenmsg` header.
    pub fn nfgen(family: u8, res_id: u16) -> [u8; 4] {
        let r = res_id.to_be_bytes();
        [family, 0, r[0], r[1]]
    }

    /// The netlink message type of nf_tables message `ty`.
    pub fn msg_type(ty: u16) -> u16 {
        (NFNL_SUBSYS_NFTABLES << 8) | ty
    }

    /// A message of type `ty` in the `inet` family, asking for an ACK.
    pub fn inet(ty: u16, extra_flags: u16) -> Builder {
        Builder::new(
            msg_type(ty),
            NLM_F_REQUEST | NLM_F_ACK | extra_flags,
            &nfgen(NFPROTO_INET, 0),
        )
    }

    /// Sends one transaction (BEGIN, `msgs`, END) and waits for the ACK of
    /// every message: all of them take effect, or none.
    pub fn batch(s: &Socket, msgs: Vec<Vec<u8>>) -> Result<(), Errno> {
        batch_at(s, msgs).map_err(|(_, e)| e)
    }

    /// [`batch`], an error with the index in `msgs` of the message the
    /// kernel refused (each is numbered by its index in the transaction).
    pub fn batch_at(s: &Socket, msgs: Vec<Vec<u8>>) -> Result<(), (Option<usize>, Errno)> {
        let n = msgs.len();
        let edge = |ty| Builder::new(ty, NLM_F_REQUEST, &nfgen(0, NFNL_SUBSYS_NFTABLES)).finish();
        let mut bytes = edge(NFNL_MSG_BATCH_BEGIN);
        // Only the last message asks for an ACK: the kernel answers a
        // failed one anyway, and thousands of ACKs would overflow the
        // socket's receive buffer.
        for (i, mut m) in msgs.into_iter().enumerate() {
            let seq = u32::try_from(i + 2).unwrap_or(u32::MAX);
            if let Some(h) = m.get_mut(8..12) {
                h.copy_from_slice(&seq.to_ne_bytes());
            }
            if let Some(f) = m.get_mut(6..8) {
                let mut flags = u16::from_ne_bytes([f[0], f[1]]) & !NLM_F_ACK;
                if i + 1 == n {
                    flags |= NLM_F_ACK;
                }
                f.copy_from_slice(&flags.to_ne_bytes());
            }
            bytes.extend(m);
        }
        bytes.extend(edge(NFNL_MSG_BATCH_END));
        s.send(&bytes).map_err(|e| (None, e))?;
        s.collect_at(1).map(drop).map_err(|(seq, e)| {
            let at = usize::try_from(seq).ok().and_then(|q| q.checked_sub(2));
            (at.filter(|&i| i < n), e)
        })
    }

    /// Creates (if missing) or deletes `inet` table `name`.
    pub fn table_msg(ty: u16, name: &str) -> Vec<u8> {
        let create = if ty == NFT_MSG_NEWTABLE {
            NLM_F_CREATE
        } else {
            0
        };
        inet(ty, create).str(1, name).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_lays_out_header_attributes_and_nests() {
        let m = Builder::new(20, NLM_F_REQUEST, &[1, 2, 3])
            .str(3, "lo")
            .nest(18)
            .be32(1, 7)
            .end()
            .finish();
        assert_eq!(
            u32::from_ne_bytes([m[0], m[1], m[2], m[3]]) as usize,
            m.len()
        );
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), 20);
        assert_eq!(&m[16..19], &[1, 2, 3]);
        let a = attrs(&m[20..]);
        assert_eq!(a.len(), 2);
        assert_eq!(a[0], (3, &b"lo\0"[..]));
        assert_eq!(a[1].0, 18, "nested flag is masked off");
        assert_eq!(find(a[1].1, 1), Some(&7u32.to_be_bytes()[..]));
    }

    #[test]
    fn attrs_stop_at_truncated_input() {
        assert!(attrs(&[8, 0, 1, 0, 0]).is_empty());
        assert!(attrs(&[2, 0, 1, 0]).is_empty());
    }
}
