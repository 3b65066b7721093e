//! Feeds arbitrary bytes to the image reader and the JSON decoder, as a file
//! of known size and as a stream, and encodes back whatever decodes. None of it
//! may panic; every failure must be an `ImageError`/`JsonError`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stasis_proto::ImageReader;
use stasis_proto::json::{self, DecodeOptions};

fuzz_target!(|data: &[u8]| {
    for size in [Some(data.len() as u64), None] {
        let Ok(rd) = ImageReader::new(data, "fuzz", size) else {
            continue;
        };
        let rd = rd.with_max_entry(1 << 20);
        for pretty in [false, true] {
            let Ok(rd2) = ImageReader::new(data, "fuzz", size) else { continue };
            if let Ok(value) = json::decode_image(rd2.with_max_entry(1 << 20), DecodeOptions { pretty, no_payload: false }) {
                let _ = json::encode_image(&value, Vec::new(), "fuzz");
            }
        }
        let _ = json::image_info(rd);
    }
});
