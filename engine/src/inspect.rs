//! Exploring a dump directory (`stasis image x DIR ps|fds|mems|rss`): the
//! process tree, each task's open files, its memory map and how much of each
//! mapping the dump holds. Reads inventory, pstree, core, ids, fdinfo, files,
//! fs, mm and pagemap images; writes nothing.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use stasis_proto::images::{
    CoreEntry, FdTypes, FdinfoEntry, FileEntry, FsEntry, InventoryEntry, MmEntry, PagemapEntry,
    PagemapHead, PstreeEntry, RegFileEntry, TaskKobjIdsEntry, file_entry,
};
use stasis_proto::kind::{self, ImageKind};
use stasis_proto::{ImageError, ImageReader};
use thiserror::Error;

/// What `image x` can show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// The process tree with pids, groups, sessions and names.
    Ps,
    /// Open files of every task, with cwd, root and exe.
    Fds,
    /// Memory map of every task.
    Mems,
    /// Pages the dump holds for every mapping.
    Rss,
}

/// Failure to explore a dump directory.
#[derive(Debug, Error)]
pub enum InspectError {
    /// An image of the dump is missing.
    #[error("{dir}: no {file} in the images directory; is this a stasis/CRIU dump?")]
    Missing {
        /// The images directory.
        dir: PathBuf,
        /// The missing file.
        file: String,
    },
    /// An image is malformed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// An image is well formed but holds something impossible.
    #[error("{path}: {what}")]
    Inconsistent {
        /// The image file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
}

fn kind(name: &str) -> &'static ImageKind {
    // The names used here are all in `kind::KINDS` (tested below).
    kind::by_name(name).unwrap_or_else(|| panic!("image kind {name} is defined"))
}

fn read_all<M: prost::Message + prost::Name + Default>(
    path: &Path,
    kind_name: &str,
) -> Result<Vec<M>, ImageError> {
    let mut rd = ImageReader::open_kind(path, kind(kind_name))?;
    let mut out = Vec::new();
    while let Some(m) = rd.read_entry()? {
        out.push(m);
    }
    Ok(out)
}

struct Dump {
    dir: PathBuf,
}

impl Dump {
    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    fn require(&self, file: &str) -> Result<PathBuf, InspectError> {
        let p = self.path(file);
        if p.exists() {
            Ok(p)
        } else {
            Err(InspectError::Missing {
                dir: self.dir.clone(),
                file: file.to_owned(),
            })
        }
    }

    fn one<M: prost::Message + prost::Name + Default>(
        &self,
        file: &str,
        kind_name: &str,
    ) -> Result<M, InspectError> {
        let p = self.require(file)?;
        read_all::<M>(&p, kind_name)?
            .into_iter()
            .next()
            .ok_or_else(|| InspectError::Inconsistent {
                path: p,
                what: "image holds no entry".into(),
            })
    }

    fn pstree(&self) -> Result<Vec<PstreeEntry>, InspectError> {
        Ok(read_all(&self.require("pstree.img")?, "PSTREE")?)
    }

    fn core(&self, pid: u32) -> Result<CoreEntry, InspectError> {
        self.one(&format!("core-{pid}.img"), "CORE")
    }

    fn ids(&self, pid: u32) -> Result<TaskKobjIdsEntry, InspectError> {
        if let Some(ids) = self.core(pid)?.ids {
            return Ok(ids);
        }
        self.one(&format!("ids-{pid}.img"), "IDS")
    }

    fn files(&self) -> Result<HashMap<u32, FileEntry>, InspectError> {
        let mut map = HashMap::new();
        let p = self.path("files.img");
        if p.exists() {
            for f in read_all::<FileEntry>(&p, "FILES")? {
                // A tun file's open flags are in a regular-file twin of the
                // same id: the file is the other one.
                let twin =
                    matches!(f.kind, Some(file_entry::Kind::Reg(_))) && map.contains_key(&f.id);
                if !twin {
                    map.insert(f.id, f);
                }
            }
        }
        // Images older than files.img keep regular files in reg-files.img.
        let p = self.path("reg-files.img");
        if p.exists() {
            for r in read_all::<RegFileEntry>(&p, "REG_FILES")? {
                map.entry(r.id).or_insert_with(|| FileEntry {
                    r#type: FdTypes::Reg as i32,
                    id: r.id,
                    kind: Some(file_entry::Kind::Reg(r)),
                });
            }
        }
        Ok(map)
    }
}

