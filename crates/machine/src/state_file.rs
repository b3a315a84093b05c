//! The on-disk format of a saved state: a 4 KiB header ([`STATE_MAGIC`], a little-endian
//! `u32` length, [`StateInfo`] as JSON, zero padding), then QEMU's migration stream.
//!
//! Reading checks everything but the stream's hash ([`open_state`]; the hash is
//! [`hash_stream`], run while QEMU starts); writing goes to a 0600 partial file next to the
//! target ([`create_partial`]), its header ([`header_bytes`]) written last, then renamed
//! into place, so a file with the magic is always whole. Saving and restoring, which drive
//! QEMU, are in [`saved_state`](crate::saved_state).

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};

/// The first bytes of a state file.
pub const STATE_MAGIC: &[u8; 16] = b"QEMU-MACHINE-ST1";
/// The size of the header before QEMU's stream.
pub const HEADER_BYTES: u64 = 4096;
/// The format of [`StateInfo`] this version writes and reads.
pub const STATE_FORMAT: u32 = 1;
/// The first bytes of a QEMU migration stream.
const QEMU_STREAM_MAGIC: &[u8; 4] = b"QEVM";

/// What a state file's header says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateInfo {
    /// [`STATE_FORMAT`] when written.
    pub format: u32,
    /// The version of the QEMU that saved it (`major.minor.micro`); only that version
    /// loads it.
    pub qemu_version: String,
    /// A hash of the machine's configuration; a restore needs the same.
    pub fingerprint: String,
    /// The length of QEMU's stream after the header.
    pub stream_bytes: u64,
    /// The BLAKE3 hash of that stream, hex.
    pub stream_blake3: String,
    /// Whether the guest ran when it was saved (then a restore resumes it).
    pub was_running: bool,
    /// The writable disks, as they were.
    pub disks: Vec<DiskStamp>,
    /// How long the migration took, in milliseconds.
    pub save_ms: u64,
}

/// A writable disk as it was when its machine's state was saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskStamp {
    /// The image.
    pub path: PathBuf,
    /// Its size in bytes.
    pub len: u64,
    /// Its modification time, nanoseconds since the epoch.
    pub modified_ns: i128,
}

impl DiskStamp {
    pub(crate) fn of(path: &Path) -> Result<DiskStamp> {
        let meta = std::fs::metadata(path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        Ok(DiskStamp {
            path: path.to_path_buf(),
            len: meta.len(),
            modified_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        })
    }
}

impl StateInfo {
    /// The total size of the file (saturating: a damaged header cannot overflow it).
    pub fn file_bytes(&self) -> u64 {
        HEADER_BYTES.saturating_add(self.stream_bytes)
    }
}

/// Reads and checks a state file's header: the magic, the format, and that the file has
/// the length the header says and starts a QEMU stream after it.
///
/// ```no_run
/// let info = qemu_machine::saved_state::read_info("booted.state".as_ref())?;
/// println!("QEMU {}, {} bytes", info.qemu_version, info.file_bytes());
/// # Ok::<(), qemu_machine::Error>(())
/// ```
///
/// # Errors
///
/// [`ErrorKind::Io`] when the file cannot be read; [`ErrorKind::Migration`] when it is not
/// a state file, is truncated, or its header is corrupt.
pub fn read_info(path: &Path) -> Result<StateInfo> {
    open_state(path).map(|(info, _)| info)
}

/// A [`ErrorKind::Migration`] error: `path` is not a usable state file, because `why`.
pub(crate) fn corrupt(path: &Path, why: impl std::fmt::Display) -> Error {
    ErrorKind::Migration {
        message: format!("{} is not a usable saved state: {why}", path.display()),
    }
    .into()
}

/// Opens a state file and checks all but the stream's hash.
pub(crate) fn open_state(path: &Path) -> Result<(StateInfo, File)> {
    // Refused at once if it is a FIFO or a device: it comes from outside.
    let mut file = qmp::fsutil::open_regular(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let mut header = vec![0u8; HEADER_BYTES as usize];
    let got = read_full(&mut file, &mut header)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    if got < STATE_MAGIC.len() + 4 || &header[..STATE_MAGIC.len()] != STATE_MAGIC {
        return Err(corrupt(
            path,
            "it does not start with a qemu-machine state header (not a state file, or a save \
             that did not finish)",
        ));
    }
    if got < header.len() {
        return Err(corrupt(path, "it is truncated inside its header"));
    }
    let at = STATE_MAGIC.len();
    let len = u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]]);
    let json = header
        .get(at + 4..at + 4 + len as usize)
        .ok_or_else(|| corrupt(path, "its header length is out of range"))?;
    let info: StateInfo = serde_json::from_slice(json)
        .map_err(|e| corrupt(path, format!("its header does not parse: {e}")))?;
    if info.format != STATE_FORMAT {
        return Err(corrupt(
            path,
            format!(
                "it has format {}, this library reads {STATE_FORMAT}",
                info.format
            ),
        ));
    }
    let actual = file
        .metadata()
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?
        .len();
    if HEADER_BYTES.checked_add(info.stream_bytes).is_none() {
        return Err(corrupt(path, "its header's stream length is out of range"));
    }
    if actual != info.file_bytes() {
        return Err(corrupt(
            path,
            format!(
                "it has {actual} bytes where its header says {} (truncated or appended to)",
                info.file_bytes()
            ),
        ));
    }
    let mut magic = [0u8; 4];
    file.read_exact_at(&mut magic, HEADER_BYTES)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    if &magic != QEMU_STREAM_MAGIC {
        return Err(corrupt(path, "no QEMU migration stream follows its header"));
    }
    Ok((info, file))
}

fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// The BLAKE3 hash of `len` bytes of `file` from [`HEADER_BYTES`] on (positioned reads:
/// the file's offset is left alone).
pub(crate) fn hash_stream(file: &File, len: u64) -> std::io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < len {
        let want = usize::try_from((len - at).min(buf.len() as u64)).unwrap_or(buf.len());
        let n = file.read_at(&mut buf[..want], HEADER_BYTES + at)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the stream ends early",
            ));
        }
        hasher.update(&buf[..n]);
        at += n as u64;
    }
    Ok(hasher.finalize().to_hex().to_string())
}

/// A partial file removed on drop unless kept.
pub(crate) struct Partial(Option<PathBuf>);

impl Partial {
    /// Where the partial file is (empty once kept).
    pub(crate) fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }

    /// Keeps the file: it has been renamed into place.
    pub(crate) fn keep(&mut self) {
        self.0 = None;
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A new 0600 file next to `path`, never following a symlink, for an atomic rename.
pub(crate) fn create_partial(path: &Path) -> Result<(File, Partial)> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| Error::config(format!("{} is not a file path", path.display())))?;
    let partial = path.with_file_name(format!(
        ".{}.partial-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(&partial)
        .map_err(|e| Error::io(format!("creating {}", partial.display()), e))?;
    Ok((file, Partial(Some(partial))))
}

/// The bytes of a header for `info`.
pub(crate) fn header_bytes(info: &StateInfo) -> Result<Vec<u8>> {
    let json = serde_json::to_vec(info)
        .map_err(|e| Error::io("encoding the state header", std::io::Error::other(e)))?;
    let mut header = Vec::with_capacity(HEADER_BYTES as usize);
    header.extend_from_slice(STATE_MAGIC);
    header.extend_from_slice(&u32::try_from(json.len()).unwrap_or(u32::MAX).to_le_bytes());
    header.extend_from_slice(&json);
    if header.len() > HEADER_BYTES as usize {
        return Err(Error::config(format!(
            "the state header needs {} bytes, more than {HEADER_BYTES} (too many disks?)",
            header.len()
        )));
    }
    header.resize(HEADER_BYTES as usize, 0);
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> StateInfo {
        StateInfo {
            format: STATE_FORMAT,
            qemu_version: "7.2.22".into(),
            fingerprint: "f".repeat(64),
            stream_bytes: 4,
            stream_blake3: blake3::hash(b"QEVM").to_hex().to_string(),
            was_running: true,
            disks: vec![],
            save_ms: 12,
        }
    }

    #[test]
    fn a_header_reads_back_and_damage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.state");
        let mut bytes = header_bytes(&info()).unwrap();
        bytes.extend_from_slice(b"QEVM");
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read_info(&path).unwrap(), info());

        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        assert!(read_info(&path)
            .unwrap_err()
            .to_string()
            .contains("truncated"));
        std::fs::write(&path, &bytes[..100]).unwrap();
        assert!(read_info(&path).unwrap_err().to_string().contains("header"));
        let mut unfinished = bytes.clone();
        unfinished[..STATE_MAGIC.len()].fill(0);
        std::fs::write(&path, &unfinished).unwrap();
        assert!(read_info(&path)
            .unwrap_err()
            .to_string()
            .contains("did not finish"));
    }

    #[test]
    fn a_fifo_as_state_file_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("state");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let started = std::time::Instant::now();
        let err = read_info(&fifo).unwrap_err().to_string();
        assert!(
            err.contains("not a regular file") || err.contains("FIFO"),
            "{err}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn an_overflowing_stream_length_is_corrupt_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.state");
        let huge = StateInfo {
            stream_bytes: u64::MAX,
            ..info()
        };
        assert_eq!(huge.file_bytes(), u64::MAX);
        let mut bytes = header_bytes(&huge).unwrap();
        bytes.extend_from_slice(b"QEVM");
        std::fs::write(&path, &bytes).unwrap();
        let err = read_info(&path).unwrap_err().to_string();
        assert!(err.contains("out of range"), "{err}");
    }
}
