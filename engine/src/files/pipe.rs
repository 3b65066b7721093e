//! Pipes and FIFOs: a `pipe_entry` per end in `files.img` (a FIFO is a
//! `fifo_entry` plus the regular-file entry of its path), and the bytes
//! queued in each, read without consuming them (tee), in `pipes-data.img`
//! and `fifo-data.img`. The restore makes each pipe once and refills it
//! before any task has an end; a FIFO is refilled through a read-write
//! "keeper" that stays open until every task has its own ends.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::unistd::Pid;
use stasis_proto::images::file_entry::Kind;
use stasis_proto::images::{FdTypes, FifoEntry, FileEntry, FownEntry, PipeDataEntry, PipeEntry};

use super::reg::Reg;
use super::{FdCtx, FileKind, OpenCtx, Table, open_err};
use crate::error::{EngineError as Error, Result};
use crate::images::{Dir, img};

/// Pipes (both ends).
#[derive(Debug)]
pub struct Pipe;

/// FIFOs (named pipes): the path as a regular-file entry, the queued bytes
/// as for pipes.
#[derive(Debug)]
pub struct Fifo;

/// The queued bytes of the pipes and FIFOs of a dump or a restore.
#[derive(Debug, Default)]
pub(crate) struct Queued {
    pipes_seen: HashSet<u64>,
    pipes: Vec<(PipeDataEntry, Vec<u8>)>,
    fifos_seen: HashSet<u64>,
    fifos: Vec<(PipeDataEntry, Vec<u8>)>,
}

/// What the restore made so far: pipes (both ends) and FIFO keepers, by
/// pipe id.
#[derive(Debug, Default)]
pub(crate) struct Made {
    pipes: HashMap<u32, (OwnedFd, OwnedFd)>,
    keepers: HashMap<u32, OwnedFd>,
}

impl Made {
    /// The FIFO keepers: they hold the queued bytes until every task has
    /// its own ends.
    pub(crate) fn take_keepers(&mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.keepers).into_values().collect()
    }
}

/// How `--inherit-fd` names pipe `id` (its inode), as CRIU does.
pub(crate) fn key(id: u32) -> String {
    format!("pipe:[{id}]")
}

impl FileKind for Pipe {
    type Entry = PipeEntry;
    const NAME: &'static str = "pipe";

    fn set_id(e: &mut PipeEntry, id: u32) {
        e.id = id;
    }

    fn dump(cx: &FdCtx<'_>, table: &mut Table) -> Result<Kind> {
        let ino = cx.meta.ino();
        let pipe_id = u32::try_from(ino).unwrap_or(u32::MAX);
        if table.queued.pipes_seen.insert(ino) {
            let data = tee(cx)?;
            table.queued.pipes.push(data_entry(pipe_id, data));
        }
        Ok(Kind::Pipe(PipeEntry {
            id: 0,
            pipe_id,
            flags: cx.fd.flags & !(libc::O_CLOEXEC.cast_unsigned()),
            fown: FownEntry::default(),
        }))
    }

    fn open(p: &PipeEntry, cx: &mut OpenCtx<'_>) -> Result<OwnedFd> {
        let (pid, fd) = (cx.pid, cx.fd);
        // The caller's own pipe in its place (a runtime's stdio).
        if let Some(given) = cx.table.inherited.get(&key(p.pipe_id)) {
            return given
                .try_clone()
                .map_err(|e| open_err(pid, fd, "inherited pipe", e));
        }
        if let std::collections::hash_map::Entry::Vacant(slot) = cx.made.pipes.entry(p.pipe_id) {
            slot.insert(cx.table.queued.new_pipe(pid, p.pipe_id)?);
        }
        let (r, w) = cx
            .made
            .pipes
            .get(&p.pipe_id)
            .ok_or_else(|| img::PIPES_DATA.bad(0, format!("pipe {} vanished", p.pipe_id)))?;
        let end = if p.flags & libc::O_ACCMODE.cast_unsigned() == libc::O_WRONLY.cast_unsigned() {
            w
        } else {
            r
        };
        let dup = end.try_clone().map_err(|e| open_err(pid, fd, "pipe", e))?;
        // O_DIRECT is packet mode (each write one packet).
        let keep = (libc::O_NONBLOCK | libc::O_DIRECT).cast_unsigned();
        let fl = OFlag::from_bits_truncate((p.flags & keep).cast_signed());
        fcntl(dup.as_fd(), FcntlArg::F_SETFL(fl))
            .map_err(|e| open_err(pid, fd, "pipe", e.into()))?;
        Ok(dup)
    }
}

