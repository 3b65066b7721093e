#![allow(clippy::tests_outside_test_module)]
//! Container-shaped trees through the `stasis` CLI: a process started by
//! `unshare` with namespaces of its own comes back with all of them.
//! Needs root, util-linux (unshare, mount, ipcmk, ipcs), iproute2,
//! python3 and crit (Debian's criu): fails without them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn need_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root: it makes namespaces and mounts, and restores PIDs"
    );
}

/// Inside the namespaces, as their init: a host name, a tmpfs with a file
/// held open, a bind mount of it, a SysV segment, lo up with a TCP
/// listener and a connection on it, a veth pair with addresses, a route
/// and a routing rule, and a connection over it. Once `check` exists it
/// checks them all and writes its verdict to `answer`.
const CONTAINER: &str = r#"
import os, socket, subprocess, sys, time
d = sys.argv[1]
socket.sethostname("ctr-stasis")
os.makedirs(d + "/t", exist_ok=True)
os.makedirs(d + "/b", exist_ok=True)
subprocess.check_call(["mount", "-t", "tmpfs", "-o", "size=4m,mode=750", "ctr", d + "/t"])
with open(d + "/t/data", "w") as f:
    f.write("inside the tmpfs")
held = open(d + "/t/data")
subprocess.check_call(["mount", "--bind", d + "/t", d + "/b"])
shmid = subprocess.check_output(["ipcmk", "-M", "4096"]).split()[-1].decode()
subprocess.check_call(["ip", "link", "set", "lo", "up"])
for c in ["link add v0 type veth peer name v1", "addr add 10.9.0.1/24 dev v0",
          "addr add 10.9.0.2/24 dev v1", "link set v0 up", "link set v1 up",
          "route add 10.50.0.0/16 via 10.9.0.2", "rule add from 10.9.0.0/24 table 100 priority 1000"]:
    subprocess.check_call(["ip"] + c.split())
vsrv = socket.socket()
vsrv.bind(("10.9.0.1", 7778))
vsrv.listen()
vcli = socket.create_connection(("10.9.0.1", 7778), source_address=("10.9.0.2", 0))
vcon, _ = vsrv.accept()
srv = socket.socket()
srv.bind(("127.0.0.1", 7777))
srv.listen()
cli = socket.create_connection(("127.0.0.1", 7777))
con, _ = srv.accept()
open(d + "/ready", "w").write("ready")
while not os.path.exists(d + "/check"):
    time.sleep(0.02)
bad = []
def want(what, ok):
    if not ok:
        bad.append(what)
want("pid 1", os.getpid() == 1)
want("host name", socket.gethostname() == "ctr-stasis")
held.seek(0)
want("held file", held.read() == "inside the tmpfs")
want("bind mount", open(d + "/b/data").read() == "inside the tmpfs")
mounts = [l.split()[4] for l in open("/proc/self/mountinfo")]
want("tmpfs and bind in mountinfo", d + "/t" in mounts and d + "/b" in mounts)
want("SysV segment", subprocess.call(["ipcs", "-m", "-i", shmid], stdout=subprocess.DEVNULL) == 0)
want("proc of the pid namespace", sorted(int(p) for p in os.listdir("/proc") if p.isdigit())[0] == 1)
cli.sendall(b"ping")
want("connection client to server", con.recv(4) == b"ping")
con.sendall(b"pong")
want("connection server to client", cli.recv(4) == b"pong")
vcli.sendall(b"veth")
want("connection over the veth pair", vcon.recv(4) == b"veth")
ip = lambda *a: subprocess.check_output(["ip"] + list(a)).decode()
want("veth addresses", "10.9.0.1/24" in ip("-o", "addr", "show", "v0") and "10.9.0.2/24" in ip("-o", "addr", "show", "v1"))
want("route via the veth", "10.50.0.0/16 via 10.9.0.2" in ip("route"))
want("routing rule", "from 10.9.0.0/24 lookup 100" in ip("rule"))
with open(d + "/answer", "w") as f:
    f.write("ok" if not bad else "bad: " + ", ".join(bad))
while True:
    time.sleep(1)
"#;

/// A temporary directory with `ctr` (the container's files) and `img`
/// (its images) in it.
fn workdirs() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (d, img) = (tmp.path().join("ctr"), tmp.path().join("img"));
    std::fs::create_dir(&d).expect("mkdir");
    std::fs::create_dir(&img).expect("mkdir");
    (tmp, d, img)
}

