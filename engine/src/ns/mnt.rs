//! A mount namespace of the tree's own: its mount table, read from
//! `/proc/PID/mountinfo` into `mountpoints-ID.img` (CRIU's `mnt_entry`, one
//! per mount, in mountinfo order), and the contents of the tmpfs
//! superblocks only the tree sees (see [`super::tmpfs`]).
//!
//! The restore starts from a copy of the engine's mount namespace, made
//! private at once so that nothing it does reaches the engine's. Mounts the
//! dump shows unchanged there are kept; the others are unmounted and the
//! missing ones made: a new superblock from its type and options (filled
//! from its archive for a tmpfs) or a bind of a superblock already there,
//! each cloned into place with open_tree and move_mount; then each mount's
//! per-mount flags and propagation (peer groups joined with
//! MOVE_MOUNT_SET_GROUP, also groups the engine's namespace still has).
//! procfs shows the pid namespace of whoever mounts it, so the tree's root
//! task mounts those ([`ProcMount`]). A tree whose root is not the root of
//! the engine's namespace (pivot_root'ed, a container) is refused.

use stasis_kernel as kernel;
use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::unistd::Pid;
use rustix::mount::{MoveMountFlags, OpenTreeFlags};
use stasis_proto::images::{Fstype, MntEntry};

use crate::error::{EngineError as Error, Result};
use crate::images::{Dir, img};

/// Per-mount flags mountinfo shows (column 6).
const MOUNT_FLAGS: &[(&str, u64)] = &[
    ("ro", libc::MS_RDONLY),
    ("nosuid", libc::MS_NOSUID),
    ("nodev", libc::MS_NODEV),
    ("noexec", libc::MS_NOEXEC),
    ("noatime", libc::MS_NOATIME),
    ("nodiratime", libc::MS_NODIRATIME),
    ("relatime", libc::MS_RELATIME),
    ("nosymfollow", libc::MS_NOSYMFOLLOW),
    ("strictatime", libc::MS_STRICTATIME),
];

/// Superblock flags among the superblock options (column 11).
const SB_FLAGS: &[(&str, u64)] = &[
    ("ro", libc::MS_RDONLY),
    ("sync", libc::MS_SYNCHRONOUS),
    ("dirsync", libc::MS_DIRSYNC),
    ("mand", libc::MS_MANDLOCK),
    ("lazytime", libc::MS_LAZYTIME),
];

/// Filesystems made anew from their type and options, and their code in
/// the image.
const FRESH: &[(&str, Fstype)] = &[
    ("proc", Fstype::Proc),
    ("sysfs", Fstype::Sysfs),
    ("tmpfs", Fstype::Tmpfs),
    ("devpts", Fstype::Devpts),
    ("mqueue", Fstype::Mqueue),
    ("cgroup2", Fstype::Cgroup2),
    ("securityfs", Fstype::Securityfs),
    ("debugfs", Fstype::Debugfs),
    ("tracefs", Fstype::Tracefs),
    ("fusectl", Fstype::Fusectl),
    ("pstore", Fstype::Pstore),
    ("binfmt_misc", Fstype::BinfmtMisc),
    ("overlay", Fstype::Overlayfs),
    ("bpf", Fstype::Auto),
    ("hugetlbfs", Fstype::Auto),
];

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mount {
    pub id: u32,
    pub parent: u32,
    /// The superblock's device, kernel encoding (major << 20 | minor).
    pub dev: u32,
    pub root: String,
    pub point: String,
    /// Per-mount MS_* flags.
    pub flags: u64,
    pub shared: Option<u32>,
    pub master: Option<u32>,
    pub unbindable: bool,
    pub fstype: String,
    pub source: String,
    /// Superblock MS_* flags.
    pub sb_flags: u64,
    /// The other superblock options.
    pub options: String,
    /// An external mount (`--external mnt[POINT]:KEY`): the restore binds
    /// what the caller names by KEY there.
    pub ext_key: Option<String>,
}

/// Undo mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len() + 1
            && let Some(oct) = s.get(i + 1..i + 4)
            && let Ok(v) = u8::from_str_radix(oct, 8)
        {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parse a mountinfo table; `None` on a malformed line.
pub(crate) fn parse(text: &str) -> Option<Vec<Mount>> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Mount> {
    let (head, tail) = line.split_once(" - ")?;
    let mut h = head.split(' ');
    let id = h.next()?.parse().ok()?;
    let parent = h.next()?.parse().ok()?;
    let (maj, min) = h.next()?.split_once(':')?;
    let dev = (maj.parse::<u32>().ok()? << 20) | min.parse::<u32>().ok()?;
    let root = unescape(h.next()?);
    let point = unescape(h.next()?);
    let mut flags = 0;
    for o in h.next()?.split(',') {
        if let Some(&(_, f)) = MOUNT_FLAGS.iter().find(|(n, _)| *n == o) {
            flags |= f;
        }
    }
    if flags & (libc::MS_RELATIME | libc::MS_NOATIME) == 0 {
        flags |= libc::MS_STRICTATIME;
    }
    let (mut shared, mut master, mut unbindable) = (None, None, false);
    for opt in h {
        if let Some(v) = opt.strip_prefix("shared:") {
            shared = Some(v.parse().ok()?);
        } else if let Some(v) = opt.strip_prefix("master:") {
            master = Some(v.parse().ok()?);
        } else if opt == "unbindable" {
            unbindable = true;
        }
    }
    let mut t = tail.split(' ');
    let fstype = unescape(t.next()?);
    let source = unescape(t.next()?);
    let mut sb_flags = 0;
    let mut options = Vec::new();
    for o in t.next().unwrap_or("").split(',').filter(|o| !o.is_empty()) {
        match SB_FLAGS.iter().find(|(n, _)| *n == o) {
            Some(&(_, f)) => sb_flags |= f,
            None if o == "rw" => {}
            None => options.push(unescape(o)),
        }
    }
    Some(Mount {
        id,
        parent,
        dev,
        root,
        point,
        flags,
        shared,
        master,
        unbindable,
        fstype,
        source,
        sb_flags,
        options: options.join(","),
        ext_key: None,
    })
}

fn fstype_code(name: &str) -> Fstype {
    FRESH
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(Fstype::Auto, |&(_, c)| c)
}

impl Mount {
    fn to_entry(&self) -> MntEntry {
        let mut flags = self.flags;
        if self.shared.is_some() {
            flags |= libc::MS_SHARED;
        }
        if self.master.is_some() {
            flags |= libc::MS_SLAVE;
        }
        if self.unbindable {
            flags |= libc::MS_UNBINDABLE;
        }
        MntEntry {
            fstype: fstype_code(&self.fstype) as u32,
            mnt_id: self.id,
            root_dev: self.dev,
            parent_mnt_id: self.parent,
            flags: u32::try_from(flags).unwrap_or(0),
            root: self.root.clone(),
            mountpoint: self.point.clone(),
            source: self.source.clone(),
            options: self.options.clone(),
            shared_id: self.shared,
            master_id: self.master,
            fsname: Some(self.fstype.clone()),
            sb_flags: Some(u32::try_from(self.sb_flags).unwrap_or(0)),
            ext_mount: self.ext_key.as_ref().map(|_| true),
            ext_key: self.ext_key.clone(),
            ..MntEntry::default()
        }
    }

    fn from_entry(e: &MntEntry) -> Mount {
        let flags = u64::from(e.flags);
        let fstype = e.fsname.clone().unwrap_or_else(|| {
            FRESH
                .iter()
                .find(|(_, c)| *c as u32 == e.fstype)
                .map_or_else(String::new, |(n, _)| (*n).to_owned())
        });
        Mount {
            id: e.mnt_id,
            parent: e.parent_mnt_id,
            dev: e.root_dev,
            root: e.root.clone(),
            point: e.mountpoint.clone(),
            flags: flags & MOUNT_FLAGS.iter().fold(0, |a, &(_, f)| a | f),
            shared: e.shared_id.filter(|_| flags & libc::MS_SHARED != 0),
            master: e.master_id.filter(|_| flags & libc::MS_SLAVE != 0),
            unbindable: flags & libc::MS_UNBINDABLE != 0,
            fstype,
            source: e.source.clone(),
            sb_flags: u64::from(e.sb_flags.unwrap_or(0)),
            options: e.options.clone(),
            ext_key: e.ext_key.clone().filter(|_| e.ext_mount == Some(true)),
        }
    }

    /// What makes two mounts the same mount of the same thing.
    fn same(&self, o: &Mount) -> bool {
        self.point == o.point
            && self.root == o.root
            && self.dev == o.dev
            && self.fstype == o.fstype
            && self.source == o.source
    }

    fn shown(&self) -> String {
        format!("{} ({} {})", self.point, self.fstype, self.source)
    }
}

fn dev_shown(dev: u32) -> String {
    format!("{}:{}", dev >> 20, dev & 0xf_ffff)
}

fn read_table(path: &str, pid: Pid) -> Result<Vec<Mount>> {
    crate::proc::parsed(pid, path, parse)
}

/// The mount a table's tree hangs from: the one whose parent is not in it.
fn table_root(t: &[Mount]) -> Option<&Mount> {
    let ids: HashSet<u32> = t.iter().map(|m| m.id).collect();
    let mut roots = t.iter().filter(|m| !ids.contains(&m.parent));
    let r = roots.next()?;
    roots.next().is_none().then_some(r)
}

/// `path` relative to `base` when `base` holds it ("/a" in "/a/b" -> "b").
fn rel<'a>(path: &'a str, base: &str) -> Option<&'a str> {
    if base == "/" {
        return Some(path.trim_start_matches('/'));
    }
    let r = path.strip_prefix(base)?;
    (r.is_empty() || r.starts_with('/')).then(|| r.trim_start_matches('/'))
}

