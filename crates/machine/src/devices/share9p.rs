//! 9p host shares (`virtio-9p-pci` on a `local` fsdev), read-only unless asked.

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::option_value::escape_option_value;

use super::path_value;

/// A host directory shared with the guest over 9p (`virtio-9p-pci`), read-only unless
/// asked. In a Linux guest: `mount -t 9p -o trans=virtio TAG /mnt`.
///
/// ```
/// let share = qemu_machine::devices::Share9p::new("data", "/srv/data").writable(true);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share9p {
    pub(super) tag: String,
    pub(super) path: PathBuf,
    writable: bool,
}

impl Share9p {
    /// Shares `path` (a directory) under the mount tag `tag` (at most 31 bytes).
    ///
    /// ```
    /// let share = qemu_machine::devices::Share9p::new("data", "/srv/data");
    /// ```
    pub fn new(tag: impl Into<String>, path: impl Into<PathBuf>) -> Share9p {
        Share9p {
            tag: tag.into(),
            path: path.into(),
            writable: false,
        }
    }

    /// Lets the guest write (default: read-only).
    ///
    /// ```
    /// let share = qemu_machine::devices::Share9p::new("data", "/srv").writable(true);
    /// ```
    pub fn writable(mut self, writable: bool) -> Share9p {
        self.writable = writable;
        self
    }

    pub(super) fn validate(&self) -> Result<()> {
        if self.tag.is_empty() || self.tag.len() > 31 {
            return Err(Error::config(format!(
                "9p mount tag {:?} must have 1 to 31 bytes",
                self.tag
            )));
        }
        if !self.path.is_dir() {
            return Err(Error::config(format!(
                "9p share {}: {} is not a directory",
                self.tag,
                self.path.display()
            )));
        }
        path_value(&self.path).map(drop)
    }

    /// The `-fsdev` and `-device` of the `i`th share (none when its path is not UTF-8,
    /// which validation refuses).
    pub(super) fn args(&self, i: usize) -> Vec<String> {
        let Ok(path) = path_value(&self.path) else {
            return Vec::new();
        };
        let mut fsdev = format!("local,id=qm-fs{i},path={path},security_model=none");
        if !self.writable {
            fsdev.push_str(",readonly=on");
        }
        vec![
            "-fsdev".into(),
            fsdev,
            "-device".into(),
            format!(
                "virtio-9p-pci,fsdev=qm-fs{i},mount_tag={}",
                escape_option_value(&self.tag)
            ),
        ]
    }
}
