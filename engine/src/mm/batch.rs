//! Batched remote mapping: the mmap calls that rebuild a task's VMAs, with
//! the openat and close of the files they map, run in as few stops of the
//! task as possible. Each stop of a ptraced task costs far more than a
//! call, and a task has thousands of VMAs; the paths go in the
//! trampoline's data area, so a batch is flushed when they fill it.

use nix::unistd::Pid;
use stasis_arch::native::nr;

use crate::error::{EngineError as Error, Result};
use crate::task::remote::{self, Call, Remote};
use crate::task::trampoline::{PATHS_ROOM, Trampoline, layout};

/// Consecutive VMAs mapped in two stops: every distinct file opened once,
/// then every mmap (and the moves some need) and the closes.
#[derive(Default)]
pub(super) struct MapBatch {
    /// The calls, with the file whose fd an mmap takes, and the VMA each is
    /// for (start, length).
    maps: Vec<(Option<usize>, Call, (u64, u64))>,
    /// Files to open: path and open flags.
    files: Vec<(String, i32)>,
    /// Bytes of paths so far, terminators included.
    bytes: usize,
}

/// The error a raw syscall result `r` stands for, if any.
fn errno(r: i64) -> Option<nix::errno::Errno> {
    (-4095..0)
        .contains(&r)
        .then(|| nix::errno::Errno::from_raw(i32::try_from(-r).unwrap_or(libc::EINVAL)))
}

impl MapBatch {
    /// Map with `args`, from `file` if any (its fd goes in `args[4]`).
    pub(super) fn add(
        &mut self,
        r: &Remote,
        t: &Trampoline,
        file: Option<(String, i32)>,
        args: [u64; 6],
    ) -> Result<()> {
        let idx = match file {
            None => None,
            Some(f) => Some(match self.files.iter().position(|g| *g == f) {
                Some(i) => i,
                None => {
                    let need = f.0.len() + 1;
                    if self.bytes + need > PATHS_ROOM {
                        self.flush(r, t)?;
                    }
                    self.bytes += need;
                    self.files.push(f);
                    self.files.len() - 1
                }
            }),
        };
        self.maps
            .push((idx, ("mmap", nr::MMAP, args), (args[0], args[1])));
        Ok(())
    }

    /// A call on memory mapped earlier in the batch, for the VMA `vma`.
    pub(super) fn then(&mut self, call: Call, vma: (u64, u64)) {
        self.maps.push((None, call, vma));
    }

    pub(super) fn flush(&mut self, r: &Remote, t: &Trampoline) -> Result<()> {
        self.flush_with(r, t, &[]).map(drop)
    }

    /// Flush, with `tail` run after the maps in the same batch (when they
    /// all succeeded); the raw results of `tail`.
    pub(super) fn flush_with(
        &mut self,
        r: &Remote,
        t: &Trampoline,
        tail: &[Call],
    ) -> Result<Vec<i64>> {
        if self.maps.is_empty() {
            return r.call_many(tail);
        }
        let pid = r.tid;
        let (blob, opens) = self.open_calls(t);
        if !blob.is_empty() {
            remote::write_mem(pid, t.data + layout::PATHS, &blob)?;
        }
        let fds = r.call_many(&opens)?;
        let (calls, bad_open) = self.calls(&fds, tail);
        let res = r.call_many(&calls)?;
        if let Some(i) = bad_open {
            return Err(self.open_error(pid, i, &fds));
        }
        self.check_maps(pid, &res)?;
        let tail_res = res
            .get(res.len().saturating_sub(tail.len())..)
            .unwrap_or(&[]);
        let tail_res = tail_res.to_vec();
        *self = MapBatch::default();
        Ok(tail_res)
    }

    /// The paths of the batch's files as written at [`layout::PATHS`], and
    /// the calls opening them.
    fn open_calls(&self, t: &Trampoline) -> (Vec<u8>, Vec<Call>) {
        let mut blob = Vec::with_capacity(self.bytes);
        let mut opens = Vec::with_capacity(self.files.len());
        for (path, flags) in &self.files {
            let at = t.data + layout::PATHS + blob.len() as u64;
            blob.extend_from_slice(path.as_bytes());
            blob.push(0);
            let flags = (flags | libc::O_CLOEXEC).cast_unsigned();
            let dirfd = libc::AT_FDCWD.cast_unsigned().into();
            opens.push(("openat", nr::OPENAT, [dirfd, at, flags.into(), 0, 0, 0]));
        }
        (blob, opens)
    }

    /// The second stop's calls, given the results `fds` of the opens: the
    /// maps with their fds, the closes and `tail`; or only the closes if
    /// an open failed (its index returned with them).
    fn calls(&self, fds: &[i64], tail: &[Call]) -> (Vec<Call>, Option<usize>) {
        let opened = fds.iter().filter(|&&fd| errno(fd).is_none());
        let closes = opened.map(|&fd| ("close", nr::CLOSE, [fd.cast_unsigned(), 0, 0, 0, 0, 0]));
        let bad_open = fds.iter().position(|&fd| errno(fd).is_some());
        let calls: Vec<_> = if bad_open.is_some() {
            closes.collect()
        } else {
            self.maps
                .iter()
                .map(|&(idx, (name, nr, mut args), _)| {
                    if let Some(fd) = idx.and_then(|i| fds.get(i)) {
                        args[4] = fd.cast_unsigned();
                    }
                    (name, nr, args)
                })
                .chain(closes)
                .chain(tail.iter().copied())
                .collect()
        };
        (calls, bad_open)
    }

    /// The error for file `i` of the batch, which failed to open.
    fn open_error(&self, pid: Pid, i: usize, fds: &[i64]) -> Error {
        let path = self.files.get(i).map_or("", |f| f.0.as_str());
        let used = self
            .maps
            .iter()
            .find(|m| m.0 == Some(i))
            .map_or(0, |m| m.2.0);
        Error::Restore {
            pid,
            what: format!("opening {path} to map it at {used:#x}"),
            errno: fds
                .get(i)
                .copied()
                .and_then(errno)
                .unwrap_or(nix::errno::Errno::EIO),
        }
    }

    /// Check the results `res` of the maps: the first that failed is the
    /// error.
    fn check_maps(&self, pid: Pid, res: &[i64]) -> Result<()> {
        for (&(idx, (name, _, _), (start, len)), &got) in self.maps.iter().zip(res) {
            if let Some(e) = errno(got) {
                let of = idx
                    .and_then(|i| self.files.get(i))
                    .map(|f| format!(" of {}", f.0))
                    .unwrap_or_default();
                return Err(Error::Restore {
                    pid,
                    what: format!("the mapping {start:#x}-{:#x}{of} ({name})", start + len),
                    errno: e,
                });
            }
        }
        Ok(())
    }
}