fn rx(e: rustix::io::Errno) -> Errno {
    Errno::from_raw(e.raw_os_error())
}

/// Files a tree in a mount namespace of its own holds open on mounts its
/// namespace does not have (opened before it unshared: mounts of the
/// engine's namespace, or of one gone since, detached): /proc shows their
/// paths from the mount's root only. They are named through a mount of the
/// tree's own of the same filesystem where the same file is found, and
/// opened again through a detached clone of it (so /proc shows the same).
#[derive(Debug)]
pub struct Foreign {
    root: Pid,
    theirs: Vec<Mount>,
    mine: HashMap<u32, Mount>,
}

impl Foreign {
    /// The mount tables of `root`'s namespace and the engine's.
    pub fn new(root: Pid) -> Result<Foreign> {
        let theirs = ns_table(root)?;
        let mine = read_table("/proc/thread-self/mountinfo", nix::unistd::getpid())?;
        Ok(Foreign {
            root,
            theirs,
            mine: mine.into_iter().map(|m| (m.id, m)).collect(),
        })
    }

    /// Rename fd `fd` of `pid` if it is open on a mount its namespace does
    /// not have.
    pub fn fix(&self, pid: Pid, fd: &mut crate::proc::Fd) {
        use std::os::unix::fs::MetadataExt;
        let Ok(id) = u32::try_from(fd.mnt_id) else {
            return;
        };
        if self.theirs.iter().any(|m| m.id == id) || !fd.target.starts_with('/') {
            return;
        }
        // A mount of a live namespace (the engine's, say): /proc shows
        // the path there already.
        if self.mine.contains_key(&id) {
            return;
        }
        let Ok(meta) = std::fs::metadata(format!("/proc/{pid}/fd/{}", fd.fd)) else {
            return;
        };
        let dev = u32::try_from(
            (nix::sys::stat::major(meta.dev()) << 20) | nix::sys::stat::minor(meta.dev()),
        )
        .unwrap_or(0);
        for m in self.theirs.iter().filter(|m| m.dev == dev) {
            let Some(rest) = rel(&fd.target, &m.root) else {
                continue;
            };
            let path = join_path(&m.point, rest);
            let same = std::fs::metadata(format!("/proc/{}/root{path}", self.root))
                .is_ok_and(|o| o.dev() == meta.dev() && o.ino() == meta.ino());
            if same {
                fd.target = path;
                fd.mnt_id = i32::try_from(m.id).unwrap_or(-1);
                fd.detached_at = Some(m.point.clone());
                return;
            }
        }
        // Not in the tree's namespace: a file of the engine's (stdin from
        // outside a container whose restore detached its mount), named
        // as the engine sees it.
        for m in self.mine.values().filter(|m| m.dev == dev) {
            let Some(rest) = rel(&fd.target, &m.root) else {
                continue;
            };
            let path = join_path(&m.point, rest);
            let same = std::fs::metadata(&path)
                .is_ok_and(|o| o.dev() == meta.dev() && o.ino() == meta.ino());
            if same {
                fd.target = path;
                fd.mnt_id = i32::try_from(m.id).unwrap_or(-1);
                return;
            }
        }
    }
}

/// The mount table of `pid`'s mount namespace from its root (not from
/// the task's root: a chrooted task sees part of it), read by a thread that
/// joins the namespace, through the engine's /proc.
fn ns_table(pid: Pid) -> Result<Vec<Mount>> {
    let proc = std::fs::File::open("/proc").map_err(|err| Error::Proc {
        pid,
        path: "/proc".into(),
        err,
    })?;
    let text = crate::task::in_namespace_of(pid, "mnt", CloneFlags::CLONE_NEWNS, || {
        let fd = rustix::fs::openat(
            &proc,
            "thread-self/mountinfo",
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| Error::dump(pid, "its mount table")(rx(e)))?;
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::from(fd), &mut s).map_err(|err| {
            Error::Proc {
                pid,
                path: format!("/proc/{pid}/mountinfo"),
                err,
            }
        })?;
        Ok(s)
    })?;
    parse(&text).ok_or_else(|| Error::ProcFormat {
        pid,
        file: "mountinfo".into(),
    })
}

/// Dump the mount namespace of `root` when it is not the engine's.
pub(crate) fn dump(root: Pid, dir: &Dir, ext_mounts: &[(String, String)]) -> Result<()> {
    let mine = read_table("/proc/thread-self/mountinfo", nix::unistd::getpid())?;
    let mut theirs = ns_table(root)?;
    mark_external(&mut theirs, ext_mounts);
    let unsupported = |what: String| Error::Unsupported { pid: root, what };
    let (Some(r), Some(_)) = (table_root(&theirs), table_root(&mine)) else {
        return Err(unsupported("a mount table without one root".into()));
    };
    // A root of its own (pivot_root'ed, a container): its table and the
    // tasks' paths are as the tree sees them; the restore needs --root.
    if r.point != "/" {
        return Err(unsupported(format!(
            "a root mount at {} ({} {})",
            r.point, r.fstype, r.root
        )));
    }
    let my_devs: HashSet<u32> = mine.iter().map(|m| m.dev).collect();
    check_makeable(root, &theirs, &my_devs)?;
    save_tmpfs(root, dir, &theirs, &my_devs)?;
    let entries: Vec<MntEntry> = theirs.iter().map(Mount::to_entry).collect();
    dir.write_all(img::MNTS, super::NS_ID, &entries)
}

