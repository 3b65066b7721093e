//! The contents of a tmpfs superblock only the tree sees, kept as CRIU keeps
//! them: a gzip'd tar archive, `tmpfs-dev-S_DEV.tar.gz.img`, of the
//! filesystem seen through a mount of it without the mounts on top
//! (a clone made with open_tree, so an overmounted directory shows what is
//! under it). Numeric owners, modes, times, hard links, symlinks, device
//! nodes and FIFOs are kept; sockets are not (tar has no entry for them).

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, OFlags, ResolveFlags};
use tar::{EntryType, Header};

use crate::error::{EngineError as Error, Result};

fn contents_err<'a>(
    path: &'a str,
    what: &'static str,
) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |err| Error::MountContents {
        path: path.to_owned(),
        what,
        err,
    }
}

/// Write the files under `base` (the root of a detached mount, as a
/// `/proc/self/fd/N` path) into `out`; `shown` names the mount in errors.
pub(crate) fn save(base: &Path, out: &Path, shown: &str) -> Result<()> {
    let file = File::create(out).map_err(contents_err(shown, "creating its contents image"))?;
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Complete);
    tar.follow_symlinks(false);
    let mut p = Packer {
        tar,
        links: HashMap::new(),
        shown,
    };
    let mut stack = vec![PathBuf::from(".")];
    while let Some(rel) = stack.pop() {
        stack.extend(p.pack(base, rel)?);
    }
    let gz = p
        .tar
        .into_inner()
        .map_err(contents_err(shown, "writing its contents image"))?;
    gz.finish()
        .map_err(contents_err(shown, "writing its contents image"))?;
    Ok(())
}

/// The archive being written, and the first name of each file with more
/// than one link (by inode), so the others are archived as links to it.
struct Packer<'a> {
    tar: tar::Builder<flate2::write::GzEncoder<File>>,
    links: HashMap<u64, PathBuf>,
    shown: &'a str,
}

impl Packer<'_> {
    /// Archive file `rel` under `base`; a directory's entries to archive
    /// next, popped in name order.
    fn pack(&mut self, base: &Path, rel: PathBuf) -> Result<Vec<PathBuf>> {
        let shown = self.shown;
        let path = base.join(&rel);
        let meta =
            std::fs::symlink_metadata(&path).map_err(contents_err(shown, "reading its files"))?;
        let ft = meta.file_type();
        let mut h = Header::new_gnu();
        h.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
        h.set_size(0);
        let name = if rel == Path::new(".") {
            PathBuf::from("./")
        } else {
            rel.clone()
        };
        let tar = &mut self.tar;
        if ft.is_dir() {
            h.set_entry_type(EntryType::Directory);
            tar.append_data(&mut h, &name, std::io::empty())
                .map_err(contents_err(shown, "archiving a directory"))?;
            let mut names: Vec<_> = std::fs::read_dir(&path)
                .map_err(contents_err(shown, "listing a directory"))?
                .flatten()
                .map(|e| e.file_name())
                .collect();
            names.sort_unstable_by(|a, b| b.cmp(a));
            return Ok(names.into_iter().map(|n| rel.join(n)).collect());
        }
        if meta.nlink() > 1
            && let Some(first) = self.links.get(&meta.ino())
        {
            h.set_entry_type(EntryType::Link);
            tar.append_link(&mut h, &name, first)
                .map_err(contents_err(shown, "archiving a hard link"))?;
        } else if ft.is_symlink() {
            let target =
                std::fs::read_link(&path).map_err(contents_err(shown, "reading a symlink"))?;
            h.set_entry_type(EntryType::Symlink);
            tar.append_link(&mut h, &name, &target)
                .map_err(contents_err(shown, "archiving a symlink"))?;
        } else if ft.is_file() {
            let f = File::open(&path).map_err(contents_err(shown, "reading a file"))?;
            h.set_entry_type(EntryType::Regular);
            h.set_size(meta.len());
            tar.append_data(&mut h, &name, f)
                .map_err(contents_err(shown, "archiving a file"))?;
            self.note_link(&meta, name);
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
            special_header(&mut h, &meta)
                .map_err(contents_err(shown, "archiving a device node"))?;
            tar.append_data(&mut h, &name, std::io::empty())
                .map_err(contents_err(shown, "archiving a special file"))?;
            self.note_link(&meta, name);
        } else {
            tracing::warn!(mount = shown, file = %rel.display(), "a socket in a tmpfs is not kept");
        }
        Ok(Vec::new())
    }

    /// A file with more links is archived by `name` first.
    fn note_link(&mut self, meta: &std::fs::Metadata, name: PathBuf) {
        if meta.nlink() > 1 {
            self.links.insert(meta.ino(), name);
        }
    }
}

