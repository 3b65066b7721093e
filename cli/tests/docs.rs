#![allow(clippy::tests_outside_test_module)]
//! Manual pages and shell completions come from the CLI definition: every
//! command has its page, every shell its script naming every command.

use std::process::Command;

fn stasis(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_stasis"))
        .args(args)
        .output()
        .expect("run stasis")
}

#[test]
fn a_manual_page_for_stasis_and_for_each_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = stasis(&["man", "--dir", dir.path().to_str().expect("utf8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (page, says) in [
        ("stasis.8", "dump"),
        ("stasis-dump.8", "leave\\-running"),
        ("stasis-restore.8", "restore\\-detached"),
        ("stasis-check.8", "feature"),
        ("stasis-swrk.8", "RPC"),
    ] {
        let text = std::fs::read_to_string(dir.path().join(page))
            .unwrap_or_else(|e| panic!("no {page}: {e}"));
        assert!(text.contains(".TH"), "{page} is not a manual page");
        assert!(text.contains(says), "{page} does not mention {says}");
    }
}

#[test]
fn completions_for_bash_zsh_and_fish_name_every_command() {
    for shell in ["bash", "zsh", "fish"] {
        let out = stasis(&["completions", shell]);
        assert!(
            out.status.success(),
            "{shell}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        for cmd in ["dump", "restore", "check", "image", "swrk", "service"] {
            assert!(text.contains(cmd), "{shell} completions miss {cmd}");
        }
    }
    assert!(!stasis(&["completions", "tcsh"]).status.success());
}
