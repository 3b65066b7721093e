//! Memory: anonymous and file mappings, sharing and copy-on-write across
//! fork, protections, holes, guard regions, madvise state, many and big
//! VMAs, memfd. Contents are position-dependent patterns, so a page restored
//! at the wrong place or a lost write shows up as a byte difference.

use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

use libc::{MAP_PRIVATE, MAP_SHARED, PROT_NONE, PROT_READ, PROT_WRITE};

use super::util::{maps, maps_at, smaps_at, vmflags_at};
use crate::meta::{Category::Memory, Test};
use crate::testlib::sys::{Map, page_size};
use crate::testlib::{Ctx, Fail, OrFail, Res, Tick, forward, pattern_vec};
use crate::{ensure, ensure_eq};

const RW: i32 = PROT_READ | PROT_WRITE;

pub(crate) const TESTS: &[Test] = &[
    Test::new(
        "maps00",
        Memory,
        "private anonymous mapping keeps a 64-page pattern",
        maps00,
    ),
    Test::new(
        "maps-shared",
        Memory,
        "shared anonymous mapping stays shared with a child",
        maps_shared,
    ),
    Test::new(
        "shm-exited-writer",
        Memory,
        "shared anonymous pages written by a child that has exited",
        shm_exited_writer,
    ),
    Test::new(
        "shm-forked-writers",
        Memory,
        "shared anonymous memory written in parts by live and exited children",
        shm_forked_writers,
    ),
    Test::new(
        "shm-unmapped-pages",
        Memory,
        "shared anonymous pages in the object but not in the page table",
        shm_unmapped_pages,
    ),
    Test::new(
        "maps-file-private",
        Memory,
        "private file mapping keeps COW'd and clean pages",
        maps_file_private,
    ),
    Test::new(
        "maps-file-shared",
        Memory,
        "shared file mapping writes reach the file",
        maps_file_shared,
    ),
    Test::new(
        "maps-file-offset",
        Memory,
        "read-only file mapping at a file offset",
        maps_file_offset,
    ),
    Test::new(
        "cow00",
        Memory,
        "copy-on-write pages differ between parent and child",
        cow00,
    ),
    Test::new(
        "cow01",
        Memory,
        "pages still shared copy-on-write by parent and child",
        cow01,
    ),
    Test::new(
        "mprotect00",
        Memory,
        "per-page protections of one region",
        mprotect00,
    ),
    Test::new(
        "maps-hole",
        Memory,
        "an unmapped hole inside a reserved region",
        maps_hole,
    ),
    Test::new(
        "maps-guard",
        Memory,
        "MADV_GUARD_INSTALL guard pages",
        maps_guard,
    )
    .features(&["pagemap_scan_guard_pages"]),
    Test::new(
        "maps-many",
        Memory,
        "2000 VMAs made by alternating protections",
        maps_many,
    ),
    Test::new(
        "maps-big",
        Memory,
        "256 MiB of touched anonymous memory",
        maps_big,
    ),
    Test::new(
        "madv-dontneed",
        Memory,
        "MADV_DONTNEED pages read back as zero",
        madv_dontneed,
    ),
    Test::new(
        "madv-wipeonfork",
        Memory,
        "MADV_WIPEONFORK flag on a mapping",
        madv_wipeonfork,
    ),
    Test::new(
        "maps-growsdown",
        Memory,
        "MAP_GROWSDOWN mapping keeps its flag and data",
        maps_growsdown,
    ),
    Test::new(
        "memfd00",
        Memory,
        "memfd contents, mapping and seals",
        memfd00,
    ),
    Test::new("mlock00", Memory, "mlock'ed range stays locked", mlock00),
    Test::new(
        "mremap00",
        Memory,
        "a mapping grown and moved by mremap",
        mremap00,
    ),
    Test::new(
        "maps-dirty",
        Memory,
        "pages written continuously while dumped",
        maps_dirty,
    )
    .transition(),
];

