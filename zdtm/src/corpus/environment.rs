//! Environment: command line and environment block as seen in /proc, umask,
//! rlimits, personality, and the prctl state a process carries (name,
//! THP-disable, timer slack, dumpable, child subreaper), plus nice value and
//! oom_score_adj.
#![allow(unsafe_code)]

use std::os::unix::fs::FileExt;

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::sys::stat::{Mode, umask};

use crate::meta::{Category::Environment, Flavor, Test};
use crate::testlib::sys::{prctl, prctl_get_int};
use crate::testlib::{Ctx, Fail, OrFail, Res, slurp};
use crate::{ensure, ensure_eq};

pub(crate) const TESTS: &[Test] = &[
    Test::new(
        "cmdline00",
        Environment,
        "/proc/self/cmdline matches argv",
        cmdline00,
    ),
    Test::new(
        "environ00",
        Environment,
        "/proc/self/environ holds the runner's variable",
        environ00,
    ),
    Test::new("umask00", Environment, "umask 027", umask00),
    Test::new(
        "rlimits00",
        Environment,
        "lowered soft and hard rlimits",
        rlimits00,
    ),
    Test::new(
        "personality00",
        Environment,
        "personality flags",
        personality00,
    ),
    Test::new(
        "prctl-name",
        Environment,
        "process name set by PR_SET_NAME",
        prctl_name,
    ),
    Test::new(
        "prctl-misc",
        Environment,
        "THP-disable, timer slack and subreaper",
        prctl_misc,
    ),
    Test::new(
        "dumpable00",
        Environment,
        "a non-dumpable process",
        dumpable00,
    ),
    Test::new(
        "nice00",
        Environment,
        "nice value and oom_score_adj",
        nice00,
    ),
    // The initial user namespace owns the hierarchies.
    Test::new(
        "cgroup-member",
        Environment,
        "a process and its child in cgroups of their own (v2 and v1 pids)",
        cgroup_member,
    )
    .flavors(&[Flavor::H, Flavor::Ns]),
    Test::new(
        "cgroup-threads",
        Environment,
        "a thread in a cgroup of its own below its process's (v2 threaded, v1 pids)",
        cgroup_threads,
    )
    .flavors(&[Flavor::H, Flavor::Ns]),
    Test::new(
        "cgroupns",
        Environment,
        "a cgroup namespace of its own rooted at a cgroup of the test's, a child in a cgroup below (v2 and v1 pids): both see the same paths after restore",
        cgroupns,
    )
    .flavors(&[Flavor::H, Flavor::Ns]),
];

/// Overwrite one byte of our own memory through /proc/self/mem (reaches the
/// argv/env area, which Rust code does not own).
fn poke_mem(addr: u64, byte: u8) -> Res {
    let mem = std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/self/mem")
        .or_fail("open /proc/self/mem")?;
    mem.write_all_at(&[byte], addr)
        .or_fail("write /proc/self/mem")
}

/// Field `idx` (1-based as in proc(5)) of /proc/self/stat.
fn stat_field(idx: usize) -> Res<u64> {
    let f = super::util::proc_stat_fields(nix::unistd::getpid())?;
    f.get(idx - 3)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Fail::Sys(format!("stat field {idx}")))
}

fn cmdline00(t: &mut Ctx) -> Res {
    let want: Vec<u8> = std::env::args_os()
        .flat_map(|a| {
            let mut v = a.into_encoded_bytes();
            v.push(0);
            v
        })
        .collect();
    let arg_start = stat_field(48)?;
    t.wait("overwrote the first byte of argv[0]", || {
        poke_mem(arg_start, b'#')
    })?;
    let got = std::fs::read("/proc/self/cmdline").or_fail("read cmdline")?;
    ensure_eq!(
        "/proc/self/cmdline",
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&want)
    );
    Ok(())
}

