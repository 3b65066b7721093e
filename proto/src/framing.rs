//! Image framing: the magic pair, `u32 length + message` entries, raw payloads
//! after some entries, and raw `pages-N.img` files. Readers stream: they never
//! hold more than one entry (or one bounded payload chunk) in memory.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::Path;

use crate::error::ImageError;
use crate::kind::{self, Head, ImageKind};

/// Default cap on one entry's length. The largest real entries (an `mm_entry`
/// listing the 65530 VMAs a task may have) stay far below it.
pub const MAX_ENTRY: u64 = 64 << 20;

/// Size of the chunks payloads are copied in.
const CHUNK: usize = 64 << 10;

/// Streaming reader of one framed image.
#[derive(Debug)]
pub struct ImageReader<R> {
    src: R,
    path: String,
    offset: u64,
    size: Option<u64>,
    kind: &'static ImageKind,
    max_entry: u64,
    entry_offset: u64,
}

impl ImageReader<BufReader<File>> {
    /// Open an image file and read its magic numbers.
    pub fn open(path: &Path) -> Result<Self, ImageError> {
        let name = path.display().to_string();
        let file = File::open(path).map_err(|e| ImageError::io(&name, 0, e))?;
        let size = file
            .metadata()
            .map_err(|e| ImageError::io(&name, 0, e))?
            .len();
        Self::new(BufReader::new(file), name, Some(size))
    }

    /// Open an image file that must be of type `expected`.
    pub fn open_kind(path: &Path, expected: &'static ImageKind) -> Result<Self, ImageError> {
        let reader = Self::open(path)?;
        reader.expect_kind(expected)
    }
}

impl<R: BufRead> ImageReader<R> {
    /// Start reading an image from `src`. `path` names it in errors; `size`,
    /// when known, lets lengths that run past the end be reported as such
    /// before anything is allocated.
    pub fn new(mut src: R, path: impl Into<String>, size: Option<u64>) -> Result<Self, ImageError> {
        let path = path.into();
        let first = match read_u32(&mut src, &path, 0)? {
            U32::Value(v) => v,
            U32::Eof => return Err(ImageError::Empty { path }),
            U32::Short(got) => {
                return Err(ImageError::TruncatedMagic {
                    path,
                    offset: 0,
                    got,
                });
            }
        };
        let (head, magic, offset) = if first == kind::COMMON_MAGIC || first == kind::SERVICE_MAGIC {
            match read_u32(&mut src, &path, 4)? {
                U32::Value(v) => (Some(first), v, 8),
                U32::Eof => {
                    return Err(ImageError::TruncatedMagic {
                        path,
                        offset: 4,
                        got: 0,
                    });
                }
                U32::Short(got) => {
                    return Err(ImageError::TruncatedMagic {
                        path,
                        offset: 4,
                        got,
                    });
                }
            }
        } else {
            (None, first, 4)
        };
        let kind = kind::by_magic(magic).ok_or(ImageError::UnknownMagic {
            path: path.clone(),
            offset: offset - 4,
            found: magic,
        })?;
        let expected_head = match kind.head {
            Head::None => None,
            Head::Common => Some(kind::COMMON_MAGIC),
            Head::Service => Some(kind::SERVICE_MAGIC),
        };
        if head != expected_head {
            return Err(ImageError::WrongHead {
                path,
                kind: kind.name,
                found: head.unwrap_or(magic),
                expected: expected_head.unwrap_or(kind.magic),
            });
        }
        Ok(Self {
            src,
            path,
            offset,
            size,
            kind,
            max_entry: MAX_ENTRY,
            entry_offset: offset,
        })
    }

    /// Fail unless the image is of type `expected`.
    pub fn expect_kind(self, expected: &'static ImageKind) -> Result<Self, ImageError> {
        if self.kind.magic == expected.magic {
            Ok(self)
        } else {
            Err(ImageError::WrongKind {
                path: self.path,
                offset: 0,
                found: self.kind.name,
                expected: expected.name,
            })
        }
    }

    /// Lower or raise the cap on one entry's length.
    pub fn with_max_entry(mut self, max: u64) -> Self {
        self.max_entry = max;
        self
    }