fn check(what: &str, m: &Map, seed: u64) -> Res {
    match m.first_diff(seed) {
        None => Ok(()),
        Some((i, got, want)) => Err(Fail::Mismatch(format!(
            "{what}: byte {i} is {got:#04x}, want {want:#04x}"
        ))),
    }
}

fn flip(m: &Map, off: usize) -> Res {
    m.set(off, !m.get(off));
    Ok(())
}

fn maps00(t: &mut Ctx) -> Res {
    let m = Map::anon(64 * page_size(), RW, MAP_PRIVATE).or_fail("mmap")?;
    m.fill(1);
    t.wait("flipped byte 4097 of the mapping", || flip(&m, 4097))?;
    check("anonymous private mapping", &m, 1)
}

fn maps_shared(t: &mut Ctx) -> Res {
    let m = Map::anon(16 * page_size(), RW, MAP_SHARED).or_fail("mmap")?;
    m.fill(2);
    let kid_map = &m;
    t.spawn("reader", |c| {
        c.wait("no sabotage in the child", || Ok(()))?;
        check("shared mapping seen by the child", kid_map, 2)?;
        // Prove the sharing itself survived: the parent must see this.
        kid_map.set(8, 0xAA);
        Ok(())
    })?;
    t.wait("flipped byte 5000 of the shared mapping", || flip(&m, 5000))?;
    let saved = m.get(8);
    t.check_kids()?;
    ensure_eq!(
        "byte the child wrote into the shared mapping",
        m.get(8),
        0xAAu8
    );
    m.set(8, saved);
    check("shared mapping in the parent", &m, 2)
}

/// Fork a child that writes `pattern(seed)` into `m[from..to]` and exits;
/// reap it.
fn write_and_exit(m: &Map, seed: u64, from: usize, to: usize) -> Res {
    let want = pattern_vec(seed, to);
    match crate::testlib::sys::fork().or_fail("fork")? {
        nix::unistd::ForkResult::Child => {
            for (i, b) in want.iter().enumerate().skip(from) {
                m.set(i, *b);
            }
            crate::testlib::sys::exit_now(0)
        }
        nix::unistd::ForkResult::Parent { child } => {
            let st = nix::sys::wait::waitpid(child, None).or_fail("waitpid writer")?;
            ensure!(
                st == nix::sys::wait::WaitStatus::Exited(child, 0),
                "writer ended with {st:?}"
            );
            Ok(())
        }
    }
}

fn shm_exited_writer(t: &mut Ctx) -> Res {
    let len = 64 * page_size();
    let m = Map::anon(len, RW, MAP_SHARED).or_fail("mmap")?;
    // The parent never touches these pages before the dump: they are only
    // in the shared object, in no live task's page table.
    write_and_exit(&m, 21, 0, len)?;
    t.wait("flipped byte 40000 of the shared mapping", || {
        flip(&m, 40000)
    })?;
    check("pages the exited child wrote", &m, 21)
}

fn shm_forked_writers(t: &mut Ctx) -> Res {
    let ps = page_size();
    let len = 48 * ps;
    let m = Map::anon(len, RW, MAP_SHARED).or_fail("mmap")?;
    let mr = &m;
    // Pages 0..16 by a child that exits, 16..32 by one that stays, 32..48
    // by another that exits after the one that stays was forked.
    write_and_exit(&m, 22, 0, 16 * ps)?;
    let want = pattern_vec(22, len);
    t.spawn("writer", |c| {
        for (i, b) in want.iter().enumerate().take(32 * ps).skip(16 * ps) {
            mr.set(i, *b);
        }
        c.wait("no sabotage in the writer", || Ok(()))?;
        check("the whole object seen by the live writer", mr, 22)
    })?;
    write_and_exit(&m, 22, 32 * ps, len)?;
    t.wait("flipped a byte the exited writer wrote", || {
        flip(&m, 40 * ps + 3)
    })?;
    check("the whole object seen by the parent", &m, 22)?;
    t.check_kids()
}

