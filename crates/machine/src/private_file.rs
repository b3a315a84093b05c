//! Creating a file only its owner can read, without trusting what is at its path: a
//! symlink is replaced, never followed; an existing file is replaced, never truncated
//! through (so its old mode cannot leak); a FIFO, socket, device or directory is an error
//! at once (opening a FIFO would block). Same name as the qmp crate's coming
//! `qmp::fsutil::create_private_file`, to be swapped for it.

use std::fs::{File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// What kind of file is at `path` when it is neither absent, a regular file nor a symlink.
pub(crate) fn unfit_kind(path: &Path) -> io::Result<Option<&'static str>> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let kind = meta.file_type();
    Ok(if kind.is_file() || kind.is_symlink() {
        None
    } else if kind.is_fifo() {
        Some("FIFO")
    } else if kind.is_socket() {
        Some("socket")
    } else if kind.is_dir() {
        Some("directory")
    } else if kind.is_block_device() {
        Some("block device")
    } else if kind.is_char_device() {
        Some("character device")
    } else {
        Some("special file")
    })
}

/// A new, empty file at `path`, mode 0600 whatever the umask: created beside it under a
/// temporary name (`O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC`) and renamed over `path`.
///
/// # Errors
///
/// `InvalidInput` when `path` is a FIFO, socket, device or directory (see
/// [`unfit_kind`]), or has no file name; any error of creating, securing or renaming.
pub(crate) fn create_private_file(path: &Path) -> io::Result<File> {
    if let Some(kind) = unfit_kind(path)? {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is a {kind}, not a regular file", path.display()),
        ));
    }
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no file", path.display()),
        )
    })?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut attempts = 0;
    let (file, temp) = loop {
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(
            ".{}.{}.tmp",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let temp = dir.join(temp_name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc_flags())
            .open(&temp)
        {
            Ok(file) => break (file, temp),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 100 => attempts += 1,
            Err(e) => return Err(e),
        }
    };
    let secured = file
        .set_permissions(Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&temp, path));
    if let Err(e) = secured {
        let _ = std::fs::remove_file(&temp);
        return Err(e);
    }
    Ok(file)
}

fn libc_flags() -> i32 {
    (nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_CLOEXEC).bits()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_symlinks_and_files_and_refuses_fifos() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let link = dir.path().join("log");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        create_private_file(&link).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        let meta = std::fs::symlink_metadata(&link).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let err = create_private_file(&fifo).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("FIFO"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
    }
}
