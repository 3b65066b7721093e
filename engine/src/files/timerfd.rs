//! timerfd: clock, time left, interval, settime flags and the expirations
//! not yet read (`timerfd_entry` in `files.img`), all from fdinfo. The
//! restore arms a new timerfd with the time left (absolute timers at now plus
//! the time left) and puts the ticks back with TFD_IOC_SET_TICKS.

use stasis_kernel as kernel;
use std::os::fd::{AsFd, OwnedFd};

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use stasis_proto::images::file_entry::Kind;
use stasis_proto::images::{FownEntry, TimerfdEntry};

use crate::error::{EngineError as Error, Result};
use crate::files::{FdCtx, FileKind, OpenCtx, Table};
use crate::images::img;

/// timerfd files.
#[derive(Debug)]
pub struct Timerfd;

/// fdinfo line `key` of `info`.
fn field<'a>(cx: &FdCtx<'_>, info: &'a str, key: &str) -> Result<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
        .ok_or_else(|| cx.format_err(key))
}

/// `(sec, nsec)` as fdinfo prints a timespec.
fn pair(cx: &FdCtx<'_>, info: &str, key: &str) -> Result<(u64, u64)> {
    let v = field(cx, info, key)?;
    v.trim_start_matches('(')
        .trim_end_matches(')')
        .split_once(',')
        .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)))
        .ok_or_else(|| cx.format_err(key))
}

fn clock(id: u32) -> Option<ClockId> {
    Some(match i32::try_from(id).ok()? {
        libc::CLOCK_REALTIME => ClockId::CLOCK_REALTIME,
        libc::CLOCK_MONOTONIC => ClockId::CLOCK_MONOTONIC,
        libc::CLOCK_BOOTTIME => ClockId::CLOCK_BOOTTIME,
        libc::CLOCK_REALTIME_ALARM => ClockId::CLOCK_REALTIME_ALARM,
        libc::CLOCK_BOOTTIME_ALARM => ClockId::CLOCK_BOOTTIME_ALARM,
        _ => return None,
    })
}

fn ts(sec: u64, nsec: u64) -> TimeSpec {
    TimeSpec::new(
        i64::try_from(sec).unwrap_or(i64::MAX),
        i64::try_from(nsec).unwrap_or(0),
    )
}

impl FileKind for Timerfd {
    type Entry = TimerfdEntry;
    const NAME: &'static str = "timerfd";
    const ANON_LINK: Option<&'static str> = Some("[timerfd]");

    fn set_id(e: &mut TimerfdEntry, id: u32) {
        e.id = id;
    }

    fn dump(cx: &FdCtx<'_>, _table: &mut Table) -> Result<Kind> {
        // An expired periodic timer counts its expirations only when asked:
        // timerfd_gettime (on a copy of the fd, the same file) adds them to
        // the ticks fdinfo shows and re-arms it, reading nothing.
        let info = cx
            .dup()
            .and_then(|f| {
                kernel::timer::timerfd_gettime(f.as_fd())?;
                Ok(f)
            })
            .map_err(Error::dump(
                cx.pid,
                format!("fd {} (timerfd): its expirations", cx.fd.fd),
            ))
            .and_then(|f| {
                let path = format!("/proc/self/fdinfo/{}", std::os::fd::AsRawFd::as_raw_fd(&f));
                std::fs::read_to_string(&path).map_err(|err| Error::Proc {
                    pid: cx.pid,
                    path,
                    err,
                })
            })?;
        let num = |key: &str, radix: u32| {
            field(cx, &info, key)
                .and_then(|v| u64::from_str_radix(v, radix).map_err(|_| cx.format_err(key)))
        };
        let (vsec, vnsec) = pair(cx, &info, "it_value")?;
        let (isec, insec) = pair(cx, &info, "it_interval")?;
        Ok(Kind::Tfd(TimerfdEntry {
            id: 0,
            flags: cx.flags(),
            fown: FownEntry::default(),
            clockid: u32::try_from(num("clockid", 10)?).map_err(|_| cx.format_err("clockid"))?,
            ticks: num("ticks", 10)?,
            settime_flags: u32::try_from(num("settime flags", 8)?)
                .map_err(|_| cx.format_err("settime flags"))?,
            vsec,
            vnsec,
            isec,
            insec,
        }))
    }

    fn open(e: &TimerfdEntry, cx: &mut OpenCtx<'_>) -> Result<OwnedFd> {
        let clk = clock(e.clockid).ok_or_else(|| {
            img::FILES.bad(
                0,
                format!(
                    "task {} fd {}: timerfd clock {} is not one timerfd_create accepts",
                    cx.pid, cx.fd, e.clockid
                ),
            )
        })?;
        let mut flags = TimerFlags::TFD_CLOEXEC;
        if e.flags & libc::O_NONBLOCK.cast_unsigned() != 0 {
            flags |= TimerFlags::TFD_NONBLOCK;
        }
        let tfd = TimerFd::new(clk, flags).map_err(cx.err("timerfd"))?;
        if e.vsec != 0 || e.vnsec != 0 {
            let set_flags = TimerSetTimeFlags::from_bits_truncate(e.settime_flags.cast_signed());
            let mut value = ts(e.vsec, e.vnsec);
            // fdinfo shows the time left; an absolute timer needs a date.
            if set_flags.contains(TimerSetTimeFlags::TFD_TIMER_ABSTIME) {
                let now =
                    nix::time::clock_gettime(nix::time::ClockId::from_raw(e.clockid.cast_signed()))
                        .map_err(cx.err("the timerfd's clock"))?;
                value = value + now;
            }
            let interval = ts(e.isec, e.insec);
            let exp = if interval == TimeSpec::new(0, 0) {
                Expiration::OneShot(value)
            } else {
                Expiration::IntervalDelayed(value, interval)
            };
            tfd.set(exp, set_flags).map_err(cx.err("timerfd_settime"))?;
        }
        if e.ticks > 0 {
            kernel::timer::timerfd_set_ticks(tfd.as_fd(), e.ticks)
                .map_err(cx.err("timerfd expirations (TFD_IOC_SET_TICKS)"))?;
        }
        Ok(OwnedFd::from(tfd))
    }
}
