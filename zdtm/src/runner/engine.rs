//! Driving a C/R engine through CRIU's command line (`dump`, `restore`,
//! `check --feature`); works with stasis, CRIU, or anything speaking the
//! same CLI.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use super::procs::{Ended, run_logged};

/// An engine binary and its cached feature answers.
#[derive(Debug)]
pub struct Engine {
    path: PathBuf,
    features: Mutex<HashMap<String, Option<String>>>,
}

impl Engine {
    /// Use the binary at `path`.
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            features: Mutex::new(HashMap::new()),
        }
    }

    /// The binary.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `None` when `check --feature NAME` succeeds, else why not (cached).
    pub fn missing_feature(&self, name: &str) -> Option<String> {
        if let Ok(cache) = self.features.lock()
            && let Some(v) = cache.get(name)
        {
            return v.clone();
        }
        let out = Command::new(&self.path)
            .args(["check", "--no-default-config", "-v0", "--feature", name])
            .output();
        let v = match out {
            Ok(o) if o.status.success() => None,
            Ok(o) => {
                let text = String::from_utf8_lossy(&o.stdout).into_owned()
                    + &String::from_utf8_lossy(&o.stderr);
                let last = text
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("")
                    .trim()
                    .to_owned();
                Some(format!(
                    "no {name} feature ({}{})",
                    o.status,
                    if last.is_empty() {
                        String::new()
                    } else {
                        format!(": {last}")
                    }
                ))
            }
            Err(e) => Some(format!("cannot run {} check: {e}", self.path.display())),
        };
        if let Ok(mut cache) = self.features.lock() {
            cache.insert(name.to_owned(), v.clone());
        }
        v
    }

    /// `ENGINE dump -t PID -D DIR -o dump.log -v4 [--leave-running] OPTS`.
    pub fn dump(
        &self,
        pid: i32,
        dir: &Path,
        opts: &[&str],
        leave_running: bool,
        limit: Duration,
    ) -> Result<(), String> {
        let mut cmd = Command::new(&self.path);
        cmd.current_dir(dir)
            .arg("dump")
            .arg("-t")
            .arg(pid.to_string())
            .arg("-D")
            .arg(dir);
        cmd.args(["-o", "dump.log", "-v4"]);
        if leave_running {
            cmd.arg("--leave-running");
        }
        cmd.args(opts);
        self.run(cmd, dir, "dump", limit)
    }

    /// A dump that leaves the tree running before the real one: `ENGINE
    /// pre-dump` (or `dump --leave-running` for a snapshot) `-t PID -D DIR
    /// -o VERB.log -v4 OPTS`.
    pub fn pre_dump(
        &self,
        verb: &str,
        pid: i32,
        dir: &Path,
        opts: &[&str],
        limit: Duration,
    ) -> Result<(), String> {
        let mut cmd = Command::new(&self.path);
        cmd.current_dir(dir)
            .arg(verb)
            .arg("-t")
            .arg(pid.to_string())
            .arg("-D")
            .arg(dir)
            .args(["-o", &format!("{verb}.log"), "-v4"]);
        if verb == "dump" {
            cmd.arg("--leave-running");
        }
        cmd.args(opts);
        self.run(cmd, dir, verb, limit)
    }

    /// `ENGINE restore -D DIR -d -o restore.log -v4 --pidfile F OPTS`.
    pub fn restore(
        &self,
        dir: &Path,
        pidfile: &Path,
        opts: &[&str],
        limit: Duration,
    ) -> Result<(), String> {
        let mut cmd = Command::new(&self.path);
        cmd.current_dir(dir).arg("restore").arg("-D").arg(dir);
        cmd.args(["-d", "-o", "restore.log", "-v4", "--pidfile"])
            .arg(pidfile);
        cmd.args(opts);
        self.run(cmd, dir, "restore", limit)
    }

    fn run(&self, mut cmd: Command, dir: &Path, verb: &str, limit: Duration) -> Result<(), String> {
        let out = dir.join(format!("{verb}.out"));
        let tail = || log_tail(&dir.join(format!("{verb}.log")), &out);
        match run_logged(&mut cmd, &out, limit) {
            Ok(Ended::Status(st)) if st.success() => Ok(()),
            Ok(Ended::Status(st)) => Err(format!("{verb} failed ({st}){}", tail())),
            Ok(Ended::TimedOut) => Err(format!(
                "{verb} did not finish within {} s and was killed{}",
                limit.as_secs(),
                tail()
            )),
            Err(e) => Err(format!("cannot run {} {verb}: {e}", self.path.display())),
        }
    }
}

/// The last error-looking lines of an engine log (or its stderr), for the
/// failure message.
fn log_tail(log: &Path, out: &Path) -> String {
    let mut lines = Vec::new();
    for f in [log, out] {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let errs: Vec<&str> = all.iter().copied().filter(|l| l.contains("rror")).collect();
        let pick = if errs.is_empty() { &all } else { &errs };
        lines.extend(pick.iter().rev().take(3).rev().map(|l| l.to_string()));
    }
    if lines.is_empty() {
        String::new()
    } else {
        format!(": {}", lines.join(" | "))
    }
}
