//! Namespaces a test creates for itself: UTS names, a network namespace
//! with a changed device MTU and sysctl, IPC sysctls, a private mount
//! namespace with a tmpfs, and a child in a nested pid namespace.
#![allow(unsafe_code)]

use std::os::fd::AsRawFd;

use nix::mount::{MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::unistd::getpid;

use crate::meta::{Category::Namespaces, Test};
use crate::testlib::{Ctx, Fail, OrFail, Res, slurp, status_field};
use crate::{ensure, ensure_eq};

pub(crate) const TESTS: &[Test] = &[
    Test::new(
        "uts00",
        Namespaces,
        "hostname and domainname in a new UTS namespace",
        uts00,
    ),
    Test::new(
        "netns-dev",
        Namespaces,
        "loopback MTU and ip_default_ttl in a new netns",
        netns_dev,
    ),
    Test::new(
        "netns-sysctl",
        Namespaces,
        "per-namespace network sysctls in a new netns: core somaxconn, TCP keepalive and local port range, ping group range, unix datagram queue length, IPv6 default hop limit",
        netns_sysctl,
    ),
    Test::new(
        "netns-veth",
        Namespaces,
        "veth pairs and a bridge in a new netns: MTU, MAC, bridge ports, IPv4 and IPv6 addresses, routes in two tables, routing rules, a per-device sysctl, sockets bound to the addresses",
        netns_veth,
    )
    .tools(&["ip"]),
    Test::new(
        "netns-tun",
        Namespaces,
        "tun and tap devices in a new netns: a tun held by a non-blocking file with its send buffer, address and MTU; a multi-queue tap with a virtio header size, a MAC and one queue detached; a persistent tap on a bridge with an owner and no file; a file attached to nothing; packets routed to the tun still reach its file",
        netns_tun,
    )
    .tools(&["ip"])
    .features(&["tun"]),
    Test::new(
        "netns-bridge",
        Namespaces,
        "a bridge with its settings (STP, forward delay, hello time, ageing time, priority, multicast snooping, group forward mask) and a port with its own (cost, priority, hairpin, learning, flooding, isolation)",
        netns_bridge,
    )
    .tools(&["ip"]),
    Test::new(
        "netns-nft",
        Namespaces,
        "an nftables ruleset in a new netns: inet, ip and ip6 tables, base and regular chains, a named interval set, an anonymous set, a verdict map, a named counter, NAT, rule counters; a packet it drops is still dropped",
        netns_nft,
    )
    .tools(&["nft"]),
    Test::new(
        "netns-iptables-legacy",
        Namespaces,
        "iptables-legacy and ip6tables-legacy rules in a new netns: a user chain, rules in the filter and nat tables, a policy; saved and made again with the legacy tools",
        netns_iptables_legacy,
    )
    .tools(&["iptables-legacy", "ip6tables-legacy"]),
    Test::new(
        "ipcns-sysctl",
        Namespaces,
        "IPC sysctls in a new IPC namespace",
        ipcns_sysctl,
    ),
    Test::new(
        "mntns-tmpfs",
        Namespaces,
        "a tmpfs with options in a private mount namespace",
        mntns_tmpfs,
    ),
    Test::new(
        "mntns-bind-ro",
        Namespaces,
        "a read-only bind of a tmpfs subdirectory, and a file open on the tmpfs",
        mntns_bind_ro,
    ),
    Test::new(
        "mntns-shared-slave",
        Namespaces,
        "a shared tmpfs and a slave bind of it: mounts propagate one way after restore",
        mntns_shared_slave,
    ),
    Test::new(
        "mntns-overmount",
        Namespaces,
        "a tmpfs with files under another tmpfs mounted on the same directory",
        mntns_overmount,
    ),
    Test::new(
        "pidns-nested",
        Namespaces,
        "a child that is init of a nested pid namespace",
        pidns_nested,
    ),
    Test::new(
        "clocks-monotonic",
        Namespaces,
        "monotonic and boottime clocks never go back across C/R (in ns, a time namespace 10 and 20 days ahead keeps its offsets)",
        clocks_monotonic,
    ),
    Test::new(
        "pidns-nested3",
        Namespaces,
        "three levels of pid namespaces: inits, other tasks and a thread keep their PIDs at every level",
        pidns_nested3,
    ),
];

fn uts00(t: &mut Ctx) -> Res {
    unshare(CloneFlags::CLONE_NEWUTS).or_fail("unshare(CLONE_NEWUTS)")?;
    nix::unistd::sethostname("zdtm-host").or_fail("sethostname")?;
    std::fs::write("/proc/sys/kernel/domainname", "zdtm.example").or_fail("set domainname")?;
    t.wait("changed the hostname", || {
        nix::unistd::sethostname("other").or_fail("sethostname")
    })?;
    let u = nix::sys::utsname::uname().or_fail("uname")?;
    ensure_eq!("hostname", u.nodename().to_string_lossy(), "zdtm-host");
    ensure_eq!(
        "domainname",
        u.domainname().to_string_lossy(),
        "zdtm.example"
    );
    Ok(())
}

/// SIOCGIFMTU / SIOCSIFMTU on lo (sysfs shows the mounter's netns, not ours).
fn lo_mtu(set: Option<i32>) -> Res<i32> {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").or_fail("socket")?;
    // SAFETY: plain old data.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *d = libc::c_char::from_ne_bytes([*s]);
    }
    let req = match set {
        Some(mtu) => {
            ifr.ifr_ifru.ifru_mtu = mtu;
            libc::SIOCSIFMTU
        }
        None => libc::SIOCGIFMTU,
    };
    // SAFETY: the MTU ioctls read or write the valid ifreq.
    nix::errno::Errno::result(unsafe { libc::ioctl(sock.as_raw_fd(), req, &raw mut ifr) })
        .or_fail("MTU ioctl")?;
    // SAFETY: the mtu member is the one these ioctls use.
    Ok(unsafe { ifr.ifr_ifru.ifru_mtu })
}

