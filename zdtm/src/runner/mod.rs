//! The runner: for each selected test and flavor, start the test program,
//! record its visible state, dump and restore it through the engine's CLI,
//! compare, ask it to verify (SIGTERM) and read its verdict. Hung steps time
//! out and everything the test started is killed. Results go to
//! [`report`].

pub mod engine;
pub mod known;
pub mod procs;
pub mod report;
pub mod state;

use std::collections::VecDeque;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::meta::{Flavor, Kind, Test};
use engine::Engine;
use known::KnownFailures;
use procs::{Ended, alive, kill_test, now_ticks, run_logged, wait_gone};

/// When to keep a case's directory (images, logs, outfile).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepImg {
    /// Always.
    Always,
    /// Only for failed cases.
    Failed,
    /// Never.
    Never,
}

/// How to run.
#[derive(Debug)]
pub struct Options {
    /// The `zdtm-tests` binary.
    pub tests_bin: PathBuf,
    /// The engine; `None` only with `nocr`.
    pub engine: Option<Engine>,
    /// Flavors to run each test in (those a test does not allow are skipped).
    pub flavors: Vec<Flavor>,
    /// Cases run at once (`excl` tests always run alone).
    pub jobs: usize,
    /// Dump/restore cycles per case.
    pub iters: u32,
    /// Only start and stop the tests (no C/R).
    pub nocr: bool,
    /// Dump with `--leave-running` and do not restore.
    pub norst: bool,
    /// Pre-dumps before each dump (`--pre N`): `ENGINE pre-dump --track-mem`,
    /// each with `--prev-images-dir` naming the one before.
    pub pre: u32,
    /// With `pre`: full snapshots (`dump --leave-running --track-mem`)
    /// instead of pre-dumps (`--snaps`).
    pub snaps: bool,
    /// Ask each test to damage its state; a PASS is then a failure.
    pub sabotage: bool,
    /// What to keep.
    pub keep_img: KeepImg,
    /// Where case directories go.
    pub work_dir: PathBuf,
    /// Limit for each step (start, dump, restore, verify).
    pub timeout: Duration,
    /// Expected failures.
    pub known: Option<KnownFailures>,
    /// Print one line per finished case.
    pub progress: bool,
}

/// The verdict on one case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Worked.
    Pass,
    /// Did not.
    Fail,
    /// Not run; the reason says why.
    Skip,
    /// Failed, and the known-failures list says it does.
    ExpectedFail,
    /// Listed as a known failure but passed.
    UnexpectedPass,
}

impl Status {
    /// Word for reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "PASS",
            Self::Fail => "FAIL",
            Self::Skip => "SKIP",
            Self::ExpectedFail => "XFAIL",
            Self::UnexpectedPass => "XPASS",
        }
    }

    /// Whether this makes the run fail.
    pub fn is_failure(self) -> bool {
        matches!(self, Self::Fail | Self::UnexpectedPass)
    }
}

/// The result of one test in one flavor.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// Test name.
    pub name: &'static str,
    /// Its category.
    pub category: &'static str,
    /// The flavor.
    pub flavor: Flavor,
    /// Verdict.
    pub status: Status,
    /// Why (failure detail, skip reason, expected-failure reason).
    pub reason: String,
    /// Wall time.
    pub duration: Duration,
    /// The kept case directory, if any.
    pub dir: Option<PathBuf>,
}

/// Pick tests: `-t` names (even `noauto` ones), `-T` regex and `-a` (both
/// without `noauto`), minus `-x` regex matches. Unknown `-t` names are
/// returned as errors.
pub fn select(
    tests: &[Test],
    names: &[String],
    pattern: Option<&regex::Regex>,
    all: bool,
    exclude: Option<&regex::Regex>,
) -> Result<Vec<Test>, String> {
    for n in names {
        if !tests.iter().any(|t| t.name == n) {
            return Err(format!("no test named {n:?} (zdtm list shows every name)"));
        }
    }
    Ok(tests
        .iter()
        .filter(|t| {
            names.iter().any(|n| n == t.name)
                || (!t.flags.noauto && (all || pattern.is_some_and(|p| p.is_match(t.name))))
        })
        .filter(|t| !exclude.is_some_and(|x| x.is_match(t.name)))
        .copied()
        .collect())
}

