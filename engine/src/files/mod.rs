//! Open files: the fd table of each task (`fdinfo-ID.img`) and the open file
//! descriptions behind it (`files.img`), plus the bytes queued in pipes
//! (`pipes-data.img`) and FIFOs (`fifo-data.img`). Files deleted while open
//! ("ghosts") keep their contents in `ghost-file-ID.img` (data chunks, holes
//! skipped) behind a `remap-fpath.img` entry; restore recreates each at its
//! old path, opens it and unlinks it again.
//! Each kind is one [`FileKind`] with a dump half (from the dumper's view of
//! the task's fd) and a restore half (open it again in the engine, before the
//! tasks are forked, so that tasks sharing a description inherit one).
//! Shared descriptions are found with kcmp(KCMP_FILE).

pub(crate) mod eventfd;
pub(crate) mod eventpoll;
pub(crate) mod fanotify;
pub(crate) mod file_lock;
pub(crate) mod inotify;
pub(crate) mod memfd;
pub(crate) mod pidfd;
pub(crate) mod registry;
pub(crate) mod signalfd;
pub(crate) mod timerfd;
pub(crate) mod tty;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::unistd::Pid;
use stasis_proto::images::file_entry::Kind;
use stasis_proto::images::{
    FdTypes, FdinfoEntry, FifoEntry, FileEntry, FileLockEntry, FownEntry, GhostChunkEntry,
    GhostFileEntry, MemfdFileEntry, PipeDataEntry, PipeEntry, RegFileEntry, RemapFilePathEntry,
    RemapType, SkPacketEntry, TtyDataEntry, TtyInfoEntry,
};

use crate::error::{EngineError as Error, Result};
use crate::images::Dir;
use crate::images::img;
use crate::{sys, task::proc};

/// Options that change which fds a dump accepts.
#[derive(Debug, Clone, Copy, Default)]
pub struct Opts {
    /// `--shell-job`: terminals are outside the tree and reopened by path.
    pub shell_job: bool,
    /// RPC `orphan_pts_master`: a pty slave whose master is outside the
    /// tree is dumped on its own (see [`tty`]).
    pub orphan_pts_master: bool,
    /// `--ghost-limit`: the largest file deleted while open whose contents
    /// go into the images.
    pub ghost_limit: u64,
    /// `--file-locks`: dump the locks files hold (refused otherwise).
    pub file_locks: bool,
    /// `--tcp-established`: dump established TCP connections.
    pub tcp_established: bool,
    /// `--skip-in-flight`: drop the connections listeners have not
    /// accepted.
    pub skip_in_flight: bool,
    /// `--ext-unix-sk`: a datagram socket connected to a named socket
    /// outside the tree is connected to that name again on restore.
    pub ext_unix_sk: bool,
    /// `--leave-running`: the tree goes on after the dump, so nothing may
    /// be taken from it (such as a connection waiting to be accepted).
    pub leave_running: bool,
}

/// An inet, netlink or packet socket is made again in its task's network
/// namespace: one made in another (before the task moved, or passed to
/// it) is refused, as the restore would put it elsewhere. Err: what to
/// name in the refusal.
fn same_netns(pid: Pid, fd: &proc::Fd) -> std::result::Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let Ok(ns) = sys::pidfd_open(pid)
        .and_then(|p| sys::pidfd_getfd(&p, fd.fd))
        .and_then(|s| sys::socket_netns(s.as_fd()))
    else {
        // Kernels without SIOCGSKNS: nothing to compare.
        return Ok(());
    };
    let theirs = nix::sys::stat::fstat(&ns).map(|s| s.st_ino);
    let task = std::fs::metadata(format!("/proc/{pid}/ns/net")).map(|m| m.ino());
    match (theirs, task) {
        (Ok(a), Ok(b)) if a != b => Err(format!(
            "{}, a socket of another network namespace than its task's",
            fd.target
        )),
        _ => Ok(()),
    }
}

/// A ghost file: its metadata and data chunks (offset, bytes).
#[derive(Debug, Default)]
struct Ghost {
    entry: GhostFileEntry,
    chunks: Vec<(u64, Vec<u8>)>,
}

/// What the dump half of a kind sees.
#[derive(Debug)]
pub struct FdCtx<'a> {
    /// The task.
    pub pid: Pid,
    /// The fd as /proc shows it.
    pub fd: &'a proc::Fd,
    /// Metadata of the open file (following the link).
    pub meta: &'a fs::Metadata,
}

impl FdCtx<'_> {
    /// The file's status flags, close-on-exec (an fd flag) left out.
    pub fn flags(&self) -> u32 {
        self.fd.flags & !(libc::O_CLOEXEC.cast_unsigned())
    }

    /// fdinfo line `key`, or an error naming the fd.
    pub fn field(&self, key: &str) -> Result<&str> {
        self.fd.field(key).ok_or_else(|| self.format_err(key))
    }

    /// A copy of the task's fd (pidfd_getfd): the same open file, to ask
    /// things of without running code in the task.
    pub fn dup(&self) -> nix::Result<OwnedFd> {
        sys::pidfd_open(self.pid).and_then(|p| sys::pidfd_getfd(&p, self.fd.fd))
    }

    /// A failed step of dumping the file (`what` names the step).
    pub fn err(&self, what: &str) -> impl FnOnce(nix::errno::Errno) -> Error + use<> {
        Error::dump(self.pid, format!("fd {} ({what})", self.fd.fd))
    }

    /// fdinfo did not show `what` as expected.
    pub fn format_err(&self, what: &str) -> Error {
        Error::ProcFormat {
            pid: self.pid,
            file: format!("fdinfo/{} ({what})", self.fd.fd),
        }
    }
}

/// What the restore half of a kind sees: the first task using the file, and
/// the state shared by the files of one restore.
#[derive(Debug)]
pub struct OpenCtx<'a> {
    /// The first task that uses the file, and its fd number there.
    pub pid: Pid,
    #[allow(missing_docs)]
    pub fd: i32,
    /// The loaded images.
    pub table: &'a Table,
    /// Pipes made so far (both ends), by pipe id.
    pipes: HashMap<u32, (OwnedFd, OwnedFd)>,
    /// FIFO keepers made so far, by pipe id.
    fifos: HashMap<u32, OwnedFd>,
    /// Files opened so far, by id.
    opened: HashMap<u32, OwnedFd>,
    /// Ids some task has an fd of.
    used: std::collections::HashSet<u32>,
    /// The unix sockets, all made at the first one.
    pub(crate) unix_made: Option<HashMap<u32, OwnedFd>>,
    /// The inet sockets, all made at the first one.
    pub(crate) inet_made: Option<HashMap<u32, OwnedFd>>,
    /// ptys made: (master, slave unless locked, slave path) by index, and
    /// the ones whose first slave file was handed out.
    pub(crate) ptys: HashMap<u32, (OwnedFd, Option<OwnedFd>, String)>,
    slaves_taken: std::collections::HashSet<u32>,
    /// POSIX message queues made, by name.
    mq_made: HashMap<String, OwnedFd>,
}

impl OpenCtx<'_> {
    /// A failed step of making the file `what` again.
    pub fn err(&self, what: &str) -> impl FnOnce(nix::errno::Errno) -> Error + use<> {
        Error::restore(self.pid, format!("fd {} ({what})", self.fd))
    }

    /// Whether the first slave file of pty `index` was handed out (and
    /// mark it so).
    pub(crate) fn slave_taken(&mut self, index: u32) -> bool {
        !self.slaves_taken.insert(index)
    }

    /// Whether a task has an fd of file `id` (files in flight have none).
    pub fn is_used(&self, id: u32) -> bool {
        self.used.contains(&id)
    }

    /// File `id`, opened once and shared (a file in flight may also be in
    /// a task's table).
    pub fn open_id(&mut self, id: u32) -> Result<OwnedFd> {
        if !self.opened.contains_key(&id) {
            let fd = self.table.open_entry(id, self)?;
            self.opened.insert(id, fd);
        }
        let fd = self.opened.get(&id).ok_or_else(|| Error::BadImage {
            path: crate::images::img::FILES.file_name(0),
            what: format!("file {id} vanished"),
        })?;
        fd.try_clone()
            .map_err(|e| open_err(self.pid, self.fd, "a file", e))
    }
}