fn netns_dev(t: &mut Ctx) -> Res {
    super::util::new_netns()?;
    lo_mtu(Some(12345))?;
    std::fs::write("/proc/sys/net/ipv4/ip_default_ttl", "33").or_fail("set ip_default_ttl")?;
    t.wait("changed the MTU", || lo_mtu(Some(1500)).map(drop))?;
    ensure_eq!("lo MTU", lo_mtu(None)?, 12345);
    ensure_eq!(
        "ip_default_ttl",
        slurp("/proc/sys/net/ipv4/ip_default_ttl")?.trim(),
        "33"
    );
    Ok(())
}

/// The network sysctls netns-sysctl sets, with their values.
const NET_SYSCTLS: &[(&str, &str)] = &[
    ("core/somaxconn", "777"),
    ("ipv4/tcp_keepalive_time", "1234"),
    ("ipv4/ip_local_port_range", "20000\t30000"),
    ("ipv4/ping_group_range", "0\t1000"),
    ("unix/max_dgram_qlen", "77"),
    ("ipv6/conf/default/hop_limit", "33"),
];

fn netns_sysctl(t: &mut Ctx) -> Res {
    super::util::new_netns()?;
    let path = |name: &str| format!("/proc/sys/net/{name}");
    for (name, value) in NET_SYSCTLS {
        std::fs::write(path(name), value.replace('\t', " ")).or_fail(&format!("set {name}"))?;
    }
    t.wait("changed somaxconn", || {
        std::fs::write(path("core/somaxconn"), "4096").or_fail("set somaxconn")
    })?;
    for (name, value) in NET_SYSCTLS {
        ensure_eq!(*name, slurp(path(name))?.trim_end(), *value);
    }
    Ok(())
}