/// External mounts (`--external mnt[POINT]:KEY`): the caller's, bound
/// again from what it names by KEY at the restore; nothing of them is
/// saved. A map entry without a mount is passed over, as in CRIU
/// (runtimes list every device they might have bound).
fn mark_external(theirs: &mut [Mount], ext_mounts: &[(String, String)]) {
    for (point, key) in ext_mounts {
        match theirs.iter_mut().rev().find(|m| m.point == *point) {
            Some(m) => m.ext_key = Some(key.clone()),
            None => tracing::debug!("external mount {point} ({key}): the tree has no mount there"),
        }
    }
}

/// Every mount of the tree is one the restore can make: of a device the
/// engine sees (`my_devs`) or of a filesystem made anew.
fn check_makeable(root: Pid, theirs: &[Mount], my_devs: &HashSet<u32>) -> Result<()> {
    for m in theirs.iter().filter(|m| m.ext_key.is_none()) {
        let fresh = FRESH.iter().any(|(n, _)| *n == m.fstype) && m.root == "/";
        if !fresh
            && !my_devs.contains(&m.dev)
            && !theirs.iter().any(|o| {
                o.dev == m.dev && o.root == "/" && FRESH.iter().any(|(n, _)| *n == o.fstype)
            })
        {
            return Err(Error::Unsupported {
                pid: root,
                what: format!(
                    "mount {} of device {} ({}), which stasis' mount namespace does not show \
                     and which cannot be made anew; mount it outside the tree too",
                    m.shown(),
                    dev_shown(m.dev),
                    m.fstype
                ),
            });
        }
    }
    Ok(())
}

/// The contents of each tmpfs only the tree sees, once per superblock,
/// through an uncovered mount of its root (the one with the fewest mounts
/// stacked on it).
fn save_tmpfs(root: Pid, dir: &Dir, theirs: &[Mount], my_devs: &HashSet<u32>) -> Result<()> {
    let covers = |v: &Mount| {
        let mut n = 0;
        let mut top = v.id;
        while let Some(o) = theirs
            .iter()
            .find(|o| o.parent == top && o.point == v.point)
        {
            n += 1;
            top = o.id;
        }
        n
    };
    let mut saved = HashSet::new();
    for m in theirs
        .iter()
        .filter(|m| m.fstype == "tmpfs" && !my_devs.contains(&m.dev) && m.ext_key.is_none())
    {
        if !saved.insert(m.dev) {
            continue;
        }
        let Some(view) = theirs
            .iter()
            .filter(|v| v.dev == m.dev && v.root == "/")
            .min_by_key(|v| covers(v))
        else {
            return Err(Error::Unsupported {
                pid: root,
                what: format!(
                    "tmpfs {} whose root is mounted nowhere: its contents cannot be read",
                    m.shown()
                ),
            });
        };
        let clone = clean_view(root, &view.point, covers(view))?;
        let base = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&clone));
        // An empty one (a runtime's mask over part of /proc) is made anew.
        if std::fs::read_dir(&base).is_ok_and(|mut d| d.next().is_none()) {
            continue;
        }
        super::tmpfs::save(Path::new(&base), &dir.tmpfs_file(m.dev), &view.shown())?;
    }
    Ok(())
}

/// A detached copy of the mount at `point` in the mount namespace of
/// `pid`, without the mounts on top of it: read in a private copy of that
/// namespace where the `covers` mounts stacked on it are unmounted.
fn clean_view(pid: Pid, point: &str, covers: usize) -> Result<OwnedFd> {
    let fail = |what: &str| Error::dump(pid, format!("{what} (a view of mount {point})"));
    // A copy made from outside the tree's user namespace locks every mount
    // in it: then a helper process that joined the user namespace makes it.
    let userns = std::fs::read_link(format!("/proc/{pid}/ns/user")).ok()
        != std::fs::read_link("/proc/self/ns/user").ok();
    if covers > 0 && userns {
        return clean_view_in_userns(pid, point, covers);
    }
    crate::task::in_namespace_of(pid, "mnt", CloneFlags::CLONE_NEWNS, || {
        if covers > 0 {
            uncover(point, covers).map_err(|(what, e)| fail(what)(e))?;
        }
        let flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
        rustix::mount::open_tree(rustix::fs::CWD, point, flags)
            .map_err(|e| fail("cloning it")(rx(e)))
    })
}

/// Make every mount of the caller's (copied) mount namespace private, so
/// that nothing done there reaches the namespace it was copied from.
fn make_private() -> std::result::Result<(), Errno> {
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
}

/// In the caller's mount namespace: make a private copy of it and unmount
/// the `covers` mounts stacked on `point` there.
fn uncover(point: &str, covers: usize) -> std::result::Result<(), (&'static str, Errno)> {
    nix::sched::unshare(CloneFlags::CLONE_NEWNS)
        .map_err(|e| ("a private copy of its mount namespace", e))?;
    make_private().map_err(|e| ("making that copy private", e))?;
    for _ in 0..covers {
        nix::mount::umount2(point, nix::mount::MntFlags::MNT_DETACH)
            .map_err(|e| ("unmounting what covers it in that copy", e))?;
    }
    Ok(())
}

/// [`clean_view`] from a helper process inside the tree's user namespace;
/// the clone comes back over a socket pair.
fn clean_view_in_userns(pid: Pid, point: &str, covers: usize) -> Result<OwnedFd> {
    use nix::sys::socket::{
        AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, sendmsg, socketpair,
    };
    let fail = |what: &str| Error::dump(pid, format!("{what} (a view of mount {point})"));
    let open = |ns: &str| {
        let path = format!("/proc/{pid}/ns/{ns}");
        std::fs::File::open(&path).map_err(|err| Error::Proc { pid, path, err })
    };
    let (user, mnt) = (open("user")?, open("mnt")?);
    let (here, there) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(fail("a socket pair"))?;
    match kernel::clone::fork_single_threaded_ids(&[], false, false)
        .map_err(fail("a helper in its user namespace"))?
    {
        kernel::clone::Forked::Child => {
            drop(here);
            let res = nix::sched::setns(user.as_fd(), CloneFlags::CLONE_NEWUSER)
                .and_then(|()| nix::sched::setns(mnt.as_fd(), CloneFlags::CLONE_NEWNS))
                .and_then(|()| uncover(point, covers).map_err(|(_, e)| e))
                .and_then(|()| {
                    let flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
                    rustix::mount::open_tree(rustix::fs::CWD, point, flags).map_err(rx)
                });
            let code = match res {
                Ok(fd) => {
                    let fds = [std::os::fd::AsRawFd::as_raw_fd(&fd)];
                    let cmsg = [ControlMessage::ScmRights(&fds)];
                    let iov = [std::io::IoSlice::new(b"v")];
                    i32::from(
                        sendmsg::<()>(
                            std::os::fd::AsRawFd::as_raw_fd(&there),
                            &iov,
                            &cmsg,
                            MsgFlags::empty(),
                            None,
                        )
                        .is_err(),
                    )
                }
                Err(e) => {
                    let _ = nix::unistd::write(&there, &(e as i32).to_ne_bytes());
                    1
                }
            };
            kernel::process::exit_now(code)
        }
        kernel::clone::Forked::Parent(helper) => {
            drop(there);
            let mut buf = [0u8; 4];
            let got = kernel::socket::recv_msg(std::os::fd::AsRawFd::as_raw_fd(&here), &mut buf, 0)
                .map(|(_, fds, _)| fds.into_iter().next());
            let _ = nix::sys::wait::waitpid(helper, None);
            match got {
                Ok(Some(fd)) => Ok(fd),
                Ok(None) => Err(fail("cloning it in its user namespace")(Errno::from_raw(
                    i32::from_ne_bytes(buf),
                ))),
                Err(e) => Err(fail("the helper's answer")(e)),
            }
        }
    }
}

