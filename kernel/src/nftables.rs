//! An nf_tables ruleset (NETLINK_NETFILTER) of the caller's network
//! namespace, as the kernel lists it: tables, chains, sets and their
//! elements, stateful objects, flowtables and rules, every family. The
//! listing is the kernel's own messages; made again, they go back in one
//! transaction, in the order their references need (tables, chains, sets,
//! elements, objects, flowtables, rules), less what only the kernel sets
//! (handles, use counts).

use nix::errno::Errno;
use nix::sys::socket::SockProtocol;

use crate::netlink::nft::{
    self, NFT_MSG_GETCHAIN, NFT_MSG_GETFLOWTABLE, NFT_MSG_GETOBJ, NFT_MSG_GETRULE, NFT_MSG_GETSET,
    NFT_MSG_GETSETELEM, NFT_MSG_GETTABLE, NFT_MSG_NEWCHAIN, NFT_MSG_NEWFLOWTABLE, NFT_MSG_NEWOBJ,
    NFT_MSG_NEWRULE, NFT_MSG_NEWSET, NFT_MSG_NEWSETELEM, NFT_MSG_NEWTABLE, NFTA_CHAIN_NAME,
    NFTA_CHAIN_TABLE, NFTA_RULE_CHAIN, NFTA_RULE_TABLE,
};
use crate::netlink::{
    self as nl, Builder, Msg, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REQUEST,
    Socket,
};

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
const NFTA_TABLE_USE: u16 = 3;
const NFTA_TABLE_HANDLE: u16 = 4;
const NFTA_TABLE_OWNER: u16 = 6;
const NFT_TABLE_F_OWNER: u32 = 0x2;
const NFTA_CHAIN_HANDLE: u16 = 2;
const NFTA_CHAIN_USE: u16 = 8;
const NFTA_CHAIN_ID: u16 = 11;
const NFTA_RULE_HANDLE: u16 = 3;
const NFTA_RULE_POSITION: u16 = 6;
const NFTA_RULE_ID: u16 = 9;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_HANDLE: u16 = 16;
const NFTA_SET_TYPE: u16 = 19;
const NFTA_SET_COUNT: u16 = 20;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_OBJ_TABLE: u16 = 1;
const NFTA_OBJ_NAME: u16 = 3;
const NFTA_OBJ_USE: u16 = 5;
const NFTA_OBJ_HANDLE: u16 = 6;
const NFTA_FLOWTABLE_TABLE: u16 = 1;
const NFTA_FLOWTABLE_NAME: u16 = 2;
const NFTA_FLOWTABLE_USE: u16 = 4;
const NFTA_FLOWTABLE_HANDLE: u16 = 5;

/// The first u32 of a saved ruleset (stasis' own format: this magic, then
/// the kernel's messages as a listing gave them, as iproute2 saves).
pub const MAGIC: u32 = 0x5354_4e46;

/// A netfilter socket in the caller's network namespace.
pub fn open() -> Result<Socket, Errno> {
    Socket::open(SockProtocol::NetlinkNetFilter)
}

fn list(s: &Socket, ty: u16, family: u8, attrs: &[(u16, &str)]) -> Result<Vec<Msg>, Errno> {
    let mut b = Builder::new(
        nft::msg_type(ty),
        NLM_F_REQUEST | NLM_F_DUMP,
        &nft::nfgen(family, 0),
    );
    for (t, v) in attrs {
        b = b.str(*t, v);
    }
    s.request(b.finish())
}

/// The nf_tables message type of message `m` (with its header).
fn sub(m: &[u8]) -> u16 {
    m.get(4..6)
        .map_or(u16::MAX, |t| u16::from_ne_bytes([t[0], t[1]]) & 0xff)
}

fn str_of(payload: &[u8], ty: u16) -> Option<String> {
    let v = nl::find(payload.get(4..)?, ty)?;
    let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
    Some(String::from_utf8_lossy(&v[..end]).into_owned())
}

