//! Kernel interfaces shared by the engine (`stasis-engine`), the feature
//! probes (`stasis-check`) and the benchmarks (`stasis-bench`), one module
//! per kernel object or interface:
//!
//! - [`netlink`] (the message builder, the socket, nf_tables transactions),
//!   [`nftables`] (a namespace's ruleset, saved and made again) and [`rtnl`]
//!   (route netlink: links, addresses, routes, and iproute2's save format);
//! - the system-call wrappers `nix` and `rustix` do not offer safely:
//!   [`ptrace`], [`clone`], [`process`], [`fd`], [`socket`], [`ipc`],
//!   [`mqueue`], [`uffd`], [`mm`], [`tty`], [`signal`], [`timer`],
//!   [`mount`], [`sched`], [`io`], [`ioctl`] and [`tun`].
//!
//! Wrappers return `Errno` without context: callers say what failed.
// This crate is the one place of stasis' own code (with `stasis-arch` and
// the test programs) where `unsafe` is written: every block carries a
// `// SAFETY:` comment, every `unsafe fn` a `# Safety` section, and the
// crates above it forbid `unsafe` altogether.
#![allow(unsafe_code)]

pub mod clone;
pub mod fd;
pub mod io;
pub mod ioctl;
pub mod ipc;
pub mod mm;
pub mod mount;
pub mod mqueue;
pub mod netlink;
pub mod nftables;
pub mod process;
pub mod ptrace;
mod raw;
pub mod rtnl;
pub mod sched;
pub mod signal;
pub mod socket;
pub mod timer;
pub mod tty;
pub mod tun;
pub mod uffd;