/// One kind of open file: the dump half reads it from the task, the restore
/// half makes an open file like it in the engine, to be installed in tasks.
///
/// A kind is registered with one line in [`registry`], which dispatches
/// dump and open by its `fd_types` value and `file_entry` variant.
pub trait FileKind {
    /// Its entry in `files.img`.
    type Entry;
    /// What users call it, in messages.
    const NAME: &'static str;
    /// Its fd's link in /proc (`anon_inode:NAME`), for an anonymous inode.
    const ANON_LINK: Option<&'static str> = None;
    /// Describe the open file `cx` (the entry's id is filled in by the caller).
    fn dump(cx: &FdCtx<'_>, table: &mut Table) -> Result<Kind>;
    /// Give the entry its id in `files.img` (and its parts, where they
    /// carry it too).
    fn set_id(e: &mut Self::Entry, id: u32);
    /// Make the open file again.
    fn open(e: &Self::Entry, cx: &mut OpenCtx<'_>) -> Result<OwnedFd>;
    /// Whether the file is opened by its task itself, once every task of
    /// the tree exists (a pidfd needs its process; a /proc file of the
    /// tree its task), with [`FileKind::open_in_task`] instead of `open`.
    fn in_task(_e: &Self::Entry, _tree: &std::collections::HashSet<u32>) -> bool {
        false
    }
    /// Open the file inside the task under `cx` as its fd `target`.
    fn open_in_task(
        _e: &Self::Entry,
        _cx: &InTask<'_>,
        _target: std::os::fd::RawFd,
        _cloexec: bool,
    ) -> Result<()> {
        Ok(())
    }
    /// Whether the file has a last step in a task holding it, once all the
    /// task's fds are in place ([`FileKind::settle`]).
    const SETTLES: bool = false;
    /// That last step, once per file, in the first task holding it as its
    /// fd `fd` (an epoll set registers its targets).
    fn settle(_e: &Self::Entry, _cx: &InTask<'_>, _fd: std::os::fd::RawFd) -> Result<()> {
        Ok(())
    }
}

/// A task being restored, stopped under the engine: what a file kind's
/// in-task stages run their remote calls through.
#[derive(Debug)]
pub struct InTask<'a> {
    /// The task's remote-call channel.
    pub r: &'a crate::task::remote::Remote,
    /// The trampoline its calls use (and its data area).
    pub t: &'a crate::mm::Trampoline,
}

/// Regular files, directories and device nodes opened by path.
#[derive(Debug)]
pub struct Reg;

/// Pipes (both ends).
#[derive(Debug)]
pub struct Pipe;

/// memfd files: the description (flags, offset) of an inode `memfd.img`
/// holds (see [`memfd`]).
#[derive(Debug)]
pub struct Memfd;

impl FileKind for Memfd {
    type Entry = MemfdFileEntry;
    const NAME: &'static str = "memfd";

    fn set_id(e: &mut MemfdFileEntry, id: u32) {
        e.id = id;
    }

    fn dump(cx: &FdCtx<'_>, table: &mut Table) -> Result<Kind> {
        table.dump_memfd(cx)
    }

    fn open(m: &MemfdFileEntry, cx: &mut OpenCtx<'_>) -> Result<OwnedFd> {
        cx.table.open_memfd(cx.pid, cx.fd, m)
    }
}

/// FIFOs (named pipes): the path as a regular-file entry, the queued bytes
/// as for pipes.
#[derive(Debug)]
pub struct Fifo;

fn tty_major(major: u32) -> bool {
    matches!(major, 4 | 5 | 136..=143)
}

impl FileKind for Reg {
    type Entry = RegFileEntry;
    const NAME: &'static str = "regular file";

    /// A file under /proc/PID/ of a task of the tree names a process made
    /// by the restore: its task opens it once the tree exists.
    fn in_task(e: &RegFileEntry, tree: &std::collections::HashSet<u32>) -> bool {
        e.name
            .strip_prefix("/proc/")
            .and_then(|p| p.split('/').next())
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| tree.contains(&n))
    }

    fn open_in_task(e: &RegFileEntry, cx: &InTask<'_>, target: i32, cloexec: bool) -> Result<()> {
        use stasis_arch::native::nr;
        let r = cx.r;
        let mut path = e.name.as_bytes().to_vec();
        path.push(0);
        let at = crate::mm::put(r.tid, cx.t, 8192, &path)?;
        let strip = libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL | libc::O_CLOEXEC;
        let mut flags = e.flags.cast_signed() & !strip;
        if cloexec {
            flags |= libc::O_CLOEXEC;
        }
        let fd = r.call(
            "openat(/proc file of the tree)",
            nr::OPENAT,
            [
                libc::AT_FDCWD.cast_unsigned().into(),
                at,
                flags.cast_unsigned().into(),
                0,
                0,
                0,
            ],
        )?;
        let target = u64::from(target.cast_unsigned());
        r.move_fd(fd, target, cloexec)?;
        if e.pos != 0 {
            r.call("lseek", nr::LSEEK, [target, e.pos, 0, 0, 0, 0])?;
        }
        Ok(())
    }

    fn set_id(e: &mut RegFileEntry, id: u32) {
        e.id = id;
    }

    fn dump(cx: &FdCtx<'_>, _table: &mut Table) -> Result<Kind> {
        Ok(Kind::Reg(RegFileEntry {
            id: 0,
            flags: cx.fd.flags & !(libc::O_CLOEXEC.cast_unsigned()),
            pos: cx.fd.pos,
            fown: FownEntry::default(),
            name: cx.fd.target.clone(),
            mnt_id: Some(cx.fd.mnt_id),
            size: Some(cx.meta.size()),
            mode: Some(cx.meta.mode()),
            ..RegFileEntry::default()
        }))
    }

    fn open(r: &RegFileEntry, cx: &mut OpenCtx<'_>) -> Result<OwnedFd> {
        let (pid, fd) = (cx.pid, cx.fd);
        // A POSIX message queue is a file of the mqueue filesystem.
        if let Some(q) = cx.table.mqueues.of_file(r.id) {
            return crate::ipc::mqueue::open(q, r.flags, &mut cx.mq_made, pid, fd);
        }
        let Some(g) = cx.table.remaps.get(&r.id) else {
            return open_reg(pid, fd, r);
        };
        let name = cx
            .table
            .ghost_paths
            .get(g)
            .cloned()
            .ok_or_else(|| Error::BadImage {
                path: crate::images::img::REMAP_FPATH.file_name(0),
                what: format!("file {}: ghost file {g} was not made", r.id),
            })?;
        open_reg(
            pid,
            fd,
            &RegFileEntry {
                name,
                size: None,
                ..r.clone()
            },
        )
    }
}

/// How `--inherit-fd` names pipe `id` (its inode), as CRIU does.
fn pipe_key(id: u32) -> String {
    format!("pipe:[{id}]")
}

impl FileKind for Pipe {
    type Entry = PipeEntry;
    const NAME: &'static str = "pipe";

    fn set_id(e: &mut PipeEntry, id: u32) {
        e.id = id;
    }

    fn dump(cx: &FdCtx<'_>, table: &mut Table) -> Result<Kind> {
        let ino = cx.meta.ino();
        let pipe_id = u32::try_from(ino).unwrap_or(u32::MAX);
        if table.pipes_seen.insert(ino, ()).is_none() {
            table.dump_pipe_data(cx, pipe_id)?;
        }
        Ok(Kind::Pipe(PipeEntry {
            id: 0,
            pipe_id,
            flags: cx.fd.flags & !(libc::O_CLOEXEC.cast_unsigned()),
            fown: FownEntry::default(),
        }))
    }

    fn open(p: &PipeEntry, cx: &mut OpenCtx<'_>) -> Result<OwnedFd> {
        let (pid, fd) = (cx.pid, cx.fd);
        // The caller's own pipe in its place (a runtime's stdio).
        if let Some(given) = cx.table.inherited.get(&pipe_key(p.pipe_id)) {
            return given
                .try_clone()
                .map_err(|e| open_err(pid, fd, "inherited pipe", e));
        }
        if let std::collections::hash_map::Entry::Vacant(slot) = cx.pipes.entry(p.pipe_id) {
            slot.insert(cx.table.new_pipe(pid, p.pipe_id)?);
        }
        let (r, w) = cx.pipes.get(&p.pipe_id).ok_or_else(|| Error::BadImage {
            path: "pipes.img".into(),
            what: "pipe vanished".into(),
        })?;
        let end = if p.flags & libc::O_ACCMODE.cast_unsigned() == libc::O_WRONLY.cast_unsigned() {
            w
        } else {
            r
        };
        let dup = end.try_clone().map_err(|e| open_err(pid, fd, "pipe", e))?;
        // O_DIRECT is packet mode (each write one packet).
        let keep = (libc::O_NONBLOCK | libc::O_DIRECT).cast_unsigned();
        let fl = OFlag::from_bits_truncate((p.flags & keep).cast_signed());
        fcntl(dup.as_fd(), FcntlArg::F_SETFL(fl))
            .map_err(|e| open_err(pid, fd, "pipe", e.into()))?;
        Ok(dup)
    }
}