fn wait_for(file: &Path, secs: u64) -> String {
    let t = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(file)
            && !s.is_empty()
        {
            return s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "{} did not appear",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The PID namespace's init: the only child of `unshare`.
fn init_of(unshare: u32) -> i32 {
    let t = Instant::now();
    loop {
        let kids = std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children"))
            .unwrap_or_default();
        if let Some(k) = kids.split_whitespace().next() {
            return k.parse().expect("a pid");
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "unshare forked nothing"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Kills the container's init (all of its PID namespace goes with it) and
/// reaps `unshare`, on every path.
struct Container {
    unshare: Option<Child>,
    init: Option<i32>,
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Some(p) = self.init {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
        if let Some(mut c) = self.unshare.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(p) = self.init {
            let t = Instant::now();
            while Path::new(&format!("/proc/{p}")).exists() && t.elapsed() < Duration::from_secs(5)
            {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

impl Container {
    /// The dump ended the tree: `unshare` is reaped, nothing is left to kill.
    fn ended(&mut self) {
        if let Some(mut c) = self.unshare.take() {
            let _ = c.wait();
        }
        self.init = None;
    }
}

/// `crit show IMAGE` (Debian's criu package), its whitespace left out.
fn crit_show(image: &Path) -> String {
    let crit = Command::new("/usr/bin/crit")
        .args(["show"])
        .arg(image)
        .output()
        .expect("crit (Debian's criu package)");
    String::from_utf8_lossy(&crit.stdout)
        .split_whitespace()
        .collect()
}

/// Dump the container's tree (its init `pid`) into `img`; the dump ends
/// it: `unshare` is reaped and nothing is left to kill.
fn dump_container(ctr: &mut Container, pid: i32, img: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_stasis"))
        .args(["dump", "-t", &pid.to_string(), "-D"])
        .arg(img)
        .output()
        .expect("run stasis");
    assert!(
        out.status.success(),
        "dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ctr.ended();
}

/// The mount points of `pid`'s namespace, sorted (a mount made anew comes
/// later in the table than it did; stacking shows in the parents); not
/// the named network namespaces, which `ip netns add` (other tests,
/// running meanwhile) propagates into every namespace sharing /run/netns.
fn mount_points(pid: i32) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_owned))
        .filter(|p| !p.starts_with("/run/netns/"))
        .collect();
    v.sort();
    v
}

#[test]
fn a_tree_in_its_own_pid_mount_net_uts_and_ipc_namespaces_comes_back() {
    need_root();
    let (_tmp, d, img) = workdirs();
    let unshare = Command::new("unshare")
        .args([
            "--fork",
            "--pid",
            "--mount-proc",
            "--mount",
            "--net",
            "--uts",
            "--ipc",
            "python3",
            "-c",
            CONTAINER,
        ])
        .arg(&d)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run unshare (util-linux)");
    let mut ctr = Container {
        init: Some(init_of(unshare.id())),
        unshare: Some(unshare),
    };
    wait_for(&d.join("ready"), 20);
    let init = ctr.init.expect("init");
    let mounts_before = mount_points(init);
    let out = Command::new(env!("CARGO_BIN_EXE_stasis"))
        .args([
            "dump",
            "-t",
            &init.to_string(),
            "--tcp-established",
            "-o",
            "dump.log",
            "-v4",
            "-D",
        ])
        .arg(&img)
        .output()
        .expect("run stasis");
    assert!(
        out.status.success(),
        "dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in [
        "mountpoints-1.img",
        "utsns-1.img",
        "ipcns-var-1.img",
        "netns-1.img",
    ] {
        assert!(img.join(name).exists(), "no {name}");
    }
    assert!(
        std::fs::read_dir(&img)
            .expect("images")
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("tmpfs-dev-")),
        "no tmpfs contents image"
    );
    // Independent readers of the network images: iproute2 for its own save
    // format, crit for CRIU's.
    // (`ip rule` has no showdump: its restore, in a namespace of its own.)
    for (args, image, want) in [
        (
            &["ip", "addr", "showdump"][..],
            "ifaddr-1.img",
            "inet 10.9.0.1/24",
        ),
        (
            &["ip", "route", "showdump"][..],
            "route-1.img",
            "10.50.0.0/16 via 10.9.0.2",
        ),
        (
            &["unshare", "--net", "sh", "-c", "ip rule restore && ip rule"][..],
            "rule-1.img",
            "from 10.9.0.0/24 lookup 100",
        ),
    ] {
        let out = Command::new(args[0])
            .args(&args[1..])
            .stdin(std::fs::File::open(img.join(image)).expect(image))
            .output()
            .expect("run ip");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains(want),
            "ip {args:?} < {image}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = Command::new("crit")
        .args(["decode", "-i"])
        .arg(img.join("netdev-1.img"))
        .output()
        .expect("run crit (Debian's criu package)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("\"VETH\"") && text.contains("\"v0\""),
        "crit decode netdev-1.img: {text}"
    );
    ctr.ended();
    let pidfile = img.join("restored.pid");
    let out = Command::new(env!("CARGO_BIN_EXE_stasis"))
        .args([
            "restore",
            "-d",
            "--tcp-established",
            "-o",
            "restore.log",
            "-v4",
            "-D",
        ])
        .arg(&img)
        .arg("--pidfile")
        .arg(&pidfile)
        .output()
        .expect("run stasis");
    assert!(
        out.status.success(),
        "restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored: i32 = wait_for(&pidfile, 5).trim().parse().expect("a pid");
    ctr.init = Some(restored);
    let status = std::fs::read_to_string(format!("/proc/{restored}/status")).expect("status");
    let nspid = status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .expect("NSpid")
        .split_whitespace()
        .last()
        .map(str::to_owned);
    assert_eq!(
        nspid.as_deref(),
        Some("1"),
        "the init's PID in its namespace"
    );
    assert_eq!(mount_points(restored), mounts_before, "the mount table");
    std::fs::write(d.join("check"), "").expect("ask");
    assert_eq!(wait_for(&d.join("answer"), 20), "ok");
}

/// Cut `pages-1.img` of `img` in half: a restore of it fails once the
/// namespaces, the mounts and the tasks exist.
fn cut_pages(img: &Path) {
    let pages = img.join("pages-1.img");
    let len = std::fs::metadata(&pages).expect("pages image").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&pages)
        .and_then(|f| f.set_len(len / 2))
        .expect("truncate the pages");
}

/// Start `cmd` (which ends with `python3 -c`) on `script` with arguments
/// `d` and `marker`, as a container whose init is unshare's child; wait
/// until the script wrote `d/ready`.
fn start_tree(cmd: Command, script: &str, d: &Path, marker: &str) -> Container {
    let ctr = spawn_tree(cmd, script, d, marker);
    wait_for(&d.join("ready"), 20);
    ctr
}

/// [`start_tree`] without waiting for it to be ready.
fn spawn_tree(mut cmd: Command, script: &str, d: &Path, marker: &str) -> Container {
    let unshare = cmd
        .arg(script)
        .arg(d)
        .arg(marker)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run unshare (util-linux)");
    Container {
        init: Some(init_of(unshare.id())),
        unshare: Some(unshare),
    }
}

/// Processes whose command line holds `marker`.
fn with_marker(marker: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
        })
        .collect()
}

#[test]
fn a_failed_restore_of_a_tree_with_namespaces_leaves_nothing_behind() {
    need_root();
    let (_tmp, d, img) = workdirs();
    let marker = format!("stasis-failsafe-{}", std::process::id());
    let script = format!(
        "import os, subprocess, sys, time\n\
         d = sys.argv[1]\n\
         os.makedirs(d + '/t', exist_ok=True)\n\
         subprocess.check_call(['mount', '-t', 'tmpfs', 'ctr', d + '/t'])\n\
         open(d + '/t/f', 'w').write('x' * 100000)\n\
         buf = bytearray(b'y' * 4000000)\n\
         open(d + '/ready', 'w').write('{marker}')\n\
         while True:\n    time.sleep(1)\n"
    );
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--fork",
        "--pid",
        "--mount-proc",
        "--mount",
        "--uts",
        "--ipc",
        "python3",
        "-c",
    ]);
    let mut ctr = start_tree(cmd, &script, &d, &marker);
    let init = ctr.init.expect("init");
    dump_container(&mut ctr, init, &img);
    let t = Instant::now();
    while !with_marker(&marker).is_empty() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        with_marker(&marker).is_empty(),
        "the dumped tree is still there"
    );
    // The pages are cut short: the restore fails once the namespaces, the
    // mounts and the tasks exist.
    cut_pages(&img);
    let mounts_before = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let out = Command::new(env!("CARGO_BIN_EXE_stasis"))
        .args(["restore", "-d", "-D"])
        .arg(&img)
        .output()
        .expect("run stasis");
    assert!(!out.status.success(), "the restore of cut pages succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pages-1.img"),
        "the error does not name the image: {err}"
    );
    let t = Instant::now();
    while !with_marker(&marker).is_empty() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let left = with_marker(&marker);
    for &p in &left {
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
    }
    assert!(left.is_empty(), "tasks left behind: {left:?}");
    assert_eq!(
        std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo"),
        mounts_before,
        "mounts changed here"
    );
    assert!(!d.join("t/f").exists(), "the tree's tmpfs is visible here");
}

