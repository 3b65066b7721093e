//! An images directory: opening, creating and reading the image files of the
//! kinds `stasis_proto::kind` describes, named as CRIU names them.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};

use stasis_proto::kind::{self, ImageKind};
use stasis_proto::{ImageReader, ImageWriter};

use crate::error::{EngineError as Error, Result};

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

    /// File name of image `name` for object `id`.
    pub fn file(&self, name: &str, id: u64) -> Result<PathBuf> {
        let k = kind(name)?;
        let file = k
            .file_pattern
            .replace("%d", &id.to_string())
            .replace("%x", &format!("{id:x}"));
        Ok(self.path.join(file))
    }

    /// Create image `name` for object `id`.
    pub fn create(&self, name: &str, id: u64) -> Result<ImageWriter<BufWriter<File>>> {
        Ok(ImageWriter::create(&self.file(name, id)?, kind(name)?)?)
    }

    /// Create the stats image (`stats-dump` / `stats-restore`).
    pub fn create_stats(&self, which: &str) -> Result<ImageWriter<BufWriter<File>>> {
        let path = self.path.join(format!("stats-{which}"));
        Ok(ImageWriter::create(&path, kind("STATS")?)?)
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
            kind("PAGEMAP")?,
        )?)
    }

    /// Open the pagemap of shared memory object `shmid`.
    pub fn open_shmem_pagemap(&self, shmid: u64) -> Result<ImageReader<BufReader<File>>> {
        Ok(ImageReader::open_kind(
            &self.shmem_pagemap(shmid),
            kind("PAGEMAP")?,
        )?)
    }

    /// Open image `name` for object `id`, checking its magic.
    pub fn open_image(&self, name: &str, id: u64) -> Result<ImageReader<BufReader<File>>> {
        Ok(ImageReader::open_kind(&self.file(name, id)?, kind(name)?)?)
    }

    /// Whether image `name` for object `id` exists.
    pub fn exists(&self, name: &str, id: u64) -> bool {
        self.file(name, id).is_ok_and(|p| p.exists())
    }

    /// Every entry of image `name` for object `id`.
    pub fn read_all<M: prost::Message + prost::Name + Default>(
        &self,
        name: &str,
        id: u64,
    ) -> Result<Vec<M>> {
        let mut r = self.open_image(name, id)?;
        let mut out = Vec::new();
        while let Some(m) = r.read_entry()? {
            out.push(m);
        }
        Ok(out)
    }

    /// The single entry of image `name` for object `id`.
    pub fn read_one<M: prost::Message + prost::Name + Default>(
        &self,
        name: &str,
        id: u64,
    ) -> Result<M> {
        let mut r = self.open_image(name, id)?;
        r.read_entry()?.ok_or_else(|| Error::BadImage {
            path: r.path().to_owned(),
            what: "the image has no entry".into(),
        })
    }

    /// Write `msgs` as image `name` for object `id`.
    pub fn write_all<M: prost::Message>(&self, name: &str, id: u64, msgs: &[M]) -> Result<()> {
        let mut w = self.create(name, id)?;
        for m in msgs {
            w.write(m)?;
        }
        w.finish()?;
        Ok(())
    }

    /// Path of raw pages file `pages-N.img`.
    pub fn pages_file(&self, id: u32) -> PathBuf {
        self.path.join(format!("pages-{id}.img"))
    }
}