/// Run every case; excl tests after the others, one at a time.
pub fn run(tests: &[Test], opts: &Options) -> Vec<CaseResult> {
    let cases: Vec<(Test, Flavor)> = tests
        .iter()
        .flat_map(|t| opts.flavors.iter().map(move |f| (*t, *f)))
        .collect();
    let (excl, par): (Vec<_>, Vec<_>) = cases.into_iter().partition(|(t, _)| t.flags.excl);
    let results = Mutex::new(Vec::new());
    let queue = Mutex::new(par.into_iter().collect::<VecDeque<_>>());
    let record = |r: CaseResult| {
        if opts.progress {
            println!("{}", report::progress_line(&r));
        }
        if let Ok(mut v) = results.lock() {
            v.push(r);
        }
    };
    std::thread::scope(|s| {
        for _ in 0..opts.jobs.max(1) {
            s.spawn(|| {
                while let Some((t, f)) = queue.lock().ok().and_then(|mut q| q.pop_front()) {
                    record(run_case(&t, f, opts));
                }
            });
        }
    });
    for (t, f) in excl {
        record(run_case(&t, f, opts));
    }
    let mut v = results.into_inner().unwrap_or_default();
    let order: Vec<&str> = tests.iter().map(|t| t.name).collect();
    v.sort_by_key(|r| (order.iter().position(|n| *n == r.name), r.flavor));
    v
}

/// Why a case is skipped, if it is.
pub fn skip_reason(t: &Test, flavor: Flavor, opts: &Options) -> Option<String> {
    if let Some(a) = t.arch
        && a != std::env::consts::ARCH
    {
        return Some(format!(
            "arch: runs on {a} only (this is {})",
            std::env::consts::ARCH
        ));
    }
    if let Some(f) = t.cpu_flag
        && !cpu_has(f)
    {
        return Some(format!("cpu: this CPU lacks the {f} flag"));
    }
    if !t.has_flavor(flavor) {
        return Some(format!(
            "flavor: the test does not support flavor {}",
            flavor.as_str()
        ));
    }
    if let Some(tool) = t.tools.iter().find(|tool| !on_path(tool)) {
        return Some(format!("tool: the test runs {tool}, which is not on PATH"));
    }
    // busybox's ip makes no veth, tun or bridge and prints less.
    if t.tools.contains(&"ip") && !is_iproute2() {
        return Some(
            "tool: the test runs iproute2's ip; the ip on PATH is another (busybox's?)".into(),
        );
    }
    if !opts.nocr
        && let Some(e) = &opts.engine
    {
        if flavor == Flavor::Uns
            && let Some(why) = e.missing_feature("userns")
        {
            return Some(format!("flavor uns: {why}"));
        }
        for f in t.features {
            if let Some(why) = e.missing_feature(f) {
                return Some(format!("feature: {why}"));
            }
        }
    }
    None
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| {
            std::fs::metadata(d.join(tool)).is_ok_and(|m| {
                std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
            })
        })
    })
}

/// Whether the `ip` on PATH is iproute2's.
fn is_iproute2() -> bool {
    std::process::Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("iproute2"))
}

fn cpu_has(flag: &str) -> bool {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find(|l| l.starts_with("flags") || l.starts_with("Features"))
        .is_some_and(|l| l.split_whitespace().any(|w| w == flag))
}