/// A mount the tree's root task makes: a procfs (which shows the pid
/// namespace of whoever mounts it), or a mount on top of one (runtimes
/// cover parts of /proc with read-only binds, /dev/null and tmpfs).
#[derive(Debug, Clone)]
pub struct ProcMount {
    /// Where.
    pub point: String,
    /// Per-mount flags.
    pub flags: u64,
    /// Superblock options.
    pub options: String,
    /// What is mounted.
    pub kind: LateKind,
}

/// What a [`ProcMount`] mounts.
#[derive(Debug, Clone)]
pub enum LateKind {
    /// A procfs.
    Proc,
    /// A bind of this path (then its flags).
    Bind(String),
    /// A new superblock of this type and source.
    Fresh(String, String),
}

/// `rest` (a path inside a mount) under mount point `point`.
fn join_path(point: &str, rest: &str) -> String {
    let rest = rest.trim_start_matches('/');
    match (point, rest) {
        (p, "") => p.to_owned(),
        ("/", r) => format!("/{r}"),
        (p, r) => format!("{}/{r}", p.trim_end_matches('/')),
    }
}

/// The restored mount namespace: the tasks join it.
#[derive(Debug)]
pub struct Restored {
    /// The namespace.
    pub ns: OwnedFd,
    /// The engine's own, to go back to, and its working directory there
    /// (joining a mount namespace moves it to the root; a relative images
    /// directory needs it back).
    pub engine: OwnedFd,
    cwd: OwnedFd,
    /// procfs mounts the root task makes.
    pub procs: Vec<ProcMount>,
    /// With --root: the directory the tree's mounts are under, made the
    /// namespace's root (pivot_root) once the tasks no longer look up paths.
    pub root: Option<std::path::PathBuf>,
    /// Whether the tree's root mount was shared (made so after the pivot,
    /// which refuses a shared mount).
    pub root_shared: bool,
    /// ptys made in a devpts of the tree's so that binds of them (a
    /// container's /dev/console) have a source: their masters by index.
    pub ptys: Vec<(u32, OwnedFd)>,
}

/// The ids of the mounts of the tree's own namespace (none if it has
/// none): files on other mounts were named as the engine saw them.
pub fn mount_ids(dir: &Dir) -> Result<HashSet<u32>> {
    if !dir.exists(img::MNTS, super::NS_ID) {
        return Ok(HashSet::new());
    }
    Ok(dir
        .read_all(img::MNTS, super::NS_ID)?
        .iter()
        .map(|e| Mount::from_entry(e).id)
        .collect())
}