/// The type and device numbers of a device node or FIFO in its header.
fn special_header(h: &mut Header, meta: &std::fs::Metadata) -> std::io::Result<()> {
    let ft = meta.file_type();
    h.set_entry_type(if ft.is_char_device() {
        EntryType::Char
    } else if ft.is_block_device() {
        EntryType::Block
    } else {
        EntryType::Fifo
    });
    let rdev = meta.rdev();
    let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
    h.set_device_major(u32::try_from(major).unwrap_or(0))?;
    h.set_device_minor(u32::try_from(minor).unwrap_or(0))
}

/// Fill the filesystem whose root is `root` (a directory fd: the root of a
/// detached mount) from the archive `img`. Every path is resolved beneath
/// `root` without following symlinks, so an entry cannot write outside it;
/// directories get their owners, modes and times last (a read-only one is
/// filled first).
pub(crate) fn load(img: &Path, root: BorrowedFd<'_>, shown: &str) -> Result<()> {
    let file = File::open(img).map_err(contents_err(shown, "opening its contents image"))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let io = |what: &'static str| contents_err(shown, what);
    let mut dirs: Vec<(PathBuf, Attrs)> = Vec::new();
    for entry in tar.entries().map_err(io("reading its contents image"))? {
        let mut entry = entry.map_err(io("reading its contents image"))?;
        if let Some(dir) = unpack(&mut entry, root, shown)? {
            dirs.push(dir);
        }
    }
    // Deepest first, so setting a directory's time is the last change in it.
    for (rel, at) in dirs.into_iter().rev() {
        let d = beneath(root, &rel).map_err(rx(shown, "resolving a directory"))?;
        at.set(d.as_fd(), "", false)
            .map_err(rx(shown, "setting a directory's owner, mode and times"))?;
    }
    Ok(())
}

/// A failed step on the contents of mount `shown`, from rustix.
fn rx<'a>(shown: &'a str, what: &'static str) -> impl Fn(rustix::io::Errno) -> Error + 'a {
    move |e| contents_err(shown, what)(std::io::Error::from(e))
}

