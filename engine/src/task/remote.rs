//! Acting inside a ptrace-stopped thread: system calls executed in its context
//! (registers set to a `syscall` instruction, run from syscall-entry to
//! syscall-exit stop with `PTRACE_SYSCALL`, so the instruction after it never
//! runs and no signal is involved), and reading and writing its memory.

use stasis_kernel as kernel;
use std::fs::File;
use std::io::IoSliceMut;
use std::os::unix::fs::FileExt;

use nix::errno::Errno;
use nix::sys::ptrace;
use nix::sys::uio::{RemoteIoVec, process_vm_readv, process_vm_writev};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use stasis_arch::native::{Regs, nr};

use crate::error::{EngineError as Error, Result};

/// One remote system call: a name for messages, its number, its arguments.
pub type Call = (&'static str, u64, [u64; 6]);

/// Wait for the next stop of a traced thread.
pub fn wait(tid: Pid, op: &'static str) -> Result<WaitStatus> {
    tracing::trace!(%tid, op, "waiting for a stop");
    loop {
        match waitpid(tid, Some(WaitPidFlag::__WALL)) {
            Err(Errno::EINTR) => {}
            Err(errno) => return Err(Error::Ptrace { tid, op, errno }),
            Ok(s @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => {
                return Err(Error::TaskDied {
                    pid: tid,
                    step: op,
                    status: format!(" ({s:?})"),
                });
            }
            Ok(s) => return Ok(s),
        }
    }
}

/// A thread in a ptrace stop, driven through system calls.
#[derive(Debug)]
pub struct Remote {
    /// The thread.
    pub tid: Pid,
    /// Registers the syscalls start from (the thread's own, saved by the caller).
    base: Regs,
    /// Address of a `syscall` instruction mapped executable in the task.
    insn: u64,
    /// Whether a breakpoint (`int3`) follows the instruction: then a call is
    /// one resume and one stop instead of two of each.
    trap: bool,
    /// Where [`stasis_arch::native::SYSCALL_BATCH`] is mapped, and room for its
    /// table (up to [`BATCH_MAX`] calls), if anywhere.
    batch: Option<(u64, u64)>,
}

/// Calls one batch runs at most (its table is 8 words a call, one page).
pub const BATCH_MAX: usize = 63;
/// Bytes of the batch page a batch may use: the rest holds the arguments
/// of a single call that takes them in memory.
const BATCH_ROOM: usize = 8 + 64 * BATCH_MAX;

/// Whether syscall `nr` takes its arguments in memory (old mmap on s390x).
fn in_memory(nr: u64) -> bool {
    stasis_arch::native::MMAP_TAKES_STRUCT && nr == nr::MMAP
}

impl Remote {
    /// Drive `tid`, whose registers are `base`, through the `syscall`
    /// instruction at `insn`, from syscall-entry to syscall-exit stop.
    pub fn new(tid: Pid, base: Regs, insn: u64) -> Remote {
        Remote {
            tid,
            base,
            insn,
            trap: false,
            batch: None,
        }
    }

    /// Run batches of calls with the code at `code` and a table at `table`
    /// (one page, writable), both mapped in the task.
    #[must_use]
    pub fn with_batch(self, code: u64, table: u64) -> Remote {
        Remote {
            batch: Some((code, table)),
            ..self
        }
    }

    /// Run `calls` (name, nr, args) and return each raw result, in one stop
    /// when a batch area is set up; a failing call does not stop the others.
    pub fn call_many(&self, calls: &[Call]) -> Result<Vec<i64>> {
        let Some((code, table)) = self.batch else {
            return calls
                .iter()
                .map(|(name, nr, args)| self.call_raw(name, *nr, *args))
                .collect();
        };
        let mut out = Vec::with_capacity(calls.len());
        let mut rest = calls;
        while !rest.is_empty() {
            // Where mmap takes its arguments in memory, they go after the
            // entries: fewer calls fit.
            let (mut k, mut structs) = (0, 0);
            while k < rest.len() && k < BATCH_MAX {
                let s = usize::from(in_memory(rest[k].1));
                if 8 + 64 * (k + 1) + 48 * (structs + s) > BATCH_ROOM {
                    break;
                }
                k += 1;
                structs += s;
            }
            let (chunk, tail) = rest.split_at(k.max(1));
            rest = tail;
            let args_at = table + 8 + 64 * chunk.len() as u64;
            let mut words = vec![chunk.len() as u64];
            let mut args_words = Vec::new();
            for (_, nr, args) in chunk {
                words.push(*nr);
                if in_memory(*nr) {
                    words.extend_from_slice(&[
                        args_at + 8 * args_words.len() as u64,
                        0,
                        0,
                        0,
                        0,
                        0,
                    ]);
                    args_words.extend_from_slice(args);
                } else {
                    words.extend_from_slice(args);
                }
                words.push(0);
            }
            words.extend_from_slice(&args_words);
            write_mem(self.tid, table, &self::words(&words))?;
            let tid = self.tid;
            kernel::ptrace::setregs(
                tid,
                &stasis_arch::native::for_batch(&self.base, code, table),
            )
            .map_err(Error::ptrace(tid, "SETREGS"))?;
            self.run_to_trap(chunk.first().map_or("a batch", |c| c.0))?;
            let mut res = vec![0u8; 64 * chunk.len()];
            read_mem(tid, table + 8, &mut res)?;
            out.extend(res.chunks_exact(64).map(|e| {
                let mut w = [0u8; 8];
                w.copy_from_slice(&e[56..64]);
                i64::from_ne_bytes(w)
            }));
        }
        Ok(out)
    }

    /// As [`Remote::call_many`], failing with the first call that failed.
    pub fn call_all(&self, calls: &[Call]) -> Result<Vec<u64>> {
        let res = self.call_many(calls)?;
        res.iter()
            .zip(calls)
            .map(|(&r, (name, _, _))| self.result(name, r))
            .collect()
    }

    /// A raw syscall result as a result: -4095..-1 is an errno.
    pub fn result(&self, name: &'static str, r: i64) -> Result<u64> {
        if (-4095..0).contains(&r) {
            return Err(Error::Remote {
                tid: self.tid,
                syscall: name,
                errno: Errno::from_raw(i32::try_from(-r).unwrap_or(libc::EINVAL)),
            });
        }
        Ok(r.cast_unsigned())
    }

    /// Move fd `fd` of the task to number `target` (dup3 with or without
    /// close-on-exec, then close `fd`); nothing when they are the same.
    pub fn move_fd(&self, fd: u64, target: u64, cloexec: bool) -> Result<()> {
        if fd == target {
            return Ok(());
        }
        let cl = if cloexec { libc::O_CLOEXEC } else { 0 };
        self.call(
            "dup3",
            nr::DUP3,
            [fd, target, cl.cast_unsigned().into(), 0, 0, 0],
        )?;
        self.call("close", nr::CLOSE, [fd, 0, 0, 0, 0, 0]).map(drop)
    }

    /// As [`Remote::new`], where `insn` is followed by an `int3`: the thread
    /// runs the syscall and stops at the breakpoint.
    pub fn with_trap(tid: Pid, base: Regs, insn: u64) -> Remote {
        Remote {
            tid,
            base,
            insn,
            trap: true,
            batch: None,
        }
    }

    /// Run one syscall from the syscall-exit stop, never executing the
    /// instruction after it (for a call that unmaps that instruction).
    pub fn call_final(&self, name: &'static str, nr: u64, args: [u64; 6]) -> Result<u64> {
        Remote::new(self.tid, self.base, self.insn).call(name, nr, args)
    }

    /// Run one syscall and return its result; a negative result is an error.
    pub fn call(&self, name: &'static str, nr: u64, args: [u64; 6]) -> Result<u64> {
        let r = self.call_raw(name, nr, args)?;
        self.result(name, r)
    }

    /// Run one syscall and return its raw result.
    pub fn call_raw(&self, name: &'static str, nr: u64, mut args: [u64; 6]) -> Result<i64> {
        let tid = self.tid;
        if in_memory(nr) {
            // The arguments go in memory: past the batch table (its last
            // 56 bytes are free), or else below the stack pointer, which
            // the stopped thread does not use.
            let at = self.batch.map_or_else(
                || (self.base.stack_pointer() - 1024) & !15,
                |(_, table)| table + 8 + 64 * BATCH_MAX as u64,
            );
            write_mem(tid, at, &words(&args))?;
            args = [at, 0, 0, 0, 0, 0];
        }
        kernel::ptrace::setregs(tid, &self.base.for_syscall(self.insn, nr, args))
            .map_err(Error::ptrace(tid, "SETREGS"))?;
        if self.trap {
            self.run_to_trap(name)?;
        } else {
            self.step(name, true)?;
            self.step(name, false)?;
        }
        let r = kernel::ptrace::getregs(tid).map_err(Error::ptrace(tid, "GETREGS"))?;
        Ok(r.retval())
    }

    /// Resume until the breakpoint after the syscall; the SIGTRAP it raises
    /// is dropped by the next resume.
    fn run_to_trap(&self, name: &'static str) -> Result<()> {
        let tid = self.tid;
        ptrace::cont(tid, None).map_err(Error::ptrace(tid, "CONT"))?;
        for _ in 0..16 {
            match wait(tid, name)? {
                WaitStatus::Stopped(_, nix::sys::signal::Signal::SIGTRAP) => return Ok(()),
                // A remote clone reports the new thread; a stopped job its
                // group stop: go on.
                WaitStatus::PtraceEvent(_, _, ev)
                    if ev == libc::PTRACE_EVENT_CLONE || ev == libc::PTRACE_EVENT_STOP =>
                {
                    ptrace::cont(tid, None).map_err(Error::ptrace(tid, "CONT"))?;
                }
                other => {
                    return Err(Error::Unexpected {
                        tid,
                        op: name,
                        what: format!("{other:?}"),
                    });
                }
            }
        }
        Err(Error::Unexpected {
            tid,
            op: name,
            what: "no breakpoint stop after 16 events".into(),
        })
    }

    /// Resume to the next syscall stop (entry or exit).
    fn step(&self, name: &'static str, entry: bool) -> Result<()> {
        let tid = self.tid;
        let unexpected = |what: String| Error::Unexpected {
            tid,
            op: name,
            what,
        };
        ptrace::syscall(tid, None).map_err(Error::ptrace(tid, "SYSCALL"))?;
        let mut status = wait(tid, name)?;
        // A task seized in a group stop (a stopped job) reports that stop
        // again when first resumed: resume it once more.
        for _ in 0..8 {
            match status {
                WaitStatus::PtraceEvent(_, _, ev) if ev == libc::PTRACE_EVENT_STOP && entry => {
                    ptrace::syscall(tid, None).map_err(Error::ptrace(tid, "SYSCALL"))?;
                    status = wait(tid, name)?;
                }
                _ => break,
            }
        }
        match status {
            WaitStatus::PtraceSyscall(_) => Ok(()),
            // A remote clone reports the new thread before its exit stop.
            WaitStatus::PtraceEvent(_, _, ev) if ev == libc::PTRACE_EVENT_CLONE && !entry => {
                ptrace::syscall(tid, None).map_err(Error::ptrace(tid, "SYSCALL"))?;
                match wait(tid, name)? {
                    WaitStatus::PtraceSyscall(_) => Ok(()),
                    other => Err(unexpected(format!("{other:?}"))),
                }
            }
            other => Err(unexpected(format!("{other:?}"))),
        }
    }
}

/// `N` native-endian words of a task's memory at `addr`.
pub fn read_words<const N: usize>(pid: Pid, addr: u64) -> Result<[u64; N]> {
    let mut b = vec![0u8; 8 * N];
    read_mem(pid, addr, &mut b)?;
    let mut out = [0u64; N];
    for (o, c) in out.iter_mut().zip(b.chunks_exact(8)) {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        *o = u64::from_ne_bytes(w);
    }
    Ok(out)
}

/// The C `int` stored at the start of an 8-byte slot read as the word `w`
/// (its low half on little-endian machines, its high half on s390x).
pub fn int_in_word(w: u64) -> u32 {
    let b = w.to_ne_bytes();
    u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
}

/// The 8-byte slot holding the C `int` `v` at its start (see [`int_in_word`]).
pub fn word_with_int(v: u32) -> u64 {
    let b = v.to_ne_bytes();
    u64::from_ne_bytes([b[0], b[1], b[2], b[3], 0, 0, 0, 0])
}

/// Words as the native-endian bytes a task reads.
pub fn words(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|w| w.to_ne_bytes()).collect()
}

fn errno_of(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Write into a task's memory through /proc/PID/mem: also where the task
/// may not write itself, and, for instructions, with the instruction cache
/// flushed where the CPU needs it (arm64, POWER), unlike process_vm_writev.
pub fn write_code(pid: Pid, addr: u64, code: &[u8]) -> Result<()> {
    mem_file(pid, true)
        .and_then(|f| f.write_all_at(code, addr))
        .map_err(|e| Error::MemWrite {
            pid,
            addr,
            errno: errno_of(&e),
        })
}

fn mem_file(pid: Pid, write: bool) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .open(format!("/proc/{pid}/mem"))
}

/// Read `buf.len()` bytes of a task's memory at `addr`. Pages the task cannot
/// read itself (PROT_NONE) are read through /proc/PID/mem.
pub fn read_mem(pid: Pid, addr: u64, buf: &mut [u8]) -> Result<()> {
    let len = buf.len();
    let remote = [RemoteIoVec {
        base: usize::try_from(addr).map_err(|_| Error::MemRead {
            pid,
            addr,
            errno: Errno::EFAULT,
        })?,
        len,
    }];
    if let Ok(n) = process_vm_readv(pid, &mut [IoSliceMut::new(buf)], &remote)
        && n == len
    {
        return Ok(());
    }
    let err = |e: std::io::Error| Error::MemRead {
        pid,
        addr,
        errno: errno_of(&e),
    };
    mem_file(pid, false)
        .and_then(|f| f.read_exact_at(buf, addr))
        .map_err(err)
}

/// Most pieces one [`read_mem_v`] reads at once (the kernel's IOV_MAX).
pub const IOV_MAX: usize = 1024;

/// Read the task's `pieces` (address, length) one after another into `buf`
/// (as long as their lengths together): one process_vm_readv, or piece by
/// piece through [`read_mem`] when that comes short (unreadable pages).
pub fn read_mem_v(pid: Pid, pieces: &[(u64, usize)], buf: &mut [u8]) -> Result<()> {
    let remote: Vec<RemoteIoVec> = pieces
        .iter()
        .map(|&(a, len)| RemoteIoVec {
            base: usize::try_from(a).unwrap_or(usize::MAX),
            len,
        })
        .collect();
    if let Ok(n) = process_vm_readv(pid, &mut [IoSliceMut::new(buf)], &remote)
        && n == buf.len()
    {
        return Ok(());
    }
    let mut at = 0;
    for &(a, len) in pieces {
        let end = at + len;
        let dst = buf.get_mut(at..end).ok_or(Error::MemRead {
            pid,
            addr: a,
            errno: Errno::EINVAL,
        })?;
        read_mem(pid, a, dst)?;
        at = end;
    }
    Ok(())
}

/// Write `data` into a task's memory at `addr`; read-only pages are written
/// through /proc/PID/mem.
pub fn write_mem(pid: Pid, addr: u64, data: &[u8]) -> Result<()> {
    let remote = [RemoteIoVec {
        base: usize::try_from(addr).map_err(|_| Error::MemWrite {
            pid,
            addr,
            errno: Errno::EFAULT,
        })?,
        len: data.len(),
    }];
    if let Ok(n) = process_vm_writev(pid, &[std::io::IoSlice::new(data)], &remote)
        && n == data.len()
    {
        return Ok(());
    }
    // Pages the task cannot write itself: through /proc/PID/mem.
    write_code(pid, addr, data)
}
