//! A network namespace of the tree's own: its devices (`netdev-1.img`,
//! CRIU's `net_device_entry`: loopback and veth pairs, both ends inside or
//! the peer outside in the caller's namespace, bridges with their settings
//! and their ports', macvlans, tun and
//! tap devices, see `crate::net::tun`); its addresses, routes and
//! routing rules (`ifaddr-1.img`, `route-1.img`, `route6-1.img`,
//! `rule-1.img`: iproute2's save format, as CRIU keeps them, so `ip addr
//! showdump` reads them); its nf_tables ruleset (`nftables-netlink-1.img`:
//! the kernel's own listing, stasis' format, where CRIU keeps `nft list
//! ruleset` text); its iptables-legacy rules (`iptables-1.img`,
//! `ip6tables-1.img`: `iptables-legacy-save` text, as CRIU keeps them, made
//! again with `iptables-legacy-restore`); its sysctls under /proc/sys/net, per device too
//! (`netns-1.img`). Other device kinds are refused by name. Everything but
//! the iptables-legacy rules is read and made over netlink
//! (`stasis_kernel::rtnl`, `::nftables`), from inside the namespace.

use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::unistd::Pid;
use stasis_kernel::netlink::{Msg, Socket};
use stasis_kernel::nftables;
use stasis_kernel::rtnl::{self, NewLink};
use stasis_proto::images::{NdType, NetDeviceEntry, NetSysctlEntry, NetnsEntry};

use super::NS_ID;
use crate::error::{EngineError as Error, Result};
use crate::images::{Dir, img};

/// The index of a network namespace's loopback device (the kernel's
/// LOOPBACK_IFINDEX).
const LOOPBACK_IFINDEX: i32 = 1;

/// The id `peer_nsid` gives the tree's network namespace ([`NS_ID`]).
const NETNS_ID: u32 = 1;

/// Directories under /proc/sys/net whose scalar sysctls a network
/// namespace keeps.
const NET_SYSCTL_DIRS: &[&str] = &["ipv4", "ipv6", "core", "unix"];

fn addr_image() -> String {
    format!("ifaddr-{NS_ID}.img")
}

fn nft_image() -> String {
    format!("nftables-netlink-{NS_ID}.img")
}

fn rule_image() -> String {
    format!("rule-{NS_ID}.img")
}

fn route_image(family: u8) -> String {
    if family == rtnl::AF_INET6 {
        format!("route6-{NS_ID}.img")
    } else {
        format!("route-{NS_ID}.img")
    }
}

/// The sysctl files directly in `/proc/sys/net/{dir}`, sorted, as
/// (name below /proc/sys/net, value).
fn sysctls_in(dir: &str, out: &mut Vec<NetSysctlEntry>) {
    let Ok(rd) = std::fs::read_dir(format!("/proc/sys/net/{dir}")) else {
        return;
    };
    let mut names: Vec<String> = rd
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .collect();
    names.sort();
    for n in names {
        let name = format!("{dir}/{n}");
        // Some are write-only or refuse to be read (stable_secret unset).
        if let Ok(v) = std::fs::read_to_string(format!("/proc/sys/net/{name}")) {
            out.push(NetSysctlEntry {
                name,
                value: v.trim_end().to_owned(),
            });
        }
    }
}

/// The sysctls under /proc/sys/net of the current thread's network
/// namespace, in the order a restore writes them: the scalar ones, then
/// per protocol the `all` and `default` device settings and each device's
/// (writing `all` changes every device's, so the devices' come last).
fn sysctls(devices: &[&str]) -> Vec<NetSysctlEntry> {
    let mut out = Vec::new();
    for d in NET_SYSCTL_DIRS {
        sysctls_in(d, &mut out);
    }
    for proto in ["ipv4", "ipv6"] {
        for dev in ["all", "default"].iter().chain(devices) {
            sysctls_in(&format!("{proto}/conf/{dev}"), &mut out);
        }
    }
    out
}

/// The settings of a bridge (`IFLA_BR_*`) a new one can be given: all but
/// the timers, ids and counters the kernel keeps, and the FDB flush.
const BRIDGE_SETTABLE: &[u16] = &[
    1, 2, 3, 4, 5, 6, 7, 8, 9, 20, 22, 23, 24, 25, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38,
    39, 41, 42, 43, 44, 45, 46, 49,
];

