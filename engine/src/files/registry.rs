//! The registry of open-file kinds: one line ties a kind's `fd_types` value
//! and `file_entry` variant (fdinfo.proto) to the type that dumps and opens
//! it ([`FileKind`]). Dump and open dispatch (in the engine, or in the task
//! once the tree exists), the in-task last step, the entry's id, the kind's
//! name in messages, the numbering of the PIDs it holds and the recognition
//! of fds by their /proc link all come from here; a `file_entry` variant missing from the
//! list does not compile.
//!
//! Adding a kind: its module with an `impl FileKind`, and one line below.

use std::os::fd::OwnedFd;

use stasis_proto::images::FdTypes;
use stasis_proto::images::file_entry::Kind;

use super::{FdCtx, FileKind, InTask, OpenCtx, Table};
use crate::error::Result;

macro_rules! kinds {
    ($($ty:ident / $variant:ident => $kind:ty),* $(,)?) => {
        /// Describe fd `cx`, of kind `ty` (any other type: as a regular file).
        pub(super) fn dump(ty: FdTypes, cx: &FdCtx<'_>, table: &mut Table) -> Result<Kind> {
            match ty {
                $(FdTypes::$ty => <$kind as FileKind>::dump(cx, table),)*
                _ => <super::reg::Reg as FileKind>::dump(cx, table),
            }
        }

        /// Give `kind` its id in `files.img`.
        pub(super) fn set_id(kind: &mut Kind, id: u32) {
            match kind {
                $(Kind::$variant(e) => <$kind as FileKind>::set_id(e, id),)*
            }
        }

        /// Make the open file `kind` again.
        pub(super) fn open(kind: &Kind, cx: &mut OpenCtx<'_>) -> Result<OwnedFd> {
            match kind {
                $(Kind::$variant(e) => <$kind as FileKind>::open(e, cx),)*
            }
        }

        /// Whether `kind` is opened by its task once the tree exists
        /// (`tree`: the tree's task and thread IDs).
        pub(crate) fn in_task(kind: &Kind, tree: &std::collections::HashSet<u32>) -> bool {
            match kind {
                $(Kind::$variant(e) => <$kind as FileKind>::in_task(e, tree),)*
            }
        }

        /// Open `kind` inside the task under `cx` as its fd `target`.
        pub(crate) fn open_in_task(
            kind: &Kind,
            cx: &InTask<'_>,
            target: std::os::fd::RawFd,
            cloexec: bool,
        ) -> Result<()> {
            match kind {
                $(Kind::$variant(e) => <$kind as FileKind>::open_in_task(e, cx, target, cloexec),)*
            }
        }

        /// Whether `kind` has a last step in a task holding it.
        pub(crate) fn settles(kind: &Kind) -> bool {
            match kind {
                $(Kind::$variant(_) => <$kind as FileKind>::SETTLES,)*
            }
        }

        /// The last step of `kind` in the task under `cx`, holding it as `fd`.
        pub(crate) fn settle(kind: &Kind, cx: &InTask<'_>, fd: std::os::fd::RawFd) -> Result<()> {
            match kind {
                $(Kind::$variant(e) => <$kind as FileKind>::settle(e, cx, fd),)*
            }
        }

        /// The kind's name in messages.
        pub(crate) fn name(kind: &Kind) -> &'static str {
            match kind {
                $(Kind::$variant(_) => <$kind as FileKind>::NAME,)*
            }
        }

        /// The kind of an fd recognised by its /proc link
        /// (`anon_inode:[eventfd]`, `net:[4026531840]`, ...).
        pub(super) fn by_link(target: &str) -> Option<FdTypes> {
            $(if <$kind as FileKind>::by_link(target) {
                return Some(FdTypes::$ty);
            })*
            None
        }

        /// Give the PIDs `kind` holds as the images number them.
        pub(super) fn number_pids(kind: &mut Kind, image: &dyn Fn(i32) -> i32) {
            match kind {
                $(Kind::$variant(e) => <$kind as FileKind>::number_pids(e, image),)*
            }
        }
    };
}

kinds! {
    Reg / Reg => super::reg::Reg,
    Pipe / Pipe => super::pipe::Pipe,
    Fifo / Fifo => super::pipe::Fifo,
    Memfd / Memfd => super::memfd::Memfd,
    Tty / Tty => super::tty::Tty,
    Eventfd / Efd => super::eventfd::Eventfd,
    Eventpoll / Epfd => super::eventpoll::Eventpoll,
    Signalfd / Sgfd => super::signalfd::Signalfd,
    Timerfd / Tfd => super::timerfd::Timerfd,
    Inotify / Ify => super::inotify::Inotify,
    Fanotify / Ffy => super::fanotify::FanotifyGroup,
    Pidfd / Pidfd => super::pidfd::Pidfd,
    Ns / Nsf => super::nsfile::NsFile,
    Unixsk / Usk => crate::net::unix::UnixSk,
    Inetsk / Isk => crate::net::inet::InetSk,
    Netlinksk / Nlsk => crate::net::netlink_sk::NetlinkSk,
    Packetsk / Psk => crate::net::packet::PacketSk,
    Tunf / Tunf => crate::net::tun::TunFile,
}
