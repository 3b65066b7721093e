//! Wire compatibility with CRIU: every image type stasis writes, with every
//! field of every message set, is decoded by Debian's `crit` (package `criu`)
//! and must show the same values as `stasis image decode`, plain and pretty.
// Integration tests are their own crate: helpers may unwrap, and tests need no test module.
#![allow(clippy::unwrap_used, clippy::tests_outside_test_module)]

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use prost_reflect::{Kind, MessageDescriptor};
use serde_json::Value as Json;
use stasis_proto::json as pj;
use stasis_proto::kind::{KINDS, Layout};
use stasis_proto::sample::sample_image;

const STASIS: &str = env!("CARGO_BIN_EXE_stasis");
const CRIT: &str = "/usr/bin/crit";

/// pycriu's schema: message name -> field number -> field name.
type Known = HashMap<String, HashMap<String, String>>;

fn pycriu_schema() -> Known {
    let script = r#"
import sys, json, glob, importlib, os
d = '/usr/lib/python3/dist-packages/pycriu/images'
sys.path.insert(0, d)
out = {}
def walk(m):
    out[m.name] = {str(f.number): f.name for f in m.fields}
    for n in m.nested_types: walk(n)
for p in sorted(glob.glob(d + '/*_pb2.py')):
    mod = importlib.import_module(os.path.basename(p)[:-3])
    for m in mod.DESCRIPTOR.message_types_by_name.values(): walk(m)
print(json.dumps(out))
"#;
    let out = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .output()
        .expect("run /usr/bin/python3");
    assert!(
        out.status.success(),
        "reading pycriu's schema failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn require_crit() {
    assert!(
        Path::new(CRIT).exists(),
        "{CRIT} not found: this test needs Debian's criu package (apt-get install criu; .ci/run installs it)"
    );
}

fn run_json(cmd: &mut Command) -> Json {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{cmd:?}: bad JSON: {e}"))
}

fn strip_ws(v: &Json) -> Json {
    match v {
        Json::String(s) => Json::String(s.chars().filter(|c| !c.is_ascii_whitespace()).collect()),
        // Message queues: messages and their base64 bytes, in turn.
        Json::Array(items) => Json::Array(items.iter().map(strip_ws).collect()),
        // TCP streams: {"inq", "outq"}.
        Json::Object(m) => Json::Object(m.iter().map(|(k, v)| (k.clone(), strip_ws(v))).collect()),
        other => other.clone(),
    }
}

fn compare(
    ours: &Json,
    crit: &Json,
    desc: &MessageDescriptor,
    known: &Known,
    at: &str,
    errs: &mut Vec<String>,
) {
    let (Some(o), Some(c)) = (ours.as_object(), crit.as_object()) else {
        errs.push(format!("{at}: not objects: ours {ours} crit {crit}"));
        return;
    };
    let Some(kf) = known.get(desc.name()) else {
        errs.push(format!(
            "{at}: crit decoded {} which pycriu does not know",
            desc.name()
        ));
        return;
    };
    for (ckey, cval) in c {
        if ckey == "extra" {
            if strip_ws(cval) != strip_ws(o.get("extra").unwrap_or(&Json::Null)) {
                errs.push(format!("{at}.extra differs"));
            }
            continue;
        }
        let Some(num) = kf
            .iter()
            .find(|(_, n)| *n == ckey)
            .map(|(k, _)| k.parse::<u32>().unwrap())
        else {
            errs.push(format!("{at}: crit shows unknown field {ckey}"));
            continue;
        };
        let Some(field) = desc.get_field(num) else {
            errs.push(format!(
                "{at}: field {num} ({ckey}) of {} is missing from stasis' schema",
                desc.name()
            ));
            continue;
        };
        let Some(oval) = o.get(field.name()) else {
            errs.push(format!("{at}.{ckey}: crit shows it, stasis does not"));
            continue;
        };
        compare_value(
            oval,
            cval,
            &field.kind(),
            known,
            &format!("{at}.{ckey}"),
            errs,
        );
    }
    for okey in o.keys().filter(|k| *k != "extra") {
        let field = desc.get_field_by_name(okey).unwrap();
        if let Some(cname) = kf.get(&field.number().to_string())
            && !c.contains_key(cname)
        {
            errs.push(format!("{at}.{okey}: stasis shows it, crit does not"));
        }
        // Fields newer than pycriu 3.17 are unknown to crit and skipped by it.
    }
}

fn compare_value(o: &Json, c: &Json, kind: &Kind, known: &Known, at: &str, errs: &mut Vec<String>) {
    match (o, c) {
        (Json::Array(a), Json::Array(b)) => {
            if a.len() != b.len() {
                errs.push(format!("{at}: {} items vs crit's {}", a.len(), b.len()));
                return;
            }
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                compare_value(x, y, kind, known, &format!("{at}[{i}]"), errs);
            }
        }
        _ => match kind {
            Kind::Message(m) => compare(o, c, m, known, at, errs),
            Kind::Bytes => {
                if strip_ws(o) != strip_ws(c) {
                    errs.push(format!("{at}: bytes {o} vs crit's {c}"));
                }
            }
            _ => {
                if o != c {
                    errs.push(format!("{at}: {o} vs crit's {c}"));
                }
            }
        },
    }
}