impl FileKind for Fifo {
    type Entry = FifoEntry;
    const NAME: &'static str = "FIFO";

    fn set_id(e: &mut FifoEntry, id: u32) {
        e.id = id;
    }

    fn dump(cx: &FdCtx<'_>, table: &mut Table) -> Result<Kind> {
        let ino = cx.meta.ino();
        let pipe_id = u32::try_from(ino).unwrap_or(u32::MAX);
        if table.queued.fifos_seen.insert(ino) {
            let data = tee(cx)?;
            table.queued.fifos.push(data_entry(pipe_id, data));
        }
        let regf_id = table.next_id();
        let Kind::Reg(mut reg) = Reg::dump(cx, table)? else {
            return Err(Error::Unexpected {
                tid: cx.pid,
                op: "describing a FIFO",
                what: "not a path".into(),
            });
        };
        reg.id = regf_id;
        // A FIFO deleted while open comes back at its old name, made again
        // and removed once opened (a ghost without contents).
        if let Some(orig) = cx.fd.target.strip_suffix(" (deleted)") {
            reg.name = orig.to_owned();
            table.ghosts.save_fd(cx, 0, regf_id)?;
        }
        table.entries.push(FileEntry {
            r#type: FdTypes::Reg as i32,
            id: regf_id,
            kind: Some(Kind::Reg(reg)),
        });
        Ok(Kind::Fifo(FifoEntry {
            id: 0,
            pipe_id,
            regf_id: Some(regf_id),
        }))
    }

    fn open(f: &FifoEntry, cx: &mut OpenCtx<'_>) -> Result<OwnedFd> {
        let (pid, fd) = (cx.pid, cx.fd);
        let reg = match f
            .regf_id
            .and_then(|r| cx.table.get(r))
            .and_then(|e| e.kind.as_ref())
        {
            Some(Kind::Reg(r)) => r,
            _ => {
                return Err(img::FILES.bad(
                    0,
                    format!("task {pid} fd {fd}: FIFO {} has no path entry", f.id),
                ));
            }
        };
        // A deleted FIFO is reopened through the engine's fd on its ghost.
        let name = f
            .regf_id
            .and_then(|r| cx.table.path_of(r))
            .unwrap_or(&reg.name)
            .to_owned();
        if let std::collections::hash_map::Entry::Vacant(slot) = cx.made.keepers.entry(f.pipe_id) {
            let keeper = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&name)
                .map_err(|e| open_err(pid, fd, &name, e))?;
            let queued = &cx.table.queued.fifos;
            if let Some((e, data)) = queued.iter().find(|(e, _)| e.pipe_id == f.pipe_id) {
                if let Some(size) = e.size.and_then(|s| i32::try_from(s).ok()) {
                    let _ = fcntl(keeper.as_fd(), FcntlArg::F_SETPIPE_SZ(size));
                }
                (&keeper)
                    .write_all(data)
                    .map_err(|e| open_err(pid, fd, &name, e))?;
            }
            slot.insert(OwnedFd::from(keeper));
        }
        let flags = reg.flags.cast_signed() & !(libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC);
        let acc = flags & libc::O_ACCMODE;
        let file = OpenOptions::new()
            .read(acc != libc::O_WRONLY)
            .write(acc != libc::O_RDONLY)
            .custom_flags((flags & !libc::O_ACCMODE) | libc::O_NONBLOCK)
            .open(&name)
            .map_err(|e| open_err(pid, fd, &name, e))?;
        let fl = OFlag::from_bits_truncate(flags & !libc::O_ACCMODE);
        fcntl(file.as_fd(), FcntlArg::F_SETFL(fl))
            .map_err(|e| open_err(pid, fd, &name, e.into()))?;
        Ok(OwnedFd::from(file))
    }
}

