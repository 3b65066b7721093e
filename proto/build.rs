//! Compiles the image and RPC schemas in `proto/` with the pure-Rust `protox`
//! compiler (no system `protoc`), generates prost types and keeps the encoded
//! descriptor sets so the JSON converter can walk messages by reflection.

use std::path::PathBuf;

const IMAGE_FILES: &[&str] = &[
    "opts.proto",
    "fown.proto",
    "inventory.proto",
    "pstree.proto",
    "core.proto",
    "core-x86.proto",
    "core-aarch64.proto",
    "core-ppc64.proto",
    "core-s390.proto",
    "creds.proto",
    "sa.proto",
    "siginfo.proto",
    "timer.proto",
    "rlimit.proto",
    "rseq.proto",
    "seccomp.proto",
    "mm.proto",
    "vma.proto",
    "pagemap.proto",
    "fdinfo.proto",
    "regfile.proto",
    "pipe.proto",
    "pipe-data.proto",
    "fifo.proto",
    "tty.proto",
    "fs.proto",
    "time.proto",
    "ghost-file.proto",
    "remap-file-path.proto",
    "memfd.proto",
    "pidfd.proto",
    "ns.proto",
    "eventfd.proto",
    "eventpoll.proto",
    "signalfd.proto",
    "timerfd.proto",
    "fh.proto",
    "fsnotify.proto",
    "sk-opts.proto",
    "sk-unix.proto",
    "sk-inet.proto",
    "sk-netlink.proto",
    "packet-sock.proto",
    "tcp-stream.proto",
    "sk-packet.proto",
    "file-lock.proto",
    "utsns.proto",
    "ipc-var.proto",
    "ipc.proto",
    "mqueue.proto",
    "tun.proto",
    "netdev.proto",
    "mnt.proto",
    "timens.proto",
    "cgroup.proto",
    "userns.proto",
    "stats.proto",
];

/// A message's name and its fields: (number, name, required, message type).
type Row = (String, Vec<(i32, String, bool, String)>);

/// Write `required.rs`: for every message of `fds` (by its name without the
/// package, nested ones as `outer.inner`), its fields as (number, name,
/// required, message type or ""), sorted by name for a binary search. The
/// image reader checks required fields with it without building a
/// reflection pool at run time.
fn write_required(
    fds: &prost_types::FileDescriptorSet,
    out: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    fn walk(prefix: &str, package: &str, m: &prost_types::DescriptorProto, rows: &mut Vec<Row>) {
        let name = format!("{prefix}{}", m.name());
        let fields = m
            .field
            .iter()
            .map(|f| {
                let required = f.label() == prost_types::field_descriptor_proto::Label::Required;
                let sub = if f.r#type() == prost_types::field_descriptor_proto::Type::Message {
                    f.type_name()
                        .trim_start_matches('.')
                        .trim_start_matches(package)
                        .trim_start_matches('.')
                        .to_owned()
                } else {
                    String::new()
                };
                (f.number(), f.name().to_owned(), required, sub)
            })
            .collect();
        rows.push((name.clone(), fields));
        for n in &m.nested_type {
            walk(&format!("{name}."), package, n, rows);
        }
    }
    let mut rows = Vec::new();
    for f in &fds.file {
        for m in &f.message_type {
            walk("", f.package(), m, &mut rows);
        }
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    rows.dedup_by(|a, b| a.0 == b.0);
    let mut code = String::from("pub(crate) static MESSAGES: &[(&str, &[Field])] = &[\n");
    for (name, fields) in rows {
        code.push_str(&format!("    ({name:?}, &["));
        for (num, fname, req, sub) in fields {
            code.push_str(&format!("({num}, {fname:?}, {req}, {sub:?}), "));
        }
        code.push_str("]),\n");
    }
    code.push_str("];\n");
    std::fs::write(out.join("required.rs"), code)?;
    Ok(())
}

fn compile(files: &[&str], descriptor_name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.include_imports(true);
    compiler.open_files(files)?;
    // The reflection copy must keep the `(criu)` field options; prost_types'
    // FileDescriptorSet would drop them, so encode from the compiler itself.
    std::fs::write(
        out.join(descriptor_name),
        compiler.encode_file_descriptor_set(),
    )?;
    let fds = compiler.file_descriptor_set();
    if descriptor_name == "images.bin" {
        write_required(&fds, &out)?;
    }
    let mut config = prost_build::Config::new();
    config.out_dir(&out);
    // Each type names its schema message: readers check required fields
    // against the descriptor (prost itself fills them with zeros).
    config.enable_type_names();
    config.compile_fds(fds)?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    compile(IMAGE_FILES, "images.bin")?;
    compile(&["rpc.proto"], "rpc.bin")?;
    Ok(())
}
