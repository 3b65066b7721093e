//! Timers of a process (`task_timers_entry` in the leader's core): the three
//! interval timers and POSIX timers. Dump reads `/proc/PID/timers` for each
//! POSIX timer's id, clock, signal and target, and asks the task for the
//! remaining time and overrun; restore re-creates every timer with its own id
//! and re-arms it. Linux 6.17 and later take the id asked for
//! (`PR_TIMER_CREATE_RESTORE_IDS`); older kernels hand out ids in rising
//! order from a per-process cursor, so timers are created in id order and
//! each id below the one wanted is taken and given back.

use nix::unistd::Pid;
use stasis_arch::native::nr;
use stasis_proto::images::{ItimerEntry, PosixTimerEntry, TaskTimersEntry};

use crate::error::{EngineError as Error, Result};
use crate::task::remote::{self, Remote, read_words, words};

const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;
const SIGEV_SIGNAL: u32 = 0;
const SIGEV_NONE: u32 = 1;
const SIGEV_THREAD: u32 = 2;
const SIGEV_THREAD_ID: u32 = 4;

/// One timer as `/proc/PID/timers` lists it.
#[derive(Debug, Default, PartialEq, Eq)]
struct Listed {
    id: u32,
    signo: u32,
    sival: u64,
    notify: u32,
    target: i32,
    clock: u32,
}

/// Parse `/proc/PID/timers`: blocks of `ID:`, `signal: N/PTR`,
/// `notify: KIND/pid.N` or `KIND/tid.N`, `ClockID:`.
fn parse(pid: Pid, text: &str) -> Result<Vec<Listed>> {
    let bad = || Error::ProcFormat {
        pid,
        file: "timers".into(),
    };
    let mut out: Vec<Listed> = Vec::new();
    for line in text.lines() {
        let (key, val) = line.split_once(':').ok_or_else(bad)?;
        let val = val.trim();
        if key == "ID" {
            out.push(Listed {
                id: val.parse().map_err(|_| bad())?,
                ..Listed::default()
            });
            continue;
        }
        let t = out.last_mut().ok_or_else(bad)?;
        match key {
            "signal" => {
                let (n, p) = val.split_once('/').ok_or_else(bad)?;
                t.signo = n.parse().map_err(|_| bad())?;
                t.sival = u64::from_str_radix(p.trim_start_matches("0x"), 16).unwrap_or(0);
            }
            "notify" => {
                let (kind, who) = val.split_once('/').ok_or_else(bad)?;
                let base = match kind {
                    "signal" => SIGEV_SIGNAL,
                    "none" => SIGEV_NONE,
                    "thread" => SIGEV_THREAD,
                    _ => return Err(bad()),
                };
                let (scope, n) = who.split_once('.').ok_or_else(bad)?;
                t.notify = base | if scope == "tid" { SIGEV_THREAD_ID } else { 0 };
                t.target = n.parse().map_err(|_| bad())?;
            }
            // CPU-time clocks of a process or thread are negative ids.
            "ClockID" => t.clock = val.parse::<i32>().map_err(|_| bad())?.cast_unsigned(),
            _ => {}
        }
    }
    Ok(out)
}

