//! Files, terminals, mounts and cgroups: the ptmx lock, timerfd ticks,
//! openat2, the new mount API (open_tree, move_mount and its SET_GROUP,
//! idmapped mounts), autofs and overlayfs as C/R sees them, the cgroup v2
//! freezer and cgroup.kill, time namespace offsets, AppArmor stacking.

use stasis_kernel as kernel;
use std::os::fd::{AsFd, AsRawFd};
use std::os::linux::fs::MetadataExt;
use std::path::Path;

use nix::fcntl::OFlag;
use nix::mount::{MsFlags, mount};
use nix::sys::stat::Mode;

use super::common::{CHILD_TIMEOUT, R, Step, error, in_mntns, no, read};
use crate::Outcome;

pub fn ptmx_lock() -> R {
    let m = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .no("opening /dev/ptmx")?;
    let slave = nix::pty::ptsname_r(&m).fail("ptsname")?;
    let mut lock = 1i32;
    kernel::ioctl::ioctl_int_ptr(m.as_fd(), kernel::ioctl::ioc::TIOCSPTLCK, &mut lock)
        .no("ioctl(TIOCSPTLCK)")?;
    match nix::fcntl::open(
        slave.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Err(nix::errno::Errno::EIO) => Ok(String::new()),
        Ok(_) => Err(no("a locked pty slave could be opened")),
        Err(e) => Err(no(format!(
            "opening a locked pty slave failed with {e}, expected EIO"
        ))),
    }
}

pub fn timerfd() -> R {
    use nix::sys::time::TimeSpec;
    use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
    let t = TimerFd::new(
        ClockId::CLOCK_MONOTONIC,
        TimerFlags::TFD_CLOEXEC | TimerFlags::TFD_NONBLOCK,
    )
    .no("timerfd_create")?;
    t.set(
        Expiration::Interval(TimeSpec::new(3600, 0)),
        TimerSetTimeFlags::empty(),
    )
    .fail("timerfd_settime")?;
    kernel::timer::timerfd_set_ticks(t.as_fd(), 5)
        .no("ioctl(TFD_IOC_SET_TICKS) (CONFIG_CHECKPOINT_RESTORE)")?;
    let text = read(&format!("/proc/self/fdinfo/{}", t.as_fd().as_raw_fd()))?;
    if !text.lines().any(|l| l.trim() == "ticks: 5") {
        return Err(no("timerfd fdinfo does not show the ticks we set"));
    }
    Ok(String::new())
}

pub fn openat2() -> R {
    let how = kernel::fd::OpenHow {
        flags: (libc::O_PATH | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: 0x04, /* RESOLVE_NO_SYMLINKS */
    };
    kernel::fd::openat2(c"/proc", &how).no("openat2")?;
    Ok(String::new())
}

fn mountinfo_line(mountpoint: &str) -> Result<String, Outcome> {
    let mi = read("/proc/thread-self/mountinfo")?;
    mi.lines()
        .rev()
        .find(|l| l.split_whitespace().nth(4) == Some(mountpoint))
        .map(str::to_string)
        .ok_or_else(|| no(format!("{mountpoint} is not in mountinfo")))
}

fn shared_group(line: &str) -> Option<&str> {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix("shared:"))
}