fn shm_unmapped_pages(t: &mut Ctx) -> Res {
    let ps = page_size();
    let m = Map::anon(32 * ps, RW, MAP_SHARED).or_fail("mmap")?;
    m.fill(23);
    // Drops the page table entries only: the object keeps the pages.
    m.advise(0, 32 * ps, libc::MADV_DONTNEED)
        .or_fail("MADV_DONTNEED")?;
    t.wait("flipped byte 5 of a page out of the page table", || {
        flip(&m, 5 * ps + 5)
    })?;
    check("shared pages out of the page table", &m, 23)
}

fn file_with_pattern(t: &Ctx, seed: u64, len: usize) -> Res<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(t.filename())
        .or_fail("create file")?;
    f.write_all_at(&pattern_vec(seed, len), 0)
        .or_fail("write file")?;
    Ok(f)
}

fn maps_file_private(t: &mut Ctx) -> Res {
    let ps = page_size();
    let f = file_with_pattern(t, 3, 16 * ps)?;
    let m = Map::raw(
        0,
        16 * ps,
        RW,
        MAP_PRIVATE,
        std::os::fd::AsRawFd::as_raw_fd(&f),
        0,
    )
    .or_fail("mmap")?;
    let dirty = pattern_vec(4, 3 * ps);
    for (i, b) in dirty.iter().enumerate() {
        m.set(2 * ps + i, *b);
    }
    t.wait("flipped a byte of a clean page", || flip(&m, 10 * ps + 7))?;
    let clean = pattern_vec(3, 16 * ps);
    for i in 0..16 * ps {
        let want = if (2 * ps..5 * ps).contains(&i) {
            dirty[i - 2 * ps]
        } else {
            clean[i]
        };
        ensure!(
            m.get(i) == want,
            "private file mapping: byte {i} is {:#04x}, want {want:#04x}",
            m.get(i)
        );
    }
    let mut disk = vec![0u8; 16 * ps];
    f.read_exact_at(&mut disk, 0).or_fail("read file")?;
    crate::testlib::diff_bytes("file under a private mapping", &disk, &clean)
}

fn maps_file_shared(t: &mut Ctx) -> Res {
    let ps = page_size();
    let f = file_with_pattern(t, 0, 8 * ps)?;
    let m = Map::raw(
        0,
        8 * ps,
        RW,
        MAP_SHARED,
        std::os::fd::AsRawFd::as_raw_fd(&f),
        0,
    )
    .or_fail("mmap")?;
    m.fill(5);
    t.wait("flipped byte 3 of the shared file mapping", || flip(&m, 3))?;
    check("shared file mapping", &m, 5)?;
    let mut disk = vec![0u8; 8 * ps];
    f.read_exact_at(&mut disk, 0).or_fail("read file")?;
    crate::testlib::diff_bytes(
        "file behind a shared mapping",
        &disk,
        &pattern_vec(5, 8 * ps),
    )
}

fn maps_file_offset(t: &mut Ctx) -> Res {
    let ps = page_size();
    let f = file_with_pattern(t, 6, 8 * ps)?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    let m = Map::raw(
        0,
        4 * ps,
        PROT_READ,
        MAP_PRIVATE,
        fd,
        i64::try_from(2 * ps).or_fail("offset")?,
    )
    .or_fail("mmap")?;
    let addr = m.addr();
    t.wait("remapped the range from file offset 3 pages", || {
        let off = i64::try_from(3 * ps).or_fail("offset")?;
        Map::raw(
            addr,
            4 * ps,
            PROT_READ,
            MAP_PRIVATE | libc::MAP_FIXED,
            fd,
            off,
        )
        .or_fail("mmap fixed")?;
        Ok(())
    })?;
    let line = maps_at(addr)?;
    ensure_eq!(
        "file offset in /proc/self/maps",
        line.offset,
        (2 * ps) as u64
    );
    ensure_eq!("protection", line.perms, "r--p");
    let want = pattern_vec(6, 8 * ps);
    for i in 0..4 * ps {
        ensure!(
            m.get(i) == want[2 * ps + i],
            "file mapping byte {i} differs from the file at offset {}",
            2 * ps + i
        );
    }
    Ok(())
}

