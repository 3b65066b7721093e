#![allow(clippy::tests_outside_test_module)]
//! README's dump-and-restore tour, pasted into a terminal: its first
//! command block runs under a pty (`script`), as a user would type it, with
//! its /tmp paths moved into a directory of the test's own. Needs root,
//! util-linux's `script` and Debian's criu package (crit).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The tour: README's first `sh` block after "## Checkpoint and restore",
/// up to its first blank line.
fn tour() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let mut lines = readme
        .lines()
        .skip_while(|l| !l.starts_with("## Checkpoint and restore"))
        .skip_while(|l| *l != "```sh")
        .skip(1);
    let mut out = Vec::new();
    for l in lines.by_ref() {
        if l.trim().is_empty() || l.starts_with("```") {
            break;
        }
        out.push(l.to_owned());
    }
    out
}

/// Kills what the tour started, by the PIDs it wrote, on every path.
struct Cleanup<'a>(&'a Path);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for f in ["job.pid", "pid"] {
            if let Ok(p) = std::fs::read_to_string(self.0.join(f))
                && let Ok(p) = p.trim().parse::<i32>()
            {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
            }
        }
    }
}

#[test]
fn the_readme_tour_works_pasted_into_a_terminal() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root: the tour dumps and restores a process"
    );
    let lines = tour();
    assert!(
        lines.iter().any(|l| l.starts_with("stasis dump"))
            && lines.iter().any(|l| l.starts_with("stasis restore")),
        "README's tour has no dump and restore: {lines:?}"
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let _cleanup = Cleanup(tmp.path());
    let dir = tmp.path().to_str().expect("utf8").to_owned();
    let bin = Path::new(env!("CARGO_BIN_EXE_stasis"))
        .parent()
        .expect("bin dir")
        .display()
        .to_string();
    let mut script = format!("set -e\nexport PATH={bin}:$PATH\n");
    for l in &lines {
        script.push_str(&l.replace("/tmp/", &format!("{dir}/")));
        script.push('\n');
    }
    let file = tmp.path().join("tour.sh");
    std::fs::write(&file, &script).expect("write the tour");
    let out = Command::new("timeout")
        .arg("60")
        .args(["script", "-qec"])
        .arg(format!("bash {}", file.display()))
        .arg("/dev/null")
        .current_dir(tmp.path())
        .output()
        .expect("run script (util-linux)");
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    assert!(
        out.status.success(),
        "the tour failed ({}):\n{script}\n{text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // The two counts, before crit's JSON; a progress bar's last redraw may
    // share the first one's line.
    let counts: Vec<u64> = text
        .lines()
        .take_while(|l| !l.starts_with('{'))
        .filter_map(|l| l.trim().rsplit(|c: char| !c.is_ascii_digit()).next())
        .filter_map(|d| d.parse().ok())
        .collect();
    assert!(
        counts.len() >= 2 && counts[counts.len() - 1] > counts[counts.len() - 2],
        "the restored job does not count on: {text}"
    );
    assert!(
        text.contains("\"entries\""),
        "crit did not decode the core image: {text}"
    );
    // The tour's last line ended the job.
    std::thread::sleep(Duration::from_millis(200));
    let pid: i32 = std::fs::read_to_string(tmp.path().join("pid"))
        .expect("pidfile")
        .trim()
        .parse()
        .expect("a pid");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z")),
        "the job is still running after the tour's kill"
    );
}
