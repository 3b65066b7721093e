//! The processes `ci/bench` checkpoints: `stasis-bench workload KIND N OUT
//! [DIR]`. Each sets up its state, lists its PIDs in `OUT.pids`, writes
//! `ready` to OUT, and once `OUT.go` exists checks its state from inside and
//! writes `ok ...` or `bad ...` to OUT. `container` is a container-shaped
//! tree: namespaces of its own, 30 mounts, a veth pair, an init and its
//! processes; the tree dumped is the init's, named in `OUT.root`.

use std::cell::Cell;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Write `text` to `out` atomically.
fn say(out: &Path, text: &str) -> Result<()> {
    let tmp = out.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("rename to {}", out.display()))
}

fn go_file(out: &Path) -> PathBuf {
    out.with_extension("go")
}

/// The file listing the workload's PIDs.
pub fn pids_file(out: &Path) -> PathBuf {
    out.with_extension("pids")
}

fn add_pid(out: &Path, pid: u32) -> Result<()> {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(pids_file(out))?;
    // One short write with O_APPEND: lines of concurrent writers stay whole.
    f.write_all(format!("{pid}\n").as_bytes())?;
    Ok(())
}

fn wait_go(out: &Path, period: Duration) {
    let go = go_file(out);
    while !go.exists() {
        std::thread::sleep(period);
    }
}

fn word(i: u64) -> u64 {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i >> 7)
}

/// Run workload `kind` with size `n`.
pub fn run(kind: &str, n: u64, out: &Path, dir: Option<&Path>) -> Result<()> {
    // A container's processes are listed by it, by their PIDs outside.
    if kind != "ctrnode" && kind != "ctrinit" {
        add_pid(out, std::process::id())?;
    }
    match kind {
        "mem" => mem(n, out),
        "threads" => threads(n, out),
        "fds" => fds(n, out, dir.context("fds needs a directory")?),
        "tree" => tree(n, out),
        "node" => node(n, out),
        "container" => container(n, out, dir.context("container needs a directory")?),
        "ctrnode" => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        "ctrinit" => ctr_init(n, out, dir.context("ctrinit needs a directory")?),
        other => bail!("unknown workload {other:?}"),
    }
}

fn mem(mib: u64, out: &Path) -> Result<()> {
    let n = usize::try_from(mib << 17)?;
    let mut v: Vec<u64> = Vec::with_capacity(n);
    v.extend((0..n as u64).map(word));
    say(out, "ready")?;
    wait_go(out, Duration::from_millis(5));
    match v.iter().enumerate().find(|(i, w)| **w != word(*i as u64)) {
        Some((i, w)) => say(out, &format!("bad word {i}: {w:#x}")),
        None => say(out, &format!("ok {n} words")),
    }
}

thread_local! {
    static TLS: Cell<u64> = const { Cell::new(0) };
}