fn environ00(t: &mut Ctx) -> Res {
    let want = std::env::var("ZDTM_ENV00")
        .map_err(|_| Fail::Sys("ZDTM_ENV00 is not set (the runner sets it)".into()))?;
    let env_start = stat_field(50)?;
    let text = std::fs::read("/proc/self/environ").or_fail("read environ")?;
    let off = text
        .split(|b| *b == 0)
        .scan(0usize, |pos, e| {
            let here = *pos;
            *pos += e.len() + 1;
            Some((here, e))
        })
        .find(|(_, e)| e.starts_with(b"ZDTM_ENV00="))
        .map(|(p, _)| p)
        .ok_or_else(|| Fail::Sys("ZDTM_ENV00 not in /proc/self/environ".into()))?;
    let value_at = env_start + u64::try_from(off + "ZDTM_ENV00=".len()).unwrap_or(0);
    t.wait("changed a byte of the variable in memory", || {
        poke_mem(value_at, b'Z')
    })?;
    let now = std::fs::read("/proc/self/environ").or_fail("read environ")?;
    let line = format!("ZDTM_ENV00={want}");
    ensure!(
        now.split(|b| *b == 0).any(|e| e == line.as_bytes()),
        "ZDTM_ENV00 in /proc/self/environ is not {want:?}"
    );
    Ok(())
}

fn umask00(t: &mut Ctx) -> Res {
    umask(Mode::from_bits_truncate(0o027));
    t.wait("set umask 022", || {
        umask(Mode::from_bits_truncate(0o022));
        Ok(())
    })?;
    ensure_eq!(
        "Umask in status",
        super::util::self_status("Umask")?,
        "0027"
    );
    let old = umask(Mode::from_bits_truncate(0o027));
    ensure_eq!("umask", old.bits(), 0o027);
    Ok(())
}

const LIMITS: [(Resource, u64, u64); 4] = [
    (Resource::RLIMIT_NOFILE, 900, 1000),
    (Resource::RLIMIT_CORE, 0, 1 << 20),
    (Resource::RLIMIT_MSGQUEUE, 40000, 50000),
    (Resource::RLIMIT_NICE, 5, 10),
];

fn rlimits00(t: &mut Ctx) -> Res {
    // Hard limits can only go down here (no CAP_SYS_RESOURCE), so aim below
    // the current ones.
    let mut want = Vec::new();
    for (r, soft, hard) in LIMITS {
        let (_, cur_hard) = getrlimit(r).or_fail("getrlimit")?;
        let hard = hard.min(cur_hard);
        let soft = soft.min(hard);
        setrlimit(r, soft, hard).or_fail("setrlimit")?;
        want.push((r, soft, hard));
    }
    let (nofile_soft, nofile_hard) = (want[0].1, want[0].2);
    t.wait("lowered the NOFILE soft limit", || {
        setrlimit(Resource::RLIMIT_NOFILE, nofile_soft - 1, nofile_hard).or_fail("setrlimit")
    })?;
    for (r, soft, hard) in want {
        ensure_eq!(
            format!("{r:?}"),
            getrlimit(r).or_fail("getrlimit")?,
            (soft, hard)
        );
    }
    Ok(())
}

fn personality00(t: &mut Ctx) -> Res {
    const ADDR_NO_RANDOMIZE: u64 = 0x0040000;
    const UNAME26: u64 = 0x0020000;
    const READ_IMPLIES_EXEC: u64 = 0x0400000;
    let set = |p: u64| -> Res {
        // SAFETY: personality only changes a per-process flag word.
        let r = unsafe { libc::personality(p) };
        nix::errno::Errno::result(r)
            .or_fail("personality")
            .map(drop)
    };
    set(ADDR_NO_RANDOMIZE | UNAME26)?;
    t.wait("added READ_IMPLIES_EXEC", || {
        set(ADDR_NO_RANDOMIZE | UNAME26 | READ_IMPLIES_EXEC)
    })?;
    // SAFETY: 0xffffffff only queries.
    let got = unsafe { libc::personality(0xffff_ffff) };
    ensure_eq!(
        "personality",
        format!("{got:#x}"),
        format!("{:#x}", ADDR_NO_RANDOMIZE | UNAME26)
    );
    Ok(())
}

fn set_name(n: &std::ffi::CStr) -> Res {
    prctl(libc::PR_SET_NAME, n.as_ptr() as u64, 0, 0, 0)
        .or_fail("PR_SET_NAME")
        .map(drop)
}

