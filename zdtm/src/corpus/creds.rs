//! Credentials: real/effective/saved uids and gids, supplementary groups,
//! capability sets (permitted, effective, inheritable, ambient, bounding),
//! securebits, no_new_privs and a seccomp filter.
#![allow(unsafe_code)]

use nix::unistd::{Gid, Uid, getgroups, getresgid, getresuid, setgroups, setresgid, setresuid};

use super::util::self_status;
use crate::meta::{Category::Creds, Test};
use crate::testlib::sys::{prctl, syscall6};
use crate::testlib::{Ctx, OrFail, Res};
use crate::{ensure, ensure_eq};

pub(crate) const TESTS: &[Test] = &[
    Test::new(
        "creds-ids",
        Creds,
        "distinct real, effective and saved uids and gids",
        creds_ids,
    )
    .suid(),
    Test::new("groups00", Creds, "supplementary groups", groups00).suid(),
    Test::new(
        "caps00",
        Creds,
        "reduced permitted, effective and inheritable capabilities",
        caps00,
    )
    .suid(),
    Test::new("caps-ambient", Creds, "ambient capabilities", caps_ambient).suid(),
    Test::new(
        "capbset",
        Creds,
        "capabilities dropped from the bounding set",
        capbset,
    )
    .suid(),
    Test::new("securebits", Creds, "securebits", securebits).suid(),
    Test::new(
        "no-new-privs",
        Creds,
        "no_new_privs without seccomp",
        no_new_privs,
    ),
    Test::new(
        "seccomp-filter",
        Creds,
        "a seccomp filter failing uname with errno 77",
        seccomp_filter,
    )
    .features(&["seccomp_filters"]),
];

fn creds_ids(t: &mut Ctx) -> Res {
    setresgid(
        Gid::from_raw(2001),
        Gid::from_raw(2002),
        Gid::from_raw(2003),
    )
    .or_fail("setresgid")?;
    // Keep saved uid 0 so the sabotage can still change ids.
    setresuid(Uid::from_raw(1001), Uid::from_raw(1002), Uid::from_raw(0)).or_fail("setresuid")?;
    t.wait("swapped the real and effective uids", || {
        setresuid(Uid::from_raw(1002), Uid::from_raw(1001), Uid::from_raw(0)).or_fail("setresuid")
    })?;
    let u = getresuid().or_fail("getresuid")?;
    let g = getresgid().or_fail("getresgid")?;
    ensure_eq!(
        "uids (r, e, s)",
        (u.real.as_raw(), u.effective.as_raw(), u.saved.as_raw()),
        (1001, 1002, 0)
    );
    ensure_eq!(
        "gids (r, e, s)",
        (g.real.as_raw(), g.effective.as_raw(), g.saved.as_raw()),
        (2001, 2002, 2003)
    );
    ensure_eq!(
        "fsuid in status",
        self_status("Uid")?
            .split_whitespace()
            .nth(3)
            .map(str::to_owned),
        Some("1002".to_owned())
    );
    Ok(())
}

fn groups00(t: &mut Ctx) -> Res {
    let want: Vec<Gid> = [5u32, 7, 1000, 65534, 40000]
        .iter()
        .map(|g| Gid::from_raw(*g))
        .collect();
    setgroups(&want).or_fail("setgroups")?;
    t.wait("dropped a group", || {
        setgroups(&want[..4]).or_fail("setgroups")
    })?;
    let mut got: Vec<u32> = getgroups()
        .or_fail("getgroups")?
        .iter()
        .map(|g| g.as_raw())
        .collect();
    got.sort_unstable();
    ensure_eq!("groups", got, vec![5, 7, 1000, 40000, 65534]);
    Ok(())
}

const CAP_CHOWN: u32 = 0;
const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_KILL: u32 = 5;
const CAP_SETUID: u32 = 7;
const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_NET_RAW: u32 = 13;
const CAP_SYS_BOOT: u32 = 22;
const CAP_SYS_TIME: u32 = 25;
const CAP_MKNOD: u32 = 27;
const CAP_AUDIT_WRITE: u32 = 29;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_V3: u32 = 0x2008_0522;

fn capget() -> Res<[CapData; 2]> {
    let mut h = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let mut d = [CapData::default(); 2];
    // SAFETY: valid header and a two-element data array, as v3 requires.
    unsafe {
        syscall6(
            libc::SYS_capget,
            [(&raw mut h) as u64, d.as_mut_ptr() as u64, 0, 0, 0, 0],
        )
    }
    .or_fail("capget")?;
    Ok(d)
}

fn capset(d: [CapData; 2]) -> Res {
    let mut h = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    // SAFETY: valid header and data array.
    unsafe {
        syscall6(
            libc::SYS_capset,
            [(&raw mut h) as u64, d.as_ptr() as u64, 0, 0, 0, 0],
        )
    }
    .or_fail("capset")?;
    Ok(())
}

fn bit(cap: u32) -> u32 {
    1 << (cap % 32)
}

fn caps00(t: &mut Ctx) -> Res {
    let mut d = capget()?;
    d[0].permitted &= !(bit(CAP_NET_RAW) | bit(CAP_MKNOD));
    d[0].effective = d[0].permitted & !bit(CAP_KILL);
    d[0].inheritable = bit(CAP_CHOWN) | bit(CAP_SETUID);
    d[1].inheritable = 0;
    capset(d)?;
    let want = capget()?;
    t.wait("dropped CAP_DAC_OVERRIDE from the effective set", || {
        let mut e = capget()?;
        e[0].effective &= !bit(CAP_DAC_OVERRIDE);
        capset(e)
    })?;
    ensure_eq!("capabilities", capget()?, want);
    ensure_eq!(
        "low permitted word has no NET_RAW",
        want[0].permitted & bit(CAP_NET_RAW),
        0
    );
    Ok(())
}