impl FileKind for Fifo {
    type Entry = FifoEntry;
    const NAME: &'static str = "FIFO";

    fn set_id(e: &mut FifoEntry, id: u32) {
        e.id = id;
    }

    fn dump(cx: &FdCtx<'_>, table: &mut Table) -> Result<Kind> {
        let ino = cx.meta.ino();
        let pipe_id = u32::try_from(ino).unwrap_or(u32::MAX);
        if table.fifos_seen.insert(ino, ()).is_none() {
            let data = table.tee_pipe(cx)?;
            table.fifo_data.push(data_entry(pipe_id, data));
        }
        let regf_id = table.next_id();
        let Kind::Reg(mut reg) = Reg::dump(cx, table)? else {
            return Err(Error::Unexpected {
                tid: cx.pid,
                op: "describing a FIFO",
                what: "not a path".into(),
            });
        };
        reg.id = regf_id;
        // A FIFO deleted while open comes back at its old name, made again
        // and removed once opened (a ghost without contents).
        if let Some(orig) = cx.fd.target.strip_suffix(" (deleted)") {
            reg.name = orig.to_owned();
            let remap = table.dump_ghost(cx, 0, regf_id)?;
            table.remaps.insert(regf_id, remap);
        }
        table.entries.push(FileEntry {
            r#type: FdTypes::Reg as i32,
            id: regf_id,
            kind: Some(Kind::Reg(reg)),
        });
        Ok(Kind::Fifo(FifoEntry {
            id: 0,
            pipe_id,
            regf_id: Some(regf_id),
        }))
    }

    fn open(f: &FifoEntry, cx: &mut OpenCtx<'_>) -> Result<OwnedFd> {
        cx.table.open_fifo(cx.pid, cx.fd, f, &mut cx.fifos)
    }
}

fn data_entry(pipe_id: u32, (data, size): (Vec<u8>, i32)) -> (PipeDataEntry, Vec<u8>) {
    (
        PipeDataEntry {
            pipe_id,
            bytes: u32::try_from(data.len()).unwrap_or(u32::MAX),
            size: u32::try_from(size).ok(),
        },
        data,
    )
}

/// A described fd: the task, its fd number and the file id given.
type Described = (Pid, i32, u32);

/// The open files of a dump or a restore.
#[derive(Debug, Default)]
pub struct Table {
    entries: Vec<FileEntry>,
    /// Described fds by (dev, ino), to find shared descriptions: (pid, fd,
    /// id), in kcmp order.
    described: HashMap<(u64, u64), Vec<Described>>,
    by_path: HashMap<String, u32>,
    pipes_seen: HashMap<u64, ()>,
    pipe_data: Vec<(PipeDataEntry, Vec<u8>)>,
    fifos_seen: HashMap<u64, ()>,
    fifo_data: Vec<(PipeDataEntry, Vec<u8>)>,
    /// Ghost files by remap id, and the (dev, ino) each was dumped from.
    ghosts: Vec<(u32, Ghost)>,
    ghost_inodes: HashMap<(u64, u64), u32>,
    /// orig_id -> remap_id of ghost files.
    remaps: HashMap<u32, u32>,
    /// memfd inodes (dump), and memfd file entries made for mappings:
    /// (inode, flags) -> file id.
    memfds: memfd::Inodes,
    memfd_maps: HashMap<(u32, u32), u32>,
    /// Restore: the remade memfd inodes, and a path to each the tasks can open.
    memfd_fds: HashMap<u32, OwnedFd>,
    memfd_paths: HashMap<u32, String>,
    /// Dump: `--ghost-limit`. Restore: the remade ghost files (open,
    /// already unlinked) and a path to each the tasks can open, by remap id.
    pub ghost_limit: u64,
    ghost_fds: HashMap<u32, OwnedFd>,
    ghost_paths: HashMap<u32, String>,
    /// Unix sockets: sock_diag's view, queued data, fds in flight.
    pub(crate) unix: crate::net::unix::State,
    /// Restore under `--root`: the directory the tree's paths are under.
    pub(crate) root: Option<std::path::PathBuf>,
    /// Restore: the caller's fds that stand for objects of the images
    /// (`--inherit-fd fd[N]:pipe:[INO]`), by key.
    pub(crate) inherited: HashMap<String, OwnedFd>,
    /// Dump: the options of the dump (for files found in flight).
    pub(crate) opts: Opts,
    /// Restore: ptys the mount restore made (bind sources in a devpts of
    /// the tree's), their masters by index.
    premade_ptys: HashMap<u32, OwnedFd>,
    /// Dump: the terminals that are the caller's (`--external
    /// tty[RDEV:DEV]`).
    pub(crate) ext_ttys: Vec<String>,
    /// POSIX message queues the tree has open.
    mqueues: crate::ipc::mqueue::Queues,
    /// Dump: whether each device (a filesystem) seen is the mqueue one.
    mqueue_devs: HashMap<u64, bool>,
    /// Controlling terminals of the sessions, and ends of ptys.
    ttys: Vec<TtyInfoEntry>,
    tty_data: Vec<TtyDataEntry>,
    /// Dump: the tasks of the tree (to find pty masters).
    tree: Vec<Pid>,
    /// Established TCP connections: (inode, state, receive and send
    /// queues), and the sockets in repair mode meanwhile.
    pub(crate) tcp_streams: Vec<(u32, stasis_proto::images::TcpStreamEntry, Vec<u8>, Vec<u8>)>,
    pub(crate) tcp_repaired: crate::net::tcp::Repaired,
    /// Dump: the network lock of those connections (after `tcp_repaired`:
    /// lifted once they are out of repair mode).
    pub(crate) netlock: Option<crate::net::netlock::Lock>,
    /// File locks, and the keys that keep each once.
    locks: Vec<FileLockEntry>,
    lock_keys: Vec<(u32, String, i64, i64, u32)>,
}

impl Table {
    fn next_id(&self) -> u32 {
        u32::try_from(self.entries.len() + 1).unwrap_or(u32::MAX)
    }

    /// Every entry of `files.img`.
    pub(crate) fn entries(&self) -> &[FileEntry] {
        &self.entries
    }

    /// Set the peer of the unix socket entry with inode `ino`.
    pub(crate) fn set_unix_peer(&mut self, ino: u32, peer: u32) {
        for e in &mut self.entries {
            if let Some(Kind::Usk(u)) = &mut e.kind
                && u.ino == ino
            {
                u.peer = peer;
            }
        }
    }

    /// Add an entry no fd refers to yet; `kind` gets its id.
    pub(crate) fn add_entry(&mut self, kind: impl FnOnce(u32) -> Kind, ty: FdTypes) -> u32 {
        let id = self.next_id();
        self.entries.push(FileEntry {
            r#type: ty as i32,
            id,
            kind: Some(kind(id)),
        });
        id
    }

    /// Give the PIDs the dump recorded (lock owners, pidfd targets, as the
    /// engine's /proc shows them) as the images number them.
    pub fn number_pids(&mut self, image: impl Fn(i32) -> i32) {
        for l in &mut self.locks {
            l.pid = image(l.pid);
        }
        for e in &mut self.entries {
            if let Some(Kind::Pidfd(p)) = &mut e.kind {
                p.nspid = image(p.nspid);
            }
        }
    }

    /// A file referred to by path (mapped file, exe, cwd, root): one entry per path.
    pub fn path_id(&mut self, path: &str, flags: u32) -> u32 {
        if let Some(&id) = self.by_path.get(path) {
            return id;
        }
        let id = self.next_id();
        let meta = fs::metadata(path).ok();
        self.entries.push(FileEntry {
            r#type: FdTypes::Reg as i32,
            id,
            kind: Some(Kind::Reg(RegFileEntry {
                id,
                flags,
                pos: 0,
                fown: FownEntry::default(),
                name: path.to_owned(),
                size: meta.as_ref().filter(|m| m.is_file()).map(MetadataExt::size),
                mode: meta.as_ref().map(MetadataExt::mode),
                ..RegFileEntry::default()
            })),
        });
        self.by_path.insert(path.to_owned(), id);
        id
    }

