//! The whole probe set on the running kernel, through the library: every
//! probe runs to a verdict, answers are stable across runs, and nothing is
//! left behind (children, links, nftables tables, mounts, cgroups).
//! Needs root: C/R probes need CAP_SYS_ADMIN and friends.

#![allow(clippy::tests_outside_test_module)]

use std::collections::BTreeMap;

use stasis_check::{Category, Outcome, PROBES, RunOptions, Selection, run};

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (the probes exercise CAP_SYS_ADMIN, CAP_NET_ADMIN and CAP_SYS_PTRACE features); run it as root"
    );
}

fn statuses() -> BTreeMap<&'static str, String> {
    run(&Selection::all().probes(), &RunOptions::default())
        .into_iter()
        .map(|f| {
            (
                f.probe.name,
                format!("{}: {}", f.outcome.status(), f.outcome.reason()),
            )
        })
        .collect()
}

fn our_children() -> Vec<String> {
    let me = std::process::id();
    let mut kids = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{me}/task"))
        .expect("task dir")
        .flatten()
    {
        let c = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        kids.extend(c.split_whitespace().map(str::to_string));
    }
    kids
}

fn host_state() -> (String, String, Vec<String>) {
    let links = std::process::Command::new("ip")
        .args(["-o", "link"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let cgroups = std::fs::read_dir("/sys/fs/cgroup/unified")
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("stasis-probe"))
                .map(|e| e.path().display().to_string())
                .collect()
        })
        .unwrap_or_default();
    (links, mounts, cgroups)
}

#[test]
fn every_probe_reaches_a_verdict_twice_and_leaves_nothing() {
    require_root();
    let before = host_state();
    let first = run(&Selection::all().probes(), &RunOptions::default());
    assert_eq!(first.len(), PROBES.len());
    for f in &first {
        assert!(
            !matches!(f.outcome, Outcome::Error(_) | Outcome::TimedOut(_)),
            "probe {} could not run: {}",
            f.probe.name,
            f.outcome.reason()
        );
        if !f.outcome.is_supported() {
            assert!(
                !f.outcome.reason().is_empty(),
                "{} fails without a reason",
                f.probe.name
            );
        }
    }
    let a: BTreeMap<_, _> = first
        .iter()
        .map(|f| (f.probe.name, f.outcome.status()))
        .collect();
    let b = statuses();
    for (name, status) in &a {
        let again = &b[name];
        assert!(
            again.starts_with(&format!("{status}:")),
            "{name}: first run {status}, second run {again}"
        );
    }
    assert!(
        our_children().is_empty(),
        "probes left children behind: {:?}",
        our_children()
    );
    let after = host_state();
    assert_eq!(before.0, after.0, "network links of the host changed");
    assert_eq!(before.1, after.1, "mounts of the host changed");
    assert!(
        after.2.is_empty(),
        "scratch cgroups left behind: {:?}",
        after.2
    );
}

#[test]
fn required_probes_pass_on_a_checkpoint_restore_kernel() {
    require_root();
    // This kernel (and CI's) is built with CONFIG_CHECKPOINT_RESTORE and the
    // diag modules; a required probe failing here is a bug in the probe.
    let sel = Selection::default();
    for f in run(&sel.probes(), &RunOptions::default()) {
        if f.probe.category == Category::Required {
            assert!(
                f.outcome.is_supported(),
                "required probe {} failed: {}",
                f.probe.name,
                f.outcome.reason()
            );
        }
    }
}

#[test]
fn names_and_categories_snapshot() {
    let listing: String = PROBES
        .iter()
        .map(|p| {
            format!(
                "{:<26} {:<13} {}\n",
                p.name,
                p.category.as_str(),
                if p.criu_feature { "criu-feature" } else { "" }
            )
        })
        .collect();
    insta::assert_snapshot!(listing);
}
