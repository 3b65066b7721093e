//! The test side of the zdtm protocol: argument parsing, the fork that lets
//! the launcher write the pidfile once the test is armed, waiting for SIGTERM
//! (and SIGUSR2, the sabotage request), child processes, verification helpers
//! and the PASS/FAIL outfile.
//!
//! A test body gets a [`Ctx`], creates its objects, then calls
//! [`Ctx::wait`] (static tests) or [`Ctx::transition`] (tests that keep
//! changing their state), and afterwards compares concrete values, returning
//! `Err(Fail::Mismatch)` with what differs.

pub mod ns;
pub mod sys;

use std::ffi::OsString;
use std::fmt::Display;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};

use crate::meta::{Flavor, Test};
use sys::{TERM, USR2};

/// Why a test failed.
#[derive(Debug, thiserror::Error)]
pub enum Fail {
    /// A call the test needed failed (setup or verification could not run).
    #[error("{0}")]
    Sys(String),
    /// The state differs from what was set up.
    #[error("{0}")]
    Mismatch(String),
}

/// A test step's result.
pub type Res<T = ()> = Result<T, Fail>;

/// Turn any error into a [`Fail::Sys`] naming the step.
pub trait OrFail<T> {
    /// Attach the name of the failing step.
    fn or_fail(self, what: &str) -> Res<T>;
}

impl<T, E: Display> OrFail<T> for Result<T, E> {
    fn or_fail(self, what: &str) -> Res<T> {
        self.map_err(|e| Fail::Sys(format!("{what}: {e}")))
    }
}

/// Fail with a mismatch unless `got == want`.
#[macro_export]
macro_rules! ensure_eq {
    ($what:expr, $got:expr, $want:expr) => {{
        // A match keeps temporaries in the operands alive (as assert_eq! does).
        match (&$got, &$want) {
            (got, want) => {
                if got != want {
                    return Err($crate::testlib::Fail::Mismatch(format!(
                        "{}: got {:?}, want {:?}",
                        $what, got, want
                    )));
                }
            }
        }
    }};
}

/// Fail with a mismatch message unless the condition holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {{
        if !$cond {
            return Err($crate::testlib::Fail::Mismatch(format!($($fmt)+)));
        }
    }};
}

/// A position-dependent byte pattern: a byte moved, lost or duplicated at any
/// position shows up as a difference.
pub fn pattern(seed: u64, i: usize) -> u8 {
    let i = i as u64;
    let x = i
        .wrapping_mul(0x9e37_79b9)
        .wrapping_add(seed.wrapping_mul(0x85eb_ca6b))
        ^ (i >> 12).wrapping_mul(0xc2b2_ae35);
    (x ^ (x >> 17)).to_le_bytes()[0]
}

/// `len` bytes of [`pattern`].
pub fn pattern_vec(seed: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| pattern(seed, i)).collect()
}

/// Describe the first difference between two byte strings.
pub fn diff_bytes(what: &str, got: &[u8], want: &[u8]) -> Res {
    if got.len() != want.len() {
        return Err(Fail::Mismatch(format!(
            "{what}: got {} bytes, want {}",
            got.len(),
            want.len()
        )));
    }
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        return Err(Fail::Mismatch(format!(
            "{what}: byte {i} is {:#04x}, want {:#04x}",
            got[i], want[i]
        )));
    }
    Ok(())
}

/// What the loop of a transition test is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// Change the state a little more.
    Step,
    /// Damage the state the way a broken restore would (sabotage mode).
    Sabotage,
}

/// A child process started with [`Ctx::spawn`].
#[derive(Debug, Clone)]
pub struct Kid {
    /// Its pid.
    pub pid: Pid,
    /// Its role, used in messages.
    pub role: String,
}

/// The test's handle on the protocol.
#[derive(Debug)]
pub struct Ctx {
    name: &'static str,
    role: String,
    out: File,
    inprogress: PathBuf,
    filename: PathBuf,
    dirname: PathBuf,
    ready: Option<OwnedFd>,
    kids: Vec<Kid>,
}

