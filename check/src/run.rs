//! Runs a selection of probes on a few threads, each with a time limit.
//!
//! Probes mostly wait in the kernel (netlink round trips, child processes,
//! namespace creation), so a handful of threads brings `check --all` close to
//! the slowest single probe. A probe that overruns its limit is reported as
//! [`Outcome::TimedOut`] and a fresh worker takes its place; its thread is
//! abandoned (any child it forked dies with it through PR_SET_PDEATHSIG).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use crate::{Outcome, Probe};

/// How to run probes.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// Threads running probes at once.
    pub threads: usize,
    /// Time limit per probe.
    pub timeout: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            threads: 8,
            timeout: Duration::from_secs(5),
        }
    }
}

/// One probe's result.
#[derive(Debug, Clone)]
pub struct Finding {
    /// The probe.
    pub probe: &'static Probe,
    /// What it found.
    pub outcome: Outcome,
    /// How long it ran.
    pub elapsed: Duration,
}

struct Shared {
    probes: Vec<&'static Probe>,
    next: AtomicUsize,
    started: Mutex<Vec<Option<Instant>>>,
}

fn worker(shared: &Shared, tx: &mpsc::Sender<(usize, Outcome, Duration)>) {
    loop {
        let i = shared.next.fetch_add(1, Ordering::SeqCst);
        let Some(probe) = shared.probes.get(i) else {
            return;
        };
        let t0 = Instant::now();
        if let Ok(mut s) = shared.started.lock() {
            s[i] = Some(t0);
        }
        let outcome = catch_unwind(AssertUnwindSafe(probe.run)).unwrap_or_else(|_| {
            Outcome::Error("the probe panicked (a stasis bug: please report it)".into())
        });
        if tx.send((i, outcome, t0.elapsed())).is_err() {
            return;
        }
    }
}

fn spawn(shared: &Arc<Shared>, tx: &mpsc::Sender<(usize, Outcome, Duration)>) -> bool {
    let (shared, tx) = (Arc::clone(shared), tx.clone());
    std::thread::Builder::new()
        .name("probe".into())
        .spawn(move || worker(&shared, &tx))
        .is_ok()
}

/// Probes that spend tens of milliseconds waiting for an RCU grace period
/// in the kernel (aio ring teardown, moving links between namespaces,
/// nftables commits, fsnotify group teardown): started first so their waits
/// overlap with everything else. Measured with `stasis check --all -j1 --json`.
const SLOW_FIRST: &[&str] = &[
    "aio_remap",
    "newifindex",
    "network_lock_nftables",
    "fdinfo_ext",
    "cgroup2_freeze",
    "nftables",
    "sock_diag",
    "fanotify",
];

fn start_order(probes: &[&'static Probe]) -> Vec<usize> {
    let rank = |p: &Probe| {
        SLOW_FIRST
            .iter()
            .position(|s| *s == p.name)
            .unwrap_or(SLOW_FIRST.len())
    };
    let mut order: Vec<usize> = (0..probes.len()).collect();
    order.sort_by_key(|&i| rank(probes[i]));
    order
}

/// Runs `probes`, returning one finding per probe in the given order.
pub fn run(probes: &[&'static Probe], opts: &RunOptions) -> Vec<Finding> {
    let n = probes.len();
    let order = start_order(probes);
    let shared = Arc::new(Shared {
        probes: order.iter().map(|&i| probes[i]).collect(),
        next: AtomicUsize::new(0),
        started: Mutex::new(vec![None; n]),
    });
    let (tx, rx) = mpsc::channel();
    let mut results: Vec<Option<(Outcome, Duration)>> = vec![None; n];
    let threads = opts.threads.clamp(1, n.max(1));
    let spawned = (0..threads).filter(|_| spawn(&shared, &tx)).count();
    if spawned == 0 {
        // No threads at all: run in the caller, without time limits.
        worker(&shared, &tx);
    }
    let mut done = 0;
    while done < n {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok((i, outcome, took)) => {
                if results[i].is_none() {
                    results[i] = Some((outcome, took));
                    done += 1;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        let overdue: Vec<usize> = match shared.started.lock() {
            Ok(s) => (0..n)
                .filter(|&i| results[i].is_none())
                .filter(|&i| s[i].is_some_and(|t| t.elapsed() > opts.timeout))
                .collect(),
            Err(_) => Vec::new(),
        };
        for i in overdue {
            results[i] = Some((Outcome::TimedOut(opts.timeout), opts.timeout));
            done += 1;
            // The stuck thread keeps its probe; a new one takes the rest.
            spawn(&shared, &tx);
        }
    }
    // Results are indexed in start order; hand them back in the caller's order.
    let mut by_caller: Vec<Option<(Outcome, Duration)>> = vec![None; n];
    for (slot, r) in order.iter().zip(results) {
        by_caller[*slot] = r;
    }
    probes
        .iter()
        .zip(by_caller)
        .map(|(probe, r)| {
            let (outcome, elapsed) = r.unwrap_or_else(|| {
                (
                    Outcome::Error("the probe thread ended without a result".into()),
                    Duration::ZERO,
                )
            });
            Finding {
                probe,
                outcome,
                elapsed,
            }
        })
        .collect()
}
