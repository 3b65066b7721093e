//! Files deleted while open ("ghosts"), open as fds or mapped: their
//! contents in `ghost-file-ID.img` (metadata, then data chunks, holes
//! skipped; a FIFO has none), each behind a `remap-fpath.img` entry that
//! points the file's `files.img` entry at it. The restore recreates each at
//! its old path, opens it in the engine and unlinks it again; tasks open it
//! through that fd, as fds and mappings alike.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};

use nix::unistd::Pid;
use stasis_proto::images::{GhostChunkEntry, GhostFileEntry, RemapFilePathEntry, RemapType};

use super::{FdCtx, open_err};
use crate::error::{EngineError as Error, Result};
use crate::images::{Dir, img};

/// A ghost file: its metadata and data chunks (offset, bytes).
#[derive(Debug, Default)]
struct Ghost {
    entry: GhostFileEntry,
    chunks: Vec<(u64, Vec<u8>)>,
}

/// The ghost files of a dump or a restore.
#[derive(Debug, Default)]
pub(crate) struct Ghosts {
    /// By remap id, and the (dev, ino) each was dumped from.
    saved: Vec<(u32, Ghost)>,
    inodes: HashMap<(u64, u64), u32>,
    /// File id -> remap id.
    remaps: HashMap<u32, u32>,
    /// Dump: `--ghost-limit`, for mappings (fds carry the dump's options).
    limit: u64,
    /// Restore: the remade files (open, already unlinked) and a path to
    /// each the tasks can open, by remap id.
    fds: HashMap<u32, OwnedFd>,
    paths: HashMap<u32, String>,
}

impl Ghosts {
    /// Dump: the limit for files only mappings keep.
    pub(crate) fn set_limit(&mut self, limit: u64) {
        self.limit = limit;
    }

    /// Dump: save the contents of the deleted file behind `cx` (once per
    /// inode) for file `id`.
    pub(crate) fn save_fd(&mut self, cx: &FdCtx<'_>, limit: u64, id: u32) -> Result<()> {
        let link = format!("/proc/{}/fd/{}", cx.pid, cx.fd.fd);
        let what = format!("fd {} ({})", cx.fd.fd, cx.fd.target);
        let remap = self.save(cx.pid, &link, &what, cx.meta, limit, id)?;
        self.remaps.insert(id, remap);
        Ok(())
    }

    /// Dump: the same for a mapping of such a file, open through `link`.
    pub(crate) fn save_mapping(
        &mut self,
        pid: Pid,
        link: &str,
        what: &str,
        meta: &fs::Metadata,
        id: u32,
    ) -> Result<()> {
        let remap = self.save(pid, link, what, meta, self.limit, id)?;
        self.remaps.insert(id, remap);
        Ok(())
    }

    /// Save the contents of a deleted file (open through `link`) once per
    /// inode under remap id `id`; the remap id it has.
    fn save(
        &mut self,
        pid: Pid,
        link: &str,
        what: &str,
        meta: &fs::Metadata,
        limit: u64,
        id: u32,
    ) -> Result<u32> {
        let key = (meta.dev(), meta.ino());
        if let Some(&g) = self.inodes.get(&key) {
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
        // A FIFO has no contents to save (its queued bytes are FIFO data),
        // and opening it to read could wait for a writer.
        let chunks = if meta.file_type().is_fifo() {
            Vec::new()
        } else {
            data_chunks(&File::open(link).map_err(err)?, size).map_err(err)?
        };
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
        self.saved.push((id, Ghost { entry, chunks }));
        self.inodes.insert(key, id);
        Ok(id)
    }

    /// Write `remap-fpath.img` and a `ghost-file-ID.img` per ghost.
    pub(crate) fn write(&self, dir: &Dir) -> Result<()> {
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
        for (id, g) in &self.saved {
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
        Ok(())
    }

    /// Load `remap-fpath.img` and the ghost images it names.
    pub(crate) fn load(dir: &Dir) -> Result<Ghosts> {
        let mut g = Ghosts::default();
        if !dir.exists(img::REMAP_FPATH, 0) {
            return Ok(g);
        }
        let remaps: Vec<RemapFilePathEntry> = dir.read_all(img::REMAP_FPATH, 0)?;
        for r in remaps {
            if r.remap_type != Some(RemapType::Ghost as i32) {
                return Err(img::REMAP_FPATH.bad(
                    0,
                    format!(
                        "file {}: remap type {:?} (only ghost files are restored)",
                        r.orig_id, r.remap_type
                    ),
                ));
            }
            g.remaps.insert(r.orig_id, r.remap_id);
            if !g.saved.iter().any(|(id, _)| *id == r.remap_id) {
                g.saved.push((r.remap_id, load_ghost(dir, r.remap_id)?));
            }
        }
        Ok(g)
    }

    /// Restore: make the ghost files again, each open in the engine and
    /// unlinked at once (tasks open them through /proc, fds and mappings).
    /// `name_of` gives the old path of a file id.
    pub(crate) fn make(&mut self, name_of: impl Fn(u32) -> Option<String>) -> Result<()> {
        let me = nix::unistd::getpid();
        for (orig, remap) in &self.remaps {
            if self.fds.contains_key(remap) {
                continue;
            }
            let name = name_of(*orig).ok_or_else(|| {
                img::REMAP_FPATH.bad(0, format!("file {orig} is not a regular file"))
            })?;
            let ghost = self
                .saved
                .iter()
                .find(|(gid, _)| gid == remap)
                .map(|(_, g)| g)
                .ok_or_else(|| {
                    img::REMAP_FPATH.bad(0, format!("file {orig}: ghost file {remap} is missing"))
                })?;
            let path = recreate(me, &name, *remap, ghost)?;
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
            self.paths
                .insert(*remap, format!("/proc/{me}/fd/{}", f.as_raw_fd()));
            self.fds.insert(*remap, OwnedFd::from(f));
        }
        Ok(())
    }

    /// Restore: hand each remade file to `moved`, which gives it a new fd
    /// and the path tasks open it by.
    pub(crate) fn move_fds(
        &mut self,
        moved: impl FnMut(&mut OwnedFd) -> Result<String>,
    ) -> Result<()> {
        super::move_remade(&mut self.fds, &mut self.paths, moved)
    }

    /// Whether file `id` is a ghost; then the path its remade file is
    /// opened by (None if it was not made).
    pub(crate) fn path_of(&self, id: u32) -> Option<Option<&str>> {
        let remap = self.remaps.get(&id)?;
        Some(self.paths.get(remap).map(String::as_str))
    }
}

/// The data segments of `f` up to `size` (holes stay holes).
fn data_chunks(f: &File, size: u64) -> std::io::Result<Vec<(u64, Vec<u8>)>> {
    let mut chunks = Vec::new();
    for (start, end) in stasis_kernel::fd::data_extents(f.as_fd(), 0, size, 1)? {
        let mut buf = vec![0u8; usize::try_from(end - start).unwrap_or(0)];
        std::os::unix::fs::FileExt::read_exact_at(f, &mut buf, start)?;
        chunks.push((start, buf));
    }
    Ok(chunks)
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
fn recreate(pid: Pid, name: &str, id: u32, g: &Ghost) -> Result<String> {
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