    /// Describe fd `fd` of `pid`; errors name the fd and its kind when the
    /// kind is not supported.
    pub fn dump_fd(&mut self, pid: Pid, fd: &proc::Fd, opts: Opts) -> Result<FdinfoEntry> {
        self.opts = opts;
        let link = format!("/proc/{pid}/fd/{}", fd.fd);
        let unsupported = |what: String| Error::Unsupported {
            pid,
            what: format!("fd {} ({what})", fd.fd),
        };
        let meta = fs::metadata(&link).map_err(|e| Error::Proc {
            pid,
            path: link.clone(),
            err: e,
        })?;
        let mut locks = Vec::new();
        for line in fd.extra.iter().filter(|l| l.starts_with("lock:")) {
            let kind = line.split_whitespace().nth(2).unwrap_or("?");
            if !opts.file_locks {
                return Err(unsupported(format!(
                    "{} holding a {kind} file lock without --file-locks",
                    fd.target
                )));
            }
            match crate::files::file_lock::parse(pid, fd.fd, line) {
                Ok(Some(l)) => locks.push(l),
                Ok(None) => {}
                Err(what) => return Err(unsupported(format!("{}: {what}", fd.target))),
            }
        }
        let ft = meta.file_type();
        let mut mqueue = false;
        let ty = if fd.target.starts_with("pipe:[") {
            FdTypes::Pipe
        } else if let Some(ty) = registry::by_anon_link(&fd.target) {
            ty
        } else if fd.target.starts_with("/memfd:") && ft.is_file() {
            FdTypes::Memfd
        } else if ft.is_socket() {
            if self.unix.is_unix(u32::try_from(meta.ino()).unwrap_or(0)) {
                FdTypes::Unixsk
            } else {
                // (A unix socket's path names do not depend on it.)
                same_netns(pid, fd).map_err(unsupported)?;
                let domain = sys::pidfd_open(pid)
                    .and_then(|p| sys::pidfd_getfd(&p, fd.fd))
                    .and_then(|d| {
                        sys::getsockopt_int(
                            std::os::fd::AsFd::as_fd(&d),
                            libc::SOL_SOCKET,
                            libc::SO_DOMAIN,
                        )
                    });
                match domain {
                    Ok(libc::AF_INET | libc::AF_INET6) => FdTypes::Inetsk,
                    Ok(libc::AF_NETLINK) => FdTypes::Netlinksk,
                    Ok(libc::AF_PACKET) => FdTypes::Packetsk,
                    other => {
                        return Err(unsupported(format!(
                            "{}, a socket of family {} (unix, inet, netlink and packet sockets \
                             are dumped)",
                            fd.target,
                            other.map_or_else(|e| e.to_string(), |d| d.to_string())
                        )));
                    }
                }
            }
        } else if !fd.target.starts_with('/') {
            return Err(unsupported(fd.target.clone()));
        } else if fd.target.ends_with(" (deleted)")
            && !ft.is_fifo()
            && (!ft.is_file() || fd.target.starts_with("/memfd:"))
        {
            return Err(unsupported(format!(
                "{}, a file deleted while open",
                fd.target
            )));
        } else if ft.is_fifo() {
            FdTypes::Fifo
        } else if nix::sys::stat::major(meta.dev()) == 0
            && crate::ipc::mqueue::is_mqueue(pid, fd.fd, meta.dev(), &mut self.mqueue_devs)
        {
            mqueue = true;
            FdTypes::Reg
        } else if ft.is_char_device()
            && tty_major(u32::try_from(nix::sys::stat::major(meta.rdev())).unwrap_or(0))
        {
            // A pty whose master is in the tree comes back as a new pair.
            let pty = crate::files::tty::pty_end(meta.rdev(), || Some(0))
                .is_some_and(|(i, master)| master || self.pty_master(i).is_some());
            let key = crate::files::tty::key_of(meta.rdev(), meta.dev());
            if pty || self.ext_ttys.contains(&key) {
                FdTypes::Tty
            } else if opts.shell_job {
                FdTypes::Reg
            } else if opts.orphan_pts_master
                && crate::files::tty::pty_end(meta.rdev(), || None).is_some()
            {
                // A slave whose master the caller holds (a container's
                // console): it gets a new master at the restore.
                FdTypes::Tty
            } else {
                return Err(unsupported(format!(
                    "terminal {}; dump a job started from a shell with --shell-job (a container's \
                     console is dumped through RPC with orphan_pts_master, as runc does)",
                    fd.target
                )));
            }
        } else {
            FdTypes::Reg
        };
        // The same open file description seen before (dup, fork)?
        if let Ok(i) = self.find_described(pid, fd.fd, meta.dev(), meta.ino())
            && let Some(&(_, _, id)) = self
                .described
                .get(&(meta.dev(), meta.ino()))
                .and_then(|l| l.get(i))
        {
            self.note_locks(id, locks);
            return Ok(fdinfo(id, ty, fd));
        }
        let cx = FdCtx {
            pid,
            fd,
            meta: &meta,
        };
        let mut kind = registry::dump(ty, &cx, self)?;
        let id = self.next_id();
        if let Some(orig) = fd
            .target
            .strip_suffix(" (deleted)")
            .filter(|_| ty != FdTypes::Memfd && ty != FdTypes::Fifo)
        {
            if let Kind::Reg(r) = &mut kind {
                r.name = orig.to_owned();
            }
            let remap = self.dump_ghost(&cx, opts.ghost_limit, id)?;
            self.remaps.insert(id, remap);
        }
        registry::set_id(&mut kind, id);
        self.entries.push(FileEntry {
            r#type: ty as i32,
            id,
            kind: Some(kind),
        });
        let at = self
            .find_described(pid, fd.fd, meta.dev(), meta.ino())
            .unwrap_or_else(|i| i);
        self.described
            .entry((meta.dev(), meta.ino()))
            .or_default()
            .insert(at, (pid, fd.fd, id));
        self.note_locks(id, locks);
        if mqueue {
            self.mqueues.note(pid, fd.fd, &fd.target, id)?;
        }
        Ok(fdinfo(id, ty, fd))
    }

    /// Where fd `fd` of `pid` (file `dev`, `ino`) is among the described
    /// descriptions of that file: Ok(index) when its description is there,
    /// else Err(where it goes). A binary search in kcmp order, so that many
    /// descriptions of one file (every task's /dev/null) cost log n kcmps;
    /// a linear scan when the kernel gives no order.
    fn find_described(&self, pid: Pid, fd: i32, dev: u64, ino: u64) -> Result<usize, usize> {
        let Some(list) = self.described.get(&(dev, ino)) else {
            return Err(0);
        };
        let (mut lo, mut hi) = (0, list.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let Some(&(opid, ofd, _)) = list.get(mid) else {
                break;
            };
            match sys::kcmp_file_order(opid, ofd, pid, fd) {
                Ok(Some(std::cmp::Ordering::Equal)) => return Ok(mid),
                Ok(Some(std::cmp::Ordering::Less)) => lo = mid + 1,
                Ok(Some(std::cmp::Ordering::Greater)) => hi = mid,
                _ => {
                    return list
                        .iter()
                        .position(|&(opid, ofd, _)| {
                            sys::kcmp_file_order(opid, ofd, pid, fd)
                                .is_ok_and(|o| o == Some(std::cmp::Ordering::Equal))
                        })
                        .ok_or(list.len());
                }
            }
        }
        Err(lo)
    }

    /// Keep each lock once: a POSIX lock shows on every fd its process has
    /// on the file, a flock or OFD lock on every fd of its description.
    fn note_locks(&mut self, id: u32, locks: Vec<(FileLockEntry, String)>) {
        for (e, dev_ino) in locks {
            let owner = if e.flag == crate::files::file_lock::POSIX {
                e.pid.cast_unsigned()
            } else {
                id
            };
            let key = (e.flag, dev_ino, e.start, e.len, owner);
            if !self.lock_keys.contains(&key) {
                self.lock_keys.push(key);
                self.locks.push(e);
            }
        }
    }

    /// Dump: the tree was killed; the connections taken in repair mode die
    /// in it.
    pub fn keep_tcp_repair(&mut self) {
        self.tcp_repaired.keep = true;
        if let Some(l) = self.netlock.as_mut() {
            l.keep();
        }
    }

    /// Note the controlling terminal of a session.
    pub fn add_ctty(&mut self, e: TtyInfoEntry) {
        self.ttys.push(e);
    }

    /// The terminals of the images.
    pub fn ttys(&self) -> &[TtyInfoEntry] {
        &self.ttys
    }

    pub(crate) fn has_tty_info(&self, id: u32) -> bool {
        self.ttys.iter().any(|t| t.id == id)
    }

    pub(crate) fn add_tty_info(&mut self, e: TtyInfoEntry) {
        if !self.has_tty_info(e.id) {
            self.ttys.push(e);
        }
    }

    pub(crate) fn add_tty_data(&mut self, e: TtyDataEntry) {
        self.tty_data.push(e);
    }

