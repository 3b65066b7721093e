//! The contents of a tmpfs superblock only the tree sees, kept as CRIU keeps
//! them: a gzip'd tar archive, `tmpfs-dev-S_DEV.tar.gz.img`, of the
//! filesystem seen through a mount of it without the mounts on top
//! (a clone made with open_tree, so an overmounted directory shows what is
//! under it). Numeric owners, modes, times, hard links, symlinks, device
//! nodes and FIFOs are kept; sockets are not (tar has no entry for them).

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

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
    let mut links: HashMap<u64, PathBuf> = HashMap::new();
    let mut stack = vec![PathBuf::from(".")];
    while let Some(rel) = stack.pop() {
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
        if ft.is_dir() {
            h.set_entry_type(EntryType::Directory);
            tar.append_data(&mut h, &name, std::io::empty())
                .map_err(contents_err(shown, "archiving a directory"))?;
            let mut names: Vec<_> = std::fs::read_dir(&path)
                .map_err(contents_err(shown, "listing a directory"))?
                .flatten()
                .map(|e| e.file_name())
                .collect();
            // Popped in name order.
            names.sort_unstable_by(|a, b| b.cmp(a));
            stack.extend(names.into_iter().map(|n| rel.join(n)));
        } else if meta.nlink() > 1
            && !ft.is_dir()
            && let Some(first) = links.get(&meta.ino())
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
            if meta.nlink() > 1 {
                links.insert(meta.ino(), name);
            }
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
            h.set_entry_type(if ft.is_char_device() {
                EntryType::Char
            } else if ft.is_block_device() {
                EntryType::Block
            } else {
                EntryType::Fifo
            });
            let rdev = meta.rdev();
            let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
            h.set_device_major(u32::try_from(major).unwrap_or(0))
                .map_err(contents_err(shown, "archiving a device node"))?;
            h.set_device_minor(u32::try_from(minor).unwrap_or(0))
                .map_err(contents_err(shown, "archiving a device node"))?;
            tar.append_data(&mut h, &name, std::io::empty())
                .map_err(contents_err(shown, "archiving a special file"))?;
            if meta.nlink() > 1 {
                links.insert(meta.ino(), name);
            }
        } else {
            tracing::warn!(mount = shown, file = %rel.display(), "a socket in a tmpfs is not kept");
        }
    }
    let gz = tar
        .into_inner()
        .map_err(contents_err(shown, "writing its contents image"))?;
    gz.finish()
        .map_err(contents_err(shown, "writing its contents image"))?;
    Ok(())
}

/// Fill the filesystem under `base` from the archive `img`. Entries whose
/// path leaves `base` are refused; directories get their modes and times
/// last (a read-only one is filled first).
pub(crate) fn load(img: &Path, base: &Path, shown: &str) -> Result<()> {
    let file = File::open(img).map_err(contents_err(shown, "opening its contents image"))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    tar.set_preserve_permissions(true);
    tar.set_preserve_ownerships(true);
    tar.set_preserve_mtime(true);
    tar.set_overwrite(true);
    tar.set_unpack_xattrs(false);
    let bad = |what: String| Error::MountContents {
        path: shown.to_owned(),
        what: "unpacking its contents image",
        err: std::io::Error::new(std::io::ErrorKind::InvalidData, what),
    };
    let mut dirs = Vec::new();
    for entry in tar
        .entries()
        .map_err(contents_err(shown, "reading its contents image"))?
    {
        let mut entry = entry.map_err(contents_err(shown, "reading its contents image"))?;
        let rel = entry
            .path()
            .map_err(contents_err(shown, "reading its contents image"))?
            .into_owned();
        if rel.components().any(|c| {
            matches!(
                c,
                std::path::Component::ParentDir | std::path::Component::RootDir
            )
        }) {
            return Err(bad(format!("{} leaves the filesystem", rel.display())));
        }
        let h = entry.header();
        let (mode, uid, gid, mtime) = (
            h.mode().unwrap_or(0o755),
            h.uid().unwrap_or(0),
            h.gid().unwrap_or(0),
            h.mtime().unwrap_or(0),
        );
        let ty = h.entry_type();
        let path = base.join(&rel);
        match ty {
            EntryType::Directory => {
                std::fs::create_dir_all(&path)
                    .map_err(contents_err(shown, "making a directory"))?;
                dirs.push((path, mode, uid, gid, mtime));
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let kind = match ty {
                    EntryType::Char => nix::sys::stat::SFlag::S_IFCHR,
                    EntryType::Block => nix::sys::stat::SFlag::S_IFBLK,
                    _ => nix::sys::stat::SFlag::S_IFIFO,
                };
                let dev = nix::sys::stat::makedev(
                    u64::from(h.device_major().ok().flatten().unwrap_or(0)),
                    u64::from(h.device_minor().ok().flatten().unwrap_or(0)),
                );
                inside_base(base, &path).map_err(bad)?;
                let perm = nix::sys::stat::Mode::from_bits_truncate(mode);
                nix::sys::stat::mknod(&path, kind, perm, dev).map_err(|e| {
                    contents_err(shown, "making a special file")(std::io::Error::from(e))
                })?;
                attrs(&path, mode, uid, gid, mtime)
                    .map_err(contents_err(shown, "setting a file's owner and times"))?;
            }
            _ => {
                if !entry
                    .unpack_in(base)
                    .map_err(contents_err(shown, "unpacking a file"))?
                {
                    return Err(bad(format!("{} leaves the filesystem", rel.display())));
                }
            }
        }
    }
    // Deepest first, so setting a directory's time is the last change in it.
    for (path, mode, uid, gid, mtime) in dirs.into_iter().rev() {
        attrs(&path, mode, uid, gid, mtime)
            .map_err(contents_err(shown, "setting a directory's owner and times"))?;
    }
    Ok(())
}

/// `path`'s parent, symlinks resolved, is under `base`.
fn inside_base(base: &Path, path: &Path) -> Result<(), String> {
    let parent = path.parent().unwrap_or(base);
    let (b, p) = (
        base.canonicalize().map_err(|e| e.to_string())?,
        parent.canonicalize().map_err(|e| e.to_string())?,
    );
    if p.starts_with(&b) {
        Ok(())
    } else {
        Err(format!("{} leaves the filesystem", path.display()))
    }
}

fn attrs(path: &Path, mode: u32, uid: u64, gid: u64, mtime: u64) -> std::io::Result<()> {
    let id = |v: u64| u32::try_from(v).ok();
    std::os::unix::fs::lchown(path, id(uid), id(gid))?;
    std::fs::set_permissions(
        path,
        std::os::unix::fs::PermissionsExt::from_mode(mode & 0o7777),
    )?;
    let t = nix::sys::time::TimeSpec::new(i64::try_from(mtime).unwrap_or(0), 0);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .map_err(std::io::Error::from)
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
        load(img.path(), d, "test").unwrap();
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