/// Run `f` with the engine's root changed to `root` (a path the tree saw
/// is looked up as it did, and kept as it was: a unix socket's name), then
/// back to the engine's own root and directory.
pub(crate) fn within_root<T, E>(
    root: &Path,
    f: impl FnOnce() -> std::result::Result<T, E>,
) -> std::result::Result<std::result::Result<T, E>, Errno> {
    let dir = |p: &str| {
        rustix::fs::open(
            p,
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(rx)
    };
    let (old_root, old_cwd) = (dir("/")?, dir(".")?);
    nix::unistd::chroot(root)?;
    let res = nix::unistd::chdir("/").map(|()| f());
    // Back, whatever happened inside.
    nix::unistd::fchdir(&old_root)?;
    nix::unistd::chroot(".")?;
    nix::unistd::fchdir(&old_cwd)?;
    res
}

/// `point` (as the tree saw it) under directory `root`.
pub fn under(root: &Path, point: &str) -> String {
    let r = root.to_string_lossy();
    let rest = point.trim_start_matches('/');
    if rest.is_empty() {
        r.into_owned()
    } else {
        format!("{}/{rest}", r.trim_end_matches('/'))
    }
}

impl Restored {
    /// Put the engine back in its own mount namespace.
    pub fn leave(&self) -> Result<()> {
        let me = nix::unistd::getpid();
        nix::sched::setns(self.engine.as_fd(), CloneFlags::CLONE_NEWNS)
            .map_err(Error::restore(me, "the engine's mount namespace"))?;
        nix::unistd::fchdir(&self.cwd).map_err(Error::restore(me, "the engine's directory"))
    }
}

fn mount_err(path: &str, what: &str) -> impl FnOnce(Errno) -> Error {
    let (path, what) = (path.to_owned(), what.to_owned());
    move |errno| Error::Mount {
        path,
        what,
        errno,
        hint: "",
    }
}

/// Sort `t` so that a mount comes after its parent, siblings in table
/// order (which is the order they were stacked in).
fn tree_order(t: &[Mount]) -> Vec<usize> {
    let mut kids: HashMap<u32, Vec<usize>> = HashMap::new();
    for (i, m) in t.iter().enumerate() {
        kids.entry(m.parent).or_default().push(i);
    }
    let mut out = Vec::with_capacity(t.len());
    let Some(r) = table_root(t) else {
        return out;
    };
    let mut queue =
        std::collections::VecDeque::from([t.iter().position(|m| m.id == r.id).unwrap_or(0)]);
    while let Some(i) = queue.pop_front() {
        out.push(i);
        if let Some(k) = kids.get(&t[i].id) {
            queue.extend(k.iter().copied().filter(|&k| k != i));
        }
    }
    out
}

/// Which mounts of `want` are already there in `have` (index in `have`),
/// from the root down: a mount matches when its parent does and it is the
/// same mount at the same place in the same stack of mounts there.
fn matching(want: &[Mount], have: &[Mount]) -> Vec<Option<usize>> {
    let mut out = vec![None; want.len()];
    let (Some(wr), Some(hr)) = (table_root(want), table_root(have)) else {
        return out;
    };
    let (Some(wi), Some(hi)) = (
        want.iter().position(|m| m.id == wr.id),
        have.iter().position(|m| m.id == hr.id),
    ) else {
        return out;
    };
    if !want[wi].same(&have[hi]) {
        return out;
    }
    out[wi] = Some(hi);
    for i in tree_order(want) {
        let Some(h) = out[i] else { continue };
        let (wid, hid) = (want[i].id, have[h].id);
        // Children of both, by mount point, in stacking order.
        let mut points: Vec<&str> = Vec::new();
        for m in want.iter().filter(|m| m.parent == wid && m.id != wid) {
            if !points.contains(&m.point.as_str()) {
                points.push(&m.point);
            }
        }
        for p in points {
            let ws: Vec<usize> = (0..want.len())
                .filter(|&k| want[k].parent == wid && want[k].id != wid && want[k].point == p)
                .collect();
            let hs: Vec<usize> = (0..have.len())
                .filter(|&k| have[k].parent == hid && have[k].id != hid && have[k].point == p)
                .collect();
            for (&w, &h) in ws.iter().zip(&hs) {
                if !want[w].same(&have[h]) {
                    break;
                }
                out[w] = Some(h);
            }
        }
    }
    out
}

/// Make the tree's mount namespace from `mountpoints-ID.img`, if the dump
/// wrote one: the engine is left inside it (to open the tree's files) and
/// goes back with [`Restored::leave`].
pub fn restore(
    dir: &Dir,
    user: Option<&super::user::Helper>,
    new_root: Option<&Path>,
    ext_mounts: &[(String, String)],
    cgroups: &crate::cgroup::Remap,
) -> Result<Option<Restored>> {
    if !dir.exists(img::MNTS, super::NS_ID) {
        return Ok(None);
    }
    let mut want = load_table(dir, cgroups)?;
    let Some(want_root) = table_root(&want) else {
        return Err(img::MNTS.bad(super::NS_ID, "no single root mount"));
    };
    let me = nix::unistd::getpid();
    // With --root, the tree's mounts are made under that directory (the
    // root mount a bind of it), which becomes the namespace's root once
    // the tasks are restored ([`Restored::root`]).
    let rooted = rooted_dir(new_root, want_root, me)?;
    if let Some(r) = &rooted {
        want.iter_mut().for_each(|m| m.point = under(r, &m.point));
    }
    let Some(want_root) = table_root(&want) else {
        return Err(img::MNTS.bad(super::NS_ID, "no single root mount"));
    };
    let engine = super::this_thread("mnt")?;
    let cwd = rustix::fs::open(
        ".",
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| Error::restore(me, "the engine's directory")(rx(e)))?;
    // Taken before the namespace is copied.
    let groups = Outside::hold(&want, me)?;
    // In a user namespace of the tree's own, the copy its helper made
    // (owned by it, as the tree's was).
    match user {
        Some(h) => h.join("mnt", CloneFlags::CLONE_NEWNS)?,
        None => nix::sched::unshare(CloneFlags::CLONE_NEWNS)
            .map_err(Error::restore(me, "a mount namespace"))?,
    }
    let mut ptys = Vec::new();
    let mk = Making {
        want: &want,
        want_root,
        dir,
        rooted: rooted.as_deref(),
        ext_mounts,
    };
    let inside =
        build(&mk, &groups, &mut ptys).and_then(|procs| Ok((super::this_thread("mnt")?, procs)));
    match inside {
        Ok((ns, procs)) => Ok(Some(Restored {
            ns,
            engine,
            cwd,
            procs,
            root_shared: rooted.is_some() && want_root.shared.is_some(),
            root: rooted,
            ptys,
        })),
        Err(e) => {
            // The copy goes with the engine's leaving it (nothing holds it).
            let _ = nix::sched::setns(engine.as_fd(), CloneFlags::CLONE_NEWNS);
            let _ = nix::unistd::fchdir(&cwd);
            Err(e)
        }
    }
}

/// The tree's mount table from `mountpoints-ID.img`, its cgroup mounts
/// following the tree's cgroups (--cgroup-root); refused unless it is one
/// tree.
fn load_table(dir: &Dir, cgroups: &crate::cgroup::Remap) -> Result<Vec<Mount>> {
    let mut want: Vec<Mount> = dir
        .read_all(img::MNTS, super::NS_ID)?
        .iter()
        .map(Mount::from_entry)
        .collect();
    for m in want
        .iter_mut()
        .filter(|m| m.fstype == "cgroup" || m.fstype == "cgroup2")
    {
        m.root = cgroups.mount_root(&m.fstype, &m.options, &m.root);
    }
    if table_root(&want).is_none() {
        return Err(img::MNTS.bad(super::NS_ID, "no single root mount"));
    }
    if tree_order(&want).len() != want.len() {
        return Err(img::MNTS.bad(super::NS_ID, "mounts whose parents are not in the table"));
    }
    Ok(want)
}

/// With --root, the tree's mounts are made under that directory (the
/// root mount a bind of it), which becomes the namespace's root once the
/// tasks are restored ([`Restored::root`]). Without it, a tree whose root
/// is not the engine's is refused.
fn rooted_dir(
    new_root: Option<&Path>,
    want_root: &Mount,
    me: Pid,
) -> Result<Option<std::path::PathBuf>> {
    if let Some(r) = new_root {
        return std::fs::canonicalize(r)
            .map(Some)
            .map_err(|err| Error::MountContents {
                path: r.display().to_string(),
                what: "the --root directory",
                err,
            });
    }
    let mine = read_table("/proc/thread-self/mountinfo", me)?;
    if table_root(&mine).is_some_and(|m| m.dev != want_root.dev || m.root != want_root.root) {
        return Err(Error::Mount {
            path: "/".into(),
            what: format!(
                "giving the tree its own root ({} {})",
                want_root.fstype, want_root.root
            ),
            errno: Errno::EINVAL,
            hint: ": the tree was pivot_root'ed (a container); restore with --root DIR, \
                   DIR holding its root file system",
        });
    }
    Ok(None)
}

/// Peer groups of the engine's namespace, each held by an O_PATH fd on
/// its widest member (`peers`) or on a mount that is only a slave of it
/// (`slaves`: joining that one's group makes a slave of the same master).
#[derive(Debug, Default)]
struct Outside {
    peers: HashMap<u32, OwnedFd>,
    slaves: HashMap<u32, OwnedFd>,
}

impl Outside {
    /// The peer groups of the engine's namespace the mounts of `want` were
    /// in (shared or slave), each held by one member (the widest).
    fn hold(want: &[Mount], me: Pid) -> Result<Outside> {
        let outside = read_table("/proc/thread-self/mountinfo", me)?;
        let mut groups = Outside::default();
        for id in want.iter().flat_map(|m| [m.shared, m.master]).flatten() {
            for (slave, map) in [(false, &mut groups.peers), (true, &mut groups.slaves)] {
                if map.contains_key(&id) {
                    continue;
                }
                let mut members: Vec<&Mount> = outside
                    .iter()
                    .filter(|m| {
                        if slave {
                            m.master == Some(id) && m.shared.is_none()
                        } else {
                            m.shared == Some(id)
                        }
                    })
                    .collect();
                members.sort_by_key(|m| m.root.len());
                if let Some(fd) = members.into_iter().find_map(|m| open_mount(m).ok()) {
                    map.insert(id, fd);
                }
            }
        }
        Ok(groups)
    }
}

/// An O_PATH fd on mount `m` of the current namespace, checked to be that
/// mount (not one stacked on it).
fn open_mount(m: &Mount) -> Result<OwnedFd, Errno> {
    let fd = rustix::mount::open_tree(
        rustix::fs::CWD,
        m.point.as_str(),
        OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )
    .map_err(rx)?;
    let st = rustix::fs::statx(
        &fd,
        "",
        rustix::fs::AtFlags::EMPTY_PATH,
        rustix::fs::StatxFlags::MNT_ID,
    )
    .map_err(rx)?;
    if st.stx_mnt_id != u64::from(m.id) {
        return Err(Errno::EBUSY);
    }
    Ok(fd)
}

/// What making the tree's table needs to know.
struct Making<'a> {
    want: &'a [Mount],
    want_root: &'a Mount,
    dir: &'a Dir,
    /// The --root directory everything is made under.
    rooted: Option<&'a Path>,
    ext_mounts: &'a [(String, String)],
}