    pub(crate) fn tty_data(&self) -> &[TtyDataEntry] {
        &self.tty_data
    }

    /// Dump: the terminals that are the caller's, by key
    /// (`tty[RDEV:DEV]`).
    pub fn set_ext_ttys(&mut self, keys: Vec<String>) {
        self.ext_ttys = keys;
    }

    /// Dump: the tasks of the tree.
    pub fn set_tree(&mut self, pids: Vec<Pid>) {
        self.tree = pids;
    }

    /// Dump: whether `pid` is a task of the tree.
    pub(crate) fn in_tree(&self, pid: Pid) -> bool {
        self.tree.contains(&pid)
    }

    /// A copy of the master of pty `index`, if a task of the tree has it.
    /// Restore: the ptys the mount restore made, by index (see
    /// [`crate::ns::mnt`]).
    pub fn give_ptys(&mut self, ptys: Vec<(u32, OwnedFd)>) {
        self.premade_ptys.extend(ptys);
    }

    pub(crate) fn premade_pty(&self, index: u32) -> Option<&OwnedFd> {
        self.premade_ptys.get(&index)
    }

    /// Restore: the indices of ptys whose master was outside the tree (a
    /// slave entry without a master entry).
    pub fn orphan_ptys(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .ttys
            .iter()
            .filter(|t| t.r#type == stasis_proto::images::TtyType::Pty as i32 && t.id % 2 == 0)
            .filter_map(|t| t.pty.as_ref().map(|p| p.index))
            .filter(|&i| !self.has_tty_info(tty::end_id(i, true)))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    pub(crate) fn pty_master(&self, index: u32) -> Option<OwnedFd> {
        for &pid in &self.tree {
            let Ok(fds) = proc::fds(pid) else { continue };
            for f in fds
                .iter()
                .filter(|f| f.target == "/dev/ptmx" || f.target == "/dev/pts/ptmx")
            {
                let Ok(m) = sys::pidfd_open(pid).and_then(|p| sys::pidfd_getfd(&p, f.fd)) else {
                    continue;
                };
                let mut n = -1;
                if sys::tty_ioctl_int(m.as_fd(), libc::TIOCGPTN, &mut n).is_ok()
                    && u32::try_from(n).ok() == Some(index)
                {
                    return Some(m);
                }
            }
        }
        None
    }

    /// The file locks of the images.
    pub fn locks(&self) -> &[FileLockEntry] {
        &self.locks
    }

    fn dump_memfd(&mut self, cx: &FdCtx<'_>) -> Result<Kind> {
        let link = format!("/proc/{}/fd/{}", cx.pid, cx.fd.fd);
        let file = File::open(&link).map_err(|e| Error::Proc {
            pid: cx.pid,
            path: link.clone(),
            err: e,
        })?;
        let inode_id = self.memfds.id(cx.pid, &cx.fd.target, file)?;
        Ok(Kind::Memfd(MemfdFileEntry {
            id: 0,
            flags: cx.fd.flags & !(libc::O_CLOEXEC.cast_unsigned()),
            pos: cx.fd.pos,
            fown: FownEntry::default(),
            inode_id,
        }))
    }

    /// The file id for a memfd mapping `start-end` of `pid` (`name` as maps
    /// shows it), opened with `flags`.
    pub fn memfd_map_id(
        &mut self,
        pid: Pid,
        start: u64,
        end: u64,
        name: &str,
        flags: u32,
    ) -> Result<u32> {
        let link = format!("/proc/{pid}/map_files/{start:x}-{end:x}");
        let file = File::open(&link).map_err(|e| Error::Proc {
            pid,
            path: link.clone(),
            err: e,
        })?;
        let inode_id = self.memfds.id(pid, name, file)?;
        if let Some(&id) = self.memfd_maps.get(&(inode_id, flags)) {
            return Ok(id);
        }
        let id = self.next_id();
        self.entries.push(FileEntry {
            r#type: FdTypes::Memfd as i32,
            id,
            kind: Some(Kind::Memfd(MemfdFileEntry {
                id,
                flags,
                pos: 0,
                fown: FownEntry::default(),
                inode_id,
            })),
        });
        self.memfd_maps.insert((inode_id, flags), id);
        Ok(id)
    }

    /// Restore: make the ghost files again, each open in the engine and
    /// unlinked at once (tasks open them through /proc, fds and mappings).
    pub fn make_ghosts(&mut self) -> Result<()> {
        let me = nix::unistd::getpid();
        for (orig, remap) in &self.remaps {
            if self.ghost_fds.contains_key(remap) {
                continue;
            }
            let name = match self.get(*orig).and_then(|e| e.kind.as_ref()) {
                Some(Kind::Reg(r)) => r.name.clone(),
                _ => {
                    return Err(Error::BadImage {
                        path: crate::images::img::REMAP_FPATH.file_name(0),
                        what: format!("file {orig} is not a regular file"),
                    });
                }
            };
            let ghost = self
                .ghosts
                .iter()
                .find(|(gid, _)| gid == remap)
                .map(|(_, g)| g)
                .ok_or_else(|| Error::BadImage {
                    path: crate::images::img::REMAP_FPATH.file_name(0),
                    what: format!("file {orig}: ghost file {remap} is missing"),
                })?;
            let path = recreate_ghost(me, &name, *remap, ghost)?;
            // Read-only: an executable must have no writers (PR_SET_MM_MAP);
            // tasks reopen it through /proc with their own flags.
            let opened = if ghost.entry.mode & libc::S_IFMT == libc::S_IFIFO {
                // Read-write, so opening neither blocks nor loses the FIFO.
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(&path)
            } else {
                File::open(&path)
            };
            let _ = fs::remove_file(&path);
            let f = opened.map_err(|e| open_err(me, -1, &path, e))?;
            self.ghost_paths
                .insert(*remap, format!("/proc/{me}/fd/{}", f.as_raw_fd()));
            self.ghost_fds.insert(*remap, OwnedFd::from(f));
        }
        Ok(())
    }

    /// Restore: move the remade memfds and ghost files to fds from `next`
    /// up, which the tasks inherit, and name them by `/proc/self/fd/N`:
    /// a path that works in the engine and in every task, whatever PID
    /// namespace and /proc it has (a task cannot see the engine's PID from
    /// a namespace of its own). The fds the tasks must close once their
    /// memory is back.
    pub fn inherit(&mut self, next: std::os::fd::RawFd) -> Result<Vec<std::os::fd::RawFd>> {
        let me = nix::unistd::getpid();
        let mut out = Vec::new();
        let mut at = next;
        let mut moved = |fd: &mut OwnedFd| -> Result<String> {
            let new = sys::dup_at_least(fd.as_fd(), at)
                .map_err(Error::restore(me, "an fd the tasks inherit"))?;
            nix::fcntl::fcntl(
                &new,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
            )
            .map_err(Error::restore(me, "an fd the tasks inherit"))?;
            let n = new.as_raw_fd();
            at = n + 1;
            out.push(n);
            *fd = new;
            Ok(format!("/proc/self/fd/{n}"))
        };
        for (id, fd) in &mut self.memfd_fds {
            let path = moved(fd)?;
            self.memfd_paths.insert(*id, path);
        }
        for (id, fd) in &mut self.ghost_fds {
            let path = moved(fd)?;
            self.ghost_paths.insert(*id, path);
        }
        Ok(out)
    }

    /// Restore: make the memfd inodes again (before anything opens them).
    pub fn make_memfds(&mut self, dir: &Dir) -> Result<()> {
        self.memfd_fds = memfd::restore_all(dir)?;
        let me = std::process::id();
        self.memfd_paths = self
            .memfd_fds
            .iter()
            .map(|(&id, fd)| (id, format!("/proc/{me}/fd/{}", fd.as_raw_fd())))
            .collect();
        Ok(())
    }

    /// Save the contents of the deleted file behind `cx` once per inode;
    /// its remap id.
    fn dump_ghost(&mut self, cx: &FdCtx<'_>, limit: u64, id: u32) -> Result<u32> {
        let link = format!("/proc/{}/fd/{}", cx.pid, cx.fd.fd);
        let what = format!("fd {} ({})", cx.fd.fd, cx.fd.target);
        self.save_ghost(cx.pid, &link, &what, cx.meta, limit, id)
    }

    /// The file id for a mapping `start-end` of `pid` of a file deleted
    /// since (`name` as maps shows it): its contents go in a ghost image.
    pub fn ghost_map_id(&mut self, pid: Pid, start: u64, end: u64, name: &str) -> Result<u32> {
        let link = format!("/proc/{pid}/map_files/{start:x}-{end:x}");
        let meta = fs::metadata(&link).map_err(|e| Error::Proc {
            pid,
            path: link.clone(),
            err: e,
        })?;
        let orig = name.strip_suffix(" (deleted)").unwrap_or(name);
        let key = format!("{orig}\0{}:{}", meta.dev(), meta.ino());
        if let Some(&id) = self.by_path.get(&key) {
            return Ok(id);
        }
        let id = self.next_id();
        self.entries.push(FileEntry {
            r#type: FdTypes::Reg as i32,
            id,
            kind: Some(Kind::Reg(RegFileEntry {
                id,
                flags: libc::O_RDONLY.cast_unsigned(),
                pos: 0,
                fown: FownEntry::default(),
                name: orig.to_owned(),
                size: Some(meta.size()),
                mode: Some(meta.mode()),
                ..RegFileEntry::default()
            })),
        });
        self.by_path.insert(key, id);
        let what = format!("memory mapping {start:#x}-{end:#x} of {name}");
        let remap = self.save_ghost(pid, &link, &what, &meta, self.ghost_limit, id)?;
        self.remaps.insert(id, remap);
        Ok(id)
    }

    /// Save the contents of a deleted file (open through `link`) once per
    /// inode under remap id `id`; the remap id it has.
    fn save_ghost(
        &mut self,
        pid: Pid,
        link: &str,
        what: &str,
        meta: &fs::Metadata,
        limit: u64,
        id: u32,
    ) -> Result<u32> {
        let key = (meta.dev(), meta.ino());
        if let Some(&g) = self.ghost_inodes.get(&key) {
            return Ok(g);
        }
        let size = meta.size();
        // The limit bounds the image: holes cost nothing, count what is stored.
        let stored = meta.blocks().saturating_mul(512).min(size);
        if stored > limit {
            return Err(Error::Unsupported {
                pid,
                what: format!(
                    "{what}, deleted while in use, {stored} bytes of data: over the ghost file limit of {limit} bytes; raise it with --ghost-limit"
                ),
            });
        }
        let err = |e: std::io::Error| Error::Proc {
            pid,
            path: link.to_owned(),
            err: e,
        };
        let mut chunks = Vec::new();
        // A FIFO has no contents to save (its queued bytes are FIFO data),
        // and opening it to read could wait for a writer.
        let f = if meta.file_type().is_fifo() {
            None
        } else {
            Some(File::open(link).map_err(err)?)
        };
        let mut off: u64 = 0;
        while let Some(f) = f.as_ref().filter(|_| off < size) {
            // Data segments only: holes stay holes.
            let data = match nix::unistd::lseek(
                f.as_fd(),
                i64::try_from(off).unwrap_or(i64::MAX),
                nix::unistd::Whence::SeekData,
            ) {
                Ok(d) => d.cast_unsigned(),
                Err(nix::errno::Errno::ENXIO) => break,
                Err(e) => return Err(err(e.into())),
            };
            let hole = nix::unistd::lseek(
                f.as_fd(),
                i64::try_from(data).unwrap_or(i64::MAX),
                nix::unistd::Whence::SeekHole,
            )
            .map_or(size, i64::cast_unsigned)
            .min(size);
            let mut buf = vec![0u8; usize::try_from(hole - data).unwrap_or(0)];
            std::os::unix::fs::FileExt::read_exact_at(f, &mut buf, data).map_err(err)?;
            chunks.push((data, buf));
            off = hole;
        }
        let tv = |sec: i64, nsec: i64| stasis_proto::images::Timeval {
            tv_sec: sec.cast_unsigned(),
            tv_usec: (nsec / 1000).cast_unsigned(),
        };
        let entry = GhostFileEntry {
            uid: meta.uid(),
            gid: meta.gid(),
            mode: meta.mode(),
            dev: u32::try_from(meta.dev()).ok(),
            ino: Some(meta.ino()),
            rdev: None,
            atim: Some(tv(meta.atime(), meta.atime_nsec())),
            mtim: Some(tv(meta.mtime(), meta.mtime_nsec())),
            chunks: Some(true),
            size: Some(size),
            symlnk_target: None,
        };
        self.ghosts.push((id, Ghost { entry, chunks }));
        self.ghost_inodes.insert(key, id);
        Ok(id)
    }

    /// Copy the bytes queued in a pipe without consuming them (tee into a
    /// pipe of our own).
    fn dump_pipe_data(&mut self, cx: &FdCtx<'_>, pipe_id: u32) -> Result<()> {
        let data = self.tee_pipe(cx)?;
        self.pipe_data.push(data_entry(pipe_id, data));
        Ok(())
    }

    /// The bytes queued in the pipe or FIFO behind `cx`, and its size.
    fn tee_pipe(&self, cx: &FdCtx<'_>) -> Result<(Vec<u8>, i32)> {
        let link = format!("/proc/{}/fd/{}", cx.pid, cx.fd.fd);
        let err = |e: std::io::Error| Error::Proc {
            pid: cx.pid,
            path: link.clone(),
            err: e,
        };
        // Opening the pipe through /proc gives a read end whichever end the
        // task holds.
        let src = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&link)
            .map_err(err)?;
        let size = fcntl(src.as_fd(), FcntlArg::F_GETPIPE_SZ).unwrap_or(65536);
        let (r, w) = nix::unistd::pipe().map_err(|e| err(e.into()))?;
        let _ = fcntl(w.as_fd(), FcntlArg::F_SETPIPE_SZ(size));
        let mut data = Vec::new();
        match nix::fcntl::tee(
            src.as_fd(),
            w.as_fd(),
            usize::try_from(size).unwrap_or(65536),
            nix::fcntl::SpliceFFlags::SPLICE_F_NONBLOCK,
        ) {
            Ok(n) if n > 0 => {
                // Exactly the n bytes tee put there: no size probe, no
                // read for the end.
                drop(w);
                data.resize(n, 0);
                File::from(r).read_exact(&mut data).map_err(err)?;
            }
            Ok(_) | Err(nix::errno::Errno::EAGAIN) => {}
            Err(e) => return Err(err(e.into())),
        }
        Ok((data, size))
    }

    /// Write `files.img` and the images of the files' contents (pipe and
    /// FIFO data, ghost files, memfds); the memfd pages written.
    pub fn write(&mut self, dir: &Dir) -> Result<u64> {
        self.finish_unix()?;
        dir.write_all(img::FILES, 0, &self.entries)?;
        let mut w = dir.create(img::PIPES_DATA, 0)?;
        for (e, data) in &self.pipe_data {
            w.write(e)?;
            w.write_payload(data)?;
        }
        w.finish()?;
        if !self.remaps.is_empty() {
            let mut remaps: Vec<RemapFilePathEntry> = self
                .remaps
                .iter()
                .map(|(&orig_id, &remap_id)| RemapFilePathEntry {
                    orig_id,
                    remap_id,
                    remap_type: Some(RemapType::Ghost as i32),
                })
                .collect();
            remaps.sort_by_key(|r| r.orig_id);
            dir.write_all(img::REMAP_FPATH, 0, &remaps)?;
        }
        for (id, g) in &self.ghosts {
            let mut w = dir.create(img::GHOST_FILE, u64::from(*id))?;
            w.write(&g.entry)?;
            for (off, data) in &g.chunks {
                w.write(&GhostChunkEntry {
                    len: data.len() as u64,
                    off: *off,
                })?;
                w.write_payload(data)?;
            }
            w.finish()?;
        }
        if !self.locks.is_empty() {
            dir.write_all(img::FILE_LOCKS, 0, &self.locks)?;
        }
        if !self.ttys.is_empty() {
            dir.write_all(img::TTY_INFO, 0, &self.ttys)?;
        }
        if !self.tty_data.is_empty() {
            dir.write_all(img::TTY_DATA, 0, &self.tty_data)?;
        }
        for (ino, e, inq, outq) in &self.tcp_streams {
            let mut w = dir.create(img::TCP_STREAM, u64::from(*ino))?;
            w.write(e)?;
            w.write_payload(inq)?;
            w.write_payload(outq)?;
            w.finish()?;
        }
        self.mqueues.write(dir)?;
        let pages = self.memfds.write(dir)?;
        if !self.fifos_seen.is_empty() {
            let mut w = dir.create(img::FIFO_DATA, 0)?;
            for (e, data) in &self.fifo_data {
                w.write(e)?;
                w.write_payload(data)?;
            }
            w.finish()?;
        }
        Ok(pages)
    }

    /// Load `files.img`, `pipes-data.img` and `fifo-data.img`.
    pub fn load(dir: &Dir) -> Result<Table> {
        let entries: Vec<FileEntry> = dir.read_all(img::FILES, 0)?;
        let mut t = Table {
            entries,
            ..Table::default()
        };
        if dir.exists(img::PIPES_DATA, 0) {
            let mut r = dir.open_image(img::PIPES_DATA, 0)?;
            while let Some(e) = r.read_entry::<PipeDataEntry>()? {
                let data = r.read_payload(u64::from(e.bytes))?;
                t.pipe_data.push((e, data));
            }
        }
        if dir.exists(img::REMAP_FPATH, 0) {
            let remaps: Vec<RemapFilePathEntry> = dir.read_all(img::REMAP_FPATH, 0)?;
            for r in remaps {
                if r.remap_type != Some(RemapType::Ghost as i32) {
                    return Err(Error::BadImage {
                        path: crate::images::img::REMAP_FPATH.file_name(0),
                        what: format!(
                            "file {}: remap type {:?} (only ghost files are restored)",
                            r.orig_id, r.remap_type
                        ),
                    });
                }
                t.remaps.insert(r.orig_id, r.remap_id);
                if !t.ghosts.iter().any(|(id, _)| *id == r.remap_id) {
                    let g = load_ghost(dir, r.remap_id)?;
                    t.ghosts.push((r.remap_id, g));
                }
            }
        }
        if dir.exists(img::FIFO_DATA, 0) {
            let mut r = dir.open_image(img::FIFO_DATA, 0)?;
            while let Some(e) = r.read_entry::<PipeDataEntry>()? {
                let data = r.read_payload(u64::from(e.bytes))?;
                t.fifo_data.push((e, data));
            }
        }
        if dir.exists(img::TTY_INFO, 0) {
            t.ttys = dir.read_all(img::TTY_INFO, 0)?;
        }
        t.mqueues = crate::ipc::mqueue::Queues::load(dir)?;
        for e in &t.entries {
            if let Some(Kind::Isk(s)) = &e.kind
                && crate::net::tcp::connected(s.state)
                && s.r#type == libc::SOCK_STREAM.cast_unsigned()
            {
                let mut r = dir.open_image(img::TCP_STREAM, u64::from(s.ino))?;
                let path = r.path().to_owned();
                let entry: stasis_proto::images::TcpStreamEntry =
                    r.read_entry()?.ok_or_else(|| Error::BadImage {
                        path,
                        what: "empty".into(),
                    })?;
                let inq = r.read_payload(u64::from(entry.inq_len))?;
                let outq = r.read_payload(u64::from(entry.outq_len))?;
                t.tcp_streams.push((s.ino, entry, inq, outq));
            }
        }
        if dir.exists(img::TTY_DATA, 0) {
            t.tty_data = dir.read_all(img::TTY_DATA, 0)?;
        }
        if dir.exists(img::FILE_LOCKS, 0) {
            t.locks = dir.read_all(img::FILE_LOCKS, 0)?;
        }
        if dir.exists(img::SK_QUEUES, 0) {
            let mut r = dir.open_image(img::SK_QUEUES, 0)?;
            let mut q = Vec::new();
            while let Some(e) = r.read_entry::<SkPacketEntry>()? {
                let data = r.read_payload(u64::from(e.length))?;
                q.push((e, data));
            }
            t.unix.set_queues(q);
        }
        Ok(t)
    }

    /// Restore under `--root`: the absolute paths of the images (regular
    /// files, FIFOs, bound unix sockets), which are as the tree saw them,
    /// under `root`, where its mounts are made. A file on a mount the
    /// tree's table does not have (`tree_mounts`: one it inherited from
    /// outside, such as stdin) was named as the engine saw it and stays.
    pub fn rebase(&mut self, root: &std::path::Path, tree_mounts: &std::collections::HashSet<u32>) {
        // Unix socket names stay as the tree saw them: they are bound
        // from within the root (see crate::net::unix).
        self.root = Some(root.to_owned());
        for e in &mut self.entries {
            if let Some(Kind::Reg(r)) = e.kind.as_mut()
                && r.name.starts_with('/')
                && r.mnt_id
                    .is_none_or(|m| m <= 0 || tree_mounts.contains(&m.cast_unsigned()))
            {
                r.name = crate::ns::mnt::under(root, &r.name);
            }
        }
    }

    /// Restore: the caller's fds for objects of the images, by key
    /// (`pipe:[INO]`); a key no object has is an error naming it.
    pub fn take_inherited(&mut self, given: Vec<(String, OwnedFd)>) -> Result<()> {
        for (key, fd) in given {
            let known = self
                .entries
                .iter()
                .any(|e| matches!(&e.kind, Some(Kind::Pipe(p)) if key == pipe_key(p.pipe_id)))
                || self
                    .ttys
                    .iter()
                    .any(|t| tty::ext_key(t).as_deref() == Some(key.as_str()));
            if !known {
                return Err(Error::BadImage {
                    path: crate::images::img::FILES.file_name(0),
                    what: format!(
                        "--inherit-fd names {key}, which no fd of the images is (pipe:[INO] and tty[RDEV:DEV] keys are taken)"
                    ),
                });
            }
            self.inherited.insert(key, fd);
        }
        // Checked before anything is made.
        if let Some(key) = self
            .ttys
            .iter()
            .filter_map(tty::ext_key)
            .find(|k| !self.inherited.contains_key(k))
        {
            return Err(tty::not_given(&key));
        }
        Ok(())
    }

    /// The entry with id `id`.
    pub fn get(&self, id: u32) -> Option<&FileEntry> {
        self.entries.iter().find(|e| e.id == id)
    }

    /// The path of a regular-file entry.
    pub fn path_of(&self, id: u32) -> Option<&str> {
        match self.get(id)?.kind.as_ref()? {
            Kind::Reg(r) => match self.remaps.get(&id) {
                Some(g) => self.ghost_paths.get(g).map(String::as_str),
                None => Some(&r.name),
            },
            Kind::Memfd(m) => self.memfd_paths.get(&m.inode_id).map(String::as_str),
            _ => None,
        }
    }

    /// Open every file in `ids` again, once per open file description,
    /// and the new masters of the ptys whose master was outside the tree,
    /// by index (the caller hands them over). Errors name `pid`/`fd`, the
    /// first task using the file.
    #[allow(clippy::type_complexity)]
    pub fn open_all(
        &self,
        uses: &[(Pid, i32, u32)],
    ) -> Result<(HashMap<u32, OwnedFd>, Vec<(u32, OwnedFd)>)> {
        let mut cx = OpenCtx {
            pid: Pid::from_raw(0),
            fd: -1,
            table: self,
            pipes: HashMap::new(),
            fifos: HashMap::new(),
            opened: HashMap::new(),
            used: uses.iter().map(|u| u.2).collect(),
            unix_made: None,
            inet_made: None,
            ptys: HashMap::new(),
            slaves_taken: std::collections::HashSet::new(),
            mq_made: HashMap::new(),
        };
        for &(pid, fd, id) in uses {
            if cx.opened.contains_key(&id) {
                continue;
            }
            (cx.pid, cx.fd) = (pid, fd);
            let opened = self.open_entry(id, &mut cx)?;
            cx.opened.insert(id, opened);
        }
        let orphans = self
            .orphan_ptys()
            .into_iter()
            .filter_map(|i| cx.ptys.remove(&i).map(|(m, _, _)| (i, m)))
            .collect();
        let mut out = std::mem::take(&mut cx.opened);
        let fifos = std::mem::take(&mut cx.fifos);
        // A FIFO's queued bytes live while it is open: the keepers stay in the
        // pool (under ids no entry has) until every task has its own fds.
        for (k, keeper) in fifos.into_values().enumerate() {
            out.insert(u32::MAX - u32::try_from(k).unwrap_or(0), keeper);
        }
        Ok((out, orphans))
    }

    /// Make file `id` again, for the task and fd in `cx`.
    fn open_entry(&self, id: u32, cx: &mut OpenCtx<'_>) -> Result<OwnedFd> {
        let (pid, fd) = (cx.pid, cx.fd);
        let entry = self.get(id).ok_or_else(|| Error::BadImage {
            path: crate::images::img::FILES.file_name(0),
            what: format!("task {pid} fd {fd} refers to file id {id}, which is missing"),
        })?;
        match entry.kind.as_ref() {
            Some(kind) => {
                tracing::debug!(%pid, fd, id, kind = registry::name(kind), "opening");
                registry::open(kind, cx)
            }
            None => Err(Error::BadImage {
                path: crate::images::img::FILES.file_name(0),
                what: format!("task {pid} fd {fd}: file {id} has no kind"),
            }),
        }
    }

    /// A new open description of a remade memfd, at its offset.
    fn open_memfd(&self, pid: Pid, fd: i32, m: &MemfdFileEntry) -> Result<OwnedFd> {
        let path = self
            .memfd_paths
            .get(&m.inode_id)
            .ok_or_else(|| Error::BadImage {
                path: crate::images::img::MEMFD_INODE.file_name(0),
                what: format!("task {pid} fd {fd}: memfd inode {} is missing", m.inode_id),
            })?;
        let reg = RegFileEntry {
            id: m.id,
            flags: m.flags,
            pos: m.pos,
            name: path.clone(),
            ..RegFileEntry::default()
        };
        open_reg(pid, fd, &reg)
    }

    /// Open a FIFO by path without blocking: a read-write "keeper" per FIFO
    /// first (it also refills the queued bytes), then the task's end.
    fn open_fifo(
        &self,
        pid: Pid,
        fd: i32,
        f: &FifoEntry,
        keepers: &mut HashMap<u32, OwnedFd>,
    ) -> Result<OwnedFd> {
        let reg = match f
            .regf_id
            .and_then(|r| self.get(r))
            .and_then(|e| e.kind.as_ref())
        {
            Some(Kind::Reg(r)) => r,
            _ => {
                return Err(Error::BadImage {
                    path: crate::images::img::FILES.file_name(0),
                    what: format!("task {pid} fd {fd}: FIFO {} has no path entry", f.id),
                });
            }
        };
        // A deleted FIFO is reopened through the engine's fd on its ghost.
        let name = f
            .regf_id
            .and_then(|r| self.path_of(r))
            .unwrap_or(&reg.name)
            .to_owned();
        if let std::collections::hash_map::Entry::Vacant(slot) = keepers.entry(f.pipe_id) {
            let keeper = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&name)
                .map_err(|e| open_err(pid, fd, &name, e))?;
            if let Some((e, data)) = self.fifo_data.iter().find(|(e, _)| e.pipe_id == f.pipe_id) {
                if let Some(size) = e.size.and_then(|s| i32::try_from(s).ok()) {
                    let _ = fcntl(keeper.as_fd(), FcntlArg::F_SETPIPE_SZ(size));
                }
                (&keeper)
                    .write_all(data)
                    .map_err(|e| open_err(pid, fd, &name, e))?;
            }
            slot.insert(OwnedFd::from(keeper));
        }
        let flags = reg.flags.cast_signed() & !(libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC);
        let acc = flags & libc::O_ACCMODE;
        let file = OpenOptions::new()
            .read(acc != libc::O_WRONLY)
            .write(acc != libc::O_RDONLY)
            .custom_flags((flags & !libc::O_ACCMODE) | libc::O_NONBLOCK)
            .open(&name)
            .map_err(|e| open_err(pid, fd, &name, e))?;
        let fl = OFlag::from_bits_truncate(flags & !libc::O_ACCMODE);
        fcntl(file.as_fd(), FcntlArg::F_SETFL(fl))
            .map_err(|e| open_err(pid, fd, &name, e.into()))?;
        Ok(OwnedFd::from(file))
    }

