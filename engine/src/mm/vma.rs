//! Dumping a task's VMAs: `/proc/PID/maps` and `smaps` VmFlags made into
//! the `vma_entry`s of `mm-ID.img`. The name of a map decides its kind
//! (special area, anonymous, shared, SysV, memfd or file), because the
//! kernel says nothing else about what backs it; mapped files are
//! registered in the fd table so that restore can open them again.

use nix::unistd::Pid;
use stasis_proto::images::VmaEntry;

use super::{is_special_name, status};
use crate::error::{EngineError as Error, Result};
use crate::files::Table;
use crate::proc;

/// smaps VmFlags set by madvise(), and the advice that sets each.
const MADV_FLAGS: [(&str, u32); 8] = [
    ("rr", 1),  // MADV_RANDOM
    ("sr", 2),  // MADV_SEQUENTIAL
    ("dc", 10), // MADV_DONTFORK
    ("mg", 12), // MADV_MERGEABLE
    ("hg", 14), // MADV_HUGEPAGE
    ("nh", 15), // MADV_NOHUGEPAGE
    ("dd", 16), // MADV_DONTDUMP
    ("wf", 18), // MADV_WIPEONFORK
];

/// A task's VMAs as /proc shows them: `maps`, and each one's `smaps`
/// VmFlags by start address.
#[derive(Debug)]
pub struct RawVmas {
    pub(super) maps: Vec<proc::Map>,
    pub(super) flags: proc::VmFlags,
}

/// Read the VMAs of `pid` (no other state needed: a helper thread does this
/// while the engine works on another task).
pub(super) fn read_vmas(pid: Pid) -> Result<RawVmas> {
    let (maps, flags) = proc::smaps(pid)?;
    Ok(RawVmas { maps, flags })
}

impl RawVmas {
    /// Start and end of the map named `name` (`[vdso]`, ...), if any.
    pub fn named(&self, name: &str) -> Option<(u64, u64)> {
        self.maps
            .iter()
            .find(|m| m.name == name)
            .map(|m| (m.start, m.end))
    }
}

/// Describe every VMA of `raw`, registering mapped files in `files`; with
/// no table, file ids stay 0 (enough to tell which pages to dump).
pub fn dump_vmas(pid: Pid, raw: &RawVmas, mut files: Option<&mut Table>) -> Result<Vec<VmaEntry>> {
    let mut out = Vec::with_capacity(raw.maps.len());
    for m in &raw.maps {
        let vmflags = raw.flags.get(&m.start).map(Vec::as_slice).unwrap_or(&[]);
        let kind = kind_of(pid, m, files.as_deref_mut())?;
        out.push(entry(m, vmflags, &kind));
    }
    Ok(out)
}

/// What the name of a map makes of it: its `status` bits, the object it
/// maps (file id, SysV segment or shmem inode; 0 for none), and whether it
/// is anonymous memory (MAP_ANONYMOUS in the image).
struct Kind {
    status: u32,
    shmid: u64,
    anon: bool,
}

impl Kind {
    /// Not anonymous memory, no object.
    fn plain(status: u32) -> Self {
        Self {
            status,
            shmid: 0,
            anon: false,
        }
    }

    /// Anonymous memory, of object `shmid` if shared.
    fn anon(status: u32, shmid: u64) -> Self {
        Self {
            status,
            shmid,
            anon: true,
        }
    }

    /// A file mapping of file id `shmid`.
    fn file(m: &proc::Map, shmid: u64) -> Self {
        let st = if m.shared {
            status::REGULAR | status::FILE_SHARED
        } else {
            status::REGULAR | status::FILE_PRIVATE
        };
        Self {
            status: st,
            shmid,
            anon: false,
        }
    }
}

