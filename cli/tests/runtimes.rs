#![allow(clippy::tests_outside_test_module)]
//! Container runtimes driving stasis as they drive CRIU, finding `criu`
//! on PATH (a symlink to stasis here): Debian's runc talks CRIU's RPC
//! through `criu swrk`; a busybox container with a counter and httpd is
//! checkpointed and restored twice, checkpointed with --leave-running, and
//! restored under a new container id, and a terminal container comes back
//! on a new console handed to runc. Podman drives runc; LXC runs `criu
//! dump` and `criu restore`. Needs root, runc, podman, LXC and a static
//! busybox (ci/setup installs them): fails without them.

mod common;

use std::path::{Path, PathBuf};

use common::{read_counter, wait_counter};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn need(cond: bool, what: &str) {
    assert!(cond, "this test needs {what}");
}

/// Run `cmd` with stdin from /dev/null and its output in files named
/// from `base` (.out, .err), read back once it exits: a daemon it leaves
/// (a detached container's monitor) inherits them, and would hold a pipe
/// open for good.
fn logged(mut cmd: Command, base: &Path) -> Output {
    let log = |k: &str| {
        std::fs::File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(base.with_extension(k))
            .expect("log file")
    };
    let (out, err) = (log("out"), log("err"));
    let status = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup"))
        .stderr(err.try_clone().expect("dup"))
        .status()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    let read = |mut f: std::fs::File| {
        use std::io::{Read, Seek};
        let mut v = Vec::new();
        let _ = f.rewind().and_then(|()| f.read_to_end(&mut v));
        v
    };
    Output {
        status,
        stdout: read(out),
        stderr: read(err),
    }
}

/// A runc container of this test: deleted (killed) on every path.
struct Ctr {
    ids: Vec<String>,
    path: std::ffi::OsString,
    bundle: PathBuf,
    calls: std::sync::atomic::AtomicUsize,
}

impl Ctr {
    /// runc's output goes to files: a detached container inherits its
    /// stdio, and would hold a pipe open for good (a log file, as a user
    /// would give it).
    fn runc(&self, args: &[&str]) -> Output {
        let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut cmd = Command::new("runc");
        cmd.args(args)
            .env("PATH", &self.path)
            .current_dir(&self.bundle);
        logged(cmd, &self.bundle.with_file_name(format!("runc-{n}")))
    }

    fn ok(&self, args: &[&str]) {
        let out = self.runc(args);
        assert!(
            out.status.success(),
            "runc {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn status(&self, id: &str) -> String {
        let out = self.runc(&["state", id]);
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| l.trim().strip_prefix("\"status\": \""))
            .map(|s| s.trim_end_matches(['"', ',']).to_owned())
            .unwrap_or_else(|| "gone".into())
    }
}

impl Drop for Ctr {
    fn drop(&mut self) {
        for id in &self.ids {
            let _ = self.runc(&["delete", "-f", id]);
        }
    }
}

/// A root file system of a static busybox (and sh) with the directories
/// a container needs.
fn busybox_rootfs(root: &Path) {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|b| Path::new(b).exists());
    need(
        busybox.is_some(),
        "a static busybox (Debian's busybox-static)",
    );
    for d in ["bin", "proc", "sys", "dev", "tmp", "www"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    std::fs::copy(busybox.unwrap_or_default(), root.join("bin/busybox")).expect("busybox");
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).expect("symlink sh");
}

/// A PATH whose `criu` is stasis (a symlink in `tmp/bin`), as a user
/// would set it up.
fn criu_on_path(tmp: &Path) -> std::ffi::OsString {
    let bin = tmp.join("bin");
    std::fs::create_dir(&bin).expect("mkdir bin");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_stasis"), bin.join("criu")).expect("symlink");
    let mut path = bin.into_os_string();
    path.push(":");
    path.push(std::env::var_os("PATH").unwrap_or_default());
    path
}