/// Make the file of archive entry `entry` beneath `root`, with its owner,
/// mode and times; a directory is made and returned with its attributes,
/// which are set once it is filled.
fn unpack<R: std::io::Read>(
    entry: &mut tar::Entry<'_, R>,
    root: BorrowedFd<'_>,
    shown: &str,
) -> Result<Option<(PathBuf, Attrs)>> {
    let io = |what: &'static str| contents_err(shown, what);
    let rel = clean(&entry.path().map_err(io("reading its contents image"))?)
        .map_err(io("unpacking its contents image"))?;
    let h = entry.header();
    let at = Attrs {
        mode: h.mode().unwrap_or(0o755) & 0o7777,
        uid: h.uid().ok().and_then(|v| u32::try_from(v).ok()),
        gid: h.gid().ok().and_then(|v| u32::try_from(v).ok()),
        mtime: h.mtime().unwrap_or(0),
    };
    let ty = h.entry_type();
    let Some(name) = rel.file_name().map(std::ffi::OsStr::to_owned) else {
        // The root itself.
        return Ok((ty == EntryType::Directory).then_some((rel, at)));
    };
    let parent = beneath(root, rel.parent().unwrap_or(Path::new("")))
        .map_err(rx(shown, "resolving a directory"))?;
    let p = parent.as_fd();
    match ty {
        EntryType::Directory => {
            match rustix::fs::mkdirat(p, &name, rustix::fs::Mode::RWXU) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(rx(shown, "making a directory")(e)),
            }
            return Ok(Some((rel, at)));
        }
        EntryType::Regular | EntryType::Continuous => write_file(entry, p, &name, shown)?,
        EntryType::Symlink | EntryType::Link => {
            let link = entry
                .header()
                .link_name()
                .map_err(io("reading its contents image"))?
                .map(std::borrow::Cow::into_owned)
                .ok_or_else(|| {
                    let what = if ty == EntryType::Link {
                        "a hard link without a target"
                    } else {
                        "a symlink without a target"
                    };
                    bad(shown, what)
                })?;
            if ty == EntryType::Link {
                hard_link(root, &link, p, &name, shown)?;
                // A link shares its target's owner, mode and times.
                return Ok(None);
            }
            rustix::fs::symlinkat(link.as_path(), p, &name)
                .map_err(rx(shown, "making a symlink"))?;
        }
        EntryType::Char | EntryType::Block | EntryType::Fifo => {
            make_node(entry.header(), p, &name, at.mode)
                .map_err(rx(shown, "making a special file"))?;
        }
        _ => {
            tracing::warn!(mount = shown, file = %rel.display(), "an archive entry of an unknown type is skipped");
            return Ok(None);
        }
    }
    at.set(p, &name, ty == EntryType::Symlink)
        .map_err(rx(shown, "setting a file's owner, mode and times"))?;
    Ok(None)
}

/// Make the regular file `name` in `p` with the contents of `entry`
/// (owner-only until its attributes are set).
fn write_file<R: std::io::Read>(
    entry: &mut tar::Entry<'_, R>,
    p: BorrowedFd<'_>,
    name: &std::ffi::OsStr,
    shown: &str,
) -> Result<()> {
    let fd = rustix::fs::openat(
        p,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
    )
    .map_err(rx(shown, "creating a file"))?;
    let mut f = File::from(fd);
    std::io::copy(entry, &mut f).map_err(contents_err(shown, "writing a file"))?;
    Ok(())
}

/// Make the device node or FIFO of header `h` as `name` in `p`.
fn make_node(
    h: &Header,
    p: BorrowedFd<'_>,
    name: &std::ffi::OsStr,
    mode: u32,
) -> std::result::Result<(), rustix::io::Errno> {
    let ft = match h.entry_type() {
        EntryType::Char => rustix::fs::FileType::CharacterDevice,
        EntryType::Block => rustix::fs::FileType::BlockDevice,
        _ => rustix::fs::FileType::Fifo,
    };
    let dev = rustix::fs::makedev(
        h.device_major().ok().flatten().unwrap_or(0),
        h.device_minor().ok().flatten().unwrap_or(0),
    );
    rustix::fs::mknodat(p, name, ft, rustix::fs::Mode::from_raw_mode(mode), dev)
}

/// Hard link `name` in directory `p` to `target` (a path of the archive),
/// both beneath `root`.
fn hard_link(
    root: BorrowedFd<'_>,
    target: &Path,
    p: BorrowedFd<'_>,
    name: &std::ffi::OsStr,
    shown: &str,
) -> Result<()> {
    let target = clean(target).map_err(contents_err(shown, "unpacking its contents image"))?;
    let tdir = beneath(root, target.parent().unwrap_or(Path::new("")))
        .map_err(rx(shown, "resolving a directory"))?;
    let tname = target
        .file_name()
        .ok_or_else(|| bad(shown, "a hard link to the root"))?;
    rustix::fs::linkat(tdir.as_fd(), tname, p, name, AtFlags::empty())
        .map_err(rx(shown, "making a hard link"))
}