/// The settings of a bridge port (`IFLA_BRPORT_*`) that can be set: all
/// but its STP state (the bridge's STP keeps it), the ids, timers and
/// counters, the flush and the backup port.
const PORT_SETTABLE: &[u16] = &[
    2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 25, 27, 28, 29, 30, 31, 32, 33, 37, 39, 40, 42, 43,
];

/// A bridge's VLAN settings (`IFLA_BR_VLAN_*`): a kernel without VLAN
/// filtering refuses them, even off; kept only when filtering is on.
const BRIDGE_VLAN: &[u16] = &[7, 8, 39, 41, 45];

/// A port's settings a kernel may lack (VLAN tunnel, neighbour VLAN
/// suppression, MAB, locked): kept only when on.
const PORT_OPTIONAL: &[u16] = &[29, 39, 40, 43];

/// The attributes of `data` but those of `drop` whose value is all zeros.
fn without_zero(data: &[u8], drop: &[u16]) -> Vec<u8> {
    let keep: Vec<u16> = stasis_kernel::netlink::attrs(data)
        .into_iter()
        .filter(|(ty, v)| !drop.contains(ty) || v.iter().any(|&b| b != 0))
        .map(|(ty, _)| ty)
        .collect();
    rtnl::keep_attrs(data, &keep)
}

/// A bridge's settings to make it again with.
fn bridge_settings(data: &[u8]) -> Vec<u8> {
    use stasis_kernel::netlink::find;
    const VLAN_FILTERING: u16 = 7;
    const MULTI_BOOLOPT: u16 = 46;
    let filtering = find(data, VLAN_FILTERING).is_some_and(|v| v.iter().any(|&b| b != 0));
    // The boolean options (a value and a mask of every option, 8 bytes):
    // only those on are set, as some (VLAN snooping, MST) are refused even
    // off by a kernel without VLAN filtering.
    let boolopts = find(data, MULTI_BOOLOPT).and_then(|v| v.get(..8));
    let keep: Vec<u16> = BRIDGE_SETTABLE
        .iter()
        .copied()
        .filter(|t| filtering || !BRIDGE_VLAN.contains(t))
        .filter(|&t| t != MULTI_BOOLOPT || boolopts.is_none())
        .collect();
    let mut out = rtnl::keep_attrs(data, &keep);
    if let Some(on) = boolopts
        .map(|v| &v[..4])
        .filter(|on| on.iter().any(|&b| b != 0))
    {
        rtnl::push_attr(&mut out, MULTI_BOOLOPT, &[on, on].concat());
    }
    out
}

/// What the dump reads inside the namespace.
struct Saved {
    devices: Vec<NetDeviceEntry>,
    conf: NetnsEntry,
    addresses: Vec<Msg>,
    routes: [Vec<Msg>; 2],
    rules: Vec<Msg>,
    nft: Vec<Msg>,
    legacy: Legacy,
}

fn device(root: Pid, l: &rtnl::Link, empty: bool, tasks: &[Pid]) -> Result<Option<NetDeviceEntry>> {
    let mut e = NetDeviceEntry {
        r#type: NdType::Loopback as i32,
        ifindex: l.index.cast_unsigned(),
        mtu: l.mtu,
        flags: l.flags,
        name: l.name.clone(),
        ..Default::default()
    };
    if l.hw_type == rtnl::ARPHRD_LOOPBACK {
        return Ok(Some(e));
    }
    if empty {
        return Ok(None);
    }
    e.address.clone_from(&l.address);
    e.master = l.master.map(i32::cast_unsigned);
    e.stasis_port_data = l
        .slave
        .as_ref()
        .filter(|(kind, _)| kind == "bridge")
        .map(|(_, data)| without_zero(&rtnl::keep_attrs(data, PORT_SETTABLE), PORT_OPTIONAL));
    match l.kind.as_deref() {
        Some("veth") => {
            e.r#type = NdType::Veth as i32;
            e.peer_ifindex = l.link.map(i32::cast_unsigned);
            // Without a namespace id the peer is in this namespace.
            e.peer_nsid = l.link_netnsid.is_none().then_some(NETNS_ID);
            Ok(Some(e))
        }
        Some("bridge") => {
            e.r#type = NdType::Bridge as i32;
            e.stasis_info_data = l.info_data.as_deref().map(bridge_settings);
            Ok(Some(e))
        }
        Some("tun") => {
            e.r#type = NdType::Tun as i32;
            e.tun = Some(crate::net::tun::link_entry(root, l, tasks)?);
            Ok(Some(e))
        }
        // Its lower device is outside (the caller names it at the restore).
        Some("macvlan") => {
            e.r#type = NdType::Macvlan as i32;
            let (mode, flags) = l.macvlan.ok_or_else(|| Error::Unsupported {
                pid: root,
                what: format!("macvlan {} without its mode", l.name),
            })?;
            e.macvlan = Some(stasis_proto::images::MacvlanLinkEntry {
                mode,
                flags: Some(u32::from(flags)),
            });
            Ok(Some(e))
        }
        kind => Err(Error::Unsupported {
            pid: root,
            what: format!(
                "network device {} ({}) in its network namespace: loopback, veth, bridge, \
                 macvlan, tun and tap devices are restored; with --empty-ns net the others are \
                 left to the caller",
                l.name,
                kind.unwrap_or("a device of the host's kind")
            ),
        }),
    }
}