    /// The image type read from the magic.
    pub fn kind(&self) -> &'static ImageKind {
        self.kind
    }

    /// The name used in errors.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Current byte offset in the file.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Offset of the length field of the last entry returned.
    pub fn entry_offset(&self) -> u64 {
        self.entry_offset
    }

    /// The next entry's bytes, or `None` at a clean end of file.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, ImageError> {
        let at = self.offset;
        let len = match read_u32(&mut self.src, &self.path, at)? {
            U32::Eof => return Ok(None),
            U32::Short(got) => {
                return Err(ImageError::TruncatedLength {
                    path: self.path.clone(),
                    offset: at,
                    got,
                });
            }
            U32::Value(v) => u64::from(v),
        };
        self.entry_offset = at;
        self.offset += 4;
        if len > self.max_entry {
            return Err(ImageError::EntryTooLarge {
                path: self.path.clone(),
                offset: at,
                len,
                max: self.max_entry,
            });
        }
        self.check_room(at, "entry", len)?;
        let mut buf = Vec::new();
        let got = (&mut self.src)
            .take(len)
            .read_to_end(&mut buf)
            .map_err(|e| ImageError::io(&self.path, self.offset, e))?;
        self.offset += got as u64;
        if (got as u64) < len {
            return Err(ImageError::Truncated {
                path: self.path.clone(),
                offset: at,
                what: "entry",
                len,
                got: got as u64,
            });
        }
        Ok(Some(buf))
    }

    /// The next entry decoded as `M`, or `None` at a clean end of file.
    /// An entry that lacks a field the schema marks required is refused, as
    /// the JSON decoder refuses it (prost would read it as zero).
    pub fn read_entry<M: prost::Message + prost::Name + Default>(
        &mut self,
    ) -> Result<Option<M>, ImageError> {
        let Some(buf) = self.next_frame()? else {
            return Ok(None);
        };
        let m = M::decode(buf.as_slice()).map_err(|source| ImageError::Decode {
            path: self.path.clone(),
            offset: self.entry_offset,
            message: short_type_name::<M>(),
            source,
        })?;
        if let Some(field) = crate::required::missing(M::NAME, &buf) {
            return Err(ImageError::MissingField {
                path: self.path.clone(),
                offset: self.entry_offset,
                message: M::NAME.to_owned(),
                field,
            });
        }
        Ok(Some(m))
    }

    /// Copy a raw payload of `len` bytes that follows the last entry into `dst`,
    /// in bounded chunks.
    pub fn copy_payload(&mut self, len: u64, dst: &mut dyn Write) -> Result<(), ImageError> {
        let at = self.offset;
        self.check_room(at, "payload", len)?;
        let mut left = len;
        let mut buf = vec![0u8; CHUNK.min(usize::try_from(len).unwrap_or(CHUNK))];
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(buf.len()));
            let n = read_some(&mut self.src, &mut buf[..want])
                .map_err(|e| ImageError::io(&self.path, self.offset, e))?;
            if n == 0 {
                return Err(ImageError::Truncated {
                    path: self.path.clone(),
                    offset: at,
                    what: "payload",
                    len,
                    got: len - left,
                });
            }
            dst.write_all(&buf[..n])
                .map_err(|e| ImageError::io(&self.path, self.offset, e))?;
            self.offset += n as u64;
            left -= n as u64;
        }
        Ok(())
    }

    /// Read a raw payload of `len` bytes into memory (for payloads whose size
    /// was checked against the file or is inherently small).
    pub fn read_payload(&mut self, len: u64) -> Result<Vec<u8>, ImageError> {
        let mut out = Vec::new();
        self.copy_payload(len, &mut out)?;
        Ok(out)
    }

    /// Skip a raw payload of `len` bytes.
    pub fn skip_payload(&mut self, len: u64) -> Result<(), ImageError> {
        self.copy_payload(len, &mut io::sink())
    }

    /// Copy everything up to the end of the file into `dst` (the contents of a
    /// ghost file saved without chunks). Returns the number of bytes.
    pub fn copy_rest(&mut self, dst: &mut dyn Write) -> Result<u64, ImageError> {
        let n =
            io::copy(&mut self.src, dst).map_err(|e| ImageError::io(&self.path, self.offset, e))?;
        self.offset += n;
        Ok(n)
    }

    fn check_room(&self, at: u64, what: &'static str, len: u64) -> Result<(), ImageError> {
        if let Some(size) = self.size {
            let remaining = size.saturating_sub(self.offset);
            if len > remaining {
                return Err(ImageError::PastEnd {
                    path: self.path.clone(),
                    offset: at,
                    what,
                    len,
                    remaining,
                });
            }
        }
        Ok(())
    }
}

fn short_type_name<M>() -> String {
    let full = std::any::type_name::<M>();
    let last = full.rsplit("::").next().unwrap_or(full);
    last.to_owned()
}

enum U32 {
    Value(u32),
    Eof,
    Short(usize),
}

fn read_u32(src: &mut dyn Read, path: &str, offset: u64) -> Result<U32, ImageError> {
    let mut b = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = read_some(src, &mut b[got..]).map_err(|e| ImageError::io(path, offset, e))?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(match got {
        0 => U32::Eof,
        4 => U32::Value(u32::from_le_bytes(b)),
        n => U32::Short(n),
    })
}

