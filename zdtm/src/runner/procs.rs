//! Running child commands with a time limit, and removing every process a
//! test started: members of the session the test created (its session id is
//! its pid) and descendants of its root, started after the case began (so a
//! reused pid of an older process is never touched).

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How a command ended.
#[derive(Debug)]
pub enum Ended {
    /// It exited (or was killed by a signal) on its own.
    Status(ExitStatus),
    /// It overran its limit and was killed.
    TimedOut,
}

/// Run `cmd` with stdin from /dev/null and stdout/stderr appended to `log`,
/// in its own process group; kill that group if it overruns `limit`.
pub fn run_logged(cmd: &mut Command, log: &Path, limit: Duration) -> std::io::Result<Ended> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let err = out.try_clone()?;
    std::os::unix::process::CommandExt::process_group(cmd, 0);
    let child = cmd.stdin(Stdio::null()).stdout(out).stderr(err).spawn()?;
    wait_limited(child, limit)
}

fn wait_limited(mut child: Child, limit: Duration) -> std::io::Result<Ended> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(Ended::Status(st));
        }
        if Instant::now() >= deadline {
            if let Ok(pid) = i32::try_from(child.id()) {
                // The group is the one process_group(0) created for this child.
                let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
            }
            let _ = child.kill();
            let _ = child.wait();
            return Ok(Ended::TimedOut);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Clock ticks since boot now (the unit of /proc/PID/stat starttime).
pub fn now_ticks() -> u64 {
    let up = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
    let secs: f64 = up
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    // SAFETY: sysconf has no memory-safety preconditions.
    #[allow(unsafe_code)]
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u32::try_from(hz).unwrap_or(100);
    // Round down and step back one tick so a process started in this tick counts.
    let ticks = (secs * f64::from(hz)).floor();
    if ticks.is_finite() && ticks >= 1.0 {
        format!("{ticks:.0}")
            .parse::<u64>()
            .unwrap_or(0)
            .saturating_sub(1)
    } else {
        0
    }
}

/// (pid, ppid, sid, state, starttime) of every process.
fn all_procs() -> Vec<(i32, i32, i32, char, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (_, rest) = stat.rsplit_once(')')?;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let state = f.first()?.chars().next()?;
            Some((
                pid,
                f.get(1)?.parse().ok()?,
                f.get(3)?.parse().ok()?,
                state,
                f.get(19)?.parse().ok()?,
            ))
        })
        .collect()
}

/// Processes belonging to the test rooted at `root`: its session (the test
/// calls setsid, so the session id is `root`) and every descendant of a
/// member, all started at or after `since` ticks. Zombies are left out.
pub fn test_procs(root: i32, since: u64) -> Vec<i32> {
    let procs: Vec<_> = all_procs().into_iter().filter(|p| p.4 >= since).collect();
    let mut set: Vec<i32> = procs
        .iter()
        .filter(|p| p.0 == root || p.2 == root)
        .map(|p| p.0)
        .collect();
    loop {
        let before = set.len();
        for p in &procs {
            if set.contains(&p.1) && !set.contains(&p.0) {
                set.push(p.0);
            }
        }
        if set.len() == before {
            break;
        }
    }
    set.retain(|pid| procs.iter().any(|p| p.0 == *pid && p.3 != 'Z'));
    set
}

/// SIGKILL every live process of the test until none is left (or 5 s pass);
/// returns the pids that had to be killed.
pub fn kill_test(root: i32, since: u64) -> Vec<i32> {
    let mut killed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = test_procs(root, since);
        if left.is_empty() || Instant::now() > deadline {
            return killed;
        }
        for pid in left {
            // Stopped or traced tasks die from SIGKILL too.
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            if !killed.contains(&pid) {
                killed.push(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reap `pid` if it is a dead child of this process. The runner is a child
/// subreaper (see [`adopt_orphans`]): a test's processes that outlive their
/// parents become its children, and their PIDs are free at once when they
/// die, instead of after init gets round to them.
pub fn reap(pid: i32) {
    use nix::sys::wait::{WaitPidFlag, waitpid};
    let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
}

/// Reap dead test processes this process adopted: zombie children in
/// another session than ours (a test calls setsid; the engine and other
/// commands the runner starts stay in the runner's session and are waited
/// for by whoever started them).
/// Returns how many it reaped.
pub fn reap_adopted() -> usize {
    let me = nix::unistd::getpid().as_raw();
    let Ok(my_sid) = nix::unistd::getsid(None) else {
        return 0;
    };
    let mut n = 0;
    for (pid, ppid, sid, state, _) in all_procs() {
        if ppid == me && state == 'Z' && sid != my_sid.as_raw() {
            reap(pid);
            n += 1;
        }
    }
    n
}

/// Wait until no process of the test rooted at `root` is left, reaping
/// those this process adopted; false if some remain after `limit`.
pub fn wait_test_gone(root: i32, since: u64, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let reaped = reap_adopted();
        if reaped == 0 && test_procs(root, since).is_empty() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Make this process the reaper of its orphaned descendants.
pub fn adopt_orphans() {
    let _ = nix::sys::prctl::set_child_subreaper(true);
}

/// Whether /proc/PID exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.trim_start().chars().next())
        })
        .is_some_and(|c| c != 'Z' && c != 'X')
}

/// Wait until /proc/PID is gone entirely (reaped), up to `limit`.
pub fn wait_gone(pid: i32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while {
        reap(pid);
        let _ = reap_adopted();
        Path::new(&format!("/proc/{pid}")).exists()
    } {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}
