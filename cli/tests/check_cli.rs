//! `stasis check` as runtimes and QA scripts use it: CRIU's exit codes and
//! sentences, `--feature NAME` for every CRIU name agreeing with the JSON,
//! the JSON schema, `--list`. Needs root (the probes do).

#![allow(clippy::tests_outside_test_module)]

use std::process::{Command, Output};

use serde_json::Value;

fn stasis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stasis"))
        .args(args)
        .output()
        .expect("run stasis")
}

fn require_root() {
    assert!(
        std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0")),
        "this test needs root: stasis check probes CAP_SYS_ADMIN/CAP_NET_ADMIN features; run it as root"
    );
}

fn all_json() -> Value {
    let out = stasis(&["check", "--all", "--json"]);
    serde_json::from_slice(&out.stdout).expect("check --all --json prints JSON")
}

#[test]
fn json_schema_is_complete_and_consistent() {
    require_root();
    let v = all_json();
    assert_eq!(v["schema"], 1);
    assert!(v["kernel"].as_str().is_some_and(|k| !k.is_empty()));
    assert_eq!(v["arch"], std::env::consts::ARCH);
    let verdict = v["verdict"].as_str().expect("verdict");
    assert!(["good", "good-but-missing", "bad"].contains(&verdict));
    let probes = v["probes"].as_array().expect("probes array");
    assert!(probes.len() >= 17 + 39 + 2 + 7 + 1 + 30);
    for p in probes {
        let name = p["name"].as_str().expect("name");
        for key in ["category", "status", "reason", "description"] {
            assert!(p[key].is_string(), "{name}: {key} is not a string");
        }
        assert!(
            p["criu_feature"].is_boolean()
                && p["supported"].is_boolean()
                && p["elapsed_us"].is_u64()
        );
        assert!(p["needs"]["kernel"].is_string() && p["needs"]["config"].is_string());
        assert_eq!(
            p["supported"].as_bool(),
            Some(p["status"] == "supported"),
            "{name}"
        );
    }
    let failed = |cats: &[&str]| {
        probes.iter().any(|p| {
            cats.contains(&p["category"].as_str().unwrap_or(""))
                && !["supported", "not-applicable"].contains(&p["status"].as_str().unwrap_or(""))
        })
    };
    let want = if failed(&["required"]) {
        "bad"
    } else if failed(&["extra", "experimental"]) {
        "good-but-missing"
    } else {
        "good"
    };
    assert_eq!(verdict, want);
    assert_eq!(v["exit_code"], if want == "good" { 0 } else { 1 });
}

#[test]
fn feature_exit_codes_agree_with_the_full_run_for_every_criu_name() {
    require_root();
    let v = all_json();
    let mut n = 0;
    for p in v["probes"]
        .as_array()
        .expect("probes")
        .iter()
        .filter(|p| p["criu_feature"] == true)
    {
        let name = p["name"].as_str().expect("name");
        let out = stasis(&["check", "--feature", name]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        if p["supported"] == true {
            assert!(
                out.status.success(),
                "{name}: --feature failed but --all said supported"
            );
            assert_eq!(stdout.trim(), format!("{name} is supported"));
        } else {
            assert_eq!(
                out.status.code(),
                Some(1),
                "{name}: --feature succeeded but --all said {}",
                p["status"]
            );
            assert!(
                String::from_utf8_lossy(&out.stderr).contains(&format!("{name} is not supported"))
            );
        }
        n += 1;
    }
    assert_eq!(n, 45, "CRIU has 45 feature names");
}

#[test]
fn plain_check_prints_criu_verdict_without_error_lines() {
    require_root();
    let out = stasis(&["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or("");
    if out.status.success() {
        assert_eq!(last, "Looks good.");
        assert!(
            !text.contains("✗") && !text.contains("Error"),
            "says it looks good after a failure:\n{text}"
        );
    } else {
        assert_eq!(last, "Does not look good.");
    }
    assert!(text.contains("required: C/R cannot work without these"));
    assert!(
        !text.contains("stasis: beyond CRIU"),
        "plain check runs only the required set"
    );
    assert!(
        !text.contains('\x1b'),
        "no colors when stdout is not a terminal"
    );
}

#[test]
fn unknown_feature_and_list() {
    let out = stasis(&["check", "--feature", "no_such_feature"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown feature \"no_such_feature\"") && err.contains("--list"),
        "{err}"
    );

    let out = stasis(&["check", "--list"]);
    assert!(out.status.success());
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert!(
        names.contains(&"uffd-noncoop".to_string())
            && names.contains(&"pagemap_scan_written".to_string())
    );
    assert_eq!(names.len(), stasis_check::PROBES.len());

    let help = stasis(&["check", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("pagemap_scan_guard_pages"),
        "--help lists CRIU's feature names"
    );
    assert!(
        help.lines().all(|l| l.chars().count() <= 80),
        "--help lines stay within 80 columns:\n{help}"
    );
}

/// CRIU's options stasis does not implement get an answer by name: one
/// that only tunes CRIU's internals is accepted and dropped (the command
/// goes on to its own error here), one whose effect is missing is refused
/// with the reason, before anything is done.
#[test]
fn criu_options_are_taken_or_refused_by_name() {
    let out = stasis(&[
        "dump",
        "--log-pid",
        "--irmap-scan-path",
        "/",
        "--link-remap",
        "-t",
        "999999999",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("task 999999999 does not exist"), "{err}");
    for (opt, what) in [
        ("--auto-dedup", "deduplication"),
        ("--track-mem", "memory tracking"),
        ("--lazy-pages", "lazy restore"),
        ("--page-server", "page server"),
    ] {
        // A PID no task has: a refusal comes before anything is done.
        let out = stasis(&["dump", opt, "-t", "999999999"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(opt) && err.contains(what), "{err}");
    }
}