/// The root file system of a busybox container: busybox (static, Debian's
/// busybox-static) and empty mount points.
fn busybox_rootfs(root: &Path) {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|b| Path::new(b).exists())
        .expect("this test needs busybox (Debian's busybox-static)");
    for d in ["bin", "proc", "tmp", "data", "oldroot", "dev"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    std::fs::copy(busybox, root.join("bin/busybox")).expect("copy busybox");
    // busybox sh gives a background job /dev/null.
    nix::sys::stat::mknod(
        &root.join("dev/null"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .expect("mknod dev/null");
}

/// A container as runtimes make one: its own PID, mount, UTS and IPC
/// namespaces, its root file system bind-mounted and pivot_root'ed into, the
/// old root unmounted, a tmpfs with a file it holds open, its procfs. It is
/// dumped and restored three times with `--root`: it counts on, and sees
/// exactly its own mounts, its executable, directory and file as it did.
/// Its syslogd's socket is named /dev/log inside as before and takes a
/// message. Without `--root` the restore refuses, naming the option, and
/// leaves no task.
#[test]
fn a_pivot_root_container_comes_back_under_root() {
    need_root();
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("rootfs");
    busybox_rootfs(&root);
    let r = root.display();
    let script = format!(
        "mount --make-rprivate /\n\
         mount --bind {r} {r}\n\
         mount -t tmpfs -o size=1m ctmp {r}/tmp\n\
         mount -t proc proc {r}/proc\n\
         echo hello > {r}/tmp/file\n\
         cd {r}\n\
         pivot_root . oldroot\n\
         exec /bin/busybox sh -c '/bin/busybox umount -l /oldroot; exec 3</tmp/file; \
         /bin/busybox syslogd -n -O /data/messages & i=0; \
         while :; do i=$((i+1)); echo $i > /data/count; /bin/busybox sleep 0.05; done'\n"
    );
    let unshare = Command::new("unshare")
        .args(["--fork", "--pid", "--mount", "--uts", "--ipc", "sh", "-c"])
        .arg(&script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run unshare (util-linux)");
    let mut ctr = Container {
        init: Some(init_of(unshare.id())),
        unshare: Some(unshare),
    };
    let count = root.join("data/count");
    let read = || -> u64 {
        std::fs::read_to_string(&count)
            .unwrap_or_default()
            .trim()
            .parse()
            .unwrap_or(0)
    };
    let wait_count = |above: u64| {
        let t = Instant::now();
        while read() <= above {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the count is stuck at {}",
                read()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_count(2);
    let mut pid = ctr.init.expect("init");
    let seen = |pid: i32| {
        let link = |l: &str| {
            std::fs::read_link(format!("/proc/{pid}/{l}"))
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        (mount_points(pid), link("exe"), link("cwd"), link("fd/3"))
    };
    let before = seen(pid);
    assert_eq!(
        before,
        (
            vec!["/".to_owned(), "/proc".to_owned(), "/tmp".to_owned()],
            "/bin/busybox".to_owned(),
            "/".to_owned(),
            "/tmp/file".to_owned()
        )
    );
    let stasis = env!("CARGO_BIN_EXE_stasis");
    for cycle in 0..3 {
        let img = tmp.path().join(format!("img{cycle}"));
        std::fs::create_dir(&img).expect("mkdir");
        dump_container(&mut ctr, pid, &img);
        if cycle == 0 {
            let out = Command::new(stasis)
                .args(["restore", "-d", "-D"])
                .arg(&img)
                .output()
                .expect("run stasis");
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{err}");
            assert!(err.contains("--root"), "{err}");
            assert!(!Path::new(&format!("/proc/{pid}")).exists());
        }
        let pidfile = tmp.path().join(format!("pid{cycle}"));
        let out = Command::new(stasis)
            .args(["restore", "-d", "--root"])
            .arg(&root)
            .arg("--pidfile")
            .arg(&pidfile)
            .arg("-D")
            .arg(&img)
            .output()
            .expect("run stasis");
        assert!(
            out.status.success(),
            "restore {cycle}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pid = wait_for(&pidfile, 5).trim().parse().expect("pid");
        ctr.init = Some(pid);
        let now = read();
        wait_count(now + 2);
        assert_eq!(seen(pid), before, "after restore {cycle}");
        let file =
            std::fs::read_to_string(format!("/proc/{pid}/root/tmp/file")).expect("tmpfs file");
        assert_eq!(file, "hello\n");
        // syslogd's socket is named /dev/log inside, as it was, and takes
        // a message sent to that name.
        let unix = std::fs::read_to_string(format!("/proc/{pid}/net/unix")).expect("net/unix");
        assert!(
            unix.lines().any(|l| l.ends_with(" /dev/log")),
            "after restore {cycle}: {unix}"
        );
        let tag = format!("stasis-cycle-{cycle}");
        let logged = Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-a", "/bin/busybox", "logger", &tag])
            .status()
            .expect("nsenter");
        assert!(logged.success());
        let t = Instant::now();
        while !std::fs::read_to_string(root.join("data/messages"))
            .unwrap_or_default()
            .contains(&tag)
        {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "syslogd did not log {tag}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // Nothing of the tree's mounts reached the host.
    let host = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!host.contains(&root.display().to_string()), "{host}");
}

/// Deletes a network namespace made for a test (`ip netns add`), on every
/// path.
struct Netns(String);

impl Netns {
    /// `ip netns add NAME`; deleted again on every path.
    fn add(name: &str) -> Netns {
        let ns = Netns(name.to_owned());
        assert!(
            Command::new("ip")
                .args(["netns", "add", name])
                .status()
                .expect("ip netns add")
                .success(),
            "ip netns add {name}"
        );
        ns
    }
}

impl Netns {
    /// Run stasis with `args` in the namespace, joined with nsenter (not
    /// `ip netns exec`, which gives it a copy of the mount namespace).
    fn stasis(&self, args: &[&str]) -> std::process::Output {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.0))
            .arg(env!("CARGO_BIN_EXE_stasis"))
            .args(args)
            .output()
            .expect("nsenter (util-linux)")
    }

    /// Run `args` in the namespace; its output, or a panic with its errors.
    fn ok(&self, args: &[&str]) -> String {
        let out = in_netns(&self.0, args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn in_netns(ns: &str, args: &[&str]) -> std::process::Output {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .expect("run ip netns exec (iproute2)")
}

/// A tree in a network namespace of its own with a veth pair to the outside
/// (a namespace the test made, where stasis runs too) and an nftables
/// table: a restore that fails once the namespace, the pair and the
/// ruleset exist leaves no device outside and no task.
#[test]
fn a_failed_restore_of_a_network_namespace_leaves_no_device_outside() {
    need_root();
    let ns = Netns::add(&format!("stasis-failnet-{}", std::process::id()));
    let (_tmp, d, img) = workdirs();
    let marker = format!("stasis-failnet-{}", std::process::id());
    let script = format!(
        "import os, subprocess, sys, time\n\
         d = sys.argv[1]\n\
         subprocess.check_call(['ip', 'link', 'set', 'lo', 'up'])\n\
         subprocess.check_call(['nft', 'add table inet kept; add chain inet kept c {{ type filter hook input priority 0; }}'])\n\
         buf = bytearray(b'y' * 4000000)\n\
         open(d + '/ready', 'w').write('{marker}')\n\
         while True:\n    time.sleep(1)\n"
    );
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns", "exec", &ns.0, "unshare", "--fork", "--net", "python3", "-c",
    ]);
    let mut ctr = start_tree(cmd, &script, &d, &marker);
    let init = ctr.init.expect("init");
    let made = in_netns(
        &ns.0,
        &[
            "ip",
            "link",
            "add",
            "hostend",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &init.to_string(),
        ],
    );
    assert!(
        made.status.success(),
        "veth: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    let stasis = env!("CARGO_BIN_EXE_stasis");
    let img_s = img.to_str().expect("utf8");
    let out = in_netns(
        &ns.0,
        &[stasis, "dump", "-t", &init.to_string(), "-D", img_s],
    );
    assert!(
        out.status.success(),
        "dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ctr.ended();
    for name in ["netdev-1.img", "nftables-netlink-1.img"] {
        assert!(img.join(name).exists(), "no {name}");
    }
    let has_hostend = || {
        String::from_utf8_lossy(&in_netns(&ns.0, &["ip", "-o", "link"]).stdout).contains("hostend")
    };
    let t = Instant::now();
    while has_hostend() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!has_hostend(), "the dumped tree's veth is still outside");
    // The pages are cut short: the restore fails once the namespace, the
    // pair and the ruleset exist.
    cut_pages(&img);
    let out = in_netns(
        &ns.0,
        &[
            stasis,
            "restore",
            "-d",
            "-D",
            img_s,
            "--external",
            "veth[eth0]:hostend",
        ],
    );
    assert!(!out.status.success(), "the restore of cut pages succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pages-1.img"),
        "the error does not name the image: {err}"
    );
    let t = Instant::now();
    while (has_hostend() || !with_marker(&marker).is_empty())
        && t.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left = with_marker(&marker);
    for &p in &left {
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
    }
    assert!(left.is_empty(), "tasks left behind: {left:?}");
    assert!(!has_hostend(), "the restore's veth is left outside");
    let tables =
        String::from_utf8_lossy(&in_netns(&ns.0, &["nft", "list", "tables"]).stdout).into_owned();
    assert!(
        !tables.contains("kept"),
        "the tree's table is outside: {tables}"
    );
}

/// A tree in a network namespace of its own whose device is a macvlan on
/// a device outside it (a veth end in a namespace the test made, where
/// stasis runs too): restored with `--external macvlan[mv0]:lower0`, the
/// macvlan comes back on that device with its mode and MAC address, and a
/// server in the tree answers a client outside through it.
#[test]
fn a_macvlan_on_a_device_outside_comes_back_on_it() {
    need_root();
    let ns = Netns::add(&format!("stasis-mv-{}", std::process::id()));
    let ok = |args: &[&str]| ns.ok(args);
    ok(&[
        "sh",
        "-c",
        "ip link set lo up && ip link add lower0 type veth peer name lower1 && \
         ip link set lower0 up && ip link set lower1 up && \
         ip link add mvh link lower0 type macvlan mode bridge && \
         ip addr add 10.9.0.1/24 dev mvh && ip link set mvh up",
    ]);
    let (_tmp, d, img) = workdirs();
    let marker = format!("stasis-mv-{}", std::process::id());
    let script = format!(
        "import os, socket, subprocess, sys, time\n\
         d = sys.argv[1]\n\
         open(d + '/ready', 'w').write('{marker}')\n\
         while subprocess.call(['ip', 'link', 'show', 'mv0'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):\n    time.sleep(0.05)\n\
         subprocess.check_call(['ip', 'link', 'set', 'lo', 'up'])\n\
         subprocess.check_call(['ip', 'addr', 'add', '10.9.0.2/24', 'dev', 'mv0'])\n\
         subprocess.check_call(['ip', 'link', 'set', 'mv0', 'up'])\n\
         l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         l.bind(('10.9.0.2', 8000)); l.listen(8)\n\
         open(d + '/serving', 'w').write('yes')\n\
         while True:\n    c, _ = l.accept(); c.sendall(b'pong'); c.close()\n"
    );
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns", "exec", &ns.0, "unshare", "--fork", "--net", "python3", "-c",
    ]);
    let mut ctr = start_tree(cmd, &script, &d, &marker);
    let init = ctr.init.expect("init");
    ok(&[
        "ip", "link", "add", "mv0", "link", "lower0", "type", "macvlan", "mode", "bridge",
    ]);
    ok(&["ip", "link", "set", "mv0", "netns", &init.to_string()]);
    wait_for(&d.join("serving"), 20);
    let ask = || {
        in_netns(
            &ns.0,
            &[
                "python3",
                "-c",
                "import socket; s = socket.create_connection(('10.9.0.2', 8000), timeout=5); print(s.recv(10).decode())",
            ],
        )
    };
    assert_eq!(String::from_utf8_lossy(&ask().stdout).trim(), "pong");
    let link = |pid: i32| {
        let out = Command::new("nsenter")
            .args([
                "-t",
                &pid.to_string(),
                "-n",
                "ip",
                "-d",
                "-o",
                "link",
                "show",
                "mv0",
            ])
            .output()
            .expect("nsenter (util-linux)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let before = link(init);
    let mac = before
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    assert!(
        !mac.is_empty() && before.contains("macvlan mode bridge"),
        "{before}"
    );
    let stasis = env!("CARGO_BIN_EXE_stasis");
    let img_s = img.to_str().expect("utf8");
    ok(&[stasis, "dump", "-t", &init.to_string(), "-D", img_s]);
    ctr.ended();
    // CRIU's crit reads the device as a macvlan in bridge mode (4).
    let shown = crit_show(&img.join("netdev-1.img"));
    assert!(
        shown.contains("\"type\":\"MACVLAN\"") && shown.contains("\"macvlan\":{\"mode\":4"),
        "crit show netdev-1.img: {shown}"
    );
    let out = in_netns(&ns.0, &[stasis, "restore", "-d", "-D", img_s]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("macvlan[NAME]:OUTER"),
        "a restore not told where the macvlan goes: {err}"
    );
    ok(&[
        stasis,
        "restore",
        "-d",
        "-D",
        img_s,
        "--external",
        "macvlan[mv0]:lower0",
    ]);
    ctr.init = Some(init);
    let after = link(init);
    assert!(
        after.contains(&mac) && after.contains("macvlan mode bridge"),
        "before: {before}\nafter: {after}"
    );
    assert_eq!(String::from_utf8_lossy(&ask().stdout).trim(), "pong");
}

/// A process whose network namespace is the engine's (both run in a
/// namespace the test made) and which holds a file on a tun device of it:
/// the file of a persistent tap is attached to that tap again at the
/// restore; one on a device that is not persistent (it would be gone) is
/// refused by name, and its process keeps running.
#[test]
fn a_tun_file_on_a_persistent_device_outside_the_tree_is_attached_again() {
    need_root();
    let ns = Netns::add(&format!("stasis-tun-{}", std::process::id()));
    let ok = |args: &[&str]| ns.ok(args);
    ok(&[
        "sh",
        "-c",
        "ip link set lo up && ip tuntap add ptap0 mode tap && ip link set ptap0 up",
    ]);
    // Joined with nsenter, not `ip netns exec`: the trees and stasis share
    // the test's mount namespace, so no copy of it (with the mounts other
    // tests add and remove under /run/netns) is the tree's.
    let netns_file = format!("--net=/run/netns/{}", ns.0);
    let engine = |args: &[&str]| ns.stasis(args);
    let engine_ok = |args: &[&str]| {
        let out = engine(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // A process attached to device `dev` (made when missing, then not
    // persistent), in a PID namespace of its own.
    let start = |dev: &str, d: &Path, marker: &str| {
        let script = format!(
            "import fcntl, os, struct, sys, time\n\
             f = os.open('/dev/net/tun', os.O_RDWR | os.O_NONBLOCK)\n\
             fcntl.ioctl(f, 0x400454ca, struct.pack('16sh22x', b'{dev}', 0x1002))\n\
             open(sys.argv[1] + '/ready', 'w').write(str(f))\n\
             while True:\n    time.sleep(1)\n"
        );
        let mut cmd = Command::new("nsenter");
        cmd.args([
            netns_file.as_str(),
            "unshare",
            "--fork",
            "--pid",
            "python3",
            "-c",
        ]);
        start_tree(cmd, &script, d, marker)
    };
    // Not persistent: refused, and the process goes on.
    let (_tmp, d, img) = workdirs();
    let marker = format!("stasis-vtun-{}", std::process::id());
    let ctr = start(&format!("vtun{}", std::process::id() % 1000), &d, &marker);
    let init = ctr.init.expect("init");
    let img_s = img.to_str().expect("utf8");
    let out = engine(&["dump", "-t", &init.to_string(), "-D", img_s]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not persistent"),
        "a tun file on a device that is not persistent: {err}"
    );
    assert!(
        kill(Pid::from_raw(init), None).is_ok(),
        "the refused dump did not leave the task running"
    );
    drop(ctr);
    // Persistent: attached to it again.
    let (_tmp, d, img) = workdirs();
    let marker = format!("stasis-ptap-{}", std::process::id());
    let mut ctr = start("ptap0", &d, &marker);
    let init = ctr.init.expect("init");
    let fd = std::fs::read_to_string(d.join("ready")).expect("ready");
    let img_s = img.to_str().expect("utf8");
    engine_ok(&["dump", "-t", &init.to_string(), "-D", img_s]);
    ctr.ended();
    let link = || ok(&["ip", "-o", "link", "show", "ptap0"]);
    assert!(link().contains("NO-CARRIER"), "ptap0 still has a file");
    engine_ok(&["restore", "-d", "-D", img_s]);
    let restored = with_marker(&marker);
    let _guard = Container {
        unshare: None,
        init: restored.first().copied(),
    };
    assert_eq!(restored.len(), 1, "restored: {restored:?}");
    let fdinfo = std::fs::read_to_string(format!("/proc/{}/fdinfo/{}", restored[0], fd.trim()))
        .expect("the restored fdinfo");
    assert!(fdinfo.contains("iff:\tptap0"), "{fdinfo}");
    assert!(
        !link().contains("NO-CARRIER"),
        "ptap0 has no file: {}",
        link()
    );
}

/// A tree in a network namespace of its own with a veth pair to the
/// outside (a namespace the test made, where stasis and the client run)
/// and an established TCP connection with a client outside: dumped and
/// restored with `--tcp-established`, the connection is locked inside the
/// tree's namespace from the dump until the restored tree runs, so a line
/// the client sends in between is taken once and answered after the
/// restore, and no lock is left.
#[test]
fn a_connection_to_a_peer_outside_the_trees_network_namespace_is_locked_and_kept() {
    need_root();
    let ns = Netns::add(&format!("stasis-lock-{}", std::process::id()));
    let ok = |args: &[&str]| ns.ok(args);
    ok(&["ip", "link", "set", "lo", "up"]);
    let (_tmp, d, img) = workdirs();
    let marker = format!("stasis-lock-{}", std::process::id());
    // An upper-casing echo server on the tree's end of the veth.
    let script = "import socket, sys, time\n\
         d = sys.argv[1]\n\
         while True:\n\
         \x20   try:\n\
         \x20       l = socket.socket(); l.bind(('10.77.0.2', 7777)); break\n\
         \x20   except OSError:\n\
         \x20       time.sleep(0.05)\n\
         l.listen(1)\n\
         open(d + '/ready', 'w').write('x')\n\
         c, _ = l.accept()\n\
         while True:\n\
         \x20   b = c.recv(100)\n\
         \x20   if not b: break\n\
         \x20   c.sendall(b.upper())\n";
    // Joined with nsenter, not `ip netns exec`: the tree, stasis and the
    // client share the test's mount namespace, so no copy of it (with the
    // mounts other tests add and remove under /run/netns) is the tree's.
    let netns_file = format!("--net=/run/netns/{}", ns.0);
    let mut cmd = Command::new("nsenter");
    cmd.args([
        netns_file.as_str(),
        "unshare",
        "--fork",
        "--pid",
        "--net",
        "python3",
        "-c",
    ]);
    // The server binds once its address is there (made below).
    let mut ctr = spawn_tree(cmd, script, &d, &marker);
    let init = ctr.init.expect("init").to_string();
    ok(&[
        "ip", "link", "add", "hostend", "type", "veth", "peer", "name", "eth0", "netns", &init,
    ]);
    ok(&[
        "sh",
        "-c",
        "ip addr add 10.77.0.1/24 dev hostend && ip link set hostend up",
    ]);
    let inside = |cmd: &str| {
        let out = Command::new("nsenter")
            .args(["-t", &init, "-n", "sh", "-c", cmd])
            .output()
            .expect("nsenter (util-linux)");
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    inside("ip link set lo up && ip addr add 10.77.0.2/24 dev eth0 && ip link set eth0 up");
    wait_for(&d.join("ready"), 20);
    // The client outside: one line before the dump, one while the tree is
    // dumped and gone, each answer written to a file.
    let client = "import socket, sys, time\n\
         d = sys.argv[1]\n\
         s = socket.create_connection(('10.77.0.2', 7777), timeout=60)\n\
         s.sendall(b'before\\n'); a = s.recv(100)\n\
         open(d + '/a1', 'w').write(a.decode())\n\
         while not __import__('os').path.exists(d + '/dumped'): time.sleep(0.01)\n\
         s.sendall(b'during\\n'); a = s.recv(100)\n\
         open(d + '/a2', 'w').write(a.decode())\n";
    let mut cl = Command::new("nsenter")
        .args([netns_file.as_str(), "python3", "-c", client])
        .arg(&d)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    struct Reap<'a>(&'a mut Child);
    impl Drop for Reap<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _reap = Reap(&mut cl);
    assert_eq!(wait_for(&d.join("a1"), 20), "BEFORE\n");
    let img_s = img.to_str().expect("utf8");
    let engine = |args: &[&str]| ns.stasis(args);
    let out = engine(&["dump", "-t", &init, "-D", img_s, "--tcp-established"]);
    assert!(
        out.status.success(),
        "dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ctr.ended();
    // The dump locked it (CRIU's crit reads the lock's method: nftables).
    let inv = crit_show(&img.join("inventory.img"));
    assert!(
        inv.contains("\"network_lock_method\":2"),
        "inventory: {inv}"
    );
    // The client sends now, to a tree that is gone.
    std::fs::write(d.join("dumped"), "").expect("dumped");
    std::thread::sleep(Duration::from_millis(300));
    let out = engine(&[
        "restore",
        "-d",
        "-D",
        img_s,
        "--tcp-established",
        "--external",
        "veth[eth0]:hostend",
    ]);
    assert!(
        out.status.success(),
        "restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored = with_marker(&marker);
    let _guard = Container {
        unshare: None,
        init: restored.first().copied(),
    };
    assert_eq!(restored.len(), 1, "restored: {restored:?}");
    // The outer end is the caller's to set up again, as a runtime does.
    ok(&[
        "sh",
        "-c",
        "ip addr add 10.77.0.1/24 dev hostend && ip link set hostend up",
    ]);
    assert_eq!(wait_for(&d.join("a2"), 30), "DURING\n");
    let tables = Command::new("nsenter")
        .args([
            "-t",
            &restored[0].to_string(),
            "-n",
            "nft",
            "list",
            "tables",
        ])
        .output()
        .expect("nsenter");
    let tables = String::from_utf8_lossy(&tables.stdout).into_owned();
    assert!(!tables.contains("stasis"), "a lock is left: {tables}");
}
