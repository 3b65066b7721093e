//! memfd files (`memfd_create`): each inode once in `memfd.img` (name, size,
//! seals, owner, mode) with its contents as a shared-memory pagemap
//! (`pagemap-shmem-SHMID.img` + `pages-N.img`, holes skipped), and each open
//! description or mapping as a `memfd_file_entry` in `files.img`. Restore
//! makes every inode again in the engine (memfd_create, contents, then
//! seals); tasks get their own descriptions of it, fds and mappings alike.

use stasis_kernel as kernel;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt};

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::unistd::Pid;
use stasis_proto::images::file_entry::Kind;
use stasis_proto::images::{
    FdTypes, FownEntry, MemfdFileEntry, MemfdInodeEntry, PagemapEntry, PagemapHead, RegFileEntry,
};

use crate::error::{EngineError as Error, Result};
use crate::images::Dir;
use crate::images::img;

use super::{FdCtx, FileKind, OpenCtx, Table};

/// `pagemap_entry.flags`: the pages are in the pages image.
const PE_PRESENT: u32 = 1 << 2;
/// Pages images of memfd contents are numbered from here (tasks' from 1).
const PAGES_BASE: u32 = 1 << 20;
/// Bytes copied at once.
const CHUNK: usize = 4 << 20;
const PAGE: u64 = 4096;

/// memfd files: the description (flags, offset) of an inode `memfd.img`
/// holds.
#[derive(Debug)]
pub struct Memfd;

/// The memfds of a dump or a restore.
#[derive(Debug, Default)]
pub(crate) struct Memfds {
    /// Dump: the inodes, and the file entries made for mappings:
    /// (inode, flags) -> file id.
    inodes: Inodes,
    maps: HashMap<(u32, u32), u32>,
    /// Restore: the remade inodes, and a path to each the tasks can open.
    fds: HashMap<u32, OwnedFd>,
    paths: HashMap<u32, String>,
}

impl FileKind for Memfd {
    type Entry = MemfdFileEntry;
    const NAME: &'static str = "memfd";

    fn set_id(e: &mut MemfdFileEntry, id: u32) {
        e.id = id;
    }

    fn dump(cx: &FdCtx<'_>, table: &mut Table) -> Result<Kind> {
        let link = format!("/proc/{}/fd/{}", cx.pid, cx.fd.fd);
        let file = File::open(&link).map_err(|e| Error::Proc {
            pid: cx.pid,
            path: link.clone(),
            err: e,
        })?;
        let inode_id = table.memfds.inodes.id(cx.pid, &cx.fd.target, file)?;
        Ok(Kind::Memfd(MemfdFileEntry {
            id: 0,
            flags: cx.fd.flags & !(libc::O_CLOEXEC.cast_unsigned()),
            pos: cx.fd.pos,
            fown: FownEntry::default(),
            inode_id,
        }))
    }

    /// A new open description of the remade memfd, at its offset.
    fn open(m: &MemfdFileEntry, cx: &mut OpenCtx<'_>) -> Result<OwnedFd> {
        let (pid, fd) = (cx.pid, cx.fd);
        let path = cx.table.memfds.path(m.inode_id).ok_or_else(|| {
            img::MEMFD_INODE.bad(
                0,
                format!("task {pid} fd {fd}: memfd inode {} is missing", m.inode_id),
            )
        })?;
        let reg = RegFileEntry {
            id: m.id,
            flags: m.flags,
            pos: m.pos,
            name: path.to_owned(),
            ..RegFileEntry::default()
        };
        super::reg::open(pid, fd, &reg)
    }
}

impl Table {
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
        let inode_id = self.memfds.inodes.id(pid, name, file)?;
        if let Some(&id) = self.memfds.maps.get(&(inode_id, flags)) {
            return Ok(id);
        }
        let id = self.add_entry(
            |id| {
                Kind::Memfd(MemfdFileEntry {
                    id,
                    flags,
                    pos: 0,
                    fown: FownEntry::default(),
                    inode_id,
                })
            },
            FdTypes::Memfd,
        );
        self.memfds.maps.insert((inode_id, flags), id);
        Ok(id)
    }
}

impl Memfds {
    /// Write `memfd.img` and each inode's contents; the pages written.
    pub(crate) fn write(&self, dir: &Dir) -> Result<u64> {
        self.inodes.write(dir)
    }

    /// Restore: make the memfd inodes again (before anything opens them).
    pub(crate) fn make(&mut self, dir: &Dir) -> Result<()> {
        self.fds = restore_all(dir)?;
        let me = std::process::id();
        self.paths = self
            .fds
            .iter()
            .map(|(&id, fd)| (id, format!("/proc/{me}/fd/{}", fd.as_raw_fd())))
            .collect();
        Ok(())
    }

