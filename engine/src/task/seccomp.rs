//! Seccomp filters of threads: the BPF programs of every thread's filter
//! chain (`seccomp.img`, shared chains stored once) and each thread's mode
//! and newest filter (`seccomp_mode`, `seccomp_filter` in its core). Dump
//! reads them with PTRACE_SECCOMP_GET_FILTER; restore installs them oldest
//! first inside the thread, with the filters suspended for the engine's own
//! remaining calls (PTRACE_O_SUSPEND_SECCOMP).

use nix::errno::Errno;
use nix::sys::ptrace::{self, Options};
use nix::unistd::Pid;
use stasis_arch::native::nr;
use stasis_kernel as kernel;
use stasis_proto::images::{SeccompEntry, SeccompFilter};

use crate::error::{EngineError as Error, Result};
use crate::images::Dir;
use crate::images::img;
use crate::proc;
use crate::task::remote::{self, Remote};

/// `seccomp_mode` values.
pub mod mode {
    /// No seccomp.
    pub const DISABLED: i32 = 0;
    /// SECCOMP_MODE_STRICT.
    pub const STRICT: i32 = 1;
    /// SECCOMP_MODE_FILTER.
    pub const FILTER: i32 = 2;
}

const SECCOMP_SET_MODE_STRICT: u64 = 0;
const SECCOMP_SET_MODE_FILTER: u64 = 1;

/// The seccomp mode of a thread as /proc shows it.
pub fn mode_of(pid: Pid, tid: Pid) -> Result<i32> {
    let st = proc::status(pid, Some(tid))?;
    Ok(st
        .get("Seccomp")
        .and_then(|m| m.parse().ok())
        .unwrap_or(mode::DISABLED))
}

/// Ptrace options for a tracee whose seccomp mode is `mode`: seccomp
/// suspended when it has filters, so that the engine's remote calls are not
/// filtered.
pub fn options(mode: i32, base: Options) -> Options {
    if mode != mode::DISABLED {
        base | Options::from_bits_retain(libc::PTRACE_O_SUSPEND_SECCOMP)
    } else {
        base
    }
}

/// The filters of a dump or a restore.
#[derive(Debug, Default)]
pub struct Table {
    filters: Vec<SeccompFilter>,
}

impl Table {
    /// The index of the newest filter of thread `tid`, whose mode is `m`
    /// (as read when it was seized: a frozen thread cannot change it).
    pub fn dump_thread(&mut self, tid: Pid, m: i32) -> Result<(i32, Option<u32>)> {
        if m != mode::FILTER {
            return Ok((m, None));
        }
        let mut chain = Vec::new();
        for i in 0.. {
            match kernel::ptrace::seccomp_filter(tid, i) {
                Ok(f) => chain.push(f),
                Err(Errno::ENOENT) => break,
                Err(errno) => return Err(Error::ptrace(tid, "SECCOMP_GET_FILTER")(errno)),
            }
        }
        let mut prev = None;
        for (bytes, flags) in chain.into_iter().rev() {
            let f = SeccompFilter {
                filter: bytes,
                prev,
                flags: u32::try_from(flags).ok().filter(|&f| f != 0),
            };
            let idx = match self.filters.iter().position(|g| *g == f) {
                Some(i) => i,
                None => {
                    self.filters.push(f);
                    self.filters.len() - 1
                }
            };
            prev = u32::try_from(idx).ok();
        }
        Ok((m, prev))
    }

    /// Write `seccomp.img` (only when some thread has filters).
    pub fn write(&self, dir: &Dir) -> Result<()> {
        if self.filters.is_empty() {
            return Ok(());
        }
        dir.write_all(
            img::SECCOMP,
            0,
            &[SeccompEntry {
                seccomp_filters: self.filters.clone(),
            }],
        )
    }

    /// Load `seccomp.img` if there is one.
    pub fn load(dir: &Dir) -> Result<Table> {
        if !dir.exists(img::SECCOMP, 0) {
            return Ok(Table::default());
        }
        let e: SeccompEntry = dir.read_one(img::SECCOMP, 0)?;
        Ok(Table {
            filters: e.seccomp_filters,
        })
    }

    /// The chain ending at filter `newest`, oldest first.
    fn chain(&self, newest: u32) -> Result<Vec<&SeccompFilter>> {
        let mut out = Vec::new();
        let mut at = Some(newest);
        while let Some(i) = at {
            let f = usize::try_from(i)
                .ok()
                .and_then(|i| self.filters.get(i))
                .filter(|_| out.len() <= self.filters.len())
                .ok_or_else(|| {
                    img::SECCOMP.bad(0, format!("filter {i} is missing or its chain loops"))
                })?;
            out.push(f);
            at = f.prev;
        }
        out.reverse();
        Ok(out)
    }

    /// Install the seccomp state of the thread under `r`; `data` is scratch
    /// memory in the task (room for the largest program, 32 KiB).
    pub fn restore_thread(
        &self,
        r: &Remote,
        m: Option<i32>,
        newest: Option<u32>,
        data: u64,
    ) -> Result<()> {
        let tid = r.tid;
        let m = m.unwrap_or(mode::DISABLED);
        if m == mode::DISABLED {
            return Ok(());
        }
        ptrace::setoptions(
            tid,
            Options::PTRACE_O_TRACESYSGOOD
                | Options::PTRACE_O_TRACECLONE
                | Options::from_bits_retain(libc::PTRACE_O_SUSPEND_SECCOMP),
        )
        .map_err(Error::ptrace(tid, "SETOPTIONS(SUSPEND_SECCOMP)"))?;
        if m == mode::STRICT {
            r.call(
                "seccomp(SET_MODE_STRICT)",
                nr::SECCOMP,
                [SECCOMP_SET_MODE_STRICT, 0, 0, 0, 0, 0],
            )?;
            return Ok(());
        }
        let newest =
            newest.ok_or_else(|| img::CORE.bad(tid, "seccomp filter mode without a filter"))?;
        for f in self.chain(newest)? {
            let prog = data + super::trampoline::layout::SECCOMP_PROG;
            remote::write_mem(tid, data, &f.filter)?;
            let len = u16::try_from(f.filter.len() / 8)
                .map_err(|_| img::SECCOMP.bad(0, "a filter longer than BPF allows"))?;
            let mut fprog = [0u8; 16];
            fprog[..2].copy_from_slice(&len.to_ne_bytes());
            fprog[8..].copy_from_slice(&data.to_ne_bytes());
            remote::write_mem(tid, prog, &fprog)?;
            r.call(
                "seccomp(SET_MODE_FILTER)",
                nr::SECCOMP,
                [
                    SECCOMP_SET_MODE_FILTER,
                    u64::from(f.flags.unwrap_or(0)),
                    prog,
                    0,
                    0,
                    0,
                ],
            )?;
        }
        Ok(())
    }
}
