//! Credentials of a task (`creds_entry` in the leader's core): uids, gids,
//! groups, capability sets and no_new_privs, read from `/proc/PID/status`.

use std::collections::BTreeMap;

use nix::unistd::Pid;
use stasis_proto::images::CredsEntry;

fn ids(status: &BTreeMap<String, String>, key: &str) -> Vec<u32> {
    status
        .get(key)
        .map(|v| {
            v.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn caps(status: &BTreeMap<String, String>, key: &str) -> Vec<u32> {
    let v = status
        .get(key)
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .unwrap_or(0);
    // Two 32-bit words, low first, as the kernel's capability API has them.
    vec![(v & 0xffff_ffff) as u32, (v >> 32) as u32]
}

/// The credentials `/proc/PID/status` shows.
pub fn dump(_pid: Pid, status: &BTreeMap<String, String>) -> CredsEntry {
    let uid = ids(status, "Uid");
    let gid = ids(status, "Gid");
    let at = |v: &Vec<u32>, i: usize| v.get(i).copied().unwrap_or(0);
    CredsEntry {
        uid: at(&uid, 0),
        euid: at(&uid, 1),
        suid: at(&uid, 2),
        fsuid: at(&uid, 3),
        gid: at(&gid, 0),
        egid: at(&gid, 1),
        sgid: at(&gid, 2),
        fsgid: at(&gid, 3),
        cap_inh: caps(status, "CapInh"),
        cap_prm: caps(status, "CapPrm"),
        cap_eff: caps(status, "CapEff"),
        cap_bnd: caps(status, "CapBnd"),
        cap_amb: caps(status, "CapAmb"),
        secbits: 0,
        groups: ids(status, "Groups"),
        no_new_privs: status.get("NoNewPrivs").and_then(|v| v.parse().ok()),
        ..CredsEntry::default()
    }
}
