//! QEMU's log file as it stays on disk after a run: the command line's secrets that QEMU
//! echoed into it (`-object secret,...,data=...: Invalid parameter ...`) are scrubbed, as
//! they are from errors and `get_log()`.
//!
//! Only once QEMU is gone: QEMU writes the file itself (its stdout and stderr are the
//! file), so filtering it live would need a pipe and a copier between QEMU and the file
//! (output lost if the manager dies, QEMU blocked if the copier stalls). A log removed
//! with its run dir (the default) is not rewritten; one kept (`keep_run_dir`, `log_dir`)
//! is replaced by a scrubbed copy (0600, renamed into place) if it holds a secret.
//!
//! [`create_private`] makes each log file of a run (QEMU's, the console's, virtiofsd's);
//! [`finish`] is the end of every run's log: scrubbed when it stays, then its tails read
//! for the machine's `get_log()` and errors.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use memchr::memmem;

use crate::error::{secrets_of, Error, Result};
use crate::output::{read_tail, ERROR_TAIL, LOG_TAIL};

/// Lines are scrubbed one at a time, at most this long: a longer line is scrubbed in
/// pieces of this size (a secret across a cut is missed; QEMU's echo of an option is one
/// short line).
const LINE_CAP: u64 = 1024 * 1024;

/// Rewrites the log at `path` with each `(secret, replacement)` of `secrets` applied in
/// order (see [`secrets_of`]); true if it changed. A path that
/// is not a regular file is left alone.
pub(crate) fn scrub_file(path: &Path, secrets: &[(String, String)]) -> io::Result<bool> {
    if secrets.iter().all(|(secret, _)| secret.is_empty()) {
        return Ok(false);
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Ok(false);
    }
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(".scrubbed");
    let temp = path.with_file_name(temp_name);
    let mut changed = false;
    let copied = (|| {
        let mut out = BufWriter::new(qmp::fsutil::create_private_file(&temp)?);
        let mut input = BufReader::new(file);
        let mut line = Vec::new();
        loop {
            line.clear();
            (&mut input).take(LINE_CAP).read_until(b'\n', &mut line)?;
            if line.is_empty() {
                break;
            }
            match scrub_bytes(&line, secrets) {
                Some(scrubbed) => {
                    changed = true;
                    out.write_all(&scrubbed)?;
                }
                None => out.write_all(&line)?,
            }
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()
    })();
    if copied.is_ok() && changed {
        std::fs::rename(&temp, path)?;
        return Ok(true);
    }
    let _ = std::fs::remove_file(&temp);
    copied.map(|()| false)
}

/// A new private (0600) file at `path`, replacing (never following or truncating through)
/// what is there; a FIFO, socket, device or directory there is a configuration error.
pub(crate) fn create_private(path: &Path) -> Result<File> {
    qmp::fsutil::create_private_file(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::InvalidInput {
            Error::config(format!("cannot create a log file: {e}"))
        } else {
            Error::io(format!("creating {}", path.display()), e)
        }
    })
}

/// What a finished run's log gives the machine: the tail `get_log()` keeps and the tail an
/// error quotes, secrets replaced in both.
#[derive(Debug)]
pub(crate) struct Tails {
    /// The last [`LOG_TAIL`] of the log.
    pub(crate) log: String,
    /// The last [`ERROR_TAIL`] of the log; empty when not asked for.
    pub(crate) error: String,
}

/// Ends a run's log once QEMU is gone: scrubs the file on disk when it `stays` (a kept run
/// dir or a log dir), then reads its tails (the error's only `with_error` one), with the
/// secrets of `argv` replaced and, when the file stays, naming it as the whole log.
pub(crate) fn finish(path: &Path, argv: &[String], stays: bool, with_error: bool) -> Tails {
    let secrets = secrets_of(argv);
    let full_log = stays.then_some(path);
    if stays {
        scrub_kept_log(path, &secrets);
    }
    Tails {
        log: read_tail(path, LOG_TAIL, &secrets, full_log),
        error: if with_error {
            read_tail(path, ERROR_TAIL, &secrets, full_log)
        } else {
            String::new()
        },
    }
}

/// [`scrub_file`] for a log that stays on disk, a failure logged (the run ends anyway).
pub(crate) fn scrub_kept_log(path: &Path, secrets: &[(String, String)]) {
    match scrub_file(path, secrets) {
        Ok(true) => tracing::debug!("secrets scrubbed from {}", path.display()),
        Ok(false) => {}
        Err(e) => tracing::warn!("could not scrub secrets from {}: {e}", path.display()),
    }
}

/// `line` with the secrets replaced, or `None` when it holds none.
fn scrub_bytes(line: &[u8], secrets: &[(String, String)]) -> Option<Vec<u8>> {
    let mut scrubbed: Option<Vec<u8>> = None;
    for (secret, replacement) in secrets.iter().filter(|(secret, _)| !secret.is_empty()) {
        let current = scrubbed.as_deref().unwrap_or(line);
        let finder = memmem::Finder::new(secret.as_bytes());
        if finder.find(current).is_none() {
            continue;
        }
        let mut next = Vec::with_capacity(current.len());
        let mut rest = current;
        while let Some(at) = finder.find(rest) {
            next.extend_from_slice(&rest[..at]);
            next.extend_from_slice(replacement.as_bytes());
            rest = &rest[at + secret.len()..];
        }
        next.extend_from_slice(rest);
        scrubbed = Some(next);
    }
    scrubbed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs() -> Vec<(String, String)> {
        vec![
            (
                "secret,id=s,data=hunter2".into(),
                "secret,id=s,data=<redacted>".into(),
            ),
            ("hunter2".into(), "<redacted>".into()),
        ]
    }

    #[test]
    fn bytes_are_scrubbed_in_order_and_the_rest_kept() {
        let line = b"qemu: -object secret,id=s,data=hunter2: bad \xff hunter2\n";
        assert_eq!(
            scrub_bytes(line, &pairs()).unwrap(),
            b"qemu: -object secret,id=s,data=<redacted>: bad \xff <redacted>\n"
        );
        assert_eq!(scrub_bytes(b"nothing here\n", &pairs()), None);
    }

    #[test]
    fn a_log_file_is_rewritten_only_when_it_holds_a_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.log");
        std::fs::write(&path, "clean\n").unwrap();
        assert!(!scrub_file(&path, &pairs()).unwrap());
        std::fs::write(&path, "a\nInvalid parameter 'hunter2'\nb").unwrap();
        assert!(scrub_file(&path, &pairs()).unwrap());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "a\nInvalid parameter '<redacted>'\nb"
        );
        let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(entries.len(), 1, "no temporary file left");
        // A symlink is not followed.
        let target = dir.path().join("target");
        std::fs::write(&target, "hunter2").unwrap();
        let link = dir.path().join("link.log");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(scrub_file(&link, &pairs()).is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "hunter2");
    }
}