fn prctl_name(t: &mut Ctx) -> Res {
    set_name(c"zdtm-n\u{e4}me")?;
    t.wait("renamed the process", || set_name(c"renamed"))?;
    let mut buf = [0u8; 16];
    prctl(libc::PR_GET_NAME, buf.as_mut_ptr() as u64, 0, 0, 0).or_fail("PR_GET_NAME")?;
    let name = buf.split(|b| *b == 0).next().unwrap_or_default();
    ensure_eq!("name", String::from_utf8_lossy(name), "zdtm-n\u{e4}me");
    ensure_eq!(
        "comm",
        slurp("/proc/self/comm")?.trim_end(),
        "zdtm-n\u{e4}me"
    );
    Ok(())
}

fn prctl_misc(t: &mut Ctx) -> Res {
    prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0).or_fail("PR_SET_THP_DISABLE")?;
    prctl(libc::PR_SET_TIMERSLACK, 123_456, 0, 0, 0).or_fail("PR_SET_TIMERSLACK")?;
    prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0).or_fail("PR_SET_CHILD_SUBREAPER")?;
    t.wait("changed the timer slack", || {
        prctl(libc::PR_SET_TIMERSLACK, 50_000, 0, 0, 0)
            .or_fail("set")
            .map(drop)
    })?;
    ensure_eq!(
        "THP disabled",
        prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0).or_fail("get")?,
        1
    );
    ensure_eq!(
        "timer slack",
        prctl(libc::PR_GET_TIMERSLACK, 0, 0, 0, 0).or_fail("get")?,
        123_456
    );
    ensure_eq!(
        "child subreaper",
        prctl_get_int(libc::PR_GET_CHILD_SUBREAPER).or_fail("get")?,
        1
    );
    Ok(())
}

fn dumpable00(t: &mut Ctx) -> Res {
    prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0).or_fail("PR_SET_DUMPABLE")?;
    t.wait("made the process dumpable", || {
        prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0)
            .or_fail("set")
            .map(drop)
    })?;
    ensure_eq!(
        "dumpable",
        prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0).or_fail("get")?,
        0
    );
    Ok(())
}

fn nice00(t: &mut Ctx) -> Res {
    let set_nice = |n: i32| -> Res {
        // SAFETY: setpriority on ourselves takes integers only.
        let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, n) };
        nix::errno::Errno::result(r)
            .or_fail("setpriority")
            .map(drop)
    };
    set_nice(7)?;
    std::fs::write("/proc/self/oom_score_adj", "345").or_fail("write oom_score_adj")?;
    t.wait("changed the nice value", || set_nice(8))?;
    let f = super::util::proc_stat_fields(nix::unistd::getpid())?;
    ensure_eq!(
        "nice (stat field 19)",
        f.get(16).map(String::as_str),
        Some("7")
    );
    ensure_eq!(
        "oom_score_adj",
        slurp("/proc/self/oom_score_adj")?.trim(),
        "345"
    );
    Ok(())
}

/// Hierarchies a test can make cgroups in, from /proc/self/mountinfo:
/// (name as /proc/self/cgroup shows it, mount point): cgroup2, and the v1
/// pids hierarchy.
fn cgroup_hierarchies() -> Res<Vec<(String, String)>> {
    let mut out = Vec::new();
    for l in slurp("/proc/self/mountinfo")?.lines() {
        let Some((pre, post)) = l.split_once(" - ") else {
            continue;
        };
        let f: Vec<&str> = pre.split(' ').collect();
        let g: Vec<&str> = post.split(' ').collect();
        let (Some(root), Some(point), Some(fstype), Some(opts)) =
            (f.get(3), f.get(4), g.first(), g.get(2))
        else {
            continue;
        };
        let name = match *fstype {
            "cgroup2" => "",
            "cgroup" if opts.split(',').any(|o| o == "pids") => "pids",
            _ => continue,
        };
        if *root == "/" && !out.iter().any(|(n, _): &(String, String)| n == name) {
            out.push((name.to_owned(), (*point).to_owned()));
        }
    }
    if out.is_empty() {
        return Err(Fail::Sys(
            "no cgroup2 or v1 pids hierarchy is mounted".into(),
        ));
    }
    Ok(out)
}

