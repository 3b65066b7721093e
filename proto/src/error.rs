//! Errors of image framing, decoding and JSON conversion. Every variant names
//! the file and the byte offset where the problem starts, and what was expected.

use thiserror::Error;

/// A malformed, truncated or unreadable image.
#[derive(Debug, Error)]
pub enum ImageError {
    /// The underlying read or write failed.
    #[error("{path}: offset {offset}: i/o error")]
    Io {
        /// Image file name (or `<stdin>`).
        path: String,
        /// Byte offset of the failed operation.
        offset: u64,
        /// The error from the OS.
        #[source]
        source: std::io::Error,
    },
    /// The file is empty: not even a magic number.
    #[error("{path}: empty file, expected an image magic number")]
    Empty {
        /// Image file name.
        path: String,
    },
    /// Fewer than four bytes where a magic number should be.
    #[error("{path}: offset {offset}: truncated magic number: expected 4 bytes, found {got}")]
    TruncatedMagic {
        /// Image file name.
        path: String,
        /// Offset of the magic.
        offset: u64,
        /// Bytes present.
        got: usize,
    },
    /// A magic number that is not a known image type.
    #[error(
        "{path}: offset {offset}: unknown image magic {found:#010x}, not a stasis/CRIU image of a known type"
    )]
    UnknownMagic {
        /// Image file name.
        path: String,
        /// Offset of the magic.
        offset: u64,
        /// The value read.
        found: u32,
    },
    /// The head magic does not go with the type magic (a service image under the common magic, ...).
    #[error(
        "{path}: offset 0: head magic {found:#010x} does not go with image type {kind}, expected {expected:#010x}"
    )]
    WrongHead {
        /// Image file name.
        path: String,
        /// The image type.
        kind: &'static str,
        /// The head magic read.
        found: u32,
        /// The head magic this type needs.
        expected: u32,
    },
    /// A valid image of another type than the caller asked for.
    #[error("{path}: offset {offset}: image type {found}, expected {expected}")]
    WrongKind {
        /// Image file name.
        path: String,
        /// Offset of the type magic.
        offset: u64,
        /// Type found.
        found: &'static str,
        /// Type wanted.
        expected: &'static str,
    },
    /// Fewer than four bytes where an entry length should be.
    #[error("{path}: offset {offset}: truncated entry length: expected 4 bytes, found {got}")]
    TruncatedLength {
        /// Image file name.
        path: String,
        /// Offset of the length field.
        offset: u64,
        /// Bytes present.
        got: usize,
    },
    /// An entry length above the sanity cap.
    #[error("{path}: offset {offset}: entry length {len} exceeds the limit of {max} bytes")]
    EntryTooLarge {
        /// Image file name.
        path: String,
        /// Offset of the length field.
        offset: u64,
        /// Length read.
        len: u64,
        /// The cap.
        max: u64,
    },
    /// An entry or payload that would extend past the end of the file.
    #[error(
        "{path}: offset {offset}: {what} of {len} bytes runs past the end of the file ({remaining} bytes left)"
    )]
    PastEnd {
        /// Image file name.
        path: String,
        /// Offset where the entry or payload starts.
        offset: u64,
        /// "entry" or "payload".
        what: &'static str,
        /// Length it claims.
        len: u64,
        /// Bytes left in the file.
        remaining: u64,
    },
    /// The stream ended inside an entry or payload.
    #[error("{path}: offset {offset}: truncated {what}: expected {len} bytes, found {got}")]
    Truncated {
        /// Image file name.
        path: String,
        /// Offset where the entry or payload starts.
        offset: u64,
        /// "entry" or "payload".
        what: &'static str,
        /// Length expected.
        len: u64,
        /// Bytes present.
        got: u64,
    },
    /// The bytes of an entry are not a valid message of the expected type.
    #[error("{path}: offset {offset}: entry is not a valid {message} message")]
    Decode {
        /// Image file name.
        path: String,
        /// Offset of the entry's length field.
        offset: u64,
        /// The protobuf message type expected.
        message: String,
        /// What the decoder said.
        #[source]
        source: prost::DecodeError,
    },
    /// A decoded entry lacks a field the schema marks required.
    #[error("{path}: offset {offset}: {message} entry lacks required field {field}")]
    MissingField {
        /// Image file name.
        path: String,
        /// Offset of the entry's length field.
        offset: u64,
        /// The message type.
        message: String,
        /// Dotted path of the missing field.
        field: String,
    },
    /// A field that gives a payload length holds an impossible value.
    #[error("{path}: offset {offset}: {message}.{field} = {value} is not a valid payload length")]
    BadPayloadLength {
        /// Image file name.
        path: String,
        /// Offset of the entry.
        offset: u64,
        /// The message type.
        message: &'static str,
        /// The length field.
        field: &'static str,
        /// Its value.
        value: String,
    },
}

impl ImageError {
    pub(crate) fn io(path: &str, offset: u64, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            offset,
            source,
        }
    }
}

/// A JSON image that cannot be turned into a binary image.
#[derive(Debug, Error)]
pub enum JsonError {
    /// The top level is not `{"magic": NAME, "entries": [...]}`.
    #[error("json image: {0}")]
    Shape(String),
    /// `magic` names no image type stasis knows.
    #[error("json image: unknown magic {0:?}")]
    UnknownMagic(String),
    /// A value does not fit its field.
    #[error("json image: entries{at}: {what}")]
    Field {
        /// JSON path of the value (`[3].gpregs.ip`).
        at: String,
        /// What is wrong.
        what: String,
    },
    /// Writing the binary image failed.
    #[error("json image: writing the binary image failed")]
    Write(#[source] std::io::Error),
}