/// The getitimer calls for the three itimers, answers at `at` (32 bytes
/// each), for a batch; [`itimers_at`] reads the answers.
pub fn itimer_calls(at: u64) -> [(&'static str, u64, [u64; 6]); 3] {
    [0u64, 1, 2].map(|which| {
        (
            "getitimer",
            nr::GETITIMER,
            [which, at + 32 * which, 0, 0, 0, 0],
        )
    })
}

/// The three itimers the calls of [`itimer_calls`] left at `at`.
pub fn itimers_at(pid: Pid, at: u64) -> Result<[ItimerEntry; 3]> {
    let w = read_words::<12>(pid, at)?;
    let one = |k: usize| ItimerEntry {
        isec: w[4 * k],
        iusec: w[4 * k + 1],
        vsec: w[4 * k + 2],
        vusec: w[4 * k + 3],
    };
    Ok([one(0), one(1), one(2)])
}

/// The timers of the process whose leader is under `r`; its itimers were
/// read by the caller's batch.
pub fn dump(
    pid: Pid,
    r: &Remote,
    scratch: u64,
    itimers: [ItimerEntry; 3],
) -> Result<TaskTimersEntry> {
    let [real, virt, prof] = itimers;
    let path = format!("/proc/{pid}/timers");
    let text = std::fs::read_to_string(&path).map_err(|err| Error::Proc { pid, path, err })?;
    let mut posix = Vec::new();
    for t in parse(pid, &text)? {
        let id = u64::from(t.id);
        r.call(
            "timer_gettime",
            nr::TIMER_GETTIME,
            [id, scratch, 0, 0, 0, 0],
        )?;
        let [isec, insec, vsec, vnsec] = read_words::<4>(pid, scratch)?;
        let overrun = r.call(
            "timer_getoverrun",
            nr::TIMER_GETOVERRUN,
            [id, 0, 0, 0, 0, 0],
        )?;
        posix.push(PosixTimerEntry {
            it_id: t.id,
            clock_id: t.clock,
            si_signo: t.signo,
            it_sigev_notify: t.notify,
            sival_ptr: t.sival,
            overrun: u32::try_from(overrun).unwrap_or(u32::MAX),
            isec,
            insec,
            vsec,
            vnsec,
            notify_thread_id: (t.notify & SIGEV_THREAD_ID != 0).then_some(t.target),
        });
    }
    Ok(TaskTimersEntry {
        real,
        virt,
        prof,
        posix,
    })
}

/// A POSIX timer whose signal is queued and not yet taken: the kernel
/// counts further expirations as overruns of that queued signal. A copy of
/// the siginfo queued on restore would not count them, so the signal is left
/// out of the image and the timer is set to expire at once on restore: the
/// kernel queues its own signal again and counts overruns from there.
/// Returns the signals that stay.
pub fn absorb_pending(t: &mut TaskTimersEntry, queue: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    const SI_TIMER: i32 = -2;
    let int_at = |b: &[u8], off: usize| {
        b.get(off..off + 4)
            .map_or(0, |w| i32::from_ne_bytes([w[0], w[1], w[2], w[3]]))
    };
    queue
        .into_iter()
        .filter(|info| {
            if int_at(info, 8) != SI_TIMER {
                return true;
            }
            let id = int_at(info, 16).cast_unsigned();
            match t.posix.iter_mut().find(|p| p.it_id == id) {
                Some(p) => {
                    (p.vsec, p.vnsec) = (0, 1);
                    false
                }
                None => true,
            }
        })
        .collect()
}

/// Arm the interval timers again (leader's remote `r`, scratch at `data`).
pub fn restore_itimers(r: &Remote, t: &TaskTimersEntry, data: u64) -> Result<()> {
    for (which, it) in [(0u64, &t.real), (1, &t.virt), (2, &t.prof)] {
        if it.vsec == 0 && it.vusec == 0 {
            continue;
        }
        remote::write_mem(r.tid, data, &words(&[it.isec, it.iusec, it.vsec, it.vusec]))?;
        r.call("setitimer", nr::SETITIMER, [which, data, 0, 0, 0, 0])?;
    }
    Ok(())
}

/// Re-create the POSIX timers with their ids, once every thread exists (a
/// timer may signal one of them). `data` is scratch memory in the task.
pub fn restore_posix(r: &Remote, t: &TaskTimersEntry, data: u64) -> Result<()> {
    if t.posix.is_empty() {
        return Ok(());
    }
    let pid = r.tid;
    let by_id = r.call_raw(
        "prctl(PR_TIMER_CREATE_RESTORE_IDS)",
        nr::PRCTL,
        [PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0, 0],
    )?;
    if by_id == -i64::from(libc::EINVAL) {
        // Before Linux 6.17: ids come from the cursor.
        create_in_order(r, t, data)?;
    } else {
        r.result("prctl(PR_TIMER_CREATE_RESTORE_IDS)", by_id)?;
        let res = create_all(r, t, data);
        r.call(
            "prctl(PR_TIMER_CREATE_RESTORE_IDS)",
            nr::PRCTL,
            [PR_TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0, 0],
        )?;
        res?;
    }
    for p in &t.posix {
        if p.vsec == 0 && p.vnsec == 0 {
            continue;
        }
        remote::write_mem(pid, data, &words(&[p.isec, p.insec, p.vsec, p.vnsec]))?;
        r.call(
            "timer_settime",
            nr::TIMER_SETTIME,
            [u64::from(p.it_id), 0, data, 0, 0, 0],
        )?;
    }
    Ok(())
}

/// Create timer `p` in the task (its id in, and the kernel's id out, at
/// `data + 64`); the id the kernel gave.
fn create_one(r: &Remote, p: &PosixTimerEntry, data: u64) -> Result<u32> {
    let pid = r.tid;
    // struct sigevent: value, signo, notify, target thread; 64 bytes.
    let mut ev = [0u8; 64];
    ev[..8].copy_from_slice(&p.sival_ptr.to_ne_bytes());
    ev[8..12].copy_from_slice(&p.si_signo.to_ne_bytes());
    ev[12..16].copy_from_slice(&p.it_sigev_notify.to_ne_bytes());
    ev[16..20].copy_from_slice(&p.notify_thread_id.unwrap_or(0).to_ne_bytes());
    remote::write_mem(pid, data, &ev)?;
    remote::write_mem(pid, data + 64, &p.it_id.to_ne_bytes())?;
    r.call(
        "timer_create",
        nr::TIMER_CREATE,
        [u64::from(p.clock_id), data, data + 64, 0, 0, 0],
    )?;
    let mut got = [0u8; 4];
    remote::read_mem(pid, data + 64, &mut got)?;
    Ok(u32::from_ne_bytes(got))
}

/// With `PR_TIMER_CREATE_RESTORE_IDS` on: each timer gets the id it asks for.
fn create_all(r: &Remote, t: &TaskTimersEntry, data: u64) -> Result<()> {
    for p in &t.posix {
        let got = create_one(r, p, data)?;
        if got != p.it_id {
            return Err(Error::Restore {
                pid: r.tid,
                what: format!("POSIX timer {}: the kernel gave id {got}", p.it_id),
                errno: nix::errno::Errno::EEXIST,
            });
        }
    }
    Ok(())
}

/// Ids a restore walks past to reach a timer's id on a kernel without
/// `PR_TIMER_CREATE_RESTORE_IDS` (each costs a create and a delete).
const MAX_ID_GAP: u32 = 1 << 16;

/// Without `PR_TIMER_CREATE_RESTORE_IDS`: the fresh process's cursor starts
/// at 0 and only rises, so create the timers in id order and give back
/// every id below the one wanted.
fn create_in_order(r: &Remote, t: &TaskTimersEntry, data: u64) -> Result<()> {
    let mut order: Vec<&PosixTimerEntry> = t.posix.iter().collect();
    order.sort_by_key(|p| p.it_id);
    for p in order {
        let mut walked = 0;
        loop {
            let got = create_one(r, p, data)?;
            if got == p.it_id {
                break;
            }
            r.call(
                "timer_delete",
                nr::TIMER_DELETE,
                [u64::from(got), 0, 0, 0, 0, 0],
            )?;
            walked += 1;
            if got > p.it_id || walked > MAX_ID_GAP {
                return Err(Error::Restore {
                    pid: r.tid,
                    what: format!(
                        "POSIX timer {}: this kernel (before Linux 6.17) hands out ids \
                         in order and gave {got}; restore on Linux 6.17 or later to \
                         get any id back",
                        p.it_id
                    ),
                    errno: nix::errno::Errno::EEXIST,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_timers() {
        let text = "ID: 0\nsignal: 14/0000000000000abc\nnotify: signal/pid.100\nClockID: 1\n\
                    ID: 3\nsignal: 34/0000000000000000\nnotify: signal/tid.102\nClockID: 0\n\
                    ID: 4\nsignal: 0/0000000000000000\nnotify: none/pid.100\nClockID: -6\n";
        let got = parse(Pid::from_raw(100), text).expect("parses");
        assert_eq!(
            got,
            vec![
                Listed {
                    id: 0,
                    signo: 14,
                    sival: 0xabc,
                    notify: SIGEV_SIGNAL,
                    target: 100,
                    clock: 1
                },
                Listed {
                    id: 3,
                    signo: 34,
                    sival: 0,
                    notify: SIGEV_SIGNAL | SIGEV_THREAD_ID,
                    target: 102,
                    clock: 0
                },
                Listed {
                    id: 4,
                    signo: 0,
                    sival: 0,
                    notify: SIGEV_NONE,
                    target: 100,
                    clock: (-6i32).cast_unsigned()
                },
            ]
        );
        parse(Pid::from_raw(1), "signal: 1/0\n").expect_err("a line before any ID:");
    }
}
