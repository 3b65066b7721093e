//! An images directory: opening, creating and reading the image files of the
//! kinds `stasis_proto::kind` describes, named as CRIU names them.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use stasis_proto::kind::{self, ImageKind};
use stasis_proto::{ImageReader, ImageWriter};

use crate::error::{EngineError as Error, Result};

/// An image kind and the type of its entries (for an image that starts
/// with a head entry, the head's): `dir.write_all(img::FILES, 0, &entries)`
/// does not compile with entries of another type.
pub struct Image<M> {
    name: &'static str,
    entry: PhantomData<fn() -> M>,
}

impl<M> Image<M> {
    const fn new(name: &'static str) -> Self {
        Image {
            name,
            entry: PhantomData,
        }
    }

    /// The file name of this kind for object `id` (`core-42.img`), as an
    /// images directory holds it.
    pub fn file_name(&self, id: impl std::fmt::Display) -> String {
        let d = id.to_string();
        let hex = d
            .parse::<u64>()
            .map_or_else(|_| d.clone(), |v| format!("{v:x}"));
        kind::by_name(self.name).map_or_else(
            || format!("{}-{d}", self.name.to_lowercase()),
            |k| k.file_pattern.replace("%d", &d).replace("%x", &hex),
        )
    }

    /// The error for image `id` of this kind, in which `what` is wrong.
    pub fn bad(&self, id: impl std::fmt::Display, what: impl Into<String>) -> Error {
        Error::BadImage {
            path: self.file_name(id),
            what: what.into(),
        }
    }
}

impl<M> Clone for Image<M> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<M> Copy for Image<M> {}

impl<M> std::fmt::Debug for Image<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// The image kinds the engine reads and writes.
#[allow(missing_docs)]
pub mod img {
    use stasis_proto::images::{
        CgroupEntry, CoreEntry, FdinfoEntry, FileEntry, FileLockEntry, FsEntry, GhostFileEntry,
        InventoryEntry, IpcMsgEntry, IpcSemEntry, IpcShmEntry, IpcVarEntry, MemfdInodeEntry,
        MmEntry, MntEntry, NetDeviceEntry, NetnsEntry, PagemapHead, PipeDataEntry,
        PosixMqueueEntry, PstreeEntry, RemapFilePathEntry, SeccompEntry, SkPacketEntry, StatsEntry,
        TcpStreamEntry, TimensEntry, TtyDataEntry, TtyInfoEntry, UsernsEntry, UtsnsEntry,
    };

    use super::Image;

    pub const INVENTORY: Image<InventoryEntry> = Image::new("INVENTORY");
    pub const PSTREE: Image<PstreeEntry> = Image::new("PSTREE");
    pub const CORE: Image<CoreEntry> = Image::new("CORE");
    pub const MM: Image<MmEntry> = Image::new("MM");
    pub const PAGEMAP: Image<PagemapHead> = Image::new("PAGEMAP");
    pub const FDINFO: Image<FdinfoEntry> = Image::new("FDINFO");
    pub const FILES: Image<FileEntry> = Image::new("FILES");
    pub const FS: Image<FsEntry> = Image::new("FS");
    pub const PIPES_DATA: Image<PipeDataEntry> = Image::new("PIPES_DATA");
    pub const FIFO_DATA: Image<PipeDataEntry> = Image::new("FIFO_DATA");
    pub const GHOST_FILE: Image<GhostFileEntry> = Image::new("GHOST_FILE");
    pub const REMAP_FPATH: Image<RemapFilePathEntry> = Image::new("REMAP_FPATH");
    pub const SK_QUEUES: Image<SkPacketEntry> = Image::new("SK_QUEUES");
    pub const FILE_LOCKS: Image<FileLockEntry> = Image::new("FILE_LOCKS");
    pub const TCP_STREAM: Image<TcpStreamEntry> = Image::new("TCP_STREAM");
    pub const TTY_INFO: Image<TtyInfoEntry> = Image::new("TTY_INFO");
    pub const TTY_DATA: Image<TtyDataEntry> = Image::new("TTY_DATA");
    pub const MEMFD_INODE: Image<MemfdInodeEntry> = Image::new("MEMFD_INODE");
    pub const SECCOMP: Image<SeccompEntry> = Image::new("SECCOMP");
    pub const UTSNS: Image<UtsnsEntry> = Image::new("UTSNS");
    pub const NETNS: Image<NetnsEntry> = Image::new("NETNS");
    pub const NETDEV: Image<NetDeviceEntry> = Image::new("NETDEV");
    pub const MNTS: Image<MntEntry> = Image::new("MNTS");
    pub const TIMENS: Image<TimensEntry> = Image::new("TIMENS");
    pub const CGROUP: Image<CgroupEntry> = Image::new("CGROUP");
    pub const USERNS: Image<UsernsEntry> = Image::new("USERNS");
    pub const IPC_VAR: Image<IpcVarEntry> = Image::new("IPC_VAR");
    pub const IPCNS_SHM: Image<IpcShmEntry> = Image::new("IPCNS_SHM");
    pub const IPCNS_SEM: Image<IpcSemEntry> = Image::new("IPCNS_SEM");
    pub const IPCNS_MSG: Image<IpcMsgEntry> = Image::new("IPCNS_MSG");
    pub const POSIX_MQUEUE: Image<PosixMqueueEntry> = Image::new("POSIX_MQUEUE");
    pub const STATS: Image<StatsEntry> = Image::new("STATS");

