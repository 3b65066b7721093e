//! Per-CPU-architecture facts stasis needs: which arches it supports, how each
//! is named in images (`core_entry.march`) and by `uname -m`, byte order, and
//! the page sizes it may run with, and per arch (`x86`, `aarch64`, `ppc64`, `s390`) the
//! register sets, their image conversions, syscall numbers and the
//! remote-syscall instructions. Like everything here they are plain data
//! that compiles on every host, so any host can read a foreign arch's images.

pub mod aarch64;
pub mod ppc64;
pub mod s390;
pub mod x86;

/// The arch this binary runs on, for the engine: registers, syscall numbers
/// and instructions of the tasks it dumps and restores. x86-64 stands in on
/// arches stasis does not support ([`Arch::host`] is `None` there, and the
/// engine refuses to run).
#[cfg(target_arch = "aarch64")]
pub use aarch64 as native;
/// The arch this binary runs on (see the aarch64 build).
#[cfg(all(target_arch = "powerpc64", target_endian = "little"))]
pub use ppc64 as native;
/// The arch this binary runs on (see the aarch64 build).
#[cfg(target_arch = "s390x")]
pub use s390 as native;
/// The arch this binary runs on (see the aarch64 build).
#[cfg(not(any(
    target_arch = "aarch64",
    all(target_arch = "powerpc64", target_endian = "little"),
    target_arch = "s390x"
)))]
pub use x86 as native;

use stasis_proto::images::core_entry::March;

/// Numbers of the syscalls that wait with a restart block (poll and the
/// timed waits) on one arch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WaitNrs {
    pub poll: u64,
    pub nanosleep: u64,
    pub clock_nanosleep: u64,
    pub futex: u64,
}

const TIMER_ABSTIME: u64 = 1;

/// The arguments to issue syscall `nr` again with, after it was
/// interrupted with ERESTART_RESTARTBLOCK: the kernel keeps what it needs
/// to resume in the task's restart block, which no dump can read, so the
/// call is made anew. `None` for a syscall that cannot be (it returns EINTR,
/// as after a signal handler).
///
/// - poll: the same fds; a finite timeout starts again in full.
/// - nanosleep, relative clock_nanosleep: the time left, which the kernel
///   wrote to `rem` when interrupted; in full when `rem` is NULL.
/// - futex waits: the same word and value (a changed word returns EAGAIN,
///   which every futex caller handles); a relative timeout starts again.
pub(crate) fn reissue(n: WaitNrs, nr: u64, mut args: [u64; 6]) -> Option<[u64; 6]> {
    if nr == n.poll || nr == n.futex {
        Some(args)
    } else if nr == n.nanosleep {
        if args[1] != 0 {
            args[0] = args[1];
        }
        Some(args)
    } else if nr == n.clock_nanosleep {
        if args[3] != 0 && args[1] & TIMER_ABSTIME == 0 {
            args[2] = args[3];
        }
        Some(args)
    } else {
        None
    }
}

/// A CPU architecture stasis checkpoints and restores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    /// x86-64.
    X86_64,
    /// 64-bit ARM.
    Aarch64,
    /// 64-bit POWER, little-endian.
    Ppc64le,
    /// IBM Z, 64-bit (big-endian).
    S390x,
}

impl Arch {
    /// Every supported arch.
    pub const ALL: [Arch; 4] = [Arch::X86_64, Arch::Aarch64, Arch::Ppc64le, Arch::S390x];

    /// The arch this binary was built for, if stasis supports it.
    pub const fn host() -> Option<Arch> {
        if cfg!(target_arch = "x86_64") {
            Some(Arch::X86_64)
        } else if cfg!(target_arch = "aarch64") {
            Some(Arch::Aarch64)
        } else if cfg!(all(target_arch = "powerpc64", target_endian = "little")) {
            Some(Arch::Ppc64le)
        } else if cfg!(target_arch = "s390x") {
            Some(Arch::S390x)
        } else {
            None
        }
    }

    /// `uname -m` of the arch.
    pub const fn machine(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
            Arch::Ppc64le => "ppc64le",
            Arch::S390x => "s390x",
        }
    }

    /// The arch a `uname -m` string names.
    pub fn from_machine(machine: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.machine() == machine)
    }

    /// The `core_entry.mtype` value images record for this arch.
    pub const fn march(self) -> March {
        match self {
            Arch::X86_64 => March::X8664,
            Arch::Aarch64 => March::Aarch64,
            Arch::Ppc64le => March::Ppc64,
            Arch::S390x => March::S390,
        }
    }

    /// The arch an image's `core_entry.mtype` names; `None` for arches stasis
    /// does not support (32-bit arm, mips, loongarch64, riscv64).
    pub fn from_march(march: March) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.march() == march)
    }

    /// Whether the arch stores integers big-endian in memory (and so in pages images).
    pub const fn big_endian(self) -> bool {
        matches!(self, Arch::S390x)
    }

    /// Page sizes the arch's Linux kernels are built with, the usual one first.
    pub const fn page_sizes(self) -> &'static [usize] {
        match self {
            Arch::X86_64 | Arch::S390x => &[4096],
            Arch::Aarch64 => &[4096, 16384, 65536],
            Arch::Ppc64le => &[65536, 4096],
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.machine())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn march_round_trips() {
        for a in Arch::ALL {
            assert_eq!(Arch::from_march(a.march()), Some(a));
            assert_eq!(Arch::from_machine(a.machine()), Some(a));
        }
        assert_eq!(Arch::from_march(March::Mips), None);
    }

    #[test]
    fn host_is_known_on_supported_builds() {
        if cfg!(target_arch = "x86_64") {
            assert_eq!(Arch::host(), Some(Arch::X86_64));
        }
    }
}
