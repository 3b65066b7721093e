//! The network lock (nf_tables): from the moment a dump takes an established
//! TCP connection in repair mode until its restore is complete, an
//! `inet stasis-ROOT` table in the engine's network namespace drops the
//! connection's packets both ways. A peer outside the tree then meets
//! silence, and retransmits, where it would otherwise get a reset from a
//! kernel that no longer knows the connection. `inventory.img`'s
//! `network_lock_method` tells the restore there is a lock to lift.
//!
//! A tree with a network namespace of its own (a container, whose peers
//! reach it over a veth or macvlan) is locked inside that namespace: the
//! same table there, made through a socket opened in it. Its restore locks
//! every TCP packet of the new namespace ([`lock_all_tcp`]) from before its
//! devices and addresses exist until the tree runs, when a peer would
//! otherwise get a reset from a namespace whose sockets are not back yet.

use std::net::{IpAddr, SocketAddr};

use nix::errno::Errno;
use nix::sys::socket::SockProtocol;
use nix::unistd::Pid;
use stasis_kernel::netlink::nft::{
    self, NFT_MSG_DELTABLE, NFT_MSG_NEWCHAIN, NFT_MSG_NEWRULE, NFTA_CHAIN_NAME, NFTA_CHAIN_TABLE,
    NFTA_RULE_CHAIN, NFTA_RULE_TABLE,
};
use stasis_kernel::netlink::{Builder, NLM_F_APPEND, NLM_F_CREATE, Socket};

/// Packets with this mark pass the lock: the restore's own, which hand a
/// half-closed connection the FIN it had received.
pub const MARK: u32 = 0x57a5_15c0;

/// `network_lock_method` of the inventory (CRIU's numbering).
pub const METHOD_NFTABLES: u32 = 2;

// nf_tables attributes and values (linux/netfilter/nf_tables.h).
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NFT_META_MARK: u32 = 3;
const NFT_META_IIF: u32 = 4;
const NFT_META_OIF: u32 = 5;
const NFT_META_NFPROTO: u32 = 15;
const NFT_META_L4PROTO: u32 = 16;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;
const NF_INET_LOCAL_IN: u32 = 1;
const NF_INET_LOCAL_OUT: u32 = 3;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
const IPPROTO_TCP: u8 = 6;

/// The table a dump of the tree under `root` locks with (the restore gives
/// the root the same PID, so it finds the table by the same name).
pub fn table_name(root: Pid) -> String {
    format!("stasis-{root}")
}

/// One expression of a rule: `name` with its attributes.
fn expr(b: Builder, name: &str, attrs: impl FnOnce(Builder) -> Builder) -> Builder {
    attrs(
        b.nest(NFTA_LIST_ELEM)
            .str(NFTA_EXPR_NAME, name)
            .nest(NFTA_EXPR_DATA),
    )
    .end()
    .end()
}

/// Load meta `key` into register 1 and compare it with `want`.
fn meta_is(b: Builder, key: u32, want: &[u8]) -> Builder {
    let b = expr(b, "meta", |d| d.be32(1, NFT_REG_1).be32(2, key));
    cmp_eq(b, want)
}

/// Load `want.len()` bytes at `offset` of header `base` and compare them.
fn payload_is(b: Builder, base: u32, offset: u32, want: &[u8]) -> Builder {
    let len = u32::try_from(want.len()).unwrap_or(0);
    let b = expr(b, "payload", |d| {
        d.be32(1, NFT_REG_1)
            .be32(2, base)
            .be32(3, offset)
            .be32(4, len)
    });
    cmp_eq(b, want)
}

/// End the rule with verdict `v` (NF_DROP, NF_ACCEPT).
fn verdict(b: Builder, v: u32) -> Builder {
    expr(b, "immediate", |d| {
        d.be32(1, NFT_REG_VERDICT)
            .nest(2)
            .nest(2)
            .be32(1, v)
            .end()
            .end()
    })
}

fn cmp_eq(b: Builder, want: &[u8]) -> Builder {
    expr(b, "cmp", |d| {
        d.be32(1, NFT_REG_1)
            .be32(2, NFT_CMP_EQ)
            .nest(3)
            .attr(1, want)
            .end()
    })
}

