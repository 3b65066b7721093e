//! Writes one sample image of every type into a directory (fuzzing seeds,
//! hand testing against crit): `cargo run -p stasis-proto --features test-utils
//! --example write_samples -- DIR`.

use stasis_proto::kind::KINDS;
use stasis_proto::sample::{sample_image, sample_plain_ghost};

fn main() -> std::io::Result<()> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "samples".into());
    std::fs::create_dir_all(&dir)?;
    for kind in KINDS {
        std::fs::write(format!("{dir}/{}.img", kind.name), sample_image(kind, 3))?;
    }
    std::fs::write(
        format!("{dir}/GHOST_PLAIN.img"),
        sample_plain_ghost(b"contents"),
    )?;
    Ok(())
}