    fn new_pipe(&self, pid: Pid, pipe_id: u32) -> Result<(OwnedFd, OwnedFd)> {
        let (r, w) = nix::unistd::pipe().map_err(Error::restore(pid, format!("pipe {pipe_id}")))?;
        if let Some((e, data)) = self.pipe_data.iter().find(|(e, _)| e.pipe_id == pipe_id) {
            if let Some(size) = e.size
                && let Ok(size) = i32::try_from(size)
            {
                let _ = fcntl(w.as_fd(), FcntlArg::F_SETPIPE_SZ(size));
            }
            let mut f = File::from(w.try_clone().map_err(|e| open_err(pid, -1, "pipe", e))?);
            f.write_all(data)
                .map_err(|e| open_err(pid, -1, "pipe data", e))?;
        }
        Ok((r, w))
    }
}

fn load_ghost(dir: &Dir, id: u32) -> Result<Ghost> {
    let mut r = dir.open_image(img::GHOST_FILE, u64::from(id))?;
    let path = r.path().to_owned();
    let entry: GhostFileEntry = r.read_entry()?.ok_or_else(|| Error::BadImage {
        path: path.clone(),
        what: "empty".into(),
    })?;
    let size = entry.size.unwrap_or(0);
    let mut chunks = Vec::new();
    if entry.chunks == Some(true) {
        while let Some(c) = r.read_entry::<GhostChunkEntry>()? {
            if c.off.checked_add(c.len).is_none_or(|end| end > size) {
                return Err(Error::BadImage {
                    path,
                    what: format!(
                        "a chunk at {} of {} bytes lies past the file's {size} bytes",
                        c.off, c.len
                    ),
                });
            }
            chunks.push((c.off, r.read_payload(c.len)?));
        }
    } else {
        chunks.push((0, r.read_payload(size)?));
    }
    Ok(Ghost { entry, chunks })
}