/// A busybox bundle in `tmp` whose container runs `script` (with a cgroup
/// namespace too, as podman and docker give on cgroup v2, and a terminal
/// if asked), and runc set up to find stasis as `criu` on PATH, as a user
/// would; the container is `stasis-test-PID-NAME`.
fn busybox_bundle(tmp: &Path, name: &str, script: &str, terminal: bool) -> (Ctr, String) {
    need(
        nix::unistd::geteuid().is_root(),
        "root: runc makes containers",
    );
    need(
        Command::new("runc").arg("--version").output().is_ok(),
        "runc (Debian's runc package)",
    );
    let bundle = tmp.join("bundle");
    busybox_rootfs(&bundle.join("rootfs"));
    let path = criu_on_path(tmp);
    let id = format!("stasis-test-{}-{name}", std::process::id());
    let ctr = Ctr {
        ids: vec![id.clone()],
        path,
        bundle: bundle.clone(),
        calls: std::sync::atomic::AtomicUsize::new(0),
    };
    ctr.ok(&["spec"]);
    let spec = bundle.join("config.json");
    let text = std::fs::read_to_string(&spec).expect("config.json");
    let quoted = format!("{script:?}");
    let text = text
        .replace("\"terminal\": true", &format!("\"terminal\": {terminal}"))
        .replace("\"readonly\": true", "\"readonly\": false")
        .replace(
            "\"type\": \"mount\"\n\t\t\t}",
            "\"type\": \"mount\"\n\t\t\t},\n\t\t\t{\n\t\t\t\t\"type\": \"cgroup\"\n\t\t\t}",
        )
        .replace("\"sh\"\n\t\t]", &format!("\"sh\", \"-c\", {quoted}\n\t\t]"));
    assert!(
        text.contains(&quoted) && text.contains("\"cgroup\""),
        "runc spec changed its layout: {text}"
    );
    std::fs::write(&spec, text).expect("config.json");
    (ctr, id)
}