/// In the fresh copy of the engine's namespace: make the table `want`
/// (the ptys its devpts binds need go to `ptys`); the mounts the root task
/// makes on its procfs.
fn build(
    mk: &Making<'_>,
    groups: &Outside,
    ptys: &mut Vec<(u32, OwnedFd)>,
) -> Result<Vec<ProcMount>> {
    let (want, want_root, rooted) = (mk.want, mk.want_root, mk.rooted);
    let me = nix::unistd::getpid();
    make_private().map_err(mount_err("/", "making the copied namespace private"))?;
    let have = read_table("/proc/thread-self/mountinfo", me)?;
    // Under --root nothing is kept: every mount is made there, and the
    // engine's copy stays around it until the pivot.
    let matched = if rooted.is_some() {
        vec![None; want.len()]
    } else {
        matching(want, &have)
    };
    if rooted.is_none() && matched.iter().all(Option::is_none) {
        return Err(Error::Mount {
            path: "/".into(),
            what: format!(
                "finding the tree's root mount ({} {}) here",
                want_root.fstype, want_root.root
            ),
            errno: Errno::ENOENT,
            hint: "; a pivot_root'ed tree needs --root",
        });
    }
    let sources = bind_sources(want, &have, &matched);
    let kept: HashSet<usize> = matched.iter().flatten().copied().collect();
    if rooted.is_none() {
        unmount_extra(&have, &kept)?;
    }
    // Make the missing ones, parents first.
    let mut stage = Stage::default();
    let mut made: HashMap<u32, OwnedFd> = HashMap::new();
    let mut procs = Vec::new();
    let mut deferred: HashSet<u32> = HashSet::new();
    for i in tree_order(want) {
        let w = &want[i];
        if let Some(h) = matched[i] {
            if have[h].flags != w.flags {
                remount(w)?;
            }
            continue;
        }
        let on_proc = deferred.contains(&w.parent);
        if on_proc || (w.fstype == "proc" && w.root == "/") {
            // A procfs of the tree, or on one: made by the root task.
            let kind = if on_proc {
                late_kind(want, w, &have, mk.ext_mounts, rooted.is_some(), mk.dir)?
            } else {
                LateKind::Proc
            };
            deferred.insert(w.id);
            procs.push(ProcMount {
                point: w.point.clone(),
                flags: w.flags,
                options: w.options.clone(),
                kind,
            });
            continue;
        }
        let src = mk.source(w, &sources, &mut made, ptys, &mut stage)?;
        rustix::mount::move_mount(
            src.as_fd(),
            "",
            rustix::fs::CWD,
            w.point.as_str(),
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )
        .map_err(|e| mount_err(&w.point, "moving it into place")(rx(e)))?;
        remount(w)?;
    }
    propagation(want, groups, &deferred)?;
    Ok(procs)
}

/// A bind source.
type Source = (u32, String, OwnedFd);

/// Bind sources among the mounts `have` here for the mounts of `want` not
/// kept, cloned before anything is unmounted: (device, root of the source,
/// detached clone).
fn bind_sources(want: &[Mount], have: &[Mount], matched: &[Option<usize>]) -> Vec<Source> {
    let mut sources: Vec<Source> = Vec::new();
    for (i, w) in want.iter().enumerate() {
        if matched[i].is_some()
            || sources
                .iter()
                .any(|s| s.0 == w.dev && rel(&w.root, &s.1).is_some())
        {
            continue;
        }
        let mut cands: Vec<&Mount> = have
            .iter()
            .filter(|h| {
                h.dev == w.dev
                    && h.fstype == w.fstype
                    && h.source == w.source
                    && rel(&w.root, &h.root).is_some()
            })
            .collect();
        cands.sort_by_key(|h| h.root.len());
        for h in cands {
            if let Ok(fd) = open_mount(h).and_then(|_| {
                rustix::mount::open_tree(
                    rustix::fs::CWD,
                    h.point.as_str(),
                    OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
                )
                .map_err(rx)
            }) {
                sources.push((w.dev, h.root.clone(), fd));
                break;
            }
        }
    }
    sources
}

/// Unmount what the tree did not have (all but `kept`), upper mounts
/// first; a mount under one that went already went with it.
fn unmount_extra(have: &[Mount], kept: &HashSet<usize>) -> Result<()> {
    for (k, h) in have.iter().enumerate().rev() {
        if kept.contains(&k) {
            continue;
        }
        let res = nix::mount::umount2(h.point.as_str(), nix::mount::MntFlags::MNT_DETACH);
        let parent_kept = parent_index(have, h).is_some_and(|p| kept.contains(&p));
        if parent_kept {
            res.map_err(mount_err(
                &h.point,
                "unmounting a mount the tree did not have",
            ))?;
        }
    }
    Ok(())
}

impl Making<'_> {
    /// A detached mount to move to `w`'s place: a bind of what the caller
    /// names for an external mount, of the --root directory for the root,
    /// of a bind source here, or of a new superblock (one per device,
    /// kept in `made`).
    fn source(
        &self,
        w: &Mount,
        sources: &[Source],
        made: &mut HashMap<u32, OwnedFd>,
        ptys: &mut Vec<(u32, OwnedFd)>,
        stage: &mut Stage,
    ) -> Result<OwnedFd> {
        let clone = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
        if let Some(key) = &w.ext_key {
            let (_, path) = self
                .ext_mounts
                .iter()
                .find(|(k, _)| k == key)
                .ok_or_else(|| Error::Mount {
                    path: w.point.clone(),
                    what: format!("binding external mount {key}"),
                    errno: Errno::ENOENT,
                    hint: ": it was dumped as external; name what to bind with --external mnt[KEY]:PATH",
                })?;
            return rustix::mount::open_tree(rustix::fs::CWD, path.as_str(), clone).map_err(|e| {
                mount_err(
                    &w.point,
                    &format!("cloning {path} for external mount {key}"),
                )(rx(e))
            });
        }
        if let (Some(r), true) = (self.rooted, w.id == self.want_root.id) {
            // The root: a bind of the --root directory, on itself.
            return rustix::mount::open_tree(rustix::fs::CWD, r, clone)
                .map_err(|e| mount_err(&w.point, "cloning the --root directory")(rx(e)));
        }
        if let Some((base, fd)) = sources.iter().find_map(|s| {
            (s.0 == w.dev)
                .then(|| rel(&w.root, &s.1).map(|r| (r, &s.2)))
                .flatten()
        }) {
            return clone_at(fd, base, &w.point, stage);
        }
        let fd = match made.entry(w.dev) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(new_superblock(self.want, w, self.dir, ptys)?)
            }
        };
        clone_at(fd, w.root.trim_start_matches('/'), &w.point, stage)
    }
}

/// How the root task makes mount `w`, which is on a procfs of the tree: a
/// bind of the mount of the tree it shows part of (made before it), of an
/// external or (under --root, where the engine's mounts stay until the
/// pivot) of one of the engine's, or a new superblock.
fn late_kind(
    want: &[Mount],
    w: &Mount,
    have: &[Mount],
    ext_mounts: &[(String, String)],
    rooted: bool,
    dir: &Dir,
) -> Result<LateKind> {
    if let Some(key) = &w.ext_key {
        return ext_mounts
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, p)| LateKind::Bind(p.clone()))
            .ok_or_else(|| Error::Mount {
                path: w.point.clone(),
                what: format!("binding external mount {key}"),
                errno: Errno::ENOENT,
                hint: ": it was dumped as external; name what to bind with --external mnt[KEY]:PATH",
            });
    }
    let before = want.iter().take_while(|m| m.id != w.id);
    if let Some((m, rest)) = before
        .filter(|m| m.dev == w.dev)
        .find_map(|m| rel(&w.root, &m.root).map(|r| (m, r)))
    {
        return Ok(LateKind::Bind(join_path(&m.point, rest)));
    }
    if FRESH.iter().any(|(n, _)| *n == w.fstype) && w.root == "/" {
        if w.fstype == "tmpfs" && dir.tmpfs_file(w.dev).exists() {
            return Err(Error::Mount {
                path: w.point.clone(),
                what: "a tmpfs with contents on a procfs".into(),
                errno: Errno::EOPNOTSUPP,
                hint: "",
            });
        }
        return Ok(LateKind::Fresh(w.fstype.clone(), w.source.clone()));
    }
    if rooted
        && let Some((h, rest)) = have
            .iter()
            .filter(|h| h.dev == w.dev)
            .find_map(|h| rel(&w.root, &h.root).map(|r| (h, r)))
    {
        return Ok(LateKind::Bind(join_path(&h.point, rest)));
    }
    Err(Error::Mount {
        path: w.point.clone(),
        what: "mounting it on a proc mount of the tree".into(),
        errno: Errno::EOPNOTSUPP,
        hint: "",
    })
}

fn parent_index(t: &[Mount], m: &Mount) -> Option<usize> {
    t.iter().position(|p| p.id == m.parent && p.id != m.id)
}