/// Recreate ghost `g` at its old path (or next to it if that name is taken).
fn recreate_ghost(pid: Pid, name: &str, id: u32, g: &Ghost) -> Result<String> {
    let mut path = name.to_owned();
    let mode = g.entry.mode & 0o7777;
    if g.entry.mode & libc::S_IFMT == libc::S_IFIFO {
        let fifo = |p: &str| {
            nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(mode))
                .map_err(std::io::Error::from)
        };
        match fifo(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                path = format!("{name}.stasis-ghost-{id:x}");
                fifo(&path).map_err(|e| open_err(pid, -1, &path, e))?;
            }
            Err(e) => return Err(open_err(pid, -1, name, e)),
        }
        let _ = nix::unistd::chown(
            path.as_str(),
            Some(g.entry.uid.into()),
            Some(g.entry.gid.into()),
        );
        return Ok(path);
    }
    let open = |p: &str| {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(p)
    };
    let file = match open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            path = format!("{name}.stasis-ghost-{id:x}");
            open(&path).map_err(|e| open_err(pid, -1, &path, e))?
        }
        Err(e) => return Err(open_err(pid, -1, name, e)),
    };
    let fill = || -> std::io::Result<()> {
        file.set_len(g.entry.size.unwrap_or(0))?;
        for (off, data) in &g.chunks {
            std::os::unix::fs::FileExt::write_all_at(&file, data, *off)?;
        }
        std::os::unix::fs::fchown(&file, Some(g.entry.uid), Some(g.entry.gid))?;
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))
    };
    if let Err(e) = fill() {
        let _ = fs::remove_file(&path);
        return Err(open_err(pid, -1, &path, e));
    }
    Ok(path)
}