#[test]
fn runc_checkpoints_and_restores_a_busybox_container_through_stasis() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut ctr, id) = busybox_bundle(
        tmp.path(),
        "web",
        "/bin/busybox httpd -p 127.0.0.1:8080 -h /www; i=0; while true; do i=$((i+1)); echo $i > /tmp/count; /bin/busybox sleep 0.1; done",
        false,
    );
    let root = ctr.bundle.join("rootfs");
    std::fs::write(root.join("www/index.html"), "served by a restored httpd\n").expect("www");
    ctr.ok(&["run", "-d", &id]);
    let count = root.join("tmp/count");
    wait_counter(&count, 2);
    // Inside the container's network namespace (httpd may take a moment
    // to listen after the container starts).
    let http = |ctr: &Ctr, id: &str| {
        let t = Instant::now();
        loop {
            let out = ctr.runc(&[
                "exec",
                id,
                "/bin/busybox",
                "wget",
                "-qO-",
                "http://127.0.0.1:8080/",
            ]);
            let got = String::from_utf8_lossy(&out.stdout).into_owned();
            if !got.is_empty() || t.elapsed() > Duration::from_secs(5) {
                return got;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert_eq!(http(&ctr, &id), "served by a restored httpd\n");
    for cycle in 0..2 {
        let img = tmp.path().join(format!("img{cycle}"));
        let work = tmp.path().join(format!("work{cycle}"));
        let (img_s, work_s) = (img.to_str().expect("utf8"), work.to_str().expect("utf8"));
        ctr.ok(&[
            "checkpoint",
            "--image-path",
            img_s,
            "--work-path",
            work_s,
            &id,
        ]);
        assert_ne!(
            ctr.status(&id),
            "running",
            "checkpoint {cycle} left the container running"
        );
        let before = read_counter(&count);
        ctr.ok(&[
            "restore",
            "-d",
            "--image-path",
            img_s,
            "--work-path",
            work_s,
            &id,
        ]);
        assert_eq!(ctr.status(&id), "running", "after restore {cycle}");
        let now = wait_counter(&count, before);
        wait_counter(&count, now + 2);
        assert_eq!(
            http(&ctr, &id),
            "served by a restored httpd\n",
            "after restore {cycle}"
        );
        let log = std::fs::read_to_string(work.join("restore.log")).unwrap_or_default();
        assert!(log.contains("restore: done"), "{log}");
        // Its cgroup namespace is back: the container sees itself at the
        // root of every hierarchy.
        let out = ctr.runc(&["exec", &id, "/bin/busybox", "cat", "/proc/1/cgroup"]);
        let cg = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            !cg.is_empty() && cg.lines().all(|l| l.ends_with(":/")),
            "the container's cgroups as it sees them after restore {cycle}: {cg}"
        );
    }
    // --leave-running: the container counts on; its images restore under
    // a new id once it is gone.
    let img = tmp.path().join("img-lr");
    let img_s = img.to_str().expect("utf8");
    ctr.ok(&["checkpoint", "--leave-running", "--image-path", img_s, &id]);
    assert_eq!(ctr.status(&id), "running");
    let now = read_counter(&count);
    wait_counter(&count, now + 2);
    ctr.ok(&["delete", "-f", &id]);
    let new_id = format!("{id}-new");
    ctr.ids.push(new_id.clone());
    let before = read_counter(&count);
    ctr.ok(&["restore", "-d", "--image-path", img_s, &new_id]);
    assert_eq!(ctr.status(&new_id), "running");
    let now = wait_counter(&count, before);
    wait_counter(&count, now + 2);
    assert_eq!(http(&ctr, &new_id), "served by a restored httpd\n");
}

/// `runc checkpoint --tcp-established` of a container whose processes
/// talk over TCP inside it: a client sends a numbered line every 50 ms to a
/// server that writes what it gets to a file. After the restore the same
/// connection carries the lines on, in order, none lost or doubled.
#[test]
fn runc_checkpoints_and_restores_a_tcp_connection_inside_the_container() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (ctr, id) = busybox_bundle(
        tmp.path(),
        "tcp",
        "(/bin/busybox sleep 1000000 | /bin/busybox nc -l -p 9000 > /tmp/got) & sleep 0.3; \
         i=0; while true; do i=$((i+1)); echo $i; echo $i > /tmp/count; /bin/busybox sleep 0.05; done \
         | /bin/busybox nc 127.0.0.1 9000",
        false,
    );
    ctr.ok(&["run", "-d", &id]);
    let root = ctr.bundle.join("rootfs");
    let got = root.join("tmp/got");
    // Complete lines only: the server may be writing the last one.
    let lines = || {
        let text = std::fs::read_to_string(&got).unwrap_or_default();
        let end = text.rfind('\n').map_or(0, |i| i + 1);
        text[..end]
            .lines()
            .filter_map(|l| l.parse::<u64>().ok())
            .collect::<Vec<u64>>()
    };
    let t = Instant::now();
    while lines().len() < 5 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the server got no lines"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for cycle in 0..2 {
        let img = tmp.path().join(format!("img{cycle}"));
        let img_s = img.to_str().expect("utf8");
        ctr.ok(&[
            "checkpoint",
            "--tcp-established",
            "--image-path",
            img_s,
            &id,
        ]);
        let before = lines().len();
        ctr.ok(&[
            "restore",
            "-d",
            "--tcp-established",
            "--image-path",
            img_s,
            &id,
        ]);
        let t = Instant::now();
        while lines().len() < before + 10 {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "after restore {cycle} the connection carries nothing: {} lines",
                lines().len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let all = lines();
    let want: Vec<u64> = (1..=all.len() as u64).collect();
    assert_eq!(all, want, "the lines the server got");
}

/// A console socket as `runc --console-socket` wants one: each pty master
/// sent to it (with the message's text: runc's pty name at create,
/// "orphan-pts-master" from a restore) comes out of the returned channel.
fn console_socket(path: &Path) -> std::sync::mpsc::Receiver<(String, std::os::fd::OwnedFd)> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let listener = std::os::unix::net::UnixListener::bind(path).expect("bind the console socket");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let mut buf = [0u8; 256];
            let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
            let mut cmsg = RecvAncillaryBuffer::new(&mut space);
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let Ok(msg) = rustix::net::recvmsg(&conn, &mut iov, &mut cmsg, RecvFlags::empty())
            else {
                continue;
            };
            let text = String::from_utf8_lossy(&buf[..msg.bytes]).into_owned();
            for m in cmsg.drain() {
                if let RecvAncillaryMessage::ScmRights(fds) = m {
                    for fd in fds {
                        if tx.send((text.clone(), fd)).is_err() {
                            return;
                        }
                    }
                }
            }
        }
    });
    rx
}

