//! Readers of `/proc/PID/*`: the task tree (children, threads, stat, status),
//! memory maps, fd targets and fdinfo, limits and auxv. Parsing only; the
//! object modules decide what the values mean for an image.

use stasis_kernel as kernel;
use std::collections::BTreeMap;
use std::fs;

use nix::unistd::Pid;

use crate::error::{EngineError as Error, Result};

fn read(pid: Pid, what: &str) -> Result<String> {
    let path = format!("/proc/{pid}/{what}");
    read_proc(&path).map_err(|e| Error::Proc { pid, path, err: e })
}

/// Read `path` (a /proc file about `pid`) and parse it; a text `parse`
/// cannot take is named as the file of `pid` it came from.
pub fn parsed<T>(pid: Pid, path: &str, parse: impl FnOnce(&str) -> Option<T>) -> Result<T> {
    let text = read_proc(path).map_err(|err| Error::Proc {
        pid,
        path: path.to_owned(),
        err,
    })?;
    parse(&text).ok_or_else(|| Error::ProcFormat {
        pid,
        file: path.trim_start_matches("/proc/").to_owned(),
    })
}

/// Read a /proc file: open and read to the end, nothing else (a /proc file
/// has no size to ask for first, as `fs::read_to_string` does).
pub fn read_proc(path: &str) -> std::io::Result<String> {
    use std::io::Read;
    let f = fs::File::open(path)?;
    let mut buf = Vec::with_capacity(4096);
    // Through `Take`, which does not ask the file for a size hint.
    f.take(u64::MAX).read_to_end(&mut buf)?;
    String::from_utf8(buf).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// The fields of `/proc/PID/stat` the engine uses.
#[derive(Debug, Clone, Default)]
pub struct Stat {
    /// One-letter state (R, S, D, T, t, Z, ...).
    pub state: char,
    /// Parent PID.
    pub ppid: i32,
    /// Process group.
    pub pgid: i32,
    /// Session.
    pub sid: i32,
    /// Controlling terminal (kernel device encoding), 0 for none.
    pub tty_nr: u32,
    /// Foreground process group of the controlling terminal, -1 for none.
    pub tpgid: i32,
    /// PF_* flags.
    pub flags: u32,
    /// Start of the main stack.
    pub start_stack: u64,
    /// Code, data, brk, argument and environment bounds.
    pub start_code: u64,
    #[allow(missing_docs)]
    pub end_code: u64,
    #[allow(missing_docs)]
    pub start_data: u64,
    #[allow(missing_docs)]
    pub end_data: u64,
    #[allow(missing_docs)]
    pub start_brk: u64,
    #[allow(missing_docs)]
    pub arg_start: u64,
    #[allow(missing_docs)]
    pub arg_end: u64,
    #[allow(missing_docs)]
    pub env_start: u64,
    #[allow(missing_docs)]
    pub env_end: u64,
    /// Exit status of a zombie, as wait() reports it.
    pub exit_code: u32,
    /// Scheduling priority (nice).
    pub nice: i32,
    /// Process name.
    pub comm: String,
}

/// Parse `/proc/PID/stat` (or `/proc/PID/task/TID/stat`).
pub fn stat(pid: Pid, tid: Option<Pid>) -> Result<Stat> {
    let what = match tid {
        Some(t) => format!("task/{t}/stat"),
        None => "stat".to_owned(),
    };
    let text = read(pid, &what)?;
    parse_stat(&text).ok_or(Error::ProcFormat { pid, file: what })
}

/// The fields of a `stat` file's text; `None` if it is malformed. The name
/// may hold spaces and parentheses: it ends at the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    // Fields after the name, numbered as in proc(5) from 3.
    let f: Vec<&str> = text.get(close + 2..)?.split(' ').collect();
    let n = |i: usize| -> Option<u64> {
        f.get(i - 3)
            .and_then(|s| s.trim().parse::<i64>().ok())
            .map(|v| v.cast_unsigned())
    };
    let i = |i: usize| -> Option<i32> { f.get(i - 3).and_then(|s| s.trim().parse::<i32>().ok()) };
    Some(Stat {
        state: f.first().and_then(|s| s.chars().next())?,
        ppid: i(4)?,
        pgid: i(5)?,
        sid: i(6)?,
        tty_nr: u32::try_from(n(7)? & 0xffff_ffff).unwrap_or(0),
        tpgid: i(8)?,
        flags: u32::try_from(n(9)? & 0xffff_ffff).unwrap_or(0),
        nice: i(19)?,
        start_code: n(26)?,
        end_code: n(27)?,
        start_stack: n(28)?,
        start_data: n(45)?,
        end_data: n(46)?,
        start_brk: n(47)?,
        arg_start: n(48)?,
        arg_end: n(49)?,
        env_start: n(50)?,
        env_end: n(51)?,
        exit_code: u32::try_from(n(52)? & 0xffff_ffff).unwrap_or(0),
        comm,
    })
}

