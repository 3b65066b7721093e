//! The image inspector from the command line: byte-identical round trips
//! through JSON, and one clear error line (file and offset) with exit status 1
//! for every class of malformed image.
// Integration tests are their own crate: helpers may unwrap, and tests need no test module.
#![allow(clippy::unwrap_used, clippy::tests_outside_test_module)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use stasis_proto::kind::{self, KINDS};
use stasis_proto::sample::{sample_image, sample_plain_ghost};

const STASIS: &str = env!("CARGO_BIN_EXE_stasis");

fn stasis(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(STASIS)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or_default()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn decode_then_encode_reproduces_every_image_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let mut images: Vec<(String, Vec<u8>)> = KINDS
        .iter()
        .map(|k| (k.name.to_owned(), sample_image(k, 5)))
        .collect();
    images.push((
        "ghost-plain".into(),
        sample_plain_ghost(b"deleted file contents\n"),
    ));
    images.push((
        "empty-core".into(),
        sample_image(kind::by_name("CORE").unwrap(), 0),
    ));
    for (name, bytes) in &images {
        let path = write(dir.path(), name, bytes);
        for pretty in [false, true] {
            let mut args = vec!["image", "decode", "-i", path.to_str().unwrap()];
            if pretty {
                args.push("--pretty");
            }
            let json = stasis(&args, None);
            assert!(
                json.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&json.stderr)
            );
            let back = stasis(&["image", "encode"], Some(&json.stdout));
            assert!(
                back.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&back.stderr)
            );
            assert!(
                back.stdout == *bytes,
                "{name} (pretty={pretty}): round trip differs"
            );
        }
    }
}

#[test]
fn info_and_show_describe_an_image() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "pagemap-1.img",
        &sample_image(kind::by_name("PAGEMAP").unwrap(), 3),
    );
    let out = stasis(&["image", "info", path.to_str().unwrap()], None);
    assert!(out.status.success());
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["magic"], "PAGEMAP");
    assert_eq!(info["count"], 3);

    let pipes = write(
        dir.path(),
        "pipes-data.img",
        &sample_image(kind::by_name("PIPES_DATA").unwrap(), 2),
    );
    let out = stasis(&["image", "show", pipes.to_str().unwrap(), "--nopl"], None);
    assert!(out.status.success());
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["entries"][0]["extra"], "... <17B>");
    assert_eq!(shown["entries"][1]["extra"], "... <34B>");
}

/// Run decode on `bytes` (from a file, or from stdin when `name` is None) and
/// check the failure: status 1, one line, naming the file and `expect`.
fn expect_error(bytes: &[u8], name: Option<&str>, expect: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let out = match name {
        Some(n) => {
            let p = write(dir.path(), n, bytes);
            stasis(&["image", "decode", "-i", p.to_str().unwrap()], None)
        }
        None => stasis(&["image", "decode"], Some(bytes)),
    };
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(out.stdout.is_empty(), "no partial output on error");
    assert_eq!(err.lines().count(), 1, "one error line, got: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains(name.unwrap_or("<stdin>")),
        "names the file: {err}"
    );
    for e in expect {
        assert!(err.contains(e), "expected {e:?} in: {err}");
    }
}

fn core_head() -> Vec<u8> {
    let mut v = kind::COMMON_MAGIC.to_le_bytes().to_vec();
    v.extend_from_slice(&kind::by_name("CORE").unwrap().magic.to_le_bytes());
    v
}

#[test]
fn empty_image_is_refused() {
    expect_error(b"", Some("core-1.img"), &["empty file"]);
}

#[test]
fn truncated_magic_is_refused() {
    expect_error(
        &[0x19, 0x43],
        Some("core-1.img"),
        &["offset 0", "truncated magic", "found 2"],
    );
    expect_error(
        &kind::COMMON_MAGIC.to_le_bytes(),
        Some("core-1.img"),
        &["offset 4", "truncated magic"],
    );
}

#[test]
fn unknown_magic_is_refused() {
    expect_error(
        &0x1234_5678u32.to_le_bytes(),
        Some("x.img"),
        &["offset 0", "unknown image magic 0x12345678"],
    );
}

#[test]
fn service_image_under_common_magic_is_refused() {
    let mut v = kind::COMMON_MAGIC.to_le_bytes().to_vec();
    v.extend_from_slice(&kind::by_name("STATS").unwrap().magic.to_le_bytes());
    expect_error(&v, Some("stats-dump"), &["head magic", "STATS"]);
}

