//! Credentials of a thread (`creds_entry` in each thread's core): uids, gids,
//! groups, capability sets (effective, permitted, inheritable, bounding,
//! ambient), securebits and no_new_privs. Dump reads `/proc/PID/task/TID/status`
//! and asks the thread for its securebits; restore sets them last, inside the
//! thread, in an order that keeps the capabilities it needs until the end.

use std::collections::BTreeMap;

use nix::unistd::Pid;
use stasis_arch::native::nr;
use stasis_proto::images::CredsEntry;

use crate::error::Result;
use crate::task::remote::{self, Remote};

const PR_CAPBSET_DROP: u64 = 24;
const PR_SET_SECUREBITS: u64 = 28;
const PR_SET_NO_NEW_PRIVS: u64 = 38;
const PR_CAP_AMBIENT: u64 = 47;
const PR_CAP_AMBIENT_RAISE: u64 = 2;
/// Keeps the capabilities while the uids change.
const SECBIT_NO_SETUID_FIXUP: u64 = 1 << 2;
const CAP_SETPCAP: u32 = 8;
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

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

/// The credentials `/proc/PID/task/TID/status` shows, with the thread's securebits.
pub fn dump(status: &BTreeMap<String, String>, secbits: u32) -> CredsEntry {
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
        secbits,
        groups: ids(status, "Groups"),
        no_new_privs: status.get("NoNewPrivs").and_then(|v| v.parse().ok()),
        ..CredsEntry::default()
    }
}

fn set64(words: &[u32]) -> u64 {
    let w = |i: usize| u64::from(words.get(i).copied().unwrap_or(0));
    w(0) | (w(1) << 32)
}

fn capset(r: &Remote, data: u64, eff: u64, prm: u64, inh: u64) -> Result<()> {
    let lo = |v: u64| (v & 0xffff_ffff) as u32;
    let hi = |v: u64| (v >> 32) as u32;
    let words: [u32; 8] = [
        CAPABILITY_VERSION_3,
        0,
        lo(eff),
        lo(prm),
        lo(inh),
        hi(eff),
        hi(prm),
        hi(inh),
    ];
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    remote::write_mem(r.tid, data, &bytes)?;
    r.call("capset", nr::CAPSET, [data, data + 8, 0, 0, 0, 0])
        .map(drop)
}

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Put the credentials of `c` on the thread under `r` (a fresh copy of the
/// engine: uid 0 with the engine's capabilities). `data` is scratch memory
/// in the task. Nothing is done when the thread already has them.
pub fn restore(r: &Remote, pid: Pid, c: &CredsEntry, data: u64) -> Result<()> {
    let now = crate::proc::status(pid, Some(r.tid))?;
    if dump(&now, 0)
        == (CredsEntry {
            secbits: 0,
            ..c.clone()
        })
        && c.secbits == 0
    {
        return Ok(());
    }
    let u = u64::from;
    let groups: Vec<u8> = c.groups.iter().flat_map(|g| g.to_ne_bytes()).collect();
    remote::write_mem(r.tid, data, &groups)?;
    r.call(
        "setgroups",
        nr::SETGROUPS,
        [c.groups.len() as u64, data, 0, 0, 0, 0],
    )?;
    r.call(
        "prctl(PR_SET_SECUREBITS)",
        nr::PRCTL,
        [PR_SET_SECUREBITS, SECBIT_NO_SETUID_FIXUP, 0, 0, 0, 0],
    )?;
    r.call(
        "setresgid",
        nr::SETRESGID,
        [u(c.gid), u(c.egid), u(c.sgid), 0, 0, 0],
    )?;
    r.call_raw("setfsgid", nr::SETFSGID, [u(c.fsgid), 0, 0, 0, 0, 0])?;
    r.call(
        "setresuid",
        nr::SETRESUID,
        [u(c.uid), u(c.euid), u(c.suid), 0, 0, 0],
    )?;
    r.call_raw("setfsuid", nr::SETFSUID, [u(c.fsuid), 0, 0, 0, 0, 0])?;
    let (eff, prm, inh) = (set64(&c.cap_eff), set64(&c.cap_prm), set64(&c.cap_inh));
    let (bnd, amb) = (set64(&c.cap_bnd), set64(&c.cap_amb));
    // CAP_SETPCAP stays until the bounding set, ambient set and securebits are in.
    let setpcap = 1u64 << CAP_SETPCAP;
    capset(r, data, prm | setpcap, prm | setpcap, inh)?;
    for cap in 0..=last_cap().min(63) {
        if bnd & (1 << cap) == 0 {
            r.call(
                "prctl(PR_CAPBSET_DROP)",
                nr::PRCTL,
                [PR_CAPBSET_DROP, u64::from(cap), 0, 0, 0, 0],
            )?;
        }
    }
    for cap in 0..64u64 {
        if amb & (1 << cap) != 0 {
            r.call(
                "prctl(PR_CAP_AMBIENT_RAISE)",
                nr::PRCTL,
                [PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0, 0],
            )?;
        }
    }
    r.call(
        "prctl(PR_SET_SECUREBITS)",
        nr::PRCTL,
        [PR_SET_SECUREBITS, u(c.secbits), 0, 0, 0, 0],
    )?;
    capset(r, data, eff, prm, inh)
}

/// no_new_privs goes on after everything else (it cannot be taken back).
pub fn restore_no_new_privs(r: &Remote, c: &CredsEntry) -> Result<()> {
    if c.no_new_privs.unwrap_or(0) != 0 {
        r.call(
            "prctl(PR_SET_NO_NEW_PRIVS)",
            nr::PRCTL,
            [PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0, 0],
        )?;
    }
    Ok(())
}
