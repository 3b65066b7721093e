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