/// Write `line` to the pty master and read until `want` comes back (the
/// container echoes what it reads); all that was read.
fn converse(master: &std::os::fd::OwnedFd, line: &str, want: &str) -> String {
    use std::os::fd::AsFd;
    nix::unistd::write(master, format!("{line}\n").as_bytes()).expect("write to the console");
    let mut got = Vec::new();
    let t = Instant::now();
    while !String::from_utf8_lossy(&got).contains(want) && t.elapsed() < Duration::from_secs(10) {
        let mut fds = [nix::poll::PollFd::new(
            master.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(200u16)).unwrap_or(0) > 0 {
            let mut b = [0u8; 1024];
            match nix::unistd::read(master, &mut b) {
                Ok(n) if n > 0 => got.extend_from_slice(&b[..n]),
                _ => break,
            }
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// `runc run -t` with a console socket: the container's stdio is a pty of
/// its own devpts, /dev/console a bind of it, the master runc's caller's.
/// Checkpointed and restored twice, the new master comes to the console
/// socket each time ("orphan-pts-master"), the shell answers through it,
/// holds the terminal as its controlling one in the foreground, with the
/// window size it had, and counts on.
#[test]
fn runc_checkpoints_and_restores_a_terminal_container_through_its_console_socket() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (ctr, id) = busybox_bundle(
        tmp.path(),
        "tty",
        "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; read -t 0.1 l && echo \"got:$l\"; done",
        true,
    );
    let sock = tmp.path().join("console.sock");
    let masters = console_socket(&sock);
    let sock_s = sock.to_str().expect("utf8");
    ctr.ok(&["run", "-d", "--console-socket", sock_s, &id]);
    let (_, mut master) = masters
        .recv_timeout(Duration::from_secs(10))
        .expect("runc sent no pty master");
    let count = ctr.bundle.join("rootfs/tmp/count");
    wait_counter(&count, 2);
    let got = converse(&master, "zero", "got:zero");
    assert!(got.contains("got:zero"), "before the checkpoint: {got:?}");
    let mut ws = rustix::termios::tcgetwinsize(&master).expect("TIOCGWINSZ");
    (ws.ws_row, ws.ws_col) = (33, 111);
    rustix::termios::tcsetwinsize(&master, ws).expect("TIOCSWINSZ");
    for cycle in 0..2 {
        let img = tmp.path().join(format!("img{cycle}"));
        let img_s = img.to_str().expect("utf8");
        ctr.ok(&["checkpoint", "--image-path", img_s, &id]);
        assert_ne!(ctr.status(&id), "running", "checkpoint {cycle}");
        if cycle == 0 {
            // From the command line nobody would hold the new master: the
            // restore says so before it makes anything.
            let out = Command::new(env!("CARGO_BIN_EXE_stasis"))
                .args(["restore", "-d", "-D", img_s])
                .output()
                .expect("run stasis");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success() && err.contains("pty 0") && err.contains("orphan_pts_master"),
                "a command-line restore of the terminal container: {err}"
            );
        }
        let before = read_counter(&count);
        ctr.ok(&[
            "restore",
            "-d",
            "--console-socket",
            sock_s,
            "--image-path",
            img_s,
            &id,
        ]);
        assert_eq!(ctr.status(&id), "running", "after restore {cycle}");
        let (text, m) = masters
            .recv_timeout(Duration::from_secs(10))
            .expect("the restore sent no pty master to the console socket");
        assert_eq!(text, "orphan-pts-master", "restore {cycle}");
        master = m;
        let now = wait_counter(&count, before);
        wait_counter(&count, now + 2);
        let word = format!("cycle{cycle}");
        let got = converse(&master, &word, &format!("got:{word}"));
        assert!(
            got.contains(&format!("got:{word}")),
            "after restore {cycle}, the console gave {got:?}"
        );
        let now_ws = rustix::termios::tcgetwinsize(&master).expect("TIOCGWINSZ");
        assert_eq!(
            (now_ws.ws_row, now_ws.ws_col),
            (33, 111),
            "window size after restore {cycle}"
        );
        // The shell's session has the pty as its controlling terminal, with
        // the shell in the foreground (what ^C reaches).
        let state = String::from_utf8_lossy(&ctr.runc(&["state", &id]).stdout).into_owned();
        let pid: i32 = state
            .lines()
            .find_map(|l| l.trim().strip_prefix("\"pid\": "))
            .and_then(|p| p.trim_end_matches(',').parse().ok())
            .expect("runc state gives the pid");
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
        let f: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, r)| r.split(' ').collect())
            .unwrap_or_default();
        assert!(
            f.get(5).is_some_and(|t| *t != "0") && f.get(6) == Some(&pid.to_string().as_str()),
            "after restore {cycle}: tty_nr {:?}, foreground group {:?} (the shell is {pid})",
            f.get(5),
            f.get(6)
        );
    }
}