#[test]
fn truncated_entry_length_is_refused() {
    let mut v = core_head();
    v.extend_from_slice(&[5, 0]);
    expect_error(
        &v,
        Some("core-1.img"),
        &["offset 8", "truncated entry length", "found 2"],
    );
}

#[test]
fn entry_past_end_of_file_is_refused() {
    let mut v = core_head();
    v.extend_from_slice(&100u32.to_le_bytes());
    v.extend_from_slice(&[0; 10]);
    expect_error(
        &v,
        Some("core-1.img"),
        &[
            "offset 8",
            "entry of 100 bytes runs past the end",
            "10 bytes left",
        ],
    );
}

#[test]
fn oversized_entry_is_refused() {
    let mut v = core_head();
    v.extend_from_slice(&u32::MAX.to_le_bytes());
    expect_error(&v, None, &["offset 8", "exceeds the limit"]);
}

#[test]
fn truncated_entry_on_a_stream_is_refused() {
    let mut v = core_head();
    v.extend_from_slice(&100u32.to_le_bytes());
    v.extend_from_slice(&[0; 10]);
    expect_error(
        &v,
        None,
        &[
            "offset 8",
            "truncated entry",
            "expected 100 bytes, found 10",
        ],
    );
}

#[test]
fn undecodable_message_is_refused() {
    let mut v = core_head();
    v.extend_from_slice(&3u32.to_le_bytes());
    v.extend_from_slice(&[0xff, 0xff, 0xff]);
    expect_error(
        &v,
        Some("core-1.img"),
        &["offset 8", "not a valid core_entry message"],
    );
}

#[test]
fn missing_required_field_is_refused() {
    let mut v = core_head();
    // core_entry with only field 2 (thread_info, empty): mtype is missing
    v.extend_from_slice(&2u32.to_le_bytes());
    v.extend_from_slice(&[0x12, 0x00]);
    expect_error(
        &v,
        Some("core-1.img"),
        &["offset 8", "lacks required field mtype"],
    );
}

#[test]
fn truncated_payload_is_refused() {
    let full = sample_image(kind::by_name("PIPES_DATA").unwrap(), 1);
    let cut = &full[..full.len() - 5];
    expect_error(
        cut,
        Some("pipes-data.img"),
        &["payload of 17 bytes runs past the end", "12 bytes left"],
    );
    expect_error(
        cut,
        None,
        &["truncated payload", "expected 17 bytes, found 12"],
    );
}

#[test]
fn bad_json_is_refused_with_its_location() {
    let out = stasis(
        &["image", "encode"],
        Some(br#"{"magic": "PSTREE", "entries": [{"pid": 1, "ppid": 0, "pgid": 1}]}"#),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("entries[0]") && err.contains("lacks required field sid"),
        "{err}"
    );

    let out = stasis(
        &["image", "encode"],
        Some(br#"{"magic": "PSTREE", "entries": [{"pid": -1}]}"#),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("entries[0].pid"));

    let out = stasis(
        &["image", "encode"],
        Some(br#"{"magic": "NOPE", "entries": []}"#),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown magic \"NOPE\""));
}

#[test]
fn version_and_usage_errors() {
    let out = stasis(&["--version"], None);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("stasis "));
    let out = stasis(&["image", "frobnicate"], None);
    assert_eq!(out.status.code(), Some(1));
    let out = stasis(&["-v4", "image", "info", "/nonexistent/core-1.img"], None);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/core-1.img"), "{err}");
}

#[test]
fn criu_version_lines_through_the_criu_symlink() {
    let dir = tempfile::tempdir().expect("tempdir");
    let criu = dir.path().join("criu");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_stasis"), &criu).expect("symlink");
    for flag in ["--version", "-V"] {
        let out = std::process::Command::new(&criu)
            .arg(flag)
            .output()
            .expect("run criu");
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.first().copied(), Some("Version: 4.2"), "{text}");
        assert!(
            lines
                .get(1)
                .is_some_and(|l| l.starts_with("GitID: stasis-")),
            "{text}"
        );
    }
}

#[test]
fn restore_from_an_empty_directory_says_it_is_not_an_images_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stasis"))
        .args(["restore", "-d", "-D"])
        .arg(dir.path())
        .output()
        .expect("run stasis");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("inventory.img") && err.contains("not an images directory"),
        "{err}"
    );
}