fn describe(files: &HashMap<u32, FileEntry>, id: u32) -> String {
    let Some(f) = files.get(&id) else {
        return format!("<file {id:#x} not in files.img>");
    };
    match &f.kind {
        Some(file_entry::Kind::Reg(r)) => r.name.clone(),
        Some(file_entry::Kind::Pipe(p)) => format!("pipe[{}]", p.pipe_id),
        Some(file_entry::Kind::Fifo(p)) => match p.regf_id.and_then(|r| files.get(&r)) {
            Some(FileEntry {
                kind: Some(file_entry::Kind::Reg(r)),
                ..
            }) => format!("fifo[{}] {}", p.pipe_id, r.name),
            _ => format!("fifo[{}]", p.pipe_id),
        },
        Some(file_entry::Kind::Tty(t)) => format!("tty[{}]", t.tty_info_id),
        Some(file_entry::Kind::Memfd(m)) => format!("memfd[inode {}]", m.inode_id),
        Some(file_entry::Kind::Pidfd(p)) => format!("pidfd[{}]", p.nspid),
        Some(file_entry::Kind::Efd(e)) => format!("[eventfd] count {}", e.counter),
        Some(file_entry::Kind::Epfd(e)) => format!("[eventpoll] {} fds", e.tfd.len()),
        Some(file_entry::Kind::Sgfd(e)) => format!("[signalfd] mask {:#x}", e.sigmask),
        Some(file_entry::Kind::Tfd(e)) => format!("[timerfd] clock {}", e.clockid),
        Some(file_entry::Kind::Ify(e)) => format!("inotify {} watches", e.wd.len()),
        Some(file_entry::Kind::Isk(u)) => format!(
            "socket:[{}] inet family {} type {} port {}",
            u.ino, u.family, u.r#type, u.src_port
        ),
        Some(file_entry::Kind::Nlsk(n)) => format!(
            "socket:[{}] netlink protocol {} port {}",
            n.ino, n.protocol, n.portid
        ),
        Some(file_entry::Kind::Psk(p)) => format!(
            "packet socket type {} protocol {:#06x} device {}",
            p.r#type, p.protocol, p.ifindex
        ),
        Some(file_entry::Kind::Ffy(e)) => format!("fanotify {} marks", e.mark.len()),
        Some(file_entry::Kind::Tunf(t)) => match &t.netdev {
            Some(dev) if t.detached == Some(true) => format!("tun {dev} (queue detached)"),
            Some(dev) => format!("tun {dev}"),
            None => "tun (attached to no device)".to_owned(),
        },
        Some(file_entry::Kind::Usk(u)) => {
            let name = String::from_utf8_lossy(&u.name).replace('\0', "@");
            format!("socket:[{}] unix {name}", u.ino)
        }
        Some(k) => format!("{} {:#x}", crate::files::registry::name(k), f.id),
        None => {
            let name = FdTypes::try_from(f.r#type)
                .map(|t| t.as_str_name().to_owned())
                .unwrap_or_else(|_| format!("type {}", f.r#type));
            format!("{name} {:#x}", f.id)
        }
    }
}

/// Render `view` of the dump in `dir`.
pub fn explore(dir: &Path, view: View) -> Result<String, InspectError> {
    let dump = Dump {
        dir: dir.to_path_buf(),
    };
    let tree = dump.pstree()?;
    let mut out = String::new();
    match view {
        View::Ps => ps(&dump, &tree, &mut out)?,
        View::Fds => fds(&dump, &tree, &mut out)?,
        View::Mems => mems(&dump, &tree, &mut out)?,
        View::Rss => rss(&dump, &tree, &mut out)?,
    }
    Ok(out)
}

fn ps(dump: &Dump, tree: &[PstreeEntry], out: &mut String) -> Result<(), InspectError> {
    let _ = writeln!(out, "{:>7}{:>7}{:>7}   COMM", "PID", "PGID", "SID");
    let depth_of = |pid: u32| {
        let mut depth = 0;
        let mut cur = pid;
        while let Some(p) = tree.iter().find(|e| e.pid == cur) {
            if p.ppid == 0 || depth > tree.len() {
                break;
            }
            depth += 1;
            cur = p.ppid;
        }
        depth
    };
    for e in tree {
        let core = dump.core(e.pid)?;
        let comm = core.tc.as_ref().map(|tc| tc.comm.as_str()).unwrap_or("?");
        let state = match core.tc.as_ref().map(|tc| tc.task_state) {
            Some(3) => " <defunct>",
            Some(6) => " (stopped)",
            _ => "",
        };
        let threads = if e.threads.len() > 1 {
            format!(" [{} threads]", e.threads.len())
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "{:>7}{:>7}{:>7}   {}{comm}{state}{threads}",
            e.pid,
            e.pgid,
            e.sid,
            "    ".repeat(depth_of(e.pid))
        );
    }
    Ok(())
}

fn fds(dump: &Dump, tree: &[PstreeEntry], out: &mut String) -> Result<(), InspectError> {
    let files = dump.files()?;
    let inventory: InventoryEntry = dump.one("inventory.img", "INVENTORY")?;
    for e in tree {
        let _ = writeln!(out, "{}", e.pid);
        let ids = dump.ids(e.pid)?;
        let fdinfo_id = if inventory.fdinfo_per_id.unwrap_or(false) {
            ids.files_id
        } else {
            e.pid
        };
        let p = dump.path(&format!("fdinfo-{fdinfo_id}.img"));
        if p.exists() {
            for fd in read_all::<FdinfoEntry>(&p, "FDINFO")? {
                let _ = writeln!(out, "\t{:>5}: {}", fd.fd, describe(&files, fd.id));
            }
        }
        let p = dump.path(&format!("fs-{}.img", e.pid));
        if p.exists()
            && let Some(fs) = read_all::<FsEntry>(&p, "FS")?.into_iter().next()
        {
            let _ = writeln!(out, "\t{:>5}: {}", "cwd", describe(&files, fs.cwd_id));
            let _ = writeln!(out, "\t{:>5}: {}", "root", describe(&files, fs.root_id));
        }
        let p = dump.path(&format!("mm-{}.img", e.pid));
        if p.exists()
            && let Some(mm) = read_all::<MmEntry>(&p, "MM")?.into_iter().next()
        {
            let _ = writeln!(out, "\t{:>5}: {}", "exe", describe(&files, mm.exe_file_id));
        }
    }
    Ok(())
}

fn prot_string(prot: u32, flags: u32) -> String {
    let bit = |b: u32, c: char| if prot & b != 0 { c } else { '-' };
    let shared = if flags & 0x1 != 0 { 's' } else { 'p' };
    format!("{}{}{}{shared}", bit(1, 'r'), bit(2, 'w'), bit(4, 'x'))
}

fn vma_target(files: &HashMap<u32, FileEntry>, vma: &stasis_proto::images::VmaEntry) -> String {
    use crate::mm::status::{
        ANON_SHARED, FILE_PRIVATE, FILE_SHARED, HEAP, STACK, SYSVIPC, VDSO, VSYSCALL, VVAR,
    };
    let s = vma.status;
    if s & VDSO != 0 {
        "[vdso]".into()
    } else if s & VVAR != 0 {
        "[vvar]".into()
    } else if s & VSYSCALL != 0 {
        "[vsyscall]".into()
    } else if s & HEAP != 0 {
        "[heap]".into()
    } else if s & STACK != 0 {
        "[stack]".into()
    } else if s & (FILE_PRIVATE | FILE_SHARED) != 0 {
        let id = u32::try_from(vma.shmid).unwrap_or(u32::MAX);
        format!("{} +{:#x}", describe(files, id), vma.pgoff)
    } else if s & SYSVIPC != 0 {
        format!("[sysv shm {}]", vma.shmid)
    } else if s & ANON_SHARED != 0 {
        format!("[shared anon {:#x}]", vma.shmid)
    } else {
        String::new()
    }
}

fn mems(dump: &Dump, tree: &[PstreeEntry], out: &mut String) -> Result<(), InspectError> {
    let files = dump.files()?;
    for e in tree {
        let _ = writeln!(out, "{}", e.pid);
        let p = dump.path(&format!("mm-{}.img", e.pid));
        if !p.exists() {
            let _ = writeln!(out, "\t(no memory: zombie or kernel thread)");
            continue;
        }
        let Some(mm) = read_all::<MmEntry>(&p, "MM")?.into_iter().next() else {
            continue;
        };
        let _ = writeln!(out, "\t{:>33} {}", "exe", describe(&files, mm.exe_file_id));
        for v in &mm.vmas {
            let _ = writeln!(
                out,
                "\t{:>16x}-{:<16x} {} {}",
                v.start,
                v.end,
                prot_string(v.prot, v.flags),
                vma_target(&files, v)
            );
        }
    }
    Ok(())
}

/// Page size of the dumped arch, from the first thread's core image.
fn page_size_of(core: &CoreEntry) -> u64 {
    use stasis_arch::Arch;
    stasis_proto::images::core_entry::March::try_from(core.mtype)
        .ok()
        .and_then(Arch::from_march)
        .map_or(4096, |a| a.page_sizes()[0] as u64)
}

fn rss(dump: &Dump, tree: &[PstreeEntry], out: &mut String) -> Result<(), InspectError> {
    let files = dump.files()?;
    for e in tree {
        let _ = writeln!(out, "{}", e.pid);
        let mm_path = dump.path(&format!("mm-{}.img", e.pid));
        let pm_path = dump.path(&format!("pagemap-{}.img", e.pid));
        if !mm_path.exists() || !pm_path.exists() {
            let _ = writeln!(out, "\t(no memory)");
            continue;
        }
        let page = page_size_of(&dump.core(e.pid)?);
        let Some(mm) = read_all::<MmEntry>(&mm_path, "MM")?.into_iter().next() else {
            continue;
        };
        let mut rd = ImageReader::open_kind(&pm_path, kind("PAGEMAP"))?;
        let _head: Option<PagemapHead> = rd.read_entry()?;
        let mut runs = Vec::new();
        while let Some(pe) = rd.read_entry::<PagemapEntry>()? {
            let n = pe.nr_pages.unwrap_or(u64::from(pe.compat_nr_pages));
            runs.push((
                pe.vaddr,
                pe.vaddr.saturating_add(n.saturating_mul(page)),
                pe.flags.unwrap_or(4),
            ));
        }
        let _ = writeln!(out, "\t{:>33} {:>8} {:>8}", "mapping", "pages", "dumped");
        let mut total = 0u64;
        for v in &mm.vmas {
            let dumped: u64 = runs
                .iter()
                .map(|(s, t, _)| t.min(&v.end).saturating_sub(*s.max(&v.start)) / page)
                .sum();
            total += dumped;
            let _ = writeln!(
                out,
                "\t{:>16x}-{:<16x} {:>8} {:>8}  {}",
                v.start,
                v.end,
                v.end.saturating_sub(v.start) / page,
                dumped,
                vma_target(&files, v)
            );
        }
        let _ = writeln!(out, "\t{:>33} {:>8} {:>8}", "total", "", total);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_used_here_exist() {
        for k in [
            "PSTREE",
            "CORE",
            "IDS",
            "FILES",
            "REG_FILES",
            "FDINFO",
            "FS",
            "MM",
            "PAGEMAP",
            "INVENTORY",
        ] {
            assert!(kind::by_name(k).is_some(), "{k}");
        }
    }

    #[test]
    fn prot_strings() {
        assert_eq!(prot_string(0x3, 0x2), "rw-p");
        assert_eq!(prot_string(0x5, 0x1), "r-xs");
    }
}