fn cow00(t: &mut Ctx) -> Res {
    let ps = page_size();
    let m = Map::anon(32 * ps, RW, MAP_PRIVATE).or_fail("mmap")?;
    m.fill(7);
    let mr = &m;
    t.spawn("writer", |c| {
        let mine = pattern_vec(8, 8 * ps);
        for (i, b) in mine.iter().enumerate() {
            mr.set(i, *b);
        }
        c.wait("flipped a byte of a private page", || flip(mr, 3))?;
        let orig = pattern_vec(7, 32 * ps);
        for i in 0..32 * ps {
            let want = if i < 8 * ps { mine[i] } else { orig[i] };
            ensure!(
                mr.get(i) == want,
                "child's copy: byte {i} is {:#04x}, want {want:#04x}",
                mr.get(i)
            );
        }
        Ok(())
    })?;
    t.wait("flipped a byte of page 20 in the parent", || {
        flip(&m, 20 * ps + 1)
    })?;
    check("parent's copy", &m, 7)?;
    t.check_kids()
}

fn cow01(t: &mut Ctx) -> Res {
    let m = Map::anon(32 * page_size(), RW, MAP_PRIVATE).or_fail("mmap")?;
    m.fill(9);
    let mr = &m;
    let kid = t.spawn("sharer", |c| {
        c.wait("flipped a byte of a still-shared page", || flip(mr, 100))?;
        check("child's view of shared COW pages", mr, 9)
    })?;
    t.wait("asked the child to flip a byte", || forward(kid))?;
    check("parent's view of shared COW pages", &m, 9)?;
    t.check_kids()
}

const MPROT: [i32; 8] = [
    RW, PROT_READ, PROT_NONE, RW, PROT_READ, PROT_NONE, PROT_READ, RW,
];

fn perms_of(p: i32) -> &'static str {
    match p {
        RW => "rw-p",
        PROT_READ => "r--p",
        _ => "---p",
    }
}

fn mprotect00(t: &mut Ctx) -> Res {
    let ps = page_size();
    let m = Map::anon(8 * ps, RW, MAP_PRIVATE).or_fail("mmap")?;
    m.fill(10);
    for (i, p) in MPROT.iter().enumerate() {
        m.protect(i * ps, ps, *p).or_fail("mprotect")?;
    }
    t.wait("made page 2 readable", || {
        m.protect(2 * ps, ps, PROT_READ).or_fail("mprotect")
    })?;
    let want = pattern_vec(10, 8 * ps);
    for (i, p) in MPROT.iter().enumerate() {
        let line = maps_at(m.addr() + i * ps)?;
        ensure_eq!(format!("protection of page {i}"), line.perms, perms_of(*p));
        if *p != PROT_NONE {
            for (j, w) in want.iter().enumerate().skip(i * ps).take(ps) {
                ensure!(m.get(j) == *w, "page {i}: byte {j} differs");
            }
        }
    }
    Ok(())
}

