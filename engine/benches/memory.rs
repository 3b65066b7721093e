//! Page copy paths of a dump, on 64 MiB of this process's own touched
//! memory: process_vm_readv (the engine's read path) and /proc/PID/mem in
//! 4 MiB chunks, a pagemap walk, and memcpy as the ceiling.
#![allow(missing_docs)]

#[cfg(target_arch = "x86_64")]
mod bench {
    use std::hint::black_box;
    use std::os::unix::fs::FileExt;

    use criterion::{Criterion, Throughput};
    use nix::unistd::Pid;

    const LEN: usize = 64 << 20;
    const CHUNK: usize = 4 << 20;

    pub fn memory(c: &mut Criterion) {
        let src: Vec<u8> = (0..LEN)
            .map(|i| u8::try_from(i % 251).unwrap_or(0))
            .collect();
        let addr = src.as_ptr() as u64;
        let me = Pid::this();
        let mut buf = vec![0u8; CHUNK];
        let mut g = c.benchmark_group("copy 64 MiB");
        g.throughput(Throughput::Bytes(LEN as u64));
        g.sample_size(20);
        g.bench_function("process_vm_readv, 4 MiB chunks", |b| {
            b.iter(|| {
                for off in (0..LEN).step_by(CHUNK) {
                    stasis_engine::read_task_memory(me, addr + off as u64, &mut buf).expect("read");
                }
                black_box(&buf);
            });
        });
        let mem = std::fs::File::open("/proc/self/mem").expect("/proc/self/mem");
        g.bench_function("/proc/self/mem, 4 MiB chunks", |b| {
            b.iter(|| {
                for off in (0..LEN).step_by(CHUNK) {
                    mem.read_exact_at(&mut buf, addr + off as u64)
                        .expect("read");
                }
                black_box(&buf);
            });
        });
        g.bench_function("memcpy, 4 MiB chunks", |b| {
            b.iter(|| {
                for chunk in src.chunks(CHUNK) {
                    buf.copy_from_slice(chunk);
                }
                black_box(&buf);
            });
        });
        g.finish();
        let pm = std::fs::File::open("/proc/self/pagemap").expect("pagemap");
        let pages = LEN / 4096;
        let mut words = vec![0u8; pages * 8];
        let mut g = c.benchmark_group("pagemap");
        g.throughput(Throughput::Elements(pages as u64));
        g.bench_function("read 64 MiB worth of pagemap words", |b| {
            b.iter(|| {
                pm.read_exact_at(&mut words, addr / 4096 * 8)
                    .expect("pagemap");
                black_box(&words);
            });
        });
        g.finish();
    }
}

#[cfg(target_arch = "x86_64")]
criterion::criterion_group!(benches, bench::memory);
#[cfg(target_arch = "x86_64")]
criterion::criterion_main!(benches);

#[cfg(not(target_arch = "x86_64"))]
fn main() {}
