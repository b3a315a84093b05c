//! The private directory of one machine's run: QEMU's log, socket files, transcripts.

use std::fs::Permissions;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A 0700 directory `qemu-machine-<name>-XXXXXX`, removed when finished unless kept.
#[derive(Debug)]
pub(crate) struct RunDir {
    dir: tempfile::TempDir,
}

impl RunDir {
    pub(crate) fn create(base: &Path, name: &str) -> Result<RunDir> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("qemu-machine-{name}-"))
            .tempdir_in(base)
            .map_err(|e| Error::io(format!("creating a run dir in {}", base.display()), e))?;
        std::fs::set_permissions(dir.path(), Permissions::from_mode(0o700))
            .map_err(|e| Error::io(format!("securing {}", dir.path().display()), e))?;
        Ok(RunDir { dir })
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Removes the directory, or keeps it and returns its path.
    pub(crate) fn finish(self, keep: bool) -> Option<PathBuf> {
        if keep {
            return Some(self.dir.keep());
        }
        let path = self.dir.path().to_path_buf();
        if let Err(e) = self.dir.close() {
            tracing::warn!("cannot remove run dir {}: {e}", path.display());
        }
        None
    }
}