/// The whole ruleset, in the order [`restore`] makes it again. An empty
/// list: the namespace has none.
pub fn save(s: &Socket) -> Result<Vec<Msg>, Errno> {
    let mut out = list(s, NFT_MSG_GETTABLE, 0, &[])?;
    out.extend(list(s, NFT_MSG_GETCHAIN, 0, &[])?);
    let sets = list(s, NFT_MSG_GETSET, 0, &[])?;
    let mut elems = Vec::new();
    for set in &sets {
        let (Some(table), Some(name)) = (
            str_of(&set.payload, NFTA_SET_TABLE),
            str_of(&set.payload, NFTA_SET_NAME),
        ) else {
            continue;
        };
        let family = set.payload.first().copied().unwrap_or(0);
        elems.extend(list(
            s,
            NFT_MSG_GETSETELEM,
            family,
            &[
                (NFTA_SET_ELEM_LIST_TABLE, &table),
                (NFTA_SET_ELEM_LIST_SET, &name),
            ],
        )?);
    }
    out.extend(sets);
    out.extend(elems);
    out.extend(list(s, NFT_MSG_GETOBJ, 0, &[])?);
    out.extend(list(s, NFT_MSG_GETFLOWTABLE, 0, &[])?);
    out.extend(list(s, NFT_MSG_GETRULE, 0, &[])?);
    Ok(out)
}

/// The attributes of a message of nf_tables type `ty` that only the kernel
/// sets (a handle would name an existing object).
fn kernel_only(ty: u16) -> &'static [u16] {
    match ty {
        NFT_MSG_NEWTABLE => &[NFTA_TABLE_USE, NFTA_TABLE_HANDLE, NFTA_TABLE_OWNER],
        NFT_MSG_NEWCHAIN => &[NFTA_CHAIN_HANDLE, NFTA_CHAIN_USE, NFTA_CHAIN_ID],
        NFT_MSG_NEWRULE => &[NFTA_RULE_HANDLE, NFTA_RULE_POSITION, NFTA_RULE_ID],
        // Newer kernels list a set's backend and its element count.
        NFT_MSG_NEWSET => &[NFTA_SET_HANDLE, NFTA_SET_ID, NFTA_SET_TYPE, NFTA_SET_COUNT],
        NFT_MSG_NEWOBJ => &[NFTA_OBJ_USE, NFTA_OBJ_HANDLE],
        NFT_MSG_NEWFLOWTABLE => &[NFTA_FLOWTABLE_USE, NFTA_FLOWTABLE_HANDLE],
        _ => &[],
    }
}

/// A listed message as a request making what it describes. `id` numbers
/// the sets of the transaction (the kernel wants one for each new set).
fn request(m: &[u8], id: u32) -> Option<Vec<u8>> {
    let ty = u16::from_ne_bytes([*m.get(4)?, *m.get(5)?]);
    let sub = sub(m);
    let nfgen = m.get(16..20)?;
    let mut flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE;
    if sub == NFT_MSG_NEWRULE {
        flags |= NLM_F_APPEND;
    }
    let mut b = Builder::new(ty, flags, nfgen);
    let skip = kernel_only(sub);
    for (raw, v) in nl::raw_attrs(m.get(20..)?) {
        let t = raw & 0x3fff;
        if skip.contains(&t) {
            continue;
        }
        if sub == NFT_MSG_NEWTABLE && t == NFTA_TABLE_FLAGS {
            // A table owned by a process' socket would go with ours.
            let f = v
                .get(..4)
                .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
            b = b.be32(t, f & !NFT_TABLE_F_OWNER);
            continue;
        }
        b = b.attr(raw, v);
    }
    if sub == NFT_MSG_NEWSET {
        b = b.be32(NFTA_SET_ID, id);
    }
    Some(b.finish())
}

/// Whether a listed message is one [`restore`] makes again.
fn wanted(m: &[u8]) -> bool {
    matches!(
        sub(m),
        NFT_MSG_NEWTABLE
            | NFT_MSG_NEWCHAIN
            | NFT_MSG_NEWSET
            | NFT_MSG_NEWSETELEM
            | NFT_MSG_NEWOBJ
            | NFT_MSG_NEWFLOWTABLE
            | NFT_MSG_NEWRULE
    )
}

/// The names of the tables in listed messages `msgs` (with headers).
pub fn tables(msgs: &[&[u8]]) -> Vec<String> {
    msgs.iter()
        .filter(|m| m.len() >= 20 && sub(m) == NFT_MSG_NEWTABLE)
        .filter_map(|m| str_of(&m[16..], NFTA_TABLE_NAME))
        .collect()
}