/// An LXC container of this test, in a directory of its own (`-P`):
/// stopped and destroyed on every path.
struct Lxc {
    dir: PathBuf,
    name: String,
    path: std::ffi::OsString,
}

impl Lxc {
    fn run(&self, tool: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new(tool);
        cmd.args(["-P", self.dir.to_str().expect("utf8"), "-n", &self.name])
            .args(args)
            .env("PATH", &self.path);
        logged(cmd, &self.dir.join(tool))
    }

    fn ok(&self, tool: &str, args: &[&str]) {
        let out = self.run(tool, args);
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn state(&self) -> String {
        String::from_utf8_lossy(&self.run("lxc-info", &["-s", "-H"]).stdout)
            .trim()
            .to_owned()
    }
}

impl Drop for Lxc {
    fn drop(&mut self) {
        let _ = self.run("lxc-stop", &["-k"]);
        let _ = self.run("lxc-destroy", &["-f"]);
    }
}

/// LXC 5 drives CRIU through its command line (`lxc-checkpoint` runs
/// `criu dump` and `criu restore` with its own options: the console as an
/// external terminal and inherited fd, --restore-sibling, --link-remap,
/// --ext-mount-map auto, --cgroup-root at the dump, --skip-in-flight). A
/// busybox container (no network of its own beyond lo, no getty ttys,
/// whose masters LXC keeps) with a counting shell is checkpointed and
/// restored twice with stasis as `criu`: the counter resumes, with the
/// same PIDs inside, and init is back on its console.
#[test]
fn lxc_checkpoints_and_restores_a_busybox_container_through_stasis() {
    need(
        nix::unistd::geteuid().is_root(),
        "root: LXC makes containers",
    );
    need(
        Command::new("lxc-checkpoint")
            .arg("--version")
            .output()
            .is_ok(),
        "LXC (Debian's lxc package)",
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = criu_on_path(tmp.path());
    let conf = tmp.path().join("lxc.conf");
    std::fs::write(&conf, "lxc.net.0.type = empty\n").expect("lxc.conf");
    let lxc = Lxc {
        dir: tmp.path().join("ctrs"),
        name: format!("stasis-{}", std::process::id()),
        path,
    };
    std::fs::create_dir(&lxc.dir).expect("mkdir");
    lxc.ok(
        "lxc-create",
        &["-t", "busybox", "-f", conf.to_str().expect("utf8")],
    );
    let root = lxc.dir.join(&lxc.name).join("rootfs");
    let config = lxc.dir.join(&lxc.name).join("config");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        text.lines()
            .filter(|l| !l.starts_with("lxc.tty.max"))
            .chain(["lxc.tty.max = 0"])
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .expect("config");
    let inittab = root.join("etc/inittab");
    let text = std::fs::read_to_string(&inittab).expect("inittab");
    let text: String = text
        .lines()
        .filter(|l| !l.contains("getty"))
        .chain([
            "::once:/bin/sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done'",
        ])
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&inittab, text).expect("inittab");
    lxc.ok("lxc-start", &["-d"]);
    let count = root.join("tmp/count");
    wait_counter(&count, 2);
    let pids = |lxc: &Lxc| {
        let out = lxc.run("lxc-attach", &["--", "/bin/ps", "-o", "pid,args"]);
        let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            // Not the short-lived: ps itself and the counter's sleeps.
            .filter(|l| !l.contains("ps -o") && !l.contains("PID") && !l.ends_with("sleep 0.1"))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        v.sort();
        v
    };
    let before_pids = pids(&lxc);
    assert!(
        before_pids.iter().any(|l| l.contains("i=$((i+1))")),
        "the counting shell is not in the container: {before_pids:?}"
    );
    for cycle in 0..2 {
        let img = tmp.path().join(format!("img{cycle}"));
        let img_s = img.to_str().expect("utf8");
        lxc.ok("lxc-checkpoint", &["-s", "-D", img_s]);
        assert_eq!(lxc.state(), "STOPPED", "checkpoint {cycle}");
        let before = read_counter(&count);
        lxc.ok("lxc-checkpoint", &["-r", "-d", "-D", img_s]);
        assert_eq!(lxc.state(), "RUNNING", "restore {cycle}");
        let now = wait_counter(&count, before);
        wait_counter(&count, now + 2);
        assert_eq!(
            pids(&lxc),
            before_pids,
            "the PIDs inside after restore {cycle}"
        );
        let log = std::fs::read_to_string(img.join("restore.log")).unwrap_or_default();
        assert!(!log.contains("ERROR"), "restore {cycle}: {log}");
    }
}

/// Podman containers and the image of this test: removed on every path.
struct Podman {
    names: Vec<String>,
    image: String,
    path: std::ffi::OsString,
    logs: PathBuf,
}

impl Podman {
    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("podman");
        cmd.args(args).env("PATH", &self.path);
        logged(cmd, &self.logs.join("podman"))
    }