/// Bytes of memory resident in `pid` (`/proc/PID/statm`, from counters:
/// no page table walk).
pub fn resident(pid: Pid) -> Result<u64> {
    let text = read(pid, "statm")?;
    let pages: u64 = text
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Error::ProcFormat {
            pid,
            file: "statm".into(),
        })?;
    Ok(pages * kernel::mm::page_size())
}

/// `/proc/PID/status` as key -> value.
pub fn status(pid: Pid, tid: Option<Pid>) -> Result<BTreeMap<String, String>> {
    let what = match tid {
        Some(t) => format!("task/{t}/status"),
        None => "status".to_owned(),
    };
    Ok(read(pid, &what)?
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect())
}

/// The numeric entries of `/proc/PID/<what>` (tids, fd numbers), unsorted.
fn numbered(pid: Pid, what: &str) -> Result<Vec<i32>> {
    let path = format!("/proc/{pid}/{what}");
    Ok(fs::read_dir(&path)
        .map_err(|e| Error::Proc {
            pid,
            path: path.clone(),
            err: e,
        })?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect())
}

/// Threads of a process, the leader first.
pub fn threads(pid: Pid) -> Result<Vec<Pid>> {
    let mut tids = numbered(pid, "task")?;
    tids.sort_unstable_by_key(|&t| (t != pid.as_raw(), t));
    Ok(tids.into_iter().map(Pid::from_raw).collect())
}