/// An address as the packets carry it: IPv4-mapped IPv6 goes as IPv4.
fn wire(a: IpAddr) -> (u8, Vec<u8>) {
    match a {
        IpAddr::V4(v4) => (NFPROTO_IPV4, v4.octets().to_vec()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => (NFPROTO_IPV4, v4.octets().to_vec()),
            None => (NFPROTO_IPV6, v6.octets().to_vec()),
        },
    }
}

/// A rule dropping TCP packets from `src` to `dst` in `chain`.
fn drop_rule(table: &str, chain: &str, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (family, saddr) = wire(src.ip());
    let (_, daddr) = wire(dst.ip());
    // Source and destination addresses sit at 12/16 in IPv4, 8/24 in IPv6.
    let (s_off, d_off) = if family == NFPROTO_IPV4 {
        (12, 16)
    } else {
        (8, 24)
    };
    let mut b = nft::inet(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND)
        .str(NFTA_RULE_TABLE, table)
        .str(NFTA_RULE_CHAIN, chain)
        .nest(NFTA_RULE_EXPRESSIONS);
    b = meta_is(b, NFT_META_NFPROTO, &[family]);
    b = meta_is(b, NFT_META_L4PROTO, &[IPPROTO_TCP]);
    b = payload_is(b, NFT_PAYLOAD_NETWORK_HEADER, s_off, &saddr);
    b = payload_is(b, NFT_PAYLOAD_NETWORK_HEADER, d_off, &daddr);
    b = payload_is(
        b,
        NFT_PAYLOAD_TRANSPORT_HEADER,
        0,
        &src.port().to_be_bytes(),
    );
    b = payload_is(
        b,
        NFT_PAYLOAD_TRANSPORT_HEADER,
        2,
        &dst.port().to_be_bytes(),
    );
    b = verdict(b, NF_DROP);
    b.end().finish()
}

/// A rule letting packets with [`MARK`] through (first in its chain).
fn mark_accept(table: &str, chain: &str) -> Vec<u8> {
    let mut b = nft::inet(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND)
        .str(NFTA_RULE_TABLE, table)
        .str(NFTA_RULE_CHAIN, chain)
        .nest(NFTA_RULE_EXPRESSIONS);
    b = meta_is(b, NFT_META_MARK, &MARK.to_ne_bytes());
    b = verdict(b, NF_ACCEPT);
    b.end().finish()
}

/// A base chain on `hook` that lets through what no rule drops.
fn chain(table: &str, name: &str, hook: u32) -> Vec<u8> {
    nft::inet(NFT_MSG_NEWCHAIN, NLM_F_CREATE)
        .str(NFTA_CHAIN_TABLE, table)
        .str(NFTA_CHAIN_NAME, name)
        .nest(NFTA_CHAIN_HOOK)
        .be32(NFTA_HOOK_HOOKNUM, hook)
        .be32(NFTA_HOOK_PRIORITY, 0)
        .end()
        .be32(NFTA_CHAIN_POLICY, NF_ACCEPT)
        .str(NFTA_CHAIN_TYPE, "filter")
        .finish()
}

/// The lock a dump holds: lifted when dropped unless the tree was killed
/// ([`Lock::keep`]), so a dump that fails or leaves the tree running leaves
/// the network as it found it.
#[derive(Debug)]
pub struct Lock {
    table: String,
    sock: Option<Socket>,
    locked: Vec<(SocketAddr, SocketAddr)>,
    keep: bool,
}

impl Lock {
    /// No lock yet; the first connection creates the table.
    pub fn new(root: Pid) -> Self {
        Self {
            table: table_name(root),
            sock: None,
            locked: Vec::new(),
            keep: false,
        }
    }

    /// A lock in the network namespace `sock` was opened in (the tree's
    /// own), rather than the engine's.
    pub fn in_namespace_of(root: Pid, sock: Socket) -> Self {
        Self {
            table: table_name(root),
            sock: Some(sock),
            locked: Vec::new(),
            keep: false,
        }
    }

