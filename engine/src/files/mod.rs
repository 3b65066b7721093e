//! Open files: the fd table of each task (`fdinfo-ID.img`), its working and
//! root directories (`fs-ID.img`) and the open file descriptions behind
//! them (`files.img`).
//! Each kind is one [`FileKind`] with a dump half (from the dumper's view of
//! the task's fd) and a restore half (open it again in the engine, before the
//! tasks are forked, so that tasks sharing a description inherit one), in a
//! module of its own here or in `net/`, listed in [`registry`]. The
//! [`Table`] holds the entries and, per subsystem, the state its kinds keep
//! (queued pipe bytes, ghosts, memfds, terminals, locks, connections,
//! message queues), each private to its module.
//! Shared descriptions are found with kcmp(KCMP_FILE).

pub(crate) mod eventfd;
pub(crate) mod eventpoll;
pub(crate) mod fanotify;
pub(crate) mod file_lock;
pub(crate) mod ghost;
pub(crate) mod inotify;
pub(crate) mod memfd;
pub(crate) mod nsfile;
pub(crate) mod pidfd;
pub(crate) mod pipe;
pub(crate) mod reg;
pub(crate) mod registry;
pub(crate) mod signalfd;
pub(crate) mod timerfd;
pub(crate) mod tty;

use stasis_kernel as kernel;
use std::collections::HashMap;
use std::fs;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use nix::unistd::Pid;
use stasis_proto::images::file_entry::Kind;
use stasis_proto::images::{
    FdTypes, FdinfoEntry, FileEntry, FileLockEntry, FownEntry, FsEntry, RegFileEntry, SkPacketEntry,
};

use crate::error::{EngineError as Error, Result};
use crate::images::Dir;
use crate::images::img;
use crate::proc;

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
    let Ok(ns) = kernel::fd::pidfd_open(pid)
        .and_then(|p| kernel::fd::pidfd_getfd(&p, fd.fd))
        .and_then(|s| kernel::socket::socket_netns(s.as_fd()))
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
        kernel::fd::pidfd_open(self.pid).and_then(|p| kernel::fd::pidfd_getfd(&p, self.fd.fd))
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
    /// Pipes and FIFO keepers made so far.
    made: pipe::Made,
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
        let fd = self
            .opened
            .get(&id)
            .ok_or_else(|| img::FILES.bad(0, format!("file {id} vanished")))?;
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
    /// Whether an fd whose /proc link is `link` is of this kind (by default:
    /// its anonymous inode's link, [`FileKind::ANON_LINK`]).
    fn by_link(link: &str) -> bool {
        Self::ANON_LINK.is_some_and(|a| link.strip_prefix("anon_inode:") == Some(a))
    }
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
    /// Dump: give the PIDs the entry holds (as the engine's /proc shows
    /// them) as the images number them (`image`).
    fn number_pids(_e: &mut Self::Entry, _image: &dyn Fn(i32) -> i32) {}
}

/// A task being restored, stopped under the engine: what a file kind's
/// in-task stages run their remote calls through.
#[derive(Debug)]
pub struct InTask<'a> {
    /// The task's remote-call channel.
    pub r: &'a crate::task::remote::Remote,
    /// The trampoline its calls use (and its data area).
    pub t: &'a crate::task::trampoline::Trampoline,
}

impl InTask<'_> {
    /// Open `path` with `flags` inside the task (`what` names the step),
    /// as its fd `target`; that fd.
    pub(crate) fn open_as(
        &self,
        what: &'static str,
        path: &str,
        flags: i32,
        target: i32,
        cloexec: bool,
    ) -> Result<u64> {
        use stasis_arch::native::nr;
        let r = self.r;
        let mut bytes = path.as_bytes().to_vec();
        bytes.push(0);
        let at = crate::task::trampoline::put(
            r.tid,
            self.t,
            crate::task::trampoline::layout::PATHS,
            &bytes,
        )?;
        let flags = if cloexec {
            flags | libc::O_CLOEXEC
        } else {
            flags
        };
        let fd = r.call(
            what,
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
        Ok(target)
    }
}