/// The kind of map `m` of `pid` by its name, its file registered in
/// `files` if there is one.
fn kind_of(pid: Pid, m: &proc::Map, files: Option<&mut Table>) -> Result<Kind> {
    Ok(match m.name.as_str() {
        "[vdso]" => Kind::plain(status::REGULAR | status::VDSO),
        "[vvar]" | "[vvar_vclock]" => Kind::plain(status::REGULAR | status::VVAR),
        "[vsyscall]" => Kind::plain(status::VSYSCALL),
        "[heap]" => Kind::anon(status::REGULAR | status::HEAP | status::ANON_PRIVATE, 0),
        "[stack]" => Kind::anon(status::REGULAR | status::STACK | status::ANON_PRIVATE, 0),
        n if n.is_empty() || n.starts_with("[anon:") || n.starts_with("[anon_shmem:") => {
            if m.shared {
                Kind::anon(status::REGULAR | status::ANON_SHARED, m.ino)
            } else {
                Kind::anon(status::REGULAR | status::ANON_PRIVATE, 0)
            }
        }
        // SysV shared memory: maps shows the segment id as the inode;
        // its contents are in the IPC namespace's images.
        n if n.starts_with("/SYSV") && m.shared => Kind {
            status: status::REGULAR | status::SYSVIPC,
            shmid: m.ino,
            anon: false,
        },
        n if n.starts_with("/dev/zero") && m.shared => {
            Kind::anon(status::REGULAR | status::ANON_SHARED, m.ino)
        }
        n if n.starts_with("/memfd:") => memfd_kind(pid, m, files)?,
        n if n.starts_with('/')
            && n.ends_with(" (deleted)")
            && !n.starts_with("/SYSV")
            && !n.starts_with("/dev/zero") =>
        {
            let id = match files {
                Some(files) => u64::from(files.ghost_map_id(pid, m.start, m.end, n)?),
                None => 0,
            };
            Kind::file(m, id)
        }
        n if n.starts_with('/') && !n.ends_with(" (deleted)") => {
            let id = files.map_or(0, |files| {
                u64::from(files.path_id(n, libc::O_RDONLY.cast_unsigned()))
            });
            Kind::file(m, id)
        }
        n => {
            return Err(Error::Unsupported {
                pid,
                what: format!("memory mapping {:#x}-{:#x} of {n}", m.start, m.end),
            });
        }
    })
}

/// A memfd mapping: the memfd is registered in `files`, opened for writing
/// if the mapping writes to it.
fn memfd_kind(pid: Pid, m: &proc::Map, files: Option<&mut Table>) -> Result<Kind> {
    let write = m.shared && m.prot & libc::PROT_WRITE.cast_unsigned() != 0;
    let oflags = if write { libc::O_RDWR } else { libc::O_RDONLY };
    let id = match files {
        Some(files) => {
            u64::from(files.memfd_map_id(pid, m.start, m.end, &m.name, oflags.cast_unsigned())?)
        }
        None => 0,
    };
    let mut kind = Kind::file(m, id);
    kind.status |= status::MEMFD;
    Ok(kind)
}

/// The image entry of map `m`: mmap flags from the map, its `vmflags` and
/// its `kind`, and the advice madvise() gave it.
fn entry(m: &proc::Map, vmflags: &[String], kind: &Kind) -> VmaEntry {
    let has = |f: &str| vmflags.iter().any(|x| x == f);
    let mut mflags = if m.shared {
        libc::MAP_SHARED
    } else {
        libc::MAP_PRIVATE
    }
    .cast_unsigned();
    if has("gd") {
        mflags |= libc::MAP_GROWSDOWN.cast_unsigned();
    }
    if has("lo") {
        mflags |= libc::MAP_LOCKED.cast_unsigned();
    }
    if kind.anon {
        mflags |= libc::MAP_ANONYMOUS.cast_unsigned();
    }
    let madv = MADV_FLAGS
        .iter()
        .filter(|(f, _)| has(f))
        .fold(0u64, |acc, (_, a)| acc | 1 << a);
    VmaEntry {
        start: m.start,
        end: m.end,
        pgoff: m.pgoff,
        shmid: kind.shmid,
        prot: m.prot,
        flags: mflags,
        status: kind.status,
        fd: -1,
        madv: (madv != 0 && !is_special_name(&m.name)).then_some(madv),
        fdflags: None,
    }
}
