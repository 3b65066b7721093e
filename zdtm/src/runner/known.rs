//! The known-failures list: `NAME[:flavor]  reason` per line, `#` comments.
//! Listed failures do not fail a run; a listed test that passes does
//! ("unexpected pass"), so the list shrinks as the engine grows.

use std::path::Path;

use crate::meta::Flavor;

/// Parsed known-failures entries.
#[derive(Debug, Clone, Default)]
pub struct KnownFailures {
    entries: Vec<(String, Option<Flavor>, String)>,
}

/// A malformed known-failures file.
#[derive(Debug, thiserror::Error)]
pub enum KnownError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A line is not `NAME[:flavor] reason`.
    #[error("{path}:{line}: {what}")]
    Syntax {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        what: String,
    },
}

impl KnownFailures {
    /// Read and parse a file.
    pub fn load(path: &Path) -> Result<Self, KnownError> {
        let text = std::fs::read_to_string(path).map_err(|source| KnownError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|(line, what)| KnownError::Syntax {
            path: path.display().to_string(),
            line,
            what,
        })
    }

    /// Parse the text of a list; errors carry the line number.
    pub fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut entries = Vec::new();
        for (i, l) in text.lines().enumerate() {
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let (key, reason) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
            let reason = reason.trim();
            if reason.is_empty() {
                return Err((i + 1, format!("{key}: a reason is required")));
            }
            let (name, flavor) = match key.split_once(':') {
                Some((n, f)) => (
                    n,
                    Some(Flavor::parse(f).ok_or_else(|| (i + 1, format!("unknown flavor {f:?}")))?),
                ),
                None => (key, None),
            };
            entries.push((name.to_owned(), flavor, reason.to_owned()));
        }
        Ok(Self { entries })
    }

    /// The reason a test is expected to fail in `flavor`, if it is listed.
    pub fn reason(&self, name: &str, flavor: Flavor) -> Option<&str> {
        self.entries
            .iter()
            .find(|(n, f, _)| n == name && f.is_none_or(|f| f == flavor))
            .map(|(_, _, r)| r.as_str())
    }

    /// Test names listed (to report entries naming no test).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(n, _, _)| n.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_flavors_and_reasons() {
        let k = KnownFailures::parse("# c\nmaps00  no dump yet\npipe00:ns  pid ns\n").unwrap();
        assert_eq!(k.reason("maps00", Flavor::Ns), Some("no dump yet"));
        assert_eq!(k.reason("pipe00", Flavor::Ns), Some("pid ns"));
        assert_eq!(k.reason("pipe00", Flavor::H), None);
    }

    #[test]
    fn rejects_missing_reason_and_bad_flavor() {
        assert_eq!(KnownFailures::parse("a\n").unwrap_err().0, 1);
        assert_eq!(KnownFailures::parse("\na:x why\n").unwrap_err().0, 2);
    }
}