fn maps_hole(t: &mut Ctx) -> Res {
    let ps = page_size();
    let m = Map::anon(16 * ps, RW, MAP_PRIVATE).or_fail("mmap")?;
    m.fill(11);
    m.unmap_part(6 * ps, 4 * ps).or_fail("munmap")?;
    let hole = m.addr() + 6 * ps;
    t.wait("mapped a page into the hole", || {
        Map::raw(
            hole + ps,
            ps,
            RW,
            MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
        .or_fail("mmap into hole")
        .map(drop)
    })?;
    for l in maps()? {
        ensure!(
            l.end <= hole || l.start >= hole + 4 * ps,
            "the hole {hole:#x}+4 pages is mapped: {l:?}"
        );
    }
    let want = pattern_vec(11, 16 * ps);
    for i in (0..6 * ps).chain(10 * ps..16 * ps) {
        ensure!(m.get(i) == want[i], "byte {i} around the hole differs");
    }
    Ok(())
}

const MADV_GUARD_INSTALL: i32 = 102;
const MADV_GUARD_REMOVE: i32 = 103;

/// Whether reading one byte at `addr` through /proc/self/mem works (guard
/// pages refuse it).
fn readable_via_mem(addr: usize) -> Res<bool> {
    let mem = std::fs::File::open("/proc/self/mem").or_fail("open /proc/self/mem")?;
    let mut b = [0u8; 1];
    Ok(mem.read_exact_at(&mut b, addr as u64).is_ok())
}

fn maps_guard(t: &mut Ctx) -> Res {
    let ps = page_size();
    let m = Map::anon(8 * ps, RW, MAP_PRIVATE).or_fail("mmap")?;
    m.fill(12);
    m.advise(3 * ps, 2 * ps, MADV_GUARD_INSTALL)
        .or_fail("MADV_GUARD_INSTALL")?;
    t.wait("removed the guard pages", || {
        m.advise(3 * ps, 2 * ps, MADV_GUARD_REMOVE)
            .or_fail("MADV_GUARD_REMOVE")
    })?;
    for page in 0..8 {
        let guarded = (3..5).contains(&page);
        let readable = readable_via_mem(m.addr() + page * ps)?;
        ensure!(
            readable != guarded,
            "page {page}: guarded should be {guarded}, but readable is {readable}"
        );
    }
    let want = pattern_vec(12, 8 * ps);
    for i in (0..3 * ps).chain(5 * ps..8 * ps) {
        ensure!(
            m.get(i) == want[i],
            "byte {i} next to the guard pages differs"
        );
    }
    Ok(())
}

fn maps_many(t: &mut Ctx) -> Res {
    const N: usize = 2000;
    let ps = page_size();
    let m = Map::anon(N * ps, RW, MAP_PRIVATE).or_fail("mmap")?;
    for p in 0..N {
        m.set_u64(p * ps, (p as u64) ^ 0x5eed_0000);
    }
    for p in (1..N).step_by(2) {
        m.protect(p * ps, ps, PROT_READ).or_fail("mprotect")?;
    }
    t.wait("made page 1 writable, merging three VMAs", || {
        m.protect(ps, ps, RW).or_fail("mprotect")
    })?;
    let (lo, hi) = (m.addr(), m.addr() + N * ps);
    let inside: Vec<_> = maps()?
        .into_iter()
        .filter(|l| l.start >= lo && l.end <= hi)
        .collect();
    ensure_eq!("VMAs in the region", inside.len(), N);
    for (p, l) in inside.iter().enumerate() {
        ensure_eq!(
            format!("protection of VMA {p}"),
            l.perms,
            if p % 2 == 1 { "r--p" } else { "rw-p" }
        );
        ensure_eq!(
            format!("word of page {p}"),
            m.get_u64(p * ps),
            (p as u64) ^ 0x5eed_0000
        );
    }
    Ok(())
}

fn maps_big(t: &mut Ctx) -> Res {
    let ps = page_size();
    let pages = (256usize << 20) / ps;
    let m = Map::anon(pages * ps, RW, MAP_PRIVATE).or_fail("mmap 256 MiB")?;
    let word = |p: usize| (p as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xb16;
    for p in 0..pages {
        m.set_u64(p * ps, word(p));
        m.set_u64(p * ps + ps / 2, !word(p));
    }
    t.wait("changed the word of page 12345", || {
        m.set_u64(12345 * ps, 0);
        Ok(())
    })?;
    for p in 0..pages {
        ensure!(
            m.get_u64(p * ps) == word(p) && m.get_u64(p * ps + ps / 2) == !word(p),
            "page {p} of 256 MiB differs"
        );
    }
    Ok(())
}

fn madv_dontneed(t: &mut Ctx) -> Res {
    let ps = page_size();
    let m = Map::anon(16 * ps, RW, MAP_PRIVATE).or_fail("mmap")?;
    m.fill(13);
    m.advise(4 * ps, 4 * ps, libc::MADV_DONTNEED)
        .or_fail("MADV_DONTNEED")?;
    t.wait("wrote into a dropped page", || {
        m.set(5 * ps + 9, 1);
        Ok(())
    })?;
    let want = pattern_vec(13, 16 * ps);
    for (i, pat) in want.iter().enumerate() {
        let w = if (4 * ps..8 * ps).contains(&i) {
            0
        } else {
            *pat
        };
        ensure!(
            m.get(i) == w,
            "byte {i} is {:#04x}, want {w:#04x}",
            m.get(i)
        );
    }
    Ok(())
}

fn madv_wipeonfork(t: &mut Ctx) -> Res {
    let ps = page_size();
    let m = Map::anon(4 * ps, RW, MAP_PRIVATE).or_fail("mmap")?;
    m.fill(14);
    m.advise(0, 4 * ps, libc::MADV_WIPEONFORK)
        .or_fail("MADV_WIPEONFORK")?;
    t.wait("cleared WIPEONFORK", || {
        m.advise(0, 4 * ps, libc::MADV_KEEPONFORK)
            .or_fail("MADV_KEEPONFORK")
    })?;
    let flags = vmflags_at(m.addr())?;
    ensure!(
        flags.iter().any(|f| f == "wf"),
        "VmFlags lack wf: {flags:?}"
    );
    check("wipe-on-fork mapping", &m, 14)
}

fn maps_growsdown(t: &mut Ctx) -> Res {
    let ps = page_size();
    let m = Map::anon(8 * ps, RW, MAP_PRIVATE | libc::MAP_GROWSDOWN).or_fail("mmap")?;
    // Leave the lowest page alone: it is the kernel's guard gap.
    let seed = 15;
    let want = pattern_vec(seed, 6 * ps);
    for (i, b) in want.iter().enumerate() {
        m.set(2 * ps + i, *b);
    }
    t.wait("flipped a byte of the stack-like mapping", || {
        flip(&m, 3 * ps)
    })?;
    let flags = vmflags_at(m.addr() + 2 * ps)?;
    ensure!(
        flags.iter().any(|f| f == "gd"),
        "VmFlags lack gd: {flags:?}"
    );
    let line = maps_at(m.addr() + 2 * ps)?;
    ensure_eq!("end of the growsdown VMA", line.end, m.addr() + 8 * ps);
    for (i, b) in want.iter().enumerate() {
        ensure!(
            m.get(2 * ps + i) == *b,
            "growsdown byte {} differs",
            2 * ps + i
        );
    }
    Ok(())
}

fn memfd00(t: &mut Ctx) -> Res {
    use nix::fcntl::{FcntlArg, SealFlag, fcntl};
    use nix::sys::memfd::{MFdFlags, memfd_create};
    let ps = page_size();
    let fd = memfd_create(
        c"zdtm-memfd",
        MFdFlags::MFD_ALLOW_SEALING | MFdFlags::MFD_CLOEXEC,
    )
    .or_fail("memfd_create")?;
    let f = std::fs::File::from(fd);
    f.write_all_at(&pattern_vec(16, 3 * ps), 0)
        .or_fail("write memfd")?;
    let m = Map::raw(
        0,
        3 * ps,
        RW,
        MAP_SHARED,
        std::os::fd::AsRawFd::as_raw_fd(&f),
        0,
    )
    .or_fail("mmap memfd")?;
    fcntl(f.as_fd(), FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK)).or_fail("F_ADD_SEALS")?;
    t.wait("added F_SEAL_GROW", || {
        fcntl(f.as_fd(), FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_GROW))
            .or_fail("F_ADD_SEALS")
            .map(drop)
    })?;
    let seals = fcntl(f.as_fd(), FcntlArg::F_GET_SEALS).or_fail("F_GET_SEALS")?;
    ensure_eq!("memfd seals", seals, libc::F_SEAL_SHRINK);
    check("memfd mapping", &m, 16)?;
    let mut data = vec![0u8; 3 * ps];
    f.read_exact_at(&mut data, 0).or_fail("read memfd")?;
    crate::testlib::diff_bytes("memfd contents", &data, &pattern_vec(16, 3 * ps))?;
    let link = super::util::fd_link(&f)?;
    ensure_eq!("memfd link", link, "/memfd:zdtm-memfd (deleted)");
    Ok(())
}