/// Run `prog ARGS`, feeding it `input`, and return its output; a failure
/// names the command and says what it printed.
fn tool(prog: &str, args: &[&str], input: &str) -> Res<String> {
    use std::io::Write;
    let mut c = std::process::Command::new(prog)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .or_fail(&format!("run {prog}"))?;
    if let Some(mut i) = c.stdin.take() {
        i.write_all(input.as_bytes())
            .or_fail(&format!("feed {prog}"))?;
    }
    let out = c.wait_with_output().or_fail(&format!("wait for {prog}"))?;
    if !out.status.success() {
        return Err(Fail::Sys(format!(
            "{prog} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Run `ip ARGS` (iproute2) and return its output.
fn ip(args: &str) -> Res<String> {
    tool("ip", &args.split_whitespace().collect::<Vec<_>>(), "")
}

/// What a user checks of the namespace's network: each link's name, MTU,
/// MAC and whether it is up; the global addresses; the routes of every
/// table but `local`; the routing rules; one per-device sysctl. Sorted.
fn net_state() -> Res<Vec<String>> {
    let mut out = Vec::new();
    for l in ip("-o link show")?.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let up = l.contains(",UP") || l.contains("<UP");
        let mac = f
            .iter()
            .position(|w| w.starts_with("link/"))
            .and_then(|i| f.get(i + 1));
        let master = f
            .iter()
            .position(|w| *w == "master")
            .and_then(|i| f.get(i + 1));
        out.push(format!(
            "link {} mtu {} mac {:?} up {up} master {master:?}",
            f[1],
            f.get(4).unwrap_or(&""),
            mac
        ));
    }
    for l in ip("-o addr show scope global")?.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        out.push(format!("addr {} {} {}", f[1], f[2], f[3]));
    }
    for l in ip("-4 route show table all")?
        .lines()
        .chain(ip("-6 route show table all")?.lines())
    {
        if !["local", "broadcast", "multicast", "anycast"]
            .iter()
            .any(|p| l.starts_with(p))
        {
            out.push(format!("route {}", l.replace(" linkdown", "")));
        }
    }
    for l in ip("-4 rule")?.lines().chain(ip("-6 rule")?.lines()) {
        out.push(format!("rule {l}"));
    }
    out.push(format!(
        "v0 forwarding {}",
        slurp("/proc/sys/net/ipv4/conf/v0/forwarding")?.trim()
    ));
    // Routes to one prefix list in the order they were made.
    out.sort();
    Ok(out)
}

fn netns_veth(t: &mut Ctx) -> Res {
    super::util::new_netns()?;
    for cmd in [
        "link add v0 type veth peer name v1",
        "link set v0 mtu 1400 address 02:00:00:00:00:10",
        "addr add 10.9.0.1/24 dev v0",
        "addr add 10.9.0.2/24 dev v1",
        "-6 addr add fd00::1/64 dev v0 nodad",
        "-6 addr add fd00::2/64 dev v1 nodad",
        "link set v0 up",
        "link set v1 up",
        "route add 10.50.0.0/16 via 10.9.0.2",
        "route add 10.60.0.0/16 dev v0 table 100",
        "-6 route add fd10::/64 via fd00::3",
        "link add br0 type bridge",
        "link add v2 type veth peer name v3",
        "link set v2 master br0",
        "addr add 10.11.0.1/24 dev br0",
        "addr add 10.11.0.2/24 dev v3",
        "link set br0 up",
        "link set v2 up",
        "link set v3 up",
        "rule add from 10.9.0.0/24 table 100 priority 1000",
        "-6 rule add to fd10::/64 table 100 priority 1001",
    ] {
        ip(cmd)?;
    }
    std::fs::write("/proc/sys/net/ipv4/conf/v0/forwarding", "1").or_fail("set forwarding")?;
    // Sockets bound to the addresses: restored only if the addresses are
    // there (and, for IPv6, usable at once).
    let udp = std::net::UdpSocket::bind("10.9.0.1:7001").or_fail("bind UDP to 10.9.0.1")?;
    let tcp = std::net::TcpListener::bind("[fd00::1]:7002").or_fail("bind TCP to fd00::1")?;
    let before = net_state()?;
    t.wait("deleted a route", || ip("route del 10.50.0.0/16").map(drop))?;
    let after = net_state()?;
    ensure_eq!("network state", after, before);
    let peer = std::net::UdpSocket::bind("10.9.0.2:0").or_fail("bind UDP to 10.9.0.2")?;
    peer.send_to(b"over the veth", "10.9.0.1:7001")
        .or_fail("send over the veth")?;
    udp.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .or_fail("timeout")?;
    let mut buf = [0u8; 32];
    let n = udp.recv(&mut buf).or_fail("receive over the veth")?;
    ensure_eq!("datagram", &buf[..n], b"over the veth");
    let c = std::net::TcpStream::connect_timeout(
        &"[fd00::1]:7002".parse().or_fail("address")?,
        std::time::Duration::from_secs(5),
    )
    .or_fail("connect to [fd00::1]:7002")?;
    let (s, _) = tcp.accept().or_fail("accept")?;
    ensure_eq!("peer", s.peer_addr().ok(), c.local_addr().ok());
    Ok(())
}

/// `struct ifreq` as the tun ioctls use it.
#[repr(C)]
struct TunReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn tun_req(name: &str, flags: i32) -> TunReq {
    let mut r = TunReq {
        name: [0; 16],
        flags: libc::c_short::try_from(flags).unwrap_or(0),
        _pad: [0; 22],
    };
    r.name[..name.len()].copy_from_slice(name.as_bytes());
    r
}

/// Open /dev/net/tun and, with `name`, attach it to that device (made
/// when missing) with `flags`.
fn tun_open(name: Option<&str>, flags: i32) -> Res<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/net/tun")
        .or_fail("open /dev/net/tun")?;
    if let Some(name) = name {
        let mut r = tun_req(name, flags);
        // SAFETY: TUNSETIFF reads and writes the valid ifreq.
        nix::errno::Errno::result(unsafe {
            libc::ioctl(f.as_raw_fd(), libc::TUNSETIFF, &raw mut r)
        })
        .or_fail(&format!("TUNSETIFF {name}"))?;
    }
    Ok(f)
}

/// A tun ioctl taking an int by value (TUNSETPERSIST, TUNSETOWNER).
fn tun_ioctl_val(f: &std::fs::File, req: libc::Ioctl, v: libc::c_ulong, what: &str) -> Res {
    // SAFETY: these requests take their value as the argument itself.
    nix::errno::Errno::result(unsafe { libc::ioctl(f.as_raw_fd(), req, v) })
        .map(drop)
        .or_fail(what)
}

/// A tun ioctl reading or writing an int through its pointer.
fn tun_ioctl_int(f: &std::fs::File, req: libc::Ioctl, v: i32, what: &str) -> Res<i32> {
    let mut v = v;
    // SAFETY: these requests read or write one int through the pointer.
    nix::errno::Errno::result(unsafe { libc::ioctl(f.as_raw_fd(), req, &raw mut v) })
        .or_fail(what)?;
    Ok(v)
}

/// What a user checks of a tun file: the device it is attached to and its
/// flags (TUNGETIFF), with the device's send buffer and virtio header
/// size, and the file's status flags; "none" when attached to nothing.
fn tun_file_state(f: &std::fs::File) -> Res<String> {
    let mut r = tun_req("", 0);
    let fl = nix::fcntl::fcntl(f, nix::fcntl::FcntlArg::F_GETFL).or_fail("F_GETFL")?;
    // SAFETY: TUNGETIFF writes the valid ifreq.
    let got = unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNGETIFF, &raw mut r) };
    if got < 0 {
        return Ok(format!("none ({}) fl {fl:o}", nix::errno::Errno::last()));
    }
    let end = r.name.iter().position(|&b| b == 0).unwrap_or(16);
    Ok(format!(
        "{} flags {:#x} sndbuf {} vnethdr {} fl {fl:o}",
        String::from_utf8_lossy(&r.name[..end]),
        r.flags,
        tun_ioctl_int(f, libc::TUNGETSNDBUF, 0, "TUNGETSNDBUF")?,
        tun_ioctl_int(f, libc::TUNGETVNETHDRSZ, 0, "TUNGETVNETHDRSZ")?,
    ))
}