impl Ctx {
    /// The test's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// A path the test may create (`--filename`).
    pub fn filename(&self) -> &Path {
        &self.filename
    }

    /// A directory path the test may create (`--dirname`).
    pub fn dirname(&self) -> &Path {
        &self.dirname
    }

    /// Create `--dirname` and return it.
    pub fn mkdir(&self) -> Res<PathBuf> {
        std::fs::create_dir_all(&self.dirname).or_fail("mkdir dirname")?;
        Ok(self.dirname.clone())
    }

    /// The children spawned so far.
    pub fn kids(&self) -> &[Kid] {
        &self.kids
    }

    /// Append a line to the outfile.
    pub fn log(&self, msg: &str) {
        // A failed log write cannot be reported anywhere better.
        let _ = (&self.out).write_all(format!("{}: {msg}\n", self.role).as_bytes());
    }

    /// Tell the waiting parent that the objects are set up.
    pub fn ready(&mut self) -> Res {
        if let Some(fd) = self.ready.take() {
            nix::unistd::write(&fd, b"R").or_fail("signal readiness")?;
        }
        Ok(())
    }

    /// The readiness pipe, for a test that must say it is ready from
    /// another thread (write one byte to it; dropping it says nothing).
    pub fn take_ready(&mut self) -> Option<OwnedFd> {
        self.ready.take()
    }

    /// Signal readiness, then sleep until SIGTERM. If SIGUSR2 arrives first,
    /// run `sabotage` once and log `sabotage: WHAT`.
    pub fn wait(&mut self, what: &str, sabotage: impl FnOnce() -> Res) -> Res {
        self.ready()?;
        let mut sabotage = Some(sabotage);
        loop {
            if USR2.swap(false, Ordering::SeqCst)
                && let Some(f) = sabotage.take()
            {
                f()?;
                self.log(&format!("sabotage: {what}"));
            }
            if TERM.load(Ordering::SeqCst) {
                return Ok(());
            }
            nap(50);
        }
    }

    /// Signal readiness after the first step, then keep calling
    /// `step(Tick::Step)` until SIGTERM; on SIGUSR2 call
    /// `step(Tick::Sabotage)` once and log `sabotage: WHAT`. A step that
    /// fails stops the stepping; the error is returned after SIGTERM, so the
    /// test stays up until it is asked for its verdict.
    pub fn transition(&mut self, what: &str, mut step: impl FnMut(Tick) -> Res) -> Res {
        let mut sabotaged = false;
        step(Tick::Step)?;
        self.ready()?;
        let mut failed = None;
        loop {
            if USR2.swap(false, Ordering::SeqCst) && !sabotaged {
                sabotaged = true;
                if failed.is_none() {
                    failed = step(Tick::Sabotage).err();
                }
                self.log(&format!("sabotage: {what}"));
            }
            if TERM.load(Ordering::SeqCst) {
                return failed.map_or(Ok(()), Err);
            }
            if failed.is_none() {
                failed = step(Tick::Step).err();
            } else {
                nap(50);
            }
        }
    }

    /// Fork a child running `body` in its own [`Ctx`]; returns once the child
    /// is ready (called `wait` or `ready`). The child exits 0 when `body`
    /// returns Ok, 1 (after logging `FAIL: [role] ...`) otherwise.
    pub fn spawn(&mut self, role: &str, body: impl FnOnce(&mut Ctx) -> Res) -> Res<Pid> {
        let (r, w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).or_fail("pipe for child readiness")?;
        let out = self.out.try_clone().or_fail("dup outfile")?;
        match sys::fork().or_fail("fork")? {
            ForkResult::Child => {
                drop(r);
                let mut c = Ctx {
                    name: self.name,
                    role: role.to_owned(),
                    out,
                    inprogress: self.inprogress.clone(),
                    filename: self.filename.clone(),
                    dirname: self.dirname.clone(),
                    ready: Some(w),
                    kids: Vec::new(),
                };
                let code = match body(&mut c) {
                    Ok(()) => 0,
                    Err(e) => {
                        c.log(&format!("FAIL: {e}"));
                        1
                    }
                };
                c.kill_kids();
                sys::exit_now(code)
            }
            ForkResult::Parent { child } => {
                let wfd = w.as_raw_fd();
                drop(w);
                drop(out);
                let mut b = [0u8; 1];
                let n = read_retry(&r, &mut b);
                if n == Ok(1) {
                    wait_closed(child, wfd, &r);
                }
                if n != Ok(1) {
                    let st = waitpid(child, None);
                    return Err(Fail::Sys(format!(
                        "child {role} died before it was ready ({st:?}){}",
                        self.kid_failure(role)
                    )));
                }
                self.kids.push(Kid {
                    pid: child,
                    role: role.to_owned(),
                });
                Ok(child)
            }
        }
    }

