//! CRIU-compatible image and RPC schemas for stasis.
//!
//! - [`images`]: prost types of every image message (`core_entry`, `mm_entry`, ...),
//!   wire-compatible with CRIU's published schema;
//! - [`rpc`]: the `swrk`/`service` RPC messages, in their own module;
//! - [`kind`]: image types, their magic numbers and body layouts;
//! - [`framing`]: streaming readers and writers of framed and raw (`pages-N.img`) images;
//! - [`json`]: binary image <-> JSON in crit's conventions, by reflection over the schema.
#![forbid(unsafe_code)]

pub mod error;
pub mod framing;
pub mod json;
pub mod kind;
pub mod required;
#[cfg(feature = "test-utils")]
#[allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]
pub mod sample;

pub use error::{ImageError, JsonError};
pub use framing::{ImageReader, ImageWriter, PagesReader, PagesWriter};

/// Image messages (package `stasis.images`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod images {
    include!(concat!(env!("OUT_DIR"), "/stasis.images.rs"));
}

/// RPC messages (package `stasis.rpc`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod rpc {
    include!(concat!(env!("OUT_DIR"), "/stasis.rpc.rs"));
}

/// Encoded `FileDescriptorSet` of the image schema.
pub const IMAGES_DESCRIPTOR: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/images.bin"));
/// Encoded `FileDescriptorSet` of the RPC schema.
pub const RPC_DESCRIPTOR: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/rpc.bin"));