fn netns_tun(t: &mut Ctx) -> Res {
    super::util::new_netns()?;
    let tun0 = tun_open(Some("tun0"), libc::IFF_TUN | libc::IFF_NO_PI)?;
    tun_ioctl_int(&tun0, libc::TUNSETSNDBUF, 65536, "TUNSETSNDBUF")?;
    let mq = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_MULTI_QUEUE | libc::IFF_VNET_HDR;
    let tap0a = tun_open(Some("tap0"), mq)?;
    let tap0b = tun_open(Some("tap0"), mq)?;
    tun_ioctl_int(&tap0a, libc::TUNSETVNETHDRSZ, 12, "TUNSETVNETHDRSZ")?;
    let mut detach = tun_req("", libc::IFF_DETACH_QUEUE);
    // SAFETY: TUNSETQUEUE reads the valid ifreq.
    nix::errno::Errno::result(unsafe {
        libc::ioctl(tap0b.as_raw_fd(), libc::TUNSETQUEUE, &raw mut detach)
    })
    .or_fail("TUNSETQUEUE detach")?;
    {
        let tap1 = tun_open(Some("tap1"), libc::IFF_TAP)?;
        let me = libc::c_ulong::from(nix::unistd::geteuid().as_raw());
        tun_ioctl_val(&tap1, libc::TUNSETOWNER, me, "TUNSETOWNER")?;
        tun_ioctl_val(&tap1, libc::TUNSETPERSIST, 1, "TUNSETPERSIST")?;
    }
    let loose = tun_open(None, 0)?;
    for cmd in [
        "link set tun0 mtu 1300 up",
        "addr add 10.12.0.1/24 dev tun0",
        "link set tap0 address 02:00:00:00:00:22 up",
        "link add br0 type bridge",
        "link set tap1 master br0",
        "link set br0 up",
        "link set tap1 up",
    ] {
        ip(cmd)?;
    }
    let files = [&tun0, &tap0a, &tap0b, &loose];
    let state = || -> Res<Vec<String>> {
        let mut out = net_links()?;
        for f in files {
            out.push(tun_file_state(f)?);
        }
        Ok(out)
    };
    let before = state()?;
    t.wait("changed the send buffer of tun0", || {
        tun_ioctl_int(&tun0, libc::TUNSETSNDBUF, 4096, "TUNSETSNDBUF").map(drop)
    })?;
    ensure_eq!("tun devices and files", state()?, before);
    // A datagram routed to the tun's network comes out of its file.
    let mut buf = [0u8; 2048];
    while nix::unistd::read(&tun0, &mut buf).is_ok() {}
    let udp = std::net::UdpSocket::bind("10.12.0.1:0").or_fail("bind UDP to 10.12.0.1")?;
    udp.send_to(b"through the tun", "10.12.0.2:9")
        .or_fail("send to 10.12.0.2")?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match nix::unistd::read(&tun0, &mut buf) {
            // IPv4, to 10.12.0.2, carrying the payload.
            Ok(n) if n > 28 && buf[0] >> 4 == 4 && buf[16..20] == [10, 12, 0, 2] => {
                ensure_eq!("payload", &buf[28..n], b"through the tun");
                return Ok(());
            }
            Ok(_) | Err(nix::errno::Errno::EAGAIN) => {}
            Err(e) => return Err(Fail::Sys(format!("read the tun: {e}"))),
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "no packet to 10.12.0.2 came out of tun0's file in 5 s"
        );
        crate::testlib::nap(20);
    }
}

/// The settings `ip -d link` shows of `dev` after its `kind` word
/// ("bridge", "bridge_slave"): the timers, learned counts and STP's
/// changing state left out.
fn link_settings(dev: &str, kind: &str) -> Res<Vec<String>> {
    let l = ip(&format!("-d -o link show dev {dev}"))?;
    let words: Vec<&str> = l.split_whitespace().collect();
    let at = words
        .iter()
        .position(|w| *w == kind)
        .ok_or_else(|| Fail::Sys(format!("no {kind} settings in: {l}")))?;
    let mut out = Vec::new();
    let mut rest = words[at + 1..].iter();
    while let (Some(k), Some(v)) = (rest.next(), rest.next()) {
        // STP's own state moves on with time (listening, learning, ...).
        let stp = [
            "state",
            "topology_change",
            "topology_change_detected",
            "topology_change_ack",
            "config_pending",
        ];
        if k.contains("timer") || k.ends_with("n_learned") || *k == "addrgenmode" || stp.contains(k)
        {
            continue;
        }
        if k.starts_with("num")
            || k.starts_with("gso_")
            || k.starts_with("tso_")
            || k.starts_with("gro_")
        {
            break;
        }
        out.push(format!("{dev} {k} {v}"));
    }
    Ok(out)
}