fn read_some(src: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match src.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Writer of one framed image: magics first, then entries and payloads.
#[derive(Debug)]
pub struct ImageWriter<W: Write> {
    dst: W,
    path: String,
    offset: u64,
    kind: &'static ImageKind,
}

impl ImageWriter<BufWriter<File>> {
    /// Create (or truncate) an image file of type `kind` and write its magics.
    pub fn create(path: &Path, kind: &'static ImageKind) -> Result<Self, ImageError> {
        let name = path.display().to_string();
        let file = File::create(path).map_err(|e| ImageError::io(&name, 0, e))?;
        Self::new(BufWriter::new(file), name, kind)
    }
}

impl<W: Write> ImageWriter<W> {
    /// Start an image of type `kind` on `dst`.
    pub fn new(
        dst: W,
        path: impl Into<String>,
        kind: &'static ImageKind,
    ) -> Result<Self, ImageError> {
        let mut w = Self {
            dst,
            path: path.into(),
            offset: 0,
            kind,
        };
        match kind.head {
            Head::None => {}
            Head::Common => w.put(&kind::COMMON_MAGIC.to_le_bytes())?,
            Head::Service => w.put(&kind::SERVICE_MAGIC.to_le_bytes())?,
        }
        w.put(&kind.magic.to_le_bytes())?;
        Ok(w)
    }

    /// The image type being written.
    pub fn kind(&self) -> &'static ImageKind {
        self.kind
    }

    /// Append one entry.
    pub fn write<M: prost::Message>(&mut self, msg: &M) -> Result<(), ImageError> {
        self.write_frame(&msg.encode_to_vec())
    }

    /// Append one entry given as already encoded message bytes.
    pub fn write_frame(&mut self, bytes: &[u8]) -> Result<(), ImageError> {
        let len = u32::try_from(bytes.len()).map_err(|_| ImageError::EntryTooLarge {
            path: self.path.clone(),
            offset: self.offset,
            len: bytes.len() as u64,
            max: u64::from(u32::MAX),
        })?;
        self.put(&len.to_le_bytes())?;
        self.put(bytes)
    }

    /// Append raw payload bytes after the last entry.
    pub fn write_payload(&mut self, bytes: &[u8]) -> Result<(), ImageError> {
        self.put(bytes)
    }

    /// Flush and return the destination.
    pub fn finish(mut self) -> Result<W, ImageError> {
        self.dst
            .flush()
            .map_err(|e| ImageError::io(&self.path, self.offset, e))?;
        Ok(self.dst)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), ImageError> {
        self.dst
            .write_all(bytes)
            .map_err(|e| ImageError::io(&self.path, self.offset, e))?;
        self.offset += bytes.len() as u64;
        Ok(())
    }
}

/// Streaming reader of a raw `pages-N.img`: page after page, in the order the
/// PRESENT pagemap entries list them.
#[derive(Debug)]
pub struct PagesReader<R> {
    src: R,
    path: String,
    page_size: usize,
    offset: u64,
}

impl PagesReader<BufReader<File>> {
    /// Open a pages image.
    pub fn open(path: &Path, page_size: usize) -> Result<Self, ImageError> {
        let name = path.display().to_string();
        let file = File::open(path).map_err(|e| ImageError::io(&name, 0, e))?;
        Ok(Self::new(
            BufReader::with_capacity(CHUNK, file),
            name,
            page_size,
        ))
    }
}

impl<R: Read> PagesReader<R> {
    /// Read pages of `page_size` bytes from `src`.
    pub fn new(src: R, path: impl Into<String>, page_size: usize) -> Self {
        Self {
            src,
            path: path.into(),
            page_size,
            offset: 0,
        }
    }

    /// Fill `buf` (a whole number of pages) with the next pages.
    pub fn read_pages(&mut self, buf: &mut [u8]) -> Result<(), ImageError> {
        let at = self.offset;
        let mut got = 0;
        while got < buf.len() {
            let n = read_some(&mut self.src, &mut buf[got..])
                .map_err(|e| ImageError::io(&self.path, at + got as u64, e))?;
            if n == 0 {
                return Err(ImageError::Truncated {
                    path: self.path.clone(),
                    offset: at,
                    what: "pages",
                    len: buf.len() as u64,
                    got: got as u64,
                });
            }
            got += n;
        }
        self.offset += got as u64;
        Ok(())
    }