    /// Restore: hand each remade inode to `moved`, which gives it a new fd
    /// and the path tasks open it by.
    pub(crate) fn move_fds(
        &mut self,
        moved: impl FnMut(&mut OwnedFd) -> Result<String>,
    ) -> Result<()> {
        super::move_remade(&mut self.fds, &mut self.paths, moved)
    }

    /// Restore: the path tasks open inode `id` by.
    pub(crate) fn path(&self, id: u32) -> Option<&str> {
        self.paths.get(&id).map(String::as_str)
    }
}

/// The memfd inodes of a dump: key (dev, ino) -> inode id, entries, and the
/// open file their contents are read from.
#[derive(Debug, Default)]
struct Inodes {
    ids: HashMap<(u64, u64), u32>,
    entries: Vec<(MemfdInodeEntry, File)>,
}

/// `memfd:NAME (deleted)` or `/memfd:NAME (deleted)` -> NAME.
pub fn name_of(target: &str) -> &str {
    let t = target.strip_prefix('/').unwrap_or(target);
    let t = t.strip_prefix("memfd:").unwrap_or(t);
    t.strip_suffix(" (deleted)").unwrap_or(t)
}

impl Inodes {
    /// The inode id of the memfd open as `file` (via /proc), recording it
    /// the first time.
    fn id(&mut self, pid: Pid, target: &str, file: File) -> Result<u32> {
        let meta = file.metadata().map_err(|e| Error::Proc {
            pid,
            path: target.to_owned(),
            err: e,
        })?;
        let key = (meta.dev(), meta.ino());
        if let Some(&id) = self.ids.get(&key) {
            return Ok(id);
        }
        let id = u32::try_from(self.entries.len() + 1).unwrap_or(u32::MAX);
        let seals = fcntl(file.as_fd(), FcntlArg::F_GET_SEALS).unwrap_or(0);
        self.entries.push((
            MemfdInodeEntry {
                name: name_of(target).to_owned(),
                uid: meta.uid(),
                gid: meta.gid(),
                size: meta.size(),
                shmid: id,
                seals: seals.cast_unsigned(),
                inode_id: u64::from(id),
                hugetlb_flag: None,
                mode: Some(meta.mode()),
            },
            file,
        ));
        self.ids.insert(key, id);
        Ok(id)
    }

    /// Write `memfd.img` and each inode's contents; the pages written.
    fn write(&self, dir: &Dir) -> Result<u64> {
        if self.entries.is_empty() {
            return Ok(0);
        }
        let list: Vec<MemfdInodeEntry> = self.entries.iter().map(|(e, _)| e.clone()).collect();
        dir.write_all(img::MEMFD_INODE, 0, &list)?;
        let mut pages = 0;
        for (e, f) in &self.entries {
            pages += write_contents(dir, e, f)?;
        }
        Ok(pages)
    }
}

fn write_contents(dir: &Dir, e: &MemfdInodeEntry, f: &File) -> Result<u64> {
    let pages_id = PAGES_BASE + e.shmid;
    let mut pm = dir.create_shmem_pagemap(u64::from(e.shmid))?;
    pm.write(&PagemapHead { pages_id })?;
    let path = dir.pages_file(pages_id);
    let shown = path.display().to_string();
    let io = |err: std::io::Error| Error::ImagesDir {
        path: shown.clone(),
        err,
    };
    let mut pages = BufWriter::new(File::create(&path).map_err(io)?);
    let mut written = 0;
    let mut buf = vec![0u8; CHUNK];
    let end = e.size.div_ceil(PAGE) * PAGE;
    for (data, hole) in kernel::fd::data_extents(f.as_fd(), 0, end, kernel::mm::page_size())
        .map_err(|e| io(e.into()))?
    {
        pm.write(&PagemapEntry {
            vaddr: data,
            compat_nr_pages: u32::try_from((hole - data) / PAGE).unwrap_or(u32::MAX),
            in_parent: None,
            flags: Some(PE_PRESENT),
            nr_pages: Some((hole - data) / PAGE),
        })?;
        written += (hole - data) / PAGE;
        let mut at = data;
        while at < hole {
            let n = usize::try_from((hole - at).min(CHUNK as u64)).unwrap_or(CHUNK);
            buf[..n].fill(0);
            // The last page may extend past the end: it reads short, zeros follow.
            let mut got = 0;
            while got < n {
                match f.read_at(&mut buf[got..n], at + got as u64) {
                    Ok(0) => break,
                    Ok(k) => got += k,
                    Err(err) => return Err(io(err)),
                }
            }
            pages.write_all(&buf[..n]).map_err(io)?;
            at += n as u64;
        }
    }
    pages.flush().map_err(io)?;
    pm.finish()?;
    Ok(written)
}

