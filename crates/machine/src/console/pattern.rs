//! What [`Console::expect`](super::Console::expect) looks for: exact bytes or a regular
//! expression, searched incrementally so that a match split across two reads is not missed
//! and a regex search stays linear in the output.

use regex::bytes::Regex;

use crate::error::{Error, Result};

/// A regex match may start at most this far before the newest bytes (substring matches
/// have no such limit); this keeps matching linear in the output.
pub const REGEX_LOOKBACK: usize = 64 * 1024;

/// What to look for in console output.
#[derive(Debug, Clone)]
pub enum Pattern {
    /// These exact bytes.
    Substring(Vec<u8>),
    /// A regular expression over bytes.
    Regex(Regex),
}

impl Pattern {
    /// A regex pattern; fails on a bad expression.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) when `expression` is not a valid regular expression.
    pub fn regex(expression: &str) -> Result<Pattern> {
        Regex::new(expression)
            .map(Pattern::Regex)
            .map_err(|e| Error::config(format!("bad console regex {expression:?}: {e}")))
    }

    /// The first match at or after `from`, as a byte range of `haystack`.
    pub(super) fn find(&self, haystack: &[u8], from: usize) -> Option<(usize, usize)> {
        match self {
            Pattern::Substring(needle) => memchr::memmem::find(&haystack[from..], needle)
                .map(|at| (from + at, from + at + needle.len())),
            Pattern::Regex(regex) => regex.find_at(haystack, from).map(|m| (m.start(), m.end())),
        }
    }

    /// Where the next search must start so that no match is missed, after a search of
    /// `haystack` from `from` found nothing.
    pub(super) fn resume_from(&self, haystack: &[u8], from: usize) -> usize {
        match self {
            Pattern::Substring(needle) => from.max(
                haystack
                    .len()
                    .saturating_sub(needle.len().saturating_sub(1)),
            ),
            Pattern::Regex(_) => {
                let line_start = memchr::memrchr(b'\n', haystack).map_or(0, |i| i + 1);
                from.max(line_start)
                    .max(haystack.len().saturating_sub(REGEX_LOOKBACK))
            }
        }
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pattern::Substring(bytes) => write!(f, "{:?}", String::from_utf8_lossy(bytes)),
            Pattern::Regex(regex) => write!(f, "/{}/", regex.as_str()),
        }
    }
}

impl From<&str> for Pattern {
    fn from(text: &str) -> Self {
        Pattern::Substring(text.as_bytes().to_vec())
    }
}

impl From<&[u8]> for Pattern {
    fn from(bytes: &[u8]) -> Self {
        Pattern::Substring(bytes.to_vec())
    }
}

impl From<String> for Pattern {
    fn from(text: String) -> Self {
        Pattern::Substring(text.into_bytes())
    }
}

impl From<&String> for Pattern {
    fn from(text: &String) -> Self {
        Pattern::Substring(text.as_bytes().to_vec())
    }
}

impl From<&Pattern> for Pattern {
    fn from(pattern: &Pattern) -> Self {
        pattern.clone()
    }
}

impl From<Regex> for Pattern {
    fn from(regex: Regex) -> Self {
        Pattern::Regex(regex)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_resume_without_missing_a_split_match() {
        let needle = Pattern::from("login:");
        let hay = b"....log";
        assert!(needle.find(hay, 0).is_none());
        let from = needle.resume_from(hay, 0);
        let hay = b"....login: ";
        assert_eq!(needle.find(hay, from), Some((4, 10)));

        let regex = Pattern::regex(r"rc=\d+").unwrap();
        let hay = b"line one\nrc=";
        let from = regex.resume_from(hay, 0);
        assert_eq!(from, 9);
        assert_eq!(regex.find(b"line one\nrc=42", from), Some((9, 14)));
    }
}
