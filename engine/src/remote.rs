//! Acting inside a ptrace-stopped thread: system calls executed in its context
//! (registers set to a `syscall` instruction, run from syscall-entry to
//! syscall-exit stop with `PTRACE_SYSCALL`, so the instruction after it never
//! runs and no signal is involved), and reading and writing its memory.

use std::fs::File;
use std::io::IoSliceMut;
use std::os::unix::fs::FileExt;

use nix::errno::Errno;
use nix::sys::ptrace;
use nix::sys::uio::{RemoteIoVec, process_vm_readv, process_vm_writev};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use stasis_arch::x86::Regs;

use crate::error::{EngineError as Error, Result};
use crate::sys;

/// Wait for the next stop of a traced thread.
pub fn wait(tid: Pid, op: &'static str) -> Result<WaitStatus> {
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
        }
    }

    /// As [`Remote::new`], where `insn` is followed by an `int3`: the thread
    /// runs the syscall and stops at the breakpoint.
    pub fn with_trap(tid: Pid, base: Regs, insn: u64) -> Remote {
        Remote {
            tid,
            base,
            insn,
            trap: true,
        }
    }

    /// Run one syscall from the syscall-exit stop, never executing the
    /// instruction after it (for a call that unmaps that instruction).
    pub fn call_final(&self, name: &'static str, nr: u64, args: [u64; 6]) -> Result<u64> {
        let slow = Remote {
            trap: false,
            ..Remote::new(self.tid, self.base, self.insn)
        };
        slow.call(name, nr, args)
    }

    /// Run one syscall and return its result; a negative result is an error.
    pub fn call(&self, name: &'static str, nr: u64, args: [u64; 6]) -> Result<u64> {
        let r = self.call_raw(name, nr, args)?;
        if (-4095..0).contains(&r) {
            let errno = Errno::from_raw(i32::try_from(-r).unwrap_or(libc::EINVAL));
            return Err(Error::Remote {
                tid: self.tid,
                syscall: name,
                errno,
            });
        }
        Ok(r.cast_unsigned())
    }

    /// Run one syscall and return its raw result.
    pub fn call_raw(&self, name: &'static str, nr: u64, args: [u64; 6]) -> Result<i64> {
        let tid = self.tid;
        sys::setregs(tid, &self.base.for_syscall(self.insn, nr, args))
            .map_err(Error::ptrace(tid, "SETREGS"))?;
        if self.trap {
            self.run_to_trap(name)?;
        } else {
            self.step(name, true)?;
            self.step(name, false)?;
        }
        let r = sys::getregs(tid).map_err(Error::ptrace(tid, "GETREGS"))?;
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

/// Words as the native-endian bytes a task reads.
pub fn words(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|w| w.to_ne_bytes()).collect()
}

fn errno_of(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
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
    let err = |e: std::io::Error| Error::MemWrite {
        pid,
        addr,
        errno: errno_of(&e),
    };
    mem_file(pid, true)
        .and_then(|f| f.write_all_at(data, addr))
        .map_err(err)
}