/// The kind of an anonymous-inode file, by its /proc link target.
fn open_err(pid: Pid, fd: i32, path: &str, err: std::io::Error) -> Error {
    Error::OpenFile {
        pid,
        fd,
        path: path.to_owned(),
        err,
    }
}

fn open_reg(pid: Pid, fd: i32, r: &RegFileEntry) -> Result<OwnedFd> {
    let strip = libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL | libc::O_CLOEXEC | libc::O_NOCTTY;
    let flags = r.flags.cast_signed() & !strip;
    let acc = flags & libc::O_ACCMODE;
    let file = OpenOptions::new()
        .read(acc == libc::O_RDONLY || acc == libc::O_RDWR)
        .write(acc == libc::O_WRONLY || acc == libc::O_RDWR)
        .custom_flags(flags & !libc::O_ACCMODE | libc::O_NOCTTY)
        .open(&r.name)
        .map_err(|e| open_err(pid, fd, &r.name, e))?;
    if flags & libc::O_PATH == 0 {
        let meta = file.metadata().map_err(|e| open_err(pid, fd, &r.name, e))?;
        if meta.is_file() {
            if let Some(size) = r.size
                && meta.size() < size
                && r.pos > meta.size()
            {
                return Err(Error::FileChanged {
                    pid,
                    fd,
                    path: r.name.clone(),
                    what: format!("it was {size} bytes and is {} now", meta.size()),
                });
            }
            let mut f = &file;
            f.seek(SeekFrom::Start(r.pos))
                .map_err(|e| open_err(pid, fd, &r.name, e))?;
        }
    }
    Ok(OwnedFd::from(file))
}

fn fdinfo(id: u32, ty: FdTypes, fd: &proc::Fd) -> FdinfoEntry {
    FdinfoEntry {
        id,
        flags: u32::from(fd.flags & libc::O_CLOEXEC.cast_unsigned() != 0),
        r#type: ty as i32,
        fd: fd.fd.cast_unsigned(),
        xattr_security_selinux: None,
    }
}