/// Run one test in one flavor.
pub fn run_case(t: &Test, flavor: Flavor, opts: &Options) -> CaseResult {
    procs::adopt_orphans();
    let started = Instant::now();
    let mut res = CaseResult {
        name: t.name,
        category: t.category.as_str(),
        flavor,
        status: Status::Skip,
        reason: String::new(),
        duration: Duration::ZERO,
        dir: None,
    };
    if let Some(why) = skip_reason(t, flavor, opts) {
        res.reason = why;
        return res;
    }
    let dir = opts
        .work_dir
        .join(format!("{}.{}", t.name, flavor.as_str()));
    let outcome = if nix::unistd::geteuid().is_root() {
        Case::new(t, flavor, opts, &dir).and_then(|mut c| {
            let r = c.run();
            let left = c.cleanup();
            match r {
                Ok(_) if !left.is_empty() => {
                    Err(format!("the test left processes behind (killed): {left:?}"))
                }
                r => r,
            }
        })
    } else {
        Err("zdtm tests need root (they create namespaces, change ids and are dumped by ptrace); run as root".into())
    };
    res.duration = started.elapsed();
    match outcome {
        Ok(note) => {
            res.status = Status::Pass;
            res.reason = note;
        }
        Err(why) => {
            res.status = Status::Fail;
            res.reason = why;
        }
    }
    if let Some(k) = &opts.known
        && let Some(why) = k.reason(t.name, flavor)
    {
        res.status = match res.status {
            Status::Fail => {
                res.reason = format!("expected failure ({why}): {}", res.reason);
                Status::ExpectedFail
            }
            _ => {
                res.reason =
                    format!("unexpected pass: remove it from the known-failures list ({why})");
                Status::UnexpectedPass
            }
        };
    }
    let keep = match opts.keep_img {
        KeepImg::Always => true,
        KeepImg::Failed => res.status.is_failure(),
        KeepImg::Never => false,
    };
    if keep {
        res.dir = Some(dir);
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    res
}

/// One running case: its files and the test's root pid.
struct Case<'a> {
    t: &'a Test,
    flavor: Flavor,
    opts: &'a Options,
    dir: PathBuf,
    since: u64,
    pid: Option<i32>,
}