impl Queued {
    /// Write `pipes-data.img` (always, as CRIU does) and `fifo-data.img`.
    pub(crate) fn write(&self, dir: &Dir) -> Result<()> {
        let mut w = dir.create(img::PIPES_DATA, 0)?;
        for (e, data) in &self.pipes {
            w.write(e)?;
            w.write_payload(data)?;
        }
        w.finish()?;
        if !self.fifos_seen.is_empty() {
            let mut w = dir.create(img::FIFO_DATA, 0)?;
            for (e, data) in &self.fifos {
                w.write(e)?;
                w.write_payload(data)?;
            }
            w.finish()?;
        }
        Ok(())
    }

    /// Load `pipes-data.img` and `fifo-data.img`, where they are.
    pub(crate) fn load(dir: &Dir) -> Result<Queued> {
        let read = |kind| -> Result<Vec<(PipeDataEntry, Vec<u8>)>> {
            let mut out = Vec::new();
            if dir.exists(kind, 0) {
                let mut r = dir.open_image(kind, 0)?;
                while let Some(e) = r.read_entry::<PipeDataEntry>()? {
                    let data = r.read_payload(u64::from(e.bytes))?;
                    out.push((e, data));
                }
            }
            Ok(out)
        };
        Ok(Queued {
            pipes: read(img::PIPES_DATA)?,
            fifos: read(img::FIFO_DATA)?,
            ..Queued::default()
        })
    }

    /// A new pipe for `pipe_id`, its queued bytes in it.
    fn new_pipe(&self, pid: Pid, pipe_id: u32) -> Result<(OwnedFd, OwnedFd)> {
        let (r, w) = nix::unistd::pipe().map_err(Error::restore(pid, format!("pipe {pipe_id}")))?;
        if let Some((e, data)) = self.pipes.iter().find(|(e, _)| e.pipe_id == pipe_id) {
            if let Some(size) = e.size
                && let Ok(size) = i32::try_from(size)
            {
                let _ = fcntl(w.as_fd(), FcntlArg::F_SETPIPE_SZ(size));
            }
            let mut f = File::from(w.try_clone().map_err(|e| open_err(pid, -1, "pipe", e))?);
            f.write_all(data)
                .map_err(|e| open_err(pid, -1, "pipe data", e))?;
        }
        Ok((r, w))
    }
}

fn data_entry(pipe_id: u32, (data, size): (Vec<u8>, i32)) -> (PipeDataEntry, Vec<u8>) {
    (
        PipeDataEntry {
            pipe_id,
            bytes: u32::try_from(data.len()).unwrap_or(u32::MAX),
            size: u32::try_from(size).ok(),
        },
        data,
    )
}

/// The bytes queued in the pipe or FIFO behind `cx`, and its size, copied
/// without consuming them (tee into a pipe of our own).
fn tee(cx: &FdCtx<'_>) -> Result<(Vec<u8>, i32)> {
    let link = format!("/proc/{}/fd/{}", cx.pid, cx.fd.fd);
    let err = |e: std::io::Error| Error::Proc {
        pid: cx.pid,
        path: link.clone(),
        err: e,
    };
    // Opening the pipe through /proc gives a read end whichever end the
    // task holds.
    let src = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&link)
        .map_err(err)?;
    let size = fcntl(src.as_fd(), FcntlArg::F_GETPIPE_SZ).unwrap_or(65536);
    let (r, w) = nix::unistd::pipe().map_err(|e| err(e.into()))?;
    let _ = fcntl(w.as_fd(), FcntlArg::F_SETPIPE_SZ(size));
    let mut data = Vec::new();
    match nix::fcntl::tee(
        src.as_fd(),
        w.as_fd(),
        usize::try_from(size).unwrap_or(65536),
        nix::fcntl::SpliceFFlags::SPLICE_F_NONBLOCK,
    ) {
        Ok(n) if n > 0 => {
            // Exactly the n bytes tee put there: no size probe, no read for
            // the end.
            drop(w);
            data.resize(n, 0);
            File::from(r).read_exact(&mut data).map_err(err)?;
        }
        Ok(_) | Err(nix::errno::Errno::EAGAIN) => {}
        Err(e) => return Err(err(e.into())),
    }
    Ok((data, size))
}
