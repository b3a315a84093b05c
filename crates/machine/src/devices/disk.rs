//! Disks: an image file (or block device), its format, how it is attached, and its cache
//! mode, validated before launch and rendered to a `-drive` and a `-device`.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

use super::path_value;

/// The image formats a [`Disk`] accepts.
const FORMATS: &[&str] = &[
    "raw",
    "qcow2",
    "qcow",
    "qed",
    "vmdk",
    "vdi",
    "vhdx",
    "vpc",
    "luks",
    "parallels",
    "dmg",
    "bochs",
    "cloop",
];

/// How a disk is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiskInterface {
    /// `virtio-blk-pci` (`/dev/vdX` in Linux). The default.
    #[default]
    Virtio,
    /// `ide-hd` on the machine's IDE controller.
    Ide,
    /// `scsi-hd` on a `virtio-scsi-pci` controller (added once for all SCSI disks).
    Scsi,
}

/// The host cache mode of a disk (`cache=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    /// `none` (O_DIRECT).
    None,
    /// `writeback`.
    Writeback,
    /// `writethrough`.
    Writethrough,
    /// `directsync`.
    Directsync,
    /// `unsafe` (ignores flushes).
    Unsafe,
}

impl CacheMode {
    fn as_str(self) -> &'static str {
        match self {
            CacheMode::None => "none",
            CacheMode::Writeback => "writeback",
            CacheMode::Writethrough => "writethrough",
            CacheMode::Directsync => "directsync",
            CacheMode::Unsafe => "unsafe",
        }
    }
}

/// A disk image. `raw` and virtio by default.
///
/// ```
/// use qemu_machine::devices::{CacheMode, Disk, DiskInterface};
/// let disk = Disk::new("/tmp/data.img")
///     .interface(DiskInterface::Ide)
///     .read_only(false)
///     .snapshot(true)
///     .cache(CacheMode::Unsafe)
///     .boot_index(0);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub(super) file: PathBuf,
    format: String,
    pub(super) interface: DiskInterface,
    pub(super) read_only: bool,
    pub(super) snapshot: bool,
    cache: Option<CacheMode>,
    boot_index: Option<u32>,
}

impl Disk {
    /// The image at `file` (which must exist at launch).
    ///
    /// ```
    /// let disk = qemu_machine::devices::Disk::new("/tmp/a.img");
    /// ```
    pub fn new(file: impl Into<PathBuf>) -> Disk {
        Disk {
            file: file.into(),
            format: "raw".into(),
            interface: DiskInterface::Virtio,
            read_only: false,
            snapshot: false,
            cache: None,
            boot_index: None,
        }
    }

    /// The image format (`raw`, `qcow2`, ...); an unknown one is refused at launch.
    ///
    /// ```
    /// let disk = qemu_machine::devices::Disk::new("/tmp/a.qcow2").format("qcow2");
    /// ```
    pub fn format(mut self, format: impl Into<String>) -> Disk {
        self.format = format.into();
        self
    }

    /// How it is attached (default virtio).
    ///
    /// ```
    /// use qemu_machine::devices::{Disk, DiskInterface};
    /// let disk = Disk::new("/tmp/a.img").interface(DiskInterface::Scsi);
    /// ```
    pub fn interface(mut self, interface: DiskInterface) -> Disk {
        self.interface = interface;
        self
    }

    /// Read-only for the guest (not with IDE, which has no read-only hard disks).
    ///
    /// ```
    /// let disk = qemu_machine::devices::Disk::new("/tmp/a.img").read_only(true);
    /// ```
    pub fn read_only(mut self, read_only: bool) -> Disk {
        self.read_only = read_only;
        self
    }

    /// Writes go to a temporary overlay, and the image stays as it was.
    ///
    /// ```
    /// let disk = qemu_machine::devices::Disk::new("/tmp/a.img").snapshot(true);
    /// ```
    pub fn snapshot(mut self, snapshot: bool) -> Disk {
        self.snapshot = snapshot;
        self
    }

    /// The host cache mode.
    ///
    /// ```
    /// use qemu_machine::devices::{CacheMode, Disk};
    /// let disk = Disk::new("/tmp/a.img").cache(CacheMode::None);
    /// ```
    pub fn cache(mut self, cache: CacheMode) -> Disk {
        self.cache = Some(cache);
        self
    }

    /// Its place in the boot order (`bootindex`, 0 first).
    ///
    /// ```
    /// let disk = qemu_machine::devices::Disk::new("/tmp/a.img").boot_index(0);
    /// ```
    pub fn boot_index(mut self, index: u32) -> Disk {
        self.boot_index = Some(index);
        self
    }

    pub(super) fn validate(&self) -> Result<()> {
        if !self.file.is_file() && !is_block_device(&self.file) {
            return Err(Error::config(format!(
                "disk image {} does not exist (or is not a file)",
                self.file.display()
            )));
        }
        if !FORMATS.contains(&self.format.as_str()) {
            return Err(Error::config(format!(
                "disk {}: unknown image format {:?} (one of {})",
                self.file.display(),
                self.format,
                FORMATS.join(", ")
            )));
        }
        if self.read_only && self.interface == DiskInterface::Ide {
            return Err(Error::config(format!(
                "disk {}: IDE hard disks cannot be read-only; use virtio or SCSI",
                self.file.display()
            )));
        }
        path_value(&self.file).map(drop)
    }

    /// The `-drive` and `-device` of the `i`th disk (none when its path is not UTF-8, which
    /// validation refuses).
    pub(super) fn args(&self, i: usize) -> Vec<String> {
        let Ok(file) = path_value(&self.file) else {
            return Vec::new();
        };
        let mut drive = format!("file={file},format={},if=none,id=qm-disk{i}", self.format);
        if self.read_only {
            drive.push_str(",readonly=on");
        }
        if self.snapshot {
            drive.push_str(",snapshot=on");
        }
        if let Some(cache) = self.cache {
            drive.push_str(",cache=");
            drive.push_str(cache.as_str());
        }
        let mut device = match self.interface {
            DiskInterface::Virtio => format!("virtio-blk-pci,drive=qm-disk{i}"),
            DiskInterface::Ide => format!("ide-hd,drive=qm-disk{i}"),
            DiskInterface::Scsi => format!("scsi-hd,bus=qm-scsi.0,drive=qm-disk{i}"),
        };
        if let Some(index) = self.boot_index {
            device.push_str(&format!(",bootindex={index}"));
        }
        vec!["-drive".into(), drive, "-device".into(), device]
    }
}

fn is_block_device(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device())
}