    /// Skip `count` pages.
    pub fn skip_pages(&mut self, count: u64) -> Result<(), ImageError> {
        let len = count.saturating_mul(self.page_size as u64);
        let n = io::copy(&mut (&mut self.src).take(len), &mut io::sink())
            .map_err(|e| ImageError::io(&self.path, self.offset, e))?;
        if n < len {
            return Err(ImageError::Truncated {
                path: self.path.clone(),
                offset: self.offset,
                what: "pages",
                len,
                got: n,
            });
        }
        self.offset += n;
        Ok(())
    }

    /// The page size this reader counts in.
    pub fn page_size(&self) -> usize {
        self.page_size
    }
}

/// Writer of a raw `pages-N.img`.
#[derive(Debug)]
pub struct PagesWriter<W: Write> {
    dst: W,
    path: String,
    written: u64,
}

impl<W: Write> PagesWriter<W> {
    /// Write pages to `dst`.
    pub fn new(dst: W, path: impl Into<String>) -> Self {
        Self {
            dst,
            path: path.into(),
            written: 0,
        }
    }

    /// Append page data (a whole number of pages).
    pub fn write_pages(&mut self, pages: &[u8]) -> Result<(), ImageError> {
        self.dst
            .write_all(pages)
            .map_err(|e| ImageError::io(&self.path, self.written, e))?;
        self.written += pages.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Flush and return the destination.
    pub fn finish(mut self) -> Result<W, ImageError> {
        self.dst
            .flush()
            .map_err(|e| ImageError::io(&self.path, self.written, e))?;
        Ok(self.dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::{PstreeEntry, StatsEntry};

    #[test]
    fn typed_entries_round_trip() {
        let kind = kind::by_name("PSTREE").unwrap();
        let mut w = ImageWriter::new(Vec::new(), "pstree.img", kind).unwrap();
        let entries: Vec<PstreeEntry> = (1..=3)
            .map(|pid| PstreeEntry {
                pid,
                ppid: pid - 1,
                pgid: 1,
                sid: 1,
                threads: vec![pid, pid + 100],
                ..PstreeEntry::default()
            })
            .collect();
        for e in &entries {
            w.write(e).unwrap();
        }
        let bytes = w.finish().unwrap();
        assert_eq!(&bytes[..4], &kind::COMMON_MAGIC.to_le_bytes());
        let mut r =
            ImageReader::new(bytes.as_slice(), "pstree.img", Some(bytes.len() as u64)).unwrap();
        assert_eq!(r.kind().name, "PSTREE");
        let mut back = Vec::new();
        while let Some(e) = r.read_entry::<PstreeEntry>().unwrap() {
            back.push(e);
        }
        assert_eq!(back, entries);
    }

    #[test]
    fn service_and_inventory_heads() {
        let stats = kind::by_name("STATS").unwrap();
        let bytes = ImageWriter::new(Vec::new(), "stats-dump", stats)
            .unwrap()
            .finish()
            .unwrap();
        assert_eq!(&bytes[..4], &kind::SERVICE_MAGIC.to_le_bytes());
        let mut r = ImageReader::new(bytes.as_slice(), "stats-dump", None).unwrap();
        assert!(r.read_entry::<StatsEntry>().unwrap().is_none());

        let inv = kind::by_name("INVENTORY").unwrap();
        let bytes = ImageWriter::new(Vec::new(), "inventory.img", inv)
            .unwrap()
            .finish()
            .unwrap();
        assert_eq!(bytes, kind::INVENTORY_MAGIC.to_le_bytes());
    }

    #[test]
    fn wrong_kind_is_reported() {
        let bytes = ImageWriter::new(Vec::new(), "x", kind::by_name("MM").unwrap())
            .unwrap()
            .finish()
            .unwrap();
        let err = ImageReader::new(bytes.as_slice(), "core-1.img", None)
            .unwrap()
            .expect_kind(kind::by_name("CORE").unwrap())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "core-1.img: offset 0: image type MM, expected CORE"
        );
    }

    #[test]
    fn pages_stream_in_page_units() {
        let page = 4096;
        let mut w = PagesWriter::new(Vec::new(), "pages-1.img");
        let data: Vec<u8> = (0..3 * page)
            .map(|i| u8::try_from(i / page + 1).unwrap())
            .collect();
        w.write_pages(&data).unwrap();
        assert_eq!(w.written(), 3 * page as u64);
        let bytes = w.finish().unwrap();
        let mut r = PagesReader::new(bytes.as_slice(), "pages-1.img", page);
        let mut buf = vec![0u8; page];
        r.skip_pages(1).unwrap();
        r.read_pages(&mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 2));
        r.read_pages(&mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 3));
        let err = r.read_pages(&mut buf).unwrap_err();
        assert!(
            err.to_string().contains("offset 12288: truncated pages"),
            "{err}"
        );
    }
}