    fn ok(&self, args: &[&str]) {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn count(&self, name: &str) -> u64 {
        let out = self.run(&["exec", name, "/bin/busybox", "cat", "/tmp/count"]);
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }

    /// Wait (up to 10 s) until the counter of `name` is above `above`.
    fn counts_past(&self, name: &str, above: u64) -> u64 {
        let t = Instant::now();
        loop {
            let v = self.count(name);
            if v > above {
                return v;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{name}: counter stuck at {v}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = self.run(&["rm", "-f", "-t", "0", n]);
        }
        let _ = self.run(&["rmi", "-f", &self.image]);
    }
}

/// Podman 4 drives runc, which drives stasis as `criu`: a container made
/// from an imported busybox root file system (no network: podman's default
/// one would change the host's) is checkpointed and restored twice, then
/// checkpointed with --export to a tarball and restored from it with
/// --import as a new container; its counter resumes each time. podman's
/// network namespace is the caller's (`--external net[INO]:KEY`, joined
/// again from `--inherit-fd`). The rlimits are this sandbox's: podman's
/// defaults are above what root may set here.
#[test]
fn podman_checkpoints_restores_and_exports_a_container_through_stasis() {
    need(
        nix::unistd::geteuid().is_root(),
        "root: podman makes containers",
    );
    need(
        Command::new("podman").arg("--version").output().is_ok(),
        "podman (Debian's podman package)",
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("rootfs");
    busybox_rootfs(&root);
    let tar = tmp.path().join("rootfs.tar");
    let made = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .expect("run tar");
    assert!(made.success(), "tar of the root file system");
    let path = criu_on_path(tmp.path());
    let id = format!("stasis-test-{}", std::process::id());
    let mut pm = Podman {
        names: vec![id.clone()],
        image: format!("localhost/{id}:1"),
        path,
        logs: tmp.path().to_owned(),
    };
    pm.ok(&["import", tar.to_str().expect("utf8"), &pm.image]);
    pm.ok(&[
        "run",
        "-d",
        "--name",
        &id,
        "--network",
        "none",
        "--runtime",
        "runc",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1000:1000",
        &pm.image,
        "/bin/sh",
        "-c",
        "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done",
    ]);
    pm.counts_past(&id, 2);
    for cycle in 0..2 {
        pm.ok(&["container", "checkpoint", &id]);
        let before = pm.count(&id);
        assert_eq!(before, 0, "checkpoint {cycle} left the container running");
        pm.ok(&["container", "restore", &id]);
        let now = pm.counts_past(&id, 0);
        pm.counts_past(&id, now + 2);
    }
    let export = tmp.path().join("export.tar.gz");
    let export_s = export.to_str().expect("utf8");
    pm.ok(&["container", "checkpoint", "--export", export_s, &id]);
    let copy = format!("{id}-copy");
    pm.names.push(copy.clone());
    pm.ok(&[
        "container",
        "restore",
        "--import",
        export_s,
        "--name",
        &copy,
    ]);
    let now = pm.counts_past(&copy, 0);
    pm.counts_past(&copy, now + 2);
}