/// This process's cgroup in hierarchy `name`.
fn my_cgroup(name: &str) -> Res<String> {
    let text = slurp("/proc/self/cgroup")?;
    text.lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, n, p) = (f.next()?, f.next()?, f.next()?);
            (n == name).then(|| p.to_owned())
        })
        .ok_or_else(|| Fail::Sys(format!("no {name:?} line in /proc/self/cgroup")))
}

fn join(dir: &str) -> Res {
    std::fs::write(format!("{dir}/cgroup.procs"), "0").or_fail(&format!("join {dir}"))
}

/// Moves the test back where it was and removes its cgroups, on every path.
struct Cgroups {
    /// (hierarchy, its mount point, where the test was, its cgroup, its
    /// child's).
    made: Vec<(String, String, String, String, String)>,
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for (_, _, home, dir, kid) in &self.made {
            let _ = join(home);
            let _ = std::fs::remove_dir(kid);
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn cgroup_member(t: &mut Ctx) -> Res {
    let me = nix::unistd::getpid();
    let mut cg = Cgroups { made: Vec::new() };
    for (name, point) in cgroup_hierarchies()? {
        let home = format!("{point}{}", my_cgroup(&name)?).replace("//", "/");
        let dir = format!("{home}/zdtm-cg-{me}").replace("//", "/");
        let kid = format!("{dir}/kid");
        std::fs::create_dir_all(&kid).or_fail(&format!("mkdir {kid}"))?;
        cg.made.push((name, point, home, dir, kid));
    }
    let made = cg.made.clone();
    let check = |who: &str, kid: bool| -> Res {
        for (name, point, _, dir, k) in &made {
            let want = if kid { k } else { dir };
            let here = format!("{point}{}", my_cgroup(name)?).replace("//", "/");
            ensure!(
                *want == here,
                "{who}: in cgroup {here} of hierarchy {name:?}, not {want}"
            );
        }
        Ok(())
    };
    for (_, _, _, dir, _) in &made {
        join(dir)?;
    }
    let made_kid = made.clone();
    t.spawn("child", move |c| {
        for (_, _, _, _, kid) in &made_kid {
            join(kid)?;
        }
        c.wait("no sabotage in the child", || Ok(()))?;
        check("child", true)
    })?;
    let first_home = made.first().map(|m| m.2.clone()).unwrap_or_default();
    t.wait("moved to its parent cgroup", || join(&first_home))?;
    // The child reaped before `cg` goes: a cgroup with a task stays.
    let mine = check("the test", false);
    let kids = t.check_kids();
    drop(cg);
    mine.and(kids)
}

/// The cgroup of thread `tid` of this process in hierarchy `name`.
fn thread_cgroup(tid: i32, name: &str) -> Res<String> {
    let text = slurp(format!("/proc/self/task/{tid}/cgroup"))?;
    text.lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, n, p) = (f.next()?, f.next()?, f.next()?);
            (n == name).then(|| p.to_owned())
        })
        .ok_or_else(|| Fail::Sys(format!("no {name:?} line for thread {tid}")))
}

/// Move thread `tid` into cgroup `dir` of hierarchy `name` ("" for v2).
fn move_thread(name: &str, dir: &str, tid: i32) -> Res {
    let file = if name.is_empty() {
        "cgroup.threads"
    } else {
        "tasks"
    };
    std::fs::write(format!("{dir}/{file}"), tid.to_string())
        .or_fail(&format!("move thread {tid} to {dir}"))
}