/// What a message of the ruleset makes: "chain input of table filter".
pub fn describe(m: &[u8]) -> String {
    let Some(p) = m.get(16..) else {
        return "a cut message".into();
    };
    let ty = sub(m);
    let name = |t| str_of(p, t).unwrap_or_default();
    let (kind, own, table) = match ty {
        NFT_MSG_NEWTABLE => ("table", name(NFTA_TABLE_NAME), None),
        NFT_MSG_NEWCHAIN => ("chain", name(NFTA_CHAIN_NAME), Some(name(NFTA_CHAIN_TABLE))),
        NFT_MSG_NEWRULE => (
            "a rule of chain",
            name(NFTA_RULE_CHAIN),
            Some(name(NFTA_RULE_TABLE)),
        ),
        NFT_MSG_NEWSET => ("set", name(NFTA_SET_NAME), Some(name(NFTA_SET_TABLE))),
        NFT_MSG_NEWSETELEM => (
            "elements of set",
            name(NFTA_SET_ELEM_LIST_SET),
            Some(name(NFTA_SET_ELEM_LIST_TABLE)),
        ),
        NFT_MSG_NEWOBJ => ("object", name(NFTA_OBJ_NAME), Some(name(NFTA_OBJ_TABLE))),
        NFT_MSG_NEWFLOWTABLE => (
            "flowtable",
            name(NFTA_FLOWTABLE_NAME),
            Some(name(NFTA_FLOWTABLE_TABLE)),
        ),
        _ => ("message", ty.to_string(), None),
    };
    match table {
        Some(t) => format!("{kind} {own} of table {t}"),
        None => format!("{kind} {own}"),
    }
}

/// Make the ruleset of `msgs` (listed messages, with their headers) in
/// the caller's namespace, all or nothing. An error names the message
/// the kernel refused (see [`describe`]).
pub fn restore(s: &Socket, msgs: &[&[u8]]) -> Result<(), (Option<String>, Errno)> {
    let wanted: Vec<&[u8]> = msgs
        .iter()
        .filter(|m| m.len() >= 20 && wanted(m))
        .copied()
        .collect();
    let mut reqs = Vec::new();
    for (id, m) in (1u32..).zip(&wanted) {
        reqs.push(request(m, id).ok_or((Some(describe(m)), Errno::EBADMSG))?);
    }
    if reqs.is_empty() {
        return Ok(());
    }
    // One transaction; the socket's send buffer must hold it.
    let size = reqs.iter().map(Vec::len).sum::<usize>() + 4096;
    let _ = nix::sys::socket::setsockopt(
        &s.fd(),
        nix::sys::socket::sockopt::SndBufForce,
        &size.max(1 << 16),
    );
    nft::batch_at(s, reqs)
        .map_err(|(at, e)| (at.and_then(|i| wanted.get(i)).map(|m| describe(m)), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_drop_handles_and_owner_and_number_sets() {
        let set = Builder::new(nft::msg_type(NFT_MSG_NEWSET), 2, &nft::nfgen(2, 0))
            .str(NFTA_SET_TABLE, "t")
            .str(NFTA_SET_NAME, "s")
            .attr(NFTA_SET_HANDLE, &7u64.to_be_bytes())
            .finish();
        let r = request(&set, 5).expect("a request");
        let a = nl::attrs(&r[20..]);
        assert!(a.iter().all(|(t, _)| *t != NFTA_SET_HANDLE));
        assert_eq!(
            nl::find(&r[20..], NFTA_SET_ID),
            Some(&5u32.to_be_bytes()[..])
        );
        assert_eq!(
            u16::from_ne_bytes([r[6], r[7]]) & NLM_F_CREATE,
            NLM_F_CREATE
        );
        let table = Builder::new(nft::msg_type(NFT_MSG_NEWTABLE), 2, &nft::nfgen(1, 0))
            .str(NFTA_TABLE_NAME, "t")
            .be32(NFTA_TABLE_FLAGS, NFT_TABLE_F_OWNER | 1)
            .attr(NFTA_TABLE_OWNER, &99u32.to_be_bytes())
            .finish();
        let r = request(&table, 1).expect("a request");
        assert_eq!(
            nl::find(&r[20..], NFTA_TABLE_FLAGS),
            Some(&1u32.to_be_bytes()[..])
        );
        assert_eq!(nl::find(&r[20..], NFTA_TABLE_OWNER), None);
        assert_eq!(tables(&[&table]), vec!["t".to_owned()]);
    }
}