fn threads(n: u64, out: &Path) -> Result<()> {
    let good = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for i in 1..n {
        let good = Arc::clone(&good);
        let out = out.to_owned();
        handles.push(std::thread::spawn(move || {
            TLS.with(|t| t.set(1000 * i + 7));
            wait_go(&out, Duration::from_millis(5));
            if TLS.with(Cell::get) == 1000 * i + 7 {
                good.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    say(out, "ready")?;
    wait_go(out, Duration::from_millis(5));
    for h in handles {
        let _ = h.join();
    }
    let ok = good.load(Ordering::SeqCst) as u64 + 1;
    if ok == n.max(1) {
        say(out, &format!("ok {ok} threads"))
    } else {
        say(out, &format!("bad: {ok} of {n} threads kept their state"))
    }
}

fn fds(n: u64, out: &Path, dir: &Path) -> Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    // Two files for each pipe (both ends count), data in every pipe.
    let mut files: Vec<(File, u64)> = Vec::new();
    let mut pipes: Vec<(OwnedFd, OwnedFd, String)> = Vec::new();
    let mut count = 0;
    let mut i = 0u64;
    while count < n {
        if i % 3 == 2 {
            let (r, w) = nix::unistd::pipe()?;
            let msg = format!("pipe {i}");
            nix::unistd::write(&w, msg.as_bytes())?;
            pipes.push((r, w, msg));
            count += 2;
        } else {
            let mut f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(dir.join(format!("f{i}")))?;
            f.write_all(&[b'a'; 512])?;
            f.seek(SeekFrom::Start(7 * i))?;
            files.push((f, 7 * i));
            count += 1;
        }
        i += 1;
    }
    say(out, "ready")?;
    wait_go(out, Duration::from_millis(5));
    let mut bad = 0;
    for (f, want) in &mut files {
        if f.stream_position()? != *want {
            bad += 1;
        }
    }
    for (r, _, msg) in &pipes {
        let mut got = vec![0u8; 64];
        let k = File::from(r.try_clone()?).read(&mut got)?;
        if got.get(..k) != Some(msg.as_bytes()) {
            bad += 1;
        }
    }
    if bad == 0 {
        say(out, &format!("ok {count} fds"))
    } else {
        say(out, &format!("bad {bad} fds"))
    }
}

/// Spawn the children of node `id` in a binary tree of `n` processes.
fn spawn_children(id: u64, n: u64, out: &Path) -> Result<Vec<std::process::Child>> {
    let me = std::env::current_exe()?;
    let mut kids = Vec::new();
    for c in [2 * id + 1, 2 * id + 2] {
        if c < n {
            kids.push(
                std::process::Command::new(&me)
                    .args(["workload", "node"])
                    .arg(((c << 32) | n).to_string())
                    .arg(out)
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()?,
            );
        }
    }
    Ok(kids)
}

fn tree(n: u64, out: &Path) -> Result<()> {
    let _kids = spawn_children(0, n, out)?;
    let listed = || {
        std::fs::read_to_string(pids_file(out))
            .map(|s| s.lines().count() as u64)
            .unwrap_or(0)
    };
    while listed() < n {
        std::thread::sleep(Duration::from_millis(5));
    }
    say(out, "ready")?;
    wait_go(out, Duration::from_millis(5));
    let text = std::fs::read_to_string(pids_file(out))?;
    let gone: Vec<&str> = text
        .lines()
        .filter(|p| !Path::new(&format!("/proc/{p}")).exists())
        .collect();
    if gone.is_empty() {
        say(out, &format!("ok {n} processes"))
    } else {
        say(out, &format!("bad: gone {gone:?}"))
    }
}

/// A tree node: `arg` is (id << 32) | n.
fn node(arg: u64, out: &Path) -> Result<()> {
    let (id, n) = (arg >> 32, arg & 0xffff_ffff);
    let _kids = spawn_children(id, n, out)?;
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Mounts of the container workload.
const CTR_MOUNTS: u64 = 30;

fn ip(args: &str) -> Result<()> {
    let st = std::process::Command::new("ip")
        .args(args.split_whitespace())
        .status()
        .context("run ip (iproute2)")?;
    if !st.success() {
        bail!("ip {args} failed");
    }
    Ok(())
}

/// A container-shaped tree: mount, UTS, IPC, network and PID namespaces of
/// its own, 30 tmpfs mounts holding a file each, lo up and a veth pair with
/// addresses, a host name, and `n` processes in the PID namespace: its init
/// (a session leader, as a runtime's container init is) and `n - 1`
/// children. This process, which made the namespaces, stays outside: the
/// tree dumped is the init's (its PID outside is in `OUT.root`), as runtimes
/// dump a container.
fn container(n: u64, out: &Path, dir: &Path) -> Result<()> {
    use nix::mount::{MsFlags, mount};
    use nix::sched::{CloneFlags, unshare};
    unshare(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWNET,
    )?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    for i in 0..CTR_MOUNTS {
        let at = ctr_mount(dir, i);
        std::fs::create_dir_all(&at)?;
        mount(
            Some("ctr"),
            &at,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("size=1m"),
        )?;
        std::fs::write(at.join("data"), format!("mount {i}"))?;
    }
    nix::unistd::sethostname("bench-ctr")?;
    for cmd in [
        "link set lo up",
        "link add v0 type veth peer name v1",
        "addr add 10.9.0.1/24 dev v0",
        "addr add 10.9.0.2/24 dev v1",
        "link set v0 up",
        "link set v1 up",
    ] {
        ip(cmd)?;
    }
    unshare(CloneFlags::CLONE_NEWPID)?;
    // What this process inherited is not the container's (a runtime closes
    // it too): files opened on mounts of the namespace left behind.
    for fd in std::fs::read_dir("/proc/self/fd")?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&fd| fd > 2)
    {
        let _ = stasis_kernel::fd::set_cloexec(fd, true);
    }
    let init = std::process::Command::new(std::env::current_exe()?)
        .args(["workload", "ctrinit", &n.saturating_sub(1).to_string()])
        .arg(out)
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    add_pid(out, init.id())?;
    std::fs::write(root_file(out), init.id().to_string())?;
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Mount `i` of the container workload.
fn ctr_mount(dir: &Path, i: u64) -> PathBuf {
    dir.join(format!("m{i}"))
}

/// The file naming the PID (outside) of the tree a workload has dumped,
/// when it is not the workload's first process.
pub fn root_file(out: &Path) -> PathBuf {
    out.with_extension("root")
}

/// The init of the container workload's PID namespace: a session of its
/// own, `n` children; after the restore it checks the container: its
/// children, its mounts, its host name.
fn ctr_init(n: u64, out: &Path, dir: &Path) -> Result<()> {
    nix::unistd::setsid()?;
    let me = std::env::current_exe()?;
    let mut kids = Vec::new();
    for _ in 0..n {
        kids.push(
            std::process::Command::new(&me)
                .args(["workload", "ctrnode", "0", "/dev/null"])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()?,
        );
    }
    say(out, "ready")?;
    wait_go(out, Duration::from_millis(5));
    // The /proc here is the host's: this process is its own PID there.
    let me = std::fs::read_link("/proc/self")?;
    let me = me.display();
    let alive = std::fs::read_to_string(format!("/proc/{me}/task/{me}/children"))
        .map(|s| s.split_whitespace().count() as u64)
        .unwrap_or(0);
    let lost = (0..CTR_MOUNTS)
        .filter(|&i| {
            std::fs::read_to_string(ctr_mount(dir, i).join("data")).ok()
                != Some(format!("mount {i}"))
        })
        .count();
    let host = nix::unistd::gethostname()?;
    if alive == n && lost == 0 && host == "bench-ctr" {
        say(out, &format!("ok {} processes, {CTR_MOUNTS} mounts", n + 1))
    } else {
        say(
            out,
            &format!(
                "bad: {} of {n} children, {lost} mounts lost, host {host:?}",
                alive
            ),
        )
    }
}