fn caps_ambient(t: &mut Ctx) -> Res {
    let mut d = capget()?;
    d[0].inheritable |= bit(CAP_NET_BIND_SERVICE) | bit(CAP_CHOWN);
    capset(d)?;
    for c in [CAP_NET_BIND_SERVICE, CAP_CHOWN] {
        prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_RAISE as u64,
            u64::from(c),
            0,
            0,
        )
        .or_fail("PR_CAP_AMBIENT_RAISE")?;
    }
    t.wait("cleared the ambient set", || {
        prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as u64,
            0,
            0,
            0,
        )
        .or_fail("clear")
        .map(drop)
    })?;
    for c in 0..41 {
        let set = prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_IS_SET as u64,
            c,
            0,
            0,
        )
        .or_fail("IS_SET")?;
        let want = c == u64::from(CAP_NET_BIND_SERVICE) || c == u64::from(CAP_CHOWN);
        ensure_eq!(format!("ambient capability {c}"), set == 1, want);
    }
    Ok(())
}

fn capbset(t: &mut Ctx) -> Res {
    let dropped = [CAP_SYS_BOOT, CAP_AUDIT_WRITE, CAP_MKNOD];
    for c in dropped {
        prctl(libc::PR_CAPBSET_DROP, u64::from(c), 0, 0, 0).or_fail("PR_CAPBSET_DROP")?;
    }
    let bnd = self_status("CapBnd")?;
    t.wait("dropped CAP_SYS_TIME too", || {
        prctl(libc::PR_CAPBSET_DROP, u64::from(CAP_SYS_TIME), 0, 0, 0)
            .or_fail("drop")
            .map(drop)
    })?;
    for c in dropped {
        ensure_eq!(
            format!("bounding set has {c}"),
            prctl(libc::PR_CAPBSET_READ, u64::from(c), 0, 0, 0).or_fail("read")?,
            0
        );
    }
    ensure_eq!("CapBnd", self_status("CapBnd")?, bnd);
    Ok(())
}

fn securebits(t: &mut Ctx) -> Res {
    const KEEP_CAPS: u64 = 1 << 4;
    const NO_SETUID_FIXUP: u64 = 1 << 2;
    const NOROOT: u64 = 1;
    prctl(
        libc::PR_SET_SECUREBITS,
        KEEP_CAPS | NO_SETUID_FIXUP,
        0,
        0,
        0,
    )
    .or_fail("PR_SET_SECUREBITS")?;
    t.wait("set SECBIT_NOROOT too", || {
        prctl(
            libc::PR_SET_SECUREBITS,
            KEEP_CAPS | NO_SETUID_FIXUP | NOROOT,
            0,
            0,
            0,
        )
        .or_fail("set")
        .map(drop)
    })?;
    let got = prctl(libc::PR_GET_SECUREBITS, 0, 0, 0, 0).or_fail("PR_GET_SECUREBITS")?;
    ensure_eq!(
        "securebits",
        format!("{got:#x}"),
        format!("{:#x}", KEEP_CAPS | NO_SETUID_FIXUP)
    );
    Ok(())
}

/// A filter allowing everything: installing it changes the seccomp mode.
fn allow_all_filter() -> Vec<libc::sock_filter> {
    vec![libc::sock_filter {
        code: 0x06,
        jt: 0,
        jf: 0,
        k: libc::SECCOMP_RET_ALLOW,
    }]
}

fn install(filter: &[libc::sock_filter]) -> Res {
    let prog = libc::sock_fprog {
        len: u16::try_from(filter.len()).unwrap_or(0),
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: a valid program for the duration of the call (the kernel copies it).
    unsafe {
        syscall6(
            libc::SYS_seccomp,
            [
                u64::from(libc::SECCOMP_SET_MODE_FILTER),
                0,
                (&raw const prog) as u64,
                0,
                0,
                0,
            ],
        )
    }
    .or_fail("seccomp(SET_MODE_FILTER)")
    .map(drop)
}

fn no_new_privs(t: &mut Ctx) -> Res {
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0).or_fail("PR_SET_NO_NEW_PRIVS")?;
    t.wait("installed an allow-all seccomp filter", || {
        install(&allow_all_filter())
    })?;
    ensure_eq!(
        "no_new_privs",
        prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0).or_fail("get")?,
        1
    );
    ensure_eq!("Seccomp mode", self_status("Seccomp")?, "0");
    Ok(())
}

fn seccomp_filter(t: &mut Ctx) -> Res {
    // Load the syscall number; uname -> ERRNO(77); everything else allowed.
    let nr = u32::try_from(libc::SYS_uname).unwrap_or(63);
    let prog = vec![
        libc::sock_filter {
            code: 0x20,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: 0x15,
            jt: 0,
            jf: 1,
            k: nr,
        },
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | 77,
        },
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        },
    ];
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0).or_fail("PR_SET_NO_NEW_PRIVS")?;
    install(&prog)?;
    t.wait("stacked a second filter", || install(&allow_all_filter()))?;
    ensure_eq!("Seccomp mode", self_status("Seccomp")?, "2");
    ensure_eq!("Seccomp_filters", self_status("Seccomp_filters")?, "1");
    // SAFETY: plain old data.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: valid out pointer.
    let r = unsafe { libc::uname(&raw mut u) };
    ensure!(r == -1, "uname succeeded; the filter is gone");
    ensure_eq!("uname errno", nix::errno::Errno::last_raw(), 77);
    Ok(())
}