/// Image kinds of stasis' own, which CRIU (and so crit) does not have.
const STASIS_ONLY: &[&str] = &["POSIX_MQUEUE"];

/// The image kinds crit knows.
fn crit_kinds() -> impl Iterator<Item = &'static stasis_proto::kind::ImageKind> {
    KINDS.iter().filter(|k| !STASIS_ONLY.contains(&k.name))
}

fn entry_desc(layout: Layout, index: usize) -> MessageDescriptor {
    let name = match layout {
        Layout::Entries(n) | Layout::WithPayload(n, _) => n,
        Layout::SemSet => "ipc_sem_entry",
        Layout::MsgQueue => "ipc_msg_entry",
        Layout::ShmSegment => "ipc_shm_entry",
        Layout::TcpStream => "tcp_stream_entry",
        Layout::Pagemap if index == 0 => "pagemap_head",
        Layout::Pagemap => "pagemap_entry",
        Layout::GhostFile if index == 0 => "ghost_file_entry",
        Layout::GhostFile => "ghost_chunk_entry",
    };
    pj::message(name).unwrap()
}

#[test]
fn crit_decodes_every_image_type_with_the_same_values() {
    require_crit();
    let known = pycriu_schema();
    let dir = tempfile::tempdir().unwrap();
    let mut errs = Vec::new();
    let mut checked = 0;
    for kind in crit_kinds() {
        let path = dir.path().join(format!("{}.img", kind.name));
        std::fs::write(&path, sample_image(kind, 6)).unwrap();
        for pretty in [false, true] {
            let mut ours_cmd = Command::new(STASIS);
            ours_cmd.args(["image", "decode", "-i"]).arg(&path);
            let mut crit_cmd = Command::new(CRIT);
            crit_cmd.args(["decode", "-i"]).arg(&path);
            if pretty {
                ours_cmd.arg("--pretty");
                crit_cmd.arg("--pretty");
            }
            let ours = run_json(&mut ours_cmd);
            let crit = run_json(&mut crit_cmd);
            assert_eq!(ours["magic"], crit["magic"], "{}", kind.name);
            let (oe, ce) = (
                ours["entries"].as_array().unwrap(),
                crit["entries"].as_array().unwrap(),
            );
            assert_eq!(oe.len(), ce.len(), "{}: entry count", kind.name);
            for (i, (o, c)) in oe.iter().zip(ce).enumerate() {
                let at = format!(
                    "{}{}[{i}]",
                    kind.name,
                    if pretty { " (pretty)" } else { "" }
                );
                compare(o, c, &entry_desc(kind.layout, i), &known, &at, &mut errs);
            }
            checked += 1;
        }
    }
    assert!(
        errs.is_empty(),
        "{} differences:\n{}",
        errs.len(),
        errs.join("\n")
    );
    assert_eq!(checked, crit_kinds().count() * 2);
}

#[test]
fn every_message_crit_knows_has_the_same_field_numbers() {
    // Field names may differ (CRIU renamed pagemap_entry.nr_pages to
    // compat_nr_pages), numbers and wire types may not.
    let known = pycriu_schema();
    let mut compared = 0;
    for desc in pj::all_messages() {
        let Some(kf) = known.get(desc.name()) else {
            continue;
        };
        for field in desc.fields() {
            if let Some(name) = kf.get(&field.number().to_string()) {
                let renamed = desc.name() == "pagemap_entry" && field.name() == "compat_nr_pages";
                assert!(
                    name == field.name() || renamed,
                    "{}.{} is field {} in CRIU's schema, named {name} there",
                    desc.name(),
                    field.name(),
                    field.number()
                );
                compared += 1;
            }
        }
    }
    assert!(compared > 300, "only {compared} fields compared");
}