    /// The `FAIL:` line a child logged, if any, prefixed for a message.
    fn kid_failure(&self, role: &str) -> String {
        let text = std::fs::read_to_string(&self.inprogress).unwrap_or_default();
        let prefix = format!("{role}: FAIL: ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|m| format!(": {m}"))
            .unwrap_or_default()
    }

    /// Stop tracking the children (the test reaped them itself).
    pub fn take_kids(&mut self) -> Vec<Kid> {
        std::mem::take(&mut self.kids)
    }

    /// Ask every child to verify (SIGTERM) and collect their verdicts.
    pub fn check_kids(&mut self) -> Res {
        let kids = std::mem::take(&mut self.kids);
        for k in &kids {
            // A child that is already gone is reported by waitpid below.
            let _ = kill(k.pid, Signal::SIGTERM);
        }
        let mut errs = Vec::new();
        for k in &kids {
            match waitpid(k.pid, None) {
                Ok(WaitStatus::Exited(_, 0)) => {}
                Ok(WaitStatus::Exited(_, c)) => {
                    errs.push(format!(
                        "child {} exited with {c}{}",
                        k.role,
                        self.kid_failure(&k.role)
                    ));
                }
                Ok(WaitStatus::Signaled(_, s, _)) => {
                    errs.push(format!("child {} was killed by {s}", k.role))
                }
                Ok(st) => errs.push(format!("child {}: unexpected status {st:?}", k.role)),
                Err(e) => errs.push(format!("child {} (pid {}): waitpid: {e}", k.role, k.pid)),
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(Fail::Mismatch(errs.join("; ")))
        }
    }

    /// SIGKILL every child with all its descendants (collected first, so an
    /// orphaned grandchild is not missed), then reap the children.
    fn kill_kids(&mut self) {
        let kids = std::mem::take(&mut self.kids);
        let all: Vec<i32> = kids
            .iter()
            .flat_map(|k| crate::runner::state::tree(k.pid.as_raw()))
            .collect();
        for pid in all {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        for k in kids {
            let _ = waitpid(k.pid, None);
        }
    }
}

/// Forward the sabotage request to a child (it runs its own sabotage).
pub fn forward(kid: Pid) -> Res {
    kill(kid, Signal::SIGUSR2).or_fail("forward SIGUSR2 to the child")
}

/// Sleep up to `ms` milliseconds; returns early when a signal arrives.
pub fn nap(ms: u16) {
    // poll() with no fds is an interruptible sleep; EINTR is the wake-up.
    let _ = nix::poll::poll(&mut [], nix::poll::PollTimeout::from(ms));
}

/// read(2), retried on EINTR.
pub fn read_retry(fd: &impl AsFd, buf: &mut [u8]) -> Result<usize, nix::errno::Errno> {
    loop {
        match nix::unistd::read(fd, buf) {
            Err(nix::errno::Errno::EINTR) => {}
            r => return r,
        }
    }
}

/// Parsed `zdtm-tests` arguments.
#[derive(Debug, Default)]
struct Args {
    name: String,
    pidfile: Option<PathBuf>,
    outfile: Option<PathBuf>,
    filename: Option<PathBuf>,
    dirname: Option<PathBuf>,
}

fn parse(args: &[OsString]) -> Result<Args, String> {
    let mut a = Args::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let s = arg.to_string_lossy();
        let key = s.split_once('=').map_or(&*s, |(k, _)| k);
        let inline = s.split_once('=').map(|(_, v)| PathBuf::from(v));
        let slot = match key {
            "--pidfile" => &mut a.pidfile,
            "--outfile" => &mut a.outfile,
            "--filename" => &mut a.filename,
            "--dirname" => &mut a.dirname,
            _ if !s.starts_with('-') && a.name.is_empty() => {
                a.name = s.into_owned();
                continue;
            }
            _ => return Err(format!("unexpected argument {s:?}")),
        };
        let v = match inline {
            Some(v) => v,
            None => PathBuf::from(it.next().ok_or_else(|| format!("{key} needs a value"))?),
        };
        *slot = Some(std::path::absolute(&v).map_err(|e| format!("{}: {e}", v.display()))?);
    }
    if a.name.is_empty() {
        return Err("no test name given".into());
    }
    Ok(a)
}

const USAGE: &str =
    "usage: zdtm-tests --list | NAME --pidfile F --outfile O [--filename P] [--dirname D]
  environment: ZDTM_FLAVOR=h|ns|uns (default h)";

/// The `zdtm-tests` program: list the corpus or run one test by the protocol.
pub fn main(tests: &[Test], args: &[OsString]) -> ExitCode {
    // fds inherited from whoever started us are not the test's objects.
    sys::close_from(3);
    if args.first().is_some_and(|a| a == "--list") {
        for t in tests {
            println!("{}", t.name);
        }
        return ExitCode::SUCCESS;
    }
    if args.first().is_some_and(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let a = match parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("zdtm-tests: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let Some(test) = tests.iter().find(|t| t.name == a.name) else {
        eprintln!("zdtm-tests: no test named {:?} (see --list)", a.name);
        return ExitCode::from(2);
    };
    let (Some(pidfile), Some(outfile)) = (a.pidfile.clone(), a.outfile.clone()) else {
        eprintln!("zdtm-tests: --pidfile and --outfile are required\n{USAGE}");
        return ExitCode::from(2);
    };
    let flavor = match std::env::var("ZDTM_FLAVOR").ok().as_deref() {
        None | Some("" | "h") => Flavor::H,
        Some(f) => match Flavor::parse(f) {
            Some(f) => f,
            None => {
                eprintln!("zdtm-tests: bad ZDTM_FLAVOR {f:?}");
                return ExitCode::from(2);
            }
        },
    };
    match launch(test, &a, &pidfile, &outfile, flavor) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("zdtm-tests {}: {e}", test.name);
            ExitCode::FAILURE
        }
    }
}

/// Fork the test; in the parent wait for readiness and write the pidfile.
fn launch(
    test: &Test,
    a: &Args,
    pidfile: &Path,
    outfile: &Path,
    flavor: Flavor,
) -> Result<ExitCode, String> {
    if flavor == Flavor::Uns {
        // The launcher stays outside to write the id maps; the helper below
        // continues as the launcher inside the new user namespace.
        if let Some(code) = ns::enter_userns()? {
            return Ok(code);
        }
    }
    if flavor != Flavor::H {
        ns::unshare_for_test()?;
    }
    let (r, w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    match sys::fork().map_err(|e| format!("fork: {e}"))? {
        ForkResult::Parent { child } => {
            let wfd = w.as_raw_fd();
            drop(w);
            let mut b = [0u8; 1];
            if read_retry(&r, &mut b) == Ok(1) {
                wait_closed(child, wfd, &r);
                write_pidfile(pidfile, child)?;
                return Ok(ExitCode::SUCCESS);
            }
            let st = waitpid(child, None).map_err(|e| format!("waitpid: {e}"))?;
            let inprogress = inprogress_path(outfile);
            let log = std::fs::read_to_string(&inprogress).unwrap_or_default();
            Err(format!(
                "the test died before it was ready ({st:?}); its log:\n{log}"
            ))
        }
        ForkResult::Child => {
            drop(r);
            let code = run_child(test, a, outfile, w, flavor);
            sys::exit_now(code)
        }
    }
}

/// Wait (up to 2 s) until the test closed its end of the readiness pipe
/// (fd `wfd`, the pipe of `r`), which it does just after writing: the
/// runner's snapshot of the test's fds must not catch it still open.
fn wait_closed(child: Pid, wfd: i32, r: &OwnedFd) {
    // Through a pidfd, not /proc/PID/fd: in the ns flavors the launcher
    // shares the test's mount namespace, whose /proc numbers the test's PID
    // namespace, so the launcher's PID for the test names nothing there.
    let (Ok(ours), Ok(pidfd)) = (nix::sys::stat::fstat(r), sys::pidfd_open(child)) else {
        return;
    };
    for _ in 0..2000 {
        match sys::pidfd_getfd(&pidfd, wfd).map(|fd| nix::sys::stat::fstat(&fd)) {
            Ok(Ok(st)) if st.st_ino == ours.st_ino && st.st_dev == ours.st_dev => nap(1),
            _ => return,
        }
    }
}

fn inprogress_path(outfile: &Path) -> PathBuf {
    let mut s = outfile.as_os_str().to_owned();
    s.push(".inprogress");
    PathBuf::from(s)
}

fn write_pidfile(pidfile: &Path, pid: Pid) -> Result<(), String> {
    let mut tmp = pidfile.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, format!("{pid}\n")).map_err(|e| format!("write pidfile: {e}"))?;
    std::fs::rename(&tmp, pidfile).map_err(|e| format!("rename pidfile: {e}"))
}

/// The test process: setsid, stdin from /dev/null, outfile, body, verdict.
fn run_child(test: &Test, a: &Args, outfile: &Path, ready: OwnedFd, flavor: Flavor) -> i32 {
    let inprogress = inprogress_path(outfile);
    let out = match OpenOptions::new()
        .append(true)
        .create_new(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&inprogress)
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("zdtm-tests: open {}: {e}", inprogress.display());
            return 1;
        }
    };
    let mut ctx = Ctx {
        name: test.name,
        role: "main".into(),
        out,
        inprogress: inprogress.clone(),
        filename: a
            .filename
            .clone()
            .unwrap_or_else(|| suffixed(outfile, ".test")),
        dirname: a
            .dirname
            .clone()
            .unwrap_or_else(|| suffixed(outfile, ".dir")),
        ready: Some(ready),
        kids: Vec::new(),
    };
    let res = prepare(flavor).and_then(|()| (test.run)(&mut ctx));
    ctx.kill_kids();
    let verdict = match &res {
        Ok(()) => "PASS".to_owned(),
        Err(e) => format!("FAIL: {e}"),
    };
    let _ = (&ctx.out).write_all(format!("{verdict}\n").as_bytes());
    if ctx.ready.is_some() {
        // Never armed: the launcher reports the death; leave the log in place.
        return 1;
    }
    match std::fs::rename(&inprogress, outfile) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("zdtm-tests: rename outfile: {e}");
            1
        }
    }
}

fn suffixed(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Process-wide setup every test gets: a session of its own, stdin from
/// /dev/null, the signal flags, and for ns flavors its fresh /proc.
fn prepare(flavor: Flavor) -> Res {
    nix::unistd::setsid().or_fail("setsid")?;
    let null = File::open("/dev/null").or_fail("open /dev/null")?;
    nix::unistd::dup2_stdin(&null).or_fail("dup2 stdin")?;
    sys::install_handlers().or_fail("install signal handlers")?;
    if flavor != Flavor::H {
        ns::setup_inside().map_err(Fail::Sys)?;
    }
    Ok(())
}

/// Read a whole small file (for /proc).
pub fn slurp(path: impl AsRef<Path>) -> Res<String> {
    let p = path.as_ref();
    let mut s = String::new();
    File::open(p)
        .and_then(|mut f| f.read_to_string(&mut s))
        .or_fail(&format!("read {}", p.display()))?;
    Ok(s)
}

/// The value of a `Key:` line of /proc/PID/status (or any such file).
pub fn status_field(text: &str, key: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .map(|v| v.trim().to_owned())
}
