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
    "netdev.proto",
    "stats.proto",
];

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