#[test]
fn crit_json_encodes_back_to_the_same_image() {
    require_crit();
    // These sample images set fields added after CRIU 3.17 (or stasis' own:
    // SK_QUEUES' sender address in the field CRIU reserves, NETNS' sysctls,
    // PSTREE's IDs in nested PID namespaces; CGROUP's is_threaded, CRIU
    // 4.x's), which crit drops.
    const NEWER_FIELDS: &[&str] = &[
        "CGROUP",
        "CORE",
        "CREDS",
        "INVENTORY",
        "MEMFD_INODE",
        "PAGEMAP",
        "SK_QUEUES",
        "NETNS",
        "PSTREE",
    ];
    // These set stasis' own fields only (FILES: a namespace file's task and
    // /proc/PID/ns file, a regular file's detached mount; REG_FILES: that
    // mount; NETDEV: a bridge's and a port's settings), which crit drops:
    // equal once those are left out.
    const STASIS_FIELDS: &[&str] = &["FILES", "REG_FILES", "NETDEV"];
    let dir = tempfile::tempdir().unwrap();
    let mut identical = 0;
    for kind in crit_kinds() {
        let path = dir.path().join(format!("{}.img", kind.name));
        let bytes = sample_image(kind, 4);
        std::fs::write(&path, &bytes).unwrap();
        let crit = Command::new(CRIT)
            .args(["decode", "-i"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(crit.status.success(), "crit decode {}", kind.name);
        let json_path = dir.path().join(format!("{}.json", kind.name));
        std::fs::write(&json_path, &crit.stdout).unwrap();
        let back = Command::new(STASIS)
            .args(["image", "encode", "-i"])
            .arg(&json_path)
            .output()
            .unwrap();
        assert!(
            back.status.success(),
            "{}: {}",
            kind.name,
            String::from_utf8_lossy(&back.stderr)
        );
        if STASIS_FIELDS.contains(&kind.name) {
            let back_path = dir.path().join(format!("{}.back.img", kind.name));
            std::fs::write(&back_path, &back.stdout).unwrap();
            assert_eq!(
                without_stasis_fields(&path),
                without_stasis_fields(&back_path),
                "{}: crit's JSON encodes differently (stasis' own fields left out)",
                kind.name
            );
            identical += 1;
        } else if !NEWER_FIELDS.contains(&kind.name) {
            assert!(
                back.stdout == bytes,
                "{}: crit's JSON encodes differently",
                kind.name
            );
            identical += 1;
        }
    }
    assert_eq!(identical, crit_kinds().count() - NEWER_FIELDS.len());
}

#[test]
fn rpc_schema_matches_pycriu_and_messages_cross_the_wire() {
    // pycriu (Debian's criu package) speaks RPC with these messages; field
    // numbers and names must agree, and a request we encode must parse there.
    let pool = prost_reflect::DescriptorPool::decode(stasis_proto::RPC_DESCRIPTOR).unwrap();
    let script = r#"
import sys, json
sys.path.insert(0, '/usr/lib/python3/dist-packages/pycriu')
import rpc_pb2
out = {m.name: {str(f.number): f.name for f in m.fields} for m in rpc_pb2.DESCRIPTOR.message_types_by_name.values()}
req = rpc_pb2.criu_req()
req.ParseFromString(sys.stdin.buffer.read())
out['__req'] = {'type': req.type, 'pid': req.opts.pid, 'dir': req.opts.images_dir_fd, 'shell_job': req.opts.shell_job, 'keep_open': req.keep_open}
print(json.dumps(out))
"#;
    use prost::Message as _;
    use stasis_proto::rpc::{CriuOpts, CriuReq, CriuReqType};
    let req = CriuReq {
        r#type: CriuReqType::Dump as i32,
        opts: Some(CriuOpts {
            images_dir_fd: 7,
            pid: Some(4242),
            shell_job: Some(true),
            ..Default::default()
        }),
        keep_open: Some(true),
        ..Default::default()
    };
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &req.encode_to_vec()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let known: serde_json::Map<String, Json> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        known["__req"],
        serde_json::json!({"type": 1, "pid": 4242, "dir": 7, "shell_job": true, "keep_open": true})
    );
    let mut compared = 0;
    for desc in pool.all_messages() {
        let Some(fields) = known.get(desc.name()).and_then(Json::as_object) else {
            continue;
        };
        for field in desc.fields() {
            if let Some(name) = fields.get(&field.number().to_string()) {
                assert_eq!(name, field.name(), "{}.{}", desc.name(), field.number());
                compared += 1;
            }
        }
    }
    assert!(compared > 90, "only {compared} RPC fields compared");
}

/// Image `path` as stasis decodes it, without the fields stasis adds to
/// CRIU's messages (`stasis_*`).
fn without_stasis_fields(path: &std::path::Path) -> serde_json::Value {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.retain(|k, _| !k.starts_with("stasis_"));
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let out = Command::new(STASIS)
        .args(["image", "decode", "-i"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stasis image decode {}",
        path.display()
    );
    let mut v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    strip(&mut v);
    v
}
