//! Image framing: encoding and decoding a pagemap of 10 000 entries and a
//! core image, in memory (no file system in the measurement).
#![allow(missing_docs)]

#[cfg(target_arch = "x86_64")]
mod bench {
    use std::hint::black_box;

    use criterion::{Criterion, Throughput};
    use stasis_proto::images::{CoreEntry, PagemapEntry, PagemapHead};
    use stasis_proto::{ImageReader, ImageWriter, kind};

    fn pagemap(n: u64) -> Vec<u8> {
        let k = kind::by_name("PAGEMAP").expect("PAGEMAP kind");
        let mut w = ImageWriter::new(Vec::new(), "bench", k).expect("writer");
        w.write(&PagemapHead { pages_id: 1 }).expect("head");
        for i in 0..n {
            w.write(&PagemapEntry {
                vaddr: 0x7f00_0000_0000 + i * 0x10_000,
                compat_nr_pages: 3,
                in_parent: None,
                flags: Some(4),
                nr_pages: Some(3),
            })
            .expect("entry");
        }
        w.finish().expect("finish")
    }

    pub fn framing(c: &mut Criterion) {
        let mut g = c.benchmark_group("framing");
        g.throughput(Throughput::Elements(10_000));
        g.bench_function("encode pagemap x10000", |b| {
            b.iter(|| pagemap(black_box(10_000)))
        });
        let bytes = pagemap(10_000);
        g.bench_function("decode pagemap x10000", |b| {
            b.iter(|| {
                let mut r = ImageReader::new(bytes.as_slice(), "bench", None).expect("reader");
                let _: Option<PagemapHead> = r.read_entry().expect("head");
                let mut n = 0;
                while let Some(e) = r.read_entry::<PagemapEntry>().expect("entry") {
                    n += e.nr_pages.unwrap_or(0);
                }
                black_box(n)
            });
        });
        g.finish();
        let core = CoreEntry::default();
        let k = kind::by_name("CORE").expect("CORE kind");
        c.bench_function("encode core", |b| {
            b.iter(|| {
                let mut w = ImageWriter::new(Vec::new(), "bench", k).expect("writer");
                w.write(black_box(&core)).expect("entry");
                w.finish().expect("finish")
            });
        });
    }
}

#[cfg(target_arch = "x86_64")]
criterion::criterion_group!(benches, bench::framing);
#[cfg(target_arch = "x86_64")]
criterion::criterion_main!(benches);

#[cfg(not(target_arch = "x86_64"))]
fn main() {}
