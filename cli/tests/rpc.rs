#![allow(clippy::tests_outside_test_module)]
//! CRIU's RPC through `stasis swrk`, driven by Debian's pycriu (CRIU
//! 3.17's own client) and by raw `criu_req` messages: VERSION, CHECK, a
//! DUMP and a RESTORE of a shell loop, an option stasis does not honour
//! refused by name, CRIU's configuration files (the request's config_file
//! over its options), the NOTIFY round trips of a dump and a restore (a
//! refused point fails the dump and leaves the tree running), the same
//! through `stasis service` with pycriu connected to its socket, an
//! unserved request refused. Needs root, python3 and
//! Debian's `criu` package (pycriu; .ci/run installs it).

use std::process::Command;

#[test]
fn pycriu_dumps_and_restores_through_swrk() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root: it dumps and restores a process"
    );
    assert!(
        std::path::Path::new("/usr/lib/python3/dist-packages/pycriu").exists(),
        "this test needs Debian's criu package (pycriu)"
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/progs/rpc_client.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_stasis"))
        .arg(tmp.path())
        .output()
        .expect("run python3");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the client failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.first(), Some(&"version True 4 2 stasis"), "{text}");
    assert!(lines.contains(&"check ok"), "{text}");
    assert!(
        lines.contains(&"dumped -9"),
        "the dump did not end the tree: {text}"
    );
    assert!(lines.contains(&"restored True True"), "{text}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("refused False") && l.contains("auto_dedup")),
        "{text}"
    );
    assert!(lines.contains(&"still running"), "{text}");
    assert!(lines.contains(&"config leave-running True True"), "{text}");
    assert!(lines.contains(&"config refused False True"), "{text}");
    assert!(
        lines.contains(&"refused post-dump False ['pre-dump', 'post-dump']"),
        "{text}"
    );
    assert!(lines.contains(&"still running after the refusal"), "{text}");
    assert!(
        lines.contains(&"notified dump True ['pre-dump', 'post-dump']"),
        "{text}"
    );
    assert!(
        lines.contains(
            &"notified restore True ['pre-restore', 'setup-namespaces', \
              'post-setup-namespaces', 'post-restore', 'post-resume']"
        ),
        "{text}"
    );
    assert!(lines.contains(&"post-restore pid True"), "{text}");
    assert!(lines.contains(&"service True True"), "{text}");
    assert!(lines.contains(&"dump for wait True"), "{text}");
    assert!(lines.contains(&"wait pid True 9"), "{text}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("page server False") && l.contains("PAGE_SERVER")),
        "{text}"
    );
}
