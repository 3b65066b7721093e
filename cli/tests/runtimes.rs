#![allow(clippy::tests_outside_test_module)]
//! Container runtimes driving stasis as they drive CRIU: Debian's runc
//! finds `criu` on PATH (a symlink to stasis here) and talks CRIU's RPC
//! through `criu swrk`. A busybox container with a counter and httpd is
//! checkpointed and restored twice, checkpointed with --leave-running, and
//! restored under a new container id. Needs root, runc and a static
//! busybox (ci/setup installs them): fails without them.

mod common;

use std::path::{Path, PathBuf};

use common::{read_counter, wait_counter};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn need(cond: bool, what: &str) {
    assert!(cond, "this test needs {what}");
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
        let log = |k: &str| {
            std::fs::File::options()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(self.bundle.with_file_name(format!("runc-{n}.{k}")))
                .expect("runc log")
        };
        let (out, err) = (log("out"), log("err"));
        let status = Command::new("runc")
            .args(args)
            .env("PATH", &self.path)
            .current_dir(&self.bundle)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(err.try_clone().expect("dup"))
            .status()
            .expect("run runc");
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

#[test]
fn runc_checkpoints_and_restores_a_busybox_container_through_stasis() {
    need(
        nix::unistd::geteuid().is_root(),
        "root: runc makes containers",
    );
    need(
        Command::new("runc").arg("--version").output().is_ok(),
        "runc (Debian's runc package)",
    );
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|b| Path::new(b).exists());
    need(
        busybox.is_some(),
        "a static busybox (Debian's busybox-static)",
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let bundle = tmp.path().join("bundle");
    let root = bundle.join("rootfs");
    for d in ["bin", "proc", "sys", "dev", "tmp", "www"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    std::fs::copy(busybox.unwrap_or_default(), root.join("bin/busybox")).expect("busybox");
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).expect("symlink sh");
    std::fs::write(root.join("www/index.html"), "served by a restored httpd\n").expect("www");
    // `criu` on PATH is stasis, as a user would set it up.
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).expect("mkdir bin");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_stasis"), bin.join("criu")).expect("symlink");
    let mut path = bin.into_os_string();
    path.push(":");
    path.push(std::env::var_os("PATH").unwrap_or_default());
    let id = format!("stasis-test-{}", std::process::id());
    let mut ctr = Ctr {
        ids: vec![id.clone()],
        path,
        bundle: bundle.clone(),
        calls: std::sync::atomic::AtomicUsize::new(0),
    };
    ctr.ok(&["spec"]);
    let spec = bundle.join("config.json");
    let text = std::fs::read_to_string(&spec).expect("config.json");
    let text = text
        .replace("\"terminal\": true", "\"terminal\": false")
        .replace("\"readonly\": true", "\"readonly\": false")
        // A cgroup namespace too, as podman and docker give on cgroup v2.
        .replace(
            "\"type\": \"mount\"\n\t\t\t}",
            "\"type\": \"mount\"\n\t\t\t},\n\t\t\t{\n\t\t\t\t\"type\": \"cgroup\"\n\t\t\t}",
        )
        .replace(
            "\"sh\"\n\t\t]",
            "\"sh\", \"-c\", \"/bin/busybox httpd -p 127.0.0.1:8080 -h /www; i=0; while true; do i=$((i+1)); echo $i > /tmp/count; /bin/busybox sleep 0.1; done\"\n\t\t]",
        );
    assert!(
        text.contains("httpd") && text.contains("\"cgroup\""),
        "runc spec changed its layout: {text}"
    );
    std::fs::write(&spec, text).expect("config.json");
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
