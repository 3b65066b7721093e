//! stasis: checkpoint/restore of Linux process trees in CRIU's image format.
//!
//! This library holds the engine; the `stasis` binary is its command line.
//! Dump and restore arrive with the engine issue; today the library explores
//! dump directories for the image inspector.

pub mod inspect;