    /// Drop every packet of the connection between `local` and `peer`.
    pub fn add(&mut self, local: SocketAddr, peer: SocketAddr) -> Result<(), Errno> {
        if self.locked.contains(&(local, peer)) {
            return Ok(());
        }
        let mut msgs = Vec::new();
        if self.locked.is_empty() {
            let s = match self.sock.take() {
                Some(s) => s,
                None => socket()?,
            };
            // A table left by an earlier dump of the same PID goes first:
            // its connections are not this tree's.
            let _ = nft::batch(&s, vec![nft::table_msg(NFT_MSG_DELTABLE, &self.table)]);
            msgs.push(nft::table_msg(nft::NFT_MSG_NEWTABLE, &self.table));
            msgs.push(chain(&self.table, "input", NF_INET_LOCAL_IN));
            msgs.push(chain(&self.table, "output", NF_INET_LOCAL_OUT));
            msgs.push(mark_accept(&self.table, "input"));
            self.sock = Some(s);
        }
        msgs.push(drop_rule(&self.table, "input", peer, local));
        msgs.push(drop_rule(&self.table, "output", local, peer));
        let Some(s) = &self.sock else {
            return Err(Errno::EBADF);
        };
        nft::batch(s, msgs)?;
        self.locked.push((local, peer));
        Ok(())
    }

    /// Whether any connection is locked.
    pub fn held(&self) -> bool {
        !self.locked.is_empty()
    }

    /// The tree is dead: the lock stays until the restore lifts it.
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Some(s) = self.sock.as_ref().filter(|_| self.held())
            && let Err(e) = nft::batch(s, vec![nft::table_msg(NFT_MSG_DELTABLE, &self.table)])
        {
            tracing::warn!(table = %self.table, %e, "could not lift the network lock");
        }
    }
}

