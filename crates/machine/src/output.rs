//! QEMU's output as the machine hands it out: only its tail is ever read (seeking from the
//! end, never the whole file), with a header saying what was left out; secrets from the
//! command line scrubbed; control characters made visible for display.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// How much of QEMU's output a read keeps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Bytes read at most (from the end).
    pub(crate) bytes: u64,
    /// Lines kept at most (the last ones).
    pub(crate) lines: usize,
}

/// What errors quote: the last 64 KiB, at most 200 lines.
pub(crate) const ERROR_TAIL: Limits = Limits {
    bytes: 64 * 1024,
    lines: 200,
};

/// What `get_log()` keeps: the last 1 MiB.
pub(crate) const LOG_TAIL: Limits = Limits {
    bytes: 1024 * 1024,
    lines: usize::MAX,
};

/// The tail of the file at `path` within `limits`, secrets scrubbed; when anything was
/// left out, a first line says how much and where the whole log is (`full_log`, when it
/// is kept). Empty when the file cannot be read.
pub(crate) fn read_tail(
    path: &Path,
    limits: Limits,
    secrets: &[(String, String)],
    full_log: Option<&Path>,
) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    // A little more than the limit, so that a secret across the cut is still scrubbed.
    let margin = secrets
        .iter()
        .map(|(s, _)| s.len() as u64)
        .max()
        .unwrap_or(0);
    let window = limits.bytes.saturating_add(margin);
    let start = len.saturating_sub(window);
    if start > 0 && file.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    // `take`: the file may still grow; never read more than the window.
    let _ = file.take(window).read_to_end(&mut bytes);
    let mut text = scrub(&String::from_utf8_lossy(&bytes), secrets);
    let mut skipped = start;
    if text.len() as u64 > limits.bytes {
        let mut cut = text.len() - limits.bytes as usize;
        while !text.is_char_boundary(cut) {
            cut += 1;
        }
        skipped += cut as u64;
        text.drain(..cut);
    }
    let mut dropped_lines = 0;
    if limits.lines != usize::MAX {
        let lines = text.trim_end_matches('\n').matches('\n').count() + 1;
        if lines > limits.lines {
            dropped_lines = lines - limits.lines;
            let cut = text
                .match_indices('\n')
                .nth(dropped_lines - 1)
                .map_or(0, |(i, _)| i + 1);
            skipped += cut as u64;
            text.drain(..cut);
        }
    }
    if skipped > 0 {
        let mut header = format!("[{skipped} earlier bytes of QEMU's output left out");
        if dropped_lines > 0 {
            let _ = write!(
                header,
                " (among them {dropped_lines} lines, to keep the last {})",
                limits.lines
            );
        }
        match full_log {
            Some(path) => {
                let _ = write!(header, "; the whole log is {}]", path.display());
            }
            None => header.push_str("; the whole log was not kept]"),
        }
        header.push('\n');
        text.insert_str(0, &header);
    }
    text
}

/// `text` with each `(secret, replacement)` applied in order (see
/// [`secrets_of`](crate::error::secrets_of)).
pub(crate) fn scrub(text: &str, secrets: &[(String, String)]) -> String {
    let mut text = text.to_string();
    for (secret, replacement) in secrets.iter().filter(|(s, _)| !s.is_empty()) {
        if text.contains(secret.as_str()) {
            text = text.replace(secret.as_str(), replacement);
        }
    }
    text
}

/// `text` safe for a terminal: `\n` and `\t` kept, other C0 controls, DEL and C1 controls
/// escaped (`\x1b`, `\u{9b}`).
pub(crate) fn sanitize(text: &str) -> Cow<'_, str> {
    let hostile = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !text.contains(hostile) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            c if !hostile(c) => out.push(c),
            c if (c as u32) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_escapes_controls() {
        assert_eq!(sanitize("a\tb\nc"), "a\tb\nc");
        assert_eq!(
            sanitize("\u{1b}]0;pwned\u{7}\u{1b}[2J\r\u{7f}\u{9b}é"),
            "\\x1b]0;pwned\\x07\\x1b[2J\\x0d\\x7f\\u{9b}é"
        );
    }

    #[test]
    fn scrub_removes_both_forms() {
        let secrets = crate::error::secrets_of(&["secret,id=s,data=hunter2,,tail5".into()]);
        assert_eq!(
            scrub(
                "a data=hunter2,,tail5 b hunter2,tail5 c secret,id=s,data=hunter2,,tail5",
                &secrets
            ),
            "a data=<redacted> b <redacted> c secret,id=s,data=<redacted>"
        );
    }

    #[test]
    fn tail_has_a_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let text: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, &text).unwrap();
        let tail = read_tail(&path, ERROR_TAIL, &[], None);
        assert_eq!(tail.lines().count(), 201, "{tail}");
        assert!(tail.starts_with("["), "{tail}");
        assert!(tail.contains("not kept"), "{tail}");
        assert!(tail.ends_with("line 999\n"));
        let all = read_tail(&path, LOG_TAIL, &[], None);
        assert_eq!(all, text);
        let small = read_tail(
            &path,
            Limits {
                bytes: 100,
                lines: usize::MAX,
            },
            &[],
            Some(&path),
        );
        assert!(small.contains("the whole log is"), "{small}");
        assert!(small.ends_with("line 999\n"));
    }
}