fn netns_bridge(t: &mut Ctx) -> Res {
    super::util::new_netns()?;
    for cmd in [
        "link add br0 type bridge stp_state 1 forward_delay 800 hello_time 300 ageing_time 12000 \
         mcast_snooping 0 mcast_last_member_count 3 group_fwd_mask 0x8 priority 4096",
        "link add v0 type veth peer name v1",
        "link set v0 master br0",
        "link set v0 type bridge_slave cost 7 priority 12 hairpin on learning off flood off isolated on",
        "link set br0 up",
        "link set v0 up",
        "link set v1 up",
    ] {
        ip(cmd)?;
    }
    let state = || -> Res<Vec<String>> {
        let mut s = link_settings("br0", "bridge")?;
        s.extend(link_settings("v0", "bridge_slave")?);
        Ok(s)
    };
    let before = state()?;
    ensure!(
        before.iter().any(|l| l == "br0 stp_state 1") && before.iter().any(|l| l == "v0 cost 7"),
        "the settings were not made: {before:?}"
    );
    t.wait("changed the port's cost", || {
        ip("link set v0 type bridge_slave cost 9").map(drop)
    })?;
    ensure_eq!("bridge and port settings", state()?, before);
    Ok(())
}

/// Each tun, tap and bridge link of the namespace as `ip -d link` shows
/// it, with its addresses.
fn net_links() -> Res<Vec<String>> {
    let mut out = Vec::new();
    for dev in ["tun0", "tap0", "tap1", "br0"] {
        let l = ip(&format!("-d -o link show dev {dev}"))?;
        // The bridge's own timers and ids change as it runs.
        let mut l = match l.find(" bridge forward_delay") {
            Some(at) if dev == "br0" => l[..at].to_owned(),
            _ => l,
        };
        // The operational state follows the carrier's changes: a device
        // that was up when its file attached says UP, one brought up after
        // UNKNOWN (the restore brings devices up before their files are
        // attached).
        for st in [" state UP ", " state UNKNOWN "] {
            l = l.replace(st, " state UP|UNKNOWN ");
        }
        out.push(l.trim().to_owned());
        out.push(
            ip(&format!("-o addr show dev {dev} scope global"))?
                .trim()
                .to_owned(),
        );
    }
    Ok(out)
}

/// Run `nft ARGS` (nftables), feeding it `input`, and return its output.
fn nft(args: &[&str], input: &str) -> Res<String> {
    tool("nft", args, input)
}

const RULESET: &str = r#"
table inet filter {
    set allowed {
        type ipv4_addr
        flags interval
        elements = { 10.0.0.0/8, 192.168.1.1 }
    }
    counter hits {
    }
    chain input {
        type filter hook input priority 0; policy accept;
        iifname "lo" counter accept
        ip saddr @allowed counter accept
        tcp dport { 22, 80, 443 } counter name "hits" accept
        jump extra
    }
    chain extra {
        ct state established accept
        udp dport 53 drop
    }
    chain output {
        type filter hook output priority 0; policy accept;
        meta mark 0x42 counter drop
    }
}
table ip nat {
    chain postrouting {
        type nat hook postrouting priority 100; policy accept;
        oifname "lo" masquerade
    }
}
table ip6 raw {
    map m {
        type ipv6_addr : verdict
        elements = { ::1 : accept }
    }
    chain pre {
        type filter hook prerouting priority -300; policy accept;
        ip6 saddr vmap @m
    }
}
"#;

/// A UDP datagram to lo with mark 0x42, which the ruleset drops (the send
/// fails with EPERM): whether it went.
fn marked_send() -> Res<bool> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").or_fail("bind UDP")?;
    nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Mark, &0x42).or_fail("SO_MARK")?;
    Ok(s.send_to(b"x", "127.0.0.1:9").is_ok())
}

fn netns_nft(t: &mut Ctx) -> Res {
    super::util::new_netns()?;
    nft(&["-f", "-"], RULESET)?;
    ensure!(
        !marked_send()?,
        "the ruleset lets a marked packet out before the dump"
    );
    let before = nft(&["list", "ruleset"], "")?;
    t.wait("deleted table ip nat", || {
        nft(&["delete", "table", "ip", "nat"], "").map(drop)
    })?;
    let after = nft(&["list", "ruleset"], "")?;
    ensure_eq!("nft list ruleset", after, before);
    ensure!(!marked_send()?, "a marked packet went out after restore");
    Ok(())
}