/// A detached clone of `sub` under the detached mount `fd` (staged first
/// where the kernel clones only mounts of the caller's namespace).
fn clone_at(fd: &OwnedFd, sub: &str, shown: &str, stage: &mut Stage) -> Result<OwnedFd> {
    let flags = OpenTreeFlags::OPEN_TREE_CLONE
        | OpenTreeFlags::OPEN_TREE_CLOEXEC
        | if sub.is_empty() {
            OpenTreeFlags::AT_EMPTY_PATH
        } else {
            OpenTreeFlags::empty()
        };
    let clone = || rustix::mount::open_tree(fd.as_fd(), sub, flags).map_err(rx);
    let res = match clone() {
        Err(Errno::EINVAL) if !stage.has(fd) => {
            stage.attach(fd, shown)?;
            clone()
        }
        r => r,
    };
    res.map_err(mount_err(shown, "cloning its source"))
}

/// Kernels before 6.15 clone (OPEN_TREE_CLONE) only mounts of the
/// caller's namespace, not detached ones such as a new superblock's or a
/// clone's: there such a source is attached under a staging directory of
/// the engine's private copy first (private: nothing propagates out), and
/// cloned from there. The stage goes once the table is made.
#[derive(Debug, Default)]
struct Stage {
    dir: Option<std::path::PathBuf>,
    points: Vec<std::path::PathBuf>,
    staged: Vec<std::os::fd::RawFd>,
}

impl Stage {
    fn has(&self, fd: &OwnedFd) -> bool {
        self.staged.contains(&fd.as_raw_fd())
    }

    /// Attach the detached mount `fd` (a source of `shown`) under the stage.
    fn attach(&mut self, fd: &OwnedFd, shown: &str) -> Result<()> {
        let contents = |what: &'static str, path: &std::path::Path| {
            let path = path.display().to_string();
            move |err| Error::MountContents { path, what, err }
        };
        let dir = match &self.dir {
            Some(d) => d.clone(),
            None => {
                let d =
                    std::env::temp_dir().join(format!(".stasis-stage-{}", nix::unistd::getpid()));
                std::fs::create_dir(&d).map_err(contents("the mounts' staging directory", &d))?;
                self.dir = Some(d.clone());
                d
            }
        };
        let point = dir.join(self.points.len().to_string());
        std::fs::create_dir(&point).map_err(contents("a staging directory", &point))?;
        self.points.push(point.clone());
        rustix::mount::move_mount(
            fd.as_fd(),
            "",
            rustix::fs::CWD,
            point.as_path(),
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )
        .map_err(|e| mount_err(shown, "staging its source")(rx(e)))?;
        self.staged.push(fd.as_raw_fd());
        Ok(())
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        for p in self.points.iter().rev() {
            let _ = nix::mount::umount2(p.as_path(), nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir(p);
        }
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// The per-mount flags of `w` on its mount.
fn remount(w: &Mount) -> Result<()> {
    let flags = MsFlags::from_bits_truncate(w.flags) | MsFlags::MS_REMOUNT | MsFlags::MS_BIND;
    nix::mount::mount(
        None::<&str>,
        w.point.as_str(),
        None::<&str>,
        flags,
        None::<&str>,
    )
    .map_err(mount_err(&w.point, "setting its mount flags"))
}

/// A new superblock for `w`, detached, filled from its archive if it is a
/// tmpfs the dump saved; in a devpts, the ptys other mounts bind (`ptys`
/// gets their masters).
fn new_superblock(
    want: &[Mount],
    w: &Mount,
    dir: &Dir,
    ptys: &mut Vec<(u32, OwnedFd)>,
) -> Result<OwnedFd> {
    use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags};
    let err = |what: &str| {
        let what = what.to_owned();
        let point = w.point.clone();
        move |e: rustix::io::Errno| Error::Mount {
            path: point,
            what,
            errno: rx(e),
            hint: "",
        }
    };
    // A cgroup hierarchy exists once: a new mount of it is of the same
    // superblock, whatever part of it the tree's mounts show.
    let hierarchy = w.fstype == "cgroup" || w.fstype == "cgroup2";
    if !hierarchy && !want.iter().any(|o| o.dev == w.dev && o.root == "/") {
        return Err(Error::Mount {
            path: w.point.clone(),
            what: format!("a new {} whose root is not mounted", w.fstype),
            errno: Errno::EOPNOTSUPP,
            hint: "",
        });
    }
    let fs = rustix::mount::fsopen(w.fstype.as_str(), FsOpenFlags::FSOPEN_CLOEXEC)
        .map_err(err(&format!("a new {} (fsopen)", w.fstype)))?;
    rustix::mount::fsconfig_set_string(&fs, "source", w.source.as_str())
        .map_err(err("setting its source"))?;
    for o in w.options.split(',').filter(|o| !o.is_empty()) {
        let r = match o.split_once('=') {
            Some((k, v)) => rustix::mount::fsconfig_set_string(&fs, k, v),
            None => rustix::mount::fsconfig_set_flag(&fs, o),
        };
        r.map_err(err(&format!("setting option {o}")))?;
    }
    for &(name, f) in SB_FLAGS {
        // A read-only one is filled first, then made read-only.
        if w.sb_flags & f != 0 && f != libc::MS_RDONLY {
            rustix::mount::fsconfig_set_flag(&fs, name)
                .map_err(err(&format!("setting flag {name}")))?;
        }
    }
    rustix::mount::fsconfig_create(&fs).map_err(err(&format!("a new {}", w.fstype)))?;
    let mnt = rustix::mount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty())
        .map_err(err("mounting it (fsmount)"))?;
    let image = dir.tmpfs_file(w.dev);
    if w.fstype == "tmpfs" && image.exists() {
        super::tmpfs::load(&image, mnt.as_fd(), &w.shown())?;
    }
    if w.fstype == "devpts" {
        bound_ptys(want, w, &mnt, ptys)?;
    }
    if w.sb_flags & libc::MS_RDONLY != 0 {
        rustix::mount::fsconfig_set_flag(&fs, "ro").map_err(err("making it read-only"))?;
        rustix::mount::fsconfig_reconfigure(&fs).map_err(err("making it read-only"))?;
    }
    Ok(mnt)
}

/// A devpts node exists while its pty does: for each bind of `/N` of the
/// devpts superblock `mnt` (a container's /dev/console is `/0` of its own
/// instance), pty N is made through the instance's ptmx, so the bind has
/// its source; the tty restore takes it as it is.
fn bound_ptys(
    want: &[Mount],
    w: &Mount,
    mnt: &OwnedFd,
    ptys: &mut Vec<(u32, OwnedFd)>,
) -> Result<()> {
    for o in want.iter().filter(|o| o.dev == w.dev) {
        let Some(index) = o.root.strip_prefix('/').and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if ptys.iter().any(|p| p.0 == index) {
            continue;
        }
        let m = kernel::tty::open_pty(Some(mnt.as_fd()), index).map_err(mount_err(
            &o.point,
            &format!("making pty {index} of its devpts"),
        ))?;
        let mut n = 0;
        kernel::tty::tty_ioctl_int(m.as_fd(), libc::TIOCGPTN, &mut n)
            .map_err(mount_err(&o.point, "reading the index of its pty"))?;
        if u32::try_from(n) != Ok(index) {
            return Err(Error::Mount {
                path: o.point.clone(),
                what: format!("making pty {index} of its devpts (got {n})"),
                errno: Errno::EBUSY,
                hint: "",
            });
        }
        ptys.push((index, m));
    }
    Ok(())
}

