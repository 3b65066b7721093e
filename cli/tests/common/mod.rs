//! Helpers the CLI's end-to-end test files share (each file is a crate of
//! its own and takes what it uses).
#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

/// The number a test job writes to `f` (0 before its first write).
pub fn read_counter(f: &Path) -> u64 {
    std::fs::read_to_string(f)
        .unwrap_or_default()
        .trim()
        .parse()
        .unwrap_or(0)
}

/// Wait (up to 10 s) until the job's number in `f` is above `above`.
pub fn wait_counter(f: &Path, above: u64) -> u64 {
    let t = Instant::now();
    loop {
        let v = read_counter(f);
        if v > above {
            return v;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "counter stuck at {v}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The mount point of the root of a cgroup hierarchy: cgroup2 for
/// `controller` "", else the v1 hierarchy that has that controller.
pub fn cgroup_mount(controller: &str) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mounts.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let f: Vec<&str> = pre.split(' ').collect();
        let g: Vec<&str> = post.split(' ').collect();
        let ours = match (controller, g.first()?) {
            ("", &"cgroup2") => true,
            (c, &"cgroup") => g.get(2).is_some_and(|o| o.split(',').any(|x| x == c)),
            _ => false,
        };
        (ours && f.get(3) == Some(&"/")).then(|| f.get(4).map(|p| (*p).to_owned()))?
    })
}