    /// (kind name, schema message name of its entry type) of every constant.
    #[cfg(test)]
    pub(super) fn all() -> Vec<(&'static str, &'static str)> {
        use prost::Name;
        vec![
            (INVENTORY.name, InventoryEntry::NAME),
            (PSTREE.name, PstreeEntry::NAME),
            (CORE.name, CoreEntry::NAME),
            (MM.name, MmEntry::NAME),
            (PAGEMAP.name, PagemapHead::NAME),
            (FDINFO.name, FdinfoEntry::NAME),
            (FILES.name, FileEntry::NAME),
            (FS.name, FsEntry::NAME),
            (PIPES_DATA.name, PipeDataEntry::NAME),
            (FIFO_DATA.name, PipeDataEntry::NAME),
            (GHOST_FILE.name, GhostFileEntry::NAME),
            (REMAP_FPATH.name, RemapFilePathEntry::NAME),
            (SK_QUEUES.name, SkPacketEntry::NAME),
            (FILE_LOCKS.name, FileLockEntry::NAME),
            (TCP_STREAM.name, TcpStreamEntry::NAME),
            (TTY_INFO.name, TtyInfoEntry::NAME),
            (TTY_DATA.name, TtyDataEntry::NAME),
            (MEMFD_INODE.name, MemfdInodeEntry::NAME),
            (SECCOMP.name, SeccompEntry::NAME),
            (UTSNS.name, UtsnsEntry::NAME),
            (NETNS.name, NetnsEntry::NAME),
            (NETDEV.name, NetDeviceEntry::NAME),
            (MNTS.name, MntEntry::NAME),
            (TIMENS.name, TimensEntry::NAME),
            (CGROUP.name, CgroupEntry::NAME),
            (USERNS.name, UsernsEntry::NAME),
            (IPC_VAR.name, IpcVarEntry::NAME),
            (IPCNS_SHM.name, IpcShmEntry::NAME),
            (IPCNS_SEM.name, IpcSemEntry::NAME),
            (IPCNS_MSG.name, IpcMsgEntry::NAME),
            (POSIX_MQUEUE.name, PosixMqueueEntry::NAME),
            (STATS.name, StatsEntry::NAME),
        ]
    }
}

/// The directory given with `-D`.
#[derive(Debug, Clone)]
pub struct Dir {
    path: PathBuf,
}

fn kind(name: &str) -> Result<&'static ImageKind> {
    kind::by_name(name).ok_or_else(|| Error::BadImage {
        path: name.to_owned(),
        what: "unknown image kind".into(),
    })
}