/// Peer groups and masters as the dump saw them, then unbindable mounts.
/// Mounts the root task makes later (procfs and what is on it: `late`)
/// stay private.
fn propagation(want: &[Mount], outside: &Outside, late: &HashSet<u32>) -> Result<()> {
    // The widest member of each group first, so that its root holds the
    // others'; a slave after the group it is a slave of.
    let mut order: Vec<usize> = (0..want.len()).collect();
    order.sort_by_key(|&i| want[i].root.len());
    let mut leaders: HashMap<u32, OwnedFd> = HashMap::new();
    let mut done: Vec<bool> = want.iter().map(|w| late.contains(&w.id)).collect();
    for w in want.iter().filter(|w| late.contains(&w.id)) {
        if w.shared.is_some() || w.master.is_some() {
            tracing::info!(mount = %w.point, "a procfs mount (made by the root task) is private after the restore");
        }
    }
    loop {
        let mut progress = false;
        for &i in &order {
            let w = &want[i];
            if done[i] || (w.shared.is_none() && w.master.is_none()) {
                continue;
            }
            if join_groups(w, want, outside, &mut leaders)? {
                done[i] = true;
                progress = true;
            }
        }
        if !progress {
            break;
        }
    }
    if let Some(i) = (0..want.len())
        .find(|&i| !done[i] && (want[i].shared.is_some() || want[i].master.is_some()))
    {
        return Err(Error::Mount {
            path: want[i].point.clone(),
            what: "restoring its propagation (its master's group is never made)".into(),
            errno: Errno::EINVAL,
            hint: "",
        });
    }
    for w in want
        .iter()
        .filter(|w| w.unbindable && !late.contains(&w.id))
    {
        change_propagation(w, MsFlags::MS_UNBINDABLE, "making it unbindable")?;
    }
    Ok(())
}

/// Put mount `w` in its peer group and under its master: joined to the
/// group's first member made (`leaders`) or held outside, else made a
/// slave of its master's group and shared anew. False when its master's
/// group is not made yet (try again after the others).
fn join_groups(
    w: &Mount,
    want: &[Mount],
    outside: &Outside,
    leaders: &mut HashMap<u32, OwnedFd>,
) -> Result<bool> {
    let peer = |g: u32| leaders.get(&g).or_else(|| outside.peers.get(&g));
    if let Some(m) = w.master {
        let from = outside
            .peers
            .get(&m)
            .or_else(|| leaders.get(&m))
            .or_else(|| outside.slaves.get(&m));
        let Some(from) = from else {
            if want.iter().any(|o| o.shared == Some(m)) {
                return Ok(false);
            }
            tracing::warn!(mount = %w.point, master = m, "the peer group this mount was a slave of is gone: it is private");
            return Ok(true);
        };
        if let Some(l) = w.shared.and_then(peer) {
            set_group(l, w)?;
        } else {
            set_group(from, w)?;
            change_propagation(w, MsFlags::MS_SLAVE, "making it a slave")?;
            if w.shared.is_some() {
                change_propagation(w, MsFlags::MS_SHARED, "making it shared")?;
            }
        }
    } else if let Some(g) = w.shared {
        if let Some(l) = peer(g) {
            set_group(l, w)?;
        } else {
            change_propagation(w, MsFlags::MS_SHARED, "making it shared")?;
        }
    }
    if let Some(g) = w.shared
        && !leaders.contains_key(&g)
    {
        let fd = rustix::mount::open_tree(
            rustix::fs::CWD,
            w.point.as_str(),
            OpenTreeFlags::OPEN_TREE_CLOEXEC,
        )
        .map_err(|e| mount_err(&w.point, "opening it")(rx(e)))?;
        leaders.insert(g, fd);
    }
    Ok(true)
}

/// Mount `w` joins the peer group of `from` (MOVE_MOUNT_SET_GROUP).
fn set_group(from: &OwnedFd, w: &Mount) -> Result<()> {
    rustix::mount::move_mount(
        from.as_fd(),
        "",
        rustix::fs::CWD,
        w.point.as_str(),
        MoveMountFlags::MOVE_MOUNT_SET_GROUP | MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| Error::Mount {
        path: w.point.clone(),
        what: "joining its peer group (MOVE_MOUNT_SET_GROUP)".into(),
        errno: rx(e),
        hint: "",
    })
}

/// Change the propagation of mount `w` (`f`: MS_SHARED, MS_SLAVE, ...).
fn change_propagation(w: &Mount, f: MsFlags, what: &str) -> Result<()> {
    nix::mount::mount(
        None::<&str>,
        w.point.as_str(),
        None::<&str>,
        f,
        None::<&str>,
    )
    .map_err(mount_err(&w.point, what))
}

/// In the root task, inside its pid namespace: mount the tree's procfs,
/// and what is mounted on it, in order.
pub fn mount_procs(procs: &[ProcMount]) -> Result<(), Errno> {
    for p in procs {
        let opts = (!p.options.is_empty()).then_some(p.options.as_str());
        let flags = MsFlags::from_bits_truncate(p.flags);
        match &p.kind {
            LateKind::Proc => {
                nix::mount::mount(Some("proc"), p.point.as_str(), Some("proc"), flags, opts)?;
            }
            LateKind::Fresh(fstype, source) => {
                nix::mount::mount(
                    Some(source.as_str()),
                    p.point.as_str(),
                    Some(fstype.as_str()),
                    flags,
                    opts,
                )?;
            }
            LateKind::Bind(from) => {
                nix::mount::mount(
                    Some(from.as_str()),
                    p.point.as_str(),
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )?;
                if !flags.is_empty() {
                    nix::mount::mount(
                        None::<&str>,
                        p.point.as_str(),
                        None::<&str>,
                        flags | MsFlags::MS_REMOUNT | MsFlags::MS_BIND,
                        None::<&str>,
                    )?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
23 22 0:22 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
40 22 0:40 /sub /mnt/with\\040space ro,nosuid master:3 unbindable - tmpfs zdtm rw,size=1024k,mode=750
41 23 0:41 / /proc rw,nosuid,nodev,noexec - proc proc rw
";

    #[test]
    fn mountinfo_lines_parse_with_escapes_flags_and_propagation() {
        let t = parse(TABLE).unwrap();
        assert_eq!(t.len(), 4);
        assert_eq!(t[0].dev, 21);
        assert_eq!(t[0].shared, Some(1));
        assert_eq!(t[0].flags, libc::MS_RELATIME);
        assert_eq!(t[2].point, "/mnt/with space");
        assert_eq!(t[2].root, "/sub");
        assert_eq!(t[2].master, Some(3));
        assert!(t[2].unbindable);
        assert_eq!(
            t[2].flags,
            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_STRICTATIME
        );
        assert_eq!(t[2].options, "size=1024k,mode=750");
        assert_eq!(t[0].options, "errors=remount-ro");
        assert!(parse("22 1 0:21 / /\n").is_none());
    }

    #[test]
    fn entries_round_trip() {
        for m in parse(TABLE).unwrap() {
            assert_eq!(Mount::from_entry(&m.to_entry()), m);
        }
    }

    #[test]
    fn matching_keeps_stacks_from_the_bottom() {
        let have = parse(TABLE).unwrap();
        // The tree's copy: the same root and /proc with a new proc on it,
        // no tmpfs.
        let want = parse(
            "\
100 99 0:21 / / rw,relatime - ext4 /dev/sda1 rw,errors=remount-ro
101 100 0:22 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
102 101 0:50 / /proc rw,nosuid,nodev,noexec - proc proc rw
",
        )
        .unwrap();
        let m = matching(&want, &have);
        assert_eq!(m, vec![Some(0), Some(1), None]);
        // 102 is stacked on the old /proc where the engine has none.
        assert_eq!(tree_order(&want), vec![0, 1, 2]);
    }
}