fn bad(shown: &str, what: &str) -> Error {
    Error::MountContents {
        path: shown.to_owned(),
        what: "unpacking its contents image",
        err: std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned()),
    }
}

/// `p` as plain names (no root, no `..`); `.` parts dropped.
fn clean(p: &Path) -> std::io::Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::Normal(n) => out.push(n),
            std::path::Component::CurDir => {}
            _ => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} leaves the filesystem", p.display()),
                ));
            }
        }
    }
    Ok(out)
}

/// Directory `rel` under `root`, resolved beneath it with no symlinks.
fn beneath(root: BorrowedFd<'_>, rel: &Path) -> rustix::io::Result<OwnedFd> {
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    rustix::fs::openat2(
        root,
        rel,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
}

/// Owner, mode and modification time of an archive entry.
#[derive(Debug, Clone, Copy)]
struct Attrs {
    mode: u32,
    uid: Option<u32>,
    gid: Option<u32>,
    mtime: u64,
}

impl Attrs {
    /// Apply to `name` in `dir` (`""`: `dir` itself).
    fn set(
        self,
        dir: BorrowedFd<'_>,
        name: impl AsRef<Path>,
        symlink: bool,
    ) -> rustix::io::Result<()> {
        let name = name.as_ref();
        let flags = if name.as_os_str().is_empty() {
            AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW
        } else {
            AtFlags::SYMLINK_NOFOLLOW
        };
        rustix::fs::chownat(
            dir,
            name,
            self.uid.map(rustix::fs::Uid::from_raw),
            self.gid.map(rustix::fs::Gid::from_raw),
            flags,
        )?;
        if !symlink {
            // fchmodat follows the path; an O_PATH fd of the file itself
            // (never a symlink here) is changed through /proc.
            let f = rustix::fs::openat(
                dir,
                if name.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    name
                },
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )?;
            rustix::fs::chmodat(
                rustix::fs::CWD,
                format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&f)),
                rustix::fs::Mode::from_raw_mode(self.mode),
                AtFlags::empty(),
            )?;
        }
        let t = rustix::fs::Timespec {
            tv_sec: i64::try_from(self.mtime).unwrap_or(0),
            tv_nsec: 0,
        };
        rustix::fs::utimensat(
            dir,
            name,
            &rustix::fs::Timestamps {
                last_access: t,
                last_modification: t,
            },
            flags,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_tree_of_files_comes_back_with_modes_links_and_fifos() {
        let src = tempfile::tempdir().unwrap();
        let s = src.path();
        std::fs::create_dir(s.join("d")).unwrap();
        std::fs::write(s.join("d/a"), b"alpha").unwrap();
        std::fs::set_permissions(s.join("d/a"), std::fs::Permissions::from_mode(0o640)).unwrap();
        std::fs::hard_link(s.join("d/a"), s.join("b")).unwrap();
        std::os::unix::fs::symlink("d/a", s.join("c")).unwrap();
        nix::unistd::mkfifo(
            &s.join("f"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let img = tempfile::NamedTempFile::new().unwrap();
        save(s, img.path(), "test").unwrap();
        let dst = tempfile::tempdir().unwrap();
        let d = dst.path();
        let root = File::open(d).unwrap();
        load(img.path(), root.as_fd(), "test").unwrap();
        assert_eq!(std::fs::read(d.join("d/a")).unwrap(), b"alpha");
        assert_eq!(
            std::fs::metadata(d.join("d")).unwrap().mtime(),
            std::fs::metadata(s.join("d")).unwrap().mtime()
        );
        let a = std::fs::metadata(d.join("d/a")).unwrap();
        assert_eq!(a.mode() & 0o7777, 0o640);
        assert_eq!(std::fs::metadata(d.join("b")).unwrap().ino(), a.ino());
        assert_eq!(std::fs::read_link(d.join("c")).unwrap(), Path::new("d/a"));
        assert!(
            std::fs::symlink_metadata(d.join("f"))
                .unwrap()
                .file_type()
                .is_fifo()
        );
    }
}
