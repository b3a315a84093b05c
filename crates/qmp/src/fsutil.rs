//! Private files, safely: never through a symbolic link, never a FIFO or device that would
//! block or leak, always mode 0600 whatever the umask. For transcripts here, and for logs
//! and state files of the crates built on this one.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// What kind of file `file_type` is, in words ("a FIFO", "a symbolic link", ...).
fn kind(file_type: std::fs::FileType) -> &'static str {
    if file_type.is_symlink() {
        "a symbolic link"
    } else if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_char_device() {
        "a character device"
    } else {
        "not a regular file"
    }
}

fn not_regular(path: &Path, file_type: std::fs::FileType) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "{} is {}, not a regular file",
            path.display(),
            kind(file_type)
        ),
    )
}

/// Creates (or replaces) `path` as a new empty regular file of mode 0600: made under a
/// temporary name in the same directory with `O_EXCL|O_NOFOLLOW`, made 0600 with `fchmod`,
/// then renamed over `path`. A regular file or a symbolic link at `path` is replaced, never
/// written through (so a link's target and an old file's mode are untouched); anything
/// else (a FIFO, a directory, a device, ...) fails at once, naming the kind.
///
/// ```
/// # fn main() -> std::io::Result<()> {
/// use std::os::unix::fs::PermissionsExt;
/// let dir = tempfile::tempdir()?;
/// let file = qmp::fsutil::create_private_file(dir.path().join("state.json"))?;
/// assert_eq!(file.metadata()?.permissions().mode() & 0o777, 0o600);
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// Any I/O error, or `InvalidInput` when `path` is not a regular file.
pub fn create_private_file(path: impl AsRef<Path>) -> io::Result<File> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);

    let path = path.as_ref();
    match std::fs::symlink_metadata(path) {
        Ok(metadata) if !metadata.file_type().is_file() && !metadata.file_type().is_symlink() => {
            return Err(not_regular(path, metadata.file_type()))
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a file path", path.display()),
        )
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut attempt = 0;
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut temporary_name = std::ffi::OsString::from(".");
        temporary_name.push(name);
        temporary_name.push(format!(".{}.{n}.tmp", std::process::id()));
        let temporary = dir.join(temporary_name);
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(&temporary);
        let file = match opened {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 16 => {
                attempt += 1;
                continue;
            }
            Err(e) => return Err(e),
        };
        let placed = file
            .set_permissions(std::fs::Permissions::from_mode(0o600))
            .and_then(|()| std::fs::rename(&temporary, path));
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&temporary);
            return Err(e);
        }
        return Ok(file);
    }
}

/// Opens `path` for appending, creating it if needed, mode 0600: never through a symbolic
/// link (`O_NOFOLLOW`), and a FIFO, socket or device is refused at once (opened with
/// `O_NONBLOCK`, checked with `fstat`, then made blocking again).
///
/// # Errors
///
/// Any I/O error, or `InvalidInput` naming the kind when `path` is not a regular file.
pub fn open_private_append(path: impl AsRef<Path>) -> io::Result<File> {
    let path = path.as_ref();
    let opened = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC | nix::libc::O_NONBLOCK)
        .open(path);
    let file = match opened {
        Ok(file) => file,
        Err(e) => {
            // ELOOP (a symlink), ENXIO (a FIFO without a reader), ...: name the kind.
            if let Ok(metadata) = std::fs::symlink_metadata(path) {
                if !metadata.file_type().is_file() {
                    return Err(not_regular(path, metadata.file_type()));
                }
            }
            return Err(e);
        }
    };
    let file = regular_and_blocking(file, path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

/// Opens `path` for reading, refusing a FIFO, socket or device at once (opened with
/// `O_NONBLOCK`, checked with `fstat`, then made blocking again): a file that comes from
/// outside (a saved state, a cache entry) can never block its reader forever.
///
/// ```
/// let dir = tempfile::tempdir()?;
/// let fifo = dir.path().join("fifo");
/// nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU)?;
/// assert!(qmp::fsutil::open_regular(&fifo).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
///
/// Any I/O error, or `InvalidInput` naming the kind when `path` is not a regular file.
pub fn open_regular(path: impl AsRef<Path>) -> io::Result<File> {
    let path = path.as_ref();
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_CLOEXEC | nix::libc::O_NONBLOCK)
        .open(path)?;
    regular_and_blocking(file, path)
}

/// `file` (opened with `O_NONBLOCK`) made blocking, if it is a regular file.
fn regular_and_blocking(file: File, path: &Path) -> io::Result<File> {
    let metadata = file.metadata()?;
    if !metadata.file_type().is_file() {
        return Err(not_regular(path, metadata.file_type()));
    }
    let flags = nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)
        .map_err(io::Error::from)?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) & !nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))
        .map_err(io::Error::from)?;
    Ok(file)
}