/// Restore: hand each remade file of `fds` (memfd inodes, ghost files) to
/// `moved`, which gives it a new fd and the path tasks open it by, kept in
/// `paths` under the same id.
fn move_remade(
    fds: &mut HashMap<u32, OwnedFd>,
    paths: &mut HashMap<u32, String>,
    mut moved: impl FnMut(&mut OwnedFd) -> Result<String>,
) -> Result<()> {
    for (id, fd) in fds {
        let path = moved(fd)?;
        paths.insert(*id, path);
    }
    Ok(())
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
    /// Files referred to by path (cwd, exe, mappings), by path.
    by_path: HashMap<String, u32>,
    /// Dump: the options of the dump (for files found in flight).
    opts: Opts,
    /// Dump: the tasks of the tree (to find pty masters, pidfd targets).
    tree: Vec<Pid>,
    /// Restore under `--root`: the directory the tree's paths are under.
    pub(crate) root: Option<std::path::PathBuf>,
    /// Restore: the caller's fds that stand for objects of the images
    /// (`--inherit-fd fd[N]:pipe:[INO]`), by key.
    pub(crate) inherited: HashMap<String, OwnedFd>,
    // What each subsystem keeps, private to its module.
    queued: pipe::Queued,
    ghosts: ghost::Ghosts,
    memfds: memfd::Memfds,
    /// The terminals.
    pub ttys: tty::Ttys,
    /// The file locks.
    pub locks: file_lock::Locks,
    mqueues: crate::ipc::mqueue::Queues,
    /// The established TCP connections.
    pub tcp: crate::net::tcp::Streams,
    /// Unix sockets, and sock_diag's view of every socket.
    pub(crate) unix: crate::net::unix::State,
    /// The tun files' open flags, and the tun devices they attach to.
    pub(crate) tuns: crate::net::tun::Tuns,
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

    /// Dump: the options every fd is described with, and the tasks of the
    /// tree.
    pub fn start(&mut self, opts: Opts, tree: Vec<Pid>) {
        self.opts = opts;
        self.ghosts.set_limit(opts.ghost_limit);
        self.tree = tree;
    }

    /// Dump: the options fds are described with.
    pub(crate) fn opts(&self) -> Opts {
        self.opts
    }

    /// Dump: whether `pid` is a task of the tree.
    pub(crate) fn in_tree(&self, pid: Pid) -> bool {
        self.tree.contains(&pid)
    }

    /// Give the PIDs the dump recorded (lock owners, pidfd targets, as the
    /// engine's /proc shows them) as the images number them.
    pub fn number_pids(&mut self, image: impl Fn(i32) -> i32) {
        self.locks.number_pids(&image);
        for kind in self.entries.iter_mut().filter_map(|e| e.kind.as_mut()) {
            registry::number_pids(kind, &image);
        }
    }

    /// A file referred to by path (mapped file, exe, cwd, root): one entry per path.
    pub fn path_id(&mut self, path: &str, flags: u32) -> u32 {
        if let Some(&id) = self.by_path.get(path) {
            return id;
        }
        let meta = fs::metadata(path).ok();
        let id = self.add_entry(
            |id| {
                Kind::Reg(RegFileEntry {
                    id,
                    flags,
                    pos: 0,
                    fown: FownEntry::default(),
                    name: path.to_owned(),
                    size: meta.as_ref().filter(|m| m.is_file()).map(MetadataExt::size),
                    mode: meta.as_ref().map(MetadataExt::mode),
                    ..RegFileEntry::default()
                })
            },
            FdTypes::Reg,
        );
        self.by_path.insert(path.to_owned(), id);
        id
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
        let id = self.add_entry(
            |id| {
                Kind::Reg(RegFileEntry {
                    id,
                    flags: libc::O_RDONLY.cast_unsigned(),
                    pos: 0,
                    fown: FownEntry::default(),
                    name: orig.to_owned(),
                    size: Some(meta.size()),
                    mode: Some(meta.mode()),
                    ..RegFileEntry::default()
                })
            },
            FdTypes::Reg,
        );
        self.by_path.insert(key, id);
        let what = format!("memory mapping {start:#x}-{end:#x} of {name}");
        self.ghosts.save_mapping(pid, &link, &what, &meta, id)?;
        Ok(id)
    }

    /// Describe every fd of `pid` (its fd table, in order): the
    /// `fdinfo-ID.img` entries.
    pub fn dump_fds(&mut self, pid: Pid, fds: &[proc::Fd]) -> Result<Vec<FdinfoEntry>> {
        let mut fdinfo = Vec::with_capacity(fds.len());
        for fd in fds {
            fdinfo.push(self.dump_fd(pid, fd)?);
        }
        Ok(fdinfo)
    }

    /// The `fs-ID.img` entry of `pid`: its working and root directories
    /// (files by path), and `umask` from its /proc status.
    pub fn dump_fs(&mut self, pid: Pid, umask: Option<u32>) -> Result<FsEntry> {
        let cwd = link(pid, "cwd")?;
        let root = link(pid, "root")?;
        Ok(FsEntry {
            cwd_id: self.path_id(&cwd, libc::O_RDONLY.cast_unsigned()),
            root_id: self.path_id(&root, libc::O_RDONLY.cast_unsigned()),
            umask,
        })
    }

    /// Describe fd `fd` of `pid`; errors name the fd and its kind when the
    /// kind is not supported.
    pub fn dump_fd(&mut self, pid: Pid, fd: &proc::Fd) -> Result<FdinfoEntry> {
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
        let locks = fd_locks(pid, fd, self.opts.file_locks).map_err(unsupported)?;
        let ty = self.kind_of(pid, fd, &meta).map_err(unsupported)?;
        // The same open file description seen before (dup, fork)?
        if let Ok(i) = self.find_described(pid, fd.fd, meta.dev(), meta.ino())
            && let Some(&(_, _, id)) = self
                .described
                .get(&(meta.dev(), meta.ino()))
                .and_then(|l| l.get(i))
        {
            self.locks.note(id, locks);
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
            self.ghosts.save_fd(&cx, self.opts.ghost_limit, id)?;
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
        self.locks.note(id, locks);
        if ty == FdTypes::Reg
            && nix::sys::stat::major(meta.dev()) == 0
            && self.mqueues.is_mqueue(pid, fd.fd, meta.dev())
        {
            self.mqueues.note(pid, fd.fd, &fd.target, id)?;
        }
        Ok(fdinfo(id, ty, fd))
    }

    /// The kind of fd `fd` of `pid` (its file is `meta`); Err: what to
    /// name in the refusal of a file no kind takes.
    fn kind_of(
        &mut self,
        pid: Pid,
        fd: &proc::Fd,
        meta: &fs::Metadata,
    ) -> std::result::Result<FdTypes, String> {
        let ft = meta.file_type();
        if fd.target.starts_with("pipe:[") {
            Ok(FdTypes::Pipe)
        } else if let Some(ty) = registry::by_link(&fd.target) {
            Ok(ty)
        } else if fd.target.starts_with("/memfd:") && ft.is_file() {
            Ok(FdTypes::Memfd)
        } else if ft.is_socket() {
            self.socket_kind(pid, fd, meta)
        } else if crate::net::tun::is_tun(meta) {
            Ok(FdTypes::Tunf)
        } else if !fd.target.starts_with('/') {
            Err(fd.target.clone())
        } else if fd.target.ends_with(" (deleted)")
            && !ft.is_fifo()
            && (!ft.is_file() || fd.target.starts_with("/memfd:"))
        {
            Err(format!("{}, a file deleted while open", fd.target))
        } else if ft.is_fifo() {
            Ok(FdTypes::Fifo)
        } else if ft.is_char_device()
            && tty::is_tty_major(u32::try_from(nix::sys::stat::major(meta.rdev())).unwrap_or(0))
        {
            self.tty_kind(fd, meta)
        } else {
            Ok(FdTypes::Reg)
        }
    }

    /// The kind of a socket: by sock_diag's list of unix sockets, else by
    /// its family.
    fn socket_kind(
        &mut self,
        pid: Pid,
        fd: &proc::Fd,
        meta: &fs::Metadata,
    ) -> std::result::Result<FdTypes, String> {
        if self.unix.is_unix(u32::try_from(meta.ino()).unwrap_or(0)) {
            return Ok(FdTypes::Unixsk);
        }
        // (A unix socket's path names do not depend on it.)
        same_netns(pid, fd)?;
        let domain = kernel::fd::pidfd_open(pid)
            .and_then(|p| kernel::fd::pidfd_getfd(&p, fd.fd))
            .and_then(|d| {
                kernel::socket::getsockopt_int(d.as_fd(), libc::SOL_SOCKET, libc::SO_DOMAIN)
            });
        match domain {
            Ok(libc::AF_INET | libc::AF_INET6) => Ok(FdTypes::Inetsk),
            Ok(libc::AF_NETLINK) => Ok(FdTypes::Netlinksk),
            Ok(libc::AF_PACKET) => Ok(FdTypes::Packetsk),
            other => Err(format!(
                "{}, a socket of family {} (unix, inet, netlink and packet sockets are dumped)",
                fd.target,
                other.map_or_else(|e| e.to_string(), |d| d.to_string())
            )),
        }
    }

    /// The kind of a terminal: a pty whose master is in the tree comes back
    /// as a new pair, the caller's terminals as the caller gives them;
    /// other terminals are reopened by path with --shell-job.
    fn tty_kind(&self, fd: &proc::Fd, meta: &fs::Metadata) -> std::result::Result<FdTypes, String> {
        let pty = tty::pty_end(meta.rdev(), || Some(0))
            .is_some_and(|(i, master)| master || self.pty_master(i).is_some());
        if pty || self.ttys.is_external(&tty::key_of(meta.rdev(), meta.dev())) {
            Ok(FdTypes::Tty)
        } else if self.opts.shell_job {
            Ok(FdTypes::Reg)
        } else if self.opts.orphan_pts_master && tty::pty_end(meta.rdev(), || None).is_some() {
            // A slave whose master the caller holds (a container's
            // console): it gets a new master at the restore.
            Ok(FdTypes::Tty)
        } else {
            Err(format!(
                "terminal {}; dump a job started from a shell with --shell-job (a container's \
                 console is dumped through RPC with orphan_pts_master, as runc does)",
                fd.target
            ))
        }
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
            match kernel::fd::kcmp_file_order(opid, ofd, pid, fd) {
                Ok(Some(std::cmp::Ordering::Equal)) => return Ok(mid),
                Ok(Some(std::cmp::Ordering::Less)) => lo = mid + 1,
                Ok(Some(std::cmp::Ordering::Greater)) => hi = mid,
                _ => {
                    return list
                        .iter()
                        .position(|&(opid, ofd, _)| {
                            kernel::fd::kcmp_file_order(opid, ofd, pid, fd)
                                .is_ok_and(|o| o == Some(std::cmp::Ordering::Equal))
                        })
                        .ok_or(list.len());
                }
            }
        }
        Err(lo)
    }

    /// Dump: the last step, once the tree is dead (`killed`) or running
    /// again: connections killed in repair mode stay so (no FIN, no RST),
    /// the data of connections nobody accepted is read (only possible
    /// now), and the socket queues are written.
    pub fn finish(&mut self, dir: &Dir, killed: bool) -> Result<()> {
        if killed {
            self.tcp.keep();
            self.after_kill()?;
        }
        self.unix.write_socket_queues(&self.entries, dir)
    }

    /// Restore: make the memfd inodes again (before anything opens them).
    pub fn make_memfds(&mut self, dir: &Dir) -> Result<()> {
        self.memfds.make(dir)
    }

    /// Restore: make the ghost files again, each open in the engine and
    /// unlinked at once (tasks open them through /proc, fds and mappings).
    pub fn make_ghosts(&mut self) -> Result<()> {
        let entries = &self.entries;
        self.ghosts.make(|id| {
            match entries
                .iter()
                .find(|e| e.id == id)
                .and_then(|e| e.kind.as_ref())
            {
                Some(Kind::Reg(r)) => Some(r.name.clone()),
                _ => None,
            }
        })
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
            let new = kernel::fd::dup_at_least(fd.as_fd(), at)
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
        self.memfds.move_fds(&mut moved)?;
        self.ghosts.move_fds(&mut moved)?;
        Ok(out)
    }

    /// Write `files.img` and the images of the files' contents and of
    /// each subsystem's state; the memfd pages written.
    pub fn write(&mut self, dir: &Dir) -> Result<u64> {
        self.unix.finish(self.opts.ext_unix_sk)?.add_to(self);
        let described = &self.described;
        let twins = self.tuns.twins(|pid, fd| {
            described
                .values()
                .flatten()
                .find(|d| d.0 == pid && d.1 == fd)
                .map(|d| d.2)
        });
        self.entries.extend(twins);
        dir.write_all(img::FILES, 0, &self.entries)?;
        self.queued.write(dir)?;
        self.ghosts.write(dir)?;
        self.locks.write(dir)?;
        self.ttys.write(dir)?;
        self.tcp.write(dir)?;
        self.mqueues.write(dir)?;
        self.memfds.write(dir)
    }

    /// Load `files.img` and the state of each subsystem.
    pub fn load(dir: &Dir) -> Result<Table> {
        let mut entries: Vec<FileEntry> = dir.read_all(img::FILES, 0)?;
        let tuns = crate::net::tun::Tuns::load(dir, &mut entries)?;
        let mut t = Table {
            tuns,
            tcp: crate::net::tcp::Streams::load(dir, &entries)?,
            entries,
            queued: pipe::Queued::load(dir)?,
            ghosts: ghost::Ghosts::load(dir)?,
            ttys: tty::Ttys::load(dir)?,
            locks: file_lock::Locks::load(dir)?,
            mqueues: crate::ipc::mqueue::Queues::load(dir)?,
            ..Table::default()
        };
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
                if let Some(at) = r.stasis_detached_at.as_mut() {
                    *at = crate::ns::mnt::under(root, at);
                }
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
                .any(|e| matches!(&e.kind, Some(Kind::Pipe(p)) if key == pipe::key(p.pipe_id)))
                || self.ttys.external_keys().any(|k| k == key);
            if !known {
                return Err(img::FILES.bad(
                    0,
                    format!(
                        "--inherit-fd names {key}, which no fd of the images is (pipe:[INO] and tty[RDEV:DEV] keys are taken)"
                    ),
                ));
            }
            self.inherited.insert(key, fd);
        }
        // Checked before anything is made.
        if let Some(key) = self
            .ttys
            .external_keys()
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
            Kind::Reg(r) => match self.ghosts.path_of(id) {
                Some(made) => made,
                None => Some(&r.name),
            },
            Kind::Memfd(m) => self.memfds.path(m.inode_id),
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
            made: pipe::Made::default(),
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
            .ttys
            .orphan_ptys()
            .into_iter()
            .filter_map(|i| cx.ptys.remove(&i).map(|(m, _, _)| (i, m)))
            .collect();
        let mut out = std::mem::take(&mut cx.opened);
        // A FIFO's queued bytes live while it is open: the keepers stay in the
        // pool (under ids no entry has) until every task has its own fds.
        for (k, keeper) in cx.made.take_keepers().into_iter().enumerate() {
            out.insert(u32::MAX - u32::try_from(k).unwrap_or(0), keeper);
        }
        Ok((out, orphans))
    }

    /// Make file `id` again, for the task and fd in `cx`.
    fn open_entry(&self, id: u32, cx: &mut OpenCtx<'_>) -> Result<OwnedFd> {
        let (pid, fd) = (cx.pid, cx.fd);
        let entry = self.get(id).ok_or_else(|| {
            img::FILES.bad(
                0,
                format!("task {pid} fd {fd} refers to file id {id}, which is missing"),
            )
        })?;
        match entry.kind.as_ref() {
            Some(kind) => {
                tracing::debug!(%pid, fd, id, kind = registry::name(kind), "opening");
                registry::open(kind, cx)
            }
            None => Err(img::FILES.bad(0, format!("task {pid} fd {fd}: file {id} has no kind"))),
        }
    }
}

