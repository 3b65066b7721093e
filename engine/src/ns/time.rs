//! A time namespace of the tree's own: the values its monotonic and
//! boottime clocks showed at the dump (the host's clocks plus the offsets
//! of `/proc/PID/timens_offsets`), in `timens-ID.img` (CRIU's
//! `timens_entry`). The restore makes a new time namespace whose offsets
//! have those clocks go on from where they were, on this machine or
//! another: time spent dumped does not pass for the tree.

use nix::sys::time::TimeSpec;
use nix::time::{ClockId, clock_gettime};
use nix::unistd::Pid;
use stasis_proto::images::{TimensEntry, Timespec};

use crate::error::{EngineError as Error, Result};
use crate::images::{Dir, img};

const NS: i128 = 1_000_000_000;

fn nanos(t: TimeSpec) -> i128 {
    i128::from(t.tv_sec()) * NS + i128::from(t.tv_nsec())
}

fn spec(ns: i128) -> Timespec {
    let ns = ns.max(0);
    Timespec {
        tv_sec: u64::try_from(ns / NS).unwrap_or(0),
        tv_nsec: u64::try_from(ns % NS).unwrap_or(0),
    }
}

fn now(pid: Pid, clock: ClockId) -> Result<i128> {
    clock_gettime(clock)
        .map(nanos)
        .map_err(Error::dump(pid, "the host's clocks"))
}

/// The offsets of `timens_offsets` (monotonic, boottime), in nanoseconds.
fn parse_offsets(text: &str) -> Option<(i128, i128)> {
    let (mut mono, mut boot) = (None, None);
    for l in text.lines() {
        let mut f = l.split_whitespace();
        let (name, s, n) = (f.next()?, f.next()?, f.next()?);
        let v = i128::from(s.parse::<i64>().ok()?) * NS + i128::from(n.parse::<i64>().ok()?);
        match name {
            "monotonic" | "1" => mono = Some(v),
            "boottime" | "7" => boot = Some(v),
            _ => {}
        }
    }
    Some((mono?, boot?))
}

/// Dump the clocks of `root`'s time namespace.
pub(crate) fn dump(root: Pid, dir: &Dir) -> Result<()> {
    let path = format!("/proc/{root}/timens_offsets");
    let text = std::fs::read_to_string(&path).map_err(|err| Error::Proc {
        pid: root,
        path: path.clone(),
        err,
    })?;
    let (mono, boot) = parse_offsets(&text).ok_or_else(|| Error::ProcFormat {
        pid: root,
        file: "timens_offsets".into(),
    })?;
    let e = TimensEntry {
        monotonic: spec(now(root, ClockId::CLOCK_MONOTONIC)? + mono),
        boottime: spec(now(root, ClockId::CLOCK_BOOTTIME)? + boot),
    };
    dir.write_all(img::TIMENS, super::NS_ID, &[e])
}

/// Make the tree's time namespace (for the engine's children) with clocks
/// going on from the dumped values.
pub(crate) fn restore(dir: &Dir) -> Result<()> {
    if !dir.exists(img::TIMENS, super::NS_ID) {
        return Ok(());
    }
    let me = nix::unistd::getpid();
    let e: TimensEntry = dir.read_one(img::TIMENS, super::NS_ID)?;
    let want = |t: &Timespec| i128::from(t.tv_sec).saturating_mul(NS) + i128::from(t.tv_nsec);
    let mono = want(&e.monotonic) - now(me, ClockId::CLOCK_MONOTONIC)?;
    let boot = want(&e.boottime) - now(me, ClockId::CLOCK_BOOTTIME)?;
    nix::sched::unshare(nix::sched::CloneFlags::from_bits_retain(
        libc::CLONE_NEWTIME,
    ))
    .map_err(Error::restore(me, "a time namespace"))?;
    let line = |name: &str, v: i128| {
        let (s, n) = (v.div_euclid(NS), v.rem_euclid(NS));
        format!("{name} {s} {n}\n")
    };
    let text = line("monotonic", mono) + &line("boottime", boot);
    std::fs::write("/proc/self/timens_offsets", text).map_err(|err| Error::Proc {
        pid: me,
        path: "/proc/self/timens_offsets".into(),
        err,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn offsets_parse_by_name_and_by_clock_id() {
        let (m, b) = super::parse_offsets("monotonic 864000 0\nboottime -5 500\n").unwrap();
        assert_eq!(m, 864_000 * super::NS);
        assert_eq!(b, -5 * super::NS + 500);
        assert!(super::parse_offsets("monotonic 1 0\n").is_none());
    }
}