/// Children of every thread of a process.
pub fn children(pid: Pid) -> Result<Vec<Pid>> {
    let mut out = Vec::new();
    for tid in threads(pid)? {
        // A thread that exited since the listing has no children file.
        if let Ok(s) = fs::read_to_string(format!("/proc/{pid}/task/{tid}/children")) {
            out.extend(
                s.split_whitespace()
                    .filter_map(|c| c.parse().ok())
                    .map(Pid::from_raw),
            );
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Map {
    #[allow(missing_docs)]
    pub start: u64,
    #[allow(missing_docs)]
    pub end: u64,
    /// PROT_* bits.
    pub prot: u32,
    /// MAP_SHARED (else private).
    pub shared: bool,
    /// File offset in bytes.
    pub pgoff: u64,
    /// Device of the mapped file (major, minor) and its inode.
    pub dev: (u32, u32),
    #[allow(missing_docs)]
    pub ino: u64,
    /// Path or pseudo-name (`[heap]`, `[vdso]`), empty for anonymous memory.
    pub name: String,
}

impl Map {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
}

/// Parse `/proc/PID/maps`.
pub fn maps(pid: Pid) -> Result<Vec<Map>> {
    let text = read(pid, "maps")?;
    text.lines().map(|l| map_line(pid, "maps", l)).collect()
}

/// The `VmFlags` of each map of a task, by start address.
pub type VmFlags = BTreeMap<u64, Vec<String>>;

/// Parse `/proc/PID/smaps` once: the maps, and their `VmFlags`.
pub fn smaps(pid: Pid) -> Result<(Vec<Map>, VmFlags)> {
    parse_smaps(pid, &read(pid, "smaps")?)
}

/// The maps and `VmFlags` of an `smaps` file's text (`pid` for errors).
fn parse_smaps(pid: Pid, text: &str) -> Result<(Vec<Map>, VmFlags)> {
    let mut maps = Vec::new();
    let mut flags = BTreeMap::new();
    for line in text.lines() {
        // A map's own line starts with its address (lowercase hex), each
        // field's with its capitalised name.
        if let Some(rest) = line.strip_prefix("VmFlags:") {
            if let Some(m) = maps.last().map(|m: &Map| m.start) {
                flags.insert(m, rest.split_whitespace().map(str::to_owned).collect());
            }
        } else if line.starts_with(|c: char| c.is_ascii_digit() || c.is_ascii_lowercase()) {
            maps.push(map_line(pid, "smaps", line)?);
        }
    }
    Ok((maps, flags))
}

/// One line of `maps` (or a map's first line in `smaps`).
fn map_line(pid: Pid, file: &str, line: &str) -> Result<Map> {
    let bad = || Error::ProcFormat {
        pid,
        file: file.into(),
    };
    let mut it = line.splitn(6, ' ');
    let (Some(range), Some(perms), Some(off), Some(dev), Some(ino)) =
        (it.next(), it.next(), it.next(), it.next(), it.next())
    else {
        return Err(bad());
    };
    let name = it.next().unwrap_or("").trim_start().to_owned();
    let (s, e) = range.split_once('-').ok_or_else(bad)?;
    let hex = |v: &str| u64::from_str_radix(v, 16).map_err(|_| bad());
    let (maj, min) = dev.split_once(':').ok_or_else(bad)?;
    let p = perms.as_bytes();
    let mut prot = 0;
    for (i, bit) in [
        (0, libc::PROT_READ),
        (1, libc::PROT_WRITE),
        (2, libc::PROT_EXEC),
    ] {
        if p.get(i).is_some_and(|&c| c != b'-') {
            prot |= bit.cast_unsigned();
        }
    }
    Ok(Map {
        start: hex(s)?,
        end: hex(e)?,
        prot,
        shared: p.get(3) == Some(&b's'),
        pgoff: hex(off)?,
        dev: (
            u32::from_str_radix(maj, 16).map_err(|_| bad())?,
            u32::from_str_radix(min, 16).map_err(|_| bad())?,
        ),
        ino: ino.parse().map_err(|_| bad())?,
        name,
    })
}

/// One open fd of a task, as seen from /proc.
#[derive(Debug, Clone)]
pub struct Fd {
    #[allow(missing_docs)]
    pub fd: i32,
    /// Target of `/proc/PID/fd/N`.
    pub target: String,
    /// `pos:` of fdinfo.
    pub pos: u64,
    /// `flags:` of fdinfo (octal in the file), O_CLOEXEC included.
    pub flags: u32,
    /// `mnt_id:` of fdinfo.
    pub mnt_id: i32,
    /// The other fdinfo lines.
    pub extra: Vec<String>,
    /// Its mount was detached from every namespace (/proc showed its path
    /// from the mount's root): the point of the tree's mount it was found
    /// through (see `ns::mnt::Foreign`).
    pub detached_at: Option<String>,
}

impl Fd {
    /// The value of fdinfo line `key: value`, trimmed.
    pub fn field(&self, key: &str) -> Option<&str> {
        self.extra.iter().find_map(|l| {
            l.strip_prefix(key)
                .and_then(|v| v.strip_prefix(':'))
                .map(str::trim)
        })
    }
}

/// `key:value` pairs of an fdinfo line such as epoll's
/// `tfd:        5 events:       19 data: 1111 pos:0 ino:61 sdev:f`
/// (a key's value may follow after spaces).
pub fn pairs(line: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut it = line.split_whitespace().peekable();
    while let Some(tok) = it.next() {
        let Some((k, v)) = tok.split_once(':') else {
            continue;
        };
        if v.is_empty() {
            if let Some(next) = it.next_if(|n| !n.contains(':')) {
                out.push((k, next));
            }
        } else {
            out.push((k, v));
        }
    }
    out
}

/// Open fd `fd` of a process.
pub fn fd(pid: Pid, fd: i32) -> Result<Fd> {
    fds_of(pid, vec![fd])?
        .pop()
        .ok_or_else(|| Error::ProcFormat {
            pid,
            file: format!("fd/{fd}"),
        })
}

/// The open fds of a process, in fd order.
pub fn fds(pid: Pid) -> Result<Vec<Fd>> {
    let mut nums = numbered(pid, "fd")?;
    nums.sort_unstable();
    fds_of(pid, nums)
}

/// Directory `name` of `/proc/PID`, looked up once for the `*at` calls on
/// its entries.
pub fn dir(pid: Pid, name: &str) -> Result<std::os::fd::OwnedFd> {
    use nix::fcntl::{OFlag, open};
    let path = format!("/proc/{pid}/{name}");
    open(
        path.as_str(),
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| Error::Proc {
        pid,
        path,
        err: e.into(),
    })
}

fn fds_of(pid: Pid, nums: Vec<i32>) -> Result<Vec<Fd>> {
    use nix::fcntl::{OFlag, openat, readlinkat};
    use nix::sys::stat::Mode;
    use std::io::Read;
    // Each directory looked up once; each fd's link and fdinfo inside it.
    let (links, infos) = (dir(pid, "fd")?, dir(pid, "fdinfo")?);
    let mut out = Vec::with_capacity(nums.len());
    for fd in nums {
        let name = fd.to_string();
        let target = match readlinkat(&links, name.as_str()) {
            Ok(t) => t.to_string_lossy().into_owned(),
            // Closed since the listing (only a running task does that).
            Err(nix::errno::Errno::ENOENT) => continue,
            Err(e) => {
                return Err(Error::Proc {
                    pid,
                    path: format!("/proc/{pid}/fd/{fd}"),
                    err: e.into(),
                });
            }
        };
        let mut info = String::new();
        let read = openat(
            &infos,
            name.as_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(std::io::Error::from)
        // Through `Take`, which asks the file for no size hint.
        .and_then(|f| fs::File::from(f).take(u64::MAX).read_to_string(&mut info));
        if read.is_err() {
            continue;
        }
        let f = parse_fdinfo(fd, target, &info);
        out.push(f);
    }
    Ok(out)
}

/// Fd `fd` (its link reads `target`) from its fdinfo `text`: offset,
/// flags (octal), mount id, and every other line as it is.
fn parse_fdinfo(fd: i32, target: String, text: &str) -> Fd {
    let mut f = Fd {
        fd,
        target,
        pos: 0,
        flags: 0,
        mnt_id: -1,
        extra: Vec::new(),
        detached_at: None,
    };
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k {
            "pos" => f.pos = v.parse().unwrap_or(0),
            "flags" => f.flags = u32::from_str_radix(v, 8).unwrap_or(0),
            "mnt_id" => f.mnt_id = v.parse().unwrap_or(-1),
            _ => f.extra.push(line.to_owned()),
        }
    }
    f
}

/// `/proc/PID/limits` as (soft, hard) per RLIMIT_* number; `u64::MAX` is
/// unlimited. Readable without CAP_SYS_RESOURCE, unlike prlimit().
pub fn limits(pid: Pid) -> Result<Vec<(u64, u64)>> {
    parse_limits(&read(pid, "limits")?).ok_or(Error::ProcFormat {
        pid,
        file: "limits".into(),
    })
}

/// The (soft, hard) pairs of a limits file, which lists them in RLIMIT_*
/// order, one per line after a header.
fn parse_limits(text: &str) -> Option<Vec<(u64, u64)>> {
    let parse = |v: &str| {
        if v == "unlimited" {
            Some(u64::MAX)
        } else {
            v.parse().ok()
        }
    };
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        // Columns: name (may contain spaces, padded to 26), soft, hard, units.
        let mut it = line.get(26..)?.split_whitespace();
        let (soft, hard) = (it.next()?, it.next()?);
        out.push((parse(soft)?, parse(hard)?));
    }
    Some(out)
}

/// `/proc/PID/auxv` as native-endian words.
pub fn auxv(pid: Pid) -> Result<Vec<u64>> {
    let path = format!("/proc/{pid}/auxv");
    let bytes = fs::read(&path).map_err(|e| Error::Proc { pid, path, err: e })?;
    Ok(bytes
        .chunks_exact(8)
        .map(|c| u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::{pairs, parse_fdinfo, parse_limits};

    #[test]
    fn fdinfo_of_a_locked_file_keeps_its_lock_lines() {
        let text = "pos:\t4096\nflags:\t0100002\nmnt_id:\t31\nino:\t1234\n\
                    lock:\t1: FLOCK  ADVISORY  WRITE 4242 00:1f:1234 0 EOF\n";
        let f = parse_fdinfo(7, "/tmp/f".into(), text);
        assert_eq!((f.fd, f.pos, f.mnt_id), (7, 4096, 31));
        assert_eq!(f.flags, 0o100_002, "flags are octal");
        assert_eq!(
            f.extra,
            [
                "ino:\t1234",
                "lock:\t1: FLOCK  ADVISORY  WRITE 4242 00:1f:1234 0 EOF"
            ]
        );
    }

    #[test]
    fn fdinfo_without_a_mount_id_or_with_garbage_has_defaults() {
        let f = parse_fdinfo(
            3,
            "anon_inode:[eventfd]".into(),
            "pos: x\neventfd-count: 2a\n",
        );
        assert_eq!((f.pos, f.flags, f.mnt_id), (0, 0, -1));
        assert_eq!(f.extra, ["eventfd-count: 2a"]);
    }

    #[test]
    fn epoll_fdinfo_pairs_with_spaces_after_keys() {
        let line = "tfd:        5 events:       19 data:         1111  pos:0 ino:61 sdev:f";
        assert_eq!(
            pairs(line),
            [
                ("tfd", "5"),
                ("events", "19"),
                ("data", "1111"),
                ("pos", "0"),
                ("ino", "61"),
                ("sdev", "f")
            ]
        );
    }

    #[test]
    fn limits_with_unlimited_and_names_with_spaces() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max cpu time              unlimited            unlimited            seconds   \n\
                    Max open files            1024                 524288               files     \n";
        assert_eq!(
            parse_limits(text),
            Some(vec![(u64::MAX, u64::MAX), (1024, 524_288)])
        );
        assert_eq!(parse_limits("header\nshort line\n"), None);
        assert_eq!(
            parse_limits(
                "h\nMax open files            lots                 1                    files\n"
            ),
            None
        );
    }

    use super::*;

    /// A stat line whose name holds spaces and parentheses, as a program
    /// can choose (`prctl(PR_SET_NAME)`).
    const STAT: &str = "4242 (a) (b c)) S 1 4242 4242 34816 4300 4194560 120 0 0 0 3 1 0 0 \
        20 0 2 0 98765 12345678 900 18446744073709551615 94000000000000 94000000100000 \
        140000000000000 0 0 0 0 4096 0 1 0 0 17 1 0 0 0 0 0 94000000200000 94000000300000 \
        94000001000000 140000000001000 140000000001100 140000000001100 140000000002000 9";

    #[test]
    fn stat_fields_after_a_name_with_parentheses() {
        let st = parse_stat(STAT).expect("parses");
        assert_eq!(st.comm, "a) (b c)");
        assert_eq!((st.state, st.ppid, st.pgid, st.sid), ('S', 1, 4242, 4242));
        assert_eq!((st.tty_nr, st.tpgid, st.nice), (34816, 4300, 0));
        assert_eq!(
            (st.start_code, st.end_code),
            (94_000_000_000_000, 94_000_000_100_000)
        );
        assert_eq!(
            (st.start_brk, st.arg_start),
            (94_000_001_000_000, 140_000_000_001_000)
        );
        assert_eq!(st.exit_code, 9);
        assert!(parse_stat("4242 (cut short) S 1").is_none());
        assert!(parse_stat("no name at all").is_none());
    }

    #[test]
    fn smaps_maps_and_their_vmflags() {
        let text = "\
55d0c0000000-55d0c0021000 r-xp 00001000 fd:01 1234   /usr/bin/thing (deleted)
Size:                132 kB
VmFlags: rd ex mr mw me dw
7f0000000000-7f0000004000 rw-s 00000000 00:01 99                         /dev/zero (deleted)
Rss:                   8 kB
VmFlags: rd wr sh mr mw me ms dc
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0                          [stack]
VmFlags: rd wr mr mw me gd ac
";
        let (maps, flags) = parse_smaps(Pid::from_raw(1), text).expect("parses");
        assert_eq!(maps.len(), 3);
        let exe = &maps[0];
        assert_eq!(
            (exe.start, exe.end, exe.pgoff),
            (0x55d0_c000_0000, 0x55d0_c002_1000, 0x1000)
        );
        assert_eq!(
            exe.prot,
            (libc::PROT_READ | libc::PROT_EXEC).cast_unsigned()
        );
        assert_eq!((exe.dev, exe.ino, exe.shared), ((0xfd, 1), 1234, false));
        assert_eq!(exe.name, "/usr/bin/thing (deleted)");
        assert!(maps[1].shared && maps[1].name == "/dev/zero (deleted)");
        assert_eq!(maps[2].name, "[stack]");
        assert_eq!(
            flags[&0x7f00_0000_0000],
            ["rd", "wr", "sh", "mr", "mw", "me", "ms", "dc"]
        );
        assert!(flags[&0x7ffc_0000_0000].iter().any(|f| f == "gd"));
        let bad = parse_smaps(Pid::from_raw(1), "zzzz-1 r-xp 0 fd:01 1 x\n").unwrap_err();
        assert!(bad.to_string().contains("smaps"), "{bad}");
    }

    #[test]
    fn own_stat_maps_fds_and_limits_parse() {
        let me = nix::unistd::getpid();
        let st = stat(me, None).expect("stat");
        assert!(matches!(st.state, 'R' | 'S'), "state {}", st.state);
        assert!(st.start_code < st.end_code);
        let maps = maps(me).expect("maps");
        assert!(maps.iter().any(|m| m.name == "[stack]"));
        assert!(maps.iter().any(|m| m.name == "[vdso]"));
        let (smaps, flags) = smaps(me).expect("smaps");
        // The same maps from smaps (the stack and vdso do not move while
        // other test threads map and unmap).
        for name in ["[stack]", "[vdso]"] {
            let of = |v: &[Map]| {
                v.iter()
                    .find(|m| m.name == name)
                    .map(|m| (m.start, m.end, m.prot, m.shared, m.pgoff))
            };
            assert_eq!(of(&smaps), of(&maps), "{name}");
        }
        let stack = maps.iter().find(|m| m.name == "[stack]").expect("stack");
        assert!(flags[&stack.start].iter().any(|f| f == "gd"));
        let fds = fds(me).expect("fds");
        assert!(fds.iter().any(|f| f.fd == 0));
        let lim = limits(me).expect("limits");
        assert_eq!(lim.len(), 16);
        assert!(!threads(me).expect("threads").is_empty());
        assert!(auxv(me).expect("auxv").len() > 10);
    }
}