fn mlock00(t: &mut Ctx) -> Res {
    let ps = page_size();
    let m = Map::anon(4 * ps, RW, MAP_PRIVATE).or_fail("mmap")?;
    m.fill(17);
    // SAFETY: locking pages of our own mapping has no memory-safety effect.
    #[allow(unsafe_code)]
    let r = unsafe { libc::mlock(m.addr() as *const libc::c_void, 4 * ps) };
    nix::errno::Errno::result(r).or_fail("mlock")?;
    let addr = m.addr();
    t.wait("munlocked the range", || {
        // SAFETY: unlocking our own pages.
        #[allow(unsafe_code)]
        let r = unsafe { libc::munlock(addr as *const libc::c_void, 4 * ps) };
        nix::errno::Errno::result(r).or_fail("munlock").map(drop)
    })?;
    let flags = vmflags_at(addr)?;
    ensure!(
        flags.iter().any(|f| f == "lo"),
        "VmFlags lack lo (locked): {flags:?}"
    );
    let block = smaps_at(addr)?;
    let locked = block
        .lines()
        .find_map(|l| l.strip_prefix("Locked:"))
        .map(|v| v.trim().to_owned());
    ensure_eq!(
        "Locked in smaps",
        locked,
        Some(format!("{} kB", 4 * ps / 1024))
    );
    check("locked mapping", &m, 17)
}

