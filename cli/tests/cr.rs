#![allow(clippy::tests_outside_test_module)]
//! End-to-end checkpoint/restore of real processes through the `stasis` CLI.
//! Needs root (ptrace of other tasks, clone3 set_tid): fails without it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{cgroup_mount, read_counter, wait_counter};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

fn stasis() -> &'static str {
    env!("CARGO_BIN_EXE_stasis")
}

fn need_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root: checkpoint/restore ptraces tasks and sets PIDs"
    );
}

fn run(args: &[&str]) -> Output {
    Command::new(stasis())
        .args(args)
        .output()
        .expect("run stasis")
}

fn group_members(pgid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, r)| r.split(' ').collect())
            .unwrap_or_default();
        if fields.get(3).and_then(|g| g.parse::<i32>().ok()) == Some(pgid) {
            out.push(pid);
        }
    }
    out
}

fn wait_group_gone(pgid: i32) {
    let t = Instant::now();
    while !group_members(pgid).is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "group {pgid} did not go away"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A process group this test started; killed and reaped on drop.
struct Job {
    child: Option<Child>,
    pgid: i32,
}

impl Job {
    fn start(script: &str) -> Job {
        let child = Command::new("setsid")
            .args(["sh", "-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn setsid sh");
        let pgid = i32::try_from(child.id()).expect("pid");
        Job {
            child: Some(child),
            pgid,
        }
    }

    /// A shell loop writing 1, 2, 3, ... to `file`, one number per `period`.
    fn counter(file: &Path, period: &str) -> Job {
        Job::start(&format!(
            "i=0; while :; do i=$((i+1)); echo $i > {}; sleep {period}; done",
            file.display()
        ))
    }

    /// Reap the original after a dump killed it, and wait until every
    /// process of its group is gone (init reaps the orphans).
    fn reap(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        wait_group_gone(self.pgid);
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGKILL);
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // A restored group is not our child: wait until init reaped it.
        let _ = kill(Pid::from_raw(self.pgid), Signal::SIGKILL);
        wait_group_gone(self.pgid);
    }
}

fn tmpdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// crit, an independent reader, decodes every image in `img` (raw pages
/// aside); the names of the images.
fn crit_decodes_all(img: &Path) -> Vec<String> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(img).expect("images") {
        let p = entry.expect("entry").path();
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_owned();
        if !name.ends_with(".img") || name.starts_with("pages-") {
            continue;
        }
        let c = Command::new("crit")
            .args(["decode", "-i"])
            .arg(&p)
            .output()
            .expect("crit");
        assert!(
            c.status.success(),
            "crit cannot decode {name}: {}",
            String::from_utf8_lossy(&c.stderr)
        );
        names.push(name);
    }
    names
}

fn images(dir: &Path, name: &str) -> PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).expect("mkdir");
    d
}