pub fn move_mount_set_group() -> R {
    in_mntns(|| {
        // Two private mounts of one superblock (a tmpfs and a bind of it),
        // then the first becomes shared and the second is put in its group.
        for d in ["/tmp/a", "/tmp/b"] {
            std::fs::create_dir(d).fail("mkdir")?;
        }
        mount(
            Some("stasis-probe"),
            "/tmp/a",
            Some("tmpfs"),
            MsFlags::empty(),
            Some("size=64k"),
        )
        .fail("mount tmpfs")?;
        mount(
            Some("/tmp/a"),
            "/tmp/b",
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .fail("bind mount")?;
        mount(
            None::<&str>,
            "/tmp/a",
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
        .fail("make /tmp/a shared")?;
        const MOVE_MOUNT_SET_GROUP: u32 = 0x100;
        kernel::mount::move_mount(None, c"/tmp/a", None, c"/tmp/b", MOVE_MOUNT_SET_GROUP)
            .no("move_mount(MOVE_MOUNT_SET_GROUP)")?;
        let (a, b) = (mountinfo_line("/tmp/a")?, mountinfo_line("/tmp/b")?);
        match (shared_group(&a), shared_group(&b)) {
            (Some(x), Some(y)) if x == y => Ok(String::new()),
            _ => Err(no("the target mount did not join the peer group")),
        }
    })
}

pub fn open_tree() -> R {
    in_mntns(|| {
        std::fs::create_dir("/tmp/src").fail("mkdir")?;
        std::fs::create_dir("/tmp/dst").fail("mkdir")?;
        std::fs::write("/tmp/src/marker", b"x").fail("write")?;
        const OPEN_TREE_CLONE: u32 = 1;
        let t = kernel::mount::open_tree(c"/tmp/src", OPEN_TREE_CLONE | libc::O_CLOEXEC as u32)
            .no("open_tree(OPEN_TREE_CLONE)")?;
        const MOVE_MOUNT_F_EMPTY_PATH: u32 = 4;
        kernel::mount::move_mount(
            Some(t.as_fd()),
            c"",
            None,
            c"/tmp/dst",
            MOVE_MOUNT_F_EMPTY_PATH,
        )
        .no("move_mount")?;
        if !Path::new("/tmp/dst/marker").exists() {
            return Err(no("the moved tree is not visible at its new place"));
        }
        Ok(String::new())
    })
}

/// A child in a new user namespace mapping 0..1000 to 100000..; returns it
/// (kept alive until dropped) and an fd of its user namespace.
fn userns_child() -> Result<(kernel::clone::Child, std::fs::File), Outcome> {
    let (r, w) = nix::unistd::pipe().fail("pipe")?;
    let c = kernel::clone::fork_child(|_cx| {
        if nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).is_err() {
            return 1;
        }
        let _ = nix::unistd::write(&w, b"u");
        loop {
            nix::unistd::pause();
        }
    })
    .fail("fork")?;
    drop(w);
    let mut b = [0u8; 1];
    if nix::unistd::read(&r, &mut b).fail("waiting for the user namespace")? != 1 {
        return Err(no("unshare(CLONE_NEWUSER) failed (CONFIG_USER_NS)"));
    }
    for f in ["uid_map", "gid_map"] {
        std::fs::write(format!("/proc/{}/{f}", c.pid()), "0 100000 1000\n").fail(f)?;
    }
    let ns = std::fs::File::open(format!("/proc/{}/ns/user", c.pid()))
        .fail("opening the user namespace")?;
    Ok((c, ns))
}

pub fn idmapped_mounts() -> R {
    let (_child, ns) = userns_child()?;
    in_mntns(|| {
        std::fs::create_dir("/tmp/src").fail("mkdir")?;
        const OPEN_TREE_CLONE: u32 = 1;
        let t = kernel::mount::open_tree(c"/tmp", OPEN_TREE_CLONE | libc::O_CLOEXEC as u32)
            .no("open_tree")?;
        let attr = kernel::mount::MountAttr {
            attr_set: 0x0010_0000,
            userns_fd: u64::try_from(ns.as_raw_fd()).unwrap_or(0),
            ..Default::default()
        };
        kernel::mount::mount_setattr(t.as_fd(), &attr)
            .no("mount_setattr(MOUNT_ATTR_IDMAP) on tmpfs")?;
        Ok(String::new())
    })
}

pub fn autofs() -> R {
    in_mntns(|| {
        std::fs::create_dir("/tmp/auto").fail("mkdir")?;
        let (r, w) = nix::unistd::pipe().fail("pipe")?;
        let opts = format!(
            "fd={},pgrp={},minproto=5,maxproto=5,direct",
            w.as_raw_fd(),
            nix::unistd::getpgrp()
        );
        mount(
            Some("stasis-probe"),
            "/tmp/auto",
            Some("autofs"),
            MsFlags::empty(),
            Some(opts.as_str()),
        )
        .no("mounting autofs (CONFIG_AUTOFS_FS)")?;
        let line = mountinfo_line("/tmp/auto")?;
        drop(r);
        if !line.contains("pipe_ino=") {
            return Err(no("the autofs mount options lack pipe_ino="));
        }
        Ok(String::new())
    })
}

pub fn overlayfs_maps() -> R {
    in_mntns(|| {
        for d in ["lower", "upper", "work", "merged"] {
            std::fs::create_dir(format!("/tmp/{d}")).fail("mkdir")?;
        }
        std::fs::write("/tmp/lower/file", vec![7u8; 4096]).fail("write")?;
        mount(
            Some("overlay"),
            "/tmp/merged",
            Some("overlay"),
            MsFlags::empty(),
            Some("lowerdir=/tmp/lower,upperdir=/tmp/upper,workdir=/tmp/work"),
        )
        .no("mounting overlayfs (CONFIG_OVERLAY_FS)")?;
        let f = std::fs::File::open("/tmp/merged/file").fail("open")?;
        let st = f.metadata().fail("fstat")?;
        let m = kernel::mm::Mapping::file(4096, libc::PROT_READ, libc::MAP_PRIVATE, f.as_fd())
            .fail("mmap")?;
        let maps = read("/proc/self/maps")?;
        let start = format!("{:x}-", m.addr());
        let line = maps
            .lines()
            .find(|l| l.starts_with(&start))
            .ok_or_else(|| error("mapping not in maps"))?
            .to_string();
        drop(m);
        let mut it = line.split_whitespace().skip(3);
        let (dev, ino) = (
            it.next().unwrap_or(""),
            it.next().unwrap_or("").parse::<u64>().unwrap_or(0),
        );
        let want_dev = format!(
            "{:02x}:{:02x}",
            libc::major(st.st_dev()),
            libc::minor(st.st_dev())
        );
        if ino != st.st_ino() || dev != want_dev {
            return Err(no(format!(
                "maps shows {dev} {ino}, stat() says {want_dev} {}",
                st.st_ino()
            )));
        }
        Ok(String::new())
    })
}

fn cgroup2_root() -> Result<String, Outcome> {
    let mi = read("/proc/self/mountinfo")?;
    mi.lines()
        .find(|l| {
            l.split(" - ")
                .nth(1)
                .is_some_and(|t| t.starts_with("cgroup2 "))
        })
        .and_then(|l| l.split_whitespace().nth(4))
        .map(str::to_string)
        .ok_or_else(|| no("no cgroup2 hierarchy is mounted"))
}

/// Creates a scratch cgroup with one sleeping child in it, runs `f`, and
/// removes both.
fn with_cgroup(f: impl FnOnce(&Path, &mut kernel::clone::Child) -> R) -> R {
    let root = cgroup2_root()?;
    let dir = Path::new(&root).join(format!(
        "stasis-probe-{}-{}",
        nix::unistd::getpid(),
        kernel::process::gettid()
    ));
    std::fs::create_dir(&dir).no(&format!("creating a cgroup under {root}"))?;
    let r = (|| {
        let mut c = kernel::clone::fork_child(|_cx| {
            loop {
                nix::unistd::pause();
            }
        })
        .fail("fork")?;
        std::fs::write(dir.join("cgroup.procs"), c.pid().to_string())
            .no("moving a process into the cgroup")?;
        let r = f(&dir, &mut c);
        drop(c);
        r
    })();
    // The child is dead and reaped by now; rmdir may race its exit briefly.
    for _ in 0..100 {
        if std::fs::remove_dir(&dir).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    r
}

pub fn cgroup2_freeze() -> R {
    with_cgroup(|dir, _| {
        std::fs::write(dir.join("cgroup.freeze"), "1").no("writing cgroup.freeze (kernel 5.2)")?;
        for _ in 0..200 {
            if read(&dir.join("cgroup.events").to_string_lossy())?
                .lines()
                .any(|l| l == "frozen 1")
            {
                let _ = std::fs::write(dir.join("cgroup.freeze"), "0");
                return Ok("a tree can be frozen before seizing it".into());
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let _ = std::fs::write(dir.join("cgroup.freeze"), "0");
        Err(no("cgroup.events never reported frozen 1"))
    })
}

pub fn cgroup2_kill() -> R {
    with_cgroup(|dir, c| {
        std::fs::write(dir.join("cgroup.kill"), "1").no("writing cgroup.kill (kernel 5.14)")?;
        match c.exit_code(CHILD_TIMEOUT) {
            Err(e) if e.contains("SIGKILL") => Ok(String::new()),
            other => Err(no(format!(
                "cgroup.kill did not kill the member: {other:?}"
            ))),
        }
    })
}

pub fn timens_offsets() -> R {
    let mut c = kernel::clone::fork_child(|_cx| {
        if nix::sched::unshare(nix::sched::CloneFlags::from_bits_retain(
            libc::CLONE_NEWTIME,
        ))
        .is_err()
        {
            return 1;
        }
        let Ok(fd) = nix::fcntl::open(c"/proc/self/timens_offsets", OFlag::O_WRONLY, Mode::empty())
        else {
            return 2;
        };
        if nix::unistd::write(&fd, b"monotonic 86400 0").is_err() {
            return 3;
        }
        0
    })
    .fail("fork")?;
    match c.exit_code(CHILD_TIMEOUT) {
        Ok(0) => Ok(String::new()),
        Ok(1) => Err(no("unshare(CLONE_NEWTIME) failed (CONFIG_TIME_NS)")),
        Ok(_) => Err(no("setting clock offsets of a new time namespace failed")),
        Err(e) => Err(error(e)),
    }
}

pub fn apparmor_stacking() -> R {
    let lsm = std::fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
    let present = Path::new("/sys/kernel/security/apparmor").exists()
        || lsm.split(',').any(|l| l.trim() == "apparmor");
    if !present {
        return Err(Outcome::NotApplicable(
            "the LSM is not AppArmor (CONFIG_SECURITY_APPARMOR)".into(),
        ));
    }
    let stack = read("/sys/kernel/security/apparmor/features/domain/stack")?;
    if stack.trim() != "yes" {
        return Err(no("AppArmor does not support stacking"));
    }
    let ver = read("/sys/kernel/security/apparmor/features/domain/version")?;
    let v: f32 = ver.trim().parse().unwrap_or(0.0);
    if v < 1.2 {
        return Err(no(format!(
            "AppArmor domain version {} is older than 1.2",
            ver.trim()
        )));
    }
    Ok(String::new())
}