fn mremap00(t: &mut Ctx) -> Res {
    let ps = page_size();
    let m = Map::anon(4 * ps, RW, MAP_PRIVATE).or_fail("mmap")?;
    m.fill(18);
    // SAFETY: the old range is ours and no reference points into it; the
    // kernel moves or grows it and we only use the returned address.
    #[allow(unsafe_code)]
    let p = unsafe {
        libc::mremap(
            m.addr() as *mut libc::c_void,
            4 * ps,
            8 * ps,
            libc::MREMAP_MAYMOVE,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(Fail::Sys(format!("mremap: {}", nix::errno::Errno::last())));
    }
    let m = Map::adopt(p as usize, 8 * ps);
    let tail = pattern_vec(19, 4 * ps);
    for (i, b) in tail.iter().enumerate() {
        m.set(4 * ps + i, *b);
    }
    t.wait("flipped a byte of the moved pages", || flip(&m, 2))?;
    let head = pattern_vec(18, 4 * ps);
    for i in 0..4 * ps {
        ensure!(m.get(i) == head[i], "moved page byte {i} differs");
        ensure!(
            m.get(4 * ps + i) == tail[i],
            "grown page byte {} differs",
            4 * ps + i
        );
    }
    let line = maps_at(m.addr())?;
    ensure_eq!(
        "extent of the remapped VMA",
        (line.start, line.end),
        (m.addr(), m.addr() + 8 * ps)
    );
    Ok(())
}

fn maps_dirty(t: &mut Ctx) -> Res {
    let ps = page_size();
    let m = Map::anon(64 * ps, RW, MAP_PRIVATE).or_fail("mmap")?;
    let mut record = vec![0u64; 64];
    let mut n = 0u64;
    let mut frozen = usize::MAX;
    t.transition("changed a page behind the record", |tick| {
        if tick == Tick::Sabotage {
            // Page 5 is left alone from now on, so the damage stays.
            frozen = 5;
            m.set_u64(5 * ps + 40, record[5] ^ 1);
            return Ok(());
        }
        for _ in 0..64 {
            n += 1;
            let p = usize::try_from(n % 64).unwrap_or(0);
            if p == frozen {
                continue;
            }
            m.set_u64(p * ps + (p % 8) * 8, n);
            record[p] = n;
        }
        crate::testlib::nap(1);
        Ok(())
    })?;
    for (p, want) in record.iter().enumerate() {
        ensure_eq!(
            format!("counter in page {p}"),
            m.get_u64(p * ps + (p % 8) * 8),
            *want
        );
    }
    Ok(())
}