/// Lift the lock a dump of the tree under `root` left, in the namespace
/// `sock` was opened in. A missing table is fine: the images may come from
/// another machine.
pub fn unlock(sock: &Socket, root: Pid) -> Result<(), Errno> {
    match nft::batch(
        sock,
        vec![nft::table_msg(NFT_MSG_DELTABLE, &table_name(root))],
    ) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The table locking a restored network namespace of the tree's own.
pub const NETNS_TABLE: &str = "stasis-restore-lock";

/// Drop every TCP packet to or from a device other than loopback, but the
/// restore's own ([`MARK`]), in the network namespace `sock` was opened
/// in, until [`unlock_all_tcp`].
pub fn lock_all_tcp(sock: &Socket) -> Result<(), Errno> {
    // Only packets through devices other than loopback (index 1 in every
    // namespace): a connection between two of the tree's sockets goes over
    // loopback, and the restore's own steps on it (a FIN sent again) must
    // go through at once.
    let rule = |chain: &str, dev_key: u32| {
        let mut b = nft::inet(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND)
            .str(NFTA_RULE_TABLE, NETNS_TABLE)
            .str(NFTA_RULE_CHAIN, chain)
            .nest(NFTA_RULE_EXPRESSIONS);
        b = meta_is(b, NFT_META_L4PROTO, &[IPPROTO_TCP]);
        b = expr(b, "meta", |d| d.be32(1, NFT_REG_1).be32(2, dev_key));
        b = expr(b, "cmp", |d| {
            d.be32(1, NFT_REG_1)
                .be32(2, NFT_CMP_NEQ)
                .nest(3)
                .attr(1, &1u32.to_ne_bytes())
                .end()
        });
        b = verdict(b, NF_DROP);
        b.end().finish()
    };
    nft::batch(
        sock,
        vec![
            nft::table_msg(nft::NFT_MSG_NEWTABLE, NETNS_TABLE),
            chain(NETNS_TABLE, "input", NF_INET_LOCAL_IN),
            chain(NETNS_TABLE, "output", NF_INET_LOCAL_OUT),
            mark_accept(NETNS_TABLE, "input"),
            mark_accept(NETNS_TABLE, "output"),
            rule("input", NFT_META_IIF),
            rule("output", NFT_META_OIF),
        ],
    )
}

/// Lift [`lock_all_tcp`].
pub fn unlock_all_tcp(sock: &Socket) -> Result<(), Errno> {
    match nft::batch(sock, vec![nft::table_msg(NFT_MSG_DELTABLE, NETNS_TABLE)]) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

/// A netfilter socket in the engine's current network namespace.
pub fn socket() -> Result<Socket, Errno> {
    Socket::open(SockProtocol::NetlinkNetFilter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::time::Duration;

    fn attrs_of(msg: &[u8]) -> Vec<(u16, Vec<u8>)> {
        // 16 bytes of netlink header, 4 of nfgenmsg.
        stasis_kernel::netlink::attrs(&msg[20..])
            .into_iter()
            .map(|(t, v)| (t, v.to_vec()))
            .collect()
    }

    #[test]
    fn a_drop_rule_matches_the_four_tuple_of_one_direction() {
        let src: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let dst: SocketAddr = "[::ffff:10.9.8.7]:80".parse().unwrap();
        let m = drop_rule("t", "input", src, dst);
        let a = attrs_of(&m);
        assert_eq!(a[0], (NFTA_RULE_TABLE, b"t\0".to_vec()));
        assert_eq!(a[1], (NFTA_RULE_CHAIN, b"input\0".to_vec()));
        let exprs = stasis_kernel::netlink::attrs(&a[2].1);
        let names: Vec<String> = exprs
            .iter()
            .map(|(_, e)| {
                let n = stasis_kernel::netlink::find(e, NFTA_EXPR_NAME).unwrap();
                String::from_utf8_lossy(&n[..n.len() - 1]).into_owned()
            })
            .collect();
        assert_eq!(
            names,
            [
                "meta",
                "cmp",
                "meta",
                "cmp",
                "payload",
                "cmp",
                "payload",
                "cmp",
                "payload",
                "cmp",
                "payload",
                "cmp",
                "immediate"
            ]
        );
        // The v4-mapped peer is matched as the IPv4 packet it sends.
        let values: Vec<Vec<u8>> = exprs
            .iter()
            .filter_map(|(_, e)| {
                let d = stasis_kernel::netlink::find(e, NFTA_EXPR_DATA)?;
                let v = stasis_kernel::netlink::find(d, 3)?;
                stasis_kernel::netlink::find(v, 1).map(<[u8]>::to_vec)
            })
            .collect();
        assert_eq!(
            values,
            [
                vec![NFPROTO_IPV4],
                vec![IPPROTO_TCP],
                vec![10, 1, 2, 3],
                vec![10, 9, 8, 7],
                5000u16.to_be_bytes().to_vec(),
                80u16.to_be_bytes().to_vec()
            ]
        );
    }

    /// In a network namespace of its own (this thread's, gone with it): a
    /// locked connection carries nothing; lifted, the data comes through.
    #[test]
    fn a_locked_connection_carries_nothing_until_unlocked() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root (a network namespace and nf_tables)"
        );
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            let s = stasis_kernel::rtnl::open().expect("route netlink");
            stasis_kernel::rtnl::set_link(&s, 1, stasis_kernel::rtnl::IFF_UP, 0).expect("lo up");
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).expect("connect");
            let (mut srv, _) = l.accept().expect("accept");
            srv.set_read_timeout(Some(Duration::from_millis(400)))
                .unwrap();
            let mut lock = Lock::new(Pid::from_raw(1));
            lock.add(srv.local_addr().unwrap(), srv.peer_addr().unwrap())
                .expect("lock");
            assert!(lock.held());
            c.write_all(b"ping").unwrap();
            let mut buf = [0u8; 4];
            let err = srv.read(&mut buf).expect_err("data passed the lock");
            assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
            drop(lock);
            // Retransmitted once the table is gone.
            srv.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            srv.read_exact(&mut buf).expect("data after the lock");
            assert_eq!(&buf, b"ping");
            // A kept lock stays until unlock() lifts it.
            let mut lock = Lock::new(Pid::from_raw(1));
            lock.add(srv.local_addr().unwrap(), srv.peer_addr().unwrap())
                .expect("lock");
            lock.keep();
            drop(lock);
            srv.set_read_timeout(Some(Duration::from_millis(400)))
                .unwrap();
            c.write_all(b"pong").unwrap();
            assert!(srv.read(&mut buf).is_err(), "a kept lock let data through");
            let s = socket().expect("netfilter socket");
            unlock(&s, Pid::from_raw(1)).expect("unlock");
            unlock(&s, Pid::from_raw(1)).expect("unlocking twice is fine");
            srv.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            srv.read_exact(&mut buf).expect("data after unlock");
            assert_eq!(&buf, b"pong");
        })
        .join()
        .expect("the test thread");
    }
}