fn cgroup_threads(t: &mut Ctx) -> Res {
    let me = nix::unistd::getpid();
    let mut cg = Cgroups { made: Vec::new() };
    for (name, point) in cgroup_hierarchies()? {
        let home = format!("{point}{}", my_cgroup(&name)?).replace("//", "/");
        let dir = format!("{home}/zdtm-cgt-{me}").replace("//", "/");
        let sub = format!("{dir}/thr");
        std::fs::create_dir_all(&sub).or_fail(&format!("mkdir {sub}"))?;
        if name.is_empty() {
            std::fs::write(format!("{sub}/cgroup.type"), "threaded")
                .or_fail(&format!("make {sub} threaded"))?;
        }
        cg.made.push((name, point, home, dir, sub));
    }
    for (_, _, _, dir, _) in &cg.made {
        join(dir)?;
    }
    let (tx, rx) = std::sync::mpsc::channel::<i32>();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let th = std::thread::spawn(move || {
        let _ = tx.send(nix::unistd::gettid().as_raw());
        let _ = stop_rx.recv();
    });
    let tid = rx.recv().or_fail("the thread's id")?;
    for (name, _, _, _, sub) in &cg.made {
        move_thread(name, sub, tid)?;
    }
    let made = cg.made.clone();
    let sabotage = move || {
        let (name, _, _, dir, _) = made.first().ok_or_else(|| Fail::Sys("no cgroup".into()))?;
        move_thread(name, dir, tid)
    };
    let res = t.wait("moved the thread to its process's cgroup", sabotage);
    let checked = res.and_then(|()| {
        for (name, point, _, dir, sub) in &cg.made {
            let at = |tid: i32| -> Res<String> {
                Ok(format!("{point}{}", thread_cgroup(tid, name)?).replace("//", "/"))
            };
            ensure_eq!("the thread's cgroup", at(tid)?, *sub);
            ensure_eq!("the process's cgroup", at(me.as_raw())?, *dir);
        }
        Ok(())
    });
    let _ = stop_tx.send(());
    let _ = th.join();
    drop(cg);
    checked
}

fn cgroupns(t: &mut Ctx) -> Res {
    let me = nix::unistd::getpid();
    let outer = std::fs::read_link("/proc/self/ns/cgroup").or_fail("read /proc/self/ns/cgroup")?;
    let mut cg = Cgroups { made: Vec::new() };
    for (name, point) in cgroup_hierarchies()? {
        let home = format!("{point}{}", my_cgroup(&name)?).replace("//", "/");
        let dir = format!("{home}/zdtm-cgns-{me}").replace("//", "/");
        let kid = format!("{dir}/kid");
        std::fs::create_dir_all(&kid).or_fail(&format!("mkdir {kid}"))?;
        cg.made.push((name, point, home, dir, kid));
    }
    for (_, _, _, dir, _) in &cg.made {
        join(dir)?;
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP)
        .or_fail("unshare(CLONE_NEWCGROUP)")?;
    let names: Vec<String> = cg.made.iter().map(|m| m.0.clone()).collect();
    // Paths as the namespace shows them: its root is the test's cgroup.
    let check = move |who: &str, want: &str| -> Res {
        for name in &names {
            let here = my_cgroup(name)?;
            ensure!(
                here == want,
                "{who}: in cgroup {here} of hierarchy {name:?} (in its namespace), not {want}"
            );
        }
        let ns = std::fs::read_link("/proc/self/ns/cgroup").or_fail("read /proc/self/ns/cgroup")?;
        ensure!(ns != outer, "{who}: in the outer cgroup namespace {ns:?}");
        Ok(())
    };
    check("the test", "/")?;
    let kids: Vec<String> = cg.made.iter().map(|m| m.4.clone()).collect();
    let check_kid = check.clone();
    t.spawn("child", move |c| {
        for kid in &kids {
            join(kid)?;
        }
        check_kid("child", "/kid")?;
        c.wait("no sabotage in the child", || Ok(()))?;
        check_kid("child", "/kid")
    })?;
    let first_kid = cg.made.first().map(|m| m.4.clone()).unwrap_or_default();
    t.wait("moved into its child's cgroup", || join(&first_kid))?;
    let mine = check("the test", "/");
    let kids = t.check_kids();
    // Out of the namespace again (PID 1's is an outer one) so that the
    // cgroups can be left and removed where namespaces delegate.
    if let Ok(f) = std::fs::File::open("/proc/1/ns/cgroup") {
        let _ = nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWCGROUP);
    }
    drop(cg);
    mine.and(kids)
}