/// The locks fdinfo shows on fd `fd` of `pid`, with the dev:ino of their
/// file; Err: what to name in the refusal (a lock without --file-locks, or
/// one that cannot be read).
fn fd_locks(
    pid: Pid,
    fd: &proc::Fd,
    file_locks: bool,
) -> std::result::Result<Vec<(FileLockEntry, String)>, String> {
    let mut locks = Vec::new();
    for line in fd.extra.iter().filter(|l| l.starts_with("lock:")) {
        let kind = line.split_whitespace().nth(2).unwrap_or("?");
        if !file_locks {
            return Err(format!(
                "{} holding a {kind} file lock without --file-locks",
                fd.target
            ));
        }
        match file_lock::parse(pid, fd.fd, line) {
            Ok(Some(l)) => locks.push(l),
            Ok(None) => {}
            Err(what) => return Err(format!("{}: {what}", fd.target)),
        }
    }
    Ok(locks)
}

/// A failed open of `path` for fd `fd` of `pid`.
fn open_err(pid: Pid, fd: i32, path: &str, err: std::io::Error) -> Error {
    Error::OpenFile {
        pid,
        fd,
        path: path.to_owned(),
        err,
    }
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

/// Where /proc/PID/`what` (a symlink) points.
fn link(pid: Pid, what: &str) -> Result<String> {
    let path = format!("/proc/{pid}/{what}");
    Ok(fs::read_link(&path)
        .map_err(|e| Error::Proc { pid, path, err: e })?
        .to_string_lossy()
        .into_owned())
}