impl Dir {
    /// An existing directory.
    pub fn open(path: &Path) -> Result<Dir> {
        let meta = std::fs::metadata(path).map_err(|err| Error::ImagesDir {
            path: path.display().to_string(),
            err,
        })?;
        if !meta.is_dir() {
            return Err(Error::ImagesDir {
                path: path.display().to_string(),
                err: std::io::Error::from(std::io::ErrorKind::NotADirectory),
            });
        }
        Ok(Dir {
            path: path.to_owned(),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The names in the directory now.
    pub fn entries(&self) -> std::collections::HashSet<std::ffi::OsString> {
        std::fs::read_dir(&self.path)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default()
    }

    /// Remove the image files made since `before` (from [`Dir::entries`]):
    /// what a failed dump wrote. Other files (a log the user asked for
    /// there, say) are left.
    pub fn remove_new(&self, before: &std::collections::HashSet<std::ffi::OsString>) {
        for name in self.entries().difference(before) {
            let s = name.to_string_lossy();
            if s.ends_with(".img") || s.starts_with("stats-") {
                let _ = std::fs::remove_file(self.path.join(name));
            }
        }
    }

    /// File name of image `name` for object `id`.
    pub fn file<M>(&self, img: Image<M>, id: u64) -> Result<PathBuf> {
        kind(img.name)?;
        Ok(self.path.join(img.file_name(id)))
    }

    /// Create image `name` for object `id`.
    pub fn create<M>(&self, img: Image<M>, id: u64) -> Result<ImageWriter<BufWriter<File>>> {
        Ok(ImageWriter::create(&self.file(img, id)?, kind(img.name)?)?)
    }

    /// Create the stats image (`stats-dump` / `stats-restore`).
    pub fn create_stats(&self, which: &str) -> Result<ImageWriter<BufWriter<File>>> {
        let path = self.path.join(format!("stats-{which}"));
        Ok(ImageWriter::create(&path, kind(img::STATS.name)?)?)
    }

    /// The pagemap of shared memory object `shmid` (`pagemap-shmem-ID.img`,
    /// a pagemap image under another name, as CRIU keeps memfd contents).
    pub fn shmem_pagemap(&self, shmid: u64) -> PathBuf {
        self.path.join(format!("pagemap-shmem-{shmid}.img"))
    }

    /// Create the pagemap of shared memory object `shmid`.
    pub fn create_shmem_pagemap(&self, shmid: u64) -> Result<ImageWriter<BufWriter<File>>> {
        Ok(ImageWriter::create(
            &self.shmem_pagemap(shmid),
            kind(img::PAGEMAP.name)?,
        )?)
    }

    /// Open the pagemap of shared memory object `shmid`.
    pub fn open_shmem_pagemap(&self, shmid: u64) -> Result<ImageReader<BufReader<File>>> {
        Ok(ImageReader::open_kind(
            &self.shmem_pagemap(shmid),
            kind(img::PAGEMAP.name)?,
        )?)
    }

    /// Open image `name` for object `id`, checking its magic.
    pub fn open_image<M>(&self, img: Image<M>, id: u64) -> Result<ImageReader<BufReader<File>>> {
        Ok(ImageReader::open_kind(
            &self.file(img, id)?,
            kind(img.name)?,
        )?)
    }

    /// Whether image `name` for object `id` exists.
    pub fn exists<M>(&self, img: Image<M>, id: u64) -> bool {
        self.file(img, id).is_ok_and(|p| p.exists())
    }

    /// Every entry of image `name` for object `id`.
    pub fn read_all<M: prost::Message + prost::Name + Default>(
        &self,
        img: Image<M>,
        id: u64,
    ) -> Result<Vec<M>> {
        let mut r = self.open_image(img, id)?;
        let mut out = Vec::new();
        while let Some(m) = r.read_entry()? {
            out.push(m);
        }
        Ok(out)
    }

    /// The single entry of image `name` for object `id`.
    pub fn read_one<M: prost::Message + prost::Name + Default>(
        &self,
        img: Image<M>,
        id: u64,
    ) -> Result<M> {
        let mut r = self.open_image(img, id)?;
        r.read_entry()?.ok_or_else(|| Error::BadImage {
            path: r.path().to_owned(),
            what: "the image has no entry".into(),
        })
    }

    /// Write `msgs` as image `name` for object `id`.
    pub fn write_all<M: prost::Message>(&self, img: Image<M>, id: u64, msgs: &[M]) -> Result<()> {
        let mut w = self.create(img, id)?;
        for m in msgs {
            w.write(m)?;
        }
        w.finish()?;
        Ok(())
    }

    /// Path of the raw contents of tmpfs superblock `s_dev` (kernel
    /// encoding), `tmpfs-dev-S_DEV.tar.gz.img`: a gzip'd tar archive.
    pub fn tmpfs_file(&self, s_dev: u32) -> PathBuf {
        self.path.join(format!("tmpfs-dev-{s_dev}.tar.gz.img"))
    }

    /// Path of raw image `name` (a file another tool's format fills:
    /// `ifaddr-N.img` holds `ip addr save`'s output).
    pub fn raw_file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Path of raw pages file `pages-N.img`.
    pub fn pages_file(&self, id: u32) -> PathBuf {
        self.path.join(format!("pages-{id}.img"))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn image_file_names_follow_the_kinds_patterns() {
        use super::img;
        assert_eq!(img::CORE.file_name(42), "core-42.img");
        assert_eq!(img::FILES.file_name(0), "files.img");
        assert_eq!(
            img::CORE
                .bad(nix::unistd::Pid::from_raw(7), "x")
                .to_string(),
            "image core-7.img: x"
        );
    }

    #[test]
    fn every_image_constant_names_a_kind_of_its_entry_type() {
        for (name, message) in super::img::all() {
            let kind = stasis_proto::kind::by_name(name).expect("a kind of the schema");
            let first = match kind.layout {
                stasis_proto::kind::Layout::Entries(m)
                | stasis_proto::kind::Layout::WithPayload(m, _) => Some(m),
                _ => None,
            };
            if let Some(m) = first {
                assert_eq!(m, message, "{name}'s entries");
            }
        }
    }
}