impl<'a> Case<'a> {
    fn new(t: &'a Test, flavor: Flavor, opts: &'a Options, dir: &Path) -> Result<Self, String> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        // Tests that drop their ids still have to rename their (root-owned)
        // outfile here: world-writable, and not sticky.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))
            .map_err(|e| format!("chmod {}: {e}", dir.display()))?;
        Ok(Self {
            t,
            flavor,
            opts,
            dir: dir.to_owned(),
            since: now_ticks(),
            pid: None,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn run(&mut self) -> Result<String, String> {
        let mut pid = self.start()?;
        let mut note = String::new();
        if self.opts.sabotage {
            note = self.sabotage(pid)?;
        }
        if !self.opts.nocr {
            for iter in 0..self.opts.iters.max(1) {
                match self.cr(pid, iter)? {
                    CrEnd::Done(now) => {
                        // The ns flavors' init comes back with another
                        // outer PID.
                        pid = now;
                        self.pid = Some(now);
                    }
                    CrEnd::ExpectedFailure(why) => {
                        // A refused dump must leave the test running as it was.
                        let verdict = self.stop(pid)?;
                        return if verdict.starts_with("PASS") {
                            Ok(format!("C/R failed as expected: {why}"))
                        } else {
                            Err(format!(
                                "C/R failed as expected ({why}), but the test then reported {verdict}"
                            ))
                        };
                    }
                }
            }
            if self.t.flags.crfail {
                return Err("C/R was expected to fail (crfail) but succeeded".into());
            }
        }
        let verdict = self.stop(pid)?;
        match (self.opts.sabotage, verdict.starts_with("PASS")) {
            (false, true) => Ok(note),
            (false, false) => Err(format!("the test reported {verdict}")),
            (true, false) => Ok(format!("sabotage ({note}) detected: {verdict}")),
            (true, true) => Err(format!(
                "sabotage ({note}) went unnoticed: the test still reports PASS"
            )),
        }
    }

    /// Start the test program and read its pid.
    fn start(&mut self) -> Result<i32, String> {
        let mut cmd = Command::new(&self.opts.tests_bin);
        cmd.arg(self.t.name)
            .arg("--pidfile")
            .arg(self.path("test.pid"))
            .arg("--outfile")
            .arg(self.path("test.out"))
            .arg("--filename")
            .arg(self.path("test.file"))
            .arg("--dirname")
            .arg(self.path("test.dir"))
            .env("ZDTM_FLAVOR", self.flavor.as_str())
            .env("ZDTM_ENV00", "zdtm environment check \u{1F4A4}");
        let log = self.path("test.log");
        match run_logged(&mut cmd, &log, self.opts.timeout) {
            Ok(Ended::Status(st)) if st.success() => {}
            Ok(Ended::Status(st)) => {
                return Err(format!("the test did not start ({st}): {}", tail(&log, 4)));
            }
            Ok(Ended::TimedOut) => {
                return Err(format!(
                    "the test did not become ready within {} s",
                    self.opts.timeout.as_secs()
                ));
            }
            Err(e) => return Err(format!("cannot run {}: {e}", self.opts.tests_bin.display())),
        }
        let text = std::fs::read_to_string(self.path("test.pid"))
            .map_err(|e| format!("read pidfile: {e}"))?;
        let pid: i32 = text
            .trim()
            .parse()
            .map_err(|e| format!("bad pidfile {text:?}: {e}"))?;
        self.pid = Some(pid);
        Ok(pid)
    }

    /// SIGUSR2, then wait for the test's `sabotage:` line.
    fn sabotage(&self, pid: i32) -> Result<String, String> {
        kill(Pid::from_raw(pid), Signal::SIGUSR2).map_err(|e| format!("send SIGUSR2: {e}"))?;
        let deadline = Instant::now() + self.opts.timeout;
        let inprogress = self.path("test.out.inprogress");
        loop {
            let text = std::fs::read_to_string(&inprogress).unwrap_or_default();
            if let Some(l) = text
                .lines()
                .find_map(|l| l.split_once("sabotage: ").map(|(_, w)| w.to_owned()))
            {
                // Let a forwarded request reach the child before going on.
                std::thread::sleep(Duration::from_millis(100));
                return Ok(l);
            }
            if Instant::now() > deadline {
                return Err("the test did not acknowledge the sabotage request".into());
            }
            if !alive(pid) {
                return Err(format!(
                    "the test died after the sabotage request: {}",
                    tail(&inprogress, 3)
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// One dump (and restore, unless norst), with the visible-state check.
    fn cr(&mut self, pid: i32, iter: u32) -> Result<CrEnd, String> {
        let Some(engine) = &self.opts.engine else {
            return Err("no engine given (use --engine, or --nocr)".into());
        };
        let shape_only = self.t.kind == Kind::Transition;
        let before = state::snapshot(pid, shape_only);
        // Every process of the tree must be gone (reaped) before the restore.
        let members = state::tree(pid);
        let mut now = pid;
        let img = self.path(&format!("img-{iter}"));
        std::fs::create_dir_all(&img).map_err(|e| format!("create {}: {e}", img.display()))?;
        let crfail = self.t.flags.crfail;
        let mut prev: Option<String> = None;
        for k in 0..self.opts.pre {
            let name = format!("img-{iter}-pre-{k}");
            let dir = self.path(&name);
            std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
            let mut args: Vec<&str> = vec!["--track-mem"];
            let rel = prev.as_ref().map(|p| format!("../{p}"));
            if let Some(r) = &rel {
                args.extend(["--prev-images-dir", r.as_str()]);
            }
            args.extend(self.t.opts.iter().copied());
            let verb = if self.opts.snaps { "dump" } else { "pre-dump" };
            if let Err(e) = engine.pre_dump(verb, pid, &dir, &args, self.opts.timeout) {
                if crfail {
                    return Ok(CrEnd::ExpectedFailure(e));
                }
                return Err(e);
            }
            if !alive(pid) {
                return Err(format!("pid {pid} is gone after {verb} {k}"));
            }
            prev = Some(name);
        }
        let rel = prev.as_ref().map(|p| format!("../{p}"));
        let mut dump_args: Vec<&str> = self.t.opts.to_vec();
        if let Some(r) = &rel {
            dump_args.extend(["--track-mem", "--prev-images-dir", r.as_str()]);
        }
        if let Err(e) = engine.dump(pid, &img, &dump_args, self.opts.norst, self.opts.timeout) {
            if crfail {
                // A failed dump must leave the tree running as it was.
                if !alive(pid) {
                    return Err(format!("dump failed as expected ({e}) but killed the test"));
                }
                let after = state::snapshot(pid, shape_only);
                check_same(&before, &after, "after the failed dump")?;
                return Ok(CrEnd::ExpectedFailure(e));
            }
            return Err(e);
        }
        if !self.opts.norst {
            if !wait_gone(pid, self.opts.timeout) {
                return Err(format!(
                    "pid {pid} still exists {} s after a successful dump",
                    self.opts.timeout.as_secs()
                ));
            }
            for p in &members {
                if !wait_gone(*p, self.opts.timeout) {
                    return Err(format!("pid {p} of the tree still exists after the dump"));
                }
            }
            if !procs::wait_test_gone(pid, self.since, self.opts.timeout) {
                return Err("processes of the test still exist after the dump".into());
            }
            let pidfile = img.join("restore.pid");
            if let Err(e) = engine.restore(&img, &pidfile, self.t.opts, self.opts.timeout) {
                if crfail {
                    return Ok(CrEnd::ExpectedFailure(e));
                }
                return Err(e);
            }
            if let Ok(text) = std::fs::read_to_string(&pidfile) {
                let got = text.trim();
                match got.parse::<i32>() {
                    Ok(p) if p == pid => {}
                    // In a PID namespace of its own only its PIDs there
                    // are restored.
                    Ok(p) if self.flavor != Flavor::H => now = p,
                    _ => {
                        return Err(format!(
                            "restore wrote pid {got} to its pidfile, the test's pid is {pid}"
                        ));
                    }
                }
            }
            // From here the restored test is the one to clean up, whatever
            // the checks say (in the ns flavors its init has another PID).
            self.pid = Some(now);
            if !alive(now) {
                return Err(format!("pid {now} is not running after restore"));
            }
        }
        let after = state::snapshot(now, shape_only);
        check_same(
            &before,
            &after,
            if self.opts.norst {
                "after dump --leave-running"
            } else {
                "after restore"
            },
        )?;
        Ok(CrEnd::Done(now))
    }

    /// SIGTERM, then wait for the outfile; returns its verdict line.
    fn stop(&self, pid: i32) -> Result<String, String> {
        kill(Pid::from_raw(pid), Signal::SIGTERM)
            .map_err(|e| format!("send SIGTERM to {pid}: {e}"))?;
        let out = self.path("test.out");
        let deadline = Instant::now() + self.opts.timeout;
        while !out.exists() {
            if Instant::now() > deadline {
                let partial = tail(&self.path("test.out.inprogress"), 3);
                return Err(format!(
                    "no verdict {} s after SIGTERM (log: {partial})",
                    self.opts.timeout.as_secs()
                ));
            }
            if !alive(pid) && !out.exists() {
                // Give a rename racing with the exit a moment.
                std::thread::sleep(Duration::from_millis(50));
                if !out.exists() {
                    return Err(format!(
                        "the test died without a verdict (log: {})",
                        tail(&self.path("test.out.inprogress"), 3)
                    ));
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let text = std::fs::read_to_string(&out).map_err(|e| format!("read outfile: {e}"))?;
        let verdict = text
            .lines()
            .rev()
            .find(|l| l.starts_with("PASS") || l.starts_with("FAIL"))
            .unwrap_or("");
        if verdict.is_empty() {
            return Err(format!(
                "the outfile holds no PASS or FAIL line: {}",
                tail(&out, 3)
            ));
        }
        Ok(verdict.to_owned())
    }

    /// Kill whatever the test left behind; returns the pids that were still
    /// there (after a verdict, none should be).
    fn cleanup(&mut self) -> Vec<i32> {
        let Some(pid) = self.pid.take() else {
            return Vec::new();
        };
        let deadline = Instant::now() + Duration::from_secs(2);
        while !procs::test_procs(pid, self.since).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        kill_test(pid, self.since)
    }
}

enum CrEnd {
    /// C/R done; the test's PID now.
    Done(i32),
    ExpectedFailure(String),
}

fn check_same(before: &state::Snapshot, after: &state::Snapshot, when: &str) -> Result<(), String> {
    let d = state::diff(before, after);
    if d.is_empty() {
        return Ok(());
    }
    let shown: Vec<_> = d.iter().take(12).cloned().collect();
    let more = if d.len() > 12 {
        format!(" (and {} more)", d.len() - 12)
    } else {
        String::new()
    };
    Err(format!(
        "visible state differs {when}: {}{more}",
        shown.join("; ")
    ))
}

/// The last `n` non-empty lines of a file, joined.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}