fn netns_iptables_legacy(t: &mut Ctx) -> Res {
    super::util::new_netns()?;
    let v4 = |args: &str| {
        tool(
            "iptables-legacy",
            &args.split_whitespace().collect::<Vec<_>>(),
            "",
        )
    };
    let v6 = |args: &str| {
        tool(
            "ip6tables-legacy",
            &args.split_whitespace().collect::<Vec<_>>(),
            "",
        )
    };
    for r in [
        "-N ZDTM",
        "-A ZDTM -p tcp --dport 9 -j DROP",
        "-A INPUT -j ZDTM",
        "-P FORWARD DROP",
        "-t nat -A POSTROUTING -s 10.13.0.0/24 -j MASQUERADE",
    ] {
        v4(r)?;
    }
    v6("-A INPUT -p udp --dport 9 -j REJECT")?;
    let state = || -> Res<Vec<String>> { Ok(vec![v4("-S")?, v4("-t nat -S")?, v6("-S")?]) };
    let before = state()?;
    t.wait("flushed ZDTM", || v4("-F ZDTM").map(drop))?;
    ensure_eq!("iptables-legacy rules", state()?, before);
    Ok(())
}

fn ipcns_sysctl(t: &mut Ctx) -> Res {
    unshare(CloneFlags::CLONE_NEWIPC).or_fail("unshare(CLONE_NEWIPC)")?;
    std::fs::write("/proc/sys/kernel/msgmax", "12345").or_fail("set msgmax")?;
    std::fs::write("/proc/sys/kernel/shmmni", "777").or_fail("set shmmni")?;
    t.wait("changed msgmax", || {
        std::fs::write("/proc/sys/kernel/msgmax", "8192").or_fail("set msgmax")
    })?;
    ensure_eq!("msgmax", slurp("/proc/sys/kernel/msgmax")?.trim(), "12345");
    ensure_eq!("shmmni", slurp("/proc/sys/kernel/shmmni")?.trim(), "777");
    Ok(())
}

fn mntns_tmpfs(t: &mut Ctx) -> Res {
    let dir = t.mkdir()?;
    unshare(CloneFlags::CLONE_NEWNS).or_fail("unshare(CLONE_NEWNS)")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .or_fail("make / private")?;
    mount(
        Some("zdtm"),
        &dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("size=1m,mode=750"),
    )
    .or_fail("mount tmpfs")?;
    std::fs::write(dir.join("data"), "inside the tmpfs").or_fail("write")?;
    let d2 = dir.clone();
    t.wait("unmounted the tmpfs", || {
        umount2(&d2, nix::mount::MntFlags::MNT_DETACH).or_fail("umount")
    })?;
    let info = slurp("/proc/self/mountinfo")?;
    let p = dir.to_string_lossy().into_owned();
    let line = info
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some(p.as_str()))
        .ok_or_else(|| Fail::Mismatch(format!("no mount at {p}")))?;
    ensure!(
        line.contains(" - tmpfs zdtm ") && line.contains("size=1024k") && line.contains("mode=750"),
        "mount: {line}"
    );
    ensure!(
        line.contains("nosuid") && line.contains("nodev"),
        "mount flags: {line}"
    );
    ensure_eq!(
        "file in the tmpfs",
        slurp(dir.join("data"))?,
        "inside the tmpfs"
    );
    Ok(())
}

/// A private mount namespace with everything private.
fn private_mntns() -> Res {
    unshare(CloneFlags::CLONE_NEWNS).or_fail("unshare(CLONE_NEWNS)")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .or_fail("make / private")
}

fn tmpfs(at: &std::path::Path, opts: &str) -> Res {
    std::fs::create_dir_all(at).or_fail("mkdir")?;
    mount(
        Some("zdtm"),
        at,
        Some("tmpfs"),
        MsFlags::empty(),
        Some(opts),
    )
    .or_fail("mount tmpfs")
}

/// The mountinfo line of the topmost mount at `at`.
fn mount_line(at: &std::path::Path) -> Res<String> {
    let info = slurp("/proc/self/mountinfo")?;
    let p = at.to_string_lossy().into_owned();
    info.lines()
        .rev()
        .find(|l| l.split_whitespace().nth(4) == Some(p.as_str()))
        .map(str::to_owned)
        .ok_or_else(|| Fail::Mismatch(format!("no mount at {p}")))
}