/// Make every memfd inode of the images again; fds by inode id.
fn restore_all(dir: &Dir) -> Result<HashMap<u32, OwnedFd>> {
    let mut out = HashMap::new();
    if !dir.exists(img::MEMFD_INODE, 0) {
        return Ok(out);
    }
    let me = nix::unistd::getpid();
    let list: Vec<MemfdInodeEntry> = dir.read_all(img::MEMFD_INODE, 0)?;
    for e in list {
        let what = format!("memfd {:?}", e.name);
        let name = std::ffi::CString::new(e.name.clone())
            .map_err(|_| img::MEMFD_INODE.bad(0, format!("{what}: a NUL in the name")))?;
        // F_SEAL_SEAL alone is what a memfd without MFD_ALLOW_SEALING has.
        let sealing = e.seals != SealFlag::F_SEAL_SEAL.bits().cast_unsigned();
        let mut flags = nix::sys::memfd::MFdFlags::MFD_CLOEXEC;
        if sealing {
            flags |= nix::sys::memfd::MFdFlags::MFD_ALLOW_SEALING;
        }
        let fd = nix::sys::memfd::memfd_create(name.as_c_str(), flags)
            .map_err(Error::restore(me, what.clone()))?;
        let f = File::from(fd);
        let io = |err: std::io::Error| Error::Restore {
            pid: me,
            what: what.clone(),
            errno: nix::errno::Errno::from_raw(err.raw_os_error().unwrap_or(libc::EIO)),
        };
        f.set_len(e.size).map_err(io)?;
        fill(dir, &e, &f)?;
        std::os::unix::fs::fchown(&f, Some(e.uid), Some(e.gid)).map_err(io)?;
        if let Some(mode) = e.mode {
            f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode & 0o7777))
                .map_err(io)?;
        }
        if sealing && e.seals != 0 {
            let seals = SealFlag::from_bits_truncate(e.seals.cast_signed());
            fcntl(f.as_fd(), FcntlArg::F_ADD_SEALS(seals)).map_err(Error::restore(me, what))?;
        }
        out.insert(e.shmid, OwnedFd::from(f));
    }
    Ok(out)
}

fn fill(dir: &Dir, e: &MemfdInodeEntry, f: &File) -> Result<()> {
    let mut pm = dir.open_shmem_pagemap(u64::from(e.shmid))?;
    let shown = pm.path().to_owned();
    let head: PagemapHead = pm.read_entry()?.ok_or_else(|| Error::BadImage {
        path: shown.clone(),
        what: "no pagemap head".into(),
    })?;
    let path = dir.pages_file(head.pages_id);
    let pshown = path.display().to_string();
    let mut pages = std::io::BufReader::new(File::open(&path).map_err(|err| Error::ImagesDir {
        path: pshown.clone(),
        err,
    })?);
    let mut buf = vec![0u8; CHUNK];
    while let Some(pe) = pm.read_entry::<PagemapEntry>()? {
        let n = pe.nr_pages.unwrap_or(u64::from(pe.compat_nr_pages));
        let len = n.saturating_mul(PAGE);
        let mut at = 0;
        while at < len {
            let k = usize::try_from((len - at).min(CHUNK as u64)).unwrap_or(CHUNK);
            pages
                .read_exact(&mut buf[..k])
                .map_err(|err| Error::BadImage {
                    path: pshown.clone(),
                    what: format!(
                        "truncated: memfd {:?} pages at {} ({err})",
                        e.name,
                        pe.vaddr + at
                    ),
                })?;
            // Pages past the end of the file (a partial last page) are not written.
            let off = pe.vaddr + at;
            let keep = usize::try_from(e.size.saturating_sub(off).min(k as u64)).unwrap_or(0);
            f.write_all_at(&buf[..keep], off)
                .map_err(|err| Error::ImagesDir {
                    path: format!("memfd {:?}", e.name),
                    err,
                })?;
            at += k as u64;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::name_of;

    #[test]
    fn names_lose_prefix_and_suffix() {
        assert_eq!(name_of("/memfd:zdtm-memfd (deleted)"), "zdtm-memfd");
        assert_eq!(name_of("memfd:x"), "x");
    }
}