#[test]
fn shell_loop_counter_resumes_after_restore() {
    need_root();
    let tmp = tmpdir();
    let counter = tmp.path().join("count");
    let mut job = Job::counter(&counter, "0.1");
    wait_counter(&counter, 3);
    let img = images(tmp.path(), "img");
    let pid = job.pgid.to_string();
    let out = run(&[
        "dump",
        "-t",
        &pid,
        "-D",
        img.to_str().expect("utf8"),
        "-o",
        "dump.log",
        "-v4",
    ]);
    assert!(
        out.status.success(),
        "dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    job.reap();
    let stopped = read_counter(&counter);
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        read_counter(&counter),
        stopped,
        "the counter moved after the dump"
    );
    crit_decodes_all(&img);
    let pidfile = tmp.path().join("restored.pid");
    let out = run(&[
        "restore",
        "-D",
        img.to_str().expect("utf8"),
        "-d",
        "-o",
        "restore.log",
        "-v4",
        "--pidfile",
        pidfile.to_str().expect("utf8"),
    ]);
    assert!(
        out.status.success(),
        "restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored: i32 = std::fs::read_to_string(&pidfile)
        .expect("pidfile")
        .trim()
        .parse()
        .expect("pid");
    assert_eq!(restored, job.pgid, "restored with another PID");
    let next = wait_counter(&counter, stopped);
    assert_eq!(
        next,
        stopped + 1,
        "the counter did not resume where it stopped"
    );
    let later = wait_counter(&counter, stopped + 3);
    assert!(later > stopped + 3);
}

#[test]
fn leave_running_twice_then_restore_the_second() {
    need_root();
    let tmp = tmpdir();
    let counter = tmp.path().join("count");
    let mut job = Job::counter(&counter, "0.05");
    wait_counter(&counter, 2);
    let pid = job.pgid.to_string();
    for name in ["one", "two"] {
        let img = images(tmp.path(), name);
        let out = run(&[
            "dump",
            "-t",
            &pid,
            "-D",
            img.to_str().expect("utf8"),
            "--leave-running",
        ]);
        assert!(
            out.status.success(),
            "dump {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let before = read_counter(&counter);
        wait_counter(&counter, before + 1); // still running
    }
    // The original still holds the PID: restore must refuse and create nothing.
    let two = tmp.path().join("two");
    let out = run(&["restore", "-D", two.to_str().expect("utf8"), "-d"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = killpg(Pid::from_raw(job.pgid), Signal::SIGKILL);
    job.reap();
    let out = run(&["restore", "-D", two.to_str().expect("utf8"), "-d"]);
    assert!(
        out.status.success(),
        "restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let now = read_counter(&counter);
    wait_counter(&counter, now + 2);
}

#[test]
fn leave_running_dump_keeps_cpu_affinity() {
    need_root();
    // The engine runs the threads it drives on its own CPU meanwhile; each
    // must get its own mask back. Pin the job to the last CPU we may use.
    let mine = nix::sched::sched_getaffinity(Pid::from_raw(0)).expect("affinity");
    let cpu = (0..nix::sched::CpuSet::count())
        .rev()
        .find(|&c| mine.is_set(c).unwrap_or(false))
        .expect("a CPU");
    let tmp = tmpdir();
    let counter = tmp.path().join("count");
    let script = format!(
        "exec python3 -c 'import os,sys,threading,time\nos.sched_setaffinity(0,{{{cpu}}})\nthreading.Thread(target=lambda: time.sleep(3600),daemon=True).start()\ni=0\nwhile True:\n  i+=1; open(sys.argv[1],\"w\").write(str(i)); time.sleep(0.05)' {}",
        counter.display()
    );
    let mut job = Job::start(&script);
    wait_counter(&counter, 2);
    let pid = job.pgid;
    let masks = || {
        let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .expect("tasks")
            .map(|t| {
                let st = std::fs::read_to_string(t.expect("task").path().join("status"))
                    .expect("status");
                st.lines()
                    .find(|l| l.starts_with("Cpus_allowed_list:"))
                    .expect("Cpus_allowed_list")
                    .to_owned()
            })
            .collect();
        v.sort();
        v
    };
    // The engine on another CPU (this thread's mask is inherited), so that
    // it has to move the job's threads.
    let other =
        (0..nix::sched::CpuSet::count()).find(|&c| c != cpu && mine.is_set(c).unwrap_or(false));
    match other {
        Some(o) => {
            let mut set = nix::sched::CpuSet::new();
            set.set(o).expect("cpu");
            nix::sched::sched_setaffinity(Pid::from_raw(0), &set).expect("pin the test");
        }
        None => eprintln!("one CPU only: the engine cannot move the job's threads"),
    }
    let before = masks();
    assert_eq!(
        before.len(),
        2,
        "the job should have two threads: {before:?}"
    );
    assert!(
        before.iter().all(|m| m.ends_with(&format!("\t{cpu}"))),
        "{before:?}"
    );
    for i in 0..3 {
        let img = images(tmp.path(), &format!("img{i}"));
        let out = run(&[
            "dump",
            "-t",
            &pid.to_string(),
            "-D",
            img.to_str().expect("utf8"),
            "--leave-running",
        ]);
        assert!(
            out.status.success(),
            "dump: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(masks(), before, "CPU affinity changed by dump {i}");
    }
    nix::sched::sched_setaffinity(Pid::from_raw(0), &mine).expect("unpin the test");
    let _ = killpg(Pid::from_raw(job.pgid), Signal::SIGKILL);
    job.reap();
}

/// Each fd of `pid`: what it points at and whether it is close-on-exec.
fn fd_table(pid: i32) -> Vec<(i32, String, bool)> {
    let mut v: Vec<(i32, String, bool)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .map(|e| {
            let e = e.expect("fd");
            let n: i32 = e.file_name().to_string_lossy().parse().expect("fd number");
            let link = std::fs::read_link(e.path()).expect("link");
            let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{n}")).expect("fdinfo");
            let flags = info
                .lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
                .expect("flags");
            // A pipe comes back as a new pipe: its inode differs.
            let link = link.display().to_string();
            let link = if link.starts_with("pipe:[") {
                "pipe".into()
            } else {
                link
            };
            (n, link, flags & 0o2000000 != 0)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn restore_under_a_tight_fd_limit_puts_every_fd_back() {
    need_root();
    // 300 files on fds 3..302, the task and the restore limited to 400
    // fds (a restore cannot raise the task's limit above its own): no room to
    // open the files above fd 302, so the restore keeps them low, where
    // they overlap the fd numbers the task wants (chains and cycles to
    // sort out in the task).
    let tmp = tmpdir();
    let counter = tmp.path().join("count");
    let dir = tmp.path().join("files");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let script = format!(
        "exec prlimit --nofile=400:400 python3 -c 'import os,sys,time\nd=sys.argv[2]\nfds=[os.open(os.path.join(d,\"f%d\"%i),os.O_RDWR|os.O_CREAT) for i in range(300)]\nfor i in range(0,300,3): os.set_inheritable(fds[i],True)\nos.dup2(fds[5],fds[7])\nos.dup2(fds[100],fds[40],inheritable=False)\ni=0\nwhile True:\n  i+=1; open(sys.argv[1],\"w\").write(str(i)); time.sleep(0.05)' {} {}",
        counter.display(),
        dir.display()
    );
    let mut job = Job::start(&script);
    wait_counter(&counter, 2);
    let pid = job.pgid;
    let before = fd_table(pid);
    assert!(before.len() > 300, "{} fds", before.len());
    let img = images(tmp.path(), "img");
    dump_ok(pid, &img);
    job.reap();
    let out = Command::new("prlimit")
        .arg("--nofile=400:400")
        .arg(stasis())
        .args(["restore", "-d", "-D", img.to_str().expect("utf8")])
        .output()
        .expect("prlimit stasis restore");
    assert!(
        out.status.success(),
        "restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let now = read_counter(&counter);
    wait_counter(&counter, now + 1);
    let after = fd_table(pid);
    let differ: Vec<_> = before
        .iter()
        .filter(|b| !after.contains(b))
        .map(|b| (b, after.iter().find(|a| a.0 == b.0)))
        .collect();
    assert!(
        differ.is_empty() && after.len() == before.len(),
        "{} fds before, {} after; (before, after) differing: {differ:?}",
        before.len(),
        after.len()
    );
}

#[test]
fn failed_dump_leaves_the_task_running() {
    need_root();
    let tmp = tmpdir();
    let counter = tmp.path().join("count");
    // The shell holds a unix socket (not supported yet): the dump must refuse.
    let script = format!(
        "exec 5<>/dev/null; python3 -c 'import socket,time,sys\ns=socket.socket(socket.AF_UNIX)\ni=0\nwhile True:\n  i+=1; open(sys.argv[1],\"w\").write(str(i)); time.sleep(0.05)' {}",
        counter.display()
    );
    let job = Job::start(&script);
    wait_counter(&counter, 2);
    let img = images(tmp.path(), "img");
    let pid = job.pgid.to_string();
    let out = run(&["dump", "-t", &pid, "-D", img.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(1), "the dump should have failed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("socket") && err.contains("fd "),
        "unclear error: {err}"
    );
    let before = read_counter(&counter);
    let after = wait_counter(&counter, before + 2);
    assert!(after > before, "the task did not keep running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    assert!(
        !status.contains("TracerPid:\t") || status.contains("TracerPid:\t0"),
        "still traced"
    );
}

#[test]
fn corrupt_image_restore_fails_and_leaves_no_task() {
    need_root();
    let tmp = tmpdir();
    let counter = tmp.path().join("count");
    let mut job = Job::counter(&counter, "0.05");
    wait_counter(&counter, 2);
    let img = images(tmp.path(), "img");
    let pid = job.pgid.to_string();
    let out = run(&["dump", "-t", &pid, "-D", img.to_str().expect("utf8")]);
    assert!(
        out.status.success(),
        "dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    job.reap();
    // Cut the pages short: restore must fail, name the file, leave nothing.
    let pages = img.join("pages-1.img");
    let len = std::fs::metadata(&pages).expect("pages").len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&pages)
        .expect("open");
    f.set_len(len / 2).expect("truncate");
    let out = run(&["restore", "-D", img.to_str().expect("utf8"), "-d"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pages-1.img"), "unclear error: {err}");
    wait_group_gone(job.pgid);
}

// ---- Acceptance workloads (engine/tests/progs/workload.c, built with cc) ----

/// Build the C workload into `dir`.
fn workload(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/progs/workload.c");
    let bin = dir.join("workload");
    let out = Command::new("cc")
        .args(["-O2", "-pthread", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .expect("run cc (gcc is needed to build the test workload)");
    assert!(
        out.status.success(),
        "cc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

/// Wait until `file` starts with one of `prefixes`; its content.
fn wait_file(file: &Path, prefixes: &[&str], secs: u64) -> String {
    let t = Instant::now();
    loop {
        let s = std::fs::read_to_string(file).unwrap_or_default();
        if prefixes.iter().any(|p| s.starts_with(p)) {
            return s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "{} still says {s:?}",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn dump_ok(pid: i32, img: &Path) {
    dump_ok_with(pid, img, &[]);
}

/// `stasis dump` of `pid` into `img` with `extra` options; it must succeed.
fn dump_ok_with(pid: i32, img: &Path, extra: &[&str]) {
    dump_ok_in(None, pid, img, extra);
}

/// `stasis`, in the network namespace of `netns` if given.
fn run_in(netns: Option<i32>, args: &[&str]) -> Output {
    match netns {
        Some(p) => stasis_in_netns_of(p, args),
        None => run(args),
    }
}

/// [`dump_ok_with`] run in the network namespace of `netns`, if given.
fn dump_ok_in(netns: Option<i32>, pid: i32, img: &Path, extra: &[&str]) {
    let pid = pid.to_string();
    let mut args = vec!["dump", "-t", &pid, "-D", img.to_str().expect("utf8")];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-o", "dump.log", "-v4"]);
    let out = run_in(netns, &args);
    assert!(
        out.status.success(),
        "dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn restore_ok(img: &Path) {
    restore_ok_with(img, &[]);
}

/// `stasis restore -d` from `img` with `extra` options; it must succeed.
fn restore_ok_with(img: &Path, extra: &[&str]) {
    restore_ok_in(None, img, extra);
}

/// [`restore_ok_with`] run in the network namespace of `netns`, if given.
fn restore_ok_in(netns: Option<i32>, img: &Path, extra: &[&str]) {
    let mut args = vec!["restore", "-D", img.to_str().expect("utf8")];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-d", "-o", "restore.log", "-v4"]);
    let out = run_in(netns, &args);
    assert!(
        out.status.success(),
        "restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Ask the workload `pid` (SIGUSR1) to check its state; its answer in `out`.
fn ask(pid: i32, out: &Path, secs: u64) -> String {
    kill(Pid::from_raw(pid), Signal::SIGUSR1).expect("signal the workload");
    wait_file(out, &["ok", "bad"], secs)
}

/// Start `cmd` in its own session, wait for "ready" in `out`, dump it,
/// restore it, ask it (SIGUSR1) to check itself; its answer.
fn dump_restore_ask(cmd: &str, out: &Path, img: &Path, secs: u64) -> String {
    let mut job = Job::start(&format!("exec {cmd}"));
    wait_file(out, &["ready"], secs);
    dump_ok(job.pgid, img);
    job.reap();
    std::fs::remove_file(out).expect("remove ready file");
    restore_ok(img);
    ask(job.pgid, out, secs)
}

#[test]
fn python_interpreter_state_survives() {
    need_root();
    let tmp = tmpdir();
    let out = tmp.path().join("answer");
    let script = tmp.path().join("state.py");
    std::fs::write(
        &script,
        "import os, signal, sys, time\n\
         out = sys.argv[1]\n\
         d = {'a': 1, 'b': [1, 2, 3], 'c': 'x' * 5}\n\
         def squares():\n    i = 0\n    while True:\n        i += 1\n        yield i * i\n\
         g = squares(); next(g); next(g)\n\
         asked = False\n\
         def h(s, f):\n    global asked\n    asked = True\n\
         signal.signal(signal.SIGUSR1, h)\n\
         def say(s):\n    open(out + '.tmp', 'w').write(s); os.rename(out + '.tmp', out)\n\
         say('ready')\n\
         while not asked:\n    time.sleep(0.01)\n\
         say(f\"ok {d['a'] + sum(d['b'])} {len(d['c'])} {next(g)} {next(g)}\")\n",
    )
    .expect("write script");
    let img = images(tmp.path(), "img");
    let got = dump_restore_ask(
        &format!("python3 {} {}", script.display(), out.display()),
        &out,
        &img,
        20,
    );
    assert_eq!(got, "ok 7 5 9 16", "the interpreter's state changed");
}

#[test]
fn one_gib_of_patterned_memory_survives() {
    need_root();
    let tmp = tmpdir();
    let prog = workload(tmp.path());
    let out = tmp.path().join("answer");
    let img = images(tmp.path(), "img");
    let got = dump_restore_ask(
        &format!("{} mem 1024 {}", prog.display(), out.display()),
        &out,
        &img,
        120,
    );
    assert_eq!(got, format!("ok {} words\n", 1u64 << 27));
    // The image holds the touched memory once, not more.
    let pages: u64 = std::fs::read_dir(&img)
        .expect("images")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("pages-"))
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    assert!(
        (1 << 30..(1 << 30) + (64 << 20)).contains(&pages),
        "pages images hold {pages} bytes"
    );
}

#[test]
fn sixteen_threads_keep_their_masks_and_tls() {
    need_root();
    let tmp = tmpdir();
    let prog = workload(tmp.path());
    let out = tmp.path().join("answer");
    let img = images(tmp.path(), "img");
    let got = dump_restore_ask(
        &format!("{} threads 16 {}", prog.display(), out.display()),
        &out,
        &img,
        20,
    );
    assert_eq!(got, "ok 16 threads\n");
    let threads = std::fs::read_dir(img.as_path())
        .expect("images")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("core-"))
        .count();
    assert_eq!(threads, 16, "one core image per thread");
}

#[test]
fn thousand_fds_keep_offsets_flags_and_pipe_data() {
    need_root();
    let tmp = tmpdir();
    let prog = workload(tmp.path());
    let out = tmp.path().join("answer");
    let files = tmp.path().join("files");
    std::fs::create_dir(&files).expect("mkdir");
    let img = images(tmp.path(), "img");
    let got = dump_restore_ask(
        &format!(
            "{} fds 1000 {} {}",
            prog.display(),
            files.display(),
            out.display()
        ),
        &out,
        &img,
        20,
    );
    assert_eq!(got, "ok 1000 fds\n");
}

/// (pid, ppid, pgid, sid, state) of every process under `root`.
fn tree_shape(root: i32) -> Vec<(i32, i32, i32, i32, char)> {
    let mut out = Vec::new();
    let mut queue = vec![root];
    while let Some(pid) = queue.pop() {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse().ok()).unwrap_or(-1);
        let state = f.first().and_then(|s| s.chars().next()).unwrap_or('?');
        out.push((pid, num(1), num(2), num(3), state));
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        queue.extend(
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<i32>().ok()),
        );
    }
    out.sort_unstable();
    out
}

/// Kills every listed process on drop (the tree spans several groups).
struct KillAll(Vec<i32>);

impl Drop for KillAll {
    fn drop(&mut self) {
        for &p in &self.0 {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
    }
}

#[test]
fn fifty_process_tree_keeps_its_shape() {
    need_root();
    let tmp = tmpdir();
    let prog = workload(tmp.path());
    let out = tmp.path().join("answer");
    let img = images(tmp.path(), "img");
    let mut job = Job::start(&format!(
        "exec {} tree 50 {}",
        prog.display(),
        out.display()
    ));
    wait_file(&out, &["ready"], 20);
    // 50 processes plus the zombie, the stopped one among them.
    let t = Instant::now();
    let before = loop {
        let s = tree_shape(job.pgid);
        if s.len() == 51 && s.iter().any(|p| p.4 == 'T') && s.iter().any(|p| p.4 == 'Z') {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "tree not built: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let _guard = KillAll(before.iter().map(|p| p.0).collect());
    assert!(
        before.iter().filter(|p| p.0 == p.3).count() >= 4,
        "sessions"
    );
    dump_ok(job.pgid, &img);
    job.reap();
    for p in &before {
        let t = Instant::now();
        while std::path::Path::new(&format!("/proc/{}", p.0)).exists() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{} survived the dump",
                p.0
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    restore_ok(&img);
    // The restored root's parent is this test's restore; compare the rest.
    let norm = |v: &mut Vec<(i32, i32, i32, i32, char)>| {
        for p in v.iter_mut() {
            if p.0 == job.pgid {
                p.1 = 0;
            }
        }
    };
    let mut want = before.clone();
    norm(&mut want);
    // A resumed task is running ('R') until it is back in pause(): give the
    // tree a moment to settle, then compare the last reading in full.
    let t = Instant::now();
    let after = loop {
        let mut after = tree_shape(job.pgid);
        norm(&mut after);
        if after == want || t.elapsed() > Duration::from_secs(5) {
            break after;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(after, want, "the tree came back with another shape");
}

#[test]
fn dump_times_out_on_a_task_that_cannot_stop_and_leaves_it_running() {
    need_root();
    let tmp = tmpdir();
    let prog = workload(tmp.path());
    let out = tmp.path().join("answer");
    let count = tmp.path().join("answer.count");
    let job = Job::start(&format!(
        "exec {} vfork 0 {}",
        prog.display(),
        out.display()
    ));
    wait_file(&out, &["ready"], 20);
    let before = wait_counter(&count, 1);
    let img = images(tmp.path(), "img");
    let t = Instant::now();
    let res = run(&[
        "dump",
        "-t",
        &job.pgid.to_string(),
        "-D",
        img.to_str().expect("utf8"),
        "--timeout",
        "1",
    ]);
    let took = t.elapsed();
    assert_eq!(res.status.code(), Some(1), "the dump should have timed out");
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(
        err.contains("timed out") && err.contains("--timeout"),
        "unclear error: {err}"
    );
    assert!(took < Duration::from_secs(20), "the dump hung for {took:?}");
    // The child keeps counting, the parent is not traced any more.
    wait_counter(&count, before + 3);
    let status = std::fs::read_to_string(format!("/proc/{}/status", job.pgid)).expect("status");
    assert!(status.contains("TracerPid:\t0"), "still traced: {status}");
}

#[test]
fn a_criu_symlink_dumps_and_restores_the_same_way() {
    need_root();
    let tmp = tmpdir();
    let criu = tmp.path().join("criu");
    std::os::unix::fs::symlink(stasis(), &criu).expect("symlink criu -> stasis");
    let counter = tmp.path().join("count");
    let mut job = Job::counter(&counter, "0.05");
    wait_counter(&counter, 2);
    let img = images(tmp.path(), "img");
    // As runc calls it: CRIU's global options, then the verb.
    let out = Command::new(&criu)
        .args([
            "check",
            "--no-default-config",
            "--feature",
            "clone3_set_tid",
        ])
        .output()
        .expect("run criu");
    assert!(out.status.success(), "criu check: {out:?}");
    let out = Command::new(&criu)
        .args(["dump", "--no-default-config", "-t"])
        .arg(job.pgid.to_string())
        .args(["-D"])
        .arg(&img)
        .args(["-o", "dump.log", "-v4", "--file-locks", "--timeout", "10"])
        .output()
        .expect("run criu dump");
    assert!(
        out.status.success(),
        "criu dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    job.reap();
    let stopped = read_counter(&counter);
    let out = Command::new(&criu)
        .args(["restore", "--no-default-config", "-d", "-D"])
        .arg(&img)
        .args(["-o", "restore.log", "-v4"])
        .output()
        .expect("run criu restore");
    assert!(
        out.status.success(),
        "criu restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(img.join("dump.log").exists() && img.join("restore.log").exists());
    wait_counter(&counter, stopped + 2);
}

/// A small tmpfs mounted for a test; unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).expect("mkdir");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("run mount");
        assert!(ok.success(), "mount tmpfs on {}", at.display());
        Tmpfs(at.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn dump_into_a_full_images_dir_fails_and_leaves_the_task_running() {
    need_root();
    let tmp = tmpdir();
    let prog = workload(tmp.path());
    let out = tmp.path().join("answer");
    let job = Job::start(&format!("exec {} mem 8 {}", prog.display(), out.display()));
    wait_file(&out, &["ready"], 20);
    let full = Tmpfs::mount(&tmp.path().join("small"), "256k");
    let res = run(&[
        "dump",
        "-t",
        &job.pgid.to_string(),
        "-D",
        full.0.to_str().expect("utf8"),
    ]);
    assert_eq!(res.status.code(), Some(1), "the dump should have failed");
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(
        err.contains("No space left") && err.contains("pages-"),
        "unclear error: {err}"
    );
    // No half-written image is left in the full directory.
    let left: Vec<_> = std::fs::read_dir(&full.0)
        .expect("images dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "the failed dump left {left:?}");
    // The task was left as it was: it still holds its memory intact.
    assert_eq!(
        ask(job.pgid, &out, 20),
        format!("ok {} words\n", 8u64 << 17)
    );
}

#[test]
fn restore_with_a_missing_file_names_it_and_leaves_no_task() {
    need_root();
    let tmp = tmpdir();
    let data = tmp.path().join("data.txt");
    std::fs::write(&data, "some data\n").expect("write");
    let counter = tmp.path().join("count");
    let mut job = Job::start(&format!(
        "exec 7<{}; i=0; while :; do i=$((i+1)); echo $i > {}; sleep 0.05; done",
        data.display(),
        counter.display()
    ));
    wait_counter(&counter, 2);
    let img = images(tmp.path(), "img");
    dump_ok(job.pgid, &img);
    job.reap();
    std::fs::remove_file(&data).expect("remove the file");
    let out = run(&["restore", "-D", img.to_str().expect("utf8"), "-d"]);
    assert_eq!(out.status.code(), Some(1), "restore should have failed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("data.txt"),
        "the error does not name the file: {err}"
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{}", job.pgid)).exists(),
        "a task was left behind"
    );
}

#[test]
fn a_process_whose_executable_was_deleted_comes_back() {
    need_root();
    let tmp = tmpdir();
    let prog = workload(tmp.path());
    let copy = tmp.path().join("gone-soon");
    std::fs::copy(&prog, &copy).expect("copy the workload");
    let out = tmp.path().join("answer");
    let img = images(tmp.path(), "img");
    let mut job = Job::start(&format!("exec {} mem 4 {}", copy.display(), out.display()));
    wait_file(&out, &["ready"], 20);
    // As after a package upgrade: the running binary is gone from disk.
    std::fs::remove_file(&copy).expect("delete the executable");
    dump_ok(job.pgid, &img);
    job.reap();
    std::fs::remove_file(&out).expect("remove ready file");
    restore_ok(&img);
    assert!(!copy.exists(), "the restore left the deleted file on disk");
    let exe = std::fs::read_link(format!("/proc/{}/exe", job.pgid)).expect("exe link");
    assert_eq!(
        exe.to_string_lossy(),
        format!("{} (deleted)", copy.display()),
        "exe link after restore"
    );
    assert_eq!(
        ask(job.pgid, &out, 20),
        format!("ok {} words\n", 4u64 << 17)
    );
}

#[test]
fn many_object_kinds_come_back_and_crit_reads_every_image() {
    need_root();
    let tmp = tmpdir();
    let prog = workload(tmp.path());
    let out = tmp.path().join("answer");
    let files = tmp.path().join("files");
    std::fs::create_dir(&files).expect("mkdir");
    let img = images(tmp.path(), "img");
    let mut job = Job::start(&format!(
        "exec {} kinds {} {}",
        prog.display(),
        files.display(),
        out.display()
    ));
    wait_file(&out, &["ready"], 20);
    dump_ok(job.pgid, &img);
    job.reap();
    let kinds = crit_decodes_all(&img);
    for want in [
        "memfd.img",
        "pagemap-shmem-1.img",
        "fifo-data.img",
        "remap-fpath.img",
        "seccomp.img",
    ] {
        assert!(kinds.iter().any(|k| k == want), "no {want} among {kinds:?}");
    }
    // stats-dump counts every page the images hold (the tasks' and the memfd's).
    let mut r = stasis_proto::ImageReader::open(&img.join("stats-dump")).expect("stats-dump");
    let st: stasis_proto::images::StatsEntry = r.read_entry().expect("entry").expect("one");
    let pages: u64 = std::fs::read_dir(&img)
        .expect("images")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("pages-"))
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    assert_eq!(
        st.dump.expect("dump stats").pages_written * 4096,
        pages,
        "pages_written against the pages images"
    );
    assert!(
        kinds.iter().any(|k| k.starts_with("ghost-file-")),
        "no ghost file: {kinds:?}"
    );
    std::fs::remove_file(&out).expect("remove ready file");
    restore_ok(&img);
    assert_eq!(ask(job.pgid, &out, 20), "ok kinds\n");
}

/// Read from the pty master until `want` shows up (or `secs` pass); all
/// that was read.
fn read_until(master: &nix::pty::PtyMaster, want: &str, secs: u64) -> String {
    use std::os::fd::AsFd;
    let t = Instant::now();
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains(want) {
        let mut fds = [nix::poll::PollFd::new(
            master.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let ready = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16));
        let mut buf = [0u8; 4096];
        if ready == Ok(1)
            && let Ok(n) = nix::unistd::read(master.as_fd(), &mut buf)
        {
            got.extend_from_slice(&buf[..n]);
        }
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "no {want:?} from the REPL; it wrote {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Wait (up to 10 s) until `pid` sleeps in select()/pselect6().
fn wait_in_select(pid: i32) {
    let t = Instant::now();
    loop {
        let call = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
        let nr = call.split(' ').next().and_then(|n| n.parse::<i64>().ok());
        #[cfg(target_arch = "x86_64")]
        let select = nr == Some(libc::SYS_select);
        #[cfg(not(target_arch = "x86_64"))]
        let select = false;
        if select || nr == Some(libc::SYS_pselect6) {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "pid {pid} never waits in select(); it is in {call:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn python_repl_on_a_pty_answers_after_restore() {
    use nix::fcntl::OFlag;
    use std::os::fd::AsFd;
    need_root();
    let tmp = tmpdir();
    let img = images(tmp.path(), "img");
    // The test holds the master, as a terminal emulator would.
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .expect("posix_openpt");
    nix::pty::grantpt(&master).expect("grantpt");
    nix::pty::unlockpt(&master).expect("unlockpt");
    let name = nix::pty::ptsname_r(&master).expect("ptsname");
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&name)
        .expect("open the slave");
    let stdio = || Stdio::from(slave.try_clone().expect("dup the slave"));
    // setsid -c: a session of its own with the pty as controlling terminal.
    let child = Command::new("setsid")
        .args(["-c", "python3", "-q", "-i"])
        .env("TERM", "dumb")
        .stdin(stdio())
        .stdout(stdio())
        .stderr(stdio())
        .spawn()
        .expect("start python3");
    drop(slave);
    let pid = i32::try_from(child.id()).expect("pid");
    let mut job = Job {
        child: Some(child),
        pgid: pid,
    };
    read_until(&master, ">>> ", 20);
    nix::unistd::write(master.as_fd(), b"x = 6 * 7\n").expect("type");
    read_until(&master, ">>> ", 20);
    dump_ok_with(pid, &img, &["--shell-job"]);
    job.reap();
    restore_ok_with(&img, &["--shell-job"]);
    nix::unistd::write(master.as_fd(), b"print(x + 1)\n").expect("type");
    let got = read_until(&master, "43\r\n>>> ", 20);
    assert!(got.contains("43"), "the REPL answered {got:?}");
    // Python checks for signals only when select() is interrupted: a SIGINT
    // that comes between printing the prompt and entering select() is seen
    // only after the next line. Wait until it sleeps in select().
    wait_in_select(pid);
    // ^C reaches it as SIGINT only through its controlling terminal.
    nix::unistd::write(master.as_fd(), b"\x03").expect("type ^C");
    read_until(&master, "KeyboardInterrupt", 20);
}

/// redis-server, installed from Debian's package if it is missing.
fn need_redis() {
    let have = Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        let out = Command::new("apt-get")
            .args(["install", "-y", "-q", "redis-server"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .expect("run apt-get");
        assert!(
            out.status.success(),
            "installing redis-server failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn redis_and_its_connected_client_survive_in_their_network_namespace() {
    need_root();
    need_redis();
    let tmp = tmpdir();
    let out = tmp.path().join("answer");
    let script = tmp.path().join("redis_tree.py");
    // In a network namespace of its own: redis-server, and a client that
    // stores 1000 keys over one connection, then (on SIGUSR1) uses the
    // same connection again.
    std::fs::write(
        &script,
        "import os, socket, subprocess, sys, time, signal\n\
         out = sys.argv[1]; port = 6390\n\
         import fcntl, struct\n\
         lo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         flags = struct.unpack('16sh', fcntl.ioctl(lo, 0x8913, struct.pack('16sh', b'lo', 0)))[1]\n\
         fcntl.ioctl(lo, 0x8914, struct.pack('16sh', b'lo', flags | 1))\n\
         srv = subprocess.Popen(['redis-server', '--port', str(port), '--bind', '127.0.0.1', '--save', '',\n\
         \x20   '--appendonly', 'no', '--daemonize', 'no', '--protected-mode', 'no'],\n\
         \x20   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n\
         for _ in range(400):\n\
         \x20   try:\n\
         \x20       c = socket.create_connection(('127.0.0.1', port)); break\n\
         \x20   except OSError:\n\
         \x20       time.sleep(0.05)\n\
         def cmd(*args):\n\
         \x20   m = b'*%d\\r\\n' % len(args) + b''.join(b'$%d\\r\\n%s\\r\\n' % (len(a), a) for a in args)\n\
         \x20   c.sendall(m); return c.recv(65536)\n\
         for i in range(1000):\n\
         \x20   cmd(b'SET', b'key:%d' % i, b'value-%d' % (i * i))\n\
         asked = []\n\
         signal.signal(signal.SIGUSR1, lambda *a: asked.append(1))\n\
         def say(s):\n\
         \x20   open(out + '.tmp', 'w').write(s); os.rename(out + '.tmp', out)\n\
         say('ready')\n\
         while not asked:\n\
         \x20   time.sleep(0.02)\n\
         r = [cmd(b'GET', b'key:777'), cmd(b'DBSIZE'), cmd(b'SET', b'after', b'restore'), cmd(b'GET', b'after')]\n\
         say('ok ' + ' '.join(x.decode().strip().replace('\\r\\n', '|') for x in r))\n",
    )
    .expect("write script");
    let img = images(tmp.path(), "img");
    let mut job = Job::start(&format!(
        "exec unshare -n python3 {} {}",
        script.display(),
        out.display()
    ));
    wait_file(&out, &["ready"], 60);
    dump_ok_with(job.pgid, &img, &["--tcp-established"]);
    job.reap();
    std::fs::remove_file(&out).expect("remove ready file");
    restore_ok(&img);
    let got = ask(job.pgid, &out, 20);
    assert_eq!(
        got, "ok $12|value-603729 :1000 +OK $7|restore",
        "what the client got from redis over its old connection"
    );
}

/// `stasis` run inside the network namespace of `pid`.
fn stasis_in_netns_of(pid: i32, args: &[&str]) -> Output {
    Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .arg(stasis())
        .args(args)
        .output()
        .expect("run nsenter stasis")
}

/// The start of a peer script: in a network namespace of its own, with lo
/// up, a listener on 127.0.0.1:`port` and a forked server in a session of
/// its own (the dumped tree) holding the accepted connection as `c`, its
/// stdio on /dev/null. `server` is the server's code (indented by 4); the
/// peer's code follows the returned text (it has `srv`, the server's pid);
/// `args` names the command-line arguments (`out` among them).
fn peer_script(port: u16, args: &str, server: &str) -> String {
    let server: String = server.lines().map(|l| format!("\x20   {l}\n")).collect();
    format!(
        "import os, socket, sys, time, signal, fcntl, struct\n\
         {args} = sys.argv[1:]\n\
         lo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         flags = struct.unpack('16sh', fcntl.ioctl(lo, 0x8913, struct.pack('16sh', b'lo', 0)))[1]\n\
         fcntl.ioctl(lo, 0x8914, struct.pack('16sh', b'lo', flags | 1))\n\
         lo.close()\n\
         l = socket.socket(); l.bind(('127.0.0.1', {port})); l.listen(1)\n\
         srv = os.fork()\n\
         if srv == 0:\n\
         \x20   os.setsid()\n\
         \x20   n = os.open('/dev/null', os.O_RDWR)\n\
         \x20   for fd in (0, 1, 2): os.dup2(n, fd)\n\
         \x20   c, _ = l.accept(); l.close()\n\
         {server}\
         \x20   os._exit(0)\n\
         signal.signal(signal.SIGCHLD, lambda *a: os.waitpid(-1, os.WNOHANG))\n\
         c = socket.create_connection(('127.0.0.1', {port})); l.close()\n\
         def say(s):\n\
         \x20   open(out + '.tmp', 'w').write(s); os.rename(out + '.tmp', out)\n"
    )
}

/// Dump the server `srv` with `--tcp-established` from inside the network
/// namespace of `peer`, and wait until it is gone.
fn dump_server(peer: i32, srv: i32, img: &Path) {
    dump_ok_in(Some(peer), srv, img, &["--tcp-established"]);
    wait_group_gone(srv);
}

/// Restore the server from `img` inside the network namespace of `peer`.
fn restore_server(peer: i32, img: &Path) {
    restore_ok_in(Some(peer), img, &[]);
}

/// The server's pid from the peer's "ready PID ..." line.
fn server_pid(ready: &str) -> i32 {
    ready
        .split(' ')
        .nth(1)
        .and_then(|w| w.parse().ok())
        .expect("server pid")
}

#[test]
fn a_peer_outside_the_tree_gets_no_reset_while_the_network_is_locked() {
    need_root();
    let tmp = tmpdir();
    let out = tmp.path().join("answer");
    let script = tmp.path().join("peer.py");
    // The server echoes lines; the peer talks to it once, then on SIGUSR1
    // sends a line while the server is dumped and gone, and waits for its
    // echo (or a reset).
    let mut text = peer_script(
        7311,
        "out,",
        "f = c.makefile('rb')\nfor line in f:\n    c.sendall(b'echo:' + line)",
    );
    text.push_str(
        "c.sendall(b'one\\n'); first = c.recv(100)\n\
         asked = []\n\
         signal.signal(signal.SIGUSR1, lambda *a: asked.append(1))\n\
         say('ready %d %s' % (srv, first.decode().strip()))\n\
         while not asked:\n\
         \x20   time.sleep(0.02)\n\
         c.settimeout(60)\n\
         c.sendall(b'two\\n')\n\
         try:\n\
         \x20   say('ok ' + c.recv(100).decode().strip())\n\
         except OSError as e:\n\
         \x20   say('bad %s' % e)\n",
    );
    std::fs::write(&script, &text).expect("write script");
    let img = images(tmp.path(), "img");
    let peer = Job::start(&format!(
        "exec unshare -n python3 {} {}",
        script.display(),
        out.display()
    ));
    let ready = wait_file(&out, &["ready"], 30);
    let srv = server_pid(&ready);
    assert!(ready.ends_with(" echo:one"), "before the dump: {ready}");
    // The server's session: killed and waited for on every path.
    let _server = Job {
        child: None,
        pgid: srv,
    };
    dump_server(peer.pgid, srv, &img);
    std::fs::remove_file(&out).expect("remove ready file");
    // The peer sends while nothing listens: the lock drops its packets
    // (without it, the kernel answers with a reset at once).
    kill(Pid::from_raw(peer.pgid), Signal::SIGUSR1).expect("signal the peer");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !out.exists(),
        "the peer got an answer while the server was gone: {}",
        std::fs::read_to_string(&out).unwrap_or_default()
    );
    restore_server(peer.pgid, &img);
    let got = wait_file(&out, &["ok", "bad"], 60);
    assert_eq!(got, "ok echo:two", "what the peer got after the restore");
}

#[test]
fn a_half_closed_connection_to_a_peer_outside_the_tree_comes_back_under_the_lock() {
    need_root();
    let tmp = tmpdir();
    let out = tmp.path().join("answer");
    let go = tmp.path().join("go");
    let script = tmp.path().join("peer.py");
    // The peer sends a line and shuts down its sending half; the server
    // has read to the end (CLOSE_WAIT) and answers only once the test says
    // so, after the restore: its answer and then its FIN must reach the
    // peer, which is in FIN_WAIT2.
    let mut text = peer_script(
        7312,
        "out, go",
        "got = b''\n\
         while True:\n\
         \x20   b = c.recv(100)\n\
         \x20   if not b: break\n\
         \x20   got += b\n\
         while not os.path.exists(go): time.sleep(0.02)\n\
         c.sendall(b'got:' + got); c.close()",
    );
    text.push_str(
        "c.sendall(b'hello'); c.shutdown(socket.SHUT_WR)\n\
         time.sleep(0.2)\n\
         say('ready %d' % srv)\n\
         c.settimeout(60)\n\
         data = b''\n\
         try:\n\
         \x20   while True:\n\
         \x20       b = c.recv(100)\n\
         \x20       if not b: break\n\
         \x20       data += b\n\
         \x20   say('ok ' + data.decode())\n\
         except OSError as e:\n\
         \x20   say('bad %s' % e)\n",
    );
    std::fs::write(&script, &text).expect("write script");
    let img = images(tmp.path(), "img");
    let peer = Job::start(&format!(
        "exec unshare -n python3 {} {} {}",
        script.display(),
        out.display(),
        go.display()
    ));
    let srv = server_pid(&wait_file(&out, &["ready"], 30));
    let _server = Job {
        child: None,
        pgid: srv,
    };
    dump_server(peer.pgid, srv, &img);
    std::fs::remove_file(&out).expect("remove ready file");
    restore_server(peer.pgid, &img);
    std::fs::write(&go, "go").expect("tell the server");
    let got = wait_file(&out, &["ok", "bad"], 60);
    assert_eq!(got, "ok got:hello", "what the peer got after the restore");
}

/// A pty pair: the master (held by the test, as a terminal emulator would)
/// and the slave's path.
fn open_pty() -> (nix::pty::PtyMaster, String) {
    use nix::fcntl::OFlag;
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .expect("posix_openpt");
    nix::pty::grantpt(&master).expect("grantpt");
    nix::pty::unlockpt(&master).expect("unlockpt");
    let name = nix::pty::ptsname_r(&master).expect("ptsname");
    (master, name)
}

#[test]
fn restore_with_a_terminal_on_stderr() {
    need_root();
    let tmp = tmpdir();
    let counter = tmp.path().join("count");
    let mut job = Job::counter(&counter, "0.05");
    wait_counter(&counter, 2);
    let img = images(tmp.path(), "img");
    dump_ok(job.pgid, &img);
    job.reap();
    let stopped = read_counter(&counter);
    // As typed at a terminal: stderr is a tty, so the progress bar shows.
    let (master, name) = open_pty();
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&name)
        .expect("open the slave");
    let out = Command::new(stasis())
        .args(["restore", "-D", img.to_str().expect("utf8"), "-d"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(slave))
        .output()
        .expect("run stasis restore");
    // Whatever it wrote to the terminal (errors go there too).
    let mut said = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        use std::os::fd::AsFd;
        let mut fds = [nix::poll::PollFd::new(
            master.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        if nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO) != Ok(1) {
            break;
        }
        match nix::unistd::read(master.as_fd(), &mut buf) {
            Ok(n) if n > 0 => said.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    assert!(
        out.status.success(),
        "restore with a terminal on stderr failed: {}",
        String::from_utf8_lossy(&said)
    );
    assert!(
        wait_counter(&counter, stopped) == stopped + 1,
        "the counter did not resume where it stopped"
    );
}

#[test]
fn tail_follows_its_file_after_restore() {
    need_root();
    let tmp = tmpdir();
    let log = tmp.path().join("log");
    let out = tmp.path().join("out");
    std::fs::write(&log, "one\n").expect("write log");
    let mut job = Job::start(&format!(
        "exec tail -n +1 -f {} > {}",
        log.display(),
        out.display()
    ));
    wait_file(&out, &["one"], 10);
    // tail waits in poll() (inotify and its output) when it is dumped.
    std::thread::sleep(Duration::from_millis(200));
    let img = images(tmp.path(), "img");
    dump_ok(job.pgid, &img);
    job.reap();
    restore_ok(&img);
    let add = |line: &str| {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .expect("open log");
        writeln!(f, "{line}").expect("append");
    };
    add("two");
    wait_file(&out, &["one\ntwo"], 10);
    add("three");
    let got = wait_file(&out, &["one\ntwo\nthree\n"], 10);
    assert_eq!(
        got, "one\ntwo\nthree\n",
        "tail wrote more than the file holds"
    );
    assert!(
        group_members(job.pgid).contains(&job.pgid),
        "tail exited after restore"
    );
}

/// Run where its session and group leaders are out of sight (stasis in a
/// container, or under a supervisor whose session began in an outer PID
/// namespace: /proc says session 0), a task comes back in the restore's
/// session and group and keeps counting. The PID namespace ends with its
/// init, the shell, on every path.
#[test]
fn a_task_whose_session_leader_is_out_of_sight_comes_back() {
    need_root();
    let tmp = tmpdir();
    let img = images(tmp.path(), "img");
    let count = tmp.path().join("count");
    let script = format!(
        "set -e\n\
         i=0; (while :; do i=$((i+1)); echo $i > {count}; sleep 0.05; done) &\n\
         p=$!\n\
         while [ ! -s {count} ]; do sleep 0.05; done\n\
         grep -q ') [A-Z] [0-9]* 0 0 ' /proc/$p/stat || {{ echo leaders in sight; exit 3; }}\n\
         {stasis} dump -t $p -D {img}\n\
         wait $p || true\n\
         {stasis} restore -d -D {img}\n\
         a=$(cat {count}); sleep 0.5; b=$(cat {count})\n\
         [ \"$b\" -gt \"$a\" ] || {{ echo not counting: $a $b; exit 4; }}\n\
         kill -9 $p\n",
        count = count.display(),
        stasis = stasis(),
        img = img.display(),
    );
    let out = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "sh", "-c", &script])
        .stdin(Stdio::null())
        .output()
        .expect("run unshare (util-linux)");
    assert!(
        out.status.success(),
        "{}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A TCP listener holding a connection it has not accepted yet: the dump
/// refuses it by default (the connection would be lost) and leaves the
/// task running; with --skip-in-flight it drops the connection, and the
/// restored listener accepts new ones. In a network namespace of the
/// test's own.
#[test]
fn a_listener_with_a_connection_not_accepted_is_refused_unless_skip_in_flight() {
    need_root();
    let tmp = tmpdir();
    let out = tmp.path().join("answer");
    let script = tmp.path().join("listen.py");
    std::fs::write(
        &script,
        "import os, socket, sys, time\n\
         out = sys.argv[1]\n\
         l = socket.socket(); l.bind(('127.0.0.1', 7400)); l.listen(8)\n\
         c = socket.create_connection(('127.0.0.1', 7400))\n\
         open(out, 'w').write('ready')\n\
         while not os.path.exists(out + '.go'): time.sleep(0.05)\n\
         d = socket.create_connection(('127.0.0.1', 7400))\n\
         l.settimeout(10); a, _ = l.accept(); a.sendall(b'x')\n\
         open(out, 'w').write('ok' if d.recv(1) == b'x' else 'bad')\n\
         time.sleep(60)\n",
    )
    .expect("write script");
    let mut job = Job::start(&format!(
        "exec unshare -n sh -c 'ip link set lo up && exec python3 {} {}'",
        script.display(),
        out.display()
    ));
    wait_file(&out, &["ready"], 20);
    let img = images(tmp.path(), "img");
    let pid = job.pgid.to_string();
    let img_s = img.to_str().expect("utf8");
    let refused = run(&["dump", "-t", &pid, "-D", img_s, "--tcp-established"]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && err.contains("not accepted yet")
            && err.contains("--skip-in-flight"),
        "a dump of a listener with a connection waiting: {err}"
    );
    assert!(
        kill(Pid::from_raw(job.pgid), None).is_ok(),
        "the refused dump did not leave the task running"
    );
    dump_ok_with(job.pgid, &img, &["--tcp-established", "--skip-in-flight"]);
    job.reap();
    std::fs::remove_file(&out).expect("remove ready file");
    restore_ok(&img);
    std::fs::write(tmp.path().join("answer.go"), "").expect("go");
    assert_eq!(wait_file(&out, &["ok", "bad"], 20), "ok");
}

/// A socket made in another network namespace than its task's (the task
/// moved after making it) would come back in the task's: the dump refuses
/// it by name and leaves the task running.
#[test]
fn a_socket_of_another_network_namespace_is_refused() {
    need_root();
    let tmp = tmpdir();
    let out = tmp.path().join("ready");
    let script = tmp.path().join("moved.py");
    std::fs::write(
        &script,
        "import ctypes, socket, sys, time\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         if ctypes.CDLL(None, use_errno=True).unshare(0x40000000) != 0: sys.exit(3)\n\
         open(sys.argv[1], 'w').write('ready')\n\
         time.sleep(60)\n",
    )
    .expect("write script");
    let job = Job::start(&format!(
        "exec python3 {} {}",
        script.display(),
        out.display()
    ));
    wait_file(&out, &["ready"], 20);
    let img = images(tmp.path(), "img");
    let pid = job.pgid.to_string();
    let res = run(&["dump", "-t", &pid, "-D", img.to_str().expect("utf8")]);
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(
        !res.status.success() && err.contains("another network namespace"),
        "a dump of a socket from another network namespace: {err}"
    );
    assert!(
        kill(Pid::from_raw(job.pgid), None).is_ok(),
        "the refused dump did not leave the task running"
    );
}

/// The children of `pid`.
fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .collect()
}

#[test]
fn a_shell_job_restored_from_its_shell_is_in_the_foreground_again() {
    use std::os::fd::AsFd;
    need_root();
    let tmp = tmpdir();
    let img = images(tmp.path(), "img");
    let (master, name) = open_pty();
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&name)
        .expect("open the slave");
    let stdio = || Stdio::from(slave.try_clone().expect("dup the slave"));
    // An interactive shell with job control on the terminal, as a user has.
    let child = Command::new("setsid")
        .args(["-c", "bash", "--norc", "--noprofile", "-i"])
        .env("TERM", "dumb")
        .env("PS1", "$ ")
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(stdio())
        .stdout(stdio())
        .stderr(stdio())
        .spawn()
        .expect("start bash");
    drop(slave);
    let shell = i32::try_from(child.id()).expect("pid");
    let _job = Job {
        child: Some(child),
        pgid: shell,
    };
    read_until(&master, "$ ", 20);
    // A foreground job reading the terminal.
    nix::unistd::write(master.as_fd(), b"python3 -q -i\n").expect("type");
    read_until(&master, ">>> ", 20);
    nix::unistd::write(master.as_fd(), b"x = 6 * 7\n").expect("type");
    read_until(&master, ">>> ", 20);
    let py = children(shell);
    assert_eq!(py.len(), 1, "bash should have one job, it has {py:?}");
    // The restored job leads its own group; killed on every path.
    let _restored = Job {
        child: None,
        pgid: py[0],
    };
    dump_ok_with(py[0], &img, &["--shell-job"]);
    // The shell takes the terminal back once its job is gone.
    read_until(&master, "$ ", 20);
    let cmd = format!(
        "{} restore -D {} --shell-job -o restore.log -v4; echo rc=$?\n",
        stasis(),
        img.display()
    );
    nix::unistd::write(master.as_fd(), cmd.as_bytes()).expect("type");
    // The restored job reads the terminal: in the background it would stop
    // on SIGTTIN and never answer.
    let restored = Instant::now();
    while !children(shell)
        .iter()
        .any(|&s| children(s).contains(&py[0]))
    {
        assert!(
            restored.elapsed() < Duration::from_secs(20),
            "the job was not restored under the shell's stasis"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    nix::unistd::write(master.as_fd(), b"print(x + 1)\n").expect("type");
    let got = read_until(&master, "43", 20);
    assert!(got.contains("43"), "the job answered {got:?}");
    nix::unistd::write(master.as_fd(), b"exit(3)\n").expect("type");
    // The restore waited for its job and passed its exit code on.
    read_until(&master, "rc=3", 20);
    nix::unistd::write(master.as_fd(), b"exit\n").expect("type");
}

/// Rewrite the single-entry image `path` of message `message`, taking out
/// the field at `field` (a path of names through sub-messages).
fn drop_field(path: &Path, message: &str, field: &[&str]) {
    use prost::Message;
    use prost_reflect::{DynamicMessage, Value};
    let mut r = stasis_proto::ImageReader::open(path).expect("open image");
    let kind = r.kind();
    let frame = r.next_frame().expect("frame").expect("an entry");
    let desc = stasis_proto::json::message(message).expect("schema message");
    let mut msg = DynamicMessage::decode(desc, frame.as_slice()).expect("decode");
    fn clear(m: &mut DynamicMessage, field: &[&str]) {
        match field {
            [last] => {
                assert!(m.has_field_by_name(last), "no field {last} to drop");
                m.clear_field_by_name(last);
            }
            [first, rest @ ..] => match m.get_field_by_name_mut(first) {
                Some(Value::Message(sub)) => clear(sub, rest),
                _ => panic!("no sub-message {first}"),
            },
            [] => {}
        }
    }
    clear(&mut msg, field);
    let mut w = stasis_proto::ImageWriter::create(path, kind).expect("create image");
    w.write_frame(&msg.encode_to_vec()).expect("write");
    w.finish().expect("finish");
}

#[test]
fn a_core_image_without_a_required_register_is_refused_and_leaves_no_task() {
    need_root();
    let tmp = tmpdir();
    let counter = tmp.path().join("count");
    let mut job = Job::counter(&counter, "0.05");
    wait_counter(&counter, 2);
    let img = images(tmp.path(), "img");
    dump_ok(job.pgid, &img);
    job.reap();
    let regs: &[&str] = match std::env::consts::ARCH {
        "aarch64" => &["ti_aarch64", "gpregs", "pc"],
        "powerpc64" => &["ti_ppc64", "gpregs", "nip"],
        "s390x" => &["ti_s390", "gpregs", "psw_addr"],
        _ => &["thread_info", "gpregs", "orig_ax"],
    };
    let core = img.join(format!("core-{}.img", job.pgid));
    drop_field(&core, "core_entry", regs);
    let out = run(&["restore", "-D", img.to_str().expect("utf8"), "-d"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "restore of a broken core: {err}"
    );
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one error line, got {err}");
    let reg = regs[regs.len() - 1];
    assert!(
        lines[0].contains(&format!("core-{}.img", job.pgid)) && lines[0].contains(reg),
        "the error names neither the image nor the field: {err}"
    );
    eprintln!("the restore said: {err}");
    // No task of the tree came back.
    assert!(
        !Path::new(&format!("/proc/{}", job.pgid)).exists(),
        "a task was left behind"
    );
    wait_group_gone(job.pgid);
}

#[test]
fn dumping_a_tree_that_holds_stasis_itself_is_refused_up_front() {
    need_root();
    let tmp = tmpdir();
    let img = images(tmp.path(), "img");
    // This test process is stasis' parent: as if a user dumped the shell
    // they typed the command in.
    let me = std::process::id().to_string();
    let out = run(&["dump", "-t", &me, "-D", img.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("stasis runs inside this tree") && err.contains("from another terminal"),
        "{err}"
    );
    assert!(
        std::fs::read_dir(&img)
            .expect("images dir")
            .next()
            .is_none(),
        "the refused dump wrote images"
    );
}

#[test]
fn a_restore_right_after_the_dump_waits_for_the_killed_tree_to_be_reaped() {
    need_root();
    let tmp = tmpdir();
    let pidfile = tmp.path().join("job.pid");
    let counter = tmp.path().join("count");
    // As README's tour starts it: its parent is init, which reaps the
    // killed tree when it gets to it (some seconds, in some sandboxes).
    let started = Command::new("setsid")
        .args(["-f", "sh", "-c"])
        .arg(format!(
            "echo $$ > {}; i=0; while :; do i=$((i+1)); echo $i > {}; sleep 0.05; done",
            pidfile.display(),
            counter.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("setsid -f");
    assert!(started.success());
    let pid: i32 = wait_file(&pidfile, &["1", "2", "3", "4", "5", "6", "7", "8", "9"], 10)
        .trim()
        .parse()
        .expect("pid");
    let _job = Job {
        child: None,
        pgid: pid,
    };
    wait_counter(&counter, 2);
    let img = images(tmp.path(), "img");
    dump_ok(pid, &img);
    // At once, as a script would.
    restore_ok(&img);
    let stopped = read_counter(&counter);
    wait_counter(&counter, stopped);
}

/// CRIU's configuration files: `$CRIU_CONFIG_FILE` sets options in CRIU's
/// syntax (the dump leaves the tree running), the command line overrides
/// them (its `-o` wins over the file's `log-file`), a restore-only option
/// in the file is left out of a dump, and a bad value, an unknown option or
/// a missing `--config` file stops with its name and place.
#[test]
fn configuration_files_set_options_under_the_command_line() {
    need_root();
    let tmp = tmpdir();
    let counter = tmp.path().join("count");
    let job = Job::counter(&counter, "0.05");
    wait_counter(&counter, 2);
    let conf = tmp.path().join("criu.conf");
    std::fs::write(
        &conf,
        "# stasis reads CRIU's files\nleave-running\nlog-file \"from conf.log\"  # relative to -D\n\
         ghost-limit 2M\nrestore-detached\n",
    )
    .expect("write conf");
    let img = images(tmp.path(), "img");
    let pid = job.pgid.to_string();
    let dump = |conf: &Path, extra: &[&str]| {
        Command::new(stasis())
            .env("CRIU_CONFIG_FILE", conf)
            .args(["dump", "-t", &pid, "-D", img.to_str().expect("utf8")])
            .args(extra)
            .output()
            .expect("run stasis")
    };
    let out = dump(&conf, &["-o", "cli.log", "-v4"]);
    assert!(
        out.status.success(),
        "dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = read_counter(&counter);
    wait_counter(&counter, before + 1);
    let log = std::fs::read_to_string(img.join("cli.log")).expect("the command line's log-file");
    assert!(log.contains("dump finished"), "{log}");
    assert!(!img.join("from conf.log").exists());
    let out = dump(&conf, &[]);
    assert!(out.status.success());
    assert!(img.join("from conf.log").exists());
    std::fs::write(&conf, "ghost-limit nonsense\n").expect("write conf");
    let out = dump(&conf, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nonsense"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&conf, "leave-running\n\nno-such-option\n").expect("write conf");
    let out = dump(&conf, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("criu.conf:3") && err.contains("no-such-option"),
        "{err}"
    );
    let missing = tmp.path().join("missing.conf");
    let out = run(&[
        "dump",
        "-t",
        &pid,
        "--config",
        missing.to_str().expect("utf8"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("missing.conf") && err.contains("does not exist"),
        "{err}"
    );
    // None of these stopped the tree.
    let now = read_counter(&counter);
    wait_counter(&counter, now + 1);
}

/// A process in cgroups of its own (cgroup2 and the v1 pids hierarchy,
/// where mounted) comes back in them after they were removed (the restore
/// makes them), under `--cgroup-root` elsewhere, and with
/// `--manage-cgroups=ignore` in stasis' own; `full` is refused by name; a
/// restore that fails removes the cgroups it made.
#[test]
fn cgroups_come_back_made_moved_or_ignored() {
    need_root();
    // (name in /proc/PID/cgroup, mount point)
    let hier: Vec<(&str, String)> = ["", "pids"]
        .into_iter()
        .filter_map(|c| cgroup_mount(c).map(|p| (c, p)))
        .collect();
    assert!(
        !hier.is_empty(),
        "this test needs cgroup2 or the v1 pids hierarchy mounted"
    );
    let tag = format!("stasis-test-{}", std::process::id());
    let dirs: Vec<PathBuf> = hier
        .iter()
        .map(|(_, p)| Path::new(p).join(&tag).join("sub"))
        .collect();
    /// Removed, deepest first, on every path.
    struct Cleanup(Vec<PathBuf>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for d in &self.0 {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
    let _clean = Cleanup(
        hier.iter()
            .flat_map(|(_, p)| {
                let top = Path::new(p);
                [
                    top.join(&tag).join("sub"),
                    top.join(&tag),
                    top.join(format!("{tag}-new")),
                ]
            })
            .collect(),
    );
    for d in &dirs {
        std::fs::create_dir_all(d).expect("mkdir cgroup");
    }
    // A limit, which comes back with its cgroup (pids.max: v1 pids, or v2
    // where the pids controller is enabled there).
    let limits: Vec<PathBuf> = dirs
        .iter()
        .map(|d| d.join("pids.max"))
        .filter(|f| f.exists())
        .collect();
    for f in &limits {
        std::fs::write(f, "77").expect("set pids.max");
    }
    let limit_is = |want: &str, when: &str| {
        for f in &limits {
            assert_eq!(
                std::fs::read_to_string(f).expect("pids.max").trim(),
                want,
                "{} {when}",
                f.display()
            );
        }
    };
    let tmp = tmpdir();
    let counter = tmp.path().join("count");
    let joins: String = dirs
        .iter()
        .map(|d| format!("echo 0 > {}/cgroup.procs; ", d.display()))
        .collect();
    let mut job = Job::start(&format!(
        "{joins}i=0; while :; do i=$((i+1)); echo $i > {}; sleep 0.05; done",
        counter.display()
    ));
    wait_counter(&counter, 2);
    let pid = job.pgid;
    let cgroup_of = |name: &str| -> String {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        text.lines()
            .find_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, n, p) = (f.next()?, f.next()?, f.next()?);
                (n == name).then(|| p.to_owned())
            })
            .unwrap_or_default()
    };
    let want = format!("/{tag}/sub");
    for (name, _) in &hier {
        assert_eq!(cgroup_of(name), want, "before the dump ({name:?})");
    }
    let img = images(tmp.path(), "img");
    dump_ok(pid, &img);
    job.reap();
    let crit = crit_decodes_all(&img);
    assert!(crit.contains(&"cgroup.img".to_owned()), "{crit:?}");
    for d in &dirs {
        std::fs::remove_dir(d).expect("rmdir the emptied cgroup");
    }
    let img_s = img.to_str().expect("utf8");
    let restore_in = |extra: &[&str], want: &dyn Fn(&str) -> String| {
        let out = run(&[&["restore", "-D", img_s, "-d"], extra].concat());
        assert!(
            out.status.success(),
            "restore {extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let now = read_counter(&counter);
        wait_counter(&counter, now + 1);
        for (name, _) in &hier {
            assert_eq!(
                cgroup_of(name),
                want(name),
                "after restore {extra:?} ({name:?})"
            );
        }
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        wait_group_gone(pid);
    };
    // Made again, with their limits.
    restore_in(&[], &|_| want.clone());
    limit_is("77", "after the restore made it");
    // Existing: soft leaves their limits, full writes them.
    for f in &limits {
        std::fs::write(f, "max").expect("set pids.max");
    }
    restore_in(&[], &|_| want.clone());
    limit_is("max", "after a soft restore into it");
    restore_in(&["--manage-cgroups=full"], &|_| want.clone());
    limit_is("77", "after a full restore into it");
    // Elsewhere: only the pids hierarchy's part below the root's cgroup moves.
    let new_root = format!("pids:/{tag}-new");
    restore_in(&["--cgroup-root", &new_root], &|n| {
        if n == "pids" {
            format!("/{tag}-new")
        } else {
            want.clone()
        }
    });
    // Left where stasis is.
    let mine = std::fs::read_to_string("/proc/self/cgroup").expect("own cgroups");
    restore_in(&["--manage-cgroups=ignore"], &|n| {
        mine.lines()
            .find_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, x, p) = (f.next()?, f.next()?, f.next()?);
                (x == n).then(|| p.to_owned())
            })
            .unwrap_or_default()
    });
    // A restore that fails once the cgroups are made removes them again.
    for d in &dirs {
        let _ = std::fs::remove_dir(d);
    }
    // none and props join existing cgroups only.
    let out = run(&["restore", "-D", img_s, "-d", "--manage-cgroups=none"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("it is missing"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pages = img.join("pages-1.img");
    let len = std::fs::metadata(&pages).expect("pages").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&pages)
        .expect("open pages")
        .set_len(len / 2)
        .expect("truncate");
    let out = run(&["restore", "-D", img_s, "-d"]);
    assert_eq!(out.status.code(), Some(1));
    for d in &dirs {
        assert!(!d.exists(), "{} stayed after a failed restore", d.display());
    }
}

/// `--freeze-cgroup`: a tree that forks all the time, in a freezer cgroup
/// (cgroup2 and the v1 freezer, where mounted), is dumped through it and
/// comes back counting; a task of the cgroup outside the tree fails the
/// dump and every task is left running, untraced, the cgroup thawed.
#[test]
fn freeze_cgroup_dumps_a_forking_tree_and_refuses_strays() {
    need_root();
    let tops: Vec<String> = ["", "freezer"]
        .into_iter()
        .filter_map(cgroup_mount)
        .collect();
    assert!(
        !tops.is_empty(),
        "this test needs cgroup2 or the v1 freezer mounted"
    );
    for top in tops {
        let cg = Path::new(&top).join(format!("stasis-freeze-{}", std::process::id()));
        std::fs::create_dir_all(&cg).expect("mkdir cgroup");
        struct Rm(PathBuf);
        impl Drop for Rm {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir(&self.0);
            }
        }
        let _rm = Rm(cg.clone());
        let tmp = tmpdir();
        let counter = tmp.path().join("count");
        // Each round forks a subshell.
        let mut job = Job::start(&format!(
            "echo 0 > {}/cgroup.procs; i=0; while :; do i=$((i+1)); (echo $i > {}); done",
            cg.display(),
            counter.display()
        ));
        wait_counter(&counter, 100);
        let img = images(tmp.path(), "img");
        let cg_s = cg.to_str().expect("utf8");
        dump_ok_with(job.pgid, &img, &["--freeze-cgroup", cg_s]);
        job.reap();
        let state = |f: &str| std::fs::read_to_string(cg.join(f)).unwrap_or_default();
        assert!(
            !state("freezer.state").contains("FROZEN")
                && !state("cgroup.events").contains("frozen 1")
        );
        restore_ok(&img);
        let now = read_counter(&counter);
        wait_counter(&counter, now + 100);
        let _ = kill(Pid::from_raw(job.pgid), Signal::SIGKILL);
        wait_group_gone(job.pgid);
        // A stray: a second job in the same cgroup.
        let job = Job::counter(&counter, "0.05");
        let stray = Job::start(&format!(
            "echo 0 > {}/cgroup.procs; exec sleep 1000",
            cg.display()
        ));
        let t = Instant::now();
        let member = stray.pgid.to_string();
        while !std::fs::read_to_string(cg.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .any(|l| l == member)
        {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the stray did not join"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = run(&[
            "dump",
            "-t",
            &job.pgid.to_string(),
            "-D",
            img.to_str().expect("utf8"),
            "--freeze-cgroup",
            cg_s,
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("not in the tree"), "{err}");
        // Everyone runs on, untraced, the cgroup thawed.
        let now = read_counter(&counter);
        wait_counter(&counter, now + 1);
        for pid in [job.pgid, stray.pgid] {
            let st = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
            assert!(st.contains("TracerPid:\t0"), "{pid} still traced: {st}");
        }
        assert!(
            !state("freezer.state").contains("FROZEN")
                && !state("cgroup.events").contains("frozen 1")
        );
        assert!(t.elapsed() < Duration::from_secs(10));
        drop(stray);
        drop(job);
    }
}

/// `--action-script`: the script runs at every point of a dump and a
/// restore with CRIU's environment (the restored root's PID at
/// post-restore); a script that fails at post-dump fails the dump and the
/// tree keeps running.
#[test]
fn action_scripts_run_at_every_point_and_can_refuse() {
    need_root();
    let tmp = tmpdir();
    let counter = tmp.path().join("count");
    let mut job = Job::counter(&counter, "0.05");
    wait_counter(&counter, 2);
    let log = tmp.path().join("points");
    let script = tmp.path().join("script.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$CRTOOLS_SCRIPT_ACTION $CRTOOLS_INIT_PID $CRTOOLS_IMAGE_DIR\" >> {}\n\
             [ \"$CRTOOLS_SCRIPT_ACTION\" != post-dump ] || [ ! -e {}/refuse ]\n",
            log.display(),
            tmp.path().display()
        ),
    )
    .expect("script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let s = script.to_str().expect("utf8");
    let img = images(tmp.path(), "img");
    let pid = job.pgid;
    // Refused at post-dump: the dump fails, the tree runs on.
    std::fs::write(tmp.path().join("refuse"), "").expect("refuse");
    let out = run(&[
        "dump",
        "-t",
        &pid.to_string(),
        "-D",
        img.to_str().expect("utf8"),
        "--action-script",
        s,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("post-dump"));
    let now = read_counter(&counter);
    wait_counter(&counter, now + 1);
    std::fs::remove_file(tmp.path().join("refuse")).expect("rm");
    std::fs::write(&log, "").expect("truncate");
    dump_ok_with(pid, &img, &["--action-script", s]);
    job.reap();
    restore_ok_with(&img, &["--action-script", s]);
    let text = std::fs::read_to_string(&log).expect("points");
    let points: Vec<&str> = text.lines().filter_map(|l| l.split(' ').next()).collect();
    assert_eq!(
        points,
        [
            "pre-dump",
            "post-dump",
            "pre-restore",
            "setup-namespaces",
            "post-setup-namespaces",
            "post-restore",
            "post-resume"
        ],
        "{text}"
    );
    let post_restore = text
        .lines()
        .find(|l| l.starts_with("post-restore "))
        .unwrap_or("");
    assert!(post_restore.contains(&format!(" {pid} ")), "{text}");
    assert!(
        post_restore.ends_with(img.to_str().expect("utf8")),
        "{text}"
    );
    let now = read_counter(&counter);
    wait_counter(&counter, now + 1);
}

/// `--inherit-fd fd[N]:pipe:[INO]`: a job writing to a pipe read outside
/// the tree (a runtime's stdio) writes, once restored, to the pipe the
/// restore was given; a key no fd of the images has is refused.
#[test]
fn an_inherited_fd_takes_the_place_of_an_outside_pipe() {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    need_root();
    let tmp = tmpdir();
    let (r1, w1) = nix::unistd::pipe().expect("pipe");
    let ino = std::fs::File::from(r1.try_clone().expect("dup"))
        .metadata()
        .expect("fstat")
        .ino();
    let child = Command::new("setsid")
        .args([
            "sh",
            "-c",
            "i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.05; done",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::from(w1))
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut job = Job {
        pgid: i32::try_from(child.id()).expect("pid"),
        child: Some(child),
    };
    let mut first = [0u8; 6];
    std::fs::File::from(r1)
        .read_exact(&mut first)
        .expect("read the job");
    assert_eq!(&first, b"tick 1");
    let img = images(tmp.path(), "img");
    dump_ok(job.pgid, &img);
    job.reap();
    let img_s = img.to_str().expect("utf8");
    let out = run(&[
        "restore",
        "-d",
        "-D",
        img_s,
        "--inherit-fd",
        "fd[0]:pipe:[1]",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pipe:[1]"));
    let (r2, w2) = nix::unistd::pipe().expect("pipe");
    let key = format!("fd[1]:pipe:[{ino}]");
    let out = Command::new(env!("CARGO_BIN_EXE_stasis"))
        .args(["restore", "-d", "-D", img_s, "--inherit-fd", &key])
        .stdout(Stdio::from(w2))
        .stderr(Stdio::piped())
        .output()
        .expect("run stasis");
    assert!(
        out.status.success(),
        "restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut line = String::new();
    let mut r2 = std::io::BufReader::new(std::fs::File::from(r2));
    std::io::BufRead::read_line(&mut r2, &mut line).expect("read the restored job");
    assert!(line.starts_with("tick "), "{line:?}");
}