fn mntns_bind_ro(t: &mut Ctx) -> Res {
    let dir = t.mkdir()?;
    private_mntns()?;
    let (a, b) = (dir.join("a"), dir.join("b"));
    tmpfs(&a, "size=2m,mode=755")?;
    std::fs::create_dir(a.join("sub")).or_fail("mkdir sub")?;
    std::fs::write(a.join("sub/data"), "in sub").or_fail("write")?;
    std::fs::create_dir_all(&b).or_fail("mkdir b")?;
    mount(
        Some(&a.join("sub")),
        &b,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .or_fail("bind")?;
    mount(
        None::<&str>,
        &b,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .or_fail("remount ro")?;
    let mut open = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(a.join("open"))
        .or_fail("open")?;
    std::io::Write::write_all(&mut open, b"12345").or_fail("write open")?;
    let b2 = b.clone();
    t.wait("unmounted the bind", || {
        umount2(&b2, nix::mount::MntFlags::MNT_DETACH).or_fail("umount")
    })?;
    let line = mount_line(&b)?;
    ensure!(
        line.split_whitespace().nth(3) == Some("/sub"),
        "bind root: {line}"
    );
    ensure!(
        line.split_whitespace()
            .nth(5)
            .is_some_and(|o| o.starts_with("ro")),
        "bind flags: {line}"
    );
    ensure_eq!("through the bind", slurp(b.join("data"))?, "in sub");
    ensure!(
        std::fs::write(b.join("x"), "no").is_err(),
        "the read-only bind takes writes"
    );
    std::fs::write(a.join("sub/data"), "changed").or_fail("write through a")?;
    ensure_eq!("same superblock", slurp(b.join("data"))?, "changed");
    std::io::Write::write_all(&mut open, b"678").or_fail("write open after")?;
    ensure_eq!("open file", slurp(a.join("open"))?, "12345678");
    Ok(())
}

fn mntns_shared_slave(t: &mut Ctx) -> Res {
    let dir = t.mkdir()?;
    private_mntns()?;
    let (m, s) = (dir.join("m"), dir.join("s"));
    tmpfs(&m, "size=1m")?;
    for d in ["x", "y"] {
        std::fs::create_dir(m.join(d)).or_fail("mkdir")?;
    }
    mount(
        None::<&str>,
        &m,
        None::<&str>,
        MsFlags::MS_SHARED,
        None::<&str>,
    )
    .or_fail("make shared")?;
    std::fs::create_dir_all(&s).or_fail("mkdir s")?;
    mount(Some(&m), &s, None::<&str>, MsFlags::MS_BIND, None::<&str>).or_fail("bind")?;
    mount(
        None::<&str>,
        &s,
        None::<&str>,
        MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .or_fail("make slave")?;
    let s2 = s.clone();
    t.wait("made the slave private", || {
        mount(
            None::<&str>,
            &s2,
            None::<&str>,
            MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .or_fail("make private")
    })?;
    ensure!(
        mount_line(&m)?.contains(" shared:"),
        "master: {}",
        mount_line(&m)?
    );
    ensure!(
        mount_line(&s)?.contains(" master:"),
        "slave: {}",
        mount_line(&s)?
    );
    // Down the propagation: the slave sees a mount made on the master.
    tmpfs(&m.join("x"), "size=1m")?;
    std::fs::write(m.join("x/f"), "propagated").or_fail("write")?;
    ensure_eq!(
        "a mount on the master, through the slave",
        slurp(s.join("x/f")).unwrap_or_default(),
        "propagated"
    );
    // Not up.
    tmpfs(&s.join("y"), "size=1m")?;
    std::fs::write(s.join("y/f"), "local").or_fail("write")?;
    ensure!(
        !m.join("y/f").exists(),
        "a mount on the slave reached the master"
    );
    Ok(())
}

fn mntns_overmount(t: &mut Ctx) -> Res {
    let dir = t.mkdir()?;
    private_mntns()?;
    let o = dir.join("o");
    tmpfs(&o, "size=1m")?;
    std::fs::write(o.join("under"), "lower").or_fail("write lower")?;
    tmpfs(&o, "size=1m")?;
    std::fs::write(o.join("over"), "upper").or_fail("write upper")?;
    let o2 = o.clone();
    t.wait("removed the upper file", || {
        std::fs::remove_file(o2.join("over")).or_fail("rm")
    })?;
    ensure_eq!("upper file", slurp(o.join("over"))?, "upper");
    ensure!(!o.join("under").exists(), "the lower tmpfs shows through");
    umount2(&o, nix::mount::MntFlags::empty()).or_fail("umount the upper tmpfs")?;
    ensure_eq!("lower file", slurp(o.join("under"))?, "lower");
    Ok(())
}

fn pidns_nested(t: &mut Ctx) -> Res {
    unshare(CloneFlags::CLONE_NEWPID).or_fail("unshare(CLONE_NEWPID)")?;
    let kid = t.spawn("pidns-init", |c| {
        ensure_eq!("pid inside the new namespace", getpid().as_raw(), 1);
        c.wait("nothing", || Ok(()))?;
        ensure_eq!(
            "pid inside the new namespace after restore",
            getpid().as_raw(),
            1
        );
        Ok(())
    })?;
    let outer = kid.as_raw();
    t.wait("killed the namespace's init", || {
        nix::sys::signal::kill(kid, nix::sys::signal::Signal::SIGKILL).or_fail("kill")
    })?;
    let st = slurp(format!("/proc/{outer}/status"))?;
    let nspid = status_field(&st, "NSpid").unwrap_or_default();
    ensure_eq!(
        "NSpid of the child",
        nspid.split_whitespace().collect::<Vec<_>>(),
        vec![outer.to_string().as_str(), "1"]
    );
    t.check_kids()
}

/// `NSpid` of the calling thread (`thread`) or of this process.
fn my_nspid(thread: bool) -> Res<String> {
    // /proc numbers tasks in its own namespace, not the caller's.
    let path = if thread {
        "/proc/thread-self/status"
    } else {
        "/proc/self/status"
    };
    status_field(&slurp(path)?, "NSpid").ok_or_else(|| Fail::Mismatch("no NSpid".into()))
}

/// A process that checks its PIDs at every level after restore.
fn keeps_pids(c: &mut Ctx, what: &str) -> Res {
    let before = my_nspid(false)?;
    c.wait(what, || Ok(()))?;
    ensure_eq!("NSpid after restore", my_nspid(false)?, before);
    Ok(())
}

fn pidns_nested3(t: &mut Ctx) -> Res {
    // Level 2: A is its init, A2 another task in it.
    unshare(CloneFlags::CLONE_NEWPID).or_fail("unshare(CLONE_NEWPID)")?;
    let a = t.spawn("A", |c| {
        ensure_eq!("A's pid in level 2", getpid().as_raw(), 1);
        c.spawn("A2", |a2| {
            ensure_eq!("A2's pid in level 2", getpid().as_raw(), 2);
            keeps_pids(a2, "nothing")
        })?;
        // Level 3: B is its init (with a thread), B2 another task in it.
        // A's next children would go there too.
        unshare(CloneFlags::CLONE_NEWPID).or_fail("unshare(CLONE_NEWPID) in A")?;
        c.spawn("B", |b| {
            ensure_eq!("B's pid in level 3", getpid().as_raw(), 1);
            b.spawn("B2", |b2| {
                ensure_eq!("B2's pid in level 3", getpid().as_raw(), 2);
                keeps_pids(b2, "nothing")
            })?;
            let (tx, rx) = std::sync::mpsc::channel();
            let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
            let th = std::thread::spawn(move || {
                let tid = nix::unistd::gettid().as_raw();
                let _ = tx.send((tid, my_nspid(true)));
                let _ = stop_rx.recv();
                my_nspid(true)
            });
            let (tid, thread_before) = rx.recv().or_fail("the thread's NSpid")?;
            let thread_before = thread_before?;
            let res = keeps_pids(b, "nothing");
            let _ = stop_tx.send(());
            let thread_after = th
                .join()
                .map_err(|_| Fail::Sys("the thread panicked".into()))??;
            ensure_eq!(format!("thread {tid}'s NSpid"), thread_after, thread_before);
            res?;
            b.check_kids()
        })?;
        keeps_pids(c, "nothing")?;
        // A's next child still goes into level 3 (reaped at once: level 3
        // ends only once all of its tasks are reaped).
        let levels = my_nspid(false)?.split_whitespace().count();
        match crate::testlib::sys::fork().or_fail("fork")? {
            nix::unistd::ForkResult::Child => {
                let deeper =
                    my_nspid(false).is_ok_and(|n| n.split_whitespace().count() == levels + 1);
                crate::testlib::sys::exit_now(i32::from(!deeper))
            }
            nix::unistd::ForkResult::Parent { child } => {
                let st = nix::sys::wait::waitpid(child, None).or_fail("waitpid")?;
                ensure!(
                    st == nix::sys::wait::WaitStatus::Exited(child, 0),
                    "A's new child is not in level 3 ({st:?})"
                );
            }
        }
        c.check_kids()
    })?;
    t.wait("killed the level 2 init", || {
        nix::sys::signal::kill(a, nix::sys::signal::Signal::SIGKILL).or_fail("kill")
    })?;
    t.check_kids()
}

fn clock_ns(c: nix::time::ClockId) -> Res<i128> {
    let t = nix::time::clock_gettime(c).or_fail("clock_gettime")?;
    Ok(i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec()))
}

fn clocks_monotonic(t: &mut Ctx) -> Res {
    use nix::time::ClockId;
    let mono = std::cell::Cell::new(clock_ns(ClockId::CLOCK_MONOTONIC)?);
    let boot = clock_ns(ClockId::CLOCK_BOOTTIME)?;
    // The ns flavors' launcher puts the test in a time namespace ahead.
    let timens = std::env::var("ZDTM_FLAVOR").is_ok_and(|f| f != "h")
        && std::path::Path::new("/proc/self/ns/time").exists();
    t.wait("noted a monotonic time an hour ahead", || {
        mono.set(mono.get() + 3600 * 1_000_000_000);
        Ok(())
    })?;
    let mono = mono.get();
    let (mono2, boot2) = (
        clock_ns(ClockId::CLOCK_MONOTONIC)?,
        clock_ns(ClockId::CLOCK_BOOTTIME)?,
    );
    ensure!(
        mono2 >= mono,
        "CLOCK_MONOTONIC went back: {mono} -> {mono2}"
    );
    ensure!(boot2 >= boot, "CLOCK_BOOTTIME went back: {boot} -> {boot2}");
    if timens {
        let day = 86_400 * 1_000_000_000_i128;
        ensure!(
            mono2 >= 10 * day,
            "the monotonic offset is gone: {mono2} ns"
        );
        ensure!(boot2 >= 20 * day, "the boottime offset is gone: {boot2} ns");
    }
    Ok(())
}