/// Refuse a device enslaved to one that is not a bridge of the namespace.
fn check_masters(root: Pid, devices: &[NetDeviceEntry]) -> Result<()> {
    for d in devices {
        let Some(m) = d.master else { continue };
        let bridge = devices
            .iter()
            .any(|b| b.ifindex == m && b.r#type == NdType::Bridge as i32);
        let port = d.r#type == NdType::Veth as i32 || d.r#type == NdType::Tun as i32;
        if !bridge || !port {
            return Err(Error::Unsupported {
                pid: root,
                what: format!(
                    "network device {} enslaved to device {m} of its network namespace (veth \
                     and tap devices on bridges are restored)",
                    d.name
                ),
            });
        }
    }
    Ok(())
}

/// The iptables-legacy (x_tables) rules of a namespace, as
/// `iptables-legacy-save` and `ip6tables-legacy-save` print them
/// (`iptables-1.img`, `ip6tables-1.img`, CRIU's raw text images). Rules
/// made with iptables-nft are in the nftables ruleset.
#[derive(Debug, Default)]
struct Legacy {
    v4: Option<Vec<u8>>,
    v6: Option<Vec<u8>>,
}

/// The legacy tables of each family: the file under /proc/net listing
/// them, the command saving them, the one making them again, the image.
const LEGACY: [(&str, &str, &str, &str); 2] = [
    (
        "ip_tables_names",
        "iptables-legacy-save",
        "iptables-legacy-restore",
        "iptables",
    ),
    (
        "ip6_tables_names",
        "ip6tables-legacy-save",
        "ip6tables-legacy-restore",
        "ip6tables",
    ),
];

fn legacy_image(name: &str) -> String {
    format!("{name}-{NS_ID}.img")
}

/// Run `prog`, feeding it `input` (a restore, then, which waits for the
/// xtables lock: `-w`); its output, or why it failed.
fn run_xtables(prog: &str, input: Option<&[u8]>) -> std::result::Result<Vec<u8>, String> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(prog)
        .args(input.map(|_| "-w"))
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{prog} could not be run: {e}"))?;
    if let (Some(bytes), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(bytes)
            .map_err(|e| format!("writing to {prog}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{prog}: {e}"))?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(format!(
            "{prog} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Save the namespace's iptables-legacy rules (run by a thread in it: the
/// commands it starts are in it too). arptables-legacy tables, which no
/// CRIU image holds, are refused.
fn save_legacy(root: Pid) -> Result<Legacy> {
    let names = |file: &str| {
        std::fs::read_to_string(format!("/proc/thread-self/net/{file}")).unwrap_or_default()
    };
    let refuse = |what: String| Error::Unsupported {
        pid: root,
        what: format!(
            "{what} in its network namespace (--empty-ns net leaves the namespace's setup to \
             the caller),"
        ),
    };
    let arp = names("arp_tables_names");
    if !arp.trim().is_empty() {
        return Err(refuse(format!(
            "arptables-legacy tables ({}), whose rules stasis does not save",
            arp.split_whitespace().collect::<Vec<_>>().join(", ")
        )));
    }
    let mut out = Legacy::default();
    for (i, (file, save, _, _)) in LEGACY.iter().enumerate() {
        if names(file).trim().is_empty() {
            continue;
        }
        let text = run_xtables(save, None).map_err(|why| {
            refuse(format!(
                "iptables-legacy tables, which {save} saves, but {why}"
            ))
        })?;
        if i == 0 {
            out.v4 = Some(text);
        } else {
            out.v6 = Some(text);
        }
    }
    Ok(out)
}

/// Make the iptables-legacy rules of the images again in the current
/// network namespace (a new one).
fn restore_legacy(dir: &Dir) -> Result<()> {
    for (_, _, restore, image) in LEGACY {
        let path = dir.raw_file(&legacy_image(image));
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => {
                return Err(Error::ImagesDir {
                    path: path.display().to_string(),
                    err,
                });
            }
        };
        run_xtables(restore, Some(&text)).map_err(|why| Error::Net {
            what: format!(
                "making the {image} rules of {} again: {why}",
                path.display()
            ),
            errno: Errno::EINVAL,
            hint: " (the rules were saved with iptables-legacy, which this machine needs to \
                   make them again)",
        })?;
    }
    Ok(())
}

/// The network namespace of `root`: the caller's (`--external
/// net[INO]:KEY`, runtimes that made it) is saved as its key alone, as the
/// restore joins it again; any other is dumped whole.
pub(super) fn dump_or_key(
    root: Pid,
    dir: &Dir,
    empty_net: bool,
    ext_netns: &[(u64, String)],
    tasks: &[Pid],
) -> Result<()> {
    let ino = std::fs::metadata(format!("/proc/{root}/ns/net"))
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .map_err(|err| Error::Proc {
            pid: root,
            path: format!("/proc/{root}/ns/net"),
            err,
        })?;
    match ext_netns.iter().find(|(i, _)| *i == ino) {
        Some((_, key)) => dir.write_all(
            img::NETNS,
            super::NS_ID,
            &[NetnsEntry {
                ext_key: Some(key.clone()),
                ..Default::default()
            }],
        ),
        None => dump(root, dir, empty_net, tasks),
    }
}

/// Dump the tree's network namespace (that of `root`). With `empty`
/// (CRIU's `empty_ns` for the network), devices other than loopback,
/// addresses and routes are the caller's, who sets them up again after the
/// restore: left out.
pub(super) fn dump(root: Pid, dir: &Dir, empty: bool, tasks: &[Pid]) -> Result<()> {
    let saved = crate::task::in_namespace_of(root, "net", CloneFlags::CLONE_NEWNET, || {
        let what = |w: &str| Error::dump(root, format!("{w} of its network namespace"));
        let s = rtnl::open().map_err(what("a route netlink socket"))?;
        let links = rtnl::links(&s).map_err(what("the devices"))?;
        let mut devices = Vec::new();
        for l in &links {
            devices.extend(device(root, l, empty, tasks)?);
        }
        check_masters(root, &devices)?;
        let names: Vec<&str> = devices.iter().map(|d| d.name.as_str()).collect();
        let conf = NetnsEntry {
            stasis_sysctls: sysctls(&names),
            ext_key: None,
        };
        if empty {
            return Ok(Saved {
                devices,
                conf,
                addresses: Vec::new(),
                routes: [Vec::new(), Vec::new()],
                rules: Vec::new(),
                nft: Vec::new(),
                legacy: Legacy::default(),
            });
        }
        let legacy = save_legacy(root)?;
        let addresses = rtnl::addresses(&s).map_err(what("the addresses"))?;
        let v4 = rtnl::routes(&s, rtnl::AF_INET).map_err(what("the IPv4 routes"))?;
        // A kernel without IPv6 has no IPv6 routes to keep.
        let v6 = match rtnl::routes(&s, rtnl::AF_INET6) {
            Err(Errno::EAFNOSUPPORT) => Vec::new(),
            r => r.map_err(what("the IPv6 routes"))?,
        };
        let rules = rtnl::rules(&s).map_err(what("the routing rules"))?;
        // A kernel without nf_tables has no ruleset to keep.
        let nft = match nftables::open().and_then(|n| nftables::save(&n)) {
            Err(Errno::EOPNOTSUPP | Errno::EPROTONOSUPPORT | Errno::ENOENT) => Vec::new(),
            r => r.map_err(what("the nftables ruleset"))?,
        };
        Ok(Saved {
            devices,
            conf,
            addresses,
            routes: [v4, v6],
            rules,
            nft,
            legacy,
        })
    })?;
    dir.write_all(img::NETDEV, NS_ID, &saved.devices)?;
    dir.write_all(img::NETNS, NS_ID, &[saved.conf])?;
    if !empty {
        write_raw(
            dir,
            &addr_image(),
            &rtnl::save(rtnl::ADDR_MAGIC, &saved.addresses),
        )?;
        for (family, routes) in [rtnl::AF_INET, rtnl::AF_INET6]
            .into_iter()
            .zip(&saved.routes)
        {
            write_raw(
                dir,
                &route_image(family),
                &rtnl::save(rtnl::ROUTE_MAGIC, routes),
            )?;
        }
        write_raw(
            dir,
            &rule_image(),
            &rtnl::save(rtnl::RULE_MAGIC, &saved.rules),
        )?;
        if !saved.nft.is_empty() {
            write_raw(dir, &nft_image(), &rtnl::save(nftables::MAGIC, &saved.nft))?;
        }
        for (text, (_, _, _, image)) in [&saved.legacy.v4, &saved.legacy.v6].into_iter().zip(LEGACY)
        {
            if let Some(t) = text {
                write_raw(dir, &legacy_image(image), t)?;
            }
        }
    }
    Ok(())
}

fn write_raw(dir: &Dir, name: &str, bytes: &[u8]) -> Result<()> {
    let path = dir.raw_file(name);
    std::fs::write(&path, bytes).map_err(|err| Error::ImagesDir {
        path: path.display().to_string(),
        err,
    })
}

fn net_err(what: String, hint: &'static str) -> impl FnOnce(Errno) -> Error {
    move |errno| Error::Net { what, errno, hint }
}

/// The engine's own network namespace, where veth peers outside the tree
/// go: taken before the engine enters the tree's.
#[derive(Debug)]
pub(super) struct Outside {
    ns: OwnedFd,
    rtnl: Socket,
}

/// The engine's network namespace, now.
pub(super) fn outside() -> Result<Outside> {
    let ns = super::this_thread("net")?;
    let rtnl = rtnl::open().map_err(net_err("a route netlink socket outside".into(), ""))?;
    Ok(Outside { ns, rtnl })
}

fn new_link(d: &NetDeviceEntry) -> NewLink<'_> {
    NewLink {
        index: d.ifindex.cast_signed(),
        name: &d.name,
        mtu: d.mtu,
        address: d.address.as_deref(),
        netns: None,
    }
}

/// Make veth `d` with its peer outside in `out`, named as `veths` maps it
/// (`OUTER` or `OUTER@BRIDGE`: then the peer joins that bridge and is up).
fn veth_out(
    s: &Socket,
    d: &NetDeviceEntry,
    out: &Outside,
    veths: &[(String, String)],
) -> Result<()> {
    let mapped = veths
        .iter()
        .find(|(inner, _)| *inner == d.name)
        .map(|(_, out)| out.as_str());
    let (name, bridge) = match mapped.map(|m| m.split_once('@').unwrap_or((m, ""))) {
        Some((n, b)) => (n, (!b.is_empty()).then_some(b)),
        None => {
            tracing::warn!(
                device = %d.name,
                "veth peer outside the tree: made with a name the kernel chooses \
                 (give --external veth[{}]:NAME to name it)",
                d.name
            );
            ("", None)
        }
    };
    let peer = NewLink {
        index: 0,
        name,
        mtu: d.mtu,
        address: None,
        netns: Some(out.ns.as_fd()),
    };
    let what = if name.is_empty() {
        format!("making veth {} (peer outside)", d.name)
    } else {
        format!("making veth {} with peer {name} outside", d.name)
    };
    let hint = if name.is_empty() {
        ""
    } else {
        " (is a device of that name already there, outside?)"
    };
    // A namespace is torn down after its last task has gone, a little
    // later: the old outer end of a tree dumped just now may still be
    // there for some milliseconds.
    let mut tries = 0;
    loop {
        match rtnl::new_veth(s, &new_link(d), &peer) {
            Err(Errno::EEXIST) if tries < 60 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            r => break r.map_err(net_err(what, hint))?,
        }
    }
    if let Some(br) = bridge {
        let what = format!("adding {name} outside to bridge {br}");
        let find = |n: &str| {
            rtnl::index_of(&out.rtnl, n)
                .map_err(net_err(what.clone(), ""))?
                .ok_or_else(|| Error::Net {
                    what: what.clone(),
                    errno: Errno::ENODEV,
                    hint: " (no such device outside)",
                })
        };
        let (port, master) = (find(name)?, find(br)?);
        rtnl::set_master(&out.rtnl, port, master).map_err(net_err(what.clone(), ""))?;
        rtnl::set_link(&out.rtnl, port, rtnl::IFF_UP, 0).map_err(net_err(what, ""))?;
    }
    Ok(())
}

/// Make macvlan `d` in the current network namespace (the tree's) on the
/// device outside (in `out`) that `macvlans` names for it.
fn macvlan_on(d: &NetDeviceEntry, out: &Outside, macvlans: &[(String, String)]) -> Result<()> {
    let what = format!("making macvlan {}", d.name);
    let lower = macvlans
        .iter()
        .find(|(inner, _)| *inner == d.name)
        .map(|(_, o)| o.as_str())
        .ok_or_else(|| Error::Net {
            what: what.clone(),
            errno: Errno::ENODEV,
            hint: " (its lower device was outside the tree: name it with --external \
                   macvlan[NAME]:OUTER)",
        })?;
    let index = rtnl::index_of(&out.rtnl, lower)
        .map_err(net_err(what.clone(), ""))?
        .ok_or_else(|| Error::Net {
            what: format!("{what} on {lower}"),
            errno: Errno::ENODEV,
            hint: " (no such device outside)",
        })?;
    let here = super::this_thread("net")?;
    let me = NewLink {
        netns: Some(here.as_fd()),
        ..new_link(d)
    };
    let (mode, flags) = d
        .macvlan
        .as_ref()
        .map_or((0, 0), |m| (m.mode, m.flags.unwrap_or(0)));
    rtnl::new_macvlan(
        &out.rtnl,
        &me,
        index,
        mode,
        u16::try_from(flags).unwrap_or(0),
    )
    .map_err(net_err(format!("{what} on {lower}"), ""))
}

/// Make the devices of `devs` in the current network namespace (a new
/// one): bridges, veth pairs (peers outside go to `out`), then the ports
/// of each bridge.
fn make_devices(
    s: &Socket,
    devs: &[NetDeviceEntry],
    out: &Outside,
    veths: &[(String, String)],
) -> Result<()> {
    let is = |d: &NetDeviceEntry, t: NdType| d.r#type == t as i32;
    for d in devs.iter().filter(|d| is(d, NdType::Bridge)) {
        let data = d.stasis_info_data.as_deref().unwrap_or_default();
        rtnl::new_link_with(s, "bridge", &new_link(d), data)
            .map_err(net_err(format!("making bridge {}", d.name), ""))?;
    }
    for d in devs.iter().filter(|d| is(d, NdType::Tun)) {
        crate::net::tun::make_device(d)?;
        if let Some(mac) = &d.address {
            rtnl::set_address(s, d.ifindex.cast_signed(), mac)
                .map_err(net_err(format!("setting the address of {}", d.name), ""))?;
        }
    }
    let mut made: Vec<u32> = Vec::new();
    for d in devs.iter().filter(|d| is(d, NdType::Veth)) {
        if made.contains(&d.ifindex) {
            continue;
        }
        let inner_peer = devs.iter().find(|p| {
            d.peer_nsid == Some(NETNS_ID)
                && Some(p.ifindex) == d.peer_ifindex
                && is(p, NdType::Veth)
        });
        match inner_peer {
            Some(p) => {
                rtnl::new_veth(s, &new_link(d), &new_link(p)).map_err(net_err(
                    format!("making veth pair {} and {}", d.name, p.name),
                    "",
                ))?;
                made.push(p.ifindex);
            }
            None => veth_out(s, d, out, veths)?,
        }
        made.push(d.ifindex);
    }
    for d in devs {
        if let Some(m) = d.master {
            rtnl::set_master(s, d.ifindex.cast_signed(), m.cast_signed())
                .map_err(net_err(format!("adding {} to its bridge", d.name), ""))?;
        }
        if let Some(data) = d.stasis_port_data.as_deref().filter(|p| !p.is_empty()) {
            rtnl::set_port(s, d.ifindex.cast_signed(), data).map_err(net_err(
                format!("setting {} as a port of its bridge", d.name),
                "",
            ))?;
        }
    }
    Ok(())
}

/// Only what differs from a fresh namespace's value is written; a sysctl
/// this kernel lacks or refuses is reported and left.
fn write_sysctls(conf: &NetnsEntry) {
    // A device's stable_secret first: writing it switches its addr_gen_mode
    // to stable privacy, which the saved addr_gen_mode then sets as it was
    // (a tun's random mode has a secret of its own).
    let secret = |c: &&NetSysctlEntry| c.name.ends_with("/stable_secret");
    let all = &conf.stasis_sysctls;
    for c in all
        .iter()
        .filter(secret)
        .chain(all.iter().filter(|c| !secret(c)))
    {
        let path = format!("/proc/sys/net/{}", c.name);
        let now = std::fs::read_to_string(&path).unwrap_or_default();
        if now.trim_end() == c.value {
            continue;
        }
        if let Err(e) = std::fs::write(&path, &c.value) {
            tracing::warn!(sysctl = %c.name, value = %c.value, error = %e, "network sysctl not restored");
        }
    }
}

/// The messages of raw image `name` (iproute2's save format under
/// `magic`, each at least `fixed` bytes past its header); none when the
/// dump wrote no such image.
fn read_raw(dir: &Dir, name: &str, magic: u32, fixed: usize) -> Result<Vec<Vec<u8>>> {
    let path = dir.raw_file(name);
    match std::fs::read(&path) {
        Ok(b) => rtnl::load(magic, &b, fixed)
            .map(|msgs| msgs.into_iter().map(<[u8]>::to_vec).collect())
            .map_err(|e| Error::BadImage {
                path: name.to_owned(),
                what: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(err) => Err(Error::ImagesDir {
            path: path.display().to_string(),
            err,
        }),
    }
}

/// Make the addresses of `ifaddr-1.img` again. An IPv6 address that had
/// passed duplicate address detection is added without it, so that it is
/// usable at once, as it was.
fn add_addresses(s: &Socket, dir: &Dir) -> Result<()> {
    for m in read_raw(dir, &addr_image(), rtnl::ADDR_MAGIC, 8)? {
        let (family, flags) = rtnl::addr_family_flags(&m).unwrap_or((0, 0));
        let m = if family == rtnl::AF_INET6 && flags & rtnl::IFA_F_TENTATIVE == 0 {
            rtnl::addr_with_flags(&m, rtnl::IFA_F_NODAD)
        } else {
            m
        };
        let index = u32::from_ne_bytes([m[20], m[21], m[22], m[23]]);
        rtnl::replay(s, &m).map_err(net_err(
            format!("adding an address (family {family}) to device {index}"),
            "",
        ))?;
    }
    Ok(())
}

/// Make the routes of `route-1.img` and `route6-1.img` again, in the order
/// `ip route restore` takes.
fn add_routes(s: &Socket, dir: &Dir) -> Result<()> {
    for family in [rtnl::AF_INET, rtnl::AF_INET6] {
        let msgs = read_raw(dir, &route_image(family), rtnl::ROUTE_MAGIC, 12)?;
        for stage in 0..3 {
            for m in msgs.iter().filter(|m| rtnl::route_stage(m) == stage) {
                rtnl::replay(s, m).map_err(net_err(
                    format!("adding a route (family {family}, table {})", m[20]),
                    "",
                ))?;
            }
        }
    }
    Ok(())
}

/// Make the routing rules of `rule-1.img` again, but those the new
/// namespace has already (its defaults): a rule is added again even when
/// an equal one exists.
fn add_rules(s: &Socket, dir: &Dir) -> Result<()> {
    let saved = read_raw(dir, &rule_image(), rtnl::RULE_MAGIC, 12)?;
    if saved.is_empty() {
        return Ok(());
    }
    let have: Vec<Vec<u8>> = rtnl::rules(s)
        .map_err(net_err("reading the routing rules".into(), ""))?
        .iter()
        .map(Msg::bytes)
        .collect();
    for m in &saved {
        if have.iter().any(|h| rtnl::same_rule(h, m)) {
            continue;
        }
        rtnl::replay(s, m).map_err(net_err(
            format!("adding a routing rule (family {}, table {})", m[16], m[20]),
            "",
        ))?;
    }
    Ok(())
}

/// Make the nf_tables ruleset of `nftables-netlink-1.img` again, in one
/// transaction.
fn add_ruleset(dir: &Dir) -> Result<()> {
    let saved = read_raw(dir, &nft_image(), nftables::MAGIC, 4)?;
    if saved.is_empty() {
        return Ok(());
    }
    let msgs: Vec<&[u8]> = saved.iter().map(Vec::as_slice).collect();
    let what = || {
        format!(
            "making its nftables ruleset again (tables {})",
            nftables::tables(&msgs).join(", ")
        )
    };
    let s = nftables::open().map_err(net_err(what(), " (does this kernel have nf_tables?)"))?;
    nftables::restore(&s, &msgs).map_err(|(at, errno)| Error::Net {
        what: match at {
            Some(m) => format!("{}: making {m}", what()),
            None => what(),
        },
        errno,
        hint: "",
    })
}

/// Restore the tree's network namespace into the current one, new and
/// empty (the engine just made it): devices, sysctls, addresses, device
/// state, routes, routing rules, the nftables ruleset. `outer` is the
/// engine's own namespace, where veth peers outside the tree go. With
/// `lock_tcp` (its connections were locked at the dump), TCP is dropped
/// in it from the start until the restore lifts the lock.
pub(super) fn restore(
    dir: &Dir,
    outer: &Outside,
    veths: &[(String, String)],
    macvlans: &[(String, String)],
    lock_tcp: bool,
) -> Result<()> {
    if lock_tcp {
        // Before any device or address lets a peer's packet in.
        crate::net::netlock::socket()
            .and_then(|s| crate::net::netlock::lock_all_tcp(&s))
            .map_err(net_err(
                "locking its TCP packets until the tree runs".into(),
                " (does this kernel have nf_tables? --network-lock skip restores without the lock)",
            ))?;
    }
    let devs: Vec<NetDeviceEntry> = dir.read_all(img::NETDEV, NS_ID)?;
    let conf: NetnsEntry = dir.read_one(img::NETNS, NS_ID)?;
    let s = rtnl::open().map_err(net_err("a route netlink socket".into(), ""))?;
    for d in &devs {
        let known = [
            NdType::Loopback,
            NdType::Veth,
            NdType::Bridge,
            NdType::Macvlan,
            NdType::Tun,
        ];
        if !known.iter().any(|&t| d.r#type == t as i32) {
            return Err(img::NETDEV.bad(NS_ID, format!(
                    "device {} is of type {}: loopback, veth, bridge, macvlan and tun devices are restored",
                    d.name, d.r#type
                )));
        }
    }
    make_devices(&s, &devs, outer, veths)?;
    for d in devs.iter().filter(|d| d.r#type == NdType::Macvlan as i32) {
        macvlan_on(d, outer, macvlans)?;
    }
    write_sysctls(&conf);
    let set = |d: &NetDeviceEntry| {
        // A namespace's loopback device is always its first.
        let index = if d.r#type == NdType::Loopback as i32 {
            LOOPBACK_IFINDEX
        } else {
            d.ifindex.cast_signed()
        };
        rtnl::set_link(&s, index, d.flags, d.mtu).map_err(net_err(
            format!("setting the state of device {}", d.name),
            "",
        ))
    };
    // Loopback first: up, it makes its own addresses, which the saved ones
    // then find there. The others once their addresses are there, as
    // before the dump.
    let (lo, others): (Vec<_>, Vec<_>) = devs
        .iter()
        .partition(|d| d.r#type == NdType::Loopback as i32);
    lo.into_iter().try_for_each(set)?;
    add_addresses(&s, dir)?;
    others.into_iter().try_for_each(set)?;
    add_routes(&s, dir)?;
    add_rules(&s, dir)?;
    add_ruleset(dir)?;
    restore_legacy(dir)?;
    Ok(())
}
